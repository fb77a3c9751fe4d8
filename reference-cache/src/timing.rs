//! Calibrated timing: the designs' critical sections made to take what a kernel's took.
//!
//! Run at host speed, a design's critical sections last a few hundred nanoseconds; the kernel a
//! trace came from held its locks for microseconds (slower CPUs, an emulator, the probes' own
//! cost). Lock waits grow with hold times, so a model at host speed cannot predict a kernel's
//! waits. With [`Timing::kernel`], each step spends the recording kernel's measured cost (see
//! `bufscope report --calibration`): its critical section lasts at least
//! [`StepCost::hit_hold_ns`] or [`StepCost::miss_hold_ns`] from when its lock was taken, under
//! whichever lock the design takes there (the client mutex in classic; a tree lock on sharded's
//! hit path; no lock at all on lockfree's, where the time passes all the same), and the whole
//! step, net of its lock waits, at least that hold plus [`StepCost::outside_ns`]. The design's own
//! code counts toward those times, so a debug build (slower code) and a release build predict
//! alike wherever the kernel was the slower. A miss's device read is the I/O backend's latency,
//! not a cost here.
//!
//! A contended acquisition costs the kernel more than the wait for the holder: its slow path,
//! the hand-off, the contention tracepoints. Its waits are never shorter than that cost (6.1
//! under TCG: the shortest 1 % of client-mutex waits take 470-1,040 ns, where the designs' slow
//! path takes a few tens of ns). [`StepCost::contended_ns`] adds it to every contended
//! acquisition, after the lock is taken, as in the kernel, whose contention_end fires once the
//! waiter holds the lock.
//!
//! The time is spent busy, as a CPU inside a critical section is: sleeping would let another
//! thread run on this CPU while the lock is held, which the kernel's holders do not (they are
//! preempted no more than the replay's are).

use crate::replay::Step;

/// What one kind of step cost on the recording kernel, in ns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StepCost {
    /// Inside the critical section when the step hits, or when it has no outcome (release,
    /// mark dirty, writeback's collection).
    pub hit_hold_ns: u64,
    /// Inside the critical section of a miss (making room, inserting the new buffer).
    pub miss_hold_ns: u64,
    /// After the step, outside any lock: the rest of the operation's time net of waits.
    pub outside_ns: u64,
    /// Added to each contended acquisition of the step's locks, once the lock is taken.
    pub contended_ns: u64,
}

/// How long the designs' steps take beyond their own code: nothing at host speed (the default),
/// or a recording kernel's costs per kind of step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timing {
    /// Indexed by [`Step::index`]; all zero at host speed.
    costs: [StepCost; Step::KINDS],
}

impl Timing {
    /// As fast as this machine runs the designs' code.
    pub const HOST: Timing = Timing {
        costs: [StepCost {
            hit_hold_ns: 0,
            miss_hold_ns: 0,
            outside_ns: 0,
            contended_ns: 0,
        }; Step::KINDS],
    };

    /// Each step as long as on the recording kernel, indexed by [`Step::index`].
    pub fn kernel(costs: [StepCost; Step::KINDS]) -> Self {
        Self { costs }
    }

    /// The cost of `step` (nothing at host speed).
    pub fn cost(&self, step: Step) -> StepCost {
        self.costs[step.index()]
    }

    pub fn is_host(&self) -> bool {
        *self == Self::HOST
    }
}
