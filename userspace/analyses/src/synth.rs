//! Traces of dm-bufio operations made without a kernel (`bufscope synth`).
//!
//! Every workload is a set of threads, each an ordered stream of operations; operations are
//! stamped 500 ns apart on each thread and written merged in time order, so a replay reading the
//! file sees every thread's operations interleaved as they would run. Random workloads are
//! deterministic for a given seed. Threads are named as the kernel's would be (the hotspot's
//! `bufio_hot/N` and `bufio_dirty`, as the test bed's module names its kthreads), so that reports
//! by thread role read a synthetic trace, its replays and a kernel recording alike.

use std::{
    fs::File,
    io::BufWriter,
    path::{Path, PathBuf},
};

use bufscope_trace::{BufioOp, Metadata, OpKind, OpResult, TraceHeader, TraceWriter};

/// The process every synthetic thread belongs to.
const SYNTHETIC_TGID: u32 = 999;
use rand::{Rng, SeedableRng, rngs::SmallRng};
use rand_distr::{Distribution, Zipf};

/// The synthetic client every synthetic operation names.
pub const SYNTHETIC_CLIENT: u64 = 1;
const STEP_NS: u64 = 500;

/// Why a synthetic trace could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    /// A parameter out of range, named as `synth` takes it.
    #[error("{0}")]
    Parameter(String),
    #[error("creating {}", path.display())]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing {}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum Workload {
    /// dmtest's t_hotspots, the test behind the 6.4 rework's 25x: hotspot threads each reading
    /// and releasing their own region pass after pass, while one dirtier reads, dirties and
    /// releases its way across the device once.
    Hotspot(Hotspot),
    /// t_hotspots2: each region warmed with new (dirtied), then the same passes, no dirtier.
    Hotspot2(Hotspot),
    /// Reads of blocks picked uniformly at random; some dirtied.
    Uniform(Random),
    /// Reads of blocks picked with a Zipf distribution (a few hot blocks, a long tail).
    Zipf(ZipfArgs),
    /// Every thread reads the device sequentially, from its own starting point, pass after pass.
    Scan(Scan),
    /// Root-to-leaf lookups in a B-tree with one shared root: dm-thin's mapping lookups.
    Btree(Btree),
}

#[derive(Debug, clap::Args)]
pub struct Hotspot {
    /// Hotspot threads; thread n owns blocks [n*R, n*R + R-1].
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    pub hotspot_threads: u32,
    /// Blocks per hotspot region (R).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub region_blocks: u64,
    /// Passes of read+release over each region.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    pub passes: u32,
    /// Blocks the dirtier walks from block 0 (hotspot only).
    #[arg(long, default_value_t = 262_144)]
    pub dirtier_blocks: u64,
}

#[derive(Debug, clap::Args)]
pub struct Random {
    /// Threads.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    pub threads: u32,
    /// Reads per thread.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub reads: u64,
    /// Blocks on the device.
    #[arg(long, default_value_t = 262_144, value_parser = clap::value_parser!(u64).range(1..))]
    pub blocks: u64,
    /// Percent of reads that also dirty the block.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub write_percent: u8,
}

#[derive(Debug, clap::Args)]
pub struct ZipfArgs {
    #[command(flatten)]
    pub random: Random,
    /// Zipf exponent: larger is more skewed.
    #[arg(long, default_value_t = 1.1, value_parser = parse_exponent)]
    pub exponent: f64,
}

#[derive(Debug, clap::Args)]
pub struct Scan {
    /// Threads.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    pub threads: u32,
    /// Blocks on the device.
    #[arg(long, default_value_t = 262_144, value_parser = clap::value_parser!(u64).range(1..))]
    pub blocks: u64,
    /// Passes over the device per thread.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub passes: u32,
}

#[derive(Debug, clap::Args)]
pub struct Btree {
    /// Threads doing lookups.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    pub threads: u32,
    /// Lookups per thread.
    #[arg(long, default_value_t = 50_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub lookups: u64,
    /// Children per node.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(2..))]
    pub fanout: u64,
    /// Levels, root included.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(2..=8))]
    pub depth: u32,
}

/// `--exponent`: a positive number.
fn parse_exponent(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        _ => Err(format!("`{s}` is not a positive number")),
    }
}

impl Workload {
    /// Checks the parameters a workload cannot run with.
    pub fn validate(&self) -> Result<(), SynthError> {
        let workload = self;
        let positive = |what: &str, n: u64| {
            if n == 0 {
                return Err(SynthError::Parameter(format!("{what} must be at least 1")));
            }
            Ok(())
        };
        match workload {
            Workload::Hotspot(h) | Workload::Hotspot2(h) => {
                positive("--hotspot-threads", u64::from(h.hotspot_threads))?;
                positive("--region-blocks", h.region_blocks)
            }
            Workload::Uniform(r) => {
                positive("--threads", u64::from(r.threads))?;
                positive("--blocks", r.blocks)
            }
            Workload::Zipf(z) => {
                positive("--threads", u64::from(z.random.threads))?;
                positive("--blocks", z.random.blocks)?;
                if !(z.exponent > 0.0 && z.exponent.is_finite()) {
                    return Err(SynthError::Parameter(format!(
                        "--exponent must be a positive number, not {}",
                        z.exponent
                    )));
                }
                Ok(())
            }
            Workload::Scan(s) => {
                positive("--threads", u64::from(s.threads))?;
                positive("--blocks", s.blocks)
            }
            Workload::Btree(b) => {
                positive("--threads", u64::from(b.threads))?;
                if b.fanout < 2 || !(2..=8).contains(&b.depth) {
                    return Err(SynthError::Parameter(
                        "--fanout must be at least 2 and --depth from 2 to 8".into(),
                    ));
                }
                if b.fanout.checked_pow(b.depth).is_none() {
                    return Err(SynthError::Parameter(format!(
                        "--fanout {} with --depth {} has too many nodes",
                        b.fanout, b.depth
                    )));
                }
                Ok(())
            }
        }
    }

    /// Its parameters in a few words, for the trace header.
    pub fn describe(&self) -> String {
        match self {
            Workload::Hotspot(h) | Workload::Hotspot2(h) => format!(
                "{} threads x {} blocks x {} passes, dirtier {} blocks",
                h.hotspot_threads, h.region_blocks, h.passes, h.dirtier_blocks
            ),
            Workload::Uniform(r) => format!(
                "{} threads x {} reads over {} blocks, {}% dirtied",
                r.threads, r.reads, r.blocks, r.write_percent
            ),
            Workload::Zipf(z) => format!(
                "{} threads x {} reads over {} blocks, exponent {}, {}% dirtied",
                z.random.threads,
                z.random.reads,
                z.random.blocks,
                z.exponent,
                z.random.write_percent
            ),
            Workload::Scan(s) => format!(
                "{} threads x {} passes over {} blocks",
                s.threads, s.passes, s.blocks
            ),
            Workload::Btree(b) => format!(
                "{} threads x {} lookups, fanout {}, depth {}",
                b.threads, b.lookups, b.fanout, b.depth
            ),
        }
    }

    /// Its name, as `synth` takes it.
    pub fn name(&self) -> &'static str {
        match self {
            Workload::Hotspot(_) => "hotspot",
            Workload::Hotspot2(_) => "hotspot2",
            Workload::Uniform(_) => "uniform",
            Workload::Zipf(_) => "zipf",
            Workload::Scan(_) => "scan",
            Workload::Btree(_) => "btree",
        }
    }

    /// Its threads, each with the operations it makes, generated lazily; random workloads draw
    /// from `seed`.
    pub fn threads(&self, seed: u64) -> Result<Vec<Thread>, SynthError> {
        Ok(match self {
            Workload::Hotspot(h) => hotspot(h, false),
            Workload::Hotspot2(h) => hotspot(h, true),
            Workload::Uniform(r) => {
                let blocks = r.blocks;
                random(r, seed, move |rng| rng.random_range(0..blocks))
            }
            Workload::Zipf(z) => {
                let zipf = Zipf::new(z.random.blocks as f64, z.exponent)
                    .map_err(|e| SynthError::Parameter(format!("--exponent: {e}")))?;
                random(&z.random, seed, move |rng| zipf.sample(rng) as u64 - 1)
            }
            Workload::Scan(s) => scan(s),
            Workload::Btree(b) => btree(b, seed),
        })
    }
}

type Ops = Box<dyn Iterator<Item = (OpKind, u64)>>;

/// One synthetic thread: a tid, its name and its operations, generated lazily.
pub struct Thread {
    pub tid: u32,
    /// Its `comm`: role, then `/` and its instance where the role has several threads.
    pub name: String,
    pub ops: Ops,
}

impl std::fmt::Debug for Thread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Thread")
            .field("tid", &self.tid)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

fn read_release(block: u64) -> [(OpKind, u64); 2] {
    [(OpKind::Read, block), (OpKind::Release, block)]
}

fn read_dirty_release(block: u64) -> [(OpKind, u64); 3] {
    [
        (OpKind::Read, block),
        (OpKind::MarkDirty, block),
        (OpKind::Release, block),
    ]
}

fn hotspot(h: &Hotspot, warm_with_new: bool) -> Vec<Thread> {
    let (region, passes) = (h.region_blocks, h.passes);
    let mut threads: Vec<Thread> = (0..h.hotspot_threads)
        .map(|n| {
            let first = u64::from(n) * region;
            let warm: Ops = if warm_with_new {
                Box::new((first..first + region).flat_map(|b| {
                    [
                        (OpKind::New, b),
                        (OpKind::MarkDirty, b),
                        (OpKind::Release, b),
                    ]
                }))
            } else {
                Box::new(std::iter::empty())
            };
            let passes =
                (0..passes).flat_map(move |_| (first..first + region).flat_map(read_release));
            Thread {
                tid: 1000 + n,
                name: format!("bufio_hot/{n}"),
                ops: Box::new(warm.chain(passes)),
            }
        })
        .collect();
    if !warm_with_new && h.dirtier_blocks > 0 {
        threads.push(Thread {
            tid: 999,
            name: "bufio_dirty".into(),
            ops: Box::new((0..h.dirtier_blocks).flat_map(read_dirty_release)),
        });
    }
    threads
}

/// Threads reading blocks drawn by `pick`, some dirtied.
fn random(
    r: &Random,
    seed: u64,
    pick: impl Fn(&mut SmallRng) -> u64 + Clone + 'static,
) -> Vec<Thread> {
    (0..r.threads)
        .map(|n| {
            let mut rng = SmallRng::seed_from_u64(seed.wrapping_mul(1_000_003) + u64::from(n));
            let (reads, write_percent, pick) = (r.reads, r.write_percent, pick.clone());
            let ops = (0..reads).flat_map(move |_| {
                let block = pick(&mut rng);
                let ops: Vec<_> = if rng.random_range(0..100) < write_percent {
                    read_dirty_release(block).to_vec()
                } else {
                    read_release(block).to_vec()
                };
                ops
            });
            Thread {
                tid: 1000 + n,
                name: format!("bufio_reader/{n}"),
                ops: Box::new(ops),
            }
        })
        .collect()
}

fn scan(s: &Scan) -> Vec<Thread> {
    (0..s.threads)
        .map(|n| {
            let (blocks, passes) = (s.blocks, s.passes);
            let start = blocks * u64::from(n) / u64::from(s.threads);
            let ops = (0..passes).flat_map(move |_| {
                (0..blocks).flat_map(move |i| read_release((start + i) % blocks))
            });
            Thread {
                tid: 1000 + n,
                name: format!("bufio_scan/{n}"),
                ops: Box::new(ops),
            }
        })
        .collect()
}

/// Block of node `index` on `level`: level by level from the root at block 0.
fn btree_block(fanout: u64, level: u32, index: u64) -> u64 {
    (0..level).map(|l| fanout.pow(l)).sum::<u64>() + index
}

fn btree(b: &Btree, seed: u64) -> Vec<Thread> {
    (0..b.threads)
        .map(|n| {
            let mut rng = SmallRng::seed_from_u64(seed.wrapping_mul(1_000_003) + u64::from(n));
            let (fanout, depth, lookups) = (b.fanout, b.depth, b.lookups);
            let leaves = fanout.pow(depth - 1);
            let ops = (0..lookups).flat_map(move |_| {
                // dm-btree's lookup: lock the child, then unlock the parent, down to a leaf.
                let leaf = rng.random_range(0..leaves);
                let mut ops = vec![(OpKind::Read, 0)];
                let mut parent = 0;
                for level in 1..depth {
                    let index = leaf / fanout.pow(depth - 1 - level);
                    let child = btree_block(fanout, level, index);
                    ops.push((OpKind::Read, child));
                    ops.push((OpKind::Release, parent));
                    parent = child;
                }
                ops.push((OpKind::Release, parent));
                ops
            });
            Thread {
                tid: 1000 + n,
                name: format!("bufio_btree/{n}"),
                ops: Box::new(ops),
            }
        })
        .collect()
}

/// Writes the threads' names and operations to `output`, every thread's i-th operation at
/// i × 500 ns, and returns how many operations it wrote.
pub fn write_trace(
    output: &Path,
    header: &TraceHeader,
    block_size: u32,
    mut threads: Vec<Thread>,
    end_unix_ns: u64,
) -> Result<u64, SynthError> {
    let failed_at = |source| SynthError::Write {
        path: output.to_path_buf(),
        source,
    };
    let file = File::create(output).map_err(|source| SynthError::Create {
        path: output.to_path_buf(),
        source,
    })?;
    let mut writer =
        TraceWriter::new(BufWriter::with_capacity(1 << 20, file), header).map_err(failed_at)?;
    writer
        .write_metadata(&Metadata::Client {
            addr: SYNTHETIC_CLIENT,
            device: "synthetic".into(),
            block_size,
            locks: None,
            seen_ns: 0,
            destroyed_ns: None,
        })
        .map_err(failed_at)?;
    let names = threads
        .iter()
        .map(|t| bufscope_trace::Thread {
            tid: t.tid,
            tgid: SYNTHETIC_TGID,
            comm: t.name.clone(),
            cgroup: None,
        })
        .collect();
    writer
        .write_metadata(&Metadata::Threads { threads: names })
        .map_err(failed_at)?;
    let mut step = 0u64;
    let mut failed = None;
    // Round-robin over threads: every thread's i-th operation is at i x 500 ns.
    while !threads.is_empty() && failed.is_none() {
        threads.retain_mut(|t| match t.ops.next() {
            Some((kind, block)) => {
                let op = BufioOp {
                    start_ns: step * STEP_NS,
                    duration_ns: 0,
                    client: SYNTHETIC_CLIENT,
                    block,
                    tid: t.tid,
                    tgid: SYNTHETIC_TGID,
                    cpu: 0,
                    kind,
                    result: OpResult::None,
                    ..BufioOp::default()
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
        return Err(failed_at(e));
    }
    let ops = writer.bufio_ops();
    writer.finish(end_unix_ns).map_err(failed_at)?;
    Ok(ops)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(threads: Vec<Thread>) -> Vec<Vec<(OpKind, u64)>> {
        threads.into_iter().map(|t| t.ops.collect()).collect()
    }

    #[test]
    fn a_written_hotspot_names_its_threads_as_the_kernel_test_does() {
        let h = Hotspot {
            hotspot_threads: 2,
            region_blocks: 4,
            passes: 1,
            dirtier_blocks: 3,
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.bftrace");
        let ops = write_trace(&path, &TraceHeader::default(), 512, hotspot(&h, false), 0).unwrap();
        assert_eq!(ops, 2 * 4 * 2 + 3 * 3);
        let trace = crate::tracedata::TraceData::load(&path).unwrap();
        let names = [1000, 1001, 999].map(|tid| (trace.thread_name(tid), trace.thread_role(tid)));
        assert_eq!(
            names,
            [
                (Some("bufio_hot/0"), "bufio_hot"),
                (Some("bufio_hot/1"), "bufio_hot"),
                (Some("bufio_dirty"), "bufio_dirty"),
            ]
        );
        assert!(
            trace
                .ops
                .iter()
                .all(|op| trace.thread_name(op.tid).is_some())
        );
    }

    #[test]
    fn btree_lookups_walk_root_to_leaf_releasing_each_parent_after_its_child() {
        let b = Btree {
            threads: 1,
            lookups: 3,
            fanout: 4,
            depth: 3,
        };
        let ops = collect(btree(&b, 7)).remove(0);
        assert_eq!(ops.len(), 3 * 6);
        for lookup in ops.chunks(6) {
            let kinds: Vec<_> = lookup.iter().map(|(k, _)| *k).collect();
            use OpKind::{Read, Release};
            assert_eq!(kinds, [Read, Read, Release, Read, Release, Release]);
            assert_eq!(lookup[0].1, 0, "every lookup starts at the shared root");
            let (child, leaf) = (lookup[1].1, lookup[3].1);
            assert!((1..=4).contains(&child), "level 1 is blocks 1..=4: {child}");
            assert!((5..21).contains(&leaf), "level 2 is blocks 5..21: {leaf}");
            assert_eq!((leaf - 5) / 4 + 1, child, "the leaf hangs below that child");
            assert_eq!(
                lookup[2].1, 0,
                "the root is released after the child is read"
            );
            assert_eq!(lookup[5].1, leaf);
        }
    }

    #[test]
    fn random_workloads_are_deterministic_and_stay_on_the_device() {
        let r = Random {
            threads: 2,
            reads: 500,
            blocks: 100,
            write_percent: 50,
        };
        let a = collect(random(&r, 3, |rng| rng.random_range(0..100)));
        let b = collect(random(&r, 3, |rng| rng.random_range(0..100)));
        assert_eq!(a, b, "same seed, same trace");
        assert!(a.iter().flatten().all(|&(_, block)| block < 100));
        let dirtied = a[0].iter().filter(|(k, _)| *k == OpKind::MarkDirty).count();
        assert!(
            (150..350).contains(&dirtied),
            "about half of 500: {dirtied}"
        );

        let zipf = Zipf::new(100.0, 1.5).unwrap();
        let z = collect(random(&r, 3, move |rng| zipf.sample(rng) as u64 - 1));
        let block0 = z[0]
            .iter()
            .filter(|(k, b)| *k == OpKind::Read && *b == 0)
            .count();
        assert!(
            block0 > 100,
            "the hottest block gets a large share: {block0}"
        );
    }

    #[test]
    fn scans_cover_the_device_from_each_threads_own_start() {
        let s = Scan {
            threads: 2,
            blocks: 10,
            passes: 1,
        };
        let t = collect(scan(&s));
        let reads = |ops: &[(OpKind, u64)]| -> Vec<u64> {
            ops.iter()
                .filter(|(k, _)| *k == OpKind::Read)
                .map(|(_, b)| *b)
                .collect()
        };
        assert_eq!(reads(&t[0]), (0..10).collect::<Vec<_>>());
        assert_eq!(reads(&t[1]), [5, 6, 7, 8, 9, 0, 1, 2, 3, 4]);
    }
}
