//! Where everything lives. Pins: one root per filter instance on bpffs
//! (default `/sys/fs/bpf/filter-ctl`), with the layout version below it so
//! that a changed map layout never reuses an old pin. Runtime files (the
//! controller's status, the journal of a list load): one directory per pin
//! root under `/run/filter-ctl`.
//!
//! Every directory of the filter's, and every directory on the way to it
//! below the bpffs mount, is owned by root and writable by nobody else:
//! otherwise another local user could unlink the link pin (and with it the
//! filter), rename the directory or hold its locks. Commands refuse such a
//! directory with [`Error::Insecure`].

use std::{
    ffi::CString,
    fs,
    os::unix::{
        ffi::OsStrExt as _,
        fs::{DirBuilderExt as _, MetadataExt as _},
    },
    path::{Component, Path, PathBuf},
};

use anyhow::Context as _;

use crate::error::Error;

pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/filter-ctl";
/// Runtime files of every filter instance, one subdirectory per pin root.
pub const RUNTIME_ROOT: &str = "/run/filter-ctl";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
pub const BPFFS_MOUNT_POINT: &str = "/sys/fs/bpf";

pub use filter_common::abi::LAYOUT_VERSION;

/// Name of the directory holding this build's pins: the layout version.
#[must_use]
pub fn layout_dir_name() -> String {
    format!("v{LAYOUT_VERSION}")
}

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
        self.root.join(layout_dir_name())
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

    /// This instance's runtime directory: `/run/filter-ctl/<pin root, escaped>`.
    #[must_use]
    pub fn runtime_dir(&self) -> PathBuf {
        let name: String = self
            .root
            .to_string_lossy()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        Path::new(RUNTIME_ROOT).join(name)
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

    /// Fails with a hint when nothing is pinned here, or when the pin
    /// directories could be tampered with by another user.
    pub fn ensure_loaded(&self) -> anyhow::Result<()> {
        match fs::symlink_metadata(self.map(filter_common::maps::STATS)) {
            Ok(_) => return self.check_secure(),
            Err(err) if err.kind() == std::io::ErrorKind::PermissionDenied => {
                return Err(Error::Permission(format!(
                    "permission denied reading {}: filter-ctl needs root",
                    self.root.display()
                ))
                .into());
            }
            Err(_) => {}
        }
        if !self.root.exists() && !is_bpffs(Path::new(BPFFS_MOUNT_POINT)) {
            return Err(Error::NotLoaded(format!(
                "no filter is loaded: bpffs is not mounted at {BPFFS_MOUNT_POINT}, so nothing can be pinned; start one with `filter-ctl run --iface IF`"
            ))
            .into());
        }
        if self.root.exists() {
            self.check_secure()?;
            if let Some(other) = self.other_layouts().first() {
                return Err(Error::Incompatible(format!(
                    "the filter under {} was made by another filter-ctl build (layout {other}, this build uses {}); remove it with `filter-ctl --pin-dir {} detach`, then start it again",
                    self.root.display(),
                    layout_dir_name(),
                    self.root.display()
                ))
                .into());
            }
        }
        Err(Error::NotLoaded(format!(
            "no filter is loaded under {} (no pinned maps); start one with `filter-ctl run --iface IF`",
            self.root.display()
        ))
        .into())
    }

    /// Layout directories of other builds (`v3`, ...) under the root.
    #[must_use]
    pub fn other_layouts(&self) -> Vec<String> {
        let ours = layout_dir_name();
        let Ok(entries) = fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| *n != ours && n.starts_with('v'))
            .collect();
        names.sort();
        names
    }

    /// Creates the pin directories (root-owned, 0700), mounting bpffs first
    /// if needed, and checks that nobody else can tamper with them.
    pub fn create(&self) -> anyhow::Result<()> {
        ensure_bpffs_mounted()?;
        if !self.root.is_absolute() {
            return Err(Error::BadInput(format!(
                "pin directory {} must be an absolute path under {BPFFS_MOUNT_POINT}",
                self.root.display()
            ))
            .into());
        }
        let mut ancestor = self.root.as_path();
        while !ancestor.exists() {
            ancestor = ancestor.parent().unwrap_or(Path::new("/"));
        }
        if !is_bpffs(ancestor) {
            return Err(Error::BadInput(format!(
                "pin directory {} is not on a bpf filesystem ({} is not bpffs); choose a path under {BPFFS_MOUNT_POINT}",
                self.root.display(),
                ancestor.display()
            ))
            .into());
        }
        // Check what exists before creating below it, then what was created.
        self.check_secure()?;
        create_private_dirs(&self.maps_dir())?;
        self.check_secure()
    }

    /// Refuses pin directories (and directories on the way to them below
    /// the bpffs mount) that are not owned by root or are writable by group
    /// or others, or are symbolic links.
    pub fn check_secure(&self) -> anyhow::Result<()> {
        let mount = mount_point_of(&self.root);
        for dir in dirs_below(&mount, &self.maps_dir()) {
            check_private_dir(&dir, "pin")?;
        }
        Ok(())
    }

    /// Creates the runtime directory (root-owned, 0700) and checks it.
    pub fn create_runtime_dir(&self) -> anyhow::Result<PathBuf> {
        let dir = self.runtime_dir();
        create_private_dirs(&dir)?;
        self.check_runtime_dir()?;
        Ok(dir)
    }

    /// Checks the runtime directory and its parent, if they exist.
    pub fn check_runtime_dir(&self) -> anyhow::Result<()> {
        for dir in [PathBuf::from(RUNTIME_ROOT), self.runtime_dir()] {
            if fs::symlink_metadata(&dir).is_ok() {
                check_private_dir(&dir, "runtime")?;
            }
        }
        Ok(())
    }

    /// Removes the pin directories (they must be empty of pins by then) and
    /// the runtime directory with its files.
    pub fn remove_dirs(&self) -> anyhow::Result<()> {
        for dir in [self.maps_dir(), self.root.clone()] {
            if dir.exists() {
                fs::remove_dir(&dir).with_context(|| format!("removing {}", dir.display()))?;
            }
        }
        let runtime = self.runtime_dir();
        if runtime.exists() {
            fs::remove_dir_all(&runtime)
                .with_context(|| format!("removing {}", runtime.display()))?;
        }
        Ok(())
    }
}

/// Creates `dir` and its missing parents with mode 0700.
fn create_private_dirs(dir: &Path) -> anyhow::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::PermissionDenied {
                anyhow::Error::new(Error::Permission(format!(
                    "creating {} was not permitted: filter-ctl needs root",
                    dir.display()
                )))
            } else {
                anyhow::Error::new(e).context(format!("creating {}", dir.display()))
            }
        })
}

/// Fails unless `dir` is a real directory owned by root and writable by root alone.
fn check_private_dir(dir: &Path, what: &str) -> anyhow::Result<()> {
    let meta = match fs::symlink_metadata(dir) {
        Ok(meta) => meta,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::PermissionDenied => {
            return Err(Error::Permission(format!(
                "permission denied reading {}: filter-ctl needs root",
                dir.display()
            ))
            .into());
        }
        Err(err) => return Err(err).with_context(|| format!("reading {}", dir.display())),
    };
    let problem = if meta.file_type().is_symlink() {
        Some("is a symbolic link".to_string())
    } else if !meta.is_dir() {
        Some("is not a directory".to_string())
    } else if meta.uid() != 0 {
        Some(format!("is owned by uid {}, not root", meta.uid()))
    } else if meta.mode() & 0o022 != 0 {
        Some(format!(
            "is writable by group or others (mode {:o})",
            meta.mode() & 0o7777
        ))
    } else {
        None
    };
    match problem {
        None => Ok(()),
        Some(problem) => Err(Error::Insecure(format!(
            "{what} directory {} {problem}: another user could tamper with the filter; remove it (as root, `rm -r {}`) and start again, or choose another --pin-dir",
            dir.display(),
            dir.display()
        ))
        .into()),
    }
}

/// The directories from just below `mount` down to `leaf`, top first.
fn dirs_below(mount: &Path, leaf: &Path) -> Vec<PathBuf> {
    let Ok(rest) = leaf.strip_prefix(mount) else {
        return vec![leaf.to_path_buf()];
    };
    let mut dir = mount.to_path_buf();
    let mut out = Vec::new();
    for part in rest.components() {
        if let Component::Normal(name) = part {
            dir.push(name);
            out.push(dir.clone());
        }
    }
    out
}

/// The bpffs mount point that holds `path` (its deepest bpffs ancestor whose
/// parent is not bpffs); `/sys/fs/bpf` if none is found.
fn mount_point_of(path: &Path) -> PathBuf {
    let mut found = None;
    let mut current = Some(path);
    while let Some(dir) = current {
        if dir.exists() {
            if is_bpffs(dir) {
                found = Some(dir.to_path_buf());
            } else if found.is_some() {
                break;
            }
        }
        current = dir.parent();
    }
    found.unwrap_or_else(|| PathBuf::from(BPFFS_MOUNT_POINT))
}

/// Whether `path` is on a bpf filesystem.
#[must_use]
pub fn is_bpffs(path: &Path) -> bool {
    let Ok(c_path) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `statfs` is plain old data; all zeroes is a valid value.
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

/// Mounts bpffs at /sys/fs/bpf unless it already is (a fresh machine here
/// has none), root-only (`mode=0700`, as systemd mounts it).
pub fn ensure_bpffs_mounted() -> anyhow::Result<()> {
    let mount_point = Path::new(BPFFS_MOUNT_POINT);
    if is_bpffs(mount_point) {
        warn_if_world_writable(mount_point);
        return Ok(());
    }
    fs::create_dir_all(mount_point).with_context(|| format!("creating {BPFFS_MOUNT_POINT}"))?;
    let source = CString::new("bpf").expect("static string");
    let target = CString::new(BPFFS_MOUNT_POINT).expect("static string");
    let data = CString::new("mode=0700").expect("static string");
    // SAFETY: valid NUL-terminated strings; bpffs takes `mode=` as its data.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            source.as_ptr(),
            0,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        let message = format!(
            "bpffs is not mounted at {BPFFS_MOUNT_POINT} and mounting it failed: {err} (run as root, or `mount -t bpf -o mode=0700 bpf {BPFFS_MOUNT_POINT}`)"
        );
        return Err(if err.kind() == std::io::ErrorKind::PermissionDenied {
            Error::Permission(message).into()
        } else {
            anyhow::anyhow!(message)
        });
    }
    log::info!("mounted bpffs at {BPFFS_MOUNT_POINT} (mode 0700)");
    Ok(())
}

fn warn_if_world_writable(mount_point: &Path) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    if let Ok(meta) = fs::metadata(mount_point)
        && meta.mode() & 0o002 != 0
    {
        ONCE.call_once(|| {
            log::warn!(
                "bpffs at {} is writable by every user (mode {:o}); the filter's own directories are root-only, but consider `chmod 0700 {}`",
                mount_point.display(),
                meta.mode() & 0o7777,
                mount_point.display()
            );
        });
    }
}

/// Inode of the initial mount namespace on kernels that give the initial
/// namespaces fixed inode numbers (`PROC_MNT_INIT_INO`).
const PROC_MNT_INIT_INO: u64 = 0xEFFF_FFF8;

/// The bpffs the filter pins into belongs to another mount namespace than
/// the init one (a private mount namespace, a service with
/// `PrivateMounts=`): its pins, and with them the enforcement, end with
/// that namespace. Returns a description of the problem, or `None` when the
/// pins are the host's.
#[must_use]
pub fn private_bpffs(path: &Path) -> Option<String> {
    let ours = fs::metadata("/proc/self/ns/mnt").ok()?.ino();
    let mount = mount_point_of(path);
    match fs::metadata("/proc/1/ns/mnt") {
        Ok(init) if init.ino() == ours => None,
        Ok(_) => {
            // Another namespace than init's: fine if init sees the same bpffs.
            let here = fs::metadata(&mount).ok()?.dev();
            let init_view =
                Path::new("/proc/1/root").join(mount.strip_prefix("/").unwrap_or(&mount));
            match fs::metadata(&init_view) {
                Ok(meta) if meta.dev() == here => None,
                _ => Some(format!(
                    "the bpffs at {} belongs to this process's mount namespace, not the host's: the pins (and the filter) end with this namespace",
                    mount.display()
                )),
            }
        }
        // Init's namespace is out of sight (another PID namespace, or no
        // access): trust the kernel's fixed inode of the initial namespace.
        Err(_) if ours == PROC_MNT_INIT_INO => None,
        Err(_) => Some(format!(
            "this process runs in a mount namespace other than the host's, so the bpffs at {} may be private to it: its pins (and the filter) would end with that namespace",
            mount.display()
        )),
    }
}
