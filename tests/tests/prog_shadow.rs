//! Table tests of shadow rules and shadow block entries through
//! `BPF_PROG_TEST_RUN` (`filter-ebpf/src/ratelimit.rs::apply_rule`,
//! `filter-ebpf/src/lists.rs::block_reason`): what a shadow rule or entry
//! would drop passes, counted under `shadow_*` besides its real reason;
//! a shadow rule never blocks automatically, and enforced blocks still drop.
//! Rates are set so low (one packet per 1000 s) that no bucket refills while
//! a test runs.

use std::time::Duration;

use filter_common::{
    ORIGIN_AUTO, ORIGIN_POLICY,
    reason::{
        self, ALLOWLIST, AUTOBLOCK, BLOCKLIST, PASS, PORT_DENIED, RATELIMIT, SHADOW_BLOCKLIST,
        SHADOW_PORT_DENIED, SHADOW_RATELIMIT,
    },
    table_stat,
};
use filter_ctl::spec::rule::{AutoblockSpec, LimitSpec};
use filter_tests::{
    progtest::{Case, ProgTest, run_cases, run_table, skip_unless_root},
    rules::{assert_rule_counters, freeze, icmp4, tcp4, tcp6, udp4, udp6},
};

/// Packets counted under `why`.
fn packets(test: &ProgTest, why: u32) -> u64 {
    test.stats()[why as usize].packets
}

/// A shadow default limit of 1 packet, burst 1, with automatic blocks set:
/// every packet passes, all but the first counted as `shadow_ratelimit`,
/// none as `ratelimit`, and the source is never blocked. Enforced again,
/// the rule drops at once (its bucket is the same) and blocks after the
/// full count of over-limit packets (the shadow's were not counted).
#[test]
fn a_shadow_limit_passes_everything_and_never_blocks() {
    const N: u64 = 12;
    if skip_unless_root("a_shadow_limit_passes_everything_and_never_blocks") {
        return;
    }
    let test = ProgTest::new();
    let id = test.limit(
        "default",
        &LimitSpec {
            rate: Some(1),
            burst: Some(1),
            autoblock: Some(AutoblockSpec {
                after: 2,
                window: Duration::from_hours(1),
                block_for: Duration::from_hours(1),
            }),
            ..Default::default()
        },
    );
    freeze(&test, id, 1);
    test.set_shadow(id, true);
    let src = "198.18.60.1";
    let src6 = "2001:db8:60::1";
    let mut cases = vec![
        Case::new("first packet, within the burst", udp4(src, 53), PASS),
        Case::new("IPv6: within the burst", udp6(src6, 53), PASS),
    ];
    for i in 2..=N {
        cases.push(
            Case::new(format!("packet {i}: would be over"), tcp4(src, 80), PASS)
                .shadow(SHADOW_RATELIMIT),
        );
        cases.push(
            Case::new(
                format!("IPv6 packet {i}: would be over"),
                tcp6(src6, 80),
                PASS,
            )
            .shadow(SHADOW_RATELIMIT),
        );
    }
    let mut model = test.model();
    run_cases(&test, &mut model, &cases);
    assert_eq!(packets(&test, PASS), 2 * N);
    assert_eq!(packets(&test, SHADOW_RATELIMIT), 2 * (N - 1));
    assert_eq!(packets(&test, RATELIMIT), 0);
    assert_eq!(packets(&test, AUTOBLOCK), 0);
    assert!(test.autoblocks().is_empty(), "{:?}", test.autoblocks());
    let autoblocks = test
        .reader()
        .table_stat(table_stat::AUTOBLOCKS)
        .expect("TABLE_STATS");
    assert_eq!(autoblocks, 0);
    let counters = test.rule_counters(id);
    assert_eq!(
        (counters.passed.packets, counters.dropped.packets),
        (2 * N, 0),
        "a shadow rule's packets count as passed"
    );
    assert_rule_counters(&test, &model, &[id]);

    test.set_shadow(id, false);
    model.rules[test.live_slot(id) as usize].flags &= !filter_common::RULE_FLAG_SHADOW;
    run_cases(
        &test,
        &mut model,
        &[
            Case::new("enforced: over (1)", udp4(src, 53), RATELIMIT),
            Case::new("enforced: over (2), blocks", udp4(src, 53), RATELIMIT),
            Case::new("enforced: blocked", udp4(src, 53), AUTOBLOCK),
        ],
    );
    assert_eq!(test.autoblocks().len(), 1);
}

/// Shadow port rules: a closed port and an only-from set pass what they
/// would deny (`shadow_port_denied`); the rule counts them as passed. An
/// enforced block still drops before any rule is met.
#[test]
fn shadow_port_rules_pass_what_they_would_deny() {
    if skip_unless_root("shadow_port_rules_pass_what_they_would_deny") {
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
    test.set_shadow(closed, true);
    let ssh = test.limit(
        "tcp/22",
        &LimitSpec {
            only_from: vec!["198.18.7.0/24".parse().expect("cidr")],
            ..Default::default()
        },
    );
    test.set_shadow(ssh, true);
    let enforced = test.limit(
        "udp/6000",
        &LimitSpec {
            drop: true,
            ..Default::default()
        },
    );
    test.block(&["198.18.61.66"]);
    let cases = vec![
        Case::new("shadow drop rule", tcp4("198.18.61.1", 23), PASS).shadow(SHADOW_PORT_DENIED),
        Case::new("shadow drop rule, IPv6", tcp6("2001:db8:61::1", 23), PASS)
            .shadow(SHADOW_PORT_DENIED),
        Case::new("UDP to 23: no rule", udp4("198.18.61.1", 23), PASS),
        Case::new("shadow only-from, inside", tcp4("198.18.7.5", 22), PASS),
        Case::new("shadow only-from, outside", tcp4("198.18.61.1", 22), PASS)
            .shadow(SHADOW_PORT_DENIED),
        Case::new("enforced drop rule", udp4("198.18.61.1", 6000), PORT_DENIED),
        Case::new(
            "blocked source to the shadow rule's port: the rule is not met",
            tcp4("198.18.61.66", 23),
            BLOCKLIST,
        ),
    ];
    let model = run_table(&test, &cases);
    assert_rule_counters(&test, &model, &[closed, ssh, enforced]);
    let counters = test.rule_counters(closed);
    assert_eq!((counters.passed.packets, counters.dropped.packets), (2, 0));
    assert_eq!(packets(&test, SHADOW_PORT_DENIED), 3);
    assert_eq!(packets(&test, PORT_DENIED), 1);
}

/// Shadow block entries pass the sources they cover (`shadow_blocklist`)
/// and never lift an enforced block: an operator's block over (covering)
/// the shadow entry still drops, counted under both; one under it (more
/// specific) is the longest match and decides alone. The allowlist wins
/// over both; a shadow rule's reason takes the place of the entry's;
/// expired shadow entries match nothing.
#[test]
fn shadow_block_entries_count_and_never_decide() {
    if skip_unless_root("shadow_block_entries_count_and_never_decide") {
        return;
    }
    let test = ProgTest::new();
    test.block_shadow(&[
        // Alone.
        "198.18.61.0/24",
        "2001:db8:61::/48",
        // Under an operator's block (more specific).
        "198.18.62.0/24",
        "2001:db8:62::/64",
        // Over an operator's block (covering it).
        "198.18.64.0/24",
        "2001:db8:64::/48",
        // Over an allow entry.
        "198.18.65.0/24",
    ]);
    test.block(&[
        "198.18.62.0/23",
        "2001:db8:62::/48",
        "198.18.64.9",
        "2001:db8:64::9",
    ]);
    test.allow(&["198.18.65.1"]);
    test.block_shadow_ttl(&["198.18.66.0/24"], Duration::from_millis(1));
    let closed = test.limit(
        "tcp/23",
        &LimitSpec {
            drop: true,
            ..Default::default()
        },
    );
    let shadow_closed = test.limit(
        "tcp/25",
        &LimitSpec {
            drop: true,
            ..Default::default()
        },
    );
    test.set_shadow(shadow_closed, true);
    std::thread::sleep(Duration::from_millis(50));
    let cases = vec![
        Case::new("shadow entry alone", udp4("198.18.61.1", 53), PASS).shadow(SHADOW_BLOCKLIST),
        Case::new("shadow entry alone, ICMP", icmp4("198.18.61.1"), PASS).shadow(SHADOW_BLOCKLIST),
        Case::new("IPv6 shadow entry alone", udp6("2001:db8:61::1", 53), PASS)
            .shadow(SHADOW_BLOCKLIST),
        Case::new("outside every entry", udp4("198.18.68.1", 53), PASS),
        Case::new(
            "shadow entry under an operator's block: still dropped",
            udp4("198.18.62.1", 53),
            BLOCKLIST,
        )
        .shadow(SHADOW_BLOCKLIST),
        Case::new(
            "the operator's block outside the shadow entry",
            udp4("198.18.63.1", 53),
            BLOCKLIST,
        ),
        Case::new(
            "IPv6 shadow /64 under an operator's /48",
            udp6("2001:db8:62::1", 53),
            BLOCKLIST,
        )
        .shadow(SHADOW_BLOCKLIST),
        Case::new(
            "IPv6 operator's /48 outside the shadow /64",
            udp6("2001:db8:62:1::1", 53),
            BLOCKLIST,
        ),
        Case::new(
            "operator's block under a shadow entry: the longest match decides alone",
            udp4("198.18.64.9", 53),
            BLOCKLIST,
        ),
        Case::new(
            "shadow entry beside the operator's block",
            udp4("198.18.64.1", 53),
            PASS,
        )
        .shadow(SHADOW_BLOCKLIST),
        Case::new(
            "IPv6 operator's block under a shadow entry",
            udp6("2001:db8:64::9", 53),
            BLOCKLIST,
        ),
        Case::new(
            "IPv6 shadow entry beside the operator's block",
            udp6("2001:db8:64::1", 53),
            PASS,
        )
        .shadow(SHADOW_BLOCKLIST),
        Case::new(
            "allowed source under a shadow entry",
            udp4("198.18.65.1", 53),
            ALLOWLIST,
        ),
        Case::new(
            "shadow entry and an enforced drop rule",
            tcp4("198.18.61.1", 23),
            PORT_DENIED,
        )
        .shadow(SHADOW_BLOCKLIST),
        Case::new(
            "shadow entry and a shadow drop rule: the rule's reason",
            tcp4("198.18.61.1", 25),
            PASS,
        )
        .shadow(SHADOW_PORT_DENIED),
        Case::new("expired shadow entry", udp4("198.18.66.1", 53), PASS),
    ];
    let model = run_table(&test, &cases);
    assert_rule_counters(&test, &model, &[closed, shadow_closed]);
    let stored: Vec<String> = test
        .reader()
        .list_entries_raw(filter_ctl::maps::ListKind::Block)
        .expect("reading the blocklist")
        .iter()
        .map(|(c, _)| c.to_string())
        .collect();
    assert!(
        !stored.iter().any(|c| c == "198.18.66.0/24"),
        "the expired shadow entry was met and deleted: {stored:?}"
    );
}

/// Shadow entries over and under an automatic block: the automatic block
/// drops, counted with `shadow_blocklist`.
#[test]
fn shadow_entries_around_an_automatic_block() {
    if skip_unless_root("shadow_entries_around_an_automatic_block") {
        return;
    }
    let test = ProgTest::new();
    test.set_aggregation(30, 64);
    let id = test.limit(
        "udp/5000",
        &LimitSpec {
            rate: Some(1),
            burst: Some(1),
            autoblock: Some(AutoblockSpec {
                after: 1,
                window: Duration::from_hours(1),
                block_for: Duration::from_hours(1),
            }),
            ..Default::default()
        },
    );
    freeze(&test, id, 1);
    // Over 198.18.70.0/30 and under it.
    test.block_shadow(&["198.18.70.0/24", "198.18.70.2/32"]);
    let mut model = test.model();
    run_cases(
        &test,
        &mut model,
        &[
            Case::new("within the burst", udp4("198.18.70.1", 5000), PASS).shadow(SHADOW_BLOCKLIST),
            Case::new(
                "over: blocks 198.18.70.0/30",
                udp4("198.18.70.1", 5000),
                RATELIMIT,
            )
            .shadow(SHADOW_BLOCKLIST),
            Case::new(
                "automatic block under a shadow entry",
                icmp4("198.18.70.1"),
                AUTOBLOCK,
            )
            .shadow(SHADOW_BLOCKLIST),
            Case::new(
                "shadow entry under the automatic block",
                icmp4("198.18.70.2"),
                AUTOBLOCK,
            )
            .shadow(SHADOW_BLOCKLIST),
            Case::new("shadow entry alone", icmp4("198.18.70.9"), PASS).shadow(SHADOW_BLOCKLIST),
        ],
    );
    let blocks: Vec<String> = test
        .autoblocks()
        .iter()
        .map(|(c, e)| {
            assert_eq!(e.origin, ORIGIN_AUTO);
            c.to_string()
        })
        .collect();
    assert_eq!(blocks, ["198.18.70.0/30"]);
}

/// The program's current behaviour, pinned so that a change is deliberate:
/// the automatic block is inserted only if no entry holds the source's
/// aggregation prefix (`BPF_NOEXIST`, meant to keep an operator's entry).
/// A shadow entry at exactly that prefix therefore keeps the source from
/// ever being blocked automatically, although shadow entries are never to
/// change what is enforced; and the failure is not counted.
#[test]
fn a_shadow_entry_at_the_sources_prefix_keeps_the_automatic_block_out() {
    if skip_unless_root("a_shadow_entry_at_the_sources_prefix_keeps_the_automatic_block_out") {
        return;
    }
    let test = ProgTest::new();
    let id = test.limit(
        "udp/5000",
        &LimitSpec {
            rate: Some(1),
            burst: Some(1),
            autoblock: Some(AutoblockSpec {
                after: 1,
                window: Duration::from_hours(1),
                block_for: Duration::from_hours(1),
            }),
            ..Default::default()
        },
    );
    freeze(&test, id, 1);
    // The default aggregation: /32.
    let src = "198.18.71.1";
    test.block_shadow(&[src]);
    let shadow =
        |what: &str, why: u32| Case::new(what, udp4(src, 5000), why).shadow(SHADOW_BLOCKLIST);
    let mut model = test.model();
    run_cases(
        &test,
        &mut model,
        &[
            shadow("within the burst", PASS),
            shadow("over: would block", RATELIMIT),
            shadow("over again: still not blocked", RATELIMIT),
        ],
    );
    assert!(test.autoblocks().is_empty(), "{:?}", test.autoblocks());
    let entries = test
        .reader()
        .list_entries_raw(filter_ctl::maps::ListKind::Block)
        .expect("reading the blocklist");
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].1.origin, ORIGIN_POLICY);
    let failed = test
        .reader()
        .table_stat(table_stat::AUTOBLOCKS_FAILED)
        .expect("TABLE_STATS");
    assert_eq!(failed, 0);
}

/// A block lookup follows at most four shadow or automatic matches: an
/// operator's block under four nested shadow entries is not reached (the
/// packet passes), under three it is. Expired entries a lookup skips do not
/// count as matches.
#[test]
fn a_block_lookup_follows_four_matches() {
    if skip_unless_root("a_block_lookup_follows_four_matches") {
        return;
    }
    let test = ProgTest::new();
    test.block(&["198.18.72.0/24", "198.18.73.0/24", "2001:db8:72::/48"]);
    test.block_shadow(&[
        "198.18.72.0/26",
        "198.18.72.0/28",
        "198.18.72.0/30",
        "198.18.72.0/32",
        "198.18.73.0/26",
        "198.18.73.0/28",
        "198.18.73.0/30",
        "2001:db8:72::/64",
        "2001:db8:72::/96",
        "2001:db8:72::/120",
        "2001:db8:72::/128",
    ]);
    test.block_ttl(
        &["198.18.73.0/32", "198.18.73.0/31"],
        Duration::from_millis(1),
    );
    std::thread::sleep(Duration::from_millis(50));
    let cases = vec![
        Case::new(
            "four shadow entries over the operator's block: not reached",
            udp4("198.18.72.0", 53),
            PASS,
        )
        .shadow(SHADOW_BLOCKLIST),
        Case::new(
            "three shadow entries, then the operator's block",
            udp4("198.18.72.1", 53),
            BLOCKLIST,
        )
        .shadow(SHADOW_BLOCKLIST),
        Case::new(
            "IPv6: four shadow entries over the operator's block",
            udp6("2001:db8:72::", 53),
            PASS,
        )
        .shadow(SHADOW_BLOCKLIST),
        Case::new(
            "IPv6: three shadow entries, then the operator's block",
            udp6("2001:db8:72::1", 53),
            BLOCKLIST,
        )
        .shadow(SHADOW_BLOCKLIST),
        Case::new(
            "two expired entries skipped, three shadow entries, then the operator's block",
            udp4("198.18.73.0", 53),
            BLOCKLIST,
        )
        .shadow(SHADOW_BLOCKLIST),
    ];
    run_table(&test, &cases);
    assert_eq!(packets(&test, reason::SHADOW_BLOCKLIST), 5);
}
