//! `bufscope synth WORKLOAD -o FILE`: traces of dm-bufio operations made without a kernel.
//!
//! - hotspot: dmtest's t_hotspots, the test behind the 6.4 rework's 25x: hotspot threads each
//!   reading and releasing their own region pass after pass, while one dirtier reads, dirties and
//!   releases its way across the device once.
//! - hotspot2: each region warmed with new (dirtied), then the same passes, no dirtier.
//!
//! Operations are stamped 500 ns apart on each thread and written merged in time order.

use std::{
    fs::File,
    io::BufWriter,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{Context, bail};
use bufscope::system;
use bufscope_trace::{BufioOp, Metadata, OpKind, OpResult, TraceHeader, TraceWriter};

use super::thousands;

/// The synthetic client every synthetic operation names.
pub const SYNTHETIC_CLIENT: u64 = 1;
const STEP_NS: u64 = 500;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    Hotspot,
    Hotspot2,
}

#[derive(Debug, clap::Args)]
pub struct Options {
    /// The workload to generate.
    #[arg(value_enum)]
    pub workload: Workload,
    /// Trace file to write.
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
    /// Hotspot threads; thread n owns blocks [n*R, n*R + R-1].
    #[arg(long, default_value_t = 16)]
    pub hotspot_threads: u32,
    /// Blocks per hotspot region (R).
    #[arg(long, default_value_t = 1024)]
    pub region_blocks: u64,
    /// Passes of read+release over each region.
    #[arg(long, default_value_t = 512)]
    pub passes: u32,
    /// Blocks the dirtier walks from block 0 (hotspot only).
    #[arg(long, default_value_t = 262_144)]
    pub dirtier_blocks: u64,
    /// Block size in bytes.
    #[arg(long, default_value_t = 4096)]
    pub block_size: u32,
    /// Overwrite FILE if it exists.
    #[arg(long)]
    pub force: bool,
}

/// One synthetic thread: a tid and its operations, generated lazily.
struct Thread {
    tid: u32,
    ops: Box<dyn Iterator<Item = (OpKind, u64)>>,
}

fn threads(o: &Options) -> Vec<Thread> {
    let (region, passes) = (o.region_blocks, o.passes);
    let mut threads: Vec<Thread> = (0..o.hotspot_threads)
        .map(|n| {
            let first = u64::from(n) * region;
            let warm: Box<dyn Iterator<Item = (OpKind, u64)>> = match o.workload {
                Workload::Hotspot => Box::new(std::iter::empty()),
                Workload::Hotspot2 => Box::new((first..first + region).flat_map(|b| {
                    [
                        (OpKind::New, b),
                        (OpKind::MarkDirty, b),
                        (OpKind::Release, b),
                    ]
                })),
            };
            let passes = (0..passes).flat_map(move |_| {
                (first..first + region).flat_map(|b| [(OpKind::Read, b), (OpKind::Release, b)])
            });
            Thread {
                tid: 1000 + n,
                ops: Box::new(warm.chain(passes)),
            }
        })
        .collect();
    if o.workload == Workload::Hotspot && o.dirtier_blocks > 0 {
        threads.push(Thread {
            tid: 999,
            ops: Box::new((0..o.dirtier_blocks).flat_map(|b| {
                [
                    (OpKind::Read, b),
                    (OpKind::MarkDirty, b),
                    (OpKind::Release, b),
                ]
            })),
        });
    }
    threads
}

pub fn run(o: &Options) -> anyhow::Result<ExitCode> {
    if o.hotspot_threads == 0 || o.region_blocks == 0 || o.block_size == 0 {
        bail!("--hotspot-threads, --region-blocks and --block-size must be at least 1");
    }
    refuse_overwrite(&o.output, o.force)?;
    let header =
        TraceHeader {
            writer: format!("bufscope {} synth", env!("CARGO_PKG_VERSION")),
            kernel_release: "synthetic".into(),
            host: system::host_name(),
            clock: "synthetic (500 ns per operation per thread)".into(),
            start_unix_ns: system::unix_ns(),
            start_clock_ns: 0,
            cpus: system::online_cpus(),
            probes: vec![format!(
            "synth {:?}: {} threads x {} blocks x {} passes, dirtier {} blocks, {} B blocks",
            o.workload, o.hotspot_threads, o.region_blocks, o.passes, o.dirtier_blocks, o.block_size
        )
        .to_lowercase()],
        };
    let file =
        File::create(&o.output).with_context(|| format!("creating {}", o.output.display()))?;
    let mut writer = TraceWriter::new(BufWriter::with_capacity(1 << 20, file), &header)
        .with_context(|| format!("writing {}", o.output.display()))?;
    writer.write_metadata(&Metadata::Client {
        addr: SYNTHETIC_CLIENT,
        device: "synthetic".into(),
        block_size: o.block_size,
    })?;
    let mut threads = threads(o);
    let mut step = 0u64;
    // Round-robin over threads: every thread's i-th operation is at i x 500 ns.
    let mut failed = None;
    while !threads.is_empty() && failed.is_none() {
        threads.retain_mut(|t| match t.ops.next() {
            Some((kind, block)) => {
                let op = BufioOp {
                    start_ns: step * STEP_NS,
                    duration_ns: 0,
                    client: SYNTHETIC_CLIENT,
                    block,
                    tid: t.tid,
                    tgid: 999,
                    cpu: 0,
                    kind,
                    result: OpResult::None,
                    arg0: 0,
                    arg1: 0,
                };
                match writer.push_op(op) {
                    Ok(()) => true,
                    Err(e) => {
                        failed.get_or_insert(e);
                        false
                    }
                }
            }
            None => false,
        });
        step += 1;
    }
    if let Some(e) = failed {
        return Err(e).with_context(|| format!("writing {}", o.output.display()));
    }
    let ops = writer.bufio_ops();
    let (_, _) = writer
        .finish(system::unix_ns())
        .with_context(|| format!("writing {}", o.output.display()))?;
    let bytes = std::fs::metadata(&o.output).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "bufscope: wrote {} dm-bufio operations ({} bytes) to {}; replay it with `bufscope replay {}`",
        thousands(ops),
        thousands(bytes),
        o.output.display(),
        o.output.display()
    );
    Ok(ExitCode::SUCCESS)
}

pub fn refuse_overwrite(path: &Path, force: bool) -> anyhow::Result<()> {
    if path.exists() && !force {
        bail!("{} exists; pass --force to overwrite it", path.display());
    }
    Ok(())
}
