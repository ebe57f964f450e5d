//! CPU profiles for missed targets: `perf record -a` around the work, then
//! the hottest symbols (`perf report --sort symbol`).

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result};

use crate::common::{Env, die_with_parent, display};

static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// A system-wide `perf record` running in the background.
pub struct Profiler {
    child: Option<Child>,
    data: PathBuf,
}

/// Whether `perf` can be run at all.
#[must_use]
pub fn available() -> bool {
    Command::new("perf")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl Profiler {
    /// Starts sampling every CPU; `None` (with the reason in the report) when
    /// perf is missing.
    pub fn start(env: &Env) -> Result<Self> {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let data = env.work.join(format!("perf-{n}.data"));
        let mut command = Command::new("perf");
        command
            .args(["record", "-a", "-q", "-F", "9973", "-o"])
            .arg(&data)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        die_with_parent(&mut command);
        env.record(&display(&command));
        let child = command.spawn().context("starting perf record")?;
        // perf needs a moment to open its events on every CPU.
        thread::sleep(Duration::from_millis(700));
        Ok(Self {
            child: Some(child),
            data,
        })
    }

    /// Stops sampling and returns the hottest symbols of the processes
    /// named in `comms` (comma-separated) with their share of those
    /// processes' samples, on one line.
    pub fn finish(mut self, env: &Env, comms: &str, top: usize) -> Result<String> {
        self.stop();
        let mut command = Command::new("perf");
        command
            .args(["report", "-q", "--stdio", "--sort", "symbol"])
            .args(["--percentage", "relative", "--comm", comms, "-i"])
            .arg(&self.data);
        let text = env.run(&mut command)?;
        let mut hot = Vec::new();
        for line in text.lines().filter(|l| l.contains('%')).take(top) {
            let mut words = line.split_whitespace();
            if let (Some(share), Some(_kind), Some(symbol)) =
                (words.next(), words.next(), words.next())
            {
                hot.push(format!("`{symbol}` {share}"));
            }
        }
        Ok(hot.join(", "))
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

impl Drop for Profiler {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_file(&self.data);
    }
}

/// Profiles `work` (system-wide) and returns the hottest symbols of the
/// processes `comms` (comma-separated names), or why there is none.
pub fn profile(env: &Env, comms: &str, work: impl FnOnce() -> Result<()>) -> String {
    if !available() {
        return "no profile: `perf` is not installed (Debian package linux-perf)".into();
    }
    let result = Profiler::start(env).and_then(|p| {
        work()?;
        p.finish(env, comms, 10)
    });
    result.unwrap_or_else(|e| format!("profiling failed: {e:#}"))
}
