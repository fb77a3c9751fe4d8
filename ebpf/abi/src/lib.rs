//! The event ABI shared by bufscope's eBPF programs and its user space.
//!
//! Every type here crosses the kernel/user boundary as raw bytes (ring buffer records, map values,
//! globals set before load), so each is `#[repr(C)]`, has no padding holes, and has its size and
//! alignment checked at compile time. Nothing here depends on anything but `core`; the `user`
//! feature adds the `aya::Pod` impls user space needs.

#![no_std]

mod bufio;
mod lock;
mod stats;

pub use bufio::{
    BufioOffsets, BufioOpEvent, ClientEvent, HIST_BUCKETS, OpStats, OpStatsKey, ProbeConfig,
    WaitHist, WaitHistKey, op, result,
};
pub use lock::{
    LockClass, LockFlags, LockWaitEvent, OwnerStack, SlabName, TaskOffsets, ThinOffsets,
    TracepointOffsets, ZoneOffsets, owner,
};
pub use stats::Counter;

/// The kind tag that starts every record in the event ring buffer.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A [`LockWaitEvent`]: one paired contention_begin/contention_end.
    LockWait = 1,
    /// A [`BufioOpEvent`]: one dm-bufio operation, entry to return.
    BufioOp = 2,
    /// A [`ClientEvent`]: a dm-bufio client appeared or went away.
    Client = 3,
}

impl EventKind {
    /// Reads the kind tag at the start of a ring-buffer record; `None` for records too short to
    /// hold one or with a tag this build does not know.
    pub fn of_record(record: &[u8]) -> Option<Self> {
        let tag = u32::from_ne_bytes(record.get(..4)?.try_into().ok()?);
        match tag {
            1 => Some(Self::LockWait),
            2 => Some(Self::BufioOp),
            3 => Some(Self::Client),
            _ => None,
        }
    }
}

/// Values of the `PROCESSES` map, by process id (tgid): what the lock contention programs do
/// with that process's waits (see [`ProbeConfig::processes`]).
pub mod process {
    /// Left out (bufscope's own processes, unless asked to keep them).
    pub const IGNORE: u32 = 1;
    /// Kept when only the listed processes are ([`ProbeConfig::LISTED_PROCESSES`](crate::ProbeConfig::LISTED_PROCESSES)).
    pub const KEEP: u32 = 2;
}

/// Names of the maps and globals in the eBPF object, shared so the two sides cannot drift apart.
pub mod names {
    /// Ring buffer of events (each starting with an [`EventKind`](crate::EventKind) tag).
    pub const EVENTS_MAP: &str = "EVENTS";
    /// Per-CPU array of `u64` counters indexed by [`Counter`](crate::Counter).
    pub const COUNTERS_MAP: &str = "COUNTERS";
    /// Global [`TracepointOffsets`](crate::TracepointOffsets) for the classic tracepoint programs.
    pub const TRACEPOINT_OFFSETS_GLOBAL: &str = "TRACEPOINT_OFFSETS";
    /// Kernel stacks taken at contention_begin (a BPF stack trace map of
    /// [`MAX_STACK_FRAMES`](crate::MAX_STACK_FRAMES) frames).
    pub const STACKS_MAP: &str = "STACKS";
    /// Per-CPU hash of [`WaitHist`](crate::WaitHist) by [`WaitHistKey`](crate::WaitHistKey).
    pub const WAIT_HIST_MAP: &str = "WAIT_HIST";
    /// Per-CPU hash of [`OpStats`](crate::OpStats) by [`OpStatsKey`](crate::OpStatsKey).
    pub const OP_STATS_MAP: &str = "OP_STATS";
    /// Hash of [`process`](crate::process) values by tgid: whose lock waits are left out or
    /// kept.
    pub const PROCESSES_MAP: &str = "PROCESSES";
    /// Global [`ProbeConfig`](crate::ProbeConfig).
    pub const PROBE_CONFIG_GLOBAL: &str = "PROBE_CONFIG";
    /// Global [`TaskOffsets`](crate::TaskOffsets).
    pub const TASK_OFFSETS_GLOBAL: &str = "TASK_OFFSETS";
    /// Global [`ThinOffsets`](crate::ThinOffsets).
    pub const THIN_OFFSETS_GLOBAL: &str = "THIN_OFFSETS";
    /// The kprobe on dm-thin's metadata functions that names each pool's root_lock.
    pub const THIN_METADATA_PROGRAM: &str = "thin_metadata";
    /// LRU hash of [`LockClass`](crate::LockClass) by lock address.
    pub const LOCK_CLASSES_MAP: &str = "LOCK_CLASSES";
    /// LRU hash of [`SlabName`](crate::SlabName) by lock address.
    pub const SLAB_LOCKS_MAP: &str = "SLAB_LOCKS";
    /// Hash of [`OwnerStack`](crate::OwnerStack) by [`OwnerStack::hash`](crate::OwnerStack::hash).
    pub const OWNER_STACKS_MAP: &str = "OWNER_STACKS";
    /// Global [`ZoneOffsets`](crate::ZoneOffsets).
    pub const ZONE_OFFSETS_GLOBAL: &str = "ZONE_OFFSETS";
    /// Array of each memory node's `struct pglist_data` address by node id (0: not found).
    pub const NODES_MAP: &str = "NODES";
    /// The raw tracepoint program that fills `NODES`: never attached, run once by user space
    /// (BPF_PROG_TEST_RUN) from its own task.
    pub const FIND_NODES_PROGRAM: &str = "find_nodes";
    /// Global [`BufioOffsets`](crate::BufioOffsets).
    pub const BUFIO_OFFSETS_GLOBAL: &str = "BUFIO_OFFSETS";
    /// The one return program, attached to every operation function as a kretprobe.
    pub const OP_RETURN_PROGRAM: &str = "bufio_op_return";
    /// The return program as fexit, for operations attached through the module's BTF.
    pub const OP_FEXIT_PROGRAM: &str = "bufio_op_fexit";
    /// An entry program's fentry twin is named `{kprobe program}{FENTRY_SUFFIX}`.
    pub const FENTRY_SUFFIX: &str = "_fentry";
    /// Entry of the function that runs only on a cache miss (6.4+: __bufio_new; before:
    /// __link_buffer): marks the operation in progress as a miss.
    pub const MISS_PROGRAM: &str = "bufio_miss";
    /// Entries of dm_bufio_lock / dm_bufio_unlock: client-mutex hold times.
    pub const LOCK_PROGRAM: &str = "bufio_lock";
    pub const UNLOCK_PROGRAM: &str = "bufio_unlock";
    /// tp_btf programs (typed arguments, no tracefs needed).
    pub const BEGIN_BTF_PROGRAM: &str = "contention_begin_btf";
    pub const END_BTF_PROGRAM: &str = "contention_end_btf";
    /// Classic tracepoint programs (field offsets from the tracepoint's format file).
    pub const BEGIN_TP_PROGRAM: &str = "contention_begin_tp";
    pub const END_TP_PROGRAM: &str = "contention_end_tp";
}

/// Frames kept per kernel stack, innermost first: the tracepoint's and BPF's own frames (2–3),
/// the lock's slow path (1 for a mutex or rwsem, up to 6 for a spinlock taken inside the
/// scheduler), then the caller and its callers. The kernel stops walking at this depth, so a
/// deep storage stack (dm-thin → dm-btree → dm-bufio is 30 and more) costs no more than a
/// shallow one; perf lock contention keeps 8 after skipping its own frames.
pub const MAX_STACK_FRAMES: usize = 16;

/// How long a walked stack is reused for its thread's later waits on the same lock inside the
/// same dm-bufio operation (see [`ProbeConfig::STACKS_REUSED`]).
pub const STACK_REUSE_NS: u64 = 10_000_000;

/// Every this many reuses of a stack, it is walked again and compared (counted in
/// [`Counter::StackRechecked`] and [`Counter::StackRecheckMismatch`]).
pub const STACK_RECHECK_EVERY: u32 = 64;

/// How many per-thread slots hold sleeping-lock waits in flight in the kernel: thread `tid`'s
/// is slot `tid % PENDING_THREAD_SLOTS` (a power of two). Threads whose ids are a multiple of
/// this apart share one, and the second of two such threads waiting at once keeps its wait in
/// a hash map instead.
pub const PENDING_THREAD_SLOTS: u32 = 16384;
const _: () = assert!(PENDING_THREAD_SLOTS.is_power_of_two());

/// Fails the build when a type has padding: the sum of its fields' sizes must equal its size.
macro_rules! assert_layout {
    ($ty:ty, size = $size:expr, align = $align:expr, fields = [$($field:ty),* $(,)?]) => {
        const _: () = {
            assert!(core::mem::size_of::<$ty>() == $size);
            assert!(core::mem::align_of::<$ty>() == $align);
            assert!(0 $(+ core::mem::size_of::<$field>())* == $size, "padding hole");
        };
    };
}
pub(crate) use assert_layout;
