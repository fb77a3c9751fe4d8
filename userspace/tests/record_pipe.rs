//! `bufscope record` on the real kernel (root): a pipe-contention workload runs while recording,
//! and the file must hold the workload's own mutex waits, with kernel stacks whose callers are
//! the pipe functions and the names of the threads that waited, and say why dm-bufio was not
//! probed on a host without it. Also: both attach modes, clean stops on SIGINT and SIGTERM
//! that keep the thread names, and threads sharing a wait slot in the kernel.

mod common;

use std::{
    collections::{BTreeMap, HashSet},
    thread,
    time::Duration,
};

use bufscope_trace::{Metadata, Record, TraceReader};
use common::{PipeContention, bufscope, root_or_skip, start_recording};

struct Recorded {
    waits: Vec<bufscope_trace::LockWait>,
    names: bufscope_analyses::naming::Names,
    missing_probes: BTreeMap<String, String>,
    /// The in-kernel counters by name, from the file's loss record.
    counters: Option<BTreeMap<String, u64>>,
    end: bool,
    probes: Vec<String>,
}

fn read_trace(path: &std::path::Path) -> Recorded {
    let mut reader = TraceReader::open(path).unwrap_or_else(|e| panic!("{e}"));
    let probes = reader.header().probes.clone();
    let mut recorded = Recorded {
        waits: Vec::new(),
        names: bufscope_analyses::naming::Names::default(),
        missing_probes: Default::default(),
        counters: None,
        end: false,
        probes,
    };
    while let Some(record) = reader.next_record().unwrap_or_else(|e| panic!("{e}")) {
        match record {
            Record::LockWaits(w) => recorded.waits.extend(w),
            Record::Metadata(Metadata::LossCounts { kernel, .. }) => {
                recorded.counters = Some(kernel);
            }
            Record::Metadata(Metadata::Probes { missing, .. }) => recorded.missing_probes = missing,
            Record::Metadata(m) => recorded.names.add(&m),
            Record::BufioOps(_) => {}
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
    assert!(recorded.counters.is_some(), "no loss counts in the file");
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
    assert_writers_named(&recorded, &threads_seen, mode);

    // Stacks: taken for the waits, kept in the file, symbolized to the pipe code that waited.
    let with_stack = ours.iter().filter(|w| w.stack_id.is_some()).count();
    assert!(
        with_stack * 10 >= ours.len() * 9,
        "{mode}: only {with_stack} of {} waits have a stack",
        ours.len()
    );
    let callers: HashSet<String> = ours
        .iter()
        .filter(|w| w.flags & 0x20 != 0)
        .filter_map(|w| recorded.names.caller(w.stack_id?))
        .collect();
    assert!(
        callers
            .iter()
            .any(|c| c.contains("pipe_write") || c.contains("pipe_read")),
        "{mode}: the pipe mutex waits' callers are {callers:?}"
    );
    let stack = recorded
        .names
        .stack(ours[0].stack_id.expect("a stack"))
        .expect("the stack is in the file");
    assert!(stack.len() >= 3, "{stack:?}");

    // No dm-bufio on this host: the file says so and why, and the rest was recorded anyway.
    if !std::path::Path::new("/sys/module/dm_bufio").exists() {
        let why = recorded.missing_probes.get("dm-bufio").unwrap_or_else(|| {
            panic!(
                "no reason for the missing dm-bufio probes: {:?}",
                recorded.missing_probes
            )
        });
        assert!(why.contains("not loaded"), "{why}");
    }
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
    let workload_tids = workload.tids.clone();
    thread::sleep(Duration::from_millis(700));
    // SAFETY: sending a signal to our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
    let out = child.wait_with_output().unwrap();
    workload.stop();
    assert!(out.status.success(), "{name}: {out:?}");
    let recorded = read_trace(&path);
    assert!(recorded.end, "{name}: no end record");
    assert!(!recorded.waits.is_empty(), "{name}: no events");
    // Stopped about when the first once-a-second flush comes: names not flushed by then are
    // written by the finish that the signal leads to.
    let tids: HashSet<u32> = workload_tids.into_iter().collect();
    let waited: HashSet<u32> = recorded
        .waits
        .iter()
        .map(|w| w.tid)
        .filter(|tid| tids.contains(tid))
        .collect();
    assert!(!waited.is_empty(), "{name}: no waits from {tids:?}");
    assert_writers_named(&recorded, &waited, name);
}

/// Every one of `tids` (workload writers that waited, alive while recorded) is named in the
/// file by its comm.
fn assert_writers_named(recorded: &Recorded, tids: &HashSet<u32>, what: &str) {
    for &tid in tids {
        assert_eq!(
            recorded.names.thread_name(tid),
            Some(PipeContention::WRITER_NAME),
            "{what}: writer {tid} is not named in the file"
        );
    }
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
        // dm-bufio probes: attached where dm-bufio is, reported missing (with why) where not.
        assert_eq!(status("dm-bufio probes") == "ok", has_dm_bufio, "{report}");
    }
}

/// `live --no-tui` prints interval tables naming the pipe workload's mutex, from the in-kernel
/// histograms alone.
#[test]
fn live_prints_interval_tables_from_in_kernel_histograms() {
    if !root_or_skip("live_prints_interval_tables_from_in_kernel_histograms") {
        return;
    }
    let workload = PipeContention::start(8);
    let mut live = bufscope();
    live.args(["live", "--no-tui", "--interval", "500"]);
    // It must say it reads the in-kernel histograms only (start_observer panics otherwise);
    // then three tables, however long this machine takes to print them (the first interval's
    // naming reads kallsyms, seconds in a debug build beside other tests' pipe storms), and
    // Ctrl-C.
    let mut observer = common::start_observer(live, "in-kernel histograms only");
    let mut lines = observer.lines_until("--- ", 3);
    let (status, rest) = observer.stop_with_status();
    workload.stop();
    assert!(status.success(), "live exited with {status}");
    lines.extend(rest);
    let stdout = lines.join("\n");
    // The pipe's mutex, named as a recording names it: after its slab cache where the kernel
    // has bpf_get_kmem_cache (6.13+), else by its address. Fixed columns: waits/s to p99 (58
    // characters), inside (18 and a space), type (11 and a space), then the lock's name.
    fn column(line: &str, from: usize, to: usize) -> Option<&str> {
        line.get(from..to.min(line.len())).map(str::trim)
    }
    let mutex_rows: Vec<&str> = stdout
        .lines()
        .filter(|l| column(l, 77, 88) == Some("mutex"))
        .collect();
    assert!(mutex_rows.len() >= 2, "no mutex rows: {stdout}");
    let slab_names = common::kernel_version() >= (6, 13);
    for row in &mutex_rows {
        let lock = column(row, 89, row.len()).unwrap_or("");
        if slab_names {
            assert!(
                lock.starts_with("&kmalloc"),
                "the pipe's mutex named {lock}: {stdout}"
            );
        } else {
            assert!(lock.starts_with("mutex 0x"), "{stdout}");
        }
    }
}

/// The probes keep a sleeping wait in flight in its thread's slot, and a thread whose slot
/// another thread holds keeps it in a hash map. The pipe storm's eight writers are four pairs
/// whose ids are a multiple of the slot count apart, so that whichever of a pair begins a wait
/// while the other waits takes the hash map: the file must count those waits
/// (`slot_shared`), and pair every one of them (an end that finds no begin, where a begin went
/// missing or an end looked in the wrong place, is counted as `unpaired_end`).
#[test]
fn writers_sharing_a_wait_slot_have_every_wait_paired() {
    if !root_or_skip("writers_sharing_a_wait_slot_have_every_wait_paired") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("slots.bftrace");
    let (child, _) = start_recording(&["-o", path.to_str().unwrap(), "--no-stacks"]);
    let workload = PipeContention::start_with_slot_mates(8, 4);
    let tids = workload.tids.clone();
    thread::sleep(Duration::from_millis(1500));
    let chunks = workload.stop();
    // SAFETY: sending a signal to our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "record failed: {out:?}");
    assert!(chunks > 1000, "the workload wrote only {chunks} chunks");

    let recorded = read_trace(&path);
    let counters = recorded.counters.as_ref().expect("the file's loss record");
    let counter = |name: &str| counters.get(name).copied().unwrap_or(0);
    let waits: Vec<u64> = tids
        .iter()
        .map(|&tid| {
            recorded
                .waits
                .iter()
                .filter(|w| w.tid == tid && w.flags & 0x20 != 0)
                .count() as u64
        })
        .collect();
    let total: u64 = waits.iter().sum();
    let (shared, unpaired) = (counter("slot_shared"), counter("unpaired_end"));
    eprintln!(
        "pipe mutex waits per writer {waits:?} (ids {tids:?}); slot_shared {shared}, \
         unpaired_end {unpaired}, mismatched_end {}",
        counter("mismatched_end")
    );
    assert!(total >= 1000, "the writers contended too little: {waits:?}");
    // The hash map was taken: a pair's waits overlap now and then (5,978 times in 715,000
    // waits in a 1.5-s release run here).
    assert!(
        shared >= 100,
        "only {shared} waits took the hash map, of the writers' {total}"
    );
    // And every wait kept there was paired. A few ends are of waits under way at the attach.
    assert!(
        unpaired * 20 <= shared,
        "{unpaired} ends found no begin, against {shared} waits kept in the hash map"
    );
}
