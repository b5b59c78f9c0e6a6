//! What expiration consumes: `order.created` ([`order_created`]). It publishes
//! `expiration.complete` from the [`crate::scheduler`], not from a listener.

pub mod order_created;
