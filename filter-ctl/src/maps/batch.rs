//! `BPF_MAP_UPDATE_BATCH`, which aya does not wrap: one syscall per chunk of
//! entries instead of one per entry. The kernel applies the entries in order
//! and, on the first failure, reports how many it applied.

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::{Pod, maps::MapData};

const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// `struct bpf_attr` for the batch commands (`batch` member).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// A batch that stopped early: `applied` entries went in, entry `applied` failed with `error`.
#[derive(Debug)]
pub struct BatchError {
    pub applied: usize,
    pub error: io::Error,
}

/// Writes `keys[i] -> values[i]` with `elem_flags` (e.g. `BPF_NOEXIST`).
pub fn update<K: Pod, V: Pod>(
    map: &MapData,
    keys: &[K],
    values: &[V],
    elem_flags: u64,
) -> Result<(), BatchError> {
    assert_eq!(keys.len(), values.len(), "one value per key");
    if keys.is_empty() {
        return Ok(());
    }
    let mut attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count: u32::try_from(keys.len()).expect("batch larger than u32"),
        map_fd: u32::try_from(map.fd().as_fd().as_raw_fd()).expect("valid fd"),
        elem_flags,
        ..BatchAttr::default()
    };
    let requested = attr.count;
    // SAFETY: `attr` points at live key and value arrays of `count` Pod
    // elements whose sizes match the map's key and value sizes (checked by the
    // typed map the caller opened); the kernel only reads them.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_UPDATE_BATCH,
            &raw mut attr,
            size_of::<BatchAttr>(),
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let error = io::Error::last_os_error();
    // On failure the kernel writes back how many entries it applied.
    let applied = if attr.count < requested {
        attr.count as usize
    } else {
        0
    };
    Err(BatchError { applied, error })
}

const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// Deletes `keys`; keys that are not there are skipped (the program deletes
/// expired entries itself). One syscall per run of present keys.
pub fn delete<K: Pod>(map: &MapData, keys: &[K]) -> io::Result<()> {
    let mut rest = keys;
    while !rest.is_empty() {
        let mut attr = BatchAttr {
            keys: rest.as_ptr() as u64,
            count: u32::try_from(rest.len()).expect("batch larger than u32"),
            map_fd: u32::try_from(map.fd().as_fd().as_raw_fd()).expect("valid fd"),
            ..BatchAttr::default()
        };
        let requested = attr.count;
        // SAFETY: `attr` points at a live array of `count` Pod keys whose size
        // matches the map's key size (checked by the typed map the caller
        // opened); the kernel only reads it.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_DELETE_BATCH,
                &raw mut attr,
                size_of::<BatchAttr>(),
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let error = io::Error::last_os_error();
        let done = if attr.count < requested {
            attr.count as usize
        } else {
            0
        };
        if error.raw_os_error() != Some(libc::ENOENT) {
            return Err(error);
        }
        // Key `done` is absent: skip it and go on with the rest.
        rest = &rest[done + 1..];
    }
    Ok(())
}
