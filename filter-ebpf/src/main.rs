//! XDP packet filter: strict parsing, allow/block lists, automatic blocks and
//! per-source rate limits. Every verdict is counted by reason.
//!
//! Order of decisions (first match wins):
//! 1. malformed frame (a header claimed but missing or invalid) -> drop
//! 2. non-IP frame (ARP, LLDP, ...) -> pass
//! 3. allowlist -> pass, 4. blocklist or automatic block -> drop
//! 5. port rule (drop / only-from / rate limit), else 6. default source limit.
#![no_std]
#![no_main]
// The BPF target offers no `AtomicU64::compare_exchange`; the kernel has
// BPF_CMPXCHG, reached through this intrinsic.
// Aligned 64-bit loads and stores are single instructions: volatile suffices.
#![feature(core_intrinsics)]
#![allow(internal_features, reason = "atomic intrinsics, see above")]

mod parse;

use core::intrinsics::{AtomicOrdering, atomic_cxchg};

use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns},
    macros::{map, xdp},
    maps::{Array, LpmTrie, LruHashMap, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::XdpContext,
};
use filter_common::{
    AutoBlockEvent, Bucket, BucketKey, CLOCK_COARSE, Config, Counter, DEFAULT_RULE, Ipv4Bytes,
    Ipv6Bytes, ListEntry, ORIGIN_AUTO, OnlyFromBytes, PORT_INDEX_ENTRIES, PORT_INDEX_UDP_BASE,
    RULE_DROP, RULE_FLAG_ONLY_FROM, RULE_LIMIT, RateRule, RuleCounter, TICKS_PER_NS, capacity,
    reason, table_stat,
};
use parse::{Packet, Parsed};

#[map]
static STATS: PerCpuArray<Counter> = PerCpuArray::pinned(reason::COUNT, 0);
#[map]
static TABLE_STATS: PerCpuArray<u64> = PerCpuArray::pinned(table_stat::COUNT, 0);

#[map]
static ALLOW_V4: LpmTrie<Ipv4Bytes, ListEntry> = LpmTrie::pinned(capacity::LIST_ENTRIES, 0);
#[map]
static ALLOW_V6: LpmTrie<Ipv6Bytes, ListEntry> = LpmTrie::pinned(capacity::LIST_ENTRIES, 0);
#[map]
static BLOCK_V4: LpmTrie<Ipv4Bytes, ListEntry> = LpmTrie::pinned(capacity::LIST_ENTRIES, 0);
#[map]
static BLOCK_V6: LpmTrie<Ipv6Bytes, ListEntry> = LpmTrie::pinned(capacity::LIST_ENTRIES, 0);

#[map]
static CONFIG: Array<Config> = Array::pinned(1, 0);
/// Rate rules by slot; slot 0 is the default per-source limit.
#[map]
static RULES: Array<RateRule> = Array::pinned(filter_common::MAX_RULES, 0);
#[map]
static RULE_STATS: PerCpuArray<RuleCounter> = PerCpuArray::pinned(filter_common::MAX_RULES, 0);
/// (protocol, destination port) -> rule slot; 0 = no port rule.
#[map]
static PORT_RULE_INDEX: Array<u32> = Array::pinned(PORT_INDEX_ENTRIES, 0);
/// (rule slot, source prefix) pairs allowed by `--only-from` rules.
#[map]
static ONLY_FROM: LpmTrie<OnlyFromBytes, u8> = LpmTrie::pinned(capacity::ONLY_FROM, 0);
/// GCRA state per (rule, aggregated source).
#[map]
static BUCKETS: LruHashMap<BucketKey, Bucket> = LruHashMap::pinned(capacity::BUCKETS, 0);
/// Automatic-block events for user space.
#[map]
static EVENTS: RingBuf = RingBuf::pinned(capacity::EVENTS_BYTES, 0);

/// `-EEXIST`, as map helpers return it.
const EEXIST: i32 = -17;

/// Attempts at a contended compare-and-swap before the packet is treated as over the limit.
const CAS_ATTEMPTS: usize = 4;

#[xdp]
pub fn filter(ctx: XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    let why = match parse::parse(&ctx) {
        Ok(Parsed::Ip(packet)) => decide(&packet, len),
        Ok(Parsed::NonIp) => reason::NON_IP,
        Err(parse::Malformed) => reason::MALFORMED,
    };
    count(why, len);
    if reason::is_drop(why) {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
}

#[inline(always)]
fn count(why: u32, len: u64) {
    if let Some(counter) = STATS.get_ptr_mut(why) {
        // Per-CPU slot: no other CPU writes it.
        unsafe {
            (*counter).packets += 1;
            (*counter).bytes += len;
        }
    }
}

#[inline(always)]
fn bump_table_stat(index: u32) {
    if let Some(value) = TABLE_STATS.get_ptr_mut(index) {
        unsafe { *value += 1 };
    }
}

/// The coarse clock (`CLOCK_MONOTONIC` at the last tick, nearly free), read
/// at most once per packet and only when a list entry has an expiry: list
/// expiry does not need more than a few ms of precision.
struct CoarseClock(u64);

impl CoarseClock {
    #[inline(always)]
    fn now(&mut self) -> u64 {
        if self.0 == 0 {
            self.0 = unsafe { bpf_ktime_get_coarse_ns() };
        }
        self.0
    }
}

/// Expired entries nested over one address that a single lookup skips (and
/// deletes); deeper nesting is cleared by the controller's periodic sweep.
const MAX_EXPIRED_SKIPS: usize = 4;

/// Origin and prefix length of the active longest-prefix match for `addr`
/// among prefixes of at most `bits` bits. An expired match is deleted (it
/// would hide shorter prefixes) and the lookup repeated.
#[inline(always)]
fn list_match<K: Copy>(
    map: &LpmTrie<K, ListEntry>,
    bits: u32,
    addr: K,
    clock: &mut CoarseClock,
) -> Option<(u8, u8)> {
    for _ in 0..=MAX_EXPIRED_SKIPS {
        let entry = map.get(Key::new(bits, addr))?;
        if entry.expires_at_ns == 0 || clock.now() < entry.expires_at_ns {
            return Some((entry.origin, entry.prefix_len));
        }
        let _ = map.remove(Key::new(u32::from(entry.prefix_len), addr));
    }
    None
}

/// Why a blocked source is dropped. An automatic block is the longest match
/// when it is more specific than an operator's block, but the operator's
/// block takes precedence: look for one above it.
#[inline(always)]
fn block_reason<K: Copy>(
    map: &LpmTrie<K, ListEntry>,
    bits: u32,
    addr: K,
    clock: &mut CoarseClock,
) -> Option<u32> {
    let (origin, prefix_len) = list_match(map, bits, addr, clock)?;
    if origin != ORIGIN_AUTO || prefix_len == 0 {
        return Some(reason::BLOCKLIST);
    }
    match list_match(map, u32::from(prefix_len) - 1, addr, clock) {
        Some((origin, _)) if origin != ORIGIN_AUTO => Some(reason::BLOCKLIST),
        _ => Some(reason::AUTOBLOCK),
    }
}

fn decide(packet: &Packet, len: u64) -> u32 {
    let mut clock = CoarseClock(0);
    // Most filters have an empty allowlist: skip its lookup then.
    let config = CONFIG.get(0);
    let (allowed, blocked) = if packet.is_v6 {
        let allow = config.is_none_or(|c| c.allow_v6_entries != 0);
        (
            allow
                .then(|| list_match(&ALLOW_V6, 128, packet.source, &mut clock))
                .flatten(),
            block_reason(&BLOCK_V6, 128, packet.source, &mut clock),
        )
    } else {
        let v4 = packet.source_v4();
        let allow = config.is_none_or(|c| c.allow_v4_entries != 0);
        (
            allow
                .then(|| list_match(&ALLOW_V4, 32, v4, &mut clock))
                .flatten(),
            block_reason(&BLOCK_V4, 32, v4, &mut clock),
        )
    };
    if allowed.is_some() {
        return reason::ALLOWLIST;
    }
    if let Some(why) = blocked {
        return why;
    }

    let (slot, rule) = rule_for(packet);
    let Some(rule) = rule else {
        return reason::PASS;
    };
    let why = apply_rule(slot, rule, packet, config, len, &mut clock);
    count_rule(slot, why, len);
    why
}

#[inline(always)]
fn count_rule(slot: u32, why: u32, len: u64) {
    if let Some(counter) = RULE_STATS.get_ptr_mut(slot) {
        let counter = unsafe { &mut *counter };
        let target = if reason::is_drop(why) {
            &mut counter.dropped
        } else {
            &mut counter.passed
        };
        target.packets += 1;
        target.bytes += len;
    }
}

/// The rule for this packet: its destination port's rule if there is one,
/// else the default rule (slot 0), if set.
#[inline(always)]
fn rule_for(packet: &Packet) -> (u32, Option<&'static RateRule>) {
    let port_base = match (packet.protocol, packet.has_ports) {
        (parse::IPPROTO_TCP, true) => Some(0),
        (parse::IPPROTO_UDP, true) => Some(PORT_INDEX_UDP_BASE),
        _ => None,
    };
    if let Some(base) = port_base {
        let slot = PORT_RULE_INDEX
            .get(base + u32::from(packet.dst_port))
            .copied()
            .unwrap_or(DEFAULT_RULE);
        // A slot without a rule (being rewritten) falls back to the default.
        if let Some(rule) = RULES
            .get(slot)
            .filter(|r| slot != DEFAULT_RULE && r.action != 0)
        {
            return (slot, Some(rule));
        }
    }
    (
        DEFAULT_RULE,
        RULES.get(DEFAULT_RULE).filter(|r| r.action != 0),
    )
}

#[inline(always)]
fn apply_rule(
    slot: u32,
    rule: &RateRule,
    packet: &Packet,
    config: Option<&Config>,
    len: u64,
    clock: &mut CoarseClock,
) -> u32 {
    if rule.action == RULE_DROP {
        return reason::PORT_DENIED;
    }
    if rule.action != RULE_LIMIT {
        return reason::PASS;
    }
    if rule.flags & RULE_FLAG_ONLY_FROM != 0 && !only_from_allows(slot, packet) {
        return reason::PORT_DENIED;
    }
    if rule.packet_interval == 0 && rule.byte_interval == 0 {
        return reason::PASS;
    }
    let source = aggregated_source(packet, config);
    // The rate limiter's clock: bpf_ktime_get_ns unless `limit clock coarse`.
    let now_ns = match config {
        Some(c) if c.rate_clock == CLOCK_COARSE => clock.now(),
        _ => unsafe { bpf_ktime_get_ns() },
    };
    if within_limit(slot, rule, packet, config, &source, len, now_ns) {
        reason::PASS
    } else {
        reason::RATELIMIT
    }
}

#[inline(always)]
fn only_from_allows(slot: u32, packet: &Packet) -> bool {
    let mut data = [0u8; 20];
    data[..4].copy_from_slice(&slot.to_be_bytes());
    data[4..].copy_from_slice(&packet.source);
    ONLY_FROM.get(Key::new(160, data)).is_some()
}

/// The source as a rate-limit key: IPv4-mapped, masked to the configured prefix.
#[inline(always)]
fn aggregated_source(packet: &Packet, config: Option<&Config>) -> Ipv6Bytes {
    let mut out = packet.source;
    if packet.is_v6 {
        let prefix = config.map_or(64, |c| c.ipv6_source_prefix);
        let hi = u64::from_be_bytes(head8(&out));
        let lo = u64::from_be_bytes(tail8(&out));
        let (hi, lo) = mask128(hi, lo, prefix);
        out[..8].copy_from_slice(&hi.to_be_bytes());
        out[8..].copy_from_slice(&lo.to_be_bytes());
    } else {
        let prefix = config.map_or(32, |c| c.ipv4_source_prefix);
        let v4 = u32::from_be_bytes(packet.source_v4()) & mask32(prefix);
        out[12..].copy_from_slice(&v4.to_be_bytes());
    }
    out
}

#[inline(always)]
fn head8(a: &Ipv6Bytes) -> [u8; 8] {
    [a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]]
}

#[inline(always)]
fn tail8(a: &Ipv6Bytes) -> [u8; 8] {
    [a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15]]
}

#[inline(always)]
fn mask32(prefix: u32) -> u32 {
    if prefix == 0 {
        0
    } else if prefix >= 32 {
        u32::MAX
    } else {
        u32::MAX << (32 - prefix)
    }
}

#[inline(always)]
fn mask64(prefix: u32) -> u64 {
    if prefix == 0 {
        0
    } else if prefix >= 64 {
        u64::MAX
    } else {
        u64::MAX << (64 - prefix)
    }
}

#[inline(always)]
fn mask128(hi: u64, lo: u64, prefix: u32) -> (u64, u64) {
    if prefix >= 64 {
        (hi, lo & mask64(prefix - 64))
    } else {
        (hi & mask64(prefix), 0)
    }
}

/// GCRA check of one (rule, source); over-limit packets feed the automatic block.
#[inline(always)]
fn within_limit(
    slot: u32,
    rule: &RateRule,
    packet: &Packet,
    config: Option<&Config>,
    source: &Ipv6Bytes,
    len: u64,
    now_ns: u64,
) -> bool {
    let key = BucketKey {
        rule: slot,
        source: *source,
    };
    let now = now_ns.wrapping_mul(TICKS_PER_NS);
    let Some(bucket) = bucket_for(&key) else {
        // Table insert failed (should not happen with an LRU): fail open, counted as pass.
        return true;
    };
    let byte_cost = len.wrapping_mul(rule.byte_interval);
    let packet_tat = unsafe { field(bucket, 0) };
    let byte_tat = unsafe { field(bucket, 1) };
    // Look at the byte bucket before charging anything, so that a packet the
    // byte limit refuses does not use up the packet allowance.
    let ok = (rule.byte_interval == 0 || conforms(byte_tat, now, rule.byte_tolerance))
        && (rule.packet_interval == 0
            || gcra(packet_tat, now, rule.packet_interval, rule.packet_tolerance))
        && (rule.byte_interval == 0 || gcra(byte_tat, now, byte_cost, rule.byte_tolerance));
    if !ok && rule.autoblock_after != 0 {
        note_over_limit(bucket, slot, rule, packet, config, source, now_ns);
    }
    ok
}

/// The `index`th u64 of a bucket (0 packet_tat, 1 byte_tat, 2 window_start_ns,
/// 3 over_limit), for atomic access.
///
/// # Safety
/// `bucket` points into a map value, valid and 8-byte aligned for the program's run.
#[inline(always)]
unsafe fn field(bucket: *mut Bucket, index: usize) -> *mut u64 {
    unsafe { bucket.cast::<u64>().add(index) }
}

#[inline(always)]
fn bucket_for(key: &BucketKey) -> Option<*mut Bucket> {
    if let Some(bucket) = BUCKETS.get_ptr_mut(key) {
        return Some(bucket);
    }
    // BPF_NOEXIST: if another CPU created it meanwhile, keep theirs.
    if BUCKETS.insert(key, Bucket::default(), 1).is_ok() {
        bump_table_stat(table_stat::BUCKET_INSERTS);
    }
    BUCKETS.get_ptr_mut(key)
}

/// Whether a packet arriving `now` conforms to the bucket, without charging it.
#[inline(always)]
fn conforms(tat: *mut u64, now: u64, tolerance: u64) -> bool {
    let current = unsafe { tat.read_volatile() };
    current <= now || current - now <= tolerance
}

/// Generic cell rate algorithm on one theoretical arrival time (TAT):
/// conforming if `tat <= now + tolerance`; then `tat = max(tat, now) + cost`.
/// Returns whether the packet conforms.
#[inline(always)]
fn gcra(tat: *mut u64, now: u64, cost: u64, tolerance: u64) -> bool {
    for _ in 0..CAS_ATTEMPTS {
        let current = unsafe { tat.read_volatile() };
        let base = if current > now { current } else { now };
        if base - now > tolerance {
            return false;
        }
        let (_, swapped) = unsafe {
            atomic_cxchg::<u64, { AtomicOrdering::Relaxed }, { AtomicOrdering::Relaxed }>(
                tat,
                current,
                base + cost,
            )
        };
        if swapped {
            return true;
        }
    }
    // Lost every race: the source is flooding from several CPUs at once.
    false
}

/// Atomically adds one and returns the new value (0 if every attempt lost a race).
/// A compare-and-swap loop, not `atomic_xadd`: with this toolchain the
/// fetched value of `atomic_xadd` came back wrong (the differential test
/// caught the missed automatic blocks).
#[inline(always)]
fn atomic_increment(counter: *mut u64) -> u64 {
    for _ in 0..CAS_ATTEMPTS {
        let current = unsafe { counter.read_volatile() };
        let (_, swapped) = unsafe {
            atomic_cxchg::<u64, { AtomicOrdering::Relaxed }, { AtomicOrdering::Relaxed }>(
                counter,
                current,
                current + 1,
            )
        };
        if swapped {
            return current + 1;
        }
    }
    0
}

/// Count an over-limit packet in the rule's window; the packet that reaches
/// the threshold puts the source's prefix on the blocklist as an automatic block.
#[inline(always)]
fn note_over_limit(
    bucket: *mut Bucket,
    slot: u32,
    rule: &RateRule,
    packet: &Packet,
    config: Option<&Config>,
    source: &Ipv6Bytes,
    now: u64,
) {
    let window_start = unsafe { field(bucket, 2) };
    let over_limit = unsafe { field(bucket, 3) };
    let start = unsafe { window_start.read_volatile() };
    if start == 0 || now.wrapping_sub(start) > rule.autoblock_window_ns {
        // New window. Racy with other CPUs by design: at worst a few packets
        // are counted in the old window.
        unsafe {
            window_start.write_volatile(now);
            over_limit.write_volatile(0);
        }
    }
    let seen = atomic_increment(over_limit);
    if seen < u64::from(rule.autoblock_after) {
        return;
    }
    // Threshold reached: block, and start counting afresh, so that after the
    // block ends (or an operator lifts it) the source needs another
    // `autoblock_after` over-limit packets to be blocked again.
    unsafe {
        window_start.write_volatile(now);
        over_limit.write_volatile(0);
    }
    let mut entry = ListEntry {
        expires_at_ns: now + rule.autoblock_for_ns,
        prefix_len: 0,
        origin: ORIGIN_AUTO,
        rule: slot as u16,
        over_limit: rule.autoblock_after,
    };
    // BPF_NOEXIST: an operator's entry for the same prefix stays as it is.
    let inserted = if packet.is_v6 {
        let bits = config.map_or(64, |c| c.ipv6_source_prefix);
        entry.prefix_len = bits as u8;
        BLOCK_V6.insert(Key::new(bits, *source), entry, 1)
    } else {
        let bits = config.map_or(32, |c| c.ipv4_source_prefix);
        entry.prefix_len = bits as u8;
        let v4 = [source[12], source[13], source[14], source[15]];
        BLOCK_V4.insert(Key::new(bits, v4), entry, 1)
    };
    match inserted {
        Ok(()) => {}
        // Another CPU blocked the source a moment ago.
        Err(EEXIST) => return,
        Err(_) => {
            bump_table_stat(table_stat::AUTOBLOCKS_FAILED);
            return;
        }
    }
    bump_table_stat(table_stat::AUTOBLOCKS);
    let event = AutoBlockEvent {
        source: *source,
        rule: slot,
        over_limit: rule.autoblock_after,
        blocked_at_ns: now,
        expires_at_ns: entry.expires_at_ns,
    };
    if EVENTS.output::<AutoBlockEvent>(&event, 0).is_err() {
        bump_table_stat(table_stat::EVENTS_LOST);
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
