//! A trace file's summary, as `bufscope info` shows it: header, time span, counts per event kind
//! and lock type, dm-bufio operations per kind, and what was lost or left unpaired.

use std::{
    collections::{BTreeMap, HashSet},
    path::Path,
};

use bufscope_abi::LockFlags;
use bufscope_trace::{Metadata, OpResult, Record, TraceError, TraceHeader, TraceReader};
use serde::Serialize;

/// Waits of one lock type, in perf lock contention's terms.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TypeStats {
    pub contended: u64,
    pub total_wait_ns: u64,
    pub max_wait_ns: u64,
}

/// dm-bufio operations of one kind.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct OpStats {
    pub count: u64,
    pub hits: u64,
    pub misses: u64,
    pub errors: u64,
    pub total_ns: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LossSummary {
    /// In-kernel counters (the last loss record of the file).
    pub kernel: BTreeMap<String, u64>,
    pub user_dropped: u64,
}

#[derive(Debug, Serialize)]
pub struct TraceSummary {
    pub file: String,
    pub format_version: String,
    pub header: TraceHeader,
    pub records: u64,
    pub lock_waits: u64,
    pub bufio_ops: u64,
    /// Event clock of the first wait's start and the last wait's end.
    pub first_ns: Option<u64>,
    pub last_ns: Option<u64>,
    pub threads: usize,
    pub locks: usize,
    pub by_type: BTreeMap<&'static str, TypeStats>,
    /// dm-bufio operations by kernel function.
    pub by_op: BTreeMap<&'static str, OpStats>,
    /// dm-bufio clients seen in operations.
    pub clients: usize,
    /// Metadata records by type.
    pub metadata: BTreeMap<String, u64>,
    pub losses: Option<LossSummary>,
    /// Why reading stopped before a proper end, when it did.
    pub problem: Option<String>,
    /// True when the problem is that the file was cut short (not damaged).
    pub truncated: bool,
}

/// Reads the whole file. A file whose header cannot be read is an error; damage further on is
/// reported in `problem` after everything before it has been summarised.
pub fn summarize(path: &Path) -> Result<TraceSummary, TraceError> {
    let mut reader = TraceReader::open(path)?;
    let (major, minor) = reader.format_version();
    let mut summary = TraceSummary {
        file: path.display().to_string(),
        format_version: format!("{major}.{minor}"),
        header: reader.header().clone(),
        records: 0,
        lock_waits: 0,
        bufio_ops: 0,
        first_ns: None,
        last_ns: None,
        threads: 0,
        locks: 0,
        by_type: BTreeMap::new(),
        by_op: BTreeMap::new(),
        clients: 0,
        metadata: BTreeMap::new(),
        losses: None,
        problem: None,
        truncated: false,
    };
    let mut threads = HashSet::new();
    let mut locks = HashSet::new();
    let mut clients = HashSet::new();
    loop {
        match reader.next_record() {
            Ok(None) => break,
            Ok(Some(record)) => {
                summary.records += 1;
                match record {
                    Record::LockWaits(events) => {
                        for e in events {
                            summary.lock_waits += 1;
                            summary.first_ns =
                                Some(summary.first_ns.map_or(e.start_ns, |f| f.min(e.start_ns)));
                            summary.last_ns =
                                Some(summary.last_ns.map_or(e.end_ns(), |l| l.max(e.end_ns())));
                            threads.insert(e.tid);
                            locks.insert(e.lock_addr);
                            let stats = summary
                                .by_type
                                .entry(LockFlags(e.flags).type_name())
                                .or_default();
                            stats.contended += 1;
                            stats.total_wait_ns += e.wait_ns;
                            stats.max_wait_ns = stats.max_wait_ns.max(e.wait_ns);
                        }
                    }
                    Record::BufioOps(ops) => {
                        for op in ops {
                            summary.bufio_ops += 1;
                            summary.first_ns =
                                Some(summary.first_ns.map_or(op.start_ns, |f| f.min(op.start_ns)));
                            summary.last_ns =
                                Some(summary.last_ns.map_or(op.end_ns(), |l| l.max(op.end_ns())));
                            threads.insert(op.tid);
                            clients.insert(op.client);
                            let stats = summary.by_op.entry(op.kind.function()).or_default();
                            stats.count += 1;
                            stats.total_ns += op.duration_ns;
                            match op.result {
                                OpResult::Hit => stats.hits += 1,
                                OpResult::Miss => stats.misses += 1,
                                OpResult::Error => stats.errors += 1,
                                OpResult::None => {}
                            }
                        }
                    }
                    Record::Metadata(m) => {
                        *summary.metadata.entry(metadata_type(&m)).or_default() += 1;
                        if let Metadata::LossCounts {
                            kernel,
                            user_dropped,
                            ..
                        } = m
                        {
                            summary.losses = Some(LossSummary {
                                kernel,
                                user_dropped,
                            });
                        }
                    }
                    Record::End(_) => {}
                }
            }
            Err(e) => {
                summary.truncated = e.is_truncation();
                summary.problem = Some(e.to_string());
                break;
            }
        }
    }
    summary.threads = threads.len();
    summary.locks = locks.len();
    summary.clients = clients.len();
    Ok(summary)
}

fn metadata_type(m: &Metadata) -> String {
    match m {
        Metadata::LossCounts { .. } => "loss_counts",
        Metadata::Client { .. } => "client",
        Metadata::Stack { .. } => "stack",
        Metadata::Symbols { .. } => "symbols",
        Metadata::Unknown => "unknown (newer format)",
    }
    .to_string()
}
