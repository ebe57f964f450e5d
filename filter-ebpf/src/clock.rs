//! The clocks: the coarse clock read at most once per packet (list expiry,
//! automatic-block times) and the rate limiter's tick clock.

use aya_ebpf::helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns};
use filter_common::Config;

/// The coarse clock (`CLOCK_MONOTONIC` at the last tick, nearly free), read
/// at most once per packet and only when something needs it (the host
/// table's length probes read their own, on a match with an expiry): list
/// expiry does not need more than a few ms of precision.
pub struct CoarseClock(u64);

impl CoarseClock {
    /// A clock not read yet.
    #[inline(always)]
    pub const fn new() -> Self {
        Self(0)
    }

    #[inline(always)]
    pub fn now(&mut self) -> u64 {
        if self.0 == 0 {
            // SAFETY: a BPF helper without arguments or preconditions.
            self.0 = unsafe { bpf_ktime_get_coarse_ns() };
        }
        self.0
    }
}

/// `CLOCK_MONOTONIC` at the last tick (ns), from `jiffies`: the verifier
/// inlines `bpf_jiffies64` into a load on 64-bit JITs, where
/// `bpf_ktime_get_coarse_ns` stays a helper call. `config.tick_ns` must not
/// be 0 (the caller checks). Ticks sit on multiples of `tick_ns`, so this is
/// the coarse clock's time to within a tick.
#[inline(always)]
pub fn tick_ns(config: &Config) -> u64 {
    // SAFETY: a BPF helper without arguments or preconditions.
    let jiffies = unsafe { bpf_jiffies64() };
    jiffies
        .wrapping_sub(config.jiffies_at_zero)
        .wrapping_mul(config.tick_ns)
}
