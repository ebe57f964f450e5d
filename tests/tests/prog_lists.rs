//! Table tests of the allow and block lists through `BPF_PROG_TEST_RUN`:
//! no protocol, fragment or extension header slips past a block, allow beats
//! block, prefixes, and expired entries.

use std::time::Duration;

use filter_common::reason::{ALLOWLIST, BLOCKLIST, MALFORMED, NON_IP, PASS};
use filter_ctl::maps::hosts::TableKey;
use filter_tests::{
    frames::{self, DST4, DST6, Ext, Frame, Ipv4, Ipv6, L4, ip4, ip6, proto},
    progtest::{Case, ProgTest, run_table, skip_unless_root},
};

/// The blocklist's entries (tries and host table), expired ones too.
fn blocklist(test: &ProgTest) -> Vec<String> {
    test.reader()
        .list_entries_raw(filter_ctl::maps::ListKind::Block)
        .expect("reading the blocklist")
        .iter()
        .map(|(c, _)| c.to_string())
        .collect()
}

/// Every kind of IPv4 packet from `src`, described.
fn every_v4(src: [u8; 4], label: &str) -> Vec<(String, Vec<u8>)> {
    let raw = |p: u8, bytes: &[u8]| Ipv4::new(src, DST4, L4::raw(p, bytes.to_vec()));
    [
        ("UDP", frames::udp4(src, 53)),
        ("TCP", frames::tcp4(src, 22)),
        ("ICMP", frames::icmp4(src)),
        ("GRE", raw(proto::GRE, &[0, 0, 0x08, 0])),
        ("ESP", raw(proto::ESP, &[0, 0, 1, 0, 0, 0, 0, 1])),
        ("SCTP", raw(proto::SCTP, &[0; 12])),
        ("protocol 253", raw(253, &[])),
        (
            "non-first fragment",
            raw(proto::TCP, &[1, 2, 3]).fragment(5, false),
        ),
        ("first fragment", frames::udp4(src, 53).fragment(0, true)),
        ("options", frames::tcp4(src, 80).nop_options(3)),
    ]
    .into_iter()
    .map(|(what, ip)| (format!("{label}: IPv4 {what}"), Frame::ipv4(ip).build()))
    .collect()
}

/// Every kind of IPv6 packet from `src`, described.
fn every_v6(src: [u8; 16], label: &str) -> Vec<(String, Vec<u8>)> {
    let raw = |p: u8, bytes: &[u8]| Ipv6::new(src, DST6, L4::raw(p, bytes.to_vec()));
    [
        ("UDP", frames::udp6(src, 53)),
        ("TCP", frames::tcp6(src, 22)),
        ("ICMPv6", frames::icmp6(src)),
        ("GRE", raw(proto::GRE, &[0, 0, 0x86, 0xdd])),
        ("ESP", raw(proto::ESP, &[0, 0, 1, 0, 0, 0, 0, 1])),
        ("no next header", raw(proto::NO_NEXT, &[0; 8])),
        ("next header 253", raw(253, &[0])),
        (
            "non-first fragment",
            raw(proto::TCP, &[1, 2, 3]).ext(Ext::fragment(5, false, 1)),
        ),
        (
            "first fragment",
            frames::udp6(src, 53).ext(Ext::fragment(0, true, 1)),
        ),
        (
            "extension chain",
            frames::tcp6(src, 80)
                .ext(Ext::hop_by_hop(0))
                .ext(Ext::routing(0))
                .ext(Ext::dest_opts(1)),
        ),
    ]
    .into_iter()
    .map(|(what, ip)| (format!("{label}: IPv6 {what}"), Frame::ipv6(ip).build()))
    .collect()
}

fn all(frames: Vec<(String, Vec<u8>)>, reason: u32) -> Vec<Case> {
    frames
        .into_iter()
        .map(|(what, frame)| Case::new(what, frame, reason))
        .collect()
}

#[test]
fn nothing_slips_past_a_block() {
    if skip_unless_root("nothing_slips_past_a_block") {
        return;
    }
    let test = ProgTest::new();
    test.block(&[
        "198.18.1.1",
        "198.18.2.0/24",
        "2001:db8:bad::/48",
        "2001:db8:1::1",
    ]);
    let mut cases = Vec::new();
    cases.extend(all(every_v4(ip4("198.18.1.1"), "blocked host"), BLOCKLIST));
    cases.extend(all(every_v4(ip4("198.18.2.77"), "blocked /24"), BLOCKLIST));
    cases.extend(all(
        every_v6(ip6("2001:db8:1::1"), "blocked host"),
        BLOCKLIST,
    ));
    cases.extend(all(
        every_v6(ip6("2001:db8:bad:ffff::9"), "blocked /48"),
        BLOCKLIST,
    ));
    cases.extend(all(every_v4(ip4("198.18.1.2"), "neighbour host"), PASS));
    cases.extend(all(every_v4(ip4("198.18.3.0"), "next /24"), PASS));
    cases.extend(all(every_v6(ip6("2001:db8:bae::1"), "next /48"), PASS));
    cases.extend(all(every_v6(ip6("2001:db8:1::2"), "neighbour host"), PASS));
    cases.extend(all(
        every_v4(ip4("198.18.1.1"), "blocked host in a VLAN")
            .into_iter()
            .map(|(what, frame)| {
                let mut tagged = frame[..12].to_vec();
                tagged.extend_from_slice(&[0x81, 0, 0, 7]);
                tagged.extend_from_slice(&frame[12..]);
                (what, tagged)
            })
            .collect(),
        BLOCKLIST,
    ));
    cases.extend([
        Case::new(
            "blocked host, malformed (parsing comes first)",
            Frame::ipv4(frames::udp4(ip4("198.18.1.1"), 53).ihl(4)).build(),
            MALFORMED,
        ),
        Case::new("ARP from a blocked address", frames::arp().build(), NON_IP),
        Case::new(
            "IPv4-mapped IPv6 source (never on the wire; would alias the IPv4 host)",
            Frame::ipv6(frames::udp6(ip6("::ffff:198.18.1.1"), 53)).build(),
            MALFORMED,
        ),
        Case::new(
            "blocked IPv4 host as destination only",
            Frame::ipv4(Ipv4::new(
                ip4("198.18.9.9"),
                ip4("198.18.1.1"),
                frames::Udp::new(1, 2).into(),
            ))
            .build(),
            PASS,
        ),
    ]);
    run_table(&test, &cases);
}

#[test]
fn allow_beats_block() {
    if skip_unless_root("allow_beats_block") {
        return;
    }
    let test = ProgTest::new();
    test.block(&["198.18.0.0/16", "2001:db8::/32", "198.18.4.4"]);
    test.allow(&["198.18.4.0/24", "2001:db8:a11::/48", "2001:db8:a11::1"]);
    let mut cases = Vec::new();
    cases.extend(all(
        every_v4(ip4("198.18.4.9"), "allowed /24 in blocked /16"),
        ALLOWLIST,
    ));
    cases.extend(all(
        every_v4(ip4("198.18.4.4"), "allowed /24 over a blocked /32"),
        ALLOWLIST,
    ));
    cases.extend(all(
        every_v6(ip6("2001:db8:a11::1"), "allowed host"),
        ALLOWLIST,
    ));
    cases.extend(all(
        every_v6(ip6("2001:db8:a11:1::1"), "allowed /48"),
        ALLOWLIST,
    ));
    cases.extend(all(every_v4(ip4("198.18.5.1"), "blocked /16"), BLOCKLIST));
    cases.extend(all(
        every_v6(ip6("2001:db8:a12::1"), "blocked /32"),
        BLOCKLIST,
    ));
    cases.push(Case::new(
        "allowed but malformed",
        Frame::ipv6(frames::udp6(ip6("2001:db8:a11::1"), 53).payload_length(0)).build(),
        MALFORMED,
    ));
    run_table(&test, &cases);
}

#[test]
fn expiring_entries() {
    if skip_unless_root("expiring_entries") {
        return;
    }
    let test = ProgTest::new();
    let gone = Duration::from_millis(1);
    let hour = Duration::from_hours(1);
    // Expired: plain host entries.
    test.block_ttl(&["198.19.6.6", "2001:db8:6::6"], gone);
    test.allow_ttl(&["198.18.7.7"], gone);
    test.block(&["198.18.7.0/24"]);
    // Expired longest matches over a permanent covering prefix.
    test.block(&["198.18.8.0/24", "2001:db8:8::/48"]);
    test.block_ttl(&["198.18.8.8", "2001:db8:8::8"], gone);
    // Four nested expired entries over a permanent /16, all in the host
    // table (whose probes skip expired entries, every length in turn).
    test.block(&["198.18.0.0/16"]);
    test.block_ttl(
        &[
            "198.18.9.0/24",
            "198.18.9.0/26",
            "198.18.9.0/28",
            "198.18.9.0/30",
        ],
        gone,
    );
    // Two nested expired entries over a permanent /36, all of lengths only
    // the tries hold (whose lookups delete expired matches).
    test.block(&["2001:db8:9000::/36"]);
    test.block_ttl(&["2001:db8:9000::/72", "2001:db8:9000::/96"], gone);
    // Far in the future.
    test.block_ttl(&["198.18.10.10", "2001:db8:10::/64"], hour);
    std::thread::sleep(Duration::from_millis(50));
    // 198.18.0.0/16 covers everything below; use 198.19.x.x for "no match".
    let cases = vec![
        Case::new(
            "expired IPv4 block",
            Frame::ipv4(frames::udp4(ip4("198.19.6.6"), 53)).build(),
            PASS,
        ),
        Case::new(
            "expired IPv6 block",
            Frame::ipv6(frames::udp6(ip6("2001:db8:6::6"), 53)).build(),
            PASS,
        ),
        Case::new(
            "expired allow inside a blocked /24",
            Frame::ipv4(frames::udp4(ip4("198.18.7.7"), 53)).build(),
            BLOCKLIST,
        ),
        Case::new(
            "expired /32 inside a permanent /24",
            Frame::ipv4(frames::udp4(ip4("198.18.8.8"), 53)).build(),
            BLOCKLIST,
        ),
        Case::new(
            "expired /128 inside a permanent /48",
            Frame::ipv6(frames::udp6(ip6("2001:db8:8::8"), 53)).build(),
            BLOCKLIST,
        ),
        Case::new(
            "expired /128 again (deleted by the first lookup)",
            Frame::ipv6(frames::udp6(ip6("2001:db8:8::8"), 53)).build(),
            BLOCKLIST,
        ),
        Case::new(
            "four nested expired entries inside a permanent /16",
            Frame::ipv4(frames::udp4(ip4("198.18.9.1"), 53)).build(),
            BLOCKLIST,
        ),
        Case::new(
            "two nested expired trie entries inside a permanent /36",
            Frame::ipv6(frames::udp6(ip6("2001:db8:9000::1"), 53)).build(),
            BLOCKLIST,
        ),
        Case::new(
            "block for an hour, IPv4",
            Frame::ipv4(frames::udp4(ip4("198.18.10.10"), 53)).build(),
            BLOCKLIST,
        ),
        Case::new(
            "block for an hour, IPv6 /64",
            Frame::ipv6(frames::udp6(ip6("2001:db8:10::abcd"), 53)).build(),
            BLOCKLIST,
        ),
        Case::new(
            "outside every entry",
            Frame::ipv4(frames::udp4(ip4("198.19.0.9"), 53)).build(),
            PASS,
        ),
    ];
    run_table(&test, &cases);
    // Expired entries the program met are gone from the tries. Expired
    // hosts and prefixes in `BLOCK_HOSTS` were skipped and stay for the sweep.
    let stored = || blocklist(&test);
    let left = stored();
    for deleted in ["2001:db8:9000::/96", "2001:db8:9000::/72"] {
        assert!(
            !left.iter().any(|c| c == deleted),
            "{deleted} expired and was looked up, yet is still stored: {left:?}"
        );
    }
    let hosts = [
        "198.18.8.8/32",
        "2001:db8:8::8/128",
        "198.19.6.6/32",
        "198.18.9.0/24",
        "198.18.9.0/26",
        "198.18.9.0/28",
        "198.18.9.0/30",
    ];
    for host in hosts {
        assert!(
            left.iter().any(|c| c == host),
            "{host}: an expired entry stays in the table until the sweep: {left:?}"
        );
    }
    test.sweep_expired();
    let left = stored();
    for host in hosts {
        assert!(
            !left.iter().any(|c| c == host),
            "{host} expired and was swept, yet is still stored: {left:?}"
        );
    }
    assert!(left.iter().any(|c| c == "198.18.10.10/32"), "{left:?}");
}

/// More than four nested expired entries in a trie: the lookup skips (and
/// deletes) four, deletes the fifth too but gives up, so one packet from
/// inside a permanently blocked prefix passes; the next one is blocked.
/// (IPv6 lengths only the tries hold: a /32 around /72 to /127s.)
#[test]
fn five_nested_expired_entries() {
    if skip_unless_root("five_nested_expired_entries") {
        return;
    }
    let test = ProgTest::new();
    test.block(&["2001:db8::/32"]);
    test.block_ttl(
        &[
            "2001:db8:9::/72",
            "2001:db8:9::/80",
            "2001:db8:9::/96",
            "2001:db8:9::/112",
            "2001:db8:9::/127",
        ],
        Duration::from_millis(1),
    );
    std::thread::sleep(Duration::from_millis(50));
    let frame = Frame::ipv6(frames::udp6(ip6("2001:db8:9::"), 53)).build();
    let stored = || blocklist(&test);
    run_table(
        &test,
        &[Case::new(
            "five nested expired entries",
            frame.clone(),
            PASS,
        )],
    );
    assert_eq!(
        stored(),
        ["2001:db8::/32"],
        "all five expired entries deleted"
    );
    run_table(
        &test,
        &[Case::new("the same source again", frame, BLOCKLIST)],
    );
    assert_eq!(stored(), ["2001:db8::/32"]);
}

/// The blocklist's prefixes of the table's lengths (IPv4 /16 to /31, IPv6
/// /40 to /64) live in `BLOCK_HOSTS` beside its hosts, keyed by (address,
/// prefix length): a /24 and its first host are two entries, each blocked
/// and removed on its own; several lengths may share a region (nested or
/// not), and an IPv6 prefix wider than a /48 covers each of its /48s. The
/// program probes for prefixes only while the table holds some
/// (`Config::table_prefixes`), and lengths the table does not hold stay in
/// the tries.
#[test]
fn table_prefixes_beside_hosts() {
    if skip_unless_root("table_prefixes_beside_hosts") {
        return;
    }
    let test = ProgTest::new();
    let config = || test.reader().config().expect("CONFIG");
    let in_table = |cidr: &str| {
        let cidr: filter_ctl::spec::cidr::Cidr = cidr.parse().expect("cidr");
        let key = filter_ctl::maps::hosts::table_key(&cidr).expect("a table length");
        test.reader()
            .host_table()
            .expect("BLOCK_HOSTS")
            .find(&key)
            .expect("reading BLOCK_HOSTS")
            .is_some()
    };
    let v4 = |ip: &str| Frame::ipv4(frames::udp4(ip4(ip), 53)).build();
    let v6 = |ip: &str| Frame::ipv6(frames::udp6(ip6(ip), 53)).build();
    let table = [
        "198.18.50.0/24",
        "198.18.50.0/32",
        "2001:db8:51::/48",
        "2001:db8:52:1::/64",
        "2001:db8:52:1::/128",
        "198.18.53.0/25",
        "2001:db8:54::/56",
        "198.18.64.0/20",
        "198.18.66.0/23",
        "2001:db8:60::/44",
    ];
    // Lengths only the tries hold: an IPv6 /36 and /72.
    let tries = ["2001:db8:f000::/36", "2001:db8:55:1::/72"];
    test.block(&[&table[..], &tries[..]].concat());
    for cidr in table {
        assert!(in_table(cidr), "{cidr} is in the table");
    }
    assert_eq!(config().block_hosts, 10);
    assert_eq!(config().table_prefixes, 8);
    let mut listed = blocklist(&test);
    listed.sort();
    let mut expected: Vec<String> = [&table[..], &tries[..]]
        .concat()
        .iter()
        .map(|c| (*c).to_string())
        .collect();
    expected.sort();
    assert_eq!(listed, expected, "each entry listed once, as given");
    run_table(
        &test,
        &[
            Case::new("a /24's first host", v4("198.18.50.0"), BLOCKLIST),
            Case::new("inside a /24", v4("198.18.50.200"), BLOCKLIST),
            Case::new("next to a /24", v4("198.18.49.255"), PASS),
            Case::new("inside a /25", v4("198.18.53.127"), BLOCKLIST),
            Case::new("past a /25", v4("198.18.53.128"), PASS),
            Case::new("inside a /20", v4("198.18.79.255"), BLOCKLIST),
            Case::new("inside a /23 inside the /20", v4("198.18.67.1"), BLOCKLIST),
            Case::new("past a /20", v4("198.18.80.0"), PASS),
            Case::new("inside a /48", v6("2001:db8:51:ffff::1"), BLOCKLIST),
            Case::new("next to a /48", v6("2001:db8:50:ffff::1"), PASS),
            Case::new("inside a /64", v6("2001:db8:52:1::9"), BLOCKLIST),
            Case::new("next to a /64", v6("2001:db8:52:2::9"), PASS),
            Case::new("inside a /56", v6("2001:db8:54:ff::1"), BLOCKLIST),
            Case::new("a /44's first /48", v6("2001:db8:60::1"), BLOCKLIST),
            Case::new("a /44's last /48", v6("2001:db8:6f:ffff::1"), BLOCKLIST),
            Case::new("past a /44", v6("2001:db8:70::1"), PASS),
            Case::new("inside a /36 (trie)", v6("2001:db8:f123::1"), BLOCKLIST),
            Case::new("inside a /72 (trie)", v6("2001:db8:55:1:ff::1"), BLOCKLIST),
            Case::new("past a /72", v6("2001:db8:55:1:100::1"), PASS),
        ],
    );

    // The /20 out: the /23 inside it stays blocked.
    let unblock = |cidrs: &[&str]| {
        let cidrs: Vec<filter_ctl::spec::cidr::Cidr> =
            cidrs.iter().map(|c| c.parse().expect("cidr")).collect();
        test.filter().unblock(&cidrs).expect("unblocking");
    };
    unblock(&[
        "198.18.64.0/20",
        "198.18.53.0/25",
        "2001:db8:54::/56",
        "2001:db8:60::/44",
    ]);
    assert_eq!(config().table_prefixes, 4);
    run_table(
        &test,
        &[
            Case::new("the /23, still blocked", v4("198.18.67.1"), BLOCKLIST),
            Case::new("the rest of the /20", v4("198.18.79.255"), PASS),
            Case::new("the /25, unblocked", v4("198.18.53.1"), PASS),
            Case::new("the /56, unblocked", v6("2001:db8:54:ff::1"), PASS),
            Case::new("the /44, unblocked", v6("2001:db8:6f:ffff::1"), PASS),
        ],
    );
    unblock(&["198.18.66.0/23", "2001:db8:f000::/36", "2001:db8:55:1::/72"]);

    // The /24 out: its first host stays blocked, the rest of it passes.
    unblock(&["198.18.50.0/24", "2001:db8:52:1::/64"]);
    assert!(!in_table("198.18.50.0/24") && in_table("198.18.50.0/32"));
    assert_eq!(config().table_prefixes, 1);
    run_table(
        &test,
        &[
            Case::new(
                "the first host, still blocked",
                v4("198.18.50.0"),
                BLOCKLIST,
            ),
            Case::new("the rest of the /24", v4("198.18.50.1"), PASS),
            Case::new("the /64's host", v6("2001:db8:52:1::"), BLOCKLIST),
            Case::new("the rest of the /64", v6("2001:db8:52:1::9"), PASS),
        ],
    );

    // Everything out: both counts at 0, nothing blocked.
    unblock(&["198.18.50.0", "2001:db8:51::/48", "2001:db8:52:1::"]);
    assert!(blocklist(&test).is_empty(), "{:?}", blocklist(&test));
    assert_eq!((config().block_hosts, config().table_prefixes), (0, 0));
    run_table(
        &test,
        &[
            Case::new("a /24's host, unblocked", v4("198.18.50.7"), PASS),
            Case::new("a /48's host, unblocked", v6("2001:db8:51::7"), PASS),
        ],
    );

    // Counts above the truth (an edit killed between raising them and
    // writing): the sweep finds them high and sets them to the table's.
    test.block(&["198.18.55.0/24", "198.18.55.5"]);
    let sweep_and_resync = || {
        let filter = test.filter();
        let sweep = filter.sweep_scan().expect("sweep scan");
        filter
            .resync_table_counts(&sweep)
            .expect("resyncing the counts")
    };
    assert!(!sweep_and_resync(), "counts that match change nothing");
    test.filter()
        .update_config(|c| {
            c.block_hosts += 5;
            c.table_prefixes += 3;
            Ok(())
        })
        .expect("raising the counts");
    assert!(sweep_and_resync(), "counts above the table's lowered");
    assert_eq!((config().block_hosts, config().table_prefixes), (2, 1));
    run_table(
        &test,
        &[Case::new(
            "a /24 after the resync",
            v4("198.18.55.9"),
            BLOCKLIST,
        )],
    );
}

/// Blocked hosts live in `BLOCK_HOSTS`, four to a set; a host whose set is
/// full goes into the trie, and once a set has overflowed its new hosts go
/// there too (a host missing from such a set may be in the trie: never two
/// places). Every host stays blocked wherever it lives, each is listed once,
/// and removing them all empties the table and its count.
#[test]
fn hosts_overflow_into_the_trie() {
    if skip_unless_root("hosts_overflow_into_the_trie") {
        return;
    }
    let test = ProgTest::new();
    let config = test.reader().config().expect("CONFIG");
    // Seven lab hosts that share one set of the table.
    let set_of = |ip: std::net::Ipv4Addr| {
        let key = filter_common::host_key_v4(ip.octets());
        filter_common::host_set(
            config.host_seed,
            config.host_mask,
            128,
            &filter_common::source_words(&key),
        )
    };
    let first = std::net::Ipv4Addr::new(198, 18, 40, 1);
    let target = set_of(first);
    let same_set: Vec<String> = (0..65_536u32)
        .map(|n| std::net::Ipv4Addr::from(u32::from(first) + n))
        .filter(|ip| set_of(*ip) == target)
        .take(7)
        .map(|ip| ip.to_string())
        .collect();
    assert_eq!(same_set.len(), 7, "seven hosts of one set in a /16");
    let hosts: Vec<&str> = same_set.iter().map(String::as_str).collect();
    let frame = |ip: &str| Frame::ipv4(frames::udp4(ip4(ip), 53)).build();
    let in_table = |ip: &str| {
        let filter = test.reader();
        let table = filter.host_table().expect("BLOCK_HOSTS");
        table
            .find(&TableKey::v4_host(ip4(ip)))
            .expect("reading BLOCK_HOSTS")
            .is_some()
    };
    let listed = || blocklist(&test);

    // Six hosts: four fill the set, two go to the trie.
    test.block(&hosts[..6]);
    let placed: Vec<bool> = hosts[..6].iter().map(|h| in_table(h)).collect();
    assert_eq!(placed.iter().filter(|&&t| t).count(), 4, "{placed:?}");
    let blocked: Vec<Case> = hosts[..6]
        .iter()
        .map(|h| Case::new(format!("{h}, blocked"), frame(h), BLOCKLIST))
        .collect();
    run_table(&test, &blocked);
    assert_eq!(listed().len(), 6, "each host listed once: {:?}", listed());
    assert_eq!(test.reader().config().expect("CONFIG").block_hosts, 4);

    // Free a slot: the set has overflowed, so a new host still goes to
    // the trie, and a host in the trie is updated there, not copied.
    let table_host = hosts[..6]
        .iter()
        .zip(&placed)
        .find(|(_, t)| **t)
        .map(|(h, _)| *h)
        .expect("a host in the table");
    let trie_host = hosts[..6]
        .iter()
        .zip(&placed)
        .find(|(_, t)| !**t)
        .map(|(h, _)| *h)
        .expect("a host in the trie");
    test.filter()
        .unblock(&[table_host.parse().expect("cidr")])
        .expect("unblocking a host in the table");
    test.block(&[hosts[6]]);
    test.block_ttl(&[trie_host], Duration::from_hours(1));
    assert!(
        !in_table(hosts[6]),
        "a new host of an overflowed set goes to the trie"
    );
    assert!(!in_table(trie_host), "a host in the trie stays there");
    assert_eq!(listed().len(), 6, "each host listed once: {:?}", listed());
    let mut cases = vec![Case::new(
        format!("{table_host}, unblocked"),
        frame(table_host),
        PASS,
    )];
    cases.extend(
        hosts
            .iter()
            .filter(|h| **h != table_host)
            .map(|h| Case::new(format!("{h}, blocked"), frame(h), BLOCKLIST)),
    );
    run_table(&test, &cases);

    // Everything out: nothing blocked, nothing listed, the count at 0.
    let all: Vec<filter_ctl::spec::cidr::Cidr> = hosts
        .iter()
        .filter(|h| **h != table_host)
        .map(|h| h.parse().expect("cidr"))
        .collect();
    test.filter().unblock(&all).expect("unblocking the rest");
    assert!(listed().is_empty(), "{:?}", listed());
    assert_eq!(test.reader().config().expect("CONFIG").block_hosts, 0);
    let passed: Vec<Case> = hosts
        .iter()
        .map(|h| Case::new(format!("{h}, unblocked"), frame(h), PASS))
        .collect();
    run_table(&test, &passed);

    // The set is still marked: its new hosts would go to the trie. The
    // controller's sweep finds that the trie holds none of its hosts and
    // clears the mark, unless an edit sent a host to a trie meanwhile.
    let sweep = test.reader().sweep_scan().expect("sweep scan");
    let (_, stale) = sweep
        .stale_overflows
        .clone()
        .expect("a stale overflow mark");
    assert_eq!(stale, [target], "the marked set");
    test.block(&hosts[..1]);
    assert!(!in_table(hosts[0]), "still marked: to the trie");
    let clear = |sweep| {
        test.filter()
            .clear_stale_overflows(sweep)
            .expect("clearing the marks")
    };
    assert_eq!(
        clear(&sweep),
        0,
        "an edit sent a host to the trie after the scan: the mark stays"
    );
    test.filter()
        .unblock(&[hosts[0].parse().expect("cidr")])
        .expect("unblocking");
    let sweep = test.reader().sweep_scan().expect("sweep scan");
    assert_eq!(clear(&sweep), 1);
    test.block(&hosts[..2]);
    assert!(
        in_table(hosts[0]) && in_table(hosts[1]),
        "the set takes hosts again"
    );
    run_table(
        &test,
        &[
            Case::new("again blocked", frame(hosts[0]), BLOCKLIST),
            Case::new("again blocked", frame(hosts[1]), BLOCKLIST),
            Case::new("not blocked", frame(hosts[2]), PASS),
        ],
    );
}

/// Maps that are pinned but not initialized yet (CONFIG without the tables'
/// seeds: the moment between the loader's pinning and its write of CONFIG)
/// refuse edits with "still starting", and take them once initialized.
#[test]
fn edits_wait_for_initialized_maps() {
    if skip_unless_root("edits_wait_for_initialized_maps") {
        return;
    }
    let test = ProgTest::new();
    let reader = test.reader();
    let initialized = reader.config().expect("CONFIG");
    let mut config: aya::maps::Array<aya::maps::MapData, filter_common::Config> =
        aya::maps::Array::try_from(reader.map(filter_common::maps::CONFIG).expect("CONFIG"))
            .expect("CONFIG is an array");
    let fresh = filter_common::Config {
        host_seed: 0,
        host_mask: 0,
        ..initialized
    };
    config.set(0, fresh, 0).expect("writing CONFIG");
    let refused = filter_ctl::maps::Filter::open_for_edit(test.pins(), Duration::from_secs(1))
        .err()
        .expect("an edit of uninitialized maps is refused");
    assert!(
        matches!(
            refused.downcast_ref::<filter_ctl::error::Error>(),
            Some(filter_ctl::error::Error::NotLoaded(_))
        ),
        "{refused:#}"
    );
    assert!(
        format!("{refused:#}").contains("still starting"),
        "{refused:#}"
    );
    config.set(0, initialized, 0).expect("writing CONFIG");
    let filter = test.filter();
    filter
        .list_insert(
            filter_ctl::maps::ListKind::Block,
            &["198.18.7.7".parse().expect("a host")],
            None,
            filter_ctl::maps::lists::Merge::KeepLonger,
        )
        .expect("an edit of initialized maps");
    drop(filter);
    assert_eq!(blocklist(&test), ["198.18.7.7/32"]);
}

/// A large edit runs its `alongside` work (the CLI's state record) on a
/// thread of its own beside the kernel writes: it gets exactly the entries
/// the edit adds or updates, and an edit that changes nothing gives it none.
#[test]
fn a_large_edit_hands_its_changes_to_the_work_alongside() {
    if skip_unless_root("a_large_edit_hands_its_changes_to_the_work_alongside") {
        return;
    }
    let test = ProgTest::with_capacities(&filter_ctl::maps::loader::Capacities {
        list: 8192,
        ..filter_ctl::maps::loader::Capacities::default()
    });
    // More than the 4,096 from which the work runs on its own thread.
    let first = u32::from(std::net::Ipv4Addr::new(198, 19, 0, 0));
    let cidrs: Vec<filter_ctl::spec::cidr::Cidr> = (0..5000u32)
        .map(|n| filter_ctl::spec::cidr::Cidr::host(std::net::Ipv4Addr::from(first + n).into()))
        .collect();
    let insert = || {
        test.filter()
            .list_insert_with(
                filter_ctl::maps::ListKind::Block,
                &cidrs,
                None,
                filter_ctl::maps::lists::Merge::KeepLonger,
                <[filter_ctl::spec::cidr::Cidr]>::to_vec,
            )
            .expect("inserting")
    };
    let (report, changed) = insert();
    assert_eq!(report.added.len(), 5000);
    assert_eq!(changed, cidrs, "every new entry, in order");
    let (report, changed) = insert();
    assert_eq!((report.added.len(), report.kept.len()), (0, 5000));
    assert!(changed.is_empty(), "nothing changed: {}", changed.len());
    run_table(
        &test,
        &[Case::new(
            "the last host of the edit",
            Frame::ipv4(frames::udp4(ip4("198.19.19.135"), 53)).build(),
            BLOCKLIST,
        )],
    );
}
