//! `cargo xtask bench`: setup, the release controller, then the benchmark
//! suite (the `filter-bench` crate), which writes
//! `BENCHMARKS.md`. `--quick` is the smoke run CI does: every part, a few
//! seconds, verdicts checked, the report printed instead of written.

use std::path::PathBuf;

use anyhow::{Context as _, Result};

use crate::{build, cmd, setup, sys};

#[derive(clap::Args)]
pub struct Options {
    /// Smoke run of every part: checks that each works and that every verdict
    /// is right (never a timing); prints the report instead of writing
    /// BENCHMARKS.md.
    #[arg(long)]
    quick: bool,
    /// Write the report here instead (default: BENCHMARKS.md in the
    /// workspace; with --quick, standard output).
    #[arg(long)]
    output: Option<PathBuf>,
    /// Extra arguments for filter-bench, after `--`.
    ///
    /// Example: `-- --part 3 --rounds 3` (parts: 1 per packet, 2 list and
    /// table size, 3 flood, 4 control plane).
    #[arg(last = true)]
    bench_args: Vec<String>,
}

pub fn run(options: &Options) -> Result<()> {
    sys::require_root("the benchmarks load XDP programs and create network namespaces")?;
    // Ctrl-C reaches filter-bench too; it cleans up, then xtask reports it.
    sys::catch_interrupts();
    setup::run()?;
    let filter_ctl = build::run()?;
    let mut cargo = cmd::cargo();
    cargo.args(["run", "--release", "--locked", "-p", "filter-bench", "--"]);
    cargo.arg("--filter-ctl").arg(&filter_ctl);
    if options.quick {
        cargo.arg("--quick");
    }
    let output = match (&options.output, options.quick) {
        (Some(path), _) => Some(std::path::absolute(path).context("resolving --output")?),
        (None, false) => Some(cmd::workspace_root().join("BENCHMARKS.md")),
        (None, true) => None,
    };
    if let Some(path) = &output {
        cargo.arg("--output").arg(path);
    }
    cargo.args(&options.bench_args);
    println!("==> bench: {}", cmd::display(&cargo));
    cmd::run(&mut cargo).context("the benchmark failed (see above)")
}
