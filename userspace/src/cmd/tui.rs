//! The full-screen view's runner, for `live` and `replay --tui`: one tokio loop over keys, the
//! kernel's event stream (or a trace played back), a data tick (rates, the designs' next
//! window, names for new stacks, recording flushes, the metrics text) and a frame tick (the
//! designs' results, drawing). Collectors write the [`Model`]; drawing only reads it.
//!
//! The terminal is restored however the loop ends: `q`, Ctrl-C (a key in raw mode), SIGTERM,
//! an error (the [`Screen`] is dropped) or a panic (ratatui's hook).

use std::{
    collections::HashSet,
    io::IsTerminal,
    net::{SocketAddr, ToSocketAddrs},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use bufscope::{
    live::{
        metrics,
        model::{BufioStatus, CompareSource, Header, Model, Recording, Source},
        playback::Playback,
        render,
        shadow::Shadow,
        ui::{Action, Ui},
    },
    models::ModelOptions,
    probe::{ClientHow, Event, EventStream, LockProbes},
    symbols::{LockText, static_lock_names, symbolize_kernel},
    system,
    tracedata::TraceData,
};
use bufscope_trace::Metadata;
use futures_util::StreamExt as _;
use ratatui::DefaultTerminal;
use tokio::signal::unix::{SignalKind, signal};

use super::{
    live::lost_events,
    record::{Recorder, Start},
    sleep_until, thousands,
};

/// Frames per second drawn at most.
const FRAME: Duration = Duration::from_millis(100);

/// The terminal in raw mode on the alternate screen; restored when dropped.
pub struct Screen {
    terminal: DefaultTerminal,
}

impl Screen {
    pub fn open() -> anyhow::Result<Self> {
        if !std::io::stdout().is_terminal() {
            bail!(
                "stdout is not a terminal: the full-screen view needs one (use --no-tui for \
                 interval tables on stdout)"
            );
        }
        // Also installs a panic hook that restores the terminal before the message prints.
        Ok(Self {
            terminal: ratatui::try_init().context("setting up the terminal")?,
        })
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

impl std::fmt::Debug for Screen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Screen")
    }
}

/// `9464` or `:9464` → 127.0.0.1:9464; anything else as given (`0.0.0.0:9464` for every
/// interface).
pub fn parse_metrics_addr(s: &str) -> Result<SocketAddr, String> {
    let port_only = s.strip_prefix(':').unwrap_or(s);
    if let Ok(port) = port_only.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    s.to_socket_addrs()
        .map_err(|e| format!("`{s}` is not an address to listen on: {e}"))?
        .next()
        .ok_or_else(|| format!("`{s}` resolves to no address"))
}

/// Serves the latest metrics text on `addr` from a thread; the text is replaced each interval.
pub fn serve_metrics(addr: SocketAddr) -> anyhow::Result<Arc<Mutex<String>>> {
    let server = tiny_http::Server::http(addr)
        .map_err(|e| anyhow::anyhow!("--metrics: cannot listen on {addr}: {e}"))?;
    let text = Arc::new(Mutex::new("# EOF\n".to_string()));
    let shared = Arc::clone(&text);
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            let content_type = tiny_http::Header::from_bytes("Content-Type", metrics::CONTENT_TYPE)
                .expect("a valid header");
            for request in server.incoming_requests() {
                let response = if request.url() == "/metrics" {
                    let body = shared.lock().map(|t| t.clone()).unwrap_or_default();
                    tiny_http::Response::from_string(body).with_header(content_type.clone())
                } else {
                    tiny_http::Response::from_string("bufscope serves /metrics\n")
                        .with_status_code(404)
                };
                let _ = request.respond(response);
            }
        })?;
    Ok(text)
}

/// Everything but the data source: the model, the viewer's choices, the designs' threads.
struct Session {
    model: Model,
    /// What the screen shows while paused (the model goes on taking events).
    frozen: Option<Model>,
    ui: Ui,
    shadow: Option<Shadow>,
    shadow_options: ModelOptions,
    metrics: Option<Arc<Mutex<String>>>,
}

impl Session {
    fn new(
        model: Model,
        ui: Ui,
        shadow_options: ModelOptions,
        metrics: Option<Arc<Mutex<String>>>,
    ) -> anyhow::Result<Self> {
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

    fn restart_shadow(&mut self) -> anyhow::Result<()> {
        self.shadow = start_shadow(&self.ui.designs, &self.shadow_options)?;
        Ok(())
    }

    /// The end of a data interval of `secs` on the source's clock.
    fn tick(&mut self, secs: f64, speed: Option<f64>) {
        if let Some(mut window) = self.model.tick(secs, self.ui.sort, &self.ui.filter) {
            window.speed = speed;
            let id = window.id;
            let taken = self.shadow.as_ref().is_some_and(|s| s.submit(window));
            if !taken {
                self.model.comparison.skip(id);
            }
        }
        if let Some(text) = &self.metrics
            && let Ok(mut t) = text.lock()
        {
            *t = metrics::render(&self.model);
        }
    }

    fn collect_results(&mut self) {
        if let Some(shadow) = &self.shadow {
            for r in shadow.results() {
                self.model.design_result(r);
            }
        }
    }

    fn draw(&mut self, screen: &mut Screen) -> anyhow::Result<()> {
        let model = self.frozen.as_ref().unwrap_or(&self.model);
        self.ui.clamp(model);
        let ui = &self.ui;
        screen
            .terminal
            .draw(|f| render::draw(f, model, ui))
            .context("drawing")?;
        Ok(())
    }

    /// Applies a key; the actions every source handles the same way are done here, the rest
    /// returned.
    fn key(&mut self, key: crossterm::event::KeyEvent) -> anyhow::Result<Option<Action>> {
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

fn start_shadow(designs: &[String], options: &ModelOptions) -> anyhow::Result<Option<Shadow>> {
    if designs.is_empty() {
        return Ok(None);
    }
    Shadow::start(designs, options).map(Some)
}

async fn next_key(keys: &mut crossterm::event::EventStream) -> Option<crossterm::event::KeyEvent> {
    loop {
        match keys.next().await {
            Some(Ok(crossterm::event::Event::Key(k))) => return Some(k),
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return None,
        }
    }
}

/// How `live` runs the full-screen view.
#[derive(Debug)]
pub struct LiveSettings {
    pub interval: Duration,
    pub duration: Option<Duration>,
    pub designs: Vec<String>,
    pub record: Option<PathBuf>,
    pub metrics: Option<SocketAddr>,
    pub shadow: ModelOptions,
}

/// The bundled sample the comparison replays when this kernel has no dm-bufio.
const SAMPLE_NAME: &str = "6.1-thin-hotspot";
const SAMPLE: &[u8] = include_bytes!("../../../samples/6.1-thin-hotspot.bftrace");

/// Names for stacks and static locks the kernel source has not named yet.
struct Naming {
    lock_text: LockText,
    symbolized: HashSet<u64>,
    statics: HashSet<u64>,
}

impl Naming {
    fn update(&mut self, model: &mut Model, probes: &LockProbes) {
        let mut new_addrs = Vec::new();
        for id in model.unnamed_stacks() {
            if let Some(frames) = probes.stack(id) {
                new_addrs.extend(frames.iter().filter(|a| self.symbolized.insert(**a)));
                model.add_metadata(&Metadata::Stack { id, frames });
            }
        }
        if !new_addrs.is_empty() {
            let (symbols, _) = symbolize_kernel(&new_addrs, &self.lock_text);
            model.add_metadata(&Metadata::Symbols { symbols });
        }
        let statics: Vec<u64> = model
            .locks
            .keys()
            .map(|k| k.addr)
            .filter(|a| *a >= 0xffff_ffff_8000_0000 && self.statics.insert(*a))
            .collect();
        if !statics.is_empty() {
            model.add_metadata(&Metadata::Symbols {
                symbols: static_lock_names(&statics),
            });
        }
    }
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

/// `live` without `--no-tui`.
pub async fn live(mut probes: LockProbes, settings: LiveSettings) -> anyhow::Result<()> {
    let mut stream = probes
        .event_stream()
        .context("opening the event ring buffer")?;
    let bufio = probes.bufio();
    let (status, mut sample) = match &bufio.unavailable {
        Some(why) => {
            let trace =
                TraceData::from_bytes(SAMPLE, SAMPLE_NAME).context("reading the bundled sample")?;
            (
                BufioStatus::Unavailable(why.clone()),
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
        Header {
            kernel: system::kernel_release(),
            source: Source::Live {
                attach: probes.mode().to_string(),
            },
            bufio: status,
            events_per_sec: 0.0,
            lost: 0,
            overhead: None,
            recording: None,
            status: None,
        },
        compare,
        &settings.designs,
    );
    if let Some(sample) = &sample {
        for m in &sample.trace.metadata {
            model.comparison.add_metadata(m);
        }
    }
    let metrics = settings.metrics.map(serve_metrics).transpose()?;
    let mut recorder = match &settings.record {
        Some(path) => Some(Recorder::create(path, &probes, Start::now())?),
        None => None,
    };
    let mut naming = Naming {
        lock_text: LockText::from_kallsyms(),
        symbolized: HashSet::new(),
        statics: HashSet::new(),
    };
    let mut session = Session::new(
        model,
        Ui::new(&settings.designs, false),
        settings.shadow.clone(),
        metrics,
    )?;

    let mut screen = Screen::open()?;
    let mut keys = crossterm::event::EventStream::new();
    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut hangup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let deadline = settings.duration.map(|d| tokio::time::Instant::now() + d);
    let mut data_tick = tokio::time::interval(settings.interval);
    data_tick.reset();
    let mut frame_tick = tokio::time::interval(FRAME);
    let mut batch = Vec::with_capacity(4096);
    let mut last_tick = Instant::now();
    let mut last_frame = Instant::now();
    let mut last_run_ns: u64 = probes.program_stats().iter().map(|p| p.run_time_ns).sum();
    let outcome: anyhow::Result<()> = async {
        loop {
            tokio::select! {
                ready = stream.next_batch(&mut batch) => {
                    ready.context("reading the event ring buffer")?;
                    ingest(&mut session.model, &probes, &batch);
                    if let Some(r) = &mut recorder {
                        r.write(&probes, &batch)?;
                    }
                    batch.clear();
                }
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
                    naming.update(&mut session.model, &probes);
                    let counters = probes.counters().unwrap_or_default();
                    session.model.header.lost = lost_events(&counters) + stream.malformed();
                    let run_ns: u64 = probes.program_stats().iter().map(|p| p.run_time_ns).sum();
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
                _ = terminate.recv() => break,
                _ = hangup.recv() => break,
            }
        }
        Ok(())
    }
    .await;
    drop(screen);
    probes.detach();
    if let Some(r) = recorder.take() {
        stream.drain_now(&mut batch);
        finish_recording(r, &probes, &stream, &batch)?;
    }
    outcome
}

/// Finishes a recording, saying where it went.
fn finish_recording(
    mut r: Recorder,
    probes: &LockProbes,
    stream: &EventStream,
    tail: &[bufscope::probe::Event],
) -> anyhow::Result<String> {
    r.write(probes, tail)?;
    let path = r.path.clone();
    let done = r.finish(probes, stream.malformed())?;
    let line = format!(
        "recorded {} lock waits and {} dm-bufio operations to {}",
        thousands(done.waits),
        thousands(done.ops),
        path.display()
    );
    eprintln!("bufscope: {line}");
    Ok(line)
}

fn toggle_recording(
    recorder: &mut Option<Recorder>,
    model: &mut Model,
    probes: &LockProbes,
    stream: &EventStream,
    settings: &LiveSettings,
) -> anyhow::Result<()> {
    if let Some(r) = recorder.take() {
        model.header.status = Some(finish_recording(r, probes, stream, &[])?);
        model.header.recording = None;
        return Ok(());
    }
    // The --record file the first time (if it is free), a time-stamped one after.
    let path = match &settings.record {
        Some(p) if !p.exists() => p.clone(),
        _ => recording_path(),
    };
    match Recorder::create(&path, probes, Start::now()) {
        Ok(r) => {
            model.header.recording = Some(recording_status(&r));
            model.header.status = None;
            *recorder = Some(r);
        }
        Err(e) => model.header.status = Some(format!("cannot record: {e:#}")),
    }
    Ok(())
}

/// The kernel's events into the model (clients named with their lock addresses).
pub fn ingest(model: &mut Model, probes: &LockProbes, batch: &[Event]) {
    for event in batch {
        match event {
            Event::LockWait(w) => model.add_wait(w),
            Event::Op(o) => model.add_op(o),
            // A destroyed client's name stays until a new client takes its address.
            Event::Client(c) if c.how != ClientHow::Destroyed => {
                model.add_metadata(&Metadata::Client {
                    addr: c.addr,
                    device: c.device.clone(),
                    block_size: c.block_size,
                    locks: probes.client_locks(c.addr, c.num_locks),
                    seen_ns: c.at_ns,
                    destroyed_ns: None,
                });
            }
            Event::Client(_) => {}
        }
    }
}

/// `replay FILE --tui`: the same screens driven by a trace file.
pub async fn replay(
    trace: TraceData,
    speed: f64,
    designs: Vec<String>,
    shadow: ModelOptions,
    interval: Duration,
) -> anyhow::Result<()> {
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
            .map(|p| format!("the file ends early: {p}")),
    };
    let Some(mut playback) = Playback::new(trace, speed, false) else {
        bail!("{file} has no lock waits or dm-bufio operations to play");
    };
    let fresh_model = |playback: &Playback, designs: &[String]| {
        let mut model = Model::new(header.clone(), CompareSource::Tables, designs);
        for m in &playback.trace.metadata {
            model.add_metadata(m);
        }
        model
    };
    let model = fresh_model(&playback, &designs);
    let mut session = Session::new(model, Ui::new(&designs, true), shadow, None)?;
    let mut screen = Screen::open()?;
    let mut keys = crossterm::event::EventStream::new();
    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut data_tick = tokio::time::interval(interval);
    data_tick.reset();
    let mut frame_tick = tokio::time::interval(FRAME);
    let mut last_frame = Instant::now();
    let mut covered = 0.0;
    loop {
        tokio::select! {
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
            _ = terminate.recv() => break,
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
