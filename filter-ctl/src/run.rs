//! `filter-ctl run`: load, attach, pin, then log automatic-block events and
//! sweep expired entries until SIGINT/SIGTERM.

use std::{
    fs::{self, File},
    io::Write as _,
    os::fd::AsRawFd as _,
    path::PathBuf,
    time::Duration,
};

use anyhow::{Context as _, bail};
use aya::maps::{MapData, RingBuf};
use filter_common::{AutoBlockEvent, maps};
use filter_ctl::{
    clock,
    duration::format_duration,
    filter::{Filter, source_cidr},
    limits::RuleTable,
    loader::{self, Capacities, Mode},
    pins::{PinDir, ensure_bpffs_mounted},
};
use log::{info, warn};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
};

/// How often expired list entries and automatic blocks are deleted (the
/// kernel already ignores them; this only frees the memory).
const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// One controller per pin directory: an exclusive lock held for the process's life.
fn take_run_lock(pins: &PinDir) -> anyhow::Result<File> {
    let dir = PathBuf::from("/run/filter-ctl");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let name: String = pins
        .root()
        .to_string_lossy()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let path = dir.join(format!("{name}.lock"));
    let mut file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening lock file {}", path.display()))?;
    // SAFETY: valid fd owned by `file`.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let owner = fs::read_to_string(&path).unwrap_or_default();
        bail!(
            "another `filter-ctl run` (pid {}) already manages {}: stop it first, or give all interfaces to one `run`",
            owner.trim(),
            pins.root().display()
        );
    }
    file.set_len(0).ok();
    write!(file, "{}", std::process::id()).ok();
    Ok(file)
}

pub fn run(pins: &PinDir, ifaces: &[String], mode: Mode, caps: &Capacities) -> anyhow::Result<()> {
    ensure_bpffs_mounted()?;
    let _lock = take_run_lock(pins)?;
    // A failed start must change nothing: if this run created the pins, it removes them.
    let fresh = !pins.is_loaded();
    let started = loader::load(pins, caps).and_then(|mut ebpf| {
        for iface in ifaces {
            let how = loader::attach(&mut ebpf, pins, iface, mode)?;
            println!("filter-ctl: attached to {iface} ({how})");
        }
        Ok(ebpf)
    });
    let ebpf = match started {
        Ok(ebpf) => ebpf,
        Err(err) => {
            if fresh
                && pins.root().exists()
                && let Err(cleanup) = loader::detach_all(pins)
            {
                warn!("removing the pins this run created failed: {cleanup:#}");
            }
            return Err(err);
        }
    };
    println!(
        "filter-ctl: running; pins under {}. Ctrl-C stops the controller, the filter stays attached (`filter-ctl detach` removes it)",
        pins.root().display()
    );
    std::io::stdout().flush().ok();

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(event_loop(pins))?;
    // Dropping `ebpf` closes our program and map handles; the pinned links keep
    // the program attached.
    drop(ebpf);
    println!("filter-ctl: controller stopped; the filter is still attached");
    Ok(())
}

async fn event_loop(pins: &PinDir) -> anyhow::Result<()> {
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let filter = Filter::open(pins)?;
    let ring =
        RingBuf::try_from(filter.map(maps::EVENTS)?).context("EVENTS is not a ring buffer")?;
    // SAFETY: the ring buffer owns its map fd and keeps it open, unchanged,
    // for as long as the AsyncFd owns the ring buffer.
    let mut ring = unsafe { AsyncFd::register(ring) }
        .map_err(|e| anyhow::anyhow!("watching the event ring buffer: {e}"))?;
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    loop {
        tokio::select! {
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
            _ = sweep.tick() => {
                match Filter::open_for_edit(pins).and_then(|f| f.sweep_expired()) {
                    Ok(0) => {}
                    Ok(n) => info!("removed {n} expired entries"),
                    Err(err) => warn!("sweeping expired entries failed: {err:#}"),
                }
            }
            guard = ring.readable_mut() => {
                let mut guard = guard.context("waiting for events")?;
                drain_events(&filter, guard.get_inner_mut());
                guard.clear_ready();
            }
        }
    }
    Ok(())
}

fn drain_events(filter: &Filter, ring: &mut RingBuf<MapData>) {
    let config = filter.config().unwrap_or_default();
    let rules = RuleTable::read(filter).ok();
    while let Some(item) = ring.next() {
        if item.len() < size_of::<AutoBlockEvent>() {
            warn!("short event ({} bytes) ignored", item.len());
            continue;
        }
        // SAFETY: the kernel wrote an AutoBlockEvent (checked length); read unaligned.
        let event: AutoBlockEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
        let rule = rules.as_ref().map_or_else(
            || format!("slot {}", event.rule),
            |r| r.describe(event.rule),
        );
        let remaining =
            clock::remaining(event.expires_at_ns, clock::monotonic_ns()).unwrap_or_default();
        info!(
            "autoblock: {} exceeded rule {rule} ({} over-limit packets in its window); blocked for {}",
            source_cidr(event.source, &config),
            event.over_limit,
            format_duration(remaining)
        );
    }
}
