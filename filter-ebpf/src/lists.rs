//! Allow and block list lookups, with expiry.

use core::ffi::c_void;

use aya_ebpf::{
    helpers::bpf_loop,
    maps::{LpmTrie, lpm_trie::Key},
};
use filter_common::{
    Config, HOST_USED, HOST_WAYS, HostSlot, ListEntry, ORIGIN_AUTO, TABLE_LENGTHS_V4,
    TABLE_LENGTHS_V6, TABLE_SHORTEST_V4, TABLE_SHORTEST_V6, TABLE_SUMMARY_PREFIX_V6, host_hash,
    host_set, host_set_bit, masked_words, prefix_mask32, reason, summary_bit_v4, summary_bit_v6,
    summary_bitmap, summary_table_bitmap, summary_wide, summary_word_bit, table_lengths_word,
    table_region_v4, table_region_v6, table_summary_bit_v6,
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

/// LPM trie keys on 8-byte aligned stack slots. aya's `Key` is packed
/// (alignment 1), so where a key landed on the stack was luck; LLVM copies
/// 8 bytes at a time wherever it likes, and the verifier refuses a
/// misaligned stack store ("misaligned stack access"), which a change
/// elsewhere in the frame brought about. [`DataOn8`] starts the key's data
/// on an 8-byte boundary (a 16-byte IPv6 address), [`KeyOn8`] the key
/// itself (its prefix length and a 4-byte IPv4 address make one aligned
/// word; an only-from key's address follows its 4-byte rule slot). Pass
/// `&slot.key` to the map.
#[repr(C, align(8))]
pub struct DataOn8<K> {
    _pad: u32,
    pub key: Key<K>,
}

impl<K> DataOn8<K> {
    #[inline(always)]
    pub const fn new(prefix_len: u32, data: K) -> Self {
        Self {
            _pad: 0,
            key: Key::new(prefix_len, data),
        }
    }
}

/// See [`DataOn8`].
#[repr(C, align(8))]
pub struct KeyOn8<K> {
    pub key: Key<K>,
}

impl<K> KeyOn8<K> {
    #[inline(always)]
    pub const fn new(prefix_len: u32, data: K) -> Self {
        Self {
            key: Key::new(prefix_len, data),
        }
    }
}

/// `map`'s value for (`bits`, `addr`), from a key on an aligned slot (see
/// [`DataOn8`]): the data on 8 bytes for an IPv6 address, else the key.
#[inline(always)]
fn trie_get<K: Copy>(map: &LpmTrie<K, ListEntry>, bits: u32, addr: K) -> Option<&ListEntry> {
    if size_of::<K>() == 16 {
        map.get(&DataOn8::new(bits, addr).key)
    } else {
        map.get(&KeyOn8::new(bits, addr).key)
    }
}

/// Deletes `map`'s entry for (`bits`, `addr`), as [`trie_get`] looks it up.
#[inline(always)]
fn trie_remove<K: Copy>(map: &LpmTrie<K, ListEntry>, bits: u32, addr: K) {
    let _ = if size_of::<K>() == 16 {
        map.remove(&DataOn8::new(bits, addr).key)
    } else {
        map.remove(&KeyOn8::new(bits, addr).key)
    };
}

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
        let entry = trie_get(map, bits, addr)?;
        if entry.expires_at_ns == 0 || clock.now() < entry.expires_at_ns {
            return Some(entry);
        }
        trie_remove(map, u32::from(entry.prefix_len), addr);
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
/// host and, while the table holds any prefixes, for each prefix length
/// that the length mask of the source's region (its IPv4 /16, its IPv6
/// /48's hash) names, longest first. Each probe is one bit of
/// `BLOCK_HOST_SETS`, then (for a set in use) up to `HOST_WAYS` inlined
/// array reads; no kernel call, and as many probes at a million entries as
/// at one. Only an operator's, the policy's or `CrowdSec`'s blocks live
/// there (automatic blocks stay in the tries), so any hit is a
/// `reason::BLOCKLIST` whatever the tries hold. An expired entry is
/// skipped (a shorter length is still probed); the controller's sweep
/// deletes it.
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
        let len = u32::from(TABLE_SUMMARY_PREFIX_V6);
        let hash48 = host_hash(config.host_seed, len, &masked_words(words, len));
        table_marks(table_summary_bit_v6(hash48), true, config)
            && (probe(config, words, 128, 128, clock)
                || (prefixes
                    && probe_lengths::<true>(
                        table_lengths(table_region_v6(hash48), true),
                        words,
                        config,
                    )))
    } else {
        table_marks(summary_bit_v4(words), false, config)
            && (probe(config, words, 128, 32, clock)
                || (prefixes
                    && probe_lengths::<false>(
                        table_lengths(table_region_v4(words), false),
                        words,
                        config,
                    )))
    }
}

/// The length mask of the table's `region` (see `filter_common::summary`).
#[inline(always)]
fn table_lengths(region: u32, is_v6: bool) -> u32 {
    let (index, shift) = table_lengths_word(region, is_v6);
    #[expect(clippy::cast_possible_truncation, reason = "one u32 mask of the word")]
    BLOCK_SUMMARY
        .get(index)
        .map_or(u32::MAX, |w| (*w >> shift) as u32)
}

/// Whether the table holds an active prefix for `words` of one of the
/// lengths `mask` names (bit `i`: the family's shortest table length plus
/// `i`), longest first (any active one blocks). One `bpf_loop` call of
/// [`probe_length`] per length: the verifier checks the callback as one
/// function (until its state settles), where a loop in the program would
/// have it walk every iteration again for each of the many states the
/// packet's parse reaches this point in (it refused that as too complex).
/// Recent kernels inline the helper into a loop of BPF-to-BPF calls; from
/// 5.17 on it is at most a helper call per length.
#[inline(always)]
fn probe_lengths<const V6: bool>(mask: u32, words: &[u32; 4], config: &Config) -> bool {
    let count = if V6 {
        TABLE_LENGTHS_V6
    } else {
        TABLE_LENGTHS_V4
    };
    let left = mask & ((1 << count) - 1);
    if left == 0 {
        return false;
    }
    let mut probe = LengthProbe {
        words: *words,
        host_seed: config.host_seed,
        host_mask: config.host_mask,
        left,
        blocked: 0,
        _pad: 0,
    };
    // SAFETY: `probe_length` is a callback of `bpf_loop`'s type, and
    // `probe` outlives the call (the kernel passes it back as `ctx`).
    unsafe {
        bpf_loop(
            count,
            probe_length::<V6> as *mut c_void,
            (&raw mut probe).cast(),
            0,
        );
    }
    probe.blocked != 0
}

/// What [`probe_length`] reads and leaves for its next call.
#[repr(C)]
struct LengthProbe {
    /// The source (`Packet::source`).
    words: [u32; 4],
    /// `Config::host_seed` and `Config::host_mask`.
    host_seed: u64,
    host_mask: u32,
    /// The lengths not probed yet (a length mask).
    left: u32,
    /// Set when a probe found an active entry.
    blocked: u32,
    _pad: u32,
}

/// One `bpf_loop` step of [`probe_lengths`]: probes the longest length left
/// (the mask's highest bit: LLVM counts leading zeros with shifts, trailing
/// zeros with a table that would be a `.rodata` map). Returns 1 to stop.
extern "C" fn probe_length<const V6: bool>(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `LengthProbe` that `probe_lengths` passed to
    // `bpf_loop`, alive and not otherwise borrowed during the call.
    let probe = unsafe { &mut *ctx.cast::<LengthProbe>() };
    let left = probe.left;
    if left == 0 {
        return 1;
    }
    let i = 31 - left.leading_zeros();
    probe.left = left & !(1 << i);
    let (shortest, words) = if V6 {
        (u32::from(TABLE_SHORTEST_V6), &probe.words)
    } else {
        (u32::from(TABLE_SHORTEST_V4), &probe.words)
    };
    let len = shortest + i;
    // An IPv4 key keeps the mapped prefix's words as they are.
    let (key, mapped_len) = if V6 {
        (masked_words(words, len), len)
    } else {
        let last = words[3] & prefix_mask32(len).swap_bytes();
        ([words[0], words[1], words[2], last], 96 + len)
    };
    let first = host_set(probe.host_seed, probe.host_mask, mapped_len, &key);
    #[expect(
        clippy::cast_possible_truncation,
        reason = "a prefix length, below 128"
    )]
    if probe_set(&key, first, len as u8, &mut CoarseClock::new()) {
        probe.blocked = 1;
        return 1;
    }
    0
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
