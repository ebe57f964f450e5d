//! Allow and block list lookups, with expiry.

use aya_ebpf::maps::{LpmTrie, lpm_trie::Key};
use filter_common::{
    Config, HOST_USED, HOST_WAYS, HostSlot, ListEntry, ORIGIN_AUTO, TABLE_PREFIXES_V4,
    TABLE_PREFIXES_V6, TABLE_SUMMARY_PREFIX_V6, host_hash, host_set, host_set_bit,
    host_set_of_hash, masked_words, reason, summary_bit_v4, summary_bit_v6, summary_bitmap,
    summary_table_bitmap, summary_wide, summary_word_bit, table_summary_bit_v6,
};

use crate::{
    clock::CoarseClock,
    maps::{BLOCK_HOST_SETS, BLOCK_HOSTS, BLOCK_SUMMARY},
};

/// Expired entries nested over one address that a single lookup skips (and
/// deletes); deeper nesting is cleared by the controller's periodic sweep.
const MAX_EXPIRED_SKIPS: usize = 4;

/// Matches a block lookup looks through before it gives up on finding an
/// operator's block under automatic blocks nested over one address (an
/// automatic block is at most one prefix per rule's aggregation).
const MAX_BLOCK_MATCHES: usize = 4;

/// The active longest-prefix match for `addr` among prefixes of at most
/// `bits` bits. An expired match is deleted (it would hide shorter prefixes)
/// and the lookup repeated.
#[inline(always)]
pub fn list_match<'a, K: Copy>(
    map: &'a LpmTrie<K, ListEntry>,
    bits: u32,
    addr: K,
    clock: &mut CoarseClock,
) -> Option<&'a ListEntry> {
    for _ in 0..=MAX_EXPIRED_SKIPS {
        let entry = map.get(Key::new(bits, addr))?;
        if entry.expires_at_ns == 0 || clock.now() < entry.expires_at_ns {
            return Some(entry);
        }
        let _ = map.remove(Key::new(u32::from(entry.prefix_len), addr));
    }
    None
}

/// Whether an active entry of `map` covers `addr` (allowlists and the
/// shadow blocklists: the longest match decides).
#[inline(always)]
pub fn listed<K: Copy>(
    map: &LpmTrie<K, ListEntry>,
    bits: u32,
    addr: K,
    clock: &mut CoarseClock,
) -> bool {
    list_match(map, bits, addr, clock).is_some()
}

/// Why a blocked source is dropped (`reason::BLOCKLIST` or
/// `reason::AUTOBLOCK`), or `reason::PASS` if it is not. An operator's or
/// the policy's block takes precedence over an automatic block: while the
/// longest match is an automatic block, the lookup goes on with shorter
/// prefixes.
///
/// A plain `u32`, not an `Option<u32>`: LLVM stored the undefined payload
/// of a `None` from whatever register it liked (one a helper call had just
/// clobbered), and the verifier refused the program ("R2 !read_ok").
#[inline(always)]
pub fn block_reason<K: Copy>(
    map: &LpmTrie<K, ListEntry>,
    bits: u32,
    addr: K,
    clock: &mut CoarseClock,
) -> u32 {
    let mut bits = bits;
    let mut why = reason::PASS;
    for _ in 0..MAX_BLOCK_MATCHES {
        let Some(entry) = list_match(map, bits, addr, clock) else {
            break;
        };
        if entry.origin != ORIGIN_AUTO {
            return reason::BLOCKLIST;
        }
        why = reason::AUTOBLOCK;
        if entry.prefix_len == 0 {
            break;
        }
        bits = u32::from(entry.prefix_len) - 1;
    }
    why
}

/// Whether the blocklist trie of the source's family may hold a prefix
/// covering the source `words` (`Packet::source`), by `BLOCK_SUMMARY`: one
/// inlined array read, or two while the family's wide word is clear. If
/// not, the trie lookup, whose cost grows with the list, is skipped.
#[inline(always)]
pub fn trie_may_block(words: &[u32; 4], is_v6: bool, config: &Config) -> bool {
    let generation = config.summary_generation;
    if BLOCK_SUMMARY
        .get(summary_wide(generation, is_v6))
        .is_none_or(|wide| *wide != 0)
    {
        return true;
    }
    let bit = if is_v6 {
        summary_bit_v6(config.host_seed, words)
    } else {
        summary_bit_v4(words)
    };
    let (word, mask) = summary_word_bit(bit);
    BLOCK_SUMMARY
        .get(summary_bitmap(generation, is_v6) + word)
        .is_none_or(|w| w & mask != 0)
}

/// Whether the host table's summary marks `bit` (its IPv4 /24's or IPv6
/// /48's) in the generation in use: if not, `BLOCK_HOSTS` holds no entry
/// for the source and its probes are skipped.
#[inline(always)]
fn table_marks(bit: u32, is_v6: bool, config: &Config) -> bool {
    let (word, mask) = summary_word_bit(bit);
    BLOCK_SUMMARY
        .get(summary_table_bitmap(config.summary_generation, is_v6) + word)
        .is_none_or(|w| w & mask != 0)
}

/// Whether `BLOCK_HOSTS` holds an active entry for the source `words`
/// (`Packet::source`): only where the table's summary marks the source's
/// IPv4 /24 or IPv6 /48 (most unlisted sources stop there), then for the
/// host and, while the table holds any prefixes, for its /24 (IPv4) or its
/// /48 and /64 (the /48 first: its hash also named the summary's bit). Each
/// probe is one bit of `BLOCK_HOST_SETS`, then (for a set in use) up to
/// `HOST_WAYS` inlined array reads; no kernel call. Only an operator's, the
/// policy's or `CrowdSec`'s blocks live there (automatic blocks stay in the
/// tries), so any hit is a `reason::BLOCKLIST` whatever the tries hold. An
/// expired entry is skipped; the controller's sweep deletes it.
#[inline(always)]
pub fn host_blocked(
    words: &[u32; 4],
    is_v6: bool,
    config: &Config,
    clock: &mut CoarseClock,
) -> bool {
    if config.block_hosts == 0 {
        return false;
    }
    let prefixes = config.table_prefixes != 0;
    if is_v6 {
        // The /48 (`TABLE_PREFIXES_V6[1]`, asserted in filter-common).
        let len = u32::from(TABLE_SUMMARY_PREFIX_V6);
        let key48 = masked_words(words, len);
        let hash48 = host_hash(config.host_seed, len, &key48);
        table_marks(table_summary_bit_v6(hash48), true, config)
            && ((prefixes
                && probe_set(
                    &key48,
                    host_set_of_hash(hash48, config.host_mask),
                    TABLE_PREFIXES_V6[1],
                    clock,
                ))
                || probe(config, words, 128, 128, clock)
                || (prefixes && probe(config, words, 64, TABLE_PREFIXES_V6[0], clock)))
    } else {
        table_marks(summary_bit_v4(words), false, config)
            && (probe(config, words, 128, 32, clock)
                || (prefixes && probe(config, words, 96 + 24, TABLE_PREFIXES_V4[0], clock)))
    }
}

/// Whether `BLOCK_HOSTS` holds an active entry of `prefix_len` bits for
/// `words`, the source's address masked to `mapped_len` bits of the
/// IPv4-mapped space (both constants where this is inlined).
#[inline(always)]
fn probe(
    config: &Config,
    words: &[u32; 4],
    mapped_len: u32,
    prefix_len: u8,
    clock: &mut CoarseClock,
) -> bool {
    let key = masked_words(words, mapped_len);
    let first = host_set(config.host_seed, config.host_mask, mapped_len, &key);
    probe_set(&key, first, prefix_len, clock)
}

/// Whether the set of `BLOCK_HOSTS` starting at `first` (`key`'s) holds an
/// active entry for (`key`, `prefix_len`).
#[inline(always)]
fn probe_set(key: &[u32; 4], first: u32, prefix_len: u8, clock: &mut CoarseClock) -> bool {
    let (word, bit) = host_set_bit(first);
    if BLOCK_HOST_SETS.get(word).is_none_or(|w| w & bit == 0) {
        return false;
    }
    for way in 0..HOST_WAYS {
        let Some(slot) = BLOCK_HOSTS.get_ptr(first + way) else {
            return false;
        };
        // SAFETY: `slot` points to a live array value (never freed while
        // the program runs); user space writes a new entry's key and
        // fields in place before its `HOST_USED` bit (see `HostSlot`).
        let expires_at_ns = unsafe {
            if !holds(slot, key, prefix_len) {
                continue;
            }
            (&raw const (*slot).expires_at_ns).read_volatile()
        };
        return expires_at_ns == 0 || clock.now() < expires_at_ns;
    }
    false
}

/// Whether `slot` holds the key (`words`, `prefix_len`).
///
/// # Safety
/// `slot` points to a live `BLOCK_HOSTS` value.
#[inline(always)]
unsafe fn holds(slot: *const HostSlot, words: &[u32; 4], prefix_len: u8) -> bool {
    // SAFETY: as the caller's; the address is 16 bytes at offset 0
    // (asserted in filter-common).
    unsafe {
        // The word most likely to differ first: the last holds an IPv4
        // address (the others are the same for every IPv4 key) and an IPv6
        // host's interface bits; the second tells prefixes apart. A miss,
        // the usual case for a full set, then stops after one word.
        let addr = slot.cast::<u32>();
        (&raw const (*slot).state).read_volatile() & HOST_USED != 0
            && addr.add(3).read_volatile() == words[3]
            && addr.add(1).read_volatile() == words[1]
            && addr.read_volatile() == words[0]
            && addr.add(2).read_volatile() == words[2]
            && (&raw const (*slot).prefix_len).read_volatile() == prefix_len
    }
}
