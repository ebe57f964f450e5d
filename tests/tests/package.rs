//! The Debian package `cargo xtask package` builds (cargo-deb): its control
//! data (`dpkg-deb -I`: package name and version, the conffile, the
//! postinst that makes the state directory root-only), its files and their
//! modes (`dpkg-deb -c`), and what it installs, extracted with `dpkg-deb -x`
//! into a scratch root: the binary answers `--version` and passes `policy
//! check` on the shipped example, the man page and the bash, zsh and fish
//! completions are there and not trivial. Mirrors `xtask/src/package.rs`
//! and `[package.metadata.deb]` in `filter-ctl/Cargo.toml`.

use std::{
    fs,
    io::Read as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use filter_tests::netns::{is_root, unique_id};

/// Building the release binary from scratch on a busy 2-core machine, and
/// the package: more than enough when the binary is fresh (seconds).
const BUILD_TIMEOUT: Duration = Duration::from_mins(20);

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn on_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(name).is_file()))
}

/// Runs `cargo xtask package` (bounded by [`BUILD_TIMEOUT`]) and returns
/// the .deb it prints.
fn build_package() -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut child = Command::new(cargo)
        .current_dir(workspace())
        .args(["xtask", "package"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting cargo xtask package");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for cargo xtask package") {
            break status;
        }
        if start.elapsed() > BUILD_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("cargo xtask package took more than {BUILD_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .expect("piped stdout")
        .read_to_string(&mut stdout)
        .expect("reading cargo xtask package's output");
    assert!(
        status.success(),
        "cargo xtask package failed ({status}):\n{stdout}"
    );
    let deb = stdout
        .lines()
        .map(str::trim)
        .next_back()
        .map(PathBuf::from)
        .expect("cargo xtask package printed nothing");
    assert!(
        deb.extension().is_some_and(|e| e == "deb") && deb.is_file(),
        "cargo xtask package's last line is not a .deb: {}",
        deb.display()
    );
    deb
}

fn run(program: impl AsRef<std::ffi::OsStr>, args: &[&std::ffi::OsStr]) -> String {
    let program = Path::new(program.as_ref());
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", program.display()));
    assert!(
        out.status.success(),
        "{} {args:?} failed ({}):\n{}{}",
        program.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        let dir = PathBuf::from(format!(
            "/tmp/ft-package-{}-{}",
            std::process::id(),
            unique_id()
        ));
        fs::create_dir_all(&dir).expect("creating the scratch root");
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The mode string and size `dpkg-deb -c` lists for `path` (`./usr/...`).
fn listed<'a>(listing: &'a str, path: &str) -> (&'a str, u64) {
    let line = listing
        .lines()
        .find(|line| line.split_whitespace().nth(5) == Some(path))
        .unwrap_or_else(|| panic!("{path} is not in the package:\n{listing}"));
    let fields: Vec<&str> = line.split_whitespace().collect();
    (fields[0], fields[2].parse().expect("a size"))
}

#[test]
fn package_installs_a_working_filter_ctl() {
    if !is_root() {
        eprintln!(
            "skipped: needs root (the extracted files keep root ownership, which `policy check` requires)"
        );
        return;
    }
    for tool in ["cargo-deb", "dpkg-deb"] {
        if !on_path(tool) {
            assert!(
                std::env::var_os("CI").is_none(),
                "{tool} is not on PATH in CI: `cargo xtask setup` installs it"
            );
            eprintln!("skipped: {tool} is not on PATH (`cargo xtask setup` installs it)");
            return;
        }
    }
    let deb = build_package();
    let deb = deb.as_os_str();

    let info = run("dpkg-deb", &["-I".as_ref(), deb]);
    assert!(info.contains(" Package: filter-ctl\n"), "{info}");
    assert!(
        info.contains(&format!(" Version: {}", env!("CARGO_PKG_VERSION"))),
        "{info}"
    );
    let conffiles = run("dpkg-deb", &["-I".as_ref(), deb, "conffiles".as_ref()]);
    assert_eq!(
        conffiles.lines().collect::<Vec<_>>(),
        ["/etc/filter-ctl/policy.example.toml"],
        "conffiles"
    );
    let postinst = run("dpkg-deb", &["-I".as_ref(), deb, "postinst".as_ref()]);
    assert!(
        postinst.contains("install -d -o root -g root -m 0700 /var/lib/filter-ctl"),
        "postinst makes the state directory root-only:\n{postinst}"
    );

    let listing = run("dpkg-deb", &["-c".as_ref(), deb]);
    for (path, mode) in [
        ("./usr/sbin/filter-ctl", "-rwxr-xr-x"),
        ("./usr/lib/systemd/system/filter-ctl.service", "-rw-r--r--"),
        ("./etc/filter-ctl/policy.example.toml", "-rw-r--r--"),
        ("./usr/share/man/man1/filter-ctl.1.gz", "-rw-r--r--"),
        (
            "./usr/share/bash-completion/completions/filter-ctl",
            "-rw-r--r--",
        ),
        (
            "./usr/share/zsh/vendor-completions/_filter-ctl",
            "-rw-r--r--",
        ),
        (
            "./usr/share/fish/vendor_completions.d/filter-ctl.fish",
            "-rw-r--r--",
        ),
    ] {
        assert_eq!(listed(&listing, path).0, mode, "mode of {path}");
    }
    assert!(
        listing.lines().all(|line| line.contains(" 0/0 ")),
        "every file root-owned:\n{listing}"
    );

    let root = Scratch::new();
    run("dpkg-deb", &["-x".as_ref(), deb, root.0.as_os_str()]);
    let binary = root.0.join("usr/sbin/filter-ctl");
    let version = run(&binary, &["--version".as_ref()]);
    assert_eq!(
        version.trim(),
        format!("filter-ctl {}", env!("CARGO_PKG_VERSION"))
    );
    let example = root.0.join("etc/filter-ctl/policy.example.toml");
    run(
        &binary,
        &["policy".as_ref(), "check".as_ref(), example.as_os_str()],
    );

    // The shipped unit is the repository's.
    let unit = fs::read_to_string(root.0.join("usr/lib/systemd/system/filter-ctl.service"))
        .expect("reading the installed unit");
    let ours = fs::read_to_string(workspace().join("deploy/systemd/filter-ctl.service"))
        .expect("reading deploy/systemd/filter-ctl.service");
    assert_eq!(unit, ours, "the installed unit");
    assert!(
        unit.contains("ExecStart=/usr/sbin/filter-ctl run"),
        "{unit}"
    );

    let man = run(
        "gzip",
        &[
            "-dc".as_ref(),
            root.0
                .join("usr/share/man/man1/filter-ctl.1.gz")
                .as_os_str(),
        ],
    );
    assert!(
        man.starts_with(".ie") || man.contains(".TH filter-ctl"),
        "{man}"
    );
    for section in ["SYNOPSIS", "SUBCOMMANDS", "EXIT STATUS"] {
        assert!(man.contains(section), "the man page has no {section}");
    }
    assert!(man.len() > 2000, "a man page of {} bytes", man.len());

    for path in [
        "usr/share/bash-completion/completions/filter-ctl",
        "usr/share/zsh/vendor-completions/_filter-ctl",
        "usr/share/fish/vendor_completions.d/filter-ctl.fish",
    ] {
        let script = fs::read_to_string(root.0.join(path)).expect("reading a completion");
        for word in ["filter-ctl", "block", "policy", "rollback", "metrics-addr"] {
            assert!(script.contains(word), "{path} does not complete {word}");
        }
    }
}
