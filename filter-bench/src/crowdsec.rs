//! Part 4, `CrowdSec` bouncer mode: a startup pull of 100,000 decisions
//! (10,000 with `--quick`) decoded and applied the way `run` does it —
//! `spec::crowdsec::parse_stream`, then `control::crowdsec::Applier::apply`
//! (point lookups, batched map writes, one live-state journal record) into
//! a freshly loaded filter. The body is generated in the LAPI's own format
//! (as `GET /v1/decisions/stream?startup=true` answers, see
//! `tests/src/crowdsec.rs`); the HTTP transfer from a real LAPI is not
//! part of the figure.

use std::{fmt::Write as _, time::Instant};

use anyhow::Result;
use filter_ctl::{
    control::crowdsec::{Applier, Pulled},
    maps::{Filter, loader::Capacities},
    spec::crowdsec::parse_stream,
    state::{LiveState, StateDir},
};
use filter_devtools::check_interrupted;

use crate::{
    common::{Env, LoadedFilter, Summary, show},
    report::{Section, Target},
};

/// A startup answer with `n` ban decisions: IPv4 addresses, IPv6
/// addresses and IPv6 /64 ranges in turn, durations as Go prints them.
fn stream(n: usize) -> String {
    let mut body = String::with_capacity(n * 180);
    body.push_str("{\"deleted\":null,\"new\":[");
    for i in 0..n {
        if i > 0 {
            body.push(',');
        }
        let k = u32::try_from(i).expect("fewer than 2^32");
        let (scope, value) = match i % 3 {
            0 => (
                "Ip",
                std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(198, 18, 0, 0)) + k)
                    .to_string(),
            ),
            1 => ("Ip", format!("2001:db8::{:x}:{:x}", k >> 16, k & 0xffff)),
            _ => (
                "Range",
                format!("2001:db8:{:x}:{:x}::/64", k >> 16, k & 0xffff),
            ),
        };
        let _ = write!(
            body,
            "{{\"duration\":\"3h59m{}.{:09}s\",\"id\":{i},\"origin\":\"crowdsec\",\"scenario\":\"crowdsecurity/ssh-bf\",\"scope\":\"{scope}\",\"type\":\"ban\",\"value\":\"{value}\"}}",
            i % 60,
            k % 1_000_000_000
        );
    }
    body.push_str("]}");
    body
}

/// Measures and reports into `section` (part 4).
pub fn bench(env: &Env, section: &mut Section) -> Result<()> {
    let decisions: usize = if env.quick { 10_000 } else { 100_000 };
    println!("    crowdsec: {decisions} decisions");
    let body = stream(decisions);
    let mut decode_secs = Vec::new();
    let mut apply_secs = Vec::new();
    let mut total_secs = Vec::new();
    for _ in 0..env.rounds {
        check_interrupted()?;
        let filter = LoadedFilter::load("cs", &Capacities::default())?;
        let state_path = env.work.join("crowdsec-state");
        let _ = std::fs::remove_dir_all(&state_path);
        let state = StateDir::open(&state_path)?;
        let mut live = LiveState::load(&state, false)?;
        let mut applier = Applier::new(&live);
        let edit = Filter::open_for_edit(&filter.pins, std::time::Duration::from_secs(10))?;

        let start = Instant::now();
        let pull = parse_stream(body.as_bytes())?;
        let decoded = start.elapsed().as_secs_f64();
        let outcome = applier.apply(
            &edit,
            Some(&mut live),
            &Pulled {
                pull,
                startup: true,
            },
        )?;
        let total = start.elapsed().as_secs_f64();
        if outcome.added != decisions {
            env.fail(format!(
                "part 4: crowdsec applied {} of {decisions} decisions",
                outcome.added
            ));
        }
        decode_secs.push(decoded);
        apply_secs.push(total - decoded);
        total_secs.push(total);
        drop(edit);
        drop(filter);
        let _ = std::fs::remove_dir_all(&state_path);
    }
    let median = Summary::of(&total_secs).map_or(f64::NAN, |s| s.median);
    let _ = writeln!(
        section.text,
        "**CrowdSec decisions.** A startup pull of {decisions} ban decisions (IPv4 and IPv6 \
         addresses and IPv6 ranges, {} KB of JSON in the LAPI's stream format, generated), \
         decoded (`spec::crowdsec::parse_stream`) and applied as `run` applies it \
         (`control::crowdsec::Applier::apply`: point lookups for other origins' entries, \
         batched map writes, one live-state journal record) into a freshly loaded filter, \
         {} rounds: decode {} s, apply {} s, **{} s** in all. The HTTP transfer from a real \
         LAPI is not included. For scale, CrowdSec's nftables bouncer applies about 40 \
         decisions/s in its nft mode by its users' reports.\n",
        body.len() / 1024,
        env.rounds,
        show(&decode_secs, 3),
        show(&apply_secs, 3),
        show(&total_secs, 3),
    );
    section.targets.push(Target {
        what: format!("{decisions} CrowdSec decisions applied in under 2 s"),
        holds: median < 2.0,
        detail: format!("{median:.3} s"),
        precise_of: None,
    });
    Ok(())
}
