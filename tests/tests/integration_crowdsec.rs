//! `CrowdSec` bouncer mode, end to end: a real LAPI (`tests/src/crowdsec.rs`)
//! in the filter's namespace, decisions added and deleted with `cscli`, the
//! real `filter-ctl run` pulling them, and real packets from the lab's
//! source namespace. Needs root and `cargo xtask setup` (`CrowdSec` unpacked).

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream},
    thread,
    time::{Duration, Instant},
};

use filter_tests::{
    crowdsec::{Lapi, skip_unless_crowdsec},
    ctl::{Controller, Ctl},
    netns::{Lab, NetNs, UdpReceiver, count_from, in_netns, skip_unless_root, udp_send},
};

const POLL: &str = "1s";
/// One poll interval plus the time a pull and an apply take, with margin
/// for a loaded machine.
const ENFORCED_WITHIN: Duration = Duration::from_secs(8);
/// After an outage: the puller's retries back off (half to all of 1, 2, 4,
/// 8, 16 s, ... in `filter-ctl`), so the first pull after the LAPI is back
/// may come up to 16 s later, on top of [`ENFORCED_WITHIN`].
const RECONNECTED_WITHIN: Duration = Duration::from_secs(30);
const METRICS_PORT: u16 = 9711;
const UDP_PORT: u16 = 5000;
const SENT: usize = 5;

fn run_bouncer(ctl: &Ctl, lab: &Lab, lapi: &Lapi, key_file: &str) -> Controller {
    ctl.run_background_with(
        &lab.dst,
        &[&lab.dst_if],
        &[
            "--crowdsec-url",
            &lapi.url(),
            "--crowdsec-key-file",
            key_file,
            "--crowdsec-poll-interval",
            POLL,
            "--metrics-addr",
            &format!("127.0.0.1:{METRICS_PORT}"),
            "--sweep-interval",
            "1s",
        ],
    )
}

/// The blocklist entries of origin crowdsec, as `list --json` shows them.
fn crowdsec_entries(ctl: &Ctl) -> Vec<String> {
    let list = ctl.list_json();
    let mut cidrs: Vec<String> = list["blocklist"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .filter(|e| e["origin"] == "crowdsec")
                .filter_map(|e| e["cidr"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    cidrs.sort();
    cidrs
}

/// Waits (bounded) until the crowdsec entries are `want`.
fn wait_for_entries(ctl: &Ctl, controller: &Controller, want: &[String], what: &str) {
    let mut want = want.to_vec();
    want.sort();
    let deadline = Instant::now() + ENFORCED_WITHIN;
    loop {
        let got = crowdsec_entries(ctl);
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: crowdsec entries {got:?}, expected {want:?} within {ENFORCED_WITHIN:?}\n{}",
            controller.output()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// `GET /metrics` inside `ns`.
fn scrape(ns: &NetNs) -> String {
    in_netns(ns, || {
        let addr = SocketAddr::from(([127, 0, 0, 1], METRICS_PORT));
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .ok()?;
        write!(
            stream,
            "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        Some(response)
    })
    .unwrap_or_default()
}

fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?.strip_prefix(' ')?;
        rest.trim().parse().ok()
    })
}

fn wait_for_metric(ns: &NetNs, series: &str, value: f64, controller: &Controller) {
    wait_for_metric_within(ns, series, value, controller, ENFORCED_WITHIN);
}

fn wait_for_metric_within(
    ns: &NetNs,
    series: &str,
    value: f64,
    controller: &Controller,
    within: Duration,
) {
    let deadline = Instant::now() + within;
    loop {
        let text = scrape(ns);
        if sample(&text, series) == Some(value) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{series} is not {value} within {within:?}:\n{text}\n{}",
            controller.output()
        );
        thread::sleep(Duration::from_millis(200));
    }
}

/// Datagrams from `src` that reach the destination.
fn through(lab: &Lab, receiver: &UdpReceiver, src: IpAddr) -> usize {
    let dst = SocketAddr::new(lab.dst_for(src), UDP_PORT);
    assert_eq!(
        udp_send(&lab.src, src, dst, SENT, Duration::from_millis(1)),
        SENT
    );
    count_from(
        &receiver.drain(Duration::from_millis(200), Duration::from_secs(3)),
        src,
    )
}

fn host(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(_) => format!("{ip}/32"),
        IpAddr::V6(_) => format!("{ip}/128"),
    }
}

#[test]
fn decisions_are_enforced_lifted_and_kept_through_an_outage() {
    let name = "decisions_are_enforced_lifted_and_kept_through_an_outage";
    if skip_unless_root(name) || skip_unless_crowdsec(name) {
        return;
    }
    let lab = Lab::new("cs");
    let ctl = Ctl::new("cs");
    let mut lapi = Lapi::start(&lab.dst, "cs");
    let key_file = lapi.key_file.display().to_string();
    let mut controller = run_bouncer(&ctl, &lab, &lapi, &key_file);
    let rx4 = UdpReceiver::bind(
        &lab.dst,
        SocketAddr::new(IpAddr::V4(lab.dst_v4()), UDP_PORT),
    );
    let rx6 = UdpReceiver::bind(
        &lab.dst,
        SocketAddr::new(IpAddr::V6(lab.dst_v6()), UDP_PORT),
    );

    let banned4 = lab.add_src_v4(0x20);
    let in_range = lab.add_src_v4(0x45);
    let banned6 = lab.add_src_v6(7, 1);
    let good = IpAddr::V4(lab.src_v4());
    for src in [banned4, in_range, banned6, good] {
        assert_eq!(
            through(&lab, if src.is_ipv4() { &rx4 } else { &rx6 }, src),
            SENT,
            "{src} before any decision"
        );
    }

    // A range written with host bits (CrowdSec keeps it so): enforced as
    // the canonical prefix.
    let range_written = format!("{}/26", lab.v4(0x47));
    let range = format!("{}/26", lab.v4(0x40));
    lapi.cscli_ok(&[
        "decisions",
        "add",
        "--ip",
        &banned4.to_string(),
        "--duration",
        "1h",
    ]);
    lapi.cscli_ok(&[
        "decisions",
        "add",
        "--range",
        &range_written,
        "--duration",
        "1h",
    ]);
    lapi.cscli_ok(&[
        "decisions",
        "add",
        "--ip",
        &banned6.to_string(),
        "--duration",
        "2h",
    ]);
    let all = vec![host(banned4), range.clone(), host(banned6)];
    wait_for_entries(&ctl, &controller, &all, "after cscli decisions add");
    assert_eq!(through(&lab, &rx4, banned4), 0, "{banned4} is banned");
    assert_eq!(
        through(&lab, &rx4, in_range),
        0,
        "{in_range} is in the banned {range}"
    );
    assert_eq!(through(&lab, &rx6, banned6), 0, "{banned6} is banned");
    assert_eq!(through(&lab, &rx4, good), SENT, "{good} is not banned");
    wait_for_metric(&lab.dst, "xdp_filter_crowdsec_up", 1.0, &controller);
    let text = scrape(&lab.dst);
    assert_eq!(
        sample(&text, "xdp_filter_crowdsec_decisions_applied_total"),
        Some(3.0),
        "{text}"
    );

    // The operator's unblock points at CrowdSec and changes nothing.
    let refused = ctl.fail(&["unblock", &banned4.to_string()]);
    assert!(
        refused.contains("CrowdSec")
            && refused.contains(&format!("cscli decisions delete --ip {banned4}")),
        "{refused}"
    );

    // cscli decisions delete lifts.
    lapi.cscli_ok(&["decisions", "delete", "--ip", &banned4.to_string()]);
    let two = vec![range.clone(), host(banned6)];
    wait_for_entries(&ctl, &controller, &two, "after cscli decisions delete");
    assert_eq!(
        through(&lab, &rx4, banned4),
        SENT,
        "{banned4} after the delete"
    );

    // The LAPI stops: enforcement stays, run stays, crowdsec_up drops to 0.
    lapi.stop();
    wait_for_metric(&lab.dst, "xdp_filter_crowdsec_up", 0.0, &controller);
    assert!(
        controller.is_running(),
        "run exited:\n{}",
        controller.output()
    );
    assert_eq!(crowdsec_entries(&ctl), two);
    assert_eq!(
        through(&lab, &rx6, banned6),
        0,
        "{banned6} during the outage"
    );

    // run restarts during the outage: every decision is still enforced.
    controller.terminate();
    let mut controller = run_bouncer(&ctl, &lab, &lapi, &key_file);
    thread::sleep(Duration::from_secs(2));
    assert!(
        controller.is_running(),
        "run exited:\n{}",
        controller.output()
    );
    assert_eq!(
        crowdsec_entries(&ctl),
        two,
        "after restarting run during the outage"
    );
    assert_eq!(
        through(&lab, &rx4, in_range),
        0,
        "{in_range} after the restart"
    );
    assert!(
        controller.output().contains("refused") || controller.output().contains("failed"),
        "the outage is logged:\n{}",
        controller.output()
    );

    // The LAPI comes back: the stream resumes.
    lapi.spawn(&lab.dst);
    wait_for_metric_within(
        &lab.dst,
        "xdp_filter_crowdsec_up",
        1.0,
        &controller,
        RECONNECTED_WITHIN,
    );
    lapi.cscli_ok(&["decisions", "delete", "--range", &range_written]);
    wait_for_entries(
        &ctl,
        &controller,
        &[host(banned6)],
        "after the LAPI came back",
    );
    assert_eq!(
        through(&lab, &rx4, in_range),
        SENT,
        "{in_range} after its range was deleted"
    );
    // The sweep (every second here) counts the live entries by origin.
    wait_for_metric(
        &lab.dst,
        "xdp_filter_list_entries_by_origin{list=\"blocklist\",origin=\"crowdsec\"}",
        1.0,
        &controller,
    );

    controller.terminate();
    drop(lapi);
    ctl.detach_and_check(&lab.dst, &lab.dst_if);
}

#[test]
fn a_wrong_bouncer_key_is_reported_and_run_stays_up() {
    let name = "a_wrong_bouncer_key_is_reported_and_run_stays_up";
    if skip_unless_root(name) || skip_unless_crowdsec(name) {
        return;
    }
    let lab = Lab::new("cskey");
    let ctl = Ctl::new("cskey");
    let lapi = Lapi::start(&lab.dst, "cskey");
    let wrong = lapi.key_file.with_file_name("wrong.key");
    std::fs::write(&wrong, "0123456789abcdef0123456789abcdef").unwrap();
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&wrong, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let mut controller = run_bouncer(&ctl, &lab, &lapi, &wrong.display().to_string());
    let deadline = Instant::now() + ENFORCED_WITHIN;
    while !controller.output().contains("refused the bouncer key") {
        assert!(
            Instant::now() < deadline,
            "no word of the wrong key:\n{}",
            controller.output()
        );
        thread::sleep(Duration::from_millis(100));
    }
    assert!(
        controller.is_running(),
        "run exited:\n{}",
        controller.output()
    );
    let text = scrape(&lab.dst);
    assert_eq!(sample(&text, "xdp_filter_crowdsec_up"), Some(0.0), "{text}");

    // A key file other users can read is refused before anything changes.
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&wrong, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let out = ctl.run_foreground(
        &lab.dst,
        &[
            "--iface",
            &lab.dst_if,
            "--crowdsec-url",
            &lapi.url(),
            "--crowdsec-key-file",
            &wrong.display().to_string(),
        ],
        Duration::from_secs(20),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("chmod 600"),
        "{stderr}"
    );

    controller.terminate();
    drop(lapi);
    ctl.detach_and_check(&lab.dst, &lab.dst_if);
}
