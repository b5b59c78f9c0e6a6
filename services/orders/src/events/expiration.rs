//! `expiration.complete`: the reservation window of an order is over.
//!
//! An order that is neither paid nor cancelled is cancelled — through
//! [`Orders::cancel`], exactly as the buyer's `DELETE` does, so the ticket is
//! released and `order.cancelled` goes out via the outbox. A paid order
//! (complete, or its payment recorded before its reservation: see
//! [`super::payments`]), an already cancelled or an unknown one is left
//! alone.

use common::{
    bus::{Delivery, Handled, Listener},
    events::{ExpirationComplete, parse_id},
};

use crate::store::{Cancellation, Orders};

/// Cancels orders whose time is up.
pub struct ExpirationCompleteListener {
    orders: Orders,
}

impl ExpirationCompleteListener {
    pub fn new(orders: Orders) -> Self {
        Self { orders }
    }
}

impl Listener for ExpirationCompleteListener {
    type Event = ExpirationComplete;

    #[tracing::instrument(skip_all, fields(order_id = %event.order_id))]
    async fn handle(&self, event: ExpirationComplete, _: &Delivery) -> anyhow::Result<Handled> {
        let id = parse_id("orderId", &event.order_id)?;
        let Some(order) = self.orders.find(id).await? else {
            tracing::warn!("expiration of an unknown order; ignored");
            return Ok(Handled::Ack);
        };
        match self.orders.cancel(order).await? {
            Cancellation::Cancelled(_) => tracing::info!("order expired and cancelled"),
            Cancellation::AlreadyCancelled(_) => {
                tracing::debug!("expired order was already cancelled")
            }
            Cancellation::Complete(_) => tracing::debug!("expired order is paid; kept"),
            Cancellation::NotFound => tracing::warn!("expired order vanished; ignored"),
        }
        Ok(Handled::Ack)
    }
}
