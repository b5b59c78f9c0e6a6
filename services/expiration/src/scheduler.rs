//! The scheduler: fires due jobs by publishing `expiration.complete`.
//!
//! One loop per replica:
//!
//! 1. claim the due jobs ([`Jobs::claim`], atomic across replicas, see
//!    [`crate::jobs`]);
//! 2. if it got some, publish one `expiration.complete` per job (a few at a
//!    time), remove each job once the stream has acked its event, and go back
//!    to 1 at once — more may be due, and publishing took time;
//! 3. otherwise sleep until the earliest score in the set, at most
//!    [`SchedulerConfig::max_sleep`], or until [`Scheduler::waker`] is
//!    notified (the `order.created` listener of this replica just scheduled a
//!    job, which may be due before that).
//!
//! The sleep is computed from the claim's own answer (Redis's clock), so jobs
//! fire within milliseconds of their due time without polling Redis in a busy
//! loop. The cap bounds how late a job scheduled by *another* replica can fire
//! (its listener wakes only its own scheduler), and how soon a replica notices
//! a lease that ran out.
//!
//! Every claim also reports how many jobs the set holds; the scheduler shows
//! it as the gauge `expiration_jobs_pending` on `/metrics` (the same for every
//! replica: the set is shared).
//!
//! On shutdown the loop finishes the batch in hand (publishes are bounded by
//! the bus's retries) and returns; a job it had claimed but not fired fires
//! elsewhere once its lease runs out.

use std::sync::Arc;
use std::time::Duration;

use common::bus::Bus;
use common::events::ExpirationComplete;
use common::metrics;
use futures::StreamExt as _;
use tokio::sync::Notify;
use tokio::time::sleep;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::jobs::{Claim, Jobs};

/// The scheduler's knobs; [`Default`] is what the service runs with.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// How long a claimed job stays invisible to other replicas. Far longer
    /// than a publish takes, far shorter than the stream's duplicate window
    /// (2 min), so that a job re-fired after a crash is still deduplicated.
    pub lease: Duration,
    /// The longest sleep between two claims.
    pub max_sleep: Duration,
    /// The most jobs claimed at once.
    pub batch: usize,
    /// How many publishes of one batch run at the same time.
    pub concurrency: usize,
    /// When a job whose publish failed is due again.
    pub retry_delay: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            lease: Duration::from_secs(30),
            max_sleep: Duration::from_secs(1),
            batch: 100,
            concurrency: 16,
            retry_delay: Duration::from_secs(5),
        }
    }
}

/// Fires due jobs until shutdown. See the module docs.
pub struct Scheduler {
    jobs: Jobs,
    bus: Bus,
    wake: Arc<Notify>,
    config: SchedulerConfig,
    pending: metrics::Gauge,
}

impl Scheduler {
    pub fn new(jobs: Jobs, bus: Bus, config: SchedulerConfig) -> Scheduler {
        Scheduler {
            jobs,
            bus,
            wake: Arc::new(Notify::new()),
            config,
            pending: metrics::gauge(
                "expiration_jobs_pending",
                "Expiration jobs waiting in Redis (due or not, claimed ones included) at the last claim",
            ),
        }
    }

    /// Notify it to make the scheduler look at the set again now (a job was
    /// just scheduled).
    pub fn waker(&self) -> Arc<Notify> {
        Arc::clone(&self.wake)
    }

    /// Runs until `shutdown`; never fails on its own (Redis and NATS outages
    /// are waited out and show on `/readyz`).
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        info!(key = self.jobs.key(), "scheduler running");
        let mut failures: u32 = 0;
        while !shutdown.is_cancelled() {
            let claimed = self.jobs.claim(self.config.lease, self.config.batch).await;
            if let Ok(claim) = &claimed {
                self.pending
                    .set(i64::try_from(claim.pending).unwrap_or(i64::MAX));
            }
            let wait = match claimed {
                Ok(claim) if !claim.order_ids.is_empty() => {
                    failures = 0;
                    self.fire(claim).await;
                    continue;
                }
                Ok(claim) => {
                    failures = 0;
                    claim.time_to_next().map_or(self.config.max_sleep, |wait| {
                        wait.min(self.config.max_sleep)
                    })
                }
                Err(err) => {
                    failures = failures.saturating_add(1);
                    let backoff = common::backoff::doubling(
                        Duration::from_millis(100),
                        u64::from(failures),
                        Duration::from_secs(5),
                    );
                    warn!(error = %err, ?backoff, "could not claim due jobs; retrying");
                    backoff
                }
            };
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                () = self.wake.notified() => {}
                () = sleep(wait) => {}
            }
        }
        info!("scheduler stopped");
        Ok(())
    }

    /// Publishes the claimed jobs' events, a few at a time.
    async fn fire(&self, claim: Claim) {
        debug!(
            jobs = claim.order_ids.len(),
            lease_until = claim.lease_until,
            "claimed due jobs"
        );
        let lease_until = claim.lease_until;
        futures::stream::iter(claim.order_ids)
            .for_each_concurrent(self.config.concurrency.max(1), |order_id| {
                self.fire_one(order_id, lease_until)
            })
            .await;
    }

    async fn fire_one(&self, order_id: String, lease_until: i64) {
        let event = ExpirationComplete { order_id };
        let order_id = event.order_id.as_str();
        if let Err(err) = self.bus.publish(&event).await {
            warn!(
                order_id,
                error = format!("{err:#}"),
                "failed to publish expiration.complete; retrying later"
            );
            match self
                .jobs
                .retry_later(order_id, lease_until, self.config.retry_delay)
                .await
            {
                Ok(true) => {}
                Ok(false) => debug!(
                    order_id,
                    "lease already ran out; another replica owns the job"
                ),
                Err(err) => {
                    warn!(order_id, error = %err, "could not reschedule the job; it fires again when its lease runs out")
                }
            }
            return;
        }
        match self.jobs.complete(order_id, lease_until).await {
            Ok(true) => info!(order_id, "order expired: expiration.complete published"),
            Ok(false) => warn!(
                order_id,
                "expiration.complete published after the job's lease ran out; another replica may publish it again (deduplicated by its message id)"
            ),
            Err(err) => warn!(
                order_id,
                error = %err,
                "expiration.complete published but the job could not be removed; it fires again when its lease runs out (deduplicated by its message id)"
            ),
        }
    }
}
