//! bufscope's eBPF programs: lock contention, paired per thread in the kernel.
//!
//! `lock:contention_begin` and `lock:contention_end` fire in the slow paths of every kernel lock.
//! A wait is paired from its first begin to its end and sent to user space as one
//! [`LockWaitEvent`]; nested, repeated, unpaired and lost events are counted in per-CPU counters,
//! never turned into durations. The same logic runs from tp_btf programs (typed arguments, no
//! tracefs) or classic tracepoint programs (field offsets from the format file, set before load).

#![no_std]
#![no_main]

use aya_ebpf::{
    Global,
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_ktime_get_ns},
    macros::{btf_tracepoint, map, tracepoint},
    maps::{HashMap, PerCpuArray, RingBuf},
    programs::{BtfTracePointContext, TracePointContext},
};
use bufscope_abi::{Counter, EventKind, LockFlags, LockWaitEvent, TracepointOffsets};

/// A wait that has begun and not yet ended. In-kernel only.
#[repr(C)]
#[derive(Clone, Copy)]
struct PendingWait {
    start_ns: u64,
    lock_addr: u64,
    flags: u32,
    _pad: u32,
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

#[unsafe(no_mangle)]
static TRACEPOINT_OFFSETS: Global<TracepointOffsets> = Global::new(TracepointOffsets::USUAL);

#[inline(always)]
fn count(counter: Counter) {
    if let Some(value) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot; programs on one CPU do not preempt each other for this map.
        unsafe { *value += 1 };
    }
}

#[inline(always)]
fn on_begin(lock_addr: u64, flags: u32) {
    count(Counter::BeginSeen);
    // SAFETY: helper without preconditions.
    let start_ns = unsafe { bpf_ktime_get_ns() };
    let wait = PendingWait {
        start_ns,
        lock_addr,
        flags,
        _pad: 0,
    };
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
    let tid = bpf_get_current_pid_tgid() as u32;
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
        wait_ns: end_ns.saturating_sub(wait.start_ns),
        lock_addr: wait.lock_addr,
    });
    entry.submit(0);
    count(Counter::Submitted);
}

#[btf_tracepoint(function = "contention_begin")]
pub fn contention_begin_btf(ctx: BtfTracePointContext) -> i32 {
    let lock: u64 = ctx.arg(0);
    let flags: u32 = ctx.arg(1);
    on_begin(lock, flags);
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
        on_begin(lock, flags);
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
