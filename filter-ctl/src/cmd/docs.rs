//! `filter-ctl man` and `filter-ctl completions`.

use std::io::{self, Write as _};

use anyhow::Context as _;
use filter_ctl::error::ExitCode;

pub fn completions(shell: clap_complete::Shell, command: &mut clap::Command) {
    clap_complete::generate(shell, command, "filter-ctl", &mut io::stdout());
}

/// The manual page: clap's sections, with the exit codes as a proper
/// EXIT STATUS section instead of the help's closing text.
pub fn man(command: clap::Command) -> anyhow::Result<()> {
    let man = clap_mangen::Man::new(command);
    let mut out = io::stdout().lock();
    let mut render = || -> io::Result<()> {
        man.render_title(&mut out)?;
        man.render_name_section(&mut out)?;
        man.render_synopsis_section(&mut out)?;
        man.render_description_section(&mut out)?;
        man.render_options_section(&mut out)?;
        man.render_subcommands_section(&mut out)?;
        writeln!(out, ".SH \"EXIT STATUS\"")?;
        for (code, meaning) in ExitCode::TABLE {
            writeln!(out, ".TP\n{}\n{meaning}", code.code())?;
        }
        man.render_version_section(&mut out)
    };
    render().context("writing the manual page")
}
