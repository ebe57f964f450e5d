//! Table tests of the parser through `BPF_PROG_TEST_RUN`: every branch of the
//! frame parser, with the verdict and the reason counter that must move
//! (checked against the reference model too). A `tcp/23` drop rule shows
//! whether ports were read: a frame that reaches it is `port_denied`.

use filter_common::reason::{MALFORMED, NON_IP, PASS, PORT_DENIED};
use filter_ctl::spec::rule::LimitSpec;
use filter_tests::{
    frames::{
        self, DST4, DST6, ETHERTYPE_IPV4, ETHERTYPE_IPV6, Ext, Frame, Icmp, Ipv4, Ipv6, L4, SRC4,
        SRC6, Tcp, Udp, proto,
    },
    model::{self, Parsed},
    progtest::{Case, MAX_TEST_FRAME, ProgTest, run_table, skip_unless_root},
};

/// The port closed by the fixture's drop rule.
const CLOSED: u16 = 23;

fn fixture() -> ProgTest {
    let test = ProgTest::new();
    test.limit(
        &format!("tcp/{CLOSED}"),
        &LimitSpec {
            drop: true,
            ..Default::default()
        },
    );
    test
}

fn v4(ip: Ipv4) -> Vec<u8> {
    Frame::ipv4(ip).build()
}

fn v6(ip: Ipv6) -> Vec<u8> {
    Frame::ipv6(ip).build()
}

/// An IPv4 packet carrying `bytes` as protocol `protocol`.
fn v4_raw(protocol: u8, bytes: &[u8]) -> Ipv4 {
    Ipv4::new(SRC4, DST4, L4::raw(protocol, bytes.to_vec()))
}

fn v6_raw(protocol: u8, bytes: &[u8]) -> Ipv6 {
    Ipv6::new(SRC6, DST6, L4::raw(protocol, bytes.to_vec()))
}

/// The first `len` bytes of a TCP header to the closed port (data offset 5).
fn tcp_prefix(len: usize) -> Vec<u8> {
    let mut header = vec![
        0x9c,
        0x40,
        CLOSED.to_be_bytes()[0],
        CLOSED.to_be_bytes()[1],
        0,
        0,
        0,
        1,
        0,
        0,
        0,
        0,
        0x50,
        0x02,
    ];
    header.resize(20, 0);
    header.truncate(len);
    header
}

/// A UDP header to port 53 with the given length field.
fn udp_header(length_field: u16) -> Vec<u8> {
    let mut h = vec![0x9c, 0x40, 0, 53];
    h.extend_from_slice(&length_field.to_be_bytes());
    h.extend_from_slice(&[0, 0]);
    h
}

fn tcp_closed4() -> Ipv4 {
    frames::tcp4(SRC4, CLOSED)
}

fn tcp_closed6() -> Ipv6 {
    frames::tcp6(SRC6, CLOSED)
}

fn ethernet_cases() -> Vec<Case> {
    let udp = || Frame::ipv4(frames::udp4(SRC4, 53));
    let mut only_type_v4 = vec![0u8; 14];
    only_type_v4[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    let mut only_type_v6 = only_type_v4.clone();
    only_type_v6[12..14].copy_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
    let mut only_tpid = vec![0u8; 14];
    only_tpid[12..14].copy_from_slice(&[0x81, 0x00]);
    let mut half_tag = only_tpid.clone();
    half_tag.extend_from_slice(&[0, 5]);
    let mut tag_no_type = only_tpid.clone();
    tag_no_type.extend_from_slice(&[0, 5, 0x08]);
    let mut second_tag_cut = Frame::ipv4(frames::udp4(SRC4, 53)).qinq(1).vlan(2).build();
    second_tag_cut.truncate(20);
    vec![
        Case::new("ethertype IPv4, no IP header", only_type_v4, MALFORMED),
        Case::new("ethertype IPv6, no IP header", only_type_v6, MALFORMED),
        Case::new("802.1Q TPID, no tag", only_tpid, MALFORMED),
        Case::new("802.1Q tag cut after the TCI", half_tag, MALFORMED),
        Case::new("802.1Q tag, 1 byte of inner type", tag_no_type, MALFORMED),
        Case::new("QinQ, second tag cut", second_tag_cut, MALFORMED),
        Case::new("untagged UDP", udp().build(), PASS),
        Case::new("one 802.1Q tag", udp().vlan(10).build(), PASS),
        Case::new("one 802.1ad tag", udp().qinq(10).build(), PASS),
        Case::new("802.1ad + 802.1Q", udp().qinq(10).vlan(20).build(), PASS),
        Case::new("802.1Q + 802.1Q", udp().vlan(10).vlan(20).build(), PASS),
        Case::new("802.1ad + 802.1ad", udp().qinq(10).qinq(20).build(), PASS),
        Case::new(
            "802.1Q + 802.1ad (reversed order)",
            udp().vlan(10).qinq(20).build(),
            PASS,
        ),
        Case::new(
            "two tags, ports read: closed port",
            Frame::ipv4(tcp_closed4()).qinq(1).vlan(2).build(),
            PORT_DENIED,
        ),
        Case::new(
            "three tags",
            udp().qinq(10).vlan(20).vlan(30).build(),
            MALFORMED,
        ),
        Case::new(
            "three tags of 802.1ad",
            udp().qinq(10).qinq(20).qinq(30).build(),
            MALFORMED,
        ),
        Case::new("ARP", frames::arp().build(), NON_IP),
        Case::new("ARP in a VLAN", frames::arp().vlan(5).build(), NON_IP),
        Case::new(
            "ARP in two tags",
            frames::arp().qinq(5).vlan(6).build(),
            NON_IP,
        ),
        Case::new("LLDP", frames::lldp().build(), NON_IP),
        Case::new("zero ethertype, bare header", vec![0u8; 14], NON_IP),
        Case::new(
            "IPX (0x8137) with junk",
            Frame::other(0x8137, vec![0xff; 30]).build(),
            NON_IP,
        ),
        Case::new(
            "802.3 length field (0x002e)",
            Frame::other(0x002e, vec![0xaa; 46]).build(),
            NON_IP,
        ),
        Case::new(
            "ethertype IPv4 carrying an ARP body",
            Frame::other(ETHERTYPE_IPV4, frames::arp().build()[14..].to_vec()).build(),
            MALFORMED,
        ),
    ]
}

fn ipv4_cases() -> Vec<Case> {
    let mut cases = vec![
        Case::new("IPv4 UDP", v4(frames::udp4(SRC4, 53)), PASS),
        Case::new("IPv4 TCP", v4(frames::tcp4(SRC4, 443)), PASS),
        Case::new(
            "IPv4 TCP to the closed port",
            v4(tcp_closed4()),
            PORT_DENIED,
        ),
        Case::new("IPv4 ICMP echo", v4(frames::icmp4(SRC4)), PASS),
        Case::new(
            "IPv4 UDP with Ethernet padding after total length",
            v4(frames::udp4(SRC4, 53).trailer(vec![0; 15])),
            PASS,
        ),
        Case::new(
            "IPv4 TCP to the closed port with padding",
            v4(tcp_closed4().trailer(vec![0xee; 6])),
            PORT_DENIED,
        ),
        Case::new(
            "IPv4 DF set, offset 0",
            v4(tcp_closed4().dont_fragment()),
            PORT_DENIED,
        ),
    ];
    for words in 1..=10u8 {
        cases.push(Case::new(
            format!("IPv4 options, IHL {}", 5 + words),
            v4(tcp_closed4().nop_options(usize::from(words))),
            PORT_DENIED,
        ));
    }
    cases.push(Case::new(
        "IPv4 record-route option (IHL 15) and TCP options",
        v4(Ipv4::new(
            SRC4,
            DST4,
            Tcp::new(1, CLOSED)
                .options(vec![2, 4, 5, 0xb4, 1, 3, 3, 7])
                .into(),
        )
        .options({
            let mut rr = vec![7, 39, 4];
            rr.resize(40, 0);
            rr
        })),
        PORT_DENIED,
    ));
    for ihl in 0..5 {
        cases.push(Case::new(
            format!("IPv4 IHL {ihl}"),
            v4(frames::udp4(SRC4, 53).ihl(ihl)),
            MALFORMED,
        ));
    }
    cases.push(Case::new(
        "IPv4 IHL 6 without options (header runs into UDP)",
        v4(frames::udp4(SRC4, 53).ihl(6)),
        MALFORMED,
    ));
    cases.push(Case::new(
        "IPv4 IHL 15 over a 20-byte header: transport read 40 bytes later",
        v4(Ipv4::new(
            SRC4,
            DST4,
            Tcp::new(1, 443)
                .payload([vec![0; 20], tcp_prefix(20)].concat())
                .into(),
        )
        .ihl(15)),
        PORT_DENIED,
    ));
    for version in [0u8, 5, 6, 15] {
        cases.push(Case::new(
            format!("IPv4 ethertype, version {version}"),
            v4(frames::udp4(SRC4, 53).version(version)),
            MALFORMED,
        ));
    }
    let good = v4(frames::udp4(SRC4, 53));
    let ip_len = u16::try_from(good.len() - 14).unwrap();
    cases.extend([
        Case::new(
            "IPv4 header cut at 19 bytes",
            good[..14 + 19].to_vec(),
            MALFORMED,
        ),
        Case::new(
            "IPv4 total length one past the frame",
            v4(frames::udp4(SRC4, 53).total_length(ip_len + 1)),
            MALFORMED,
        ),
        Case::new(
            "IPv4 total length 65535",
            v4(frames::udp4(SRC4, 53).total_length(65535)),
            MALFORMED,
        ),
        Case::new(
            "IPv4 total length 19 (< IHL*4)",
            v4(frames::udp4(SRC4, 53).total_length(19)),
            MALFORMED,
        ),
        Case::new(
            "IPv4 total length 0",
            v4(frames::udp4(SRC4, 53).total_length(0)),
            MALFORMED,
        ),
        Case::new(
            "IPv4 total length 23 < IHL*4 24 (options)",
            v4(frames::udp4(SRC4, 53).nop_options(1).total_length(23)),
            MALFORMED,
        ),
        Case::new(
            "IPv4 total length = IHL*4 for UDP (no room for UDP)",
            v4(frames::udp4(SRC4, 53).total_length(20)),
            MALFORMED,
        ),
        Case::new(
            "IPv4 total length = IHL*4 for GRE (nothing checked)",
            v4(v4_raw(proto::GRE, &[0; 8]).total_length(20)),
            PASS,
        ),
        Case::new(
            "IPv4 UDP header in the frame but beyond total length",
            v4(v4_raw(proto::UDP, &udp_header(8)).total_length(24)),
            MALFORMED,
        ),
        Case::new(
            "IPv4 TCP truncated to 19 bytes",
            v4(v4_raw(proto::TCP, &tcp_prefix(19))),
            MALFORMED,
        ),
        Case::new(
            "IPv4 TCP truncated to 0 bytes",
            v4(v4_raw(proto::TCP, &[])),
            MALFORMED,
        ),
        Case::new(
            "IPv4 TCP 20 bytes, exactly the header",
            v4(v4_raw(proto::TCP, &tcp_prefix(20))),
            PORT_DENIED,
        ),
        Case::new(
            "IPv4 UDP truncated to 7 bytes",
            v4(v4_raw(proto::UDP, &udp_header(8)[..7])),
            MALFORMED,
        ),
        Case::new(
            "IPv4 UDP header only (length 8)",
            v4(v4_raw(proto::UDP, &udp_header(8))),
            PASS,
        ),
        Case::new(
            "IPv4 ICMP truncated to 7 bytes",
            v4(v4_raw(proto::ICMP, &[8, 0, 0, 0, 0, 1, 0])),
            MALFORMED,
        ),
        Case::new(
            "IPv4 ICMP header only (8 bytes)",
            v4(v4_raw(proto::ICMP, &[8, 0, 0, 0, 0, 1, 0, 1])),
            PASS,
        ),
        Case::new(
            "IPv4 protocol 58 (ICMPv6 rules: 4 bytes enough)",
            v4(v4_raw(proto::ICMPV6, &[128, 0, 0, 0])),
            PASS,
        ),
        Case::new(
            "IPv4 protocol 58 with 3 bytes",
            v4(v4_raw(proto::ICMPV6, &[128, 0, 0])),
            MALFORMED,
        ),
    ]);
    for doff in 0..5u8 {
        cases.push(Case::new(
            format!("IPv4 TCP data offset {doff}"),
            v4(Ipv4::new(
                SRC4,
                DST4,
                Tcp::new(1, CLOSED).data_offset(doff).into(),
            )),
            MALFORMED,
        ));
    }
    cases.extend([
        Case::new(
            "IPv4 TCP data offset 15 with a 20-byte segment",
            v4(Ipv4::new(
                SRC4,
                DST4,
                Tcp::new(1, CLOSED).data_offset(15).into(),
            )),
            MALFORMED,
        ),
        Case::new(
            "IPv4 TCP data offset 6, one word of payload (offset = segment)",
            v4(Ipv4::new(
                SRC4,
                DST4,
                Tcp::new(1, CLOSED)
                    .data_offset(6)
                    .payload(vec![1; 4])
                    .into(),
            )),
            PORT_DENIED,
        ),
        Case::new(
            "IPv4 TCP data offset 6, 3 bytes of payload",
            v4(Ipv4::new(
                SRC4,
                DST4,
                Tcp::new(1, CLOSED)
                    .data_offset(6)
                    .payload(vec![1; 3])
                    .into(),
            )),
            MALFORMED,
        ),
        Case::new(
            "IPv4 TCP data offset beyond total length, bytes in the trailer",
            v4(
                Ipv4::new(SRC4, DST4, Tcp::new(1, CLOSED).data_offset(6).into())
                    .trailer(vec![0; 8]),
            ),
            MALFORMED,
        ),
        Case::new(
            "IPv4 TCP options filling data offset 15",
            v4(Ipv4::new(
                SRC4,
                DST4,
                Tcp::new(1, CLOSED).options(vec![1; 40]).into(),
            )),
            PORT_DENIED,
        ),
    ]);
    for (length, reason) in [(0u16, MALFORMED), (7, MALFORMED), (8, PASS), (11, PASS)] {
        cases.push(Case::new(
            format!("IPv4 UDP length {length} with 3 bytes of payload"),
            v4(Ipv4::new(SRC4, DST4, Udp::new(1, 53).length(length).into())),
            reason,
        ));
    }
    cases.extend([
        Case::new(
            "IPv4 UDP length one past the IP payload",
            v4(Ipv4::new(SRC4, DST4, Udp::new(1, 53).length(12).into())),
            MALFORMED,
        ),
        Case::new(
            "IPv4 UDP length past the IP payload, bytes in the trailer",
            v4(Ipv4::new(SRC4, DST4, Udp::new(1, 53).length(20).into()).trailer(vec![0; 20])),
            MALFORMED,
        ),
        Case::new(
            "IPv4 UDP length 65535",
            v4(Ipv4::new(SRC4, DST4, Udp::new(1, 53).length(65535).into())),
            MALFORMED,
        ),
        // Fragments.
        Case::new(
            "IPv4 non-first fragment, 3 bytes of 'TCP' (no header parsed)",
            v4(v4_raw(proto::TCP, &tcp_prefix(3)).fragment(1, true)),
            PASS,
        ),
        Case::new(
            "IPv4 non-first fragment, empty",
            v4(v4_raw(proto::TCP, &[]).fragment(100, false)),
            PASS,
        ),
        Case::new(
            "IPv4 non-first fragment looking like TCP to the closed port (no ports)",
            v4(v4_raw(proto::TCP, &tcp_prefix(20)).fragment(185, false)),
            PASS,
        ),
        Case::new(
            "IPv4 non-first fragment, maximum offset",
            v4(v4_raw(proto::UDP, &udp_header(2)).fragment(0x1fff, false)),
            PASS,
        ),
        Case::new(
            "IPv4 non-first fragment with a bad UDP length",
            v4(v4_raw(proto::UDP, &udp_header(2)).fragment(3, true)),
            PASS,
        ),
        Case::new(
            "IPv4 first fragment, TCP truncated to 10 bytes",
            v4(v4_raw(proto::TCP, &tcp_prefix(10)).fragment(0, true)),
            MALFORMED,
        ),
        Case::new(
            "IPv4 first fragment, full TCP header to the closed port",
            v4(tcp_closed4().fragment(0, true)),
            PORT_DENIED,
        ),
        Case::new(
            "IPv4 non-first fragment with a total length past the frame",
            v4(v4_raw(proto::TCP, &[0; 8])
                .fragment(1, true)
                .total_length(100)),
            MALFORMED,
        ),
        // Other protocols are not checked.
        Case::new("IPv4 GRE", v4(v4_raw(proto::GRE, &[0, 0, 0x08, 0])), PASS),
        Case::new(
            "IPv4 ESP",
            v4(v4_raw(proto::ESP, &[0, 0, 1, 0, 0, 0, 0, 1])),
            PASS,
        ),
        Case::new("IPv4 SCTP", v4(v4_raw(proto::SCTP, &[0; 12])), PASS),
        Case::new("IPv4 protocol 253, empty", v4(v4_raw(253, &[])), PASS),
        Case::new("IPv4 protocol 0, 1 byte", v4(v4_raw(0, &[9])), PASS),
        Case::new("IPv4 protocol 255", v4(v4_raw(255, &[1, 2, 3])), PASS),
    ]);
    cases
}

fn ipv6_cases() -> Vec<Case> {
    let good = v6(frames::udp6(SRC6, 53));
    let payload_len = u16::try_from(good.len() - 54).unwrap();
    let mut cases = vec![
        Case::new("IPv6 UDP", good.clone(), PASS),
        Case::new("IPv6 TCP", v6(frames::tcp6(SRC6, 443)), PASS),
        Case::new(
            "IPv6 TCP to the closed port",
            v6(tcp_closed6()),
            PORT_DENIED,
        ),
        Case::new("IPv6 ICMPv6 echo", v6(frames::icmp6(SRC6)), PASS),
        Case::new(
            "IPv6 ICMPv6 4 bytes",
            v6(v6_raw(proto::ICMPV6, &[135, 0, 0, 0])),
            PASS,
        ),
        Case::new(
            "IPv6 ICMPv6 3 bytes",
            v6(v6_raw(proto::ICMPV6, &[135, 0, 0])),
            MALFORMED,
        ),
        Case::new(
            "IPv6 next header 1 (ICMP rules: 8 bytes) with 4 bytes",
            v6(v6_raw(proto::ICMP, &[8, 0, 0, 0])),
            MALFORMED,
        ),
        Case::new(
            "IPv6 next header 1 with 8 bytes",
            v6(v6_raw(proto::ICMP, &[8, 0, 0, 0, 0, 0, 0, 0])),
            PASS,
        ),
        Case::new(
            "IPv6 UDP with trailing bytes after the payload",
            v6(frames::udp6(SRC6, 53).trailer(vec![0; 10])),
            PASS,
        ),
        Case::new(
            "IPv6 fixed header cut at 39 bytes",
            good[..14 + 39].to_vec(),
            MALFORMED,
        ),
        Case::new(
            "IPv6 fixed header only, payload length 0 (no next header)",
            v6(v6_raw(proto::NO_NEXT, &[])),
            MALFORMED,
        ),
        Case::new(
            "IPv6 payload length 0 with a UDP packet behind (jumbogram)",
            v6(frames::udp6(SRC6, 53).payload_length(0)),
            MALFORMED,
        ),
        Case::new(
            "IPv6 payload length one past the frame",
            v6(frames::udp6(SRC6, 53).payload_length(payload_len + 1)),
            MALFORMED,
        ),
        Case::new(
            "IPv6 payload length 65535",
            v6(frames::udp6(SRC6, 53).payload_length(65535)),
            MALFORMED,
        ),
        Case::new(
            "IPv6 no next header, 8 bytes",
            v6(v6_raw(proto::NO_NEXT, &[0; 8])),
            PASS,
        ),
        Case::new(
            "IPv6 UDP header beyond the payload length, in the trailer",
            v6(v6_raw(proto::UDP, &udp_header(8))
                .payload_length(4)
                .trailer(vec![0; 4])),
            MALFORMED,
        ),
        Case::new(
            "IPv6 TCP truncated to 19 bytes",
            v6(v6_raw(proto::TCP, &tcp_prefix(19))),
            MALFORMED,
        ),
        Case::new(
            "IPv6 TCP data offset 4",
            v6(Ipv6::new(
                SRC6,
                DST6,
                Tcp::new(1, CLOSED).data_offset(4).into(),
            )),
            MALFORMED,
        ),
        Case::new(
            "IPv6 TCP data offset past the payload",
            v6(Ipv6::new(
                SRC6,
                DST6,
                Tcp::new(1, CLOSED).data_offset(7).into(),
            )),
            MALFORMED,
        ),
        Case::new(
            "IPv6 UDP length 7",
            v6(Ipv6::new(SRC6, DST6, Udp::new(1, 53).length(7).into())),
            MALFORMED,
        ),
        Case::new(
            "IPv6 UDP length past the payload",
            v6(Ipv6::new(SRC6, DST6, Udp::new(1, 53).length(12).into())),
            MALFORMED,
        ),
        Case::new(
            "IPv6 ESP",
            v6(v6_raw(proto::ESP, &[0, 0, 1, 0, 0, 0, 0, 1])),
            PASS,
        ),
        Case::new(
            "IPv6 GRE",
            v6(v6_raw(proto::GRE, &[0, 0, 0x86, 0xdd])),
            PASS,
        ),
        Case::new("IPv6 SCTP", v6(v6_raw(proto::SCTP, &[0; 12])), PASS),
        Case::new("IPv6 next header 253, 1 byte", v6(v6_raw(253, &[0])), PASS),
    ];
    for version in [0u8, 4, 7, 15] {
        cases.push(Case::new(
            format!("IPv6 ethertype, version {version}"),
            v6(frames::udp6(SRC6, 53).version(version)),
            MALFORMED,
        ));
    }
    // Extension headers, one by one; ports must still be found behind them.
    let exts = [
        ("hop-by-hop", Ext::hop_by_hop(0)),
        ("hop-by-hop, 16 bytes", Ext::hop_by_hop(1)),
        ("routing", Ext::routing(0)),
        ("routing, 24 bytes", Ext::routing(2)),
        ("destination options", Ext::dest_opts(0)),
        ("atomic fragment", Ext::fragment(0, false, 1)),
        ("first fragment", Ext::fragment(0, true, 1)),
    ];
    for (name, ext) in exts {
        let ext = || ext.clone();
        cases.push(Case::new(
            format!("IPv6 {name} then UDP"),
            v6(frames::udp6(SRC6, 53).ext(ext())),
            PASS,
        ));
        cases.push(Case::new(
            format!("IPv6 {name} then TCP to the closed port"),
            v6(tcp_closed6().ext(ext())),
            PORT_DENIED,
        ));
        cases.push(Case::new(
            format!("IPv6 {name} then truncated TCP"),
            v6(v6_raw(proto::TCP, &tcp_prefix(12)).ext(ext())),
            MALFORMED,
        ));
    }
    let six = || {
        tcp_closed6()
            .ext(Ext::hop_by_hop(0))
            .ext(Ext::dest_opts(1))
            .ext(Ext::routing(0))
            .ext(Ext::fragment(0, true, 9))
            .ext(Ext::dest_opts(0))
            .ext(Ext::routing(1))
    };
    cases.extend([
        Case::new(
            "IPv6 chain of 6 extension headers, TCP to the closed port",
            v6(six()),
            PORT_DENIED,
        ),
        Case::new(
            "IPv6 chain of 7 extension headers",
            v6(six().ext(Ext::dest_opts(0))),
            MALFORMED,
        ),
        Case::new(
            "IPv6 chain of 7 extension headers ending in a fragment",
            v6(six().ext(Ext::fragment(0, false, 1))),
            MALFORMED,
        ),
        Case::new(
            "IPv6 6 extension headers then a non-first fragment header",
            v6(v6_raw(proto::TCP, &[0; 8])
                .ext(Ext::hop_by_hop(0))
                .ext(Ext::dest_opts(0))
                .ext(Ext::dest_opts(0))
                .ext(Ext::dest_opts(0))
                .ext(Ext::dest_opts(0))
                .ext(Ext::routing(0))
                .ext(Ext::fragment(7, false, 1))),
            MALFORMED,
        ),
        Case::new(
            "IPv6 6 extension headers then no next header",
            v6(v6_raw(proto::NO_NEXT, &[])
                .ext(Ext::dest_opts(0))
                .ext(Ext::dest_opts(0))
                .ext(Ext::dest_opts(0))
                .ext(Ext::dest_opts(0))
                .ext(Ext::dest_opts(0))
                .ext(Ext::dest_opts(0))),
            PASS,
        ),
        Case::new(
            "IPv6 hop-by-hop then GRE",
            v6(v6_raw(proto::GRE, &[0; 4]).ext(Ext::hop_by_hop(0))),
            PASS,
        ),
        Case::new(
            "IPv6 hop-by-hop then ICMPv6",
            v6(frames::icmp6(SRC6).ext(Ext::hop_by_hop(0))),
            PASS,
        ),
        Case::new(
            "IPv6 hop-by-hop (16 bytes) longer than the payload length (8)",
            v6(v6_raw(proto::NO_NEXT, &[])
                .ext(Ext::hop_by_hop(1))
                .payload_length(8)),
            MALFORMED,
        ),
        Case::new(
            "IPv6 destination options exactly the payload, no next header",
            v6(v6_raw(proto::NO_NEXT, &[]).ext(Ext::dest_opts(2))),
            PASS,
        ),
        Case::new(
            "IPv6 destination options exactly the payload, UDP next",
            v6(v6_raw(proto::UDP, &[]).ext(Ext::dest_opts(0))),
            MALFORMED,
        ),
        Case::new(
            "IPv6 routing header of 1 byte (payload length 1)",
            v6(v6_raw(proto::ROUTING, &[proto::NO_NEXT])),
            MALFORMED,
        ),
        Case::new(
            "IPv6 routing header claiming 2 KiB",
            v6(v6_raw(proto::NO_NEXT, &[])
                .ext(Ext::raw(proto::ROUTING, vec![0, 255, 0, 0, 0, 0, 0, 0]))),
            MALFORMED,
        ),
        Case::new(
            "IPv6 fragment header of 7 bytes",
            v6(v6_raw(proto::FRAGMENT, &[proto::UDP, 0, 0, 0, 0, 0, 0])),
            MALFORMED,
        ),
        Case::new(
            "IPv6 fragment header of 8 bytes, payload length 4, 4 bytes trailer",
            v6(v6_raw(proto::NO_NEXT, &[])
                .ext(Ext::fragment(0, true, 1))
                .payload_length(4)),
            MALFORMED,
        ),
        Case::new(
            "IPv6 non-first fragment header, payload length 4, 4 bytes trailer",
            v6(v6_raw(proto::NO_NEXT, &[])
                .ext(Ext::fragment(3, true, 1))
                .payload_length(4)),
            MALFORMED,
        ),
        Case::new(
            "IPv6 non-first fragment looking like TCP to the closed port (no ports)",
            v6(v6_raw(proto::TCP, &tcp_prefix(20)).ext(Ext::fragment(1, true, 5))),
            PASS,
        ),
        Case::new(
            "IPv6 non-first fragment with 3 bytes of 'TCP'",
            v6(v6_raw(proto::TCP, &tcp_prefix(3)).ext(Ext::fragment(100, false, 5))),
            PASS,
        ),
        Case::new(
            "IPv6 non-first fragment, nothing after its header",
            v6(v6_raw(proto::UDP, &[]).ext(Ext::fragment(0x1fff, false, 5))),
            PASS,
        ),
        Case::new(
            "IPv6 non-first fragment after hop-by-hop",
            v6(v6_raw(proto::TCP, &tcp_prefix(20))
                .ext(Ext::hop_by_hop(0))
                .ext(Ext::fragment(1, false, 5))),
            PASS,
        ),
        Case::new(
            "IPv6 non-first fragment whose next header is hop-by-hop",
            v6(v6_raw(proto::HOPOPTS, &[0; 3]).ext(Ext::fragment(1, false, 5))),
            PASS,
        ),
        Case::new(
            "IPv6 fragment with only the reserved bits set (offset 0: first)",
            v6(tcp_closed6().ext(Ext::raw(proto::FRAGMENT, vec![0, 0, 0, 0x06, 0, 0, 0, 1]))),
            PORT_DENIED,
        ),
        Case::new(
            "IPv6 first fragment with truncated TCP",
            v6(v6_raw(proto::TCP, &tcp_prefix(8)).ext(Ext::fragment(0, true, 5))),
            MALFORMED,
        ),
        Case::new(
            "IPv6 extension header next byte pointing at another header type",
            v6(frames::udp6(SRC6, 53).ext(Ext::hop_by_hop(0).next(proto::GRE))),
            PASS,
        ),
        Case::new(
            "IPv6 UDP (VLAN tagged) to port 0",
            Frame::ipv6(frames::udp6(SRC6, 0)).vlan(3).build(),
            PASS,
        ),
    ]);
    cases
}

fn skip(test: &str) -> bool {
    skip_unless_root(test)
}

#[test]
fn ethernet_and_vlan() {
    if skip("ethernet_and_vlan") {
        return;
    }
    run_table(&fixture(), &ethernet_cases());
}

#[test]
fn ipv4() {
    if skip("ipv4") {
        return;
    }
    run_table(&fixture(), &ipv4_cases());
}

#[test]
fn ipv6() {
    if skip("ipv6") {
        return;
    }
    run_table(&fixture(), &ipv6_cases());
}

/// `BPF_PROG_TEST_RUN` refuses frames shorter than an Ethernet header, so the
/// program never sees one there; the model calls them malformed.
#[test]
fn frames_shorter_than_ethernet_are_refused_by_test_run() {
    if skip("frames_shorter_than_ethernet_are_refused_by_test_run") {
        return;
    }
    let test = fixture();
    for len in 0..14 {
        let frame = vec![0x08; len];
        assert!(
            test.try_run(&frame).is_err(),
            "the kernel ran a {len}-byte frame"
        );
        assert_eq!(model::parse(&frame), Parsed::Malformed, "{len} bytes");
    }
}

/// Frames up to the largest `BPF_PROG_TEST_RUN` passes in one piece.
#[test]
fn large_frames() {
    if skip("large_frames") {
        return;
    }
    let cases: Vec<Case> = [1500usize, 2000, 3000, MAX_TEST_FRAME]
        .into_iter()
        .flat_map(|size| {
            let pad = size - 14 - 20 - 20;
            [
                Case::new(
                    format!("{size}-byte IPv4 TCP to the closed port"),
                    v4(Ipv4::new(
                        SRC4,
                        DST4,
                        Tcp::new(1, CLOSED).payload(vec![0x5a; pad]).into(),
                    )),
                    PORT_DENIED,
                ),
                Case::new(
                    format!("{size}-byte IPv4 UDP"),
                    v4(Ipv4::new(
                        SRC4,
                        DST4,
                        Udp::new(1, 53).payload(vec![0; pad]).into(),
                    )),
                    PASS,
                ),
                Case::new(
                    format!("{size}-byte IPv6 UDP"),
                    v6(frames::udp6(SRC6, 53)
                        .ext(Ext::hop_by_hop(20))
                        .trailer(vec![0; pad / 2])),
                    PASS,
                ),
            ]
        })
        .collect();
    run_table(&fixture(), &cases);
}

#[test]
fn icmp_types_pass() {
    if skip("icmp_types_pass") {
        return;
    }
    let mut cases = Vec::new();
    for kind in [0u8, 3, 8, 11, 255] {
        let icmp = Icmp {
            kind,
            code: 0,
            rest: [0; 4],
            payload: vec![],
        };
        cases.push(Case::new(
            format!("ICMP type {kind}"),
            v4(Ipv4::new(SRC4, DST4, L4::Icmp(icmp.clone()))),
            PASS,
        ));
        cases.push(Case::new(
            format!("ICMPv6 type {kind}"),
            v6(Ipv6::new(SRC6, DST6, L4::Icmpv6(icmp))),
            PASS,
        ));
    }
    run_table(&fixture(), &cases);
}
