//! The `tickets` replica: `{_id, title, price (cents), version, orderId,
//! withdrawn?}`.
//!
//! Orders never reads the tickets service's database; what it needs to know
//! about a ticket (does it exist, its title and price) arrives as events and
//! is kept here. Updates follow the version rule of DESIGN §4: an update to
//! version `v` applies only to a replica at `v − 1`, in one conditional write,
//! so a duplicate or an early event can never overwrite newer data.

use futures::TryStreamExt;
use mongodb::{
    Collection, Database,
    bson::{doc, oid::ObjectId},
};
use serde::{Deserialize, Serialize};

pub use common::replica::VersionedUpdate;
use common::{
    money::{self, Money},
    mongo::DuplicateKey as _,
};

/// The collection's name.
pub const COLLECTION: &str = "tickets";

/// A replicated ticket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ticket {
    #[serde(rename = "_id")]
    pub id: ObjectId,
    pub title: String,
    /// Integer cents.
    #[serde(with = "money::as_cents")]
    pub price: Money,
    /// The tickets service's version of it.
    pub version: i64,
    /// Its seller withdrew it (`ticket.updated` with `withdrawn: true`): it
    /// cannot be ordered, and an order for it is cancelled. Stored only when
    /// true; final.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub withdrawn: bool,
    /// The order tickets reserved it for, as of `version` (`ticket.updated`'s
    /// `orderId`): `Some(None)` when unreserved. `None` only in a replica
    /// written before orders kept it, which says nothing either way.
    #[serde(
        rename = "orderId",
        default,
        deserialize_with = "stored",
        skip_serializing_if = "Option::is_none"
    )]
    pub reserved_for: Option<Option<ObjectId>>,
}

impl Ticket {
    /// Whether tickets reserved the ticket for `order` — `None` when the
    /// replica predates the field and cannot tell.
    pub fn reserved_by(&self, order: ObjectId) -> Option<bool> {
        self.reserved_for.map(|holder| holder == Some(order))
    }
}

/// A stored field, `null` included, is `Some`; only a missing one is `None`.
fn stored<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Option<ObjectId>>, D::Error> {
    Option::<ObjectId>::deserialize(deserializer).map(Some)
}

/// The ticket replica and its queries.
#[derive(Clone)]
pub struct Tickets {
    tickets: Collection<Ticket>,
}

impl Tickets {
    pub fn new(db: &Database) -> Self {
        Self {
            tickets: db.collection(COLLECTION),
        }
    }

    pub async fn find(&self, id: ObjectId) -> mongodb::error::Result<Option<Ticket>> {
        self.tickets.find_one(doc! { "_id": id }).await
    }

    /// The tickets among `ids` that the replica has.
    pub async fn find_many(&self, ids: &[ObjectId]) -> mongodb::error::Result<Vec<Ticket>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        self.tickets
            .find(doc! { "_id": { "$in": ids } })
            .await?
            .try_collect()
            .await
    }

    /// Inserts a new ticket; `false` if the replica already has one with this
    /// id (a redelivered `ticket.created`, possibly already updated since).
    pub async fn insert(&self, ticket: &Ticket) -> mongodb::error::Result<bool> {
        Ok(self
            .tickets
            .insert_one(ticket)
            .await
            .unless_duplicate()?
            .is_some())
    }

    /// Applies `ticket` (at its new version) if the replica is at the version
    /// just before it — one conditional write, never a read-modify-write.
    pub async fn apply_update(&self, ticket: &Ticket) -> mongodb::error::Result<VersionedUpdate> {
        let mut set = doc! {
            "title": &ticket.title,
            "price": ticket.price.cents(),
            "orderId": ticket.reserved_for.flatten(),
        };
        if ticket.withdrawn {
            set.insert("withdrawn", true);
        }
        common::replica::apply(&self.tickets, ticket.id, ticket.version, set).await
    }
}
