//! Part 4, `filter-ctl stats --json` with the tracking table full: the
//! command must not walk the table (issue 18, target 5: under 50 ms with
//! 1,000,000 tracked sources).

use std::{fmt::Write as _, time::Instant};

use anyhow::Result;
use filter_ctl::maps::loader::Capacities;

use crate::{
    common::{Env, LoadedFilter, Summary, show},
    prog::fill_buckets,
    report::{Section, Target},
};

/// Runs of `stats --json` timed.
const RUNS: usize = 10;

/// Times `filter-ctl stats --json` (whole command) on a filter whose tracking
/// table holds `sources` entries (1,000,000, or 10,000 with `--quick`).
pub fn stats_json(env: &Env, section: &mut Section) -> Result<()> {
    let sources: usize = if env.quick { 10_000 } else { 1_000_000 };
    let filter = LoadedFilter::load("st", &Capacities::default())?;
    fill_buckets(&filter, sources)?;
    let mut ms = Vec::new();
    for _ in 0..RUNS {
        let start = Instant::now();
        let out = env.run(&mut env.ctl(&filter.pins, &["stats", "--json"]))?;
        ms.push(start.elapsed().as_secs_f64() * 1000.0);
        if !out.contains("\"buckets_live\"") {
            env.fail(format!("part 4: `stats --json` lacks buckets_live:\n{out}"));
        }
    }
    drop(filter);
    let _ = writeln!(
        section.text,
        "**`stats --json` with a full tracking table.** {sources} sources written into \
         `BUCKETS` (a freshly loaded filter, default capacity), then `filter-ctl stats \
         --json` {RUNS} times, wall time of the whole command: **{} ms** (the table counts \
         come from kernel counters and the capacity, never from a walk).\n",
        show(&ms, 1),
    );
    if !env.quick {
        let median = Summary::of(&ms).map_or(f64::NAN, |s| s.median);
        section.targets.push(Target {
            what: format!("`stats --json` with {sources} tracked sources under 50 ms"),
            holds: median < 50.0,
            detail: format!("{median:.1} ms"),
            precise_of: None,
        });
    }
    Ok(())
}
