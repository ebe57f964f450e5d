//! Helpers that xtask, the tests (`filter-tests`) and the benchmark
//! (`filter-bench`) share: showing a command line, turning Ctrl-C into a flag
//! checked between steps, the root check, and tying a child's life to ours.
//!
//! Only std, anyhow and libc: xtask uses this crate, and xtask must build on a
//! bare stable toolchain, before `cargo xtask setup` installed anything.

use std::os::unix::process::CommandExt as _;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Result, bail};

/// The command line, for messages and reports: `ip netns add flab-src-1`.
#[must_use]
pub fn display(command: &Command) -> String {
    let mut line = command.get_program().to_string_lossy().into_owned();
    for arg in command.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    line
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_signal: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Turns SIGINT and SIGTERM into a flag that [`check_interrupted`] reports,
/// so that the program stops at its next step and its guards clean up.
pub fn catch_interrupts() {
    let handler = on_signal as extern "C" fn(libc::c_int);
    // SAFETY: the handler only stores to an atomic, which is
    // async-signal-safe. glibc's signal() has BSD semantics: the handler stays
    // installed and interrupted system calls restart.
    unsafe {
        libc::signal(libc::SIGINT, handler as libc::sighandler_t);
        libc::signal(libc::SIGTERM, handler as libc::sighandler_t);
    }
}

/// Whether SIGINT or SIGTERM arrived since [`catch_interrupts`].
#[must_use]
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Fails once SIGINT or SIGTERM arrived (see [`catch_interrupts`]).
///
/// # Errors
///
/// "interrupted", once a signal arrived.
pub fn check_interrupted() -> Result<()> {
    if interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

/// Whether this process runs as root (effective user id 0).
#[must_use]
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Fails with a hint unless running as root.
///
/// # Errors
///
/// When not root: "`who` needs root: `why`", with how to run it as root.
pub fn require_root(who: &str, why: &str) -> Result<()> {
    if !is_root() {
        bail!(
            "{who} needs root: {why}. Run it with sudo, e.g. `sudo -E env PATH=\"$PATH\" cargo xtask ...`"
        );
    }
    Ok(())
}

/// Makes the kernel send SIGTERM to the child that `command` starts when this
/// process dies, even by SIGKILL, so that nothing is left running.
pub fn terminate_with_parent(command: &mut Command) {
    // SAFETY: prctl is async-signal-safe, as a pre_exec hook requires.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    #[test]
    fn displays_program_and_arguments() {
        let mut command = Command::new("ip");
        command.args(["netns", "add", "flab-src-1"]);
        assert_eq!(super::display(&command), "ip netns add flab-src-1");
        assert_eq!(super::display(&Command::new("true")), "true");
    }

    #[test]
    fn a_signal_sets_the_flag() {
        super::catch_interrupts();
        assert!(super::check_interrupted().is_ok(), "no signal yet");
        // SAFETY: raising a signal whose handler only stores to an atomic.
        assert_eq!(unsafe { libc::raise(libc::SIGTERM) }, 0);
        assert!(super::interrupted());
        let error = super::check_interrupted().expect_err("interrupted");
        assert_eq!(error.to_string(), "interrupted");
    }
}
