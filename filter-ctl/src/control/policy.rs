//! Policy operations shared by the `policy` commands and the controller:
//! apply a file, roll back, revert an unconfirmed apply, restore the state
//! after a reboot. Each one changes the maps through [`apply`] and records
//! what it did in the state directory (history, pending confirmation, audit
//! log), in that order: the kernel first, then the record of it.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use anyhow::Context as _;
use filter_common::{ListEntry, ORIGIN_AUTO, ORIGIN_CLI, ORIGIN_CROWDSEC};

use log::info;
use serde_json::json;

use super::apply::{self, Change, Desired, HeldEntry};
use crate::{
    clock,
    error::Error,
    maps::{Filter, ListKind, Tries},
    spec::{
        cidr::Cidr,
        policy::{self, FileError, LoadedPolicy, Ownership},
    },
    state::{
        Action, AuditLog, AuditRecord, HistoryEntry, ListName, LiveEntry, LiveState, Origin,
        Pending, PolicyStore, PolicyVersion, StateDir,
    },
};

/// The record of an apply under way, in the runtime directory (it goes
/// with the pins: a reboot clears both): written before the first map
/// write, removed once the version is recorded. A kill in between leaves
/// it, and the next operation takes out what the interrupted one added.
const APPLYING: &str = "policy-applying.json";

fn applying_path(filter: &Filter) -> anyhow::Result<PathBuf> {
    Ok(filter.pins().create_runtime_dir()?.join(APPLYING))
}

/// Runs `apply` for `next` over `current`, guarded by the marker: first
/// cleans up after an apply that was killed midway (its version is in the
/// marker), then records this one in the marker for the same reason.
fn guarded_apply(
    filter: &Filter,
    store: &PolicyStore,
    current: Option<&Desired>,
    version: &PolicyVersion,
    next: &Desired,
    held: &[HeldEntry],
) -> anyhow::Result<Change> {
    let path = applying_path(filter)?;
    let interrupted: Option<PolicyVersion> = std::fs::read(&path)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok());
    crate::state::write_atomically(&path, &serde_json::to_vec(version)?)
        .with_context(|| format!("writing {}", path.display()))?;
    let change = apply::apply(filter, current, next, held)?;
    if let Some(partial) = interrupted.filter(|p| p.id != version.id) {
        let loaded = load_version(store, &partial)?;
        apply::clean_up_interrupted(filter, &Desired::from(&loaded.policy), next, held)
            .context("taking out what an interrupted policy apply had added")?;
        log::warn!(
            "an earlier apply of policy {} was interrupted; what it had added is taken out",
            partial.policy_sha256
        );
    }
    Ok(change)
}

/// Marks the apply under way as recorded.
fn finish_apply(filter: &Filter) {
    std::fs::remove_file(filter.pins().runtime_dir().join(APPLYING)).ok();
}

/// What an operation did, for the command to print.
#[derive(Debug)]
pub struct Outcome {
    pub change: Change,
    /// The version now active (`None`: no policy).
    pub active: Option<PolicyVersion>,
    pub previous: Option<PolicyVersion>,
}

/// The empty policy: what a revert to "no policy" applies, so that the
/// history always names a version.
const EMPTY_POLICY: &[u8] = b"# no policy: every entry and rule comes from live edits\n";

/// A stored version parsed again, from the stored copies only.
pub fn load_version(store: &PolicyStore, version: &PolicyVersion) -> anyhow::Result<LoadedPolicy> {
    let files = store.load_version(version)?;
    let lists: HashMap<PathBuf, Vec<u8>> = files.lists.into_iter().collect();
    let origin = if version.source.as_os_str().is_empty() {
        Path::new("stored-policy.toml")
    } else {
        &version.source
    };
    policy::parse(files.policy, origin, &mut |path: &Path| {
        lists.get(path).cloned().ok_or_else(|| {
            FileError::Io(std::io::Error::other(format!(
                "{} is not among the stored copies of this version",
                path.display()
            )))
        })
    })
    .map_err(|e| {
        anyhow::Error::new(Error::Corrupt {
            path: version.source.clone(),
            line: None,
            reason: format!(
                "the stored copy of policy version {} no longer parses: {e}",
                version.short_id()
            ),
        })
    })
}

/// What the active version asks of the maps (`None`: no policy applied).
pub fn active_desired(store: &PolicyStore) -> anyhow::Result<Option<(HistoryEntry, Desired)>> {
    let Some(entry) = store.active()? else {
        return Ok(None);
    };
    let loaded = load_version(store, &entry.version)?;
    let desired = Desired::from(&loaded.policy);
    Ok(Some((entry, desired)))
}

/// Live entries (CLI edits, automatic blocks, `CrowdSec` decisions) as the
/// apply engine falls back to them, with kernel expiry times.
pub fn held_entries(live: &[LiveEntry]) -> Vec<HeldEntry> {
    let now_wall = SystemTime::now();
    let now_mono = clock::monotonic_ns();
    live.iter()
        .filter_map(|e| {
            let expires_at_ns = match e.expires_at {
                None => 0,
                Some(at) => {
                    let left = at.duration_since(now_wall).ok()?;
                    now_mono.saturating_add(u64::try_from(left.as_nanos()).unwrap_or(u64::MAX))
                }
            };
            Some(HeldEntry {
                kind: list_kind(e.list).into(),
                cidr: e.cidr,
                origin: kernel_origin(e.origin),
                expires_at_ns,
                rule: e.rule.and_then(|r| u8::try_from(r).ok()).unwrap_or(0),
            })
        })
        .collect()
}

#[must_use]
pub fn list_kind(list: ListName) -> ListKind {
    match list {
        ListName::Block => ListKind::Block,
        ListName::Allow => ListKind::Allow,
    }
}

#[must_use]
pub fn list_name(kind: ListKind) -> ListName {
    match kind {
        ListKind::Block => ListName::Block,
        ListKind::Allow => ListName::Allow,
    }
}

fn kernel_origin(origin: Origin) -> u8 {
    match origin {
        Origin::Auto => ORIGIN_AUTO,
        Origin::Crowdsec => ORIGIN_CROWDSEC,
        Origin::Cli | Origin::Policy => ORIGIN_CLI,
    }
}

/// The unexpired live entries of the state directory.
fn live_entries(state: &StateDir) -> anyhow::Result<Vec<LiveEntry>> {
    Ok(LiveState::load(state, false)?.entries(SystemTime::now()))
}

fn sha(version: Option<&PolicyVersion>) -> Option<String> {
    version.map(|v| v.policy_sha256.clone())
}

fn audit(
    state: &StateDir,
    command: &str,
    before: Option<&PolicyVersion>,
    after: Option<&PolicyVersion>,
    summary: serde_json::Value,
) -> anyhow::Result<()> {
    let mut record = AuditRecord::now(command, summary);
    record.policy_before = sha(before);
    record.policy_after = sha(after);
    AuditLog::new(state).append(&record)
}

fn change_json(change: &Change) -> serde_json::Value {
    json!({
        "summary": change.summary(),
        "block_added": change.block_added.len(),
        "block_removed": change.block_removed.len(),
        "allow_added": change.allow_added.len(),
        "allow_removed": change.allow_removed.len(),
        "rules_set": change.rules_set,
        "rules_removed": change.rules_removed,
        "settings": change.settings,
    })
}

/// Reads and checks a policy file for `apply` or `run`: it must be owned by
/// root and writable by no one else. Nothing changes on any problem.
pub fn load_file(path: &Path) -> anyhow::Result<LoadedPolicy> {
    let loaded = policy::load(path, Ownership::RootOnly).map_err(Error::from)?;
    for note in &loaded.notes {
        log::warn!("{}: note: {}", note.location(), note.message);
    }
    Ok(loaded)
}

/// Stores the policy's files and returns its version.
fn store(store: &PolicyStore, loaded: &LoadedPolicy) -> anyhow::Result<PolicyVersion> {
    let lists: Vec<(PathBuf, Vec<u8>)> = loaded
        .list_files
        .iter()
        .map(|l| (l.path.clone(), l.bytes.clone()))
        .collect();
    let mut version = store.store_policy(&loaded.bytes, &lists)?;
    version.source = std::fs::canonicalize(&loaded.path).unwrap_or_else(|_| loaded.path.clone());
    Ok(version)
}

/// Applies `loaded` (read by [`load_file`]); with `confirm`, it reverts by
/// itself unless confirmed by then. `command` names the caller in the audit
/// log (`apply`, `run`, `reload`). Holds the edit lock throughout.
pub fn apply_loaded(
    filter: &Filter,
    state: &StateDir,
    loaded: &LoadedPolicy,
    confirm: Option<Duration>,
    command: &str,
) -> anyhow::Result<Outcome> {
    let policies = PolicyStore::new(state);
    let version = store(&policies, loaded)?;
    // A new apply confirms one that was waiting (as a router's commit does).
    let (change, previous) = make_active(
        filter,
        state,
        &policies,
        &version,
        &loaded.policy,
        Action::Apply,
    )?;
    let same = previous.as_ref().is_some_and(|p| p.id == version.id);
    if let Some(wait) = confirm {
        policies.set_pending(&Pending {
            version: version.clone(),
            previous: previous.clone(),
            deadline: confirm_deadline(SystemTime::now(), wait),
        })?;
    }
    if !same || !change.is_empty() {
        let mut summary = change_json(&change);
        summary["file"] = json!(loaded.path.display().to_string());
        summary["shadow"] = json!(loaded.policy.shadow);
        if let Some(wait) = confirm {
            summary["confirm_within_secs"] = json!(wait.as_secs());
        }
        audit(state, command, previous.as_ref(), Some(&version), summary)?;
    }
    Ok(Outcome {
        change,
        active: Some(version),
        previous,
    })
}

/// The deadline of an apply with `--confirm wait` made at `now`, rounded up
/// to a whole second: the state keeps whole seconds, and a deadline
/// rounded down would take up to a second off the time to confirm.
fn confirm_deadline(now: SystemTime, wait: Duration) -> SystemTime {
    let at = (now + wait)
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = at.as_secs() + u64::from(at.subsec_nanos() > 0);
    std::time::UNIX_EPOCH + Duration::from_secs(secs)
}

/// Applies `policy` (stored as `version`) over the active policy, records
/// it as `action` (an apply of the active version again records nothing),
/// and ends any wait for a confirmation. Returns the change and the version
/// that was active before.
fn make_active(
    filter: &Filter,
    state: &StateDir,
    policies: &PolicyStore,
    version: &PolicyVersion,
    policy: &crate::spec::policy::Policy,
    action: Action,
) -> anyhow::Result<(Change, Option<PolicyVersion>)> {
    let current = active_desired(policies)?;
    let previous = current.as_ref().map(|(e, _)| e.version.clone());
    let held = held_entries(&live_entries(state)?);
    let change = guarded_apply(
        filter,
        policies,
        current.as_ref().map(|(_, d)| d),
        version,
        &Desired::from(policy),
        &held,
    )?;
    let same = previous.as_ref().is_some_and(|p| p.id == version.id);
    if !same || action != Action::Apply {
        policies.record_version(version, action, policy.shadow)?;
    }
    finish_apply(filter);
    policies.clear_pending()?;
    Ok((change, previous))
}

/// Makes a stored `version` (or no policy) active again, recorded as `action`.
fn switch_to(
    filter: &Filter,
    state: &StateDir,
    target: Option<&PolicyVersion>,
    action: Action,
    command: &str,
) -> anyhow::Result<Outcome> {
    let policies = PolicyStore::new(state);
    let version = if let Some(v) = target {
        v.clone()
    } else {
        let mut empty = policies.store_policy(EMPTY_POLICY, &[])?;
        empty.source = PathBuf::from("(no policy)");
        empty
    };
    let loaded = load_version(&policies, &version)?;
    let (change, previous) =
        make_active(filter, state, &policies, &version, &loaded.policy, action)?;
    audit(
        state,
        command,
        previous.as_ref(),
        Some(&version),
        change_json(&change),
    )?;
    Ok(Outcome {
        change,
        active: Some(version),
        previous,
    })
}

/// `policy rollback`: back to the version applied before the active one.
pub fn rollback(filter: &Filter, state: &StateDir) -> anyhow::Result<Outcome> {
    let policies = PolicyStore::new(state);
    let Some(target) = policies.rollback_target()? else {
        return Err(Error::NotFound(
            "there is no earlier policy version to roll back to (see `filter-ctl policy show`)"
                .into(),
        )
        .into());
    };
    switch_to(filter, state, Some(&target), Action::Rollback, "rollback")
}

/// `policy confirm`: keeps the apply that waits for confirmation.
pub fn confirm(state: &StateDir) -> anyhow::Result<Pending> {
    let policies = PolicyStore::new(state);
    let Some(pending) = policies.pending()? else {
        return Err(Error::NotFound("no policy apply is waiting for confirmation".into()).into());
    };
    policies.clear_pending()?;
    audit(
        state,
        "confirm",
        Some(&pending.version),
        Some(&pending.version),
        json!({ "confirmed": pending.version.policy_sha256 }),
    )?;
    Ok(pending)
}

/// Reverts an unconfirmed apply whose deadline has passed; `None` if there
/// is nothing to revert yet.
pub fn revert_if_due(filter: &Filter, state: &StateDir) -> anyhow::Result<Option<Outcome>> {
    let policies = PolicyStore::new(state);
    let Some(pending) = policies.pending()? else {
        return Ok(None);
    };
    if SystemTime::now() < pending.deadline {
        return Ok(None);
    }
    let outcome = switch_to(
        filter,
        state,
        pending.previous.as_ref(),
        Action::Revert,
        "revert",
    )?;
    Ok(Some(outcome))
}

/// After the maps were created afresh (a reboot, or a `detach`): puts back
/// the active policy and the live entries, with their remaining times.
/// Entries that expired meanwhile stay out.
pub fn restore(filter: &Filter, state: &StateDir) -> anyhow::Result<String> {
    let policies = PolicyStore::new(state);
    let live = live_entries(state)?;
    let mut restored_policy = None;
    if let Some((entry, desired)) = active_desired(&policies)? {
        // After a reboot the maps are new: nothing to take out.
        finish_apply(filter);
        apply::apply(filter, None, &desired, &[])?;
        restored_policy = Some(entry.version.policy_sha256);
    }
    // Live entries over the policy's: a policy entry is never weakened
    // (the apply engine keeps it, see `maps::lists`), so they go in only
    // where the policy has nothing.
    let held = held_entries(&live);
    for kind in [ListKind::Block, ListKind::Allow] {
        let tries = Tries::from(kind);
        let mine: Vec<&HeldEntry> = held.iter().filter(|h| h.kind == tries).collect();
        let cidrs: Vec<Cidr> = mine.iter().map(|h| h.cidr).collect();
        let existing = filter.lookup_entries(tries, &cidrs)?;
        let writes: Vec<(Cidr, ListEntry)> = mine
            .iter()
            .zip(existing)
            .filter(|(_, old)| old.is_none())
            .map(|(h, _)| {
                (
                    h.cidr,
                    ListEntry {
                        expires_at_ns: h.expires_at_ns,
                        prefix_len: h.cidr.prefix(),
                        origin: h.origin,
                        rule: h.rule,
                        ..ListEntry::default()
                    },
                )
            })
            .collect();
        filter
            .write_entries(tries, &writes)
            .with_context(|| format!("restoring the {}", kind.name()))?;
    }
    if held.is_empty() && restored_policy.is_none() {
        return Ok("nothing to restore".into());
    }
    let summary = format!(
        "restored {} live entries and {}",
        held.len(),
        restored_policy.as_ref().map_or_else(
            || "no policy".to_string(),
            |sha| format!("policy {}", &sha[..12.min(sha.len())])
        )
    );
    audit(
        state,
        "restore",
        None,
        None,
        json!({ "summary": summary, "live_entries": held.len() }),
    )?;
    info!("{summary}");
    Ok(summary)
}

/// Records a CLI addition, encoded while the kernel writes went on (see
/// `Filter::list_insert_with`), in the state and the audit log.
pub fn record_cli_add(
    state: &StateDir,
    command: &str,
    encoded: &crate::state::EncodedAdd,
) -> anyhow::Result<()> {
    crate::state::LiveJournal::new(state).append_add(encoded)?;
    audit_cli_edit(state, command, encoded.entries(), &[])
}

/// Records a live list edit in the state (origin `cli`) and the audit log.
pub fn record_cli_edit(
    state: &StateDir,
    command: &str,
    added: &[LiveEntry],
    removed: &[(ListName, Cidr, Origin)],
) -> anyhow::Result<()> {
    let journal = crate::state::LiveJournal::new(state);
    if !added.is_empty() {
        journal.add(added)?;
    }
    if !removed.is_empty() {
        let keys: Vec<crate::state::LiveKey> = removed
            .iter()
            .map(|(list, cidr, origin)| crate::state::LiveKey {
                list: *list,
                cidr: *cidr,
                origin: *origin,
            })
            .collect();
        journal.remove(&keys)?;
    }
    audit_cli_edit(state, command, added, removed)
}

/// The audit log's line for a live list edit: counts and the first entries.
fn audit_cli_edit(
    state: &StateDir,
    command: &str,
    added: &[LiveEntry],
    removed: &[(ListName, Cidr, Origin)],
) -> anyhow::Result<()> {
    let sample = |v: &mut dyn Iterator<Item = String>| v.take(20).collect::<Vec<_>>();
    audit(
        state,
        command,
        None,
        None,
        json!({
            "added": added.len(),
            "removed": removed.len(),
            "entries": sample(&mut added.iter().map(|e| e.cidr.to_string()).chain(removed.iter().map(|(_, c, _)| c.to_string()))),
        }),
    )
}

/// The live entries a CLI edit of `cidrs` leaves in the state: one expiry
/// for the whole edit, as the kernel's entries have.
#[must_use]
pub fn cli_entries(kind: ListKind, cidrs: &[Cidr], ttl: Option<Duration>) -> Vec<LiveEntry> {
    let expires_at = ttl.map(|t| SystemTime::now() + t);
    cidrs
        .iter()
        .map(|&cidr| LiveEntry {
            list: list_name(kind),
            cidr,
            origin: Origin::Cli,
            expires_at,
            rule: None,
        })
        .collect()
}

/// The origin of a kernel entry, for the state.
#[must_use]
pub fn origin_of(entry: &ListEntry) -> Origin {
    match entry.origin {
        ORIGIN_AUTO => Origin::Auto,
        ORIGIN_CROWDSEC => Origin::Crowdsec,
        filter_common::ORIGIN_POLICY => Origin::Policy,
        _ => Origin::Cli,
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

    #[test]
    fn a_confirm_deadline_is_never_earlier_than_asked() {
        let at = |ms: u64| UNIX_EPOCH + Duration::from_millis(ms);
        let wait = Duration::from_secs(3);
        assert_eq!(confirm_deadline(at(10_000), wait), at(13_000));
        assert_eq!(confirm_deadline(at(10_001), wait), at(14_000));
        assert_eq!(confirm_deadline(at(10_999), wait), at(14_000));
    }
}
