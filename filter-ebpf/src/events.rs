//! Records for user space in the `EVENTS` ring buffer, each behind an
//! `EventHeader` (`filter_common::events`).

use filter_common::{AutoBlockEvent, Ipv6Bytes, table_stat};

use crate::{maps::EVENTS, stats::bump_table_stat};

/// Reports an automatic block; a full ring buffer counts a lost event.
#[inline(always)]
pub fn autoblocked(
    source: &Ipv6Bytes,
    rule: u32,
    over_limit: u32,
    blocked_at_ns: u64,
    expires_at_ns: u64,
) {
    let event = AutoBlockEvent {
        header: AutoBlockEvent::HEADER,
        source: *source,
        rule,
        over_limit,
        blocked_at_ns,
        expires_at_ns,
    };
    if EVENTS.output::<AutoBlockEvent>(&event, 0).is_err() {
        bump_table_stat(table_stat::EVENTS_LOST);
    }
}
