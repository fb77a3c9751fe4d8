//! `bufscope export`: a trace in the formats other tools load.
//!
//! - [`perfetto`]: a Perfetto protobuf trace (ui.perfetto.dev, trace processor).
//! - [`chrome`]: Chrome Trace Event JSON (chrome://tracing, Perfetto, speedscope).
//! - [`folded`]: folded stacks weighted by wait time (flamegraph.pl, inferno, speedscope).
//! - [`table`]: every event as a row, in CSV, JSON Lines or Parquet, with one documented schema
//!   ([`table::COLUMNS`]) so that traces from many machines can be queried together.
//!
//! Every writer streams to its output and returns how many events it wrote.

pub mod chrome;
pub mod folded;
pub mod perfetto;
pub mod table;

use std::collections::{BTreeMap, HashMap, HashSet};

use bufscope_trace::{BufioOp, OpKind};

use crate::tracedata::TraceData;

/// Why an export stopped. Each keeps the writer's own error as its message.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Csv(#[from] csv::Error),
    #[error(transparent)]
    Parquet(#[from] parquet::errors::ParquetError),
}

/// The formats `--format` takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Perfetto,
    Chrome,
    Folded,
    Csv,
    Json,
    Parquet,
}

impl Format {
    /// The usual file extension.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Perfetto => "perfetto-trace",
            Format::Chrome => "json",
            Format::Folded => "folded",
            Format::Csv => "csv",
            Format::Json => "jsonl",
            Format::Parquet => "parquet",
        }
    }
}

/// Samples of the per-client counters the timeline shows, at most one per `period_ns`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CounterSample {
    pub at_ns: u64,
    pub client: u64,
    /// Operations per second over the period that ends here.
    pub ops_per_s: f64,
    /// Distinct blocks read, got or made and not forgotten: an estimate of the buffers cached
    /// (the trace does not see evictions, so it can only grow past them).
    pub blocks_cached: u64,
    /// Blocks marked dirty since the last write_dirty_buffers: an estimate of dirty buffers
    /// (writes by eviction and the background cleaner are not seen).
    pub dirty: u64,
}

/// Walks the operations in time order and samples each client's counters every `period_ns`.
pub fn counters(ops: &[BufioOp], period_ns: u64) -> Vec<CounterSample> {
    #[derive(Default)]
    struct State {
        cached: HashSet<u64>,
        dirty: HashSet<u64>,
        ops_in_period: u64,
        period_start: u64,
    }
    let mut order: Vec<&BufioOp> = ops.iter().collect();
    order.sort_by_key(|o| o.start_ns);
    let mut clients: HashMap<u64, State> = HashMap::new();
    let mut samples = Vec::new();
    let sample = |client: u64, s: &State| CounterSample {
        at_ns: s.period_start + period_ns,
        client,
        ops_per_s: s.ops_in_period as f64 * 1e9 / period_ns as f64,
        blocks_cached: s.cached.len() as u64,
        dirty: s.dirty.len() as u64,
    };
    for op in order {
        let s = clients.entry(op.client).or_insert_with(|| State {
            period_start: op.start_ns,
            ..Default::default()
        });
        if op.start_ns >= s.period_start + period_ns {
            samples.push(sample(op.client, s));
            s.ops_in_period = 0;
            s.period_start += period_ns;
            if op.start_ns >= s.period_start + period_ns {
                // An idle stretch: one sample of nothing, then on to the operation's period.
                samples.push(sample(op.client, s));
                s.period_start += (op.start_ns - s.period_start) / period_ns * period_ns;
            }
        }
        s.ops_in_period += 1;
        match op.kind {
            OpKind::Get | OpKind::Read | OpKind::New => {
                s.cached.insert(op.block);
            }
            OpKind::MarkDirty | OpKind::MarkPartialDirty => {
                s.dirty.insert(op.block);
            }
            OpKind::WriteDirty | OpKind::WriteDirtyAsync => s.dirty.clear(),
            OpKind::Forget => {
                s.cached.remove(&op.block);
                s.dirty.remove(&op.block);
            }
            OpKind::ForgetBuffers => {
                let end = op.block + u64::from(op.arg0);
                s.cached.retain(|b| !(op.block..end).contains(b));
                s.dirty.retain(|b| !(op.block..end).contains(b));
            }
            _ => {}
        }
    }
    let mut last: Vec<_> = clients.iter().map(|(&c, s)| sample(c, s)).collect();
    last.sort_by_key(|s| (s.at_ns, s.client));
    samples.extend(last);
    samples
}

/// The processes and threads a timeline shows, with their display names.
#[derive(Debug)]
pub struct Threads {
    /// Each thread's process, by thread id.
    pub tgid: BTreeMap<u32, u32>,
    /// Threads that ran dm-bufio operations.
    bufio: HashSet<u32>,
    /// The reference design, for a model run.
    design: Option<String>,
}

impl Threads {
    pub fn of(trace: &TraceData) -> Self {
        let mut tgid = BTreeMap::new();
        for (pid, tid) in trace
            .waits
            .iter()
            .map(|w| (w.tgid, w.tid))
            .chain(trace.ops.iter().map(|o| (o.tgid, o.tid)))
        {
            tgid.entry(tid).or_insert(pid);
        }
        Self {
            tgid,
            bufio: trace.ops.iter().map(|o| o.tid).collect(),
            design: trace.design.clone(),
        }
    }

    /// Every process, once, in order.
    pub fn processes(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.tgid.values().copied().collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// "pid N", or "<design> model (replay)" for a model run (whose threads have no process).
    pub fn process_name(&self, pid: u32) -> String {
        match &self.design {
            Some(design) => format!("{design} model (replay)"),
            None => format!("pid {pid}"),
        }
    }

    /// The trace has no command names: "tid N", marked "(dm-bufio)" for threads that ran
    /// dm-bufio operations.
    pub fn thread_name(&self, tid: u32) -> String {
        if self.bufio.contains(&tid) {
            format!("tid {tid} (dm-bufio)")
        } else {
            format!("tid {tid}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(start_ns: u64, kind: OpKind, block: u64) -> BufioOp {
        BufioOp {
            start_ns,
            duration_ns: 10,
            client: 1,
            block,
            kind,
            ..Default::default()
        }
    }

    #[test]
    fn counters_follow_reads_dirtying_and_writeback() {
        let ops = [
            op(0, OpKind::Read, 1),
            op(10, OpKind::Read, 2),
            op(20, OpKind::MarkDirty, 2),
            op(150, OpKind::Read, 3),
            op(160, OpKind::MarkDirty, 3),
            op(250, OpKind::WriteDirty, 0),
            op(260, OpKind::Forget, 1),
            op(1_000, OpKind::Get, 9),
        ];
        let s = counters(&ops, 100);
        let at: Vec<u64> = s.iter().map(|s| s.at_ns).collect();
        assert_eq!(at, [100, 200, 300, 400, 1100], "idle stretch skipped");
        assert_eq!(s[3].ops_per_s, 0.0);
        assert_eq!(s[4].ops_per_s, 1.0 * 1e9 / 100.0);
        assert_eq!(s[0].ops_per_s, 3.0 * 1e9 / 100.0);
        assert_eq!((s[0].blocks_cached, s[0].dirty), (2, 1));
        assert_eq!((s[1].blocks_cached, s[1].dirty), (3, 2));
        assert_eq!(
            (s[2].blocks_cached, s[2].dirty),
            (2, 0),
            "written back, 1 forgotten"
        );
    }
}
