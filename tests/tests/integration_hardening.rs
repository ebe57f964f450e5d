//! Hardening, end to end, each defect a regression test: no other local
//! user can reach the filter's pins, locks or runtime files; a pin
//! directory another user could tamper with is refused; an interface that
//! flaps is filtered again; a TTL never weakens a block; IPv4-mapped entries
//! mean IPv4; list files are bounded; a killed bulk load is never a silent
//! partial; lock waits are reported and bounded; a private bpffs and a
//! changed capacity are refused; exit codes tell the failure's kind.
//! Needs root; each test has its own namespaces and pin directory.

use std::{
    fmt::Write as _,
    io::Write as _,
    net::{IpAddr, SocketAddr},
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use filter_tests::{
    ctl::{Ctl, binary},
    netns::{Lab, NetNs, UdpReceiver, UdpStream, count_from, skip_unless_root, udp_send},
};
use serde_json::Value;

const UDP_PORT: u16 = 5000;
const RUN_TIMEOUT: Duration = Duration::from_secs(15);
/// Entries of the bulk load that `a_killed_bulk_load…` interrupts.
const ENTRIES: usize = 200_000;

/// Exit codes, as documented in `filter-ctl --help`.
mod exit {
    pub const BAD_INPUT: i32 = 2;
    pub const NOT_LOADED: i32 = 3;
    pub const PERMISSION: i32 = 4;
    pub const MAP_FULL: i32 = 5;
    pub const LOCK_TIMEOUT: i32 = 6;
    pub const INSECURE: i32 = 7;
    pub const INCOMPATIBLE: i32 = 8;
    pub const NOT_FOUND: i32 = 9;
}

fn code(out: &Output) -> Option<i32> {
    out.status.code()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn assert_code(out: &Output, expected: i32, what: &str) {
    assert_eq!(code(out), Some(expected), "{what}: {}", text(out));
}

/// Runs `command` and kills it after `limit`, failing the test then.
fn output_within(mut command: Command, limit: Duration) -> Output {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("starting the command");
    let deadline = Instant::now() + limit;
    while child.try_wait().expect("waiting").is_none() {
        if Instant::now() >= deadline {
            child.kill().ok();
            let out = child.wait_with_output().expect("collecting output");
            panic!("{command:?} still ran after {limit:?}: {}", text(&out));
        }
        thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().expect("collecting output")
}

/// Sends 10 datagrams from `src`; returns how many arrived.
fn udp_through(lab: &Lab, receiver: &UdpReceiver, src: IpAddr) -> usize {
    let sent = udp_send(&lab.src, src, receiver.addr(), 10, Duration::from_millis(1));
    assert_eq!(sent, 10, "sending from {src}");
    count_from(
        &receiver.drain(Duration::from_millis(200), Duration::from_secs(3)),
        src,
    )
}

fn blocklist(ctl: &Ctl) -> Vec<Value> {
    ctl.list_json()["blocklist"]
        .as_array()
        .expect("blocklist array")
        .clone()
}

fn entry<'a>(list: &'a [Value], cidr: &str) -> Option<&'a Value> {
    list.iter().find(|e| e["cidr"] == cidr)
}

#[test]
fn nobody_cannot_reach_pins_locks_or_runtime_files() {
    if skip_unless_root("nobody_cannot_reach_pins_locks_or_runtime_files") {
        return;
    }
    let lab = Lab::new("nobody");
    let ctl = Ctl::new("nobody");
    let mut controller = ctl.run_background(&lab.dst, &[&lab.dst_if]);
    let receiver = UdpReceiver::bind(
        &lab.dst,
        SocketAddr::new(IpAddr::V4(lab.dst_v4()), UDP_PORT),
    );
    let bad = lab.add_src_v4(0x30);
    ctl.ok(&["block", &bad.to_string()]);
    let pin = ctl.pin_dir().display().to_string();
    let layout = ctl.status_json()["layout_version"]
        .as_u64()
        .expect("layout_version");
    let maps = format!("{pin}/v{layout}");
    let link = format!("{maps}/link_{}", lab.dst_if);

    // Every command fails with the permission exit code.
    for args in [
        vec!["list"],
        vec!["stats"],
        vec!["status"],
        vec!["block", "198.18.200.1"],
        vec!["unblock", &bad.to_string()],
        vec!["limit", "list"],
        vec!["limit", "set", "default", "--rate", "1"],
        vec!["detach"],
        vec!["detach", "--iface", &lab.dst_if],
        vec!["run", "--iface", "lo"],
    ] {
        let out = ctl.cmd_as_nobody(&args);
        assert_code(&out, exit::PERMISSION, &format!("nobody: {args:?}"));
    }
    // Nothing under the pin and runtime directories can be opened, created,
    // renamed, unlinked or locked.
    let runtime = ctl.runtime_dir().display().to_string();
    for script in [
        format!("ls {pin}"),
        format!("mv {maps} {pin}/moved"),
        format!("rm -f {link}"),
        format!("mkdir {pin}/evil"),
        format!("flock -n {pin} true"),
        format!("flock -n {maps} true"),
        format!("ls {runtime}"),
        format!("touch {runtime}/journal"),
        format!("flock -n {runtime} true"),
    ] {
        let status = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .args(["sh", "-c", &script])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("running sh as nobody");
        assert!(!status.success(), "nobody could run `{script}`");
    }
    // The filter is untouched.
    assert!(std::path::Path::new(&link).exists());
    assert_eq!(udp_through(&lab, &receiver, bad), 0, "{bad} passed");
    assert!(controller.is_running(), "{}", controller.output());
    controller.terminate();
    ctl.detach_and_check(&lab.dst, &lab.dst_if);
}

#[test]
fn a_pin_directory_another_user_could_touch_is_refused() {
    if skip_unless_root("a_pin_directory_another_user_could_touch_is_refused") {
        return;
    }
    let ns = NetNs::new("foreign");
    let ctl = Ctl::new("foreign");
    std::fs::create_dir_all(ctl.pin_dir()).expect("creating the pin dir");
    // Owned by another user.
    std::os::unix::fs::chown(ctl.pin_dir(), Some(65534), Some(65534)).expect("chown");
    let out = ctl.run_foreground(&ns, &["--iface", "lo"], RUN_TIMEOUT);
    assert_code(&out, exit::INSECURE, "pin dir owned by nobody");
    assert!(text(&out).contains("owned by uid 65534"), "{}", text(&out));
    // Root's, but writable by others.
    std::os::unix::fs::chown(ctl.pin_dir(), Some(0), Some(0)).expect("chown");
    std::fs::set_permissions(ctl.pin_dir(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let out = ctl.run_foreground(&ns, &["--iface", "lo"], RUN_TIMEOUT);
    assert_code(&out, exit::INSECURE, "pin dir mode 0777");
    assert!(
        text(&out).contains("writable by group or others"),
        "{}",
        text(&out)
    );
    // Nothing was loaded or attached.
    assert!(!ns.ip(&["link", "show", "lo"]).contains("xdp"));
    let leftovers: Vec<_> = std::fs::read_dir(ctl.pin_dir())
        .expect("reading the pin dir")
        .collect();
    assert!(leftovers.is_empty(), "run left {leftovers:?}");
    std::fs::remove_dir(ctl.pin_dir()).expect("removing the pin dir");
}

#[test]
fn an_interface_that_comes_back_is_filtered_again() {
    if skip_unless_root("an_interface_that_comes_back_is_filtered_again") {
        return;
    }
    let lab = Lab::new("flap");
    let ctl = Ctl::new("flap");
    let mut controller = ctl.run_background(&lab.dst, &[&lab.dst_if]);
    let bad = IpAddr::V4(lab.src_v4());
    ctl.ok(&["block", &bad.to_string()]);
    let receiver = UdpReceiver::bind(
        &lab.dst,
        SocketAddr::new(IpAddr::V4(lab.dst_v4()), UDP_PORT),
    )
    .collect(Duration::from_secs(30));
    // A flood from the blocked source, before, during and after the flap.
    let stream = UdpStream::start(
        &lab.src,
        bad,
        receiver_addr(&lab),
        Duration::from_micros(200),
        Duration::from_secs(20),
    );
    thread::sleep(Duration::from_millis(300));
    lab.recreate_link();
    let back = Instant::now();
    // The controller notices and re-attaches within a second.
    let deadline = back + Duration::from_secs(5);
    let reattached = loop {
        let status = ctl.status_json();
        let iface = &status["interfaces"][0];
        if iface["state"] == "attached" && iface["program_id"].is_number() && lab.xdp_attached() {
            break Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "not re-attached 5 s after the interface came back: {status}\n{}",
            controller.output()
        );
        thread::sleep(Duration::from_millis(20));
    };
    thread::sleep(Duration::from_millis(1500));
    let report = stream.stop();
    let got = receiver.stop();
    // Judged by when each datagram was sent, not when the receiver read it
    // (a loaded machine may read late): nothing sent more than 1 s after the
    // interface came back, or after the program was seen attached, passes.
    let cutoff = reattached.min(back + Duration::from_secs(1));
    let leaked: Vec<_> = got
        .iter()
        .filter(|d| d.from == bad)
        .filter(|d| {
            let seq = d.seq.expect("the stream numbers its datagrams");
            let sent = usize::try_from(seq)
                .ok()
                .and_then(|i| report.send_started.get(i))
                .expect("a datagram the stream sent");
            *sent > cutoff
        })
        .collect();
    assert!(report.sent > 100, "the flood sent only {}", report.sent);
    assert!(
        leaked.is_empty(),
        "{} datagrams from the blocked {bad} sent more than 1 s after the interface came back, or after it was seen re-attached, passed (re-attached after {:?})",
        leaked.len(),
        reattached - back
    );
    controller.terminate();
    let log = controller.output();
    assert!(log.contains("disappeared"), "{log}");
    assert!(log.contains("appeared again: attached"), "{log}");
    assert!(log.contains("still attached to"), "{log}");
    ctl.detach_and_check(&lab.dst, &lab.dst_if);
}

fn receiver_addr(lab: &Lab) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(lab.dst_v4()), UDP_PORT)
}

#[test]
fn a_ttl_never_weakens_a_block() {
    if skip_unless_root("a_ttl_never_weakens_a_block") {
        return;
    }
    let lab = Lab::new("ttl");
    let ctl = Ctl::new("ttl");
    let mut controller = ctl.run_background(&lab.dst, &[&lab.dst_if]);
    let x = "198.18.250.7/32";

    ctl.ok(&["block", "198.18.250.7"]);
    let out = ctl.ok(&["block", "198.18.250.7", "--ttl", "3s"]);
    assert!(out.contains("already blocked permanently; kept"), "{out}");
    for bad_ttl in ["0s", "0", "-5s"] {
        let out = ctl.cmd(&["block", "198.18.250.7", &format!("--ttl={bad_ttl}")]);
        assert_code(&out, exit::BAD_INPUT, &format!("--ttl {bad_ttl}"));
    }
    let list = blocklist(&ctl);
    let e = entry(&list, x).expect("still listed");
    assert!(e.get("expires_in_secs").is_none(), "{e}");

    // The later expiry wins; --replace shortens.
    let y = "198.18.250.8/32";
    ctl.ok(&["block", "198.18.250.8", "--ttl", "1h"]);
    let out = ctl.ok(&["block", "198.18.250.8", "--ttl", "10s"]);
    assert!(out.contains("kept"), "{out}");
    let left = entry(&blocklist(&ctl), y).expect("listed")["expires_in_secs"]
        .as_u64()
        .expect("a TTL");
    assert!(left > 3000, "{left}");
    let out = ctl.ok(&["block", "198.18.250.8", "--ttl", "10s", "--replace"]);
    assert!(out.contains("now expires in 10s"), "{out}");
    let left = entry(&blocklist(&ctl), y).expect("listed")["expires_in_secs"]
        .as_u64()
        .expect("a TTL");
    assert!(left <= 10, "{left}");
    // A longer TTL extends.
    let out = ctl.ok(&["block", "198.18.250.8", "--ttl", "2h"]);
    assert!(out.contains("now expires in 2h"), "{out}");
    // A permanent block over a TTL makes it permanent.
    ctl.ok(&["block", "198.18.250.8"]);
    let e = entry(&blocklist(&ctl), y).expect("listed").clone();
    assert!(e.get("expires_in_secs").is_none(), "{e}");
    controller.terminate();
    ctl.detach_and_check(&lab.dst, &lab.dst_if);
}

#[test]
fn ipv4_mapped_entries_block_the_ipv4_source() {
    if skip_unless_root("ipv4_mapped_entries_block_the_ipv4_source") {
        return;
    }
    let lab = Lab::new("mapped");
    let ctl = Ctl::new("mapped");
    let mut controller = ctl.run_background(&lab.dst, &[&lab.dst_if]);
    let receiver = UdpReceiver::bind(&lab.dst, receiver_addr(&lab));
    let src = lab.add_src_v4(0x40);
    assert_eq!(udp_through(&lab, &receiver, src), 10, "before the block");
    let out = ctl.ok(&["block", &format!("::ffff:{src}")]);
    assert!(out.contains("IPv4-mapped"), "{out}");
    assert!(out.contains(&format!("{src}/32")), "{out}");
    assert!(entry(&blocklist(&ctl), &format!("{src}/32")).is_some());
    assert_eq!(udp_through(&lab, &receiver, src), 0, "{src} passed");
    // The same rule in list files.
    let dir = scratch_dir("mapped");
    let file = dir.join("list.txt");
    let other = lab.add_src_v4(0x41);
    std::fs::write(&file, format!("::ffff:{other}\n")).expect("writing the list");
    ctl.ok(&["block", "--file", &file.display().to_string()]);
    assert!(entry(&blocklist(&ctl), &format!("{other}/32")).is_some());
    assert_eq!(udp_through(&lab, &receiver, other), 0, "{other} passed");
    std::fs::remove_dir_all(&dir).ok();
    controller.terminate();
    ctl.detach_and_check(&lab.dst, &lab.dst_if);
}

/// A private scratch directory for this test process.
fn scratch_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "ft-{tag}-{}-{}",
        std::process::id(),
        filter_tests::netns::unique_id()
    ));
    std::fs::create_dir_all(&dir).expect("creating a scratch directory");
    dir
}

#[test]
fn list_files_are_bounded_in_time_and_memory() {
    if skip_unless_root("list_files_are_bounded_in_time_and_memory") {
        return;
    }
    let lab = Lab::new("files");
    let ctl = Ctl::new("files");
    let mut controller = ctl.run_background(&lab.dst, &[&lab.dst_if]);
    let dir = scratch_dir("files");
    let fifo = dir.join("fifo");
    let fifo_c = std::ffi::CString::new(fifo.display().to_string()).expect("path");
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo_c.as_ptr(), 0o600) }, 0, "mkfifo");
    let long = dir.join("long.txt");
    std::fs::write(&long, format!("198.18.0.1\n{}\n", "9".repeat(100_000))).expect("write");
    let invisible = dir.join("invisible.txt");
    std::fs::write(
        &invisible,
        "198.18.0.1\n\u{feff}198.18.0.2\n198.18.0.\u{0}3\n",
    )
    .expect("w");

    for (path, needle) in [
        ("/dev/zero".to_string(), "a device"),
        (fifo.display().to_string(), "a FIFO"),
        (dir.display().to_string(), "a directory"),
        (long.display().to_string(), ":2: line longer than"),
        (invisible.display().to_string(), "\\u{feff}"),
    ] {
        let mut command = ctl.command(&["block", "--file", &path]);
        // Memory stays bounded whatever the file holds: 256 MiB of address space.
        // SAFETY: setrlimit is async-signal-safe; the closure touches nothing else.
        unsafe {
            command.pre_exec(|| {
                let limit = libc::rlimit {
                    rlim_cur: 256 << 20,
                    rlim_max: 256 << 20,
                };
                libc::setrlimit(libc::RLIMIT_AS, &raw const limit);
                Ok(())
            });
        }
        let out = output_within(command, Duration::from_secs(10));
        assert_code(&out, exit::BAD_INPUT, &path);
        let message = String::from_utf8_lossy(&out.stderr);
        assert!(message.contains(needle), "{path}: {message}");
        assert!(
            message.len() < 1024,
            "{path}: {} bytes of error",
            message.len()
        );
    }
    // A 100 KB argument is not echoed whole either.
    let out = ctl.cmd(&["block", &"1".repeat(100_000)]);
    assert_code(&out, exit::BAD_INPUT, "a 100 KB argument");
    assert!(out.stderr.len() < 1024, "{} bytes", out.stderr.len());
    // Standard input works.
    let mut child = ctl
        .command(&["block", "--file", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting block --file -");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"198.18.251.1\n198.18.251.2 # two\n")
        .expect("writing stdin");
    let out = child.wait_with_output().expect("block --file -");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(blocklist(&ctl).len(), 2);
    std::fs::remove_dir_all(&dir).ok();
    controller.terminate();
    ctl.detach_and_check(&lab.dst, &lab.dst_if);
}

#[test]
fn a_killed_bulk_load_is_never_a_silent_partial() {
    if skip_unless_root("a_killed_bulk_load_is_never_a_silent_partial") {
        return;
    }
    let lab = Lab::new("journal");
    let ctl = Ctl::new("journal");
    let mut controller = ctl.run_background(&lab.dst, &[&lab.dst_if]);
    let dir = scratch_dir("journal");
    let file = dir.join("big.txt");
    let mut text_list = String::with_capacity(ENTRIES * 28);
    for i in 0..ENTRIES {
        let _ = writeln!(text_list, "2001:db8:{:x}:{:x}::/64", i >> 16, i & 0xffff);
    }
    std::fs::write(&file, text_list).expect("writing the list");
    let file_arg = file.display().to_string();
    ctl.ok(&["block", "198.18.252.1"]);
    let base = 1;
    // How long a whole load takes here, to kill the next ones across it.
    let started = Instant::now();
    ctl.ok(&["block", "--file", &file_arg]);
    let full = started.elapsed();
    assert_eq!(blocklist(&ctl).len(), base + ENTRIES);
    ctl.ok(&["unblock", "--file", &file_arg]);
    assert_eq!(blocklist(&ctl).len(), base);
    let mut outcomes = Vec::new();
    for percent in [10u32, 30, 50, 65, 80, 90, 97] {
        let delay_ms =
            u64::try_from(full.as_millis()).unwrap_or(u64::MAX) * u64::from(percent) / 100;
        let mut child = ctl
            .command(&["block", "--file", &file_arg])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting block --file");
        thread::sleep(Duration::from_millis(delay_ms));
        child.kill().ok();
        let status = child.wait().expect("reaping block --file");
        // The controller's sweep may roll an interrupted change back at any
        // moment, so `status` and `list` may each see it or not; a list that
        // does not flag it must be whole.
        let status_json = ctl.status_json();
        let listing = ctl.list_json();
        let count = listing["blocklist"].as_array().expect("array").len();
        let interrupted =
            listing.get("interrupted").is_some() || status_json.get("interrupted_change").is_some();
        if interrupted {
            // Visible, and the next edit repairs it: the list is the old one.
            let out = ctl.cmd(&["block", "198.18.252.2"]);
            assert!(out.status.success(), "{}", text(&out));
            // Rolled back by this edit, or by the controller's sweep just before.
            assert!(
                String::from_utf8_lossy(&out.stderr).contains("rolled back an interrupted change")
                    || controller.shows("rolled back an interrupted change"),
                "{}\n{}",
                text(&out),
                controller.output()
            );
            assert_eq!(blocklist(&ctl).len(), base + 1, "after the repair");
            assert!(ctl.list_json().get("interrupted").is_none());
            ctl.ok(&["unblock", "198.18.252.2"]);
            outcomes.push(format!("{delay_ms} ms: interrupted, repaired"));
        } else if count == base {
            outcomes.push(format!("{delay_ms} ms: old list ({status})"));
        } else {
            assert_eq!(
                count,
                base + ENTRIES,
                "killed after {delay_ms} ms: a silent partial list of {count} entries"
            );
            outcomes.push(format!("{delay_ms} ms: new list"));
            // `unblock --file` undoes the whole load.
            ctl.ok(&["unblock", "--file", &file_arg]);
            assert_eq!(blocklist(&ctl).len(), base);
        }
    }
    eprintln!("a whole load took {full:?}; killed at: {outcomes:?}");
    std::fs::remove_dir_all(&dir).ok();
    controller.terminate();
    ctl.detach_and_check(&lab.dst, &lab.dst_if);
}

#[test]
fn lock_waits_are_reported_bounded_and_never_stop_the_controller() {
    if skip_unless_root("lock_waits_are_reported_bounded_and_never_stop_the_controller") {
        return;
    }
    let lab = Lab::new("lock");
    let ctl = Ctl::new("lock");
    let mut controller = ctl.run_background(&lab.dst, &[&lab.dst_if]);
    let layout = ctl.status_json()["layout_version"]
        .as_u64()
        .expect("layout_version");
    let maps = ctl.pin_dir().join(format!("v{layout}"));
    // A hung editor: holds the edit lock for 30 s.
    // -o: the lock stays with flock itself, so killing it releases the lock.
    let holder = LockHolder(
        Command::new("flock")
            .arg("-o")
            .arg(&maps)
            .args(["sleep", "30"])
            .spawn()
            .expect("starting flock"),
    );
    // Until flock holds it: a non-blocking try fails (exit code 1).
    let deadline = Instant::now() + Duration::from_secs(5);
    while Command::new("flock")
        .args(["-n", "-o"])
        .arg(&maps)
        .arg("true")
        .status()
        .expect("running flock -n")
        .success()
    {
        assert!(Instant::now() < deadline, "flock did not take the lock");
        thread::sleep(Duration::from_millis(20));
    }
    let started = Instant::now();
    let out = output_within(
        ctl.command(&["--lock-timeout", "2s", "block", "198.18.253.1"]),
        Duration::from_secs(10),
    );
    let waited = started.elapsed();
    assert_code(&out, exit::LOCK_TIMEOUT, "block while the lock is held");
    let message = text(&out);
    assert!(message.contains("waiting for the edit lock"), "{message}");
    assert!(message.contains("held by pid"), "{message}");
    assert!(message.contains("flock"), "{message}");
    assert!(waited < Duration::from_secs(8), "{waited:?}");
    // The controller still answers SIGTERM while the lock is held.
    let status = controller.terminate();
    assert!(status.success(), "{status}: {}", controller.output());
    drop(holder);
    ctl.ok(&["block", "198.18.253.1"]);
    ctl.detach_and_check(&lab.dst, &lab.dst_if);
}

/// A process holding the edit lock, killed (the lock released) on drop,
/// also when the test fails.
struct LockHolder(Child);

impl Drop for LockHolder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_private_bpffs_is_refused() {
    if skip_unless_root("a_private_bpffs_is_refused") {
        return;
    }
    let ns = NetNs::new("privmnt");
    let pin = format!(
        "/sys/fs/bpf/ft-privmnt-{}-{}",
        std::process::id(),
        filter_tests::netns::unique_id()
    );
    let script = format!(
        "mount -t bpf -o mode=0700 bpf /sys/fs/bpf && exec {} --pin-dir {pin} run --iface lo",
        binary().display()
    );
    let mut command = Command::new("nsenter");
    command.arg(format!("--net={}", ns.path().display())).args([
        "unshare",
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        &script,
    ]);
    let out = output_within(command, RUN_TIMEOUT);
    assert_code(&out, exit::INSECURE, "run on a private bpffs");
    assert!(text(&out).contains("mount namespace"), "{}", text(&out));
    assert!(
        text(&out).contains("--allow-private-bpffs"),
        "{}",
        text(&out)
    );
    assert!(!ns.ip(&["link", "show", "lo"]).contains("xdp"));
    // The host's bpffs never saw the pin directory.
    assert!(!std::path::Path::new(&pin).exists());
}

#[test]
fn a_capacity_that_differs_from_the_pins_is_refused() {
    if skip_unless_root("a_capacity_that_differs_from_the_pins_is_refused") {
        return;
    }
    let lab = Lab::new("cap");
    let ctl = Ctl::new("cap");
    let mut first = ctl.run_background_with(&lab.dst, &[&lab.dst_if], &["--list-capacity", "100"]);
    first.terminate();
    let out = ctl.run_foreground(
        &lab.dst,
        &["--iface", &lab.dst_if, "--list-capacity", "1000"],
        RUN_TIMEOUT,
    );
    assert_code(&out, exit::INCOMPATIBLE, "a different --list-capacity");
    assert!(text(&out).contains("holds 100 entries"), "{}", text(&out));
    // Without the option the pinned maps are adopted, capacity and all.
    // (IPv6 /72s, a length only the tries hold: hosts and most prefixes
    // have a table of their own beside the tries, `BLOCK_HOSTS`, as many
    // slots as the list capacity.)
    let mut second = ctl.run_background(&lab.dst, &[&lab.dst_if]);
    let entries: Vec<String> = (0..101)
        .map(|i| format!("2001:db8:c8:{i:x}::/72"))
        .collect();
    let mut args = vec!["block"];
    args.extend(entries.iter().map(String::as_str));
    let out = ctl.cmd(&args);
    assert_code(&out, exit::MAP_FULL, "101 entries into 100");
    assert!(
        blocklist(&ctl).is_empty(),
        "a refused edit changed the list"
    );
    second.terminate();
    ctl.detach_and_check(&lab.dst, &lab.dst_if);
}

#[test]
fn exit_codes_and_status_tell_what_happened() {
    if skip_unless_root("exit_codes_and_status_tell_what_happened") {
        return;
    }
    let lab = Lab::new("codes");
    let ctl = Ctl::new("codes");
    assert_code(&ctl.cmd(&["list"]), exit::NOT_LOADED, "list before run");
    assert_code(&ctl.cmd(&["status"]), exit::NOT_LOADED, "status before run");
    assert_code(
        &ctl.cmd(&["block", "300.1.1.1"]),
        exit::BAD_INPUT,
        "bad address",
    );
    assert_code(&ctl.cmd(&["block"]), exit::BAD_INPUT, "usage");
    let help = ctl.ok(&["--help"]);
    for code in ["3   no filter is loaded", "6   gave up waiting"] {
        assert!(help.contains(code), "{help}");
    }
    let mut controller = ctl.run_background(&lab.dst, &[&lab.dst_if]);
    assert_code(
        &ctl.cmd(&["unblock", "198.18.255.1"]),
        exit::NOT_FOUND,
        "unblock of an absent entry",
    );
    assert_code(
        &ctl.cmd(&["limit", "remove", "tcp/9"]),
        exit::NOT_FOUND,
        "removing an absent rule",
    );
    let status = ctl.status_json();
    assert_eq!(status["pin_dir"], ctl.pin_dir().display().to_string());
    assert_eq!(status["controller_pid"], controller.pid());
    let iface = &status["interfaces"][0];
    assert_eq!(iface["name"], lab.dst_if.as_str(), "{status}");
    assert_eq!(iface["state"], "attached", "{status}");
    assert!(
        iface["mode"] == "native" || iface["mode"] == "skb",
        "{status}"
    );
    assert!(
        iface["program_id"].as_u64().is_some_and(|id| id > 0),
        "{status}"
    );
    controller.terminate();
    // Without a controller, status still reports the pins and interfaces.
    let status = ctl.status_json();
    assert!(status.get("controller_pid").is_none(), "{status}");
    assert_eq!(status["interfaces"][0]["name"], lab.dst_if.as_str());
    ctl.detach_and_check(&lab.dst, &lab.dst_if);
}
