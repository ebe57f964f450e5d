//! Process-level helpers: those shared with the tests and the benchmark come
//! from `filter-devtools`; the rest only xtask needs.

use std::ffi::c_int;

use anyhow::Result;
pub use filter_devtools::{catch_interrupts, check_interrupted, is_root, terminate_with_parent};

pub use libc::SIGINT;

/// Fails with a hint unless running as root; `why` completes "needs root: ...".
pub fn require_root(why: &str) -> Result<()> {
    filter_devtools::require_root("this task", why)
}

/// Sends `signal` to the process `pid`.
pub fn send_signal(pid: u32, signal: c_int) -> std::io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(std::io::Error::other)?;
    // SAFETY: kill has no memory-safety preconditions.
    if unsafe { libc::kill(pid, signal) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
