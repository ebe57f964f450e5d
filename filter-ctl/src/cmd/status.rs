//! `filter-ctl status`.

use std::time::UNIX_EPOCH;

use filter_ctl::{
    maps::status,
    state::{PolicyStore, rfc3339},
};

use super::Context;
use crate::render::{self, PolicyStatus};

pub fn run(ctx: &Context, json: bool) -> anyhow::Result<()> {
    let status = status::read(&ctx.pins)?;
    let policy = policy_status(ctx)?;
    render::status(&status, policy.as_ref(), json)
}

/// The active policy and a pending confirmation, from the state directory
/// (read-only; `None` without one).
fn policy_status(ctx: &Context) -> anyhow::Result<Option<PolicyStatus>> {
    let Some(state) = ctx.state_if_any()? else {
        return Ok(None);
    };
    let policies = PolicyStore::new(&state);
    let active = policies.active()?;
    let pending = policies.pending()?;
    let unix = |t: std::time::SystemTime| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    Ok(Some(PolicyStatus {
        state_dir: ctx.state_dir.display().to_string(),
        active_policy_sha256: active.as_ref().map(|a| a.version.policy_sha256.clone()),
        active_policy_source: active
            .as_ref()
            .map(|a| a.version.source.display().to_string()),
        applied_at: active.as_ref().map(|a| rfc3339(a.at)),
        shadow: active.as_ref().is_some_and(|a| a.shadow),
        pending_confirmation_sha256: pending.as_ref().map(|p| p.version.policy_sha256.clone()),
        pending_deadline: pending.as_ref().map(|p| rfc3339(p.deadline)),
        pending_deadline_unix: pending.as_ref().map(|p| unix(p.deadline)),
    }))
}
