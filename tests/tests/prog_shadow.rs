//! Table tests of shadow rules and shadow block entries through
//! `BPF_PROG_TEST_RUN` (`filter-ebpf/src/ratelimit.rs::apply_rule`, the
//! shadow lookup in `filter-ebpf/src/main.rs::decide`): what a shadow rule
//! would drop passes, counted under `shadow_*` besides its real reason, and
//! a shadow rule never blocks automatically. Shadow block entries live in
//! tries of their own (`SHADOW_BLOCK_V4`/`V6`): a source one covers is
//! counted under `shadow_blocklist` besides its verdict unless it is
//! allowed, the verdict is the one it would be without them, however they
//! nest with operator blocks, automatic blocks and allow entries, and while
//! `Config` counts none of a family the program does not look at them.
//! Rates are set so low (one packet per 1000 s) that no bucket refills while
//! a test runs.

use std::time::Duration;

use filter_common::{
    ORIGIN_AUTO, ORIGIN_POLICY,
    reason::{
        ALLOWLIST, AUTOBLOCK, BLOCKLIST, PASS, PORT_DENIED, RATELIMIT, SHADOW_BLOCKLIST,
        SHADOW_PORT_DENIED, SHADOW_RATELIMIT,
    },
    table_stat,
};
use filter_ctl::spec::rule::{AutoblockSpec, LimitSpec};
use filter_tests::{
    model::Model,
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

/// One source of a table that runs without and then with shadow entries:
/// what it is, its frame, its verdict (the same both times), and whether a
/// shadow entry covers it.
struct Source {
    what: &'static str,
    frame: Vec<u8>,
    reason: u32,
    under_shadow: bool,
}

fn source(what: &'static str, frame: Vec<u8>, reason: u32, under_shadow: bool) -> Source {
    Source {
        what,
        frame,
        reason,
        under_shadow,
    }
}

/// Runs `sources` without shadow entries, adds `shadow` to the shadow
/// blocklist and runs them again: the same verdicts, with
/// `shadow_blocklist` counted besides each covered source's. Returns the
/// model of both runs (its rule counters cover both).
fn same_verdicts_with_shadow_entries(
    test: &ProgTest,
    sources: &[Source],
    shadow: &[&str],
) -> Model {
    let cases = |shadowed: bool| -> Vec<Case> {
        sources
            .iter()
            .map(|s| {
                let case = Case::new(s.what, s.frame.clone(), s.reason);
                if shadowed && s.under_shadow {
                    case.shadow(SHADOW_BLOCKLIST)
                } else {
                    case
                }
            })
            .collect()
    };
    assert!(test.shadow_entries().is_empty());
    let mut model = run_table(test, &cases(false));
    let before = packets(test, SHADOW_BLOCKLIST);
    test.block_shadow(shadow);
    // The model takes the shadow entries and counts from the maps, and
    // keeps the rest.
    let maps = test.model();
    model.shadow_block_v4 = maps.shadow_block_v4;
    model.shadow_block_v6 = maps.shadow_block_v6;
    model.shadow_v4_entries = maps.shadow_v4_entries;
    model.shadow_v6_entries = maps.shadow_v6_entries;
    run_cases(test, &mut model, &cases(true));
    let covered = sources.iter().filter(|s| s.under_shadow).count() as u64;
    assert_eq!(packets(test, SHADOW_BLOCKLIST) - before, covered);
    model
}

/// Shadow block entries over (covering), under (more specific than) and at
/// the prefix of an operator's block: it drops all the same, counted as
/// `shadow_blocklist` in each nesting order; sources the shadow entries
/// cover alone pass, counted too. A rule still decides after them, and a
/// shadow rule's reason takes the place of the entry's.
#[test]
fn shadow_entries_around_operator_blocks_never_change_the_verdict() {
    if skip_unless_root("shadow_entries_around_operator_blocks_never_change_the_verdict") {
        return;
    }
    let test = ProgTest::new();
    test.block(&[
        "198.18.62.0/23",
        "2001:db8:62::/48",
        "198.18.64.9",
        "2001:db8:64::9",
        "198.18.67.0/24",
        "2001:db8:67::/48",
    ]);
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
    let sources = [
        source("shadow entry alone", udp4("198.18.61.1", 53), PASS, true),
        source("shadow entry alone, ICMP", icmp4("198.18.61.1"), PASS, true),
        source(
            "IPv6 shadow entry alone",
            udp6("2001:db8:61::1", 53),
            PASS,
            true,
        ),
        source("outside every entry", udp4("198.18.68.1", 53), PASS, false),
        source(
            "shadow /24 under an operator's /23",
            udp4("198.18.62.1", 53),
            BLOCKLIST,
            true,
        ),
        source(
            "the operator's /23 outside the shadow /24",
            udp4("198.18.63.1", 53),
            BLOCKLIST,
            false,
        ),
        source(
            "IPv6 shadow /64 under an operator's /48",
            udp6("2001:db8:62::1", 53),
            BLOCKLIST,
            true,
        ),
        source(
            "IPv6 operator's /48 outside the shadow /64",
            udp6("2001:db8:62:1::1", 53),
            BLOCKLIST,
            false,
        ),
        source(
            "operator's /32 under a shadow /24",
            udp4("198.18.64.9", 53),
            BLOCKLIST,
            true,
        ),
        source(
            "beside the operator's /32, in the shadow /24",
            udp4("198.18.64.1", 53),
            PASS,
            true,
        ),
        source(
            "IPv6 operator's /128 under a shadow /48",
            udp6("2001:db8:64::9", 53),
            BLOCKLIST,
            true,
        ),
        source(
            "IPv6 beside the operator's /128, in the shadow /48",
            udp6("2001:db8:64::1", 53),
            PASS,
            true,
        ),
        source(
            "shadow entry at the operator's own prefix",
            udp4("198.18.67.1", 53),
            BLOCKLIST,
            true,
        ),
        source(
            "IPv6 shadow entry at the operator's own prefix",
            udp6("2001:db8:67::1", 53),
            BLOCKLIST,
            true,
        ),
        source(
            "shadow entry and an enforced drop rule",
            tcp4("198.18.61.1", 23),
            PORT_DENIED,
            true,
        ),
        source(
            "blocked source under a shadow entry, to the drop rule's port",
            tcp4("198.18.64.9", 23),
            BLOCKLIST,
            true,
        ),
    ];
    let mut model = same_verdicts_with_shadow_entries(
        &test,
        &sources,
        &[
            "198.18.61.0/24",
            "2001:db8:61::/48",
            "198.18.62.0/24",
            "2001:db8:62::/64",
            "198.18.64.0/24",
            "2001:db8:64::/48",
            "198.18.67.0/24",
            "2001:db8:67::/48",
        ],
    );
    run_cases(
        &test,
        &mut model,
        &[
            Case::new(
                "shadow entry and a shadow drop rule: the rule's reason",
                tcp4("198.18.61.1", 25),
                PASS,
            )
            .shadow(SHADOW_PORT_DENIED),
            Case::new(
                "no shadow entry, a shadow drop rule",
                tcp4("198.18.68.1", 25),
                PASS,
            )
            .shadow(SHADOW_PORT_DENIED),
        ],
    );
    assert_rule_counters(&test, &model, &[closed, shadow_closed]);
}

/// Shadow entries nested every way with automatic blocks over an operator's
/// block, five matches deep: the operator's block is reached and drops (the
/// old design, with shadow entries in the blocklist, looked through four
/// matches and let the source pass), the automatic blocks drop where no
/// operator's block lies under them, and each covered source is counted.
#[test]
fn shadow_entries_nested_with_automatic_blocks_never_hide_a_block() {
    if skip_unless_root("shadow_entries_nested_with_automatic_blocks_never_hide_a_block") {
        return;
    }
    let test = ProgTest::new();
    test.block(&["198.18.72.0/24", "2001:db8:72::/48"]);
    test.block_raw(
        &["198.18.72.0/30", "198.18.73.0/30", "2001:db8:72::/64"],
        ORIGIN_AUTO,
        0,
    );
    let sources = [
        source(
            "shadow /32, /31, automatic /30, shadow /28, /26, operator's /24",
            udp4("198.18.72.0", 53),
            BLOCKLIST,
            true,
        ),
        source(
            "shadow /31, automatic /30, shadow /28, /26, operator's /24",
            udp4("198.18.72.1", 53),
            BLOCKLIST,
            true,
        ),
        source(
            "automatic /30, shadow /28, /26, operator's /24",
            udp4("198.18.72.2", 53),
            BLOCKLIST,
            true,
        ),
        source(
            "shadow /28, /26, operator's /24",
            udp4("198.18.72.9", 53),
            BLOCKLIST,
            true,
        ),
        source(
            "the operator's /24 alone",
            udp4("198.18.72.200", 53),
            BLOCKLIST,
            false,
        ),
        source(
            "shadow /32 under an automatic /30 under a shadow /24",
            udp4("198.18.73.0", 53),
            AUTOBLOCK,
            true,
        ),
        source(
            "automatic /30 under a shadow /24",
            udp4("198.18.73.2", 53),
            AUTOBLOCK,
            true,
        ),
        source("the shadow /24 alone", udp4("198.18.73.9", 53), PASS, true),
        source(
            "IPv6 shadow /128, /120, /96, automatic /64, shadow /56, operator's /48",
            udp6("2001:db8:72::", 53),
            BLOCKLIST,
            true,
        ),
        source(
            "IPv6 shadow /56 and the operator's /48",
            udp6("2001:db8:72:1::1", 53),
            BLOCKLIST,
            true,
        ),
        source(
            "IPv6 operator's /48 alone",
            udp6("2001:db8:72:100::1", 53),
            BLOCKLIST,
            false,
        ),
    ];
    same_verdicts_with_shadow_entries(
        &test,
        &sources,
        &[
            "198.18.72.0/32",
            "198.18.72.0/31",
            "198.18.72.0/28",
            "198.18.72.0/26",
            "198.18.73.0/32",
            "198.18.73.0/24",
            "2001:db8:72::/128",
            "2001:db8:72::/120",
            "2001:db8:72::/96",
            "2001:db8:72::/56",
        ],
    );
}

/// An allowed source is never counted as `shadow_blocklist`, whether the
/// shadow entry covers the allow entry, lies under it or at its prefix, and
/// whether a block covers it too; nor is a shadow rule met. A source whose
/// allow entry has expired is counted.
#[test]
fn an_allowed_source_is_never_counted_as_shadow_blocklist() {
    if skip_unless_root("an_allowed_source_is_never_counted_as_shadow_blocklist") {
        return;
    }
    let test = ProgTest::new();
    test.allow(&[
        "198.18.65.1",
        "198.18.66.0/24",
        "198.18.69.0/24",
        "2001:db8:65::/48",
    ]);
    test.allow_ttl(&["198.18.68.1"], Duration::from_millis(1));
    test.block(&["198.18.65.0/24", "198.18.68.0/24"]);
    let shadow_closed = test.limit(
        "tcp/25",
        &LimitSpec {
            drop: true,
            ..Default::default()
        },
    );
    test.set_shadow(shadow_closed, true);
    std::thread::sleep(Duration::from_millis(50));
    let sources = [
        source(
            "allowed /32 under a shadow /24 (and a block /24)",
            udp4("198.18.65.1", 53),
            ALLOWLIST,
            false,
        ),
        source(
            "beside it: blocked",
            udp4("198.18.65.2", 53),
            BLOCKLIST,
            true,
        ),
        source(
            "shadow /32 under an allowed /24",
            udp4("198.18.66.1", 53),
            ALLOWLIST,
            false,
        ),
        source(
            "shadow entry at the allow entry's prefix",
            udp4("198.18.69.1", 53),
            ALLOWLIST,
            false,
        ),
        source(
            "IPv6 shadow /128 under an allowed /48",
            udp6("2001:db8:65::1", 53),
            ALLOWLIST,
            false,
        ),
        source(
            "allowed, under a shadow entry, to a shadow drop rule's port",
            tcp4("198.18.65.1", 25),
            ALLOWLIST,
            false,
        ),
        source(
            "expired allow entry: blocked, counted",
            udp4("198.18.68.1", 53),
            BLOCKLIST,
            true,
        ),
    ];
    let model = same_verdicts_with_shadow_entries(
        &test,
        &sources,
        &[
            "198.18.65.0/24",
            "198.18.66.1",
            "198.18.69.0/24",
            "2001:db8:65::1",
            "198.18.68.0/24",
        ],
    );
    assert_rule_counters(&test, &model, &[shadow_closed]);
    assert_eq!(test.rule_counters(shadow_closed).passed.packets, 0);
    assert_eq!(packets(&test, SHADOW_PORT_DENIED), 0);
}

/// A shadow entry at exactly a source's aggregation prefix: the source is
/// blocked automatically all the same (the automatic block goes to the
/// blocklist, which the shadow entry is not in), every packet counted as
/// `shadow_blocklist`; the shadow entry stays as it was.
#[test]
fn a_shadow_entry_at_the_sources_prefix_does_not_stop_its_automatic_block() {
    if skip_unless_root("a_shadow_entry_at_the_sources_prefix_does_not_stop_its_automatic_block") {
        return;
    }
    let test = ProgTest::new();
    test.set_aggregation(32, 64);
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
    let (src, src6) = ("198.18.71.1", "2001:db8:71::1");
    test.block_shadow(&[src, "2001:db8:71::/64"]);
    let shadow =
        |what: &str, frame: Vec<u8>, why: u32| Case::new(what, frame, why).shadow(SHADOW_BLOCKLIST);
    let mut model = test.model();
    run_cases(
        &test,
        &mut model,
        &[
            shadow("within the burst", udp4(src, 5000), PASS),
            shadow("over: blocks", udp4(src, 5000), RATELIMIT),
            shadow("blocked", udp4(src, 5000), AUTOBLOCK),
            shadow("blocked, any port", icmp4(src), AUTOBLOCK),
            shadow("IPv6: within the burst", udp6(src6, 5000), PASS),
            shadow("IPv6: over: blocks", udp6(src6, 5000), RATELIMIT),
            shadow("IPv6: blocked", udp6(src6, 5000), AUTOBLOCK),
        ],
    );
    let mut blocks: Vec<String> = test
        .autoblocks()
        .iter()
        .map(|(c, e)| {
            assert_eq!(e.origin, ORIGIN_AUTO);
            c.to_string()
        })
        .collect();
    blocks.sort();
    assert_eq!(blocks, ["198.18.71.1/32", "2001:db8:71::/64"]);
    assert_eq!(model.autoblock_log.len(), 2);
    let mut shadow_entries: Vec<String> = test
        .shadow_entries()
        .iter()
        .map(|(c, e)| {
            assert_eq!((e.origin, e.expires_at_ns), (ORIGIN_POLICY, 0));
            c.to_string()
        })
        .collect();
    shadow_entries.sort();
    assert_eq!(shadow_entries, ["198.18.71.1/32", "2001:db8:71::/64"]);
    let failed = test
        .reader()
        .table_stat(table_stat::AUTOBLOCKS_FAILED)
        .expect("TABLE_STATS");
    assert_eq!(failed, 0);
}

/// While `Config` counts no shadow entries of a family, the program does
/// not look at them (nothing counted, an expired one not even deleted),
/// whatever the tries hold; the other family's still count. The counts
/// follow the entries written.
#[test]
fn with_a_count_of_0_shadow_entries_are_ignored() {
    if skip_unless_root("with_a_count_of_0_shadow_entries_are_ignored") {
        return;
    }
    let test = ProgTest::new();
    assert_eq!(test.shadow_counts(), (0, 0));
    test.block(&["198.18.74.9"]);
    test.block_shadow(&["198.18.74.0/24", "2001:db8:74::/48"]);
    assert_eq!(test.shadow_counts(), (1, 1));
    test.block_shadow_ttl(
        &["198.18.75.0/24", "2001:db8:75::/48"],
        Duration::from_millis(1),
    );
    assert_eq!(test.shadow_counts(), (2, 2));
    std::thread::sleep(Duration::from_millis(50));
    let case = |what: &str, frame: Vec<u8>, why: u32, counted: bool| {
        let case = Case::new(what, frame, why);
        if counted {
            case.shadow(SHADOW_BLOCKLIST)
        } else {
            case
        }
    };
    let v4 = |counted| case("IPv4 shadow entry", udp4("198.18.74.1", 53), PASS, counted);
    let v4_blocked = |counted| {
        case(
            "IPv4 operator's block under a shadow entry",
            udp4("198.18.74.9", 53),
            BLOCKLIST,
            counted,
        )
    };
    let v6 = |counted| {
        case(
            "IPv6 shadow entry",
            udp6("2001:db8:74::1", 53),
            PASS,
            counted,
        )
    };
    let expired = || {
        [
            case(
                "IPv4 expired shadow entry",
                udp4("198.18.75.1", 53),
                PASS,
                false,
            ),
            case(
                "IPv6 expired shadow entry",
                udp6("2001:db8:75::1", 53),
                PASS,
                false,
            ),
        ]
    };
    let stored = || -> Vec<String> {
        let mut out: Vec<String> = test
            .shadow_entries()
            .iter()
            .map(|(c, _)| c.to_string())
            .collect();
        out.sort();
        out
    };
    let all = [
        "198.18.74.0/24",
        "198.18.75.0/24",
        "2001:db8:74::/48",
        "2001:db8:75::/48",
    ];

    test.set_shadow_counts(0, 0);
    let mut cases = vec![v4(false), v4_blocked(false), v6(false)];
    cases.extend(expired());
    run_table(&test, &cases);
    assert_eq!(stored(), all, "no lookup, so no expired entry deleted");
    assert_eq!(packets(&test, SHADOW_BLOCKLIST), 0);

    test.set_shadow_counts(0, 2);
    run_table(&test, &[v4(false), v4_blocked(false), v6(true)]);
    test.set_shadow_counts(2, 0);
    run_table(&test, &[v4(true), v4_blocked(true), v6(false)]);
    assert_eq!(stored(), all);

    test.set_shadow_counts(2, 2);
    let mut cases = vec![v4(true), v4_blocked(true), v6(true)];
    cases.extend(expired());
    run_table(&test, &cases);
    assert_eq!(
        stored(),
        ["198.18.74.0/24", "2001:db8:74::/48"],
        "looked up: the expired entries deleted"
    );
    assert_eq!(packets(&test, SHADOW_BLOCKLIST), 6);
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
