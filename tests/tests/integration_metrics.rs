//! `run --metrics-addr`: the Prometheus endpoint, end to end. The real
//! `filter-ctl run` in a lab's destination namespace serves `/metrics` on
//! that namespace's loopback; a blocked and a passing source send traffic;
//! the scrape must agree with `stats --json`, pass `promtool check metrics`,
//! and a real Prometheus server must scrape it. Needs root; each test has its
//! own namespaces, pin dir, ports and temporary directory.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use filter_tests::{
    ctl::{Ctl, packets},
    metrics,
    netns::{Lab, NetNs, in_netns, skip_unless_root, udp_send, unique_id},
};
use serde_json::Value;

const UDP_PORT: u16 = 5000;
const PROMTOOL: &str = "/usr/bin/promtool";
const PROMETHEUS: &str = "/usr/bin/prometheus";

/// A loopback port free in `ns` right now.
fn free_port(ns: &NetNs) -> u16 {
    in_netns(ns, || {
        TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("binding a free loopback port")
            .port()
    })
}

/// `GET path` on `127.0.0.1:port` inside `ns`: (status line, body).
fn http_get(ns: &NetNs, port: u16, path: &str) -> std::io::Result<(String, String)> {
    in_netns(ns, || {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.set_write_timeout(Some(Duration::from_secs(2)))?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
        )?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let (head, body) = response
            .split_once("\r\n\r\n")
            .ok_or_else(|| std::io::Error::other(format!("no HTTP header end in {response:?}")))?;
        let status = head.lines().next().unwrap_or_default().to_string();
        Ok((status, body.to_string()))
    })
}

fn scrape(ns: &NetNs, port: u16) -> String {
    let (status, body) =
        http_get(ns, port, "/metrics").unwrap_or_else(|e| panic!("scraping /metrics: {e}"));
    assert!(status.contains(" 200 "), "scrape answered {status}: {body}");
    body
}

/// The value of the sample `series` (name and labels exactly as printed).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?.strip_prefix(' ')?;
        rest.trim().parse().ok()
    })
}

/// Polls `stats --json` until the blocklist counter stops moving (bounded).
fn settled_stats(ctl: &Ctl) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = ctl.stats_json();
    loop {
        thread::sleep(Duration::from_millis(200));
        let now = ctl.stats_json();
        if now == last || Instant::now() >= deadline {
            return now;
        }
        last = now;
    }
}

#[test]
fn metrics_agree_with_stats_and_pass_promtool() {
    if skip_unless_root("metrics_agree_with_stats_and_pass_promtool") {
        return;
    }
    let lab = Lab::new("mtr");
    let ctl = Ctl::new("metrics");
    let port = free_port(&lab.dst);
    let addr = format!("127.0.0.1:{port}");
    let controller = ctl.run_background_with(&lab.dst, &[&lab.dst_if], &["--metrics-addr", &addr]);
    ctl.ok(&["limit", "set", "udp/5000", "--rate", "100000"]);
    let blocked = IpAddr::V4(lab.src_v4());
    let passing = lab.add_src_v4(20);
    ctl.ok(&["block", &blocked.to_string()]);
    let dst = SocketAddr::new(lab.dst_for(blocked), UDP_PORT);
    let _receiver = filter_tests::netns::UdpReceiver::bind(&lab.dst, dst);
    assert_eq!(udp_send(&lab.src, blocked, dst, 25, Duration::ZERO), 25);
    assert_eq!(udp_send(&lab.src, passing, dst, 7, Duration::ZERO), 7);
    let stats = settled_stats(&ctl);
    let text = scrape(&lab.dst, port);

    let series = |reason: &str| {
        format!(
            "xdp_filter_packets_total{{interface=\"{}\",reason=\"{reason}\"}}",
            lab.dst_if
        )
    };
    let blocklist = sample(&text, &series("blocklist"))
        .unwrap_or_else(|| panic!("no {} in:\n{text}", series("blocklist")));
    #[expect(clippy::cast_precision_loss, reason = "test counts are small")]
    let expected = packets(&stats, "blocklist") as f64;
    assert!(
        (blocklist - expected).abs() < f64::EPSILON,
        "metrics say {blocklist} blocklist drops, stats --json {expected}"
    );
    assert!(
        expected >= 25.0,
        "the blocked source's 25 datagrams: {stats}"
    );
    // `stats --json` has the same count under the interface, and its
    // totals are the sum over interfaces.
    assert_eq!(
        stats["interfaces"][lab.dst_if.as_str()]["blocklist"]["packets"],
        stats["reasons"]["blocklist"]["packets"],
        "{stats}"
    );
    for reason in filter_common::reason::NAMES {
        let sum: u64 = stats["interfaces"]
            .as_object()
            .expect("interfaces object")
            .values()
            .map(|i| i[reason]["packets"].as_u64().expect("packets"))
            .sum();
        assert_eq!(sum, packets(&stats, reason), "{reason}: {stats}");
    }
    assert!(
        sample(&text, &series("pass")).is_some_and(|v| v >= 7.0),
        "passing source counted:\n{text}"
    );
    for reason in filter_common::reason::NAMES {
        assert!(
            sample(&text, &series(reason)).is_some(),
            "no {} in:\n{text}",
            series(reason)
        );
    }
    let missing = metrics::missing_from(&text, metrics::ALWAYS);
    assert!(
        missing.is_empty(),
        "the scrape lacks {missing:?} of the contract:\n{text}"
    );
    assert!(
        sample(
            &text,
            "xdp_filter_rule_packets_total{rule=\"udp/5000\",verdict=\"passed\"}"
        )
        .is_some_and(|v| v >= 7.0),
        "the udp/5000 rule passed the passing source's datagrams:\n{text}"
    );
    let mode = ctl.status_json()["interfaces"][0]["mode"]
        .as_str()
        .unwrap_or("unknown")
        .to_string();
    assert_eq!(
        sample(
            &text,
            &format!(
                "xdp_filter_interface_attached{{interface=\"{}\",mode=\"{mode}\"}}",
                lab.dst_if
            )
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "xdp_filter_list_capacity{family=\"ipv4\",list=\"blocklist\"}"
        ),
        Some(1_048_576.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "xdp_filter_tracking_capacity"),
        Some(1_048_576.0)
    );
    assert!(sample(&text, "xdp_filter_tracking_inserts_total").is_some_and(|v| v >= 1.0));
    assert_eq!(sample(&text, "xdp_filter_autoblocks_total"), Some(0.0));
    assert!(
        text.lines()
            .any(|l| l.starts_with("xdp_filter_build_info{") && l.ends_with(" 1")),
        "{text}"
    );
    assert!(
        !text.contains(&lab.src_v4().to_string()),
        "a source address in the metrics:\n{text}"
    );

    if Path::new(PROMTOOL).exists() {
        let mut child = Command::new(PROMTOOL)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting promtool");
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(text.as_bytes())
            .expect("feeding promtool");
        let out = child.wait_with_output().expect("running promtool");
        assert!(
            out.status.success(),
            "promtool check metrics failed:\n{}{}\n{text}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        eprintln!("skipping promtool check: {PROMTOOL} missing (run `cargo xtask setup`)");
    }
    drop(controller);
    ctl.detach_and_check(&lab.dst, &lab.dst_if);
}

#[test]
fn metrics_bind_failure_is_reported_and_changes_nothing() {
    if skip_unless_root("metrics_bind_failure_is_reported_and_changes_nothing") {
        return;
    }
    let lab = Lab::new("mtb");
    let ctl = Ctl::new("metrics-bind");
    let taken = in_netns(&lab.dst, || {
        TcpListener::bind("127.0.0.1:0").expect("binding a loopback port")
    });
    let addr = taken.local_addr().expect("local address").to_string();
    let out = ctl.run_foreground(
        &lab.dst,
        &["--iface", &lab.dst_if, "--metrics-addr", &addr],
        Duration::from_secs(20),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "run started on a taken port");
    assert!(
        stderr.contains(&addr) && stderr.contains("--metrics-addr"),
        "the error names the address and the option: {stderr}"
    );
    assert!(!lab.xdp_attached(), "nothing attached after a failed start");
    // `none` turns the endpoint off.
    let controller = ctl.run_background_with(&lab.dst, &[&lab.dst_if], &["--metrics-addr", "none"]);
    assert!(
        !controller.output().contains("metrics on"),
        "{}",
        controller.output()
    );
    drop(controller);
    ctl.detach_and_check(&lab.dst, &lab.dst_if);
}

/// A Prometheus server in a namespace, killed and its directory removed on drop.
struct Prometheus {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl Prometheus {
    fn start(ns: &NetNs, target_port: u16) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "filter-prom-{}-{}",
            std::process::id(),
            unique_id()
        ));
        std::fs::create_dir_all(dir.join("data")).expect("creating the Prometheus directory");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: xdp_filter\n    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n"
            ),
        )
        .expect("writing the Prometheus config");
        let port = free_port(ns);
        let child = Command::new("nsenter")
            .arg(format!("--net={}", ns.path().display()))
            .arg(PROMETHEUS)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("log")).expect("creating the Prometheus log"))
            .spawn()
            .expect("starting prometheus");
        Self { child, dir, port }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    /// The samples of an instant query (empty while there are none).
    fn query(&self, ns: &NetNs, query: &str) -> Vec<Value> {
        let path = format!("/api/v1/query?query={}", percent_encode(query));
        let Ok((status, body)) = http_get(ns, self.port, &path) else {
            return Vec::new();
        };
        if !status.contains(" 200 ") {
            return Vec::new();
        }
        let Ok(value) = serde_json::from_str::<Value>(&body) else {
            return Vec::new();
        };
        value["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"_-.~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The value of a Prometheus sample (`"value": [time, "N"]`).
fn value_of(sample: &Value) -> f64 {
    sample["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

#[test]
fn real_prometheus_scrapes_the_drops() {
    if skip_unless_root("real_prometheus_scrapes_the_drops") {
        return;
    }
    if !Path::new(PROMETHEUS).exists() {
        eprintln!(
            "skipping real_prometheus_scrapes_the_drops: {PROMETHEUS} missing (run `cargo xtask setup`)"
        );
        return;
    }
    let lab = Lab::new("mtp");
    let ctl = Ctl::new("metrics-prom");
    let port = free_port(&lab.dst);
    let addr = format!("127.0.0.1:{port}");
    let controller = ctl.run_background_with(&lab.dst, &[&lab.dst_if], &["--metrics-addr", &addr]);
    let blocked = IpAddr::V4(lab.src_v4());
    ctl.ok(&["block", &blocked.to_string()]);
    let prometheus = Prometheus::start(&lab.dst, port);
    let query = "xdp_filter_packets_total{reason=\"blocklist\"}";
    let dst = SocketAddr::new(lab.dst_for(blocked), UDP_PORT);

    // A bounded flood (3000 datagrams over about 3 s) while Prometheus
    // scrapes every second; the drops must show up in a query.
    let (risen, sent) = thread::scope(|scope| {
        let flood =
            scope.spawn(|| udp_send(&lab.src, blocked, dst, 3000, Duration::from_millis(1)));
        let deadline = Instant::now() + Duration::from_secs(30);
        let risen = loop {
            let samples = prometheus.query(&lab.dst, query);
            if let Some(s) = samples.iter().find(|s| value_of(s) > 0.0) {
                break s.clone();
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus never saw a blocklist drop within 30 s; its log:\n{}",
                prometheus.log()
            );
            thread::sleep(Duration::from_millis(250));
        };
        (risen, flood.join().expect("flood thread"))
    });
    assert_eq!(risen["metric"]["interface"], lab.dst_if.as_str(), "{risen}");
    assert_eq!(risen["metric"]["reason"], "blocklist", "{risen}");
    assert_eq!(risen["metric"]["job"], "xdp_filter", "{risen}");
    assert_eq!(sent, 3000);

    // After the flood, Prometheus converges on exactly what stats says.
    #[expect(clippy::cast_precision_loss, reason = "test counts are small")]
    let expected = packets(&settled_stats(&ctl), "blocklist") as f64;
    assert!(expected >= 3000.0, "stats saw the flood: {expected}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let samples = prometheus.query(&lab.dst, query);
        // One series per interface: ours, and `other` (ifindex 64 and up).
        let seen = samples
            .iter()
            .find(|s| s["metric"]["interface"] == lab.dst_if.as_str())
            .map_or(f64::NAN, value_of);
        if (seen - expected).abs() < f64::EPSILON {
            let total: f64 = samples.iter().map(value_of).sum();
            assert!(
                (total - expected).abs() < f64::EPSILON,
                "other interfaces counted drops: {samples:?}"
            );
            assert!(samples.len() <= 2, "{samples:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus shows {seen}, stats --json {expected}, 20 s after the flood"
        );
        thread::sleep(Duration::from_millis(250));
    }
    drop(prometheus);
    drop(controller);
    ctl.detach_and_check(&lab.dst, &lab.dst_if);
}

/// `xdp_filter_list_entries` follows the lists, as counted by the
/// controller's sweep (never by a scrape).
#[test]
fn list_entries_follow_the_lists_after_a_sweep() {
    if skip_unless_root("list_entries_follow_the_lists_after_a_sweep") {
        return;
    }
    let lab = Lab::new("mle");
    let ctl = Ctl::new("listentries");
    let port = free_port(&lab.dst);
    let addr = format!("127.0.0.1:{port}");
    let mut controller = ctl.run_background_with(
        &lab.dst,
        &[&lab.dst_if],
        &["--metrics-addr", &addr, "--sweep-interval", "1s"],
    );
    ctl.ok(&[
        "block",
        "198.18.200.1",
        "198.18.200.2",
        "198.18.201.0/24",
        "2001:db8:200::/48",
    ]);
    ctl.ok(&["allow", "198.18.202.1"]);
    ctl.ok(&["block", "198.18.200.9", "--ttl", "1s"]);
    // Within a few sweeps: 3 IPv4 blocks (the 1 s one expired and was swept), 1 IPv6, 1 allow.
    let series = |list: &str, family: &str| {
        format!("xdp_filter_list_entries{{family=\"{family}\",list=\"{list}\"}}")
    };
    let wanted = [
        (series("blocklist", "ipv4"), 3.0),
        (series("blocklist", "ipv6"), 1.0),
        (series("allowlist", "ipv4"), 1.0),
        (series("allowlist", "ipv6"), 0.0),
    ];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = scrape(&lab.dst, port);
        if wanted.iter().all(|(s, v)| sample(&text, s) == Some(*v)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "list entries did not reach {wanted:?} within 10 s:\n{text}"
        );
        thread::sleep(Duration::from_millis(200));
    }
    ctl.ok(&["unblock", "198.18.200.1"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while sample(&scrape(&lab.dst, port), &series("blocklist", "ipv4")) != Some(2.0) {
        assert!(
            Instant::now() < deadline,
            "the unblock was not counted within 10 s"
        );
        thread::sleep(Duration::from_millis(200));
    }
    controller.terminate();
    ctl.detach_and_check(&lab.dst, &lab.dst_if);
}

/// Under `run --policy`, every family of the contract is in a real scrape
/// (the alerts and the dashboard are checked against the same list), and
/// the info metric names the active policy by the same hash as `policy
/// show`.
#[test]
fn a_policy_run_exports_the_whole_contract() {
    if skip_unless_root("a_policy_run_exports_the_whole_contract") {
        return;
    }
    let lab = Lab::new("mpo");
    let ctl = Ctl::new("metricspolicy");
    let port = free_port(&lab.dst);
    let addr = format!("127.0.0.1:{port}");
    let policy = ctl.write_policy(
        "policy.toml",
        &format!(
            "interfaces = [\"{}\"]\n[block]\nentries = [\"198.18.210.0/24\"]\n\
             [[limits.port]]\nport = \"udp/{UDP_PORT}\"\nrate = 10\n",
            lab.dst_if
        ),
    );
    let ifaces = [lab.dst_if.as_str()];
    let mut controller =
        ctl.run_policy_background_with(&lab.dst, &policy, &ifaces, &["--metrics-addr", &addr]);
    let shown = ctl.ok(&["policy", "show", "--json"]);
    let shown: Value = serde_json::from_str(&shown).expect("policy show --json is JSON");
    let sha = shown["sha256"]
        .as_str()
        .unwrap_or_else(|| panic!("no sha256 in {shown}"))
        .to_string();

    let text = scrape(&lab.dst, port);
    let all: Vec<(&str, &str)> = metrics::ALWAYS
        .iter()
        .chain(metrics::WITH_POLICY)
        .copied()
        .collect();
    let missing = metrics::missing_from(&text, &all);
    assert!(
        missing.is_empty(),
        "the scrape lacks {missing:?} of the contract:\n{text}"
    );
    assert_eq!(
        sample(
            &text,
            &format!("xdp_filter_policy_info{{sha256=\"{sha}\",shadow=\"false\"}}")
        ),
        Some(1.0),
        "{text}"
    );
    assert!(
        sample(&text, "xdp_filter_policy_applied_timestamp_seconds").is_some_and(|t| t > 1.0e9),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "xdp_filter_policy_confirmation_deadline_timestamp_seconds"
        ),
        Some(0.0),
        "no confirmation waits after a plain run --policy:\n{text}"
    );
    assert!(
        sample(
            &text,
            "xdp_filter_rule_packets_total{rule=\"udp/5000\",verdict=\"passed\"}"
        )
        .is_some(),
        "the policy's port rule is labelled by its name:\n{text}"
    );
    controller.terminate();
    ctl.detach_and_check(&lab.dst, &lab.dst_if);
}
