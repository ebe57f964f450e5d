//! The controller's life cycle and the CLI's input checks, end to end:
//! enforcement survives `kill -9`, a new `run` adopts the pinned link, a
//! second `run` is refused, `detach` removes everything, and bad input
//! changes nothing. Needs root; each test has its own namespaces and pin dir.

use std::{
    net::{IpAddr, SocketAddr},
    os::unix::process::ExitStatusExt as _,
    time::Duration,
};

use filter_tests::{
    ctl::Ctl,
    netns::{Lab, UdpReceiver, count_from, skip_unless_root, udp_send},
};

const UDP_PORT: u16 = 5000;
const COUNT: usize = 10;
const QUIET: Duration = Duration::from_millis(200);
const DRAIN_MAX: Duration = Duration::from_secs(3);
const RUN_TIMEOUT: Duration = Duration::from_secs(15);

/// Sends `COUNT` datagrams from `src`; returns how many arrived.
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

/// The id of the XDP program on the lab's filtered interface, if any.
fn xdp_prog_id(lab: &Lab) -> Option<u64> {
    let text = lab.dst.ip(&["link", "show", &lab.dst_if]);
    let rest = &text[text.find("prog/xdp id ")? + "prog/xdp id ".len()..];
    rest.split_whitespace().next()?.parse().ok()
}

#[test]
fn sigkill_keeps_enforcement_and_a_new_run_adopts_the_pinned_link() {
    if skip_unless_root("sigkill_keeps_enforcement_and_a_new_run_adopts_the_pinned_link") {
        return;
    }
    let lab = Lab::new("kill");
    let ctl = Ctl::new("kill");
    let mut first = ctl.run_background(&lab.dst, &[&lab.dst_if]);
    let receiver = UdpReceiver::bind(
        &lab.dst,
        SocketAddr::new(IpAddr::V4(lab.dst_v4()), UDP_PORT),
    );
    let good = IpAddr::V4(lab.src_v4());
    let bad = lab.add_src_v4(0x20);
    let bad2 = lab.add_src_v4(0x21);
    let prog = xdp_prog_id(&lab).expect("an XDP program is attached");

    ctl.ok(&["block", &bad.to_string()]);
    assert_eq!(udp_through(&lab, &receiver, bad), 0);

    let status = first.kill9();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");

    // No controller: the pinned link keeps the program attached and enforcing.
    assert_eq!(
        xdp_prog_id(&lab),
        Some(prog),
        "the program changed or went away"
    );
    assert_eq!(
        udp_through(&lab, &receiver, bad),
        0,
        "{bad} passed after kill -9"
    );
    assert_eq!(udp_through(&lab, &receiver, good), COUNT, "{good}");
    assert_eq!(ctl.packets("blocklist"), 2 * COUNT as u64);
    // The CLI works on the pins alone.
    ctl.ok(&["block", &bad2.to_string()]);
    let listed = ctl.list_json();
    assert_eq!(
        listed["blocklist"],
        serde_json::json!([
            { "cidr": format!("{bad}/32"), "origin": "cli" },
            { "cidr": format!("{bad2}/32"), "origin": "cli" }
        ]),
        "{listed}"
    );
    assert_eq!(
        udp_through(&lab, &receiver, bad2),
        0,
        "{bad2} blocked without a controller"
    );

    // A new controller adopts the pinned link: the program is replaced in place,
    // the maps (and so the lists and counters) are kept.
    let mut second = ctl.run_background(&lab.dst, &[&lab.dst_if]);
    assert!(
        second.shows("existing pinned link, program replaced in place"),
        "the new run did not adopt the pinned link:\n{}",
        second.output()
    );
    let new_prog = xdp_prog_id(&lab).expect("still attached");
    assert_ne!(new_prog, prog, "the program should have been replaced");
    assert_eq!(udp_through(&lab, &receiver, bad), 0);
    assert_eq!(udp_through(&lab, &receiver, good), COUNT);
    assert_eq!(ctl.packets("blocklist"), 4 * COUNT as u64);

    // SIGTERM stops the controller cleanly; the filter stays.
    let status = second.terminate();
    assert!(status.success(), "{status}\n{}", second.output());
    assert_eq!(xdp_prog_id(&lab), Some(new_prog));
    assert_eq!(udp_through(&lab, &receiver, bad), 0);

    ctl.detach_and_check(&lab.dst, &lab.dst_if);
    assert_eq!(xdp_prog_id(&lab), None);
    // Without the filter the blocked source gets through.
    assert_eq!(
        udp_through(&lab, &receiver, bad),
        COUNT,
        "{bad} after detach"
    );
    // The CLI says clearly that nothing is loaded any more.
    let err = ctl.fail(&["list", "--json"]);
    assert!(err.contains("no filter is loaded"), "{err}");
}

#[test]
fn second_run_on_the_same_pin_dir_fails_clearly() {
    if skip_unless_root("second_run_on_the_same_pin_dir_fails_clearly") {
        return;
    }
    let lab = Lab::new("twice");
    let ctl = Ctl::new("twice");
    let mut first = ctl.run_background(&lab.dst, &[&lab.dst_if]);
    let prog = xdp_prog_id(&lab).expect("attached");

    let out = ctl.run_foreground(&lab.dst, &["--iface", &lab.dst_if], RUN_TIMEOUT);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "second run succeeded:\n{stderr}");
    assert!(
        stderr.contains("another `filter-ctl run`")
            && stderr.contains(&format!("pid {}", first.pid()))
            && stderr.contains(&ctl.pin_dir().display().to_string()),
        "unclear message (should name the running controller's pid and the pin dir):\n{stderr}"
    );
    // Nothing was disturbed.
    assert!(first.is_running(), "the first controller died");
    assert_eq!(xdp_prog_id(&lab), Some(prog), "the program changed");
    let receiver = UdpReceiver::bind(
        &lab.dst,
        SocketAddr::new(IpAddr::V4(lab.dst_v4()), UDP_PORT),
    );
    let bad = lab.add_src_v4(0x20);
    ctl.ok(&["block", &bad.to_string()]);
    assert_eq!(udp_through(&lab, &receiver, bad), 0);
    assert_eq!(ctl.packets("blocklist"), COUNT as u64);

    first.terminate();
    ctl.detach_and_check(&lab.dst, &lab.dst_if);
}

#[test]
fn bad_input_is_rejected_with_a_clear_message_and_changes_nothing() {
    if skip_unless_root("bad_input_is_rejected_with_a_clear_message_and_changes_nothing") {
        return;
    }
    let lab = Lab::new("badin");
    let ctl = Ctl::new("badin");
    let mut controller = ctl.run_background(&lab.dst, &[&lab.dst_if]);
    // Some state to compare against.
    ctl.ok(&["block", "198.18.77.0/24", "2001:db8:77::/48"]);
    ctl.ok(&["allow", "198.18.77.7"]);
    ctl.ok(&["limit", "set", "udp/7000", "--rate", "100", "--burst", "10"]);
    let list_before = ctl.list_json();
    let limits_before = ctl.json(&["limit", "list", "--json"]);

    let bad_file = std::env::temp_dir().join(format!("ft-badin-{}.list", std::process::id()));
    std::fs::write(&bad_file, "# comment\n198.18.78.1\nnot-an-address\n").expect("writing list");
    let bad_file_text = bad_file.display().to_string();

    let cases: &[(&[&str], &[&str])] = &[
        (
            &["block", "198.18.0.300"],
            &["'198.18.0.300'", "not an IPv4 or IPv6 address"],
        ),
        (
            &["block", "198.18.0.0/33"],
            &["'198.18.0.0/33'", "out of range"],
        ),
        (
            &["allow", "2001:db8::/129"],
            &["'2001:db8::/129'", "out of range"],
        ),
        (
            &["block", "198.18.0.0/x"],
            &["'198.18.0.0/x'", "not a number"],
        ),
        // One bad token fails the whole command: the good one is not added.
        (&["block", "198.18.78.2", "bogus"], &["'bogus'"]),
        (
            &["block", "198.18.78.3", "--ttl", "soon"],
            &["'soon'", "not a duration"],
        ),
        (
            &["block", "--file", &bad_file_text],
            &[&bad_file_text, ":3:", "nothing from the file was applied"],
        ),
        (&["block"], &["required"]),
        (
            &["unblock", "198.18.79.1"],
            &["198.18.79.1/32", "neither on the blocklist"],
        ),
        (
            &["limit", "set", "udp/7001", "--rate", "0"],
            &["--rate must be at least 1"],
        ),
        (
            &["limit", "set", "udp/7001", "--rate", "10", "--burst", "0"],
            &["--burst must be at least 1"],
        ),
        (
            &["limit", "set", "udp/7002-7001", "--rate", "10"],
            &["'udp/7002-7001'", "first port is above its last"],
        ),
        (
            &["limit", "set", "udp/70000", "--rate", "10"],
            &["'udp/70000'", "ports are numbers"],
        ),
        (
            &["limit", "set", "sctp/80", "--rate", "10"],
            &["'sctp/80'", "unknown protocol"],
        ),
        (
            &["limit", "set", "udp/6990-7010", "--rate", "10"],
            &["overlaps the existing rule udp/7000"],
        ),
        (
            &["limit", "set", "default", "--drop"],
            &["default rule cannot --drop"],
        ),
        (&["limit", "remove", "tcp/1"], &["tcp/1"]),
    ];
    for (args, needles) in cases {
        let err = ctl.fail(args);
        for needle in *needles {
            assert!(
                err.contains(needle),
                "`filter-ctl {}`: message should mention {needle:?}:\n{err}",
                args.join(" ")
            );
        }
    }
    std::fs::remove_file(&bad_file).ok();
    assert_eq!(
        ctl.list_json(),
        list_before,
        "a rejected command changed the lists"
    );
    assert_eq!(
        ctl.json(&["limit", "list", "--json"]),
        limits_before,
        "a rejected command changed the rules"
    );

    // `run` needs an interface, and one that exists in its namespace.
    let other = Ctl::new("badin-run");
    let out = other.run_foreground(&lab.dst, &[], RUN_TIMEOUT);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--iface"), "{err}");
    let out = other.run_foreground(&lab.dst, &["--iface", "nosuch0"], RUN_TIMEOUT);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("nosuch0") && err.contains("does not exist"),
        "{err}"
    );
    // A failed start removes the pins it created.
    assert!(
        !other.pin_dir().exists(),
        "a failed run left {} behind",
        other.pin_dir().display()
    );

    controller.terminate();
    ctl.detach_and_check(&lab.dst, &lab.dst_if);
}
