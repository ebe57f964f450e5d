//! Applied policies, content-addressed, with their history and the apply
//! waiting for confirmation.
//!
//! # Files
//! - `policies/<sha256>.toml`: a policy file exactly as applied, named by
//!   the SHA-256 of its bytes; `lists/<sha256>.txt`: a list file it
//!   referred to, likewise. Written once, atomically; never changed (the
//!   name is the content). Reading one back checks the content against
//!   its name.
//! - `history.jsonl`: one [`HistoryEntry`] a line, appended under the
//!   state lock: what was applied (a [`PolicyVersion`]: the policy's hash
//!   and each list file's original path and hash), how (apply, rollback,
//!   revert, restore), when, by whom. The same policy bytes applied with
//!   different list contents are different versions: a version's `id` is
//!   the SHA-256 over the policy hash and the (path, hash) pairs, so both
//!   can be recovered. The history carries each version's whole manifest,
//!   so no manifest files are needed.
//! - `pending.json`: a [`Pending`] apply (its version, the one to revert
//!   to and the deadline), replaced atomically; on disk so that the revert
//!   happens even if the controller restarts meanwhile.
//!
//! # Rollback
//! The history replays into a stack of applied versions
//! ([`PolicyStore::applied`]): an apply pushes; a rollback or a revert pops
//! and the entry's version becomes the top (it names the version it went
//! back to); a restore (re-applying the active version at start) replaces
//! the top. The active version is the top, and [`PolicyStore::rollback_target`]
//! the one below it: rolling back twice goes two versions back, and
//! applying after a rollback continues from there.

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    time::SystemTime,
};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::{
    LISTS, POLICIES, StateDir,
    files::{self, corrupt, io_context},
    time::{current_user, now_secs, secs},
};

const HISTORY: &str = "history.jsonl";
const PENDING: &str = "pending.json";

/// A list file as a version refers to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListFile {
    /// The path the policy named (as given to [`PolicyStore::store_policy`]).
    pub path: PathBuf,
    /// SHA-256 of its content, lower-case hex: `lists/<sha256>.txt`.
    pub sha256: String,
}

/// One applied policy: its file and the list files it referred to, by content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyVersion {
    /// SHA-256 (hex) over the policy hash and the list (path, hash) pairs.
    pub id: String,
    /// SHA-256 (hex) of the policy file's bytes: `policies/<sha256>.toml`.
    pub policy_sha256: String,
    /// Sorted by path.
    pub lists: Vec<ListFile>,
    /// Where the policy file was read from (not part of the id): relative
    /// list paths in the stored copy resolve against its directory.
    #[serde(default)]
    pub source: PathBuf,
}

impl PolicyVersion {
    /// The version of a policy with hash `policy_sha256` and these lists.
    pub fn new(policy_sha256: String, mut lists: Vec<ListFile>) -> anyhow::Result<Self> {
        lists.sort_by(|a, b| a.path.cmp(&b.path).then_with(|| a.sha256.cmp(&b.sha256)));
        let canonical = serde_json::to_vec(&(&policy_sha256, &lists))?;
        Ok(Self {
            id: sha256_hex(&canonical),
            policy_sha256,
            lists,
            source: PathBuf::new(),
        })
    }

    /// The first 12 hex digits of the id, for people.
    #[must_use]
    pub fn short_id(&self) -> &str {
        self.id.get(..12).unwrap_or(&self.id)
    }
}

/// How a version became active.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// `policy apply`.
    Apply,
    /// `policy rollback`: back to the version before the active one.
    Rollback,
    /// An unconfirmed apply reverted at its deadline.
    Revert,
    /// The active version re-applied from the state at start.
    Restore,
}

/// One line of `history.jsonl`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub action: Action,
    pub version: PolicyVersion,
    /// When (stored as Unix seconds; render with [`super::rfc3339`]).
    #[serde(rename = "at_unix", with = "secs")]
    pub at: SystemTime,
    pub uid: u32,
    /// The user name, or the uid when it could not be resolved.
    pub user: String,
    /// Applied in shadow mode (evaluated and counted, not enforced).
    #[serde(default)]
    pub shadow: bool,
}

/// An apply waiting for confirmation: unless confirmed by `deadline`, the
/// filter goes back to `previous` (or to no policy).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub version: PolicyVersion,
    pub previous: Option<PolicyVersion>,
    /// Stored as Unix seconds.
    #[serde(rename = "deadline_unix", with = "secs")]
    pub deadline: SystemTime,
}

/// A stored version's files, read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyFiles {
    /// The policy file's bytes.
    pub policy: Vec<u8>,
    /// Each list file's original path and content, in the version's order.
    pub lists: Vec<(PathBuf, Vec<u8>)>,
}

/// The policy part of a state directory.
#[derive(Clone, Debug)]
pub struct PolicyStore {
    dir: StateDir,
}

impl PolicyStore {
    #[must_use]
    pub fn new(dir: &StateDir) -> Self {
        Self { dir: dir.clone() }
    }

    /// Stores a policy file's bytes and its list files' contents (each
    /// with the path the policy named), unless already stored, and returns
    /// the version they make. Records nothing in the history: see
    /// [`Self::record_version`].
    pub fn store_policy(
        &self,
        policy: &[u8],
        lists: &[(PathBuf, Vec<u8>)],
    ) -> anyhow::Result<PolicyVersion> {
        self.dir.ensure_writable()?;
        let policy_sha256 = sha256_hex(policy);
        store_content(&self.policy_path(&policy_sha256), policy)?;
        let mut refs = Vec::with_capacity(lists.len());
        for (path, content) in lists {
            let sha256 = sha256_hex(content);
            store_content(&self.list_path(&sha256), content)?;
            refs.push(ListFile {
                path: path.clone(),
                sha256,
            });
        }
        PolicyVersion::new(policy_sha256, refs)
    }

    /// The policy bytes and list contents (with their original paths) of
    /// `version`, checked against their hashes. A missing or altered file
    /// is [`crate::error::Error::Corrupt`].
    pub fn load_version(&self, version: &PolicyVersion) -> anyhow::Result<PolicyFiles> {
        let policy = load_content(
            &self.policy_path(&version.policy_sha256),
            &version.policy_sha256,
        )?;
        let mut lists = Vec::with_capacity(version.lists.len());
        for list in &version.lists {
            let content = load_content(&self.list_path(&list.sha256), &list.sha256)?;
            lists.push((list.path.clone(), content));
        }
        Ok(PolicyFiles { policy, lists })
    }

    /// Appends to the history that `version` became active by `action`,
    /// now, by the user running this process.
    pub fn record_version(
        &self,
        version: &PolicyVersion,
        action: Action,
        shadow: bool,
    ) -> anyhow::Result<HistoryEntry> {
        let (uid, user) = current_user();
        let entry = HistoryEntry {
            action,
            version: version.clone(),
            at: now_secs(),
            uid,
            user,
            shadow,
        };
        let line = files::json_line(&entry)?;
        let _lock = self.dir.lock()?;
        files::append_line(&self.dir.file(HISTORY), &line)?;
        Ok(entry)
    }

    /// Every history entry, oldest first.
    pub fn history(&self) -> anyhow::Result<Vec<HistoryEntry>> {
        files::read_all(&self.dir.file(HISTORY))
    }

    /// The stack of applied versions, oldest first, the active one last
    /// (see the module's notes on rollback); each with the entry that made
    /// it what it is.
    pub fn applied(&self) -> anyhow::Result<Vec<HistoryEntry>> {
        Ok(replay(self.history()?))
    }

    /// The active version's entry, if any policy was ever applied.
    pub fn active(&self) -> anyhow::Result<Option<HistoryEntry>> {
        Ok(self.applied()?.pop())
    }

    /// The version a rollback goes back to: the one applied before the
    /// active one. `None` when there is none.
    pub fn rollback_target(&self) -> anyhow::Result<Option<PolicyVersion>> {
        let mut applied = self.applied()?;
        applied.pop();
        Ok(applied.pop().map(|entry| entry.version))
    }

    /// Records an apply waiting for confirmation (replacing any other).
    pub fn set_pending(&self, pending: &Pending) -> anyhow::Result<()> {
        let bytes = serde_json::to_vec_pretty(pending)?;
        let path = self.dir.file(PENDING);
        let _lock = self.dir.lock()?;
        super::write_atomically(&path, &bytes).map_err(|e| io_context(e, "writing", &path))
    }

    /// The apply waiting for confirmation, if any.
    pub fn pending(&self) -> anyhow::Result<Option<Pending>> {
        let path = self.dir.file(PENDING);
        let Some(bytes) = files::read_optional(&path)? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| corrupt(&path, u64::try_from(e.line()).ok(), e.to_string()))
    }

    /// Forgets the apply waiting for confirmation (confirmed or reverted).
    pub fn clear_pending(&self) -> anyhow::Result<()> {
        let path = self.dir.file(PENDING);
        let _lock = self.dir.lock()?;
        match fs::remove_file(&path) {
            Ok(()) => files::sync_dir(self.dir.path())
                .map_err(|e| io_context(e, "syncing", self.dir.path())),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(err) => Err(io_context(err, "removing", &path)),
        }
    }

    fn policy_path(&self, sha256: &str) -> PathBuf {
        self.dir.root.join(POLICIES).join(format!("{sha256}.toml"))
    }

    fn list_path(&self, sha256: &str) -> PathBuf {
        self.dir.root.join(LISTS).join(format!("{sha256}.txt"))
    }
}

/// The applied-versions stack the history replays into.
fn replay(history: Vec<HistoryEntry>) -> Vec<HistoryEntry> {
    let mut stack: Vec<HistoryEntry> = Vec::new();
    for entry in history {
        match entry.action {
            Action::Apply => stack.push(entry),
            Action::Rollback | Action::Revert => {
                stack.pop();
                replace_top(&mut stack, entry);
            }
            Action::Restore => replace_top(&mut stack, entry),
        }
    }
    stack
}

fn replace_top(stack: &mut Vec<HistoryEntry>, entry: HistoryEntry) {
    match stack.last_mut() {
        Some(top) => *top = entry,
        None => stack.push(entry),
    }
}

/// SHA-256 of `bytes`, lower-case hex.
#[must_use]
pub fn sha256_hex(bytes: &[u8]) -> String {
    let mut hex = String::with_capacity(64);
    for byte in Sha256::digest(bytes) {
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}

/// Writes a content-addressed file unless it exists (its name is its content).
fn store_content(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    if path.exists() {
        return Ok(());
    }
    super::write_atomically(path, bytes).map_err(|e| io_context(e, "writing", path))
}

fn load_content(path: &Path, sha256: &str) -> anyhow::Result<Vec<u8>> {
    if sha256.len() != 64
        || !sha256
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Err(corrupt(
            path,
            None,
            format!(
                "'{}' is not a SHA-256 in hex",
                crate::error::excerpt(sha256, 80)
            ),
        ));
    }
    let bytes = files::read_optional(path)?
        .ok_or_else(|| corrupt(path, None, "missing, though the history refers to it"))?;
    let actual = sha256_hex(&bytes);
    if actual != sha256 {
        return Err(corrupt(
            path,
            None,
            format!("its content has SHA-256 {actual}, not the one it is named by"),
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use std::{os::unix::fs::PermissionsExt as _, time::Duration};

    use super::*;
    use crate::error::{Error, ExitCode, exit_code};

    fn setup() -> (tempfile::TempDir, PolicyStore) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(&tmp.path().join("state")).unwrap();
        (tmp, PolicyStore::new(&dir))
    }

    fn lists(items: &[(&str, &str)]) -> Vec<(PathBuf, Vec<u8>)> {
        items
            .iter()
            .map(|(path, content)| (PathBuf::from(path), content.as_bytes().to_vec()))
            .collect()
    }

    fn corrupt_path_of(err: &anyhow::Error) -> PathBuf {
        match err.downcast_ref::<Error>() {
            Some(Error::Corrupt { path, .. }) => path.clone(),
            _ => panic!("not a corruption: {err:#}"),
        }
    }

    #[test]
    fn stored_versions_load_back_byte_for_byte() {
        let (_tmp, store) = setup();
        let policy = b"[lists]\nblock = [\"/etc/block.txt\"]\n";
        let files = lists(&[
            ("/etc/block.txt", "198.18.0.0/15\n"),
            ("/etc/allow.txt", ""),
        ]);
        let version = store.store_policy(policy, &files).unwrap();
        assert_eq!(version.policy_sha256, sha256_hex(policy));
        assert_eq!(version.id.len(), 64);
        assert_eq!(version.short_id().len(), 12);
        // Lists come back sorted by path.
        let loaded = store.load_version(&version).unwrap();
        assert_eq!(loaded.policy, policy);
        assert_eq!(
            loaded.lists,
            lists(&[
                ("/etc/allow.txt", ""),
                ("/etc/block.txt", "198.18.0.0/15\n")
            ])
        );
        let stored = store.policy_path(&version.policy_sha256);
        assert_eq!(fs::read(&stored).unwrap(), policy);
        assert_eq!(
            fs::metadata(&stored).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // Storing the same again is the same version.
        assert_eq!(store.store_policy(policy, &files).unwrap(), version);
    }

    #[test]
    fn same_policy_with_other_list_contents_is_another_version() {
        let (_tmp, store) = setup();
        let policy = b"block = [\"/etc/block.txt\"]\n";
        let first = store
            .store_policy(policy, &lists(&[("/etc/block.txt", "198.18.0.1\n")]))
            .unwrap();
        let second = store
            .store_policy(policy, &lists(&[("/etc/block.txt", "198.18.0.2\n")]))
            .unwrap();
        assert_eq!(first.policy_sha256, second.policy_sha256);
        assert_ne!(first.id, second.id);
        assert_eq!(
            store.load_version(&first).unwrap().lists[0].1,
            b"198.18.0.1\n"
        );
        assert_eq!(
            store.load_version(&second).unwrap().lists[0].1,
            b"198.18.0.2\n"
        );
    }

    #[test]
    fn altered_or_missing_files_are_corrupt() {
        let (_tmp, store) = setup();
        let version = store
            .store_policy(b"p", &lists(&[("/etc/block.txt", "198.18.0.1\n")]))
            .unwrap();
        let list = store.list_path(&version.lists[0].sha256);
        fs::write(&list, b"198.18.0.9\n").unwrap();
        let err = store.load_version(&version).unwrap_err();
        assert_eq!(corrupt_path_of(&err), list);
        assert_eq!(exit_code(&err), ExitCode::Corrupt);
        fs::remove_file(store.policy_path(&version.policy_sha256)).unwrap();
        let err = store.load_version(&version).unwrap_err();
        assert!(format!("{err:#}").contains("missing"), "{err:#}");
        let mut bad = version.clone();
        bad.policy_sha256 = "../../etc/passwd".into();
        assert!(store.load_version(&bad).is_err());
    }

    #[test]
    fn rollback_walks_back_through_the_applied_versions() {
        let (_tmp, store) = setup();
        let [a, b, c, d] =
            ["a", "b", "c", "d"].map(|p| store.store_policy(p.as_bytes(), &[]).unwrap());
        assert_eq!(store.active().unwrap(), None);
        assert_eq!(store.rollback_target().unwrap(), None);
        for v in [&a, &b, &c] {
            store.record_version(v, Action::Apply, false).unwrap();
        }
        let active = store.active().unwrap().unwrap();
        assert_eq!(active.version, c);
        assert_eq!(active.action, Action::Apply);
        assert_eq!(store.rollback_target().unwrap(), Some(b.clone()));
        // Rollback twice: two versions back.
        store.record_version(&b, Action::Rollback, false).unwrap();
        assert_eq!(store.active().unwrap().unwrap().version, b);
        assert_eq!(store.rollback_target().unwrap(), Some(a.clone()));
        store.record_version(&a, Action::Rollback, false).unwrap();
        assert_eq!(store.active().unwrap().unwrap().action, Action::Rollback);
        assert_eq!(store.rollback_target().unwrap(), None);
        // An apply continues from there; its revert goes back to it.
        store.record_version(&d, Action::Apply, true).unwrap();
        assert!(store.active().unwrap().unwrap().shadow);
        assert_eq!(store.rollback_target().unwrap(), Some(a.clone()));
        store.record_version(&a, Action::Revert, false).unwrap();
        store.record_version(&a, Action::Restore, false).unwrap();
        let applied: Vec<_> = store
            .applied()
            .unwrap()
            .into_iter()
            .map(|e| (e.version, e.action))
            .collect();
        assert_eq!(applied, vec![(a, Action::Restore)]);
        assert_eq!(store.history().unwrap().len(), 8);
    }

    #[test]
    fn history_records_who_and_when() {
        let (_tmp, store) = setup();
        let version = store.store_policy(b"p", &[]).unwrap();
        let before = SystemTime::now() - Duration::from_secs(1);
        let entry = store
            .record_version(&version, Action::Apply, false)
            .unwrap();
        assert!(entry.at >= before && entry.at <= SystemTime::now());
        assert_eq!((entry.uid, entry.user.clone()), current_user());
        assert_eq!(store.history().unwrap(), vec![entry]);
        let line = fs::read_to_string(store.dir.file(HISTORY)).unwrap();
        assert!(
            line.starts_with("{\"action\":\"apply\",\"version\":{\"id\":\""),
            "{line}"
        );
        assert!(line.contains("\"at_unix\":"), "{line}");
    }

    #[test]
    fn a_torn_history_line_is_dropped_and_a_corrupt_one_reported() {
        let (_tmp, store) = setup();
        let version = store.store_policy(b"p", &[]).unwrap();
        store
            .record_version(&version, Action::Apply, false)
            .unwrap();
        let path = store.dir.file(HISTORY);
        let mut bytes = fs::read(&path).unwrap();
        fs::write(&path, [&bytes[..], b"{\"action\":\"rollb"].concat()).unwrap();
        assert_eq!(store.history().unwrap().len(), 1);
        store
            .record_version(&version, Action::Restore, false)
            .unwrap();
        assert_eq!(store.history().unwrap().len(), 2);
        bytes = fs::read(&path).unwrap();
        bytes.splice(0..0, b"{}\n".iter().copied());
        fs::write(&path, &bytes).unwrap();
        let err = store.active().unwrap_err();
        assert!(
            format!("{err:#}").contains(&format!("{} line 1", path.display())),
            "{err:#}"
        );
    }

    #[test]
    fn pending_confirmation_is_kept_on_disk() {
        let (_tmp, store) = setup();
        let [a, b] = ["a", "b"].map(|p| store.store_policy(p.as_bytes(), &[]).unwrap());
        assert_eq!(store.pending().unwrap(), None);
        let pending = Pending {
            version: b,
            previous: Some(a),
            deadline: SystemTime::UNIX_EPOCH + Duration::from_secs(1_779_285_787),
        };
        store.set_pending(&pending).unwrap();
        // Another process (the restarted controller) finds it.
        let other = PolicyStore::new(&StateDir::open_existing(store.dir.path()).unwrap().unwrap());
        assert_eq!(other.pending().unwrap(), Some(pending));
        let path = store.dir.file(PENDING);
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        store.clear_pending().unwrap();
        store.clear_pending().unwrap();
        assert_eq!(store.pending().unwrap(), None);
        fs::write(&path, b"{\"version\":").unwrap();
        let err = store.pending().unwrap_err();
        assert_eq!(corrupt_path_of(&err), path);
    }
}
