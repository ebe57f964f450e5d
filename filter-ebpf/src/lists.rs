//! Allow and block list lookups, with expiry.

use aya_ebpf::maps::{LpmTrie, lpm_trie::Key};
use filter_common::{ListEntry, ORIGIN_AUTO, reason};

use crate::clock::CoarseClock;

/// Expired entries nested over one address that a single lookup skips (and
/// deletes); deeper nesting is cleared by the controller's periodic sweep.
const MAX_EXPIRED_SKIPS: usize = 4;

/// Origin and prefix length of the active longest-prefix match for `addr`
/// among prefixes of at most `bits` bits. An expired match is deleted (it
/// would hide shorter prefixes) and the lookup repeated.
#[inline(always)]
pub fn list_match<K: Copy>(
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
pub fn block_reason<K: Copy>(
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
