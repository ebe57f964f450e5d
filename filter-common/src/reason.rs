//! Why the program reached its verdict. Index into the `STATS` map.

/// Passed every check.
pub const PASS: u32 = 0;
/// Source is on the allowlist: passed without further checks.
pub const ALLOWLIST: u32 = 1;
/// Source is on the blocklist: dropped.
pub const BLOCKLIST: u32 = 2;
/// Frame claims a header it does not contain, or a header is invalid: dropped.
pub const MALFORMED: u32 = 3;
/// Source is automatically blocked (it kept exceeding its limit): dropped.
pub const AUTOBLOCK: u32 = 4;
/// Source exceeded its rate limit: dropped.
pub const RATELIMIT: u32 = 5;
/// A port rule closes the port, or the source is not in the rule's `only-from` set: dropped.
pub const PORT_DENIED: u32 = 6;
/// Not IPv4/IPv6 (ARP, LLDP, ...): passed untouched.
pub const NON_IP: u32 = 7;
/// Number of reasons; size of the `STATS` map.
pub const COUNT: u32 = 8;

/// Names used by the CLI, JSON output and metrics, indexed by reason.
pub const NAMES: [&str; COUNT as usize] = [
    "pass",
    "allowlist",
    "blocklist",
    "malformed",
    "autoblock",
    "ratelimit",
    "port_denied",
    "non_ip",
];

/// Whether the verdict for this reason is a drop.
#[must_use]
pub const fn is_drop(reason: u32) -> bool {
    matches!(
        reason,
        BLOCKLIST | MALFORMED | AUTOBLOCK | RATELIMIT | PORT_DENIED
    )
}
