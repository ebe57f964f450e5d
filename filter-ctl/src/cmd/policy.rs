//! `filter-ctl policy check`.

use std::path::PathBuf;

use filter_ctl::{
    error::Error,
    spec::policy::{self, Ownership},
};

use super::Context;
use crate::render;

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Validate a policy file and the list files it names, without
    /// touching the filter.
    ///
    /// Needs no pins, no bpffs and no root. Reports every problem as
    /// `FILE:LINE:COL: MESSAGE` (`FILE:LINE: MESSAGE` in a list file) and exits
    /// with code 2 if there is any, including a policy or list file that
    /// every user may write. On success prints the policy's SHA-256 (what
    /// `sha256sum` prints), its interfaces, list entries and rules.
    ///
    /// The policy is TOML; the example policies shipped with filter-ctl
    /// (`examples/*.toml`) document every key.
    ///
    /// Example: filter-ctl policy check /etc/filter-ctl/policy.toml
    Check(CheckArgs),
}

#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// The policy file. List files it names by a relative path are read
    /// from its directory.
    file: PathBuf,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

/// `check` touches nothing of the filter: `_ctx` is for the commands to come.
pub fn run(_ctx: &Context, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Check(args) => {
            let loaded = policy::load(&args.file, Ownership::AnyOwner).map_err(Error::from)?;
            for note in &loaded.notes {
                eprintln!("{}: note: {}", note.location(), note.message);
            }
            render::policy_check(&loaded, args.json)
        }
    }
}
