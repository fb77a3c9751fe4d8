//! A trace file's summary, as `bufscope info` shows it: header, time span, counts per event kind
//! and lock type, the most contended locks by name and their callers, dm-bufio clients and
//! operations per kind, which probes were missing, the probes' own cost, and what was lost or
//! left unpaired.

use std::{
    collections::{BTreeMap, HashSet},
    path::Path,
};

use bufscope_abi::LockFlags;
use bufscope_trace::{
    ClientLock, Metadata, OpKind, OpResult, ProgramRun, Record, SkippedDamage, TraceError,
    TraceHeader, TraceReader,
};
use serde::Serialize;

use crate::{naming::Names, tracedata::skipped_message, units::error_chain};

/// How many named locks and callers a summary lists.
pub const TOP_ROWS: usize = 15;

/// Waits on one lock (or from one caller).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct WaitRow {
    pub name: String,
    #[serde(rename = "type")]
    pub type_name: &'static str,
    pub contended: u64,
    pub total_wait_ns: u64,
    pub max_wait_ns: u64,
    /// Waits made inside dm-bufio operations, by operation function.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub inside_ops: BTreeMap<&'static str, u64>,
}

impl WaitRow {
    fn add(&mut self, wait_ns: u64, op: Option<OpKind>) {
        self.contended += 1;
        self.total_wait_ns += wait_ns;
        self.max_wait_ns = self.max_wait_ns.max(wait_ns);
        if let Some(op) = op {
            *self.inside_ops.entry(op.function()).or_default() += 1;
        }
    }
}

/// A dm-bufio client seen in the file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ClientRow {
    pub addr: u64,
    pub device: String,
    pub block_size: u32,
    /// Tree locks (6.4+), 0 for a single-mutex client.
    pub trees: u32,
    pub ops: u64,
    /// The highest block an operation named.
    pub max_block: u64,
    pub waits_on_its_locks: u64,
    /// ...of which on its client mutex, on its client spinlock (a no-sleep client's), and on
    /// its tree locks.
    pub waits_on_mutex: u64,
    pub waits_on_spinlock: u64,
    pub waits_on_trees: u64,
    /// Created with DM_BUFIO_CLIENT_NO_SLEEP: a spinlock for the client lock, rwlocks for the
    /// trees (false where the file does not say).
    pub no_sleep: bool,
}

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
    /// Clients described by the file (device, block size, locks).
    pub client_list: Vec<ClientRow>,
    /// dm-bufio's background runs (global cleanup, shrink work, age cleanup) that took no
    /// client's lock through dm_bufio_lock/dm_bufio_unlock, so are bound to none: nothing to
    /// evict, or a trylock that failed (6.1's age cleanup skips a busy client). Not a client.
    pub clientless_runs: u64,
    /// The most contended locks by total wait, named.
    pub top_locks: Vec<WaitRow>,
    /// The callers with most total wait (from kernel stacks), named.
    pub top_callers: Vec<WaitRow>,
    /// Lock waits by the dm-bufio operation the waiter was inside ("-" for none).
    pub waits_by_op: BTreeMap<&'static str, TypeStats>,
    /// Lock waits with a kernel stack, and stacks the file carries.
    pub waits_with_stack: u64,
    pub stacks: u64,
    /// dm-bufio design seen at recording, and probe points that were missing, with why.
    pub bufio_design: Option<String>,
    /// dm-bufio's cache size in bytes as the recording began (format 1.6 on).
    pub cache_size_bytes: Option<u64>,
    pub missing_probes: BTreeMap<String, String>,
    /// The eBPF programs' runs over the recording.
    pub programs: Vec<ProgramRun>,
    /// Metadata records by type.
    pub metadata: BTreeMap<String, u64>,
    pub losses: Option<LossSummary>,
    /// Damaged records skipped (everything around them is summarised).
    pub skipped: SkippedDamage,
    /// Why reading stopped before a proper end, when it did.
    pub problem: Option<String>,
    /// True when the problem is that the file was cut short (not damaged).
    pub truncated: bool,
}

impl TraceSummary {
    /// What reading skipped as damaged, in a line (see [`skipped_message`]).
    pub fn skipped_message(&self) -> Option<String> {
        skipped_message(&self.file, &self.skipped, self.records)
    }
}

/// Reads the whole file. A file whose header cannot be read is an error; a damaged record further
/// on is skipped and reported in `skipped`; where nothing more can be read, `problem` says why,
/// after everything before it has been summarised.
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
        client_list: Vec::new(),
        clientless_runs: 0,
        top_locks: Vec::new(),
        top_callers: Vec::new(),
        waits_by_op: BTreeMap::new(),
        waits_with_stack: 0,
        stacks: 0,
        bufio_design: None,
        cache_size_bytes: None,
        missing_probes: BTreeMap::new(),
        programs: Vec::new(),
        metadata: BTreeMap::new(),
        losses: None,
        skipped: SkippedDamage::default(),
        problem: None,
        truncated: false,
    };
    let mut threads = HashSet::new();
    let mut locks = HashSet::new();
    let mut names = Names::default();
    let mut by_lock: BTreeMap<(u64, u32), WaitRow> = BTreeMap::new();
    let mut by_stack: BTreeMap<u32, WaitRow> = BTreeMap::new();
    let mut client_rows: BTreeMap<u64, ClientRow> = BTreeMap::new();
    let mut ops_by_client: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
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
                            // A mutex's spinning and sleeping begins are one lock type.
                            let type_key = if e.flags & LockFlags::MUTEX != 0 {
                                LockFlags::MUTEX
                            } else {
                                e.flags
                            };
                            by_lock
                                .entry((e.lock_addr, type_key))
                                .or_default()
                                .add(e.wait_ns, e.op);
                            if let Some(id) = e.stack_id {
                                summary.waits_with_stack += 1;
                                by_stack.entry(id).or_default().add(e.wait_ns, e.op);
                            }
                            let op = summary
                                .waits_by_op
                                .entry(e.op.map_or("-", |op| op.function()))
                                .or_default();
                            op.contended += 1;
                            op.total_wait_ns += e.wait_ns;
                            op.max_wait_ns = op.max_wait_ns.max(e.wait_ns);
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
                            if op.has_client() {
                                let (count, max_block) =
                                    ops_by_client.entry(op.client).or_default();
                                *count += 1;
                                *max_block = (*max_block).max(op.block);
                            } else {
                                summary.clientless_runs += 1;
                            }
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
                        names.add(&m);
                        match m {
                            Metadata::LossCounts {
                                kernel,
                                user_dropped,
                                ..
                            } => {
                                summary.losses = Some(LossSummary {
                                    kernel,
                                    user_dropped,
                                });
                            }
                            Metadata::Client {
                                addr,
                                device,
                                block_size,
                                locks,
                                ..
                            } => {
                                let row = client_rows.entry(addr).or_default();
                                row.addr = addr;
                                row.device = device;
                                row.block_size = block_size;
                                if let Some(locks) = locks {
                                    row.trees = locks.trees;
                                    row.no_sleep = locks.no_sleep;
                                }
                            }
                            Metadata::Stack { .. } => summary.stacks += 1,
                            Metadata::Probes {
                                bufio_design,
                                missing,
                                programs,
                                cache_size_bytes,
                            } => {
                                summary.bufio_design = bufio_design;
                                summary.cache_size_bytes = cache_size_bytes;
                                summary.missing_probes = missing;
                                summary.programs = programs;
                            }
                            _ => {}
                        }
                    }
                    Record::End(_) => {}
                }
            }
            Err(e) => {
                summary.truncated = e.is_truncation();
                summary.problem = Some(error_chain(&e));
                break;
            }
        }
    }
    summary.skipped = reader.skipped().clone();
    summary.threads = threads.len();
    summary.locks = locks.len();
    summary.clients = ops_by_client.len();

    // Names come last: clients, stacks and symbols may be written after the events.
    for ((addr, flags), mut row) in by_lock {
        row.name = names.lock_name(addr, flags);
        row.type_name = LockFlags(flags).type_name();
        if let Some((device, which)) = names.bufio_lock(addr)
            && let Some(client) = client_rows.values_mut().find(|c| c.device == device)
        {
            client.waits_on_its_locks += row.contended;
            match which {
                ClientLock::Mutex => client.waits_on_mutex += row.contended,
                ClientLock::Spinlock => client.waits_on_spinlock += row.contended,
                ClientLock::Tree(_) => client.waits_on_trees += row.contended,
            }
        }
        summary.top_locks.push(row);
    }
    summary.top_locks = top(summary.top_locks);
    // Callers: stacks merged by the name of their caller frame.
    let mut callers: BTreeMap<String, WaitRow> = BTreeMap::new();
    for (id, row) in by_stack {
        let name = names
            .caller(id)
            .unwrap_or_else(|| "(unknown caller)".into());
        let merged = callers.entry(name.clone()).or_default();
        merged.name = name;
        merged.type_name = "";
        merged.contended += row.contended;
        merged.total_wait_ns += row.total_wait_ns;
        merged.max_wait_ns = merged.max_wait_ns.max(row.max_wait_ns);
        for (op, n) in row.inside_ops {
            *merged.inside_ops.entry(op).or_default() += n;
        }
    }
    summary.top_callers = top(callers.into_values().collect());
    for (addr, (n, max_block)) in ops_by_client {
        client_rows.entry(addr).or_insert_with(|| ClientRow {
            addr,
            device: names
                .client_device(addr)
                .map_or_else(|| format!("{addr:#x}"), str::to_string),
            ..ClientRow::default()
        });
        if let Some(row) = client_rows.get_mut(&addr) {
            row.ops = n;
            row.max_block = max_block;
        }
    }
    summary.client_list = client_rows.into_values().collect();
    Ok(summary)
}

/// The rows with the most total wait, most first.
fn top(mut rows: Vec<WaitRow>) -> Vec<WaitRow> {
    rows.sort_by(|a, b| {
        b.total_wait_ns
            .cmp(&a.total_wait_ns)
            .then_with(|| a.name.cmp(&b.name))
    });
    rows.truncate(TOP_ROWS);
    rows
}

fn metadata_type(m: &Metadata) -> String {
    match m {
        Metadata::LossCounts { .. } => "loss_counts",
        Metadata::Client { .. } => "client",
        Metadata::Stack { .. } => "stack",
        Metadata::Symbols { .. } => "symbols",
        Metadata::Probes { .. } => "probes",
        Metadata::Threads { .. } => "threads",
        Metadata::Unknown => "unknown (newer format)",
    }
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tracedata::TraceData;
    use bufscope_trace::{BufioOp, OpKind};

    #[test]
    fn background_runs_that_locked_no_client_are_counted_apart_from_the_clients() {
        let client = 0xc0de;
        let mut trace = TraceData::default();
        trace.add_metadata(Metadata::Client {
            addr: client,
            device: "7:0".into(),
            block_size: 4096,
            locks: None,
            seen_ns: 0,
            destroyed_ns: None,
        });
        let at = |start_ns, kind, client, block| BufioOp {
            start_ns,
            kind,
            client,
            block,
            ..BufioOp::default()
        };
        trace.ops = vec![
            at(1_000, OpKind::Read, client, 7),
            at(2_000, OpKind::AgeCleanup, 0, 0),
            at(3_000, OpKind::Release, client, 7),
            at(4_000, OpKind::GlobalCleanup, 0, 0),
            at(5_000, OpKind::GlobalCleanup, client, 0),
        ];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.bftrace");
        trace.write(&path, false).unwrap();

        let s = summarize(&path).unwrap();
        assert_eq!((s.bufio_ops, s.clients, s.clientless_runs), (5, 1, 2));
        let devices: Vec<(&str, u64, u64)> = s
            .client_list
            .iter()
            .map(|c| (c.device.as_str(), c.ops, c.max_block))
            .collect();
        assert_eq!(devices, [("7:0", 3, 7)]);
    }
}
