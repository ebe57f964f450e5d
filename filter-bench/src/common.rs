//! What every part of the benchmark shares: the run's environment (paths,
//! options, the log of commands), statistics, and RAII guards for everything
//! a part creates (loaded filters, controllers, xdp-filter instances).

use std::{
    cell::RefCell,
    collections::BTreeSet,
    fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::Ordering,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use aya::{Ebpf, programs::loaded_programs};
use filter_common::xdp_action;
use filter_ctl::{
    maps::loader::{self, Capacities, PROGRAM},
    maps::pins::PinDir,
};
use filter_devtools::{check_interrupted, display, terminate_with_parent};
use filter_tests::netns::NetNs;

/// The run's settings and shared state.
pub struct Env {
    pub quick: bool,
    /// Rounds of every interleaved measurement.
    pub rounds: usize,
    pub filter_ctl: PathBuf,
    /// Scratch directory (frames, list files), removed at the end.
    pub work: PathBuf,
    /// Every distinct command run, in order of first use (the report lists them).
    commands: RefCell<Vec<String>>,
    command_keys: RefCell<BTreeSet<String>>,
    /// Verdict and sanity failures; any of them fails the run.
    failures: RefCell<Vec<String>>,
}

impl Env {
    pub fn new(quick: bool, rounds: usize, filter_ctl: PathBuf) -> Result<Self> {
        let work = PathBuf::from(format!("/tmp/fbench-{}", std::process::id()));
        fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
        Ok(Self {
            quick,
            rounds,
            filter_ctl,
            work,
            commands: RefCell::default(),
            command_keys: RefCell::default(),
            failures: RefCell::default(),
        })
    }

    /// Records a command line for the report: one example of each kind of
    /// command (program, subcommand and option flags).
    pub fn record(&self, line: &str) {
        let mut program = None;
        let mut subcommand = None;
        let mut flags = Vec::new();
        let mut skip_next = false;
        for word in line.split_whitespace() {
            if std::mem::take(&mut skip_next)
                || word == "nsenter"
                || word.starts_with("--net=")
                || word.starts_with("--mount=")
            {
                continue;
            }
            if word == "--pin-dir" {
                skip_next = true;
            } else if program.is_none() {
                program = Some(word.rsplit('/').next().unwrap_or(word));
            } else if word.starts_with('-') {
                flags.push(word);
            } else if subcommand.is_none() {
                subcommand = Some(word);
            }
        }
        let key = format!(
            "{} {} {}",
            program.unwrap_or_default(),
            subcommand.unwrap_or_default(),
            flags.join(" ")
        );
        if self.command_keys.borrow_mut().insert(key) {
            self.commands.borrow_mut().push(line.to_string());
        }
    }

    pub fn commands(&self) -> Vec<String> {
        self.commands.borrow().clone()
    }

    /// Notes a failure (wrong verdict, packet that got through); the run goes
    /// on so that the report shows everything, then fails.
    pub fn fail(&self, what: String) {
        eprintln!("FAILURE: {what}");
        self.failures.borrow_mut().push(what);
    }

    pub fn failures(&self) -> Vec<String> {
        self.failures.borrow().clone()
    }

    /// Runs `command`, recording it; returns stdout, or fails quoting stderr.
    pub fn run(&self, command: &mut Command) -> Result<String> {
        check_interrupted()?;
        let line = display(command);
        self.record(&line);
        let out = command
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("starting `{line}`"))?;
        if !out.status.success() {
            bail!(
                "`{line}` failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `filter-ctl --pin-dir PINS ARGS` in the host namespace.
    pub fn ctl(&self, pins: &PinDir, args: &[&str]) -> Command {
        let mut command = Command::new(&self.filter_ctl);
        command
            .arg("--pin-dir")
            .arg(pins.root())
            .args(args)
            .env_remove("FILTER_CTL_PIN_DIR")
            .env("FILTER_CTL_STATE_DIR", state_dir(pins))
            .env("RUST_LOG", "warn");
        command
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.work) {
            eprintln!("warning: removing {}: {e}", self.work.display());
        }
    }
}

/// `nsenter --net=/run/netns/NS PROGRAM`: unlike `ip netns exec`, it keeps
/// the host's /sys (and so /sys/fs/bpf).
pub fn nsenter(ns: &NetNs, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new("nsenter");
    command
        .arg(format!("--net={}", ns.path().display()))
        .arg(program);
    command
}

/// Median, minimum and maximum of a set of measurements.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub count: usize,
}

impl Summary {
    /// `None` for no samples.
    #[must_use]
    pub fn of(samples: &[f64]) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            f64::midpoint(sorted[n / 2 - 1], sorted[n / 2])
        };
        Some(Self {
            median,
            min: sorted[0],
            max: sorted[n - 1],
            count: n,
        })
    }

    /// `median (min–max)` with `decimals` digits.
    #[must_use]
    pub fn show(&self, decimals: usize) -> String {
        format!(
            "{:.d$} ({:.d$}–{:.d$})",
            self.median,
            self.min,
            self.max,
            d = decimals
        )
    }
}

/// `median (min–max)` of `samples`, or a dash.
#[must_use]
pub fn show(samples: &[f64], decimals: usize) -> String {
    Summary::of(samples).map_or_else(|| "–".to_string(), |s| s.show(decimals))
}

/// Per-round ratios `a[i] / b[i]` (the rounds were interleaved, so each pair
/// was measured close together in time).
#[must_use]
pub fn ratios(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter()
        .zip(b)
        .filter(|(_, d)| **d > 0.0)
        .map(|(n, d)| n / d)
        .collect()
}

/// xorshift64*: deterministic pseudo-random numbers for generated lists.
pub struct Rng(u64);

impl Rng {
    #[must_use]
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

static NEXT_PIN_DIR: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// A pin directory of this run: `/sys/fs/bpf/fbench-<pid>-<tag><n>`.
#[must_use]
pub fn pin_dir(tag: &str) -> PinDir {
    let n = NEXT_PIN_DIR.fetch_add(1, Ordering::Relaxed);
    PinDir::new(format!(
        "/sys/fs/bpf/fbench-{}-{tag}{n}",
        std::process::id()
    ))
}

/// Our filter loaded through filter-ctl's library (not attached anywhere),
/// for `BPF_PROG_TEST_RUN`; every pin removed on drop.
pub struct LoadedFilter {
    pub pins: PinDir,
    pub id: u32,
    /// Keeps the program and its maps loaded while the benchmark runs.
    ebpf: Ebpf,
}

impl LoadedFilter {
    #[expect(
        clippy::trivially_copy_pass_by_ref,
        reason = "the same signature as filter_ctl::maps::loader::load"
    )]
    pub fn load(tag: &str, caps: &Capacities) -> Result<Self> {
        let pins = pin_dir(tag);
        let ebpf = match loader::load(&pins, caps) {
            Ok(ebpf) => ebpf,
            Err(e) => {
                let _ = loader::detach_all(&pins);
                return Err(e.context(format!(
                    "loading the filter under {}",
                    pins.root().display()
                )));
            }
        };
        let mut guard = Self { pins, id: 0, ebpf };
        let program: &aya::programs::Xdp = guard
            .ebpf
            .program(PROGRAM)
            .ok_or_else(|| anyhow!("no program {PROGRAM}"))?
            .try_into()?;
        guard.id = program.info()?.id();
        Ok(guard)
    }
}

impl Drop for LoadedFilter {
    fn drop(&mut self) {
        if let Err(e) = loader::detach_all(&self.pins) {
            eprintln!("warning: removing {}: {e:#}", self.pins.root().display());
        }
    }
}

/// `filter-ctl run` on one interface of a namespace (started with nsenter),
/// with its own pin directory. Dropping it stops the controller, detaches
/// and removes every pin.
pub struct Controller {
    pub pins: PinDir,
    /// What `run` reported for the attachment ("native mode", ...).
    pub attached: String,
    filter_ctl: PathBuf,
    child: Option<Child>,
}

impl Controller {
    pub fn start(env: &Env, ns: &NetNs, iface: &str, tag: &str) -> Result<Self> {
        Self::start_with(env, ns, iface, tag, &[])
    }

    /// [`Controller::start`] with more `run` options.
    pub fn start_with(
        env: &Env,
        ns: &NetNs,
        iface: &str,
        tag: &str,
        options: &[&str],
    ) -> Result<Self> {
        check_interrupted()?;
        let pins = pin_dir(tag);
        let mut command = nsenter(ns, &env.filter_ctl);
        command
            .arg("--pin-dir")
            .arg(pins.root())
            .args(["run", "--iface", iface])
            .args(options)
            .env_remove("FILTER_CTL_PIN_DIR")
            .env("FILTER_CTL_STATE_DIR", state_dir(&pins))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        terminate_with_parent(&mut command);
        env.record(&display(&command));
        let mut child = command
            .spawn()
            .with_context(|| format!("starting `{}`", display(&command)))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let mut guard = Self {
            pins,
            attached: String::new(),
            filter_ctl: env.filter_ctl.clone(),
            child: Some(child),
        };
        thread::spawn(move || {
            // Read to the end, so that the controller never writes to a closed pipe.
            for line in BufReader::new(stdout).lines() {
                if line.is_err() {
                    break;
                }
            }
        });
        // Ready when `status --json` says so (never from its printed lines).
        let deadline = Instant::now() + Duration::from_mins(1);
        loop {
            if let Some(mode) = guard.running_mode(iface) {
                guard.attached = format!("{mode} mode");
                break;
            }
            let status = guard
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if status.is_some() || Instant::now() >= deadline {
                bail!(
                    "`filter-ctl run --iface {iface}` did not report running within 60 s (exit status {status:?})"
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(guard)
    }
}

impl Controller {
    /// The attach mode on `iface` once `status` shows this controller running.
    fn running_mode(&self, iface: &str) -> Option<String> {
        let out = Command::new(&self.filter_ctl)
            .arg("--pin-dir")
            .arg(self.pins.root())
            .args(["status", "--json"])
            .env("FILTER_CTL_STATE_DIR", state_dir(&self.pins))
            .output()
            .ok()?;
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let pid = self.child.as_ref()?.id();
        if status["controller_pid"] != pid || status["controller_state"] != "running" {
            return None;
        }
        status["interfaces"]
            .as_array()?
            .iter()
            .find(|i| i["name"] == iface && i["state"] == "attached")
            .map(|i| i["mode"].as_str().unwrap_or("unknown").to_string())
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(pid) = i32::try_from(child.id()) {
                // SAFETY: signalling our own child by pid.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                thread::sleep(Duration::from_millis(20));
            }
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if self.pins.root().exists() {
            let out = Command::new(&self.filter_ctl)
                .arg("--pin-dir")
                .arg(self.pins.root())
                .arg("detach")
                .env("FILTER_CTL_STATE_DIR", state_dir(&self.pins))
                .output();
            match out {
                Ok(o) if o.status.success() => {}
                Ok(o) => eprintln!(
                    "warning: filter-ctl detach: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                ),
                Err(e) => eprintln!("warning: running filter-ctl detach: {e}"),
            }
        }
    }
}

/// Debian's `xdp-filter` on one interface. Its state is global
/// (`/sys/fs/bpf/xdp-filter`), so every command runs in a private mount
/// namespace with a bpffs of its own: other xdp-filter users on the machine
/// neither see nor disturb ours. Unloaded, and the mount namespace released,
/// on drop.
pub struct XdpFilter {
    holder: Child,
    mount_ns: PathBuf,
    net_ns: PathBuf,
    iface: String,
    pub mode: String,
}

impl XdpFilter {
    pub fn load(env: &Env, ns: &NetNs, iface: &str, mode: &str) -> Result<Self> {
        check_interrupted()?;
        let mut command = Command::new("unshare");
        command
            .args(["--mount", "--propagation", "private", "sleep", "3600"])
            .stdin(Stdio::null());
        terminate_with_parent(&mut command);
        let holder = command
            .spawn()
            .context("starting `unshare --mount sleep`")?;
        let mount_ns = PathBuf::from(format!("/proc/{}/ns/mnt", holder.id()));
        let guard = Self {
            holder,
            mount_ns,
            net_ns: ns.path(),
            iface: iface.to_string(),
            mode: mode.to_string(),
        };
        // Wait until unshare has moved the holder to its new mount namespace.
        let ours = fs::read_link("/proc/self/ns/mnt")?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while fs::read_link(&guard.mount_ns).is_ok_and(|l| l == ours) {
            ensure!(Instant::now() < deadline, "unshare --mount did not start");
            thread::sleep(Duration::from_millis(5));
        }
        env.run(
            Command::new("nsenter")
                .arg(format!("--mount={}", guard.mount_ns.display()))
                .args(["mount", "-t", "bpf", "bpf", "/sys/fs/bpf"]),
        )?;
        env.run(&mut guard.command(&["load", iface, "-m", mode]))?;
        Ok(guard)
    }

    /// `xdp-filter ARGS` in the lab's network namespace and our mount namespace.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--mount={}", self.mount_ns.display()))
            .arg(format!("--net={}", self.net_ns.display()))
            .arg("xdp-filter")
            .args(args);
        command
    }

    /// The id of the program attached to the interface (`bpftool net show`).
    pub fn program_id(&self, env: &Env) -> Result<u32> {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net={}", self.net_ns.display()))
            .args(["bpftool", "-j", "net", "show", "dev", &self.iface]);
        let text = env.run(&mut command)?;
        let json: serde_json::Value = serde_json::from_str(&text)?;
        json[0]["xdp"][0]["id"]
            .as_u64()
            .and_then(|id| u32::try_from(id).ok())
            .ok_or_else(|| anyhow!("no XDP program on {} ({text})", self.iface))
    }

    /// `xdp-filter ip ADDR -m src` for every address in `file` (one a
    /// line): one xdp-filter process per address, as its CLI takes one,
    /// started one after another by a single `xargs` inside the namespaces
    /// (a `nsenter` per address would double the time). Not in parallel:
    /// xdp-filter's lock file (`/run/xdp-filter.lck`, one for the whole
    /// machine) makes a concurrent call fail rather than wait; for the same
    /// reason an xdp-filter run by someone else can fail a call, so the
    /// addresses still missing are added again, in at most three passes.
    pub fn add_sources(&self, env: &Env, file: &Path) -> Result<()> {
        let wanted = fs::read_to_string(file)?;
        let mut pending = file.to_path_buf();
        for pass in 0..3 {
            let mut command = Command::new("nsenter");
            command
                .arg(format!("--mount={}", self.mount_ns.display()))
                .arg(format!("--net={}", self.net_ns.display()))
                .arg("xargs")
                .arg("-a")
                .arg(&pending)
                .args(["-n", "1", "xdp-filter", "ip", "-m", "src"]);
            let Err(error) = env.run(&mut command) else {
                return Ok(());
            };
            eprintln!(
                "warning: adding addresses to xdp-filter (pass {}): {error:#}",
                pass + 1
            );
            let listed: BTreeSet<String> = self.addresses(env)?.into_iter().collect();
            let missing: Vec<&str> = wanted.lines().filter(|a| !listed.contains(*a)).collect();
            pending = file.with_extension("missing");
            fs::write(&pending, missing.join("\n"))?;
        }
        bail!(
            "xdp-filter did not take every address of {} in three passes",
            file.display()
        )
    }

    /// The addresses `xdp-filter status` lists.
    pub fn addresses(&self, env: &Env) -> Result<Vec<String>> {
        let text = env.run(&mut self.command(&["status"]))?;
        Ok(text
            .lines()
            .skip_while(|line| !line.starts_with("Filtered IP addresses:"))
            .filter_map(|line| line.split_whitespace().next())
            .filter(|word| word.parse::<std::net::IpAddr>().is_ok())
            .map(str::to_string)
            .collect())
    }

    /// `max_entries` of xdp-filter's IPv4 address table (`filter_ipv4`).
    pub fn ipv4_capacity(&self, env: &Env) -> Result<u64> {
        let bpftool = |args: &[&str]| -> Result<serde_json::Value> {
            let text = env.run(Command::new("bpftool").arg("-j").args(args))?;
            serde_json::from_str(&text).with_context(|| format!("bpftool printed {text:?}"))
        };
        let id = self.program_id(env)?;
        let program = bpftool(&["prog", "show", "id", &id.to_string()])?;
        for map_id in program["map_ids"].as_array().into_iter().flatten() {
            let map = bpftool(&["map", "show", "id", &map_id.to_string()])?;
            if map["name"].as_str() == Some("filter_ipv4") {
                return map["max_entries"]
                    .as_u64()
                    .ok_or_else(|| anyhow!("no max_entries"));
            }
        }
        Err(anyhow!("xdp-filter has no filter_ipv4 map"))
    }

    /// The hit counter of a filtered address (`xdp-filter status`).
    pub fn hits(&self, env: &Env, addr: &str) -> Result<u64> {
        let text = env.run(&mut self.command(&["status"]))?;
        text.lines()
            .find_map(|line| {
                let mut words = line.split_whitespace();
                (words.next() == Some(addr))
                    .then(|| words.nth(1).and_then(|n| n.parse().ok()))
                    .flatten()
            })
            .ok_or_else(|| anyhow!("xdp-filter status shows no counter for {addr}:\n{text}"))
    }
}

impl Drop for XdpFilter {
    fn drop(&mut self) {
        match self.command(&["unload", &self.iface]).output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "warning: xdp-filter unload {}: {}",
                self.iface,
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => eprintln!("warning: running xdp-filter unload: {e}"),
        }
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// Size and instruction counts of a loaded program (by id).
#[derive(Clone, Copy, Debug, Default)]
pub struct ProgramSize {
    pub verified_insns: Option<u32>,
    pub xlated_bytes: Option<u32>,
    pub jited_bytes: u32,
}

pub fn program_size(id: u32) -> Result<ProgramSize> {
    for info in loaded_programs() {
        let info = info.context("listing loaded BPF programs")?;
        if info.id() == id {
            return Ok(ProgramSize {
                verified_insns: info.verified_instruction_count(),
                xlated_bytes: info.size_translated(),
                jited_bytes: info.size_jitted(),
            });
        }
    }
    bail!("no BPF program with id {id}")
}

/// `bpftool prog run id ID data_in FILE repeat N`: the action and the
/// kernel's average ns per run.
pub fn bpftool_run(env: &Env, id: u32, frame: &Path, repeat: u32) -> Result<(u32, f64)> {
    let id = id.to_string();
    let repeat = repeat.to_string();
    let mut command = Command::new("bpftool");
    command.args(["-j", "prog", "run", "id", &id, "data_in"]);
    command.arg(frame).args(["repeat", &repeat]);
    let text = env.run(&mut command)?;
    let json: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("bpftool printed {text:?}"))?;
    let action = json["retval"]
        .as_u64()
        .and_then(|v| u32::try_from(v).ok())
        .ok_or_else(|| anyhow!("no retval in {text}"))?;
    #[expect(clippy::cast_precision_loss, reason = "nanoseconds per run are small")]
    let ns = json["duration"]
        .as_u64()
        .ok_or_else(|| anyhow!("no duration in {text}"))? as f64;
    Ok((action, ns))
}

/// Short name of an XDP action for the report's tables: `DROP`.
#[must_use]
pub fn action_name(action: u32) -> &'static str {
    let name = xdp_action::name(action);
    name.strip_prefix("XDP_").unwrap_or(name)
}

/// Whether process `pid` exists.
fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    unsafe { libc::kill(pid, 0) == 0 || *libc::__errno_location() != libc::ESRCH }
}

/// Removes what a killed earlier run left: pin directories
/// `/sys/fs/bpf/fbench-<pid>-*`, namespaces `ft-fb*-<pid>-*` and scratch
/// directories `/tmp/fbench-<pid>` of dead pids.
pub fn sweep_stale() {
    if let Ok(entries) = fs::read_dir("/tmp") {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix("fbench-").and_then(|p| p.parse().ok())
                && !alive(pid)
            {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }
    if let Ok(entries) = fs::read_dir("/sys/fs/bpf") {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix("fbench-") else {
                continue;
            };
            let Some(pid) = rest.split('-').next().and_then(|p| p.parse().ok()) else {
                continue;
            };
            if !alive(pid) {
                eprintln!("removing {name}, left by an earlier run (pid {pid})");
                let _ = loader::detach_all(&PinDir::new(entry.path()));
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }
    if let Ok(entries) = fs::read_dir("/run/netns") {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with("ft-fb") {
                continue;
            }
            let parts: Vec<&str> = name.rsplitn(3, '-').collect();
            let Some(pid) = parts.get(1).and_then(|p| p.parse().ok()) else {
                continue;
            };
            if !alive(pid) {
                eprintln!("removing namespace {name}, left by an earlier run (pid {pid})");
                let _ = Command::new("ip").args(["netns", "del", &name]).status();
            }
        }
    }
}

/// The state directory of the filter pinned at `pins`: one per filter,
/// under the benchmark's own (`FILTER_CTL_STATE_DIR`, set in `main`), so
/// that what one part loads (and `filter-ctl` persists) is never restored
/// into another part's filter.
#[must_use]
pub fn state_dir(pins: &PinDir) -> std::path::PathBuf {
    let base = std::env::var_os("FILTER_CTL_STATE_DIR").unwrap_or_default();
    std::path::Path::new(&base).join(pins.root().file_name().unwrap_or_default())
}
