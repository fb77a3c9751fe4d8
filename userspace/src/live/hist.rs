//! A log2 histogram of wait times: cheap to add to at millions of waits a second, and the same
//! buckets the in-kernel histograms and `report` use, so quantiles read alike everywhere.

use bufscope_abi::{HIST_BUCKETS, WaitHist};
use bufscope_analyses::report::{BUCKETS, bucket_of};

/// Waits in log2 buckets (bucket `i` holds [2^(i-1), 2^i) ns), with exact count, sum and max.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Log2Hist {
    pub buckets: [u64; BUCKETS],
    pub count: u64,
    pub total_ns: u64,
    pub max_ns: u64,
}

impl Default for Log2Hist {
    fn default() -> Self {
        Self {
            buckets: [0; BUCKETS],
            count: 0,
            total_ns: 0,
            max_ns: 0,
        }
    }
}

impl Log2Hist {
    pub fn add(&mut self, ns: u64) {
        self.buckets[bucket_of(ns).min(BUCKETS - 1)] += 1;
        self.count += 1;
        self.total_ns = self.total_ns.saturating_add(ns);
        self.max_ns = self.max_ns.max(ns);
    }

    pub fn merge(&mut self, other: &Log2Hist) {
        for (a, b) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *a += b;
        }
        self.count += other.count;
        self.total_ns = self.total_ns.saturating_add(other.total_ns);
        self.max_ns = self.max_ns.max(other.max_ns);
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The upper bound of the bucket holding quantile `q` (0..=1), never above the maximum
    /// seen; 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let target = ((self.count as f64 * q).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= target {
                let upper = if i == 0 { 0 } else { 1u64 << i.min(63) };
                return upper.min(self.max_ns);
            }
        }
        self.max_ns
    }

    pub fn mean_ns(&self) -> u64 {
        self.total_ns / self.count.max(1)
    }

    /// Of the same waits counted twice, the in-kernel histogram (`kernel`) where it has seen at
    /// least as many as the event stream brought (`streamed`), else the stream's: the stream
    /// loses events under a flood, a histogram map that filled up loses keys.
    pub fn fuller<'a>(kernel: Option<&'a Log2Hist>, streamed: &'a Log2Hist) -> &'a Log2Hist {
        match kernel {
            Some(kernel) if kernel.count >= streamed.count => kernel,
            _ => streamed,
        }
    }

    /// The first and last non-empty buckets.
    pub fn span(&self) -> Option<(usize, usize)> {
        let first = self.buckets.iter().position(|&n| n > 0)?;
        let last = self.buckets.iter().rposition(|&n| n > 0)?;
        Some((first, last))
    }
}

/// An in-kernel histogram (summed over CPUs) in this one's buckets. The kernel's bucket `i`
/// holds [2^i, 2^(i+1)) ns, this one's bucket `i + 1`; its first also holds waits of 0 ns,
/// which land one bucket up here, and its last everything from 2^31 ns (about 2.1 s) up, whose
/// quantiles the maximum bounds.
impl From<&WaitHist> for Log2Hist {
    fn from(kernel: &WaitHist) -> Self {
        let mut hist = Log2Hist {
            count: kernel.count,
            total_ns: kernel.total_ns,
            max_ns: kernel.max_ns,
            ..Log2Hist::default()
        };
        hist.buckets[1..=HIST_BUCKETS].copy_from_slice(&kernel.buckets);
        hist
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kernel_histogram_reads_as_the_same_waits_added_here() {
        let waits = [
            1,
            2,
            3,
            700,
            1023,
            1024,
            1500,
            40_000,
            9_000_000,
            3_000_000_000,
        ];
        let mut kernel = WaitHist::ZERO;
        let mut here = Log2Hist::default();
        for ns in waits {
            kernel.count += 1;
            kernel.total_ns += ns;
            kernel.max_ns = kernel.max_ns.max(ns);
            kernel.buckets[WaitHist::bucket(ns)] += 1;
            here.add(ns);
        }
        let converted = Log2Hist::from(&kernel);
        assert_eq!(converted, here);
        for q in [0.1, 0.5, 0.9, 0.99, 1.0] {
            assert_eq!(converted.quantile(q), here.quantile(q), "quantile {q}");
        }
    }

    #[test]
    fn quantiles_are_bucket_bounds_capped_by_the_maximum() {
        let mut h = Log2Hist::default();
        for _ in 0..90 {
            h.add(1500); // bucket 11: [1024, 2048)
        }
        for _ in 0..10 {
            h.add(1_500_000); // bucket 21
        }
        assert_eq!(h.count, 100);
        assert_eq!(h.quantile(0.5), 2048);
        assert_eq!(h.quantile(0.9), 2048);
        assert_eq!(h.quantile(0.99), 1_500_000, "capped by the max, not 2 Mi");
        assert_eq!(h.mean_ns(), (90 * 1500 + 10 * 1_500_000) / 100);
        assert_eq!(h.span(), Some((11, 21)));
        let mut sum = Log2Hist::default();
        sum.merge(&h);
        sum.merge(&h);
        assert_eq!(sum.count, 200);
        assert_eq!(sum.buckets[11], 180);
        assert_eq!(Log2Hist::default().quantile(0.5), 0);
    }
}
