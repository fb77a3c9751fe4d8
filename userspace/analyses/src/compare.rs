//! Kernel vs reference designs: the same statistics computed, by the same code, on a kernel
//! recording and on each design's run of its operations (see [`crate::models`]), and a distance
//! that says which design behaves most like the kernel.
//!
//! The distance: for each operation kind, every operation's total wait on dm-bufio's own locks
//! (client mutex and tree locks; 0 for an operation that never waited) is put in a log2 bucket,
//! and the kernel's and the design's bucket distributions are compared with the earth mover's
//! (Wasserstein-1) distance, in buckets, i.e. in doublings of wait time. 0 means the same
//! distribution; 1 means that, on average, an operation's wait is a factor 2 off (or that one in
//! k operations waits about 2^k ns where the other does not). The overall distance weights each
//! operation kind by its share of the kernel's operations.

use std::collections::{BTreeMap, HashMap};

use bufscope_trace::OpKind;
use bufscope_trace::OpResult;
use reference_cache::replay::ReplayResult;
use serde::Serialize;

use crate::{
    models::ReplayInput,
    op_latency,
    replay_check::{self, ReplayCheck},
    report::{BUCKETS, bucket_of, quantile},
    tracedata::{TraceData, WaitClass},
};

/// Wait statistics of one (operation, lock class) cell, in ns.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct WaitStats {
    pub waits: u64,
    pub total_ns: u64,
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p99_ns: u64,
    pub p999_ns: u64,
    pub max_ns: u64,
}

impl WaitStats {
    fn of(mut waits: Vec<u64>) -> Self {
        waits.sort_unstable();
        Self {
            waits: waits.len() as u64,
            total_ns: waits.iter().sum(),
            p50_ns: quantile(&waits, 0.5),
            p90_ns: quantile(&waits, 0.9),
            p99_ns: quantile(&waits, 0.99),
            p999_ns: quantile(&waits, 0.999),
            max_ns: waits.last().copied().unwrap_or(0),
        }
    }
}

/// One operation kind's numbers from one source.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct OpRow {
    pub count: u64,
    pub hits: u64,
    pub misses: u64,
    /// Operations that waited on a dm-bufio lock at all.
    pub waited: u64,
    /// Client-mutex hold inside the operation, where the source measures it.
    pub hold_p50_ns: u64,
    pub hold_total_ns: u64,
    /// Waits per lock class ("client mutex", "tree lock (read)", ...).
    pub waits: BTreeMap<&'static str, WaitStats>,
    /// Operations by log2 bucket of their total dm-bufio lock wait (bucket 0: no wait).
    pub wait_per_op: Vec<u64>,
}

/// One source's statistics: the kernel, or a design's run.
#[derive(Clone, Debug, Serialize)]
pub struct SourceStats {
    /// "kernel" or the design's name.
    pub source: String,
    /// By kernel function name.
    pub ops: BTreeMap<&'static str, OpRow>,
    /// All waits on dm-bufio locks, by lock class, and the waits on other locks.
    pub waits: BTreeMap<&'static str, WaitStats>,
    /// Waits on dm-bufio locks by log2 bucket of wait time, for plots.
    pub wait_hist: Vec<u64>,
    /// Waits on dm-bufio locks that fell inside no operation of their thread.
    pub unattributed_waits: u64,
    /// Buffer acquisitions (get, read, new) by thread role: how long they took, so a design's
    /// run predicts what the kernel's threads would have waited for their buffers.
    pub acquisitions: Vec<op_latency::OpRow>,
    /// A design's replay at a recorded pace: how late it began the operations.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub late: Option<Lateness>,
    /// A design's replay: how many of its waits were between operations the kernel kept apart.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replay_check: Option<ReplayCheck>,
}

/// How late a paced replay began its operations after their due times, in ns. Operations the
/// kernel began closer together than this may meet in the replay where they never met in the
/// kernel, or the other way round: the replay's waits between them are its own timing's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Lateness {
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p99_ns: u64,
}

impl Lateness {
    /// `None` for a replay as fast as possible, which has no due times.
    pub fn of(result: &ReplayResult) -> Option<Self> {
        let late = result.late_ns.as_ref()?;
        Some(Self {
            p50_ns: late.value_at_quantile(0.5),
            p90_ns: late.value_at_quantile(0.9),
            p99_ns: late.value_at_quantile(0.99),
        })
    }
}

impl SourceStats {
    pub fn of(source: &str, trace: &TraceData) -> Self {
        // Operations per thread, by start, to find the one each wait happened in.
        let mut by_tid: HashMap<u32, Vec<usize>> = HashMap::new();
        for (i, op) in trace.ops.iter().enumerate() {
            if op.kind != OpKind::ClientCreate && op.kind != OpKind::ClientDestroy {
                by_tid.entry(op.tid).or_default().push(i);
            }
        }
        for list in by_tid.values_mut() {
            list.sort_by_key(|&i| trace.ops[i].start_ns);
        }
        let mut op_wait = vec![0u64; trace.ops.len()];
        let mut cells: BTreeMap<(OpKind, WaitClass), Vec<u64>> = BTreeMap::new();
        let mut classes: BTreeMap<WaitClass, Vec<u64>> = BTreeMap::new();
        let mut wait_hist = vec![0u64; BUCKETS];
        let mut unattributed = 0;
        for w in &trace.waits {
            let class = trace.wait_class(w);
            classes.entry(class).or_default().push(w.wait_ns);
            if class == WaitClass::Other {
                continue;
            }
            wait_hist[bucket_of(w.wait_ns).min(BUCKETS - 1)] += 1;
            let within = by_tid.get(&w.tid).and_then(|list| {
                let after = list.partition_point(|&i| trace.ops[i].start_ns <= w.start_ns);
                let &i = list.get(after.checked_sub(1)?)?;
                (w.start_ns <= trace.ops[i].end_ns()).then_some(i)
            });
            match within {
                Some(i) => {
                    op_wait[i] += w.wait_ns;
                    cells
                        .entry((trace.ops[i].kind, class))
                        .or_default()
                        .push(w.wait_ns);
                }
                None => unattributed += 1,
            }
        }
        let mut ops: BTreeMap<&'static str, OpRow> = BTreeMap::new();
        let mut holds: BTreeMap<&'static str, Vec<u64>> = BTreeMap::new();
        for (op, &wait) in trace.ops.iter().zip(&op_wait) {
            if op.kind == OpKind::ClientCreate || op.kind == OpKind::ClientDestroy {
                continue;
            }
            let row = ops.entry(op.kind.function()).or_insert_with(|| OpRow {
                wait_per_op: vec![0; BUCKETS],
                ..Default::default()
            });
            row.count += 1;
            match op.result {
                OpResult::Hit => row.hits += 1,
                OpResult::Miss => row.misses += 1,
                _ => {}
            }
            if wait > 0 {
                row.waited += 1;
            }
            row.wait_per_op[bucket_of(wait).min(BUCKETS - 1)] += 1;
            if op.lock_hold_ns > 0 {
                holds
                    .entry(op.kind.function())
                    .or_default()
                    .push(op.lock_hold_ns);
            }
        }
        for (name, mut hold) in holds {
            hold.sort_unstable();
            let row = ops.get_mut(name).expect("row made above");
            row.hold_p50_ns = quantile(&hold, 0.5);
            row.hold_total_ns = hold.iter().sum();
        }
        for ((kind, class), waits) in cells {
            if let Some(row) = ops.get_mut(kind.function()) {
                row.waits.insert(class.name(), WaitStats::of(waits));
            }
        }
        Self {
            source: source.to_string(),
            ops,
            waits: classes
                .into_iter()
                .map(|(c, w)| (c.name(), WaitStats::of(w)))
                .collect(),
            wait_hist,
            unattributed_waits: unattributed,
            acquisitions: op_latency::acquisitions_by_role(trace),
            late: None,
            replay_check: None,
        }
    }

    /// A design's replay of `input` (from `kernel`), whose run as a trace is `model`: its
    /// figures, how late it kept the recorded pace, and how many of its waits the kernel's
    /// operations could not have made.
    pub fn of_replay(
        kernel: &TraceData,
        input: &ReplayInput,
        result: &ReplayResult,
        model: &TraceData,
    ) -> Self {
        Self {
            late: Lateness::of(result),
            replay_check: Some(replay_check::check(kernel, input.client, model)),
            ..Self::of(result.design.name(), model)
        }
    }
}

/// Earth mover's distance between two histograms over the same buckets, each normalised to 1,
/// in buckets. `None` when either is empty.
pub fn emd(a: &[u64], b: &[u64]) -> Option<f64> {
    let (ta, tb) = (a.iter().sum::<u64>(), b.iter().sum::<u64>());
    if ta == 0 || tb == 0 {
        return None;
    }
    let (mut ca, mut cb, mut distance) = (0.0, 0.0, 0.0);
    for i in 0..a.len().max(b.len()) {
        ca += *a.get(i).unwrap_or(&0) as f64 / ta as f64;
        cb += *b.get(i).unwrap_or(&0) as f64 / tb as f64;
        distance += (ca - cb).abs();
    }
    Some(distance)
}

/// How far one design is from the kernel.
#[derive(Clone, Debug, Serialize)]
pub struct Distance {
    pub design: String,
    /// Weighted over operation kinds by the kernel's counts.
    pub overall: f64,
    /// By kernel function name.
    pub per_op: BTreeMap<&'static str, f64>,
}

/// The kernel and the designs, side by side.
#[derive(Clone, Debug, Serialize)]
pub struct Comparison {
    pub file: String,
    pub kernel: SourceStats,
    pub designs: Vec<SourceStats>,
    pub distances: Vec<Distance>,
    /// The design with the smallest overall distance; of designs within [`ALIKE`] of it, the
    /// first in the order asked for.
    pub closest: Option<String>,
    pub distance_definition: &'static str,
}

/// Overall distances closer than this (in doublings of wait time) do not tell designs apart:
/// one operation in 100 a doubling off, or one in 1,000 waiting a microsecond where the other
/// does not wait. A trace whose kernel never waited (6.12 thin-hotspot)
/// puts sharded (1 wait in 495,327 operations in one replay) and lockfree (none) this close.
pub const ALIKE: f64 = 0.01;

pub const DISTANCE_DEFINITION: &str = "earth mover's distance between the kernel's and the \
    design's distributions of each operation's total wait on dm-bufio locks (log2 buckets, no \
    wait = its own bucket), in doublings of wait time, weighted by the kernel's operation counts";

pub fn compare(file: &str, kernel: SourceStats, designs: Vec<SourceStats>) -> Comparison {
    let total_ops: u64 = kernel.ops.values().map(|r| r.count).sum();
    let distances: Vec<Distance> = designs
        .iter()
        .map(|d| {
            let mut per_op = BTreeMap::new();
            let mut weighted = 0.0;
            for (name, k) in &kernel.ops {
                let Some(theirs) = d.ops.get(name) else {
                    continue;
                };
                if let Some(e) = emd(&k.wait_per_op, &theirs.wait_per_op) {
                    per_op.insert(*name, e);
                    weighted += e * k.count as f64 / total_ops.max(1) as f64;
                }
            }
            Distance {
                design: d.source.clone(),
                overall: weighted,
                per_op,
            }
        })
        .collect();
    let best = distances
        .iter()
        .map(|d| d.overall)
        .min_by(|a, b| a.total_cmp(b));
    let closest = best.and_then(|best| {
        distances
            .iter()
            .find(|d| d.overall < best + ALIKE)
            .map(|d| d.design.clone())
    });
    Comparison {
        file: file.to_string(),
        kernel,
        designs,
        distances,
        closest,
        distance_definition: DISTANCE_DEFINITION,
    }
}

#[cfg(test)]
mod tests {
    use bufscope_abi::LockFlags;
    use bufscope_trace::{BufioOp, ClientLocks, LockWait, Metadata};

    use super::*;

    #[test]
    fn emd_is_zero_for_equal_shapes_and_counts_doublings() {
        assert_eq!(emd(&[10, 0, 0], &[1, 0, 0]), Some(0.0));
        // All mass one bucket up: distance 1; three buckets up: 3.
        assert_eq!(emd(&[1, 0, 0, 0], &[0, 1, 0, 0]), Some(1.0));
        assert_eq!(emd(&[1, 0, 0, 0], &[0, 0, 0, 5]), Some(3.0));
        // Half the operations wait 2^3 ns where none did: 0.5 × 4 buckets.
        assert_eq!(emd(&[2, 0, 0, 0, 0], &[1, 0, 0, 0, 1]), Some(2.0));
        assert_eq!(emd(&[0, 0], &[1, 0]), None);
    }

    fn trace(waits_per_op: &[u64]) -> TraceData {
        let mut t = TraceData::default();
        t.add_metadata(Metadata::Client {
            addr: 0xc0,
            device: "7:0".into(),
            block_size: 4096,
            locks: Some(ClientLocks {
                mutex: 0x1000,
                trees: 0,
                first_tree: 0,
                tree_stride: 0,
                ..Default::default()
            }),
            seen_ns: 0,
            destroyed_ns: None,
        });
        for (i, &wait) in waits_per_op.iter().enumerate() {
            let start = i as u64 * 10_000;
            t.ops.push(BufioOp {
                start_ns: start,
                duration_ns: 5_000,
                client: 0xc0,
                tid: 7,
                kind: OpKind::Get,
                result: OpResult::Hit,
                lock_hold_ns: 100,
                ..Default::default()
            });
            if wait > 0 {
                t.waits.push(LockWait {
                    start_ns: start + 10,
                    wait_ns: wait,
                    lock_addr: 0x1000,
                    tid: 7,
                    flags: LockFlags::MUTEX,
                    op: Some(OpKind::Get),
                    op_client: 0xc0,
                    ..Default::default()
                });
            }
        }
        // A wait on another lock outside any operation: counted, not charged.
        t.waits.push(LockWait {
            start_ns: 1,
            wait_ns: 5,
            lock_addr: 0x9000,
            tid: 8,
            flags: LockFlags::SPIN,
            ..Default::default()
        });
        t
    }

    #[test]
    fn waits_are_charged_to_their_operation_and_the_closest_design_wins() {
        let kernel = SourceStats::of("kernel", &trace(&[0, 0, 1000, 1000]));
        let get = &kernel.ops["dm_bufio_get"];
        assert_eq!((get.count, get.hits, get.waited), (4, 4, 2));
        assert_eq!(get.waits["client mutex"].waits, 2);
        assert_eq!(get.waits["client mutex"].total_ns, 2000);
        assert_eq!(get.hold_p50_ns, 100);
        assert_eq!(get.wait_per_op[0], 2);
        assert_eq!(get.wait_per_op[bucket_of(1000)], 2);
        assert_eq!(kernel.waits["other locks"].waits, 1);
        assert_eq!(kernel.unattributed_waits, 0);

        let alike = SourceStats::of("alike", &trace(&[0, 1000, 0, 1000]));
        let calm = SourceStats::of("calm", &trace(&[0, 0, 0, 0]));
        let worse = SourceStats::of("worse", &trace(&[1 << 20; 4]));
        let c = compare("f", kernel, vec![calm, alike, worse]);
        assert_eq!(c.closest.as_deref(), Some("alike"));
        let d: Vec<f64> = c.distances.iter().map(|d| d.overall).collect();
        assert_eq!(d[1], 0.0);
        assert!(d[0] > 0.0 && d[0] < d[2], "{d:?}");
        // Half of calm's operations are bucket_of(1000) = 10 buckets away.
        assert_eq!(d[0], 5.0);
    }

    #[test]
    fn designs_alike_to_within_the_distance_s_resolution_go_by_the_order_asked_for() {
        // The kernel never waited; "rare" waited once in 2,000 operations, "calm" never: both
        // are as close as the distance can tell, and the first asked for is named.
        let kernel = SourceStats::of("kernel", &trace(&[0; 2000]));
        let mut rare_waits = [0; 2000];
        rare_waits[0] = 1000;
        let rare = SourceStats::of("rare", &trace(&rare_waits));
        let calm = SourceStats::of("calm", &trace(&[0; 2000]));
        let c = compare("f", kernel.clone(), vec![rare.clone(), calm.clone()]);
        assert!(c.distances[0].overall < ALIKE, "{:?}", c.distances);
        assert_eq!(c.closest.as_deref(), Some("rare"));
        let c = compare("f", kernel.clone(), vec![calm.clone(), rare]);
        assert_eq!(c.closest.as_deref(), Some("calm"));
        // Farther than that, the nearer one wins whatever the order.
        let busy = SourceStats::of("busy", &trace(&[1000; 2000]));
        let c = compare("f", kernel, vec![busy, calm]);
        assert_eq!(c.closest.as_deref(), Some("calm"));
    }
}
