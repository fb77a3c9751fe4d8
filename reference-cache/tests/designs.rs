//! Every design against the same expectations: hits and misses, hold counts, capacity, dirty
//! accounting, forget, and leaks caught in debug builds.

use std::sync::Arc;

use reference_cache::{
    BlockIo, BufferCache, CacheConfig, Design, Latency, LockClass, MemoryIo, ThreadRecorder, build,
};

fn cache(design: Design, capacity: usize) -> (Box<dyn BufferCache>, Arc<MemoryIo>) {
    let io = Arc::new(MemoryIo::new(64, Latency::None));
    let cache = build(
        design,
        CacheConfig::new(64, capacity),
        io.clone() as Arc<dyn BlockIo>,
    );
    (cache, io)
}

/// Forty clean buffers (blocks 1000..1040), so that dirtying a few stays under the writeback
/// watermark (dirty > 3 × clean).
fn warm_clean(cache: &dyn BufferCache, rec: &ThreadRecorder) {
    for block in 1000..1040 {
        let b = cache.read(rec, block).unwrap();
        cache.release(rec, b);
    }
}

#[test]
fn dirty_over_three_times_clean_starts_writeback_on_the_next_miss() {
    for design in Design::ALL {
        let (cache, io) = cache(design, 64);
        let rec = ThreadRecorder::new();
        for block in 0..2u64 {
            let b = cache.read(&rec, block).unwrap();
            cache.release(&rec, b);
        }
        // 2 clean; dirtying 6 more leaves dirty (6) == 3 × clean (2): no writeback yet.
        for block in 10..16u64 {
            let b = cache.new_buffer(&rec, block).unwrap();
            b.data().fill(7);
            cache.mark_dirty(&rec, &b);
            cache.release(&rec, b);
            // A new buffer starts clean; marking it dirty moves it over.
        }
        assert_eq!(
            rec.ops().writes,
            0,
            "{design}: at the watermark, not over it"
        );
        let b = cache.new_buffer(&rec, 16).unwrap();
        cache.mark_dirty(&rec, &b);
        cache.release(&rec, b);
        assert_eq!(
            rec.ops().writes,
            0,
            "{design}: 7 > 6 is noticed on the next miss only"
        );
        let b = cache.read(&rec, 17).unwrap();
        cache.release(&rec, b);
        assert_eq!(rec.ops().writes, 7, "{design}: every dirty buffer written");
        assert_eq!(io.snapshot(12), vec![7; 64], "{design}");
        assert_eq!(cache.occupancy(&rec).dirty, 0, "{design}");
    }
}

#[test]
fn reads_miss_then_hit_and_get_never_reads() {
    for design in Design::ALL {
        let (cache, _) = cache(design, 16);
        let rec = ThreadRecorder::new();
        assert!(
            cache.get(&rec, 5).is_none(),
            "{design}: get on an empty cache"
        );
        let buf = cache.read(&rec, 5).unwrap();
        cache.release(&rec, buf);
        let buf = cache.get(&rec, 5).expect("cached now");
        cache.release(&rec, buf);
        let buf = cache.read(&rec, 5).unwrap();
        cache.release(&rec, buf);
        let ops = rec.ops();
        assert_eq!(
            (ops.hits, ops.misses, ops.reads),
            (2, 2, 1),
            "{design}: {ops:?}"
        );
    }
}

#[test]
fn held_buffers_survive_forget_and_eviction() {
    for design in Design::ALL {
        let (cache, _) = cache(design, 4);
        let rec = ThreadRecorder::new();
        let held = cache.read(&rec, 1).unwrap();
        cache.forget(&rec, 1);
        for block in 10..30 {
            let b = cache.read(&rec, block).unwrap();
            cache.release(&rec, b);
        }
        assert!(
            cache.occupancy(&rec).buffers <= 5,
            "{design}: capacity kept (+1 held)"
        );
        let again = cache
            .get(&rec, 1)
            .expect("a held buffer is never evicted or forgotten");
        cache.release(&rec, again);
        cache.release(&rec, held);
        cache.forget(&rec, 1);
        assert!(
            cache.get(&rec, 1).is_none(),
            "{design}: forgotten once released"
        );
        assert!(rec.ops().evictions >= 16, "{design}: {:?}", rec.ops());
    }
}

#[test]
fn dirty_buffers_are_counted_and_written_back() {
    for design in Design::ALL {
        let (cache, io) = cache(design, 64);
        let rec = ThreadRecorder::new();
        warm_clean(cache.as_ref(), &rec);
        for block in 0..10u64 {
            let b = cache.new_buffer(&rec, block).unwrap();
            b.data().fill(block as u8 + 1);
            cache.mark_dirty(&rec, &b);
            cache.release(&rec, b);
        }
        let occ = cache.occupancy(&rec);
        assert_eq!((occ.buffers, occ.dirty), (50, 10), "{design}");
        assert_eq!(io.snapshot(3), vec![0; 64], "{design}: nothing written yet");
        cache.write_dirty_buffers(&rec).unwrap();
        assert_eq!(cache.occupancy(&rec).dirty, 0, "{design}");
        for block in 0..10u64 {
            assert_eq!(
                io.snapshot(block),
                vec![block as u8 + 1; 64],
                "{design}: block {block}"
            );
        }
        assert_eq!(rec.ops().writes, 10, "{design}");
        assert_eq!(rec.ops().reads, 40, "{design}: new never reads");
    }
}

#[test]
fn forget_discards_unwritten_changes_and_ranges_work() {
    for design in Design::ALL {
        let (cache, io) = cache(design, 64);
        let rec = ThreadRecorder::new();
        warm_clean(cache.as_ref(), &rec);
        for block in 0..8u64 {
            let b = cache.read(&rec, block).unwrap();
            b.data().fill(0xee);
            cache.mark_dirty(&rec, &b);
            cache.release(&rec, b);
        }
        cache.forget_buffers(&rec, 2, 4);
        cache.forget(&rec, 7);
        assert_eq!(
            cache.occupancy(&rec).buffers,
            43,
            "{design}: blocks 0, 1, 6 remain"
        );
        cache.write_dirty_buffers(&rec).unwrap();
        assert_eq!(io.snapshot(1), vec![0xee; 64], "{design}");
        assert_eq!(
            io.snapshot(3),
            vec![0; 64],
            "{design}: forgotten, never written"
        );
        let b = cache.read(&rec, 3).unwrap();
        assert_eq!(
            &b.data()[..],
            &[0u8; 64][..],
            "{design}: reread from the device"
        );
        cache.release(&rec, b);
    }
}

#[test]
fn every_design_takes_the_locks_its_kernel_takes() {
    use reference_cache::LockClass::{
        ClientMutex, ClientSpinlock, TreeRead, TreeRwlockRead, TreeRwlockWrite, TreeWrite,
    };
    let classes = [
        ClientMutex,
        ClientSpinlock,
        TreeRead,
        TreeWrite,
        TreeRwlockRead,
        TreeRwlockWrite,
    ];
    // Acquisitions of each of `classes` by a hit and its release, and by a miss (with its
    // release). Classic takes the client mutex for each step, sharded tree read locks for the
    // hit and release, and for the miss the mutex, a tree write lock (the insert) and read locks
    // for the lookup, its repeat under the mutex and the release. A
    // no-sleep client's take the same, spinning: the client spinlock and tree rwlocks, and no
    // sleeping lock at all. Ours takes the mutex for the miss alone.
    for (design, hit, miss) in [
        (Design::Classic, [2, 0, 0, 0, 0, 0], [2, 0, 0, 0, 0, 0]),
        (Design::Sharded, [0, 0, 2, 0, 0, 0], [1, 0, 3, 1, 0, 0]),
        (Design::LockFree, [0; 6], [1, 0, 0, 0, 0, 0]),
        (
            Design::ClassicNoSleep,
            [0, 2, 0, 0, 0, 0],
            [0, 2, 0, 0, 0, 0],
        ),
        (
            Design::ShardedNoSleep,
            [0, 0, 0, 0, 2, 0],
            [0, 1, 0, 0, 3, 1],
        ),
    ] {
        let (cache, _) = cache(design, 16);
        let taken = |rec: &ThreadRecorder| classes.map(|c| rec.class(c).acquisitions);
        let rec = ThreadRecorder::new();
        let b = cache.read(&rec, 9).unwrap();
        cache.release(&rec, b);
        assert_eq!(taken(&rec), miss, "{design}: a miss and its release");
        let rec = ThreadRecorder::new();
        let b = cache.read(&rec, 9).unwrap();
        cache.release(&rec, b);
        assert_eq!(taken(&rec), hit, "{design}: a hit and its release");
        let all: u64 = reference_cache::LockClass::ALL
            .map(|c| rec.class(c).acquisitions)
            .iter()
            .sum();
        assert_eq!(all, hit.iter().sum(), "{design}: no other lock");
    }
}

#[test]
#[cfg(debug_assertions)]
fn a_leaked_handle_is_caught_in_debug_builds() {
    for design in Design::ALL {
        let (cache, _) = cache(design, 4);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let rec = ThreadRecorder::new();
            let _leaked = cache.read(&rec, 1).unwrap();
        }));
        let message = result.expect_err("dropping a held buffer panics");
        let text = message
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_default();
        assert!(
            text.contains("block 1 dropped without release"),
            "{design}: {text}"
        );
    }
}

/// The client lock's class: a no-sleep client's spinlock, else the mutex.
fn client_lock(design: Design) -> LockClass {
    if design.no_sleep() {
        LockClass::ClientSpinlock
    } else {
        LockClass::ClientMutex
    }
}

/// What one global cleanup of a cache of `clean` idle clean buffers over its capacity of 32
/// leaves: before 6.4 (do_global_cleanup's walk of the global LRU) it evicts down to 15/16 of the
/// capacity; from 6.4 (`evict_old`) a batch of up to 64 clean buffers, whatever the target.
fn after_cleanup(design: Design, clean: u64) -> u64 {
    match design {
        Design::Classic | Design::ClassicNoSleep => 30,
        Design::Sharded | Design::ShardedNoSleep | Design::LockFree => clean.saturating_sub(64),
    }
}

#[test]
fn global_cleanup_evicts_a_full_cache_as_its_kernel_s_does_under_the_client_lock() {
    for design in Design::ALL {
        let (cache, _) = cache(design, 32);
        let rec = ThreadRecorder::new();
        for block in 0..32u64 {
            let b = cache.read(&rec, block).unwrap();
            cache.release(&rec, b);
        }
        assert_eq!(
            cache.occupancy(&rec).buffers,
            32,
            "{design}: full, not over"
        );
        let client = client_lock(design);
        let before = rec.class(client).acquisitions;
        cache.global_cleanup(&rec).unwrap();
        assert_eq!(
            rec.class(client).acquisitions,
            before + 1,
            "{design}: one hold of the client lock"
        );
        let left = after_cleanup(design, 32);
        assert_eq!(
            (cache.occupancy(&rec).buffers, rec.ops().evictions),
            (left, 32 - left),
            "{design}"
        );
        cache.global_cleanup(&rec).unwrap();
        assert_eq!(
            (cache.occupancy(&rec).buffers, rec.ops().evictions),
            (left, 32 - left),
            "{design}: under capacity, nothing to do"
        );
    }
}

#[test]
fn background_work_holds_the_client_lock_and_leaves_the_cache_as_it_is() {
    for design in Design::ALL {
        let (cache, _) = cache(design, 4);
        let rec = ThreadRecorder::new();
        for block in 0..4u64 {
            let b = cache.read(&rec, block).unwrap();
            cache.release(&rec, b);
        }
        let client = client_lock(design);
        let before = rec.class(client).acquisitions;
        cache.background_work(&rec);
        assert_eq!(rec.class(client).acquisitions, before + 1, "{design}");
        assert_eq!(cache.occupancy(&rec).buffers, 4, "{design}");
        assert_eq!(rec.ops().evictions, 0, "{design}");
    }
}

#[test]
fn with_background_eviction_misses_grow_the_cache_and_only_global_cleanup_shrinks_it() {
    for design in Design::ALL {
        let io = Arc::new(MemoryIo::new(64, Latency::None));
        let mut config = CacheConfig::new(64, 16);
        config.background_eviction = true;
        let cache = build(design, config, io as Arc<dyn BlockIo>);
        let rec = ThreadRecorder::new();
        for block in 0..40u64 {
            let b = cache.read(&rec, block).unwrap();
            cache.release(&rec, b);
        }
        cache.prefetch(&rec, 100, 4);
        assert_eq!(
            (cache.occupancy(&rec).buffers, rec.ops().evictions),
            (44, 0),
            "{design}: misses and prefetches allocate past the capacity, as the kernel's do"
        );
        // Classic down to 16 - 16/16; the others 44 clean buffers in one batch.
        let left = match after_cleanup(design, 44) {
            30 => 15,
            left => left,
        };
        cache.global_cleanup(&rec).unwrap();
        assert_eq!(
            (cache.occupancy(&rec).buffers, rec.ops().evictions),
            (left, 44 - left),
            "{design}"
        );
    }
}
