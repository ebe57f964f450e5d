//! One module per command: its arguments and its handler.

pub mod detach;
pub mod docs;
pub mod limit;
pub mod lists;
pub mod policy;
pub mod run;
pub mod stats;
pub mod status;
pub mod top;

use std::{path::PathBuf, time::Duration};

use filter_ctl::{
    maps::{Filter, pins::PinDir},
    state::StateDir,
};

/// What every command gets from the global options.
pub struct Context {
    pub pins: PinDir,
    /// `--state-dir`: open it with [`Context::state`].
    pub state_dir: PathBuf,
    pub lock_timeout: Duration,
}

impl Context {
    /// The filter, for reading.
    pub fn open(&self) -> anyhow::Result<Filter> {
        Filter::open(&self.pins)
    }

    /// The filter, for editing (takes the edit lock, bounded wait).
    pub fn edit(&self) -> anyhow::Result<Filter> {
        Filter::open_for_edit(&self.pins, self.lock_timeout)
    }

    /// The state directory, created if missing, for recording a change.
    pub fn state(&self) -> anyhow::Result<StateDir> {
        Ok(StateDir::open(&self.state_dir)?.with_lock_timeout(self.lock_timeout))
    }

    /// The state directory if there is one, read-only.
    pub fn state_if_any(&self) -> anyhow::Result<Option<StateDir>> {
        StateDir::open_existing(&self.state_dir)
    }
}

#[derive(clap::Args, Debug)]
pub struct JsonArg {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}
