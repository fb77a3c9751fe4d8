//! Loads bufscope's eBPF programs, attaches them to the kernel's lock contention tracepoints
//! and, where dm-bufio is present, to its functions, and streams their events to user space.
//!
//! tp_btf is preferred for the lock tracepoints (typed arguments, no tracefs, lower overhead);
//! the classic tracepoint is the fallback, with field offsets read from this kernel's format
//! files before load. dm-bufio probe points come from a compatibility table ([`crate::kernel::bufio`]);
//! each one the kernel lacks is reported, never fatal.
//!
//! [`attach`] loads and attaches ([`LockProbes::attach`]); [`maps`] reads what the programs keep
//! in maps (counters, histograms, stacks, run-time statistics); [`stream`] decodes the ring
//! buffer's events.

mod attach;
mod maps;
mod stream;

use std::os::fd::OwnedFd;

use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray, PerCpuHashMap, RingBuf, StackTraceMap},
    programs::ProgramError,
};
use bufscope_abi::{OpStats, OpStatsKey, WaitHist, WaitHistKey};

pub use attach::{AttachOptions, BufioReport, PointReport};
pub use maps::{ProgramStats, lost_events};
pub use stream::{ClientHow, ClientSighting, Event, EventStream};

use crate::kernel::kretprobe::TracefsKretprobe;

/// Default ring buffer size: about 87,000 lock-wait events of headroom.
pub const DEFAULT_RINGBUF_BYTES: u32 = 4 << 20;

/// How to attach to lock:contention_begin/end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    /// tp_btf where the kernel allows it, else the classic tracepoint.
    Auto,
    /// BTF-typed raw tracepoint programs only.
    TpBtf,
    /// Classic tracepoint programs only (needs tracefs; mounted if missing).
    Tracepoint,
}

/// How the lock tracepoints were attached, once they were.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachedAs {
    /// BTF-typed raw tracepoint programs.
    TpBtf,
    /// Classic tracepoint programs, reading fields at this kernel's offsets.
    Tracepoint,
}

impl AttachedAs {
    /// "tp_btf" or "tracepoint", as trace headers and status lines say it.
    pub fn name(self) -> &'static str {
        match self {
            AttachedAs::TpBtf => "tp_btf",
            AttachedAs::Tracepoint => "tracepoint",
        }
    }
}

impl std::fmt::Display for AttachedAs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("loading bufscope's eBPF object failed: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("{program}: {source}")]
    Program {
        program: &'static str,
        source: ProgramError,
    },
    #[error("reading the kernel's BTF (/sys/kernel/btf/vmlinux) failed: {0}")]
    Btf(#[from] aya::BtfError),
    #[error("{0}")]
    Tracefs(String),
    #[error("program {0} is missing from bufscope's eBPF object (a mismatched build?)")]
    MissingProgram(&'static str),
    #[error("map {name}: {detail}")]
    Map { name: &'static str, detail: String },
    #[error(
        "the lock contention tracepoints could not be attached (they need Linux 5.19+ and \
         CAP_BPF+CAP_PERFMON or root): as tp_btf: {tp_btf}; as tracepoint: {tracepoint}"
    )]
    NoAttachMode { tp_btf: String, tracepoint: String },
}

/// bufscope's programs, attached. Dropping it detaches them.
pub struct LockProbes {
    ebpf: Option<Ebpf>,
    mode: AttachedAs,
    notes: Vec<String>,
    events: Option<RingBuf<MapData>>,
    counters: PerCpuArray<MapData, u64>,
    stacks: Option<StackTraceMap<MapData>>,
    wait_hist: Option<PerCpuHashMap<MapData, WaitHistKey, WaitHist>>,
    op_stats: Option<PerCpuHashMap<MapData, OpStatsKey, OpStats>>,
    bufio: BufioReport,
    /// Return probes made through tracefs; dropped (removed) before the programs.
    kretprobes: Vec<TracefsKretprobe>,
    /// Keeps BPF run-time statistics on while held; the kernel turns them off when it closes.
    stats_fd: Option<OwnedFd>,
    final_stats: Vec<ProgramStats>,
}

impl std::fmt::Debug for LockProbes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockProbes")
            .field("mode", &self.mode)
            .field("attached", &self.ebpf.is_some())
            .finish_non_exhaustive()
    }
}
