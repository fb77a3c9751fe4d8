//! What each dm-bufio step cost on the kernel that recorded a trace: the figures a model needs to
//! predict that kernel rather than the machine it runs on (`bufscope report --calibration`).
//!
//! For one client (the busiest, as replay takes), per operation kind and outcome:
//! - **hold**: how long the operation held the client mutex (the lock/unlock probes' figure,
//!   trace format 1.2 on; 0 where the kernel's operation takes no client mutex, as 6.4+ hits);
//! - **net**: the operation's duration less the time its thread waited on the client's locks
//!   inside it (the client mutex, and on 6.4+ the trees: the larger of the operation's own
//!   mutex-wait field and the thread's recorded dm-bufio lock waits within the operation), i.e.
//!   what the operation would have taken uncontended, probes included;
//! - for misses of read, new and prefetch, **miss I/O**: net less hold, the time outside the
//!   lock, dominated by the read from the device.
//!
//! And how the client mutex passed from a holder to a waiter (**handoffs**, from the lock
//! stamps of format 1.5 on), which the simulated clock draws from ([`MutexHandoff`]).
//!
//! Medians are the figures to use: on a machine with fewer CPUs than threads a holder is often
//! preempted inside its critical section, and the means carry that tail (6.1-bufio-hotspot: read
//! hit hold median 2.1 µs, mean 127 µs). Both are given.

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use bufscope_trace::{BufioOp, ClientLock, Metadata, OpKind, OpResult};
use reference_cache::{
    replay::Step,
    timing::{MutexHandoff, StepCost as SectionCost, Timing},
};
use serde::Serialize;

use crate::{
    models::{ReplayInput, step_of},
    report::quantile,
    tracedata::TraceData,
    units::{duration_ns, thousands},
};

/// One operation kind and outcome's costs on the recording kernel.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StepCost {
    pub op: &'static str,
    pub result: &'static str,
    pub count: u64,
    pub hold_p50_ns: u64,
    pub hold_mean_ns: u64,
    pub net_p50_ns: u64,
    pub net_mean_ns: u64,
    /// Waits on the client's locks inside the operation, mean over all its operations.
    pub wait_mean_ns: u64,
    /// Misses of read, new and prefetch: net less hold (0 for other rows).
    pub miss_io_p50_ns: u64,
    pub miss_io_mean_ns: u64,
}

/// A trace's calibration for one client.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Calibration {
    pub client: u64,
    pub device: String,
    /// Whether the trace measured client-mutex holds at all (format 1.2 on, lock probes
    /// attached): without them the hold columns are zero and mean nothing.
    pub holds_measured: bool,
    pub steps: Vec<StepCost>,
    /// The holds checked against a mutex's rule of one holder at a time; a trace's calibration
    /// has it, a live window's (which only sets the designs' timing) does not.
    pub hold_check: Option<HoldCheck>,
    /// The kernel's waits checked against its own timeline of holds; a trace's calibration has
    /// it, a live window's does not.
    pub timeline: Option<TimelineCheck>,
    /// The client's lock waits that timed the kernel's own cost of a contended acquisition...
    pub contended_waits: u64,
    /// ...and that cost: the shortest 1 % of those waits (0 under [`MIN_CONTENDED_WAITS`]).
    pub contended_p1_ns: u64,
    /// How the client mutex passed from holders to waiters, by the lock stamps.
    #[serde(flatten)]
    pub handoffs: Handoffs,
    /// Where operations of one kind and outcome held the mutex both after a wait and without
    /// one (at least [`MIN_CONTENDED_WAITS`] of each), their p50 holds side by side...
    pub hold_after_wait: Vec<HoldAfterWait>,
    /// ...and the mean run of the probes' contention_end program in this recording, which runs
    /// with the lock just taken: part of that difference is the probes' own (0 where unknown).
    pub end_probe_ns: u64,
}

/// The client mutex's handoffs a calibration timed, and what they say.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Handoffs {
    /// Client-mutex waits during which a holder let the mutex go (the handoffs timed)...
    #[serde(rename = "handoffs")]
    pub count: u64,
    /// ...their spread, where there are enough of them ([`MutexHandoff::MIN_HANDOFFS`]): the
    /// simulated clock then runs the client mutex as the kernel's...
    #[serde(skip)]
    pub drawn: Option<MutexHandoff>,
    /// ...its p50 and p99 (0 without it)...
    #[serde(rename = "handoff_p50_ns")]
    pub p50_ns: u64,
    #[serde(rename = "handoff_p99_ns")]
    pub p99_ns: u64,
    /// ...and the share of contended acquisitions taken as the holder let go (spinning).
    pub spin_share: f64,
}

impl Handoffs {
    /// From the handoffs timed (ns, in any order).
    fn of(handoffs: Vec<u64>) -> Self {
        let count = handoffs.len() as u64;
        let drawn = MutexHandoff::from_handoffs(handoffs);
        Self {
            count,
            drawn,
            p50_ns: drawn.map_or(0, |h| h.quantile_ns(0.5)),
            p99_ns: drawn.map_or(0, |h| h.quantile_ns(0.99)),
            spin_share: drawn.map_or(0.0, |h| h.spin_share()),
        }
    }
}

/// The client-mutex hold of one kind and outcome of operation, p50, without a wait and after
/// one. After a wait the hold also takes what follows the acquisition in the kernel's slow path,
/// the contention_end tracepoint with the probes' program included (6.1 thin-hotspot under TCG,
/// samples of 2026-11-29: get hits 1.31 µs uncontended, 5.37 µs after a wait, with
/// contention_end's program at 4.24 µs a run).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HoldAfterWait {
    pub op: &'static str,
    pub result: &'static str,
    pub uncontended_p50_ns: u64,
    pub after_wait_p50_ns: u64,
    /// The operations that held it after a wait.
    pub waited: u64,
}

/// Fewer waits than this say nothing of the shortest 1 %.
pub const MIN_CONTENDED_WAITS: u64 = 100;

/// The kernel's own cost of a contended acquisition: the shortest 1 % of `waits` (ns), where
/// there are at least [`MIN_CONTENDED_WAITS`] of them.
fn contended_cost(mut waits: Vec<u64>) -> (u64, u64) {
    let count = waits.len() as u64;
    if count < MIN_CONTENDED_WAITS {
        return (count, 0);
    }
    waits.sort_unstable();
    (count, quantile(&waits, 0.01))
}

/// Client-mutex holds checked against what a mutex allows: one holder at a time.
///
/// Each operation carries how long it held its client's mutex, somewhere inside the operation.
/// Other threads' operations that lie entirely inside it took the same mutex inside it too, so
/// over any operation's interval its hold and theirs add up to no more than the interval. A hold
/// that breaks this counted time its thread did not hold the mutex: on 6.1 (voluntary
/// preemption) `mutex_lock` may give up the CPU before it takes the mutex, and the probes timed
/// that runqueue wait as hold until they left out the thread's `sched_info.run_delay` (the 6.1
/// thin-hotspot sample of 2026-11-28: 0.54 % of its holds impossible, by up to 8 ms).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HoldCheck {
    /// Operations with a measured hold.
    pub measured: u64,
    /// Of those, the ones whose hold and the holds of other threads' operations inside them
    /// exceed their duration by more than [`HoldCheck::SLACK_NS`].
    pub impossible: u64,
    /// The largest such excess.
    pub worst_excess_ns: u64,
    /// At most [`HoldCheck::TRUSTED_SHARE`] of the holds impossible: the hold columns can be
    /// used (kept with the counts, so that readers of `--json` need not know the threshold).
    pub trusted: bool,
}

impl HoldCheck {
    /// Slack per operation: a hold is timed from `dm_bufio_lock`'s entry, before the mutex is
    /// taken, so it may begin a program's run (about a microsecond under TCG) before the previous
    /// holder's `dm_bufio_unlock` entry timed that one's end.
    pub const SLACK_NS: u64 = 2_000;

    /// Above this share of impossible holds the hold columns overstate (6.1 thin-hotspot:
    /// 0.007 % with the runqueue left out, 0.54 % with it in).
    pub const TRUSTED_SHARE: f64 = 0.000_5;

    /// Checks `ops` (one client's) against the holds of the other threads' operations that lie
    /// entirely inside each.
    pub fn of<'a>(ops: impl Iterator<Item = &'a BufioOp>) -> Self {
        let mut held: Vec<&BufioOp> = ops.filter(|o| o.lock_hold_ns > 0).collect();
        held.sort_by_key(|o| o.start_ns);
        let mut check = Self::default();
        for (i, op) in held.iter().enumerate() {
            let end = op.start_ns.saturating_add(op.duration_ns);
            let inside: u64 = held[i + 1..]
                .iter()
                .take_while(|o| o.start_ns <= end)
                .filter(|o| o.tid != op.tid && o.start_ns.saturating_add(o.duration_ns) <= end)
                .map(|o| o.lock_hold_ns)
                .sum();
            let excess = (op.lock_hold_ns + inside).saturating_sub(op.duration_ns);
            check.measured += 1;
            if excess > Self::SLACK_NS {
                check.impossible += 1;
                check.worst_excess_ns = check.worst_excess_ns.max(excess);
            }
        }
        check.trusted = check.impossible_share() <= Self::TRUSTED_SHARE;
        check
    }

    pub fn impossible_share(&self) -> f64 {
        self.impossible as f64 / self.measured.max(1) as f64
    }
}

/// The kernel's client-mutex waits checked against its own timestamps.
///
/// A mutex makes a thread that tries for it while another holds it wait. In the kernel's own
/// timeline the same rule should find the operations that waited: where most operations it finds
/// did not wait, the trace does not say where the mutex was held, or its waits are missing, and
/// no replay of it can make the kernel's waits.
///
/// Traces of format 1.5 on time each operation's first attempt on the lock and its last release
/// (`stamped`): the check takes each attempt, and each hold as the `lock_hold_ns` before its
/// release. Older traces give only the operation's start, and the hold placed after it and the
/// operation's wait, as a replay places it. The stamped check found the VM test bed's recorder
/// leaving out the client-mutex waits of `bufscope stress`, the thin-hotspot and small-cache
/// workload, while it kept their operations: of the 6.1 thin-hotspot attempts inside another
/// thread's hold, 37 % had waited (2026-11-29); and 92 % of the rest had holds longer than their
/// kind's median by at least what was left of the hold they met, the unrecorded wait.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TimelineCheck {
    /// Operations that tried for the mutex while another thread's operation held it.
    pub began_inside: u64,
    /// Of those, the ones that waited for the mutex in the kernel.
    pub waited: u64,
    /// Whether the check placed attempts and holds from the probes' stamps (every operation with
    /// a hold had them), not from the operations' starts.
    pub stamped: bool,
}

impl TimelineCheck {
    /// Checks `ops` (one client's) with measured holds.
    pub fn of<'a>(ops: impl Iterator<Item = &'a BufioOp>) -> Self {
        use std::{cmp::Reverse, collections::BinaryHeap};
        let mut held: Vec<&BufioOp> = ops.filter(|o| o.lock_hold_ns > 0).collect();
        let stamped = !held.is_empty() && held.iter().all(|o| o.lock_stamped());
        let tried = |o: &BufioOp| {
            if stamped {
                o.lock_attempt_ns
            } else {
                o.start_ns
            }
        };
        held.sort_by_key(|o| tried(o));
        // Holds by where they begin: before the release by their length, or the operation's
        // start plus its wait.
        let mut holds: Vec<(u64, u64, u32)> = held
            .iter()
            .map(|o| {
                let begin = if stamped {
                    o.hold_began_ns()
                } else {
                    o.start_ns.saturating_add(o.lock_wait_ns)
                };
                (begin, begin.saturating_add(o.lock_hold_ns), o.tid)
            })
            .collect();
        holds.sort_unstable();
        // Holds begun and not yet over at the sweep's time, by end, and how many per thread.
        let mut active: BinaryHeap<Reverse<(u64, u32)>> = BinaryHeap::new();
        let mut per_tid: HashMap<u32, u64> = HashMap::new();
        let mut next = 0;
        let mut check = Self {
            stamped,
            ..Self::default()
        };
        for op in held {
            let now = tried(op);
            while let Some(&(begin, end, tid)) = holds.get(next)
                && begin <= now
            {
                active.push(Reverse((end, tid)));
                *per_tid.entry(tid).or_default() += 1;
                next += 1;
            }
            while let Some(&Reverse((end, tid))) = active.peek()
                && end <= now
            {
                active.pop();
                *per_tid.entry(tid).or_default() -= 1;
            }
            let own = per_tid.get(&op.tid).copied().unwrap_or(0);
            if active.len() as u64 > own {
                check.began_inside += 1;
                if op.lock_wait_ns > 0 {
                    check.waited += 1;
                }
            }
        }
        check
    }

    /// The share of the operations found that waited.
    pub fn waited_share(&self) -> f64 {
        self.waited as f64 / self.began_inside.max(1) as f64
    }
}

impl Calibration {
    /// The costs the designs spend per step (see `reference_cache::timing`): each step's median
    /// client-mutex hold inside its critical section (for a hit, or a step without outcome, and
    /// for a miss), and the rest of its median net time after it, outside any lock. Where the
    /// kernel held no client mutex for a step (6.4+ hits and releases), the step's whole net time
    /// is its critical section: it ran under a tree lock, which the probes do not time. Each
    /// contended acquisition takes the kernel's own cost of one on top ([`Self::contended_p1_ns`]).
    pub fn timing(&self) -> Timing {
        let mut costs = [SectionCost::default(); Step::KINDS];
        for kind in OpKind::ALL {
            let Some(step) = step_of(&BufioOp {
                kind,
                ..BufioOp::default()
            }) else {
                continue;
            };
            let op = op_name(kind);
            let row = |result: &str| self.steps.iter().find(|s| s.op == op && s.result == result);
            let cost = &mut costs[step.index()];
            if let Some(hit) = row("hit").or_else(|| row("-")) {
                let (hold, outside) = if hit.hold_p50_ns > 0 {
                    (
                        hit.hold_p50_ns,
                        hit.net_p50_ns.saturating_sub(hit.hold_p50_ns),
                    )
                } else {
                    (hit.net_p50_ns, 0)
                };
                cost.hit_hold_ns = hold;
                cost.outside_ns = outside;
            }
            if let Some(miss) = row("miss") {
                cost.miss_hold_ns = miss.hold_p50_ns;
            }
            cost.contended_ns = self.contended_p1_ns;
        }
        Timing::kernel(costs).with_handoff(self.handoffs.drawn)
    }

    /// The table `report --calibration` prints (and `replay`/`compare --timing kernel` before
    /// they run the designs).
    pub fn table(&self) -> String {
        let mut out = format!(
            "What each dm-bufio step cost on the recording kernel, client {} ({:#x}); medians, \
             means in brackets\n",
            self.device, self.client
        );
        if !self.holds_measured {
            out += "(no client-mutex holds in this trace: the hold columns are not measured)\n";
        }
        let line = |cells: [&str; 7]| {
            format!(
                "{:<26} {:<6} {:>9} {:>22} {:>22} {:>10} {:>22}\n",
                cells[0], cells[1], cells[2], cells[3], cells[4], cells[5], cells[6]
            )
        };
        out += &line([
            "operation",
            "result",
            "count",
            "mutex hold",
            "net of lock waits",
            "waited",
            "miss I/O",
        ]);
        let pair = |p50, mean| format!("{} ({})", duration_ns(p50), duration_ns(mean));
        for s in &self.steps {
            out += &line([
                s.op,
                s.result,
                &thousands(s.count),
                &pair(s.hold_p50_ns, s.hold_mean_ns),
                &pair(s.net_p50_ns, s.net_mean_ns),
                &duration_ns(s.wait_mean_ns),
                &if s.result == "miss" && s.miss_io_mean_ns > 0 {
                    pair(s.miss_io_p50_ns, s.miss_io_mean_ns)
                } else {
                    "-".to_string()
                },
            ]);
        }
        if let Some(handoff) = &self.handoffs.drawn {
            out += &format!(
                "the client mutex passed to a waiter in {} at p50, {} at p99 after its holder let \
                 go ({} handoffs in the lock stamps), {:.0} % of them as fast as a spinner's; the \
                 simulated clock runs the mutex as the kernel's, with handoffs drawn from these\n",
                duration_ns(handoff.quantile_ns(0.5)),
                duration_ns(handoff.quantile_ns(0.99)),
                thousands(self.handoffs.count),
                handoff.spin_share() * 100.0
            );
        }
        if !self.hold_after_wait.is_empty() {
            let rows: Vec<String> = self
                .hold_after_wait
                .iter()
                .map(|h| {
                    let what = match h.result {
                        "-" => h.op.to_string(),
                        result => format!("{} {result}", h.op),
                    };
                    format!(
                        "{what} {} -> {}",
                        duration_ns(h.uncontended_p50_ns),
                        duration_ns(h.after_wait_p50_ns)
                    )
                })
                .collect();
            out += &format!(
                "the mutex is held longer after a wait than without one (p50): {}{}\n",
                rows.join(", "),
                if self.end_probe_ns > 0 {
                    format!(
                        "; the probes' contention_end program, which runs with the lock just \
                         taken, took {} a run in this recording",
                        duration_ns(self.end_probe_ns)
                    )
                } else {
                    String::new()
                }
            );
        }
        if self.contended_p1_ns > 0 {
            out += &format!(
                "a contended acquisition costs at least {} (the shortest 1 % of the client's {} \
                 lock waits), added to each in the designs\n",
                duration_ns(self.contended_p1_ns),
                thousands(self.contended_waits)
            );
        }
        if let Some(check) = self.hold_check.filter(|c| c.measured > 0) {
            out += &format!(
                "holds against one holder at a time: {} of {} longer than their operation leaves \
                 room for beside the other threads' holds inside it ({:.3} %{})\n",
                thousands(check.impossible),
                thousands(check.measured),
                check.impossible_share() * 100.0,
                if check.impossible > 0 {
                    format!(", worst by {}", duration_ns(check.worst_excess_ns))
                } else {
                    String::new()
                }
            );
            if let Some(timeline) = self.timeline.filter(|t| t.began_inside > 0) {
                let how = if timeline.stamped {
                    "tried for the mutex inside another thread's hold, as the probes timed both"
                } else {
                    "began inside another thread's hold by their starts (each hold after its \
                     operation's start and wait, as a replay places it; this trace has no \
                     attempt stamps)"
                };
                out += &format!(
                    "operations that {how}: {}, of which {} waited in the kernel ({:.0} %); a \
                     replay makes a wait of each\n",
                    thousands(timeline.began_inside),
                    thousands(timeline.waited),
                    timeline.waited_share() * 100.0
                );
            }
            if !check.trusted {
                out += "warning: the holds overstate: time the thread did not hold the mutex was \
                        timed as held (a recording older than the probes that leave out a 6.1 \
                        thread's runqueue wait inside mutex_lock)\n";
            }
        }
        out
    }

    /// The median time a read miss spent outside the lock (its device read), for the designs'
    /// I/O backend; `None` without read misses.
    pub fn read_io(&self) -> Option<Duration> {
        self.steps
            .iter()
            .find(|s| s.op == "read" && s.result == "miss" && s.count > 0)
            .map(|s| Duration::from_nanos(s.miss_io_p50_ns))
    }
}

/// An operation's name in the table: its kernel function without the `dm_bufio_` prefix.
fn op_name(kind: OpKind) -> &'static str {
    kind.function().trim_start_matches("dm_bufio_")
}

/// The calibration of `trace`'s busiest client; `None` without dm-bufio operations.
pub fn calibrate(trace: &TraceData) -> Option<Calibration> {
    let input = ReplayInput::from_trace(trace)?;
    let client = input.client;
    let waits = bufio_waits_by_tid(trace, client);
    let ops = trace.ops.iter().filter(|o| o.client == client);
    let waited: Vec<(&BufioOp, u64)> = ops
        .clone()
        .map(|op| (op, op.lock_wait_ns.max(waited_inside(&waits, op))))
        .collect();
    let (steps, holds_measured) = step_costs(waited.iter().copied());
    let (contended_waits, contended_p1_ns) =
        contended_cost(waits.values().flatten().map(|&(_, wait)| wait).collect());
    Some(Calibration {
        client,
        device: input.device,
        holds_measured,
        steps,
        hold_check: Some(HoldCheck::of(ops.clone())),
        timeline: Some(TimelineCheck::of(ops)),
        contended_waits,
        contended_p1_ns,
        handoffs: Handoffs::of(handoffs(
            trace.ops.iter().filter(|o| o.client == client),
            client_mutex_waits(trace, client),
        )),
        hold_after_wait: hold_after_wait(waited.iter().copied()),
        end_probe_ns: end_probe_ns(trace),
    })
}

/// The calibration of one client's operations without the lock waits around them (a window of
/// the live view): each operation's own client-mutex wait field is what it waited. On 6.4+
/// kernels that leaves out the rare tree-lock waits, which a trace's calibration subtracts. No
/// hold check: the window only sets the designs' timing, and the check costs a sort per window.
/// `mutex_waits`, the client-mutex waits made inside operations (start, length), time the
/// mutex's handoffs.
pub fn calibrate_ops(
    client: u64,
    device: &str,
    ops: &[BufioOp],
    mutex_waits: &[(u64, u64)],
) -> Calibration {
    let ops = ops.iter().filter(|o| o.client == client);
    let (steps, holds_measured) = step_costs(ops.clone().map(|op| (op, op.lock_wait_ns)));
    // Without the waits themselves, each operation's client-mutex wait (mostly one wait).
    let (contended_waits, contended_p1_ns) = contended_cost(
        ops.clone()
            .map(|op| op.lock_wait_ns)
            .filter(|&w| w > 0)
            .collect(),
    );
    Calibration {
        client,
        device: device.to_string(),
        holds_measured,
        steps,
        hold_check: None,
        timeline: None,
        contended_waits,
        contended_p1_ns,
        handoffs: Handoffs::of(handoffs(ops, mutex_waits.iter().copied())),
        hold_after_wait: Vec::new(),
        end_probe_ns: 0,
    }
}

/// Per operation kind and outcome with enough of both, the p50 client-mutex hold without a wait
/// and after one, of `ops` (each with what it waited on the client's locks inside it).
fn hold_after_wait<'a>(ops: impl Iterator<Item = (&'a BufioOp, u64)>) -> Vec<HoldAfterWait> {
    let mut groups: BTreeMap<(OpKind, u8), (Vec<u64>, Vec<u64>)> = BTreeMap::new();
    for (op, waited) in ops.filter(|(op, _)| op.lock_hold_ns > 0) {
        let (alone, after) = groups.entry((op.kind, op.result as u8)).or_default();
        if waited > 0 { after } else { alone }.push(op.lock_hold_ns);
    }
    let enough = MIN_CONTENDED_WAITS as usize;
    groups
        .into_iter()
        .filter(|(_, (alone, after))| alone.len() >= enough && after.len() >= enough)
        .map(|((kind, result), (mut alone, mut after))| HoldAfterWait {
            op: op_name(kind),
            result: result_name(OpResult::from_u8(result).unwrap_or_default()),
            uncontended_p50_ns: median(&mut alone),
            after_wait_p50_ns: median(&mut after),
            waited: after.len() as u64,
        })
        .collect()
}

/// The mean run of the probes' contention_end program over the recording (0 where the trace
/// does not say).
fn end_probe_ns(trace: &TraceData) -> u64 {
    trace
        .metadata
        .iter()
        .rev()
        .find_map(|m| match m {
            Metadata::Probes { programs, .. } => programs
                .iter()
                .find(|p| p.program.starts_with("contention_end") && p.run_count > 0)
                .map(|p| p.run_time_ns / p.run_count),
            _ => None,
        })
        .unwrap_or(0)
}

/// Per operation kind and outcome, the costs of `ops` (each with what it waited on the client's
/// locks inside it); and whether any operation measured a client-mutex hold.
fn step_costs<'a>(ops: impl Iterator<Item = (&'a BufioOp, u64)>) -> (Vec<StepCost>, bool) {
    let mut groups: BTreeMap<(OpKind, u8), Samples> = BTreeMap::new();
    let mut holds_measured = false;
    for (op, waited) in ops {
        if matches!(op.kind, OpKind::ClientCreate | OpKind::ClientDestroy) {
            continue;
        }
        holds_measured |= op.lock_hold_ns > 0;
        let net = op.duration_ns.saturating_sub(waited);
        let s = groups.entry((op.kind, op.result as u8)).or_default();
        s.hold.push(op.lock_hold_ns);
        s.net.push(net);
        s.waited += waited;
        if op.result == OpResult::Miss
            && matches!(op.kind, OpKind::Read | OpKind::New | OpKind::Prefetch)
        {
            s.miss_io.push(net.saturating_sub(op.lock_hold_ns));
        }
    }
    let steps = groups
        .into_iter()
        .map(|((kind, result), mut s)| {
            let count = s.net.len() as u64;
            StepCost {
                op: op_name(kind),
                result: result_name(OpResult::from_u8(result).unwrap_or_default()),
                count,
                hold_p50_ns: median(&mut s.hold),
                hold_mean_ns: mean(&s.hold),
                net_p50_ns: median(&mut s.net),
                net_mean_ns: mean(&s.net),
                wait_mean_ns: s.waited / count.max(1),
                miss_io_p50_ns: median(&mut s.miss_io),
                miss_io_mean_ns: mean(&s.miss_io),
            }
        })
        .collect();
    (steps, holds_measured)
}

/// When the designs run at a recording kernel's costs (`--timing`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TimingMode {
    /// At the kernel's costs where the input measured the kernel's lock holds (a recording of
    /// format 1.2 on, the live probes); at host speed otherwise (synthetic traces, older files).
    #[default]
    Auto,
    /// Always at host speed.
    Host,
    /// Always at the kernel's costs, measured holds or not.
    Kernel,
}

impl TimingMode {
    /// Whether the designs take `calibration`'s costs under this mode.
    pub fn uses(self, calibration: &Calibration) -> bool {
        match self {
            Self::Auto => calibration.holds_measured,
            Self::Host => false,
            Self::Kernel => true,
        }
    }
}

#[derive(Default)]
struct Samples {
    hold: Vec<u64>,
    net: Vec<u64>,
    miss_io: Vec<u64>,
    waited: u64,
}

/// Each thread's waits on `client`'s locks (charged to one of its operations), as (start, wait)
/// in start order.
fn bufio_waits_by_tid(trace: &TraceData, client: u64) -> HashMap<u32, Vec<(u64, u64)>> {
    let mut by_tid: HashMap<u32, Vec<(u64, u64)>> = HashMap::new();
    for w in &trace.waits {
        if w.op.is_some() && w.op_client == client && trace.names.bufio_lock(w.lock_addr).is_some()
        {
            by_tid
                .entry(w.tid)
                .or_default()
                .push((w.start_ns, w.wait_ns));
        }
    }
    for waits in by_tid.values_mut() {
        waits.sort_unstable();
    }
    by_tid
}

/// The client's mutex waits made inside its operations: (start, length).
fn client_mutex_waits(trace: &TraceData, client: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
    trace
        .waits
        .iter()
        .filter(move |w| {
            w.op.is_some()
                && w.op_client == client
                && matches!(
                    trace.names.bufio_lock(w.lock_addr),
                    Some((_, ClientLock::Mutex))
                )
        })
        .map(|w| (w.start_ns, w.wait_ns))
}

/// The client mutex's handoffs by the lock stamps of `ops`: for each of `mutex_waits` (start,
/// length) during which an operation let the mutex go, the time from the last such release to
/// the wait's end.
fn handoffs<'a>(
    ops: impl Iterator<Item = &'a BufioOp>,
    mutex_waits: impl Iterator<Item = (u64, u64)>,
) -> Vec<u64> {
    let mut releases: Vec<u64> = ops
        .filter(|op| op.lock_stamped())
        .map(|op| op.lock_release_ns)
        .collect();
    releases.sort_unstable();
    mutex_waits
        .filter_map(|(start, wait)| {
            let end = start.saturating_add(wait);
            let last = releases[..releases.partition_point(|&r| r <= end)].last()?;
            (*last >= start).then(|| end - last)
        })
        .collect()
}

/// The operation's thread's dm-bufio lock waits that began inside it.
fn waited_inside(waits: &HashMap<u32, Vec<(u64, u64)>>, op: &BufioOp) -> u64 {
    let Some(w) = waits.get(&op.tid) else {
        return 0;
    };
    let end = op.start_ns.saturating_add(op.duration_ns);
    let from = w.partition_point(|&(start, _)| start < op.start_ns);
    w[from..]
        .iter()
        .take_while(|&&(start, _)| start <= end)
        .map(|&(_, wait)| wait)
        .sum()
}

fn result_name(result: OpResult) -> &'static str {
    match result {
        OpResult::None => "-",
        OpResult::Hit => "hit",
        OpResult::Miss => "miss",
        OpResult::Error => "error",
    }
}

fn median(v: &mut [u64]) -> u64 {
    v.sort_unstable();
    quantile(v, 0.5)
}

fn mean(v: &[u64]) -> u64 {
    if v.is_empty() {
        return 0;
    }
    (v.iter().map(|&x| u128::from(x)).sum::<u128>() / v.len() as u128) as u64
}

#[cfg(test)]
mod tests {
    use bufscope_trace::{ClientLocks, LockWait, Metadata};

    use super::*;

    const CLIENT: u64 = 0xffff_8880_0100_0000;
    const MUTEX: u64 = CLIENT + 0x40;

    fn op(tid: u32, start_ns: u64, kind: OpKind, result: OpResult, dur: u64, hold: u64) -> BufioOp {
        BufioOp {
            start_ns,
            duration_ns: dur,
            client: CLIENT,
            block: u64::from(tid),
            tid,
            tgid: 1,
            kind,
            result,
            lock_hold_ns: hold,
            ..BufioOp::default()
        }
    }

    fn trace() -> TraceData {
        let mut t = TraceData::default();
        t.add_metadata(Metadata::Client {
            addr: CLIENT,
            device: "7:0".into(),
            block_size: 4096,
            locks: Some(ClientLocks {
                mutex: MUTEX,
                trees: 0,
                first_tree: 0,
                tree_stride: 0,
                ..Default::default()
            }),
            seen_ns: 0,
            destroyed_ns: None,
        });
        t
    }

    #[test]
    fn costs_are_net_of_the_threads_lock_waits_inside_each_operation() {
        let mut t = trace();
        // Read hits: 3 µs each, 1 µs held; the second waited 10 µs for the mutex (recorded as a
        // lock wait, not in the op's own field).
        t.ops
            .push(op(1, 1_000, OpKind::Read, OpResult::Hit, 3_000, 1_000));
        t.ops
            .push(op(2, 2_000, OpKind::Read, OpResult::Hit, 13_000, 1_000));
        t.waits.push(LockWait {
            start_ns: 2_500,
            wait_ns: 10_000,
            lock_addr: MUTEX,
            tid: 2,
            tgid: 1,
            op: Some(OpKind::Read),
            op_client: CLIENT,
            ..LockWait::default()
        });
        // A wait of thread 2 after its operation ended is not its.
        t.waits.push(LockWait {
            start_ns: 50_000,
            wait_ns: 7_000,
            lock_addr: MUTEX,
            tid: 2,
            tgid: 1,
            op: Some(OpKind::Release),
            op_client: CLIENT,
            ..LockWait::default()
        });
        // Read misses: 1 ms, 20 µs held, one with 5 µs of mutex wait in its own field.
        let mut miss = op(3, 3_000, OpKind::Read, OpResult::Miss, 1_000_000, 20_000);
        t.ops.push(miss);
        miss.start_ns = 2_000_000;
        miss.lock_wait_ns = 5_000;
        miss.duration_ns += 5_000;
        t.ops.push(miss);
        t.ops.push(op(
            1,
            3_000_000,
            OpKind::Release,
            OpResult::None,
            2_000,
            1_500,
        ));
        let c = calibrate(&t).expect("dm-bufio operations");
        assert_eq!(
            (c.client, c.device.as_str(), c.holds_measured),
            (CLIENT, "7:0", true)
        );
        let rows: Vec<(&str, &str, u64, u64, u64, u64)> = c
            .steps
            .iter()
            .map(|s| {
                (
                    s.op,
                    s.result,
                    s.count,
                    s.hold_p50_ns,
                    s.net_p50_ns,
                    s.miss_io_p50_ns,
                )
            })
            .collect();
        assert_eq!(
            rows,
            [
                ("read", "hit", 2, 1_000, 3_000, 0),
                ("read", "miss", 2, 20_000, 1_000_000, 980_000),
                ("release", "-", 1, 1_500, 2_000, 0),
            ]
        );
        assert_eq!(c.steps[0].wait_mean_ns, 5_000, "10 µs over two reads");
        assert_eq!(c.steps[1].wait_mean_ns, 2_500);
    }

    #[test]
    fn holds_after_a_wait_are_set_beside_uncontended_ones_with_the_end_probe_s_cost() {
        let mut t = trace();
        for i in 0..MIN_CONTENDED_WAITS {
            // Read hits held 1 µs without a wait, 3 µs after one (in their own field or as a
            // recorded wait inside them); releases too few to compare.
            t.ops.push(op(
                1,
                i * 100_000,
                OpKind::Read,
                OpResult::Hit,
                5_000,
                1_000,
            ));
            let mut waited = op(2, i * 100_000, OpKind::Read, OpResult::Hit, 9_000, 3_000);
            if i % 2 == 0 {
                waited.lock_wait_ns = 4_000;
            } else {
                t.waits.push(LockWait {
                    start_ns: waited.start_ns + 500,
                    wait_ns: 4_000,
                    lock_addr: MUTEX,
                    tid: 2,
                    tgid: 1,
                    op: Some(OpKind::Read),
                    op_client: CLIENT,
                    ..LockWait::default()
                });
            }
            t.ops.push(waited);
        }
        t.ops
            .push(op(3, 1_000, OpKind::Release, OpResult::None, 2_000, 1_000));
        t.add_metadata(Metadata::Probes {
            bufio_design: None,
            cache_size_bytes: None,
            missing: Default::default(),
            programs: vec![bufscope_trace::ProgramRun {
                program: "contention_end_btf".into(),
                run_count: 10,
                run_time_ns: 42_400,
                recursion_misses: 0,
            }],
        });
        let c = calibrate(&t).expect("operations");
        assert_eq!(
            c.hold_after_wait,
            [HoldAfterWait {
                op: "read",
                result: "hit",
                uncontended_p50_ns: 1_000,
                after_wait_p50_ns: 3_000,
                waited: MIN_CONTENDED_WAITS,
            }]
        );
        assert_eq!(c.end_probe_ns, 4_240);
        assert!(
            c.table().contains("read hit 1.00 us -> 3.00 us")
                && c.table().contains("took 4.24 us a run"),
            "{}",
            c.table()
        );
    }

    #[test]
    fn handoffs_are_timed_from_the_last_release_inside_each_client_mutex_wait() {
        let mut t = trace();
        let stamped = |tid, start_ns, released_ns| BufioOp {
            lock_attempt_ns: start_ns + 100,
            lock_release_ns: released_ns,
            ..op(tid, start_ns, OpKind::Get, OpResult::Hit, 30_000, 1_000)
        };
        // Releases at 10, 12 and 30 µs; one operation unstamped (an older format).
        t.ops.push(stamped(1, 0, 10_000));
        t.ops.push(stamped(6, 0, 12_000));
        t.ops.push(stamped(3, 20_000, 30_000));
        t.ops
            .push(op(7, 0, OpKind::Get, OpResult::Hit, 40_000, 1_000));
        let wait = |tid, start_ns, wait_ns, lock_addr, op| LockWait {
            start_ns,
            wait_ns,
            lock_addr,
            tid,
            tgid: 1,
            op,
            op_client: CLIENT,
            ..LockWait::default()
        };
        t.waits.extend([
            // Two releases inside: timed from the later, 12 µs, to its end at 13 µs.
            wait(2, 5_000, 8_000, MUTEX, Some(OpKind::Get)),
            // None inside: its holder let go before it began (at 10 µs, or not stamped).
            wait(4, 12_500, 3_000, MUTEX, Some(OpKind::Get)),
            // The release at 30 µs, 1.5 µs before its end.
            wait(5, 20_000, 11_500, MUTEX, Some(OpKind::Read)),
            // Another lock, and a wait outside any operation: not the client mutex's handoffs.
            wait(8, 5_000, 8_000, MUTEX + 8, Some(OpKind::Get)),
            wait(9, 5_000, 8_000, MUTEX, None),
        ]);
        let ops = t.ops.clone();
        assert_eq!(
            handoffs(ops.iter(), client_mutex_waits(&t, CLIENT)),
            [1_000, 1_500]
        );
        let c = calibrate(&t).expect("operations");
        assert_eq!(c.handoffs.count, 2);
        assert_eq!(c.handoffs.drawn, None, "too few to draw from");
    }

    #[test]
    fn each_step_takes_the_costs_of_the_operation_it_replays() {
        // A 6.1-like hit (held 1 µs of 3) and miss (held 20 µs); a 6.12-like release (no mutex).
        let c = Calibration {
            client: CLIENT,
            device: "7:0".into(),
            holds_measured: true,
            steps: vec![
                step("read", "hit", 1_000, 3_000),
                step("read", "miss", 20_000, 1_000_000),
                step("release", "-", 0, 2_000),
                step("mark_buffer_dirty", "-", 1_500, 4_000),
            ],
            hold_check: None,
            timeline: None,
            contended_waits: 0,
            contended_p1_ns: 0,
            handoffs: Handoffs::default(),
            hold_after_wait: Vec::new(),
            end_probe_ns: 0,
        };
        let timing = c.timing();
        let read = timing.cost(Step::Read);
        assert_eq!(
            (read.hit_hold_ns, read.outside_ns, read.miss_hold_ns),
            (1_000, 2_000, 20_000)
        );
        let release = timing.cost(Step::Release);
        assert_eq!((release.hit_hold_ns, release.outside_ns), (2_000, 0));
        let dirty = timing.cost(Step::MarkDirty);
        assert_eq!(
            (dirty.hit_hold_ns, dirty.outside_ns),
            (1_500, 2_500),
            "each step takes its own operation's row"
        );
        assert_eq!(
            timing.cost(Step::New),
            SectionCost::default(),
            "no new in the trace"
        );
    }

    fn step(op: &'static str, result: &'static str, hold: u64, net: u64) -> StepCost {
        StepCost {
            op,
            result,
            count: 1,
            hold_p50_ns: hold,
            hold_mean_ns: hold,
            net_p50_ns: net,
            net_mean_ns: net,
            wait_mean_ns: 0,
            miss_io_p50_ns: net - hold,
            miss_io_mean_ns: net - hold,
        }
    }

    #[test]
    fn a_trace_without_operations_has_no_calibration() {
        assert_eq!(calibrate(&trace()), None);
    }

    fn held(tid: u32, start_ns: u64, duration_ns: u64, hold_ns: u64) -> BufioOp {
        op(
            tid,
            start_ns,
            OpKind::Get,
            OpResult::Hit,
            duration_ns,
            hold_ns,
        )
    }

    #[test]
    fn holds_that_fit_pass_and_a_hold_others_held_through_does_not() {
        // Thread 1 holds 30 µs of a 100 µs operation; thread 2's two operations inside it hold
        // 20 µs each: 70 µs fits.
        let fits = [
            held(1, 0, 100_000, 30_000),
            held(2, 10_000, 25_000, 20_000),
            held(2, 50_000, 25_000, 20_000),
        ];
        let check = HoldCheck::of(fits.iter());
        assert_eq!(
            check,
            HoldCheck {
                measured: 3,
                impossible: 0,
                worst_excess_ns: 0,
                trusted: true
            }
        );
        assert!(check.trusted);
        // Thread 1 "holds" 90 µs while thread 2 held 40 µs inside it: 30 µs too many.
        let mut broken = fits;
        broken[0].lock_hold_ns = 90_000;
        let check = HoldCheck::of(broken.iter());
        assert_eq!((check.impossible, check.worst_excess_ns), (1, 30_000));
        assert!(!check.trusted);
    }

    #[test]
    fn the_timeline_check_finds_operations_begun_inside_other_threads_holds() {
        let with_wait = |mut o: BufioOp, wait: u64| {
            o.lock_wait_ns = wait;
            o
        };
        let (get, hit) = (OpKind::Get, OpResult::Hit);
        let ops = [
            // Thread 1 holds from 0 to 10 µs.
            op(1, 0, get, hit, 12_000, 10_000),
            // Thread 2 begins inside it and waited 4 µs; its hold: 9-10 µs.
            with_wait(op(2, 5_000, get, hit, 6_000, 1_000), 4_000),
            // Thread 3 begins inside it and did not wait.
            op(3, 8_000, get, hit, 2_000, 1_000),
            // Thread 1's own next operation is inside only its own hold.
            op(1, 6_000, get, hit, 1_000, 500),
            // Thread 4 begins after every hold.
            op(4, 20_000, get, hit, 2_000, 1_000),
        ];
        let check = TimelineCheck::of(ops.iter());
        assert_eq!((check.began_inside, check.waited), (2, 1));
        assert_eq!(check.waited_share(), 0.5);
        assert!(!check.stamped);
        // With the probes' stamps, attempts and holds are where they were timed. Thread 1 holds
        // from 2 to 10 µs; thread 2 tries at 6 µs and waits, then holds to 11 µs; thread 3
        // starts inside those holds but tries for the lock at 11.1 µs, after them; thread 4
        // holds from 0.6 to 1 µs, before them.
        let stamp = |mut o: BufioOp, attempt: u64, release: u64| {
            o.lock_attempt_ns = attempt;
            o.lock_release_ns = release;
            o
        };
        let stamped = [
            stamp(op(1, 0, get, hit, 12_000, 8_000), 1_000, 10_000),
            stamp(
                with_wait(op(2, 5_000, get, hit, 6_000, 1_000), 4_000),
                6_000,
                11_000,
            ),
            stamp(op(3, 8_000, get, hit, 4_500, 1_000), 11_100, 12_200),
            stamp(op(4, 500, get, hit, 1_500, 400), 600, 1_000),
        ];
        let check = TimelineCheck::of(stamped.iter());
        assert_eq!(
            (check.began_inside, check.waited, check.stamped),
            (1, 1, true)
        );
        // One operation without stamps: the check falls back to the starts for all.
        let mut mixed = stamped;
        mixed[3].lock_attempt_ns = 0;
        assert!(!TimelineCheck::of(mixed.iter()).stamped);
        // Operations without a measured hold are left out, on both sides.
        let unmeasured = ops.map(|mut o| {
            o.lock_hold_ns = 0;
            o
        });
        assert_eq!(
            TimelineCheck::of(unmeasured.iter()),
            TimelineCheck::default()
        );
    }

    #[test]
    fn hold_check_allows_its_slack_and_a_thread_s_own_nested_operations() {
        // Over by 1.5 µs: within the slack.
        let ops = [held(1, 0, 10_000, 6_000), held(2, 1_000, 6_000, 5_500)];
        assert_eq!(HoldCheck::of(ops.iter()).impossible, 0);
        // Over by 2.5 µs: not.
        let ops = [held(1, 0, 10_000, 7_000), held(2, 1_000, 6_000, 5_500)];
        assert_eq!(HoldCheck::of(ops.iter()).impossible, 1);
        // The same thread's nested operation is part of its own hold; unmeasured holds are not
        // checked.
        let nested = [
            held(1, 0, 10_000, 8_000),
            held(1, 1_000, 5_000, 5_000),
            held(2, 500, 1_000, 0),
        ];
        assert_eq!(
            HoldCheck::of(nested.iter()),
            HoldCheck {
                measured: 2,
                impossible: 0,
                worst_excess_ns: 0,
                trusted: true
            }
        );
    }
}
