//! `order.created` → the ticket is reserved by that order (`orderId` set,
//! version + 1, `ticket.updated` with the `orderId`).

use std::time::Duration;

use async_trait::async_trait;
use common::{
    bus::{Delivery, Handled, Listener},
    events::OrderCreated,
    outbox::Outbox,
};

use crate::store::{Change, Outcome, Tickets};

/// Reserves tickets for new orders.
#[derive(Clone)]
pub struct OrderCreatedListener {
    tickets: Tickets,
    outbox: Outbox,
}

impl OrderCreatedListener {
    pub fn new(tickets: Tickets, outbox: Outbox) -> Self {
        Self { tickets, outbox }
    }
}

#[async_trait]
impl Listener for OrderCreatedListener {
    type Event = OrderCreated;

    #[tracing::instrument(name = "order_created", skip_all, fields(order_id = %event.id, ticket_id = %event.ticket.id))]
    async fn handle(&self, event: OrderCreated, delivery: &Delivery) -> anyhow::Result<Handled> {
        let Some(ticket_id) = super::ticket_id(&event.ticket.id) else {
            return Ok(Handled::Ack);
        };
        // Set when another order still holds the ticket.
        let mut held_by = None;
        let outcome = self
            .tickets
            .modify(ticket_id, |ticket| {
                held_by = None;
                Ok::<_, anyhow::Error>(match &ticket.order_id {
                    // A redelivery: already done.
                    Some(holder) if *holder == event.id => None,
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
                self.outbox.wake(ticket.id);
                tracing::info!(version = ticket.version, "ticket reserved");
                Ok(Handled::Ack)
            }
            Outcome::Unchanged(_) => match held_by {
                // Orders lets a new order in only once the previous one is
                // cancelled, so that cancel is on its way: wait for it.
                Some(holder) => {
                    let delay = wait_for_release(delivery.delivered);
                    tracing::warn!(held_by = %holder, ?delay, "ticket still reserved by another order; retrying later");
                    Ok(Handled::RetryLater(delay))
                }
                None => {
                    tracing::debug!("order already handled or already cancelled; nothing to do");
                    Ok(Handled::Ack)
                }
            },
            Outcome::Missing => {
                // Tickets owns tickets: an order for one that never existed is
                // a bad event, and waiting will not make it appear.
                tracing::error!("order.created for an unknown ticket; dropped");
                Ok(Handled::Ack)
            }
        }
    }
}

/// 1 s, 2 s, 4 s … up to a minute: long enough, over the consumer's bounded
/// deliveries, for a backlog of cancellations to drain.
fn wait_for_release(delivered: u64) -> Duration {
    let doublings = delivered.saturating_sub(1).min(6) as u32;
    Duration::from_secs(1 << doublings).min(Duration::from_secs(60))
}
