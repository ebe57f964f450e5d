//! One snapshot of the program's counters, summed over CPUs: what `stats`
//! prints (and what metrics and `top` will read).

use std::collections::BTreeMap;

use anyhow::Context as _;
use aya::maps::{HashMap, MapData, PerCpuArray, PerCpuValues};
use filter_common::{Bucket, BucketKey, Counter, RuleCounter, maps, reason, table_stat};
use serde::Serialize;

use super::Filter;

/// Counters summed over CPUs.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Stats {
    /// Packets and bytes per decision reason.
    pub reasons: BTreeMap<String, CounterJson>,
    /// The program's own tables: `buckets_live`, `bucket_inserts`,
    /// `bucket_evictions` (inserts - live: buckets are only ever evicted),
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

/// Sums one per-CPU counter.
fn sum(per_cpu: &[Counter]) -> Counter {
    per_cpu.iter().fold(Counter::default(), |acc, c| Counter {
        packets: acc.packets + c.packets,
        bytes: acc.bytes + c.bytes,
    })
}

impl Filter {
    /// Packets and bytes per reason (name), summed over CPUs: one lookup
    /// per reason, whatever the size of the other maps.
    pub fn reason_counters(&self) -> anyhow::Result<Vec<(&'static str, Counter)>> {
        let stats: PerCpuArray<MapData, Counter> = self.per_cpu_array(maps::STATS)?;
        (0u32..)
            .zip(reason::NAMES)
            .map(|(index, name)| {
                let per_cpu = stats
                    .get(&index, 0)
                    .with_context(|| format!("reading STATS[{name}]"))?;
                Ok((name, sum(&per_cpu)))
            })
            .collect()
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
        for (name, counter) in self.reason_counters()? {
            out.reasons.insert(name.to_string(), counter.into());
        }
        let buckets: HashMap<MapData, BucketKey, Bucket> =
            HashMap::try_from(self.map(maps::BUCKETS)?)
                .context("BUCKETS is not the expected hash map")?;
        let live = buckets.keys().flatten().count() as u64;
        let inserts = self.table_stat(table_stat::BUCKET_INSERTS)?;
        for (name, value) in [
            ("buckets_live", live),
            ("bucket_inserts", inserts),
            ("bucket_evictions", inserts.saturating_sub(live)),
            ("autoblocks", self.table_stat(table_stat::AUTOBLOCKS)?),
            (
                "autoblocks_failed",
                self.table_stat(table_stat::AUTOBLOCKS_FAILED)?,
            ),
            ("events_lost", self.table_stat(table_stat::EVENTS_LOST)?),
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
        let mut stats: PerCpuArray<MapData, RuleCounter> = self.per_cpu_array(maps::RULE_STATS)?;
        let cpus = aya::util::nr_cpus()
            .map_err(|(_, e)| e)
            .context("counting CPUs")?;
        let zeros = PerCpuValues::try_from(vec![RuleCounter::default(); cpus])
            .context("building zero counters")?;
        stats.set(id, zeros, 0).context("resetting RULE_STATS")
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
