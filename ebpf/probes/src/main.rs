//! bufscope's eBPF programs: lock contention, paired per thread in the kernel.
//!
//! `lock:contention_begin` and `lock:contention_end` fire in the slow paths of every kernel lock.
//! A wait is paired from its first begin to its end and sent to user space as one
//! [`LockWaitEvent`]; nested, repeated, unpaired and lost events are counted in per-CPU counters,
//! never turned into durations. The same logic runs from tp_btf programs (typed arguments, no
//! tracefs) or classic tracepoint programs (field offsets from the format file, set before load).
//!
//! dm-bufio operations are seen through kprobes on its exported functions and one kretprobe
//! program on all of them (dm-bufio is a module, and aya cannot attach fentry to modules). Each
//! thread keeps a small stack of operation frames; a return is matched to its entry by the
//! function address, so a return the kernel failed to deliver (no kretprobe instance free) costs
//! one operation, counted, and never mis-pairs the ones after it. A lock wait that happens inside
//! an operation carries that operation and its client; waits are also folded into per-CPU log2
//! histograms per (lock, operation), which a live view reads without any event streaming.

#![no_std]
#![no_main]

use aya_ebpf::{
    EbpfContext, Global,
    bindings::{BPF_F_FAST_STACK_CMP, BPF_NOEXIST},
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_ktime_get_ns,
        bpf_probe_read_kernel, generated::bpf_get_func_ip,
    },
    macros::{btf_tracepoint, kprobe, kretprobe, map, tracepoint},
    maps::{HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf, StackTrace},
    programs::{
        BtfTracePointContext, ProbeContext, RetProbeContext, TracePointContext,
        tracing::StackIdContext,
    },
};
use bufscope_abi::{
    BufioOffsets, BufioOpEvent, ClientEvent, Counter, EventKind, LockFlags, LockWaitEvent, OpStats,
    OpStatsKey, ProbeConfig, TracepointOffsets, WaitHist, WaitHistKey, op, result,
};

/// A wait that has begun and not yet ended. In-kernel only.
#[repr(C)]
#[derive(Clone, Copy)]
struct PendingWait {
    start_ns: u64,
    lock_addr: u64,
    flags: u32,
    stack_id: i32,
    /// The operation and client the waiter was inside (0 for none).
    op: u32,
    _pad: u32,
    op_client: u64,
}

/// One dm-bufio operation in progress on a thread. In-kernel only.
#[repr(C)]
#[derive(Clone, Copy)]
struct OpFrame {
    /// Address of the probed function: a return is matched to its entry by it.
    func_ip: u64,
    start_ns: u64,
    client: u64,
    block: u64,
    /// dm_bufio_lock entry time while this operation holds (or waits for) the client mutex.
    lock_enter_ns: u64,
    /// `lock_wait_ns` as it was at that dm_bufio_lock entry.
    lock_wait_at_enter: u64,
    lock_wait_ns: u64,
    lock_hold_ns: u64,
    op: u32,
    /// result::MISS once the miss-only function ran inside this operation.
    result: u32,
    arg0: u32,
    arg1: u32,
}

/// Operations nested deeper than this on one thread are ignored (counted).
const MAX_FRAMES: usize = 4;

/// A thread's operation frames; `frames[0]` is the operation its caller made.
#[repr(C)]
#[derive(Clone, Copy)]
struct OpStack {
    depth: u32,
    _pad: u32,
    frames: [OpFrame; MAX_FRAMES],
}

/// Events to user space. Sized by user space at load time when it wants a different size.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

/// Sleeping-lock waits in flight, by thread id. A sleeping waiter can migrate between CPUs, so
/// its begin and end meet only through the thread id.
#[map]
static PENDING_BY_TID: HashMap<u32, PendingWait> = HashMap::with_max_entries(16384, 0);

/// Spinning-lock waits in flight, by CPU: a spinner keeps its CPU, and a per-CPU slot avoids the
/// hash map's own locking in the middle of someone else's spinlock slow path (perf does the same).
/// A spinlock contended inside a sleeping lock's slow path (the mutex wait_lock) lands here while
/// the sleeping wait stays pending in the hash map, so both pair correctly.
#[map]
static PENDING_SPIN: PerCpuArray<PendingWait> = PerCpuArray::with_max_entries(1, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

/// Kernel stacks at contention_begin, by the id events carry.
#[map]
static STACKS: StackTrace = StackTrace::with_max_entries(8192, 0);

/// Live wait histograms per (lock, operation, lock type).
#[map]
static WAIT_HIST: PerCpuHashMap<WaitHistKey, WaitHist> = PerCpuHashMap::with_max_entries(4096, 0);

/// Live operation counts per (client, operation).
#[map]
static OP_STATS: PerCpuHashMap<OpStatsKey, OpStats> = PerCpuHashMap::with_max_entries(1024, 0);

/// Operation frames by thread id; LRU, so threads that exit mid-operation age out.
#[map]
static OPS: LruHashMap<u32, OpStack> = LruHashMap::with_max_entries(16384, 0);

/// Clients already announced to user space.
#[map]
static CLIENTS: HashMap<u64, u32> = HashMap::with_max_entries(1024, 0);

/// Zeroed values to insert from: the BPF stack (512 bytes) is too small to build them on.
#[map]
static ZERO_OPS: PerCpuArray<OpStack> = PerCpuArray::with_max_entries(1, 0);
#[map]
static ZERO_HIST: PerCpuArray<WaitHist> = PerCpuArray::with_max_entries(1, 0);

#[unsafe(no_mangle)]
static TRACEPOINT_OFFSETS: Global<TracepointOffsets> = Global::new(TracepointOffsets::USUAL);

#[unsafe(no_mangle)]
static PROBE_CONFIG: Global<ProbeConfig> = Global::new(ProbeConfig::DEFAULT);

#[unsafe(no_mangle)]
static BUFIO_OFFSETS: Global<BufioOffsets> = Global::new(BufioOffsets::UNSET);

#[inline(always)]
fn count(counter: Counter) {
    if let Some(value) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot; programs on one CPU do not preempt each other for this map.
        unsafe { *value += 1 };
    }
}

#[inline(always)]
fn on_begin<C: StackIdContext>(ctx: &C, lock_addr: u64, flags: u32) {
    count(Counter::BeginSeen);
    // SAFETY: helper without preconditions.
    let start_ns = unsafe { bpf_ktime_get_ns() };
    let tid = bpf_get_current_pid_tgid() as u32;
    let mut wait = PendingWait {
        start_ns,
        lock_addr,
        flags,
        stack_id: -1,
        op: 0,
        _pad: 0,
        op_client: 0,
    };
    // SAFETY: only this thread writes its own key.
    if let Some(stack) = unsafe { OPS.get(tid) }
        && stack.depth > 0
    {
        wait.op = stack.frames[0].op;
        wait.op_client = stack.frames[0].client;
    }
    if PROBE_CONFIG.load().stacks != 0 {
        match ctx.get_stackid(&STACKS, u64::from(BPF_F_FAST_STACK_CMP)) {
            Ok(id) => wait.stack_id = id as i32,
            Err(_) => count(Counter::StackLost),
        }
    }
    if LockFlags(flags).is_pure_spin() {
        let Some(slot) = PENDING_SPIN.get_ptr_mut(0) else {
            return;
        };
        // SAFETY: per-CPU slot, and a spinner cannot be preempted on this CPU mid-wait.
        let slot = unsafe { &mut *slot };
        if slot.lock_addr != 0 {
            count(if slot.lock_addr == lock_addr {
                Counter::RepeatedBegin
            } else {
                Counter::NestedBegin
            });
            return;
        }
        *slot = wait;
        return;
    }
    // SAFETY: only this thread writes its own key.
    if let Some(pending) = unsafe { PENDING_BY_TID.get(tid) } {
        count(if pending.lock_addr == lock_addr {
            Counter::RepeatedBegin
        } else {
            Counter::NestedBegin
        });
        return;
    }
    if PENDING_BY_TID
        .insert(tid, wait, u64::from(BPF_NOEXIST))
        .is_err()
    {
        count(Counter::PendingFull);
    }
}

#[inline(always)]
fn on_end(lock_addr: u64, ret: i32) {
    count(Counter::EndSeen);
    // SAFETY: helper without preconditions.
    let end_ns = unsafe { bpf_ktime_get_ns() };
    if let Some(slot) = PENDING_SPIN.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, as in on_begin.
        let slot = unsafe { &mut *slot };
        if slot.lock_addr != 0 && slot.lock_addr == lock_addr {
            let wait = *slot;
            slot.lock_addr = 0;
            emit(&wait, end_ns, ret);
            return;
        }
    }
    let tid = bpf_get_current_pid_tgid() as u32;
    // SAFETY: only this thread writes its own key.
    match unsafe { PENDING_BY_TID.get(tid) } {
        Some(pending) if pending.lock_addr == lock_addr => {
            let wait = *pending;
            let _ = PENDING_BY_TID.remove(tid);
            emit(&wait, end_ns, ret);
        }
        Some(_) => count(Counter::MismatchedEnd),
        None => count(Counter::UnpairedEnd),
    }
}

#[inline(always)]
fn emit(wait: &PendingWait, end_ns: u64, ret: i32) {
    let wait_ns = end_ns.saturating_sub(wait.start_ns);
    add_to_histogram(wait, wait_ns);
    if wait.op_client != 0 {
        charge_client_mutex_wait(wait, wait_ns);
    }
    if PROBE_CONFIG.load().stream_events == 0 {
        return;
    }
    let Some(mut entry) = EVENTS.reserve::<LockWaitEvent>(0) else {
        count(Counter::ReserveFailed);
        return;
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    entry.write(LockWaitEvent {
        kind: EventKind::LockWait as u32,
        flags: wait.flags,
        tid: pid_tgid as u32,
        tgid: (pid_tgid >> 32) as u32,
        // SAFETY: helper without preconditions.
        cpu: unsafe { bpf_get_smp_processor_id() },
        ret,
        start_ns: wait.start_ns,
        wait_ns,
        lock_addr: wait.lock_addr,
        op_client: wait.op_client,
        stack_id: wait.stack_id,
        op: wait.op,
    });
    entry.submit(0);
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
                count(Counter::HistFull);
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

/// A wait on the client mutex of the operation in progress counts toward its lock wait.
#[inline(always)]
fn charge_client_mutex_wait(wait: &PendingWait, wait_ns: u64) {
    let offsets = BUFIO_OFFSETS.load();
    if offsets.client_lock == BufioOffsets::ABSENT
        || wait.lock_addr != wait.op_client + u64::from(offsets.client_lock)
    {
        return;
    }
    let tid = bpf_get_current_pid_tgid() as u32;
    if let Some(stack) = OPS.get_ptr_mut(tid) {
        // SAFETY: only this thread writes its own frames.
        let stack = unsafe { &mut *stack };
        if stack.depth > 0 && stack.frames[0].client == wait.op_client {
            stack.frames[0].lock_wait_ns += wait_ns;
        }
    }
}

// ---- dm-bufio operations ----

/// Reads a kernel value at `base + offset`; `None` for an offset this kernel lacks or a fault.
#[inline(always)]
fn read_field<T>(base: u64, offset: u32) -> Option<T> {
    if offset == BufioOffsets::ABSENT || base == 0 {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel checks the address and fails cleanly.
    unsafe { bpf_probe_read_kernel((base + u64::from(offset)) as *const T) }.ok()
}

/// Tells user space about a client the first time it is seen.
#[inline(always)]
fn announce_client(client: u64, how: u32) {
    if client == 0 {
        return;
    }
    // SAFETY: read-only look-up.
    if how == ClientEvent::SEEN && unsafe { CLIENTS.get(client) }.is_some() {
        return;
    }
    // Two CPUs can meet a new client at once: only the one whose insert wins announces it.
    if CLIENTS.insert(client, 1, u64::from(BPF_NOEXIST)).is_err() && how == ClientEvent::SEEN {
        return;
    }
    send_client(client, how);
}

#[inline(always)]
fn send_client(client: u64, how: u32) {
    let offsets = BUFIO_OFFSETS.load();
    let bdev: u64 = read_field(client, offsets.client_bdev).unwrap_or(0);
    let Some(mut entry) = EVENTS.reserve::<ClientEvent>(0) else {
        count(Counter::ReserveFailed);
        // Try again at the next operation.
        let _ = CLIENTS.remove(client);
        return;
    };
    entry.write(ClientEvent {
        kind: EventKind::Client as u32,
        how,
        dev: read_field(bdev, offsets.bdev_dev).unwrap_or(0),
        block_size: read_field(client, offsets.client_block_size).unwrap_or(0),
        num_locks: read_field(client, offsets.client_num_locks).unwrap_or(0),
        _pad: 0,
        client,
        // SAFETY: helper without preconditions.
        at_ns: unsafe { bpf_ktime_get_ns() },
    });
    entry.submit(0);
}

/// The client and block of a `struct dm_buffer *`.
#[inline(always)]
fn buffer_client_block(buffer: u64) -> (u64, u64) {
    let offsets = BUFIO_OFFSETS.load();
    (
        read_field(buffer, offsets.buffer_client).unwrap_or(0),
        read_field(buffer, offsets.buffer_block).unwrap_or(0),
    )
}

#[inline(always)]
fn func_ip<C: EbpfContext>(ctx: &C) -> u64 {
    // SAFETY: kprobe and kretprobe contexts, where the helper is allowed (5.15+).
    unsafe { bpf_get_func_ip(ctx.as_ptr()) }
}

/// Pushes a frame for an operation entry.
#[inline(always)]
fn op_entry(ctx: &ProbeContext, op: u32, client: u64, block: u64, arg0: u32, arg1: u32) {
    count(Counter::OpEntries);
    let tid = bpf_get_current_pid_tgid() as u32;
    let stack = match OPS.get_ptr_mut(tid) {
        Some(stack) => stack,
        None => {
            let Some(zero) = ZERO_OPS.get_ptr(0) else {
                return;
            };
            // SAFETY: a map value pointer, valid for the map's value size.
            #[expect(
                clippy::needless_borrows_for_generic_args,
                reason = "a copy would not fit on the 512-byte BPF stack"
            )]
            if OPS.insert(tid, unsafe { &*zero }, 0).is_err() {
                return;
            }
            let Some(stack) = OPS.get_ptr_mut(tid) else {
                return;
            };
            stack
        }
    };
    // SAFETY: only this thread writes its own frames.
    let stack = unsafe { &mut *stack };
    let depth = stack.depth as usize;
    let Some(frame) = stack.frames.get_mut(depth) else {
        count(Counter::OpTooDeep);
        return;
    };
    *frame = OpFrame {
        func_ip: func_ip(ctx),
        // SAFETY: helper without preconditions.
        start_ns: unsafe { bpf_ktime_get_ns() },
        client,
        block,
        lock_enter_ns: 0,
        lock_wait_at_enter: 0,
        lock_wait_ns: 0,
        lock_hold_ns: 0,
        op,
        result: result::NONE,
        arg0,
        arg1,
    };
    stack.depth = depth as u32 + 1;
    if depth == 0 && op != op::CLIENT_CREATE {
        announce_client(client, ClientEvent::SEEN);
    }
}

#[inline(always)]
fn is_err_ptr(value: u64) -> bool {
    value >= (-4095i64) as u64
}

/// Pops the frame a return belongs to and, for an outermost operation, sends it.
#[inline(always)]
fn op_return(ctx: &RetProbeContext) {
    let ip = func_ip(ctx);
    let tid = bpf_get_current_pid_tgid() as u32;
    let Some(stack) = OPS.get_ptr_mut(tid) else {
        count(Counter::OpUnmatchedReturn);
        return;
    };
    // SAFETY: only this thread writes its own frames.
    let stack = unsafe { &mut *stack };
    // The innermost frame of this function; frames above it lost their returns.
    let mut found = MAX_FRAMES;
    let mut i = MAX_FRAMES;
    while i > 0 {
        i -= 1;
        if i < stack.depth as usize && stack.frames[i].func_ip == ip {
            found = i;
            break;
        }
    }
    // A kernel that cannot tell a kretprobe its function (bpf_get_func_ip gives 0): the
    // innermost frame, as kretprobes return in order.
    if found == MAX_FRAMES && ip == 0 && stack.depth > 0 {
        found = stack.depth as usize - 1;
    }
    if found == MAX_FRAMES {
        count(Counter::OpUnmatchedReturn);
        return;
    }
    let mut stale = stack.depth as usize - found - 1;
    while stale > 0 && stale <= MAX_FRAMES {
        count(Counter::OpReturnMissed);
        stale -= 1;
    }
    stack.depth = found as u32;
    if found > 0 {
        count(Counter::OpNested);
        return;
    }
    let frame = stack.frames[0];
    let ret: u64 = ctx.ret();
    let mut client = frame.client;
    let outcome = match frame.op {
        op::GET | op::READ | op::NEW => {
            if is_err_ptr(ret) || (ret == 0 && frame.op != op::GET) {
                result::ERROR
            } else if ret == 0 || frame.result == result::MISS {
                result::MISS
            } else {
                result::HIT
            }
        }
        op::PREFETCH => {
            if frame.result == result::MISS {
                result::MISS
            } else {
                result::HIT
            }
        }
        op::CLIENT_CREATE => {
            if is_err_ptr(ret) || ret == 0 {
                result::ERROR
            } else {
                client = ret;
                announce_client(client, ClientEvent::CREATED);
                result::NONE
            }
        }
        _ => result::NONE,
    };
    // SAFETY: helper without preconditions.
    let end_ns = unsafe { bpf_ktime_get_ns() };
    let duration_ns = end_ns.saturating_sub(frame.start_ns);
    add_op_stats(client, frame.op, outcome, duration_ns, frame.lock_wait_ns);
    if PROBE_CONFIG.load().stream_events == 0 {
        return;
    }
    let Some(mut entry) = EVENTS.reserve::<BufioOpEvent>(0) else {
        count(Counter::ReserveFailed);
        return;
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    entry.write(BufioOpEvent {
        kind: EventKind::BufioOp as u32,
        op: frame.op,
        tid: pid_tgid as u32,
        tgid: (pid_tgid >> 32) as u32,
        // SAFETY: helper without preconditions.
        cpu: unsafe { bpf_get_smp_processor_id() },
        result: outcome,
        start_ns: frame.start_ns,
        duration_ns,
        client,
        block: frame.block,
        arg0: frame.arg0,
        arg1: frame.arg1,
        lock_wait_ns: frame.lock_wait_ns,
        lock_hold_ns: frame.lock_hold_ns,
    });
    entry.submit(0);
    count(Counter::OpsSubmitted);
}

#[inline(always)]
fn add_op_stats(client: u64, op: u32, outcome: u32, duration_ns: u64, lock_wait_ns: u64) {
    let key = OpStatsKey {
        client,
        op,
        _pad: 0,
    };
    let stats = match OP_STATS.get_ptr_mut(key) {
        Some(stats) => stats,
        None => {
            if OP_STATS.insert(key, OpStats::default(), 0).is_err() {
                return;
            }
            let Some(stats) = OP_STATS.get_ptr_mut(key) else {
                return;
            };
            stats
        }
    };
    // SAFETY: this CPU's copy of the value.
    let stats = unsafe { &mut *stats };
    stats.count += 1;
    stats.total_ns += duration_ns;
    stats.lock_wait_ns += lock_wait_ns;
    match outcome {
        result::HIT => stats.hits += 1,
        result::MISS => stats.misses += 1,
        result::ERROR => stats.errors += 1,
        _ => {}
    }
}

/// The outermost operation frame of this thread, if one is in progress.
#[inline(always)]
fn current_op() -> Option<&'static mut OpFrame> {
    let tid = bpf_get_current_pid_tgid() as u32;
    let stack = OPS.get_ptr_mut(tid)?;
    // SAFETY: only this thread writes its own frames.
    let stack = unsafe { &mut *stack };
    if stack.depth == 0 {
        return None;
    }
    Some(&mut stack.frames[0])
}

macro_rules! client_block_op {
    ($name:ident, $op:expr) => {
        /// `(c, block, ...)`
        #[kprobe]
        pub fn $name(ctx: ProbeContext) -> u32 {
            let client: u64 = ctx.arg(0).unwrap_or(0);
            let block: u64 = ctx.arg(1).unwrap_or(0);
            op_entry(&ctx, $op, client, block, 0, 0);
            0
        }
    };
}

macro_rules! client_block_count_op {
    ($name:ident, $op:expr) => {
        /// `(c, block, n_blocks)`
        #[kprobe]
        pub fn $name(ctx: ProbeContext) -> u32 {
            let client: u64 = ctx.arg(0).unwrap_or(0);
            let block: u64 = ctx.arg(1).unwrap_or(0);
            let n: u64 = ctx.arg(2).unwrap_or(0);
            op_entry(&ctx, $op, client, block, n as u32, 0);
            0
        }
    };
}

macro_rules! client_op {
    ($name:ident, $op:expr) => {
        /// `(c)`
        #[kprobe]
        pub fn $name(ctx: ProbeContext) -> u32 {
            let client: u64 = ctx.arg(0).unwrap_or(0);
            op_entry(&ctx, $op, client, 0, 0, 0);
            0
        }
    };
}

macro_rules! buffer_op {
    ($name:ident, $op:expr) => {
        /// `(b, ...)`
        #[kprobe]
        pub fn $name(ctx: ProbeContext) -> u32 {
            let buffer: u64 = ctx.arg(0).unwrap_or(0);
            let (client, block) = buffer_client_block(buffer);
            let arg0: u64 = ctx.arg(1).unwrap_or(0);
            let arg1: u64 = ctx.arg(2).unwrap_or(0);
            let (arg0, arg1) = if $op == op::MARK_PARTIAL_DIRTY {
                (arg0 as u32, arg1 as u32)
            } else {
                (0, 0)
            };
            op_entry(&ctx, $op, client, block, arg0, arg1);
            0
        }
    };
}

client_block_op!(bufio_get, op::GET);
client_block_op!(bufio_read, op::READ);
client_block_op!(bufio_new, op::NEW);
client_block_count_op!(bufio_prefetch, op::PREFETCH);
buffer_op!(bufio_release, op::RELEASE);
buffer_op!(bufio_mark_dirty, op::MARK_DIRTY);
buffer_op!(bufio_mark_partial_dirty, op::MARK_PARTIAL_DIRTY);
client_op!(bufio_write_dirty_async, op::WRITE_DIRTY_ASYNC);
client_op!(bufio_write_dirty, op::WRITE_DIRTY);
client_block_op!(bufio_forget, op::FORGET);
client_block_count_op!(bufio_forget_buffers, op::FORGET_BUFFERS);

/// `dm_bufio_client_create(bdev, block_size, ...)`: the client is the return value.
#[kprobe]
pub fn bufio_client_create(ctx: ProbeContext) -> u32 {
    let block_size: u64 = ctx.arg(1).unwrap_or(0);
    op_entry(&ctx, op::CLIENT_CREATE, 0, 0, block_size as u32, 0);
    0
}

/// `dm_bufio_client_destroy(c)`: announced at entry, while the client is still readable.
#[kprobe]
pub fn bufio_client_destroy(ctx: ProbeContext) -> u32 {
    let client: u64 = ctx.arg(0).unwrap_or(0);
    op_entry(&ctx, op::CLIENT_DESTROY, client, 0, 0, 0);
    send_client(client, ClientEvent::DESTROYED);
    let _ = CLIENTS.remove(client);
    0
}

/// Every operation function's return.
#[kretprobe]
pub fn bufio_op_return(ctx: RetProbeContext) -> u32 {
    op_return(&ctx);
    0
}

/// The function that runs only on a miss: the operation in progress is a miss.
#[kprobe]
pub fn bufio_miss(_ctx: ProbeContext) -> u32 {
    if let Some(frame) = current_op() {
        frame.result = result::MISS;
    }
    0
}

/// `dm_bufio_lock(c)` entry: the client mutex is about to be taken.
#[kprobe]
pub fn bufio_lock(ctx: ProbeContext) -> u32 {
    let client: u64 = ctx.arg(0).unwrap_or(0);
    if let Some(frame) = current_op()
        && frame.client == client
    {
        // SAFETY: helper without preconditions.
        frame.lock_enter_ns = unsafe { bpf_ktime_get_ns() };
        frame.lock_wait_at_enter = frame.lock_wait_ns;
    }
    0
}

/// `dm_bufio_unlock(c)` entry: the hold ends; the wait inside dm_bufio_lock is not hold time.
#[kprobe]
pub fn bufio_unlock(ctx: ProbeContext) -> u32 {
    let client: u64 = ctx.arg(0).unwrap_or(0);
    if let Some(frame) = current_op()
        && frame.client == client
        && frame.lock_enter_ns != 0
    {
        // SAFETY: helper without preconditions.
        let now = unsafe { bpf_ktime_get_ns() };
        let waited = frame.lock_wait_ns - frame.lock_wait_at_enter;
        frame.lock_hold_ns += now
            .saturating_sub(frame.lock_enter_ns)
            .saturating_sub(waited);
        frame.lock_enter_ns = 0;
    }
    0
}

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

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// GPL-compatible, as bpf_probe_read_kernel and friends require.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
