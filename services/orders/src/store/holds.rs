//! The `holds` collection: what an order holds, while it holds it.
//!
//! ```text
//! {_id: "ticket:<ticketId>" | "slot:<userId>:<n>", orderId, at (date)}
//! ```
//!
//! A hold is a document whose `_id` *is* the thing held, so the `_id` index —
//! which every MongoDB-wire server keeps exactly — lets one order in and
//! refuses every other: when many buyers race for a ticket, every insert is
//! tried and exactly one succeeds, with no check-then-insert window. A hold
//! is never updated, only inserted and deleted. (Keeping the hold as a field
//! of the order under a unique sparse index, as before, needs the server to
//! drop an index key when an update unsets the field; SecantusDB's native
//! server keeps such keys, and a released ticket stayed reserved.)
//!
//! - `ticket:<id>`: held from the order's creation until it is cancelled; a
//!   paid order keeps it (the ticket is sold).
//! - `slot:<userId>:<n>`, `n` below `MAX_ACTIVE_ORDERS_PER_USER`: held while
//!   the order is `created` or `awaiting:payment`.
//!
//! # Nothing leaks, nothing is held twice
//!
//! An order claims its holds first and is inserted after; a transition
//! writes the order first and deletes the holds it gave up after. A crash in
//! between leaves a hold that no live order owns. Such a hold is given back
//! by the next order that wants it, after checking its owner:
//!
//! - the owner exists and no longer holds it (cancelled; or paid, for a
//!   slot): the hold is stale and is deleted;
//! - the owner does not exist and the hold is younger than
//!   [`CREATION_GRACE`]: its order is being inserted right now, so the hold
//!   stands — unless the same buyer asks for the same ticket again (the
//!   earlier answer was lost, or the process died): then it is given up at
//!   once, as below;
//! - the owner does not exist and the hold is older: the owner is marked
//!   *abandoned* by inserting a tombstone under its id into `orders`. If that
//!   insert wins, the owner's own insert can never succeed (same `_id`), and
//!   the hold is deleted; if it loses, the order exists after all and is
//!   judged as above.
//!
//! Every delete is conditional on the owner (`{_id, orderId}`), so a hold
//! that changed hands meanwhile is never deleted by mistake.

use std::time::Duration;

use anyhow::Context as _;
use futures::TryStreamExt;
use mongodb::{
    Collection, Database,
    bson::{self, Document, doc, oid::ObjectId},
};
use serde::{Deserialize, Serialize};

use common::{events::OrderStatus, mongo::DuplicateKey as _};

/// The collection's name.
pub const COLLECTION: &str = "holds";

/// How long a hold whose order has not appeared is taken to belong to an
/// order being inserted. An insert that has not landed by then is given up
/// (its order is tombstoned and can no longer be inserted).
pub const CREATION_GRACE: Duration = Duration::from_secs(30);

/// How many times a claim retries when the hold it met vanished or was
/// given back meanwhile. Each retry means the hold changed hands.
const CLAIM_ATTEMPTS: usize = 8;

/// The field that marks a tombstone in `orders` (see the module docs).
pub const ABANDONED: &str = "abandoned";

/// The key of the hold on a ticket.
pub fn ticket_key(ticket_id: ObjectId) -> String {
    format!("ticket:{}", ticket_id.to_hex())
}

/// The key of the `n`-th active-order slot of `user_id`.
pub fn slot_key(user_id: &str, n: u32) -> String {
    format!("{}{n}", slot_prefix(user_id))
}

fn slot_prefix(user_id: &str) -> String {
    format!("slot:{user_id}:")
}

/// A stored hold.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Hold {
    #[serde(rename = "_id")]
    key: String,
    order_id: ObjectId,
    /// The buyer of that order.
    #[serde(default)]
    user_id: Option<String>,
    /// When it was claimed.
    at: bson::DateTime,
}

impl Hold {
    /// Whether an order in `status` still holds this.
    fn held_in(&self, status: OrderStatus) -> bool {
        match status {
            OrderStatus::Created | OrderStatus::AwaitingPayment => true,
            OrderStatus::Complete => self.key.starts_with("ticket:"),
            OrderStatus::Cancelled => false,
        }
    }

    fn age(&self) -> Duration {
        let millis = bson::DateTime::now().timestamp_millis() - self.at.timestamp_millis();
        Duration::from_millis(u64::try_from(millis).unwrap_or(0))
    }
}

/// The holds, and the orders they belong to.
#[derive(Clone)]
pub struct Holds {
    holds: Collection<Hold>,
    orders: Collection<Document>,
}

impl Holds {
    pub fn new(db: &Database, orders: &str) -> Self {
        Self {
            holds: db.collection(COLLECTION),
            orders: db.collection(orders),
        }
    }

    /// Claims `key` for `order_id` of `user_id`: `true` if it is now the
    /// order's (or already was), `false` if a live order holds it.
    pub async fn claim(
        &self,
        key: &str,
        order_id: ObjectId,
        user_id: &str,
    ) -> anyhow::Result<bool> {
        let hold = Hold {
            key: key.to_owned(),
            order_id,
            user_id: Some(user_id.to_owned()),
            at: bson::DateTime::now(),
        };
        for _ in 0..CLAIM_ATTEMPTS {
            let claimed = self
                .holds
                .insert_one(&hold)
                .await
                .unless_duplicate()
                .context("failed to claim a hold")?;
            if claimed.is_some() {
                return Ok(true);
            }
            let Some(current) = self
                .holds
                .find_one(doc! { "_id": key })
                .await
                .context("failed to read a hold")?
            else {
                continue; // released meanwhile: try again
            };
            if current.order_id == order_id {
                return Ok(true);
            }
            if !self.give_back_if_stale(&current, Some(user_id)).await? {
                return Ok(false);
            }
        }
        // It kept changing hands: someone else has it now.
        Ok(false)
    }

    /// Deletes the holds in `keys` that `order_id` owns.
    pub async fn release(&self, keys: &[String], order_id: ObjectId) -> anyhow::Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        self.holds
            .delete_many(doc! { "_id": { "$in": keys }, "orderId": order_id })
            .await
            .context("failed to release holds")?;
        Ok(())
    }

    /// The keys of the slots `user_id`'s orders hold now (live or stale).
    pub async fn slots_of(&self, user_id: &str) -> anyhow::Result<Vec<String>> {
        // Every key of this user sorts between the prefix and the prefix with
        // its last byte (`:`) raised by one: a range on the `_id` index.
        let from = slot_prefix(user_id);
        let to = format!("slot:{user_id};");
        let held: Vec<Document> = self
            .holds
            .clone_with_type::<Document>()
            .find(doc! { "_id": { "$gte": from, "$lt": to } })
            .projection(doc! { "_id": 1 })
            .await
            .context("failed to read the buyer's slots")?
            .try_collect()
            .await
            .context("failed to read the buyer's slots")?;
        Ok(held
            .iter()
            .filter_map(|d| d.get_str("_id").ok().map(str::to_owned))
            .collect())
    }

    /// Whether a live order holds `key`.
    pub async fn is_held(&self, key: &str) -> anyhow::Result<bool> {
        match self
            .holds
            .find_one(doc! { "_id": key })
            .await
            .context("failed to read a hold")?
        {
            None => Ok(false),
            Some(hold) => Ok(!self.is_stale(&hold, None).await?),
        }
    }

    /// Makes sure the order `order_id` was never inserted and never will be:
    /// `true` if it now never can be (a tombstone holds its id), `false` if
    /// it exists.
    pub async fn abandon(&self, order_id: ObjectId) -> anyhow::Result<bool> {
        let tombstone = doc! { "_id": order_id, ABANDONED: true, "at": bson::DateTime::now() };
        let inserted = self
            .orders
            .insert_one(tombstone)
            .await
            .unless_duplicate()
            .context("failed to abandon an order")?;
        Ok(inserted.is_some())
    }

    /// Deletes `hold` if no live order owns it; whether it did (or the hold
    /// is gone anyway).
    async fn give_back_if_stale(
        &self,
        hold: &Hold,
        claimant: Option<&str>,
    ) -> anyhow::Result<bool> {
        if !self.is_stale(hold, claimant).await? {
            return Ok(false);
        }
        self.release(std::slice::from_ref(&hold.key), hold.order_id)
            .await?;
        tracing::info!(hold = %hold.key, order_id = %hold.order_id, "gave back a hold its order no longer has");
        Ok(true)
    }

    /// Whether `hold`'s order no longer holds it (see the module docs), as
    /// `claimant` (the buyer who wants it, if any) sees it.
    async fn is_stale(&self, hold: &Hold, claimant: Option<&str>) -> anyhow::Result<bool> {
        // The same buyer asking again for a ticket whose order has not
        // appeared: the earlier attempt's answer was lost and it is given up
        // now rather than after the grace (its insert, if it still comes,
        // fails). Not for slots: a buyer's own concurrent orders each need one.
        let superseded = hold.key.starts_with("ticket:")
            && claimant.is_some()
            && hold.user_id.as_deref() == claimant;
        loop {
            match self.owner_status(hold.order_id).await? {
                Owner::Order(status) => return Ok(!hold.held_in(status)),
                Owner::Abandoned => return Ok(true),
                Owner::Missing if hold.age() < CREATION_GRACE && !superseded => return Ok(false),
                Owner::Missing => {
                    if self.abandon(hold.order_id).await? {
                        return Ok(true);
                    }
                    // It was inserted just now: judge it as it is.
                }
            }
        }
    }

    async fn owner_status(&self, order_id: ObjectId) -> anyhow::Result<Owner> {
        let owner = self
            .orders
            .find_one(doc! { "_id": order_id })
            .projection(doc! { "status": 1, ABANDONED: 1 })
            .await
            .context("failed to read a hold's order")?;
        let Some(owner) = owner else {
            return Ok(Owner::Missing);
        };
        if owner.get_bool(ABANDONED).unwrap_or(false) {
            return Ok(Owner::Abandoned);
        }
        let status = bson::from_bson(owner.get("status").cloned().unwrap_or(bson::Bson::Null))
            .with_context(|| format!("order {order_id} has no readable status"))?;
        Ok(Owner::Order(status))
    }
}

/// What became of a hold's order.
enum Owner {
    Order(OrderStatus),
    Abandoned,
    Missing,
}
