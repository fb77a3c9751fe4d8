//! The running thread, its CPU and the clock, as the kernel's BPF helpers report them.
//! One place for the helpers' casts and SAFETY notes, shared by every program.

use aya_ebpf::helpers::{bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_ktime_get_ns};

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
