//! The pre-6.4 design (Linux ≤ 6.3, e.g. the 6.1 kernels): every operation, release included,
//! takes the one client mutex; one ordered tree; clean and dirty LRU lists relinked on every
//! hit. A hit therefore costs two mutex acquisitions (lookup and release), and eviction cleans a
//! dirty buffer synchronously while holding the mutex: that is what hotspot readers wait behind.
//!
//! Simplifications, each checked against what the lock waits depend on:
//! - Allocation never fails. A miss that finds the cache full evicts down to 15/16 of capacity
//!   itself, under the mutex. The kernel's misses allocate instead while memory lasts, and its
//!   global cleanup evicts from a worker, also under the client mutex, so readers wait behind the
//!   same work: a recording that has the cleanup's runs replays them too
//!   ([`BufferCache::global_cleanup`]), each holding the mutex as long as the kernel's did.
//! - Eviction passes over buffers with I/O in flight instead of waiting for them; if nothing can
//!   be evicted the cache grows past capacity rather than sleeping for a free buffer.
//! - Prefetch reads in the calling thread, outside the mutex, instead of asynchronously.
//! - A read that fails removes its buffer, so a later read retries (the kernel frees buffers with
//!   read errors on release).
//!
//! `ClassicCache<NoSleep>` is a no-sleep client's ([`Design::ClassicNoSleep`]): the same, with a
//! spinlock for the client lock.

use std::{
    collections::BTreeMap,
    fmt,
    sync::{Arc, atomic::Ordering},
};

use crate::{
    BlockIo, BufferCache, BufferRef, CacheConfig, CacheError, Design, Occupancy,
    cache::{
        Buffer, ListMode, begin_write, complete_miss, finish_writeback, is_idle, mark_dirty_range,
        new_held_buffer, read_into, state, submit_writes,
    },
    lock::{InstrumentedMutex, Locking, Sleeping},
    lru::Lists,
    recorder::ThreadRecorder,
};

/// What the client mutex guards beyond the buffers' own fields: all of it.
#[derive(Debug, Default)]
struct State {
    /// The one ordered tree of the client (an rbtree in the kernel): which blocks are cached.
    tree: BTreeMap<u64, Arc<Buffer>>,
    /// The clean and dirty LRU lists, relinked on every hit.
    lists: Lists,
}

/// Linux ≤ 6.3 dm-bufio; `L` says how its client lock waits ([`Sleeping`]: a mutex,
/// [`NoSleep`](crate::NoSleep): a no-sleep client's spinlock).
pub struct ClassicCache<L: Locking = Sleeping> {
    // ---- Immutable after construction. ----
    config: CacheConfig,
    io: Arc<dyn BlockIo>,

    // ---- The one lock: the client lock. ----
    /// `c->lock` (a no-sleep client's `c->spinlock`), taken by every operation, release
    /// included. Protects [`State`] and, for every buffer, the fields `Buffer` puts under the
    /// client mutex, and in this design its hold count too. Outside it: a buffer's `data` and
    /// I/O wait, and I/O completion (which clears READING or WRITING, and sets DIRTY again after
    /// a failed write).
    client: InstrumentedMutex<State, L::Mutex>,
}

impl<L: Locking> fmt::Debug for ClassicCache<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClassicCache")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl ClassicCache {
    /// A normal client's cache: the client mutex.
    pub fn new(config: CacheConfig, io: Arc<dyn BlockIo>) -> Self {
        Self::with_locking(config, io)
    }
}

impl<L: Locking> ClassicCache<L> {
    /// The cache with `L`'s client lock (`ClassicCache::<NoSleep>::with_locking`: a no-sleep
    /// client's).
    pub fn with_locking(config: CacheConfig, io: Arc<dyn BlockIo>) -> Self {
        Self {
            config,
            io,
            client: InstrumentedMutex::with_raw_lock(L::CLIENT, State::default()),
        }
    }

    /// The hit path under the mutex: hold, relink to the most recent end of its list.
    fn hit(
        &self,
        state: &mut State,
        rec: &ThreadRecorder,
        block: u64,
        for_get: bool,
    ) -> Option<BufferRef> {
        let buffer = state.tree.get(&block)?;
        if for_get && buffer.has(state::READING) {
            return None;
        }
        buffer.hold_count.fetch_add(1, Ordering::AcqRel);
        state.lists.relink(buffer);
        rec.count(|ops| ops.hits += 1);
        rec.spend_hit();
        Some(BufferRef::new(Arc::clone(buffer)))
    }

    /// Makes room for one more buffer; dirty victims are written before the mutex is dropped.
    fn make_room(&self, state: &mut State, rec: &ThreadRecorder) -> Result<(), CacheError> {
        if state.tree.len() < self.config.capacity {
            return Ok(());
        }
        let target =
            (self.config.capacity - self.config.capacity / 16).min(self.config.capacity - 1);
        while state.tree.len() > target {
            let victim = state
                .lists
                .least_recent(ListMode::Clean, is_idle)
                .or_else(|| state.lists.least_recent(ListMode::Dirty, is_idle));
            let Some(victim) = victim else { break };
            if begin_write(&victim) {
                // __make_buffer_clean: a synchronous write with the client mutex held.
                submit_writes(self.io.as_ref(), rec, std::slice::from_ref(&victim))?;
            }
            state.lists.remove(&victim);
            state.tree.remove(&victim.block());
            rec.count(|ops| ops.evictions += 1);
        }
        Ok(())
    }

    /// Starts writeback of every dirty buffer not already being written; the caller writes them
    /// after dropping the mutex.
    fn collect_writes(state: &mut State) -> Vec<Arc<Buffer>> {
        let dirty: Vec<_> = state.lists.buffers(ListMode::Dirty).cloned().collect();
        dirty
            .into_iter()
            .filter(|b| begin_write(b))
            .inspect(|b| state.lists.move_to(b, ListMode::Clean))
            .collect()
    }

    /// dm_bufio_read and dm_bufio_new (`fresh`: no read).
    fn acquire(
        &self,
        rec: &ThreadRecorder,
        block: u64,
        fresh: bool,
    ) -> Result<BufferRef, CacheError> {
        let mut state = self.client.lock(rec);
        if let Some(buffer) = self.hit(&mut state, rec, block, false) {
            drop(state);
            buffer.buffer().wait_for_io(state::READING);
            return Ok(buffer);
        }
        rec.count(|ops| ops.misses += 1);
        if self.config.miss_evicts() {
            self.make_room(&mut state, rec)?;
        }
        let writes = if state.lists.over_writeback_watermark() {
            Self::collect_writes(&mut state)
        } else {
            Vec::new()
        };
        let buffer = new_held_buffer(block, self.config.block_size, fresh);
        state.tree.insert(block, Arc::clone(&buffer));
        state.lists.insert(Arc::clone(&buffer));
        rec.spend_miss();
        drop(state);

        complete_miss(self.io.as_ref(), rec, buffer, fresh, &writes, |b| {
            self.discard(rec, b)
        })
    }

    /// Drops a buffer whose read failed, with the hold its reader had.
    fn discard(&self, rec: &ThreadRecorder, buffer: &Arc<Buffer>) {
        let mut state = self.client.lock(rec);
        buffer.hold_count.fetch_sub(1, Ordering::AcqRel);
        if is_idle(buffer) {
            state.lists.remove(buffer);
            state.tree.remove(&buffer.block());
        }
    }

    fn forget_locked(state: &mut State, block: u64) {
        if let Some(buffer) = state.tree.get(&block).cloned()
            && is_idle(&buffer)
        {
            state.lists.remove(&buffer);
            state.tree.remove(&block);
        }
    }
}

impl<L: Locking> BufferCache for ClassicCache<L> {
    fn design(&self) -> Design {
        if L::NO_SLEEP {
            Design::ClassicNoSleep
        } else {
            Design::Classic
        }
    }

    fn get(&self, rec: &ThreadRecorder, block: u64) -> Option<BufferRef> {
        let mut state = self.client.lock(rec);
        let hit = self.hit(&mut state, rec, block, true);
        if hit.is_none() {
            rec.count(|ops| ops.misses += 1);
            rec.spend_miss();
        }
        hit
    }

    fn read(&self, rec: &ThreadRecorder, block: u64) -> Result<BufferRef, CacheError> {
        self.acquire(rec, block, false)
    }

    fn new_buffer(&self, rec: &ThreadRecorder, block: u64) -> Result<BufferRef, CacheError> {
        self.acquire(rec, block, true)
    }

    /// As 6.1's: one hold of the client mutex over the blocks already cached, let go only to
    /// read a block that is not (and taken again for the next).
    fn prefetch(&self, rec: &ThreadRecorder, block: u64, n: u64) {
        let mut state = self.client.lock(rec);
        let mut inserted = false;
        for block in block..block.saturating_add(n) {
            if state.tree.contains_key(&block) {
                continue;
            }
            if self.config.prefetch_stops_at(state.tree.len()) {
                break; // prefetch gives up rather than evict
            }
            let buffer = Arc::new(Buffer::new(block, self.config.block_size, state::READING));
            state.tree.insert(block, Arc::clone(&buffer));
            state.lists.insert(Arc::clone(&buffer));
            inserted = true;
            drop(state);
            let read = read_into(self.io.as_ref(), rec, &buffer);
            state = self.client.lock(rec);
            if read.is_err() {
                Self::forget_locked(&mut state, block);
            }
        }
        // A prefetch that inserted a block holds as a miss, one that found them all as a hit.
        if inserted {
            rec.spend_miss();
        } else {
            rec.spend_hit();
        }
    }

    fn release(&self, rec: &ThreadRecorder, buf: BufferRef) {
        let buffer = buf.into_buffer();
        let _state = self.client.lock(rec);
        buffer.hold_count.fetch_sub(1, Ordering::AcqRel);
        rec.spend_hit();
    }

    fn mark_partial_dirty(&self, rec: &ThreadRecorder, buf: &BufferRef, start: u32, end: u32) {
        let mut state = self.client.lock(rec);
        let buffer = buf.buffer();
        if mark_dirty_range(buffer, start, end) {
            state.lists.move_to(buffer, ListMode::Dirty);
        }
        rec.spend_hit();
    }

    fn mark_dirty(&self, rec: &ThreadRecorder, buf: &BufferRef) {
        self.mark_partial_dirty(rec, buf, 0, self.config.block_size as u32);
    }

    fn write_dirty_buffers_async(&self, rec: &ThreadRecorder) -> Result<(), CacheError> {
        let writes = {
            let mut state = self.client.lock(rec);
            let writes = Self::collect_writes(&mut state);
            rec.spend_hit();
            writes
        };
        submit_writes(self.io.as_ref(), rec, &writes)
    }

    fn write_dirty_buffers(&self, rec: &ThreadRecorder) -> Result<(), CacheError> {
        self.write_dirty_buffers_async(rec)?;
        let in_flight = self.client.lock(rec).lists.writing();
        finish_writeback(self.io.as_ref(), in_flight)
    }

    fn forget(&self, rec: &ThreadRecorder, block: u64) {
        Self::forget_locked(&mut self.client.lock(rec), block);
    }

    fn forget_buffers(&self, rec: &ThreadRecorder, block: u64, n: u64) {
        let mut state = self.client.lock(rec);
        let blocks: Vec<u64> = state
            .tree
            .range(block..block.saturating_add(n))
            .map(|(&b, _)| b)
            .collect();
        for block in blocks {
            Self::forget_locked(&mut state, block);
        }
    }

    fn global_cleanup(&self, rec: &ThreadRecorder) -> Result<(), CacheError> {
        let mut state = self.client.lock(rec);
        rec.spend_hit();
        self.make_room(&mut state, rec)
    }

    fn background_work(&self, rec: &ThreadRecorder) {
        let _state = self.client.lock(rec);
        rec.spend_hit();
    }

    fn occupancy(&self, rec: &ThreadRecorder) -> Occupancy {
        let state = self.client.lock(rec);
        Occupancy {
            buffers: state.tree.len() as u64,
            dirty: state.lists.len(ListMode::Dirty) as u64,
        }
    }
}
