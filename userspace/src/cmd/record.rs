//! `bufscope record`: kernel lock contention and dm-bufio operations to a trace file, until a
//! duration passes, Ctrl-C or SIGTERM. The file is flushed every second, so a crash loses at most
//! the last second; a clean stop drains the ring buffer, then writes the stacks the waits used
//! with their symbols, what the probes covered and cost, the loss counts and the end record.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::File,
    io::{BufWriter, IsTerminal, Write},
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use bufscope::{
    probe::{AttachMode, AttachOptions, ClientHow, ClientSighting, Event, LockProbes},
    symbols::{LockText, static_lock_names, symbolize_kernel},
    system,
};
use bufscope_abi::ProbeConfig;
use bufscope_trace::{Metadata, ProgramRun, TraceHeader, TraceWriter};
use tokio::signal::unix::{SignalKind, signal};

use super::{sleep_until, thousands};

#[derive(Debug)]
pub struct Options {
    pub output: PathBuf,
    pub duration: Option<Duration>,
    pub attach: AttachMode,
    pub ringbuf_bytes: u32,
    pub force: bool,
    pub stacks: bool,
    pub bufio: bool,
}

pub fn run(options: Options) -> anyhow::Result<ExitCode> {
    if options.output.exists() && !options.force {
        bail!(
            "{} exists; pass --force to overwrite it",
            options.output.display()
        );
    }
    if !system::is_root() {
        bail!("recording loads eBPF programs and needs root: run it with sudo -E");
    }
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(record(options))
}

async fn record(options: Options) -> anyhow::Result<ExitCode> {
    // Taken before attaching, so that every recorded wait begins after the trace's start.
    let start_unix_ns = system::unix_ns();
    let start_clock_ns = system::monotonic_ns();
    let mut probes = LockProbes::attach(AttachOptions {
        mode: options.attach,
        ringbuf_bytes: options.ringbuf_bytes,
        config: ProbeConfig {
            stream_events: 1,
            stacks: u32::from(options.stacks),
        },
        bufio: options.bufio,
    })?;
    let mut stream = probes
        .event_stream()
        .context("opening the event ring buffer")?;
    let mut recorder = Recorder::create(
        &options.output,
        &probes,
        Start {
            unix_ns: start_unix_ns,
            clock_ns: start_clock_ns,
        },
    )?;

    for note in probes.notes() {
        eprintln!("bufscope: {note}");
    }
    report_bufio_probes(&probes);
    eprintln!(
        "bufscope: recording {} ({} probes) to {}; {}",
        if probes.bufio().sees_operations() {
            "lock contention and dm-bufio operations"
        } else {
            "lock contention"
        },
        probes.mode(),
        options.output.display(),
        match options.duration {
            Some(d) => format!("for {}, or until Ctrl-C", humantime::format_duration(d)),
            None => "Ctrl-C to stop".into(),
        }
    );

    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let started = Instant::now();
    let deadline = options.duration.map(|d| tokio::time::Instant::now() + d);
    let mut progress = Progress::new();
    let second = Duration::from_secs(1);
    let mut flush_tick = tokio::time::interval_at(tokio::time::Instant::now() + second, second);
    let mut batch = Vec::with_capacity(4096);
    let stopped_by = loop {
        tokio::select! {
            ready = stream.next_batch(&mut batch) => {
                ready.context("reading the event ring buffer")?;
                recorder.write(&probes, &batch)?;
                batch.clear();
            }
            _ = flush_tick.tick() => {
                recorder.flush()?;
                progress.update(started.elapsed(), recorder.waits(), recorder.bytes());
            }
            _ = sleep_until(deadline) => break "duration reached",
            _ = interrupt.recv() => break "interrupted",
            _ = terminate.recv() => break "terminated",
        }
    };
    progress.finish();

    // Stop new events first, then take everything still in the ring buffer.
    probes.detach();
    stream.drain_now(&mut batch);
    recorder.write(&probes, &batch)?;
    let path = recorder.path.clone();
    let done = recorder.finish(&probes, stream.malformed())?;
    let counter = |name: &str| done.kernel_counters.get(name).copied().unwrap_or(0);
    eprintln!(
        "bufscope: {stopped_by}: {} lock waits, {} dm-bufio operations, {} clients in {:.1} s, \
         {} bytes, to {}",
        thousands(done.waits),
        thousands(done.ops),
        done.clients,
        started.elapsed().as_secs_f64(),
        thousands(done.bytes),
        path.display()
    );
    eprintln!(
        "bufscope: lost {} (ring buffer full), unpaired ends {}, nested begins {}, pending map full {}",
        thousands(counter("ringbuf_full")),
        thousands(counter("unpaired_end")),
        thousands(counter("nested_begin")),
        thousands(counter("pending_full")),
    );
    eprintln!("bufscope: see it with `bufscope info {}`", path.display());
    Ok(ExitCode::SUCCESS)
}

/// When a recording began, on the wall clock and the event clock.
#[derive(Clone, Copy, Debug)]
pub struct Start {
    pub unix_ns: u64,
    pub clock_ns: u64,
}

impl Start {
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
}

/// A trace file being written from the probes' events: `record`, and `live --record` / `r`.
/// [`Recorder::finish`] adds what the events referred to (stacks, symbols), what the probes
/// covered and cost, the losses, and the end record.
pub struct Recorder {
    pub path: PathBuf,
    writer: TraceWriter<BufWriter<File>>,
    sink: Sink,
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
    pub fn create(path: &Path, probes: &LockProbes, start: Start) -> anyhow::Result<Self> {
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
        let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let writer = TraceWriter::new(BufWriter::with_capacity(1 << 20, file), &header)
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
            writer,
            sink: Sink::default(),
        })
    }

    fn context(&self) -> String {
        format!("writing {}", self.path.display())
    }

    pub fn write(&mut self, probes: &LockProbes, events: &[Event]) -> anyhow::Result<()> {
        let result = self.sink.write(&mut self.writer, probes, events);
        result.with_context(|| self.context())
    }

    pub fn flush(&mut self) -> anyhow::Result<()> {
        let result = self.writer.flush();
        result.with_context(|| self.context())
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
    pub fn finish(mut self, probes: &LockProbes, user_dropped: u64) -> anyhow::Result<Finished> {
        let context = self.context();
        let writer = &mut self.writer;
        write_stacks(writer, probes, &self.sink.stack_ids).with_context(|| context.clone())?;
        let static_locks: Vec<u64> = self.sink.static_locks.iter().copied().collect();
        let lock_symbols = static_lock_names(&static_locks);
        if !lock_symbols.is_empty() {
            writer
                .write_metadata(&Metadata::Symbols {
                    symbols: lock_symbols,
                })
                .with_context(|| context.clone())?;
        }
        let bufio = probes.bufio();
        writer
            .write_metadata(&Metadata::Probes {
                bufio_design: bufio.design.map(|d| d.describe().to_string()),
                missing: match &bufio.unavailable {
                    Some(why) => BTreeMap::from([("dm-bufio".to_string(), why.clone())]),
                    None => bufio.missing_reasons().into_iter().collect(),
                },
                programs: probes
                    .program_stats()
                    .into_iter()
                    .map(|p| ProgramRun {
                        program: p.program,
                        run_count: p.run_count,
                        run_time_ns: p.run_time_ns,
                    })
                    .collect(),
            })
            .with_context(|| context.clone())?;
        let kernel = probes
            .counters()
            .context("reading the in-kernel counters")?;
        writer
            .write_metadata(&Metadata::LossCounts {
                at_clock_ns: system::monotonic_ns(),
                kernel: kernel.clone(),
                user_dropped,
            })
            .with_context(|| context.clone())?;
        let (waits, ops) = (writer.lock_waits(), writer.bufio_ops());
        let (mut out, _) = self
            .writer
            .finish(system::unix_ns())
            .with_context(|| context.clone())?;
        out.flush().with_context(|| context.clone())?;
        Ok(Finished {
            waits,
            ops,
            clients: self.sink.clients.len(),
            bytes: out.get_ref().metadata().map(|m| m.len()).unwrap_or(0),
            kernel_counters: kernel,
        })
    }
}

/// Says which dm-bufio probe points are missing and why, once, at the start.
fn report_bufio_probes(probes: &LockProbes) {
    let bufio = probes.bufio();
    if let Some(why) = &bufio.unavailable {
        eprintln!("bufscope: dm-bufio probes: none ({why}); recording lock contention only");
        return;
    }
    let attached = bufio.attached().count();
    eprintln!(
        "bufscope: dm-bufio probes: {attached} of {} points attached ({})",
        bufio.points.len(),
        bufio.design.map_or("design unknown", |d| d.describe())
    );
    for point in bufio.missing() {
        eprintln!(
            "bufscope:   missing {}: {}",
            point.function,
            point.status.as_ref().err().map_or("", String::as_str)
        );
    }
}

/// Where events go: lock waits and operations into chunks, clients into metadata records (with
/// their lock addresses), and the stack ids used remembered for the end.
#[derive(Default)]
struct Sink {
    clients: BTreeMap<u64, ClientSighting>,
    stack_ids: BTreeSet<u32>,
    /// Locks at kernel-image or module addresses: static locks, named from kallsyms at the end.
    static_locks: BTreeSet<u64>,
}

impl Sink {
    fn write<W: Write>(
        &mut self,
        writer: &mut TraceWriter<W>,
        probes: &LockProbes,
        events: &[Event],
    ) -> std::io::Result<()> {
        for event in events {
            match event {
                &Event::LockWait(wait) => {
                    if let Some(id) = wait.stack_id {
                        self.stack_ids.insert(id);
                    }
                    if wait.lock_addr >= 0xffff_ffff_8000_0000 {
                        self.static_locks.insert(wait.lock_addr);
                    }
                    writer.push(wait)?;
                }
                &Event::Op(op) => writer.push_op(op)?,
                Event::Client(client) => {
                    let seen_ns = match self.clients.get(&client.addr) {
                        Some(earlier) if client.how == ClientHow::Destroyed => earlier.at_ns,
                        _ => client.at_ns,
                    };
                    writer.write_metadata(&Metadata::Client {
                        addr: client.addr,
                        device: client.device.clone(),
                        block_size: client.block_size,
                        locks: probes.client_locks(client.addr, client.num_locks),
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
/// (so the file names them on any machine).
fn write_stacks<W: Write>(
    writer: &mut TraceWriter<W>,
    probes: &LockProbes,
    ids: &BTreeSet<u32>,
) -> std::io::Result<()> {
    let mut addrs = BTreeSet::new();
    for &id in ids {
        if let Some(frames) = probes.stack(id) {
            addrs.extend(frames.iter().copied());
            writer.write_metadata(&Metadata::Stack { id, frames })?;
        }
    }
    if addrs.is_empty() {
        return Ok(());
    }
    let addrs: Vec<u64> = addrs.into_iter().collect();
    let (symbols, note) = symbolize_kernel(&addrs, &LockText::from_kallsyms());
    if let Some(note) = note {
        eprintln!("bufscope: {note}; stacks are kept as addresses");
    }
    writer.write_metadata(&Metadata::Symbols { symbols })
}

/// A status line: redrawn each second on a terminal, a line every ten seconds otherwise.
struct Progress {
    terminal: bool,
    last_line: Option<Instant>,
    drawn: bool,
}

impl Progress {
    fn new() -> Self {
        Self {
            terminal: std::io::stderr().is_terminal(),
            last_line: None,
            drawn: false,
        }
    }

    fn update(&mut self, elapsed: Duration, events: u64, bytes: u64) {
        let secs = elapsed.as_secs_f64().max(1e-9);
        let line = format!(
            "{:>7.1} s  {:>12} lock waits  {:>10}/s  {:>12} bytes",
            secs,
            thousands(events),
            thousands((events as f64 / secs) as u64),
            thousands(bytes)
        );
        if self.terminal {
            eprint!("\r{line}");
            self.drawn = true;
        } else if self
            .last_line
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(10))
        {
            eprintln!("bufscope: {}", line.trim_start());
            self.last_line = Some(Instant::now());
        }
    }

    fn finish(&self) {
        if self.drawn {
            eprintln!();
        }
    }
}
