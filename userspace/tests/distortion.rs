//! The waits `bufscope record` reports must be the kernel's, not its probes' cost: the pipe storm
//! recorded with default settings (stacks on) against a minimal bpftrace pairing run alone, each
//! three times, alternating, compared on the medians of the workload's sleeping-lock waits: the
//! share shorter than 1 µs, the ones that spun (at least half bpftrace's), the average of those
//! short waits (at most 2x bpftrace's, at least 1/2.4 of it), how many waits (at most 40 %
//! fewer) and their average (at most 2x bpftrace's). A probe's work inside the measured interval
//! (a stack walk costs microseconds) lengthens every wait and collapses the short share; a wait
//! started only after the probe's work even where the lock was held through it is cut short
//! (record's average was 0.29x bpftrace's before waits started at arrival), and the short waits
//! most of all; a probe that steals the workload's CPU changes how many there are (a debug
//! build's reader: 0.21x).
//!
//! The bounds are the ones that hold run after run, not the 25 %, and they are not
//! symmetric, because the minimal pairing is no neutral yardstick. Its contention_end runs
//! while the new holder holds the pipe's mutex, and costs 800-900 ns a run against record's
//! ~330 ns since waits are kept in per-thread slots (2026-11-30): each of its ends lengthens a
//! hold, and so the waits it measures (two map updates more after its end stamp took its
//! average from ~1.3 µs to ~1.8 µs, `cargo xtask bench`). The storm also flips between a regime
//! where nearly every wait spins briefly (90-98 % under 1 µs, averages 0.6-0.95 µs) and one
//! where a half or more sleep (averages 1.2-2.2 µs), run by run, and the pairing's longer holds
//! push it toward the second (record 89-94 % short, bpftrace 15-44 %, eight tests 2026-11-30).
//! Hence the overall average has only the upper bound that a probe's work inside the interval
//! would break, and the lower bound is on the short waits' average. `cargo xtask bench` prints
//! the figures against the targets.
//!
//! Run against a release build: a debug build's reader takes a CPU of the two from the workload
//! (it recorded 303,629 waits where bpftrace saw 1,409,394). `cargo xtask test` runs it with the
//! static release binary (`BUFSCOPE_BIN`); a debug `cargo test` without it says so and skips.

mod common;

use std::{process::Command, thread, time::Duration};

use bufscope_abi::LockFlags;
use bufscope_trace::{Record, TraceReader};
use common::{
    BUFSCOPE_BIN, MINIMAL_PAIRING, PipeContention, bpftrace_count, bufscope_path, root_or_skip,
    skip, start_observer, start_recording,
};

const WRITERS: usize = 8;
const RUN: Duration = Duration::from_secs(2);
const ROUNDS: usize = 3;
/// A wait shorter than this is "short".
const SHORT_NS: u64 = 1_000;
/// How many fewer waits record's median count may have than bpftrace's. A costlier probe
/// makes the workload contend less (a debug build's reader: 0.21x); record, now cheaper per
/// wait than bpftrace, sees more (0.98-1.33x in five tests, 2026-11-30).
const COUNT_WITHIN: f64 = 0.40;
/// How many times longer record's median average wait may be than bpftrace's, and the median
/// average of its short waits.
const AVERAGE_WITHIN: f64 = 2.0;
/// How many times shorter the median average of record's short waits may be than bpftrace's.
/// bpftrace's end costs about 2.5x record's, inside the holds its waits measure, so its short
/// waits are the longer: record's averaged 0.48-0.67x bpftrace's in eight tests (2026-11-30),
/// and 0.35x with every wait started after the probe's work (the cut this bound catches). The
/// cheaper the probe, the shorter record's short waits against bpftrace's: once wait begins
/// stopped looking up dm-bufio frames where there is no dm-bufio, 0.41-0.42x in three tests
/// alone (2026-11-30, evening), so the bound sits between the two.
const SHORT_BELOW: f64 = 2.7;

/// What one tool saw of the workload's sleeping-lock waits.
#[derive(Clone, Copy, Debug)]
struct Seen {
    waits: u64,
    average_ns: f64,
    /// Share of the waits shorter than [`SHORT_NS`].
    short_share: f64,
    /// Average of the short waits, the ones that spun.
    short_average_ns: f64,
    /// Average of the others, the waits that slept.
    long_average_ns: f64,
}

impl Seen {
    fn new(waits: u64, total_ns: u64, short: u64, short_ns: u64) -> Self {
        assert!(waits > 0, "no waits seen");
        Self {
            waits,
            average_ns: total_ns as f64 / waits as f64,
            short_share: short as f64 / waits as f64,
            short_average_ns: short_ns as f64 / short.max(1) as f64,
            long_average_ns: (total_ns - short_ns) as f64 / (waits - short).max(1) as f64,
        }
    }
}

/// The workload's sleeping-lock waits as a minimal bpftrace pairing saw them.
fn bpftrace_alone() -> Seen {
    let script = MINIMAL_PAIRING.replace(
        "@waits = count();",
        &format!(
            "@waits = count(); if ($now - @start[tid] < {SHORT_NS}) {{ @short = count(); \
             @short_ns = sum($now - @start[tid]); }}"
        ),
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
        bpftrace_count(&lines, "short_ns"),
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
    let (mut n, mut total, mut short, mut short_ns) = (0u64, 0u64, 0u64, 0u64);
    let mut reader = TraceReader::open(path).expect("the trace reads");
    while let Some(record) = reader.next_record().expect("the trace reads") {
        if let Record::LockWaits(waits) = record {
            for w in waits
                .iter()
                .filter(|w| w.tgid == me && !LockFlags(w.flags).is_pure_spin())
            {
                n += 1;
                total += w.wait_ns;
                if w.wait_ns < SHORT_NS {
                    short += 1;
                    short_ns += w.wait_ns;
                }
            }
        }
    }
    Seen::new(n, total, short, short_ns)
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
    if cfg!(debug_assertions) && std::env::var_os(BUFSCOPE_BIN).is_none() {
        skip(
            test,
            &format!(
                "{} is a debug build, whose reader takes a CPU from the workload it measures; \
                 run `cargo test --release`, or set {BUFSCOPE_BIN} to a release binary",
                bufscope_path().to_string_lossy()
            ),
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
    let (record_waits, bpftrace_waits) = (
        median(ours.iter().map(|s| s.waits as f64).collect()),
        median(theirs.iter().map(|s| s.waits as f64).collect()),
    );
    assert!(
        record_waits >= (1.0 - COUNT_WITHIN) * bpftrace_waits,
        "record saw {record_waits:.0} waits, bpftrace {bpftrace_waits:.0}: more than {:.0} % \
         fewer\n{runs}",
        COUNT_WITHIN * 100.0
    );
    let (record_short_avg, bpftrace_short_avg) = (
        median(ours.iter().map(|s| s.short_average_ns).collect()),
        median(theirs.iter().map(|s| s.short_average_ns).collect()),
    );
    assert!(
        record_short_avg <= AVERAGE_WITHIN * bpftrace_short_avg
            && bpftrace_short_avg <= SHORT_BELOW * record_short_avg,
        "record's short waits average {record_short_avg:.0} ns, bpftrace's \
         {bpftrace_short_avg:.0} ns: record's more than {AVERAGE_WITHIN}x longer or \
         {SHORT_BELOW}x shorter\n{runs}"
    );
    let (record_avg, bpftrace_avg) = (
        median(ours.iter().map(|s| s.average_ns).collect()),
        median(theirs.iter().map(|s| s.average_ns).collect()),
    );
    assert!(
        record_avg <= AVERAGE_WITHIN * bpftrace_avg,
        "record's average wait {record_avg:.0} ns, bpftrace's {bpftrace_avg:.0} ns: more than \
         {AVERAGE_WITHIN}x longer\n{runs}"
    );
    eprintln!(
        "short waits: record {:.1}%, bpftrace {:.1}%, averaging record {record_short_avg:.0} ns, \
         bpftrace {bpftrace_short_avg:.0} ns; waits: record {record_waits:.0}, bpftrace \
         {bpftrace_waits:.0}; average wait: record {record_avg:.0} ns, bpftrace {bpftrace_avg:.0} \
         ns; the others' average: record {:.0} ns, bpftrace {:.0} ns (medians of {ROUNDS})",
        record * 100.0,
        bpftrace * 100.0,
        median(ours.iter().map(|s| s.long_average_ns).collect()),
        median(theirs.iter().map(|s| s.long_average_ns).collect()),
    );
}
