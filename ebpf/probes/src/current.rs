//! The running thread, its CPU and the clock, as the kernel's BPF helpers report them.
//! One place for the helpers' casts and SAFETY notes, shared by every program.

use aya_ebpf::helpers::{
    bpf_get_current_pid_tgid, bpf_get_current_task, bpf_get_smp_processor_id, bpf_ktime_get_ns,
    bpf_probe_read_kernel,
};
use bufscope_abi::Counter;

use crate::notes::count_noted;

/// Nanoseconds since boot, not counting suspend (CLOCK_MONOTONIC).
#[inline(always)]
pub(crate) fn now_ns() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_ktime_get_ns() }
}

/// The running thread's id (the kernel's pid), the key of every per-thread map.
#[inline(always)]
pub(crate) fn tid() -> u32 {
    bpf_get_current_pid_tgid() as u32
}

/// The running thread's id and its process's id (the kernel's tgid), as events report them.
#[inline(always)]
pub(crate) fn tid_tgid() -> (u32, u32) {
    let pid_tgid = bpf_get_current_pid_tgid();
    (pid_tgid as u32, (pid_tgid >> 32) as u32)
}

/// The CPU the program runs on.
#[inline(always)]
pub(crate) fn cpu() -> u32 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_get_smp_processor_id() }
}

/// The running thread's `struct task_struct *`.
#[inline(always)]
pub(crate) fn task() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_get_current_task() }
}

/// Reads a kernel value at `base + offset`; `None` for an offset this kernel lacks (`u32::MAX`,
/// the offsets' ABSENT), a null base or a fault.
#[inline(always)]
pub(crate) fn read_field<T>(base: u64, offset: u32) -> Option<T> {
    if offset == u32::MAX || base == 0 {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel checks the address and fails cleanly.
    unsafe { bpf_probe_read_kernel((base + u64::from(offset)) as *const T) }.ok()
}

/// The address of a program's context (`ctx`, on the kernel stack for fentry, fexit and tp_btf
/// programs) as a plain number, to compare and subtract freely: the verifier refuses arithmetic
/// between a context pointer and a register it cannot bound ("math between ctx pointer and
/// register with unbounded min value"), but a value read back from a map is a number to it. The
/// store and load are volatile so the compiler keeps the pointer's round trip.
#[inline(always)]
pub(crate) fn stack_position(ctx: *mut core::ffi::c_void) -> u64 {
    let Some(slot) = crate::maps::SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's slot, used within one program run.
    unsafe {
        core::ptr::write_volatile(slot, ctx as u64);
        core::ptr::read_volatile(slot)
    }
}

/// Whether `here` lies on the current task's own kernel stack (`task_struct.stack`, THREAD_SIZE
/// long): `Some(false)` on another, an interrupt's (x86-64 runs softirqs on the CPU's IRQ
/// stack, on top of whatever task they interrupted). `None` when it cannot be told: `here` or
/// the offsets unknown. Also the stack's base, read from the task (0 when unknown), for
/// [`within_thread_stack`] to check against later without reading the task again.
#[inline(always)]
pub(crate) fn on_thread_stack(here: u64) -> (Option<bool>, u64) {
    let offsets = crate::TASK_OFFSETS.load();
    if here == 0 || offsets.thread_size == 0 {
        return (None, 0);
    }
    let Some(base) = read_field::<u64>(task(), offsets.task_stack) else {
        return (None, 0);
    };
    (Some(within_thread_stack(here, base)), base)
}

/// Whether `here` lies on the THREAD_SIZE-long kernel stack at `base`; false for an unknown
/// (0) `here` or `base`.
#[inline(always)]
pub(crate) fn within_thread_stack(here: u64, base: u64) -> bool {
    let size = u64::from(crate::TASK_OFFSETS.load().thread_size);
    here != 0 && base != 0 && here >= base && here - base < size
}

/// [`read_field`], where a failed read (not a field this kernel lacks, nor a null base) is worth
/// counting and telling: [`Counter::FieldReadFailed`].
#[inline(always)]
pub(crate) fn read_btf_field<T>(base: u64, offset: u32) -> Option<T> {
    if offset == u32::MAX || base == 0 {
        return None;
    }
    let value = read_field(base, offset);
    if value.is_none() {
        count_noted(Counter::FieldReadFailed);
    }
    value
}
