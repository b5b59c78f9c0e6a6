//! What tickets does when orders change: a new order reserves its ticket, a
//! cancelled order releases it, a paid order's ticket is sold.
//!
//! Each listener is only the business rule; `common::bus` runs the durable
//! consumer (`tickets-service-order-created`, `tickets-service-order-cancelled`),
//! the acks and the retries. A listener answers [`Handled::Ack`] only once
//! its write — and the `ticket.updated` in that same write's outbox — is in
//! the database, so acking never loses the event it causes.
//!
//! Both listeners are idempotent (delivery is at least once) and tolerate
//! the two subjects arriving out of order, see [`crate::store`] on cancelled
//! orders.
//!
//! [`Handled::Ack`]: common::bus::Handled::Ack

pub mod order_cancelled;
pub mod order_created;
pub mod payment_created;

pub use order_cancelled::OrderCancelledListener;
pub use order_created::OrderCreatedListener;
pub use payment_created::PaymentCreatedListener;

/// The durable consumer name of the tickets service (DESIGN §2).
///
/// An event whose ticket id is not an ObjectId never reaches a listener: it
/// does not decode, and the runner terminates it (`common::events`).
pub const SERVICE: &str = "tickets-service";
