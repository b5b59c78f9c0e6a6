//! The service's documents and the queries on them.
//!
//! - [`orders`]: the replica of the orders it may charge for, fed by
//!   `order.created` / `order.cancelled`.
//! - [`payments`]: one payment per order, ever (unique index), holding the
//!   order's PaymentIntent; success is written together with its
//!   `payment.created` event (the outbox). Also the Stripe events handled.

pub mod orders;
pub mod payments;

pub use orders::{Order, Orders, VersionedUpdate};
pub use payments::{Payment, PaymentStatus, Payments};
