//! `filter-ctl man` and `filter-ctl completions`.

use std::io;

use anyhow::Context as _;

pub fn completions(shell: clap_complete::Shell, command: &mut clap::Command) {
    clap_complete::generate(shell, command, "filter-ctl", &mut io::stdout());
}

pub fn man(command: clap::Command) -> anyhow::Result<()> {
    clap_mangen::Man::new(command)
        .render(&mut io::stdout())
        .context("writing the manual page")
}
