//! Rules never tear (`filter-ctl/src/maps/rules.rs` `set`,
//! `filter-ebpf/src/ratelimit.rs` `rule_for`): a rule rewritten over and
//! over between two shapes while packets run through `BPF_PROG_TEST_RUN` on
//! both CPUs. Every packet must get the verdict of one shape or the other;
//! the shapes are chosen so that a mix of the two gives a third verdict,
//! which the per-reason counters would show. Also: a changed rule keeps its
//! id (buckets, counters) and moves to its other slot.

use std::{
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use filter_common::{
    DEFAULT_RULE, RateRule, RuleCounter, other_slot,
    reason::{self, PASS, PORT_DENIED, RATELIMIT},
};
use filter_ctl::{
    maps::rules,
    spec::rule::{LimitSpec, Target},
};
use filter_tests::{
    progtest::{Case, ProgTest, run_table, skip_unless_root},
    rules::{SLOW, XDP_PASS_ACTION, freeze, udp4},
};

/// Most rewrites a run makes; the time budget stops it earlier: each
/// rewrite waits for an RCU grace period (about 10 ms), so the default
/// budget gives a few hundred. `FILTER_SWAP_SECS=30` gives thousands.
const REWRITES: u32 = 10_000;
const DEFAULT_SECS: u64 = 4;
/// Fewer rewrites than this per second of budget fail the test: it would
/// not show much.
const MIN_REWRITES_PER_SEC: u32 = 20;
/// One hammering run at a time: each wants both CPUs.
static HAMMER: Mutex<()> = Mutex::new(());

/// The first two CPUs this process may run on, if it may run on two.
/// The writer's time budget: `FILTER_SWAP_SECS`, else [`DEFAULT_SECS`].
fn budget() -> Duration {
    let secs = std::env::var("FILTER_SWAP_SECS")
        .ok()
        .map_or(DEFAULT_SECS, |s| {
            s.parse()
                .unwrap_or_else(|e| panic!("FILTER_SWAP_SECS={s}: {e}"))
        });
    Duration::from_secs(secs)
}

fn two_cpus() -> Option<[usize; 2]> {
    // SAFETY: a zeroed cpu_set_t is a valid (empty) set, filled in by the kernel.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a live cpu_set_t of the size passed.
    if unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &raw mut set) } != 0 {
        return None;
    }
    // SAFETY: CPU_ISSET reads within `set`.
    let mut cpus = (0..libc::CPU_SETSIZE as usize).filter(|&c| unsafe { libc::CPU_ISSET(c, &set) });
    Some([cpus.next()?, cpus.next()?])
}

/// Pins the calling thread to `cpu`.
fn pin_to(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid (empty) set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU_SET writes within `set` (cpu < CPU_SETSIZE, from two_cpus).
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a live cpu_set_t of the size passed; 0 = this thread.
    let rc = unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set) };
    assert_eq!(
        rc,
        0,
        "pinning a thread to CPU {cpu}: {}",
        std::io::Error::last_os_error()
    );
}

/// What a run of [`hammer`] saw.
struct Hammered {
    rewrites: u32,
    budget: Duration,
    /// Runs that returned `XDP_PASS` (both shapes drop the frame).
    passed: u64,
    elapsed: Duration,
    /// Packets per reason, summed over CPUs, during the run.
    by_reason: Vec<u64>,
    /// Packets per CPU (of the two used), all reasons.
    per_cpu: [u64; 2],
}

/// Sends `frame` from two threads pinned to two CPUs while this thread
/// sets the rule for `target` alternately to `shapes[0]` and `shapes[1]`
/// (with their only-from sets) through `rules::set`, until [`REWRITES`]
/// rewrites or the [`budget`].
fn hammer(
    test: &ProgTest,
    cpus: [usize; 2],
    target: &str,
    frame: &[u8],
    shapes: &[(RateRule, LimitSpec); 2],
) -> Hammered {
    let _alone = HAMMER.lock().unwrap_or_else(PoisonError::into_inner);
    let target: Target = target.parse().expect("target");
    let before: Vec<Vec<u64>> = (0..reason::COUNT)
        .map(|r| test.reason_packets_per_cpu(r))
        .collect();
    let stop = AtomicBool::new(false);
    let budget = budget();
    let start = Instant::now();
    let (rewrites, passed) = std::thread::scope(|scope| {
        let senders: Vec<_> = cpus
            .map(|cpu| {
                let stop = &stop;
                scope.spawn(move || {
                    pin_to(cpu);
                    // One packet a call: with `repeat` > 1 the kernel swaps
                    // the XDP dispatcher around the run, two grace periods a call.
                    let mut passed = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        if test.run(frame) == XDP_PASS_ACTION {
                            passed += 1;
                        }
                    }
                    passed
                })
            })
            .into();
        let filter = test.filter();
        let mut rewrites = 0;
        while rewrites < REWRITES && start.elapsed() < budget {
            let (rule, spec) = &shapes[(rewrites % 2) as usize];
            rules::set(&filter, &target, *rule, spec)
                .unwrap_or_else(|e| panic!("rewrite {rewrites} of {target}: {e:#}"));
            rewrites += 1;
        }
        stop.store(true, Ordering::Relaxed);
        let passed: u64 = senders
            .into_iter()
            .map(|s| s.join().expect("a sending thread panicked"))
            .sum();
        (rewrites, passed)
    });
    let elapsed = start.elapsed();
    let mut by_reason = vec![0; reason::COUNT as usize];
    let mut per_cpu = [0; 2];
    for r in 0..reason::COUNT {
        let after = test.reason_packets_per_cpu(r);
        let old = &before[r as usize];
        by_reason[r as usize] = after.iter().zip(old).map(|(a, b)| a - b).sum();
        for (i, &cpu) in cpus.iter().enumerate() {
            per_cpu[i] += after[cpu] - old[cpu];
        }
    }
    Hammered {
        rewrites,
        budget,
        passed,
        elapsed,
        by_reason,
        per_cpu,
    }
}

/// Checks a run: enough rewrites, packets on both CPUs, every packet
/// counted under one of `allowed` (each seen), nothing else.
fn check(what: &str, run: &Hammered, allowed: [u32; 2]) {
    let packets: u64 = run.by_reason.iter().sum();
    println!(
        "{what}: {} rewrites in {:?} ({:?} each), {packets} packets ({} and {} on the two CPUs), {}",
        run.rewrites,
        run.elapsed,
        run.elapsed / run.rewrites.max(1),
        run.per_cpu[0],
        run.per_cpu[1],
        describe(&run.by_reason)
    );
    let least = MIN_REWRITES_PER_SEC * u32::try_from(run.budget.as_secs()).unwrap_or(u32::MAX);
    assert!(
        run.rewrites >= least.min(REWRITES),
        "{what}: only {} rewrites in {:?}",
        run.rewrites,
        run.elapsed
    );
    assert!(
        run.per_cpu.iter().all(|&n| n > 0),
        "{what}: packets on each CPU: {:?}",
        run.per_cpu
    );
    for r in allowed {
        assert!(
            run.by_reason[r as usize] > 0,
            "{what}: no packet got {} (the rewrites did not show): {}",
            reason::NAMES[r as usize],
            describe(&run.by_reason)
        );
    }
    assert_eq!(run.passed, 0, "{what}: XDP_PASS from a torn rule");
    let others: u64 = (0..reason::COUNT)
        .filter(|r| !allowed.contains(r))
        .map(|r| run.by_reason[r as usize])
        .sum();
    assert_eq!(
        others,
        0,
        "{what}: {others} packets got a verdict neither shape gives (a torn rule): {}",
        describe(&run.by_reason)
    );
}

fn describe(by_reason: &[u64]) -> String {
    by_reason
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(r, n)| format!("{}: {n}", reason::NAMES[r]))
        .collect::<Vec<_>>()
        .join(", ")
}

fn rule(target: Target, spec: &LimitSpec) -> RateRule {
    spec.to_rule(&target).expect("a valid rule")
}

/// Shape A refuses every packet of the source (a rate limit whose bucket is
/// used up: RATELIMIT); shape B drops the port (`PORT_DENIED`). The fields a
/// torn copy mixes give a third verdict: A's action with B's zero
/// intervals is a limit without a rate, PASS.
#[test]
fn a_rule_rewritten_under_traffic_never_tears() {
    if skip_unless_root("a_rule_rewritten_under_traffic_never_tears") {
        return;
    }
    let Some(cpus) = two_cpus() else {
        eprintln!("skipped: a_rule_rewritten_under_traffic_never_tears needs two CPUs");
        return;
    };
    let test = ProgTest::new();
    let name = "udp/7200";
    let target: Target = name.parse().expect("target");
    let limit = LimitSpec {
        rate: Some(1),
        burst: Some(1),
        ..Default::default()
    };
    let mut refuse = rule(target, &limit);
    refuse.packet_interval = SLOW;
    refuse.packet_tolerance = 0;
    let drop = LimitSpec {
        drop: true,
        ..Default::default()
    };
    let deny = rule(target, &drop);
    let frame = udp4("198.18.80.1", 7200);

    // The first packet passes and uses up the bucket, which (keyed by the
    // rule's id) outlives every rewrite.
    rules::set(&test.filter(), &target, refuse, &limit).expect("setting the rule");
    let id = test.rule_id(name).expect("the rule's id");
    assert_eq!(test.run_counted(&frame).reason(frame.len()), Ok(PASS));
    assert_eq!(test.run_counted(&frame).reason(frame.len()), Ok(RATELIMIT));

    let run = hammer(&test, cpus, name, &frame, &[(deny, drop), (refuse, limit)]);
    check("rate limit <-> drop", &run, [RATELIMIT, PORT_DENIED]);
    // The rule's counters survived every rewrite: one pass, then drops only.
    let counters = test.rule_counters(id);
    assert_eq!(counters.passed.packets, 1, "{counters:?}");
    assert_eq!(
        counters.dropped.packets,
        1 + run.by_reason.iter().sum::<u64>(),
        "{counters:?}"
    );
}

/// Only-from sets switch with their rule. Shape A lets only the source in
/// and refuses it by rate (RATELIMIT); shape B lets only another network in,
/// without a rate (`PORT_DENIED` for the source). B's rule with A's set, or
/// with both sets, would let the source through: PASS.
#[test]
fn only_from_sets_switch_with_their_rule() {
    if skip_unless_root("only_from_sets_switch_with_their_rule") {
        return;
    }
    let Some(cpus) = two_cpus() else {
        eprintln!("skipped: only_from_sets_switch_with_their_rule needs two CPUs");
        return;
    };
    let test = ProgTest::new();
    let name = "udp/7201";
    let target: Target = name.parse().expect("target");
    let src = "198.18.81.1";
    let mine = LimitSpec {
        rate: Some(1),
        burst: Some(1),
        only_from: vec![format!("{src}/32").parse().expect("cidr")],
        ..Default::default()
    };
    let mut refuse = rule(target, &mine);
    refuse.packet_interval = SLOW;
    refuse.packet_tolerance = 0;
    let theirs = LimitSpec {
        only_from: vec!["198.18.82.0/24".parse().expect("cidr")],
        ..Default::default()
    };
    let others_only = rule(target, &theirs);
    let frame = udp4(src, 7201);

    rules::set(&test.filter(), &target, refuse, &mine).expect("setting the rule");
    assert_eq!(test.run_counted(&frame).reason(frame.len()), Ok(PASS));
    assert_eq!(test.run_counted(&frame).reason(frame.len()), Ok(RATELIMIT));

    let run = hammer(
        &test,
        cpus,
        name,
        &frame,
        &[(others_only, theirs.clone()), (refuse, mine.clone())],
    );
    check("only-from mine <-> theirs", &run, [RATELIMIT, PORT_DENIED]);
    // Afterwards exactly the last shape's set is left.
    let listed = rules::list(&test.reader()).expect("listing rules");
    let listed = listed
        .iter()
        .find(|r| r.target == name)
        .expect("the rule is listed");
    let last = if run.rewrites.is_multiple_of(2) {
        &mine
    } else {
        &theirs
    };
    let expected: Vec<String> = last.only_from.iter().map(ToString::to_string).collect();
    assert_eq!(listed.only_from, expected);
}

/// `limit set` on an existing rule moves it to its other slot under the
/// same id: the source's bucket and the rule's counters carry over.
/// `limit remove` then empties both slots and forgets bucket and counters.
#[test]
fn a_changed_rule_keeps_its_id_buckets_and_counters() {
    if skip_unless_root("a_changed_rule_keeps_its_id_buckets_and_counters") {
        return;
    }
    let test = ProgTest::new();
    let name = "udp/7202";
    let src = "198.18.83.1";
    let frame = udp4(src, 7202);
    let burst = |n| LimitSpec {
        rate: Some(1),
        burst: Some(n),
        ..Default::default()
    };
    let id = test.limit(name, &burst(2));
    let first = test.live_slot(id);
    freeze(&test, id, 2);
    run_table(
        &test,
        &[
            Case::new("burst 1 of 2", frame.clone(), PASS),
            Case::new("burst 2 of 2", frame.clone(), PASS),
            Case::new("over", frame.clone(), RATELIMIT),
        ],
    );

    assert_eq!(test.limit(name, &burst(3)), id, "same id after a change");
    assert_eq!(test.live_slot(id), other_slot(first), "the other slot");
    freeze(&test, id, 3);
    run_table(
        &test,
        &[
            Case::new(
                "burst 3 of 3: two used before the change",
                frame.clone(),
                PASS,
            ),
            Case::new("over", frame.clone(), RATELIMIT),
        ],
    );
    let counters = test.rule_counters(id);
    assert_eq!(
        (counters.passed.packets, counters.dropped.packets),
        (3, 2),
        "counters across the change"
    );
    let model = test.model();
    assert_eq!(
        model.rules[first as usize],
        RateRule::default(),
        "old slot cleared"
    );

    rules::remove(&test.filter(), &name.parse().expect("target")).expect("removing the rule");
    assert_eq!(test.rule_id(name), None);
    let model = test.model();
    for slot in [id, other_slot(id)] {
        assert_eq!(
            model.rules[slot as usize],
            RateRule::default(),
            "slot {slot}"
        );
    }
    assert_eq!(test.rule_counters(id), RuleCounter::default());
    assert!(
        model.buckets.keys().all(|(rule, _)| *rule != id),
        "buckets forgotten"
    );
    run_table(&test, &[Case::new("no rule", frame.clone(), PASS)]);
}

/// The default rule switches slots through `Config::default_rule_slot` on
/// every change and on removal; a fresh CONFIG names its first slot.
#[test]
fn the_default_rule_switches_through_config() {
    if skip_unless_root("the_default_rule_switches_through_config") {
        return;
    }
    let test = ProgTest::new();
    assert_eq!(test.model().default_rule_slot, DEFAULT_RULE);
    let frame = udp4("198.18.84.1", 7203);
    let limit = LimitSpec {
        rate: Some(1),
        burst: Some(1),
        ..Default::default()
    };
    assert_eq!(test.limit("default", &limit), DEFAULT_RULE);
    assert_eq!(test.model().default_rule_slot, other_slot(DEFAULT_RULE));
    freeze(&test, DEFAULT_RULE, 1);
    run_table(
        &test,
        &[
            Case::new("burst", frame.clone(), PASS),
            Case::new("over", frame.clone(), RATELIMIT),
        ],
    );
    test.limit(
        "default",
        &LimitSpec {
            rate: Some(1),
            burst: Some(2),
            ..Default::default()
        },
    );
    let model = test.model();
    assert_eq!(model.default_rule_slot, DEFAULT_RULE);
    assert_eq!(
        model.rules[other_slot(DEFAULT_RULE) as usize],
        RateRule::default()
    );
    freeze(&test, DEFAULT_RULE, 2);
    run_table(
        &test,
        &[
            Case::new("burst 2 of 2, the bucket carried over", frame.clone(), PASS),
            Case::new("over", frame.clone(), RATELIMIT),
        ],
    );
    rules::remove(&test.filter(), &Target::Default).expect("removing the default rule");
    let model = test.model();
    assert_eq!(model.default_rule_slot, other_slot(DEFAULT_RULE));
    assert!(
        model.rules.iter().all(|r| r.action == 0),
        "every slot empty"
    );
    run_table(&test, &[Case::new("no default rule", frame, PASS)]);
}
