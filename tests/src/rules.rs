//! Helpers shared by the rule table tests (`prog_ratelimit`, `prog_autoblock`,
//! `prog_events`): frames from a source text, and rules frozen so that no
//! bucket refills while a test runs.

use filter_common::{RateRule, TICKS_PER_SEC, xdp_action};

use crate::{
    frames::{self, Frame, ip4, ip6},
    model::Model,
    progtest::ProgTest,
};

/// Ticks one packet costs at one packet per 1000 s.
pub const SLOW: u64 = 1000 * TICKS_PER_SEC;

/// Makes rule `id` let exactly `burst` packets per source through during
/// the test (no refill).
pub fn freeze(test: &ProgTest, id: u32, burst: u64) {
    test.patch_rule(id, |rule: &mut RateRule| {
        rule.packet_interval = SLOW;
        rule.packet_tolerance = (burst - 1) * SLOW;
    });
}

#[must_use]
pub fn udp4(src: &str, port: u16) -> Vec<u8> {
    Frame::ipv4(frames::udp4(ip4(src), port)).build()
}

#[must_use]
pub fn tcp4(src: &str, port: u16) -> Vec<u8> {
    Frame::ipv4(frames::tcp4(ip4(src), port)).build()
}

#[must_use]
pub fn udp6(src: &str, port: u16) -> Vec<u8> {
    Frame::ipv6(frames::udp6(ip6(src), port)).build()
}

#[must_use]
pub fn tcp6(src: &str, port: u16) -> Vec<u8> {
    Frame::ipv6(frames::tcp6(ip6(src), port)).build()
}

#[must_use]
pub fn icmp4(src: &str) -> Vec<u8> {
    Frame::ipv4(frames::icmp4(ip4(src))).build()
}

/// The model's rule counters agree with the kernel's for rule `ids`.
pub fn assert_rule_counters(test: &ProgTest, model: &Model, ids: &[u32]) {
    for &id in ids {
        assert_eq!(
            test.rule_counters(id),
            model.rule_stats[id as usize],
            "rule counters of rule {id}"
        );
    }
}

/// `XDP_DROP`, as a test run returns it.
pub const XDP_DROP_ACTION: u32 = xdp_action::DROP;

/// `XDP_PASS`, as a test run returns it.
pub const XDP_PASS_ACTION: u32 = xdp_action::PASS;
