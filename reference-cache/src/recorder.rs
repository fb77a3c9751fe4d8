//! What one thread saw: lock acquisitions, waits and holds per lock class, and cache events
//! (hits, misses, I/O, evictions). Each thread owns a [`ThreadRecorder`] and passes it to every
//! operation, like the kernel's `current`, so recording never touches shared memory and adds no
//! contention of its own. Recorders are merged into a [`Report`] at the end.
//!
//! A recorder can also keep running totals of wait and hold per class (read around each
//! operation, they give that operation's lock time) and, when made with
//! [`ThreadRecorder::logging`], a log of every contended acquisition with the tag its caller set
//! (replay tags each wait with the operation it happened in).

use std::{
    cell::{Cell, RefCell},
    fmt,
    sync::OnceLock,
};

use hdrhistogram::Histogram;

use crate::{lock::LockClass, timing::StepCost};

/// Waits and holds from 1 ns to 100 s at 3 significant digits.
fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid histogram bounds")
}

/// The clock of every measurement: the TSC where it is usable (a few ns per read).
pub(crate) fn clock() -> &'static quanta::Clock {
    static CLOCK: OnceLock<quanta::Clock> = OnceLock::new();
    CLOCK.get_or_init(quanta::Clock::new)
}

/// One lock class's measurements.
#[derive(Clone)]
pub struct ClassStats {
    /// Every acquisition, contended or not.
    pub acquisitions: u64,
    /// Acquisitions whose first try failed.
    pub contended: u64,
    /// Wait time of contended acquisitions, in ns.
    pub wait_ns: Histogram<u64>,
    /// Hold time of every acquisition, in ns.
    pub hold_ns: Histogram<u64>,
}

impl ClassStats {
    fn new() -> Self {
        Self {
            acquisitions: 0,
            contended: 0,
            wait_ns: new_histogram(),
            hold_ns: new_histogram(),
        }
    }

    fn merge(&mut self, other: &ClassStats) {
        self.acquisitions += other.acquisitions;
        self.contended += other.contended;
        self.wait_ns.add(&other.wait_ns).expect("same bounds");
        self.hold_ns.add(&other.hold_ns).expect("same bounds");
    }
}

impl fmt::Debug for ClassStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClassStats")
            .field("acquisitions", &self.acquisitions)
            .field("contended", &self.contended)
            .field("wait_p50_ns", &self.wait_ns.value_at_quantile(0.5))
            .field("wait_max_ns", &self.wait_ns.max())
            .field("hold_p50_ns", &self.hold_ns.value_at_quantile(0.5))
            .finish()
    }
}

/// One thread's lock measurements. Not shareable between threads on purpose: each thread owns
/// one and hands `&ThreadRecorder` to the operations it runs.
pub struct ThreadRecorder {
    classes: RefCell<[ClassStats; LockClass::COUNT]>,
    ops: Cell<OpCounts>,
    totals: Cell<[LockTotals; LockClass::COUNT]>,
    /// Copied into each logged wait: what the thread is doing (set by the caller).
    tag: Cell<u32>,
    /// The current step's calibrated timing (see [`crate::timing`]); `None` at host speed.
    step: Cell<Option<StepClock>>,
    log: Option<RefCell<Vec<LoggedWait>>>,
    /// What the thread's steps did, in order, when made with [`ThreadRecorder::planning`].
    plan: Option<RefCell<Vec<PlanEvent>>>,
}

/// One thing a step did that takes time in a simulated replay ([`crate::simulate`]), noted by a
/// [`ThreadRecorder::planning`] recorder as the design's code runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PlanEvent {
    /// Took a lock.
    Acquire { class: LockClass, instance: u32 },
    /// Let it go.
    Release { class: LockClass, instance: u32 },
    /// Asked to spend the step's hold (inside whatever lock it holds).
    Spend(Hold),
    /// Read a block from the device.
    Read,
    /// Wrote a block to the device. The designs submit a step's writes together, as dm-bufio
    /// does, so a run of them is one wait for the device ([`crate::simulate`]).
    Write,
}

/// Which of a step's calibrated holds the design asked to spend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Hold {
    Hit,
    Miss,
}

/// Where the current step is in spending its calibrated cost; raw clock readings.
#[derive(Clone, Copy, Debug)]
struct StepClock {
    cost: StepCost,
    began: u64,
    /// When the thread last took a lock.
    section: u64,
    /// The thread's lock waits before the step.
    waited_before: u64,
    /// The hold spent, once spent.
    hold: Option<u64>,
}

/// Spins until `ns` nanoseconds have passed since raw clock reading `from`.
fn spin_until(from: u64, ns: u64) {
    let clock = clock();
    while clock.delta_as_nanos(from, clock.raw()) < ns {
        std::hint::spin_loop();
    }
}

/// Running totals of one lock class, in ns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LockTotals {
    pub wait_ns: u64,
    pub hold_ns: u64,
}

/// One contended acquisition, as logged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoggedWait {
    /// When the wait began, on [`clock`]'s raw scale (see [`ThreadRecorder::nanos_since`]).
    pub began_raw: u64,
    pub wait_ns: u64,
    pub class: LockClass,
    /// Which lock of the class (a tree's index).
    pub instance: u32,
    /// The recorder's tag at the time.
    pub tag: u32,
}

/// Cache events, counted per thread.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpCounts {
    pub hits: u64,
    pub misses: u64,
    /// Blocks read from the device.
    pub reads: u64,
    /// Blocks written to the device.
    pub writes: u64,
    pub evictions: u64,
}

impl OpCounts {
    fn add(&mut self, other: OpCounts) {
        self.hits += other.hits;
        self.misses += other.misses;
        self.reads += other.reads;
        self.writes += other.writes;
        self.evictions += other.evictions;
    }
}

impl fmt::Debug for ThreadRecorder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.classes.borrow().iter())
            .finish()
    }
}

impl Default for ThreadRecorder {
    fn default() -> Self {
        Self::new()
    }
}

impl ThreadRecorder {
    pub fn new() -> Self {
        Self {
            classes: RefCell::new(std::array::from_fn(|_| ClassStats::new())),
            ops: Cell::new(OpCounts::default()),
            totals: Cell::new([LockTotals::default(); LockClass::COUNT]),
            tag: Cell::new(0),
            step: Cell::new(None),
            log: None,
            plan: None,
        }
    }

    /// A recorder that notes, in order, the locks each step takes and lets go, where it asks to
    /// spend its hold and its device I/O ([`ThreadRecorder::take_plan`]).
    pub(crate) fn planning() -> Self {
        Self {
            plan: Some(RefCell::new(Vec::new())),
            ..Self::new()
        }
    }

    /// Takes what was noted since the last call (empty unless made with
    /// [`ThreadRecorder::planning`]).
    pub(crate) fn take_plan(&self) -> Vec<PlanEvent> {
        self.plan.as_ref().map(|p| p.take()).unwrap_or_default()
    }

    pub(crate) fn note(&self, event: PlanEvent) {
        if let Some(plan) = &self.plan {
            plan.borrow_mut().push(event);
        }
    }

    /// A recorder that also logs every contended acquisition.
    pub fn logging() -> Self {
        Self {
            log: Some(RefCell::new(Vec::new())),
            ..Self::new()
        }
    }

    /// Sets the tag that waits logged from now on carry.
    pub fn set_tag(&self, tag: u32) {
        self.tag.set(tag);
    }

    /// Starts a step with its calibrated cost (see [`crate::timing`]): from now on the step
    /// lasts, net of its lock waits, at least that cost, the design's own code included.
    pub fn set_step_cost(&self, cost: StepCost) {
        if cost == StepCost::default() {
            self.step.set(None);
            return;
        }
        let now = clock().raw();
        self.step.set(Some(StepClock {
            cost,
            began: now,
            section: now,
            waited_before: self.waited_ns(),
            hold: None,
        }));
    }

    /// Notes that this thread just took a lock (raw clock): a critical section begins.
    pub(crate) fn section_began(&self, raw: u64) {
        if let Some(mut step) = self.step.get() {
            step.section = raw;
            self.step.set(Some(step));
        }
    }

    /// A contended acquisition just took its lock: spends the current step's
    /// [`StepCost::contended_ns`], the kernel's own cost of a contended acquisition, holding it.
    pub(crate) fn spend_contended(&self) {
        if let Some(step) = self.step.get()
            && step.cost.contended_ns > 0
        {
            spin_until(clock().raw(), step.cost.contended_ns);
        }
    }

    /// Spends the current step's hit (or no-outcome) hold, once: designs call this inside the
    /// critical section of a hit, a release, a dirtying or a writeback's collection. The section
    /// lasts at least that long from when its lock was taken (from the step's start where the
    /// design takes no lock).
    pub(crate) fn spend_hit(&self) {
        self.note(PlanEvent::Spend(Hold::Hit));
        self.spend_hold(|cost| cost.hit_hold_ns);
    }

    /// Spends the current step's miss hold, once: designs call this inside the critical section
    /// of a miss, before its read goes to the device.
    pub(crate) fn spend_miss(&self) {
        self.note(PlanEvent::Spend(Hold::Miss));
        self.spend_hold(|cost| cost.miss_hold_ns);
    }

    fn spend_hold(&self, hold_of: impl FnOnce(&StepCost) -> u64) {
        let Some(mut step) = self.step.get() else {
            return;
        };
        if step.hold.is_some() {
            return;
        }
        let hold_ns = hold_of(&step.cost);
        spin_until(step.section.max(step.began), hold_ns);
        step.hold = Some(hold_ns);
        self.step.set(Some(step));
    }

    /// Ends the current step: it lasts, net of its lock waits, at least its hold (the hit's
    /// where no path of the design spent one: the kernel took that time all the same) and its
    /// time outside the lock.
    pub fn spend_outside(&self) {
        let Some(step) = self.step.take() else {
            return;
        };
        let waited = self.waited_ns() - step.waited_before;
        let target = step.hold.unwrap_or(step.cost.hit_hold_ns) + step.cost.outside_ns;
        spin_until(step.began, target + waited);
    }

    /// Lock waits so far, all classes.
    fn waited_ns(&self) -> u64 {
        self.totals.get().iter().map(|t| t.wait_ns).sum()
    }

    /// Wait and hold so far per class, indexed like [`LockClass::ALL`].
    pub fn totals(&self) -> [LockTotals; LockClass::COUNT] {
        self.totals.get()
    }

    /// Wait and hold so far on the client lock, the mutex or a no-sleep client's spinlock.
    pub fn client_lock_totals(&self) -> LockTotals {
        let totals = self.totals.get();
        LockClass::ALL
            .into_iter()
            .filter(|c| c.is_client_lock())
            .fold(LockTotals::default(), |sum, c| LockTotals {
                wait_ns: sum.wait_ns + totals[c.index()].wait_ns,
                hold_ns: sum.hold_ns + totals[c.index()].hold_ns,
            })
    }

    /// Takes the waits logged so far (empty unless made with [`ThreadRecorder::logging`]).
    pub fn take_log(&self) -> Vec<LoggedWait> {
        self.log.as_ref().map(|l| l.take()).unwrap_or_default()
    }

    /// The raw clock now, on the scale of [`LoggedWait::began_raw`].
    pub fn now_raw() -> u64 {
        clock().raw()
    }

    /// Nanoseconds from raw clock reading `from` to `to`.
    pub fn nanos_since(from: u64, to: u64) -> u64 {
        clock().delta_as_nanos(from, to)
    }

    pub(crate) fn log_wait(&self, class: LockClass, instance: u32, began_raw: u64, wait_ns: u64) {
        if let Some(log) = &self.log {
            log.borrow_mut().push(LoggedWait {
                began_raw,
                wait_ns,
                class,
                instance,
                tag: self.tag.get(),
            });
        }
    }

    /// Counts a cache event.
    pub(crate) fn count(&self, event: impl FnOnce(&mut OpCounts)) {
        let before = self.ops.get();
        let mut ops = before;
        event(&mut ops);
        self.ops.set(ops);
        if self.plan.is_some() {
            for _ in 0..ops.reads.saturating_sub(before.reads) {
                self.note(PlanEvent::Read);
            }
            for _ in 0..ops.writes.saturating_sub(before.writes) {
                self.note(PlanEvent::Write);
            }
        }
    }

    /// This thread's cache events.
    pub fn ops(&self) -> OpCounts {
        self.ops.get()
    }

    pub(crate) fn acquired(&self, class: LockClass, wait_ns: Option<u64>) {
        let mut classes = self.classes.borrow_mut();
        let stats = &mut classes[class.index()];
        stats.acquisitions += 1;
        if let Some(wait) = wait_ns {
            stats.contended += 1;
            stats.wait_ns.saturating_record(wait.max(1));
            let mut totals = self.totals.get();
            totals[class.index()].wait_ns += wait;
            self.totals.set(totals);
        }
    }

    pub(crate) fn released(&self, class: LockClass, instance: u32, hold_ns: u64) {
        self.note(PlanEvent::Release { class, instance });
        self.classes.borrow_mut()[class.index()]
            .hold_ns
            .saturating_record(hold_ns.max(1));
        let mut totals = self.totals.get();
        totals[class.index()].hold_ns += hold_ns;
        self.totals.set(totals);
    }

    /// This thread's measurements of one class.
    pub fn class(&self, class: LockClass) -> ClassStats {
        self.classes.borrow()[class.index()].clone()
    }
}

/// Measurements merged over threads.
#[derive(Clone, Debug)]
pub struct Report {
    classes: [ClassStats; LockClass::COUNT],
    ops: OpCounts,
}

impl Default for Report {
    fn default() -> Self {
        Self {
            classes: std::array::from_fn(|_| ClassStats::new()),
            ops: OpCounts::default(),
        }
    }
}

impl Report {
    /// Adds cache events counted elsewhere (a simulated replay's plan run).
    pub(crate) fn add_ops(&mut self, ops: OpCounts) {
        self.ops.add(ops);
    }

    pub fn add(&mut self, recorder: &ThreadRecorder) {
        for (mine, theirs) in self
            .classes
            .iter_mut()
            .zip(recorder.classes.borrow().iter())
        {
            mine.merge(theirs);
        }
        self.ops.add(recorder.ops.get());
    }

    pub fn ops(&self) -> OpCounts {
        self.ops
    }

    pub fn class(&self, class: LockClass) -> &ClassStats {
        &self.classes[class.index()]
    }
}
