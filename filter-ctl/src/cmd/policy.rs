//! `filter-ctl policy check|diff|apply|confirm|rollback|show`.

use std::{path::PathBuf, time::Duration};

use filter_ctl::{
    control::{
        apply::{self, Desired},
        policy as ops,
    },
    error::Error,
    spec::{
        duration::parse_duration,
        policy::{self, Ownership},
    },
    state::{PolicyStore, rfc3339},
};

use super::Context;
use crate::render;

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Validate a policy file and the list files it names, without
    /// touching the filter.
    ///
    /// Needs no pins, no bpffs and no root. Reports every problem as
    /// `FILE:LINE:COL: MESSAGE` (`FILE:LINE: MESSAGE` in a list file) and exits
    /// with code 2 if there is any, including a policy or list file that
    /// every user may write. On success prints the policy's SHA-256 (what
    /// `sha256sum` prints), its interfaces, list entries and rules.
    ///
    /// The policy is TOML; the example policies shipped with filter-ctl
    /// (`examples/*.toml`) document every key.
    ///
    /// Example: filter-ctl policy check /etc/filter-ctl/policy.toml
    Check(CheckArgs),
    /// Show what applying a policy file would change against the active
    /// policy: list entries, rules, settings. Changes nothing.
    ///
    /// Example: filter-ctl policy diff /etc/filter-ctl/policy.toml --json
    Diff(CheckArgs),
    /// Apply a policy file: the new entries and rules go in beside the old
    /// ones before the old ones come out, so no source blocked by both
    /// versions gets through. Live edits (`block`, `allow`) and automatic
    /// blocks stay. The file and its list files must be owned by root and
    /// writable by no one else. With --confirm, the previous policy comes
    /// back by itself unless `filter-ctl policy confirm` runs in time (the
    /// running controller reverts it, also after a restart).
    ///
    /// Example: filter-ctl policy apply /etc/filter-ctl/policy.toml --confirm 60s
    Apply(ApplyArgs),
    /// Keep the policy applied with --confirm.
    ///
    /// Example: filter-ctl policy confirm
    Confirm,
    /// Go back to the policy applied before the active one (repeat to go
    /// further back).
    ///
    /// Example: filter-ctl policy rollback
    Rollback,
    /// The active policy: its SHA-256, when and by whom it was applied, a
    /// pending confirmation, and the policy itself.
    ///
    /// Example: filter-ctl policy show --json
    Show(super::JsonArg),
}

#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// The policy file. List files it names by a relative path are read
    /// from its directory.
    file: PathBuf,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
pub struct ApplyArgs {
    /// The policy file (owned by root, writable by no one else).
    file: PathBuf,
    /// Revert to the previous policy unless `filter-ctl policy confirm`
    /// runs within this time (needs a running `filter-ctl run`, which does
    /// the revert). Format: 60s, 5m.
    #[arg(long, value_parser = parse_confirm)]
    confirm: Option<Duration>,
}

fn parse_confirm(text: &str) -> Result<Duration, String> {
    let wait = parse_duration(text).map_err(|e| e.to_string())?;
    if wait < Duration::from_secs(1) {
        return Err("--confirm needs at least 1s".into());
    }
    Ok(wait)
}

pub fn run(ctx: &Context, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Check(args) => {
            let loaded = policy::load(&args.file, Ownership::AnyOwner).map_err(Error::from)?;
            for note in &loaded.notes {
                eprintln!("{}: note: {}", note.location(), note.message);
            }
            render::policy_check(&loaded, args.json)
        }
        Command::Diff(args) => diff(ctx, &args),
        Command::Apply(args) => apply_file(ctx, &args),
        Command::Confirm => {
            let pending = ops::confirm(&ctx.state()?)?;
            println!(
                "confirmed policy {} (sha256 {})",
                pending.version.source.display(),
                pending.version.policy_sha256
            );
            Ok(())
        }
        Command::Rollback => {
            let state = ctx.state()?;
            let filter = ctx.edit()?;
            let outcome = ops::rollback(&filter, &state)?;
            if let Some(active) = &outcome.active {
                println!(
                    "rolled back to policy {} (sha256 {}): {}",
                    active.source.display(),
                    active.policy_sha256,
                    outcome.change.summary()
                );
            }
            Ok(())
        }
        Command::Show(args) => show(ctx, args.json),
    }
}

fn diff(ctx: &Context, args: &CheckArgs) -> anyhow::Result<()> {
    let loaded = policy::load(&args.file, Ownership::AnyOwner).map_err(Error::from)?;
    let next = Desired::from(&loaded.policy);
    let current = match ctx.state_if_any()? {
        Some(state) => ops::active_desired(&PolicyStore::new(&state))?,
        None => None,
    };
    // Settings compare with what the kernel runs, when a filter is loaded.
    let config = ctx
        .open()
        .and_then(|f| f.config())
        .unwrap_or_else(|_| filter_common::Config {
            ipv4_source_prefix: filter_common::DEFAULT_IPV4_SOURCE_PREFIX,
            ipv6_source_prefix: filter_common::DEFAULT_IPV6_SOURCE_PREFIX,
            ..filter_common::Config::default()
        });
    let change = apply::plan(current.as_ref().map(|(_, d)| d), &next, &config);
    let active = current.map(|(e, _)| e.version.policy_sha256);
    render::policy_diff(&change, active.as_deref(), &loaded.sha256, args.json)
}

fn apply_file(ctx: &Context, args: &ApplyArgs) -> anyhow::Result<()> {
    let loaded = ops::load_file(&args.file)?;
    let state = ctx.state()?;
    let filter = ctx.edit()?;
    if args.confirm.is_some() {
        let running = filter_ctl::maps::status::controller_pid(&ctx.pins).is_some();
        if !running {
            return Err(Error::BadInput(
                "--confirm needs a running `filter-ctl run` for this pin directory: it is the controller that reverts an unconfirmed policy".into(),
            )
            .into());
        }
    }
    let outcome = ops::apply_loaded(&filter, &state, &loaded, args.confirm, "apply")?;
    println!(
        "applied policy {} (sha256 {}): {}",
        loaded.path.display(),
        loaded.sha256,
        outcome.change.summary()
    );
    if let Some(wait) = args.confirm {
        println!(
            "run `filter-ctl policy confirm` within {}s, or the previous policy comes back",
            wait.as_secs()
        );
    }
    Ok(())
}

fn show(ctx: &Context, json: bool) -> anyhow::Result<()> {
    let Some(state) = ctx.state_if_any()? else {
        return Err(Error::NotFound(format!(
            "no policy was ever applied (no state directory at {})",
            ctx.state_dir.display()
        ))
        .into());
    };
    let policies = PolicyStore::new(&state);
    let Some(active) = policies.active()? else {
        return Err(Error::NotFound(
            "no policy was ever applied (`filter-ctl policy apply FILE`)".into(),
        )
        .into());
    };
    let files = policies.load_version(&active.version)?;
    let pending = policies.pending()?;
    let text = String::from_utf8_lossy(&files.policy).into_owned();
    render::policy_show(
        &render::PolicyShow {
            sha256: active.version.policy_sha256.clone(),
            version: active.version.id.clone(),
            source: active.version.source.display().to_string(),
            applied_at: rfc3339(active.at),
            applied_at_unix: active
                .at
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            applied_by: active.user.clone(),
            uid: active.uid,
            action: format!("{:?}", active.action).to_lowercase(),
            shadow: active.shadow,
            pending_confirmation: pending.map(|p| render::PendingShow {
                sha256: p.version.policy_sha256,
                deadline: rfc3339(p.deadline),
                deadline_unix: p
                    .deadline
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
            }),
            list_files: active
                .version
                .lists
                .iter()
                .map(|l| (l.path.display().to_string(), l.sha256.clone()))
                .collect(),
            policy: text,
        },
        json,
    )
}
