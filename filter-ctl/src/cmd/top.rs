//! `filter-ctl top`: a live terminal view, refreshed each second: packets
//! per second per reason and per rule (from the counters, as `stats` reads
//! them) and the sources dropped most in the current interval (from the
//! controller's sampled drop tally, `top.json` in the runtime directory).
//! Works from any process, as the other commands do; `q` quits.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use filter_common::Counter;
use filter_ctl::maps::{
    Filter, rules,
    status::{self, TopSnapshot},
};
use ratatui::{
    Frame,
    crossterm::event::{self, Event, KeyCode, KeyEventKind},
    layout::{Constraint, Layout},
    style::{Modifier, Style},
    widgets::{Block, Borders, Cell, Paragraph, Row, Table},
};

use super::Context;

const REFRESH: Duration = Duration::from_secs(1);

/// One refresh's readings.
struct Reading {
    at: Instant,
    reasons: Vec<(&'static str, Counter)>,
    /// (rule, passed packets, dropped packets).
    rules: Vec<(String, u64, u64)>,
}

fn read(filter: &Filter) -> anyhow::Result<Reading> {
    Ok(Reading {
        at: Instant::now(),
        reasons: filter.reason_counters()?,
        rules: rules::list(filter)?
            .into_iter()
            .map(|r| (r.target, r.passed_packets, r.dropped_packets))
            .collect(),
    })
}

/// Per-second rate between two readings of a counter.
fn rate(now: u64, before: u64, seconds: f64) -> u64 {
    if seconds <= 0.0 {
        return 0;
    }
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "a display value, rounded; never negative"
    )]
    let per_second = (now.saturating_sub(before) as f64 / seconds).round() as u64;
    per_second
}

pub fn run(ctx: &Context) -> anyhow::Result<()> {
    let filter = ctx.open()?;
    let mut before = read(&filter)?;
    let mut terminal = ratatui::try_init().context("starting the terminal view")?;
    let result = (|| -> anyhow::Result<()> {
        let mut now = read(&filter)?;
        loop {
            let top = TopSnapshot::read_live(&ctx.pins);
            let controller = status::controller_pid(&ctx.pins);
            terminal
                .draw(|frame| draw(frame, ctx, &before, &now, top.as_ref(), controller))
                .context("drawing")?;
            let deadline = now.at + REFRESH;
            while let Some(left) = deadline.checked_duration_since(Instant::now()) {
                if event::poll(left).context("reading the keyboard")?
                    && let Event::Key(key) = event::read().context("reading the keyboard")?
                    && key.kind == KeyEventKind::Press
                    && matches!(key.code, KeyCode::Char('q') | KeyCode::Esc)
                {
                    return Ok(());
                }
            }
            before = now;
            now = read(&filter)?;
        }
    })();
    ratatui::restore();
    result
}

fn draw(
    frame: &mut Frame,
    ctx: &Context,
    before: &Reading,
    now: &Reading,
    top: Option<&TopSnapshot>,
    controller: Option<u32>,
) {
    let seconds = now.at.duration_since(before.at).as_secs_f64();
    let [title, counters, sources] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(12),
        Constraint::Min(5),
    ])
    .areas(frame.area());
    frame.render_widget(
        Paragraph::new(format!(
            "filter-ctl top — {} — q quits",
            ctx.pins.root().display()
        )),
        title,
    );
    let [reasons_area, rules_area] =
        Layout::horizontal([Constraint::Percentage(45), Constraint::Percentage(55)])
            .areas(counters);
    let header = |cells: &[&'static str]| {
        Row::new(cells.iter().map(|c| Cell::from(*c)))
            .style(Style::default().add_modifier(Modifier::BOLD))
    };
    let reason_rows = now
        .reasons
        .iter()
        .zip(&before.reasons)
        .map(|((name, c), (_, b))| {
            Row::new([
                (*name).to_string(),
                rate(c.packets, b.packets, seconds).to_string(),
                c.packets.to_string(),
            ])
        });
    frame.render_widget(
        Table::new(
            reason_rows,
            [
                Constraint::Length(12),
                Constraint::Length(10),
                Constraint::Min(10),
            ],
        )
        .header(header(&["reason", "pkt/s", "total"]))
        .block(Block::default().borders(Borders::ALL).title("reasons")),
        reasons_area,
    );
    let rule_rows = now.rules.iter().map(|(name, passed, dropped)| {
        let (p0, d0) = before
            .rules
            .iter()
            .find(|(n, _, _)| n == name)
            .map_or((*passed, *dropped), |(_, p, d)| (*p, *d));
        Row::new([
            name.clone(),
            rate(*passed, p0, seconds).to_string(),
            rate(*dropped, d0, seconds).to_string(),
        ])
    });
    frame.render_widget(
        Table::new(
            rule_rows,
            [
                Constraint::Length(16),
                Constraint::Length(12),
                Constraint::Min(12),
            ],
        )
        .header(header(&["rule", "passed/s", "dropped/s"]))
        .block(Block::default().borders(Borders::ALL).title("rules")),
        rules_area,
    );
    let block = Block::default().borders(Borders::ALL);
    match (top, controller) {
        (Some(top), _) => {
            let rows = top.sources.iter().map(|s| {
                let cause = s
                    .rule
                    .as_ref()
                    .map_or_else(|| s.reason.clone(), |r| format!("{}, {r}", s.reason));
                Row::new([
                    s.source.clone(),
                    format!("~{}", s.estimated),
                    cause,
                    s.consecutive.to_string(),
                ])
            });
            let title = format!(
                "top dropped sources, current {}s interval ({} more sources, ~{} packets)",
                top.interval_secs, top.other_sources, top.other_estimated
            );
            frame.render_widget(
                Table::new(
                    rows,
                    [
                        Constraint::Length(40),
                        Constraint::Length(14),
                        Constraint::Length(26),
                        Constraint::Min(10),
                    ],
                )
                .header(header(&["source", "dropped", "reason, rule", "intervals"]))
                .block(block.title(title)),
                sources,
            );
        }
        (None, Some(pid)) => frame.render_widget(
            Paragraph::new(format!(
                "waiting for the controller (pid {pid}) to report sources"
            ))
            .block(block.title("top dropped sources")),
            sources,
        ),
        (None, None) => frame.render_widget(
            Paragraph::new(
                "no controller is running: dropped sources are sampled by `filter-ctl run`",
            )
            .block(block.title("top dropped sources")),
            sources,
        ),
    }
}
