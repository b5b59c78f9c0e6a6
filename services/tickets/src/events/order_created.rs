//! `order.created` → the ticket is reserved by that order (`orderId` set,
//! version + 1, `ticket.updated` with the `orderId`) — unless its seller
//! withdrew it first: then nothing changes, and the order, which orders let
//! in before it learnt of the withdrawal, is cancelled by orders.

use common::{
    bus::{Delivery, Handled, Listener},
    events::{OrderCreated, parse_id},
};

use crate::store::{Change, Outcome, Tickets};

/// Reserves tickets for new orders.
#[derive(Clone)]
pub struct OrderCreatedListener {
    tickets: Tickets,
}

impl OrderCreatedListener {
    pub fn new(tickets: Tickets) -> Self {
        Self { tickets }
    }
}

impl Listener for OrderCreatedListener {
    type Event = OrderCreated;

    #[tracing::instrument(name = "order_created", skip_all, fields(order_id = %event.id, ticket_id = %event.ticket.id))]
    async fn handle(&self, event: OrderCreated, delivery: &Delivery) -> anyhow::Result<Handled> {
        let ticket_id = parse_id("ticket.id", &event.ticket.id)?;
        // Set when another order still holds the ticket.
        let mut held_by = None;
        let outcome = self
            .tickets
            .modify(ticket_id, |ticket| {
                held_by = None;
                Ok::<_, anyhow::Error>(match &ticket.order_id {
                    // A redelivery: already done.
                    Some(holder) if *holder == event.id => None,
                    // The seller withdrew it first: never reserved. Orders
                    // cancels this order when it sees the withdrawal.
                    _ if ticket.withdrawn => None,
                    // Its cancel was handled first (the two subjects are
                    // consumed independently): reserving now would lock the
                    // ticket for an order that is already over.
                    _ if ticket.was_cancelled(&event.id) => None,
                    Some(holder) => {
                        held_by = Some(holder.clone());
                        None
                    }
                    None => Some(Change::Reserve {
                        order_id: event.id.clone(),
                    }),
                })
            })
            .await?;
        match outcome {
            Outcome::Changed(ticket) => {
                tracing::info!(version = ticket.version, "ticket reserved");
                Ok(Handled::Ack)
            }
            Outcome::Unchanged(_) => match held_by {
                // Orders lets a new order in only once the previous one is
                // cancelled, so that cancel is on its way: wait for it.
                Some(holder) => {
                    tracing::warn!(held_by = %holder, delivered = delivery.delivered, "ticket still reserved by another order; retrying later");
                    Ok(Handled::Early)
                }
                None => {
                    tracing::debug!("order already handled or already cancelled; nothing to do");
                    Ok(Handled::Ack)
                }
            },
            Outcome::Missing => {
                // Tickets owns tickets: an order for one that never existed is
                // a bad event, and waiting will not make it appear.
                Ok(Handled::Invalid(
                    "order.created for a ticket tickets never had",
                ))
            }
        }
    }
}
