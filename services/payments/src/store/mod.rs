//! The service's documents and the queries on them.
//!
//! - [`orders`]: the replica of the orders it may charge for, fed by
//!   `order.created` / `order.cancelled`.
//! - [`payments`]: one payment per order (unique index), each written together
//!   with its `payment.created` event (the outbox).

pub mod orders;
pub mod payments;

pub use orders::{Order, Orders, VersionedUpdate};
pub use payments::{InsertError, Payment, Payments};
