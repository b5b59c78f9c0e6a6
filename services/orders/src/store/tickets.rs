//! The `tickets` replica: `{_id, title, price (cents), version}`.
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

use common::money::{self, Money};

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
}

/// What became of a `ticket.updated`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateOutcome {
    /// The replica was at `version − 1` and is now at `version`.
    Applied,
    /// The replica is already at `version` or later: a redelivery.
    Duplicate,
    /// The replica is missing or behind `version − 1`: an earlier event has
    /// not been applied yet.
    Early,
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
        match self.tickets.insert_one(ticket).await {
            Ok(_) => Ok(true),
            Err(e) if common::mongo::is_duplicate_key(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Applies `ticket` (at its new version) if the replica is at the version
    /// just before it — one conditional write, never a read-modify-write.
    pub async fn apply_update(&self, ticket: &Ticket) -> mongodb::error::Result<UpdateOutcome> {
        let applied = self
            .tickets
            .update_one(
                doc! { "_id": ticket.id, "version": ticket.version - 1 },
                doc! { "$set": {
                    "title": &ticket.title,
                    "price": ticket.price.cents(),
                    "version": ticket.version,
                } },
            )
            .await?;
        if applied.matched_count == 1 {
            return Ok(UpdateOutcome::Applied);
        }
        // Not at version − 1: find out whether we are ahead or behind.
        Ok(match self.find(ticket.id).await? {
            Some(current) if current.version >= ticket.version => UpdateOutcome::Duplicate,
            _ => UpdateOutcome::Early,
        })
    }
}
