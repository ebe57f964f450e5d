//! Differential test: well over 100,000 frames — random bytes, valid frames of
//! every shape, mutated frames and systematic truncations — run in the same
//! order through the XDP program (`BPF_PROG_TEST_RUN`) and through the
//! reference model holding the same map contents. Verdict, reason and shadow
//! reason (the `STATS` counters that moved) must agree for every frame; rule
//! counters, automatic blocks and the lists (allow, block, shadow block)
//! must agree at the end.
//!
//! Shadow entries and rules are in the mix: shadow block entries (in tries
//! of their own) alone, nested under, over and at the prefixes of operator
//! blocks, automatic blocks and allow entries, some expired (more deeply
//! nested than one lookup skips); `Config`'s shadow counts switch to 0 and
//! back while the frames run, for one family or both (the program must then
//! skip the entries); shadow port rules; and the default rule and a rule
//! that blocks automatically switch between shadow and enforced. A second
//! model without any shadow entry runs every frame too: shadow entries must
//! never change a verdict, a counter other than `shadow_blocklist`, or any
//! state.
//!
//! Fixed seed by default. `FILTER_DIFF_SEED=<n>` replays a seed,
//! `FILTER_DIFF_SEED=random` draws one (printed); `FILTER_DIFF_FRAMES=<n>`
//! changes the number of generated frames.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use filter_common::{
    Counter, MAX_RULES, ORIGIN_AUTO, RULE_FLAG_SHADOW, RateRule, TICKS_PER_SEC, reason, table_stat,
};
use filter_ctl::{
    maps::loader::Capacities,
    maps::{ListKind, Tries},
    spec::{
        cidr::Cidr,
        rule::{AutoblockSpec, LimitSpec},
    },
};
use filter_tests::{
    frames::{
        DST4, DST6, ETHERTYPE_IPV4, ETHERTYPE_IPV6, Ext, Frame, Icmp, Ipv4, Ipv6, L4, Layout, Net,
        TPID_8021AD, TPID_8021Q, Tcp, Udp, arp, lldp, proto,
    },
    model::{self, Decision, ListItem, Model, PrefixList},
    progtest::{Outcome, ProgTest, action_name, hex, skip_unless_root},
};

const DEFAULT_SEED: u64 = 0x5eed_f117_e4d1_ff01;
const DEFAULT_FRAMES: usize = 120_000;
/// Stop after this many disagreements (later ones are often consequences).
const MAX_REPORTED: usize = 10;
/// One packet per 1000 s: no bucket refills during the test.
const SLOW: u64 = 1000 * TICKS_PER_SEC;

/// `SplitMix64`: small, fast, good enough for test inputs, stable across versions.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n as u64).expect("fits")
    }

    fn percent(&mut self, p: usize) -> bool {
        self.below(100) < p
    }

    fn byte(&mut self) -> u8 {
        self.next().to_le_bytes()[0]
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }

    /// `min` to `min + spread - 1` random bytes.
    fn blob(&mut self, min: usize, spread: usize) -> Vec<u8> {
        let n = min + self.below(spread);
        self.bytes(n)
    }

    /// One of `items`, or a random byte one time in `items.len() + 1`.
    fn pick_or_byte(&mut self, items: &[u8]) -> u8 {
        let i = self.below(items.len() + 1);
        items.get(i).copied().unwrap_or_else(|| self.byte())
    }
}

// ---- map contents ------------------------------------------------------------------

/// The rules `configure` set.
struct Rules {
    /// Every rule id, to compare counters.
    ids: Vec<u32>,
    /// The default rule and the rule that blocks automatically: they switch
    /// between shadow and enforced during the run.
    default: u32,
    game: u32,
}

/// Operator blocks added halfway through the run, over automatic blocks of
/// the flood pool, and over and under shadow entries. Both are of the host
/// table's lengths, found before the automatic blocks in the tries (a trie
/// lookup that looks past automatic blocks to an operator's is
/// `prog_autoblock`'s, with lengths only the tries hold: here those would
/// cover every other source).
const LATE_BLOCKS: [&str; 2] = ["198.18.22.0/23", "2001:db8:22::/48"];

/// Sets up lists and rules that every branch of the decision meets.
fn configure(test: &ProgTest) -> Rules {
    let hour = Duration::from_hours(1);
    test.set_aggregation(30, 56);
    test.allow(&["198.18.100.0/24", "198.18.101.7", "2001:db8:a11::/48"]);
    test.block(&[
        "198.18.1.1",
        "198.18.2.0/24",
        "198.18.3.0/24",
        "198.18.6.0/23",
        "198.18.101.0/24",
        "2001:db8:bad::/48",
        "2001:db8:1::1",
        "2001:db8:3::/48",
    ]);
    // Expired before the run: alone, and nested over permanent prefixes.
    let gone = Duration::from_millis(1);
    test.block_ttl(
        &[
            "198.18.4.4",
            "198.18.3.3",
            "198.18.3.0/28",
            "2001:db8:4::4",
            "2001:db8:3::3",
        ],
        gone,
    );
    test.allow_ttl(&["198.18.101.8", "2001:db8:bad::8"], gone);
    // Expired blocks of allowed sources: the block lookup runs (and deletes
    // them) whether or not the allowlist decides.
    test.block_ttl(&["198.18.100.1", "198.18.101.7", "2001:db8:a11::1"], gone);
    // Nested expired entries over permanent ones: IPv4 /24 to /32 over a
    // /23, all in the host table (whose probes skip expired entries, every
    // length in turn); IPv6 /80 to /127, more than one trie lookup skips,
    // over a /72 in the trie, with expired /52 to /64 (the table's) and a
    // host beside them.
    let mut nested: Vec<String> = (24..=32).map(|p| format!("198.18.6.0/{p}")).collect();
    nested.extend(
        [52, 56, 60, 64, 80, 88, 96, 104, 112, 120, 127, 128]
            .iter()
            .map(|p| format!("2001:db8:6::1/{p}")),
    );
    test.block(&["2001:db8:6::/72"]);
    test.block_ttl(&nested.iter().map(String::as_str).collect::<Vec<_>>(), gone);
    // Expiring long after the run.
    test.block_ttl(&["198.18.5.0/24", "2001:db8:5::/64"], hour);
    test.allow_ttl(&["198.18.2.9"], hour);
    configure_shadow_entries(test);
    std::thread::sleep(Duration::from_millis(50));

    let freeze = |id: u32, burst: u64| {
        test.patch_rule(id, |rule: &mut RateRule| {
            rule.packet_interval = SLOW;
            rule.packet_tolerance = (burst - 1) * SLOW;
        });
    };
    // The default rule lives in its second slot once set (its first one is
    // what a fresh CONFIG names); the ssh rule is set twice, so it lives in
    // its second slot with the second version: ids and slots differ.
    let default = test.limit(
        "default",
        &LimitSpec {
            rate: Some(1),
            burst: Some(60),
            ..Default::default()
        },
    );
    freeze(default, 60);
    let drop = |target: &str| {
        test.limit(
            target,
            &LimitSpec {
                drop: true,
                ..Default::default()
            },
        )
    };
    let telnet = drop("tcp/23");
    let zero = drop("udp/0");
    let top = drop("tcp/65535");
    test.limit(
        "tcp/22",
        &LimitSpec {
            only_from: vec!["198.18.7.0/25".parse().expect("cidr")],
            rate: Some(5),
            ..Default::default()
        },
    );
    let ssh = test.limit(
        "tcp/22",
        &LimitSpec {
            only_from: vec![
                "198.18.7.0/24".parse().expect("cidr"),
                "2001:db8:7::/48".parse().expect("cidr"),
            ],
            ..Default::default()
        },
    );
    let dns = test.limit(
        "udp/53",
        &LimitSpec {
            only_from: vec![
                "0.0.0.0/0".parse().expect("cidr"),
                "::/0".parse().expect("cidr"),
            ],
            ..Default::default()
        },
    );
    let game = test.limit(
        "udp/5000-5010",
        &LimitSpec {
            rate: Some(1),
            burst: Some(3),
            autoblock: Some(AutoblockSpec {
                after: 3,
                window: hour,
                block_for: hour,
            }),
            ..Default::default()
        },
    );
    freeze(game, 3);
    let web = test.limit(
        "tcp/443",
        &LimitSpec {
            rate: Some(1),
            burst: Some(8),
            bytes: Some(1),
            ..Default::default()
        },
    );
    test.patch_rule(web, |rule| {
        rule.packet_interval = SLOW;
        rule.packet_tolerance = 7 * SLOW;
        rule.byte_interval = SLOW / 1000;
        rule.byte_tolerance = 600 * (SLOW / 1000);
    });
    // Shadow port rules: a closed port, an only-from set, and a limit that
    // would block automatically.
    let shadow_closed = drop("tcp/8080");
    test.set_shadow(shadow_closed, true);
    let shadow_ntp = test.limit(
        "udp/123",
        &LimitSpec {
            only_from: vec![
                "198.18.7.0/24".parse().expect("cidr"),
                "2001:db8:7::/48".parse().expect("cidr"),
            ],
            rate: Some(1),
            burst: Some(2),
            ..Default::default()
        },
    );
    freeze(shadow_ntp, 2);
    test.set_shadow(shadow_ntp, true);
    let shadow_flood = test.limit(
        "udp/4999",
        &LimitSpec {
            rate: Some(1),
            burst: Some(2),
            autoblock: Some(AutoblockSpec {
                after: 2,
                window: hour,
                block_for: hour,
            }),
            ..Default::default()
        },
    );
    freeze(shadow_flood, 2);
    test.set_shadow(shadow_flood, true);
    assert_eq!(
        test.live_slot(default),
        MAX_RULES,
        "the default's second slot"
    );
    assert_eq!(test.live_slot(ssh), ssh + MAX_RULES, "tcp/22's second slot");
    Rules {
        ids: vec![
            default,
            telnet,
            zero,
            top,
            ssh,
            dns,
            game,
            web,
            shadow_closed,
            shadow_ntp,
            shadow_flood,
        ],
        default,
        game,
    }
}

/// Shadow block entries (a policy's, marked `shadow = true`): alone, nested
/// under, over and at the prefixes of operator blocks, allow entries and
/// the flood pool's automatic blocks, four deep over an operator block,
/// expired ones (alone, nested, and more deeply than one lookup skips), and
/// one expiring long after the run.
fn configure_shadow_entries(test: &ProgTest) {
    test.block_shadow(&[
        // Alone.
        "198.18.8.0/24",
        "2001:db8:8::/48",
        // Under operator blocks (more specific).
        "198.18.2.0/26",
        "198.18.101.0/28",
        "2001:db8:bad::/64",
        // Over operator blocks (covering them).
        "198.18.1.0/24",
        "2001:db8:1::/48",
        // At operator blocks' and an allow entry's own prefixes.
        "198.18.3.0/24",
        "2001:db8:3::/48",
        "198.18.101.7/32",
        // Under and over allow entries.
        "198.18.100.0/25",
        "2001:db8:a11::/64",
        "2001:db8:a00::/40",
        // Over the flood pool's automatic blocks (/30 and /56 aggregates).
        "198.18.21.0/24",
        "2001:db8:21::/48",
        // Under and over them, and under the operator blocks of
        // `LATE_BLOCKS` from halfway through.
        "198.18.22.4/32",
        "198.18.22.4/31",
        "198.18.22.0/24",
        "2001:db8:22::/64",
        "2001:db8:22::/60",
        "2001:db8:22::/52",
        // At automatic blocks' own prefixes: the sources are blocked all the same.
        "198.18.23.0/30",
        "2001:db8:23::/56",
        // Four deep over an operator block (under all four, the old
        // design's block lookup, with shadow entries in the blocklist,
        // gave up before it).
        "198.18.9.0/26",
        "198.18.9.0/28",
        "198.18.9.0/30",
        "198.18.9.0/32",
        "2001:db8:9::/64",
        "2001:db8:9::/112",
        "2001:db8:9::/120",
        "2001:db8:9::1/128",
    ]);
    test.block(&["198.18.9.0/24", "2001:db8:9::/48"]);
    // Expired before the run: alone, and nested under operator blocks and
    // shadow entries; five deep over a shadow entry (one lookup skips four,
    // deletes the fifth and matches nothing).
    test.block_shadow_ttl(
        &[
            "198.18.4.0/24",
            "198.18.3.4/32",
            "198.18.8.8/32",
            "2001:db8:8::8/128",
            "198.18.8.16/28",
            "198.18.8.16/29",
            "198.18.8.16/30",
            "198.18.8.16/31",
            "198.18.8.16/32",
            "2001:db8:8::10/124",
            "2001:db8:8::10/125",
            "2001:db8:8::10/126",
            "2001:db8:8::10/127",
            "2001:db8:8::10/128",
        ],
        Duration::from_millis(1),
    );
    // Expiring long after the run, inside an expiring operator block.
    test.block_shadow_ttl(&["198.18.5.0/28"], Duration::from_hours(1));
}

/// Switches rule `id` between shadow and enforced, in the program and both models.
fn toggle_shadow(test: &ProgTest, run: &mut Run, id: u32) {
    let slot = test.live_slot(id) as usize;
    run.model.rules[slot].flags ^= RULE_FLAG_SHADOW;
    run.twin.rules[slot].flags ^= RULE_FLAG_SHADOW;
    test.set_shadow(id, run.model.rules[slot].flags & RULE_FLAG_SHADOW != 0);
}

/// Adds `LATE_BLOCKS` to the program's blocklist and both models'.
fn add_late_blocks(test: &ProgTest, run: &mut Run) {
    test.block(&LATE_BLOCKS);
    for model in [&mut run.model, &mut run.twin] {
        for text in LATE_BLOCKS {
            match text.parse().expect("cidr") {
                Cidr::V4 { addr, prefix } => {
                    model.block_v4.insert_manual(addr, u32::from(prefix), 0);
                }
                Cidr::V6 { addr, prefix } => {
                    model.block_v6.insert_manual(addr, u32::from(prefix), 0);
                }
            }
        }
    }
}

/// Which families' shadow counts are left as they are (`true`) or set to 0,
/// in turn while the frames run.
const SHADOW_GATES: [(bool, bool); 4] =
    [(true, true), (false, true), (true, false), (false, false)];

/// Sets `Config`'s shadow counts in the program and the model: as they were
/// after `configure`, or 0 (the entries stay in the tries).
fn set_shadow_gates(test: &ProgTest, run: &mut Run, (v4, v6): (bool, bool)) {
    let v4 = if v4 { run.shadow_counts.0 } else { 0 };
    let v6 = if v6 { run.shadow_counts.1 } else { 0 };
    test.set_shadow_counts(v4, v6);
    (run.model.shadow_v4_entries, run.model.shadow_v6_entries) = (v4, v6);
}

// ---- generators ------------------------------------------------------------------

const PORTS: [u16; 16] = [
    0, 1, 22, 23, 53, 443, 4999, 5000, 5003, 5010, 5011, 8080, 65534, 65535, 80, 123,
];

fn port(rng: &mut Rng) -> u16 {
    if rng.percent(70) {
        rng.pick(&PORTS)
    } else {
        rng.u16()
    }
}

fn src4(rng: &mut Rng) -> [u8; 4] {
    const SPECIAL: [[u8; 4]; 28] = [
        [198, 18, 8, 8],
        [198, 18, 8, 16],
        [198, 18, 9, 0],
        [198, 18, 9, 1],
        [198, 18, 9, 5],
        [198, 18, 2, 10],
        [198, 18, 100, 200],
        [198, 18, 22, 4],
        [198, 18, 22, 5],
        [198, 18, 4, 5],
        [198, 18, 6, 0],
        [198, 18, 6, 1],
        [198, 18, 1, 1],
        [198, 18, 2, 9],
        [198, 18, 2, 200],
        [198, 18, 3, 3],
        [198, 18, 3, 4],
        [198, 18, 3, 77],
        [198, 18, 4, 4],
        [198, 18, 5, 5],
        [198, 18, 7, 1],
        [198, 18, 100, 1],
        [198, 18, 101, 7],
        [198, 18, 101, 8],
        [198, 18, 101, 9],
        [198, 18, 1, 2],
        [198, 19, 0, 1],
        [198, 18, 0, 1],
    ];
    match rng.below(10) {
        0..=2 => rng.pick(&SPECIAL),
        // A small pool that keeps hitting the rate limits.
        3 | 4 => [198, 18, 20 + rng.byte() % 4, rng.byte() % 32],
        5..=8 => [198, 18 + rng.byte() % 2, rng.byte(), rng.byte()],
        _ => [rng.byte(), rng.byte(), rng.byte(), rng.byte()],
    }
}

fn src6(rng: &mut Rng) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
    match rng.below(10) {
        0..=2 => {
            let net = rng.pick(&[
                0x0001u16, 0x0003, 0x0004, 0x0005, 0x0006, 0x0007, 0x0a11, 0x0bad, 0x0020, 0x0008,
                0x0009, 0x0022,
            ]);
            a[4..6].copy_from_slice(&net.to_be_bytes());
            a[15] = rng.pick(&[1, 2, 3, 4, 8, 9, 16]);
        }
        3 | 4 => {
            a[5] = 0x20 + rng.byte() % 4;
            a[7] = rng.byte() % 2;
            a[15] = rng.byte();
        }
        5 | 6 => {
            for b in &mut a[4..8] {
                *b = rng.byte();
            }
            a[15] = rng.byte();
        }
        7 => {
            // IPv4-mapped: the IPv6 lists apply, not the IPv4 ones.
            a = [0; 16];
            a[10] = 0xff;
            a[11] = 0xff;
            a[12..].copy_from_slice(&src4(rng));
        }
        _ => {
            for b in &mut a[4..] {
                *b = rng.byte();
            }
        }
    }
    a
}

fn gen_l4(rng: &mut Rng) -> L4 {
    match rng.below(20) {
        0..=6 => {
            let mut tcp = Tcp::new(rng.u16(), port(rng));
            tcp.flags = rng.byte();
            if rng.percent(30) {
                let n = rng.below(41);
                tcp = tcp.options(vec![1; n]);
            }
            let n = rng.pick(&[0, 0, 1, 4, 20, 64, 300]);
            L4::Tcp(tcp.payload(rng.bytes(n)))
        }
        7..=12 => {
            let n = rng.pick(&[0, 1, 3, 8, 64, 512]);
            L4::Udp(Udp::new(rng.u16(), port(rng)).payload(rng.bytes(n)))
        }
        13 | 14 => L4::Icmp(Icmp {
            kind: rng.byte(),
            code: rng.byte(),
            rest: [rng.byte(), rng.byte(), rng.byte(), rng.byte()],
            payload: rng.blob(0, 16),
        }),
        15 | 16 => L4::Icmpv6(Icmp {
            kind: rng.byte(),
            code: 0,
            rest: [0; 4],
            payload: rng.blob(0, 16),
        }),
        _ => {
            let protocol = if rng.percent(80) {
                rng.pick(&[
                    proto::GRE,
                    proto::ESP,
                    proto::SCTP,
                    proto::NO_NEXT,
                    proto::HOPOPTS,
                    proto::ROUTING,
                    proto::FRAGMENT,
                    proto::DSTOPTS,
                    proto::ICMP,
                    proto::ICMPV6,
                    proto::TCP,
                    proto::UDP,
                    253,
                ])
            } else {
                rng.byte()
            };
            let n = rng.pick(&[0, 1, 2, 3, 4, 7, 8, 12, 19, 20, 40]);
            L4::raw(protocol, rng.bytes(n))
        }
    }
}

fn gen_ext(rng: &mut Rng) -> Ext {
    let len = rng.pick(&[0, 0, 0, 1, 2, 5]);
    match rng.below(8) {
        0 | 1 => Ext::hop_by_hop(len),
        2 | 3 => Ext::dest_opts(len),
        4 | 5 => Ext::routing(len),
        _ => {
            let offset = if rng.percent(50) {
                0
            } else {
                rng.u16() & 0x1fff
            };
            Ext::fragment(offset, rng.percent(50), u32::from(rng.u16()))
        }
    }
}

fn gen_frame(rng: &mut Rng) -> Frame {
    let mut frame = match rng.below(20) {
        0 => arp(),
        1 => lldp(),
        2 => {
            let ethertype = rng.pick(&[0x0000, 0x0806, 0x8137, 0x88cc, 0x0801, 0x86dc, 0xffff]);
            Frame::other(ethertype, rng.blob(0, 64))
        }
        3..=10 => {
            let mut ip = Ipv4::new(src4(rng), DST4, gen_l4(rng));
            if rng.percent(15) {
                ip = ip.nop_options(rng.below(11));
            }
            if rng.percent(15) {
                let offset = if rng.percent(40) {
                    0
                } else {
                    rng.u16() & 0x1fff
                };
                ip = ip.fragment(offset, rng.percent(50));
            }
            if rng.percent(10) {
                ip = ip.dont_fragment();
            }
            if rng.percent(10) {
                ip = ip.trailer(rng.blob(1, 20));
            }
            Frame::ipv4(ip)
        }
        _ => {
            let mut ip = Ipv6::new(src6(rng), DST6, gen_l4(rng));
            let exts = match rng.below(10) {
                0..=4 => 0,
                5..=7 => 1 + rng.below(3),
                _ => 4 + rng.below(4),
            };
            for _ in 0..exts {
                ip = ip.ext(gen_ext(rng));
            }
            if rng.percent(10) {
                ip = ip.trailer(rng.blob(1, 20));
            }
            Frame::ipv6(ip)
        }
    };
    let tags = match rng.below(20) {
        0..=13 => 0,
        14 | 15 => 1,
        16..=18 => 2,
        _ => 3,
    };
    for _ in 0..tags {
        let tpid = rng.pick(&[TPID_8021Q, TPID_8021AD]);
        frame = frame.tag(tpid, rng.u16());
    }
    frame
}

/// Random bytes, often behind an IP-looking ethertype.
fn gen_random(rng: &mut Rng) -> Vec<u8> {
    let len = 14 + rng.below(120);
    let mut f = rng.bytes(len);
    if rng.percent(75) {
        let t = rng.pick(&[ETHERTYPE_IPV4, ETHERTYPE_IPV6, TPID_8021Q, TPID_8021AD]);
        f[12..14].copy_from_slice(&t.to_be_bytes());
        if len > 14 && rng.percent(50) {
            // A plausible version nibble.
            f[14] = (f[14] & 0x0f) | if t == ETHERTYPE_IPV6 { 0x60 } else { 0x40 };
        }
    }
    f
}

fn set16(f: &mut [u8], at: usize, value: u16) {
    if at + 2 <= f.len() {
        f[at..at + 2].copy_from_slice(&value.to_be_bytes());
    }
}

fn get16(f: &[u8], at: usize) -> u16 {
    if at + 2 <= f.len() {
        u16::from_be_bytes([f[at], f[at + 1]])
    } else {
        0
    }
}

/// An edited value for a length field: small steps, extremes, random.
fn edit16(rng: &mut Rng, old: u16) -> u16 {
    match rng.below(8) {
        0 => old.wrapping_add(1),
        1 => old.wrapping_sub(1),
        2 => old.wrapping_add(8),
        3 => old.wrapping_sub(8),
        4 => 0,
        5 => 0xffff,
        6 => rng.u16() % 128,
        _ => rng.u16(),
    }
}

/// One mutation of a valid frame, guided by its layout (of the frame as
/// built: an earlier mutation may have shortened it).
fn mutate(rng: &mut Rng, mut f: Vec<u8>, layout: &Layout) -> Vec<u8> {
    let l3 = layout.l3;
    let l4 = layout.l4;
    match rng.below(12) {
        0 => {
            for _ in 0..=rng.below(3) {
                let i = rng.below(f.len());
                f[i] ^= 1 << rng.below(8);
            }
        }
        1 => {
            let i = rng.below(f.len());
            f[i] = rng.byte();
        }
        2 => {
            let n = 14 + rng.below(f.len() - 13);
            f.truncate(n);
        }
        3 => {
            let boundaries = layout.boundaries();
            let b = rng.pick(&boundaries);
            let n = match rng.below(3) {
                0 => b.saturating_sub(1),
                1 => b,
                _ => b + 1,
            };
            f.truncate(n.max(14));
        }
        4 => {
            // IPv4 total length or IPv6 payload length.
            let at = if get16(&f, l3.saturating_sub(2)) == ETHERTYPE_IPV6 {
                l3 + 4
            } else {
                l3 + 2
            };
            let v = edit16(rng, get16(&f, at));
            set16(&mut f, at, v);
        }
        5 => {
            // IHL / version nibbles.
            if l3 < f.len() {
                if rng.percent(50) {
                    f[l3] = (f[l3] & 0xf0) | rng.byte() & 0x0f;
                } else {
                    f[l3] = (f[l3] & 0x0f) | (rng.byte() & 0xf0);
                }
            }
        }
        6 => {
            // UDP length or TCP data offset or ICMP bytes.
            if rng.percent(50) {
                let v = edit16(rng, get16(&f, l4 + 4));
                set16(&mut f, l4 + 4, v);
            } else if l4 + 12 < f.len() {
                f[l4 + 12] = (f[l4 + 12] & 0x0f) | (rng.byte() & 0xf0);
            }
        }
        7 => {
            // Extension header length or next header, or the first next header.
            if let Some(&at) = layout
                .ext
                .get(rng.below(layout.ext.len().max(1)))
                .filter(|&&at| at + 1 < f.len())
            {
                if rng.percent(50) {
                    f[at + 1] = rng.pick(&[0, 1, 2, 255, f[at + 1].wrapping_add(1)]);
                } else {
                    f[at] = rng.pick_or_byte(&[0, 43, 44, 60, 59, 6, 17, 58, 1]);
                }
            } else if l3 + 6 < f.len() && get16(&f, l3 - 2) == ETHERTYPE_IPV6 {
                f[l3 + 6] = rng.pick(&[0, 43, 44, 60, 59, 6, 17, 58, 1]);
            }
        }
        8 => {
            // Fragment fields.
            if get16(&f, l3.saturating_sub(2)) == ETHERTYPE_IPV4 {
                let random = rng.u16();
                let v = rng.pick(&[0, 1, 0x1fff, 0x2000, 0x4000, 0x2001, random]);
                set16(&mut f, l3 + 6, v);
            } else if let Some(&at) = layout.ext.first() {
                let random = rng.u16();
                let v = rng.pick(&[0, 1, 6, 8, 9, 0xfff8, random]);
                set16(&mut f, at + 2, v);
            }
        }
        9 => {
            // Protocol / next header.
            let at = if get16(&f, l3.saturating_sub(2)) == ETHERTYPE_IPV6 {
                l3 + 6
            } else {
                l3 + 9
            };
            if at < f.len() {
                f[at] = rng.pick_or_byte(&[1, 6, 17, 58, 0, 43, 44, 60, 47, 50, 59]);
            }
        }
        10 => {
            let extra = rng.blob(1, 40);
            f.extend_from_slice(&extra);
        }
        _ => {
            // Ethertype / TPID games.
            let at = 12 + 4 * rng.below(layout.vlans.len() + 1);
            let t = rng.pick(&[
                ETHERTYPE_IPV4,
                ETHERTYPE_IPV6,
                TPID_8021Q,
                TPID_8021AD,
                0x0806,
            ]);
            set16(&mut f, at, t);
        }
    }
    if f.len() < 14 {
        f.resize(14, 0);
    }
    f
}

/// Every truncation of a set of templates, from the Ethernet header on.
fn systematic() -> Vec<Vec<u8>> {
    let ssh = [198, 18, 7, 1];
    let flood = [198, 18, 20, 1];
    let templates = vec![
        Frame::ipv4(
            Ipv4::new(
                ssh,
                DST4,
                Tcp::new(1, 22).options(vec![2, 4, 5, 0xb4]).into(),
            )
            .nop_options(2),
        )
        .qinq(1)
        .vlan(2),
        Frame::ipv4(Ipv4::new(flood, DST4, Udp::new(1, 65535).into())).vlan(9),
        Frame::ipv4(Ipv4::new(flood, DST4, L4::Icmp(Icmp::echo_v4())).fragment(0, true)),
        Frame::ipv4(Ipv4::new(flood, DST4, Tcp::new(1, 23).into()).fragment(7, false)),
        Frame::ipv6(
            Ipv6::new(
                [0x20, 0x01, 0x0d, 0xb8, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                DST6,
                Tcp::new(1, 0).into(),
            )
            .ext(Ext::hop_by_hop(0))
            .ext(Ext::routing(1))
            .ext(Ext::fragment(0, true, 3))
            .ext(Ext::dest_opts(0)),
        )
        .qinq(5),
        Frame::ipv6(
            Ipv6::new(
                [
                    0x20, 0x01, 0x0d, 0xb8, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2,
                ],
                DST6,
                Udp::new(1, 0).into(),
            )
            .ext(Ext::dest_opts(1))
            .ext(Ext::fragment(20, true, 3)),
        ),
        Frame::ipv6(Ipv6::new(
            [
                0x20, 0x01, 0x0d, 0xb8, 0, 0x0b, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2,
            ],
            DST6,
            L4::Icmpv6(Icmp::echo_v6()),
        )),
        Frame::ipv6(
            Ipv6::new(
                [
                    0x20, 0x01, 0x0d, 0xb8, 0, 0x21, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2,
                ],
                DST6,
                Udp::new(1, 5005).into(),
            )
            .ext(Ext::hop_by_hop(0))
            .ext(Ext::dest_opts(0))
            .ext(Ext::routing(0))
            .ext(Ext::dest_opts(0))
            .ext(Ext::routing(0))
            .ext(Ext::dest_opts(0)),
        ),
    ];
    let mut out = Vec::new();
    for template in templates {
        let full = template.build();
        for len in 14..=full.len() {
            out.push(full[..len].to_vec());
        }
        // The same frame claiming one byte more than it has, at each length field.
        if let Net::Ipv4(_) | Net::Ipv6(_) = template.net {
            let (bytes, layout) = template.build_with_layout();
            for at in [layout.l3 + 2, layout.l3 + 4, layout.l4 + 4] {
                let mut f = bytes.clone();
                let v = get16(&f, at).wrapping_add(1);
                set16(&mut f, at, v);
                out.push(f);
            }
        }
    }
    out
}

// ---- the test ------------------------------------------------------------------

fn seed_from_env() -> u64 {
    match std::env::var("FILTER_DIFF_SEED") {
        Err(_) => DEFAULT_SEED,
        Ok(text) if text == "random" => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            let mut rng = Rng(u64::try_from(nanos & u128::from(u64::MAX)).unwrap_or(1));
            rng.next()
        }
        Ok(text) => {
            let text = text.trim();
            let parsed = text
                .strip_prefix("0x")
                .map_or_else(|| text.parse(), |hex| u64::from_str_radix(hex, 16));
            parsed.unwrap_or_else(|e| {
                panic!("FILTER_DIFF_SEED={text}: {e} (a number, 0x-hex, or `random`)")
            })
        }
    }
}

fn frames_from_env() -> usize {
    std::env::var("FILTER_DIFF_FRAMES").map_or(DEFAULT_FRAMES, |text| {
        text.trim()
            .parse()
            .unwrap_or_else(|e| panic!("FILTER_DIFF_FRAMES={text}: {e}"))
    })
}

struct Run {
    seed: u64,
    model: Model,
    /// The same run without any shadow entry (empty shadow tries, counts 0).
    twin: Model,
    /// `Config`'s shadow counts after `configure`.
    shadow_counts: (u32, u32),
    before: [Counter; reason::COUNT as usize],
    mismatches: Vec<String>,
    /// Frames by the reason of their verdict.
    by_reason: BTreeMap<&'static str, u64>,
    /// Frames by shadow reason counted besides the verdict, and verdict.
    by_shadow: BTreeMap<(&'static str, &'static str), u64>,
    by_kind: BTreeMap<(&'static str, &'static str), u64>,
    /// Frames from a source an active shadow entry covers, by family,
    /// whether the family's shadow count let the program look, and verdict.
    covered: BTreeMap<(&'static str, &'static str, &'static str), u64>,
    frames: u64,
}

impl Run {
    fn new(test: &ProgTest, seed: u64) -> Self {
        let model = test.model();
        let mut twin = model.clone();
        twin.shadow_block_v4.entries.clear();
        twin.shadow_block_v6.entries.clear();
        (twin.shadow_v4_entries, twin.shadow_v6_entries) = (0, 0);
        Self {
            seed,
            shadow_counts: (model.shadow_v4_entries, model.shadow_v6_entries),
            model,
            twin,
            before: test.stats(),
            mismatches: Vec::new(),
            by_reason: BTreeMap::new(),
            by_shadow: BTreeMap::new(),
            by_kind: BTreeMap::new(),
            covered: BTreeMap::new(),
            frames: 0,
        }
    }

    /// For an IP frame whose source an active shadow entry covers now: its
    /// family, and whether the program may look (the family's count is not 0).
    fn shadow_cover(&self, frame: &[u8], now_ns: u64) -> Option<(&'static str, bool)> {
        let model::Parsed::Ip(info) = model::parse(frame) else {
            return None;
        };
        let m = &self.model;
        if info.is_v4 {
            m.shadow_block_v4
                .would_match(info.source_v4(), now_ns)
                .then_some(("IPv4", m.shadow_v4_entries != 0))
        } else {
            m.shadow_block_v6
                .would_match(info.mapped_source, now_ns)
                .then_some(("IPv6", m.shadow_v6_entries != 0))
        }
    }

    fn check(&mut self, test: &ProgTest, kind: &'static str, frame: &[u8]) {
        self.frames += 1;
        let now_ns = filter_ctl::clock::monotonic_ns();
        let cover = self.shadow_cover(frame, now_ns);
        let expected: Decision = self.model.decide(frame, now_ns);
        let without = self.twin.decide(frame, now_ns);
        let action = test.run(frame);
        let after = test.stats();
        let mut delta = [Counter::default(); reason::COUNT as usize];
        for (i, d) in delta.iter_mut().enumerate() {
            d.packets = after[i].packets - self.before[i].packets;
            d.bytes = after[i].bytes - self.before[i].bytes;
        }
        self.before = after;
        let outcome = Outcome { action, delta };
        let got = outcome.decision(frame.len());
        let name = reason::NAMES[expected.reason as usize];
        *self.by_reason.entry(name).or_default() += 1;
        *self.by_kind.entry((kind, name)).or_default() += 1;
        if let Some(shadow) = expected.shadow {
            *self
                .by_shadow
                .entry((reason::NAMES[shadow as usize], name))
                .or_default() += 1;
        }
        if let Some((family, open)) = cover {
            let gate = if open { "looked up" } else { "count 0" };
            *self.covered.entry((family, gate, name)).or_default() += 1;
        }
        if got != Ok(expected) || action != model::action_of(expected.reason) {
            self.mismatches.push(format!(
                "frame #{} ({kind}, {} bytes): kernel {} / {}, model {} / {} (parse: {:?})\n{}",
                self.frames,
                frame.len(),
                action_name(action),
                got.map_or_else(|moved| moved, |d| d.name()),
                action_name(model::action_of(expected.reason)),
                expected.name(),
                model::parse(frame),
                hex(frame)
            ));
        }
        // Shadow entries add `shadow_blocklist` at most, never anything else.
        let unshadowed = Decision {
            reason: expected.reason,
            shadow: expected
                .shadow
                .filter(|&shadow| shadow != reason::SHADOW_BLOCKLIST),
        };
        if without != unshadowed {
            self.mismatches.push(format!(
                "frame #{} ({kind}, {} bytes): the model says {} with the shadow entries, {} without them\n{}",
                self.frames,
                frame.len(),
                expected.name(),
                without.name(),
                hex(frame)
            ));
        }
    }

    fn done(&self) -> bool {
        self.mismatches.len() >= MAX_REPORTED
    }
}

#[test]
fn kernel_and_model_agree_on_every_frame() {
    if skip_unless_root("kernel_and_model_agree_on_every_frame") {
        return;
    }
    let seed = seed_from_env();
    let count = frames_from_env();
    println!(
        "differential: seed {seed} (replay with FILTER_DIFF_SEED={seed}), {count} generated frames"
    );
    let start = Instant::now();
    // A tracking table large enough that its sets almost never overflow
    // (about one eviction a run, against about a hundred at 262,144 slots):
    // the model does not evict.
    let test = ProgTest::with_capacities(&Capacities {
        list: 65_536,
        buckets: 4_194_304,
    });
    let rules = configure(&test);
    let mut run = Run::new(&test, seed);
    assert!(
        run.shadow_counts.0 != 0 && run.shadow_counts.1 != 0,
        "shadow counts after configure: {:?}",
        run.shadow_counts
    );
    let setup = start.elapsed();

    for frame in systematic() {
        run.check(&test, "systematic", &frame);
    }
    let mut rng = Rng(seed);
    // The default rule switches between shadow and enforced every `period`
    // frames, the automatic-blocking rule half a period later; the shadow
    // counts go through `SHADOW_GATES` every quarter period.
    let period = (count / 8).max(4);
    let mut toggles = 0;
    let mut gates = 0;
    for i in 0..count {
        if run.done() {
            break;
        }
        if i > 0 && i % period == 0 {
            toggle_shadow(&test, &mut run, rules.default);
            toggles += 1;
        }
        if i % period == period / 2 {
            toggle_shadow(&test, &mut run, rules.game);
            toggles += 1;
        }
        if i > 0 && i % (period / 4) == 0 {
            gates += 1;
            set_shadow_gates(&test, &mut run, SHADOW_GATES[gates % SHADOW_GATES.len()]);
        }
        if i == count / 2 {
            add_late_blocks(&test, &mut run);
        }
        match rng.below(10) {
            0 | 1 => {
                let f = gen_random(&mut rng);
                run.check(&test, "random", &f);
            }
            2..=5 => {
                let f = gen_frame(&mut rng).build();
                run.check(&test, "valid", &f);
            }
            _ => {
                let (f, layout) = gen_frame(&mut rng).build_with_layout();
                let mut f = mutate(&mut rng, f, &layout);
                if rng.percent(20) {
                    f = mutate(&mut rng, f, &layout);
                }
                run.check(&test, "mutated", &f);
            }
        }
    }
    let elapsed = start.elapsed();
    // The model keeps every bucket; the kernel's 2-way table evicts one
    // when a third key lands in a full set (its seed is new each load, so a
    // seed replays the frames, not the evictions).
    let evictions = test
        .reader()
        .table_stat(filter_common::table_stat::BUCKET_EVICTIONS)
        .expect("TABLE_STATS");
    assert!(
        run.mismatches.is_empty(),
        "seed {} (replay with FILTER_DIFF_SEED={}): {} disagreement(s) in {} frames ({evictions} tracking-table evictions, which the model does not make: a rate-limit disagreement may follow one):\n\n{}",
        run.seed,
        run.seed,
        run.mismatches.len(),
        run.frames,
        run.mismatches.join("\n\n")
    );

    // Totals (shadow reasons too), rule counters, automatic blocks and the
    // lists agree too.
    let totals = test.stats();
    assert_eq!(totals, run.model.stats, "per-reason totals (seed {seed})");
    for &id in &rules.ids {
        assert_eq!(
            test.rule_counters(id),
            run.model.rule_stats[id as usize],
            "rule counters of rule {id} (seed {seed})"
        );
    }
    let mut kernel_auto: Vec<String> = test
        .autoblocks()
        .iter()
        .map(|(c, _)| c.to_string())
        .collect();
    kernel_auto.sort();
    let mut model_auto: Vec<String> = run
        .model
        .block_v4
        .entries
        .iter()
        .filter(|e| e.origin == ORIGIN_AUTO)
        .map(|e| format!("{}/{}", std::net::Ipv4Addr::from(e.net), e.prefix))
        .chain(
            run.model
                .block_v6
                .entries
                .iter()
                .filter(|e| e.origin == ORIGIN_AUTO)
                .map(|e| format!("{}/{}", std::net::Ipv6Addr::from(e.net), e.prefix)),
        )
        .collect();
    model_auto.sort();
    assert_eq!(kernel_auto, model_auto, "automatic blocks (seed {seed})");
    let m = &run.model;
    for (tries, model_entries) in [
        (Tries::Allow, model_list(&m.allow_v4, &m.allow_v6)),
        (Tries::Block, model_list(&m.block_v4, &m.block_v6)),
        (
            Tries::ShadowBlock,
            model_list(&m.shadow_block_v4, &m.shadow_block_v6),
        ),
    ] {
        assert_eq!(
            kernel_list(&test, tries),
            model_entries,
            "{} entries left, expired ones included (seed {seed})",
            tries.name()
        );
    }
    assert_shadow_changed_nothing(&run);
    let failed = test
        .reader()
        .table_stat(table_stat::AUTOBLOCKS_FAILED)
        .expect("TABLE_STATS");
    assert_eq!(failed, 0, "automatic blocks failed (blocklist full?)");
    let manual_left = test
        .reader()
        .list_entries_raw(ListKind::Block)
        .expect("blocklist")
        .len();

    println!(
        "differential: {} frames in {:.1?} (setup {:.1?}), seed {seed}, {evictions} tracking-table evictions",
        run.frames, elapsed, setup
    );
    for (name, n) in &run.by_reason {
        println!("  {name:>18}: {n}");
    }
    for ((shadow, verdict), n) in &run.by_shadow {
        println!("  {shadow:>18}: {n} besides {verdict}");
    }
    for ((family, gate, verdict), n) in &run.covered {
        println!("  under shadow entries: {family}, {gate}, {verdict}: {n}");
    }
    let kinds: Vec<String> = run
        .by_kind
        .iter()
        .map(|((kind, name), n)| format!("{kind}/{name}={n}"))
        .collect();
    println!("  by generator: {}", kinds.join(" "));
    println!(
        "  automatic blocks: {}, blocklist entries at the end: {manual_left}, shadow switches: {toggles}, shadow count switches: {gates}",
        kernel_auto.len()
    );
    // Shadow reasons are never a frame's verdict: they are counted besides it.
    for (r, name) in (0..).zip(reason::NAMES) {
        if reason::is_shadow(r) {
            assert!(!run.by_reason.contains_key(name), "a frame ended as {name}");
            assert!(
                run.by_shadow.keys().any(|(shadow, _)| *shadow == name),
                "no frame counted {name}: the generator lost coverage"
            );
        } else {
            assert!(
                run.by_reason.get(name).copied().unwrap_or(0) > 0,
                "no frame ended as {name}: the generator lost coverage"
            );
        }
    }
    // Nothing is counted besides an allowed source.
    let allowlist = reason::NAMES[reason::ALLOWLIST as usize];
    assert!(
        !run.by_shadow
            .keys()
            .any(|(_, verdict)| *verdict == allowlist),
        "a shadow reason counted besides allowlist: {:?}",
        run.by_shadow
    );
    // A shadow block entry matters whatever decides: nothing, a rule, a
    // shadow rule (which takes its place), an operator's or automatic block.
    for (shadow, verdict) in [
        (reason::SHADOW_BLOCKLIST, reason::PASS),
        (reason::SHADOW_BLOCKLIST, reason::BLOCKLIST),
        (reason::SHADOW_BLOCKLIST, reason::AUTOBLOCK),
        (reason::SHADOW_BLOCKLIST, reason::RATELIMIT),
        (reason::SHADOW_BLOCKLIST, reason::PORT_DENIED),
        (reason::SHADOW_RATELIMIT, reason::PASS),
        (reason::SHADOW_PORT_DENIED, reason::PASS),
    ] {
        let key = (
            reason::NAMES[shadow as usize],
            reason::NAMES[verdict as usize],
        );
        assert!(
            run.by_shadow.contains_key(&key),
            "no frame counted {} besides {}: the generator lost coverage",
            key.0,
            key.1
        );
    }
    // Sources under shadow entries were met allowed, and while their
    // family's count was 0 (not counted then: the frames agreed).
    for family in ["IPv4", "IPv6"] {
        for (gate, verdict) in [("looked up", allowlist), ("count 0", "pass")] {
            assert!(
                run.covered.contains_key(&(family, gate, verdict)),
                "no {family} frame under a shadow entry ended as {verdict} with the shadow lookup {gate}: the generator lost coverage"
            );
        }
    }
}

/// The run without shadow entries ended in the same state: lists, automatic
/// blocks, buckets, rule counters, and every counter but `shadow_blocklist`.
fn assert_shadow_changed_nothing(run: &Run) {
    let (m, t) = (&run.model, &run.twin);
    let seed = run.seed;
    assert_eq!(
        model_list(&t.block_v4, &t.block_v6),
        model_list(&m.block_v4, &m.block_v6),
        "blocklists with and without shadow entries (seed {seed})"
    );
    assert_eq!(
        model_list(&t.allow_v4, &t.allow_v6),
        model_list(&m.allow_v4, &m.allow_v6),
        "allowlists with and without shadow entries (seed {seed})"
    );
    assert_eq!(
        t.autoblock_log, m.autoblock_log,
        "automatic blocks with and without shadow entries (seed {seed})"
    );
    assert_eq!(
        t.buckets, m.buckets,
        "buckets with and without shadow entries (seed {seed})"
    );
    assert_eq!(
        t.rule_stats, m.rule_stats,
        "rule counters with and without shadow entries (seed {seed})"
    );
    let mut stats = m.stats;
    stats[reason::SHADOW_BLOCKLIST as usize] = Counter::default();
    assert_eq!(
        t.stats, stats,
        "counters with and without shadow entries, shadow_blocklist aside (seed {seed})"
    );
}

/// Every entry of `tries` the program holds, expired ones included: prefix,
/// expiry (set by user space: automatic blocks' follow the program's clock),
/// origin, flags, and for automatic blocks rule and count.
fn kernel_list(test: &ProgTest, tries: Tries) -> Vec<String> {
    let mut out: Vec<String> = test
        .reader()
        .entries_raw(tries)
        .expect("reading the lists")
        .iter()
        .map(|(c, e)| match *c {
            Cidr::V4 { addr, prefix } => {
                describe_entry(&c.to_string(), &ListItem::from_entry(addr, prefix, e))
            }
            Cidr::V6 { addr, prefix } => {
                describe_entry(&c.to_string(), &ListItem::from_entry(addr, prefix, e))
            }
        })
        .collect();
    out.sort();
    out
}

/// [`kernel_list`] of a model's list pair.
fn model_list(v4: &PrefixList<4>, v6: &PrefixList<16>) -> Vec<String> {
    let mut out: Vec<String> = v4
        .entries
        .iter()
        .map(|e| {
            let cidr = format!("{}/{}", std::net::Ipv4Addr::from(e.net), e.prefix);
            describe_entry(&cidr, e)
        })
        .chain(v6.entries.iter().map(|e| {
            let cidr = format!("{}/{}", std::net::Ipv6Addr::from(e.net), e.prefix);
            describe_entry(&cidr, e)
        }))
        .collect();
    out.sort();
    out
}

fn describe_entry<const N: usize>(cidr: &str, e: &ListItem<N>) -> String {
    let expires = if e.origin == ORIGIN_AUTO {
        "(the program's)".to_string()
    } else {
        e.expires_at_ns.to_string()
    };
    format!(
        "{cidr} expires {expires} origin {} flags {} rule {} over {}",
        e.origin, e.flags, e.rule, e.over_limit
    )
}
