//! Port rules and per-source rate limits: the rule for a packet, `only-from`
//! sets, source aggregation, and GCRA buckets shared by all CPUs.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use filter_common::{
    BucketSlot, CLOCK_COARSE, CLOCK_PRECISE, Config, DEFAULT_IPV4_SOURCE_PREFIX,
    DEFAULT_IPV6_SOURCE_PREFIX, DEFAULT_RULE, ONLY_FROM_KEY_BITS, PORT_INDEX_UDP_BASE, RULE_DROP,
    RULE_FLAG_ONLY_FROM, RULE_FLAG_SHADOW, RULE_LIMIT, RateRule, SLOT_USED, TICKS_PER_NS,
    bucket_set, coarse_clock_suffices, masked_words, only_from_key_data, prefix_mask32, reason,
    rule_id, table_stat,
};

use crate::{
    atomic::{BucketWords, CAS_ATTEMPTS, SharedWord},
    autoblock,
    clock::{self, CoarseClock},
    lists::KeyOn8,
    maps::{BUCKETS, ONLY_FROM, PORT_RULE_INDEX, RULES},
    parse::{self, Packet},
    stats::bump_table_stat,
};

/// The rule for this packet and the slot it was read from: its destination
/// port's rule if there is one, else the default rule, if set. Reads the live slot once from
/// `PORT_RULE_INDEX` or `config`, then the whole rule from that slot: user
/// space never rewrites a slot a running program can still hold (see
/// `filter_common::ratelimit`), so the rule is one version, never a mix.
#[inline(always)]
pub fn rule_for(packet: &Packet, config: Option<&Config>) -> (u32, Option<&'static RateRule>) {
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
        // Id 0 is no port rule (most ports: the rule is not read); an empty
        // slot (a rule being removed) falls back to the default.
        if rule_id(slot) != DEFAULT_RULE
            && let Some(rule) = RULES.get(slot).filter(|r| r.action != 0)
        {
            return (slot, Some(rule));
        }
    }
    let slot = config.map_or(DEFAULT_RULE, |c| c.default_rule_slot);
    (slot, RULES.get(slot).filter(|r| r.action != 0))
}

/// The verdict on this packet of the rule read from `slot`, and for a
/// shadow rule the shadow reason of a would-be drop (`reason::PASS` for
/// none): a shadow rule passes every packet.
#[inline(always)]
pub fn apply_rule(
    slot: u32,
    rule: &RateRule,
    packet: &Packet,
    config: Option<&Config>,
    len: u64,
    clock: &mut CoarseClock,
) -> (u32, u32) {
    let why = rule_verdict(slot, rule, packet, config, len, clock);
    if rule.flags & RULE_FLAG_SHADOW == 0 {
        return (why, reason::PASS);
    }
    match reason::shadow_of(why) {
        Some(shadow) => (reason::PASS, shadow),
        None => (why, reason::PASS),
    }
}

/// What the rule read from `slot` says about this packet: only-from sets
/// belong to the slot, buckets to the rule's id.
#[inline(always)]
fn rule_verdict(
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
    let now_ns = rate_clock_ns(rule, config);
    if within_limit(
        rule_id(slot),
        rule,
        packet,
        config,
        &source,
        len,
        now_ns,
        clock,
    ) {
        reason::PASS
    } else {
        reason::RATELIMIT
    }
}

/// The rate limiter's time for this rule (ns): the tick clock (`jiffies`,
/// inlined, no helper call) when `limit clock coarse` says so, or by default
/// when the rule's burst covers a tick; else `bpf_ktime_get_ns`.
#[inline(always)]
fn rate_clock_ns(rule: &RateRule, config: Option<&Config>) -> u64 {
    if let Some(c) = config.filter(|c| c.tick_ns != 0 && c.rate_clock != CLOCK_PRECISE) {
        let coarse = c.rate_clock == CLOCK_COARSE
            || coarse_clock_suffices(
                rule.packet_interval,
                rule.packet_tolerance,
                rule.byte_interval,
                rule.byte_tolerance,
                c.tick_ns.wrapping_mul(TICKS_PER_NS),
            );
        if coarse {
            return clock::tick_ns(c);
        }
    }
    // SAFETY: a BPF helper without arguments or preconditions.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
fn only_from_allows(slot: u32, packet: &Packet) -> bool {
    let data = only_from_key_data(slot, packet.source_bytes());
    ONLY_FROM
        .get(&KeyOn8::new(ONLY_FROM_KEY_BITS, data).key)
        .is_some()
}

/// The source as a rate-limit key (`Packet::source`'s words), masked to
/// the configured prefix.
#[inline(always)]
fn aggregated_source(packet: &Packet, config: Option<&Config>) -> [u32; 4] {
    let source = &packet.source;
    if packet.is_v6 {
        let prefix = config.map_or(DEFAULT_IPV6_SOURCE_PREFIX, |c| c.ipv6_source_prefix);
        masked_words(source, prefix)
    } else {
        // Only the last word holds the IPv4 address; the others are the
        // mapped prefix.
        let prefix = config.map_or(DEFAULT_IPV4_SOURCE_PREFIX, |c| c.ipv4_source_prefix);
        let mask = prefix_mask32(prefix).swap_bytes();
        [source[0], source[1], source[2], source[3] & mask]
    }
}

/// GCRA check of one (rule id, source); over-limit packets feed the automatic block.
#[expect(clippy::too_many_arguments, reason = "inlined into its one caller")]
#[inline(always)]
fn within_limit(
    id: u32,
    rule: &RateRule,
    packet: &Packet,
    config: Option<&Config>,
    source: &[u32; 4],
    len: u64,
    now_ns: u64,
    clock: &mut CoarseClock,
) -> bool {
    let now = now_ns.wrapping_mul(TICKS_PER_NS);
    let Some(slot) = bucket_for(id, source, config) else {
        // BUCKETS unreadable (should not happen): fail open, counted as pass.
        return true;
    };
    let byte_cost = len.wrapping_mul(rule.byte_interval);
    // SAFETY: `bucket_for` returns a live map value.
    let words = unsafe { BucketWords::new(slot) };
    // Look at the byte bucket before charging anything, so that a packet the
    // byte limit refuses does not use up the packet allowance.
    let ok = (rule.byte_interval == 0 || conforms(words.byte_tat, now, rule.byte_tolerance))
        && (rule.packet_interval == 0
            || gcra(
                words.packet_tat,
                now,
                rule.packet_interval,
                rule.packet_tolerance,
            ))
        && (rule.byte_interval == 0 || gcra(words.byte_tat, now, byte_cost, rule.byte_tolerance));
    // A shadow rule never blocks, automatically or otherwise.
    if !ok && rule.autoblock_after != 0 && rule.flags & RULE_FLAG_SHADOW == 0 {
        autoblock::note_over_limit(&words, id, rule, packet, config, source, now_ns, clock);
    }
    ok
}

/// The slot of (`rule`, `source`), claimed if missing: `BUCKETS` is a
/// 2-way set-associative array (`filter_common::BucketSlot`). A key lives in
/// one of the two slots of its set; a new key takes the set's empty slot,
/// else the one whose bucket is nearest to full (the earlier theoretical
/// arrival time: a bucket whose time has passed is as good as a fresh one,
/// so evicting it loses nothing; a source over its limit keeps its time
/// ahead of the clock, and its slot against idle ones), and resets it. The
/// pointer is valid, and 8-byte aligned, for the rest of the program's run
/// (array values never move).
///
/// No lock: two CPUs may claim the same slot at once, for the same or for
/// different keys, or one may charge a bucket while another resets it. The
/// worst outcome is a reset bucket (or a key that loses its slot at once),
/// the same as an eviction: a few packets more pass, none is wrongly dropped
/// beyond what a fresh bucket allows.
#[inline(always)]
fn bucket_for(rule: u32, words: &[u32; 4], config: Option<&Config>) -> Option<*mut BucketSlot> {
    let (seed, mask) = config.map_or((0, 0), |c| (c.bucket_seed, c.bucket_mask));
    let first = bucket_set(seed, mask, rule, words);
    let a = BUCKETS.get_ptr_mut(first)?;
    // SAFETY: `a` and `b` point to live array values (never freed while the
    // program runs).
    unsafe {
        if holds(a, rule, words) {
            return Some(a);
        }
        let b = BUCKETS.get_ptr_mut(first | 1)?;
        if holds(b, rule, words) {
            return Some(b);
        }
        let (a_used, b_used) = (used(a), used(b));
        let victim = if !a_used || (b_used && full_at(a) <= full_at(b)) {
            a
        } else {
            b
        };
        let evicted = a_used && b_used;
        claim(victim, rule, words);
        bump_table_stat(table_stat::BUCKET_INSERTS);
        if evicted {
            bump_table_stat(table_stat::BUCKET_EVICTIONS);
        }
        Some(victim)
    }
}

/// The slot's key as the five `u32` words the program compares: the tagged
/// rule, then the source's words (`filter_common::source_words`), read in
/// place.
///
/// # Safety
/// `slot` points to a live `BUCKETS` value.
#[inline(always)]
unsafe fn key_word(slot: *mut BucketSlot, i: usize) -> u32 {
    // SAFETY: `i` < 5 at every call site: the key's 20 bytes at offset 0,
    // 4-byte aligned (asserted in filter-common).
    unsafe { slot.cast::<u32>().add(i).read_volatile() }
}

/// Whether `slot` holds (`rule`, `words`): its tagged rule says used too.
///
/// # Safety
/// As [`key_word`].
#[inline(always)]
unsafe fn holds(slot: *mut BucketSlot, rule: u32, words: &[u32; 4]) -> bool {
    // SAFETY: as the caller's.
    unsafe {
        key_word(slot, 0) == rule | SLOT_USED
            && key_word(slot, 1) == words[0]
            && key_word(slot, 2) == words[1]
            && key_word(slot, 3) == words[2]
            && key_word(slot, 4) == words[3]
    }
}

/// # Safety
/// As [`key_word`].
#[inline(always)]
unsafe fn used(slot: *mut BucketSlot) -> bool {
    // SAFETY: as the caller's; the tagged rule is an aligned u32.
    unsafe { (&raw const (*slot).tagged_rule).read_volatile() & SLOT_USED != 0 }
}

/// When the slot's bucket is full again: the later of its two theoretical
/// arrival times.
///
/// # Safety
/// As [`key_word`].
#[inline(always)]
unsafe fn full_at(slot: *mut BucketSlot) -> u64 {
    // SAFETY: as the caller's.
    let words = unsafe { BucketWords::new(slot) };
    let (p, b) = (words.packet_tat.load(), words.byte_tat.load());
    if p > b { p } else { b }
}

/// Writes (`rule`, `words`) into `slot` with a fresh bucket.
///
/// # Safety
/// As [`key_word`].
#[inline(always)]
unsafe fn claim(slot: *mut BucketSlot, rule: u32, words: &[u32; 4]) {
    // SAFETY: as the caller's; every field written is an aligned word.
    unsafe {
        let bucket = BucketWords::new(slot);
        bucket.packet_tat.store(0);
        bucket.byte_tat.store(0);
        bucket.window_start_ns.store(0);
        bucket.over_limit.store(0);
        let key = slot.cast::<u32>();
        key.add(1).write_volatile(words[0]);
        key.add(2).write_volatile(words[1]);
        key.add(3).write_volatile(words[2]);
        key.add(4).write_volatile(words[3]);
        // Last: the tagged rule marks the slot used and names its rule.
        key.write_volatile(rule | SLOT_USED);
    }
}

/// Whether a packet arriving `now` conforms to the bucket, without charging it.
#[inline(always)]
fn conforms(tat: SharedWord, now: u64, tolerance: u64) -> bool {
    let current = tat.load();
    current <= now || current - now <= tolerance
}

/// Generic cell rate algorithm on one theoretical arrival time (TAT):
/// conforming if `tat <= now + tolerance`; then `tat = max(tat, now) + cost`.
/// Returns whether the packet conforms.
#[inline(always)]
fn gcra(tat: SharedWord, now: u64, cost: u64, tolerance: u64) -> bool {
    for _ in 0..CAS_ATTEMPTS {
        let current = tat.load();
        let base = if current > now { current } else { now };
        if base - now > tolerance {
            return false;
        }
        if tat.compare_exchange(current, base + cost) {
            return true;
        }
    }
    // Lost every race: the source is flooding from several CPUs at once.
    false
}
