//! `bufscope replay FILE`: the trace's dm-bufio operations through each reference design, on a
//! device or in memory, with a summary table (or JSON) of throughput, hits and lock waits.

use std::{collections::HashMap, path::PathBuf, process::ExitCode, sync::Arc};

use anyhow::{Context, bail};
use bufscope_trace::{Metadata, OpKind, OpResult, Record, TraceReader};
use reference_cache::{
    BlockIo, CacheConfig, DESIGNS, FileIo, FileIoOptions, Latency, LockClass, MemoryIo, build,
    replay::{ReplayOptions, ReplayResult, Step, Stream, TimedStep, replay},
};
use serde_json::json;

use super::thousands;

#[derive(Debug, clap::Args)]
pub struct Options {
    /// Trace file to replay.
    pub file: PathBuf,
    /// Designs to replay through (repeat, or `all`).
    #[arg(long = "design", default_value = "all", value_parser = parse_design)]
    pub designs: Vec<String>,
    /// Replay threads (default: one per recorded thread).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Read (and, with --allow-writes, write) buffers on this file or block device instead of
    /// memory.
    #[arg(long, value_name = "PATH")]
    pub device: Option<PathBuf>,
    /// Allow writes to --device (refused anyway on a mounted block device).
    #[arg(long, requires = "device")]
    pub allow_writes: bool,
    /// Open --device with O_DIRECT.
    #[arg(long, requires = "device")]
    pub direct: bool,
    /// Without --device: how long each memory-backend read or write takes, e.g. 100us (a stand-in
    /// for a device; default: none).
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "device")]
    pub io_latency: Option<std::time::Duration>,
    /// Time scale for recorded gaps: 2 replays twice as fast (default: as fast as possible).
    #[arg(long, value_parser = parse_speed)]
    pub speed: Option<f64>,
    /// Cache capacity in buffers (the hotspot test's 300 MiB of 4 KiB blocks by default).
    #[arg(long, default_value_t = 76_800)]
    pub capacity: usize,
    /// CPUs the sharded design sizes its trees for (default: this machine's).
    #[arg(long)]
    pub cpus: Option<usize>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

fn parse_design(s: &str) -> Result<String, String> {
    if s == "all" || DESIGNS.contains(&s) {
        Ok(s.to_string())
    } else {
        Err(format!(
            "unknown design `{s}`; known: {}, all",
            DESIGNS.join(", ")
        ))
    }
}

fn parse_speed(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        _ => Err(format!("`{s}` is not a positive number")),
    }
}

/// The trace's operations for one client, as replay streams.
struct Loaded {
    streams: Vec<Stream>,
    client: u64,
    clients: usize,
    block_size: u32,
    steps: usize,
}

fn load(path: &std::path::Path) -> anyhow::Result<Loaded> {
    let mut reader = TraceReader::open(path)?;
    let mut by_client: HashMap<u64, HashMap<u32, Vec<TimedStep>>> = HashMap::new();
    let mut block_sizes: HashMap<u64, u32> = HashMap::new();
    let mut first_ns = None;
    while let Some(record) = reader.next_record()? {
        match record {
            Record::BufioOps(ops) => {
                for op in ops {
                    let Some(step) = step_of(op.kind, op.result, op.arg0, op.arg1) else {
                        continue;
                    };
                    let first = *first_ns.get_or_insert(op.start_ns);
                    by_client
                        .entry(op.client)
                        .or_default()
                        .entry(op.tid)
                        .or_default()
                        .push(TimedStep {
                            at_ns: op.start_ns.saturating_sub(first),
                            block: op.block,
                            step,
                        });
                }
            }
            Record::Metadata(Metadata::Client {
                addr, block_size, ..
            }) => {
                block_sizes.insert(addr, block_size);
            }
            _ => {}
        }
    }
    let clients = by_client.len();
    // The busiest client: replaying several clients into one cache would mix their blocks.
    let Some((client, threads)) = by_client
        .into_iter()
        .max_by_key(|(_, threads)| threads.values().map(Vec::len).sum::<usize>())
    else {
        bail!(
            "{} holds no dm-bufio operations (recorded where dm-bufio probes were absent?); \
             nothing to replay",
            path.display()
        );
    };
    let mut streams: Vec<Stream> = threads
        .into_iter()
        .map(|(tid, steps)| Stream { tid, steps })
        .collect();
    streams.sort_by_key(|s| s.tid);
    let steps = streams.iter().map(|s| s.steps.len()).sum();
    Ok(Loaded {
        streams,
        client,
        clients,
        block_size: block_sizes.get(&client).copied().unwrap_or(4096),
        steps,
    })
}

fn step_of(kind: OpKind, result: OpResult, arg0: u32, arg1: u32) -> Option<Step> {
    Some(match kind {
        OpKind::Get => Step::Get {
            missed: result == OpResult::Miss,
        },
        OpKind::Read => Step::Read,
        OpKind::New => Step::New,
        OpKind::Prefetch => Step::Prefetch { blocks: arg0 },
        OpKind::Release => Step::Release,
        OpKind::MarkDirty => Step::MarkDirty,
        OpKind::MarkPartialDirty => Step::MarkPartialDirty {
            start: arg0,
            end: arg1,
        },
        OpKind::WriteDirtyAsync => Step::WriteDirtyAsync,
        OpKind::WriteDirty => Step::WriteDirty,
        OpKind::Forget => Step::Forget,
        OpKind::ForgetBuffers => Step::ForgetBuffers { blocks: arg0 },
        OpKind::ClientCreate | OpKind::ClientDestroy => return None,
    })
}

pub fn run(o: &Options) -> anyhow::Result<ExitCode> {
    let loaded = load(&o.file)?;
    let designs: Vec<&str> = if o.designs.iter().any(|d| d == "all") {
        DESIGNS.to_vec()
    } else {
        o.designs.iter().map(String::as_str).collect()
    };
    if !o.json {
        eprintln!(
            "bufscope: {} operations by {} threads on client {:#x} ({} B blocks){}",
            thousands(loaded.steps as u64),
            loaded.streams.len(),
            loaded.client,
            loaded.block_size,
            if loaded.clients > 1 {
                format!(
                    "; the busiest of {} clients, the others are left out",
                    loaded.clients
                )
            } else {
                String::new()
            }
        );
    }
    let mut results = Vec::new();
    for design in designs {
        let io: Arc<dyn BlockIo> = match &o.device {
            Some(path) => Arc::new(
                FileIo::open(
                    path,
                    loaded.block_size as usize,
                    FileIoOptions {
                        direct: o.direct,
                        allow_writes: o.allow_writes,
                    },
                )
                .with_context(|| format!("opening --device {}", path.display()))?,
            ),
            None => Arc::new(MemoryIo::new(
                loaded.block_size as usize,
                o.io_latency.map_or(Latency::None, Latency::Fixed),
            )),
        };
        let mut config = CacheConfig::new(loaded.block_size as usize, o.capacity);
        if let Some(cpus) = o.cpus {
            config.cpus = cpus.max(1);
        }
        let cache = Arc::from(build(design, config, io).expect("validated design"));
        if !o.json {
            eprintln!("bufscope: replaying through {design}...");
        }
        let options = ReplayOptions {
            threads: o.threads,
            speed: o.speed,
            log: false,
        };
        results.push(replay(cache, loaded.streams.clone(), options));
    }
    if o.json {
        let designs: Vec<_> = results.iter().map(to_json).collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "file": o.file.display().to_string(),
                "client": loaded.client,
                "operations": loaded.steps,
                "threads": loaded.streams.len(),
                "designs": designs,
            }))?
        );
    } else {
        print_table(&results);
    }
    Ok(ExitCode::SUCCESS)
}

fn quantile_us(h: &hdrhistogram::Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        0.0
    } else {
        h.value_at_quantile(q) as f64 / 1e3
    }
}

fn to_json(r: &ReplayResult) -> serde_json::Value {
    let ops = r.report.ops();
    let locks: Vec<_> = LockClass::ALL
        .iter()
        .map(|&class| {
            let c = r.report.class(class);
            json!({
                "class": class.name(),
                "acquisitions": c.acquisitions,
                "contended": c.contended,
                "wait_p50_ns": c.wait_ns.value_at_quantile(0.5),
                "wait_p99_ns": c.wait_ns.value_at_quantile(0.99),
                "wait_max_ns": c.wait_ns.max(),
                "hold_p50_ns": c.hold_ns.value_at_quantile(0.5),
            })
        })
        .collect();
    let latency: serde_json::Map<String, serde_json::Value> = Step::NAMES
        .iter()
        .zip(&r.latency_ns)
        .filter(|(_, h)| !h.is_empty())
        .map(|(name, h)| {
            let stats = json!({
                "count": h.len(),
                "p50_ns": h.value_at_quantile(0.5),
                "p99_ns": h.value_at_quantile(0.99),
                "max_ns": h.max(),
            });
            (name.to_string(), stats)
        })
        .collect();
    json!({
        "design": r.design,
        "latency": latency,
        "elapsed_s": r.elapsed.as_secs_f64(),
        "ops_per_s": r.steps_per_sec(),
        "hits": ops.hits,
        "misses": ops.misses,
        "reads": ops.reads,
        "writes": ops.writes,
        "evictions": ops.evictions,
        "locks": locks,
        "mismatches": {
            "not_held": r.mismatches.not_held,
            "extra_hits": r.mismatches.extra_hits,
            "held_at_end": r.mismatches.held_at_end,
            "io_errors": r.mismatches.io_errors,
            "first_io_error": r.first_io_error,
        },
    })
}

fn print_table(results: &[ReplayResult]) {
    println!(
        "{:<8} {:>12} {:>9} {:>10} {:>10}",
        "design", "ops/s", "elapsed", "hit ratio", "evictions"
    );
    for r in results {
        let ops = r.report.ops();
        println!(
            "{:<8} {:>12} {:>8.2}s {:>9.1}% {:>10}",
            r.design,
            thousands(r.steps_per_sec() as u64),
            r.elapsed.as_secs_f64(),
            100.0 * ops.hits as f64 / (ops.hits + ops.misses).max(1) as f64,
            thousands(ops.evictions),
        );
    }
    println!();
    println!(
        "{:<8} {:<18} {:>12} {:>11} {:>10} {:>10} {:>10}",
        "design", "lock", "acquired", "contended", "wait p50", "wait p99", "wait max"
    );
    for r in results {
        for class in LockClass::ALL {
            let c = r.report.class(class);
            if c.acquisitions == 0 {
                continue;
            }
            println!(
                "{:<8} {:<18} {:>12} {:>11} {:>8.1}us {:>8.1}us {:>8.1}us",
                r.design,
                class.name(),
                thousands(c.acquisitions),
                thousands(c.contended),
                quantile_us(&c.wait_ns, 0.5),
                quantile_us(&c.wait_ns, 0.99),
                c.wait_ns.max() as f64 / 1e3,
            );
        }
    }
    for r in results {
        let m = r.mismatches;
        if m.not_held + m.extra_hits + m.held_at_end + m.io_errors > 0 {
            println!(
                "{}: {} releases/dirtyings of unheld buffers, {} extra get hits, {} held at the end, {} I/O errors",
                r.design, m.not_held, m.extra_hits, m.held_at_end, m.io_errors
            );
        }
        if let Some(error) = &r.first_io_error {
            println!("{}: first I/O error: {error}", r.design);
        }
    }
}
