//! The `EVENTS` ring buffer through `BPF_PROG_TEST_RUN`
//! (`filter-ebpf/src/events.rs`): every record starts with an `EventHeader`
//! whose kind and length describe it; an automatic block writes exactly one
//! record with the block's details.

use std::time::Duration;

use aya::maps::{MapData, RingBuf};
use filter_common::{
    AutoBlockEvent, EVENT_AUTOBLOCK, EventHeader, maps,
    reason::{AUTOBLOCK, PASS, RATELIMIT},
};
use filter_ctl::spec::rule::{AutoblockSpec, LimitSpec};
use filter_tests::{
    frames::{ip4, ip6},
    progtest::{Case, ProgTest, run_table, skip_unless_root},
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

/// The automatic-block event in `record`, after checking
/// that the header describes the record.
fn autoblock_event(record: &[u8]) -> AutoBlockEvent {
    assert!(
        record.len() >= size_of::<EventHeader>(),
        "a {}-byte record has no header",
        record.len()
    );
    // SAFETY: at least a header's bytes (checked); read unaligned.
    let header: EventHeader = unsafe { std::ptr::read_unaligned(record.as_ptr().cast()) };
    assert_eq!(header.kind, EVENT_AUTOBLOCK, "record kind: {header:?}");
    assert_eq!(
        header.len as usize,
        size_of::<AutoBlockEvent>(),
        "record length in the header: {header:?}"
    );
    assert_eq!(
        record.len(),
        size_of::<AutoBlockEvent>(),
        "record length in the ring buffer"
    );
    // SAFETY: an AutoBlockEvent's bytes (checked length); read unaligned.
    let event: AutoBlockEvent = unsafe { std::ptr::read_unaligned(record.as_ptr().cast()) };
    assert_eq!(event.header, header);
    event
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
