//! Latency percentiles from an HDR histogram, in microseconds.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// The longest latency a histogram keeps exactly; longer ones are clamped to it (and still
/// counted), so one pathological sample cannot make a run fail.
const HIGHEST_US: u64 = 60_000_000;

/// Records latencies with three significant digits, 1 µs to 60 s.
#[derive(Debug, Clone)]
pub struct LatencyRecorder {
    hist: Histogram<u64>,
}

impl Default for LatencyRecorder {
    fn default() -> Self {
        LatencyRecorder::new()
    }
}

impl LatencyRecorder {
    pub fn new() -> LatencyRecorder {
        LatencyRecorder {
            hist: Histogram::new_with_bounds(1, HIGHEST_US, 3)
                .expect("static histogram bounds are valid"),
        }
    }

    /// Records one sample.
    pub fn record(&mut self, latency: Duration) {
        self.record_us(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
    }

    /// Records one sample given in microseconds.
    pub fn record_us(&mut self, us: u64) {
        self.hist.saturating_record(us.clamp(1, HIGHEST_US));
    }

    /// Adds another recorder's samples (per-connection recorders merge at the end of a run).
    pub fn merge(&mut self, other: &LatencyRecorder) {
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.hist.add(&other.hist);
    }

    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// The percentiles a report carries.
    pub fn summary(&self) -> LatencySummary {
        let q = |q: f64| {
            if self.hist.is_empty() {
                0
            } else {
                self.hist.value_at_quantile(q)
            }
        };
        LatencySummary {
            samples: self.hist.len(),
            p50_us: q(0.50),
            p99_us: q(0.99),
            p999_us: q(0.999),
            max_us: if self.hist.is_empty() {
                0
            } else {
                self.hist.max()
            },
            mean_us: if self.hist.is_empty() {
                0.0
            } else {
                (self.hist.mean() * 10.0).round() / 10.0
            },
        }
    }
}

/// Percentiles of one run, in microseconds. Zero everywhere when no sample was taken.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LatencySummary {
    pub samples: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_follow_the_recorded_distribution() {
        let mut r = LatencyRecorder::new();
        for us in 1..=1000 {
            r.record_us(us);
        }
        let s = r.summary();
        assert_eq!(s.samples, 1000);
        assert!((495..=505).contains(&s.p50_us), "{s:?}");
        assert!((985..=995).contains(&s.p99_us), "{s:?}");
        assert!(s.p999_us >= s.p99_us && s.max_us >= s.p999_us);
    }

    #[test]
    fn empty_recorder_reports_zeroes() {
        let s = LatencyRecorder::new().summary();
        assert_eq!((s.samples, s.p50_us, s.max_us), (0, 0, 0));
    }

    #[test]
    fn merged_recorders_count_both_sides() {
        let mut a = LatencyRecorder::new();
        let mut b = LatencyRecorder::new();
        a.record(Duration::from_micros(10));
        b.record(Duration::from_millis(90_000)); // clamped, still counted
        a.merge(&b);
        assert_eq!(a.count(), 2);
    }
}
