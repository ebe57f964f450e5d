//! `cargo xtask test`: setup, then the whole test suite on the real kernel.
//!
//! The tests drive the real `filter-ctl` binary. xtask builds it once, in the
//! profile the tests build in, and hands its path over in `FILTER_CTL_BIN`;
//! without it (a plain `cargo test`) each test process builds it itself.

use anyhow::{Context as _, Result};

use crate::{
    build::{self, Profile},
    cmd, setup, sys,
};

#[derive(clap::Args)]
pub struct Options {
    /// Extra arguments for `cargo test`, after `--`.
    ///
    /// Example: `-p filter-tests -- --nocapture` (a package selection replaces
    /// the default `--workspace`).
    #[arg(last = true)]
    cargo_args: Vec<String>,
}

pub fn run(options: &Options) -> Result<()> {
    sys::require_root("the tests load XDP programs and create network namespaces")?;
    setup::run()?;
    let filter_ctl = build::filter_ctl(&profile_of(&options.cargo_args))?;
    let mut cargo = cmd::cargo();
    cargo.env("FILTER_CTL_BIN", &filter_ctl);
    cargo.args(["test", "--locked"]);
    if !selects_packages(&options.cargo_args) {
        // filter-ebpf only builds for the BPF target; filter-ctl's build script
        // compiles it, and the tests exercise it through filter-ctl.
        cargo.args(["--workspace", "--exclude", "filter-ebpf"]);
    }
    cargo.args(&options.cargo_args);
    println!(
        "==> test: FILTER_CTL_BIN={} {}",
        filter_ctl.display(),
        cmd::display(&cargo)
    );
    let totals = run_counting(&mut cargo)?;
    // One closing line for the whole run: cargo prints one result per test
    // binary, and the last of them (doc tests) usually runs none.
    println!(
        "summary: {} passed, {} failed, {} skipped",
        totals.passed, totals.failed, totals.ignored
    );
    if totals.failed > 0 || !totals.success {
        anyhow::bail!("the test suite failed (see above)");
    }
    Ok(())
}

#[derive(Default, Debug, PartialEq, Eq)]
struct Totals {
    passed: u64,
    failed: u64,
    ignored: u64,
    success: bool,
}

/// Runs cargo test, echoing its output, and adds up its `test result:` lines.
fn run_counting(cargo: &mut std::process::Command) -> Result<Totals> {
    use std::io::{BufRead as _, BufReader};
    let mut child = cargo
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("starting cargo test")?;
    let mut totals = Totals::default();
    let stdout = child.stdout.take().context("cargo test has no stdout")?;
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo test's output")?;
        println!("{line}");
        add_result_line(&mut totals, &line);
    }
    totals.success = child.wait().context("waiting for cargo test")?.success();
    Ok(totals)
}

/// Adds `test result: ok. 9 passed; 0 failed; 1 ignored; ...` to the totals.
fn add_result_line(totals: &mut Totals, line: &str) {
    let Some(rest) = line.trim().strip_prefix("test result: ") else {
        return;
    };
    for part in rest.split(';') {
        let mut words = part.split_whitespace().rev();
        let (Some(what), Some(count)) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(count) = count.parse::<u64>() else {
            continue;
        };
        match what {
            "passed" => totals.passed += count,
            "failed" => totals.failed += count,
            "ignored" => totals.ignored += count,
            _ => {}
        }
    }
}

/// The profile `cargo test` builds in with these arguments (before any `--`).
fn profile_of(cargo_args: &[String]) -> Profile {
    let mut profile = Profile::dev();
    let mut args = cargo_args.iter().take_while(|arg| *arg != "--");
    while let Some(arg) = args.next() {
        if arg == "--release" || arg == "-r" {
            profile = Profile::release();
        } else if arg == "--profile" {
            if let Some(name) = args.next() {
                profile = Profile::named(name);
            }
        } else if let Some(name) = arg.strip_prefix("--profile=") {
            profile = Profile::named(name);
        }
    }
    profile
}

/// Whether the arguments for cargo (before any `--`) choose packages.
fn selects_packages(cargo_args: &[String]) -> bool {
    cargo_args.iter().take_while(|arg| *arg != "--").any(|arg| {
        arg == "-p"
            || arg == "--package"
            || arg.starts_with("--package=")
            || (arg.starts_with("-p") && arg.len() > 2)
            || arg == "--workspace"
            || arg == "--all"
    })
}

#[cfg(test)]
mod tests {
    use super::{Profile, profile_of, selects_packages};

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn adds_up_result_lines() {
        let mut totals = super::Totals::default();
        for line in [
            "test result: ok. 9 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.23s",
            "test result: FAILED. 2 passed; 3 failed; 0 ignored; 0 measured; 0 filtered out",
            "running 4 tests",
        ] {
            super::add_result_line(&mut totals, line);
        }
        assert_eq!((totals.passed, totals.failed, totals.ignored), (11, 3, 1));
    }

    #[test]
    fn filter_ctl_is_built_in_the_tests_profile() {
        assert_eq!(profile_of(&[]), Profile::dev());
        assert_eq!(profile_of(&args(&["-p", "filter-tests"])), Profile::dev());
        assert_eq!(profile_of(&args(&["--release"])), Profile::release());
        assert_eq!(profile_of(&args(&["-r"])), Profile::release());
        assert_eq!(
            profile_of(&args(&["--profile", "ci"])),
            Profile::named("ci")
        );
        assert_eq!(profile_of(&args(&["--profile=ci"])).dir, "ci");
        assert_eq!(profile_of(&args(&["--profile", "dev"])).dir, "debug");
        // Arguments for the test binaries do not count.
        assert_eq!(profile_of(&args(&["--", "--release"])), Profile::dev());
    }

    #[test]
    fn package_selection_replaces_workspace() {
        assert!(selects_packages(&args(&["-p", "filter-tests"])));
        assert!(selects_packages(&args(&["--package=xtask"])));
        assert!(selects_packages(&args(&["-pxtask"])));
        assert!(!selects_packages(&args(&["--release"])));
        assert!(!selects_packages(&args(&["--", "-p"])));
        assert!(!selects_packages(&[]));
    }
}
