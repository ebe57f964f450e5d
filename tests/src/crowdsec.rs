//! A real `CrowdSec` Local API (LAPI) for the bouncer tests: `crowdsec -c
//! CONFIG -no-cs` alone (no agent, no central API), its `SQLite` database
//! and data under a directory of its own, listening on loopback inside a
//! test's network namespace. `cscli` adds the bouncer key and a machine
//! (for `cscli decisions add/delete`). The guard kills the LAPI and removes
//! its directory on drop, also on panic.
//!
//! The binaries are unpacked by `cargo xtask setup` (see `xtask/src/setup.rs`).

use std::{
    fs,
    net::{SocketAddr, TcpStream},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::netns::{NetNs, in_netns, unique_id};

/// Where `cargo xtask setup` unpacks `CrowdSec`.
pub const CROWDSEC_DIR: &str = "/opt/filter-ctl-deps/crowdsec";
/// The LAPI's port inside the test's namespace (each test has its own).
pub const PORT: u16 = 8080;
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long [`Lapi::cscli`] tries again after `SQLite`'s lock error.
const CSCLI_LOCKED_FOR: Duration = Duration::from_secs(10);

/// `crowdsec`'s path, if setup unpacked it.
#[must_use]
pub fn binaries() -> Option<(PathBuf, PathBuf)> {
    let dir = Path::new(CROWDSEC_DIR).join("usr/bin");
    let (lapi, cscli) = (dir.join("crowdsec"), dir.join("cscli"));
    (lapi.is_file() && cscli.is_file()).then_some((lapi, cscli))
}

/// Whether to skip: says why when `CrowdSec` is missing.
#[must_use]
pub fn skip_unless_crowdsec(test: &str) -> bool {
    if binaries().is_none() {
        eprintln!(
            "skipping {test}: CrowdSec is not unpacked in {CROWDSEC_DIR} (run `cargo xtask setup`)"
        );
        return true;
    }
    false
}

/// A running LAPI.
pub struct Lapi {
    dir: PathBuf,
    netns: PathBuf,
    child: Option<Child>,
    /// The bouncer key file (root-only, 0600).
    pub key_file: PathBuf,
}

impl Lapi {
    /// Configures and starts a LAPI in `ns`, adds a bouncer (its key in
    /// [`Lapi::key_file`]) and a machine for `cscli decisions`.
    #[must_use]
    pub fn start(ns: &NetNs, tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "ft-crowdsec-{tag}-{}-{}",
            std::process::id(),
            unique_id()
        ));
        fs::create_dir_all(dir.join("data")).expect("creating the LAPI directory");
        fs::create_dir_all(dir.join("cfg")).expect("creating the LAPI directory");
        let mut lapi = Self {
            key_file: dir.join("bouncer.key"),
            dir,
            netns: ns.path(),
            child: None,
        };
        let etc = Path::new(CROWDSEC_DIR).join("etc/crowdsec");
        for file in ["profiles.yaml", "simulation.yaml"] {
            fs::copy(etc.join(file), lapi.dir.join("cfg").join(file))
                .unwrap_or_else(|e| panic!("copying {file}: {e}"));
        }
        fs::write(lapi.config(), lapi.config_text()).expect("writing the LAPI config");
        lapi.spawn(ns);
        let key = lapi.cscli(&["bouncers", "add", &format!("filter-{tag}"), "-o", "raw"]);
        assert!(key.status.success(), "cscli bouncers add: {}", text(&key));
        fs::write(&lapi.key_file, String::from_utf8_lossy(&key.stdout).trim())
            .expect("writing the key");
        fs::set_permissions(&lapi.key_file, fs::Permissions::from_mode(0o600))
            .expect("chmod 600 the key");
        let credentials = lapi.dir.join("cfg/local_api_credentials.yaml");
        let machine = lapi.cscli(&[
            "machines",
            "add",
            &format!("m-{tag}"),
            "--auto",
            "--force",
            "-f",
            &credentials.display().to_string(),
            "--url",
            &lapi.url(),
        ]);
        assert!(
            machine.status.success(),
            "cscli machines add: {}",
            text(&machine)
        );
        lapi
    }

    /// `http://127.0.0.1:PORT` (inside the namespace).
    #[must_use]
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{PORT}")
    }

    fn config(&self) -> PathBuf {
        self.dir.join("config.yaml")
    }

    fn config_text(&self) -> String {
        let d = self.dir.display();
        format!(
            "common:
  daemonize: false
  log_media: stdout
  log_level: info
  working_dir: {d}
config_paths:
  config_dir: {d}/cfg/
  data_dir: {d}/data/
  simulation_path: {d}/cfg/simulation.yaml
  hub_dir: {d}/hub/
  index_path: {d}/hub/.index.json
  notification_dir: {d}/cfg/notifications/
  plugin_dir: {d}/plugins/
crowdsec_service:
  acquisition_path: {d}/cfg/acquis.yaml
cscli:
  output: human
db_config:
  log_level: info
  type: sqlite
  db_path: {d}/data/crowdsec.db
  use_wal: true
api:
  client:
    insecure_skip_verify: false
    credentials_path: {d}/cfg/local_api_credentials.yaml
  server:
    log_level: info
    listen_uri: 127.0.0.1:{PORT}
    profiles_path: {d}/cfg/profiles.yaml
    trusted_ips:
      - 127.0.0.1
prometheus:
  enabled: false
"
        )
    }

    fn nsenter(&self, program: &Path) -> Command {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net={}", self.netns.display()))
            .arg(program)
            .current_dir(&self.dir);
        command
    }

    /// Starts the LAPI in `ns` (the namespace it was created for) and waits
    /// (bounded) until it accepts connections.
    pub fn spawn(&mut self, ns: &NetNs) {
        assert!(self.child.is_none(), "the LAPI already runs");
        let (lapi, _) = binaries().expect("CrowdSec unpacked");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("lapi.log"))
            .expect("opening the LAPI log");
        let child = self
            .nsenter(&lapi)
            .arg("-c")
            .arg(self.config())
            .arg("-no-cs")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("starting crowdsec");
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        let addr = SocketAddr::from(([127, 0, 0, 1], PORT));
        while !in_netns(ns, || {
            TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        }) {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("the LAPI exited ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "the LAPI did not listen within {START_TIMEOUT:?}:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills the LAPI (its database stays: [`Lapi::spawn`] starts it again).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The LAPI's log so far.
    #[must_use]
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("lapi.log")).unwrap_or_default()
    }

    /// Runs `cscli -c CONFIG ARGS` in the namespace. `SQLite`'s "database
    /// is locked" (a write that raced the running LAPI's own use of the
    /// database) fails the command as a whole, so it is tried again, for up
    /// to [`CSCLI_LOCKED_FOR`]; any other outcome is returned as it is.
    pub fn cscli(&self, args: &[&str]) -> Output {
        let deadline = Instant::now() + CSCLI_LOCKED_FOR;
        let mut pause = Duration::from_millis(100);
        loop {
            let out = self.cscli_once(args);
            if out.status.success()
                || !text(&out).contains("database is locked")
                || Instant::now() >= deadline
            {
                return out;
            }
            thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }

    /// Runs `cscli ARGS` (as [`Lapi::cscli`]) and asserts that it succeeded.
    pub fn cscli_ok(&self, args: &[&str]) {
        let out = self.cscli(args);
        assert!(out.status.success(), "cscli {args:?}: {}", text(&out));
    }

    fn cscli_once(&self, args: &[&str]) -> Output {
        let (_, cscli) = binaries().expect("CrowdSec unpacked");
        self.nsenter(&cscli)
            .arg("-c")
            .arg(self.config())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running cscli")
    }
}

impl Drop for Lapi {
    fn drop(&mut self) {
        self.stop();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
