//! What orders does with the fleet's events: one [`Listener`] per subject,
//! all under the durable name `orders-service`.
//!
//! - [`tickets`]: `ticket.created` / `ticket.updated` keep the ticket replica;
//!   a withdrawal cancels the ticket's open orders; a reservation completes
//!   its order if the payment came first.
//! - [`expiration`]: `expiration.complete` cancels an order that is still open.
//! - [`payments`]: `payment.created` completes an order (or, before its
//!   reservation, records the payment so that the order no longer expires).
//!
//! `common::bus` owns the loop, the acks and the retries; a listener only
//! returns what happened once its write is durable. The events orders
//! publishes (`order.created`, `order.cancelled`) are not sent from here:
//! they are written into the changed order's outbox (see [`crate::store`]).
//! An event whose id is not an ObjectId never reaches a listener: it does
//! not decode, and the runner terminates it (`common::events`).
//!
//! [`Listener`]: common::bus::Listener

pub mod expiration;
pub mod payments;
pub mod tickets;

use common::{bus::Bus, server::Service};

pub use expiration::ExpirationCompleteListener;
pub use payments::PaymentCreatedListener;
pub use tickets::{TicketCreatedListener, TicketUpdatedListener};

use crate::store::{Orders, Tickets};

/// The durable consumer name of every orders listener.
pub const SERVICE: &str = "orders-service";

/// `service` with the four listeners.
pub fn listen(service: Service, bus: &Bus, orders: &Orders, tickets: &Tickets) -> Service {
    service
        .listen(bus, SERVICE, TicketCreatedListener::new(tickets.clone()))
        .listen(
            bus,
            SERVICE,
            TicketUpdatedListener::new(tickets.clone(), orders.clone()),
        )
        .listen(
            bus,
            SERVICE,
            ExpirationCompleteListener::new(orders.clone()),
        )
        .listen(
            bus,
            SERVICE,
            PaymentCreatedListener::new(orders.clone(), tickets.clone()),
        )
}
