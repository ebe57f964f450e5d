//! Rate-limit rules: the default per-source limit (slot 0) and port rules
//! (slots 1..). A port rule maps (protocol, port range) to a slot through
//! `PORT_RULE_INDEX`, so the kernel finds it with one array lookup whatever the
//! number of rules.

use std::{fmt, str::FromStr, time::Duration};

use anyhow::{Context as _, bail, ensure};
use aya::maps::{
    Array, HashMap, MapData, PerCpuArray, PerCpuValues, lpm_trie::Key, lpm_trie::LpmTrie,
};
use filter_common::{
    Bucket, BucketKey, DEFAULT_RULE, IPPROTO_TCP, IPPROTO_UDP, MAX_RULES, OnlyFromBytes,
    PORT_INDEX_UDP_BASE, RULE_DROP, RULE_FLAG_ONLY_FROM, RULE_LIMIT, RateRule, RuleCounter,
    TICKS_PER_SEC, maps,
};
use serde::Serialize;

use crate::{cidr::Cidr, filter::Filter};

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
            .ok_or_else(|| TargetError::Shape(text.into()))?;
        let protocol = match proto.to_ascii_lowercase().as_str() {
            "tcp" => IPPROTO_TCP,
            "udp" => IPPROTO_UDP,
            _ => return Err(TargetError::Protocol(text.into())),
        };
        let port = |p: &str| {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(TargetError::Port(text.into()));
            }
            p.parse::<u16>().map_err(|_| TargetError::Port(text.into()))
        };
        let (first, last) = match ports.split_once('-') {
            Some((a, b)) => (port(a)?, port(b)?),
            None => {
                let p = port(ports)?;
                (p, p)
            }
        };
        if first > last {
            return Err(TargetError::Range(text.into()));
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
    fn of_rule(rule: &RateRule, slot: u32) -> Self {
        if slot == DEFAULT_RULE {
            Self::Default
        } else {
            Self::Port {
                protocol: rule.protocol,
                first: rule.port_first,
                last: rule.port_last,
            }
        }
    }

    fn overlaps(&self, other: &Self) -> bool {
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
    fn index_range(&self) -> std::ops::Range<u32> {
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
    pub fn to_rule(&self, target: &Target) -> anyhow::Result<RateRule> {
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
            ensure!(
                *target != Target::Default,
                "the default rule cannot --drop (block 0.0.0.0/0 and ::/0 instead)"
            );
            ensure!(
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
            ensure!(
                *target != Target::Default,
                "--only-from applies to port rules, not to the default rule"
            );
            rule.flags |= RULE_FLAG_ONLY_FROM;
        }
        if self.rate.is_none() {
            ensure!(
                self.bytes.is_none() && self.burst.is_none() && self.autoblock.is_none(),
                "--burst, --bytes and autoblock options need --rate"
            );
            ensure!(
                !self.only_from.is_empty(),
                "give --rate PPS, --drop or --only-from CIDR..."
            );
            return Ok(rule);
        }
        let rate = self.rate.unwrap_or_default();
        ensure!(
            rate >= 1,
            "--rate must be at least 1 packet per second (got 0)"
        );
        ensure!(
            rate <= MAX_RATE,
            "--rate {rate} is above the maximum of {MAX_RATE} packets per second"
        );
        let burst = self.burst.unwrap_or(rate);
        ensure!(burst >= 1, "--burst must be at least 1 (got 0)");
        rule.packets_per_sec = rate;
        rule.burst = burst;
        rule.packet_interval = TICKS_PER_SEC / rate;
        rule.packet_tolerance = (burst - 1)
            .checked_mul(rule.packet_interval)
            .filter(|t| *t < u64::MAX / 4)
            .with_context(|| {
                format!(
                    "--burst {burst} at --rate {rate} is too large (over 100 years of tolerance)"
                )
            })?;
        if let Some(bytes) = self.bytes {
            ensure!(
                bytes >= 1,
                "--bytes must be at least 1 byte per second (got 0)"
            );
            ensure!(
                bytes <= TICKS_PER_SEC,
                "--bytes {bytes} is above the maximum of {TICKS_PER_SEC} bytes per second"
            );
            rule.bytes_per_sec = bytes;
            rule.byte_interval = TICKS_PER_SEC / bytes;
            // The byte bucket tolerates a burst of the same duration as the packet bucket.
            rule.byte_tolerance = rule.packet_tolerance;
        }
        if let Some(auto) = self.autoblock {
            ensure!(auto.after >= 1, "--autoblock-after must be at least 1");
            ensure!(!auto.window.is_zero(), "--window must be longer than 0");
            ensure!(
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

/// A rule as listed.
#[derive(Clone, Debug, Serialize)]
pub struct ListedRule {
    pub target: String,
    pub action: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub only_from: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub autoblock_after: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub autoblock_window_secs: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub autoblock_for_secs: Option<f64>,
    pub passed_packets: u64,
    pub dropped_packets: u64,
}

/// Every slot of `RULES`, read once.
pub struct RuleTable {
    slots: Vec<RateRule>,
}

impl RuleTable {
    pub fn read(filter: &Filter) -> anyhow::Result<Self> {
        let rules: Array<MapData, RateRule> =
            Array::try_from(filter.map(maps::RULES)?).context("RULES is not the expected array")?;
        let slots = (0..MAX_RULES)
            .map(|i| {
                rules
                    .get(&i, 0)
                    .with_context(|| format!("reading RULES[{i}]"))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self { slots })
    }

    /// Human name of the rule in `slot`.
    #[must_use]
    pub fn describe(&self, slot: u32) -> String {
        self.slots.get(slot as usize).map_or_else(
            || format!("slot {slot}"),
            |r| Target::of_rule(r, slot).to_string(),
        )
    }

    fn find(&self, target: &Target) -> Option<u32> {
        match target {
            Target::Default => Some(DEFAULT_RULE),
            Target::Port { .. } => (1..MAX_RULES).find(|&s| {
                self.slots[s as usize].action != 0
                    && Target::of_rule(&self.slots[s as usize], s) == *target
            }),
        }
    }

    fn in_use(&self) -> impl Iterator<Item = (u32, &RateRule)> {
        (0..MAX_RULES).filter_map(|s| {
            let rule = &self.slots[s as usize];
            (rule.action != 0).then_some((s, rule))
        })
    }
}

fn only_from_key(slot: u32, cidr: &Cidr) -> Key<OnlyFromBytes> {
    let (addr, prefix) = cidr.mapped();
    let mut data = [0u8; 20];
    data[..4].copy_from_slice(&slot.to_be_bytes());
    data[4..].copy_from_slice(&addr);
    Key::new(32 + u32::from(prefix), data)
}

fn only_from_keys(
    trie: &LpmTrie<MapData, OnlyFromBytes, u8>,
    slot: u32,
) -> anyhow::Result<Vec<Key<OnlyFromBytes>>> {
    let mut keys = Vec::new();
    for key in trie.keys() {
        let key = key.context("reading ONLY_FROM")?;
        if key.data()[..4] == slot.to_be_bytes() {
            keys.push(key);
        }
    }
    Ok(keys)
}

fn cidr_of_only_from(key: &Key<OnlyFromBytes>) -> Cidr {
    let data = key.data();
    let mut addr = [0u8; 16];
    addr.copy_from_slice(&data[4..]);
    let v6 = std::net::Ipv6Addr::from(addr);
    let prefix = u8::try_from(key.prefix_len().saturating_sub(32)).unwrap_or(128);
    match v6.to_ipv4_mapped() {
        Some(v4) if prefix >= 96 => Cidr::new(v4.into(), prefix - 96),
        _ => Cidr::new(v6.into(), prefix),
    }
}

/// Creates or replaces the rule for `target`. Live: the kernel sees the new
/// rule from the next packet on, without reattaching.
pub fn set(filter: &Filter, target: &Target, spec: &LimitSpec) -> anyhow::Result<()> {
    let rule = spec.to_rule(target)?;
    let table = RuleTable::read(filter)?;
    let existing = table.find(target);
    let slot = match existing {
        Some(slot) => slot,
        None => {
            if let Some(other) = table
                .in_use()
                .map(|(s, r)| Target::of_rule(r, s))
                .find(|other| other.overlaps(target))
            {
                bail!(
                    "{target} overlaps the existing rule {other}; remove it first (`filter-ctl limit remove {other}`)"
                );
            }
            (1..MAX_RULES)
                .find(|&s| table.slots[s as usize].action == 0)
                .with_context(|| {
                    format!(
                        "all {} port-rule slots are in use; remove a rule first",
                        MAX_RULES - 1
                    )
                })?
        }
    };

    // Only-from sources first, so the rule never applies without them.
    let mut only_from: LpmTrie<MapData, OnlyFromBytes, u8> =
        LpmTrie::try_from(filter.map(maps::ONLY_FROM)?)
            .context("ONLY_FROM is not the expected LPM trie")?;
    let stale = only_from_keys(&only_from, slot)?;
    let wanted: Vec<Key<OnlyFromBytes>> = spec
        .only_from
        .iter()
        .map(|c| only_from_key(slot, c))
        .collect();
    for key in &wanted {
        only_from.insert(key, 1, 0).map_err(|e| {
            if matches!(crate::filter::errno(&e), Some(libc::ENOSPC | libc::E2BIG)) {
                anyhow::anyhow!("the only-from table is full; remove rules with --only-from first")
            } else {
                anyhow::Error::new(e).context("writing ONLY_FROM")
            }
        })?;
    }
    for key in stale {
        if !wanted
            .iter()
            .any(|w| w.prefix_len() == key.prefix_len() && w.data() == key.data())
        {
            only_from
                .remove(&key)
                .context("removing a stale only-from entry")?;
        }
    }

    let mut rules: Array<MapData, RateRule> =
        Array::try_from(filter.map(maps::RULES)?).context("RULES is not the expected array")?;
    if existing.is_none() {
        reset_rule_counters(filter, slot)?;
    }
    rules
        .set(slot, rule, 0)
        .with_context(|| format!("writing rule {target}"))?;
    if existing.is_none() {
        let mut index: Array<MapData, u32> = Array::try_from(filter.map(maps::PORT_RULE_INDEX)?)
            .context("PORT_RULE_INDEX is not the expected array")?;
        for i in target.index_range() {
            index.set(i, slot, 0).context("writing PORT_RULE_INDEX")?;
        }
    }
    Ok(())
}

/// Removes the rule for `target` and forgets its buckets and counters.
pub fn remove(filter: &Filter, target: &Target) -> anyhow::Result<()> {
    let table = RuleTable::read(filter)?;
    let Some(slot) = table.find(target) else {
        bail!("there is no rule for {target} (see `filter-ctl limit list`)");
    };
    if slot == DEFAULT_RULE && table.slots[0].action == 0 {
        bail!("there is no default rule set");
    }
    let mut index: Array<MapData, u32> = Array::try_from(filter.map(maps::PORT_RULE_INDEX)?)
        .context("PORT_RULE_INDEX is not the expected array")?;
    for i in target.index_range() {
        index.set(i, 0, 0).context("clearing PORT_RULE_INDEX")?;
    }
    let mut rules: Array<MapData, RateRule> =
        Array::try_from(filter.map(maps::RULES)?).context("RULES is not the expected array")?;
    rules
        .set(slot, RateRule::default(), 0)
        .with_context(|| format!("clearing rule {target}"))?;
    let mut only_from: LpmTrie<MapData, OnlyFromBytes, u8> =
        LpmTrie::try_from(filter.map(maps::ONLY_FROM)?)
            .context("ONLY_FROM is not the expected LPM trie")?;
    for key in only_from_keys(&only_from, slot)? {
        only_from
            .remove(&key)
            .context("removing an only-from entry")?;
    }
    forget_buckets(filter, slot)?;
    reset_rule_counters(filter, slot)
}

fn forget_buckets(filter: &Filter, slot: u32) -> anyhow::Result<()> {
    let mut buckets: HashMap<MapData, BucketKey, Bucket> =
        HashMap::try_from(filter.map(maps::BUCKETS)?)
            .context("BUCKETS is not the expected hash map")?;
    let keys: Vec<BucketKey> = buckets
        .keys()
        .filter_map(Result::ok)
        .filter(|k| k.rule == slot)
        .collect();
    for key in keys {
        let _ = buckets.remove(&key);
    }
    Ok(())
}

fn reset_rule_counters(filter: &Filter, slot: u32) -> anyhow::Result<()> {
    let mut stats: PerCpuArray<MapData, RuleCounter> =
        PerCpuArray::try_from(filter.map(maps::RULE_STATS)?)
            .context("RULE_STATS is not the expected array")?;
    let cpus = aya::util::nr_cpus()
        .map_err(|(_, e)| e)
        .context("counting CPUs")?;
    let zeros = PerCpuValues::try_from(vec![RuleCounter::default(); cpus])
        .context("building zero counters")?;
    stats.set(slot, zeros, 0).context("resetting RULE_STATS")
}

/// Every rule in use, default first.
pub fn list(filter: &Filter) -> anyhow::Result<Vec<ListedRule>> {
    let table = RuleTable::read(filter)?;
    let only_from: LpmTrie<MapData, OnlyFromBytes, u8> =
        LpmTrie::try_from(filter.map(maps::ONLY_FROM)?)
            .context("ONLY_FROM is not the expected LPM trie")?;
    let mut out = Vec::new();
    for (slot, rule) in table.in_use() {
        let counters = filter.rule_counters(slot)?;
        let limited = rule.action == RULE_LIMIT && rule.packets_per_sec != 0;
        let auto = rule.autoblock_after != 0;
        out.push(ListedRule {
            target: Target::of_rule(rule, slot).to_string(),
            action: if rule.action == RULE_DROP {
                "drop"
            } else {
                "limit"
            },
            rate: limited.then_some(rule.packets_per_sec),
            burst: limited.then_some(rule.burst),
            bytes: (rule.bytes_per_sec != 0).then_some(rule.bytes_per_sec),
            only_from: only_from_keys(&only_from, slot)?
                .iter()
                .map(|k| cidr_of_only_from(k).to_string())
                .collect(),
            autoblock_after: auto.then_some(rule.autoblock_after),
            autoblock_window_secs: auto
                .then(|| Duration::from_nanos(rule.autoblock_window_ns).as_secs_f64()),
            autoblock_for_secs: auto
                .then(|| Duration::from_nanos(rule.autoblock_for_ns).as_secs_f64()),
            passed_packets: counters.passed.packets,
            dropped_packets: counters.dropped.packets,
        });
    }
    Ok(out)
}

/// Chooses the rate limiter's clock (`filter_common::CLOCK_PRECISE` or `CLOCK_COARSE`).
pub fn set_clock(filter: &Filter, clock: u32) -> anyhow::Result<()> {
    filter
        .update_config(|config| {
            config.rate_clock = clock;
            Ok(())
        })
        .map(drop)
}

/// Sets the prefix lengths sources are aggregated to for rate limits.
pub fn set_aggregation(
    filter: &Filter,
    ipv4: Option<u32>,
    ipv6: Option<u32>,
) -> anyhow::Result<filter_common::Config> {
    filter.update_config(|config| {
        if let Some(v4) = ipv4 {
            ensure!(
                (1..=32).contains(&v4),
                "--ipv4-prefix must be 1-32 (got {v4})"
            );
            config.ipv4_source_prefix = v4;
        }
        if let Some(v6) = ipv6 {
            ensure!(
                (1..=128).contains(&v6),
                "--ipv6-prefix must be 1-128 (got {v6})"
            );
            config.ipv6_source_prefix = v6;
        }
        Ok(())
    })
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
