//! The metric families `filter-ctl run --metrics-addr` exports: the contract
//! that the alerts, the dashboard (`tests/deploy_artifacts.rs`) and a real
//! scrape (`tests/integration_metrics.rs`) are all checked against, kept in
//! one place so the three cannot drift apart.

/// Every family with its Prometheus type, present in every scrape of a
/// running controller (the list entries from its first sweep, at start).
pub const ALWAYS: &[(&str, &str)] = &[
    ("xdp_filter_packets_total", "counter"),
    ("xdp_filter_bytes_total", "counter"),
    ("xdp_filter_rule_packets_total", "counter"),
    ("xdp_filter_rule_bytes_total", "counter"),
    ("xdp_filter_autoblocks_total", "counter"),
    ("xdp_filter_autoblocks_failed_total", "counter"),
    ("xdp_filter_tracking_inserts_total", "counter"),
    ("xdp_filter_tracking_evictions_total", "counter"),
    ("xdp_filter_events_lost_total", "counter"),
    ("xdp_filter_drop_events_capped_total", "counter"),
    ("xdp_filter_list_entries", "gauge"),
    ("xdp_filter_list_capacity", "gauge"),
    ("xdp_filter_tracking_entries", "gauge"),
    ("xdp_filter_tracking_capacity", "gauge"),
    ("xdp_filter_interface_attached", "gauge"),
    ("xdp_filter_build_info", "gauge"),
    (
        "xdp_filter_policy_confirmation_deadline_timestamp_seconds",
        "gauge",
    ),
];

/// Families present only while a policy is active (`run --policy`, or after
/// `policy apply`).
pub const WITH_POLICY: &[(&str, &str)] = &[
    ("xdp_filter_policy_info", "gauge"),
    ("xdp_filter_policy_applied_timestamp_seconds", "gauge"),
];

/// Every exported family's name.
pub fn names() -> impl Iterator<Item = &'static str> {
    ALWAYS.iter().chain(WITH_POLICY).map(|(name, _)| *name)
}

/// The families of `families` that `text` (a scrape) lacks a `# HELP` or a
/// `# TYPE` line of the right type for.
#[must_use]
pub fn missing_from(text: &str, families: &[(&str, &str)]) -> Vec<String> {
    families
        .iter()
        .filter(|(name, kind)| {
            let help = format!("# HELP {name} ");
            let typed = format!("# TYPE {name} {kind}");
            !(text.lines().any(|l| l.starts_with(&help)) && text.lines().any(|l| l == typed))
        })
        .map(|(name, kind)| format!("{name} ({kind})"))
        .collect()
}
