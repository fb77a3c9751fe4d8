//! `cargo xtask run -- ARGS`: sets up what is missing, builds bufscope in release mode and runs
//! it with ARGS.

use std::{os::unix::process::CommandExt, process::Command};

use anyhow::{Context, bail};

use crate::{
    cmd::{is_root, run_checked, workspace_root},
    setup,
};

/// Subcommands and flags that never load eBPF programs and so run without root.
const UNPRIVILEGED: &[&str] = &[
    "info",
    "synth",
    "replay",
    "help",
    "--help",
    "-h",
    "--version",
    "-V",
];

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let first = args.first().map(String::as_str).unwrap_or("--help");
    if !is_root() && !UNPRIVILEGED.contains(&first) {
        bail!(
            "bufscope {first} loads eBPF programs and needs root: run `sudo -E cargo xtask run -- {}`",
            args.join(" ")
        );
    }
    setup::run()?;
    run_checked(
        "run",
        Command::new("cargo").args(["build", "--release", "--package", "bufscope"]),
    )?;
    let binary = workspace_root().join("target/release/bufscope");
    let err = Command::new(&binary).args(args).exec();
    Err(err).with_context(|| format!("could not start {}", binary.display()))
}
