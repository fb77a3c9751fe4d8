//! Many threads on a small cache: reads, writes, gets, forgets and writebacks racing with
//! eviction. Every buffer handed out must hold its own block's data (each block's first 8 bytes
//! are its number, on the device and in every write), nothing may deadlock (a watchdog fails
//! the test instead of hanging it), and the cache must end within its capacity.

use std::{
    sync::{Arc, Barrier, mpsc},
    thread,
    time::Duration,
};

use reference_cache::{
    BlockIo, BufferCache, CacheConfig, Design, Latency, MemoryIo, ThreadRecorder, build,
};

const BLOCK: usize = 64;
const BLOCKS: u64 = 96;
const THREADS: u64 = 8;
const OPS: u64 = 4_000;

fn stamp(data: &mut [u8], block: u64, thread: u64) {
    data[..8].copy_from_slice(&block.to_le_bytes());
    data[8..16].copy_from_slice(&thread.to_le_bytes());
}

fn check(data: &[u8], block: u64) {
    assert_eq!(
        &data[..8],
        &block.to_le_bytes(),
        "buffer of block {block} holds another block"
    );
}

fn hammer(cache: Arc<dyn BufferCache>, thread: u64, start: Arc<Barrier>) -> ThreadRecorder {
    let rec = ThreadRecorder::new();
    start.wait();
    let mut x = thread.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for i in 0..OPS {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let block = x % BLOCKS;
        match (x >> 32) % 10 {
            0..=4 => {
                let b = cache.read(&rec, block).unwrap();
                check(&b.data(), block);
                cache.release(&rec, b);
            }
            5 | 6 => {
                let b = cache.read(&rec, block).unwrap();
                stamp(&mut b.data(), block, thread);
                cache.mark_dirty(&rec, &b);
                cache.release(&rec, b);
            }
            7 => {
                if let Some(b) = cache.get(&rec, block) {
                    check(&b.data(), block);
                    cache.release(&rec, b);
                }
            }
            8 => cache.forget(&rec, block),
            _ if i % 50 == 0 => cache.write_dirty_buffers(&rec).unwrap(),
            _ => cache.write_dirty_buffers_async(&rec).unwrap(),
        }
    }
    rec
}

#[test]
fn many_threads_keep_every_block_intact() {
    for design in Design::ALL {
        let io = Arc::new(MemoryIo::new(BLOCK, Latency::None));
        for block in 0..BLOCKS {
            let mut data = vec![0u8; BLOCK];
            stamp(&mut data, block, u64::MAX);
            io.write_block(block, &data).unwrap();
        }
        let capacity = 24;
        let cache: Arc<dyn BufferCache> =
            Arc::from(build(design, CacheConfig::new(BLOCK, capacity), io.clone()));
        let start = Arc::new(Barrier::new(THREADS as usize));
        let (done_tx, done_rx) = mpsc::channel();
        for thread in 0..THREADS {
            let (cache, start, done_tx) = (Arc::clone(&cache), Arc::clone(&start), done_tx.clone());
            thread::spawn(move || {
                let rec = hammer(cache, thread, start);
                let _ = done_tx.send(rec.ops());
            });
        }
        drop(done_tx);
        let mut evictions = 0;
        for _ in 0..THREADS {
            let ops = done_rx
                .recv_timeout(Duration::from_secs(120))
                .unwrap_or_else(|_| panic!("{design}: a thread is stuck or died (deadlock?)"));
            evictions += ops.evictions;
        }
        let rec = ThreadRecorder::new();
        cache.write_dirty_buffers(&rec).unwrap();
        let occ = cache.occupancy(&rec);
        assert!(occ.buffers <= capacity as u64, "{design}: {occ:?}");
        assert_eq!(occ.dirty, 0, "{design}");
        assert!(
            evictions > 100,
            "{design}: only {evictions} evictions: the test did not stress eviction"
        );
        for block in 0..BLOCKS {
            check(&io.snapshot(block), block);
        }
    }
}
