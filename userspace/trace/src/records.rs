//! What a trace holds: its header, lock-wait events, metadata and the end record.

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
}

impl LockWait {
    /// Event clock at contention_end.
    pub fn end_ns(&self) -> u64 {
        self.start_ns.wrapping_add(self.wait_ns)
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
    },
    /// A kernel stack, by the id events use.
    Stack { id: u32, frames: Vec<u64> },
    /// Kernel symbols for the addresses in the file's stacks.
    Symbols { symbols: Vec<Symbol> },
    /// A record type this reader does not know (written by a newer minor version).
    #[serde(other)]
    Unknown,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Symbol {
    pub addr: u64,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
}

/// Closes a finished file; its counts let a reader check that nothing between was lost.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TraceEnd {
    /// Wall-clock time at the end of the recording.
    pub end_unix_ns: u64,
    /// Lock-wait events in the file.
    pub lock_waits: u64,
    /// Metadata records in the file.
    pub metadata_records: u64,
}
