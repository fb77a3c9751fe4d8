//! Loading bufscope's eBPF object and attaching it: the lock tracepoints as tp_btf or classic
//! tracepoints, and every dm-bufio probe point this kernel has, each missing one with why.

use std::{
    collections::{HashMap, HashSet},
    os::fd::{AsFd, OwnedFd},
    sync::Arc,
};

use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{Map, MapData, MapError, PerCpuArray, PerCpuHashMap, RingBuf, StackTraceMap},
    programs::{BtfTracePoint, KProbe, ProgramError, RawTracePoint, TracePoint},
};
use bufscope_abi::{
    BufioOffsets, ProbeConfig, TaskOffsets, ThinOffsets, TracepointOffsets, ZoneOffsets, names,
};
use bufscope_trace::Symbol;

use super::{
    AttachMode, AttachedAs, BufioProbes, DEFAULT_RINGBUF_BYTES, LockProbes, ProbeError,
    error_chain,
    fentry::{self, FentryError, FentryUnavailable, ModuleBtf, TracingLink, TracingPrograms},
    kfunc,
    maps::take_map,
    processes::{ProcessFilter, ProcessMap},
    sys::{self, TracingKind},
};
use crate::kernel::{
    bufio::{self, BtfLayoutError, BufioBtf, Design, Layout, ProbePoint, Role, Symbols},
    kretprobe::{self, TracefsKretprobe},
    lock_classes, system, tracepoint_format,
    zones::{self, ZoneLayout},
};

/// The eBPF object, built from ebpf/probes by build.rs.
pub(super) static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bufscope"));

/// What to attach and how.
#[derive(Clone, Debug)]
pub struct AttachOptions {
    pub mode: AttachMode,
    pub ringbuf_bytes: u32,
    pub config: ProbeConfig,
    /// Also probe dm-bufio's functions, where the kernel has them.
    pub bufio: bool,
    /// With fentry/fexit or kprobes.
    pub bufio_probes: BufioProbes,
    /// Whose lock waits to keep.
    pub processes: ProcessFilter,
}

impl Default for AttachOptions {
    fn default() -> Self {
        Self {
            mode: AttachMode::Auto,
            ringbuf_bytes: DEFAULT_RINGBUF_BYTES,
            config: ProbeConfig::DEFAULT,
            bufio: true,
            bufio_probes: BufioProbes::Auto,
            processes: ProcessFilter::default(),
        }
    }
}

/// Why no dm-bufio probe point was attached at all. Each message is complete, its cause
/// included: record, live and doctor print it and trace files keep it as text.
#[derive(Debug, thiserror::Error)]
pub enum BufioUnavailable {
    #[error("not asked for")]
    NotAskedFor,
    #[error("reading /proc/kallsyms: {0}")]
    Kallsyms(std::io::Error),
    #[error(
        "dm-bufio is not loaded (no dm_bufio functions in /proc/kallsyms); it loads with \
         dm-thin-pool, dm-cache, dm-verity or dm-integrity, or `modprobe dm_bufio`"
    )]
    NotLoaded,
    #[error("this kernel has no kprobes (CONFIG_KPROBES / CONFIG_KPROBE_EVENTS)")]
    NoKprobes,
    #[error(transparent)]
    Layout(#[from] BtfLayoutError),
}

/// Why one dm-bufio probe point is not attached. Each message is complete, its cause included:
/// record, live and doctor print it and trace files keep it as text.
#[derive(Debug, thiserror::Error)]
pub enum PointError {
    #[error("not in /proc/kallsyms (kernels: {kernels}; may be inlined by this build)")]
    NotInKallsyms { kernels: &'static str },
    #[error("program {0} missing from the eBPF object")]
    MissingProgram(&'static str),
    #[error("{} missing", names::OP_RETURN_PROGRAM)]
    MissingReturnProgram,
    #[error("{program}: {cause}")]
    NotAKprobe {
        program: &'static str,
        cause: ProgramError,
    },
    #[error("loading {program}: {cause}")]
    Load {
        program: &'static str,
        cause: ProgramError,
    },
    #[error("kprobe on {function}: {cause}")]
    Kprobe {
        function: &'static str,
        cause: ProgramError,
    },
    #[error("kretprobe on {function}: {cause}")]
    Kretprobe {
        function: &'static str,
        cause: ProgramError,
    },
    /// An operation's return program, shared by all of them, could not be loaded.
    #[error(transparent)]
    ReturnProgram(Arc<PointError>),
    /// fentry/fexit only was asked for, and this function cannot be traced that way.
    #[error("fentry: {0}")]
    Fentry(FentryError),
    /// fentry/fexit only was asked for, and no function can be traced that way here.
    #[error("fentry: {0}")]
    FentryUnavailable(Arc<String>),
}

/// How one dm-bufio probe point fared.
#[derive(Debug)]
pub struct PointReport {
    pub function: &'static str,
    pub role: Role,
    /// `Ok(how)` when attached, `Err(why not)` otherwise.
    pub status: Result<String, PointError>,
    /// Why a point attached with kprobes was not traced with fentry/fexit, when that was
    /// tried for it alone (see [`BufioReport::tracing_unavailable`] for all points at once).
    pub not_fentry: Option<String>,
}

/// The dm-bufio side of an attach.
#[derive(Debug, Default)]
pub struct BufioReport {
    /// Why no dm-bufio probe was attached at all, if none was.
    pub unavailable: Option<BufioUnavailable>,
    pub design: Option<Design>,
    pub layout: Option<Layout>,
    pub points: Vec<PointReport>,
    /// Why no point was tried with fentry/fexit (kprobes were asked for, or the kernel cannot).
    pub tracing_unavailable: Option<String>,
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
                    p.status
                        .as_ref()
                        .err()
                        .map_or_else(String::new, ToString::to_string),
                )
            })
            .collect()
    }

    /// How many points attached each way: "3 as fentry, 12 as fentry + fexit, 1 as kprobe".
    pub fn attached_by_kind(&self) -> String {
        let mut kinds = std::collections::BTreeMap::new();
        for point in self.attached() {
            if let Ok(how) = &point.status {
                *kinds.entry(how.as_str()).or_insert(0) += 1;
            }
        }
        kinds
            .iter()
            .map(|(how, n)| format!("{n} as {how}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Operations are seen (at least one exported function and the return probe attached).
    pub fn sees_operations(&self) -> bool {
        self.attached().any(|p| p.role == Role::Operation)
    }
}

impl LockProbes {
    /// Loads the programs and attaches them as `options` ask.
    pub fn attach(options: AttachOptions) -> Result<Self, ProbeError> {
        system::raise_memlock_limit();
        // Resolved before load: the offsets are globals baked into the programs.
        let mut bufio = BufioReport::default();
        let mut found = None;
        if options.bufio {
            match prepare_bufio(options.bufio_probes) {
                Ok((symbols, design, layout, types)) => {
                    bufio.design = Some(design);
                    bufio.layout = Some(layout);
                    found = Some((symbols, types));
                }
                Err(why) => bufio.unavailable = Some(why),
            }
        } else {
            bufio.unavailable = Some(BufioUnavailable::NotAskedFor);
        }
        let bufio_offsets = bufio
            .layout
            .as_ref()
            .map_or(BufioOffsets::UNSET, |l| l.offsets);
        // Without them, mmap_lock and siglock waits keep their addresses for names.
        let (task_offsets, task_note) = match lock_classes::task_offsets() {
            Ok(o) => (o, None),
            Err(e) => (
                TaskOffsets::UNSET,
                Some(format!("mmap_lock and siglock are not named: {e}")),
            ),
        };
        // dm-thin pools' metadata locks are named where dm-thin is there to name.
        let thin_offsets = lock_classes::thin_offsets();
        // Zone locks are named where the kernel has memory cgroups to find the nodes through.
        let zone_layout = zones::zone_layout(zones::possible_nodes());
        let offsets = Offsets {
            bufio: bufio_offsets,
            task: task_offsets,
            thin: thin_offsets.as_ref().map_or(ThinOffsets::UNSET, |o| *o),
            zone: zone_layout.as_ref().map_or(ZoneOffsets::UNSET, |(o, _)| *o),
        };
        let mut probes = match options.mode {
            AttachMode::TpBtf => Self::attach_tp_btf(&options, &offsets),
            AttachMode::Tracepoint => Self::attach_tracepoint(&options, &offsets),
            AttachMode::Auto => Self::attach_tp_btf(&options, &offsets).or_else(|tp_btf| {
                log::info!(
                    "tp_btf unavailable ({}); trying the classic tracepoint",
                    tp_btf.with_cause()
                );
                Self::attach_tracepoint(&options, &offsets).map_err(|tracepoint| {
                    ProbeError::NoAttachMode {
                        tp_btf: Box::new(tp_btf),
                        tracepoint: Box::new(tracepoint),
                    }
                })
            }),
        }?;
        probes.notes.extend(task_note);
        match zone_layout {
            Ok((offsets, layout)) => match probes.find_zones(offsets.nodes, &layout) {
                Ok(symbols) => probes.zone_locks = symbols,
                Err(why) => probes
                    .notes
                    .push(format!("zone locks are not named: {why}")),
            },
            Err(e) => probes.notes.push(format!("zone locks are not named: {e}")),
        }
        let maps = std::mem::take(&mut probes.map_fds);
        if let Some((symbols, types)) = found {
            probes.attach_bufio(&symbols, types, &maps, options.bufio_probes, &mut bufio);
        }
        // The programs hold their maps now; these descriptors were only for loading them.
        drop(maps);
        match thin_offsets {
            Ok(_) => {
                if let Err(why) = probes.attach_thin() {
                    probes
                        .notes
                        .push(format!("dm-thin metadata locks are not named: {why}"));
                }
            }
            Err(e) if std::path::Path::new(lock_classes::THIN_MODULE_BTF).exists() => probes
                .notes
                .push(format!("dm-thin metadata locks are not named: {e}")),
            Err(_) => {}
        }
        probes.bufio = bufio;
        match aya::sys::enable_stats(aya::sys::Stats::RunTime) {
            Ok(fd) => probes.stats_fd = Some(fd),
            Err(e) => probes.notes.push(format!(
                "BPF run-time statistics unavailable: {}",
                error_chain(&e)
            )),
        }
        Ok(probes)
    }

    /// tp_btf programs, calling the kernel functions this kernel has ([`kfunc`]); should the
    /// verifier refuse those calls, once more without them, saying what is lost.
    fn attach_tp_btf(options: &AttachOptions, offsets: &Offsets) -> Result<Self, ProbeError> {
        Self::attach_tp_btf_with(options, offsets, true).or_else(|with_kfuncs| {
            let mut probes = Self::attach_tp_btf_with(options, offsets, false)?;
            probes.notes.push(format!(
                "locks in slab objects are not named and owner stacks are not taken: the kernel \
                 refused its own functions' calls ({})",
                with_kfuncs.with_cause()
            ));
            Ok(probes)
        })
    }

    fn attach_tp_btf_with(
        options: &AttachOptions,
        offsets: &Offsets,
        kfuncs: bool,
    ) -> Result<Self, ProbeError> {
        let (mut ebpf, notes) = load(TracepointOffsets::USUAL, options, offsets, kfuncs)?;
        let processes = process_map(&mut ebpf, &options.processes)?;
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
        Self::new(ebpf, AttachedAs::TpBtf, notes, processes)
    }

    fn attach_tracepoint(options: &AttachOptions, offsets: &Offsets) -> Result<Self, ProbeError> {
        let tracefs = system::ensure_tracefs().map_err(ProbeError::Tracefs)?;
        let mut notes = Vec::new();
        if let system::Tracefs::MountedNow(path) = &tracefs {
            notes.push(format!("mounted tracefs at {}", path.display()));
        }
        let tp_offsets = tracepoint_format::lock_contention_offsets(tracefs.path())?;
        // Classic tracepoint programs may not call the kfuncs: each call returns nothing.
        let (mut ebpf, load_notes) = load(tp_offsets, options, offsets, false)?;
        notes.extend(load_notes);
        let processes = process_map(&mut ebpf, &options.processes)?;
        for (program, event) in [
            (names::BEGIN_TP_PROGRAM, "contention_begin"),
            (names::END_TP_PROGRAM, "contention_end"),
        ] {
            let wrap = |source| ProbeError::Program { program, source };
            let p: &mut TracePoint = program_mut(&mut ebpf, program)?.try_into().map_err(wrap)?;
            p.load().map_err(wrap)?;
            p.attach("lock", event).map_err(wrap)?;
        }
        Self::new(ebpf, AttachedAs::Tracepoint, notes, processes)
    }

    fn new(
        mut ebpf: Ebpf,
        mode: AttachedAs,
        notes: Vec<String>,
        processes: ProcessMap,
    ) -> Result<Self, ProbeError> {
        let mut map_fds = map_fds(&ebpf)?;
        // Taken out of the object before the programs attached (to fill it first), the process
        // filter is still one of its maps: programs loaded outside aya need its descriptor too.
        map_fds.insert(
            names::PROCESSES_MAP.to_string(),
            processes
                .owned_fd()
                .map_err(|e| ProbeError::MapFd(names::PROCESSES_MAP.to_string(), e))?,
        );
        // After map_fds: the logger takes its ring buffer out of the object, and the programs
        // loaded outside aya log through it too.
        let kernel_notes = aya_log::EbpfLogger::init(&mut ebpf)
            .inspect_err(|e| log::debug!("the eBPF programs' notes cannot be read: {e}"))
            .ok();
        let map_error =
            |name: &'static str| move |source: MapError| ProbeError::Map { name, source };
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
        let lock_classes =
            aya::maps::HashMap::try_from(take_map(&mut ebpf, names::LOCK_CLASSES_MAP)?)
                .map_err(map_error(names::LOCK_CLASSES_MAP))?;
        let slab_locks = aya::maps::HashMap::try_from(take_map(&mut ebpf, names::SLAB_LOCKS_MAP)?)
            .map_err(map_error(names::SLAB_LOCKS_MAP))?;
        let owner_stacks =
            aya::maps::HashMap::try_from(take_map(&mut ebpf, names::OWNER_STACKS_MAP)?)
                .map_err(map_error(names::OWNER_STACKS_MAP))?;
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
            tracing_links: Vec::new(),
            map_fds,
            stats_fd: None,
            final_stats: Vec::new(),
            processes,
            kernel_notes,
            slab_locks,
            owner_stacks,
            lock_classes,
            zone_locks: Vec::new(),
        })
    }

    /// Runs `find_nodes` once from this task and names the zone locks of the nodes it found.
    fn find_zones(&mut self, nodes: u32, layout: &ZoneLayout) -> Result<Vec<Symbol>, String> {
        let ebpf = self.ebpf.as_mut().ok_or("the programs are not loaded")?;
        let program: &mut RawTracePoint = program_mut(ebpf, names::FIND_NODES_PROGRAM)
            .map_err(|e| e.to_string())?
            .try_into()
            .map_err(|e: ProgramError| e.to_string())?;
        program.load().map_err(|e| error_chain(&e))?;
        let fd = program.fd().map_err(|e| error_chain(&e))?;
        let found = sys::prog_test_run(fd.as_fd()).map_err(|e| {
            format!(
                "running {}: {}",
                names::FIND_NODES_PROGRAM,
                sys::describe(&e)
            )
        })?;
        let map = ebpf
            .map(names::NODES_MAP)
            .ok_or(ProbeError::MissingMap(names::NODES_MAP))
            .map_err(|e| e.to_string())?;
        let table: aya::maps::Array<_, u64> =
            aya::maps::Array::try_from(map).map_err(|e| error_chain(&e))?;
        let nodes: Vec<(u32, u64)> = (0..nodes)
            .filter_map(|node| Some((node, table.get(&node, 0).ok()?)))
            .filter(|&(_, pgdat)| pgdat != 0)
            .collect();
        if found != 0 || nodes.is_empty() {
            return Err("no memory node was reachable from this task's memory cgroup".into());
        }
        Ok(layout.lock_symbols(&nodes))
    }

    /// Attaches every dm-bufio point the kernel has; records why each other one is missing.
    /// Each point is traced with fentry/fexit where that works ([`fentry`]), else with kprobes,
    /// unless `how` asks for one kind only.
    /// The thin probe on each of dm-thin's rarely called metadata functions this kernel has,
    /// then one status query of every thin pool (as `dmsetup status` does, where dmsetup is
    /// installed), so that a pool is named at once even while nothing commits. `Err` says why
    /// no function could be probed.
    fn attach_thin(&mut self) -> Result<(), String> {
        let ebpf = self.ebpf.as_mut().ok_or("no eBPF object")?;
        let program = names::THIN_METADATA_PROGRAM;
        let p: &mut KProbe = ebpf
            .program_mut(program)
            .ok_or(format!("{program} is not in the eBPF object"))?
            .try_into()
            .map_err(|e: ProgramError| error_chain(&e))?;
        p.load()
            .map_err(|e| format!("loading {program}: {}", error_chain(&e)))?;
        let mut failed = Vec::new();
        let mut attached = 0;
        for function in lock_classes::THIN_METADATA_FUNCTIONS {
            match p.attach(function, 0) {
                Ok(_) => attached += 1,
                Err(e) => failed.push(format!("{function}: {}", error_chain(&e))),
            }
        }
        if attached == 0 {
            return Err(failed.join("; "));
        }
        let _ = std::process::Command::new("dmsetup")
            .args(["status", "--target", "thin-pool"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        Ok(())
    }

    fn attach_bufio(
        &mut self,
        symbols: &Symbols,
        types: BufioBtf,
        maps: &HashMap<String, OwnedFd>,
        how: BufioProbes,
        report: &mut BufioReport,
    ) {
        let Some(ebpf) = self.ebpf.as_mut() else {
            return;
        };
        let design = report.design.unwrap_or(Design::Classic);
        let tracing = match how {
            BufioProbes::Kprobe => Err("kprobes asked for (--bufio-probes kprobe)".to_string()),
            BufioProbes::Auto | BufioProbes::Fentry => {
                prepare_tracing(types, maps).map_err(|e| e.to_string())
            }
        };
        report.tracing_unavailable = tracing.as_ref().err().cloned();
        let kprobes = how != BufioProbes::Fentry && kprobes_exist();
        let tracefs = kprobes.then(|| system::ensure_tracefs().ok()).flatten();
        if let Some(tracefs) = &tracefs {
            kretprobe::remove_stale_events(tracefs.path());
        }
        let mut loaded = HashSet::new();
        let return_loaded = if kprobes {
            load_return_program(ebpf).map_err(Arc::new)
        } else {
            Ok(())
        };
        let points = bufio::OPERATIONS
            .iter()
            .copied()
            .chain(bufio::internal_points(design));
        for point in points {
            let mut not_fentry = None;
            let status = if !symbols.has(point.function) {
                Err(PointError::NotInKallsyms {
                    kernels: point.kernels,
                })
            } else {
                let traced = tracing
                    .as_ref()
                    .map(|(programs, module)| attach_traced(programs, module, &point));
                match (traced, kprobes) {
                    (Ok(Ok((links, how))), _) => {
                        self.tracing_links.extend(links);
                        Ok(how.to_string())
                    }
                    (Ok(Err(why)), false) => Err(PointError::Fentry(why)),
                    (Err(why), false) => Err(PointError::FentryUnavailable(Arc::new(why.clone()))),
                    (traced, true) => {
                        if let Ok(Err(why)) = traced {
                            not_fentry = Some(why.to_string());
                        }
                        if point.role == Role::Operation
                            && let Err(why) = &return_loaded
                        {
                            Err(PointError::ReturnProgram(Arc::clone(why)))
                        } else {
                            attach_entry(ebpf, point.program, point.function, &mut loaded).and_then(
                                |()| {
                                    if point.role != Role::Operation {
                                        return Ok("kprobe".to_string());
                                    }
                                    attach_return(
                                        ebpf,
                                        point.function,
                                        tracefs.as_ref().map(|t| t.path()),
                                        &mut self.kretprobes,
                                    )
                                },
                            )
                        }
                    }
                }
            };
            report.points.push(PointReport {
                function: point.function,
                role: point.role,
                status,
                not_fentry,
            });
        }
    }

    /// How the lock tracepoints were attached.
    pub fn mode(&self) -> AttachedAs {
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

    /// Detaches and unloads the programs; the maps stay readable. Program statistics are
    /// taken first, so they cover the whole run, and the programs' last notes are told.
    pub fn detach(&mut self) {
        if self.ebpf.is_some() {
            self.final_stats = self.program_stats();
        }
        self.kretprobes.clear();
        self.tracing_links.clear();
        self.ebpf = None;
        self.stats_fd = None;
        self.flush_kernel_notes();
    }

    /// Tells the notes the programs logged since the last call (a map full, a return matching
    /// no entry: `bufscope_ebpf::notes`), as `info` records of the `log` crate: shown with `-v`.
    /// The loops call it each second; the live view only at its end, when its screen is closed.
    pub fn flush_kernel_notes(&mut self) {
        if let Some(notes) = &mut self.kernel_notes {
            notes.flush();
        }
    }
}

/// Finds dm-bufio and its layout, or says why it cannot be probed.
fn prepare_bufio(
    how: BufioProbes,
) -> Result<(Symbols, Design, Layout, BufioBtf), BufioUnavailable> {
    let symbols = Symbols::from_kallsyms().map_err(BufioUnavailable::Kallsyms)?;
    if !symbols.present() {
        return Err(BufioUnavailable::NotLoaded);
    }
    if how == BufioProbes::Kprobe && !kprobes_exist() {
        return Err(BufioUnavailable::NoKprobes);
    }
    let types = BufioBtf::read()?;
    let layout = Layout::of(&types)?;
    let design = symbols.design();
    Ok((symbols, design, layout, types))
}

/// The kernel can make kprobes (CONFIG_KPROBES, through perf or tracefs).
fn kprobes_exist() -> bool {
    std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists()
        || std::path::Path::new("/sys/kernel/tracing/kprobe_events").exists()
}

/// What tracing dm-bufio's functions with fentry/fexit takes: its BTF object and bufscope's
/// programs relocated against the maps already created.
fn prepare_tracing(
    types: BufioBtf,
    maps: &HashMap<String, OwnedFd>,
) -> Result<(TracingPrograms, ModuleBtf), FentryUnavailable> {
    let programs = TracingPrograms::relocate(EBPF_OBJECT, maps)?;
    let module = ModuleBtf::open(types.object, types.btf)?;
    Ok((programs, module))
}

/// Traces one point with fentry (and, for an operation, fexit for its return). The return is
/// attached first: a return with no entry is counted as unmatched, while an entry whose return
/// is never seen would hold a frame. Either both attach or neither stays.
fn attach_traced(
    programs: &TracingPrograms,
    module: &ModuleBtf,
    point: &ProbePoint,
) -> Result<(Vec<TracingLink>, &'static str), FentryError> {
    let entry = format!("{}{}", point.program, names::FENTRY_SUFFIX);
    let mut links = Vec::with_capacity(2);
    if point.role == Role::Operation {
        links.push(fentry::attach(
            programs,
            module,
            names::OP_FEXIT_PROGRAM,
            TracingKind::Fexit,
            point.function,
        )?);
    }
    links.push(fentry::attach(
        programs,
        module,
        &entry,
        TracingKind::Fentry,
        point.function,
    )?);
    let how = if point.role == Role::Operation {
        "fentry + fexit"
    } else {
        "fentry"
    };
    Ok((links, how))
}

/// A descriptor of every map aya created, by the name the object gives it.
fn map_fds(ebpf: &Ebpf) -> Result<HashMap<String, OwnedFd>, ProbeError> {
    ebpf.maps()
        .map(|(name, map)| {
            let fd = map_data(map)
                .fd()
                .as_fd()
                .try_clone_to_owned()
                .map_err(|e| ProbeError::MapFd(name.to_string(), e))?;
            Ok((name.to_string(), fd))
        })
        .collect()
}

fn map_data(map: &Map) -> &MapData {
    match map {
        Map::Array(m)
        | Map::ArrayOfMaps(m)
        | Map::BloomFilter(m)
        | Map::CgroupArray(m)
        | Map::CgroupStorage(m)
        | Map::CgrpStorage(m)
        | Map::CpuMap(m)
        | Map::DevMap(m)
        | Map::DevMapHash(m)
        | Map::HashMap(m)
        | Map::HashOfMaps(m)
        | Map::InodeStorage(m)
        | Map::LpmTrie(m)
        | Map::LruHashMap(m)
        | Map::PerCpuArray(m)
        | Map::PerCpuCgroupStorage(m)
        | Map::PerCpuHashMap(m)
        | Map::PerCpuLruHashMap(m)
        | Map::PerfEventArray(m)
        | Map::ProgramArray(m)
        | Map::Queue(m)
        | Map::ReusePortSockArray(m)
        | Map::RingBuf(m)
        | Map::SockHash(m)
        | Map::SockMap(m)
        | Map::SkStorage(m)
        | Map::Stack(m)
        | Map::StackTraceMap(m)
        | Map::Unsupported(m)
        | Map::XskMap(m) => m,
    }
}

/// The return program all operations share, as a kprobe.
fn return_program(ebpf: &mut Ebpf) -> Result<&mut KProbe, PointError> {
    let program = names::OP_RETURN_PROGRAM;
    ebpf.program_mut(program)
        .ok_or(PointError::MissingReturnProgram)?
        .try_into()
        .map_err(|cause| PointError::Load { program, cause })
}

/// Loads the return program once, before any operation is attached: without it no operation
/// can be seen, and its failure is each operation's reason.
fn load_return_program(ebpf: &mut Ebpf) -> Result<(), PointError> {
    return_program(ebpf)?
        .load()
        .map_err(|cause| PointError::Load {
            program: names::OP_RETURN_PROGRAM,
            cause,
        })
}

fn attach_entry(
    ebpf: &mut Ebpf,
    program: &'static str,
    function: &'static str,
    loaded: &mut HashSet<&'static str>,
) -> Result<(), PointError> {
    let p: &mut KProbe = ebpf
        .program_mut(program)
        .ok_or(PointError::MissingProgram(program))?
        .try_into()
        .map_err(|cause| PointError::NotAKprobe { program, cause })?;
    if loaded.insert(program) {
        p.load()
            .map_err(|cause| PointError::Load { program, cause })?;
    }
    p.attach(function, 0)
        .map_err(|cause| PointError::Kprobe { function, cause })?;
    Ok(())
}

/// The return probe: through tracefs with room for many sleepers, else as aya makes it.
fn attach_return(
    ebpf: &mut Ebpf,
    function: &'static str,
    tracefs: Option<&std::path::Path>,
    made: &mut Vec<TracefsKretprobe>,
) -> Result<String, PointError> {
    let p = return_program(ebpf)?;
    let tracefs_error = match tracefs {
        Some(tracefs) => {
            let fd = p.fd().map_err(|cause| PointError::Load {
                program: names::OP_RETURN_PROGRAM,
                cause,
            })?;
            match TracefsKretprobe::attach(tracefs, function, fd.as_fd()) {
                Ok(probe) => {
                    made.push(probe);
                    return Ok(format!(
                        "kprobe + kretprobe, maxactive {}",
                        kretprobe::MAXACTIVE
                    ));
                }
                Err(e) => error_chain(&e),
            }
        }
        None => "tracefs unavailable".to_string(),
    };
    log::info!("{tracefs_error}; using the kernel's default kretprobe instead");
    p.attach(function, 0)
        .map_err(|cause| PointError::Kretprobe { function, cause })?;
    Ok("kprobe + kretprobe (default maxactive: returns may be missed)".into())
}

/// The struct offsets baked into the programs at load.
struct Offsets {
    bufio: BufioOffsets,
    task: TaskOffsets,
    thin: ThinOffsets,
    zone: ZoneOffsets,
}

/// Loads the object with its globals set; with `kfuncs`, its kernel-function calls linked to
/// those this kernel has (else each call returns nothing, see [`kfunc`]). Also returns notes on
/// what was asked for and cannot be had here (owner stacks without bpf_task_from_pid).
fn load(
    tp_offsets: TracepointOffsets,
    options: &AttachOptions,
    offsets: &Offsets,
    kfuncs: bool,
) -> Result<(Ebpf, Vec<String>), ProbeError> {
    let vmlinux = kfuncs
        .then(|| btf_rs::Btf::from_file(crate::kernel::bufio::VMLINUX_BTF).ok())
        .flatten();
    let linked = kfunc::link_kfuncs(EBPF_OBJECT, vmlinux.as_ref())?;
    let slab_names =
        linked.has("bpf_get_kmem_cache") && offsets.task.kmem_cache_name != TaskOffsets::ABSENT;
    let mut notes = Vec::new();
    let mut owners = options.config.owners;
    if owners == ProbeConfig::OWNER_STACKS && !linked.has("bpf_task_from_pid") {
        owners = ProbeConfig::OWNERS;
        notes.push(if kfuncs {
            "owner stacks are not taken: this kernel has no bpf_task_from_pid (Linux 6.2+); \
             owners are read without them"
                .to_string()
        } else {
            "owner stacks are not taken: they need the tp_btf programs and their kfunc calls; \
             owners are read without them"
                .to_string()
        });
    }
    let config = ProbeConfig {
        processes: options.processes.config_value(),
        slab_names: u32::from(slab_names),
        owners,
        // The operation programs are loaded where dm-bufio's layout was resolved.
        bufio_ops: u32::from(offsets.bufio != BufioOffsets::UNSET),
        ..options.config
    };
    let ebpf = EbpfLoader::new()
        .override_global(names::TRACEPOINT_OFFSETS_GLOBAL, &tp_offsets, true)
        .override_global(names::PROBE_CONFIG_GLOBAL, &config, true)
        .override_global(names::BUFIO_OFFSETS_GLOBAL, &offsets.bufio, true)
        .override_global(names::TASK_OFFSETS_GLOBAL, &offsets.task, true)
        .override_global(names::THIN_OFFSETS_GLOBAL, &offsets.thin, true)
        .override_global(names::ZONE_OFFSETS_GLOBAL, &offsets.zone, true)
        .map_max_entries(names::EVENTS_MAP, options.ringbuf_bytes)
        .load(&linked.object)?;
    Ok((ebpf, notes))
}

/// The process filter, written to its map before any program attaches.
fn process_map(ebpf: &mut Ebpf, filter: &ProcessFilter) -> Result<ProcessMap, ProbeError> {
    let name = names::PROCESSES_MAP;
    let map = aya::maps::HashMap::try_from(take_map(ebpf, name)?)
        .map_err(|source| ProbeError::Map { name, source })?;
    ProcessMap::new(map, filter.clone()).map_err(|source| ProbeError::Map { name, source })
}

fn program_mut<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut aya::programs::Program, ProbeError> {
    ebpf.program_mut(name)
        .ok_or(ProbeError::MissingProgram(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ebpf_object_has_every_program_and_map_user_space_names() {
        let object = aya_obj::Object::parse(EBPF_OBJECT).expect("parses");
        let programs = [
            names::BEGIN_BTF_PROGRAM,
            names::END_BTF_PROGRAM,
            names::BEGIN_TP_PROGRAM,
            names::END_TP_PROGRAM,
            names::OP_RETURN_PROGRAM,
            names::THIN_METADATA_PROGRAM,
        ]
        .into_iter()
        .chain(bufio::OPERATIONS.iter().map(|p| p.program))
        .chain(bufio::internal_points(Design::Classic).map(|p| p.program))
        .chain(bufio::internal_points(Design::Sharded).map(|p| p.program));
        for program in programs {
            assert!(object.programs.contains_key(program), "program {program}");
        }
        // Every entry program's fentry twin, and the fexit return program.
        let twins = bufio::OPERATIONS
            .iter()
            .copied()
            .chain(bufio::internal_points(Design::Classic))
            .chain(bufio::internal_points(Design::Sharded))
            .map(|p| format!("{}{}", p.program, names::FENTRY_SUFFIX))
            .chain([names::OP_FEXIT_PROGRAM.to_string()]);
        for program in twins {
            assert!(object.programs.contains_key(&program), "program {program}");
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

    #[test]
    fn missing_reasons_are_the_messages_trace_files_keep() {
        let return_missing = Arc::new(PointError::MissingReturnProgram);
        let report = BufioReport {
            points: vec![
                PointReport {
                    function: "dm_bufio_read",
                    role: Role::Operation,
                    status: Err(PointError::ReturnProgram(Arc::clone(&return_missing))),
                    not_fentry: None,
                },
                PointReport {
                    function: "dm_bufio_get",
                    role: Role::Operation,
                    status: Err(PointError::ReturnProgram(return_missing)),
                    not_fentry: None,
                },
                PointReport {
                    function: "dm_bufio_lock",
                    role: Role::ClientMutex,
                    status: Err(PointError::NotInKallsyms {
                        kernels: "all (a static function; may be inlined)",
                    }),
                    not_fentry: None,
                },
                PointReport {
                    function: "__bufio_new",
                    role: Role::Miss,
                    status: Ok("kprobe".into()),
                    not_fentry: None,
                },
            ],
            ..BufioReport::default()
        };
        assert_eq!(
            report.missing_reasons(),
            [
                ("dm_bufio_read".into(), "bufio_op_return missing".into()),
                ("dm_bufio_get".into(), "bufio_op_return missing".into()),
                (
                    "dm_bufio_lock".into(),
                    "not in /proc/kallsyms (kernels: all (a static function; may be inlined); \
                     may be inlined by this build)"
                        .into()
                ),
            ]
        );
        assert_eq!(
            BufioUnavailable::Kallsyms(std::io::Error::from_raw_os_error(libc::EACCES)).to_string(),
            "reading /proc/kallsyms: Permission denied (os error 13)"
        );
    }
}
