//! The edge rate limit of the local ingress: a token bucket per client
//! address (`EDGE_RATE_LIMIT=50/s,burst=100`).
//!
//! Each address starts with `burst` tokens and earns `rate` a second up to
//! `burst`; a request spends one, and one that finds none is answered 429
//! `Too many requests, try again later` with `Retry-After` the seconds until
//! the next token (the fleet's error body, by [`crate::ingress`]). Buckets of
//! addresses that have been quiet long enough to be full again are forgotten,
//! so the table stays as small as the set of recently busy addresses.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How many addresses may be tracked before full buckets are swept out.
const SWEEP_AT: usize = 4096;

/// A rate and a burst: `50/s,burst=100`, `600/m`, `10/s` (burst = rate).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Tokens earned per second.
    pub per_second: f64,
    /// The most tokens a bucket holds (and starts with).
    pub burst: f64,
}

impl FromStr for RateLimit {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "`{text}` is not a rate limit like `50/s,burst=100` (per `s` or `m`, burst optional)"
            )
        };
        let mut parts = text.split(',').map(str::trim);
        let rate = parts.next().ok_or_else(bad)?;
        let (count, unit) = rate.split_once('/').ok_or_else(bad)?;
        let count: f64 = count.trim().parse().map_err(|_| bad())?;
        let per_second = match unit.trim() {
            "s" | "sec" | "second" => count,
            "m" | "min" | "minute" => count / 60.0,
            _ => return Err(bad()),
        };
        let mut burst = count.max(1.0);
        for part in parts {
            let value = part.strip_prefix("burst=").ok_or_else(bad)?;
            burst = value.trim().parse().map_err(|_| bad())?;
        }
        if !(per_second.is_finite() && per_second > 0.0 && burst.is_finite() && burst >= 1.0) {
            return Err(bad());
        }
        Ok(Self { per_second, burst })
    }
}

impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/s,burst={}", self.per_second, self.burst)
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// The buckets of every address, behind one lock (held for a few
/// arithmetic operations per request).
#[derive(Debug)]
pub struct Limiter {
    limit: RateLimit,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

impl Limiter {
    pub fn new(limit: RateLimit) -> Self {
        Self {
            limit,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Spends a token of `client`: `Ok` to serve the request, `Err(wait)`
    /// until the next token.
    pub fn check(&self, client: IpAddr) -> Result<(), Duration> {
        self.check_at(client, Instant::now())
    }

    fn check_at(&self, client: IpAddr, now: Instant) -> Result<(), Duration> {
        let RateLimit { per_second, burst } = self.limit;
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if buckets.len() >= SWEEP_AT && !buckets.contains_key(&client) {
            let refill = Duration::from_secs_f64(burst / per_second);
            buckets.retain(|_, bucket| now.saturating_duration_since(bucket.updated) < refill);
        }
        let bucket = buckets.entry(client).or_insert(Bucket {
            tokens: burst,
            updated: now,
        });
        let earned = now.saturating_duration_since(bucket.updated).as_secs_f64() * per_second;
        bucket.tokens = (bucket.tokens + earned).min(burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / per_second))
        }
    }

    /// Addresses tracked now.
    pub fn tracked(&self) -> usize {
        self.buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rates_with_and_without_a_burst() {
        let limit: RateLimit = "50/s,burst=100".parse().unwrap();
        assert_eq!((limit.per_second, limit.burst), (50.0, 100.0));
        let limit: RateLimit = "600/m".parse().unwrap();
        assert_eq!((limit.per_second, limit.burst), (10.0, 600.0));
        let limit: RateLimit = " 5/s , burst=7 ".parse().unwrap();
        assert_eq!((limit.per_second, limit.burst), (5.0, 7.0));
        for bad in [
            "",
            "50",
            "50/h",
            "x/s",
            "0/s",
            "-1/s",
            "5/s,burst=0",
            "5/s,bust=3",
            "NaN/s",
        ] {
            assert!(bad.parse::<RateLimit>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_burst_then_the_rate_per_address() {
        let limiter = Limiter::new("10/s,burst=3".parse().unwrap());
        let start = Instant::now();
        let one: IpAddr = "127.0.0.2".parse().unwrap();
        let two: IpAddr = "127.0.0.3".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(limiter.check_at(one, start), Ok(()));
        }
        let wait = limiter.check_at(one, start).unwrap_err();
        assert!(
            wait > Duration::from_millis(90) && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        // Another address has its own bucket.
        assert_eq!(limiter.check_at(two, start), Ok(()));
        // A tenth of a second later, one more token.
        let later = start + Duration::from_millis(100);
        assert_eq!(limiter.check_at(one, later), Ok(()));
        assert!(limiter.check_at(one, later).is_err());
        // A quiet address fills up to the burst, no further.
        let much_later = start + Duration::from_secs(60);
        for _ in 0..3 {
            assert_eq!(limiter.check_at(one, much_later), Ok(()));
        }
        assert!(limiter.check_at(one, much_later).is_err());
    }

    #[test]
    fn full_buckets_are_forgotten_when_the_table_grows() {
        let limiter = Limiter::new("100/s,burst=1".parse().unwrap());
        let start = Instant::now();
        for n in 0..SWEEP_AT as u32 {
            let _ = limiter.check_at(IpAddr::from((0x0a00_0000 + n).to_be_bytes()), start);
        }
        assert_eq!(limiter.tracked(), SWEEP_AT);
        let _ = limiter.check_at("192.0.2.1".parse().unwrap(), start + Duration::from_secs(1));
        assert_eq!(limiter.tracked(), 1);
    }
}
