//! Records of the `EVENTS` ring buffer.

use core::mem::{offset_of, size_of};

use crate::lists::Ipv6Bytes;

/// Ring-buffer event: a source was put on the automatic block list.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AutoBlockEvent {
    /// The blocked prefix (aggregated source, IPv4-mapped for IPv4).
    pub source: Ipv6Bytes,
    /// Rule slot whose limit was exceeded.
    pub rule: u32,
    /// Over-limit packets in the window that triggered the block.
    pub over_limit: u32,
    pub blocked_at_ns: u64,
    pub expires_at_ns: u64,
}

const _: () = assert!(size_of::<AutoBlockEvent>() == 40);
const _: () = assert!(offset_of!(AutoBlockEvent, source) == 0);
const _: () = assert!(offset_of!(AutoBlockEvent, rule) == 16);
const _: () = assert!(offset_of!(AutoBlockEvent, over_limit) == 20);
const _: () = assert!(offset_of!(AutoBlockEvent, blocked_at_ns) == 24);
const _: () = assert!(offset_of!(AutoBlockEvent, expires_at_ns) == 32);
