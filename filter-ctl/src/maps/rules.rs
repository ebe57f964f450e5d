//! Rule I/O: the default per-source limit (slot 0) and port rules (slots
//! 1..). A port rule maps (protocol, port range) to a slot through
//! `PORT_RULE_INDEX`, so the kernel finds it with one array lookup whatever
//! the number of rules. What a rule means is `spec::rule`'s business.

use std::time::Duration;

use anyhow::Context as _;
use aya::maps::{Array, HashMap, MapData, lpm_trie::Key, lpm_trie::LpmTrie};
use filter_common::{
    Bucket, BucketKey, Config, DEFAULT_RULE, MAX_RULES, OnlyFromBytes, RULE_DROP, RULE_LIMIT,
    RateRule, maps,
};
use serde::Serialize;

use super::Filter;
use crate::{
    error::Error,
    spec::{
        cidr::Cidr,
        rule::{LimitSpec, Target},
    },
};

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
    Key::new(
        filter_common::ratelimit::only_from_prefix_len(prefix),
        filter_common::only_from_key_data(slot, addr),
    )
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
/// `rule` comes from [`LimitSpec::to_rule`] (validated once, by the caller).
pub fn set(
    filter: &Filter,
    target: &Target,
    rule: RateRule,
    spec: &LimitSpec,
) -> anyhow::Result<()> {
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
                return Err(Error::BadInput(format!(
                    "{target} overlaps the existing rule {other}; remove it first (`filter-ctl limit remove {other}`)"
                ))
                .into());
            }
            (1..MAX_RULES)
                .find(|&s| table.slots[s as usize].action == 0)
                .ok_or_else(|| {
                    Error::MapFull(format!(
                        "all {} port-rule slots are in use; remove a rule first",
                        MAX_RULES - 1
                    ))
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
            if super::is_full(&e) {
                anyhow::Error::new(Error::MapFull(
                    "the only-from table is full; remove rules with --only-from first".into(),
                ))
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
        filter.reset_rule_counters(slot)?;
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
        return Err(Error::NotFound(format!(
            "there is no rule for {target} (see `filter-ctl limit list`)"
        ))
        .into());
    };
    if slot == DEFAULT_RULE && table.slots[0].action == 0 {
        return Err(Error::NotFound("there is no default rule set".into()).into());
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
    filter.reset_rule_counters(slot)
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
) -> anyhow::Result<Config> {
    filter.update_config(|config| {
        if let Some(v4) = ipv4 {
            if !(1..=32).contains(&v4) {
                return Err(
                    Error::BadInput(format!("--ipv4-prefix must be 1-32 (got {v4})")).into(),
                );
            }
            config.ipv4_source_prefix = v4;
        }
        if let Some(v6) = ipv6 {
            if !(1..=128).contains(&v6) {
                return Err(
                    Error::BadInput(format!("--ipv6-prefix must be 1-128 (got {v6})")).into(),
                );
            }
            config.ipv6_source_prefix = v6;
        }
        Ok(())
    })
}

/// The prefix an aggregated rate-limit key stands for.
#[must_use]
pub fn source_cidr(source: filter_common::Ipv6Bytes, config: &Config) -> Cidr {
    let v6 = std::net::Ipv6Addr::from(source);
    match v6.to_ipv4_mapped() {
        Some(v4) => Cidr::new(
            std::net::IpAddr::V4(v4),
            u8::try_from(config.ipv4_source_prefix.min(32)).unwrap_or(32),
        ),
        None => Cidr::new(
            std::net::IpAddr::V6(v6),
            u8::try_from(config.ipv6_source_prefix.min(128)).unwrap_or(128),
        ),
    }
}
