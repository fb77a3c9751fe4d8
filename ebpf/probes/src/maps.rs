//! Every map of the object: what each holds, which programs write it and who reads it.
//! Map names are the statics' names; user space finds them through `bufscope_abi::names`.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, BPF_RB_RING_SIZE},
    btf_maps::StackTrace,
    macros::{btf_map, map},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use bufscope_abi::{
    Counter, LockClass, MAX_STACK_FRAMES, OpStats, OpStatsKey, OwnerStack, PENDING_THREAD_SLOTS,
    ProbeConfig, SlabName, WaitHist, WaitHistKey, ZoneOffsets,
};

use crate::{
    PROBE_CONFIG,
    bufio_ops::OpStack,
    contention::{CachedStack, PendingSlot, PendingWait, SpinSlot, StackCacheKey},
};

/// Events to user space. Sized by user space at load time (`--ringbuf-size`, 16 MiB by default).
/// Written by contention_end (lock waits) and the dm-bufio programs (operations, clients); read
/// by user space's ring-buffer reader. Submitted with [`submit_flags`].
#[map]
pub(crate) static EVENTS: RingBuf = RingBuf::with_byte_size(16 << 20, 0);

/// How an event of type `T` is submitted to [`EVENTS`]: by default
/// ([`ProbeConfig::WAKE_BATCHED`]) without waking the reader, but for the one event that fills
/// the ring past a quarter; user space reads on a short timer besides (`probes::stream`).
///
/// The kernel's default wakes the reader whenever it has caught up, which at a moderate event
/// rate is nearly every event: each wakeup queues an irq_work inside the program, raises a
/// self-IPI and schedules the reader onto a CPU the workload wanted. A holder was seen
/// preempted inside `bpf_ringbuf_submit` → `irq_work_queue` while it held dm-thin's root_lock
/// (7.3 guest, 2026-11-28): the probe lengthened the very hold its waiters measured. Only the
/// crossing event forces a wakeup: forcing every event past the mark, while the reader is
/// still asleep, cost 220 ns more per contention event than the kernel's default in the pipe
/// storm bench.
#[inline(always)]
pub(crate) fn submit_flags<T>() -> u64 {
    if PROBE_CONFIG.load().ring_wakeup == ProbeConfig::WAKE_EACH {
        return 0;
    }
    // What the event takes in the ring: an 8-byte header, rounded up to 8 bytes.
    let taken = ((size_of::<T>() as u64 + 8) + 7) & !7;
    let waiting = EVENTS.query(BPF_RB_AVAIL_DATA.into());
    let mark = EVENTS.query(BPF_RB_RING_SIZE.into()) / 4;
    if waiting >= mark && waiting < mark + taken {
        BPF_RB_FORCE_WAKEUP.into()
    } else {
        BPF_RB_NO_WAKEUP.into()
    }
}

/// Sleeping-lock waits in flight, by thread id, for a thread whose [`PENDING_SLOTS`] slot
/// another thread holds (or the idle task, tid 0). A sleeping waiter can migrate between CPUs,
/// so its begin and end meet only through the thread id. contention_begin inserts,
/// contention_end takes out; in-kernel only.
#[map]
pub(crate) static PENDING_BY_TID: HashMap<u32, PendingWait> = HashMap::with_max_entries(16384, 0);

/// Sleeping-lock waits in flight, by thread: slot `tid % PENDING_THREAD_SLOTS` (see
/// [`PendingSlot`](crate::contention::PendingSlot)), claimed by the waiter at begin and let go
/// at its end. An array slot costs a compare-and-swap where the hash map's insert, lookups and
/// delete cost a few hundred nanoseconds a wait; a thread whose slot another holds falls back to
/// [`PENDING_BY_TID`]. In-kernel only.
#[map]
pub(crate) static PENDING_SLOTS: Array<PendingSlot> =
    Array::with_max_entries(PENDING_THREAD_SLOTS, 0);

/// Spinning-lock waits in flight, by CPU: a spinner keeps its CPU, and a per-CPU slot avoids the
/// hash map's own locking in the middle of someone else's spinlock slow path (perf does the same).
/// A spinlock contended inside a sleeping lock's slow path (the mutex wait_lock) lands here while
/// the sleeping wait stays pending in the hash map, so both pair correctly. In-kernel only.
#[map]
pub(crate) static PENDING_SPIN: PerCpuArray<SpinSlot> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU [`Counter`]s of what was seen, sent and lost. Every program adds to it through
/// [`count`]; user space sums the CPUs for its loss report.
#[map]
pub(crate) static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

/// Kernel stacks at contention_begin, by the id events carry, [`MAX_STACK_FRAMES`] deep (the
/// kernel walks no deeper; a BTF map, since the legacy one is fixed at 127 frames). Written by
/// contention_begin when user space asked for stacks; read by user space to symbolise the
/// events' stack ids.
#[btf_map]
pub(crate) static STACKS: StackTrace<8192, 0, MAX_STACK_FRAMES> = StackTrace::new();

/// The stack last walked for a thread's wait on a lock inside an operation, for its next waits
/// to reuse (see `ProbeConfig::STACKS_REUSED`), where the thread's slot does not remember it
/// (its last wait was on another lock or operation). contention_begin reads and writes it;
/// LRU, so exited threads and idle locks age out. In-kernel only.
#[map]
pub(crate) static STACK_CACHE: LruHashMap<StackCacheKey, CachedStack> =
    LruHashMap::with_max_entries(16384, 0);

/// Live wait histograms per (lock, operation, lock type). With `ProbeConfig::histograms`,
/// contention_end folds every paired wait in; the headless live view reads it.
#[map]
pub(crate) static WAIT_HIST: PerCpuHashMap<WaitHistKey, WaitHist> =
    PerCpuHashMap::with_max_entries(4096, 0);

/// Live operation counts per (client, operation). With `ProbeConfig::histograms`, the
/// operation return program adds every outermost operation; the headless live view reads it.
#[map]
pub(crate) static OP_STATS: PerCpuHashMap<OpStatsKey, OpStats> =
    PerCpuHashMap::with_max_entries(1024, 0);

/// Operation frames by thread id; LRU, so threads that exit mid-operation age out. The dm-bufio
/// programs push, pop and update frames; contention_begin reads which operation a waiter is in,
/// and contention_end charges client-mutex waits to it. In-kernel only.
#[map]
pub(crate) static OPS: LruHashMap<u32, OpStack> = LruHashMap::with_max_entries(16384, 0);

/// What to do with each process's lock waits, by tgid ([`bufscope_abi::process`] values):
/// written by user space (bufscope's own processes, `--pid`), read by contention_begin and, for
/// an end without a begin, contention_end.
#[map]
pub(crate) static PROCESSES: HashMap<u32, u32> = HashMap::with_max_entries(4096, 0);

/// Locks found to be a process's mmap_lock or siglock, by address: contention_begin inserts one
/// the first time a waiter waits on its own process's lock; user space reads it to name them.
/// LRU, so the locks of processes long gone age out.
#[map]
pub(crate) static LOCK_CLASSES: LruHashMap<u64, LockClass> = LruHashMap::with_max_entries(4096, 0);

/// The slab cache of each lock contention_begin met that is named no other way (empty for a
/// lock in no slab object), so the kernel is asked once per lock. Written by contention_begin
/// where the kernel has bpf_get_kmem_cache; read by user space to name the locks ("&dentry").
#[map]
pub(crate) static SLAB_LOCKS: LruHashMap<u64, SlabName> = LruHashMap::with_max_entries(4096, 0);

/// Lock owners' kernel stacks (`--owner-stacks`), by [`OwnerStack::hash`]: written by
/// contention_begin, read by user space for the waits that name them. Never evicted: a full map
/// loses new stacks (counted as `owner_stack_lost`), never one a recorded wait points to.
#[map]
pub(crate) static OWNER_STACKS: HashMap<u32, OwnerStack> = HashMap::with_max_entries(8192, 0);

/// Where contention_begin builds an owner stack: 208 bytes do not fit on the BPF stack beside
/// the rest. In-kernel only.
#[map]
pub(crate) static OWNER_STACK_SCRATCH: PerCpuArray<OwnerStack> =
    PerCpuArray::with_max_entries(1, 0);

/// Each memory node's `struct pglist_data` address by node id, 0 where not found: written by
/// `find_nodes`, read by user space to name the zones' locks.
#[map]
pub(crate) static NODES: Array<u64> = Array::with_max_entries(ZoneOffsets::MAX_NODES, 0);

/// This CPU's runqueue lock address, found once from the running task's runqueue (see
/// `contention::classify`); 0 until then. In-kernel only.
#[map]
pub(crate) static RQ_LOCK: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Clients already announced to user space. The dm-bufio programs insert a client when they
/// announce it and remove it when it is destroyed (or its announcement was lost); in-kernel only.
#[map]
pub(crate) static CLIENTS: HashMap<u64, u32> = HashMap::with_max_entries(1024, 0);

/// dm-bufio operations running in an interrupt on top of a thread that is inside one of its own,
/// or on top of a CPU's idle task (a no-sleep client's dm-verity work, in softirq): one frame
/// stack per CPU, so the thread's frames stay as they are, and the idle tasks (all thread 0)
/// do not share one. Written and read by the dm-bufio programs only.
#[map]
pub(crate) static IRQ_OPS: PerCpuArray<OpStack> = PerCpuArray::with_max_entries(1, 0);

/// A per-CPU word for [`crate::current::stack_position`]. In-kernel only.
#[map]
pub(crate) static SCRATCH: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Zeroed values to insert from: the BPF stack (512 bytes) is too small to build them on.
/// Never written.
#[map]
pub(crate) static ZERO_OPS: PerCpuArray<OpStack> = PerCpuArray::with_max_entries(1, 0);
#[map]
pub(crate) static ZERO_HIST: PerCpuArray<WaitHist> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
pub(crate) fn count(counter: Counter) {
    if let Some(value) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot; programs on one CPU do not preempt each other for this map.
        unsafe { *value += 1 };
    }
}

/// Adds one to `counter`; true when it was the first on this CPU (see [`crate::notes`]).
#[inline(always)]
pub(crate) fn count_first(counter: Counter) -> bool {
    let Some(value) = COUNTERS.get_ptr_mut(counter as u32) else {
        return false;
    };
    // SAFETY: per-CPU slot; programs on one CPU do not preempt each other for this map.
    unsafe {
        *value += 1;
        *value == 1
    }
}
