//! `bufscope stress DEVICE`: the test bed's workload driver ([`bufscope::stress`]); prints the
//! readers' and writers' ops/s and latency percentiles. Writes need --allow-writes and are
//! refused on a mounted block device.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use bufscope::stress::{Pattern, StressPlan, StressResult, StressTotals, run_stress};
use bufscope_analyses::units::thousands;
use serde_json::json;

use crate::args::parse_positive_duration;

#[derive(Debug, clap::Args)]
pub struct Options {
    /// Block device or file to read (and, with --writers, write).
    pub device: PathBuf,
    /// Reader threads.
    #[arg(long, default_value_t = 16)]
    pub threads: u32,
    /// Writer threads (random blocks, random data); needs --allow-writes.
    #[arg(long, default_value_t = 0)]
    pub writers: u32,
    /// Allow the writers to overwrite the device's blocks.
    #[arg(long)]
    pub allow_writes: bool,
    /// How long to run, e.g. 10s.
    #[arg(long, default_value = "10s", value_parser = parse_positive_duration)]
    pub duration: Duration,
    /// Where readers read.
    #[arg(long, value_enum, default_value_t = Pattern::Random)]
    pub pattern: Pattern,
    /// Blocks per reader's region with --pattern hot.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub region_blocks: u64,
    /// I/O size in bytes (a multiple of 512).
    #[arg(long, default_value_t = 4096, value_parser = parse_io_size)]
    pub block_size: usize,
    /// Use buffered I/O instead of O_DIRECT (for filesystems that refuse O_DIRECT, like tmpfs).
    #[arg(long)]
    pub buffered: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// A positive multiple of 512, as O_DIRECT needs.
fn parse_io_size(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n > 0 && n.is_multiple_of(512) => Ok(n),
        _ => Err(format!("`{s}` is not a positive multiple of 512 bytes")),
    }
}

pub fn run(o: &Options) -> anyhow::Result<ExitCode> {
    let result = run_stress(&StressPlan {
        device: o.device.clone(),
        readers: o.threads,
        writers: o.writers,
        allow_writes: o.allow_writes,
        duration: o.duration,
        pattern: o.pattern,
        region_blocks: o.region_blocks,
        block_size: o.block_size,
        direct: !o.buffered,
    })?;
    report(o, &result)?;
    Ok(ExitCode::SUCCESS)
}

fn report(o: &Options, result: &StressResult) -> anyhow::Result<()> {
    let summary = |totals: &StressTotals| {
        let (ops, latency) = (totals.ops, &totals.latency_ns);
        let secs = o.duration.as_secs_f64().max(1e-9);
        json!({
            "ops": ops,
            "ops_per_s": ops as f64 / secs,
            "p50_us": latency.value_at_quantile(0.5) as f64 / 1e3,
            "p99_us": latency.value_at_quantile(0.99) as f64 / 1e3,
            "max_us": latency.max() as f64 / 1e3,
        })
    };
    let (reads, writes) = (summary(&result.reads), summary(&result.writes));
    if o.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "device": o.device.display().to_string(),
                "readers": o.threads,
                "writers": o.writers,
                "seconds": o.duration.as_secs_f64(),
                "reads": reads,
                "writes": writes,
            }))?
        );
        return Ok(());
    }
    println!(
        "{:<7} {:>12} {:>10} {:>10} {:>10} {:>10}",
        "", "ops", "ops/s", "p50", "p99", "max"
    );
    for (name, s) in [("reads", &reads), ("writes", &writes)] {
        if s["ops"].as_u64() == Some(0) {
            continue;
        }
        println!(
            "{:<7} {:>12} {:>10} {:>8.1}us {:>8.1}us {:>8.1}us",
            name,
            thousands(s["ops"].as_u64().unwrap_or(0)),
            thousands(s["ops_per_s"].as_f64().unwrap_or(0.0) as u64),
            s["p50_us"].as_f64().unwrap_or(0.0),
            s["p99_us"].as_f64().unwrap_or(0.0),
            s["max_us"].as_f64().unwrap_or(0.0),
        );
    }
    Ok(())
}
