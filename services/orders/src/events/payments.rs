//! `payment.created`: an order was paid, so it is `complete`.
//!
//! Idempotent: a redelivery finds it complete and acks. Payments refuses to
//! charge a cancelled order, so a payment for one can only come from a race
//! (the order expired while the charge was in flight); the order stays
//! cancelled — its ticket may already be someone else's — and the case is
//! logged as an error for a human to refund.

use async_trait::async_trait;
use common::{
    bus::{Delivery, Handled, Listener},
    events::PaymentCreated,
};

use super::object_id;
use crate::store::{Completion, Orders};

/// Completes paid orders.
pub struct PaymentCreatedListener {
    orders: Orders,
}

impl PaymentCreatedListener {
    pub fn new(orders: Orders) -> Self {
        Self { orders }
    }
}

#[async_trait]
impl Listener for PaymentCreatedListener {
    type Event = PaymentCreated;

    #[tracing::instrument(skip_all, fields(order_id = %event.order_id, payment_id = %event.id))]
    async fn handle(&self, event: PaymentCreated, _: &Delivery) -> anyhow::Result<Handled> {
        let Some(id) = object_id("orderId", &event.order_id) else {
            return Ok(Handled::Ack);
        };
        let Some(order) = self.orders.find(id).await? else {
            tracing::error!(stripe_id = %event.stripe_id, "payment for an unknown order; ignored");
            return Ok(Handled::Ack);
        };
        match self.orders.complete(order).await? {
            Completion::Completed(_) => tracing::info!("order paid"),
            Completion::AlreadyComplete(_) => tracing::debug!("order was already complete"),
            Completion::Cancelled(_) => tracing::error!(
                stripe_id = %event.stripe_id,
                "payment for a cancelled order; the order stays cancelled and the charge needs a refund"
            ),
            Completion::NotFound => {
                tracing::error!(stripe_id = %event.stripe_id, "paid order vanished; ignored")
            }
        }
        Ok(Handled::Ack)
    }
}
