//! Replays recorded access streams through a cache design: one replay thread per recorded thread
//! (or the recorded threads dealt onto fewer), each thread's order preserved, recorded gaps
//! honoured and scaled by a speed factor, or everything as fast as possible.
//!
//! Streams name blocks, not buffers, so a replay thread keeps the buffers it holds by block: a
//! release or mark-dirty acts on one it holds. Where the design and the recording disagree (a get
//! that hit here but missed in the kernel, a release of a buffer not held here), the replay does
//! the sensible thing and counts it, so a result says how faithful the replay was.
//!
//! With [`ReplayOptions::log`], a replay also keeps what a kernel recording keeps: every
//! operation (start, duration, hit or miss, client-mutex wait and hold) and every contended lock
//! acquisition with the operation it happened in, so that a design's run can be written as a
//! trace and reported, exported and compared like the kernel's.

use std::{
    sync::{Arc, Barrier, OnceLock},
    thread,
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;

use crate::{
    BufferCache, BufferRef, Design, LockClass, Report, ThreadRecorder,
    recorder::clock,
    timing::{StepCost, Timing},
};

/// One operation of a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// `missed`: the recording's get returned nothing (a buffer got here is released at once).
    Get {
        missed: bool,
    },
    Read,
    New,
    Prefetch {
        blocks: u32,
    },
    Release,
    MarkDirty,
    MarkPartialDirty {
        start: u32,
        end: u32,
    },
    WriteDirtyAsync,
    WriteDirty,
    Forget,
    ForgetBuffers {
        blocks: u32,
    },
    /// dm-bufio's global cleanup, from its kworker ([`BufferCache::global_cleanup`]).
    GlobalCleanup,
    /// The shrinker's work ([`BufferCache::background_work`]).
    ShrinkWork,
    /// The periodic age cleanup ([`BufferCache::background_work`]).
    AgeCleanup,
}

impl Step {
    /// How many kinds of step there are.
    pub const KINDS: usize = Self::NAMES.len();

    /// Short names, for results.
    pub const NAMES: [&'static str; 14] = [
        "get",
        "read",
        "new",
        "prefetch",
        "release",
        "mark_dirty",
        "mark_partial_dirty",
        "write_dirty_async",
        "write_dirty",
        "forget",
        "forget_buffers",
        "global_cleanup",
        "shrink_work",
        "age_cleanup",
    ];

    /// Index into [`Step::NAMES`].
    pub fn index(self) -> usize {
        match self {
            Step::Get { .. } => 0,
            Step::Read => 1,
            Step::New => 2,
            Step::Prefetch { .. } => 3,
            Step::Release => 4,
            Step::MarkDirty => 5,
            Step::MarkPartialDirty { .. } => 6,
            Step::WriteDirtyAsync => 7,
            Step::WriteDirty => 8,
            Step::Forget => 9,
            Step::ForgetBuffers { .. } => 10,
            Step::GlobalCleanup => 11,
            Step::ShrinkWork => 12,
            Step::AgeCleanup => 13,
        }
    }
}

/// An operation at a time (ns from the start of the recording).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimedStep {
    pub at_ns: u64,
    pub block: u64,
    pub step: Step,
    /// What this very operation took on the recording kernel, where it was measured. A
    /// simulated replay ([`ReplayClock::Simulated`]) with kernel timing makes the step take it
    /// instead of the median of its kind: a kernel's waits follow its holds' tail, not their
    /// median alone. Real threads take the median.
    pub kernel: Option<KernelOp>,
}

impl TimedStep {
    /// A step without a recorded hold (synthetic streams; kernels whose operation took no
    /// client lock).
    pub fn new(at_ns: u64, block: u64, step: Step) -> Self {
        Self {
            at_ns,
            block,
            step,
            kernel: None,
        }
    }
}

/// One operation on the recording kernel: its client-lock hold and its whole time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelOp {
    /// Client-lock hold.
    pub hold_ns: u64,
    /// The operation's duration net of its lock waits (the hold included).
    pub net_ns: u64,
    /// Whether that operation missed (its hold made room and inserted the buffer).
    pub miss: bool,
    /// Of its time outside the lock, what it spent before it tried for the lock, where the
    /// trace timed that (format 1.5 on); the rest follows the hold. 0: it tried at once.
    pub before_ns: u64,
}

impl KernelOp {
    /// `cost` with its hit or miss hold set to this one's, and its time outside the lock what
    /// this one's net time leaves.
    pub fn applied_to(self, mut cost: StepCost) -> StepCost {
        if self.miss {
            cost.miss_hold_ns = self.hold_ns;
        } else {
            cost.hit_hold_ns = self.hold_ns;
        }
        cost.outside_ns = self.net_ns.saturating_sub(self.hold_ns);
        cost
    }

    /// The time before the first attempt on a lock, at most the time outside it.
    pub fn before_lock_ns(self) -> u64 {
        self.before_ns.min(self.net_ns.saturating_sub(self.hold_ns))
    }
}

/// One recorded thread's operations, in order.
#[derive(Clone, Debug, Default)]
pub struct Stream {
    pub tid: u32,
    pub steps: Vec<TimedStep>,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct ReplayOptions {
    /// Replay threads; `None`: one per stream.
    pub threads: Option<usize>,
    /// Time scale: 2.0 replays twice as fast as recorded. `None`: as fast as possible.
    pub speed: Option<f64>,
    /// Keep every operation and contended acquisition in [`ReplayResult::log`].
    pub log: bool,
    /// How long each step takes: host speed, or a recording kernel's costs.
    pub timing: Timing,
    /// Real threads on this machine's clock, or a simulation in virtual time.
    pub clock: ReplayClock,
}

/// Whose clock a replay runs on.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum ReplayClock {
    /// One real thread per replay thread, on this machine's scheduler: the designs' code and
    /// locks as they run here, with the scheduler's timing in every figure.
    #[default]
    Real,
    /// A discrete-event simulation in virtual time ([`crate::simulate`]): the designs' code
    /// decides which locks each step takes, their calibrated costs how long; each device read or
    /// write takes `io_ns`. The cache's own I/O should take no time. Same figures on every run.
    Simulated { io_ns: u64 },
}

/// How an operation ended, as a kernel recording says it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StepResult {
    /// Operations that neither hit nor miss (release, mark dirty, ...).
    #[default]
    None,
    Hit,
    Miss,
    Error,
}

/// One replayed operation. Times are ns from the start of the replay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoggedOp {
    /// The recorded thread whose stream it came from.
    pub tid: u32,
    pub step: Step,
    pub block: u64,
    pub start_ns: u64,
    pub duration_ns: u64,
    pub result: StepResult,
    /// Time waiting for and holding the client lock inside this operation (the mutex, or a
    /// no-sleep design's spinlock).
    pub mutex_wait_ns: u64,
    pub mutex_hold_ns: u64,
}

/// One contended lock acquisition during a replay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoggedLockWait {
    pub tid: u32,
    pub start_ns: u64,
    pub wait_ns: u64,
    pub class: LockClass,
    /// Which lock of the class (a tree's index).
    pub instance: u32,
    /// The operation it happened in.
    pub step: Step,
}

/// Everything a logged replay kept, each list sorted by start time.
#[derive(Clone, Debug, Default)]
pub struct ReplayLog {
    pub ops: Vec<LoggedOp>,
    pub waits: Vec<LoggedLockWait>,
}

impl ReplayLog {
    /// Times every entry from the first operation's start, as a recording's clock would read,
    /// and sorts each list by start.
    pub(crate) fn timed_from_first_op(&mut self) {
        let first = self.ops.iter().map(|o| o.start_ns).min().unwrap_or(0);
        for op in &mut self.ops {
            op.start_ns -= first;
        }
        for wait in &mut self.waits {
            wait.start_ns = wait.start_ns.saturating_sub(first);
        }
        self.ops.sort_by_key(|o| o.start_ns);
        self.waits.sort_by_key(|w| w.start_ns);
    }
}

/// Where the replay and the recording parted ways.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mismatches {
    /// Release or mark-dirty of a block this replay thread did not hold.
    pub not_held: u64,
    /// Gets that hit here but missed in the recording (released at once).
    pub extra_hits: u64,
    /// Gets that hit in the recording but found nothing here (the recording began with a warm
    /// cache): the block is read instead, so the stream goes on holding it as it did.
    pub cold_gets: u64,
    /// Buffers still held at the end of a stream (released then).
    pub held_at_end: u64,
    /// Reads or news that failed (e.g. a block outside the device).
    pub io_errors: u64,
}

impl Mismatches {
    pub(crate) fn add(&mut self, o: Mismatches) {
        self.not_held += o.not_held;
        self.extra_hits += o.extra_hits;
        self.cold_gets += o.cold_gets;
        self.held_at_end += o.held_at_end;
        self.io_errors += o.io_errors;
    }
}

/// What a replay measured.
#[derive(Debug)]
pub struct ReplayResult {
    pub design: Design,
    pub elapsed: Duration,
    pub steps: u64,
    /// Locks and cache events, all threads merged.
    pub report: Report,
    /// Latency of each step kind in ns, indexed like [`Step::NAMES`].
    pub latency_ns: Vec<Histogram<u64>>,
    /// At a recorded pace ([`ReplayOptions::speed`]): how late each step began after its due
    /// time, in ns (the sleep's wake-up, or the thread's previous step running past it). Two
    /// recorded operations closer together than this may meet in a replay where they never did
    /// on the kernel, or miss each other where they met there. `None` as fast as possible.
    pub late_ns: Option<Histogram<u64>>,
    pub mismatches: Mismatches,
    /// The first I/O error's message, when there were any.
    pub first_io_error: Option<String>,
    /// Operations and waits, with [`ReplayOptions::log`].
    pub log: Option<ReplayLog>,
}

impl ReplayResult {
    /// A result with nothing replayed yet, with the histograms and log `options` ask for.
    pub(crate) fn empty(design: Design, options: ReplayOptions) -> Self {
        Self {
            design,
            elapsed: Duration::ZERO,
            steps: 0,
            report: Report::default(),
            latency_ns: histograms(),
            late_ns: options.speed.map(|_| ns_histogram()),
            mismatches: Mismatches::default(),
            first_io_error: None,
            log: options.log.then(ReplayLog::default),
        }
    }

    pub fn steps_per_sec(&self) -> f64 {
        self.steps as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

pub(crate) fn histograms() -> Vec<Histogram<u64>> {
    (0..Step::NAMES.len()).map(|_| ns_histogram()).collect()
}

/// Nanoseconds from 1 ns to 100 s, three significant digits.
pub(crate) fn ns_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid bounds")
}

/// Runs `streams` through `cache`.
pub fn replay(
    cache: Arc<dyn BufferCache>,
    streams: Vec<Stream>,
    options: ReplayOptions,
) -> ReplayResult {
    if let ReplayClock::Simulated { io_ns } = options.clock {
        return crate::simulate::simulate(cache.as_ref(), streams, options, io_ns);
    }
    let (dealt, origin_ns) = deal(streams, options.threads);
    let threads = dealt.len();
    // The caller waits at the barrier too, so the clock starts when every thread has its steps
    // merged and ready.
    let start = Arc::new(Barrier::new(threads + 1));
    // The replay's time zero: when the first thread leaves the barrier. Shared, so that a
    // thread scheduled late keeps its recorded offset from the others instead of shifting its
    // whole schedule.
    let zero = Arc::new(OnceLock::new());
    let epoch = ThreadRecorder::now_raw();
    let handles: Vec<_> = dealt
        .into_iter()
        .map(|streams| {
            let (cache, start, zero) = (Arc::clone(&cache), Arc::clone(&start), Arc::clone(&zero));
            thread::spawn(move || {
                let tids: Vec<u32> = streams.iter().map(|s| s.tid).collect();
                let steps = merge(streams);
                run_thread(
                    cache.as_ref(),
                    steps,
                    &tids,
                    options,
                    (epoch, origin_ns),
                    (&start, &zero),
                )
            })
        })
        .collect();
    start.wait();
    // The same time zero as the threads': a caller scheduled late after the barrier would
    // otherwise measure less than the paced replay took.
    let began = *zero.get_or_init(Instant::now);
    let mut result = ReplayResult::empty(cache.design(), options);
    for handle in handles {
        let outcome = handle.join().expect("replay thread panicked");
        let (rec, latency, steps, mismatches) = (
            outcome.rec,
            outcome.latency,
            outcome.steps,
            outcome.mismatches,
        );
        if result.first_io_error.is_none() {
            result.first_io_error = outcome.first_io_error;
        }
        result.report.add(&rec);
        for (mine, theirs) in result.latency_ns.iter_mut().zip(&latency) {
            mine.add(theirs).expect("same bounds");
        }
        if let (Some(mine), Some(theirs)) = (&mut result.late_ns, &outcome.late) {
            mine.add(theirs).expect("same bounds");
        }
        result.steps += steps;
        result.mismatches.add(mismatches);
        if let (Some(log), Some(theirs)) = (&mut result.log, outcome.log) {
            log.ops.extend(theirs.ops);
            log.waits.extend(theirs.waits);
        }
    }
    result.elapsed = began.elapsed();
    if let Some(log) = &mut result.log {
        log.timed_from_first_op();
    }
    result
}

/// Deals `streams` onto `threads` replay threads (`None`: one per stream), and gives the
/// earliest step's time: at a given speed every thread keeps its steps' times relative to it,
/// one origin for all, so threads start as far apart as they did when recorded.
pub(crate) fn deal(streams: Vec<Stream>, threads: Option<usize>) -> (Vec<Vec<Stream>>, u64) {
    let threads = threads
        .unwrap_or(streams.len())
        .clamp(1, streams.len().max(1));
    let origin_ns = streams
        .iter()
        .flat_map(|s| s.steps.iter().map(|step| step.at_ns))
        .min()
        .unwrap_or(0);
    let mut dealt: Vec<Vec<Stream>> = vec![Vec::new(); threads];
    for (i, stream) in streams.into_iter().enumerate() {
        dealt[i % threads].push(stream);
    }
    (dealt, origin_ns)
}

/// When a step recorded at `at_ns` is due, in ns from the replay's start, at `speed`.
pub(crate) fn due_ns(at_ns: u64, origin_ns: u64, speed: f64) -> u64 {
    (at_ns.saturating_sub(origin_ns) as f64 / speed) as u64
}

/// How a logged step ended, as a kernel recording would say: `got`, for a get, whether it got a
/// buffer; `errored`, whether its I/O failed; `missed`, whether the design counted a miss in it.
pub(crate) fn step_result(
    step: Step,
    got: Option<bool>,
    errored: bool,
    missed: bool,
) -> StepResult {
    if errored {
        return StepResult::Error;
    }
    match (step, got) {
        (Step::Get { .. }, Some(true)) => StepResult::Hit,
        (Step::Get { .. }, _) => StepResult::Miss,
        (Step::Read, _) if missed => StepResult::Miss,
        (Step::Read, _) => StepResult::Hit,
        _ => StepResult::None,
    }
}

/// Interleaves a replay thread's streams by time, each stream's own order kept.
pub(crate) fn merge(streams: Vec<Stream>) -> Vec<(usize, TimedStep)> {
    let mut merged: Vec<(usize, TimedStep)> = streams
        .into_iter()
        .enumerate()
        .flat_map(|(i, s)| s.steps.into_iter().map(move |step| (i, step)))
        .collect();
    // Stable: equal times keep each stream's order.
    merged.sort_by_key(|(_, step)| step.at_ns);
    merged
}

/// The buffers one replay thread holds, by (stream, block). Kernel callers hold a handful at a
/// time (dm-thin at most six per thread), so a short list searched from its most recent end beats
/// a hash map; a stream may hold the same block more than once.
#[derive(Default)]
pub(crate) struct Held(Vec<((usize, u64), BufferRef)>);

impl Held {
    fn push(&mut self, key: (usize, u64), buf: BufferRef) {
        self.0.push((key, buf));
    }

    fn position(&self, key: (usize, u64)) -> Option<usize> {
        self.0.iter().rposition(|(k, _)| *k == key)
    }

    fn get(&self, key: (usize, u64)) -> Option<&BufferRef> {
        self.position(key).map(|i| &self.0[i].1)
    }

    fn take(&mut self, key: (usize, u64)) -> Option<BufferRef> {
        self.position(key).map(|i| self.0.remove(i).1)
    }

    fn drain(&mut self) -> impl Iterator<Item = BufferRef> + '_ {
        self.0.drain(..).map(|(_, buf)| buf)
    }
}

/// What one replay thread (or a simulated replay's plan run) keeps between steps: the buffers it
/// holds and where it parted ways with the recording.
#[derive(Default)]
pub(crate) struct Stepper {
    pub(crate) held: Held,
    pub(crate) mismatches: Mismatches,
    /// The first I/O error's message.
    pub(crate) first_io_error: Option<String>,
}

impl Stepper {
    fn io_error(&mut self, e: crate::CacheError) {
        self.mismatches.io_errors += 1;
        self.first_io_error.get_or_insert_with(|| e.with_causes());
    }

    /// Runs one step of stream `key.0` on block `key.1`; for a get, whether it got a buffer.
    pub(crate) fn run(
        &mut self,
        cache: &dyn BufferCache,
        rec: &ThreadRecorder,
        key: (usize, u64),
        step: Step,
    ) -> Option<bool> {
        let block = key.1;
        let mut got = None;
        match step {
            Step::Get { missed } => match cache.get(rec, block).inspect(|_| got = Some(true)) {
                Some(buf) if missed => {
                    self.mismatches.extra_hits += 1;
                    cache.release(rec, buf);
                }
                Some(buf) => self.held.push(key, buf),
                None if missed => got = Some(false),
                None => {
                    got = Some(false);
                    self.mismatches.cold_gets += 1;
                    match cache.read(rec, block) {
                        Ok(buf) => self.held.push(key, buf),
                        Err(e) => self.io_error(e),
                    }
                }
            },
            Step::Read | Step::New => {
                let got = if step == Step::Read {
                    cache.read(rec, block)
                } else {
                    cache.new_buffer(rec, block)
                };
                match got {
                    Ok(buf) => self.held.push(key, buf),
                    Err(e) => self.io_error(e),
                }
            }
            Step::Prefetch { blocks } => cache.prefetch(rec, block, u64::from(blocks)),
            Step::Release => match self.held.take(key) {
                Some(buf) => cache.release(rec, buf),
                None => self.mismatches.not_held += 1,
            },
            Step::MarkDirty | Step::MarkPartialDirty { .. } => match self.held.get(key) {
                Some(buf) => match step {
                    Step::MarkPartialDirty { start, end } => {
                        cache.mark_partial_dirty(rec, buf, start, end)
                    }
                    _ => cache.mark_dirty(rec, buf),
                },
                None => self.mismatches.not_held += 1,
            },
            Step::WriteDirtyAsync => {
                if let Err(e) = cache.write_dirty_buffers_async(rec) {
                    self.io_error(e);
                }
            }
            Step::WriteDirty => {
                if let Err(e) = cache.write_dirty_buffers(rec) {
                    self.io_error(e);
                }
            }
            Step::Forget => cache.forget(rec, block),
            Step::ForgetBuffers { blocks } => cache.forget_buffers(rec, block, u64::from(blocks)),
            Step::GlobalCleanup => {
                if let Err(e) = cache.global_cleanup(rec) {
                    self.io_error(e);
                }
            }
            Step::ShrinkWork | Step::AgeCleanup => cache.background_work(rec),
        }
        got
    }

    /// Releases what the stream still holds at its end, counting each.
    pub(crate) fn release_held(&mut self, cache: &dyn BufferCache, rec: &ThreadRecorder) {
        for buf in self.held.drain() {
            self.mismatches.held_at_end += 1;
            cache.release(rec, buf);
        }
    }
}

struct ThreadOutcome {
    rec: ThreadRecorder,
    latency: Vec<Histogram<u64>>,
    late: Option<Histogram<u64>>,
    steps: u64,
    mismatches: Mismatches,
    first_io_error: Option<String>,
    log: Option<ReplayLog>,
}

/// An empty log with room for `steps` operations whose memory has been written once, so that
/// the page faults of a fresh allocation (a microsecond or more each in a VM) happen here, before
/// the clock starts, instead of inside the operations the log times.
fn written_log(steps: usize) -> Vec<LoggedOp> {
    let blank = LoggedOp {
        tid: 0,
        step: Step::Release,
        block: 0,
        start_ns: 0,
        duration_ns: 0,
        result: StepResult::None,
        mutex_wait_ns: 0,
        mutex_hold_ns: 0,
    };
    let mut log = vec![blank; steps];
    // The writes must happen although nothing reads them.
    std::hint::black_box(log.as_mut_slice());
    log.clear();
    log
}

fn run_thread(
    cache: &dyn BufferCache,
    steps: Vec<(usize, TimedStep)>,
    tids: &[u32],
    options: ReplayOptions,
    (epoch, origin_ns): (u64, u64),
    (start, zero): (&Barrier, &OnceLock<Instant>),
) -> ThreadOutcome {
    let speed = options.speed;
    let rec = if options.log {
        ThreadRecorder::logging()
    } else {
        ThreadRecorder::new()
    };
    let mut ops_log = if options.log {
        written_log(steps.len())
    } else {
        Vec::new()
    };
    let mut latency = histograms();
    let mut late = speed.map(|_| ns_histogram());
    let mut stepper = Stepper::default();
    let clock = clock();
    start.wait();
    let began = *zero.get_or_init(Instant::now);
    // As fast as possible, one clock read per step: each step ends when the next one begins.
    let mut last_end = clock.raw();
    for &(
        stream,
        TimedStep {
            at_ns, block, step, ..
        },
    ) in &steps
    {
        let before = options.log.then(|| {
            rec.set_tag(ops_log.len() as u32);
            (
                rec.client_lock_totals(),
                rec.ops(),
                stepper.mismatches.io_errors,
            )
        });
        let op_began = match speed {
            Some(speed) => {
                let due = Duration::from_nanos(due_ns(at_ns, origin_ns, speed));
                if let Some(wait) = due.checked_sub(began.elapsed()) {
                    thread::sleep(wait);
                }
                let now = clock.raw();
                if let Some(late) = &mut late {
                    let late_ns = began.elapsed().saturating_sub(due).as_nanos();
                    late.saturating_record(u64::try_from(late_ns).unwrap_or(u64::MAX).max(1));
                }
                now
            }
            None => last_end,
        };
        rec.set_step_cost(options.timing.cost(step));
        let got = stepper.run(cache, &rec, (stream, block), step);
        rec.spend_outside();
        last_end = clock.raw();
        let duration_ns = clock.delta_as_nanos(op_began, last_end);
        latency[step.index()].saturating_record(duration_ns.max(1));
        if let Some((totals, counts, io_errors)) = before {
            let now = rec.client_lock_totals();
            let after = rec.ops();
            let result = step_result(
                step,
                got,
                stepper.mismatches.io_errors > io_errors,
                after.misses > counts.misses,
            );
            ops_log.push(LoggedOp {
                tid: tids[stream],
                step,
                block,
                start_ns: clock.delta_as_nanos(epoch, op_began),
                duration_ns,
                result,
                mutex_wait_ns: now.wait_ns - totals.wait_ns,
                mutex_hold_ns: now.hold_ns - totals.hold_ns,
            });
        }
    }
    stepper.release_held(cache, &rec);
    let log = options.log.then(|| {
        let waits = rec
            .take_log()
            .into_iter()
            .map(|w| {
                // Waits of the final releases (no operation of their own) go to the last one.
                let op = ops_log.get(w.tag as usize).or(ops_log.last());
                LoggedLockWait {
                    tid: op.map_or(0, |o| o.tid),
                    start_ns: clock.delta_as_nanos(epoch, w.began_raw),
                    wait_ns: w.wait_ns,
                    class: w.class,
                    instance: w.instance,
                    step: op.map_or(Step::Release, |o| o.step),
                }
            })
            .collect();
        ReplayLog {
            ops: ops_log,
            waits,
        }
    });
    ThreadOutcome {
        rec,
        latency,
        late,
        steps: steps.len() as u64,
        mismatches: stepper.mismatches,
        first_io_error: stepper.first_io_error,
        log,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CacheConfig, Design, Latency, LockClass, MemoryIo, build};

    fn stream(tid: u32, steps: &[(u64, u64, Step)]) -> Stream {
        Stream {
            tid,
            steps: steps
                .iter()
                .map(|&(at_ns, block, step)| TimedStep::new(at_ns, block, step))
                .collect(),
        }
    }

    fn cache(design: Design) -> Arc<dyn BufferCache> {
        let io = Arc::new(MemoryIo::new(512, Latency::None));
        Arc::from(build(design, CacheConfig::new(512, 64), io))
    }

    #[test]
    fn replays_every_step_and_counts_what_did_not_match() {
        for design in Design::ALL {
            let streams = vec![
                stream(
                    1,
                    &[
                        (0, 5, Step::Read),
                        (10, 5, Step::MarkDirty),
                        (20, 5, Step::Release),
                        (30, 5, Step::Get { missed: true }),
                        (35, 8, Step::Get { missed: false }),
                        (38, 8, Step::Release),
                        (40, 9, Step::Release),
                        (45, 0, Step::WriteDirty),
                        (50, 7, Step::Read),
                    ],
                ),
                stream(2, &[(5, 6, Step::New), (15, 6, Step::Release)]),
            ];
            let result = replay(cache(design), streams, ReplayOptions::default());
            assert_eq!(result.steps, 11, "{design}");
            let m = result.mismatches;
            assert_eq!(
                (m.extra_hits, m.not_held, m.held_at_end, m.io_errors),
                (1, 1, 1, 0),
                "{design}"
            );
            assert_eq!(m.cold_gets, 1, "{design}: block 8 was never read");
            assert_eq!(result.latency_ns[Step::Read.index()].len(), 2, "{design}");
            assert_eq!(result.report.ops().reads, 3, "{design}: blocks 5, 8 and 7");
            assert!(
                result.report.ops().writes >= 1,
                "{design}: write_dirty wrote block 5"
            );
            assert_eq!(result.first_io_error, None, "{design}");
            let client_lock = LockClass::ALL.into_iter().filter(|c| c.is_client_lock());
            let taken: u64 = client_lock
                .map(|c| result.report.class(c).acquisitions)
                .sum();
            assert!(taken > 0, "{design}");
        }
    }

    #[test]
    fn a_logged_replay_keeps_every_operation_and_charges_waits_to_them() {
        // Eight threads hammering the classic design's one mutex, each holding it 2 µs a step:
        // waits are certain. (At host speed a thread's 4,000 steps fit in less than a time
        // slice, and on a busy 2-CPU machine the threads sometimes ran one after another.)
        use crate::timing::StepCost;
        let held = StepCost {
            hit_hold_ns: 2_000,
            miss_hold_ns: 2_000,
            ..StepCost::default()
        };
        let streams: Vec<_> = (0..8u32)
            .map(|t| {
                let steps: Vec<_> = (0..2_000u64)
                    .flat_map(|i| {
                        let block = u64::from(t) * 10_000 + i % 50;
                        [
                            (i * 2, block, Step::Read),
                            (i * 2 + 1, block, Step::Release),
                        ]
                    })
                    .collect();
                stream(100 + t, &steps)
            })
            .collect();
        let result = replay(
            cache(Design::Classic),
            streams,
            ReplayOptions {
                log: true,
                timing: Timing::kernel([held; Step::KINDS]),
                ..Default::default()
            },
        );
        let log = result.log.expect("asked for a log");
        assert_eq!(log.ops.len() as u64, result.steps);
        assert!(log.ops.windows(2).all(|w| w[0].start_ns <= w[1].start_ns));
        assert_eq!(log.ops[0].start_ns, 0, "times start at the first operation");
        assert!(log.ops.iter().all(|o| (100..108).contains(&o.tid)));
        let reads = log.ops.iter().filter(|o| o.step == Step::Read);
        let (hits, misses) = reads.fold((0, 0), |(h, m), o| match o.result {
            StepResult::Hit => (h + 1, m),
            StepResult::Miss => (h, m + 1),
            other => panic!("a read ended {other:?}"),
        });
        // 50 distinct blocks per thread in a 64-buffer cache: mostly misses at first, then hits.
        assert_eq!(hits + misses, 8 * 2_000);
        assert!(misses >= 8 * 50 && hits > 0, "{hits} hits, {misses} misses");

        let mutex = result.report.class(LockClass::ClientMutex);
        assert_eq!(log.waits.len() as u64, mutex.contended);
        assert!(
            !log.waits.is_empty(),
            "eight threads on one mutex never waited"
        );
        assert!(log.waits.iter().all(|w| w.class == LockClass::ClientMutex));
        assert!(
            log.waits
                .iter()
                .all(|w| matches!(w.step, Step::Read | Step::Release))
        );
        // Each wait is charged to its operation: per-op totals add up to the logged waits.
        let logged: u64 = log.waits.iter().map(|w| w.wait_ns).sum();
        let charged: u64 = log.ops.iter().map(|o| o.mutex_wait_ns).sum();
        assert_eq!(logged, charged);
        assert!(log.ops.iter().any(|o| o.mutex_hold_ns > 0));
    }

    #[test]
    fn speed_stretches_or_squeezes_recorded_gaps() {
        // Two steps 40 ms apart: at speed 2 the replay takes about 20 ms, at speed 0.5 about 80.
        let streams = || {
            vec![stream(
                1,
                &[(0, 1, Step::Read), (40_000_000, 1, Step::Release)],
            )]
        };
        let fast = replay(
            cache(Design::Sharded),
            streams(),
            ReplayOptions {
                threads: None,
                speed: Some(2.0),
                ..Default::default()
            },
        );
        let slow = replay(
            cache(Design::Sharded),
            streams(),
            ReplayOptions {
                threads: None,
                speed: Some(0.5),
                ..Default::default()
            },
        );
        assert!(
            fast.elapsed >= Duration::from_millis(19),
            "{:?}",
            fast.elapsed
        );
        assert!(
            slow.elapsed >= Duration::from_millis(79),
            "{:?}",
            slow.elapsed
        );
        assert!(slow.elapsed > fast.elapsed * 2);
        assert_eq!(slow.mismatches, Mismatches::default());
    }

    #[test]
    fn a_paced_replay_measures_how_late_each_step_began() {
        use crate::timing::StepCost;
        // Reads due every 200 µs that each take at least 1 ms: read k begins at least
        // k x 800 µs after its due time.
        let mut costs = [StepCost::default(); Step::KINDS];
        costs[Step::Read.index()] = StepCost {
            outside_ns: 1_000_000,
            ..StepCost::default()
        };
        let steps: Vec<(u64, u64, Step)> = (0..5u64)
            .flat_map(|k| {
                [
                    (k * 200_000, 1, Step::Read),
                    (k * 200_000 + 1, 1, Step::Release),
                ]
            })
            .collect();
        let options = ReplayOptions {
            speed: Some(1.0),
            timing: Timing::kernel(costs),
            ..Default::default()
        };
        let paced = replay(cache(Design::Classic), vec![stream(1, &steps)], options);
        let late = paced.late_ns.expect("paced");
        assert_eq!(late.len(), 10, "one per step");
        assert!(late.max() >= 4 * 800_000, "read 4: {} ns late", late.max());
        let asap = replay(
            cache(Design::Classic),
            vec![stream(1, &steps)],
            ReplayOptions {
                speed: None,
                ..options
            },
        );
        assert!(asap.late_ns.is_none(), "nothing is due as fast as possible");
    }

    #[test]
    fn kernel_timing_spends_each_steps_cost_under_the_designs_own_locks() {
        use crate::timing::StepCost;
        let mut costs = [StepCost::default(); Step::KINDS];
        costs[Step::Read.index()] = StepCost {
            hit_hold_ns: 200_000,
            miss_hold_ns: 300_000,
            outside_ns: 50_000,
            ..StepCost::default()
        };
        costs[Step::Release.index()] = StepCost {
            hit_hold_ns: 100_000,
            ..StepCost::default()
        };
        // A miss, its release, a hit, its release.
        let streams = || {
            vec![stream(
                1,
                &[
                    (0, 1, Step::Read),
                    (1, 1, Step::Release),
                    (2, 1, Step::Read),
                    (3, 1, Step::Release),
                ],
            )]
        };
        for design in Design::ALL {
            let result = replay(
                cache(design),
                streams(),
                ReplayOptions {
                    timing: Timing::kernel(costs),
                    log: true,
                    ..Default::default()
                },
            );
            let log = result.log.expect("asked for a log");
            let durations: Vec<u64> = log.ops.iter().map(|o| o.duration_ns).collect();
            // Each step lasts at least its cost: miss 300 + 50 µs, release 100, hit 200 + 50.
            for (d, least) in durations.iter().zip([350_000, 100_000, 250_000, 100_000]) {
                assert!(*d >= least, "{design}: {durations:?}");
            }
            let client_lock = if design.no_sleep() {
                LockClass::ClientSpinlock
            } else {
                LockClass::ClientMutex
            };
            let mutex = result.report.class(client_lock);
            let mutex_holds = (mutex.acquisitions, mutex.hold_ns.min());
            // A hold of exactly the cost may land in a histogram bucket starting just below it.
            let at_least = |ns: u64| mutex.hold_ns.lowest_equivalent(ns);
            match design {
                // Every step under the one client lock, each hold at least its step's cost.
                Design::Classic | Design::ClassicNoSleep => {
                    assert_eq!(mutex.acquisitions, 4, "{design}");
                    assert!(
                        mutex.hold_ns.min() >= at_least(100_000),
                        "{design}: {mutex_holds:?}"
                    );
                    assert!(
                        mutex.hold_ns.max() >= at_least(300_000),
                        "{design}: {mutex_holds:?}"
                    );
                }
                // The miss under the mutex; the hit and the releases under tree locks (sharded)
                // or none (lockfree), so the mutex holds only the miss's cost.
                Design::Sharded | Design::ShardedNoSleep | Design::LockFree => {
                    assert_eq!(mutex.acquisitions, 1, "{design}");
                    assert!(
                        mutex.hold_ns.min() >= at_least(300_000),
                        "{design}: {mutex_holds:?}"
                    );
                }
            }
            if let Design::Sharded | Design::ShardedNoSleep = design {
                let tree_read = if design.no_sleep() {
                    LockClass::TreeRwlockRead
                } else {
                    LockClass::TreeRead
                };
                let trees = result.report.class(tree_read);
                assert!(
                    trees.hold_ns.max() >= 200_000,
                    "the hit under its tree lock"
                );
            }
        }
    }

    #[test]
    fn threads_keep_their_recorded_offsets_from_each_other() {
        // Thread 2's first step came 60 ms after thread 1's: at speed 1 it starts 60 ms in,
        // not at once (each thread once timed its steps from its own first one).
        let streams = vec![
            stream(1, &[(1_000, 1, Step::Read), (2_000, 1, Step::Release)]),
            stream(
                2,
                &[(60_001_000, 2, Step::Read), (60_002_000, 2, Step::Release)],
            ),
        ];
        let result = replay(
            cache(Design::Classic),
            streams,
            ReplayOptions {
                speed: Some(1.0),
                log: true,
                ..Default::default()
            },
        );
        let log = result.log.expect("asked for a log");
        let first = |tid| {
            log.ops
                .iter()
                .find(|o| o.tid == tid)
                .map(|o| o.start_ns)
                .expect("the thread's operations are logged")
        };
        // Times count from the first operation: thread 1's, which a busy machine may start a
        // little late, so the gap is 60 ms less that delay (and about 0 when offsets are lost).
        assert!(
            first(2) >= 30_000_000,
            "thread 2 began {} ns in, thread 1 {} ns",
            first(2),
            first(1)
        );
        assert!(
            result.elapsed >= Duration::from_millis(59),
            "{:?}",
            result.elapsed
        );
    }

    #[test]
    fn streams_dealt_onto_fewer_threads_keep_their_order() {
        let streams: Vec<_> = (0..6)
            .map(|t| {
                stream(
                    t,
                    &[
                        (u64::from(t), 100 + u64::from(t), Step::Read),
                        (1000, 100 + u64::from(t), Step::Release),
                    ],
                )
            })
            .collect();
        let result = replay(
            cache(Design::Classic),
            streams,
            ReplayOptions {
                threads: Some(2),
                speed: None,
                ..Default::default()
            },
        );
        assert_eq!(result.steps, 12);
        assert_eq!(
            result.mismatches,
            Mismatches::default(),
            "every release found its read"
        );
    }
}
