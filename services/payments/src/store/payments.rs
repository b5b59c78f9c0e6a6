//! The `payments` collection: one document per paid order.
//!
//! `orderId` is unique by index, not only by the handler's "already paid"
//! check: two submits racing for one order both pass the check, both get the
//! same charge back from Stripe (same idempotency key), and the index lets
//! exactly one of them record it. The loser's duplicate-key error is
//! [`InsertError::AlreadyPaid`].
//!
//! A payment is inserted together with its `payment.created` event in the
//! document's `outbox` array — one atomic write — and the [`Relay`] publishes
//! it, so a crash right after the insert still tells the fleet.
//!
//! [`Relay`]: common::outbox::Relay

use anyhow::Context as _;
use common::{events::PaymentCreated, outbox};
use mongodb::{
    Collection, Database, IndexModel,
    bson::{self, Document, doc, oid::ObjectId},
    options::IndexOptions,
};
use serde::{Deserialize, Serialize};

/// A stored payment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Payment {
    #[serde(rename = "_id")]
    pub id: ObjectId,
    /// The paid order (unique).
    pub order_id: ObjectId,
    /// The Stripe charge (`ch_…`).
    pub stripe_id: String,
}

impl Payment {
    /// The event announcing this payment.
    pub fn created_event(&self) -> PaymentCreated {
        PaymentCreated {
            id: self.id.to_hex(),
            order_id: self.order_id.to_hex(),
            stripe_id: self.stripe_id.clone(),
        }
    }
}

/// Why a payment could not be inserted.
#[derive(Debug, thiserror::Error)]
pub enum InsertError {
    #[error("the order already has a payment")]
    AlreadyPaid,
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// The payments collection and its queries.
#[derive(Clone, Debug)]
pub struct Payments {
    payments: Collection<Payment>,
}

impl Payments {
    pub fn new(db: &Database) -> Self {
        Self {
            payments: db.collection("payments"),
        }
    }

    /// The collection as raw documents, for the outbox relay.
    pub fn outbox_collection(&self) -> Collection<Document> {
        self.payments.clone_with_type()
    }

    /// Creates the unique index on `orderId` (idempotent).
    pub async fn ensure_indexes(&self) -> mongodb::error::Result<()> {
        let index = IndexModel::builder()
            .keys(doc! { "orderId": 1 })
            .options(
                IndexOptions::builder()
                    .unique(true)
                    .name("orderId_unique".to_owned())
                    .build(),
            )
            .build();
        self.payments.create_index(index).await?;
        Ok(())
    }

    pub async fn find_by_order(
        &self,
        order_id: ObjectId,
    ) -> mongodb::error::Result<Option<Payment>> {
        self.payments.find_one(doc! { "orderId": order_id }).await
    }

    /// Inserts the payment with its `payment.created` in the outbox, atomically.
    pub async fn insert(&self, payment: &Payment) -> Result<(), InsertError> {
        let mut document = bson::to_document(payment).context("failed to encode a payment")?;
        document.insert(
            outbox::FIELD,
            vec![outbox::OutboxEvent::of(&payment.created_event())?.to_bson()?],
        );
        match self.outbox_collection().insert_one(document).await {
            Ok(_) => Ok(()),
            Err(err) if common::mongo::is_duplicate_key(&err) => Err(InsertError::AlreadyPaid),
            Err(err) => Err(anyhow::Error::new(err)
                .context("failed to insert a payment")
                .into()),
        }
    }
}
