//! `filter-ctl stats`.

use super::Context;
use crate::render;

pub fn run(ctx: &Context, json: bool) -> anyhow::Result<()> {
    let stats = ctx.open()?.stats()?;
    render::stats(&stats, json)
}
