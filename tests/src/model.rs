//! Reference model of the XDP program's decision, written from the
//! specification (not from the kernel code): plain Rust over a byte slice and
//! a copy of the map contents. The differential test runs every frame through
//! both and compares verdict, reason and the shadow reason counted beside it.
//!
//! The decision, in order: a malformed or non-IP frame is decided by the
//! parser. Otherwise the allowlist (looked up only while `Config` counts
//! entries in it) and the blocklist are looked up; an allowed source passes
//! (`allowlist`, nothing else counted). Then, only for a source not allowed
//! and only while `Config` counts entries in them, the shadow blocklist (a
//! shadow policy's blocks, in tries of their own) is looked up: a match is
//! counted as `shadow_blocklist` besides whatever the real verdict is, and
//! never changes it. The blocklist decides next (an operator's or policy's
//! block before automatic ones), then the port's rule or the default rule;
//! a shadow rule's would-be drop is counted instead of `shadow_blocklist`.
//! Every list lookup deletes the expired longest matches it meets, except
//! the blocklist's entries in `BLOCK_HOSTS` (an operator's hosts, IPv4 /24s,
//! IPv6 /64s and /48s), which the controller's sweep deletes.

use std::collections::HashMap;

use filter_common::{
    Bucket, Counter, DEFAULT_RULE, IPPROTO_TCP, IPPROTO_UDP, MAX_RULES, ORIGIN_AUTO,
    PORT_INDEX_ENTRIES, PORT_INDEX_UDP_BASE, RULE_DROP, RULE_FLAG_ONLY_FROM, RULE_FLAG_SHADOW,
    RULE_LIMIT, RULE_SLOTS, RateRule, RuleCounter, TICKS_PER_NS, reason, xdp_action,
};

/// No header may start beyond this offset.
const MAX_HEADER_OFFSET: usize = 4096;
/// Extension headers walked before giving up.
const MAX_EXT_HEADERS: usize = 6;

/// The verdict the reason implies.
#[must_use]
pub fn action_of(reason: u32) -> u32 {
    if reason::is_drop(reason) {
        xdp_action::DROP
    } else {
        xdp_action::PASS
    }
}

/// The decision on one frame: the reason of its verdict, and the shadow
/// reason counted besides it when a shadow block entry or a shadow rule
/// would have dropped the frame (`reason::SHADOW_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub reason: u32,
    pub shadow: Option<u32>,
}

impl Decision {
    /// A decision without a shadow reason.
    #[must_use]
    pub const fn plain(reason: u32) -> Self {
        Self {
            reason,
            shadow: None,
        }
    }

    /// `pass` or `pass + shadow_ratelimit`.
    #[must_use]
    pub fn name(&self) -> String {
        let name = reason::NAMES[self.reason as usize];
        match self.shadow {
            Some(shadow) => format!("{name} + {}", reason::NAMES[shadow as usize]),
            None => name.to_string(),
        }
    }
}

/// What the parser makes of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    NonIp,
    Malformed,
    Ip(IpInfo),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpInfo {
    /// The source address, IPv4-mapped for IPv4.
    pub mapped_source: [u8; 16],
    pub is_v4: bool,
    /// Upper-layer protocol (for a non-first IPv6 fragment: the fragment header's next header).
    pub protocol: u8,
    /// Destination port, for TCP/UDP that is not a non-first fragment.
    pub dport: Option<u16>,
}

impl IpInfo {
    #[must_use]
    pub fn source_v4(&self) -> [u8; 4] {
        let mut out = [0; 4];
        out.copy_from_slice(&self.mapped_source[12..]);
        out
    }
}

fn be16(f: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([f[at], f[at + 1]])
}

/// Whether `len` bytes starting at `at` lie inside the frame.
fn has(f: &[u8], at: usize, len: usize) -> bool {
    at <= MAX_HEADER_OFFSET && at + len <= f.len()
}

/// Parses a frame as the specification says.
#[must_use]
pub fn parse(f: &[u8]) -> Parsed {
    if !has(f, 0, 14) {
        return Parsed::Malformed;
    }
    let mut ethertype = be16(f, 12);
    let mut off = 14;
    let mut tags = 0;
    while ethertype == 0x8100 || ethertype == 0x88A8 {
        if tags == 2 || !has(f, off, 4) {
            return Parsed::Malformed;
        }
        ethertype = be16(f, off + 2);
        off += 4;
        tags += 1;
    }
    match ethertype {
        0x0800 => parse_v4(f, off),
        0x86DD => parse_v6(f, off),
        _ => Parsed::NonIp,
    }
}

fn parse_v4(f: &[u8], off: usize) -> Parsed {
    if !has(f, off, 20) || f[off] >> 4 != 4 {
        return Parsed::Malformed;
    }
    let ihl = usize::from(f[off] & 0x0f) * 4;
    let total = usize::from(be16(f, off + 2));
    if ihl < 20 || total < ihl || !has(f, off, total) {
        return Parsed::Malformed;
    }
    let mut mapped_source = [0u8; 16];
    mapped_source[10] = 0xff;
    mapped_source[11] = 0xff;
    mapped_source[12..].copy_from_slice(&f[off + 12..off + 16]);
    let protocol = f[off + 9];
    let info = IpInfo {
        mapped_source,
        is_v4: true,
        protocol,
        dport: None,
    };
    if be16(f, off + 6) & 0x1fff != 0 {
        return Parsed::Ip(info);
    }
    transport(f, off + ihl, total - ihl, info)
}

fn parse_v6(f: &[u8], off: usize) -> Parsed {
    if !has(f, off, 40) || f[off] >> 4 != 6 {
        return Parsed::Malformed;
    }
    let payload_length = usize::from(be16(f, off + 4));
    if payload_length == 0 || !has(f, off, 40 + payload_length) {
        return Parsed::Malformed;
    }
    let mut mapped_source = [0u8; 16];
    mapped_source.copy_from_slice(&f[off + 8..off + 24]);
    // IPv4-mapped sources (::ffff:0:0/96) never appear on the wire.
    if mapped_source[..12] == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff] {
        return Parsed::Malformed;
    }
    let mut info = IpInfo {
        mapped_source,
        is_v4: false,
        protocol: 0,
        dport: None,
    };
    let mut next = f[off + 6];
    let mut cur = off + 40;
    let mut remaining = payload_length;
    for _ in 0..MAX_EXT_HEADERS {
        let len = match next {
            0 | 43 | 60 => {
                if !has(f, cur, 2) {
                    return Parsed::Malformed;
                }
                (usize::from(f[cur + 1]) + 1) * 8
            }
            44 => {
                if !has(f, cur, 8) {
                    return Parsed::Malformed;
                }
                if be16(f, cur + 2) & 0xfff8 != 0 {
                    if remaining < 8 {
                        return Parsed::Malformed;
                    }
                    info.protocol = f[cur];
                    return Parsed::Ip(info);
                }
                8
            }
            _ => {
                info.protocol = next;
                return transport(f, cur, remaining, info);
            }
        };
        if len > remaining {
            return Parsed::Malformed;
        }
        next = f[cur];
        cur += len;
        remaining -= len;
    }
    if matches!(next, 0 | 43 | 44 | 60) {
        return Parsed::Malformed;
    }
    info.protocol = next;
    transport(f, cur, remaining, info)
}

fn transport(f: &[u8], at: usize, ip_payload: usize, mut info: IpInfo) -> Parsed {
    let min = match info.protocol {
        6 => 20,
        17 | 1 => 8,
        58 => 4,
        _ => return Parsed::Ip(info),
    };
    if ip_payload < min || !has(f, at, min) {
        return Parsed::Malformed;
    }
    match info.protocol {
        6 => {
            let doff = usize::from(f[at + 12] >> 4) * 4;
            if doff < 20 || doff > ip_payload {
                return Parsed::Malformed;
            }
            info.dport = Some(be16(f, at + 2));
        }
        17 => {
            let len = usize::from(be16(f, at + 4));
            if len < 8 || len > ip_payload {
                return Parsed::Malformed;
            }
            info.dport = Some(be16(f, at + 2));
        }
        _ => {}
    }
    Parsed::Ip(info)
}

/// Clears every bit after the first `prefix` bits.
#[must_use]
pub fn mask<const N: usize>(mut bytes: [u8; N], prefix: u32) -> [u8; N] {
    for (i, byte) in bytes.iter_mut().enumerate() {
        let bit = u32::try_from(i * 8).unwrap_or(u32::MAX);
        if bit >= prefix {
            *byte = 0;
        } else if prefix - bit < 8 {
            *byte &= 0xffu8 << (8 - (prefix - bit));
        }
    }
    bytes
}

/// One allow/block/shadow block list entry (automatic blocks are blocklist
/// entries too).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListItem<const N: usize> {
    pub net: [u8; N],
    pub prefix: u32,
    /// `CLOCK_MONOTONIC` ns after which the entry no longer matches; 0 = permanent.
    pub expires_at_ns: u64,
    /// `ORIGIN_*`: only automatic blocks decide differently.
    pub origin: u8,
    /// Reserved (0); kept to compare the lists as stored.
    pub flags: u8,
    /// For automatic blocks: the rule id and over-limit count that triggered it.
    pub rule: u32,
    pub over_limit: u64,
}

impl<const N: usize> ListItem<N> {
    /// The model's copy of a list entry read from the program's maps.
    #[must_use]
    pub fn from_entry(net: [u8; N], prefix: u8, entry: &filter_common::ListEntry) -> Self {
        Self {
            net,
            prefix: u32::from(prefix),
            expires_at_ns: entry.expires_at_ns,
            origin: entry.origin,
            flags: entry.flags,
            rule: u32::from(entry.rule),
            over_limit: u64::from(entry.over_limit),
        }
    }

    fn is_active(&self, now_ns: u64) -> bool {
        self.expires_at_ns == 0 || now_ns < self.expires_at_ns
    }

    /// On the blocklist, an entry `BLOCK_HOSTS` holds, not a trie: not an
    /// automatic block, and a host or a prefix of the table's lengths; the
    /// tests' tables have room for all.
    fn is_table_entry(&self) -> bool {
        self.origin != ORIGIN_AUTO && table_lengths::<N>().contains(&self.prefix)
    }
}

/// The prefix lengths of a family's entries in `BLOCK_HOSTS`, in the order
/// the program probes them: the host, then the table's prefix lengths,
/// longest first (the program probes only those its region's length mask
/// names, which is every length the table holds there).
fn table_lengths<const N: usize>() -> Vec<u32> {
    let (host, shortest, longest) = if N == 4 {
        (32, filter_common::TABLE_SHORTEST_V4, 31)
    } else {
        (
            128,
            filter_common::TABLE_SHORTEST_V6,
            filter_common::TABLE_LONGEST_V6,
        )
    };
    std::iter::once(host)
        .chain((u32::from(shortest)..=u32::from(longest)).rev())
        .collect()
}

/// Expired longest matches a lookup deletes before it gives up.
pub const MAX_EXPIRED_SKIPS: usize = 4;

/// Matches a block lookup looks at (automatic blocks go on to shorter
/// prefixes) before it gives up looking for an operator's block.
pub const MAX_BLOCK_MATCHES: usize = 4;

/// An allow/block/shadow block list of one family: longest-prefix match.
#[derive(Clone, Debug, Default)]
pub struct PrefixList<const N: usize> {
    pub entries: Vec<ListItem<N>>,
}

impl<const N: usize> PrefixList<N> {
    /// Adds or replaces the entry for `item`'s prefix (host bits cleared)
    /// in its store: on the blocklist, an operator's host or table prefix
    /// (`BLOCK_HOSTS`) and an automatic block of the same prefix (a trie)
    /// are two entries.
    pub fn insert(&mut self, mut item: ListItem<N>) {
        item.net = mask(item.net, item.prefix);
        self.entries.retain(|e| {
            !(e.net == item.net
                && e.prefix == item.prefix
                && e.is_table_entry() == item.is_table_entry())
        });
        self.entries.push(item);
    }

    /// Adds a permanent or expiring operator entry.
    pub fn insert_manual(&mut self, net: [u8; N], prefix: u32, expires_at_ns: u64) {
        self.insert(ListItem {
            net,
            prefix,
            expires_at_ns,
            origin: filter_common::ORIGIN_CLI,
            flags: 0,
            rule: 0,
            over_limit: 0,
        });
    }

    /// Adds a permanent or expiring entry of a policy (a shadow policy's
    /// blocks go to the shadow blocklist).
    pub fn insert_policy(&mut self, net: [u8; N], prefix: u32, expires_at_ns: u64) {
        self.insert(ListItem {
            net,
            prefix,
            expires_at_ns,
            origin: filter_common::ORIGIN_POLICY,
            flags: 0,
            rule: 0,
            over_limit: 0,
        });
    }

    /// Whether the trie stores an entry, active or expired, for exactly
    /// this prefix: what the program's insert of an automatic block
    /// (`BPF_NOEXIST`) finds in its way (not the blocklist's table entries).
    #[must_use]
    pub fn holds_in_trie(&self, net: [u8; N], prefix: u32) -> bool {
        let net = mask(net, prefix);
        self.entries
            .iter()
            .any(|e| e.net == net && e.prefix == prefix && !e.is_table_entry())
    }

    fn longest(&self, addr: [u8; N], max_prefix: u32, skip_table: bool) -> Option<usize> {
        self.entries
            .iter()
            .enumerate()
            .filter(|(_, e)| !(skip_table && e.is_table_entry()))
            .filter(|(_, e)| e.prefix <= max_prefix && mask(addr, e.prefix) == e.net)
            .max_by_key(|(_, e)| e.prefix)
            .map(|(i, _)| i)
    }

    /// The blocklist's host-table probes (`BLOCK_HOSTS`): whether the
    /// table holds an active entry for `addr` itself or its prefix of one of
    /// the table's lengths. Never deletes: the controller's sweep removes
    /// expired entries.
    fn table_blocks(&self, addr: [u8; N], now_ns: u64) -> bool {
        table_lengths::<N>().into_iter().any(|len| {
            let net = mask(addr, len);
            self.entries.iter().any(|e| {
                e.is_table_entry() && e.prefix == len && e.net == net && e.is_active(now_ns)
            })
        })
    }

    /// The entry deciding for `addr`: the longest matching prefix, if active.
    /// An expired longest match is deleted and the lookup repeated, at most
    /// [`MAX_EXPIRED_SKIPS`] times; an expired match after that is deleted
    /// too, and the lookup ends without a match.
    pub fn lookup(&mut self, addr: [u8; N], now_ns: u64) -> Option<ListItem<N>> {
        self.lookup_within(addr, u32::MAX, now_ns)
    }

    /// [`Self::lookup`] among prefixes of at most `max_prefix` bits.
    pub fn lookup_within(
        &mut self,
        addr: [u8; N],
        max_prefix: u32,
        now_ns: u64,
    ) -> Option<ListItem<N>> {
        self.lookup_in_trie(addr, max_prefix, now_ns, false)
    }

    /// [`Self::lookup_within`] among the entries a trie holds: without the
    /// blocklist's table entries (`skip_table`), which live in `BLOCK_HOSTS`.
    fn lookup_in_trie(
        &mut self,
        addr: [u8; N],
        max_prefix: u32,
        now_ns: u64,
        skip_table: bool,
    ) -> Option<ListItem<N>> {
        for _ in 0..=MAX_EXPIRED_SKIPS {
            let i = self.longest(addr, max_prefix, skip_table)?;
            if self.entries[i].is_active(now_ns) {
                return Some(self.entries[i]);
            }
            self.entries.swap_remove(i);
        }
        None
    }

    /// Whether [`Self::lookup`] would find a match now, without deleting
    /// anything (for tests' bookkeeping, never for a decision).
    #[must_use]
    pub fn would_match(&self, addr: [u8; N], now_ns: u64) -> bool {
        self.clone().lookup(addr, now_ns).is_some()
    }
}

/// Why the blocklist drops `addr`, if it does. An operator's (or a
/// policy's) block takes precedence over automatic blocks: while the longest
/// active match is an automatic block, the lookup goes on among shorter
/// prefixes, for at most [`MAX_BLOCK_MATCHES`] matches. Automatic blocks
/// alone: `autoblock`.
fn block_reason<const N: usize>(
    list: &mut PrefixList<N>,
    addr: [u8; N],
    now_ns: u64,
) -> Option<u32> {
    // An operator's block of the host itself or of a prefix of the table's
    // lengths, in `BLOCK_HOSTS`: no trie lookup (an expired one is skipped
    // and stays for the sweep).
    if list.table_blocks(addr, now_ns) {
        return Some(reason::BLOCKLIST);
    }
    let mut max_prefix = u32::MAX;
    let mut auto = false;
    for _ in 0..MAX_BLOCK_MATCHES {
        let Some(found) = list.lookup_in_trie(addr, max_prefix, now_ns, true) else {
            break;
        };
        if found.origin != ORIGIN_AUTO {
            return Some(reason::BLOCKLIST);
        }
        auto = true;
        if found.prefix == 0 {
            break;
        }
        max_prefix = found.prefix - 1;
    }
    auto.then_some(reason::AUTOBLOCK)
}

/// The map contents the program decides with, and its counters.
#[derive(Clone, Debug)]
pub struct Model {
    pub allow_v4: PrefixList<4>,
    pub allow_v6: PrefixList<16>,
    pub block_v4: PrefixList<4>,
    pub block_v6: PrefixList<16>,
    /// A shadow policy's blocks (`SHADOW_BLOCK_V4`/`V6`): counted, never enforced.
    pub shadow_block_v4: PrefixList<4>,
    pub shadow_block_v6: PrefixList<16>,
    /// `Config`'s entry counts: while one is 0, the program skips that
    /// lookup (whatever the list holds).
    pub allow_v4_entries: u32,
    pub allow_v6_entries: u32,
    pub shadow_v4_entries: u32,
    pub shadow_v6_entries: u32,
    /// Aggregation prefix lengths for the rate-limit/autoblock key.
    pub ipv4_source_prefix: u32,
    pub ipv6_source_prefix: u32,
    /// `RULE_SLOTS` slots, two per rule id: `id` and `id + MAX_RULES`.
    pub rules: Vec<RateRule>,
    /// The slot holding the default rule (id 0): 0 or `MAX_RULES`.
    pub default_rule_slot: u32,
    /// `PORT_INDEX_ENTRIES` entries: TCP ports, then UDP ports; the live
    /// slot of the port's rule, a slot of id 0 = no rule.
    pub port_index: Vec<u32>,
    /// Only-from prefixes per slot, in the mapped space: (slot, network, prefix length).
    pub only_from: Vec<(u32, [u8; 16], u32)>,
    /// Source keys in the order they were automatically blocked (with the rule id).
    pub autoblock_log: Vec<([u8; 16], u32)>,
    /// Rate-limit state per (rule id, source key).
    pub buckets: HashMap<(u32, [u8; 16]), Bucket>,
    pub stats: [Counter; reason::COUNT as usize],
    /// Per rule id.
    pub rule_stats: Vec<RuleCounter>,
}

impl Default for Model {
    fn default() -> Self {
        Self {
            allow_v4: PrefixList::default(),
            allow_v6: PrefixList::default(),
            block_v4: PrefixList::default(),
            block_v6: PrefixList::default(),
            shadow_block_v4: PrefixList::default(),
            shadow_block_v6: PrefixList::default(),
            allow_v4_entries: 0,
            allow_v6_entries: 0,
            shadow_v4_entries: 0,
            shadow_v6_entries: 0,
            ipv4_source_prefix: filter_common::DEFAULT_IPV4_SOURCE_PREFIX,
            ipv6_source_prefix: filter_common::DEFAULT_IPV6_SOURCE_PREFIX,
            rules: vec![RateRule::default(); RULE_SLOTS as usize],
            default_rule_slot: DEFAULT_RULE,
            port_index: vec![0; PORT_INDEX_ENTRIES as usize],
            only_from: Vec::new(),
            autoblock_log: Vec::new(),
            buckets: HashMap::new(),
            stats: [Counter::default(); reason::COUNT as usize],
            rule_stats: vec![RuleCounter::default(); MAX_RULES as usize],
        }
    }
}

fn add(counter: &mut Counter, bytes: u64) {
    counter.packets += 1;
    counter.bytes += bytes;
}

impl Model {
    /// Sets a port rule (or the default rule for `ports == None`) in `slot`
    /// and makes that slot the live one.
    pub fn set_rule(&mut self, slot: u32, rule: RateRule, ports: Option<(u8, u16, u16)>) {
        self.rules[slot as usize] = rule;
        if ports.is_none() {
            self.default_rule_slot = slot;
        }
        if let Some((protocol, first, last)) = ports {
            let base = if protocol == IPPROTO_UDP {
                PORT_INDEX_UDP_BASE
            } else {
                0
            };
            for port in first..=last {
                self.port_index[(base + u32::from(port)) as usize] = slot;
            }
        }
    }

    /// The rate-limit key of a source: mapped, masked to the aggregation prefix.
    #[must_use]
    pub fn source_key(&self, info: &IpInfo) -> [u8; 16] {
        if info.is_v4 {
            mask(info.mapped_source, 96 + self.ipv4_source_prefix.min(32))
        } else {
            mask(info.mapped_source, self.ipv6_source_prefix.min(128))
        }
    }

    /// Decides one frame at `now_ns` (`CLOCK_MONOTONIC`), updating the state
    /// and counters like the program does: the reason of the verdict, and a
    /// shadow reason counted besides it.
    pub fn decide(&mut self, frame: &[u8], now_ns: u64) -> Decision {
        let decision = self.decide_inner(frame, now_ns);
        let len = frame.len() as u64;
        add(&mut self.stats[decision.reason as usize], len);
        if let Some(shadow) = decision.shadow {
            add(&mut self.stats[shadow as usize], len);
        }
        decision
    }

    fn decide_inner(&mut self, frame: &[u8], now_ns: u64) -> Decision {
        let info = match parse(frame) {
            Parsed::NonIp => return Decision::plain(reason::NON_IP),
            Parsed::Malformed => return Decision::plain(reason::MALFORMED),
            Parsed::Ip(info) => info,
        };
        // Both lists are looked up (deleting expired matches) before either
        // decides; the allowlist only while it counts entries.
        let (allowed, blocked) = if info.is_v4 {
            (
                self.allow_v4_entries != 0
                    && self.allow_v4.lookup(info.source_v4(), now_ns).is_some(),
                block_reason(&mut self.block_v4, info.source_v4(), now_ns),
            )
        } else {
            (
                self.allow_v6_entries != 0
                    && self.allow_v6.lookup(info.mapped_source, now_ns).is_some(),
                block_reason(&mut self.block_v6, info.mapped_source, now_ns),
            )
        };
        if allowed {
            return Decision::plain(reason::ALLOWLIST);
        }
        // The shadow blocklist: only for a source not allowed, only while it
        // counts entries; a match is counted whatever the verdict, and is
        // never part of it.
        let shadow_blocked = if info.is_v4 {
            self.shadow_v4_entries != 0
                && self
                    .shadow_block_v4
                    .lookup(info.source_v4(), now_ns)
                    .is_some()
        } else {
            self.shadow_v6_entries != 0
                && self
                    .shadow_block_v6
                    .lookup(info.mapped_source, now_ns)
                    .is_some()
        };
        let shadow = shadow_blocked.then_some(reason::SHADOW_BLOCKLIST);
        if let Some(why) = blocked {
            return Decision {
                reason: why,
                shadow,
            };
        }
        let key = self.source_key(&info);
        let mut slot = self.default_rule_slot;
        if let Some(port) = info.dport {
            let base = if info.protocol == IPPROTO_TCP {
                0
            } else {
                PORT_INDEX_UDP_BASE
            };
            let candidate = self.port_index[(base + u32::from(port)) as usize];
            if candidate % MAX_RULES != DEFAULT_RULE && self.rules[candidate as usize].action != 0 {
                slot = candidate;
            }
        }
        let rule = self.rules[slot as usize];
        if rule.action == 0 {
            return Decision {
                reason: reason::PASS,
                shadow,
            };
        }
        let len = frame.len() as u64;
        let mut verdict = self.apply_rule(slot, &rule, &info, key, len, now_ns);
        let counters = &mut self.rule_stats[(slot % MAX_RULES) as usize];
        if reason::is_drop(verdict.reason) {
            add(&mut counters.dropped, len);
        } else {
            add(&mut counters.passed, len);
        }
        // A shadow rule's would-be drop is counted instead of a shadow block's.
        if verdict.shadow.is_none() {
            verdict.shadow = shadow;
        }
        verdict
    }

    /// The rule's decision: a shadow rule passes what it would drop, under
    /// the drop's shadow reason.
    fn apply_rule(
        &mut self,
        slot: u32,
        rule: &RateRule,
        info: &IpInfo,
        key: [u8; 16],
        len: u64,
        now_ns: u64,
    ) -> Decision {
        let why = self.rule_verdict(slot, rule, info, key, len, now_ns);
        match reason::shadow_of(why) {
            Some(shadow) if rule.flags & RULE_FLAG_SHADOW != 0 => Decision {
                reason: reason::PASS,
                shadow: Some(shadow),
            },
            _ => Decision::plain(why),
        }
    }

    /// What the rule says, shadow or not.
    fn rule_verdict(
        &mut self,
        slot: u32,
        rule: &RateRule,
        info: &IpInfo,
        key: [u8; 16],
        len: u64,
        now_ns: u64,
    ) -> u32 {
        if rule.action == RULE_DROP {
            return reason::PORT_DENIED;
        }
        if rule.action != RULE_LIMIT {
            return reason::PASS;
        }
        if rule.flags & RULE_FLAG_ONLY_FROM != 0
            && !self
                .only_from
                .iter()
                .any(|(s, net, p)| *s == slot && mask(info.mapped_source, *p) == *net)
        {
            return reason::PORT_DENIED;
        }
        if rule.packet_interval == 0 && rule.byte_interval == 0 {
            return reason::PASS;
        }
        let now = now_ns * TICKS_PER_NS;
        // Buckets belong to the rule's id, whichever of its slots is live.
        let id = slot % MAX_RULES;
        let bucket = self.buckets.entry((id, key)).or_default();
        // The byte bucket is looked at first: a packet it refuses charges
        // neither bucket. A conforming packet is charged to both.
        let mut conforming =
            rule.byte_interval == 0 || bucket.byte_tat <= now + rule.byte_tolerance;
        if conforming && rule.packet_interval != 0 {
            if bucket.packet_tat <= now + rule.packet_tolerance {
                bucket.packet_tat = bucket.packet_tat.max(now) + rule.packet_interval;
            } else {
                conforming = false;
            }
        }
        if conforming && rule.byte_interval != 0 {
            bucket.byte_tat = bucket.byte_tat.max(now) + len * rule.byte_interval;
        }
        if conforming {
            return reason::PASS;
        }
        // A shadow rule never blocks: its over-limit packets are not counted either.
        if rule.autoblock_after != 0 && rule.flags & RULE_FLAG_SHADOW == 0 {
            if bucket.window_start_ns == 0
                || now_ns.saturating_sub(bucket.window_start_ns) > rule.autoblock_window_ns
            {
                bucket.window_start_ns = now_ns;
                bucket.over_limit = 1;
            } else {
                bucket.over_limit += 1;
            }
            if bucket.over_limit >= u64::from(rule.autoblock_after) {
                // Counting starts afresh with each automatic block.
                bucket.window_start_ns = now_ns;
                bucket.over_limit = 0;
                let over_limit = u64::from(rule.autoblock_after);
                self.autoblock(info, key, id, over_limit, rule, now_ns);
            }
        }
        reason::RATELIMIT
    }

    /// Puts the source key on the blocklist of its family, as an automatic
    /// block of the aggregation prefix, unless a blocklist entry (of any
    /// origin, expired ones too) holds that prefix already: it is kept. The
    /// shadow blocklist is not looked at.
    fn autoblock(
        &mut self,
        info: &IpInfo,
        key: [u8; 16],
        id: u32,
        over_limit: u64,
        rule: &RateRule,
        now_ns: u64,
    ) {
        let expires_at_ns = now_ns.saturating_add(rule.autoblock_for_ns);
        if info.is_v4 {
            let mut net = [0u8; 4];
            net.copy_from_slice(&key[12..]);
            let prefix = self.ipv4_source_prefix.min(32);
            if self.block_v4.holds_in_trie(net, prefix) {
                return;
            }
            self.block_v4.insert(ListItem {
                net,
                prefix,
                expires_at_ns,
                origin: ORIGIN_AUTO,
                flags: 0,
                rule: id,
                over_limit,
            });
        } else {
            let prefix = self.ipv6_source_prefix.min(128);
            if self.block_v6.holds_in_trie(key, prefix) {
                return;
            }
            self.block_v6.insert(ListItem {
                net: key,
                prefix,
                expires_at_ns,
                origin: ORIGIN_AUTO,
                flags: 0,
                rule: id,
                over_limit,
            });
        }
        self.autoblock_log.push((key, id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frames::{self, Ext, Frame};

    #[test]
    fn parses_ports() {
        let f = Frame::ipv4(frames::tcp4(frames::SRC4, 443)).build();
        let Parsed::Ip(info) = parse(&f) else {
            panic!("{:?}", parse(&f))
        };
        assert_eq!(info.dport, Some(443));
        assert!(info.is_v4);
        let f = Frame::ipv6(frames::udp6(frames::SRC6, 53).ext(Ext::hop_by_hop(0))).build();
        let Parsed::Ip(info) = parse(&f) else {
            panic!("{:?}", parse(&f))
        };
        assert_eq!((info.protocol, info.dport), (17, Some(53)));
    }

    #[test]
    fn longest_prefix_skips_expired() {
        let mut list = PrefixList::<4>::default();
        list.insert_manual([198, 18, 0, 0], 16, 0);
        list.insert_manual([198, 18, 5, 0], 24, 10);
        assert!(
            list.lookup([198, 18, 5, 1], 5)
                .is_some_and(|e| e.prefix == 24)
        );
        // Expired: deleted, the covering /16 decides.
        assert!(
            list.lookup([198, 18, 5, 1], 10)
                .is_some_and(|e| e.prefix == 16)
        );
        assert_eq!(list.entries.len(), 1);
        let mut nested = PrefixList::<4>::default();
        nested.insert_manual([198, 18, 0, 0], 16, 0);
        for prefix in 20..=24 {
            nested.insert_manual([198, 18, 5, 0], prefix, 10);
        }
        // Five expired entries nested: four are skipped, the fifth hides the /16.
        assert!(nested.lookup([198, 18, 5, 1], 10).is_none());
        assert!(
            nested
                .lookup([198, 18, 5, 1], 10)
                .is_some_and(|e| e.prefix == 16)
        );
    }

    fn auto_block(list: &mut PrefixList<4>, net: [u8; 4], prefix: u32) {
        list.insert(ListItem {
            net,
            prefix,
            expires_at_ns: 0,
            origin: ORIGIN_AUTO,
            flags: 0,
            rule: 1,
            over_limit: 1,
        });
    }

    #[test]
    fn block_lookups_look_through_automatic_matches() {
        let mut list = PrefixList::<4>::default();
        // A /15: a length only the tries hold (a /16 would be in the table,
        // probed before the trie).
        list.insert_manual([198, 18, 0, 0], 15, 0);
        for prefix in [29, 30, 31, 32] {
            auto_block(&mut list, [198, 18, 1, 4], prefix);
        }
        auto_block(&mut list, [198, 18, 2, 4], 30);
        auto_block(&mut list, [198, 20, 1, 0], 30);
        list.insert_manual([198, 20, 2, 2], 32, 0);
        let at = |list: &mut PrefixList<4>, addr| block_reason(list, addr, 1);
        // Automatic blocks, then the operator's block under them.
        assert_eq!(at(&mut list, [198, 18, 1, 5]), Some(reason::BLOCKLIST));
        assert_eq!(at(&mut list, [198, 18, 2, 5]), Some(reason::BLOCKLIST));
        // Four automatic blocks deep: the operator's block is not reached.
        assert_eq!(at(&mut list, [198, 18, 1, 4]), Some(reason::AUTOBLOCK));
        assert_eq!(at(&mut list, [198, 20, 1, 1]), Some(reason::AUTOBLOCK));
        assert_eq!(at(&mut list, [198, 20, 2, 2]), Some(reason::BLOCKLIST));
        assert_eq!(at(&mut list, [198, 21, 0, 1]), None);
    }

    fn udp(src: &str) -> Vec<u8> {
        Frame::ipv4(frames::udp4(frames::ip4(src), 53)).build()
    }

    fn udp6(src: &str) -> Vec<u8> {
        Frame::ipv6(frames::udp6(frames::ip6(src), 53)).build()
    }

    #[test]
    fn shadow_entries_are_counted_besides_the_verdict_and_never_change_it() {
        let mut model = Model::default();
        model.block_v4.insert_manual([198, 18, 1, 0], 24, 0);
        model.shadow_block_v4.insert_policy([198, 18, 0, 0], 16, 0);
        model.shadow_block_v4.insert_policy([198, 18, 1, 1], 32, 0);
        model.shadow_block_v4.insert_policy([198, 18, 9, 0], 24, 5);
        model
            .shadow_block_v6
            .insert_policy(frames::ip6("2001:db8::"), 32, 0);
        model.allow_v4.insert_manual([198, 18, 2, 0], 24, 0);
        (model.allow_v4_entries, model.shadow_v4_entries) = (1, 3);
        model.shadow_v6_entries = 1;
        let shadow = |why| Decision {
            reason: why,
            shadow: Some(reason::SHADOW_BLOCKLIST),
        };
        let mut at = |src: &str| model.decide(&udp(src), 10);
        // Over and under the operator's block: it decides, the match is counted.
        assert_eq!(at("198.18.1.1"), shadow(reason::BLOCKLIST));
        assert_eq!(at("198.18.1.2"), shadow(reason::BLOCKLIST));
        assert_eq!(at("198.18.3.1"), shadow(reason::PASS));
        // Allowed: nothing else is looked at.
        assert_eq!(at("198.18.2.1"), Decision::plain(reason::ALLOWLIST));
        assert_eq!(at("198.19.0.1"), Decision::plain(reason::PASS));
        // An expired match is deleted; the covering /16 matches.
        assert_eq!(at("198.18.9.1"), shadow(reason::PASS));
        assert_eq!(model.shadow_block_v4.entries.len(), 2);
        assert_eq!(model.decide(&udp6("2001:db8::1"), 10), shadow(reason::PASS));
        // While its count is 0, a shadow blocklist is not looked up.
        model.shadow_v4_entries = 0;
        model.shadow_block_v4.insert_policy([198, 18, 9, 0], 24, 5);
        assert_eq!(
            model.decide(&udp("198.18.9.1"), 10),
            Decision::plain(reason::PASS)
        );
        assert_eq!(model.shadow_block_v4.entries.len(), 3, "nothing deleted");
        assert_eq!(model.decide(&udp6("2001:db8::1"), 10), shadow(reason::PASS));
        // Nor an allowlist.
        model.allow_v4_entries = 0;
        assert_eq!(
            model.decide(&udp("198.18.2.1"), 10),
            Decision::plain(reason::PASS)
        );
    }

    #[test]
    fn masks() {
        assert_eq!(mask([0xff; 4], 12), [0xff, 0xf0, 0, 0]);
        assert_eq!(mask([0xff; 4], 32), [0xff; 4]);
        assert_eq!(mask([0xff; 4], 0), [0; 4]);
    }
}
