//! Who is being dropped, without a log line per packet: sampled drop
//! events are added up per source over an interval (default 10 s), scaled
//! up by their sampling rate, and logged at most once per source per
//! interval. A source seen in several intervals in a row is flagged as a
//! repeat offender. Memory is bounded whatever the flood: at most
//! [`MAX_SOURCES`] sources are tracked per interval; events of further
//! sources are counted under "other sources".

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
    net::IpAddr,
    time::Duration,
};

/// Sources tracked per interval (spoofed floods bring millions).
pub const MAX_SOURCES: usize = 10_000;
/// Sources logged per interval, the heaviest first; the rest are summed.
pub const LOGGED_SOURCES: usize = 20;

/// One sampled drop, as the controller decoded it from the ring buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SampledDrop {
    pub source: IpAddr,
    /// Reason name (`ratelimit`, `blocklist`, ...).
    pub reason: &'static str,
    /// Rule name (`tcp/25`, `default`), if a rule decided.
    pub rule: Option<String>,
    /// This event stands for this many drops (the sampling rate, 1-in-N).
    pub weight: u64,
}

#[derive(Default, Debug)]
struct SourceTally {
    /// Estimated drops (events × their weight).
    estimated: u64,
    /// Events received.
    events: u64,
    /// Estimated drops per (reason, rule), for the log line.
    by_cause: BTreeMap<(&'static str, Option<String>), u64>,
    /// The largest sampling rate among its events (for the "~" and the note).
    max_weight: u64,
}

/// One line to log at the end of an interval.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Offender {
    pub source: IpAddr,
    pub estimated: u64,
    pub events: u64,
    /// The heaviest cause: reason and rule.
    pub reason: &'static str,
    pub rule: Option<String>,
    /// Intervals in a row this source was seen, this one included.
    pub consecutive: u32,
    /// Whether `estimated` is scaled up from sampling (some event stood for more than one drop).
    pub sampled: bool,
}

impl Offender {
    /// Whether the source was seen in the previous interval too.
    #[must_use]
    pub fn is_repeat(&self) -> bool {
        self.consecutive >= 2
    }

    /// The log line: `198.18.0.9 dropped ~48,200 packets (ratelimit, tcp/25)
    /// in the last 10s; 3rd interval in a row`.
    #[must_use]
    pub fn line(&self, interval: Duration) -> String {
        let cause = match &self.rule {
            Some(rule) => format!("{}, {rule}", self.reason),
            None => self.reason.to_string(),
        };
        let mut line = format!(
            "{} dropped {}{} packets ({cause}) in the last {}s",
            self.source,
            if self.sampled { "~" } else { "" },
            thousands(self.estimated),
            interval.as_secs()
        );
        if self.is_repeat() {
            let _ = write!(
                line,
                "; {} interval in a row (repeat offender)",
                ordinal(self.consecutive)
            );
        }
        if self.sampled {
            let _ = write!(
                line,
                " [estimated from {} sampled events]",
                thousands(self.events)
            );
        }
        line
    }
}

/// The interval's summary: the heaviest sources, and the rest summed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub offenders: Vec<Offender>,
    /// Sources not listed (beyond [`LOGGED_SOURCES`] or [`MAX_SOURCES`]).
    pub other_sources: u64,
    /// Their estimated drops.
    pub other_estimated: u64,
}

/// Adds up sampled drops per source over intervals.
#[derive(Debug, Default)]
pub struct Aggregator {
    current: HashMap<IpAddr, SourceTally>,
    /// Sources of the last interval and how many intervals in a row each was seen.
    streaks: HashMap<IpAddr, u32>,
    overflow_sources: u64,
    overflow_estimated: u64,
}

impl Aggregator {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    pub fn record(&mut self, drop: SampledDrop) {
        let weight = drop.weight.max(1);
        if !self.current.contains_key(&drop.source) && self.current.len() >= MAX_SOURCES {
            self.overflow_sources += 1;
            self.overflow_estimated += weight;
            return;
        }
        let tally = self.current.entry(drop.source).or_default();
        tally.estimated += weight;
        tally.events += 1;
        tally.max_weight = tally.max_weight.max(weight);
        *tally.by_cause.entry((drop.reason, drop.rule)).or_default() += weight;
    }

    /// Ends the interval: the summary to log, heaviest sources first.
    pub fn flush(&mut self) -> Summary {
        let summary = self.summarize();
        self.streaks = self
            .current
            .keys()
            .map(|source| (*source, self.streaks.get(source).copied().unwrap_or(0) + 1))
            .collect();
        self.current.clear();
        self.overflow_sources = 0;
        self.overflow_estimated = 0;
        summary
    }

    /// The interval so far, without ending it (for `top`).
    #[must_use]
    pub fn peek(&self) -> Summary {
        self.summarize()
    }

    fn summarize(&self) -> Summary {
        let mut offenders: Vec<Offender> = self
            .current
            .iter()
            .map(|(source, tally)| {
                let ((reason, rule), _) = tally
                    .by_cause
                    .iter()
                    .max_by_key(|(_, n)| **n)
                    .map_or((("unknown", None), 0), |((r, rule), n)| {
                        ((*r, rule.clone()), *n)
                    });
                Offender {
                    source: *source,
                    estimated: tally.estimated,
                    events: tally.events,
                    reason,
                    rule,
                    consecutive: self.streaks.get(source).copied().unwrap_or(0) + 1,
                    sampled: tally.max_weight > 1,
                }
            })
            .collect();
        offenders.sort_by(|a, b| b.estimated.cmp(&a.estimated).then(a.source.cmp(&b.source)));
        let rest = offenders.split_off(offenders.len().min(LOGGED_SOURCES));
        Summary {
            other_sources: rest.len() as u64 + self.overflow_sources,
            other_estimated: rest.iter().map(|o| o.estimated).sum::<u64>()
                + self.overflow_estimated,
            offenders,
        }
    }
}

/// 48200 -> "48,200" (also the benchmark charts' axis labels).
#[must_use]
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// 1 -> "1st", 2 -> "2nd", 3 -> "3rd", 11 -> "11th".
fn ordinal(n: u32) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drop(source: &str, reason: &'static str, rule: Option<&str>, weight: u64) -> SampledDrop {
        SampledDrop {
            source: source.parse().unwrap(),
            reason,
            rule: rule.map(str::to_string),
            weight,
        }
    }

    #[test]
    fn scales_by_the_sampling_rate_and_names_the_heaviest_cause() {
        let mut agg = Aggregator::new();
        for _ in 0..48 {
            agg.record(drop("198.18.0.9", "ratelimit", Some("tcp/25"), 1000));
        }
        agg.record(drop("198.18.0.9", "blocklist", None, 1000));
        let summary = agg.flush();
        let top = &summary.offenders[0];
        assert_eq!(top.estimated, 49_000);
        assert_eq!(
            (top.reason, top.rule.as_deref()),
            ("ratelimit", Some("tcp/25"))
        );
        assert_eq!(
            top.line(Duration::from_secs(10)),
            "198.18.0.9 dropped ~49,000 packets (ratelimit, tcp/25) in the last 10s [estimated from 49 sampled events]"
        );
    }

    #[test]
    fn repeat_offenders_are_counted_across_intervals() {
        let mut agg = Aggregator::new();
        for interval in 1..=3 {
            agg.record(drop("2001:db8::9", "blocklist", None, 1));
            if interval == 2 {
                agg.record(drop("198.18.0.1", "malformed", None, 1));
            }
            let summary = agg.flush();
            let top = summary
                .offenders
                .iter()
                .find(|o| o.source.to_string() == "2001:db8::9")
                .unwrap();
            assert_eq!(top.consecutive, interval);
        }
        let mut agg2 = Aggregator::new();
        agg2.record(drop("198.18.0.2", "blocklist", None, 1));
        agg2.flush();
        agg2.flush(); // a quiet interval breaks the streak
        agg2.record(drop("198.18.0.2", "blocklist", None, 1));
        let again = agg2.flush();
        assert_eq!(again.offenders[0].consecutive, 1);
        let line = Offender {
            consecutive: 3,
            ..again.offenders[0].clone()
        }
        .line(Duration::from_secs(10));
        assert!(
            line.ends_with("; 3rd interval in a row (repeat offender)"),
            "{line}"
        );
    }

    #[test]
    fn memory_is_bounded_under_a_spoofed_flood() {
        let mut agg = Aggregator::new();
        for i in 0..(u32::try_from(MAX_SOURCES).unwrap() + 5000) {
            let source = IpAddr::V4(std::net::Ipv4Addr::from(0xc612_0000 + i));
            agg.record(SampledDrop {
                source,
                reason: "ratelimit",
                rule: None,
                weight: 10,
            });
        }
        assert_eq!(agg.current.len(), MAX_SOURCES);
        let summary = agg.flush();
        assert_eq!(summary.offenders.len(), LOGGED_SOURCES);
        assert_eq!(
            summary.other_sources,
            (MAX_SOURCES - LOGGED_SOURCES + 5000) as u64
        );
        assert_eq!(
            summary.other_estimated + summary.offenders.iter().map(|o| o.estimated).sum::<u64>(),
            (MAX_SOURCES as u64 + 5000) * 10
        );
    }

    #[test]
    fn formats_numbers() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(48_200), "48,200");
        assert_eq!(thousands(1_234_567), "1,234,567");
        for (n, text) in [
            (1, "1st"),
            (2, "2nd"),
            (3, "3rd"),
            (4, "4th"),
            (11, "11th"),
            (22, "22nd"),
        ] {
            assert_eq!(ordinal(n), text);
        }
    }
}
