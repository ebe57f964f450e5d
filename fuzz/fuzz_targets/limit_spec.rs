//! `LimitSpec::to_rule` on arbitrary field values: it accepts exactly the
//! specs its rules allow (an independent statement of them below), and the
//! kernel rule it builds carries what the spec says.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use arbitrary::Arbitrary;
use filter_common::{
    IPPROTO_TCP, IPPROTO_UDP, RULE_DROP, RULE_FLAG_ONLY_FROM, RULE_LIMIT, RateRule, TICKS_PER_SEC,
};
use filter_ctl::spec::{
    cidr::Cidr,
    rule::{AutoblockSpec, LimitSpec, MAX_RATE, Target},
};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    /// `None`: the default rule; else (tcp?, one end, other end).
    port: Option<(bool, u16, u16)>,
    rate: Option<u64>,
    burst: Option<u64>,
    bytes: Option<u64>,
    drop: bool,
    /// At most a few: (IPv6?, address bytes, prefix).
    only_from: Vec<(bool, [u8; 16], u8)>,
    autoblock: Option<Autoblock>,
}

#[derive(Arbitrary, Debug)]
struct Autoblock {
    after: u32,
    /// Seconds and nanoseconds.
    window: (u64, u32),
    block_for: (u64, u32),
}

fn duration((secs, nanos): (u64, u32)) -> Duration {
    Duration::new(secs, nanos % 1_000_000_000)
}

fuzz_target!(|input: Input| {
    let target = match input.port {
        None => Target::Default,
        Some((tcp, a, b)) => Target::Port {
            protocol: if tcp { IPPROTO_TCP } else { IPPROTO_UDP },
            first: a.min(b),
            last: a.max(b),
        },
    };
    let only_from = input
        .only_from
        .iter()
        .take(4)
        .map(|&(v6, bytes, prefix)| {
            let ip = if v6 {
                IpAddr::V6(Ipv6Addr::from(bytes))
            } else {
                IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
            };
            Cidr::new(ip, prefix)
        })
        .collect();
    let spec = LimitSpec {
        rate: input.rate,
        burst: input.burst,
        bytes: input.bytes,
        drop: input.drop,
        only_from,
        autoblock: input.autoblock.map(|auto| AutoblockSpec {
            after: auto.after,
            window: duration(auto.window),
            block_for: duration(auto.block_for),
        }),
    };
    match spec.to_rule(&target) {
        Ok(rule) => {
            assert!(allowed(&spec, &target), "accepted {spec:?} for {target}");
            check_rule(&spec, &target, &rule);
        }
        Err(e) => {
            assert!(
                !allowed(&spec, &target),
                "rejected {spec:?} for {target}: {e}"
            );
            assert!(!e.to_string().is_empty());
        }
    }
});

/// The rules of a spec, as the CLI documents them.
fn allowed(spec: &LimitSpec, target: &Target) -> bool {
    let is_default = *target == Target::Default;
    if spec.drop {
        // Closes a port to everyone: no limits, no only-from.
        return !is_default
            && spec.rate.is_none()
            && spec.bytes.is_none()
            && spec.only_from.is_empty()
            && spec.autoblock.is_none();
    }
    if is_default && !spec.only_from.is_empty() {
        return false;
    }
    let Some(rate) = spec.rate else {
        // Only-from alone; burst, bytes and autoblock refine a rate.
        return !spec.only_from.is_empty()
            && spec.burst.is_none()
            && spec.bytes.is_none()
            && spec.autoblock.is_none();
    };
    let burst = spec.burst.unwrap_or(rate);
    (1..=MAX_RATE).contains(&rate)
        && burst >= 1
        && u128::from(burst - 1) * u128::from(TICKS_PER_SEC / rate) < u128::from(u64::MAX / 4)
        && spec
            .bytes
            .is_none_or(|bytes| (1..=TICKS_PER_SEC).contains(&bytes))
        && spec.autoblock.is_none_or(|auto| {
            auto.after >= 1 && !auto.window.is_zero() && !auto.block_for.is_zero()
        })
}

/// The kernel rule says what the spec says.
fn check_rule(spec: &LimitSpec, target: &Target, rule: &RateRule) {
    let (protocol, first, last) = match *target {
        Target::Default => (0, 0, 0),
        Target::Port {
            protocol,
            first,
            last,
        } => (protocol, first, last),
    };
    assert_eq!(
        (rule.protocol, rule.port_first, rule.port_last),
        (protocol, first, last)
    );
    if spec.drop {
        let closed = RateRule {
            action: RULE_DROP,
            protocol,
            port_first: first,
            port_last: last,
            ..RateRule::default()
        };
        assert_eq!(*rule, closed, "{spec:?}");
        return;
    }
    assert_eq!(rule.action, RULE_LIMIT);
    assert_eq!(
        rule.flags & RULE_FLAG_ONLY_FROM != 0,
        !spec.only_from.is_empty()
    );
    let Some(rate) = spec.rate else {
        // No limits at all: only the only-from set applies.
        assert_eq!(
            (
                rule.packet_interval,
                rule.byte_interval,
                rule.autoblock_after
            ),
            (0, 0, 0),
            "{spec:?}"
        );
        return;
    };
    let burst = spec.burst.unwrap_or(rate);
    assert_eq!((rule.packets_per_sec, rule.burst), (rate, burst));
    assert_eq!(rule.packet_interval, TICKS_PER_SEC / rate);
    // At least one nanosecond per packet at the highest rate.
    assert!(rule.packet_interval >= TICKS_PER_SEC / MAX_RATE);
    assert_eq!(rule.packet_tolerance, (burst - 1) * rule.packet_interval);
    match spec.bytes {
        Some(bytes) => {
            assert_eq!(rule.bytes_per_sec, bytes);
            assert_eq!(rule.byte_interval, TICKS_PER_SEC / bytes);
            assert!(rule.byte_interval >= 1);
            assert_eq!(rule.byte_tolerance, rule.packet_tolerance);
        }
        None => assert_eq!(
            (rule.bytes_per_sec, rule.byte_interval, rule.byte_tolerance),
            (0, 0, 0)
        ),
    }
    let saturating_ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    match spec.autoblock {
        Some(auto) => {
            assert_eq!(rule.autoblock_after, auto.after);
            assert_eq!(rule.autoblock_window_ns, saturating_ns(auto.window));
            assert_eq!(rule.autoblock_for_ns, saturating_ns(auto.block_for));
            assert!(rule.autoblock_window_ns >= 1 && rule.autoblock_for_ns >= 1);
        }
        None => assert_eq!(
            (
                rule.autoblock_after,
                rule.autoblock_window_ns,
                rule.autoblock_for_ns
            ),
            (0, 0, 0)
        ),
    }
}
