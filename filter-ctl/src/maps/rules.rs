//! Rule I/O: the default per-source limit (id 0) and port rules (ids 1..).
//! A port rule maps (protocol, port range) to its live slot through
//! `PORT_RULE_INDEX`, so the kernel finds it with one array lookup whatever
//! the number of rules. What a rule means is `spec::rule`'s business.
//!
//! Rules never tear: a `RULES` value is copied without a lock, so a slot the
//! program may be reading is never rewritten. Each rule id has two slots
//! (`filter_common::ratelimit`); a changed rule is written, with its
//! only-from set, into the slot not in use, then the index entries (or
//! `Config::default_rule_slot`) switch to it with single aligned `u32`
//! writes, then [`wait_for_running_programs`] makes sure no packet still
//! holds the old slot, which is cleared last. A packet sees the old rule or
//! the new one, each whole and with its own only-from set.

use std::time::Duration;

use anyhow::Context as _;
use aya::maps::{Array, MapData, lpm_trie::Key, lpm_trie::LpmTrie};
use filter_common::{
    Config, DEFAULT_RULE, MAX_RULES, OnlyFromBytes, RULE_DROP, RULE_LIMIT, RULE_SLOTS, RateRule,
    maps, other_slot,
};
use serde::Serialize;

use super::{Filter, barrier::wait_for_running_programs, batch};
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

/// Every slot of `RULES` and which one is live for each rule id, read once.
pub struct RuleTable {
    slots: Vec<RateRule>,
    /// Per rule id: the live slot, if the id holds a rule.
    live: Vec<Option<u32>>,
    /// The slot `Config::default_rule_slot` names (live or empty).
    default_slot: u32,
}

impl RuleTable {
    pub fn read(filter: &Filter) -> anyhow::Result<Self> {
        let rules: Array<MapData, RateRule> = filter.array(maps::RULES)?;
        let slots: Vec<RateRule> = (0..RULE_SLOTS)
            .map(|i| {
                rules
                    .get(&i, 0)
                    .with_context(|| format!("reading RULES[{i}]"))
            })
            .collect::<anyhow::Result<_>>()?;
        let default_slot = filter.config()?.default_rule_slot;
        let index: Array<MapData, u32> = filter.array(maps::PORT_RULE_INDEX)?;
        let mut live = vec![None; MAX_RULES as usize];
        live[DEFAULT_RULE as usize] = slots
            .get(default_slot as usize)
            .is_some_and(|r| r.action != 0)
            .then_some(default_slot);
        for id in 1..MAX_RULES {
            for slot in [id, other_slot(id)] {
                let rule = &slots[slot as usize];
                if rule.action == 0 {
                    continue;
                }
                // Live if the index points at it: a slot written by an
                // edit that died before its switch is not.
                let first = Target::of_rule(rule, id).index_range().start;
                if index.get(&first, 0).context("reading PORT_RULE_INDEX")? == slot {
                    live[id as usize] = Some(slot);
                }
            }
        }
        Ok(Self {
            slots,
            live,
            default_slot,
        })
    }

    /// Human name of rule `id` (as the kernel's events name it).
    #[must_use]
    pub fn describe(&self, id: u32) -> String {
        match self.live.get(id as usize).copied().flatten() {
            Some(slot) => Target::of_rule(&self.slots[slot as usize], id).to_string(),
            None if id == DEFAULT_RULE => Target::Default.to_string(),
            None => format!("rule {id}"),
        }
    }

    /// The id and live slot of the rule for `target`. The default rule
    /// always has its id; its slot may hold no rule.
    #[must_use]
    pub fn find(&self, target: &Target) -> Option<(u32, u32)> {
        match target {
            Target::Default => Some((DEFAULT_RULE, self.default_slot)),
            Target::Port { .. } => self
                .in_use()
                .find(|&(id, _, rule)| id != DEFAULT_RULE && Target::of_rule(rule, id) == *target)
                .map(|(id, slot, _)| (id, slot)),
        }
    }

    /// The live slot of rule `id`, if it holds a rule.
    #[must_use]
    pub fn live_slot(&self, id: u32) -> Option<u32> {
        self.live.get(id as usize).copied().flatten()
    }

    /// Every rule in use: (id, name as `limit list` shows it), default first.
    pub fn names(&self) -> impl Iterator<Item = (u32, String)> {
        self.in_use()
            .map(|(id, _, rule)| (id, Target::of_rule(rule, id).to_string()))
    }

    /// Every rule: (id, live slot, rule), default first.
    fn in_use(&self) -> impl Iterator<Item = (u32, u32, &RateRule)> {
        (0..MAX_RULES).filter_map(|id| {
            let slot = self.live[id as usize]?;
            Some((id, slot, &self.slots[slot as usize]))
        })
    }

    /// A port-rule id holding no rule.
    fn free_id(&self) -> Option<u32> {
        (1..MAX_RULES).find(|&id| self.live[id as usize].is_none())
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

/// Removes every only-from entry of `slot`.
fn clear_only_from(
    only_from: &mut LpmTrie<MapData, OnlyFromBytes, u8>,
    slot: u32,
) -> anyhow::Result<()> {
    for key in only_from_keys(only_from, slot)? {
        only_from
            .remove(&key)
            .context("removing an only-from entry")?;
    }
    Ok(())
}

/// Gives `slot`, which no packet can reach, exactly the only-from set `cidrs`.
/// On failure the slot is left without entries.
fn write_only_from(
    only_from: &mut LpmTrie<MapData, OnlyFromBytes, u8>,
    slot: u32,
    cidrs: &[Cidr],
) -> anyhow::Result<()> {
    clear_only_from(only_from, slot)?;
    for cidr in cidrs {
        if let Err(e) = only_from.insert(&only_from_key(slot, cidr), 1, 0) {
            let _ = clear_only_from(only_from, slot);
            return Err(if super::is_full(&e) {
                anyhow::Error::new(Error::MapFull(
                    "the only-from table is full; remove rules with --only-from first".into(),
                ))
            } else {
                anyhow::Error::new(e).context("writing ONLY_FROM")
            });
        }
    }
    Ok(())
}

/// Points every `PORT_RULE_INDEX` entry of `target` at `slot` (0: no rule),
/// in one batch. Each entry is one aligned `u32`: a packet reads the old
/// slot or the new one. Even a byte-wise copy could not show a third
/// value: a new rule goes from 0 to its first slot (below 256, one byte); a
/// switch flips one bit (`MAX_RULES`); a removal could at worst show the
/// rule's other slot (empty: no rule) or `MAX_RULES` (id 0: no port rule),
/// both of which mean what 0 means.
fn point_index(filter: &Filter, target: Target, slot: u32) -> anyhow::Result<()> {
    let keys: Vec<u32> = target.index_range().collect();
    let values = vec![slot; keys.len()];
    let index = filter.map_data(maps::PORT_RULE_INDEX)?;
    batch::update(&index, &keys, &values, 0).map_err(|e| {
        anyhow::Error::new(e.error).context(format!(
            "writing PORT_RULE_INDEX for {target} ({} of {} entries written)",
            e.applied,
            keys.len()
        ))
    })
}

fn barrier() -> anyhow::Result<()> {
    wait_for_running_programs()
        .context("waiting for running XDP programs (an ARRAY_OF_MAPS update)")
}

/// Creates or replaces the rule for `target`. Live: the kernel sees the new
/// rule from the next packet on, without reattaching, and never a mix of
/// the old and the new (see the module documentation). Returns the rule's id.
/// `rule` comes from [`LimitSpec::to_rule`] (validated once, by the caller).
pub fn set(
    filter: &Filter,
    target: &Target,
    rule: RateRule,
    spec: &LimitSpec,
) -> anyhow::Result<u32> {
    let table = RuleTable::read(filter)?;
    let mut only_from: LpmTrie<MapData, OnlyFromBytes, u8> = filter.lpm(maps::ONLY_FROM)?;
    let mut rules: Array<MapData, RateRule> = filter.array(maps::RULES)?;

    let Some((id, live)) = table.find(target) else {
        // A new port rule: its id's slots are unreachable until the index
        // points at them, so they are written in place.
        if let Some(other) = table
            .in_use()
            .map(|(id, _, r)| Target::of_rule(r, id))
            .find(|other| other.overlaps(target))
        {
            return Err(Error::BadInput(format!(
                "{target} overlaps the existing rule {other}; remove it first (`filter-ctl limit remove {other}`)"
            ))
            .into());
        }
        let id = table.free_id().ok_or_else(|| {
            Error::MapFull(format!(
                "all {} port-rule ids are in use; remove a rule first",
                MAX_RULES - 1
            ))
        })?;
        // Leftovers of an edit that died before its switch.
        clear_only_from(&mut only_from, other_slot(id))?;
        rules
            .set(other_slot(id), RateRule::default(), 0)
            .context("clearing RULES")?;
        write_only_from(&mut only_from, id, &spec.only_from)?;
        filter.reset_rule_counters(id)?;
        rules
            .set(id, rule, 0)
            .with_context(|| format!("writing rule {target}"))?;
        if let Err(e) = point_index(filter, *target, id) {
            let _ = point_index(filter, *target, 0);
            return Err(e);
        }
        return Ok(id);
    };

    // An existing rule (or the default, set or not): write the other slot,
    // switch, wait, clear the old one. Only-from entries belong to the
    // slot, so the new set is complete before any packet can see the new
    // rule, and the old set stays until no packet can see the old one.
    let next = other_slot(live);
    if table.slots[next as usize].action != 0 {
        // An earlier edit switched away from it and died before its wait:
        // wait now, before rewriting it.
        barrier()?;
    }
    write_only_from(&mut only_from, next, &spec.only_from)?;
    if let Err(e) = rules.set(next, rule, 0) {
        let _ = clear_only_from(&mut only_from, next);
        return Err(anyhow::Error::new(e).context(format!("writing rule {target}")));
    }
    let switched = match target {
        Target::Default => filter
            .update_config(|config| {
                config.default_rule_slot = next;
                Ok(())
            })
            .map(drop),
        Target::Port { .. } => point_index(filter, *target, next),
    };
    if let Err(e) = switched {
        // The old slot is untouched; a partly switched range goes back, and
        // the next edit may rewrite `next` only once no packet holds it.
        if matches!(target, Target::Port { .. }) {
            let _ = point_index(filter, *target, live);
            let _ = barrier();
        }
        return Err(e);
    }
    barrier()?;
    retire_slot(&mut rules, &mut only_from, live)?;
    Ok(id)
}

/// Empties a slot no packet can reach any more.
fn retire_slot(
    rules: &mut Array<MapData, RateRule>,
    only_from: &mut LpmTrie<MapData, OnlyFromBytes, u8>,
    slot: u32,
) -> anyhow::Result<()> {
    rules
        .set(slot, RateRule::default(), 0)
        .context("clearing an old rule slot")?;
    clear_only_from(only_from, slot)
}

/// Removes the rule for `target` and forgets its buckets and counters.
pub fn remove(filter: &Filter, target: &Target) -> anyhow::Result<()> {
    let table = RuleTable::read(filter)?;
    let Some((id, live)) = table.find(target) else {
        return Err(Error::NotFound(format!(
            "there is no rule for {target} (see `filter-ctl limit list`)"
        ))
        .into());
    };
    if table.live[id as usize].is_none() {
        return Err(Error::NotFound("there is no default rule set".into()).into());
    }
    let mut rules: Array<MapData, RateRule> = filter.array(maps::RULES)?;
    let mut only_from: LpmTrie<MapData, OnlyFromBytes, u8> = filter.lpm(maps::ONLY_FROM)?;
    match target {
        // The default rule is always read from a slot: switch to the empty one.
        Target::Default => {
            let next = other_slot(live);
            rules
                .set(next, RateRule::default(), 0)
                .context("clearing RULES")?;
            filter.update_config(|config| {
                config.default_rule_slot = next;
                Ok(())
            })?;
        }
        Target::Port { .. } => point_index(filter, *target, 0)?,
    }
    barrier()?;
    retire_slot(&mut rules, &mut only_from, live)?;
    clear_only_from(&mut only_from, other_slot(live))?;
    super::buckets::forget(filter, id)?;
    filter.reset_rule_counters(id)
}

/// Every rule in use, default first.
pub fn list(filter: &Filter) -> anyhow::Result<Vec<ListedRule>> {
    let table = RuleTable::read(filter)?;
    let only_from: LpmTrie<MapData, OnlyFromBytes, u8> = filter.lpm(maps::ONLY_FROM)?;
    let mut out = Vec::new();
    for (id, slot, rule) in table.in_use() {
        let counters = filter.rule_counters(id)?;
        let limited = rule.action == RULE_LIMIT && rule.packets_per_sec != 0;
        let auto = rule.autoblock_after != 0;
        out.push(ListedRule {
            target: Target::of_rule(rule, id).to_string(),
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

/// Chooses the rate limiter's clock (`filter_common::CLOCK_AUTO`,
/// `CLOCK_COARSE` or `CLOCK_PRECISE`).
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
    crate::spec::rule::check_aggregation(ipv4, ipv6)?;
    filter.update_config(|config| {
        if let Some(v4) = ipv4 {
            config.ipv4_source_prefix = v4;
        }
        if let Some(v6) = ipv6 {
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
