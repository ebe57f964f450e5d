//! The `EVENTS` ring buffer through `BPF_PROG_TEST_RUN`
//! (`filter-ebpf/src/events.rs`): every record starts with an `EventHeader`
//! whose kind and length describe it; an automatic block writes exactly one
//! record with the block's details.

use std::time::Duration;

use aya::maps::{MapData, RingBuf};
use filter_common::{
    AutoBlockEvent, DropEvent, EVENT_AUTOBLOCK, EVENT_DROP, NO_RULE, maps, reason,
    reason::{AUTOBLOCK, BLOCKLIST, PASS, RATELIMIT},
    table_stat, xdp_action,
};
use filter_ctl::{
    maps::{
        events::{Event, decode},
        sampling::{SampleRate, Sampling},
    },
    spec::rule::{AutoblockSpec, LimitSpec},
};
use filter_tests::{
    flood::pin_thread_to_cpu,
    frames::{ip4, ip6},
    progtest::{Case, ProgTest, TEST_RUN_IFINDEX, run_table, skip_unless_root},
    rules::{freeze, udp4, udp6},
};

/// Every record waiting in the ring buffer, as bytes.
fn drain(ring: &mut RingBuf<MapData>) -> Vec<Vec<u8>> {
    let mut records = Vec::new();
    while let Some(item) = ring.next() {
        records.push(item.to_vec());
    }
    records
}

/// The automatic-block event in `record`, after checking that the header
/// describes the record exactly.
fn autoblock_event(record: &[u8]) -> AutoBlockEvent {
    assert_eq!(
        record.len(),
        size_of::<AutoBlockEvent>(),
        "record length in the ring buffer"
    );
    match decode(record) {
        Event::AutoBlock(event) => {
            assert_eq!(event.header.kind, EVENT_AUTOBLOCK);
            assert_eq!(event.header.len as usize, size_of::<AutoBlockEvent>());
            event
        }
        other => panic!("not an automatic block: {other:?}"),
    }
}

#[test]
fn an_autoblock_writes_one_event_with_its_header() {
    if skip_unless_root("an_autoblock_writes_one_event_with_its_header") {
        return;
    }
    let test = ProgTest::new();
    let block_for = Duration::from_hours(1);
    let id = test.limit(
        "udp/6000",
        &LimitSpec {
            rate: Some(1),
            burst: Some(1),
            autoblock: Some(AutoblockSpec {
                after: 2,
                window: Duration::from_hours(1),
                block_for,
            }),
            ..Default::default()
        },
    );
    freeze(&test, id, 1);
    let reader = test.reader();
    let mut ring = RingBuf::try_from(reader.map(maps::EVENTS).expect("EVENTS map"))
        .expect("EVENTS is a ring buffer");
    assert!(drain(&mut ring).is_empty(), "no event before any packet");

    let (v4, v6) = ("198.18.60.1", "2001:db8:60::1");
    let before_ns = filter_ctl::clock::monotonic_ns();
    run_table(
        &test,
        &[
            Case::new("within the burst", udp4(v4, 6000), PASS),
            Case::new("over (1)", udp4(v4, 6000), RATELIMIT),
            Case::new("over (2): blocked", udp4(v4, 6000), RATELIMIT),
        ],
    );
    let after_ns = filter_ctl::clock::monotonic_ns();
    let records = drain(&mut ring);
    assert_eq!(records.len(), 1, "one block, one record: {records:?}");
    let event = autoblock_event(&records[0]);
    let mut mapped = [0u8; 16];
    mapped[10] = 0xff;
    mapped[11] = 0xff;
    mapped[12..].copy_from_slice(&ip4(v4));
    assert_eq!(event.source, mapped);
    assert_eq!(event.rule, id);
    assert_eq!(event.over_limit, 2);
    assert!(
        (before_ns..=after_ns).contains(&event.blocked_at_ns),
        "blocked at {} outside the run [{before_ns}, {after_ns}]",
        event.blocked_at_ns
    );
    assert_eq!(
        event.expires_at_ns - event.blocked_at_ns,
        u64::try_from(block_for.as_nanos()).expect("an hour fits"),
    );

    run_table(
        &test,
        &[
            Case::new("autoblocked: no new event", udp4(v4, 6000), AUTOBLOCK),
            Case::new("IPv6 within the burst", udp6(v6, 6000), PASS),
            Case::new("IPv6 over (1)", udp6(v6, 6000), RATELIMIT),
            Case::new("IPv6 over (2): blocked", udp6(v6, 6000), RATELIMIT),
        ],
    );
    let records = drain(&mut ring);
    assert_eq!(
        records.len(),
        1,
        "one more block, one more record: {records:?}"
    );
    let event = autoblock_event(&records[0]);
    // The aggregated source: the /64 of the IPv6 address.
    let mut prefix = ip6(v6);
    prefix[8..].fill(0);
    assert_eq!(event.source, prefix);
    assert_eq!(event.rule, id);

    let tables = reader.stats().expect("reading stats").tables;
    assert_eq!(tables["autoblocks"], 2, "{tables:?}");
    assert_eq!(tables["events_lost"], 0, "{tables:?}");
}

/// The drop event in `record`, after checking that the header describes it.
fn drop_event(record: &[u8]) -> DropEvent {
    assert_eq!(record.len(), size_of::<DropEvent>());
    match decode(record) {
        Event::Drop(event) => {
            assert_eq!(event.header.kind, EVENT_DROP);
            assert_eq!(event.header.len as usize, size_of::<DropEvent>());
            event
        }
        other => panic!("not a drop event: {other:?}"),
    }
}

fn sampling(rates: &[&str], cap: u32) -> Sampling {
    let rates: Vec<SampleRate> = rates.iter().map(|r| r.parse().expect("a rate")).collect();
    Sampling::with(&rates, cap)
}

/// With 1-in-1 sampling every drop of the reason is an event carrying the
/// packet's details; with 1-in-10, one drop in ten on a CPU (its first, then
/// every tenth), standing for ten; passed packets and reasons sampled at 0
/// write none.
#[test]
fn drops_are_sampled_one_in_n_with_their_details() {
    if skip_unless_root("drops_are_sampled_one_in_n_with_their_details") {
        return;
    }
    // One CPU: the program counts drops per CPU.
    pin_thread_to_cpu(0).expect("pinning the test thread");
    let test = ProgTest::new();
    let reader = test.reader();
    let mut ring = RingBuf::try_from(reader.map(maps::EVENTS).expect("EVENTS map"))
        .expect("EVENTS is a ring buffer");
    let (bad, good) = ("198.18.61.1", "198.18.61.2");
    test.block(&[bad]);
    let mut none = Sampling::with(&[], 0);
    none.one_in = [0; reason::COUNT as usize];
    test.filter().set_sampling(&none).expect("sampling off");
    for _ in 0..5 {
        assert_eq!(test.run(&udp4(bad, 7000)), xdp_action::DROP);
    }
    assert!(drain(&mut ring).is_empty(), "sampling off: no events");

    test.filter()
        .set_sampling(&sampling(&["blocklist=1"], 0))
        .expect("setting sampling");
    for _ in 0..25 {
        assert_eq!(test.run(&udp4(bad, 7000)), xdp_action::DROP);
        assert_eq!(test.run(&udp4(good, 7000)), xdp_action::PASS);
    }
    let events: Vec<DropEvent> = drain(&mut ring).iter().map(|r| drop_event(r)).collect();
    assert_eq!(events.len(), 25, "one event per drop, none per pass");
    let mut mapped = [0u8; 16];
    mapped[10] = 0xff;
    mapped[11] = 0xff;
    mapped[12..].copy_from_slice(&ip4(bad));
    let frame_len = u32::try_from(udp4(bad, 7000).len()).expect("small frame");
    for event in &events {
        assert_eq!(event.source, mapped);
        assert_eq!(event.family, 4);
        assert_eq!(u32::from(event.reason), BLOCKLIST);
        assert_eq!(event.protocol, 17);
        assert_eq!(event.dst_port, 7000);
        assert_eq!(event.rule, NO_RULE);
        assert_eq!(event.weight, 1);
        assert_eq!(event.len, frame_len);
        assert_eq!(event.ifindex, TEST_RUN_IFINDEX);
    }

    // A new rate takes effect at the next drop: 1 in 1,000 samples its
    // first drop and then counts down 999, which setting 1 in 10 cancels.
    test.filter()
        .set_sampling(&sampling(&["blocklist=1000"], 0))
        .expect("setting sampling");
    drain(&mut ring);
    assert_eq!(test.run(&udp4(bad, 7000)), xdp_action::DROP);
    let events: Vec<DropEvent> = drain(&mut ring).iter().map(|r| drop_event(r)).collect();
    assert_eq!(events.len(), 1, "the first drop at 1 in 1,000 is sampled");
    assert_eq!(events[0].weight, 1000);
    test.filter()
        .set_sampling(&sampling(&["blocklist=10"], 0))
        .expect("setting sampling");
    let before = test.reason_packets_per_cpu(BLOCKLIST)[0];
    assert_eq!(test.run(&udp4(bad, 7000)), xdp_action::DROP);
    let first: Vec<DropEvent> = drain(&mut ring).iter().map(|r| drop_event(r)).collect();
    assert_eq!(first.len(), 1, "the new rate samples the next drop");
    for _ in 1..100 {
        assert_eq!(test.run(&udp4(bad, 7000)), xdp_action::DROP);
    }
    let after = test.reason_packets_per_cpu(BLOCKLIST)[0];
    assert_eq!(after - before, 100, "the drops ran on CPU 0");
    let rest: Vec<DropEvent> = drain(&mut ring).iter().map(|r| drop_event(r)).collect();
    // Each event starts the CPU's count over: drops 1, 11, ..., 91.
    assert_eq!(first.len() + rest.len(), 10, "1 in 10 of 100 drops");
    assert!(first.iter().chain(&rest).all(|e| e.weight == 10));

    // The per-CPU cap: at most 3 events a second.
    test.filter()
        .set_sampling(&sampling(&["blocklist=1"], 3))
        .expect("setting sampling");
    drain(&mut ring);
    let capped_before = reader
        .table_stat(table_stat::DROP_EVENTS_CAPPED)
        .expect("stat");
    for _ in 0..20 {
        assert_eq!(test.run(&udp4(bad, 7000)), xdp_action::DROP);
    }
    let events = drain(&mut ring);
    assert!(
        events.len() <= 3 * 2,
        "{} events past a cap of 3/s",
        events.len()
    );
    let capped = reader
        .table_stat(table_stat::DROP_EVENTS_CAPPED)
        .expect("stat")
        - capped_before;
    assert_eq!(
        events.len() as u64 + capped,
        20,
        "every sampled drop is sent or counted as capped"
    );
}
