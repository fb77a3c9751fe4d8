//! dm-bufio: the events the operation probes send, the struct offsets user space resolves from
//! BTF before load, and the in-kernel aggregates read live.

use crate::assert_layout;

/// Operation kinds, numbered as bufscope-trace's `OpKind` (user space checks that they agree).
pub mod op {
    pub const GET: u32 = 1;
    pub const READ: u32 = 2;
    pub const NEW: u32 = 3;
    pub const PREFETCH: u32 = 4;
    pub const RELEASE: u32 = 5;
    pub const MARK_DIRTY: u32 = 6;
    pub const MARK_PARTIAL_DIRTY: u32 = 7;
    pub const WRITE_DIRTY_ASYNC: u32 = 8;
    pub const WRITE_DIRTY: u32 = 9;
    pub const FORGET: u32 = 10;
    pub const FORGET_BUFFERS: u32 = 11;
    pub const CLIENT_CREATE: u32 = 12;
    pub const CLIENT_DESTROY: u32 = 13;
    /// dm-bufio's own background work, which takes the client mutex from a kworker: global
    /// cleanup (`do_global_cleanup`, eviction down to the cache size), the shrinker's work
    /// (`shrink_work`) and the periodic age cleanup (`work_fn`). Their client is the first one
    /// they lock.
    pub const GLOBAL_CLEANUP: u32 = 14;
    pub const SHRINK_WORK: u32 = 15;
    pub const AGE_CLEANUP: u32 = 16;
}

/// Operation results, numbered as bufscope-trace's `OpResult`.
pub mod result {
    pub const NONE: u32 = 0;
    pub const HIT: u32 = 1;
    pub const MISS: u32 = 2;
    pub const ERROR: u32 = 3;
}

/// Byte offsets into dm-bufio's private structs, resolved by user space from the module's split
/// BTF (/sys/kernel/btf/dm_bufio), because Rust eBPF has no CO-RE relocations.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BufioOffsets {
    /// `struct dm_bufio_client`: `bdev` (a `struct block_device *`).
    pub client_bdev: u32,
    /// `struct block_device`: `bd_dev` (a `dev_t`).
    pub bdev_dev: u32,
    /// `struct dm_bufio_client`: `block_size` (unsigned int).
    pub client_block_size: u32,
    /// `struct dm_bufio_client`: `lock`, the client mutex.
    pub client_lock: u32,
    /// `struct dm_bufio_client`: `cache.num_locks` (6.4+), or [`Self::ABSENT`] before 6.4.
    pub client_num_locks: u32,
    /// `struct dm_buffer`: `block` (sector_t).
    pub buffer_block: u32,
    /// `struct dm_buffer`: `c`, the owning client.
    pub buffer_client: u32,
    /// `struct dm_bufio_client`: `no_sleep` (bool, Linux 6.0 on), or [`Self::ABSENT`].
    pub client_no_sleep: u32,
    /// `struct dm_bufio_client`: `spinlock`, the client lock a no-sleep client takes instead of
    /// its mutex (Linux 6.0 on), or [`Self::ABSENT`].
    pub client_spinlock: u32,
}
assert_layout!(
    BufioOffsets,
    size = 36,
    align = 4,
    fields = [u32, u32, u32, u32, u32, u32, u32, u32, u32]
);

impl BufioOffsets {
    /// A field this kernel does not have.
    pub const ABSENT: u32 = u32::MAX;
    /// The eBPF global's initial value; the operation programs are attached only after user
    /// space has set real offsets.
    pub const UNSET: Self = Self {
        client_bdev: Self::ABSENT,
        bdev_dev: Self::ABSENT,
        client_block_size: Self::ABSENT,
        client_lock: Self::ABSENT,
        client_num_locks: Self::ABSENT,
        buffer_block: Self::ABSENT,
        buffer_client: Self::ABSENT,
        client_no_sleep: Self::ABSENT,
        client_spinlock: Self::ABSENT,
    };
}

/// What the programs do besides pairing lock waits; set by user space before load.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeConfig {
    /// 1: send each lock wait and operation to the ring buffer (recording, the live screen);
    /// 0: send nothing.
    pub stream_events: u32,
    /// Kernel stacks at contention_begin: [`ProbeConfig::NO_STACKS`], [`ProbeConfig::STACKS_REUSED`]
    /// or [`ProbeConfig::STACKS_EVERY_WAIT`].
    pub stacks: u32,
    /// Whose lock waits are kept: [`ProbeConfig::ALL_PROCESSES`] but those the `PROCESSES` map
    /// marks [`process::IGNORE`](crate::process::IGNORE), or [`ProbeConfig::LISTED_PROCESSES`]:
    /// only those it marks [`process::KEEP`](crate::process::KEEP). dm-bufio operations are
    /// kept from every process: a model needs all of them to know what the cache holds.
    pub processes: u32,
    /// [`ProbeConfig::OWNERS`]: read a contended mutex's or writer-held rwsem's owner at
    /// contention_begin (its ids and the dm-bufio operation it is in);
    /// [`ProbeConfig::OWNER_STACKS`]: its kernel stack too; [`ProbeConfig::NO_OWNERS`]: none.
    pub owners: u32,
    /// Only waits on locks of these types: bit [`LockFlags::type_index`](crate::LockFlags::type_index)
    /// per type; 0 for every type. A left-out type's begin returns at once (counted as
    /// `filtered`), and its end, unpaired, is not counted.
    pub lock_types: u32,
    /// 1: name locks inside slab objects by their cache (the kfunc bpf_get_kmem_cache, Linux
    /// 6.13+, tp_btf programs only); 0: the kernel has no such kfunc, nothing is asked.
    pub slab_names: u32,
    /// When events wake user space's reader: [`ProbeConfig::WAKE_BATCHED`] or
    /// [`ProbeConfig::WAKE_EACH`].
    pub ring_wakeup: u32,
    /// 1: fold each lock wait and operation into the in-kernel histograms and per-operation
    /// stats (`live --no-tui` reads nothing else); 0: leave them empty. A recording takes
    /// everything from its events, and a contended lock's waiter folds its wait in while it
    /// holds the lock: work there lengthens every other waiter's wait.
    pub histograms: u32,
    /// 1: dm-bufio's programs are loaded, and each lock wait looks up its thread's (and its
    /// CPU's interrupt) operation frames to charge the wait to an operation; 0: they are not
    /// (no dm-bufio, or `--no-bufio`), and a wait looks up nothing.
    pub bufio_ops: u32,
}
assert_layout!(
    ProbeConfig,
    size = 36,
    align = 4,
    fields = [u32, u32, u32, u32, u32, u32, u32, u32, u32]
);

impl ProbeConfig {
    /// No stacks: no callers either.
    pub const NO_STACKS: u32 = 0;
    /// A thread's waits on one lock inside one operation share the stack walked for the first
    /// of them for [`STACK_REUSE_NS`](crate::STACK_REUSE_NS); every
    /// [`STACK_RECHECK_EVERY`](crate::STACK_RECHECK_EVERY)th reuse walks again to check it. A
    /// walk costs microseconds, more than the rest of the probe together.
    pub const STACKS_REUSED: u32 = 1;
    /// A stack walked for every wait.
    pub const STACKS_EVERY_WAIT: u32 = 2;

    /// No owners read.
    pub const NO_OWNERS: u32 = 0;
    /// The owner's ids and dm-bufio operation.
    pub const OWNERS: u32 = 1;
    /// The owner's ids, dm-bufio operation and kernel stack (bpf_task_from_pid, Linux 6.2+, and
    /// bpf_get_task_stack; tp_btf programs only).
    pub const OWNER_STACKS: u32 = 2;

    /// Every process's waits but the ignored ones.
    pub const ALL_PROCESSES: u32 = 0;
    /// Only the listed processes' waits.
    pub const LISTED_PROCESSES: u32 = 1;

    /// The reader is woken once a quarter of the ring is waiting; it also reads on a timer.
    pub const WAKE_BATCHED: u32 = 0;
    /// The kernel's default: the reader is woken by the first event after it caught up (under
    /// a lock storm, nearly every event: an irq_work, a self-IPI and a context switch each).
    pub const WAKE_EACH: u32 = 1;

    pub const DEFAULT: Self = Self {
        stream_events: 1,
        stacks: Self::STACKS_REUSED,
        processes: Self::ALL_PROCESSES,
        owners: Self::OWNERS,
        lock_types: 0,
        slab_names: 0,
        ring_wakeup: Self::WAKE_BATCHED,
        histograms: 0,
        bufio_ops: 1,
    };
}

/// One dm-bufio operation, entry to return, on one thread.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BufioOpEvent {
    /// Always `EventKind::BufioOp as u32`.
    pub kind: u32,
    /// An [`op`] number.
    pub op: u32,
    pub tid: u32,
    pub tgid: u32,
    /// CPU at return.
    pub cpu: u32,
    /// A [`result`] number.
    pub result: u32,
    /// CLOCK_MONOTONIC at entry.
    pub start_ns: u64,
    pub duration_ns: u64,
    /// Kernel address of the client (`struct dm_bufio_client *`).
    pub client: u64,
    /// The block, for operations on one.
    pub block: u64,
    /// Prefetch and forget_buffers: the block count; partial dirtying: the range start.
    pub arg0: u32,
    /// Partial dirtying: the range end.
    pub arg1: u32,
    /// Time inside dm_bufio_lock waiting for the client mutex (from contention events on it).
    pub lock_wait_ns: u64,
    /// Time the client mutex was held, dm_bufio_lock to dm_bufio_unlock, less the wait.
    pub lock_hold_ns: u64,
    /// CLOCK_MONOTONIC at the operation's first dm_bufio_lock entry: when it first tried for the
    /// client lock (0: it never did).
    pub lock_attempt_ns: u64,
    /// CLOCK_MONOTONIC at the operation's last dm_bufio_unlock entry: when it last let the client
    /// lock go (0: it never did). With one hold, the hold began `lock_hold_ns` before it.
    pub lock_release_ns: u64,
}
assert_layout!(
    BufioOpEvent,
    size = 96,
    align = 8,
    fields = [
        u32, u32, u32, u32, u32, u32, u64, u64, u64, u64, u32, u32, u64, u64, u64, u64
    ]
);

/// A client appeared (created, or first seen in an operation) or went away.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientEvent {
    /// Always `EventKind::Client as u32`.
    pub kind: u32,
    /// [`ClientEvent::CREATED`], [`ClientEvent::SEEN`] or [`ClientEvent::DESTROYED`].
    pub how: u32,
    /// `bdev->bd_dev` in the kernel's encoding (major << 20 | minor).
    pub dev: u32,
    pub block_size: u32,
    /// Tree locks (6.4+), 0 for a single-mutex client.
    pub num_locks: u32,
    /// 1 for a client created with DM_BUFIO_CLIENT_NO_SLEEP (`c->no_sleep`), else 0.
    pub no_sleep: u32,
    pub client: u64,
    pub at_ns: u64,
}
assert_layout!(
    ClientEvent,
    size = 40,
    align = 8,
    fields = [u32, u32, u32, u32, u32, u32, u64, u64]
);

impl ClientEvent {
    pub const CREATED: u32 = 1;
    pub const SEEN: u32 = 2;
    pub const DESTROYED: u32 = 3;

    /// Splits the kernel's dev_t (MINORBITS = 20) into major and minor.
    pub const fn major_minor(dev: u32) -> (u32, u32) {
        (dev >> 20, dev & ((1 << 20) - 1))
    }
}

/// Buckets of the in-kernel wait histograms: bucket i counts waits of [2^i, 2^(i+1)) ns, the
/// last one everything from about 2 s up.
pub const HIST_BUCKETS: usize = 32;

/// Key of the per-CPU wait histograms: one per lock, bufio operation and lock type.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WaitHistKey {
    pub lock_addr: u64,
    /// The [`op`] the waiter was inside, 0 for none.
    pub op: u32,
    /// contention_begin flags.
    pub flags: u32,
}
assert_layout!(WaitHistKey, size = 16, align = 8, fields = [u64, u32, u32]);

/// A log2 histogram of wait times, per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WaitHist {
    pub count: u64,
    pub total_ns: u64,
    pub max_ns: u64,
    pub buckets: [u64; HIST_BUCKETS],
}
assert_layout!(
    WaitHist,
    size = 280,
    align = 8,
    fields = [u64, u64, u64, [u64; HIST_BUCKETS]]
);

impl WaitHist {
    pub const ZERO: Self = Self {
        count: 0,
        total_ns: 0,
        max_ns: 0,
        buckets: [0; HIST_BUCKETS],
    };

    /// The bucket a wait of `ns` falls in: floor(log2(ns)), 0 for 0 and 1, capped at the last.
    #[inline(always)]
    pub const fn bucket(ns: u64) -> usize {
        let log2 = 63u32.saturating_sub(ns.leading_zeros()) as usize;
        if log2 >= HIST_BUCKETS {
            HIST_BUCKETS - 1
        } else {
            log2
        }
    }
}

/// Key of the per-CPU operation counts: one per client and operation kind.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OpStatsKey {
    pub client: u64,
    pub op: u32,
    pub _pad: u32,
}
assert_layout!(OpStatsKey, size = 16, align = 8, fields = [u64, u32, u32]);

/// Operation counts and times, per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct OpStats {
    pub count: u64,
    pub hits: u64,
    pub misses: u64,
    pub errors: u64,
    pub total_ns: u64,
    pub lock_wait_ns: u64,
}
assert_layout!(
    OpStats,
    size = 48,
    align = 8,
    fields = [u64, u64, u64, u64, u64, u64]
);

#[cfg(feature = "user")]
mod user {
    // SAFETY: all are #[repr(C)], Copy, and have no padding (checked by assert_layout!), so any
    // bit pattern of their size is a valid value.
    unsafe impl aya::Pod for super::BufioOffsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ProbeConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::WaitHistKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::WaitHist {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::OpStatsKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::OpStats {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_floor_log2() {
        assert_eq!(WaitHist::bucket(0), 0);
        assert_eq!(WaitHist::bucket(1), 0);
        assert_eq!(WaitHist::bucket(2), 1);
        assert_eq!(WaitHist::bucket(1023), 9);
        assert_eq!(WaitHist::bucket(1024), 10);
        assert_eq!(WaitHist::bucket(u64::MAX), HIST_BUCKETS - 1);
    }

    #[test]
    fn dev_t_splits_as_the_kernel_encodes_it() {
        assert_eq!(ClientEvent::major_minor((253 << 20) | 2), (253, 2));
        assert_eq!(ClientEvent::major_minor(7 << 20), (7, 0));
    }
}
