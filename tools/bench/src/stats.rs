//! Exact percentiles over kept samples, and the shapes the report shows.

use std::time::Duration;

use serde::Serialize;

/// A latency distribution, in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub n: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

/// Percentiles of `samples` (microseconds); nearest-rank.
pub fn latency(mut samples: Vec<u64>) -> Latency {
    if samples.is_empty() {
        return Latency::default();
    }
    samples.sort_unstable();
    let n = samples.len();
    let rank = |q: f64| {
        let index = ((q * n as f64).ceil() as usize).clamp(1, n) - 1;
        ms(samples[index])
    };
    let sum: u128 = samples.iter().map(|&s| u128::from(s)).sum();
    Latency {
        n,
        p50_ms: rank(0.50),
        p99_ms: rank(0.99),
        max_ms: ms(samples[n - 1]),
        mean_ms: round((sum as f64 / n as f64) / 1000.0),
    }
}

/// Signed delays (e.g. "cancelled − expiresAt", which may be negative by a
/// clock tick), in microseconds.
pub fn signed_latency(samples: Vec<i64>) -> Latency {
    if samples.is_empty() {
        return Latency::default();
    }
    let offset = samples.iter().copied().min().unwrap_or(0).min(0);
    let mut shifted = latency(samples.iter().map(|&s| (s - offset) as u64).collect());
    let back = offset as f64 / 1000.0;
    shifted.p50_ms = round(shifted.p50_ms + back);
    shifted.p99_ms = round(shifted.p99_ms + back);
    shifted.max_ms = round(shifted.max_ms + back);
    shifted.mean_ms = round(shifted.mean_ms + back);
    shifted
}

/// Requests per second and latency of one load run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Throughput {
    pub requests: usize,
    pub errors: u64,
    pub seconds: f64,
    pub per_second: f64,
    pub latency: Latency,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
}

pub fn throughput(
    latencies_us: Vec<u64>,
    errors: u64,
    elapsed: Duration,
    first_error: Option<String>,
) -> Throughput {
    let requests = latencies_us.len();
    let seconds = elapsed.as_secs_f64().max(1e-9);
    Throughput {
        requests,
        errors,
        seconds: round(seconds),
        per_second: round(requests as f64 / seconds),
        latency: latency(latencies_us),
        first_error,
    }
}

fn ms(us: u64) -> f64 {
    round(us as f64 / 1000.0)
}

/// Three decimals are plenty for milliseconds and seconds.
pub fn round(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let l = latency((1..=100).map(|ms| ms * 1000).collect());
        assert_eq!(
            (l.n, l.p50_ms, l.p99_ms, l.max_ms),
            (100, 50.0, 99.0, 100.0)
        );
        let one = latency(vec![7000]);
        assert_eq!((one.p50_ms, one.p99_ms), (7.0, 7.0));
    }

    #[test]
    fn signed_delays_keep_their_sign() {
        let l = signed_latency(vec![-2000, 1000, 3000]);
        assert_eq!((l.p50_ms, l.max_ms), (1.0, 3.0));
    }
}
