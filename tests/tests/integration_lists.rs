//! Allow and block lists, end to end: real traffic between two namespaces,
//! the filter attached by the real `filter-ctl run` on the receiving side.
//! Needs root (namespaces, BPF); each test has its own namespaces and pin dir.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use filter_tests::{
    ctl::{Ctl, packets},
    netns::{
        Lab, TcpServer, UdpReceiver, UdpStream, count_from, ping, skip_unless_root, tcp_connect,
        udp_send,
    },
};

const UDP_PORT: u16 = 5000;
const TCP_PORT: u16 = 5001;
/// Under the kernel's initial SYN retransmission timeout (1 s): a refused
/// attempt sends exactly one SYN.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(300);
const PING_TIMEOUT: Duration = Duration::from_millis(300);
const QUIET: Duration = Duration::from_millis(200);
const DRAIN_MAX: Duration = Duration::from_secs(3);

const UDP_COUNT: usize = 10;
const PING_COUNT: u16 = 3;

/// What one source got through: UDP datagrams received, TCP connections
/// established, ICMP echoes answered.
#[derive(Debug, PartialEq, Eq)]
struct Through {
    udp: usize,
    tcp: usize,
    icmp: usize,
}

/// Listeners on the destination side of a lab, for one address family.
struct Listeners {
    udp: UdpReceiver,
    tcp: TcpServer,
}

impl Listeners {
    fn new(lab: &Lab, dst: IpAddr) -> Self {
        Self {
            udp: UdpReceiver::bind(&lab.dst, SocketAddr::new(dst, UDP_PORT)),
            tcp: TcpServer::bind(&lab.dst, SocketAddr::new(dst, TCP_PORT)),
        }
    }
}

/// Sends `UDP_COUNT` datagrams, one TCP connection attempt and `PING_COUNT`
/// echo requests from `src`; returns what got through. A source that gets
/// nothing through has put exactly `UDP_COUNT + 1 + PING_COUNT` packets on
/// the wire (static neighbours: no ARP/ND).
fn probe(lab: &Lab, listeners: &Listeners, src: IpAddr) -> Through {
    let dst = lab.dst_for(src);
    let sent = udp_send(
        &lab.src,
        src,
        SocketAddr::new(dst, UDP_PORT),
        UDP_COUNT,
        Duration::from_millis(1),
    );
    assert_eq!(sent, UDP_COUNT, "sending UDP from {src}");
    let connected = tcp_connect(
        &lab.src,
        src,
        SocketAddr::new(dst, TCP_PORT),
        CONNECT_TIMEOUT,
    );
    let icmp = ping(&lab.src, src, dst, PING_COUNT, PING_TIMEOUT);
    let udp = count_from(&listeners.udp.drain(QUIET, DRAIN_MAX), src);
    let accepted = listeners.tcp.accepted();
    let tcp = accepted.iter().filter(|p| **p == src).count();
    assert_eq!(
        usize::from(connected),
        tcp,
        "{src}: connect() result and the listener disagree (accepted {accepted:?})"
    );
    Through { udp, tcp, icmp }
}

const ALL_THROUGH: Through = Through {
    udp: UDP_COUNT,
    tcp: 1,
    icmp: PING_COUNT as usize,
};
const NOTHING_THROUGH: Through = Through {
    udp: 0,
    tcp: 0,
    icmp: 0,
};
/// Packets a fully blocked [`probe`] sends: UDP datagrams, one SYN, echo requests.
const PROBE_PACKETS: u64 = UDP_COUNT as u64 + 1 + PING_COUNT as u64;

#[test]
fn blocked_ipv4_source_loses_udp_tcp_and_icmp_while_another_passes() {
    if skip_unless_root("blocked_ipv4_source_loses_udp_tcp_and_icmp_while_another_passes") {
        return;
    }
    let lab = Lab::new("bl4");
    let ctl = Ctl::new("bl4");
    let mut controller = ctl.run_background(&lab.dst, &[&lab.dst_if]);
    assert!(
        lab.xdp_attached(),
        "run returned but no XDP program is attached"
    );
    let listeners = Listeners::new(&lab, IpAddr::V4(lab.dst_v4()));
    let good = IpAddr::V4(lab.src_v4());
    let bad = lab.add_src_v4(0x20);

    // Before any block both pass.
    assert_eq!(
        probe(&lab, &listeners, bad),
        ALL_THROUGH,
        "{bad} before the block"
    );
    let bad_text = bad.to_string();
    ctl.ok(&["block", &bad_text]);
    assert_eq!(
        ctl.list_json()["blocklist"],
        serde_json::json!([{ "cidr": format!("{bad}/32"), "origin": "cli" }])
    );
    let before = ctl.packets("blocklist");
    assert_eq!(before, 0, "nothing was blocked yet");

    assert_eq!(
        probe(&lab, &listeners, bad),
        NOTHING_THROUGH,
        "blocked {bad}"
    );
    assert_eq!(
        probe(&lab, &listeners, good),
        ALL_THROUGH,
        "unblocked {good}"
    );
    assert_eq!(
        ctl.packets("blocklist"),
        PROBE_PACKETS,
        "blocklist counter = packets the blocked source sent"
    );

    // Unblock: the source passes again, the counter stays.
    ctl.ok(&["unblock", &bad_text]);
    assert_eq!(
        probe(&lab, &listeners, bad),
        ALL_THROUGH,
        "{bad} after unblock"
    );
    assert_eq!(ctl.packets("blocklist"), PROBE_PACKETS);

    controller.terminate();
    ctl.detach_and_check(&lab.dst, &lab.dst_if);
}

#[test]
fn blocked_ipv6_sources_and_prefix_lose_udp_tcp_and_icmp_while_another_passes() {
    if skip_unless_root(
        "blocked_ipv6_sources_and_prefix_lose_udp_tcp_and_icmp_while_another_passes",
    ) {
        return;
    }
    let lab = Lab::new("bl6");
    let ctl = Ctl::new("bl6");
    let mut controller = ctl.run_background(&lab.dst, &[&lab.dst_if]);
    let listeners = Listeners::new(&lab, IpAddr::V6(lab.dst_v6()));
    let good = IpAddr::V6(lab.src_v6());
    // Same /64 as `good`, blocked as a single address.
    let bad_host = lab.add_src_v6(0, 0x20);
    // Two addresses in 2001:db8:N:bad::/64, blocked as a prefix.
    let bad_net_a = lab.add_src_v6(0xbad, 0x1);
    let bad_net_b = lab.add_src_v6(0xbad, 0xffff);
    // In the lab's /48 but outside the blocked /64.
    let neighbour_net = lab.add_src_v6(0xbac, 0x1);

    let prefix = format!("{}/64", lab.v6(0xbad, 0));
    ctl.ok(&["block", &bad_host.to_string(), &prefix]);
    let listed = ctl.list_json();
    let mut cidrs: Vec<&str> = listed["blocklist"]
        .as_array()
        .expect("blocklist array")
        .iter()
        .map(|e| e["cidr"].as_str().expect("cidr"))
        .collect();
    cidrs.sort_unstable();
    let mut expected = vec![format!("{bad_host}/128"), prefix.clone()];
    expected.sort();
    assert_eq!(cidrs, expected);

    for bad in [bad_host, bad_net_a, bad_net_b] {
        assert_eq!(
            probe(&lab, &listeners, bad),
            NOTHING_THROUGH,
            "blocked {bad}"
        );
    }
    for ok in [good, neighbour_net] {
        assert_eq!(probe(&lab, &listeners, ok), ALL_THROUGH, "unblocked {ok}");
    }
    assert_eq!(ctl.packets("blocklist"), 3 * PROBE_PACKETS);

    // A /48 covers the whole lab, including the good source.
    ctl.ok(&["block", &lab.v6_net()]);
    assert_eq!(
        probe(&lab, &listeners, good),
        NOTHING_THROUGH,
        "{good} in the /48"
    );
    assert_eq!(ctl.packets("blocklist"), 4 * PROBE_PACKETS);

    controller.terminate();
    ctl.detach_and_check(&lab.dst, &lab.dst_if);
}

#[test]
fn prefix_block_covers_every_address_and_allowlist_beats_blocklist() {
    if skip_unless_root("prefix_block_covers_every_address_and_allowlist_beats_blocklist") {
        return;
    }
    let lab = Lab::new("cidr");
    let ctl = Ctl::new("cidr");
    let mut controller = ctl.run_background(&lab.dst, &[&lab.dst_if]);
    let dst = SocketAddr::new(IpAddr::V4(lab.dst_v4()), UDP_PORT);
    let receiver = UdpReceiver::bind(&lab.dst, dst);
    let outside = IpAddr::V4(lab.src_v4()); // .16, outside .128/25
    let inside: Vec<IpAddr> = [0x80, 0x81, 0xc0, 0xfe]
        .into_iter()
        .map(|h| lab.add_src_v4(h))
        .collect();
    let allowed = lab.add_src_v4(0x90);
    let v6_allowed = lab.add_src_v6(0xbad, 0x7);
    let v6_blocked = lab.add_src_v6(0xbad, 0x8);

    ctl.ok(&["block", &format!("{}/25", lab.v4(0x80))]);
    ctl.ok(&["block", &format!("{}/64", lab.v6(0xbad, 0))]);
    ctl.ok(&["allow", &allowed.to_string(), &v6_allowed.to_string()]);

    let per_source = 5;
    let v6_dst = SocketAddr::new(IpAddr::V6(lab.dst_v6()), UDP_PORT);
    let receiver6 = UdpReceiver::bind(&lab.dst, v6_dst);
    let mut v4_sources = inside.clone();
    v4_sources.extend([allowed, outside]);
    for src in &v4_sources {
        let sent = udp_send(&lab.src, *src, dst, per_source, Duration::from_millis(1));
        assert_eq!(sent, per_source);
    }
    for src in [v6_allowed, v6_blocked] {
        let sent = udp_send(&lab.src, src, v6_dst, per_source, Duration::from_millis(1));
        assert_eq!(sent, per_source);
    }
    let got = receiver.drain(QUIET, DRAIN_MAX);
    let got6 = receiver6.drain(QUIET, DRAIN_MAX);
    for src in &inside {
        assert_eq!(count_from(&got, *src), 0, "{src} is in the blocked /25");
    }
    assert_eq!(
        count_from(&got, allowed),
        per_source,
        "allowlisted {allowed}"
    );
    assert_eq!(
        count_from(&got, outside),
        per_source,
        "{outside} is outside the /25"
    );
    assert_eq!(
        count_from(&got6, v6_allowed),
        per_source,
        "allowlisted {v6_allowed}"
    );
    assert_eq!(
        count_from(&got6, v6_blocked),
        0,
        "{v6_blocked} is in the blocked /64"
    );

    let stats = ctl.stats_json();
    assert_eq!(
        packets(&stats, "blocklist"),
        u64::try_from((inside.len() + 1) * per_source).expect("small")
    );
    assert_eq!(packets(&stats, "allowlist"), 2 * per_source as u64);

    // Removing the allowlist entry exposes the block again.
    ctl.ok(&["disallow", &allowed.to_string()]);
    let sent = udp_send(&lab.src, allowed, dst, per_source, Duration::from_millis(1));
    assert_eq!(sent, per_source);
    assert_eq!(count_from(&receiver.drain(QUIET, DRAIN_MAX), allowed), 0);
    assert_eq!(ctl.packets("allowlist"), 2 * per_source as u64);

    controller.terminate();
    ctl.detach_and_check(&lab.dst, &lab.dst_if);
}

#[test]
fn block_with_ttl_expires_by_itself() {
    if skip_unless_root("block_with_ttl_expires_by_itself") {
        return;
    }
    let lab = Lab::new("ttl");
    let ctl = Ctl::new("ttl");
    let mut controller = ctl.run_background(&lab.dst, &[&lab.dst_if]);
    let dst = SocketAddr::new(IpAddr::V4(lab.dst_v4()), UDP_PORT);
    let receiver = UdpReceiver::bind(&lab.dst, dst);
    let src = lab.add_src_v4(0x30);
    let ttl = Duration::from_secs(2);

    let issued = Instant::now();
    ctl.ok(&["block", &src.to_string(), "--ttl", "2s"]);
    let returned = Instant::now();
    let listed = ctl.list_json();
    let entry = &listed["blocklist"][0];
    assert_eq!(entry["cidr"], format!("{src}/32"), "{listed}");
    let left = entry["expires_in_secs"]
        .as_u64()
        .expect("TTL entry has expires_in_secs");
    assert!(left <= 2, "expires_in_secs {left} > ttl 2s");

    // Probe every 50 ms until one gets through; bounded.
    let mut sent = 0u64;
    let mut first_through = None;
    while issued.elapsed() < ttl + Duration::from_secs(3) {
        assert_eq!(udp_send(&lab.src, src, dst, 1, Duration::ZERO), 1);
        sent += 1;
        if let Some(d) = receiver
            .drain(Duration::from_millis(50), Duration::from_millis(100))
            .first()
        {
            first_through = Some(d.at);
            break;
        }
    }
    let first = first_through.expect("the TTL block never expired");
    // A probe that passed but was read only after the next one was sent
    // (a loaded machine) passed too: count what arrived, not the last.
    let passed = 1 + count_from(&receiver.drain(QUIET, DRAIN_MAX), src) as u64;
    // The entry expires ttl after it was written, between `issued` and `returned`.
    assert!(
        first >= issued + ttl,
        "a packet passed {:?} after the block was issued, before its 2 s TTL",
        first - issued
    );
    assert!(
        first <= returned + ttl + Duration::from_millis(500),
        "the block still held {:?} after it was issued (TTL 2 s)",
        first - issued
    );
    eprintln!(
        "ttl: first packet through {:?} after `block --ttl 2s` was issued",
        first - issued
    );
    assert_eq!(
        ctl.packets("blocklist"),
        sent - passed,
        "all probes but those that passed were blocked"
    );
    assert_eq!(ctl.list_json()["blocklist"], serde_json::json!([]));

    controller.terminate();
    ctl.detach_and_check(&lab.dst, &lab.dst_if);
}

#[test]
fn expired_nested_entries_never_unblock_a_covering_prefix() {
    if skip_unless_root("expired_nested_entries_never_unblock_a_covering_prefix") {
        return;
    }
    let lab = Lab::new("nest");
    let ctl = Ctl::new("nest");
    let mut controller = ctl.run_background(&lab.dst, &[&lab.dst_if]);
    let dst = SocketAddr::new(IpAddr::V4(lab.dst_v4()), UDP_PORT);
    let receiver = UdpReceiver::bind(&lab.dst, dst);
    let src = lab.add_src_v4(0x21);
    ctl.ok(&["block", &lab.v4_net()]);
    // Four expired entries nested over `src` inside the permanent /24: the
    // program skips (and deletes) up to four in one lookup. Their time to
    // live leaves room for the five commands on a loaded machine.
    for prefix in ["/26", "/28", "/30", "/32"] {
        ctl.ok(&["block", &format!("{src}{prefix}"), "--ttl", "3s"]);
    }
    let last_written = Instant::now();
    assert_eq!(
        ctl.list_json()["blocklist"].as_array().map(Vec::len),
        Some(5)
    );
    let expired = last_written + Duration::from_millis(3300);
    std::thread::sleep(expired.saturating_duration_since(Instant::now()));

    assert_eq!(udp_send(&lab.src, src, dst, 3, Duration::from_millis(5)), 3);
    let got = count_from(&receiver.drain(QUIET, DRAIN_MAX), src);
    assert_eq!(
        got,
        0,
        "{src} is inside the permanently blocked {}",
        lab.v4_net()
    );
    assert_eq!(ctl.packets("blocklist"), 3);
    assert_eq!(
        ctl.list_json()["blocklist"],
        serde_json::json!([{ "cidr": lab.v4_net(), "origin": "cli" }])
    );

    controller.terminate();
    ctl.detach_and_check(&lab.dst, &lab.dst_if);
}

#[test]
fn block_issued_during_traffic_takes_effect_at_once() {
    if skip_unless_root("block_issued_during_traffic_takes_effect_at_once") {
        return;
    }
    let lab = Lab::new("live");
    let ctl = Ctl::new("live");
    let mut controller = ctl.run_background(&lab.dst, &[&lab.dst_if]);
    let dst = SocketAddr::new(IpAddr::V4(lab.dst_v4()), UDP_PORT);
    let collector = UdpReceiver::bind(&lab.dst, dst).collect(Duration::from_secs(30));
    let src = lab.add_src_v4(0x40);
    let stream = UdpStream::start(
        &lab.src,
        src,
        dst,
        Duration::from_millis(1),
        Duration::from_secs(20),
    );

    // Wait (bounded) until traffic flows.
    let start = Instant::now();
    while collector.count_from(src) < 200 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "traffic did not start"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let issued = Instant::now();
    ctl.ok(&["block", &src.to_string()]);
    let returned = Instant::now();
    // Keep sending well past the block.
    std::thread::sleep(Duration::from_millis(500));
    let report = stream.stop();
    let got = collector.stop();
    let sent = report.sent;
    let seqs: Vec<u64> = got
        .iter()
        .filter(|d| d.from == src)
        .map(|d| d.seq.expect("a test datagram"))
        .collect();
    let received = seqs.len() as u64;
    let last_seq = *seqs.iter().max().expect("received something");
    let last_read = got
        .iter()
        .filter(|d| d.from == src)
        .map(|d| d.at)
        .max()
        .expect("received something");
    let last_sent = report.send_started[usize::try_from(last_seq).expect("small")];
    let millis = |later: Instant, earlier: Instant| {
        if later >= earlier {
            (later - earlier).as_secs_f64() * 1000.0
        } else {
            -((earlier - later).as_secs_f64() * 1000.0)
        }
    };
    eprintln!(
        "live block: `filter-ctl block` took {:.1} ms; the last datagram that got through was sent \
         {:.1} ms after it returned ({:.1} ms after it was issued) and read {:.1} ms after it \
         returned; {sent} sent, {received} received",
        millis(returned, issued),
        millis(last_sent, returned),
        millis(last_sent, issued),
        millis(last_read, returned),
    );
    // Everything before the block arrived, in order, nothing after it.
    assert_eq!(
        last_seq + 1,
        received,
        "datagrams were lost before the block"
    );
    let after_block = report
        .send_started
        .iter()
        .filter(|t| **t > returned)
        .count();
    assert!(
        after_block >= 100,
        "the sender stalled after the block ({after_block} sent after it returned)"
    );
    // A datagram sent after `block` returned meets the updated map: the grace
    // only covers clock reads around the calls.
    let grace = Duration::from_millis(5);
    assert!(
        last_sent <= returned + grace,
        "a datagram sent {:.1} ms after `block` returned got through",
        millis(last_sent, returned)
    );
    // And, as the receiver sees it, nothing arrives after the block returned
    // (plus the receiver thread's scheduling delay, which a loaded machine
    // stretches: the check above, by send time, is the exact one).
    assert!(
        last_read <= returned + Duration::from_secs(1),
        "a datagram was read {:.1} ms after `block` returned",
        millis(last_read, returned)
    );
    assert_eq!(
        ctl.packets("blocklist"),
        sent - received,
        "every packet sent was either received or counted as blocked"
    );

    controller.terminate();
    ctl.detach_and_check(&lab.dst, &lab.dst_if);
}
