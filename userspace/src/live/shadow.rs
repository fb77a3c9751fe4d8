//! Shadow replay: the reference designs fed the same dm-bufio operations as the kernel, while
//! they arrive. Each design has a thread and a cache that lives across windows (so it warms up
//! as the kernel's did); a window's operations are replayed at the pace they were recorded and
//! the design's lock waits sent back. The live view therefore shows the designs one window
//! behind the kernel.
//!
//! The view hands over a window as it was cut ([`Cut`]): its operations are turned into replay
//! streams and calibrated on the shadow's own thread, not the view's, so a busy window never
//! holds up the view's keys, frames or event reading (on two CPUs under a pipe storm, a debug
//! build's window took the view's loop more than a second).
//!
//! Buffers held across a window boundary are released at the window's end (the replay's
//! "held at end"), and their later release counts as a mismatch; with one-second windows and
//! dm-bufio's short holds, a few per window.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
        mpsc::{self, Receiver, SyncSender, TryRecvError},
    },
    thread,
};

use bufscope_trace::{BufioOp, LockWait};
use reference_cache::{
    BufferCache, Design,
    replay::{ReplayClock, ReplayOptions, Stream, replay},
    timing::Timing,
};

use super::hist::Log2Hist;
use bufscope_analyses::{
    calibration::{Calibration, TimingMode, calibrate_ops},
    models::{KernelCache, ModelOptions, OwnedWaits, build_cache, for_clock, streams_of},
    units::error_chain,
};

/// Windows a design may have queued or running before new ones are skipped.
const MAX_IN_FLIGHT: usize = 2;

/// One client's operations over one interval, as replay streams (times from the window's
/// first operation).
#[derive(Clone, Debug)]
pub struct Window {
    pub id: u64,
    pub client: u64,
    pub block_size: u32,
    pub streams: Vec<Stream>,
    /// Pace of the replay (1.0: as recorded); `None`: the shadow's options decide.
    pub speed: Option<f64>,
    /// What the designs' steps cost (the window's own calibration); `None`: the shadow's
    /// options decide.
    pub timing: Option<Timing>,
    /// Whose clock the window runs on (virtual time for a window calibrated from its own
    /// operations, whose misses then read in the given time); `None`: the shadow's options
    /// decide. The designs' caches answer at once either way (no `--device` then).
    pub clock: Option<ReplayClock>,
}

/// One client's operations over one interval as the view cut them, before they are turned into
/// a [`Window`] ([`Cut::prepare`], on the shadow's thread).
#[derive(Clone, Debug)]
pub struct Cut {
    pub id: u64,
    pub client: u64,
    /// The client's device, named in the calibration.
    pub device: String,
    pub block_size: u32,
    /// Where the window's streams start (its first operation's start).
    pub start_ns: u64,
    pub ops: Vec<BufioOp>,
    /// The window's waits on the client's mutex inside its operations: their spans time the
    /// mutex's handoffs, their owners how long each holder held it.
    pub mutex_waits: Vec<LockWait>,
    /// As [`Window::speed`].
    pub speed: Option<f64>,
    /// Whether the designs run at the costs the window's own operations measured (`Host`:
    /// the shadow's options decide).
    pub timing: TimingMode,
    /// Whether a window so calibrated replays in virtual time.
    pub simulate_calibrated: bool,
}

impl Cut {
    /// The window's replay streams, and its costs and clock where [`Cut::timing`] asks for
    /// them.
    pub fn prepare(&self) -> Window {
        let calibration = (self.timing != TimingMode::Host)
            .then(|| {
                let spans: Vec<(u64, u64)> = self
                    .mutex_waits
                    .iter()
                    .map(|w| (w.start_ns, w.wait_ns))
                    .collect();
                calibrate_ops(self.client, &self.device, &self.ops, &spans)
            })
            .filter(|c| self.timing.uses(c));
        // A miss's read takes what the window's took, in virtual time.
        let clock = calibration
            .as_ref()
            .filter(|_| self.simulate_calibrated)
            .map(|c| ReplayClock::Simulated {
                io_ns: c.read_io().map_or(0, |io| io.as_nanos() as u64),
            });
        Window {
            id: self.id,
            client: self.client,
            block_size: self.block_size,
            streams: streams_of(
                self.ops.iter(),
                self.start_ns,
                &OwnedWaits::of(self.mutex_waits.iter()),
            ),
            speed: self.speed,
            timing: calibration.as_ref().map(Calibration::timing),
            clock,
        }
    }
}

/// What the preparing thread is handed: a window still to prepare, or (tests) one built by
/// hand.
#[derive(Debug)]
enum Job {
    Cut(Box<Cut>),
    #[cfg(test)]
    Ready(Box<Window>),
}

/// What one design measured on one window.
#[derive(Clone, Debug)]
pub struct DesignResult {
    pub window: u64,
    /// Index of the design in the list the shadow was started with.
    pub design: usize,
    pub waits: Log2Hist,
    pub steps: u64,
    pub mismatched: u64,
    pub error: Option<String>,
}

#[derive(Debug)]
struct Worker {
    design: Design,
    tx: SyncSender<Arc<Window>>,
    in_flight: Arc<AtomicUsize>,
}

/// Why the designs' threads could not start.
#[derive(Debug, thiserror::Error)]
pub enum ShadowError {
    #[error("starting the {design} design's thread")]
    Thread {
        design: Design,
        source: std::io::Error,
    },
    #[error("starting the thread that prepares the designs' windows")]
    Preparer(#[source] std::io::Error),
}

/// The designs' threads, and the thread that prepares their windows. Dropping it lets them
/// finish their window and exit.
#[derive(Debug)]
pub struct Shadow {
    /// Shared with the preparing thread, which hands each prepared window to every worker.
    workers: Arc<Vec<Worker>>,
    jobs: mpsc::Sender<Job>,
    results: Receiver<DesignResult>,
}

impl Shadow {
    /// Starts a thread per design. `options.replay.speed` paces the replay (1.0: as recorded).
    pub fn start(designs: &[Design], options: &ModelOptions) -> Result<Self, ShadowError> {
        let (results_tx, results) = mpsc::channel();
        let mut workers = Vec::new();
        for (index, design) in designs.iter().enumerate() {
            let (tx, rx) = mpsc::sync_channel::<Arc<Window>>(MAX_IN_FLIGHT);
            let in_flight = Arc::new(AtomicUsize::new(0));
            let (design, options, results_tx, counter) = (
                *design,
                options.clone(),
                results_tx.clone(),
                Arc::clone(&in_flight),
            );
            thread::Builder::new()
                .name(format!("shadow-{design}"))
                .spawn(move || {
                    run_worker(index, design, &options, &rx, &results_tx, &counter);
                })
                .map_err(|source| ShadowError::Thread { design, source })?;
            workers.push(Worker {
                design,
                tx,
                in_flight,
            });
        }
        let workers = Arc::new(workers);
        let (jobs, jobs_rx) = mpsc::channel();
        let handed = Arc::clone(&workers);
        thread::Builder::new()
            .name("shadow-prepare".into())
            .spawn(move || run_preparer(&jobs_rx, &handed))
            .map_err(ShadowError::Preparer)?;
        Ok(Self {
            workers,
            jobs,
            results,
        })
    }

    pub fn designs(&self) -> Vec<Design> {
        self.workers.iter().map(|w| w.design).collect()
    }

    /// Hands the cut window to every design (prepared on the shadow's thread), or to none when
    /// any is still busy with [`MAX_IN_FLIGHT`] windows (so the columns keep covering the same
    /// windows): `false` then.
    pub fn submit(&self, cut: Cut) -> bool {
        self.hand_over(Job::Cut(Box::new(cut)))
    }

    fn hand_over(&self, job: Job) -> bool {
        if self
            .workers
            .iter()
            .any(|w| w.in_flight.load(Ordering::Acquire) >= MAX_IN_FLIGHT)
        {
            return false;
        }
        // Counted in flight from here: the busy check above covers windows still being
        // prepared.
        for w in self.workers.iter() {
            w.in_flight.fetch_add(1, Ordering::AcqRel);
        }
        if self.jobs.send(job).is_err() {
            // The preparing thread is gone (it panicked): every column stays empty.
            for w in self.workers.iter() {
                w.in_flight.fetch_sub(1, Ordering::AcqRel);
            }
        }
        true
    }

    /// Results that have come back since the last call.
    pub fn results(&self) -> Vec<DesignResult> {
        let mut out = Vec::new();
        loop {
            match self.results.try_recv() {
                Ok(r) => out.push(r),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return out,
            }
        }
    }

    /// Whether any design is still working on a window.
    pub fn busy(&self) -> bool {
        self.workers
            .iter()
            .any(|w| w.in_flight.load(Ordering::Acquire) > 0)
    }
}

/// Prepares each window and hands it to every design (each counted in flight already).
fn run_preparer(jobs: &Receiver<Job>, workers: &[Worker]) {
    while let Ok(job) = jobs.recv() {
        let window = Arc::new(match job {
            Job::Cut(cut) => cut.prepare(),
            #[cfg(test)]
            Job::Ready(window) => *window,
        });
        for w in workers {
            // Never full: a design takes at most MAX_IN_FLIGHT windows, its channel's bound.
            if w.tx.try_send(Arc::clone(&window)).is_err() {
                // The design's thread is gone (it panicked): its column stays empty.
                w.in_flight.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
}

fn run_worker(
    index: usize,
    design: Design,
    options: &ModelOptions,
    windows: &Receiver<Arc<Window>>,
    results: &mpsc::Sender<DesignResult>,
    in_flight: &AtomicUsize,
) {
    // The cache of the client being compared; a new client (or block size) starts a new one.
    let mut cache: Option<((u64, u32), Arc<dyn BufferCache>)> = None;
    let (build_options, replay_options) = for_clock(options);
    while let Ok(window) = windows.recv() {
        let key = (window.client, window.block_size);
        let result = match &cache {
            Some((k, c)) if *k == key => Ok(Arc::clone(c)),
            _ => build_cache(
                design,
                window.block_size,
                &build_options,
                KernelCache::default(),
            )
            .inspect(|c| {
                cache = Some((key, Arc::clone(c)));
            }),
        }
        .map(|c| {
            replay(
                c,
                window.streams.clone(),
                ReplayOptions {
                    log: true,
                    speed: window.speed.or(replay_options.speed),
                    timing: window.timing.unwrap_or(replay_options.timing),
                    clock: window.clock.unwrap_or(replay_options.clock),
                    ..replay_options
                },
            )
        });
        let out = match result {
            Ok(run) => {
                let mut waits = Log2Hist::default();
                for w in run.log.iter().flat_map(|log| log.waits.iter()) {
                    waits.add(w.wait_ns);
                }
                let m = run.mismatches;
                DesignResult {
                    window: window.id,
                    design: index,
                    waits,
                    steps: run.steps,
                    mismatched: m.not_held + m.extra_hits + m.held_at_end,
                    error: run.first_io_error,
                }
            }
            Err(e) => DesignResult {
                window: window.id,
                design: index,
                waits: Log2Hist::default(),
                steps: 0,
                mismatched: 0,
                error: Some(error_chain(&e)),
            },
        };
        in_flight.fetch_sub(1, Ordering::AcqRel);
        if results.send(out).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use bufscope_trace::{OpKind, OpResult};
    use reference_cache::replay::{Step, TimedStep};

    use super::*;
    use bufscope_analyses::models::Backing;

    /// Eight threads taking turns on a few blocks: the classic design's one mutex is contended.
    fn hot_window(id: u64) -> Window {
        let streams = (0..8)
            .map(|tid| Stream {
                tid,
                steps: (0..2_000u64)
                    .flat_map(|i| {
                        let block = i % 4;
                        [
                            TimedStep::new(i * 10, block, Step::Read),
                            TimedStep::new(i * 10 + 5, block, Step::Release),
                        ]
                    })
                    .collect(),
            })
            .collect();
        Window {
            id,
            client: 1,
            block_size: 4096,
            streams,
            speed: None,
            timing: None,
            clock: None,
        }
    }

    /// The designs' results on `window`, from a shadow of its own.
    fn results_of(designs: &[Design], window: Window) -> Vec<DesignResult> {
        results_of_job(designs, Job::Ready(Box::new(window)))
    }

    fn results_of_job(designs: &[Design], job: Job) -> Vec<DesignResult> {
        let options = ModelOptions {
            backing: Backing::Memory,
            capacity: Some(1024),
            cpus: Some(4),
            replay: ReplayOptions::default(),
        };
        let shadow = Shadow::start(designs, &options).unwrap();
        assert!(shadow.hand_over(job), "a first window always fits");
        let mut results = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        while results.len() < designs.len() && Instant::now() < deadline {
            results.extend(shadow.results());
            thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(results.len(), designs.len(), "every design reported");
        results.sort_by_key(|r| r.design);
        results
    }

    #[test]
    fn a_window_on_the_simulated_clock_gives_the_same_waits_every_time() {
        // Each read hit holding classic's mutex 2 µs, every thread due every 10 ns: they queue.
        let timing = Timing::kernel(
            [reference_cache::timing::StepCost {
                hit_hold_ns: 2_000,
                miss_hold_ns: 2_000,
                outside_ns: 0,
                contended_ns: 500,
            }; Step::KINDS],
        );
        let window = || Window {
            timing: Some(timing),
            clock: Some(ReplayClock::Simulated { io_ns: 0 }),
            ..hot_window(0)
        };
        let (first, again) = (
            results_of(&[Design::Classic], window()),
            results_of(&[Design::Classic], window()),
        );
        assert_eq!(first[0].steps, 8 * 4_000);
        assert_eq!(first[0].waits, again[0].waits, "the same figures every run");
        // Eight threads due at once on one mutex held 2 µs a step: every acquisition but the
        // first of each turn waits; a run on threads, at host speed, waits far less.
        assert!(first[0].waits.count > 8 * 4_000 / 2, "{:?}", first[0].waits);
    }

    /// Four threads' read hits on client 1, 10 µs apart, each holding the client's mutex 2 µs.
    fn read_hits_cut() -> Cut {
        let ops = (0..400u64)
            .map(|i| {
                let start_ns = 1_000 + i * 10_000;
                BufioOp {
                    start_ns,
                    duration_ns: 5_000,
                    lock_hold_ns: 2_000,
                    lock_attempt_ns: start_ns + 1_000,
                    lock_release_ns: start_ns + 3_000,
                    client: 1,
                    block: i % 16,
                    tid: 1 + (i % 4) as u32,
                    tgid: 1,
                    kind: OpKind::Read,
                    result: OpResult::Hit,
                    ..BufioOp::default()
                }
            })
            .collect();
        Cut {
            id: 0,
            client: 1,
            device: "dm-0".into(),
            block_size: 4096,
            start_ns: 1_000,
            ops,
            mutex_waits: Vec::new(),
            speed: None,
            timing: TimingMode::Kernel,
            simulate_calibrated: true,
        }
    }

    #[test]
    fn a_cut_window_is_prepared_on_the_shadows_thread_as_it_would_be_by_hand() {
        let cut = read_hits_cut();
        let prepared = cut.prepare();
        // A step per read; calibrated (kernel timing), on the simulated clock.
        assert_eq!(
            prepared
                .streams
                .iter()
                .map(|s| s.steps.len())
                .sum::<usize>(),
            400
        );
        assert!(prepared.timing.is_some());
        assert_eq!(prepared.clock, Some(ReplayClock::Simulated { io_ns: 0 }));
        let handed = results_of_job(&[Design::Classic], Job::Cut(Box::new(cut)));
        let by_hand = results_of(&[Design::Classic], prepared);
        assert_eq!(handed[0].steps, 400, "every read replayed");
        // Simulated time: the same figures however the window came.
        assert_eq!(handed[0].waits, by_hand[0].waits);
        assert_eq!(handed[0].steps, by_hand[0].steps);
    }

    #[test]
    fn every_design_reports_on_every_window_it_took() {
        let designs = vec![Design::Classic, Design::Sharded];
        let options = ModelOptions {
            backing: Backing::Memory,
            capacity: Some(1024),
            cpus: Some(4),
            replay: ReplayOptions::default(),
        };
        let shadow = Shadow::start(&designs, &options).unwrap();
        let mut taken = Vec::new();
        for id in 0..3 {
            if shadow.hand_over(Job::Ready(Box::new(hot_window(id)))) {
                taken.push(id);
            }
        }
        assert!(taken.contains(&0), "the first window always fits");
        let mut results = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while results.len() < taken.len() * designs.len() && Instant::now() < deadline {
            results.extend(shadow.results());
            thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(results.len(), taken.len() * designs.len());
        assert!(!shadow.busy());
        for r in &results {
            assert_eq!(r.steps, 8 * 4_000, "{r:?}");
            assert_eq!(r.mismatched, 0, "{r:?}");
            assert!(r.error.is_none());
        }
        // Sixteen thousand lock/unlock pairs of eight threads on one mutex: some waited.
        assert!(
            results
                .iter()
                .filter(|r| r.design == 0)
                .any(|r| r.waits.count > 0),
            "classic never waited: {results:?}"
        );
    }
}
