//! The kernel program timestamps with `bpf_ktime_get_ns`, i.e. `CLOCK_MONOTONIC`.

use std::time::Duration;

/// Current `CLOCK_MONOTONIC` time in nanoseconds, the clock of every expiry in the maps.
#[must_use]
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-parameter; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// Expiry time `ttl` from now; `None` means permanent (0 in the maps).
#[must_use]
pub fn expiry_from_now(ttl: Option<Duration>) -> u64 {
    ttl.map_or(0, |ttl| {
        let ttl_ns = u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX);
        monotonic_ns().saturating_add(ttl_ns.max(1))
    })
}

/// Time left until `expires_at_ns` (0 = permanent -> `None`).
#[must_use]
pub fn remaining(expires_at_ns: u64, now_ns: u64) -> Option<Duration> {
    (expires_at_ns != 0).then(|| Duration::from_nanos(expires_at_ns.saturating_sub(now_ns)))
}
