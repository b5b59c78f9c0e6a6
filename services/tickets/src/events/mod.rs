//! What tickets does when orders change: a new order reserves its ticket, a
//! cancelled order releases it.
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

pub use order_cancelled::OrderCancelledListener;
pub use order_created::OrderCreatedListener;

use mongodb::bson::oid::ObjectId;

/// The durable consumer name of the tickets service (DESIGN §2).
pub const SERVICE: &str = "tickets-service";

/// The ticket id of an event, or `None` (logged) when it is not an ObjectId:
/// such an event can never apply, so it is acknowledged and dropped.
fn ticket_id(raw: &str) -> Option<ObjectId> {
    let id = ObjectId::parse_str(raw).ok();
    if id.is_none() {
        tracing::error!(
            ticket_id = raw,
            "event names a malformed ticket id; dropped"
        );
    }
    id
}
