//! The `orders` collection.
//!
//! ```text
//! {_id, userId, status, expiresAt (date), version, ticketId, slot?,
//!  cancelReason?, paymentId?, outbox: [...]}
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
//! (DESIGN §4); a lost race re-reads and decides again, a bounded number of
//! times (`common::cas`), and running out is the fleet's one 409
//! ([`common::cas::Contended`]). The event a change
//! causes (`order.created`, `order.cancelled`) is pushed into the same
//! document's `outbox` in the same write, and the relay is woken right
//! after, so the event is published at once — or, after a crash, by the
//! relay's next scan. [`common::owned`] makes those writes: this store only
//! says what each transition changes.
//!
//! # A payment that overtakes the reservation
//!
//! A payment can reach orders before the replica shows that tickets
//! reserved the order's ticket for it (tickets was slow, or down); tickets
//! may still refuse the reservation because the seller withdrew the ticket
//! first. Such an order is not completed yet, but its payment is recorded
//! on it ([`Orders::record_payment`], `paymentId`): from then on neither the
//! clock nor the buyer can cancel it — the buyer paid in time — and only a
//! withdrawal that won does (payments then refunds). It completes when the
//! reservation reaches the replica (see `crate::events`). Recording the
//! payment is the one write that does not bump `version`: it changes
//! nothing another service follows (no event, and payments' replica applies
//! `order.cancelled` at `version − 1`), so every compare-and-set here
//! compares `paymentId` as well as `version`.

use std::collections::HashSet;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use mongodb::{
    Collection, Database, IndexModel,
    bson::{self, Document, doc, oid::ObjectId},
    options::IndexOptions,
};
use serde::{Deserialize, Serialize};

use super::holds::{self, Holds};
use common::{
    events::{OrderCancelled, OrderCreated, OrderStatus, OrderTicket, TicketRef},
    money::Money,
    outbox::Outbox,
    owned::{self, Change, Modified, Owned, Record, Step, Versioned},
};

/// The collection's name (the outbox relay reads it too).
pub const COLLECTION: &str = "orders";

/// The indexes of the design before [`super::holds`] (a unique sparse
/// index on a field of the order); dropped when found.
const RETIRED_INDEXES: [&str; 2] = ["one_active_order_per_ticket", "active_orders_per_user"];

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
    /// Why a cancelled order was cancelled, when it was not the buyer or
    /// the clock (e.g. [`WITHDRAWN`]); shown to the buyer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel_reason: Option<String>,
    /// The payment of an order still open because its payment came before
    /// its reservation (see the module docs): paid, so it no longer expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_id: Option<String>,
}

/// The reason given to the buyer of an order cancelled because the seller
/// withdrew its ticket.
pub const WITHDRAWN: &str = "The seller withdrew this ticket";

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
            cancel_reason: None,
            payment_id: None,
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

/// Who cancels an order (see [`Orders::cancel`], [`Orders::cancel_withdrawn`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    /// Its buyer (`DELETE`) or the clock (`expiration.complete`).
    BuyerOrClock,
    /// Its seller withdrew the ticket before tickets reserved it.
    Withdrawn,
}

/// What [`Orders::cancel`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Cancellation {
    /// Cancelled now; `order.cancelled` is in its outbox.
    Cancelled(Order),
    /// It was cancelled before: nothing changed, no new event.
    AlreadyCancelled(Order),
    /// It is paid — complete, or its payment recorded before its
    /// reservation ([`Orders::record_payment`]) — and cannot be cancelled.
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
    /// The same collection, for the writes of an order and its events.
    owned: Owned<Order>,
    holds: Holds,
}

impl Orders {
    /// `outbox` is woken after every write that leaves an event behind.
    pub fn new(db: &Database, outbox: Outbox) -> Self {
        let orders = db.collection(COLLECTION);
        Self {
            owned: Owned::new(orders.clone(), outbox),
            orders,
            holds: Holds::new(db, COLLECTION),
        }
    }

    /// The same store, giving a compare-and-set at most `rounds` rounds
    /// (tests use it to run out on purpose).
    pub fn with_cas_rounds(mut self, rounds: u32) -> Self {
        self.owned = self.owned.with_rounds(rounds);
        self
    }

    /// The collection untyped, for the outbox relay.
    pub fn raw_collection(db: &Database) -> Collection<Document> {
        db.collection(COLLECTION)
    }

    /// The indexes behind "my orders, newest first" and "the orders of a
    /// ticket" (the holds need none but `_id`'s). Drops the indexes of the
    /// earlier design. Idempotent.
    pub async fn ensure_indexes(&self) -> mongodb::error::Result<()> {
        for retired in RETIRED_INDEXES {
            common::mongo::drop_index_if_present(&self.orders, retired).await?;
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
        let by_ticket = IndexModel::builder()
            .keys(doc! { "ticketId": 1 })
            .options(
                IndexOptions::builder()
                    .name("orders_by_ticket".to_owned())
                    .build(),
            )
            .build();
        self.orders.create_index(by_ticket).await?;
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
        match self.owned.insert(&stored, &event).await {
            Ok(true) => Ok(()),
            // Only `_id` is unique: the order was given up (tombstoned) in
            // the meantime — it took over the grace, or its buyer asked for
            // the ticket again — and the ticket is someone's else now.
            Ok(false) => {
                self.give_back(&claimed, order.id).await;
                tracing::info!(order_id = %order.id, "order given up before it was written");
                Err(CreateError::TicketReserved)
            }
            Err(e) => {
                // The write may still have landed (a lost reply): tombstone
                // the id to know. Once it can never land, give the holds back.
                match self.holds.abandon(order.id).await {
                    Ok(true) => self.give_back(&claimed, order.id).await,
                    Ok(false) => {
                        self.owned.wake(order.id);
                        return Ok(());
                    }
                    Err(_) => {} // given back later, see the holds' docs
                }
                Err(e.context("failed to insert an order").into())
            }
        }
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

    /// Cancels `order` unless it is paid: status `cancelled`, the ticket
    /// released (marker unset), version + 1, and `order.cancelled` in the
    /// outbox — one compare-and-set on the version. Both the buyer's `DELETE`
    /// and `expiration.complete` cancel through here. An order that keeps
    /// changing past the rounds is [`common::Error::Conflict`] (409).
    pub async fn cancel(&self, order: Order) -> common::Result<Cancellation> {
        self.cancel_for(order, Cause::BuyerOrClock).await
    }

    /// Cancels `order` because its seller withdrew its ticket before tickets
    /// reserved it for the order, with the reason [`WITHDRAWN`] for the
    /// buyer — even when its payment was recorded before the reservation
    /// ([`Orders::record_payment`]): tickets never reserved the ticket, and
    /// payments refunds the money when `order.cancelled` reaches it.
    pub async fn cancel_withdrawn(&self, order: Order) -> common::Result<Cancellation> {
        self.cancel_for(order, Cause::Withdrawn).await
    }

    async fn cancel_for(&self, order: Order, cause: Cause) -> common::Result<Cancellation> {
        let id = order.id;
        let decided = self
            .owned
            .modify(
                id,
                Some(order),
                |id| self.find(id),
                |order| -> common::Result<_> {
                    match order.status {
                        OrderStatus::Cancelled => {
                            return Ok(Step::Done(Cancellation::AlreadyCancelled(order.clone())));
                        }
                        OrderStatus::Complete => {
                            return Ok(Step::Done(Cancellation::Complete(order.clone())));
                        }
                        OrderStatus::Created | OrderStatus::AwaitingPayment => {}
                    }
                    if order.payment_id.is_some() && cause == Cause::BuyerOrClock {
                        return Ok(Step::Done(Cancellation::Complete(order.clone())));
                    }
                    let event = OrderCancelled {
                        id: order.id.to_hex(),
                        version: order.version + 1,
                        ticket: TicketRef {
                            id: order.ticket_id.to_hex(),
                        },
                    };
                    let mut set = doc! { "status": OrderStatus::Cancelled.as_str() };
                    if cause == Cause::Withdrawn {
                        set.insert("cancelReason", WITHDRAWN);
                    }
                    let change = Change::announced(doc! { "$set": set }, &event)?;
                    Ok(Step::Write(same_payment(order, change)))
                },
            )
            .await?;
        Ok(match decided {
            Modified::Written(cancelled) => {
                self.give_back(&cancelled.holds(), cancelled.id).await;
                tracing::info!(order_id = %cancelled.id, ticket_id = %cancelled.ticket_id, version = cancelled.version, "order cancelled");
                Cancellation::Cancelled(cancelled)
            }
            Modified::Done(answer) => answer,
            Modified::Missing => Cancellation::NotFound,
        })
    }

    /// Cancels every order for `ticket_id` still `created` or
    /// `awaiting:payment`, with the reason [`WITHDRAWN`]: its seller withdrew
    /// the ticket before the ticket was reserved for it (a ticket reserved
    /// by an order cannot be withdrawn). How many it cancelled.
    ///
    /// Runs after the replica records the withdrawal, and an order being
    /// created reads the replica again after its insert (see
    /// `routes::orders`): each of the two writes before it reads what the
    /// other wrote, so at least one of them sees both and cancels the order.
    pub async fn cancel_for_withdrawn_ticket(&self, ticket_id: ObjectId) -> anyhow::Result<usize> {
        let active: Vec<Order> = self
            .orders
            .find(doc! {
                "ticketId": ticket_id,
                "status": { "$in": [OrderStatus::Created.as_str(), OrderStatus::AwaitingPayment.as_str()] },
            })
            .await
            .context("failed to find the orders of a ticket")?
            .try_collect()
            .await
            .context("failed to read the orders of a ticket")?;
        let paid = self
            .orders
            .count_documents(
                doc! { "ticketId": ticket_id, "status": OrderStatus::Complete.as_str() },
            )
            .await
            .context("failed to count the paid orders of a ticket")?;
        if paid > 0 {
            // Only if its payment reached orders before the withdrawal did,
            // both within the moments before tickets reserved the ticket
            // (see docs/ARCHITECTURE.md): a human must refund it.
            tracing::error!(%ticket_id, "a paid order's ticket was withdrawn; the order needs a refund");
        }
        let mut cancelled = 0;
        for order in active {
            if let Cancellation::Cancelled(order) = self.cancel_withdrawn(order).await? {
                tracing::info!(order_id = %order.id, %ticket_id, "order cancelled: its ticket was withdrawn");
                cancelled += 1;
            }
        }
        Ok(cancelled)
    }

    /// Marks `order` paid: status `complete`, version + 1, unless it is
    /// cancelled. The ticket stays held. No event: the fleet has no consumer
    /// for it (as in the original). An order that keeps changing past the
    /// rounds is [`common::Error::Conflict`].
    pub async fn complete(&self, order: Order) -> common::Result<Completion> {
        let id = order.id;
        let decided = self
            .owned
            .modify(
                id,
                Some(order),
                |id| self.find(id),
                |order| -> common::Result<_> {
                    match order.status {
                        OrderStatus::Complete => {
                            return Ok(Step::Done(Completion::AlreadyComplete(order.clone())));
                        }
                        OrderStatus::Cancelled => {
                            return Ok(Step::Done(Completion::Cancelled(order.clone())));
                        }
                        OrderStatus::Created | OrderStatus::AwaitingPayment => {}
                    }
                    let change = Change::new_version(
                        doc! { "$set": { "status": OrderStatus::Complete.as_str() } },
                    );
                    Ok(Step::Write(same_payment(order, change)))
                },
            )
            .await?;
        Ok(match decided {
            // Paid: the ticket stays held, the buyer's slot is free again.
            Modified::Written(completed) => {
                let slot: Vec<String> = completed.slot.iter().cloned().collect();
                self.give_back(&slot, completed.id).await;
                tracing::info!(order_id = %completed.id, version = completed.version, "order complete");
                Completion::Completed(completed)
            }
            Modified::Done(answer) => answer,
            Modified::Missing => Completion::NotFound,
        })
    }

    /// Records `payment_id` on `order`, still open because its payment
    /// reached orders before the replica showed its reservation (see the
    /// module docs): the clock and the buyer can no longer cancel it. No new
    /// version and no event. Returns the order as it now is — recorded, or
    /// found complete, cancelled or already recorded — or `None` if it is
    /// gone.
    pub async fn record_payment(
        &self,
        order: Order,
        payment_id: &str,
    ) -> common::Result<Option<Order>> {
        let id = order.id;
        let decided = self
            .owned
            .modify(
                id,
                Some(order),
                |id| self.find(id),
                |order| -> common::Result<_> {
                    if !order.status.is_open() || order.payment_id.is_some() {
                        return Ok(Step::Done(order.clone()));
                    }
                    let change = Change::bookkeeping(doc! { "$set": { "paymentId": payment_id } });
                    Ok(Step::Write(same_payment(order, change)))
                },
            )
            .await?;
        Ok(match decided {
            Modified::Written(recorded) => {
                tracing::info!(order_id = %recorded.id, payment_id, "payment recorded before the reservation");
                Some(recorded)
            }
            Modified::Done(order) => Some(order),
            Modified::Missing => None,
        })
    }
}

/// `change`, applying only while the order has the payment recorded that
/// `order` has: recording one does not bump the version (see the module
/// docs), so the version alone would not see it.
fn same_payment(order: &Order, change: Change) -> Change {
    change.only_if(owned::same_optional(
        "paymentId",
        order.payment_id.as_deref(),
    ))
}

impl Record for Order {
    const KIND: &'static str = "order";

    fn id(&self) -> ObjectId {
        self.id
    }
}

impl Versioned for Order {
    fn version(&self) -> i64 {
        self.version
    }
}
