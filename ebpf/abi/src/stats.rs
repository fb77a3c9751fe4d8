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
    /// Ring buffer full: the event was lost.
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
}

impl Counter {
    /// Number of counters: the size of the per-CPU array.
    pub const COUNT: u32 = 9;

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
