//! `payment.created` → the ticket its order reserves is sold (`sold`, shown
//! as `status: sold` in the seller's own list).
//!
//! Bookkeeping only: no new version and no event, since nothing the fleet
//! reads changes (the ticket stays reserved by its paid order for good).
//! The payment names the order, not the ticket, so the ticket is found by
//! its `orderId`. A payment can arrive before its `order.created` has
//! reserved the ticket (the two subjects are consumed independently): it is
//! early ([`Handled::Early`], the runner's one growing delay) for a few
//! deliveries, then dropped with a warning (the order was then never the
//! ticket's: cancelled, or for a withdrawn ticket).

use common::{
    bus::{Delivery, Handled, Listener},
    events::PaymentCreated,
};

use crate::store::{Change, Outcome, Tickets};

/// How many deliveries a payment waits for its order to reserve a ticket
/// (with the default early delay, about 15 s in all).
const WAIT_FOR_RESERVATION: u64 = 6;

/// Marks tickets sold when their order is paid.
#[derive(Clone)]
pub struct PaymentCreatedListener {
    tickets: Tickets,
}

impl PaymentCreatedListener {
    pub fn new(tickets: Tickets) -> Self {
        Self { tickets }
    }
}

impl Listener for PaymentCreatedListener {
    type Event = PaymentCreated;

    #[tracing::instrument(name = "payment_created", skip_all, fields(order_id = %event.order_id, payment_id = %event.id))]
    async fn handle(&self, event: PaymentCreated, delivery: &Delivery) -> anyhow::Result<Handled> {
        let Some(ticket) = self.tickets.find_by_order(&event.order_id).await? else {
            if delivery.delivered < WAIT_FOR_RESERVATION {
                tracing::info!(
                    delivered = delivery.delivered,
                    "no ticket reserved by the paid order yet; retrying later"
                );
                return Ok(Handled::Early);
            }
            tracing::warn!("no ticket is reserved by the paid order; nothing to mark sold");
            return Ok(Handled::Ack);
        };
        let order_id = event.order_id.clone();
        let outcome =
            self.tickets
                .modify(ticket.id, |ticket| {
                    Ok::<_, anyhow::Error>(
                        (!ticket.sold && ticket.order_id.as_deref() == Some(order_id.as_str()))
                            .then(|| Change::MarkSold {
                                order_id: order_id.clone(),
                            }),
                    )
                })
                .await?;
        match outcome {
            Outcome::Changed(ticket) => tracing::info!(ticket_id = %ticket.id, "ticket sold"),
            Outcome::Unchanged(_) | Outcome::Missing => tracing::debug!("already sold"),
        }
        Ok(Handled::Ack)
    }
}
