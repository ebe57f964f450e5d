//! `filter-bench`: the benchmark suite of the XDP filter (run it with
//! `cargo xtask bench`, as root).
//!
//! 1. per-packet cost through `BPF_PROG_TEST_RUN`, against the bare floor and
//!    Debian's xdp-filter, with program sizes;
//! 2. cost against block-list and tracking-table size;
//! 3. flood throughput through a veth into a namespace, against iptables,
//!    nftables, xdp-filter and a bare `XDP_DROP`, and for the spoofed flood
//!    against the per-source limiters (nftables meter, iptables hashlimit);
//! 4. control plane: loading a large list, edit-to-drop latency, map memory.
//!
//! Every measurement is repeated in interleaved rounds and reported as
//! median (min–max). Every verdict is checked: a wrong one fails the run.
//! Timings are reported, never asserted.
//!
//! Usage: `filter-bench [--quick] [--rounds N] [--output FILE] [--filter-ctl PATH]`.
//! Without `--output` the report goes to standard output. The charts (SVG)
//! go to `docs/bench/` beside the `--output` file, which links them.

mod charts;
mod common;
mod control;
mod crowdsec;
mod frames;
mod profile;
mod prog;
mod report;
mod stats_cost;
mod throughput;

use std::{path::PathBuf, process::ExitCode, time::Instant};

use anyhow::{Context as _, Result, bail};

use crate::{
    common::{Env, sweep_stale},
    report::{Context, Section, render},
};

struct Options {
    quick: bool,
    rounds: Option<usize>,
    output: Option<PathBuf>,
    filter_ctl: Option<PathBuf>,
    parts: Vec<u8>,
}

const USAGE: &str = "usage: filter-bench [--quick] [--rounds N] [--part 1|2|3|4]... [--output FILE] [--filter-ctl PATH]";

fn parse_args() -> Result<Options> {
    let mut options = Options {
        quick: false,
        rounds: None,
        output: None,
        filter_ctl: None,
        parts: Vec::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .with_context(|| format!("{name} needs a value\n{USAGE}"))
        };
        match arg.as_str() {
            "--quick" => options.quick = true,
            "--rounds" => {
                let n: usize = value("--rounds")?.parse().context("--rounds N")?;
                if n == 0 {
                    bail!("--rounds must be at least 1");
                }
                options.rounds = Some(n);
            }
            "--part" => {
                let part: u8 = value("--part")?.parse().context("--part 1..4")?;
                if !(1..=4).contains(&part) {
                    bail!("--part takes 1, 2, 3 or 4");
                }
                options.parts.push(part);
            }
            "--output" => options.output = Some(value("--output")?.into()),
            "--filter-ctl" => options.filter_ctl = Some(value("--filter-ctl")?.into()),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}\n{USAGE}"),
        }
    }
    if options.parts.is_empty() {
        options.parts = vec![1, 2, 3, 4];
    }
    Ok(options)
}

/// `--filter-ctl`, else `FILTER_CTL_BIN`, else `filter-ctl` next to this binary.
fn locate_filter_ctl(explicit: Option<PathBuf>) -> Result<PathBuf> {
    let path = match explicit.or_else(|| std::env::var_os("FILTER_CTL_BIN").map(PathBuf::from)) {
        Some(path) => path,
        None => std::env::current_exe()?
            .parent()
            .context("the executable has a directory")?
            .join("filter-ctl"),
    };
    if !path.is_file() {
        bail!(
            "{} does not exist: build it first (`cargo build --release -p filter-ctl`), or run `cargo xtask bench`",
            path.display()
        );
    }
    Ok(path)
}

/// The state directory of every filter-ctl this benchmark runs (set for
/// the whole process tree in `main`), so that it never touches the host's
/// `/var/lib/filter-ctl`.
fn bench_state_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(format!("/tmp/filter-bench-state-{}", std::process::id()))
}

fn main() -> ExitCode {
    // SAFETY: set before any thread starts; the children inherit it.
    unsafe { std::env::set_var("FILTER_CTL_STATE_DIR", bench_state_dir()) };
    let result = run();
    std::fs::remove_dir_all(bench_state_dir()).ok();
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("filter-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Returns whether every check passed.
fn run() -> Result<bool> {
    let options = parse_args()?;
    filter_devtools::require_root(
        "filter-bench",
        "it loads XDP programs and creates network namespaces",
    )?;
    filter_devtools::catch_interrupts();
    sweep_stale();
    let started = Instant::now();
    let filter_ctl = locate_filter_ctl(options.filter_ctl)?;
    let rounds = options.rounds.unwrap_or(if options.quick { 1 } else { 7 });
    let env = Env::new(options.quick, rounds, filter_ctl.clone())?;

    let mut sections: Vec<Section> = Vec::new();
    for part in &options.parts {
        let section = match part {
            1 => prog::per_packet(&env),
            2 => prog::scaling(&env),
            3 => throughput::flood(&env),
            _ => control::control(&env),
        }
        .with_context(|| format!("part {part}"))?;
        sections.push(section);
    }

    let context = Context {
        quick: options.quick,
        invocation: std::env::args().collect::<Vec<_>>().join(" "),
        commands: env.commands(),
        failures: env.failures(),
        filter_ctl_version: throughput::version_line(&filter_ctl.to_string_lossy(), &["--version"]),
        elapsed_secs: started.elapsed().as_secs_f64(),
    };
    let text = render(&context, &sections);
    match &options.output {
        Some(path) => {
            if context.failures.is_empty() {
                std::fs::write(path, &text)
                    .with_context(|| format!("writing {}", path.display()))?;
                println!("wrote {}", path.display());
            } else {
                println!("{text}");
                eprintln!("not writing {}: the run failed", path.display());
            }
        }
        None => println!("{text}"),
    }
    // The charts go beside the report (in `charts::DIR`, which it links);
    // without a report file to keep, into the run's scratch directory
    // (removed at exit), so that a smoke run still renders them.
    let kept = options
        .output
        .as_ref()
        .filter(|_| context.failures.is_empty());
    let beside = kept.map_or_else(|| env.work.join("BENCHMARKS.md"), Clone::clone);
    let charts = charts::write_beside(sections.iter().flat_map(|s| &s.charts), &beside)?;
    if kept.is_some() {
        for chart in &charts {
            println!("wrote {}", chart.display());
        }
    }
    for failure in &context.failures {
        eprintln!("FAILED: {failure}");
    }
    Ok(context.failures.is_empty())
}
