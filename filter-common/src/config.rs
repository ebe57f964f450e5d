//! Global settings: the single entry of `CONFIG`.

use core::mem::{offset_of, size_of};

#[cfg(doc)]
use crate::{DEFAULT_RULE, MAX_RULES};

/// Global settings, one entry in `CONFIG`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Prefix length IPv4 sources are aggregated to for rate limits (default 32).
    pub ipv4_source_prefix: u32,
    /// Prefix length IPv6 sources are aggregated to for rate limits (default 64).
    pub ipv6_source_prefix: u32,
    /// Entries in `ALLOW_V4` / `ALLOW_V6`, kept by user space (the only writer
    /// of the allowlists): while 0 the program skips the allowlist lookup.
    /// Raised before entries are added, lowered after they are removed.
    pub allow_v4_entries: u32,
    pub allow_v6_entries: u32,
    /// Clock of the rate limiter: [`CLOCK_AUTO`] (default), [`CLOCK_COARSE`]
    /// or [`CLOCK_PRECISE`].
    pub rate_clock: u32,
    /// Slot of `RULES` holding the default rule: [`DEFAULT_RULE`] or
    /// [`DEFAULT_RULE`]` + `[`MAX_RULES`], the two slots of rule id 0. User
    /// space writes a changed default rule into the other slot and then
    /// switches this field (see `ratelimit`); the two values differ in one
    /// bit, so no copy, however it is split, shows a third value.
    pub default_rule_slot: u32,
    /// Entries in `SHADOW_BLOCK_V4` / `SHADOW_BLOCK_V6` (a shadow policy's
    /// blocks), kept by user space like the allowlist counts: while 0 the
    /// program skips the shadow lookup.
    pub shadow_v4_entries: u32,
    pub shadow_v6_entries: u32,
    /// Length of one timer tick (ns): the resolution of `jiffies`, set by
    /// user space from `clock_getres(CLOCK_MONOTONIC_COARSE)`. 0 (not set):
    /// the rate limiter reads the precise clock only.
    pub tick_ns: u64,
    /// `jiffies` when `CLOCK_MONOTONIC` was 0, set by user space with
    /// `tick_ns`: `(jiffies - jiffies_at_zero) * tick_ns` is the monotonic
    /// time of the last tick, the time the coarse clock reads.
    pub jiffies_at_zero: u64,
    /// Seed of the `BUCKETS` slot hash ([`bucket_set`](crate::bucket_set)),
    /// random, chosen by user space when it creates the maps, so that a
    /// sender cannot aim sources at one set of slots. Never changed while
    /// the maps live (buckets would move).
    pub bucket_seed: u64,
    /// `BUCKETS` capacity - 1 (the capacity is a power of two), written with
    /// the seed. While 0 every source shares the first two slots.
    pub bucket_mask: u32,
    /// Used slots of `BLOCK_HOSTS`, kept by user space (its only writer):
    /// while 0 the program skips the host probe. Raised before a host is
    /// written, lowered after one is removed, so never below the truth.
    pub block_hosts: u32,
    /// Seed of the `BLOCK_HOSTS` set hash ([`host_set`](crate::host_set)),
    /// random per map creation like [`Config::bucket_seed`].
    pub host_seed: u64,
    /// `BLOCK_HOSTS` capacity - 1 (a power of two), written with the seed.
    pub host_mask: u32,
    /// How many times user space sent hosts to a trie because their set was
    /// full or had overflowed (wrapping; the program never reads it): the
    /// controller's sweep clears a set's overflow mark only if no edit did
    /// so since it scanned the tries.
    pub host_overflows: u32,
    /// Used slots of `BLOCK_HOSTS` that hold a prefix, not a host, kept
    /// like [`Config::block_hosts`]: while 0 the program probes the table
    /// for the packet's host only, and does not read its region's length
    /// mask.
    pub table_prefixes: u32,
    /// Which generation of `BLOCK_SUMMARY` the program reads (0 or 1;
    /// see `summary`): user space switches it once it has rebuilt the
    /// other.
    pub summary_generation: u32,
}

/// Prefix length IPv4 sources are grouped by for rate limits, by default.
pub const DEFAULT_IPV4_SOURCE_PREFIX: u32 = 32;
/// Prefix length IPv6 sources are grouped by for rate limits, by default
/// (one /64 is what a single host or subscriber gets).
pub const DEFAULT_IPV6_SOURCE_PREFIX: u32 = 64;

/// Rate limiter clock, the default: per rule, the coarse clock when the
/// rule's burst covers one tick of its rate (then the tick's resolution
/// changes nothing a source can see), else the precise one. See
/// [`coarse_clock_suffices`].
pub const CLOCK_AUTO: u32 = 0;
/// Rate limiter clock: the time of the last timer tick (1-4 ms old), from
/// `jiffies` (which the verifier inlines: no helper call). A source gets at
/// most its burst per tick: a rule whose burst is less than one tick's worth
/// of its rate is cut to `burst` packets per tick.
pub const CLOCK_COARSE: u32 = 1;
/// Rate limiter clock: `bpf_ktime_get_ns`, exact to the nanosecond, for
/// every rule.
pub const CLOCK_PRECISE: u32 = 2;

/// Whether the coarse clock enforces a rule exactly as the precise one does,
/// on average: its packet burst (tolerance plus one interval) and its byte
/// tolerance each cover one tick (`tick_ticks`, in rate ticks), so the whole
/// tick's allowance fits in the bucket when the clock jumps by a tick.
#[inline(always)]
#[must_use]
pub const fn coarse_clock_suffices(
    packet_interval: u64,
    packet_tolerance: u64,
    byte_interval: u64,
    byte_tolerance: u64,
    tick_ticks: u64,
) -> bool {
    (packet_interval == 0 || packet_tolerance.saturating_add(packet_interval) >= tick_ticks)
        && (byte_interval == 0 || byte_tolerance >= tick_ticks)
}

const _: () = assert!(size_of::<Config>() == 88);
const _: () = assert!(offset_of!(Config, ipv4_source_prefix) == 0);
const _: () = assert!(offset_of!(Config, ipv6_source_prefix) == 4);
const _: () = assert!(offset_of!(Config, allow_v4_entries) == 8);
const _: () = assert!(offset_of!(Config, allow_v6_entries) == 12);
const _: () = assert!(offset_of!(Config, rate_clock) == 16);
const _: () = assert!(offset_of!(Config, default_rule_slot) == 20);
const _: () = assert!(offset_of!(Config, shadow_v4_entries) == 24);
const _: () = assert!(offset_of!(Config, shadow_v6_entries) == 28);
const _: () = assert!(offset_of!(Config, tick_ns) == 32);
const _: () = assert!(offset_of!(Config, jiffies_at_zero) == 40);
const _: () = assert!(offset_of!(Config, bucket_seed) == 48);
const _: () = assert!(offset_of!(Config, bucket_mask) == 56);
const _: () = assert!(offset_of!(Config, block_hosts) == 60);
const _: () = assert!(offset_of!(Config, host_seed) == 64);
const _: () = assert!(offset_of!(Config, host_mask) == 72);
const _: () = assert!(offset_of!(Config, host_overflows) == 76);
const _: () = assert!(offset_of!(Config, table_prefixes) == 80);
const _: () = assert!(offset_of!(Config, summary_generation) == 84);
