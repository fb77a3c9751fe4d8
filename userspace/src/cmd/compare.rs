//! `bufscope compare FILE`: replays a kernel recording's dm-bufio operations through the
//! reference designs and puts the kernel and each design side by side, per operation and lock
//! class, with the design closest to the kernel by a stated distance (see `bufscope_analyses::compare`).

use std::{io::Write, path::PathBuf, process::ExitCode};

use anyhow::Context;
use bufscope_analyses::{
    compare::{ALIKE, Comparison, SourceStats, WaitStats, compare},
    models::{ReplayInput, as_trace, run_design},
    plot,
    report::{self, Filter, GroupBy, SortKey},
    tracedata::{TraceData, WaitClass},
    units::{duration_ns, thousands},
};
use reference_cache::replay::ReplayClock;

use crate::args::{
    DamageArgs, DesignArg, ModelArgs, at_least_one, chosen_designs, parse_design, parse_plot_path,
    parse_speed,
};

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  \
    bufscope compare samples/6.1-thin-hotspot.bftrace\n  \
    bufscope compare t.bftrace --design classic --design sharded --plot waits.svg\n  \
    bufscope compare t.bftrace --asap --json")]
pub struct Options {
    /// Kernel trace file with dm-bufio operations (from `bufscope record`).
    pub file: PathBuf,
    /// Designs to compare with (repeat, or `all`; default: classic, sharded and lockfree).
    #[arg(long = "design", value_parser = parse_design)]
    pub designs: Vec<DesignArg>,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Time scale for recorded gaps: 2 replays twice as fast as recorded (default 1: as
    /// recorded, so the designs see the kernel's arrival pattern).
    #[arg(long, value_parser = parse_speed, default_value_t = 1.0, conflicts_with = "asap")]
    pub speed: f64,
    /// Replay as fast as possible instead (a stress test of each design, not a like-for-like
    /// comparison).
    #[arg(long)]
    pub asap: bool,
    /// CPUs the sharded design sizes its trees for (default: the recorded kernel's).
    #[arg(long, value_parser = at_least_one())]
    pub cpus: Option<usize>,
    /// Print JSON instead of tables.
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,
    /// Print CSV instead of tables: one row per operation, lock class and source.
    #[arg(long)]
    pub csv: bool,
    /// Also draw wait-time histograms and CDFs of kernel and designs into this file (.svg or
    /// .png).
    #[arg(long, value_name = "FILE", value_parser = parse_plot_path)]
    pub plot: Option<PathBuf>,
    #[command(flatten)]
    pub damage: DamageArgs,
}

pub fn run(o: &Options) -> anyhow::Result<ExitCode> {
    let trace = TraceData::load(&o.file)?;
    o.damage
        .check(trace.skipped_message(), trace.problem.as_deref())?;
    if let Some(problem) = &trace.problem {
        eprintln!("bufscope: warning: {problem}; comparing what came before it");
    }
    let Some(input) = ReplayInput::from_trace(&trace) else {
        return no_operations(o, &trace);
    };
    let cpus = o
        .cpus
        .or((trace.header.cpus > 0).then_some(trace.header.cpus as usize));
    let speed = (!o.asap).then_some(o.speed);
    let calibration = o.model.calibration(&trace);
    if let Some(c) = &calibration
        && !o.json
        && !o.csv
    {
        eprint!(
            "bufscope: calibrated timing (--timing host for none): the designs' steps take these costs:\n{}",
            c.table()
        );
    }
    let options = o.model.options(cpus, speed, true, calibration.as_ref());
    let span_s = input
        .streams
        .iter()
        .filter_map(|s| s.steps.last())
        .map(|s| s.at_ns)
        .max()
        .unwrap_or(0) as f64
        / 1e9;
    eprintln!(
        "bufscope: {} operations by {} threads on client {} ({} B blocks){}",
        thousands(input.steps as u64),
        input.streams.len(),
        input.device,
        input.block_size,
        if input.clients > 1 {
            format!("; the busiest of {} clients", input.clients)
        } else {
            String::new()
        }
    );
    eprintln!(
        "bufscope: the designs' caches: {}",
        input.kernel_cache.describe(&options)
    );
    let kernel = SourceStats::of("kernel", &trace);
    let mut designs = Vec::new();
    for design in chosen_designs(&o.designs) {
        match speed {
            Some(speed) if matches!(options.replay.clock, ReplayClock::Simulated { .. }) => {
                eprintln!(
                    "bufscope: simulating {design} in virtual time at {speed}x recorded speed..."
                )
            }
            Some(speed) => eprintln!(
                "bufscope: replaying through {design} at {speed}x recorded speed (about {:.0} s)...",
                span_s / speed
            ),
            None => eprintln!("bufscope: replaying through {design} as fast as possible..."),
        }
        let result = run_design(design, &input, &options)?;
        let model = as_trace(&result, &input, &trace).expect("the replay kept a log");
        designs.push(SourceStats::of_replay(&trace, &input, &result, &model));
    }
    let comparison = compare(&o.file.display().to_string(), kernel, designs);
    if let Some(path) = &o.plot {
        plot::draw(&comparison, path).with_context(|| format!("drawing {}", path.display()))?;
        eprintln!("bufscope: wrote {}", path.display());
    }
    if o.json {
        println!("{}", serde_json::to_string_pretty(&comparison)?);
    } else if o.csv {
        write_csv(&comparison, std::io::stdout().lock())?;
    } else {
        print_text(&comparison, &trace);
    }
    Ok(ExitCode::SUCCESS)
}

/// A trace without dm-bufio operations: nothing to replay. Says so, shows its locks, fails.
fn no_operations(o: &Options, trace: &TraceData) -> anyhow::Result<ExitCode> {
    eprintln!(
        "bufscope: error: {} holds no dm-bufio operations (recorded with --no-bufio, or where \
         dm_bufio was not loaded), so there is nothing to replay through the designs",
        o.file.display()
    );
    if trace.waits.is_empty() {
        eprintln!("bufscope: it holds no lock waits either");
        return Ok(ExitCode::FAILURE);
    }
    eprintln!("bufscope: its lock waits, for what they are worth:");
    let locks = report::build(
        trace,
        GroupBy::Lock,
        &Filter::default(),
        SortKey::Total,
        10,
        0,
    );
    println!(
        "{:>10} {:>12} {:>11} {:>11}  {:<11}  lock",
        "contended", "total wait", "max wait", "p99", "type"
    );
    for r in &locks.rows {
        println!(
            "{:>10} {:>12} {:>11} {:>11}  {:<11}  {}",
            thousands(r.contended),
            duration_ns(r.total_wait_ns),
            duration_ns(r.max_wait_ns),
            duration_ns(r.p99_ns),
            r.type_name,
            r.name
        );
    }
    Ok(ExitCode::FAILURE)
}

fn sources(c: &Comparison) -> impl Iterator<Item = &SourceStats> {
    std::iter::once(&c.kernel).chain(&c.designs)
}

fn distance(c: &Comparison, source: &str, op: &str) -> Option<f64> {
    let d = c.distances.iter().find(|d| d.design == source)?;
    d.per_op.get(op).copied()
}

fn ratio(theirs: u64, kernel: u64) -> String {
    match (theirs, kernel) {
        (0, 0) => "=".to_string(),
        (_, 0) => "new".to_string(),
        _ => format!("{:.2}x", theirs as f64 / kernel as f64),
    }
}

/// Buffer acquisition time by thread role, kernel and designs: what each design predicts these
/// threads would have taken to get their buffers, and its speed-up over the kernel's mean.
fn print_acquisitions(c: &Comparison) {
    if c.kernel.acquisitions.is_empty() {
        return;
    }
    println!();
    println!(
        "{:<16} {:<9} {:>8} {:>10} {:>11} {:>10} {:>10}  speed-up vs kernel",
        "acquisitions", "source", "threads", "count", "mean", "p50", "p99"
    );
    for kernel in &c.kernel.acquisitions {
        for (i, s) in sources(c).enumerate() {
            let Some(row) = s.acquisitions.iter().find(|r| r.key == kernel.key) else {
                continue;
            };
            println!(
                "{:<16} {:<9} {:>8} {:>10} {:>11} {:>10} {:>10}  {}",
                if i == 0 { kernel.key.as_str() } else { "" },
                s.source,
                row.threads,
                thousands(row.count),
                duration_ns(row.avg_ns),
                duration_ns(row.p50_ns),
                duration_ns(row.p99_ns),
                if i == 0 {
                    String::new()
                } else {
                    format!("{:.2}x", kernel.avg_ns as f64 / row.avg_ns.max(1) as f64)
                }
            );
        }
    }
}

fn print_text(c: &Comparison, trace: &TraceData) {
    println!(
        "{}: kernel {} ({} CPUs){} vs reference designs",
        c.file,
        trace.header.kernel_release,
        trace.header.cpus,
        trace
            .kernel_design
            .as_deref()
            .map_or(String::new(), |d| format!(", {d} dm-bufio")),
    );
    println!();
    println!(
        "{:<30} {:<9} {:>10} {:>10} {:>8} {:>8} {:>10} {:>9}",
        "operation", "source", "ops", "hits", "misses", "waited", "hold p50", "distance"
    );
    for name in c.kernel.ops.keys() {
        for s in sources(c) {
            let Some(row) = s.ops.get(name) else { continue };
            println!(
                "{:<30} {:<9} {:>10} {:>10} {:>8} {:>7.2}% {:>10} {:>9}",
                if s.source == "kernel" { name } else { "" },
                s.source,
                thousands(row.count),
                thousands(row.hits),
                thousands(row.misses),
                100.0 * row.waited as f64 / row.count.max(1) as f64,
                if row.hold_p50_ns > 0 {
                    duration_ns(row.hold_p50_ns)
                } else {
                    "-".to_string()
                },
                distance(c, &s.source, name).map_or("-".to_string(), |d| format!("{d:.2}"))
            );
        }
    }
    println!();
    println!(
        "{:<30} {:<17} {:<9} {:>8} {:>11} {:>10} {:>10} {:>10} {:>10} {:>10} {:>9}",
        "operation",
        "lock",
        "source",
        "waits",
        "total wait",
        "p50",
        "p90",
        "p99",
        "p99.9",
        "max",
        "vs kernel"
    );
    for name in c.kernel.ops.keys() {
        for class in WaitClass::ALL {
            let cell = |s: &SourceStats| -> Option<WaitStats> {
                s.ops.get(name)?.waits.get(class.name()).cloned()
            };
            if sources(c).all(|s| cell(s).is_none()) {
                continue;
            }
            let kernel = cell(&c.kernel).unwrap_or_default();
            for (i, s) in sources(c).enumerate() {
                let w = cell(s).unwrap_or_default();
                let ns = |v: u64| {
                    if w.waits == 0 {
                        "-".to_string()
                    } else {
                        duration_ns(v)
                    }
                };
                println!(
                    "{:<30} {:<17} {:<9} {:>8} {:>11} {:>10} {:>10} {:>10} {:>10} {:>10} {:>9}",
                    if i == 0 { name } else { "" },
                    if i == 0 { class.name() } else { "" },
                    s.source,
                    thousands(w.waits),
                    ns(w.total_ns),
                    ns(w.p50_ns),
                    ns(w.p90_ns),
                    ns(w.p99_ns),
                    ns(w.p999_ns),
                    ns(w.max_ns),
                    if i == 0 {
                        String::new()
                    } else {
                        ratio(w.total_ns, kernel.total_ns)
                    }
                );
            }
        }
    }
    print_acquisitions(c);
    if let Some(other) = c.kernel.waits.get(WaitClass::Other.name()) {
        println!();
        println!(
            "the kernel also waited {} times ({}) on locks that are not dm-bufio's (see `bufscope \
             report`); the designs model dm-bufio's locks only",
            thousands(other.waits),
            duration_ns(other.total_ns)
        );
    }
    print_replay_timing(c);
    println!();
    let mut ranked: Vec<_> = c.distances.iter().collect();
    ranked.sort_by(|a, b| a.overall.total_cmp(&b.overall));
    let list: Vec<String> = ranked
        .iter()
        .map(|d| format!("{} {:.2}", d.design, d.overall))
        .collect();
    match ranked.as_slice() {
        [best, second, ..] if (second.overall - best.overall).abs() < ALIKE => println!(
            "closest to the kernel: {} and {} alike (distance {})",
            best.design,
            second.design,
            list.join(", ")
        ),
        [best, ..] => println!(
            "closest to the kernel: {} (distance {})",
            best.design,
            list.join(", ")
        ),
        [] => println!("no design to compare with"),
    }
    println!("distance: {}", c.distance_definition);
}

/// How far behind the recorded pace each design's replay ran, and how many of its waits that
/// timing made rather than the design: the limits of its prediction.
fn print_replay_timing(c: &Comparison) {
    let lines: Vec<String> = c
        .designs
        .iter()
        .filter_map(|d| {
            let late = d.late.map(|l| {
                format!(
                    "began its operations late against the recorded pace by p50 {}, p90 {}, p99 {}",
                    duration_ns(l.p50_ns),
                    duration_ns(l.p90_ns),
                    duration_ns(l.p99_ns)
                )
            });
            let apart = d.replay_check.filter(|r| r.waits > 0).map(|r| {
                format!(
                    "{} of its {} waits were between operations that never overlapped in the \
                     kernel (at least: made by the replay's timing, not by the design)",
                    thousands(r.apart_in_kernel),
                    thousands(r.waits)
                )
            });
            let said: Vec<String> = late.into_iter().chain(apart).collect();
            (!said.is_empty()).then(|| format!("{}: {}", d.source, said.join("; ")))
        })
        .collect();
    if lines.is_empty() {
        return;
    }
    println!();
    for line in lines {
        println!("{line}");
    }
}

fn write_csv(c: &Comparison, out: impl Write) -> anyhow::Result<()> {
    let mut w = csv::Writer::from_writer(out);
    w.write_record([
        "operation",
        "lock_class",
        "source",
        "ops",
        "hits",
        "misses",
        "waited_ops",
        "hold_p50_ns",
        "waits",
        "total_wait_ns",
        "p50_ns",
        "p90_ns",
        "p99_ns",
        "p999_ns",
        "max_ns",
        "total_wait_vs_kernel",
        "distance",
    ])?;
    for name in c.kernel.ops.keys() {
        for s in sources(c) {
            let Some(row) = s.ops.get(name) else { continue };
            let kernel_row = &c.kernel.ops[name];
            for (class, stats) in
                std::iter::once(("all", None)).chain(row.waits.iter().map(|(k, v)| (*k, Some(v))))
            {
                let kernel_total = match stats {
                    None => kernel_row.waits.values().map(|w| w.total_ns).sum(),
                    Some(_) => kernel_row.waits.get(class).map_or(0, |w| w.total_ns),
                };
                let stats = stats.cloned().unwrap_or_else(|| WaitStats {
                    waits: row.waits.values().map(|w| w.waits).sum(),
                    total_ns: row.waits.values().map(|w| w.total_ns).sum(),
                    ..Default::default()
                });
                w.write_record([
                    name.to_string(),
                    class.to_string(),
                    s.source.clone(),
                    row.count.to_string(),
                    row.hits.to_string(),
                    row.misses.to_string(),
                    row.waited.to_string(),
                    row.hold_p50_ns.to_string(),
                    stats.waits.to_string(),
                    stats.total_ns.to_string(),
                    stats.p50_ns.to_string(),
                    stats.p90_ns.to_string(),
                    stats.p99_ns.to_string(),
                    stats.p999_ns.to_string(),
                    stats.max_ns.to_string(),
                    if kernel_total == 0 {
                        String::new()
                    } else {
                        format!("{:.4}", stats.total_ns as f64 / kernel_total as f64)
                    },
                    distance(c, &s.source, name).map_or(String::new(), |d| format!("{d:.4}")),
                ])?;
            }
        }
    }
    w.flush()?;
    Ok(())
}
