//! `order.created` → schedule the order's expiration job at its `expiresAt`.
//!
//! The job is written with `ZADD NX` ([`Jobs::schedule`]), so a re-delivered
//! event neither adds a second job nor moves (or un-leases) the first. The
//! event is acked only once Redis has answered the write: the bus runner acks
//! after `handle` returns `Ok`, and a Redis error makes it retry with backoff.

use std::sync::Arc;

use anyhow::Context as _;
use common::bus::{Delivery, Handled, Listener};
use common::events::OrderCreated;
use tokio::sync::Notify;
use tracing::{debug, error, info, instrument};

use crate::jobs::Jobs;

/// Schedules one expiration job per order.
pub struct ScheduleExpiration {
    jobs: Jobs,
    wake: Arc<Notify>,
}

impl ScheduleExpiration {
    /// `wake` is this replica's scheduler's waker, notified for each new job so
    /// that a job due sooner than the scheduler's next wake-up is not late.
    pub fn new(jobs: Jobs, wake: Arc<Notify>) -> Self {
        Self { jobs, wake }
    }
}

impl Listener for ScheduleExpiration {
    type Event = OrderCreated;

    #[instrument(name = "schedule_expiration", skip_all, fields(order_id = %event.id, expires_at = %event.expires_at))]
    async fn handle(&self, event: OrderCreated, _delivery: &Delivery) -> anyhow::Result<Handled> {
        if event.id.is_empty() {
            error!("order.created without an order id; ignored");
            return Ok(Handled::Ack);
        }
        let due = event.expires_at.timestamp_millis();
        let added = self
            .jobs
            .schedule(&event.id, due)
            .await
            .context("failed to schedule the expiration job in Redis")?;
        if added {
            info!("expiration scheduled");
            self.wake.notify_one();
        } else {
            debug!("expiration already scheduled (a redelivery); left as it was");
        }
        Ok(Handled::Ack)
    }
}
