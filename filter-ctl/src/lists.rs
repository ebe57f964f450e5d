//! The allow and block lists: one hash map per family keyed by prefix, and
//! the hint arrays that tell the program which prefix lengths to probe near
//! an address (see `filter_common::PrefixHint4`).
//!
//! Hint bits are set before entries are added (an entry must never be
//! invisible) and cleared only by [`rebuild_hints`], from a scan of the lists;
//! a stale bit only costs the program one probe.

use std::{collections::BTreeMap, hash::Hash, io};

use anyhow::Context as _;
use aya::{
    Pod,
    maps::{Array, HashMap, MapData},
};
use filter_common::{
    Config, HINT_ENTRIES, ListEntry, PrefixHint4, PrefixHint6, PrefixKey4, PrefixKey6, maps,
};

use crate::{
    batch::{self, BatchError},
    cidr::Cidr,
    filter::{Filter, ListKind},
};

/// A key of one family's list map.
pub trait ListKey: Pod + Eq + Hash + Ord {
    fn of(cidr: &Cidr) -> Option<Self>;
    fn cidr(&self) -> Cidr;
}

impl ListKey for PrefixKey4 {
    fn of(cidr: &Cidr) -> Option<Self> {
        match *cidr {
            Cidr::V4 { addr, prefix } => Some(Self {
                prefix_len: u32::from(prefix),
                addr,
            }),
            Cidr::V6 { .. } => None,
        }
    }

    fn cidr(&self) -> Cidr {
        Cidr::new(
            self.addr.into(),
            u8::try_from(self.prefix_len.min(32)).unwrap_or(32),
        )
    }
}

impl ListKey for PrefixKey6 {
    fn of(cidr: &Cidr) -> Option<Self> {
        match *cidr {
            Cidr::V6 { addr, prefix } => Some(Self {
                prefix_len: u32::from(prefix),
                addr,
            }),
            Cidr::V4 { .. } => None,
        }
    }

    fn cidr(&self) -> Cidr {
        Cidr::new(
            self.addr.into(),
            u8::try_from(self.prefix_len.min(128)).unwrap_or(128),
        )
    }
}

/// Hint entries a prefix overlaps.
#[must_use]
pub fn hint_slots(cidr: &Cidr) -> std::ops::Range<u32> {
    // The hint index is 16 bits of the address: bits 0..16 for IPv4, 16..32 for IPv6.
    let (index, first_bit, prefix) = match *cidr {
        Cidr::V4 { addr, prefix } => (filter_common::hint_index_v4(&addr), 0, u32::from(prefix)),
        Cidr::V6 { addr, prefix } => (filter_common::hint_index_v6(&addr), 16, u32::from(prefix)),
    };
    let fixed = prefix.saturating_sub(first_bit).min(16);
    let span = 1u32 << (16 - fixed);
    let start = if fixed == 0 { 0 } else { index & !(span - 1) };
    start..start + span
}

/// Sets `cidr`'s length bit in a hint bitmap of 1 (IPv4) or 3 (IPv6) words.
fn set_bit(words: &mut [u64], prefix: u8) {
    let prefix = usize::from(prefix);
    if let Some(word) = words.get_mut(prefix / 64) {
        *word |= 1 << (prefix % 64);
    }
}

/// Makes the program probe the lengths of `cidrs` near their addresses.
pub fn add_hints(filter: &Filter, kind: ListKind, cidrs: &[Cidr]) -> anyhow::Result<()> {
    let mut v4: BTreeMap<u32, u64> = BTreeMap::new();
    let mut v6: BTreeMap<u32, [u64; 3]> = BTreeMap::new();
    for cidr in cidrs {
        for slot in hint_slots(cidr) {
            match cidr {
                Cidr::V4 { .. } => set_bit(
                    std::slice::from_mut(v4.entry(slot).or_default()),
                    cidr.prefix(),
                ),
                Cidr::V6 { .. } => set_bit(v6.entry(slot).or_default(), cidr.prefix()),
            }
        }
    }
    let mut hint4: Array<MapData, PrefixHint4> = open_array(filter, maps::HINT_V4)?;
    let mut changed4 = Vec::new();
    for (slot, bits) in v4 {
        let mut hint = hint4.get(&slot, 0).context("reading HINT_V4")?;
        let word = match kind {
            ListKind::Allow => &mut hint.allow,
            ListKind::Block => &mut hint.block,
        };
        if *word & bits != bits {
            *word |= bits;
            changed4.push((slot, hint));
        }
    }
    write_hints(&mut hint4, maps::HINT_V4, filter, &changed4)?;
    let mut hint6: Array<MapData, PrefixHint6> = open_array(filter, maps::HINT_V6)?;
    let mut changed6 = Vec::new();
    for (slot, bits) in v6 {
        let mut hint = hint6.get(&slot, 0).context("reading HINT_V6")?;
        let words = match kind {
            ListKind::Allow => &mut hint.allow,
            ListKind::Block => &mut hint.block,
        };
        let before = *words;
        for (word, add) in words.iter_mut().zip(bits) {
            *word |= add;
        }
        if *words != before {
            changed6.push((slot, hint));
        }
    }
    write_hints(&mut hint6, maps::HINT_V6, filter, &changed6)
}

fn open_array<V: Pod>(filter: &Filter, name: &str) -> anyhow::Result<Array<MapData, V>> {
    Array::try_from(filter.map(name)?).with_context(|| format!("{name} is not the expected array"))
}

/// Writes changed hint entries: a few one by one, many in batches.
fn write_hints<V: Pod>(
    array: &mut Array<MapData, V>,
    name: &str,
    filter: &Filter,
    changed: &[(u32, V)],
) -> anyhow::Result<()> {
    if changed.len() < 64 {
        for (slot, hint) in changed {
            array
                .set(*slot, hint, 0)
                .with_context(|| format!("writing {name}"))?;
        }
        return Ok(());
    }
    let data =
        MapData::from_pin(filter.pins().map(name)).with_context(|| format!("opening {name}"))?;
    let slots: Vec<u32> = changed.iter().map(|(slot, _)| *slot).collect();
    let hints: Vec<V> = changed.iter().map(|(_, hint)| *hint).collect();
    batch::update(&data, &slots, &hints, 0)
        .map_err(|e| e.error)
        .with_context(|| format!("writing {name}"))
}

/// Recomputes every hint entry from the lists, clearing bits no entry needs
/// any more. Bits for the automatic-block prefix lengths are kept where set:
/// the program may have added such an entry since the scan.
pub fn rebuild_hints(filter: &Filter) -> anyhow::Result<()> {
    let config = filter.config()?;
    let mut v4 = vec![PrefixHint4::default(); HINT_ENTRIES as usize];
    let mut v6 = vec![PrefixHint6::default(); HINT_ENTRIES as usize];
    for kind in [ListKind::Allow, ListKind::Block] {
        for (cidr, _) in filter.list_entries_raw(kind)? {
            for slot in hint_slots(&cidr) {
                let slot = slot as usize;
                match (cidr, kind) {
                    (Cidr::V4 { .. }, ListKind::Allow) => {
                        set_bit(std::slice::from_mut(&mut v4[slot].allow), cidr.prefix())
                    }
                    (Cidr::V4 { .. }, ListKind::Block) => {
                        set_bit(std::slice::from_mut(&mut v4[slot].block), cidr.prefix())
                    }
                    (Cidr::V6 { .. }, ListKind::Allow) => {
                        set_bit(&mut v6[slot].allow, cidr.prefix())
                    }
                    (Cidr::V6 { .. }, ListKind::Block) => {
                        set_bit(&mut v6[slot].block, cidr.prefix())
                    }
                }
            }
        }
    }
    let (auto4, auto6) = autoblock_bits(&config);
    let mut hint4: Array<MapData, PrefixHint4> = open_array(filter, maps::HINT_V4)?;
    let mut changed4 = Vec::new();
    for (slot, wanted) in v4.iter_mut().enumerate() {
        let slot = u32::try_from(slot).expect("65536 hint entries");
        let current = hint4.get(&slot, 0).context("reading HINT_V4")?;
        wanted.block |= current.block & auto4;
        if *wanted != current {
            changed4.push((slot, *wanted));
        }
    }
    write_hints(&mut hint4, maps::HINT_V4, filter, &changed4)?;
    let mut hint6: Array<MapData, PrefixHint6> = open_array(filter, maps::HINT_V6)?;
    let mut changed6 = Vec::new();
    for (slot, wanted) in v6.iter_mut().enumerate() {
        let slot = u32::try_from(slot).expect("65536 hint entries");
        let current = hint6.get(&slot, 0).context("reading HINT_V6")?;
        for ((word, kept), auto) in wanted.block.iter_mut().zip(current.block).zip(auto6) {
            *word |= kept & auto;
        }
        if *wanted != current {
            changed6.push((slot, *wanted));
        }
    }
    write_hints(&mut hint6, maps::HINT_V6, filter, &changed6)
}

/// The hint bits of the automatic-block prefix lengths.
fn autoblock_bits(config: &Config) -> (u64, [u64; 3]) {
    let mut v6 = [0u64; 3];
    set_bit(
        &mut v6,
        u8::try_from(config.ipv6_source_prefix.min(128)).unwrap_or(128),
    );
    (1u64 << config.ipv4_source_prefix.min(32), v6)
}

/// Sets the hint bit of an automatic block the program reported. The program
/// set it too; this closes the window in which a concurrent hint write from
/// user space could have cleared it. A superfluous bit only costs a probe.
pub fn reassert_autoblock_hint(filter: &Filter, prefix: &Cidr) -> anyhow::Result<()> {
    add_hints(filter, ListKind::Block, std::slice::from_ref(prefix))
}

/// Batched inserts into one family's map. Existing keys are read first, so
/// that the capacity is checked before anything changes and overwritten
/// entries can be restored by a rollback (`undo`).
pub fn insert_family<K: ListKey>(
    filter: &Filter,
    name: &str,
    entries: &[(K, ListEntry)],
    undo: &mut Vec<(K, Option<ListEntry>)>,
) -> Result<(), io::Error> {
    const CHUNK: usize = 8192;
    if entries.is_empty() {
        return Ok(());
    }
    let data = MapData::from_pin(filter.pins().map(name)).map_err(io::Error::other)?;
    let capacity = data.info().map_err(io::Error::other)?.max_entries() as usize;
    let map: HashMap<MapData, K, ListEntry> = HashMap::try_from(aya::maps::Map::HashMap(
        MapData::from_pin(filter.pins().map(name)).map_err(io::Error::other)?,
    ))
    .map_err(io::Error::other)?;
    let existing: std::collections::HashSet<K> = map
        .keys()
        .collect::<Result<_, _>>()
        .map_err(io::Error::other)?;
    let new = entries
        .iter()
        .filter(|(k, _)| !existing.contains(k))
        .count();
    if existing.len() + new > capacity {
        return Err(io::Error::from_raw_os_error(libc::ENOSPC));
    }
    let mut previous = Vec::with_capacity(entries.len());
    for (key, _) in entries {
        previous.push(if existing.contains(key) {
            Some(map.get(key, 0).map_err(io::Error::other)?)
        } else {
            None
        });
    }
    let keys: Vec<K> = entries.iter().map(|(k, _)| *k).collect();
    let values: Vec<ListEntry> = entries.iter().map(|(_, v)| *v).collect();
    let mut start = 0;
    while start < keys.len() {
        let end = (start + CHUNK).min(keys.len());
        let result = batch::update(&data, &keys[start..end], &values[start..end], 0);
        let applied = match &result {
            Ok(()) => end - start,
            Err(BatchError { applied, .. }) => *applied,
        };
        undo.extend((start..start + applied).map(|i| (keys[i], previous[i])));
        if let Err(BatchError { error, .. }) = result {
            return Err(error);
        }
        start = end;
    }
    Ok(())
}

/// Undoes inserts in reverse order: restores overwritten entries, removes new ones.
pub fn rollback<K: ListKey>(
    filter: &Filter,
    name: &str,
    undo: &[(K, Option<ListEntry>)],
) -> anyhow::Result<()> {
    let mut map = open_list::<K>(filter, name)?;
    for (key, previous) in undo.iter().rev() {
        match previous {
            Some(entry) => map.insert(key, entry, 0),
            None => map.remove(key),
        }
        .context("rolling back a partly applied list edit")?;
    }
    Ok(())
}

/// One family's list map.
pub fn open_list<K: ListKey>(
    filter: &Filter,
    name: &str,
) -> anyhow::Result<HashMap<MapData, K, ListEntry>> {
    HashMap::try_from(filter.map(name)?)
        .with_context(|| format!("{name} is not the expected hash map"))
}

/// Every entry of one family's map.
pub fn entries<K: ListKey>(filter: &Filter, name: &str) -> anyhow::Result<Vec<(Cidr, ListEntry)>> {
    let map = open_list::<K>(filter, name)?;
    map.iter()
        .map(|item| {
            item.map(|(k, v)| (k.cidr(), v))
                .with_context(|| format!("reading {name}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots(text: &str) -> std::ops::Range<u32> {
        hint_slots(&text.parse().unwrap())
    }

    #[test]
    fn hint_slots_cover_the_prefix() {
        assert_eq!(slots("198.18.0.1"), 0xc612..0xc613);
        assert_eq!(slots("198.18.0.0/16"), 0xc612..0xc613);
        assert_eq!(slots("198.18.0.0/15"), 0xc612..0xc614);
        assert_eq!(slots("198.0.0.0/8"), 0xc600..0xc700);
        assert_eq!(slots("0.0.0.0/0"), 0..0x10000);
        assert_eq!(slots("2001:db8::1"), 0x0db8..0x0db9);
        assert_eq!(slots("2001:db8::/32"), 0x0db8..0x0db9);
        assert_eq!(slots("2001:db8::/29"), 0x0db8..0x0dc0);
        assert_eq!(slots("2001::/16"), 0..0x10000);
        assert_eq!(slots("::/0"), 0..0x10000);
    }
}
