//! The persistent state directory (default `/var/lib/filter-ctl`,
//! `--state-dir`): what must survive the controller, a reboot and a crash.
//!
//! ```text
//! <state dir>/               0700, owned by the user running filter-ctl (root)
//!   lock                     flock target serialising every mutation below
//!   live.snapshot            live entries at the last compaction (JSON lines)
//!   live.journal             live edits since that snapshot (JSON lines, appended)
//!   history.jsonl            every apply / rollback / revert / restore (appended)
//!   pending.json             an apply waiting for confirmation (whole file)
//!   audit.jsonl[.1 … .N]     who did what, rotated by size (appended)
//!   policies/<sha256>.toml   every applied policy file, byte for byte
//!   lists/<sha256>.txt       every list file a policy referred to
//! ```
//!
//! Every file is created 0600. Whole files are written with
//! [`write_atomically`] (temporary file, write, fsync, rename, fsync the
//! directory); appended files get one `write` per record and an fsync, and a
//! torn last line (a crash during an append: no trailing newline) counts as
//! never written. So a crash at any point leaves the old state or the new
//! one. A file that cannot be read back fails with [`Error::Corrupt`] (exit
//! code 10) naming the file and line; nothing overwrites it unless the
//! caller asks for it to be moved aside (`discard_corrupt`).
//!
//! Mutations from several processes (CLI edits, the controller's automatic
//! blocks) serialise on an `flock` of `lock`, waited for at most the lock
//! timeout. Each mutating method takes that lock for its own duration only:
//! callers never hold it, so calls cannot deadlock each other.
//!
//! Parts: [`live`] (CLI edits and automatic blocks), [`policy`] (applied
//! policy versions, history, pending confirmation), [`audit`] (the audit
//! log).

pub mod audit;
mod files;
pub mod live;
pub mod policy;
mod time;

use std::{
    fs,
    os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;

pub use self::{
    audit::{AuditLog, AuditRecord},
    files::write_atomically,
    live::{
        EditBench, EncodedAdd, ListName, LiveEntry, LiveJournal, LiveKey, LiveState, Origin,
        bench_edit_at,
    },
    policy::{
        Action, HistoryEntry, ListFile, Pending, PolicyFiles, PolicyStore, PolicyVersion,
        sha256_hex,
    },
    time::{current_user, rfc3339},
};
use crate::{
    error::Error,
    maps::lock::{self, DirLock},
};

/// Where the state lives unless `--state-dir` says otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/filter-ctl";
const LOCK_FILE: &str = "lock";
/// Subdirectories of content-addressed files.
const POLICIES: &str = "policies";
const LISTS: &str = "lists";

/// An open state directory: checked to be private to its owner, and either
/// writable (created if missing by [`StateDir::open`]) or read-only
/// ([`StateDir::open_existing`], for commands that must not create anything).
#[derive(Clone, Debug)]
pub struct StateDir {
    root: PathBuf,
    writable: bool,
    lock_timeout: Duration,
}

impl StateDir {
    /// Opens the state directory for reading and writing, creating it
    /// (0700; missing parents 0755) and its subdirectories and lock file if
    /// missing. Fails with [`Error::Insecure`] on a directory owned by
    /// another user or open to group or others.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        create_dir(path)?;
        check_private(path)?;
        for sub in [POLICIES, LISTS] {
            let dir = path.join(sub);
            create_dir(&dir)?;
            check_private(&dir)?;
        }
        let lock = path.join(LOCK_FILE);
        fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&lock)
            .with_context(|| format!("creating {}", lock.display()))?;
        files::remove_stale_temporaries(&[
            path.to_path_buf(),
            path.join(POLICIES),
            path.join(LISTS),
        ]);
        Ok(Self {
            root: path.to_path_buf(),
            writable: true,
            lock_timeout: lock::DEFAULT_TIMEOUT,
        })
    }

    /// Opens an existing state directory read-only, creating nothing;
    /// `None` if there is none. Refuses an insecure one like [`Self::open`].
    /// Every mutating method fails on the result.
    pub fn open_existing(path: &Path) -> anyhow::Result<Option<Self>> {
        match fs::metadata(path) {
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(permission_hint(err, path)),
            Ok(_) => {}
        }
        check_private(path)?;
        Ok(Some(Self {
            root: path.to_path_buf(),
            writable: false,
            lock_timeout: lock::DEFAULT_TIMEOUT,
        }))
    }

    /// How long a mutation waits for another process's lock (default
    /// [`lock::DEFAULT_TIMEOUT`]) before failing with [`Error::LockTimeout`].
    #[must_use]
    pub fn with_lock_timeout(mut self, timeout: Duration) -> Self {
        self.lock_timeout = timeout;
        self
    }

    #[must_use]
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// Whether this was opened with [`Self::open`].
    #[must_use]
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    fn file(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// The state lock, for one mutation. Fails on a read-only directory.
    fn lock(&self) -> anyhow::Result<DirLock> {
        self.ensure_writable()?;
        DirLock::acquire(&self.file(LOCK_FILE), "the state lock", self.lock_timeout)
    }

    fn ensure_writable(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.writable,
            "the state directory {} was opened read-only (StateDir::open_existing); use StateDir::open to change it",
            self.root.display()
        );
        Ok(())
    }
}

/// Creates `dir` with mode 0700 (its missing parents 0755) unless it exists.
fn create_dir(dir: &Path) -> anyhow::Result<()> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .map_err(|e| permission_hint(e, parent))?;
    }
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(err) => Err(permission_hint(err, dir)),
    }
}

fn permission_hint(err: std::io::Error, path: &Path) -> anyhow::Error {
    if err.kind() == std::io::ErrorKind::PermissionDenied {
        Error::Permission(format!(
            "permission denied on the state directory {}: filter-ctl needs root",
            path.display()
        ))
        .into()
    } else {
        anyhow::Error::new(err).context(format!("opening {}", path.display()))
    }
}

/// Fails with [`Error::Insecure`] unless `dir` is a directory owned by the
/// effective user (root, for the filter) that group and others cannot
/// access at all: the state names what the filter lets through.
fn check_private(dir: &Path) -> anyhow::Result<()> {
    let meta = fs::metadata(dir).map_err(|e| permission_hint(e, dir))?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 && meta.uid() == 0 {
        return Err(Error::Permission(format!(
            "the state directory {} belongs to root: run filter-ctl as root",
            dir.display()
        ))
        .into());
    }
    let (problem, fix) = if !meta.is_dir() {
        (
            "is not a directory".to_string(),
            "choose another --state-dir".to_string(),
        )
    } else if meta.uid() != 0 {
        (
            format!("is owned by uid {}, not by root", meta.uid()),
            format!("chown root:root {}", dir.display()),
        )
    } else if meta.mode() & 0o077 != 0 {
        (
            format!(
                "is accessible by group or others (mode {:o})",
                meta.mode() & 0o7777
            ),
            format!("chmod 700 {}", dir.display()),
        )
    } else {
        return Ok(());
    };
    Err(Error::Insecure(format!(
        "state directory {} {problem}: another user could read or change the filter's state; fix it with `{fix}`",
        dir.display()
    ))
    .into())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;
    use crate::error::{ExitCode, exit_code};

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().mode() & 0o7777
    }

    #[test]
    fn open_creates_private_directories_and_parents() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("var/lib/filter-ctl");
        let dir = StateDir::open(&root).unwrap();
        assert!(dir.is_writable());
        assert_eq!(mode(&root), 0o700);
        assert_eq!(mode(&tmp.path().join("var/lib")), 0o755);
        assert_eq!(mode(&root.join(POLICIES)), 0o700);
        assert_eq!(mode(&root.join(LISTS)), 0o700);
        assert_eq!(mode(&root.join(LOCK_FILE)), 0o600);
        // Opening again is fine.
        StateDir::open(&root).unwrap();
    }

    #[test]
    fn open_existing_creates_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("state");
        assert!(StateDir::open_existing(&root).unwrap().is_none());
        assert!(!root.exists());
        StateDir::open(&root).unwrap();
        let dir = StateDir::open_existing(&root).unwrap().unwrap();
        assert!(!dir.is_writable());
        let err = dir.lock().unwrap_err();
        assert!(err.to_string().contains("read-only"), "{err}");
    }

    #[test]
    fn refuses_a_directory_open_to_group_or_others() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("state");
        StateDir::open(&root).unwrap();
        fs::set_permissions(&root, fs::Permissions::from_mode(0o750)).unwrap();
        for err in [
            StateDir::open(&root).unwrap_err(),
            StateDir::open_existing(&root).unwrap_err(),
        ] {
            let text = format!("{err:#}");
            assert_eq!(exit_code(&err), ExitCode::Insecure, "{text}");
            assert!(text.contains(&root.display().to_string()), "{text}");
            assert!(text.contains("mode 750"), "{text}");
            assert!(
                text.contains(&format!("chmod 700 {}", root.display())),
                "{text}"
            );
        }
        fs::set_permissions(&root, fs::Permissions::from_mode(0o700)).unwrap();
        StateDir::open(&root).unwrap();
    }

    #[test]
    fn refuses_a_directory_of_another_user() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: changing a directory's owner needs root");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("state");
        fs::DirBuilder::new().mode(0o700).create(&root).unwrap();
        std::os::unix::fs::chown(&root, Some(65534), Some(65534)).unwrap();
        let err = StateDir::open(&root).unwrap_err();
        let text = format!("{err:#}");
        assert_eq!(exit_code(&err), ExitCode::Insecure, "{text}");
        assert!(text.contains("owned by uid 65534"), "{text}");
        assert!(text.contains(&root.display().to_string()), "{text}");
    }

    #[test]
    fn refuses_a_file() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("state");
        fs::write(&root, b"").unwrap();
        let err = StateDir::open(&root).unwrap_err();
        assert!(format!("{err:#}").contains("not a directory"), "{err:#}");
    }
}
