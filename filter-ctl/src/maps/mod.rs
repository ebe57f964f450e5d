//! Access to a loaded filter through its pins: open and lock them, typed map
//! handles, list and rule I/O, one counters snapshot. Every command that
//! edits or reads state goes through [`Filter`], from any process and any
//! network namespace (bpffs is not namespaced).

pub mod barrier;
pub mod batch;
pub mod buckets;
pub mod counters;
pub mod events;
pub mod hosts;
pub mod journal;
pub mod lists;
pub mod loader;
pub mod lock;
pub mod mapping;
pub mod pins;
pub mod rules;
pub mod sampling;
pub mod status;
pub mod summary;

use std::time::Duration;

use anyhow::Context as _;
use aya::{
    Pod,
    maps::{Array, Map, MapData, MapError, PerCpuArray, PerCpuValues, lpm_trie::LpmTrie},
};
use filter_common::{Config, maps};

use crate::error::Error;
use lock::DirLock;
use pins::PinDir;

pub use crate::spec::listfile::ListKind;

impl ListKind {
    pub(crate) fn map_names(self) -> (&'static str, &'static str) {
        Tries::from(self).map_names()
    }
}

/// The pair of tries (IPv4, IPv6) list entries live in: the two lists, and
/// the blocks of a shadow policy, which the program counts and never enforces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tries {
    Allow,
    Block,
    ShadowBlock,
}

impl Tries {
    pub(crate) fn map_names(self) -> (&'static str, &'static str) {
        match self {
            Self::Allow => (maps::ALLOW_V4, maps::ALLOW_V6),
            Self::Block => (maps::BLOCK_V4, maps::BLOCK_V6),
            Self::ShadowBlock => (maps::SHADOW_BLOCK_V4, maps::SHADOW_BLOCK_V6),
        }
    }

    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Allow => "allowlist",
            Self::Block => "blocklist",
            Self::ShadowBlock => "shadow blocklist",
        }
    }
}

impl From<ListKind> for Tries {
    fn from(kind: ListKind) -> Self {
        match kind {
            ListKind::Allow => Self::Allow,
            ListKind::Block => Self::Block,
        }
    }
}

/// Hosts an edit or lookup touches from which it maps the whole host
/// table at once rather than a window around each host.
const MAP_WHOLE_TABLE_FROM: usize = 64;

/// A loaded filter, reached through its pins.
pub struct Filter {
    pins: PinDir,
    /// The blocklist's host table, mapped at its first use: mapping it
    /// costs about 1.5 ms per 20 MiB of table, once per handle.
    hosts: std::sync::OnceLock<hosts::HostTable>,
    /// `BLOCK_SUMMARY`, mapped at its first use.
    summary: std::sync::OnceLock<summary::Summary>,
    /// Exclusive lock on the maps directory while this handle edits maps, so
    /// edits from several processes never interleave.
    lock: Option<DirLock>,
}

impl Filter {
    /// Opens the filter pinned under `pins` for reading.
    pub fn open(pins: &PinDir) -> anyhow::Result<Self> {
        pins.ensure_loaded()?;
        Ok(Self {
            pins: pins.clone(),
            hosts: std::sync::OnceLock::new(),
            summary: std::sync::OnceLock::new(),
            lock: None,
        })
    }

    /// Opens the filter for editing: takes the edit lock (waiting at most
    /// `timeout` for other editors), then completes the rollback of a list
    /// load that an earlier process left unfinished.
    pub fn open_for_edit(pins: &PinDir, timeout: Duration) -> anyhow::Result<Self> {
        pins.ensure_loaded()?;
        let lock = DirLock::acquire(&pins.maps_dir(), "the edit lock", timeout)?;
        let filter = Self {
            pins: pins.clone(),
            hosts: std::sync::OnceLock::new(),
            summary: std::sync::OnceLock::new(),
            lock: Some(lock),
        };
        filter.check_initialized()?;
        if let Some(report) = journal::repair(&filter)? {
            log::warn!("{report}");
        }
        Ok(filter)
    }

    /// Like [`Filter::open_for_edit`], but gives up at once (`None`) if
    /// another process holds the edit lock: for the controller's periodic
    /// work, which must never stall.
    pub fn try_open_for_edit(pins: &PinDir) -> anyhow::Result<Option<Self>> {
        pins.ensure_loaded()?;
        let Some(lock) = DirLock::try_acquire(&pins.maps_dir())? else {
            return Ok(None);
        };
        let filter = Self {
            pins: pins.clone(),
            hosts: std::sync::OnceLock::new(),
            summary: std::sync::OnceLock::new(),
            lock: Some(lock),
        };
        filter.check_initialized()?;
        if let Some(report) = journal::repair(&filter)? {
            log::warn!("{report}");
        }
        Ok(Some(filter))
    }

    /// Refuses to edit maps that `loader::load` has pinned but not yet
    /// initialized: CONFIG without the tables' seeds (a host written now
    /// would be hashed to the wrong set) and a write of CONFIG to come
    /// (which would undo this edit's counts). The loader initializes under
    /// the edit lock, so its holder finds CONFIG done or not begun.
    fn check_initialized(&self) -> anyhow::Result<()> {
        if self.config()?.host_mask == 0 {
            return Err(Error::NotLoaded(format!(
                "the filter under {} is still starting (its maps are not initialized yet); try again in a moment, or start `filter-ctl run` again if none is running",
                self.pins.root().display()
            ))
            .into());
        }
        Ok(())
    }

    /// The blocklist's host table (`BLOCK_HOSTS`), mapped once per handle.
    pub fn host_table(&self) -> anyhow::Result<&hosts::HostTable> {
        if let Some(table) = self.hosts.get() {
            return Ok(table);
        }
        let table = hosts::HostTable::open(self)?;
        Ok(self.hosts.get_or_init(|| table))
    }

    /// The host table for an edit or a lookup of `hosts` hosts: from
    /// [`MAP_WHOLE_TABLE_FROM`] on, mapped whole at once rather than a
    /// window around each host.
    pub fn host_table_for(&self, hosts: usize) -> anyhow::Result<&hosts::HostTable> {
        let table = self.host_table()?;
        if hosts > MAP_WHOLE_TABLE_FROM {
            table.map_whole()?;
        }
        Ok(table)
    }

    #[must_use]
    pub fn pins(&self) -> &PinDir {
        &self.pins
    }

    /// Whether this handle holds the edit lock.
    #[must_use]
    pub fn is_editing(&self) -> bool {
        self.lock.is_some()
    }

    /// Opens one pinned map.
    pub fn map(&self, name: &str) -> anyhow::Result<Map> {
        let path = self.pins.map(name);
        let data =
            MapData::from_pin(&path).map_err(|e| open_error(e, &path.display().to_string()))?;
        Map::from_map_data(data).with_context(|| format!("map {name} has an unexpected type"))
    }

    /// The pinned map's raw handle (for batch syscalls and map info).
    pub fn map_data(&self, name: &str) -> anyhow::Result<MapData> {
        let path = self.pins.map(name);
        MapData::from_pin(&path).map_err(|e| open_error(e, &path.display().to_string()))
    }

    pub fn lpm<K: Pod, V: Pod>(&self, name: &str) -> anyhow::Result<LpmTrie<MapData, K, V>> {
        LpmTrie::try_from(self.map(name)?)
            .with_context(|| format!("map {name} is not the expected LPM trie"))
    }

    pub fn array<V: Pod>(&self, name: &str) -> anyhow::Result<Array<MapData, V>> {
        Array::try_from(self.map(name)?)
            .with_context(|| format!("map {name} is not the expected array"))
    }

    pub fn per_cpu_array<V: Pod>(&self, name: &str) -> anyhow::Result<PerCpuArray<MapData, V>> {
        PerCpuArray::try_from(self.map(name)?)
            .with_context(|| format!("map {name} is not the expected per-CPU array"))
    }

    /// Sets the entries `indexes` of the per-CPU array `name` to
    /// `V::default()` on every CPU.
    pub fn zero_per_cpu<V: Pod + Default>(
        &self,
        name: &str,
        indexes: impl IntoIterator<Item = u32>,
    ) -> anyhow::Result<()> {
        let mut map: PerCpuArray<MapData, V> = self.per_cpu_array(name)?;
        let cpus = aya::util::nr_cpus()
            .map_err(|(_, e)| e)
            .context("counting CPUs")?;
        for index in indexes {
            let zeros = PerCpuValues::try_from(vec![V::default(); cpus])
                .with_context(|| format!("building zero values of {name}"))?;
            map.set(index, zeros, 0)
                .with_context(|| format!("resetting {name}"))?;
        }
        Ok(())
    }

    pub fn config(&self) -> anyhow::Result<Config> {
        let config: Array<MapData, Config> = self.array(maps::CONFIG)?;
        config.get(&0, 0).context("reading CONFIG")
    }

    /// Reads CONFIG, lets `edit` change it (or refuse, changing nothing) and
    /// writes it back. Callers hold the edit lock. Returns the new CONFIG.
    pub fn update_config(
        &self,
        edit: impl FnOnce(&mut Config) -> anyhow::Result<()>,
    ) -> anyhow::Result<Config> {
        debug_assert!(self.is_editing(), "CONFIG edits need the edit lock");
        let mut config: Array<MapData, Config> = self.array(maps::CONFIG)?;
        let mut current = config.get(&0, 0).context("reading CONFIG")?;
        edit(&mut current)?;
        config.set(0, current, 0).context("writing CONFIG")?;
        Ok(current)
    }
}

/// The errno of a failed map syscall.
#[must_use]
pub fn errno(err: &MapError) -> Option<i32> {
    match err {
        MapError::SyscallError(e) => e.io_error.raw_os_error(),
        _ => None,
    }
}

/// Whether a map syscall failed because the map is full.
#[must_use]
pub fn is_full(err: &MapError) -> bool {
    matches!(errno(err), Some(libc::ENOSPC | libc::E2BIG))
}

/// Turns EPERM/EACCES and ENOENT into typed errors that say what to do.
fn open_error(err: MapError, what: &str) -> anyhow::Error {
    match errno(&err) {
        Some(libc::EPERM | libc::EACCES) => Error::Permission(format!(
            "permission denied opening {what}: filter-ctl needs root (CAP_BPF and CAP_NET_ADMIN)"
        ))
        .into(),
        Some(libc::ENOENT) => Error::NotLoaded(format!(
            "{what} does not exist: no filter is loaded there; start one with `filter-ctl run --iface IF`"
        ))
        .into(),
        _ => anyhow::Error::new(err).context(format!("opening {what}")),
    }
}
