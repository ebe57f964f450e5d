//! Harness for running the real XDP program on crafted frames with
//! `BPF_PROG_TEST_RUN`: each [`ProgTest`] loads its own copy with maps pinned
//! in a private bpffs directory (tests run in parallel threads) and removes
//! them on drop, also on panic.

use std::{
    fmt::Write as _,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use aya::{
    Ebpf,
    maps::{
        Array, MapData, PerCpuArray,
        lpm_trie::{Key, LpmTrie},
    },
    programs::{ProgramError, TestRun, TestRunOptions, Xdp},
};
use filter_common::{
    Bucket, Counter, Ipv4Bytes, Ipv6Bytes, ListEntry, ORIGIN_AUTO, ORIGIN_POLICY, OnlyFromBytes,
    RULE_FLAG_SHADOW, RateRule, RuleCounter, maps, reason,
};
use filter_ctl::{
    maps::{
        Filter, ListKind, Tries,
        buckets::Buckets,
        lists::Merge,
        loader::{self, Capacities, PROGRAM},
        pins::PinDir,
        rules::{self, RuleTable},
    },
    spec::{
        cidr::Cidr,
        rule::{LimitSpec, Target},
    },
};

use crate::model::{Decision, ListItem, Model};

/// Counters of every reason.
pub type ReasonCounters = [Counter; reason::COUNT as usize];

// One root check for every test: namespaces and BPF both need it.
pub use crate::netns::{is_root, skip_unless_root};

/// Largest frame `BPF_PROG_TEST_RUN` hands to an XDP program in one piece
/// (a page minus headroom and `skb_shared_info`). Longer frames arrive as
/// multi-buffer packets whose tail the program cannot see (it is not
/// `xdp.frags`): it then judges the first 3520 bytes alone, which no real
/// attachment produces. Tests stay below this.
pub const MAX_TEST_FRAME: usize = 3520;

static NEXT_FIXTURE: AtomicU32 = AtomicU32::new(0);
static SWEEP: std::sync::Once = std::sync::Once::new();

/// Removes the pin directories of test processes that died without cleaning
/// up (killed with SIGKILL, say): `/sys/fs/bpf/fpt-<pid>-<n>` of a pid that
/// is no longer running.
fn sweep_dead_fixtures() {
    let Ok(entries) = std::fs::read_dir("/sys/fs/bpf") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("fpt-"))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id()
            && !std::path::Path::new(&format!("/proc/{pid}")).exists()
            && let Err(e) = loader::detach_all(&PinDir::new(entry.path()))
        {
            eprintln!(
                "removing the stale test pins {}: {e:#}",
                entry.path().display()
            );
        }
    }
}

/// Small capacities: tests never need the production sizes.
#[must_use]
pub fn small_capacities() -> Capacities {
    Capacities {
        list: 1024,
        buckets: 4096,
    }
}

/// The ingress interface `BPF_PROG_TEST_RUN` gives an XDP program run
/// without a context: the loopback.
pub const TEST_RUN_IFINDEX: u32 = 1;

/// One loaded copy of the program with its own pinned maps.
pub struct ProgTest {
    ebpf: Ebpf,
    stats: PerCpuArray<MapData, Counter>,
    pins: PinDir,
}

/// Result of one run: the verdict and how every reason counter moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub action: u32,
    pub delta: ReasonCounters,
}

impl Outcome {
    /// The decision the counters show: one reason that is not a shadow
    /// reason moved by exactly one packet of `len` bytes, at most one shadow
    /// reason moved by the same, and every other counter stayed put.
    /// Otherwise a description of what moved.
    pub fn decision(&self, len: usize) -> Result<Decision, String> {
        let one = Counter {
            packets: 1,
            bytes: len as u64,
        };
        let moved = |shadow: bool| -> Vec<u32> {
            (0..reason::COUNT)
                .filter(|&r| {
                    reason::is_shadow(r) == shadow && self.delta[r as usize] != Counter::default()
                })
                .collect()
        };
        let by_one = |r: u32| self.delta[r as usize] == one;
        match (moved(false).as_slice(), moved(true).as_slice()) {
            ([r], []) if by_one(*r) => Ok(Decision::plain(*r)),
            ([r], [s]) if by_one(*r) && by_one(*s) => Ok(Decision {
                reason: *r,
                shadow: Some(*s),
            }),
            _ => Err(describe_delta(&self.delta)),
        }
    }

    /// The one reason whose counter moved by exactly one packet of `len`
    /// bytes while every other (shadow reasons too) stayed put, or a
    /// description of what moved.
    pub fn reason(&self, len: usize) -> Result<u32, String> {
        match self.decision(len)? {
            Decision {
                reason,
                shadow: None,
            } => Ok(reason),
            Decision { .. } => Err(describe_delta(&self.delta)),
        }
    }
}

/// `name: packets/bytes` for every counter that moved.
#[must_use]
pub fn describe_delta(delta: &ReasonCounters) -> String {
    let mut out = String::new();
    for (i, c) in delta.iter().enumerate() {
        if *c != Counter::default() {
            let _ = write!(
                out,
                "{}{}: {} pkts/{} bytes",
                if out.is_empty() { "" } else { ", " },
                reason::NAMES[i],
                c.packets,
                c.bytes
            );
        }
    }
    if out.is_empty() {
        out.push_str("no counter moved");
    }
    out
}

/// Name of an XDP action (`XDP_DROP`).
pub use filter_common::xdp_action::name as action_name;

fn cidr(text: &str) -> Cidr {
    text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
}

impl ProgTest {
    /// Loads the program with small map capacities.
    #[must_use]
    pub fn new() -> Self {
        Self::with_capacities(&small_capacities())
    }

    #[must_use]
    pub fn with_capacities(caps: &Capacities) -> Self {
        SWEEP.call_once(sweep_dead_fixtures);
        let n = NEXT_FIXTURE.fetch_add(1, Ordering::Relaxed);
        let pins = PinDir::new(format!("/sys/fs/bpf/fpt-{}-{n}", std::process::id()));
        if pins.root().exists() {
            // Left over by a crashed run whose pid we now have.
            loader::detach_all(&pins)
                .unwrap_or_else(|e| panic!("removing stale {}: {e:#}", pins.root().display()));
        }
        let ebpf = match loader::load(&pins, caps) {
            Ok(ebpf) => ebpf,
            Err(e) => {
                let _ = loader::detach_all(&pins);
                panic!(
                    "loading the XDP program under {}: {e:#}",
                    pins.root().display()
                );
            }
        };
        let filter = Filter::open(&pins).expect("opening the pinned maps");
        let stats = PerCpuArray::try_from(filter.map(maps::STATS).expect("STATS map"))
            .expect("STATS is a per-CPU array");
        Self { ebpf, stats, pins }
    }

    #[must_use]
    pub fn pins(&self) -> &PinDir {
        &self.pins
    }

    /// A handle for editing the maps (takes the edit lock until dropped:
    /// never hold two at once).
    #[must_use]
    pub fn filter(&self) -> Filter {
        Filter::open_for_edit(&self.pins, filter_ctl::maps::lock::DEFAULT_TIMEOUT)
            .expect("opening the filter for editing")
    }

    /// A handle for reading the maps (no lock).
    #[must_use]
    pub fn reader(&self) -> Filter {
        Filter::open(&self.pins).expect("opening the filter")
    }

    fn program(&self) -> &Xdp {
        self.ebpf
            .program(PROGRAM)
            .expect("program in the object")
            .try_into()
            .expect("an XDP program")
    }

    /// Runs the program once on `frame`; the kernel refuses some inputs
    /// (shorter than an Ethernet header, larger than a page).
    pub fn try_run(&self, frame: &[u8]) -> Result<u32, ProgramError> {
        self.program()
            .test_run(TestRunOptions {
                data_in: Some(frame),
                repeat: 1,
                ..Default::default()
            })
            .map(|r| r.return_value)
    }

    /// Runs the program once on `frame` (at most [`MAX_TEST_FRAME`] bytes)
    /// and returns its XDP action.
    #[must_use]
    pub fn run(&self, frame: &[u8]) -> u32 {
        assert!(
            frame.len() <= MAX_TEST_FRAME,
            "a {}-byte frame would reach the program truncated to {MAX_TEST_FRAME} bytes",
            frame.len()
        );
        self.try_run(frame)
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN on {} bytes: {e}", frame.len()))
    }

    /// `reason`'s counter on each CPU, in the slot of the interface
    /// `BPF_PROG_TEST_RUN` reports: the loopback of the caller's network
    /// namespace (ifindex 1), the only slot test runs count in.
    fn reason_per_cpu(&self, reason: u32) -> Vec<Counter> {
        self.stats
            .get(&filter_common::stats_index(TEST_RUN_IFINDEX, reason), 0)
            .expect("reading STATS")
            .iter()
            .copied()
            .collect()
    }

    /// Packets counted under `reason` on each CPU.
    #[must_use]
    pub fn reason_packets_per_cpu(&self, reason: u32) -> Vec<u64> {
        self.reason_per_cpu(reason)
            .iter()
            .map(|c| c.packets)
            .collect()
    }

    /// Every reason's counter, summed over CPUs.
    #[must_use]
    pub fn stats(&self) -> ReasonCounters {
        let mut out = [Counter::default(); reason::COUNT as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            let index = u32::try_from(i).expect("few reasons");
            for c in self.reason_per_cpu(index) {
                slot.packets += c.packets;
                slot.bytes += c.bytes;
            }
        }
        out
    }

    /// Runs `frame` and reports the verdict with the counter movement.
    #[must_use]
    pub fn run_counted(&self, frame: &[u8]) -> Outcome {
        let before = self.stats();
        let action = self.run(frame);
        let after = self.stats();
        let mut delta = [Counter::default(); reason::COUNT as usize];
        for i in 0..delta.len() {
            delta[i] = Counter {
                packets: after[i].packets - before[i].packets,
                bytes: after[i].bytes - before[i].bytes,
            };
        }
        Outcome { action, delta }
    }

    // ---- map edits through filter-ctl's library --------------------------

    fn list_insert(&self, kind: ListKind, cidrs: &[&str], ttl: Option<Duration>) {
        let cidrs: Vec<Cidr> = cidrs.iter().map(|c| cidr(c)).collect();
        self.filter()
            // Replace: the tests and the model set exactly the expiry they name.
            .list_insert(kind, &cidrs, ttl, Merge::Replace)
            .unwrap_or_else(|e| panic!("adding {cidrs:?} to the {}: {e:#}", kind.name()));
    }

    pub fn block(&self, cidrs: &[&str]) {
        self.list_insert(ListKind::Block, cidrs, None);
    }

    pub fn block_ttl(&self, cidrs: &[&str], ttl: Duration) {
        self.list_insert(ListKind::Block, cidrs, Some(ttl));
    }

    /// Writes block entries as they are, bypassing `filter-ctl`'s edits
    /// (which only write its own origin): `origin`, `expires_at_ns` 0 for
    /// permanent. Replaces an entry stored for the same prefix. Marks the
    /// blocklist summary first, as every writer of the tries must.
    pub fn block_raw(&self, cidrs: &[&str], origin: u8, expires_at_ns: u64) {
        let filter = self.filter();
        let parsed: Vec<Cidr> = cidrs.iter().map(|c| cidr(c)).collect();
        filter
            .summary()
            .and_then(|s| s.mark(&parsed))
            .expect("marking BLOCK_SUMMARY");
        let mut v4: LpmTrie<MapData, Ipv4Bytes, ListEntry> =
            filter.lpm(maps::BLOCK_V4).expect("BLOCK_V4 map");
        let mut v6: LpmTrie<MapData, Ipv6Bytes, ListEntry> =
            filter.lpm(maps::BLOCK_V6).expect("BLOCK_V6 map");
        for text in cidrs {
            let c = cidr(text);
            let entry = ListEntry {
                expires_at_ns,
                prefix_len: c.prefix(),
                origin,
                ..ListEntry::default()
            };
            match c {
                Cidr::V4 { addr, prefix } => {
                    v4.insert(&Key::new(u32::from(prefix), addr), entry, 0)
                }
                Cidr::V6 { addr, prefix } => {
                    v6.insert(&Key::new(u32::from(prefix), addr), entry, 0)
                }
            }
            .unwrap_or_else(|e| panic!("writing {text} to the blocklist: {e}"));
        }
    }

    /// Adds permanent shadow block entries to `SHADOW_BLOCK_V4`/`V6`, as a
    /// policy marked `shadow = true` does (through the same write, which
    /// keeps `Config`'s shadow counts).
    pub fn block_shadow(&self, cidrs: &[&str]) {
        self.write_shadow(cidrs, 0);
    }

    /// Adds shadow block entries that expire after `ttl` (a policy's never
    /// do: this tests the program's expiry in the shadow tries).
    pub fn block_shadow_ttl(&self, cidrs: &[&str], ttl: Duration) {
        self.write_shadow(cidrs, filter_ctl::clock::expiry_from_now(Some(ttl)));
    }

    fn write_shadow(&self, cidrs: &[&str], expires_at_ns: u64) {
        let entries: Vec<(Cidr, ListEntry)> = cidrs
            .iter()
            .map(|text| {
                let c = cidr(text);
                let entry = ListEntry {
                    expires_at_ns,
                    prefix_len: c.prefix(),
                    origin: ORIGIN_POLICY,
                    ..ListEntry::default()
                };
                (c, entry)
            })
            .collect();
        self.filter()
            .write_entries(Tries::ShadowBlock, &entries)
            .unwrap_or_else(|e| panic!("adding {cidrs:?} to the shadow blocklist: {e:#}"));
    }

    /// `Config`'s counts of shadow block entries (IPv4, IPv6).
    #[must_use]
    pub fn shadow_counts(&self) -> (u32, u32) {
        let config = self.reader().config().expect("reading CONFIG");
        (config.shadow_v4_entries, config.shadow_v6_entries)
    }

    /// Overwrites `Config`'s counts of shadow block entries, whatever the
    /// tries hold: with a 0 the program must skip that family's entries.
    pub fn set_shadow_counts(&self, v4: u32, v6: u32) {
        self.filter()
            .update_config(|config| {
                (config.shadow_v4_entries, config.shadow_v6_entries) = (v4, v6);
                Ok(())
            })
            .unwrap_or_else(|e| panic!("writing the shadow counts: {e:#}"));
    }

    /// The shadow block entries as stored (expired ones included).
    #[must_use]
    pub fn shadow_entries(&self) -> Vec<(Cidr, ListEntry)> {
        self.reader()
            .entries_raw(Tries::ShadowBlock)
            .expect("reading the shadow blocklist")
    }

    /// Makes rule `id` a shadow rule (`shadow = true`) or an enforced one,
    /// in place (see [`Self::patch_rule`]).
    pub fn set_shadow(&self, id: u32, shadow: bool) {
        self.patch_rule(id, |rule| {
            if shadow {
                rule.flags |= RULE_FLAG_SHADOW;
            } else {
                rule.flags &= !RULE_FLAG_SHADOW;
            }
        });
    }

    pub fn allow(&self, cidrs: &[&str]) {
        self.list_insert(ListKind::Allow, cidrs, None);
    }

    pub fn allow_ttl(&self, cidrs: &[&str], ttl: Duration) {
        self.list_insert(ListKind::Allow, cidrs, Some(ttl));
    }

    /// Sets a rule (`default`, `tcp/22`, `udp/1000-2000`) and returns its
    /// id: the key of its counters, buckets and automatic blocks, which a
    /// change of the rule keeps (its live slot alternates).
    pub fn limit(&self, target: &str, spec: &LimitSpec) -> u32 {
        let parsed: Target = target.parse().unwrap_or_else(|e| panic!("{target}: {e}"));
        let filter = self.filter();
        let rule = spec
            .to_rule(&parsed)
            .unwrap_or_else(|e| panic!("limit {target}: {e:#}"));
        let id = rules::set(&filter, &parsed, rule, spec)
            .unwrap_or_else(|e| panic!("limit {target}: {e:#}"));
        assert_eq!(Some(id), self.rule_id(target), "the id set returns");
        id
    }

    /// The id of the rule for `target`, if there is one.
    #[must_use]
    pub fn rule_id(&self, target: &str) -> Option<u32> {
        let parsed: Target = target.parse().unwrap_or_else(|e| panic!("{target}: {e}"));
        let table = RuleTable::read(&self.reader()).expect("reading the rules");
        table
            .find(&parsed)
            .and_then(|(id, _)| table.live_slot(id).map(|_| id))
    }

    /// The live slot of rule `id` (panics if it holds no rule).
    #[must_use]
    pub fn live_slot(&self, id: u32) -> u32 {
        RuleTable::read(&self.reader())
            .expect("reading the rules")
            .live_slot(id)
            .unwrap_or_else(|| panic!("rule {id} holds no rule"))
    }

    /// Rewrites rule `id` in its live slot, in place, e.g. to give it a rate
    /// below the CLI's 1 packet/s minimum so that no bucket refills during a
    /// test. Test set-up only: no packet may be running (in place is what
    /// `rules::set` never does).
    pub fn patch_rule(&self, id: u32, edit: impl FnOnce(&mut RateRule)) {
        let slot = self.live_slot(id);
        let filter = self.filter();
        let mut rules: Array<MapData, RateRule> =
            Array::try_from(filter.map(maps::RULES).expect("RULES map")).expect("RULES array");
        let mut rule = rules.get(&slot, 0).expect("reading RULES");
        edit(&mut rule);
        rules.set(slot, rule, 0).expect("writing RULES");
    }

    /// Sets the rate-limit aggregation prefix lengths.
    pub fn set_aggregation(&self, ipv4: u32, ipv6: u32) {
        rules::set_aggregation(&self.filter(), Some(ipv4), Some(ipv6))
            .unwrap_or_else(|e| panic!("setting the aggregation: {e:#}"));
    }

    /// The counters of rule `id`.
    #[must_use]
    pub fn rule_counters(&self, id: u32) -> RuleCounter {
        self.reader().rule_counters(id).expect("reading RULE_STATS")
    }

    /// The kernel's rate-limit bucket of (rule `id`, source key), if any.
    #[must_use]
    pub fn bucket(&self, id: u32, source: [u8; 16]) -> Option<Bucket> {
        Buckets::open(&self.reader())
            .expect("opening BUCKETS")
            .bucket(id, &source)
            .expect("reading BUCKETS")
    }

    /// What the controller's sweep does with expired entries: scan the
    /// lists, then delete those still expired (under the edit lock).
    pub fn sweep_expired(&self) {
        let filter = self.filter();
        let sweep = filter.sweep_scan().expect("sweep scan");
        for (kind, cidrs) in &sweep.expired {
            filter
                .remove_expired(*kind, cidrs)
                .expect("removing expired entries");
        }
    }

    /// The automatic blocks as stored in the blocklists (expired ones included).
    #[must_use]
    pub fn autoblocks(&self) -> Vec<(Cidr, ListEntry)> {
        self.reader()
            .list_entries_raw(ListKind::Block)
            .expect("reading the blocklists")
            .into_iter()
            .filter(|(_, e)| e.origin == ORIGIN_AUTO)
            .collect()
    }

    /// A reference model holding exactly what the maps hold now (lists with
    /// their expiry times and automatic blocks, shadow block entries,
    /// configuration with its entry counts, rules, port index, only-from
    /// prefixes, rate-limit buckets). Counters start at zero.
    #[must_use]
    pub fn model(&self) -> Model {
        let filter = self.reader();
        let mut model = Model::default();
        for (tries, (v4, v6)) in [
            (Tries::Allow, (&mut model.allow_v4, &mut model.allow_v6)),
            (Tries::Block, (&mut model.block_v4, &mut model.block_v6)),
            (
                Tries::ShadowBlock,
                (&mut model.shadow_block_v4, &mut model.shadow_block_v6),
            ),
        ] {
            for (c, e) in filter.entries_raw(tries).expect("reading the lists") {
                match c {
                    Cidr::V4 { addr, prefix } => v4.insert(ListItem::from_entry(addr, prefix, &e)),
                    Cidr::V6 { addr, prefix } => v6.insert(ListItem::from_entry(addr, prefix, &e)),
                }
            }
        }
        let config = filter.config().expect("reading CONFIG");
        model.ipv4_source_prefix = config.ipv4_source_prefix;
        model.ipv6_source_prefix = config.ipv6_source_prefix;
        model.default_rule_slot = config.default_rule_slot;
        model.allow_v4_entries = config.allow_v4_entries;
        model.allow_v6_entries = config.allow_v6_entries;
        model.shadow_v4_entries = config.shadow_v4_entries;
        model.shadow_v6_entries = config.shadow_v6_entries;
        let rules: Array<MapData, RateRule> =
            Array::try_from(filter.map(maps::RULES).expect("RULES map")).expect("RULES array");
        for (slot, rule) in model.rules.iter_mut().enumerate() {
            *rule = rules
                .get(&u32::try_from(slot).expect("few slots"), 0)
                .expect("reading RULES");
        }
        let index: Array<MapData, u32> = Array::try_from(
            filter
                .map(maps::PORT_RULE_INDEX)
                .expect("PORT_RULE_INDEX map"),
        )
        .expect("PORT_RULE_INDEX array");
        for (i, slot) in index.iter().enumerate() {
            model.port_index[i] = slot.expect("reading PORT_RULE_INDEX");
        }
        let only_from: LpmTrie<MapData, OnlyFromBytes, u8> =
            LpmTrie::try_from(filter.map(maps::ONLY_FROM).expect("ONLY_FROM map"))
                .expect("ONLY_FROM trie");
        for key in only_from.keys() {
            let key = key.expect("reading ONLY_FROM");
            let data = key.data();
            let slot = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
            let mut net = [0u8; 16];
            net.copy_from_slice(&data[4..]);
            model
                .only_from
                .push((slot, net, key.prefix_len().saturating_sub(32)));
        }
        // The model keeps every bucket in a hash map; the kernel keeps two
        // per set and evicts. With the few sources a test sends, two keys
        // of one (rule) landing in one set of a million slots is practically
        // impossible: the dump is the same table.
        let buckets = Buckets::open(&filter).expect("opening BUCKETS");
        for (_, slot) in buckets.used().expect("reading BUCKETS") {
            model
                .buckets
                .insert((slot.key().rule, slot.key().source), slot.bucket());
        }
        model
    }
}

impl Default for ProgTest {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for ProgTest {
    fn drop(&mut self) {
        if let Err(e) = loader::detach_all(&self.pins) {
            eprintln!("removing {}: {e:#}", self.pins.root().display());
        }
    }
}

// ---- table tests ------------------------------------------------------------------

/// One row of a table test: a frame, the reason (hence verdict) expected,
/// and the shadow reason expected besides it (none unless [`Case::shadow`]).
#[derive(Clone, Debug)]
pub struct Case {
    pub what: String,
    pub frame: Vec<u8>,
    pub action: u32,
    pub reason: u32,
    pub shadow: Option<u32>,
}

impl Case {
    #[must_use]
    pub fn new(what: impl Into<String>, frame: Vec<u8>, reason: u32) -> Self {
        Self {
            what: what.into(),
            frame,
            action: crate::model::action_of(reason),
            reason,
            shadow: None,
        }
    }

    /// Expects `shadow` (`reason::SHADOW_*`) to be counted besides the reason.
    #[must_use]
    pub fn shadow(mut self, shadow: u32) -> Self {
        self.shadow = Some(shadow);
        self
    }

    fn decision(&self) -> Decision {
        Decision {
            reason: self.reason,
            shadow: self.shadow,
        }
    }
}

/// Hex dump, 16 bytes a line, for failure messages.
#[must_use]
pub fn hex(frame: &[u8]) -> String {
    frame
        .chunks(16)
        .enumerate()
        .map(|(i, chunk)| {
            let bytes: Vec<String> = chunk.iter().map(|b| format!("{b:02x}")).collect();
            format!("{:04x}: {}", i * 16, bytes.join(" "))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs every case in order through the program and through a reference
/// model holding the same map contents; checks the verdict, that exactly the
/// expected reason's counter (and the expected shadow reason's, if any)
/// moved by one packet and the frame's bytes, and that the model agrees. Reports every failing case, then panics. Returns
/// the model, for checks of its state and rule counters.
pub fn run_table(test: &ProgTest, cases: &[Case]) -> Model {
    let mut model = test.model();
    run_cases(test, &mut model, cases);
    model
}

/// [`run_table`] with a model carried over from earlier cases (so that its
/// buckets evolve on their own instead of being copied from the kernel).
pub fn run_cases(test: &ProgTest, model: &mut Model, cases: &[Case]) {
    let mut failures = Vec::new();
    for case in cases {
        let expected = case.decision();
        let model_decision = model.decide(&case.frame, filter_ctl::clock::monotonic_ns());
        let outcome = test.run_counted(&case.frame);
        let kernel_decision = outcome.decision(case.frame.len());
        let mut problems = Vec::new();
        if outcome.action != case.action {
            problems.push(format!(
                "verdict {} (expected {})",
                action_name(outcome.action),
                action_name(case.action)
            ));
        }
        if kernel_decision != Ok(expected) {
            problems.push(format!(
                "counters moved: {} (expected {}: 1 pkt/{} bytes each)",
                describe_delta(&outcome.delta),
                expected.name(),
                case.frame.len()
            ));
        }
        if model_decision != expected {
            problems.push(format!("the model says {}", model_decision.name()));
        }
        if !problems.is_empty() {
            failures.push(format!(
                "{} (expected {} / {}): {}\n{}",
                case.what,
                action_name(case.action),
                expected.name(),
                problems.join("; "),
                hex(&case.frame)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}
