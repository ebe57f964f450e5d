//! `cargo xtask setup`: checks each prerequisite and installs only what is
//! missing, one line per item. A second run changes nothing.

use std::fmt;
use std::fs;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail, ensure};

use crate::{cmd, sys};

/// Debian packages: tools the tests, the lab and the benchmarks use.
const PACKAGES: &[&str] = &[
    "bpftool",
    "xdp-tools",
    "nftables",
    "iptables",
    "prometheus",
    // `tmux`: the `filter-ctl top` test drives it in a real terminal.
    "tmux",
    "iproute2",
    // `ping` for the lab, `objdump` to inspect bpf-linker and libLLVM.
    "iputils-ping",
    "binutils",
    // `perf`: the benchmarks profile every target they miss.
    "linux-perf",
    // `systemd-analyze verify` checks the shipped unit (deploy/systemd/).
    "systemd",
];

/// The oldest kernel with everything the XDP program uses: BPF atomics with
/// fetch (5.12) and the `bpf_loop` helper (5.17), which the host table's
/// length probes call.
const MIN_KERNEL: (u32, u32) = (5, 17);
const BPFFS: &str = "/sys/fs/bpf";
const BPF_LINKER_VERSION: &str = "^0.13";
/// Where the `CrowdSec` binaries are unpacked (`usr/bin/crowdsec`,
/// `usr/bin/cscli` below it). The tests look here too (`tests/src/crowdsec.rs`).
const CROWDSEC_DIR: &str = "/opt/filter-ctl-deps/crowdsec";

pub fn run() -> Result<()> {
    println!("==> setup");
    kernel()?;
    packages()?;
    crowdsec()?;
    bpffs()?;
    let nightly = nightly()?;
    rust_src(&nightly)?;
    bpf_linker(&nightly)?;
    cargo_fuzz()?;
    cargo_deb()?;
    Ok(())
}

enum Status {
    Ok,
    Installed,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Status::Ok => "ok",
            Status::Installed => "installed",
        })
    }
}

fn report(status: &Status, item: &str) {
    println!("{status:>9}  {item}");
}

fn kernel() -> Result<()> {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease")
        .context("cannot read the kernel release from /proc")?;
    let release = release.trim();
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let version = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    ensure!(
        version >= MIN_KERNEL,
        "kernel {release} is too old: the XDP program needs Linux {}.{} or newer",
        MIN_KERNEL.0,
        MIN_KERNEL.1
    );
    ensure!(
        Path::new("/sys/kernel/btf/vmlinux").exists(),
        "kernel {release} has no BTF (/sys/kernel/btf/vmlinux): use a kernel built with CONFIG_DEBUG_INFO_BTF=y"
    );
    report(&Status::Ok, &format!("kernel {release} with BTF"));
    Ok(())
}

fn package_installed(package: &str) -> Result<bool> {
    let status = cmd::capture(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .context("dpkg-query not found: setup supports Debian and its derivatives")?;
    Ok(status.success && status.stdout.trim() == "install ok installed")
}

fn packages() -> Result<()> {
    let mut missing = Vec::new();
    for package in PACKAGES {
        if package_installed(package)? {
            report(&Status::Ok, &format!("package {package}"));
        } else {
            missing.push(*package);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.join(" ");
    if !sys::is_root() {
        bail!("missing Debian packages: {list}; run `cargo xtask setup` as root to install them");
    }
    let apt = |args: &[&str]| {
        let mut apt = Command::new("apt-get");
        apt.env("DEBIAN_FRONTEND", "noninteractive").args(args);
        apt
    };
    println!("installing {list}");
    cmd::run(&mut apt(&["update", "-q"]))
        .context("apt-get update failed; check the network and /etc/apt/sources.list*")?;
    let mut install = apt(&["install", "-q", "-y", "--no-install-recommends"]);
    install.args(&missing);
    cmd::run(&mut install).with_context(|| format!("installing {list} failed"))?;
    for package in missing {
        ensure!(
            package_installed(package)?,
            "apt-get finished but {package} is still not installed"
        );
        report(&Status::Installed, &format!("package {package}"));
    }
    Ok(())
}

/// `CrowdSec`'s `crowdsec` (the LAPI) and `cscli`, for the bouncer tests.
/// Unpacked, not installed: Debian's package registers with `CrowdSec`'s
/// central service in its post-install script, which fails offline and
/// leaves the package half-configured. `apt-get download` + `dpkg-deb -x`
/// gives the same binaries without running any script.
fn crowdsec() -> Result<()> {
    let dir = Path::new(CROWDSEC_DIR);
    let binaries = [dir.join("usr/bin/crowdsec"), dir.join("usr/bin/cscli")];
    if binaries.iter().all(|b| b.is_file()) {
        report(
            &Status::Ok,
            &format!("crowdsec and cscli in {CROWDSEC_DIR}"),
        );
        return Ok(());
    }
    if !sys::is_root() {
        bail!("CrowdSec is not unpacked in {CROWDSEC_DIR}; run `cargo xtask setup` as root");
    }
    let parent = dir
        .parent()
        .context("the CrowdSec directory has a parent")?;
    fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    // Download and unpack beside the final place, then rename: a failed
    // run leaves no half-unpacked directory that would look installed.
    let work = parent.join(".crowdsec.partial");
    if work.exists() {
        fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    }
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    cmd::run(
        Command::new("apt-get")
            .args(["download", "-q", "crowdsec"])
            .current_dir(&work),
    )
    .context("apt-get download crowdsec failed; check the network and /etc/apt/sources.list* (run apt-get update)")?;
    let deb = fs::read_dir(&work)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .context("apt-get download crowdsec left no .deb")?;
    let root = work.join("root");
    cmd::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))
        .with_context(|| format!("unpacking {}", deb.display()))?;
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    fs::rename(&root, dir)
        .with_context(|| format!("moving the unpacked CrowdSec to {CROWDSEC_DIR}"))?;
    fs::remove_dir_all(&work).ok();
    ensure!(
        binaries.iter().all(|b| b.is_file()),
        "unpacked CrowdSec, but {} or cscli is missing",
        binaries[0].display()
    );
    report(
        &Status::Installed,
        &format!("crowdsec and cscli in {CROWDSEC_DIR}"),
    );
    Ok(())
}

fn bpffs_mounted() -> Result<bool> {
    let mounts = fs::read_to_string("/proc/mounts").context("cannot read /proc/mounts")?;
    Ok(mounts.lines().any(|line| {
        let mut fields = line.split_whitespace().skip(1);
        fields.next() == Some(BPFFS) && fields.next() == Some("bpf")
    }))
}

/// Mounts bpffs root-only (`mode=0700`, as systemd does), or makes an
/// existing mount root-only: a world-writable bpffs lets any user pin
/// objects or create the filter's directories before it does.
fn bpffs() -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    if bpffs_mounted()? {
        let mode = fs::metadata(BPFFS)
            .with_context(|| format!("reading {BPFFS}"))?
            .permissions()
            .mode();
        if mode & 0o022 == 0 {
            report(
                &Status::Ok,
                &format!("bpffs mounted at {BPFFS}, writable by root only"),
            );
            return Ok(());
        }
        if !sys::is_root() {
            bail!(
                "bpffs at {BPFFS} has mode {:o}; run `cargo xtask setup` as root to make it root-only",
                mode & 0o7777
            );
        }
        fs::set_permissions(BPFFS, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("making {BPFFS} root-only (chmod 0700)"))?;
        report(
            &Status::Installed,
            &format!(
                "bpffs at {BPFFS} made root-only (was mode {:o})",
                mode & 0o7777
            ),
        );
        return Ok(());
    }
    if !sys::is_root() {
        bail!("bpffs is not mounted at {BPFFS}; run `cargo xtask setup` as root to mount it");
    }
    cmd::run(Command::new("mount").args(["-t", "bpf", "-o", "mode=0700", "bpf", BPFFS]))
        .with_context(|| format!("mounting bpffs at {BPFFS} failed"))?;
    ensure!(
        bpffs_mounted()?,
        "mount succeeded but {BPFFS} is still not a bpf mount"
    );
    report(&Status::Installed, &format!("bpffs mounted at {BPFFS}"));
    Ok(())
}

/// What the eBPF build needs to know about the nightly toolchain.
struct Nightly {
    sysroot: PathBuf,
    /// Major version of the LLVM that nightly rustc uses, e.g. 22.
    llvm_major: u32,
}

fn rustup() -> Command {
    Command::new("rustup")
}

fn nightly_installed() -> Result<bool> {
    let host = cmd::stdout(Command::new("rustc").arg("-vV"))?;
    let host = field(&host, "host: ").context("`rustc -vV` printed no host")?;
    let toolchains = cmd::stdout(rustup().args(["toolchain", "list"]))
        .context("rustup is needed for the nightly toolchain: install it from https://rustup.rs")?;
    let name = format!("nightly-{host}");
    Ok(toolchains
        .lines()
        .any(|line| line.split_whitespace().next() == Some(name.as_str())))
}

fn nightly() -> Result<Nightly> {
    let status = if nightly_installed()? {
        Status::Ok
    } else {
        cmd::run(rustup().args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]))
        .context("installing the nightly toolchain failed (the eBPF program needs it)")?;
        Status::Installed
    };
    let version = cmd::stdout(Command::new("rustc").args(["+nightly", "-vV"]))?;
    let release = field(&version, "release: ").unwrap_or("?");
    let llvm = field(&version, "LLVM version: ")
        .context("`rustc +nightly -vV` printed no LLVM version")?;
    let llvm_major = llvm
        .split('.')
        .next()
        .and_then(|major| major.parse().ok())
        .with_context(|| format!("cannot read the LLVM major version from {llvm:?}"))?;
    let sysroot = cmd::stdout(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    report(
        &status,
        &format!("nightly toolchain (rustc {release}, LLVM {llvm})"),
    );
    Ok(Nightly {
        sysroot: PathBuf::from(sysroot.trim()),
        llvm_major,
    })
}

/// The value after `prefix` on the first line that starts with it.
fn field<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|line| line.strip_prefix(prefix))
        .map(str::trim)
}

fn rust_src(nightly: &Nightly) -> Result<()> {
    let library = nightly.sysroot.join("lib/rustlib/src/rust/library/core");
    let status = if library.is_dir() {
        Status::Ok
    } else {
        cmd::run(rustup().args(["component", "add", "rust-src", "--toolchain", "nightly"]))
            .context(
                "installing rust-src for nightly failed (the eBPF build compiles core from it)",
            )?;
        ensure!(
            library.is_dir(),
            "rust-src installed but {} is missing",
            library.display()
        );
        Status::Installed
    };
    report(&status, "rust-src for nightly");
    Ok(())
}

/// The nightly toolchain's shared LLVM library, which bpf-linker links to so
/// that it reads the bitcode rustc writes.
struct LibLlvm {
    path: PathBuf,
    soname: String,
}

fn lib_llvm(nightly: &Nightly) -> Result<LibLlvm> {
    let lib = nightly.sysroot.join("lib");
    let is_elf = |path: &Path| {
        let mut magic = [0; 4];
        fs::File::open(path)
            .and_then(|mut file| file.read_exact(&mut magic))
            .is_ok()
            && magic == *b"\x7fELF"
    };
    // There is also a `libLLVM-NN-….so` linker script; the library is the ELF file.
    let path = fs::read_dir(&lib)
        .with_context(|| format!("cannot list {}", lib.display()))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .find(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("libLLVM"))
                && path.is_file()
                && !path.is_symlink()
                && is_elf(path)
        })
        .with_context(|| {
            format!(
                "no libLLVM shared library in {}; reinstall nightly",
                lib.display()
            )
        })?;
    let soname = elf_entries(&path, "SONAME")?
        .into_iter()
        .next()
        .unwrap_or_else(|| {
            path.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned()
        });
    Ok(LibLlvm { path, soname })
}

/// Values of one kind of dynamic-section entry (`NEEDED`, `SONAME`) of an ELF file.
fn elf_entries(path: &Path, kind: &str) -> Result<Vec<String>> {
    let dump = cmd::stdout(Command::new("objdump").arg("-p").arg(path))
        .context("objdump (package binutils) is needed to inspect shared libraries")?;
    Ok(dump
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some(kind)).then(|| words.next().map(String::from))?
        })
        .collect())
}

/// Why the bpf-linker on `PATH` cannot be used, or `None` when it can.
fn bpf_linker_problem(llvm: &LibLlvm) -> Result<Option<String>> {
    let Some(linker) = cmd::find_on_path("bpf-linker") else {
        return Ok(Some("not on PATH".into()));
    };
    let version = cmd::capture(Command::new(&linker).arg("--version"))?;
    if !version.success {
        return Ok(Some(format!(
            "{} does not run: {}",
            linker.display(),
            version.stderr.trim()
        )));
    }
    let needed = elf_entries(&linker, "NEEDED")?;
    if let Some(other) = needed.iter().find(|lib| lib.starts_with("libLLVM"))
        && *other != llvm.soname
    {
        return Ok(Some(format!(
            "built for {other}, but nightly uses {}",
            llvm.soname
        )));
    }
    Ok(None)
}

fn bpf_linker(nightly: &Nightly) -> Result<()> {
    let llvm = lib_llvm(nightly)?;
    let status = match bpf_linker_problem(&llvm)? {
        None => Status::Ok,
        Some(problem) => {
            println!(
                "bpf-linker: {problem}; building it against nightly's LLVM {}",
                nightly.llvm_major
            );
            install_bpf_linker(nightly, &llvm)?;
            if let Some(problem) = bpf_linker_problem(&llvm)? {
                bail!(
                    "bpf-linker was installed but {problem}; is ~/.cargo/bin on PATH? (`source ~/.cargo/env`)"
                );
            }
            Status::Installed
        }
    };
    let version = cmd::stdout(Command::new("bpf-linker").arg("--version"))?;
    report(
        &status,
        &format!("{} (LLVM {})", version.trim(), nightly.llvm_major),
    );
    Ok(())
}

/// `cargo install bpf-linker` against the nightly toolchain's own libLLVM,
/// found through a prefix directory whose `lib/` links to it. The prefix stays:
/// bpf-linker's run path points into it.
fn install_bpf_linker(nightly: &Nightly, llvm: &LibLlvm) -> Result<()> {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .context(
            "neither XDG_CACHE_HOME nor HOME is set: cannot choose where to keep the LLVM prefix",
        )?;
    let prefix = cache.join("filter-llvm-prefix");
    let lib = prefix.join("lib");
    if prefix.exists() {
        fs::remove_dir_all(&prefix)
            .with_context(|| format!("cannot remove the old LLVM prefix {}", prefix.display()))?;
    }
    fs::create_dir_all(&lib).with_context(|| format!("cannot create {}", lib.display()))?;
    for name in ["libLLVM.so", llvm.soname.as_str()] {
        let link = lib.join(name);
        if !link.exists() {
            std::os::unix::fs::symlink(&llvm.path, &link)
                .with_context(|| format!("cannot create the symlink {}", link.display()))?;
        }
    }
    let mut install = cmd::cargo();
    install
        .env("LLVM_PREFIX", &prefix)
        .args([
            "install",
            "bpf-linker",
            "--force",
            "--version",
            BPF_LINKER_VERSION,
        ])
        .args(["--no-default-features", "--features"])
        .arg(format!("llvm-{}", nightly.llvm_major));
    cmd::run(&mut install)
        .with_context(|| format!("building bpf-linker against {} failed", llvm.path.display()))
}

/// `cargo fuzz` (cargo-fuzz), which `cargo xtask fuzz` runs: built with the
/// toolchain running xtask, from the versions its lock file names.
fn cargo_fuzz() -> Result<()> {
    let status = if cmd::find_on_path("cargo-fuzz").is_some() {
        Status::Ok
    } else {
        cmd::run(cmd::cargo().args(["install", "--locked", "cargo-fuzz"]))
            .context("installing cargo-fuzz failed (the fuzz targets need it)")?;
        ensure!(
            cmd::find_on_path("cargo-fuzz").is_some(),
            "cargo-fuzz was installed but is not on PATH; is ~/.cargo/bin on PATH? (`source ~/.cargo/env`)"
        );
        Status::Installed
    };
    let version = cmd::stdout(Command::new("cargo-fuzz").arg("--version"))?;
    report(&status, version.trim());
    Ok(())
}

/// The cargo-deb version `cargo xtask package` uses: 3.8.0 builds with Rust
/// 1.95 (its MSRV is 1.85); pinned so every machine makes the same package.
const CARGO_DEB_VERSION: &str = "3.8.0";

/// `cargo deb` (cargo-deb), which `cargo xtask package` runs: installed at
/// [`CARGO_DEB_VERSION`] from the versions its lock file names, replaced
/// when another version is on `PATH`.
fn cargo_deb() -> Result<()> {
    let installed = || -> Result<Option<String>> {
        if cmd::find_on_path("cargo-deb").is_none() {
            return Ok(None);
        }
        let version = cmd::stdout(Command::new("cargo-deb").arg("--version"))?;
        Ok(Some(version.trim().to_owned()))
    };
    let wanted = |version: &str| version.split_whitespace().any(|w| w == CARGO_DEB_VERSION);
    let status = if installed()?.is_some_and(|v| wanted(&v)) {
        Status::Ok
    } else {
        cmd::run(cmd::cargo().args([
            "install",
            "--locked",
            "--force",
            "--version",
            CARGO_DEB_VERSION,
            "cargo-deb",
        ]))
        .context("installing cargo-deb failed (`cargo xtask package` needs it)")?;
        ensure!(
            installed()?.is_some_and(|v| wanted(&v)),
            "cargo-deb {CARGO_DEB_VERSION} was installed but is not the one on PATH; is ~/.cargo/bin on PATH? (`source ~/.cargo/env`)"
        );
        Status::Installed
    };
    report(&status, &format!("cargo-deb {CARGO_DEB_VERSION}"));
    Ok(())
}
