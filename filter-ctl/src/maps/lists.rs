//! The allow and block lists: edits (all or nothing, journaled, with a
//! rule for entries that exist already), listings, expiry sweeps, and the
//! automatic blocks that the program adds to the blocklist.

use std::{
    borrow::Cow,
    collections::{HashMap, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use anyhow::Context as _;
use aya::{
    Pod,
    maps::{
        MapData,
        lpm_trie::{Key, LpmTrie},
    },
};
use filter_common::{
    Ipv4Bytes, Ipv6Bytes, ListEntry, ORIGIN_AUTO, ORIGIN_CLI, ORIGIN_CROWDSEC, ORIGIN_POLICY,
};
use serde::Serialize;

use super::{
    Filter, ListKind, Tries, batch,
    hosts::{Placed, TableKey, table_key},
    journal::{Journal, Record},
    rules::RuleTable,
    summary::{self, SummaryUse},
};
use crate::{clock, error::Error, spec::cidr::Cidr};

/// What to do with an entry that is already on the list.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Merge {
    /// The later expiry wins: permanent beats any TTL, a longer TTL beats
    /// a shorter one. Re-adding never shortens an entry.
    #[default]
    KeepLonger,
    /// The new expiry replaces the old one, shorter or not (`--replace`).
    Replace,
}

/// What an insert did, entry by entry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InsertReport {
    /// Not on the list before.
    pub added: Vec<Cidr>,
    /// On the list, now with the new expiry (longer, or `--replace`).
    pub updated: Vec<Cidr>,
    /// On the list already with a later (or no) expiry: left as it was.
    /// The second field is the remaining time, `None` for permanent.
    pub kept: Vec<(Cidr, Option<Duration>)>,
}

/// Entries with their stored values.
type Entries = Vec<(Cidr, ListEntry)>;

/// The prefixes of `entries` active at `now`.
fn active_cidrs(entries: &[(Cidr, ListEntry)], now: u64) -> impl Iterator<Item = &Cidr> {
    entries
        .iter()
        .filter(move |(_, e)| e.is_active(now))
        .map(|(c, _)| c)
}

/// Entries per list and family (active ones), as of a sweep.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ListCounts {
    pub allow_v4: u64,
    pub allow_v6: u64,
    pub block_v4: u64,
    pub block_v6: u64,
}

/// What a sweep's walk found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sweep {
    /// Active entries per list.
    pub counts: ListCounts,
    /// Expired entries per list, for [`Filter::remove_expired`].
    pub expired: Vec<(ListKind, Vec<Cidr>)>,
    /// `BLOCK_HOSTS` sets marked overflowed whose hosts the tries no longer
    /// hold, with `Config::host_overflows` as it was before the scan, for
    /// [`Filter::clear_stale_overflows`].
    pub stale_overflows: Option<(u32, Vec<u32>)>,
    /// Whether `BLOCK_HOSTS` held fewer entries (or prefixes) than `Config`
    /// counted when the scan began: the counts drift only upward (an edit
    /// killed between raising them and writing, a failed write), and a
    /// count above the truth costs every packet a probe. For
    /// [`Filter::resync_table_counts`].
    pub table_counts_high: bool,
    /// Whether the generation of `BLOCK_SUMMARY` in use carries enough
    /// stale marks, against what the blocklist tries' and the host table's
    /// active entries need, to be rebuilt
    /// ([`SummaryUse::worth_rebuilding`]), or the table's length masks do
    /// ([`Summary::lengths_stale`](summary::Summary::lengths_stale)), for
    /// [`Filter::rebuild_stale_summary`].
    pub summary_stale: bool,
    /// Whether that generation lacked a mark the tries' or the table's
    /// active entries need ([`Summary::lacks`](summary::Summary::lacks)):
    /// their sources went unblocked until [`Filter::rebuild_stale_summary`]
    /// rebuilds it.
    pub summary_lacking: bool,
}

/// What [`Filter::unblock`] changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Unblocked {
    /// The named prefixes, removed wherever they were (with an automatic
    /// block of the same prefix).
    pub removed: Vec<Cidr>,
    /// Automatic blocks lifted at a named address's aggregate (its /64, or
    /// the configured IPv4 and IPv6 prefixes), not named themselves: only
    /// the automatic block is gone; another entry there may still block.
    pub lifted: Vec<Cidr>,
}

/// One allow/block entry as listed.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ListedEntry {
    /// As text (`198.18.0.1/32`), written without a `String` per entry.
    #[serde(serialize_with = "cidr_as_text")]
    pub cidr: Cidr,
    /// Who added it: `cli`, `policy` or `crowdsec` (automatic blocks are listed apart).
    pub origin: &'static str,
    /// A shadow entry: it counts would-be drops and blocks nothing.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub shadow: bool,
    /// Seconds until the entry expires; absent for permanent entries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_in_secs: Option<u64>,
}

fn cidr_as_text<S: serde::Serializer>(cidr: &Cidr, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&cidr.text())
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

impl Filter {
    /// Adds every prefix with the same expiry (`ttl`; `None` = permanent).
    /// Entries already listed follow `merge`. All or nothing: if the map
    /// has no room, nothing is written; a failure midway is rolled back, and
    /// a kill midway is rolled back by the next editor (see `journal`).
    ///
    /// Entries go in sorted (neighbouring prefixes share trie nodes) and in
    /// batches of one syscall each.
    pub fn list_insert(
        &self,
        kind: ListKind,
        cidrs: &[Cidr],
        ttl: Option<Duration>,
        merge: Merge,
    ) -> anyhow::Result<InsertReport> {
        self.list_insert_with(kind, cidrs, ttl, merge, |_| ())
            .map(|(report, ())| report)
    }

    /// [`Self::list_insert`], running `alongside` on the prefixes the edit
    /// adds or updates (added, then updated) while the kernel writes go on:
    /// a large load encodes its state record on the CPU the writes leave
    /// idle. Its result is returned only if the edit succeeded.
    pub fn list_insert_with<T: Send>(
        &self,
        kind: ListKind,
        cidrs: &[Cidr],
        ttl: Option<Duration>,
        merge: Merge,
        alongside: impl FnOnce(&[Cidr]) -> T + Send,
    ) -> anyhow::Result<(InsertReport, T)> {
        debug_assert!(self.is_editing(), "list edits need the edit lock");
        let now = clock::monotonic_ns();
        let expires_at_ns = clock::expiry_from_now(ttl);
        let sorted = sorted_unique(cidrs);
        let before = self.stored_at(kind, &sorted)?;
        // Sized for the usual case, a load of new entries (a million of
        // them grew each vector twenty times).
        let mut report = InsertReport {
            added: Vec::with_capacity(sorted.len()),
            ..InsertReport::default()
        };
        let mut writes: Vec<(Cidr, ListEntry)> = Vec::with_capacity(sorted.len());
        // Automatic blocks of hosts that an operator's block replaces.
        let mut superseded_autos: Vec<Cidr> = Vec::new();
        let mut records = Vec::with_capacity(sorted.len());
        for (cidr, previous) in sorted.iter().zip(before) {
            let new = ListEntry {
                expires_at_ns,
                prefix_len: cidr.prefix(),
                origin: ORIGIN_CLI,
                ..ListEntry::default()
            };
            let active = previous.filter(|p| p.is_active(now));
            match active {
                None => report.added.push(*cidr),
                Some(old) if merge == Merge::KeepLonger && !lasts_longer(&new, &old) => {
                    report
                        .kept
                        .push((*cidr, clock::remaining(old.expires_at_ns, now)));
                    continue;
                }
                Some(_) => report.updated.push(*cidr),
            }
            records.push(record(cidr, previous));
            if previous.is_some_and(|p| p.origin == ORIGIN_AUTO) && table_key(cidr).is_some() {
                superseded_autos.push(*cidr);
            }
            writes.push((*cidr, new));
        }
        if records.is_empty() {
            let out = alongside(&[]);
            return Ok((report, out));
        }
        // What `alongside` gets: in a load of new entries, the added ones.
        let changed: Cow<'_, [Cidr]> = if report.updated.is_empty() {
            Cow::Borrowed(&report.added)
        } else {
            Cow::Owned(
                report
                    .added
                    .iter()
                    .chain(&report.updated)
                    .copied()
                    .collect(),
            )
        };
        if kind == ListKind::Allow {
            // Raise the counts first, by the keys that are new: the program
            // must not skip a non-empty allowlist. Counting the keys instead
            // would walk the whole list on every edit.
            let (v4_count, v6_count) = self.allow_counts()?;
            let new = |family| u32::try_from(count_new(&records, family)).unwrap_or(u32::MAX);
            self.write_allow_counts(
                v4_count.saturating_add(new(4)),
                v6_count.saturating_add(new(6)),
            )?;
        }
        let write = || {
            self.write_tries_and_hosts(kind.into(), writes)
                .and_then(|in_table| {
                    if superseded_autos.is_empty() {
                        return Ok(());
                    }
                    // A host's automatic block that this edit replaced in the table
                    // (in a trie the write replaced it): one entry per host, as before.
                    let in_table: HashSet<Cidr> = in_table.into_iter().collect();
                    let gone: Vec<Cidr> = superseded_autos
                        .into_iter()
                        .filter(|c| in_table.contains(c))
                        .collect();
                    self.delete_from_tries(kind.into(), &gone)
                })
        };
        // The journal first, whole, then the writes.
        let begin_and_write = || Journal::begin(self, kind, &records).map(|j| (j, write()));
        let (written, out) = if changed.len() < ALONGSIDE_FROM {
            let out = alongside(&changed);
            (begin_and_write(), out)
        } else {
            // From the journal on: the other CPU is idle while it is
            // written, and while the writes are prepared.
            std::thread::scope(|scope| {
                let side = scope.spawn(|| alongside(&changed));
                let written = begin_and_write();
                let out = side
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                (written, out)
            })
        };
        let (journal, result) = written?;
        if let Err(error) = result {
            self.undo(kind, &records)
                .context("rolling back a partly applied list edit")?;
            journal.finish()?;
            if error
                .downcast_ref::<Error>()
                .is_some_and(|e| matches!(e, Error::MapFull(_)))
            {
                // The kernel refuses a new entry once the trie is full: the
                // capacity is known without counting the entries.
                return Err(Error::MapFull(format!(
                    "the {} has no room for {} new IPv4 and {} new IPv6 entries (capacity {} per family); nothing from this command was applied. Remove entries, or recreate the filter with a larger --list-capacity",
                    kind.name(),
                    count_new(&records, 4),
                    count_new(&records, 6),
                    self.map_data(kind.map_names().0)?
                        .info()
                        .map_or(0, |i| i.max_entries()),
                ))
                .into());
            }
            return Err(error.context(format!(
                "adding entries to the {}; nothing from this command was applied",
                kind.name()
            )));
        }
        journal.finish()?;
        Ok((report, out))
    }

    /// Writes `entries` as given: the blocklist's hosts into `BLOCK_HOSTS`
    /// where they are or fit (see `hosts`), everything else into the tries.
    /// Returns the hosts now in the table.
    ///
    /// The kernel's trie inserts are most of a large load, and the two
    /// families' tries have a lock each, so two threads write: one the IPv6
    /// trie (its prefixes, then the hosts that did not fit in the table),
    /// this one the hosts and then the IPv4 trie.
    fn write_tries_and_hosts(&self, tries: Tries, entries: Entries) -> anyhow::Result<Vec<Cidr>> {
        let (hosts, prefixes): (Entries, Entries) = entries.into_iter().partition(|(c, e)| {
            tries == Tries::Block && table_key(c).is_some() && e.origin != ORIGIN_AUTO
        });
        if tries == Tries::Block {
            // An automatic block written for a host (a policy's fallback to
            // what was there before) replaces whatever the host had, as a
            // write into one trie did: out of the table.
            let autos: Vec<Cidr> = prefixes
                .iter()
                .filter(|(c, _)| table_key(c).is_some())
                .map(|(c, _)| *c)
                .collect();
            self.remove_hosts(&autos)?;
        }
        if tries == Tries::Block && !prefixes.is_empty() {
            // Marked before they are written: the program must not skip a
            // trie that holds them.
            self.summary()?.mark(prefixes.iter().map(|(c, _)| c))?;
        }
        let (v4_name, v6_name) = tries.map_names();
        let (v4, v6) = split_families(&prefixes);
        std::thread::scope(|scope| {
            let (hosts_v6, overflow_v6) = std::sync::mpsc::channel::<Batch<Ipv6Bytes>>();
            let v6_writer = scope.spawn(move || {
                self.write_family(v6_name, &v6)?;
                // The hosts that did not fit (none if placing them failed).
                let overflow = overflow_v6.recv().unwrap_or_default();
                self.write_family(v6_name, &overflow)
            });
            // The hosts that did not fit go to the tries: marked first.
            let placed = self.write_hosts(hosts).and_then(|(in_table, overflow)| {
                if !overflow.is_empty() {
                    self.summary()?.mark(overflow.iter().map(|(c, _)| c))?;
                }
                Ok((in_table, overflow))
            });
            let (in_table, overflow) = match placed {
                Ok((in_table, overflow)) => (Ok(in_table), overflow),
                Err(e) => (Err(e), Vec::new()),
            };
            let (overflow_v4, overflow_v6) = split_families(&overflow);
            let _ = hosts_v6.send(overflow_v6);
            let written_v4 = self
                .write_family(v4_name, &v4)
                .and_then(|()| self.write_family(v4_name, &overflow_v4));
            let written_v6 = v6_writer
                .join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("the IPv6 writer panicked")));
            if !overflow.is_empty() {
                // Counted even if a write failed midway: some hosts may be
                // in a trie now, and a sweep must not clear their sets' marks.
                self.count_overflow()?;
            }
            written_v4.and(written_v6).and(in_table)
        })
    }

    /// Puts `hosts` (the blocklist's) into `BLOCK_HOSTS`: into the slot that
    /// holds the host, else a free slot of its set, unless the set has
    /// overflowed (a host missing from it may be in the trie: it goes
    /// there). Returns the hosts written to the table and those for the
    /// tries.
    fn write_hosts(&self, hosts: Entries) -> anyhow::Result<(Vec<Cidr>, Entries)> {
        let mut in_table = Vec::new();
        let mut rest = Vec::new();
        if hosts.is_empty() {
            return Ok((in_table, rest));
        }
        let table = self.host_table_for(hosts.len())?;
        // Each key's set, known ahead, so that the sets a few keys on are
        // fetched while this one is placed.
        let keys: Vec<Option<(TableKey, u32)>> = hosts
            .iter()
            .map(|(c, _)| table_key(c).map(|k| (k, table.set_of(&k))))
            .collect();
        // Raised first, by every entry (the program must not skip a table
        // with entries), and lowered afterwards by those that were not new.
        let mut raised = TableCount::default();
        for (key, _) in keys.iter().flatten() {
            raised.add(key);
        }
        self.add_to_table_count(raised, TableCount::default())?;
        let summary = self.summary()?;
        let mut new = TableCount::default();
        for (i, (cidr, entry)) in hosts.into_iter().enumerate() {
            if let Some(Some((_, ahead))) = keys.get(i + PREFETCH_AHEAD) {
                table.prefetch(*ahead);
            }
            let Some((key, first)) = keys[i] else {
                continue;
            };
            // Marked before it is placed: the program must not skip the
            // probes of a source the table holds.
            match table.place_in(first, &key, entry, || summary.mark_table_entry(&cidr))? {
                Placed::Trie => rest.push((cidr, entry)),
                placed => {
                    if placed == Placed::New {
                        new.add(&key);
                    }
                    in_table.push(cidr);
                }
            }
        }
        self.add_to_table_count(TableCount::default(), raised.minus(new))?;
        Ok((in_table, rest))
    }

    /// Raises the program's counts of used `BLOCK_HOSTS` slots
    /// (`Config::block_hosts`, `Config::table_prefixes`) by `up`, then
    /// lowers them by `down`.
    fn add_to_table_count(&self, up: TableCount, down: TableCount) -> anyhow::Result<()> {
        if up == TableCount::default() && down == TableCount::default() {
            return Ok(());
        }
        self.update_config(|c| {
            c.block_hosts = c
                .block_hosts
                .saturating_add(up.slots)
                .saturating_sub(down.slots);
            c.table_prefixes = c
                .table_prefixes
                .saturating_add(up.prefixes)
                .saturating_sub(down.prefixes);
            Ok(())
        })
        .map(drop)
    }

    /// Counts hosts written to a trie (`Config::host_overflows`), after
    /// the writes: a sweep whose scan of the tries may have missed them
    /// then keeps its hands off the overflow marks.
    fn count_overflow(&self) -> anyhow::Result<()> {
        self.update_config(|c| {
            c.host_overflows = c.host_overflows.wrapping_add(1);
            Ok(())
        })
        .map(drop)
    }

    /// Clears the overflow marks a sweep found stale (see [`Sweep`]), unless
    /// an edit sent hosts to a trie since the sweep scanned. Needs the edit
    /// lock. Returns how many sets may take new hosts again.
    pub fn clear_stale_overflows(&self, sweep: &Sweep) -> anyhow::Result<usize> {
        debug_assert!(self.is_editing(), "host table edits need the edit lock");
        let Some((generation, sets)) = &sweep.stale_overflows else {
            return Ok(0);
        };
        if self.config()?.host_overflows != *generation {
            return Ok(0);
        }
        let table = self.host_table()?;
        for &first in sets {
            table.clear_overflow(first)?;
        }
        Ok(sets.len())
    }

    /// Frees the `BLOCK_HOSTS` slots of those of `cidrs` that the table
    /// holds, and returns them.
    fn remove_hosts(&self, cidrs: &[Cidr]) -> anyhow::Result<HashSet<Cidr>> {
        let mut removed = HashSet::new();
        if !cidrs.iter().any(|c| table_key(c).is_some()) {
            return Ok(removed);
        }
        let table = self.host_table_for(cidrs.len())?;
        let mut gone = TableCount::default();
        for cidr in cidrs {
            if let Some(key) = table_key(cidr)
                && table.vacate(&key)?
            {
                removed.insert(*cidr);
                gone.add(&key);
            }
        }
        // Lowered after: the counts never fall below the entries present.
        self.add_to_table_count(TableCount::default(), gone)?;
        Ok(removed)
    }

    /// Deletes `cidrs` from the tries only, where present.
    fn delete_from_tries(&self, tries: Tries, cidrs: &[Cidr]) -> anyhow::Result<()> {
        if cidrs.is_empty() {
            return Ok(());
        }
        let (v4_name, v6_name) = tries.map_names();
        let pairs: Vec<(Cidr, ListEntry)> =
            cidrs.iter().map(|c| (*c, ListEntry::default())).collect();
        let (v4, v6) = split_families(&pairs);
        batch::delete(&self.map_data(v4_name)?, &v4.keys)
            .with_context(|| format!("deleting from {v4_name}"))?;
        batch::delete(&self.map_data(v6_name)?, &v6.keys)
            .with_context(|| format!("deleting from {v6_name}"))
    }

    fn write_family<K: Pod>(&self, name: &str, writes: &Batch<K>) -> anyhow::Result<()> {
        const CHUNK: usize = 8192;
        if writes.keys.is_empty() {
            return Ok(());
        }
        let data = self.map_data(name)?;
        for (keys, values) in writes.keys.chunks(CHUNK).zip(writes.values.chunks(CHUNK)) {
            batch::update(&data, keys, values, 0).map_err(|e| {
                if matches!(e.error.raw_os_error(), Some(libc::ENOSPC | libc::E2BIG)) {
                    anyhow::Error::new(Error::MapFull(format!("{name} is full")))
                } else {
                    anyhow::Error::new(e.error).context(format!("writing {name}"))
                }
            })?;
        }
        Ok(())
    }

    /// Puts back what `records` say was there before a change: restores
    /// previous entries, removes entries that were new. Idempotent.
    pub fn undo(&self, kind: ListKind, records: &[Record]) -> anyhow::Result<()> {
        let (v4_name, v6_name) = kind.map_names();
        let mut v4: LpmTrie<MapData, Ipv4Bytes, ListEntry> = self.lpm(v4_name)?;
        let mut v6: LpmTrie<MapData, Ipv6Bytes, ListEntry> = self.lpm(v6_name)?;
        // The blocklist's hosts: out of the table, then an operator's
        // previous entry back where it fits (automatic blocks and absent
        // entries are the tries' business, below).
        let mut restored = HashSet::new();
        if kind == ListKind::Block {
            let hosts: Vec<Cidr> = records
                .iter()
                .map(Record::cidr)
                .filter(|c| table_key(c).is_some())
                .collect();
            self.remove_hosts(&hosts)
                .with_context(|| format!("restoring the {}", kind.name()))?;
            let restore: Vec<(Cidr, ListEntry)> = records
                .iter()
                .filter_map(|r| Some((r.cidr(), r.previous?)))
                .filter(|(c, e)| table_key(c).is_some() && e.origin != ORIGIN_AUTO)
                .collect();
            restored = restore.iter().map(|(c, _)| *c).collect();
            let (_, rest) = self
                .write_hosts(restore)
                .with_context(|| format!("restoring the {}", kind.name()))?;
            // Every entry going back into a trie, marked first: those that
            // did not fit in the table, and the records' previous entries.
            let back = records
                .iter()
                .filter(|r| r.previous.is_some())
                .map(Record::cidr)
                .collect::<Vec<_>>();
            if !rest.is_empty() || !back.is_empty() {
                self.summary()?
                    .mark(rest.iter().map(|(c, _)| c).chain(&back))
                    .with_context(|| format!("restoring the {}", kind.name()))?;
            }
            let (r4, r6) = split_families(&rest);
            let written = r4
                .keys
                .iter()
                .zip(r4.values)
                .try_for_each(|(key, entry)| v4.insert(key, entry, 0))
                .and_then(|()| {
                    r6.keys
                        .iter()
                        .zip(r6.values)
                        .try_for_each(|(key, entry)| v6.insert(key, entry, 0))
                });
            if !rest.is_empty() {
                // Even after a failed write (see `write_tries_and_hosts`).
                self.count_overflow()?;
            }
            written.with_context(|| format!("restoring the {}", kind.name()))?;
        }
        for record in records.iter().rev() {
            if restored.contains(&record.cidr()) {
                continue;
            }
            let result = if record.family == 4 {
                let addr = [
                    record.addr[0],
                    record.addr[1],
                    record.addr[2],
                    record.addr[3],
                ];
                let key = Key::new(u32::from(record.prefix), addr);
                match record.previous {
                    Some(entry) => v4.insert(&key, entry, 0),
                    None => v4.remove(&key),
                }
            } else {
                let key = Key::new(u32::from(record.prefix), record.addr);
                match record.previous {
                    Some(entry) => v6.insert(&key, entry, 0),
                    None => v6.remove(&key),
                }
            };
            match result {
                Ok(()) => {}
                Err(e) if super::errno(&e) == Some(libc::ENOENT) => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("restoring the {}", kind.name()));
                }
            }
        }
        if kind == ListKind::Allow {
            self.sync_allow_counts()?;
        }
        Ok(())
    }

    /// Removes exactly these prefixes. Fails, changing nothing, if any is
    /// absent. Journaled like inserts.
    pub fn list_remove(&self, kind: ListKind, cidrs: &[Cidr]) -> anyhow::Result<()> {
        debug_assert!(self.is_editing(), "list edits need the edit lock");
        let mut sorted = cidrs.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let present: HashMap<Cidr, ListEntry> = sorted
            .iter()
            .copied()
            .zip(self.stored_at(kind, &sorted)?)
            .filter_map(|(c, e)| e.map(|e| (c, e)))
            .collect();
        if let Some(missing) = sorted.iter().find(|c| !present.contains_key(c)) {
            return Err(Error::NotFound(format!(
                "{missing} is not on the {}; nothing was removed",
                kind.name()
            ))
            .into());
        }
        let records: Vec<Record> = sorted
            .iter()
            .map(|cidr| {
                let previous = present.get(cidr).copied();
                match *cidr {
                    Cidr::V4 { addr, prefix } => {
                        Record::v4(&Key::new(u32::from(prefix), addr), previous)
                    }
                    Cidr::V6 { addr, prefix } => {
                        Record::v6(&Key::new(u32::from(prefix), addr), previous)
                    }
                }
            })
            .collect();
        let journal = Journal::begin(self, kind, &records)?;
        let (v4_name, v6_name) = kind.map_names();
        let mut v4: LpmTrie<MapData, Ipv4Bytes, ListEntry> = self.lpm(v4_name)?;
        let mut v6: LpmTrie<MapData, Ipv6Bytes, ListEntry> = self.lpm(v6_name)?;
        // Keys this command deleted, per family (for the allowlist counts).
        let (mut gone4, mut gone6) = (0_u32, 0_u32);
        // A host found in the table is removed there; the tries keep the
        // program's automatic block of it, if any (`unblock` lifts it).
        let from_table = if kind == ListKind::Block {
            self.remove_hosts(&sorted)
        } else {
            Ok(HashSet::new())
        };
        let result = from_table.and_then(|from_table| {
            sorted
                .iter()
                .filter(|c| !from_table.contains(c))
                .try_for_each(|cidr| {
                    Self::remove_one(kind, &mut v4, &mut v6, cidr, &mut gone4, &mut gone6)
                })
        });
        if let Err(error) = result {
            self.undo(kind, &records)
                .context("restoring entries after a failed removal")?;
            journal.finish()?;
            return Err(error);
        }
        journal.finish()?;
        if kind == ListKind::Allow {
            self.lower_allow_counts(gone4, gone6)?;
        }
        Ok(())
    }

    /// Removes `cidr` from its trie, counting it in `gone4`/`gone6`.
    fn remove_one(
        kind: ListKind,
        v4: &mut LpmTrie<MapData, Ipv4Bytes, ListEntry>,
        v6: &mut LpmTrie<MapData, Ipv6Bytes, ListEntry>,
        cidr: &Cidr,
        gone4: &mut u32,
        gone6: &mut u32,
    ) -> anyhow::Result<()> {
        let (removed, gone) = match *cidr {
            Cidr::V4 { addr, prefix } => (v4.remove(&Key::new(u32::from(prefix), addr)), gone4),
            Cidr::V6 { addr, prefix } => (v6.remove(&Key::new(u32::from(prefix), addr)), gone6),
        };
        match removed {
            Ok(()) => {
                *gone = gone.saturating_add(1);
                Ok(())
            }
            // The program deletes expired entries itself: gone is gone.
            Err(e) if super::errno(&e) == Some(libc::ENOENT) => Ok(()),
            Err(e) => Err(e),
        }
        .with_context(|| format!("removing {cidr} from the {}", kind.name()))
    }

    /// Lowers the allowlist counts by the keys an edit deleted, without
    /// walking the list. The counts never fall below the keys present: they
    /// were raised by every key added, and the program's own deletions of
    /// expired entries leave them high (one needless lookup, never a skipped
    /// allowlist); a family found empty (one step of the trie) is set to 0.
    fn lower_allow_counts(&self, gone4: u32, gone6: u32) -> anyhow::Result<()> {
        let (v4_name, v6_name) = ListKind::Allow.map_names();
        let v4: LpmTrie<MapData, Ipv4Bytes, ListEntry> = self.lpm(v4_name)?;
        let v6: LpmTrie<MapData, Ipv6Bytes, ListEntry> = self.lpm(v6_name)?;
        let (v4_count, v6_count) = self.allow_counts()?;
        let lowered = |count: u32, gone: u32, empty: bool| {
            if empty {
                0
            } else {
                count.saturating_sub(gone).max(1)
            }
        };
        self.write_allow_counts(
            lowered(v4_count, gone4, v4.keys().next().is_none()),
            lowered(v6_count, gone6, v6.keys().next().is_none()),
        )
    }

    /// Entries in the IPv4 and IPv6 allowlists, as the program was last told.
    fn allow_counts(&self) -> anyhow::Result<(u32, u32)> {
        let config = self.config()?;
        Ok((config.allow_v4_entries, config.allow_v6_entries))
    }

    fn write_allow_counts(&self, v4: u32, v6: u32) -> anyhow::Result<()> {
        self.write_counts(Tries::Allow, v4, v6)
    }

    /// Writes the program's entry counts of `tries` (allowlist, shadow
    /// blocklist: 0 lets it skip the lookup); the blocklist has none.
    fn write_counts(&self, tries: Tries, v4: u32, v6: u32) -> anyhow::Result<()> {
        if tries == Tries::Block {
            return Ok(());
        }
        self.update_config(|config| {
            if tries == Tries::Allow {
                (config.allow_v4_entries, config.allow_v6_entries) = (v4, v6);
            } else {
                (config.shadow_v4_entries, config.shadow_v6_entries) = (v4, v6);
            }
            Ok(())
        })
        .map(drop)
    }

    /// Tells the program how many allowlist entries there are.
    fn sync_allow_counts(&self) -> anyhow::Result<()> {
        self.sync_counts(Tries::Allow)
    }

    /// Tells the program how many entries `tries` hold (see
    /// [`Self::write_counts`]). Called after every edit of them, under the
    /// edit lock.
    fn sync_counts(&self, tries: Tries) -> anyhow::Result<()> {
        if tries == Tries::Block {
            return Ok(());
        }
        let (v4_name, v6_name) = tries.map_names();
        let v4: LpmTrie<MapData, Ipv4Bytes, ListEntry> = self.lpm(v4_name)?;
        let v6: LpmTrie<MapData, Ipv6Bytes, ListEntry> = self.lpm(v6_name)?;
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        self.write_counts(tries, count(v4.keys().count()), count(v6.keys().count()))
    }

    /// Every entry, expired ones included, as stored.
    pub fn list_entries_raw(&self, kind: ListKind) -> anyhow::Result<Vec<(Cidr, ListEntry)>> {
        self.entries_raw(kind.into())
    }

    /// Every entry of `tries`, expired ones included, as stored, sorted by
    /// prefix: for the blocklist, with the host table's, a host's
    /// operator's entry (in the table) before its automatic block (in the
    /// trie).
    pub fn entries_raw(&self, tries: Tries) -> anyhow::Result<Vec<(Cidr, ListEntry)>> {
        self.read_sorted(tries, tries == Tries::Block)
    }

    /// Every entry the tries of `tries` hold, sorted.
    pub(super) fn trie_entries_raw(&self, tries: Tries) -> anyhow::Result<Vec<(Cidr, ListEntry)>> {
        self.read_sorted(tries, false)
    }

    /// The entries of the tries of `tries`, and of the host table if
    /// `with_hosts`, sorted as [`Self::entries_raw`] says.
    ///
    /// The two tries are read on two threads (the kernel's walk of an LPM
    /// trie, `trie_get_next_key`, is most of a large list's cost), and each
    /// family is sorted on its own thread, once, by an integer key (a
    /// million entries sorted whole, twice, took a sixth of `list`).
    fn read_sorted(&self, tries: Tries, with_hosts: bool) -> anyhow::Result<Entries> {
        let (v4_name, v6_name) = tries.map_names();
        let (v4, v6) = std::thread::scope(|scope| {
            let v6 = scope.spawn(|| {
                let mut out = Vec::new();
                self.read_family::<Ipv6Bytes>(v6_name, &mut |key, value| {
                    let ip = IpAddr::V6(Ipv6Addr::from(key.data()));
                    out.push((Cidr::new(ip, prefix_u8(key.prefix_len())), value));
                })
                .map(|()| out)
            });
            let mut out = Vec::new();
            let v4 = self
                .read_family::<Ipv4Bytes>(v4_name, &mut |key, value| {
                    let ip = IpAddr::V4(Ipv4Addr::from(key.data()));
                    out.push((Cidr::new(ip, prefix_u8(key.prefix_len())), value));
                })
                .map(|()| out);
            (v4, v6.join())
        });
        let mut v4 = v4?;
        let mut v6 =
            v6.map_err(|_| anyhow::anyhow!("reading {v6_name}: the reader panicked"))??;
        if with_hosts {
            for (cidr, entry) in self.host_table()?.entries()? {
                match cidr {
                    Cidr::V4 { .. } => v4.push((cidr, entry)),
                    Cidr::V6 { .. } => v6.push((cidr, entry)),
                }
            }
        }
        // Each family apart, so `Cidr`'s order; IPv4 goes first.
        let by_prefix = |(cidr, entry): &(Cidr, ListEntry)| {
            (order_in_family(cidr), entry.origin == ORIGIN_AUTO)
        };
        std::thread::scope(|scope| {
            scope.spawn(|| v6.sort_unstable_by_key(by_prefix));
            v4.sort_unstable_by_key(by_prefix);
        });
        v4.append(&mut v6);
        Ok(v4)
    }

    /// Every entry of one trie: by `BPF_MAP_LOOKUP_BATCH` (one syscall per
    /// few thousand entries) where the kernel has it for LPM tries, else by
    /// walking the keys (two syscalls per entry).
    fn read_family<K: Pod>(
        &self,
        name: &str,
        each: &mut dyn FnMut(Key<K>, ListEntry),
    ) -> anyhow::Result<()> {
        // Opened typed first: it checks the key and value sizes the batch relies on.
        let trie: LpmTrie<MapData, K, ListEntry> = self.lpm(name)?;
        let batched = batch::lookup_all::<Key<K>, ListEntry>(&self.map_data(name)?, &mut |k, v| {
            each(k, v);
            Ok(())
        })
        .with_context(|| format!("reading {name}"))?;
        if !batched {
            for item in &trie {
                let (key, value) = item.with_context(|| format!("reading {name}"))?;
                each(key, value);
            }
        }
        Ok(())
    }

    /// Active entries with their remaining time (for the blocklist, the
    /// shadow policy's blocks too, marked `shadow`).
    pub fn list_entries(&self, kind: ListKind) -> anyhow::Result<Vec<ListedEntry>> {
        self.listed(kind, self.list_entries_raw(kind)?)
    }

    /// The blocklist as [`Self::list_entries`] and the automatic blocks as
    /// [`Self::autoblocks`], from one walk of the blocklist (a walk costs a
    /// few µs per entry in the kernel: seconds at a million).
    pub fn block_and_autoblocks(&self) -> anyhow::Result<(Vec<ListedEntry>, Vec<ListedAutoBlock>)> {
        let raw = self.list_entries_raw(ListKind::Block)?;
        let auto = self.autoblocks_of(&raw)?;
        Ok((self.listed(ListKind::Block, raw)?, auto))
    }

    /// `raw` (the entries of `kind`'s list) as listed.
    fn listed(&self, kind: ListKind, raw: Entries) -> anyhow::Result<Vec<ListedEntry>> {
        let now = clock::monotonic_ns();
        let mut entries: Vec<(Cidr, ListEntry, bool)> =
            raw.into_iter().map(|(c, e)| (c, e, false)).collect();
        if kind == ListKind::Block {
            entries.extend(
                self.entries_raw(Tries::ShadowBlock)?
                    .into_iter()
                    .map(|(c, e)| (c, e, true)),
            );
        }
        Ok(entries
            .into_iter()
            .filter(|(_, e, _)| e.origin != ORIGIN_AUTO && e.is_active(now))
            .map(|(cidr, e, shadow)| ListedEntry {
                cidr,
                origin: origin_name(e.origin),
                shadow,
                expires_in_secs: clock::remaining(e.expires_at_ns, now).map(|d| d.as_secs()),
            })
            .collect())
    }

    /// Walks the lists without the edit lock: how many active entries each
    /// holds, and the expired ones (the kernel already ignores them), for
    /// [`Self::remove_expired`].
    pub fn sweep_scan(&self) -> anyhow::Result<Sweep> {
        let now = clock::monotonic_ns();
        let mut counts = ListCounts::default();
        let mut expired_by_kind = Vec::new();
        // Read before the tries: an edit that overflows after it changes it.
        let config = self.config()?;
        let generation = config.host_overflows;
        let mut stale_overflows = None;
        let mut table_counts_high = false;
        let mut summary_stale = false;
        let mut summary_lacking = false;
        for kind in [ListKind::Allow, ListKind::Block] {
            let mut entries = self.trie_entries_raw(kind.into())?;
            if kind == ListKind::Block {
                let table = self.host_table()?;
                let in_table = table.entries()?;
                // Read after the walks: every entry they found was marked
                // before it was written (an automatic block just after),
                // and marks since only add.
                let needed = summary::needed(
                    active_cidrs(&entries, now),
                    active_cidrs(&in_table, now),
                    config.host_seed,
                );
                let summary = self.summary()?;
                let in_use = self.config()?.summary_generation;
                summary_lacking = summary.lacks(in_use, &needed)?;
                summary_stale = summary.in_use(in_use)?.worth_rebuilding(&needed.marks)
                    || summary.lengths_stale(&needed)?;
                let marked = table.overflowed_sets()?;
                if !marked.is_empty() {
                    // Sets some host of which the tries still hold.
                    let held: HashSet<u32> = entries
                        .iter()
                        .filter(|(_, e)| e.origin != ORIGIN_AUTO)
                        .filter_map(|(c, _)| table_key(c))
                        .map(|k| table.set_of(&k))
                        .collect();
                    let stale: Vec<u32> =
                        marked.into_iter().filter(|s| !held.contains(s)).collect();
                    stale_overflows = (!stale.is_empty()).then_some((generation, stale));
                }
                // An edit since `config` was read may have added entries (the
                // scan then finds more, never fewer) or removed some (a
                // resync that finds nothing to change).
                let found = TableCount::of(in_table.iter().map(|(c, _)| c));
                table_counts_high =
                    found.slots < config.block_hosts || found.prefixes < config.table_prefixes;
                entries.extend(in_table);
            }
            let (expired, active): (Entries, Entries) =
                entries.into_iter().partition(|(_, e)| !e.is_active(now));
            let v4 = active
                .iter()
                .filter(|(c, _)| matches!(c, Cidr::V4 { .. }))
                .count() as u64;
            let v6 = active.len() as u64 - v4;
            match kind {
                ListKind::Allow => (counts.allow_v4, counts.allow_v6) = (v4, v6),
                ListKind::Block => (counts.block_v4, counts.block_v6) = (v4, v6),
            }
            if !expired.is_empty() {
                expired_by_kind.push((kind, expired.into_iter().map(|(c, _)| c).collect()));
            }
        }
        Ok(Sweep {
            counts,
            expired: expired_by_kind,
            stale_overflows,
            table_counts_high,
            summary_stale,
            summary_lacking,
        })
    }

    /// Rebuilds `BLOCK_SUMMARY` if the sweep found it stale or lacking
    /// (after the expired entries are deleted, so that their marks go too).
    /// Needs the edit lock. Returns what the new generation marks, if it
    /// rebuilt.
    pub fn rebuild_stale_summary(&self, sweep: &Sweep) -> anyhow::Result<Option<SummaryUse>> {
        if !sweep.summary_stale && !sweep.summary_lacking {
            return Ok(None);
        }
        self.rebuild_summary().map(Some)
    }

    /// Sets `Config::block_hosts` and `Config::table_prefixes` to the used
    /// slots of `BLOCK_HOSTS`, if the sweep found them high. Needs the edit
    /// lock: no other writer of the table runs, so the walk counts the
    /// truth (the program never writes the table). Returns whether they
    /// changed.
    pub fn resync_table_counts(&self, sweep: &Sweep) -> anyhow::Result<bool> {
        debug_assert!(self.is_editing(), "host table counts need the edit lock");
        if !sweep.table_counts_high {
            return Ok(false);
        }
        let table = self.host_table()?;
        let exact = TableCount::of(table.entries()?.iter().map(|(c, _)| c));
        let before = self.config()?;
        if (before.block_hosts, before.table_prefixes) == (exact.slots, exact.prefixes) {
            return Ok(false);
        }
        self.update_config(|c| {
            c.block_hosts = exact.slots;
            c.table_prefixes = exact.prefixes;
            Ok(())
        })?;
        Ok(true)
    }

    /// Deletes those of `cidrs` that are still expired (an edit since the
    /// scan may have listed one again). Needs the edit lock; reads only the
    /// named entries. Returns how many it deleted.
    pub fn remove_expired(&self, kind: ListKind, cidrs: &[Cidr]) -> anyhow::Result<usize> {
        debug_assert!(self.is_editing(), "list edits need the edit lock");
        let now = clock::monotonic_ns();
        let stored = self.lookup_entries(kind.into(), cidrs)?;
        let still: Vec<Cidr> = cidrs
            .iter()
            .copied()
            .zip(&stored)
            .filter(|(_, e)| e.is_some_and(|e| !e.is_active(now)))
            .map(|(c, _)| c)
            .collect();
        if !still.is_empty() {
            self.list_remove(kind, &still)?;
        }
        // An expired automatic block of a host whose operator's entry in
        // the table is active: the program never looks past the table for
        // it, so it would stay.
        let mut gone = still.len();
        if kind == ListKind::Block {
            let shadowed: Vec<Cidr> = cidrs
                .iter()
                .zip(&stored)
                .filter(|(c, e)| table_key(c).is_some() && e.is_some_and(|e| e.is_active(now)))
                .map(|(c, _)| *c)
                .collect();
            let expired_autos: Vec<Cidr> = shadowed
                .iter()
                .zip(self.lookup_in_tries(Tries::Block, &shadowed)?)
                .filter(|(_, e)| e.is_some_and(|e| e.origin == ORIGIN_AUTO && !e.is_active(now)))
                .map(|(c, _)| *c)
                .collect();
            self.delete_from_tries(Tries::Block, &expired_autos)?;
            gone += expired_autos.len();
        }
        Ok(gone)
    }

    /// The automatic blocks among `raw` (the blocklist's entries).
    fn autoblocks_of(&self, raw: &[(Cidr, ListEntry)]) -> anyhow::Result<Vec<ListedAutoBlock>> {
        let rules = RuleTable::read(self)?;
        let now = clock::monotonic_ns();
        Ok(raw
            .iter()
            .copied()
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

    /// Removes each prefix from the blocklist and lifts the automatic block
    /// of each address, reading the list once. Fails, changing nothing, if a
    /// token is neither listed nor automatically blocked. Returns what it
    /// removed and what it lifted.
    pub fn unblock(&self, cidrs: &[Cidr]) -> anyhow::Result<Unblocked> {
        // Point lookups of the named prefixes and of their automatic-block
        // prefixes: an edit never reads the whole list.
        let config = self.config()?;
        let autos: Vec<Cidr> = cidrs.iter().map(|c| autoblock_prefix(c, &config)).collect();
        let listed = self.lookup_entries(Tries::Block, cidrs)?;
        // Automatic blocks live in the tries only.
        let auto_entries = self.lookup_in_tries(Tries::Block, &autos)?;
        let now = clock::monotonic_ns();
        if let Some((cidr, _)) = cidrs
            .iter()
            .zip(&listed)
            .find(|(_, e)| e.is_some_and(|e| e.origin == ORIGIN_POLICY))
        {
            return Err(Error::BadInput(format!(
                "{cidr} is on the blocklist because the applied policy lists it; nothing was changed. Remove it from the policy file and run `filter-ctl policy apply FILE` (see `filter-ctl policy show`)"
            ))
            .into());
        }
        // A CrowdSec ban is the LAPI's to lift: removed here it would come
        // back with the next full pull, and stay on every other host.
        if let Some((cidr, _)) = cidrs
            .iter()
            .zip(&listed)
            .find(|(_, e)| e.is_some_and(|e| e.origin == ORIGIN_CROWDSEC && e.is_active(now)))
        {
            let (flag, value) = match *cidr {
                Cidr::V4 { prefix: 32, .. } | Cidr::V6 { prefix: 128, .. } => {
                    ("--ip", cidr.ip().to_string())
                }
                _ => ("--range", cidr.to_string()),
            };
            return Err(Error::BadInput(format!(
                "{cidr} is on the blocklist because of a CrowdSec decision; nothing was changed. Removed here, the next full pull from the LAPI would bring it back (and every other host keeps it): lift it in CrowdSec with `cscli decisions delete {flag} {value}`, and the next pull removes it here"
            ))
            .into());
        }
        // The named prefixes go wherever they are (table first); an
        // automatic block found at another prefix (the address's aggregate)
        // is lifted from the tries only: the table may hold an operator's,
        // the policy's or a CrowdSec entry at that same prefix, which
        // `unblock` of an address inside it must leave alone.
        let mut remove: Vec<Cidr> = Vec::new();
        let mut lift: Vec<Cidr> = Vec::new();
        let (mut seen, mut seen_auto) = (HashSet::new(), HashSet::new());
        for ((cidr, entry), (auto, auto_entry)) in cidrs
            .iter()
            .zip(&listed)
            .zip(autos.iter().zip(&auto_entries))
        {
            let auto_active =
                auto_entry.is_some_and(|e| e.origin == ORIGIN_AUTO && e.is_active(now));
            if entry.is_none() && !auto_active {
                return Err(Error::NotFound(format!(
                    "{cidr} is neither on the blocklist nor automatically blocked; nothing was changed"
                ))
                .into());
            }
            if entry.is_some() && seen.insert(*cidr) {
                remove.push(*cidr);
            }
            if auto_active && auto != cidr && seen_auto.insert(*auto) {
                lift.push(*auto);
            }
        }
        self.list_remove(ListKind::Block, &remove)?;
        // A prefix with an operator's entry (removed from the table above)
        // and an automatic block of the same prefix: lift that too.
        lift.extend(
            cidrs
                .iter()
                .zip(&listed)
                .zip(autos.iter().zip(&auto_entries))
                .filter(|((cidr, entry), (auto, auto_entry))| {
                    cidr == auto
                        && entry.is_some_and(|e| e.origin != ORIGIN_AUTO)
                        && auto_entry.is_some_and(|e| e.origin == ORIGIN_AUTO)
                })
                .map(|((cidr, _), _)| *cidr)
                .filter(|c| seen_auto.insert(*c))
                .collect::<Vec<_>>(),
        );
        self.delete_from_tries(Tries::Block, &lift)?;
        Ok(Unblocked {
            lifted: lift.into_iter().filter(|c| !seen.contains(c)).collect(),
            removed: remove,
        })
    }
}

/// Keys and values of one family, for a batch.
struct Batch<K> {
    keys: Vec<Key<K>>,
    values: Vec<ListEntry>,
}

impl<K> Default for Batch<K> {
    fn default() -> Self {
        Self {
            keys: Vec::new(),
            values: Vec::new(),
        }
    }
}

/// Changed entries from which [`Filter::list_insert_with`] runs its
/// `alongside` on a thread of its own, beside the kernel writes (below, a
/// thread costs more than it saves).
const ALONGSIDE_FROM: usize = 4096;

/// How many keys ahead a load prefetches the table's sets: enough to
/// cover a memory access (about 100 ns) with the placing of keys whose sets
/// are in the cache already.
const PREFETCH_AHEAD: usize = 16;

/// Slots of `BLOCK_HOSTS`, as `Config` counts them: all used ones, and
/// those that hold a prefix rather than a host.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct TableCount {
    slots: u32,
    prefixes: u32,
}

impl TableCount {
    /// The table keys among `cidrs`.
    fn of<'a>(cidrs: impl Iterator<Item = &'a Cidr>) -> Self {
        let mut count = Self::default();
        for key in cidrs.filter_map(table_key) {
            count.add(&key);
        }
        count
    }

    fn add(&mut self, key: &TableKey) {
        self.slots = self.slots.saturating_add(1);
        if !key.is_host() {
            self.prefixes = self.prefixes.saturating_add(1);
        }
    }

    const fn minus(self, other: Self) -> Self {
        Self {
            slots: self.slots.saturating_sub(other.slots),
            prefixes: self.prefixes.saturating_sub(other.prefixes),
        }
    }
}

fn split_families(entries: &[(Cidr, ListEntry)]) -> (Batch<Ipv4Bytes>, Batch<Ipv6Bytes>) {
    let mut v4 = Batch::default();
    let mut v6 = Batch::default();
    for (cidr, entry) in entries {
        match *cidr {
            Cidr::V4 { addr, prefix } => {
                v4.keys.push(Key::new(u32::from(prefix), addr));
                v4.values.push(*entry);
            }
            Cidr::V6 { addr, prefix } => {
                v6.keys.push(Key::new(u32::from(prefix), addr));
                v6.values.push(*entry);
            }
        }
    }
    (v4, v6)
}

impl Filter {
    /// Writes these entries exactly as given (a policy apply, a restore),
    /// in batches, without reading the lists. Not journaled: the caller
    /// knows what it replaced and undoes it on failure.
    pub fn write_entries(&self, tries: Tries, entries: &[(Cidr, ListEntry)]) -> anyhow::Result<()> {
        debug_assert!(self.is_editing(), "list edits need the edit lock");
        if entries.is_empty() {
            return Ok(());
        }
        let (v4, v6) = split_families(entries);
        // Raise the counts first: the program must not skip non-empty tries.
        let config = self.config()?;
        let (v4_count, v6_count) = match tries {
            Tries::Allow => (config.allow_v4_entries, config.allow_v6_entries),
            Tries::ShadowBlock => (config.shadow_v4_entries, config.shadow_v6_entries),
            Tries::Block => (0, 0),
        };
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        self.write_counts(
            tries,
            v4_count.saturating_add(count(v4.keys.len())),
            v6_count.saturating_add(count(v6.keys.len())),
        )?;
        let result = self
            .write_tries_and_hosts(tries, entries.to_vec())
            .map(drop);
        self.sync_counts(tries)?;
        result
    }

    /// Deletes these prefixes where present (absent ones are skipped), in
    /// batches, without reading the lists.
    pub fn delete_entries(&self, tries: Tries, cidrs: &[Cidr]) -> anyhow::Result<()> {
        debug_assert!(self.is_editing(), "list edits need the edit lock");
        if cidrs.is_empty() {
            return Ok(());
        }
        let from_table = if tries == Tries::Block {
            self.remove_hosts(cidrs)?
        } else {
            HashSet::new()
        };
        let rest: Vec<Cidr> = cidrs
            .iter()
            .filter(|c| !from_table.contains(c))
            .copied()
            .collect();
        self.delete_from_tries(tries, &rest)?;
        self.sync_counts(tries)
    }

    /// What is stored at each of `cidrs` (sorted): point lookups for a few,
    /// one walk of the list for many (a walk costs the list's size, lookups
    /// the number asked for).
    fn stored_at(&self, kind: ListKind, cidrs: &[Cidr]) -> anyhow::Result<Vec<Option<ListEntry>>> {
        const LOOKUPS_UP_TO: usize = 4096;
        if cidrs.len() <= LOOKUPS_UP_TO {
            return self.lookup_entries(kind.into(), cidrs);
        }
        let mut all: HashMap<Cidr, ListEntry> = HashMap::new();
        for (cidr, entry) in self.list_entries_raw(kind)? {
            // The first of a host's two entries is the operator's.
            all.entry(cidr).or_insert(entry);
        }
        Ok(cidrs.iter().map(|c| all.get(c).copied()).collect())
    }

    /// The stored entry at each exact prefix (not the longest match), by
    /// point lookups: never a walk of the list. For a blocked host, the
    /// operator's entry in `BLOCK_HOSTS` before anything in the trie.
    pub fn lookup_entries(
        &self,
        tries: Tries,
        cidrs: &[Cidr],
    ) -> anyhow::Result<Vec<Option<ListEntry>>> {
        if tries != Tries::Block || !cidrs.iter().any(|c| table_key(c).is_some()) {
            return self.lookup_in_tries(tries, cidrs);
        }
        let table = self.host_table_for(cidrs.len())?;
        let mut out: Vec<Option<ListEntry>> = cidrs
            .iter()
            .map(|c| match table_key(c) {
                Some(k) => table.find(&k),
                None => Ok(None),
            })
            .collect::<anyhow::Result<_>>()?;
        let rest: Vec<usize> = (0..cidrs.len()).filter(|&i| out[i].is_none()).collect();
        let rest_cidrs: Vec<Cidr> = rest.iter().map(|&i| cidrs[i]).collect();
        for (i, entry) in rest
            .into_iter()
            .zip(self.lookup_in_tries(tries, &rest_cidrs)?)
        {
            out[i] = entry;
        }
        Ok(out)
    }

    /// The stored entry at each exact prefix in the tries only.
    pub fn lookup_in_tries(
        &self,
        tries: Tries,
        cidrs: &[Cidr],
    ) -> anyhow::Result<Vec<Option<ListEntry>>> {
        let (v4_name, v6_name) = tries.map_names();
        let v4: LpmTrie<MapData, Ipv4Bytes, ListEntry> = self.lpm(v4_name)?;
        let v6: LpmTrie<MapData, Ipv6Bytes, ListEntry> = self.lpm(v6_name)?;
        cidrs
            .iter()
            .map(|cidr| {
                // An LPM lookup returns the longest match: keep it only if
                // it is this very prefix.
                let found = match *cidr {
                    Cidr::V4 { addr, prefix } => v4.get(&Key::new(u32::from(prefix), addr), 0),
                    Cidr::V6 { addr, prefix } => v6.get(&Key::new(u32::from(prefix), addr), 0),
                };
                match found {
                    Ok(entry) if entry.prefix_len == cidr.prefix() => Ok(Some(entry)),
                    Ok(_) | Err(aya::maps::MapError::KeyNotFound) => Ok(None),
                    Err(e) => Err(anyhow::Error::new(e).context(format!("looking up {cidr}"))),
                }
            })
            .collect()
    }
}

/// An integer key that sorts the prefixes of one family in [`Cidr`]'s
/// order: by address, then by length (comparing it is cheaper than
/// comparing the `Cidr`s).
fn order_in_family(cidr: &Cidr) -> (u128, u8) {
    match *cidr {
        Cidr::V4 { addr, prefix } => (u128::from(u32::from_be_bytes(addr)), prefix),
        Cidr::V6 { addr, prefix } => (u128::from_be_bytes(addr), prefix),
    }
}

/// Prefixes from which [`sorted_unique`] sorts each family on a thread of
/// its own (below, a thread costs more than it saves).
const SORT_APART_FROM: usize = 1 << 16;

/// `cidrs` in [`Cidr`]'s order (IPv4 first, then by address, then by
/// prefix length), each once. A large edit sorts each family on a thread
/// of its own by an integer key: a million prefixes sorted as `Cidr`s took
/// 100–130 ms, most of a load's time after parsing.
fn sorted_unique(cidrs: &[Cidr]) -> Vec<Cidr> {
    if cidrs.len() < SORT_APART_FROM {
        let mut sorted = cidrs.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        return sorted;
    }
    // IPv4 packed into a u64 (the address above the length: a smaller key
    // than `order_in_family`'s, in the same order); IPv6 by that key.
    let mut v4: Vec<u64> = Vec::new();
    let mut v6: Vec<(u128, u8)> = Vec::new();
    for cidr in cidrs {
        match *cidr {
            Cidr::V4 { addr, prefix } => {
                v4.push((u64::from(u32::from_be_bytes(addr)) << 8) | u64::from(prefix));
            }
            Cidr::V6 { .. } => v6.push(order_in_family(cidr)),
        }
    }
    std::thread::scope(|scope| {
        scope.spawn(|| {
            v6.sort_unstable();
            v6.dedup();
        });
        v4.sort_unstable();
        v4.dedup();
    });
    let mut sorted = Vec::with_capacity(v4.len() + v6.len());
    sorted.extend(v4.iter().map(|&key| Cidr::V4 {
        addr: u32::try_from(key >> 8).unwrap_or(0).to_be_bytes(),
        prefix: (key & 0xff) as u8,
    }));
    sorted.extend(v6.iter().map(|&(addr, prefix)| Cidr::V6 {
        addr: addr.to_be_bytes(),
        prefix,
    }));
    sorted
}

/// The journal record of `cidr` with what was stored before.
fn record(cidr: &Cidr, previous: Option<ListEntry>) -> Record {
    match *cidr {
        Cidr::V4 { addr, prefix } => Record::v4(&Key::new(u32::from(prefix), addr), previous),
        Cidr::V6 { addr, prefix } => Record::v6(&Key::new(u32::from(prefix), addr), previous),
    }
}

/// The prefix an automatic block of `cidr`'s address has: the address
/// masked to the rate-limit aggregation prefix.
fn autoblock_prefix(cidr: &Cidr, config: &filter_common::Config) -> Cidr {
    let aggregate = match cidr {
        Cidr::V4 { .. } => prefix_u8(config.ipv4_source_prefix.min(32)),
        Cidr::V6 { .. } => prefix_u8(config.ipv6_source_prefix.min(128)),
    };
    // A prefix shorter than the aggregation holds many aggregates: none of
    // them is its automatic block.
    if cidr.prefix() < aggregate {
        return *cidr;
    }
    Cidr::new(cidr.ip(), aggregate)
}

/// The name of an entry's origin, as `list` shows it.
#[must_use]
pub const fn origin_name(origin: u8) -> &'static str {
    match origin {
        ORIGIN_CLI => "cli",
        ORIGIN_AUTO => "auto",
        ORIGIN_POLICY => "policy",
        ORIGIN_CROWDSEC => "crowdsec",
        _ => "unknown",
    }
}

/// Whether `new` keeps a source listed at least as long as `old` does and
/// would change something (a permanent entry re-added permanently does not).
fn lasts_longer(new: &ListEntry, old: &ListEntry) -> bool {
    if old.origin == ORIGIN_POLICY {
        // The policy's entries are permanent and stay the policy's: a live
        // edit of the same prefix is kept in the state, and takes over if a
        // later policy drops the prefix.
        return false;
    }
    if old.origin != new.origin {
        // An operator's entry takes over an automatic block of the same
        // prefix only if it lasts at least as long.
        return new.expires_at_ns == 0
            || (old.expires_at_ns != 0 && new.expires_at_ns >= old.expires_at_ns);
    }
    match (new.expires_at_ns, old.expires_at_ns) {
        (0, 0) => false,
        (0, _) => true,
        (_, 0) => false,
        (new, old) => new > old,
    }
}

fn count_new(records: &[Record], family: u8) -> usize {
    records
        .iter()
        .filter(|r| r.family == family && r.previous.is_none())
        .count()
}

fn prefix_u8(prefix_len: u32) -> u8 {
    u8::try_from(prefix_len).unwrap_or(u8::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(expires_at_ns: u64, origin: u8) -> ListEntry {
        ListEntry {
            expires_at_ns,
            origin,
            ..ListEntry::default()
        }
    }

    #[test]
    fn later_expiry_wins() {
        let permanent = entry(0, ORIGIN_CLI);
        let short = entry(100, ORIGIN_CLI);
        let long = entry(200, ORIGIN_CLI);
        assert!(
            !lasts_longer(&short, &permanent),
            "a TTL never lifts a permanent block"
        );
        assert!(!lasts_longer(&permanent, &permanent), "nothing to change");
        assert!(lasts_longer(&permanent, &short));
        assert!(lasts_longer(&long, &short));
        assert!(!lasts_longer(&short, &long));
        assert!(!lasts_longer(&short, &short));
        // An operator's block takes over an automatic one unless it is shorter.
        assert!(lasts_longer(&permanent, &entry(100, ORIGIN_AUTO)));
        assert!(lasts_longer(&long, &entry(100, ORIGIN_AUTO)));
        assert!(!lasts_longer(&short, &entry(200, ORIGIN_AUTO)));
    }

    #[test]
    fn a_large_edit_sorts_as_cidrs_sort() {
        // Both paths, with duplicates, both families interleaved, prefixes
        // of one address in both orders, and addresses whose bytes sort
        // differently from little-endian integers.
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut cidrs = Vec::new();
        for _ in 0..(SORT_APART_FROM + 1000) {
            let r = next();
            let cidr = if r % 3 == 0 {
                let addr = u128::from(next()) << 64 | u128::from(next() % 4);
                Cidr::new(
                    IpAddr::V6(Ipv6Addr::from(addr)),
                    u8::try_from((r >> 8) % 129).expect("a prefix length"),
                )
            } else {
                let addr = u32::try_from(next() >> 48).expect("16 bits") << 16;
                Cidr::new(
                    IpAddr::V4(Ipv4Addr::from(addr)),
                    u8::try_from((r >> 8) % 33).expect("a prefix length"),
                )
            };
            cidrs.push(cidr);
            if r % 5 == 0 {
                cidrs.push(cidr);
            }
        }
        for input in [&cidrs[..100], &cidrs[..]] {
            let mut expected = input.to_vec();
            expected.sort_unstable();
            expected.dedup();
            assert_eq!(sorted_unique(input), expected);
        }
    }
}
