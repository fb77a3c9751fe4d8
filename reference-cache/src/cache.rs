//! The dm-bufio client API every design implements, and the buffer it hands out.
//!
//! Operations mirror `include/linux/dm-bufio.h`: get (hit only, never I/O), read (a miss reads
//! and waits), new (no read), prefetch, release, mark dirty (whole or partial), write dirty
//! buffers (async or sync), forget, forget a range. Every operation takes the calling thread's
//! [`ThreadRecorder`], like the kernel's `current`.

use std::{
    fmt, io,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU8, AtomicU32, Ordering},
    },
};

use parking_lot::{Condvar, Mutex, MutexGuard};

use crate::{Design, io::BlockIo, recorder::ThreadRecorder};

/// Buffer state bits, as in dm-bufio.
pub(crate) mod state {
    /// A read is in flight; `read` waits for it, `get` treats the buffer as absent.
    pub const READING: u8 = 1 << 0;
    /// A write is in flight.
    pub const WRITING: u8 = 1 << 1;
    /// Modified since last written.
    pub const DIRTY: u8 = 1 << 2;
}

/// Which LRU list a buffer is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ListMode {
    Clean = 0,
    Dirty = 1,
}

/// A cached block.
///
/// The fields are grouped, as dm-bufio's `struct dm_buffer` is, by what makes sharing them
/// safe; read one group's banner to check a design's locking. They are atomics so that Rust lets
/// threads share them: the atomic is the mechanism, the banner is the contract. Not here: a
/// buffer's membership in the design's index (the kernel's `node`) and its place in an LRU list,
/// which the design's own structs keep under the locks they state. The kernel's `last_accessed`
/// is left out: it serves only age-based eviction, which these models do not have.
pub struct Buffer {
    // ---- Immutable after creation. ----
    block: u64,

    // ---- The hold count: atomic, and each design has its own rule for it. ----
    /// Holders of a [`BufferRef`] (plus `CLAIMED` in `lockfree`). A miss creates its buffer
    /// with its caller's hold already counted, before publishing it. A buffer is evicted or
    /// forgotten only while this is 0, and the rule is what keeps a hold from being taken
    /// between that check and the buffer leaving the index:
    /// - `classic`: taken, dropped and checked only under the client mutex, so the atomic is
    ///   never raced (the kernel's plain `unsigned int`).
    /// - `sharded`: taken by an atomic increment under the buffer's tree lock *shared*
    ///   (`cache_get`), by any number of readers at once; checked, before removal, only under
    ///   that tree lock *exclusive*, which no hit can hold meanwhile. Dropped under the tree lock
    ///   shared by release (`cache_put`), and under the client mutex alone when a failed read
    ///   discards its buffer; a drop racing a check could only make the check see a hold.
    /// - `lockfree`: taken with no lock, by a compare-and-swap that refuses once the `CLAIMED`
    ///   bit is set; dropped with no lock by release, and under the client mutex when a failed
    ///   read discards its buffer. Eviction and forget claim under the client mutex by swinging
    ///   0 to `CLAIMED` on the same word, so either the hold or the claim wins, never both. A
    ///   claimed buffer leaves the index and stays claimed, except that the claimer itself puts
    ///   0 back, still under the client mutex, when it finds I/O in flight.
    pub(crate) hold_count: AtomicU32,

    // ---- Protected by the client mutex (every design). ----
    /// Which of the client's lists holds the buffer; written only by moves between the lists.
    /// `sharded` also holds the buffer's tree lock exclusive for a move (`cache_mark`).
    pub(crate) list_mode: AtomicU8,
    /// The bytes changed since the buffer was last clean (`mark_partial_dirty`). Kept for
    /// fidelity; nothing reads them, since every write covers the whole block.
    pub(crate) dirty_start: AtomicU32,
    pub(crate) dirty_end: AtomicU32,

    // ---- Protected by the client mutex, except where I/O completion acts alone. ----
    /// The `state` bits (the kernel's end_io clears its bit without the client mutex too):
    /// - READING: set only at creation, before the buffer is published; cleared once by the
    ///   read's completion, which never holds the client mutex.
    /// - WRITING: set under the client mutex when a write starts; cleared by the write's
    ///   completion, under the client mutex when eviction writes a victim synchronously and
    ///   without it for writeback (async, sync, and the misses' watermark writes).
    /// - DIRTY: set by marking dirty and cleared when a write starts, both under the client
    ///   mutex. A failed write sets it again from its completion, with or without the mutex as
    ///   above, and does not move the buffer between lists.
    ///
    /// Read from anywhere: the hit paths test READING under the design's hit lock (the client
    /// mutex, a tree lock shared, or nothing in `lockfree`).
    pub(crate) state: AtomicU8,

    // ---- Set by hits without the client mutex; cleared by the clock under it. ----
    /// The clock's second-chance bit (the kernel's `lru_reference`, an `atomic_set`). Set by a
    /// hit under its tree lock shared in `sharded` and under no lock in `lockfree`; cleared by
    /// the clock sweep, under the client mutex. A set lost to a racing clear only costs the
    /// buffer its second chance. `classic` never uses it: its hits relink the LRU instead.
    pub(crate) referenced: AtomicBool,

    // ---- Used in isolation: each under a lock of its own, not instrumented. ----
    /// The block's bytes. In the kernel the callers (dm-block-manager) coordinate data access;
    /// the mutex is a modelling convenience, not dm-bufio's, so it is not instrumented. Taken
    /// by holders through [`BufferRef::data`] and for each read or write of the block. Eviction's
    /// synchronous write takes it with the client mutex held, but only for unheld buffers, so
    /// no holder's guard is waited on under the client mutex.
    data: Mutex<Box<[u8]>>,
    /// Wakes threads waiting for READING or WRITING to clear (the kernel's `wait_on_bit_io`).
    /// Its mutex orders a completion's clear-and-notify against a waiter's test-and-sleep, so no
    /// wake-up is lost; a leaf lock, taken last and never held while waiting for another.
    io_wait: (Mutex<()>, Condvar),
}

impl fmt::Debug for Buffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Buffer")
            .field("block", &self.block)
            .field("hold_count", &self.hold_count.load(Ordering::Relaxed))
            .field("state", &self.state.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Buffer {
    pub(crate) fn new(block: u64, block_size: usize, initial_state: u8) -> Self {
        Self {
            block,
            data: Mutex::new(vec![0; block_size].into_boxed_slice()),
            hold_count: AtomicU32::new(0),
            state: AtomicU8::new(initial_state),
            list_mode: AtomicU8::new(ListMode::Clean as u8),
            referenced: AtomicBool::new(false),
            dirty_start: AtomicU32::new(0),
            dirty_end: AtomicU32::new(0),
            io_wait: (Mutex::new(()), Condvar::new()),
        }
    }

    pub fn block(&self) -> u64 {
        self.block
    }

    pub(crate) fn has(&self, bits: u8) -> bool {
        self.state.load(Ordering::Acquire) & bits != 0
    }

    pub(crate) fn set(&self, bits: u8) {
        self.state.fetch_or(bits, Ordering::AcqRel);
    }

    pub(crate) fn clear(&self, bits: u8) {
        self.state.fetch_and(!bits, Ordering::AcqRel);
    }

    pub(crate) fn list(&self) -> ListMode {
        if self.list_mode.load(Ordering::Relaxed) == ListMode::Dirty as u8 {
            ListMode::Dirty
        } else {
            ListMode::Clean
        }
    }

    pub(crate) fn set_list(&self, mode: ListMode) {
        self.list_mode.store(mode as u8, Ordering::Relaxed);
    }

    pub(crate) fn data_mut(&self) -> MutexGuard<'_, Box<[u8]>> {
        self.data.lock()
    }

    /// Clears in-flight I/O bits and wakes whoever waits on them (the kernel's end_io).
    pub(crate) fn complete_io(&self, bits: u8) {
        let _queue = self.io_wait.0.lock();
        self.clear(bits);
        self.io_wait.1.notify_all();
    }

    /// Sleeps until none of `bits` is set (the kernel's wait_on_bit_io).
    pub(crate) fn wait_for_io(&self, bits: u8) {
        if !self.has(bits) {
            return;
        }
        let mut queue = self.io_wait.0.lock();
        while self.has(bits) {
            self.io_wait.1.wait(&mut queue);
        }
    }
}

/// A held buffer: what get, read and new return, and release takes back. Holding one keeps the
/// buffer from being evicted or forgotten. Dropping one without releasing it is a leak; debug
/// builds panic on it, naming the block.
pub struct BufferRef {
    /// Always `Some` until the cache's release path takes it.
    buffer: Option<Arc<Buffer>>,
}

impl fmt::Debug for BufferRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("BufferRef").field(&self.buffer).finish()
    }
}

impl BufferRef {
    pub(crate) fn new(buffer: Arc<Buffer>) -> Self {
        Self {
            buffer: Some(buffer),
        }
    }

    pub fn block(&self) -> u64 {
        self.buffer().block
    }

    /// The block's bytes, to read or modify (mark the buffer dirty after modifying it).
    pub fn data(&self) -> MutexGuard<'_, Box<[u8]>> {
        self.buffer().data_mut()
    }

    pub(crate) fn buffer(&self) -> &Arc<Buffer> {
        self.buffer.as_ref().expect("held until released")
    }

    /// Hands the buffer back for the cache's release path.
    pub(crate) fn into_buffer(mut self) -> Arc<Buffer> {
        self.buffer.take().expect("held until released")
    }
}

impl Drop for BufferRef {
    fn drop(&mut self) {
        if let Some(buffer) = &self.buffer
            && cfg!(debug_assertions)
            && !std::thread::panicking()
        {
            panic!(
                "buffer for block {} dropped without release (a leaked dm-bufio hold)",
                buffer.block
            );
        }
    }
}

/// Sizes and knobs of one client.
#[derive(Clone, Debug)]
pub struct CacheConfig {
    pub block_size: usize,
    /// Buffers the cache may hold before it evicts (the hotspot test: 76,800 × 4 KiB = 300 MiB).
    pub capacity: usize,
    /// CPUs the sharded design sizes its trees for (the kernel uses num_online_cpus()).
    pub cpus: usize,
    /// Evict as the kernel does: a miss (or prefetch) allocates whatever the cache's size, as
    /// the kernel's do while memory lasts, and only [`BufferCache::global_cleanup`] evicts, as
    /// dm-bufio's kworker does. Off (the default), a miss that finds the cache full evicts
    /// itself and a prefetch gives up, which keeps a replay without cleanup runs (a synthetic
    /// trace, a recording older than them) within its capacity.
    pub background_eviction: bool,
}

impl CacheConfig {
    pub fn new(block_size: usize, capacity: usize) -> Self {
        Self {
            block_size,
            capacity: capacity.max(1),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            background_eviction: false,
        }
    }

    /// Whether a miss makes room itself (see [`CacheConfig::background_eviction`]).
    pub(crate) fn miss_evicts(&self) -> bool {
        !self.background_eviction
    }

    /// Whether a prefetch finding `buffers` cached stops short of reading more.
    pub(crate) fn prefetch_stops_at(&self, buffers: usize) -> bool {
        !self.background_eviction && buffers >= self.capacity
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("reading block {block}")]
    Read { block: u64, source: io::Error },
    #[error("writing block {block}")]
    Write { block: u64, source: io::Error },
    #[error("flushing")]
    Flush(#[source] io::Error),
}

impl CacheError {
    /// The message and its causes in one line: the message leaves out the cause it keeps as
    /// its source.
    pub fn with_causes(&self) -> String {
        let mut text = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            text.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        text
    }
}

/// How full a cache is right now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Occupancy {
    pub buffers: u64,
    pub dirty: u64,
}

/// The dm-bufio client API.
pub trait BufferCache: Send + Sync + fmt::Debug {
    /// Which design this is.
    fn design(&self) -> Design;
    /// The buffer if cached and not being read; never I/O (dm_bufio_get).
    fn get(&self, rec: &ThreadRecorder, block: u64) -> Option<BufferRef>;
    /// The buffer, read from the device on a miss; waits for a read in flight (dm_bufio_read).
    fn read(&self, rec: &ThreadRecorder, block: u64) -> Result<BufferRef, CacheError>;
    /// A buffer for a block the caller will overwrite: no read (dm_bufio_new).
    fn new_buffer(&self, rec: &ThreadRecorder, block: u64) -> Result<BufferRef, CacheError>;
    /// Starts reading `n` blocks from `block` that are not cached (dm_bufio_prefetch).
    fn prefetch(&self, rec: &ThreadRecorder, block: u64, n: u64);
    /// One block of [`prefetch`](Self::prefetch)'s loop, `more` blocks following it: a
    /// simulated replay plans a kernel's prefetch block by block where lookups take no client
    /// lock ([`Design::lookups_take_the_client_lock`]). False: the prefetch gives up (the cache
    /// is full). The default prefetches the one block.
    fn prefetch_block(&self, rec: &ThreadRecorder, block: u64, _more: bool) -> bool {
        self.prefetch(rec, block, 1);
        true
    }
    /// Gives a held buffer back (dm_bufio_release).
    fn release(&self, rec: &ThreadRecorder, buf: BufferRef);
    /// Marks bytes `start..end` of a held buffer dirty (dm_bufio_mark_partial_buffer_dirty).
    fn mark_partial_dirty(&self, rec: &ThreadRecorder, buf: &BufferRef, start: u32, end: u32);
    /// Marks a held buffer dirty (dm_bufio_mark_buffer_dirty).
    fn mark_dirty(&self, rec: &ThreadRecorder, buf: &BufferRef);
    /// Starts writing every dirty buffer (dm_bufio_write_dirty_buffers_async).
    fn write_dirty_buffers_async(&self, rec: &ThreadRecorder) -> Result<(), CacheError>;
    /// Writes every dirty buffer, waits, and flushes (dm_bufio_write_dirty_buffers).
    fn write_dirty_buffers(&self, rec: &ThreadRecorder) -> Result<(), CacheError>;
    /// Drops a block from the cache if nobody holds it, discarding unwritten changes
    /// (dm_bufio_forget).
    fn forget(&self, rec: &ThreadRecorder, block: u64);
    /// [`forget`](Self::forget) for `n` blocks from `block` (dm_bufio_forget_buffers).
    fn forget_buffers(&self, rec: &ThreadRecorder, block: u64, n: u64);
    /// dm-bufio's global cleanup for this client (`do_global_cleanup`, from a kworker), under
    /// the client lock, where the cache holds more than 15/16 of its capacity. Before 6.4 (the
    /// classic designs) it evicts down to that from the LRU's tail, writing dirty victims; from
    /// 6.4 (`evict_old`) it evicts clean buffers by the clock in batches of up to 64, however
    /// far below that a batch takes it.
    fn global_cleanup(&self, rec: &ThreadRecorder) -> Result<(), CacheError>;
    /// Background work whose effect the model does not keep (the shrinker's `shrink_work`,
    /// evicting what memory reclaim asks for; the periodic `work_fn`, evicting buffers older
    /// than minutes): the client lock taken and held for the step's cost, the cache left as
    /// it is.
    fn background_work(&self, rec: &ThreadRecorder);
    /// A lookup of `block` that missed while another thread was inserting it, and so took the
    /// miss path, which found the buffer there: the locks that path takes, the cache left as it
    /// is. In 6.4+ a lookup (`cache_get`) takes a tree lock while an insertion holds the client
    /// mutex until its buffer is in the tree; a lookup between the two misses, waits for the
    /// mutex, and `__bufio_new` finds the buffer (on 6.12 verity-read two kworkers prefetching
    /// the same blocks met so at nearly every block). The simulated replay takes this path
    /// before a step's hit where the inserting thread had not yet let go of the client lock.
    /// Designs whose lookups wait for the insertion's own lock cannot meet one halfway: the
    /// default takes nothing.
    fn lookup_racing_insert(&self, _rec: &ThreadRecorder, _block: u64) {}
    /// Buffers and dirty buffers now (takes the client mutex).
    fn occupancy(&self, rec: &ThreadRecorder) -> Occupancy;
}

/// The buffer a miss allocates, held once by its caller: `fresh` (dm_bufio_new) needs no read,
/// anything else is READING until [`complete_miss`] has read it.
pub(crate) fn new_held_buffer(block: u64, block_size: usize, fresh: bool) -> Arc<Buffer> {
    let buffer = Buffer::new(block, block_size, if fresh { 0 } else { state::READING });
    buffer.hold_count.store(1, Ordering::Release);
    Arc::new(buffer)
}

/// The end of every design's miss path, after the client mutex is dropped: write what the
/// watermark collected, read the new buffer unless it is fresh, and on a read error let the
/// design `discard` it (the caller's hold still counted) before returning the error.
pub(crate) fn complete_miss(
    io: &dyn BlockIo,
    rec: &ThreadRecorder,
    buffer: Arc<Buffer>,
    fresh: bool,
    writes: &[Arc<Buffer>],
    discard: impl FnOnce(&Arc<Buffer>),
) -> Result<BufferRef, CacheError> {
    submit_writes(io, rec, writes)?;
    if !fresh && let Err(e) = read_into(io, rec, &buffer) {
        discard(&buffer);
        return Err(e);
    }
    Ok(BufferRef::new(buffer))
}

/// Buffers a thread must not evict or forget: held, or with I/O in flight.
pub(crate) fn is_idle(buffer: &Buffer) -> bool {
    buffer.hold_count.load(Ordering::Acquire) == 0 && !buffer.has(state::READING | state::WRITING)
}

/// Starts writing a dirty buffer (the kernel's __write_dirty_buffer): clears DIRTY and sets
/// WRITING. Caller holds the client mutex and moves the buffer to the clean list. False when
/// there is nothing to write, or a write is already in flight (async writeback skips those).
pub(crate) fn begin_write(buffer: &Buffer) -> bool {
    if !buffer.has(state::DIRTY) || buffer.has(state::WRITING) {
        return false;
    }
    buffer.clear(state::DIRTY);
    buffer.set(state::WRITING);
    true
}

/// Records that bytes `start..end` of a buffer changed (caller holds the client mutex). True when
/// the buffer was clean until now: the caller then moves it to the dirty list.
pub(crate) fn mark_dirty_range(buffer: &Buffer, start: u32, end: u32) -> bool {
    if buffer.has(state::DIRTY) {
        buffer.dirty_start.fetch_min(start, Ordering::Relaxed);
        buffer.dirty_end.fetch_max(end, Ordering::Relaxed);
        return false;
    }
    buffer.dirty_start.store(start, Ordering::Relaxed);
    buffer.dirty_end.store(end, Ordering::Relaxed);
    buffer.set(state::DIRTY);
    true
}

/// The end of dm_bufio_write_dirty_buffers: waits for writes in flight (without the client
/// mutex), then flushes the device.
pub(crate) fn finish_writeback(
    io: &dyn BlockIo,
    in_flight: Vec<Arc<Buffer>>,
) -> Result<(), CacheError> {
    for buffer in in_flight {
        buffer.wait_for_io(state::WRITING);
    }
    io.flush().map_err(CacheError::Flush)
}

/// Writes buffers whose WRITING bit was set by [`begin_write`], and completes them.
pub(crate) fn submit_writes(
    io: &dyn BlockIo,
    rec: &ThreadRecorder,
    buffers: &[Arc<Buffer>],
) -> Result<(), CacheError> {
    let mut first_error = None;
    for buffer in buffers {
        let result = io.write_block(buffer.block(), &buffer.data_mut());
        buffer.complete_io(state::WRITING);
        rec.count(|ops| ops.writes += 1);
        if let Err(source) = result {
            // The data is not on the device: dirty again, so a later writeback retries it.
            buffer.set(state::DIRTY);
            first_error.get_or_insert(CacheError::Write {
                block: buffer.block(),
                source,
            });
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Reads a buffer created with READING set, and completes it.
pub(crate) fn read_into(
    io: &dyn BlockIo,
    rec: &ThreadRecorder,
    buffer: &Buffer,
) -> Result<(), CacheError> {
    let result = io.read_block(buffer.block(), &mut buffer.data_mut());
    buffer.complete_io(state::READING);
    rec.count(|ops| ops.reads += 1);
    result.map_err(|source| CacheError::Read {
        block: buffer.block(),
        source,
    })
}
