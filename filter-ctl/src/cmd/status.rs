//! `filter-ctl status`.

use filter_ctl::maps::status;

use super::Context;
use crate::render;

pub fn run(ctx: &Context, json: bool) -> anyhow::Result<()> {
    let status = status::read(&ctx.pins)?;
    render::status(&status, json)
}
