//! Structured logs: with `--log-format json` every line the controller
//! writes is one JSON object with a timestamp, a level and its fields, and
//! an automatic block is logged as such. Needs root.

use std::{
    net::{IpAddr, SocketAddr},
    thread,
    time::{Duration, Instant},
};

use filter_tests::{
    ctl::Ctl,
    netns::{Lab, UdpReceiver, skip_unless_root, udp_send},
};
use serde_json::Value;

#[test]
fn json_logs_are_one_object_a_line_with_time_level_and_fields() {
    if skip_unless_root("json_logs_are_one_object_a_line_with_time_level_and_fields") {
        return;
    }
    let lab = Lab::new("jsonlog");
    let ctl = Ctl::new("jsonlog");
    let mut controller =
        ctl.run_background_with(&lab.dst, &[&lab.dst_if], &["--log-format", "json"]);
    let receiver = UdpReceiver::bind(&lab.dst, SocketAddr::new(IpAddr::V4(lab.dst_v4()), 5000));
    ctl.ok(&[
        "limit",
        "set",
        "default",
        "--rate",
        "1",
        "--burst",
        "1",
        "--autoblock-after",
        "3",
    ]);
    let src = IpAddr::V4(lab.src_v4());
    let sent = udp_send(&lab.src, src, receiver.addr(), 20, Duration::from_millis(1));
    assert_eq!(sent, 20);
    // The controller logs the automatic block when its event arrives.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !controller.output().contains("autoblock") {
        assert!(
            Instant::now() < deadline,
            "no autoblock log line within 10 s:\n{}",
            controller.output()
        );
        thread::sleep(Duration::from_millis(50));
    }
    controller.terminate();
    let output = controller.output();
    let stderr = output.split_once("--- stderr\n").map_or("", |(_, err)| err);
    let mut autoblock = None;
    let mut lines = 0;
    for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
        lines += 1;
        let object: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
        assert!(object["timestamp"].is_string(), "{line}");
        assert!(object["level"].is_string(), "{line}");
        let message = object["fields"]["message"]
            .as_str()
            .unwrap_or_else(|| panic!("no fields.message: {line}"));
        if message.contains("autoblock") {
            autoblock = Some(object.clone());
        }
    }
    assert!(lines > 0, "no log lines:\n{output}");
    let autoblock = autoblock.unwrap_or_else(|| panic!("no autoblock line:\n{output}"));
    assert_eq!(autoblock["level"], "INFO", "{autoblock}");
    assert!(
        autoblock["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(&format!("{src}/32"))),
        "{autoblock}"
    );
    ctl.detach_and_check(&lab.dst, &lab.dst_if);
}
