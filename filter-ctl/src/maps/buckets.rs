//! The rate-limit tracking table from user space: `BUCKETS`, an array of
//! [`BucketSlot`]s used as a 2-way set-associative table (see
//! `filter_common::BucketSlot`). The one place user space finds a (rule,
//! source)'s slot: tests, the benchmark and rule removal go through here.

use std::io::Read as _;

use anyhow::{Context as _, bail};
use aya::maps::{Array, MapData, PerCpuArray, PerCpuValues};
use filter_common::{
    Bucket, BucketKey, BucketSlot, Config, Ipv6Bytes, bucket_set, maps, source_words, table_stat,
};

use super::{Filter, batch};

/// Checks a `BUCKETS` capacity: a power of two, at least 2 (one set).
pub fn check_capacity(capacity: u32) -> Result<(), String> {
    if capacity < 2 || !capacity.is_power_of_two() {
        return Err(format!(
            "the bucket capacity must be a power of two, at least 2 (e.g. 131072, 1048576), not {capacity}"
        ));
    }
    Ok(())
}

/// A random seed for the slot hash, from the kernel's generator.
pub fn random_seed() -> anyhow::Result<u64> {
    let mut bytes = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom for the bucket seed")?;
    Ok(u64::from_ne_bytes(bytes))
}

/// The first slot of the set (rule, source) lives in, for `config`'s seed and mask.
#[must_use]
pub fn set_of(config: &Config, rule: u32, source: &Ipv6Bytes) -> u32 {
    bucket_set(
        config.bucket_seed,
        config.bucket_mask,
        rule,
        &source_words(source),
    )
}

/// The tracking table of a loaded filter.
pub struct Buckets {
    slots: Array<MapData, BucketSlot>,
    /// The same map, for batch syscalls.
    data: MapData,
    config: Config,
}

impl Buckets {
    pub fn open(filter: &Filter) -> anyhow::Result<Self> {
        Ok(Self {
            slots: filter.array(maps::BUCKETS)?,
            data: filter.map_data(maps::BUCKETS)?,
            config: filter.config()?,
        })
    }

    /// Slots in the table.
    #[must_use]
    pub fn capacity(&self) -> u32 {
        self.slots.len()
    }

    /// The slot holding (rule, source) and its content, if the table has it.
    pub fn find(&self, rule: u32, source: &Ipv6Bytes) -> anyhow::Result<Option<(u32, BucketSlot)>> {
        let first = set_of(&self.config, rule, source);
        let key = BucketKey {
            rule,
            source: *source,
        };
        for index in [first, first | 1] {
            let slot = self.slots.get(&index, 0).context("reading BUCKETS")?;
            if slot.is_used() && slot.key() == key {
                return Ok(Some((index, slot)));
            }
        }
        Ok(None)
    }

    /// The bucket of (rule, source), if the table has it.
    pub fn bucket(&self, rule: u32, source: &Ipv6Bytes) -> anyhow::Result<Option<Bucket>> {
        Ok(self.find(rule, source)?.map(|(_, slot)| slot.bucket()))
    }

    /// Every used slot: (index, slot). One batch read of the whole table.
    pub fn used(&self) -> anyhow::Result<Vec<(u32, BucketSlot)>> {
        let mut out = Vec::new();
        let read = batch::lookup_all::<u32, BucketSlot>(&self.data, &mut |index, slot| {
            if slot.is_used() {
                out.push((index, slot));
            }
            Ok(())
        })?;
        if !read {
            for index in 0..self.capacity() {
                let slot = self.slots.get(&index, 0).context("reading BUCKETS")?;
                if slot.is_used() {
                    out.push((index, slot));
                }
            }
        }
        Ok(out)
    }

    /// Writes `buckets` into their sets from user space (the benchmark fills
    /// the table this way), in the set's empty slot or else its first one,
    /// as the program would claim them; a set already full is overwritten.
    /// Counts nothing in `TABLE_STATS`. Returns how many slots were written.
    pub fn fill(&mut self, buckets: &[(BucketKey, Bucket)]) -> anyhow::Result<usize> {
        let mut taken = vec![0u8; self.capacity() as usize / 2];
        let mut indexes = Vec::with_capacity(buckets.len());
        let mut slots = Vec::with_capacity(buckets.len());
        for (key, bucket) in buckets {
            let first = set_of(&self.config, key.rule, &key.source);
            let set = &mut taken[(first / 2) as usize];
            let index = if *set == 1 { first | 1 } else { first };
            *set = 1;
            indexes.push(index);
            slots.push(BucketSlot::new(key, bucket));
        }
        batch::update(&self.data, &indexes, &slots, 0)
            .map_err(|e| anyhow::Error::new(e.error).context("writing BUCKETS by batches"))?;
        Ok(slots.len())
    }
}

/// Empties every slot of rule `id` (the rule was removed: a new rule with its
/// id starts from fresh buckets), and counts the emptied slots as evictions
/// so that live = inserts - evictions stays right. The count is added to
/// CPU 0's counter: an increment the program makes on CPU 0 between the
/// read and the write is lost (a rule removal is rare; the count is a gauge
/// estimate, not an account).
pub fn forget(filter: &Filter, id: u32) -> anyhow::Result<()> {
    let table = Buckets::open(filter)?;
    let doomed: Vec<u32> = table
        .used()?
        .into_iter()
        .filter(|(_, slot)| slot.key().rule == id)
        .map(|(index, _)| index)
        .collect();
    if doomed.is_empty() {
        return Ok(());
    }
    let empty = vec![BucketSlot::default(); doomed.len()];
    batch::update(&table.data, &doomed, &empty, 0)
        .map_err(|e| anyhow::Error::new(e.error).context("clearing BUCKETS"))?;
    let mut stats: PerCpuArray<MapData, u64> = filter.per_cpu_array(maps::TABLE_STATS)?;
    let mut values: Vec<u64> = stats
        .get(&table_stat::BUCKET_EVICTIONS, 0)
        .context("reading TABLE_STATS")?
        .to_vec();
    let Some(first) = values.first_mut() else {
        bail!("TABLE_STATS has no CPU");
    };
    *first += doomed.len() as u64;
    let values = PerCpuValues::try_from(values).context("building TABLE_STATS values")?;
    stats
        .set(table_stat::BUCKET_EVICTIONS, values, 0)
        .context("writing TABLE_STATS")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_is_a_power_of_two_of_at_least_two() {
        for ok in [2, 4, 131_072, 1_048_576, 1 << 31] {
            assert_eq!(check_capacity(ok), Ok(()), "{ok}");
        }
        for bad in [0, 1, 3, 1000, 1_000_000] {
            let err = check_capacity(bad).expect_err("refused");
            assert!(err.contains("power of two"), "{err}");
        }
    }

    #[test]
    fn set_of_follows_seed_and_mask() {
        let config = Config {
            bucket_seed: 7,
            bucket_mask: 15,
            ..Config::default()
        };
        let source = [1u8; 16];
        let set = set_of(&config, 3, &source);
        assert!(set < 16 && set.is_multiple_of(2));
        assert_eq!(set, bucket_set(7, 15, 3, &source_words(&source)));
    }
}
