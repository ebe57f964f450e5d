//! Records for user space in the `EVENTS` ring buffer, each behind an
//! `EventHeader` (`filter_common::events`).

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::bpf_ktime_get_coarse_ns,
};
use filter_common::{
    AutoBlockEvent, DropEvent, Ipv6Bytes, abi::capacity, events::sampling, table_stat,
};

use crate::{
    maps::{EVENTS, SAMPLE_STATE, SAMPLING},
    parse::Packet,
    stats::bump_table_stat,
};

/// Nanoseconds of one window of the per-CPU event cap.
const CAP_WINDOW_NS: u64 = 1_000_000_000;

/// Reports one drop in `SAMPLING[why]` of its reason (1 in N, N set by user
/// space; 0 = none), at most `SAMPLING[CAP]` events per CPU per second. The
/// drop path only: a passed packet never gets here. Every drop pays one
/// inlined per-CPU read and a decrement (`SAMPLE_STATE[why]` counts down the
/// drops to skip before the next event); only the drop it reaches 0 on
/// reads the rate, and only a sampled drop pays for the call below.
#[inline(always)]
pub fn sampled_drop(ifindex: u32, why: u32, rule: u16, packet: Option<&Packet>, len: u64) {
    let Some(left) = SAMPLE_STATE.get_ptr_mut(why) else {
        return;
    };
    // SAFETY: a per-CPU slot of a map value, valid for this run; no other
    // CPU writes it and this program does not run twice at once on a CPU.
    unsafe {
        if *left != 0 {
            *left -= 1;
            return;
        }
    }
    // A rate of 0 leaves the count at 0: each drop reads the rate again,
    // so a reason turned on samples from its next drop.
    let one_in = match SAMPLING.get(why) {
        Some(&n) if n != 0 => n,
        _ => return,
    };
    // SAFETY: as above.
    unsafe { *left = u64::from(one_in - 1) };
    emit_drop(ifindex, why, rule, packet, len);
}

/// Sends one drop event, unless this CPU reached its cap. Not inlined: a
/// call of its own keeps its locals off the caller's nearly full stack
/// frame (and BPF calls take at most five arguments: the rate is read again).
#[inline(never)]
fn emit_drop(ifindex: u32, why: u32, rule: u16, packet: Option<&Packet>, len: u64) {
    let one_in = SAMPLING.get(why).copied().unwrap_or(1);
    if !within_cap() {
        bump_table_stat(table_stat::DROP_EVENTS_CAPPED);
        return;
    }
    // Written in place in the ring buffer: no 48-byte copy on the stack,
    // which the rest of the program already fills.
    let Some(mut entry) = EVENTS.reserve::<DropEvent>(0) else {
        bump_table_stat(table_stat::EVENTS_LOST);
        return;
    };
    let event = entry.as_mut_ptr();
    #[expect(
        clippy::cast_possible_truncation,
        reason = "frames are far below 4 GiB and reasons below 256 (asserted in filter-common)"
    )]
    // SAFETY: `event` points at a reserved, exclusively ours, 8-byte aligned
    // record of `size_of::<DropEvent>()` bytes; every field is written
    // before it is submitted.
    unsafe {
        (*event).header = DropEvent::HEADER;
        (*event).ifindex = ifindex;
        (*event).len = len as u32;
        (*event).weight = one_in;
        (*event).rule = rule;
        (*event).reason = why as u8;
        (*event)._pad = [0; 5];
        match packet {
            Some(packet) => {
                (*event).source = packet.source_bytes();
                (*event).protocol = packet.protocol;
                (*event).dst_port = if packet.has_ports { packet.dst_port } else { 0 };
                (*event).family = if packet.is_v6 { 6 } else { 4 };
            }
            None => {
                (*event).source = [0; 16];
                (*event).protocol = 0;
                (*event).dst_port = 0;
                (*event).family = 0;
            }
        }
    }
    entry.submit(drop_submit_flags());
}

/// Drop events do not wake the controller, which reads the ring on a short
/// timer: a wake-up per event (an `irq_work` and a scheduled reader on the
/// flooded CPUs) cost floods more than the sampling itself. Once the ring is
/// half full, the event wakes the reader early so that none is lost.
#[inline(always)]
fn drop_submit_flags() -> u64 {
    if EVENTS.query(u64::from(BPF_RB_AVAIL_DATA)) >= u64::from(capacity::EVENTS_BYTES / 2) {
        u64::from(BPF_RB_FORCE_WAKEUP)
    } else {
        u64::from(BPF_RB_NO_WAKEUP)
    }
}

/// Counts one event against this CPU's per-second cap; false once it is reached.
#[inline(always)]
fn within_cap() -> bool {
    let cap = SAMPLING.get(sampling::CAP).copied().unwrap_or(0);
    if cap == 0 {
        return true;
    }
    let (Some(start), Some(emitted)) = (
        SAMPLE_STATE.get_ptr_mut(sampling::WINDOW_START),
        SAMPLE_STATE.get_ptr_mut(sampling::EMITTED),
    ) else {
        return false;
    };
    // SAFETY: a helper without arguments that only reads the clock.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    // SAFETY: per-CPU slots of a map value, valid for this run, written by
    // this CPU only.
    unsafe {
        if now.wrapping_sub(*start) >= CAP_WINDOW_NS {
            *start = now;
            *emitted = 0;
        }
        if *emitted >= u64::from(cap) {
            return false;
        }
        *emitted += 1;
    }
    true
}

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
