//! dm-bufio operations: kprobes on its exported functions push a frame per thread, one
//! kretprobe pops it and sends the operation; clients are announced to user space once.

use aya_ebpf::{
    EbpfContext,
    bindings::BPF_NOEXIST,
    helpers::{bpf_probe_read_kernel, generated::bpf_get_func_ip},
    macros::{kprobe, kretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use bufscope_abi::{
    BufioOffsets, BufioOpEvent, ClientEvent, Counter, EventKind, OpStats, OpStatsKey, op, result,
};

use crate::{
    BUFIO_OFFSETS, PROBE_CONFIG, current,
    maps::{CLIENTS, EVENTS, OP_STATS, OPS, ZERO_OPS, count},
};

/// One dm-bufio operation in progress on a thread. In-kernel only; contention reads `op` and
/// `client` and charges client-mutex waits to `lock_wait_ns`.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct OpFrame {
    /// Address of the probed function: a return is matched to its entry by it.
    func_ip: u64,
    start_ns: u64,
    pub(crate) client: u64,
    block: u64,
    /// dm_bufio_lock entry time while this operation holds (or waits for) the client mutex.
    lock_enter_ns: u64,
    /// `lock_wait_ns` as it was at that dm_bufio_lock entry.
    lock_wait_at_enter: u64,
    pub(crate) lock_wait_ns: u64,
    lock_hold_ns: u64,
    pub(crate) op: u32,
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
pub(crate) struct OpStack {
    pub(crate) depth: u32,
    _pad: u32,
    pub(crate) frames: [OpFrame; MAX_FRAMES],
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

/// Every operation function's return. One kretprobe program for all of them, because dm-bufio is
/// a module and aya cannot attach fentry/fexit to modules.
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
        frame.lock_enter_ns = current::now_ns();
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
        let now = current::now_ns();
        let waited = frame.lock_wait_ns - frame.lock_wait_at_enter;
        frame.lock_hold_ns += now
            .saturating_sub(frame.lock_enter_ns)
            .saturating_sub(waited);
        frame.lock_enter_ns = 0;
    }
    0
}

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
        at_ns: current::now_ns(),
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
    let tid = current::tid();
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
        start_ns: current::now_ns(),
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
///
/// A return is matched to its entry by the function address, so a return the kernel failed to
/// deliver (no kretprobe instance free) costs one operation, counted, and never mis-pairs the
/// ones after it.
#[inline(always)]
fn op_return(ctx: &RetProbeContext) {
    let ip = func_ip(ctx);
    let tid = current::tid();
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
    let end_ns = current::now_ns();
    let duration_ns = end_ns.saturating_sub(frame.start_ns);
    add_op_stats(client, frame.op, outcome, duration_ns, frame.lock_wait_ns);
    if PROBE_CONFIG.load().stream_events == 0 {
        return;
    }
    let Some(mut entry) = EVENTS.reserve::<BufioOpEvent>(0) else {
        count(Counter::ReserveFailed);
        return;
    };
    let (tid, tgid) = current::tid_tgid();
    entry.write(BufioOpEvent {
        kind: EventKind::BufioOp as u32,
        op: frame.op,
        tid,
        tgid,
        cpu: current::cpu(),
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
    let tid = current::tid();
    let stack = OPS.get_ptr_mut(tid)?;
    // SAFETY: only this thread writes its own frames.
    let stack = unsafe { &mut *stack };
    if stack.depth == 0 {
        return None;
    }
    Some(&mut stack.frames[0])
}
