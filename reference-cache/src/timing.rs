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
//! How the recording kernel's mutex passed from a holder to its next waiter
//! ([`MutexHandoff`], from the probes' lock stamps, format 1.5 on) sets how the simulated clock
//! runs a client mutex (`crate::simulate`): Linux's mutex is free while the waiter it woke gets
//! back on a CPU, and other threads take it meanwhile.
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

/// How many latencies [`MutexHandoff`] keeps: quantiles evenly spaced from 0 to
/// [`MutexHandoff::TOP`].
pub const HANDOFF_POINTS: usize = 201;

/// How the recording kernel's mutex passed from a holder to a waiter: Linux's `struct mutex`,
/// the client lock of dm-bufio before 6.4.
///
/// From the probes' stamps, a handoff is the time from the last release of the mutex before a
/// wait ended to that end, where that release fell inside the wait (the waiter was there when
/// the holder let go): a waiter spinning on its holder takes the mutex at once; one asleep is
/// woken by the unlock and must get back on a CPU first, and the mutex is free meanwhile (unless
/// the unlock handed it over), so that a thread arriving then takes it through the slow path,
/// which the kernel counts as contention.
///
/// Under TCG a sleeper's wake-up takes microseconds (6.1 thin-hotspot: p50 2.4 µs, p99 19 µs of
/// 9,654 handoffs, samples of 2026-11-29), several times the shortest contended acquisition, and
/// a constant cost for every handoff left the simulated classic's waits 0.4-0.5x the kernel's at
/// p50 and p99 there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MutexHandoff {
    /// Of 1,000 contended acquisitions, how many took the mutex as its holder let go: the share
    /// of the kernel's handoffs no slower than [`MutexHandoff::SPIN_WITHIN`] times the fastest
    /// 1 % (a spinner's handoff costs what the fastest cost; a wake-up costs more).
    pub spins_per_1000: u16,
    /// The kernel's handoff latencies, ns: quantiles evenly spaced from 0 to
    /// [`MutexHandoff::TOP`].
    pub latency_ns: [u32; HANDOFF_POINTS],
}

impl MutexHandoff {
    /// Fewer handoffs than this say nothing of their spread.
    pub const MIN_HANDOFFS: usize = 100;
    /// The highest quantile kept: above it are stalls of milliseconds (6.1 bufio-hotspot: the
    /// longest of 18,845 took 247 µs), which one draw in a few hundred would otherwise reach
    /// through the last interval.
    pub const TOP: f64 = 0.999;
    /// A handoff this many times the fastest 1 % or faster counts as a spinner's. The
    /// simulated classic meets the kernel's waits within 2x on the four 6.1 samples with this
    /// at 1.5, 2 or 3 (2026-11-30).
    pub const SPIN_WITHIN: u64 = 2;

    /// From the kernel's handoffs (ns, in any order); `None` under
    /// [`MutexHandoff::MIN_HANDOFFS`].
    pub fn from_handoffs(mut handoffs: Vec<u64>) -> Option<Self> {
        if handoffs.len() < Self::MIN_HANDOFFS {
            return None;
        }
        handoffs.sort_unstable();
        let last = handoffs.len() - 1;
        let at = |q: f64| handoffs[((q * last as f64).round() as usize).min(last)];
        let spin_below = at(0.01).saturating_mul(Self::SPIN_WITHIN);
        let spins = handoffs.partition_point(|&h| h <= spin_below);
        Some(Self {
            spins_per_1000: (spins * 1000 / handoffs.len()) as u16,
            latency_ns: std::array::from_fn(|i| {
                let q = Self::TOP * i as f64 / (HANDOFF_POINTS - 1) as f64;
                u32::try_from(at(q)).unwrap_or(u32::MAX)
            }),
        })
    }

    /// The share of contended acquisitions that spin.
    pub fn spin_share(&self) -> f64 {
        f64::from(self.spins_per_1000) / 1000.0
    }

    /// The latency at `u` of the distribution (0 <= u < 1; quantile `u` times
    /// [`MutexHandoff::TOP`]), straight between the kept points: `u` drawn evenly, handoffs
    /// drawn as the kernel's came.
    pub fn latency_at(&self, u: f64) -> u64 {
        let x = u.clamp(0.0, 1.0) * (HANDOFF_POINTS - 1) as f64;
        let i = (x as usize).min(HANDOFF_POINTS - 2);
        let (a, b) = (
            f64::from(self.latency_ns[i]),
            f64::from(self.latency_ns[i + 1]),
        );
        (a + (x - i as f64) * (b - a)).round() as u64
    }

    /// The latency at quantile `q` (0-1) of the kernel's handoffs, as kept.
    pub fn quantile_ns(&self, q: f64) -> u64 {
        self.latency_at(q / Self::TOP)
    }
}

/// How long the designs' steps take beyond their own code: nothing at host speed (the default),
/// or a recording kernel's costs per kind of step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timing {
    /// Indexed by [`Step::index`]; all zero at host speed.
    costs: [StepCost; Step::KINDS],
    /// How the kernel's client mutex passed between threads, where the trace timed it.
    handoff: Option<MutexHandoff>,
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
        handoff: None,
    };

    /// Each step as long as on the recording kernel, indexed by [`Step::index`].
    pub fn kernel(costs: [StepCost; Step::KINDS]) -> Self {
        Self {
            costs,
            handoff: None,
        }
    }

    /// The same, with how the kernel's client mutex passed between threads: the simulated clock
    /// then runs the client mutex as Linux's (`crate::simulate`); real threads do not use it.
    pub fn with_handoff(self, handoff: Option<MutexHandoff>) -> Self {
        Self { handoff, ..self }
    }

    /// How the kernel's client mutex passed between threads, if the trace timed it.
    pub fn handoff(&self) -> Option<&MutexHandoff> {
        self.handoff.as_ref()
    }

    /// The cost of `step` (nothing at host speed).
    pub fn cost(&self, step: Step) -> StepCost {
        self.costs[step.index()]
    }

    pub fn is_host(&self) -> bool {
        *self == Self::HOST
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handoffs_keep_their_spread_and_the_share_as_fast_as_a_spinner_s() {
        assert_eq!(
            MutexHandoff::from_handoffs(vec![1_000; MutexHandoff::MIN_HANDOFFS - 1]),
            None,
            "too few to tell a spread"
        );
        // 1,000 handoffs of 1..=1,000 µs: the fastest 1 % take up to 11 µs (the quantile's
        // nearest rank), so the 22 of up to 22 µs count as spinners'.
        let handoffs: Vec<u64> = (1..=1_000).rev().map(|us| us * 1_000).collect();
        let h = MutexHandoff::from_handoffs(handoffs).expect("enough");
        assert_eq!(h.spins_per_1000, 22);
        assert_eq!(h.latency_at(0.0), 1_000, "the fastest");
        let p50 = h.quantile_ns(0.5);
        assert!(
            (499_000..=501_000).contains(&p50),
            "{p50}: the middle, within a rank"
        );
        assert_eq!(
            h.latency_at(1.0),
            999_000,
            "the top kept: 99.9 %, not the slowest"
        );
        // Drawn evenly, the handoffs come back as they were: a mean of about 500 µs.
        let mean = (0..10_000)
            .map(|i| h.latency_at(f64::from(i) / 10_000.0) as f64)
            .sum::<f64>()
            / 10_000.0;
        assert!((mean - 499_500.0).abs() < 2_000.0, "{mean}");
    }
}
