//! `cargo xtask test`: setup, then the whole test suite on the real kernel.

use anyhow::{Context as _, Result};

use crate::{cmd, setup, sys};

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
    let mut cargo = cmd::cargo();
    cargo.args(["test", "--locked"]);
    if !selects_packages(&options.cargo_args) {
        // filter-ebpf only builds for the BPF target; filter-ctl's build script
        // compiles it, and the tests exercise it through filter-ctl.
        cargo.args(["--workspace", "--exclude", "filter-ebpf"]);
    }
    cargo.args(&options.cargo_args);
    println!("==> test: {}", cmd::display(&cargo));
    cmd::run(&mut cargo).context("the test suite failed (see above)")
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
    use super::selects_packages;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(ToString::to_string).collect()
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
