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
    // The controller logs the automatic block when its event arrives (its
    // startup line names `autoblock` too: wait for the source's block).
    let blocked = format!("{src}/32");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !controller.output().contains(&blocked) {
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
        if message.contains("autoblock") && message.contains(&blocked) {
            autoblock = Some(object.clone());
        }
    }
    assert!(lines > 0, "no log lines:\n{output}");
    let autoblock = autoblock.unwrap_or_else(|| panic!("no autoblock line:\n{output}"));
    assert_eq!(autoblock["level"], "INFO", "{autoblock}");

    ctl.detach_and_check(&lab.dst, &lab.dst_if);
}

/// Sums the estimated drops of `source` over the controller's JSON drop-log
/// lines so far.
fn logged_drops(output: &str, source: &str) -> (u64, usize) {
    let stderr = output.split_once("--- stderr\n").map_or("", |(_, e)| e);
    let mut total = 0;
    let mut lines = 0;
    for line in stderr.lines() {
        let Ok(object) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if object["fields"]["source"] == source {
            total += object["fields"]["estimated_packets"].as_u64().unwrap_or(0);
            lines += 1;
        }
    }
    (total, lines)
}

/// Runs a controller with `sampling` arguments, blocks the lab's source,
/// sends `count` datagrams from it and returns the estimated drops the
/// per-source drop log reports for it (waiting for them, bounded).
fn drops_logged(tag: &str, sampling: &[&str], count: usize, at_least: u64) -> (u64, String) {
    let lab = Lab::new(tag);
    let ctl = Ctl::new(tag);
    let mut args = vec!["--log-format", "json", "--drop-log-interval", "1s"];
    args.extend_from_slice(sampling);
    let mut controller = ctl.run_background_with(&lab.dst, &[&lab.dst_if], &args);
    let src = IpAddr::V4(lab.src_v4());
    ctl.ok(&["block", &src.to_string()]);
    let receiver = UdpReceiver::bind(&lab.dst, SocketAddr::new(IpAddr::V4(lab.dst_v4()), 5000));
    let sent = udp_send(&lab.src, src, receiver.addr(), count, Duration::ZERO);
    assert_eq!(sent, count);
    let deadline = Instant::now() + Duration::from_secs(10);
    let source = src.to_string();
    while logged_drops(&controller.output(), &source).0 < at_least && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    // One more interval, so that nothing is still being counted.
    thread::sleep(Duration::from_millis(1500));
    controller.terminate();
    let output = controller.output();
    let (total, _) = logged_drops(&output, &source);
    ctl.detach_and_check(&lab.dst, &lab.dst_if);
    (total, output)
}

#[test]
fn every_sampled_drop_is_counted_in_the_per_source_log() {
    if skip_unless_root("every_sampled_drop_is_counted_in_the_per_source_log") {
        return;
    }
    let (total, output) = drops_logged("droplog1", &["--sample", "blocklist=1"], 40, 40);
    assert_eq!(
        total, 40,
        "1-in-1 sampling: the log counts every drop\n{output}"
    );
    assert!(
        output.contains("dropped 40 packets (blocklist) in the last 1s"),
        "{output}"
    );
}

#[test]
fn a_sampled_estimate_is_within_one_sampling_period_per_cpu() {
    if skip_unless_root("a_sampled_estimate_is_within_one_sampling_period_per_cpu") {
        return;
    }
    let cpus = u64::try_from(std::thread::available_parallelism().map_or(1, usize::from))
        .expect("a few CPUs");
    let (total, output) = drops_logged("droplog100", &["--sample", "blocklist=100"], 2000, 2000);
    // Each CPU sends its first drop and then every 100th of its own drops
    // (`run` starts every CPU's countdown at 0), each event standing for
    // 100: the estimate exceeds the drops by at most 99 per CPU, and never
    // falls short of them.
    assert!(
        total >= 2000 && total <= 2000 + 99 * cpus,
        "estimated {total} of 2000 drops with 1-in-100 sampling on {cpus} CPUs\n{output}"
    );
    assert!(output.contains("dropped ~"), "{output}");
}
