//! `ticket.created` and `ticket.updated`: the ticket replica, the
//! cancellation of orders for a ticket its seller withdrew, and the
//! completion of an order paid before its reservation reached the replica
//! (see [`super::payments`]).
//!
//! A ticket's events can arrive twice (redelivery) or out of order (two
//! consumers, NAK delays). The replica stays right because every write is
//! conditional (see [`crate::store::tickets`]): a second `ticket.created` hits
//! the unique `_id` and is acked; a `ticket.updated` applies only on top of
//! its predecessor — a duplicate is acked, an early one is retried later
//! (`Handled::Early`: the runner's delay grows with each delivery) until its
//! predecessor is in.

use common::{
    bus::{Delivery, Handled, Listener},
    events::{TicketCreated, TicketUpdated, parse_id},
};

use crate::store::{Orders, Ticket, Tickets, VersionedUpdate};

/// Inserts new tickets into the replica.
pub struct TicketCreatedListener {
    tickets: Tickets,
}

impl TicketCreatedListener {
    pub fn new(tickets: Tickets) -> Self {
        Self { tickets }
    }
}

impl Listener for TicketCreatedListener {
    type Event = TicketCreated;

    #[tracing::instrument(skip_all, fields(ticket_id = %event.id, version = event.version))]
    async fn handle(&self, event: TicketCreated, _: &Delivery) -> anyhow::Result<Handled> {
        let id = parse_id("id", &event.id)?;
        let ticket = Ticket {
            id,
            title: event.title,
            price: event.price,
            version: event.version,
            withdrawn: false,
            reserved_for: Some(None),
        };
        if self.tickets.insert(&ticket).await? {
            tracing::info!("ticket replicated");
        } else {
            tracing::debug!("ticket already replicated; duplicate acked");
        }
        Ok(Handled::Ack)
    }
}

/// Applies ticket updates in version order; on a withdrawal, cancels the
/// ticket's open orders.
pub struct TicketUpdatedListener {
    tickets: Tickets,
    orders: Orders,
}

impl TicketUpdatedListener {
    pub fn new(tickets: Tickets, orders: Orders) -> Self {
        Self { tickets, orders }
    }

    /// A withdrawal (`withdrawn: true`) applied to the replica, now or by an
    /// earlier delivery that may have stopped before this step: cancels the
    /// orders the ticket never reserved (idempotent).
    async fn cancel_orders_if_withdrawn(&self, ticket: &Ticket) -> anyhow::Result<()> {
        if ticket.withdrawn {
            let cancelled = self.orders.cancel_for_withdrawn_ticket(ticket.id).await?;
            tracing::info!(cancelled, "ticket withdrawn by its seller");
        }
        Ok(())
    }

    /// What an applied update (now, or by an earlier delivery that may have
    /// stopped before this step) settles for the orders: a withdrawal
    /// cancels the orders the ticket never reserved; a reservation completes
    /// its order if the order's payment came first. Idempotent.
    async fn settle_orders(&self, ticket: &Ticket) -> anyhow::Result<()> {
        self.cancel_orders_if_withdrawn(ticket).await?;
        if let Some(Some(order)) = ticket.reserved_for {
            super::payments::complete_if_paid(&self.orders, order).await?;
        }
        Ok(())
    }
}

impl Listener for TicketUpdatedListener {
    type Event = TicketUpdated;

    #[tracing::instrument(skip_all, fields(ticket_id = %event.id, version = event.version))]
    async fn handle(&self, event: TicketUpdated, delivery: &Delivery) -> anyhow::Result<Handled> {
        let id = parse_id("id", &event.id)?;
        let reserved_for = match event.order_id.as_deref() {
            Some(order) => Some(parse_id("orderId", order)?),
            None => None,
        };
        let ticket = Ticket {
            id,
            title: event.title,
            price: event.price,
            version: event.version,
            withdrawn: event.withdrawn,
            reserved_for: Some(reserved_for),
        };
        Ok(match self.tickets.apply_update(&ticket).await? {
            VersionedUpdate::Applied => {
                tracing::info!("ticket update applied");
                self.settle_orders(&ticket).await?;
                Handled::Ack
            }
            VersionedUpdate::Duplicate => {
                tracing::debug!("ticket update already applied; duplicate acked");
                self.settle_orders(&ticket).await?;
                Handled::Ack
            }
            VersionedUpdate::Early => {
                tracing::info!(
                    delivered = delivery.delivered,
                    "ticket update arrived before its predecessor; retrying later"
                );
                Handled::Early
            }
        })
    }
}
