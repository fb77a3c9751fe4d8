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

use crate::{io::BlockIo, recorder::ThreadRecorder};

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
/// Locking: `block` is immutable. `state`, `list_mode` and the dirty range change under the
/// client mutex, except that I/O completion clears READING/WRITING on its own (as the kernel's
/// end_io does) and wakes waiters through `io_wait`. `hold_count` is changed under the client
/// mutex by the classic design and atomically under a tree read lock by the sharded one.
/// `referenced` is written without locks (the kernel's atomic_set). The kernel's `last_accessed`
/// is left out: it serves only age-based eviction, which these models do not have. The fields are atomics so Rust can share them; which lock guards them is the
/// designs' contract, stated here. `data` has a mutex of its own, a modelling convenience: in
/// the kernel the callers (dm-block-manager) coordinate data access, and that lock is not
/// instrumented because it is not dm-bufio's.
pub struct Buffer {
    block: u64,
    data: Mutex<Box<[u8]>>,
    pub(crate) hold_count: AtomicU32,
    pub(crate) state: AtomicU8,
    pub(crate) list_mode: AtomicU8,
    pub(crate) referenced: AtomicBool,
    pub(crate) dirty_start: AtomicU32,
    pub(crate) dirty_end: AtomicU32,
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
}

impl CacheConfig {
    pub fn new(block_size: usize, capacity: usize) -> Self {
        Self {
            block_size,
            capacity: capacity.max(1),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("reading block {block}: {source}")]
    Read { block: u64, source: io::Error },
    #[error("writing block {block}: {source}")]
    Write { block: u64, source: io::Error },
    #[error("flushing: {0}")]
    Flush(io::Error),
}

/// How full a cache is right now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Occupancy {
    pub buffers: u64,
    pub dirty: u64,
}

/// The dm-bufio client API.
pub trait BufferCache: Send + Sync + fmt::Debug {
    /// The design's name, as `--design` spells it.
    fn design(&self) -> &'static str;
    /// The buffer if cached and not being read; never I/O (dm_bufio_get).
    fn get(&self, rec: &ThreadRecorder, block: u64) -> Option<BufferRef>;
    /// The buffer, read from the device on a miss; waits for a read in flight (dm_bufio_read).
    fn read(&self, rec: &ThreadRecorder, block: u64) -> Result<BufferRef, CacheError>;
    /// A buffer for a block the caller will overwrite: no read (dm_bufio_new).
    fn new_buffer(&self, rec: &ThreadRecorder, block: u64) -> Result<BufferRef, CacheError>;
    /// Starts reading `n` blocks from `block` that are not cached (dm_bufio_prefetch).
    fn prefetch(&self, rec: &ThreadRecorder, block: u64, n: u64);
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
