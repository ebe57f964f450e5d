//! filter-ctl: load, attach and operate the XDP packet filter.

mod run;

use std::{
    io::{self, Write as _},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, bail};
use clap::{Args, CommandFactory as _, Parser, Subcommand};
use filter_ctl::{
    cidr::Cidr,
    duration::{format_duration, parse_duration},
    filter::{Filter, ListKind},
    limits::{self, AutoblockSpec, LimitSpec, Target},
    loader::{self, Capacities, Mode},
    pins::{DEFAULT_PIN_DIR, PinDir},
};

/// Operate the XDP packet filter: strict parsing, allow/block lists, rate
/// limits and automatic blocks, enforced in the kernel on the interfaces you
/// attach it to. Enforcement is pinned in bpffs and survives this program.
#[derive(Parser, Debug)]
#[command(name = "filter-ctl", version, propagate_version = true)]
struct Cli {
    /// bpffs directory holding this filter's pinned maps and links.
    /// Use a different one per independent filter instance.
    #[arg(long, global = true, env = "FILTER_CTL_PIN_DIR", default_value = DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Load the filter, attach it to interfaces, pin it, and run the controller
    /// (event log, expiry sweeps) until SIGINT/SIGTERM. The filter keeps
    /// enforcing after the controller exits; `detach` removes it.
    ///
    /// Example: filter-ctl run --iface eth1 --iface eth2 --mode auto
    Run(RunArgs),
    /// Drop all traffic from addresses or prefixes.
    ///
    /// Example: filter-ctl block 198.18.0.7 2001:db8:bad::/48 --ttl 10m
    Block(EditArgs),
    /// Remove addresses or prefixes from the blocklist, and lift automatic
    /// blocks of the given addresses.
    ///
    /// Example: filter-ctl unblock 198.18.0.7
    Unblock(RemoveArgs),
    /// Always pass traffic from addresses or prefixes (allow beats block and limits).
    ///
    /// Example: filter-ctl allow 198.18.10.0/24
    Allow(EditArgs),
    /// Remove addresses or prefixes from the allowlist.
    ///
    /// Example: filter-ctl disallow 198.18.10.0/24
    Disallow(RemoveArgs),
    /// Show the allowlist, the blocklist and the automatic blocks.
    List(JsonArg),
    /// Show packet and byte counters per decision reason, summed over CPUs.
    Stats(JsonArg),
    /// Detach from one interface, or (without --iface) from all of them and
    /// remove every pin of this filter.
    Detach(DetachArgs),
    /// Per-source rate limits: the default limit and per-port rules.
    #[command(subcommand)]
    Limit(LimitCommand),
    /// Print a shell completion script.
    ///
    /// Example: filter-ctl completions bash > /etc/bash_completion.d/filter-ctl
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff).
    ///
    /// Example: filter-ctl man | man -l -
    Man,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Interface to attach to (repeat for several).
    #[arg(long, required = true)]
    iface: Vec<String>,
    /// Attach mode: auto tries native (driver) mode, then generic (skb) mode.
    #[arg(long, value_enum, default_value_t = Mode::Auto)]
    mode: Mode,
    /// Entries per allow/block list and address family (fixed when the maps are first created).
    #[arg(long, default_value_t = Capacities::default().list, value_parser = clap::value_parser!(u32).range(1..))]
    list_capacity: u32,
    /// Rate-limit tracking table size in (rule, source) pairs; least recently used are evicted.
    #[arg(long, default_value_t = Capacities::default().buckets, value_parser = clap::value_parser!(u32).range(1..))]
    bucket_capacity: u32,
}

#[derive(Args, Debug)]
struct EditArgs {
    /// Addresses or CIDR prefixes. Format: 198.18.0.1, 198.18.0.0/15, 2001:db8::/32.
    #[arg(value_parser = parse_cidr, required_unless_present = "file")]
    addrs: Vec<Cidr>,
    /// Expire the entries after this long. Format: 30s, 10m, 1h30m, 2d.
    #[arg(long, value_parser = parse_duration)]
    ttl: Option<Duration>,
    /// Also read entries from a list file: one address or CIDR per line, `#` and
    /// `;` start comments, blank lines are ignored (the format ipset and nftables take).
    #[arg(long)]
    file: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct RemoveArgs {
    /// Addresses or CIDR prefixes, exactly as added.
    #[arg(value_parser = parse_cidr, required = true)]
    addrs: Vec<Cidr>,
}

#[derive(Args, Debug)]
struct JsonArg {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct DetachArgs {
    /// Only detach from this interface (keeps the maps and other attachments).
    #[arg(long)]
    iface: Option<String>,
}

#[derive(Subcommand, Debug)]
enum LimitCommand {
    /// Create or change a rule; takes effect at once, no reattach.
    ///
    /// Examples:
    ///
    ///   filter-ctl limit set default --rate 1000 --burst 2000
    ///
    ///   filter-ctl limit set tcp/25 --rate 10 --burst 20 --autoblock-after 100 --window 10s --block-for 10m
    ///
    ///   filter-ctl limit set udp/5000-5100 --drop
    ///
    ///   filter-ctl limit set tcp/22 --only-from 198.18.0.0/24
    Set(LimitSetArgs),
    /// Remove a rule. Format: default, tcp/PORT, udp/FIRST-LAST.
    Remove {
        #[arg(value_parser = parse_target)]
        target: Target,
    },
    /// Show the rules with their counters.
    List(JsonArg),
    /// Choose the rate limiter's clock. `precise` (the default) reads
    /// `bpf_ktime_get_ns` for every rate-limited packet; `coarse` reads the
    /// time of the last timer tick, which costs less (about 15 ns a
    /// packet on the benchmark machine) but lets a source send up to one tick
    /// (1-4 ms) worth of packets above its burst; the average rate holds.
    ///
    /// Example: filter-ctl limit clock coarse
    Clock {
        #[arg(value_enum)]
        clock: RateClock,
    },
    /// Set the prefix lengths that sources are grouped by for rate limits
    /// (defaults /32 for IPv4 and /64 for IPv6).
    Aggregate {
        #[arg(long)]
        ipv4_prefix: Option<u32>,
        #[arg(long)]
        ipv6_prefix: Option<u32>,
    },
}

/// The rate limiter's clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum RateClock {
    Precise,
    Coarse,
}

#[derive(Args, Debug)]
struct LimitSetArgs {
    /// `default` (every source, every packet without a port rule), or
    /// PROTO/PORT[-PORT] with PROTO tcp or udp. Example: tcp/25, udp/1000-2000.
    #[arg(value_parser = parse_target)]
    target: Target,
    /// Packets per second allowed per source.
    #[arg(long)]
    rate: Option<u64>,
    /// Packets a source may send back to back (default: one second's worth).
    #[arg(long)]
    burst: Option<u64>,
    /// Bytes per second allowed per source, on top of --rate.
    #[arg(long)]
    bytes: Option<u64>,
    /// Close the port to everyone.
    #[arg(long, conflicts_with_all = ["rate", "burst", "bytes", "only_from"])]
    drop: bool,
    /// Only these sources may use the port. Format: CIDR list.
    #[arg(long, value_parser = parse_cidr, num_args = 1..)]
    only_from: Vec<Cidr>,
    /// Automatically block a source after this many over-limit packets within --window.
    #[arg(long)]
    autoblock_after: Option<u32>,
    /// Window for --autoblock-after. Format: 10s, 1m.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    window: Duration,
    /// How long an automatic block lasts. Format: 10m, 1h.
    #[arg(long, value_parser = parse_duration, default_value = "10m")]
    block_for: Duration,
}

fn parse_cidr(text: &str) -> Result<Cidr, String> {
    text.parse()
        .map_err(|e: filter_ctl::cidr::CidrError| e.to_string())
}

fn parse_target(text: &str) -> Result<Target, String> {
    text.parse().map_err(|e: limits::TargetError| e.to_string())
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_target(false)
        .init();
    let cli = Cli::parse();
    if let Err(err) = dispatch(cli) {
        eprintln!("filter-ctl: error: {err:#}");
        std::process::exit(1);
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<()> {
    let pins = PinDir::new(&cli.pin_dir);
    match cli.command {
        Command::Run(args) => {
            let caps = Capacities {
                list: args.list_capacity,
                buckets: args.bucket_capacity,
            };
            run::run(&pins, &args.iface, args.mode, &caps)
        }
        Command::Block(args) => add(&pins, ListKind::Block, &args),
        Command::Allow(args) => add(&pins, ListKind::Allow, &args),
        Command::Unblock(args) => unblock(&pins, &args.addrs),
        Command::Disallow(args) => {
            let filter = Filter::open_for_edit(&pins)?;
            filter.list_remove(ListKind::Allow, &args.addrs)?;
            println!("removed {} from the allowlist", args.addrs.len());
            Ok(())
        }
        Command::List(args) => list(&pins, args.json),
        Command::Stats(args) => stats(&pins, args.json),
        Command::Detach(args) => detach(&pins, args.iface.as_deref()),
        Command::Limit(command) => limit(&pins, command),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "filter-ctl", &mut io::stdout());
            Ok(())
        }
        Command::Man => clap_mangen::Man::new(Cli::command())
            .render(&mut io::stdout())
            .context("writing the manual page"),
    }
}

/// Reads a list file: one address or CIDR per line, `#`/`;` comments.
/// Any bad line fails the whole file, naming the line.
fn read_list_file(path: &Path) -> anyhow::Result<Vec<Cidr>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading list file {}", path.display()))?;
    let mut out = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let content = line.split(['#', ';']).next().unwrap_or("").trim();
        if content.is_empty() {
            continue;
        }
        let cidr = content.parse().with_context(|| {
            format!(
                "{}:{}: bad entry; nothing from the file was applied",
                path.display(),
                number + 1
            )
        })?;
        out.push(cidr);
    }
    Ok(out)
}

fn add(pins: &PinDir, kind: ListKind, args: &EditArgs) -> anyhow::Result<()> {
    let mut cidrs = args.addrs.clone();
    if let Some(file) = &args.file {
        cidrs.extend(read_list_file(file)?);
    }
    if cidrs.is_empty() {
        bail!("nothing to add: no addresses given and the file has no entries");
    }
    let filter = Filter::open_for_edit(pins)?;
    filter.list_insert(kind, &cidrs, args.ttl)?;
    let ttl = args
        .ttl
        .map(|t| format!(" for {}", format_duration(t)))
        .unwrap_or_default();
    if cidrs.len() == 1 {
        println!("added {} to the {}{ttl}", cidrs[0], kind.name());
    } else {
        println!("added {} entries to the {}{ttl}", cidrs.len(), kind.name());
    }
    Ok(())
}

fn unblock(pins: &PinDir, cidrs: &[Cidr]) -> anyhow::Result<()> {
    let filter = Filter::open_for_edit(pins)?;
    for removed in filter.unblock(cidrs)? {
        println!("unblocked {removed}");
    }
    Ok(())
}

fn list(pins: &PinDir, json: bool) -> anyhow::Result<()> {
    let filter = Filter::open(pins)?;
    let allow = filter.list_entries(ListKind::Allow)?;
    let block = filter.list_entries(ListKind::Block)?;
    let auto = filter.autoblocks()?;
    let mut out = io::stdout().lock();
    if json {
        let value =
            serde_json::json!({ "allowlist": allow, "blocklist": block, "autoblock": auto });
        writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
        return Ok(());
    }
    for (title, entries) in [("allowlist", &allow), ("blocklist", &block)] {
        writeln!(out, "{title} ({}):", entries.len())?;
        for e in entries {
            match e.expires_in_secs {
                Some(secs) => writeln!(
                    out,
                    "  {:<43} expires in {}",
                    e.cidr,
                    format_duration(Duration::from_secs(secs))
                )?,
                None => writeln!(out, "  {}", e.cidr)?,
            }
        }
    }
    writeln!(out, "autoblock ({}):", auto.len())?;
    for a in &auto {
        writeln!(
            out,
            "  {:<43} rule {:<14} {} over limit, expires in {}",
            a.source,
            a.rule,
            a.over_limit,
            format_duration(Duration::from_secs(a.expires_in_secs))
        )?;
    }
    Ok(())
}

fn stats(pins: &PinDir, json: bool) -> anyhow::Result<()> {
    let filter = Filter::open(pins)?;
    let stats = filter.stats()?;
    let mut out = io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string(&stats)?)?;
        return Ok(());
    }
    writeln!(out, "{:<12} {:>14} {:>16}", "reason", "packets", "bytes")?;
    for (name, c) in &stats.reasons {
        writeln!(out, "{name:<12} {:>14} {:>16}", c.packets, c.bytes)?;
    }
    writeln!(out)?;
    for (name, value) in &stats.tables {
        writeln!(out, "{name:<18} {value:>14}")?;
    }
    Ok(())
}

fn detach(pins: &PinDir, iface: Option<&str>) -> anyhow::Result<()> {
    if !pins.root().exists() {
        bail!(
            "nothing to detach: {} does not exist",
            pins.root().display()
        );
    }
    if let Some(iface) = iface {
        loader::detach(pins, iface)?;
        println!("detached from {iface}");
        return Ok(());
    }
    let ifaces = loader::detach_all(pins)?;
    if ifaces.is_empty() {
        println!(
            "no interface was attached; removed the pins under {}",
            pins.root().display()
        );
    } else {
        println!(
            "detached from {} and removed the pins under {}",
            ifaces.join(", "),
            pins.root().display()
        );
    }
    Ok(())
}

fn limit(pins: &PinDir, command: LimitCommand) -> anyhow::Result<()> {
    match command {
        LimitCommand::Set(args) => {
            let spec = LimitSpec {
                rate: args.rate,
                burst: args.burst,
                bytes: args.bytes,
                drop: args.drop,
                only_from: args.only_from,
                autoblock: args.autoblock_after.map(|after| AutoblockSpec {
                    after,
                    window: args.window,
                    block_for: args.block_for,
                }),
            };
            // Validate before touching anything.
            spec.to_rule(&args.target)?;
            let filter = Filter::open_for_edit(pins)?;
            limits::set(&filter, &args.target, &spec)?;
            println!("set rule {}", args.target);
        }
        LimitCommand::Remove { target } => {
            let filter = Filter::open_for_edit(pins)?;
            limits::remove(&filter, &target)?;
            println!("removed rule {target}");
        }
        LimitCommand::List(args) => {
            let filter = Filter::open(pins)?;
            let rules = limits::list(&filter)?;
            let config = filter.config()?;
            let clock = if config.rate_clock == filter_common::CLOCK_COARSE {
                "coarse"
            } else {
                "precise"
            };
            if args.json {
                let value = serde_json::json!({
                    "rules": rules,
                    "clock": clock,
                    "ipv4_prefix": config.ipv4_source_prefix,
                    "ipv6_prefix": config.ipv6_source_prefix,
                });
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                println!(
                    "sources grouped by /{} (IPv4) and /{} (IPv6); {clock} clock",
                    config.ipv4_source_prefix, config.ipv6_source_prefix
                );
                println!(
                    "{:<16} {:<6} {:>10} {:>10} {:>12} {:>12} {:>12}  extra",
                    "target", "action", "rate", "burst", "bytes/s", "passed", "dropped"
                );
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
                    println!(
                        "{:<16} {:<6} {:>10} {:>10} {:>12} {:>12} {:>12}  {}",
                        r.target,
                        r.action,
                        opt(r.rate),
                        opt(r.burst),
                        opt(r.bytes),
                        r.passed_packets,
                        r.dropped_packets,
                        extra.join("; ")
                    );
                }
            }
        }
        LimitCommand::Clock { clock } => {
            let filter = Filter::open_for_edit(pins)?;
            let value = match clock {
                RateClock::Precise => filter_common::CLOCK_PRECISE,
                RateClock::Coarse => filter_common::CLOCK_COARSE,
            };
            limits::set_clock(&filter, value)?;
            println!(
                "the rate limiter now uses the {} clock",
                format!("{clock:?}").to_lowercase()
            );
        }
        LimitCommand::Aggregate {
            ipv4_prefix,
            ipv6_prefix,
        } => {
            let filter = Filter::open_for_edit(pins)?;
            let config = limits::set_aggregation(&filter, ipv4_prefix, ipv6_prefix)?;
            println!(
                "sources are grouped by /{} (IPv4) and /{} (IPv6)",
                config.ipv4_source_prefix, config.ipv6_source_prefix
            );
        }
    }
    Ok(())
}
