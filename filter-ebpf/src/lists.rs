//! Allow and block list lookups, with expiry.

use aya_ebpf::maps::{LpmTrie, lpm_trie::Key};
use filter_common::{LIST_FLAG_SHADOW, ListEntry, ORIGIN_AUTO, reason};

use crate::clock::CoarseClock;

/// Expired entries nested over one address that a single lookup skips (and
/// deletes); deeper nesting is cleared by the controller's periodic sweep.
const MAX_EXPIRED_SKIPS: usize = 4;

/// Matches a block lookup looks through before it gives up on finding an
/// operator's block: shadow entries and automatic blocks nested over one address.
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

/// Whether `addr` is allowed: shadow allow entries are never installed, so
/// the longest match decides.
#[inline(always)]
pub fn allowed<K: Copy>(
    map: &LpmTrie<K, ListEntry>,
    bits: u32,
    addr: K,
    clock: &mut CoarseClock,
) -> bool {
    list_match(map, bits, addr, clock).is_some()
}

/// What the blocklist says about `addr`: the drop reason if an entry blocks
/// it, and whether a shadow entry matched (a would-be block, counted only).
///
/// An operator's or the policy's block takes precedence over an automatic
/// block, and shadow entries never decide: while the longest match is one of
/// those, the lookup goes on with shorter prefixes.
#[inline(always)]
pub fn block_reason<K: Copy>(
    map: &LpmTrie<K, ListEntry>,
    bits: u32,
    addr: K,
    clock: &mut CoarseClock,
) -> (Option<u32>, bool) {
    let mut bits = bits;
    let mut shadow = false;
    let mut auto = false;
    for _ in 0..MAX_BLOCK_MATCHES {
        let Some(entry) = list_match(map, bits, addr, clock) else {
            break;
        };
        if entry.flags & LIST_FLAG_SHADOW != 0 {
            shadow = true;
        } else if entry.origin == ORIGIN_AUTO {
            auto = true;
        } else {
            return (Some(reason::BLOCKLIST), shadow);
        }
        if entry.prefix_len == 0 {
            break;
        }
        bits = u32::from(entry.prefix_len) - 1;
    }
    (auto.then_some(reason::AUTOBLOCK), shadow)
}
