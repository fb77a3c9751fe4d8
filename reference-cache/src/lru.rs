//! The clean and dirty lists every design keeps, least recently used (or, for the clock, the
//! cursor) at the front. Not thread-safe: each design keeps them under its client mutex, as the
//! kernel does.

use std::sync::Arc;

use hashlink::LinkedHashMap;

use crate::{
    BlockIo, CacheError, Occupancy,
    cache::{Buffer, ListMode, begin_write, state, submit_writes},
    recorder::ThreadRecorder,
};

/// A client's clean and dirty lists, indexed by [`ListMode`], each keyed by block. Not
/// thread-safe: every design keeps them inside its client mutex.
#[derive(Debug, Default)]
pub(crate) struct Lists {
    lists: [LinkedHashMap<u64, Arc<Buffer>>; 2],
}

impl Lists {
    fn list(&mut self, mode: ListMode) -> &mut LinkedHashMap<u64, Arc<Buffer>> {
        &mut self.lists[mode as usize]
    }

    /// Adds a buffer at the back of the list its `list_mode` names (for the clock: just behind
    /// the cursor).
    pub(crate) fn insert(&mut self, buffer: Arc<Buffer>) {
        self.list(buffer.list()).insert(buffer.block(), buffer);
    }

    pub(crate) fn remove(&mut self, buffer: &Buffer) {
        self.list(buffer.list()).remove(&buffer.block());
    }

    /// Moves a buffer to the back of its list: the pre-6.4 hit path's relink.
    pub(crate) fn relink(&mut self, buffer: &Buffer) {
        self.list(buffer.list()).to_back(&buffer.block());
    }

    /// Moves a buffer from its list to the back of `mode`'s.
    pub(crate) fn move_to(&mut self, buffer: &Arc<Buffer>, mode: ListMode) {
        if buffer.list() != mode {
            self.remove(buffer);
            buffer.set_list(mode);
            self.insert(Arc::clone(buffer));
        }
    }

    pub(crate) fn len(&self, mode: ListMode) -> usize {
        self.lists[mode as usize].len()
    }

    /// `__check_watermark`: more than DM_BUFIO_WRITEBACK_RATIO dirty buffers per clean one
    /// start async writeback on the next miss.
    pub(crate) fn over_writeback_watermark(&self) -> bool {
        const WRITEBACK_RATIO: usize = 3;
        self.len(ListMode::Dirty) > WRITEBACK_RATIO * self.len(ListMode::Clean)
    }

    /// Buffers on both lists.
    pub(crate) fn total(&self) -> usize {
        self.len(ListMode::Clean) + self.len(ListMode::Dirty)
    }

    pub(crate) fn occupancy(&self) -> Occupancy {
        Occupancy {
            buffers: self.total() as u64,
            dirty: self.len(ListMode::Dirty) as u64,
        }
    }

    /// Buffers with a write in flight, for write_dirty_buffers to wait on.
    pub(crate) fn writing(&self) -> Vec<Arc<Buffer>> {
        self.buffers(ListMode::Clean)
            .chain(self.buffers(ListMode::Dirty))
            .filter(|b| b.has(state::WRITING))
            .cloned()
            .collect()
    }

    pub(crate) fn buffers(&self, mode: ListMode) -> impl Iterator<Item = &Arc<Buffer>> {
        self.lists[mode as usize].values()
    }

    /// The least recently used buffer of `mode` for which `evictable` holds (pre-6.4 scan from
    /// the tail of the LRU).
    pub(crate) fn least_recent(
        &self,
        mode: ListMode,
        evictable: impl Fn(&Buffer) -> bool,
    ) -> Option<Arc<Buffer>> {
        self.lists[mode as usize]
            .values()
            .find(|b| evictable(b))
            .cloned()
    }

    /// The 6.4+ clock (lru_evict): from the cursor, a referenced buffer loses its bit and is
    /// passed over; an unreferenced one is offered to `try_evict`, which removes it from the
    /// cache and says so, or refuses. At most `len` unreferenced buffers are offered, so the
    /// sweep covers at most two rounds. The buffer evicted leaves the list.
    pub(crate) fn clock_evict(
        &mut self,
        mode: ListMode,
        mut try_evict: impl FnMut(&Arc<Buffer>) -> bool,
    ) -> Option<Arc<Buffer>> {
        let list = self.list(mode);
        let len = list.len();
        let (mut offered, mut steps) = (0, 0);
        while offered < len && steps < 2 * len {
            steps += 1;
            let (&block, buffer) = list.front()?;
            let buffer = Arc::clone(buffer);
            if buffer
                .referenced
                .swap(false, std::sync::atomic::Ordering::Relaxed)
            {
                list.to_back(&block);
                continue;
            }
            offered += 1;
            if try_evict(&buffer) {
                list.remove(&block);
                return Some(buffer);
            }
            list.to_back(&block);
        }
        None
    }
}

/// The 6.4+ `__get_unclaimed_buffer` until the cache is below 15/16 of `capacity`: the clock over
/// clean buffers first, then dirty ones, which are written with the client mutex held. `remove`
/// takes a victim out of the design's index if it may go (judged under whatever lock the design
/// needs) and says whether it did. Caller holds the client mutex.
pub(crate) fn clock_make_room(
    lists: &mut Lists,
    capacity: usize,
    io: &dyn BlockIo,
    rec: &ThreadRecorder,
    remove: impl Fn(&Buffer) -> bool,
) -> Result<(), CacheError> {
    if lists.total() < capacity {
        return Ok(());
    }
    let target = (capacity - capacity / 16).min(capacity - 1);
    while lists.total() > target {
        let victim = lists
            .clock_evict(ListMode::Clean, |b| remove(b))
            .or_else(|| lists.clock_evict(ListMode::Dirty, |b| remove(b)));
        let Some(victim) = victim else { break };
        if begin_write(&victim) {
            submit_writes(io, rec, std::slice::from_ref(&victim))?;
        }
        rec.count(|ops| ops.evictions += 1);
    }
    Ok(())
}

/// Most buffers one pass of the 6.4+ global cleanup evicts from a client (`__evict_a_few(64)`).
pub(crate) const CLEANUP_BATCH: usize = 64;

/// A recorded run of the 6.4+ global cleanup on one client (`evict_old`): a batch of up to
/// [`CLEANUP_BATCH`] clean buffers evicted by the clock, whatever the cache's size
/// (`__evict_many` counts to its batch; referenced buffers lose their bit on the first pass and
/// go on the next), and more batches while the cache holds more than 15/16 of `capacity`, until
/// one finds none. Dirty buffers stay. The first batch is unconditional: the kernel queued the
/// run because its buffers had outgrown the cache, counting what the design cannot see (the
/// client's reserved buffers, other clients'); on the 6.12 small-cache sample (64 KiB) a check
/// of the cache's size before it left the sharded design 297 misses to the kernel's 4,522.
/// `remove` as for [`clock_make_room`]; caller holds the client mutex. How many it evicted.
pub(crate) fn clock_evict_old(
    lists: &mut Lists,
    capacity: usize,
    rec: &ThreadRecorder,
    remove: impl Fn(&Buffer) -> bool,
) -> usize {
    let target = (capacity - capacity / 16).min(capacity - 1);
    let mut evicted = 0;
    loop {
        let mut batch = 0;
        while batch < CLEANUP_BATCH && lists.clock_evict(ListMode::Clean, |b| remove(b)).is_some() {
            batch += 1;
        }
        rec.count(|ops| ops.evictions += batch as u64);
        evicted += batch;
        if batch == 0 || lists.total() <= target {
            return evicted;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;

    fn buffers(n: u64) -> Vec<Arc<Buffer>> {
        (0..n).map(|b| Arc::new(Buffer::new(b, 8, 0))).collect()
    }

    #[test]
    fn relinked_buffers_become_most_recent() {
        let mut lists = Lists::default();
        let bufs = buffers(3);
        for b in &bufs {
            lists.insert(Arc::clone(b));
        }
        lists.relink(&bufs[0]);
        let victim = lists.least_recent(ListMode::Clean, |_| true).unwrap();
        assert_eq!(victim.block(), 1);
        let held = lists
            .least_recent(ListMode::Clean, |b| b.block() != 1)
            .unwrap();
        assert_eq!(held.block(), 2);
    }

    #[test]
    fn the_clock_gives_referenced_buffers_a_second_chance() {
        let mut lists = Lists::default();
        let bufs = buffers(4);
        for b in &bufs {
            lists.insert(Arc::clone(b));
        }
        bufs[0].referenced.store(true, Ordering::Relaxed);
        bufs[1].referenced.store(true, Ordering::Relaxed);
        let victim = lists.clock_evict(ListMode::Clean, |_| true).unwrap();
        assert_eq!(victim.block(), 2, "first unreferenced after the cursor");
        assert!(!bufs[0].referenced.load(Ordering::Relaxed), "bit cleared");
        assert_eq!(lists.len(ListMode::Clean), 3);
        // Nothing evictable: the sweep ends instead of spinning.
        assert!(lists.clock_evict(ListMode::Clean, |_| false).is_none());
    }

    #[test]
    fn moving_between_lists_updates_the_mode() {
        let mut lists = Lists::default();
        let b = buffers(1).remove(0);
        lists.insert(Arc::clone(&b));
        lists.move_to(&b, ListMode::Dirty);
        assert_eq!(
            (lists.len(ListMode::Clean), lists.len(ListMode::Dirty)),
            (0, 1)
        );
        assert_eq!(b.list(), ListMode::Dirty);
    }
}
