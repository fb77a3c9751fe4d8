//! Loads bufscope's eBPF programs, attaches them to the kernel's lock contention tracepoints
//! and, where dm-bufio is present, to its functions, and streams their events to user space.
//!
//! tp_btf is preferred for the lock tracepoints (typed arguments, no tracefs, lower overhead);
//! the classic tracepoint is the fallback, with field offsets read from this kernel's format
//! files before load. dm-bufio probe points come from a compatibility table ([`crate::bufio`]);
//! each one the kernel lacks is reported, never fatal.

use std::{
    collections::{BTreeMap, HashSet},
    io,
    os::fd::{AsFd, OwnedFd},
};

use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, PerCpuHashMap, RingBuf, StackTraceMap},
    programs::{BtfTracePoint, KProbe, ProgramError, TracePoint},
};
use bufscope_abi::{
    BufioOffsets, BufioOpEvent, ClientEvent, Counter, EventKind, LockWaitEvent, OpStats,
    OpStatsKey, ProbeConfig, TracepointOffsets, WaitHist, WaitHistKey, names,
};
use bufscope_trace::{BufioOp, ClientLocks, LockWait, OpKind, OpResult};
use tokio::io::{Interest, unix::AsyncFd};

use crate::{
    bufio::{self, Design, Layout, Role, Symbols},
    kretprobe::{self, TracefsKretprobe},
    system, tracepoint_format,
};

/// The eBPF object, built from ebpf/probes by build.rs.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bufscope"));

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

/// What to attach and how.
#[derive(Clone, Copy, Debug)]
pub struct AttachOptions {
    pub mode: AttachMode,
    pub ringbuf_bytes: u32,
    pub config: ProbeConfig,
    /// Also probe dm-bufio's functions, where the kernel has them.
    pub bufio: bool,
}

impl Default for AttachOptions {
    fn default() -> Self {
        Self {
            mode: AttachMode::Auto,
            ringbuf_bytes: DEFAULT_RINGBUF_BYTES,
            config: ProbeConfig::DEFAULT,
            bufio: true,
        }
    }
}

/// How one dm-bufio probe point fared.
#[derive(Clone, Debug)]
pub struct PointReport {
    pub function: &'static str,
    pub role: Role,
    /// `Ok(how)` when attached, `Err(why not)` otherwise.
    pub status: Result<String, String>,
}

/// The dm-bufio side of an attach.
#[derive(Clone, Debug, Default)]
pub struct BufioReport {
    /// Why no dm-bufio probe was attached at all, if none was.
    pub unavailable: Option<String>,
    pub design: Option<Design>,
    pub layout: Option<Layout>,
    pub points: Vec<PointReport>,
}

impl BufioReport {
    pub fn attached(&self) -> impl Iterator<Item = &PointReport> {
        self.points.iter().filter(|p| p.status.is_ok())
    }

    pub fn missing(&self) -> impl Iterator<Item = &PointReport> {
        self.points.iter().filter(|p| p.status.is_err())
    }

    /// The missing points as (function, why).
    pub fn missing_reasons(&self) -> Vec<(String, String)> {
        self.missing()
            .map(|p| {
                (
                    p.function.to_string(),
                    p.status.clone().err().unwrap_or_default(),
                )
            })
            .collect()
    }

    /// Operations are seen (at least one exported function and the return probe attached).
    pub fn sees_operations(&self) -> bool {
        self.attached().any(|p| p.role == Role::Operation)
    }
}

/// A program's run count and time while attached (BPF run-time statistics).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProgramStats {
    pub program: String,
    pub run_count: u64,
    pub run_time_ns: u64,
}

impl ProgramStats {
    pub fn average_ns(&self) -> f64 {
        self.run_time_ns as f64 / self.run_count.max(1) as f64
    }
}

/// bufscope's programs, attached. Dropping it detaches them.
pub struct LockProbes {
    ebpf: Option<Ebpf>,
    mode: &'static str,
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

impl LockProbes {
    /// Loads the programs and attaches them as `options` ask.
    pub fn attach(options: AttachOptions) -> Result<Self, ProbeError> {
        system::raise_memlock_limit();
        // Resolved before load: the offsets are globals baked into the programs.
        let mut bufio = BufioReport::default();
        let mut symbols = None;
        if options.bufio {
            match prepare_bufio() {
                Ok((found, design, layout)) => {
                    bufio.design = Some(design);
                    bufio.layout = Some(layout);
                    symbols = Some(found);
                }
                Err(why) => bufio.unavailable = Some(why),
            }
        } else {
            bufio.unavailable = Some("not asked for".into());
        }
        let offsets = bufio
            .layout
            .as_ref()
            .map_or(BufioOffsets::UNSET, |l| l.offsets);
        let mut probes = match options.mode {
            AttachMode::TpBtf => Self::attach_tp_btf(&options, &offsets),
            AttachMode::Tracepoint => Self::attach_tracepoint(&options, &offsets),
            AttachMode::Auto => Self::attach_tp_btf(&options, &offsets).or_else(|tp_btf| {
                log::info!("tp_btf unavailable ({tp_btf}); trying the classic tracepoint");
                Self::attach_tracepoint(&options, &offsets).map_err(|tracepoint| {
                    ProbeError::NoAttachMode {
                        tp_btf: tp_btf.to_string(),
                        tracepoint: tracepoint.to_string(),
                    }
                })
            }),
        }?;
        if let Some(symbols) = symbols {
            probes.attach_bufio(&symbols, &mut bufio);
        }
        probes.bufio = bufio;
        match aya::sys::enable_stats(aya::sys::Stats::RunTime) {
            Ok(fd) => probes.stats_fd = Some(fd),
            Err(e) => probes
                .notes
                .push(format!("BPF run-time statistics unavailable: {e}")),
        }
        Ok(probes)
    }

    fn attach_tp_btf(options: &AttachOptions, offsets: &BufioOffsets) -> Result<Self, ProbeError> {
        let mut ebpf = load(TracepointOffsets::USUAL, options, offsets)?;
        let btf = Btf::from_sys_fs()?;
        for (program, event) in [
            (names::BEGIN_BTF_PROGRAM, "contention_begin"),
            (names::END_BTF_PROGRAM, "contention_end"),
        ] {
            let wrap = |source| ProbeError::Program { program, source };
            let p: &mut BtfTracePoint =
                program_mut(&mut ebpf, program)?.try_into().map_err(wrap)?;
            p.load(event, &btf).map_err(wrap)?;
            p.attach().map_err(wrap)?;
        }
        Self::new(ebpf, "tp_btf", Vec::new())
    }

    fn attach_tracepoint(
        options: &AttachOptions,
        offsets: &BufioOffsets,
    ) -> Result<Self, ProbeError> {
        let tracefs = system::ensure_tracefs().map_err(ProbeError::Tracefs)?;
        let mut notes = Vec::new();
        if let system::Tracefs::MountedNow(path) = &tracefs {
            notes.push(format!("mounted tracefs at {}", path.display()));
        }
        let tp_offsets = tracepoint_format::lock_contention_offsets(tracefs.path())
            .map_err(ProbeError::Tracefs)?;
        let mut ebpf = load(tp_offsets, options, offsets)?;
        for (program, event) in [
            (names::BEGIN_TP_PROGRAM, "contention_begin"),
            (names::END_TP_PROGRAM, "contention_end"),
        ] {
            let wrap = |source| ProbeError::Program { program, source };
            let p: &mut TracePoint = program_mut(&mut ebpf, program)?.try_into().map_err(wrap)?;
            p.load().map_err(wrap)?;
            p.attach("lock", event).map_err(wrap)?;
        }
        Self::new(ebpf, "tracepoint", notes)
    }

    fn new(mut ebpf: Ebpf, mode: &'static str, notes: Vec<String>) -> Result<Self, ProbeError> {
        let map_error = |name: &'static str| {
            move |e: aya::maps::MapError| ProbeError::Map {
                name,
                detail: e.to_string(),
            }
        };
        let events = RingBuf::try_from(take_map(&mut ebpf, names::EVENTS_MAP)?)
            .map_err(map_error(names::EVENTS_MAP))?;
        let counters = PerCpuArray::try_from(take_map(&mut ebpf, names::COUNTERS_MAP)?)
            .map_err(map_error(names::COUNTERS_MAP))?;
        let stacks = StackTraceMap::try_from(take_map(&mut ebpf, names::STACKS_MAP)?)
            .map_err(map_error(names::STACKS_MAP))?;
        let wait_hist = PerCpuHashMap::try_from(take_map(&mut ebpf, names::WAIT_HIST_MAP)?)
            .map_err(map_error(names::WAIT_HIST_MAP))?;
        let op_stats = PerCpuHashMap::try_from(take_map(&mut ebpf, names::OP_STATS_MAP)?)
            .map_err(map_error(names::OP_STATS_MAP))?;
        Ok(Self {
            ebpf: Some(ebpf),
            mode,
            notes,
            events: Some(events),
            counters,
            stacks: Some(stacks),
            wait_hist: Some(wait_hist),
            op_stats: Some(op_stats),
            bufio: BufioReport::default(),
            kretprobes: Vec::new(),
            stats_fd: None,
            final_stats: Vec::new(),
        })
    }

    /// Attaches every dm-bufio point the kernel has; records why each other one is missing.
    fn attach_bufio(&mut self, symbols: &Symbols, report: &mut BufioReport) {
        let Some(ebpf) = self.ebpf.as_mut() else {
            return;
        };
        let design = report.design.unwrap_or(Design::Classic);
        let tracefs = system::ensure_tracefs().ok();
        if let Some(tracefs) = &tracefs {
            kretprobe::remove_stale_events(tracefs.path());
        }
        let mut loaded = HashSet::new();
        let mut return_loaded: Result<(), String> = Ok(());
        {
            let wrap = |e: ProgramError| format!("loading {}: {e}", names::OP_RETURN_PROGRAM);
            match ebpf.program_mut(names::OP_RETURN_PROGRAM) {
                None => return_loaded = Err(format!("{} missing", names::OP_RETURN_PROGRAM)),
                Some(p) => {
                    let p: Result<&mut KProbe, _> = p.try_into();
                    match p {
                        Ok(p) => {
                            if let Err(e) = p.load() {
                                return_loaded = Err(wrap(e));
                            }
                        }
                        Err(e) => return_loaded = Err(wrap(e)),
                    }
                }
            }
        }
        let points = bufio::OPERATIONS
            .iter()
            .copied()
            .chain(bufio::internal_points(design));
        for point in points {
            let status = if !symbols.has(point.function) {
                Err(format!(
                    "not in /proc/kallsyms (kernels: {}; may be inlined by this build)",
                    point.kernels
                ))
            } else if point.role == Role::Operation && return_loaded.is_err() {
                Err(return_loaded.clone().unwrap_err())
            } else {
                attach_entry(ebpf, point.program, point.function, &mut loaded).and_then(|()| {
                    if point.role != Role::Operation {
                        return Ok("kprobe".to_string());
                    }
                    attach_return(
                        ebpf,
                        point.function,
                        tracefs.as_ref().map(|t| t.path()),
                        &mut self.kretprobes,
                    )
                })
            };
            report.points.push(PointReport {
                function: point.function,
                role: point.role,
                status,
            });
        }
    }

    /// "tp_btf" or "tracepoint".
    pub fn mode(&self) -> &'static str {
        self.mode
    }

    /// What attaching did besides attaching (e.g. mounting tracefs), for the user.
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// The dm-bufio probe points: attached, missing and why.
    pub fn bufio(&self) -> &BufioReport {
        &self.bufio
    }

    /// One line per attached probe, for trace headers and status lines.
    pub fn descriptions(&self) -> Vec<String> {
        let mut lines: Vec<String> = ["lock:contention_begin", "lock:contention_end"]
            .iter()
            .map(|tp| format!("{tp} ({})", self.mode))
            .collect();
        for point in self.bufio.attached() {
            lines.push(format!(
                "{} ({})",
                point.function,
                point.status.as_deref().unwrap_or("")
            ));
        }
        lines
    }

    /// The lock addresses of a client, when the layout is known.
    pub fn client_locks(&self, client: u64, num_locks: u32) -> Option<ClientLocks> {
        self.bufio
            .layout
            .as_ref()
            .map(|l| l.client_locks(client, num_locks))
    }

    /// The event ring buffer, as an async stream; available once.
    pub fn event_stream(&mut self) -> io::Result<EventStream> {
        let ring = self
            .events
            .take()
            .ok_or_else(|| io::Error::other("the event stream was already taken"))?;
        EventStream::new(ring)
    }

    /// Detaches and unloads the programs; the maps stay readable. Program statistics are
    /// taken first, so they cover the whole run.
    pub fn detach(&mut self) {
        if self.ebpf.is_some() {
            self.final_stats = self.program_stats();
        }
        self.kretprobes.clear();
        self.ebpf = None;
        self.stats_fd = None;
    }

    /// Run count and time of each program that ran (BPF run-time statistics); after
    /// [`detach`](Self::detach), as they were at detach.
    pub fn program_stats(&self) -> Vec<ProgramStats> {
        let Some(ebpf) = &self.ebpf else {
            return self.final_stats.clone();
        };
        let mut stats: Vec<ProgramStats> = ebpf
            .programs()
            .filter_map(|(name, program)| {
                let info = program.info().ok()?;
                Some(ProgramStats {
                    program: name.to_string(),
                    run_count: info.run_count(),
                    run_time_ns: info.run_time().as_nanos() as u64,
                })
            })
            .filter(|s| s.run_count > 0)
            .collect();
        stats.sort_by(|a, b| a.program.cmp(&b.program));
        stats
    }

    /// The in-kernel counters, summed over CPUs, by name.
    pub fn counters(&self) -> Result<BTreeMap<String, u64>, ProbeError> {
        Counter::ALL
            .iter()
            .map(|&c| {
                let values = self
                    .counters
                    .get(&(c as u32), 0)
                    .map_err(|e| ProbeError::Map {
                        name: names::COUNTERS_MAP,
                        detail: e.to_string(),
                    })?;
                Ok((c.name().to_string(), values.iter().sum()))
            })
            .collect()
    }

    /// The kernel stack with this id, innermost frame first.
    pub fn stack(&self, id: u32) -> Option<Vec<u64>> {
        let trace = self.stacks.as_ref()?.get(&id, 0).ok()?;
        Some(trace.frames().iter().map(|f| f.ip).collect())
    }

    /// The live wait histograms, summed over CPUs.
    pub fn wait_histograms(&self) -> Vec<(WaitHistKey, WaitHist)> {
        let Some(map) = &self.wait_hist else {
            return Vec::new();
        };
        map.iter()
            .filter_map(Result::ok)
            .map(|(key, per_cpu)| {
                let mut sum = WaitHist::ZERO;
                for h in per_cpu.iter() {
                    sum.count += h.count;
                    sum.total_ns += h.total_ns;
                    sum.max_ns = sum.max_ns.max(h.max_ns);
                    for (s, b) in sum.buckets.iter_mut().zip(h.buckets.iter()) {
                        *s += b;
                    }
                }
                (key, sum)
            })
            .collect()
    }

    /// The live operation counts, summed over CPUs.
    pub fn op_stats(&self) -> Vec<(OpStatsKey, OpStats)> {
        let Some(map) = &self.op_stats else {
            return Vec::new();
        };
        map.iter()
            .filter_map(Result::ok)
            .map(|(key, per_cpu)| {
                let mut sum = OpStats::default();
                for s in per_cpu.iter() {
                    sum.count += s.count;
                    sum.hits += s.hits;
                    sum.misses += s.misses;
                    sum.errors += s.errors;
                    sum.total_ns += s.total_ns;
                    sum.lock_wait_ns += s.lock_wait_ns;
                }
                (key, sum)
            })
            .collect()
    }
}

/// Finds dm-bufio and its layout, or says why it cannot be probed.
fn prepare_bufio() -> Result<(Symbols, Design, Layout), String> {
    let symbols = Symbols::from_kallsyms().map_err(|e| format!("reading /proc/kallsyms: {e}"))?;
    if !symbols.present() {
        return Err(
            "dm-bufio is not loaded (no dm_bufio functions in /proc/kallsyms); it \
                    loads with dm-thin-pool, dm-cache, dm-verity or dm-integrity, or \
                    `modprobe dm_bufio`"
                .into(),
        );
    }
    if !std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists()
        && !std::path::Path::new("/sys/kernel/tracing/kprobe_events").exists()
    {
        return Err("this kernel has no kprobes (CONFIG_KPROBES / CONFIG_KPROBE_EVENTS)".into());
    }
    let layout = Layout::from_sys_fs()?;
    let design = symbols.design();
    Ok((symbols, design, layout))
}

fn attach_entry(
    ebpf: &mut Ebpf,
    program: &'static str,
    function: &str,
    loaded: &mut HashSet<&'static str>,
) -> Result<(), String> {
    let p: &mut KProbe = ebpf
        .program_mut(program)
        .ok_or_else(|| format!("program {program} missing from the eBPF object"))?
        .try_into()
        .map_err(|e: ProgramError| format!("{program}: {e}"))?;
    if loaded.insert(program) {
        p.load().map_err(|e| format!("loading {program}: {e}"))?;
    }
    p.attach(function, 0)
        .map_err(|e| format!("kprobe on {function}: {e}"))?;
    Ok(())
}

/// The return probe: through tracefs with room for many sleepers, else as aya makes it.
fn attach_return(
    ebpf: &mut Ebpf,
    function: &str,
    tracefs: Option<&std::path::Path>,
    made: &mut Vec<TracefsKretprobe>,
) -> Result<String, String> {
    let p: &mut KProbe = ebpf
        .program_mut(names::OP_RETURN_PROGRAM)
        .ok_or_else(|| format!("program {} missing", names::OP_RETURN_PROGRAM))?
        .try_into()
        .map_err(|e: ProgramError| e.to_string())?;
    let tracefs_error = match tracefs {
        Some(tracefs) => {
            let fd = p.fd().map_err(|e| e.to_string())?;
            match TracefsKretprobe::attach(tracefs, function, fd.as_fd()) {
                Ok(probe) => {
                    made.push(probe);
                    return Ok(format!(
                        "kprobe + kretprobe, maxactive {}",
                        kretprobe::MAXACTIVE
                    ));
                }
                Err(e) => e,
            }
        }
        None => "tracefs unavailable".to_string(),
    };
    log::info!("{tracefs_error}; using the kernel's default kretprobe instead");
    p.attach(function, 0)
        .map_err(|e| format!("kretprobe on {function}: {e}"))?;
    Ok("kprobe + kretprobe (default maxactive: returns may be missed)".into())
}

fn load(
    tp_offsets: TracepointOffsets,
    options: &AttachOptions,
    bufio: &BufioOffsets,
) -> Result<Ebpf, ProbeError> {
    Ok(EbpfLoader::new()
        .override_global(names::TRACEPOINT_OFFSETS_GLOBAL, &tp_offsets, true)
        .override_global(names::PROBE_CONFIG_GLOBAL, &options.config, true)
        .override_global(names::BUFIO_OFFSETS_GLOBAL, bufio, true)
        .map_max_entries(names::EVENTS_MAP, options.ringbuf_bytes)
        .load(EBPF_OBJECT)?)
}

fn program_mut<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut aya::programs::Program, ProbeError> {
    ebpf.program_mut(name)
        .ok_or(ProbeError::MissingProgram(name))
}

fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, ProbeError> {
    ebpf.take_map(name).ok_or(ProbeError::Map {
        name,
        detail: "missing from the eBPF object".into(),
    })
}

/// A dm-bufio client, as the probes saw it appear or go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientSighting {
    pub addr: u64,
    /// "major:minor" of the client's block device.
    pub device: String,
    pub block_size: u32,
    /// Tree locks (6.4+), 0 before.
    pub num_locks: u32,
    pub how: ClientHow,
    pub at_ns: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientHow {
    Created,
    /// Already there when bufscope started; seen in its first operation.
    Seen,
    Destroyed,
}

/// One event from the ring buffer.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    LockWait(LockWait),
    Op(BufioOp),
    Client(ClientSighting),
}

/// Events from the ring buffer, in batches as they become available.
pub struct EventStream {
    ring: AsyncFd<RingBuf<MapData>>,
    malformed: u64,
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream")
            .field("malformed", &self.malformed)
            .finish_non_exhaustive()
    }
}

impl EventStream {
    fn new(ring: RingBuf<MapData>) -> io::Result<Self> {
        // SAFETY: the ring buffer owns its fd, which stays open as long as the AsyncFd holds it.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok(Self { ring, malformed: 0 })
    }

    /// Waits until events are available, then appends all of them to `out`.
    pub async fn next_batch(&mut self, out: &mut Vec<Event>) -> io::Result<()> {
        let mut guard = self.ring.readable_mut().await?;
        let malformed = drain(guard.get_inner_mut(), out);
        guard.clear_ready();
        self.malformed += malformed;
        Ok(())
    }

    /// Appends whatever events are in the ring buffer now, without waiting.
    pub fn drain_now(&mut self, out: &mut Vec<Event>) {
        self.malformed += drain(self.ring.get_mut(), out);
    }

    /// Records with an unknown kind or size (a mismatched eBPF object would cause them).
    pub fn malformed(&self) -> u64 {
        self.malformed
    }
}

fn drain(ring: &mut RingBuf<MapData>, out: &mut Vec<Event>) -> u64 {
    let mut malformed = 0;
    while let Some(item) = ring.next() {
        match decode(&item) {
            Some(event) => out.push(event),
            None => malformed += 1,
        }
    }
    malformed
}

/// Reads a `T` from the start of a record of at least its size.
fn read_record<T: Copy>(record: &[u8]) -> Option<T> {
    if record.len() < size_of::<T>() {
        return None;
    }
    // SAFETY: the length was checked; T is one of the ABI's plain-data types, valid for any
    // bytes, and the ring buffer gives no alignment promise, hence the unaligned read.
    Some(unsafe { std::ptr::read_unaligned(record.as_ptr().cast()) })
}

/// Turns one ring-buffer record into an event.
fn decode(record: &[u8]) -> Option<Event> {
    match EventKind::of_record(record)? {
        EventKind::LockWait => {
            let e: LockWaitEvent = read_record(record)?;
            let op = OpKind::from_u8(u8::try_from(e.op).ok()?);
            Some(Event::LockWait(LockWait {
                start_ns: e.start_ns,
                wait_ns: e.wait_ns,
                lock_addr: e.lock_addr,
                tid: e.tid,
                tgid: e.tgid,
                cpu: e.cpu,
                flags: e.flags,
                ret: e.ret,
                stack_id: u32::try_from(e.stack_id).ok(),
                op,
                op_client: if op.is_some() { e.op_client } else { 0 },
            }))
        }
        EventKind::BufioOp => {
            let e: BufioOpEvent = read_record(record)?;
            Some(Event::Op(BufioOp {
                start_ns: e.start_ns,
                duration_ns: e.duration_ns,
                client: e.client,
                block: e.block,
                tid: e.tid,
                tgid: e.tgid,
                cpu: e.cpu,
                kind: OpKind::from_u8(u8::try_from(e.op).ok()?)?,
                result: OpResult::from_u8(u8::try_from(e.result).ok()?)?,
                arg0: e.arg0,
                arg1: e.arg1,
                lock_wait_ns: e.lock_wait_ns,
                lock_hold_ns: e.lock_hold_ns,
            }))
        }
        EventKind::Client => {
            let e: ClientEvent = read_record(record)?;
            Some(Event::Client(ClientSighting {
                addr: e.client,
                device: bufio::device_name(&e),
                block_size: e.block_size,
                num_locks: e.num_locks,
                how: match e.how {
                    ClientEvent::CREATED => ClientHow::Created,
                    ClientEvent::DESTROYED => ClientHow::Destroyed,
                    _ => ClientHow::Seen,
                },
                at_ns: e.at_ns,
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_of<T>(e: &T) -> Vec<u8> {
        // SAFETY: only used with the ABI's #[repr(C)] types, which have no padding.
        unsafe { std::slice::from_raw_parts((e as *const T).cast::<u8>(), size_of_val(e)) }.to_vec()
    }

    #[test]
    fn decodes_lock_wait_records_and_rejects_others() {
        let event = LockWaitEvent {
            kind: EventKind::LockWait as u32,
            flags: 0x20,
            tid: 7,
            tgid: 5,
            cpu: 1,
            ret: -4,
            start_ns: 100,
            wait_ns: 25,
            lock_addr: 0xffff_8880_0000_1000,
            op_client: 0xffff_8881_0000_0000,
            stack_id: 3,
            op: bufscope_abi::op::READ,
        };
        let bytes = bytes_of(&event);
        let Some(Event::LockWait(decoded)) = decode(&bytes) else {
            panic!("decodes as a lock wait");
        };
        assert_eq!(
            (decoded.tid, decoded.tgid, decoded.cpu, decoded.ret),
            (7, 5, 1, -4)
        );
        assert_eq!(decoded.end_ns(), 125);
        assert_eq!(decoded.lock_addr, 0xffff_8880_0000_1000);
        assert_eq!(decoded.stack_id, Some(3));
        assert_eq!(decoded.op, Some(OpKind::Read));
        assert_eq!(decoded.op_client, 0xffff_8881_0000_0000);
        assert_eq!(decode(&bytes[..40]), None, "short record");
        let mut other = bytes.clone();
        other[0] = 99;
        assert_eq!(decode(&other), None, "unknown kind");

        let no_stack_no_op = LockWaitEvent {
            stack_id: -17,
            op: 0,
            ..event
        };
        let Some(Event::LockWait(decoded)) = decode(&bytes_of(&no_stack_no_op)) else {
            panic!("decodes");
        };
        assert_eq!(
            (decoded.stack_id, decoded.op, decoded.op_client),
            (None, None, 0)
        );
    }

    #[test]
    fn decodes_operations_and_clients() {
        let op = BufioOpEvent {
            kind: EventKind::BufioOp as u32,
            op: bufscope_abi::op::READ,
            tid: 9,
            tgid: 9,
            cpu: 0,
            result: bufscope_abi::result::MISS,
            start_ns: 1_000,
            duration_ns: 500,
            client: 0xffff_8881_0000_0000,
            block: 77,
            arg0: 0,
            arg1: 0,
            lock_wait_ns: 120,
            lock_hold_ns: 30,
        };
        let Some(Event::Op(decoded)) = decode(&bytes_of(&op)) else {
            panic!("decodes as an operation");
        };
        assert_eq!(
            (decoded.kind, decoded.result),
            (OpKind::Read, OpResult::Miss)
        );
        assert_eq!(
            (decoded.block, decoded.lock_wait_ns, decoded.lock_hold_ns),
            (77, 120, 30)
        );
        let bad = BufioOpEvent { op: 99, ..op };
        assert_eq!(decode(&bytes_of(&bad)), None, "unknown operation kind");

        let client = ClientEvent {
            kind: EventKind::Client as u32,
            how: ClientEvent::CREATED,
            dev: (253 << 20) | 2,
            block_size: 4096,
            num_locks: 64,
            _pad: 0,
            client: 0xffff_8881_0000_0000,
            at_ns: 5,
        };
        let Some(Event::Client(seen)) = decode(&bytes_of(&client)) else {
            panic!("decodes as a client");
        };
        assert_eq!(seen.device, "253:2");
        assert_eq!(
            (seen.how, seen.block_size, seen.num_locks),
            (ClientHow::Created, 4096, 64)
        );
    }

    #[test]
    fn abi_operation_numbers_match_the_trace_format() {
        use bufscope_abi::{op, result};
        let pairs = [
            (op::GET, OpKind::Get),
            (op::READ, OpKind::Read),
            (op::NEW, OpKind::New),
            (op::PREFETCH, OpKind::Prefetch),
            (op::RELEASE, OpKind::Release),
            (op::MARK_DIRTY, OpKind::MarkDirty),
            (op::MARK_PARTIAL_DIRTY, OpKind::MarkPartialDirty),
            (op::WRITE_DIRTY_ASYNC, OpKind::WriteDirtyAsync),
            (op::WRITE_DIRTY, OpKind::WriteDirty),
            (op::FORGET, OpKind::Forget),
            (op::FORGET_BUFFERS, OpKind::ForgetBuffers),
            (op::CLIENT_CREATE, OpKind::ClientCreate),
            (op::CLIENT_DESTROY, OpKind::ClientDestroy),
        ];
        assert_eq!(pairs.len(), OpKind::ALL.len());
        for (number, kind) in pairs {
            assert_eq!(number, kind as u32, "{kind:?}");
        }
        for (number, r) in [
            (result::NONE, OpResult::None),
            (result::HIT, OpResult::Hit),
            (result::MISS, OpResult::Miss),
            (result::ERROR, OpResult::Error),
        ] {
            assert_eq!(number, r as u32, "{r:?}");
        }
    }

    #[test]
    fn the_ebpf_object_has_every_program_and_map_user_space_names() {
        let object = aya_obj::Object::parse(EBPF_OBJECT).expect("parses");
        let programs = [
            names::BEGIN_BTF_PROGRAM,
            names::END_BTF_PROGRAM,
            names::BEGIN_TP_PROGRAM,
            names::END_TP_PROGRAM,
            names::OP_RETURN_PROGRAM,
        ]
        .into_iter()
        .chain(bufio::OPERATIONS.iter().map(|p| p.program))
        .chain(bufio::internal_points(Design::Classic).map(|p| p.program))
        .chain(bufio::internal_points(Design::Sharded).map(|p| p.program));
        for program in programs {
            assert!(object.programs.contains_key(program), "program {program}");
        }
        for map in [
            names::EVENTS_MAP,
            names::COUNTERS_MAP,
            names::STACKS_MAP,
            names::WAIT_HIST_MAP,
            names::OP_STATS_MAP,
        ] {
            assert!(object.maps.contains_key(map), "map {map}");
        }
        assert_eq!(object.license.to_str().unwrap(), "Dual MIT/GPL");
    }
}
