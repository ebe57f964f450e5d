//! Policy files end to end, on the real binary with real packets between two
//! namespaces: check, diff, apply, show and rollback round trips; invalid
//! policies refused with a location and no change; no gap while policies
//! are swapped and the controller restarted; `--confirm` reverted at its
//! deadline (also across a restart) or kept when confirmed; the state
//! restored after a simulated reboot; shadow mode; SIGHUP reloads. Mirrors
//! `filter-ctl/src/cmd/policy.rs`, `filter-ctl/src/control/policy.rs` and
//! `filter-ctl/src/control/mod.rs`. Needs root; each test has its own
//! namespaces, pin dir, state dir and policy dir.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    os::unix::fs::PermissionsExt as _,
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use filter_tests::{
    ctl::{Controller, Ctl, packets},
    netns::{Lab, UdpReceiver, UdpStream, count_from, in_netns, skip_unless_root, udp_send},
};
use serde_json::{Value, json};

const PORT: u16 = 5000;
const COUNT: usize = 10;
const QUIET: Duration = Duration::from_millis(200);
const DRAIN_MAX: Duration = Duration::from_secs(3);
const RUN_TIMEOUT: Duration = Duration::from_secs(15);
/// Exit codes (filter-ctl's `error::ExitCode`).
const BAD_INPUT: i32 = 2;
const NOT_FOUND: i32 = 9;
/// Policy applies, then controller restarts, in the no-gap test.
const ROUNDS: usize = 20;
/// The port the automatic block is earned on, and for how long.
const FLOOD_PORT: u16 = 6100;
const BLOCK_FOR_SECS: u64 = 600;
/// Datagrams per burst in the shadow test.
const N: usize = 40;
/// A second port, for port rules.
const OTHER_PORT: u16 = PORT + 1;

/// `sha256sum`'s digest of `path`: computed apart from filter-ctl.
fn sha256sum(path: &Path) -> String {
    let output = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("running sha256sum");
    assert!(output.status.success(), "sha256sum {}", path.display());
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .next()
        .expect("sha256sum printed a digest")
        .to_string()
}

/// Sends `COUNT` datagrams from `src` to `receiver`; returns how many arrived.
fn udp_through(lab: &Lab, receiver: &UdpReceiver, src: IpAddr) -> usize {
    let sent = udp_send(
        &lab.src,
        src,
        receiver.addr(),
        COUNT,
        Duration::from_millis(1),
    );
    assert_eq!(sent, COUNT, "sending from {src}");
    count_from(&receiver.drain(QUIET, DRAIN_MAX), src)
}

/// `policy show --json`.
fn show(ctl: &Ctl) -> Value {
    ctl.json(&["policy", "show", "--json"])
}

/// The SHA-256 `policy show` gives for the active policy.
fn shown_sha(ctl: &Ctl) -> String {
    let shown = show(ctl);
    shown["sha256"]
        .as_str()
        .unwrap_or_else(|| panic!("policy show has no sha256: {shown}"))
        .to_string()
}

/// `status --json`'s active policy (top level and under `policy`, which must agree).
fn status_sha(ctl: &Ctl) -> Option<String> {
    let status = ctl.status_json();
    assert_eq!(
        status["active_policy_sha256"], status["policy"]["active_policy_sha256"],
        "{status}"
    );
    status["active_policy_sha256"].as_str().map(str::to_string)
}

/// The entries of `list` (`blocklist` or `allowlist`) in a `list --json`
/// document: prefix → origin, with ` (shadow)` for shadow entries.
fn origins(listing: &Value, list: &str) -> BTreeMap<String, String> {
    listing[list]
        .as_array()
        .unwrap_or_else(|| panic!("no {list} in {listing}"))
        .iter()
        .map(|e| {
            let origin = e["origin"].as_str().expect("an origin").to_string();
            let origin = if e["shadow"] == true {
                format!("{origin} (shadow)")
            } else {
                origin
            };
            (e["cidr"].as_str().expect("a cidr").to_string(), origin)
        })
        .collect()
}

/// `prefix → origin` pairs, for comparing with [`origins`].
fn entries(pairs: &[(String, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(cidr, origin)| (cidr.clone(), (*origin).to_string()))
        .collect()
}

fn host(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(_) => format!("{ip}/32"),
        IpAddr::V6(_) => format!("{ip}/128"),
    }
}

/// `limit list --json` without the rules' packet counters (background
/// traffic such as IPv6 link-local MLD moves them).
fn limits(ctl: &Ctl) -> Value {
    let mut listed = ctl.json(&["limit", "list", "--json"]);
    for rule in listed["rules"]
        .as_array_mut()
        .unwrap_or_else(|| panic!("no rules in limit list"))
    {
        let map = rule.as_object_mut().expect("a rule object");
        map.remove("passed_packets");
        map.remove("dropped_packets");
    }
    listed
}

/// The rules `limit list --json` shows, by target, without their counters.
fn rules(ctl: &Ctl) -> BTreeMap<String, Value> {
    limits(ctl)["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .map(|r| {
            (
                r["target"].as_str().expect("a target").to_string(),
                r.clone(),
            )
        })
        .collect()
}

fn rule_targets(ctl: &Ctl) -> Vec<String> {
    rules(ctl).into_keys().collect()
}

/// Polls `done` every 50 ms until it holds, at most `timeout`; returns
/// how long it took.
fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if done() {
            return start.elapsed();
        }
        assert!(start.elapsed() < timeout, "{what}: not within {timeout:?}");
        thread::sleep(Duration::from_millis(50));
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("chown {uid}:{gid} {}: {e}", path.display()));
}

/// The audit records of the policy commands, as (command, before, after).
fn policy_audit(ctl: &Ctl) -> Vec<(String, Option<String>, Option<String>)> {
    ctl.audit_records()
        .iter()
        .filter(|r| {
            matches!(
                r["command"].as_str(),
                Some("apply" | "rollback" | "revert" | "confirm" | "reload" | "run")
            )
        })
        .map(|r| {
            let text = |v: &Value| v.as_str().map(str::to_string);
            (
                text(&r["command"]).expect("a command"),
                text(&r["policy_before"]),
                text(&r["policy_after"]),
            )
        })
        .collect()
}

#[test]
fn check_diff_apply_show_and_rollback_round_trip() {
    if skip_unless_root("check_diff_apply_show_and_rollback_round_trip") {
        return;
    }
    let lab = Lab::new("prnd");
    let ctl = Ctl::new("prnd");
    let mut controller = ctl.run_background(&lab.dst, &[&lab.dst_if]);
    let receiver = UdpReceiver::bind(&lab.dst, SocketAddr::new(IpAddr::V4(lab.dst_v4()), PORT));
    let a_only = lab.add_src_v4(0x21);
    let b_only = lab.add_src_v4(0x31);
    let both = lab.add_src_v4(0x41);
    let cli = lab.add_src_v4(0x51);
    let (allow_a, allow_b) = (lab.v4(0x61), lab.v4(0x71));
    let policy_a = ctl.write_policy(
        "a.toml",
        &format!(
            "# policy A\n[block]\nentries = [\"{a_only}\", \"{both}\"]\n\n[allow]\nentries = [\"{allow_a}\"]\n\n\
             [limits.default]\nrate = 1000\nburst = 2000\n\n[[limits.port]]\nport = \"udp/7000\"\nrate = 100\n"
        ),
    );
    let policy_b = ctl.write_policy(
        "b.toml",
        &format!(
            "# policy B\n[block]\nentries = [\"{both}\"]\nfiles = [\"lists/b-block.txt\"]\n\n[allow]\nentries = [\"{allow_b}\"]\n\n\
             [limits.default]\nrate = 2000\nburst = 4000\n\n[[limits.port]]\nport = \"udp/7001\"\nrate = 50\n\n\
             [[limits.port]]\nport = \"tcp/22\"\ndrop = true\n"
        ),
    );
    let b_list = ctl.write_policy("lists/b-block.txt", &format!("# B's list\n{b_only}\n"));
    let (sha_a, sha_b) = (sha256sum(&policy_a), sha256sum(&policy_b));
    let (a_text, b_text) = (policy_a.to_str().unwrap(), policy_b.to_str().unwrap());

    // check: the file's SHA-256 and its list files.
    let checked = ctl.json(&["policy", "check", "--json", a_text]);
    assert_eq!(checked["sha256"], sha_a, "{checked}");
    let checked = ctl.json(&["policy", "check", "--json", b_text]);
    assert_eq!(checked["sha256"], sha_b, "{checked}");
    assert_eq!(
        checked["list_files"][0]["sha256"],
        sha256sum(&b_list),
        "{checked}"
    );

    // Nothing applied yet.
    let out = ctl.cmd(&["policy", "show", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(NOT_FOUND),
        "policy show before any apply: {out:?}"
    );
    assert_eq!(status_sha(&ctl), None);
    ctl.ok(&["block", &cli.to_string()]);

    // diff from no policy.
    let diff = ctl.json(&["policy", "diff", "--json", a_text]);
    assert_eq!(diff["active_sha256"], Value::Null, "{diff}");
    assert_eq!(diff["sha256"], sha_a, "{diff}");
    assert_eq!(diff["empty"], false, "{diff}");
    assert_eq!(
        diff["changes"]["block_added"],
        json!([host(a_only), host(both)]),
        "{diff}"
    );

    // apply A, show A.
    ctl.ok(&["policy", "apply", a_text]);
    let shown = show(&ctl);
    assert_eq!(shown["sha256"], sha_a, "{shown}");
    assert_eq!(
        shown["source"],
        std::fs::canonicalize(&policy_a)
            .unwrap()
            .display()
            .to_string()
    );
    assert_eq!(shown["applied_by"], "root", "{shown}");
    assert_eq!(shown["uid"], 0, "{shown}");
    assert_eq!(shown["action"], "apply", "{shown}");
    assert_eq!(shown["shadow"], false, "{shown}");
    assert_eq!(shown["pending_confirmation"], Value::Null, "{shown}");
    assert_eq!(
        shown["policy"],
        std::fs::read_to_string(&policy_a).unwrap(),
        "{shown}"
    );
    let applied_at = shown["applied_at_unix"].as_u64().expect("applied_at_unix");
    assert!(applied_at.abs_diff(unix_now()) <= 5, "{shown}");
    assert_eq!(status_sha(&ctl).as_deref(), Some(sha_a.as_str()));
    let list_a = ctl.list_json();
    assert_eq!(
        origins(&list_a, "blocklist"),
        entries(&[
            (host(a_only), "policy"),
            (host(both), "policy"),
            (host(cli), "cli")
        ]),
        "{list_a}"
    );
    assert_eq!(
        origins(&list_a, "allowlist"),
        entries(&[(host(allow_a.into()), "policy")]),
        "{list_a}"
    );
    let rules_a = rules(&ctl);
    assert_eq!(
        rules_a.keys().collect::<Vec<_>>(),
        ["default", "udp/7000"],
        "{rules_a:?}"
    );
    assert_eq!(rules_a["default"]["rate"], 1000);
    assert_eq!(udp_through(&lab, &receiver, a_only), 0, "{a_only} under A");
    assert_eq!(udp_through(&lab, &receiver, both), 0, "{both} under A");
    assert_eq!(udp_through(&lab, &receiver, cli), 0, "{cli} under A");
    assert_eq!(
        udp_through(&lab, &receiver, b_only),
        COUNT,
        "{b_only} under A"
    );

    // diff B: exactly the differences; diff A: none. Neither changes anything.
    let diff = ctl.json(&["policy", "diff", "--json", b_text]);
    assert_eq!(diff["active_sha256"], sha_a, "{diff}");
    assert_eq!(diff["sha256"], sha_b, "{diff}");
    assert_eq!(diff["empty"], false, "{diff}");
    assert_eq!(
        diff["changes"],
        json!({
            "block_added": [host(b_only)],
            "block_removed": [host(a_only)],
            "shadow_block_added": [],
            "shadow_block_removed": [],
            "allow_added": [host(allow_b.into())],
            "allow_removed": [host(allow_a.into())],
            "rules_set": ["default", "tcp/22", "udp/7001"],
            "rules_removed": ["udp/7000"],
            "settings": [],
        }),
        "{diff}"
    );
    let diff = ctl.json(&["policy", "diff", "--json", a_text]);
    assert_eq!(diff["empty"], true, "{diff}");
    assert_eq!(shown_sha(&ctl), sha_a);
    assert_eq!(ctl.list_json(), list_a, "diff changed the lists");

    // apply B, show B.
    ctl.ok(&["policy", "apply", b_text]);
    let shown = show(&ctl);
    assert_eq!(shown["sha256"], sha_b, "{shown}");
    let files = shown["list_files"].as_array().expect("list_files");
    assert_eq!(files.len(), 1, "{shown}");
    assert!(
        files[0][0]
            .as_str()
            .is_some_and(|p| p.ends_with("lists/b-block.txt")),
        "{shown}"
    );
    assert_eq!(files[0][1], sha256sum(&b_list), "{shown}");
    assert_eq!(status_sha(&ctl).as_deref(), Some(sha_b.as_str()));
    let list_b = ctl.list_json();
    assert_eq!(
        origins(&list_b, "blocklist"),
        entries(&[
            (host(b_only), "policy"),
            (host(both), "policy"),
            (host(cli), "cli")
        ]),
        "{list_b}"
    );
    assert_eq!(
        origins(&list_b, "allowlist"),
        entries(&[(host(allow_b.into()), "policy")]),
        "{list_b}"
    );
    assert_eq!(rule_targets(&ctl), ["default", "tcp/22", "udp/7001"]);
    assert_eq!(
        udp_through(&lab, &receiver, a_only),
        COUNT,
        "{a_only} under B"
    );
    assert_eq!(udp_through(&lab, &receiver, b_only), 0, "{b_only} under B");
    assert_eq!(udp_through(&lab, &receiver, both), 0, "{both} under B");
    // A policy entry is not the CLI's to remove.
    let out = ctl.cmd(&["unblock", &b_only.to_string()]);
    assert_eq!(out.status.code(), Some(BAD_INPUT), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("policy"),
        "{out:?}"
    );

    // rollback: A again, with its entries and rules.
    let out = ctl.ok(&["policy", "rollback"]);
    assert!(out.contains(&sha_a), "{out}");
    let shown = show(&ctl);
    assert_eq!(shown["sha256"], sha_a, "{shown}");
    assert_eq!(shown["action"], "rollback", "{shown}");
    assert_eq!(status_sha(&ctl).as_deref(), Some(sha_a.as_str()));
    assert_eq!(ctl.list_json(), list_a, "rollback did not bring A back");
    assert_eq!(rules(&ctl), rules_a);
    assert_eq!(
        udp_through(&lab, &receiver, a_only),
        0,
        "{a_only} rolled back"
    );
    assert_eq!(
        udp_through(&lab, &receiver, b_only),
        COUNT,
        "{b_only} rolled back"
    );

    // Nothing before A: a second rollback is refused and changes nothing.
    let out = ctl.cmd(&["policy", "rollback"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(NOT_FOUND), "{stderr}");
    assert!(stderr.contains("no earlier policy version"), "{stderr}");
    assert_eq!(shown_sha(&ctl), sha_a);
    assert_eq!(ctl.list_json(), list_a);
    assert_eq!(rules(&ctl), rules_a);

    assert_eq!(
        policy_audit(&ctl),
        [
            ("apply".into(), None, Some(sha_a.clone())),
            ("apply".into(), Some(sha_a.clone()), Some(sha_b.clone())),
            ("rollback".into(), Some(sha_b), Some(sha_a)),
        ]
    );
    assert_eq!(ctl.audit_count("block"), 1);

    controller.terminate();
    ctl.detach_and_check(&lab.dst, &lab.dst_if);
}

/// A refused `policy apply`: exit code 2 and a line of stderr that starts
/// with `location` and says `needle`.
fn assert_refused(ctl: &Ctl, policy: &Path, location: &str, needles: &[&str]) {
    let out = ctl.cmd(&["policy", "apply", policy.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(BAD_INPUT),
        "policy apply {} should exit with 2:\n{stderr}",
        policy.display()
    );
    assert!(
        stderr
            .lines()
            .any(|line| line.starts_with(location) && needles.iter().all(|n| line.contains(n))),
        "no line starting with {location:?} and saying {needles:?} in:\n{stderr}"
    );
}

/// Everything a refused apply must leave as it was.
#[derive(Debug, PartialEq)]
struct Observed {
    list: Value,
    rules: Value,
    shown: Value,
    status_policy: Value,
    audit: Vec<Value>,
    history: String,
    stored: Vec<String>,
}

fn observe(ctl: &Ctl) -> Observed {
    let mut stored: Vec<String> = std::fs::read_dir(ctl.state_dir().join("policies"))
        .expect("the state's policies/")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    stored.sort();
    Observed {
        list: ctl.list_json(),
        rules: limits(ctl),
        shown: show(ctl),
        status_policy: ctl.status_json()["policy"].clone(),
        audit: ctl.audit_records(),
        history: std::fs::read_to_string(ctl.state_dir().join("history.jsonl"))
            .expect("history.jsonl"),
        stored,
    }
}

#[test]
fn invalid_policies_are_refused_with_a_location_and_change_nothing() {
    if skip_unless_root("invalid_policies_are_refused_with_a_location_and_change_nothing") {
        return;
    }
    let lab = Lab::new("pbad");
    let ctl = Ctl::new("pbad");
    let mut controller = ctl.run_background(&lab.dst, &[&lab.dst_if]);
    let good = ctl.write_policy(
        "good.toml",
        "[block]\nentries = [\"198.51.100.0/24\"]\n[allow]\nentries = [\"198.51.100.7\"]\n\
         [limits.default]\nrate = 500\n[[limits.port]]\nport = \"udp/7000\"\nrate = 10\n",
    );
    ctl.ok(&["policy", "apply", good.to_str().unwrap()]);
    ctl.ok(&["block", "203.0.113.9"]);
    let before = observe(&ctl);

    // A valid policy, different from the active one: refused only for
    // its owner or mode.
    let valid = "[block]\nentries = [\"192.0.2.0/24\"]\n[limits.default]\nrate = 99\n";
    let with_list = "[block]\nfiles = [\"lists/block.txt\"]\n";
    let mut tried = 0;
    let mut case = |name: &str,
                    policy: &str,
                    list: Option<&str>,
                    prepare: &dyn Fn(&Path, &Path),
                    location: &dyn Fn(&Path, &Path) -> String,
                    needles: &[&str]| {
        let path = ctl.write_policy(&format!("{name}/policy.toml"), policy);
        let list_path = path.parent().unwrap().join("lists/block.txt");
        if let Some(text) = list {
            ctl.write_policy(&format!("{name}/lists/block.txt"), text);
        }
        prepare(&path, &list_path);
        assert_refused(&ctl, &path, &location(&path, &list_path), needles);
        tried += 1;
    };
    let at = |suffix: &'static str| move |p: &Path, _: &Path| format!("{}{suffix}", p.display());
    let nothing = |_: &Path, _: &Path| {};

    case("syntax", "mode = auto\n", None, &nothing, &at(":1:8:"), &[]);
    case(
        "unknown-key",
        "[limits.default]\nrate = 10\nburts = 5\n",
        None,
        &nothing,
        &at(":3:1:"),
        &["burts"],
    );
    case(
        "bad-cidr",
        "[block]\nentries = [\"192.0.2.1\",\n  \"198.51.100.0/33\"]\n",
        None,
        &nothing,
        &at(":3:3:"),
        &["198.51.100.0/33"],
    );
    case(
        "overlap",
        "[[limits.port]]\nport = \"tcp/20-30\"\nrate = 5\n\n[[limits.port]]\nport = \"tcp/25\"\nrate = 10\n",
        None,
        &nothing,
        &at(":6:8:"),
        &["tcp/20-30", "tcp/25"],
    );
    case(
        "missing-list",
        with_list,
        None,
        &nothing,
        &|p: &Path, l: &Path| {
            assert!(!l.exists());
            format!("{}:2:10:", p.display())
        },
        &["lists/block.txt"],
    );
    case(
        "bad-list-line",
        with_list,
        Some("# ok\n192.0.2.1\n\n192.0.2.300 ; bad\n"),
        &nothing,
        &|_: &Path, l: &Path| format!("{}:4:", l.display()),
        &["192.0.2.300"],
    );
    case(
        "world-writable",
        valid,
        None,
        &|p: &Path, _: &Path| chmod(p, 0o666),
        &at(":"),
        &["writable by every user"],
    );
    case(
        "not-root",
        valid,
        None,
        &|p: &Path, _: &Path| chown(p, 65534, 65534),
        &at(":"),
        &["owned by uid 65534", "not by root"],
    );
    case(
        "group-writable",
        valid,
        None,
        &|p: &Path, _: &Path| {
            chown(p, 0, 65534);
            chmod(p, 0o664);
        },
        &at(":"),
        &["writable by group 65534"],
    );
    case(
        "list-not-root",
        with_list,
        Some("192.0.2.1\n"),
        &|_: &Path, l: &Path| chown(l, 65534, 65534),
        &at(":2:10:"),
        &["owned by uid 65534"],
    );
    case(
        "list-world-writable",
        with_list,
        Some("192.0.2.1\n"),
        &|_: &Path, l: &Path| chmod(l, 0o666),
        &at(":2:10:"),
        &["writable by every user"],
    );
    assert_eq!(tried, 11);

    let after = observe(&ctl);
    assert_eq!(
        after, before,
        "a refused policy apply changed the filter or the state"
    );
    assert!(controller.is_running(), "{}", controller.output());
    controller.terminate();
    ctl.detach_and_check(&lab.dst, &lab.dst_if);
}

/// Two sender threads per source, pinned to the CPUs in turn.
fn streams(lab: &Lab, src: IpAddr, dst: SocketAddr, max: Duration) -> Vec<UdpStream> {
    let cpus = thread::available_parallelism().map_or(1, std::num::NonZero::get);
    (0..2)
        .map(|i| {
            UdpStream::start_on_cpu(&lab.src, src, dst, Duration::from_millis(1), max, i % cpus)
        })
        .collect()
}

fn stop_all(streams: Vec<UdpStream>) -> u64 {
    streams.into_iter().map(|s| s.stop().sent).sum()
}

#[test]
fn swapping_policies_and_restarting_never_opens_a_gap() {
    if skip_unless_root("swapping_policies_and_restarting_never_opens_a_gap") {
        return;
    }
    let lab = Lab::new("pgap");
    let ctl = Ctl::new("pgap");
    let blocked = lab.add_src_v4(0x21);
    let passed = lab.add_src_v4(0x60);
    // A blocks the /28 around `blocked`, B exactly `blocked`: different
    // entries. Both limit `passed` generously, with different rules (A has
    // a port rule for the stream's port, B only the default rule), so each
    // swap also switches rules.
    let a = ctl.write_policy(
        "a.toml",
        &format!(
            "interfaces = [\"{iface}\"]\n[block]\nentries = [\"{net}/28\"]\n\
             [limits.default]\nrate = 100000\nburst = 100000\n\
             [[limits.port]]\nport = \"udp/{PORT}\"\nrate = 50000\nburst = 50000\n",
            iface = lab.dst_if,
            net = lab.v4(0x20)
        ),
    );
    let b = ctl.write_policy(
        "b.toml",
        &format!(
            "interfaces = [\"{iface}\"]\n[block]\nentries = [\"{blocked}\"]\n\
             [limits.default]\nrate = 200000\nburst = 200000\n\
             [[limits.port]]\nport = \"udp/{other}\"\nrate = 10\n",
            iface = lab.dst_if,
            other = PORT + 1
        ),
    );
    let (sha_a, sha_b) = (sha256sum(&a), sha256sum(&b));
    let policies = [(&a, &sha_a), (&b, &sha_b)];
    let ifaces = [lab.dst_if.as_str()];
    let mut controller = ctl.run_policy_background(&lab.dst, &a, &ifaces);
    assert_eq!(shown_sha(&ctl), sha_a);

    let dst = SocketAddr::new(IpAddr::V4(lab.dst_v4()), PORT);
    let max = Duration::from_secs(90);
    let collector = UdpReceiver::bind(&lab.dst, dst).collect(max);
    let blocked_streams = streams(&lab, blocked, dst, max);
    let passed_streams = streams(&lab, passed, dst, max);
    wait_until(
        "traffic from the passed source",
        Duration::from_secs(5),
        || collector.count_from(passed) >= 100,
    );

    let start = Instant::now();
    for round in 0..ROUNDS {
        let (file, sha) = policies[(round + 1) % 2];
        ctl.ok(&["policy", "apply", file.to_str().unwrap()]);
        assert_eq!(&shown_sha(&ctl), sha, "apply {round}");
    }
    let applies = start.elapsed();

    let start = Instant::now();
    for round in 0..ROUNDS {
        let status = controller.terminate();
        assert!(status.success(), "{status}\n{}", controller.output());
        // No controller: the pins enforce meanwhile.
        thread::sleep(Duration::from_millis(20));
        let (file, sha) = policies[round % 2];
        controller = ctl.run_policy_background(&lab.dst, file, &ifaces);
        assert_eq!(&shown_sha(&ctl), sha, "restart {round}");
    }
    let restarts = start.elapsed();

    thread::sleep(Duration::from_millis(200));
    let blocked_sent = stop_all(blocked_streams);
    let passed_sent = stop_all(passed_streams);
    thread::sleep(QUIET);
    let got = collector.stop();
    let (blocked_got, passed_got) = (count_from(&got, blocked), count_from(&got, passed));
    eprintln!(
        "{ROUNDS} applies took {applies:?}, {ROUNDS} restarts {restarts:?}; blocked source sent \
         {blocked_sent}, {blocked_got} received; passed source sent {passed_sent}, {passed_got} received"
    );
    assert!(
        blocked_sent >= 2000 && passed_sent >= 2000,
        "the streams were too thin to test anything"
    );
    assert_eq!(
        blocked_got, 0,
        "{blocked} got through while blocked by both policies"
    );
    assert_eq!(
        passed_got as u64, passed_sent,
        "{passed} lost datagrams though neither policy limits it"
    );
    let stats = ctl.stats_json();
    assert_eq!(packets(&stats, "blocklist"), blocked_sent, "{stats}");
    assert_eq!(packets(&stats, "ratelimit"), 0, "{stats}");

    controller.terminate();
    ctl.detach_and_check(&lab.dst, &lab.dst_if);
}

/// Policies A and B for the confirmation tests: each blocks its own source
/// and has its own port rule.
struct Confirmable {
    a: std::path::PathBuf,
    b: std::path::PathBuf,
    c: std::path::PathBuf,
    sha_a: String,
    sha_b: String,
    a_src: IpAddr,
    b_src: IpAddr,
    receiver: UdpReceiver,
}

impl Confirmable {
    fn new(lab: &Lab, ctl: &Ctl) -> Self {
        let a_src = lab.add_src_v4(0x21);
        let b_src = lab.add_src_v4(0x31);
        let a = ctl.write_policy(
            "a.toml",
            &format!("[block]\nentries = [\"{a_src}\"]\n[[limits.port]]\nport = \"udp/7000\"\nrate = 10\n"),
        );
        let b = ctl.write_policy(
            "b.toml",
            &format!("[block]\nentries = [\"{b_src}\"]\n[[limits.port]]\nport = \"udp/7001\"\nrate = 10\n"),
        );
        let c = ctl.write_policy("c.toml", "[block]\nentries = [\"192.0.2.0/24\"]\n");
        let receiver = UdpReceiver::bind(&lab.dst, SocketAddr::new(IpAddr::V4(lab.dst_v4()), PORT));
        Self {
            sha_a: sha256sum(&a),
            sha_b: sha256sum(&b),
            a,
            b,
            c,
            a_src,
            b_src,
            receiver,
        }
    }

    /// `policy apply B --confirm {secs}s`; returns the deadline status shows.
    fn apply_b_unconfirmed(&self, ctl: &Ctl, secs: u64) -> u64 {
        let before = unix_now();
        let out = ctl.ok(&[
            "policy",
            "apply",
            self.b.to_str().unwrap(),
            "--confirm",
            &format!("{secs}s"),
        ]);
        assert!(out.contains("policy confirm"), "{out}");
        let status = ctl.status_json();
        let policy = &status["policy"];
        assert_eq!(policy["active_policy_sha256"], self.sha_b, "{status}");
        assert_eq!(
            policy["pending_confirmation_sha256"], self.sha_b,
            "{status}"
        );
        let deadline = policy["pending_deadline_unix"]
            .as_u64()
            .unwrap_or_else(|| panic!("no pending deadline: {status}"));
        assert!(
            (before + secs..=unix_now() + secs + 1).contains(&deadline),
            "deadline {deadline}, applied at {before}"
        );
        assert_eq!(show(ctl)["pending_confirmation"]["sha256"], self.sha_b);
        deadline
    }

    /// Asserts that A is active as it was, with no confirmation pending.
    fn assert_a(&self, lab: &Lab, ctl: &Ctl, list_a: &Value, rules_a: &BTreeMap<String, Value>) {
        let shown = show(ctl);
        assert_eq!(shown["sha256"], self.sha_a, "{shown}");
        assert_eq!(shown["pending_confirmation"], Value::Null, "{shown}");
        assert_eq!(
            ctl.status_json()["policy"]["pending_deadline_unix"],
            Value::Null
        );
        assert_eq!(&ctl.list_json(), list_a, "B's entries are not all gone");
        assert_eq!(&rules(ctl), rules_a, "B's rules are not all gone");
        assert_eq!(udp_through(lab, &self.receiver, self.a_src), 0);
        assert_eq!(udp_through(lab, &self.receiver, self.b_src), COUNT);
    }

    /// Polls (bounded) until A is active again; returns when that was seen.
    fn wait_for_revert(&self, ctl: &Ctl, controller: &mut Controller) -> Instant {
        wait_until("revert to A", Duration::from_secs(15), || {
            if let Some(status) = controller.exit_status() {
                panic!("the controller exited ({status}):\n{}", controller.output());
            }
            status_sha(ctl).as_deref() == Some(self.sha_a.as_str())
        });
        Instant::now()
    }
}

#[test]
fn an_unconfirmed_apply_is_reverted_at_its_deadline_also_across_restarts() {
    if skip_unless_root("an_unconfirmed_apply_is_reverted_at_its_deadline_also_across_restarts") {
        return;
    }
    let lab = Lab::new("prev");
    let ctl = Ctl::new("prev");
    let ifaces = [lab.dst_if.as_str()];
    let mut controller = ctl.run_background(&lab.dst, &ifaces);
    let p = Confirmable::new(&lab, &ctl);
    ctl.ok(&["policy", "apply", p.a.to_str().unwrap()]);
    let list_a = ctl.list_json();
    let rules_a = rules(&ctl);

    // Confirmation windows long enough for what each step does inside
    // them on a loaded machine (sending, or a restart that loads the
    // program), so that a revert can only come at its deadline.
    // 1. The controller runs throughout.
    let applied = Instant::now();
    p.apply_b_unconfirmed(&ctl, 5);
    assert_eq!(udp_through(&lab, &p.receiver, p.b_src), 0, "B is enforced");
    assert_eq!(udp_through(&lab, &p.receiver, p.a_src), COUNT);
    let reverted = p.wait_for_revert(&ctl, &mut controller);
    let after = reverted - applied;
    eprintln!("reverted {after:?} after `apply --confirm 5s`");
    // Never before the time given to confirm.
    assert!(
        after >= Duration::from_secs(5),
        "reverted {after:?} after `apply --confirm 5s`"
    );
    p.assert_a(&lab, &ctl, &list_a, &rules_a);
    assert_eq!(show(&ctl)["action"], "revert");
    assert_eq!(
        policy_audit(&ctl).last(),
        Some(&(
            "revert".to_string(),
            Some(p.sha_b.clone()),
            Some(p.sha_a.clone())
        ))
    );

    // 2. The controller is killed right after the apply and back before
    //    the deadline.
    p.apply_b_unconfirmed(&ctl, 10);
    controller.kill9();
    controller = ctl.run_background(&lab.dst, &ifaces);
    assert_eq!(shown_sha(&ctl), p.sha_b, "reverted before the deadline");
    p.wait_for_revert(&ctl, &mut controller);
    p.assert_a(&lab, &ctl, &list_a, &rules_a);

    // 3. Killed right after the apply, back only after the deadline: no
    //    one reverts meanwhile; the new controller does at once (well
    //    within another confirmation window, had it started one).
    let deadline = p.apply_b_unconfirmed(&ctl, 10);
    controller.kill9();
    wait_until("the deadline", Duration::from_secs(15), || {
        unix_now() > deadline + 1
    });
    assert_eq!(shown_sha(&ctl), p.sha_b, "reverted without a controller");
    assert_eq!(udp_through(&lab, &p.receiver, p.b_src), 0, "B is enforced");
    // --confirm needs a controller: refused, nothing changes.
    let out = ctl.cmd(&["policy", "apply", p.c.to_str().unwrap(), "--confirm", "3s"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(BAD_INPUT), "{stderr}");
    assert!(stderr.contains("running `filter-ctl run`"), "{stderr}");
    let status = ctl.status_json();
    assert_eq!(
        status["policy"]["active_policy_sha256"], p.sha_b,
        "{status}"
    );
    assert_eq!(
        status["policy"]["pending_confirmation_sha256"], p.sha_b,
        "{status}"
    );
    let started = Instant::now();
    controller = ctl.run_background(&lab.dst, &ifaces);
    let reverted = p.wait_for_revert(&ctl, &mut controller);
    assert!(
        reverted - started < Duration::from_secs(8),
        "the restarted controller took {:?} to revert an overdue policy",
        reverted - started
    );
    p.assert_a(&lab, &ctl, &list_a, &rules_a);
    let reverts = policy_audit(&ctl)
        .iter()
        .filter(|(command, _, _)| command == "revert")
        .count();
    assert_eq!(reverts, 3);

    controller.terminate();
    ctl.detach_and_check(&lab.dst, &lab.dst_if);
}

#[test]
fn a_confirmed_apply_stays_past_its_deadline() {
    if skip_unless_root("a_confirmed_apply_stays_past_its_deadline") {
        return;
    }
    let lab = Lab::new("pcnf");
    let ctl = Ctl::new("pcnf");
    let mut controller = ctl.run_background(&lab.dst, &[&lab.dst_if]);
    let p = Confirmable::new(&lab, &ctl);
    ctl.ok(&["policy", "apply", p.a.to_str().unwrap()]);
    // Long enough that the confirm below comes before the deadline also on
    // a loaded machine.
    let deadline = p.apply_b_unconfirmed(&ctl, 10);
    let list_b = ctl.list_json();
    let rules_b = rules(&ctl);
    let out = ctl.ok(&["policy", "confirm"]);
    assert!(out.contains(&p.sha_b), "{out}");
    let status = ctl.status_json();
    assert_eq!(
        status["policy"]["pending_confirmation_sha256"],
        Value::Null,
        "{status}"
    );
    // Nothing is waiting any more.
    let out = ctl.cmd(&["policy", "confirm"]);
    assert_eq!(out.status.code(), Some(NOT_FOUND), "{out:?}");

    wait_until("past the deadline", Duration::from_secs(15), || {
        unix_now() > deadline + 2
    });
    let shown = show(&ctl);
    assert_eq!(shown["sha256"], p.sha_b, "{shown}");
    assert_eq!(shown["action"], "apply", "{shown}");
    assert_eq!(ctl.list_json(), list_b);
    assert_eq!(rules(&ctl), rules_b);
    assert_eq!(udp_through(&lab, &p.receiver, p.b_src), 0);
    assert_eq!(udp_through(&lab, &p.receiver, p.a_src), COUNT);
    assert_eq!(
        policy_audit(&ctl),
        [
            ("apply".into(), None, Some(p.sha_a.clone())),
            ("apply".into(), Some(p.sha_a), Some(p.sha_b.clone())),
            ("confirm".into(), Some(p.sha_b.clone()), Some(p.sha_b)),
        ]
    );

    controller.terminate();
    ctl.detach_and_check(&lab.dst, &lab.dst_if);
}

#[test]
fn live_entries_automatic_blocks_and_the_policy_survive_a_reboot() {
    if skip_unless_root("live_entries_automatic_blocks_and_the_policy_survive_a_reboot") {
        return;
    }
    let lab = Lab::new("pboot");
    let ctl = Ctl::new("pboot");
    let ifaces = [lab.dst_if.as_str()];
    let mut controller = ctl.run_background(&lab.dst, &ifaces);
    let dst = SocketAddr::new(IpAddr::V4(lab.dst_v4()), PORT);
    let receiver = UdpReceiver::bind(&lab.dst, dst);
    let long = lab.add_src_v4(0x21);
    let short = lab.add_src_v4(0x22);
    let by_policy = lab.add_src_v4(0x23);
    let flooder = lab.add_src_v4(0x50);
    let good = IpAddr::V4(lab.src_v4());
    let allowed = lab.v4(0x70);
    let policy = ctl.write_policy(
        "policy.toml",
        &format!(
            "[block]\nentries = [\"{by_policy}\"]\n[allow]\nentries = [\"{allowed}\"]\n\
             [[limits.port]]\nport = \"udp/{FLOOD_PORT}\"\nrate = 100\nburst = 20\n\
             autoblock_after = 50\nwindow = \"1s\"\nblock_for = \"{BLOCK_FOR_SECS}s\"\n"
        ),
    );
    let sha = sha256sum(&policy);
    ctl.ok(&["policy", "apply", policy.to_str().unwrap()]);
    ctl.ok(&["block", &long.to_string(), "--ttl", "1h"]);
    let short_blocked = Instant::now();
    ctl.ok(&["block", &short.to_string(), "--ttl", "2s"]);

    // Flood until the source is blocked automatically, and the controller
    // has recorded the block in the state.
    let flood_dst = SocketAddr::new(IpAddr::V4(lab.dst_v4()), FLOOD_PORT);
    let flood = streams(&lab, flooder, flood_dst, Duration::from_secs(10));
    wait_until("the automatic block", Duration::from_secs(5), || {
        ctl.list_json()["autoblock"]
            .as_array()
            .is_some_and(|a| a.iter().any(|b| b["source"] == host(flooder)))
    });
    stop_all(flood);
    let recorded = |ip: IpAddr| {
        ["live.journal", "live.snapshot"].iter().any(|name| {
            std::fs::read_to_string(ctl.state_dir().join(name))
                .is_ok_and(|text| text.contains(&format!("\"{}\"", host(ip))))
        })
    };
    wait_until(
        "the automatic block in the state",
        Duration::from_secs(5),
        || recorded(flooder),
    );
    let before = ctl.list_json();
    assert_eq!(
        before["autoblock"].as_array().map(Vec::len),
        Some(1),
        "{before}"
    );
    let auto_left = before["autoblock"][0]["expires_in_secs"]
        .as_u64()
        .expect("expires_in_secs");

    // Reboot: the controller dies, the pins and the attachment go (detach
    // removes them, as a reboot would), the state directory stays.
    controller.kill9();
    ctl.detach_and_check(&lab.dst, &lab.dst_if);
    for name in ["history.jsonl", "audit.jsonl", "live.journal"] {
        assert!(
            ctl.state_dir().join(name).exists(),
            "detach removed {name} from the state directory"
        );
    }
    assert_eq!(shown_sha(&ctl), sha, "the state still knows the policy");
    assert_eq!(
        udp_through(&lab, &receiver, long),
        COUNT,
        "no filter after detach"
    );
    wait_until("the short TTL", Duration::from_secs(10), || {
        short_blocked.elapsed() >= Duration::from_secs(3)
    });
    let restores = ctl.audit_count("restore");

    controller = ctl.run_background(&lab.dst, &ifaces);
    assert!(controller.shows("restored"), "{}", controller.output());
    let after = ctl.list_json();
    assert_eq!(
        origins(&after, "blocklist"),
        entries(&[(host(long), "cli"), (host(by_policy), "policy")]),
        "{after}"
    );
    assert_eq!(
        origins(&after, "allowlist"),
        entries(&[(host(allowed.into()), "policy")]),
        "{after}"
    );
    let long_left = after["blocklist"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["cidr"] == host(long))
        .and_then(|e| e["expires_in_secs"].as_u64())
        .unwrap_or_else(|| panic!("{long} has no TTL after the restore: {after}"));
    assert!(
        (3000..3600).contains(&long_left),
        "{long}: {long_left}s left of 1h"
    );
    let auto = after["autoblock"].as_array().expect("autoblock");
    assert_eq!(auto.len(), 1, "{after}");
    assert_eq!(auto[0]["source"], host(flooder), "{after}");
    assert_eq!(auto[0]["rule"], format!("udp/{FLOOD_PORT}"), "{after}");
    let left = auto[0]["expires_in_secs"]
        .as_u64()
        .expect("expires_in_secs");
    assert!(
        left > 0 && left <= auto_left && auto_left <= BLOCK_FOR_SECS,
        "automatic block: {left}s left after the restore, {auto_left}s before"
    );
    assert_eq!(shown_sha(&ctl), sha);
    assert_eq!(status_sha(&ctl).as_deref(), Some(sha.as_str()));
    let restored_rules = rules(&ctl);
    let rule = &restored_rules[&format!("udp/{FLOOD_PORT}")];
    assert_eq!(rule["autoblock_after"], 50, "{rule}");

    // Real packets: enforced as before the reboot.
    assert_eq!(
        udp_through(&lab, &receiver, long),
        0,
        "{long} after the restore"
    );
    assert_eq!(udp_through(&lab, &receiver, by_policy), 0, "{by_policy}");
    assert_eq!(udp_through(&lab, &receiver, flooder), 0, "{flooder}");
    assert_eq!(
        udp_through(&lab, &receiver, short),
        COUNT,
        "{short} expired"
    );
    assert_eq!(udp_through(&lab, &receiver, good), COUNT, "{good}");
    let stats = ctl.stats_json();
    assert_eq!(packets(&stats, "blocklist"), 2 * COUNT as u64, "{stats}");
    assert_eq!(packets(&stats, "autoblock"), COUNT as u64, "{stats}");

    assert_eq!(ctl.audit_count("block"), 2, "one record per block command");
    assert_eq!(
        ctl.audit_count("restore"),
        restores + 1,
        "one restore record for the restart"
    );

    controller.terminate();
    ctl.detach_and_check(&lab.dst, &lab.dst_if);
}

#[test]
fn shadow_rules_and_policies_count_would_be_drops_and_drop_nothing() {
    if skip_unless_root("shadow_rules_and_policies_count_would_be_drops_and_drop_nothing") {
        return;
    }
    let lab = Lab::new("pshd");
    // The exact counts below are global: no IPv6 background from the
    // source side (MLD reports, router solicitations from its link-local
    // address), which the default rule would count too.
    in_netns(&lab.src, || {
        std::fs::write(
            format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", lab.src_if),
            "1",
        )
        .expect("disabling IPv6 on the source side");
    });
    let ctl = Ctl::new("pshd");
    let mut controller = ctl.run_background(&lab.dst, &[&lab.dst_if]);
    let dst = SocketAddr::new(IpAddr::V4(lab.dst_v4()), PORT);
    let receiver = UdpReceiver::bind(&lab.dst, dst);
    let other = UdpReceiver::bind(
        &lab.dst,
        SocketAddr::new(IpAddr::V4(lab.dst_v4()), OTHER_PORT),
    );
    let burst = |src: IpAddr, to: &UdpReceiver| {
        assert_eq!(
            udp_send(&lab.src, src, to.addr(), N, Duration::from_millis(1)),
            N
        );
        count_from(&to.drain(QUIET, DRAIN_MAX), src)
    };
    let counts = |reasons: &[&str]| -> Vec<u64> {
        let stats = ctl.stats_json();
        reasons.iter().map(|r| packets(&stats, r)).collect()
    };
    let limit =
        |shadow: bool| format!("[limits.default]\nrate = 1\nburst = 1\nshadow = {shadow}\n");

    // A shadow default rule: everything passes, the would-be drops are counted.
    let file = ctl.write_policy("shadow-rule.toml", &limit(true));
    ctl.ok(&["policy", "apply", file.to_str().unwrap()]);
    assert_eq!(
        show(&ctl)["shadow"],
        false,
        "only the rule is in shadow mode"
    );
    let src = lab.add_src_v4(0x21);
    assert_eq!(burst(src, &receiver), N, "a shadow limit dropped packets");
    let [shadow_limited, limited] = counts(&["shadow_ratelimit", "ratelimit"])[..] else {
        unreachable!()
    };
    eprintln!("shadow rate 1/s burst 1: {N} sent, {shadow_limited} counted as shadow_ratelimit");
    assert!(
        (N as u64 / 2..N as u64).contains(&shadow_limited),
        "shadow_ratelimit {shadow_limited} for {N} packets at rate 1/s burst 1"
    );
    assert_eq!(limited, 0);

    // The same rule enforced: drops.
    let file = ctl.write_policy("rule.toml", &limit(false));
    ctl.ok(&["policy", "apply", file.to_str().unwrap()]);
    let src = lab.add_src_v4(0x22);
    let got = burst(src, &receiver);
    assert!(
        (1..=2).contains(&got),
        "{got} of {N} passed rate 1/s burst 1"
    );
    let [shadow_after, limited] = counts(&["shadow_ratelimit", "ratelimit"])[..] else {
        unreachable!()
    };
    assert_eq!(limited, (N - got) as u64);
    assert_eq!(
        shadow_after, shadow_limited,
        "an enforced rule counted shadow drops"
    );

    // A whole policy in shadow mode: a block entry and a closed port.
    let blocked = lab.add_src_v4(0x23);
    let closed_port = format!(
        "[block]\nentries = [\"{blocked}\"]\n[[limits.port]]\nport = \"udp/{OTHER_PORT}\"\ndrop = true\n"
    );
    let file = ctl.write_policy("shadow.toml", &format!("shadow = true\n{closed_port}"));
    ctl.ok(&["policy", "apply", file.to_str().unwrap()]);
    assert_eq!(show(&ctl)["shadow"], true);
    assert_eq!(ctl.status_json()["policy"]["shadow"], true);
    assert_eq!(
        origins(&ctl.list_json(), "blocklist"),
        entries(&[(host(blocked), "policy (shadow)")])
    );
    let reasons = [
        "shadow_blocklist",
        "blocklist",
        "shadow_port_denied",
        "port_denied",
    ];
    let before = counts(&reasons);
    assert_eq!(
        burst(blocked, &receiver),
        N,
        "a shadow block dropped packets"
    );
    let bystander = lab.add_src_v4(0x24);
    assert_eq!(
        burst(bystander, &other),
        N,
        "a shadow drop rule dropped packets"
    );
    let after = counts(&reasons);
    let delta: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    assert_eq!(delta, [N as u64, 0, N as u64, 0], "{reasons:?}");

    // The same policy enforced.
    let file = ctl.write_policy("enforced.toml", &closed_port);
    ctl.ok(&["policy", "apply", file.to_str().unwrap()]);
    assert_eq!(
        origins(&ctl.list_json(), "blocklist"),
        entries(&[(host(blocked), "policy")])
    );
    assert_eq!(burst(blocked, &receiver), 0, "{blocked} enforced");
    assert_eq!(burst(bystander, &other), 0, "udp/{OTHER_PORT} enforced");
    let last = counts(&reasons);
    let delta: Vec<u64> = last.iter().zip(&after).map(|(a, b)| a - b).collect();
    assert_eq!(delta, [0, N as u64, 0, N as u64], "{reasons:?}");

    controller.terminate();
    ctl.detach_and_check(&lab.dst, &lab.dst_if);
}

#[test]
fn sighup_reloads_a_valid_policy_and_keeps_the_running_one_on_a_broken_file() {
    if skip_unless_root("sighup_reloads_a_valid_policy_and_keeps_the_running_one_on_a_broken_file")
    {
        return;
    }
    let lab = Lab::new("phup");
    let ctl = Ctl::new("phup");
    let a_src = lab.add_src_v4(0x21);
    let b_src = lab.add_src_v4(0x31);
    let text = |blocked: IpAddr, port: u16| {
        format!(
            "interfaces = [\"{}\"]\n[block]\nentries = [\"{blocked}\"]\n\
             [[limits.port]]\nport = \"udp/{port}\"\nrate = 10\n",
            lab.dst_if
        )
    };
    let ifaces = [lab.dst_if.as_str()];

    // A broken file at start is refused, and nothing is attached.
    let broken = ctl.write_policy("broken.toml", "[block\nentries = 1\n");
    let out = ctl.run_foreground(
        &lab.dst,
        &["--policy", broken.to_str().unwrap()],
        RUN_TIMEOUT,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(BAD_INPUT), "{stderr}");
    assert!(
        stderr.contains(&format!("{}:1:", broken.display())),
        "{stderr}"
    );
    assert!(!ctl.pin_dir().exists(), "a refused run left pins behind");
    assert!(!lab.xdp_attached());

    let file = ctl.write_policy("policy.toml", &text(a_src, 7000));
    let sha_a = sha256sum(&file);
    let mut controller = ctl.run_policy_background(&lab.dst, &file, &ifaces);
    let receiver = UdpReceiver::bind(&lab.dst, SocketAddr::new(IpAddr::V4(lab.dst_v4()), PORT));
    assert_eq!(shown_sha(&ctl), sha_a);
    let list_a = ctl.list_json();
    let rules_a = rules(&ctl);
    assert_eq!(udp_through(&lab, &receiver, a_src), 0);

    // Each broken version: logged, the running policy stays.
    let refusals = |c: &Controller| c.output().matches("not applied").count();
    let hangup = |controller: &mut Controller, what: &str| {
        let seen = refusals(controller);
        controller.send_signal(libc::SIGHUP);
        wait_until(what, Duration::from_secs(10), || {
            refusals(controller) > seen
        });
        assert!(controller.is_running(), "{what}: {}", controller.output());
        assert_eq!(shown_sha(&ctl), sha_a, "{what}");
        assert_eq!(ctl.list_json(), list_a, "{what}");
        assert_eq!(rules(&ctl), rules_a, "{what}");
        assert_eq!(udp_through(&lab, &receiver, a_src), 0, "{what}");
        assert_eq!(udp_through(&lab, &receiver, b_src), COUNT, "{what}");
    };
    ctl.write_policy("policy.toml", "interfaces = [\n[block]\n");
    hangup(&mut controller, "a syntax error");
    ctl.write_policy("policy.toml", "[block]\nentries = [\"198.18.0.0/33\"]\n");
    hangup(&mut controller, "a bad prefix");
    ctl.write_policy("policy.toml", &text(b_src, 7001));
    chmod(&file, 0o666);
    hangup(&mut controller, "a world-writable file");
    assert!(
        controller.shows("writable by every user"),
        "{}",
        controller.output()
    );

    // A valid version: active.
    chmod(&file, 0o644);
    let sha_b = sha256sum(&file);
    controller.send_signal(libc::SIGHUP);
    wait_until("the reload", Duration::from_secs(10), || {
        status_sha(&ctl).as_deref() == Some(sha_b.as_str())
    });
    assert_eq!(shown_sha(&ctl), sha_b);
    assert_eq!(
        origins(&ctl.list_json(), "blocklist"),
        entries(&[(host(b_src), "policy")])
    );
    assert_eq!(rule_targets(&ctl), ["udp/7001"]);
    assert_eq!(udp_through(&lab, &receiver, b_src), 0);
    assert_eq!(udp_through(&lab, &receiver, a_src), COUNT);
    assert_eq!(
        policy_audit(&ctl).last(),
        Some(&("reload".to_string(), Some(sha_a), Some(sha_b)))
    );
    assert!(controller.is_running(), "{}", controller.output());

    controller.terminate();
    ctl.detach_and_check(&lab.dst, &lab.dst_if);
}
