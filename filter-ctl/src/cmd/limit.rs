//! `filter-ctl limit set|remove|list|clock|aggregate`.

use std::time::Duration;

use filter_ctl::{
    maps::rules,
    spec::{
        cidr::{Cidr, CidrError},
        duration::parse_duration,
        rule::{AutoblockSpec, LimitSpec, RateClock, Target, TargetError},
    },
};

use super::{Context, JsonArg};
use crate::render;

#[derive(clap::Subcommand, Debug)]
pub enum Command {
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
    Set(SetArgs),
    /// Remove a rule. Format: default, tcp/PORT, udp/FIRST-LAST.
    Remove {
        #[arg(value_parser = parse_target)]
        target: Target,
    },
    /// Show the rules with their counters.
    List(JsonArg),
    /// Choose the rate limiter's clock. `auto` (the default) reads the time
    /// of the last timer tick (`jiffies`, no helper call) for each rule whose
    /// burst covers one tick of its rate, where it limits exactly as the
    /// precise clock does, and `bpf_ktime_get_ns` for the others; `coarse`
    /// reads the tick for every rule (a rule whose burst is below one tick of
    /// its rate is then cut to its burst per tick, 1-4 ms); `precise` reads
    /// `bpf_ktime_get_ns` for every rate-limited packet (10-25 ns more a
    /// packet on the benchmark machine).
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

#[derive(clap::Args, Debug)]
pub struct SetArgs {
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
    text.parse().map_err(|e: CidrError| e.to_string())
}

fn parse_target(text: &str) -> Result<Target, String> {
    text.parse().map_err(|e: TargetError| e.to_string())
}

pub fn run(ctx: &Context, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Set(args) => {
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
            // Validated once, before anything is touched.
            let rule = spec.to_rule(&args.target)?;
            let filter = ctx.edit()?;
            rules::set(&filter, &args.target, rule, &spec)?;
            println!("set rule {}", args.target);
        }
        Command::Remove { target } => {
            let filter = ctx.edit()?;
            rules::remove(&filter, &target)?;
            println!("removed rule {target}");
        }
        Command::List(args) => {
            let filter = ctx.open()?;
            let listed = rules::list(&filter)?;
            let config = filter.config()?;
            render::rules(&listed, &config, args.json)?;
        }
        Command::Clock { clock } => {
            let filter = ctx.edit()?;
            rules::set_clock(&filter, clock.value())?;
            println!("the rate limiter now uses the {clock} clock");
        }
        Command::Aggregate {
            ipv4_prefix,
            ipv6_prefix,
        } => {
            let filter = ctx.edit()?;
            let config = rules::set_aggregation(&filter, ipv4_prefix, ipv6_prefix)?;
            println!(
                "sources are grouped by /{} (IPv4) and /{} (IPv6)",
                config.ipv4_source_prefix, config.ipv6_source_prefix
            );
        }
    }
    Ok(())
}
