//! The `orders` collection.
//!
//! ```text
//! {_id, userId, status, expiresAt (date), version, ticketId, slot?, outbox: [...]}
//! ```
//!
//! # One order per ticket, at most N active orders per user
//!
//! Both are holds in [`super::holds`]: a document whose `_id` is the ticket
//! (`ticket:<id>`) or one of the buyer's N slots (`slot:<userId>:<n>`, N =
//! `MAX_ACTIVE_ORDERS_PER_USER`). A new order claims a slot, then the
//! ticket, and only then is inserted; when many buyers race for a ticket,
//! every claim is tried and the `_id` index lets exactly one in — there is no
//! check-then-insert window like the original's. However many orders one
//! user sends at once, at most N of them get a slot. Cancelling gives both
//! back and completing gives the slot back, each right after the order's own
//! write; a crash in between leaves a hold its order no longer has, which
//! the next order that wants it gives back (see [`super::holds`]), so
//! nothing leaks and nothing is held twice. The order records its slot
//! (`slot`) so that it knows what to give back. (Orders written before the
//! holds existed hold nothing and are not counted.)
//!
//! # Transitions and their events
//!
//! Every change bumps `version` and is a compare-and-set on the version read
//! (DESIGN §4); a lost race re-reads and decides again. The event a change
//! causes (`order.created`, `order.cancelled`) is pushed into the same
//! document's `outbox` in the same write (see [`common::outbox`]), and the
//! relay is woken right after, so the event is published at once — or, after
//! a crash, by the relay's next scan.

use std::collections::HashSet;

use anyhow::{Context as _, bail};
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use mongodb::{
    Collection, Database, IndexModel,
    bson::{self, Document, doc, oid::ObjectId},
    options::{IndexOptions, ReturnDocument},
};
use serde::{Deserialize, Serialize};

use super::holds::{self, Holds};
use common::{
    events::{OrderCancelled, OrderCreated, OrderStatus, OrderTicket, TicketRef},
    money::Money,
    outbox::{self, Outbox, OutboxEvent},
};

/// The collection's name (the outbox relay reads it too).
pub const COLLECTION: &str = "orders";

/// The indexes of the design before [`super::holds`] (a unique sparse
/// index on a field of the order); dropped when found.
const RETIRED_INDEXES: [&str; 2] = ["one_active_order_per_ticket", "active_orders_per_user"];

/// How many times a transition re-reads after losing a compare-and-set before
/// it gives up. Each loss means someone else changed the order, and an order
/// only changes a few times in its life, so this is never reached in practice.
const CAS_ATTEMPTS: usize = 8;

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
    /// The buyer's slot the order holds, or held (see [`super::holds`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<String>,
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
            slot: None,
        }
    }

    /// `expires_at` as a chrono timestamp.
    pub fn expires_at(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(self.expires_at.timestamp_millis()).unwrap_or_default()
    }

    /// The holds it has in `status` (see [`super::holds`]).
    fn holds(&self) -> Vec<String> {
        std::iter::once(holds::ticket_key(self.ticket_id))
            .chain(self.slot.clone())
            .collect()
    }
}

/// Why an order could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// Another order holds the ticket.
    #[error("the ticket is already reserved")]
    TicketReserved,
    /// The buyer holds as many active orders as allowed.
    #[error("the buyer holds too many active orders")]
    TooManyActive,
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// Whether dropping an index failed only because it is not there.
fn is_missing_index(err: &mongodb::error::Error) -> bool {
    // 26 NamespaceNotFound (no collection yet), 27 IndexNotFound.
    matches!(err.kind.as_ref(), mongodb::error::ErrorKind::Command(e) if e.code == 26 || e.code == 27)
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
    holds: Holds,
    outbox: Outbox,
}

impl Orders {
    /// `outbox` is woken after every write that leaves an event behind.
    pub fn new(db: &Database, outbox: Outbox) -> Self {
        Self {
            orders: db.collection(COLLECTION),
            holds: Holds::new(db, COLLECTION),
            outbox,
        }
    }

    /// The collection untyped, for the outbox relay.
    pub fn raw_collection(db: &Database) -> Collection<Document> {
        db.collection(COLLECTION)
    }

    /// The index behind "my orders, newest first" (the holds need none
    /// but `_id`'s). Drops the indexes of the earlier design. Idempotent.
    pub async fn ensure_indexes(&self) -> mongodb::error::Result<()> {
        for retired in RETIRED_INDEXES {
            match self.orders.drop_index(retired).await {
                Ok(()) => tracing::info!(index = retired, "dropped a retired index"),
                Err(e) if is_missing_index(&e) => {}
                Err(e) => return Err(e),
            }
        }
        let by_user = IndexModel::builder()
            .keys(doc! { "userId": 1, "_id": -1 })
            .options(
                IndexOptions::builder()
                    .name("orders_by_user".to_owned())
                    .build(),
            )
            .build();
        self.orders.create_index(by_user).await?;
        Ok(())
    }

    pub async fn find(&self, id: ObjectId) -> mongodb::error::Result<Option<Order>> {
        // A tombstone (see [`super::holds`]) has no status and is no order.
        self.orders
            .find_one(doc! { "_id": id, "status": { "$exists": true } })
            .await
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

    /// Claims a slot of the buyer's `max_active` and the ticket, then
    /// inserts the order with `order.created` in its outbox, in one write
    /// (see the module docs). `price` is the ticket's price as the order
    /// saw it.
    ///
    /// It runs to its end in a task of its own, even when the request that
    /// asked for it is abandoned (the client went away, the deadline passed):
    /// stopped halfway, it would leave holds claimed for an order never
    /// written, and the buyer's retry would find the ticket reserved by
    /// nobody it can see.
    pub async fn create(
        &self,
        order: &Order,
        price: Money,
        max_active: u32,
    ) -> Result<(), CreateError> {
        let (store, order) = (self.clone(), order.clone());
        tokio::spawn(async move { store.create_to_the_end(&order, price, max_active).await })
            .await
            .map_err(|e| CreateError::Other(anyhow::anyhow!("creating an order failed: {e}")))?
    }

    async fn create_to_the_end(
        &self,
        order: &Order,
        price: Money,
        max_active: u32,
    ) -> Result<(), CreateError> {
        let ticket = holds::ticket_key(order.ticket_id);
        let Some(slot) = self.claim_slot(order, max_active).await? else {
            if self.holds.is_held(&ticket).await? {
                return Err(CreateError::TicketReserved);
            }
            return Err(CreateError::TooManyActive);
        };
        let claimed = [slot.clone(), ticket.clone()];
        match self.holds.claim(&ticket, order.id, &order.user_id).await {
            Ok(true) => {}
            Ok(false) => {
                self.give_back(&claimed[..1], order.id).await;
                return Err(CreateError::TicketReserved);
            }
            Err(e) => {
                // Not inserted: what it holds is safe to give back.
                self.give_back(&claimed, order.id).await;
                return Err(e.into());
            }
        }
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
        let stored = Order {
            slot: Some(slot),
            ..order.clone()
        };
        let mut document = bson::to_document(&stored).context("failed to encode an order")?;
        document.insert(outbox::FIELD, vec![OutboxEvent::of(&event)?.to_bson()?]);
        let inserted = self
            .orders
            .clone_with_type::<Document>()
            .insert_one(&document)
            .await;
        match inserted {
            Ok(_) => {}
            // Only `_id` is unique: the order was given up (tombstoned) in
            // the meantime — it took over the grace, or its buyer asked for
            // the ticket again — and the ticket is someone's else now.
            Err(e) if common::mongo::is_duplicate_key(&e) => {
                self.give_back(&claimed, order.id).await;
                tracing::info!(order_id = %order.id, "order given up before it was written");
                return Err(CreateError::TicketReserved);
            }
            Err(e) => {
                // The write may still have landed (a lost reply): tombstone
                // the id to know. Once it can never land, give the holds back.
                match self.holds.abandon(order.id).await {
                    Ok(true) => self.give_back(&claimed, order.id).await,
                    Ok(false) => {
                        self.outbox.wake(order.id);
                        return Ok(());
                    }
                    Err(_) => {} // given back later, see the holds' docs
                }
                return Err(anyhow::Error::new(e)
                    .context("failed to insert an order")
                    .into());
            }
        }
        self.outbox.wake(order.id);
        Ok(())
    }

    /// Claims one of the buyer's `max_active` slots for `order`, free ones
    /// first; `None` when every one is held.
    async fn claim_slot(&self, order: &Order, max_active: u32) -> anyhow::Result<Option<String>> {
        let taken: HashSet<String> = self
            .holds
            .slots_of(&order.user_id)
            .await?
            .into_iter()
            .collect();
        // Lazily: the limit may be large, and the first free slot is enough.
        let free = (0..max_active)
            .map(|n| holds::slot_key(&order.user_id, n))
            .filter(|slot| !taken.contains(slot));
        // Then the held ones within the limit: one may be stale (its order
        // gone), which claiming checks.
        let held = (0..max_active)
            .map(|n| holds::slot_key(&order.user_id, n))
            .filter(|slot| taken.contains(slot))
            .take(taken.len());
        for slot in free.chain(held) {
            if self.holds.claim(&slot, order.id, &order.user_id).await? {
                return Ok(Some(slot));
            }
        }
        Ok(None)
    }

    /// Deletes `order_id`'s holds in `keys`, best effort: a hold left
    /// behind is given back when next wanted (see [`super::holds`]).
    async fn give_back(&self, keys: &[String], order_id: ObjectId) {
        if let Err(e) = self.holds.release(keys, order_id).await {
            tracing::warn!(order_id = %order_id, error = %format!("{e:#}"), "could not give back holds; they are given back when next wanted");
        }
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
                "$push": outbox::push(&event)?,
            };
            match self.compare_and_set(&order, update).await? {
                Ok(cancelled) => {
                    self.outbox.wake(cancelled.id);
                    self.give_back(&cancelled.holds(), cancelled.id).await;
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
            };
            match self.compare_and_set(&order, update).await? {
                Ok(completed) => {
                    let slot: Vec<String> = completed.slot.iter().cloned().collect();
                    self.give_back(&slot, completed.id).await;
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
