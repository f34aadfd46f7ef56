//! Open-loop scheduling and latency recording.
//!
//! Every operation has an intended start time fixed in advance by the target
//! rate, and its latency counts from that time, not from when the client got
//! around to it. A stall therefore shows up in the latencies of everything
//! scheduled during it (coordinated-omission correction by construction),
//! where a closed-loop measurement would record one slow sample and hide the
//! rest.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// Intended start times of a constant-rate stream of operations.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    start: Instant,
    interval: Duration,
    phase: Duration,
}

impl Schedule {
    /// `rate` operations per second in total, shared by `lanes` clients;
    /// `lane` is this client's index. Lanes are spread evenly over time.
    pub fn new(start: Instant, rate: f64, lanes: u32, lane: u32) -> Self {
        let rate = rate.max(1e-9);
        let interval = Duration::from_secs_f64(f64::from(lanes.max(1)) / rate);
        let phase = Duration::from_secs_f64(f64::from(lane) / rate);
        Self {
            start,
            interval,
            phase,
        }
    }

    /// When operation `k` of this lane is meant to start.
    pub fn intended(&self, k: u64) -> Instant {
        self.start + self.phase + self.interval.mul_f64(k as f64)
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// How many operations of this lane are meant to start before `end`.
    pub fn count_before(&self, end: Instant) -> u64 {
        let first = self.start + self.phase;
        if end <= first {
            return 0;
        }
        let estimate = ((end - first).as_secs_f64() / self.interval.as_secs_f64().max(1e-12))
            .ceil()
            .min(1e15) as u64;
        // The float estimate can be off by one either way.
        let mut count = estimate.saturating_sub(1);
        while self.intended(count) < end {
            count += 1;
        }
        count
    }
}

/// Latencies in microseconds, 1 µs to 1 hour, 3 significant digits.
#[derive(Clone)]
pub struct Latencies {
    histogram: Histogram<u64>,
}

impl Default for Latencies {
    fn default() -> Self {
        Self {
            histogram: Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .expect("valid histogram bounds"),
        }
    }
}

/// The percentiles every report gives, in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Percentiles {
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Latencies {
    /// Records the latency of an operation meant to start at `intended` and
    /// completed at `done`.
    pub fn record(&mut self, intended: Instant, done: Instant) {
        self.record_micros(done.saturating_duration_since(intended).as_micros() as u64);
    }

    pub fn record_micros(&mut self, micros: u64) {
        self.histogram.saturating_record(micros.max(1));
    }

    /// For closed-loop measurements (one operation after another, each
    /// expected every `expected_interval`): back-fills the samples a stall
    /// would have delayed, as HdrHistogram's coordinated-omission correction does.
    pub fn record_closed_loop(&mut self, micros: u64, expected_interval_micros: u64) {
        let _ = self
            .histogram
            .record_correct(micros.max(1), expected_interval_micros.max(1));
    }

    pub fn merge(&mut self, other: &Latencies) {
        let _ = self.histogram.add(&other.histogram);
    }

    pub fn percentiles(&self) -> Percentiles {
        let h = &self.histogram;
        Percentiles {
            count: h.len(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }

    /// (latency µs, percentile) points of the distribution, for plots.
    pub fn distribution(&self) -> Vec<(u64, f64)> {
        self.histogram
            .iter_quantiles(4)
            .map(|v| (v.value_iterated_to(), v.quantile_iterated_to() * 100.0))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanes_share_the_rate_evenly() {
        let start = Instant::now();
        let lanes: Vec<Schedule> = (0..4)
            .map(|lane| Schedule::new(start, 1000.0, 4, lane))
            .collect();
        assert_eq!(lanes[0].interval(), Duration::from_millis(4));
        let mut times: Vec<Duration> = lanes
            .iter()
            .flat_map(|s| (0..3).map(move |k| s.intended(k) - start))
            .collect();
        times.sort();
        let expected: Vec<Duration> = (0..12).map(Duration::from_millis).collect();
        assert_eq!(times, expected, "one operation every millisecond overall");
    }

    #[test]
    fn count_before_counts_operations_meant_to_start_earlier() {
        let start = Instant::now();
        let lane = Schedule::new(start, 1000.0, 4, 1); // 1 ms, 5 ms, 9 ms, ...
        assert_eq!(lane.count_before(start), 0);
        assert_eq!(lane.count_before(start + Duration::from_millis(1)), 0);
        assert_eq!(lane.count_before(start + Duration::from_micros(1001)), 1);
        assert_eq!(lane.count_before(start + Duration::from_millis(9)), 2);
        assert_eq!(lane.count_before(start + Duration::from_secs(1)), 250);
    }

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut l = Latencies::default();
        for micros in 1..=1000 {
            l.record_micros(micros);
        }
        let p = l.percentiles();
        assert_eq!(p.count, 1000);
        assert!((499..=501).contains(&p.p50), "{p:?}");
        assert!((989..=991).contains(&p.p99), "{p:?}");
        assert_eq!(p.max, 1000);
    }

    /// A system that answers in 0.5 ms but stalls for 100 ms once, driven at
    /// 1000 operations per second for five seconds.
    fn simulate(intended_time: bool) -> Percentiles {
        let start = Instant::now();
        let schedule = Schedule::new(start, 1000.0, 1, 0);
        let mut latencies = Latencies::default();
        let mut free_at = start; // when the system can take the next operation
        for k in 0..5000 {
            let intended = schedule.intended(k);
            let begins = intended.max(free_at);
            let service = if k == 1000 {
                Duration::from_millis(100)
            } else {
                Duration::from_micros(500)
            };
            let done = begins + service;
            free_at = done;
            if intended_time {
                latencies.record(intended, done);
            } else {
                latencies.record(begins, done); // what a closed-loop client measures
            }
        }
        latencies.percentiles()
    }

    #[test]
    fn a_stall_shows_up_in_the_corrected_percentiles() {
        let naive = simulate(false);
        let corrected = simulate(true);
        // Measured from when each operation actually began, the stall is a
        // single sample: p99 stays at 0.5 ms.
        assert!(naive.p99 < 1_000, "naive p99 {naive:?}");
        // Measured from the intended time, the ~200 operations queued behind
        // the stall (4%) are all late: p90 is still fine, p99 is tens of ms.
        assert!(corrected.p90 < 1_500, "{corrected:?}");
        assert!(corrected.p99 > 50_000, "corrected p99 {corrected:?}");
        assert!(corrected.max >= 100_000);
    }

    #[test]
    fn closed_loop_correction_back_fills_missed_samples() {
        let mut l = Latencies::default();
        for _ in 0..99 {
            l.record_closed_loop(1_000, 10_000);
        }
        l.record_closed_loop(1_000_000, 10_000); // one 1 s stall, samples every 10 ms
        let p = l.percentiles();
        assert!(p.count > 150, "missed samples added: {p:?}");
        assert!(p.p90 > 100_000, "{p:?}");
    }
}
