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
mod fentry;
mod kfunc;
mod maps;
mod processes;
mod stream;
mod sys;

use std::os::fd::OwnedFd;

use aya::{
    Ebpf,
    maps::{MapData, MapError, PerCpuArray, PerCpuHashMap, RingBuf, StackTraceMap},
    programs::ProgramError,
};
use bufscope_abi::{OpStats, OpStatsKey, ProbeConfig, WaitHist, WaitHistKey};

pub use attach::{AttachOptions, BufioReport, BufioUnavailable, PointError, PointReport};
pub(crate) use bufscope_analyses::units::error_chain;
pub use maps::{ProgramStats, lost_events, lost_streamed_events, skipped_runs};
pub use processes::{ProcessFilter, bufscope_processes, descendants, keep_self_in};
pub use stream::{ClientHow, ClientSighting, Event, EventStream};

use crate::kernel::{
    kretprobe::TracefsKretprobe, system::TracefsError, tracepoint_format::TracepointFormatError,
};

/// Default ring buffer size: about 175,000 lock-wait events of headroom (96 bytes each with the
/// ring's header), or 0.3 s of a reader kept off the CPU under the pipe storm's 600,000 waits a
/// second. With 4 MiB, one 4-s recording of the storm in three lost 2,771 waits, with 16 MiB
/// none of three (2026-11-30).
pub const DEFAULT_RINGBUF_BYTES: u32 = 16 << 20;

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
/// How dm-bufio's functions are probed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum BufioProbes {
    /// fentry/fexit through the module's BTF where the kernel allows it, kprobes elsewhere.
    #[default]
    Auto,
    /// fentry/fexit only: a function that cannot be traced that way is not probed.
    Fentry,
    /// kprobes and kretprobes only.
    Kprobe,
}

/// When the probes wake the reader of their events.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum RingWakeup {
    /// Once a quarter of the ring buffer is waiting; bufscope also reads it every 20 ms.
    #[default]
    Batched,
    /// The kernel's default: at the first event after the reader caught up, which under a lock
    /// storm is nearly every event (an irq_work, a self-IPI and a context switch each, paid by
    /// the workload). For measuring that cost.
    Each,
}

impl RingWakeup {
    /// The value of `ProbeConfig::ring_wakeup`.
    pub fn config_value(self) -> u32 {
        match self {
            RingWakeup::Batched => ProbeConfig::WAKE_BATCHED,
            RingWakeup::Each => ProbeConfig::WAKE_EACH,
        }
    }
}

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

/// Why the probes could not be attached. A cause kept as the error's source is not repeated in
/// its message: `{:#}` (main) and [`error_chain`] (doctor) print each cause once.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("loading bufscope's eBPF object failed")]
    Load(#[from] aya::EbpfError),
    #[error("linking the eBPF programs' kernel-function calls")]
    Kfunc(#[from] kfunc::KfuncError),
    #[error("{program}")]
    Program {
        program: &'static str,
        source: ProgramError,
    },
    #[error("reading the kernel's BTF (/sys/kernel/btf/vmlinux) failed")]
    Btf(#[from] aya::BtfError),
    /// Not a source: its message already names the mount error, which a chain would repeat.
    #[error("{0}")]
    Tracefs(TracefsError),
    #[error(transparent)]
    TracepointFormat(#[from] TracepointFormatError),
    #[error("program {0} is missing from bufscope's eBPF object (a mismatched build?)")]
    MissingProgram(&'static str),
    #[error("map {0}: missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("duplicating the descriptor of map {0}")]
    MapFd(String, #[source] std::io::Error),
    #[error("map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    /// Both ways of attaching failed; each is quoted whole, its cause included.
    #[error(
        "the lock contention tracepoints could not be attached (they need Linux 5.19+ and \
         CAP_BPF+CAP_PERFMON or root): as tp_btf: {}; as tracepoint: {}",
        .tp_btf.with_cause(),
        .tracepoint.with_cause()
    )]
    NoAttachMode {
        tp_btf: Box<ProbeError>,
        tracepoint: Box<ProbeError>,
    },
}

impl ProbeError {
    /// The message in one line with the causes it leaves to the chain of sources.
    fn with_cause(&self) -> String {
        error_chain(self)
    }
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
    /// dm-bufio functions traced with fentry/fexit.
    tracing_links: Vec<fentry::TracingLink>,
    /// Every map's descriptor, by name, for programs loaded outside aya ([`fentry`]); handed
    /// over while dm-bufio is attached, then closed.
    map_fds: std::collections::HashMap<String, OwnedFd>,
    /// Keeps BPF run-time statistics on while held; the kernel turns them off when it closes.
    stats_fd: Option<OwnedFd>,
    final_stats: Vec<ProgramStats>,
    /// Whose lock waits the programs keep.
    processes: processes::ProcessMap,
    /// The programs' aya-log notes ([`LockProbes::flush_kernel_notes`]); `None` when the object
    /// logs nothing.
    kernel_notes: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    /// The slab cache of locks named no other way (`SLAB_LOCKS`).
    slab_locks: aya::maps::HashMap<MapData, u64, bufscope_abi::SlabName>,
    /// Lock owners' stacks by key (`--owner-stacks`).
    owner_stacks: aya::maps::HashMap<MapData, u32, bufscope_abi::OwnerStack>,
    /// Locks found to be a process's mmap_lock or siglock.
    lock_classes: aya::maps::HashMap<MapData, u64, bufscope_abi::LockClass>,
    /// The memory zones' locks, named ("zone lock (node 0 Normal)"); empty where they could
    /// not be found.
    zone_locks: Vec<bufscope_trace::Symbol>,
}

impl std::fmt::Debug for LockProbes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockProbes")
            .field("mode", &self.mode)
            .field("attached", &self.ebpf.is_some())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error;

    use super::*;

    /// The full-screen view's "lost" leaves out the waits only the histogram map turned away.
    #[test]
    fn a_stream_reader_loses_what_the_ring_and_maps_dropped_not_the_histograms() {
        let counters: std::collections::BTreeMap<String, u64> = [
            ("ringbuf_full", 5),
            ("hist_full", 7),
            ("pending_full", 1),
            ("submitted", 1_000),
        ]
        .into_iter()
        .map(|(name, n)| (name.to_string(), n))
        .collect();
        assert_eq!(lost_events(&counters), 13);
        assert_eq!(lost_streamed_events(&counters), 6);
    }

    /// `{:#}` (main) and doctor print the chain; `NoAttachMode` quotes each attempt whole.
    #[test]
    fn causes_read_the_same_in_a_chain_and_quoted() {
        let format = || {
            ProbeError::TracepointFormat(TracepointFormatError::Read {
                path: "/sys/kernel/tracing/events/lock/contention_end/format".into(),
                source: std::io::Error::from_raw_os_error(libc::ENOENT),
            })
        };
        let map = || ProbeError::Map {
            name: "events",
            source: MapError::InvalidMapType { map_type: 99 },
        };
        assert_eq!(
            error_chain(&format()),
            "/sys/kernel/tracing/events/lock/contention_end/format: No such file or directory \
             (os error 2)"
        );
        assert_eq!(error_chain(&map()), "map events: invalid map type 99");
        let both = ProbeError::NoAttachMode {
            tp_btf: Box::new(map()),
            tracepoint: Box::new(format()),
        };
        assert!(both.source().is_none());
        assert_eq!(
            both.to_string(),
            "the lock contention tracepoints could not be attached (they need Linux 5.19+ and \
             CAP_BPF+CAP_PERFMON or root): as tp_btf: map events: invalid map type 99; as \
             tracepoint: /sys/kernel/tracing/events/lock/contention_end/format: No such file or \
             directory (os error 2)"
        );
    }
}
