//! The full-screen view's runners, for `live` ([`run_live`]) and `replay --tui`
//! ([`run_replay`]): one tokio loop over keys, the kernel's event stream (or a trace played
//! back), a data tick (rates, the designs' next window, names for new stacks, recording flushes,
//! the metrics text) and a frame tick (the designs' results, drawing). Collectors write the
//! [`Model`]; drawing only reads it.
//!
//! The terminal is restored however the loop ends: `q`, Ctrl-C (a key in raw mode), SIGTERM,
//! an error (the [`Screen`] is dropped) or a panic (ratatui's hook).

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::ExitStatus,
    time::{Duration, Instant},
};

use bufscope_analyses::{
    calibration::TimingMode,
    models::ModelOptions,
    tracedata::TraceData,
    units::{error_chain, thousands},
};
use bufscope_trace::TraceError;
use reference_cache::Design;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::time::MissedTickBehavior;

use super::{
    ingest::{KernelNames, ingest},
    model::{BufioStatus, CompareSource, Header, Model, Recording, Source},
    playback::Playback,
    render,
    sample::{SAMPLE, SAMPLE_NAME},
    screen::{Screen, ScreenError, next_key},
    serve::{PublishedMetrics, ServeError, serve_metrics},
    shadow::{Shadow, ShadowError},
    ui::{Action, Ui},
};
use crate::{
    kernel::system::{self, NewThreads},
    probes::{Event, EventStream, LockProbes, ProbeError, lost_streamed_events, skipped_runs},
    record::{RecordError, Recorder, RecordingStart},
    stop::sleep_until,
    wait_filter::{WaitFilter, WaitSelector},
    watched::{CommandError, Watched, command_exit},
};

/// Why a view stopped early.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("opening the event ring buffer")]
    OpenStream(#[source] std::io::Error),
    #[error("reading the event ring buffer")]
    ReadStream(#[source] std::io::Error),
    #[error("reading the bundled sample")]
    Sample(#[source] TraceError),
    #[error("installing the {0} handler")]
    Signal(&'static str, #[source] std::io::Error),
    #[error("{file} has no lock waits or dm-bufio operations to play")]
    NothingToPlay { file: String },
    #[error(transparent)]
    Screen(#[from] ScreenError),
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error(transparent)]
    Shadow(#[from] ShadowError),
    #[error(transparent)]
    Metrics(#[from] ServeError),
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error("writing to stdout")]
    Output(#[source] std::io::Error),
}

/// Frames per second drawn at most.
const FRAME: Duration = Duration::from_millis(100);

/// Waits for `kind`, named `name` in errors.
pub fn handler(kind: SignalKind, name: &'static str) -> Result<Signal, SessionError> {
    signal(kind).map_err(|e| SessionError::Signal(name, e))
}

/// Everything a view holds but its data source: the model, the viewer's choices, the designs'
/// threads, the metrics text.
struct ViewState {
    model: Model,
    /// What the screen shows while paused (the model goes on taking events).
    frozen: Option<Model>,
    ui: Ui,
    shadow: Option<Shadow>,
    shadow_options: ModelOptions,
    metrics: Option<PublishedMetrics>,
}

impl ViewState {
    fn new(
        model: Model,
        ui: Ui,
        shadow_options: ModelOptions,
        metrics: Option<PublishedMetrics>,
    ) -> Result<Self, SessionError> {
        let shadow = start_shadow(&ui.designs, &shadow_options)?;
        Ok(Self {
            model,
            frozen: None,
            ui,
            shadow,
            shadow_options,
            metrics,
        })
    }

    fn restart_shadow(&mut self) -> Result<(), SessionError> {
        self.shadow = start_shadow(&self.ui.designs, &self.shadow_options)?;
        Ok(())
    }

    /// The end of a data interval of `secs` on the source's clock.
    fn tick(&mut self, secs: f64, speed: Option<f64>) {
        if let Some(mut cut) = self.model.tick(secs, self.ui.sort, &self.ui.filter) {
            cut.speed = speed;
            let id = cut.id;
            let taken = self.shadow.as_ref().is_some_and(|s| s.submit(cut));
            if !taken {
                self.model.comparison.skip(id);
            }
        }
        if let Some(metrics) = &self.metrics {
            metrics.publish(&self.model);
        }
    }

    fn collect_results(&mut self) {
        if let Some(shadow) = &self.shadow {
            for r in shadow.results() {
                self.model.design_result(r);
            }
        }
    }

    fn draw(&mut self, screen: &mut Screen) -> Result<(), SessionError> {
        let model = self.frozen.as_ref().unwrap_or(&self.model);
        self.ui.clamp(model);
        let ui = &self.ui;
        screen.draw(|f| render::draw(f, model, ui))?;
        Ok(())
    }

    /// Applies a key; the actions every source handles the same way are done here, the rest
    /// returned.
    fn key(&mut self, key: crossterm::event::KeyEvent) -> Result<Option<Action>, SessionError> {
        let action = {
            let model = self.frozen.as_ref().unwrap_or(&self.model);
            self.ui.on_key(key, model)
        };
        match action {
            Some(Action::Refresh) => {
                self.model.refresh_rows(self.ui.sort, &self.ui.filter);
                if let Some(f) = &mut self.frozen {
                    f.refresh_rows(self.ui.sort, &self.ui.filter);
                }
                Ok(None)
            }
            Some(Action::Designs(designs)) => {
                self.model.set_designs(&designs);
                self.restart_shadow()?;
                Ok(None)
            }
            Some(Action::CompareClient(client)) => {
                self.model.choose_client(client);
                Ok(None)
            }
            other => Ok(other),
        }
    }
}

fn start_shadow(
    designs: &[Design],
    options: &ModelOptions,
) -> Result<Option<Shadow>, SessionError> {
    if designs.is_empty() {
        return Ok(None);
    }
    Ok(Some(Shadow::start(designs, options)?))
}

/// How `live` runs the full-screen view.
#[derive(Debug)]
pub struct LiveSettings {
    pub interval: Duration,
    pub duration: Option<Duration>,
    pub designs: Vec<Design>,
    pub record: Option<PathBuf>,
    pub metrics: Option<SocketAddr>,
    pub shadow: ModelOptions,
    /// Whether each window's designs run at the costs that window's operations measured...
    pub timing: TimingMode,
    /// ...and whether those that do run in virtual time.
    pub simulate_calibrated: bool,
    /// The lock waits shown and recorded (`--lock`, `--stack`).
    pub waits: WaitFilter,
}

fn recording_path() -> PathBuf {
    let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        .to_string()
        .replace(':', "-");
    PathBuf::from(format!("bufscope-{stamp}.bftrace"))
}

fn recording_status(r: &Recorder) -> Recording {
    Recording {
        path: r.path.display().to_string(),
        waits: r.waits(),
        ops: r.ops(),
        bytes: r.bytes(),
    }
}

/// `live` without `--no-tui`: the full-screen view of the kernel's events until q, the duration,
/// SIGTERM, SIGHUP or the end of the `watched` command; returns the command's status if its end
/// ended the view.
pub async fn run_live(
    mut probes: LockProbes,
    settings: LiveSettings,
    mut watched: Option<Watched>,
) -> Result<Option<ExitStatus>, SessionError> {
    let mut stream = probes.event_stream().map_err(SessionError::OpenStream)?;
    let bufio = probes.bufio();
    let (status, mut sample) = match &bufio.unavailable {
        Some(why) => {
            let trace = TraceData::from_bytes(SAMPLE, SAMPLE_NAME).map_err(SessionError::Sample)?;
            (
                BufioStatus::Unavailable(why.to_string()),
                Playback::new(trace, 1.0, true),
            )
        }
        None => (
            BufioStatus::Probed {
                attached: bufio.attached().count(),
                points: bufio.points.len(),
                design: bufio.design.map(|d| d.describe().to_string()),
                missing: bufio.missing_reasons(),
            },
            None,
        ),
    };
    let compare = match &sample {
        Some(_) => CompareSource::Sample(SAMPLE_NAME.to_string()),
        None => CompareSource::Tables,
    };
    let mut model = Model::new(
        Header::new(
            system::kernel_release(),
            Source::Live {
                attach: probes.mode().to_string(),
            },
            status,
        ),
        compare,
        &settings.designs,
    );
    model.comparison.window_timing = settings.timing;
    model.comparison.simulate_calibrated = settings.simulate_calibrated;
    if let Some(sample) = &sample {
        for m in &sample.trace.metadata {
            model.comparison.add_metadata(m);
        }
    }
    let metrics = settings.metrics.map(serve_metrics).transpose()?;
    let mut recorder = match &settings.record {
        Some(path) => Some(Recorder::create(path, &probes, RecordingStart::now())?),
        None => None,
    };
    let mut naming = KernelNames::new();
    let mut threads = NewThreads::default();
    let mut selector = WaitSelector::new(settings.waits.clone());
    if let Some(w) = &watched {
        model.header.status = Some(format!(
            "watching {} (pid {}): the view ends when it does",
            w.shown(),
            w.pid()
        ));
    }
    let mut session = ViewState::new(
        model,
        Ui::new(&settings.designs, false),
        settings.shadow.clone(),
        metrics,
    )?;

    let mut screen = Screen::open()?;
    let mut keys = crossterm::event::EventStream::new();
    let mut terminate = handler(SignalKind::terminate(), "SIGTERM")?;
    let mut hangup = handler(SignalKind::hangup(), "SIGHUP")?;
    let deadline = settings.duration.map(|d| tokio::time::Instant::now() + d);
    // A late tick (a busy machine) puts the next one a whole period after it, rather than
    // running missed ones back to back or at once: the event stream, below the ticks, is read
    // in between. A tick that always found the next one due left the ring unread (the view
    // showed "0 ev/s" and counted losses under a pipe storm). Each tick measures the time since
    // the last one.
    let mut data_tick = tokio::time::interval(settings.interval);
    data_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    data_tick.reset();
    let mut frame_tick = tokio::time::interval(FRAME);
    frame_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut batch = Vec::with_capacity(4096);
    let mut last_tick = Instant::now();
    let mut last_frame = Instant::now();
    let mut last_run_ns: u64 = probes.program_stats().iter().map(|p| p.run_time_ns).sum();
    let outcome: Result<Option<ExitStatus>, SessionError> = async {
        loop {
            // In this order: a flood of events must not delay what the user asked for (a key,
            // a signal) or the screen; the stream is read whenever nothing else is due.
            tokio::select! {
                biased;
                _ = terminate.recv() => break,
                _ = hangup.recv() => break,
                status = command_exit(watched.as_mut()) => return Ok(Some(status?)),
                key = next_key(&mut keys) => {
                    let Some(key) = key else { break };
                    match session.key(key)? {
                        Some(Action::Quit) => break,
                        Some(Action::TogglePause) => {
                            session.frozen = session.ui.paused.then(|| session.model.clone());
                        }
                        Some(Action::ToggleRecording) => {
                            toggle_recording(&mut recorder, &mut session.model, &probes, &stream, &settings)?;
                        }
                        _ => {}
                    }
                    session.draw(&mut screen)?;
                }
                _ = data_tick.tick() => {
                    let secs = last_tick.elapsed().as_secs_f64();
                    last_tick = Instant::now();
                    naming.update(&mut session.model, &probes, []);
                    selector.refresh(&probes);
                    probes.refresh_processes()?;
                    if let Some(w) = &watched {
                        w.follow(&mut probes)?;
                    }
                    let counters = probes.counters().unwrap_or_default();
                    let programs = probes.program_stats();
                    session.model.header.lost =
                        lost_streamed_events(&counters) + stream.malformed() + skipped_runs(&programs);
                    // The tables count every wait the kernel paired, not only those the stream
                    // brought; under --lock or --stack, which judge each wait, only those.
                    if selector.keeps_all() {
                        session.model.set_kernel_waits(&probes.wait_histograms());
                    }
                    session.model.set_kernel_ops(&probes.op_stats());
                    let run_ns: u64 = programs.iter().map(|p| p.run_time_ns).sum();
                    session.model.header.overhead =
                        Some(run_ns.saturating_sub(last_run_ns) as f64 / (secs.max(1e-6) * 1e9));
                    last_run_ns = run_ns;
                    if let Some(r) = &mut recorder {
                        r.flush()?;
                        session.model.header.recording = Some(recording_status(r));
                    }
                    session.tick(secs, Some(1.0));
                }
                _ = frame_tick.tick() => {
                    let wall = last_frame.elapsed();
                    last_frame = Instant::now();
                    if let Some(sample) = &mut sample {
                        let comparison = &mut session.model.comparison;
                        sample.advance(wall, |e| comparison.add_played(e));
                    }
                    session.collect_results();
                    session.draw(&mut screen)?;
                }
                _ = sleep_until(deadline) => break,
                ready = stream.next_batch(&mut batch) => {
                    ready.map_err(SessionError::ReadStream)?;
                    if !selector.keeps_all() {
                        batch.retain(|e| selector.keeps(&probes, e));
                    }
                    ingest(&mut session.model, &probes, &mut threads, &batch);
                    if let Some(r) = &mut recorder {
                        r.write(&probes, &batch)?;
                    }
                    batch.clear();
                }
            }
        }
        Ok(None)
    }
    .await;
    drop(screen);
    probes.detach();
    if let Some(r) = recorder.take() {
        stream.drain_now(&mut batch);
        if !selector.keeps_all() {
            batch.retain(|e| selector.keeps(&probes, e));
        }
        // The screen is closed: the summary goes to stderr.
        for line in finish_recording(r, &probes, &stream, &batch)? {
            eprintln!("bufscope: {line}");
        }
    }
    outcome
}

/// Finishes a recording; returns what to tell the user: where it went, and why stacks were
/// kept as addresses if they were. Prints nothing: while the screen is open, the status line
/// shows it.
fn finish_recording(
    mut r: Recorder,
    probes: &LockProbes,
    stream: &EventStream,
    tail: &[Event],
) -> Result<Vec<String>, SessionError> {
    r.write(probes, tail)?;
    let path = r.path.clone();
    let done = r.finish(probes, stream.malformed())?;
    let mut lines = vec![format!(
        "recorded {} lock waits and {} dm-bufio operations to {}",
        thousands(done.waits),
        thousands(done.ops),
        path.display()
    )];
    lines.extend(done.symbols_note);
    Ok(lines)
}

fn toggle_recording(
    recorder: &mut Option<Recorder>,
    model: &mut Model,
    probes: &LockProbes,
    stream: &EventStream,
    settings: &LiveSettings,
) -> Result<(), SessionError> {
    if let Some(r) = recorder.take() {
        model.header.status = Some(finish_recording(r, probes, stream, &[])?.join("; "));
        model.header.recording = None;
        return Ok(());
    }
    // The --record file the first time (if it is free), a time-stamped one after.
    let path = match &settings.record {
        Some(p) if !p.exists() => p.clone(),
        _ => recording_path(),
    };
    match Recorder::create(&path, probes, RecordingStart::now()) {
        Ok(r) => {
            model.header.recording = Some(recording_status(&r));
            model.header.status = None;
            *recorder = Some(r);
        }
        Err(e) => model.header.status = Some(format!("cannot record: {}", error_chain(&e))),
    }
    Ok(())
}

/// `replay FILE --tui`: the same screens driven by a trace file.
pub async fn run_replay(
    trace: TraceData,
    speed: f64,
    designs: Vec<Design>,
    shadow: ModelOptions,
    interval: Duration,
) -> Result<(), SessionError> {
    let file = trace.source.clone();
    let header = Header {
        kernel: trace.header.kernel_release.clone(),
        source: Source::Replay {
            file: file.clone(),
            span_ns: 0,
            position_ns: 0,
            speed,
            playing: true,
        },
        bufio: BufioStatus::Recorded {
            design: trace.kernel_design.clone(),
        },
        events_per_sec: 0.0,
        lost: 0,
        overhead: None,
        recording: None,
        status: trace
            .problem
            .clone()
            .map(|p| format!("the file ends early: {p}"))
            .or_else(|| trace.skipped_message()),
    };
    let Some(mut playback) = Playback::new(trace, speed, false) else {
        return Err(SessionError::NothingToPlay { file });
    };
    let fresh_model = |playback: &Playback, designs: &[Design]| {
        let mut model = Model::new(header.clone(), CompareSource::Tables, designs);
        for m in &playback.trace.metadata {
            model.add_metadata(m);
        }
        model
    };
    let model = fresh_model(&playback, &designs);
    let mut session = ViewState::new(model, Ui::new(&designs, true), shadow, None)?;
    let mut screen = Screen::open()?;
    let mut keys = crossterm::event::EventStream::new();
    let mut terminate = handler(SignalKind::terminate(), "SIGTERM")?;
    let mut data_tick = tokio::time::interval(interval);
    data_tick.reset();
    let mut frame_tick = tokio::time::interval(FRAME);
    frame_tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut last_frame = Instant::now();
    let mut covered = 0.0;
    loop {
        // Keys first: a busy machine must not leave the user's keys waiting behind frames.
        tokio::select! {
            biased;
            _ = terminate.recv() => break,
            key = next_key(&mut keys) => {
                let Some(key) = key else { break };
                match session.key(key)? {
                    Some(Action::Quit) => break,
                    Some(Action::TogglePause) => {
                        if playback.at_end() {
                            session.ui.paused = true;
                        } else {
                            playback.playing = !session.ui.paused;
                        }
                    }
                    Some(Action::Speed(factor)) => {
                        playback.speed = (playback.speed * factor).clamp(1.0 / 64.0, 1024.0);
                    }
                    Some(Action::Seek(secs)) => {
                        let target = (playback.position_ns as f64 + secs * 1e9).max(0.0) as u64;
                        let designs = session.ui.designs.clone();
                        let model = &mut session.model;
                        let mut rebuilt = None;
                        if target < playback.position_ns {
                            rebuilt = Some(fresh_model(&playback, &designs));
                        }
                        let target_model = rebuilt.as_mut().unwrap_or(model);
                        playback.seek(target, |e| target_model.add_played(e));
                        target_model.elapsed_secs =
                            (playback.position_ns - playback.start_ns) as f64 / 1e9;
                        target_model.skip_interval(session.ui.sort, &session.ui.filter);
                        if let Some(m) = rebuilt {
                            session.model = m;
                            session.restart_shadow()?;
                        }
                        covered = 0.0;
                        if !playback.at_end() && !session.ui.paused {
                            playback.playing = true;
                        }
                    }
                    _ => {}
                }
                update_position(&mut session.model, &playback);
                session.draw(&mut screen)?;
            }
            _ = data_tick.tick() => {
                if covered > 0.0 {
                    session.tick(covered, Some(playback.speed));
                    covered = 0.0;
                }
            }
            _ = frame_tick.tick() => {
                let wall = last_frame.elapsed();
                last_frame = Instant::now();
                let model = &mut session.model;
                covered += playback.advance(wall, |e| model.add_played(e));
                if playback.at_end() && session.model.header.status.is_none() {
                    session.model.header.status =
                        Some("end of the trace: ← to go back, q to quit".into());
                }
                update_position(&mut session.model, &playback);
                session.collect_results();
                session.draw(&mut screen)?;
            }
        }
    }
    Ok(())
}

fn update_position(model: &mut Model, playback: &Playback) {
    model.header.source = Source::Replay {
        file: playback.trace.source.clone(),
        span_ns: playback.span_ns(),
        position_ns: playback.position_ns.min(playback.end_ns) - playback.start_ns,
        speed: playback.speed,
        playing: playback.playing,
    };
    if !playback.at_end()
        && model
            .header
            .status
            .as_deref()
            .is_some_and(|s| s.starts_with("end of the trace"))
    {
        model.header.status = None;
    }
}
