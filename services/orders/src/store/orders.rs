//! The `orders` collection.
//!
//! ```text
//! {_id, userId, status, expiresAt (date), version, ticketId, activeTicketId?, activeSlot?, outbox: [...]}
//! ```
//!
//! # One order per ticket
//!
//! `activeTicketId` is a copy of `ticketId` that exists only while the order
//! holds its ticket (`created`, `awaiting:payment`, `complete`); cancelling
//! `$unset`s it. A unique *sparse* index on it lets the database itself refuse
//! a second order for a held ticket: when many buyers race, every insert is
//! tried and exactly one succeeds — there is no check-then-insert window like
//! the original's. Documents without the field (cancelled orders) are not in
//! the index, so a released ticket can be ordered again, any number of times.
//!
//! # At most N active orders per user
//!
//! The same device bounds how many orders a user holds in `created` or
//! `awaiting:payment` (`MAX_ACTIVE_ORDERS_PER_USER`): an active order holds
//! one of its buyer's N slots, `activeSlot: "<userId>:<n>"` for an `n` below
//! N, under a unique sparse index. A new order reads which slots are taken
//! and tries to insert itself into each free one in turn; a duplicate key on
//! the slot means another order took it meanwhile, and the next slot is
//! tried. When every slot is taken, the order is refused. However many orders
//! one user sends at once, the index lets at most N of them in. Cancelling
//! and completing `$unset` the slot in the same write as the status, so a
//! slot is never leaked by a crash between two writes. (Orders written
//! before the slots existed hold none and are not counted.)
//!
//! # Transitions and their events
//!
//! Every change bumps `version` and is a compare-and-set on the version read
//! (DESIGN §4); a lost race re-reads and decides again. The event a change
//! causes (`order.created`, `order.cancelled`) is pushed into the same
//! document's `outbox` in the same write (see [`common::outbox`]), and the
//! relay is woken right after, so the event is published at once — or, after
//! a crash, by the relay's next scan.

use anyhow::{Context as _, bail};
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use mongodb::{
    Collection, Database, IndexModel,
    bson::{self, Document, doc, oid::ObjectId},
    options::{IndexOptions, ReturnDocument},
};
use serde::{Deserialize, Serialize};

use common::{
    events::{OrderCancelled, OrderCreated, OrderStatus, OrderTicket, TicketRef},
    money::Money,
    outbox::{self, Outbox, OutboxEvent},
};

/// The collection's name (the outbox relay reads it too).
pub const COLLECTION: &str = "orders";

/// The field that marks an order as holding its ticket.
const ACTIVE_TICKET: &str = "activeTicketId";

/// The field that marks an order as holding one of its buyer's slots.
const ACTIVE_SLOT: &str = "activeSlot";

/// How many times a transition re-reads after losing a compare-and-set before
/// it gives up. Each loss means someone else changed the order, and an order
/// only changes a few times in its life, so this is never reached in practice.
const CAS_ATTEMPTS: usize = 8;

/// The `n`-th active-order slot of `user_id`.
fn slot_key(user_id: &str, n: u32) -> String {
    format!("{user_id}:{n}")
}

/// A stored order (without its outbox and marker, which only the store uses).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Order {
    #[serde(rename = "_id")]
    pub id: ObjectId,
    /// The buyer (the session's user id).
    pub user_id: String,
    pub status: OrderStatus,
    /// When the reservation ends; milliseconds, like every BSON date.
    pub expires_at: bson::DateTime,
    /// 0 when created, +1 on every change.
    pub version: i64,
    pub ticket_id: ObjectId,
}

impl Order {
    /// A new order of `user_id` for `ticket_id`, expiring at `expires_at`
    /// (truncated to the millisecond, as the database stores it).
    pub fn new(user_id: &str, ticket_id: ObjectId, expires_at: DateTime<Utc>) -> Self {
        Self {
            id: ObjectId::new(),
            user_id: user_id.to_owned(),
            status: OrderStatus::Created,
            expires_at: bson::DateTime::from_millis(expires_at.timestamp_millis()),
            version: 0,
            ticket_id,
        }
    }

    /// `expires_at` as a chrono timestamp.
    pub fn expires_at(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(self.expires_at.timestamp_millis()).unwrap_or_default()
    }

    /// Whether the order holds its ticket (and so carries the marker).
    fn holds_ticket(&self) -> bool {
        self.status != OrderStatus::Cancelled
    }
}

/// Why an order could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// Another order holds the ticket (the unique index said no).
    #[error("the ticket is already reserved")]
    TicketReserved,
    /// The buyer holds as many active orders as allowed.
    #[error("the buyer holds too many active orders")]
    TooManyActive,
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// What [`Orders::cancel`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Cancellation {
    /// Cancelled now; `order.cancelled` is in its outbox.
    Cancelled(Order),
    /// It was cancelled before: nothing changed, no new event.
    AlreadyCancelled(Order),
    /// It is paid and cannot be cancelled.
    Complete(Order),
    /// There is no such order.
    NotFound,
}

/// What [`Orders::complete`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Completion {
    /// Marked complete now.
    Completed(Order),
    /// It was complete before: nothing changed.
    AlreadyComplete(Order),
    /// It is cancelled; a cancelled order stays cancelled.
    Cancelled(Order),
    /// There is no such order.
    NotFound,
}

/// The orders collection, its queries and transitions.
#[derive(Clone)]
pub struct Orders {
    orders: Collection<Order>,
    outbox: Outbox,
}

impl Orders {
    /// `outbox` is woken after every write that leaves an event behind.
    pub fn new(db: &Database, outbox: Outbox) -> Self {
        Self {
            orders: db.collection(COLLECTION),
            outbox,
        }
    }

    /// The collection untyped, for the outbox relay.
    pub fn raw_collection(db: &Database) -> Collection<Document> {
        db.collection(COLLECTION)
    }

    /// The index that allows one active order per ticket, and the one behind
    /// "my orders, newest first". Idempotent.
    pub async fn ensure_indexes(&self) -> mongodb::error::Result<()> {
        let one_per_ticket = IndexModel::builder()
            .keys(doc! { ACTIVE_TICKET: 1 })
            .options(
                IndexOptions::builder()
                    .unique(true)
                    .sparse(true)
                    .name("one_active_order_per_ticket".to_owned())
                    .build(),
            )
            .build();
        let one_per_slot = IndexModel::builder()
            .keys(doc! { ACTIVE_SLOT: 1 })
            .options(
                IndexOptions::builder()
                    .unique(true)
                    .sparse(true)
                    .name("active_orders_per_user".to_owned())
                    .build(),
            )
            .build();
        let by_user = IndexModel::builder()
            .keys(doc! { "userId": 1, "_id": -1 })
            .options(
                IndexOptions::builder()
                    .name("orders_by_user".to_owned())
                    .build(),
            )
            .build();
        self.orders
            .create_indexes([one_per_ticket, one_per_slot, by_user])
            .await?;
        Ok(())
    }

    pub async fn find(&self, id: ObjectId) -> mongodb::error::Result<Option<Order>> {
        self.orders.find_one(doc! { "_id": id }).await
    }

    /// The user's orders, newest first.
    pub async fn for_user(&self, user_id: &str) -> mongodb::error::Result<Vec<Order>> {
        self.orders
            .find(doc! { "userId": user_id })
            .sort(doc! { "_id": -1 })
            .await?
            .try_collect()
            .await
    }

    /// Inserts a new order with `order.created` in its outbox, in one write,
    /// in one of its buyer's `max_active` slots (see the module docs).
    /// `price` is the ticket's price as the order saw it.
    pub async fn create(
        &self,
        order: &Order,
        price: Money,
        max_active: u32,
    ) -> Result<(), CreateError> {
        let event = OrderCreated {
            id: order.id.to_hex(),
            version: order.version,
            status: order.status,
            user_id: order.user_id.clone(),
            expires_at: order.expires_at(),
            ticket: OrderTicket {
                id: order.ticket_id.to_hex(),
                price,
            },
        };
        let mut document = bson::to_document(order).context("failed to encode an order")?;
        if order.holds_ticket() {
            document.insert(ACTIVE_TICKET, order.ticket_id);
        }
        document.insert(outbox::FIELD, vec![OutboxEvent::of(&event)?.to_bson()?]);
        let taken = self.taken_slots(&order.user_id).await?;
        let documents = self.orders.clone_with_type::<Document>();
        for slot in (0..max_active)
            .map(|n| slot_key(&order.user_id, n))
            .filter(|slot| !taken.contains(slot))
        {
            document.insert(ACTIVE_SLOT, &slot);
            match documents.insert_one(&document).await {
                Ok(_) => {
                    self.outbox.wake(order.id);
                    return Ok(());
                }
                Err(e) if common::mongo::is_duplicate_key(&e) => {
                    // The ticket's index or the slot's: if the ticket is
                    // held, no slot will help.
                    if self.ticket_held(order.ticket_id).await? {
                        return Err(CreateError::TicketReserved);
                    }
                }
                Err(e) => {
                    return Err(anyhow::Error::new(e)
                        .context("failed to insert an order")
                        .into());
                }
            }
        }
        if self.ticket_held(order.ticket_id).await? {
            return Err(CreateError::TicketReserved);
        }
        Err(CreateError::TooManyActive)
    }

    /// The slots the user's active orders hold now.
    async fn taken_slots(&self, user_id: &str) -> anyhow::Result<Vec<String>> {
        let held: Vec<Document> = self
            .orders
            .clone_with_type::<Document>()
            .find(doc! { "userId": user_id, ACTIVE_SLOT: { "$exists": true } })
            .projection(doc! { ACTIVE_SLOT: 1 })
            .await
            .context("failed to read the buyer's active orders")?
            .try_collect()
            .await
            .context("failed to read the buyer's active orders")?;
        Ok(held
            .iter()
            .filter_map(|d| d.get_str(ACTIVE_SLOT).ok().map(str::to_owned))
            .collect())
    }

    /// Whether an order holds the ticket.
    async fn ticket_held(&self, ticket_id: ObjectId) -> anyhow::Result<bool> {
        Ok(self
            .orders
            .clone_with_type::<Document>()
            .find_one(doc! { ACTIVE_TICKET: ticket_id })
            .projection(doc! { "_id": 1 })
            .await
            .context("failed to read the ticket's order")?
            .is_some())
    }

    /// Cancels `order` unless it is complete: status `cancelled`, the ticket
    /// released (marker unset), version + 1, and `order.cancelled` in the
    /// outbox — one compare-and-set on the version. Both the buyer's `DELETE`
    /// and `expiration.complete` cancel through here.
    pub async fn cancel(&self, mut order: Order) -> anyhow::Result<Cancellation> {
        for _ in 0..CAS_ATTEMPTS {
            match order.status {
                OrderStatus::Cancelled => return Ok(Cancellation::AlreadyCancelled(order)),
                OrderStatus::Complete => return Ok(Cancellation::Complete(order)),
                OrderStatus::Created | OrderStatus::AwaitingPayment => {}
            }
            let event = OrderCancelled {
                id: order.id.to_hex(),
                version: order.version + 1,
                ticket: TicketRef {
                    id: order.ticket_id.to_hex(),
                },
            };
            let update = doc! {
                "$set": { "status": OrderStatus::Cancelled.as_str(), "version": event.version },
                "$unset": { ACTIVE_TICKET: "", ACTIVE_SLOT: "" },
                "$push": outbox::push(&event)?,
            };
            match self.compare_and_set(&order, update).await? {
                Ok(cancelled) => {
                    self.outbox.wake(cancelled.id);
                    tracing::info!(order_id = %cancelled.id, ticket_id = %cancelled.ticket_id, version = cancelled.version, "order cancelled");
                    return Ok(Cancellation::Cancelled(cancelled));
                }
                Err(Some(fresh)) => order = fresh,
                Err(None) => return Ok(Cancellation::NotFound),
            }
        }
        bail!(
            "order {} kept changing while it was being cancelled",
            order.id
        )
    }

    /// Marks `order` paid: status `complete`, version + 1, unless it is
    /// cancelled. The ticket stays held. No event: the fleet has no consumer
    /// for it (as in the original).
    pub async fn complete(&self, mut order: Order) -> anyhow::Result<Completion> {
        for _ in 0..CAS_ATTEMPTS {
            match order.status {
                OrderStatus::Complete => return Ok(Completion::AlreadyComplete(order)),
                OrderStatus::Cancelled => return Ok(Completion::Cancelled(order)),
                OrderStatus::Created | OrderStatus::AwaitingPayment => {}
            }
            // Paid: the ticket stays held, the buyer's slot is free again.
            let update = doc! {
                "$set": { "status": OrderStatus::Complete.as_str(), "version": order.version + 1 },
                "$unset": { ACTIVE_SLOT: "" },
            };
            match self.compare_and_set(&order, update).await? {
                Ok(completed) => {
                    tracing::info!(order_id = %completed.id, version = completed.version, "order complete");
                    return Ok(Completion::Completed(completed));
                }
                Err(Some(fresh)) => order = fresh,
                Err(None) => return Ok(Completion::NotFound),
            }
        }
        bail!(
            "order {} kept changing while it was being completed",
            order.id
        )
    }

    /// Applies `update` if the order is still at the version in `order`.
    /// `Ok(updated)` on success; on a lost race `Err(Some(current))`, or
    /// `Err(None)` if the order is gone.
    async fn compare_and_set(
        &self,
        order: &Order,
        update: Document,
    ) -> anyhow::Result<Result<Order, Option<Order>>> {
        let updated = self
            .orders
            .find_one_and_update(doc! { "_id": order.id, "version": order.version }, update)
            .return_document(ReturnDocument::After)
            .await
            .with_context(|| format!("failed to update order {}", order.id))?;
        match updated {
            Some(updated) => Ok(Ok(updated)),
            None => {
                let current = self
                    .find(order.id)
                    .await
                    .with_context(|| format!("failed to re-read order {}", order.id))?;
                Ok(Err(current))
            }
        }
    }
}
