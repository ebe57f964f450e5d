//! A driver for the real `filter-ctl` binary: each [`Ctl`] owns a pin
//! directory of its own, runs CLI commands against it from the host
//! namespace (pins are found whatever the namespace), and starts controllers
//! inside a lab's namespace with `nsenter`.

use std::{
    io::{BufRead as _, BufReader, Read},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::{Arc, Mutex, OnceLock, PoisonError, mpsc},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::netns::{NetNs, unique_id};

/// How long `run` may take to attach before the test fails.
pub const ATTACH_TIMEOUT: Duration = Duration::from_secs(15);
/// How long [`Controller::shows`] waits for a line to reach its output.
pub const OUTPUT_WITHIN: Duration = Duration::from_secs(5);

static BINARY: OnceLock<PathBuf> = OnceLock::new();

/// The `filter-ctl` binary of the same build profile as the running test.
///
/// `FILTER_CTL_BIN` overrides the search (`cargo xtask test` builds the
/// binary once and sets it). Otherwise the binary is
/// `target/<profile>/filter-ctl` next to the test executable
/// (`target/<profile>/deps/…`). Cargo does not build a dependency's binaries
/// for a test, so when the tests run under cargo (`CARGO` is set) it is built
/// once per process with `cargo build -p filter-ctl` (a no-op when fresh; it
/// never tests a stale binary); without cargo it is built only if missing.
pub fn binary() -> &'static Path {
    BINARY.get_or_init(locate_binary)
}

fn locate_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("FILTER_CTL_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("path of the test executable");
    let mut dir = exe.parent().expect("test executable has a directory");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir.parent().expect("deps has a parent");
    }
    let candidate = dir.join("filter-ctl");
    let cargo = std::env::var_os("CARGO");
    if cargo.is_some() || !candidate.exists() {
        build_binary(
            cargo.map_or_else(|| PathBuf::from("cargo"), PathBuf::from),
            dir,
        );
    }
    assert!(
        candidate.exists(),
        "{} does not exist after building filter-ctl",
        candidate.display()
    );
    candidate
}

fn build_binary(cargo: PathBuf, profile_dir: &Path) {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .join("Cargo.toml");
    let mut command = Command::new(cargo);
    command
        .args(["build", "--quiet", "-p", "filter-ctl", "--manifest-path"])
        .arg(&manifest);
    if let (Some(profile), Some(target_dir)) = (profile_dir.file_name(), profile_dir.parent()) {
        command.arg("--target-dir").arg(target_dir);
        match profile.to_str() {
            Some("debug") | None => {}
            Some("release") => {
                command.arg("--release");
            }
            Some(other) => {
                command.args(["--profile", other]);
            }
        }
    }
    let status = command
        .status()
        .unwrap_or_else(|e| panic!("running {command:?}: {e}"));
    assert!(status.success(), "{command:?} failed: {status}");
}

/// One filter instance under its own pin directory
/// (`/sys/fs/bpf/ft-<tag>-<pid>-<n>`). On drop it runs `detach` (which
/// removes the pins) if the pin directory still exists, and removes the
/// runtime directory that `run` and editors keep in `/run/filter-ctl`, its
/// state directory and its policy directory. Checking
/// that nothing is left is the test's job: see [`Ctl::detach_and_check`].
#[derive(Debug)]
pub struct Ctl {
    pin_dir: PathBuf,
    /// Its own `--state-dir` (`/tmp/ft-state-<tag>-<pid>-<n>`), removed on drop.
    state_dir: PathBuf,
    /// Where [`Ctl::write_policy`] puts policy and list files
    /// (`/tmp/ft-policy-<tag>-<pid>-<n>`), removed on drop.
    policy_files: PathBuf,
}

impl Ctl {
    #[must_use]
    pub fn new(tag: &str) -> Self {
        let tag: String = tag.chars().take(16).collect();
        let id = format!("{tag}-{}-{}", std::process::id(), unique_id());
        Self {
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/ft-{id}")),
            state_dir: PathBuf::from(format!("/tmp/ft-state-{id}")),
            policy_files: PathBuf::from(format!("/tmp/ft-policy-{id}")),
        }
    }

    /// The state directory every command of this instance is given.
    #[must_use]
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    #[must_use]
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Writes `text` to `name` (a relative path, subdirectories allowed)
    /// in this instance's policy directory and returns its path. The file
    /// is owned by root (the tests run as root) with mode 0644, its
    /// directories 0755, as `policy apply` and `run --policy` require; an
    /// existing file is rewritten in place (same inode, same mode).
    pub fn write_policy(&self, name: &str, text: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt as _;
        let path = self.policy_files.join(name);
        let parent = path.parent().expect("a file has a directory");
        std::fs::create_dir_all(parent)
            .unwrap_or_else(|e| panic!("creating {}: {e}", parent.display()));
        for dir in parent
            .ancestors()
            .take_while(|d| d.starts_with(&self.policy_files))
        {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
                .unwrap_or_else(|e| panic!("chmod 755 {}: {e}", dir.display()));
        }
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))
            .unwrap_or_else(|e| panic!("chmod 644 {}: {e}", path.display()));
        path
    }

    /// The records of the audit log (`<state dir>/audit.jsonl`), oldest
    /// first; none if there is no log yet.
    #[must_use]
    pub fn audit_records(&self) -> Vec<Value> {
        let path = self.state_dir.join("audit.jsonl");
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
            Err(e) => panic!("reading {}: {e}", path.display()),
        };
        text.lines()
            .map(|line| {
                serde_json::from_str(line).unwrap_or_else(|e| {
                    panic!("{}: bad audit record ({e}): {line}", path.display())
                })
            })
            .collect()
    }

    /// How many audit records have `command`.
    #[must_use]
    pub fn audit_count(&self, command: &str) -> usize {
        self.audit_records()
            .iter()
            .filter(|r| r["command"] == command)
            .count()
    }

    /// `filter-ctl --pin-dir P` with `args`, ready to run in the host namespace.
    #[must_use]
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(binary());
        command
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .args(args);
        command
            .env_remove("FILTER_CTL_PIN_DIR")
            .env_remove("FILTER_CTL_STATE_DIR");
        command
    }

    /// Runs the CLI and returns its output, whatever the exit status.
    #[must_use]
    pub fn cmd(&self, args: &[&str]) -> Output {
        let mut command = self.command(args);
        command
            .output()
            .unwrap_or_else(|e| panic!("running {command:?}: {e}"))
    }

    /// Runs the CLI, panics unless it succeeds; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cmd(args);
        assert!(
            out.status.success(),
            "`filter-ctl {}` failed ({}):\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs the CLI, panics if it succeeds; returns stderr.
    pub fn fail(&self, args: &[&str]) -> String {
        let out = self.cmd(args);
        assert!(
            !out.status.success(),
            "`filter-ctl {}` should have failed but succeeded:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Runs the CLI and parses its stdout as JSON.
    #[must_use]
    pub fn json(&self, args: &[&str]) -> Value {
        let text = self.ok(args);
        serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!(
                "`filter-ctl {}` printed bad JSON ({e}): {text}",
                args.join(" ")
            )
        })
    }

    /// `stats --json`.
    #[must_use]
    pub fn stats_json(&self) -> Value {
        self.json(&["stats", "--json"])
    }

    /// Packets counted under `reason` (`pass`, `blocklist`, ...).
    #[must_use]
    pub fn packets(&self, reason: &str) -> u64 {
        packets(&self.stats_json(), reason)
    }

    /// `list --json`.
    #[must_use]
    pub fn list_json(&self) -> Value {
        self.json(&["list", "--json"])
    }

    /// `status --json`.
    #[must_use]
    pub fn status_json(&self) -> Value {
        self.json(&["status", "--json"])
    }

    /// Starts `run --iface IF…` inside `ns` and waits (at most
    /// [`ATTACH_TIMEOUT`]) until `status` shows it running with every
    /// interface attached.
    #[must_use]
    pub fn run_background(&self, ns: &NetNs, ifaces: &[&str]) -> Controller {
        self.run_background_with(ns, ifaces, &[])
    }

    /// [`Ctl::run_background`] with more `run` options.
    #[must_use]
    pub fn run_background_with(&self, ns: &NetNs, ifaces: &[&str], extra: &[&str]) -> Controller {
        let mut command = self.run_command(ns, ifaces);
        command.args(extra);
        self.spawn_controller(command, ifaces)
    }

    /// Starts `run --policy POLICY` (no `--iface`: it attaches to the
    /// policy's `interfaces`) inside `ns` and waits (at most
    /// [`ATTACH_TIMEOUT`]) until `status` shows it running with every one
    /// of `ifaces` attached.
    #[must_use]
    pub fn run_policy_background(&self, ns: &NetNs, policy: &Path, ifaces: &[&str]) -> Controller {
        self.run_policy_background_with(ns, policy, ifaces, &[])
    }

    /// [`Ctl::run_policy_background`] with `extra` arguments to `run`.
    #[must_use]
    pub fn run_policy_background_with(
        &self,
        ns: &NetNs,
        policy: &Path,
        ifaces: &[&str],
        extra: &[&str],
    ) -> Controller {
        let mut command = self.run_command(ns, &[]);
        command.arg("--policy").arg(policy).args(extra);
        self.spawn_controller(command, ifaces)
    }

    fn spawn_controller(&self, mut command: Command, ifaces: &[&str]) -> Controller {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting {command:?}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let out_log = Arc::new(Mutex::new(String::new()));
        let err_log = Arc::new(Mutex::new(String::new()));
        let readers = vec![
            pump(stdout, Arc::clone(&out_log), None),
            pump(stderr, Arc::clone(&err_log), None),
        ];
        let mut controller = Controller {
            child,
            out_log,
            err_log,
            readers,
        };
        let deadline = Instant::now() + ATTACH_TIMEOUT;
        loop {
            if !controller.is_running() {
                let status = controller.wait_exit(Duration::from_secs(5));
                panic!(
                    "`filter-ctl run` exited ({status:?}) before attaching:\n{}",
                    controller.output()
                );
            }
            if self.is_running_on(controller.pid(), ifaces) {
                return controller;
            }
            assert!(
                Instant::now() < deadline,
                "`filter-ctl run` did not attach within {ATTACH_TIMEOUT:?}:\n{}",
                controller.output()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether `status` shows the controller `pid` running (done starting)
    /// with every interface attached.
    fn is_running_on(&self, pid: u32, ifaces: &[&str]) -> bool {
        let out = self.cmd(&["status", "--json"]);
        if !out.status.success() {
            return false;
        }
        let Ok(status) = serde_json::from_slice::<Value>(&out.stdout) else {
            return false;
        };
        let attached = |name: &str| {
            status["interfaces"].as_array().is_some_and(|list| {
                list.iter()
                    .any(|i| i["name"] == name && i["state"] == "attached")
            })
        };
        status["controller_pid"] == pid
            && status["controller_state"] == "running"
            && ifaces.iter().all(|i| attached(i))
    }

    /// Runs `run ARGS` inside `ns` to completion (killed after `timeout`),
    /// for runs expected to fail.
    #[must_use]
    pub fn run_foreground(&self, ns: &NetNs, args: &[&str], timeout: Duration) -> Output {
        let mut command = self.nsenter(ns);
        command
            .arg("run")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting {command:?}: {e}"));
        let deadline = Instant::now() + timeout;
        loop {
            if child.try_wait().expect("waiting for filter-ctl").is_some() {
                break;
            }
            if Instant::now() >= deadline {
                child.kill().ok();
                let out = child.wait_with_output().expect("collecting output");
                panic!(
                    "`filter-ctl run {}` still running after {timeout:?}:\n{}{}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
        child.wait_with_output().expect("collecting output")
    }

    fn nsenter(&self, ns: &NetNs) -> Command {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net={}", ns.path().display()))
            .arg(binary())
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .env_remove("FILTER_CTL_PIN_DIR")
            .env_remove("FILTER_CTL_STATE_DIR")
            .env("RUST_LOG", "info");
        command
    }

    fn run_command(&self, ns: &NetNs, ifaces: &[&str]) -> Command {
        let mut command = self.nsenter(ns);
        command.arg("run");
        for iface in ifaces {
            command.args(["--iface", iface]);
        }
        command
    }

    /// Runs `detach` and asserts that it succeeded, that the pin directory is
    /// gone and that `ip link show` in `ns` shows no XDP program on `iface`.
    pub fn detach_and_check(&self, ns: &NetNs, iface: &str) {
        self.ok(&["detach"]);
        assert!(
            !self.pin_dir.exists(),
            "{} still exists after detach",
            self.pin_dir.display()
        );
        let link = ns.ip(&["link", "show", iface]);
        assert!(
            !link.contains("xdp"),
            "{iface} still has an XDP program after detach:\n{link}"
        );
    }

    /// The runtime directory `run` and the editors keep in /run/filter-ctl
    /// for this pin directory (controller state, journal).
    #[must_use]
    pub fn runtime_dir(&self) -> PathBuf {
        let name: String = self
            .pin_dir
            .to_string_lossy()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        PathBuf::from("/run/filter-ctl").join(name)
    }

    /// Runs the CLI as the unprivileged user `nobody` (uid and gid 65534,
    /// no supplementary groups), from a copy of the binary that user can
    /// execute.
    #[must_use]
    pub fn cmd_as_nobody(&self, args: &[&str]) -> Output {
        let mut command = Command::new("setpriv");
        command
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(nobody_binary())
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .args(args)
            .env_remove("FILTER_CTL_PIN_DIR")
            .env_remove("FILTER_CTL_STATE_DIR");
        command
            .output()
            .unwrap_or_else(|e| panic!("running {command:?}: {e}"))
    }
}

/// A copy of the binary in a directory every user can reach (the build
/// directory may sit below a root-only home).
fn nobody_binary() -> &'static Path {
    static COPY: OnceLock<PathBuf> = OnceLock::new();
    COPY.get_or_init(|| {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("filter-ctl-nobody-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("creating the copy's directory");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
            .expect("opening the copy's directory");
        let copy = dir.join("filter-ctl");
        std::fs::copy(binary(), &copy).expect("copying filter-ctl");
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755))
            .expect("making the copy executable");
        copy
    })
}

impl Drop for Ctl {
    fn drop(&mut self) {
        if self.pin_dir.exists() {
            let out = self.cmd(&["detach"]);
            if !out.status.success() {
                eprintln!(
                    "warning: cleanup `filter-ctl --pin-dir {} detach` failed: {}",
                    self.pin_dir.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
        std::fs::remove_dir_all(self.runtime_dir()).ok();
        std::fs::remove_dir_all(&self.state_dir).ok();
        std::fs::remove_dir_all(&self.policy_files).ok();
    }
}

/// Packets counted under `reason` in a `stats --json` document.
#[must_use]
pub fn packets(stats: &Value, reason: &str) -> u64 {
    stats["reasons"][reason]["packets"]
        .as_u64()
        .unwrap_or_else(|| panic!("stats has no reasons.{reason}.packets: {stats}"))
}

fn pump(
    stream: impl Read + Send + 'static,
    log: Arc<Mutex<String>>,
    lines: Option<mpsc::Sender<String>>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        // Ends at EOF, when the process exits.
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            {
                let mut log = log.lock().unwrap_or_else(PoisonError::into_inner);
                log.push_str(&line);
                log.push('\n');
            }
            if let Some(tx) = &lines {
                tx.send(line).ok();
            }
        }
    })
}

/// A running `filter-ctl run`; killed (SIGKILL) on drop if still running.
#[derive(Debug)]
pub struct Controller {
    child: Child,
    out_log: Arc<Mutex<String>>,
    err_log: Arc<Mutex<String>>,
    readers: Vec<thread::JoinHandle<()>>,
}

impl Controller {
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether its output shows `needle` within [`OUTPUT_WITHIN`]: what it
    /// printed reaches [`Controller::output`] through reader threads, a
    /// moment after the event it tells of.
    #[must_use]
    pub fn shows(&self, needle: &str) -> bool {
        let deadline = Instant::now() + OUTPUT_WITHIN;
        loop {
            if self.output().contains(needle) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Everything it printed so far (stdout, then stderr).
    #[must_use]
    pub fn output(&self) -> String {
        let out = self
            .out_log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let err = self
            .err_log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        format!("--- stdout\n{out}--- stderr\n{err}")
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .try_wait()
            .expect("waiting for filter-ctl")
            .is_none()
    }

    /// How it exited, if it did (`None` while it runs).
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("waiting for filter-ctl")
    }

    /// Sends `signal` and waits (bounded) for the exit.
    pub fn signal(&mut self, signal: libc::c_int) -> ExitStatus {
        if self.is_running() {
            let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
            // SAFETY: signalling our own child, which has not been reaped yet.
            unsafe { libc::kill(pid, signal) };
        }
        self.wait_exit(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("filter-ctl ignored signal {signal}:\n{}", self.output()))
    }

    /// Sends `signal` without waiting for anything (SIGHUP: reload).
    pub fn send_signal(&mut self, signal: libc::c_int) {
        assert!(
            self.is_running(),
            "filter-ctl exited before signal {signal}:\n{}",
            self.output()
        );
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: signalling our own child, which has not been reaped yet.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(
            rc,
            0,
            "kill({pid}, {signal}): {}",
            std::io::Error::last_os_error()
        );
    }

    /// SIGKILL: the controller dies without any cleanup.
    pub fn kill9(&mut self) -> ExitStatus {
        self.signal(libc::SIGKILL)
    }

    /// SIGTERM: the controller stops cleanly, leaving the filter attached.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM)
    }

    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for filter-ctl") {
                for reader in self.readers.drain(..) {
                    reader.join().ok();
                }
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        if self.is_running() {
            self.child.kill().ok();
            self.child.wait().ok();
        }
    }
}
