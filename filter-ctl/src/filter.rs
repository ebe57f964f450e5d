//! Operations on a loaded filter through its pinned maps. Every command that
//! edits or reads state goes through [`Filter`], from any process and any
//! network namespace (bpffs is not namespaced).

use std::{
    fs::File,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd as _,
    time::Duration,
};

use anyhow::{Context as _, anyhow, bail};
use aya::{
    Pod,
    maps::{
        Array, Map, MapData, MapError, PerCpuArray,
        lpm_trie::{Key, LpmTrie},
    },
};
use filter_common::{
    Bucket, BucketKey, Config, Counter, Ipv4Bytes, Ipv6Bytes, ListEntry, ORIGIN_AUTO,
    ORIGIN_MANUAL, RuleCounter, maps, reason, table_stat,
};
use serde::Serialize;

use crate::{
    batch::{self, BatchError},
    cidr::Cidr,
    clock,
    pins::PinDir,
};

/// Which address list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListKind {
    Allow,
    Block,
}

impl ListKind {
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Allow => "allowlist",
            Self::Block => "blocklist",
        }
    }

    fn map_names(self) -> (&'static str, &'static str) {
        match self {
            Self::Allow => (maps::ALLOW_V4, maps::ALLOW_V6),
            Self::Block => (maps::BLOCK_V4, maps::BLOCK_V6),
        }
    }
}

/// One allow/block entry as listed.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ListedEntry {
    pub cidr: String,
    /// Seconds until the entry expires; absent for permanent entries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_in_secs: Option<u64>,
}

/// One automatic block as listed.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ListedAutoBlock {
    pub source: String,
    /// Rule whose limit the source exceeded (`default`, `tcp/25`, ...).
    pub rule: String,
    pub over_limit: u32,
    pub expires_in_secs: u64,
}

/// Counters summed over CPUs.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Stats {
    /// Packets and bytes per decision reason.
    pub reasons: std::collections::BTreeMap<String, CounterJson>,
    /// The program's own tables: `buckets_live`, `bucket_inserts`,
    /// `bucket_evictions` (inserts - live: buckets are only ever evicted),
    /// `autoblocks`, `autoblocks_failed`, `events_lost`.
    pub tables: std::collections::BTreeMap<String, u64>,
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

/// A loaded filter, reached through its pins.
pub struct Filter {
    pins: PinDir,
    /// Exclusive lock on the pin directory while this handle edits maps, so
    /// edits from several processes never interleave.
    _lock: Option<File>,
}

impl Filter {
    /// Opens the filter pinned under `pins` for reading.
    pub fn open(pins: &PinDir) -> anyhow::Result<Self> {
        pins.ensure_loaded()?;
        Ok(Self {
            pins: pins.clone(),
            _lock: None,
        })
    }

    /// Opens the filter for editing: takes the edit lock (waits for other editors).
    pub fn open_for_edit(pins: &PinDir) -> anyhow::Result<Self> {
        pins.ensure_loaded()?;
        let dir = pins.maps_dir();
        let lock = File::open(&dir).with_context(|| format!("opening {}", dir.display()))?;
        // SAFETY: valid fd owned by `lock`.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
            let err = std::io::Error::last_os_error();
            return Err(err).with_context(|| format!("locking {}", dir.display()));
        }
        Ok(Self {
            pins: pins.clone(),
            _lock: Some(lock),
        })
    }

    #[must_use]
    pub fn pins(&self) -> &PinDir {
        &self.pins
    }

    /// Opens one pinned map.
    pub fn map(&self, name: &str) -> anyhow::Result<Map> {
        let path = self.pins.map(name);
        let data =
            MapData::from_pin(&path).map_err(|e| privilege_hint(e, &path.display().to_string()))?;
        Map::from_map_data(data).with_context(|| format!("map {name} has an unexpected type"))
    }

    fn lpm<K: Pod, V: Pod>(&self, name: &str) -> anyhow::Result<LpmTrie<MapData, K, V>> {
        LpmTrie::try_from(self.map(name)?)
            .with_context(|| format!("map {name} is not the expected LPM trie"))
    }

    fn array<V: Pod>(&self, name: &str) -> anyhow::Result<Array<MapData, V>> {
        Array::try_from(self.map(name)?)
            .with_context(|| format!("map {name} is not the expected array"))
    }

    fn per_cpu_array<V: Pod>(&self, name: &str) -> anyhow::Result<PerCpuArray<MapData, V>> {
        PerCpuArray::try_from(self.map(name)?)
            .with_context(|| format!("map {name} is not the expected per-CPU array"))
    }

    // ---- allow and block lists -------------------------------------------

    /// Adds (or refreshes) every prefix with the same expiry. All or nothing:
    /// if the map fills up midway, the entries written so far are rolled back.
    ///
    /// Entries go in sorted (neighbouring prefixes share trie nodes, so the
    /// kernel's walk stays in cache) and in batches of one syscall each.
    pub fn list_insert(
        &self,
        kind: ListKind,
        cidrs: &[Cidr],
        ttl: Option<Duration>,
    ) -> anyhow::Result<()> {
        if kind == ListKind::Allow {
            // Raise the counts first: the program must not skip a non-empty allowlist.
            let (v4, v6) = self.allow_counts()?;
            let add = u32::try_from(cidrs.len()).unwrap_or(u32::MAX);
            self.write_allow_counts(v4.saturating_add(add), v6.saturating_add(add))?;
            let result = self.insert_entries(kind, cidrs, ttl);
            self.sync_allow_counts()?;
            return result;
        }
        self.insert_entries(kind, cidrs, ttl)
    }

    fn insert_entries(
        &self,
        kind: ListKind,
        cidrs: &[Cidr],
        ttl: Option<Duration>,
    ) -> anyhow::Result<()> {
        let (v4_name, v6_name) = kind.map_names();
        let mut v4: LpmTrie<MapData, Ipv4Bytes, ListEntry> = self.lpm(v4_name)?;
        let mut v6: LpmTrie<MapData, Ipv6Bytes, ListEntry> = self.lpm(v6_name)?;
        let expires_at_ns = clock::expiry_from_now(ttl);
        let entry = |prefix_len| ListEntry {
            expires_at_ns,
            prefix_len,
            origin: ORIGIN_MANUAL,
            ..ListEntry::default()
        };
        let mut sorted = cidrs.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let (mut keys4, mut values4, mut keys6, mut values6) = (vec![], vec![], vec![], vec![]);
        for cidr in &sorted {
            match *cidr {
                Cidr::V4 { addr, prefix } => {
                    keys4.push(Key::new(u32::from(prefix), addr));
                    values4.push(entry(prefix));
                }
                Cidr::V6 { addr, prefix } => {
                    keys6.push(Key::new(u32::from(prefix), addr));
                    values6.push(entry(prefix));
                }
            }
        }
        let mut undo4 = Vec::new();
        let mut undo6 = Vec::new();
        let result = self
            .insert_family(v4_name, &mut v4, &keys4, &values4, &mut undo4)
            .map_err(|e| (e, "IPv4"))
            .and_then(|()| {
                self.insert_family(v6_name, &mut v6, &keys6, &values6, &mut undo6)
                    .map_err(|e| (e, "IPv6"))
            });
        let Err((error, family)) = result else {
            return Ok(());
        };
        rollback(&mut v4, &undo4)?;
        rollback(&mut v6, &undo6)?;
        if matches!(error.raw_os_error(), Some(libc::ENOSPC | libc::E2BIG)) {
            bail!(
                "the {} has no room for {} more {family} entries; nothing from this command was applied. Remove entries, or recreate the filter with a larger --list-capacity",
                kind.name(),
                if family == "IPv4" {
                    keys4.len()
                } else {
                    keys6.len()
                }
            );
        }
        Err(anyhow::Error::new(error).context(format!(
            "adding {family} entries to the {}; nothing from this command was applied",
            kind.name()
        )))
    }

    /// Batched inserts. Existing keys are read first, so that the capacity
    /// is checked before anything changes and overwritten entries can be
    /// restored by a rollback (`undo`).
    fn insert_family<K: Pod + Eq + std::hash::Hash>(
        &self,
        name: &str,
        trie: &mut LpmTrie<MapData, K, ListEntry>,
        keys: &[Key<K>],
        values: &[ListEntry],
        undo: &mut Vec<(Key<K>, Option<ListEntry>)>,
    ) -> Result<(), std::io::Error> {
        const CHUNK: usize = 8192;
        if keys.is_empty() {
            return Ok(());
        }
        let data = MapData::from_pin(self.pins.map(name)).map_err(std::io::Error::other)?;
        let capacity = data.info().map_err(std::io::Error::other)?.max_entries() as usize;
        let mut existing = std::collections::HashSet::new();
        for key in trie.keys() {
            let key = key.map_err(std::io::Error::other)?;
            existing.insert((key.prefix_len(), key.data()));
        }
        let new = keys
            .iter()
            .filter(|k| !existing.contains(&(k.prefix_len(), k.data())))
            .count();
        if existing.len() + new > capacity {
            return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
        }
        let mut previous = Vec::with_capacity(keys.len());
        for key in keys {
            let old = if existing.contains(&(key.prefix_len(), key.data())) {
                Some(trie.get(key, 0).map_err(std::io::Error::other)?)
            } else {
                None
            };
            previous.push(old);
        }
        let mut start = 0;
        while start < keys.len() {
            let end = (start + CHUNK).min(keys.len());
            let result = batch::update(&data, &keys[start..end], &values[start..end], 0);
            let applied = match &result {
                Ok(()) => end - start,
                Err(BatchError { applied, .. }) => *applied,
            };
            undo.extend((start..start + applied).map(|i| (keys[i], previous[i])));
            if let Err(BatchError { error, .. }) = result {
                return Err(error);
            }
            start = end;
        }
        Ok(())
    }

    /// Removes exactly these prefixes. Fails, changing nothing, if any is absent.
    pub fn list_remove(&self, kind: ListKind, cidrs: &[Cidr]) -> anyhow::Result<()> {
        let (v4_name, v6_name) = kind.map_names();
        let mut v4: LpmTrie<MapData, Ipv4Bytes, ListEntry> = self.lpm(v4_name)?;
        let mut v6: LpmTrie<MapData, Ipv6Bytes, ListEntry> = self.lpm(v6_name)?;
        let present = self.list_entries_raw(kind)?;
        if let Some(missing) = cidrs.iter().find(|c| !present.iter().any(|(p, _)| p == *c)) {
            bail!(
                "{missing} is not on the {}; nothing was removed",
                kind.name()
            );
        }
        for cidr in cidrs {
            match *cidr {
                Cidr::V4 { addr, prefix } => v4.remove(&Key::new(u32::from(prefix), addr)),
                Cidr::V6 { addr, prefix } => v6.remove(&Key::new(u32::from(prefix), addr)),
            }
            .with_context(|| format!("removing {cidr} from the {}", kind.name()))?;
        }
        if kind == ListKind::Allow {
            self.sync_allow_counts()?;
        }
        Ok(())
    }

    /// Entries in the IPv4 and IPv6 allowlists, as the program was last told.
    fn allow_counts(&self) -> anyhow::Result<(u32, u32)> {
        let config = self.config()?;
        Ok((config.allow_v4_entries, config.allow_v6_entries))
    }

    fn write_allow_counts(&self, v4: u32, v6: u32) -> anyhow::Result<()> {
        self.update_config(|config| {
            config.allow_v4_entries = v4;
            config.allow_v6_entries = v6;
            Ok(())
        })
        .map(drop)
    }

    /// Reads CONFIG, lets `edit` change it (or refuse, changing nothing) and
    /// writes it back. Callers hold the edit lock. Returns the new CONFIG.
    pub fn update_config(
        &self,
        edit: impl FnOnce(&mut Config) -> anyhow::Result<()>,
    ) -> anyhow::Result<Config> {
        let mut config: Array<MapData, Config> = self.array(maps::CONFIG)?;
        let mut current = config.get(&0, 0).context("reading CONFIG")?;
        edit(&mut current)?;
        config.set(0, current, 0).context("writing CONFIG")?;
        Ok(current)
    }

    /// Tells the program how many allowlist entries there are (0 lets it
    /// skip the lookup). Called after every allowlist edit, under the edit lock.
    fn sync_allow_counts(&self) -> anyhow::Result<()> {
        let v4: LpmTrie<MapData, Ipv4Bytes, ListEntry> = self.lpm(maps::ALLOW_V4)?;
        let v6: LpmTrie<MapData, Ipv6Bytes, ListEntry> = self.lpm(maps::ALLOW_V6)?;
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        self.write_allow_counts(count(v4.keys().count()), count(v6.keys().count()))
    }

    /// Every entry, expired ones included, as stored.
    pub fn list_entries_raw(&self, kind: ListKind) -> anyhow::Result<Vec<(Cidr, ListEntry)>> {
        let (v4_name, v6_name) = kind.map_names();
        let v4: LpmTrie<MapData, Ipv4Bytes, ListEntry> = self.lpm(v4_name)?;
        let v6: LpmTrie<MapData, Ipv6Bytes, ListEntry> = self.lpm(v6_name)?;
        let mut out = Vec::new();
        for item in v4.iter() {
            let (key, value) = item.with_context(|| format!("reading {v4_name}"))?;
            out.push((
                Cidr::new(
                    IpAddr::V4(Ipv4Addr::from(key.data())),
                    prefix_u8(key.prefix_len()),
                ),
                value,
            ));
        }
        for item in v6.iter() {
            let (key, value) = item.with_context(|| format!("reading {v6_name}"))?;
            out.push((
                Cidr::new(
                    IpAddr::V6(Ipv6Addr::from(key.data())),
                    prefix_u8(key.prefix_len()),
                ),
                value,
            ));
        }
        out.sort_by_key(|(cidr, _)| *cidr);
        Ok(out)
    }

    /// Active entries with their remaining time.
    pub fn list_entries(&self, kind: ListKind) -> anyhow::Result<Vec<ListedEntry>> {
        let now = clock::monotonic_ns();
        Ok(self
            .list_entries_raw(kind)?
            .into_iter()
            .filter(|(_, e)| e.origin == ORIGIN_MANUAL && e.is_active(now))
            .map(|(cidr, e)| ListedEntry {
                cidr: cidr.to_string(),
                expires_in_secs: clock::remaining(e.expires_at_ns, now).map(|d| d.as_secs()),
            })
            .collect())
    }

    /// Deletes expired list entries (the kernel already ignores them). Returns how many.
    pub fn sweep_expired(&self) -> anyhow::Result<usize> {
        let now = clock::monotonic_ns();
        let mut removed = 0;
        for kind in [ListKind::Allow, ListKind::Block] {
            let expired: Vec<Cidr> = self
                .list_entries_raw(kind)?
                .into_iter()
                .filter(|(_, e)| !e.is_active(now))
                .map(|(c, _)| c)
                .collect();
            if !expired.is_empty() {
                removed += expired.len();
                self.list_remove(kind, &expired)?;
            }
        }
        Ok(removed)
    }

    // ---- automatic blocks --------------------------------------------------

    pub fn config(&self) -> anyhow::Result<Config> {
        let config: Array<MapData, Config> = self.array(maps::CONFIG)?;
        config.get(&0, 0).context("reading CONFIG")
    }

    /// Active automatic blocks (blocklist entries added by the program).
    pub fn autoblocks(&self) -> anyhow::Result<Vec<ListedAutoBlock>> {
        let rules = crate::limits::RuleTable::read(self)?;
        let now = clock::monotonic_ns();
        Ok(self
            .list_entries_raw(ListKind::Block)?
            .into_iter()
            .filter(|(_, e)| e.origin == ORIGIN_AUTO && e.is_active(now))
            .map(|(cidr, e)| ListedAutoBlock {
                source: cidr.to_string(),
                rule: rules.describe(u32::from(e.rule)),
                over_limit: e.over_limit,
                expires_in_secs: Duration::from_nanos(e.expires_at_ns.saturating_sub(now))
                    .as_secs(),
            })
            .collect())
    }

    /// The prefix an automatic block of `cidr`'s address would have (the
    /// address masked to the rate-limit aggregation prefix).
    pub fn autoblock_prefix(&self, cidr: &Cidr) -> anyhow::Result<Cidr> {
        let config = self.config()?;
        Ok(match cidr {
            Cidr::V4 { .. } => Cidr::new(cidr.ip(), prefix_u8(config.ipv4_source_prefix.min(32))),
            Cidr::V6 { .. } => Cidr::new(cidr.ip(), prefix_u8(config.ipv6_source_prefix.min(128))),
        })
    }

    /// Removes each prefix from the blocklist and lifts the automatic block
    /// of each address, reading the list once. Fails, changing nothing, if a
    /// token is neither listed nor automatically blocked. Returns the entries
    /// removed.
    pub fn unblock(&self, cidrs: &[Cidr]) -> anyhow::Result<Vec<Cidr>> {
        let entries = self.list_entries_raw(ListKind::Block)?;
        let now = clock::monotonic_ns();
        let mut remove: Vec<Cidr> = Vec::new();
        for cidr in cidrs {
            let auto = self.autoblock_prefix(cidr)?;
            let lifts = |(listed, entry): &&(Cidr, ListEntry)| {
                listed == cidr
                    || (*listed == auto && entry.origin == ORIGIN_AUTO && entry.is_active(now))
            };
            let hits: Vec<Cidr> = entries.iter().filter(lifts).map(|(c, _)| *c).collect();
            if hits.is_empty() {
                bail!(
                    "{cidr} is neither on the blocklist nor automatically blocked; nothing was changed"
                );
            }
            for hit in hits {
                if !remove.contains(&hit) {
                    remove.push(hit);
                }
            }
        }
        self.list_remove(ListKind::Block, &remove)?;
        Ok(remove)
    }

    // ---- counters ------------------------------------------------------------

    pub fn stats(&self) -> anyhow::Result<Stats> {
        let stats: PerCpuArray<MapData, Counter> = self.per_cpu_array(maps::STATS)?;
        let mut out = Stats::default();
        for (index, name) in reason::NAMES.iter().enumerate() {
            let index = u32::try_from(index).expect("few reasons");
            let per_cpu = stats
                .get(&index, 0)
                .with_context(|| format!("reading STATS[{name}]"))?;
            let sum = per_cpu.iter().fold(Counter::default(), |acc, c| Counter {
                packets: acc.packets + c.packets,
                bytes: acc.bytes + c.bytes,
            });
            out.reasons.insert((*name).to_string(), sum.into());
        }
        let buckets: aya::maps::HashMap<MapData, BucketKey, Bucket> =
            aya::maps::HashMap::try_from(self.map(maps::BUCKETS)?)
                .context("BUCKETS is not the expected hash map")?;
        let live = buckets.keys().filter(Result::is_ok).count() as u64;
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

    /// Per-rule counters summed over CPUs, by slot.
    pub fn rule_counters(&self, slot: u32) -> anyhow::Result<RuleCounter> {
        let stats: PerCpuArray<MapData, RuleCounter> = self.per_cpu_array(maps::RULE_STATS)?;
        let per_cpu = stats.get(&slot, 0).context("reading RULE_STATS")?;
        Ok(per_cpu
            .iter()
            .fold(RuleCounter::default(), |acc, c| RuleCounter {
                passed: Counter {
                    packets: acc.passed.packets + c.passed.packets,
                    bytes: acc.passed.bytes + c.passed.bytes,
                },
                dropped: Counter {
                    packets: acc.dropped.packets + c.dropped.packets,
                    bytes: acc.dropped.bytes + c.dropped.bytes,
                },
            }))
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

fn prefix_u8(prefix_len: u32) -> u8 {
    u8::try_from(prefix_len).unwrap_or(u8::MAX)
}

/// Undoes inserts in reverse order: restores overwritten entries, removes new ones.
fn rollback<K: Pod>(
    trie: &mut LpmTrie<MapData, K, ListEntry>,
    undo: &[(Key<K>, Option<ListEntry>)],
) -> anyhow::Result<()> {
    for (key, previous) in undo.iter().rev() {
        match previous {
            Some(entry) => trie.insert(key, entry, 0),
            None => trie.remove(key),
        }
        .context("rolling back a partly applied list edit")?;
    }
    Ok(())
}

/// The errno of a failed map syscall.
#[must_use]
pub fn errno(err: &MapError) -> Option<i32> {
    match err {
        MapError::SyscallError(e) => e.io_error.raw_os_error(),
        _ => None,
    }
}

/// Turns EPERM/EACCES into a message that says what to do.
fn privilege_hint(err: MapError, what: &str) -> anyhow::Error {
    match errno(&err) {
        Some(libc::EPERM | libc::EACCES) => anyhow!(
            "permission denied opening {what}: filter-ctl needs root (CAP_BPF and CAP_NET_ADMIN)"
        ),
        Some(libc::ENOENT) => anyhow!(
            "{what} does not exist: no filter is loaded there; start one with `filter-ctl run --iface IF`"
        ),
        _ => anyhow::Error::new(err).context(format!("opening {what}")),
    }
}

/// The prefix an aggregated rate-limit key stands for.
#[must_use]
pub fn source_cidr(source: Ipv6Bytes, config: &Config) -> Cidr {
    let v6 = Ipv6Addr::from(source);
    match v6.to_ipv4_mapped() {
        Some(v4) => Cidr::new(
            IpAddr::V4(v4),
            u8::try_from(config.ipv4_source_prefix.min(32)).unwrap_or(32),
        ),
        None => Cidr::new(
            IpAddr::V6(v6),
            u8::try_from(config.ipv6_source_prefix.min(128)).unwrap_or(128),
        ),
    }
}
