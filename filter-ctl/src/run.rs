//! `filter-ctl run`: load, attach, pin, then log automatic-block events and
//! sweep expired entries until SIGINT/SIGTERM.

use std::{
    fs::{self, File},
    io::Write as _,
    os::fd::AsRawFd as _,
    time::Duration,
};

use anyhow::{Context as _, bail};
use aya::maps::{MapData, RingBuf};
use filter_common::{AutoBlockEvent, EventHeader, maps};
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

/// One controller per pin directory: an exclusive `flock` on the pin root
/// directory, held for the process's life (released by the kernel even on
/// SIGKILL; edits lock the versioned maps directory, a different inode).
fn take_run_lock(pins: &PinDir) -> anyhow::Result<File> {
    let root = pins.root();
    let dir = File::open(root).with_context(|| format!("opening {}", root.display()))?;
    // SAFETY: valid fd owned by `dir`.
    if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let owner = lock_holder(&dir).map_or_else(String::new, |pid| format!(" (pid {pid})"));
        bail!(
            "another `filter-ctl run`{owner} already manages {}: stop it first, or give all interfaces to one `run`",
            root.display()
        );
    }
    Ok(dir)
}

/// The pid holding a `flock` on `file`, from /proc/locks.
fn lock_holder(file: &File) -> Option<u32> {
    use std::os::unix::fs::MetadataExt as _;
    let inode = file.metadata().ok()?.ino();
    let locks = fs::read_to_string("/proc/locks").ok()?;
    locks.lines().find_map(|line| {
        // "1: FLOCK  ADVISORY  WRITE 1234 00:2a:5678 0 EOF"
        let fields: Vec<&str> = line.split_whitespace().collect();
        let device_inode = fields.get(5)?;
        let line_inode: u64 = device_inode.rsplit(':').next()?.parse().ok()?;
        (fields.get(1) == Some(&"FLOCK") && line_inode == inode)
            .then(|| fields.get(4)?.parse().ok())
            .flatten()
    })
}

pub fn run(pins: &PinDir, ifaces: &[String], mode: Mode, caps: &Capacities) -> anyhow::Result<()> {
    ensure_bpffs_mounted()?;
    // A failed start must change nothing: it detaches what it attached and,
    // if the pin directory was empty before, removes the maps it pinned.
    let fresh = pins.is_empty();
    pins.create()?;
    let _lock = take_run_lock(pins)?;
    let mut attached = Vec::new();
    let started = loader::load(pins, caps).and_then(|mut ebpf| {
        for iface in ifaces {
            let already = pins.link(iface).exists();
            let how = loader::attach(&mut ebpf, pins, iface, mode)?;
            if !already {
                attached.push(iface.clone());
            }
            println!("filter-ctl: attached to {iface} ({how})");
        }
        Ok(ebpf)
    });
    let ebpf = match started {
        Ok(ebpf) => ebpf,
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
        if item.len() < size_of::<EventHeader>() {
            warn!("short event ({} bytes) ignored", item.len());
            continue;
        }
        // SAFETY: the record holds at least a header (checked length); read unaligned.
        let header: EventHeader = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
        // The only kind so far: automatic blocks.
        if header != AutoBlockEvent::HEADER || item.len() < size_of::<AutoBlockEvent>() {
            warn!(
                "event of kind {} ({} bytes, header says {}) ignored",
                header.kind,
                item.len(),
                header.len
            );
            continue;
        }
        // SAFETY: the kernel wrote an AutoBlockEvent (checked header and length); read unaligned.
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
