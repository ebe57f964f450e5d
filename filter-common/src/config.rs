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
    /// Clock of the rate limiter: [`CLOCK_PRECISE`] (default) or [`CLOCK_COARSE`].
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
    /// Seed of the `BUCKETS` slot hash ([`bucket_set`](crate::bucket_set)),
    /// random, chosen by user space when it creates the maps, so that a
    /// sender cannot aim sources at one set of slots. Never changed while
    /// the maps live (buckets would move).
    pub bucket_seed: u64,
    /// `BUCKETS` capacity - 1 (the capacity is a power of two), written with
    /// the seed. While 0 every source shares the first two slots.
    pub bucket_mask: u32,
    pub _pad: u32,
}

/// Prefix length IPv4 sources are grouped by for rate limits, by default.
pub const DEFAULT_IPV4_SOURCE_PREFIX: u32 = 32;
/// Prefix length IPv6 sources are grouped by for rate limits, by default
/// (one /64 is what a single host or subscriber gets).
pub const DEFAULT_IPV6_SOURCE_PREFIX: u32 = 64;

/// Rate limiter clock: `bpf_ktime_get_ns`, exact to the nanosecond.
pub const CLOCK_PRECISE: u32 = 0;
/// Rate limiter clock: `bpf_ktime_get_coarse_ns`, the time of the last timer
/// tick (1-4 ms old): much cheaper to read; a source may get up to one tick's
/// worth of packets above its burst, never more on average.
pub const CLOCK_COARSE: u32 = 1;

const _: () = assert!(size_of::<Config>() == 48);
const _: () = assert!(offset_of!(Config, ipv4_source_prefix) == 0);
const _: () = assert!(offset_of!(Config, ipv6_source_prefix) == 4);
const _: () = assert!(offset_of!(Config, allow_v4_entries) == 8);
const _: () = assert!(offset_of!(Config, allow_v6_entries) == 12);
const _: () = assert!(offset_of!(Config, rate_clock) == 16);
const _: () = assert!(offset_of!(Config, default_rule_slot) == 20);
const _: () = assert!(offset_of!(Config, shadow_v4_entries) == 24);
const _: () = assert!(offset_of!(Config, shadow_v6_entries) == 28);
const _: () = assert!(offset_of!(Config, bucket_seed) == 32);
const _: () = assert!(offset_of!(Config, bucket_mask) == 40);
const _: () = assert!(offset_of!(Config, _pad) == 44);
