//! The waits `bufscope record` reports must be the kernel's, not its probes' cost: the pipe storm
//! recorded with default settings (stacks on) against a minimal bpftrace pairing run alone, each
//! three times, alternating, compared on the share of the workload's sleeping-lock waits shorter
//! than 1 µs. A probe's work inside the measured interval (a stack walk costs microseconds) moves
//! every wait above that, so the share collapses; the average wait, by contrast, swings several-
//! fold between runs of the same tool on two CPUs (the pipe mutex's spinning and sleeping waits
//! mix differently each time) and is printed, not asserted.

mod common;

use std::{process::Command, thread, time::Duration};

use bufscope_abi::LockFlags;
use bufscope_trace::{Record, TraceReader};
use common::{
    MINIMAL_PAIRING, PipeContention, bpftrace_count, root_or_skip, skip, start_observer,
    start_recording,
};

const WRITERS: usize = 8;
const RUN: Duration = Duration::from_secs(2);
const ROUNDS: usize = 3;
/// A wait shorter than this is "short".
const SHORT_NS: u64 = 1_000;

/// What one tool saw of the workload's sleeping-lock waits.
#[derive(Clone, Copy, Debug)]
struct Seen {
    waits: u64,
    average_ns: f64,
    /// Share of the waits shorter than [`SHORT_NS`].
    short_share: f64,
}

impl Seen {
    fn new(waits: u64, total_ns: u64, short: u64) -> Self {
        assert!(waits > 0, "no waits seen");
        Self {
            waits,
            average_ns: total_ns as f64 / waits as f64,
            short_share: short as f64 / waits as f64,
        }
    }
}

/// The workload's sleeping-lock waits as a minimal bpftrace pairing saw them.
fn bpftrace_alone() -> Seen {
    let script = MINIMAL_PAIRING.replace(
        "@waits = count();",
        &format!("@waits = count(); if ($now - @start[tid] < {SHORT_NS}) {{ @short = count(); }}"),
    );
    assert_ne!(script, MINIMAL_PAIRING, "the short-wait count went in");
    let mut bpftrace = Command::new("bpftrace");
    bpftrace.args(["-e", &script, &std::process::id().to_string()]);
    let observer = start_observer(bpftrace, "Attaching");
    let workload = PipeContention::start(WRITERS);
    thread::sleep(RUN);
    workload.stop();
    let lines = observer.stop();
    assert!(
        bpftrace_count(&lines, "waits") > 0,
        "bpftrace saw no waits: {lines:?}"
    );
    Seen::new(
        bpftrace_count(&lines, "waits"),
        bpftrace_count(&lines, "wait_ns"),
        bpftrace_count(&lines, "short"),
    )
}

/// The same as `bufscope record` (default settings) saw them.
fn record_alone(path: &std::path::Path) -> Seen {
    let (child, _) = start_recording(&["-o", path.to_str().unwrap(), "--force"]);
    let workload = PipeContention::start(WRITERS);
    thread::sleep(RUN);
    workload.stop();
    // SAFETY: kill with a child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().expect("record exits");
    assert!(out.status.success(), "record failed: {out:?}");
    let me = std::process::id();
    let (mut n, mut total, mut short) = (0u64, 0u64, 0u64);
    let mut reader = TraceReader::open(path).expect("the trace reads");
    while let Some(record) = reader.next_record().expect("the trace reads") {
        if let Record::LockWaits(waits) = record {
            for w in waits
                .iter()
                .filter(|w| w.tgid == me && !LockFlags(w.flags).is_pure_spin())
            {
                n += 1;
                total += w.wait_ns;
                short += u64::from(w.wait_ns < SHORT_NS);
            }
        }
    }
    Seen::new(n, total, short)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[test]
fn recorded_waits_are_as_short_as_a_minimal_probe_sees_them() {
    let test = "recorded_waits_are_as_short_as_a_minimal_probe_sees_them";
    if !root_or_skip(test) {
        return;
    }
    if Command::new("bpftrace").arg("--version").output().is_err() {
        skip(
            test,
            "bpftrace is not installed (`cargo xtask setup` installs it)",
        );
        return;
    }
    // bpftrace finds tracepoints in tracefs and, unlike bufscope and perf, does not mount it (a
    // fresh machine boots without it).
    bufscope::kernel::system::ensure_tracefs().expect("tracefs mounts");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("storm.bftrace");
    let (mut theirs, mut ours) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        theirs.push(bpftrace_alone());
        ours.push(record_alone(&path));
    }
    let bpftrace = median(theirs.iter().map(|s| s.short_share).collect());
    let record = median(ours.iter().map(|s| s.short_share).collect());
    let runs = format!("bpftrace {theirs:#?}\nrecord {ours:#?}");
    assert!(
        bpftrace >= 0.05,
        "the workload made too few short waits for this check to mean anything \
         ({:.1}% under {SHORT_NS} ns as bpftrace saw them):\n{runs}",
        bpftrace * 100.0
    );
    assert!(
        record >= 0.5 * bpftrace,
        "record saw {:.1}% of the waits shorter than {SHORT_NS} ns, bpftrace {:.1}%: the probe's \
         own work is inside the measured waits again\n{runs}",
        record * 100.0,
        bpftrace * 100.0
    );
    eprintln!(
        "short waits: record {:.1}%, bpftrace {:.1}%; waits: record {:.0}, bpftrace {:.0}; \
         average wait: record {:.0} ns, bpftrace {:.0} ns (medians of {ROUNDS})",
        record * 100.0,
        bpftrace * 100.0,
        median(ours.iter().map(|s| s.waits as f64).collect()),
        median(theirs.iter().map(|s| s.waits as f64).collect()),
        median(ours.iter().map(|s| s.average_ns).collect()),
        median(theirs.iter().map(|s| s.average_ns).collect()),
    );
}
