//! The `tickets` collection: the ticket document and every write to it.
//!
//! # Writes and their events
//!
//! A ticket and the event its change causes are written together, in one
//! single-document operation (see `common::outbox`): the insert carries
//! `ticket.created` in the document's `outbox` array, and every later change
//! `$push`es its `ticket.updated` there in the same `update_one`. The relay
//! publishes from the outbox; nothing here talks to NATS.
//!
//! # Versions: compare-and-set, never a blind overwrite
//!
//! Every change is decided on the ticket as it was read and written with
//! `update_one({_id, version: v}, {$set…, $inc: {version: 1}, $push: {outbox…}})`.
//! If someone else wrote in between, nothing matches: [`Tickets::modify`]
//! reads the ticket again and asks the caller to decide again on the new
//! state (an edit may now hit a reserved ticket, a reservation may now be a
//! duplicate), a bounded number of times. Running out is [`Contended`], an
//! error the caller reports — never a silent overwrite.
//!
//! # Cancelled orders
//!
//! `order.created` and `order.cancelled` arrive on two separate durable
//! consumers, so after a backlog (a restart, a slow replica) the cancel of an
//! order can be handled before its creation. The ticket therefore remembers
//! the last few orders it saw cancelled (`cancelledOrderIds`, never on the
//! wire) and refuses to be reserved for one of them; the reservation's write
//! is guarded on that list so the check and the write are one atomic step.

use std::time::Duration;

use anyhow::Context;
use common::{
    events::TicketUpdated,
    money::Money,
    outbox::{self, OutboxEvent},
};
use futures::TryStreamExt;
use mongodb::{
    Collection, Database, IndexModel,
    bson::{self, Document, doc, oid::ObjectId},
    options::IndexOptions,
};
use serde::{Deserialize, Serialize};

/// The collection's name (the outbox relay reads it too).
pub const COLLECTION: &str = "tickets";

/// How many times [`Tickets::modify`] decides and writes before it gives up.
///
/// Every round some writer wins, so `n` writers racing for one ticket need at
/// most `n` rounds; this leaves room for a burst well above what one ticket
/// ever sees (its owner and the order listeners).
pub const MAX_ATTEMPTS: u32 = 32;

/// How many cancelled order ids a ticket remembers.
const REMEMBERED_CANCELLATIONS: i32 = 20;

/// A stored ticket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ticket {
    #[serde(rename = "_id")]
    pub id: ObjectId,
    /// Trimmed, never empty.
    pub title: String,
    /// Integer cents in the database.
    #[serde(with = "common::money::as_cents")]
    pub price: Money,
    /// The seller.
    pub user_id: String,
    /// 0 when created, +1 on every change that the fleet is told about.
    pub version: i64,
    /// The order that reserves the ticket; absent when it is for sale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_id: Option<String>,
    /// Orders seen cancelled, most recent last (see the module docs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cancelled_order_ids: Vec<String>,
}

impl Ticket {
    /// A new, unreserved ticket at version 0.
    pub fn new(title: String, price: Money, user_id: String) -> Self {
        Self {
            id: ObjectId::new(),
            title,
            price,
            user_id,
            version: 0,
            order_id: None,
            cancelled_order_ids: Vec::new(),
        }
    }

    /// Whether an order reserves the ticket.
    pub fn is_reserved(&self) -> bool {
        self.order_id.is_some()
    }

    /// Whether `order_id` is known to be cancelled.
    pub fn was_cancelled(&self, order_id: &str) -> bool {
        self.cancelled_order_ids.iter().any(|id| id == order_id)
    }

    /// The ticket after `change`: what [`Tickets::modify`] writes.
    pub fn after(&self, change: &Change) -> Ticket {
        let mut next = self.clone();
        match change {
            Change::Edit { title, price } => {
                next.title.clone_from(title);
                next.price = *price;
            }
            Change::Reserve { order_id } => next.order_id = Some(order_id.clone()),
            Change::Release { order_id } => {
                next.order_id = None;
                next.remember_cancelled(order_id);
            }
            Change::ForgetOrder { order_id } => next.remember_cancelled(order_id),
        }
        if change.is_visible() {
            next.version += 1;
        }
        next
    }

    fn remember_cancelled(&mut self, order_id: &str) {
        if !self.was_cancelled(order_id) {
            self.cancelled_order_ids.push(order_id.to_owned());
        }
        let excess = self
            .cancelled_order_ids
            .len()
            .saturating_sub(REMEMBERED_CANCELLATIONS as usize);
        self.cancelled_order_ids.drain(..excess);
    }

    /// The `ticket.updated` event announcing this (new) state.
    pub fn updated_event(&self) -> TicketUpdated {
        TicketUpdated {
            id: self.id.to_hex(),
            version: self.version,
            title: self.title.clone(),
            price: self.price,
            user_id: self.user_id.clone(),
            order_id: self.order_id.clone(),
        }
    }

    /// The `ticket.created` event announcing this new ticket.
    pub fn created_event(&self) -> common::events::TicketCreated {
        common::events::TicketCreated {
            id: self.id.to_hex(),
            version: self.version,
            title: self.title.clone(),
            price: self.price,
            user_id: self.user_id.clone(),
        }
    }
}

/// One change to a ticket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The owner set a new title and price.
    Edit { title: String, price: Money },
    /// An order reserved the ticket.
    Reserve { order_id: String },
    /// The reserving order was cancelled: the ticket is for sale again.
    Release { order_id: String },
    /// An order that does not reserve the ticket was cancelled: only
    /// remembered, so that its late `order.created` is refused. Not a new
    /// version and no event: nothing the fleet sees changed.
    ForgetOrder { order_id: String },
}

impl Change {
    /// Whether the change is a new version announced with `ticket.updated`.
    pub fn is_visible(&self) -> bool {
        !matches!(self, Change::ForgetOrder { .. })
    }
}

/// What [`Tickets::modify`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The change was written; the ticket as it is now.
    Changed(Ticket),
    /// The caller decided there was nothing to do; the ticket as it is.
    Unchanged(Ticket),
    /// There is no such ticket.
    Missing,
}

/// A compare-and-set write lost every round of [`MAX_ATTEMPTS`]: the ticket
/// kept changing under it. Nothing was written; trying again later is safe.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("ticket {id} kept changing during {attempts} attempts to update it")]
pub struct Contended {
    pub id: ObjectId,
    pub attempts: u32,
}

/// The tickets collection and its queries.
#[derive(Clone)]
pub struct Tickets {
    db: Database,
    tickets: Collection<Ticket>,
}

impl Tickets {
    pub fn new(db: Database) -> Self {
        Self {
            tickets: db.collection(COLLECTION),
            db,
        }
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    /// The collection untyped, for the outbox relay.
    pub fn documents(&self) -> Collection<Document> {
        self.tickets.clone_with_type()
    }

    /// The index behind the listing: unreserved tickets, newest first.
    pub async fn ensure_indexes(&self) -> mongodb::error::Result<()> {
        let index = IndexModel::builder()
            .keys(doc! { "orderId": 1, "_id": -1 })
            .options(
                IndexOptions::builder()
                    .name("available_newest_first".to_owned())
                    .build(),
            )
            .build();
        self.tickets.create_index(index).await?;
        Ok(())
    }

    pub async fn find(&self, id: ObjectId) -> mongodb::error::Result<Option<Ticket>> {
        self.tickets.find_one(doc! { "_id": id }).await
    }

    /// Tickets no order reserves, newest first, at most `limit`.
    pub async fn list_available(&self, limit: i64) -> mongodb::error::Result<Vec<Ticket>> {
        self.tickets
            .find(doc! { "orderId": null })
            .sort(doc! { "_id": -1 })
            .limit(limit)
            .await?
            .try_collect()
            .await
    }

    /// Inserts a new ticket with its `ticket.created` in the outbox.
    pub async fn insert(&self, ticket: &Ticket) -> anyhow::Result<()> {
        let mut document = bson::to_document(ticket)?;
        document.insert(
            outbox::FIELD,
            vec![OutboxEvent::of(&ticket.created_event())?.to_bson()?],
        );
        self.documents()
            .insert_one(document)
            .await
            .with_context(|| format!("failed to insert ticket {}", ticket.id))?;
        Ok(())
    }

    /// Reads the ticket, lets `decide` pick a change for it (or none, or
    /// refuse with an error), and writes the change conditionally on the
    /// version it was decided on; on a lost race, reads and decides again
    /// (see the module docs).
    ///
    /// `decide` may run several times and must decide from the ticket it is
    /// given only.
    pub async fn modify<E>(
        &self,
        id: ObjectId,
        mut decide: impl FnMut(&Ticket) -> Result<Option<Change>, E>,
    ) -> Result<Outcome, E>
    where
        E: From<mongodb::error::Error> + From<anyhow::Error> + From<Contended>,
    {
        for attempt in 1..=MAX_ATTEMPTS {
            let Some(current) = self.find(id).await? else {
                return Ok(Outcome::Missing);
            };
            let Some(change) = decide(&current)? else {
                return Ok(Outcome::Unchanged(current));
            };
            if let Some(next) = self.write(&current, &change).await? {
                return Ok(Outcome::Changed(next));
            }
            tracing::debug!(ticket_id = %id, attempt, "ticket changed concurrently; deciding again");
            tokio::time::sleep(backoff(attempt)).await;
        }
        Err(Contended {
            id,
            attempts: MAX_ATTEMPTS,
        }
        .into())
    }

    /// Writes `change` if the ticket is still at `current.version`; the new
    /// state, or `None` when another write came first.
    async fn write(&self, current: &Ticket, change: &Change) -> anyhow::Result<Option<Ticket>> {
        let next = current.after(change);
        let mut filter = doc! { "_id": current.id, "version": current.version };
        let mut update = Document::new();
        let remember = |order_id: &str| {
            doc! { "cancelledOrderIds": {
                "$each": [order_id],
                "$slice": -REMEMBERED_CANCELLATIONS,
            } }
        };
        match change {
            Change::Edit { title, price } => {
                update.insert("$set", doc! { "title": title, "price": price.cents() });
            }
            Change::Reserve { order_id } => {
                // Atomic with the write: not if its cancel got in meanwhile.
                filter.insert("cancelledOrderIds", doc! { "$ne": order_id });
                update.insert("$set", doc! { "orderId": order_id });
            }
            Change::Release { order_id } => {
                update.insert("$unset", doc! { "orderId": "" });
                if !current.was_cancelled(order_id) {
                    update.insert("$push", remember(order_id));
                }
            }
            Change::ForgetOrder { order_id } => {
                if current.was_cancelled(order_id) {
                    return Ok(Some(next));
                }
                update.insert("$push", remember(order_id));
            }
        }
        if change.is_visible() {
            update.insert("$inc", doc! { "version": 1 });
            let entry = outbox::push(&next.updated_event())?;
            match update.get_document_mut("$push") {
                Ok(push) => push.extend(entry),
                Err(_) => {
                    update.insert("$push", entry);
                }
            }
        }
        let result = self
            .tickets
            .update_one(filter, update)
            .await
            .with_context(|| format!("failed to update ticket {}", current.id))?;
        Ok((result.matched_count == 1).then_some(next))
    }
}

/// A short, growing, jittered pause between two rounds, so that writers who
/// just collided do not collide again in lockstep.
fn backoff(attempt: u32) -> Duration {
    let ceiling_ms = u64::from(attempt.min(10)) * 2;
    Duration::from_millis(rand::random_range(0..=ceiling_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticket() -> Ticket {
        Ticket::new("concert".into(), Money::from_cents(2000), "u1".into())
    }

    #[test]
    fn visible_changes_bump_the_version_and_bookkeeping_does_not() {
        let t = ticket();
        let edited = t.after(&Change::Edit {
            title: "gig".into(),
            price: Money::from_cents(1),
        });
        assert_eq!(
            (edited.version, edited.title.as_str(), edited.price.cents()),
            (1, "gig", 1)
        );

        let reserved = edited.after(&Change::Reserve {
            order_id: "o1".into(),
        });
        assert_eq!(
            (reserved.version, reserved.order_id.as_deref()),
            (2, Some("o1"))
        );

        let released = reserved.after(&Change::Release {
            order_id: "o1".into(),
        });
        assert_eq!((released.version, released.order_id.as_deref()), (3, None));
        assert!(released.was_cancelled("o1"));

        let forgotten = released.after(&Change::ForgetOrder {
            order_id: "o2".into(),
        });
        assert_eq!(forgotten.version, 3);
        assert!(forgotten.was_cancelled("o2"));
    }

    #[test]
    fn remembers_only_the_latest_cancellations() {
        let mut t = ticket();
        for n in 0..30 {
            t = t.after(&Change::ForgetOrder {
                order_id: format!("o{n}"),
            });
        }
        assert_eq!(
            t.cancelled_order_ids.len(),
            REMEMBERED_CANCELLATIONS as usize
        );
        assert!(t.was_cancelled("o29") && !t.was_cancelled("o9"));
    }

    #[test]
    fn the_update_event_carries_the_new_state() {
        let t = ticket().after(&Change::Reserve {
            order_id: "o1".into(),
        });
        let event = t.updated_event();
        assert_eq!(event.version, 1);
        assert_eq!(event.order_id.as_deref(), Some("o1"));
        assert_eq!(event.id, t.id.to_hex());
    }

    #[test]
    fn the_document_stores_cents_and_omits_what_is_absent() {
        let document = bson::to_document(&ticket()).unwrap();
        assert_eq!(document.get_i64("price").unwrap(), 2000);
        assert!(!document.contains_key("orderId"));
        assert!(!document.contains_key("cancelledOrderIds"));
    }
}
