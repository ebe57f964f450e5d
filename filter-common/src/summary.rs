//! `BLOCK_SUMMARY`: where in the address space the blocklist tries may hold
//! a prefix, so that a source they cannot block skips the trie lookup, the
//! one cost of a packet that grows with the list (an LPM trie has two
//! children per node: a lookup in a million entries walks twenty-odd); and
//! where the host table may hold an entry (see below).
//!
//! One bit per IPv4 /24 (indexed directly) and one per IPv6 /40 (hashed
//! into as many bits), set for every /24 or /40 that a trie entry covers or
//! lies in. A clear bit proves that no trie entry covers the source; a set
//! bit only says "look". Bits are only ever set while entries come and go:
//! a removed entry's bits stay (one needless lookup) until the controller
//! rebuilds the bitmaps. A prefix too wide to mark bit by bit (an IPv6
//! prefix shorter than /24) sets its family's *wide* word instead: while it
//! is set, every source of the family looks in the trie.
//!
//! Two generations, one in use (`Config::summary_generation`): a rebuild
//! clears the other, marks every entry of the tries and of the host table
//! into it, then switches.
//! Every writer marks both generations, so that no mark is lost to a
//! rebuild: user space (under the edit lock, which a rebuild holds) before
//! it writes an entry, the program after it inserts an automatic block (a
//! rebuild that cleared that mark began after the insert, and so finds the
//! entry in its walk).
//!
//! `BLOCK_HOSTS` has bitmaps of its own, alike and in the same generations:
//! one bit per IPv4 /24 or IPv6 /48 that a host-table entry covers or lies
//! in (a host or a /24 to /31 sets one, an IPv4 /16 up to 256, an IPv6 /40
//! up to 256 hashed /48s), set by user space before it places the entry
//! (the program never writes the table). A source whose bit is clear skips
//! the table's probes, a seeded hash each: the IPv4 bit is the /24's, the
//! tries' own, and the IPv6 bit comes from the hash of the source's /48,
//! which also names its length mask's region (a /48 is finer than a /40: a
//! blocked host does not make the rest of its provider's /40 probe). What the table holds is never in a trie, so the
//! two are summarised apart: a blocked host does not send its neighbours to
//! the trie either.
//!
//! Last, the host table's *length masks*: for each region (an IPv4 /16,
//! indexed directly; an IPv6 /48, hashed into [`TABLE_REGIONS_V6`]), one
//! `u32` with a bit per prefix length the table holds there
//! ([`table_length_bit`](crate::table_length_bit)): a source whose table
//! bit is set probes its host, then only the lengths its region's mask
//! names, longest first. Set by user space before it places a prefix (the
//! program never writes the table) and never cleared by a removal: a stale
//! bit costs a probe, never a verdict. One generation only: user space, the
//! one writer, rebuilds the masks in place under the edit lock (it clears
//! only bits no entry needs).

use crate::{bucket_hash, host_hash, masked_words};

/// Bits per bitmap: one per IPv4 /24.
pub const SUMMARY_BITS: u32 = 1 << 24;
/// `u64` words per bitmap.
pub const SUMMARY_WORDS: u32 = SUMMARY_BITS / 64;
/// Prefix length one IPv4 bit stands for: its index is the /24's number.
pub const SUMMARY_PREFIX_V4: u8 = 24;
/// Prefix length one IPv6 bit stands for (hashed): a /40 holds a site's
/// /48s, and an ISP's /32 or /29 marks 256 or 2048 bits.
pub const SUMMARY_PREFIX_V6: u8 = 40;
/// The shortest IPv6 prefix marked bit by bit (2^16 bits); a shorter one
/// sets the wide word.
pub const SUMMARY_WIDEST_V6: u8 = 24;
/// Regions of the host table's IPv4 length masks: one per /16.
pub const TABLE_REGIONS_V4: u32 = 1 << 16;
/// Regions of the host table's IPv6 length masks: /48s hashed into as many
/// (8 MiB). A source whose region it shares with other /48s' prefixes pays
/// a probe for each length they add (the seed is random per map creation).
pub const TABLE_REGIONS_V6: u32 = 1 << 21;
/// Values of `BLOCK_SUMMARY`: the tries' four bitmaps (generation 0 IPv4,
/// IPv6, then generation 1), the host table's four in the same order, the
/// tries' four wide words in the same order, then the host table's length
/// masks (IPv4 regions, then IPv6; two `u32` masks to a word).
pub const SUMMARY_ENTRIES: u32 =
    8 * SUMMARY_WORDS + 4 + TABLE_REGIONS_V4 / 2 + TABLE_REGIONS_V6 / 2;

/// Tag of the IPv6 bit hash (the seed is `Config::host_seed`), apart from
/// the host table's tags (`u32::MAX - 128` and above) and every rule id.
const SUMMARY_TAG: u32 = u32::MAX - 256;

/// The first word of the tries' bitmap of (`generation`, family).
#[inline(always)]
#[must_use]
pub const fn summary_bitmap(generation: u32, is_v6: bool) -> u32 {
    ((generation & 1) * 2 + is_v6 as u32) * SUMMARY_WORDS
}

/// The first word of the host table's bitmap of (`generation`, family).
#[inline(always)]
#[must_use]
pub const fn summary_table_bitmap(generation: u32, is_v6: bool) -> u32 {
    4 * SUMMARY_WORDS + summary_bitmap(generation, is_v6)
}

/// The wide word of (`generation`, family): non-zero while the family's
/// tries may hold a prefix too wide for its bitmap.
#[inline(always)]
#[must_use]
pub const fn summary_wide(generation: u32, is_v6: bool) -> u32 {
    8 * SUMMARY_WORDS + (generation & 1) * 2 + is_v6 as u32
}

/// The bit of the IPv4 /24 of `words` (`source_words` of an IPv4-mapped
/// address).
#[inline(always)]
#[must_use]
pub const fn summary_bit_v4(words: &[u32; 4]) -> u32 {
    // The last word holds the IPv4 address's bytes, read little-endian.
    words[3].swap_bytes() >> 8
}

/// The bit of the IPv6 /40 of `words` (`source_words` of the address), by
/// the seeded hash of the table (`seed` is `Config::host_seed`).
#[inline(always)]
#[must_use]
#[expect(
    clippy::cast_possible_truncation,
    reason = "the low 32 bits, masked to the bitmap"
)]
pub const fn summary_bit_v6(seed: u64, words: &[u32; 4]) -> u32 {
    let key = masked_words(words, SUMMARY_PREFIX_V6 as u32);
    (bucket_hash(seed, SUMMARY_TAG, &key) as u32) & (SUMMARY_BITS - 1)
}

/// Prefix length one IPv6 bit of the host table's bitmaps, and one region
/// of its length masks, stands for: a /48 (hashed), which an entry of the
/// table's IPv6 lengths covers (a /40 to /47) or lies in.
pub const TABLE_SUMMARY_PREFIX_V6: u8 = 48;

/// The bit of the IPv6 /48 whose [`host_hash`](crate::host_hash) is
/// `hash48` (`host_hash(seed, 48, /48)`) in the host table's summary: the
/// hash's high half (its low half names the /48's set).
#[inline(always)]
#[must_use]
pub const fn table_summary_bit_v6(hash48: u64) -> u32 {
    // The high half: fits.
    ((hash48 >> 32) as u32) & (SUMMARY_BITS - 1)
}

/// [`table_summary_bit_v6`] of the /48 of `words` (`source_words` of an
/// IPv6 address), with `seed` (`Config::host_seed`).
#[inline(always)]
#[must_use]
pub const fn table_bit_v6(seed: u64, words: &[u32; 4]) -> u32 {
    let len = TABLE_SUMMARY_PREFIX_V6 as u32;
    table_summary_bit_v6(host_hash(seed, len, &masked_words(words, len)))
}

/// The region of the host table's IPv4 length masks of `words`
/// (`source_words` of an IPv4-mapped address): its /16's number.
#[inline(always)]
#[must_use]
pub const fn table_region_v4(words: &[u32; 4]) -> u32 {
    words[3].swap_bytes() >> 16
}

/// The region of the host table's IPv6 length masks of the /48 whose
/// [`host_hash`](crate::host_hash) is `hash48`: the hash's low bits (which
/// also name the /48's own set), not bits 32 to 55 (its summary bit): an
/// unlisted /48 whose summary bit it shares with a listed one does not
/// share its region more often for that.
#[inline(always)]
#[must_use]
#[expect(clippy::cast_possible_truncation, reason = "the low 21 bits")]
pub const fn table_region_v6(hash48: u64) -> u32 {
    (hash48 as u32) & (TABLE_REGIONS_V6 - 1)
}

/// The value of `BLOCK_SUMMARY` that holds the length mask of `region`
/// (of the family's regions), and the mask's shift in it.
#[inline(always)]
#[must_use]
pub const fn table_lengths_word(region: u32, is_v6: bool) -> (u32, u32) {
    let index = if is_v6 {
        TABLE_REGIONS_V4 + (region & (TABLE_REGIONS_V6 - 1))
    } else {
        region & (TABLE_REGIONS_V4 - 1)
    };
    (8 * SUMMARY_WORDS + 4 + index / 2, (index & 1) * 32)
}

/// The word (within its bitmap) and the mask of bit `bit`.
#[inline(always)]
#[must_use]
pub const fn summary_word_bit(bit: u32) -> (u32, u64) {
    (bit / 64, 1u64 << (bit % 64))
}

const _: () = assert!(SUMMARY_BITS.is_multiple_of(64));
// Every IPv4 table prefix lies in one /16, every IPv6 one longer than a
// /48 in one /48, and the program probes the /48 of every source.
const _: () = assert!(crate::TABLE_SHORTEST_V4 >= 16);
const _: () = assert!(crate::TABLE_SHORTEST_V6 <= TABLE_SUMMARY_PREFIX_V6);
const _: () = assert!(TABLE_SUMMARY_PREFIX_V6 <= crate::TABLE_LONGEST_V6);
const _: () = assert!(summary_wide(1, true) + 1 == table_lengths_word(0, false).0);
const _: () = assert!(table_lengths_word(TABLE_REGIONS_V6 - 1, true).0 == SUMMARY_ENTRIES - 1);
const _: () = assert!(table_lengths_word(TABLE_REGIONS_V6 - 1, true).1 == 32);
const _: () = assert!(TABLE_REGIONS_V4.is_power_of_two() && TABLE_REGIONS_V6.is_power_of_two());
// 203.0.113.7 -> /16 number 0xcb00.
const _: () = assert!(table_region_v4(&[0, 0, 0xffff_0000, 0x0771_00cb]) == 0xcb00);
const _: () = assert!(table_region_v6(u64::MAX) == TABLE_REGIONS_V6 - 1);
const _: () = assert!(table_region_v6(0xffff_ffff_0000_0000) == 0);
const _: () = assert!(summary_bitmap(1, true) + SUMMARY_WORDS == summary_table_bitmap(0, false));
const _: () = assert!(summary_table_bitmap(1, true) + SUMMARY_WORDS == summary_wide(0, false));
// 203.0.113.7 -> /24 number 0xcb0071.
const _: () = assert!(summary_bit_v4(&[0, 0, 0xffff_0000, 0x0771_00cb]) == 0x00cb_0071);
