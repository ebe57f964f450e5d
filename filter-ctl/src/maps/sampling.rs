//! Drop sampling (`SAMPLING`): per reason, 1 in N dropped packets is sent
//! to user space as an event, at most a cap per CPU per second. `run` sets
//! it at start; 0 turns a reason's events off.

use std::{fmt, str::FromStr};

use anyhow::Context as _;
use aya::maps::{Array, MapData};
use filter_common::{events::sampling, maps, reason};

use super::Filter;

/// Sampling rates per reason and the per-CPU cap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sampling {
    /// 1-in-N per reason (`reason::*` index); 0 = no events.
    pub one_in: [u32; reason::COUNT as usize],
    /// Events per CPU per second at most; 0 = no cap.
    pub cap_per_cpu: u32,
}

/// Default events per CPU per second.
pub const DEFAULT_CAP_PER_CPU: u32 = 1000;

impl Default for Sampling {
    /// 1 in 1,000 for `blocklist`, `autoblock` and `ratelimit`, 1 in 100 for
    /// `port_denied`, every `malformed` frame (up to the cap).
    fn default() -> Self {
        let mut one_in = [0; reason::COUNT as usize];
        for (why, n) in [
            (reason::BLOCKLIST, 1000),
            (reason::AUTOBLOCK, 1000),
            (reason::RATELIMIT, 1000),
            (reason::PORT_DENIED, 100),
            (reason::MALFORMED, 1),
        ] {
            one_in[why as usize] = n;
        }
        Self {
            one_in,
            cap_per_cpu: DEFAULT_CAP_PER_CPU,
        }
    }
}

/// One `--sample REASON=N` setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SampleRate {
    pub reason: u32,
    pub one_in: u32,
}

impl FromStr for SampleRate {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (name, n) = text
            .split_once('=')
            .ok_or_else(|| format!("'{text}': expected REASON=N, e.g. ratelimit=1000"))?;
        let reason = (0u32..)
            .zip(reason::NAMES)
            .find(|(i, r)| *r == name && reason::is_drop(*i))
            .map(|(i, _)| i)
            .ok_or_else(|| {
                let drops: Vec<&str> = (0u32..)
                    .zip(reason::NAMES)
                    .filter(|(i, _)| reason::is_drop(*i))
                    .map(|(_, r)| r)
                    .collect();
                format!("'{name}' is not a drop reason ({})", drops.join(", "))
            })?;
        let one_in = n
            .parse()
            .map_err(|_| format!("'{n}': expected a whole number (1 = every drop, 0 = none)"))?;
        Ok(Self { reason, one_in })
    }
}

impl fmt::Display for Sampling {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = (0u32..)
            .zip(reason::NAMES)
            .filter(|(i, _)| self.one_in[*i as usize] != 0)
            .map(|(i, name)| format!("{name} 1/{}", self.one_in[i as usize]))
            .collect();
        write!(
            f,
            "{}; at most {} events per CPU per second",
            if parts.is_empty() {
                "no drop events".to_string()
            } else {
                parts.join(", ")
            },
            self.cap_per_cpu
        )
    }
}

impl Sampling {
    /// The defaults with `overrides` applied.
    #[must_use]
    pub fn with(overrides: &[SampleRate], cap_per_cpu: u32) -> Self {
        let mut sampling = Self {
            cap_per_cpu,
            ..Self::default()
        };
        for rate in overrides {
            sampling.one_in[rate.reason as usize] = rate.one_in;
        }
        sampling
    }
}

impl Filter {
    /// Tells the program how to sample drops.
    pub fn set_sampling(&self, sampling: &Sampling) -> anyhow::Result<()> {
        let mut map: Array<MapData, u32> = self.array(maps::SAMPLING)?;
        for (index, one_in) in (0u32..).zip(sampling.one_in) {
            map.set(index, one_in, 0).context("writing SAMPLING")?;
        }
        map.set(sampling::CAP, sampling.cap_per_cpu, 0)
            .context("writing SAMPLING")?;
        // Each CPU counts down to a reason's next event: from 0, a new rate
        // samples the next drop instead of waiting out the old rate's count.
        self.zero_per_cpu::<u64>(maps::SAMPLE_STATE, 0..reason::COUNT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rates() {
        assert_eq!(
            "ratelimit=10".parse(),
            Ok(SampleRate {
                reason: reason::RATELIMIT,
                one_in: 10
            })
        );
        assert!(
            "pass=1".parse::<SampleRate>().is_err(),
            "pass is not a drop"
        );
        assert!("ratelimit".parse::<SampleRate>().is_err());
        assert!("ratelimit=x".parse::<SampleRate>().is_err());
        let s = Sampling::with(&["blocklist=1".parse().unwrap()], 5);
        assert_eq!(s.one_in[reason::BLOCKLIST as usize], 1);
        assert_eq!(s.one_in[reason::RATELIMIT as usize], 1000);
        assert_eq!(s.cap_per_cpu, 5);
    }
}
