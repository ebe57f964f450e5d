//! Loading the embedded program, attaching it, and pinning the links so that
//! enforcement outlives the controller.

use std::path::Path;

use anyhow::{Context as _, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData},
    programs::{
        Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
    },
};
use filter_common::{Config, capacity, maps};

use super::pins::PinDir;
use crate::error::Error;

/// The compiled XDP program, embedded at build time.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/filter"));

/// Name of the XDP program in the object.
pub const PROGRAM: &str = "filter";

/// Map capacities chosen at load time. Maps that already exist as pins keep
/// the capacity they were created with.
#[derive(Clone, Copy, Debug)]
pub struct Capacities {
    /// Entries per allow/block list and family.
    pub list: u32,
    /// Tracked (rule, source) buckets.
    pub buckets: u32,
}

impl Default for Capacities {
    fn default() -> Self {
        Self {
            list: capacity::LIST_ENTRIES,
            buckets: capacity::BUCKETS,
        }
    }
}

pub use crate::spec::attach::Mode;

/// Loads the program, reusing maps already pinned under `pins` (so state
/// survives a controller restart) and pinning the ones that are new.
pub fn load(pins: &PinDir, caps: &Capacities) -> anyhow::Result<Ebpf> {
    crate::abi::check_object().context(
        "the embedded XDP program does not match this build's ABI table (a build error)",
    )?;
    super::buckets::check_capacity(caps.buckets).map_err(Error::BadInput)?;
    pins.create()?;
    check_pinned_layout(pins)?;
    let maps_dir = pins.maps_dir();
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(&maps_dir)
        .map_max_entries(maps::ALLOW_V4, caps.list)
        .map_max_entries(maps::ALLOW_V6, caps.list)
        .map_max_entries(maps::BLOCK_V4, caps.list)
        .map_max_entries(maps::BLOCK_V6, caps.list)
        .map_max_entries(maps::SHADOW_BLOCK_V4, caps.list)
        .map_max_entries(maps::SHADOW_BLOCK_V6, caps.list)
        .map_max_entries(maps::BUCKETS, caps.buckets)
        .map_max_entries(maps::BLOCK_HOSTS, filter_common::host_slots(caps.list))
        .map_max_entries(
            maps::BLOCK_HOST_SETS,
            filter_common::host_set_words(filter_common::host_slots(caps.list)),
        )
        .load(EBPF_OBJECT)
        .map_err(|e| load_hint(e, &maps_dir))?;
    let program: &mut Xdp = ebpf
        .program_mut(PROGRAM)
        .ok_or_else(|| anyhow!("program {PROGRAM} missing from the embedded object"))?
        .try_into()
        .context("program is not XDP")?;
    program.load().map_err(|e| {
        // The verifier refuses a program with EACCES too: a refusal comes
        // with its log, a missing privilege without one.
        let refused = matches!(
            &e,
            aya::programs::ProgramError::LoadError { verifier_log, .. }
                if !verifier_log.to_string().trim().is_empty()
        );
        if !refused && is_permission(os_errno(&e)) {
            return anyhow::Error::new(Error::Permission(
                "loading the XDP program was not permitted: filter-ctl needs root (CAP_BPF, CAP_NET_ADMIN)".into(),
            ));
        }
        anyhow::Error::new(e).context("the kernel verifier rejected the XDP program")
    })?;
    // Under the edit lock: the maps are pinned already, so an editor may
    // be at them (it refuses uninitialized ones, see `Filter::open_for_edit`)
    // and would lose its CONFIG counts to a write from here.
    let edit_lock = super::lock::DirLock::acquire(
        &pins.maps_dir(),
        "the edit lock",
        super::lock::DEFAULT_TIMEOUT,
    )?;
    init_config(pins)?;
    drop(edit_lock);
    Ok(ebpf)
}

fn load_hint(err: aya::EbpfError, dir: &Path) -> anyhow::Error {
    match os_errno(&err) {
        // aya's own message repeats itself; the cause is all the user needs.
        errno if is_permission(errno) => Error::Permission(
            "creating the filter's maps was not permitted: filter-ctl needs root (CAP_BPF and CAP_NET_ADMIN)".into(),
        )
        .into(),
        Some(libc::EINVAL) => anyhow::Error::new(err).context(Error::Incompatible(format!(
            "maps pinned under {} do not match this build (stale layout?); run `filter-ctl detach` to remove them",
            dir.display()
        ))),
        _ => anyhow::Error::new(err).context(format!(
            "loading the XDP program with maps pinned under {}",
            dir.display()
        )),
    }
}

/// The OS error number at the bottom of an error's source chain, if any.
#[must_use]
pub fn os_errno(err: &(dyn std::error::Error + 'static)) -> Option<i32> {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && let Some(errno) = io.raw_os_error()
        {
            return Some(errno);
        }
        current = e.source();
    }
    None
}

fn is_permission(errno: Option<i32>) -> bool {
    matches!(errno, Some(libc::EPERM | libc::EACCES))
}

/// Refuses, with a hint, maps pinned by a build with another layout (the
/// program would otherwise fail verification or misread them).
fn check_pinned_layout(pins: &PinDir) -> anyhow::Result<()> {
    for def in &filter_common::abi::MAPS {
        let (name, key_size, value_size) = (def.name, def.key_size, def.value_size);
        let path = pins.map(name);
        if !path.exists() {
            continue;
        }
        let data =
            MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
        let info = data
            .info()
            .with_context(|| format!("reading {}", path.display()))?;
        if info.key_size() != key_size || info.value_size() != value_size {
            return Err(Error::Incompatible(format!(
                "the map pinned at {} was made by another filter-ctl build (key/value {}/{} bytes, this build needs {key_size}/{value_size}); remove the old filter with `filter-ctl --pin-dir {} detach`",
                path.display(),
                info.key_size(),
                info.value_size(),
                pins.root().display()
            ))
            .into());
        }
        if def.entries != 0 && info.max_entries() != def.entries {
            return Err(Error::Incompatible(format!(
                "the map pinned at {} was made by another filter-ctl build ({} entries, this build needs {}); remove the old filter with `filter-ctl --pin-dir {} detach`",
                path.display(),
                info.max_entries(),
                def.entries,
                pins.root().display()
            ))
            .into());
        }
    }
    Ok(())
}

/// Writes the default aggregation prefixes on a fresh CONFIG map (all
/// zero), the `BUCKETS` hash seed and mask where they are not set yet (a
/// seed is chosen once, when the maps are created: a new one would move
/// every tracked source to another slot), and the tick clock's scale
/// (`tick_ns`, `jiffies_at_zero`) where it is missing.
fn init_config(pins: &PinDir) -> anyhow::Result<()> {
    let data =
        MapData::from_pin(pins.map(maps::CONFIG)).context("opening the pinned CONFIG map")?;
    let mut config: Array<MapData, Config> =
        Array::try_from(aya::maps::Map::Array(data)).context("CONFIG is not an array")?;
    let current = config.get(&0, 0).context("reading CONFIG")?;
    let mut next = current;
    if current.ipv4_source_prefix == 0 {
        // The default rule starts in its first slot (empty: no default limit).
        next = Config {
            ipv4_source_prefix: filter_common::DEFAULT_IPV4_SOURCE_PREFIX,
            ipv6_source_prefix: filter_common::DEFAULT_IPV6_SOURCE_PREFIX,
            default_rule_slot: filter_common::DEFAULT_RULE,
            ..Config::default()
        };
    }
    seed_table(
        pins,
        maps::BUCKETS,
        &mut next.bucket_seed,
        &mut next.bucket_mask,
    )?;
    seed_table(
        pins,
        maps::BLOCK_HOSTS,
        &mut next.host_seed,
        &mut next.host_mask,
    )?;
    if next.tick_ns == 0
        && let Some(tick_ns) = crate::clock::tick_ns()
    {
        // Without it the rate limiter keeps to the precise clock.
        next.tick_ns = tick_ns;
        next.jiffies_at_zero = crate::clock::jiffies_at_zero(tick_ns);
    }
    if next != current {
        config.set(0, next, 0).context("writing CONFIG")?;
    }
    Ok(())
}

/// Gives the hashed table `name` (a power-of-two array) a random seed and
/// its mask, unless it has them: a new seed would move every entry.
fn seed_table(pins: &PinDir, name: &str, seed: &mut u64, mask: &mut u32) -> anyhow::Result<()> {
    let capacity = MapData::from_pin(pins.map(name))
        .with_context(|| format!("opening the pinned {name} map"))?
        .info()
        .with_context(|| format!("reading {name}"))?
        .max_entries();
    if *seed == 0 || *mask != capacity - 1 {
        *seed = super::buckets::random_seed()?;
        *mask = capacity - 1;
    }
    Ok(())
}

/// What [`attach`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attached {
    /// `native` or `skb` for a new attachment; `None` when the program was
    /// swapped into a link pinned before (it keeps the mode it had).
    pub mode: Option<&'static str>,
    /// How, in words, for the log ("native mode", ...).
    pub how: String,
}

/// Attaches to `iface` and pins the link. If a link is already pinned for it
/// (a previous controller was stopped or killed), the new program replaces the
/// old one on that link atomically: no packet goes unfiltered. A pinned link
/// whose interface went away meanwhile (the kernel severed it) is replaced
/// by a new attachment.
pub fn attach(ebpf: &mut Ebpf, pins: &PinDir, iface: &str, mode: Mode) -> anyhow::Result<Attached> {
    let program: &mut Xdp = ebpf
        .program_mut(PROGRAM)
        .ok_or_else(|| anyhow!("program {PROGRAM} missing"))?
        .try_into()
        .context("program is not XDP")?;
    let link_pin = pins.link(iface);
    if link_pin.exists() {
        let pinned = PinnedLink::from_pin(&link_pin)
            .with_context(|| format!("opening the pinned link {}", link_pin.display()))?;
        let fd_link: FdLink = pinned.into();
        let xdp_link = XdpLink::try_from(fd_link).context("the pinned link is not an XDP link")?;
        match program.attach_to_link(xdp_link) {
            Ok(id) => {
                // The pin keeps the link; dropping our handle must not detach it.
                let link = program.take_link(id)?;
                let fd_link: FdLink = link.try_into().context("link is not an fd link")?;
                drop(fd_link);
                return Ok(Attached {
                    mode: None,
                    how: "existing pinned link, program replaced in place".into(),
                });
            }
            Err(err) if os_errno(&err) == Some(libc::ENOLINK) => {
                log::warn!(
                    "the link pinned for {iface} was severed (the interface went away since); attaching anew"
                );
                std::fs::remove_file(&link_pin).with_context(|| {
                    format!("removing the severed link pin {}", link_pin.display())
                })?;
            }
            Err(err) => {
                return Err(anyhow::Error::new(err)
                    .context(format!("replacing the program on {iface}'s pinned link")));
            }
        }
    }
    let attempts: &[(XdpMode, &'static str)] = match mode {
        Mode::Auto => &[(XdpMode::Driver, "native"), (XdpMode::Skb, "skb")],
        Mode::Native => &[(XdpMode::Driver, "native")],
        Mode::Skb => &[(XdpMode::Skb, "skb")],
    };
    let mut errors = Vec::new();
    let mut busy = false;
    for (xdp_mode, name) in attempts {
        match program.attach(iface, *xdp_mode) {
            Ok(id) => {
                let link = program.take_link(id)?;
                let fd_link: FdLink = link.try_into().map_err(|_| {
                    anyhow!("the kernel attached {iface} without a bpf_link (too old?), which cannot be pinned")
                })?;
                fd_link
                    .pin(&link_pin)
                    .with_context(|| format!("pinning the link at {}", link_pin.display()))?;
                return Ok(Attached {
                    mode: Some(name),
                    how: format!("{name} mode"),
                });
            }
            Err(aya::programs::ProgramError::UnknownInterface { .. }) => {
                return Err(Error::NotFound(format!(
                    "interface {iface} does not exist in this network namespace (see `ip link`)"
                ))
                .into());
            }
            Err(err) => {
                busy |= matches!(os_errno(&err), Some(libc::EBUSY | libc::EEXIST));
                errors.push(format!("{name}: {:#}", anyhow::Error::new(err)));
            }
        }
    }
    let joined = errors.join("; ");
    let hint = if busy {
        format!(
            " — {iface} already has an XDP program attached (another filter-ctl pin directory, or another tool; see `ip link show {iface}`)"
        )
    } else if mode == Mode::Native {
        " — the driver may not support native XDP: try --mode skb".to_string()
    } else {
        String::new()
    };
    bail!("attaching to {iface} failed ({joined}){hint}")
}

/// The id of the program on `iface`'s pinned link, if it has one.
#[must_use]
pub fn linked_program_id(pins: &PinDir, iface: &str) -> Option<u32> {
    let pinned = PinnedLink::from_pin(pins.link(iface)).ok()?;
    let fd_link: FdLink = pinned.into();
    fd_link.info().ok().map(|info| info.program_id())
}

/// Maps whose pinned capacity differs from the one asked for: `(map,
/// pinned, asked)`. Capacities are fixed when the maps are created.
pub fn capacity_mismatches(
    pins: &PinDir,
    list: Option<u32>,
    buckets: Option<u32>,
) -> anyhow::Result<Vec<(&'static str, u32, u32)>> {
    let mut out = Vec::new();
    let wanted = [
        (maps::ALLOW_V4, list),
        (maps::ALLOW_V6, list),
        (maps::BLOCK_V4, list),
        (maps::BLOCK_V6, list),
        (maps::SHADOW_BLOCK_V4, list),
        (maps::SHADOW_BLOCK_V6, list),
        (maps::BLOCK_HOSTS, list.map(filter_common::host_slots)),
        (
            maps::BLOCK_HOST_SETS,
            list.map(|l| filter_common::host_set_words(filter_common::host_slots(l))),
        ),
        (maps::BUCKETS, buckets),
    ];
    for (name, asked) in wanted {
        let Some(asked) = asked else { continue };
        let path = pins.map(name);
        if !path.exists() {
            continue;
        }
        let data =
            MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
        let pinned = data
            .info()
            .with_context(|| format!("reading {}", path.display()))?
            .max_entries();
        if pinned != asked {
            out.push((name, pinned, asked));
        }
    }
    Ok(out)
}

/// Detaches `iface` (removes its link pin; the link goes with its last reference).
pub fn detach(pins: &PinDir, iface: &str) -> anyhow::Result<()> {
    let link_pin = pins.link(iface);
    if !link_pin.exists() {
        return Err(Error::NotFound(format!(
            "{iface} is not attached under {}",
            pins.root().display()
        ))
        .into());
    }
    let pinned = PinnedLink::from_pin(&link_pin)
        .with_context(|| format!("opening the pinned link {}", link_pin.display()))?;
    let fd_link = pinned
        .unpin()
        .with_context(|| format!("removing the pin {}", link_pin.display()))?;
    // Explicit detach, so a controller still holding the program does not keep it attached.
    let xdp_link = XdpLink::try_from(fd_link).context("the pinned link is not an XDP link")?;
    let fd_link: FdLink = xdp_link.try_into().context("link is not an fd link")?;
    aya::programs::links::Link::detach(fd_link)
        .with_context(|| format!("detaching from {iface}"))?;
    Ok(())
}

/// Detaches every interface and removes all pins and the directory. Pins of
/// maps this build does not know (an older layout under the same version
/// directory) are removed too: the directory belongs to filter-ctl.
pub fn detach_all(pins: &PinDir) -> anyhow::Result<Vec<String>> {
    let ifaces = pins.linked_interfaces()?;
    for iface in &ifaces {
        detach(pins, iface)?;
    }
    let dir = pins.maps_dir();
    if dir.exists() {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?
        {
            let path = entry
                .with_context(|| format!("reading {}", dir.display()))?
                .path();
            std::fs::remove_file(&path)
                .with_context(|| format!("removing pin {}", path.display()))?;
        }
    }
    pins.remove_dirs()?;
    Ok(ifaces)
}
