//! Project tasks, run as `cargo xtask <task>` (alias in `.cargo/config.toml`).
//!
//! xtask orchestrates; it does not replace cargo. One module per task: add a
//! variant to [`Task`] and a module with a `run` function to add one.

mod bench;
mod build;
mod cmd;
mod fuzz;
mod lab;
mod package;
mod setup;
mod sys;
mod test;

use clap::{Parser, Subcommand};

/// Tasks for the XDP packet filter workspace.
#[derive(Parser)]
#[command(name = "xtask", bin_name = "cargo xtask", version, about)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Check the prerequisites and install only what is missing: kernel, bpffs,
    /// Debian packages, nightly toolchain with rust-src, bpf-linker, cargo-fuzz,
    /// cargo-deb.
    /// Safe to re-run.
    ///
    /// Example: cargo xtask setup
    Setup,
    /// Build the controller (release), with the XDP program embedded.
    ///
    /// Does not run setup. Example: cargo xtask build
    Build,
    /// Run setup, then the whole test suite against the real kernel (needs root).
    ///
    /// Example: cargo xtask test -- -p filter-tests -- --nocapture
    Test(test::Options),
    /// Run setup, build, and demonstrate the filter dropping real traffic
    /// between two network namespaces (needs root).
    ///
    /// Example: cargo xtask lab --keep
    Lab(lab::Options),
    /// Run setup, build, and the benchmark suite (needs root); writes
    /// BENCHMARKS.md. --quick is a smoke run of every part (verdicts only).
    ///
    /// Example: cargo xtask bench --quick
    Bench(bench::Options),
    /// Run setup, then each fuzz target (cargo-fuzz, libFuzzer, nightly) for
    /// --seconds; a crash fails the run and its input is kept in
    /// fuzz/artifacts/TARGET/.
    ///
    /// Example: cargo xtask fuzz --seconds 60 cidr
    Fuzz(fuzz::Options),
    /// Build the Debian package (cargo-deb): the release binary, the
    /// systemd unit, an example policy, the man page and shell completions.
    /// Prints the path of the .deb.
    ///
    /// Does not run setup. Example: cargo xtask package
    Package,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::run(),
        Task::Build => build::run().map(drop),
        Task::Test(options) => test::run(&options),
        Task::Lab(options) => lab::run(&options),
        Task::Bench(options) => bench::run(&options),
        Task::Fuzz(options) => fuzz::run(&options),
        Task::Package => package::run().map(drop),
    }
}
