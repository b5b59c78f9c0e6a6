//! The typed event catalogue: one Rust type per subject (DESIGN §4).
//!
//! Every event the fleet exchanges is a struct here that implements [`Event`]: it
//! knows its subject, its schema version and its deterministic message id, so
//! publishing and consuming go through [`crate::bus`] with types, never with subject
//! strings or hand-built JSON.
//!
//! # Wire format
//!
//! The payloads are exactly the original Node app's camelCase JSON (`userId`,
//! `expiresAt`, `ticket: {id, price}`), with prices as [`Money`] (a JSON number with at
//! most two decimals) and `expiresAt` written like JavaScript's `toISOString()`
//! (`2026-01-02T03:04:05.678Z`, see [`iso_millis`]). Ids are 24-hex ObjectId strings.
//!
//! # Ids are checked at the edge
//!
//! The id of every record an event names (the ticket, the order) is read
//! through [`object_id`]: a payload whose id is not a 24-hex ObjectId does
//! not decode, so the listener runner terminates it and counts it
//! `terminated` (DESIGN §4: a message that can never be handled), instead of
//! a handler acking it as if it had been handled. A handler turns the
//! checked id into an [`ObjectId`] with [`parse_id`].
//!
//! Unknown fields are ignored when reading, so adding an optional field is a
//! compatible change. A change that old consumers would misread (a renamed or
//! retyped field, a new meaning) bumps the type's [`Event::SCHEMA_VERSION`]; the
//! version travels in a message header, not in the payload, so the payload stays
//! the original shape (see [`crate::bus`]).
//!
//! # Message ids
//!
//! [`Event::message_id`] is deterministic: event type + record id (+ version for
//! records that change), e.g. `ticket.updated:<id>:<version>`. JetStream drops a
//! second publish with the same id inside the stream's duplicate window, so a
//! publish retried by the outbox relay, or by two replicas racing, is stored once.

use chrono::{DateTime, Utc};
use mongodb::bson::oid::ObjectId;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::money::Money;

/// An event type: its payload, the subject it travels on and its schema version.
pub trait Event: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The subject, without any test prefix (`ticket.created`).
    const SUBJECT: &'static str;

    /// The version of the payload's schema, sent in a header. Bump it on an
    /// incompatible change of the payload.
    const SCHEMA_VERSION: u32;

    /// The deterministic JetStream message id (`Nats-Msg-Id`) of this event:
    /// publishing the same change twice yields the same id, so it is stored once.
    fn message_id(&self) -> String;

    /// Whether a consumer of this type can read a payload of schema `version`.
    /// Anything else is terminated as a message that can never be handled. Override
    /// it while migrating, to accept the previous version too.
    fn accepts_schema_version(version: u32) -> bool {
        version == Self::SCHEMA_VERSION
    }
}

/// The life cycle of an order, serialised as the original's strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub enum OrderStatus {
    /// Created; the ticket is reserved, not paid yet.
    #[serde(rename = "created")]
    Created,
    /// Waiting for the payment to go through.
    #[serde(rename = "awaiting:payment")]
    AwaitingPayment,
    /// Cancelled by the buyer or expired; the ticket is released.
    #[serde(rename = "cancelled")]
    Cancelled,
    /// Paid; the ticket is sold.
    #[serde(rename = "complete")]
    Complete,
}

impl OrderStatus {
    /// The wire string: `created`, `awaiting:payment`, `cancelled`, `complete`.
    pub const fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Created => "created",
            OrderStatus::AwaitingPayment => "awaiting:payment",
            OrderStatus::Cancelled => "cancelled",
            OrderStatus::Complete => "complete",
        }
    }

    /// Not paid and not cancelled yet: the order holds its ticket and can be
    /// paid (`created` or `awaiting:payment`).
    pub const fn is_open(self) -> bool {
        matches!(self, OrderStatus::Created | OrderStatus::AwaitingPayment)
    }
}

impl std::fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `ticket.created`: a ticket was listed for sale. Published by tickets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TicketCreated {
    /// The ticket's id.
    #[serde(deserialize_with = "object_id::deserialize")]
    pub id: String,
    /// The ticket's version (0 for a new ticket).
    pub version: i64,
    /// The ticket's title.
    pub title: String,
    /// The ticket's price.
    pub price: Money,
    /// The seller's user id.
    pub user_id: String,
}

impl Event for TicketCreated {
    const SUBJECT: &'static str = "ticket.created";
    const SCHEMA_VERSION: u32 = 1;

    fn message_id(&self) -> String {
        format!("{}:{}:{}", Self::SUBJECT, self.id, self.version)
    }
}

/// `ticket.updated`: a ticket's title, price or reservation changed. Published by
/// tickets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TicketUpdated {
    /// The ticket's id.
    #[serde(deserialize_with = "object_id::deserialize")]
    pub id: String,
    /// The ticket's new version.
    pub version: i64,
    /// The ticket's title.
    pub title: String,
    /// The ticket's price.
    pub price: Money,
    /// The seller's user id.
    pub user_id: String,
    /// The order reserving the ticket; omitted from the JSON when there is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_id: Option<String>,
    /// The seller took the ticket off sale: it can no longer be ordered, and
    /// an order for it that the ticket never reserved is to be cancelled.
    /// Sent only when true (`"withdrawn": true`), an additive field that
    /// consumers which do not know it ignore; absent reads as false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub withdrawn: bool,
}

impl Event for TicketUpdated {
    const SUBJECT: &'static str = "ticket.updated";
    const SCHEMA_VERSION: u32 = 1;

    fn message_id(&self) -> String {
        format!("{}:{}:{}", Self::SUBJECT, self.id, self.version)
    }
}

/// The ticket inside [`OrderCreated`]: `{id, price}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderTicket {
    /// The ticket's id.
    #[serde(deserialize_with = "object_id::deserialize")]
    pub id: String,
    /// The ticket's price when the order was created.
    pub price: Money,
}

/// `order.created`: a buyer reserved a ticket until `expires_at`. Published by
/// orders.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderCreated {
    /// The order's id.
    #[serde(deserialize_with = "object_id::deserialize")]
    pub id: String,
    /// The order's version (0 for a new order).
    pub version: i64,
    /// The order's status (`created`).
    pub status: OrderStatus,
    /// The buyer's user id.
    pub user_id: String,
    /// When the reservation expires, as `2026-01-02T03:04:05.678Z`.
    #[serde(with = "iso_millis")]
    pub expires_at: DateTime<Utc>,
    /// The reserved ticket.
    pub ticket: OrderTicket,
}

impl Event for OrderCreated {
    const SUBJECT: &'static str = "order.created";
    const SCHEMA_VERSION: u32 = 1;

    fn message_id(&self) -> String {
        format!("{}:{}:{}", Self::SUBJECT, self.id, self.version)
    }
}

/// A reference to a ticket: `{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TicketRef {
    /// The ticket's id.
    #[serde(deserialize_with = "object_id::deserialize")]
    pub id: String,
}

/// `order.cancelled`: an order was cancelled (by the buyer or by expiration) and
/// its ticket is released. Published by orders.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderCancelled {
    /// The order's id.
    #[serde(deserialize_with = "object_id::deserialize")]
    pub id: String,
    /// The order's new version.
    pub version: i64,
    /// The ticket the order had reserved.
    pub ticket: TicketRef,
}

impl Event for OrderCancelled {
    const SUBJECT: &'static str = "order.cancelled";
    const SCHEMA_VERSION: u32 = 1;

    fn message_id(&self) -> String {
        format!("{}:{}:{}", Self::SUBJECT, self.id, self.version)
    }
}

/// `expiration.complete`: an order's reservation window is over. Published by
/// expiration; at most once per order, so the id is the order's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExpirationComplete {
    /// The expired order's id.
    #[serde(deserialize_with = "object_id::deserialize")]
    pub order_id: String,
}

impl Event for ExpirationComplete {
    const SUBJECT: &'static str = "expiration.complete";
    const SCHEMA_VERSION: u32 = 1;

    fn message_id(&self) -> String {
        format!("{}:{}", Self::SUBJECT, self.order_id)
    }
}

/// `payment.created`: an order was paid. Published by payments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentCreated {
    /// The payment's id.
    pub id: String,
    /// The paid order's id.
    #[serde(deserialize_with = "object_id::deserialize")]
    pub order_id: String,
    /// The Stripe charge id.
    pub stripe_id: String,
}

impl Event for PaymentCreated {
    const SUBJECT: &'static str = "payment.created";
    const SCHEMA_VERSION: u32 = 1;

    fn message_id(&self) -> String {
        format!("{}:{}", Self::SUBJECT, self.id)
    }
}

/// Serde for the id of a record an event names: written as the string it
/// is, read only if it is a 24-hex ObjectId (see the module docs).
///
/// `#[serde(deserialize_with = "common::events::object_id::deserialize")] id: String`
pub mod object_id {
    use mongodb::bson::oid::ObjectId;
    use serde::{Deserialize, Deserializer, de};

    /// Reads a string that is a 24-hex ObjectId; anything else is an error.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
        let text = String::deserialize(deserializer)?;
        match ObjectId::parse_str(&text) {
            Ok(_) => Ok(text),
            Err(_) => Err(de::Error::custom(format_args!(
                "invalid id {text:?}: not a 24-hex ObjectId"
            ))),
        }
    }
}

/// The [`ObjectId`] of an id an event names. A decoded event's ids always
/// parse ([`object_id`] checked them); one built by hand that does not is an
/// error — never a silent ack — so the runner retries and then terminates it.
pub fn parse_id(field: &'static str, value: &str) -> anyhow::Result<ObjectId> {
    ObjectId::parse_str(value)
        .map_err(|_| anyhow::anyhow!("event field {field} is not an ObjectId: {value:?}"))
}

/// Serde helpers for timestamps in JavaScript's `Date.prototype.toISOString()`
/// format: UTC, always milliseconds, `Z` (`2026-01-02T03:04:05.678Z`). Reading
/// accepts any RFC 3339 timestamp (any offset, any fraction) and converts it to UTC.
///
/// `#[serde(with = "common::events::iso_millis")] expires_at: DateTime<Utc>`
pub mod iso_millis {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer, de};

    /// Formats `time` like `toISOString()` (sub-millisecond digits are dropped).
    pub fn format(time: &DateTime<Utc>) -> String {
        time.to_rfc3339_opts(SecondsFormat::Millis, true)
    }

    /// Writes `2026-01-02T03:04:05.678Z`.
    pub fn serialize<S: Serializer>(
        time: &DateTime<Utc>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format(time))
    }

    /// Reads any RFC 3339 timestamp.
    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<DateTime<Utc>, D::Error> {
        let text = String::deserialize(deserializer)?;
        DateTime::parse_from_rfc3339(&text)
            .map(|time| time.with_timezone(&Utc))
            .map_err(|err| {
                de::Error::custom(format_args!("invalid RFC 3339 timestamp {text:?}: {err}"))
            })
    }
}
