//! The documents orders keeps and the queries on them.
//!
//! - [`tickets`]: the local replica of the tickets service's tickets, kept
//!   from `ticket.created` / `ticket.updated` (DESIGN §4 version rule).
//! - [`orders`]: the orders themselves, with the unique index that lets
//!   exactly one order hold a ticket, and the compare-and-set transitions
//!   (cancel, complete) that write their events into the same document's
//!   outbox.

pub mod orders;
pub mod tickets;

pub use orders::{Cancellation, Completion, CreateError, Order, Orders};
pub use tickets::{Ticket, Tickets, UpdateOutcome};
