//! Per-source rate limits and automatic blocks, end to end with real floods
//! between two namespaces. Needs root; each test has its own namespaces and
//! pin dir.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use filter_tests::{
    ctl::{Ctl, packets},
    netns::{Lab, UdpReceiver, UdpStream, count_from, skip_unless_root, udp_send},
};

const PORT: u16 = 6000;
const RATE: u64 = 200;
const BURST: u64 = 20;
/// One datagram per millisecond per sender thread: with two threads about
/// 10 × `RATE` (sleep granularity makes it a little less).
const FLOOD_INTERVAL: Duration = Duration::from_millis(1);
const MAX_STREAM: Duration = Duration::from_secs(30);
const QUIET: Duration = Duration::from_millis(300);

/// Two sender threads flooding from `src` to `dst`.
struct Flood {
    streams: [UdpStream; 2],
}

impl Flood {
    fn start(lab: &Lab, src: IpAddr, dst: SocketAddr) -> Self {
        let stream = || UdpStream::start(&lab.src, src, dst, FLOOD_INTERVAL, MAX_STREAM);
        Self {
            streams: [stream(), stream()],
        }
    }

    /// Stops both threads: (datagrams sent, time from the first send to the last).
    fn stop(self) -> (u64, Duration) {
        let [a, b] = self.streams.map(UdpStream::stop);
        let first = a
            .first
            .into_iter()
            .chain(b.first)
            .min()
            .expect("flood sent");
        let last = a.last.into_iter().chain(b.last).max().expect("flood sent");
        (a.sent + b.sent, last - first)
    }
}

#[test]
fn rate_limit_holds_a_flooder_to_rate_and_burst_and_spares_a_well_behaved_source() {
    if skip_unless_root(
        "rate_limit_holds_a_flooder_to_rate_and_burst_and_spares_a_well_behaved_source",
    ) {
        return;
    }
    let lab = Lab::new("rate");
    let ctl = Ctl::new("rate");
    let mut controller = ctl.run_background(&lab.dst, &[&lab.dst_if]);
    let (rate, burst) = (RATE.to_string(), BURST.to_string());
    ctl.ok(&[
        "limit",
        "set",
        &format!("udp/{PORT}"),
        "--rate",
        &rate,
        "--burst",
        &burst,
    ]);
    let dst = SocketAddr::new(IpAddr::V4(lab.dst_v4()), PORT);
    let collector = UdpReceiver::bind(&lab.dst, dst).collect(MAX_STREAM);
    let flooder = lab.add_src_v4(0x50);
    let polite = lab.add_src_v4(0x60);

    let flood = Flood::start(&lab, flooder, dst);
    // A quarter of the rate: never over the limit.
    let polite_stream =
        UdpStream::start(&lab.src, polite, dst, Duration::from_millis(20), MAX_STREAM);
    std::thread::sleep(Duration::from_secs(3));
    let (flood_sent, duration) = flood.stop();
    let polite_sent = polite_stream.stop().sent;
    std::thread::sleep(QUIET);
    let got = collector.stop();
    let flood_received = count_from(&got, flooder) as u64;
    let polite_received = count_from(&got, polite) as u64;

    #[expect(clippy::cast_precision_loss, reason = "small counts")]
    let (expected, received_f, sent_f) = (
        RATE as f64 * duration.as_secs_f64() + BURST as f64,
        flood_received as f64,
        flood_sent as f64,
    );
    eprintln!(
        "rate limit {RATE}/s burst {BURST}: flooder sent {flood_sent} in {duration:?} ({:.0}/s), \
         {flood_received} received, expected {expected:.1} (rate x duration + burst), \
         off by {:+.2}%; polite source sent {polite_sent}, received {polite_received}",
        sent_f / duration.as_secs_f64(),
        (received_f - expected) / expected * 100.0
    );
    assert!(
        sent_f / duration.as_secs_f64()
            >= 5.0 * f64::from(u32::try_from(RATE).expect("small rate")),
        "the flood was too slow to test the limit"
    );
    // Never more than the limit allows (5% for the clocks' edges); less by
    // up to 10%, as a sender the loaded machine stalls for longer than a
    // burst's worth (100 ms) leaves allowance unused.
    assert!(
        received_f <= 1.05 * expected && received_f >= 0.90 * expected,
        "flooder got {flood_received} through, expected {expected:.1} (-10% to +5%)"
    );
    assert_eq!(
        polite_received, polite_sent,
        "the polite source lost packets"
    );
    assert!(
        polite_sent >= 100,
        "the polite source sent only {polite_sent}"
    );

    let stats = ctl.stats_json();
    assert_eq!(
        packets(&stats, "ratelimit"),
        flood_sent - flood_received,
        "every flood packet not received is counted as rate-limited"
    );
    let rules = ctl.json(&["limit", "list", "--json"]);
    let rule = rules["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .find(|r| r["target"] == format!("udp/{PORT}"))
        .unwrap_or_else(|| panic!("udp/{PORT} not listed: {rules}"));
    assert_eq!(rule["rate"], RATE, "{rule}");
    assert_eq!(rule["burst"], BURST, "{rule}");
    assert_eq!(
        rule["passed_packets"],
        flood_received + polite_received,
        "{rule}"
    );
    assert_eq!(
        rule["dropped_packets"],
        flood_sent - flood_received,
        "{rule}"
    );
    assert_eq!(ctl.list_json()["autoblock"], serde_json::json!([]));

    controller.terminate();
    ctl.detach_and_check(&lab.dst, &lab.dst_if);
}

#[test]
fn flooder_is_autoblocked_and_released_after_the_block_time() {
    if skip_unless_root("flooder_is_autoblocked_and_released_after_the_block_time") {
        return;
    }
    let lab = Lab::new("auto");
    let ctl = Ctl::new("auto");
    let mut controller = ctl.run_background(&lab.dst, &[&lab.dst_if]);
    let after: u64 = 50;
    let block_for = Duration::from_secs(3);
    ctl.ok(&[
        "limit",
        "set",
        &format!("udp/{PORT}"),
        "--rate",
        &RATE.to_string(),
        "--burst",
        &BURST.to_string(),
        "--autoblock-after",
        &after.to_string(),
        "--window",
        "1s",
        "--block-for",
        "3s",
    ]);
    let dst = SocketAddr::new(IpAddr::V4(lab.dst_v4()), PORT);
    let receiver = UdpReceiver::bind(&lab.dst, dst);
    let flooder = lab.add_src_v4(0x50);
    let bystander = lab.add_src_v4(0x60);

    let flood_start = Instant::now();
    let flood = Flood::start(&lab, flooder, dst);
    std::thread::sleep(Duration::from_millis(500));
    let (flood_sent, _) = flood.stop();
    let listed_at = Instant::now();
    let listed = ctl.list_json();
    let auto = listed["autoblock"].as_array().expect("autoblock array");
    assert_eq!(
        auto.len(),
        1,
        "exactly the flooder is autoblocked: {listed}"
    );
    assert_eq!(auto[0]["source"], format!("{flooder}/32"), "{listed}");
    assert_eq!(auto[0]["rule"], format!("udp/{PORT}"), "{listed}");
    assert_eq!(auto[0]["over_limit"], after, "{listed}");
    let left = auto[0]["expires_in_secs"]
        .as_u64()
        .expect("expires_in_secs");
    assert!(left < 3, "expires_in_secs {left} (block for 3 s)");
    assert_eq!(
        listed["blocklist"],
        serde_json::json!([]),
        "autoblocks are listed apart"
    );

    let flood_received = count_from(&receiver.drain(QUIET, Duration::from_secs(3)), flooder) as u64;
    let stats = ctl.stats_json();
    let (limited, blocked) = (packets(&stats, "ratelimit"), packets(&stats, "autoblock"));
    eprintln!(
        "autoblock after {after}: flooder sent {flood_sent}, {flood_received} received, \
         {limited} rate-limited, {blocked} dropped as autoblocked"
    );
    assert_eq!(flood_received + limited + blocked, flood_sent);
    assert!(blocked > 0, "nothing was dropped as autoblocked");
    // The packet that reaches the threshold blocks; packets already in flight
    // on the other CPU may still be counted as rate-limited.
    assert!(
        (after..=after + 2).contains(&limited),
        "{limited} rate-limited before the block, expected {after} (+ in-flight)"
    );
    assert!(flood_received >= BURST, "the burst should have passed");

    // Others still get through while the flooder is blocked.
    assert_eq!(
        udp_send(&lab.src, bystander, dst, 10, Duration::from_millis(1)),
        10
    );
    assert_eq!(
        count_from(&receiver.drain(QUIET, Duration::from_secs(3)), bystander),
        10
    );

    // Released by itself: probe every 50 ms (bounded) until one gets through.
    let mut first_through = None;
    while flood_start.elapsed() < block_for + Duration::from_secs(3) {
        assert_eq!(udp_send(&lab.src, flooder, dst, 1, Duration::ZERO), 1);
        if let Some(d) = receiver
            .drain(Duration::from_millis(50), Duration::from_millis(100))
            .iter()
            .find(|d| d.from == flooder)
        {
            first_through = Some(d.at);
            break;
        }
    }
    let released = first_through.expect("the automatic block was never lifted");
    eprintln!(
        "autoblock: released {:?} after the flood started (block for {block_for:?})",
        released - flood_start
    );
    // The block started after the flood did and before it was listed.
    assert!(released >= flood_start + block_for, "released too early");
    // Late by at most a probe's round (a send and a drain of 50 to 100 ms,
    // stretched on a loaded machine) and the receiver's scheduling.
    assert!(
        released <= listed_at + block_for + Duration::from_millis(1500),
        "released too late"
    );
    assert_eq!(ctl.list_json()["autoblock"], serde_json::json!([]));

    controller.terminate();
    ctl.detach_and_check(&lab.dst, &lab.dst_if);
}

#[test]
fn allowlisted_source_is_never_rate_limited_or_autoblocked() {
    if skip_unless_root("allowlisted_source_is_never_rate_limited_or_autoblocked") {
        return;
    }
    let lab = Lab::new("prec");
    let ctl = Ctl::new("prec");
    let mut controller = ctl.run_background(&lab.dst, &[&lab.dst_if]);
    ctl.ok(&[
        "limit",
        "set",
        &format!("udp/{PORT}"),
        "--rate",
        &RATE.to_string(),
        "--burst",
        &BURST.to_string(),
        "--autoblock-after",
        "10",
        "--window",
        "1s",
        "--block-for",
        "1m",
    ]);
    // The default limit, for every other port, too.
    ctl.ok(&["limit", "set", "default", "--rate", "10", "--burst", "5"]);
    let dst = SocketAddr::new(IpAddr::V4(lab.dst_v4()), PORT);
    let other_port = SocketAddr::new(IpAddr::V4(lab.dst_v4()), PORT + 1);
    let receiver = UdpReceiver::bind(&lab.dst, dst);
    let other_receiver = UdpReceiver::bind(&lab.dst, other_port);
    let trusted = lab.add_src_v4(0x70);
    let flooder = lab.add_src_v4(0x50);
    ctl.ok(&["allow", &trusted.to_string()]);

    let trusted_flood = Flood::start(&lab, trusted, dst);
    let flood = Flood::start(&lab, flooder, dst);
    std::thread::sleep(Duration::from_secs(1));
    let (trusted_sent, _) = trusted_flood.stop();
    let (flood_sent, _) = flood.stop();
    let to_other = udp_send(&lab.src, trusted, other_port, 100, Duration::ZERO) as u64;
    let got = receiver.drain(QUIET, Duration::from_secs(5));
    let got_other = other_receiver.drain(QUIET, Duration::from_secs(3));

    let trusted_received = count_from(&got, trusted) as u64;
    eprintln!(
        "precedence: allowlisted source sent {trusted_sent}, received {trusted_received}; \
         flooder sent {flood_sent}, received {}",
        count_from(&got, flooder)
    );
    assert_eq!(
        trusted_received, trusted_sent,
        "the allowlisted source lost packets"
    );
    assert_eq!(count_from(&got_other, trusted) as u64, to_other);
    assert!(
        (count_from(&got, flooder) as u64) < flood_sent / 2,
        "the rule did not limit the other flooder"
    );
    let stats = ctl.stats_json();
    assert_eq!(packets(&stats, "allowlist"), trusted_sent + to_other);
    let listed = ctl.list_json();
    let auto = listed["autoblock"].as_array().expect("autoblock array");
    assert_eq!(auto.len(), 1, "only the flooder is autoblocked: {listed}");
    assert_eq!(auto[0]["source"], format!("{flooder}/32"));

    controller.terminate();
    ctl.detach_and_check(&lab.dst, &lab.dst_if);
}

#[test]
fn ipv6_flooder_is_autoblocked_by_its_slash_64_until_unblocked() {
    if skip_unless_root("ipv6_flooder_is_autoblocked_by_its_slash_64_until_unblocked") {
        return;
    }
    let lab = Lab::new("auto6");
    let ctl = Ctl::new("auto6");
    let mut controller = ctl.run_background(&lab.dst, &[&lab.dst_if]);
    ctl.ok(&[
        "limit",
        "set",
        &format!("udp/{PORT}"),
        "--rate",
        &RATE.to_string(),
        "--burst",
        &BURST.to_string(),
        "--autoblock-after",
        "20",
        "--window",
        "1s",
        "--block-for",
        "10m",
    ]);
    let dst = SocketAddr::new(IpAddr::V6(lab.dst_v6()), PORT);
    let receiver = UdpReceiver::bind(&lab.dst, dst);
    let flooder = lab.add_src_v6(5, 1);
    let same_64 = lab.add_src_v6(5, 2);
    let other_64 = lab.add_src_v6(6, 1);

    let flood = Flood::start(&lab, flooder, dst);
    std::thread::sleep(Duration::from_millis(300));
    let (flood_sent, _) = flood.stop();
    let listed = ctl.list_json();
    let auto = listed["autoblock"].as_array().expect("autoblock array");
    assert_eq!(auto.len(), 1, "{listed}");
    // IPv6 sources are limited (and blocked) by /64.
    assert_eq!(
        auto[0]["source"],
        format!("{}/64", lab.v6(5, 0)),
        "{listed}"
    );
    let _ = receiver.drain(QUIET, Duration::from_secs(3));
    let blocked_before = ctl.packets("autoblock");
    assert!(blocked_before > 0 && blocked_before < flood_sent);

    let send = |src: IpAddr| {
        assert_eq!(
            udp_send(&lab.src, src, dst, 10, Duration::from_millis(1)),
            10
        );
        count_from(&receiver.drain(QUIET, Duration::from_secs(3)), src)
    };
    assert_eq!(send(same_64), 0, "{same_64} shares the flooder's /64");
    assert_eq!(ctl.packets("autoblock"), blocked_before + 10);
    assert_eq!(send(other_64), 10, "{other_64} is in another /64");

    // `unblock` lifts an automatic block given any address it covers.
    ctl.ok(&["unblock", &same_64.to_string()]);
    assert_eq!(ctl.list_json()["autoblock"], serde_json::json!([]));
    assert_eq!(send(flooder), 10, "{flooder} after unblock");
    assert_eq!(ctl.packets("autoblock"), blocked_before + 10);

    controller.terminate();
    ctl.detach_and_check(&lab.dst, &lab.dst_if);
}
