//! `bufscope record`: kernel lock contention and dm-bufio operations to a trace file, until a
//! duration passes, Ctrl-C or SIGTERM (the recording itself is [`bufscope::record`]); this
//! prints what was attached, the progress and the summary.

use std::{
    io::IsTerminal,
    path::PathBuf,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use bufscope::{
    kernel::system,
    probes::{AttachMode, AttachOptions, BufioProbes, LockProbes, ProcessFilter, RingWakeup},
    record::{Recorder, RecordingOutcome, RecordingStart, StopReason, record_until_stopped},
    wait_filter::WaitFilter,
    watched::{CommandStdio, Watched, shell_status},
};
use bufscope_abi::{Counter, ProbeConfig};
use bufscope_analyses::units::thousands;

#[derive(Debug)]
pub struct Options {
    pub output: PathBuf,
    pub duration: Option<Duration>,
    pub attach: AttachMode,
    pub bufio_probes: BufioProbes,
    pub ringbuf_bytes: u32,
    pub ring_wakeup: RingWakeup,
    pub force: bool,
    /// The probes' stack mode (`ProbeConfig::NO_STACKS`, ...).
    pub stacks: u32,
    /// Whether the probes read lock owners (`ProbeConfig::owners`).
    pub owners: u32,
    pub bufio: bool,
    pub processes: ProcessFilter,
    /// The lock types kept (`ProbeConfig::lock_types`).
    pub lock_types: u32,
    /// Lock waits kept by thread, name and length.
    pub waits: WaitFilter,
    /// Keep only the command's processes' lock waits.
    pub only_cmd: bool,
    /// Record for this command's lifetime (empty: none).
    pub command: Vec<String>,
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
    let start = RecordingStart::now();
    let mut probes = LockProbes::attach(AttachOptions {
        mode: options.attach,
        ringbuf_bytes: options.ringbuf_bytes,
        config: ProbeConfig {
            stream_events: 1,
            stacks: options.stacks,
            owners: options.owners,
            lock_types: options.lock_types,
            ring_wakeup: options.ring_wakeup.config_value(),
            ..ProbeConfig::DEFAULT
        },
        bufio: options.bufio,
        bufio_probes: options.bufio_probes,
        processes: ProcessFilter {
            only_listed: options.processes.only_listed || options.only_cmd,
            ..options.processes.clone()
        },
    })?;
    let mut recorder = Recorder::create(&options.output, &probes, start)?;
    recorder.set_filter(options.waits.clone());

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
        match (options.duration, options.command.is_empty()) {
            (Some(d), true) => format!("for {}, or until Ctrl-C", humantime::format_duration(d)),
            (None, true) => "Ctrl-C to stop".into(),
            (Some(d), false) => format!(
                "while the command runs (at most {}), or until Ctrl-C",
                humantime::format_duration(d)
            ),
            (None, false) => "while the command runs, or until Ctrl-C".into(),
        }
    );
    let watched = if options.command.is_empty() {
        None
    } else {
        let spawned = Watched::spawn(
            &options.command,
            &mut probes,
            options.only_cmd,
            CommandStdio::Inherit,
        );
        let w = match spawned {
            Ok(w) => w,
            Err(e) => {
                recorder.discard();
                return Err(e.into());
            }
        };
        eprintln!(
            "bufscope: started {} (pid {}){}",
            options.command.join(" "),
            w.pid(),
            if options.only_cmd {
                "; keeping only its processes' lock waits"
            } else {
                ""
            }
        );
        Some(w)
    };

    let mut progress = Progress::new();
    let outcome = record_until_stopped(
        &mut probes,
        recorder,
        options.duration,
        watched,
        |elapsed, waits, bytes| progress.update(elapsed, waits, bytes),
    )
    .await;
    progress.finish();
    let RecordingOutcome {
        stopped_by,
        path,
        elapsed,
        finished: done,
        left_out,
    } = outcome?;
    if let Some(note) = &done.symbols_note {
        eprintln!("bufscope: {note}");
    }
    let counter = |c: Counter| done.kernel_counters.get(c.name()).copied().unwrap_or(0);
    eprintln!(
        "bufscope: {stopped_by}: {} lock waits, {} dm-bufio operations, {} clients in {:.1} s, \
         {} bytes, to {}",
        thousands(done.waits),
        thousands(done.ops),
        done.clients,
        elapsed.as_secs_f64(),
        thousands(done.bytes),
        path.display()
    );
    eprintln!(
        "bufscope: lost {} (ring buffer full), {} (program runs the kernel skipped), unpaired \
         ends {}, nested begins {}, pending map full {}",
        thousands(counter(Counter::ReserveFailed)),
        thousands(done.skipped_runs),
        thousands(counter(Counter::UnpairedEnd)),
        thousands(counter(Counter::NestedBegin)),
        thousands(counter(Counter::PendingFull)),
    );
    if left_out > 0 {
        eprintln!(
            "bufscope: {} lock waits left out by --tid, --comm, --min-wait, --lock or --stack",
            thousands(left_out)
        );
    }
    eprintln!("bufscope: see it with `bufscope info {}`", path.display());
    Ok(match stopped_by {
        // The command's status, as a shell reports it (128 + the signal that ended it).
        StopReason::CommandExited(status) => ExitCode::from(shell_status(status)),
        _ if !options.command.is_empty() => {
            eprintln!("bufscope: the command is still running; it was left to run");
            ExitCode::SUCCESS
        }
        _ => ExitCode::SUCCESS,
    })
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
        "bufscope: dm-bufio probes: {attached} of {} points attached ({}): {}",
        bufio.points.len(),
        bufio.design.map_or("design unknown", |d| d.describe()),
        bufio.attached_by_kind()
    );
    if let Some(why) = &bufio.tracing_unavailable {
        eprintln!("bufscope:   not fentry/fexit: {why}");
    }
    for point in &bufio.points {
        if let Some(why) = &point.not_fentry {
            eprintln!("bufscope:   {} not fentry/fexit: {why}", point.function);
        }
    }
    for point in bufio.missing() {
        eprintln!(
            "bufscope:   missing {}: {}",
            point.function,
            point
                .status
                .as_ref()
                .err()
                .map_or_else(String::new, ToString::to_string)
        );
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
