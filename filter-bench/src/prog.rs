//! Parts 1 and 2: the per-packet cost of the XDP program through
//! `BPF_PROG_TEST_RUN`, against the bare floor and Debian's xdp-filter, and
//! how the cost moves with the size of the block lists and of the tracking
//! table. Every program runs through the same mechanism
//! (`bpftool prog run`), interleaved round by round.

use std::{
    fmt::Write as _,
    fs,
    net::{Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    time::Instant,
};

use anyhow::{Context as _, Result};
use filter_common::{
    Bucket, BucketKey, DEFAULT_RULE, SUMMARY_BITS,
    xdp_action::{ABORTED, DROP, PASS},
};
use filter_ctl::maps::{Filter, buckets::Buckets, loader::Capacities, summary::SummaryUse};
use filter_devtools::check_interrupted;
use filter_tests::{flood::XdpProgram, netns::Lab};

use crate::{
    charts::{Chart, Kind as ChartKind, Series},
    common::{
        Env, LoadedFilter, ProgramSize, Summary, XdpFilter, action_name, bpftool_run, program_size,
        ratios, show,
    },
    frames::{block_list, ipv4_udp, ipv6_udp},
    profile::profile_command,
    report::{Section, Target},
};

/// A rate no test run reaches: the default limit lets everything through,
/// but every allowed packet still pays for its bucket.
const HUGE: &str = "1000000000";
const ALLOWED_PORT: u16 = 9;
const LIMITED_PORT: u16 = 7000;

fn v4(text: &str) -> Ipv4Addr {
    text.parse().expect("IPv4 literal")
}

fn v6(text: &str) -> Ipv6Addr {
    text.parse().expect("IPv6 literal")
}

/// The programs of part 1, in the order of `names`, `ids` and `Kind::expect`.
const OURS: usize = 0;
const OURS_PRECISE: usize = 1;
const XDP_FILTER: usize = 2;
const BARE: usize = 3;
const PROGRAMS: usize = 4;

/// One kind of packet of part 1 and the verdict each program must return.
struct Kind {
    name: &'static str,
    frame: Vec<u8>,
    /// Expected action: ours, ours with the precise clock (the same as ours:
    /// the clock changes no verdict of part 1), xdp-filter (its own
    /// semantics), bare `XDP_PASS`.
    expect: [u32; PROGRAMS],
    /// Whether the stricter target (0.8x xdp-filter) applies.
    strict_target: bool,
}

fn kinds() -> Vec<Kind> {
    let allowed = v4("198.18.2.1");
    let dst = v4("198.18.3.1");
    let mut truncated = ipv4_udp(allowed, dst, ALLOWED_PORT, &[], None, 0);
    truncated.truncate(14 + 16);
    let mut bad_ihl = ipv4_udp(allowed, dst, ALLOWED_PORT, &[], None, 0);
    bad_ihl[14] = 0x44;
    // `[ours, xdp-filter, bare]`: ours with the precise clock expects what ours does.
    let kind = |name, frame, [ours, xdpf, bare]: [u32; 3], strict_target| Kind {
        name,
        frame,
        expect: [ours, ours, xdpf, bare],
        strict_target,
    };
    vec![
        kind(
            "IPv4 UDP, allowed (default limit)",
            ipv4_udp(allowed, dst, ALLOWED_PORT, &[], None, 0),
            [PASS, PASS, PASS],
            false,
        ),
        kind(
            "IPv4 from a blocked /24",
            ipv4_udp(v4("198.18.1.1"), dst, ALLOWED_PORT, &[], None, 0),
            [DROP, DROP, PASS],
            true,
        ),
        kind(
            "IPv4 from a blocked host",
            ipv4_udp(v4("198.18.5.5"), dst, ALLOWED_PORT, &[], None, 0),
            [DROP, DROP, PASS],
            true,
        ),
        kind(
            "IPv4 over a port limit",
            ipv4_udp(allowed, dst, LIMITED_PORT, &[], None, 0),
            [DROP, DROP, PASS],
            false,
        ),
        kind(
            "IPv4 with options (IHL 6)",
            ipv4_udp(allowed, dst, ALLOWED_PORT, &[1, 1, 1, 0], None, 0),
            [PASS, PASS, PASS],
            false,
        ),
        kind(
            "IPv6 UDP, allowed (default limit)",
            ipv6_udp(v6("2001:db8:2::1"), v6("2001:db8:3::1"), ALLOWED_PORT),
            [PASS, PASS, PASS],
            false,
        ),
        kind(
            "IPv6 from a blocked /48",
            ipv6_udp(v6("2001:db8:1::1"), v6("2001:db8:3::1"), ALLOWED_PORT),
            [DROP, DROP, PASS],
            true,
        ),
        kind(
            "IPv6 from a blocked host",
            ipv6_udp(v6("2001:db8:5::5"), v6("2001:db8:3::1"), ALLOWED_PORT),
            [DROP, DROP, PASS],
            true,
        ),
        kind(
            "802.1Q-tagged IPv4 UDP, allowed",
            ipv4_udp(allowed, dst, ALLOWED_PORT, &[], Some(100), 0),
            [PASS, PASS, PASS],
            false,
        ),
        kind(
            "IPv4 non-first fragment",
            ipv4_udp(allowed, dst, ALLOWED_PORT, &[], None, 185),
            [PASS, PASS, PASS],
            false,
        ),
        kind(
            "IPv4 truncated (30 bytes)",
            truncated,
            [DROP, ABORTED, PASS],
            true,
        ),
        kind("IPv4 malformed (IHL 4)", bad_ihl, [DROP, PASS, PASS], true),
    ]
}

/// Sets the rules every instance of ours shares: the measured blocked
/// prefixes, a default limit that never bites, and a port limit that always does.
fn configure(env: &Env, filter: &LoadedFilter, block: bool) -> Result<()> {
    if block {
        env.run(&mut env.ctl(
            &filter.pins,
            &[
                "block",
                "198.18.1.0/24",
                "2001:db8:1::/48",
                "198.18.5.5",
                "2001:db8:5::5",
            ],
        ))?;
    }
    env.run(&mut env.ctl(
        &filter.pins,
        &["limit", "set", "default", "--rate", HUGE, "--burst", HUGE],
    ))?;
    env.run(&mut env.ctl(
        &filter.pins,
        &[
            "limit",
            "set",
            &format!("udp/{LIMITED_PORT}"),
            "--rate",
            "1",
            "--burst",
            "1",
        ],
    ))?;
    Ok(())
}

fn write_frame(env: &Env, name: &str, frame: &[u8]) -> Result<PathBuf> {
    let path = env.work.join(format!("{name}.bin"));
    fs::write(&path, frame).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

fn repeat(env: &Env) -> u32 {
    if env.quick { 10_000 } else { 1_000_000 }
}

/// Part 1.
#[expect(
    clippy::too_many_lines,
    reason = "one linear procedure: set up, measure, report"
)]
pub fn per_packet(env: &Env) -> Result<Section> {
    println!("==> part 1: per-packet cost (BPF_PROG_TEST_RUN)");
    let ours = LoadedFilter::load("pp", &Capacities::default())?;
    configure(env, &ours, true)?;
    let precise = LoadedFilter::load("ppc", &Capacities::default())?;
    configure(env, &precise, true)?;
    env.run(&mut env.ctl(&precise.pins, &["limit", "clock", "precise"]))?;
    let bare = XdpProgram::returning(PASS)?;
    let lab = Lab::new("fbpp");
    let xdpf = XdpFilter::load(env, &lab.dst, &lab.dst_if, "skb")?;
    for args in [
        &["ip", "198.18.1.1", "-m", "src"][..],
        &["ip", "2001:db8:1::1", "-m", "src"],
        &["ip", "198.18.5.5", "-m", "src"],
        &["ip", "2001:db8:5::5", "-m", "src"],
        &["port", &LIMITED_PORT.to_string(), "-p", "udp", "-m", "dst"],
    ] {
        env.run(&mut xdpf.command(args))?;
    }
    let names: [&str; PROGRAMS] = ["ours", "ours, precise clock", "xdp-filter", "bare XDP_PASS"];
    let ids: [u32; PROGRAMS] = [ours.id, precise.id, xdpf.program_id(env)?, bare.id()?];
    let kinds = kinds();
    let files: Vec<PathBuf> = kinds
        .iter()
        .enumerate()
        .map(|(i, k)| write_frame(env, &format!("kind{i}"), &k.frame))
        .collect::<Result<_>>()?;
    let repeat = repeat(env);
    // ns[kind][program] per round.
    let mut ns = vec![std::array::from_fn::<Vec<f64>, PROGRAMS, _>(|_| Vec::new()); kinds.len()];
    let mut seen = vec![[None::<u32>; PROGRAMS]; kinds.len()];
    for round in 0..env.rounds {
        for (k, kind) in kinds.iter().enumerate() {
            for p in 0..PROGRAMS {
                // Rotate the order so that no program always runs first.
                let p = (p + round + k) % PROGRAMS;
                check_interrupted()?;
                let (action, time) = bpftool_run(env, ids[p], &files[k], repeat)?;
                if action != kind.expect[p] && seen[k][p] != Some(action) {
                    env.fail(format!(
                        "part 1: {} returned {} for \"{}\", expected {}",
                        names[p],
                        action_name(action),
                        kind.name,
                        action_name(kind.expect[p])
                    ));
                }
                seen[k][p] = Some(action);
                ns[k][p].push(time);
            }
        }
        println!("    round {}/{} done", round + 1, env.rounds);
    }

    let mut section = Section::new("1. Per-packet cost (BPF_PROG_TEST_RUN)");
    let _ = writeln!(
        section.text,
        "Each program runs each frame {repeat} times per measurement with \
         `bpftool prog run id N data_in FRAME repeat {repeat}` (the kernel's average ns per run; \
         the same mechanism for all four). {} rounds, interleaved: every round runs every \
         packet kind through every program, in rotating order. Cells: median (min–max) over \
         the rounds. Ratios and differences are medians of the per-round ratios and differences.\n",
        env.rounds
    );
    let _ = writeln!(
        section.text,
        "- **ours**: `filter-ctl`'s program at default capacities, rules `block 198.18.1.0/24 \
         2001:db8:1::/48 198.18.5.5 2001:db8:5::5` (two prefixes in the blocklist's tries, two \
         hosts in its host table), `limit set default --rate {HUGE} --burst {HUGE}` (every allowed \
         packet pays for its rate-limit bucket), `limit set udp/{LIMITED_PORT} --rate 1 --burst 1`; \
         the default clock (`limit clock auto`): both rules' bursts cover a tick, so their rate \
         limiter reads the tick clock (`jiffies`).\n\
         - **ours, precise clock**: a second instance of the same program with the same rules, \
         plus `limit clock precise` (the rate limiter reads `bpf_ktime_get_ns` for every rule): \
         what exact timing costs.\n\
         - **xdp-filter**: Debian's xdp-tools, `xdp-filter load IF -m {}`, `xdp-filter ip \
         198.18.1.1 -m src`, `xdp-filter ip 2001:db8:1::1 -m src` (also for 198.18.5.5 and \
         2001:db8:5::5), `xdp-filter port {LIMITED_PORT} \
         -p udp -m dst` (exact addresses and a closed port: its nearest equivalents).\n\
         - **bare**: `r0 = XDP_PASS; exit`, loaded with bpf(2): the floor of any XDP program.\n",
        xdpf.mode
    );
    section.text.push_str(
        "| packet | bytes | ours ns | ours precise ns | xdp-filter ns | bare ns | ours / xdp-filter | ours precise / xdp-filter | ours precise − ours ns | ours − bare ns | verdict ours / ours precise / xdp-filter |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    let difference =
        |a: &[f64], b: &[f64]| -> Vec<f64> { a.iter().zip(b).map(|(a, b)| a - b).collect() };
    let verdict = |k: usize, p: usize| seen[k][p].map_or("–", action_name);
    // (program, kind) pairs that miss their target.
    let mut missed = Vec::new();
    let mut precise_targets = Vec::new();
    for (k, kind) in kinds.iter().enumerate() {
        let row = &ns[k];
        let (o, c, x, b) = (&row[OURS], &row[OURS_PRECISE], &row[XDP_FILTER], &row[BARE]);
        let ratio = ratios(o, x);
        let precise_ratio = ratios(c, x);
        let _ = writeln!(
            section.text,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} / {} |",
            kind.name,
            kind.frame.len(),
            show(o, 0),
            show(c, 0),
            show(x, 0),
            show(b, 0),
            show(&ratio, 2),
            show(&precise_ratio, 2),
            show(&difference(c, o), 0),
            show(&difference(o, b), 0),
            verdict(k, OURS),
            verdict(k, OURS_PRECISE),
            verdict(k, XDP_FILTER),
        );
        let limit = if kind.strict_target { 0.8 } else { 1.0 };
        let what = format!("per packet, {}: ours ≤ {limit}× xdp-filter", kind.name);
        for (p, ratio) in [(OURS, &ratio), (OURS_PRECISE, &precise_ratio)] {
            let median = crate::common::Summary::of(ratio).map_or(f64::NAN, |s| s.median);
            if median > limit {
                missed.push((p, k));
            }
            let target = Target {
                what: if p == OURS {
                    what.clone()
                } else {
                    format!(
                        "per packet, {}, precise clock: ours ≤ {limit}× xdp-filter",
                        kind.name
                    )
                },
                holds: median <= limit,
                detail: format!("{median:.2}×"),
                precise_of: (p == OURS_PRECISE).then(|| what.clone()),
            };
            // The rows as shipped first, then those of the precise clock.
            if p == OURS {
                section.targets.push(target);
            } else {
                precise_targets.push(target);
            }
        }
    }
    section.targets.append(&mut precise_targets);
    section.text.push_str(
        "\nThe two instances of ours run the same program; only the clock their rate limiter \
         reads differs, so the packets that never reach the rate limiter (blocked, truncated, \
         malformed) should cost the same in both: a difference there is noise.\n",
    );
    section.text.push('\n');
    if !missed.is_empty() && !env.quick {
        section.text.push_str(
            "Where ours misses its target, a profile of ours on that packet (`perf record \
             -F 9973 -- bpftool prog run … repeat 10000000`; hottest symbols with their share of \
             the samples: the program, the helpers and map code it calls, and the test-run loop; \
             where the machine has no PMU, as VMs often do, perf samples with the `cpu-clock` \
             software event, so shares are approximate):\n\n",
        );
        for (p, k) in missed {
            let top = profile_run(env, ids[p], &files[k]);
            let _ = writeln!(section.text, "- {}: {}: {top}", names[p], kinds[k].name);
        }
        section.text.push('\n');
    }

    section.text.push_str(
        "Program size, deterministic (a regression shows here before noise lets it show in time):\n\n\
         | program | verified insns | xlated insns | xlated bytes | JIT bytes |\n\
         |---|---:|---:|---:|---:|\n",
    );
    for (name, id) in names.iter().zip(ids) {
        let size: ProgramSize = program_size(id)?;
        let opt = |v: Option<u32>| v.map_or_else(|| "–".to_string(), |v| v.to_string());
        let _ = writeln!(
            section.text,
            "| {name} | {} | {} | {} | {} |",
            opt(size.verified_insns),
            opt(size.xlated_bytes.map(|b| b / 8)),
            opt(size.xlated_bytes),
            size.jited_bytes
        );
    }
    section.text.push_str(
        "\nverified insns: instructions the verifier processed (`verified_insns` of \
         `bpf_prog_info`, all paths); xlated insns: xlated bytes / 8.\n",
    );
    Ok(section)
}

/// The entries part 2 blocks before each list: prefixes of two of the
/// host table's lengths and a host, of each family, and an IPv6 prefix of a
/// length only the tries hold (an IPv4 one, shorter than a /16, would
/// cover the lab's other measured sources).
const MEASURED_ENTRIES: [&str; 7] = [
    "198.18.1.0/24",
    "2001:db8:1::/48",
    "198.18.16.0/20",
    "2001:db8:7700::/56",
    "198.18.5.5",
    "2001:db8:5::5",
    "2001:db8:f000::/36",
];

/// Kinds of packet part 2 measures against list size.
const KINDS: usize = 9;

/// Part 2: cost against list size and tracking-table size.
pub fn scaling(env: &Env) -> Result<Section> {
    println!("==> part 2: cost against list and table size");
    let sizes: &[usize] = if env.quick {
        &[1, 1_000]
    } else {
        &[1, 1_000, 100_000, 1_000_000]
    };
    let live: &[usize] = if env.quick {
        &[1, 10_000]
    } else {
        &[1, 1_000_000]
    };

    let mut lists = Vec::new();
    let mut load_secs = Vec::new();
    let mut table_hosts = Vec::new();
    let mut summary_use = Vec::new();
    for &size in sizes {
        check_interrupted()?;
        let filter = LoadedFilter::load("sz", &Capacities::default())?;
        configure(env, &filter, false)?;
        let path = env.work.join(format!("list-{size}.txt"));
        fs::write(
            &path,
            block_list(size, 42, "198.18.1.0/24", "2001:db8:1::/48"),
        )?;
        // The measured entries first, so that each of the table's lengths
        // holds a slot of the host table whatever the seed; the list's own
        // entries fill the rest.
        env.run(&mut env.ctl(&filter.pins, &[&["block"][..], &MEASURED_ENTRIES].concat()))?;
        let start = Instant::now();
        env.run(&mut env.ctl(&filter.pins, &["block", "--file", &path.to_string_lossy()]))?;
        load_secs.push(start.elapsed().as_secs_f64());
        fs::remove_file(&path).ok();
        let loaded = Filter::open(&filter.pins)?;
        let config = loaded.config()?;
        table_hosts.push(config.block_hosts);
        summary_use.push(loaded.summary()?.in_use(config.summary_generation)?);
        lists.push(filter);
        println!("    list of {size} entries per family loaded");
    }
    let mut tables = Vec::new();
    for &count in live {
        check_interrupted()?;
        let filter = LoadedFilter::load("bk", &Capacities::default())?;
        configure(env, &filter, false)?;
        fill_buckets(&filter, count.saturating_sub(1))?;
        tables.push(filter);
        println!("    tracking table with {count} sources filled");
    }

    let list_kinds: [(&str, Vec<u8>, u32); KINDS] = [
        (
            "IPv4 listed /24",
            ipv4_udp(
                v4("198.18.1.1"),
                v4("198.18.3.1"),
                ALLOWED_PORT,
                &[],
                None,
                0,
            ),
            DROP,
        ),
        (
            "IPv4 not listed",
            ipv4_udp(
                v4("198.18.2.1"),
                v4("198.18.3.1"),
                ALLOWED_PORT,
                &[],
                None,
                0,
            ),
            PASS,
        ),
        (
            "IPv6 listed /48",
            ipv6_udp(v6("2001:db8:1::1"), v6("2001:db8:3::1"), ALLOWED_PORT),
            DROP,
        ),
        (
            "IPv6 not listed",
            ipv6_udp(v6("2001:db8:2::1"), v6("2001:db8:3::1"), ALLOWED_PORT),
            PASS,
        ),
        (
            "IPv4 listed host",
            ipv4_udp(
                v4("198.18.5.5"),
                v4("198.18.3.1"),
                ALLOWED_PORT,
                &[],
                None,
                0,
            ),
            DROP,
        ),
        (
            "IPv6 listed host",
            ipv6_udp(v6("2001:db8:5::5"), v6("2001:db8:3::1"), ALLOWED_PORT),
            DROP,
        ),
        (
            "IPv4 listed /20",
            ipv4_udp(
                v4("198.18.17.1"),
                v4("198.18.3.1"),
                ALLOWED_PORT,
                &[],
                None,
                0,
            ),
            DROP,
        ),
        (
            "IPv6 listed /56",
            ipv6_udp(v6("2001:db8:7700:1::1"), v6("2001:db8:3::1"), ALLOWED_PORT),
            DROP,
        ),
        (
            "IPv6 listed, /36 (trie)",
            ipv6_udp(v6("2001:db8:f123::1"), v6("2001:db8:3::1"), ALLOWED_PORT),
            DROP,
        ),
    ];
    let files: Vec<PathBuf> = list_kinds
        .iter()
        .enumerate()
        .map(|(i, (_, frame, _))| write_frame(env, &format!("size{i}"), frame))
        .collect::<Result<_>>()?;
    let repeat = repeat(env);
    // Every (instance, frame) pair, measured once per round.
    let mut jobs: Vec<(u32, usize, String)> = Vec::new();
    for (i, filter) in lists.iter().enumerate() {
        for k in 0..KINDS {
            jobs.push((filter.id, k, format!("list {}", sizes[i])));
        }
    }
    for (i, filter) in tables.iter().enumerate() {
        for k in [1, 3] {
            jobs.push((filter.id, k, format!("table {}", live[i])));
        }
    }
    let mut ns: Vec<Vec<f64>> = vec![Vec::new(); jobs.len()];
    for round in 0..env.rounds {
        for j in 0..jobs.len() {
            let j = (j + round * 3) % jobs.len();
            let (id, k, ref label) = jobs[j];
            let (action, time) = bpftool_run(env, id, &files[k], repeat)?;
            if action != list_kinds[k].2 {
                env.fail(format!(
                    "part 2: {label}, {}: returned {}, expected {}",
                    list_kinds[k].0,
                    action_name(action),
                    action_name(list_kinds[k].2)
                ));
            }
            ns[j].push(time);
        }
        println!("    round {}/{} done", round + 1, env.rounds);
    }
    let live_counts: Vec<usize> = tables.iter().map(count_buckets).collect::<Result<_>>()?;

    let mut section = Section::new("2. Cost against list and table size");
    let _ = writeln!(
        section.text,
        "One instance of ours per size, all loaded at once and measured interleaved, \
         {} rounds, repeat {repeat} (same method as part 1). Block lists hold the given number \
         of entries **per address family** (IPv4 trie and IPv6 trie), generated with mixed \
         prefix lengths (IPv4: 60% /32, 25% /24, 15% /8–/31; IPv6: 50% /128, 20% /64, 20% /48, \
         10% /32–/127, in 2000::/3), plus the measured 198.18.1.0/24 and 2001:db8:1::/48; \
         loaded with `filter-ctl block --file` (the load time), after the measured entries \
         {} (`filter-ctl block`, first, so that those of the table's lengths each hold a \
         slot of the host table). Hosts (/32, /128), IPv4 /16 to /31 and IPv6 /40 to /64 go to \
         the host table (`BLOCK_HOSTS`, 1,048,576 slots at the default capacity, 4 to a set) \
         while their set has room, else to the trie, like every other length; the third column \
         says how many entries the table holds. A listed source probes its host, then each \
         length the table holds in its region (its IPv4 /16, its IPv6 /48's hash): the /24, \
         /20, /48 and /56 rows. The listed /36 is of a length only the tries hold (IPv6 shorter \
         than /40; IPv4 shorter than /16 too, which part 2 cannot measure without covering its \
         other IPv4 sources). A source looks in the trie only where the blocklist summary (`BLOCK_SUMMARY`: \
         one bit per IPv4 /24, one per IPv6 /40 hashed into 16,777,216 bits) marks it; the \
         fourth column says how much of each bitmap the list marks, that is the share of \
         IPv4 /24s (and, roughly, of IPv6 /40s) whose sources still look in the trie. The \
         generated IPv4 lists hold thousands of random /8–/15s at 100,000 entries and more, \
         which cover nearly every /24 outside 198.18.0.0/15: the measured unlisted IPv4 source \
         stands for an unlisted source of a list that leaves its /24 alone. The measured \
         unlisted sources share no /24 or /40 with a listed trie prefix (a source that does \
         looks in the trie, and costs what the /36 row costs); the unlisted IPv6 \
         source's /40 is still marked if its hash meets a marked bit (the fourth column's \
         IPv6 share is the chance, per run: the seed is random per map creation). Every \
         instance has the default limit of part 1, so unlisted packets pass through the \
         tracking table.\n",
        env.rounds,
        MEASURED_ENTRIES.join(" ")
    );
    section.text.push_str(
        "| block list entries per family | load time s | entries in the host table | summary marked, IPv4 / IPv6 | IPv4 listed /24 ns | IPv4 not listed ns | IPv6 listed /48 ns | IPv6 not listed ns | IPv4 listed host ns | IPv6 listed host ns | IPv4 listed /20 ns | IPv6 listed /56 ns | IPv6 listed /36 (trie) ns |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    // Shares of each family's bitmap, "all" for a wide word.
    let marked = |used: &SummaryUse| {
        let share = |bits: u64, wide: bool| {
            if wide {
                "all".to_owned()
            } else {
                format!(
                    "{:.1}%",
                    f64::from(u32::try_from(bits).unwrap_or(u32::MAX)) * 100.0
                        / f64::from(SUMMARY_BITS)
                )
            }
        };
        format!(
            "{} / {}",
            share(used.bits_v4, used.wide_v4),
            share(used.bits_v6, used.wide_v6)
        )
    };
    for (i, size) in sizes.iter().enumerate() {
        let cell = |k: usize| show(&ns[i * KINDS + k], 0);
        let _ = writeln!(
            section.text,
            "| {size} | {:.2} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            load_secs[i],
            table_hosts[i],
            marked(&summary_use[i]),
            cell(0),
            cell(1),
            cell(2),
            cell(3),
            cell(4),
            cell(5),
            cell(6),
            cell(7),
            cell(8)
        );
    }
    let chart = list_size_chart(sizes, &list_kinds.each_ref().map(|(name, _, _)| *name), &ns);
    let _ = writeln!(section.text, "\n{}", chart.link());
    section.charts.push(chart);
    let last = sizes.len() - 1;
    section
        .text
        .push_str("\nLargest list against one entry (median of per-round ratios):\n\n");
    for (k, (name, _, _)) in list_kinds.iter().enumerate() {
        let ratio = ratios(&ns[last * KINDS + k], &ns[k]);
        let median = crate::common::Summary::of(&ratio).map_or(f64::NAN, |s| s.median);
        let _ = writeln!(
            section.text,
            "- {name}: {} entries / 1 entry = {}",
            sizes[last],
            show(&ratio, 2)
        );
        // Issue 10 asked for 10%, issue 18 for at most 1.25×: both are shown.
        for (limit, text) in [(1.10, "within 10% of"), (1.25, "at most 1.25× of")] {
            section.targets.push(Target {
                what: format!(
                    "flat in list size, {name}: cost at {} {text} cost at 1",
                    sizes[last]
                ),
                holds: median <= limit,
                detail: format!("{median:.2}×"),
                precise_of: None,
            });
        }
        if median > 1.10 && !env.quick {
            let id = lists[last].id;
            let top = profile_run(env, id, &files[k]);
            let _ = writeln!(
                section.text,
                "  - profile at {} entries: {top}",
                sizes[last]
            );
        }
    }
    let base = sizes.len() * KINDS;
    section.text.push_str(
        "\n| live sources in the tracking table | entries present | IPv4 via default limit ns | IPv6 via default limit ns |\n\
         |---:|---:|---:|---:|\n",
    );
    for (i, count) in live.iter().enumerate() {
        let _ = writeln!(
            section.text,
            "| {count} | {} | {} | {} |",
            live_counts[i],
            show(&ns[base + i * 2], 0),
            show(&ns[base + i * 2 + 1], 0)
        );
    }
    let last = live.len() - 1;
    section.text.push('\n');
    for (k, name) in ["IPv4", "IPv6"].iter().enumerate() {
        let ratio = ratios(&ns[base + last * 2 + k], &ns[base + k]);
        let median = crate::common::Summary::of(&ratio).map_or(f64::NAN, |s| s.median);
        let _ = writeln!(
            section.text,
            "- {name}: {} sources / 1 source = {}",
            live[last],
            show(&ratio, 2)
        );
        section.targets.push(Target {
            what: format!(
                "flat in table size, {name}: cost with {} sources within 10% of 1",
                live[last]
            ),
            holds: median <= 1.10,
            detail: format!("{median:.2}×"),
            precise_of: None,
        });
        if median > 1.10 && !env.quick {
            let id = tables[last].id;
            let frame = &files[[1, 3][k]];
            let top = profile_run(env, id, frame);
            let _ = writeln!(
                section.text,
                "  - profile with {} sources: {top}",
                live[last]
            );
        }
    }
    section.text.push_str(
        "\nThe tracking table (`BUCKETS`, a 2-way set-associative array at its default \
         capacity) was filled by writing (default rule, source /64 in 2001:db8::/32) keys \
         directly into their sets (sources whose set was full overwrote one: hence fewer \
         entries present than sources); the measured \
         sources' own buckets are created by their first packet. A test run repeats one frame, \
         so the lookup path stays in the CPU caches: these numbers show the algorithmic cost \
         (how many lookups, how deep), not the cache misses of a flood from many sources \
         (part 3 has those).\n",
    );
    Ok(section)
}

/// Part 2's first table as a chart: ns per packet against list size, one
/// line per kind of packet (`ns[size * KINDS + kind]` holds the rounds).
fn list_size_chart(sizes: &[usize], kinds: &[&str; KINDS], ns: &[Vec<f64>]) -> Chart {
    let series = kinds
        .iter()
        .enumerate()
        .map(|(k, name)| Series {
            label: (*name).to_string(),
            points: sizes
                .iter()
                .enumerate()
                .filter_map(|(i, &size)| {
                    #[expect(clippy::cast_precision_loss, reason = "list sizes below 2^52")]
                    let x = size as f64;
                    Summary::of(&ns[i * KINDS + k]).map(|s| (x, s))
                })
                .collect(),
        })
        .collect();
    Chart {
        file: "list-size.svg",
        title: "Part 2: ns per packet against block-list size".into(),
        kind: ChartKind::Lines {
            x_desc: "block-list entries per family (log scale)".into(),
            y_desc: "ns per packet (median; whiskers: min–max)".into(),
            series,
        },
    }
}

fn buckets(filter: &LoadedFilter) -> Result<Buckets> {
    Buckets::open(&Filter::open(&filter.pins)?)
}

/// Used slots of the tracking table (sources that share a full set
/// overwrote one another while it was filled).
fn count_buckets(filter: &LoadedFilter) -> Result<usize> {
    Ok(buckets(filter)?.used()?.len())
}

/// A profile of `bpftool prog run id ID data_in FRAME repeat 10000000`.
fn profile_run(env: &Env, id: u32, frame: &std::path::Path) -> String {
    let id = id.to_string();
    let frame = frame.to_string_lossy();
    profile_command(
        env,
        std::process::Command::new("bpftool").args([
            "prog", "run", "id", &id, "data_in", &frame, "repeat", "10000000",
        ]),
    )
}

/// Writes `count` distinct buckets for the default rule into their sets
/// (a set already full keeps one of them: see `Buckets::fill`).
pub fn fill_buckets(filter: &LoadedFilter, count: usize) -> Result<()> {
    let mut entries = Vec::with_capacity(count);
    for i in 0..count {
        let n = u32::try_from(i).expect("fewer than 2^32 sources");
        let mut source = [0u8; 16];
        source[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        source[4..8].copy_from_slice(&(n + 0x0100_0000).to_be_bytes());
        let key = BucketKey {
            rule: DEFAULT_RULE,
            source,
        };
        entries.push((key, Bucket::default()));
        if i % 65_536 == 0 {
            check_interrupted()?;
        }
    }
    buckets(filter)?.fill(&entries)?;
    Ok(())
}
