//! `bufscope record`: kernel lock contention to a trace file, until a duration passes, Ctrl-C or
//! SIGTERM. The file is flushed every second, so a crash loses at most the last second; a clean
//! stop drains the ring buffer and writes loss counts and the end record.

use std::{
    fs::File,
    io::{BufWriter, IsTerminal, Write},
    path::PathBuf,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use bufscope::{
    probe::{AttachMode, LockProbes},
    system,
};
use bufscope_trace::{Metadata, TraceHeader, TraceWriter};
use tokio::signal::unix::{SignalKind, signal};

use super::thousands;

#[derive(Debug)]
pub struct Options {
    pub output: PathBuf,
    pub duration: Option<Duration>,
    pub attach: AttachMode,
    pub ringbuf_bytes: u32,
    pub force: bool,
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
    let mut probes = LockProbes::attach(options.attach, options.ringbuf_bytes)?;
    let mut stream = probes
        .event_stream()
        .context("opening the event ring buffer")?;
    let header = TraceHeader {
        writer: format!("bufscope {}", env!("CARGO_PKG_VERSION")),
        kernel_release: system::kernel_release(),
        host: system::host_name(),
        clock: "CLOCK_MONOTONIC".into(),
        start_unix_ns,
        start_clock_ns,
        cpus: system::online_cpus(),
        probes: probes.descriptions(),
    };
    let file = File::create(&options.output)
        .with_context(|| format!("creating {}", options.output.display()))?;
    let mut writer = TraceWriter::new(BufWriter::with_capacity(1 << 20, file), &header)
        .with_context(|| format!("writing {}", options.output.display()))?;
    let write_context = || format!("writing {}", options.output.display());

    for note in probes.notes() {
        eprintln!("bufscope: {note}");
    }
    eprintln!(
        "bufscope: recording lock contention ({} probes) to {}; {}",
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
                for event in batch.drain(..) {
                    writer.push(event).with_context(write_context)?;
                }
            }
            _ = flush_tick.tick() => {
                writer.flush().with_context(write_context)?;
                progress.update(started.elapsed(), writer.lock_waits(), writer.bytes_written());
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
    for event in batch.drain(..) {
        writer.push(event).with_context(write_context)?;
    }
    let kernel = probes
        .counters()
        .context("reading the in-kernel counters")?;
    writer
        .write_metadata(&Metadata::LossCounts {
            at_clock_ns: system::monotonic_ns(),
            kernel: kernel.clone(),
            user_dropped: stream.malformed(),
        })
        .with_context(write_context)?;
    let events = writer.lock_waits();
    let (mut out, _) = writer
        .finish(system::unix_ns())
        .with_context(write_context)?;
    out.flush().with_context(write_context)?;
    let bytes = out.get_ref().metadata().map(|m| m.len()).unwrap_or(0);

    let counter = |name: &str| kernel.get(name).copied().unwrap_or(0);
    eprintln!(
        "bufscope: {stopped_by}: {} lock waits in {:.1} s, {} bytes, to {}",
        thousands(events),
        started.elapsed().as_secs_f64(),
        thousands(bytes),
        options.output.display()
    );
    eprintln!(
        "bufscope: lost {} (ring buffer full), unpaired ends {}, nested begins {}, pending map full {}",
        thousands(counter("ringbuf_full")),
        thousands(counter("unpaired_end")),
        thousands(counter("nested_begin")),
        thousands(counter("pending_full")),
    );
    eprintln!(
        "bufscope: see it with `bufscope info {}`",
        options.output.display()
    );
    Ok(ExitCode::SUCCESS)
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
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
