//! Running a trace's dm-bufio operations through the reference designs (`reference-cache`), and
//! turning a logged run back into a [`TraceData`] that reads like a kernel recording: the same
//! clients, devices and clock, with the model's lock waits named "dm-bufio 7:0 client mutex" or
//! "dm-bufio 7:0 tree 3 (rwsem read)" just as the kernel's are. `replay` and `compare` use it.

use std::{collections::HashMap, path::PathBuf, sync::Arc, time::Duration};

use bufscope_abi::LockFlags;
use bufscope_trace::{BufioOp, ClientLocks, LockOwner, LockWait, Metadata, OpKind, OpResult};
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
}

impl ReplayInput {
    /// The busiest client's operations; `None` when the trace has no dm-bufio operations.
    /// Several clients are not replayed into one cache: their blocks would mix.
    pub fn from_trace(trace: &TraceData) -> Option<Self> {
        let mut per_client: HashMap<u64, usize> = HashMap::new();
        for op in &trace.ops {
            if step_of(op).is_some() {
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
        let streams = streams_of(trace.ops.iter().filter(|o| o.client == client), first_ns);
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
        Some(Self {
            steps: streams.iter().map(|s| s.steps.len()).sum(),
            streams,
            client,
            clients,
            block_size,
            device,
            first_ns,
        })
    }
}

/// How long `op` ran before it tried for the client lock, from the probes' stamps (format 1.5
/// on; 0 without them). One that waited tried at its first `dm_bufio_lock`. One that did not
/// took the lock at once, but `mutex_lock` may have given up its CPU before taking it (6.1's
/// voluntary preemption): that runqueue time the probes leave out of the hold, so its hold began
/// `lock_hold_ns` before its release, and it tried then. An operation with several holds
/// (writeback) is placed by their sum, so its first hold begins no earlier than it did.
fn before_lock_ns(op: &BufioOp) -> u64 {
    if !op.lock_stamped() {
        return 0;
    }
    let tried = if op.lock_wait_ns > 0 {
        op.lock_attempt_ns
    } else {
        op.hold_began_ns().max(op.lock_attempt_ns)
    };
    tried.saturating_sub(op.start_ns)
}

/// Operations as replay streams, one per thread in tid order, each in time order, times from
/// `origin_ns`. Operations without a replay step (client create, destroy) are left out.
pub fn streams_of<'a>(ops: impl Iterator<Item = &'a BufioOp>, origin_ns: u64) -> Vec<Stream> {
    let mut threads: HashMap<u32, Vec<TimedStep>> = HashMap::new();
    for op in ops {
        let Some(step) = step_of(op) else { continue };
        threads.entry(op.tid).or_default().push(TimedStep {
            at_ns: op.start_ns.saturating_sub(origin_ns),
            block: op.block,
            step,
            kernel: (op.lock_hold_ns > 0).then_some(KernelOp {
                hold_ns: op.lock_hold_ns,
                net_ns: op.duration_ns.saturating_sub(op.lock_wait_ns),
                miss: op.result == OpResult::Miss,
                before_ns: before_lock_ns(op),
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
    /// Cache capacity in buffers.
    pub capacity: usize,
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
    let cache = build_cache(design, input.block_size, &build)?;
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

/// An empty cache of `design` for blocks of `block_size` bytes, on the options' backing.
pub fn build_cache(
    design: Design,
    block_size: u32,
    options: &ModelOptions,
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
    let mut config = CacheConfig::new(block_size, options.capacity);
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

    #[test]
    fn an_operation_tries_for_the_lock_where_the_probes_stamped_it() {
        // Waited: it tried at its dm_bufio_lock, 1 µs in.
        assert_eq!(before_lock_ns(&op(5_000, 1_001_000, 1_010_000)), 1_000);
        // Did not wait, but was off its CPU 4 µs before it took the lock: its 3 µs hold ended
        // 9 µs in, so it took the lock 6 µs in.
        assert_eq!(before_lock_ns(&op(0, 1_001_000, 1_009_000)), 6_000);
        // No stamps (an older trace): at once.
        assert_eq!(before_lock_ns(&op(0, 0, 0)), 0);
        let streams = streams_of([op(0, 1_001_000, 1_009_000)].iter(), 1_000_000);
        let kernel = streams[0].steps[0].kernel.expect("a measured hold");
        assert_eq!(
            (kernel.hold_ns, kernel.net_ns, kernel.before_ns),
            (3_000, 20_000, 6_000)
        );
    }
}
