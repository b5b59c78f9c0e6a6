//! What orders does with the fleet's events: one [`Listener`] per subject,
//! all under the durable name `orders-service`.
//!
//! - [`tickets`]: `ticket.created` / `ticket.updated` keep the ticket replica.
//! - [`expiration`]: `expiration.complete` cancels an order that is still open.
//! - [`payments`]: `payment.created` completes an order.
//!
//! `common::bus` owns the loop, the acks and the retries; a listener only
//! returns what happened once its write is durable. The events orders
//! publishes (`order.created`, `order.cancelled`) are not sent from here:
//! they are written into the changed order's outbox (see [`crate::store`]).
//!
//! [`Listener`]: common::bus::Listener

pub mod expiration;
pub mod payments;
pub mod tickets;

use anyhow::Context as _;
use common::bus::{Bus, Listener};
use mongodb::bson::oid::ObjectId;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use expiration::ExpirationCompleteListener;
pub use payments::PaymentCreatedListener;
pub use tickets::{TicketCreatedListener, TicketUpdatedListener};

use crate::store::{Orders, Tickets};

/// The durable consumer name of every orders listener.
pub const SERVICE: &str = "orders-service";

/// Starts the four listeners as tasks of `tasks`; they stop on `shutdown`.
pub async fn listen(
    bus: &Bus,
    orders: &Orders,
    tickets: &Tickets,
    tasks: &mut JoinSet<anyhow::Result<()>>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    spawn(
        bus,
        TicketCreatedListener::new(tickets.clone()),
        tasks,
        shutdown,
    )
    .await?;
    spawn(
        bus,
        TicketUpdatedListener::new(tickets.clone()),
        tasks,
        shutdown,
    )
    .await?;
    spawn(
        bus,
        ExpirationCompleteListener::new(orders.clone()),
        tasks,
        shutdown,
    )
    .await?;
    spawn(
        bus,
        PaymentCreatedListener::new(orders.clone()),
        tasks,
        shutdown,
    )
    .await?;
    Ok(())
}

async fn spawn<L: Listener>(
    bus: &Bus,
    listener: L,
    tasks: &mut JoinSet<anyhow::Result<()>>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let running = bus.listen(SERVICE, listener, shutdown.clone()).await?;
    tasks.spawn(async move { running.await.context("a listener task panicked")? });
    Ok(())
}

/// The ObjectId in an event's id field. An event whose id is not one can
/// never be applied: callers log it and ack it rather than retry forever.
fn object_id(field: &str, value: &str) -> Option<ObjectId> {
    let id = ObjectId::parse_str(value).ok();
    if id.is_none() {
        tracing::error!(
            field,
            value,
            "event with an id that is not an ObjectId; dropped"
        );
    }
    id
}
