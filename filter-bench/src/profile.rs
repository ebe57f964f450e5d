//! CPU profiles for missed targets: `perf record`, then the hottest symbols
//! (`perf report --sort symbol`), on one line.
//!
//! Sampling is at 9973 Hz: on a VM without a PMU perf falls back to the
//! `cpu-clock` software event, and a round rate aliases with the perfectly
//! periodic test-run loop (whole helpers vanish from a profile).

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result};

use filter_devtools::{display, terminate_with_parent};

use crate::common::Env;

const FREQUENCY: &str = "9973";
const TOP: usize = 10;

static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Whether `perf` can be run at all.
fn available() -> bool {
    Command::new("perf")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

const MISSING: &str = "no profile: `perf` is not installed (Debian package linux-perf)";

fn data_file(env: &Env) -> PathBuf {
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    env.work.join(format!("perf-{n}.data"))
}

/// The hottest symbols in `data` (of the processes `comms`, if given), with
/// their share of those samples.
fn hottest(env: &Env, data: &Path, comms: Option<&str>) -> Result<String> {
    let mut command = Command::new("perf");
    command
        .args(["report", "-q", "--stdio", "--sort", "symbol"])
        .args(["--percentage", "relative", "-i"])
        .arg(data);
    if let Some(comms) = comms {
        command.args(["--comm", comms]);
    }
    let text = env.run(&mut command)?;
    let _ = std::fs::remove_file(data);
    let mut hot = Vec::new();
    for line in text.lines().filter(|l| l.contains('%')).take(TOP) {
        let mut words = line.split_whitespace();
        if let (Some(share), Some(_kind), Some(symbol)) = (words.next(), words.next(), words.next())
        {
            hot.push(format!("`{symbol}` {share}"));
        }
    }
    Ok(hot.join(", "))
}

/// Runs `command` under `perf record` (that process only, kernel time in
/// its system calls included) and returns its hottest symbols. The command
/// keeps the environment it was built with (`Env::ctl`'s state directory,
/// for one), which perf passes on.
pub fn profile_command(env: &Env, command: &Command) -> String {
    if !available() {
        return MISSING.into();
    }
    let data = data_file(env);
    let mut perf = Command::new("perf");
    perf.args(["record", "-q", "-F", FREQUENCY, "-o"])
        .arg(&data)
        .arg("--")
        .arg(command.get_program())
        .args(command.get_args());
    for (key, value) in command.get_envs() {
        match value {
            Some(value) => perf.env(key, value),
            None => perf.env_remove(key),
        };
    }
    env.run(&mut perf)
        .and_then(|_| hottest(env, &data, None))
        .unwrap_or_else(|e| format!("profiling failed: {e:#}"))
}

/// A system-wide `perf record` in the background; stopped on drop.
struct Recorder {
    child: Option<Child>,
    data: PathBuf,
}

impl Recorder {
    fn start(env: &Env) -> Result<Self> {
        let data = data_file(env);
        let mut command = Command::new("perf");
        command
            .args(["record", "-a", "-q", "-F", FREQUENCY, "-o"])
            .arg(&data)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        terminate_with_parent(&mut command);
        env.record(&display(&command));
        let child = command.spawn().context("starting perf record")?;
        // perf needs a moment to open its events on every CPU.
        thread::sleep(Duration::from_millis(700));
        Ok(Self {
            child: Some(child),
            data,
        })
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(pid) = i32::try_from(child.id()) {
                // SAFETY: signalling our own child by pid; perf writes its file on SIGINT.
                unsafe { libc::kill(pid, libc::SIGINT) };
            }
            let _ = child.wait();
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_file(&self.data);
    }
}

/// Profiles every CPU while `work` runs and returns the hottest symbols of
/// the processes named in `comms` (comma-separated).
pub fn profile_system(env: &Env, comms: &str, work: impl FnOnce() -> Result<()>) -> String {
    if !available() {
        return MISSING.into();
    }
    let result = Recorder::start(env).and_then(|mut recorder| {
        work()?;
        recorder.stop();
        hottest(env, &recorder.data, Some(comms))
    });
    result.unwrap_or_else(|e| format!("profiling failed: {e:#}"))
}
