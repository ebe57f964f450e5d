//! The coarse clock, read at most once per packet.

use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;

/// The coarse clock (`CLOCK_MONOTONIC` at the last tick, nearly free), read
/// at most once per packet and only when something needs it: list expiry
/// does not need more than a few ms of precision.
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
