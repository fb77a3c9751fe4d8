//! The 6.4+ design (e.g. the 6.12 kernels): the cache is sharded into `num_locks` ordered trees,
//! each under its own rw-lock, chosen by the kernel's block hash. A hit takes one tree lock
//! shared and touches only atomics (hold count, the clock's referenced bit), so readers of
//! different or even the same blocks do not exclude each other. The client mutex remains for
//! misses, dirtying, writeback, forget and eviction, and the LRU is a clock that needs no relink
//! on a hit.
//!
//! Simplifications are those of [`ClassicCache`](crate::ClassicCache) (allocation never fails,
//! busy buffers are passed over, prefetch reads in the caller), plus: the kernel's lock_history
//! keeps one tree lock across consecutive buffers of the same tree during writeback, while this
//! model takes the tree lock once per buffer.
//!
//! `ShardedCache<NoSleep>` is a no-sleep client's ([`Design::ShardedNoSleep`], the kernel's since
//! "dm-bufio: fix no-sleep mode", 6.7 and 6.4+ stable): the trees under rwlocks, the client lock
//! a spinlock.

use std::{
    collections::BTreeMap,
    fmt,
    sync::{Arc, atomic::Ordering},
};

use crossbeam_utils::CachePadded;

use crate::{
    BlockIo, BufferCache, BufferRef, CacheConfig, CacheError, Design, Occupancy,
    cache::{
        Buffer, ListMode, begin_write, complete_miss, finish_writeback, is_idle, mark_dirty_range,
        new_held_buffer, read_into, state, submit_writes,
    },
    lock::{InstrumentedMutex, InstrumentedRwLock, Locking, Sleeping},
    lru::{Lists, clock_evict_old, clock_make_room},
    recorder::ThreadRecorder,
};

/// `dm_num_hash_locks()`: twice the CPUs rounded up to a power of two, at most 64.
pub fn num_locks(cpus: usize) -> usize {
    (cpus.max(1).next_power_of_two() << 1).min(64)
}

/// `dm_hash_locks_index()`: which tree a block lives in.
pub fn tree_index(block: u64, num_locks: usize) -> usize {
    const MULT: u64 = 4_294_967_291;
    const SHIFT: u32 = 6;
    let h1 = block.wrapping_mul(MULT) >> SHIFT;
    let h2 = h1 >> SHIFT;
    ((h1 ^ h2) & (num_locks as u64 - 1)) as usize
}

/// A buffer tree under its lock, as `L` has it.
type TreeLock<L> = InstrumentedRwLock<BTreeMap<u64, Arc<Buffer>>, <L as Locking>::RwLock>;

/// A buffer tree; each sits on its own cache line, as the kernel's are.
type Tree<L> = CachePadded<TreeLock<L>>;

/// Linux ≥ 6.4 dm-bufio; `L` says how its locks wait ([`Sleeping`]: the client mutex and
/// rw_semaphore trees, [`NoSleep`](crate::NoSleep): a no-sleep client's spinlock and rwlock
/// trees).
///
/// Lock order: the client lock before a tree lock, never the reverse, and one tree lock at a
/// time. Hits and release take a tree lock alone.
pub struct ShardedCache<L: Locking = Sleeping> {
    // ---- Immutable after construction (the number of trees included). ----
    config: CacheConfig,
    io: Arc<dyn BlockIo>,

    // ---- Each tree under its own rw-lock. ----
    /// Each tree's rw-lock (`trees[i].u.lock`, a no-sleep client's `u.spinlock`) protects that tree's map: which of the tree's blocks are cached (the
    /// kernel's `node`). Lookups and release take it shared, and then change only atomics (hold
    /// count, referenced bit); insert, remove (which is where a hold count is checked) and moves
    /// between the lists take it exclusive, with the client mutex already held.
    trees: Box<[Tree<L>]>,

    // ---- The client lock. ----
    /// `c->lock` (a no-sleep client's `c->spinlock`), for misses, dirtying, writeback, forget
    /// and eviction. Protects the clean and dirty lists (the clock) and, for every buffer, the
    /// fields `Buffer` puts under the client mutex. Hold counts follow the tree locks instead
    /// (see `Buffer::hold_count`).
    client: InstrumentedMutex<Lists, L::Mutex>,
}

impl<L: Locking> fmt::Debug for ShardedCache<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShardedCache")
            .field("config", &self.config)
            .field("num_locks", &self.trees.len())
            .finish_non_exhaustive()
    }
}

impl ShardedCache {
    /// A normal client's cache: rw_semaphore trees and the client mutex.
    pub fn new(config: CacheConfig, io: Arc<dyn BlockIo>) -> Self {
        Self::with_locking(config, io)
    }
}

impl<L: Locking> ShardedCache<L> {
    /// The cache with `L`'s locks (`ShardedCache::<NoSleep>::with_locking`: a no-sleep
    /// client's).
    pub fn with_locking(config: CacheConfig, io: Arc<dyn BlockIo>) -> Self {
        let trees = (0..num_locks(config.cpus))
            .map(|i| {
                CachePadded::new(
                    InstrumentedRwLock::with_raw_lock(L::TREE_READ, L::TREE_WRITE, BTreeMap::new())
                        .with_instance(i as u32),
                )
            })
            .collect();
        Self {
            config,
            io,
            trees,
            client: InstrumentedMutex::with_raw_lock(L::CLIENT, Lists::default()),
        }
    }

    /// Trees this cache was sized with.
    pub fn num_trees(&self) -> usize {
        self.trees.len()
    }

    fn tree(&self, block: u64) -> &TreeLock<L> {
        &self.trees[tree_index(block, self.trees.len())]
    }

    /// `cache_get`: one tree read lock; on a hit the hold count and referenced bit change
    /// atomically and the clock is not touched.
    fn cache_get(&self, rec: &ThreadRecorder, block: u64, for_get: bool) -> Option<BufferRef> {
        let tree = self.tree(block).read(rec);
        let buffer = tree.get(&block)?;
        if for_get && buffer.has(state::READING) {
            return None;
        }
        buffer.hold_count.fetch_add(1, Ordering::AcqRel);
        buffer.referenced.store(true, Ordering::Relaxed);
        rec.count(|ops| ops.hits += 1);
        rec.spend_hit();
        Some(BufferRef::new(Arc::clone(buffer)))
    }

    /// Removes `buffer` from its tree if `evictable` holds, judged under the tree's write lock
    /// (a hit may take a hold at any moment without the client mutex).
    fn remove_if(
        &self,
        rec: &ThreadRecorder,
        buffer: &Buffer,
        evictable: impl Fn(&Buffer) -> bool,
    ) -> bool {
        let mut tree = self.tree(buffer.block()).write(rec);
        if !evictable(buffer) {
            return false;
        }
        tree.remove(&buffer.block());
        true
    }

    /// `cache_mark`: moves a buffer between the lists under its tree's write lock.
    fn mark(&self, rec: &ThreadRecorder, lists: &mut Lists, buffer: &Arc<Buffer>, mode: ListMode) {
        let _tree = self.tree(buffer.block()).write(rec);
        lists.move_to(buffer, mode);
    }

    /// Starts writeback of every dirty buffer not already being written (caller writes them
    /// after dropping the client mutex).
    fn collect_writes(&self, rec: &ThreadRecorder, lists: &mut Lists) -> Vec<Arc<Buffer>> {
        let dirty: Vec<_> = lists.buffers(ListMode::Dirty).cloned().collect();
        dirty
            .into_iter()
            .filter(|b| begin_write(b))
            .inspect(|b| self.mark(rec, lists, b, ListMode::Clean))
            .collect()
    }

    fn insert(&self, rec: &ThreadRecorder, lists: &mut Lists, buffer: &Arc<Buffer>) {
        self.tree(buffer.block())
            .write(rec)
            .insert(buffer.block(), Arc::clone(buffer));
        lists.insert(Arc::clone(buffer));
    }

    /// dm_bufio_read and dm_bufio_new (`fresh`: no read).
    fn acquire(
        &self,
        rec: &ThreadRecorder,
        block: u64,
        fresh: bool,
    ) -> Result<BufferRef, CacheError> {
        if let Some(buffer) = self.cache_get(rec, block, false) {
            buffer.buffer().wait_for_io(state::READING);
            return Ok(buffer);
        }
        let mut lists = self.client.lock(rec);
        // Another thread may have read it in while this one waited for the mutex.
        if let Some(buffer) = self.cache_get(rec, block, false) {
            drop(lists);
            buffer.buffer().wait_for_io(state::READING);
            return Ok(buffer);
        }
        rec.count(|ops| ops.misses += 1);
        if self.config.miss_evicts() {
            clock_make_room(
                &mut lists,
                self.config.capacity,
                self.io.as_ref(),
                rec,
                |b| self.remove_if(rec, b, is_idle),
            )?;
        }
        let writes = if lists.over_writeback_watermark() {
            self.collect_writes(rec, &mut lists)
        } else {
            Vec::new()
        };
        let buffer = new_held_buffer(block, self.config.block_size, fresh);
        self.insert(rec, &mut lists, &buffer);
        rec.spend_miss();
        drop(lists);

        complete_miss(self.io.as_ref(), rec, buffer, fresh, &writes, |b| {
            let mut lists = self.client.lock(rec);
            b.hold_count.fetch_sub(1, Ordering::AcqRel);
            if self.remove_if(rec, b, is_idle) {
                lists.remove(b);
            }
        })
    }

    fn forget_one(&self, rec: &ThreadRecorder, lists: &mut Lists, buffer: &Arc<Buffer>) {
        if self.remove_if(rec, buffer, is_idle) {
            lists.remove(buffer);
        }
    }
}

impl<L: Locking> BufferCache for ShardedCache<L> {
    fn design(&self) -> Design {
        if L::NO_SLEEP {
            Design::ShardedNoSleep
        } else {
            Design::Sharded
        }
    }

    fn get(&self, rec: &ThreadRecorder, block: u64) -> Option<BufferRef> {
        let hit = self.cache_get(rec, block, true);
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

    fn prefetch(&self, rec: &ThreadRecorder, block: u64, n: u64) {
        let end = block.saturating_add(n);
        for block in block..end {
            if !self.prefetch_block(rec, block, block + 1 < end) {
                return;
            }
        }
    }

    fn prefetch_block(&self, rec: &ThreadRecorder, block: u64, more: bool) -> bool {
        if self.tree(block).read(rec).contains_key(&block) {
            return true;
        }
        let mut lists = self.client.lock(rec);
        if self.tree(block).read(rec).contains_key(&block) {
            // Inserted while this thread waited for the client lock: __bufio_new finds it.
            rec.spend_hit();
            return true;
        }
        if self.config.prefetch_stops_at(lists.total()) {
            return false; // prefetch gives up rather than evict
        }
        let buffer = Arc::new(Buffer::new(block, self.config.block_size, state::READING));
        self.insert(rec, &mut lists, &buffer);
        rec.spend_miss();
        drop(lists);
        if read_into(self.io.as_ref(), rec, &buffer).is_err() {
            self.forget_one(rec, &mut self.client.lock(rec), &buffer);
        }
        if more {
            // The kernel's loop takes the client lock again after submitting a read, and lets
            // it go at once at the loop's end (6.4-6.12 __dm_bufio_prefetch): a section of
            // its own, where the thread prefetching the same blocks waits for it or it for
            // that one.
            drop(self.client.lock(rec));
        }
        true
    }

    fn release(&self, rec: &ThreadRecorder, buf: BufferRef) {
        // cache_put_and_wake: a tree read lock and an atomic decrement, no client mutex.
        let buffer = buf.into_buffer();
        let _tree = self.tree(buffer.block()).read(rec);
        buffer.hold_count.fetch_sub(1, Ordering::AcqRel);
        rec.spend_hit();
    }

    fn mark_partial_dirty(&self, rec: &ThreadRecorder, buf: &BufferRef, start: u32, end: u32) {
        let mut lists = self.client.lock(rec);
        let buffer = buf.buffer();
        if mark_dirty_range(buffer, start, end) {
            self.mark(rec, &mut lists, buffer, ListMode::Dirty);
        }
        rec.spend_hit();
    }

    fn mark_dirty(&self, rec: &ThreadRecorder, buf: &BufferRef) {
        self.mark_partial_dirty(rec, buf, 0, self.config.block_size as u32);
    }

    fn write_dirty_buffers_async(&self, rec: &ThreadRecorder) -> Result<(), CacheError> {
        let writes = {
            let mut lists = self.client.lock(rec);
            let writes = self.collect_writes(rec, &mut lists);
            rec.spend_hit();
            writes
        };
        submit_writes(self.io.as_ref(), rec, &writes)
    }

    fn write_dirty_buffers(&self, rec: &ThreadRecorder) -> Result<(), CacheError> {
        self.write_dirty_buffers_async(rec)?;
        let in_flight = self.client.lock(rec).writing();
        finish_writeback(self.io.as_ref(), in_flight)
    }

    fn forget(&self, rec: &ThreadRecorder, block: u64) {
        let mut lists = self.client.lock(rec);
        let found = self.tree(block).read(rec).get(&block).cloned();
        if let Some(buffer) = found {
            self.forget_one(rec, &mut lists, &buffer);
        }
    }

    fn forget_buffers(&self, rec: &ThreadRecorder, block: u64, n: u64) {
        // cache_remove_range: every tree in turn, under its write lock.
        let mut lists = self.client.lock(rec);
        let range = block..block.saturating_add(n);
        for tree in self.trees.iter() {
            let mut tree = tree.write(rec);
            let gone: Vec<_> = tree
                .range(range.clone())
                .filter(|(_, b)| is_idle(b))
                .map(|(_, b)| Arc::clone(b))
                .collect();
            for buffer in gone {
                tree.remove(&buffer.block());
                lists.remove(&buffer);
            }
        }
    }

    fn global_cleanup(&self, rec: &ThreadRecorder) -> Result<(), CacheError> {
        let mut lists = self.client.lock(rec);
        rec.spend_hit();
        clock_evict_old(&mut lists, self.config.capacity, rec, |b| {
            self.remove_if(rec, b, is_idle)
        });
        Ok(())
    }

    fn background_work(&self, rec: &ThreadRecorder) {
        let _lists = self.client.lock(rec);
        rec.spend_hit();
    }

    fn lookup_racing_insert(&self, rec: &ThreadRecorder, block: u64) {
        // cache_get's tree lock, then __bufio_new's second look under the client lock.
        drop(self.tree(block).read(rec));
        let _lists = self.client.lock(rec);
        drop(self.tree(block).read(rec));
        rec.spend_hit();
    }

    fn occupancy(&self, rec: &ThreadRecorder) -> Occupancy {
        self.client.lock(rec).occupancy()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_count_follows_the_kernel() {
        assert_eq!(num_locks(1), 2);
        assert_eq!(num_locks(2), 4);
        assert_eq!(num_locks(3), 8);
        assert_eq!(num_locks(4), 8);
        assert_eq!(num_locks(16), 32);
        assert_eq!(num_locks(32), 64);
        assert_eq!(num_locks(256), 64);
    }

    #[test]
    fn block_hash_matches_the_kernel() {
        // Computed independently from dm_hash_locks_index() in drivers/md/dm.h (u64 wrapping).
        let blocks = [0, 12, 13, 14, 100, 1000, 4096, 262_143, 1_000_000_000_000];
        let by_4: Vec<_> = blocks.iter().map(|&b| tree_index(b, 4)).collect();
        let by_64: Vec<_> = blocks.iter().map(|&b| tree_index(b, 64)).collect();
        assert_eq!(by_4, [0, 0, 1, 1, 3, 3, 3, 0, 3]);
        assert_eq!(by_64, [0, 0, 1, 1, 7, 15, 59, 0, 43]);
    }
}
