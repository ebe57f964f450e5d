//! The few libc calls xtask needs, declared here so that xtask depends on
//! nothing but anyhow and clap.

use std::ffi::{c_int, c_ulong};
use std::os::unix::process::CommandExt as _;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Result, bail};

/// Signal numbers; the same on every Linux architecture.
pub const SIGINT: c_int = 2;
const SIGTERM: c_int = 15;

unsafe extern "C" {
    safe fn geteuid() -> u32;
    safe fn kill(pid: c_int, signal: c_int) -> c_int;
    // `sighandler_t signal(int, sighandler_t)`; glibc gives it BSD semantics
    // (the handler stays installed, system calls restart).
    fn signal(signum: c_int, handler: extern "C" fn(c_int)) -> usize;
    fn prctl(option: c_int, ...) -> c_int;
}

const PR_SET_PDEATHSIG: c_int = 1;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_signal: c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Turns SIGINT and SIGTERM into a flag that [`check_interrupted`] reports, so
/// the task stops at its next step and its guards clean up.
pub fn catch_interrupts() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        signal(SIGINT, on_signal);
        signal(SIGTERM, on_signal);
    }
}

/// Fails once SIGINT or SIGTERM arrived (see [`catch_interrupts`]).
pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

pub fn is_root() -> bool {
    geteuid() == 0
}

/// Fails with a hint unless running as root; `why` completes "needs root: ...".
pub fn require_root(why: &str) -> Result<()> {
    if !is_root() {
        bail!(
            "this task needs root: {why}. Run it with sudo, e.g. `sudo -E env PATH=\"$PATH\" cargo xtask ...`"
        );
    }
    Ok(())
}

/// Sends `signal` to the process `pid`.
pub fn send_signal(pid: u32, signal: c_int) -> std::io::Result<()> {
    let pid = c_int::try_from(pid).map_err(std::io::Error::other)?;
    if kill(pid, signal) == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Makes the kernel send SIGTERM to the child `command` starts when xtask
/// dies, so that even a killed xtask leaves no process behind.
pub fn terminate_with_parent(command: &mut Command) {
    // SAFETY: prctl is async-signal-safe, as a pre_exec hook requires.
    unsafe {
        command.pre_exec(|| {
            if prctl(PR_SET_PDEATHSIG, c_ulong::from(SIGTERM.unsigned_abs())) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
}
