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

use common::{
    bus::{Delivery, Handled, Listener},
    events::{OrderCancelled, OrderCreated, parse_id},
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

impl Listener for OrderCreatedListener {
    type Event = OrderCreated;

    #[tracing::instrument(skip_all, fields(order_id = %event.id, version = event.version))]
    async fn handle(&self, event: OrderCreated, _delivery: &Delivery) -> anyhow::Result<Handled> {
        let id = parse_id("id", &event.id)?;
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

impl Listener for OrderCancelledListener {
    type Event = OrderCancelled;

    #[tracing::instrument(skip_all, fields(order_id = %event.id, version = event.version))]
    async fn handle(&self, event: OrderCancelled, delivery: &Delivery) -> anyhow::Result<Handled> {
        let id = parse_id("id", &event.id)?;
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
            VersionedUpdate::Early => {
                tracing::debug!(
                    delivered = delivery.delivered,
                    "order.cancelled ahead of the replica; retrying later"
                );
                Handled::Early
            }
        })
    }
}
