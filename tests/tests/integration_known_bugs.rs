//! Known bugs in filter-ctl and the XDP program, each asserting the correct
//! behaviour. They are ignored with the bug as the reason (so `cargo test`
//! prints it); `cargo test -p filter-tests --test integration_known_bugs --
//! --ignored` shows them failing. Remove the `ignore` when the bug is fixed.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use filter_tests::{
    ctl::Ctl,
    netns::{Lab, UdpReceiver, count_from, skip_unless_root, udp_send},
};

#[test]
#[ignore = "known bug (filter-ctl run): a run that fails to attach leaves its maps pinned"]
fn failed_run_leaves_no_pins() {
    if skip_unless_root("failed_run_leaves_no_pins") {
        return;
    }
    let lab = Lab::new("pinleak");
    let ctl = Ctl::new("pinleak");
    let out = ctl.run_foreground(&lab.dst, &["--iface", "nosuch0"], Duration::from_secs(15));
    assert!(!out.status.success());
    // BUG(filter-ctl): `run` pins all maps (loader::load) before attaching, and
    // does not remove them when the attach fails: the pin dir keeps 13 map pins
    // and the next command sees a "loaded" filter that is attached nowhere.
    assert!(
        !ctl.pin_dir().exists(),
        "a failed run left {} behind: {:?}",
        ctl.pin_dir().display(),
        std::fs::read_dir(ctl.pin_dir().join("v1")).map(|d| d
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .collect::<Vec<_>>())
    );
}

#[test]
#[ignore = "known bug (filter-ebpf list_match): two nested expired entries let a packet of a blocked prefix through"]
fn nested_expired_entries_never_unblock_a_covering_prefix() {
    if skip_unless_root("nested_expired_entries_never_unblock_a_covering_prefix") {
        return;
    }
    let lab = Lab::new("nested");
    let ctl = Ctl::new("nested");
    let mut controller = ctl.run_background(&lab.dst, &[&lab.dst_if]);
    let dst = SocketAddr::new(IpAddr::V4(lab.dst_v4()), 5000);
    let receiver = UdpReceiver::bind(&lab.dst, dst);
    let src = lab.add_src_v4(0x21);
    ctl.ok(&["block", &lab.v4_net()]);
    ctl.ok(&["block", &format!("{}/28", lab.v4(0x20)), "--ttl", "1s"]);
    ctl.ok(&["block", &src.to_string(), "--ttl", "1s"]);
    std::thread::sleep(Duration::from_millis(1300));

    assert_eq!(udp_send(&lab.src, src, dst, 3, Duration::from_millis(5)), 3);
    let got = count_from(
        &receiver.drain(Duration::from_millis(200), Duration::from_secs(2)),
        src,
    );
    // BUG(filter-ebpf): list_match deletes an expired longest match and looks
    // up again only once; with a second expired match underneath it returns
    // "no match", so the first packet passes although the permanent /24 covers
    // the source. (The next packets are blocked: both entries are gone by then.)
    assert_eq!(
        got,
        0,
        "{src} is inside the permanently blocked {}",
        lab.v4_net()
    );
    assert_eq!(ctl.packets("blocklist"), 3);

    controller.terminate();
    ctl.detach_and_check(&lab.dst, &lab.dst_if);
}
