//! Compare-and-set writes that lose a race: decide again, a bounded number
//! of times, then answer 409.
//!
//! The owner of a record writes every change conditionally on the `version`
//! it read (DESIGN §4). When nothing matches, someone else wrote first: the
//! writer reads again, decides again on the new state and tries again. Every
//! round some writer wins, so this ends; but a burst of writers to one record
//! must not turn into a request that never returns, so the rounds are
//! bounded ([`MAX_ROUNDS`]) and spaced by a short jittered pause (so writers
//! who just collided do not collide again in lockstep). Running out is
//! [`Contended`], which every service turns into the same 409 in the errors
//! shape: nothing was written, and trying again later is safe.
//!
//! ```ignore
//! let mut rounds = cas::Rounds::new("order", order.id);
//! loop {
//!     // decide on `order`, write if still at `order.version` …
//!     // … lost: `order` is the fresh read
//!     rounds.lost().await?;
//! }
//! ```

use std::{fmt, time::Duration};

use crate::{backoff, error::Error};

/// How many rounds a compare-and-set decides and writes before it gives up.
///
/// Every round some writer wins, so `n` writers racing for one record need
/// at most `n` rounds; this leaves room for a burst well above what one
/// record ever sees.
pub const MAX_ROUNDS: u32 = 32;

/// The longest pause between two rounds.
const MAX_PAUSE: Duration = Duration::from_millis(20);

/// A compare-and-set lost every round: the record kept changing under it.
/// Nothing was written; trying again later is safe. Answers 409.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {id} kept changing during {rounds} attempts to update it")]
pub struct Contended {
    /// What kind of record (`ticket`, `order`): the client's message names it.
    pub kind: &'static str,
    pub id: String,
    pub rounds: u32,
}

/// 409 `The <kind> was changed at the same time; please try again`.
impl From<Contended> for Error {
    fn from(err: Contended) -> Self {
        tracing::warn!(error = %err, "giving up on a contended compare-and-set");
        Error::Conflict(format!(
            "The {} was changed at the same time; please try again",
            err.kind
        ))
    }
}

/// The rounds of one compare-and-set write: call [`Rounds::lost`] after
/// each lost round; it pauses before the next one, or says there is none.
#[derive(Debug, Clone)]
pub struct Rounds {
    kind: &'static str,
    id: String,
    lost: u32,
    max: u32,
}

impl Rounds {
    /// At most [`MAX_ROUNDS`] rounds on the `kind` record `id`.
    pub fn new(kind: &'static str, id: impl fmt::Display) -> Self {
        Self::bounded(kind, id, MAX_ROUNDS)
    }

    /// At most `max` rounds (at least one).
    pub fn bounded(kind: &'static str, id: impl fmt::Display, max: u32) -> Self {
        Self {
            kind,
            id: id.to_string(),
            lost: 0,
            max: max.max(1),
        }
    }

    /// How many rounds were lost so far.
    pub fn lost_so_far(&self) -> u32 {
        self.lost
    }

    /// A round was lost: waits a short jittered pause and returns `Ok` if
    /// another round is allowed, [`Contended`] if that was the last one.
    pub async fn lost(&mut self) -> Result<(), Contended> {
        self.lost += 1;
        if self.lost >= self.max {
            return Err(Contended {
                kind: self.kind,
                id: self.id.clone(),
                rounds: self.lost,
            });
        }
        tracing::debug!(kind = self.kind, id = %self.id, lost = self.lost, "changed concurrently; deciding again");
        tokio::time::sleep(pause(self.lost)).await;
        Ok(())
    }
}

/// The pause after the `lost`-th lost round: uniformly random ("full
/// jitter") under a ceiling that doubles from 1 ms up to [`MAX_PAUSE`].
pub fn pause(lost: u32) -> Duration {
    let ceiling = backoff::doubling(
        Duration::from_millis(1),
        u64::from(lost.saturating_sub(1)),
        MAX_PAUSE,
    );
    let ceiling_us = u64::try_from(ceiling.as_micros()).unwrap_or(u64::MAX);
    Duration::from_micros(rand::random_range(0..=ceiling_us))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn gives_up_after_the_bound_with_a_conflict() {
        let mut rounds = Rounds::bounded("order", "abc", 3);
        assert!(rounds.lost().await.is_ok());
        assert!(rounds.lost().await.is_ok());
        let err = rounds.lost().await.unwrap_err();
        assert_eq!(
            err,
            Contended {
                kind: "order",
                id: "abc".into(),
                rounds: 3
            }
        );
        let err = Error::from(err);
        assert_eq!(err.status(), axum::http::StatusCode::CONFLICT);
        assert_eq!(
            err.to_string(),
            "conflict: The order was changed at the same time; please try again"
        );
    }

    #[test]
    fn pauses_are_short_and_jittered_under_a_doubling_ceiling() {
        for lost in [1, 2, 5, 10, 1000] {
            let ceiling =
                backoff::doubling(Duration::from_millis(1), u64::from(lost - 1), MAX_PAUSE);
            for _ in 0..50 {
                assert!(pause(lost) <= ceiling);
            }
        }
        assert!(pause(u32::MAX) <= MAX_PAUSE);
    }
}
