//! Compiles `filter-ebpf` for the BPF target so the controller embeds the
//! object (`include_bytes_aligned!`): one self-contained binary.
//!
//! This does what `aya_build::build_ebpf` does (nightly cargo with
//! `-Z build-std=core`, bpf-linker as the linker), plus one thing it cannot:
//! `-C target-cpu=v3`. BPF ISA v3 gives 32-bit jumps and ALU ops (shorter,
//! faster code) and the atomic compare-and-swap the rate limiter needs;
//! kernels >= 5.12 support it. And `allows-misaligned-mem-access` (LLVM 22):
//! an address is read from the packet in whole words, not byte by byte. The
//! verifier accepts misaligned packet and map-value reads on architectures
//! with efficient unaligned access (x86-64, arm64), never misaligned stack
//! slots. LLVM does not keep those aligned by itself: it copied a 16-byte
//! address 8 bytes at a time into aya's packed LPM key wherever the frame
//! put it, so the program builds its trie keys in 8-byte aligned wrappers
//! (`DataOn8`, `KeyOn8` in filter-ebpf's `lists`); every test loads the
//! program, so a build that breaks it fails them.
use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, anyhow, bail};

const TARGET: &str = "bpfel-unknown-none";
const PACKAGE: &str = "filter-ebpf";
const BINARY: &str = "filter";

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?);
    let workspace = manifest_dir
        .parent()
        .context("filter-ctl has no parent directory")?;
    for watched in [
        "filter-ebpf/src",
        "filter-ebpf/Cargo.toml",
        "filter-common/src",
        "filter-common/Cargo.toml",
    ] {
        println!(
            "cargo:rerun-if-changed={}",
            workspace.join(watched).display()
        );
    }
    println!("cargo:rerun-if-env-changed=FILTER_EBPF_TOOLCHAIN");
    let toolchain = env::var("FILTER_EBPF_TOOLCHAIN").unwrap_or_else(|_| "nightly".into());

    let target_dir = out_dir.join("ebpf-target");
    let rustflags = [
        "-Cdebuginfo=2",
        "-Clink-arg=--btf",
        "-Ctarget-cpu=v3",
        "-Ctarget-feature=+allows-misaligned-mem-access",
    ]
    .join("\x1f");
    let output = Command::new("rustup")
        .args([
            "run",
            &toolchain,
            "cargo",
            "build",
            "--package",
            PACKAGE,
            "--bins",
            "--release",
        ])
        .args(["--target", TARGET, "-Z", "build-std=core", "--target-dir"])
        .arg(&target_dir)
        .current_dir(workspace)
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
        // Let the nightly toolchain pick its own rustc, not the caller's.
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTFLAGS")
        .output()
        .context(
            "running `rustup run nightly cargo build` for filter-ebpf failed; is rustup installed?",
        )?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        bail!(
            "building {PACKAGE} for {TARGET} failed; run `cargo xtask setup` (nightly rust-src and bpf-linker) first.\n{stderr}"
        );
    }
    let built = target_dir.join(TARGET).join("release").join(BINARY);
    copy(&built, &out_dir.join(BINARY))
}

fn copy(from: &Path, to: &Path) -> anyhow::Result<()> {
    fs::copy(from, to)
        .map(|_| ())
        .map_err(|e| anyhow!("copying {} to {}: {e}", from.display(), to.display()))
}
