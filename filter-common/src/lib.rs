//! Types shared by the XDP program (`filter-ebpf`) and user space (`filter-ctl`).
//!
//! Conventions, kept everywhere:
//! - Addresses are byte arrays in network order. IPv4 sources used as rate-limit
//!   keys are IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`), so one key type
//!   covers both families.
//! - Every struct is `#[repr(C)]` with explicit padding fields, and its size
//!   and field offsets are asserted at compile time: hash and LPM maps compare
//!   every key byte, so implicit padding would make lookups miss.
//! - Times are `CLOCK_MONOTONIC` nanoseconds (`bpf_ktime_get_ns`); 0 means "never".
//!
//! One module per concern, mirroring the program's files; everything is
//! re-exported here as well. [`abi`] lists every map with its type and key
//! and value sizes, and the layout version both sides are built for.
#![no_std]
#![allow(
    clippy::pub_underscore_fields,
    reason = "explicit ABI padding fields (`_pad`), public so both crates can build the structs"
)]

pub mod abi;
pub mod config;
pub mod events;
pub mod lists;
pub mod ratelimit;
pub mod reason;
pub mod stats;
pub mod summary;

pub use abi::{LAYOUT_VERSION, capacity, maps};
pub use config::{
    CLOCK_AUTO, CLOCK_COARSE, CLOCK_PRECISE, Config, DEFAULT_IPV4_SOURCE_PREFIX,
    DEFAULT_IPV6_SOURCE_PREFIX, coarse_clock_suffices,
};
pub use events::{AutoBlockEvent, DropEvent, EVENT_AUTOBLOCK, EVENT_DROP, EventHeader, NO_RULE};
pub use lists::{
    HOST_OVERFLOWED, HOST_SETS_PER_WORD, HOST_USED, HOST_WAYS, HostSlot, Ipv4Bytes, Ipv6Bytes,
    ListEntry, ORIGIN_AUTO, ORIGIN_CLI, ORIGIN_CROWDSEC, ORIGIN_POLICY, TABLE_LENGTHS_V4,
    TABLE_LENGTHS_V6, TABLE_LONGEST_V6, TABLE_SHORTEST_V4, TABLE_SHORTEST_V6, host_hash,
    host_key_v4, host_set, host_set_bit, host_set_of_hash, host_set_words, host_slots,
    in_host_table, masked_words, prefix_mask32, table_length_bit,
};
pub use ratelimit::{
    Bucket, BucketKey, BucketSlot, DEFAULT_RULE, IPPROTO_TCP, IPPROTO_UDP, IPV4_MAPPED_WORD,
    MAX_RULES, ONLY_FROM_KEY_BITS, OnlyFromBytes, PORT_INDEX_ENTRIES, PORT_INDEX_UDP_BASE,
    RULE_DROP, RULE_FLAG_ONLY_FROM, RULE_FLAG_SHADOW, RULE_LIMIT, RULE_SLOTS, RateRule, SLOT_USED,
    TICKS_PER_NS, TICKS_PER_SEC, bucket_hash, bucket_set, only_from_key_data, other_slot, rule_id,
    source_bytes, source_words,
};
pub use stats::{Counter, RuleCounter, STATS_ENTRIES, iface, stats_index, table_stat};
pub use summary::{
    SUMMARY_BITS, SUMMARY_ENTRIES, SUMMARY_PREFIX_V4, SUMMARY_PREFIX_V6, SUMMARY_WIDEST_V6,
    SUMMARY_WORDS, TABLE_REGIONS_V4, TABLE_REGIONS_V6, TABLE_SUMMARY_PREFIX_V6, summary_bit_v4,
    summary_bit_v6, summary_bitmap, summary_table_bitmap, summary_wide, summary_word_bit,
    table_bit_v6, table_lengths_word, table_region_v4, table_region_v6, table_summary_bit_v6,
};

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)], made only of integers and byte
    // arrays, with explicit padding fields (sizes and offsets asserted in
    // their modules).
    unsafe impl aya::Pod for super::Counter {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ListEntry {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::RateRule {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::BucketKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Bucket {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::BucketSlot {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::HostSlot {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::EventHeader {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::AutoBlockEvent {}
    // SAFETY: #[repr(C)], integers and byte arrays with explicit padding (size and offsets asserted).
    unsafe impl aya::Pod for super::DropEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Config {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::RuleCounter {}
}

/// XDP actions: what the program returns for a frame (the kernel's
/// `enum xdp_action`). The one place user space and the tests take them from.
pub mod xdp_action {
    /// The program failed; the frame is dropped and the `xdp_exception` tracepoint fires.
    pub const ABORTED: u32 = 0;
    /// Drop the frame.
    pub const DROP: u32 = 1;
    /// Hand the frame to the network stack.
    pub const PASS: u32 = 2;
    /// Send the frame back out of the interface it arrived on.
    pub const TX: u32 = 3;
    /// Send the frame elsewhere (another interface, CPU or socket).
    pub const REDIRECT: u32 = 4;

    /// The kernel's name of `action` (`XDP_DROP`), or `XDP_UNKNOWN` for a value
    /// no kernel defines.
    #[must_use]
    pub const fn name(action: u32) -> &'static str {
        match action {
            ABORTED => "XDP_ABORTED",
            DROP => "XDP_DROP",
            PASS => "XDP_PASS",
            TX => "XDP_TX",
            REDIRECT => "XDP_REDIRECT",
            _ => "XDP_UNKNOWN",
        }
    }
}
