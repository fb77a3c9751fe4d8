//! bufscope's eBPF programs: lock waits paired per thread in the kernel, and the dm-bufio
//! operations they happen inside.
//!
//! Data flow: the dm-bufio programs ([`bufio_ops`]) keep each thread's operations in progress in
//! [`maps::OPS`]. The contention programs ([`contention`]) pair a wait from its first begin to its
//! end, tag it with the thread's outermost operation and client, and charge client-mutex waits
//! to that operation. For the headless live view (`ProbeConfig::histograms`) waits are folded
//! into per-CPU log2 histograms ([`maps::WAIT_HIST`]) and outermost operations into
//! [`maps::OP_STATS`] when they return; when user space streams, waits, operations and first-seen
//! clients go to the ring buffer [`maps::EVENTS`]. Anything
//! nested, repeated, unpaired or lost is only counted ([`maps::COUNTERS`]), never turned into a
//! duration; the first time a loss counter moves on a CPU, [`notes`] says so through aya-log.
//! The thin probe ([`thin`]) names dm-thin pools' metadata locks in
//! [`maps::LOCK_CLASSES`], as contention_begin names mmap_locks, siglocks and runqueues. User
//! space sets the globals below before load.

#![no_std]
#![no_main]
#![feature(asm_experimental_arch)]

mod bufio_ops;
mod contention;
mod current;
mod maps;
mod notes;
mod thin;
mod zones;

use aya_ebpf::Global;
use bufscope_abi::{
    BufioOffsets, ProbeConfig, TaskOffsets, ThinOffsets, TracepointOffsets, ZoneOffsets,
};

/// Field offsets of the classic tracepoints, from this kernel's format files.
#[unsafe(no_mangle)]
static TRACEPOINT_OFFSETS: Global<TracepointOffsets> = Global::new(TracepointOffsets::USUAL);

/// What to collect: whether to stream events, whether to take stacks.
#[unsafe(no_mangle)]
static PROBE_CONFIG: Global<ProbeConfig> = Global::new(ProbeConfig::DEFAULT);

/// Field offsets into dm-bufio's private structs, from the module's BTF (Rust eBPF has no CO-RE).
#[unsafe(no_mangle)]
static BUFIO_OFFSETS: Global<BufioOffsets> = Global::new(BufioOffsets::UNSET);

/// Field offsets into the kernel's task structs, from vmlinux BTF, to classify locks.
#[unsafe(no_mangle)]
static TASK_OFFSETS: Global<TaskOffsets> = Global::new(TaskOffsets::UNSET);

/// Field offsets into dm-thin's pool metadata, from the dm_thin_pool module's BTF.
#[unsafe(no_mangle)]
static THIN_OFFSETS: Global<ThinOffsets> = Global::new(ThinOffsets::UNSET);

/// Field offsets from a task to its memory nodes, from vmlinux BTF (see `zones`).
#[unsafe(no_mangle)]
static ZONE_OFFSETS: Global<ZoneOffsets> = Global::new(ZoneOffsets::UNSET);

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// GPL-compatible, as bpf_probe_read_kernel and friends require.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
