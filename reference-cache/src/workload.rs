//! Synthetic workloads run directly against a cache, threads and all.
//!
//! [`run_hotspot`] is dmtest-python's `t_hotspots`, the test behind the 6.4 rework's "about 25
//! times faster": 16 hotspot threads, thread n owning blocks [1024n, 1024n + 1023], each doing
//! 512 passes of read + release in ascending order, while one dirtier does read + mark dirty +
//! release over blocks 0 to 262,143 once; 4 KiB blocks; 76,800 buffers of cache (300 MiB).

use std::{
    sync::{Arc, Barrier},
    thread,
    time::{Duration, Instant},
};

use crate::{BufferCache, CacheError, Report, ThreadRecorder};

/// Shape of the hotspot workload; [`Default`] is the kernel test's.
#[derive(Clone, Debug)]
pub struct HotspotParams {
    pub hotspot_threads: u64,
    pub region_blocks: u64,
    pub passes: u32,
    /// Blocks the dirtier walks from block 0; 0 runs no dirtier (the `hotspot2` shape, minus
    /// its warm-up with new).
    pub dirtier_blocks: u64,
}

impl Default for HotspotParams {
    fn default() -> Self {
        Self {
            hotspot_threads: 16,
            region_blocks: 1024,
            passes: 512,
            dirtier_blocks: 262_144,
        }
    }
}

/// What one run measured.
#[derive(Debug)]
pub struct HotspotResult {
    /// Wall time of each hotspot thread's passes.
    pub hotspot_elapsed: Vec<Duration>,
    /// The hotspot threads' measurements, merged.
    pub hotspot: Report,
    pub dirtier_elapsed: Option<Duration>,
    pub dirtier: Report,
}

impl HotspotResult {
    /// Buffer acquisitions per second of one hotspot thread, averaged over threads.
    pub fn acquisitions_per_thread_per_sec(&self, params: &HotspotParams) -> f64 {
        let per_thread = (params.region_blocks * u64::from(params.passes)) as f64;
        let rates: Vec<f64> = self
            .hotspot_elapsed
            .iter()
            .map(|d| per_thread / d.as_secs_f64().max(1e-9))
            .collect();
        rates.iter().sum::<f64>() / rates.len().max(1) as f64
    }
}

/// Runs the hotspot workload on `cache`; all threads start together.
pub fn run_hotspot(
    cache: Arc<dyn BufferCache>,
    params: &HotspotParams,
) -> Result<HotspotResult, CacheError> {
    let dirtier = params.dirtier_blocks > 0;
    let start = Arc::new(Barrier::new(
        params.hotspot_threads as usize + usize::from(dirtier),
    ));
    let hotspots: Vec<_> = (0..params.hotspot_threads)
        .map(|n| {
            let (cache, start, params) = (Arc::clone(&cache), Arc::clone(&start), params.clone());
            thread::spawn(move || -> Result<(Duration, ThreadRecorder), CacheError> {
                let rec = ThreadRecorder::new();
                let first = n * params.region_blocks;
                start.wait();
                let began = Instant::now();
                for _ in 0..params.passes {
                    for block in first..first + params.region_blocks {
                        let buf = cache.read(&rec, block)?;
                        cache.release(&rec, buf);
                    }
                }
                Ok((began.elapsed(), rec))
            })
        })
        .collect();
    let dirtier = dirtier.then(|| {
        let (cache, start, blocks) = (
            Arc::clone(&cache),
            Arc::clone(&start),
            params.dirtier_blocks,
        );
        thread::spawn(move || -> Result<(Duration, ThreadRecorder), CacheError> {
            let rec = ThreadRecorder::new();
            start.wait();
            let began = Instant::now();
            for block in 0..blocks {
                let buf = cache.read(&rec, block)?;
                cache.mark_dirty(&rec, &buf);
                cache.release(&rec, buf);
            }
            Ok((began.elapsed(), rec))
        })
    });

    let mut result = HotspotResult {
        hotspot_elapsed: Vec::new(),
        hotspot: Report::default(),
        dirtier_elapsed: None,
        dirtier: Report::default(),
    };
    for handle in hotspots {
        let (elapsed, rec) = handle.join().expect("hotspot thread panicked")?;
        result.hotspot_elapsed.push(elapsed);
        result.hotspot.add(&rec);
    }
    if let Some(handle) = dirtier {
        let (elapsed, rec) = handle.join().expect("dirtier thread panicked")?;
        result.dirtier_elapsed = Some(elapsed);
        result.dirtier.add(&rec);
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CacheConfig, Design, Latency, LockClass, MemoryIo, build};

    #[test]
    fn a_small_hotspot_run_does_the_kernel_tests_operations() {
        let params = HotspotParams {
            hotspot_threads: 4,
            region_blocks: 64,
            passes: 8,
            dirtier_blocks: 512,
        };
        for design in Design::ALL {
            let io = Arc::new(MemoryIo::new(512, Latency::None));
            let cache: Arc<dyn BufferCache> =
                Arc::from(build(design, CacheConfig::new(512, 300), io));
            let result = run_hotspot(cache, &params).unwrap();
            assert_eq!(result.hotspot_elapsed.len(), 4);
            let ops = result.hotspot.ops();
            assert_eq!(
                ops.hits + ops.misses,
                4 * 64 * 8,
                "{design}: one lookup per read"
            );
            assert!(ops.hits > 0, "{design}: {ops:?}");
            let dirtier = result.dirtier.ops();
            // The dirtier's walk covers every region: each of its 512 blocks is read at least
            // once, by whichever thread gets there first.
            assert!(
                ops.reads + dirtier.reads >= 512,
                "{design}: {ops:?} {dirtier:?}"
            );
            assert!(
                dirtier.evictions > 0,
                "{design}: the dirtier overflows the cache"
            );
            assert!(dirtier.writes > 0, "{design}: and forces writeback");
            let mutex = result.hotspot.class(LockClass::ClientMutex).acquisitions;
            if design == Design::Classic {
                assert!(
                    mutex >= 2 * 4 * 64 * 8,
                    "{design}: read and release lock: {mutex}"
                );
            } else {
                assert!(mutex < 4 * 64 * 2, "{design}: only misses lock: {mutex}");
            }
            assert!(result.acquisitions_per_thread_per_sec(&params) > 0.0);
        }
    }
}
