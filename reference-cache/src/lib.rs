//! Faithful user-space models of the dm-bufio cache designs, with instrumented locks, so that an
//! access stream recorded from a kernel can be run through each design and its lock waits
//! measured like for like.
//!
//! - [`ClassicCache`]: Linux ≤ 6.3 (e.g. 6.1): one client mutex taken by every operation.
//! - [`ShardedCache`]: Linux ≥ 6.4 (e.g. 6.12): per-tree rw-locks on the hit path, the client
//!   mutex on misses, dirtying, writeback and eviction.
//! - [`LockFreeCache`]: ours: lock-free lookups and holds, so hits and releases take no lock
//!   (on the hotspot, a hit costs half of sharded's CPU, a quarter counting the lock instrumentation
//!   sharded pays and lockfree does not: see its module docs).
//! - `ClassicCache<NoSleep>` and `ShardedCache<NoSleep>`: the same two kernel designs for a
//!   no-sleep client (DM_BUFIO_CLIENT_NO_SLEEP, dm-verity's with `try_verify_in_tasklet`), whose
//!   locks spin: a client spinlock, and (6.4+) rwlock trees ([`NoSleep`]).
//!
//! Every design implements [`BufferCache`]; each shared field states which lock protects it.
//! [`timing`] makes their critical sections take what a recording kernel's took; [`replay`] runs
//! recorded streams through a design on real threads, or in virtual time ([`simulate`]).
//! Buffers come from a [`BlockIo`]: memory or a real file or device. No eBPF and no root: this
//! crate builds and tests with stable Rust anywhere.

mod cache;
mod classic;
mod design;
pub mod io;
mod lock;
mod lockfree;
mod lru;
mod recorder;
pub mod replay;
mod sharded;
pub mod simulate;
pub mod timing;
pub mod workload;

pub use cache::{BufferCache, BufferRef, CacheConfig, CacheError, Occupancy};
pub use classic::ClassicCache;
pub use design::{Design, UnknownDesign};
pub use io::{BlockIo, FileIo, FileIoOptions, Latency, MemoryIo};
pub use lock::{InstrumentedMutex, InstrumentedRwLock, LockClass, Locking, NoSleep, Sleeping};
pub use lockfree::LockFreeCache;
pub use recorder::{ClassStats, LockTotals, LoggedWait, OpCounts, Report, ThreadRecorder};
pub use sharded::ShardedCache;

/// Builds `design` over `io`.
pub fn build(
    design: Design,
    config: CacheConfig,
    io: std::sync::Arc<dyn BlockIo>,
) -> Box<dyn BufferCache> {
    match design {
        Design::Classic => Box::new(ClassicCache::new(config, io)),
        Design::Sharded => Box::new(ShardedCache::new(config, io)),
        Design::LockFree => Box::new(LockFreeCache::new(config, io)),
        Design::ClassicNoSleep => Box::new(ClassicCache::<NoSleep>::with_locking(config, io)),
        Design::ShardedNoSleep => Box::new(ShardedCache::<NoSleep>::with_locking(config, io)),
    }
}
