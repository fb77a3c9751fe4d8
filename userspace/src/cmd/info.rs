//! `bufscope info FILE`: what a trace file holds.

use std::{path::Path, process::ExitCode};

use bufscope_abi::Counter;
use bufscope_analyses::summary::{TraceSummary, WaitRow, summarize};

use bufscope_analyses::units::{bytes, duration_ns, thousands};

use crate::args::DamageArgs;

pub fn run(path: &Path, json: bool, damage: &DamageArgs) -> anyhow::Result<ExitCode> {
    let summary = summarize(path)?;
    damage.check(summary.skipped_message(), summary.problem.as_deref())?;
    if json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print_text(&summary);
    }
    if let Some(problem) = &summary.problem {
        eprintln!("bufscope: error: {problem}");
        if summary.truncated {
            eprintln!(
                "bufscope: everything before that offset is shown above; the recording was cut short"
            );
        }
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_text(s: &TraceSummary) {
    let h = &s.header;
    println!("file            {}", s.file);
    println!(
        "format          {} (written by {})",
        s.format_version, h.writer
    );
    println!(
        "kernel          {} on {} ({} CPUs)",
        h.kernel_release, h.host, h.cpus
    );
    let start = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(h.start_unix_ns);
    println!(
        "started         {} (clock {})",
        humantime::format_rfc3339_seconds(start),
        h.clock
    );
    println!("probes          {}", h.probes.join(", "));
    match (s.first_ns, s.last_ns) {
        (Some(first), Some(last)) => println!(
            "time span       {} (first wait began {} after the start)",
            duration_ns(last.saturating_sub(first)),
            duration_ns(first.saturating_sub(h.start_clock_ns))
        ),
        _ => println!("time span       no events"),
    }
    println!(
        "records         {} ({} lock waits, {} dm-bufio operations, {} metadata)",
        thousands(s.records),
        thousands(s.lock_waits),
        thousands(s.bufio_ops),
        thousands(s.metadata.values().sum())
    );
    for (kind, n) in &s.metadata {
        println!("  metadata      {kind}: {n}");
    }
    if !s.skipped.is_empty() {
        println!(
            "skipped         {} damaged record{} ({} bytes; what and where is on stderr)",
            thousands(s.skipped.records),
            if s.skipped.records == 1 { "" } else { "s" },
            thousands(s.skipped.bytes)
        );
    }
    println!(
        "threads         {} (lock waits on {} distinct locks)",
        thousands(s.threads as u64),
        thousands(s.locks as u64)
    );
    if !s.by_type.is_empty() {
        println!();
        println!(
            "{:>12} {:>12} {:>12} {:>12}  type",
            "contended", "total wait", "max wait", "avg wait"
        );
        let mut rows: Vec<_> = s.by_type.iter().collect();
        rows.sort_by_key(|row| std::cmp::Reverse(row.1.total_wait_ns));
        for (kind, t) in rows {
            println!(
                "{:>12} {:>12} {:>12} {:>12}  {kind}",
                thousands(t.contended),
                duration_ns(t.total_wait_ns),
                duration_ns(t.max_wait_ns),
                duration_ns(t.total_wait_ns / t.contended.max(1)),
            );
        }
    }
    if !s.by_op.is_empty() {
        println!();
        println!(
            "{:>12} {:>8} {:>8} {:>12}  dm-bufio operation ({} client{})",
            "count",
            "hits",
            "misses",
            "avg time",
            thousands(s.clients as u64),
            if s.clients == 1 { "" } else { "s" }
        );
        for (function, op) in &s.by_op {
            println!(
                "{:>12} {:>8} {:>8} {:>12}  {function}",
                thousands(op.count),
                thousands(op.hits),
                thousands(op.misses),
                duration_ns(op.total_ns / op.count.max(1)),
            );
        }
    }
    if !s.client_list.is_empty() {
        println!();
        println!(
            "{:>12} {:>8} {:>6} {:>12}  dm-bufio client",
            "operations", "block", "trees", "lock waits"
        );
        for c in &s.client_list {
            println!(
                "{:>12} {:>8} {:>6} {:>12}  {} ({:#x}){}",
                thousands(c.ops),
                c.block_size,
                c.trees,
                thousands(c.waits_on_its_locks),
                c.device,
                c.addr,
                if c.no_sleep { ", no-sleep" } else { "" }
            );
        }
        if s.clientless_runs > 0 {
            println!(
                "{:>12} {:>8} {:>6} {:>12}  (background runs that locked no client)",
                thousands(s.clientless_runs),
                "",
                "",
                ""
            );
        }
    }
    print_rows("lock", &s.top_locks, true);
    print_rows("caller", &s.top_callers, false);
    if s.waits_by_op.keys().any(|op| *op != "-") {
        println!();
        println!(
            "{:>12} {:>12} {:>12}  lock waits inside dm-bufio operation",
            "contended", "total wait", "max wait"
        );
        for (op, t) in &s.waits_by_op {
            println!(
                "{:>12} {:>12} {:>12}  {}",
                thousands(t.contended),
                duration_ns(t.total_wait_ns),
                duration_ns(t.max_wait_ns),
                if *op == "-" { "(none)" } else { op }
            );
        }
    }
    if s.lock_waits > 0 {
        println!();
        println!(
            "stacks          {} of {} waits have a kernel stack ({} distinct)",
            thousands(s.waits_with_stack),
            thousands(s.lock_waits),
            thousands(s.stacks)
        );
    }
    if let Some(design) = &s.bufio_design {
        println!("dm-bufio        {design}");
    }
    if let Some(size) = s.cache_size_bytes {
        println!(
            "dm-bufio cache  {} (max_cache_size_bytes, all clients together)",
            bytes(size)
        );
    }
    for (function, why) in &s.missing_probes {
        println!("missing probe   {function}: {why}");
    }
    if !s.programs.is_empty() {
        println!();
        println!(
            "{:>12} {:>10} {:>12} {:>10}  eBPF program (run-time statistics while attached; \
             skipped: runs the kernel skipped, each an event lost)",
            "runs", "avg", "total", "skipped"
        );
        for p in &s.programs {
            println!(
                "{:>12} {:>10} {:>12} {:>10}  {}",
                thousands(p.run_count),
                duration_ns(p.run_time_ns / p.run_count.max(1)),
                duration_ns(p.run_time_ns),
                thousands(p.recursion_misses),
                p.program
            );
        }
    }
    println!();
    match &s.losses {
        Some(l) => {
            let get = |c: Counter| l.kernel.get(c.name()).copied().unwrap_or(0);
            println!(
                "lost            {} (ring buffer full), {} (user space), {} (program runs the \
                 kernel skipped)",
                thousands(get(Counter::ReserveFailed)),
                thousands(l.user_dropped),
                thousands(s.programs.iter().map(|p| p.recursion_misses).sum::<u64>())
            );
            println!(
                "unpaired        {} ends without a begin, {} mismatched ends, {} nested begins, \
                 {} repeated begins",
                thousands(get(Counter::UnpairedEnd)),
                thousands(get(Counter::MismatchedEnd)),
                thousands(get(Counter::NestedBegin)),
                thousands(get(Counter::RepeatedBegin)),
            );
            if get(Counter::WaitFromArrival) + get(Counter::WaitFromMidpoint) > 0 {
                println!(
                    "wait starts     {} sleeping-lock waits from the waiter's arrival (the lock \
                     still held by another once the probe's work was done), {} from midway \
                     through that work (let go during it), the rest from its end",
                    thousands(get(Counter::WaitFromArrival)),
                    thousands(get(Counter::WaitFromMidpoint)),
                );
            }
            if get(Counter::BeginInsideEnd) + get(Counter::SpinSlotStale) > 0 {
                println!(
                    "spin waits      {} not kept (begun while contention_end's program ran on \
                     the CPU, so the kernel would skip their end), {} left by a thread whose end \
                     never came and taken over",
                    thousands(get(Counter::BeginInsideEnd)),
                    thousands(get(Counter::SpinSlotStale)),
                );
            }
            if get(Counter::SlotShared) > 0 {
                println!(
                    "wait slots      {} sleeping-lock waits kept in the hash map: the thread's \
                     slot was another's (thread ids a multiple of {} apart)",
                    thousands(get(Counter::SlotShared)),
                    bufscope_abi::PENDING_THREAD_SLOTS,
                );
            }
            if get(Counter::StackReused) + get(Counter::StackRechecked) > 0 {
                println!(
                    "stacks          {} reused from the thread's last wait on the lock, {} reuses \
                     checked by a new walk, {} of them different",
                    thousands(get(Counter::StackReused)),
                    thousands(get(Counter::StackRechecked)),
                    thousands(get(Counter::StackRecheckMismatch)),
                );
            }
        }
        None => println!("lost            unknown (the file has no loss record)"),
    }
}

/// Named locks or callers, perf lock contention's columns, with the dm-bufio operations the
/// waits were made in.
fn print_rows(what: &str, rows: &[WaitRow], with_type: bool) {
    if rows.is_empty() {
        return;
    }
    println!();
    let type_header = if with_type { "type" } else { "" };
    println!(
        "{:>12} {:>12} {:>12} {:>12} {type_header:>10}  {what}",
        "contended", "total wait", "max wait", "avg wait",
    );
    for r in rows {
        let ops: Vec<String> = r
            .inside_ops
            .iter()
            .map(|(op, n)| format!("{} {}", op.trim_start_matches("dm_bufio_"), thousands(*n)))
            .collect();
        println!(
            "{:>12} {:>12} {:>12} {:>12} {:>10}  {}{}",
            thousands(r.contended),
            duration_ns(r.total_wait_ns),
            duration_ns(r.max_wait_ns),
            duration_ns(r.total_wait_ns / r.contended.max(1)),
            r.type_name,
            r.name,
            if ops.is_empty() {
                String::new()
            } else {
                format!("  [in {}]", ops.join(", "))
            }
        );
    }
}
