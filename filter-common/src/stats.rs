//! Counters: per reason (`STATS`), per rule (`RULE_STATS`) and about the
//! program's own tables (`TABLE_STATS`).

use core::mem::{offset_of, size_of};

/// Packet and byte counter (per CPU in the kernel, summed in user space).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

/// Per-rule counters (per CPU), indexed by rule slot in `RULE_STATS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleCounter {
    /// Packets the rule let through.
    pub passed: Counter,
    /// Packets the rule dropped (over the limit, port closed, or source not allowed).
    pub dropped: Counter,
}

/// Per-interface slots of `STATS`: the program counts each verdict at
/// `stats_index(ingress ifindex, reason)`, read from the XDP context (no
/// extra map lookup). Interface indexes from 1 to `SLOTS - 1` have a slot of
/// their own, named in `IFACE_NAMES` by the controller when it attaches;
/// larger ones share `OTHER`. (`BPF_PROG_TEST_RUN` reports the loopback's
/// ifindex, 1.)
pub mod iface {
    /// Slots with a name of their own (ifindex 0..SLOTS); entries of `IFACE_NAMES`.
    pub const SLOTS: u32 = 64;
    /// The slot shared by every ifindex from `SLOTS` on.
    pub const OTHER: u32 = SLOTS;
    /// Slots in `STATS`.
    pub const COUNT: u32 = SLOTS + 1;
    /// An interface name, NUL-padded (`IFNAMSIZ`).
    pub const NAME_LEN: usize = 16;
}

/// The `STATS` index of `reason` for a packet that came in on `ifindex`.
#[inline(always)]
#[must_use]
pub const fn stats_index(ifindex: u32, reason: u32) -> u32 {
    let slot = if ifindex < iface::SLOTS {
        ifindex
    } else {
        iface::OTHER
    };
    slot * crate::reason::COUNT + reason
}

/// Entries of `STATS`.
pub const STATS_ENTRIES: u32 = iface::COUNT * crate::reason::COUNT;

/// Indexes of `TABLE_STATS` (per-CPU `u64` counters about the program's own tables).
pub mod table_stat {
    /// Slots of `BUCKETS` claimed for a new (rule, source). Live entries =
    /// inserts - evictions (user space clears slots only when it removes a
    /// rule).
    pub const BUCKET_INSERTS: u32 = 0;
    /// Sources put on the automatic block list.
    pub const AUTOBLOCKS: u32 = 1;
    /// Automatic-block events lost because the ring buffer was full.
    pub const EVENTS_LOST: u32 = 2;
    /// Automatic blocks that could not be added (blocklist full).
    pub const AUTOBLOCKS_FAILED: u32 = 3;
    /// Drop events not sent because the CPU reached its per-second cap.
    pub const DROP_EVENTS_CAPPED: u32 = 4;
    /// Claims of a `BUCKETS` slot that held another (rule, source): its bucket was reset.
    pub const BUCKET_EVICTIONS: u32 = 5;
    pub const COUNT: u32 = 6;
}

const _: () = assert!(size_of::<Counter>() == 16);
const _: () = assert!(offset_of!(Counter, packets) == 0);
const _: () = assert!(offset_of!(Counter, bytes) == 8);

const _: () = assert!(size_of::<RuleCounter>() == 32);
const _: () = assert!(offset_of!(RuleCounter, passed) == 0);
const _: () = assert!(offset_of!(RuleCounter, dropped) == 16);
