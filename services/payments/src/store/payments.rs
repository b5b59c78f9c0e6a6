//! The `payments` collection: one document per order, ever, holding that
//! order's one PaymentIntent and where its money is.
//!
//! `orderId` is unique by index: the first request for an order inserts the
//! document (an upsert, so any number of racing requests on any number of
//! replicas end with one), and only then is Stripe asked for the intent, with
//! a key derived from the order — so a crash between Stripe's answer and our
//! write, or two replicas racing, still ends with the one intent, which the
//! next request finds at Stripe and stores.
//!
//! The life of a payment (`status`), every step a compare-and-set on the
//! status it leaves:
//!
//! ```text
//! pending ──(intent succeeded)──▶ succeeded ──(order cancelled)──▶ refunding ──▶ refunded
//!    │                                                               ▲
//!    └──(order cancelled)──▶ cancelling ──▶ cancelled ──(it had succeeded)─┘
//! ```
//!
//! `succeeded` is written together with its `payment.created` event in the
//! document's `outbox` array — one atomic write — and the [`Relay`] publishes
//! it, so a crash right after still tells the fleet. `refunding` and
//! `cancelling` are the durable intent to call Stripe: whoever finds a payment
//! there (the next webhook, the order listener, the periodic sweep) finishes
//! the call with the same idempotency key.
//!
//! [`Relay`]: common::outbox::Relay

use anyhow::Context as _;
use common::{
    events::PaymentCreated,
    money::Money,
    mongo::DuplicateKey as _,
    outbox::Outbox,
    owned::{Change, Owned, Record},
    wire,
};
use futures::TryStreamExt as _;
use mongodb::{
    Collection, Database, IndexModel,
    bson::{self, Bson, Document, doc, oid::ObjectId},
    options::{IndexOptions, ReturnDocument},
};
use serde::{Deserialize, Serialize};

/// Where a payment is (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PaymentStatus {
    Pending,
    Succeeded,
    Refunding,
    Refunded,
    Cancelling,
    Cancelled,
}

impl PaymentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Succeeded => "succeeded",
            Self::Refunding => "refunding",
            Self::Refunded => "refunded",
            Self::Cancelling => "cancelling",
            Self::Cancelled => "cancelled",
        }
    }

    /// The status the API shows. A refund or a cancel under way shows where
    /// the money is until Stripe has confirmed it.
    pub fn public(self) -> wire::PaymentStatus {
        match self {
            Self::Pending | Self::Cancelling => wire::PaymentStatus::Pending,
            Self::Succeeded | Self::Refunding => wire::PaymentStatus::Succeeded,
            Self::Refunded => wire::PaymentStatus::Refunded,
            Self::Cancelled => wire::PaymentStatus::Cancelled,
        }
    }
}

impl From<PaymentStatus> for Bson {
    fn from(status: PaymentStatus) -> Self {
        Bson::String(status.as_str().to_owned())
    }
}

/// A stored payment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Payment {
    #[serde(rename = "_id")]
    pub id: ObjectId,
    /// The order (unique).
    pub order_id: ObjectId,
    /// The buyer, who alone may see it.
    pub user_id: String,
    /// The intent's amount.
    #[serde(with = "common::money::as_cents")]
    pub amount: Money,
    pub status: PaymentStatus,
    /// The order's PaymentIntent (`pi_…`), once Stripe has answered.
    #[serde(default)]
    pub payment_intent_id: Option<String>,
    /// What the browser confirms the intent with.
    #[serde(default)]
    pub client_secret: Option<String>,
    /// Why the last attempt failed (Stripe's message for the buyer).
    #[serde(default)]
    pub last_error: Option<String>,
    /// The refund (`re_…`) of money that arrived for a cancelled order.
    #[serde(default)]
    pub refund_id: Option<String>,
}

impl Record for Payment {
    const KIND: &'static str = "payment";

    fn id(&self) -> ObjectId {
        self.id
    }
}

impl Payment {
    /// A new pending payment of `order_id`.
    pub fn new(order_id: ObjectId, user_id: &str, amount: Money) -> Self {
        Self {
            id: ObjectId::new(),
            order_id,
            user_id: user_id.to_owned(),
            amount,
            status: PaymentStatus::Pending,
            payment_intent_id: None,
            client_secret: None,
            last_error: None,
            refund_id: None,
        }
    }

    /// The event announcing that this payment succeeded.
    pub fn created_event(&self, payment_intent_id: &str) -> PaymentCreated {
        PaymentCreated {
            id: self.id.to_hex(),
            order_id: self.order_id.to_hex(),
            stripe_id: payment_intent_id.to_owned(),
        }
    }
}

/// The collection's name (the outbox relay reads it too).
pub const COLLECTION: &str = "payments";

/// The payments collection, the handled Stripe events, and their queries.
#[derive(Clone, Debug)]
pub struct Payments {
    payments: Collection<Payment>,
    events: Collection<Document>,
    /// The same collection, for the write that announces a payment.
    owned: Owned<Payment>,
}

impl Payments {
    /// `outbox` is woken after every write that leaves an event behind.
    pub fn new(db: &Database, outbox: Outbox) -> Self {
        Self {
            payments: db.collection(COLLECTION),
            events: db.collection("stripe_events"),
            owned: Owned::new(db.collection(COLLECTION), outbox),
        }
    }

    /// The collection untyped, for the outbox relay.
    pub fn raw_collection(db: &Database) -> Collection<Document> {
        db.collection(COLLECTION)
    }

    /// Creates the unique index on `orderId` and the index on the intent
    /// (idempotent).
    pub async fn ensure_indexes(&self) -> mongodb::error::Result<()> {
        let unique = IndexModel::builder()
            .keys(doc! { "orderId": 1 })
            .options(
                IndexOptions::builder()
                    .unique(true)
                    .name("orderId_unique".to_owned())
                    .build(),
            )
            .build();
        let by_intent = IndexModel::builder()
            .keys(doc! { "paymentIntentId": 1 })
            .build();
        let by_status = IndexModel::builder().keys(doc! { "status": 1 }).build();
        self.payments
            .create_indexes([unique, by_intent, by_status])
            .await?;
        Ok(())
    }

    pub async fn find(&self, id: ObjectId) -> mongodb::error::Result<Option<Payment>> {
        self.payments.find_one(doc! { "_id": id }).await
    }

    pub async fn find_by_order(
        &self,
        order_id: ObjectId,
    ) -> mongodb::error::Result<Option<Payment>> {
        self.payments.find_one(doc! { "orderId": order_id }).await
    }

    /// The order's payment, inserted as `fresh` if there is none yet; `true`
    /// when this call inserted it. Racing callers all get the one document.
    pub async fn open(&self, fresh: &Payment) -> anyhow::Result<(Payment, bool)> {
        let mut document = bson::to_document(fresh).context("failed to encode a payment")?;
        // The upsert takes `orderId` from the filter.
        document.remove("orderId");
        for _ in 0..3 {
            let result = self
                .payments
                .find_one_and_update(
                    doc! { "orderId": fresh.order_id },
                    doc! { "$setOnInsert": document.clone() },
                )
                .upsert(true)
                .return_document(ReturnDocument::After)
                .await
                // Two upserts raced and the index refused the second: the
                // first one's document is there now.
                .unless_duplicate()
                .context("failed to open a payment")?;
            if let Some(payment) = result.flatten() {
                let inserted = payment.id == fresh.id;
                return Ok((payment, inserted));
            }
        }
        self.find_by_order(fresh.order_id)
            .await
            .context("failed to read a payment")?
            .map(|payment| (payment, false))
            .context("the payment of an order vanished")
    }

    /// Stores the order's intent if none is stored yet; the document after
    /// (with whichever intent was stored first — the same one, since every
    /// replica asks Stripe with the same key) and whether this call stored it.
    pub async fn attach_intent(
        &self,
        id: ObjectId,
        intent_id: &str,
        client_secret: Option<&str>,
    ) -> anyhow::Result<(Payment, bool)> {
        let stored = self
            .payments
            .find_one_and_update(
                doc! { "_id": id, "paymentIntentId": Bson::Null },
                doc! { "$set": { "paymentIntentId": intent_id, "clientSecret": client_secret } },
            )
            .return_document(ReturnDocument::After)
            .await
            .context("failed to store a payment intent")?;
        if let Some(payment) = stored {
            return Ok((payment, true));
        }
        let payment = self
            .find(id)
            .await
            .context("failed to read a payment")?
            .context("a payment vanished")?;
        Ok((payment, false))
    }

    /// `pending` → `succeeded` with `payment.created` in the outbox, in one
    /// write, and the relay woken; `None` if the payment was not pending (a
    /// duplicate, or it was cancelled meanwhile).
    pub async fn mark_succeeded(
        &self,
        payment: &Payment,
        intent_id: &str,
    ) -> anyhow::Result<Option<Payment>> {
        let change = Change::bookkeeping(doc! {
            "$set": { "status": PaymentStatus::Succeeded, "paymentIntentId": intent_id, "lastError": Bson::Null },
        })
        .with_event(&payment.created_event(intent_id))?
        .only_if(doc! { "status": PaymentStatus::Pending });
        self.owned
            .update(payment.id, change)
            .await
            .context("failed to record a successful payment")
    }

    /// Records why an attempt failed, while the payment is still pending.
    pub async fn record_failure(&self, id: ObjectId, message: &str) -> anyhow::Result<()> {
        self.payments
            .update_one(
                doc! { "_id": id, "status": PaymentStatus::Pending },
                doc! { "$set": { "lastError": message } },
            )
            .await
            .context("failed to record a failed payment")?;
        Ok(())
    }

    /// Moves the payment from one of `from` to `to`; the document after, or
    /// `None` if it was elsewhere.
    pub async fn transition(
        &self,
        id: ObjectId,
        from: &[PaymentStatus],
        to: PaymentStatus,
        also: Document,
    ) -> anyhow::Result<Option<Payment>> {
        let mut set = doc! { "status": to };
        set.extend(also);
        self.payments
            .find_one_and_update(
                doc! { "_id": id, "status": { "$in": from.iter().map(|s| Bson::from(*s)).collect::<Vec<_>>() } },
                doc! { "$set": set },
            )
            .return_document(ReturnDocument::After)
            .await
            .with_context(|| format!("failed to move a payment to {}", to.as_str()))
    }

    /// A pending payment that never got an intent: straight to `cancelled`.
    pub async fn cancel_without_intent(&self, id: ObjectId) -> anyhow::Result<bool> {
        let result = self
            .payments
            .update_one(
                doc! { "_id": id, "status": PaymentStatus::Pending, "paymentIntentId": Bson::Null },
                doc! { "$set": { "status": PaymentStatus::Cancelled, "clientSecret": Bson::Null } },
            )
            .await
            .context("failed to cancel a payment")?;
        Ok(result.modified_count == 1)
    }

    /// Payments left half-way (`refunding`, `cancelling`) by a failure or a
    /// crash, for the sweep.
    pub async fn unfinished(&self) -> anyhow::Result<Vec<Payment>> {
        self.payments
            .find(
                doc! { "status": { "$in": [PaymentStatus::Refunding, PaymentStatus::Cancelling] } },
            )
            .await
            .context("failed to list unfinished payments")?
            .try_collect()
            .await
            .context("failed to list unfinished payments")
    }

    /// Whether the Stripe event `id` has been handled.
    pub async fn event_seen(&self, id: &str) -> anyhow::Result<bool> {
        Ok(self
            .events
            .find_one(doc! { "_id": id })
            .await
            .context("failed to read the handled Stripe events")?
            .is_some())
    }

    /// Records the Stripe event `id` as handled (a repeat is fine).
    pub async fn remember_event(&self, id: &str, kind: &str) -> anyhow::Result<()> {
        let now = bson::DateTime::now();
        // Already recorded (a replay): nothing more to remember.
        self.events
            .insert_one(doc! { "_id": id, "type": kind, "handledAt": now })
            .await
            .unless_duplicate()
            .context("failed to record a Stripe event")?;
        Ok(())
    }
}
