//! `bufscope completions SHELL`: the shell's completion script, on stdout.

use std::{io::Write, process::ExitCode};

use anyhow::Context;
use bufscope::cli_docs::completion_script;
use clap_complete::Shell;

pub fn run(shell: Shell, cli: clap::Command) -> anyhow::Result<ExitCode> {
    let script = completion_script(shell, cli);
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(&script)
        .and_then(|()| stdout.flush())
        .context("writing the completion script to stdout")?;
    Ok(ExitCode::SUCCESS)
}
