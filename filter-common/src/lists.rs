//! Allow and block lists (`ALLOW_V4`, `ALLOW_V6`, `BLOCK_V4`, `BLOCK_V6`)
//! and a shadow policy's blocks (`SHADOW_BLOCK_V4`, `SHADOW_BLOCK_V6`, in
//! tries of their own so that they never change what is enforced): LPM
//! tries keyed by network-order addresses.
//!
//! Blocked hosts (IPv4 /32, IPv6 /128: most of a large blocklist) and the
//! prefixes of the table's lengths (IPv4 /16 to /31, IPv6 /40 to /64: see
//! [`in_host_table`]) live beside the tries in `BLOCK_HOSTS`, a 4-way
//! set-associative array of [`HostSlot`]s keyed by (address, prefix
//! length): a probe is a few inlined array reads, where a trie lookup is a
//! kernel call whose cost grows with the trie. A packet probes its host,
//! then each prefix length that the table holds in the source's region
//! (`filter_common::summary`'s length masks), so a list's size does not
//! change what a packet costs. An entry whose set is full goes into the
//! trie as before; so do the lengths the table does not hold (the widest
//! prefixes, and IPv6 /65 to /127).

use core::mem::{offset_of, size_of};

/// Address of an IPv4 LPM key (network order).
pub type Ipv4Bytes = [u8; 4];
/// Address of an IPv6 LPM key (network order).
pub type Ipv6Bytes = [u8; 16];

/// Value of an allowlist or blocklist entry.
///
/// Automatic blocks live in the blocklist tries too (origin
/// [`ORIGIN_AUTO`], keyed by the aggregated source prefix), so a packet costs
/// one blocklist lookup for both; the more specific entry decides the reason.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListEntry {
    /// `CLOCK_MONOTONIC` ns after which the entry no longer matches; 0 = permanent.
    pub expires_at_ns: u64,
    /// The entry's own prefix length, so the program can delete it once expired
    /// (a lookup returns only the value, and an expired longest match would
    /// otherwise hide shorter prefixes).
    pub prefix_len: u8,
    /// Who put the entry there: `ORIGIN_*`. The program tells only automatic
    /// blocks apart; user space shows and guards the others.
    pub origin: u8,
    /// For automatic blocks: the id of the rule whose limit was exceeded.
    pub rule: u8,
    /// Reserved (0).
    pub flags: u8,
    /// For automatic blocks: over-limit packets in the window that triggered it.
    pub over_limit: u32,
}

/// Entry added by an operator's live edit (`filter-ctl block`/`allow`).
pub const ORIGIN_CLI: u8 = 0;
/// Entry added by the program: a source that kept exceeding its limit.
pub const ORIGIN_AUTO: u8 = 1;
/// Entry from the applied policy file.
pub const ORIGIN_POLICY: u8 = 2;
/// Entry from a `CrowdSec` decision.
pub const ORIGIN_CROWDSEC: u8 = 3;

impl ListEntry {
    /// Whether the entry still applies at `now_ns`.
    #[inline(always)]
    #[must_use]
    pub const fn is_active(&self, now_ns: u64) -> bool {
        self.expires_at_ns == 0 || now_ns < self.expires_at_ns
    }
}

/// The shortest IPv4 prefix `BLOCK_HOSTS` holds: a /16 is one region of
/// the table's IPv4 length masks (`filter_common::summary`), and a wider
/// prefix would mark too many of them. Lengths /16 to /31 are the masks'
/// bits 0 to 15; hosts (/32) are probed whatever the mask says.
pub const TABLE_SHORTEST_V4: u8 = 16;
/// The shortest IPv6 prefix `BLOCK_HOSTS` holds (a /40 marks 256 /48s).
pub const TABLE_SHORTEST_V6: u8 = 40;
/// The longest IPv6 prefix `BLOCK_HOSTS` holds besides hosts (/128): a
/// subnet's /64. Lengths /40 to /64 are the IPv6 masks' bits 0 to 24.
pub const TABLE_LONGEST_V6: u8 = 64;
/// Prefix lengths (hosts apart) of each family's length masks.
pub const TABLE_LENGTHS_V4: u32 = 32 - TABLE_SHORTEST_V4 as u32;
pub const TABLE_LENGTHS_V6: u32 = (TABLE_LONGEST_V6 - TABLE_SHORTEST_V6) as u32 + 1;

/// Whether `BLOCK_HOSTS` holds a blocked prefix of `prefix_len` bits (of an
/// IPv6 prefix if `is_v6`): a host, or a prefix of the table's lengths
/// (IPv4 /16 to /31, IPv6 /40 to /64). The two families' lengths differ,
/// so a slot's length tells its family.
#[must_use]
pub const fn in_host_table(is_v6: bool, prefix_len: u8) -> bool {
    if is_v6 {
        prefix_len == 128 || (prefix_len >= TABLE_SHORTEST_V6 && prefix_len <= TABLE_LONGEST_V6)
    } else {
        prefix_len >= TABLE_SHORTEST_V4 && prefix_len <= 32
    }
}

/// The bit of a table prefix of `prefix_len` bits in its region's length
/// mask (`filter_common::summary`); 0 for a host, which has none.
#[must_use]
pub const fn table_length_bit(is_v6: bool, prefix_len: u8) -> u32 {
    if !in_host_table(is_v6, prefix_len) || prefix_len == if is_v6 { 128 } else { 32 } {
        0
    } else if is_v6 {
        1 << (prefix_len - TABLE_SHORTEST_V6)
    } else {
        1 << (prefix_len - TABLE_SHORTEST_V4)
    }
}

/// `words` (`source_words` of an address, IPv4-mapped for IPv4) with the
/// bits past the first `mapped_len` cleared: a packet's key for a table
/// prefix of that length (an IPv4 /24 is 120 bits of the mapped address).
#[inline(always)]
#[must_use]
pub const fn masked_words(words: &[u32; 4], mapped_len: u32) -> [u32; 4] {
    [
        words[0] & word_mask(mapped_len, 0),
        words[1] & word_mask(mapped_len, 1),
        words[2] & word_mask(mapped_len, 2),
        words[3] & word_mask(mapped_len, 3),
    ]
}

/// The mask of word `index` of `source_words` (its bytes in address order,
/// read little-endian) that keeps the first `mapped_len` bits.
#[inline(always)]
const fn word_mask(mapped_len: u32, index: u32) -> u32 {
    prefix_mask32(mapped_len.saturating_sub(index * 32)).swap_bytes()
}

/// The mask of a 32-bit word (network order, as a number) that keeps its
/// first `prefix` bits (all of them from 32 on).
#[inline(always)]
#[must_use]
pub const fn prefix_mask32(prefix: u32) -> u32 {
    if prefix == 0 {
        0
    } else if prefix >= 32 {
        u32::MAX
    } else {
        u32::MAX << (32 - prefix)
    }
}

/// Slots per set of `BLOCK_HOSTS`: an entry lives in one of the
/// `HOST_WAYS` consecutive slots from [`host_set`], or in the trie.
pub const HOST_WAYS: u32 = 4;
/// [`HostSlot::state`] bit: the slot holds `addr`'s entry.
pub const HOST_USED: u8 = 1;
/// [`HostSlot::state`] bit, kept on the first slot of a set: a host of this
/// set found the set full and went into the trie, so the set's new hosts go
/// there too (never two places). The controller's sweep clears it once the
/// trie holds none of the set's hosts.
pub const HOST_OVERFLOWED: u8 = 2;

/// One slot of `BLOCK_HOSTS`: a blocked host (IPv4-mapped for IPv4) and
/// its entry, 32 bytes (two to a cache line). Only user space writes slots,
/// field by field, a new host's [`HOST_USED`] bit last, so a packet never
/// matches a half-written address. Automatic blocks stay in the tries.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostSlot {
    /// The host, IPv4-mapped (`::ffff:a.b.c.d`) for IPv4.
    pub addr: Ipv6Bytes,
    /// As [`ListEntry::expires_at_ns`].
    pub expires_at_ns: u64,
    /// `HOST_USED` | `HOST_OVERFLOWED` bits.
    pub state: u8,
    /// As [`ListEntry::origin`] (never [`ORIGIN_AUTO`]).
    pub origin: u8,
    /// As [`ListEntry::prefix_len`]: 32 for an IPv4 host, 128 for IPv6, or
    /// a table prefix length (see [`in_host_table`]);
    /// part of the key (`addr` alone does not tell a /24 from its first host).
    pub prefix_len: u8,
    /// As [`ListEntry::rule`].
    pub rule: u8,
    /// As [`ListEntry::over_limit`].
    pub over_limit: u32,
}

impl HostSlot {
    /// The slot's entry, as a trie would hold it.
    #[must_use]
    pub const fn entry(&self) -> ListEntry {
        ListEntry {
            expires_at_ns: self.expires_at_ns,
            prefix_len: self.prefix_len,
            origin: self.origin,
            rule: self.rule,
            flags: 0,
            over_limit: self.over_limit,
        }
    }
}

/// `addr` (an IPv4 address) as the IPv4-mapped key of `BLOCK_HOSTS`.
#[inline(always)]
#[must_use]
pub const fn host_key_v4(addr: Ipv4Bytes) -> Ipv6Bytes {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, addr[0], addr[1], addr[2], addr[3],
    ]
}

/// The seeded hash of a `BLOCK_HOSTS` key: `words` (a host's or a masked
/// prefix's address, IPv4-mapped for IPv4, of `mapped_len` bits in the
/// mapped space: 128 for any host) with `Config::host_seed`. The rate
/// limiter's hash ([`bucket_hash`](crate::bucket_hash)), with a rule id no
/// rule has, one per length (a /24 and its first host land apart). Its low
/// half names the key's set ([`host_set_of_hash`]); an IPv6 /48's also
/// names the /48's bit in the table's summary (its high half:
/// [`table_summary_bit_v6`](crate::table_summary_bit_v6)) and its region of
/// the length masks (its low bits: [`table_region_v6`](crate::table_region_v6)).
#[inline(always)]
#[must_use]
pub const fn host_hash(seed: u64, mapped_len: u32, words: &[u32; 4]) -> u64 {
    crate::bucket_hash(seed, u32::MAX - (128 - mapped_len), words)
}

/// The first slot of the set of the key whose [`host_hash`] is `hash`, in a
/// `BLOCK_HOSTS` of `mask + 1` slots (`Config::host_mask`).
#[inline(always)]
#[must_use]
#[expect(
    clippy::cast_possible_truncation,
    reason = "the low 32 bits, masked to the table"
)]
pub const fn host_set_of_hash(hash: u64, mask: u32) -> u32 {
    (hash as u32) & mask & !(HOST_WAYS - 1)
}

/// The first slot of the set of `words` (see [`host_hash`]) in a
/// `BLOCK_HOSTS` of `mask + 1` slots (`Config::host_seed`, `Config::host_mask`).
#[inline(always)]
#[must_use]
pub const fn host_set(seed: u64, mask: u32, mapped_len: u32, words: &[u32; 4]) -> u32 {
    host_set_of_hash(host_hash(seed, mapped_len, words), mask)
}

/// Sets of `BLOCK_HOSTS` per `u64` word of `BLOCK_HOST_SETS`, the bitmap of
/// the sets that hold a host: a packet from a source whose set is empty
/// reads one bit of a small, cache-resident map instead of a line of the
/// table (a spoofed flood's sources miss the table almost always).
pub const HOST_SETS_PER_WORD: u32 = 64;

/// Words of `BLOCK_HOST_SETS` for a `BLOCK_HOSTS` of `slots` slots.
#[must_use]
pub const fn host_set_words(slots: u32) -> u32 {
    let sets = slots / HOST_WAYS;
    let words = sets.div_ceil(HOST_SETS_PER_WORD);
    if words == 0 { 1 } else { words }
}

/// The word of `BLOCK_HOST_SETS` and the bit in it of the set whose first
/// slot is `first`.
#[inline(always)]
#[must_use]
pub const fn host_set_bit(first: u32) -> (u32, u64) {
    let set = first / HOST_WAYS;
    (set / HOST_SETS_PER_WORD, 1u64 << (set % HOST_SETS_PER_WORD))
}

/// Slots of `BLOCK_HOSTS` for a blocklist of `list_capacity` entries per
/// family: as many (a power of two, at least one set), so that a full
/// list of hosts of one family fits with few sets overflowing.
#[must_use]
pub const fn host_slots(list_capacity: u32) -> u32 {
    let slots = if list_capacity > 1 << 30 {
        1 << 30
    } else {
        list_capacity.next_power_of_two()
    };
    if slots < HOST_WAYS { HOST_WAYS } else { slots }
}

const _: () = assert!(size_of::<HostSlot>() == 32);
const _: () = assert!(offset_of!(HostSlot, addr) == 0);
const _: () = assert!(offset_of!(HostSlot, expires_at_ns) == 16);
const _: () = assert!(offset_of!(HostSlot, state) == 24);
const _: () = assert!(offset_of!(HostSlot, origin) == 25);
const _: () = assert!(offset_of!(HostSlot, prefix_len) == 26);
const _: () = assert!(offset_of!(HostSlot, rule) == 27);
const _: () = assert!(offset_of!(HostSlot, over_limit) == 28);
const _: () = assert!(HOST_WAYS.is_power_of_two());
// Masks: an IPv4 /24 clears the mapped address's last byte (the high byte
// of the last word, read little-endian); a /48 keeps two bytes of word 1.
const _: () = assert!(masked_words(&[u32::MAX; 4], 120)[3] == 0x00ff_ffff);
const _: () = assert!(masked_words(&[u32::MAX; 4], 120)[2] == u32::MAX);
const _: () = assert!(masked_words(&[u32::MAX; 4], 48)[1] == 0x0000_ffff);
const _: () = assert!(masked_words(&[u32::MAX; 4], 48)[2] == 0);
const _: () = assert!(masked_words(&[u32::MAX; 4], 64)[1] == u32::MAX);
const _: () = assert!(masked_words(&[u32::MAX; 4], 128)[3] == u32::MAX);
const _: () = assert!(in_host_table(false, 16) && in_host_table(false, 24));
const _: () = assert!(!in_host_table(false, 15) && !in_host_table(false, 33));
const _: () =
    assert!(in_host_table(true, 40) && in_host_table(true, 56) && in_host_table(true, 64));
const _: () = assert!(!in_host_table(true, 39) && !in_host_table(true, 65));
// No length is both families' (a slot's length tells its family).
const _: () = assert!(TABLE_SHORTEST_V6 > 32);
const _: () = assert!(table_length_bit(false, 31) == 1 << 15 && table_length_bit(false, 32) == 0);
const _: () = assert!(table_length_bit(true, 64) == 1 << 24 && table_length_bit(true, 128) == 0);
const _: () = assert!(TABLE_LENGTHS_V4 <= 32 && TABLE_LENGTHS_V6 <= 32);
const _: () =
    assert!(host_slots(1_048_576) == 1_048_576 && host_slots(5) == 8 && host_slots(0) == 4);
const _: () = assert!(host_set_words(1_048_576) == 4096 && host_set_words(4) == 1);
const _: () = assert!(host_set_bit(4 * 65).0 == 1 && host_set_bit(4 * 65).1 == 2);

const _: () = assert!(size_of::<ListEntry>() == 16);
const _: () = assert!(offset_of!(ListEntry, expires_at_ns) == 0);
const _: () = assert!(offset_of!(ListEntry, prefix_len) == 8);
const _: () = assert!(offset_of!(ListEntry, origin) == 9);
const _: () = assert!(offset_of!(ListEntry, rule) == 10);
const _: () = assert!(offset_of!(ListEntry, flags) == 11);
const _: () = assert!(offset_of!(ListEntry, over_limit) == 12);
// `ListEntry::rule` holds a rule id: every id must fit.
const _: () = assert!(crate::MAX_RULES - 1 <= u8::MAX as u32);
