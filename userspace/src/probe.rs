//! Loads bufscope's eBPF programs, attaches them to the kernel's lock contention tracepoints,
//! and streams their events to user space.
//!
//! tp_btf is preferred (typed arguments, no tracefs, lower overhead); the classic tracepoint is
//! the fallback, with field offsets read from this kernel's format files before load.

use std::{collections::BTreeMap, io};

use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, ProgramError, TracePoint},
};
use bufscope_abi::{Counter, EventKind, LockWaitEvent, TracepointOffsets, names};
use bufscope_trace::LockWait;
use tokio::io::{Interest, unix::AsyncFd};

use crate::{system, tracepoint_format};

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

/// The lock contention programs, attached. Dropping it detaches them.
pub struct LockProbes {
    ebpf: Option<Ebpf>,
    mode: &'static str,
    notes: Vec<String>,
    events: Option<RingBuf<MapData>>,
    counters: PerCpuArray<MapData, u64>,
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
    /// Loads the programs and attaches them as `mode` asks.
    pub fn attach(mode: AttachMode, ringbuf_bytes: u32) -> Result<Self, ProbeError> {
        system::raise_memlock_limit();
        match mode {
            AttachMode::TpBtf => Self::attach_tp_btf(ringbuf_bytes),
            AttachMode::Tracepoint => Self::attach_tracepoint(ringbuf_bytes),
            AttachMode::Auto => Self::attach_tp_btf(ringbuf_bytes).or_else(|tp_btf| {
                log::info!("tp_btf unavailable ({tp_btf}); trying the classic tracepoint");
                Self::attach_tracepoint(ringbuf_bytes).map_err(|tracepoint| {
                    ProbeError::NoAttachMode {
                        tp_btf: tp_btf.to_string(),
                        tracepoint: tracepoint.to_string(),
                    }
                })
            }),
        }
    }

    fn attach_tp_btf(ringbuf_bytes: u32) -> Result<Self, ProbeError> {
        let mut ebpf = load(TracepointOffsets::USUAL, ringbuf_bytes)?;
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

    fn attach_tracepoint(ringbuf_bytes: u32) -> Result<Self, ProbeError> {
        let tracefs = system::ensure_tracefs().map_err(ProbeError::Tracefs)?;
        let mut notes = Vec::new();
        if let system::Tracefs::MountedNow(path) = &tracefs {
            notes.push(format!("mounted tracefs at {}", path.display()));
        }
        let offsets = tracepoint_format::lock_contention_offsets(tracefs.path())
            .map_err(ProbeError::Tracefs)?;
        let mut ebpf = load(offsets, ringbuf_bytes)?;
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
        let events = RingBuf::try_from(take_map(&mut ebpf, names::EVENTS_MAP)?).map_err(|e| {
            ProbeError::Map {
                name: names::EVENTS_MAP,
                detail: e.to_string(),
            }
        })?;
        let counters =
            PerCpuArray::try_from(take_map(&mut ebpf, names::COUNTERS_MAP)?).map_err(|e| {
                ProbeError::Map {
                    name: names::COUNTERS_MAP,
                    detail: e.to_string(),
                }
            })?;
        Ok(Self {
            ebpf: Some(ebpf),
            mode,
            notes,
            events: Some(events),
            counters,
        })
    }

    /// "tp_btf" or "tracepoint".
    pub fn mode(&self) -> &'static str {
        self.mode
    }

    /// What attaching did besides attaching (e.g. mounting tracefs), for the user.
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// One line per attached probe, for trace headers and status lines.
    pub fn descriptions(&self) -> Vec<String> {
        ["lock:contention_begin", "lock:contention_end"]
            .iter()
            .map(|tp| format!("{tp} ({})", self.mode))
            .collect()
    }

    /// The event ring buffer, as an async stream; available once.
    pub fn event_stream(&mut self) -> io::Result<EventStream> {
        let ring = self
            .events
            .take()
            .ok_or_else(|| io::Error::other("the event stream was already taken"))?;
        EventStream::new(ring)
    }

    /// Detaches and unloads the programs; the maps stay readable.
    pub fn detach(&mut self) {
        self.ebpf = None;
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
}

fn load(offsets: TracepointOffsets, ringbuf_bytes: u32) -> Result<Ebpf, ProbeError> {
    Ok(EbpfLoader::new()
        .override_global(names::TRACEPOINT_OFFSETS_GLOBAL, &offsets, true)
        .map_max_entries(names::EVENTS_MAP, ringbuf_bytes)
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

/// Lock-wait events from the ring buffer, in batches as they become available.
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
    pub async fn next_batch(&mut self, out: &mut Vec<LockWait>) -> io::Result<()> {
        let mut guard = self.ring.readable_mut().await?;
        let malformed = drain(guard.get_inner_mut(), out);
        guard.clear_ready();
        self.malformed += malformed;
        Ok(())
    }

    /// Appends whatever events are in the ring buffer now, without waiting.
    pub fn drain_now(&mut self, out: &mut Vec<LockWait>) {
        self.malformed += drain(self.ring.get_mut(), out);
    }

    /// Records with an unknown kind or size (a mismatched eBPF object would cause them).
    pub fn malformed(&self) -> u64 {
        self.malformed
    }
}

fn drain(ring: &mut RingBuf<MapData>, out: &mut Vec<LockWait>) -> u64 {
    let mut malformed = 0;
    while let Some(item) = ring.next() {
        match decode(&item) {
            Some(event) => out.push(event),
            None => malformed += 1,
        }
    }
    malformed
}

/// Turns one ring-buffer record into a trace event.
fn decode(record: &[u8]) -> Option<LockWait> {
    if EventKind::of_record(record)? != EventKind::LockWait
        || record.len() < size_of::<LockWaitEvent>()
    {
        return None;
    }
    // SAFETY: the length was checked; LockWaitEvent is plain data valid for any bytes, and the
    // ring buffer gives no alignment promise, hence the unaligned read.
    let e: LockWaitEvent = unsafe { std::ptr::read_unaligned(record.as_ptr().cast()) };
    Some(LockWait {
        start_ns: e.start_ns,
        wait_ns: e.wait_ns,
        lock_addr: e.lock_addr,
        tid: e.tid,
        tgid: e.tgid,
        cpu: e.cpu,
        flags: e.flags,
        ret: e.ret,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_of(e: &LockWaitEvent) -> Vec<u8> {
        // SAFETY: LockWaitEvent is #[repr(C)] without padding.
        unsafe {
            std::slice::from_raw_parts((e as *const LockWaitEvent).cast::<u8>(), size_of_val(e))
        }
        .to_vec()
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
        };
        let bytes = bytes_of(&event);
        let decoded = decode(&bytes).expect("decodes");
        assert_eq!(
            (decoded.tid, decoded.tgid, decoded.cpu, decoded.ret),
            (7, 5, 1, -4)
        );
        assert_eq!(decoded.end_ns(), 125);
        assert_eq!(decoded.lock_addr, 0xffff_8880_0000_1000);
        assert_eq!(decode(&bytes[..40]), None, "short record");
        let mut other = bytes.clone();
        other[0] = 99;
        assert_eq!(decode(&other), None, "unknown kind");
    }

    #[test]
    fn the_ebpf_object_has_every_program_and_map_user_space_names() {
        let object = aya_obj::Object::parse(EBPF_OBJECT).expect("parses");
        for program in [
            names::BEGIN_BTF_PROGRAM,
            names::END_BTF_PROGRAM,
            names::BEGIN_TP_PROGRAM,
            names::END_TP_PROGRAM,
        ] {
            assert!(object.programs.contains_key(program), "program {program}");
        }
        for map in [names::EVENTS_MAP, names::COUNTERS_MAP] {
            assert!(object.maps.contains_key(map), "map {map}");
        }
        assert_eq!(object.license.to_str().unwrap(), "Dual MIT/GPL");
    }
}
