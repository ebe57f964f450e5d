//! `BLOCK_SUMMARY`: the bitmaps of where the blocklist tries may hold a
//! prefix and where `BLOCK_HOSTS` may hold an entry, and the table's length
//! masks (see `filter_common::summary`), memory-mapped. User space marks
//! both generations (and a prefix's length) before it writes a trie entry
//! or places a table entry, and rebuilds the unused generation from a walk
//! of the tries and the table, and the masks in place, when removed entries
//! have left many stale bits (in the bitmaps or in the masks); both under
//! the edit lock.

use std::{
    net::IpAddr,
    sync::atomic::{AtomicU64, Ordering, fence},
};

use anyhow::{Context as _, ensure};
use filter_common::{
    SUMMARY_ENTRIES, SUMMARY_PREFIX_V4, SUMMARY_PREFIX_V6, SUMMARY_WIDEST_V6, SUMMARY_WORDS,
    TABLE_REGIONS_V4, TABLE_REGIONS_V6, TABLE_SUMMARY_PREFIX_V6, host_hash, host_key_v4, maps,
    masked_words, prefix_mask32, source_words, summary_bit_v4, summary_bit_v6, summary_bitmap,
    summary_table_bitmap, summary_wide, summary_word_bit, table_bit_v6, table_length_bit,
    table_lengths_word, table_region_v4, table_region_v6,
};

use super::{Filter, Tries, barrier::wait_for_running_programs, mapping::Mapping};
use crate::spec::cidr::Cidr;

/// Stale bits (set, but needed by no entry) a generation, or the table's
/// length masks, may carry before a sweep rebuilds it: at least this many,
/// and more than the needed ones.
const STALE_BITS_TOLERATED: u64 = 1024;

/// Whether `marked` set bits, of which `needed` are needed, carry more
/// stale ones than tolerated (more than half of the lookups or probes they
/// let through would be needless).
const fn too_stale(marked: u64, needed: u64) -> bool {
    let stale = marked.saturating_sub(needed);
    stale > STALE_BITS_TOLERATED && stale > needed
}

/// How much of a generation is marked: set bits of each family's bitmap
/// of the tries (of [`filter_common::SUMMARY_BITS`]), each family's wide
/// word, and set bits of each family's bitmap of the host table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SummaryUse {
    pub bits_v4: u64,
    pub bits_v6: u64,
    pub wide_v4: bool,
    pub wide_v6: bool,
    pub table_v4: u64,
    pub table_v6: u64,
}

impl SummaryUse {
    /// Set bits of both bitmaps of the tries.
    #[must_use]
    pub const fn bits(&self) -> u64 {
        self.bits_v4 + self.bits_v6
    }

    /// Set bits of both bitmaps of the host table.
    #[must_use]
    pub const fn table_bits(&self) -> u64 {
        self.table_v4 + self.table_v6
    }

    /// Whether a generation marked as `self` carries enough stale marks,
    /// against what the tries' and the table's entries `needed`, to be
    /// worth a rebuild: a wide word no entry needs (every source of the
    /// family looks in the trie), or, in the tries' bitmaps or the table's,
    /// more stale bits than needed ones (more than half of the lookups or
    /// probes the bitmap lets through are needless).
    #[must_use]
    pub const fn worth_rebuilding(&self, needed: &Self) -> bool {
        (self.wide_v4 && !needed.wide_v4)
            || (self.wide_v6 && !needed.wide_v6)
            || too_stale(self.bits(), needed.bits())
            || too_stale(self.table_bits(), needed.table_bits())
    }
}

/// Calls `visit` with each (word within the family's bitmap, mask of its
/// bits) that `cidr` marks: an IPv4 prefix's /24s are consecutive bits, so
/// whole words for a /18 or wider (a /8 is 1,024 words, not 65,536 bits);
/// an IPv6 prefix's /40s are hashed, a bit each. False (no call) if the
/// prefix is too wide and marks the family's wide word.
fn for_each_mark(cidr: &Cidr, seed: u64, visit: &mut impl FnMut(u32, u64)) -> bool {
    match *cidr {
        Cidr::V4 { addr, prefix } => {
            let first = summary_bit_v4(&source_words(&host_key_v4(
                (u32::from_be_bytes(addr) & prefix_mask32(u32::from(prefix))).to_be_bytes(),
            )));
            let count = 1_u32 << SUMMARY_PREFIX_V4.saturating_sub(prefix);
            if count < 64 {
                // Within one word: `first` is a multiple of `count`.
                let (word, bit) = summary_word_bit(first);
                visit(word, ((1_u64 << count) - 1) * bit);
            } else {
                // Whole words: `first` is a multiple of 64.
                (first / 64..(first + count) / 64).for_each(|word| visit(word, u64::MAX));
            }
            true
        }
        Cidr::V6 { addr, prefix } if prefix >= SUMMARY_PREFIX_V6 => {
            let (word, mask) = summary_word_bit(summary_bit_v6(seed, &source_words(&addr)));
            visit(word, mask);
            true
        }
        Cidr::V6 { addr, prefix } if prefix >= SUMMARY_WIDEST_V6 => {
            // Each /40 of the prefix: its first 40 bits (five bytes) counted up.
            let mut top = [0_u8; 8];
            top[3..].copy_from_slice(&addr[..5]);
            let first = u64::from_be_bytes(top) & !((1_u64 << (SUMMARY_PREFIX_V6 - prefix)) - 1);
            for n in 0..1_u64 << (SUMMARY_PREFIX_V6 - prefix) {
                let mut slash40 = [0_u8; 16];
                slash40[..5].copy_from_slice(&(first + n).to_be_bytes()[3..]);
                let (word, mask) = summary_word_bit(summary_bit_v6(seed, &source_words(&slash40)));
                visit(word, mask);
            }
            true
        }
        Cidr::V6 { .. } => false,
    }
}

/// The two summaries of `BLOCK_SUMMARY`: of the blocklist tries, and of
/// the host table (`BLOCK_HOSTS`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layer {
    Tries,
    Table,
}

impl Layer {
    /// The first word of this layer's bitmap of (`generation`, family).
    const fn bitmap(self, generation: u32, is_v6: bool) -> u32 {
        match self {
            Self::Tries => summary_bitmap(generation, is_v6),
            Self::Table => summary_table_bitmap(generation, is_v6),
        }
    }

    /// This layer's bitmap of `is_v6`'s family in [`Needed::bitmaps`].
    const fn needed_index(self, is_v6: bool) -> usize {
        (match self {
            Self::Tries => 0,
            Self::Table => 2,
        } + is_v6 as usize)
            * SUMMARY_WORDS as usize
    }
}

/// Calls `visit` with each /48 (its `source_words`) of an IPv6 table entry:
/// its own for a /48 or longer, each of a /40 to /47's.
fn for_each_slash48(addr: &[u8; 16], prefix: u8, visit: &mut impl FnMut(&[u32; 4])) {
    let span = TABLE_SUMMARY_PREFIX_V6.saturating_sub(prefix);
    // The first 48 bits (six bytes) counted up from the prefix's first /48.
    let mut top = [0_u8; 8];
    top[2..].copy_from_slice(&addr[..6]);
    let first = u64::from_be_bytes(top) & !((1_u64 << span) - 1);
    for n in 0..1_u64 << span {
        let mut slash48 = [0_u8; 16];
        slash48[..6].copy_from_slice(&(first + n).to_be_bytes()[2..]);
        visit(&source_words(&slash48));
    }
}

/// [`for_each_mark`] in `layer`'s bitmaps: the host table's IPv6 bits are
/// its entry's /48s' (`filter_common::table_bit_v6`; a table entry is a
/// host, or a /40 to /64: 256 /48s at most), its IPv4 bits the /24s', as
/// the tries'.
fn for_each_layer_mark(
    layer: Layer,
    cidr: &Cidr,
    seed: u64,
    visit: &mut impl FnMut(u32, u64),
) -> bool {
    match (layer, cidr) {
        (Layer::Table, Cidr::V6 { addr, prefix }) => {
            for_each_slash48(addr, *prefix, &mut |words| {
                let (word, mask) = summary_word_bit(table_bit_v6(seed, words));
                visit(word, mask);
            });
            true
        }
        _ => for_each_mark(cidr, seed, visit),
    }
}

/// Calls `visit` with (index among all regions, bit) of each length-mask
/// bit that the host table's prefix `cidr` needs (none for a host): IPv4
/// regions first, then IPv6 (see `filter_common::summary`).
fn for_each_length_bit(cidr: &Cidr, seed: u64, visit: &mut impl FnMut(u32, u32)) {
    match *cidr {
        Cidr::V4 { addr, prefix } => {
            let bit = table_length_bit(false, prefix);
            if bit != 0 {
                visit(table_region_v4(&source_words(&host_key_v4(addr))), bit);
            }
        }
        Cidr::V6 { addr, prefix } => {
            let bit = table_length_bit(true, prefix);
            if bit != 0 {
                let len = u32::from(TABLE_SUMMARY_PREFIX_V6);
                for_each_slash48(&addr, prefix, &mut |words| {
                    let region = table_region_v6(host_hash(seed, len, words));
                    visit(TABLE_REGIONS_V4 + region, bit);
                });
            }
        }
    }
}

/// The value of `BLOCK_SUMMARY` and the shift of the length mask of
/// region `index` (among all regions: IPv4 first).
const fn length_word(index: u32) -> (u32, u32) {
    if index < TABLE_REGIONS_V4 {
        table_lengths_word(index, false)
    } else {
        table_lengths_word(index - TABLE_REGIONS_V4, true)
    }
}

/// Each value of `BLOCK_SUMMARY` that holds length masks, with the two
/// masks of `lengths` (one per region, IPv4 regions first) it should hold.
fn length_values(lengths: &[u32]) -> impl Iterator<Item = (u32, u64)> + '_ {
    lengths.chunks(2).enumerate().map(|(pair, masks)| {
        #[expect(clippy::cast_possible_truncation, reason = "fewer than 2^22 regions")]
        let (value, _) = length_word(2 * pair as u32);
        let high = masks.get(1).copied().unwrap_or(0);
        (value, u64::from(masks[0]) | (u64::from(high) << 32))
    })
}

/// What the tries' and the table's entries need marked: bitmaps of this
/// process's own (the tries' IPv4, IPv6, then the table's), the table's
/// length masks (IPv4 regions, then IPv6), and the bitmaps' counts.
pub struct Needed {
    bitmaps: Vec<u64>,
    lengths: Vec<u32>,
    pub marks: SummaryUse,
}

/// What `trie_cidrs` (the tries' entries) and `table_cidrs` (the host
/// table's) need marked.
#[must_use]
pub fn needed<'a>(
    trie_cidrs: impl IntoIterator<Item = &'a Cidr>,
    table_cidrs: impl IntoIterator<Item = &'a Cidr>,
    seed: u64,
) -> Needed {
    let mut bitmaps = vec![0_u64; 4 * SUMMARY_WORDS as usize];
    let mut lengths = vec![0_u32; (TABLE_REGIONS_V4 + TABLE_REGIONS_V6) as usize];
    let mut marks = SummaryUse::default();
    let mut mark = |layer: Layer, cidr: &Cidr| {
        let base = layer.needed_index(matches!(cidr, Cidr::V6 { .. }));
        let marked = for_each_layer_mark(layer, cidr, seed, &mut |word, mask| {
            bitmaps[base + word as usize] |= mask;
        });
        if !marked {
            marks.wide_v6 = true;
        }
    };
    trie_cidrs.into_iter().for_each(|c| mark(Layer::Tries, c));
    for cidr in table_cidrs {
        mark(Layer::Table, cidr);
        for_each_length_bit(cidr, seed, &mut |index, bit| lengths[index as usize] |= bit);
    }
    let count = |layer: Layer, is_v6| {
        let base = layer.needed_index(is_v6);
        bitmaps[base..base + SUMMARY_WORDS as usize]
            .iter()
            .map(|w| u64::from(w.count_ones()))
            .sum()
    };
    marks.bits_v4 = count(Layer::Tries, false);
    marks.bits_v6 = count(Layer::Tries, true);
    marks.table_v4 = count(Layer::Table, false);
    marks.table_v6 = count(Layer::Table, true);
    Needed {
        bitmaps,
        lengths,
        marks,
    }
}

/// `BLOCK_SUMMARY`, mapped whole (24.25 MiB), with the seed of its IPv6 hash.
pub struct Summary {
    words: Mapping<u64>,
    seed: u64,
}

impl Summary {
    pub fn open(filter: &Filter) -> anyhow::Result<Self> {
        let words = Mapping::open(filter, maps::BLOCK_SUMMARY)?;
        ensure!(
            words.len == SUMMARY_ENTRIES,
            "{} has {} words, this build expects {SUMMARY_ENTRIES}: run `filter-ctl detach` and start the filter again",
            maps::BLOCK_SUMMARY,
            words.len
        );
        words.map_whole()?;
        Ok(Self {
            words,
            seed: filter.config()?.host_seed,
        })
    }

    fn word(&self, index: u32) -> anyhow::Result<&AtomicU64> {
        let ptr = self.words.ptr(index)?;
        // SAFETY: an aligned u64 of the mapping, which lives as long as
        // `self`; the program reads and sets bits of it atomically too.
        Ok(unsafe { AtomicU64::from_ptr(ptr) })
    }

    /// Marks `cidrs` in both generations: before they are written to the
    /// blocklist tries.
    pub fn mark<'a>(&self, cidrs: impl IntoIterator<Item = &'a Cidr>) -> anyhow::Result<()> {
        self.mark_generations(Layer::Tries, cidrs, &[0, 1])
    }

    /// Marks `cidr` (a host, or a prefix of the table's lengths) in both
    /// generations of the host table's bitmaps, and a prefix's length in its
    /// regions' length masks: before it is placed in `BLOCK_HOSTS`, whose
    /// used bit, stored after a release fence, orders it.
    pub fn mark_table_entry(&self, cidr: &Cidr) -> anyhow::Result<()> {
        self.mark_bits(Layer::Table, cidr, &[0, 1])?;
        let mut failed = None;
        for_each_length_bit(cidr, self.seed, &mut |index, bit| {
            let (value, shift) = length_word(index);
            let mask = u64::from(bit) << shift;
            match self.word(value) {
                Ok(w) if w.load(Ordering::Relaxed) & mask != mask => {
                    w.fetch_or(mask, Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(e) => failed = Some(e),
            }
        });
        failed.map_or(Ok(()), Err)
    }

    /// Writes the table's length masks as `needed` has them, in place (one
    /// generation: the program only reads them, and user space writes them
    /// under the edit lock). Clears only bits no entry needs, so a packet
    /// never misses a length the table holds.
    fn rewrite_lengths(&self, needed: &[u32]) -> anyhow::Result<()> {
        for (value, want) in length_values(needed) {
            let word = self.word(value)?;
            if word.load(Ordering::Relaxed) != want {
                word.store(want, Ordering::Relaxed);
            }
        }
        fence(Ordering::SeqCst);
        Ok(())
    }

    /// Whether the table's length masks carry enough bits that no entry of
    /// the table needs (`needed`: removed prefixes leave theirs) to be
    /// worth a rebuild, by the bitmaps' measure: each costs a probe of the
    /// sources of its region whose table bit is set, never a verdict.
    pub fn lengths_stale(&self, needed: &Needed) -> anyhow::Result<bool> {
        let (mut marked, mut wanted) = (0_u64, 0_u64);
        for (value, want) in length_values(&needed.lengths) {
            let have = self.word(value)?.load(Ordering::Relaxed);
            // Bits set that are not wanted, and the wanted ones.
            marked += u64::from((have & !want).count_ones() + want.count_ones());
            wanted += u64::from(want.count_ones());
        }
        Ok(too_stale(marked, wanted))
    }

    fn mark_generations<'a>(
        &self,
        layer: Layer,
        cidrs: impl IntoIterator<Item = &'a Cidr>,
        generations: &[u32],
    ) -> anyhow::Result<()> {
        for cidr in cidrs {
            self.mark_bits(layer, cidr, generations)?;
        }
        // The marks before the writes that follow.
        fence(Ordering::SeqCst);
        Ok(())
    }

    /// Sets `cidr`'s bits in `layer`'s bitmaps of `generations` (or its
    /// family's wide word).
    fn mark_bits(&self, layer: Layer, cidr: &Cidr, generations: &[u32]) -> anyhow::Result<()> {
        let is_v6 = matches!(cidr, Cidr::V6 { .. });
        let mut failed = None;
        let marked = for_each_layer_mark(layer, cidr, self.seed, &mut |word, mask| {
            for &generation in generations {
                match self.word(layer.bitmap(generation, is_v6) + word) {
                    // A load first: most words of a large load's wide
                    // prefixes are set already, and a locked OR costs more.
                    Ok(w) if w.load(Ordering::Relaxed) & mask != mask => {
                        w.fetch_or(mask, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(e) => failed = Some(e),
                }
            }
        });
        if let Some(e) = failed {
            return Err(e);
        }
        // Table entries are hosts and /16s to /64s, 256 bits at most.
        ensure!(
            marked || layer == Layer::Tries,
            "{cidr} is too wide for the host table's summary"
        );
        if !marked {
            for &generation in generations {
                self.word(summary_wide(generation, is_v6))?
                    .store(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// Whether `addr`'s bit (its /24's, or its /40's or /48's) is set in `layer`'s bitmap of
    /// `generation`, and whether `addr` is IPv6.
    fn bit_set(&self, layer: Layer, generation: u32, addr: IpAddr) -> anyhow::Result<(bool, bool)> {
        let (is_v6, bit) = match addr {
            IpAddr::V4(v4) => (
                false,
                summary_bit_v4(&source_words(&host_key_v4(v4.octets()))),
            ),
            IpAddr::V6(v6) => {
                let words = source_words(&v6.octets());
                let bit = match layer {
                    Layer::Tries => summary_bit_v6(self.seed, &words),
                    Layer::Table => table_bit_v6(self.seed, &words),
                };
                (true, bit)
            }
        };
        let (word, mask) = summary_word_bit(bit);
        let set = self
            .word(layer.bitmap(generation, is_v6) + word)?
            .load(Ordering::Relaxed)
            & mask
            != 0;
        Ok((set, is_v6))
    }

    /// Whether `generation` marks `addr` for the tries: its /24's or /40's
    /// bit, or its family's wide word (a source the program would look up
    /// in the trie).
    pub fn marks(&self, generation: u32, addr: IpAddr) -> anyhow::Result<bool> {
        let (set, is_v6) = self.bit_set(Layer::Tries, generation, addr)?;
        Ok(set
            || self
                .word(summary_wide(generation, is_v6))?
                .load(Ordering::Relaxed)
                != 0)
    }

    /// Whether `generation` marks `addr` for the host table: its /24's or
    /// /48's bit (a source whose probes the program would make).
    pub fn marks_table(&self, generation: u32, addr: IpAddr) -> anyhow::Result<bool> {
        Ok(self.bit_set(Layer::Table, generation, addr)?.0)
    }

    /// The host table's length mask of `addr`'s region (see
    /// `filter_common::summary`): bit `i` for the family's shortest table
    /// length plus `i`.
    pub fn table_lengths(&self, addr: IpAddr) -> anyhow::Result<u32> {
        let (index, shift) = match addr {
            IpAddr::V4(v4) => table_lengths_word(
                table_region_v4(&source_words(&host_key_v4(v4.octets()))),
                false,
            ),
            IpAddr::V6(v6) => {
                let len = u32::from(TABLE_SUMMARY_PREFIX_V6);
                let words = masked_words(&source_words(&v6.octets()), len);
                table_lengths_word(table_region_v6(host_hash(self.seed, len, &words)), true)
            }
        };
        #[expect(clippy::cast_possible_truncation, reason = "one u32 mask of the word")]
        Ok((self.word(index)?.load(Ordering::Relaxed) >> shift) as u32)
    }

    /// Whether `generation` lacks a mark that `needed` has: an entry of the
    /// tries or the table whose sources the program would not look up
    /// (only a writer that skipped its marks, or maps made apart from their
    /// summary, leave one). A family whose wide word is set lacks nothing
    /// in its tries' bitmap.
    pub fn lacks(&self, generation: u32, needed: &Needed) -> anyhow::Result<bool> {
        for (index, &want) in needed.lengths.iter().enumerate() {
            if want == 0 {
                continue;
            }
            #[expect(clippy::cast_possible_truncation, reason = "fewer than 2^22 regions")]
            let (value, shift) = length_word(index as u32);
            let mask = u64::from(want) << shift;
            if self.word(value)?.load(Ordering::Relaxed) & mask != mask {
                return Ok(true);
            }
        }
        for is_v6 in [false, true] {
            let wide = self
                .word(summary_wide(generation, is_v6))?
                .load(Ordering::Relaxed)
                != 0;
            if !wide && is_v6 && needed.marks.wide_v6 {
                return Ok(true);
            }
            let layers: &[Layer] = if wide {
                &[Layer::Table]
            } else {
                &[Layer::Tries, Layer::Table]
            };
            for &layer in layers {
                let base = layer.bitmap(generation, is_v6);
                let own = layer.needed_index(is_v6);
                for word in 0..SUMMARY_WORDS {
                    let want = needed.bitmaps[own + word as usize];
                    if want != 0 && self.word(base + word)?.load(Ordering::Relaxed) & want != want {
                        return Ok(true);
                    }
                }
            }
        }
        Ok(false)
    }

    /// How much of `generation` is marked.
    pub fn in_use(&self, generation: u32) -> anyhow::Result<SummaryUse> {
        let bits = |layer: Layer, is_v6| -> anyhow::Result<u64> {
            let base = layer.bitmap(generation, is_v6);
            let mut set = 0;
            for word in 0..SUMMARY_WORDS {
                set += u64::from(self.word(base + word)?.load(Ordering::Relaxed).count_ones());
            }
            Ok(set)
        };
        let wide = |is_v6| -> anyhow::Result<bool> {
            Ok(self
                .word(summary_wide(generation, is_v6))?
                .load(Ordering::Relaxed)
                != 0)
        };
        Ok(SummaryUse {
            bits_v4: bits(Layer::Tries, false)?,
            bits_v6: bits(Layer::Tries, true)?,
            wide_v4: wide(false)?,
            wide_v6: wide(true)?,
            table_v4: bits(Layer::Table, false)?,
            table_v6: bits(Layer::Table, true)?,
        })
    }

    /// Clears `generation` (not the one in use).
    fn clear(&self, generation: u32) -> anyhow::Result<()> {
        for (layer, is_v6) in [
            (Layer::Tries, false),
            (Layer::Tries, true),
            (Layer::Table, false),
            (Layer::Table, true),
        ] {
            let base = layer.bitmap(generation, is_v6);
            for word in 0..SUMMARY_WORDS {
                self.word(base + word)?.store(0, Ordering::Relaxed);
            }
        }
        for is_v6 in [false, true] {
            self.word(summary_wide(generation, is_v6))?
                .store(0, Ordering::Relaxed);
        }
        fence(Ordering::SeqCst);
        Ok(())
    }
}

impl Filter {
    /// `BLOCK_SUMMARY`, mapped once per handle.
    pub fn summary(&self) -> anyhow::Result<&Summary> {
        if let Some(summary) = self.summary.get() {
            return Ok(summary);
        }
        let summary = Summary::open(self)?;
        Ok(self.summary.get_or_init(|| summary))
    }

    /// Rebuilds the generation of `BLOCK_SUMMARY` not in use from a walk of
    /// the blocklist tries and the host table, then switches the program to it, and waits until
    /// no packet still reads the old one (the next rebuild clears it). Needs
    /// the edit lock: no other process writes the tries meanwhile, and the
    /// program's automatic blocks mark both generations after their insert
    /// (a mark cleared here belongs to an entry the walk, which begins after
    /// the clearing, finds). Returns what the new generation marks.
    pub fn rebuild_summary(&self) -> anyhow::Result<SummaryUse> {
        debug_assert!(self.is_editing(), "a summary rebuild needs the edit lock");
        let summary = self.summary()?;
        let next = (self.config()?.summary_generation & 1) ^ 1;
        // No program may still read `next` from before the last switch
        // (a rebuilder that died before its wait after it leaves that open).
        wait_for_running_programs()
            .context("waiting for running programs before rebuilding the blocklist summary")?;
        summary.clear(next)?;
        let entries = self
            .trie_entries_raw(Tries::Block)
            .context("walking the blocklist tries to rebuild their summary")?;
        summary.mark_generations(Layer::Tries, entries.iter().map(|(c, _)| c), &[next])?;
        let in_table = self
            .host_table()?
            .entries()
            .context("walking the host table to rebuild its summary")?;
        summary.mark_generations(Layer::Table, in_table.iter().map(|(c, _)| c), &[next])?;
        let table_cidrs: Vec<Cidr> = in_table.iter().map(|(c, _)| *c).collect();
        summary.rewrite_lengths(&needed(&[], &table_cidrs, summary.seed).lengths)?;
        self.update_config(|c| {
            c.summary_generation = next;
            Ok(())
        })?;
        wait_for_running_programs()
            .context("waiting for running programs after switching the blocklist summary")?;
        summary.in_use(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bits `cidr` marks, in order.
    fn bits(cidr: &str) -> Option<Vec<u32>> {
        let cidr: Cidr = cidr.parse().expect("a prefix");
        let mut out = Vec::new();
        let marked = for_each_mark(&cidr, 7, &mut |word, mask| {
            out.extend(
                (0..64)
                    .filter(|b| mask & (1 << b) != 0)
                    .map(|b| word * 64 + b),
            );
        });
        marked.then_some(out)
    }

    #[test]
    fn an_ipv4_prefix_marks_each_of_its_slash_24s() {
        assert_eq!(bits("203.0.113.7/32"), Some(vec![0x00cb_0071]));
        assert_eq!(bits("203.0.113.0/25"), Some(vec![0x00cb_0071]));
        assert_eq!(
            bits("203.0.112.0/22"),
            Some((0x00cb_0070..0x00cb_0074).collect())
        );
        assert_eq!(
            bits("203.0.64.0/18"),
            Some((0x00cb_0040..0x00cb_0080).collect())
        );
        assert_eq!(
            bits("203.0.0.0/17"),
            Some((0x00cb_0000..0x00cb_0080).collect())
        );
        assert_eq!(bits("0.0.0.0/0").map(|b| b.len()), Some(1 << 24));
    }

    #[test]
    fn an_ipv6_prefix_marks_the_hash_of_each_of_its_slash_40s() {
        let one = bits("2001:db8:ab00::/40").expect("marked");
        assert_eq!(one.len(), 1);
        assert_eq!(bits("2001:db8:ab00:1::5/128"), Some(one.clone()));
        let wider = bits("2001:db8::/32").expect("marked");
        assert_eq!(wider.len(), 256);
        assert!(wider.contains(&one[0]));
        assert_eq!(bits("2001:d00::/24").map(|b| b.len()), Some(1 << 16));
        assert_eq!(bits("2001::/23"), None, "wider than /24: the wide word");
    }

    #[test]
    fn stale_marks_are_rebuilt_once_they_outnumber_the_needed_ones() {
        let needed = SummaryUse {
            bits_v4: 3000,
            bits_v6: 2000,
            ..SummaryUse::default()
        };
        let live = |bits, wide_v6| SummaryUse {
            bits_v4: bits,
            wide_v6,
            ..SummaryUse::default()
        };
        assert!(!live(10_000, false).worth_rebuilding(&needed));
        assert!(live(10_001, false).worth_rebuilding(&needed));
        assert!(live(5000, true).worth_rebuilding(&needed));
        assert!(!live(1024, false).worth_rebuilding(&SummaryUse::default()));
        assert!(live(1025, false).worth_rebuilding(&SummaryUse::default()));
    }

    #[test]
    fn the_host_tables_stale_marks_count_apart_from_the_tries() {
        let needed = SummaryUse {
            bits_v4: 5000,
            table_v4: 3000,
            table_v6: 2000,
            ..SummaryUse::default()
        };
        let live = |tries, table| SummaryUse {
            bits_v4: tries,
            table_v4: table,
            ..SummaryUse::default()
        };
        assert!(!live(5000, 10_000).worth_rebuilding(&needed));
        assert!(live(5000, 10_001).worth_rebuilding(&needed));
        // The tries' needed bits do not excuse the table's stale ones.
        assert!(live(0, 10_001).worth_rebuilding(&needed));
        assert!(!live(10_000, 5000).worth_rebuilding(&needed));
    }

    #[test]
    fn needed_marks_the_tries_and_the_table_apart() {
        let tries: Vec<Cidr> = ["198.51.100.0/25", "2001:db8::/32"]
            .iter()
            .map(|c| c.parse().expect("a prefix"))
            .collect();
        let table: Vec<Cidr> = ["203.0.113.7/32", "203.0.113.0/24", "2001:db8:1::/48"]
            .iter()
            .map(|c| c.parse().expect("a prefix"))
            .collect();
        let needed = needed(&tries, &table, 7);
        assert_eq!(
            needed.marks,
            SummaryUse {
                bits_v4: 1,
                bits_v6: 256,
                table_v4: 1,
                table_v6: 1,
                ..SummaryUse::default()
            }
        );
    }
}
