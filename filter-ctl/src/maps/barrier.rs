//! A barrier from user space: [`wait_for_running_programs`] returns once
//! every BPF program run that started before the call has finished. Rule
//! edits use it before they reuse a slot the program might still hold.
//!
//! How: updating an element of a map-in-map (`BPF_MAP_TYPE_ARRAY_OF_MAPS`)
//! makes the kernel call `synchronize_rcu()` before the syscall returns
//! (`maybe_wait_bpf_programs` in `kernel/bpf/syscall.c`, there so that user
//! space knows no program still uses the old inner map). XDP programs run
//! inside RCU read-side critical sections: NAPI polls run with bottom halves
//! disabled, which `synchronize_rcu()` waits for since the RCU flavours were
//! merged (4.20); generic XDP and `BPF_PROG_TEST_RUN` take `rcu_read_lock()`.
//! So when the update returns, every program run that could have read the
//! old value of some other map has finished. The kernel's own selftests use
//! the same trick (`prog_tests/btf_map_in_map.c`, "Trigger
//! `synchronize_rcu()` in kernel"). Raw syscalls, as in [`super::batch`]:
//! aya does not create map-in-maps.
//!
//! Cost: one grace period, about 10-30 ms (measured on a 2-CPU VM with
//! kernel 6.18, `barrier_cost` test); edits pay it once per rule switched.

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::{Arc, Mutex, PoisonError},
};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_ARRAY_OF_MAPS: u32 = 12;

/// The head of `struct bpf_attr` for `BPF_MAP_CREATE` (the kernel takes a
/// shorter attribute and zeroes the rest).
#[repr(C)]
#[derive(Default)]
struct CreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
}

/// `struct bpf_attr` for the element commands.
#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

fn sys_bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, initialised `bpf_attr` prefix for `cmd` of
    // the size passed; any pointers in it point at live memory.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, std::ptr::from_mut(attr), size_of::<T>()) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn create(map_type: u32, inner_map_fd: u32, name: &str) -> io::Result<OwnedFd> {
    let mut attr = CreateAttr {
        map_type,
        key_size: 4,
        value_size: 4,
        max_entries: 1,
        inner_map_fd,
        ..CreateAttr::default()
    };
    let len = name.len().min(attr.map_name.len() - 1);
    attr.map_name[..len].copy_from_slice(&name.as_bytes()[..len]);
    let fd = sys_bpf(BPF_MAP_CREATE, &mut attr)?;
    let fd = i32::try_from(fd).map_err(|_| io::Error::other("file descriptor out of range"))?;
    // SAFETY: BPF_MAP_CREATE returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A one-slot array of maps and the array it stores.
struct Barrier {
    outer: OwnedFd,
    inner: OwnedFd,
}

impl Barrier {
    fn new() -> io::Result<Self> {
        let inner = create(BPF_MAP_TYPE_ARRAY, 0, "filter_rcu_in")?;
        let inner_fd = u32::try_from(inner.as_raw_fd()).map_err(io::Error::other)?;
        let outer = create(BPF_MAP_TYPE_ARRAY_OF_MAPS, inner_fd, "filter_rcu")?;
        Ok(Self { outer, inner })
    }

    /// Stores the inner map in slot 0 again: the kernel waits for a grace
    /// period before the syscall returns.
    fn wait(&self) -> io::Result<()> {
        let key = 0u32;
        let value = u32::try_from(self.inner.as_raw_fd()).map_err(io::Error::other)?;
        let mut attr = ElemAttr {
            map_fd: u32::try_from(self.outer.as_raw_fd()).map_err(io::Error::other)?,
            key: std::ptr::from_ref(&key) as u64,
            value: std::ptr::from_ref(&value) as u64,
            ..ElemAttr::default()
        };
        sys_bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(drop)
    }
}

/// Returns once every BPF program run (XDP included) that started before
/// the call has finished: afterwards no program holds a pointer to a map
/// value it read before the call. The maps it needs are made on first use
/// and kept for the life of the process; callers in several threads wait
/// side by side (and share grace periods).
pub fn wait_for_running_programs() -> io::Result<()> {
    static BARRIER: Mutex<Option<Arc<Barrier>>> = Mutex::new(None);
    let barrier = {
        let mut shared = BARRIER.lock().unwrap_or_else(PoisonError::into_inner);
        match shared.as_ref() {
            Some(barrier) => Arc::clone(barrier),
            None => Arc::clone(shared.insert(Arc::new(Barrier::new()?))),
        }
    };
    barrier.wait()
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    /// Measures the barrier (run as root; prints the cost).
    #[test]
    fn barrier_cost() {
        // SAFETY: no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            println!("barrier_cost skipped: creating maps needs root");
            return;
        }
        wait_for_running_programs().expect("first barrier");
        let rounds = 20u32;
        let start = Instant::now();
        let mut longest = Duration::ZERO;
        for _ in 0..rounds {
            let one = Instant::now();
            wait_for_running_programs().expect("barrier");
            longest = longest.max(one.elapsed());
        }
        println!(
            "barrier: {:?} on average over {rounds}, longest {longest:?}",
            start.elapsed() / rounds
        );
    }
}
