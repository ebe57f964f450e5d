//! Types shared by the XDP program (`filter-ebpf`) and user space (`filter-ctl`).
//!
//! Conventions, kept everywhere:
//! - Addresses are byte arrays in network order. IPv4 sources used as rate-limit
//!   keys are IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`), so one key type
//!   covers both families.
//! - Every struct is `#[repr(C)]` with explicit padding fields and a size
//!   assertion: hash and LPM maps compare every key byte, so implicit padding
//!   would make lookups miss.
//! - Times are `CLOCK_MONOTONIC` nanoseconds (`bpf_ktime_get_ns`); 0 means "never".
#![no_std]

use core::mem::size_of;

/// Why the program reached its verdict. Index into the `STATS` map.
pub mod reason {
    /// Passed every check.
    pub const PASS: u32 = 0;
    /// Source is on the allowlist: passed without further checks.
    pub const ALLOWLIST: u32 = 1;
    /// Source is on the blocklist: dropped.
    pub const BLOCKLIST: u32 = 2;
    /// Frame claims a header it does not contain, or a header is invalid: dropped.
    pub const MALFORMED: u32 = 3;
    /// Source is automatically blocked (it kept exceeding its limit): dropped.
    pub const AUTOBLOCK: u32 = 4;
    /// Source exceeded its rate limit: dropped.
    pub const RATELIMIT: u32 = 5;
    /// A port rule closes the port, or the source is not in the rule's `only-from` set: dropped.
    pub const PORT_DENIED: u32 = 6;
    /// Not IPv4/IPv6 (ARP, LLDP, ...): passed untouched.
    pub const NON_IP: u32 = 7;
    /// Number of reasons; size of the `STATS` map.
    pub const COUNT: u32 = 8;

    /// Names used by the CLI, JSON output and metrics, indexed by reason.
    pub const NAMES: [&str; COUNT as usize] = [
        "pass",
        "allowlist",
        "blocklist",
        "malformed",
        "autoblock",
        "ratelimit",
        "port_denied",
        "non_ip",
    ];

    /// Whether the verdict for this reason is a drop.
    #[must_use]
    pub const fn is_drop(reason: u32) -> bool {
        matches!(
            reason,
            BLOCKLIST | MALFORMED | AUTOBLOCK | RATELIMIT | PORT_DENIED
        )
    }
}

/// Packet and byte counter (per CPU in the kernel, summed in user space).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

/// Value of an allowlist or blocklist entry.
///
/// Automatic blocks live in the blocklist tries too (origin
/// [`ORIGIN_AUTO`], keyed by the aggregated source prefix), so a packet costs
/// one blocklist lookup for both; the more specific entry decides the reason.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListEntry {
    /// `CLOCK_MONOTONIC` ns after which the entry no longer matches; 0 = permanent.
    pub expires_at_ns: u64,
    /// The entry's own prefix length, so the program can delete it once expired
    /// (a lookup returns only the value, and an expired longest match would
    /// otherwise hide shorter prefixes).
    pub prefix_len: u8,
    /// [`ORIGIN_MANUAL`] or [`ORIGIN_AUTO`].
    pub origin: u8,
    /// For automatic blocks: the rule slot whose limit was exceeded.
    pub rule: u16,
    /// For automatic blocks: over-limit packets in the window that triggered it.
    pub over_limit: u32,
}

/// Entry added by an operator (`filter-ctl block`/`allow`).
pub const ORIGIN_MANUAL: u8 = 0;
/// Entry added by the program: a source that kept exceeding its limit.
pub const ORIGIN_AUTO: u8 = 1;

impl ListEntry {
    /// Whether the entry still applies at `now_ns`.
    #[inline(always)]
    #[must_use]
    pub const fn is_active(&self, now_ns: u64) -> bool {
        self.expires_at_ns == 0 || now_ns < self.expires_at_ns
    }
}

/// Address of an IPv4 LPM key (network order).
pub type Ipv4Bytes = [u8; 4];
/// Address of an IPv6 LPM key (network order).
pub type Ipv6Bytes = [u8; 16];

/// Number of port-rule slots (`RULES` map). Slot 0 is the default source limit.
pub const MAX_RULES: u32 = 256;
/// Slot of the default per-source limit in `RULES`.
pub const DEFAULT_RULE: u32 = 0;
/// `PORT_RULE_INDEX` has one entry per (protocol, port): TCP ports first, then UDP.
pub const PORT_INDEX_ENTRIES: u32 = 2 * 65536;
/// Offset of the UDP ports in `PORT_RULE_INDEX`.
pub const PORT_INDEX_UDP_BASE: u32 = 65536;

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// Rule action: rate-limit each source with the rule's buckets.
pub const RULE_LIMIT: u8 = 1;
/// Rule action: drop every packet to the port.
pub const RULE_DROP: u8 = 2;
/// Rule flag: only sources in `ONLY_FROM` under this rule's slot may use the port.
pub const RULE_FLAG_ONLY_FROM: u8 = 1;

/// One rate-limit rule (the default one, or a port rule). Slot 0 = default.
///
/// Rates are stored as GCRA emission intervals, so the kernel only adds and
/// compares: `packet_interval` is the time one packet costs, `byte_interval`
/// the time one byte costs, both in [`TICKS_PER_NS`]ths of a nanosecond.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateRule {
    /// 0 = empty slot, else `RULE_LIMIT` or `RULE_DROP`.
    pub action: u8,
    /// `RULE_FLAG_*` bits.
    pub flags: u8,
    /// What the rule matches, for user space only: `IPPROTO_TCP`/`IPPROTO_UDP`
    /// and the port range; 0 for the default rule.
    pub protocol: u8,
    pub _pad: u8,
    /// Over-limit packets within `autoblock_window_ns` that trigger an automatic block; 0 = never.
    pub autoblock_after: u32,
    pub port_first: u16,
    pub port_last: u16,
    pub _pad2: u32,
    /// Ticks one packet costs (`TICKS_PER_SEC / rate`); 0 = no packet limit.
    pub packet_interval: u64,
    /// Ticks of burst tolerance on the packet bucket (`(burst - 1) * packet_interval`).
    pub packet_tolerance: u64,
    /// Ticks one byte costs; 0 = no byte limit.
    pub byte_interval: u64,
    /// Ticks of burst tolerance on the byte bucket.
    pub byte_tolerance: u64,
    pub autoblock_window_ns: u64,
    pub autoblock_for_ns: u64,
    /// As configured, for listing (the kernel uses the intervals above).
    pub packets_per_sec: u64,
    pub bytes_per_sec: u64,
    pub burst: u64,
}

/// Time unit of the rate buckets: 1/16 ns. Gives exact intervals for rates up to
/// 10^8 packets/s with under 0.1% rounding and 36 years before a tick counter wraps.
pub const TICKS_PER_NS: u64 = 16;
/// Ticks per second.
pub const TICKS_PER_SEC: u64 = 1_000_000_000 * TICKS_PER_NS;

/// Key of the rate-limit tracking table: one bucket per (rule, aggregated source).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BucketKey {
    /// Slot in `RULES` whose limit this bucket enforces.
    pub rule: u32,
    /// Source, IPv4-mapped for IPv4, masked to the aggregation prefix.
    pub source: Ipv6Bytes,
}

/// GCRA state of one (rule, source). Updated with atomic compare-and-swap so
/// the limit holds across CPUs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    /// Theoretical arrival time of the packet bucket, in ticks.
    pub packet_tat: u64,
    /// Theoretical arrival time of the byte bucket, in ticks.
    pub byte_tat: u64,
    /// Start of the current over-limit window (ns).
    pub window_start_ns: u64,
    /// Over-limit packets seen in the current window.
    pub over_limit: u64,
}

/// Ring-buffer event: a source was put on the automatic block list.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AutoBlockEvent {
    pub source: Ipv6Bytes,
    pub rule: u32,
    pub over_limit: u32,
    pub blocked_at_ns: u64,
    pub expires_at_ns: u64,
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

/// Indexes of `TABLE_STATS` (per-CPU `u64` counters about the program's own tables).
pub mod table_stat {
    /// New buckets created in `BUCKETS`. Evictions = inserts - live entries
    /// (buckets are never deleted, only evicted by the LRU).
    pub const BUCKET_INSERTS: u32 = 0;
    /// Sources put on the automatic block list.
    pub const AUTOBLOCKS: u32 = 1;
    /// Automatic-block events lost because the ring buffer was full.
    pub const EVENTS_LOST: u32 = 2;
    /// Automatic blocks that could not be added (blocklist full).
    pub const AUTOBLOCKS_FAILED: u32 = 3;
    pub const COUNT: u32 = 4;
}

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
    pub _pad: u32,
}

/// Rate limiter clock: `bpf_ktime_get_ns`, exact to the nanosecond.
pub const CLOCK_PRECISE: u32 = 0;
/// Rate limiter clock: `bpf_ktime_get_coarse_ns`, the time of the last timer
/// tick (1-4 ms old): much cheaper to read; a source may get up to one tick's
/// worth of packets above its burst, never more on average.
pub const CLOCK_COARSE: u32 = 1;

/// Key of `ONLY_FROM`: the rule slot (big-endian) then the source, IPv4-mapped.
/// LPM prefix length = 32 + the source prefix length in the mapped space.
pub type OnlyFromBytes = [u8; 20];

/// Map names, shared so that user space finds what the program defines.
pub mod maps {
    pub const STATS: &str = "STATS";
    pub const ALLOW_V4: &str = "ALLOW_V4";
    pub const ALLOW_V6: &str = "ALLOW_V6";
    pub const BLOCK_V4: &str = "BLOCK_V4";
    pub const BLOCK_V6: &str = "BLOCK_V6";
    pub const CONFIG: &str = "CONFIG";
    pub const RULES: &str = "RULES";
    pub const RULE_STATS: &str = "RULE_STATS";
    pub const PORT_RULE_INDEX: &str = "PORT_RULE_INDEX";
    pub const ONLY_FROM: &str = "ONLY_FROM";
    pub const BUCKETS: &str = "BUCKETS";
    pub const EVENTS: &str = "EVENTS";
    pub const TABLE_STATS: &str = "TABLE_STATS";
    /// Every map, in the order user space pins and removes them.
    pub const ALL: [&str; 13] = [
        STATS,
        ALLOW_V4,
        ALLOW_V6,
        BLOCK_V4,
        BLOCK_V6,
        CONFIG,
        RULES,
        RULE_STATS,
        PORT_RULE_INDEX,
        ONLY_FROM,
        BUCKETS,
        EVENTS,
        TABLE_STATS,
    ];
}

/// Default capacities (user space may override them at load time).
pub mod capacity {
    pub const LIST_ENTRIES: u32 = 1_048_576;
    pub const BUCKETS: u32 = 1_048_576;
    pub const ONLY_FROM: u32 = 16_384;
    pub const EVENTS_BYTES: u32 = 256 * 1024;
}

const _: () = assert!(size_of::<Counter>() == 16);
const _: () = assert!(size_of::<ListEntry>() == 16);
const _: () = assert!(size_of::<RateRule>() == 88);
const _: () = assert!(size_of::<BucketKey>() == 20);
const _: () = assert!(size_of::<Bucket>() == 32);
const _: () = assert!(size_of::<AutoBlockEvent>() == 40);
const _: () = assert!(size_of::<Config>() == 24);
const _: () = assert!(size_of::<RuleCounter>() == 32);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)], made only of integers and byte
    // arrays, with explicit padding fields (asserted sizes above).
    unsafe impl aya::Pod for super::Counter {}
    unsafe impl aya::Pod for super::ListEntry {}
    unsafe impl aya::Pod for super::RateRule {}
    unsafe impl aya::Pod for super::BucketKey {}
    unsafe impl aya::Pod for super::Bucket {}
    unsafe impl aya::Pod for super::AutoBlockEvent {}
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::RuleCounter {}
}
