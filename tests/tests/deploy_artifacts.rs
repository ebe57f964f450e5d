//! The deployment artifacts under `deploy/`: the Prometheus alert rules and
//! their unit tests go through `promtool` (`check rules`, `test rules`), and
//! the alerts and the Grafana dashboard may name only the metrics that
//! `filter-ctl run` exports (`filter_tests::metrics`, which a real scrape
//! is checked against in `integration_metrics`); the systemd unit goes through
//! `systemd-analyze verify` and keeps its contract (`--policy`, reload by
//! SIGHUP, restart on failure). Mirrors `deploy/prometheus/`,
//! `deploy/grafana/` and `deploy/systemd/`.

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use filter_tests::metrics;
use serde_json::Value;

/// Series Prometheus makes itself for the scrape job (`job="filter-ctl"`).
const SCRAPE_METRICS: &[&str] = &["up"];

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path)
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The identifiers of a Prometheus query (or of any text) that start with
/// `xdp_`: metric names of this project, including misspelt ones.
fn project_metrics(text: &str) -> BTreeSet<&str> {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut found = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find(|c: char| is_ident(c)) {
        let tail = &rest[start..];
        let end = tail.find(|c: char| !is_ident(c)).unwrap_or(tail.len());
        let word = &tail[..end];
        if word.starts_with("xdp_") {
            found.insert(word);
        }
        rest = &tail[end..];
    }
    found
}

/// Whether `word` appears in `text` as a whole identifier.
fn names(text: &str, word: &str) -> bool {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    text.match_indices(word).any(|(at, _)| {
        !text[..at].ends_with(is_ident) && !text[at + word.len()..].starts_with(is_ident)
    })
}

/// `name` on `PATH`; `None` (the test skips) outside CI, a failure in CI.
fn tool(name: &str, package: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    let found = std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file());
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{name} is not on PATH in CI: `cargo xtask setup` installs it (Debian's {package})"
        );
        eprintln!("skipped: {name} is not on PATH (`cargo xtask setup` installs it)");
    }
    found
}

fn promtool() -> Option<PathBuf> {
    tool("promtool", "prometheus")
}

/// Runs `promtool ARGS` and returns its output, failing with it unless it
/// succeeds.
fn run_promtool(promtool: &Path, args: &[&str]) -> String {
    let output = Command::new(promtool)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {} {args:?}: {e}", promtool.display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "promtool {args:?} failed ({}):\n{text}",
        output.status
    );
    text
}

/// The `alert:` names of the rule file, in order.
fn alert_names(rules: &str) -> Vec<&str> {
    rules
        .lines()
        .filter_map(|line| line.trim_start().strip_prefix("- alert:"))
        .map(str::trim)
        .collect()
}

#[test]
fn promtool_accepts_the_alert_rules() {
    let Some(promtool) = promtool() else { return };
    let rules = deploy("prometheus/alerts.yml");
    let output = run_promtool(&promtool, &["check", "rules", rules.to_str().unwrap()]);
    let count = alert_names(&read(&rules)).len();
    assert!(
        output.contains(&format!("SUCCESS: {count} rules found")),
        "promtool found another number of rules than the {count} alerts:\n{output}"
    );
    print!("{output}");
}

#[test]
fn the_alert_unit_tests_pass() {
    let Some(promtool) = promtool() else { return };
    let tests = deploy("prometheus/alerts_test.yml");
    let output = run_promtool(&promtool, &["test", "rules", tests.to_str().unwrap()]);
    print!("{output}");
}

#[test]
fn every_alert_fires_and_stays_quiet_in_its_unit_tests() {
    let rules = read(&deploy("prometheus/alerts.yml"));
    let tests = read(&deploy("prometheus/alerts_test.yml"));
    let alerts = alert_names(&rules);
    assert!(!alerts.is_empty(), "no alerts in alerts.yml");
    // Each `alertname:` line of the tests, with whether its case expects
    // alerts (`exp_alerts:` followed by a list) or none (`exp_alerts: []`).
    let mut cases: Vec<(&str, bool)> = Vec::new();
    let mut current = None;
    for line in tests.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("alertname:") {
            current = Some(name.trim());
        } else if let Some(expected) = line.strip_prefix("exp_alerts:") {
            let name = current
                .take()
                .expect("an exp_alerts without an alertname before it");
            cases.push((name, expected.trim() != "[]"));
        }
    }
    for alert in &alerts {
        for (fires, what) in [(true, "fires"), (false, "stays quiet")] {
            assert!(
                cases.contains(&(alert, fires)),
                "alerts_test.yml has no case where {alert} {what}"
            );
        }
    }
    for (name, _) in &cases {
        assert!(
            alerts.contains(name),
            "alerts_test.yml tests {name}, which alerts.yml does not define"
        );
    }
}

#[test]
fn every_alert_has_a_severity_and_annotations_with_labels() {
    let rules = read(&deploy("prometheus/alerts.yml"));
    // The rule file's text from each `- alert:` to the next.
    let blocks: Vec<&str> = rules.split("- alert:").skip(1).collect();
    assert_eq!(blocks.len(), alert_names(&rules).len());
    for block in blocks {
        let name = block.split_whitespace().next().unwrap_or_default();
        for key in ["severity:", "summary:", "description:"] {
            assert!(block.contains(key), "alert {name} has no {key}");
        }
        assert!(
            block.contains("$labels."),
            "the annotations of {name} name none of its labels"
        );
    }
}

#[test]
fn the_alerts_name_only_exported_metrics() {
    let rules = read(&deploy("prometheus/alerts.yml"));
    let tests = read(&deploy("prometheus/alerts_test.yml"));
    for (file, text) in [("alerts.yml", &rules), ("alerts_test.yml", &tests)] {
        for metric in project_metrics(text) {
            assert!(
                metrics::names().any(|m| m == metric),
                "{file} names {metric}, which filter-ctl does not export"
            );
        }
    }
    assert!(
        names(&rules, "up") && rules.contains(r#"job="filter-ctl""#),
        "alerts.yml does not watch up{{job=\"filter-ctl\"}}"
    );
}

/// Every panel of the dashboard, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for panel in list.as_array().into_iter().flatten() {
            out.push(panel);
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

fn dashboard() -> Value {
    let path = deploy("grafana/dashboard.json");
    serde_json::from_str(&read(&path))
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// Every query of the dashboard: `(panel title, expr)`.
fn queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for panel in panels(dashboard) {
        let title = panel["title"].as_str().unwrap_or_default();
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("a target of panel {title:?} has no expr"));
            out.push((title.to_owned(), expr.to_owned()));
        }
    }
    out
}

#[test]
fn the_dashboard_loads_with_a_title_panels_and_its_variables() {
    let dashboard = dashboard();
    assert!(
        dashboard["title"].as_str().is_some_and(|t| !t.is_empty()),
        "the dashboard has no title"
    );
    let all = panels(&dashboard);
    assert!(!all.is_empty(), "the dashboard has no panels");
    let mut ids = BTreeSet::new();
    for panel in &all {
        let title = panel["title"].as_str().unwrap_or_default();
        assert!(!title.is_empty(), "a panel has no title: {panel}");
        assert!(
            panel["gridPos"].is_object(),
            "panel {title:?} has no gridPos"
        );
        let id = panel["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("panel {title:?} has no id"));
        assert!(ids.insert(id), "two panels have id {id}");
        if panel["type"] != "row" {
            assert_eq!(
                panel["datasource"]["uid"], "${datasource}",
                "panel {title:?} does not query the datasource variable"
            );
            assert!(
                panel["targets"].as_array().is_some_and(|t| !t.is_empty()),
                "panel {title:?} has no query"
            );
        }
    }
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("the dashboard has no templating.list");
    let variable = |name: &str| {
        variables
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("the dashboard has no ${name} variable"))
    };
    let datasource = variable("datasource");
    assert_eq!(datasource["type"], "datasource");
    assert_eq!(datasource["query"], "prometheus");
    assert_eq!(
        variable("interface")["definition"],
        "label_values(xdp_filter_packets_total, interface)"
    );
}

#[test]
fn the_dashboard_queries_name_only_exported_metrics() {
    let dashboard = dashboard();
    let queries = queries(&dashboard);
    assert!(!queries.is_empty(), "the dashboard has no queries");
    for (title, expr) in &queries {
        let project = project_metrics(expr);
        for metric in &project {
            assert!(
                metrics::names().any(|m| m == *metric),
                "panel {title:?} queries {metric}, which filter-ctl does not export: {expr}"
            );
        }
        assert!(
            !project.is_empty() || SCRAPE_METRICS.iter().any(|m| names(expr, m)),
            "panel {title:?} queries none of filter-ctl's metrics: {expr}"
        );
    }
    // The variables query the contract's metrics too.
    for metric in project_metrics(&dashboard["templating"].to_string()) {
        assert!(
            metrics::names().any(|m| m == metric),
            "a dashboard variable names {metric}, which filter-ctl does not export"
        );
    }
}

/// Grafana's variables replaced by values Prometheus accepts.
fn as_promql(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$interface", ".*")
}

#[test]
fn promtool_parses_every_dashboard_query() {
    let Some(promtool) = promtool() else { return };
    // Each query as a recording rule: `check rules` parses its PromQL.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    let queries = queries(&dashboard());
    for (i, (_, expr)) in queries.iter().enumerate() {
        let quoted = serde_json::to_string(&as_promql(expr)).unwrap();
        writeln!(
            rules,
            "      - record: dashboard:query_{i}\n        expr: {quoted}"
        )
        .unwrap();
    }
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard_queries.yml");
    fs::write(&path, rules).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    let output = run_promtool(&promtool, &["check", "rules", path.to_str().unwrap()]);
    assert!(
        output.contains(&format!("SUCCESS: {} rules found", queries.len())),
        "{output}"
    );
}

#[test]
fn the_metric_scanner_finds_names_and_only_names() {
    let found = project_metrics(
        r#"sum by (rule) (rate(xdp_filter_rule_packets_total{verdict="passed"}[5m])) / xdp_filtr_typo"#,
    );
    assert_eq!(
        found.into_iter().collect::<Vec<_>>(),
        ["xdp_filter_rule_packets_total", "xdp_filtr_typo"]
    );
    assert!(names(r#"up{job="filter-ctl"} == 0"#, "up"));
    assert!(!names("group_up(x)", "up"));
}

/// The shipped unit's path for the binary.
const UNIT_BINARY: &str = "/usr/sbin/filter-ctl";

/// The values of `key=` lines of the unit, in order.
fn unit_values<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines()
        .filter_map(|line| line.trim().strip_prefix(key)?.strip_prefix('='))
        .map(str::trim)
        .collect()
}

#[test]
fn the_unit_runs_the_policy_reloads_on_hup_and_restarts_on_failure() {
    let unit = read(&deploy("systemd/filter-ctl.service"));
    let expect = [
        (
            "ExecStart",
            "/usr/sbin/filter-ctl run --policy /etc/filter-ctl/policy.toml",
        ),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("Restart", "on-failure"),
        ("StateDirectory", "filter-ctl"),
        ("StateDirectoryMode", "0700"),
        ("Before", "network-pre.target"),
        ("Wants", "network-pre.target"),
        ("WantedBy", "multi-user.target"),
    ];
    for (key, value) in expect {
        assert_eq!(
            unit_values(&unit, key),
            [value],
            "filter-ctl.service: {key}= should be exactly `{value}`"
        );
    }
    // Loading XDP needs these and nothing broader (CAP_SYS_ADMIN is the new root).
    let caps = unit_values(&unit, "CapabilityBoundingSet");
    assert_eq!(caps, ["CAP_BPF CAP_NET_ADMIN CAP_PERFMON"]);
    // A mount namespace of its own would put the pins on a bpffs that `run`
    // cannot tell from a private one: it would refuse to start.
    for key in [
        "ProtectSystem",
        "ProtectHome",
        "PrivateTmp",
        "PrivateDevices",
        "PrivateMounts",
        "ReadWritePaths",
        "ProtectKernelTunables",
        "ProtectControlGroups",
    ] {
        assert!(
            unit_values(&unit, key).is_empty(),
            "filter-ctl.service sets {key}=, which gives it a mount namespace of its own"
        );
    }
}

#[test]
fn systemd_analyze_verifies_the_unit() {
    let Some(systemd_analyze) = tool("systemd-analyze", "systemd") else {
        return;
    };
    // `verify` checks that the binaries exist: the same unit, with the
    // filter-ctl of this build in place of /usr/sbin/filter-ctl.
    let binary = filter_tests::ctl::binary();
    let unit = read(&deploy("systemd/filter-ctl.service"));
    assert!(
        unit.contains(UNIT_BINARY),
        "the unit does not run {UNIT_BINARY}"
    );
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("systemd");
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    let path = dir.join("filter-ctl.service");
    let local = unit.replace(UNIT_BINARY, binary.to_str().expect("a UTF-8 binary path"));
    fs::write(&path, local).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    let output = Command::new(&systemd_analyze)
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", systemd_analyze.display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    print!("{text}");
    assert!(
        output.status.success(),
        "systemd-analyze verify failed ({}):\n{text}",
        output.status
    );
    // It only warns about values it ignores (a misspelt Restart=, an
    // unknown key): any line about the unit is a failure.
    let about_unit: Vec<&str> = text
        .lines()
        .filter(|line| line.contains("filter-ctl.service"))
        .collect();
    assert!(
        about_unit.is_empty(),
        "systemd-analyze verify complained about the unit:\n{}",
        about_unit.join("\n")
    );
}
