//! Shared pieces of bufscope's integration tests: the real binary, a real lock-contention
//! workload, and skips that say why.

#![allow(dead_code, reason = "each test binary uses a different subset")]

pub mod userfault;

use std::{
    io::{BufRead, BufReader, Read, Write},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

/// The bufscope binary under test: `BUFSCOPE_BIN` where set (`cargo xtask test` sets it to the
/// static release binary for the tests that measure bufscope's cost), else this build's.
pub fn bufscope() -> Command {
    Command::new(bufscope_path())
}

pub fn bufscope_path() -> std::ffi::OsString {
    std::env::var_os(BUFSCOPE_BIN).unwrap_or_else(|| env!("CARGO_BIN_EXE_bufscope").into())
}

/// Names the bufscope binary the tests run, overriding this build's.
pub const BUFSCOPE_BIN: &str = "BUFSCOPE_BIN";

/// Set to 1 by `cargo xtask test`: a run that skips is not a pass, so there a skip fails.
const REQUIRE_ALL_TESTS: &str = "BUFSCOPE_REQUIRE_ALL_TESTS";

/// Says why `test` cannot run, for the caller to return early. The message goes straight to the
/// process's stderr, past the test harness's capture, so a skip is never silent; with
/// BUFSCOPE_REQUIRE_ALL_TESTS=1 it panics instead, failing the test.
pub fn skip(test: &str, why: &str) {
    if std::env::var(REQUIRE_ALL_TESTS).is_ok_and(|v| v == "1") {
        panic!(
            "{test} cannot run: {why}; under `cargo xtask test` ({REQUIRE_ALL_TESTS}=1) a skip \
             is a failure"
        );
    }
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED {test}: {why}");
}

/// True when running as root; otherwise the calling test skips (see [`skip`]).
pub fn root_or_skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    skip(
        test,
        "loading eBPF programs needs root (run `sudo -E cargo xtask test`)",
    );
    false
}

/// Starts `bufscope record` and waits until its probes are attached.
pub fn start_recording(args: &[&str]) -> (Child, Vec<String>) {
    let (child, seen, _) = start_recording_collecting(args);
    (child, seen)
}

/// As [`start_recording`], with what it prints on stderr after attaching, as it prints it.
pub fn start_recording_collecting(args: &[&str]) -> (Child, Vec<String>, Arc<Mutex<Vec<String>>>) {
    let mut child = bufscope()
        .arg("record")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("bufscope starts");
    let stderr = child.stderr.take().expect("piped");
    let mut lines = BufReader::new(stderr).lines();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("bufscope record exited before attaching: {seen:#?}"))
            .expect("stderr is text");
        let attached = line.contains("recording lock contention");
        seen.push(line);
        if attached {
            break;
        }
        assert!(Instant::now() < deadline, "no attach after 30 s: {seen:#?}");
    }
    // Keep draining stderr so the child never blocks on a full pipe.
    let collected = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&collected);
    thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    (child, seen, collected)
}

/// A pipe writer started and held before its first write, for
/// [`PipeContention::start_with_slot_mates`]: `true` through `gate` lets it write, `false` ends
/// it.
struct GatedWriter {
    handle: JoinHandle<()>,
    tid: u32,
    gate: mpsc::Sender<bool>,
}

/// Eight or more threads writing 64-byte chunks into one pipe: writers contend on the pipe's
/// mutex, so the kernel emits lock:contention_begin/end with the MUTEX flag from these threads.
/// The writers are named [`PipeContention::WRITER_NAME`], the reader `pipe-reader`.
pub struct PipeContention {
    stop: Arc<AtomicBool>,
    writers: Vec<JoinHandle<()>>,
    reader: Option<JoinHandle<()>>,
    /// The writers' thread ids.
    pub tids: Vec<u32>,
    /// The reader's thread id.
    pub reader_tid: u32,
    pub chunks: Arc<AtomicU64>,
    write_fd: i32,
}

impl PipeContention {
    /// The writer threads' name (their `comm`).
    pub const WRITER_NAME: &str = "pipe-writer";

    pub fn start(threads: usize) -> Self {
        Self::start_with_slot_mates(threads, 0)
    }

    /// As [`PipeContention::start`], with the last `mates` writers' thread ids each
    /// [`bufscope_abi::PENDING_THREAD_SLOTS`] (or a multiple) after one of the first ones':
    /// writer `threads - mates + i` shares writer `i`'s wait slot in the probes, so whichever
    /// of the two begins a wait while the other waits keeps it in the hash map instead.
    /// Finding the ids takes that many short-lived threads (a second or two).
    pub fn start_with_slot_mates(threads: usize, mates: usize) -> Self {
        assert!(
            mates * 2 <= threads,
            "{mates} mates need {} writers",
            mates * 2
        );
        let mut fds = [0i32; 2];
        // SAFETY: fds is a valid array of two ints.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0, "pipe()");
        let [read_fd, write_fd] = fds;
        let stop = Arc::new(AtomicBool::new(false));
        let chunks = Arc::new(AtomicU64::new(0));
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let reader = {
            let stop = Arc::clone(&stop);
            thread::Builder::new()
                .name("pipe-reader".into())
                .spawn(move || {
                    // SAFETY: gettid has no preconditions.
                    tid_tx.send(unsafe { libc::gettid() } as u32).unwrap();
                    let mut buf = vec![0u8; 1 << 16];
                    while !stop.load(Ordering::Relaxed) {
                        // SAFETY: buf is valid for its length; read_fd stays open until after join.
                        let n = unsafe { libc::read(read_fd, buf.as_mut_ptr().cast(), buf.len()) };
                        if n <= 0 {
                            break;
                        }
                    }
                    // SAFETY: closing our own fd once.
                    unsafe { libc::close(read_fd) };
                })
                .expect("the pipe reader starts")
        };
        let reader_tid = tid_rx.recv().unwrap();
        // A writer started, its id known, held at a gate: it writes once let through, and
        // ends at once if not.
        let gated_writer = || {
            let (stop, chunks) = (Arc::clone(&stop), Arc::clone(&chunks));
            let (tid_tx, tid_rx) = mpsc::channel();
            let (gate_tx, gate_rx) = mpsc::channel::<bool>();
            let handle = thread::Builder::new()
                .name(Self::WRITER_NAME.into())
                .spawn(move || {
                    // SAFETY: gettid has no preconditions.
                    tid_tx.send(unsafe { libc::gettid() } as u32).unwrap();
                    if !gate_rx.recv().unwrap_or(false) {
                        return;
                    }
                    let chunk = [b'x'; 64];
                    while !stop.load(Ordering::Relaxed) {
                        // SAFETY: chunk is valid; write_fd stays open until the writers end.
                        let n =
                            unsafe { libc::write(write_fd, chunk.as_ptr().cast(), chunk.len()) };
                        if n <= 0 {
                            break;
                        }
                        chunks.fetch_add(1, Ordering::Relaxed);
                    }
                })
                .expect("a pipe writer starts");
            GatedWriter {
                handle,
                tid: tid_rx.recv().unwrap(),
                gate: gate_tx,
            }
        };
        let mut started: Vec<_> = (0..threads - mates).map(|_| gated_writer()).collect();
        let slot = |tid: u32| tid % bufscope_abi::PENDING_THREAD_SLOTS;
        let burn = || {
            thread::spawn(|| {
                // SAFETY: gettid has no preconditions.
                unsafe { libc::gettid() as u32 }
            })
            .join()
            .unwrap()
        };
        for i in 0..mates {
            let wanted = slot(started[i].tid);
            // How many ids after `tid` the next one in the wanted slot is.
            let before_wanted = |tid: u32| {
                (wanted + bufscope_abi::PENDING_THREAD_SLOTS - slot(tid))
                    % bufscope_abi::PENDING_THREAD_SLOTS
            };
            // Thread ids are handed out in turn, skipping those in use (the writers' own among
            // them): threads that only end are started until the ids come near the slot, then
            // writers until one lands in it; one that lands past it (the id was in use) ends,
            // and the ids go round again (they wrap at pid_max).
            let (mut last, mut tries) = (burn(), 0);
            loop {
                if !(1..=8).contains(&before_wanted(last)) {
                    last = burn();
                    continue;
                }
                let writer = gated_writer();
                if slot(writer.tid) == wanted {
                    started.push(writer);
                    break;
                }
                last = writer.tid;
                writer.gate.send(false).unwrap();
                writer.handle.join().unwrap();
                tries += 1;
                assert!(tries < 64, "no free thread id in slot {wanted} in 64 tries");
            }
        }
        let tids: Vec<u32> = started.iter().map(|w| w.tid).collect();
        let writers = started
            .into_iter()
            .map(|w| {
                w.gate.send(true).unwrap();
                w.handle
            })
            .collect();
        Self {
            stop,
            writers,
            reader: Some(reader),
            tids,
            reader_tid,
            chunks,
            write_fd,
        }
    }

    pub fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        for w in self.writers.drain(..) {
            w.join().unwrap();
        }
        // SAFETY: all writers have ended; closing the write end wakes the reader with EOF.
        unsafe { libc::close(self.write_fd) };
        self.reader.take().unwrap().join().unwrap();
        self.chunks.load(Ordering::Relaxed)
    }
}

pub fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// bpftrace's version of bufscope's pairing: sleeping locks by thread, pure spinlocks by CPU,
/// the first begin kept; the sleeping locks' wait count and sum (the pipe's mutex) are what the
/// tools are compared on. Like bufscope, it keeps its own map work outside the waits: the begin
/// time is stored last, the end time read first (bpftrace's maps cost a few hundred ns each, so
/// the usual `@start[tid] = nsecs; @lock[tid] = ...` would add a microsecond to every wait).
/// `$1` is the workload's pid.
pub const MINIMAL_PAIRING: &str = r#"
tracepoint:lock:contention_begin /pid == $1/ {
    if ((args->flags & 33) == 1) {
        if (@sstart[cpu] == 0) { @slock[cpu] = args->lock_addr; @sstart[cpu] = nsecs; }
    } else if (@start[tid] == 0) {
        @lock[tid] = args->lock_addr; @start[tid] = nsecs;
    }
}
tracepoint:lock:contention_end /pid == $1/ {
    $now = nsecs;
    if (@sstart[cpu] != 0 && @slock[cpu] == args->lock_addr) {
        delete(@sstart[cpu]); delete(@slock[cpu]);
    } else if (@start[tid] != 0) {
        if (@lock[tid] == args->lock_addr) {
            @wait_ns = sum($now - @start[tid]); @waits = count();
        }
        delete(@start[tid]); delete(@lock[tid]);
    }
}
END { clear(@start); clear(@lock); clear(@sstart); clear(@slock); }
"#;

/// A bpftrace map's value from its output (`@waits: 123`), 0 when it printed none.
pub fn bpftrace_count(lines: &[String], map: &str) -> u64 {
    lines
        .iter()
        .find_map(|l| l.strip_prefix(&format!("@{map}: "))?.trim().parse().ok())
        .unwrap_or(0)
}

/// An observer process, started and attached.
pub struct Observer {
    child: Child,
    output: mpsc::Receiver<String>,
}

/// Starts `cmd` and waits for a line containing `ready` on stdout or stderr.
pub fn start_observer(mut cmd: Command, ready: &str) -> Observer {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("observer starts");
    let (tx, rx) = mpsc::channel();
    for pipe in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let tx = tx.clone();
        thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("observer never said `{ready}`: {seen:#?}"));
        let done = line.contains(ready);
        seen.push(line);
        if done {
            break;
        }
    }
    Observer { child, output: rx }
}

impl Observer {
    /// SIGINT, wait, and everything it printed after attaching.
    pub fn stop(self) -> Vec<String> {
        self.stop_with_status().1
    }

    /// As [`Observer::stop`], with how it exited.
    pub fn stop_with_status(mut self) -> (std::process::ExitStatus, Vec<String>) {
        // SAFETY: kill with a child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let status = self.child.wait().expect("observer exits");
        let mut lines = Vec::new();
        while let Ok(line) = self.output.recv_timeout(Duration::from_millis(500)) {
            lines.push(line);
        }
        (status, lines)
    }

    /// Waits until `count` lines starting with `prefix` have come, however slowly this machine
    /// runs today (at most 2 minutes, then panics with what came); returns every line read.
    pub fn lines_until(&mut self, prefix: &str, count: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut lines: Vec<String> = Vec::new();
        while lines.iter().filter(|l| l.starts_with(prefix)).count() < count {
            match self
                .output
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) => lines.push(line),
                Err(_) => panic!("fewer than {count} lines starting `{prefix}`: {lines:#?}"),
            }
        }
        lines
    }
}

/// The running kernel's (major, minor) version.
pub fn kernel_version() -> (u32, u32) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok());
    (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0))
}
