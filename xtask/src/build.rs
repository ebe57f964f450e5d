//! `cargo xtask build`: the release controller, with the XDP program embedded
//! by its build script. Setup is not included (see `cargo xtask setup`).

use std::path::PathBuf;

use anyhow::{Context as _, Result, ensure};

use crate::cmd;

/// Builds `filter-ctl` in release mode and returns the path of the binary.
pub fn run() -> Result<PathBuf> {
    println!("==> build: cargo build --release --locked -p filter-ctl");
    cmd::run(cmd::cargo().args(["build", "--release", "--locked", "-p", "filter-ctl"]))
        .context("building filter-ctl failed; if the eBPF part failed, run `cargo xtask setup`")?;
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| cmd::workspace_root().join("target"), PathBuf::from);
    let binary = target_dir.join("release").join("filter-ctl");
    ensure!(
        binary.is_file(),
        "cargo reported success but {} is missing",
        binary.display()
    );
    println!("built {}", binary.display());
    Ok(binary)
}
