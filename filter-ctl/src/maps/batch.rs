//! `BPF_MAP_UPDATE_BATCH`, which aya does not wrap: one syscall per chunk of
//! entries instead of one per entry. The kernel applies the entries in order
//! and, on the first failure, reports how many it applied.

use std::{
    io,
    mem::MaybeUninit,
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

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// Entries read per `BPF_MAP_LOOKUP_BATCH` call.
const LOOKUP_CHUNK: usize = 4096;
/// Calls retried when the kernel gives up on a chunk (`EINTR`: entries
/// deleted under it, e.g. the program removing expired ones).
const LOOKUP_RETRIES: usize = 8;

/// Reads every entry of `map` with `BPF_MAP_LOOKUP_BATCH`, one syscall per
/// chunk of [`LOOKUP_CHUNK`] entries instead of two per entry, calling
/// `each` for each. `Ok(false)`: the kernel has no batch lookup for this
/// map type (nothing was read); the caller iterates keys instead.
pub fn lookup_all<K: Pod, V: Pod>(
    map: &MapData,
    each: &mut dyn FnMut(K, V) -> anyhow::Result<()>,
) -> anyhow::Result<bool> {
    let mut keys: Vec<MaybeUninit<K>> = Vec::with_capacity(LOOKUP_CHUNK);
    keys.resize_with(LOOKUP_CHUNK, MaybeUninit::uninit);
    let mut values: Vec<MaybeUninit<V>> = Vec::with_capacity(LOOKUP_CHUNK);
    values.resize_with(LOOKUP_CHUNK, MaybeUninit::uninit);
    // The batch token of the generic implementation is a key: the last one
    // read, where the next call goes on.
    let mut token_in = MaybeUninit::<K>::uninit();
    let mut token_out = MaybeUninit::<K>::uninit();
    let mut first = true;
    let mut retries = 0;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { token_in.as_ptr() as u64 },
            out_batch: token_out.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: u32::try_from(LOOKUP_CHUNK).expect("small chunk"),
            map_fd: u32::try_from(map.fd().as_fd().as_raw_fd()).expect("valid fd"),
            ..BatchAttr::default()
        };
        // SAFETY: `keys` and `values` hold `count` slots of the map's key
        // and value types (checked by the typed map the caller opened), the
        // tokens one key each; the kernel writes at most `count` entries and
        // one token, and reads the in token.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &raw mut attr,
                size_of::<BatchAttr>(),
            )
        };
        let error = (rc != 0).then(io::Error::last_os_error);
        let errno = error.as_ref().and_then(io::Error::raw_os_error);
        // ENOTSUPP (524, kernel-internal) or EINVAL on the first call: no
        // batch lookup for this map type.
        if first && matches!(errno, Some(libc::EINVAL | libc::EOPNOTSUPP | 524)) {
            return Ok(false);
        }
        // ENOENT: the end (with the last entries); EINTR: the kernel gave up
        // on an entry deleted under it, after the entries it reports.
        if let Some(error) = error.filter(|_| !matches!(errno, Some(libc::ENOENT | libc::EINTR))) {
            return Err(anyhow::Error::new(error).context("reading a map by batches"));
        }
        let read = (attr.count as usize).min(LOOKUP_CHUNK);
        for (key, value) in keys.iter().zip(&values).take(read) {
            // SAFETY: the kernel wrote the first `read` slots.
            each(unsafe { key.assume_init_read() }, unsafe {
                value.assume_init_read()
            })?;
        }
        if errno == Some(libc::ENOENT) || (rc == 0 && read == 0) {
            return Ok(true);
        }
        if errno == Some(libc::EINTR) {
            retries += 1;
            anyhow::ensure!(
                retries <= LOOKUP_RETRIES,
                "reading a map by batches: entries kept vanishing under the read ({retries} tries)"
            );
        }
        if read > 0 {
            // SAFETY: a call that read entries wrote the out token.
            token_in = MaybeUninit::new(unsafe { token_out.assume_init_read() });
            first = false;
        }
    }
}
