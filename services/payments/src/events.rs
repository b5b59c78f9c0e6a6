//! What payments hears from the fleet: the orders it may charge for.
//!
//! Two listeners on the durable consumers of [`SERVICE`] keep the
//! [`Orders`] replica in step with the orders service:
//!
//! - `order.created` inserts the order (a redelivery finds it there: ack);
//! - `order.cancelled` marks it cancelled by the version rule of DESIGN §4:
//!   applied at `version − 1`, acked as a duplicate at `version` or later,
//!   retried later when the replica is missing or behind. Then the order's
//!   payment is closed ([`Settle::close`]): its open intent is cancelled at
//!   Stripe, money that made it through is refunded. That runs for a
//!   duplicate too, so a redelivery after a crash finishes the job (it is
//!   idempotent); a Stripe outage leaves the payment `cancelling` for the
//!   sweep rather than holding the event back.
//!
//! What payments tells the fleet (`payment.created`) leaves through the outbox
//! of the payment document, see [`crate::store::payments`].

use std::time::Duration;

use async_trait::async_trait;
use common::{
    bus::{Delivery, Handled, Listener},
    events::{OrderCancelled, OrderCreated},
};
use mongodb::bson::oid::ObjectId;

use crate::{
    settle::Settle,
    store::{Order, Orders, Payments, VersionedUpdate},
};

/// The durable consumer name of this service.
pub const SERVICE: &str = "payments-service";

/// Inserts the replica of a new order.
#[derive(Clone, Debug)]
pub struct OrderCreatedListener {
    pub orders: Orders,
}

#[async_trait]
impl Listener for OrderCreatedListener {
    type Event = OrderCreated;

    #[tracing::instrument(skip_all, fields(order_id = %event.id, version = event.version))]
    async fn handle(&self, event: OrderCreated, _delivery: &Delivery) -> anyhow::Result<Handled> {
        let Some(id) = order_id(&event.id) else {
            return Ok(Handled::Ack);
        };
        let order = Order {
            id,
            version: event.version,
            user_id: event.user_id,
            price: event.ticket.price,
            status: event.status,
            declined_attempts: 0,
        };
        if self.orders.insert(&order).await? {
            tracing::info!("order replicated");
        } else {
            tracing::debug!("order already replicated");
        }
        Ok(Handled::Ack)
    }
}

/// Marks the replica of an order cancelled and closes its payment.
#[derive(Clone, Debug)]
pub struct OrderCancelledListener {
    pub orders: Orders,
    /// `None`: only the replica (tests of the version rule).
    pub settle: Option<Settle>,
}

impl OrderCancelledListener {
    async fn close_payment(&self, id: ObjectId) -> anyhow::Result<()> {
        let Some(settle) = &self.settle else {
            return Ok(());
        };
        let payments: &Payments = &settle.payments;
        if let Some(payment) = payments.find_by_order(id).await? {
            settle.close(&payment).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl Listener for OrderCancelledListener {
    type Event = OrderCancelled;

    #[tracing::instrument(skip_all, fields(order_id = %event.id, version = event.version))]
    async fn handle(&self, event: OrderCancelled, delivery: &Delivery) -> anyhow::Result<Handled> {
        let Some(id) = order_id(&event.id) else {
            return Ok(Handled::Ack);
        };
        Ok(match self.orders.cancel(id, event.version).await? {
            VersionedUpdate::Applied => {
                tracing::info!("order cancelled");
                self.close_payment(id).await?;
                Handled::Ack
            }
            VersionedUpdate::Duplicate => {
                tracing::debug!("stale or repeated order.cancelled");
                if self
                    .orders
                    .find(id)
                    .await?
                    .is_some_and(|o| o.status == common::events::OrderStatus::Cancelled)
                {
                    self.close_payment(id).await?;
                }
                Handled::Ack
            }
            VersionedUpdate::Early => Handled::RetryLater(early_retry_delay(delivery.delivered)),
        })
    }
}

/// How long an event that arrived before its predecessor waits: growing with
/// each delivery (0.5 s, 1 s, … up to 10 s), so a lagging `order.created` has
/// a couple of minutes over the consumer's allowed deliveries to catch up.
fn early_retry_delay(delivered: u64) -> Duration {
    Duration::from_millis(500)
        .saturating_mul(u32::try_from(delivered.max(1)).unwrap_or(u32::MAX))
        .min(Duration::from_secs(10))
}

/// The order id of an event; a malformed one can never be applied, so it is
/// logged loudly and the event dropped rather than retried.
fn order_id(raw: &str) -> Option<ObjectId> {
    match ObjectId::parse_str(raw) {
        Ok(id) => Some(id),
        Err(_) => {
            tracing::error!(
                order_id = raw,
                "order event with a malformed order id; dropped"
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn early_events_wait_longer_on_each_delivery_up_to_a_cap() {
        assert_eq!(early_retry_delay(0), Duration::from_millis(500));
        assert_eq!(early_retry_delay(1), Duration::from_millis(500));
        assert_eq!(early_retry_delay(4), Duration::from_secs(2));
        assert_eq!(early_retry_delay(1_000), Duration::from_secs(10));
    }
}
