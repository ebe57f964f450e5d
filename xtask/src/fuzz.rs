//! `cargo xtask fuzz`: setup, then each fuzz target (`fuzz/`, cargo-fuzz with
//! libFuzzer on the nightly toolchain) for a bounded time. A target that finds
//! a crash fails the run; the input is kept in `fuzz/artifacts/TARGET/`.
//!
//! Each target starts from the seeds committed in `fuzz/seeds/TARGET/` and the
//! corpus earlier runs grew in `fuzz/corpus/TARGET/` (not committed).

use std::process::Command;

use anyhow::{Context as _, Result, bail, ensure};

use crate::{cmd, setup, sys};

#[derive(clap::Args)]
pub struct Options {
    /// How long to fuzz each target.
    #[arg(long, default_value_t = 30, value_name = "N")]
    seconds: u32,
    /// Fuzz only this target (default: every target `cargo fuzz list` shows).
    ///
    /// Example: cidr
    target: Option<String>,
}

pub fn run(options: &Options) -> Result<()> {
    ensure!(options.seconds > 0, "--seconds must be at least 1");
    setup::run()?;
    // Ctrl-C reaches cargo fuzz too; it stops, then xtask reports it.
    sys::catch_interrupts();
    let targets = match &options.target {
        Some(target) => vec![target.clone()],
        None => list_targets()?,
    };
    ensure!(!targets.is_empty(), "`cargo fuzz list` shows no targets");
    let mut failed = Vec::new();
    for target in &targets {
        sys::check_interrupted()?;
        let fuzz_dir = cmd::workspace_root().join("fuzz");
        // libFuzzer adds new inputs to the first corpus directory only, so
        // the committed seeds stay as they are.
        let corpus = fuzz_dir.join("corpus").join(target);
        let seeds = fuzz_dir.join("seeds").join(target);
        std::fs::create_dir_all(&corpus)
            .with_context(|| format!("creating {}", corpus.display()))?;
        let mut fuzz = cargo_fuzz();
        fuzz.arg("run")
            .arg("--fuzz-dir")
            .arg(&fuzz_dir)
            .arg(target)
            .arg(&corpus);
        if seeds.is_dir() {
            fuzz.arg(&seeds);
        }
        fuzz.arg("--")
            .arg(format!("-max_total_time={}", options.seconds));
        println!("==> fuzz {target}: {}", cmd::display(&fuzz));
        if let Err(error) = cmd::run(&mut fuzz) {
            sys::check_interrupted()?;
            eprintln!("fuzz target {target} failed: {error:#}");
            failed.push(target.as_str());
        }
    }
    if !failed.is_empty() {
        bail!(
            "fuzzing found a problem in: {} (the input is in fuzz/artifacts/TARGET/; \
             replay it with `cargo +nightly fuzz run --fuzz-dir fuzz TARGET FILE`)",
            failed.join(", ")
        );
    }
    println!(
        "fuzz: {} target(s), {} s each, no crash",
        targets.len(),
        options.seconds
    );
    Ok(())
}

/// `cargo fuzz` with the nightly toolchain (libFuzzer needs it), run from the
/// workspace root.
fn cargo_fuzz() -> Command {
    let mut command = Command::new("rustup");
    command
        .args(["run", "nightly", "cargo", "fuzz"])
        .current_dir(cmd::workspace_root())
        // Let the nightly toolchain pick its own rustc, not the caller's.
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO");
    command
}

fn list_targets() -> Result<Vec<String>> {
    let mut list = cargo_fuzz();
    list.arg("list")
        .arg("--fuzz-dir")
        .arg(cmd::workspace_root().join("fuzz"));
    let text = cmd::stdout(&mut list).context("listing the fuzz targets")?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .map(String::from)
        .collect())
}
