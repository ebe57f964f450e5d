//! `BLOCK_HOSTS`: blocked hosts (IPv4 /32, IPv6 /128) and prefixes of the
//! table's lengths (IPv4 /16 to /31, IPv6 /40 to /64) beside the blocklist
//! tries, a 4-way set-associative array of [`HostSlot`]s (see
//! `filter_common::lists`), and `BLOCK_HOST_SETS`, one bit per set in use.
//! Both are memory-mapped (`BPF_F_MMAPABLE`): user space, their only writer
//! (under the edit lock), reads and writes slots in place, without a
//! syscall per slot, and orders its stores so that the program never
//! matches a half-written slot.
//!
//! The order of the stores (the key's mark in `BLOCK_SUMMARY`, address and
//! entry, the set's bit, the used bit) is what the program sees on x86-64, whose stores stay in order; on a
//! weakly ordered CPU a host just added may miss, or one just removed match,
//! for a moment (the program's loads have no acquire order).
//!
//! Here and in `lists`, "host" is short for any entry of the table: its
//! prefixes are placed, found, overflowed and removed exactly as hosts are.
//!
//! A host's block lives in one place: a slot of its set, or the trie when
//! its set was full (the set is then marked [`HOST_OVERFLOWED`], and its
//! new hosts go to the trie too, until the controller's sweep finds that
//! the trie holds none of them). Automatic blocks are the program's and
//! stay in the tries.

use std::{
    net::{IpAddr, Ipv6Addr},
    sync::atomic::{AtomicU64, Ordering, fence},
};

use anyhow::ensure;
use filter_common::{
    HOST_OVERFLOWED, HOST_USED, HOST_WAYS, HostSlot, Ipv6Bytes, ListEntry, host_key_v4, host_set,
    host_set_bit, host_set_words, in_host_table, maps, source_words,
};

use super::{Filter, mapping::Mapping};
use crate::spec::cidr::Cidr;

/// A key of `BLOCK_HOSTS`: a host or a prefix of the table's lengths.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TableKey {
    /// The address, IPv4-mapped for IPv4, host bits cleared.
    pub addr: Ipv6Bytes,
    /// The prefix length in its family (32 for an IPv4 host).
    pub prefix_len: u8,
    pub is_v6: bool,
}

impl TableKey {
    /// The key of IPv4 host `addr`.
    #[must_use]
    pub const fn v4_host(addr: [u8; 4]) -> Self {
        Self {
            addr: host_key_v4(addr),
            prefix_len: 32,
            is_v6: false,
        }
    }

    /// Whether the key is a host's (IPv4 /32, IPv6 /128).
    #[must_use]
    pub const fn is_host(&self) -> bool {
        self.prefix_len == if self.is_v6 { 128 } else { 32 }
    }

    /// Bits of the IPv4-mapped address the prefix covers.
    #[must_use]
    pub fn mapped_len(&self) -> u32 {
        u32::from(self.prefix_len) + if self.is_v6 { 0 } else { 96 }
    }

    /// The prefix the key names.
    #[must_use]
    pub fn cidr(&self) -> Cidr {
        let ip = Ipv6Addr::from(self.addr);
        match ip.to_ipv4_mapped() {
            Some(v4) if !self.is_v6 => Cidr::new(IpAddr::V4(v4), self.prefix_len),
            _ => Cidr::new(IpAddr::V6(ip), self.prefix_len),
        }
    }

    /// The key of the entry in `slot`.
    fn of_slot(slot: &HostSlot) -> Self {
        // The table's IPv4 lengths are none of its IPv6 ones.
        let is_v6 = !in_host_table(false, slot.prefix_len);
        Self {
            addr: slot.addr,
            prefix_len: slot.prefix_len,
            is_v6,
        }
    }
}

/// The `BLOCK_HOSTS` key of `cidr` if the table holds prefixes like it: a
/// host (IPv4 /32, IPv6 /128), an IPv4 /16 to /31, an IPv6 /40 to /64.
#[must_use]
pub fn table_key(cidr: &Cidr) -> Option<TableKey> {
    match *cidr {
        Cidr::V4 { addr, prefix } if in_host_table(false, prefix) => Some(TableKey {
            addr: host_key_v4(addr),
            prefix_len: prefix,
            is_v6: false,
        }),
        Cidr::V6 { addr, prefix } if in_host_table(true, prefix) => Some(TableKey {
            addr,
            prefix_len: prefix,
            is_v6: true,
        }),
        _ => None,
    }
}

/// Where [`HostTable::place_in`] put a host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placed {
    /// Its slot held it already: the entry was replaced.
    Updated,
    /// A free slot of its set took it.
    New,
    /// Its set is full or has overflowed: it goes to the trie.
    Trie,
}

/// The table and its bitmap of sets in use, mapped, with the seed and mask
/// the program uses.
pub struct HostTable {
    slots: Mapping<HostSlot>,
    sets: Mapping<u64>,
    seed: u64,
    mask: u32,
}

impl HostTable {
    pub fn open(filter: &Filter) -> anyhow::Result<Self> {
        let config = filter.config()?;
        let slots = Mapping::open(filter, maps::BLOCK_HOSTS)?;
        let sets = Mapping::open(filter, maps::BLOCK_HOST_SETS)?;
        ensure!(
            slots.len.is_power_of_two()
                && config.host_mask == slots.len - 1
                && sets.len == host_set_words(slots.len),
            "{} ({} slots, {} words of sets) does not match CONFIG's mask {}: run `filter-ctl detach` and start the filter again",
            maps::BLOCK_HOSTS,
            slots.len,
            sets.len,
            config.host_mask
        );
        Ok(Self {
            slots,
            sets,
            seed: config.host_seed,
            mask: config.host_mask,
        })
    }

    /// The word of the bitmap that holds `first`'s set's bit, and the bit.
    fn set_word(&self, first: u32) -> anyhow::Result<(&AtomicU64, u64)> {
        let (word, bit) = host_set_bit(first);
        let ptr = self.sets.ptr(word)?;
        // SAFETY: an aligned u64 of the mapping, shared with the program,
        // which only reads it; this process writes it under the edit lock.
        Ok((unsafe { AtomicU64::from_ptr(ptr) }, bit))
    }

    /// The first slot of `key`'s set.
    #[must_use]
    pub fn set_of(&self, key: &TableKey) -> u32 {
        host_set(
            self.seed,
            self.mask,
            key.mapped_len(),
            &source_words(&key.addr),
        )
    }

    /// Maps the whole table and its bitmap of used sets: before walking
    /// it, or placing many hosts (one mapping instead of a window per
    /// host, and no lock to find it).
    pub fn map_whole(&self) -> anyhow::Result<()> {
        self.slots.map_whole()?;
        self.sets.map_whole()
    }

    /// A copy of slot `index`.
    fn read(&self, index: u32) -> anyhow::Result<HostSlot> {
        let ptr = self.slots.ptr(index)?;
        // SAFETY: a valid, aligned slot of the mapping; plain data.
        Ok(unsafe { ptr.read_volatile() })
    }

    fn write_state(&self, index: u32, state: u8) -> anyhow::Result<()> {
        let ptr = self.slots.ptr(index)?;
        // SAFETY: as `read`; a one-byte store, which the program reads
        // before the address (x86 keeps stores in order; the fence keeps
        // the compiler from moving the earlier stores after it).
        unsafe {
            fence(Ordering::Release);
            (&raw mut (*ptr).state).write_volatile(state);
        }
        Ok(())
    }

    /// Writes `entry`'s fields into slot `index`, not its state.
    fn write_entry(&self, index: u32, entry: ListEntry) -> anyhow::Result<()> {
        let ptr = self.slots.ptr(index)?;
        // SAFETY: as `read`. The expiry is one aligned 8-byte store, so a
        // packet sees the old or the new one, never a mix; the program
        // reads nothing else of the entry.
        unsafe {
            (&raw mut (*ptr).expires_at_ns).write_volatile(entry.expires_at_ns);
            (&raw mut (*ptr).origin).write_volatile(entry.origin);
            (&raw mut (*ptr).prefix_len).write_volatile(entry.prefix_len);
            (&raw mut (*ptr).rule).write_volatile(entry.rule);
            (&raw mut (*ptr).over_limit).write_volatile(entry.over_limit);
        }
        Ok(())
    }

    /// The slot of `key`'s set that holds it.
    fn slot_of(&self, key: &TableKey) -> anyhow::Result<Option<u32>> {
        self.slot_in(self.set_of(key), key)
    }

    /// The slot of the set starting at `first` (`key`'s) that holds `key`.
    fn slot_in(&self, first: u32, key: &TableKey) -> anyhow::Result<Option<u32>> {
        for index in first..first + HOST_WAYS {
            let slot = self.read(index)?;
            if slot.state & HOST_USED != 0
                && slot.addr == key.addr
                && slot.prefix_len == key.prefix_len
            {
                return Ok(Some(index));
            }
        }
        Ok(None)
    }

    /// The entry stored for `key`, if the table holds it.
    pub fn find(&self, key: &TableKey) -> anyhow::Result<Option<ListEntry>> {
        match self.slot_of(key)? {
            Some(index) => Ok(Some(self.read(index)?.entry())),
            None => Ok(None),
        }
    }

    /// [`Self::place_in`] without marking the table's summary: the program
    /// does not probe for the entry until a rebuild of `BLOCK_SUMMARY` marks
    /// it (what a test of the sweep's repair needs; the controller always
    /// marks).
    #[doc(hidden)]
    pub fn place_unmarked(&self, key: &TableKey, entry: ListEntry) -> anyhow::Result<Placed> {
        self.place_in(self.set_of(key), key, entry, || Ok(()))
    }

    /// Puts `entry` for `key` into the slot holding it, else into a free
    /// slot of its set, unless the set has overflowed: a host missing from
    /// such a set may be in the trie, so it goes there (no lookup needed,
    /// never two places). A full set is marked overflowed. `first` is the
    /// key's set ([`Self::set_of`]); `mark` marks the key in the table's
    /// summary (`Summary::mark_table_entry`), called before a new entry
    /// becomes visible to the program. The caller has raised the program's
    /// counts for a new entry (`Config::block_hosts`, and
    /// `Config::table_prefixes` for a prefix).
    pub fn place_in(
        &self,
        first: u32,
        key: &TableKey,
        entry: ListEntry,
        mark: impl FnOnce() -> anyhow::Result<()>,
    ) -> anyhow::Result<Placed> {
        debug_assert_eq!(first, self.set_of(key), "the key's own set");
        if let Some(index) = self.slot_in(first, key)? {
            let entry = ListEntry {
                prefix_len: key.prefix_len,
                ..entry
            };
            self.write_entry(index, entry)?;
            return Ok(Placed::Updated);
        }
        let first_state = self.read(first)?.state;
        if first_state & HOST_OVERFLOWED != 0 {
            return Ok(Placed::Trie);
        }
        let mut free = None;
        for index in first..first + HOST_WAYS {
            if self.read(index)?.state & HOST_USED == 0 {
                free = Some(index);
                break;
            }
        }
        let Some(free) = free else {
            self.write_state(first, first_state | HOST_OVERFLOWED)?;
            return Ok(Placed::Trie);
        };
        // The summary's mark, address and entry first, then the set's bit,
        // the used bit last.
        mark()?;
        let state = self.read(free)?.state;
        let ptr = self.slots.ptr(free)?;
        // SAFETY: as `read`; the slot is unused, so the program ignores it.
        unsafe { (&raw mut (*ptr).addr).write_volatile(key.addr) };
        // The prefix length is part of the key: the entry's must match.
        self.write_entry(
            free,
            ListEntry {
                prefix_len: key.prefix_len,
                ..entry
            },
        )?;
        let (word, bit) = self.set_word(first)?;
        word.fetch_or(bit, Ordering::SeqCst);
        self.write_state(free, state | HOST_USED)?;
        Ok(Placed::New)
    }

    /// Asks the CPU to load the set starting at `first` into its caches (two
    /// cache lines), so that placing many keys in a row does not wait on
    /// each set's memory in turn: a load's sets are random in 32 MiB.
    pub fn prefetch(&self, first: u32) {
        #[cfg(target_arch = "x86_64")]
        if let Ok(ptr) = self.slots.ptr(first) {
            use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
            // SAFETY: a hint only, never a fault; `ptr` is the set's first
            // slot and the set's four slots (128 bytes) are in the mapping.
            unsafe {
                _mm_prefetch::<_MM_HINT_T0>(ptr.cast::<i8>());
                _mm_prefetch::<_MM_HINT_T0>(ptr.cast::<i8>().add(64));
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = first;
    }

    /// The first slots of the sets marked overflowed.
    pub fn overflowed_sets(&self) -> anyhow::Result<Vec<u32>> {
        self.map_whole()?;
        let mut out = Vec::new();
        for first in (0..self.slots.len).step_by(HOST_WAYS as usize) {
            if self.read(first)?.state & HOST_OVERFLOWED != 0 {
                out.push(first);
            }
        }
        Ok(out)
    }

    /// Clears the overflow mark of the set starting at `first`: its new
    /// hosts may take free slots again. Only when the trie holds none of
    /// its hosts (the caller knows).
    pub fn clear_overflow(&self, first: u32) -> anyhow::Result<()> {
        let state = self.read(first)?.state;
        self.write_state(first, state & !HOST_OVERFLOWED)
    }

    /// Frees `key`'s slot. Whether the table held it.
    pub fn vacate(&self, key: &TableKey) -> anyhow::Result<bool> {
        let Some(index) = self.slot_of(key)? else {
            return Ok(false);
        };
        let state = self.read(index)?.state;
        self.write_state(index, state & !HOST_USED)?;
        let first = self.set_of(key);
        let mut empty = true;
        for i in first..first + HOST_WAYS {
            empty &= self.read(i)?.state & HOST_USED == 0;
        }
        if empty {
            let (word, bit) = self.set_word(first)?;
            word.fetch_and(!bit, Ordering::SeqCst);
        }
        Ok(true)
    }

    /// Every used slot's prefix and entry.
    pub fn entries(&self) -> anyhow::Result<Vec<(Cidr, ListEntry)>> {
        self.map_whole()?;
        let mut out = Vec::new();
        for index in 0..self.slots.len {
            let slot = self.read(index)?;
            if slot.state & HOST_USED != 0 {
                out.push((TableKey::of_slot(&slot).cidr(), slot.entry()));
            }
        }
        Ok(out)
    }
}
