//! Locks between filter-ctl processes: `flock` on directories that only root
//! can open (the pin directories are 0700), so no other user can take them.
//! Waiting is bounded: after a second the wait is reported with the holder's
//! pid and command, and after the timeout it fails with
//! [`Error::LockTimeout`].

use std::{
    fs::{self, File},
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::Path,
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use crate::error::Error;

/// How long a command waits for a lock unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// When a waiting command first says what it waits for.
const REPORT_AFTER: Duration = Duration::from_secs(1);
const POLL: Duration = Duration::from_millis(20);

/// An exclusive `flock` on a directory, released on drop (and by the kernel
/// when the process dies, even by SIGKILL).
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

impl DirLock {
    /// Takes the lock, waiting at most `timeout`. `what` names the lock in
    /// messages ("the edit lock").
    pub fn acquire(dir: &Path, what: &str, timeout: Duration) -> anyhow::Result<Self> {
        let file = File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
        let start = Instant::now();
        let mut reported = false;
        loop {
            if try_flock(&file)? {
                return Ok(Self { _file: file });
            }
            let waited = start.elapsed();
            if waited >= timeout {
                return Err(Error::LockTimeout(format!(
                    "gave up after {}s waiting for {what} on {} held by {}; if that process hangs, stop it and try again",
                    timeout.as_secs(),
                    dir.display(),
                    holder_description(&file)
                ))
                .into());
            }
            if !reported && waited >= REPORT_AFTER {
                log::warn!(
                    "waiting for {what} on {} held by {}",
                    dir.display(),
                    holder_description(&file)
                );
                reported = true;
            }
            thread::sleep(POLL.min(timeout.saturating_sub(waited)));
        }
    }

    /// Takes the lock if it is free; `None` if another process holds it.
    pub fn try_acquire(dir: &Path) -> anyhow::Result<Option<Self>> {
        let file = File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
        Ok(try_flock(&file)?.then_some(Self { _file: file }))
    }

    /// The process holding the lock on `dir`, described, if any.
    #[must_use]
    pub fn holder(dir: &Path) -> Option<String> {
        let file = File::open(dir).ok()?;
        lock_holder(&file).map(describe_pid)
    }
}

fn try_flock(file: &File) -> anyhow::Result<bool> {
    // SAFETY: valid fd owned by `file`.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        return Ok(false);
    }
    Err(err).context("taking a lock")
}

fn holder_description(file: &File) -> String {
    lock_holder(file).map_or_else(|| "another process".to_string(), describe_pid)
}

/// "pid 1234 (filter-ctl block)".
#[must_use]
pub fn describe_pid(pid: u32) -> String {
    let command = fs::read(format!("/proc/{pid}/cmdline"))
        .ok()
        .map(|raw| {
            raw.split(|b| *b == 0)
                .filter(|part| !part.is_empty())
                .take(2)
                .map(|part| {
                    let text = String::from_utf8_lossy(part);
                    text.rsplit('/').next().unwrap_or_default().to_string()
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .filter(|c| !c.is_empty());
    match command {
        Some(command) => format!("pid {pid} ({command})"),
        None => format!("pid {pid}"),
    }
}

/// The pid holding a `flock` on `file`, from /proc/locks.
#[must_use]
pub fn lock_holder(file: &File) -> Option<u32> {
    let meta = file.metadata().ok()?;
    let (inode, dev) = (meta.ino(), meta.dev());
    let device = format!("{:02x}:{:02x}", libc::major(dev), libc::minor(dev));
    let locks = fs::read_to_string("/proc/locks").ok()?;
    locks.lines().find_map(|line| {
        // "1: FLOCK  ADVISORY  WRITE 1234 00:2a:5678 0 EOF"
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (line_device, line_inode) = fields.get(5)?.rsplit_once(':')?;
        let same = fields.get(1) == Some(&"FLOCK")
            && line_inode.parse::<u64>().ok()? == inode
            && line_device == device;
        same.then(|| fields.get(4)?.parse().ok()).flatten()
    })
}
