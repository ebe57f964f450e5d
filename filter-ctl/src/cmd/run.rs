//! `filter-ctl run`.

use filter_ctl::{
    control::{self, RunOptions, metrics::MetricsAddr},
    maps::loader::Mode,
    maps::sampling::{DEFAULT_CAP_PER_CPU, SampleRate, Sampling},
};

use super::Context;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Interface to attach to (repeat for several). Without it, the
    /// `interfaces` of the --policy file.
    #[arg(long)]
    iface: Vec<String>,
    /// Attach mode: auto tries native (driver) mode, then generic (skb)
    /// mode [default: the policy's `mode`, else auto].
    #[arg(long, value_enum)]
    mode: Option<Mode>,
    /// Apply this policy file at start (owned by root, writable by no one
    /// else); SIGHUP applies it again. A broken file at start is refused; on
    /// SIGHUP it leaves the running policy in place and the log says why.
    ///
    /// Example: filter-ctl run --policy /etc/filter-ctl/policy.toml
    #[arg(long)]
    policy: Option<std::path::PathBuf>,
    /// Start even if a state file is corrupt: it is moved aside (renamed
    /// `NAME.corrupt-TIME`, never deleted) and the filter starts without
    /// what it held. Without this flag `run` refuses (exit code 10).
    #[arg(long)]
    discard_corrupt_state: bool,
    /// Entries per allow/block list and address family, fixed when the maps
    /// are first created [default: 1048576]. Given for maps pinned with
    /// another capacity, `run` refuses (exit code 8).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    list_capacity: Option<u32>,
    /// Rate-limit tracking table size in (rule, source) pairs, a power of
    /// two; a new pair takes the place of the one least recently charged
    /// among the two slots it may use [default: 1048576]. Fixed like
    /// --list-capacity. Example: --bucket-capacity 131072
    #[arg(long, value_parser = parse_bucket_capacity)]
    bucket_capacity: Option<u32>,
    /// Pin into a bpffs that belongs to a private mount namespace (the pins,
    /// and the filter, end with that namespace). Refused without this flag.
    #[arg(long)]
    allow_private_bpffs: bool,
    /// Serve Prometheus metrics (`GET /metrics`) on this address, or `none`.
    /// Loopback by default: give another address only on a trusted network.
    ///
    /// Format: ADDR:PORT, [IPV6]:PORT or none. Example: --metrics-addr 127.0.0.1:9711
    #[arg(long, default_value_t = MetricsAddr::default())]
    metrics_addr: MetricsAddr,
    /// How often the controller deletes expired entries, counts the lists
    /// for the metrics (`xdp_filter_list_entries`) and checks its interfaces
    /// by index. Each sweep walks the lists: at 1,000,000 entries about a
    /// second of CPU. Format: 30s, 1m.
    #[arg(long, value_parser = parse_interval, default_value = "30s")]
    sweep_interval: std::time::Duration,
    /// Send 1 in N drops of a reason to the controller as events, for the
    /// per-source drop log (repeat for several; N = 1 every drop, 0 none).
    /// Defaults: `blocklist`, `autoblock` and `ratelimit` 1 in 1000, `port_denied` 1
    /// in 100, every `malformed` frame.
    ///
    /// Format: REASON=N. Example: --sample ratelimit=100 --sample malformed=0
    #[arg(long = "sample", value_name = "REASON=N")]
    samples: Vec<SampleRate>,
    /// At most this many drop events per CPU per second (0 = no cap).
    #[arg(long, default_value_t = DEFAULT_CAP_PER_CPU)]
    sample_cap: u32,
    /// How often the dropped sources are logged (one line per source, the
    /// heaviest first, counts scaled up by the sampling rate). Format: 10s, 1m.
    #[arg(long, value_parser = parse_interval, default_value = "10s")]
    drop_log_interval: std::time::Duration,
    /// `CrowdSec` bouncer mode: pull ban decisions from this LAPI and block
    /// them (origin `crowdsec`). Overrides the policy's `[crowdsec] url`;
    /// without a `[crowdsec]` section, give --crowdsec-key-file too.
    ///
    /// Example: --crowdsec-url `http://127.0.0.1:8080`
    #[arg(long, value_name = "URL")]
    crowdsec_url: Option<String>,
    /// The bouncer key file (`cscli bouncers add NAME -o raw`), owned by
    /// root and readable by root alone (mode 0600), else refused. Overrides
    /// the policy's `[crowdsec] api_key_file`.
    #[arg(long, value_name = "FILE")]
    crowdsec_key_file: Option<std::path::PathBuf>,
    /// Time between pulls of the decision stream [default: the policy's
    /// `[crowdsec] poll_interval`, else 10s]. Format: 1s to 1h, e.g. 10s.
    #[arg(long, value_name = "INTERVAL", value_parser = parse_poll)]
    crowdsec_poll_interval: Option<std::time::Duration>,
}

/// A `CrowdSec` poll interval: 1s to 1h.
fn parse_poll(text: &str) -> Result<std::time::Duration, String> {
    filter_ctl::spec::policy::check_crowdsec_poll(text)
}

/// A tracking table size: a power of two, at least 2.
fn parse_bucket_capacity(text: &str) -> Result<u32, String> {
    let capacity: u32 = text
        .parse()
        .map_err(|e| format!("not a number of entries: {e}"))?;
    filter_ctl::maps::buckets::check_capacity(capacity)?;
    Ok(capacity)
}

/// A sweep interval: at least one second.
fn parse_interval(text: &str) -> Result<std::time::Duration, String> {
    let interval = filter_ctl::spec::duration::parse_duration(text).map_err(|e| e.to_string())?;
    if interval < std::time::Duration::from_secs(1) {
        return Err("the sweep interval must be at least 1s".into());
    }
    Ok(interval)
}

pub fn run(ctx: &Context, args: &Args) -> anyhow::Result<()> {
    control::run(
        &ctx.pins,
        &RunOptions {
            ifaces: args.iface.clone(),
            mode: args.mode,
            list_capacity: args.list_capacity,
            bucket_capacity: args.bucket_capacity,
            allow_private_bpffs: args.allow_private_bpffs,
            metrics_addr: args.metrics_addr.0,
            sweep_interval: args.sweep_interval,
            sampling: Sampling::with(&args.samples, args.sample_cap),
            drop_log_interval: args.drop_log_interval,
            state_dir: ctx.state_dir.clone(),
            policy: args.policy.clone(),
            discard_corrupt_state: args.discard_corrupt_state,
            crowdsec: control::crowdsec::Flags {
                url: args.crowdsec_url.clone(),
                key_file: args.crowdsec_key_file.clone(),
                poll_interval: args.crowdsec_poll_interval,
            },
        },
    )
}
