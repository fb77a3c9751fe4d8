//! Running a trace's dm-bufio operations through the reference designs (`reference-cache`), and
//! turning a logged run back into a [`TraceData`] that reads like a kernel recording: the same
//! clients, devices and clock, with the model's lock waits named "dm-bufio 7:0 client mutex" or
//! "dm-bufio 7:0 tree 3 (rwsem read)" just as the kernel's are. `replay` and `compare` use it.

use std::{collections::HashMap, path::PathBuf, sync::Arc, time::Duration};

use bufscope_abi::LockFlags;
use bufscope_trace::{
    BufioOp, ClientLock, ClientLocks, LockOwner, LockWait, Metadata, OpKind, OpResult,
};
use reference_cache::{
    BlockIo, BufferCache, CacheConfig, Design, FileIo, FileIoOptions, Latency, LockClass, MemoryIo,
    build,
    replay::{
        KernelOp, ReplayClock, ReplayOptions, ReplayResult, Step, StepResult, Stream, TimedStep,
        replay,
    },
};

use crate::tracedata::TraceData;

/// Where a model's lock waits appear to be: addresses no kernel lock has, laid out like a
/// client's mutex, spinlock and tree array so that [`ClientLocks::classify`] names them.
const MODEL_MUTEX: u64 = 0x0000_7e57_0000_1000;
const MODEL_SPINLOCK: u64 = 0x0000_7e57_0000_1040;
const MODEL_FIRST_TREE: u64 = 0x0000_7e57_0000_2000;
const MODEL_TREE_STRIDE: u64 = 64;

/// One client's operations as replay streams (one per recorded thread).
#[derive(Clone, Debug)]
pub struct ReplayInput {
    pub streams: Vec<Stream>,
    /// The client replayed: the busiest one.
    pub client: u64,
    /// Clients the trace has operations for.
    pub clients: usize,
    pub block_size: u32,
    /// The client's device ("7:0"), or "?" when the trace does not say.
    pub device: String,
    pub steps: usize,
    /// Event clock of the client's first operation.
    pub first_ns: u64,
    /// How the recording kernel's cache was sized and evicted.
    pub kernel_cache: KernelCache,
}

/// What a recording says of its kernel's cache, for the designs to be built alike.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelCache {
    /// The cache size in the client's buffers (dm-bufio's `max_cache_size_bytes` over its
    /// block size; format 1.6 on).
    pub capacity: Option<usize>,
    /// Whether the recording has dm-bufio's global cleanup runs for the client (format 1.6 on).
    /// Then the designs evict as the kernel does: a miss allocates a buffer whatever the
    /// cache's size, and only those runs evict, down to 15/16 of the capacity.
    pub background_eviction: bool,
}

/// Buffers a design's cache keeps where neither `--capacity` nor the recording says: the
/// hotspot test's 300 MiB of 4 KiB blocks.
pub const DEFAULT_CAPACITY: usize = 76_800;

impl KernelCache {
    /// How the designs' caches are sized and evict under `options`, in words: "16 buffers (the
    /// recording kernel's cache size), evicted by its global cleanup runs as recorded".
    pub fn describe(self, options: &ModelOptions) -> String {
        let (capacity, whose) = match (options.capacity, self.capacity) {
            (Some(c), _) => (c, "--capacity"),
            (None, Some(c)) => (c, "the recording kernel's cache size"),
            (None, None) => (DEFAULT_CAPACITY, "the default"),
        };
        let eviction = if self.background_eviction {
            "misses allocate past it, as the kernel's do, and its global cleanup runs evict as recorded"
        } else {
            "a miss that finds it full evicts"
        };
        format!(
            "{} buffers ({whose}); {eviction}",
            crate::units::thousands(capacity as u64)
        )
    }
}

impl ReplayInput {
    /// The busiest client's operations; `None` when the trace has no dm-bufio operations.
    /// Several clients are not replayed into one cache: their blocks would mix.
    pub fn from_trace(trace: &TraceData) -> Option<Self> {
        let mut per_client: HashMap<u64, usize> = HashMap::new();
        for op in &trace.ops {
            if step_of(op).is_some() && op.has_client() {
                *per_client.entry(op.client).or_default() += 1;
            }
        }
        let clients = per_client.len();
        let (client, _) = per_client.into_iter().max_by_key(|&(c, n)| (n, c))?;
        let first_ns = trace
            .ops
            .iter()
            .filter(|o| o.client == client)
            .map(|o| o.start_ns)
            .min()?;
        let (mut block_size, mut device) = (4096, "?".to_string());
        for m in &trace.metadata {
            if let Metadata::Client {
                addr,
                device: d,
                block_size: b,
                ..
            } = m
                && *addr == client
            {
                (block_size, device) = (*b, d.clone());
            }
        }
        let owned = OwnedWaits::of(trace.waits.iter().filter(|w| {
            matches!(
                trace.names.bufio_lock(w.lock_addr),
                Some((d, ClientLock::Mutex | ClientLock::Spinlock)) if d == device
            )
        }));
        let streams = streams_of(
            trace.ops.iter().filter(|o| o.client == client),
            first_ns,
            &owned,
        );
        let kernel_cache = KernelCache {
            capacity: trace
                .cache_size_bytes
                .map(|bytes| (bytes / u64::from(block_size.max(1))).max(1) as usize),
            background_eviction: streams
                .iter()
                .flat_map(|s| &s.steps)
                .any(|s| s.step == Step::GlobalCleanup),
        };
        Some(Self {
            steps: streams.iter().map(|s| s.steps.len()).sum(),
            streams,
            client,
            clients,
            block_size,
            device,
            first_ns,
            kernel_cache,
        })
    }
}

/// An operation's hold of the client lock as the threads behind it met it, and when it tried
/// for the lock, from the probes' stamps (format 1.5 on).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct HeldThrough {
    hold_ns: u64,
    /// How long after its start it tried.
    before_ns: u64,
}

/// When each thread was seen holding the client lock: the begins of the waits on it that named
/// the thread as the owner (format 1.3 on), in time order.
#[derive(Clone, Debug, Default)]
pub struct OwnedWaits {
    by_owner: HashMap<u32, Vec<u64>>,
}

impl OwnedWaits {
    /// From waits on one client's lock.
    pub fn of<'a>(waits: impl Iterator<Item = &'a LockWait>) -> Self {
        let mut by_owner: HashMap<u32, Vec<u64>> = HashMap::new();
        for w in waits {
            if let LockOwner::Thread(owner) = w.owner {
                by_owner.entry(owner.tid).or_default().push(w.start_ns);
            }
        }
        for starts in by_owner.values_mut() {
            starts.sort_unstable();
        }
        Self { by_owner }
    }

    /// The first wait that found `tid` holding the lock at or after `from` and before `to`.
    fn first(&self, tid: u32, from: u64, to: u64) -> Option<u64> {
        let starts = self.by_owner.get(&tid)?;
        let at = starts.partition_point(|&s| s < from);
        starts.get(at).copied().filter(|&s| s < to)
    }
}

/// Each stamped operation's hold as the threads behind it met it. The probes' own figure
/// leaves out the holder's time on a runqueue, meant for `mutex_lock` giving up its CPU before it
/// takes the mutex (6.1's voluntary preemption, with 17 threads on 2 CPUs); a holder preempted
/// while holding keeps its waiters waiting all the same, as when the cleanup kworker its miss
/// just woke takes its CPU (6.12 small-cache: the misses the cleanup waited behind held 52 µs by
/// the probes' figure, 420 µs by their stamps, medians; the cleanup waited 470 µs). So a hold
/// begins where the probes' figure puts it (that long before the release), or earlier where a
/// wait began that named this thread the owner: then it held the lock already. Never before the
/// operation's lock attempt (after a wait, the wait's end), nor before the last release by
/// another operation inside its span (whoever released there held it then). Taking the whole
/// span between those bounds as the hold instead made 6.1 bufio-hotspot's simulated classic
/// wait 3.3x the kernel's: there the time off the CPU came before the mutex was taken. One
/// that did not wait tried when its hold began; one that waited, at its first `dm_bufio_lock`.
/// `None` without stamps.
fn held_through(ops: &[&BufioOp], owned: &OwnedWaits) -> Vec<Option<HeldThrough>> {
    let mut releases: Vec<(u64, usize)> = ops
        .iter()
        .enumerate()
        .filter(|(_, op)| op.lock_stamped())
        .map(|(i, op)| (op.lock_release_ns, i))
        .collect();
    releases.sort_unstable();
    ops.iter()
        .enumerate()
        .map(|(i, op)| {
            if !op.lock_stamped() {
                return None;
            }
            let waited = op.lock_wait_ns > 0;
            let release = op.lock_release_ns;
            let attempt_floor = if waited {
                op.lock_attempt_ns + op.lock_wait_ns
            } else {
                op.lock_attempt_ns
            };
            // The last release by another operation before this one's.
            let at = releases.partition_point(|&(r, _)| r < release);
            let last_other = releases[..at]
                .iter()
                .rev()
                .find(|&&(_, j)| j != i)
                .map_or(0, |&(r, _)| r);
            let floor = attempt_floor.max(last_other).min(release);
            let by_probes = op.hold_began_ns();
            let began = owned
                .first(op.tid, floor, release)
                .map_or(by_probes, |seen| seen.min(by_probes))
                .max(floor);
            let hold_ns = op.lock_hold_ns.max(release - began);
            let tried = if waited {
                op.lock_attempt_ns
            } else {
                release.saturating_sub(hold_ns).max(op.lock_attempt_ns)
            };
            Some(HeldThrough {
                hold_ns,
                before_ns: tried.saturating_sub(op.start_ns),
            })
        })
        .collect()
}

/// Operations as replay streams, one per thread in tid order, each in time order, times from
/// `origin_ns`. Operations without a replay step (client create, destroy) are left out. Each
/// keeps its own hold ([`held_through`], `owned` the waits on the same client's lock) where the
/// probes stamped it.
pub fn streams_of<'a>(
    ops: impl Iterator<Item = &'a BufioOp>,
    origin_ns: u64,
    owned: &OwnedWaits,
) -> Vec<Stream> {
    let ops: Vec<&BufioOp> = ops.collect();
    let held = held_through(&ops, owned);
    let mut threads: HashMap<u32, Vec<TimedStep>> = HashMap::new();
    for (op, held) in ops.into_iter().zip(held) {
        let Some(step) = step_of(op) else { continue };
        let hold_ns = held.map_or(op.lock_hold_ns, |h| h.hold_ns);
        threads.entry(op.tid).or_default().push(TimedStep {
            at_ns: op.start_ns.saturating_sub(origin_ns),
            block: op.block,
            step,
            kernel: (hold_ns > 0).then_some(KernelOp {
                hold_ns,
                net_ns: op.duration_ns.saturating_sub(op.lock_wait_ns),
                miss: op.result == OpResult::Miss,
                before_ns: held.map_or(0, |h| h.before_ns),
            }),
        });
    }
    let mut streams: Vec<Stream> = threads
        .into_iter()
        .map(|(tid, mut steps)| {
            steps.sort_by_key(|s| s.at_ns);
            Stream { tid, steps }
        })
        .collect();
    streams.sort_by_key(|s| s.tid);
    streams
}

/// The replay step of a recorded operation (client create and destroy have none).
pub fn step_of(op: &BufioOp) -> Option<Step> {
    Some(match op.kind {
        OpKind::Get => Step::Get {
            missed: op.result == OpResult::Miss,
        },
        OpKind::Read => Step::Read,
        OpKind::New => Step::New,
        OpKind::Prefetch => Step::Prefetch { blocks: op.arg0 },
        OpKind::Release => Step::Release,
        OpKind::MarkDirty => Step::MarkDirty,
        OpKind::MarkPartialDirty => Step::MarkPartialDirty {
            start: op.arg0,
            end: op.arg1,
        },
        OpKind::WriteDirtyAsync => Step::WriteDirtyAsync,
        OpKind::WriteDirty => Step::WriteDirty,
        OpKind::Forget => Step::Forget,
        OpKind::ForgetBuffers => Step::ForgetBuffers { blocks: op.arg0 },
        OpKind::GlobalCleanup => Step::GlobalCleanup,
        OpKind::ShrinkWork => Step::ShrinkWork,
        OpKind::AgeCleanup => Step::AgeCleanup,
        OpKind::ClientCreate | OpKind::ClientDestroy => return None,
    })
}

/// The recorded operation kind of a replay step, and its two arguments.
fn op_of(step: Step) -> (OpKind, u32, u32) {
    match step {
        Step::Get { .. } => (OpKind::Get, 0, 0),
        Step::Read => (OpKind::Read, 0, 0),
        Step::New => (OpKind::New, 0, 0),
        Step::Prefetch { blocks } => (OpKind::Prefetch, blocks, 0),
        Step::Release => (OpKind::Release, 0, 0),
        Step::MarkDirty => (OpKind::MarkDirty, 0, 0),
        Step::MarkPartialDirty { start, end } => (OpKind::MarkPartialDirty, start, end),
        Step::WriteDirtyAsync => (OpKind::WriteDirtyAsync, 0, 0),
        Step::WriteDirty => (OpKind::WriteDirty, 0, 0),
        Step::Forget => (OpKind::Forget, 0, 0),
        Step::ForgetBuffers { blocks } => (OpKind::ForgetBuffers, blocks, 0),
        Step::GlobalCleanup => (OpKind::GlobalCleanup, 0, 0),
        Step::ShrinkWork => (OpKind::ShrinkWork, 0, 0),
        Step::AgeCleanup => (OpKind::AgeCleanup, 0, 0),
    }
}

/// What the designs' buffers are read from.
#[derive(Clone, Debug, Default)]
pub enum Backing {
    /// Memory, each read or write taking this long (none by default).
    #[default]
    Memory,
    MemoryWithLatency(Duration),
    /// A file or block device, as `replay --device` opens it.
    Device {
        path: PathBuf,
        direct: bool,
        allow_writes: bool,
    },
}

/// How to run a design.
#[derive(Clone, Debug)]
pub struct ModelOptions {
    pub backing: Backing,
    /// Cache capacity in buffers; `None`: the recording kernel's where it says
    /// ([`KernelCache::capacity`]), else [`DEFAULT_CAPACITY`].
    pub capacity: Option<usize>,
    /// CPUs the sharded design sizes its trees for (`None`: this machine's).
    pub cpus: Option<usize>,
    pub replay: ReplayOptions,
}

/// Why a design could not be built: its device would not open.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("opening --device {}", path.display())]
    Device {
        path: PathBuf,
        source: reference_cache::io::OpenError,
    },
}

/// Runs `input` through `design`.
pub fn run_design(
    design: Design,
    input: &ReplayInput,
    options: &ModelOptions,
) -> Result<ReplayResult, ModelError> {
    let (build, replay_options) = for_clock(options);
    let cache = build_cache(design, input.block_size, &build, input.kernel_cache)?;
    Ok(replay(cache, input.streams.clone(), replay_options))
}

/// What a design's cache is built with and what its replay runs with, for the options' clock: a
/// simulated replay times the device itself (each I/O the backing's latency, in virtual time), so
/// the memory under its cache answers at once.
pub fn for_clock(options: &ModelOptions) -> (ModelOptions, ReplayOptions) {
    let ReplayClock::Simulated { .. } = options.replay.clock else {
        return (options.clone(), options.replay);
    };
    let (backing, io_ns) = match &options.backing {
        Backing::MemoryWithLatency(latency) => (Backing::Memory, latency.as_nanos() as u64),
        other => (other.clone(), 0),
    };
    (
        ModelOptions {
            backing,
            ..options.clone()
        },
        ReplayOptions {
            clock: ReplayClock::Simulated { io_ns },
            ..options.replay
        },
    )
}

/// An empty cache of `design` for blocks of `block_size` bytes, on the options' backing, sized
/// and evicting as `kernel`'s was where the options leave that open.
pub fn build_cache(
    design: Design,
    block_size: u32,
    options: &ModelOptions,
    kernel: KernelCache,
) -> Result<Arc<dyn BufferCache>, ModelError> {
    let block_size = block_size as usize;
    let io: Arc<dyn BlockIo> = match &options.backing {
        Backing::Device {
            path,
            direct,
            allow_writes,
        } => Arc::new(
            FileIo::open(
                path,
                block_size,
                FileIoOptions {
                    direct: *direct,
                    allow_writes: *allow_writes,
                },
            )
            .map_err(|source| ModelError::Device {
                path: path.clone(),
                source,
            })?,
        ),
        Backing::Memory => Arc::new(MemoryIo::new(block_size, Latency::None)),
        Backing::MemoryWithLatency(d) => Arc::new(MemoryIo::new(block_size, Latency::Fixed(*d))),
    };
    let capacity = options
        .capacity
        .or(kernel.capacity)
        .unwrap_or(DEFAULT_CAPACITY);
    let mut config = CacheConfig::new(block_size, capacity);
    config.background_eviction = kernel.background_eviction;
    if let Some(cpus) = options.cpus {
        config.cpus = cpus.max(1);
    }
    Ok(Arc::from(build(design, config, io)))
}

/// A logged run as a trace: the replayed client with model lock addresses, operations and
/// waits on the kernel recording's clock (the run starts where the client's first operation
/// did). `None` when the run kept no log.
pub fn as_trace(
    result: &ReplayResult,
    input: &ReplayInput,
    kernel: &TraceData,
) -> Option<TraceData> {
    let log = result.log.as_ref()?;
    let trees = log
        .waits
        .iter()
        .filter(|w| {
            matches!(
                w.class,
                LockClass::TreeRead
                    | LockClass::TreeWrite
                    | LockClass::TreeRwlockRead
                    | LockClass::TreeRwlockWrite
            )
        })
        .map(|w| w.instance + 1)
        .max()
        .unwrap_or(0);
    let mut trace = TraceData {
        source: format!("{} model of {}", result.design, kernel.source),
        header: kernel.header.clone(),
        design: Some(result.design.to_string()),
        kernel_design: kernel.kernel_design.clone(),
        ..Default::default()
    };
    trace.header.writer = format!("bufscope replay ({} design)", result.design);
    trace.header.probes = Vec::new();
    trace.add_metadata(Metadata::Client {
        addr: input.client,
        device: input.device.clone(),
        block_size: input.block_size,
        locks: Some(ClientLocks {
            mutex: MODEL_MUTEX,
            spinlock: if result.design.no_sleep() {
                MODEL_SPINLOCK
            } else {
                0
            },
            no_sleep: result.design.no_sleep(),
            trees,
            first_tree: MODEL_FIRST_TREE,
            tree_stride: MODEL_TREE_STRIDE,
        }),
        seen_ns: input.first_ns,
        destroyed_ns: None,
    });
    // The recorded threads' names, so the design's run reads by role like the kernel's.
    for m in &kernel.metadata {
        if let Metadata::Threads { .. } = m {
            trace.add_metadata(m.clone());
        }
    }
    trace.ops = log
        .ops
        .iter()
        .map(|o| {
            let (kind, arg0, arg1) = op_of(o.step);
            BufioOp {
                start_ns: input.first_ns + o.start_ns,
                duration_ns: o.duration_ns,
                client: input.client,
                block: o.block,
                tid: o.tid,
                tgid: 0,
                cpu: 0,
                kind,
                result: match o.result {
                    StepResult::None => OpResult::None,
                    StepResult::Hit => OpResult::Hit,
                    StepResult::Miss => OpResult::Miss,
                    StepResult::Error => OpResult::Error,
                },
                arg0,
                arg1,
                lock_wait_ns: o.mutex_wait_ns,
                lock_hold_ns: o.mutex_hold_ns,
                // The replay's log keeps how long, not when.
                lock_attempt_ns: 0,
                lock_release_ns: 0,
            }
        })
        .collect();
    trace.waits = log
        .waits
        .iter()
        .map(|w| {
            let tree = MODEL_FIRST_TREE + u64::from(w.instance) * MODEL_TREE_STRIDE;
            // A no-sleep design's locks spin, as a no-sleep client's do.
            let (lock_addr, flags) = match w.class {
                LockClass::ClientMutex => (MODEL_MUTEX, LockFlags::MUTEX),
                LockClass::ClientSpinlock => (MODEL_SPINLOCK, LockFlags::SPIN),
                LockClass::TreeRead => (tree, LockFlags::READ),
                LockClass::TreeWrite => (tree, LockFlags::WRITE),
                LockClass::TreeRwlockRead => (tree, LockFlags::SPIN | LockFlags::READ),
                LockClass::TreeRwlockWrite => (tree, LockFlags::SPIN | LockFlags::WRITE),
                LockClass::Global => (MODEL_MUTEX + 0x100, LockFlags::SPIN),
            };
            LockWait {
                start_ns: input.first_ns + w.start_ns,
                wait_ns: w.wait_ns,
                lock_addr,
                tid: w.tid,
                tgid: 0,
                cpu: 0,
                flags,
                ret: 0,
                stack_id: None,
                op: Some(op_of(w.step).0),
                op_client: input.client,
                owner: LockOwner::Unknown,
            }
        })
        .collect();
    Some(trace)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(wait: u64, attempt: u64, release: u64) -> BufioOp {
        BufioOp {
            tid: 1,
            start_ns: 1_000_000,
            duration_ns: 20_000,
            kind: OpKind::Get,
            result: OpResult::Hit,
            lock_wait_ns: wait,
            lock_hold_ns: 3_000,
            lock_attempt_ns: attempt,
            lock_release_ns: release,
            ..BufioOp::default()
        }
    }

    /// (hold, before) of each operation as `streams_of` takes them, given the begins of waits
    /// that named thread 1 the owner.
    fn holds(ops: &[BufioOp], owned_by_1: &[u64]) -> Vec<Option<(u64, u64)>> {
        let waits: Vec<LockWait> = owned_by_1
            .iter()
            .map(|&start_ns| LockWait {
                start_ns,
                owner: LockOwner::Thread(bufscope_trace::Owner {
                    tid: 1,
                    tgid: 1,
                    op: None,
                    stack_id: None,
                }),
                ..LockWait::default()
            })
            .collect();
        held_through(
            &ops.iter().collect::<Vec<_>>(),
            &OwnedWaits::of(waits.iter()),
        )
        .into_iter()
        .map(|h| h.map(|h| (h.hold_ns, h.before_ns)))
        .collect()
    }

    #[test]
    fn an_operation_holds_from_where_a_waiter_saw_it_hold_or_the_probes_put_it() {
        // Thread 1's operations start at 1 ms; the probes' hold is 3 µs (their runqueue time
        // left out). Waited 5 µs from its attempt 1 µs in, let go 10 µs in: the probes' 3 µs,
        // and it tried at its attempt.
        assert_eq!(
            holds(&[op(5_000, 1_001_000, 1_010_000)], &[]),
            [Some((3_000, 1_000))]
        );
        // A waiter that found it holding 4 µs in came before its own wait ended: the hold
        // begins no earlier than that end, 6 µs in.
        assert_eq!(
            holds(&[op(5_000, 1_001_000, 1_010_000)], &[1_004_000]),
            [Some((3_000, 1_000))]
        );
        assert_eq!(
            holds(&[op(5_000, 1_001_000, 1_010_000)], &[1_006_500]),
            [Some((3_500, 1_000))]
        );
        // Did not wait, tried 1 µs in, let go 9 µs in: its hold began 6 µs in, by the probes,
        // and it tried then (`mutex_lock` gave up its CPU before taking the mutex)...
        assert_eq!(
            holds(&[op(0, 1_001_000, 1_009_000)], &[]),
            [Some((3_000, 6_000))]
        );
        // ...unless a waiter found it holding 2 µs in: then it held from there, off its CPU or
        // not, and tried then.
        assert_eq!(
            holds(&[op(0, 1_001_000, 1_009_000)], &[1_002_000]),
            [Some((7_000, 2_000))]
        );
        // Another operation's release 4 µs in bounds the hold (whoever let go there held the
        // lock then): the waits that named thread 1 before it (and before its attempt) are
        // not this hold's; the one 5 µs in is.
        let other = BufioOp {
            tid: 2,
            ..op(0, 1_003_000, 1_004_000)
        };
        assert_eq!(
            holds(
                &[op(0, 1_001_000, 1_009_000), other],
                &[999_000, 1_002_000, 1_005_000]
            ),
            [Some((4_000, 5_000)), Some((3_000, 3_000))]
        );
        // No stamps (an older trace): the probes' hold, tried at once.
        assert_eq!(holds(&[op(0, 0, 0)], &[]), [None]);
        let streams = streams_of(
            [op(0, 1_001_000, 1_009_000)].iter(),
            1_000_000,
            &OwnedWaits::default(),
        );
        let kernel = streams[0].steps[0].kernel.expect("a measured hold");
        assert_eq!(
            (kernel.hold_ns, kernel.net_ns, kernel.before_ns),
            (3_000, 20_000, 6_000)
        );
    }

    #[test]
    fn designs_take_the_recording_kernel_s_cache_size_and_eviction_unless_told_otherwise() {
        let client = 0xc0de;
        let mut trace = TraceData::default();
        trace.add_metadata(Metadata::Client {
            addr: client,
            device: "7:0".into(),
            block_size: 4096,
            locks: None,
            seen_ns: 0,
            destroyed_ns: None,
        });
        let at = |start_ns, kind| BufioOp {
            start_ns,
            kind,
            client,
            ..BufioOp::default()
        };
        trace.ops = vec![at(1_000, OpKind::Read), at(2_000, OpKind::Release)];
        let options = |capacity| ModelOptions {
            backing: Backing::Memory,
            capacity,
            cpus: None,
            replay: ReplayOptions::default(),
        };
        // An older recording: neither said.
        let input = ReplayInput::from_trace(&trace).expect("operations");
        assert_eq!(input.kernel_cache, KernelCache::default());
        assert_eq!(
            input.kernel_cache.describe(&options(None)),
            "76,800 buffers (the default); a miss that finds it full evicts"
        );
        // dm-bufio's 64 KiB over 4 KiB blocks, and its global cleanup recorded.
        trace.add_metadata(Metadata::Probes {
            bufio_design: None,
            missing: Default::default(),
            programs: Vec::new(),
            cache_size_bytes: Some(64 << 10),
        });
        trace.ops.push(at(3_000, OpKind::GlobalCleanup));
        let input = ReplayInput::from_trace(&trace).expect("operations");
        assert_eq!(
            input.kernel_cache,
            KernelCache {
                capacity: Some(16),
                background_eviction: true,
            }
        );
        assert!(
            input
                .kernel_cache
                .describe(&options(None))
                .starts_with("16 buffers (the recording kernel's cache size); misses allocate")
        );
        assert!(
            input
                .kernel_cache
                .describe(&options(Some(500)))
                .starts_with("500 buffers (--capacity)")
        );
    }

    #[test]
    fn a_background_run_that_locked_no_client_is_no_client_of_the_replay() {
        // 6.1's age cleanup skips a client whose trylock fails: its run binds to no client.
        let client = 0xc0de;
        let at = |start_ns, kind, client| BufioOp {
            start_ns,
            kind,
            client,
            ..BufioOp::default()
        };
        let trace = TraceData {
            ops: vec![
                at(500, OpKind::AgeCleanup, 0),
                at(1_000, OpKind::Read, client),
                at(1_500, OpKind::AgeCleanup, 0),
                at(2_000, OpKind::Release, client),
                at(2_500, OpKind::AgeCleanup, 0),
            ],
            ..TraceData::default()
        };
        let input = ReplayInput::from_trace(&trace).expect("operations");
        assert_eq!((input.client, input.clients), (client, 1));
        assert_eq!(input.first_ns, 1_000);
        assert_eq!(input.steps, 2);
    }
}
