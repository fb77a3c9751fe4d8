//! Whose lock waits `bufscope record` keeps, on the real kernel (root): bufscope's own processes
//! left out unless `--include-self`, `--pid` keeping only the processes named, and
//! `record -- CMD` recording for exactly the command's lifetime (`--only-cmd`: its waits alone).
//!
//! The contending processes are `bufscope stress` with writers on a scratch file (direct I/O
//! writes contend on the file's locks: thousands of waits a second here), a workload watched like
//! any other; a `bufscope replay` reading and writing another scratch file, one of bufscope's
//! own; and this test's own pipe workload.

mod common;

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Child, Output, Stdio},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use bufscope_analyses::tracedata::TraceData;
use bufscope_trace::{LockWait, Metadata, Record, TraceReader};
use common::{PipeContention, bufscope, root_or_skip};

/// One test at a time: each runs contending processes whose CPU the others would take.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The waits in a recording, and its in-kernel counter of left-out begins.
fn read(path: &Path) -> (Vec<LockWait>, u64) {
    let mut reader = TraceReader::open(path).unwrap_or_else(|e| panic!("{e}"));
    let (mut waits, mut filtered) = (Vec::new(), 0);
    while let Some(record) = reader.next_record().unwrap_or_else(|e| panic!("{e}")) {
        match record {
            Record::LockWaits(w) => waits.extend(w),
            Record::Metadata(Metadata::LossCounts { kernel, .. }) => {
                filtered = kernel.get("filtered").copied().unwrap_or(0);
            }
            _ => {}
        }
    }
    (waits, filtered)
}

fn from(waits: &[LockWait], tgid: u32) -> usize {
    waits.iter().filter(|w| w.tgid == tgid).count()
}

/// `bufscope record --no-bufio -o PATH ARGS…`, run to its end.
fn record(path: &Path, args: &[&str]) -> Output {
    let out = bufscope()
        .args(["record", "--no-bufio", "--force", "-o"])
        .arg(path)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("bufscope record runs");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    out
}

/// A scratch file for `bufscope stress`, and the arguments that make it contend.
fn stress_args(dir: &Path, duration: &str) -> Vec<String> {
    let img: PathBuf = dir.join("stress.img");
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(64 << 20))
        .expect("scratch file");
    [
        "stress",
        img.to_str().unwrap(),
        "--threads",
        "4",
        "--writers",
        "4",
        "--allow-writes",
        "--duration",
        duration,
    ]
    .map(String::from)
    .to_vec()
}

fn start_stress(dir: &Path) -> Child {
    bufscope()
        .args(stress_args(dir, "120s"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("bufscope stress starts")
}

/// A `bufscope replay` of a synthetic hotspot through a 64-buffer cache on a scratch file with
/// direct I/O: its 16 threads read and write the file, and contend on its locks.
fn start_replay(dir: &Path) -> Child {
    let trace = dir.join("hotspot.bftrace");
    let out = bufscope()
        .args(["synth", "hotspot", "--passes", "64", "-o"])
        .arg(&trace)
        .output()
        .expect("bufscope synth runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let img = dir.join("replay.img");
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(64 << 20))
        .expect("scratch file");
    let replay = bufscope()
        .args(["replay"])
        .arg(&trace)
        .args([
            "--design",
            "classic",
            "--capacity",
            "64",
            "--direct",
            "--allow-writes",
        ])
        .arg("--device")
        .arg(&img)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("bufscope replay starts");
    // Reading and planning the trace takes seconds in a debug build: the recordings begin once
    // the replay's 17 threads (16 hotspot, a dirtier) run.
    let tasks = PathBuf::from(format!("/proc/{}/task", replay.id()));
    let deadline = Instant::now() + Duration::from_secs(120);
    while std::fs::read_dir(&tasks).map_or(0, |d| d.count()) < 17 {
        assert!(
            Instant::now() < deadline,
            "bufscope replay started no threads in 120 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    replay
}

#[test]
fn bufscope_s_own_processes_are_left_out_unless_included() {
    let _alone = one_at_a_time();
    if !root_or_skip("bufscope_s_own_processes_are_left_out_unless_included") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut stress = start_stress(dir.path());
    let mut replay = start_replay(dir.path());
    let default = dir.path().join("default.bftrace");
    let with_self = dir.path().join("self.bftrace");
    let out = record(&default, &["-d", "3s"]);
    assert!(out.status.success());
    let out_self = record(&with_self, &["-d", "3s", "--include-self"]);
    for child in [&mut stress, &mut replay] {
        let _ = child.kill();
        let _ = child.wait();
    }
    assert!(out_self.status.success());

    let (waits, filtered) = read(&default);
    let (waits_self, _) = read(&with_self);
    let own = replay.id();
    assert_eq!(
        from(&waits, own),
        0,
        "a wait of the bufscope replay process was kept"
    );
    assert!(
        from(&waits_self, own) >= 100,
        "--include-self kept {} waits of bufscope replay (thousands a second here)",
        from(&waits_self, own)
    );
    // Its begins were seen and left out in the kernel, not dropped later.
    eprintln!(
        "default: filtered {filtered} begins, kept {} waits of stress; --include-self: kept {} \
         waits of the replay, {} of stress",
        from(&waits, stress.id()),
        from(&waits_self, own),
        from(&waits_self, stress.id())
    );
    assert!(
        filtered >= from(&waits_self, own) as u64 / 10,
        "filtered {filtered} begins"
    );
    // bufscope stress is the workload, not bufscope: its waits are kept either way.
    for (what, waits) in [("default", &waits), ("--include-self", &waits_self)] {
        assert!(
            from(waits, stress.id()) >= 100,
            "{what}: {} waits of bufscope stress kept (thousands a second here)",
            from(waits, stress.id())
        );
    }
}

#[test]
fn pid_keeps_only_the_processes_named() {
    let _alone = one_at_a_time();
    if !root_or_skip("pid_keeps_only_the_processes_named") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut stress = start_stress(dir.path());
    let workload = PipeContention::start(4);
    let path = dir.path().join("pid.bftrace");
    let me = std::process::id().to_string();
    // --include-self: the stress process is left out by --pid alone.
    let out = record(&path, &["-d", "3s", "--include-self", "--pid", &me]);
    workload.stop();
    let _ = stress.kill();
    let _ = stress.wait();
    assert!(out.status.success());
    let (waits, _) = read(&path);
    let mine = from(&waits, std::process::id());
    let others = waits.len() - mine;
    assert!(mine >= 1_000, "{mine} waits of the pipe workload");
    assert_eq!(others, 0, "waits of other processes among {mine}");
    assert_eq!(from(&waits, stress.id()), 0);
}

#[test]
fn a_command_is_recorded_for_its_lifetime_and_its_status_returned() {
    let _alone = one_at_a_time();
    if !root_or_skip("a_command_is_recorded_for_its_lifetime_and_its_status_returned") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cmd.bftrace");
    let out = record(&path, &["--", "sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7), "the command's status");
    let info = bufscope().arg("info").arg(&path).output().unwrap();
    assert!(info.status.success(), "a finished file");

    // --only-cmd: a contending command's waits alone, while this process contends too.
    let workload = PipeContention::start(4);
    let stress = stress_args(dir.path(), "3s");
    let bin = env!("CARGO_BIN_EXE_bufscope");
    let mut args = vec!["--only-cmd", "--", bin];
    args.extend(stress.iter().map(String::as_str));
    let out = record(&path, &args);
    workload.stop();
    assert!(out.status.success(), "bufscope stress exits 0");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let pid: u32 = stderr
        .split_once("(pid ")
        .and_then(|(_, rest)| rest.split(')').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {stderr}"));
    assert!(stderr.contains("the command ended"), "{stderr}");
    let (waits, _) = read(&path);
    let cmd = from(&waits, pid);
    assert!(cmd >= 100, "{cmd} waits of the command");
    assert_eq!(
        from(&waits, std::process::id()),
        0,
        "a wait of this process was kept"
    );
}

/// A cgroup v2 made for one test, removed (its processes moved back to the root) on drop.
struct ScratchCgroup {
    root: PathBuf,
    path: PathBuf,
}

impl ScratchCgroup {
    fn new() -> Option<Self> {
        let root = bufscope::kernel::system::cgroup2_root()?;
        let path = root.join(format!("bufscope-test-{}", std::process::id()));
        std::fs::create_dir(&path).ok()?;
        Some(Self { root, path })
    }

    fn enter(&self, pid: u32) {
        std::fs::write(self.path.join("cgroup.procs"), pid.to_string())
            .expect("moving a process into the scratch cgroup");
    }

    /// Its path from the hierarchy's root, as /proc/PID/cgroup writes it.
    fn name(&self) -> String {
        format!("/{}", self.path.file_name().unwrap().to_str().unwrap())
    }
}

impl Drop for ScratchCgroup {
    fn drop(&mut self) {
        if let Ok(procs) = std::fs::read_to_string(self.path.join("cgroup.procs")) {
            for pid in procs.lines() {
                let _ = std::fs::write(self.root.join("cgroup.procs"), pid);
            }
        }
        let _ = std::fs::remove_dir(&self.path);
    }
}

#[test]
fn cgroup_keeps_only_its_processes_and_names_them() {
    let _alone = one_at_a_time();
    if !root_or_skip("cgroup_keeps_only_its_processes_and_names_them") {
        return;
    }
    let Some(cgroup) = ScratchCgroup::new() else {
        common::skip(
            "cgroup_keeps_only_its_processes_and_names_them",
            "no cgroup v2 hierarchy to make a cgroup in",
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut stress = start_stress(dir.path());
    cgroup.enter(stress.id());
    // Waits outside the cgroup, in this process, that must be left out.
    let workload = PipeContention::start(4);
    let path = dir.path().join("cgroup.bftrace");
    // --include-self: the contending process in the cgroup is a bufscope.
    let out = record(
        &path,
        &["-d", "3s", "--include-self", "--cgroup", &cgroup.name()],
    );
    workload.stop();
    let _ = stress.kill();
    let _ = stress.wait();
    assert!(out.status.success());
    let (waits, _) = read(&path);
    let inside = from(&waits, stress.id());
    assert!(inside >= 100, "{inside} waits of the process in the cgroup");
    assert_eq!(waits.len() - inside, 0, "waits from outside the cgroup");
    // The file says which cgroup each thread was in, and the report groups by it.
    let report = bufscope()
        .args(["report", "--by", "cgroup", "--json"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(report.status.success());
    let report: serde_json::Value = serde_json::from_slice(&report.stdout).unwrap();
    let rows: Vec<(String, u64)> = report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_string(),
                r["contended"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(rows, [(cgroup.name(), inside as u64)]);
}

#[test]
fn type_tid_comm_and_min_wait_keep_only_what_they_name() {
    let _alone = one_at_a_time();
    if !root_or_skip("type_tid_comm_and_min_wait_keep_only_what_they_name") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let workload = PipeContention::start(8);
    let me = std::process::id().to_string();
    // The same workload three ways: all its waits, its mutex waits only (in the kernel), and
    // the writers' waits of 2 us or more (in user space).
    let all = dir.path().join("all.bftrace");
    let mutex = dir.path().join("mutex.bftrace");
    let writers = dir.path().join("writers.bftrace");
    let out_all = record(&all, &["-d", "3s", "--pid", &me]);
    let out_mutex = record(&mutex, &["-d", "3s", "--pid", &me, "--type", "mutex"]);
    let out_writers = record(
        &writers,
        &[
            "-d",
            "3s",
            "--pid",
            &me,
            "--comm",
            PipeContention::WRITER_NAME,
            "--min-wait",
            "2us",
        ],
    );
    let writer_tids = workload.tids.clone();
    workload.stop();
    assert!(out_all.status.success() && out_mutex.status.success());
    assert!(out_writers.status.success());

    let (all, _) = read(&all);
    let types = |waits: &[LockWait]| -> BTreeSet<&'static str> {
        waits
            .iter()
            .map(|w| bufscope_abi::LockFlags(w.flags).type_name())
            .collect()
    };
    // The unfiltered recording has other types too (the pipe's wake-ups take spinlocks).
    assert!(types(&all).len() >= 2, "{:?}", types(&all));
    let (mutex, filtered) = read(&mutex);
    assert!(mutex.len() >= 1_000, "{} mutex waits", mutex.len());
    assert_eq!(types(&mutex), BTreeSet::from(["mutex"]));
    assert!(
        filtered > 0,
        "other types' begins were left out in the kernel"
    );
    let (writers, _) = read(&writers);
    assert!(
        writers.len() >= 100,
        "{} waits of the writers",
        writers.len()
    );
    let wrong: Vec<&LockWait> = writers
        .iter()
        .filter(|w| !writer_tids.contains(&w.tid) || w.wait_ns < 2_000)
        .collect();
    assert!(
        wrong.is_empty(),
        "{} waits kept that were not asked for: {:?}",
        wrong.len(),
        wrong.first()
    );
    let stderr = String::from_utf8_lossy(&out_writers.stderr);
    assert!(
        stderr.contains("left out by --tid, --comm, --min-wait, --lock or --stack"),
        "{stderr}"
    );
}

/// `bufscope live --no-tui ARGS…` run to its end, and when it ended (seconds since the epoch).
fn live_no_tui(args: &[&str]) -> (Output, f64) {
    let out = bufscope()
        .args(["live", "--no-tui"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("bufscope live runs");
    let ended = unix_secs();
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    (out, ended)
}

fn unix_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[test]
fn live_watches_a_command_for_its_lifetime_and_exits_with_its_status() {
    let _alone = one_at_a_time();
    if !root_or_skip("live_watches_a_command_for_its_lifetime_and_exits_with_its_status") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // The command writes the time it ends at, then ends with status 3. The duration is a
    // backstop: a live that missed the command's end would run into it.
    let stamp = dir.path().join("ended");
    let script = format!("sleep 2; date +%s.%N > {}; exit 3", stamp.display());
    let (out, exited) = live_no_tui(&[
        "--interval",
        "500",
        "--duration",
        "60s",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "the command's status: {stderr}");
    assert!(
        stderr.contains("the command ended (exit status: 3)"),
        "{stderr}"
    );
    let ended: f64 = std::fs::read_to_string(&stamp)
        .expect("the command ran")
        .trim()
        .parse()
        .unwrap();
    let lag = exited - ended;
    assert!(
        (0.0..2.0).contains(&lag),
        "bufscope ended {lag:.2} s after the command did"
    );
    // A table each half second of the command's 2 s, and one for the stretch up to its end.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let tables = stdout.lines().filter(|l| l.starts_with("--- ")).count();
    assert!((3..=6).contains(&tables), "{tables} tables:\n{stdout}");

    // Killed by a signal: 128 + its number, as a shell says.
    let (out, _) = live_no_tui(&["--duration", "60s", "--", "sh", "-c", "kill -KILL $$"]);
    assert_eq!(out.status.code(), Some(128 + 9));
    // A command that cannot start is an error, naming it.
    let (out, _) = live_no_tui(&["--duration", "60s", "--", "/nonexistent/cmd"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("running /nonexistent/cmd"), "{stderr}");
}

/// A recording's sleeping-lock waits (mutexes, rwsems) judged by one text filter: (waits,
/// matching). Spinlock waits differ between recordings made at once: each recording's probes
/// contend on their ring buffer's lock and wake its reader (runqueue locks) inside the
/// workload's threads, under its stacks, where the others see them.
fn judged(path: &Path, filter: &Filter) -> (u64, u64) {
    let trace = TraceData::load(path).unwrap_or_else(|e| panic!("{e}"));
    let (mut waits, mut matching) = (0, 0);
    for w in &trace.waits {
        if bufscope_abi::LockFlags(w.flags).is_pure_spin() {
            continue;
        }
        waits += 1;
        let matches = match filter {
            Filter::Lock(text) => trace.names.lock_matches(w.lock_addr, w.flags, text),
            Filter::Stack(text) => w
                .stack_id
                .and_then(|id| trace.names.stack(id))
                .is_some_and(|frames| frames.iter().any(|f| f.contains(text))),
        };
        matching += u64::from(matches);
    }
    (waits, matching)
}

#[derive(Debug)]
enum Filter {
    Lock(&'static str),
    Stack(&'static str),
}

impl Filter {
    fn args(&self) -> [&'static str; 2] {
        match self {
            Filter::Lock(text) => ["--lock", text],
            Filter::Stack(text) => ["--stack", text],
        }
    }
}

/// What `report --json ARGS FILE` says: the waits in the file, and those its filters kept.
fn report_kept(path: &Path, args: &[&str]) -> (u64, u64) {
    let out = bufscope()
        .args(["report", "--json"])
        .args(args)
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    (
        report["waits"].as_u64().unwrap(),
        report["kept"].as_u64().unwrap(),
    )
}

/// Lock wait events a recording's probes handed over (submitted), those it could not (ring
/// buffer full, program runs the kernel skipped), and those malformed.
fn delivered(path: &Path) -> (u64, u64, u64) {
    let mut reader = TraceReader::open(path).unwrap_or_else(|e| panic!("{e}"));
    let (mut submitted, mut lost, mut malformed) = (0, 0, 0);
    while let Some(record) = reader.next_record().unwrap_or_else(|e| panic!("{e}")) {
        match record {
            Record::Metadata(Metadata::LossCounts {
                kernel,
                user_dropped,
                ..
            }) => {
                submitted = kernel.get("submitted").copied().unwrap_or(0);
                lost += kernel.get("ringbuf_full").copied().unwrap_or(0);
                malformed = user_dropped;
            }
            Record::Metadata(Metadata::Probes { programs, .. }) => {
                lost += programs.iter().map(|p| p.recursion_misses).sum::<u64>();
            }
            _ => {}
        }
    }
    (submitted, lost, malformed)
}

/// The count in record's "N lock waits left out by …" line, once it has printed its last line.
fn left_out(lines: &Arc<Mutex<Vec<String>>>) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lines = lines.lock().unwrap();
        if lines.iter().any(|l| l.contains("see it with")) {
            return lines
                .iter()
                .find_map(|l| {
                    let count = l
                        .strip_prefix("bufscope: ")?
                        .split_once(" lock waits left out")?
                        .0;
                    count.replace(',', "").parse().ok()
                })
                .unwrap_or(0);
        }
        drop(lines);
        assert!(Instant::now() < deadline, "record never finished");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn lock_and_stack_keep_the_waits_report_would_and_count_the_rest() {
    let _alone = one_at_a_time();
    if !root_or_skip("lock_and_stack_keep_the_waits_report_would_and_count_the_rest") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // One process, idle until told, then contending on a scratch file (its readers and writers
    // wait on the file's rwsem, from read and write paths), then gone: all its waits fall
    // inside three recordings of it, one unfiltered, one by --lock and one by --stack.
    let stress = stress_args(dir.path(), "2s").join(" ");
    let mut workload = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "read go; exec {} {stress}",
            env!("CARGO_BIN_EXE_bufscope")
        ))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = workload.id().to_string();
    let filters = [Filter::Lock("rwsem:W"), Filter::Stack("write_iter")];
    let path = |name: &str| dir.path().join(format!("{name}.bftrace"));
    let start = |name: &str, filter: &[&str]| {
        let file = path(name);
        let mut args = vec![
            "--no-bufio",
            "--exact-stacks",
            "--include-self",
            "--pid",
            &pid,
            "-o",
            file.to_str().unwrap(),
        ];
        args.extend(filter);
        common::start_recording_collecting(&args)
    };
    let recordings = [
        start("all", &[]),
        start("lock", &filters[0].args()),
        start("stack", &filters[1].args()),
    ];
    std::io::Write::write_all(workload.stdin.as_mut().unwrap(), b"go\n").unwrap();
    assert!(workload.wait().unwrap().success(), "bufscope stress failed");
    let mut stderr = Vec::new();
    for (mut child, _, lines) in recordings {
        // SAFETY: kill with a child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        assert!(child.wait().unwrap().success());
        stderr.push(lines);
    }

    let all = path("all");
    let (_, lost_all, _) = delivered(&all);
    for ((filter, name), lines) in filters.iter().zip(["lock", "stack"]).zip(&stderr[1..]) {
        let file = path(name);
        // Every wait kept matches as `report` judges it from the finished file.
        let (kept, kept_matching) = report_kept(&file, &filter.args());
        assert_eq!(
            kept_matching, kept,
            "{filter:?} kept a wait report does not match"
        );
        // Every wait the probes handed over was kept or counted as left out.
        let left_out = left_out(lines);
        let (submitted, lost, malformed) = delivered(&file);
        assert_eq!(
            kept + left_out,
            submitted - malformed,
            "{filter:?}: kept {kept} and left out {left_out} of {submitted} waits handed over"
        );
        // The workload's sleeping-lock waits: those matching kept, as the unfiltered recording
        // has them (exactly, unless one of the two lost events).
        let (waits, matching) = judged(&all, filter);
        let others = waits - matching;
        assert!(
            matching >= 100 && others >= 100,
            "{filter:?}: the workload gives both kinds: {matching} of {waits} waits match"
        );
        let (own, own_kept) = judged(&file, filter);
        assert_eq!(own, own_kept, "{filter:?}");
        let slack = lost_all + lost;
        eprintln!(
            "{filter:?}: unfiltered {waits} waits, {matching} matching; kept {own_kept} of them, \
             left out {left_out} in all; lost {slack}"
        );
        assert!(
            own_kept.abs_diff(matching) <= slack,
            "{filter:?}: kept {own_kept} of the workload's waits, the unfiltered recording has \
             {matching} matching (events lost in the two: {slack})"
        );
    }
}
