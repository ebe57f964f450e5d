//! Allow and block list lookups, with expiry.

use aya_ebpf::maps::{LpmTrie, lpm_trie::Key};
use filter_common::{ListEntry, ORIGIN_AUTO, reason};

use crate::clock::CoarseClock;

/// Expired entries nested over one address that a single lookup skips (and
/// deletes); deeper nesting is cleared by the controller's periodic sweep.
const MAX_EXPIRED_SKIPS: usize = 4;

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

/// Why a blocked source is dropped, if it is. An operator's or the policy's
/// block takes precedence over an automatic block: when the longest match
/// is an automatic block, one more lookup looks for a block above it.
/// (Automatic blocks all have the aggregation prefix length, so they do
/// not nest unless the aggregation changed while some were active.)
#[inline(always)]
pub fn block_reason<K: Copy>(
    map: &LpmTrie<K, ListEntry>,
    bits: u32,
    addr: K,
    clock: &mut CoarseClock,
) -> Option<u32> {
    let entry = list_match(map, bits, addr, clock)?;
    if entry.origin != ORIGIN_AUTO || entry.prefix_len == 0 {
        return Some(reason::BLOCKLIST);
    }
    match list_match(map, u32::from(entry.prefix_len) - 1, addr, clock) {
        Some(cover) if cover.origin != ORIGIN_AUTO => Some(reason::BLOCKLIST),
        _ => Some(reason::AUTOBLOCK),
    }
}
