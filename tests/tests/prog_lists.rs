//! Table tests of the allow and block lists through `BPF_PROG_TEST_RUN`:
//! no protocol, fragment or extension header slips past a block, allow beats
//! block, prefixes, and expired entries.

use std::time::Duration;

use filter_common::reason::{ALLOWLIST, BLOCKLIST, MALFORMED, NON_IP, PASS};
use filter_tests::{
    frames::{self, DST4, DST6, Ext, Frame, Ipv4, Ipv6, L4, ip4, ip6, proto},
    progtest::{Case, ProgTest, run_table, skip_unless_root},
};

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
    // Four nested expired entries over a permanent /16.
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
    // Expired entries the program met are gone from the maps.
    let left: Vec<String> = test
        .reader()
        .list_entries_raw(filter_ctl::maps::ListKind::Block)
        .expect("reading the blocklist")
        .iter()
        .map(|(c, _)| c.to_string())
        .collect();
    for deleted in [
        "198.18.8.8/32",
        "2001:db8:8::8/128",
        "198.18.9.0/30",
        "198.18.9.0/24",
    ] {
        assert!(
            !left.iter().any(|c| c == deleted),
            "{deleted} expired and was looked up, yet is still stored: {left:?}"
        );
    }
}

/// More than four nested expired entries: the lookup skips (and deletes)
/// four, deletes the fifth too but gives up, so one packet from inside a
/// permanently blocked prefix passes; the next one is blocked.
#[test]
fn five_nested_expired_entries() {
    if skip_unless_root("five_nested_expired_entries") {
        return;
    }
    let test = ProgTest::new();
    test.block(&["198.18.0.0/16"]);
    test.block_ttl(
        &[
            "198.18.9.0/24",
            "198.18.9.0/26",
            "198.18.9.0/28",
            "198.18.9.0/30",
            "198.18.9.0/32",
        ],
        Duration::from_millis(1),
    );
    std::thread::sleep(Duration::from_millis(50));
    let frame = Frame::ipv4(frames::udp4(ip4("198.18.9.0"), 53)).build();
    let stored = || -> Vec<String> {
        test.reader()
            .list_entries_raw(filter_ctl::maps::ListKind::Block)
            .expect("reading the blocklist")
            .iter()
            .map(|(c, _)| c.to_string())
            .collect()
    };
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
        ["198.18.0.0/16"],
        "all five expired entries deleted"
    );
    run_table(
        &test,
        &[Case::new("the same source again", frame, BLOCKLIST)],
    );
    assert_eq!(stored(), ["198.18.0.0/16"]);
}
