//! Counters and histograms the server keeps. Lock-free: recording is a few atomic adds.
//!
//! The admin endpoint that exposes them in the Prometheus text format comes with the operations
//! work; until then they are read in-process (tests, benchmarks) and summarized in the log.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A histogram with fixed upper bounds, in seconds, like a Prometheus histogram.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One more than `bounds`: the last counts everything above the largest bound.
    buckets: Box<[AtomicU64]>,
    sum_micros: AtomicU64,
    count: AtomicU64,
}

/// Bounds for latencies from a millisecond to a minute, as CoreDNS's
/// `dns_programming_duration_seconds` (which uses the Kubernetes SLI buckets).
pub const PROGRAMMING_BOUNDS: &[f64] = &[
    0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096,
    8.192, 16.384, 32.768, 65.536,
];

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = self
            .bounds
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(self.bounds.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub fn sum(&self) -> Duration {
        Duration::from_micros(self.sum_micros.load(Ordering::Relaxed))
    }

    /// The upper bound of the bucket holding quantile `q` (0..=1): an over-estimate, as
    /// Prometheus' `histogram_quantile` would interpolate inside it. `None` when empty;
    /// infinity past the last bound.
    pub fn quantile_bound(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = (q * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            seen += b.load(Ordering::Relaxed);
            if seen >= rank {
                return Some(self.bounds.get(i).copied().unwrap_or(f64::INFINITY));
            }
        }
        Some(f64::INFINITY)
    }
}

/// Everything the server measures.
#[derive(Debug)]
pub struct Metrics {
    /// From a cluster change to the view that answers it being swapped in.
    pub programming_duration: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            programming_duration: Histogram::new(PROGRAMMING_BOUNDS),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_and_quantiles() {
        let h = Histogram::new(PROGRAMMING_BOUNDS);
        assert_eq!(h.quantile_bound(0.5), None);
        for ms in [1, 3, 3, 100, 70_000] {
            h.observe(Duration::from_millis(ms));
        }
        assert_eq!(h.count(), 5);
        assert_eq!(h.quantile_bound(0.2), Some(0.001));
        assert_eq!(h.quantile_bound(0.6), Some(0.004));
        assert_eq!(h.quantile_bound(0.8), Some(0.128));
        assert_eq!(h.quantile_bound(1.0), Some(f64::INFINITY));
        assert_eq!(h.sum(), Duration::from_millis(70_107));
    }
}
