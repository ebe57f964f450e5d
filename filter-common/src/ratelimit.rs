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

/// GCRA state of one (rule, source), as user space reads and writes it (a
/// [`BucketSlot`] holds it packed). Updated by the program with atomic
/// compare-and-swap so the limit holds across CPUs.
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

/// One slot of `BUCKETS`, an array of a power-of-two number of slots used
/// as a 2-way set-associative table: a (rule, source) lives in one of the
/// two slots of its set ([`bucket_set`], [`bucket_set`]` + 1`), or nowhere.
/// A packet whose key is in neither claims the empty slot of the set, or the
/// one whose bucket is nearest to full (earlier arrival time), and resets it.
///
/// 48 bytes, a [`Bucket`] and its [`BucketKey`] packed: the used flag is a
/// bit of the rule's word (so a slot's key is one compare of five words),
/// and the window's count a `u32` beside the source (it is reset on
/// reaching `RateRule::autoblock_after`, a `u32`, and saturates).
/// `BUCKETS` is memory-mapped, so its values start on a page: a set is 96
/// bytes, and the words a packet reads from the first slot of its set (key
/// and packet time, 32 bytes) never straddle two cache lines.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BucketSlot {
    /// The rule id ([`BucketKey::rule`]) with [`SLOT_USED`] set while the
    /// slot holds a bucket; 0 when it is empty.
    pub tagged_rule: u32,
    /// [`BucketKey::source`].
    pub source: Ipv6Bytes,
    /// [`Bucket::over_limit`].
    pub over_limit: u32,
    /// [`Bucket::packet_tat`]; the three `u64`s are 8-byte aligned (the
    /// program updates them atomically).
    pub packet_tat: u64,
    /// [`Bucket::byte_tat`].
    pub byte_tat: u64,
    /// [`Bucket::window_start_ns`].
    pub window_start_ns: u64,
}

/// The bit of [`BucketSlot::tagged_rule`] that marks a slot in use (rule
/// ids are below [`MAX_RULES`]).
pub const SLOT_USED: u32 = 1 << 31;

impl BucketSlot {
    /// A used slot holding `key` with `bucket` (an over-limit count beyond
    /// `u32::MAX` is kept as `u32::MAX`).
    #[must_use]
    #[expect(
        clippy::cast_possible_truncation,
        reason = "checked against u32::MAX first"
    )]
    pub const fn new(key: &BucketKey, bucket: &Bucket) -> Self {
        Self {
            tagged_rule: key.rule | SLOT_USED,
            source: key.source,
            over_limit: if bucket.over_limit > u32::MAX as u64 {
                u32::MAX
            } else {
                bucket.over_limit as u32
            },
            packet_tat: bucket.packet_tat,
            byte_tat: bucket.byte_tat,
            window_start_ns: bucket.window_start_ns,
        }
    }

    /// Whether the slot holds a bucket.
    #[must_use]
    pub const fn is_used(&self) -> bool {
        self.tagged_rule & SLOT_USED != 0
    }

    /// The (rule, source) the slot holds, if it is used.
    #[must_use]
    pub const fn key(&self) -> BucketKey {
        BucketKey {
            rule: self.tagged_rule & !SLOT_USED,
            source: self.source,
        }
    }

    /// The slot's bucket.
    #[must_use]
    pub const fn bucket(&self) -> Bucket {
        Bucket {
            packet_tat: self.packet_tat,
            byte_tat: self.byte_tat,
            window_start_ns: self.window_start_ns,
            over_limit: self.over_limit as u64,
        }
    }
}

const HASH_MUL_1: u64 = 0x9e37_79b9_7f4a_7c15;
const HASH_MUL_2: u64 = 0xbf58_476d_1ce4_e5b9;
const HASH_MUL_3: u64 = 0x94d0_49bb_1331_11eb;

/// The source's bytes as four `u32` words, each read little-endian: how the
/// program reads a slot's key in place, and what [`bucket_hash`] mixes.
#[inline(always)]
#[must_use]
pub const fn source_words(source: &Ipv6Bytes) -> [u32; 4] {
    let s = source;
    [
        u32::from_le_bytes([s[0], s[1], s[2], s[3]]),
        u32::from_le_bytes([s[4], s[5], s[6], s[7]]),
        u32::from_le_bytes([s[8], s[9], s[10], s[11]]),
        u32::from_le_bytes([s[12], s[13], s[14], s[15]]),
    ]
}

/// The address whose [`source_words`] are `words`: its inverse.
#[inline(always)]
#[must_use]
pub const fn source_bytes(words: &[u32; 4]) -> Ipv6Bytes {
    let [a, b, c, d] = [
        words[0].to_le_bytes(),
        words[1].to_le_bytes(),
        words[2].to_le_bytes(),
        words[3].to_le_bytes(),
    ];
    [
        a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], c[0], c[1], c[2], c[3], d[0], d[1], d[2],
        d[3],
    ]
}

/// `source_words` of an IPv4-mapped address: its third word, the mapped
/// prefix's `ff ff` (the first two are zero).
pub const IPV4_MAPPED_WORD: u32 = u32::from_le_bytes([0, 0, 0xff, 0xff]);

/// A seeded 64-bit hash of (rule, source words): two multiply-xorshift
/// rounds, one per 64-bit half of the source, and a final mix (splitmix64
/// constants). No loop, no table: the same few instructions in the program
/// and in user space.
#[inline(always)]
#[must_use]
pub const fn bucket_hash(seed: u64, rule: u32, source: &[u32; 4]) -> u64 {
    let lo = source[0] as u64 | ((source[1] as u64) << 32);
    let hi = source[2] as u64 | ((source[3] as u64) << 32);
    let mut h = (seed ^ rule as u64).wrapping_mul(HASH_MUL_1);
    h = (h ^ lo).wrapping_mul(HASH_MUL_2);
    h ^= h >> 32;
    h = (h ^ hi).wrapping_mul(HASH_MUL_3);
    h ^= h >> 29;
    h = h.wrapping_mul(HASH_MUL_1);
    h ^ (h >> 32)
}

/// The first (even) slot of the set of (rule, source) in a `BUCKETS` of
/// `mask + 1` slots (`Config::bucket_seed`, `Config::bucket_mask`); the
/// other slot of the set is the next one.
#[inline(always)]
#[must_use]
#[expect(
    clippy::cast_possible_truncation,
    reason = "the low 32 bits, masked to the table"
)]
pub const fn bucket_set(seed: u64, mask: u32, rule: u32, source: &[u32; 4]) -> u32 {
    (bucket_hash(seed, rule, source) as u32) & mask & !1
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

// What user space reads and writes of a slot (`BucketSlot::bucket`, `new`).
const _: () = assert!(size_of::<Bucket>() == 32);
const _: () = assert!(offset_of!(Bucket, packet_tat) == 0);
const _: () = assert!(offset_of!(Bucket, byte_tat) == 8);
const _: () = assert!(offset_of!(Bucket, window_start_ns) == 16);
const _: () = assert!(offset_of!(Bucket, over_limit) == 24);

// The program reads a slot's key as five u32 words and its bucket's u64
// words in place, by offset: at most 64 bytes per tracked source, words
// aligned, and a set's first slot's key and packet time in one cache line.
const _: () = assert!(size_of::<BucketSlot>() == 48);
const _: () = assert!(core::mem::align_of::<BucketSlot>() == 8);
const _: () = assert!(offset_of!(BucketSlot, tagged_rule) == 0);
const _: () = assert!(offset_of!(BucketSlot, source) == 4);
const _: () = assert!(offset_of!(BucketSlot, over_limit) == 20);
const _: () = assert!(offset_of!(BucketSlot, packet_tat) == 24);
const _: () = assert!(offset_of!(BucketSlot, byte_tat) == 32);
const _: () = assert!(offset_of!(BucketSlot, window_start_ns) == 40);
const _: () = assert!(MAX_RULES <= SLOT_USED);

const _: () = assert!(MAX_RULES.is_power_of_two());
const _: () = assert!(rule_id(MAX_RULES + 5) == 5 && other_slot(5) == MAX_RULES + 5);
const _: () = assert!(ONLY_FROM_KEY_BITS == 160);
const _: () = assert!(only_from_prefix_len(128) == ONLY_FROM_KEY_BITS);

#[cfg(test)]
mod tests {
    use super::*;

    /// A slot keeps the key and bucket it was made from, marks itself used
    /// in the rule's word (for every rule id, the default's 0 included), and
    /// keeps an over-limit count too large for its `u32` as `u32::MAX`.
    #[test]
    fn a_slot_packs_its_key_and_bucket() {
        assert!(!BucketSlot::default().is_used(), "an empty slot is unused");
        let mut source = [0u8; 16];
        source[15] = 7;
        for rule in [DEFAULT_RULE, 1, MAX_RULES - 1] {
            let key = BucketKey { rule, source };
            let bucket = Bucket {
                packet_tat: 1,
                byte_tat: 2,
                window_start_ns: 3,
                over_limit: 4,
            };
            let slot = BucketSlot::new(&key, &bucket);
            assert!(slot.is_used());
            assert_eq!(slot.tagged_rule, rule | SLOT_USED);
            assert_eq!(slot.key(), key);
            assert_eq!(slot.bucket(), bucket);
            let huge = Bucket {
                over_limit: u64::MAX,
                ..bucket
            };
            assert_eq!(
                BucketSlot::new(&key, &huge).bucket().over_limit,
                u64::from(u32::MAX)
            );
        }
    }

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

    fn v4(n: u32) -> [u32; 4] {
        let mut source = [0u8; 16];
        source[10] = 0xff;
        source[11] = 0xff;
        source[12..].copy_from_slice(&n.to_be_bytes());
        source_words(&source)
    }

    /// Sequential sources (the usual shape of a spoofed flood or a subnet)
    /// spread evenly: 16,384 sources over 8,192 sets, no set holds many.
    #[test]
    fn bucket_sets_spread_sequential_sources() {
        let mask = 16_383;
        for seed in [0, 1, 0x0123_4567_89ab_cdef] {
            let mut load = [0u16; 8192];
            for n in 0..16_384u32 {
                let set = bucket_set(seed, mask, 0, &v4(0xc612_0000 + n));
                assert_eq!(set & 1, 0);
                load[(set / 2) as usize] += 1;
            }
            let max = load.iter().max().copied().unwrap_or(0);
            let empty = load.iter().filter(|&&l| l == 0).count();
            // Random placement (Poisson, mean 2) would leave about 13.5% of
            // the sets empty (1,108 of 8,192) and none above 10: no worse.
            assert!(max <= 10, "seed {seed}: a set holds {max}");
            assert!(empty < 1400, "seed {seed}: {empty} empty sets");
        }
    }

    #[test]
    fn bucket_sets_depend_on_seed_and_rule() {
        let mask = (1 << 20) - 1;
        let same_seed = (0..1000u32)
            .filter(|&n| bucket_set(1, mask, 0, &v4(n)) == bucket_set(2, mask, 0, &v4(n)))
            .count();
        let same_rule = (0..1000u32)
            .filter(|&n| bucket_set(1, mask, 0, &v4(n)) == bucket_set(1, mask, 1, &v4(n)))
            .count();
        assert!(same_seed < 5 && same_rule < 5, "{same_seed} {same_rule}");
    }

    #[test]
    fn source_words_read_little_endian() {
        let mut source = [0u8; 16];
        source[0] = 1;
        source[15] = 2;
        assert_eq!(source_words(&source), [1, 0, 0, 0x0200_0000]);
        assert_eq!(source_bytes(&source_words(&source)), source);
        let mapped = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 198, 18, 0, 1];
        assert_eq!(source_words(&mapped)[2], IPV4_MAPPED_WORD);
    }
}
