//! Counters: every verdict per reason, rule verdicts per rule, and events
//! about the program's own tables. Nothing logs per packet.

use filter_common::{reason, stats_index};

use crate::maps::{RULE_STATS, STATS, TABLE_STATS};

/// Counts a verdict under its reason, in the slot of the interface it came in on.
#[inline(always)]
pub fn count(ifindex: u32, why: u32, len: u64) {
    if let Some(counter) = STATS.get_ptr_mut(stats_index(ifindex, why)) {
        // SAFETY: a valid pointer into this CPU's slot of a per-CPU array:
        // no other CPU writes it, and the program runs to completion on this one.
        unsafe {
            (*counter).packets += 1;
            (*counter).bytes += len;
        }
    }
}

/// Adds one to a `TABLE_STATS` counter (`table_stat::*`).
#[inline(always)]
pub fn bump_table_stat(index: u32) {
    if let Some(value) = TABLE_STATS.get_ptr_mut(index) {
        // SAFETY: as in `count`, this CPU's own slot.
        unsafe { *value += 1 };
    }
}

/// Counts a rule's verdict under the rule's id.
#[inline(always)]
pub fn count_rule(id: u32, why: u32, len: u64) {
    if let Some(counter) = RULE_STATS.get_ptr_mut(id) {
        // SAFETY: as in `count`, this CPU's own slot; the reference lives
        // only within this block.
        let counter = unsafe { &mut *counter };
        let target = if reason::is_drop(why) {
            &mut counter.dropped
        } else {
            &mut counter.passed
        };
        target.packets += 1;
        target.bytes += len;
    }
}
