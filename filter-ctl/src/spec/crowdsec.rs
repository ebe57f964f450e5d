//! What the `CrowdSec` Local API (LAPI) sends a bouncer, validated: the
//! body of `GET /v1/decisions/stream` (`{"new": [...], "deleted": [...]}`,
//! either may be `null`) and Go duration strings such as `3h59m58.5s`.
//! Pure: the HTTP client and the map writes live in `control::crowdsec`.
//!
//! A stream is taken decision by decision: a malformed one, or one of a
//! type or scope the filter does not enforce, is skipped and counted, never
//! fatal. Only a body that is not the stream's JSON shape at all is refused.

use std::{collections::BTreeMap, fmt, time::Duration};

use serde::Deserialize;

use crate::spec::cidr::Cidr;

/// Why a decision was not applied (a metric label: a fixed, small set).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SkipReason {
    /// A type other than `ban` (`captcha`, `throttle`, ...).
    Type,
    /// A scope other than `Ip` and `Range` (`Country`, `AS`, `Username`, ...).
    Scope,
    /// Not a decision object, a missing field, or a value that is not an
    /// address or prefix of its scope.
    Malformed,
    /// A duration that is not a Go duration.
    Duration,
    /// A new decision whose remaining duration is zero or negative.
    Expired,
}

impl SkipReason {
    pub const ALL: [Self; 5] = [
        Self::Type,
        Self::Scope,
        Self::Malformed,
        Self::Duration,
        Self::Expired,
    ];

    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Type => "type",
            Self::Scope => "scope",
            Self::Malformed => "malformed",
            Self::Duration => "duration",
            Self::Expired => "expired",
        }
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

/// A ban to enforce: block `cidr` for `ttl` (the decision's remaining time).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ban {
    pub cidr: Cidr,
    pub ttl: Duration,
}

/// One pull, validated.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pull {
    /// New bans, deduplicated by prefix (the longest remaining time wins:
    /// `CrowdSec` may hold several decisions for one address).
    pub bans: Vec<Ban>,
    /// Prefixes whose ban was deleted or has expired.
    pub lifted: Vec<Cidr>,
    /// Decisions skipped, by reason.
    pub skipped: BTreeMap<SkipReason, u64>,
}

impl Pull {
    fn skip(&mut self, reason: SkipReason) {
        *self.skipped.entry(reason).or_default() += 1;
    }

    /// Decisions skipped in all.
    #[must_use]
    pub fn skipped_total(&self) -> u64 {
        self.skipped.values().sum()
    }
}

/// The body is not a decision stream.
#[derive(Debug, thiserror::Error)]
#[error("the LAPI's answer is not a decision stream: {0}")]
pub struct StreamError(String);

#[derive(Deserialize)]
struct RawStream {
    #[serde(default)]
    new: Option<Vec<serde_json::Value>>,
    #[serde(default)]
    deleted: Option<Vec<serde_json::Value>>,
}

/// The fields the filter reads; others (`id`, `origin`, `scenario`,
/// `uuid`, ...) are ignored.
#[derive(Deserialize)]
struct RawDecision {
    #[serde(rename = "type")]
    kind: String,
    scope: String,
    value: String,
    #[serde(default)]
    duration: Option<String>,
    #[serde(default)]
    simulated: bool,
}

/// Parses the body of `GET /v1/decisions/stream`.
pub fn parse_stream(body: &[u8]) -> Result<Pull, StreamError> {
    // serde would read a struct from a JSON array too: only an object is a stream.
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err(StreamError(format!(
            "expected a JSON object, got '{}'",
            crate::error::excerpt(&String::from_utf8_lossy(&body[..body.len().min(80)]), 80)
        )));
    }
    let raw: RawStream = serde_json::from_slice(body)
        .map_err(|e| StreamError(crate::error::excerpt(&e.to_string(), 200)))?;
    let mut pull = Pull::default();
    let mut bans: BTreeMap<Cidr, Duration> = BTreeMap::new();
    for value in raw.new.unwrap_or_default() {
        match decision(value, true) {
            Ok((cidr, ttl)) => {
                let ttl = ttl.unwrap_or_default();
                let slot = bans.entry(cidr).or_default();
                *slot = (*slot).max(ttl);
            }
            Err(reason) => pull.skip(reason),
        }
    }
    let mut lifted = Vec::new();
    for value in raw.deleted.unwrap_or_default() {
        match decision(value, false) {
            Ok((cidr, _)) => lifted.push(cidr),
            Err(reason) => pull.skip(reason),
        }
    }
    lifted.sort_unstable();
    lifted.dedup();
    // A prefix deleted and banned in the same answer (one of several
    // decisions on it ended): the ban stands.
    lifted.retain(|cidr| !bans.contains_key(cidr));
    pull.lifted = lifted;
    pull.bans = bans
        .into_iter()
        .map(|(cidr, ttl)| Ban { cidr, ttl })
        .collect();
    Ok(pull)
}

/// One decision: its prefix and, for a new one, its remaining time.
fn decision(value: serde_json::Value, new: bool) -> Result<(Cidr, Option<Duration>), SkipReason> {
    let raw = RawDecision::deserialize(value).map_err(|_| SkipReason::Malformed)?;
    if !raw.kind.eq_ignore_ascii_case("ban") {
        return Err(SkipReason::Type);
    }
    // A simulated decision is for display only in CrowdSec: not enforced.
    if raw.simulated {
        return Err(SkipReason::Type);
    }
    let value = raw.value.trim();
    let cidr = if raw.scope.eq_ignore_ascii_case("ip") {
        // An `Ip` decision names one address, never a prefix.
        if value.contains('/') {
            return Err(SkipReason::Malformed);
        }
        value.parse::<Cidr>().map_err(|_| SkipReason::Malformed)?
    } else if raw.scope.eq_ignore_ascii_case("range") {
        if !value.contains('/') {
            return Err(SkipReason::Malformed);
        }
        // Host bits past the prefix are cleared (`198.18.0.7/24` is
        // `198.18.0.0/24`): what CrowdSec's own bouncers enforce.
        value.parse::<Cidr>().map_err(|_| SkipReason::Malformed)?
    } else {
        return Err(SkipReason::Scope);
    };
    if !new {
        return Ok((cidr, None));
    }
    let text = raw.duration.ok_or(SkipReason::Malformed)?;
    match parse_go_duration(&text) {
        Ok(GoDuration::Positive(ttl)) if !ttl.is_zero() => Ok((cidr, Some(ttl))),
        Ok(_) => Err(SkipReason::Expired),
        Err(_) => Err(SkipReason::Duration),
    }
}

/// A Go duration: its sign and magnitude.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GoDuration {
    Positive(Duration),
    Negative(Duration),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("'{0}' is not a Go duration (expected e.g. 4h, 3h59m58.5s, 150ms)")]
pub struct GoDurationError(pub String);

/// Parses what Go's `time.Duration.String()` prints and `time.ParseDuration`
/// reads: an optional sign, then one or more decimal numbers each with a
/// unit (`ns`, `us`, `µs`, `ms`, `s`, `m`, `h`), or a bare `0`. Strict:
/// no spaces, no empty parts, at most Go's range (2^63 ns, about 292 years).
pub fn parse_go_duration(text: &str) -> Result<GoDuration, GoDurationError> {
    const MAX_NS: u128 = 1 << 63;
    let bad = || GoDurationError(crate::error::excerpt(text, 60));
    let (negative, body) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if body == "0" {
        return Ok(GoDuration::Positive(Duration::ZERO));
    }
    if body.is_empty() {
        return Err(bad());
    }
    let mut total_ns: u128 = 0;
    let mut rest = body;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let int_part = &rest[..int_len];
        rest = &rest[int_len..];
        let mut frac_part = "";
        if let Some(after_dot) = rest.strip_prefix('.') {
            let frac_len = after_dot.bytes().take_while(u8::is_ascii_digit).count();
            frac_part = &after_dot[..frac_len];
            rest = &after_dot[frac_len..];
        }
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(bad());
        }
        let unit_len = rest
            .char_indices()
            .find(|(_, c)| c.is_ascii_digit() || *c == '.')
            .map_or(rest.len(), |(i, _)| i);
        let unit_ns: u128 = match &rest[..unit_len] {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        // Bounded digits: the total is checked against Go's range below.
        if int_part.len() > 20 || frac_part.len() > 20 {
            return Err(bad());
        }
        let int: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| bad())?
        };
        let mut part = int.checked_mul(unit_ns).ok_or_else(bad)?;
        if !frac_part.is_empty() {
            let frac: u128 = frac_part.parse().map_err(|_| bad())?;
            let scale = 10u128.pow(u32::try_from(frac_part.len()).map_err(|_| bad())?);
            part += frac * unit_ns / scale;
        }
        total_ns = total_ns.checked_add(part).ok_or_else(bad)?;
        if total_ns > MAX_NS {
            return Err(bad());
        }
    }
    let secs = u64::try_from(total_ns / 1_000_000_000).map_err(|_| bad())?;
    let nanos = u32::try_from(total_ns % 1_000_000_000).map_err(|_| bad())?;
    let duration = Duration::new(secs, nanos);
    Ok(if negative {
        GoDuration::Negative(duration)
    } else {
        GoDuration::Positive(duration)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(text: &str) -> Cidr {
        text.parse().unwrap()
    }

    #[test]
    fn go_durations() {
        let ok = [
            ("0", 0),
            ("4h", 14_400_000_000_000),
            ("3h59m58.5s", 14_398_500_000_000),
            ("1.5h", 5_400_000_000_000),
            ("150ms", 150_000_000),
            ("2us", 2_000),
            ("2µs", 2_000),
            ("7ns", 7),
            ("1m0s", 60_000_000_000),
            (".5s", 500_000_000),
            ("+3s", 3_000_000_000),
            ("167h59m59.999999999s", 604_799_999_999_999),
        ];
        for (text, ns) in ok {
            assert_eq!(
                parse_go_duration(text),
                Ok(GoDuration::Positive(Duration::from_nanos(ns))),
                "{text}"
            );
        }
        assert_eq!(
            parse_go_duration("-1.5s"),
            Ok(GoDuration::Negative(Duration::from_millis(1500)))
        );
        for bad in [
            "",
            "-",
            "s",
            "3",
            "3x",
            "3h 2m",
            " 3h",
            "1.s.",
            "..5s",
            "3hh",
            "h3",
            "1e3s",
            "3.h4",
            "99999999999999999999h",
        ] {
            assert!(parse_go_duration(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn bans_and_deletions_of_ip_and_range_in_both_families() {
        let body = br#"{"new":[
            {"id":1,"origin":"cscli","type":"ban","scope":"Ip","value":"198.18.0.7","duration":"3h59m58.5s","scenario":"manual"},
            {"id":2,"origin":"cscli","type":"ban","scope":"Range","value":"198.18.1.0/24","duration":"10m"},
            {"id":3,"origin":"cscli","type":"ban","scope":"ip","value":"2001:db8::7","duration":"1h"},
            {"id":4,"origin":"cscli","type":"ban","scope":"range","value":"2001:db8:1::/48","duration":"1h"}
          ],
          "deleted":[{"id":5,"type":"ban","scope":"Ip","value":"198.18.9.9","duration":"-2s"}]}"#;
        let pull = parse_stream(body).unwrap();
        assert_eq!(
            pull.bans,
            vec![
                Ban {
                    cidr: cidr("198.18.0.7"),
                    ttl: Duration::from_millis(14_398_500)
                },
                Ban {
                    cidr: cidr("198.18.1.0/24"),
                    ttl: Duration::from_mins(10)
                },
                Ban {
                    cidr: cidr("2001:db8::7"),
                    ttl: Duration::from_hours(1)
                },
                Ban {
                    cidr: cidr("2001:db8:1::/48"),
                    ttl: Duration::from_hours(1)
                },
            ]
        );
        assert_eq!(pull.lifted, vec![cidr("198.18.9.9")]);
        assert_eq!(pull.skipped_total(), 0);
    }

    #[test]
    fn other_types_scopes_and_malformed_decisions_are_skipped_and_counted() {
        let body = br#"{"new":[
            {"type":"captcha","scope":"Ip","value":"198.18.0.1","duration":"1h"},
            {"type":"ban","scope":"Country","value":"FR","duration":"1h"},
            {"type":"ban","scope":"AS","value":"64496","duration":"1h"},
            {"type":"ban","scope":"Ip","value":"not-an-ip","duration":"1h"},
            {"type":"ban","scope":"Ip","value":"198.18.0.0/24","duration":"1h"},
            {"type":"ban","scope":"Range","value":"198.18.0.1","duration":"1h"},
            {"type":"ban","scope":"Range","value":"198.18.0.0/33","duration":"1h"},
            {"type":"ban","scope":"Ip","value":"198.18.0.2","duration":"forever"},
            {"type":"ban","scope":"Ip","value":"198.18.0.3","duration":"-1s"},
            {"type":"ban","scope":"Ip","value":"198.18.0.4"},
            {"type":"ban","scope":"Ip","value":"198.18.0.5","duration":"1h","simulated":true},
            {"scope":"Ip","value":"198.18.0.6","duration":"1h"},
            42,
            {"type":"ban","scope":"Ip","value":"198.18.0.8","duration":"1h"}
        ],"deleted":null}"#;
        let pull = parse_stream(body).unwrap();
        assert_eq!(
            pull.bans,
            vec![Ban {
                cidr: cidr("198.18.0.8"),
                ttl: Duration::from_hours(1)
            }]
        );
        let count = |r| pull.skipped.get(&r).copied().unwrap_or(0);
        assert_eq!(count(SkipReason::Type), 2);
        assert_eq!(count(SkipReason::Scope), 2);
        assert_eq!(count(SkipReason::Malformed), 7);
        assert_eq!(count(SkipReason::Duration), 1);
        assert_eq!(count(SkipReason::Expired), 1);
    }

    #[test]
    fn ranges_are_made_canonical_and_mapped_addresses_are_ipv4() {
        let body = br#"{"new":[
            {"type":"ban","scope":"Range","value":"198.18.0.7/24","duration":"1h"},
            {"type":"ban","scope":"Ip","value":"::ffff:198.18.2.1","duration":"1h"},
            {"type":"ban","scope":"Range","value":"2001:db8::1/32","duration":"1h"}
        ]}"#;
        let pull = parse_stream(body).unwrap();
        let cidrs: Vec<String> = pull.bans.iter().map(|b| b.cidr.to_string()).collect();
        assert_eq!(cidrs, ["198.18.0.0/24", "198.18.2.1/32", "2001:db8::/32"]);
    }

    #[test]
    fn duplicates_keep_the_longest_ban_and_a_ban_outlives_its_deleted_twin() {
        let body = br#"{"new":[
            {"type":"ban","scope":"Ip","value":"198.18.0.1","duration":"1m"},
            {"type":"ban","scope":"Ip","value":"198.18.0.1","duration":"2h"}
        ],"deleted":[
            {"type":"ban","scope":"Ip","value":"198.18.0.1","duration":"0s"},
            {"type":"ban","scope":"Ip","value":"198.18.0.2","duration":"0s"},
            {"type":"ban","scope":"Ip","value":"198.18.0.2","duration":"0s"}
        ]}"#;
        let pull = parse_stream(body).unwrap();
        assert_eq!(pull.bans.len(), 1);
        assert_eq!(pull.bans[0].ttl, Duration::from_hours(2));
        assert_eq!(pull.lifted, vec![cidr("198.18.0.2")]);
    }

    #[test]
    fn a_body_that_is_not_a_stream_is_refused_and_empty_ones_are_fine() {
        for bad in [&b"<html>502</html>"[..], b"[]", b"{\"new\":3}", b""] {
            assert!(
                parse_stream(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        for empty in [
            &b"{}"[..],
            b"{\"new\":null,\"deleted\":null}",
            b"{\"new\":[],\"deleted\":[]}",
        ] {
            assert_eq!(parse_stream(empty).unwrap(), Pull::default());
        }
    }
}
