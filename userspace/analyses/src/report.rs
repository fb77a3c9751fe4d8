//! `bufscope report`'s tables: lock waits grouped by lock, caller, operation, thread, thread role,
//! lock type or dm-bufio client, in `perf lock contention`'s vocabulary (contended, total wait,
//! max wait, avg wait, type, caller or lock name) plus exact percentiles and a log2 wait histogram
//! per row.
//! Works on any [`TraceData`]: a kernel recording or a reference design's run.

use std::collections::{BTreeMap, HashMap};

use bufscope_abi::LockFlags;
use bufscope_trace::{LockWait, OpKind};
use serde::Serialize;

use crate::tracedata::TraceData;

/// What rows are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupBy {
    /// Each lock, named (perf lock contention -l).
    Lock,
    /// The function that took the lock, from its kernel stack (perf's default).
    Caller,
    /// The dm-bufio operation the waiter was inside.
    Op,
    /// The thread (perf -t), with its name when the trace has it.
    Tid,
    /// The thread's role: its name without the instance number (bufio_hot/3 → bufio_hot), `?`
    /// for threads the trace does not name.
    Role,
    /// The lock type: mutex, rwsem:R, spinlock, ...
    Type,
    /// The dm-bufio client (device) the waiter was working for.
    Client,
    /// Who held the lock when the wait began, and the dm-bufio operation it was in (mutexes
    /// and writer-held rwsems; perf lock contention -o).
    Owner,
    /// What the owner was doing: its kernel stack's first frames past the scheduler and lock
    /// code (`record --owner-stacks`); with `--stacks`, the owners' whole stacks.
    OwnerStack,
    /// The waiter's cgroup (v2 path), where the trace names its threads' cgroups.
    Cgroup,
}

/// Columns to sort by (largest first; `name` and `type` alphabetically).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SortKey {
    Contended,
    Total,
    Max,
    Avg,
    P50,
    P99,
    Name,
    Type,
}

/// Which waits to keep. Empty fields keep everything.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Locks whose name, or type and address, contain this text ([`Names::lock_matches`]).
    pub lock: Option<String>,
    /// Waits inside these operations (`None` inside the list: outside any operation).
    pub ops: Vec<Option<OpKind>>,
    pub tids: Vec<u32>,
    /// Lock type names as perf writes them.
    pub types: Vec<String>,
    /// dm-bufio client, by device ("7:0") or address ("0xff...").
    pub client: Option<String>,
    /// Waits of these processes (tgids).
    pub pids: Vec<u32>,
    /// Waits of threads whose name contains this text (the trace's thread names).
    pub comm: Option<String>,
    /// Waits of threads whose cgroup path contains this text.
    pub cgroup: Option<String>,
    /// Waits whose kernel stack has a frame containing this text (a function name).
    pub stack: Option<String>,
    /// Waits at least this long.
    pub min_wait_ns: u64,
}

/// Short operation names (`get`, `mark_dirty`, ...) or kernel functions, as `--op` takes them;
/// `none` means outside any dm-bufio operation.
pub fn parse_op(s: &str) -> Result<Option<OpKind>, String> {
    if s == "none" {
        return Ok(None);
    }
    OpKind::ALL
        .into_iter()
        .find(|k| k.function() == s || op_short(*k) == s)
        .map(Some)
        .ok_or_else(|| {
            let known: Vec<&str> = OpKind::ALL.into_iter().map(op_short).collect();
            format!("unknown operation `{s}`; known: {}, none", known.join(", "))
        })
}

/// `dm_bufio_mark_buffer_dirty` → `mark_buffer_dirty`.
pub fn op_short(kind: OpKind) -> &'static str {
    kind.function()
        .strip_prefix("dm_bufio_")
        .unwrap_or(kind.function())
}

/// Log2 buckets: bucket `i` holds waits in [2^(i-1), 2^i) ns; bucket 0 holds 0.
pub const BUCKETS: usize = 64;

pub fn bucket_of(ns: u64) -> usize {
    (u64::BITS - ns.leading_zeros()) as usize
}

/// A stack's share of a row.
#[derive(Clone, Debug, Serialize)]
pub struct StackShare {
    pub contended: u64,
    pub total_wait_ns: u64,
    /// Innermost first.
    pub frames: Vec<String>,
}

/// One row of a report.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub name: String,
    /// The lock type, or "mixed" when a row's waits have several.
    #[serde(rename = "type")]
    pub type_name: String,
    pub contended: u64,
    pub total_wait_ns: u64,
    pub max_wait_ns: u64,
    pub avg_wait_ns: u64,
    pub p50_ns: u64,
    pub p99_ns: u64,
    /// Wait counts per log2 bucket, from `hist_first` on.
    pub hist_first: usize,
    pub hist: Vec<u64>,
    /// The row's stacks by total wait, with `--stacks`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stacks: Vec<StackShare>,
}

/// A whole report.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub source: String,
    pub by: GroupBy,
    /// Waits in the trace, and those the filters kept.
    pub waits: u64,
    pub kept: u64,
    pub rows: Vec<Row>,
}

#[derive(Default)]
struct Acc {
    waits: Vec<u64>,
    types: BTreeMap<&'static str, u64>,
    stacks: HashMap<Option<u32>, (u64, u64)>,
}

impl Filter {
    fn keeps(&self, trace: &TraceData, w: &LockWait) -> bool {
        if w.wait_ns < self.min_wait_ns {
            return false;
        }
        if !self.tids.is_empty() && !self.tids.contains(&w.tid) {
            return false;
        }
        if !self.pids.is_empty() && !self.pids.contains(&w.tgid) {
            return false;
        }
        // A text filter keeps a wait whose thread has that text in its name (or cgroup).
        let has = |text: &Option<String>, value: Option<&str>| {
            text.as_ref()
                .is_none_or(|t| value.is_some_and(|v| v.contains(t.as_str())))
        };
        if !has(&self.comm, trace.names.thread_name(w.tid))
            || !has(&self.cgroup, trace.names.thread_cgroup(w.tid))
        {
            return false;
        }
        if let Some(text) = &self.stack
            && !w
                .stack_id
                .and_then(|id| trace.names.stack(id))
                .is_some_and(|frames| frames.iter().any(|f| f.contains(text.as_str())))
        {
            return false;
        }
        if !self.ops.is_empty() && !self.ops.contains(&w.op) {
            return false;
        }
        if !self.types.is_empty()
            && !self
                .types
                .iter()
                .any(|t| t == LockFlags(w.flags).type_name())
        {
            return false;
        }
        if let Some(text) = &self.lock
            && !trace.names.lock_matches(w.lock_addr, w.flags, text)
        {
            return false;
        }
        if let Some(client) = &self.client {
            let (addr, device) = client_of(trace, w);
            let by_addr = u64::from_str_radix(client.trim_start_matches("0x"), 16).ok();
            if device.as_deref() != Some(client.as_str()) && (by_addr.is_none() || by_addr != addr)
            {
                return false;
            }
        }
        true
    }
}

/// The dm-bufio client a wait was for: the operation's, else the lock's owner.
fn client_of(trace: &TraceData, w: &LockWait) -> (Option<u64>, Option<String>) {
    if w.op.is_some() && w.op_client != 0 {
        return (
            Some(w.op_client),
            trace.names.client_device(w.op_client).map(str::to_string),
        );
    }
    match trace.names.bufio_lock(w.lock_addr) {
        Some((device, _)) => (None, Some(device.to_string())),
        None => (None, None),
    }
}

fn row_name(trace: &TraceData, by: GroupBy, w: &LockWait) -> String {
    match by {
        GroupBy::Lock => trace.lock_name(w),
        GroupBy::Caller => w
            .stack_id
            .and_then(|id| trace.names.caller(id))
            .unwrap_or_else(|| "(no stack)".to_string()),
        GroupBy::Op => {
            w.op.map_or("(outside dm-bufio)", |k| k.function())
                .to_string()
        }
        GroupBy::Tid => match trace.thread_name(w.tid) {
            Some(name) => format!("tid {} {name}", w.tid),
            None => format!("tid {}", w.tid),
        },
        GroupBy::Role => trace.thread_role(w.tid).to_string(),
        GroupBy::Type => LockFlags(w.flags).type_name().to_string(),
        GroupBy::Client => match client_of(trace, w) {
            (_, Some(device)) => format!("dm-bufio {device}"),
            (Some(addr), None) => format!("dm-bufio client {addr:#x}"),
            (None, None) => "(no dm-bufio client)".to_string(),
        },
        GroupBy::Owner => trace.names.owner_name(&w.owner),
        GroupBy::OwnerStack => match w.owner.thread().and_then(|o| o.stack_id) {
            Some(id) => trace
                .names
                .doing(id)
                .unwrap_or_else(|| format!("(owner stack {id:#x} not in the file)")),
            None => "(no owner stack)".to_string(),
        },
        GroupBy::Cgroup => trace
            .names
            .thread_cgroup(w.tid)
            .unwrap_or("(cgroup not known)")
            .to_string(),
    }
}

/// The value at quantile `q` of sorted `v` (nearest rank).
pub fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

/// Groups, filters and sorts `trace`'s waits. `stacks`: keep each row's top stacks (up to this
/// many). `top`: rows to keep (0 for all).
pub fn build(
    trace: &TraceData,
    by: GroupBy,
    filter: &Filter,
    sort: SortKey,
    top: usize,
    stacks: usize,
) -> Report {
    let mut groups: HashMap<String, Acc> = HashMap::new();
    let mut kept = 0;
    for w in trace.waits.iter().filter(|w| filter.keeps(trace, w)) {
        kept += 1;
        let acc = groups.entry(row_name(trace, by, w)).or_default();
        acc.waits.push(w.wait_ns);
        *acc.types.entry(LockFlags(w.flags).type_name()).or_default() += 1;
        if stacks > 0 {
            // Grouped by what the owners did, a row's stacks are the owners'.
            let stack = match by {
                GroupBy::OwnerStack => w.owner.thread().and_then(|o| o.stack_id),
                _ => w.stack_id,
            };
            let s = acc.stacks.entry(stack).or_default();
            s.0 += 1;
            s.1 += w.wait_ns;
        }
    }
    let mut rows: Vec<Row> = groups
        .into_iter()
        .map(|(name, mut acc)| {
            acc.waits.sort_unstable();
            let total: u64 = acc.waits.iter().sum();
            let n = acc.waits.len() as u64;
            let mut buckets = [0u64; BUCKETS];
            for &w in &acc.waits {
                buckets[bucket_of(w).min(BUCKETS - 1)] += 1;
            }
            let first = buckets.iter().position(|&c| c > 0).unwrap_or(0);
            let last = buckets.iter().rposition(|&c| c > 0).unwrap_or(0);
            let mut top_stacks: Vec<_> = acc.stacks.into_iter().collect();
            top_stacks.sort_by(|a, b| b.1.1.cmp(&a.1.1).then(a.0.cmp(&b.0)));
            let stacks = top_stacks
                .into_iter()
                .take(stacks)
                .map(|(id, (contended, total_wait_ns))| StackShare {
                    contended,
                    total_wait_ns,
                    frames: id
                        .and_then(|id| trace.names.lock_stack(id))
                        .unwrap_or_else(|| vec!["(no stack)".to_string()]),
                })
                .collect();
            Row {
                name,
                type_name: match acc.types.len() {
                    1 => acc.types.keys().next().expect("one").to_string(),
                    _ => "mixed".to_string(),
                },
                contended: n,
                total_wait_ns: total,
                max_wait_ns: acc.waits.last().copied().unwrap_or(0),
                avg_wait_ns: total / n.max(1),
                p50_ns: quantile(&acc.waits, 0.5),
                p99_ns: quantile(&acc.waits, 0.99),
                hist_first: first,
                hist: buckets[first..=last].to_vec(),
                stacks,
            }
        })
        .collect();
    rows.sort_by(|a, b| {
        let key = |r: &Row| match sort {
            SortKey::Contended => r.contended,
            SortKey::Total => r.total_wait_ns,
            SortKey::Max => r.max_wait_ns,
            SortKey::Avg => r.avg_wait_ns,
            SortKey::P50 => r.p50_ns,
            SortKey::P99 => r.p99_ns,
            SortKey::Name | SortKey::Type => 0,
        };
        let by_text = match sort {
            SortKey::Name => a.name.cmp(&b.name),
            SortKey::Type => a.type_name.cmp(&b.type_name).then(a.name.cmp(&b.name)),
            _ => std::cmp::Ordering::Equal,
        };
        by_text
            .then(key(b).cmp(&key(a)))
            .then(b.total_wait_ns.cmp(&a.total_wait_ns))
            .then(a.name.cmp(&b.name))
    });
    if top > 0 {
        rows.truncate(top);
    }
    Report {
        source: trace.source.clone(),
        by,
        waits: trace.waits.len() as u64,
        kept,
        rows,
    }
}

/// A row's histogram as a bar of block characters over buckets `first..=last` (shared by all
/// rows so that bars line up), each bucket's height relative to the row's fullest.
pub fn bar(row: &Row, first: usize, last: usize) -> String {
    const LEVELS: [char; 9] = [' ', '▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let peak = row.hist.iter().copied().max().unwrap_or(0).max(1);
    (first..=last)
        .map(|b| {
            let count = b
                .checked_sub(row.hist_first)
                .and_then(|i| row.hist.get(i))
                .copied()
                .unwrap_or(0);
            if count == 0 {
                '·'
            } else {
                // Any wait shows: at least the lowest block.
                LEVELS[((count * 8).div_ceil(peak) as usize).clamp(1, 8)]
            }
        })
        .collect()
}

/// The smallest wait a bucket holds, in ns.
pub fn bucket_floor(bucket: usize) -> u64 {
    match bucket {
        0 => 0,
        b => 1u64 << (b - 1).min(63),
    }
}

#[cfg(test)]
mod tests {
    use bufscope_trace::{ClientLocks, LockOwner, Metadata, Owner, Symbol, Thread};

    use super::*;

    fn wait(lock_addr: u64, flags: u32, tid: u32, wait_ns: u64, op: Option<OpKind>) -> LockWait {
        LockWait {
            start_ns: 1,
            wait_ns,
            lock_addr,
            tid,
            tgid: 1,
            flags,
            op,
            op_client: if op.is_some() { 0xc0 } else { 0 },
            ..Default::default()
        }
    }

    fn trace() -> TraceData {
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
        let m = LockFlags::MUTEX;
        for i in 1..=100 {
            t.waits.push(wait(
                0x1000,
                m,
                10 + i % 2,
                u64::from(i) * 1000,
                Some(OpKind::Get),
            ));
        }
        t.waits
            .push(wait(0x1000, m, 10, 1_000_000, Some(OpKind::Release)));
        t.waits.push(wait(0x2000, LockFlags::SPIN, 12, 50, None));
        t.waits.push(wait(0x2000, LockFlags::SPIN, 12, 70, None));
        t
    }

    #[test]
    fn rows_group_name_and_measure_like_perf() {
        let r = build(
            &trace(),
            GroupBy::Lock,
            &Filter::default(),
            SortKey::Total,
            0,
            0,
        );
        assert_eq!((r.waits, r.kept, r.rows.len()), (103, 103, 2));
        let mutex = &r.rows[0];
        assert_eq!(mutex.name, "dm-bufio 7:0 client mutex");
        assert_eq!(mutex.type_name, "mutex");
        assert_eq!(mutex.contended, 101);
        assert_eq!(mutex.total_wait_ns, 5_050_000 + 1_000_000);
        assert_eq!(mutex.max_wait_ns, 1_000_000);
        assert_eq!(mutex.avg_wait_ns, 6_050_000 / 101);
        assert_eq!(mutex.p50_ns, 51_000);
        assert_eq!(mutex.p99_ns, 100_000);
        assert_eq!(mutex.hist.iter().sum::<u64>(), 101);
        let spin = &r.rows[1];
        assert_eq!(spin.name, "spinlock 0x2000");
        assert_eq!((spin.contended, spin.p50_ns, spin.p99_ns), (2, 50, 70));
        // 50 and 70 ns both lie in [32, 64) and [64, 128): two buckets.
        assert_eq!((spin.hist_first, spin.hist.as_slice()), (6, &[1, 1][..]));
    }

    #[test]
    fn owners_are_rows_named_with_their_thread_and_operation() {
        let mut t = trace();
        t.add_metadata(Metadata::Threads {
            threads: vec![Thread {
                tid: 812,
                tgid: 2,
                comm: "kworker/u4:2".into(),
                cgroup: None,
            }],
        });
        let dirtier = Owner {
            tid: 812,
            tgid: 2,
            op: Some(OpKind::WriteDirty),
            stack_id: None,
        };
        // The mutex waits: 60 held by the named dirtier inside write_dirty_buffers, 30 by an
        // unnamed thread outside dm-bufio, 11 found free; the spinlock keeps no owner.
        for (i, w) in t.waits.iter_mut().enumerate().take(101) {
            w.owner = match i {
                0..60 => LockOwner::Thread(dirtier),
                60..90 => LockOwner::Thread(Owner {
                    tid: 99,
                    tgid: 99,
                    op: None,
                    stack_id: None,
                }),
                _ => LockOwner::Free,
            };
        }
        let r = build(
            &t,
            GroupBy::Owner,
            &Filter::default(),
            SortKey::Contended,
            0,
            0,
        );
        let rows: Vec<(&str, u64)> = r
            .rows
            .iter()
            .map(|r| (r.name.as_str(), r.contended))
            .collect();
        assert_eq!(
            rows,
            [
                ("812 kworker/u4:2 in dm_bufio_write_dirty_buffers", 60),
                ("99", 30),
                ("(free as the wait began)", 11),
                ("(owner not known)", 2),
            ]
        );
    }

    #[test]
    fn filters_and_groupings_select_what_they_say() {
        let t = trace();
        let outside = Filter {
            ops: vec![None],
            ..Default::default()
        };
        let r = build(&t, GroupBy::Lock, &outside, SortKey::Total, 0, 0);
        assert_eq!(r.kept, 2);
        let release = Filter {
            ops: vec![parse_op("release").unwrap()],
            ..Default::default()
        };
        let r = build(&t, GroupBy::Op, &release, SortKey::Total, 0, 0);
        assert_eq!(r.rows.len(), 1);
        assert_eq!(r.rows[0].name, "dm_bufio_release");
        let by_tid = build(&t, GroupBy::Tid, &Filter::default(), SortKey::Name, 0, 0);
        let names: Vec<_> = by_tid.rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["tid 10", "tid 11", "tid 12"]);
        let client = Filter {
            client: Some("7:0".into()),
            ..Default::default()
        };
        assert_eq!(
            build(&t, GroupBy::Client, &client, SortKey::Total, 0, 0).kept,
            101
        );
        // Process, thread name, stack and length: the trace names thread 12 and gives the
        // spinlock waits a stack.
        let mut named = trace();
        named.add_metadata(Metadata::Threads {
            threads: vec![Thread {
                tid: 12,
                tgid: 12,
                comm: "kworker/1:2".into(),
                cgroup: None,
            }],
        });
        named.add_metadata(Metadata::Stack {
            id: 5,
            frames: vec![0xffff_ffff_8100_0000],
        });
        named.add_metadata(Metadata::Symbols {
            symbols: vec![Symbol {
                addr: 0xffff_ffff_8100_0000,
                name: "try_to_wake_up".into(),
                module: None,
                lock_text: false,
            }],
        });
        for w in named.waits.iter_mut().filter(|w| w.tid == 12) {
            w.stack_id = Some(5);
        }
        let kept =
            |filter: Filter| build(&named, GroupBy::Lock, &filter, SortKey::Total, 0, 0).kept;
        assert_eq!(
            kept(Filter {
                pids: vec![1],
                ..Default::default()
            }),
            103
        );
        assert_eq!(
            kept(Filter {
                pids: vec![2],
                ..Default::default()
            }),
            0
        );
        assert_eq!(
            kept(Filter {
                comm: Some("kworker".into()),
                ..Default::default()
            }),
            2
        );
        assert_eq!(
            kept(Filter {
                stack: Some("wake_up".into()),
                ..Default::default()
            }),
            2
        );
        assert_eq!(
            kept(Filter {
                stack: Some("schedule".into()),
                ..Default::default()
            }),
            0
        );
        // 1,000..100,000 ns get waits, a 1 ms release: 10 µs and up keeps 91 + 1.
        assert_eq!(
            kept(Filter {
                min_wait_ns: 10_000,
                ..Default::default()
            }),
            92
        );

        let spin = Filter {
            types: vec!["spinlock".into()],
            lock: Some("0x2000".into()),
            ..Default::default()
        };
        assert_eq!(
            build(&t, GroupBy::Type, &spin, SortKey::Total, 0, 0).kept,
            2
        );
        let top = build(
            &t,
            GroupBy::Tid,
            &Filter::default(),
            SortKey::Contended,
            1,
            0,
        );
        assert_eq!(top.rows.len(), 1);
        assert_eq!(top.rows[0].name, "tid 10", "51 waits beat 50");
        assert!(
            parse_op("lookup")
                .unwrap_err()
                .contains("mark_buffer_dirty")
        );
    }

    #[test]
    fn named_threads_show_in_tid_rows_and_group_into_roles() {
        let mut t = trace();
        let thread = |tid, comm: &str| Thread {
            tid,
            tgid: 1,
            comm: comm.into(),
            cgroup: None,
        };
        t.add_metadata(Metadata::Threads {
            threads: vec![thread(10, "bufio_hot/0"), thread(11, "bufio_hot/1")],
        });
        let by_role = build(&t, GroupBy::Role, &Filter::default(), SortKey::Total, 0, 0);
        let rows: Vec<_> = by_role
            .rows
            .iter()
            .map(|r| (r.name.as_str(), r.contended))
            .collect();
        assert_eq!(rows, [("bufio_hot", 101), ("?", 2)]);
        let by_tid = build(&t, GroupBy::Tid, &Filter::default(), SortKey::Name, 0, 0);
        let names: Vec<_> = by_tid.rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            ["tid 10 bufio_hot/0", "tid 11 bufio_hot/1", "tid 12"]
        );
    }

    #[test]
    fn bars_share_an_axis_and_show_every_bucket_with_waits() {
        let r = build(
            &trace(),
            GroupBy::Lock,
            &Filter::default(),
            SortKey::Total,
            0,
            0,
        );
        let first = r.rows.iter().map(|r| r.hist_first).min().unwrap();
        let last = r
            .rows
            .iter()
            .map(|r| r.hist_first + r.hist.len() - 1)
            .max()
            .unwrap();
        let bars: Vec<String> = r.rows.iter().map(|row| bar(row, first, last)).collect();
        assert!(bars.iter().all(|b| b.chars().count() == last - first + 1));
        assert!(
            bars[1].starts_with("▁▁") || bars[1].starts_with("██"),
            "{}",
            bars[1]
        );
        assert_eq!(
            bars[0].chars().filter(|&c| c != '·').count(),
            r.rows[0].hist.iter().filter(|&&c| c > 0).count()
        );
        assert_eq!(bucket_floor(bucket_of(1000)), 512);
    }
}
