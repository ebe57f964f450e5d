//! `filter-ctl policy check` on the real binary: every shipped example
//! policy passes (as root and as the unprivileged user `nobody`: checking
//! needs no pins, no bpffs and no root), and each kind of invalid policy
//! fails with exit code 2, naming the file, line and column of the problem
//! (file and line in a list file). Mirrors `filter-ctl/src/spec/policy.rs`
//! and `filter-ctl/src/cmd/policy.rs`.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use filter_tests::{
    ctl::{Ctl, binary},
    netns::{is_root, unique_id},
};
use serde_json::Value;

/// Exit code of invalid input.
const BAD_INPUT: i32 = 2;

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// The example policies, sorted.
fn examples() -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir(examples_dir())
        .expect("reading examples/")
        .map(|entry| entry.expect("an entry of examples/").path())
        .filter(|path| path.extension().is_some_and(|e| e == "toml"))
        .collect();
    found.sort();
    found
}

/// A directory of its own under the system's temporary directory, that
/// every user can read; removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "filter-policy-check-{}-{}",
            std::process::id(),
            unique_id()
        ));
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        chmod(&dir, 0o755);
        Self(dir)
    }

    /// Writes `text` to `name` (mode 0644) and returns its path.
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).unwrap();
            chmod(parent, 0o755);
        }
        fs::write(&path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        chmod(&path, 0o644);
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

fn check(path: &Path, extra: &[&str]) -> Output {
    let mut command = Command::new(binary());
    command.args(["policy", "check"]).args(extra).arg(path);
    command
        .output()
        .unwrap_or_else(|e| panic!("running {command:?}: {e}"))
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `sha256sum`'s digest of `path`.
fn sha256sum(path: &Path) -> String {
    let output = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("running sha256sum");
    assert!(output.status.success(), "sha256sum {}", path.display());
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .next()
        .expect("sha256sum printed a digest")
        .to_string()
}

#[test]
fn every_example_passes() {
    let examples = examples();
    for name in ["mail-relay", "dns-resolver", "internal-api", "lab"] {
        assert!(
            examples
                .iter()
                .any(|p| p.file_stem().is_some_and(|s| s == name)),
            "examples/{name}.toml is missing"
        );
    }
    for path in &examples {
        let output = check(path, &[]);
        assert!(
            output.status.success(),
            "policy check {} failed ({}):\n{}",
            path.display(),
            output.status,
            text(&output)
        );
        let output = check(path, &["--json"]);
        assert!(output.status.success(), "{}", text(&output));
        let summary: Value = serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|e| panic!("bad JSON ({e}): {}", text(&output)));
        assert_eq!(
            summary["sha256"].as_str(),
            Some(sha256sum(path).as_str()),
            "{}: the summary's SHA-256 is not sha256sum's",
            path.display()
        );
        assert!(
            summary["rules"].as_array().is_some_and(|r| !r.is_empty()),
            "{}: no rules in {summary}",
            path.display()
        );
        for file in summary["list_files"].as_array().into_iter().flatten() {
            let list = Path::new(file["path"].as_str().expect("a list file path"));
            assert!(
                list.starts_with(examples_dir()),
                "{} names a list file outside examples/: {}",
                path.display(),
                list.display()
            );
            assert_eq!(file["sha256"].as_str(), Some(sha256sum(list).as_str()));
        }
    }
}

#[test]
fn checking_needs_no_root() {
    if !is_root() {
        eprintln!("skipped: switching to the user nobody needs root");
        return;
    }
    // A copy of the examples that nobody can read (the work tree may sit
    // below a root-only directory).
    let dir = TempDir::new();
    for path in examples() {
        let name = path.file_name().unwrap().to_str().unwrap();
        dir.write(name, &fs::read_to_string(&path).unwrap());
    }
    for entry in fs::read_dir(examples_dir().join("lists")).unwrap() {
        let path = entry.unwrap().path();
        let name = format!("lists/{}", path.file_name().unwrap().to_str().unwrap());
        dir.write(&name, &fs::read_to_string(&path).unwrap());
    }
    // A pin directory that does not exist: checking must not need one.
    let ctl = Ctl::new("policy");
    for path in examples() {
        let copy = dir.0.join(path.file_name().unwrap());
        let output = ctl.cmd_as_nobody(&["policy", "check", copy.to_str().unwrap()]);
        assert!(
            output.status.success(),
            "policy check {} as nobody failed ({}):\n{}",
            copy.display(),
            output.status,
            text(&output)
        );
    }
    assert!(!ctl.pin_dir().exists(), "policy check created pins");
}

/// Runs `policy check` on `policy` (with list files `lists`) and returns
/// its stderr, asserting exit code 2.
fn refused(policy: &str, lists: &[(&str, &str)]) -> (TempDir, PathBuf, String) {
    let dir = TempDir::new();
    let path = dir.write("policy.toml", policy);
    for (name, text) in lists {
        dir.write(name, text);
    }
    let stderr = refused_at(&path);
    (dir, path, stderr)
}

fn refused_at(path: &Path) -> String {
    let output = check(path, &[]);
    assert_eq!(
        output.status.code(),
        Some(BAD_INPUT),
        "policy check {} should exit with 2:\n{}",
        path.display(),
        text(&output)
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Asserts that a line of `stderr` starts with `location` and contains `needle`.
fn names(stderr: &str, location: &str, needle: &str) {
    assert!(
        stderr
            .lines()
            .any(|line| line.starts_with(location) && line.contains(needle)),
        "no line starting with {location:?} and saying {needle:?} in:\n{stderr}"
    );
}

#[test]
fn a_syntax_error_is_located() {
    let (_dir, path, stderr) = refused("interfaces = [\"eth1\"\n[block]\n", &[]);
    assert!(
        stderr.contains(&format!("{}:1:", path.display()))
            || stderr.contains(&format!("{}:2:", path.display())),
        "{stderr}"
    );
    let (_dir, path, stderr) = refused("interfaces = [\"eth1\"]\nmode = auto\n", &[]);
    names(&stderr, &format!("{}:2:8:", path.display()), "");
}

#[test]
fn an_unknown_key_is_located() {
    // A misspelt key must never silently disable a rule.
    let policy = "[limits.default]\nrate = 10\n[[limits.port]]\nport = \"tcp/25\"\nrate = 10\nautoblock_afer = 100\n";
    let (_dir, path, stderr) = refused(policy, &[]);
    names(
        &stderr,
        &format!("{}:6:1:", path.display()),
        "autoblock_afer",
    );
    // Within a section too: `[crowdsec]` has url, api_key_file, poll_interval.
    let (_dir, path, stderr) = refused(
        "interfaces = []\n[crowdsec]\nurl = \"http://127.0.0.1:8080\"\napi_key_file = \"k\"\nenabled = true\n",
        &[],
    );
    names(&stderr, &format!("{}:5:1:", path.display()), "enabled");
}

#[test]
fn a_bad_cidr_is_located() {
    let policy = "[block]\nentries = [\"203.0.113.0/24\",\n  \"198.51.100.0/33\"]\n";
    let (_dir, path, stderr) = refused(policy, &[]);
    names(
        &stderr,
        &format!("{}:3:3:", path.display()),
        "198.51.100.0/33",
    );
}

#[test]
fn overlapping_port_rules_name_both() {
    let policy = "[[limits.port]]\nport = \"tcp/20-30\"\nrate = 5\n\n[[limits.port]]\nport = \"tcp/25\"\nrate = 10\n";
    let (_dir, path, stderr) = refused(policy, &[]);
    names(&stderr, &format!("{}:6:8:", path.display()), "tcp/20-30");
    names(&stderr, &format!("{}:6:8:", path.display()), "tcp/25");
}

#[test]
fn every_problem_is_reported() {
    let policy = "mode = \"fast\"\n[block]\nentries = [\"nonsense\"]\n[[limits.port]]\nport = \"tcp/25\"\nrate = 0\n";
    let (_dir, path, stderr) = refused(policy, &[]);
    let shown = path.display();
    names(&stderr, &format!("{shown}:1:8:"), "fast");
    names(&stderr, &format!("{shown}:3:12:"), "nonsense");
    names(&stderr, &format!("{shown}:5:8:"), "rate");
}

#[test]
fn a_missing_list_file_is_located() {
    let (dir, path, stderr) = refused("[block]\nfiles = [\"lists/gone.txt\"]\n", &[]);
    names(
        &stderr,
        &format!("{}:2:10:", path.display()),
        &dir.0.join("lists/gone.txt").display().to_string(),
    );
}

#[test]
fn a_bad_line_in_a_list_file_is_located() {
    let (dir, _path, stderr) = refused(
        "[allow]\nfiles = [\"lists/keep.txt\"]\n",
        &[(
            "lists/keep.txt",
            "# ok\n198.51.100.1\n\n198.51.100.300 ; bad\n",
        )],
    );
    let list = dir.0.join("lists/keep.txt");
    names(&stderr, &format!("{}:4:", list.display()), "198.51.100.300");
}

#[test]
fn a_world_writable_file_is_refused() {
    let dir = TempDir::new();
    let path = dir.write("policy.toml", "[block]\nfiles = [\"drop.txt\"]\n");
    let list = dir.write("drop.txt", "192.0.2.1\n");
    assert!(check(&path, &[]).status.success());
    chmod(&path, 0o666);
    names(
        &refused_at(&path),
        &format!("{}:", path.display()),
        "writable by every user",
    );
    chmod(&path, 0o644);
    chmod(&list, 0o666);
    names(
        &refused_at(&path),
        &format!("{}:2:10:", path.display()),
        "writable by every user",
    );
}
