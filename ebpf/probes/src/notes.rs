//! What the counters cannot say cleanly, told once through aya-log: the first time on a CPU
//! that a map or the ring buffer is full (or a stack cannot be stored), an operation nests too
//! deep, a return matches no entry, or a read at a BTF offset fails. Each note rides on its counter's first increment on
//! that CPU, so it costs one compare on the paths that already count, and logs at most once per
//! CPU and counter for the whole run. User space shows the notes with `-v` (aya-log's `info`
//! level; bufscope's default level is `warn`).
//!
//! aya-log-ebpf 0.2's macros take a context argument they do not use; these notes pass `&()` so
//! they can be told from functions that have no program context at hand.

use aya_log_ebpf::info;
use bufscope_abi::Counter;

use crate::maps::count_first;

/// Counts `counter` and, the first time on this CPU, says what it means. The counters given
/// here are all constants at their call sites, so each site keeps only its own message.
#[inline(always)]
pub(crate) fn count_noted(counter: Counter) {
    if !count_first(counter) {
        return;
    }
    let cpu = crate::current::cpu();
    match counter {
        Counter::ReserveFailed => info!(
            &(),
            "ring buffer full on CPU {}: events are being lost (counted as ringbuf_full; a larger --ringbuf-size helps)",
            cpu
        ),
        Counter::PendingFull => info!(
            &(),
            "pending-wait map full on CPU {}: lock waits are being dropped (pending_full)", cpu
        ),
        Counter::StackLost => info!(
            &(),
            "a stack could not be stored on CPU {} (the stack map is full, or a new stack's hash met another's): waits go without a stack (stack_lost)",
            cpu
        ),
        Counter::HistFull => info!(
            &(),
            "wait histogram map full on CPU {}: waits are missing from the live histograms (hist_full)",
            cpu
        ),
        Counter::OpTooDeep => info!(
            &(),
            "dm-bufio operations nested deeper than the frame stack on CPU {}: the inner ones are ignored (op_too_deep)",
            cpu
        ),
        Counter::OpUnmatchedReturn => info!(
            &(),
            "a dm-bufio return matched no entry on CPU {} (op_unmatched_return; expected for calls in flight as the probes attached)",
            cpu
        ),
        Counter::FieldReadFailed => info!(
            &(),
            "a read at a BTF field offset failed on CPU {}: that wait's owner is unknown (field_read_failed)",
            cpu
        ),
        Counter::OwnerStackLost => info!(
            &(),
            "an owner stack was not stored on CPU {}: its map is full or another stack has its hash (owner_stack_lost)",
            cpu
        ),
        _ => {}
    }
}
