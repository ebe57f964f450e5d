//! Port rules and rate limits: `RULES`, `PORT_RULE_INDEX`, `ONLY_FROM` and
//! the GCRA state in `BUCKETS`.
//!
//! Rules never tear. Each rule has an id in `0..MAX_RULES` (0 = the default
//! rule) and two slots in `RULES`: `id` and `id + MAX_RULES`. Exactly one of
//! them is live: the one `PORT_RULE_INDEX` (port rules) or
//! `Config::default_rule_slot` (the default rule) names. User space writes a
//! changed rule into the other slot, switches the index with single aligned
//! `u32` writes, waits until no running program can still hold the old slot,
//! and only then clears it. State that must survive a change is keyed by the
//! id ([`rule_id`]): buckets, rule counters, automatic blocks, events.
//! `ONLY_FROM` entries are keyed by the slot, so each slot carries its own
//! complete set and a switch changes rule and set together.

use core::mem::{offset_of, size_of};

use crate::lists::Ipv6Bytes;

/// Number of rule ids; id 0 is the default source limit. A power of two, so
/// the two slots of a rule differ in a single bit (see [`RULE_SLOTS`]).
pub const MAX_RULES: u32 = 256;
/// Entries of `RULES`: two slots per rule id.
pub const RULE_SLOTS: u32 = 2 * MAX_RULES;
/// Id of the default per-source limit, and its first slot in `RULES`.
pub const DEFAULT_RULE: u32 = 0;

/// The rule id a `RULES` slot belongs to.
#[inline(always)]
#[must_use]
pub const fn rule_id(slot: u32) -> u32 {
    slot & (MAX_RULES - 1)
}

/// The other slot of the rule in `slot`: where its next version goes.
#[inline(always)]
#[must_use]
pub const fn other_slot(slot: u32) -> u32 {
    slot ^ MAX_RULES
}

pub const PORT_INDEX_ENTRIES: u32 = 2 * 65536;
/// Offset of the UDP ports in `PORT_RULE_INDEX`.
pub const PORT_INDEX_UDP_BASE: u32 = 65536;

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// Rule action: rate-limit each source with the rule's buckets.
pub const RULE_LIMIT: u8 = 1;
/// Rule action: drop every packet to the port.
pub const RULE_DROP: u8 = 2;
/// Rule flag: only sources in `ONLY_FROM` under this rule's slot may use the port.
pub const RULE_FLAG_ONLY_FROM: u8 = 1;
/// Rule flag: a shadow rule. Its would-be drops pass and are counted under
/// `reason::SHADOW_*`; it never blocks automatically.
pub const RULE_FLAG_SHADOW: u8 = 2;

/// One rate-limit rule (the default one, or a port rule), stored in one of
/// its id's two slots.
///
/// Rates are stored as GCRA emission intervals, so the kernel only adds and
/// compares: `packet_interval` is the time one packet costs, `byte_interval`
/// the time one byte costs, both in [`TICKS_PER_NS`]ths of a nanosecond.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateRule {
    /// 0 = empty slot, else `RULE_LIMIT` or `RULE_DROP`.
    pub action: u8,
    /// `RULE_FLAG_*` bits.
    pub flags: u8,
    /// What the rule matches, for user space only: `IPPROTO_TCP`/`IPPROTO_UDP`
    /// and the port range; 0 for the default rule.
    pub protocol: u8,
    pub _pad: u8,
    /// Over-limit packets within `autoblock_window_ns` that trigger an automatic block; 0 = never.
    pub autoblock_after: u32,
    pub port_first: u16,
    pub port_last: u16,
    pub _pad2: u32,
    /// Ticks one packet costs (`TICKS_PER_SEC / rate`); 0 = no packet limit.
    pub packet_interval: u64,
    /// Ticks of burst tolerance on the packet bucket (`(burst - 1) * packet_interval`).
    pub packet_tolerance: u64,
    /// Ticks one byte costs; 0 = no byte limit.
    pub byte_interval: u64,
    /// Ticks of burst tolerance on the byte bucket.
    pub byte_tolerance: u64,
    pub autoblock_window_ns: u64,
    pub autoblock_for_ns: u64,
    /// As configured, for listing (the kernel uses the intervals above).
    pub packets_per_sec: u64,
    pub bytes_per_sec: u64,
    pub burst: u64,
}

/// Time unit of the rate buckets: 1/16 ns. Gives exact intervals for rates up to
/// 10^8 packets/s with under 0.1% rounding and 36 years before a tick counter wraps.
pub const TICKS_PER_NS: u64 = 16;
/// Ticks per second.
pub const TICKS_PER_SEC: u64 = 1_000_000_000 * TICKS_PER_NS;

/// Key of the rate-limit tracking table: one bucket per (rule, aggregated source).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BucketKey {
    /// Id of the rule whose limit this bucket enforces ([`rule_id`]), so the
    /// bucket survives a change of the rule.
    pub rule: u32,
    /// Source, IPv4-mapped for IPv4, masked to the aggregation prefix.
    pub source: Ipv6Bytes,
}

/// GCRA state of one (rule, source). Updated with atomic compare-and-swap so
/// the limit holds across CPUs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    /// Theoretical arrival time of the packet bucket, in ticks.
    pub packet_tat: u64,
    /// Theoretical arrival time of the byte bucket, in ticks.
    pub byte_tat: u64,
    /// Start of the current over-limit window (ns).
    pub window_start_ns: u64,
    /// Over-limit packets seen in the current window.
    pub over_limit: u64,
}

/// Key of `ONLY_FROM`: the rule slot (big-endian) then the source, IPv4-mapped.
/// LPM prefix length = 32 + the source prefix length in the mapped space
/// ([`only_from_prefix_len`]).
pub type OnlyFromBytes = [u8; 20];

/// Bits of a full `ONLY_FROM` key: what a packet's lookup uses.
#[expect(
    clippy::cast_possible_truncation,
    reason = "a 20-byte key (size asserted)"
)]
pub const ONLY_FROM_KEY_BITS: u32 = 8 * size_of::<OnlyFromBytes>() as u32;

/// The data of an `ONLY_FROM` key: `slot` big-endian, then `source`
/// (IPv4-mapped for IPv4). The one place this layout is written.
#[inline(always)]
#[must_use]
pub const fn only_from_key_data(slot: u32, source: Ipv6Bytes) -> OnlyFromBytes {
    let mut data = [0u8; 20];
    // Constant lengths (4 + 16 = 20): the checks in `split_at_mut` and
    // `copy_from_slice` are resolved at compile time.
    let (head, tail) = data.split_at_mut(4);
    head.copy_from_slice(&slot.to_be_bytes());
    tail.copy_from_slice(&source);
    data
}

/// LPM prefix length of an `ONLY_FROM` entry for a source prefix of
/// `mapped_prefix` bits (in the IPv4-mapped space): the slot is matched exactly.
#[inline(always)]
#[must_use]
pub const fn only_from_prefix_len(mapped_prefix: u8) -> u32 {
    32 + mapped_prefix as u32
}

const _: () = assert!(size_of::<RateRule>() == 88);
const _: () = assert!(offset_of!(RateRule, action) == 0);
const _: () = assert!(offset_of!(RateRule, flags) == 1);
const _: () = assert!(offset_of!(RateRule, protocol) == 2);
const _: () = assert!(offset_of!(RateRule, _pad) == 3);
const _: () = assert!(offset_of!(RateRule, autoblock_after) == 4);
const _: () = assert!(offset_of!(RateRule, port_first) == 8);
const _: () = assert!(offset_of!(RateRule, port_last) == 10);
const _: () = assert!(offset_of!(RateRule, _pad2) == 12);
const _: () = assert!(offset_of!(RateRule, packet_interval) == 16);
const _: () = assert!(offset_of!(RateRule, packet_tolerance) == 24);
const _: () = assert!(offset_of!(RateRule, byte_interval) == 32);
const _: () = assert!(offset_of!(RateRule, byte_tolerance) == 40);
const _: () = assert!(offset_of!(RateRule, autoblock_window_ns) == 48);
const _: () = assert!(offset_of!(RateRule, autoblock_for_ns) == 56);
const _: () = assert!(offset_of!(RateRule, packets_per_sec) == 64);
const _: () = assert!(offset_of!(RateRule, bytes_per_sec) == 72);
const _: () = assert!(offset_of!(RateRule, burst) == 80);

const _: () = assert!(size_of::<BucketKey>() == 20);
const _: () = assert!(offset_of!(BucketKey, rule) == 0);
const _: () = assert!(offset_of!(BucketKey, source) == 4);

// The program updates the four words atomically, by offset: keep them u64s
// in this order, 8-byte aligned.
const _: () = assert!(size_of::<Bucket>() == 32);
const _: () = assert!(offset_of!(Bucket, packet_tat) == 0);
const _: () = assert!(offset_of!(Bucket, byte_tat) == 8);
const _: () = assert!(offset_of!(Bucket, window_start_ns) == 16);
const _: () = assert!(offset_of!(Bucket, over_limit) == 24);

const _: () = assert!(MAX_RULES.is_power_of_two());
const _: () = assert!(rule_id(MAX_RULES + 5) == 5 && other_slot(5) == MAX_RULES + 5);
const _: () = assert!(ONLY_FROM_KEY_BITS == 160);
const _: () = assert!(only_from_prefix_len(128) == ONLY_FROM_KEY_BITS);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_from_key_is_slot_then_source() {
        let mut source = [0u8; 16];
        source[10] = 0xff;
        source[11] = 0xff;
        source[12..].copy_from_slice(&[192, 0, 2, 7]);
        let key = only_from_key_data(0x0102_0304, source);
        assert_eq!(key[..4], [1, 2, 3, 4]);
        assert_eq!(key[4..], source);
    }
}
