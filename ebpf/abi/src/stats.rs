//! Counters the eBPF programs keep in a per-CPU array, so losses and odd event orders are
//! reported instead of silently turned into wrong durations.

/// Index into the per-CPU `COUNTERS` array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// contention_begin events seen.
    BeginSeen = 0,
    /// contention_end events seen.
    EndSeen,
    /// Lock-wait events handed to the ring buffer.
    Submitted,
    /// Ring buffer full: an event (lock wait, operation or client) was lost.
    ReserveFailed,
    /// A begin for the lock this thread already waits on (a mutex spins, then sleeps, then may
    /// spin again): the first begin is kept, as perf does.
    RepeatedBegin,
    /// A begin for another lock while this thread (or, for spinlocks, this CPU) already waits:
    /// ignored, never turned into a duration.
    NestedBegin,
    /// An end with no begin recorded (the wait began before bufscope attached, or its begin was
    /// nested and ignored).
    UnpairedEnd,
    /// An end whose lock differs from the pending begin's.
    MismatchedEnd,
    /// The per-thread pending map was full: the begin was dropped.
    PendingFull,
    /// No kernel stack could be stored (the stack map was full): the wait has no stack.
    StackLost,
    /// The wait histogram map was full: the wait is missing from the live histograms.
    HistFull,
    /// dm-bufio operation entries seen.
    OpEntries,
    /// dm-bufio operations handed to the ring buffer.
    OpsSubmitted,
    /// Operations whose return never came (a kretprobe instance was missing); dropped.
    OpReturnMissed,
    /// A dm-bufio operation inside another (e.g. mark_buffer_dirty calling the partial
    /// variant): folded into the outer one.
    OpNested,
    /// Operations nested deeper than the per-thread frame stack: ignored.
    OpTooDeep,
    /// A return with no matching entry (the entry came before bufscope attached).
    OpUnmatchedReturn,
    /// Waits that reused the stack their thread's last wait on the same lock, inside the same
    /// operation, walked less than [`STACK_REUSE_NS`](crate::STACK_REUSE_NS) before.
    StackReused,
    /// Stacks walked to check a reuse ([`STACK_RECHECK_EVERY`](crate::STACK_RECHECK_EVERY)), or
    /// walked again after the reuse window, that came out different from the one being reused:
    /// an upper bound on how often a reused stack's caller was wrong (a stack also differs when
    /// only the lock's own frame does: a mutex's spinning and sleeping phases wait at different
    /// offsets of its slow path, under the same caller).
    StackRecheckMismatch,
    /// Stacks walked where a reuse was possible, to check it.
    StackRechecked,
    /// contention_begin events of processes left out (bufscope's own, or not among `--pid`'s),
    /// or on lock types left out (`--type`): not paired, not counted as waits.
    Filtered,
    /// A wait that began below no live dm-bufio operation of its thread although the thread had
    /// one on record: the operation's frame lies at or below the wait on the kernel stack, so it
    /// returned without its return program running (or the wait runs on another stack, an
    /// interrupt's). The wait is charged to no operation.
    WaitOpStale,
    /// A read of a kernel field at an offset taken from BTF failed (memory the kernel would not
    /// let the program read, or an offset that does not fit this kernel): what it would have
    /// told (a lock's owner) is unknown for that wait.
    FieldReadFailed,
    /// Owner stacks asked for (`--owner-stacks`) but none taken: the owner was running on a CPU
    /// (the kernel's unwinder does not walk a stack that is in use), had exited, or the kernel
    /// has no bpf_task_from_pid.
    OwnerStackNone,
    /// An owner stack was taken but not stored: its map was full, or another stack had the same
    /// hash (told apart by comparing frames, never mixed up).
    OwnerStackLost,
    /// Sleeping-lock waits whose start is the waiter's arrival, before the probe's own work: the
    /// lock was still held by another thread when that work was done, so the waiter waited
    /// through it anyway. The other paired waits start when the work was done.
    WaitFromArrival,
    /// Sleeping-lock waits whose start is midway through the probe's own work: the lock was held
    /// by another thread at the waiter's arrival and free once that work was done, so the holder
    /// let go at a moment the probe cannot tell.
    WaitFromMidpoint,
    /// Sleeping-lock waits kept in the per-thread hash map because another thread held the
    /// waiter's slot (thread ids a multiple of the slot count apart), or because the waiter was
    /// the idle task: each cost a map insert and delete instead of a compare-and-swap.
    SlotShared,
    /// Spinning waits not kept because contention_end's program was running on the CPU as they
    /// began (a spinlock contended inside its own ring-buffer reserve or map update, or in an
    /// interrupt that came in the middle of it): the kernel would skip their end.
    BeginInsideEnd,
    /// A CPU's spinning wait left behind by another thread (its end never reached the program)
    /// and taken over by a new one: the old wait is lost.
    SpinSlotStale,
}

impl Counter {
    /// Number of counters: the size of the per-CPU array.
    pub const COUNT: u32 = 30;

    pub const ALL: [Counter; Self::COUNT as usize] = [
        Counter::BeginSeen,
        Counter::EndSeen,
        Counter::Submitted,
        Counter::ReserveFailed,
        Counter::RepeatedBegin,
        Counter::NestedBegin,
        Counter::UnpairedEnd,
        Counter::MismatchedEnd,
        Counter::PendingFull,
        Counter::StackLost,
        Counter::HistFull,
        Counter::OpEntries,
        Counter::OpsSubmitted,
        Counter::OpReturnMissed,
        Counter::OpNested,
        Counter::OpTooDeep,
        Counter::OpUnmatchedReturn,
        Counter::StackReused,
        Counter::StackRecheckMismatch,
        Counter::StackRechecked,
        Counter::Filtered,
        Counter::WaitOpStale,
        Counter::FieldReadFailed,
        Counter::OwnerStackNone,
        Counter::OwnerStackLost,
        Counter::WaitFromArrival,
        Counter::WaitFromMidpoint,
        Counter::SlotShared,
        Counter::BeginInsideEnd,
        Counter::SpinSlotStale,
    ];

    /// The counters of events lost: the ring buffer or a map was full, or a return was missed.
    /// Their sum is what bufscope reports as "lost".
    pub const LOSSES: [Counter; 4] = [
        Counter::ReserveFailed,
        Counter::HistFull,
        Counter::PendingFull,
        Counter::OpReturnMissed,
    ];

    /// A stable name for reports and trace files.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::BeginSeen => "begin_seen",
            Counter::EndSeen => "end_seen",
            Counter::Submitted => "submitted",
            Counter::ReserveFailed => "ringbuf_full",
            Counter::RepeatedBegin => "repeated_begin",
            Counter::NestedBegin => "nested_begin",
            Counter::UnpairedEnd => "unpaired_end",
            Counter::MismatchedEnd => "mismatched_end",
            Counter::PendingFull => "pending_full",
            Counter::StackLost => "stack_lost",
            Counter::HistFull => "hist_full",
            Counter::OpEntries => "op_entries",
            Counter::OpsSubmitted => "ops_submitted",
            Counter::OpReturnMissed => "op_return_missed",
            Counter::OpNested => "op_nested",
            Counter::OpTooDeep => "op_too_deep",
            Counter::OpUnmatchedReturn => "op_unmatched_return",
            Counter::StackReused => "stack_reused",
            Counter::StackRecheckMismatch => "stack_recheck_mismatch",
            Counter::StackRechecked => "stack_rechecked",
            Counter::Filtered => "filtered",
            Counter::WaitOpStale => "wait_op_stale",
            Counter::FieldReadFailed => "field_read_failed",
            Counter::OwnerStackNone => "owner_stack_none",
            Counter::OwnerStackLost => "owner_stack_lost",
            Counter::WaitFromArrival => "wait_from_arrival",
            Counter::WaitFromMidpoint => "wait_from_midpoint",
            Counter::SlotShared => "slot_shared",
            Counter::BeginInsideEnd => "begin_inside_end",
            Counter::SpinSlotStale => "spin_slot_stale",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_lists_every_counter_at_its_index() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i, "{}", c.name());
        }
    }
}
