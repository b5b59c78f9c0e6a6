//! No lost events: an outbox inside the document that changed.
//!
//! A service that changes a record and must tell the fleet about it writes
//! both in one single-document operation: the new state and, in the same
//! document's `outbox` array, the serialised event. MongoDB makes one
//! document's write atomic everywhere (no replica set or transaction needed),
//! so either both happen or neither does.
//!
//! The [`Relay`] then publishes what sits in outboxes, in array order, with
//! the event's deterministic message id, and pulls each entry out once the
//! stream has acknowledged it. If the process dies between the write and the
//! publish, the entry is still in the document and the relay of the restarted
//! (or of any other) replica publishes it; if it dies between the publish and
//! the pull, the publish is repeated and JetStream drops the duplicate by its
//! message id (consumers also ignore stale versions).
//!
//! Writers hand the relay a hint ([`Outbox::wake`]) after a write so that
//! events go out at once; a periodic scan picks up everything else (entries
//! left by a crash, or by another replica that died).
//!
//! Each scan sets the gauge `outbox_backlog{collection}` to the events it
//! found and could not publish (zero while JetStream takes everything; it
//! grows while JetStream is unreachable), and every published event counts in
//! `outbox_published_total{collection}` (see [`crate::metrics`]).

use std::{collections::HashSet, time::Duration};

use anyhow::Context;
use futures::{StreamExt, TryStreamExt};
use mongodb::{
    Collection,
    bson::{self, Bson, Document, doc, oid::ObjectId},
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{bus::Bus, events::Event, metrics};

/// The document field that holds pending events.
pub const FIELD: &str = "outbox";

/// How many documents the relay publishes at once.
const CONCURRENCY: usize = 16;

/// A serialised event waiting in a document's outbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutboxEvent {
    /// The deterministic message id (`Nats-Msg-Id`).
    pub id: String,
    /// The subject without any prefix.
    pub subject: String,
    pub schema_version: u32,
    /// The JSON payload.
    pub payload: String,
}

impl OutboxEvent {
    /// Serialises `event` for the outbox.
    pub fn of<E: Event>(event: &E) -> anyhow::Result<Self> {
        Ok(Self {
            id: event.message_id(),
            subject: E::SUBJECT.to_owned(),
            schema_version: E::SCHEMA_VERSION,
            payload: serde_json::to_string(event)
                .with_context(|| format!("failed to serialise a {} event", E::SUBJECT))?,
        })
    }

    /// As a BSON value, for `$push` in an update.
    pub fn to_bson(&self) -> anyhow::Result<Bson> {
        bson::to_bson(self).context("failed to encode an outbox entry")
    }
}

/// The `$push` that appends `event` to a document's outbox, to merge into an
/// update next to its `$set`.
pub fn push<E: Event>(event: &E) -> anyhow::Result<Document> {
    Ok(doc! { FIELD: OutboxEvent::of(event)?.to_bson()? })
}

/// What writers hold: wakes the relay for a document they just wrote.
#[derive(Debug, Clone)]
pub struct Outbox {
    hints: mpsc::UnboundedSender<ObjectId>,
}

impl Outbox {
    /// Asks the relay to publish `id`'s outbox now. Never fails: if the relay
    /// is gone, the periodic scan of the next one will find the entry.
    pub fn wake(&self, id: ObjectId) {
        let _ = self.hints.send(id);
    }
}

/// Publishes the outbox entries of one collection.
pub struct Relay {
    bus: Bus,
    collection: Collection<Document>,
    hints: mpsc::UnboundedReceiver<ObjectId>,
    scan_every: Duration,
}

impl Relay {
    /// A relay for `collection` and the handle its writers use.
    pub fn new(bus: Bus, collection: Collection<Document>) -> (Self, Outbox) {
        let (tx, rx) = mpsc::unbounded_channel();
        let relay = Self {
            bus,
            collection,
            hints: rx,
            scan_every: Duration::from_secs(2),
        };
        (relay, Outbox { hints: tx })
    }

    /// How often to scan for entries nobody hinted about (default 2 s).
    pub fn scan_every(mut self, every: Duration) -> Self {
        self.scan_every = every;
        self
    }

    /// Runs until `shutdown`: a scan at start (what a crash left behind), then
    /// hinted documents as they come and a scan every `scan_every`. On
    /// shutdown it publishes what was already hinted, then stops.
    pub async fn run(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let name = self.collection.name().to_owned();
        tracing::info!(collection = %name, "outbox relay started");
        let mut scan = tokio::time::interval(self.scan_every);
        scan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                Some(first) = self.hints.recv() => {
                    let mut ids = HashSet::from([first]);
                    while let Ok(id) = self.hints.try_recv() {
                        ids.insert(id);
                    }
                    if let Err(err) = self.publish_documents(doc! { "_id": { "$in": ids.into_iter().collect::<Vec<_>>() } }).await {
                        tracing::warn!(collection = %name, error = format!("{err:#}"), "outbox publish failed; the scan will retry");
                    }
                }
                _ = scan.tick() => {
                    if let Err(err) = self.scan().await {
                        tracing::warn!(collection = %name, error = format!("{err:#}"), "outbox scan failed; will retry");
                    }
                }
            }
        }
        let mut ids = Vec::new();
        while let Ok(id) = self.hints.try_recv() {
            ids.push(id);
        }
        if !ids.is_empty()
            && let Err(err) = self.publish_documents(doc! { "_id": { "$in": ids } }).await
        {
            tracing::warn!(collection = %name, error = format!("{err:#}"), "outbox entries left for the next start");
        }
        tracing::info!(collection = %name, "outbox relay stopped");
        Ok(())
    }

    /// Publishes every pending entry of the collection; returns how many.
    pub async fn publish_pending(&self) -> anyhow::Result<usize> {
        self.publish_documents(doc! {}).await
    }

    /// One periodic scan: publishes every pending entry and sets the
    /// collection's `outbox_backlog` gauge to the entries still pending.
    /// Returns how many it published.
    pub async fn scan(&self) -> anyhow::Result<usize> {
        let scanned = self.publish_all(doc! {}).await?;
        metrics::set_outbox_backlog(self.collection.name(), scanned.remaining);
        match scanned.failure {
            Some(err) => Err(err),
            None => Ok(scanned.published),
        }
    }

    /// How many documents have entries waiting.
    pub async fn backlog(&self) -> anyhow::Result<u64> {
        Ok(self.collection.count_documents(pending(doc! {})).await?)
    }

    async fn publish_documents(&self, filter: Document) -> anyhow::Result<usize> {
        let scanned = self.publish_all(filter).await?;
        match scanned.failure {
            Some(err) => Err(err),
            None => Ok(scanned.published),
        }
    }

    /// Publishes the outboxes of the documents `filter` selects; `Err` only
    /// when they cannot be read.
    async fn publish_all(&self, filter: Document) -> anyhow::Result<Scanned> {
        let documents: Vec<Document> = self
            .collection
            .find(pending(filter))
            .projection(doc! { FIELD: 1 })
            .await
            .context("failed to read outboxes")?
            .try_collect()
            .await
            .context("failed to read outboxes")?;
        let results: Vec<Published> = futures::stream::iter(documents)
            .map(|document| self.publish_document(document))
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        let mut scanned = Scanned {
            published: 0,
            remaining: 0,
            failure: None,
        };
        for result in results {
            scanned.published += result.published;
            scanned.remaining += result.remaining;
            if let Some(err) = result.failure {
                scanned.failure.get_or_insert(err);
            }
        }
        metrics::record_outbox_published(self.collection.name(), scanned.published);
        Ok(scanned)
    }

    /// Publishes one document's entries in order, stopping at the first
    /// failure so that a later event never overtakes an earlier one, then
    /// pulls out what was published.
    async fn publish_document(&self, document: Document) -> Published {
        let pending = document.get_array(FIELD).map_or(0, Vec::len);
        match self.publish_entries(document).await {
            Ok(published) => Published {
                published,
                remaining: pending.saturating_sub(published),
                failure: None,
            },
            Err((published, err)) => Published {
                published,
                remaining: pending.saturating_sub(published),
                failure: Some(err),
            },
        }
    }

    /// [`Self::publish_document`]'s work; on failure, how many were published
    /// (and pulled out) before it.
    async fn publish_entries(&self, document: Document) -> Result<usize, (usize, anyhow::Error)> {
        let fail = |err: anyhow::Error| (0, err);
        let id = document
            .get("_id")
            .cloned()
            .context("outbox document without _id")
            .map_err(fail)?;
        let entries: Vec<OutboxEvent> = match document.get_array(FIELD) {
            Ok(array) => array
                .iter()
                .map(|entry| bson::from_bson(entry.clone()))
                .collect::<Result<_, _>>()
                .context("malformed outbox entry")
                .map_err(fail)?,
            Err(_) => return Ok(0),
        };
        let mut done = Vec::new();
        let mut failure = None;
        for entry in &entries {
            match self
                .bus
                .publish_raw(
                    &entry.subject,
                    entry.schema_version,
                    &entry.id,
                    entry.payload.clone().into_bytes().into(),
                )
                .await
            {
                Ok(()) => done.push(entry.id.clone()),
                Err(err) => {
                    failure = Some(err);
                    break;
                }
            }
        }
        if !done.is_empty() {
            self.collection
                .update_one(
                    doc! { "_id": id },
                    doc! { "$pull": { FIELD: { "id": { "$in": &done } } } },
                )
                .await
                .context("failed to clear published outbox entries")
                // Published but still in the outbox: the next scan publishes
                // them again, and JetStream drops the duplicates.
                .map_err(fail)?;
        }
        match failure {
            Some(err) => Err((done.len(), err)),
            None => Ok(done.len()),
        }
    }
}

/// What publishing one document's outbox did.
struct Published {
    published: usize,
    /// Entries it still holds.
    remaining: usize,
    failure: Option<anyhow::Error>,
}

/// What publishing a set of documents did.
struct Scanned {
    published: usize,
    remaining: usize,
    /// The first failure, if any.
    failure: Option<anyhow::Error>,
}

fn pending(mut filter: Document) -> Document {
    filter.insert(format!("{FIELD}.0"), doc! { "$exists": true });
    filter
}
