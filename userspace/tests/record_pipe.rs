//! `bufscope record` on the real kernel (root): a pipe-contention workload runs while recording,
//! and the file must hold the workload's own mutex waits. Also: both attach modes, and clean
//! stops on SIGINT and SIGTERM.

mod common;

use std::{collections::HashSet, thread, time::Duration};

use bufscope_trace::{Metadata, Record, TraceReader};
use common::{PipeContention, bufscope, root_or_skip, start_recording};

struct Recorded {
    waits: Vec<bufscope_trace::LockWait>,
    loss_counts: bool,
    end: bool,
    probes: Vec<String>,
}

fn read_trace(path: &std::path::Path) -> Recorded {
    let mut reader = TraceReader::open(path).unwrap_or_else(|e| panic!("{e}"));
    let probes = reader.header().probes.clone();
    let mut recorded = Recorded {
        waits: Vec::new(),
        loss_counts: false,
        end: false,
        probes,
    };
    while let Some(record) = reader.next_record().unwrap_or_else(|e| panic!("{e}")) {
        match record {
            Record::LockWaits(w) => recorded.waits.extend(w),
            Record::Metadata(Metadata::LossCounts { .. }) => recorded.loss_counts = true,
            Record::Metadata(_) | Record::BufioOps(_) => {}
            Record::End(_) => recorded.end = true,
        }
    }
    recorded
}

/// Records `run_for` of pipe contention with `mode`, returns what the file holds about it.
fn record_pipe_workload(mode: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pipe.bftrace");
    let record_for = Duration::from_secs(4);
    let (child, _) = start_recording(&[
        "-o",
        path.to_str().unwrap(),
        "--duration",
        "4s",
        "--attach",
        mode,
    ]);
    let workload = PipeContention::start(8);
    let tids: HashSet<u32> = workload.tids.iter().copied().collect();
    thread::sleep(Duration::from_millis(1500));
    let chunks = workload.stop();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "record failed: {out:?}");
    assert!(chunks > 1000, "the workload wrote only {chunks} chunks");

    let recorded = read_trace(&path);
    assert!(
        recorded.end,
        "no end record: the recording did not finish cleanly"
    );
    assert!(recorded.loss_counts, "no loss counts in the file");
    assert!(
        recorded
            .probes
            .iter()
            .any(|p| p.contains(mode.replace('-', "_").as_str())),
        "{:?}",
        recorded.probes
    );
    let ours: Vec<_> = recorded
        .waits
        .iter()
        .filter(|w| tids.contains(&w.tid))
        .collect();
    let mutex_waits = ours.iter().filter(|w| w.flags & 0x20 != 0).count();
    assert!(
        mutex_waits >= 50,
        "{mode}: {} events in the file, {} from the workload's threads, {mutex_waits} on a mutex",
        recorded.waits.len(),
        ours.len()
    );
    let pid = std::process::id();
    for w in &ours {
        assert_eq!(w.tgid, pid, "{w:?}");
        assert!(w.wait_ns > 0, "zero wait: {w:?}");
        assert!(
            w.wait_ns < record_for.as_nanos() as u64,
            "wait longer than the recording: {w:?}"
        );
    }
    // The workload's threads all contend: most of them must show up.
    let threads_seen: HashSet<u32> = ours.iter().map(|w| w.tid).collect();
    assert!(threads_seen.len() >= 4, "only {threads_seen:?} of {tids:?}");
}

#[test]
fn records_pipe_mutex_contention_with_tp_btf() {
    if root_or_skip("records_pipe_mutex_contention_with_tp_btf") {
        record_pipe_workload("tp-btf");
    }
}

#[test]
fn records_pipe_mutex_contention_with_classic_tracepoints() {
    if root_or_skip("records_pipe_mutex_contention_with_classic_tracepoints") {
        record_pipe_workload("tracepoint");
    }
}

fn stops_cleanly_on(signal: i32, name: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("signal.bftrace");
    let (child, _) = start_recording(&["-o", path.to_str().unwrap()]);
    let workload = PipeContention::start(8);
    thread::sleep(Duration::from_millis(700));
    // SAFETY: sending a signal to our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
    let out = child.wait_with_output().unwrap();
    workload.stop();
    assert!(out.status.success(), "{name}: {out:?}");
    let recorded = read_trace(&path);
    assert!(recorded.end, "{name}: no end record");
    assert!(!recorded.waits.is_empty(), "{name}: no events");
}

#[test]
fn sigint_and_sigterm_end_with_a_valid_file() {
    if root_or_skip("sigint_and_sigterm_end_with_a_valid_file") {
        stops_cleanly_on(libc::SIGINT, "SIGINT");
        stops_cleanly_on(libc::SIGTERM, "SIGTERM");
    }
}

#[test]
fn doctor_matches_what_the_kernel_has() {
    let out = bufscope().args(["doctor", "--json"]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let status = |name: &str| {
        report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no check {name}: {report}"))["status"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let has_kprobes = std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists();
    assert_eq!(status("kprobes") == "ok", has_kprobes);
    let has_dm_bufio = std::path::Path::new("/sys/module/dm_bufio").exists()
        || std::fs::read_to_string("/proc/kallsyms")
            .unwrap()
            .contains(" dm_bufio_get");
    assert_eq!(status("dm-bufio") == "ok", has_dm_bufio);
    let has_btf = std::path::Path::new("/sys/kernel/btf/vmlinux").exists();
    assert_eq!(status("btf") == "ok", has_btf);
    if root_or_skip("doctor_matches_what_the_kernel_has (trial attach)") {
        // This project's hosts and VMs run 5.19+ kernels: the lock probes must attach.
        assert_eq!(status("lock tracepoints"), "ok");
        assert_eq!(status("lock probes attach"), "ok", "{report}");
    }
}
