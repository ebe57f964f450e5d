//! `BLOCK_HOSTS`: blocked hosts (IPv4 /32, IPv6 /128) beside the blocklist
//! tries, a 4-way set-associative array of [`HostSlot`]s (see
//! `filter_common::lists`), and `BLOCK_HOST_SETS`, one bit per set in use.
//! Both are memory-mapped
//! (`BPF_F_MMAPABLE`): user space, its only writer (under the edit lock),
//! reads and writes slots in place, without a syscall per slot, and orders
//! its stores so that the program never matches a half-written slot.
//!
//! A host's block lives in one place: a slot of its set, or the trie when
//! its set was full (the set is then marked [`HOST_OVERFLOWED`], so that a
//! later edit of one of its hosts looks in the trie too). Automatic blocks
//! are the program's and stay in the tries.

use std::{
    net::{IpAddr, Ipv6Addr},
    os::fd::{AsFd as _, AsRawFd as _},
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering, fence},
};

use anyhow::{Context as _, ensure};
use aya::maps::MapData;
use filter_common::{
    HOST_OVERFLOWED, HOST_USED, HOST_WAYS, HostSlot, Ipv6Bytes, ListEntry, host_key_v4, host_set,
    host_set_bit, host_set_words, maps, source_words,
};

use super::Filter;
use crate::spec::cidr::Cidr;

/// The `BLOCK_HOSTS` key of `cidr` if it is a host (IPv4 /32, IPv6 /128).
#[must_use]
pub fn host_key(cidr: &Cidr) -> Option<Ipv6Bytes> {
    match *cidr {
        Cidr::V4 { addr, prefix: 32 } => Some(host_key_v4(addr)),
        Cidr::V6 { addr, prefix: 128 } => Some(addr),
        _ => None,
    }
}

/// The host `key` names (IPv4-mapped keys are IPv4 hosts).
fn host_cidr(key: &Ipv6Bytes) -> Cidr {
    let ip = Ipv6Addr::from(*key);
    match ip.to_ipv4_mapped() {
        Some(v4) => Cidr::new(IpAddr::V4(v4), 32),
        None => Cidr::new(IpAddr::V6(ip), 128),
    }
}

/// Where [`HostTable::place`] put a host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placed {
    /// Its slot held it already: the entry was replaced.
    Updated,
    /// A free slot of its set took it.
    New,
    /// Its set is full or has overflowed: it goes to the trie.
    Trie,
}

/// A memory-mapped array map (`BPF_F_MMAPABLE`): its values, in place.
struct Mapping<T> {
    values: NonNull<T>,
    len: u32,
    mapped_bytes: usize,
    // Keeps the map open while it is mapped.
    _data: MapData,
}

impl<T> Mapping<T> {
    fn open(filter: &Filter, name: &str) -> anyhow::Result<Self> {
        let data = filter.map_data(name)?;
        let info = data.info().with_context(|| format!("reading {name}"))?;
        let len = info.max_entries();
        ensure!(
            info.value_size() as usize == size_of::<T>() && size_of::<T>().is_multiple_of(8),
            "{name} does not match this build (value size {}): run `filter-ctl detach` and start the filter again",
            info.value_size()
        );
        // SAFETY: no arguments.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let mapped_bytes = (len as usize * size_of::<T>()).div_ceil(page) * page;
        // SAFETY: a read-write shared mapping of the map's fd at offset 0:
        // the kernel maps the array's `len` values, contiguous (their size
        // a multiple of 8: no gaps), rounded up to pages. Checked below.
        let address = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                mapped_bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                data.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if address == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("mapping {name} into memory"));
        }
        let values = NonNull::new(address.cast::<T>())
            .with_context(|| format!("mapping {name} into memory"))?;
        Ok(Self {
            values,
            len,
            mapped_bytes,
            _data: data,
        })
    }

    fn ptr(&self, index: u32) -> *mut T {
        assert!(index < self.len, "value {index} of {}", self.len);
        // SAFETY: in bounds of the mapping (checked above).
        unsafe { self.values.as_ptr().add(index as usize) }
    }
}

// SAFETY: the mapping stays valid as long as the value lives (it owns
// the map's fd and unmaps on drop); its memory is shared with the program
// and other processes anyway, and this process writes it only under the
// edit lock, from one thread at a time.
unsafe impl<T> Send for Mapping<T> {}
// SAFETY: as above.
unsafe impl<T> Sync for Mapping<T> {}

impl<T> Drop for Mapping<T> {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `open`, unmapped once.
        unsafe {
            libc::munmap(self.values.as_ptr().cast(), self.mapped_bytes);
        }
    }
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
    fn set_word(&self, first: u32) -> (&AtomicU64, u64) {
        let (word, bit) = host_set_bit(first);
        // SAFETY: an aligned u64 of the mapping, shared with the program,
        // which only reads it; this process writes it under the edit lock.
        (unsafe { AtomicU64::from_ptr(self.sets.ptr(word)) }, bit)
    }

    /// The first slot of `key`'s set.
    #[must_use]
    pub fn set_of(&self, key: &Ipv6Bytes) -> u32 {
        host_set(self.seed, self.mask, &source_words(key))
    }

    fn slot_ptr(&self, index: u32) -> *mut HostSlot {
        self.slots.ptr(index)
    }

    /// A copy of slot `index`.
    fn read(&self, index: u32) -> HostSlot {
        // SAFETY: a valid, aligned slot of the mapping; plain data.
        unsafe { self.slot_ptr(index).read_volatile() }
    }

    fn write_state(&self, index: u32, state: u32) {
        // SAFETY: as `read`; an aligned u32 store, which the program reads
        // before the address (x86 keeps stores in order; the fence keeps
        // the compiler from moving the earlier stores after it).
        unsafe {
            fence(Ordering::Release);
            (&raw mut (*self.slot_ptr(index)).state).write_volatile(state);
        }
    }

    fn write_entry(&self, index: u32, entry: ListEntry) {
        // SAFETY: as `read`. The expiry is one aligned 8-byte store, so a
        // packet sees the old or the new one, never a mix.
        unsafe { (&raw mut (*self.slot_ptr(index)).entry).write_volatile(entry) }
    }

    /// The slot of `key`'s set that holds it.
    fn slot_of(&self, key: &Ipv6Bytes) -> Option<u32> {
        let first = self.set_of(key);
        (first..first + HOST_WAYS).find(|&i| {
            let slot = self.read(i);
            slot.state & HOST_USED != 0 && slot.addr == *key
        })
    }

    /// The entry stored for `key`, if the table holds it.
    #[must_use]
    pub fn find(&self, key: &Ipv6Bytes) -> Option<ListEntry> {
        self.slot_of(key).map(|i| self.read(i).entry)
    }

    /// Puts `entry` for `key` into the slot holding it, else into a free
    /// slot of its set, unless the set has overflowed: a host missing from
    /// such a set may be in the trie, so it goes there (no lookup needed,
    /// never two places). A full set is marked overflowed. The caller has
    /// raised the program's count for a new host.
    pub fn place(&self, key: &Ipv6Bytes, entry: ListEntry) -> Placed {
        if let Some(index) = self.slot_of(key) {
            self.write_entry(index, entry);
            return Placed::Updated;
        }
        let first = self.set_of(key);
        let first_state = self.read(first).state;
        if first_state & HOST_OVERFLOWED != 0 {
            return Placed::Trie;
        }
        let Some(free) = (first..first + HOST_WAYS).find(|&i| self.read(i).state & HOST_USED == 0)
        else {
            self.write_state(first, first_state | HOST_OVERFLOWED);
            return Placed::Trie;
        };
        // Address and entry first, then the set's bit, the used bit last.
        let state = self.read(free).state;
        // SAFETY: as `read`; the slot is unused, so the program ignores it.
        unsafe { (&raw mut (*self.slot_ptr(free)).addr).write_volatile(*key) };
        self.write_entry(free, entry);
        let (word, bit) = self.set_word(first);
        word.fetch_or(bit, Ordering::SeqCst);
        self.write_state(free, state | HOST_USED);
        Placed::New
    }

    /// The first slots of the sets marked overflowed.
    #[must_use]
    pub fn overflowed_sets(&self) -> Vec<u32> {
        (0..self.slots.len)
            .step_by(HOST_WAYS as usize)
            .filter(|&first| self.read(first).state & HOST_OVERFLOWED != 0)
            .collect()
    }

    /// Clears the overflow mark of the set starting at `first`: its new
    /// hosts may take free slots again. Only when the trie holds none of
    /// its hosts (the caller knows).
    pub fn clear_overflow(&self, first: u32) {
        let state = self.read(first).state;
        self.write_state(first, state & !HOST_OVERFLOWED);
    }

    /// Frees `key`'s slot. Whether the table held it.
    pub fn vacate(&self, key: &Ipv6Bytes) -> bool {
        let Some(index) = self.slot_of(key) else {
            return false;
        };
        let state = self.read(index).state;
        self.write_state(index, state & !HOST_USED);
        let first = self.set_of(key);
        if (first..first + HOST_WAYS).all(|i| self.read(i).state & HOST_USED == 0) {
            let (word, bit) = self.set_word(first);
            word.fetch_and(!bit, Ordering::SeqCst);
        }
        true
    }

    /// Every used slot's host and entry.
    #[must_use]
    pub fn entries(&self) -> Vec<(Cidr, ListEntry)> {
        (0..self.slots.len)
            .map(|i| self.read(i))
            .filter(|s| s.state & HOST_USED != 0)
            .map(|s| (host_cidr(&s.addr), s.entry))
            .collect()
    }
}
