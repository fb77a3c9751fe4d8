//! What a trace holds: its header, lock-wait events, dm-bufio operations, metadata and the end
//! record.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Where, when and how a trace was recorded. Stored as JSON so that fields can be added without a
/// new format version; unknown fields are ignored and missing ones take their defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TraceHeader {
    /// The program that wrote the file, e.g. "bufscope 0.1.0".
    pub writer: String,
    /// `uname -r` of the recorded machine.
    pub kernel_release: String,
    /// Host name of the recorded machine.
    pub host: String,
    /// Clock of every `*_ns` timestamp in the events, e.g. "CLOCK_MONOTONIC".
    pub clock: String,
    /// Wall-clock time (ns since the Unix epoch) at the start of the recording...
    pub start_unix_ns: u64,
    /// ...and the same instant on the event clock, so event times convert to wall-clock time.
    pub start_clock_ns: u64,
    /// Online CPUs of the recorded machine.
    pub cpus: u32,
    /// Probes attached, one line each, e.g. "lock:contention_begin (tp_btf)".
    pub probes: Vec<String>,
}

/// One contended lock acquisition.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LockWait {
    /// Event clock at the first contention_begin.
    pub start_ns: u64,
    /// Nanoseconds waited.
    pub wait_ns: u64,
    /// Kernel address of the lock.
    pub lock_addr: u64,
    pub tid: u32,
    pub tgid: u32,
    pub cpu: u32,
    /// contention_begin flags (LCB_F_*).
    pub flags: u32,
    /// contention_end ret: 0 acquired, negative errno given up.
    pub ret: i32,
    /// Kernel stack at contention_begin: an id of a [`Metadata::Stack`] in the same file
    /// (format 1.2 on).
    pub stack_id: Option<u32>,
    /// The dm-bufio operation the waiter was inside (format 1.2 on).
    pub op: Option<OpKind>,
    /// ...and that operation's client (0 when `op` is `None`).
    pub op_client: u64,
    /// Who held the lock when the wait began (format 1.3 on): a mutex's or rwsem's owner.
    pub owner: LockOwner,
}

/// What a waiter found of the lock's owner at contention_begin.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LockOwner {
    /// Not recorded: a lock type that keeps no owner (spinning locks), owners not asked for,
    /// or a file older than format 1.3.
    #[default]
    Unknown,
    /// Nobody: the holder let go between the waiter's failed attempt and the read.
    Free,
    /// An rwsem held by readers (which ones, the kernel does not keep).
    Readers,
    /// A thread held it.
    Thread(Owner),
}

impl LockOwner {
    /// The owning thread, when a thread held the lock.
    pub fn thread(self) -> Option<Owner> {
        match self {
            Self::Thread(owner) => Some(owner),
            _ => None,
        }
    }
}

/// A thread holding a lock, as a waiter found it at contention_begin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Owner {
    /// The holder's thread id...
    pub tid: u32,
    /// ...its process id...
    pub tgid: u32,
    /// ...the dm-bufio operation it was inside...
    pub op: Option<OpKind>,
    /// ...and its kernel stack at the wait's begin, an id of a [`Metadata::Stack`] in the same
    /// file (`record --owner-stacks`, format 1.4 on; only an owner off its CPU has one).
    pub stack_id: Option<u32>,
}

impl LockWait {
    /// Event clock at contention_end.
    pub fn end_ns(&self) -> u64 {
        self.start_ns.wrapping_add(self.wait_ns)
    }
}

/// A dm-bufio operation, as the kernel's exported API names them.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OpKind {
    Get = 1,
    Read = 2,
    New = 3,
    /// `arg0` = number of blocks.
    Prefetch = 4,
    Release = 5,
    MarkDirty = 6,
    /// `arg0..arg1` = the byte range.
    MarkPartialDirty = 7,
    WriteDirtyAsync = 8,
    WriteDirty = 9,
    Forget = 10,
    /// `arg0` = number of blocks.
    ForgetBuffers = 11,
    ClientCreate = 12,
    ClientDestroy = 13,
    /// dm-bufio's global cleanup (`do_global_cleanup`, from its workqueue): evicts down to the
    /// cache size when the module's buffers outgrow it, under each client's mutex (format 1.6
    /// on). Its client is the first it locked.
    GlobalCleanup = 14,
    /// The shrinker's work (`shrink_work`): evicts what memory reclaim asked for, under the
    /// client mutex (format 1.6 on).
    ShrinkWork = 15,
    /// The periodic cleanup (`work_fn`): writeback past the watermark and eviction of buffers
    /// older than `max_age_seconds`, under each client's mutex (format 1.6 on).
    AgeCleanup = 16,
}

impl OpKind {
    pub const ALL: [OpKind; 16] = [
        OpKind::Get,
        OpKind::Read,
        OpKind::New,
        OpKind::Prefetch,
        OpKind::Release,
        OpKind::MarkDirty,
        OpKind::MarkPartialDirty,
        OpKind::WriteDirtyAsync,
        OpKind::WriteDirty,
        OpKind::Forget,
        OpKind::ForgetBuffers,
        OpKind::ClientCreate,
        OpKind::ClientDestroy,
        OpKind::GlobalCleanup,
        OpKind::ShrinkWork,
        OpKind::AgeCleanup,
    ];

    pub fn from_u8(value: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|k| *k as u8 == value)
    }

    /// The kernel function, for reports.
    pub fn function(self) -> &'static str {
        match self {
            OpKind::Get => "dm_bufio_get",
            OpKind::Read => "dm_bufio_read",
            OpKind::New => "dm_bufio_new",
            OpKind::Prefetch => "dm_bufio_prefetch",
            OpKind::Release => "dm_bufio_release",
            OpKind::MarkDirty => "dm_bufio_mark_buffer_dirty",
            OpKind::MarkPartialDirty => "dm_bufio_mark_partial_buffer_dirty",
            OpKind::WriteDirtyAsync => "dm_bufio_write_dirty_buffers_async",
            OpKind::WriteDirty => "dm_bufio_write_dirty_buffers",
            OpKind::Forget => "dm_bufio_forget",
            OpKind::ForgetBuffers => "dm_bufio_forget_buffers",
            OpKind::ClientCreate => "dm_bufio_client_create",
            OpKind::ClientDestroy => "dm_bufio_client_destroy",
            OpKind::GlobalCleanup => "do_global_cleanup",
            OpKind::ShrinkWork => "shrink_work",
            OpKind::AgeCleanup => "work_fn",
        }
    }

    /// dm-bufio's own background work, which no caller asked for.
    pub fn is_background(self) -> bool {
        matches!(
            self,
            OpKind::GlobalCleanup | OpKind::ShrinkWork | OpKind::AgeCleanup
        )
    }
}

/// How an operation ended.
#[repr(u8)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum OpResult {
    /// Not applicable or not known (release, dirtying, writeback...).
    #[default]
    None = 0,
    /// Found in the cache.
    Hit = 1,
    /// Not cached (for get: returned nothing; for read/new/prefetch: allocated).
    Miss = 2,
    /// Returned an error.
    Error = 3,
}

impl OpResult {
    pub fn from_u8(value: u8) -> Option<Self> {
        [
            OpResult::None,
            OpResult::Hit,
            OpResult::Miss,
            OpResult::Error,
        ]
        .into_iter()
        .find(|r| *r as u8 == value)
    }
}

/// One dm-bufio operation by one thread on one client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BufioOp {
    /// Event clock at entry.
    pub start_ns: u64,
    /// Entry to return.
    pub duration_ns: u64,
    /// The client (kernel address, or an id in synthetic traces).
    pub client: u64,
    /// The block, for operations on one (0 otherwise).
    pub block: u64,
    pub tid: u32,
    pub tgid: u32,
    pub cpu: u32,
    pub kind: OpKind,
    pub result: OpResult,
    /// Kind-specific: block count (prefetch, forget_buffers), range start (partial dirty).
    pub arg0: u32,
    /// Kind-specific: range end (partial dirty).
    pub arg1: u32,
    /// Time waiting for the client mutex inside the operation (format 1.2 on; 0 if unknown).
    pub lock_wait_ns: u64,
    /// Time holding the client mutex inside the operation (format 1.2 on; 0 if unknown).
    pub lock_hold_ns: u64,
    /// Event clock when the operation first tried for the client lock (its first dm_bufio_lock;
    /// format 1.5 on; 0 if unknown or never).
    pub lock_attempt_ns: u64,
    /// Event clock when the operation last let the client lock go (its last dm_bufio_unlock;
    /// format 1.5 on; 0 if unknown or never). With one hold, the hold began `lock_hold_ns`
    /// before it.
    pub lock_release_ns: u64,
}

impl Default for BufioOp {
    fn default() -> Self {
        Self {
            start_ns: 0,
            duration_ns: 0,
            client: 0,
            block: 0,
            tid: 0,
            tgid: 0,
            cpu: 0,
            kind: OpKind::Read,
            result: OpResult::None,
            arg0: 0,
            arg1: 0,
            lock_wait_ns: 0,
            lock_hold_ns: 0,
            lock_attempt_ns: 0,
            lock_release_ns: 0,
        }
    }
}

impl BufioOp {
    /// Event clock at return.
    pub fn end_ns(&self) -> u64 {
        self.start_ns.wrapping_add(self.duration_ns)
    }

    /// Whether the probes stamped when it first tried for the client lock and last let it go
    /// (format 1.5 on, an operation that took the lock).
    pub fn lock_stamped(&self) -> bool {
        self.lock_attempt_ns != 0 && self.lock_release_ns != 0
    }

    /// When its hold of the client lock began by the stamps: `lock_hold_ns` before its release
    /// (with several holds, their sum before the last release).
    pub fn hold_began_ns(&self) -> u64 {
        self.lock_release_ns.saturating_sub(self.lock_hold_ns)
    }

    /// Whether it worked for a client. Only dm-bufio's background work (global cleanup, shrink
    /// work, age cleanup) can have none: it names no client at its entry, and the probes bind it
    /// to the first client it locks, so a run that locked none (nothing to do, or 6.1's age
    /// cleanup finding a client busy at its trylock) has client 0 and touched no cache.
    pub fn has_client(&self) -> bool {
        self.client != 0
    }
}

/// Metadata that lets a trace be read on another machine and tells what it is missing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Metadata {
    /// Counters of events lost or left unpaired, as of `at_clock_ns`; the last one in a file holds
    /// the totals of the whole recording.
    LossCounts {
        at_clock_ns: u64,
        /// In-kernel counters by name (begin_seen, ringbuf_full, unpaired_end, ...).
        kernel: BTreeMap<String, u64>,
        /// Events user space could not keep up with and dropped.
        user_dropped: u64,
    },
    /// A dm-bufio client: a cache over one block device.
    Client {
        /// Kernel address of the client; events refer to clients by it.
        addr: u64,
        /// Device major:minor, e.g. "253:2".
        device: String,
        block_size: u32,
        /// Where its locks are, so waits on them can be named (absent before format 1.2).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        locks: Option<ClientLocks>,
        /// Event clock when it was created or first seen, and destroyed if it was.
        #[serde(default)]
        seen_ns: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        destroyed_ns: Option<u64>,
    },
    /// A kernel stack, by the id events use.
    Stack { id: u32, frames: Vec<u64> },
    /// Kernel symbols for the addresses in the file's stacks.
    Symbols { symbols: Vec<Symbol> },
    /// What the probes covered: the dm-bufio design seen, probe points missing and why, and
    /// each eBPF program's run count and time over the recording (BPF run-time statistics).
    Probes {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bufio_design: Option<String>,
        #[serde(default)]
        missing: BTreeMap<String, String>,
        #[serde(default)]
        programs: Vec<ProgramRun>,
        /// dm-bufio's cache size in bytes (its `max_cache_size_bytes` parameter, shared by all
        /// clients) when the recording began; absent before format 1.6 or without dm-bufio.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cache_size_bytes: Option<u64>,
    },
    /// Names of threads the events refer to, as the recorder learned them; a file may hold
    /// several such records, each adding to those before it. Readers that predate this record
    /// read it as [`Metadata::Unknown`] and go on.
    Threads { threads: Vec<Thread> },
    /// A record type this reader does not know (written by a newer minor version).
    #[serde(other)]
    Unknown,
}

/// A thread as the kernel names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Thread {
    pub tid: u32,
    pub tgid: u32,
    /// Its `comm` (at most 15 bytes) when first seen, e.g. "bufio_hot/3" or "kworker/1:2H".
    pub comm: String,
    /// Its cgroup (v2) when first seen, from the cgroup root, e.g.
    /// "/system.slice/postgresql.service"; absent in older files or where not known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
}

/// One eBPF program's runs while attached.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgramRun {
    /// Its name; `program@function` for a program loaded once per function (fentry/fexit).
    pub program: String,
    pub run_count: u64,
    pub run_time_ns: u64,
    /// Runs the kernel skipped because the program was already running on that CPU: events
    /// lost without any other trace (0 in files from builds that did not read it).
    #[serde(default)]
    pub recursion_misses: u64,
}

/// The kernel addresses of a dm-bufio client's locks.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientLocks {
    /// The client mutex (`&c->lock`).
    pub mutex: u64,
    /// The client spinlock (`&c->spinlock`, Linux 6.0 on), which a no-sleep client takes instead
    /// of the mutex; 0 where not known (files before bufscope wrote it, or kernels without it).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub spinlock: u64,
    /// The client was created with DM_BUFIO_CLIENT_NO_SLEEP (dm-verity's with
    /// `try_verify_in_tasklet`): its client lock is the spinlock, taken with bottom halves off,
    /// and (6.4+) its tree locks are rwlocks. False where not known.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_sleep: bool,
    /// Tree rw-locks (6.4+): tree i's lock is at `first_tree + i * tree_stride`.
    #[serde(default)]
    pub trees: u32,
    #[serde(default)]
    pub first_tree: u64,
    #[serde(default)]
    pub tree_stride: u64,
}

impl ClientLocks {
    /// What `addr` is among these locks: the mutex, a tree (its index), or neither.
    pub fn classify(&self, addr: u64) -> Option<ClientLock> {
        if addr == self.mutex {
            return Some(ClientLock::Mutex);
        }
        if self.spinlock != 0 && addr == self.spinlock {
            return Some(ClientLock::Spinlock);
        }
        if self.trees == 0 || self.tree_stride == 0 || addr < self.first_tree {
            return None;
        }
        let offset = addr - self.first_tree;
        let index = offset / self.tree_stride;
        (offset.is_multiple_of(self.tree_stride) && index < u64::from(self.trees))
            .then_some(ClientLock::Tree(index as u32))
    }
}

/// One of a client's locks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ClientLock {
    Mutex,
    /// The no-sleep client's lock (`c->spinlock`).
    Spinlock,
    Tree(u32),
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Symbol {
    pub addr: u64,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
    /// Inside the kernel's lock or scheduler text: the lock's own slow path, not its caller.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub lock_text: bool,
}

/// Closes a finished file; its counts let a reader check that nothing between was lost.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TraceEnd {
    /// Wall-clock time at the end of the recording.
    pub end_unix_ns: u64,
    /// Lock-wait events in the file.
    pub lock_waits: u64,
    /// dm-bufio operations in the file (format 1.1 on; absent, so 0, in 1.0 files).
    pub bufio_ops: u64,
    /// Metadata records in the file.
    pub metadata_records: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_names_round_trip_as_json() {
        let m = Metadata::Threads {
            threads: vec![
                Thread {
                    tid: 4242,
                    tgid: 2,
                    comm: "bufio_hot/3".into(),
                    cgroup: None,
                },
                Thread {
                    tid: 77,
                    tgid: 70,
                    comm: "pipe-writer".into(),
                    cgroup: None,
                },
            ],
        };
        let json = serde_json::to_string(&m).unwrap();
        assert!(
            json.starts_with(r#"{"type":"threads","threads":[{"tid":4242"#),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<Metadata>(&json).unwrap(), m);
    }

    /// The metadata enum as a reader built before thread names were recorded knows it.
    #[derive(Debug, PartialEq, Eq, Deserialize)]
    #[serde(tag = "type", rename_all = "snake_case")]
    enum MetadataBeforeThreads {
        Stack {
            id: u32,
            frames: Vec<u64>,
        },
        #[serde(other)]
        Unknown,
    }

    #[test]
    fn an_older_reader_takes_thread_names_as_unknown() {
        let m = Metadata::Threads {
            threads: vec![Thread {
                tid: 1,
                tgid: 1,
                comm: "init".into(),
                cgroup: None,
            }],
        };
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(
            serde_json::from_str::<MetadataBeforeThreads>(&json).unwrap(),
            MetadataBeforeThreads::Unknown
        );
        let stack = serde_json::to_string(&Metadata::Stack {
            id: 3,
            frames: vec![9],
        })
        .unwrap();
        assert_eq!(
            serde_json::from_str::<MetadataBeforeThreads>(&stack).unwrap(),
            MetadataBeforeThreads::Stack {
                id: 3,
                frames: vec![9]
            }
        );
    }
}
