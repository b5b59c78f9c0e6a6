//! `payment.created`: an order was paid, so it is `complete`.
//!
//! Idempotent: a redelivery finds it complete and acks. Payments refuses to
//! charge a cancelled order, so a payment for one can only come from a race
//! (the order expired while the charge was in flight); the order stays
//! cancelled — its ticket may already be someone else's — and the case is
//! logged as an error for a human to refund.
//!
//! An open order completes only once the replica shows that tickets
//! reserved its ticket for it (`orderId` of the ticket's last
//! `ticket.updated`), since tickets may still refuse the reservation because
//! the seller withdrew the ticket first. A payment that comes before the
//! reservation is recorded on the order ([`Orders::record_payment`]), so
//! that the order no longer expires — the buyer paid in time — and the
//! reservation completes it when it reaches the replica
//! ([`complete_if_paid`], called by the `ticket.updated` listener). Each
//! side writes, then reads what the other writes, so at least one of them
//! sees both. A payment for an open order whose ticket the replica knows
//! withdrawn cancels the order instead (with the withdrawal's reason), and
//! payments refunds the money when the `order.cancelled` reaches it.

use common::{
    bus::{Delivery, Handled, Listener},
    events::{PaymentCreated, parse_id},
};
use mongodb::bson::oid::ObjectId;

use crate::store::{Cancellation, Completion, Order, Orders, Tickets};

/// Completes paid orders.
pub struct PaymentCreatedListener {
    orders: Orders,
    tickets: Tickets,
}

impl PaymentCreatedListener {
    pub fn new(orders: Orders, tickets: Tickets) -> Self {
        Self { orders, tickets }
    }
}

/// What the replica says of an order's ticket.
enum Reservation {
    /// Reserved for the order (or a replica from before orders kept the
    /// reservation, which cannot tell: such an order completes as it used to).
    Reserved,
    /// Withdrawn by its seller: tickets will never reserve it.
    Withdrawn,
    /// Not (yet) reserved for the order.
    NotYet,
}

impl PaymentCreatedListener {
    async fn reservation(&self, order: &Order) -> anyhow::Result<Reservation> {
        let ticket = self.tickets.find(order.ticket_id).await?;
        Ok(match ticket {
            Some(ticket) if ticket.withdrawn => Reservation::Withdrawn,
            Some(ticket) if ticket.reserved_by(order.id) == Some(false) => Reservation::NotYet,
            _ => Reservation::Reserved,
        })
    }

    /// The order of a payment that came before its reservation: recorded,
    /// then the replica read again. `None` when nothing more is to be done.
    async fn record(&self, order: Order, payment_id: &str) -> anyhow::Result<Option<Order>> {
        let Some(order) = self.orders.record_payment(order, payment_id).await? else {
            tracing::error!("paid order vanished; ignored");
            return Ok(None);
        };
        if !order.status.is_open() {
            return Ok(Some(order));
        }
        Ok(match self.reservation(&order).await? {
            Reservation::Reserved => Some(order),
            Reservation::Withdrawn => {
                self.cancel_withdrawn(order).await?;
                None
            }
            Reservation::NotYet => {
                tracing::info!(
                    "paid before the replica shows the ticket reserved for the order; it completes when the reservation arrives"
                );
                None
            }
        })
    }

    async fn cancel_withdrawn(&self, order: Order) -> anyhow::Result<()> {
        if let Cancellation::Cancelled(_) = self.orders.cancel_withdrawn(order).await? {
            tracing::warn!(
                "payment for an order whose ticket was withdrawn; order cancelled, payments refunds it"
            );
        }
        Ok(())
    }
}

impl Listener for PaymentCreatedListener {
    type Event = PaymentCreated;

    #[tracing::instrument(skip_all, fields(order_id = %event.order_id, payment_id = %event.id, stripe_id = %event.stripe_id))]
    async fn handle(&self, event: PaymentCreated, _: &Delivery) -> anyhow::Result<Handled> {
        let id = parse_id("orderId", &event.order_id)?;
        let Some(mut order) = self.orders.find(id).await? else {
            tracing::error!("payment for an unknown order; ignored");
            return Ok(Handled::Ack);
        };
        if order.status.is_open() {
            match self.reservation(&order).await? {
                Reservation::Reserved => {}
                Reservation::Withdrawn => {
                    self.cancel_withdrawn(order).await?;
                    return Ok(Handled::Ack);
                }
                Reservation::NotYet => match self.record(order, &event.id).await? {
                    Some(recorded) => order = recorded,
                    None => return Ok(Handled::Ack),
                },
            }
        }
        match self.orders.complete(order).await? {
            Completion::Completed(_) => tracing::info!("order paid"),
            Completion::AlreadyComplete(_) => tracing::debug!("order was already complete"),
            Completion::Cancelled(_) => tracing::error!(
                "payment for a cancelled order; the order stays cancelled and the charge needs a refund"
            ),
            Completion::NotFound => tracing::error!("paid order vanished; ignored"),
        }
        Ok(Handled::Ack)
    }
}

/// Completes `order_id` if its payment was recorded before its reservation
/// ([`Orders::record_payment`]): the `ticket.updated` listener calls it
/// once the replica shows the ticket reserved for the order.
pub async fn complete_if_paid(orders: &Orders, order_id: ObjectId) -> anyhow::Result<()> {
    let Some(order) = orders.find(order_id).await? else {
        return Ok(());
    };
    if !order.status.is_open() || order.payment_id.is_none() {
        return Ok(());
    }
    if let Completion::Completed(order) = orders.complete(order).await? {
        tracing::info!(order_id = %order.id, "order paid before its reservation; complete now");
    }
    Ok(())
}
