//! Trace files written from the probes' event stream, for `bufscope record` and for the live
//! view's `--record` and `r`: one [`Recorder`] per file, finished with what its events refer to.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::File,
    io::{BufWriter, Write},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use bufscope_trace::{Metadata, ProgramRun, Thread, TraceHeader, TraceWriter};
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    kernel::{lock_classes, symbols::KernelSymbols, system},
    probes::{ClientHow, ClientSighting, Event, LockProbes, ProbeError},
    stop::sleep_until,
    wait_filter::{WaitFilter, WaitSelector},
    watched::{CommandError, Watched, command_exit},
};

/// Why a recording could not go on; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("creating {}", path.display())]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing {}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("reading the in-kernel counters")]
    Counters(#[source] ProbeError),
    #[error("opening the event ring buffer")]
    OpenStream(#[source] std::io::Error),
    #[error("reading the event ring buffer")]
    ReadStream(#[source] std::io::Error),
    #[error("installing the {0} handler")]
    Signal(&'static str, #[source] std::io::Error),
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error("updating the probes' process filter")]
    Processes(#[source] ProbeError),
}

/// Why a recording ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    DurationReached,
    Interrupted,
    Terminated,
    /// The command recorded (`record -- CMD`) ended so.
    CommandExited(std::process::ExitStatus),
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StopReason::DurationReached => f.write_str("duration reached"),
            StopReason::Interrupted => f.write_str("interrupted"),
            StopReason::Terminated => f.write_str("terminated"),
            StopReason::CommandExited(status) => write!(f, "the command ended ({status})"),
        }
    }
}

/// A recording that ended.
#[derive(Debug)]
pub struct RecordingOutcome {
    pub stopped_by: StopReason,
    pub path: PathBuf,
    pub elapsed: Duration,
    pub finished: Finished,
    /// Lock waits the recorder's [`WaitFilter`] left out.
    pub left_out: u64,
}

/// Records the probes' events into `recorder` until `duration` passes, SIGINT or SIGTERM,
/// flushing every second (so a crash loses at most the last second) and calling `progress` with
/// the time so far, the lock waits and the bytes written. Then detaches the probes, drains the
/// ring buffer and finishes the file.
pub async fn record_until_stopped(
    probes: &mut LockProbes,
    mut recorder: Recorder,
    duration: Option<Duration>,
    mut watched: Option<Watched>,
    mut progress: impl FnMut(Duration, u64, u64),
) -> Result<RecordingOutcome, RecordError> {
    let mut stream = probes.event_stream().map_err(RecordError::OpenStream)?;
    let handler = |kind, name| signal(kind).map_err(|e| RecordError::Signal(name, e));
    let mut interrupt = handler(SignalKind::interrupt(), "SIGINT")?;
    let mut terminate = handler(SignalKind::terminate(), "SIGTERM")?;
    let started = Instant::now();
    let deadline = duration.map(|d| tokio::time::Instant::now() + d);
    let second = Duration::from_secs(1);
    let mut flush_tick = tokio::time::interval_at(tokio::time::Instant::now() + second, second);
    flush_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut batch = Vec::with_capacity(4096);
    let stopped_by = loop {
        // Signals and ticks first: a flood of events must not delay them.
        tokio::select! {
            biased;
            _ = flush_tick.tick() => {
                recorder.flush()?;
                recorder.refresh_filter(probes);
                progress(started.elapsed(), recorder.waits(), recorder.bytes());
                follow_processes(probes, watched.as_ref())?;
            }
            _ = sleep_until(deadline) => break StopReason::DurationReached,
            _ = interrupt.recv() => break StopReason::Interrupted,
            _ = terminate.recv() => break StopReason::Terminated,
            status = command_exit(watched.as_mut()) => {
                break StopReason::CommandExited(status?);
            }
            ready = stream.next_batch(&mut batch) => {
                ready.map_err(RecordError::ReadStream)?;
                recorder.write(probes, &batch)?;
                batch.clear();
            }
        }
    };
    // Stop new events first, then take everything still in the ring buffer.
    probes.detach();
    stream.drain_now(&mut batch);
    recorder.write(probes, &batch)?;
    let path = recorder.path.clone();
    let left_out = recorder.left_out();
    let finished = recorder.finish(probes, stream.malformed())?;
    Ok(RecordingOutcome {
        stopped_by,
        path,
        elapsed: started.elapsed(),
        finished,
        left_out,
    })
}

/// Each second: bufscope processes started since are left out, and with `--only-cmd` the
/// processes the command started are kept ([`Watched::follow`]).
fn follow_processes(probes: &mut LockProbes, watched: Option<&Watched>) -> Result<(), RecordError> {
    probes.refresh_processes().map_err(RecordError::Processes)?;
    probes.flush_kernel_notes();
    if let Some(w) = watched {
        w.follow(probes)?;
    }
    Ok(())
}

/// When a recording began, on the wall clock and the event clock.
#[derive(Clone, Copy, Debug)]
pub struct RecordingStart {
    pub unix_ns: u64,
    pub clock_ns: u64,
}

impl RecordingStart {
    pub fn now() -> Self {
        Self {
            unix_ns: system::unix_ns(),
            clock_ns: system::monotonic_ns(),
        }
    }
}

/// What a finished recording holds.
#[derive(Debug)]
pub struct Finished {
    pub waits: u64,
    pub ops: u64,
    pub clients: usize,
    pub bytes: u64,
    pub kernel_counters: BTreeMap<String, u64>,
    /// Program runs the kernel skipped (recursion misses): events lost.
    pub skipped_runs: u64,
    /// Why the stacks were kept as addresses, when symbols could not be had.
    pub symbols_note: Option<String>,
}

/// A trace file being written from the probes' events: `record`, and `live --record` / `r`.
/// The names of the threads seen go into the file with every [`Recorder::flush`];
/// [`Recorder::finish`] adds the last of them, what the events referred to (stacks, symbols),
/// what the probes covered and cost, the losses, and the end record.
pub struct Recorder {
    pub path: PathBuf,
    writer: TraceWriter<BufWriter<File>>,
    seen: SeenReferences,
    selector: WaitSelector,
    kept: Vec<Event>,
    /// dm-bufio's cache size as the recording began (None without dm-bufio).
    cache_size_bytes: Option<u64>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("path", &self.path)
            .finish()
    }
}

impl Recorder {
    /// Creates `path` (the caller has checked it may) and writes the header.
    pub fn create(
        path: &Path,
        probes: &LockProbes,
        start: RecordingStart,
    ) -> Result<Self, RecordError> {
        let header = TraceHeader {
            writer: format!("bufscope {}", env!("CARGO_PKG_VERSION")),
            kernel_release: system::kernel_release(),
            host: system::host_name(),
            clock: "CLOCK_MONOTONIC".into(),
            start_unix_ns: start.unix_ns,
            start_clock_ns: start.clock_ns,
            cpus: system::online_cpus(),
            probes: probes.descriptions(),
        };
        let file = File::create(path).map_err(|source| RecordError::Create {
            path: path.to_path_buf(),
            source,
        })?;
        let writer = TraceWriter::new(BufWriter::with_capacity(1 << 20, file), &header).map_err(
            |source| RecordError::Write {
                path: path.to_path_buf(),
                source,
            },
        )?;
        Ok(Self {
            path: path.to_path_buf(),
            writer,
            seen: SeenReferences::default(),
            selector: WaitSelector::new(WaitFilter::default()),
            kept: Vec::new(),
            cache_size_bytes: crate::kernel::bufio::cache_size_bytes(),
        })
    }

    fn write_error(&self) -> impl FnOnce(std::io::Error) -> RecordError + use<'_> {
        |source| RecordError::Write {
            path: self.path.clone(),
            source,
        }
    }

    pub fn write(&mut self, probes: &LockProbes, events: &[Event]) -> Result<(), RecordError> {
        if self.selector.keeps_all() {
            let result = self.seen.write(&mut self.writer, probes, events);
            return result.map_err(self.write_error());
        }
        let mut kept = std::mem::take(&mut self.kept);
        kept.clear();
        let selector = &mut self.selector;
        kept.extend(events.iter().filter(|e| selector.keeps(probes, e)).cloned());
        let result = self.seen.write(&mut self.writer, probes, &kept);
        self.kept = kept;
        result.map_err(self.write_error())
    }

    /// Keeps only the lock waits `filter` wants from now on.
    pub fn set_filter(&mut self, filter: WaitFilter) {
        self.selector = WaitSelector::new(filter);
    }

    /// Lock waits the filter left out so far.
    pub fn left_out(&self) -> u64 {
        self.selector.left_out()
    }

    /// Lets the filter learn the lock names found since the last call; every second or so.
    pub fn refresh_filter(&mut self, probes: &LockProbes) {
        self.selector.refresh(probes);
    }

    /// Writes the events held so far and the names of the threads they brought, and flushes
    /// the file, so that a crash loses nothing before this point.
    pub fn flush(&mut self) -> Result<(), RecordError> {
        let result = self.seen.threads.write(&mut self.writer);
        let result = result.and_then(|()| self.writer.flush());
        result.map_err(self.write_error())
    }

    pub fn waits(&self) -> u64 {
        self.writer.lock_waits()
    }

    pub fn ops(&self) -> u64 {
        self.writer.bufio_ops()
    }

    pub fn bytes(&self) -> u64 {
        self.writer.bytes_written()
    }

    /// Writes the stacks the waits used with their symbols, the names of static locks, what
    /// the probes covered and cost, the loss counts and the end record, and closes the file.
    /// Removes the file before anything was recorded into it (the command to record could
    /// not start): an empty trace would only mislead.
    pub fn discard(self) {
        let path = self.path.clone();
        drop(self);
        let _ = std::fs::remove_file(path);
    }

    pub fn finish(
        mut self,
        probes: &LockProbes,
        user_dropped: u64,
    ) -> Result<Finished, RecordError> {
        let path = self.path.clone();
        let failed = |source| RecordError::Write {
            path: path.clone(),
            source,
        };
        let writer = &mut self.writer;
        self.seen.threads.write(writer).map_err(failed)?;
        // One read of kallsyms names both the stacks' frames and the static locks.
        let kernel_symbols = KernelSymbols::new();
        let symbols_note =
            write_stacks(writer, probes, &self.seen.stack_ids, &kernel_symbols).map_err(failed)?;
        let static_locks: Vec<u64> = self.seen.static_locks.iter().copied().collect();
        let mut lock_symbols = kernel_symbols.static_lock_names(&static_locks);
        let classes = lock_classes::class_symbols(&probes.lock_classes());
        // A slab cache names only what nothing more specific names (a dm-thin pool's root_lock
        // lives in a kmalloc'd object too, and the thin probe may name it later).
        let slab: Vec<_> = probes
            .slab_lock_symbols()
            .into_iter()
            .filter(|s| !classes.iter().any(|c| c.addr == s.addr))
            .collect();
        lock_symbols.extend(classes);
        lock_symbols.extend(slab);
        // Every zone lock, contended or not: a handful per node.
        lock_symbols.extend(probes.zone_lock_symbols().iter().cloned());
        if !lock_symbols.is_empty() {
            writer
                .write_metadata(&Metadata::Symbols {
                    symbols: lock_symbols,
                })
                .map_err(failed)?;
        }
        let bufio = probes.bufio();
        let programs = probes.program_stats();
        let skipped_runs = crate::probes::skipped_runs(&programs);
        writer
            .write_metadata(&Metadata::Probes {
                bufio_design: bufio.design.map(|d| d.describe().to_string()),
                cache_size_bytes: self.cache_size_bytes,
                missing: match &bufio.unavailable {
                    Some(why) => BTreeMap::from([("dm-bufio".to_string(), why.to_string())]),
                    None => bufio.missing_reasons().into_iter().collect(),
                },
                programs: programs
                    .into_iter()
                    .map(|p| ProgramRun {
                        program: p.program,
                        run_count: p.run_count,
                        run_time_ns: p.run_time_ns,
                        recursion_misses: p.recursion_misses,
                    })
                    .collect(),
            })
            .map_err(failed)?;
        let kernel = probes.counters().map_err(RecordError::Counters)?;
        writer
            .write_metadata(&Metadata::LossCounts {
                at_clock_ns: system::monotonic_ns(),
                kernel: kernel.clone(),
                user_dropped,
            })
            .map_err(failed)?;
        let (waits, ops) = (writer.lock_waits(), writer.bufio_ops());
        let (mut out, _) = self.writer.finish(system::unix_ns()).map_err(failed)?;
        out.flush().map_err(failed)?;
        Ok(Finished {
            waits,
            ops,
            clients: self.seen.clients.len(),
            bytes: out.get_ref().metadata().map(|m| m.len()).unwrap_or(0),
            kernel_counters: kernel,
            skipped_runs,
            symbols_note,
        })
    }
}

/// What the events written so far refer to, for the end of the file: the clients seen, the
/// stack ids the waits used, the static locks they waited on, and the threads. Writing events
/// goes through it: lock waits and operations into chunks, clients into metadata records with
/// their lock addresses.
#[derive(Default)]
struct SeenReferences {
    clients: BTreeMap<u64, ClientSighting>,
    stack_ids: BTreeSet<u32>,
    /// Locks at kernel-image or module addresses: static locks, named from kallsyms at the end.
    static_locks: BTreeSet<u64>,
    threads: ThreadNames,
}

/// Thread names for the file (see [`system::NewThreads`]), written with each flush.
#[derive(Debug, Default)]
struct ThreadNames {
    new: system::NewThreads,
    /// Learned since the last write.
    unwritten: Vec<Thread>,
}

impl ThreadNames {
    fn see(&mut self, tid: u32, tgid: u32) {
        if let Some(thread) = self.new.learn(tid, tgid) {
            self.unwritten.push(thread);
        }
    }

    /// Writes the names learned since the last call as one metadata record, if there are any.
    fn write<W: Write>(&mut self, writer: &mut TraceWriter<W>) -> std::io::Result<()> {
        if self.unwritten.is_empty() {
            return Ok(());
        }
        let threads = std::mem::take(&mut self.unwritten);
        writer.write_metadata(&Metadata::Threads { threads })
    }
}

impl SeenReferences {
    fn write<W: Write>(
        &mut self,
        writer: &mut TraceWriter<W>,
        probes: &LockProbes,
        events: &[Event],
    ) -> std::io::Result<()> {
        for event in events {
            match event {
                &Event::LockWait(wait) => {
                    self.threads.see(wait.tid, wait.tgid);
                    if let Some(owner) = wait.owner.thread() {
                        self.threads.see(owner.tid, owner.tgid);
                        self.stack_ids.extend(owner.stack_id);
                    }
                    if let Some(id) = wait.stack_id {
                        self.stack_ids.insert(id);
                    }
                    if wait.lock_addr >= 0xffff_ffff_8000_0000 {
                        self.static_locks.insert(wait.lock_addr);
                    }
                    writer.push(wait)?;
                }
                &Event::Op(op) => {
                    self.threads.see(op.tid, op.tgid);
                    writer.push_op(op)?;
                }
                Event::Client(client) => {
                    let seen_ns = match self.clients.get(&client.addr) {
                        Some(earlier) if client.how == ClientHow::Destroyed => earlier.at_ns,
                        _ => client.at_ns,
                    };
                    writer.write_metadata(&Metadata::Client {
                        addr: client.addr,
                        device: client.device.clone(),
                        block_size: client.block_size,
                        locks: probes.client_locks(client),
                        seen_ns,
                        destroyed_ns: (client.how == ClientHow::Destroyed).then_some(client.at_ns),
                    })?;
                    self.clients.insert(client.addr, client.clone());
                }
            }
        }
        Ok(())
    }
}

/// The stacks the recorded waits refer to, and the symbols of their frames and of the locks
/// (so the file names them on any machine). Returns why symbols are missing, if they are.
fn write_stacks<W: Write>(
    writer: &mut TraceWriter<W>,
    probes: &LockProbes,
    ids: &BTreeSet<u32>,
    symbols: &KernelSymbols,
) -> std::io::Result<Option<String>> {
    let mut addrs = BTreeSet::new();
    for &id in ids {
        if let Some(frames) = probes.stack(id) {
            addrs.extend(frames.iter().copied());
            writer.write_metadata(&Metadata::Stack { id, frames })?;
        }
    }
    if addrs.is_empty() {
        return Ok(None);
    }
    let addrs: Vec<u64> = addrs.into_iter().collect();
    let (symbols, note) = symbols.symbolize(&addrs);
    writer.write_metadata(&Metadata::Symbols { symbols })?;
    Ok(note.map(|note| format!("{note}; stacks are kept as addresses")))
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use bufscope_trace::{Record, TraceReader};

    use super::*;

    #[test]
    fn threads_are_named_once_while_alive_and_written_as_they_are_learned() {
        let (tid_tx, tid_rx) = mpsc::channel();
        let (exit_tx, exit_rx) = mpsc::channel::<()>();
        let dirtier = std::thread::Builder::new()
            .name("bufio_dirty".into())
            .spawn(move || {
                // SAFETY: gettid and getpid have no preconditions.
                tid_tx
                    .send(unsafe { (libc::gettid() as u32, libc::getpid() as u32) })
                    .unwrap();
                let _ = exit_rx.recv();
            })
            .unwrap();
        let (tid, tgid) = tid_rx.recv().unwrap();

        let mut names = ThreadNames::default();
        let mut writer = TraceWriter::new(Vec::new(), &TraceHeader::default()).unwrap();
        names.write(&mut writer).unwrap();
        names.see(tid, tgid);
        names.see(tid, tgid);
        names.write(&mut writer).unwrap();
        names.write(&mut writer).unwrap();
        let (bytes, end) = writer.finish(0).unwrap();
        assert_eq!(
            end.metadata_records, 1,
            "one record, only when there is news"
        );
        let threads: Vec<Thread> = TraceReader::new(&bytes[..], "names")
            .unwrap()
            .filter_map(|r| match r.unwrap() {
                Record::Metadata(Metadata::Threads { threads }) => Some(threads),
                _ => None,
            })
            .flatten()
            .collect();
        let expected = Thread {
            tid,
            tgid,
            comm: "bufio_dirty".into(),
            // Its cgroup as the kernel says it (this process's: threads share it here).
            cgroup: std::fs::read_to_string("/proc/self/cgroup")
                .ok()
                .and_then(|t| {
                    t.lines()
                        .find_map(|l| Some(l.strip_prefix("0::")?.to_string()))
                }),
        };
        assert_eq!(threads, [expected], "named once, by its comm and cgroup");

        drop(exit_tx);
        dirtier.join().unwrap();
        // join returns when the thread is done, the kernel reaps it a moment later.
        let task = format!("/proc/{tgid}/task/{tid}");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while Path::new(&task).exists() {
            assert!(std::time::Instant::now() < deadline, "{task} still there");
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut names = ThreadNames::default();
        names.see(tid, tgid);
        assert!(names.new.seen(tid));
        assert!(
            names.unwritten.is_empty(),
            "an exited thread stays unnamed: {:?}",
            names.unwritten
        );
    }
}
