//! `bufscope stress DEVICE`: the test bed's workload driver. Reader threads (random blocks, or
//! each its own hot region) and optional writer threads hit a block device or file with direct
//! I/O for a given time, then report their own ops/s and latency percentiles. Writes need
//! --allow-writes and are refused on a mounted block device.

use std::{
    fs::File,
    io::{Seek, SeekFrom},
    path::PathBuf,
    process::ExitCode,
    sync::{Arc, Barrier},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng, rngs::SmallRng};
use reference_cache::{BlockIo, FileIo, FileIoOptions};
use serde_json::json;

use bufscope_analyses::units::thousands;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Pattern {
    /// Every reader picks blocks uniformly over the whole device.
    Random,
    /// Reader n reads blocks [n*R, n*R + R) in order, pass after pass (the hotspot shape).
    Hot,
}

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
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Where readers read.
    #[arg(long, value_enum, default_value_t = Pattern::Random)]
    pub pattern: Pattern,
    /// Blocks per reader's region with --pattern hot.
    #[arg(long, default_value_t = 1024)]
    pub region_blocks: u64,
    /// I/O size in bytes (a multiple of 512).
    #[arg(long, default_value_t = 4096)]
    pub block_size: usize,
    /// Use buffered I/O instead of O_DIRECT (for filesystems that refuse O_DIRECT, like tmpfs).
    #[arg(long)]
    pub buffered: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// One thread's result.
struct ThreadResult {
    writer: bool,
    ops: u64,
    latency_ns: Histogram<u64>,
}

pub fn run(o: &Options) -> anyhow::Result<ExitCode> {
    if o.writers > 0 && !o.allow_writes {
        bail!(
            "--writers {} would overwrite blocks of {}; pass --allow-writes to allow it",
            o.writers,
            o.device.display()
        );
    }
    if o.threads + o.writers == 0 {
        bail!("--threads and --writers are both 0: nothing to run");
    }
    let blocks = File::open(&o.device)
        .and_then(|mut f| f.seek(SeekFrom::End(0)))
        .with_context(|| format!("sizing {}", o.device.display()))?
        / o.block_size as u64;
    if blocks == 0 {
        bail!(
            "{} is smaller than one {}-byte block",
            o.device.display(),
            o.block_size
        );
    }
    if o.pattern == Pattern::Hot && u64::from(o.threads) * o.region_blocks > blocks {
        bail!(
            "{} readers x {} blocks of hot region exceed the device's {blocks} blocks",
            o.threads,
            o.region_blocks
        );
    }
    let io: Arc<dyn BlockIo> = Arc::new(
        FileIo::open(
            &o.device,
            o.block_size,
            FileIoOptions {
                direct: !o.buffered,
                allow_writes: o.writers > 0,
            },
        )
        .with_context(|| format!("opening {}", o.device.display()))?,
    );
    let threads = o.threads + o.writers;
    let start = Arc::new(Barrier::new(threads as usize));
    let handles: Vec<_> = (0..threads)
        .map(|n| {
            let (io, start) = (Arc::clone(&io), Arc::clone(&start));
            let writer = n >= o.threads;
            let (pattern, region, duration, block_size) =
                (o.pattern, o.region_blocks, o.duration, o.block_size);
            thread::spawn(move || -> std::io::Result<ThreadResult> {
                let mut rng = SmallRng::seed_from_u64(u64::from(n) + 1);
                let mut buf = vec![0u8; block_size];
                let mut latency_ns =
                    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid bounds");
                let mut ops = 0u64;
                let first = u64::from(n) * region;
                start.wait();
                let deadline = Instant::now() + duration;
                while Instant::now() < deadline {
                    let block = match (writer, pattern) {
                        (false, Pattern::Hot) => first + ops % region,
                        _ => rng.random_range(0..blocks),
                    };
                    let began = Instant::now();
                    if writer {
                        rng.fill(&mut buf[..]);
                        io.write_block(block, &buf)?;
                    } else {
                        io.read_block(block, &mut buf)?;
                    }
                    latency_ns.saturating_record(began.elapsed().as_nanos() as u64);
                    ops += 1;
                }
                Ok(ThreadResult {
                    writer,
                    ops,
                    latency_ns,
                })
            })
        })
        .collect();
    let mut results = Vec::new();
    for handle in handles {
        results.push(
            handle
                .join()
                .map_err(|_| anyhow::anyhow!("a stress thread panicked"))?
                .with_context(|| format!("I/O on {}", o.device.display()))?,
        );
    }
    report(o, &results)?;
    Ok(ExitCode::SUCCESS)
}

fn report(o: &Options, results: &[ThreadResult]) -> anyhow::Result<()> {
    let summary = |writer: bool| {
        let mut latency =
            Histogram::<u64>::new_with_bounds(1, 100_000_000_000, 3).expect("valid bounds");
        let mut ops = 0;
        for r in results.iter().filter(|r| r.writer == writer) {
            ops += r.ops;
            latency.add(&r.latency_ns).expect("same bounds");
        }
        let secs = o.duration.as_secs_f64().max(1e-9);
        json!({
            "ops": ops,
            "ops_per_s": ops as f64 / secs,
            "p50_us": latency.value_at_quantile(0.5) as f64 / 1e3,
            "p99_us": latency.value_at_quantile(0.99) as f64 / 1e3,
            "max_us": latency.max() as f64 / 1e3,
        })
    };
    let (reads, writes) = (summary(false), summary(true));
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
