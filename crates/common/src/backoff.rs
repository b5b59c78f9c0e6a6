//! Exponential backoff: the one formula behind every retry delay in the fleet.

use std::time::Duration;

/// `base` doubled `doublings` times, at most `cap`; never overflows.
pub fn doubling(base: Duration, doublings: u64, cap: Duration) -> Duration {
    let factor = u32::try_from(doublings)
        .ok()
        .and_then(|d| 2u32.checked_pow(d))
        .unwrap_or(u32::MAX);
    base.saturating_mul(factor).min(cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_without_overflowing() {
        let base = Duration::from_millis(500);
        let cap = Duration::from_secs(30);
        let delays: Vec<u128> = (0..9).map(|n| doubling(base, n, cap).as_millis()).collect();
        assert_eq!(
            delays,
            [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
        assert_eq!(doubling(base, 31, cap), cap);
        assert_eq!(doubling(base, 32, cap), cap);
        assert_eq!(doubling(base, u64::MAX, cap), cap);
        assert_eq!(doubling(base, u64::MAX, Duration::MAX), base * u32::MAX);
    }
}
