//! Lock contention: lock:contention_begin and contention_end, paired per waiter in the kernel
//! into one wait, folded into histograms and (when streaming) sent as a [`LockWaitEvent`].

use core::sync::atomic::{Ordering, compiler_fence};

use aya_ebpf::{
    EbpfContext,
    bindings::task_struct,
    bindings::{BPF_F_FAST_STACK_CMP, BPF_NOEXIST},
    helpers::{bpf_get_task_stack, bpf_probe_read_kernel_str_bytes},
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext, tracing::StackIdContext},
};
use bufscope_abi::{
    BufioOffsets, Counter, EventKind, LockClass, LockFlags, LockWaitEvent, OwnerStack,
    PENDING_THREAD_SLOTS, ProbeConfig, STACK_RECHECK_EVERY, STACK_REUSE_NS, SlabName, TaskOffsets,
    WaitHist, WaitHistKey, owner, process,
};

use crate::{
    BUFIO_OFFSETS, PROBE_CONFIG, TASK_OFFSETS, TRACEPOINT_OFFSETS, bufio_ops, current,
    maps::{
        EVENTS, LOCK_CLASSES, OPS, OWNER_STACK_SCRATCH, OWNER_STACKS, PENDING_BY_TID,
        PENDING_SLOTS, PENDING_SPIN, PROCESSES, RQ_LOCK, SLAB_LOCKS, STACK_CACHE, STACKS,
        WAIT_HIST, ZERO_HIST, count, submit_flags,
    },
    notes::count_noted,
};

/// A wait that has begun and not yet ended. In-kernel only.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct PendingWait {
    start_ns: u64,
    lock_addr: u64,
    flags: u32,
    stack_id: i32,
    /// The operation and client the waiter was inside (0 for none).
    op: u32,
    /// The waiter: a spinning wait is paired by CPU, and only its own end closes it.
    tid: u32,
    op_client: u64,
    /// The lock's owner at begin (see [`describe_owner`]).
    owner_state: u32,
    owner_tid: u32,
    owner_tgid: u32,
    owner_op: u32,
    /// The owner's stack in `OWNER_STACKS`, 0 for none.
    owner_stack: u32,
}

impl PendingWait {
    /// No wait: a place taken before the wait is written.
    const EMPTY: PendingWait = PendingWait {
        start_ns: 0,
        lock_addr: 0,
        flags: 0,
        stack_id: -1,
        op: 0,
        tid: 0,
        op_client: 0,
        owner_state: owner::UNKNOWN,
        owner_tid: 0,
        owner_tgid: 0,
        owner_op: 0,
        owner_stack: 0,
    };
}

/// This CPU's spinning wait in flight, in `PENDING_SPIN`. In-kernel only.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct SpinSlot {
    /// Free when its `lock_addr` is 0.
    wait: PendingWait,
    /// Non-zero while contention_end's program runs on this CPU. The kernel skips a program's
    /// run that comes while that program is already running on the CPU, so the end of a
    /// spinning wait that begins meanwhile never arrives: a spinlock contended inside the
    /// program's own ring-buffer reserve (a plain raw spinlock before Linux 6.15, whose slow
    /// path fires the tracepoint) or map update, or in an interrupt in the middle of it. Such a
    /// wait is not kept.
    ending: u32,
    _pad: u32,
}

/// One thread's sleeping-lock wait in flight, in `PENDING_SLOTS`. In-kernel only.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct PendingSlot {
    /// The waiting thread's id, 0 while the slot is free. Claimed with a compare-and-swap at
    /// begin and set back to 0 at end, by the claiming thread only; `wait` is read and written
    /// only by the thread that holds the claim.
    /// (64 bits: the BPF target's only compare-and-swap without ALU32.)
    claimed_by: u64,
    wait: PendingWait,
    memo: ThreadMemo,
}

/// What the probe keeps of one thread's last wait, in its [`PendingSlot`], so that the next
/// wait on the same lock skips the map lookups: read and written only under the slot's claim,
/// and started afresh when another thread claims the slot. In-kernel only.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct ThreadMemo {
    /// Whose memo this is.
    tid: u32,
    /// The operation of the stack below.
    stack_op: u32,
    /// The lock of the stack below; 0 for none.
    stack_lock: u64,
    /// The thread's last stack on `stack_lock` inside `stack_op`, reused as the
    /// `STACK_CACHE` entry would be.
    stack: CachedStack,
    /// The last lock [`classify`] looked at for this thread: named (or not) once already.
    classified_lock: u64,
}

impl PendingSlot {
    /// The slot of thread `tid`; none for tid 0, every CPU's idle task (0 marks a free slot).
    #[inline(always)]
    fn of(tid: u32) -> Option<*mut PendingSlot> {
        if tid == 0 {
            return None;
        }
        PENDING_SLOTS.get_ptr_mut(tid & (PENDING_THREAD_SLOTS - 1))
    }

    /// Claims the slot for `tid` unless another thread holds it: the holder before, 0 when it
    /// was free (and is now `tid`'s).
    #[inline(always)]
    fn claim(slot: *mut PendingSlot, tid: u32) -> u64 {
        let mut seen: u64 = 0;
        // SAFETY: a map value pointer, valid and 8-byte aligned for the map's life. BPF's
        // compare-and-swap (Linux 5.12+): r0 is compared with the word and gets its old value.
        // Rust offers no compare_exchange on this target: LLVM emits the instruction only for
        // CPU v3, and the rest of the object stays v1 for the older verifiers.
        unsafe {
            core::arch::asm!(
                "r0 = cmpxchg_64({word} + 0, r0, {new})",
                word = in(reg) &raw mut (*slot).claimed_by,
                new = in(reg) u64::from(tid),
                inout("r0") seen,
                options(nostack),
            );
        }
        seen
    }

    /// Whose the slot is: a thread id, 0 for no one's.
    #[inline(always)]
    fn holder(slot: *mut PendingSlot) -> u64 {
        // SAFETY: a map value pointer; a torn read cannot happen on an aligned 64-bit word.
        unsafe { core::ptr::read_volatile(&raw const (*slot).claimed_by) }
    }

    /// Lets the slot go. The next claimer may write the wait as soon as it sees 0, so the
    /// fence keeps the caller's reads of the wait before the store.
    #[inline(always)]
    fn release(slot: *mut PendingSlot) {
        compiler_fence(Ordering::SeqCst);
        // SAFETY: as in `holder`; only the holder writes 0.
        unsafe { core::ptr::write_volatile(&raw mut (*slot).claimed_by, 0) };
    }
}

/// Whose stack a [`CachedStack`] is: a thread's waits on one lock inside one operation (the
/// operation tells a dm-bufio get's client-mutex wait from a release's). In-kernel only.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct StackCacheKey {
    lock_addr: u64,
    tid: u32,
    op: u32,
}

/// A walked stack and how it has been reused. In-kernel only.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct CachedStack {
    walked_ns: u64,
    stack_id: i32,
    reuses: u32,
}

impl CachedStack {
    /// No stack yet: the next wait walks.
    const NONE: CachedStack = CachedStack {
        walked_ns: 0,
        stack_id: -1,
        reuses: 0,
    };
}

// The same pairing runs from tp_btf programs (typed arguments, no tracefs) or classic tracepoint
// programs (field offsets from the format file, set before load); user space loads one pair.

#[btf_tracepoint(function = "contention_begin")]
pub fn contention_begin_btf(ctx: BtfTracePointContext) -> i32 {
    let lock: u64 = ctx.arg(0);
    let flags: u32 = ctx.arg(1);
    on_begin(&ctx, lock, flags);
    0
}

#[btf_tracepoint(function = "contention_end")]
pub fn contention_end_btf(ctx: BtfTracePointContext) -> i32 {
    let lock: u64 = ctx.arg(0);
    let ret: i32 = ctx.arg(1);
    on_end(lock, ret);
    0
}

#[tracepoint(category = "lock", name = "contention_begin")]
pub fn contention_begin_tp(ctx: TracePointContext) -> u32 {
    let offsets = TRACEPOINT_OFFSETS.load();
    // SAFETY: the offsets come from this kernel's format file for this tracepoint.
    let fields = unsafe {
        (
            ctx.read_at::<u64>(offsets.begin_lock_addr as usize),
            ctx.read_at::<u32>(offsets.begin_flags as usize),
        )
    };
    if let (Ok(lock), Ok(flags)) = fields {
        on_begin(&ctx, lock, flags);
    }
    0
}

#[tracepoint(category = "lock", name = "contention_end")]
pub fn contention_end_tp(ctx: TracePointContext) -> u32 {
    let offsets = TRACEPOINT_OFFSETS.load();
    // SAFETY: the offsets come from this kernel's format file for this tracepoint.
    let fields = unsafe {
        (
            ctx.read_at::<u64>(offsets.end_lock_addr as usize),
            ctx.read_at::<i32>(offsets.end_ret as usize),
        )
    };
    if let (Ok(lock), Ok(ret)) = fields {
        on_end(lock, ret);
    }
    0
}

/// Where a contention program runs on the waiter's kernel stack, to tell the dm-bufio operation
/// the waiter is inside from one that returned unseen ([`OpStack::outermost_at`](crate::bufio_ops::OpStack::outermost_at)).
trait StackPlace: StackIdContext {
    /// An address on the waiter's kernel stack below the lock function's frame; 0 when unknown.
    fn stack_place(&self) -> u64;
}

impl StackPlace for BtfTracePointContext {
    /// A tp_btf program's context is the argument array its caller (bpf_trace_run*) keeps on
    /// the stack.
    fn stack_place(&self) -> u64 {
        current::stack_position(self.as_ptr())
    }
}

impl StackPlace for TracePointContext {
    /// A classic tracepoint's context is a record in a per-CPU buffer, not on the stack.
    fn stack_place(&self) -> u64 {
        0
    }
}

/// Everything the probe does for a waiter happens before its wait's start is taken, so the wait
/// reported is the kernel's, not the probe's: the operation lookup, the stack walk and the
/// pending wait's place all come first (they delay the waiter like a slower caller would, and
/// never lengthen anyone's hold of the lock, except on a mutex waiter's second begin, which the
/// kernel fires holding the mutex's wait_lock: that one stops at the place, already taken).
/// The place is the thread's slot in an array, claimed with one compare-and-swap, and the slot
/// remembers the thread's last stack and lock, so a thread waiting again on the same lock
/// skips the stack cache's and the slab name's lookups: per run, begin went from ~1,050 to
/// ~650 ns and end from ~550 to ~330 on the pipe storm (2026-11-30).
///
/// Where the lock is still held by another thread once that work is done
/// ([`OwnerWord::held_by_another`]), the waiter would have waited through it anyway, and its
/// wait starts when it arrived. Where it was held at arrival and free once the
/// work was done, the holder let go at some moment in between: the wait starts midway, the
/// estimate that is right on average. Where it was free at arrival, or that cannot be told
/// (spinning locks, rwsems held by readers), it starts when the work was done. Starting every
/// wait after the work instead cut short every wait on a lock held past it: the pipe storm's
/// mutex waits averaged a third of what a minimal bpftrace pairing measured alone.
#[inline(always)]
fn on_begin<C: StackPlace>(ctx: &C, lock_addr: u64, flags: u32) {
    let arrived_ns = current::now_ns();
    count(Counter::BeginSeen);
    let tid = current::tid();
    // Where the wait will be kept, taken first: a thread already waiting (a sleeping mutex
    // waiter's second begin, which the kernel fires holding the mutex's wait_lock) costs only
    // this check.
    let Some(place) = Place::take(tid, lock_addr, flags) else {
        return;
    };
    let config = PROBE_CONFIG.load();
    if !process_wanted() || !type_wanted(&config, flags) {
        count(Counter::Filtered);
        place.give_back(tid);
        return;
    }
    let mut wait = PendingWait {
        lock_addr,
        flags,
        tid,
        ..PendingWait::EMPTY
    };
    // The owner as the waiter arrived, before the rest of the probe's work: under a storm of
    // short holds, a read after it finds most locks already let go.
    let at_arrival = owner_word(lock_addr, flags);
    if config.owners != ProbeConfig::NO_OWNERS {
        describe_owner(at_arrival, &mut wait);
        // Right after: later, the owner may have let go and moved on.
        if config.owners == ProbeConfig::OWNER_STACKS && wait.owner_state == owner::THREAD {
            wait.owner_stack = owner_stack(wait.owner_tid);
        }
    }
    // SAFETY: the memo of this thread's claimed slot, used by this program run only.
    let mut memo = place.memo().map(|memo| unsafe { &mut *memo });
    match memo.as_deref_mut() {
        Some(memo) if memo.classified_lock == lock_addr => {}
        Some(memo) => {
            classify(lock_addr, flags);
            memo.classified_lock = lock_addr;
        }
        None => classify(lock_addr, flags),
    }
    // The frames of the stack the wait runs on: the thread's, or an interrupt's (a no-sleep
    // client's operation in softirq).
    let here = ctx.stack_place();
    if config.bufio_ops != 0
        && let Some(frame) =
            bufio_ops::frames_for_wait(tid, here).and_then(|stack| stack.outermost_at(here))
    {
        wait.op = frame.op;
        wait.op_client = frame.client;
    }
    match config.stacks {
        ProbeConfig::NO_STACKS => {}
        ProbeConfig::STACKS_EVERY_WAIT => wait.stack_id = walk_stack(ctx),
        _ => wait.stack_id = reuse_or_walk_stack(ctx, tid, &wait, memo),
    }
    let pending = match place {
        Place::Spin(pending) => {
            // A spinner's wait starts once the probe is done: its lock keeps no owner to tell.
            // SAFETY: this CPU's slot, taken above.
            unsafe {
                *pending = wait;
                (*pending).start_ns = current::now_ns();
            }
            return;
        }
        Place::Slot(slot) => {
            // SAFETY: the claim makes the slot this thread's until its end lets it go.
            unsafe { &raw mut (*slot).wait }
        }
        Place::Hash(pending) => pending,
    };
    // SAFETY: the thread's own pending wait (its claimed slot, or its own key's value); the
    // start is read after the rest is written, so the probe's work stays outside the wait.
    unsafe {
        *pending = wait;
        (*pending).start_ns = wait_start(lock_addr, flags, at_arrival, arrived_ns);
    }
}

/// Where a wait that has begun is kept until its end. Taken at begin before any other work,
/// given back if the wait is not wanted.
#[derive(Clone, Copy)]
enum Place {
    /// This CPU's `PENDING_SPIN` slot: a spinning wait.
    Spin(*mut PendingWait),
    /// The thread's `PENDING_SLOTS` slot, claimed.
    Slot(*mut PendingSlot),
    /// The thread's entry in `PENDING_BY_TID`, inserted: its slot was another thread's.
    Hash(*mut PendingWait),
}

impl Place {
    /// The place for a wait on `lock_addr` beginning now; `None` (counted) when this thread or
    /// CPU already has a wait pending (a repeated or nested begin: the first one is kept), or
    /// no place is left.
    #[inline(always)]
    fn take(tid: u32, lock_addr: u64, flags: u32) -> Option<Place> {
        let repeated = |pending_lock: u64| {
            count(if pending_lock == lock_addr {
                Counter::RepeatedBegin
            } else {
                Counter::NestedBegin
            });
            None
        };
        if LockFlags(flags).is_pure_spin() {
            let slot = PENDING_SPIN.get_ptr_mut(0)?;
            // SAFETY: this CPU's slot; a spinner cannot be preempted on this CPU mid-wait.
            let slot = unsafe { &mut *slot };
            if slot.ending != 0 {
                // Its end would be skipped (see `SpinSlot::ending`).
                count(Counter::BeginInsideEnd);
                return None;
            }
            let pending = &mut slot.wait;
            if pending.lock_addr != 0 {
                if pending.tid == tid {
                    return repeated(pending.lock_addr);
                }
                // A spinner keeps its CPU until it has the lock: another thread's wait left
                // here ended without its end reaching the program (a run the kernel skipped).
                // Taken over: kept, it held the slot for good, and every later spinning wait
                // on the CPU was dropped as nested (5,214 in one 4-s recording of the pipe
                // storm, each with an end counted as unpaired).
                count(Counter::SpinSlotStale);
            }
            // Marks the slot taken until the wait is written whole.
            pending.lock_addr = lock_addr;
            pending.tid = tid;
            return Some(Place::Spin(pending));
        }
        if let Some(slot) = PendingSlot::of(tid) {
            match PendingSlot::claim(slot, tid) {
                0 => {
                    // SAFETY: claimed: this thread's until its end lets it go.
                    let slot_ref = unsafe { &mut *slot };
                    slot_ref.wait.lock_addr = lock_addr;
                    if slot_ref.memo.tid != tid {
                        slot_ref.memo = ThreadMemo {
                            tid,
                            stack_op: 0,
                            stack_lock: 0,
                            stack: CachedStack::NONE,
                            classified_lock: 0,
                        };
                    }
                    return Some(Place::Slot(slot));
                }
                // SAFETY: this thread's own claim.
                holder if holder == u64::from(tid) => {
                    return repeated(unsafe { (*slot).wait.lock_addr });
                }
                // Another thread's: this wait goes to the hash map.
                _ => {}
            }
        }
        // SAFETY: only this thread writes its own key.
        if let Some(pending) = unsafe { PENDING_BY_TID.get(tid) } {
            return repeated(pending.lock_addr);
        }
        let mut placeholder = PendingWait::EMPTY;
        placeholder.lock_addr = lock_addr;
        placeholder.tid = tid;
        if PENDING_BY_TID
            .insert(tid, placeholder, u64::from(BPF_NOEXIST))
            .is_err()
        {
            count_noted(Counter::PendingFull);
            return None;
        }
        count(Counter::SlotShared);
        PENDING_BY_TID.get_ptr_mut(tid).map(Place::Hash)
    }

    /// The thread's memo: kept only in its claimed slot.
    #[inline(always)]
    fn memo(self) -> Option<*mut ThreadMemo> {
        match self {
            // SAFETY: claimed by this thread.
            Place::Slot(slot) => Some(unsafe { &raw mut (*slot).memo }),
            Place::Spin(_) | Place::Hash(_) => None,
        }
    }

    /// Gives the place back: the wait is not wanted.
    #[inline(always)]
    fn give_back(self, tid: u32) {
        match self {
            // SAFETY: this CPU's slot, taken by this run.
            Place::Spin(pending) => unsafe { (*pending).lock_addr = 0 },
            Place::Slot(slot) => PendingSlot::release(slot),
            Place::Hash(_) => {
                let _ = PENDING_BY_TID.remove(tid);
            }
        }
    }
}

/// When a sleeping wait starts, read once the probe's work for it is done (see [`on_begin`]).
#[inline(always)]
fn wait_start(lock_addr: u64, flags: u32, at_arrival: OwnerWord, arrived_ns: u64) -> u64 {
    let ready_ns = current::now_ns();
    if owner_word(lock_addr, flags).held_by_another() {
        count(Counter::WaitFromArrival);
        arrived_ns
    } else if at_arrival.held_by_another() {
        // Let go while the probe worked, at a moment it cannot tell: the middle, so that
        // neither the probe's time nor the part of the wait it overlapped is lost on average.
        count(Counter::WaitFromMidpoint);
        arrived_ns + (ready_ns - arrived_ns) / 2
    } else {
        ready_ns
    }
}

/// What a sleeping lock's owner word says, read now.
#[derive(Clone, Copy)]
enum OwnerWord {
    /// Not known: another type of lock (spinning locks keep no owner), an offset this kernel
    /// lacks, or a failed read.
    Unknown,
    /// An rwsem held by readers (the word then names only the last reader, even after it left).
    Readers,
    /// A mutex's owner or an rwsem's writer, `task_struct *`; 0 for free.
    Task(u64),
}

impl OwnerWord {
    /// Whether a thread other than the running one holds the lock (a mutex handed off to this
    /// waiter names it). False where that cannot be told.
    #[inline(always)]
    fn held_by_another(self) -> bool {
        matches!(self, OwnerWord::Task(task) if task != 0 && task != current::task())
    }
}

/// The owner word of a contended mutex or rwsem (`mutex.owner`, `rw_semaphore.owner`), its flag
/// bits cleared.
#[inline(always)]
fn owner_word(lock_addr: u64, flags: u32) -> OwnerWord {
    let offsets = TASK_OFFSETS.load();
    let sleeping_rw = LockFlags::READ | LockFlags::WRITE;
    let other = LockFlags::SPIN | LockFlags::MUTEX | LockFlags::RT | LockFlags::PERCPU;
    if flags & LockFlags::MUTEX != 0 {
        match current::read_btf_field::<u64>(lock_addr, offsets.mutex_owner) {
            Some(word) => OwnerWord::Task(word & !TaskOffsets::MUTEX_OWNER_FLAGS),
            None => OwnerWord::Unknown,
        }
    } else if flags & other == 0 && flags & sleeping_rw != 0 {
        match current::read_btf_field::<u64>(lock_addr, offsets.rwsem_owner) {
            Some(word) if word & TaskOffsets::RWSEM_READER_OWNED != 0 => OwnerWord::Readers,
            Some(word) => OwnerWord::Task(word & !TaskOffsets::RWSEM_OWNER_FLAGS),
            None => OwnerWord::Unknown,
        }
    } else {
        OwnerWord::Unknown
    }
}

/// The wait's owner from its lock's owner word at the waiter's begin: free, held by readers, or
/// a thread (its ids and the dm-bufio operation it is inside). Unknown when the word is, or the
/// thread's ids cannot be read.
#[inline(always)]
fn describe_owner(word: OwnerWord, wait: &mut PendingWait) {
    let task = match word {
        OwnerWord::Unknown => return,
        OwnerWord::Readers => {
            wait.owner_state = owner::READERS;
            return;
        }
        OwnerWord::Task(0) => {
            wait.owner_state = owner::FREE;
            return;
        }
        OwnerWord::Task(task) => task,
    };
    // task_struct.pid and .tgid are adjacent pid_t's (checked by user space).
    let Some(ids) = current::read_btf_field::<u64>(task, TASK_OFFSETS.load().task_pid) else {
        return;
    };
    wait.owner_state = owner::THREAD;
    wait.owner_tid = ids as u32;
    wait.owner_tgid = (ids >> 32) as u32;
    // SAFETY: another thread's entry, read while it may change it: at worst an operation that
    // just ended or began, never an out-of-bounds read (the value stays valid map memory).
    if PROBE_CONFIG.load().bufio_ops != 0
        && let Some(stack) = unsafe { OPS.get(wait.owner_tid) }
        && stack.depth > 0
    {
        wait.owner_op = stack.frames[0].op;
    }
}

unsafe extern "C" {
    /// kfunc (Linux 6.2+): the task with this (init namespace) thread id, with a reference
    /// taken, or NULL. Linked like [`bpf_get_kmem_cache`]; NULL where the kernel lacks it.
    fn bpf_task_from_pid(pid: i32) -> *mut task_struct;
    /// kfunc (Linux 6.2+): drops the reference [`bpf_task_from_pid`] took.
    fn bpf_task_release(task: *mut task_struct);
}

/// The owner's kernel stack, stored in `OWNER_STACKS`; its key, or 0 when none was taken or
/// stored (counted). The unwinder walks only a task that is off its CPU (a sleeping or
/// preempted owner: the case where "what is the holder doing" has an answer); a running
/// owner's stack comes back empty. Runs before the wait's start is taken, like the rest.
#[inline(always)]
fn owner_stack(owner_tid: u32) -> u32 {
    let Some(stack) = OWNER_STACK_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: per-CPU scratch, used by this program run only.
    let stack = unsafe { &mut *stack };
    // SAFETY: a kfunc taking any id; the reference it returns is released below on every path.
    let task = unsafe { bpf_task_from_pid(owner_tid as i32) };
    if task.is_null() {
        count(Counter::OwnerStackNone);
        return 0;
    }
    // SAFETY: a trusted task pointer (the kfunc's reference); the helper writes at most the
    // buffer's size into the per-CPU scratch.
    let bytes = unsafe {
        bpf_get_task_stack(
            task,
            stack.frames.as_mut_ptr().cast(),
            core::mem::size_of_val(&stack.frames) as u32,
            0,
        )
    };
    // SAFETY: the reference bpf_task_from_pid took.
    unsafe { bpf_task_release(task) };
    if bytes <= 0 {
        count(Counter::OwnerStackNone);
        return 0;
    }
    stack.len = (bytes as u32 / 8).min(OwnerStack::DEPTH as u32);
    let key = stack.hash();
    if OWNER_STACKS
        .insert(key, *stack, u64::from(BPF_NOEXIST))
        .is_ok()
    {
        return key;
    }
    // Already there: the same stack seen before, or another with the same hash.
    // SAFETY: a plain read of a value never changed once inserted.
    match unsafe { OWNER_STACKS.get(key) } {
        Some(stored) if stored.len == stack.len && stored.frames == stack.frames => key,
        _ => {
            count_noted(Counter::OwnerStackLost);
            0
        }
    }
}

#[inline(always)]
fn walk_stack<C: StackIdContext>(ctx: &C) -> i32 {
    match ctx.get_stackid(&STACKS, u64::from(BPF_F_FAST_STACK_CMP)) {
        Ok(id) => id as i32,
        Err(_) => {
            count_noted(Counter::StackLost);
            -1
        }
    }
}

/// The stack this thread's last wait on the same lock inside the same operation walked, if that
/// was less than [`STACK_REUSE_NS`] ago; else, and every [`STACK_RECHECK_EVERY`]th reuse, a new
/// walk, compared with the one it replaces so that wrong reuses are counted, not guessed at.
/// Looked up in the thread's memo when its last wait was on the same lock inside the same
/// operation, else in `STACK_CACHE` (and remembered in the memo for the next wait).
#[inline(always)]
fn reuse_or_walk_stack<C: StackIdContext>(
    ctx: &C,
    tid: u32,
    wait: &PendingWait,
    mut memo: Option<&mut ThreadMemo>,
) -> i32 {
    let now = current::now_ns();
    if let Some(memo) = memo.as_deref_mut()
        && memo.stack_lock == wait.lock_addr
        && memo.stack_op == wait.op
    {
        return reuse_or_walk(ctx, &mut memo.stack, now);
    }
    let key = StackCacheKey {
        lock_addr: wait.lock_addr,
        tid,
        op: wait.op,
    };
    let (id, entry) = if let Some(cached) = STACK_CACHE.get_ptr_mut(key) {
        // SAFETY: only this thread reads and writes its own key.
        let cached = unsafe { &mut *cached };
        (reuse_or_walk(ctx, cached, now), *cached)
    } else {
        let mut fresh = CachedStack::NONE;
        let id = reuse_or_walk(ctx, &mut fresh, now);
        let _ = STACK_CACHE.insert(key, fresh, 0);
        (id, fresh)
    };
    if let Some(memo) = memo {
        memo.stack_lock = wait.lock_addr;
        memo.stack_op = wait.op;
        memo.stack = entry;
    }
    id
}

/// The cached stack's id, or a new walk's (stored in `cached`) when it is stale, missing, or
/// due for its check.
#[inline(always)]
fn reuse_or_walk<C: StackIdContext>(ctx: &C, cached: &mut CachedStack, now: u64) -> i32 {
    let fresh = now.saturating_sub(cached.walked_ns) < STACK_REUSE_NS;
    if fresh && cached.stack_id >= 0 && !cached.reuses.is_multiple_of(STACK_RECHECK_EVERY) {
        cached.reuses += 1;
        count(Counter::StackReused);
        return cached.stack_id;
    }
    let id = walk_stack(ctx);
    if cached.stack_id >= 0 && id >= 0 {
        count(Counter::StackRechecked);
        if id != cached.stack_id {
            count(Counter::StackRecheckMismatch);
        }
    }
    *cached = CachedStack {
        walked_ns: now,
        stack_id: id,
        reuses: 1,
    };
    id
}

/// The wait's end is taken first: pairing, histograms and the event are the probe's work, and
/// the waiter (now the lock's holder) pays for them after its wait.
#[inline(always)]
fn on_end(lock_addr: u64, ret: i32) {
    let end_ns = current::now_ns();
    count(Counter::EndSeen);
    let Some(spin) = PENDING_SPIN.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot, as in on_begin; `ending` is cleared below on every path.
    unsafe { (*spin).ending = 1 };
    pair_end(spin, end_ns, lock_addr, ret);
    // SAFETY: as above.
    unsafe { (*spin).ending = 0 };
}

/// Finds the wait `on_end`'s end closes, and emits it.
#[inline(always)]
fn pair_end(spin: *mut SpinSlot, end_ns: u64, lock_addr: u64, ret: i32) {
    let tid = current::tid();
    // SAFETY: per-CPU slot, as in on_begin.
    let slot = unsafe { &mut (*spin).wait };
    if slot.lock_addr != 0 && slot.lock_addr == lock_addr && slot.tid == tid {
        let wait = *slot;
        slot.lock_addr = 0;
        emit(&wait, end_ns, ret);
        return;
    }
    if let Some(slot) = PendingSlot::of(tid)
        && PendingSlot::holder(slot) == u64::from(tid)
    {
        // SAFETY: this thread's own claim.
        let wait = unsafe { (*slot).wait };
        // As with the hash map: another lock's end leaves the wait pending.
        if wait.lock_addr != lock_addr {
            count(Counter::MismatchedEnd);
            return;
        }
        PendingSlot::release(slot);
        emit(&wait, end_ns, ret);
        return;
    }
    // SAFETY: only this thread writes its own key.
    match unsafe { PENDING_BY_TID.get(tid) } {
        Some(pending) if pending.lock_addr == lock_addr => {
            let wait = *pending;
            let _ = PENDING_BY_TID.remove(tid);
            emit(&wait, end_ns, ret);
        }
        Some(_) => count(Counter::MismatchedEnd),
        // A left-out process's begin was never paired: its end is no loss. Looked up only
        // here, so kept waits pay nothing for the filter at their end. An end does not say its
        // lock's type: with a type filter, no unpaired end is counted.
        None if !process_wanted() || PROBE_CONFIG.load().lock_types != 0 => {}
        None => count(Counter::UnpairedEnd),
    }
}

/// Names the lock where the kernel lets the program tell what it is: the waiter's own
/// process's or CPU's ([`classify_own`]), else the slab cache it lives in ([`classify_slab`]).
#[inline(always)]
fn classify(lock_addr: u64, flags: u32) {
    let offsets = TASK_OFFSETS.load();
    if !classify_own(&offsets, lock_addr, flags) && PROBE_CONFIG.load().slab_names != 0 {
        classify_slab(&offsets, lock_addr);
    }
}

/// Notes the lock as its process's mmap_lock (an rwsem) or siglock (a spinlock), or as this
/// CPU's runqueue lock, when it is the waiter's own: a read of the task's pointer (the runqueue's
/// is kept per CPU after the first), one compare, and a map insert the first time. True when it
/// is one of them.
#[inline(always)]
fn classify_own(offsets: &TaskOffsets, lock_addr: u64, flags: u32) -> bool {
    let kinds = LockFlags::SPIN | LockFlags::MUTEX | LockFlags::RT | LockFlags::PERCPU;
    let (class, pointer, field) = if flags & kinds == 0 {
        (LockClass::MMAP_LOCK, offsets.task_mm, offsets.mm_mmap_lock)
    } else if flags & (kinds | LockFlags::READ | LockFlags::WRITE) == LockFlags::SPIN {
        if this_rq_lock(offsets) == Some(lock_addr) {
            note_class(lock_addr, LockClass::RQ_LOCK, current::cpu());
            return true;
        }
        (
            LockClass::SIGLOCK,
            offsets.task_sighand,
            offsets.sighand_siglock,
        )
    } else {
        return false;
    };
    if field == TaskOffsets::ABSENT {
        return false;
    }
    let Some(owner) = current::read_field::<u64>(current::task(), pointer) else {
        return false;
    };
    if owner == 0 || lock_addr != owner + u64::from(field) {
        return false;
    }
    let (_, tgid) = current::tid_tgid();
    note_class(lock_addr, class, tgid);
    true
}

unsafe extern "C" {
    /// kfunc (Linux 6.13+): the slab cache of the object at `addr`, NULL for an address in no
    /// slab object. User space links the call to this kernel's BTF id, or turns it into a NULL
    /// result where the kernel lacks it (`probes/kfunc.rs` in the user-space crate).
    fn bpf_get_kmem_cache(addr: u64) -> *const core::ffi::c_void;
}

/// Notes the slab cache the lock lives in, once per lock: one map lookup per wait on a lock not
/// named otherwise; the first wait on a lock asks the kernel and reads the cache's name.
#[inline(always)]
fn classify_slab(offsets: &TaskOffsets, lock_addr: u64) {
    // SAFETY: a plain read; the value is only compared against None.
    if unsafe { SLAB_LOCKS.get(lock_addr) }.is_some() {
        return;
    }
    let mut slab = SlabName {
        name: [0; SlabName::LEN],
    };
    // SAFETY: a kfunc taking any address; NULL when it is in no slab object.
    let cache = unsafe { bpf_get_kmem_cache(lock_addr) };
    if !cache.is_null()
        && let Some(name) = current::read_btf_field::<u64>(cache as u64, offsets.kmem_cache_name)
    {
        // SAFETY: bpf_probe_read_kernel_str checks the address and fails cleanly, writing at
        // most the buffer's length.
        let _ = unsafe { bpf_probe_read_kernel_str_bytes(name as *const u8, &mut slab.name) };
    }
    let _ = SLAB_LOCKS.insert(lock_addr, slab, 0);
}

/// Notes what the lock at `lock_addr` is, the first time only.
#[inline(always)]
pub(crate) fn note_class(lock_addr: u64, class: u32, whose: u32) {
    // SAFETY: a plain read; the value is only compared against None.
    if unsafe { LOCK_CLASSES.get(lock_addr) }.is_some() {
        return;
    }
    let _ = LOCK_CLASSES.insert(lock_addr, LockClass { class, whose }, 0);
}

/// This CPU's runqueue lock: from the running task's CFS runqueue the first time (checked to be
/// this CPU's), then from the per-CPU slot. `None` without the offsets (a kernel without
/// CONFIG_FAIR_GROUP_SCHED has no `cfs_rq.rq`).
#[inline(always)]
fn this_rq_lock(offsets: &TaskOffsets) -> Option<u64> {
    let slot = RQ_LOCK.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot; programs on one CPU do not interleave on it.
    let slot = unsafe { &mut *slot };
    if *slot != 0 {
        return Some(*slot);
    }
    if offsets.rq_lock == TaskOffsets::ABSENT {
        return None;
    }
    let cfs_rq: u64 = current::read_field(current::task(), offsets.task_cfs_rq)?;
    let rq: u64 = current::read_field(cfs_rq, offsets.cfs_rq_rq)?;
    let cpu: i32 = current::read_field(rq, offsets.rq_cpu)?;
    if rq == 0 || cpu as u32 != current::cpu() {
        return None;
    }
    *slot = rq + u64::from(offsets.rq_lock);
    Some(*slot)
}

/// Whether waits on this type of lock are kept (see `ProbeConfig::lock_types`).
#[inline(always)]
fn type_wanted(config: &ProbeConfig, flags: u32) -> bool {
    config.lock_types == 0 || config.lock_types & (1 << LockFlags(flags).type_index()) != 0
}

/// Whether the running process's waits are kept (see `ProbeConfig::processes`).
#[inline(always)]
fn process_wanted() -> bool {
    let (_, tgid) = current::tid_tgid();
    // SAFETY: a plain read of a value user space writes whole.
    match unsafe { PROCESSES.get(tgid) } {
        Some(&process::IGNORE) => false,
        Some(_) => true,
        None => PROBE_CONFIG.load().processes != ProbeConfig::LISTED_PROCESSES,
    }
}

#[inline(always)]
fn emit(wait: &PendingWait, end_ns: u64, ret: i32) {
    let wait_ns = end_ns.saturating_sub(wait.start_ns);
    let config = PROBE_CONFIG.load();
    if config.histograms != 0 {
        add_to_histogram(wait, wait_ns);
    }
    if wait.op_client != 0 {
        charge_client_lock_wait(wait, wait_ns, end_ns);
    }
    if config.stream_events == 0 {
        return;
    }
    let Some(mut entry) = EVENTS.reserve::<LockWaitEvent>(0) else {
        count_noted(Counter::ReserveFailed);
        return;
    };
    let (tid, tgid) = current::tid_tgid();
    entry.write(LockWaitEvent {
        kind: EventKind::LockWait as u32,
        flags: wait.flags,
        tid,
        tgid,
        cpu: current::cpu(),
        ret,
        start_ns: wait.start_ns,
        wait_ns,
        lock_addr: wait.lock_addr,
        op_client: wait.op_client,
        stack_id: wait.stack_id,
        op: wait.op,
        owner_state: wait.owner_state,
        owner_tid: wait.owner_tid,
        owner_tgid: wait.owner_tgid,
        owner_op: wait.owner_op,
        owner_stack: wait.owner_stack,
        _pad: 0,
    });
    entry.submit(submit_flags::<LockWaitEvent>());
    count(Counter::Submitted);
}

#[inline(always)]
fn add_to_histogram(wait: &PendingWait, wait_ns: u64) {
    let key = WaitHistKey {
        lock_addr: wait.lock_addr,
        op: wait.op,
        flags: wait.flags,
    };
    let hist = match WAIT_HIST.get_ptr_mut(key) {
        Some(hist) => hist,
        None => {
            let Some(zero) = ZERO_HIST.get_ptr(0) else {
                return;
            };
            // SAFETY: a map value pointer, valid for the map's value size.
            #[expect(
                clippy::needless_borrows_for_generic_args,
                reason = "a copy would not fit on the 512-byte BPF stack"
            )]
            if WAIT_HIST.insert(key, unsafe { &*zero }, 0).is_err() {
                count_noted(Counter::HistFull);
                return;
            }
            let Some(hist) = WAIT_HIST.get_ptr_mut(key) else {
                return;
            };
            hist
        }
    };
    // SAFETY: this CPU's copy of the value; programs on one CPU do not interleave on it.
    let hist = unsafe { &mut *hist };
    hist.count += 1;
    hist.total_ns += wait_ns;
    if wait_ns > hist.max_ns {
        hist.max_ns = wait_ns;
    }
    if let Some(bucket) = hist.buckets.get_mut(WaitHist::bucket(wait_ns)) {
        *bucket += 1;
    }
}

/// A wait on the client lock of the operation in progress (its mutex, or a no-sleep client's
/// spinlock) counts toward its lock wait, and its hold of the lock starts at the wait's end.
#[inline(always)]
fn charge_client_lock_wait(wait: &PendingWait, wait_ns: u64, end_ns: u64) {
    let offsets = BUFIO_OFFSETS.load();
    let is_client_lock = |offset: u32| {
        offset != BufioOffsets::ABSENT && wait.lock_addr == wait.op_client + u64::from(offset)
    };
    if !is_client_lock(offsets.client_lock) && !is_client_lock(offsets.client_spinlock) {
        return;
    }
    let tid = current::tid();
    if let Some(stack) = OPS.get_ptr_mut(tid) {
        // SAFETY: only this thread writes its own frames.
        let stack = unsafe { &mut *stack };
        if stack.depth > 0 && stack.frames[0].client == wait.op_client {
            stack.frames[0].lock_wait_ns += wait_ns;
            bufio_ops::client_lock_acquired(&mut stack.frames[0], end_ns);
        }
    }
}
