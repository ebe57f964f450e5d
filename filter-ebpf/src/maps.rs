//! The program's maps. Names, types and key and value sizes are listed in
//! `filter_common::abi::MAPS`; the `abi` test checks the built object against it.

use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    macros::map,
    maps::{Array, LpmTrie, PerCpuArray, RingBuf},
};
use filter_common::{
    BucketSlot, Config, Counter, HostSlot, Ipv4Bytes, Ipv6Bytes, ListEntry, MAX_RULES,
    OnlyFromBytes, PORT_INDEX_ENTRIES, RULE_SLOTS, RateRule, RuleCounter, STATS_ENTRIES,
    SUMMARY_ENTRIES, capacity, events::sampling, host_set_words, host_slots, iface, table_stat,
};

/// Packets and bytes per interface slot and verdict reason (`stats_index`).
#[map]
pub static STATS: PerCpuArray<Counter> = PerCpuArray::pinned(STATS_ENTRIES, 0);
/// The interface name of each `STATS` slot (written by user space, never read here).
#[map]
pub static IFACE_NAMES: Array<[u8; iface::NAME_LEN]> = Array::pinned(iface::SLOTS, 0);
/// Drop sampling rates per reason and the per-CPU cap (`events::sampling`; set by user space).
#[map]
pub static SAMPLING: Array<u32> = Array::pinned(sampling::ENTRIES, 0);
/// Per-CPU countdowns per reason (drops to skip before the next event) and
/// the cap's window (`events::sampling`).
#[map]
pub static SAMPLE_STATE: PerCpuArray<u64> = PerCpuArray::pinned(sampling::STATE_ENTRIES, 0);
/// Counters about the program's own tables (`table_stat::*`).
#[map]
pub static TABLE_STATS: PerCpuArray<u64> = PerCpuArray::pinned(table_stat::COUNT, 0);

#[map]
pub static ALLOW_V4: LpmTrie<Ipv4Bytes, ListEntry> = LpmTrie::pinned(capacity::LIST_ENTRIES, 0);
#[map]
pub static ALLOW_V6: LpmTrie<Ipv6Bytes, ListEntry> = LpmTrie::pinned(capacity::LIST_ENTRIES, 0);
/// Operators' blocks and automatic blocks.
#[map]
pub static BLOCK_V4: LpmTrie<Ipv4Bytes, ListEntry> = LpmTrie::pinned(capacity::LIST_ENTRIES, 0);
#[map]
pub static BLOCK_V6: LpmTrie<Ipv6Bytes, ListEntry> = LpmTrie::pinned(capacity::LIST_ENTRIES, 0);
/// Blocked hosts (/32, /128) beside the blocklist tries: a 4-way
/// set-associative array (`filter_common::HostSlot`), sized by user space,
/// which maps it into memory to write it (`BPF_F_MMAPABLE`).
#[map]
pub static BLOCK_HOSTS: Array<HostSlot> =
    Array::pinned(host_slots(capacity::LIST_ENTRIES), BPF_F_MMAPABLE);
/// One bit per `BLOCK_HOSTS` set: whether it holds a host
/// (`filter_common::host_set_bit`), written by user space like the table.
#[map]
pub static BLOCK_HOST_SETS: Array<u64> = Array::pinned(
    host_set_words(host_slots(capacity::LIST_ENTRIES)),
    BPF_F_MMAPABLE,
);
/// Where the blocklist tries may hold a prefix (bitmaps of IPv4 /24s and
/// IPv6 /40s) and where `BLOCK_HOSTS` may hold an entry (of IPv4 /24s and
/// IPv6 /48s), two generations (`filter_common::summary`), then the prefix
/// lengths `BLOCK_HOSTS` holds per region (IPv4 /16s, hashed IPv6 /48s).
/// Marked by user space, which maps it into memory, and by automatic blocks
/// (the tries').
#[map]
pub static BLOCK_SUMMARY: Array<u64> = Array::pinned(SUMMARY_ENTRIES, BPF_F_MMAPABLE);
/// A shadow policy's blocks: matches are counted, never enforced.
#[map]
pub static SHADOW_BLOCK_V4: LpmTrie<Ipv4Bytes, ListEntry> =
    LpmTrie::pinned(capacity::LIST_ENTRIES, 0);
#[map]
pub static SHADOW_BLOCK_V6: LpmTrie<Ipv6Bytes, ListEntry> =
    LpmTrie::pinned(capacity::LIST_ENTRIES, 0);

#[map]
pub static CONFIG: Array<Config> = Array::pinned(1, 0);
/// Rate rules by slot: two slots per rule id (`id`, `id + MAX_RULES`), one
/// live (named by `PORT_RULE_INDEX` or `Config::default_rule_slot`), the
/// other where user space writes the rule's next version.
#[map]
pub static RULES: Array<RateRule> = Array::pinned(RULE_SLOTS, 0);
/// Packets passed and dropped per rule id.
#[map]
pub static RULE_STATS: PerCpuArray<RuleCounter> = PerCpuArray::pinned(MAX_RULES, 0);
/// (protocol, destination port) -> live rule slot; a slot of id 0 = no port rule.
#[map]
pub static PORT_RULE_INDEX: Array<u32> = Array::pinned(PORT_INDEX_ENTRIES, 0);
/// (rule slot, source prefix) pairs allowed by `--only-from` rules.
#[map]
pub static ONLY_FROM: LpmTrie<OnlyFromBytes, u8> = LpmTrie::pinned(capacity::ONLY_FROM, 0);
/// GCRA state per (rule, aggregated source): a 2-way set-associative table
/// (`filter_common::BucketSlot`), sized by user space (a power of two).
/// Memory-mapped only so that its values start on a page (see `BucketSlot`).
#[map]
pub static BUCKETS: Array<BucketSlot> = Array::pinned(capacity::BUCKETS, BPF_F_MMAPABLE);
/// Records for user space (`filter_common::events`).
#[map]
pub static EVENTS: RingBuf = RingBuf::pinned(capacity::EVENTS_BYTES, 0);
