//! The job queue: one Redis sorted set, `<prefix>:jobs`, with one member per
//! order (the order id) scored by when it is due (milliseconds since the Unix
//! epoch).
//!
//! # Why a sorted set
//!
//! "Which jobs are due?" is a range query on the score, "when is the next one
//! due?" is the first element, and both are `O(log n)`. The jobs live in Redis,
//! not in the process, so they survive a restart of the service.
//!
//! # Claims and leases
//!
//! Several replicas poll the same set. To fire a job exactly once they never
//! "read then publish then delete": two replicas could read the same job. A
//! replica instead *claims* due jobs with one Lua script ([`Jobs::claim`]), which
//! Redis runs atomically:
//!
//! 1. read Redis's own clock (`TIME`), so every replica agrees on "now" whatever
//!    its local clock says;
//! 2. take the jobs whose score is `<= now` (at most a batch);
//! 3. re-score each of them to `now + lease` — the *lease*: while it runs, the
//!    job is no longer due, so no other replica can claim it;
//! 4. return them, the lease score, and the new earliest score (so the caller
//!    knows how long it may sleep).
//!
//! The claimer publishes `expiration.complete` and, once the stream has acked
//! it, removes the job with [`Jobs::complete`] — *only if its score is still the
//! lease it claimed with*. If the score changed, the lease ran out and another
//! replica re-claimed the job: that replica owns it now.
//!
//! What happens when things go wrong:
//!
//! | failure | effect |
//! |---|---|
//! | the replica dies after the claim | the lease runs out, the job is due again and some replica fires it |
//! | the replica dies after the publish, before [`Jobs::complete`] | same: the job fires a second time, but the event's message id is deterministic (`expiration.complete:<orderId>`), so JetStream stores it once (the lease is far shorter than the duplicate window), and orders ignores an expiration of an order that is no longer open anyway |
//! | the publish fails | [`Jobs::retry_later`] re-scores the job to `now + delay` (again only while we hold the lease) |
//! | Redis is unreachable | nothing is claimed; the scheduler backs off and tries again |
//!
//! Scheduling is `ZADD NX` ([`Jobs::schedule`]): a re-delivered `order.created`
//! neither duplicates the job (the order id is the member) nor moves it (`NX`
//! never updates an existing member, so it can't undo a lease either).

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use anyhow::Context as _;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Script, cmd};
use tokio::time::{Instant, sleep};

/// How long [`Jobs::connect`] keeps trying a Redis that is not up yet.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Claims due jobs. KEYS[1]: the set; ARGV[1]: lease in ms; ARGV[2]: batch size.
/// Returns `{now, lease_until, next_due | nil, {order ids}, jobs in the set}`.
static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local lease_until = now + tonumber(ARGV[1])
local due = redis.call('ZRANGE', KEYS[1], '-inf', now, 'BYSCORE', 'LIMIT', 0, tonumber(ARGV[2]))
for _, order_id in ipairs(due) do
  redis.call('ZADD', KEYS[1], 'XX', lease_until, order_id)
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local next_due = false
if first[2] then next_due = tonumber(first[2]) end
return {now, lease_until, next_due, due, redis.call('ZCARD', KEYS[1])}
",
    )
});

/// Removes a fired job if it is still at the lease it was claimed with.
/// KEYS[1]: the set; ARGV[1]: order id; ARGV[2]: lease score. Returns 1 or 0.
static COMPLETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) == tonumber(ARGV[2]) then
  return redis.call('ZREM', KEYS[1], ARGV[1])
end
return 0
",
    )
});

/// Re-scores a claimed job to `now + delay` if it is still at its lease.
/// KEYS[1]: the set; ARGV[1]: order id; ARGV[2]: lease score; ARGV[3]: delay
/// in ms. Returns 1 or 0.
static RETRY_LATER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) == tonumber(ARGV[2]) then
  local time = redis.call('TIME')
  local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
  redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[3]), ARGV[1])
  return 1
end
return 0
",
    )
});

/// What one [`Jobs::claim`] returned. Times are Redis's clock, in ms since the
/// Unix epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// Redis's clock when the claim ran.
    pub now: i64,
    /// The lease score the claimed jobs now have; pass it to
    /// [`Jobs::complete`] / [`Jobs::retry_later`].
    pub lease_until: i64,
    /// The claimed jobs' order ids (due, now leased to the caller).
    pub order_ids: Vec<String>,
    /// The earliest score left in the set (claimed jobs' leases included).
    pub next_due: Option<i64>,
    /// How many jobs the set holds (the claimed ones included).
    pub pending: u64,
}

impl Claim {
    /// How long until the next job is due, as of the claim (zero if overdue).
    pub fn time_to_next(&self) -> Option<Duration> {
        self.next_due
            .map(|due| Duration::from_millis(u64::try_from(due - self.now).unwrap_or(0)))
    }
}

/// The expiration jobs in Redis. Cheap to clone (one multiplexed connection
/// that reconnects on its own).
#[derive(Clone)]
pub struct Jobs {
    conn: ConnectionManager,
    key: Arc<str>,
}

impl std::fmt::Debug for Jobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jobs").field("key", &self.key).finish()
    }
}

impl Jobs {
    /// Connects to Redis at `url` (retrying for a while if it is not up yet) and
    /// works on the set `<key_prefix>:jobs`.
    pub async fn connect(url: &str, key_prefix: &str) -> anyhow::Result<Jobs> {
        let client = redis::Client::open(url).context("invalid REDIS_URL")?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_max_delay(Duration::from_secs(2));
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        let mut delay = Duration::from_millis(100);
        let conn = loop {
            match ConnectionManager::new_with_config(client.clone(), config.clone()).await {
                Ok(conn) => break conn,
                Err(err) if Instant::now() + delay < deadline => {
                    tracing::warn!(error = %err, "Redis not reachable yet; retrying");
                    sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                Err(err) => {
                    return Err(err).context("failed to connect to Redis");
                }
            }
        };
        let jobs = Jobs {
            conn,
            key: format!("{key_prefix}:jobs").into(),
        };
        jobs.ping().await.context("Redis does not answer PING")?;
        Ok(jobs)
    }

    /// The sorted set's key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// `PING`, for the readiness probe.
    pub async fn ping(&self) -> redis::RedisResult<()> {
        let pong: String = cmd("PING").query_async(&mut self.conn.clone()).await?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(redis::RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "unexpected answer to PING",
            )))
        }
    }

    /// Schedules the job of `order_id` at `due` (ms since the epoch) unless it
    /// is already scheduled (`ZADD NX`). Returns whether it was added; `Ok`
    /// means Redis has the job.
    pub async fn schedule(&self, order_id: &str, due: i64) -> redis::RedisResult<bool> {
        let added: i64 = cmd("ZADD")
            .arg(&*self.key)
            .arg("NX")
            .arg(due)
            .arg(order_id)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(added == 1)
    }

    /// Atomically claims up to `batch` due jobs for `lease` (see the module docs).
    pub async fn claim(&self, lease: Duration, batch: usize) -> redis::RedisResult<Claim> {
        let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX).max(1);
        let (now, lease_until, next_due, order_ids, pending): (
            i64,
            i64,
            Option<i64>,
            Vec<String>,
            u64,
        ) = CLAIM
            .key(&*self.key)
            .arg(lease_ms)
            .arg(batch.max(1))
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(Claim {
            now,
            lease_until,
            order_ids,
            next_due,
            pending,
        })
    }

    /// Removes a fired job, if it is still at the lease `lease_until` it was
    /// claimed with. `false`: the lease ran out and another replica owns it now.
    pub async fn complete(&self, order_id: &str, lease_until: i64) -> redis::RedisResult<bool> {
        let removed: i64 = COMPLETE
            .key(&*self.key)
            .arg(order_id)
            .arg(lease_until)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(removed == 1)
    }

    /// Gives a claimed job back, due again in `delay` (after a failed publish),
    /// if it is still at the lease `lease_until`.
    pub async fn retry_later(
        &self,
        order_id: &str,
        lease_until: i64,
        delay: Duration,
    ) -> redis::RedisResult<bool> {
        let delay_ms = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
        let moved: i64 = RETRY_LATER
            .key(&*self.key)
            .arg(order_id)
            .arg(lease_until)
            .arg(delay_ms)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(moved == 1)
    }

    /// When the job of `order_id` is due (or its lease ends), if it exists.
    pub async fn due_at(&self, order_id: &str) -> redis::RedisResult<Option<i64>> {
        let score: Option<f64> = cmd("ZSCORE")
            .arg(&*self.key)
            .arg(order_id)
            .query_async(&mut self.conn.clone())
            .await?;
        // Scores are whole milliseconds, exact in an f64.
        Ok(score.map(|s| s.round() as i64))
    }

    /// How many jobs are waiting (leased ones included).
    pub async fn len(&self) -> redis::RedisResult<u64> {
        cmd("ZCARD")
            .arg(&*self.key)
            .query_async(&mut self.conn.clone())
            .await
    }

    /// Whether no job is waiting.
    pub async fn is_empty(&self) -> redis::RedisResult<bool> {
        Ok(self.len().await? == 0)
    }
}
