//! Where everything lives on bpffs. One root per filter instance (default
//! `/sys/fs/bpf/filter-ctl`), with a layout version below it so that a changed
//! map layout never reuses an old pin.

use std::{
    ffi::CString,
    fs,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};

pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/filter-ctl";
/// Bump when any map's key or value layout changes.
pub const LAYOUT_VERSION: &str = "v3";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const BPFFS_MOUNT_POINT: &str = "/sys/fs/bpf";

#[derive(Clone, Debug)]
pub struct PinDir {
    root: PathBuf,
}

impl PinDir {
    #[must_use]
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    #[must_use]
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Directory holding the map pins (aya pins each map here by name).
    #[must_use]
    pub fn maps_dir(&self) -> PathBuf {
        self.root.join(LAYOUT_VERSION)
    }

    #[must_use]
    pub fn map(&self, name: &str) -> PathBuf {
        self.maps_dir().join(name)
    }

    /// Pin of the XDP link on `iface` (interface names never contain '/').
    #[must_use]
    pub fn link(&self, iface: &str) -> PathBuf {
        self.maps_dir().join(format!("link_{iface}"))
    }

    /// Interfaces with a pinned link, from the pin names.
    pub fn linked_interfaces(&self) -> anyhow::Result<Vec<String>> {
        let dir = self.maps_dir();
        let Ok(entries) = fs::read_dir(&dir) else {
            return Ok(Vec::new());
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
            if let Some(iface) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("link_"))
            {
                names.push(iface.to_string());
            }
        }
        names.sort();
        Ok(names)
    }

    /// Whether a filter has been loaded here (its maps are pinned).
    #[must_use]
    pub fn is_loaded(&self) -> bool {
        self.map(filter_common::maps::STATS).exists()
    }

    /// Whether nothing at all is pinned here (no directory, or an empty one).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        fs::read_dir(self.maps_dir()).map_or(true, |mut entries| entries.next().is_none())
    }

    /// Fails with a hint when nothing is pinned here.
    pub fn ensure_loaded(&self) -> anyhow::Result<()> {
        if self.is_loaded() {
            return Ok(());
        }
        if !self.root.exists() && !is_bpffs(Path::new(BPFFS_MOUNT_POINT)) {
            bail!(
                "no filter is loaded: bpffs is not mounted at {BPFFS_MOUNT_POINT}, so nothing can be pinned; start one with `filter-ctl run --iface IF`"
            );
        }
        bail!(
            "no filter is loaded under {} (no pinned maps); start one with `filter-ctl run --iface IF`",
            self.root.display()
        )
    }

    /// Creates the directories, mounting bpffs first if needed.
    pub fn create(&self) -> anyhow::Result<()> {
        ensure_bpffs_mounted()?;
        let mut ancestor = self.root.as_path();
        while !ancestor.exists() {
            ancestor = ancestor.parent().unwrap_or(Path::new("/"));
        }
        if !is_bpffs(ancestor) {
            bail!(
                "pin directory {} is not on a bpf filesystem ({} is not bpffs); choose a path under {BPFFS_MOUNT_POINT}",
                self.root.display(),
                ancestor.display()
            );
        }
        fs::create_dir_all(self.maps_dir())
            .with_context(|| format!("creating pin directory {}", self.maps_dir().display()))
    }

    /// Removes the pin directories (they must be empty of pins by then).
    pub fn remove_dirs(&self) -> anyhow::Result<()> {
        for dir in [self.maps_dir(), self.root.clone()] {
            if dir.exists() {
                fs::remove_dir(&dir).with_context(|| format!("removing {}", dir.display()))?;
            }
        }
        Ok(())
    }
}

/// Whether `path` is on a bpf filesystem.
#[must_use]
pub fn is_bpffs(path: &Path) -> bool {
    let Ok(c_path) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid NUL-terminated path and a zeroed out-parameter.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &raw mut stat) };
    #[allow(
        clippy::unnecessary_cast,
        reason = "f_type's type differs between libc targets"
    )]
    let magic = stat.f_type as i64;
    rc == 0 && magic == BPF_FS_MAGIC
}

/// Mounts bpffs at /sys/fs/bpf unless it already is (a fresh machine here has none).
pub fn ensure_bpffs_mounted() -> anyhow::Result<()> {
    let mount_point = Path::new(BPFFS_MOUNT_POINT);
    if is_bpffs(mount_point) {
        return Ok(());
    }
    fs::create_dir_all(mount_point).with_context(|| format!("creating {BPFFS_MOUNT_POINT}"))?;
    let source = CString::new("bpf").expect("static string");
    let target = CString::new(BPFFS_MOUNT_POINT).expect("static string");
    // SAFETY: valid NUL-terminated strings; no mount data.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            source.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        bail!(
            "bpffs is not mounted at {BPFFS_MOUNT_POINT} and mounting it failed: {err} (run as root, or `mount -t bpf bpf {BPFFS_MOUNT_POINT}`)"
        );
    }
    log::info!("mounted bpffs at {BPFFS_MOUNT_POINT}");
    Ok(())
}
