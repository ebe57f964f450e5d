//! Records of the `EVENTS` ring buffer. Every record starts with an
//! [`EventHeader`] whose `kind` says what follows and whose `len` is the
//! record's whole size: a reader skips kinds it does not know, and a new
//! kind does not break an old reader.

use core::mem::{offset_of, size_of};

use crate::{lists::Ipv6Bytes, reason};

/// Start of every ring-buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    /// `EVENT_*`: what the record holds.
    pub kind: u32,
    /// Size of the whole record in bytes, header included.
    pub len: u32,
}

impl EventHeader {
    /// The header of a record of type `T` and kind `kind`.
    #[expect(
        clippy::cast_possible_truncation,
        reason = "records are a few dozen bytes (sizes asserted)"
    )]
    #[must_use]
    pub const fn of<T>(kind: u32) -> Self {
        Self {
            kind,
            len: size_of::<T>() as u32,
        }
    }
}

/// Event kind: a source was put on the automatic block list ([`AutoBlockEvent`]).
pub const EVENT_AUTOBLOCK: u32 = 1;

/// Ring-buffer event: a source was put on the automatic block list.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AutoBlockEvent {
    /// `kind` [`EVENT_AUTOBLOCK`], `len` = `size_of::<AutoBlockEvent>()`.
    pub header: EventHeader,
    /// The blocked prefix (aggregated source, IPv4-mapped for IPv4).
    pub source: Ipv6Bytes,
    /// Id of the rule whose limit was exceeded.
    pub rule: u32,
    /// Over-limit packets in the window that triggered the block.
    pub over_limit: u32,
    pub blocked_at_ns: u64,
    pub expires_at_ns: u64,
}

impl AutoBlockEvent {
    /// The header every automatic-block record carries.
    pub const HEADER: EventHeader = EventHeader::of::<Self>(EVENT_AUTOBLOCK);
}

/// Event kind: a dropped packet, sampled ([`DropEvent`]).
pub const EVENT_DROP: u32 = 2;

/// [`DropEvent::rule`] when no rule decided (lists, malformed frames).
pub const NO_RULE: u16 = u16::MAX;

/// Ring-buffer event: one dropped packet, standing for `weight` drops of
/// its reason (the program samples 1 in `weight`; see [`sampling`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropEvent {
    /// `kind` [`EVENT_DROP`], `len` = `size_of::<DropEvent>()`.
    pub header: EventHeader,
    /// Source address, IPv4-mapped for IPv4; zero when the frame had none
    /// (`family` 0).
    pub source: Ipv6Bytes,
    /// Interface the packet arrived on.
    pub ifindex: u32,
    /// Frame length in bytes.
    pub len: u32,
    /// The sampling rate: this event stands for this many drops.
    pub weight: u32,
    /// Destination port (TCP/UDP), else 0.
    pub dst_port: u16,
    /// Id of the rule that dropped it, or [`NO_RULE`].
    pub rule: u16,
    /// `reason::*` of the drop.
    pub reason: u8,
    /// IP protocol number, 0 when not IP.
    pub protocol: u8,
    /// 4, 6, or 0 when the frame had no usable IP header.
    pub family: u8,
    pub _pad: [u8; 5],
}

impl DropEvent {
    /// The header every drop record carries.
    pub const HEADER: EventHeader = EventHeader::of::<Self>(EVENT_DROP);
}

/// Drop sampling: `SAMPLING` (set by user space) holds, per reason, the
/// 1-in-N rate (0 = no events), and at [`CAP`](sampling::CAP) the most
/// events one CPU emits per second; `SAMPLE_STATE` (per CPU) holds each
/// reason's countdown (the drops to skip before its next event: 0 samples
/// the next drop) and the cap's window.
pub mod sampling {
    use crate::reason;

    /// Index of the per-CPU cap in `SAMPLING`.
    pub const CAP: u32 = reason::COUNT;
    /// Entries of `SAMPLING`.
    pub const ENTRIES: u32 = reason::COUNT + 1;
    /// Index of the cap window's start (ns) in `SAMPLE_STATE`.
    pub const WINDOW_START: u32 = reason::COUNT;
    /// Index of the events emitted in the window in `SAMPLE_STATE`.
    pub const EMITTED: u32 = reason::COUNT + 1;
    /// Entries of `SAMPLE_STATE`.
    pub const STATE_ENTRIES: u32 = reason::COUNT + 2;
}

const _: () = assert!(size_of::<DropEvent>() == 48);
const _: () = assert!(offset_of!(DropEvent, source) == 8);
const _: () = assert!(offset_of!(DropEvent, ifindex) == 24);
const _: () = assert!(offset_of!(DropEvent, len) == 28);
const _: () = assert!(offset_of!(DropEvent, weight) == 32);
const _: () = assert!(offset_of!(DropEvent, dst_port) == 36);
const _: () = assert!(offset_of!(DropEvent, rule) == 38);
const _: () = assert!(offset_of!(DropEvent, reason) == 40);
const _: () = assert!(offset_of!(DropEvent, protocol) == 41);
const _: () = assert!(offset_of!(DropEvent, family) == 42);
const _: () = assert!(reason::COUNT <= u8::MAX as u32);

const _: () = assert!(size_of::<EventHeader>() == 8);
const _: () = assert!(offset_of!(EventHeader, kind) == 0);
const _: () = assert!(offset_of!(EventHeader, len) == 4);

const _: () = assert!(size_of::<AutoBlockEvent>() == 48);
const _: () = assert!(offset_of!(AutoBlockEvent, header) == 0);
const _: () = assert!(offset_of!(AutoBlockEvent, source) == 8);
const _: () = assert!(offset_of!(AutoBlockEvent, rule) == 24);
const _: () = assert!(offset_of!(AutoBlockEvent, over_limit) == 28);
const _: () = assert!(offset_of!(AutoBlockEvent, blocked_at_ns) == 32);
const _: () = assert!(offset_of!(AutoBlockEvent, expires_at_ns) == 40);
