//! `cargo xtask bench`: every benchmark of the project, each printing its figures next to its
//! targets. Numbers from these shared 2-core machines are noisy: compare ratios within one run.

use std::process::Command;

use crate::cmd::run_checked;

pub fn run() -> anyhow::Result<()> {
    run_checked(
        "bench",
        Command::new("cargo").args([
            "bench",
            "--locked",
            "--package",
            "bufscope-trace",
            "--bench",
            "trace_throughput",
        ]),
    )
}
