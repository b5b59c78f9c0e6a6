//! Documents a service owns: the storage half of the event contract.
//!
//! A record and the event its change causes are written together, in one
//! single-document operation, and the relay is woken right after (see
//! [`crate::outbox`]):
//!
//! - [`Owned::insert`]: the new record with its creation event as its
//!   outbox's one entry;
//! - [`Owned::write`]: a compare-and-set on the version the change was
//!   decided on (for a record without versions, [`Owned::update`] on the
//!   change's conditions alone), which — as its [`Change`] says — bumps the
//!   version and pushes the event in the same update, or neither
//!   (bookkeeping that no other service follows). A lost race writes
//!   nothing and returns `None`;
//! - [`Owned::modify`]: read → decide → [`Owned::write`], and on a lost race
//!   read and decide again, within the bounded, jittered rounds of
//!   [`Owned::rounds`] ([`crate::cas`]), whose end is the fleet's one 409.
//!
//! So no service writes `version` or `outbox` itself, nor wakes the relay.

use anyhow::Context as _;
use mongodb::{
    Collection,
    bson::{self, Bson, Document, doc, oid::ObjectId},
    options::ReturnDocument,
};
use serde::{Serialize, de::DeserializeOwned};

use crate::{
    cas,
    events::Event,
    mongo::DuplicateKey as _,
    outbox::{self, Outbox},
};

/// A document a service owns.
pub trait Record: Serialize + DeserializeOwned + Send + Sync + Unpin + 'static {
    /// What kind of record it is (`ticket`, `order`): the 409's message
    /// names it.
    const KIND: &'static str;

    fn id(&self) -> ObjectId;
}

/// A record other services follow by its version (DESIGN §4).
pub trait Versioned: Record {
    /// 0 when created, +1 on every change other services see.
    fn version(&self) -> i64;
}

/// One write to a record (see the module docs).
#[derive(Debug, Clone)]
pub struct Change {
    update: Document,
    conditions: Document,
    new_version: bool,
    event: Option<Document>,
}

impl Change {
    /// `update` (`$set`, `$unset`, `$push`, …) alone: no new version and no
    /// event, for what no other service follows.
    pub fn bookkeeping(update: Document) -> Self {
        Self {
            update,
            conditions: Document::new(),
            new_version: false,
            event: None,
        }
    }

    /// `update`, a new version, and no event (nothing consumes it).
    pub fn new_version(update: Document) -> Self {
        Self {
            new_version: true,
            ..Self::bookkeeping(update)
        }
    }

    /// `update`, a new version, and `event` pushed into the outbox.
    pub fn announced<E: Event>(update: Document, event: &E) -> anyhow::Result<Self> {
        Self::new_version(update).with_event(event)
    }

    /// This change with `event` pushed into the outbox too (alone, for a
    /// record without versions: its conditions guard it instead).
    pub fn with_event<E: Event>(mut self, event: &E) -> anyhow::Result<Self> {
        self.event = Some(outbox::push(event)?);
        Ok(self)
    }

    /// The write applies only if the record also matches `conditions` (on
    /// top of its id and version); otherwise it is a lost race.
    pub fn only_if(mut self, conditions: Document) -> Self {
        self.conditions.extend(conditions);
        self
    }

    /// Whether the change leaves an event for the relay.
    pub fn announces(&self) -> bool {
        self.event.is_some()
    }

    fn into_update(self) -> (Document, Document) {
        let mut update = self.update;
        if self.new_version {
            match update.get_document_mut("$inc") {
                Ok(inc) => {
                    inc.insert("version", 1_i64);
                }
                Err(_) => {
                    update.insert("$inc", doc! { "version": 1_i64 });
                }
            }
        }
        if let Some(entry) = self.event {
            match update.get_document_mut("$push") {
                Ok(pushed) => pushed.extend(entry),
                Err(_) => {
                    update.insert("$push", entry);
                }
            }
        }
        (self.conditions, update)
    }
}

/// What deciding on a record's current state comes to, in [`Owned::modify`].
// Returned by value once per round and moved straight into the write: a
// box would only add an allocation per write.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Step<R> {
    /// Write this change, on the version it was decided on.
    Write(Change),
    /// Nothing to write: the answer is `R`.
    Done(R),
}

/// How an [`Owned::modify`] ended.
#[derive(Debug)]
pub enum Modified<T, R> {
    /// The change was written: the record as it is now.
    Written(T),
    /// The decision was to write nothing, with this answer.
    Done(R),
    /// There is no such record.
    Missing,
}

/// The collection of a service's own records of type `T`.
#[derive(Debug, Clone)]
pub struct Owned<T: Send + Sync> {
    records: Collection<T>,
    outbox: Outbox,
    rounds: u32,
}

impl<T: Versioned> Owned<T> {
    /// Writes `change` if the record is still at `current`'s version (and
    /// matches the change's conditions), waking the relay if it announces
    /// an event. The record as written, or `None` on a lost race (or if it
    /// is gone): the caller reads it again and decides again.
    pub async fn write(&self, current: &T, change: Change) -> anyhow::Result<Option<T>> {
        self.update(
            current.id(),
            change.only_if(doc! { "version": current.version() }),
        )
        .await
    }

    /// Read → decide → compare-and-set, in the bounded rounds of
    /// [`Owned::rounds`]: `decide` sees the record (`current` if the caller
    /// has just read it, else what `read(id)` finds) and answers, or picks a
    /// change that is written on the version it was decided on. A lost race
    /// reads the record again and decides again; running out of rounds is
    /// [`cas::Contended`], the fleet's 409.
    ///
    /// `decide` may run several times and must decide from the record it is
    /// given only.
    pub async fn modify<R, E, Fut>(
        &self,
        id: ObjectId,
        mut current: Option<T>,
        read: impl Fn(ObjectId) -> Fut,
        mut decide: impl FnMut(&T) -> Result<Step<R>, E>,
    ) -> Result<Modified<T, R>, E>
    where
        Fut: Future<Output = mongodb::error::Result<Option<T>>>,
        E: From<mongodb::error::Error> + From<anyhow::Error> + From<cas::Contended>,
    {
        let mut rounds = self.rounds(id);
        loop {
            let record = match current.take() {
                Some(record) => record,
                None => match read(id).await? {
                    Some(record) => record,
                    None => return Ok(Modified::Missing),
                },
            };
            match decide(&record)? {
                Step::Done(answer) => return Ok(Modified::Done(answer)),
                Step::Write(change) => {
                    if let Some(written) = self.write(&record, change).await? {
                        return Ok(Modified::Written(written));
                    }
                }
            }
            rounds.lost().await?;
        }
    }
}

impl<T: Record> Owned<T> {
    /// `outbox` is woken after every write that leaves an event behind.
    pub fn new(records: Collection<T>, outbox: Outbox) -> Self {
        Self {
            records,
            outbox,
            rounds: cas::MAX_ROUNDS,
        }
    }

    /// The same collection, a compare-and-set giving up after `rounds`
    /// rounds (tests use it to run out on purpose).
    pub fn with_rounds(mut self, rounds: u32) -> Self {
        self.rounds = rounds.max(1);
        self
    }

    /// The rounds of one compare-and-set on record `id`.
    pub fn rounds(&self, id: ObjectId) -> cas::Rounds {
        cas::Rounds::bounded(T::KIND, id, self.rounds)
    }

    /// Inserts `record` with `event` as its outbox's one entry, and wakes
    /// the relay; `false` (nothing written) if a record with its id exists.
    pub async fn insert<E: Event>(&self, record: &T, event: &E) -> anyhow::Result<bool> {
        let document =
            bson::to_document(record).with_context(|| format!("failed to encode a {}", T::KIND))?;
        let inserted = self
            .records
            .clone_with_type::<Document>()
            .insert_one(outbox::with_event(document, event)?)
            .await
            .unless_duplicate()
            .with_context(|| format!("failed to insert {} {}", T::KIND, record.id()))?;
        if inserted.is_some() {
            self.outbox.wake(record.id());
        }
        Ok(inserted.is_some())
    }

    /// Writes `change` to record `id` if it matches the change's
    /// conditions, waking the relay if it announces an event. The record as
    /// written, or `None` if it did not match (or is gone).
    pub async fn update(&self, id: ObjectId, change: Change) -> anyhow::Result<Option<T>> {
        let announces = change.announces();
        let (conditions, update) = change.into_update();
        let mut filter = doc! { "_id": id };
        filter.extend(conditions);
        let written = self
            .records
            .find_one_and_update(filter, update)
            .return_document(ReturnDocument::After)
            .await
            .with_context(|| format!("failed to update {} {id}", T::KIND))?;
        if announces && let Some(written) = &written {
            self.outbox.wake(written.id());
        }
        Ok(written)
    }

    /// Wakes the relay for record `id`, whose outbox may hold an event that
    /// no call here reported written (an insert whose answer was lost).
    pub fn wake(&self, id: ObjectId) {
        self.outbox.wake(id);
    }
}

/// The condition "field `name` is `value`, or absent when `None`": for a
/// change that must not apply if an optional field changed under it.
pub fn same_optional(name: &str, value: Option<&str>) -> Document {
    let expected = value.map_or_else(|| Bson::from(doc! { "$exists": false }), Bson::from);
    doc! { name: expected }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{OrderCancelled, TicketRef};

    fn event() -> OrderCancelled {
        OrderCancelled {
            id: ObjectId::new().to_hex(),
            version: 2,
            ticket: TicketRef {
                id: ObjectId::new().to_hex(),
            },
        }
    }

    #[test]
    fn an_announced_change_bumps_the_version_and_pushes_its_event() {
        let change = Change::announced(
            doc! { "$set": { "status": "cancelled" }, "$push": { "log": 1 } },
            &event(),
        )
        .unwrap()
        .only_if(doc! { "orderId": Bson::Null });
        let (conditions, update) = change.into_update();
        assert_eq!(conditions, doc! { "orderId": Bson::Null });
        assert_eq!(
            update.get_document("$inc").unwrap(),
            &doc! { "version": 1_i64 }
        );
        let pushed = update.get_document("$push").unwrap();
        assert_eq!(pushed.get_i32("log"), Ok(1));
        assert!(pushed.contains_key(outbox::FIELD));
    }

    #[test]
    fn bookkeeping_touches_neither_version_nor_outbox() {
        let (_, update) = Change::bookkeeping(doc! { "$set": { "sold": true } }).into_update();
        assert_eq!(update, doc! { "$set": { "sold": true } });
        let (_, update) = Change::new_version(doc! { "$set": { "a": 1 } }).into_update();
        assert_eq!(
            update,
            doc! { "$set": { "a": 1 }, "$inc": { "version": 1_i64 } }
        );
    }

    #[test]
    fn an_optional_field_is_compared_even_when_absent() {
        assert_eq!(
            same_optional("paymentId", None),
            doc! { "paymentId": { "$exists": false } }
        );
        assert_eq!(
            same_optional("paymentId", Some("p")),
            doc! { "paymentId": "p" }
        );
    }
}
