//! `cargo xtask package`: the Debian package of filter-ctl, made by
//! cargo-deb (metadata in `filter-ctl/Cargo.toml`, `[package.metadata.deb]`)
//! from the release binary `cargo xtask build` makes (the XDP program
//! embedded), the systemd unit, an example policy, and the man page and
//! shell completions generated here from the clap definitions (`filter-ctl
//! man`, `filter-ctl completions SHELL`). Prints the path of the .deb.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::{build, cmd};

/// The generated assets, named as `[package.metadata.deb]` assets name them
/// (`target/release/package/...`): what to run the binary with, and the file.
const COMPLETIONS: &[(&str, &str)] = &[
    ("bash", "filter-ctl.bash"),
    ("zsh", "_filter-ctl"),
    ("fish", "filter-ctl.fish"),
];

/// Builds the package and returns the path of the .deb.
pub fn run() -> Result<PathBuf> {
    let binary = build::run()?;
    let release = binary.parent().context("the binary has a directory")?;
    let assets = release.join("package");
    generate_assets(&binary, &assets)?;

    ensure!(
        cmd::find_on_path("cargo-deb").is_some(),
        "cargo-deb is missing: run `cargo xtask setup`"
    );
    let output = release.join("debian");
    let mut deb = cmd::cargo();
    deb.args(["deb", "-p", "filter-ctl", "--no-build", "--output"])
        .arg(&output);
    println!("==> package: {}", cmd::display(&deb));
    let printed = cmd::stdout(&mut deb)?;
    let path = printed
        .lines()
        .map(str::trim)
        .rfind(|line| Path::new(line).extension().is_some_and(|e| e == "deb"))
        .map(|line| cmd::workspace_root().join(line))
        .with_context(|| format!("cargo deb printed no .deb path:\n{printed}"))?;
    ensure!(
        path.is_file(),
        "cargo deb names {}, which is missing",
        path.display()
    );
    println!("{}", path.display());
    Ok(path)
}

/// The man page (gzipped, as Debian ships them) and the completions, from
/// the binary being packaged, into `dir` (emptied first).
fn generate_assets(binary: &Path, dir: &Path) -> Result<()> {
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("emptying {}", dir.display()))?;
    }
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;

    let man = dir.join("filter-ctl.1");
    write(&man, &cmd::stdout(Command::new(binary).arg("man"))?)?;
    // -n: no name or time stamp in the header, so the same page gives the
    // same bytes.
    cmd::run(Command::new("gzip").args(["-9", "-n", "-f"]).arg(&man))
        .context("compressing the man page (gzip)")?;

    for (shell, name) in COMPLETIONS {
        let script = cmd::stdout(Command::new(binary).args(["completions", shell]))?;
        write(&dir.join(name), &script)?;
    }
    Ok(())
}

fn write(path: &Path, text: &str) -> Result<()> {
    if text.trim().is_empty() {
        bail!("{} would be empty", path.display());
    }
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}
