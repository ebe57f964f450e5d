//! `GET /metrics` in the Prometheus text format, served by the controller
//! (`run --metrics-addr`). Every scrape reads the counters from the pinned
//! maps at that moment, with a fixed number of lookups: never a walk over
//! the lists or the tracking table, so its cost does not grow with them.
//! Labels are interfaces, reasons, lists, families and configured rules
//! only: never a source address or a port outside the rules.

use std::{fmt, net::SocketAddr, str::FromStr};

use anyhow::Context as _;
use axum::{Router, http::StatusCode, http::header, response::IntoResponse, routing::get};
use filter_common::{abi::LAYOUT_VERSION, maps, table_stat};
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

use crate::maps::{Filter, pins::PinDir, rules::RuleTable, status::ControllerState};

/// The default metrics address: loopback only.
pub const DEFAULT_ADDR: &str = "127.0.0.1:9711";

/// `--metrics-addr`: an address to listen on, or `none`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetricsAddr(pub Option<SocketAddr>);

impl FromStr for MetricsAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "none" {
            return Ok(Self(None));
        }
        s.parse().map(|a| Self(Some(a))).map_err(|_| {
            format!("`{s}` is not an address and port (e.g. 127.0.0.1:9711, [::1]:9711) nor `none`")
        })
    }
}

impl fmt::Display for MetricsAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(addr) => addr.fmt(f),
            None => f.write_str("none"),
        }
    }
}

impl Default for MetricsAddr {
    fn default() -> Self {
        Self(Some(DEFAULT_ADDR.parse().expect("valid default address")))
    }
}

/// Binds the metrics address (before anything is attached, so a taken
/// port changes nothing).
pub fn bind(addr: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr).with_context(|| {
        format!(
            "cannot serve metrics on {addr}: choose another address with --metrics-addr ADDR:PORT, or turn metrics off with --metrics-addr none"
        )
    })?;
    listener
        .set_nonblocking(true)
        .context("making the metrics socket non-blocking")?;
    Ok(listener)
}

/// Serves `/metrics` on `listener` until the runtime stops. Call inside
/// the controller's runtime.
pub fn spawn(
    listener: std::net::TcpListener,
    pins: PinDir,
    state_dir: std::path::PathBuf,
) -> anyhow::Result<()> {
    let listener =
        tokio::net::TcpListener::from_std(listener).context("registering the metrics socket")?;
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let pins = pins.clone();
            let state_dir = state_dir.clone();
            async move {
                match tokio::task::spawn_blocking(move || scrape(&pins, &state_dir)).await {
                    Ok(Ok(text)) => (
                        StatusCode::OK,
                        [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
                        text,
                    )
                        .into_response(),
                    Ok(Err(err)) => {
                        log::warn!("metrics scrape failed: {err:#}");
                        (
                            StatusCode::INTERNAL_SERVER_ERROR,
                            format!("scrape failed: {err:#}\n"),
                        )
                            .into_response()
                    }
                    Err(err) => (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("scrape failed: {err}\n"),
                    )
                        .into_response(),
                }
            }
        }),
    );
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app).await {
            log::warn!("the metrics server stopped: {err}");
        }
    });
    Ok(())
}

/// The active policy (an info metric) and a pending confirmation. A state
/// directory that cannot be read costs these metrics, never the scrape.
fn policy_metrics(registry: &Registry, state_dir: &std::path::Path) {
    let Ok(Some(state)) = crate::state::StateDir::open_existing(state_dir) else {
        return;
    };
    let policies = crate::state::PolicyStore::new(&state);
    if let Ok(Some(active)) = policies.active() {
        gauge(
            registry,
            "xdp_filter_policy_info",
            "Always 1; the labels give the active policy's SHA-256 and whether it runs in shadow mode.",
            &["sha256", "shadow"],
        )
        .with_label_values(&[
            active.version.policy_sha256.as_str(),
            if active.shadow { "true" } else { "false" },
        ])
        .set(1);
        gauge(
            registry,
            "xdp_filter_policy_applied_timestamp_seconds",
            "When the active policy was applied (Unix time).",
            &[],
        )
        .with_label_values::<&str>(&[])
        .set(
            active
                .at
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)),
        );
    }
    let deadline = policies.pending().ok().flatten().map(|p| {
        p.deadline
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
    });
    gauge(
        registry,
        "xdp_filter_policy_confirmation_deadline_timestamp_seconds",
        "When an applied but unconfirmed policy reverts (Unix time); 0 when none waits.",
        &[],
    )
    .with_label_values::<&str>(&[])
    .set(deadline.unwrap_or(0));
}

/// Live entries per (list, origin), as of the controller's last sweep.
type OriginCounts = Vec<(&'static str, &'static str, u64)>;
static ORIGIN_COUNTS: std::sync::Mutex<Option<OriginCounts>> = std::sync::Mutex::new(None);

/// Counts the live state's unexpired entries by list and origin (in
/// memory: the lists are not walked) for `xdp_filter_list_entries_by_origin`.
pub fn publish_origin_counts(live: &crate::state::LiveState) {
    use crate::state::{ListName, Origin};
    let list_label = |list: ListName| match list {
        ListName::Block => "blocklist",
        ListName::Allow => "allowlist",
    };
    let mut counts: OriginCounts = Vec::new();
    for list in [ListName::Block, ListName::Allow] {
        for origin in [Origin::Cli, Origin::Auto, Origin::Crowdsec] {
            counts.push((list_label(list), origin.name(), 0));
        }
    }
    for entry in live.entries(std::time::SystemTime::now()) {
        let list = list_label(entry.list);
        if let Some(slot) = counts
            .iter_mut()
            .find(|(l, o, _)| *l == list && *o == entry.origin.name())
        {
            slot.2 += 1;
        }
    }
    if let Ok(mut guard) = ORIGIN_COUNTS.lock() {
        *guard = Some(counts);
    }
}

/// `CrowdSec` bouncer metrics, when bouncer mode is on in this process.
fn crowdsec_metrics(registry: &Registry) {
    let Some(status) = super::crowdsec::status() else {
        return;
    };
    gauge(
        registry,
        "xdp_filter_crowdsec_up",
        "1 if the last pull from the CrowdSec LAPI succeeded, 0 if it failed (the known decisions stay enforced).",
        &[],
    )
    .with_label_values::<&str>(&[])
    .set(i64::from(status.up));
    gauge(
        registry,
        "xdp_filter_crowdsec_last_pull_success_timestamp_seconds",
        "When a pull from the CrowdSec LAPI last succeeded (Unix time); 0 if none has.",
        &[],
    )
    .with_label_values::<&str>(&[])
    .set(to_i64(status.last_success_unix.unwrap_or(0)));
    counter(
        registry,
        "xdp_filter_crowdsec_decisions_applied_total",
        "CrowdSec ban decisions written to the blocklist (new, or with a new expiry).",
        &[],
    )
    .with_label_values::<&str>(&[])
    .inc_by(status.applied);
    counter(
        registry,
        "xdp_filter_crowdsec_decisions_removed_total",
        "crowdsec blocklist entries removed: deleted decisions, and after an outage those no longer in the LAPI's set.",
        &[],
    )
    .with_label_values::<&str>(&[])
    .inc_by(status.removed);
    let skipped = counter(
        registry,
        "xdp_filter_crowdsec_decisions_skipped_total",
        "CrowdSec decisions not applied, by reason: type (not ban), scope (not Ip/Range), malformed, duration, expired, held_by_other_origin.",
        &["reason"],
    );
    for reason in super::crowdsec::skip_reasons() {
        skipped
            .with_label_values(&[reason])
            .inc_by(status.skipped.get(reason).copied().unwrap_or(0));
    }
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let metric = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("metric registered once");
    metric
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let metric = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("metric registered once");
    metric
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// One scrape: every metric, read from the pinned maps now.
pub fn scrape(pins: &PinDir, state_dir: &std::path::Path) -> anyhow::Result<String> {
    let filter = Filter::open(pins)?;
    let registry = Registry::new();
    let state = ControllerState::read_live(pins).unwrap_or_default();

    // Per interface and reason.
    let packets = counter(
        &registry,
        "xdp_filter_packets_total",
        "Packets by interface and decision reason (shadow_* reasons count would-be drops of shadow rules and entries, which are also counted under their real reason).",
        &["interface", "reason"],
    );
    let bytes = counter(
        &registry,
        "xdp_filter_bytes_total",
        "Bytes by interface and decision reason (shadow_* as for xdp_filter_packets_total).",
        &["interface", "reason"],
    );
    for (interface, counters) in filter.interface_counters()? {
        for (reason, c) in filter_common::reason::NAMES.iter().zip(counters) {
            packets
                .with_label_values(&[interface.as_str(), reason])
                .inc_by(c.packets);
            bytes
                .with_label_values(&[interface.as_str(), reason])
                .inc_by(c.bytes);
        }
    }

    // Per configured rule (at most 256).
    let rule_packets = counter(
        &registry,
        "xdp_filter_rule_packets_total",
        "Packets each rate-limit rule passed or dropped.",
        &["rule", "verdict"],
    );
    let rule_bytes = counter(
        &registry,
        "xdp_filter_rule_bytes_total",
        "Bytes each rate-limit rule passed or dropped.",
        &["rule", "verdict"],
    );
    for (id, name) in RuleTable::read(&filter)?.names() {
        let c = filter.rule_counters(id)?;
        for (verdict, value) in [("passed", c.passed), ("dropped", c.dropped)] {
            rule_packets
                .with_label_values(&[name.as_str(), verdict])
                .inc_by(value.packets);
            rule_bytes
                .with_label_values(&[name.as_str(), verdict])
                .inc_by(value.bytes);
        }
    }

    // The program's tables.
    let inserts = filter.table_stat(table_stat::BUCKET_INSERTS)?;
    let evictions = filter.table_stat(table_stat::BUCKET_EVICTIONS)?;
    let capacity = u64::from(filter.capacity(maps::BUCKETS)?);
    for (name, help, value) in [
        (
            "xdp_filter_autoblocks_total",
            "Automatic blocks started.",
            filter.table_stat(table_stat::AUTOBLOCKS)?,
        ),
        (
            "xdp_filter_autoblocks_failed_total",
            "Automatic blocks that could not be added (blocklist full).",
            filter.table_stat(table_stat::AUTOBLOCKS_FAILED)?,
        ),
        (
            "xdp_filter_tracking_inserts_total",
            "New (rule, source) entries in the rate-limit tracking table.",
            inserts,
        ),
        (
            "xdp_filter_tracking_evictions_total",
            "Entries of the tracking table replaced by a new (rule, source), or cleared when their rule was removed.",
            evictions,
        ),
        (
            "xdp_filter_events_lost_total",
            "Ring-buffer events lost (buffer full).",
            filter.table_stat(table_stat::EVENTS_LOST)?,
        ),
        (
            "xdp_filter_drop_events_capped_total",
            "Sampled drops not sent as events because their CPU reached --sample-cap events per second.",
            filter.table_stat(table_stat::DROP_EVENTS_CAPPED)?,
        ),
    ] {
        counter(&registry, name, help, &[])
            .with_label_values(&[] as &[&str])
            .inc_by(value);
    }

    if let Some(counts) = state.list_entries {
        let entries = gauge(
            &registry,
            "xdp_filter_list_entries",
            "Active entries per list and family, as counted by the controller's last sweep (the lists are walked there, every --sweep-interval, never by a scrape).",
            &["list", "family"],
        );
        for (list, family, n) in [
            ("allowlist", "ipv4", counts.allow_v4),
            ("allowlist", "ipv6", counts.allow_v6),
            ("blocklist", "ipv4", counts.block_v4),
            ("blocklist", "ipv6", counts.block_v6),
        ] {
            entries
                .with_label_values(&[list, family])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
    if let Some(counts) = ORIGIN_COUNTS.lock().ok().and_then(|g| g.clone()) {
        let by_origin = gauge(
            &registry,
            "xdp_filter_list_entries_by_origin",
            "Live entries per list and origin (cli, auto, crowdsec), from the controller's state at its last sweep; the policy's own entries are the policy file's.",
            &["list", "origin"],
        );
        for (list, origin, n) in counts {
            by_origin.with_label_values(&[list, origin]).set(to_i64(n));
        }
    }
    crowdsec_metrics(&registry);
    let list_capacity = gauge(
        &registry,
        "xdp_filter_list_capacity",
        "Entries each list can hold, per address family.",
        &["list", "family"],
    );
    for (list, family, map) in [
        ("allowlist", "ipv4", maps::ALLOW_V4),
        ("allowlist", "ipv6", maps::ALLOW_V6),
        ("blocklist", "ipv4", maps::BLOCK_V4),
        ("blocklist", "ipv6", maps::BLOCK_V6),
    ] {
        list_capacity
            .with_label_values(&[list, family])
            .set(i64::from(filter.capacity(map)?));
    }
    gauge(
        &registry,
        "xdp_filter_tracking_entries",
        "Entries in the tracking table: inserts - evictions (the table is never walked).",
        &[],
    )
    .with_label_values(&[] as &[&str])
    .set(to_i64(crate::maps::counters::live_buckets(
        inserts, evictions,
    )));
    gauge(
        &registry,
        "xdp_filter_tracking_capacity",
        "Entries the tracking table can hold.",
        &[],
    )
    .with_label_values(&[] as &[&str])
    .set(to_i64(capacity));

    let attached = gauge(
        &registry,
        "xdp_filter_interface_attached",
        "1 if the filter is attached to the interface, 0 if the interface is missing.",
        &["interface", "mode"],
    );
    for iface in &state.interfaces {
        let mode = iface
            .mode
            .as_deref()
            .filter(|m| matches!(*m, "native" | "skb"))
            .unwrap_or("unknown");
        attached
            .with_label_values(&[iface.name.as_str(), mode])
            .set(i64::from(iface.state == "attached"));
    }
    gauge(
        &registry,
        "xdp_filter_build_info",
        "Always 1; the labels name the filter-ctl version and the map layout version.",
        &["version", "layout_version"],
    )
    .with_label_values(&[env!("CARGO_PKG_VERSION"), &LAYOUT_VERSION.to_string()])
    .set(1);
    policy_metrics(&registry, state_dir);

    TextEncoder::new()
        .encode_to_string(&registry.gather())
        .context("encoding the metrics")
}
