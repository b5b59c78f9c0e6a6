//! The `orders` collection: payments' replica of the orders service's orders.
//!
//! Only what a payment needs: who may pay (`userId`), how much (`price`, in
//! integer cents), and whether the order can still be paid (`status`). The
//! orders service owns the record and its `version`; this replica follows it
//! with the version rule of DESIGN §4, so redelivered and out-of-order events
//! are harmless.

use common::{events::OrderStatus, money::Money, mongo::DuplicateKey as _};
use mongodb::{
    Collection, Database,
    bson::{doc, oid::ObjectId},
};
use serde::{Deserialize, Serialize};

/// A replicated order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Order {
    #[serde(rename = "_id")]
    pub id: ObjectId,
    /// The orders service's version of the record.
    pub version: i64,
    /// The buyer: the only user who may pay for it.
    pub user_id: String,
    /// The amount to charge.
    #[serde(with = "common::money::as_cents")]
    pub price: Money,
    pub status: OrderStatus,
    /// How many server-side confirms (the legacy `{token}` body) of this
    /// order's intent did not succeed (declined, or 3-D Secure needed). Part
    /// of their Stripe idempotency keys, so that a double submit of one
    /// attempt confirms once while a new card after a decline is a new attempt.
    #[serde(default)]
    pub declined_attempts: i64,
}

/// What a versioned update did (DESIGN §4), shared with every replica.
pub use common::replica::VersionedUpdate;

/// The order replica and its queries.
#[derive(Clone, Debug)]
pub struct Orders {
    orders: Collection<Order>,
}

impl Orders {
    pub fn new(db: &Database) -> Self {
        Self {
            orders: db.collection("orders"),
        }
    }

    pub async fn find(&self, id: ObjectId) -> mongodb::error::Result<Option<Order>> {
        self.orders.find_one(doc! { "_id": id }).await
    }

    /// Inserts a new order; `false` if it is already there (a redelivered
    /// `order.created`), which is left as it is.
    pub async fn insert(&self, order: &Order) -> mongodb::error::Result<bool> {
        Ok(self
            .orders
            .insert_one(order)
            .await
            .unless_duplicate()?
            .is_some())
    }

    /// Records that Stripe declined the attempt `order` was read at, so the
    /// next attempt gets a fresh idempotency key. Conditional on that attempt:
    /// concurrent submits of one declined attempt count it once.
    pub async fn record_decline(&self, order: &Order) -> mongodb::error::Result<()> {
        self.orders
            .update_one(
                doc! { "_id": order.id, "declinedAttempts": order.declined_attempts },
                doc! { "$inc": { "declinedAttempts": 1 } },
            )
            .await?;
        Ok(())
    }

    /// Marks the order cancelled at `version`, if the replica is at
    /// `version − 1` (compare-and-set on the version).
    pub async fn cancel(
        &self,
        id: ObjectId,
        version: i64,
    ) -> mongodb::error::Result<VersionedUpdate> {
        let set = doc! { "status": OrderStatus::Cancelled.as_str() };
        common::replica::apply(&self.orders, id, version, set).await
    }
}
