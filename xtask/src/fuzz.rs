//! `cargo xtask fuzz [--seconds N]`: runs the trace reader's fuzz target with cargo-fuzz
//! (installed from crates.io when missing), starting from the committed seed corpus.

use std::process::Command;

use crate::cmd::{heading, output_of, run_checked};

pub fn run(seconds: u64) -> anyhow::Result<()> {
    if output_of("cargo", &["fuzz", "--version"]).is_none() {
        heading("fuzz", "cargo-fuzz: installing from crates.io");
        run_checked(
            "fuzz",
            Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]),
        )?;
    }
    run_checked(
        "fuzz",
        Command::new("cargo")
            .args([
                "+nightly",
                "fuzz",
                "run",
                "--fuzz-dir",
                "fuzz",
                "trace_reader",
            ])
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .arg("-rss_limit_mb=2048"),
    )
}
