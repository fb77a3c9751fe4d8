//! `bufscope report --ops`: how long dm-bufio operations took (by default the acquisitions: get,
//! read, new), grouped by thread, thread role, operation or client, with exact percentiles.
//! Works on any [`TraceData`]; threads are named only when the file names them. The acquisitions
//! by thread role are also what `compare` and `replay` show for each source, with the ratios of
//! their means between sources ([`acquisition_ratios`]).

use std::collections::{BTreeSet, HashMap};

use bufscope_trace::{BufioOp, OpKind};
use serde::Serialize;

use crate::{
    report::{GroupBy, SortKey, quantile},
    tracedata::TraceData,
};

/// The operations that hand a buffer to their caller: what "acquiring a buffer" means.
pub const ACQUISITIONS: [OpKind; 3] = [OpKind::Get, OpKind::Read, OpKind::New];

/// Which operations to keep.
#[derive(Clone, Debug, Default)]
pub struct OpFilter {
    /// Operation kinds; empty keeps [`ACQUISITIONS`].
    pub kinds: Vec<OpKind>,
    /// Threads; empty keeps all.
    pub tids: Vec<u32>,
    /// dm-bufio client, by device ("7:0") or address ("0xff...").
    pub client: Option<String>,
}

/// Why an operation-latency report cannot be made; each names the file.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OpLatencyError {
    #[error(
        "{trace} holds no dm-bufio operations (recorded without the dm-bufio probes, or dm-bufio \
         was not loaded); nothing to report with --ops"
    )]
    NoOperations { trace: String },
    #[error("none of the {operations} dm-bufio operations in {trace} match the filters")]
    NoneMatch { trace: String, operations: u64 },
    #[error("--by {by} groups lock waits; with --ops rows are by tid, role, op or client")]
    Grouping { by: &'static str },
    #[error("--sort type sorts lock types; operations have none")]
    Sort,
}

/// One row: the durations of a group's operations.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OpRow {
    /// The group: a tid ("1234"), a role ("bufio_hot"), a kernel function ("dm_bufio_read") or
    /// a client ("dm-bufio 253:2").
    pub key: String,
    /// The thread's name, on tid rows of a file that names it; `null` otherwise.
    pub name: Option<String>,
    /// The thread's role on tid and role rows (`?` for unnamed threads); `null` otherwise.
    pub role: Option<String>,
    /// Distinct threads in the row.
    pub threads: u64,
    pub count: u64,
    pub total_ns: u64,
    pub avg_ns: u64,
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub max_ns: u64,
}

impl OpRow {
    /// The mean duration, unrounded (`avg_ns` is rounded down to the ns).
    pub fn mean_ns(&self) -> f64 {
        self.total_ns as f64 / self.count.max(1) as f64
    }
}

/// A whole report.
#[derive(Clone, Debug, Serialize)]
pub struct OpLatencyReport {
    pub source: String,
    pub by: GroupBy,
    /// Kernel functions of the operation kinds kept.
    pub kinds: Vec<&'static str>,
    /// Operations in the trace, and those the filters kept.
    pub operations: u64,
    pub kept: u64,
    pub rows: Vec<OpRow>,
}

/// A row's group; ordered so that ties sort tids by number.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Group {
    Tid(u32),
    Role(String),
    Op(OpKind),
    Client(u64),
}

impl OpFilter {
    fn keeps(&self, trace: &TraceData, op: &BufioOp) -> bool {
        let kinds: &[OpKind] = if self.kinds.is_empty() {
            &ACQUISITIONS
        } else {
            &self.kinds
        };
        if !kinds.contains(&op.kind) {
            return false;
        }
        if !self.tids.is_empty() && !self.tids.contains(&op.tid) {
            return false;
        }
        if let Some(client) = &self.client {
            let device = trace.names.client_device(op.client);
            let by_addr = u64::from_str_radix(client.trim_start_matches("0x"), 16).ok();
            if device != Some(client.as_str()) && by_addr != Some(op.client) {
                return false;
            }
        }
        true
    }
}

fn client_key(trace: &TraceData, client: u64) -> String {
    match trace.names.client_device(client) {
        Some(device) => format!("dm-bufio {device}"),
        None => format!("dm-bufio client {client:#x}"),
    }
}

/// Groups `trace`'s operations that `filter` keeps and measures each group's durations, sorted
/// by `sort` (largest first; `name` by key, tids by number). `top`: rows to keep (0 for all).
pub fn build(
    trace: &TraceData,
    by: GroupBy,
    filter: &OpFilter,
    sort: SortKey,
    top: usize,
) -> Result<OpLatencyReport, OpLatencyError> {
    let group_of: fn(&TraceData, &BufioOp) -> Group = match by {
        GroupBy::Tid => |_, op| Group::Tid(op.tid),
        GroupBy::Role => |t, op| Group::Role(t.thread_role(op.tid).to_string()),
        GroupBy::Op => |_, op| Group::Op(op.kind),
        GroupBy::Client => |_, op| Group::Client(op.client),
        GroupBy::Lock => return Err(OpLatencyError::Grouping { by: "lock" }),
        GroupBy::Caller => return Err(OpLatencyError::Grouping { by: "caller" }),
        GroupBy::Type => return Err(OpLatencyError::Grouping { by: "type" }),
        GroupBy::Owner => return Err(OpLatencyError::Grouping { by: "owner" }),
        GroupBy::OwnerStack => return Err(OpLatencyError::Grouping { by: "owner-stack" }),
        GroupBy::Cgroup => return Err(OpLatencyError::Grouping { by: "cgroup" }),
    };
    if sort == SortKey::Type {
        return Err(OpLatencyError::Sort);
    }
    if trace.ops.is_empty() {
        return Err(OpLatencyError::NoOperations {
            trace: trace.source.clone(),
        });
    }
    let mut groups: HashMap<Group, (Vec<u64>, BTreeSet<u32>)> = HashMap::new();
    let mut kept = 0;
    for op in trace.ops.iter().filter(|op| filter.keeps(trace, op)) {
        kept += 1;
        let (durations, tids) = groups.entry(group_of(trace, op)).or_default();
        durations.push(op.duration_ns);
        tids.insert(op.tid);
    }
    if kept == 0 {
        return Err(OpLatencyError::NoneMatch {
            trace: trace.source.clone(),
            operations: trace.ops.len() as u64,
        });
    }
    let mut rows: Vec<(Group, OpRow)> = groups
        .into_iter()
        .map(|(group, (mut durations, tids))| {
            durations.sort_unstable();
            let count = durations.len() as u64;
            let total_ns: u64 = durations.iter().sum();
            let (key, name, role) = match &group {
                Group::Tid(tid) => (
                    tid.to_string(),
                    trace.thread_name(*tid).map(str::to_string),
                    Some(trace.thread_role(*tid).to_string()),
                ),
                Group::Role(role) => (role.clone(), None, Some(role.clone())),
                Group::Op(kind) => (kind.function().to_string(), None, None),
                Group::Client(client) => (client_key(trace, *client), None, None),
            };
            let row = OpRow {
                key,
                name,
                role,
                threads: tids.len() as u64,
                count,
                total_ns,
                avg_ns: total_ns / count,
                p50_ns: quantile(&durations, 0.5),
                p99_ns: quantile(&durations, 0.99),
                max_ns: durations.last().copied().unwrap_or(0),
            };
            (group, row)
        })
        .collect();
    rows.sort_by(|(ga, a), (gb, b)| {
        let value = |r: &OpRow| match sort {
            SortKey::Contended => r.count,
            SortKey::Total => r.total_ns,
            SortKey::Max => r.max_ns,
            SortKey::Avg => r.avg_ns,
            SortKey::P50 => r.p50_ns,
            SortKey::P99 => r.p99_ns,
            SortKey::Name | SortKey::Type => 0,
        };
        let by_group = if sort == SortKey::Name {
            ga.cmp(gb)
        } else {
            std::cmp::Ordering::Equal
        };
        by_group
            .then(value(b).cmp(&value(a)))
            .then(b.total_ns.cmp(&a.total_ns))
            .then(ga.cmp(gb))
    });
    if top > 0 {
        rows.truncate(top);
    }
    let kinds = if filter.kinds.is_empty() {
        &ACQUISITIONS[..]
    } else {
        &filter.kinds
    };
    Ok(OpLatencyReport {
        source: trace.source.clone(),
        by,
        kinds: kinds.iter().map(|k| k.function()).collect(),
        operations: trace.ops.len() as u64,
        kept,
        rows: rows.into_iter().map(|(_, row)| row).collect(),
    })
}

/// Buffer acquisitions (get, read, new) by thread role, roles in name order; none when the trace
/// has no acquisitions.
pub fn acquisitions_by_role(trace: &TraceData) -> Vec<OpRow> {
    build(trace, GroupBy::Role, &OpFilter::default(), SortKey::Name, 0)
        .map(|r| r.rows)
        .unwrap_or_default()
}

/// How the threads of one role fared under two sources: the mean acquisition time under
/// `numerator` over the mean under `denominator`, i.e. how many times faster `denominator`'s
/// threads got their buffers (`replay`'s classic/sharded and sharded/lockfree).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AcquisitionRatio {
    pub role: String,
    pub numerator: String,
    pub denominator: String,
    pub ratio: f64,
}

/// The ratio of each source's mean acquisition time to the next one's, for every role both
/// have; `sources` are (name, [`acquisitions_by_role`] rows), in the order the ratios pair them.
pub fn acquisition_ratios(sources: &[(&str, &[OpRow])]) -> Vec<AcquisitionRatio> {
    sources
        .windows(2)
        .flat_map(|pair| {
            let [(numerator, slower), (denominator, faster)] = pair else {
                unreachable!("windows of two")
            };
            slower.iter().filter_map(move |row| {
                let other = faster.iter().find(|r| r.key == row.key)?;
                Some(AcquisitionRatio {
                    role: row.key.clone(),
                    numerator: numerator.to_string(),
                    denominator: denominator.to_string(),
                    ratio: row.mean_ns() / other.mean_ns().max(f64::MIN_POSITIVE),
                })
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use bufscope_trace::{Metadata, Thread};

    use super::*;

    fn op(tid: u32, kind: OpKind, duration_ns: u64) -> BufioOp {
        BufioOp {
            start_ns: 1_000,
            duration_ns,
            client: 0xc0,
            tid,
            tgid: 2,
            kind,
            ..BufioOp::default()
        }
    }

    /// Two hot threads reading (tid 10: 100..=1000 ns by 100; tid 11: 1..=100 µs by 1 µs), a
    /// dirtier (tid 20) and an unnamed thread (tid 30), each also releasing (which is no
    /// acquisition).
    fn trace() -> TraceData {
        let mut t = TraceData {
            source: "hot.bftrace".into(),
            ..TraceData::default()
        };
        let thread = |tid, comm: &str| Thread {
            tid,
            tgid: 2,
            comm: comm.into(),
            cgroup: None,
        };
        t.add_metadata(Metadata::Threads {
            threads: vec![
                thread(10, "bufio_hot/0"),
                thread(11, "bufio_hot/1"),
                thread(20, "bufio_dirty"),
            ],
        });
        for i in 1..=10 {
            t.ops.push(op(10, OpKind::Read, i * 100));
        }
        for i in 1..=100 {
            t.ops.push(op(11, OpKind::Read, i * 1_000));
        }
        t.ops.push(op(20, OpKind::Get, 7));
        t.ops.push(op(20, OpKind::New, 9));
        t.ops.push(op(30, OpKind::Read, 5_000));
        for tid in [10, 11, 20, 30] {
            t.ops.push(op(tid, OpKind::Release, 1_000_000));
        }
        t
    }

    fn report(by: GroupBy, filter: &OpFilter, sort: SortKey) -> OpLatencyReport {
        build(&trace(), by, filter, sort, 0).unwrap()
    }

    fn acquisitions() -> OpFilter {
        OpFilter {
            kinds: Vec::new(),
            tids: Vec::new(),
            client: None,
        }
    }

    #[test]
    fn tid_rows_carry_name_role_and_exact_percentiles() {
        let r = report(GroupBy::Tid, &acquisitions(), SortKey::Name);
        assert_eq!((r.operations, r.kept), (117, 113), "releases are left out");
        assert_eq!(r.kinds, ["dm_bufio_get", "dm_bufio_read", "dm_bufio_new"]);
        let keys: Vec<&str> = r.rows.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(keys, ["10", "11", "20", "30"]);
        assert_eq!(
            r.rows[0],
            OpRow {
                key: "10".into(),
                name: Some("bufio_hot/0".into()),
                role: Some("bufio_hot".into()),
                threads: 1,
                count: 10,
                total_ns: 5_500,
                avg_ns: 550,
                p50_ns: 500,
                p99_ns: 1_000,
                max_ns: 1_000,
            }
        );
        let t11 = &r.rows[1];
        assert_eq!(
            (t11.count, t11.avg_ns, t11.p50_ns, t11.p99_ns, t11.max_ns),
            (100, 50_500, 50_000, 99_000, 100_000)
        );
        let dirtier = &r.rows[2];
        assert_eq!(dirtier.role.as_deref(), Some("bufio_dirty"));
        assert_eq!((dirtier.count, dirtier.p50_ns, dirtier.max_ns), (2, 7, 9));
        let unnamed = &r.rows[3];
        assert_eq!(
            (unnamed.name.as_deref(), unnamed.role.as_deref()),
            (None, Some("?"))
        );
    }

    #[test]
    fn role_rows_merge_the_instances_of_a_thread_kind() {
        let r = report(GroupBy::Role, &acquisitions(), SortKey::Total);
        let keys: Vec<&str> = r.rows.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(
            keys,
            ["bufio_hot", "?", "bufio_dirty"],
            "by total, largest first"
        );
        let hot = &r.rows[0];
        // 10 + 100 reads: 100..1000 ns and 1..100 µs; the 55th of 110 is 45 µs, the 109th
        // (ceil(0.99 × 110)) is 99 µs.
        assert_eq!(
            (hot.threads, hot.count, hot.total_ns, hot.p50_ns, hot.p99_ns),
            (2, 110, 5_055_500, 45_000, 99_000)
        );
        assert_eq!(hot.avg_ns, 5_055_500 / 110);
        assert_eq!(
            (hot.name.as_deref(), hot.role.as_deref()),
            (None, Some("bufio_hot"))
        );
        assert_eq!((r.rows[1].count, r.rows[1].p99_ns), (1, 5_000));
    }

    #[test]
    fn ratios_pair_each_source_with_the_next_by_role_from_unrounded_means() {
        let row = |key: &str, count, total_ns| OpRow {
            key: key.into(),
            name: None,
            role: Some(key.into()),
            threads: 1,
            count,
            total_ns,
            avg_ns: total_ns / count,
            p50_ns: 0,
            p99_ns: 0,
            max_ns: 0,
        };
        let classic = [row("bufio_dirty", 3, 10), row("bufio_hot", 4, 4_000)];
        let sharded = [row("bufio_hot", 4, 1_000)];
        let lockfree = [row("bufio_dirty", 1, 1), row("bufio_hot", 3, 250)];
        let ratios = acquisition_ratios(&[
            ("classic", &classic),
            ("sharded", &sharded),
            ("lockfree", &lockfree),
        ]);
        let found: Vec<(&str, &str, &str, f64)> = ratios
            .iter()
            .map(|r| {
                (
                    r.role.as_str(),
                    r.numerator.as_str(),
                    r.denominator.as_str(),
                    r.ratio,
                )
            })
            .collect();
        // bufio_dirty is missing from sharded: no ratio on either side of it.
        assert_eq!(
            found,
            [
                ("bufio_hot", "classic", "sharded", 4.0),
                ("bufio_hot", "sharded", "lockfree", 250.0 / (250.0 / 3.0)),
            ]
        );
        assert_eq!(row("x", 3, 10).mean_ns(), 10.0 / 3.0);
        assert_eq!(row("x", 3, 10).avg_ns, 3, "the rounded figure");
    }

    #[test]
    fn kinds_threads_and_clients_select_what_they_say() {
        let releases = OpFilter {
            kinds: vec![OpKind::Release],
            ..acquisitions()
        };
        let r = report(GroupBy::Op, &releases, SortKey::Total);
        assert_eq!(r.rows.len(), 1);
        assert_eq!(r.rows[0].key, "dm_bufio_release");
        assert_eq!((r.rows[0].count, r.rows[0].threads), (4, 4));
        assert_eq!(r.kinds, ["dm_bufio_release"]);

        let by_op = report(GroupBy::Op, &acquisitions(), SortKey::Contended);
        let counts: Vec<(&str, u64)> = by_op
            .rows
            .iter()
            .map(|r| (r.key.as_str(), r.count))
            .collect();
        assert_eq!(
            counts,
            [
                ("dm_bufio_read", 111),
                ("dm_bufio_new", 1),
                ("dm_bufio_get", 1)
            ],
            "by count, then by total"
        );

        let one = OpFilter {
            tids: vec![20],
            client: Some("0xc0".into()),
            ..acquisitions()
        };
        let r = report(GroupBy::Client, &one, SortKey::Total);
        assert_eq!(
            (r.kept, r.rows[0].key.as_str()),
            (2, "dm-bufio client 0xc0")
        );
        let elsewhere = OpFilter {
            client: Some("7:0".into()),
            ..acquisitions()
        };
        assert_eq!(
            build(&trace(), GroupBy::Tid, &elsewhere, SortKey::Total, 0).unwrap_err(),
            OpLatencyError::NoneMatch {
                trace: "hot.bftrace".into(),
                operations: 117
            }
        );
        assert_eq!(
            build(&trace(), GroupBy::Tid, &acquisitions(), SortKey::P99, 2)
                .unwrap()
                .rows
                .iter()
                .map(|r| r.key.as_str())
                .collect::<Vec<_>>(),
            ["11", "30"]
        );
    }

    #[test]
    fn what_cannot_be_reported_is_an_error_naming_the_file() {
        let empty = TraceData {
            source: "waits-only.bftrace".into(),
            ..TraceData::default()
        };
        let err = build(&empty, GroupBy::Tid, &acquisitions(), SortKey::Total, 0).unwrap_err();
        assert_eq!(
            err,
            OpLatencyError::NoOperations {
                trace: "waits-only.bftrace".into()
            }
        );
        assert!(
            err.to_string()
                .starts_with("waits-only.bftrace holds no dm-bufio operations")
        );
        let err = build(&trace(), GroupBy::Lock, &acquisitions(), SortKey::Total, 0).unwrap_err();
        assert_eq!(err, OpLatencyError::Grouping { by: "lock" });
        assert_eq!(
            build(&trace(), GroupBy::Op, &acquisitions(), SortKey::Type, 0).unwrap_err(),
            OpLatencyError::Sort
        );
    }
}
