//! The blocklist summary (`BLOCK_SUMMARY`, `filter_common::summary`)
//! through `BPF_PROG_TEST_RUN`: the program looks in a trie only where the
//! summary marks the source, every writer marks what it writes (the
//! operator's edits, the program's automatic blocks), prefixes of every
//! width are marked where they cover, and a rebuild drops stale marks
//! without losing a needed one.

use std::{net::IpAddr, time::Duration};

use aya::maps::{MapData, lpm_trie::Key, lpm_trie::LpmTrie};
use filter_common::{
    Ipv4Bytes, Ipv6Bytes, ListEntry, ORIGIN_CLI, maps,
    reason::{AUTOBLOCK, BLOCKLIST, PASS, RATELIMIT},
    xdp_action,
};
use filter_ctl::{
    maps::{
        ListKind,
        hosts::{Placed, table_key},
        loader::Capacities,
        summary::SummaryUse,
    },
    spec::{
        cidr::Cidr,
        rule::{AutoblockSpec, LimitSpec},
    },
};
use filter_tests::{
    progtest::{Case, ProgTest, run_table, skip_unless_root, small_capacities},
    rules::{freeze, udp4, udp6},
};

fn ip(text: &str) -> IpAddr {
    text.parse().expect("an address")
}

fn cidrs(texts: &[&str]) -> Vec<Cidr> {
    texts.iter().map(|t| t.parse().expect("a prefix")).collect()
}

/// The generation the program reads.
fn generation(test: &ProgTest) -> u32 {
    test.reader()
        .config()
        .expect("reading CONFIG")
        .summary_generation
}

/// Whether generation `generation` of the summary marks `addr`.
fn marks(test: &ProgTest, generation: u32, addr: &str) -> bool {
    test.reader()
        .summary()
        .and_then(|s| s.marks(generation, ip(addr)))
        .expect("reading BLOCK_SUMMARY")
}

/// Whether generation `generation` of the host table's summary marks `addr`.
fn marks_table(test: &ProgTest, generation: u32, addr: &str) -> bool {
    test.reader()
        .summary()
        .and_then(|s| s.marks_table(generation, ip(addr)))
        .expect("reading BLOCK_SUMMARY")
}

fn in_use(test: &ProgTest) -> SummaryUse {
    let reader = test.reader();
    let generation = reader.config().expect("CONFIG").summary_generation;
    reader
        .summary()
        .and_then(|s| s.in_use(generation))
        .expect("reading BLOCK_SUMMARY")
}

/// The sweep of `test`'s filter finds a needed mark missing, rebuilds the
/// summary, and `source` is marked afterwards, with nothing lacking.
fn repairs_the_missing_mark(test: &ProgTest, source: &str) {
    let sweep = test.reader().sweep_scan().expect("sweep scan");
    assert!(sweep.summary_lacking, "{sweep:?}");
    test.filter()
        .rebuild_stale_summary(&sweep)
        .expect("rebuilding")
        .expect("a rebuild");
    assert!(marks(test, generation(test), source));
    assert!(
        !test.reader().sweep_scan().expect("scan").summary_lacking,
        "repaired"
    );
}

/// Blocks `{a}.{b}.{c}.{last}` (a host or a prefix) in each of 2,048
/// consecutive /24s from 100.64.0.0 (list entries only: no packet is sent
/// from or to them), and returns them.
fn block_one_in_each_of_2048_slash_24s(test: &ProgTest, last: &str) -> Vec<Cidr> {
    let cidrs = one_in_each_of_2048_slash_24s(last);
    test.filter()
        .list_insert(
            ListKind::Block,
            &cidrs,
            None,
            filter_ctl::maps::lists::Merge::Replace,
        )
        .expect("blocking one entry in each of 2,048 /24s");
    cidrs
}

/// `last` (a host byte, or a host byte and a prefix length) in each of
/// 2,048 consecutive /24s.
fn one_in_each_of_2048_slash_24s(last: &str) -> Vec<Cidr> {
    (0..2048_u32)
        .map(|i| {
            let [a, b, c, _] = (0x6440_0000_u32 + (i << 8)).to_be_bytes();
            format!("{a}.{b}.{c}.{last}").parse().expect("a prefix")
        })
        .collect()
}

fn v6_bytes(text: &str) -> Ipv6Bytes {
    text.parse::<std::net::Ipv6Addr>()
        .expect("an IPv6 address")
        .octets()
}

/// A trie entry written without its mark is never looked up: the program
/// trusts the summary, which is why every writer marks before it writes;
/// the controller's sweep finds the missing mark and rebuilds.
#[test]
fn an_unmarked_trie_entry_is_not_looked_up() {
    if skip_unless_root("an_unmarked_trie_entry_is_not_looked_up") {
        return;
    }
    let test = ProgTest::new();
    let filter = test.filter();
    let mut v4: LpmTrie<MapData, Ipv4Bytes, ListEntry> =
        filter.lpm(maps::BLOCK_V4).expect("BLOCK_V4 map");
    let entry = ListEntry {
        prefix_len: 25,
        ..ListEntry::default()
    };
    v4.insert(&Key::new(25, [198, 18, 200, 0]), entry, 0)
        .expect("writing BLOCK_V4 by hand");
    drop(filter);
    assert!(!marks(&test, generation(&test), "198.18.200.1"));
    // Not a table case: the reference model, which has no summary, would
    // find the entry.
    assert_eq!(
        test.run(&udp4("198.18.200.1", 53)),
        xdp_action::PASS,
        "in an unmarked /25: not looked up"
    );

    // The sweep finds the mark missing and rebuilds.
    repairs_the_missing_mark(&test, "198.18.200.1");
    run_table(
        &test,
        &[
            Case::new("marked: found", udp4("198.18.200.1", 53), BLOCKLIST),
            Case::new(
                "the /24's other half: looked up, not covered",
                udp4("198.18.200.200", 53),
                PASS,
            ),
        ],
    );
}

/// The IPv6 side of the sweep's check: an active IPv6 trie entry without
/// its mark is found lacking and repaired; an expired one without its mark
/// is not (it blocks nothing, the sweep deletes it).
#[test]
fn an_unmarked_ipv6_entry_is_found_and_an_expired_one_is_not() {
    if skip_unless_root("an_unmarked_ipv6_entry_is_found_and_an_expired_one_is_not") {
        return;
    }
    let test = ProgTest::new();
    let filter = test.filter();
    let mut v6: LpmTrie<MapData, Ipv6Bytes, ListEntry> =
        filter.lpm(maps::BLOCK_V6).expect("BLOCK_V6 map");
    let expired = ListEntry {
        prefix_len: 56,
        // 1 ns after boot: long past (0 would mean permanent).
        expires_at_ns: 1,
        ..ListEntry::default()
    };
    v6.insert(&Key::new(56, v6_bytes("2001:db8:aa00::")), expired, 0)
        .expect("writing an expired BLOCK_V6 entry by hand");
    assert!(!marks(&test, generation(&test), "2001:db8:aa00::1"));
    let sweep = test.reader().sweep_scan().expect("sweep scan");
    assert!(
        !sweep.summary_lacking,
        "an expired entry needs no mark: {sweep:?}"
    );

    let active = ListEntry {
        prefix_len: 56,
        ..ListEntry::default()
    };
    v6.insert(&Key::new(56, v6_bytes("2001:db8:bb00::")), active, 0)
        .expect("writing BLOCK_V6 by hand");
    drop(filter);
    assert!(!marks(&test, generation(&test), "2001:db8:bb00::1"));
    assert_eq!(
        test.run(&udp6("2001:db8:bb00::1", 53)),
        xdp_action::PASS,
        "in an unmarked /56: not looked up"
    );
    repairs_the_missing_mark(&test, "2001:db8:bb00::1");
    run_table(
        &test,
        &[
            Case::new("marked: found", udp6("2001:db8:bb00::1", 53), BLOCKLIST),
            Case::new(
                "the expired /56: no longer matches",
                udp6("2001:db8:aa00::1", 53),
                PASS,
            ),
        ],
    );
}

/// The host table's summary: what the controller places is marked first
/// (an IPv4 host's /24, an IPv6 host's /48), apart from the tries'; a table
/// entry placed without its mark is never probed (the program trusts the
/// summary); the sweep finds the missing mark and rebuilds.
#[test]
fn an_unmarked_table_entry_is_not_probed() {
    if skip_unless_root("an_unmarked_table_entry_is_not_probed") {
        return;
    }
    let test = ProgTest::new();
    test.block(&[
        "198.18.10.1",
        "2001:db8:10::1",
        "2001:db8:11::/48",
        "2001:db8:13:1::/64",
    ]);
    let before = generation(&test);
    for (what, addr) in [
        ("the IPv4 host's /24", "198.18.10.200"),
        ("the IPv6 host's /48", "2001:db8:10:ffff::1"),
        ("the IPv6 /48", "2001:db8:11:1::1"),
        ("the IPv6 /64's /48", "2001:db8:13:2::1"),
    ] {
        assert!(marks_table(&test, before, addr), "{what}: {addr}");
        assert!(!marks(&test, before, addr), "{what}: not the tries'");
    }
    assert!(!marks_table(&test, before, "198.18.11.1"), "the next /24");
    assert!(
        !marks_table(&test, before, "2001:db8:12::1"),
        "the next /48 (of the same /40)"
    );
    let sweep = test.reader().sweep_scan().expect("sweep scan");
    assert!(
        !sweep.summary_lacking && !sweep.summary_stale,
        "the controller marked what it placed: {sweep:?}"
    );

    // Placed by hand, without marks (the controller's counts of table
    // entries are already above zero).
    let filter = test.filter();
    let table = filter.host_table().expect("BLOCK_HOSTS");
    for cidr in ["198.18.20.1", "2001:db8:20::1"] {
        let key = table_key(&cidr.parse().expect("a prefix")).expect("a table key");
        let entry = ListEntry {
            prefix_len: key.prefix_len,
            ..ListEntry::default()
        };
        assert_eq!(
            table.place_unmarked(&key, entry).expect("placing"),
            Placed::New
        );
    }
    drop(filter);
    // Not table cases: the reference model, which has no summary, would
    // find the entries.
    for (what, frame) in [
        ("unmarked IPv4 host", udp4("198.18.20.1", 53)),
        ("unmarked IPv6 host", udp6("2001:db8:20::1", 53)),
    ] {
        assert_eq!(test.run(&frame), xdp_action::PASS, "{what}: not probed");
    }

    // The sweep finds the marks missing and rebuilds.
    let sweep = test.reader().sweep_scan().expect("sweep scan");
    assert!(sweep.summary_lacking, "{sweep:?}");
    let rebuilt = test
        .filter()
        .rebuild_stale_summary(&sweep)
        .expect("rebuilding")
        .expect("a rebuild");
    assert_eq!((rebuilt.table_v4, rebuilt.table_v6), (2, 4), "{rebuilt:?}");
    assert_eq!((rebuilt.bits_v4, rebuilt.bits_v6), (0, 0), "{rebuilt:?}");
    assert!(
        !test.reader().sweep_scan().expect("scan").summary_lacking,
        "repaired"
    );
    run_table(
        &test,
        &[
            Case::new(
                "IPv4 host, marked: found",
                udp4("198.18.20.1", 53),
                BLOCKLIST,
            ),
            Case::new(
                "IPv6 host, marked: found",
                udp6("2001:db8:20::1", 53),
                BLOCKLIST,
            ),
            Case::new(
                "its /24's other hosts: probed, not held",
                udp4("198.18.20.2", 53),
                PASS,
            ),
            Case::new("the IPv6 /48", udp6("2001:db8:11:ff::1", 53), BLOCKLIST),
            Case::new("the IPv6 /64", udp6("2001:db8:13:1::9", 53), BLOCKLIST),
            Case::new(
                "the /64's /48 beside it: probed, not held",
                udp6("2001:db8:13:2::9", 53),
                PASS,
            ),
            Case::new("the first IPv4 host", udp4("198.18.10.1", 53), BLOCKLIST),
        ],
    );
}

/// Removed hosts leave stale marks in the host table's summary until they
/// outnumber the needed ones (and a thousand); the sweep then rebuilds it.
#[test]
fn many_removed_hosts_make_the_table_summary_stale() {
    if skip_unless_root("many_removed_hosts_make_the_table_summary_stale") {
        return;
    }
    let test = ProgTest::with_capacities(&Capacities {
        list: 4096,
        ..small_capacities()
    });
    let hosts = block_one_in_each_of_2048_slash_24s(&test, "7");
    // The hosts the table holds: those whose set was full went to the
    // trie, and are marked in the tries' summary instead.
    let filter = test.filter();
    let table = filter.host_table().expect("BLOCK_HOSTS");
    let in_table: Vec<Cidr> = hosts
        .iter()
        .filter(|c| {
            let key = table_key(c).expect("a table key");
            table.find(&key).expect("reading BLOCK_HOSTS").is_some()
        })
        .copied()
        .collect();
    drop(filter);
    let held = in_table.len() as u64;
    assert!(held > 1500, "{held} of 2,048 in the table");
    let listed = in_use(&test);
    assert_eq!(
        (listed.table_v4, listed.bits_v4),
        (held, 2048 - held),
        "{listed:?}"
    );
    test.filter()
        .list_remove(ListKind::Block, &in_table[..1000])
        .expect("unblocking 1,000");
    assert!(
        !test.reader().sweep_scan().expect("scan").summary_stale,
        "1,000 stale bits: within the tolerance of 1,024"
    );
    test.filter()
        .list_remove(ListKind::Block, &in_table[1000..in_table.len() - 148])
        .expect("unblocking all but 148");
    let sweep = test.reader().sweep_scan().expect("scan");
    assert!(
        sweep.summary_stale,
        "over 1,024 stale bits against 148 needed"
    );
    let rebuilt = test
        .filter()
        .rebuild_stale_summary(&sweep)
        .expect("rebuilding")
        .expect("a rebuild");
    assert_eq!(
        (rebuilt.table_v4, rebuilt.bits_v4),
        (148, 2048 - held),
        "the tries' marks are the hosts that did not fit: {rebuilt:?}"
    );
}

/// Removed prefixes leave stale bits in the table's length masks, each a
/// needless probe for the sources of its region; once they outnumber the
/// needed ones (and a thousand) the sweep rebuilds, even while the table's
/// bitmap, which the hosts beside them keep needed, is not stale.
#[test]
fn many_removed_prefixes_make_the_length_masks_stale() {
    if skip_unless_root("many_removed_prefixes_make_the_length_masks_stale") {
        return;
    }
    let test = ProgTest::with_capacities(&Capacities {
        list: 16384,
        ..small_capacities()
    });
    // A host and its /64 in each of 2,048 IPv6 /48s.
    let (hosts, slash64s): (Vec<Cidr>, Vec<Cidr>) = (0..2048_u32)
        .map(|i| {
            let host: Cidr = format!("2001:db8:{i:x}::1").parse().expect("a host");
            let prefix: Cidr = format!("2001:db8:{i:x}::/64").parse().expect("a /64");
            (host, prefix)
        })
        .unzip();
    for list in [&hosts, &slash64s] {
        test.filter()
            .list_insert(
                ListKind::Block,
                list,
                None,
                filter_ctl::maps::lists::Merge::Replace,
            )
            .expect("blocking 2,048 entries");
    }
    let slash64 = 1_u32 << (64 - 40);
    assert_ne!(table_lengths(&test, "2001:db8:7ff::2") & slash64, 0);
    let listed = in_use(&test);
    // Nearly all in the table: the few /64s of full sets, in the tries,
    // are far too few stale marks to start the rebuild themselves.
    assert!(listed.bits_v6 < 64, "{listed:?}");
    let table_marked = listed.table_v6;
    test.filter()
        .list_remove(ListKind::Block, &slash64s[..1000])
        .expect("unblocking 1,000 /64s");
    assert!(
        !test.reader().sweep_scan().expect("scan").summary_stale,
        "1,000 stale length bits: within the tolerance of 1,024"
    );
    test.filter()
        .list_remove(ListKind::Block, &slash64s[1000..])
        .expect("unblocking the other /64s");
    assert_eq!(in_use(&test).table_v6, table_marked, "the hosts keep them");
    assert_ne!(
        table_lengths(&test, "2001:db8:7ff::2") & slash64,
        0,
        "stale until a rebuild"
    );
    let sweep = test.reader().sweep_scan().expect("scan");
    assert!(
        sweep.summary_stale,
        "2,048 stale length bits against none needed"
    );
    test.filter()
        .rebuild_stale_summary(&sweep)
        .expect("rebuilding")
        .expect("a rebuild");
    assert_eq!(table_lengths(&test, "2001:db8:7ff::2") & slash64, 0);
    assert!(
        !test.reader().sweep_scan().expect("scan").summary_stale,
        "just rebuilt"
    );
    run_table(
        &test,
        &[
            Case::new("a host stays", udp6("2001:db8:7ff::1", 53), BLOCKLIST),
            Case::new("its /64, gone", udp6("2001:db8:7ff::2", 53), PASS),
        ],
    );
}

/// Prefixes of every width in the tries, marked where they cover and
/// nowhere else; an IPv6 prefix
/// shorter than /24 sets the family's wide word; a rebuild after removals
/// drops their marks, and what stays listed still blocks.
#[test]
fn prefixes_of_every_width_are_marked_where_they_cover() {
    if skip_unless_root("prefixes_of_every_width_are_marked_where_they_cover") {
        return;
    }
    let test = ProgTest::new();
    // Written straight into the tries, as entries whose host-table set was
    // full are (all but the /34 are of the table's lengths).
    test.block_raw(
        &[
            "198.18.64.0/20",
            "198.18.64.64/26",
            "198.18.96.128/25",
            "198.19.0.0/16",
            "2001:db8:1:200::/56",
            "2001:db8:4000::/34",
        ],
        ORIGIN_CLI,
        0,
    );
    let before = generation(&test);
    let inside = [
        ("IPv4 /20", "198.18.79.255"),
        ("IPv4 /25", "198.18.96.129"),
        ("IPv4 /16", "198.19.255.1"),
        ("IPv6 /56", "2001:db8:1:2ff::1"),
        ("IPv6 /34", "2001:db8:7fff::1"),
    ];
    let outside = [
        ("past the /20", "198.18.80.1"),
        ("beside the /25's /24", "198.18.97.1"),
        ("below the /16", "198.18.255.1"),
    ];
    let mut cases = Vec::new();
    for (what, addr) in inside {
        assert!(marks(&test, before, addr), "{what}: {addr} unmarked");
        let frame = if addr.contains(':') {
            udp6(addr, 53)
        } else {
            udp4(addr, 53)
        };
        cases.push(Case::new(what, frame, BLOCKLIST));
    }
    for (what, addr) in outside {
        assert!(!marks(&test, before, addr), "{what}: {addr} marked");
        cases.push(Case::new(what, udp4(addr, 53), PASS));
    }
    cases.push(Case::new(
        "past the /34",
        udp6("2001:db8:8000::1", 53),
        PASS,
    ));
    run_table(&test, &cases);
    let listed = in_use(&test);
    assert!(!listed.wide_v4 && !listed.wide_v6);
    // /20: 16 bits, /25: 1, /16: 256, /56: 1, /34: 64 /40s (hashed, a few may share).
    assert_eq!(
        listed.bits_v4,
        16 + 1 + 256,
        "{listed:?}: the /26 shares the /20's bit"
    );
    assert!((60..=65).contains(&listed.bits_v6), "{listed:?}");

    // Too wide for bits: the wide word; every IPv6 source is looked up.
    test.block(&["2001::/20"]);
    assert!(in_use(&test).wide_v6);
    assert!(marks(&test, before, "2001:db8:ffff::1"));
    run_table(
        &test,
        &[Case::new(
            "under the /20",
            udp6("2001:db8:ffff::1", 53),
            BLOCKLIST,
        )],
    );

    // Removals leave stale marks until a rebuild.
    test.filter()
        .list_remove(
            ListKind::Block,
            &cidrs(&["2001::/20", "198.19.0.0/16", "198.18.64.0/20"]),
        )
        .expect("unblocking");
    assert!(in_use(&test).wide_v6, "stale until rebuilt");
    let sweep = test.reader().sweep_scan().expect("sweep scan");
    assert!(sweep.summary_stale, "a wide word no entry needs");
    let rebuilt = test
        .filter()
        .rebuild_stale_summary(&sweep)
        .expect("rebuilding")
        .expect("a rebuild");
    let after = generation(&test);
    assert_ne!(after, before);
    assert_eq!(rebuilt, in_use(&test));
    assert!(
        !rebuilt.wide_v6 && rebuilt.bits_v4 == 2 && rebuilt.bits_v6 <= 65,
        "{rebuilt:?}"
    );
    assert!(!marks(&test, after, "198.19.255.1"));
    assert!(!marks(&test, after, "198.18.79.255"));
    assert!(
        marks(&test, after, "198.18.64.65"),
        "the /26's bit, shared with the /20"
    );
    assert!(marks(&test, after, "198.18.96.129"));
    run_table(
        &test,
        &[
            Case::new("the /16, gone", udp4("198.19.255.1", 53), PASS),
            Case::new("the /20, gone", udp4("198.18.79.255", 53), PASS),
            Case::new("the /25 stays", udp4("198.18.96.129", 53), BLOCKLIST),
            Case::new(
                "the /26 in the /20's first /24 stays",
                udp4("198.18.64.65", 53),
                BLOCKLIST,
            ),
            Case::new(
                "the rest of that /24: looked up, not covered",
                udp4("198.18.64.1", 53),
                PASS,
            ),
            Case::new("the /56 stays", udp6("2001:db8:1:2ff::1", 53), BLOCKLIST),
            Case::new("the /34 stays", udp6("2001:db8:7fff::1", 53), BLOCKLIST),
        ],
    );
    let sweep = test.reader().sweep_scan().expect("sweep scan");
    assert!(!sweep.summary_stale, "just rebuilt");
}

/// Stale bits alone: a rebuild once they outnumber the needed ones (and a
/// thousand), not before.
#[test]
fn many_removed_prefixes_make_the_summary_stale() {
    if skip_unless_root("many_removed_prefixes_make_the_summary_stale") {
        return;
    }
    let test = ProgTest::with_capacities(&Capacities {
        list: 4096,
        ..small_capacities()
    });
    // In the tries (a /25 placed by an edit would be in the host table).
    let prefixes = one_in_each_of_2048_slash_24s("128/25");
    let texts: Vec<String> = prefixes.iter().map(ToString::to_string).collect();
    test.block_raw(
        &texts.iter().map(String::as_str).collect::<Vec<_>>(),
        ORIGIN_CLI,
        0,
    );
    assert_eq!(in_use(&test).bits_v4, 2048);
    test.filter()
        .list_remove(ListKind::Block, &prefixes[..1000])
        .expect("unblocking 1,000");
    assert!(
        !test.reader().sweep_scan().expect("scan").summary_stale,
        "1,000 stale bits against 1,048 needed"
    );
    test.filter()
        .list_remove(ListKind::Block, &prefixes[1000..1900])
        .expect("unblocking 900 more");
    let sweep = test.reader().sweep_scan().expect("scan");
    assert!(sweep.summary_stale, "1,900 stale bits against 148 needed");
    let rebuilt = test
        .filter()
        .rebuild_stale_summary(&sweep)
        .expect("rebuilding")
        .expect("a rebuild");
    assert_eq!(rebuilt.bits_v4, 148);
}

/// The program's automatic blocks mark both generations (a rebuild of
/// either keeps them), and a rebuild finds them in its walk.
#[test]
fn automatic_blocks_are_marked_and_survive_rebuilds() {
    if skip_unless_root("automatic_blocks_are_marked_and_survive_rebuilds") {
        return;
    }
    let test = ProgTest::new();
    let hour = Duration::from_hours(1);
    let id = test.limit(
        "udp/5000",
        &LimitSpec {
            rate: Some(1),
            burst: Some(1),
            autoblock: Some(AutoblockSpec {
                after: 1,
                window: hour,
                block_for: hour,
            }),
            ..Default::default()
        },
    );
    freeze(&test, id, 1);
    let (v4, v6) = ("198.18.30.7", "2001:db8:30::7");
    for generation in [0, 1] {
        assert!(!marks(&test, generation, v4) && !marks(&test, generation, v6));
    }
    run_table(
        &test,
        &[
            Case::new("IPv4 burst", udp4(v4, 5000), PASS),
            Case::new("IPv4 over: blocks", udp4(v4, 5000), RATELIMIT),
            Case::new("IPv6 burst", udp6(v6, 5000), PASS),
            Case::new("IPv6 over: blocks", udp6(v6, 5000), RATELIMIT),
        ],
    );
    for generation in [0, 1] {
        assert!(
            marks(&test, generation, v4),
            "IPv4, generation {generation}"
        );
        assert!(
            marks(&test, generation, v6),
            "IPv6, generation {generation}"
        );
    }
    for round in 0..2 {
        let rebuilt = test.filter().rebuild_summary().expect("rebuilding");
        assert_eq!(
            (rebuilt.bits_v4, rebuilt.bits_v6),
            (1, 1),
            "round {round}: {rebuilt:?}"
        );
        run_table(
            &test,
            &[
                Case::new("IPv4 blocked", udp4(v4, 53), AUTOBLOCK),
                Case::new("IPv6 /64 blocked", udp6("2001:db8:30::ff", 53), AUTOBLOCK),
                Case::new("IPv4 neighbour", udp4("198.18.30.8", 53), PASS),
            ],
        );
    }
}

/// An automatic block coarser than a bit (IPv4 aggregated to /16) sets the
/// wide word; the sweep's rebuild turns it into the /16's 256 bits.
#[test]
fn a_coarse_automatic_block_is_wide_until_rebuilt() {
    if skip_unless_root("a_coarse_automatic_block_is_wide_until_rebuilt") {
        return;
    }
    let test = ProgTest::new();
    test.set_aggregation(16, 64);
    let hour = Duration::from_hours(1);
    let id = test.limit(
        "udp/5000",
        &LimitSpec {
            rate: Some(1),
            burst: Some(1),
            autoblock: Some(AutoblockSpec {
                after: 1,
                window: hour,
                block_for: hour,
            }),
            ..Default::default()
        },
    );
    freeze(&test, id, 1);
    run_table(
        &test,
        &[
            Case::new("burst", udp4("198.18.30.7", 5000), PASS),
            Case::new("over: blocks the /16", udp4("198.18.30.7", 5000), RATELIMIT),
        ],
    );
    let wide = in_use(&test);
    assert!(wide.wide_v4 && !wide.wide_v6, "{wide:?}");
    let sweep = test.reader().sweep_scan().expect("sweep scan");
    assert!(sweep.summary_stale && !sweep.summary_lacking, "{sweep:?}");
    let rebuilt = test
        .filter()
        .rebuild_stale_summary(&sweep)
        .expect("rebuilding")
        .expect("a rebuild");
    assert!(!rebuilt.wide_v4 && rebuilt.bits_v4 == 256, "{rebuilt:?}");
    let after = generation(&test);
    assert!(marks(&test, after, "198.18.255.1") && !marks(&test, after, "198.19.0.1"));
    run_table(
        &test,
        &[
            Case::new("the /16", udp4("198.18.200.1", 53), AUTOBLOCK),
            Case::new("the next /16", udp4("198.19.0.1", 53), PASS),
        ],
    );
}

/// Hosts that find their set of the host table full go to the trie: they
/// are marked like any trie entry, and every one of them blocks.
#[test]
fn hosts_overflowing_the_table_are_marked() {
    if skip_unless_root("hosts_overflowing_the_table_are_marked") {
        return;
    }
    let test = ProgTest::with_capacities(&Capacities {
        list: 4096,
        ..small_capacities()
    });
    // 6,000 hosts in a table of 4,096 slots.
    let hosts: Vec<String> = (0..6000_u32)
        .map(|i| {
            let [_, _, c, d] = (i + 256).to_be_bytes();
            format!("198.18.{c}.{d}")
        })
        .collect();
    let parsed: Vec<Cidr> = hosts
        .iter()
        .map(|h| h.parse().expect("an address"))
        .collect();
    test.filter()
        .list_insert(
            ListKind::Block,
            &parsed,
            None,
            filter_ctl::maps::lists::Merge::Replace,
        )
        .expect("blocking 6,000 hosts");
    let in_trie = test
        .filter()
        .lpm::<Ipv4Bytes, ListEntry>(maps::BLOCK_V4)
        .expect("BLOCK_V4 map")
        .keys()
        .count();
    assert!(in_trie > 0, "some hosts overflowed into the trie");
    assert!(in_use(&test).bits_v4 > 0, "the overflow is marked");
    assert!(
        !test.reader().sweep_scan().expect("scan").summary_lacking,
        "every overflowing host is marked"
    );
    let leaked: Vec<&String> = hosts
        .iter()
        .filter(|h| test.run(&udp4(h, 53)) != xdp_action::DROP)
        .collect();
    assert!(leaked.is_empty(), "blocked hosts passed: {leaked:?}");
}

/// The host table's length mask of `addr`'s region.
fn table_lengths(test: &ProgTest, addr: &str) -> u32 {
    test.reader()
        .summary()
        .and_then(|s| s.table_lengths(ip(addr)))
        .expect("reading BLOCK_SUMMARY")
}

/// The host table's length masks: placing a prefix sets its length's bit
/// in the mask of each region it covers or lies in (its IPv4 /16; each of
/// an IPv6 /40 to /47's /48s, or an IPv6 /48 to /64's own /48, hashed), so
/// a source probes the lengths its region holds and no others. A removal
/// leaves its bit until a rebuild, which clears it; a needed bit missing
/// makes the sweep rebuild.
#[test]
fn the_table_names_the_lengths_each_region_holds() {
    if skip_unless_root("the_table_names_the_lengths_each_region_holds") {
        return;
    }
    let test = ProgTest::new();
    test.block(&[
        "198.18.40.0/22",
        "198.18.40.7",
        "198.18.60.0/28",
        "2001:db8:40::/44",
        "2001:db8:51:10::/60",
    ]);
    let v4 = |len: u32| 1_u32 << (len - 16);
    let v6 = |len: u32| 1_u32 << (len - 40);
    assert_eq!(
        table_lengths(&test, "198.18.200.1"),
        v4(22) | v4(28),
        "198.18.0.0/16 holds a /22 and a /28 (a host needs no bit)"
    );
    assert_eq!(table_lengths(&test, "198.19.0.1"), 0, "198.19.0.0/16");
    for slash48 in ["2001:db8:40::1", "2001:db8:47:ffff::1", "2001:db8:4f::1"] {
        assert_ne!(table_lengths(&test, slash48) & v6(44), 0, "{slash48}");
    }
    assert_ne!(table_lengths(&test, "2001:db8:51::1") & v6(60), 0);
    run_table(
        &test,
        &[
            Case::new("inside the /22", udp4("198.18.43.255", 53), BLOCKLIST),
            Case::new("past the /22", udp4("198.18.44.0", 53), PASS),
            Case::new("inside the /28", udp4("198.18.60.15", 53), BLOCKLIST),
            Case::new("past the /28", udp4("198.18.60.16", 53), PASS),
            Case::new(
                "the /44's last /48",
                udp6("2001:db8:4f:ff::1", 53),
                BLOCKLIST,
            ),
            Case::new("inside the /60", udp6("2001:db8:51:1f::1", 53), BLOCKLIST),
            Case::new("past the /60", udp6("2001:db8:51:20::1", 53), PASS),
        ],
    );

    // Removed: the bits stay (a needless probe) until a rebuild clears them.
    test.filter()
        .list_remove(
            ListKind::Block,
            &cidrs(&["198.18.40.0/22", "2001:db8:51:10::/60"]),
        )
        .expect("unblocking");
    assert_eq!(table_lengths(&test, "198.18.200.1"), v4(22) | v4(28));
    run_table(
        &test,
        &[
            Case::new("the /22, gone", udp4("198.18.41.1", 53), PASS),
            Case::new("its host stays", udp4("198.18.40.7", 53), BLOCKLIST),
            Case::new("the /60, gone", udp6("2001:db8:51:1f::1", 53), PASS),
        ],
    );
    test.filter().rebuild_summary().expect("rebuilding");
    assert_eq!(table_lengths(&test, "198.18.200.1"), v4(28));
    assert_eq!(table_lengths(&test, "2001:db8:51::1") & v6(60), 0);
    assert_ne!(table_lengths(&test, "2001:db8:4f::1") & v6(44), 0);
    let sweep = test.reader().sweep_scan().expect("sweep scan");
    assert!(!sweep.summary_stale, "just rebuilt");

    // A prefix placed without its length's bit is never probed, even where
    // the table's bitmap marks its /24 (a host there), until the sweep finds
    // the bit missing and rebuilds. (Not a table case: the reference model,
    // which has no summary, would find the entry.)
    test.block(&["198.18.70.5"]);
    let key = table_key(&cidrs(&["198.18.70.0/24"])[0]).expect("a table length");
    let filter = test.filter();
    filter
        .update_config(|c| {
            c.block_hosts += 1;
            c.table_prefixes += 1;
            Ok(())
        })
        .expect("counting the entry");
    let placed = filter
        .host_table()
        .and_then(|t| t.place_unmarked(&key, ListEntry::default()))
        .expect("placing by hand");
    drop(filter);
    assert_eq!(placed, Placed::New);
    assert!(marks_table(&test, generation(&test), "198.18.70.1"));
    assert_eq!(table_lengths(&test, "198.18.70.1") & v4(24), 0);
    assert_eq!(
        test.run(&udp4("198.18.70.1", 53)),
        xdp_action::PASS,
        "a /24 without its length's bit: not probed"
    );
    let sweep = test.reader().sweep_scan().expect("sweep scan");
    assert!(sweep.summary_lacking, "{sweep:?}");
    test.filter()
        .rebuild_stale_summary(&sweep)
        .expect("rebuilding")
        .expect("a rebuild");
    assert_ne!(table_lengths(&test, "198.18.70.1") & v4(24), 0);
    run_table(
        &test,
        &[Case::new(
            "marked by the rebuild",
            udp4("198.18.70.1", 53),
            BLOCKLIST,
        )],
    );
}
