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
/// A shadow block entry (of a policy marked `shadow = true`) matched a
/// source that no allow entry passes: it would have been dropped. Counted
/// besides the packet's real verdict, never enforced.
pub const SHADOW_BLOCKLIST: u32 = 8;
/// A shadow rule's limit would have dropped the packet (counted besides its real verdict).
pub const SHADOW_RATELIMIT: u32 = 9;
/// A shadow rule would have denied the port (counted besides its real verdict).
pub const SHADOW_PORT_DENIED: u32 = 10;
/// Number of reasons; size of the `STATS` map.
pub const COUNT: u32 = 11;

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
    "shadow_blocklist",
    "shadow_ratelimit",
    "shadow_port_denied",
];

/// Whether the verdict for this reason is a drop.
#[must_use]
pub const fn is_drop(reason: u32) -> bool {
    matches!(
        reason,
        BLOCKLIST | MALFORMED | AUTOBLOCK | RATELIMIT | PORT_DENIED
    )
}

/// Whether `reason` counts would-be drops of shadow entries and rules: such
/// packets are also counted under their real verdict, so totals over all
/// reasons must leave these out.
#[must_use]
pub const fn is_shadow(reason: u32) -> bool {
    matches!(
        reason,
        SHADOW_BLOCKLIST | SHADOW_RATELIMIT | SHADOW_PORT_DENIED
    )
}

/// The shadow counterpart of an enforced drop reason, if it has one.
#[must_use]
pub const fn shadow_of(reason: u32) -> Option<u32> {
    match reason {
        BLOCKLIST => Some(SHADOW_BLOCKLIST),
        RATELIMIT => Some(SHADOW_RATELIMIT),
        PORT_DENIED => Some(SHADOW_PORT_DENIED),
        _ => None,
    }
}
