//! The kernel program timestamps with `bpf_ktime_get_ns`, i.e. `CLOCK_MONOTONIC`;
//! its rate limiter may read `jiffies`, scaled by what this module measures.

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

/// Length of one timer tick (ns): the resolution of `CLOCK_MONOTONIC_COARSE`,
/// which is `jiffies`'s.
#[must_use]
pub fn tick_ns() -> Option<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-parameter.
    let rc = unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &raw mut ts) };
    let ns = u64::try_from(ts.tv_sec).ok()? * 1_000_000_000 + u64::try_from(ts.tv_nsec).ok()?;
    (rc == 0 && ns > 0).then_some(ns)
}

/// `jiffies` when `CLOCK_MONOTONIC` was 0, for the kernel's tick clock
/// (`Config::jiffies_at_zero`). Ticks sit on multiples of the tick length in
/// `CLOCK_MONOTONIC`, so `jiffies - now / tick` is constant for the whole
/// boot; it is read from `/proc/timer_list` ("now at N nsecs", then
/// "jiffies: J"). Without that file, the kernel's `INITIAL_JIFFIES`, which
/// is off by the time the kernel took to start its tick (0.26 s on the
/// benchmark machine): rates hold, only a switch between clocks shifts a
/// bucket by that much, once.
#[must_use]
pub fn jiffies_at_zero(tick_ns: u64) -> u64 {
    // Two readings that agree: a tick between "now" and "jiffies" in one
    // reading makes it one jiffy too high.
    let first = std::fs::read_to_string("/proc/timer_list")
        .ok()
        .and_then(|text| timer_list_offset(&text, tick_ns));
    let second = std::fs::read_to_string("/proc/timer_list")
        .ok()
        .and_then(|text| timer_list_offset(&text, tick_ns));
    match (first, second) {
        (Some(a), Some(b)) => a.min(b),
        _ => initial_jiffies(tick_ns),
    }
}

/// `jiffies - now / tick` from the head of `/proc/timer_list`.
fn timer_list_offset(text: &str, tick_ns: u64) -> Option<u64> {
    let now_ns: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("now at "))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let jiffies: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("jiffies: "))?
        .trim()
        .parse()
        .ok()?;
    jiffies.checked_sub(now_ns / tick_ns)
}

/// The kernel's `INITIAL_JIFFIES` on 64-bit: `(u32)(-300 * HZ)`.
fn initial_jiffies(tick_ns: u64) -> u64 {
    let hz = 1_000_000_000 / tick_ns;
    (1u64 << 32) - 300 * hz
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_offset_comes_from_the_timer_list_head() {
        let text = "Timer List Version: v0.10\nHRTIMER_MAX_CLOCK_BASES: 8\nnow at 49001118314777 nsecs\n\ncpu: 0\n .last_jiffies   : 4307141342\njiffies: 4307142510\n";
        // 49001118314777 / 4 ms = 12250279 ticks.
        assert_eq!(
            timer_list_offset(text, 4_000_000),
            Some(4_307_142_510 - 12_250_279)
        );
        assert_eq!(timer_list_offset("jiffies: 5\n", 4_000_000), None);
    }

    #[test]
    fn initial_jiffies_matches_the_kernel() {
        // HZ=250: 2^32 - 75,000; HZ=1000: 2^32 - 300,000.
        assert_eq!(initial_jiffies(4_000_000), 4_294_892_296);
        assert_eq!(initial_jiffies(1_000_000), 4_294_667_296);
    }

    #[test]
    fn this_machine_has_a_tick_and_an_offset_that_tracks_monotonic_time() {
        let tick = tick_ns().expect("CLOCK_MONOTONIC_COARSE has a resolution");
        assert!((1_000_000..=10_000_000).contains(&tick), "tick {tick} ns");
        // Where the timer list is readable (root), its real head parses: the
        // INITIAL_JIFFIES fallback below must not hide a broken reader.
        if let Ok(text) = std::fs::read_to_string("/proc/timer_list") {
            assert!(
                timer_list_offset(&text, tick).is_some(),
                "/proc/timer_list did not parse"
            );
        }
        // The tick starts within a minute of boot: near INITIAL_JIFFIES.
        let zero = jiffies_at_zero(tick);
        let minute = 60 * 1_000_000_000 / tick;
        assert!(
            zero.abs_diff(initial_jiffies(tick)) < minute,
            "jiffies at zero {zero}, INITIAL_JIFFIES {}",
            initial_jiffies(tick)
        );
    }
}
