//! The controller (`filter-ctl run`): load, attach, pin, then until SIGINT
//! or SIGTERM log automatic blocks, sweep expired entries, and watch the
//! interfaces it filters: one that disappears is marked missing, and when
//! an interface of that name comes back it is filtered again at once.

pub mod apply;
pub mod crowdsec;
pub mod drops;
pub mod metrics;
mod netwatch;
pub mod policy;

use drops::{Aggregator, SampledDrop};

use std::{
    collections::BTreeMap,
    io::Write as _,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use aya::{
    Ebpf,
    maps::{MapData, RingBuf},
};
use filter_common::{DropEvent, maps};
use log::{info, warn};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
};

use crate::{
    clock,
    error::Error,
    maps::{
        Filter,
        events::{self, Event},
        lists::ListCounts,
        loader::{self, Capacities, Mode},
        lock::DirLock,
        pins::{self, PinDir},
        rules::{RuleTable, source_cidr},
        sampling::Sampling,
        status::{ControllerState, InterfaceState, TopSnapshot, TopSource},
    },
    spec::duration::format_duration,
    state::{LiveEntry, LiveJournal, LiveState, PolicyStore, StateDir},
};
use netwatch::LinkEvent;

/// What `run` was asked to do.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Interfaces to attach to; none: the policy's.
    pub ifaces: Vec<String>,
    /// Attach mode; `None`: the policy's, else auto.
    pub mode: Option<Mode>,
    /// Capacities for new maps; `None` = the default, or whatever the
    /// pinned maps have. A capacity that differs from pinned maps' is refused.
    pub list_capacity: Option<u32>,
    pub bucket_capacity: Option<u32>,
    /// Pin into a bpffs of a private mount namespace anyway.
    pub allow_private_bpffs: bool,
    /// Where to serve `/metrics`; `None` = nowhere.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// How often expired entries are deleted (the kernel already ignores
    /// them; this only frees the memory), the lists counted for the metrics,
    /// and the interfaces checked by index as a backstop to link events.
    pub sweep_interval: Duration,
    /// How drops are sampled into events.
    pub sampling: Sampling,
    /// How often sampled drops are logged, per source.
    pub drop_log_interval: Duration,
    /// The state directory (policy versions, live edits, audit log).
    pub state_dir: std::path::PathBuf,
    /// The policy file to apply at start and on SIGHUP.
    pub policy: Option<std::path::PathBuf>,
    /// Move a corrupt state file aside instead of refusing to start.
    pub discard_corrupt_state: bool,
    /// `--crowdsec-*` flags (each overrides the policy's `[crowdsec]`).
    pub crowdsec: crowdsec::Flags,
}

/// One interface under the controller's care.
struct Watched {
    /// `native`/`skb`, when known.
    mode: Option<String>,
    /// The interface index it had when attached; `None` while missing.
    ifindex: Option<u32>,
    since_unix: u64,
}

struct Controller {
    pins: PinDir,
    mode: Mode,
    ebpf: Ebpf,
    ifaces: BTreeMap<String, Watched>,
    /// The metrics socket, bound at start, served once the runtime runs.
    metrics: Option<std::net::TcpListener>,
    sweep_interval: Duration,
    drop_log_interval: Duration,
    /// Sampled drops of the current interval.
    drops: Aggregator,
    /// Entries per list as of the last sweep, and when it ran.
    list_entries: Option<(ListCounts, u64)>,
    state: StateDir,
    /// Live edits and automatic blocks, as persisted.
    live: LiveState,
    /// The policy file SIGHUP reloads.
    policy: Option<std::path::PathBuf>,
    /// Bouncer mode: the LAPI to pull from, and what was applied.
    crowdsec: Option<crowdsec::Source>,
    applier: crowdsec::Applier,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The interface index of `name` in this network namespace.
fn ifindex(name: &str) -> Option<u32> {
    let c_name = std::ffi::CString::new(name).ok()?;
    // SAFETY: valid NUL-terminated string; the call only reads it.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    (index != 0).then_some(index)
}

/// One controller per pin directory: an exclusive `flock` on the pin root
/// (root-only, 0700), held for the process's life (released by the kernel
/// even on SIGKILL; edits lock the versioned maps directory, another inode).
fn take_run_lock(pins: &PinDir) -> anyhow::Result<DirLock> {
    DirLock::try_acquire(pins.root())?.ok_or_else(|| {
        let owner = DirLock::holder(pins.root()).unwrap_or_else(|| "another process".into());
        Error::LockTimeout(format!(
            "another `filter-ctl run` ({owner}) already manages {}: stop it first, or give all interfaces to one `run`",
            pins.root().display()
        ))
        .into()
    })
}

/// Refuses what `run` must not do before anything changes.
fn preflight(pins: &PinDir, options: &RunOptions) -> anyhow::Result<()> {
    if let Some(problem) = pins::private_bpffs(pins.root()) {
        if !options.allow_private_bpffs {
            return Err(Error::Insecure(format!(
                "{problem}; run filter-ctl in the host's mount namespace (systemd: no PrivateMounts=, containers: mount the host's /sys/fs/bpf), or pass --allow-private-bpffs if that is what you want"
            ))
            .into());
        }
        warn!("{problem} (allowed by --allow-private-bpffs)");
    }
    let mismatches =
        loader::capacity_mismatches(pins, options.list_capacity, options.bucket_capacity)?;
    if let Some((map, pinned, asked)) = mismatches.first() {
        return Err(Error::Incompatible(format!(
            "the pinned {map} holds {pinned} entries, not the {asked} asked for: capacities are fixed when the maps are created. Start without the capacity option to keep the pinned maps, or remove the filter (`filter-ctl --pin-dir {} detach`, which drops its lists) and start again",
            pins.root().display()
        ))
        .into());
    }
    Ok(())
}

/// Runs the controller until SIGINT/SIGTERM. The filter keeps enforcing
/// after it returns.
pub fn run(pins: &PinDir, options: &RunOptions) -> anyhow::Result<()> {
    // The state and the policy file are checked before anything changes.
    let state = StateDir::open(&options.state_dir)?;
    let live = LiveState::load(&state, options.discard_corrupt_state).map_err(|e| {
        e.context("reading the live state; pass --discard-corrupt-state to move a corrupt file aside and start without it")
    })?;
    let policies = PolicyStore::new(&state);
    let active = match policies.active() {
        Ok(Some(entry)) => Some(policy::load_version(&policies, &entry.version)),
        Ok(None) => None,
        Err(err) => Some(Err(err)),
    }
    .transpose()
    .context("reading the active policy from the state directory")?;
    let loaded = options
        .policy
        .as_deref()
        .map(policy::load_file)
        .transpose()?;
    // Interfaces and mode: the options', else the --policy file's, else the
    // active policy's (a `run` after a reboot comes back as it was).
    let from_policy = loaded.as_ref().or(active.as_ref()).map(|l| &l.policy);
    let mut ifaces = options.ifaces.clone();
    if ifaces.is_empty() {
        ifaces = from_policy
            .map(|p| p.interfaces.clone())
            .unwrap_or_default();
    }
    if ifaces.is_empty() {
        return Err(Error::BadInput(
            "no interface to attach to: give --iface, or list `interfaces` in the --policy file"
                .into(),
        )
        .into());
    }
    let mode = options
        .mode
        .or_else(|| from_policy.and_then(|p| p.mode))
        .unwrap_or(Mode::Auto);
    // Bouncer mode: a bad URL or an unsafe key file is refused before
    // anything changes.
    let crowdsec_source = crowdsec::resolve(
        &options.crowdsec,
        from_policy.and_then(|p| p.crowdsec.as_ref()),
    )?;

    pins::ensure_bpffs_mounted()?;
    // A failed start must change nothing: it detaches what it attached and,
    // if the pin directory was empty before, removes the maps it pinned.
    let fresh = pins.is_empty();
    pins.create()?;
    let _lock = take_run_lock(pins)?;
    preflight(pins, options)?;
    let mut attached = Vec::new();
    let caps = Capacities {
        list: options.list_capacity.unwrap_or(Capacities::default().list),
        buckets: options
            .bucket_capacity
            .unwrap_or(Capacities::default().buckets),
    };
    let started = loader::load(pins, &caps).and_then(|mut ebpf| {
        // The lists, rules and policy go in before the first attach: after
        // a reboot the filter starts as it was, never empty.
        prepare_maps(pins, &state, &live, fresh, loaded.as_ref())?;
        let mut watched = BTreeMap::new();
        for iface in &ifaces {
            let already = pins.link(iface).exists();
            name_slot(pins, iface);
            let done = loader::attach(&mut ebpf, pins, iface, mode)?;
            if !already {
                attached.push(iface.clone());
            }
            println!("filter-ctl: attached to {iface} ({})", done.how);
            watched.insert(
                iface.clone(),
                Watched {
                    mode: done.mode.map(str::to_string),
                    ifindex: ifindex(iface),
                    since_unix: now_unix(),
                },
            );
        }
        // After attaching, so that a bad interface is reported first; a
        // taken address is rolled back like any other failed start.
        let metrics = options.metrics_addr.map(metrics::bind).transpose()?;
        Ok(Controller {
            pins: pins.clone(),
            mode,
            ebpf,
            ifaces: watched,
            metrics,
            sweep_interval: options.sweep_interval,
            drop_log_interval: options.drop_log_interval,
            drops: Aggregator::new(),
            list_entries: None,
            state: state.clone(),
            applier: crowdsec::Applier::new(&live),
            live,
            policy: options.policy.clone(),
            crowdsec: crowdsec_source.clone(),
        })
    });
    let mut controller = match started {
        Ok(controller) => controller,
        Err(err) => {
            let cleanup = if fresh {
                loader::detach_all(pins).map(|_| ())
            } else {
                attached
                    .iter()
                    .try_for_each(|iface| loader::detach(pins, iface))
            };
            if let Err(cleanup) = cleanup {
                warn!("undoing the failed start failed: {cleanup:#}");
            }
            return Err(err);
        }
    };
    // Finish (roll back) a list change that a killed editor left behind.
    if let Some(filter) = Filter::try_open_for_edit(pins)? {
        drop(filter);
    }
    Filter::open(pins)?
        .set_sampling(&options.sampling)
        .context("setting drop sampling")?;
    info!("drop events: {}", options.sampling);
    controller.write_state();
    println!(
        "filter-ctl: running; pins under {}. Ctrl-C stops the controller, the filter stays attached (`filter-ctl detach` removes it)",
        pins.root().display()
    );
    std::io::stdout().flush().ok();

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(async {
        if let Some(listener) = controller.metrics.take() {
            let addr = listener.local_addr().ok();
            metrics::spawn(listener, pins.clone(), options.state_dir.clone())?;
            if let Some(addr) = addr {
                println!("filter-ctl: metrics on http://{addr}/metrics");
            }
        }
        controller.event_loop().await
    });
    ControllerState::remove(pins);
    result?;
    println!(
        "filter-ctl: controller stopped; {}",
        controller.exit_summary()
    );
    Ok(())
}

/// Fills the maps before the first attach: after a reboot (maps created
/// afresh) the state's policy and live entries; then the `--policy` file.
/// The first `run` over maps filled by an older filter-ctl (no state yet)
/// takes their entries into the state.
fn prepare_maps(
    pins: &PinDir,
    state: &StateDir,
    live: &LiveState,
    fresh: bool,
    loaded: Option<&crate::spec::policy::LoadedPolicy>,
) -> anyhow::Result<()> {
    let filter = Filter::open_for_edit(pins, Duration::from_secs(10))?;
    let policies = PolicyStore::new(state);
    if fresh {
        policy::restore(&filter, state).context("restoring the state")?;
    } else if live.is_empty() && policies.history()?.is_empty() {
        import_pinned_entries(&filter, state)?;
    }
    if let Some(loaded) = loaded {
        let outcome = policy::apply_loaded(&filter, state, loaded, None, "run")
            .with_context(|| format!("applying {}", loaded.path.display()))?;
        info!(
            "policy {} (sha256 {}): {}",
            loaded.path.display(),
            loaded.sha256,
            outcome.change.summary()
        );
    }
    Ok(())
}

/// Takes the entries of maps that predate the state directory into it
/// (the upgrade from CLI-only state): live edits and automatic blocks, with
/// their remaining times.
fn import_pinned_entries(filter: &Filter, state: &StateDir) -> anyhow::Result<()> {
    let now_mono = clock::monotonic_ns();
    let now_wall = SystemTime::now();
    let mut entries = Vec::new();
    for kind in [crate::maps::ListKind::Block, crate::maps::ListKind::Allow] {
        for (cidr, entry) in filter.list_entries_raw(kind)? {
            if !entry.is_active(now_mono) || entry.origin == filter_common::ORIGIN_POLICY {
                continue;
            }
            entries.push(LiveEntry {
                list: policy::list_name(kind),
                cidr,
                origin: policy::origin_of(&entry),
                expires_at: clock::remaining(entry.expires_at_ns, now_mono)
                    .map(|left| now_wall + left),
                rule: (entry.origin == filter_common::ORIGIN_AUTO).then_some(u16::from(entry.rule)),
            });
        }
    }
    if !entries.is_empty() {
        LiveJournal::new(state).add(&entries)?;
        info!(
            "took {} entries of the pinned lists into the state directory {}",
            entries.len(),
            state.path().display()
        );
    }
    Ok(())
}

impl Controller {
    /// SIGHUP: applies the `--policy` file again. A broken file changes
    /// nothing; the running policy stays and the log says why.
    fn reload(&mut self) {
        let Some(path) = self.policy.clone() else {
            warn!("SIGHUP: no --policy file to reload");
            return;
        };
        let result = policy::load_file(&path).and_then(|loaded| {
            let filter = Filter::open_for_edit(&self.pins, Duration::from_secs(10))?;
            let outcome = policy::apply_loaded(&filter, &self.state, &loaded, None, "reload")?;
            Ok((loaded.sha256, outcome))
        });
        match result {
            Ok((sha, outcome)) => info!(
                "SIGHUP: reloaded {} (sha256 {sha}): {}",
                path.display(),
                outcome.change.summary()
            ),
            Err(err) => warn!(
                "SIGHUP: {} not applied, the running policy stays: {err:#}",
                path.display()
            ),
        }
    }

    /// Reverts an unconfirmed policy whose deadline has passed.
    fn revert_if_due(&mut self) {
        let filter = match Filter::try_open_for_edit(&self.pins) {
            Ok(Some(filter)) => filter,
            Ok(None) => return, // an editor holds the lock: next second
            Err(err) => {
                warn!("checking for an unconfirmed policy: {err:#}");
                return;
            }
        };
        match policy::revert_if_due(&filter, &self.state) {
            Ok(Some(outcome)) => warn!(
                "policy {} was not confirmed in time: reverted to {} ({})",
                outcome
                    .previous
                    .as_ref()
                    .map_or("-", |v| v.policy_sha256.as_str()),
                outcome
                    .active
                    .as_ref()
                    .map_or("no policy", |v| v.policy_sha256.as_str()),
                outcome.change.summary()
            ),
            Ok(None) => {}
            Err(err) => warn!("reverting an unconfirmed policy failed: {err:#}"),
        }
    }

    async fn event_loop(&mut self) -> anyhow::Result<()> {
        let mut hangup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
        let mut interrupt =
            signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        let mut terminate =
            signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let filter = Filter::open(&self.pins)?;
        let ring =
            RingBuf::try_from(filter.map(maps::EVENTS)?).context("EVENTS is not a ring buffer")?;
        // SAFETY: the ring buffer owns its map fd and keeps it open, unchanged,
        // for as long as the AsyncFd owns the ring buffer.
        let mut ring = unsafe { AsyncFd::register(ring) }
            .map_err(|e| anyhow::anyhow!("watching the event ring buffer: {e}"))?;
        let mut links = Some(netwatch::watch().context("watching interfaces (rtnetlink)")?);
        let mut sweep = tokio::time::interval(self.sweep_interval);
        let mut drop_log = tokio::time::interval(self.drop_log_interval);
        drop_log.tick().await; // the first tick is immediate: skip it
        let mut top = tokio::time::interval(Duration::from_secs(1));
        // Sampled drops are submitted without a wake-up (filter-ebpf's
        // events.rs): they are read here, and on a wake-up for the others.
        let mut ring_poll = tokio::time::interval(EVENTS_POLL_INTERVAL);
        ring_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let resync = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut decisions = match self.crowdsec.clone() {
            Some(source) => {
                let (tx, rx) = tokio::sync::mpsc::channel(1);
                crowdsec::spawn_puller(source, tx, resync.clone())?;
                Some(rx)
            }
            None => None,
        };
        loop {
            tokio::select! {
                _ = interrupt.recv() => break,
                _ = terminate.recv() => break,
                _ = drop_log.tick() => {
                    log_drops(&self.drops.flush(), self.drop_log_interval);
                }
                _ = hangup.recv() => self.reload(),
                _ = top.tick() => {
                    self.write_top();
                    self.revert_if_due();
                }
                _ = sweep.tick() => {
                    self.sweep();
                    self.resync();
                }
                event = next_link_event(&mut links) => if let Some(event) = event { self.on_link_event(event) } else {
                    warn!("the rtnetlink watch ended; interfaces are checked every {}s instead", self.sweep_interval.as_secs());
                    links = None;
                },
                pulled = next_pull(&mut decisions) => if let Some(pulled) = pulled {
                    self.apply_decisions(&pulled, &resync);
                },
                _ = ring_poll.tick() => {
                    let blocks = drain_events(&filter, ring.get_mut(), &mut self.drops);
                    self.persist_autoblocks(&blocks);
                }
                guard = ring.readable_mut() => {
                    let mut guard = guard.context("waiting for events")?;
                    let blocks = drain_events(&filter, guard.get_inner_mut(), &mut self.drops);
                    self.persist_autoblocks(&blocks);
                    guard.clear_ready();
                }
            }
        }
        Ok(())
    }

    /// Applies one pull of `CrowdSec` decisions. A failure leaves what is
    /// enforced in place and asks the puller for the full set next time.
    fn apply_decisions(
        &mut self,
        pulled: &crowdsec::Pulled,
        resync: &std::sync::atomic::AtomicBool,
    ) {
        let started = std::time::Instant::now();
        let result = Filter::open_for_edit(&self.pins, Duration::from_secs(10))
            .and_then(|filter| self.applier.apply(&filter, Some(&mut self.live), pulled));
        match result {
            Ok(applied) => {
                let skipped = pulled.pull.skipped_total();
                if applied != crowdsec::Applied::default() || skipped > 0 {
                    info!(
                        "crowdsec: {} bans applied, {} lifted, {} skipped{} in {} ms ({} crowdsec entries)",
                        applied.added,
                        applied.removed,
                        skipped,
                        if applied.held > 0 {
                            format!(
                                ", {} left to the operator's or the policy's entry on the same prefix",
                                applied.held
                            )
                        } else {
                            String::new()
                        },
                        started.elapsed().as_millis(),
                        self.applier.known()
                    );
                }
            }
            Err(err) => {
                warn!(
                    "crowdsec: applying {} decisions failed, the enforced entries stay as they were; the next pull fetches the full set: {err:#}",
                    pulled.pull.bans.len() + pulled.pull.lifted.len()
                );
                resync.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }

    /// Records automatic blocks in the state, with wall-clock expiry, so
    /// that they outlive a reboot.
    fn persist_autoblocks(&mut self, blocks: &[LiveEntry]) {
        if blocks.is_empty() {
            return;
        }
        if let Err(err) = self.live.add(blocks) {
            warn!(
                "recording {} automatic blocks in the state failed (they are enforced, but would not survive a reboot): {err:#}",
                blocks.len()
            );
        }
    }

    /// Folds the state's journal into a snapshot once it has grown enough.
    fn compact_state(&mut self) {
        let result = self
            .live
            .refresh()
            .and_then(|()| self.live.maybe_compact(SystemTime::now()));
        match result {
            Ok(true) => info!("compacted the live state ({} entries)", self.live.len()),
            Ok(false) => {}
            Err(err) => warn!("compacting the live state failed: {err:#}"),
        }
    }

    /// Counts the lists and deletes expired entries. The walk takes no lock
    /// (at 1,000,000 entries it takes about a second, and edits must not
    /// wait for it); the deletion takes the edit lock unless an editor holds
    /// it right now (the next tick will): the controller never waits.
    fn sweep(&mut self) {
        self.compact_state();
        metrics::publish_origin_counts(&self.live);
        let scanned = Filter::open(&self.pins).and_then(|f| f.sweep_scan());
        let sweep = match scanned {
            Ok(scan) => scan,
            Err(err) => {
                warn!("sweeping expired entries failed: {err:#}");
                return;
            }
        };
        let counts = sweep.counts;
        if self.list_entries.map(|(c, _)| c) != Some(counts) {
            self.list_entries = Some((counts, now_unix()));
            self.write_state();
        }
        if sweep.expired.is_empty()
            && sweep.stale_overflows.is_none()
            && !sweep.table_counts_high
            && !sweep.summary_stale
            && !sweep.summary_lacking
        {
            return;
        }
        match Filter::try_open_for_edit(&self.pins) {
            Ok(Some(filter)) => {
                match filter.clear_stale_overflows(&sweep) {
                    Ok(0) => {}
                    Ok(n) => log::debug!("{n} host-table sets take new hosts again"),
                    Err(err) => warn!("clearing host-table overflow marks failed: {err:#}"),
                }
                match filter.resync_table_counts(&sweep) {
                    Ok(false) => {}
                    Ok(true) => info!("host-table counts were above its entries; set to them"),
                    Err(err) => warn!("recounting the host table failed: {err:#}"),
                }
                let mut removed = 0;
                for (kind, cidrs) in &sweep.expired {
                    match filter.remove_expired(*kind, cidrs) {
                        Ok(n) => removed += n,
                        Err(err) => warn!("deleting expired entries failed: {err:#}"),
                    }
                }
                if removed > 0 {
                    info!("removed {removed} expired entries");
                }
                if sweep.summary_lacking {
                    warn!(
                        "the blocklist summary lacked marks that blocklist entries need (their sources were not looked up, unless an automatic block or an edit was being written as the sweep looked); rebuilding it"
                    );
                }
                match filter.rebuild_stale_summary(&sweep) {
                    Ok(None) => {}
                    Ok(Some(marked)) => info!(
                        "rebuilt the blocklist summary: {} IPv4 and {} IPv6 bits marked for the tries (wide: IPv4 {}, IPv6 {}), {} and {} for the host table",
                        marked.bits_v4,
                        marked.bits_v6,
                        marked.wide_v4,
                        marked.wide_v6,
                        marked.table_v4,
                        marked.table_v6
                    ),
                    Err(err) => warn!("rebuilding the blocklist summary failed: {err:#}"),
                }
            }
            Ok(None) => log::debug!("an editor holds the lock; deleting at the next tick"),
            Err(err) => warn!("deleting expired entries failed: {err:#}"),
        }
    }

    fn on_link_event(&mut self, event: LinkEvent) {
        match event {
            LinkEvent::Removed { name } => self.lost(&name),
            LinkEvent::Added { name, index } => {
                let Some(watched) = self.ifaces.get(&name) else {
                    return;
                };
                if watched.ifindex != Some(index) {
                    // Deleted and created again between two events we saw.
                    if watched.ifindex.is_some() {
                        self.lost(&name);
                    }
                    self.reattach(&name);
                }
            }
            LinkEvent::Overrun => self.resync(),
        }
    }

    /// Compares each interface's index with the one it was attached at.
    fn resync(&mut self) {
        let names: Vec<String> = self.ifaces.keys().cloned().collect();
        for name in names {
            let now = ifindex(&name);
            let before = self.ifaces.get(&name).and_then(|w| w.ifindex);
            match (before, now) {
                (Some(_), None) => self.lost(&name),
                (None, Some(_)) => self.reattach(&name),
                (Some(a), Some(b)) if a != b => {
                    self.lost(&name);
                    self.reattach(&name);
                }
                _ => {}
            }
        }
    }

    /// `name` disappeared: its link is severed; drop the dead pin and wait.
    fn lost(&mut self, name: &str) {
        let Some(watched) = self.ifaces.get_mut(name) else {
            return;
        };
        if watched.ifindex.is_none() {
            return;
        }
        watched.ifindex = None;
        watched.since_unix = now_unix();
        warn!(
            "{name} disappeared; the filter will be attached again as soon as an interface of that name appears"
        );
        let pin = self.pins.link(name);
        if pin.exists()
            && let Err(err) = std::fs::remove_file(&pin)
        {
            warn!("removing the severed link pin {}: {err}", pin.display());
        }
        self.write_state();
    }

    fn reattach(&mut self, name: &str) {
        name_slot(&self.pins, name);
        match loader::attach(&mut self.ebpf, &self.pins, name, self.mode) {
            Ok(done) => {
                info!("{name} appeared again: attached ({})", done.how);
                if let Some(watched) = self.ifaces.get_mut(name) {
                    watched.ifindex = ifindex(name);
                    watched.mode = done.mode.map(str::to_string).or(watched.mode.take());
                    watched.since_unix = now_unix();
                }
            }
            Err(err) => warn!("{name} appeared again, but attaching to it failed: {err:#}"),
        }
        self.write_state();
    }

    /// Publishes the dropped sources so far for `filter-ctl top`.
    fn write_top(&self) {
        let summary = self.drops.peek();
        let snapshot = TopSnapshot {
            pid: std::process::id(),
            interval_secs: self.drop_log_interval.as_secs(),
            updated_unix: now_unix(),
            sources: summary
                .offenders
                .iter()
                .map(|o| TopSource {
                    source: o.source.to_string(),
                    estimated: o.estimated,
                    reason: o.reason.to_string(),
                    rule: o.rule.clone(),
                    consecutive: o.consecutive,
                })
                .collect(),
            other_sources: summary.other_sources,
            other_estimated: summary.other_estimated,
        };
        if let Err(err) = snapshot.write(&self.pins) {
            log::debug!("writing the top snapshot failed: {err:#}");
        }
    }

    fn write_state(&self) {
        let state = ControllerState {
            pid: std::process::id(),
            interfaces: self
                .ifaces
                .iter()
                .map(|(name, w)| InterfaceState {
                    name: name.clone(),
                    state: if w.ifindex.is_some() {
                        "attached".into()
                    } else {
                        "missing".into()
                    },
                    mode: w.mode.clone(),
                    since_unix: w.since_unix,
                })
                .collect(),
            list_entries: self.list_entries.map(|(counts, _)| counts),
            list_entries_at_unix: self.list_entries.map(|(_, at)| at),
        };
        if let Err(err) = state.write(&self.pins) {
            warn!("recording the controller state failed: {err:#}");
        }
    }

    /// What is true at exit, e.g. "the filter is still attached to eth1;
    /// detached from eth2, which disappeared".
    fn exit_summary(&self) -> String {
        let names = |present: bool| {
            self.ifaces
                .iter()
                .filter(|(_, w)| w.ifindex.is_some() == present)
                .map(|(name, _)| name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let (attached, gone) = (names(true), names(false));
        let mut parts = Vec::new();
        if !attached.is_empty() {
            parts.push(format!("the filter is still attached to {attached}"));
        }
        if !gone.is_empty() {
            parts.push(format!("detached from {gone}, which disappeared"));
        }
        if parts.is_empty() {
            "no interface is attached".into()
        } else {
            parts.join("; ")
        }
    }
}

/// Names the counters' slot of `iface` before (re)attaching to it. A
/// failure costs only the name in `stats` and the metrics, never the filter.
fn name_slot(pins: &PinDir, iface: &str) {
    let Some(index) = ifindex(iface) else {
        return;
    };
    if let Err(err) = Filter::open(pins).and_then(|f| f.name_interface(index, iface)) {
        warn!("naming the counters of {iface}: {err:#}");
    }
}

/// The next pull of `CrowdSec` decisions; never resolves without bouncer mode.
async fn next_pull(
    rx: &mut Option<tokio::sync::mpsc::Receiver<crowdsec::Pulled>>,
) -> Option<crowdsec::Pulled> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// The next interface event; never resolves once the watch is gone.
async fn next_link_event(
    links: &mut Option<tokio::sync::mpsc::UnboundedReceiver<LinkEvent>>,
) -> Option<LinkEvent> {
    match links {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Reads every waiting event: automatic blocks are logged at once (and
/// returned, for the state), sampled drops go to `drops` (logged per source
/// at the end of each interval).
fn drain_events(
    filter: &Filter,
    ring: &mut RingBuf<MapData>,
    drops: &mut Aggregator,
) -> Vec<LiveEntry> {
    let mut blocks = Vec::new();
    let config = filter.config().unwrap_or_default();
    let rules = RuleTable::read(filter).ok();
    let rule_name = |id: u32| {
        rules
            .as_ref()
            .map_or_else(|| format!("rule {id}"), |r| r.describe(id))
    };
    while let Some(item) = ring.next() {
        match events::decode(&item) {
            Event::AutoBlock(event) => {
                let remaining = clock::remaining(event.expires_at_ns, clock::monotonic_ns())
                    .unwrap_or_default();
                let source = source_cidr(event.source, &config);
                info!(
                    "autoblock: {source} exceeded rule {} ({} over-limit packets in its window); blocked for {}",
                    rule_name(event.rule),
                    event.over_limit,
                    format_duration(remaining)
                );
                blocks.push(LiveEntry {
                    list: crate::state::ListName::Block,
                    cidr: source,
                    origin: crate::state::Origin::Auto,
                    expires_at: Some(SystemTime::now() + remaining),
                    rule: u16::try_from(event.rule).ok(),
                });
            }
            Event::Drop(event) => {
                if let Some(drop) = sampled_drop(&event, &rule_name) {
                    drops.record(drop);
                }
            }
            Event::Unknown { header, len } => warn!(
                "event of kind {} ({len} bytes, header says {}) ignored",
                header.kind, header.len
            ),
            Event::Short(len) => warn!("short event ({len} bytes) ignored"),
        }
    }
    blocks
}

/// A drop event as the aggregator takes it; `None` for a frame without a
/// source (malformed before its IP header): those are counted, not named.
fn sampled_drop(event: &DropEvent, rule_name: &impl Fn(u32) -> String) -> Option<SampledDrop> {
    let source = match event.family {
        4 => {
            let v6 = std::net::Ipv6Addr::from(event.source);
            std::net::IpAddr::V4(v6.to_ipv4_mapped()?)
        }
        6 => std::net::IpAddr::V6(std::net::Ipv6Addr::from(event.source)),
        _ => return None,
    };
    let reason = filter_common::reason::NAMES
        .get(usize::from(event.reason))
        .copied()
        .unwrap_or("unknown");
    Some(SampledDrop {
        source,
        reason,
        rule: (event.rule != filter_common::NO_RULE).then(|| rule_name(u32::from(event.rule))),
        weight: u64::from(event.weight),
    })
}

/// How often the event ring buffer is read without a wake-up: drop events
/// arrive at most this late (a half-full ring wakes the reader at once).
const EVENTS_POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Logs an interval's sampled drops: one line per source, heaviest first.
fn log_drops(summary: &drops::Summary, interval: Duration) {
    for offender in &summary.offenders {
        tracing::info!(
            source = %offender.source,
            estimated_packets = offender.estimated,
            sampled_events = offender.events,
            reason = offender.reason,
            rule = offender.rule.as_deref().unwrap_or("-"),
            consecutive_intervals = offender.consecutive,
            repeat_offender = offender.is_repeat(),
            "{}",
            offender.line(interval)
        );
    }
    if summary.other_sources > 0 {
        tracing::info!(
            other_sources = summary.other_sources,
            estimated_packets = summary.other_estimated,
            "{} more sources dropped ~{} packets in the last {}s",
            summary.other_sources,
            summary.other_estimated,
            interval.as_secs()
        );
    }
}
