//! Atomic updates of map words shared by all CPUs.
//!
//! The BPF target offers no `AtomicU64::compare_exchange`; the kernel has
//! BPF_CMPXCHG, reached through the `atomic_cxchg` intrinsic. Aligned 64-bit
//! loads and stores are single instructions: volatile suffices for them.

use core::intrinsics::{AtomicOrdering, atomic_cxchg};

use filter_common::BucketSlot;

/// Attempts at a contended compare-and-swap before giving up.
pub const CAS_ATTEMPTS: usize = 4;

/// A `u64` inside a map value that other CPUs update concurrently.
#[derive(Clone, Copy)]
pub struct SharedWord(*mut u64);

/// The words of a slot's bucket.
pub struct BucketWords {
    pub packet_tat: SharedWord,
    pub byte_tat: SharedWord,
    pub window_start_ns: SharedWord,
    pub over_limit: SharedCount,
}

impl BucketWords {
    /// # Safety
    /// `slot` points to a map value, valid and 8-byte aligned for the rest
    /// of the program's run.
    #[inline(always)]
    pub unsafe fn new(slot: *mut BucketSlot) -> Self {
        // SAFETY: `slot` is valid (caller); taking a field's address reads
        // nothing, and every field is aligned to its size (offsets asserted
        // in filter-common).
        unsafe {
            Self {
                packet_tat: SharedWord(&raw mut (*slot).packet_tat),
                byte_tat: SharedWord(&raw mut (*slot).byte_tat),
                window_start_ns: SharedWord(&raw mut (*slot).window_start_ns),
                over_limit: SharedCount(&raw mut (*slot).over_limit),
            }
        }
    }
}

/// A `u32` count inside a map value that other CPUs update concurrently.
#[derive(Clone, Copy)]
pub struct SharedCount(*mut u32);

impl SharedCount {
    #[inline(always)]
    pub fn store(self, value: u32) {
        // SAFETY: valid and aligned for the program's run (`BucketWords::new`).
        unsafe { self.0.write_volatile(value) }
    }

    /// Atomically adds one (saturating) and returns the new value (0 if
    /// every attempt lost a race). A compare-and-swap loop, not
    /// `atomic_xadd`: with this toolchain the fetched value of `atomic_xadd`
    /// came back wrong (the differential test caught the missed automatic
    /// blocks).
    #[inline(always)]
    pub fn increment(self) -> u32 {
        for _ in 0..CAS_ATTEMPTS {
            // SAFETY: as in `store`.
            let current = unsafe { self.0.read_volatile() };
            let next = current.saturating_add(1);
            // SAFETY: as in `store`.
            let (_, swapped) = unsafe {
                atomic_cxchg::<u32, { AtomicOrdering::Relaxed }, { AtomicOrdering::Relaxed }>(
                    self.0, current, next,
                )
            };
            if swapped {
                return next;
            }
        }
        0
    }
}

impl SharedWord {
    /// # Safety
    /// `word` points to a `u64` of a map value, valid and 8-byte aligned for
    /// the rest of the program's run.
    #[inline(always)]
    pub unsafe fn new(word: *mut u64) -> Self {
        Self(word)
    }

    #[inline(always)]
    pub fn load(self) -> u64 {
        // SAFETY: valid and aligned for the program's run (`BucketWords::new`).
        unsafe { self.0.read_volatile() }
    }

    #[inline(always)]
    pub fn store(self, value: u64) {
        // SAFETY: as in `load`.
        unsafe { self.0.write_volatile(value) }
    }

    /// Replaces `current` by `new` if the word still holds `current`; whether it did.
    #[inline(always)]
    pub fn compare_exchange(self, current: u64, new: u64) -> bool {
        // SAFETY: as in `load`.
        let (_, swapped) = unsafe {
            atomic_cxchg::<u64, { AtomicOrdering::Relaxed }, { AtomicOrdering::Relaxed }>(
                self.0, current, new,
            )
        };
        swapped
    }

    /// Sets the bits of `mask` by a compare-and-swap, even where they are
    /// set already: BPF_CMPXCHG is fully ordered, so the write comes after
    /// every store before it (a plain load would not). Whether they are set
    /// (false only if every attempt lost a race).
    #[inline(always)]
    pub fn set_bits(self, mask: u64) -> bool {
        for _ in 0..CAS_ATTEMPTS {
            let current = self.load();
            if self.compare_exchange(current, current | mask) {
                return true;
            }
        }
        false
    }
}
