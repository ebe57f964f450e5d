//! Records of the `EVENTS` ring buffer. Every record starts with an
//! [`EventHeader`] whose `kind` says what follows and whose `len` is the
//! record's whole size: a reader skips kinds it does not know, and a new
//! kind does not break an old reader.

use core::mem::{offset_of, size_of};

use crate::lists::Ipv6Bytes;

/// Start of every ring-buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    /// `EVENT_*`: what the record holds.
    pub kind: u32,
    /// Size of the whole record in bytes, header included.
    pub len: u32,
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
    #[expect(
        clippy::cast_possible_truncation,
        reason = "a 48-byte record (size asserted)"
    )]
    pub const HEADER: EventHeader = EventHeader {
        kind: EVENT_AUTOBLOCK,
        len: size_of::<Self>() as u32,
    };
}

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
