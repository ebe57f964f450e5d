//! `cargo xtask build`: the release controller, with the XDP program embedded
//! by its build script. Setup is not included (see `cargo xtask setup`).

use std::path::PathBuf;

use anyhow::{Context as _, Result, ensure};

use crate::cmd;

/// A cargo build profile: how to ask for it and where its output goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Profile {
    /// Arguments that select it (`--release`, `--profile NAME`, or none).
    pub args: Vec<String>,
    /// Its directory under the target directory (`debug`, `release`, ...).
    pub dir: String,
}

impl Profile {
    pub fn dev() -> Self {
        Self {
            args: Vec::new(),
            dir: "debug".into(),
        }
    }

    pub fn release() -> Self {
        Self {
            args: vec!["--release".into()],
            dir: "release".into(),
        }
    }

    /// `--profile name`; `dev`/`test` builds go to `debug`, `release`/`bench`
    /// builds to `release`, others to a directory of their name.
    pub fn named(name: &str) -> Self {
        let dir = match name {
            "dev" | "test" => "debug",
            "release" | "bench" => "release",
            other => other,
        };
        Self {
            args: vec!["--profile".into(), name.into()],
            dir: dir.into(),
        }
    }
}

/// Builds `filter-ctl` in release mode and returns the path of the binary.
pub fn run() -> Result<PathBuf> {
    filter_ctl(&Profile::release())
}

/// Builds `filter-ctl` with `profile` and returns the path of the binary.
pub fn filter_ctl(profile: &Profile) -> Result<PathBuf> {
    let mut cargo = cmd::cargo();
    cargo
        .args(["build", "--locked", "-p", "filter-ctl"])
        .args(&profile.args);
    println!("==> build: {}", cmd::display(&cargo));
    cmd::run(&mut cargo)
        .context("building filter-ctl failed; if the eBPF part failed, run `cargo xtask setup`")?;
    let binary = target_dir().join(&profile.dir).join("filter-ctl");
    ensure!(
        binary.is_file(),
        "cargo reported success but {} is missing",
        binary.display()
    );
    println!("built {}", binary.display());
    Ok(binary)
}

/// Cargo's target directory: `CARGO_TARGET_DIR`, else `target` in the workspace.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| cmd::workspace_root().join("target"), PathBuf::from)
}
