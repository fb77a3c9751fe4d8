//! `bufscope report FILE`: perf-lock-contention-style tables of a trace's lock waits, with
//! percentiles and a log2 histogram bar per row, or (`--ops`) of how long its dm-bufio operations
//! took, or (`--calibration`) of what each dm-bufio step cost on the recording kernel; as text,
//! JSON or CSV.

use std::{io::Write, path::PathBuf, process::ExitCode};

use anyhow::bail;
use bufscope_analyses::{
    calibration,
    naming::UNNAMED_ROLE,
    op_latency::{self, OpFilter, OpLatencyReport},
    report::{self, Filter, GroupBy, Report, SortKey},
    tracedata::TraceData,
    units::{duration_ns, thousands},
};
use bufscope_trace::OpKind;

use crate::args::{DamageArgs, parse_lock_type_name};

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  \
    bufscope report samples/6.1-thin-hotspot.bftrace\n  \
    bufscope report t.bftrace --by caller --stacks\n  \
    bufscope report t.bftrace --by op --client 7:0 --sort p99\n  \
    bufscope report t.bftrace --by role\n  \
    bufscope report t.bftrace --by owner --lock \"client mutex\"   # who held it, doing what\n  \
    bufscope report t.bftrace --stack dm_thin_find_block --min-wait 10us --by tid\n  \
    bufscope report t.bftrace --ops                 # buffer acquisition latency per thread\n  \
    bufscope report t.bftrace --ops --by role --json\n  \
    bufscope report t.bftrace --ops --by op --op release --op mark_buffer_dirty\n  \
    bufscope report t.bftrace --calibration         # what each step cost on that kernel\n  \
    bufscope replay t.bftrace --design classic --trace-out classic.bftrace && \
    bufscope report classic.bftrace")]
pub struct Options {
    /// Trace file: a kernel recording, or a design's run from `replay --trace-out`.
    pub file: PathBuf,
    /// Tabulate how long dm-bufio operations took instead of lock waits: by default the buffer
    /// acquisitions (get, read, new; choose others with --op), by thread unless --by says
    /// otherwise (tid, role, op or client). Columns: count, total, avg, p50, p99, max (exact
    /// percentiles), and each thread's name and role.
    #[arg(long, conflicts_with_all = ["lock", "types", "stacks", "pids", "comm", "cgroup", "stack", "min_wait"])]
    pub ops: bool,
    /// What each dm-bufio operation kind and outcome cost on the recording kernel, for the
    /// busiest client: client-mutex hold, duration net of the thread's dm-bufio lock waits, and
    /// for misses the time outside the lock (the device read); medians and means.
    #[arg(long, conflicts_with_all = ["ops", "lock", "types", "stacks", "by", "kinds", "tids", "client", "csv", "pids", "comm", "cgroup", "stack", "min_wait"])]
    pub calibration: bool,
    /// What each row is [default: lock; with --ops: tid, and only tid, role, op or client].
    #[arg(long, value_enum)]
    pub by: Option<GroupBy>,
    /// Column to sort by, largest first (name and type: alphabetically; with --ops, contended
    /// sorts by count and name by tid, role, operation or client).
    #[arg(long, value_enum, default_value_t = SortKey::Total)]
    pub sort: SortKey,
    /// Only locks whose name contains TEXT, e.g. "client mutex" or "dm-bufio 7:0", or whose type
    /// and address do ("rwsem:W 0xffff…").
    #[arg(long, value_name = "TEXT")]
    pub lock: Option<String>,
    /// Only waits inside this dm-bufio operation: get, read, release, mark_buffer_dirty, ... or
    /// `none` for waits outside any; with --ops, only these operations (instead of get, read and
    /// new). Repeat for several.
    #[arg(long = "op", value_name = "OP", value_parser = report::parse_op)]
    pub kinds: Vec<Option<OpKind>>,
    /// Only waits (with --ops: operations) of this thread (repeat for several).
    #[arg(long = "tid", value_name = "TID")]
    pub tids: Vec<u32>,
    /// Only locks of this type: mutex, rwsem:R, rwsem:W, spinlock, ... (repeat for several).
    #[arg(long = "type", value_name = "TYPE", value_parser = parse_lock_type_name)]
    pub types: Vec<String>,
    /// Only waits (with --ops: operations) for this dm-bufio client: its device (7:0) or address
    /// (0xff...).
    #[arg(long, value_name = "CLIENT")]
    pub client: Option<String>,
    /// Only waits of this process (repeat, or comma-separated).
    #[arg(short = 'p', long = "pid", value_name = "PID", value_delimiter = ',')]
    pub pids: Vec<u32>,
    /// Only waits of threads whose name contains TEXT, e.g. kworker or bufio_hot.
    #[arg(long, value_name = "TEXT")]
    pub comm: Option<String>,
    /// Only waits of threads whose cgroup (v2 path) contains TEXT, e.g. postgresql.service.
    #[arg(long, value_name = "TEXT")]
    pub cgroup: Option<String>,
    /// Only waits whose kernel stack has a frame containing TEXT, e.g. dm_thin_find_block.
    #[arg(long, value_name = "TEXT")]
    pub stack: Option<String>,
    /// Only waits at least this long, e.g. 10us or 1ms.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub min_wait: Option<std::time::Duration>,
    /// Rows to show (0: all).
    #[arg(long, default_value_t = 20)]
    pub top: usize,
    /// Under each row, its heaviest kernel stacks, symbolized: 3, or N with `--stacks=N` (0 for
    /// all).
    #[arg(long, value_name = "N", num_args = 0..=1, require_equals = true, default_missing_value = "3")]
    pub stacks: Option<usize>,
    /// Print JSON instead of a table.
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,
    /// Print CSV instead of a table.
    #[arg(long)]
    pub csv: bool,
    #[command(flatten)]
    pub damage: DamageArgs,
}

pub fn run(o: &Options) -> anyhow::Result<ExitCode> {
    let trace = TraceData::load(&o.file)?;
    o.damage
        .check(trace.skipped_message(), trace.problem.as_deref())?;
    if let Some(problem) = &trace.problem {
        eprintln!("bufscope: warning: {problem}; reporting what came before it");
    }
    if o.ops {
        return run_ops(o, &trace);
    }
    if o.calibration {
        let Some(c) = calibration::calibrate(&trace) else {
            bail!(
                "{} holds no dm-bufio operations; nothing to calibrate",
                o.file.display()
            );
        };
        if o.json {
            println!("{}", serde_json::to_string_pretty(&c)?);
        } else {
            print!("{}", c.table());
        }
        return Ok(ExitCode::SUCCESS);
    }
    if trace.waits.is_empty() {
        bail!(
            "{} holds no lock waits{}; nothing to report",
            o.file.display(),
            if trace.ops.is_empty() {
                ""
            } else {
                " (only dm-bufio operations, none of which waited; --ops shows how long they took)"
            }
        );
    }
    let filter = Filter {
        lock: o.lock.clone(),
        ops: o.kinds.clone(),
        tids: o.tids.clone(),
        types: o.types.clone(),
        client: o.client.clone(),
        pids: o.pids.clone(),
        comm: o.comm.clone(),
        cgroup: o.cgroup.clone(),
        stack: o.stack.clone(),
        min_wait_ns: o
            .min_wait
            .map_or(0, |d| d.as_nanos().min(u128::from(u64::MAX)) as u64),
    };
    let stacks = match o.stacks {
        None => 0,
        Some(0) => usize::MAX,
        Some(n) => n,
    };
    let by = o.by.unwrap_or(GroupBy::Lock);
    let report = report::build(&trace, by, &filter, o.sort, o.top, stacks);
    if report.kept == 0 {
        bail!(
            "none of the {} lock waits in {} match the filters",
            thousands(report.waits),
            o.file.display()
        );
    }
    if o.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if o.csv {
        write_csv(&report, std::io::stdout().lock())?;
    } else {
        print_text(&report, o.stacks.is_some());
    }
    Ok(ExitCode::SUCCESS)
}

fn run_ops(o: &Options, trace: &TraceData) -> anyhow::Result<ExitCode> {
    let Some(kinds) = o.kinds.iter().copied().collect::<Option<Vec<OpKind>>>() else {
        bail!("--op none selects lock waits outside any operation; with --ops name operations");
    };
    let filter = OpFilter {
        kinds,
        tids: o.tids.clone(),
        client: o.client.clone(),
    };
    let by = o.by.unwrap_or(GroupBy::Tid);
    let report = op_latency::build(trace, by, &filter, o.sort, o.top)?;
    if o.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if o.csv {
        write_ops_csv(&report, std::io::stdout().lock())?;
    } else {
        print_ops_text(&report);
    }
    Ok(ExitCode::SUCCESS)
}

fn grouping(by: GroupBy) -> &'static str {
    match by {
        GroupBy::Lock => "lock",
        GroupBy::Caller => "caller",
        GroupBy::Op => "dm-bufio operation",
        GroupBy::Tid => "thread",
        GroupBy::Role => "thread role",
        GroupBy::Type => "lock type",
        GroupBy::Client => "dm-bufio client",
        GroupBy::Owner => "lock owner",
        GroupBy::OwnerStack => "what the owner was doing",
        GroupBy::Cgroup => "cgroup",
    }
}

fn write_ops_csv(report: &OpLatencyReport, out: impl Write) -> anyhow::Result<()> {
    let mut w = csv::Writer::from_writer(out);
    w.write_record([
        "key", "name", "role", "threads", "count", "total_ns", "avg_ns", "p50_ns", "p99_ns",
        "max_ns",
    ])?;
    for r in &report.rows {
        w.write_record([
            r.key.clone(),
            r.name.clone().unwrap_or_default(),
            r.role.clone().unwrap_or_default(),
            r.threads.to_string(),
            r.count.to_string(),
            r.total_ns.to_string(),
            r.avg_ns.to_string(),
            r.p50_ns.to_string(),
            r.p99_ns.to_string(),
            r.max_ns.to_string(),
        ])?;
    }
    w.flush()?;
    Ok(())
}

fn print_ops_text(report: &OpLatencyReport) {
    let by = grouping(report.by);
    let kinds: Vec<&str> = report
        .kinds
        .iter()
        .map(|f| f.trim_start_matches("dm_bufio_"))
        .collect();
    println!(
        "{}: {} of {} dm-bufio operations ({}), by {by}",
        report.source,
        thousands(report.kept),
        thousands(report.operations),
        kinds.join(", ")
    );
    println!();
    let columns = format!(
        "{:>10} {:>12} {:>11} {:>11} {:>11} {:>11}",
        "count", "total", "avg", "p50", "p99", "max"
    );
    if report.by == GroupBy::Tid {
        println!("{columns} {:>8}  {:<16} role", "tid", "thread");
    } else {
        println!("{columns} {:>8}  {by}", "threads");
    }
    for r in &report.rows {
        let figures = format!(
            "{:>10} {:>12} {:>11} {:>11} {:>11} {:>11}",
            thousands(r.count),
            duration_ns(r.total_ns),
            duration_ns(r.avg_ns),
            duration_ns(r.p50_ns),
            duration_ns(r.p99_ns),
            duration_ns(r.max_ns),
        );
        if report.by == GroupBy::Tid {
            println!(
                "{figures} {:>8}  {:<16} {}",
                r.key,
                r.name.as_deref().unwrap_or(UNNAMED_ROLE),
                r.role.as_deref().unwrap_or(UNNAMED_ROLE)
            );
        } else {
            println!("{figures} {:>8}  {}", thousands(r.threads), r.key);
        }
    }
    if report
        .rows
        .iter()
        .any(|r| r.role.as_deref() == Some(UNNAMED_ROLE))
    {
        println!();
        println!(
            "{UNNAMED_ROLE}: threads the file does not name (recorded before thread names were \
             kept, or exited before the recorder saw them)"
        );
    }
}

fn write_csv(report: &Report, out: impl Write) -> anyhow::Result<()> {
    let mut w = csv::Writer::from_writer(out);
    w.write_record([
        "name",
        "type",
        "contended",
        "total_wait_ns",
        "max_wait_ns",
        "avg_wait_ns",
        "p50_ns",
        "p99_ns",
        "hist_first_ns",
        "hist_log2",
    ])?;
    for r in &report.rows {
        let hist: Vec<String> = r.hist.iter().map(u64::to_string).collect();
        w.write_record([
            r.name.clone(),
            r.type_name.clone(),
            r.contended.to_string(),
            r.total_wait_ns.to_string(),
            r.max_wait_ns.to_string(),
            r.avg_wait_ns.to_string(),
            r.p50_ns.to_string(),
            r.p99_ns.to_string(),
            report::bucket_floor(r.hist_first).to_string(),
            hist.join(" "),
        ])?;
    }
    w.flush()?;
    Ok(())
}

fn print_text(report: &Report, stacks: bool) {
    let by = grouping(report.by);
    println!(
        "{}: {} of {} lock waits, by {by}",
        report.source,
        thousands(report.kept),
        thousands(report.waits)
    );
    let first = report.rows.iter().map(|r| r.hist_first).min().unwrap_or(0);
    let last = report
        .rows
        .iter()
        .map(|r| r.hist_first + r.hist.len().max(1) - 1)
        .max()
        .unwrap_or(0);
    let width = (last - first + 1).max("histogram".len());
    println!();
    println!(
        "{:>10} {:>12} {:>11} {:>11} {:>11} {:>11}  {:<11}  {:<width$}  {by}",
        "contended", "total wait", "max wait", "avg wait", "p50", "p99", "type", "histogram"
    );
    for r in &report.rows {
        println!(
            "{:>10} {:>12} {:>11} {:>11} {:>11} {:>11}  {:<11}  {:<width$}  {}",
            thousands(r.contended),
            duration_ns(r.total_wait_ns),
            duration_ns(r.max_wait_ns),
            duration_ns(r.avg_wait_ns),
            duration_ns(r.p50_ns),
            duration_ns(r.p99_ns),
            r.type_name,
            report::bar(r, first, last),
            r.name
        );
        if stacks {
            for s in &r.stacks {
                println!(
                    "{:>10} {:>12}  {}",
                    thousands(s.contended),
                    duration_ns(s.total_wait_ns),
                    s.frames.first().map_or("", String::as_str)
                );
                for frame in s.frames.iter().skip(1) {
                    println!("{:>25}{frame}", "");
                }
            }
        }
    }
    println!();
    println!(
        "histogram: log2 buckets of wait time from {} (left) to {} (right); each bar is scaled \
         to its row's fullest bucket, · is none",
        duration_ns(report::bucket_floor(first)),
        duration_ns(report::bucket_floor(last + 1))
    );
}
