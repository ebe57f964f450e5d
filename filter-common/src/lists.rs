//! Allow and block lists (`ALLOW_V4`, `ALLOW_V6`, `BLOCK_V4`, `BLOCK_V6`)
//! and a shadow policy's blocks (`SHADOW_BLOCK_V4`, `SHADOW_BLOCK_V6`, in
//! tries of their own so that they never change what is enforced): LPM
//! tries keyed by network-order addresses.

use core::mem::{offset_of, size_of};

/// Address of an IPv4 LPM key (network order).
pub type Ipv4Bytes = [u8; 4];
/// Address of an IPv6 LPM key (network order).
pub type Ipv6Bytes = [u8; 16];

/// Value of an allowlist or blocklist entry.
///
/// Automatic blocks live in the blocklist tries too (origin
/// [`ORIGIN_AUTO`], keyed by the aggregated source prefix), so a packet costs
/// one blocklist lookup for both; the more specific entry decides the reason.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListEntry {
    /// `CLOCK_MONOTONIC` ns after which the entry no longer matches; 0 = permanent.
    pub expires_at_ns: u64,
    /// The entry's own prefix length, so the program can delete it once expired
    /// (a lookup returns only the value, and an expired longest match would
    /// otherwise hide shorter prefixes).
    pub prefix_len: u8,
    /// Who put the entry there: `ORIGIN_*`. The program tells only automatic
    /// blocks apart; user space shows and guards the others.
    pub origin: u8,
    /// For automatic blocks: the id of the rule whose limit was exceeded.
    pub rule: u8,
    /// Reserved (0).
    pub flags: u8,
    /// For automatic blocks: over-limit packets in the window that triggered it.
    pub over_limit: u32,
}

/// Entry added by an operator's live edit (`filter-ctl block`/`allow`).
pub const ORIGIN_CLI: u8 = 0;
/// Entry added by the program: a source that kept exceeding its limit.
pub const ORIGIN_AUTO: u8 = 1;
/// Entry from the applied policy file.
pub const ORIGIN_POLICY: u8 = 2;
/// Entry from a `CrowdSec` decision.
pub const ORIGIN_CROWDSEC: u8 = 3;

impl ListEntry {
    /// Whether the entry still applies at `now_ns`.
    #[inline(always)]
    #[must_use]
    pub const fn is_active(&self, now_ns: u64) -> bool {
        self.expires_at_ns == 0 || now_ns < self.expires_at_ns
    }
}

const _: () = assert!(size_of::<ListEntry>() == 16);
const _: () = assert!(offset_of!(ListEntry, expires_at_ns) == 0);
const _: () = assert!(offset_of!(ListEntry, prefix_len) == 8);
const _: () = assert!(offset_of!(ListEntry, origin) == 9);
const _: () = assert!(offset_of!(ListEntry, rule) == 10);
const _: () = assert!(offset_of!(ListEntry, flags) == 11);
const _: () = assert!(offset_of!(ListEntry, over_limit) == 12);
// `ListEntry::rule` holds a rule id: every id must fit.
const _: () = assert!(crate::MAX_RULES - 1 <= u8::MAX as u32);
