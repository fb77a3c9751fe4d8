//! Whether a design's lock waits are the design's or the replay's timing: a wait between two
//! operations that never overlapped in the kernel was made by the replay bringing them together
//! (its threads began them late, and unevenly), not by anything the design does that the kernel
//! did not.
//!
//! A replay keeps each recorded thread's operations in order, so the k-th operation of thread t
//! in the design's run is the k-th of thread t in the kernel's. For each design wait, the other
//! threads' operations in progress when it began are the candidates for its holder; if the
//! kernel ran none of them at the same time as the waiting operation, the wait is counted
//! "apart in the kernel". Operations in progress include ones that were not holding the lock,
//! so the count is a lower bound.
//!
//! A design's wait always has its holder among those operations. A kernel's need not: its wait
//! begins at contention_begin, after the slow path's entry (and, under voluntary preemption, any
//! runqueue time at `mutex_lock`'s might_sleep), by when the holder may have finished its whole
//! operation. Checked against itself, the 6.1 thin-hotspot sample has no other thread's
//! operation in progress at 4,212 of its 7,024 client-mutex waits (6.1 bufio-hotspot: 129 of
//! 117,364).

use std::collections::HashMap;

use bufscope_trace::BufioOp;
use serde::Serialize;

use crate::{models::step_of, tracedata::TraceData};

/// A design's waits and how many of them were between operations the kernel kept apart.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ReplayCheck {
    /// The design's waits on dm-bufio locks inside operations.
    pub waits: u64,
    /// Of those, the ones whose operation overlapped, in the kernel, none of the other threads'
    /// operations in progress when the design's wait began.
    pub apart_in_kernel: u64,
}

/// Checks `model`, a design's run of `client`'s operations in `kernel` (see
/// [`crate::models::as_trace`]).
pub fn check(kernel: &TraceData, client: u64, model: &TraceData) -> ReplayCheck {
    let kernel_ops = by_thread(
        kernel
            .ops
            .iter()
            .filter(|o| o.client == client && step_of(o).is_some()),
    );
    let model_ops = by_thread(model.ops.iter());
    // Every model operation as (start, end, tid, index in its thread), by start.
    let mut spans: Vec<(u64, u64, u32, usize)> = model_ops
        .iter()
        .flat_map(|(&tid, ops)| {
            ops.iter()
                .enumerate()
                .map(move |(i, o)| (o.start_ns, end(o), tid, i))
        })
        .collect();
    spans.sort_unstable();
    let mut waits: Vec<(u64, u32)> = model
        .waits
        .iter()
        .filter(|w| w.op.is_some())
        .map(|w| (w.start_ns, w.tid))
        .collect();
    waits.sort_unstable();

    let mut result = ReplayCheck::default();
    let mut next = 0;
    // Operations begun by the current wait's start and not yet ended: (end, tid, index).
    let mut running: Vec<(u64, u32, usize)> = Vec::new();
    for (at, tid) in waits {
        while let Some(&(start, end, t, i)) = spans.get(next)
            && start <= at
        {
            running.push((end, t, i));
            next += 1;
        }
        running.retain(|&(end, _, _)| end > at);
        let (Some(mine), Some(theirs)) = (model_ops.get(&tid), kernel_ops.get(&tid)) else {
            continue;
        };
        // The waiting operation: the thread's last one begun by the wait.
        let Some(index) = mine.partition_point(|o| o.start_ns <= at).checked_sub(1) else {
            continue;
        };
        let Some(waiter) = theirs.get(index) else {
            continue;
        };
        result.waits += 1;
        let met_in_kernel = running
            .iter()
            .filter(|&&(_, t, _)| t != tid)
            .filter_map(|&(_, t, i)| kernel_ops.get(&t)?.get(i))
            .any(|other| other.start_ns < end(waiter) && waiter.start_ns < end(other));
        if !met_in_kernel {
            result.apart_in_kernel += 1;
        }
    }
    result
}

fn end(op: &BufioOp) -> u64 {
    op.start_ns + op.duration_ns
}

/// Operations per thread, each thread's in start order (ties kept in the order given, as the
/// replay's streams keep them).
fn by_thread<'a>(ops: impl Iterator<Item = &'a BufioOp>) -> HashMap<u32, Vec<&'a BufioOp>> {
    let mut threads: HashMap<u32, Vec<&BufioOp>> = HashMap::new();
    for op in ops {
        threads.entry(op.tid).or_default().push(op);
    }
    for ops in threads.values_mut() {
        ops.sort_by_key(|o| o.start_ns);
    }
    threads
}

#[cfg(test)]
mod tests {
    use bufscope_trace::{LockWait, OpKind};

    use super::*;

    fn op(tid: u32, start_ns: u64, duration_ns: u64) -> BufioOp {
        BufioOp {
            start_ns,
            duration_ns,
            client: 7,
            tid,
            kind: OpKind::Read,
            ..BufioOp::default()
        }
    }

    fn wait(tid: u32, start_ns: u64) -> LockWait {
        LockWait {
            start_ns,
            wait_ns: 1,
            tid,
            op: Some(OpKind::Read),
            op_client: 7,
            ..LockWait::default()
        }
    }

    fn trace(ops: Vec<BufioOp>, waits: Vec<LockWait>) -> TraceData {
        TraceData {
            ops,
            waits,
            ..TraceData::default()
        }
    }

    #[test]
    fn a_wait_between_operations_the_kernel_kept_apart_is_the_replay_s() {
        // The kernel ran thread 2's second operation well after thread 1's; the replay began it
        // late enough to meet thread 1's, and thread 1 waited. Thread 2's first operation met
        // thread 1's first in the kernel too, so the wait between them is the design's.
        let kernel = trace(
            vec![op(1, 0, 10), op(2, 5, 10), op(1, 100, 10), op(2, 200, 10)],
            vec![],
        );
        let model = trace(
            vec![op(1, 0, 10), op(2, 5, 10), op(1, 100, 10), op(2, 95, 20)],
            vec![wait(2, 6), wait(1, 101)],
        );
        assert_eq!(
            check(&kernel, 7, &model),
            ReplayCheck {
                waits: 2,
                apart_in_kernel: 1
            }
        );
        // Another client's operations are not the replayed one's.
        assert_eq!(check(&kernel, 8, &model).waits, 0);
    }
}
