//! filter-ctl: load, attach and operate the XDP packet filter. This file
//! parses the command line and dispatches; each command lives in `cmd/`,
//! text and JSON output in `render.rs`.

mod cmd;
mod render;

use std::{fmt::Write as _, path::PathBuf, time::Duration};

use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};
use filter_ctl::{
    error::{ExitCode, excerpt, exit_code},
    maps::pins::DEFAULT_PIN_DIR,
    spec::duration::parse_duration,
    state::DEFAULT_STATE_DIR,
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

    /// Directory of the persistent state: applied policies and their
    /// history, live edits and automatic blocks, the audit log. Created
    /// root-only (0700) when missing.
    #[arg(long, global = true, env = "FILTER_CTL_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,

    /// How long an edit waits for another filter-ctl's lock before it gives
    /// up (exit code 6). Format: 10s, 1m.
    #[arg(long, global = true, env = "FILTER_CTL_LOCK_TIMEOUT", value_parser = parse_duration,
          default_value = "10s")]
    lock_timeout: Duration,

    /// How log lines look: `text` for people, `json` (one object a line:
    /// timestamp, level, fields) for a SIEM. `RUST_LOG` sets the level.
    #[arg(long, global = true, env = "FILTER_CTL_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

/// The log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Structured logs on stderr through `tracing` (the `log` records of the
/// library and of aya are forwarded to it), at `RUST_LOG`'s level (default
/// info).
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Load the filter, attach it to interfaces, pin it, and run the controller
    /// (event log, expiry sweeps, re-attaching interfaces that come back)
    /// until SIGINT/SIGTERM. The filter keeps enforcing after the controller
    /// exits; `detach` removes it.
    ///
    /// Example: filter-ctl run --iface eth1 --iface eth2 --mode auto
    Run(cmd::run::Args),
    /// Drop all traffic from addresses or prefixes. An entry already listed
    /// keeps the later expiry (permanent beats any TTL) unless --replace.
    ///
    /// Example: filter-ctl block 198.18.0.7 `2001:db8:bad::/48` --ttl 10m
    Block(cmd::lists::AddArgs),
    /// Remove addresses or prefixes from the blocklist, and lift automatic
    /// blocks of the given addresses.
    ///
    /// Example: filter-ctl unblock 198.18.0.7
    Unblock(cmd::lists::RemoveArgs),
    /// Always pass traffic from addresses or prefixes (allow beats block and limits).
    ///
    /// Example: filter-ctl allow 198.18.10.0/24
    Allow(cmd::lists::AddArgs),
    /// Remove addresses or prefixes from the allowlist.
    ///
    /// Example: filter-ctl disallow 198.18.10.0/24
    Disallow(cmd::lists::RemoveArgs),
    /// Show the allowlist, the blocklist and the automatic blocks.
    List(cmd::JsonArg),
    /// Show packet and byte counters per decision reason, summed over CPUs.
    Stats(cmd::JsonArg),
    /// Show the pin directory, layout version, attached interfaces (mode,
    /// program id, missing ones), the controller's pid and any interrupted
    /// list change.
    ///
    /// Example: filter-ctl status --json
    Status(cmd::JsonArg),
    /// A live view, refreshed each second: packets per second per reason and
    /// per rule, and the sources dropped most in the current interval
    /// (sampled by the running controller). `q` quits.
    ///
    /// Example: filter-ctl top
    Top,
    /// Detach from one interface, or (without --iface) from all of them and
    /// remove every pin of this filter.
    Detach(cmd::detach::Args),
    /// Per-source rate limits: the default limit and per-port rules.
    #[command(subcommand)]
    Limit(cmd::limit::Command),
    /// The policy file: one TOML file describing the whole filter
    /// (interfaces, rate limits, allow and block lists and list files).
    ///
    /// Example: filter-ctl policy check /etc/filter-ctl/policy.toml
    #[command(subcommand)]
    Policy(cmd::policy::Command),
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

/// `--help`'s closing text: the exit codes.
fn exit_codes_help() -> String {
    let mut text = String::from("Exit codes:\n");
    for (code, meaning) in ExitCode::TABLE {
        let _ = writeln!(text, "  {:<3} {meaning}", code.code());
    }
    text
}

/// The command line definition, with the exit codes appended to the help.
fn command() -> clap::Command {
    Cli::command().after_help(exit_codes_help())
}

fn main() {
    refuse_oversized_arguments();
    let matches = command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    init_logging(cli.log_format);
    if let Err(err) = dispatch(cli) {
        eprintln!("filter-ctl: error: {err:#}");
        std::process::exit(i32::from(exit_code(&err).code()));
    }
}

/// Longest command-line argument accepted, in bytes: longer is never an
/// address, a duration or a path, and would be echoed whole in errors.
const MAX_ARGUMENT: usize = 4096;

/// Refuses (exit code 2) an argument over [`MAX_ARGUMENT`] bytes, quoting
/// only its start, before clap would echo it.
fn refuse_oversized_arguments() {
    for (position, arg) in std::env::args_os().enumerate().skip(1) {
        if arg.len() > MAX_ARGUMENT {
            eprintln!(
                "filter-ctl: error: argument {position} is {} bytes long (at most {MAX_ARGUMENT}): '{}'",
                arg.len(),
                excerpt(&arg.to_string_lossy(), 80)
            );
            std::process::exit(i32::from(ExitCode::BadInput.code()));
        }
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<()> {
    let ctx = cmd::Context {
        pins: filter_ctl::maps::pins::PinDir::new(&cli.pin_dir),
        state_dir: cli.state_dir,
        lock_timeout: cli.lock_timeout,
    };
    match cli.command {
        Command::Run(args) => cmd::run::run(&ctx, &args),
        Command::Block(args) => cmd::lists::add(&ctx, cmd::lists::Which::Block, &args),
        Command::Allow(args) => cmd::lists::add(&ctx, cmd::lists::Which::Allow, &args),
        Command::Unblock(args) => cmd::lists::remove(&ctx, cmd::lists::Which::Block, &args),
        Command::Disallow(args) => cmd::lists::remove(&ctx, cmd::lists::Which::Allow, &args),
        Command::List(args) => cmd::lists::list(&ctx, args.json),
        Command::Stats(args) => cmd::stats::run(&ctx, args.json),
        Command::Status(args) => cmd::status::run(&ctx, args.json),
        Command::Top => cmd::top::run(&ctx),
        Command::Detach(args) => cmd::detach::run(&ctx, &args),
        Command::Limit(command) => cmd::limit::run(&ctx, command),
        Command::Policy(command) => cmd::policy::run(&ctx, command),
        Command::Completions { shell } => {
            cmd::docs::completions(shell, &mut command());
            Ok(())
        }
        Command::Man => cmd::docs::man(command()),
    }
}
