//! The program's interface to user space in one table: every map's name,
//! type, key size and value size, and the layout version they make up.
//!
//! The program embeds [`LAYOUT_VERSION`] (symbol [`LAYOUT_VERSION_SYMBOL`]
//! in section [`LAYOUT_VERSION_SECTION`]); user space pins the maps under
//! `v{LAYOUT_VERSION}`, so a changed layout never reuses an old pin, and a
//! test checks the built object against [`MAPS`].

use core::mem::size_of;

use crate::{
    BucketSlot, Config, Counter, HostSlot, Ipv4Bytes, Ipv6Bytes, ListEntry, MAX_RULES,
    OnlyFromBytes, PORT_INDEX_ENTRIES, RULE_SLOTS, RateRule, RuleCounter, table_stat,
};

/// Version of the maps' layout (names, types, keys, values, event records).
/// Bump it with every incompatible change.
///
/// 4: ring-buffer records start with an [`EventHeader`](crate::EventHeader).
/// 5: two `RULES` slots per rule ([`RULE_SLOTS`](crate::RULE_SLOTS) entries),
/// `Config::default_rule_slot`; buckets, rule counters, automatic blocks and
/// events name rule ids.
/// 8: shadow reasons (`STATS` grows), `ListEntry::rule` is a `u8` beside
/// `ListEntry::flags`, origins `policy` and `crowdsec`, `RULE_FLAG_SHADOW`,
/// `SHADOW_BLOCK_V4`/`V6` and their counts in `Config`.
/// 9: `Config` grows to 64 bytes: the tick clock (`tick_ns`,
/// `jiffies_at_zero`; `Config::rate_clock` 0 is the per-rule automatic
/// choice) and the slot table (`bucket_seed`, `bucket_mask`); `BUCKETS` is an
/// array of [`BucketSlot`]s (2-way set-associative),
/// `table_stat::BUCKET_EVICTIONS`.
/// 10: blocked hosts in `BLOCK_HOSTS` ([`HostSlot`]s, 4-way set-associative,
/// with the bitmap `BLOCK_HOST_SETS` of the sets in use) beside the
/// blocklist tries; `Config` grows to 80 bytes (`block_hosts`,
/// `host_seed`, `host_mask`).
/// 11: [`HostSlot`] is 32 bytes (the entry's fields beside the address, the
/// state a byte), and `BLOCK_HOSTS` has as many slots as the list capacity.
/// 12: `BLOCK_HOSTS` holds the blocklist's IPv4 /24s and IPv6 /64s and /48s
/// too, keyed by (address, prefix length), hashed per length; `Config`
/// grows to 88 bytes (`table_prefixes`).
/// 13: `BLOCK_SUMMARY`, the bitmaps of where the blocklist tries may hold a
/// prefix (see `summary`), and `Config::summary_generation` (was reserved).
/// 14: `BLOCK_SUMMARY` holds the host table's bitmaps too (16 MiB).
/// 15: [`BucketSlot`] is 48 bytes (the used flag a bit of the rule's word,
/// the window's count a `u32`), and `BUCKETS` is memory-mapped (its values
/// start on a page).
/// 16: `BLOCK_HOSTS` holds IPv4 /16 to /32 and IPv6 /40 to /64 and /128;
/// `BLOCK_SUMMARY` ends with the table's length masks (see `summary`).
pub const LAYOUT_VERSION: u32 = 16;

/// Name of the program's `u32` symbol holding [`LAYOUT_VERSION`].
pub const LAYOUT_VERSION_SYMBOL: &str = "FILTER_LAYOUT_VERSION";
/// ELF section of [`LAYOUT_VERSION_SYMBOL`]: a section of its own, which the
/// loader ignores (a `.rodata` one would become a map).
pub const LAYOUT_VERSION_SECTION: &str = "filter_abi";

/// BPF map types the program uses (`enum bpf_map_type` values).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MapType {
    Array = 2,
    PerCpuArray = 6,
    LpmTrie = 11,
    RingBuf = 27,
}

impl MapType {
    /// The kernel's `bpf_map_type` number.
    #[must_use]
    pub const fn raw(self) -> u32 {
        self as u32
    }

    /// The type with kernel number `raw`, if the program uses it.
    #[must_use]
    pub const fn from_raw(raw: u32) -> Option<Self> {
        match raw {
            2 => Some(Self::Array),
            6 => Some(Self::PerCpuArray),
            11 => Some(Self::LpmTrie),
            27 => Some(Self::RingBuf),
            _ => None,
        }
    }
}

/// One map of the program, as its ELF definition states it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapDef {
    pub name: &'static str,
    pub map_type: MapType,
    /// Bytes of a key (LPM tries: the 4-byte prefix length plus the data;
    /// ring buffers: 0).
    pub key_size: u32,
    /// Bytes of a value (per-CPU maps: of one CPU's value; ring buffers: 0).
    pub value_size: u32,
    /// Entries the program defines, for maps whose size is part of the
    /// layout (arrays); 0 for maps user space sizes at load time.
    pub entries: u32,
}

#[expect(
    clippy::cast_possible_truncation,
    reason = "ABI structs are a few dozen bytes (sizes asserted)"
)]
const fn size<T>() -> u32 {
    size_of::<T>() as u32
}

const fn array<V>(name: &'static str, entries: u32) -> MapDef {
    MapDef {
        name,
        map_type: MapType::Array,
        key_size: size::<u32>(),
        value_size: size::<V>(),
        entries,
    }
}

const fn per_cpu_array<V>(name: &'static str, entries: u32) -> MapDef {
    MapDef {
        map_type: MapType::PerCpuArray,
        ..array::<V>(name, entries)
    }
}

const fn lpm_trie<K, V>(name: &'static str) -> MapDef {
    MapDef {
        name,
        map_type: MapType::LpmTrie,
        key_size: size::<u32>() + size::<K>(),
        value_size: size::<V>(),
        entries: 0,
    }
}

/// Map names, shared so that user space finds what the program defines.
pub mod maps {
    pub const STATS: &str = "STATS";
    pub const ALLOW_V4: &str = "ALLOW_V4";
    pub const ALLOW_V6: &str = "ALLOW_V6";
    pub const BLOCK_V4: &str = "BLOCK_V4";
    pub const BLOCK_V6: &str = "BLOCK_V6";
    pub const SHADOW_BLOCK_V4: &str = "SHADOW_BLOCK_V4";
    pub const SHADOW_BLOCK_V6: &str = "SHADOW_BLOCK_V6";
    pub const BLOCK_HOSTS: &str = "BLOCK_HOSTS";
    pub const BLOCK_HOST_SETS: &str = "BLOCK_HOST_SETS";
    pub const BLOCK_SUMMARY: &str = "BLOCK_SUMMARY";
    pub const CONFIG: &str = "CONFIG";
    pub const RULES: &str = "RULES";
    pub const RULE_STATS: &str = "RULE_STATS";
    pub const PORT_RULE_INDEX: &str = "PORT_RULE_INDEX";
    pub const ONLY_FROM: &str = "ONLY_FROM";
    pub const BUCKETS: &str = "BUCKETS";
    pub const EVENTS: &str = "EVENTS";
    pub const TABLE_STATS: &str = "TABLE_STATS";
    pub const IFACE_NAMES: &str = "IFACE_NAMES";
    pub const SAMPLING: &str = "SAMPLING";
    pub const SAMPLE_STATE: &str = "SAMPLE_STATE";

    /// Every map, in the order user space pins and removes them (the order of [`super::MAPS`]).
    pub const ALL: [&str; super::MAPS.len()] = {
        let mut names = [""; super::MAPS.len()];
        let mut i = 0;
        while i < names.len() {
            names[i] = super::MAPS[i].name;
            i += 1;
        }
        names
    };
}

/// Every map of the program, in the order user space pins and removes them.
pub const MAPS: [MapDef; 21] = [
    per_cpu_array::<Counter>(maps::STATS, crate::STATS_ENTRIES),
    lpm_trie::<Ipv4Bytes, ListEntry>(maps::ALLOW_V4),
    lpm_trie::<Ipv6Bytes, ListEntry>(maps::ALLOW_V6),
    lpm_trie::<Ipv4Bytes, ListEntry>(maps::BLOCK_V4),
    lpm_trie::<Ipv6Bytes, ListEntry>(maps::BLOCK_V6),
    lpm_trie::<Ipv4Bytes, ListEntry>(maps::SHADOW_BLOCK_V4),
    lpm_trie::<Ipv6Bytes, ListEntry>(maps::SHADOW_BLOCK_V6),
    array::<Config>(maps::CONFIG, 1),
    // Two slots per rule id (see `ratelimit`).
    array::<RateRule>(maps::RULES, RULE_SLOTS),
    per_cpu_array::<RuleCounter>(maps::RULE_STATS, MAX_RULES),
    array::<u32>(maps::PORT_RULE_INDEX, PORT_INDEX_ENTRIES),
    lpm_trie::<OnlyFromBytes, u8>(maps::ONLY_FROM),
    // Sized by user space (a power of two).
    array::<BucketSlot>(maps::BUCKETS, 0),
    // Sized by user space from the list capacity (`host_slots`,
    // `host_set_words`).
    array::<HostSlot>(maps::BLOCK_HOSTS, 0),
    array::<u64>(maps::BLOCK_HOST_SETS, 0),
    array::<u64>(maps::BLOCK_SUMMARY, crate::SUMMARY_ENTRIES),
    MapDef {
        name: maps::EVENTS,
        map_type: MapType::RingBuf,
        key_size: 0,
        value_size: 0,
        entries: 0,
    },
    per_cpu_array::<u64>(maps::TABLE_STATS, table_stat::COUNT),
    array::<[u8; crate::iface::NAME_LEN]>(maps::IFACE_NAMES, crate::iface::SLOTS),
    array::<u32>(maps::SAMPLING, crate::events::sampling::ENTRIES),
    per_cpu_array::<u64>(maps::SAMPLE_STATE, crate::events::sampling::STATE_ENTRIES),
];

/// The table entry of the map called `name`.
#[must_use]
pub fn map(name: &str) -> Option<&'static MapDef> {
    MAPS.iter().find(|m| m.name == name)
}

const fn str_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

// Each name once.
const _: () = {
    let mut i = 0;
    while i < MAPS.len() {
        let mut j = i + 1;
        while j < MAPS.len() {
            assert!(!str_eq(MAPS[i].name, MAPS[j].name), "duplicate map name");
            j += 1;
        }
        i += 1;
    }
};

/// Default capacities (user space may override them at load time).
pub mod capacity {
    pub const LIST_ENTRIES: u32 = 1_048_576;
    pub const BUCKETS: u32 = 1_048_576;
    pub const ONLY_FROM: u32 = 16_384;
    pub const EVENTS_BYTES: u32 = 256 * 1024;
}
