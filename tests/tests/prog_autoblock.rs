//! Table tests of automatic blocks through `BPF_PROG_TEST_RUN`
//! (`filter-ebpf/src/autoblock.rs`): the over-limit window, the block, its
//! precedence against the lists, and its expiry. Rates are set so low (one
//! packet per 1000 s) that no bucket refills while a test runs: a bucket
//! lets exactly `burst` packets through.

use std::time::Duration;

use filter_common::{
    ORIGIN_AUTO,
    reason::{ALLOWLIST, AUTOBLOCK, BLOCKLIST, PASS, RATELIMIT},
};
use filter_ctl::{
    control::{
        apply::{Desired, HeldEntry, apply},
        crowdsec::{Applier, Pulled},
    },
    spec::{
        crowdsec::{Ban, Pull},
        rule::{AutoblockSpec, LimitSpec},
    },
};
use filter_tests::{
    frames::{self, Frame, Ipv4, L4, ip4, proto},
    progtest::{Case, ProgTest, run_cases, run_table, skip_unless_root},
    rules::{assert_rule_counters, freeze, icmp4, tcp4, tcp6, udp4, udp6},
};

#[test]
fn rate_limit_then_autoblock() {
    if skip_unless_root("rate_limit_then_autoblock") {
        return;
    }
    let test = ProgTest::new();
    let hour = Duration::from_hours(1);
    let id = test.limit(
        "udp/5000",
        &LimitSpec {
            rate: Some(1),
            burst: Some(3),
            autoblock: Some(AutoblockSpec {
                after: 2,
                window: hour,
                block_for: hour,
            }),
            ..Default::default()
        },
    );
    freeze(&test, id, 3);
    let flooder = "198.18.20.1";
    let flooder6 = "2001:db8:20::1";
    let mut cases = Vec::new();
    for i in 1..=3 {
        cases.push(Case::new(
            format!("packet {i} within the burst"),
            udp4(flooder, 5000),
            PASS,
        ));
    }
    cases.extend([
        Case::new("over the limit (1)", udp4(flooder, 5000), RATELIMIT),
        Case::new("other port: no rule", udp4(flooder, 5001), PASS),
        Case::new("over the limit (2): blocks", udp4(flooder, 5000), RATELIMIT),
        Case::new("autoblocked: same port", udp4(flooder, 5000), AUTOBLOCK),
        Case::new("autoblocked: other port", tcp4(flooder, 80), AUTOBLOCK),
        Case::new("autoblocked: ICMP", icmp4(flooder), AUTOBLOCK),
        Case::new(
            "autoblocked: non-first fragment",
            Frame::ipv4(
                Ipv4::new(ip4(flooder), frames::DST4, L4::raw(proto::UDP, vec![1; 4]))
                    .fragment(9, false),
            )
            .build(),
            AUTOBLOCK,
        ),
        Case::new("neighbour: own bucket", udp4("198.18.20.2", 5000), PASS),
    ]);
    for i in 1..=3 {
        cases.push(Case::new(
            format!("IPv6 packet {i} within the burst (hosts of one /64)"),
            udp6(&format!("2001:db8:20::{i}"), 5000),
            PASS,
        ));
    }
    cases.extend([
        Case::new("IPv6 over the limit (1)", udp6(flooder6, 5000), RATELIMIT),
        Case::new(
            "IPv6 over the limit (2)",
            udp6("2001:db8:20::ffff", 5000),
            RATELIMIT,
        ),
        Case::new(
            "IPv6 /64 autoblocked",
            tcp6("2001:db8:20::abc", 443),
            AUTOBLOCK,
        ),
        Case::new("IPv6 next /64", udp6("2001:db8:20:1::1", 5000), PASS),
    ]);
    let model = run_table(&test, &cases);
    assert_rule_counters(&test, &model, &[0, id]);
    let auto: Vec<String> = test
        .autoblocks()
        .iter()
        .map(|(c, e)| {
            assert_eq!(e.origin, ORIGIN_AUTO);
            assert_eq!(u32::from(e.rule), id);
            assert_eq!(e.over_limit, 2);
            c.to_string()
        })
        .collect();
    assert_eq!(auto, ["198.18.20.1/32", "2001:db8:20::/64"]);

    // An allow entry beats the automatic block; the more specific automatic
    // block beats a covering manual block.
    test.allow(&[flooder]);
    test.block(&["2001:db8:20::/48", "198.18.20.0/24"]);
    let cases = vec![
        Case::new("allowlisted flooder", udp4(flooder, 5000), ALLOWLIST),
        Case::new(
            "automatic /64 inside a manual /48: the operator's block takes precedence",
            udp6(flooder6, 53),
            BLOCKLIST,
        ),
        Case::new(
            "manual /48 elsewhere",
            udp6("2001:db8:20:5::1", 53),
            BLOCKLIST,
        ),
        Case::new("manual /24", udp4("198.18.20.2", 5000), BLOCKLIST),
    ];
    run_table(&test, &cases);
}

/// The over-limit window restarts when an over-limit packet comes more than
/// the window after its start; only a full count within one window blocks.
#[test]
fn autoblock_window_restarts() {
    if skip_unless_root("autoblock_window_restarts") {
        return;
    }
    let test = ProgTest::new();
    let id = test.limit(
        "udp/7000",
        &LimitSpec {
            rate: Some(1),
            burst: Some(1),
            autoblock: Some(AutoblockSpec {
                after: 3,
                window: Duration::from_millis(300),
                block_for: Duration::from_hours(1),
            }),
            ..Default::default()
        },
    );
    freeze(&test, id, 1);
    let src = "198.18.70.1";
    let mut model = test.model();
    run_cases(
        &test,
        &mut model,
        &[
            Case::new("within the burst", udp4(src, 7000), PASS),
            Case::new("over (window starts, 1)", udp4(src, 7000), RATELIMIT),
            Case::new("over (2)", udp4(src, 7000), RATELIMIT),
        ],
    );
    std::thread::sleep(Duration::from_millis(500));
    run_cases(
        &test,
        &mut model,
        &[
            Case::new("over, window restarted (1)", udp4(src, 7000), RATELIMIT),
            Case::new("over (2)", udp4(src, 7000), RATELIMIT),
            Case::new("over (3): blocked", udp4(src, 7000), RATELIMIT),
            Case::new("autoblocked", udp4(src, 7000), AUTOBLOCK),
        ],
    );
}

/// After an automatic block expires the entry is dropped on the next lookup
/// and the source meets its (still exhausted) limit again.
#[test]
fn autoblock_expires() {
    if skip_unless_root("autoblock_expires") {
        return;
    }
    let test = ProgTest::new();
    let id = test.limit(
        "udp/7001",
        &LimitSpec {
            rate: Some(1),
            burst: Some(1),
            autoblock: Some(AutoblockSpec {
                after: 2,
                window: Duration::from_hours(1),
                block_for: Duration::from_millis(200),
            }),
            ..Default::default()
        },
    );
    freeze(&test, id, 1);
    let src = "198.18.71.1";
    let mut model = test.model();
    run_cases(
        &test,
        &mut model,
        &[
            Case::new("within the burst", udp4(src, 7001), PASS),
            Case::new("over (1)", udp4(src, 7001), RATELIMIT),
            Case::new("over (2): blocked", udp4(src, 7001), RATELIMIT),
            Case::new("autoblocked", icmp4(src), AUTOBLOCK),
        ],
    );
    std::thread::sleep(Duration::from_millis(400));
    run_cases(
        &test,
        &mut model,
        &[
            Case::new("block expired: other traffic passes", icmp4(src), PASS),
            Case::new(
                "block expired: over the limit (1, counting afresh)",
                udp4(src, 7001),
                RATELIMIT,
            ),
            Case::new(
                "over the limit (2): blocked again",
                udp4(src, 7001),
                RATELIMIT,
            ),
            Case::new("blocked again", udp4(src, 7001), AUTOBLOCK),
        ],
    );
    let blocks = test.autoblocks();
    assert_eq!(
        blocks.len(),
        1,
        "the expired automatic block is gone and exactly one new one is stored: {blocks:?}"
    );
}

/// A block lookup looks through at most four automatic blocks nested over
/// one source for an operator's block under them (`MAX_BLOCK_MATCHES`):
/// under four it is not reached (the automatic block drops), under three it
/// is. Expired entries the lookup skips (and deletes) are not matches.
#[test]
fn a_block_lookup_follows_four_automatic_matches() {
    if skip_unless_root("a_block_lookup_follows_four_automatic_matches") {
        return;
    }
    let test = ProgTest::new();
    // The operator's blocks in the tries, under the automatic ones: lengths
    // only the tries hold (an IPv4 /16 to /31 or an IPv6 /40 to /64 would be
    // in the host table, found before any trie lookup).
    test.block(&["198.18.0.0/15", "2001:db8::/36"]);
    test.block_raw(
        &[
            "198.18.76.0/29",
            "198.18.76.0/30",
            "198.18.76.0/31",
            "198.18.76.0/32",
            "198.18.77.0/28",
            "198.18.77.0/29",
            "198.18.77.0/30",
            "2001:db8:76::/64",
            "2001:db8:76::/96",
            "2001:db8:76::/120",
            "2001:db8:76::/128",
        ],
        ORIGIN_AUTO,
        0,
    );
    let gone = filter_ctl::clock::expiry_from_now(Some(Duration::from_millis(1)));
    test.block_raw(&["198.18.77.0/32", "198.18.77.0/31"], ORIGIN_AUTO, gone);
    std::thread::sleep(Duration::from_millis(50));
    let cases = vec![
        Case::new(
            "four automatic blocks over the operator's: not reached",
            udp4("198.18.76.0", 53),
            AUTOBLOCK,
        ),
        Case::new(
            "three automatic blocks, then the operator's",
            udp4("198.18.76.1", 53),
            BLOCKLIST,
        ),
        Case::new("the operator's alone", udp4("198.18.76.9", 53), BLOCKLIST),
        Case::new(
            "IPv6: four automatic blocks over the operator's",
            udp6("2001:db8:76::", 53),
            AUTOBLOCK,
        ),
        Case::new(
            "IPv6: three automatic blocks, then the operator's",
            udp6("2001:db8:76::1", 53),
            BLOCKLIST,
        ),
        Case::new(
            "two expired automatic blocks skipped, three active, then the operator's",
            udp4("198.18.77.0", 53),
            BLOCKLIST,
        ),
    ];
    run_table(&test, &cases);
}

/// An automatic block of a host (in the trie) and an operator's block of
/// the same host (in the host table): a CLI block replaces the automatic
/// one, as it did when both lived in the trie; a `CrowdSec` ban sits beside
/// it, decides while active, and when it expires and the sweep removes it
/// the automatic block is still there and still decides; an expired
/// automatic block under an active ban is swept too; writing an automatic
/// block for a host replaces the host's entry.
#[test]
fn a_blocked_host_and_its_automatic_block() {
    if skip_unless_root("a_blocked_host_and_its_automatic_block") {
        return;
    }
    let test = ProgTest::new();
    let hour = filter_ctl::clock::expiry_from_now(Some(Duration::from_hours(1)));
    let listed = || -> Vec<(String, u8)> {
        test.reader()
            .list_entries_raw(filter_ctl::maps::ListKind::Block)
            .expect("reading the blocklist")
            .iter()
            .map(|(c, e)| (c.to_string(), e.origin))
            .collect()
    };

    // A CLI block replaces the automatic block of the host.
    test.block_raw(&["198.18.78.1/32"], ORIGIN_AUTO, hour);
    run_table(
        &test,
        &[Case::new(
            "automatic block",
            udp4("198.18.78.1", 53),
            AUTOBLOCK,
        )],
    );
    test.block(&["198.18.78.1"]);
    assert_eq!(
        listed(),
        [("198.18.78.1/32".to_string(), filter_common::ORIGIN_CLI)],
        "one entry, the operator's"
    );
    run_table(
        &test,
        &[Case::new(
            "operator's block",
            udp4("198.18.78.1", 53),
            BLOCKLIST,
        )],
    );
    test.filter()
        .unblock(&["198.18.78.1".parse().expect("cidr")])
        .expect("unblocking");
    assert!(listed().is_empty(), "{:?}", listed());
    run_table(
        &test,
        &[Case::new("unblocked", udp4("198.18.78.1", 53), PASS)],
    );

    // A CrowdSec ban of an automatically blocked host sits beside it.
    test.block_raw(&["198.18.78.2/32"], ORIGIN_AUTO, hour);
    let cidr: filter_ctl::spec::cidr::Cidr = "198.18.78.2".parse().expect("cidr");
    let ban = filter_common::ListEntry {
        expires_at_ns: filter_ctl::clock::expiry_from_now(Some(Duration::from_millis(1))),
        prefix_len: 32,
        origin: filter_common::ORIGIN_CROWDSEC,
        ..filter_common::ListEntry::default()
    };
    test.filter()
        .write_entries(filter_ctl::maps::Tries::Block, &[(cidr, ban)])
        .expect("writing a ban");
    assert_eq!(
        listed().len(),
        2,
        "the ban and the automatic block: {:?}",
        listed()
    );
    std::thread::sleep(Duration::from_millis(50));
    run_table(
        &test,
        &[Case::new(
            "the ban expired: the automatic block decides",
            udp4("198.18.78.2", 53),
            AUTOBLOCK,
        )],
    );
    test.sweep_expired();
    assert_eq!(
        listed(),
        [("198.18.78.2/32".to_string(), ORIGIN_AUTO)],
        "the sweep removed the ban, not the automatic block"
    );
    run_table(
        &test,
        &[Case::new(
            "still automatically blocked",
            udp4("198.18.78.2", 53),
            AUTOBLOCK,
        )],
    );

    // An expired automatic block under an active ban: the program never
    // looks past the ban in the table, so the sweep deletes it.
    test.block_raw(
        &["198.18.78.3/32"],
        ORIGIN_AUTO,
        filter_ctl::clock::expiry_from_now(Some(Duration::from_millis(1))),
    );
    let ban_for_an_hour = filter_common::ListEntry {
        expires_at_ns: hour,
        ..ban
    };
    let third: filter_ctl::spec::cidr::Cidr = "198.18.78.3".parse().expect("cidr");
    test.filter()
        .write_entries(filter_ctl::maps::Tries::Block, &[(third, ban_for_an_hour)])
        .expect("writing a ban");
    std::thread::sleep(Duration::from_millis(50));
    test.sweep_expired();
    assert!(
        listed().contains(&("198.18.78.3/32".to_string(), filter_common::ORIGIN_CROWDSEC))
            && !listed().contains(&("198.18.78.3/32".to_string(), ORIGIN_AUTO)),
        "the sweep removed the expired automatic block under the ban: {:?}",
        listed()
    );

    // Writing an automatic block for a host (a policy giving a prefix back
    // to what it held) replaces the host's entry, as one trie did.
    let auto = filter_common::ListEntry {
        expires_at_ns: hour,
        prefix_len: 32,
        origin: ORIGIN_AUTO,
        ..filter_common::ListEntry::default()
    };
    test.filter()
        .write_entries(filter_ctl::maps::Tries::Block, &[(third, auto)])
        .expect("writing an automatic block");
    assert!(
        listed().contains(&("198.18.78.3/32".to_string(), ORIGIN_AUTO))
            && !listed().contains(&("198.18.78.3/32".to_string(), filter_common::ORIGIN_CROWDSEC)),
        "the automatic block replaced the ban: {:?}",
        listed()
    );
    run_table(
        &test,
        &[Case::new(
            "automatically blocked again",
            udp4("198.18.78.3", 53),
            AUTOBLOCK,
        )],
    );
}

/// A `CrowdSec` ban of an automatically blocked host goes in beside the
/// automatic block (it outlasts it), and still decides once the automatic
/// block has expired; a ban of a prefix an operator blocks is held back.
#[test]
fn a_crowdsec_ban_of_an_automatically_blocked_host() {
    if skip_unless_root("a_crowdsec_ban_of_an_automatically_blocked_host") {
        return;
    }
    let test = ProgTest::new();
    test.block_raw(
        &["198.18.79.1/32"],
        ORIGIN_AUTO,
        filter_ctl::clock::expiry_from_now(Some(Duration::from_millis(300))),
    );
    test.block(&["198.18.79.2"]);
    let ban = |ip: &str| Ban {
        cidr: ip.parse().expect("cidr"),
        ttl: Duration::from_hours(4),
    };
    let dir = std::env::temp_dir().join(format!("filter-test-ban-{}", std::process::id()));
    let state = filter_ctl::state::StateDir::open(&dir).expect("state");
    let live = filter_ctl::state::LiveState::load(&state, false).expect("live state");
    let outcome = Applier::new(&live)
        .apply(
            &test.filter(),
            None,
            &Pulled {
                pull: Pull {
                    bans: vec![ban("198.18.79.1"), ban("198.18.79.2")],
                    ..Pull::default()
                },
                startup: false,
            },
        )
        .expect("applying the pull");
    assert_eq!(
        (outcome.added, outcome.held),
        (1, 1),
        "the automatically blocked host banned, the operator's held"
    );
    let origins = |ip: &str| -> Vec<u8> {
        test.reader()
            .list_entries_raw(filter_ctl::maps::ListKind::Block)
            .expect("reading the blocklist")
            .iter()
            .filter(|(c, _)| c.to_string() == format!("{ip}/32"))
            .map(|(_, e)| e.origin)
            .collect()
    };
    assert_eq!(
        origins("198.18.79.1"),
        [filter_common::ORIGIN_CROWDSEC, ORIGIN_AUTO]
    );
    assert_eq!(origins("198.18.79.2"), [filter_common::ORIGIN_CLI]);
    std::thread::sleep(Duration::from_millis(400));
    run_table(
        &test,
        &[
            Case::new(
                "the ban outlasts the automatic block",
                udp4("198.18.79.1", 53),
                BLOCKLIST,
            ),
            Case::new("the operator's block", udp4("198.18.79.2", 53), BLOCKLIST),
        ],
    );
    std::fs::remove_dir_all(&dir).expect("removing the state directory");
}

/// The origins of the blocklist's entries at exactly `cidr` (the table's
/// and the tries'), sorted.
fn origins_at(test: &ProgTest, cidr: &str) -> Vec<u8> {
    let mut origins: Vec<u8> = test
        .reader()
        .list_entries_raw(filter_ctl::maps::ListKind::Block)
        .expect("reading the blocklist")
        .iter()
        .filter(|(c, _)| c.to_string() == cidr)
        .map(|(_, e)| e.origin)
        .collect();
    origins.sort_unstable();
    origins
}

/// `unblock` of an address lifts the automatic block of its aggregate (an
/// IPv6 /64 by default) from the trie, and leaves alone a `CrowdSec` ban of
/// that same /64, which lives beside it in the host table: the address
/// stays blocked by the ban. (The ban was once removed instead, and the
/// automatic block kept.)
#[test]
fn unblock_lifts_an_automatic_block_not_a_ban_of_the_same_prefix() {
    if skip_unless_root("unblock_lifts_an_automatic_block_not_a_ban_of_the_same_prefix") {
        return;
    }
    let test = ProgTest::new();
    let hour = filter_ctl::clock::expiry_from_now(Some(Duration::from_hours(1)));
    test.block_raw(&["2001:db8:7a:1::/64"], ORIGIN_AUTO, hour);
    let dir = std::env::temp_dir().join(format!("filter-test-unblock-{}", std::process::id()));
    let state = filter_ctl::state::StateDir::open(&dir).expect("state");
    let live = filter_ctl::state::LiveState::load(&state, false).expect("live state");
    Applier::new(&live)
        .apply(
            &test.filter(),
            None,
            &Pulled {
                pull: Pull {
                    bans: vec![Ban {
                        cidr: "2001:db8:7a:1::/64".parse().expect("cidr"),
                        ttl: Duration::from_hours(4),
                    }],
                    ..Pull::default()
                },
                startup: false,
            },
        )
        .expect("applying the pull");
    let origins = || origins_at(&test, "2001:db8:7a:1::/64");
    assert_eq!(
        origins(),
        [ORIGIN_AUTO, filter_common::ORIGIN_CROWDSEC],
        "the ban beside the automatic block"
    );
    let unblocked = test
        .filter()
        .unblock(&["2001:db8:7a:1::5".parse().expect("cidr")])
        .expect("unblocking the address");
    // Reported as lifted, not removed: the CLI records only the automatic
    // block as gone, and keeps any entry of its own at the /64.
    assert!(unblocked.removed.is_empty(), "{unblocked:?}");
    assert_eq!(
        unblocked
            .lifted
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["2001:db8:7a:1::/64"]
    );
    assert_eq!(
        origins(),
        [filter_common::ORIGIN_CROWDSEC],
        "the automatic block lifted, the ban kept"
    );
    let config = test.reader().config().expect("CONFIG");
    assert_eq!((config.block_hosts, config.table_prefixes), (1, 1));
    run_table(
        &test,
        &[Case::new(
            "the ban still blocks the address",
            udp6("2001:db8:7a:1::5", 53),
            BLOCKLIST,
        )],
    );
    std::fs::remove_dir_all(&dir).expect("removing the state directory");
}

/// A /64 a policy held goes back, when the policy drops it, to every live
/// entry held for it: the operator's block (into the host table) and the
/// automatic block of the same /64 (into the trie), both still in force.
#[test]
fn a_prefix_leaving_the_policy_gets_back_both_held_entries() {
    if skip_unless_root("a_prefix_leaving_the_policy_gets_back_both_held_entries") {
        return;
    }
    let test = ProgTest::new();
    let prefix: filter_ctl::spec::cidr::Cidr = "2001:db8:7b:1::/64".parse().expect("cidr");
    let mut with = Desired::default();
    with.block.insert(prefix);
    let filter = test.filter();
    apply(&filter, None, &with, &[]).expect("applying a policy with the /64");
    let hour = filter_ctl::clock::expiry_from_now(Some(Duration::from_hours(1)));
    let held = [filter_common::ORIGIN_CLI, ORIGIN_AUTO].map(|origin| HeldEntry {
        kind: filter_ctl::maps::Tries::Block,
        cidr: prefix,
        origin,
        expires_at_ns: hour,
        rule: 0,
    });
    apply(&filter, Some(&with), &Desired::default(), &held).expect("dropping the /64");
    assert_eq!(
        origins_at(&test, "2001:db8:7b:1::/64"),
        [filter_common::ORIGIN_CLI, ORIGIN_AUTO],
        "both held entries back"
    );
    // The operator's in the table (the policy's slot, taken over), the
    // automatic block in the trie.
    let config = test.reader().config().expect("CONFIG");
    assert_eq!((config.block_hosts, config.table_prefixes), (1, 1));
    run_table(
        &test,
        &[Case::new(
            "the operator's block decides",
            udp6("2001:db8:7b:1::5", 53),
            BLOCKLIST,
        )],
    );
}
