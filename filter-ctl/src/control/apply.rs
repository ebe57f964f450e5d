//! Applying a policy to the kernel maps: what would change (`plan`) and
//! the change itself (`apply`), make before break.
//!
//! Order, so that no packet blocked by both versions passes and none
//! allowed by both is dropped: (1) the new version's list entries go in
//! beside the old ones; (2) rules switch one by one, each atomically (two
//! slots per rule, see `maps::rules`); (3) settings change; (4) entries only
//! the old version had come out. A policy entry never overwrites a live
//! entry it would weaken, and an entry the old version leaves behind falls
//! back to the live edit (CLI, automatic block, `CrowdSec`) held for the
//! same prefix, if any.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use anyhow::Context as _;
use filter_common::{
    ListEntry, ORIGIN_AUTO, ORIGIN_CROWDSEC, ORIGIN_POLICY, RULE_FLAG_SHADOW, RateRule,
};
use serde::Serialize;

use crate::{
    clock,
    maps::{Filter, Tries, rules},
    spec::{
        cidr::Cidr,
        policy::Policy,
        rule::{LimitSpec, RateClock, Target},
    },
};

/// One rule of a policy: its target, validated spec and kernel rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredRule {
    pub target: Target,
    pub spec: LimitSpec,
    /// From [`LimitSpec::to_rule`], with `RULE_FLAG_SHADOW` for a shadow rule.
    pub rule: RateRule,
}

/// What a policy asks of the kernel maps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    /// Block entries; with `shadow_blocks` they only count would-be drops.
    pub block: BTreeSet<Cidr>,
    pub shadow_blocks: bool,
    /// Allow entries (a shadow policy installs none).
    pub allow: BTreeSet<Cidr>,
    /// Rules by target (the default rule under `Target::Default`).
    pub rules: BTreeMap<String, DesiredRule>,
    pub ipv4_prefix: Option<u32>,
    pub ipv6_prefix: Option<u32>,
    /// `CLOCK_AUTO`, `CLOCK_COARSE` or `CLOCK_PRECISE`.
    pub rate_clock: Option<u32>,
}

/// Every pair of tries a policy writes, in the order entries go in.
const ALL_TRIES: [Tries; 3] = [Tries::Block, Tries::ShadowBlock, Tries::Allow];

impl Desired {
    /// The entries this policy puts in `tries`: its blocks go to the shadow
    /// tries when it is a shadow policy.
    fn entries(&self, tries: Tries) -> &BTreeSet<Cidr> {
        static NONE: BTreeSet<Cidr> = BTreeSet::new();
        match tries {
            Tries::Block if !self.shadow_blocks => &self.block,
            Tries::ShadowBlock if self.shadow_blocks => &self.block,
            Tries::Allow => &self.allow,
            Tries::Block | Tries::ShadowBlock => &NONE,
        }
    }
}

/// A live entry (not from the policy) held for a prefix: what an entry the
/// policy leaves behind falls back to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeldEntry {
    /// `Tries::Allow` or `Tries::Block`.
    pub kind: Tries,
    pub cidr: Cidr,
    /// `ORIGIN_CLI`, `ORIGIN_AUTO` or `ORIGIN_CROWDSEC`.
    pub origin: u8,
    /// Kernel expiry (`CLOCK_MONOTONIC` ns), 0 = permanent.
    pub expires_at_ns: u64,
    /// For automatic blocks: the rule id.
    pub rule: u8,
}

/// What an apply changes (or would change): the `diff` output and the
/// audit log's summary.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Change {
    pub block_added: Vec<String>,
    pub block_removed: Vec<String>,
    /// Blocks of a shadow policy: counted, never enforced.
    pub shadow_block_added: Vec<String>,
    pub shadow_block_removed: Vec<String>,
    pub allow_added: Vec<String>,
    pub allow_removed: Vec<String>,
    /// Rules created or changed (`tcp/25`, `default`).
    pub rules_set: Vec<String>,
    pub rules_removed: Vec<String>,
    /// Settings changed, as `name: old -> new`.
    pub settings: Vec<String>,
}

impl Change {
    #[must_use]
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// One line for logs and the audit log.
    #[must_use]
    pub fn summary(&self) -> String {
        format!(
            "block +{} -{}, shadow block +{} -{}, allow +{} -{}, rules set {} removed {}, settings {}",
            self.block_added.len(),
            self.block_removed.len(),
            self.shadow_block_added.len(),
            self.shadow_block_removed.len(),
            self.allow_added.len(),
            self.allow_removed.len(),
            self.rules_set.len(),
            self.rules_removed.len(),
            self.settings.len()
        )
    }
}

/// What going from `current` (the active policy, if any) to `next` changes.
/// Pure; `config` is the kernel's, for settings.
#[must_use]
pub fn plan(current: Option<&Desired>, next: &Desired, config: &filter_common::Config) -> Change {
    let empty = Desired::default();
    let current = current.unwrap_or(&empty);
    let mut change = Change::default();
    for tries in ALL_TRIES {
        let (old, new) = (current.entries(tries), next.entries(tries));
        let added: Vec<String> = new.difference(old).map(ToString::to_string).collect();
        let removed: Vec<String> = old.difference(new).map(ToString::to_string).collect();
        match tries {
            Tries::Block => (change.block_added, change.block_removed) = (added, removed),
            Tries::ShadowBlock => {
                (change.shadow_block_added, change.shadow_block_removed) = (added, removed);
            }
            Tries::Allow => (change.allow_added, change.allow_removed) = (added, removed),
        }
    }
    change.rules_set = next
        .rules
        .iter()
        .filter(|(name, rule)| current.rules.get(*name) != Some(rule))
        .map(|(name, _)| name.clone())
        .collect();
    change.rules_removed = current
        .rules
        .keys()
        .filter(|name| !next.rules.contains_key(*name))
        .cloned()
        .collect();
    if let Some(v4) = next.ipv4_prefix.filter(|v| *v != config.ipv4_source_prefix) {
        change.settings.push(format!(
            "ipv4_prefix: {} -> {v4}",
            config.ipv4_source_prefix
        ));
    }
    if let Some(v6) = next.ipv6_prefix.filter(|v| *v != config.ipv6_source_prefix) {
        change.settings.push(format!(
            "ipv6_prefix: {} -> {v6}",
            config.ipv6_source_prefix
        ));
    }
    if let Some(clock) = next.rate_clock.filter(|c| *c != config.rate_clock) {
        change.settings.push(format!(
            "rate_clock: {} -> {}",
            RateClock::of_value(config.rate_clock),
            RateClock::of_value(clock)
        ));
    }
    change
}

/// Applies `next` over `current` (see the module documentation for the
/// order). On an error while adding entries nothing has changed; on a later
/// error the new entries are in and some rules may be switched: the caller
/// re-applies a version (the error says so).
pub fn apply(
    filter: &Filter,
    current: Option<&Desired>,
    next: &Desired,
    held: &[HeldEntry],
) -> anyhow::Result<Change> {
    let empty = Desired::default();
    let current = current.unwrap_or(&empty);
    let change = plan(Some(current), next, &filter.config()?);

    // (1) Add. Without reading the maps: what a policy entry can replace
    // is a live entry, and the state holds those (`held`).
    let mut added: Vec<(Tries, Vec<Cidr>)> = Vec::new();
    for tries in ALL_TRIES {
        let wanted: Vec<Cidr> = next
            .entries(tries)
            .difference(current.entries(tries))
            .copied()
            .collect();
        let writes: Vec<(Cidr, ListEntry)> = wanted.iter().map(|c| (*c, policy_entry(c))).collect();
        let result = filter.write_entries(tries, &writes);
        added.push((tries, wanted));
        if let Err(error) = result {
            for (tries, cidrs) in &added {
                let _ = fall_back(filter, *tries, cidrs, held);
            }
            return Err(error.context("adding the policy's entries; nothing was changed"));
        }
    }

    // (2) Rules: overlapping old ones out just before the new one comes in.
    let after_entries = |e: anyhow::Error| {
        e.context(
            "the new entries are in, some rules may have switched: apply a policy again (or `filter-ctl policy rollback`)",
        )
    };
    let table = rules::RuleTable::read(filter)?;
    for (name, rule) in &next.rules {
        if current.rules.get(name) == Some(rule) && table.find(&rule.target).is_some() {
            continue;
        }
        for (old_name, old) in &current.rules {
            if old_name != name
                && !next.rules.contains_key(old_name)
                && old.target.overlaps(&rule.target)
            {
                remove_rule(filter, old.target).map_err(after_entries)?;
            }
        }
        rules::set(filter, &rule.target, rule.rule, &rule.spec)
            .with_context(|| format!("setting the rule {name}"))
            .map_err(after_entries)?;
    }
    for (name, old) in &current.rules {
        if !next.rules.contains_key(name) {
            remove_rule(filter, old.target).map_err(after_entries)?;
        }
    }

    // (3) Settings.
    if next.ipv4_prefix.is_some() || next.ipv6_prefix.is_some() {
        rules::set_aggregation(filter, next.ipv4_prefix, next.ipv6_prefix)
            .map_err(after_entries)?;
    }
    if let Some(clock) = next.rate_clock {
        rules::set_clock(filter, clock).map_err(after_entries)?;
    }

    // (4) Entries only the old version had.
    for tries in ALL_TRIES {
        let gone: Vec<Cidr> = current
            .entries(tries)
            .difference(next.entries(tries))
            .copied()
            .collect();
        fall_back(filter, tries, &gone, held).map_err(after_entries)?;
    }
    Ok(change)
}

/// Takes out what an interrupted apply of `partial` may have left in the
/// maps (entries and rules `next` does not have): run after [`apply`] when
/// an apply was killed midway, before it recorded its version.
pub fn clean_up_interrupted(
    filter: &Filter,
    partial: &Desired,
    next: &Desired,
    held: &[HeldEntry],
) -> anyhow::Result<()> {
    for tries in ALL_TRIES {
        let gone: Vec<Cidr> = partial
            .entries(tries)
            .difference(next.entries(tries))
            .copied()
            .collect();
        fall_back(filter, tries, &gone, held)?;
    }
    for (name, rule) in &partial.rules {
        if !next.rules.contains_key(name) {
            remove_rule(filter, rule.target)?;
        }
    }
    Ok(())
}

fn remove_rule(filter: &Filter, target: Target) -> anyhow::Result<()> {
    match rules::remove(filter, &target) {
        Err(e)
            if matches!(
                e.downcast_ref::<crate::error::Error>(),
                Some(crate::error::Error::NotFound(_))
            ) =>
        {
            Ok(())
        }
        other => other.with_context(|| format!("removing the rule {target}")),
    }
}

/// The kernel value of a policy entry for `cidr`: permanent.
fn policy_entry(cidr: &Cidr) -> ListEntry {
    ListEntry {
        expires_at_ns: 0,
        prefix_len: cidr.prefix(),
        origin: ORIGIN_POLICY,
        ..ListEntry::default()
    }
}

/// Gives each of `cidrs` back to the live entries held for it (a CLI edit,
/// an automatic block, a `CrowdSec` decision still in force), or deletes it.
/// Never reads the maps: while a policy holds a prefix, the kernel entry is
/// the policy's (a live edit never takes over a policy entry, and automatic
/// blocks never replace an entry). A prefix may hold an automatic block and
/// an operator's entry at once (in the host table and a trie): both go
/// back, the automatic block first, so that where both share a trie key
/// the operator's, written last, holds it.
fn fall_back(
    filter: &Filter,
    tries: Tries,
    cidrs: &[Cidr],
    held: &[HeldEntry],
) -> anyhow::Result<()> {
    if cidrs.is_empty() {
        return Ok(());
    }
    let now = clock::monotonic_ns();
    let mut held_at: HashMap<Cidr, Vec<&HeldEntry>> = HashMap::new();
    for h in held
        .iter()
        .filter(|h| h.kind == tries && (h.expires_at_ns == 0 || h.expires_at_ns > now))
    {
        held_at.entry(h.cidr).or_default().push(h);
    }
    let mut rewrite = Vec::new();
    let mut delete = Vec::new();
    for cidr in cidrs {
        let Some(entries) = held_at.get_mut(cidr) else {
            delete.push(*cidr);
            continue;
        };
        entries.sort_by_key(|h| match h.origin {
            ORIGIN_AUTO => 0,
            ORIGIN_CROWDSEC => 1,
            _ => 2,
        });
        rewrite.extend(entries.iter().map(|h| {
            (
                *cidr,
                ListEntry {
                    expires_at_ns: h.expires_at_ns,
                    prefix_len: cidr.prefix(),
                    origin: h.origin,
                    rule: h.rule,
                    ..ListEntry::default()
                },
            )
        }));
    }
    filter.write_entries(tries, &rewrite)?;
    filter.delete_entries(tries, &delete)
}

impl From<&Policy> for Desired {
    /// What a validated policy asks of the maps. A shadow policy's block
    /// entries only count, and its allow entries are not installed (they
    /// would change what is enforced).
    fn from(policy: &Policy) -> Self {
        let rules = policy
            .default_limit
            .iter()
            .chain(&policy.port_rules)
            .map(|r| {
                let mut rule = r.rule;
                if r.shadow {
                    rule.flags |= RULE_FLAG_SHADOW;
                }
                (
                    r.target.to_string(),
                    DesiredRule {
                        target: r.target,
                        spec: r.spec.clone(),
                        rule,
                    },
                )
            })
            .collect();
        Self {
            block: policy.block.iter().copied().collect(),
            shadow_blocks: policy.shadow,
            allow: if policy.shadow {
                BTreeSet::new()
            } else {
                policy.allow.iter().copied().collect()
            },
            rules,
            ipv4_prefix: policy.ipv4_prefix.map(u32::from),
            ipv6_prefix: policy.ipv6_prefix.map(u32::from),
            rate_clock: policy.rate_clock.map(RateClock::value),
        }
    }
}
