//! Rate-limit rules as users write them: a target (`default`, `tcp/25`,
//! `udp/1000-2000`) and a spec (rate, burst, bytes, drop, only-from,
//! automatic blocks), validated once and turned into the kernel's
//! [`RateRule`]. Knows nothing of maps.

use std::{fmt, str::FromStr, time::Duration};

use filter_common::{
    DEFAULT_RULE, IPPROTO_TCP, IPPROTO_UDP, PORT_INDEX_UDP_BASE, RULE_DROP, RULE_FLAG_ONLY_FROM,
    RULE_LIMIT, RateRule, TICKS_PER_SEC,
};

use crate::{error::Error, error::excerpt, spec::cidr::Cidr};

/// Fails with [`Error::BadInput`] unless `cond` holds.
macro_rules! check {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(Error::BadInput(format!($($msg)+)));
        }
    };
}

/// What a rule applies to: `default`, `tcp/25`, `udp/1000-2000`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Default,
    Port { protocol: u8, first: u16, last: u16 },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    #[error("'{0}' is not a rule target (expected default, tcp/PORT, udp/PORT or tcp/FIRST-LAST)")]
    Shape(String),
    #[error("'{0}': unknown protocol (port rules take tcp or udp)")]
    Protocol(String),
    #[error("'{0}': ports are numbers from 0 to 65535")]
    Port(String),
    #[error("'{0}': the range's first port is above its last")]
    Range(String),
}

impl FromStr for Target {
    type Err = TargetError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text == "default" {
            return Ok(Self::Default);
        }
        let (proto, ports) = text
            .split_once('/')
            .ok_or_else(|| TargetError::Shape(excerpt(text, 80)))?;
        let protocol = match proto.to_ascii_lowercase().as_str() {
            "tcp" => IPPROTO_TCP,
            "udp" => IPPROTO_UDP,
            _ => return Err(TargetError::Protocol(excerpt(text, 80))),
        };
        let port = |p: &str| {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(TargetError::Port(excerpt(text, 80)));
            }
            p.parse::<u16>()
                .map_err(|_| TargetError::Port(excerpt(text, 80)))
        };
        let (first, last) = if let Some((a, b)) = ports.split_once('-') {
            (port(a)?, port(b)?)
        } else {
            let p = port(ports)?;
            (p, p)
        };
        if first > last {
            return Err(TargetError::Range(excerpt(text, 80)));
        }
        Ok(Self::Port {
            protocol,
            first,
            last,
        })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Default => f.write_str("default"),
            Self::Port {
                protocol,
                first,
                last,
            } => {
                let proto = if *protocol == IPPROTO_TCP {
                    "tcp"
                } else {
                    "udp"
                };
                if first == last {
                    write!(f, "{proto}/{first}")
                } else {
                    write!(f, "{proto}/{first}-{last}")
                }
            }
        }
    }
}

impl Target {
    /// The target of `rule`, whose id is `id`.
    #[must_use]
    pub fn of_rule(rule: &RateRule, id: u32) -> Self {
        if id == DEFAULT_RULE {
            Self::Default
        } else {
            Self::Port {
                protocol: rule.protocol,
                first: rule.port_first,
                last: rule.port_last,
            }
        }
    }

    #[must_use]
    pub fn overlaps(&self, other: &Self) -> bool {
        match (self, other) {
            (
                Self::Port {
                    protocol: p1,
                    first: f1,
                    last: l1,
                },
                Self::Port {
                    protocol: p2,
                    first: f2,
                    last: l2,
                },
            ) => p1 == p2 && f1 <= l2 && f2 <= l1,
            _ => false,
        }
    }

    /// Indexes of the target's ports in `PORT_RULE_INDEX` (none for the default).
    #[must_use]
    pub fn index_range(&self) -> std::ops::Range<u32> {
        match self {
            Self::Default => 0..0,
            Self::Port {
                protocol,
                first,
                last,
            } => {
                let base = if *protocol == IPPROTO_UDP {
                    PORT_INDEX_UDP_BASE
                } else {
                    0
                };
                base + u32::from(*first)..base + u32::from(*last) + 1
            }
        }
    }
}

/// Automatic block settings of a rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AutoblockSpec {
    pub after: u32,
    pub window: Duration,
    pub block_for: Duration,
}

/// How long over-limit packets are counted for an automatic block when not
/// given (`limit set --window`'s default).
pub const DEFAULT_AUTOBLOCK_WINDOW: Duration = Duration::from_secs(10);
/// How long an automatic block lasts when not given (`limit set
/// --block-for`'s default).
pub const DEFAULT_AUTOBLOCK_FOR: Duration = Duration::from_mins(10);

/// A rule as the user gives it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LimitSpec {
    /// Packets per second per source.
    pub rate: Option<u64>,
    /// Packets a source may send at once (default: one second's worth).
    pub burst: Option<u64>,
    /// Bytes per second per source.
    pub bytes: Option<u64>,
    /// Close the port to everyone.
    pub drop: bool,
    /// Only these sources may use the port.
    pub only_from: Vec<Cidr>,
    pub autoblock: Option<AutoblockSpec>,
}

/// Highest packet rate accepted: keeps one interval at >= 16 ticks (1 ns).
pub const MAX_RATE: u64 = 1_000_000_000;

impl LimitSpec {
    /// Validates the spec and builds the kernel rule.
    pub fn to_rule(&self, target: &Target) -> Result<RateRule, Error> {
        let mut rule = RateRule::default();
        if let Target::Port {
            protocol,
            first,
            last,
        } = *target
        {
            rule.protocol = protocol;
            rule.port_first = first;
            rule.port_last = last;
        }
        if self.drop {
            check!(
                *target != Target::Default,
                "the default rule cannot --drop (block 0.0.0.0/0 and ::/0 instead)"
            );
            check!(
                self.rate.is_none()
                    && self.bytes.is_none()
                    && self.only_from.is_empty()
                    && self.autoblock.is_none(),
                "--drop closes the port to everyone: it takes no --rate, --bytes, --only-from or autoblock options"
            );
            rule.action = RULE_DROP;
            return Ok(rule);
        }
        rule.action = RULE_LIMIT;
        if !self.only_from.is_empty() {
            check!(
                *target != Target::Default,
                "--only-from applies to port rules, not to the default rule"
            );
            rule.flags |= RULE_FLAG_ONLY_FROM;
        }
        if self.rate.is_none() {
            check!(
                self.bytes.is_none() && self.burst.is_none() && self.autoblock.is_none(),
                "--burst, --bytes and autoblock options need --rate"
            );
            check!(
                !self.only_from.is_empty(),
                "give --rate PPS, --drop or --only-from CIDR..."
            );
            return Ok(rule);
        }
        let rate = self.rate.unwrap_or_default();
        check!(
            rate >= 1,
            "--rate must be at least 1 packet per second (got 0)"
        );
        check!(
            rate <= MAX_RATE,
            "--rate {rate} is above the maximum of {MAX_RATE} packets per second"
        );
        let burst = self.burst.unwrap_or(rate);
        check!(burst >= 1, "--burst must be at least 1 (got 0)");
        rule.packets_per_sec = rate;
        rule.burst = burst;
        rule.packet_interval = TICKS_PER_SEC / rate;
        rule.packet_tolerance = (burst - 1)
            .checked_mul(rule.packet_interval)
            .filter(|t| *t < u64::MAX / 4)
            .ok_or_else(|| {
                Error::BadInput(format!(
                    "--burst {burst} at --rate {rate} is too large (over 100 years of tolerance)"
                ))
            })?;
        if let Some(bytes) = self.bytes {
            check!(
                bytes >= 1,
                "--bytes must be at least 1 byte per second (got 0)"
            );
            check!(
                bytes <= TICKS_PER_SEC,
                "--bytes {bytes} is above the maximum of {TICKS_PER_SEC} bytes per second"
            );
            rule.bytes_per_sec = bytes;
            rule.byte_interval = TICKS_PER_SEC / bytes;
            // The byte bucket tolerates a burst of the same duration as the packet bucket.
            rule.byte_tolerance = rule.packet_tolerance;
        }
        if let Some(auto) = self.autoblock {
            check!(auto.after >= 1, "--autoblock-after must be at least 1");
            check!(!auto.window.is_zero(), "--window must be longer than 0");
            check!(
                !auto.block_for.is_zero(),
                "--block-for must be longer than 0"
            );
            rule.autoblock_after = auto.after;
            rule.autoblock_window_ns = u64::try_from(auto.window.as_nanos()).unwrap_or(u64::MAX);
            rule.autoblock_for_ns = u64::try_from(auto.block_for.as_nanos()).unwrap_or(u64::MAX);
        }
        Ok(rule)
    }
}

/// The rate limiter's clock (`filter-ctl limit clock`, a policy's `rate_clock`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RateClock {
    /// The default: per rule, the tick clock when the rule's burst covers
    /// one tick of its rate (it then limits exactly as the precise clock
    /// does), else `bpf_ktime_get_ns`.
    Auto,
    /// The time of the last timer tick (`jiffies`) for every rule: cheapest;
    /// a rule whose burst is below one tick of its rate is cut to its burst
    /// per tick (1-4 ms).
    Coarse,
    /// `bpf_ktime_get_ns` for every rate-limited packet.
    Precise,
}

impl RateClock {
    /// The value of `Config::rate_clock`.
    #[must_use]
    pub fn value(self) -> u32 {
        match self {
            Self::Auto => filter_common::CLOCK_AUTO,
            Self::Coarse => filter_common::CLOCK_COARSE,
            Self::Precise => filter_common::CLOCK_PRECISE,
        }
    }

    /// The clock `Config::rate_clock` names; an unknown value reads as the
    /// kernel treats it (automatic).
    #[must_use]
    pub fn of_value(value: u32) -> Self {
        match value {
            filter_common::CLOCK_COARSE => Self::Coarse,
            filter_common::CLOCK_PRECISE => Self::Precise,
            _ => Self::Auto,
        }
    }
}

impl fmt::Display for RateClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Coarse => "coarse",
            Self::Precise => "precise",
        })
    }
}

/// Checks the prefix lengths that sources are grouped by for rate limits:
/// IPv4 1-32, IPv6 1-128.
pub fn check_aggregation(ipv4: Option<u32>, ipv6: Option<u32>) -> Result<(), Error> {
    if let Some(v4) = ipv4 {
        check!(
            (1..=32).contains(&v4),
            "--ipv4-prefix must be 1-32 (got {v4})"
        );
    }
    if let Some(v6) = ipv6 {
        check!(
            (1..=128).contains(&v6),
            "--ipv6-prefix must be 1-128 (got {v6})"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_targets() {
        assert_eq!("default".parse(), Ok(Target::Default));
        assert_eq!(
            "tcp/25".parse(),
            Ok(Target::Port {
                protocol: IPPROTO_TCP,
                first: 25,
                last: 25
            })
        );
        assert_eq!(
            "UDP/1000-2000".parse(),
            Ok(Target::Port {
                protocol: IPPROTO_UDP,
                first: 1000,
                last: 2000
            })
        );
        assert_eq!(
            "udp/0-65535".parse::<Target>().map(|t| t.to_string()),
            Ok("udp/0-65535".into())
        );
        for bad in [
            "sctp/5",
            "tcp/",
            "tcp/70000",
            "tcp/20-10",
            "tcp/a",
            "25",
            "tcp/1-2-3",
            "tcp/-5",
        ] {
            assert!(bad.parse::<Target>().is_err(), "{bad}");
        }
    }

    #[test]
    fn validates_specs() {
        let port: Target = "tcp/25".parse().unwrap();
        let ok = LimitSpec {
            rate: Some(10),
            burst: Some(20),
            ..Default::default()
        };
        let rule = ok.to_rule(&port).unwrap();
        assert_eq!(rule.packet_interval, TICKS_PER_SEC / 10);
        assert_eq!(rule.packet_tolerance, 19 * (TICKS_PER_SEC / 10));
        let bad = [
            LimitSpec {
                rate: Some(0),
                ..Default::default()
            },
            LimitSpec {
                rate: Some(5),
                burst: Some(0),
                ..Default::default()
            },
            LimitSpec {
                drop: true,
                rate: Some(5),
                ..Default::default()
            },
            LimitSpec::default(),
            LimitSpec {
                rate: Some(MAX_RATE + 1),
                ..Default::default()
            },
            LimitSpec {
                rate: Some(5),
                bytes: Some(0),
                ..Default::default()
            },
        ];
        for spec in bad {
            assert!(spec.to_rule(&port).is_err(), "{spec:?}");
        }
        let drop_default = LimitSpec {
            drop: true,
            ..Default::default()
        };
        assert!(drop_default.to_rule(&Target::Default).is_err());
    }

    #[test]
    fn overlap() {
        let a: Target = "tcp/100-200".parse().unwrap();
        assert!(a.overlaps(&"tcp/200".parse().unwrap()));
        assert!(!a.overlaps(&"udp/150".parse().unwrap()));
        assert!(!a.overlaps(&"tcp/201-300".parse().unwrap()));
    }
}
