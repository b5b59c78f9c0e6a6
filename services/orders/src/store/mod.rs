//! The documents orders keeps and the queries on them.
//!
//! - [`tickets`]: the local replica of the tickets service's tickets, kept
//!   from `ticket.created` / `ticket.updated` (DESIGN §4 version rule).
//! - [`orders`]: the orders themselves, and the compare-and-set transitions
//!   (cancel, complete) that write their events into the same document's
//!   outbox.
//! - [`holds`]: what an order holds while it holds it (its ticket, one of its
//!   buyer's slots), one document per thing held, so that the `_id` index
//!   lets exactly one order hold a ticket.

pub mod holds;
pub mod orders;
pub mod tickets;

pub use orders::{Cancellation, Completion, CreateError, Order, Orders};
pub use tickets::{Ticket, Tickets, VersionedUpdate};
