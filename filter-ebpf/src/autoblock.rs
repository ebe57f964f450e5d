//! Automatic blocks: a source that keeps exceeding its limit goes on the
//! blocklist for a while.

use filter_common::{
    Config, DEFAULT_IPV4_SOURCE_PREFIX, DEFAULT_IPV6_SOURCE_PREFIX, ListEntry, ORIGIN_AUTO,
    RateRule, SUMMARY_PREFIX_V4, SUMMARY_PREFIX_V6, source_bytes, summary_bit_v4, summary_bit_v6,
    summary_bitmap, summary_wide, summary_word_bit, table_stat,
};

use crate::{
    atomic::{BucketWords, SharedWord},
    clock::CoarseClock,
    events,
    lists::{DataOn8, KeyOn8},
    maps::{BLOCK_SUMMARY, BLOCK_V4, BLOCK_V6},
    parse::Packet,
    stats::bump_table_stat,
};

/// `-EEXIST`, as map helpers return it.
const EEXIST: i32 = -17;

/// Count an over-limit packet in the rule's window; the packet that reaches
/// the threshold puts the source's prefix on the blocklist as an automatic block.
/// `now` is the rate limiter's time (the window); the block's own times are
/// the coarse clock's, which user space reads as `CLOCK_MONOTONIC`.
#[expect(clippy::too_many_arguments, reason = "inlined into its one caller")]
#[inline(always)]
pub fn note_over_limit(
    bucket: &BucketWords,
    id: u32,
    rule: &RateRule,
    packet: &Packet,
    config: Option<&Config>,
    source: &[u32; 4],
    now: u64,
    clock: &mut CoarseClock,
) {
    let start = bucket.window_start_ns.load();
    if start == 0 || now.wrapping_sub(start) > rule.autoblock_window_ns {
        // New window. Racy with other CPUs by design: at worst a few packets
        // are counted in the old window.
        bucket.window_start_ns.store(now);
        bucket.over_limit.store(0);
    }
    let seen = bucket.over_limit.increment();
    if seen < rule.autoblock_after {
        return;
    }
    // Threshold reached: block, and start counting afresh, so that after the
    // block ends (or an operator lifts it) the source needs another
    // `autoblock_after` over-limit packets to be blocked again.
    bucket.window_start_ns.store(now);
    bucket.over_limit.store(0);
    let blocked_at = clock.now();
    let mut entry = ListEntry {
        expires_at_ns: blocked_at + rule.autoblock_for_ns,
        prefix_len: 0,
        origin: ORIGIN_AUTO,
        // Fits: MAX_RULES <= 256 is asserted in filter-common.
        rule: id as u8,
        flags: 0,
        over_limit: rule.autoblock_after,
    };
    // BPF_NOEXIST: an operator's entry for the same prefix stays as it is.
    let bits = if packet.is_v6 {
        config.map_or(DEFAULT_IPV6_SOURCE_PREFIX, |c| c.ipv6_source_prefix)
    } else {
        config.map_or(DEFAULT_IPV4_SOURCE_PREFIX, |c| c.ipv4_source_prefix)
    };
    entry.prefix_len = bits as u8;
    let bytes = source_bytes(source);
    let inserted = if packet.is_v6 {
        BLOCK_V6.insert(&DataOn8::new(bits, bytes).key, entry, 1)
    } else {
        BLOCK_V4.insert(&KeyOn8::new(bits, source[3].to_le_bytes()).key, entry, 1)
    };
    match inserted {
        Ok(()) => mark_summary(source, packet.is_v6, bits, config),
        // Another CPU blocked the source a moment ago.
        Err(EEXIST) => return,
        Err(_) => {
            bump_table_stat(table_stat::AUTOBLOCKS_FAILED);
            return;
        }
    }
    bump_table_stat(table_stat::AUTOBLOCKS);
    events::autoblocked(
        &bytes,
        id,
        rule.autoblock_after,
        blocked_at,
        entry.expires_at_ns,
    );
}

/// Marks an automatic block of `source`'s `bits`-bit prefix in both
/// generations of `BLOCK_SUMMARY`, after its insert (see
/// `filter_common::summary`). A prefix wider than one bit of the family's
/// bitmap, or a bit every attempt failed to set, sets the family's wide
/// word instead: a mark is never lost, at worst every source looks in the
/// trie until the controller rebuilds the bitmaps.
#[inline(always)]
fn mark_summary(words: &[u32; 4], is_v6: bool, bits: u32, config: Option<&Config>) {
    let bit = match config {
        Some(c) if is_v6 && bits >= u32::from(SUMMARY_PREFIX_V6) => {
            Some(summary_bit_v6(c.host_seed, words))
        }
        Some(_) if !is_v6 && bits >= u32::from(SUMMARY_PREFIX_V4) => Some(summary_bit_v4(words)),
        _ => None,
    };
    for generation in 0..2 {
        let marked = bit.is_some_and(|bit| {
            let (word, mask) = summary_word_bit(bit);
            BLOCK_SUMMARY
                .get_ptr_mut(summary_bitmap(generation, is_v6) + word)
                // SAFETY: a live array value, 8-byte aligned (`u64` values).
                .is_some_and(|w| unsafe { SharedWord::new(w) }.set_bits(mask))
        });
        if !marked && let Some(wide) = BLOCK_SUMMARY.get_ptr_mut(summary_wide(generation, is_v6)) {
            // SAFETY: as above.
            let wide = unsafe { SharedWord::new(wide) };
            // Ordered like the bit; a plain store only if every attempt lost.
            if !wide.set_bits(1) {
                wide.store(1);
            }
        }
    }
}
