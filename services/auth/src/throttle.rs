//! Sign-in guessing limits, counted in auth's own database so that every
//! replica sees the same counts.
//!
//! Every sign-in attempt that gets as far as checking a password is written
//! to `signin_failures` as `{account, address, at, failed: false}` *before*
//! the password is checked: the account is the normalised email (whether or
//! not a user has it), the address the client's
//! ([`common::client::ClientIp`]). The attempt is then refused if the
//! account already has [`Policy::per_account`] other attempts within
//! [`Policy::window`] — failed ones, and ones being checked right now — or
//! the address [`Policy::per_address`] failed ones: one query each, does the
//! Nth newest exist? Counting an account's attempts before they are checked
//! makes its limit hold against concurrent guesses too: a burst of guesses
//! at one account sees itself (a person does not sign in five times at
//! once). An address counts only settled failures, so that many people
//! behind one address signing in at the same moment are not refused.
//!
//! A refused attempt is removed again (being refused does not prolong the
//! lock), a wrong password is marked `failed: true` and stays counted, and a
//! right one removes every attempt of the account (a success clears the
//! account's count; the address's failures for other accounts stay). The
//! refusal is 429 `Too many attempts, try again later` with `Retry-After`
//! the time until the failure that locks leaves the window (1 s when what
//! locks is an attempt still being checked) — the same answer, without
//! hashing anything, whether or not the email has an account. Old attempts
//! are deleted by a TTL index.

use std::time::Duration;

use futures::TryStreamExt;
use mongodb::{
    Collection, Database, IndexModel,
    bson::{self, doc, oid::ObjectId},
    options::IndexOptions,
};
use serde::{Deserialize, Serialize};

use common::config::{ConfigError, Env};

/// The thresholds (`SIGNIN_MAX_FAILURES_PER_ACCOUNT`,
/// `SIGNIN_MAX_FAILURES_PER_ADDRESS`, `SIGNIN_FAILURE_WINDOW_SECONDS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Failures of one account within the window before its sign-ins are
    /// refused.
    pub per_account: u32,
    /// Failures from one client address within the window, all accounts
    /// together.
    pub per_address: u32,
    /// How long a failure counts.
    pub window: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            per_account: 5,
            per_address: 30,
            window: Duration::from_secs(15 * 60),
        }
    }
}

impl Policy {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let default = Self::default();
        let at_least_one = |name: &'static str, value: u64| {
            if value == 0 {
                Err(ConfigError::Invalid {
                    name,
                    reason: "must be at least 1".into(),
                })
            } else {
                Ok(value)
            }
        };
        Ok(Self {
            per_account: at_least_one(
                "SIGNIN_MAX_FAILURES_PER_ACCOUNT",
                env.parse_or(
                    "SIGNIN_MAX_FAILURES_PER_ACCOUNT",
                    u64::from(default.per_account),
                )?,
            )?
            .try_into()
            .unwrap_or(u32::MAX),
            per_address: at_least_one(
                "SIGNIN_MAX_FAILURES_PER_ADDRESS",
                env.parse_or(
                    "SIGNIN_MAX_FAILURES_PER_ADDRESS",
                    u64::from(default.per_address),
                )?,
            )?
            .try_into()
            .unwrap_or(u32::MAX),
            window: Duration::from_secs(at_least_one(
                "SIGNIN_FAILURE_WINDOW_SECONDS",
                env.parse_or("SIGNIN_FAILURE_WINDOW_SECONDS", default.window.as_secs())?,
            )?),
        })
    }
}

/// One counted attempt.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Attempt {
    #[serde(rename = "_id")]
    id: ObjectId,
    account: String,
    address: String,
    at: bson::DateTime,
    /// Settled as a wrong password (or an unknown account).
    #[serde(default)]
    failed: bool,
}

/// An attempt in the count, being checked: settle it with
/// [`Throttle::failed`], [`Throttle::succeeded`] or [`Throttle::abandoned`]. (Dropped unsettled, it
/// counts for its account until it leaves the window.)
#[derive(Debug)]
pub struct Counted {
    id: ObjectId,
    account: String,
}

/// The `signin_failures` collection and the policy.
#[derive(Clone)]
pub struct Throttle {
    attempts: Collection<Attempt>,
    policy: Policy,
}

impl Throttle {
    pub const COLLECTION: &'static str = "signin_failures";

    pub fn new(db: &Database, policy: Policy) -> Self {
        Self {
            attempts: db.collection(Self::COLLECTION),
            policy,
        }
    }

    /// The two lookups' indexes and the TTL index that deletes attempts once
    /// they are out of the window (idempotent).
    pub async fn ensure_indexes(&self) -> mongodb::error::Result<()> {
        let by = |keys: mongodb::bson::Document, name: &str| {
            IndexModel::builder()
                .keys(keys)
                .options(IndexOptions::builder().name(name.to_owned()).build())
                .build()
        };
        let expiry = IndexModel::builder()
            .keys(doc! { "at": 1 })
            .options(
                IndexOptions::builder()
                    .name("forget_old_attempts".to_owned())
                    .expire_after(self.policy.window)
                    .build(),
            )
            .build();
        self.attempts
            .create_indexes([
                by(doc! { "account": 1, "at": -1 }, "attempts_by_account"),
                by(
                    doc! { "address": 1, "failed": 1, "at": -1 },
                    "failures_by_address",
                ),
                expiry,
            ])
            .await?;
        Ok(())
    }

    /// Counts an attempt of `account` from `address`: `Ok(counted)` to go on
    /// and check the password, `Err(wait)` if the account or the address is
    /// over its limit (the attempt is then not counted).
    pub async fn attempt(
        &self,
        account: &str,
        address: &str,
    ) -> mongodb::error::Result<Result<Counted, Duration>> {
        let now = bson::DateTime::now();
        let attempt = Attempt {
            id: ObjectId::new(),
            account: account.to_owned(),
            address: address.to_owned(),
            at: now,
            failed: false,
        };
        self.attempts.insert_one(&attempt).await?;
        let (by_account, by_address) = tokio::try_join!(
            self.locked_for(
                &attempt,
                doc! { "account": account },
                self.policy.per_account
            ),
            self.locked_for(
                &attempt,
                doc! { "address": address, "failed": true },
                self.policy.per_address
            ),
        )?;
        match by_account.max(by_address) {
            None => Ok(Ok(Counted {
                id: attempt.id,
                account: attempt.account,
            })),
            Some(wait) => {
                self.attempts.delete_one(doc! { "_id": attempt.id }).await?;
                Ok(Err(wait))
            }
        }
    }

    /// How long until fewer than `limit` other attempts matching `filter`
    /// are in the window, if `limit` are now: the `limit`-th newest one's age
    /// out of the window (or a second, if that one is still being checked).
    async fn locked_for(
        &self,
        own: &Attempt,
        mut filter: mongodb::bson::Document,
        limit: u32,
    ) -> mongodb::error::Result<Option<Duration>> {
        let window_ms = i64::try_from(self.policy.window.as_millis()).unwrap_or(i64::MAX);
        let since =
            bson::DateTime::from_millis(own.at.timestamp_millis().saturating_sub(window_ms));
        filter.insert("at", doc! { "$gt": since });
        filter.insert("_id", doc! { "$ne": own.id });
        let oldest_that_locks: Vec<Attempt> = self
            .attempts
            .find(filter)
            .sort(doc! { "at": -1, "_id": -1 })
            .skip(u64::from(limit - 1))
            .limit(1)
            .await?
            .try_collect()
            .await?;
        Ok(oldest_that_locks.first().map(|attempt| {
            if !attempt.failed {
                return Duration::from_secs(1);
            }
            let until = attempt.at.timestamp_millis().saturating_add(window_ms);
            let left = until.saturating_sub(own.at.timestamp_millis()).max(0);
            Duration::from_millis(u64::try_from(left).unwrap_or(0))
        }))
    }

    /// The password was wrong (or the account unknown): the attempt stays
    /// counted, for the address too.
    pub async fn failed(&self, counted: Counted) -> mongodb::error::Result<()> {
        self.attempts
            .update_one(
                doc! { "_id": counted.id },
                doc! { "$set": { "failed": true } },
            )
            .await?;
        Ok(())
    }

    /// The password could not be checked (the hashing queue was full): the
    /// attempt leaves the count, so a refusal to work is never a guess.
    pub async fn abandoned(&self, counted: Counted) -> mongodb::error::Result<()> {
        self.attempts.delete_one(doc! { "_id": counted.id }).await?;
        Ok(())
    }

    /// The password was right: the account's count starts again.
    pub async fn succeeded(&self, counted: Counted) -> mongodb::error::Result<()> {
        self.attempts
            .delete_many(doc! { "account": &counted.account })
            .await?;
        Ok(())
    }
}
