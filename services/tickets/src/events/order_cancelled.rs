//! `order.cancelled` → the ticket is for sale again, but only if it is this
//! order that reserves it (`orderId` cleared, version + 1, `ticket.updated`).
//!
//! A stale cancel — of an order that no longer, or not yet, holds the ticket —
//! never releases a ticket reserved by another order. It is remembered on
//! the ticket, without a new version or an event, so that the order's own
//! `order.created`, if it is still to come, does not reserve the ticket.

use common::{
    bus::{Delivery, Handled, Listener},
    events::{OrderCancelled, parse_id},
};

use crate::store::{Change, Outcome, Tickets};

/// Releases tickets of cancelled orders.
#[derive(Clone)]
pub struct OrderCancelledListener {
    tickets: Tickets,
}

impl OrderCancelledListener {
    pub fn new(tickets: Tickets) -> Self {
        Self { tickets }
    }
}

impl Listener for OrderCancelledListener {
    type Event = OrderCancelled;

    #[tracing::instrument(name = "order_cancelled", skip_all, fields(order_id = %event.id, ticket_id = %event.ticket.id))]
    async fn handle(&self, event: OrderCancelled, _delivery: &Delivery) -> anyhow::Result<Handled> {
        let ticket_id = parse_id("ticket.id", &event.ticket.id)?;
        // Set when this cancel releases the ticket (as opposed to a stale one).
        let mut releases = false;
        let outcome = self
            .tickets
            .modify(ticket_id, |ticket| {
                releases = ticket.order_id.as_deref() == Some(event.id.as_str());
                let order_id = event.id.clone();
                Ok::<_, anyhow::Error>(if releases {
                    Some(Change::Release { order_id })
                } else if ticket.was_cancelled(&event.id) {
                    None // a redelivery
                } else {
                    // Stale, or ahead of its order.created: remember only.
                    Some(Change::ForgetOrder { order_id })
                })
            })
            .await?;
        match outcome {
            Outcome::Changed(ticket) if releases => {
                tracing::info!(version = ticket.version, "ticket released");
            }
            Outcome::Changed(ticket) => tracing::info!(
                holder = ticket.order_id.as_deref().unwrap_or("<none>"),
                "cancel of an order that does not hold the ticket; remembered, ticket unchanged"
            ),
            Outcome::Unchanged(_) => tracing::debug!("cancel already handled"),
            Outcome::Missing => {
                return Ok(Handled::Invalid(
                    "order.cancelled for a ticket tickets never had",
                ));
            }
        }
        Ok(Handled::Ack)
    }
}
