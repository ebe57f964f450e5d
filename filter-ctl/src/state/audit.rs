//! The audit log, `audit.jsonl`: one [`AuditRecord`] a line for every
//! apply, confirm, revert, rollback and live edit. Appended under the state
//! lock, one `write` and an fsync per record. When the next record would
//! take the file past the size limit (default 10 MiB), the file is rotated
//! first: `audit.jsonl.N-1` → `.N`, …, `audit.jsonl` → `audit.jsonl.1`,
//! keeping N archives (default 5); the oldest is overwritten.

use std::{fs, path::PathBuf, time::SystemTime};

use serde::{Deserialize, Serialize};

use super::{
    StateDir,
    files::{self, io_context},
    time::{current_user, rfc3339_serde},
};

const AUDIT: &str = "audit.jsonl";

/// One line of the audit log. JSON: `{"time":"2026-05-20T14:03:07.123Z",
/// "uid":0,"user":"root","command":"block","policy_before":"…",
/// "policy_after":"…","summary":{…}}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// RFC 3339, UTC.
    #[serde(with = "rfc3339_serde")]
    pub time: SystemTime,
    pub uid: u32,
    /// The user name, or the uid when it could not be resolved.
    pub user: String,
    /// What was done: `apply`, `confirm`, `revert`, `rollback`, `block`, …
    pub command: String,
    /// SHA-256 of the active policy file before and after
    /// ([`super::PolicyVersion::policy_sha256`], what `policy show` and
    /// `sha256sum` print), if any.
    pub policy_before: Option<String>,
    pub policy_after: Option<String>,
    /// What changed, as the command describes it (counts, entries, …).
    pub summary: serde_json::Value,
}

impl AuditRecord {
    /// A record of `command` now, by the user running this process, with
    /// no policy change (set `policy_before`/`policy_after` for one).
    #[must_use]
    pub fn now(command: impl Into<String>, summary: serde_json::Value) -> Self {
        let (uid, user) = current_user();
        Self {
            time: SystemTime::now(),
            uid,
            user,
            command: command.into(),
            policy_before: None,
            policy_after: None,
            summary,
        }
    }
}

/// The audit log of a state directory.
#[derive(Clone, Debug)]
pub struct AuditLog {
    dir: StateDir,
    max_bytes: u64,
    keep: usize,
}

impl AuditLog {
    /// Size past which the log is rotated, unless told otherwise.
    pub const DEFAULT_MAX_BYTES: u64 = 10 << 20;
    /// Archives kept, unless told otherwise.
    pub const DEFAULT_KEEP: usize = 5;

    #[must_use]
    pub fn new(dir: &StateDir) -> Self {
        Self {
            dir: dir.clone(),
            max_bytes: Self::DEFAULT_MAX_BYTES,
            keep: Self::DEFAULT_KEEP,
        }
    }

    /// Rotates past `max_bytes`, keeping `keep` archives (0: none).
    #[must_use]
    pub fn with_rotation(mut self, max_bytes: u64, keep: usize) -> Self {
        self.max_bytes = max_bytes;
        self.keep = keep;
        self
    }

    /// The current log file.
    #[must_use]
    pub fn path(&self) -> PathBuf {
        self.dir.file(AUDIT)
    }

    /// Archive `n` (1 is the newest).
    fn archive(&self, n: usize) -> PathBuf {
        self.dir.file(&format!("{AUDIT}.{n}"))
    }

    /// Appends `record`, rotating first if it would take the log past the
    /// size limit.
    pub fn append(&self, record: &AuditRecord) -> anyhow::Result<()> {
        let line = files::json_line(record)?;
        let _lock = self.dir.lock()?;
        let path = self.path();
        let size = match fs::metadata(&path) {
            Ok(meta) => meta.len(),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => 0,
            Err(err) => return Err(io_context(err, "reading", &path)),
        };
        if size > 0 && size + line.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        files::append_line(&path, &line)
    }

    fn rotate(&self) -> anyhow::Result<()> {
        let path = self.path();
        if self.keep == 0 {
            fs::remove_file(&path).map_err(|e| io_context(e, "removing", &path))?;
        } else {
            for n in (1..self.keep).rev() {
                let from = self.archive(n);
                if from.exists() {
                    let to = self.archive(n + 1);
                    fs::rename(&from, &to).map_err(|e| io_context(e, "renaming", &from))?;
                }
            }
            fs::rename(&path, self.archive(1)).map_err(|e| io_context(e, "renaming", &path))?;
        }
        files::sync_dir(self.dir.path()).map_err(|e| io_context(e, "syncing", self.dir.path()))
    }

    /// Every record, oldest first: the archives, then the current file.
    pub fn read(&self) -> anyhow::Result<Vec<AuditRecord>> {
        let mut records = Vec::new();
        for n in (1..=self.keep).rev() {
            records.extend(files::read_all(&self.archive(n))?);
        }
        records.extend(files::read_all(&self.path())?);
        Ok(records)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn setup() -> (tempfile::TempDir, StateDir) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(&tmp.path().join("state")).unwrap();
        (tmp, dir)
    }

    fn record(n: usize) -> AuditRecord {
        let mut record = AuditRecord::now("block", serde_json::json!({ "added": n }));
        record.time = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_779_285_787_123);
        record
    }

    #[test]
    fn records_round_trip_as_json_lines() {
        let (_tmp, dir) = setup();
        let log = AuditLog::new(&dir);
        let mut apply = record(1);
        apply.command = "apply".into();
        apply.policy_after = Some("ab".repeat(32));
        log.append(&apply).unwrap();
        log.append(&record(2)).unwrap();
        assert_eq!(log.read().unwrap(), vec![apply, record(2)]);
        let text = fs::read_to_string(log.path()).unwrap();
        let first = text.lines().next().unwrap();
        assert!(
            first.starts_with("{\"time\":\"2026-05-20T14:03:07.123Z\",\"uid\":"),
            "{first}"
        );
        assert!(first.contains("\"command\":\"apply\""), "{first}");
        assert!(first.contains("\"policy_before\":null"), "{first}");
        assert_eq!(
            fs::metadata(log.path()).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn rotates_by_size_keeping_the_configured_archives() {
        let (_tmp, dir) = setup();
        let line = files::json_line(&record(0)).unwrap().len() as u64;
        // Three records a file.
        let log = AuditLog::new(&dir).with_rotation(3 * line, 2);
        for n in 0..10 {
            log.append(&record(n % 10)).unwrap();
        }
        // 10 records: .2 lost the first ones, then .2 (3), .1 (3), current (1).
        let archive = |n| dir.file(&format!("{AUDIT}.{n}"));
        assert!(archive(1).exists() && archive(2).exists());
        assert!(!archive(3).exists());
        for path in [log.path(), archive(1), archive(2)] {
            assert!(
                fs::metadata(&path).unwrap().len() <= 3 * line,
                "{}",
                path.display()
            );
        }
        let kept: Vec<_> = log
            .read()
            .unwrap()
            .into_iter()
            .map(|r| r.summary["added"].as_u64().unwrap())
            .collect();
        assert_eq!(kept, vec![3, 4, 5, 6, 7, 8, 9]);
    }

    #[test]
    fn no_archives_when_told_to_keep_none() {
        let (_tmp, dir) = setup();
        let line = files::json_line(&record(0)).unwrap().len() as u64;
        let log = AuditLog::new(&dir).with_rotation(2 * line, 0);
        for n in 0..5 {
            log.append(&record(n)).unwrap();
        }
        assert!(!dir.file(&format!("{AUDIT}.1")).exists());
        assert_eq!(log.read().unwrap(), vec![record(4)]);
    }
}
