//! A design of our own: `lockfree`. Hits and releases take no lock at all.
//!
//! Why it should beat `sharded` on the hotspot workload: in 6.4+ a hit still takes a tree
//! rw-lock shared, so hotspot readers wait whenever the dirtier holds that tree's lock exclusive
//! (every insert, eviction and list move), and on a busy machine a writer preempted inside that
//! short section makes readers wait a whole time slice; every hit also bounces the tree lock's
//! reader count between CPUs. Here the index is a concurrent hash map read without locks (epoch
//! reclamation keeps entries alive while a reader looks), and a hit takes its hold with one CAS
//! on the buffer's hold count. Eviction and forget claim a buffer by swinging its hold count from
//! 0 to a sentinel, under the client mutex, before removing it; a hit that meets the sentinel
//! falls back to the miss path, which re-checks under the mutex. So readers never wait for a
//! writer, and writers never wait for readers.
//!
//! What it gives up: the index is unordered, so a forget over a range looks blocks up one by one
//! (or scans the whole index for huge ranges) instead of walking a tree; memory of removed entries
//! is reclaimed when no reader can still see them, not at once; a hit costs a CAS loop instead of
//! one atomic increment; the index hashes block numbers without a key (see `BlockHash`), so a
//! trace made to collide slows down, though it cannot go wrong. Misses, dirtying, writeback and
//! eviction still serialise on the client mutex, exactly as in `sharded`, and the clock LRU is
//! the same.
//!
//! Measured on 2 cores (the bench's hotspot: 16 threads x 1,024 blocks x 512 passes and a
//! dirtier; CPU per read+release of a hotspot thread after its first pass, from the thread CPU
//! clock and `perf record -g`): lockfree 30 ns, sharded 110-138 ns. About 70 ns of sharded's are
//! this crate's lock instrumentation, not the design: its hit and its release each take a tree
//! lock, and each acquisition reads the clock twice and records its hold in a histogram, while
//! lockfree's take no lock and record nothing. With the instrumentation compiled out sharded took
//! 60-68 ns, so the design itself is about 2x faster per hit; the bench's ratio of acquisitions/s
//! (3.5x) also counts the instrumentation. Lockfree's 30 ns are papaya's chain of dependent loads
//! (tag byte, entry pointer, entry, then the buffer), seize's guard (a swap when it drops), the
//! hold count's CAS and the `Arc`'s count; std's SipHash at the head of that chain cost another
//! 24 ns before `BlockHash`. The waits the first paragraph expects matter little on 2 cores:
//! sharded's hotspot threads contended 3,000 to 10,000 times in 16 million tree-lock
//! acquisitions. The gain is the cost of a hit.
//!
//! `bufscope replay` narrows the gap: every replayed step also pays the engine's bookkeeping, the
//! same for every design (a clock read, a latency histogram, the held-buffer list, and the log
//! entry that the acquisition table is made from), about 60 ns per step on one thread where the
//! design's hit and release average 29. On `synth hotspot --passes 32` a hotspot read's median is
//! 50 ns in lockfree and 90 ns in sharded (1.8x), and the ratio of the means, which also count
//! the time a thread is descheduled (17 threads on 2 cores), was 1.8x to 4.2x over five runs
//! (median 2.4x).

use std::{
    fmt,
    hash::{BuildHasher, Hasher},
    sync::{Arc, atomic::Ordering},
};

use crate::{
    BlockIo, BufferCache, BufferRef, CacheConfig, CacheError, Design, Occupancy,
    cache::{
        Buffer, ListMode, begin_write, complete_miss, finish_writeback, mark_dirty_range,
        new_held_buffer, read_into, state, submit_writes,
    },
    lock::{InstrumentedMutex, LockClass},
    lru::{Lists, clock_evict_old, clock_make_room},
    recorder::ThreadRecorder,
};

/// Set in a buffer's hold count while eviction or forget owns it: no new holds.
const CLAIMED: u32 = 1 << 31;

/// Blocks looked up one by one in a ranged forget, beyond which the whole index is scanned.
const RANGE_LOOKUP_LIMIT: u64 = 4096;

/// Takes a hold unless the buffer is claimed.
fn try_hold(buffer: &Buffer) -> bool {
    let mut holds = buffer.hold_count.load(Ordering::Acquire);
    loop {
        if holds & CLAIMED != 0 {
            return false;
        }
        match buffer.hold_count.compare_exchange_weak(
            holds,
            holds + 1,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => return true,
            Err(now) => holds = now,
        }
    }
}

/// Claims an unheld buffer without I/O in flight for removal; caller holds the client mutex.
fn try_claim(buffer: &Buffer) -> bool {
    if buffer
        .hold_count
        .compare_exchange(0, CLAIMED, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        return false;
    }
    if buffer.has(state::READING | state::WRITING) {
        buffer.hold_count.store(0, Ordering::Release);
        return false;
    }
    true
}

/// The index's hash of a block number: one 64 x 64 -> 128-bit multiply by an odd constant,
/// folded (high half xor low half), so that consecutive blocks spread over both the table's
/// slots (the hash's low bits) and papaya's one-byte tags (its top seven). Not keyed, unlike
/// std's SipHash-1-3, which cost more than the rest of a hit: a trace can make its blocks collide,
/// which slows its replay but cannot make it wrong.
#[derive(Clone, Copy, Debug, Default)]
struct BlockHash;

struct BlockHasher(u64);

impl BuildHasher for BlockHash {
    type Hasher = BlockHasher;

    fn build_hasher(&self) -> BlockHasher {
        BlockHasher(0)
    }
}

impl Hasher for BlockHasher {
    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed (`write_u64`); any other key still gets every byte mixed in.
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u64(&mut self, block: u64) {
        self.0 ^= block;
    }

    fn finish(&self) -> u64 {
        const ODD: u128 = 0x9e37_79b9_7f4a_7c15; // 2^64 / the golden ratio
        let product = u128::from(self.0) * ODD;
        (product as u64) ^ ((product >> 64) as u64)
    }
}

/// Our design: lock-free hits and releases.
pub struct LockFreeCache {
    // ---- Immutable after construction. ----
    config: CacheConfig,
    io: Arc<dyn BlockIo>,

    // ---- Read with no lock; changed only under the client mutex. ----
    /// Block → buffer. Readers pin an epoch instead of locking, which keeps an entry they found
    /// alive after its removal. Inserted into and removed from only under the client mutex, and
    /// a buffer is removed only once claimed.
    index: papaya::HashMap<u64, Arc<Buffer>, BlockHash>,

    // ---- The client mutex. ----
    /// For misses, dirtying, writeback, forget and eviction. Protects the clean and dirty lists
    /// (the clock) and, for every buffer, the fields `Buffer` puts under the client mutex, and
    /// claiming it. Hold counts are taken and dropped with no lock (see `Buffer::hold_count`).
    client: InstrumentedMutex<Lists>,
}

impl fmt::Debug for LockFreeCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockFreeCache")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl LockFreeCache {
    pub fn new(config: CacheConfig, io: Arc<dyn BlockIo>) -> Self {
        Self {
            index: papaya::HashMap::with_capacity_and_hasher(
                config.capacity.min(1 << 20),
                BlockHash,
            ),
            config,
            io,
            client: InstrumentedMutex::new(LockClass::ClientMutex, Lists::default()),
        }
    }

    /// The lock-free hit path.
    fn lookup(&self, rec: &ThreadRecorder, block: u64, for_get: bool) -> Option<BufferRef> {
        let guard = self.index.guard();
        let buffer = self.index.get(&block, &guard)?;
        if for_get && buffer.has(state::READING) {
            return None;
        }
        if !try_hold(buffer) {
            return None;
        }
        buffer.referenced.store(true, Ordering::Relaxed);
        rec.count(|ops| ops.hits += 1);
        // No lock: the hit's cost is spent, but blocks nobody.
        rec.spend_hit();
        Some(BufferRef::new(Arc::clone(buffer)))
    }

    /// Claims and removes `buffer` if nobody holds it; caller holds the client mutex.
    fn remove_if_unheld(&self, buffer: &Buffer) -> bool {
        if !try_claim(buffer) {
            return false;
        }
        self.index.pin().remove(&buffer.block());
        true
    }

    fn collect_writes(lists: &mut Lists) -> Vec<Arc<Buffer>> {
        let dirty: Vec<_> = lists.buffers(ListMode::Dirty).cloned().collect();
        dirty
            .into_iter()
            .filter(|b| begin_write(b))
            .inspect(|b| lists.move_to(b, ListMode::Clean))
            .collect()
    }

    fn insert(&self, lists: &mut Lists, buffer: &Arc<Buffer>) {
        self.index.pin().insert(buffer.block(), Arc::clone(buffer));
        lists.insert(Arc::clone(buffer));
    }

    fn acquire(
        &self,
        rec: &ThreadRecorder,
        block: u64,
        fresh: bool,
    ) -> Result<BufferRef, CacheError> {
        if let Some(buffer) = self.lookup(rec, block, false) {
            buffer.buffer().wait_for_io(state::READING);
            return Ok(buffer);
        }
        let mut lists = self.client.lock(rec);
        if let Some(buffer) = self.lookup(rec, block, false) {
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
                |b| self.remove_if_unheld(b),
            )?;
        }
        let writes = if lists.over_writeback_watermark() {
            Self::collect_writes(&mut lists)
        } else {
            Vec::new()
        };
        let buffer = new_held_buffer(block, self.config.block_size, fresh);
        self.insert(&mut lists, &buffer);
        rec.spend_miss();
        drop(lists);

        complete_miss(self.io.as_ref(), rec, buffer, fresh, &writes, |b| {
            let mut lists = self.client.lock(rec);
            b.hold_count.fetch_sub(1, Ordering::AcqRel);
            if self.remove_if_unheld(b) {
                lists.remove(b);
            }
        })
    }

    fn forget_one(&self, lists: &mut Lists, buffer: &Arc<Buffer>) {
        if self.remove_if_unheld(buffer) {
            lists.remove(buffer);
        }
    }
}

impl BufferCache for LockFreeCache {
    fn design(&self) -> Design {
        Design::LockFree
    }

    fn get(&self, rec: &ThreadRecorder, block: u64) -> Option<BufferRef> {
        let hit = self.lookup(rec, block, true);
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

    /// As sharded's, but the lock-free lookup takes no lock, and nothing takes the client lock
    /// again after the read is submitted.
    fn prefetch_block(&self, rec: &ThreadRecorder, block: u64, _more: bool) -> bool {
        if self.index.pin().contains_key(&block) {
            return true;
        }
        let mut lists = self.client.lock(rec);
        if self.index.pin().contains_key(&block) {
            rec.spend_hit();
            return true;
        }
        if self.config.prefetch_stops_at(lists.total()) {
            return false; // prefetch gives up rather than evict
        }
        let buffer = Arc::new(Buffer::new(block, self.config.block_size, state::READING));
        self.insert(&mut lists, &buffer);
        rec.spend_miss();
        drop(lists);
        if read_into(self.io.as_ref(), rec, &buffer).is_err() {
            self.forget_one(&mut self.client.lock(rec), &buffer);
        }
        true
    }

    fn release(&self, rec: &ThreadRecorder, buf: BufferRef) {
        buf.into_buffer().hold_count.fetch_sub(1, Ordering::AcqRel);
        rec.spend_hit();
    }

    fn mark_partial_dirty(&self, rec: &ThreadRecorder, buf: &BufferRef, start: u32, end: u32) {
        let mut lists = self.client.lock(rec);
        let buffer = buf.buffer();
        if mark_dirty_range(buffer, start, end) {
            lists.move_to(buffer, ListMode::Dirty);
        }
        rec.spend_hit();
    }

    fn mark_dirty(&self, rec: &ThreadRecorder, buf: &BufferRef) {
        self.mark_partial_dirty(rec, buf, 0, self.config.block_size as u32);
    }

    fn write_dirty_buffers_async(&self, rec: &ThreadRecorder) -> Result<(), CacheError> {
        let writes = {
            let mut lists = self.client.lock(rec);
            let writes = Self::collect_writes(&mut lists);
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
        let found = self.index.pin().get(&block).cloned();
        if let Some(buffer) = found {
            self.forget_one(&mut lists, &buffer);
        }
    }

    fn forget_buffers(&self, rec: &ThreadRecorder, block: u64, n: u64) {
        let mut lists = self.client.lock(rec);
        let end = block.saturating_add(n);
        let found: Vec<Arc<Buffer>> = {
            let index = self.index.pin();
            if n <= RANGE_LOOKUP_LIMIT {
                (block..end)
                    .filter_map(|b| index.get(&b).cloned())
                    .collect()
            } else {
                index
                    .values()
                    .filter(|b| (block..end).contains(&b.block()))
                    .cloned()
                    .collect()
            }
        };
        for buffer in found {
            self.forget_one(&mut lists, &buffer);
        }
    }

    fn global_cleanup(&self, rec: &ThreadRecorder) -> Result<(), CacheError> {
        let mut lists = self.client.lock(rec);
        rec.spend_hit();
        clock_evict_old(&mut lists, self.config.capacity, rec, |b| {
            self.remove_if_unheld(b)
        });
        Ok(())
    }

    fn background_work(&self, rec: &ThreadRecorder) {
        let _lists = self.client.lock(rec);
        rec.spend_hit();
    }

    fn lookup_racing_insert(&self, rec: &ThreadRecorder, _block: u64) {
        // The lock-free lookup missed; the miss path looks again under the client mutex.
        let _lists = self.client.lock(rec);
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
    fn the_block_hash_spreads_consecutive_blocks_over_slots_and_tags() {
        let hash = |block: u64| BlockHash.hash_one(block);
        // 2^16 consecutive blocks into a table of 2^17 slots (the index's load factor), by the
        // low bits: random placement would fill 2^17 (1 - e^(-1/2)), about 51,600 slots, or
        // 79 % of the blocks.
        let blocks = 1u64 << 16;
        let slots: std::collections::HashSet<u64> =
            (0..blocks).map(|b| hash(b) & ((1 << 17) - 1)).collect();
        assert!(
            slots.len() as u64 > blocks * 3 / 4,
            "{} distinct slots",
            slots.len()
        );
        // The top seven bits, papaya's tag: every value within 25 % of its share.
        let mut tags = [0u64; 128];
        for b in 0..blocks {
            tags[(hash(b) >> 57) as usize] += 1;
        }
        let share = blocks / 128;
        assert!(
            tags.iter().all(|&n| n > share * 3 / 4 && n < share * 5 / 4),
            "{tags:?}"
        );
        assert_ne!(hash(0), hash(1 << 32), "the high half counts too");
        assert_eq!(hash(12345), hash(12345));
    }

    #[test]
    fn a_claimed_buffer_takes_no_new_holds_and_a_held_one_cannot_be_claimed() {
        let buffer = Buffer::new(1, 8, 0);
        assert!(try_hold(&buffer));
        assert!(!try_claim(&buffer), "held");
        buffer.hold_count.fetch_sub(1, Ordering::AcqRel);
        assert!(try_claim(&buffer));
        assert!(!try_hold(&buffer), "claimed");

        let reading = Buffer::new(2, 8, state::READING);
        assert!(!try_claim(&reading), "I/O in flight");
        assert!(
            try_hold(&reading),
            "a refused claim leaves the buffer usable"
        );
    }
}
