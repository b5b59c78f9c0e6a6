//! `ticket.created` and `ticket.updated`: the ticket replica.
//!
//! A ticket's events can arrive twice (redelivery) or out of order (two
//! consumers, NAK delays). The replica stays right because every write is
//! conditional (see [`crate::store::tickets`]): a second `ticket.created` hits
//! the unique `_id` and is acked; a `ticket.updated` applies only on top of
//! its predecessor — a duplicate is acked, an early one is retried later,
//! with a delay that grows with each delivery, until its predecessor is in.

use std::time::Duration;

use async_trait::async_trait;
use common::{
    bus::{Delivery, Handled, Listener},
    events::{TicketCreated, TicketUpdated},
};

use super::object_id;
use crate::store::{Ticket, Tickets, UpdateOutcome};

/// Inserts new tickets into the replica.
pub struct TicketCreatedListener {
    tickets: Tickets,
}

impl TicketCreatedListener {
    pub fn new(tickets: Tickets) -> Self {
        Self { tickets }
    }
}

#[async_trait]
impl Listener for TicketCreatedListener {
    type Event = TicketCreated;

    #[tracing::instrument(skip_all, fields(ticket_id = %event.id, version = event.version))]
    async fn handle(&self, event: TicketCreated, _: &Delivery) -> anyhow::Result<Handled> {
        let Some(id) = object_id("id", &event.id) else {
            return Ok(Handled::Ack);
        };
        let ticket = Ticket {
            id,
            title: event.title,
            price: event.price,
            version: event.version,
        };
        if self.tickets.insert(&ticket).await? {
            tracing::info!("ticket replicated");
        } else {
            tracing::debug!("ticket already replicated; duplicate acked");
        }
        Ok(Handled::Ack)
    }
}

/// Applies ticket updates in version order.
pub struct TicketUpdatedListener {
    tickets: Tickets,
}

impl TicketUpdatedListener {
    pub fn new(tickets: Tickets) -> Self {
        Self { tickets }
    }
}

/// How long an early update waits before its next delivery: 0.5 s, doubling
/// with each delivery, at most 30 s — quick when the predecessor is just
/// behind, patient when its publisher is down (about 7 minutes over the
/// default 20 deliveries).
pub fn early_update_delay(delivered: u64) -> Duration {
    common::backoff::doubling(
        Duration::from_millis(500),
        delivered.saturating_sub(1),
        Duration::from_secs(30),
    )
}

#[async_trait]
impl Listener for TicketUpdatedListener {
    type Event = TicketUpdated;

    #[tracing::instrument(skip_all, fields(ticket_id = %event.id, version = event.version))]
    async fn handle(&self, event: TicketUpdated, delivery: &Delivery) -> anyhow::Result<Handled> {
        let Some(id) = object_id("id", &event.id) else {
            return Ok(Handled::Ack);
        };
        let ticket = Ticket {
            id,
            title: event.title,
            price: event.price,
            version: event.version,
        };
        Ok(match self.tickets.apply_update(&ticket).await? {
            UpdateOutcome::Applied => {
                tracing::info!("ticket update applied");
                Handled::Ack
            }
            UpdateOutcome::Duplicate => {
                tracing::debug!("ticket update already applied; duplicate acked");
                Handled::Ack
            }
            UpdateOutcome::Early => {
                let delay = early_update_delay(delivery.delivered);
                tracing::info!(
                    ?delay,
                    "ticket update arrived before its predecessor; retrying later"
                );
                Handled::RetryLater(delay)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn early_updates_back_off_up_to_half_a_minute() {
        let delays: Vec<u64> = (1..=8)
            .map(|n| early_update_delay(n).as_millis() as u64)
            .collect();
        assert_eq!(delays, [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000]);
        assert_eq!(early_update_delay(0), Duration::from_millis(500));
        assert_eq!(early_update_delay(u64::MAX), Duration::from_secs(30));
    }
}
