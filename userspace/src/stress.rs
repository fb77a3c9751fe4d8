//! The test bed's workload driver (`bufscope stress`): reader threads (random blocks, or each its
//! own hot region) and optional writer threads doing direct I/O on a block device or file for a
//! given time, each measuring its own ops and latency.

use std::{
    fs::File,
    io::{Seek, SeekFrom},
    path::PathBuf,
    sync::{Arc, Barrier},
    thread,
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng, rngs::SmallRng};
use reference_cache::{BlockIo, FileIo, FileIoOptions, io::OpenError};

/// Where readers read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Pattern {
    /// Every reader picks blocks uniformly over the whole device.
    Random,
    /// Reader n reads blocks [n*R, n*R + R) in order, pass after pass (the hotspot shape).
    Hot,
}

/// What to run.
#[derive(Clone, Debug)]
pub struct StressPlan {
    pub device: PathBuf,
    pub readers: u32,
    pub writers: u32,
    /// The writers may overwrite the device's blocks.
    pub allow_writes: bool,
    pub duration: Duration,
    pub pattern: Pattern,
    /// Blocks per reader's region with [`Pattern::Hot`].
    pub region_blocks: u64,
    pub block_size: usize,
    /// O_DIRECT (false: buffered, for filesystems that refuse O_DIRECT).
    pub direct: bool,
}

/// Why a run could not start or finish.
#[derive(Debug, thiserror::Error)]
pub enum StressError {
    #[error("--writers {writers} would overwrite blocks of {}; pass --allow-writes to allow it", device.display())]
    WritesNotAllowed { writers: u32, device: PathBuf },
    #[error("--threads and --writers are both 0: nothing to run")]
    NoThreads,
    #[error("sizing {}", .0.display())]
    Size(PathBuf, #[source] std::io::Error),
    #[error("{} is smaller than one {block_size}-byte block", device.display())]
    TooSmall { device: PathBuf, block_size: usize },
    #[error(
        "{readers} readers x {region_blocks} blocks of hot region exceed the device's {blocks} blocks"
    )]
    RegionsTooLarge {
        readers: u32,
        region_blocks: u64,
        blocks: u64,
    },
    #[error("opening {}", .0.display())]
    Open(PathBuf, #[source] OpenError),
    #[error("a stress thread panicked")]
    Panicked,
    #[error("I/O on {}", .0.display())]
    Io(PathBuf, #[source] std::io::Error),
}

/// Readers' or writers' totals.
#[derive(Debug)]
pub struct StressTotals {
    pub ops: u64,
    pub latency_ns: Histogram<u64>,
}

/// What a run measured.
#[derive(Debug)]
pub struct StressResult {
    pub reads: StressTotals,
    pub writes: StressTotals,
}

fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid bounds")
}

/// Runs the plan: every thread starts together and stops at the duration.
pub fn run_stress(plan: &StressPlan) -> Result<StressResult, StressError> {
    if plan.writers > 0 && !plan.allow_writes {
        return Err(StressError::WritesNotAllowed {
            writers: plan.writers,
            device: plan.device.clone(),
        });
    }
    if plan.readers + plan.writers == 0 {
        return Err(StressError::NoThreads);
    }
    let blocks = File::open(&plan.device)
        .and_then(|mut f| f.seek(SeekFrom::End(0)))
        .map_err(|e| StressError::Size(plan.device.clone(), e))?
        / plan.block_size as u64;
    if blocks == 0 {
        return Err(StressError::TooSmall {
            device: plan.device.clone(),
            block_size: plan.block_size,
        });
    }
    if plan.pattern == Pattern::Hot && u64::from(plan.readers) * plan.region_blocks > blocks {
        return Err(StressError::RegionsTooLarge {
            readers: plan.readers,
            region_blocks: plan.region_blocks,
            blocks,
        });
    }
    let io: Arc<dyn BlockIo> = Arc::new(
        FileIo::open(
            &plan.device,
            plan.block_size,
            FileIoOptions {
                direct: plan.direct,
                allow_writes: plan.writers > 0,
            },
        )
        .map_err(|e| StressError::Open(plan.device.clone(), e))?,
    );
    let threads = plan.readers + plan.writers;
    let start = Arc::new(Barrier::new(threads as usize));
    let handles: Vec<_> = (0..threads)
        .map(|n| {
            let (io, start) = (Arc::clone(&io), Arc::clone(&start));
            let writer = n >= plan.readers;
            let (pattern, region, duration, block_size) = (
                plan.pattern,
                plan.region_blocks,
                plan.duration,
                plan.block_size,
            );
            thread::spawn(move || -> std::io::Result<(bool, StressTotals)> {
                let mut rng = SmallRng::seed_from_u64(u64::from(n) + 1);
                let mut buf = vec![0u8; block_size];
                let mut latency_ns = latency_histogram();
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
                Ok((writer, StressTotals { ops, latency_ns }))
            })
        })
        .collect();
    let mut result = StressResult {
        reads: StressTotals {
            ops: 0,
            latency_ns: latency_histogram(),
        },
        writes: StressTotals {
            ops: 0,
            latency_ns: latency_histogram(),
        },
    };
    for handle in handles {
        let (writer, totals) = handle
            .join()
            .map_err(|_| StressError::Panicked)?
            .map_err(|e| StressError::Io(plan.device.clone(), e))?;
        let sum = if writer {
            &mut result.writes
        } else {
            &mut result.reads
        };
        sum.ops += totals.ops;
        sum.latency_ns.add(&totals.latency_ns).expect("same bounds");
    }
    Ok(result)
}
