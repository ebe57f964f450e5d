//! Memory-mapped array maps (`BPF_F_MMAPABLE`): their values read and
//! written in place, without a syscall per value (`BLOCK_HOSTS`,
//! `BLOCK_HOST_SETS`, `BLOCK_SUMMARY`).

use std::{
    collections::{HashMap, hash_map::Entry},
    marker::PhantomData,
    os::fd::{AsFd as _, AsRawFd as _},
    ptr::NonNull,
    sync::{Mutex, OnceLock},
};

use anyhow::{Context as _, ensure};
use aya::maps::MapData;

use super::Filter;

/// Pages of a [`Mapping`]'s window: a point access maps the window around
/// its value, not the whole array (the kernel fills in every page of a
/// mapping at once: about 1.5 ms per 20 MiB, measured).
const WINDOW_PAGES: usize = 16;

/// One `mmap` of a map's pages, unmapped on drop.
struct Window {
    base: NonNull<u8>,
    bytes: usize,
}

impl Drop for Window {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `Mapping::map`, unmapped once.
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.bytes);
        }
    }
}

/// A memory-mapped array map (`BPF_F_MMAPABLE`): its values, in place,
/// mapped a window at a time, or whole for a walk.
pub struct Mapping<T> {
    data: MapData,
    pub name: &'static str,
    pub len: u32,
    page: usize,
    pages: usize,
    whole: OnceLock<Window>,
    windows: Mutex<HashMap<usize, Window>>,
    _values: PhantomData<T>,
}

impl<T> Mapping<T> {
    pub fn open(filter: &Filter, name: &'static str) -> anyhow::Result<Self> {
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
        // The kernel maps the array's values, contiguous (their size a
        // multiple of 8: no gaps), rounded up to pages.
        let pages = (len as usize * size_of::<T>()).div_ceil(page);
        Ok(Self {
            data,
            name,
            len,
            page,
            pages,
            whole: OnceLock::new(),
            windows: Mutex::new(HashMap::new()),
            _values: PhantomData,
        })
    }

    /// Maps `count` pages from page `first`.
    fn map(&self, first: usize, count: usize) -> anyhow::Result<Window> {
        let bytes = count * self.page;
        let offset = libc::off_t::try_from(first * self.page).context("offset")?;
        // SAFETY: a read-write shared mapping of the map's fd, within its
        // pages (the callers keep `first + count <= self.pages`); the
        // result is checked before use.
        let address = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                self.data.fd().as_fd().as_raw_fd(),
                offset,
            )
        };
        if address == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("mapping {} into memory", self.name));
        }
        let base = NonNull::new(address.cast::<u8>())
            .with_context(|| format!("mapping {} into memory", self.name))?;
        Ok(Window { base, bytes })
    }

    /// Maps the whole array: before a walk, or an edit of many values.
    pub fn map_whole(&self) -> anyhow::Result<()> {
        if self.whole.get().is_none() {
            let window = self.map(0, self.pages)?;
            let _ = self.whole.set(window);
        }
        Ok(())
    }

    /// Value `index`, mapped if it is not yet.
    #[inline]
    pub fn ptr(&self, index: u32) -> anyhow::Result<*mut T> {
        ensure!(index < self.len, "{} has no value {index}", self.name);
        let offset = index as usize * size_of::<T>();
        if let Some(whole) = self.whole.get() {
            // SAFETY: in bounds of the whole mapping (checked above).
            return Ok(unsafe { whole.base.as_ptr().add(offset).cast() });
        }
        self.window_ptr(offset)
    }

    /// [`Self::ptr`] of the value at byte `offset` (in bounds), through a
    /// window: out of line, so that a pointer into a whole mapping (a
    /// large load takes millions) is a few instructions inlined.
    #[inline(never)]
    fn window_ptr(&self, offset: usize) -> anyhow::Result<*mut T> {
        // The window of the page the value starts in, one page longer, so
        // that a value starting in it ends in it too.
        let span = WINDOW_PAGES * self.page;
        let number = offset / span;
        let mut windows = self
            .windows
            .lock()
            .map_err(|_| anyhow::anyhow!("{}: a mapping thread panicked", self.name))?;
        let window = match windows.entry(number) {
            Entry::Occupied(window) => window.into_mut(),
            Entry::Vacant(vacant) => {
                let first = number * WINDOW_PAGES;
                let count = (WINDOW_PAGES + 1).min(self.pages - first);
                vacant.insert(self.map(first, count)?)
            }
        };
        // SAFETY: `offset - number * span` < `span`, and the value ends
        // within the one more page the window has (or the array's end).
        Ok(unsafe { window.base.as_ptr().add(offset - number * span).cast() })
    }
}

// SAFETY: the windows stay mapped as long as the value lives (it owns the
// map's fd; windows are unmapped on drop only); the memory is shared with
// the program and other processes anyway, and this process writes it only
// under the edit lock, from one thread at a time.
unsafe impl<T> Send for Mapping<T> {}
// SAFETY: as above; the window table is behind a mutex.
unsafe impl<T> Sync for Mapping<T> {}
