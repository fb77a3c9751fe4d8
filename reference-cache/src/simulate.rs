//! Simulated replay: the design's own code decides which locks each step takes; a discrete-event
//! simulation in virtual time decides when each is taken, waited for and let go.
//!
//! A replay on real threads ([`crate::replay`]) times its steps with this machine's scheduler:
//! a thread sleeping until its next step is due wakes tens of microseconds late, and unevenly,
//! which is longer than the gaps between many of a kernel's operations. Operations that never
//! overlapped in the kernel then meet in the replay, and its waits are the replay's timing, not
//! the design's (`compare` counts them: `replay_check`). A simulated replay has no such noise.
//!
//! 1. **Plan.** The steps of every stream run through the design once, on one thread, in
//!    recorded order. A planning [`ThreadRecorder`] notes what each step did that takes time:
//!    each lock it took and let go (class and instance), where it asked to spend its hold
//!    ([`crate::timing`]), and each device read or write. The cache's state, hits and misses,
//!    mismatches and I/O errors come from this run.
//! 2. **Simulate.** Each replay thread then runs its steps in virtual time. A step begins when it
//!    is due (its recorded time scaled by the speed) or when the thread's previous step ends,
//!    whichever is later. Its lock sections follow the plan. A hold lasts the step's calibrated
//!    hit or miss hold from when its lock was taken (once a step, as on real threads); a device
//!    read takes the given latency; a step's writes go to the device together and take it once
//!    (dm-bufio submits a writeback's writes, then waits for them all); a prefetch and an
//!    asynchronous writeback do not wait for their I/O. The step lasts, net of its waits, at
//!    least its hold and its time outside the lock. Where the trace measured the very operation
//!    ([`crate::replay::KernelOp`]), its own hold and net time stand in for its kind's medians,
//!    and its net time holds the I/O the kernel's operation did (a miss's read, a synchronous
//!    writeback's writes): only I/O the kernel did not do (a design's miss where the kernel hit,
//!    an eviction's write) takes the device's latency on top. Charging the median read on top of
//!    each measured miss, and each write in turn, put 6.1 bufio-hotspot's dirtier 5.8 s behind
//!    its recorded pace and crowded its operations together: 2.5x the kernel's waits.
//!    A lock that is not free is waited for in a first-come queue: a mutex passes to its first
//!    waiter, a rw-lock to its first writer or to the run of readers at the head of its queue
//!    (readers queue behind a waiting writer, as on a rw_semaphore). A contended acquisition
//!    holds the lock [`StepCost::contended_ns`] longer, as on real threads.
//! 3. **The kernel's mutex.** Where the calibration timed how the kernel's client mutex passed
//!    between threads ([`MutexHandoff`]), the client mutex runs as Linux's instead. A thread
//!    that finds it held spins on it, one at a time and in the kernel's share of handoffs, and
//!    takes it as it is let go; or it sleeps in the queue. A release with sleepers wakes the
//!    first, which tries for the mutex a handoff later, drawn from the kernel's; meanwhile the
//!    mutex is free, and a thread arriving takes it through the slow path (the kernel counts
//!    that as contention, and so does the simulation, at [`StepCost::contended_ns`]). A woken
//!    sleeper that finds it taken is handed it at the next release, a drawn handoff later. The
//!    draws come from a fixed seed: the same figures every run. On the four 6.1 samples of
//!    2026-11-29 this brought the simulated classic's client-mutex waits, p50 and p99 within 2x
//!    of the kernel's on each (first-come handoffs at the constant cost: 0.41-0.68x on thin-hotspot,
//!    small-cache and verity-read); first-come handoffs at the drawn latency instead
//!    made 3.7x the kernel's waits on bufio-hotspot, a convoy the kernel's mutex does not form.
//! 4. **Lookups that meet an insertion.** Where a design's lookups take no client lock (6.4+,
//!    ours), a one-block lookup (read, new, a prefetch's block) that the plan found cached,
//!    inserted by another thread's step, is timed against that step: if the inserting thread
//!    has not yet let go of the client lock when the lookup is made, the lookup missed in the
//!    kernel too, and takes the miss path that finds the buffer under the client lock
//!    ([`BufferCache::lookup_racing_insert`]). A kernel-measured prefetch of several blocks is
//!    planned block by block (`Part`), so that two threads prefetching the same blocks meet
//!    at each one, as 6.12 verity-read's kworkers did (158 waits; 130 simulated, 0 before), and
//!    a prefetch's reads take no time of its own (the kernel's does not wait for them).
//!
//! The figures are the same on every run, in debug and release builds, on a busy machine or an
//! idle one. What the simulation leaves out: the design's own code takes no virtual time (the
//! calibrated costs stand for it); every thread has a CPU of its own (the kernel's holds, from
//! which the costs come, already include the preemption the recording saw); a hit on a buffer
//! another thread is still reading does not wait for that read (the plan run finished it).
//!
//! A step tries for its first lock at its operation's recorded start, or, where the trace stamped
//! the operation's lock attempt and release (format 1.5 on,
//! [`crate::replay::KernelOp::before_ns`]), as long after it as the kernel's did. How far the
//! kernel's own stamps bear out a mutex's rule (who tries while another holds, waits), `report
//! --calibration` says (`TimelineCheck` in bufscope's analyses): 91-100 % on every sample of
//! 2026-11-29. That check once found 37 % on 6.1 thin-hotspot: the recorder had left out the waits
//! of `bufscope stress`, the workload, and the simulated classic's 2.85x the kernel's waits there
//! was the kernel's count falling short, not the model overshooting.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap, VecDeque},
    time::Duration,
};

use hdrhistogram::Histogram;

use crate::{
    BufferCache, LockClass, ThreadRecorder,
    recorder::{Hold, PlanEvent},
    replay::{
        KernelOp, LoggedLockWait, LoggedOp, Mismatches, ReplayOptions, ReplayResult, Step,
        StepResult, Stepper, Stream, TimedStep, deal, due_ns, histograms, merge, ns_histogram,
        step_result,
    },
    timing::MutexHandoff,
    timing::StepCost,
};

/// Runs `streams` through `cache` in virtual time, each device read or write taking `io_ns`.
/// The cache's own I/O should take no time (it is not waited for).
pub(crate) fn simulate(
    cache: &dyn BufferCache,
    streams: Vec<Stream>,
    options: ReplayOptions,
    io_ns: u64,
) -> ReplayResult {
    let plan = Plan::run(cache, streams, options);
    let mut sim = Simulation::new(
        plan.threads,
        io_ns,
        options.log,
        options.timing.handoff().copied(),
    );
    sim.run();
    let mut result = ReplayResult {
        mismatches: plan.mismatches,
        first_io_error: plan.first_io_error,
        ..ReplayResult::empty(cache.design(), options)
    };
    result.report.add_ops(plan.ops);
    let (mut first, mut last) = (u64::MAX, 0);
    for thread in sim.threads {
        result.report.add(&thread.rec);
        for (mine, theirs) in result.latency_ns.iter_mut().zip(&thread.latency) {
            mine.add(theirs).expect("same bounds");
        }
        if let Some(late) = &mut result.late_ns {
            late.add(&thread.late).expect("same bounds");
        }
        result.steps += thread.steps.iter().filter(|s| s.part.last).count() as u64;
        first = first.min(thread.began);
        last = last.max(thread.t);
        if let Some(log) = &mut result.log {
            log.ops.extend(thread.ops);
            log.waits.extend(thread.waits);
        }
    }
    result.elapsed = Duration::from_nanos(last.saturating_sub(first));
    if let Some(log) = &mut result.log {
        log.timed_from_first_op();
    }
    result
}

/// One step as planned: when it is due, its cost, and what its run through the design did.
#[derive(Debug)]
struct PlannedStep {
    tid: u32,
    /// The operation's step and block, as logged (a part's whole prefetch).
    step: Step,
    block: u64,
    part: Part,
    due_ns: u64,
    cost: StepCost,
    /// Of `cost.outside_ns`, the part spent before the step's first lock attempt.
    before_ns: u64,
    result: StepResult,
    events: Vec<PlanEvent>,
    /// A hit on a block another replay thread's step inserted (thread, its step): where that
    /// step has not let go of the client lock when this one looks, this one takes
    /// `raced_events` instead ([`BufferCache::lookup_racing_insert`], then its own).
    race: Option<(usize, usize)>,
    raced_events: Vec<PlanEvent>,
}

/// Where a planned step stands in its operation. Where a design's lookups take no client lock
/// (6.4+, ours), a prefetch of several blocks that the kernel measured is planned block by
/// block, as such a kernel takes the client lock for each block it inserts, so that two threads
/// prefetching the same blocks meet block by block as the kernel's did (6.12 verity-read: two
/// kworkers each waited at nearly every one of 64 blocks, where one whole prefetch planned
/// before the other left the second nothing to insert). A classic prefetch holds the client
/// mutex across the blocks it finds cached, and runs whole. Parts log and time as their one
/// operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Part {
    first: bool,
    last: bool,
    /// Parts of the operation (1: a whole step).
    of: u32,
}

impl Part {
    const WHOLE: Part = Part {
        first: true,
        last: true,
        of: 1,
    };
}

/// A step the plan runs: its stream, the step it runs, its part of the operation, and the
/// operation's own step and block.
#[derive(Clone, Copy, Debug)]
struct PlanItem {
    stream: usize,
    timed: TimedStep,
    part: Part,
    op_step: Step,
    op_block: u64,
    op_at_ns: u64,
}

/// `timed` as the plan runs it (see [`Part`]): where `split` (kernel timing), a prefetch of
/// n > 1 blocks with a kernel measurement becomes n one-block prefetches, each with an n-th of
/// its hold; anything else runs whole. Where in the operation its time outside the lock went,
/// the trace does not say. The parts take none of it: the first spends it all before its lock
/// attempt, and the rest follow back to back. On 6.12 verity-read that is where the kernel's
/// time went: the two kworkers' prefetches of the same 64 blocks spent 2.4 of their 5.1 ms on
/// the first few blocks (one wait of 473 µs), then alternated block by block with 113 waits in
/// 2.6 ms; spread evenly instead, the parts drifted apart and met 8 times in all.
fn parts_of(stream: usize, timed: TimedStep, split: bool) -> Vec<PlanItem> {
    let whole = PlanItem {
        stream,
        timed,
        part: Part::WHOLE,
        op_step: timed.step,
        op_block: timed.block,
        op_at_ns: timed.at_ns,
    };
    let (Step::Prefetch { blocks }, Some(op)) = (timed.step, timed.kernel) else {
        return vec![whole];
    };
    if blocks <= 1 || !split {
        return vec![whole];
    }
    let n = u64::from(blocks);
    let hold_ns = op.hold_ns / n;
    let first_ns = op.net_ns.saturating_sub(n * hold_ns);
    (0..n)
        .map(|i| PlanItem {
            timed: TimedStep {
                at_ns: timed.at_ns + if i == 0 { 0 } else { first_ns + i * hold_ns },
                block: timed.block + i,
                step: Step::Prefetch { blocks: 1 },
                kernel: Some(if i == 0 {
                    KernelOp {
                        hold_ns,
                        net_ns: first_ns + hold_ns,
                        miss: op.miss,
                        before_ns: first_ns,
                    }
                } else {
                    KernelOp {
                        hold_ns,
                        net_ns: hold_ns,
                        miss: op.miss,
                        before_ns: 0,
                    }
                }),
            },
            part: Part {
                first: i == 0,
                last: i + 1 == n,
                of: blocks,
            },
            ..whole
        })
        .collect()
}

/// `events`, a step's plan, with only the device I/O the step waits for on top of its time:
/// none for a prefetch or an asynchronous writeback (the design does the I/O in the caller; the
/// kernel's submits it and goes on); of a run of writes, the first (they go to the device
/// together, and the first's wait covers the rest); and none that the kernel's measured
/// operation did itself, a miss's read or a synchronous writeback's writes (its net time, which
/// the step takes, holds them as they went on that device).
fn waited_io(events: Vec<PlanEvent>, step: Step, measured: Option<KernelOp>) -> Vec<PlanEvent> {
    let no_wait = matches!(step, Step::Prefetch { .. } | Step::WriteDirtyAsync);
    let reads_measured = measured.is_some_and(|op| op.miss);
    let writes_measured = measured.is_some() && step == Step::WriteDirty;
    let mut previous = None;
    events
        .into_iter()
        .filter(|&event| {
            let after = previous.replace(event);
            match event {
                PlanEvent::Read => !no_wait && !reads_measured,
                PlanEvent::Write => !no_wait && !writes_measured && after != Some(PlanEvent::Write),
                _ => true,
            }
        })
        .collect()
}

/// One replay thread's recorded threads (by stream index) and the steps it plans.
type ThreadSteps = (Vec<u32>, Vec<PlanItem>);

/// The plan run's outcome: each replay thread's planned steps, in its order.
struct Plan {
    threads: Vec<Vec<PlannedStep>>,
    ops: crate::OpCounts,
    mismatches: Mismatches,
    first_io_error: Option<String>,
}

impl Plan {
    /// Runs every step once, in recorded order across all threads (each thread's own order
    /// kept), noting what each did.
    fn run(cache: &dyn BufferCache, streams: Vec<Stream>, options: ReplayOptions) -> Self {
        let (dealt, origin_ns) = deal(streams, options.threads);
        // Each replay thread's steps in its order, and every step's place in the recording's.
        let split = !options.timing.is_host() && !cache.design().lookups_take_the_client_lock();
        let per_thread: Vec<ThreadSteps> = dealt
            .into_iter()
            .map(|streams| {
                let tids = streams.iter().map(|s| s.tid).collect();
                let steps = merge(streams)
                    .into_iter()
                    .flat_map(|(stream, timed)| parts_of(stream, timed, split))
                    .collect();
                (tids, steps)
            })
            .collect();
        let mut order: Vec<(u64, usize, usize)> = per_thread
            .iter()
            .enumerate()
            .flat_map(|(t, (_, steps))| {
                steps
                    .iter()
                    .enumerate()
                    .map(move |(k, item)| (item.timed.at_ns, t, k))
            })
            .collect();
        // Stable: equal times keep the threads' and each thread's order.
        order.sort_by_key(|&(at, _, _)| at);

        let rec = ThreadRecorder::planning();
        let mut steppers: Vec<Stepper> = per_thread.iter().map(|_| Stepper::default()).collect();
        let mut planned: Vec<Vec<Option<PlannedStep>>> = per_thread
            .iter()
            .map(|(_, steps)| steps.iter().map(|_| None).collect())
            .collect();
        // Which replay thread's step last inserted each block (a one-block lookup's).
        let mut inserted_by: HashMap<u64, (usize, usize)> = HashMap::new();
        for (_, t, k) in order {
            let (tids, steps) = &per_thread[t];
            let PlanItem {
                stream,
                timed:
                    TimedStep {
                        at_ns,
                        block,
                        step,
                        kernel,
                    },
                part,
                op_step,
                op_block,
                op_at_ns,
            } = steps[k];
            let stepper = &mut steppers[t];
            let (misses, io_errors) = (rec.ops().misses, stepper.mismatches.io_errors);
            let got = if part.of > 1 {
                cache.prefetch_block(&rec, block, !part.last);
                None
            } else {
                stepper.run(cache, &rec, (stream, block), step)
            };
            let result = step_result(
                step,
                got,
                stepper.mismatches.io_errors > io_errors,
                rec.ops().misses > misses,
            );
            // A part after the first is due with its operation: it begins when the one before
            // it ends.
            let due_ns = options.speed.map_or(0, |speed| {
                due_ns(if part.first { at_ns } else { op_at_ns }, origin_ns, speed)
            });
            let measured = kernel.filter(|_| !options.timing.is_host());
            let (cost, before_ns) = match measured {
                Some(op) => {
                    let mut cost = op.applied_to(options.timing.cost(step));
                    if part.of > 1 {
                        // Whichever way a block went, its share of the operation's hold.
                        (cost.hit_hold_ns, cost.miss_hold_ns) = (op.hold_ns, op.hold_ns);
                    }
                    (cost, op.before_lock_ns())
                }
                _ => (options.timing.cost(step), 0),
            };
            let events = waited_io(rec.take_plan(), step, measured);
            let (mut race, mut raced_events) = (None, Vec::new());
            if matches!(step, Step::Read | Step::New | Step::Prefetch { blocks: 1 }) {
                if events.contains(&PlanEvent::Spend(Hold::Miss)) {
                    inserted_by.insert(block, (t, k));
                } else if let Some(&(by, its)) = inserted_by.get(&block)
                    && by != t
                {
                    cache.lookup_racing_insert(&rec, block);
                    raced_events = rec.take_plan();
                    if !raced_events.is_empty() {
                        race = Some((by, its));
                        raced_events.extend_from_slice(&events);
                    }
                }
            }
            planned[t][k] = Some(PlannedStep {
                tid: tids[stream],
                step: op_step,
                block: op_block,
                part,
                due_ns,
                cost,
                before_ns,
                result,
                events,
                race,
                raced_events,
            });
        }
        let mut mismatches = Mismatches::default();
        let mut first_io_error = None;
        for stepper in &mut steppers {
            // Buffers held at a stream's end are let go without a step of their own.
            stepper.release_held(cache, &rec);
            mismatches.add(stepper.mismatches);
            if first_io_error.is_none() {
                first_io_error = stepper.first_io_error.take();
            }
        }
        Self {
            threads: planned
                .into_iter()
                .map(|steps| steps.into_iter().map(|s| s.expect("planned")).collect())
                .collect(),
            ops: rec.ops(),
            mismatches,
            first_io_error,
        }
    }
}

/// A lock as the simulation knows it: the client lock, a tree by index, or a global one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum LockId {
    Client,
    Tree(u32),
    Global(u32),
}

/// Which lock a class and instance name, and whether the class takes it shared.
fn lock_of(class: LockClass, instance: u32) -> (LockId, bool) {
    match class {
        LockClass::ClientMutex | LockClass::ClientSpinlock => (LockId::Client, false),
        LockClass::TreeRead | LockClass::TreeRwlockRead => (LockId::Tree(instance), true),
        LockClass::TreeWrite | LockClass::TreeRwlockWrite => (LockId::Tree(instance), false),
        LockClass::Global => (LockId::Global(instance), false),
    }
}

/// A lock's state in virtual time.
#[derive(Debug, Default)]
struct SimLock {
    writer: bool,
    readers: u32,
    /// Threads waiting for it, first come first served, and whether each wants it shared.
    queue: VecDeque<(usize, bool)>,
    /// As the kernel's mutex only: the thread spinning on its holder...
    spinner: Option<usize>,
    /// ...whether the first in the queue was woken and is yet to try for it...
    woken: bool,
    /// ...and whether it tried and found it taken: the next release hands it over.
    handoff: bool,
}

impl SimLock {
    fn free_for(&self, shared: bool) -> bool {
        !self.writer && (shared || self.readers == 0)
    }

    /// Takes it at once if it is free and nobody is queued.
    fn try_take(&mut self, shared: bool) -> bool {
        let free = self.queue.is_empty() && self.free_for(shared);
        if free {
            self.take(shared);
        }
        free
    }

    fn take(&mut self, shared: bool) {
        if shared {
            self.readers += 1;
        } else {
            self.writer = true;
        }
    }

    /// Lets a hold go; returns the waiters that take it now: a writer alone, or the run of
    /// readers at the head of the queue.
    fn release(&mut self, shared: bool) -> Vec<usize> {
        if shared {
            self.readers -= 1;
        } else {
            self.writer = false;
        }
        let mut granted = Vec::new();
        while let Some(&(thread, shared)) = self.queue.front() {
            if !self.free_for(shared) {
                break;
            }
            self.queue.pop_front();
            self.take(shared);
            granted.push(thread);
            if !shared {
                break;
            }
        }
        granted
    }
}

/// Where a thread is in its current step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for the step to be due.
    Start,
    /// Going through the step's planned events.
    Events,
    /// Spending the rest of the step's time.
    Finish,
}

/// One replay thread in virtual time.
struct SimThread {
    steps: Vec<PlannedStep>,
    /// The current step and its next event.
    k: usize,
    e: usize,
    phase: Phase,
    /// The thread's clock: virtual ns.
    t: u64,
    /// When its first step began.
    began: u64,
    /// The current operation's start (its first part's), the current step's start, its lock
    /// waits so far, when it last took a lock (or its start) and the hold it spent.
    op_start: u64,
    start: u64,
    waited: u64,
    section: u64,
    hold: Option<u64>,
    /// Its client-lock wait and hold in the current operation.
    client_wait: u64,
    client_hold: u64,
    /// Whether the current step has let go of the client lock (an insertion is then done).
    released_client: bool,
    /// Whether the current step met its race's insertion (`PlannedStep::race`) before that let
    /// go of the client lock; `None` while undecided.
    raced: Option<bool>,
    /// Locks it holds: class, instance, since when.
    holding: Vec<(LockClass, u32, u64)>,
    /// The acquisition it is queued for: class, instance, when it tried.
    pending: Option<(LockClass, u32, u64)>,
    /// Queued for the kernel's mutex and woken: it tries for it when it resumes.
    woken: bool,

    rec: ThreadRecorder,
    latency: Vec<Histogram<u64>>,
    late: Histogram<u64>,
    ops: Vec<LoggedOp>,
    waits: Vec<LoggedLockWait>,
}

struct Simulation {
    threads: Vec<SimThread>,
    locks: HashMap<LockId, SimLock>,
    /// Threads to resume, by virtual time, ties in the order they were queued.
    queue: BinaryHeap<Reverse<(u64, u64, usize)>>,
    queued: u64,
    io_ns: u64,
    log: bool,
    /// How the kernel's client mutex passed between threads: the client mutex runs as Linux's.
    handoff: Option<MutexHandoff>,
    /// The draws of spinners and handoffs, from a fixed seed.
    rng: fastrand::Rng,
}

/// The seed of every simulation's draws.
const SEED: u64 = 0x6275_6673_636f_7065;

impl Simulation {
    fn new(
        threads: Vec<Vec<PlannedStep>>,
        io_ns: u64,
        log: bool,
        handoff: Option<MutexHandoff>,
    ) -> Self {
        let threads: Vec<SimThread> = threads
            .into_iter()
            .map(|steps| SimThread {
                steps,
                k: 0,
                e: 0,
                phase: Phase::Start,
                t: 0,
                began: u64::MAX,
                op_start: 0,
                start: 0,
                waited: 0,
                section: 0,
                hold: None,
                client_wait: 0,
                client_hold: 0,
                released_client: false,
                raced: None,
                holding: Vec::new(),
                pending: None,
                woken: false,
                rec: ThreadRecorder::new(),
                latency: histograms(),
                late: ns_histogram(),
                ops: Vec::new(),
                waits: Vec::new(),
            })
            .collect();
        Self {
            threads,
            locks: HashMap::new(),
            queue: BinaryHeap::new(),
            queued: 0,
            io_ns,
            log,
            handoff,
            rng: fastrand::Rng::with_seed(SEED),
        }
    }

    fn resume_at(&mut self, thread: usize, t: u64) {
        self.threads[thread].t = t;
        self.queue.push(Reverse((t, self.queued, thread)));
        self.queued += 1;
    }

    fn run(&mut self) {
        for thread in 0..self.threads.len() {
            self.resume_at(thread, 0);
        }
        while let Some(Reverse((_, _, thread))) = self.queue.pop() {
            self.advance(thread);
        }
        debug_assert!(
            self.threads.iter().all(|t| t.k == t.steps.len()),
            "every thread ran to its end (a thread left waiting means a lock never let go)"
        );
    }

    /// Runs `i` from its clock until it must wait: for time to pass (it is queued to resume) or
    /// for a lock (its holder's release resumes it), or until it has no steps left.
    fn advance(&mut self, i: usize) {
        if std::mem::take(&mut self.threads[i].woken) {
            self.woken_tries(i);
            return;
        }
        loop {
            if let Some(insertion) = self.race_to_decide(i) {
                let raced = !self.inserted(insertion);
                self.threads[i].raced = Some(raced);
            }
            let io_ns = self.io_ns;
            let th = &mut self.threads[i];
            let Some(planned) = th.steps.get(th.k) else {
                return;
            };
            match th.phase {
                Phase::Start => {
                    if planned.due_ns > th.t {
                        let due = planned.due_ns;
                        self.resume_at(i, due);
                        return;
                    }
                    if planned.part.first {
                        th.late.saturating_record((th.t - planned.due_ns).max(1));
                        (th.op_start, th.client_wait, th.client_hold) = (th.t, 0, 0);
                    }
                    th.began = th.began.min(th.t);
                    (th.start, th.section) = (th.t, th.t);
                    (th.waited, th.hold) = (0, None);
                    (th.released_client, th.raced) = (false, None);
                    (th.e, th.phase) = (0, Phase::Events);
                    if planned.before_ns > 0 {
                        let tries = th.t + planned.before_ns;
                        th.section = tries;
                        self.resume_at(i, tries);
                        return;
                    }
                }
                Phase::Events => {
                    let events = if th.raced == Some(true) {
                        &planned.raced_events
                    } else {
                        &planned.events
                    };
                    let Some(&event) = events.get(th.e) else {
                        th.phase = Phase::Finish;
                        continue;
                    };
                    th.e += 1;
                    match event {
                        PlanEvent::Acquire { class, instance } => {
                            if class == LockClass::ClientMutex && self.handoff.is_some() {
                                if self.kernel_mutex_acquire(i, instance) {
                                    continue;
                                }
                                return;
                            }
                            let th = &mut self.threads[i];
                            let (id, shared) = lock_of(class, instance);
                            let lock = self.locks.entry(id).or_default();
                            if lock.try_take(shared) {
                                th.rec.acquired(class, None);
                                th.holding.push((class, instance, th.t));
                                th.section = th.t;
                            } else {
                                lock.queue.push_back((i, shared));
                                th.pending = Some((class, instance, th.t));
                                return;
                            }
                        }
                        PlanEvent::Release { class, instance } => {
                            let at = th
                                .holding
                                .iter()
                                .rposition(|&(c, n, _)| (c, n) == (class, instance))
                                .expect("a design lets go only of a lock it took");
                            let (_, _, since) = th.holding.remove(at);
                            let held = th.t - since;
                            th.rec.released(class, instance, held);
                            if class.is_client_lock() {
                                th.client_hold += held;
                                th.released_client = true;
                            }
                            let (id, shared) = lock_of(class, instance);
                            let now = th.t;
                            if class == LockClass::ClientMutex && self.handoff.is_some() {
                                self.kernel_mutex_release(id, now);
                                continue;
                            }
                            let granted = self
                                .locks
                                .get_mut(&id)
                                .expect("a held lock is known")
                                .release(shared);
                            for waiter in granted {
                                self.granted(waiter, now, None);
                            }
                        }
                        PlanEvent::Spend(kind) => {
                            if th.hold.is_none() {
                                let hold = match kind {
                                    Hold::Hit => planned.cost.hit_hold_ns,
                                    Hold::Miss => planned.cost.miss_hold_ns,
                                };
                                th.hold = Some(hold);
                                let until = th.section + hold;
                                if until > th.t {
                                    self.resume_at(i, until);
                                    return;
                                }
                            }
                        }
                        // Each I/O left in the plan waits for the device (`waited_io`).
                        PlanEvent::Read | PlanEvent::Write => {
                            if io_ns > 0 {
                                let until = th.t + io_ns;
                                self.resume_at(i, until);
                                return;
                            }
                        }
                    }
                }
                Phase::Finish => {
                    let cost = planned.cost;
                    let until = th.start
                        + th.waited
                        // A part that took no client lock (it found its block) takes none
                        // of the operation's hold.
                        + th.hold.unwrap_or(if planned.part.of > 1 {
                            0
                        } else {
                            cost.hit_hold_ns
                        })
                        + cost.outside_ns;
                    if until > th.t {
                        self.resume_at(i, until);
                        return;
                    }
                    (th.k, th.phase) = (th.k + 1, Phase::Start);
                    if !planned.part.last {
                        continue;
                    }
                    let duration = th.t - th.op_start;
                    th.latency[planned.step.index()].saturating_record(duration.max(1));
                    if self.log {
                        th.ops.push(LoggedOp {
                            tid: planned.tid,
                            step: planned.step,
                            block: planned.block,
                            start_ns: th.op_start,
                            duration_ns: duration,
                            result: planned.result,
                            mutex_wait_ns: th.client_wait,
                            mutex_hold_ns: th.client_hold,
                        });
                    }
                }
            }
        }
    }

    /// The insertion (thread, step) that thread `i`'s step may meet halfway, while that is
    /// undecided: once the step reaches its events, before its first.
    fn race_to_decide(&self, i: usize) -> Option<(usize, usize)> {
        let th = &self.threads[i];
        if !matches!(th.phase, Phase::Events) || th.raced.is_some() {
            return None;
        }
        th.steps.get(th.k)?.race
    }

    /// Whether thread `by`'s step `its` has inserted its block: it has let go of the client
    /// lock, or the thread is past it.
    fn inserted(&self, (by, its): (usize, usize)) -> bool {
        let y = &self.threads[by];
        y.k > its || (y.k == its && y.released_client)
    }

    /// Thread `i` tries for the kernel's client mutex at its clock: true when it took it without
    /// contention and goes on with its step; false when it spins, sleeps in the queue, or took
    /// it free through the slow path (it resumes once it holds it).
    fn kernel_mutex_acquire(&mut self, i: usize, instance: u32) -> bool {
        let class = LockClass::ClientMutex;
        let spin_share = self.handoff.as_ref().map_or(0.0, MutexHandoff::spin_share);
        let spins = self.rng.f64() < spin_share;
        let th = &mut self.threads[i];
        let now = th.t;
        let lock = self.locks.entry(LockId::Client).or_default();
        if lock.free_for(false) {
            lock.take(false);
            if lock.queue.is_empty() {
                th.rec.acquired(class, None);
                th.holding.push((class, instance, now));
                th.section = now;
                return true;
            }
            // Free while its woken sleeper gets back on a CPU: the waiters' flag sends this
            // thread down the slow path, where it takes the mutex.
            th.pending = Some((class, instance, now));
            self.granted(i, now, None);
            return false;
        }
        th.pending = Some((class, instance, now));
        if spins && lock.spinner.is_none() && !lock.handoff {
            lock.spinner = Some(i);
        } else {
            lock.queue.push_back((i, false));
        }
        false
    }

    /// The kernel's client mutex `id` is let go at `now`: handed to the first sleeper if it
    /// asked, else taken by the spinner, else free; a sleeper first in the queue is woken unless
    /// it already was.
    fn kernel_mutex_release(&mut self, id: LockId, now: u64) {
        let handoff = self.handoff.expect("the kernel's mutex has its handoffs");
        let latency = handoff.latency_at(self.rng.f64());
        let lock = self.locks.get_mut(&id).expect("a held lock is known");
        lock.writer = false;
        if lock.handoff {
            lock.handoff = false;
            let (first, _) = lock.queue.pop_front().expect("a handoff has its waiter");
            lock.take(false);
            self.granted(first, now, Some(latency));
            return;
        }
        if let Some(spinner) = lock.spinner.take() {
            lock.take(false);
            self.granted(spinner, now, None);
        }
        let lock = self.locks.get_mut(&id).expect("a held lock is known");
        if let Some(&(first, _)) = lock.queue.front()
            && !lock.woken
        {
            lock.woken = true;
            self.threads[first].woken = true;
            self.resume_at(first, now + latency);
        }
    }

    /// Thread `i`, first in the kernel's client mutex's queue, woken, tries for it: takes it if
    /// free, else asks for it to be handed over at the next release.
    fn woken_tries(&mut self, i: usize) {
        let now = self.threads[i].t;
        let lock = self
            .locks
            .get_mut(&LockId::Client)
            .expect("a woken waiter's lock");
        lock.woken = false;
        if lock.free_for(false) {
            let (first, _) = lock.queue.pop_front().expect("the woken waiter is queued");
            debug_assert_eq!(first, i, "the first in the queue is the one woken");
            lock.take(false);
            self.granted(i, now, Some(0));
        } else {
            lock.handoff = true;
        }
    }

    /// Thread `i`, queued for a lock, takes it at `now`: its contended acquisition's cost (its
    /// step's [`StepCost::contended_ns`] unless given) follows, holding the lock, and it resumes
    /// after that.
    fn granted(&mut self, i: usize, now: u64, cost: Option<u64>) {
        let th = &mut self.threads[i];
        let (class, instance, tried) = th.pending.take().expect("a queued thread waits");
        let planned = &th.steps[th.k];
        let acquired = now + cost.unwrap_or(planned.cost.contended_ns);
        let wait = acquired - tried;
        th.rec.acquired(class, Some(wait));
        th.waited += wait;
        if class.is_client_lock() {
            th.client_wait += wait;
        }
        th.holding.push((class, instance, acquired));
        th.section = acquired;
        if self.log {
            th.waits.push(LoggedLockWait {
                tid: planned.tid,
                start_ns: tried,
                wait_ns: wait,
                class,
                instance,
                step: planned.step,
            });
        }
        self.resume_at(i, acquired);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{
        CacheConfig, Design, Latency, MemoryIo, build,
        replay::{KernelOp, ReplayClock, ReplayLog, replay},
        timing::Timing,
    };

    fn cache(design: Design) -> Arc<dyn BufferCache> {
        let io = Arc::new(MemoryIo::new(512, Latency::None));
        Arc::from(build(design, CacheConfig::new(512, 64), io))
    }

    fn stream(tid: u32, steps: &[(u64, u64, Step)]) -> Stream {
        Stream {
            tid,
            steps: steps
                .iter()
                .map(|&(at_ns, block, step)| TimedStep::new(at_ns, block, step))
                .collect(),
        }
    }

    /// Every kind of step costing `hold_ns` inside its lock, and `contended_ns` more when its
    /// acquisition was contended.
    fn timing(hold_ns: u64, contended_ns: u64) -> Timing {
        Timing::kernel(
            [StepCost {
                hit_hold_ns: hold_ns,
                miss_hold_ns: hold_ns,
                outside_ns: 0,
                contended_ns,
            }; Step::KINDS],
        )
    }

    fn simulated(design: Design, streams: Vec<Stream>, timing: Timing, io_ns: u64) -> ReplayResult {
        replay(
            cache(design),
            streams,
            ReplayOptions {
                speed: Some(1.0),
                log: true,
                timing,
                clock: ReplayClock::Simulated { io_ns },
                ..Default::default()
            },
        )
    }

    /// A logged run's waits: (thread, start, length, lock class, step).
    fn waits_of(log: &ReplayLog) -> Vec<(u32, u64, u64, LockClass, Step)> {
        log.waits
            .iter()
            .map(|w| (w.tid, w.start_ns, w.wait_ns, w.class, w.step))
            .collect()
    }

    #[test]
    fn a_step_due_while_another_holds_the_mutex_waits_exactly_the_rest_of_that_hold() {
        // Thread 1 creates block 1 at 0 and holds the classic mutex 10 µs; thread 2 comes at
        // 4 µs, waits the 6 µs left and its contended acquisition's 500 ns, then holds 10 µs.
        let streams = vec![
            stream(1, &[(0, 1, Step::New), (1_000_000, 1, Step::Release)]),
            stream(2, &[(4_000, 2, Step::New), (2_000_000, 2, Step::Release)]),
        ];
        let result = simulated(Design::Classic, streams, timing(10_000, 500), 0);
        let log = result.log.expect("logged");
        let waits = waits_of(&log);
        assert_eq!(
            waits,
            [(2, 4_000, 6_500, LockClass::ClientMutex, Step::New)],
            "one wait: thread 2's"
        );
        let news: Vec<_> = log
            .ops
            .iter()
            .filter(|o| o.step == Step::New)
            .map(|o| (o.tid, o.start_ns, o.duration_ns, o.mutex_wait_ns))
            .collect();
        // Thread 2's step: its wait, then its hold.
        assert_eq!(news, [(1, 0, 10_000, 0), (2, 4_000, 16_500, 6_500)]);
        let mutex = result.report.class(LockClass::ClientMutex);
        assert_eq!((mutex.acquisitions, mutex.contended), (4, 1));
        // Steps began when due: nobody's previous step ran late.
        assert_eq!(result.late_ns.expect("paced").max(), 1);
    }

    /// Three threads creating a block each on classic (10 µs holds, 500 ns per contended
    /// acquisition) at 0, 4 and 11 µs, the client mutex run with `handoff`: each thread's
    /// (start, wait).
    fn three_threads_waits(handoff: Option<MutexHandoff>) -> Vec<(u32, u64, u64)> {
        let streams = vec![
            stream(1, &[(0, 1, Step::New), (1_000_000, 1, Step::Release)]),
            stream(2, &[(4_000, 2, Step::New), (2_000_000, 2, Step::Release)]),
            stream(3, &[(11_000, 3, Step::New), (3_000_000, 3, Step::Release)]),
        ];
        let timing = timing(10_000, 500).with_handoff(handoff);
        let result = simulated(Design::Classic, streams, timing, 0);
        let mut waits: Vec<_> = result
            .log
            .expect("logged")
            .waits
            .iter()
            .map(|w| (w.tid, w.start_ns, w.wait_ns))
            .collect();
        waits.sort_unstable();
        waits
    }

    /// The same, the client mutex run as the kernel's with every handoff taking 3 µs and
    /// `spins_per_1000` of the waiters spinning.
    fn kernel_mutex_waits(spins_per_1000: u16) -> Vec<(u32, u64, u64)> {
        three_threads_waits(Some(MutexHandoff {
            spins_per_1000,
            latency_ns: [3_000; crate::timing::HANDOFF_POINTS],
        }))
    }

    #[test]
    fn the_kernel_s_mutex_is_free_while_its_woken_waiter_wakes_and_is_handed_over_after() {
        // Thread 2 sleeps from 4 µs. The release at 10 µs wakes it, to try 3 µs later; thread
        // 3 comes at 11 µs, finds the mutex free with a sleeper queued and takes it through the
        // slow path (a wait of the contended cost); thread 2 finds it taken at 13 µs and is
        // handed it at thread 3's release (21.5 µs), a handoff later: 24.5 µs.
        assert_eq!(
            kernel_mutex_waits(0),
            [(2, 4_000, 20_500), (3, 11_000, 500)]
        );
        // First come, first served instead: thread 2 at 10.5 µs, thread 3 behind it.
        assert_eq!(
            three_threads_waits(None),
            [(2, 4_000, 6_500), (3, 11_000, 10_000)]
        );
    }

    #[test]
    fn a_spinner_on_the_kernel_s_mutex_takes_it_as_it_is_let_go() {
        // Every waiter spins, one at a time: thread 2 takes the mutex at the release at 10 µs
        // (and the contended cost), thread 3 at thread 2's release at 20.5 µs; no handoff.
        assert_eq!(
            kernel_mutex_waits(1000),
            [(2, 4_000, 6_500), (3, 11_000, 10_000)]
        );
    }

    #[test]
    fn an_operation_s_recorded_hold_and_time_replace_its_kinds_medians() {
        let mut first = TimedStep::new(0, 1, Step::New);
        first.kernel = Some(KernelOp {
            hold_ns: 30_000,
            net_ns: 50_000,
            miss: true,
            before_ns: 0,
        });
        let streams = vec![
            Stream {
                tid: 1,
                steps: vec![first],
            },
            stream(2, &[(4_000, 2, Step::New)]),
        ];
        let result = simulated(Design::Classic, streams, timing(10_000, 0), 0);
        let log = result.log.expect("logged");
        let waits: Vec<_> = log.waits.iter().map(|w| (w.tid, w.wait_ns)).collect();
        assert_eq!(waits, [(2, 26_000)]);
        // And its own net time its kind's: 30 µs held, 20 µs more outside the lock.
        let durations: Vec<_> = log.ops.iter().map(|o| (o.tid, o.duration_ns)).collect();
        assert_eq!(durations, [(1, 50_000), (2, 36_000)]);
    }

    #[test]
    fn the_global_cleanup_s_recorded_hold_keeps_a_sharded_miss_waiting_and_a_hit_not() {
        // dm-bufio's kworker holds the client mutex 200 µs from 10 µs (as the kernel's did); on
        // 6.4+ a miss at 60 µs waits the 150 µs left, while a hit at 70 µs, which takes a tree
        // lock alone, does not wait. Block 7 is read in beforehand by thread 3, which holds it
        // throughout: the cleanup, which evicts every clean buffer it may, leaves it.
        let mut cleanup = TimedStep::new(10_000, 0, Step::GlobalCleanup);
        cleanup.kernel = Some(KernelOp {
            hold_ns: 200_000,
            net_ns: 200_000,
            miss: false,
            before_ns: 0,
        });
        let streams = vec![
            stream(3, &[(0, 7, Step::Read), (1_000_000, 7, Step::Release)]),
            Stream {
                tid: 1,
                steps: vec![cleanup],
            },
            stream(2, &[(60_000, 2, Step::Read), (1_000_000, 2, Step::Release)]),
            stream(4, &[(70_000, 7, Step::Read), (80_000, 7, Step::Release)]),
        ];
        let result = simulated(Design::Sharded, streams, timing(5_000, 0), 0);
        let log = result.log.expect("logged");
        let waits = waits_of(&log);
        assert_eq!(
            waits,
            [(2, 60_000, 150_000, LockClass::ClientMutex, Step::Read)],
            "the miss waits out the cleanup's hold; the hit passes"
        );
        let cleanups: Vec<_> = log
            .ops
            .iter()
            .filter(|o| o.step == Step::GlobalCleanup)
            .map(|o| (o.tid, o.start_ns, o.duration_ns))
            .collect();
        assert_eq!(cleanups, [(1, 10_000, 200_000)]);
    }

    #[test]
    fn an_operation_tries_for_the_lock_when_the_kernel_s_did() {
        // Thread 1's operation spent 20 µs before it tried for the mutex, held it 30 µs, and
        // ended 10 µs after. Thread 2 came at 4 µs and held 10 µs: before thread 1 tried, so
        // neither waited. Thread 3 came at 25 µs, inside thread 1's hold.
        let mut first = TimedStep::new(0, 1, Step::New);
        first.kernel = Some(KernelOp {
            hold_ns: 30_000,
            net_ns: 60_000,
            miss: true,
            before_ns: 20_000,
        });
        let streams = vec![
            Stream {
                tid: 1,
                steps: vec![first],
            },
            stream(2, &[(4_000, 2, Step::New)]),
            stream(3, &[(25_000, 3, Step::New)]),
        ];
        let result = simulated(Design::Classic, streams, timing(10_000, 0), 0);
        let log = result.log.expect("logged");
        let waits: Vec<_> = log
            .waits
            .iter()
            .map(|w| (w.tid, w.start_ns, w.wait_ns))
            .collect();
        assert_eq!(waits, [(3, 25_000, 25_000)]);
        let durations: Vec<_> = log.ops.iter().map(|o| (o.tid, o.duration_ns)).collect();
        assert_eq!(durations, [(1, 60_000), (2, 10_000), (3, 35_000)]);
        // More time before the lock than the operation spent outside it is cut to that.
        let over = KernelOp {
            hold_ns: 30_000,
            net_ns: 40_000,
            miss: false,
            before_ns: 25_000,
        };
        assert_eq!(over.before_lock_ns(), 10_000);
    }

    /// A logged operation's thread, start, duration and client-lock wait.
    type OpFigures = [u64; 4];

    /// Two threads prefetching blocks 0-3 at 0 and 1 µs, each measured on the kernel holding
    /// the client lock 40 µs (10 µs a block) and nothing outside it, contended acquisitions
    /// costing 500 ns: the logged waits (thread, start, length) and prefetches (thread, start,
    /// duration, client-lock wait).
    fn two_prefetches_of_the_same_blocks(design: Design) -> (Vec<(u32, u64, u64)>, Vec<OpFigures>) {
        let prefetch = |at_ns| {
            let mut step = TimedStep::new(at_ns, 0, Step::Prefetch { blocks: 4 });
            step.kernel = Some(KernelOp {
                hold_ns: 40_000,
                net_ns: 40_000,
                miss: true,
                before_ns: 0,
            });
            step
        };
        let streams = vec![
            Stream {
                tid: 1,
                steps: vec![prefetch(0)],
            },
            Stream {
                tid: 2,
                steps: vec![prefetch(1_000)],
            },
        ];
        let result = simulated(design, streams, timing(5_000, 500), 0);
        assert_eq!(result.steps, 2, "one step per prefetch, whatever its parts");
        let log = result.log.expect("logged");
        let waits = log
            .waits
            .iter()
            .map(|w| {
                assert_eq!(w.step, Step::Prefetch { blocks: 4 });
                (w.tid, w.start_ns, w.wait_ns)
            })
            .collect();
        let ops = log
            .ops
            .iter()
            .map(|o| [u64::from(o.tid), o.start_ns, o.duration_ns, o.mutex_wait_ns])
            .collect();
        (waits, ops)
    }

    #[test]
    fn two_sharded_prefetches_of_the_same_blocks_meet_block_by_block_as_the_kernel_s_do() {
        let (waits, ops) = two_prefetches_of_the_same_blocks(Design::Sharded);
        // Thread 1 inserts each block, 10 µs under the mutex. Thread 2's lookup misses while it
        // does (it comes at 1 µs), waits, and finds the block under the mutex (10 µs); thread 1,
        // taking the mutex again after its read is submitted (as 6.4-6.12's loop does), waits
        // for that, and so on block by block: thread 2 waits at each of the four blocks, and
        // thread 1 four times (twice for each of blocks 0 and 1) until thread 2 is done.
        assert_eq!(
            &waits[..5],
            [
                (2, 1_000, 9_500),
                (1, 10_000, 11_000),
                (2, 20_500, 1_000),
                (1, 21_000, 11_000),
                (2, 31_500, 11_000),
            ]
        );
        let per_thread = |tid| waits.iter().filter(|w| w.0 == tid).count();
        assert_eq!((per_thread(1), per_thread(2)), (4, 4));
        // One operation each, from its start to its last block's end.
        assert_eq!(ops.len(), 2);
        let total: u64 = waits.iter().map(|w| w.2).sum();
        assert_eq!(ops.iter().map(|o| o[3]).sum::<u64>(), total);
        for [tid, start, duration, wait] in ops {
            assert_eq!(start, (tid - 1) * 1_000);
            assert!(
                duration >= 40_000 + wait,
                "{tid}: {duration} ns, {wait} waiting"
            );
        }
    }

    #[test]
    fn a_classic_prefetch_runs_whole_and_the_second_finds_every_block_at_once() {
        // One mutex for lookups and insertions: thread 2 waits once, for thread 1's whole
        // prefetch (its hold, spent once, in its first section), then finds all four blocks.
        let (waits, ops) = two_prefetches_of_the_same_blocks(Design::Classic);
        assert_eq!(waits, [(2, 1_000, 39_500)]);
        assert_eq!(ops.len(), 2);
    }

    /// One thread dirtying blocks 1-4, then running `writeback` (every step holding the mutex
    /// 10 µs, each device I/O taking 100 µs): the writeback's duration.
    fn writeback_duration(writeback: Step) -> u64 {
        let mut steps = Vec::new();
        for block in 1..=4u64 {
            let at = block * 100_000;
            steps.extend([
                (at, block, Step::New),
                (at + 20_000, block, Step::MarkDirty),
                (at + 40_000, block, Step::Release),
            ]);
        }
        steps.push((1_000_000, 0, writeback));
        let result = simulated(
            Design::Classic,
            vec![stream(1, &steps)],
            timing(10_000, 0),
            100_000,
        );
        assert_eq!(
            result.report.ops().writes,
            4,
            "{writeback:?} wrote the four blocks"
        );
        let log = result.log.expect("logged");
        let ops: Vec<_> = log.ops.iter().filter(|o| o.step == writeback).collect();
        assert_eq!(ops.len(), 1);
        ops[0].duration_ns
    }

    #[test]
    fn a_writeback_s_writes_go_to_the_device_together_and_the_asynchronous_one_does_not_wait() {
        // dm-bufio submits a writeback's writes together; dm_bufio_write_dirty_buffers waits
        // for them (one device latency, not four), the _async one goes on at once. Waiting for
        // each in turn, the 6.1 hotspot's dirtier ran 606 ms a writeback where the kernel's ran
        // 31 ms, and fell seconds behind its recorded pace.
        assert_eq!(writeback_duration(Step::WriteDirty), 110_000);
        assert_eq!(writeback_duration(Step::WriteDirtyAsync), 10_000);
    }

    #[test]
    fn a_measured_miss_takes_the_kernel_s_own_read_and_a_miss_the_kernel_hit_takes_the_device_s() {
        // The kernel's read miss took 300 µs, its read in it; the device's median is 500 µs.
        let measured = |miss| {
            let mut read = TimedStep::new(0, 1, Step::Read);
            read.kernel = Some(KernelOp {
                hold_ns: 10_000,
                net_ns: if miss { 300_000 } else { 20_000 },
                miss,
                before_ns: 0,
            });
            let streams = vec![Stream {
                tid: 1,
                steps: vec![read],
            }];
            let result = simulated(Design::Classic, streams, timing(10_000, 0), 500_000);
            let read = result.log.expect("logged").ops[0];
            assert_eq!(read.result, StepResult::Miss, "a cold cache misses");
            read.duration_ns
        };
        assert_eq!(measured(true), 300_000);
        // The kernel hit (20 µs); the design reads from the device after its 10 µs hold.
        assert_eq!(measured(false), 510_000);
    }

    #[test]
    fn a_miss_reads_outside_the_lock_for_the_device_s_latency() {
        // Thread 1's read misses: 10 µs inside the mutex, then 100 µs reading. Thread 2 comes
        // at 20 µs, during the read, and does not wait.
        let streams = vec![
            stream(1, &[(0, 1, Step::Read)]),
            stream(2, &[(20_000, 2, Step::New)]),
        ];
        let result = simulated(Design::Classic, streams, timing(10_000, 0), 100_000);
        let log = result.log.expect("logged");
        assert!(log.waits.is_empty(), "{:?}", log.waits);
        let read = log.ops.iter().find(|o| o.step == Step::Read).expect("read");
        assert_eq!((read.result, read.duration_ns), (StepResult::Miss, 110_000));
    }

    #[test]
    fn a_late_step_begins_when_its_thread_s_previous_one_ends() {
        // One thread: a 50 µs hold, then a step due 10 µs in, 40 µs late.
        let streams = vec![stream(1, &[(0, 1, Step::New), (10_000, 1, Step::Release)])];
        let result = simulated(Design::Classic, streams, timing(50_000, 0), 0);
        let late = result.late_ns.expect("paced");
        assert_eq!(late.len(), 2);
        assert_eq!(late.max(), late.highest_equivalent(40_000));
        assert_eq!(result.elapsed, Duration::from_micros(100));
    }

    #[test]
    fn readers_share_a_tree_and_a_writer_waits_for_them_then_readers_for_it() {
        let mut lock = SimLock::default();
        assert!(lock.try_take(true));
        assert!(lock.try_take(true), "readers share");
        assert!(!lock.try_take(false), "a writer waits for the readers");
        lock.queue.push_back((7, false));
        assert!(
            !lock.try_take(true),
            "a reader queues behind a waiting writer"
        );
        lock.queue.push_back((8, true));
        lock.queue.push_back((9, true));
        assert_eq!(
            lock.release(true),
            [] as [usize; 0],
            "one reader still holds"
        );
        assert_eq!(lock.release(true), [7], "the writer, alone");
        assert_eq!(
            lock.release(false),
            [8, 9],
            "the readers behind it, together"
        );
        assert_eq!((lock.readers, lock.writer), (2, false));
    }

    #[test]
    fn the_plan_meets_the_recording_as_a_real_replay_does_and_runs_alike_every_time() {
        let streams = || {
            (0..4u32)
                .map(|t| {
                    let steps: Vec<_> = (0..200u64)
                        .flat_map(|i| {
                            // 48 blocks in a 64-buffer cache: no eviction, so hits and
                            // misses do not depend on how a real replay's threads interleave.
                            let block = (i * 7 + u64::from(t)) % 48;
                            let at = i * 3_000 + u64::from(t) * 700;
                            [(at, block, Step::Read), (at + 2_000, block, Step::Release)]
                        })
                        .collect();
                    stream(t, &steps)
                })
                .collect::<Vec<_>>()
        };
        for design in Design::ALL {
            let real = replay(cache(design), streams(), ReplayOptions::default());
            let once = simulated(design, streams(), timing(2_000, 300), 5_000);
            let again = simulated(design, streams(), timing(2_000, 300), 5_000);
            assert_eq!(once.steps, real.steps, "{design}");
            assert_eq!(once.mismatches, real.mismatches, "{design}");
            assert_eq!(once.report.ops(), real.report.ops(), "{design}");
            let (a, b) = (once.log.expect("logged"), again.log.expect("logged"));
            assert_eq!(a.ops, b.ops, "{design}");
            assert_eq!(a.waits, b.waits, "{design}");
            assert_eq!(once.elapsed, again.elapsed, "{design}");
            if design != Design::LockFree {
                assert!(
                    !a.waits.is_empty(),
                    "{design}: 4 threads 700 ns apart, 2 µs holds"
                );
            }
        }
    }
}
