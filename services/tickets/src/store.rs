//! The `tickets` collection: the ticket document and every write to it.
//!
//! # Writes and their events
//!
//! A ticket and the event its change causes are written together, in one
//! single-document operation (see `common::outbox`): the insert carries
//! `ticket.created` in the document's `outbox` array, and every later change
//! `$push`es its `ticket.updated` there in the same update. The relay
//! publishes from the outbox, and the store wakes it after each such write;
//! nothing here talks to NATS. [`common::owned`] makes those writes.
//!
//! # Versions: compare-and-set, never a blind overwrite
//!
//! Every change is decided on the ticket as it was read and written with
//! `({_id, version: v}, {$set…, $inc: {version: 1}, $push: {outbox…}})`.
//! If someone else wrote in between, nothing matches: [`Tickets::modify`]
//! reads the ticket again and asks the caller to decide again on the new
//! state (an edit may now hit a reserved ticket, a reservation may now be a
//! duplicate), a bounded number of times (`common::cas`). Running out is
//! [`Contended`], the fleet's one 409 — never a silent overwrite.
//!
//! # Cancelled orders
//!
//! `order.created` and `order.cancelled` arrive on two separate durable
//! consumers, so after a backlog (a restart, a slow replica) the cancel of an
//! order can be handled before its creation. The ticket therefore remembers
//! the last few orders it saw cancelled (`cancelledOrderIds`, never on the
//! wire) and refuses to be reserved for one of them; the reservation's write
//! is guarded on that list so the check and the write are one atomic step.
//!
//! # Withdrawal
//!
//! A withdrawn ticket stays in the collection (`withdrawn: true`, a new
//! version and a `ticket.updated` with `withdrawn: true`) so that orders
//! learns of it in version order, but it is never listed, shown, edited or
//! reserved again. Withdrawing is a compare-and-set on a ticket no order
//! reserves, and reserving is a compare-and-set on a ticket not withdrawn:
//! whichever writes first wins, and the other sees the new version and
//! decides again (a withdrawal after a reservation is refused; a reservation
//! after a withdrawal does not happen, and orders cancels its order).

use std::sync::Arc;

use anyhow::Context;
pub use common::cas::Contended;
use common::{
    events::TicketUpdated,
    money::Money,
    mongo::DuplicateKey as _,
    outbox::Outbox,
    owned::{self, Modified, Owned, Record, Step, Versioned},
};
use futures::TryStreamExt;
use mongodb::{
    Collection, Database, IndexModel,
    bson::{self, Document, doc, oid::ObjectId},
    options::IndexOptions,
};
use serde::{Deserialize, Serialize};

use crate::listing::{self, Spans};
pub use crate::listing::{Cursor, ListQuery, Page, Sort};
use crate::search;

/// The collection's name (the outbox relay reads it too).
pub const COLLECTION: &str = "tickets";

/// The listing index before search and filters (`{orderId: 1, _id: -1}`).
const RETIRED_INDEX: &str = "available_newest_first";

/// One-off data changes already made, one document each.
const MIGRATIONS: &str = "migrations";
/// The search keys of today's [`search::prefixes`] (with pair keys); the
/// first keys, before pair keys, were `tickets.prefixes`.
const PREFIXES_MIGRATION: &str = "tickets.prefixes.pairs";

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
    /// The price printed on the ticket, if the seller gave it; cents.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "optional_cents"
    )]
    pub face_value: Option<Money>,
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
    /// The seller took it off sale (see the module docs on withdrawal):
    /// stored only when true.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub withdrawn: bool,
    /// Its order is paid (`payment.created`): it stays reserved by that
    /// order for good. Stored only when true; never on the wire (the
    /// seller's list shows it as `status: sold`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sold: bool,
    /// The title's search keys, never on the wire (see [`crate::search`]);
    /// empty in a document written before search existed, until the
    /// backfill at start ([`Tickets::backfill_prefixes`]) reaches it.
    #[serde(default)]
    pub prefixes: Vec<String>,
}

impl Ticket {
    /// A new, unreserved ticket at version 0.
    pub fn new(title: String, price: Money, user_id: String) -> Self {
        let title_for_prefixes = title.clone();
        Self {
            id: ObjectId::new(),
            title,
            price,
            face_value: None,
            user_id,
            version: 0,
            order_id: None,
            cancelled_order_ids: Vec::new(),
            withdrawn: false,
            sold: false,
            prefixes: search::prefixes(&title_for_prefixes),
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
            Change::Edit {
                title,
                price,
                face_value,
            } => {
                next.title.clone_from(title);
                next.price = *price;
                next.face_value = face_value.or(self.face_value);
                next.prefixes = search::prefixes(title);
            }
            Change::Withdraw => next.withdrawn = true,
            Change::Reserve { order_id } => next.order_id = Some(order_id.clone()),
            Change::Release { order_id } => {
                next.order_id = None;
                next.remember_cancelled(order_id);
            }
            Change::ForgetOrder { order_id } => next.remember_cancelled(order_id),
            Change::MarkSold { .. } => next.sold = true,
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
            withdrawn: self.withdrawn,
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

impl Record for Ticket {
    const KIND: &'static str = "ticket";

    fn id(&self) -> ObjectId {
        self.id
    }
}

impl Versioned for Ticket {
    fn version(&self) -> i64 {
        self.version
    }
}

/// One change to a ticket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The owner set a new title and price, and maybe a face value (`None`
    /// keeps the one it has).
    Edit {
        title: String,
        price: Money,
        face_value: Option<Money>,
    },
    /// The owner took the ticket off sale, for good.
    Withdraw,
    /// An order reserved the ticket.
    Reserve { order_id: String },
    /// The reserving order was cancelled: the ticket is for sale again.
    Release { order_id: String },
    /// An order that does not reserve the ticket was cancelled: only
    /// remembered, so that its late `order.created` is refused. Not a new
    /// version and no event: nothing the fleet sees changed.
    ForgetOrder { order_id: String },
    /// The reserving order was paid. Bookkeeping like
    /// [`Change::ForgetOrder`]: no new version, no event.
    MarkSold { order_id: String },
}

impl Change {
    /// Whether the change is a new version announced with `ticket.updated`.
    pub fn is_visible(&self) -> bool {
        !matches!(self, Change::ForgetOrder { .. } | Change::MarkSold { .. })
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

/// The tickets collection and its queries.
#[derive(Clone)]
pub struct Tickets {
    db: Database,
    tickets: Collection<Ticket>,
    /// Where the listing's windows start and how wide (see
    /// [`crate::listing`]), shared by every clone.
    spans: Arc<Spans>,
    /// The same collection, for the writes of a ticket and its events.
    owned: Owned<Ticket>,
}

/// How many windows a page reads at most; the last is open to the end.
const MAX_WINDOWS: usize = 4;

impl Tickets {
    /// `outbox` is woken after every write that leaves an event behind.
    pub fn new(db: Database, outbox: Outbox) -> Self {
        Self {
            tickets: db.collection(COLLECTION),
            owned: Owned::new(db.collection(COLLECTION), outbox),
            db,
            spans: Arc::default(),
        }
    }

    /// The collection untyped, for the outbox relay.
    pub fn raw_collection(db: &Database) -> Collection<Document> {
        db.collection(COLLECTION)
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    /// The collection untyped.
    pub fn documents(&self) -> Collection<Document> {
        self.tickets.clone_with_type()
    }

    /// The indexes behind the listings (see [`crate::listing`]): for sale
    /// newest first and by price, the same two under a search word, and a
    /// seller's own tickets. Drops the index of the listing before search.
    pub async fn ensure_indexes(&self) -> mongodb::error::Result<()> {
        common::mongo::drop_index_if_present(&self.tickets, RETIRED_INDEX).await?;
        let indexes = [
            (
                "for_sale_newest",
                doc! { "orderId": 1, "withdrawn": 1, "_id": -1 },
            ),
            (
                "for_sale_by_price",
                doc! { "orderId": 1, "withdrawn": 1, "price": 1, "_id": 1 },
            ),
            (
                "search_newest",
                doc! { "prefixes": 1, "orderId": 1, "withdrawn": 1, "_id": -1 },
            ),
            (
                "search_by_price",
                doc! { "prefixes": 1, "orderId": 1, "withdrawn": 1, "price": 1, "_id": 1 },
            ),
            ("by_seller", doc! { "userId": 1, "_id": -1 }),
        ]
        .map(|(name, keys)| {
            IndexModel::builder()
                .keys(keys)
                .options(IndexOptions::builder().name(name.to_owned()).build())
                .build()
        });
        self.tickets.create_indexes(indexes).await?;
        Ok(())
    }

    /// Gives today's search keys to every ticket stored without them (before
    /// search existed, or before pair keys), once per database: a marker in
    /// `migrations` says it is done, so a start does not scan the
    /// collection again. Each write is conditional on the title it was
    /// computed from; a ticket edited meanwhile got its keys from the edit.
    /// Idempotent, so replicas starting together may both run it. No new
    /// version, no event: nothing the fleet sees changes.
    pub async fn backfill_prefixes(&self) -> anyhow::Result<u64> {
        let migrations = self.db.collection::<Document>(MIGRATIONS);
        if migrations
            .find_one(doc! { "_id": PREFIXES_MIGRATION })
            .await
            .context("failed to read the migrations")?
            .is_some()
        {
            return Ok(0);
        }
        let mut stored = self
            .documents()
            .find(doc! {})
            .projection(doc! { "_id": 1, "title": 1, "prefixes": 1 })
            .await
            .context("failed to read the tickets' search keys")?;
        let mut filled = 0;
        while let Some(ticket) = stored
            .try_next()
            .await
            .context("failed to read the tickets' search keys")?
        {
            let (Ok(id), Ok(title)) = (ticket.get_object_id("_id"), ticket.get_str("title")) else {
                continue;
            };
            let keys = search::prefixes(title);
            let current = ticket.get_array("prefixes").ok();
            if current.is_some_and(|current| {
                current
                    .iter()
                    .map(|k| k.as_str())
                    .eq(keys.iter().map(|k| Some(k.as_str())))
            }) {
                continue;
            }
            self.documents()
                .update_one(
                    doc! { "_id": id, "title": title },
                    doc! { "$set": { "prefixes": keys } },
                )
                .await
                .with_context(|| format!("failed to backfill the search keys of ticket {id}"))?;
            filled += 1;
        }
        // Another replica may have recorded it first.
        migrations
            .insert_one(doc! { "_id": PREFIXES_MIGRATION, "at": bson::DateTime::now() })
            .await
            .unless_duplicate()
            .context("failed to record a migration")?;
        if filled > 0 {
            tracing::info!(
                tickets = filled,
                "gave today's search keys to tickets stored without them"
            );
        }
        Ok(filled)
    }

    pub async fn find(&self, id: ObjectId) -> mongodb::error::Result<Option<Ticket>> {
        self.tickets.find_one(doc! { "_id": id }).await
    }

    /// The ticket `order_id` reserves, if one does.
    pub async fn find_by_order(&self, order_id: &str) -> mongodb::error::Result<Option<Ticket>> {
        self.tickets.find_one(doc! { "orderId": order_id }).await
    }

    /// One page of a listing: at most `query.limit` tickets and, when there
    /// are more, the cursor of the next page. Reads at most `limit + 1`
    /// tickets (see [`crate::listing`] on the indexes).
    pub async fn list(&self, query: &ListQuery) -> mongodb::error::Result<Page> {
        let want = usize::try_from(query.limit + 1).unwrap_or(usize::MAX);
        let mut tickets = Vec::new();
        if query.windowed() {
            let (mut window, mut width) = self.spans.first_window(query);
            for round in 1.. {
                let missing = want - tickets.len();
                let read = self.read(query.filter_in(&window), query, missing).await?;
                let found = read.len();
                tickets.extend(read);
                if tickets.len() >= want {
                    break;
                }
                width *= listing::growth(found, want - tickets.len());
                match query.next_window(&window, width) {
                    Some(next) if round >= MAX_WINDOWS => window = next.to_the_end(),
                    Some(next) => window = next,
                    None => break,
                }
            }
            self.spans.learn(query, &tickets);
        } else {
            tickets = self.read(query.filter(), query, want).await?;
        }
        let next = if tickets.len() as i64 > query.limit {
            tickets.truncate(query.limit as usize);
            tickets.last().map(|last| Cursor::after(query.sort, last))
        } else {
            None
        };
        Ok(Page { tickets, next })
    }

    /// At most `limit` tickets matching `filter`, in the query's order.
    async fn read(
        &self,
        filter: Document,
        query: &ListQuery,
        limit: usize,
    ) -> mongodb::error::Result<Vec<Ticket>> {
        self.tickets
            .find(filter)
            .sort(query.sort.order())
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .await?
            .try_collect()
            .await
    }

    /// The first page of the tickets for sale, newest first, at most `limit`.
    pub async fn list_available(&self, limit: i64) -> mongodb::error::Result<Vec<Ticket>> {
        Ok(self.list(&ListQuery::for_sale(limit)).await?.tickets)
    }

    /// Inserts a new ticket with its `ticket.created` in the outbox, and
    /// wakes the relay.
    pub async fn insert(&self, ticket: &Ticket) -> anyhow::Result<()> {
        let inserted = self.owned.insert(ticket, &ticket.created_event()).await?;
        anyhow::ensure!(inserted, "ticket {} exists already", ticket.id);
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
        let modified = self
            .owned
            .modify(
                id,
                None,
                |id| self.find(id),
                |current| -> Result<_, E> {
                    let Some(change) = decide(current)? else {
                        return Ok(Step::Done(Outcome::Unchanged(current.clone())));
                    };
                    Ok(Self::step_for(current, &change)?)
                },
            )
            .await?;
        Ok(match modified {
            Modified::Written(next) => Outcome::Changed(next),
            Modified::Done(outcome) => outcome,
            Modified::Missing => Outcome::Missing,
        })
    }

    /// The write of `change` to `current` (conditional on its version), or,
    /// when there is nothing to write, the ticket as it already is.
    fn step_for(current: &Ticket, change: &Change) -> anyhow::Result<Step<Outcome>> {
        let next = current.after(change);
        let mut filter = Document::new();
        let mut update = Document::new();
        let remember = |order_id: &str| {
            doc! { "cancelledOrderIds": {
                "$each": [order_id],
                "$slice": -REMEMBERED_CANCELLATIONS,
            } }
        };
        match change {
            Change::Edit {
                title,
                price,
                face_value,
            } => {
                let mut set =
                    doc! { "title": title, "price": price.cents(), "prefixes": &next.prefixes };
                if let Some(face_value) = face_value {
                    set.insert("faceValue", face_value.cents());
                }
                update.insert("$set", set);
            }
            Change::Withdraw => {
                // Atomic with the write: not if an order reserved it meanwhile.
                filter.insert("orderId", mongodb::bson::Bson::Null);
                update.insert("$set", doc! { "withdrawn": true });
            }
            Change::Reserve { order_id } => {
                // Atomic with the write: not if its cancel got in meanwhile,
                // nor if the seller withdrew it.
                filter.insert("cancelledOrderIds", doc! { "$ne": order_id });
                filter.insert("withdrawn", doc! { "$ne": true });
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
                    return Ok(Step::Done(Outcome::Changed(next)));
                }
                update.insert("$push", remember(order_id));
            }
            Change::MarkSold { order_id } => {
                filter.insert("orderId", order_id);
                update.insert("$set", doc! { "sold": true });
            }
        }
        let write = if change.is_visible() {
            owned::Change::announced(update, &next.updated_event())?
        } else {
            owned::Change::bookkeeping(update)
        };
        Ok(Step::Write(write.only_if(filter)))
    }
}

/// `Option<Money>` stored as integer cents (absent when `None`).
mod optional_cents {
    use common::money::Money;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        money: &Option<Money>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match money {
            Some(money) => serializer.serialize_i64(money.cents()),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Money>, D::Error> {
        Ok(Option::<i64>::deserialize(deserializer)?.map(Money::from_cents))
    }
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
            face_value: None,
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
