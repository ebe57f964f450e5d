//! Table tests of port rules and rate limits through `BPF_PROG_TEST_RUN`
//! (`filter-ebpf/src/ratelimit.rs`): drop and only-from rules, source
//! aggregation, packet and byte buckets, the limiter's clock and the
//! tracking table. Rates are set so low (one packet per 1000 s) that no
//! bucket refills while a test runs: a bucket lets exactly `burst` packets through.

use std::time::Duration;

use filter_common::reason::{MALFORMED, PASS, PORT_DENIED, RATELIMIT};
use filter_ctl::spec::rule::LimitSpec;
use filter_tests::{
    frames::{self, Ext, Frame, Ipv4, L4, Udp, ip4, ip6, proto},
    progtest::{Case, ProgTest, run_cases, run_table, skip_unless_root},
    rules::{
        SLOW, XDP_DROP_ACTION, XDP_PASS_ACTION, assert_rule_counters, freeze, icmp4, tcp4, tcp6,
        udp4, udp6,
    },
};

#[test]
fn drop_and_only_from_rules() {
    if skip_unless_root("drop_and_only_from_rules") {
        return;
    }
    let test = ProgTest::new();
    let closed = test.limit(
        "tcp/23",
        &LimitSpec {
            drop: true,
            ..Default::default()
        },
    );
    let ssh = test.limit(
        "tcp/22",
        &LimitSpec {
            only_from: vec![
                "198.18.7.0/24".parse().unwrap(),
                "2001:db8:7::/48".parse().unwrap(),
            ],
            ..Default::default()
        },
    );
    let range = test.limit(
        "udp/6000-6010",
        &LimitSpec {
            drop: true,
            ..Default::default()
        },
    );
    let cases = vec![
        Case::new(
            "TCP to the closed port",
            tcp4("198.18.1.1", 23),
            PORT_DENIED,
        ),
        Case::new(
            "IPv6 TCP to the closed port",
            tcp6("2001:db8::1", 23),
            PORT_DENIED,
        ),
        Case::new("UDP to 23 (only TCP closed)", udp4("198.18.1.1", 23), PASS),
        Case::new("TCP to 24", tcp4("198.18.1.1", 24), PASS),
        Case::new(
            "non-first fragment to the closed port (no ports)",
            Frame::ipv4(
                Ipv4::new(
                    ip4("198.18.1.1"),
                    frames::DST4,
                    L4::raw(proto::TCP, frames::Tcp::new(1, 23).encode()),
                )
                .fragment(2, false),
            )
            .build(),
            PASS,
        ),
        Case::new(
            "IPv6 TCP behind extension headers to the closed port",
            Frame::ipv6(
                frames::tcp6(ip6("2001:db8::1"), 23)
                    .ext(Ext::hop_by_hop(0))
                    .ext(Ext::dest_opts(0)),
            )
            .build(),
            PORT_DENIED,
        ),
        Case::new("only-from: inside the /24", tcp4("198.18.7.5", 22), PASS),
        Case::new("only-from: outside", tcp4("198.18.8.5", 22), PORT_DENIED),
        Case::new(
            "only-from: IPv6 inside the /48",
            tcp6("2001:db8:7:1::1", 22),
            PASS,
        ),
        Case::new(
            "only-from: IPv6 outside",
            tcp6("2001:db8:8::1", 22),
            PORT_DENIED,
        ),
        Case::new(
            "only-from: IPv4-mapped IPv6 source (never on the wire) is malformed",
            tcp6("::ffff:198.18.7.5", 22),
            MALFORMED,
        ),
        Case::new(
            "only-from: UDP to 22 is not covered",
            udp4("198.18.8.5", 22),
            PASS,
        ),
        Case::new(
            "closed range, first port",
            udp4("198.18.1.1", 6000),
            PORT_DENIED,
        ),
        Case::new(
            "closed range, last port",
            udp6("2001:db8::1", 6010),
            PORT_DENIED,
        ),
        Case::new("after the range", udp4("198.18.1.1", 6011), PASS),
        Case::new("before the range", udp4("198.18.1.1", 5999), PASS),
        Case::new("ICMP is not a port", icmp4("198.18.8.5"), PASS),
    ];
    let model = run_table(&test, &cases);
    assert_rule_counters(&test, &model, &[0, closed, ssh, range]);
    assert_eq!(test.rule_counters(ssh).dropped.packets, 2);
}

#[test]
fn default_rule_aggregation_and_bytes() {
    if skip_unless_root("default_rule_aggregation_and_bytes") {
        return;
    }
    let test = ProgTest::new();
    test.set_aggregation(24, 48);
    let default = test.limit(
        "default",
        &LimitSpec {
            rate: Some(1),
            burst: Some(2),
            ..Default::default()
        },
    );
    freeze(&test, default, 2);
    // Open to everyone, no rate: always passes, bypassing the default limit.
    let open = test.limit(
        "udp/53",
        &LimitSpec {
            only_from: vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()],
            ..Default::default()
        },
    );
    // A byte limit only: 150 bytes of tolerance, 100 bytes per 1000 s.
    let bytes = test.limit(
        "tcp/8080",
        &LimitSpec {
            rate: Some(1),
            bytes: Some(1),
            ..Default::default()
        },
    );
    test.patch_rule(bytes, |rule| {
        rule.packet_interval = 0;
        rule.packet_tolerance = 0;
        rule.byte_interval = SLOW / 100;
        rule.byte_tolerance = 150 * (SLOW / 100);
    });
    let small = |src: &str| {
        // 60 bytes: the minimum Ethernet frame.
        Frame::ipv4(frames::tcp4(ip4(src), 8080).trailer(vec![0; 6])).build()
    };
    assert_eq!(small("198.18.40.1").len(), 60);
    let big = Frame::ipv4(Ipv4::new(
        ip4("198.18.41.1"),
        frames::DST4,
        frames::Tcp::new(1, 8080).payload(vec![0; 146]).into(),
    ))
    .build();
    assert_eq!(big.len(), 200);
    let cases = vec![
        Case::new("default: first of the /24", udp4("198.18.30.1", 1), PASS),
        Case::new(
            "default: second host, same /24 bucket",
            tcp4("198.18.30.2", 2),
            PASS,
        ),
        Case::new("default: third, over", icmp4("198.18.30.3"), RATELIMIT),
        Case::new(
            "default: GRE counts too",
            Frame::ipv4(Ipv4::new(
                ip4("198.18.30.4"),
                frames::DST4,
                L4::raw(proto::GRE, vec![0; 4]),
            ))
            .build(),
            RATELIMIT,
        ),
        Case::new("default: next /24", udp4("198.18.31.1", 1), PASS),
        Case::new("open port: no limit", udp4("198.18.30.1", 53), PASS),
        Case::new("open port again", udp4("198.18.30.1", 53), PASS),
        Case::new("open port, IPv6", udp6("2001:db8:30::1", 53), PASS),
        Case::new("default IPv6: /48 bucket", udp6("2001:db8:30::1", 9), PASS),
        Case::new(
            "default IPv6: same /48",
            udp6("2001:db8:30:ffff::1", 9),
            PASS,
        ),
        Case::new("default IPv6: over", udp6("2001:db8:30:1::1", 9), RATELIMIT),
        Case::new("bytes: 60 (60 of 150)", small("198.18.40.1"), PASS),
        Case::new("bytes: 60 (120 of 150)", small("198.18.40.1"), PASS),
        Case::new("bytes: 60 (tat 120 <= 150)", small("198.18.40.1"), PASS),
        Case::new(
            "bytes: over (tat 180 > 150)",
            small("198.18.40.1"),
            RATELIMIT,
        ),
        Case::new("bytes: 200 at once from a fresh source", big.clone(), PASS),
        Case::new(
            "bytes: then even 60 is over",
            small("198.18.41.1"),
            RATELIMIT,
        ),
        Case::new(
            "bytes: UDP to 8080 takes the default rule",
            Frame::ipv4(Ipv4::new(
                ip4("198.18.42.1"),
                frames::DST4,
                Udp::new(1, 8080).into(),
            ))
            .build(),
            PASS,
        ),
    ];
    let model = run_table(&test, &cases);
    assert_rule_counters(&test, &model, &[default, open, bytes]);
}

/// A packet the byte bucket refuses charges neither bucket: after 3 passed
/// and 4 byte-refused packets of a burst of 10, the packet bucket has been
/// charged 3 times, and once the bytes have refilled 7 more packets pass.
#[test]
fn byte_refused_packets_do_not_use_up_the_packet_allowance() {
    if skip_unless_root("byte_refused_packets_do_not_use_up_the_packet_allowance") {
        return;
    }
    let test = ProgTest::new();
    let id = test.limit(
        "tcp/7002",
        &LimitSpec {
            rate: Some(1),
            bytes: Some(1),
            burst: Some(10),
            ..Default::default()
        },
    );
    // Packets: 10, never refilled. Bytes: 5 ms a byte (300 ms a 60-byte
    // frame), 600 ms of tolerance: three frames at once conform, a fourth
    // only 300 ms later (the margin a loaded machine has to run the seven
    // cases below), and frames 500 ms apart always do.
    let ms = 1_000_000 * filter_common::TICKS_PER_NS;
    test.patch_rule(id, |rule| {
        rule.packet_interval = SLOW;
        rule.packet_tolerance = 9 * SLOW;
        rule.byte_interval = 5 * ms;
        rule.byte_tolerance = 600 * ms;
    });
    let src = "198.18.72.1";
    let frame = Frame::ipv4(frames::tcp4(ip4(src), 7002).trailer(vec![0; 6])).build();
    assert_eq!(frame.len(), 60);
    let mut cases = Vec::new();
    for i in 1..=3 {
        cases.push(Case::new(
            format!("{} ms of bytes", 300 * i),
            frame.clone(),
            PASS,
        ));
    }
    for _ in 0..4 {
        cases.push(Case::new("over the byte limit", frame.clone(), RATELIMIT));
    }
    let start_ns = filter_ctl::clock::monotonic_ns();
    let mut model = test.model();
    run_cases(&test, &mut model, &cases);

    let mut key = [0u8; 16];
    key[10] = 0xff;
    key[11] = 0xff;
    key[12..].copy_from_slice(&ip4(src));
    let kernel = test.bucket(id, key).expect("the kernel has a bucket");
    // Times differ by the microseconds between kernel and user space; the
    // number of packet intervals charged must not.
    let charged = |tat: u64| (tat - start_ns * filter_common::TICKS_PER_NS + SLOW / 2) / SLOW;
    assert_eq!(
        charged(kernel.packet_tat),
        3,
        "packet intervals charged for 3 passed and 4 byte-refused packets: {kernel:?}"
    );
    assert_eq!(charged(model.buckets[&(id, key)].packet_tat), 3);

    std::thread::sleep(Duration::from_secs(1));
    let mut after_refill = vec![PASS; 7];
    after_refill.extend([RATELIMIT, RATELIMIT]);
    for (i, reason) in after_refill.into_iter().enumerate() {
        run_cases(
            &test,
            &mut model,
            &[Case::new(
                format!("bytes refilled, packet {} of the burst", 8 + i),
                frame.clone(),
                reason,
            )],
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// With the coarse clock the limiter decides the same way on a frozen
/// bucket (a burst, then drops), and a real-time bucket still refills: the
/// clock choice trades precision within a tick, not the rule.
#[test]
fn coarse_clock_limits_the_same() {
    if skip_unless_root("coarse_clock_limits_the_same") {
        return;
    }
    let test = ProgTest::new();
    filter_ctl::maps::rules::set_clock(&test.filter(), filter_common::CLOCK_COARSE)
        .expect("setting the coarse clock");
    let id = test.limit(
        "udp/7003",
        &LimitSpec {
            rate: Some(1),
            burst: Some(3),
            ..Default::default()
        },
    );
    freeze(&test, id, 3);
    let src = "198.18.73.1";
    run_table(
        &test,
        &[
            Case::new("burst 1", udp4(src, 7003), PASS),
            Case::new("burst 2", udp4(src, 7003), PASS),
            Case::new("burst 3", udp4(src, 7003), PASS),
            Case::new("over", udp4(src, 7003), RATELIMIT),
        ],
    );
    // 2 packets a second, burst 1: a second packet within 500 ms is over
    // (a wide margin for a loaded machine between the two runs), and after
    // a pause of 600 ms (ticks of at most 4 ms) the bucket has refilled.
    let live = test.limit(
        "udp/7004",
        &LimitSpec {
            rate: Some(2),
            burst: Some(1),
            ..Default::default()
        },
    );
    assert_ne!(live, id);
    let frame = udp4(src, 7004);
    assert_eq!(test.run(&frame), XDP_PASS_ACTION, "first packet passes");
    assert_eq!(
        test.run(&frame),
        XDP_DROP_ACTION,
        "second, at once, is over"
    );
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(test.run(&frame), XDP_PASS_ACTION, "refilled after 600 ms");
}

/// `CLOCK_MONOTONIC_COARSE` in ns: the time of the last tick.
fn coarse_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-parameter.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &raw mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// The time the program charged a first packet at, from its bucket: a fresh
/// bucket's arrival time is `now + interval`, in ticks of `TICKS_PER_NS`.
fn charged_at(test: &ProgTest, id: u32, src: &str, port: u16, interval: u64) -> u64 {
    assert_eq!(
        test.run(&udp4(src, port)),
        XDP_PASS_ACTION,
        "first packet passes"
    );
    let mut key = [0u8; 16];
    key[10] = 0xff;
    key[11] = 0xff;
    key[12..].copy_from_slice(&ip4(src));
    let bucket = test.bucket(id, key).expect("the program made a bucket");
    (bucket.packet_tat - interval) / filter_common::TICKS_PER_NS
}

/// Whether a rule charged by the tick clock: a multiple of the tick (ticks
/// sit on multiples of it in `CLOCK_MONOTONIC`), within a tick of the coarse
/// clock read around the packet.
fn charged_by_the_tick(test: &ProgTest, id: u32, src: &str, port: u16, interval: u64) -> bool {
    let tick = filter_ctl::clock::tick_ns().expect("a tick length");
    let before = coarse_now_ns();
    let charged = charged_at(test, id, src, port, interval);
    let after = coarse_now_ns();
    assert!(
        charged + tick > before && charged <= after + tick,
        "charged at {charged}, coarse clock {before}..{after}, tick {tick}"
    );
    charged.is_multiple_of(tick)
}

/// Which clock the limiter reads is visible in a fresh bucket: the precise
/// clock is past the test's own earlier reading, the tick clock sits on a
/// multiple of the tick, next to the coarse clock.
#[test]
fn limit_clock_selects_the_clock_read() {
    if skip_unless_root("limit_clock_selects_the_clock_read") {
        return;
    }
    let test = ProgTest::new();
    let id = test.limit(
        "udp/7005",
        &LimitSpec {
            rate: Some(1),
            burst: Some(1),
            ..Default::default()
        },
    );
    freeze(&test, id, 1);
    // Precise: read after the test's own precise clock reading.
    filter_ctl::maps::rules::set_clock(&test.filter(), filter_common::CLOCK_PRECISE)
        .expect("setting the precise clock");
    let before = filter_ctl::clock::monotonic_ns();
    let precise = charged_at(&test, id, "198.18.74.1", 7005, SLOW);
    assert!(precise >= before, "precise clock {precise} before {before}");
    let tick = filter_ctl::clock::tick_ns().expect("a tick length");
    assert!(
        !precise.is_multiple_of(tick),
        "the precise clock is not on a tick"
    );
    // Coarse: the tick.
    filter_ctl::maps::rules::set_clock(&test.filter(), filter_common::CLOCK_COARSE)
        .expect("setting the coarse clock");
    assert!(
        charged_by_the_tick(&test, id, "198.18.74.10", 7005, SLOW),
        "the coarse clock reads the tick"
    );
}

/// By default each rule gets the tick clock only when its burst covers one
/// tick of its rate (where the tick changes nothing a source can see), and
/// the precise clock otherwise; the limits hold either way.
#[test]
fn the_default_clock_is_chosen_per_rule() {
    if skip_unless_root("the_default_clock_is_chosen_per_rule") {
        return;
    }
    let test = ProgTest::new();
    // 1 packet a second, burst 5: a tick's worth (4 ms at most) fits the burst.
    let slow = test.limit(
        "udp/7006",
        &LimitSpec {
            rate: Some(1),
            burst: Some(5),
            ..Default::default()
        },
    );
    // 1,000,000 packets a second, burst 1: a tick would cut it to one packet a tick.
    let fast = test.limit(
        "udp/7007",
        &LimitSpec {
            rate: Some(1_000_000),
            burst: Some(1),
            ..Default::default()
        },
    );
    let second = filter_common::TICKS_PER_SEC;
    assert!(
        charged_by_the_tick(&test, slow, "198.18.75.1", 7006, second),
        "a rule whose burst covers a tick reads the tick"
    );
    let before = filter_ctl::clock::monotonic_ns();
    let interval = second / 1_000_000;
    let charged = charged_at(&test, fast, "198.18.75.2", 7007, interval);
    assert!(
        charged >= before,
        "a fast rule with a small burst reads the precise clock ({charged} before {before})"
    );
    // And the slow rule limits as before: 4 more pass, the 6th is over.
    let frame = udp4("198.18.75.1", 7006);
    for i in 2..=5 {
        assert_eq!(test.run(&frame), XDP_PASS_ACTION, "packet {i} of the burst");
    }
    assert_eq!(test.run(&frame), XDP_DROP_ACTION, "over the burst");
}

/// More sources than the tracking table holds: new sources take slots of
/// old ones, and `stats` reports inserts, live buckets and evictions
/// consistently (live = inserts - evictions, never a walk of the table).
#[test]
fn tracking_table_evictions_are_reported() {
    if skip_unless_root("tracking_table_evictions_are_reported") {
        return;
    }
    let capacity = 64;
    let test = ProgTest::with_capacities(&filter_ctl::maps::loader::Capacities {
        list: 64,
        buckets: capacity,
    });
    test.limit(
        "default",
        &LimitSpec {
            rate: Some(1000),
            ..Default::default()
        },
    );
    let sources = 300u32;
    for i in 0..sources {
        let src = format!("198.18.{}.{}", 100 + i / 250, 1 + i % 250);
        assert_eq!(test.run(&icmp4(&src)), XDP_PASS_ACTION, "{src} passes");
    }
    let tables = test.reader().stats().expect("reading stats").tables;
    let (inserts, live, evictions) = (
        tables["bucket_inserts"],
        tables["buckets_live"],
        tables["bucket_evictions"],
    );
    assert_eq!(
        inserts,
        u64::from(sources),
        "one bucket per source: {tables:?}"
    );
    // 300 sources over 32 sets of two: every set is full but with odds
    // of about 1e-10.
    assert_eq!(
        live,
        u64::from(capacity),
        "a full table holds its capacity: {tables:?}"
    );
    let used = filter_ctl::maps::buckets::Buckets::open(&test.reader())
        .expect("opening BUCKETS")
        .used()
        .expect("reading BUCKETS")
        .len();
    assert_eq!(used as u64, live, "the walk agrees with the counters");
    assert_eq!(evictions, inserts - live, "{tables:?}");
    assert!(evictions >= u64::from(sources - capacity), "{tables:?}");
}

/// The claim order in one set (a table of 2 slots: every source shares the
/// set): a new source takes the empty slot, else the slot whose bucket is
/// nearest to full (the earlier theoretical arrival time); a source keeps
/// its bucket while it owns a slot, and starts from a fresh one when it
/// comes back after losing it.
#[test]
fn new_sources_claim_the_slot_nearest_to_full() {
    if skip_unless_root("new_sources_claim_the_slot_nearest_to_full") {
        return;
    }
    let test = ProgTest::with_capacities(&filter_ctl::maps::loader::Capacities {
        list: 64,
        buckets: 2,
    });
    let id = test.limit(
        "udp/7010",
        &LimitSpec {
            rate: Some(1),
            ..Default::default()
        },
    );
    freeze(&test, id, 1);
    // The order of eviction follows the buckets' arrival times: the precise
    // clock keeps them distinct (with the tick clock, sources seen within one
    // tick tie, and the first slot of the set goes).
    filter_ctl::maps::rules::set_clock(&test.filter(), filter_common::CLOCK_PRECISE)
        .expect("setting the precise clock");
    let (a, b, c) = ("198.18.80.1", "198.18.80.2", "198.18.80.3");
    let tables = || test.reader().stats().expect("reading stats").tables;
    let counts = || {
        let t = tables();
        (
            t["bucket_inserts"],
            t["bucket_evictions"],
            t["buckets_live"],
        )
    };
    let limited = |src: &str, what: &str| {
        let frame = udp4(src, 7010);
        assert_eq!(
            test.run(&frame),
            XDP_PASS_ACTION,
            "{what}: {src}'s first passes"
        );
        assert_eq!(
            test.run(&frame),
            XDP_DROP_ACTION,
            "{what}: {src}'s second is over"
        );
    };
    let held = |src: &str| test.bucket(id, mapped(src)).is_some();
    // A, then B: each owns a slot and is limited. Each bucket's arrival
    // time is its first packet's + 1000 s (over-limit packets charge nothing).
    limited(a, "empty table");
    limited(b, "one slot free");
    assert_eq!(counts(), (2, 0, 2));
    // C takes A's slot (A's bucket refills first), not B's.
    limited(c, "full set");
    assert_eq!(
        test.run(&udp4(b, 7010)),
        XDP_DROP_ACTION,
        "B kept its slot and bucket"
    );
    assert_eq!(counts(), (3, 1, 2));
    assert!(!held(a) && held(b) && held(c));
    // A comes back to a fresh bucket, in B's slot (now the earlier).
    limited(a, "evicted before");
    assert_eq!(
        test.run(&udp4(c, 7010)),
        XDP_DROP_ACTION,
        "C is still limited"
    );
    assert_eq!(counts(), (4, 2, 2));
    assert!(held(a) && !held(b) && held(c));
}

/// The rate-limit key of an IPv4 source: IPv4-mapped.
fn mapped(v4: &str) -> [u8; 16] {
    std::net::Ipv4Addr::from(ip4(v4)).to_ipv6_mapped().octets()
}

/// More sources than slots (4 slots, 16 sources), each sending in turn:
/// every source is limited while it owns a slot, whichever slot it gets.
#[test]
fn more_sources_than_slots_are_each_limited_in_turn() {
    if skip_unless_root("more_sources_than_slots_are_each_limited_in_turn") {
        return;
    }
    let test = ProgTest::with_capacities(&filter_ctl::maps::loader::Capacities {
        list: 64,
        buckets: 4,
    });
    let id = test.limit(
        "udp/7011",
        &LimitSpec {
            rate: Some(1),
            burst: Some(2),
            ..Default::default()
        },
    );
    freeze(&test, id, 2);
    let sources = 16u64;
    for i in 0..sources {
        let frame = udp4(&format!("198.18.81.{}", i + 1), 7011);
        assert_eq!(test.run(&frame), XDP_PASS_ACTION, "source {i}: 1st passes");
        assert_eq!(test.run(&frame), XDP_PASS_ACTION, "source {i}: 2nd passes");
        assert_eq!(test.run(&frame), XDP_DROP_ACTION, "source {i}: 3rd is over");
    }
    let t = test.reader().stats().expect("reading stats").tables;
    assert_eq!(t["bucket_inserts"], sources, "{t:?}");
    assert!(t["buckets_live"] <= 4, "{t:?}");
    assert_eq!(t["bucket_evictions"], sources - t["buckets_live"], "{t:?}");
    assert!(t["bucket_evictions"] >= sources - 4, "{t:?}");
    let counters = test.rule_counters(id);
    assert_eq!(
        (counters.passed.packets, counters.dropped.packets),
        (2 * sources, sources)
    );
}
