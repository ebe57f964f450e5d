//! One snapshot of the program's counters, summed over CPUs: what `stats`
//! prints (and what metrics and `top` will read).

use std::collections::BTreeMap;

use anyhow::Context as _;
use aya::maps::{Array, MapData, PerCpuArray};
use filter_common::{Counter, RuleCounter, iface, maps, reason, stats_index, table_stat};
use serde::Serialize;

use super::Filter;

/// Used slots of `BUCKETS` from the program's counters: inserts -
/// evictions. Exact but for races between CPUs claiming one slot at once
/// (both count an insert), and increments lost in a rule removal (see
/// `buckets::forget`).
#[must_use]
pub fn live_buckets(inserts: u64, evictions: u64) -> u64 {
    inserts.saturating_sub(evictions)
}

/// Counters summed over CPUs.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Stats {
    /// Packets and bytes per decision reason (the sum over interfaces).
    pub reasons: BTreeMap<String, CounterJson>,
    /// The same per interface: `{name: {reason: {packets, bytes}}}`.
    /// Interfaces are named when the controller attaches; an interface index
    /// of 64 or more is counted under `other`, and a slot without a name as
    /// `ifindex_N` (e.g. `BPF_PROG_TEST_RUN`, which reports ifindex 1).
    pub interfaces: BTreeMap<String, BTreeMap<String, CounterJson>>,
    /// The program's own tables: `buckets_live` (inserts - evictions,
    /// counted without a walk, as `/metrics` reports it), `bucket_inserts`,
    /// `bucket_evictions` (slots claimed from another (rule, source), or
    /// emptied when a rule was removed),
    /// `autoblocks`, `autoblocks_failed`, `events_lost`.
    pub tables: BTreeMap<String, u64>,
}

#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct CounterJson {
    pub packets: u64,
    pub bytes: u64,
}

impl From<Counter> for CounterJson {
    fn from(c: Counter) -> Self {
        Self {
            packets: c.packets,
            bytes: c.bytes,
        }
    }
}

/// Counters per reason of one interface.
pub type ReasonCounters = [Counter; reason::COUNT as usize];

fn add(a: Counter, b: Counter) -> Counter {
    Counter {
        packets: a.packets + b.packets,
        bytes: a.bytes + b.bytes,
    }
}

/// Sums one per-CPU counter.
fn sum(per_cpu: &[Counter]) -> Counter {
    per_cpu.iter().fold(Counter::default(), |acc, c| Counter {
        packets: acc.packets + c.packets,
        bytes: acc.bytes + c.bytes,
    })
}

impl Filter {
    /// Counters per interface (by name) and reason, summed over CPUs: a
    /// fixed number of lookups (`STATS` and `IFACE_NAMES` are small arrays),
    /// whatever the size of the other maps. Slots of the same name (an
    /// interface that came back with another index) are added up; unnamed
    /// slots without traffic are left out.
    pub fn interface_counters(&self) -> anyhow::Result<BTreeMap<String, ReasonCounters>> {
        let stats: PerCpuArray<MapData, Counter> = self.per_cpu_array(maps::STATS)?;
        let names: Array<MapData, [u8; iface::NAME_LEN]> = self.array(maps::IFACE_NAMES)?;
        let mut out: BTreeMap<String, ReasonCounters> = BTreeMap::new();
        for slot in 0..iface::COUNT {
            let mut counters = ReasonCounters::default();
            for (why, counter) in (0u32..).zip(counters.iter_mut()) {
                let per_cpu = stats
                    .get(&stats_index(slot, why), 0)
                    .with_context(|| format!("reading STATS[{slot}, {why}]"))?;
                *counter = sum(&per_cpu);
            }
            let name = if slot == iface::OTHER {
                "other".to_string()
            } else {
                let raw = names.get(&slot, 0).context("reading IFACE_NAMES")?;
                let len = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
                String::from_utf8_lossy(&raw[..len]).into_owned()
            };
            let idle = counters.iter().all(|c| *c == Counter::default());
            let name = if name.is_empty() {
                if idle {
                    continue;
                }
                format!("ifindex_{slot}")
            } else {
                name
            };
            let entry = out.entry(name).or_default();
            for (total, c) in entry.iter_mut().zip(counters) {
                *total = add(*total, c);
            }
        }
        Ok(out)
    }

    /// Packets and bytes per reason (name), summed over CPUs and interfaces.
    pub fn reason_counters(&self) -> anyhow::Result<Vec<(&'static str, Counter)>> {
        let mut totals = ReasonCounters::default();
        for counters in self.interface_counters()?.values() {
            for (total, c) in totals.iter_mut().zip(counters) {
                *total = add(*total, *c);
            }
        }
        Ok(reason::NAMES.into_iter().zip(totals).collect())
    }

    /// Names the `STATS` slot of interface `ifindex` (nothing to do for an
    /// index that has no slot of its own: it counts under `other`). A slot
    /// that held another name is zeroed first, so counts never move from
    /// one interface to another. Called before attaching.
    pub fn name_interface(&self, ifindex: u32, name: &str) -> anyhow::Result<()> {
        if ifindex == 0 || ifindex >= iface::SLOTS {
            return Ok(());
        }
        let mut names: Array<MapData, [u8; iface::NAME_LEN]> = self.array(maps::IFACE_NAMES)?;
        let mut raw = [0u8; iface::NAME_LEN];
        let bytes = name.as_bytes();
        let len = bytes.len().min(iface::NAME_LEN - 1);
        raw[..len].copy_from_slice(&bytes[..len]);
        if names.get(&ifindex, 0).context("reading IFACE_NAMES")? == raw {
            return Ok(());
        }
        self.zero_per_cpu::<Counter>(
            maps::STATS,
            (0..reason::COUNT).map(|why| stats_index(ifindex, why)),
        )?;
        names.set(ifindex, raw, 0).context("writing IFACE_NAMES")
    }

    /// The number of entries a pinned map can hold.
    pub fn capacity(&self, name: &str) -> anyhow::Result<u32> {
        Ok(self
            .map_data(name)?
            .info()
            .with_context(|| format!("reading the map info of {name}"))?
            .max_entries())
    }

    pub fn stats(&self) -> anyhow::Result<Stats> {
        let mut out = Stats::default();
        let interfaces = self.interface_counters()?;
        let mut totals = ReasonCounters::default();
        for (iface, counters) in &interfaces {
            let mut by_reason = BTreeMap::new();
            for ((name, total), c) in reason::NAMES.iter().zip(totals.iter_mut()).zip(counters) {
                *total = add(*total, *c);
                by_reason.insert((*name).to_string(), CounterJson::from(*c));
            }
            out.interfaces.insert(iface.clone(), by_reason);
        }
        for (name, counter) in reason::NAMES.iter().zip(totals) {
            out.reasons.insert((*name).to_string(), counter.into());
        }
        // From the kernel's counters, as `/metrics` does: walking a
        // million-entry table took seconds.
        let inserts = self.table_stat(table_stat::BUCKET_INSERTS)?;
        let evictions = self.table_stat(table_stat::BUCKET_EVICTIONS)?;
        for (name, value) in [
            ("buckets_live", live_buckets(inserts, evictions)),
            ("bucket_inserts", inserts),
            ("bucket_evictions", evictions),
            ("autoblocks", self.table_stat(table_stat::AUTOBLOCKS)?),
            (
                "autoblocks_failed",
                self.table_stat(table_stat::AUTOBLOCKS_FAILED)?,
            ),
            ("events_lost", self.table_stat(table_stat::EVENTS_LOST)?),
            (
                "drop_events_capped",
                self.table_stat(table_stat::DROP_EVENTS_CAPPED)?,
            ),
        ] {
            out.tables.insert(name.to_string(), value);
        }
        Ok(out)
    }

    /// Per-rule counters summed over CPUs, by rule id.
    pub fn rule_counters(&self, id: u32) -> anyhow::Result<RuleCounter> {
        let stats: PerCpuArray<MapData, RuleCounter> = self.per_cpu_array(maps::RULE_STATS)?;
        let per_cpu = stats.get(&id, 0).context("reading RULE_STATS")?;
        let passed: Vec<Counter> = per_cpu.iter().map(|c| c.passed).collect();
        let dropped: Vec<Counter> = per_cpu.iter().map(|c| c.dropped).collect();
        Ok(RuleCounter {
            passed: sum(&passed),
            dropped: sum(&dropped),
        })
    }

    /// Zeroes a rule id's counters (a new rule starts from nothing).
    pub fn reset_rule_counters(&self, id: u32) -> anyhow::Result<()> {
        self.zero_per_cpu::<RuleCounter>(maps::RULE_STATS, [id])
    }

    /// One of the `table_stat` counters, summed over CPUs.
    pub fn table_stat(&self, index: u32) -> anyhow::Result<u64> {
        debug_assert!(index < table_stat::COUNT);
        let stats: PerCpuArray<MapData, u64> = self.per_cpu_array(maps::TABLE_STATS)?;
        Ok(stats
            .get(&index, 0)
            .context("reading TABLE_STATS")?
            .iter()
            .sum())
    }
}
