//! Every table and JSON document the commands print, in one place. JSON is
//! for machines (tests included); the tables are for people and may change.

use filter_ctl::control::apply::Change;
use std::{
    io::{self, Write as _},
    time::Duration,
};

use filter_common::Config;
use filter_ctl::{
    maps::{
        ListKind,
        counters::Stats,
        journal::Header,
        lists::{ListedAutoBlock, ListedEntry},
        rules::ListedRule,
        status::Status,
    },
    spec::{duration::format_duration, policy::LoadedPolicy, rule::RateClock},
};
use serde::Serialize;

/// Standard output through a buffer: the lock alone flushes at every
/// newline, one `write` per line (millions for a large list).
fn buffered_stdout() -> io::BufWriter<io::StdoutLock<'static>> {
    io::BufWriter::with_capacity(1 << 16, io::stdout().lock())
}

fn print_json(value: &impl Serialize, pretty: bool) -> anyhow::Result<()> {
    let mut out = buffered_stdout();
    if pretty {
        serde_json::to_writer_pretty(&mut out, value)?;
    } else {
        serde_json::to_writer(&mut out, value)?;
    }
    writeln!(out)?;
    out.flush()?;
    Ok(())
}

/// What `list` shows.
#[derive(Serialize)]
pub struct Listing {
    #[serde(rename = "allowlist")]
    pub allow: Vec<ListedEntry>,
    #[serde(rename = "blocklist")]
    pub block: Vec<ListedEntry>,
    #[serde(rename = "autoblock")]
    pub auto: Vec<ListedAutoBlock>,
    /// A list change that was interrupted; the next edit rolls it back.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interrupted: Option<Header>,
}

fn interrupted_line(header: &Header) -> String {
    format!(
        "INTERRUPTED: a change to the {} ({} entries, `{}`, pid {}) did not finish; the next edit (or `run`) rolls it back",
        header.list, header.entries, header.command, header.pid
    )
}

pub fn list(listing: &Listing, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(listing, true);
    }
    let mut out = buffered_stdout();
    if let Some(header) = &listing.interrupted {
        writeln!(out, "{}", interrupted_line(header))?;
    }
    for (title, entries) in [("allowlist", &listing.allow), ("blocklist", &listing.block)] {
        writeln!(out, "{title} ({}):", entries.len())?;
        for e in entries {
            let origin = if e.shadow {
                format!("{} (shadow)", e.origin)
            } else {
                e.origin.to_string()
            };
            match e.expires_in_secs {
                Some(secs) => writeln!(
                    out,
                    "  {:<43} {origin:<17} expires in {}",
                    &*e.cidr.text(),
                    format_duration(Duration::from_secs(secs))
                )?,
                None => writeln!(out, "  {:<43} {origin}", &*e.cidr.text())?,
            }
        }
    }
    writeln!(out, "autoblock ({}):", listing.auto.len())?;
    for a in &listing.auto {
        writeln!(
            out,
            "  {:<43} rule {:<14} {} over limit, expires in {}",
            a.source,
            a.rule,
            a.over_limit,
            format_duration(Duration::from_secs(a.expires_in_secs))
        )?;
    }
    out.flush()?;
    Ok(())
}

pub fn stats(stats: &Stats, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(stats, false);
    }
    let mut out = io::stdout().lock();
    writeln!(out, "{:<18} {:>14} {:>16}", "reason", "packets", "bytes")?;
    for (name, c) in &stats.reasons {
        writeln!(out, "{name:<18} {:>14} {:>16}", c.packets, c.bytes)?;
    }
    writeln!(out)?;
    for (name, value) in &stats.tables {
        writeln!(out, "{name:<18} {value:>14}")?;
    }
    Ok(())
}

/// The policy part of `status`.
#[derive(Debug, Serialize)]
pub struct PolicyStatus {
    pub state_dir: String,
    pub active_policy_sha256: Option<String>,
    pub active_policy_source: Option<String>,
    pub applied_at: Option<String>,
    pub shadow: bool,
    pub pending_confirmation_sha256: Option<String>,
    pub pending_deadline: Option<String>,
    pub pending_deadline_unix: Option<u64>,
}

pub fn status(status: &Status, policy: Option<&PolicyStatus>, json: bool) -> anyhow::Result<()> {
    if json {
        let mut value = serde_json::to_value(status)?;
        if let (Some(map), Some(policy)) = (value.as_object_mut(), policy) {
            map.insert("policy".into(), serde_json::to_value(policy)?);
            map.insert(
                "active_policy_sha256".into(),
                serde_json::to_value(&policy.active_policy_sha256)?,
            );
        }
        return print_json(&value, true);
    }
    let mut out = io::stdout().lock();
    if let Some(policy) = policy {
        match &policy.active_policy_sha256 {
            Some(sha) => writeln!(
                out,
                "policy:     {sha} ({}, applied {}{})",
                policy.active_policy_source.as_deref().unwrap_or("?"),
                policy.applied_at.as_deref().unwrap_or("?"),
                if policy.shadow { ", shadow mode" } else { "" }
            )?,
            None => writeln!(
                out,
                "policy:     none applied (state in {})",
                policy.state_dir
            )?,
        }
        if let Some(deadline) = &policy.pending_deadline {
            writeln!(
                out,
                "pending:    unconfirmed policy; reverts at {deadline} unless `filter-ctl policy confirm`"
            )?;
        }
    }
    writeln!(
        out,
        "pins:       {} (layout v{})",
        status.pin_dir.display(),
        status.layout_version
    )?;
    match status.controller_pid {
        Some(pid) => writeln!(out, "controller: running, pid {pid}")?,
        None => writeln!(
            out,
            "controller: not running (the filter keeps enforcing; expired entries are swept by the kernel on lookup)"
        )?,
    }
    if let Some(holder) = &status.edit_lock_holder {
        writeln!(out, "edit lock:  held by {holder}")?;
    }
    if let Some(header) = &status.interrupted_change {
        writeln!(out, "{}", interrupted_line(header))?;
    }
    writeln!(out, "interfaces ({}):", status.interfaces.len())?;
    for iface in &status.interfaces {
        let mode = iface.mode.as_deref().unwrap_or("mode unknown");
        let program = iface
            .program_id
            .map_or_else(|| "no program".to_string(), |id| format!("program {id}"));
        writeln!(
            out,
            "  {:<16} {:<9} {mode:<13} {program}",
            iface.name, iface.state
        )?;
    }
    Ok(())
}

pub fn rules(rules: &[ListedRule], config: &Config, json: bool) -> anyhow::Result<()> {
    let clock = RateClock::of_value(config.rate_clock).to_string();
    if json {
        let value = serde_json::json!({
            "rules": rules,
            "clock": clock,
            "ipv4_prefix": config.ipv4_source_prefix,
            "ipv6_prefix": config.ipv6_source_prefix,
        });
        return print_json(&value, true);
    }
    let mut out = io::stdout().lock();
    writeln!(
        out,
        "sources grouped by /{} (IPv4) and /{} (IPv6); {clock} clock",
        config.ipv4_source_prefix, config.ipv6_source_prefix
    )?;
    writeln!(
        out,
        "{:<16} {:<6} {:>10} {:>10} {:>12} {:>12} {:>12}  extra",
        "target", "action", "rate", "burst", "bytes/s", "passed", "dropped"
    )?;
    for r in rules {
        let opt = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
        let mut extra = Vec::new();
        if !r.only_from.is_empty() {
            extra.push(format!("only-from {}", r.only_from.join(",")));
        }
        if let (Some(after), Some(window), Some(block_for)) = (
            r.autoblock_after,
            r.autoblock_window_secs,
            r.autoblock_for_secs,
        ) {
            extra.push(format!(
                "autoblock after {after} in {} for {}",
                format_duration(Duration::from_secs_f64(window)),
                format_duration(Duration::from_secs_f64(block_for))
            ));
        }
        writeln!(
            out,
            "{:<16} {:<6} {:>10} {:>10} {:>12} {:>12} {:>12}  {}",
            r.target,
            r.action,
            opt(r.rate),
            opt(r.burst),
            opt(r.bytes),
            r.passed_packets,
            r.dropped_packets,
            extra.join("; ")
        )?;
    }
    Ok(())
}

/// What `policy check` prints for a valid policy.
pub fn policy_check(loaded: &LoadedPolicy, json: bool) -> anyhow::Result<()> {
    let policy = &loaded.policy;
    let rules: Vec<_> = policy
        .default_limit
        .iter()
        .chain(&policy.port_rules)
        .collect();
    if json {
        let value = serde_json::json!({
            "path": loaded.path,
            "sha256": loaded.sha256,
            "interfaces": policy.interfaces,
            "mode": policy.mode.map(|m| m.to_string()),
            "shadow": policy.shadow,
            "rate_clock": policy.rate_clock.map(|c| c.to_string()),
            "ipv4_prefix": policy.ipv4_prefix,
            "ipv6_prefix": policy.ipv6_prefix,
            "blocklist_entries": policy.block.len(),
            "allowlist_entries": policy.allow.len(),
            "rules": rules.iter().map(|r| serde_json::json!({
                "target": r.target.to_string(),
                "shadow": r.shadow,
            })).collect::<Vec<_>>(),
            "list_files": loaded.list_files.iter().map(|f| serde_json::json!({
                "path": f.path,
                "list": f.list.name(),
                "sha256": f.sha256,
                "entries": f.entries,
            })).collect::<Vec<_>>(),
        });
        return print_json(&value, true);
    }
    let mut out = io::stdout().lock();
    writeln!(out, "policy {} is valid", loaded.path.display())?;
    writeln!(out, "sha256:     {}", loaded.sha256)?;
    let mode = policy
        .mode
        .map_or_else(String::new, |m| format!("; mode {m}"));
    if policy.interfaces.is_empty() {
        writeln!(out, "interfaces: none (run needs --iface){mode}")?;
    } else {
        writeln!(out, "interfaces: {}{mode}", policy.interfaces.join(", "))?;
    }
    if policy.shadow {
        writeln!(
            out,
            "shadow:     the whole policy (counts would-be drops, drops nothing)"
        )?;
    }
    let plural =
        |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    for (name, entries, list) in [
        ("blocklist:", policy.block.len(), ListKind::Block),
        ("allowlist:", policy.allow.len(), ListKind::Allow),
    ] {
        let files = loaded.list_files.iter().filter(|f| f.list == list).count();
        let from = if files == 0 {
            String::new()
        } else {
            format!(" (with {})", plural(files, "list file", "list files"))
        };
        writeln!(
            out,
            "{name:<11} {}{from}",
            plural(entries, "entry", "entries")
        )?;
    }
    let targets: Vec<String> = rules
        .iter()
        .map(|r| {
            if r.shadow {
                format!("{} (shadow)", r.target)
            } else {
                r.target.to_string()
            }
        })
        .collect();
    let listed = if targets.is_empty() {
        String::new()
    } else {
        format!(": {}", targets.join(", "))
    };
    writeln!(
        out,
        "rules:      {}{listed}",
        plural(rules.len(), "rule", "rules")
    )?;
    Ok(())
}

/// Entries shown one by one in a diff; the rest are counted.
const DIFF_SHOWN: usize = 20;

pub fn policy_diff(
    change: &Change,
    active_sha256: Option<&str>,
    next_sha256: &str,
    json: bool,
) -> anyhow::Result<()> {
    if json {
        let value = serde_json::json!({
            "active_sha256": active_sha256,
            "sha256": next_sha256,
            "changes": change,
            "empty": change.is_empty(),
        });
        return print_json(&value, true);
    }
    let mut out = io::stdout().lock();
    writeln!(
        out,
        "from {} to {next_sha256}",
        active_sha256.unwrap_or("no policy")
    )?;
    if change.is_empty() {
        writeln!(out, "no changes")?;
        return Ok(());
    }
    for (sign, title, items) in [
        ("+", "block", &change.block_added),
        ("-", "block", &change.block_removed),
        ("+", "shadow block", &change.shadow_block_added),
        ("-", "shadow block", &change.shadow_block_removed),
        ("+", "allow", &change.allow_added),
        ("-", "allow", &change.allow_removed),
        ("+", "rule", &change.rules_set),
        ("-", "rule", &change.rules_removed),
        ("~", "setting", &change.settings),
    ] {
        for item in items.iter().take(DIFF_SHOWN) {
            writeln!(out, "{sign} {title:<12} {item}")?;
        }
        if items.len() > DIFF_SHOWN {
            writeln!(
                out,
                "{sign} {title:<12} ... and {} more",
                items.len() - DIFF_SHOWN
            )?;
        }
    }
    writeln!(out, "{}", change.summary())?;
    Ok(())
}

/// What `policy show` prints.
#[derive(Debug, Serialize)]
pub struct PolicyShow {
    pub sha256: String,
    pub version: String,
    pub source: String,
    pub applied_at: String,
    pub applied_at_unix: u64,
    pub applied_by: String,
    pub uid: u32,
    pub action: String,
    pub shadow: bool,
    pub pending_confirmation: Option<PendingShow>,
    /// (path, sha256) of each list file.
    pub list_files: Vec<(String, String)>,
    pub policy: String,
}

#[derive(Debug, Serialize)]
pub struct PendingShow {
    pub sha256: String,
    pub deadline: String,
    pub deadline_unix: u64,
}

pub fn policy_show(show: &PolicyShow, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(show, true);
    }
    let mut out = io::stdout().lock();
    writeln!(out, "active policy: {}", show.source)?;
    writeln!(out, "sha256:        {}", show.sha256)?;
    writeln!(
        out,
        "applied:       {} by {} (uid {}, {}){}",
        show.applied_at,
        show.applied_by,
        show.uid,
        show.action,
        if show.shadow { ", shadow mode" } else { "" }
    )?;
    for (path, sha) in &show.list_files {
        writeln!(out, "list file:     {path} (sha256 {sha})")?;
    }
    if let Some(p) = &show.pending_confirmation {
        writeln!(
            out,
            "pending:       unconfirmed; reverts at {} unless `filter-ctl policy confirm`",
            p.deadline
        )?;
    }
    writeln!(out, "---")?;
    write!(out, "{}", show.policy)?;
    Ok(())
}
