//! `bufscope replay FILE`: the trace's dm-bufio operations through each reference design, on a
//! device or in memory, with a summary table (or JSON) of throughput, hits, lock waits, and how
//! long each thread role's buffer acquisitions took under each design, with the ratios of their
//! means from one design to the next (classic/sharded, sharded/lockfree).

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use anyhow::{Context, bail};
use bufscope_analyses::{
    compare::Lateness,
    models::{ReplayInput, as_trace, run_design},
    op_latency::{AcquisitionRatio, OpRow, acquisition_ratios, acquisitions_by_role},
    tracedata::TraceData,
    units::{duration_ns, thousands},
};
use reference_cache::{
    Design, LockClass,
    replay::{ReplayResult, Step},
};
use serde_json::json;

use crate::args::{
    DamageArgs, DesignArg, ModelArgs, at_least_one, chosen_designs, parse_design, parse_speed,
};

#[derive(Debug, clap::Args)]
pub struct Options {
    /// Trace file to replay.
    pub file: PathBuf,
    /// Designs to replay through (repeat, or `all`; default: classic, sharded and lockfree).
    #[arg(long = "design", value_parser = parse_design)]
    pub designs: Vec<DesignArg>,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Time scale for recorded gaps: 2 replays twice as fast (default: as fast as possible).
    #[arg(long, value_parser = parse_speed)]
    pub speed: Option<f64>,
    /// CPUs the sharded design sizes its trees for (default: this machine's).
    #[arg(long, value_parser = at_least_one())]
    pub cpus: Option<usize>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Play the trace in the live view's screens (kernel waits, clients, the designs fed the
    /// same operations, charts): p pauses, ← → seek, + - change the speed (default 1).
    #[arg(long, conflicts_with_all = ["json", "trace_out"])]
    pub tui: bool,
    /// Also write each design's run as a trace file (operations and lock waits, named like the
    /// kernel's), for `report`, `export` and `info`. With several designs, the design's name goes
    /// before the extension: `run.bftrace` becomes `run.classic.bftrace`, ...
    #[arg(long, value_name = "FILE")]
    pub trace_out: Option<PathBuf>,
    /// Overwrite --trace-out files that exist.
    #[arg(long, requires = "trace_out")]
    pub force: bool,
    #[command(flatten)]
    pub damage: DamageArgs,
}

pub fn run(o: &Options) -> anyhow::Result<ExitCode> {
    let trace = TraceData::load(&o.file)?;
    o.damage
        .check(trace.skipped_message(), trace.problem.as_deref())?;
    if o.tui {
        let cpus = o
            .cpus
            .or(Some(trace.header.cpus as usize).filter(|c| *c > 0));
        let designs = chosen_designs(&o.designs);
        let calibration = o.model.calibration(&trace);
        let shadow = o.model.options(cpus, Some(1.0), true, calibration.as_ref());
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?
            .block_on(bufscope::live::session::run_replay(
                trace,
                o.speed.unwrap_or(1.0),
                designs,
                shadow,
                Duration::from_secs(1),
            ))?;
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(problem) = &trace.problem {
        eprintln!("bufscope: warning: {problem}; replaying what came before it");
    }
    let Some(input) = ReplayInput::from_trace(&trace) else {
        bail!(
            "{} holds no dm-bufio operations (recorded where dm-bufio probes were absent?); \
             nothing to replay",
            o.file.display()
        );
    };
    let designs = chosen_designs(&o.designs);
    if !o.json {
        eprintln!(
            "bufscope: {} operations by {} threads on client {:#x} ({} B blocks){}",
            thousands(input.steps as u64),
            input.streams.len(),
            input.client,
            input.block_size,
            if input.clients > 1 {
                format!(
                    "; the busiest of {} clients, the others are left out",
                    input.clients
                )
            } else {
                String::new()
            }
        );
    }
    let calibration = o.model.calibration(&trace);
    if let Some(c) = &calibration
        && !o.json
    {
        eprint!(
            "bufscope: calibrated timing (--timing host for none): the designs' steps take these costs:\n{}",
            c.table()
        );
    }
    // Logged: each operation's duration gives the acquisitions by role.
    let options = o.model.options(o.cpus, o.speed, true, calibration.as_ref());
    if !o.json {
        eprintln!(
            "bufscope: the designs' caches: {}",
            input.kernel_cache.describe(&options)
        );
    }
    let mut results = Vec::new();
    let mut acquisitions = Vec::new();
    for &design in &designs {
        if !o.json {
            eprintln!("bufscope: replaying through {design}...");
        }
        let mut result = run_design(design, &input, &options)?;
        let model = as_trace(&result, &input, &trace).expect("the replay kept a log");
        // The log and its trace hold every operation: keep one design's at a time.
        result.log = None;
        acquisitions.push(acquisitions_by_role(&model));
        if let Some(out) = &o.trace_out {
            let path = trace_out_path(out, design, designs.len());
            model.write(&path, o.force)?;
            eprintln!(
                "bufscope: wrote {} ({} operations, {} lock waits)",
                path.display(),
                thousands(model.ops.len() as u64),
                thousands(model.waits.len() as u64)
            );
        }
        results.push(result);
    }
    let sources: Vec<(&str, &[OpRow])> = results
        .iter()
        .zip(&acquisitions)
        .map(|(r, rows)| (r.design.name(), rows.as_slice()))
        .collect();
    let ratios = acquisition_ratios(&sources);
    if o.json {
        let designs: Vec<_> = results
            .iter()
            .zip(&acquisitions)
            .map(|(r, rows)| to_json(r, rows))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "file": o.file.display().to_string(),
                "client": input.client,
                "operations": input.steps,
                "threads": input.streams.len(),
                "designs": designs,
                "acquisition_ratios": ratios,
            }))?
        );
    } else {
        print_table(&results);
        print_acquisitions(&sources, &ratios);
    }
    Ok(ExitCode::SUCCESS)
}

/// `out` itself for one design; for several, the design's name before the extension
/// (`run.bftrace` → `run.classic.bftrace`).
fn trace_out_path(out: &Path, design: Design, designs: usize) -> PathBuf {
    if designs == 1 {
        return out.to_path_buf();
    }
    let stem = out
        .file_stem()
        .map_or_else(Default::default, |s| s.to_string_lossy());
    let name = match out.extension() {
        Some(ext) => format!("{stem}.{design}.{}", ext.to_string_lossy()),
        None => format!("{stem}.{design}"),
    };
    out.with_file_name(name)
}

fn quantile_us(h: &hdrhistogram::Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        0.0
    } else {
        h.value_at_quantile(q) as f64 / 1e3
    }
}

fn to_json(r: &ReplayResult, acquisitions: &[OpRow]) -> serde_json::Value {
    let ops = r.report.ops();
    let locks: Vec<_> = LockClass::ALL
        .iter()
        .map(|&class| {
            let c = r.report.class(class);
            json!({
                "class": class.name(),
                "acquisitions": c.acquisitions,
                "contended": c.contended,
                "wait_p50_ns": c.wait_ns.value_at_quantile(0.5),
                "wait_p99_ns": c.wait_ns.value_at_quantile(0.99),
                "wait_max_ns": c.wait_ns.max(),
                "hold_p50_ns": c.hold_ns.value_at_quantile(0.5),
            })
        })
        .collect();
    let latency: serde_json::Map<String, serde_json::Value> = Step::NAMES
        .iter()
        .zip(&r.latency_ns)
        .filter(|(_, h)| !h.is_empty())
        .map(|(name, h)| {
            let stats = json!({
                "count": h.len(),
                "p50_ns": h.value_at_quantile(0.5),
                "p99_ns": h.value_at_quantile(0.99),
                "max_ns": h.max(),
            });
            (name.to_string(), stats)
        })
        .collect();
    json!({
        "design": r.design.name(),
        "latency": latency,
        "elapsed_s": r.elapsed.as_secs_f64(),
        "late": Lateness::of(r),
        "ops_per_s": r.steps_per_sec(),
        "hits": ops.hits,
        "misses": ops.misses,
        "reads": ops.reads,
        "writes": ops.writes,
        "evictions": ops.evictions,
        "locks": locks,
        "acquisitions": acquisitions,
        "mismatches": {
            "not_held": r.mismatches.not_held,
            "extra_hits": r.mismatches.extra_hits,
            "cold_gets": r.mismatches.cold_gets,
            "held_at_end": r.mismatches.held_at_end,
            "io_errors": r.mismatches.io_errors,
            "first_io_error": r.first_io_error,
        },
    })
}

fn print_table(results: &[ReplayResult]) {
    println!(
        "{:<15} {:>12} {:>9} {:>10} {:>10}",
        "design", "ops/s", "elapsed", "hit ratio", "evictions"
    );
    for r in results {
        let ops = r.report.ops();
        println!(
            "{:<15} {:>12} {:>8.2}s {:>9.1}% {:>10}",
            r.design,
            thousands(r.steps_per_sec() as u64),
            r.elapsed.as_secs_f64(),
            100.0 * ops.hits as f64 / (ops.hits + ops.misses).max(1) as f64,
            thousands(ops.evictions),
        );
    }
    println!();
    println!(
        "{:<15} {:<19} {:>12} {:>11} {:>10} {:>10} {:>10}",
        "design", "lock", "acquired", "contended", "wait p50", "wait p99", "wait max"
    );
    for r in results {
        for class in LockClass::ALL {
            let c = r.report.class(class);
            if c.acquisitions == 0 {
                continue;
            }
            println!(
                "{:<15} {:<19} {:>12} {:>11} {:>8.1}us {:>8.1}us {:>8.1}us",
                r.design,
                class.name(),
                thousands(c.acquisitions),
                thousands(c.contended),
                quantile_us(&c.wait_ns, 0.5),
                quantile_us(&c.wait_ns, 0.99),
                c.wait_ns.max() as f64 / 1e3,
            );
        }
    }
    for r in results {
        let m = r.mismatches;
        if m.cold_gets > 0 {
            println!(
                "{}: {} gets that hit in the recording found a cold cache here and read the block",
                r.design,
                thousands(m.cold_gets)
            );
        }
        if m.not_held + m.extra_hits + m.held_at_end + m.io_errors > 0 {
            println!(
                "{}: {} releases/dirtyings of unheld buffers, {} extra get hits, {} held at the end, {} I/O errors",
                r.design, m.not_held, m.extra_hits, m.held_at_end, m.io_errors
            );
        }
        if let Some(error) = &r.first_io_error {
            println!("{}: first I/O error: {error}", r.design);
        }
        if let Some(l) = Lateness::of(r) {
            println!(
                "{}: began its operations late against the recorded pace by p50 {}, p90 {}, p99 \
                 {} (operations recorded closer together than that may meet here where they did \
                 not in the kernel)",
                r.design,
                duration_ns(l.p50_ns),
                duration_ns(l.p90_ns),
                duration_ns(l.p99_ns)
            );
        }
    }
}

/// Buffer acquisitions (get, read, new) by thread role under each design, then each role's
/// ratio of mean acquisition time from one design to the next.
fn print_acquisitions(sources: &[(&str, &[OpRow])], ratios: &[AcquisitionRatio]) {
    let mut roles: Vec<&str> = sources
        .iter()
        .flat_map(|(_, rows)| rows.iter().map(|r| r.key.as_str()))
        .collect();
    roles.sort_unstable();
    roles.dedup();
    if roles.is_empty() {
        return;
    }
    println!();
    println!(
        "{:<16} {:<8} {:>8} {:>12} {:>11} {:>11} {:>11}",
        "acquisitions", "design", "threads", "count", "mean", "p50", "p99"
    );
    for role in &roles {
        let mut first = true;
        for (design, rows) in sources {
            let Some(row) = rows.iter().find(|r| r.key == *role) else {
                continue;
            };
            println!(
                "{:<16} {:<8} {:>8} {:>12} {:>11} {:>11} {:>11}",
                if first { role } else { "" },
                design,
                row.threads,
                thousands(row.count),
                duration_ns(row.avg_ns),
                duration_ns(row.p50_ns),
                duration_ns(row.p99_ns),
            );
            first = false;
        }
    }
    if ratios.is_empty() {
        return;
    }
    let pairs: Vec<(&str, &str)> = sources.windows(2).map(|w| (w[0].0, w[1].0)).collect();
    println!();
    print!("{:<16}", "mean ratio");
    for (numerator, denominator) in &pairs {
        print!(" {:>17}", format!("{numerator}/{denominator}"));
    }
    println!();
    for role in &roles {
        print!("{role:<16}");
        for (numerator, denominator) in &pairs {
            let ratio = ratios.iter().find(|r| {
                r.role == *role && r.numerator == *numerator && r.denominator == *denominator
            });
            print!(
                " {:>17}",
                ratio.map_or("-".to_string(), |r| format!("{:.2}x", r.ratio))
            );
        }
        println!();
    }
}
