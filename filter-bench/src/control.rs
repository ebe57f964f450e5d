//! Part 4: the control plane. Loading a large list through the CLI, the time
//! from an edit to its first dropped packet, and the memory of every map.

use std::{
    collections::HashSet,
    fmt::Write as _,
    fs,
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    os::unix::fs::DirBuilderExt as _,
    process::Command,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, ensure};
use filter_ctl::{
    maps::loader::Capacities,
    maps::{Filter, ListKind},
};
use filter_devtools::check_interrupted;
use filter_tests::netns::{Lab, in_netns};

use crate::{
    common::{Controller, Env, LoadedFilter, Summary, XdpFilter, show, state_dir},
    frames::block_list,
    profile::profile_command,
    report::{Section, Target},
};

const PORT: u16 = 5000;
/// List entries for the small scrape measurement.
const SCRAPE_SMALL: usize = 10;
/// Scrapes timed per list size.
const SCRAPE_TIMES: usize = 20;

/// Times `SCRAPE_TIMES` scrapes of `filter` (ms each); each must succeed and
/// hold the packet counters.
fn scrape_times(env: &Env, filter: &LoadedFilter) -> Result<Vec<f64>> {
    let mut out = Vec::new();
    for _ in 0..SCRAPE_TIMES {
        let start = Instant::now();
        let text = filter_ctl::control::metrics::scrape(&filter.pins, &state_dir(&filter.pins))?;
        out.push(start.elapsed().as_secs_f64() * 1000.0);
        if !text.contains("# TYPE xdp_filter_packets_total counter") {
            env.fail(format!(
                "part 4: a scrape lacks the packet counters:\n{text}"
            ));
        }
    }
    Ok(out)
}

/// Edits of one entry timed per command.
const EDIT_TIMES: usize = 5;
/// `list --json` runs timed.
const LIST_TIMES: usize = 3;

/// Whole-command times (ms) of one-entry edits with the list loaded.
#[derive(Default)]
struct EditTimes {
    block: Vec<f64>,
    unblock: Vec<f64>,
    allow: Vec<f64>,
    disallow: Vec<f64>,
}

/// Times `block`/`unblock` and `allow`/`disallow` of one address,
/// `EDIT_TIMES` pairs each, with `filter`'s list loaded; each edit must
/// show in the maps.
fn edit_times(env: &Env, filter: &LoadedFilter) -> Result<EditTimes> {
    let mut out = EditTimes::default();
    let addr = "198.18.9.9";
    let cidr: filter_ctl::spec::cidr::Cidr = addr.parse().map_err(|e| anyhow!("{e}"))?;
    let maps = Filter::open(&filter.pins)?;
    let listed = |tries| -> Result<bool> {
        Ok(maps
            .lookup_entries(tries, &[cidr])?
            .first()
            .copied()
            .flatten()
            .is_some())
    };
    for _ in 0..EDIT_TIMES {
        check_interrupted()?;
        for (add, remove, tries, add_ms, remove_ms) in [
            (
                "block",
                "unblock",
                filter_ctl::maps::Tries::Block,
                &mut out.block,
                &mut out.unblock,
            ),
            (
                "allow",
                "disallow",
                filter_ctl::maps::Tries::Allow,
                &mut out.allow,
                &mut out.disallow,
            ),
        ] {
            add_ms.push(timed(env, &mut env.ctl(&filter.pins, &[add, addr]))? * 1000.0);
            if !listed(tries)? {
                env.fail(format!("part 4: `{add} {addr}` left no entry"));
            }
            remove_ms.push(timed(env, &mut env.ctl(&filter.pins, &[remove, addr]))? * 1000.0);
            if listed(tries)? {
                env.fail(format!("part 4: `{remove} {addr}` left the entry"));
            }
        }
    }
    Ok(out)
}

/// Times `list --json` (s) with `filter`'s list of `entries` loaded; the
/// document must parse and hold every entry.
fn list_times(env: &Env, filter: &LoadedFilter, entries: usize) -> Result<Vec<f64>> {
    let mut out = Vec::new();
    for _ in 0..LIST_TIMES {
        check_interrupted()?;
        let start = Instant::now();
        let text = env.run(&mut env.ctl(&filter.pins, &["list", "--json"]))?;
        out.push(start.elapsed().as_secs_f64());
        let doc: serde_json::Value =
            serde_json::from_str(&text).context("parsing `list --json`")?;
        let listed = doc["blocklist"].as_array().map_or(0, Vec::len);
        if listed != entries {
            env.fail(format!(
                "part 4: `list --json` shows {listed} blocklist entries, {entries} loaded"
            ));
        }
    }
    Ok(out)
}

fn edits_text(
    edits: &EditTimes,
    listing: &[f64],
    entries: usize,
    quick: bool,
    section: &mut Section,
) {
    let median = |v: &[f64]| Summary::of(v).map_or(f64::NAN, |s| s.median);
    let _ = writeln!(
        section.text,
        "**Edits and listing with the list loaded.** With the {entries} entries above in the \
         blocklist, whole commands (start, lock, look up, write, record in the state, exit), \
         {EDIT_TIMES} times each, ms: `block ADDR` **{}**, `unblock ADDR` **{}**, `allow ADDR` \
         **{}**, `disallow ADDR` **{}**. `list --json` (every entry, parsed and counted \
         afterwards), {LIST_TIMES} times, s: **{}**.\n",
        show(&edits.block, 1),
        show(&edits.unblock, 1),
        show(&edits.allow, 1),
        show(&edits.disallow, 1),
        show(listing, 2),
    );
    if quick {
        return;
    }
    let slowest = [&edits.block, &edits.unblock, &edits.allow, &edits.disallow]
        .iter()
        .map(|v| median(v))
        .fold(f64::NAN, f64::max);
    section.targets.push(Target {
        what: format!("block, unblock, allow, disallow of one entry under 20 ms with {entries} entries (slowest median)"),
        holds: slowest < 20.0,
        detail: format!("{slowest:.1} ms"),
        precise_of: None,
    });
    section.targets.push(Target {
        what: format!("`list --json` under 1 s with {entries} entries"),
        holds: median(listing) < 1.0,
        detail: format!("{:.2} s", median(listing)),
        precise_of: None,
    });
}

/// Part 4.
pub fn control(env: &Env) -> Result<Section> {
    println!("==> part 4: control plane");
    let entries: usize = if env.quick { 10_000 } else { 1_000_000 };
    let xdpf_addresses: usize = if env.quick { 5 } else { 100 };
    let list = env.work.join("list-control.txt");
    fs::write(
        &list,
        block_list(entries / 2, 4242, "198.18.1.0/24", "2001:db8:1::/48"),
    )?;
    let list_arg = list.to_string_lossy().into_owned();

    // xdp-filter's CLI, for scale: one process per address.
    let lab = Lab::new("fbxl");
    let xdpf = XdpFilter::load(env, &lab.dst, &lab.dst_if, "skb")?;
    let xdpf_max = xdpf.ipv4_capacity(env)?;

    let mut load_secs = Vec::new();
    let mut xdpf_per_sec = Vec::new();
    let mut memory: Vec<MapMemory> = Vec::new();
    let mut loaded_entries = 0;
    let small_list = env.work.join("list-scrape.txt");
    fs::write(
        &small_list,
        block_list(SCRAPE_SMALL / 2, 77, "198.18.2.0/24", "2001:db8:2::/48"),
    )?;
    let mut scrape_small = Vec::new();
    let mut scrape_large = Vec::new();
    let mut edits = EditTimes::default();
    let mut listing = Vec::new();
    for round in 0..env.rounds {
        check_interrupted()?;
        let filter = LoadedFilter::load("cp", &Capacities::default())?;
        if round == 0 {
            memory = map_memory(env, &filter)?;
        }
        if round == 0 {
            env.run(&mut env.ctl(
                &filter.pins,
                &["block", "--file", &small_list.to_string_lossy()],
            ))?;
            scrape_small = scrape_times(env, &filter)?;
            env.run(&mut env.ctl(
                &filter.pins,
                &["unblock", "--file", &small_list.to_string_lossy()],
            ))?;
        }
        let start = Instant::now();
        env.run(&mut env.ctl(&filter.pins, &["block", "--file", &list_arg]))?;
        load_secs.push(start.elapsed().as_secs_f64());
        if round == 0 {
            scrape_large = scrape_times(env, &filter)?;
            edits = edit_times(env, &filter)?;
            listing = list_times(env, &filter, entries)?;
        }
        if round == 0 {
            let loaded = map_memory(env, &filter)?;
            for (m, l) in memory.iter_mut().zip(loaded) {
                m.loaded = Some(l.empty);
            }
            loaded_entries = Filter::open(&filter.pins)?
                .list_entries_raw(ListKind::Block)?
                .len();
            if loaded_entries != entries {
                env.fail(format!(
                    "part 4: the blocklist holds {loaded_entries} entries after loading {entries}"
                ));
            }
        }
        drop(filter);

        let start = Instant::now();
        for i in 0..xdpf_addresses {
            let n = u32::try_from(i).expect("few");
            let addr = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 19, 0, 0)) + n + 1);
            env.run(&mut xdpf.command(&["ip", &addr.to_string(), "-m", "src"]))?;
        }
        #[expect(clippy::cast_precision_loss, reason = "small counts")]
        xdpf_per_sec.push(xdpf_addresses as f64 / start.elapsed().as_secs_f64());
        for i in 0..xdpf_addresses {
            let n = u32::try_from(i).expect("few");
            let addr = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 19, 0, 0)) + n + 1);
            env.run(&mut xdpf.command(&["ip", &addr.to_string(), "-m", "src", "-r"]))?;
        }
        println!("    round {}/{} done", round + 1, env.rounds);
    }
    drop(xdpf);
    drop(lab);
    fs::remove_file(&list).ok();
    fs::remove_file(&small_list).ok();

    let latencies = edit_latency(env)?;

    let mut section = Section::new("4. Control plane");
    crate::crowdsec::bench(env, &mut section)?;
    let median_load = Summary::of(&load_secs).map_or(f64::NAN, |s| s.median);
    #[expect(clippy::cast_precision_loss, reason = "small counts")]
    let per_sec: Vec<f64> = load_secs.iter().map(|s| entries as f64 / s).collect();
    let _ = writeln!(
        section.text,
        "**Loading a list.** `filter-ctl block --file FILE` with {entries} entries ({} IPv4 and \
         {} IPv6, mixed prefix lengths as in part 2, one a line), each round into a freshly \
         loaded filter at default capacities; wall time of the whole command (start, parse, \
         insert, exit), {} rounds: **{} s** ({} entries/s); {loaded_entries} entries present \
         afterwards. For scale, xdp-filter's CLI takes one address per command: `xdp-filter ip \
         ADDR -m src` × {xdpf_addresses} per round (through `nsenter`, as everything here) gives \
         {} addresses/s, and its IPv4 table \
         holds at most {xdpf_max} entries.\n",
        entries / 2,
        entries / 2,
        env.rounds,
        show(&load_secs, 2),
        show(&per_sec, 0),
        show(&xdpf_per_sec, 0),
    );
    section.targets.push(Target {
        what: format!("{entries} entries loaded in under 1 s"),
        holds: median_load < 1.0,
        detail: format!("{median_load:.2} s"),
        precise_of: None,
    });
    if median_load >= 1.0 && !env.quick {
        let filter = LoadedFilter::load("cp", &Capacities::default())?;
        let list = env.work.join("list-profile.txt");
        fs::write(
            &list,
            block_list(entries / 2, 4242, "198.18.1.0/24", "2001:db8:1::/48"),
        )?;
        // Through `env.ctl`, like every other filter-ctl call here: the
        // filter's own state directory, private (0700), not the
        // benchmark's base directory, which filter-ctl refuses (0755).
        let state = state_dir(&filter.pins);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&state)
            .with_context(|| format!("creating {}", state.display()))?;
        let top = profile_command(
            env,
            &env.ctl(&filter.pins, &["block", "--file", &list.to_string_lossy()]),
        );
        fs::remove_file(&list).ok();
        let _ = writeln!(
            section.text,
            "The target is missed; a profile of one more load (`perf record -F 9973 -- \
             filter-ctl … block --file …`, hottest symbols, user and kernel): {top}\n"
        );
    }

    let _ = writeln!(
        section.text,
        "**Metrics scrape.** One `/metrics` scrape (`filter_ctl::control::metrics::scrape`: \
         open the pins, read every counter, encode; HTTP excluded), {SCRAPE_TIMES} times in a \
         row: with {SCRAPE_SMALL} list entries **{} ms**, with {entries} **{} ms** (a scrape \
         never walks the lists or the tracking table).\n",
        show(&scrape_small, 2),
        show(&scrape_large, 2),
    );
    if !env.quick {
        let small = Summary::of(&scrape_small).map_or(f64::NAN, |s| s.median);
        let large = Summary::of(&scrape_large).map_or(f64::NAN, |s| s.median);
        section.targets.push(Target {
            what: format!(
                "a scrape with {entries} list entries within 2x of one with {SCRAPE_SMALL}"
            ),
            holds: large < 2.0 * small,
            detail: format!("{large:.2} ms vs {small:.2} ms"),
            precise_of: None,
        });
    }

    edits_text(&edits, &listing, entries, env.quick, &mut section);

    let from_start: Vec<f64> = latencies.iter().map(|l| l.from_start_ms).collect();
    let from_return: Vec<f64> = latencies.iter().map(|l| l.from_return_ms).collect();
    let command: Vec<f64> = latencies.iter().map(|l| l.command_ms).collect();
    let gap: Vec<f64> = latencies.iter().map(|l| l.gap_ms).collect();
    let worst = from_start.iter().copied().fold(f64::NAN, f64::max);
    let _ = writeln!(
        section.text,
        "**From an edit to the first dropped packet.** A steady UDP stream (one datagram \
         about every {} µs, numbered) flows through the filter (`filter-ctl run`, attached \
         {}) to a socket; `filter-ctl block SRC` runs; the first dropped datagram is the one \
         after the last that arrived. {} rounds (each ends with `unblock`), ms, median (min–max):\n\n\
         | from `block` starting | from `block` returning | `block` run time | stream resolution (send gap) |\n\
         |---:|---:|---:|---:|\n| {} | {} | {} | {} |\n\n\
         Negative: the first drop came before the command had exited (the map update is \
         done before `filter-ctl` prints and exits).\n",
        STREAM_INTERVAL.as_micros(),
        latencies.first().map_or("", |l| l.attached.as_str()),
        latencies.len(),
        show(&from_start, 2),
        show(&from_return, 2),
        show(&command, 2),
        show(&gap, 3),
    );
    section.targets.push(Target {
        what: "an edit enforced within 100 ms (from the command's start, worst round)".into(),
        holds: worst <= 100.0,
        detail: format!("{worst:.1} ms"),
        precise_of: None,
    });

    policy_and_state(env, entries, &mut section)?;

    section.text.push_str(
        "**Memory of every map** at default capacities, as the kernel accounts it \
         (`bpftool map show` → memlock, i.e. the map's `bpf_map_memory_usage`); maps that \
         allocate per entry grow with their contents, so the figures are also given with the \
         list above loaded.\n\n\
         | map | type | max entries | key B | value B | memlock, empty | memlock, with the list |\n\
         |---|---|---:|---:|---:|---:|---:|\n",
    );
    let mut total_empty = 0;
    let mut total_loaded = 0;
    for m in &memory {
        total_empty += m.empty;
        total_loaded += m.loaded.unwrap_or(m.empty);
        let _ = writeln!(
            section.text,
            "| {} | {} | {} | {} | {} | {} | {} |",
            m.name,
            m.kind,
            m.max_entries,
            m.key,
            m.value,
            bytes(m.empty),
            m.loaded.map_or_else(|| "–".to_string(), bytes)
        );
    }
    let _ = writeln!(
        section.text,
        "| **total** | | | | | **{}** | **{}** |\n",
        bytes(total_empty),
        bytes(total_loaded)
    );
    crate::stats_cost::stats_json(env, &mut section)?;
    Ok(section)
}

fn bytes(n: u64) -> String {
    #[expect(clippy::cast_precision_loss, reason = "display only")]
    let n = n as f64;
    if n >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", n / 1024.0 / 1024.0)
    } else if n >= 1024.0 {
        format!("{:.1} KiB", n / 1024.0)
    } else {
        format!("{n} B")
    }
}

struct MapMemory {
    name: String,
    kind: String,
    max_entries: u64,
    key: u64,
    value: u64,
    empty: u64,
    loaded: Option<u64>,
}

fn map_memory(env: &Env, filter: &LoadedFilter) -> Result<Vec<MapMemory>> {
    let program = bpftool_json(env, &["prog", "show", "id", &filter.id.to_string()])?;
    let ids = program["map_ids"]
        .as_array()
        .ok_or_else(|| anyhow!("no map ids for program {}", filter.id))?;
    let mut out = Vec::new();
    for id in ids {
        let id = id.as_u64().ok_or_else(|| anyhow!("bad map id"))?;
        let map = bpftool_json(env, &["map", "show", "id", &id.to_string()])?;
        let get = |field: &str| map[field].as_u64().unwrap_or(0);
        out.push(MapMemory {
            name: map["name"].as_str().unwrap_or("?").to_string(),
            kind: map["type"].as_str().unwrap_or("?").to_string(),
            max_entries: get("max_entries"),
            key: get("bytes_key"),
            value: get("bytes_value"),
            empty: get("bytes_memlock"),
            loaded: None,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn bpftool_json(env: &Env, args: &[&str]) -> Result<serde_json::Value> {
    let text = env.run(Command::new("bpftool").arg("-j").args(args))?;
    serde_json::from_str(&text).with_context(|| format!("bpftool printed {text:?}"))
}

/// Interval of the numbered stream (the resolution of the measurement).
const STREAM_INTERVAL: Duration = Duration::from_micros(100);

struct Latency {
    from_start_ms: f64,
    from_return_ms: f64,
    command_ms: f64,
    /// Time between the last datagram that arrived and the first dropped one
    /// (how precisely the moment is known).
    gap_ms: f64,
    attached: String,
}

/// `b - a` in ms, negative when `b` is earlier.
fn signed_ms(a: Instant, b: Instant) -> f64 {
    match b.checked_duration_since(a) {
        Some(d) => d.as_secs_f64() * 1e3,
        None => -(a.duration_since(b).as_secs_f64() * 1e3),
    }
}

fn edit_latency(env: &Env) -> Result<Vec<Latency>> {
    let lab = Lab::new("fbl");
    let ctl = Controller::start(env, &lab.dst, &lab.dst_if, "lt")?;
    let src = lab.src_v4();
    let dst = SocketAddr::new(IpAddr::V4(lab.dst_v4()), PORT);
    let receiver = in_netns(&lab.dst, || UdpSocket::bind(dst)).context("binding the receiver")?;
    receiver.set_read_timeout(Some(Duration::from_millis(10)))?;
    let sender = in_netns(&lab.src, || {
        UdpSocket::bind(SocketAddr::new(IpAddr::V4(src), 0))
    })
    .context("binding the sender")?;
    let mut out = Vec::new();
    for _ in 0..env.rounds {
        check_interrupted()?;
        // Whatever an earlier round left in the socket (bounded by its timeout).
        let mut buf = [0u8; 64];
        for _ in 0..100_000 {
            if receiver.recv_from(&mut buf).is_err() {
                break;
            }
        }
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(Mutex::new(Vec::<Instant>::with_capacity(100_000)));
        let got = Arc::new(Mutex::new(HashSet::<u64>::new()));
        let (sent_log, got_log) = (Arc::clone(&sent), Arc::clone(&got));
        let result = thread::scope(|scope| -> Result<Latency> {
            let stop_tx = Arc::clone(&stop);
            let sender = &sender;
            scope.spawn(move || {
                // Real-time priority, so that the stream keeps its pace while
                // filter-ctl and everything else compete for the CPUs (it
                // sleeps between datagrams).
                let param = libc::sched_param { sched_priority: 1 };
                // SAFETY: 0 is the calling thread; `param` is valid.
                if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &raw const param) } != 0 {
                    eprintln!(
                        "warning: no real-time priority for the stream: {}",
                        std::io::Error::last_os_error()
                    );
                }
                let start = Instant::now();
                let mut seq: u64 = 0;
                // Bounded: stops when told, or after 20 s whatever happens.
                while !stop_tx.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(20)
                {
                    let at = Instant::now();
                    if sender.send_to(&seq.to_be_bytes(), dst).is_ok() {
                        sent_log
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push(at);
                        seq += 1;
                    }
                    thread::sleep(STREAM_INTERVAL);
                }
            });
            let stop_rx = Arc::clone(&stop);
            let receiver = &receiver;
            scope.spawn(move || {
                let mut buf = [0u8; 64];
                let start = Instant::now();
                while !stop_rx.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(20)
                {
                    if let Ok((8, _)) = receiver.recv_from(&mut buf) {
                        let seq = u64::from_be_bytes(buf[..8].try_into().expect("8 bytes"));
                        got_log
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .insert(seq);
                    }
                }
            });
            let measured = (|| {
                let deadline = Instant::now() + Duration::from_secs(3);
                while got.lock().unwrap_or_else(PoisonError::into_inner).len() < 200 {
                    ensure!(
                        Instant::now() < deadline,
                        "the stream does not reach the socket"
                    );
                    thread::sleep(Duration::from_millis(5));
                }
                let start = Instant::now();
                env.run(&mut env.ctl(&ctl.pins, &["block", &src.to_string()]))?;
                let returned = Instant::now();
                thread::sleep(Duration::from_millis(150));
                Ok((start, returned))
            })();
            stop.store(true, Ordering::Relaxed);
            let (start, returned) = measured?;
            let sent = sent.lock().unwrap_or_else(PoisonError::into_inner);
            let got = got.lock().unwrap_or_else(PoisonError::into_inner);
            let last = got
                .iter()
                .copied()
                .max()
                .ok_or_else(|| anyhow!("nothing arrived"))?;
            let first_dropped = usize::try_from(last + 1)?;
            ensure!(
                first_dropped < sent.len(),
                "the stream kept arriving after `filter-ctl block` (last seq {last} of {})",
                sent.len()
            );
            let at = sent[first_dropped];
            Ok(Latency {
                from_start_ms: signed_ms(start, at),
                from_return_ms: signed_ms(returned, at),
                command_ms: signed_ms(start, returned),
                gap_ms: signed_ms(sent[first_dropped - 1], at),
                attached: ctl.attached.clone(),
            })
        });
        match result {
            Ok(latency) => out.push(latency),
            Err(e) => env.fail(format!("part 4, edit latency: {e:#}")),
        }
        env.run(&mut env.ctl(&ctl.pins, &["unblock", &src.to_string()]))?;
        thread::sleep(Duration::from_millis(50));
    }
    drop(ctl);
    Ok(out)
}

/// Writes a policy that blocks everything in the list file `list` (by name,
/// next to it) into `dir`; returns its path.
fn write_policy(dir: &std::path::Path, name: &str, list: &str) -> Result<std::path::PathBuf> {
    let path = dir.join(name);
    fs::write(
        &path,
        format!(
            "# filter-bench: a policy with a large list file\n[block]\nfiles = [\"{list}\"]\n[limits.default]\nrate = 1000\nburst = 2000\n"
        ),
    )?;
    Ok(path)
}

/// Times one filter-ctl command (whole process), in seconds.
fn timed(env: &Env, command: &mut Command) -> Result<f64> {
    let start = Instant::now();
    env.run(command)?;
    Ok(start.elapsed().as_secs_f64())
}

/// Policy apply with a list file of `entries` entries, and live edits with
/// that many entries persisted in the state directory.
fn policy_and_state(env: &Env, entries: usize, section: &mut Section) -> Result<()> {
    println!("    policy apply and persisted state ({entries} entries)");
    let dir = env.work.join("policy");
    fs::create_dir_all(&dir)?;
    fs::write(
        dir.join("a.txt"),
        block_list(entries / 2, 5151, "198.18.3.0/24", "2001:db8:3::/48"),
    )?;
    fs::write(
        dir.join("b.txt"),
        block_list(entries / 2, 6262, "198.18.4.0/24", "2001:db8:4::/48"),
    )?;
    let policy_a = write_policy(&dir, "a.toml", "a.txt")?;
    let policy_b = write_policy(&dir, "b.toml", "b.txt")?;
    let (a, b) = (
        policy_a.to_string_lossy().into_owned(),
        policy_b.to_string_lossy().into_owned(),
    );
    let mut first = Vec::new();
    let mut swap = Vec::new();
    let mut same = Vec::new();
    let mut rollback = Vec::new();
    let mut edit = Vec::new();
    for _ in 0..env.rounds {
        check_interrupted()?;
        let filter = LoadedFilter::load("pol", &Capacities::default())?;
        // A state directory of this round's own.
        let state = env.work.join("policy-state");
        fs::remove_dir_all(&state).ok();
        let ctl = |args: &[&str]| {
            let mut command = env.ctl(&filter.pins, args);
            command.env("FILTER_CTL_STATE_DIR", &state);
            command
        };
        first.push(timed(env, &mut ctl(&["policy", "apply", &a]))?);
        swap.push(timed(env, &mut ctl(&["policy", "apply", &b]))?);
        same.push(timed(env, &mut ctl(&["policy", "apply", &b]))?);
        rollback.push(timed(env, &mut ctl(&["policy", "rollback"]))?);
        // A live edit with the policy's entries in the maps and in the state.
        edit.push(timed(env, &mut ctl(&["block", "198.18.9.9"]))? * 1000.0);
        let listed = Filter::open(&filter.pins)?
            .list_entries_raw(ListKind::Block)?
            .len();
        if listed < entries {
            env.fail(format!(
                "part 4: after applying a policy of {entries} entries and rolling back to another, the blocklist holds {listed}"
            ));
        }
        drop(filter);
        fs::remove_dir_all(&state).ok();
    }
    let persisted = filter_ctl::state::bench_edit_at(entries, &env.work)?;
    fs::remove_dir_all(&dir).ok();

    let median = |v: &[f64]| Summary::of(v).map_or(f64::NAN, |s| s.median);
    let _ = writeln!(
        section.text,
        "**Policy apply.** `filter-ctl policy apply FILE` (whole command: read and check the \
         policy and its list file, store both in the state directory, write the maps, record \
         the version) with a list file of {entries} entries, into a freshly loaded filter, \
         {} rounds, s: first apply **{}**; then a policy whose {entries} entries are all \
         different (every new one in before any old one goes) **{}**; the same policy again \
         (nothing to change) **{}**; `policy rollback` to the first **{}**.\n",
        env.rounds,
        show(&first, 2),
        show(&swap, 2),
        show(&same, 2),
        show(&rollback, 2),
    );
    section.targets.push(Target {
        what: format!("a policy with a {entries}-entry list file applied in under 2 s"),
        holds: median(&first) < 2.0,
        detail: format!("{:.2} s", median(&first)),
        precise_of: None,
    });
    let _ = writeln!(
        section.text,
        "**Persisted state.** With {} live entries persisted (`filter_ctl::state::bench_edit_at`: \
         journal compacted into a snapshot, as a long-running state is): reading them all (what \
         `run` does at start) {:.0} ms; one edit appended and fsynced by a CLI edit {:.2} ms, by \
         the controller through its loaded state {:.2} ms. A whole `filter-ctl block ADDR` with the \
         {entries} policy entries in the maps: **{} ms** (an edit looks up only the entries it \
         names, never the whole list).\n",
        persisted.entries,
        persisted.load.as_secs_f64() * 1000.0,
        persisted.edit_unloaded.as_secs_f64() * 1000.0,
        persisted.edit_loaded.as_secs_f64() * 1000.0,
        show(&edit, 1),
    );
    section.targets.push(Target {
        what: format!(
            "one live edit recorded in under 20 ms with {} entries persisted",
            persisted.entries
        ),
        holds: persisted.edit_unloaded < Duration::from_millis(20),
        detail: format!("{:.2} ms", persisted.edit_unloaded.as_secs_f64() * 1000.0),
        precise_of: None,
    });
    Ok(())
}
