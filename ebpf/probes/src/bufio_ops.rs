//! dm-bufio operations: an entry program per exported function pushes a frame per thread, one
//! return program pops it and sends the operation; clients are announced to user space once.
//!
//! Each entry program exists twice, as a kprobe and as an fentry twin named
//! `{kprobe}_fentry` (`names::FENTRY_SUFFIX`); the return program as a kretprobe
//! (`bufio_op_return`) and as fexit (`bufio_op_fexit`). User space attaches the fentry/fexit pair
//! through the module's BTF where the kernel allows it and the kprobe pair otherwise, always both
//! halves of one function the same way: an entry and its return are matched by the function's
//! address, which each pair reports the same way.

use aya_ebpf::{
    EbpfContext,
    bindings::BPF_NOEXIST,
    helpers::generated::bpf_get_func_ip,
    macros::{fentry, fexit, kprobe, kretprobe},
    programs::{FEntryContext, FExitContext, ProbeContext, RetProbeContext},
};
use bufscope_abi::{
    BufioOpEvent, ClientEvent, Counter, EventKind, OpStats, OpStatsKey, op, result,
};

use crate::{
    BUFIO_OFFSETS, PROBE_CONFIG, TASK_OFFSETS, current,
    maps::{CLIENTS, EVENTS, IRQ_OPS, OP_STATS, OPS, ZERO_OPS, count, submit_flags},
    notes::count_noted,
};

/// One dm-bufio operation in progress on a thread. In-kernel only; contention reads `op` and
/// `client` and charges client-mutex waits to `lock_wait_ns`.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct OpFrame {
    /// Address of the probed function: a return is matched to its entry by it.
    func_ip: u64,
    /// Where the call entered on the kernel stack (`Call::stack_addr`).
    stack_addr: u64,
    /// The word at `stack_addr` when the call entered ([`Call::stack_word`]). It stays there
    /// while the call runs; a call that returned leaves the slot to whatever runs there next.
    stack_word: u64,
    /// 1 when `stack_word` tells a live frame from a returned one (fentry), 0 when it cannot
    /// (kprobe).
    word_checked: u32,
    _pad: u32,
    start_ns: u64,
    pub(crate) client: u64,
    block: u64,
    /// While this operation holds (or waits for) the client mutex: when its hold began as far as
    /// the probes can tell, the dm_bufio_lock entry or, after a wait, the wait's end.
    lock_enter_ns: u64,
    /// The thread's runqueue time (`sched_info.run_delay`) at that moment.
    lock_run_delay: u64,
    pub(crate) lock_wait_ns: u64,
    lock_hold_ns: u64,
    /// The first dm_bufio_lock entry's time, 0 before it.
    lock_attempt_ns: u64,
    /// The last dm_bufio_unlock entry's time, 0 before it.
    lock_release_ns: u64,
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
    /// The base of the kernel stack of the thread that last ran on it (`task_struct.stack`), 0
    /// until known: [`frames_at`] tells the thread's own stack from an interrupt's by it without
    /// reading the task each time. Unused in `IRQ_OPS`.
    stack_base: u64,
    /// The client of this thread's last operation, once `CLIENTS` showed it announced: the
    /// thread's next operations on it skip that look-up (a thread mostly works for one client).
    /// A client destroyed and created again at the same address is announced at its creation.
    known_client: u64,
    pub(crate) frames: [OpFrame; MAX_FRAMES],
}

/// Farther apart than this, two places are on different kernel stacks: a thread's frames lie
/// within its stack (THREAD_SIZE: 16 KiB on x86-64, 32 KiB with KASAN), and an interrupt's
/// stack is an area of its own.
const STACK_SPAN: u64 = 32 * 1024;

impl OpStack {
    /// Whether the frame still holds the word its entry found ([`OpFrame::stack_word`]); true
    /// where that cannot be told (kprobe frames).
    #[inline(always)]
    fn word_intact(frame: &OpFrame) -> bool {
        frame.word_checked == 0
            || current::read_field::<u64>(frame.stack_addr, 0) == Some(frame.stack_word)
    }

    /// Whether `here` is far enough from this thread's outermost live frame to be on another
    /// stack, an interrupt's: the guess [`frames_at`] falls back to where the task's stack
    /// bounds are unknown. It fails where the IRQ stack happens to lie within [`STACK_SPAN`] of
    /// the thread's (seen on 6.12 and 7.3: hundreds of a run's returns found no entry). 0
    /// (unknown) is not.
    #[inline(always)]
    fn far_from(&self, here: u64) -> bool {
        self.depth > 0
            && here != 0
            && self.frames[0].stack_addr != 0
            && here.abs_diff(self.frames[0].stack_addr) > STACK_SPAN
    }

    /// The operation a lock wait beginning at `here` is inside, given the frames of the stack
    /// it runs on ([`frames_at`]): the outermost frame, if it is still live. A live operation's
    /// frame lies above everything it calls and keeps its entry's word
    /// ([`OpFrame::stack_word`]); a frame at or below `here`, or whose word has changed, was left
    /// by a call whose return program the kernel skipped: the wait is inside no operation, and
    /// [`Counter::WaitOpStale`] counts it. The frames stay for the next entry to drop
    /// ([`drop_returned_frames`]). `here` 0 (unknown) trusts the frame.
    #[inline(always)]
    pub(crate) fn outermost_at(&self, here: u64) -> Option<&OpFrame> {
        if self.depth == 0 {
            return None;
        }
        let frame = &self.frames[0];
        if frame.stack_addr != 0 {
            let below = here != 0 && frame.stack_addr <= here;
            if below || !Self::word_intact(frame) {
                count(Counter::WaitOpStale);
                return None;
            }
        }
        Some(frame)
    }
}

/// A probed call as either kind of entry program sees it.
trait Call: EbpfContext {
    /// Argument `n`. An fentry program may only read the arguments its function has (the
    /// verifier refuses the program otherwise), so each shape below reads no more than its
    /// functions take.
    fn arg(&self, n: usize) -> u64;

    /// The probed function's address (kprobe, kretprobe, fentry, fexit: Linux 5.15+).
    fn func_ip(&self) -> u64 {
        // SAFETY: allowed in every context implementing Call.
        unsafe { bpf_get_func_ip(self.as_ptr()) }
    }

    /// An address on the kernel stack at this call's entry: a call made from inside it enters
    /// at a lower address. 0 when unknown.
    fn stack_addr(&self) -> u64;

    /// A word at `stack_addr` that stays as it is until this call returns, if there is one.
    fn stack_word(&self, stack_addr: u64) -> Option<u64>;
}

impl Call for ProbeContext {
    fn arg(&self, n: usize) -> u64 {
        ProbeContext::arg(self, n).unwrap_or(0)
    }

    /// The stack pointer at the probed function's first instruction (x86-64's registers: the
    /// only architecture bufscope builds its probes for).
    fn stack_addr(&self) -> u64 {
        // SAFETY: a kprobe's context is the registers at the probe, readable directly.
        unsafe { (*self.regs).rsp }
    }

    /// None: the word at rsp is the return address, which a kretprobe on the same function
    /// replaces with its trampoline's, maybe after this program read it.
    fn stack_word(&self, _stack_addr: u64) -> Option<u64> {
        None
    }
}

impl Call for FEntryContext {
    fn arg(&self, n: usize) -> u64 {
        FEntryContext::arg(self, n)
    }

    /// The arguments the trampoline saved in its frame, on the stack below the caller's.
    fn stack_addr(&self) -> u64 {
        current::stack_position(self.as_ptr())
    }

    /// The first argument, as the trampoline saved it for the fexit program; nothing writes it
    /// until the trampoline's frame goes.
    fn stack_word(&self, stack_addr: u64) -> Option<u64> {
        current::read_field::<u64>(stack_addr, 0)
    }
}

/// `(c, block, ...)`
#[inline(always)]
fn client_block<C: Call>(ctx: &C, op: u32) {
    op_entry(ctx, op, ctx.arg(0), ctx.arg(1), 0, 0);
}

/// `(c, block, n_blocks, ...)`
#[inline(always)]
fn client_block_count<C: Call>(ctx: &C, op: u32) {
    op_entry(ctx, op, ctx.arg(0), ctx.arg(1), ctx.arg(2) as u32, 0);
}

/// `(c)`
#[inline(always)]
fn client_only<C: Call>(ctx: &C, op: u32) {
    op_entry(ctx, op, ctx.arg(0), 0, 0, 0);
}

/// `(b)`
#[inline(always)]
fn buffer<C: Call>(ctx: &C, op: u32) {
    let (client, block) = buffer_client_block(ctx.arg(0));
    op_entry(ctx, op, client, block, 0, 0);
}

/// `(b, start, end)`
#[inline(always)]
fn buffer_range<C: Call>(ctx: &C, op: u32) {
    let (client, block) = buffer_client_block(ctx.arg(0));
    let (start, end) = (ctx.arg(1) as u32, ctx.arg(2) as u32);
    op_entry(ctx, op, client, block, start, end);
}

/// `(struct work_struct *)`: dm-bufio's background work, whose client is the first it locks
/// ([`lock`]).
#[inline(always)]
fn background<C: Call>(ctx: &C, op: u32) {
    op_entry(ctx, op, 0, 0, 0, 0);
}

/// `dm_bufio_client_create(bdev, block_size, ...)`: the client is the return value.
#[inline(always)]
fn client_create<C: Call>(ctx: &C, op: u32) {
    op_entry(ctx, op, 0, 0, ctx.arg(1) as u32, 0);
}

/// `dm_bufio_client_destroy(c)`: announced at entry, while the client is still readable.
#[inline(always)]
fn client_destroy<C: Call>(ctx: &C, op: u32) {
    let client = ctx.arg(0);
    op_entry(ctx, op, client, 0, 0, 0);
    send_client(client, ClientEvent::DESTROYED);
    let _ = CLIENTS.remove(client);
}

/// An operation's entry program as a kprobe and as its fentry twin.
macro_rules! operation {
    ($kprobe:ident, $fentry:ident, $shape:ident, $op:expr) => {
        #[kprobe]
        pub fn $kprobe(ctx: ProbeContext) -> u32 {
            $shape(&ctx, $op);
            0
        }

        #[fentry]
        pub fn $fentry(ctx: FEntryContext) -> u32 {
            $shape(&ctx, $op);
            0
        }
    };
}

operation!(bufio_get, bufio_get_fentry, client_block, op::GET);
operation!(bufio_read, bufio_read_fentry, client_block, op::READ);
operation!(bufio_new, bufio_new_fentry, client_block, op::NEW);
operation!(
    bufio_prefetch,
    bufio_prefetch_fentry,
    client_block_count,
    op::PREFETCH
);
operation!(bufio_release, bufio_release_fentry, buffer, op::RELEASE);
operation!(
    bufio_mark_dirty,
    bufio_mark_dirty_fentry,
    buffer,
    op::MARK_DIRTY
);
operation!(
    bufio_mark_partial_dirty,
    bufio_mark_partial_dirty_fentry,
    buffer_range,
    op::MARK_PARTIAL_DIRTY
);
operation!(
    bufio_write_dirty_async,
    bufio_write_dirty_async_fentry,
    client_only,
    op::WRITE_DIRTY_ASYNC
);
operation!(
    bufio_write_dirty,
    bufio_write_dirty_fentry,
    client_only,
    op::WRITE_DIRTY
);
operation!(bufio_forget, bufio_forget_fentry, client_block, op::FORGET);
operation!(
    bufio_forget_buffers,
    bufio_forget_buffers_fentry,
    client_block_count,
    op::FORGET_BUFFERS
);
operation!(
    bufio_client_create,
    bufio_client_create_fentry,
    client_create,
    op::CLIENT_CREATE
);
operation!(
    bufio_client_destroy,
    bufio_client_destroy_fentry,
    client_destroy,
    op::CLIENT_DESTROY
);
operation!(
    bufio_global_cleanup,
    bufio_global_cleanup_fentry,
    background,
    op::GLOBAL_CLEANUP
);
operation!(
    bufio_shrink_work,
    bufio_shrink_work_fentry,
    background,
    op::SHRINK_WORK
);
operation!(
    bufio_age_cleanup,
    bufio_age_cleanup_fentry,
    background,
    op::AGE_CLEANUP
);

/// Every operation function's return, as a kretprobe: one program for all of them.
#[kretprobe]
pub fn bufio_op_return(ctx: RetProbeContext) -> u32 {
    // SAFETY: a kretprobe context, where the helper is allowed (5.15+).
    let ip = unsafe { bpf_get_func_ip(ctx.as_ptr()) };
    // SAFETY: a kretprobe's context is the registers at the return, readable directly.
    let here = unsafe { (*ctx.regs).rsp };
    op_return(ip, ctx.ret(), here);
    0
}

/// Every operation function's return, as fexit: one program, loaded once per function (the
/// return value comes from bpf_get_func_ret, whatever the function's arguments).
#[fexit]
pub fn bufio_op_fexit(ctx: FExitContext) -> u32 {
    // SAFETY: an fexit context, where the helper is allowed (5.15+).
    let ip = unsafe { bpf_get_func_ip(ctx.as_ptr()) };
    // The trampoline's frame, where the entry's fentry context was.
    op_return(
        ip,
        ctx.ret::<u64>().unwrap_or(0),
        current::stack_position(ctx.as_ptr()),
    );
    0
}

/// The function that runs only on a miss: the operation in progress is a miss.
#[inline(always)]
fn miss(here: u64) {
    if let Some(frame) = current_op(here) {
        frame.result = result::MISS;
    }
}

/// How long the running thread has waited on a runqueue, runnable but not running (0 where the
/// kernel does not keep it).
#[inline(always)]
fn run_delay_ns() -> u64 {
    current::read_field::<u64>(current::task(), TASK_OFFSETS.load().task_run_delay).unwrap_or(0)
}

/// Whether the operation in `frame` works for `client`: its own client, or, for background work,
/// which names none at its entry, the first client it locks (or unlocks: 6.1's global cleanup
/// takes its first lock with an inlined trylock, unseen, its hold then untimed), announced to
/// user space where new.
#[inline(always)]
fn works_for(frame: &mut OpFrame, client: u64) -> bool {
    if frame.client == 0 && is_background(frame.op) {
        frame.client = client;
        // SAFETY: read-only look-up.
        if unsafe { CLIENTS.get(client) }.is_none() {
            announce_client(client, ClientEvent::SEEN);
        }
    }
    frame.client == client
}

/// `dm_bufio_lock(c)` entry: the client mutex is about to be taken. Its hold is timed from here
/// until a wait for it ends ([`client_lock_acquired`]) or, uncontended, until `dm_bufio_unlock`.
#[inline(always)]
fn lock(client: u64, here: u64) {
    if let Some(frame) = current_op(here)
        && works_for(frame, client)
    {
        let now = current::now_ns();
        frame.lock_enter_ns = now;
        if frame.lock_attempt_ns == 0 {
            frame.lock_attempt_ns = now;
        }
        frame.lock_run_delay = run_delay_ns();
    }
}

/// A wait for the client lock (the mutex, or a no-sleep client's spinlock) ended at `end_ns`: the
/// operation in `frame` holds it from then.
#[inline(always)]
pub(crate) fn client_lock_acquired(frame: &mut OpFrame, end_ns: u64) {
    if frame.lock_enter_ns != 0 {
        frame.lock_enter_ns = end_ns;
        frame.lock_run_delay = run_delay_ns();
    }
}

/// `dm_bufio_unlock(c)` entry: the hold ends. It leaves out the wait for the mutex (timed from
/// the wait's end) and the thread's time on a runqueue since its start: under voluntary
/// preemption `mutex_lock` gives up the CPU at `might_sleep` when the thread's slice is over,
/// before it takes the mutex, and other threads take and let go of the mutex meanwhile (6.1
/// thin-hotspot in the test bed: 1,710 "holds" over 100 µs, up to 9.7 ms, while 24,542 other
/// operations held the same mutex inside them). Runqueue time while truly holding (a holder
/// preempted inside the section) is left out too; its waiters record their waits all the same,
/// and the analyses stretch such a hold back to where a waiter found the thread holding
/// (`models::held_through` in bufscope's analyses).
#[inline(always)]
fn unlock(client: u64, here: u64) {
    if let Some(frame) = current_op(here)
        && works_for(frame, client)
        && frame.lock_enter_ns != 0
    {
        let now = current::now_ns();
        let runqueue = run_delay_ns().saturating_sub(frame.lock_run_delay);
        frame.lock_hold_ns += now
            .saturating_sub(frame.lock_enter_ns)
            .saturating_sub(runqueue);
        frame.lock_enter_ns = 0;
        frame.lock_release_ns = now;
    }
}

#[kprobe]
pub fn bufio_miss(ctx: ProbeContext) -> u32 {
    miss(ctx.stack_addr());
    0
}

#[fentry]
pub fn bufio_miss_fentry(ctx: FEntryContext) -> u32 {
    miss(ctx.stack_addr());
    0
}

#[kprobe]
pub fn bufio_lock(ctx: ProbeContext) -> u32 {
    lock(Call::arg(&ctx, 0), ctx.stack_addr());
    0
}

#[fentry]
pub fn bufio_lock_fentry(ctx: FEntryContext) -> u32 {
    lock(Call::arg(&ctx, 0), ctx.stack_addr());
    0
}

#[kprobe]
pub fn bufio_unlock(ctx: ProbeContext) -> u32 {
    unlock(Call::arg(&ctx, 0), ctx.stack_addr());
    0
}

#[fentry]
pub fn bufio_unlock_fentry(ctx: FEntryContext) -> u32 {
    unlock(Call::arg(&ctx, 0), ctx.stack_addr());
    0
}

/// Tells user space about a client the first time it is seen (`how` [`ClientEvent::SEEN`]: the
/// caller found it missing from `CLIENTS`) or when it is created.
#[inline(always)]
fn announce_client(client: u64, how: u32) {
    if client == 0 {
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
    let bdev: u64 = current::read_field(client, offsets.client_bdev).unwrap_or(0);
    let Some(mut entry) = EVENTS.reserve::<ClientEvent>(0) else {
        count_noted(Counter::ReserveFailed);
        // Try again at the next operation.
        let _ = CLIENTS.remove(client);
        return;
    };
    entry.write(ClientEvent {
        kind: EventKind::Client as u32,
        how,
        dev: current::read_field(bdev, offsets.bdev_dev).unwrap_or(0),
        block_size: current::read_field(client, offsets.client_block_size).unwrap_or(0),
        num_locks: current::read_field(client, offsets.client_num_locks).unwrap_or(0),
        no_sleep: u32::from(
            current::read_field::<u8>(client, offsets.client_no_sleep).unwrap_or(0) != 0,
        ),
        client,
        at_ns: current::now_ns(),
    });
    entry.submit(submit_flags::<ClientEvent>());
}

/// The client and block of a `struct dm_buffer *`.
#[inline(always)]
fn buffer_client_block(buffer: u64) -> (u64, u64) {
    let offsets = BUFIO_OFFSETS.load();
    (
        current::read_field(buffer, offsets.buffer_client).unwrap_or(0),
        current::read_field(buffer, offsets.buffer_block).unwrap_or(0),
    )
}

/// Pushes a frame for an operation entry.
/// Whether dm-bufio's exported function of operation `caller` calls one of operation `callee`:
/// a wrapper of its `_with_ioprio` variant (read, prefetch: Linux 6.9 on), mark_buffer_dirty of
/// mark_partial_buffer_dirty, prefetch of release (each block it starts reading), write_dirty of
/// its async half and forget_buffers of forget where a version wraps them, and client_destroy,
/// which writes dirty buffers back first. The test bed checks the list: a live caller dropped
/// shows as its return unmatched with no skipped run to explain it.
#[inline(always)]
fn may_call(caller: u32, callee: u32) -> bool {
    caller == callee
        || caller == op::CLIENT_DESTROY
        || matches!(
            (caller, callee),
            (op::MARK_DIRTY, op::MARK_PARTIAL_DIRTY)
                | (op::PREFETCH, op::RELEASE)
                | (op::WRITE_DIRTY, op::WRITE_DIRTY_ASYNC)
                | (op::FORGET_BUFFERS, op::FORGET)
        )
}

/// Frames this entry shows to have returned unseen. A live caller's frame lies higher on the
/// stack than this entry and, where its entry word can tell (fentry), still holds that word
/// ([`OpStack::word_intact`]): then any operation may be inside it, as when a no-sleep client's
/// I/O completes in the caller's own context and dm-verity reads its next hash block there.
/// Where the word cannot tell (kprobe frames), the caller must be an operation that calls this
/// one ([`may_call`]). Any other frame was left by a call that returned without its return
/// program running (the kernel skips a program it finds already running on the CPU, as when the
/// thread was preempted inside it). Left in place, such a frame would make every later
/// operation of the thread look nested in it, and go unreported. Each one dropped counts as a
/// missed return; were a real caller ever dropped, its return would count as unmatched.
#[inline(always)]
fn drop_returned_frames(stack: &mut OpStack, stack_addr: u64, op: u32) {
    // Top down, over constant indices (the verifier must see every index bounded).
    let mut i = MAX_FRAMES;
    while i > 0 {
        i -= 1;
        if i + 1 != stack.depth as usize {
            continue;
        }
        let top = &stack.frames[i];
        let below = stack_addr != 0 && top.stack_addr != 0 && top.stack_addr <= stack_addr;
        let caller = if top.word_checked != 0 {
            OpStack::word_intact(top)
        } else {
            may_call(top.op, op)
        };
        if caller && !below {
            return;
        }
        stack.depth = i as u32;
        count(Counter::OpReturnMissed);
    }
}

#[inline(always)]
fn op_entry<C: Call>(ctx: &C, op: u32, client: u64, block: u64, arg0: u32, arg1: u32) {
    count(Counter::OpEntries);
    let (func_ip, stack_addr) = (ctx.func_ip(), ctx.stack_addr());
    let tid = current::tid();
    let stack = match frames_at(tid, stack_addr) {
        Some(stack) => stack as *mut OpStack,
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
    drop_returned_frames(stack, stack_addr, op);
    let depth = stack.depth as usize;
    let Some(frame) = stack.frames.get_mut(depth) else {
        count_noted(Counter::OpTooDeep);
        return;
    };
    let stack_word = ctx.stack_word(stack_addr);
    *frame = OpFrame {
        func_ip,
        stack_addr,
        stack_word: stack_word.unwrap_or(0),
        word_checked: u32::from(stack_word.is_some()),
        _pad: 0,
        start_ns: current::now_ns(),
        client,
        block,
        lock_enter_ns: 0,
        lock_run_delay: 0,
        lock_wait_ns: 0,
        lock_hold_ns: 0,
        lock_attempt_ns: 0,
        lock_release_ns: 0,
        op,
        result: result::NONE,
        arg0,
        arg1,
    };
    stack.depth = depth as u32 + 1;
    if depth == 0 && op != op::CLIENT_CREATE && client != stack.known_client {
        // SAFETY: read-only look-up.
        if client != 0 && unsafe { CLIENTS.get(client) }.is_some() {
            stack.known_client = client;
        } else {
            announce_client(client, ClientEvent::SEEN);
        }
    }
}

/// dm-bufio's background work ([`op::GLOBAL_CLEANUP`] and after).
#[inline(always)]
fn is_background(op: u32) -> bool {
    matches!(op, op::GLOBAL_CLEANUP | op::SHRINK_WORK | op::AGE_CLEANUP)
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
fn op_return(ip: u64, ret: u64, here: u64) {
    let (tid, tgid) = current::tid_tgid();
    let Some(stack) = frames_at(tid, here) else {
        count_noted(Counter::OpUnmatchedReturn);
        return;
    };
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
        count_noted(Counter::OpUnmatchedReturn);
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
    let config = PROBE_CONFIG.load();
    if config.histograms != 0 {
        add_op_stats(client, frame.op, outcome, duration_ns, frame.lock_wait_ns);
    }
    if config.stream_events == 0 {
        return;
    }
    let Some(mut entry) = EVENTS.reserve::<BufioOpEvent>(0) else {
        count_noted(Counter::ReserveFailed);
        return;
    };
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
        lock_attempt_ns: frame.lock_attempt_ns,
        lock_release_ns: frame.lock_release_ns,
    });
    entry.submit(submit_flags::<BufioOpEvent>());
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

/// The frames a call at `here` on the stack belongs with: the thread's, or, when the call runs
/// on an interrupt's stack (on top of the thread, maybe inside one of its operations) or on a
/// CPU's idle task (thread 0 on every CPU), this CPU's interrupt frames, so that the
/// interrupt's operations neither drop nor hide the thread's. `None` when the thread has none.
#[inline(always)]
pub(crate) fn frames_at(tid: u32, here: u64) -> Option<&'static mut OpStack> {
    // SAFETY: this CPU's slot; an interrupt's programs finish before the CPU leaves it.
    let irq = || IRQ_OPS.get_ptr_mut(0).map(|irq| unsafe { &mut *irq });
    // Every CPU's idle task is thread 0: what runs there runs in an interrupt, one per CPU.
    if tid == 0 {
        return irq();
    }
    // SAFETY: only this thread (or an interrupt on its CPU, which then keeps to IRQ_OPS)
    // writes its own frames.
    let thread = OPS.get_ptr_mut(tid).map(|thread| unsafe { &mut *thread });
    // The common case: `here` lies on the stack the thread's entry remembers. That settles it
    // even where the entry is an exited thread's whose id was reused: interrupt stacks are
    // allocated once per CPU and never overlap a task's stack, so `here`, on one or the other,
    // is on this task's.
    if thread
        .as_ref()
        .is_some_and(|thread| current::within_thread_stack(here, thread.stack_base))
    {
        return thread;
    }
    // Told by the task's stack bounds, read (and remembered); where unknown, guessed from the
    // distance.
    let (on_thread, base) = current::on_thread_stack(here);
    if on_thread == Some(false) {
        return irq();
    }
    let thread = thread?;
    if on_thread == Some(true) {
        thread.stack_base = base;
        return Some(thread);
    }
    if !thread.far_from(here) {
        return Some(thread);
    }
    irq()
}

/// [`frames_at`] for a lock wait, which only reads them: the common case, a thread outside
/// dm-bufio with no interrupt operation on its CPU, costs two lookups and no read of the task.
#[inline(always)]
pub(crate) fn frames_for_wait(tid: u32, here: u64) -> Option<&'static OpStack> {
    // SAFETY: read-only lookups of this thread's entry and this CPU's slot.
    let thread_busy = tid != 0 && unsafe { OPS.get(tid) }.is_some_and(|s| s.depth > 0);
    let irq_busy = IRQ_OPS.get(0).is_some_and(|s| s.depth > 0);
    if !thread_busy && !irq_busy {
        return None;
    }
    frames_at(tid, here).map(|stack| &*stack)
}

/// The outermost operation frame of the call at `here` ([`frames_at`]), if one is in progress.
#[inline(always)]
fn current_op(here: u64) -> Option<&'static mut OpFrame> {
    let stack = frames_at(current::tid(), here)?;
    if stack.depth == 0 {
        return None;
    }
    Some(&mut stack.frames[0])
}
