//! The bodies the fleet's HTTP API answers (DESIGN §3), one type each: the
//! service that writes a body serialises it, and every client of the API —
//! the web client, the test kit — deserialises the very same type, so the
//! three cannot drift apart. The OpenAPI schemas come from the same fields.
//!
//! Ids travel as 24-hex strings, money as [`Money`] (a JSON number of
//! dollars), instants as `toISOString()` strings ([`iso_millis`]). Optional
//! fields the services leave out when empty read back as `None`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{
    events::{OrderStatus, iso_millis},
    money::Money,
    openapi,
    session::UserView,
};

/// A user: what sign-up and sign-in answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct User {
    #[schema(value_type = openapi::ObjectId)]
    pub id: String,
    #[schema(example = "buyer@example.com")]
    pub email: String,
}

/// `GET /api/users/currentuser`: who the session says is signed in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CurrentUserBody {
    /// `null` when nobody is signed in (or the token is invalid or expired).
    #[serde(rename = "currentUser")]
    #[schema(required = true)]
    pub current_user: Option<UserView>,
}

/// A ticket: `{id,title,price,userId,version,orderId?,faceValue?,status?}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Ticket {
    #[schema(value_type = openapi::ObjectId)]
    pub id: String,
    #[schema(example = "Concert")]
    pub title: String,
    pub price: Money,
    /// The seller.
    #[schema(value_type = openapi::ObjectId)]
    pub user_id: String,
    /// Bumped by one on every change.
    pub version: i64,
    /// The order that reserves the ticket, if one does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<openapi::ObjectId>, nullable = false)]
    pub order_id: Option<String>,
    /// The price printed on the ticket, if the seller gave it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub face_value: Option<Money>,
    /// Only in the seller's own list (`mine=true`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub status: Option<ListingStatus>,
}

impl Ticket {
    /// Whether an order holds it.
    pub fn is_reserved(&self) -> bool {
        self.order_id.is_some()
    }

    /// Where it stands in its seller's list (`available` where not given).
    pub fn listing_status(&self) -> ListingStatus {
        self.status.unwrap_or(ListingStatus::Available)
    }

    /// Whether its seller may withdraw it now: for sale and not reserved.
    pub fn can_withdraw(&self) -> bool {
        self.listing_status() == ListingStatus::Available && !self.is_reserved()
    }
}

/// Where a seller's ticket stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum ListingStatus {
    /// For sale.
    Available,
    /// An order holds it while its buyer pays.
    Reserved,
    /// Its order is paid.
    Sold,
}

impl ListingStatus {
    /// As on the wire: `available`, `reserved`, `sold`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Available => "available",
            Self::Reserved => "reserved",
            Self::Sold => "sold",
        }
    }
}

/// An order: `{id,userId,status,expiresAt,version,cancelReason?,ticket}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Order {
    #[schema(value_type = openapi::ObjectId)]
    pub id: String,
    /// The buyer.
    #[schema(value_type = openapi::ObjectId)]
    pub user_id: String,
    pub status: OrderStatus,
    /// When the reservation ends unless paid (RFC 3339, UTC).
    #[serde(with = "iso_millis")]
    #[schema(value_type = String, format = DateTime, example = "2024-05-01T12:15:00.000Z")]
    pub expires_at: DateTime<Utc>,
    pub version: i64,
    /// Why it was cancelled, when neither the buyer nor the clock did it
    /// (`The seller withdrew this ticket`); absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub cancel_reason: Option<String>,
    /// `null` only if the orders service's replica lost the ticket (as the
    /// original's `populate` would show it).
    #[schema(required = true)]
    pub ticket: Option<OrderTicket>,
}

/// The ordered ticket, as the orders service knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OrderTicket {
    #[schema(value_type = openapi::ObjectId)]
    pub id: String,
    pub title: String,
    pub price: Money,
    pub version: i64,
}

/// An order's payment: `{id,orderId,status,amount,paymentIntentId,clientSecret?,lastError?}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Payment {
    #[schema(value_type = openapi::ObjectId)]
    pub id: String,
    #[schema(value_type = openapi::ObjectId)]
    pub order_id: String,
    pub status: PaymentStatus,
    /// In cents.
    pub amount: i64,
    /// The order's PaymentIntent (`pi_…`).
    pub payment_intent_id: Option<String>,
    /// What Stripe.js confirms the intent with; only while it is payable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
    /// Why the last attempt failed, for the buyer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// Where a payment stands, as the API shows it: a refund or a cancel under
/// way shows where the money is until Stripe has confirmed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum PaymentStatus {
    /// Not paid yet: it can be paid.
    Pending,
    /// Paid.
    Succeeded,
    /// Paid, then refunded.
    Refunded,
    /// Never paid, and no longer payable.
    Cancelled,
}

impl PaymentStatus {
    /// As on the wire: `pending`, `succeeded`, `refunded`, `cancelled`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Succeeded => "succeeded",
            Self::Refunded => "refunded",
            Self::Cancelled => "cancelled",
        }
    }
}

/// `value` as a query string component (the API's `Link` headers, the
/// client's calls and links): RFC 3986's unreserved characters as they are,
/// every other byte `%XX`.
pub fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_ticket_leaves_out_what_it_does_not_have_and_reads_back_the_same() {
        let ticket = Ticket {
            id: "5f8d0d55b54764421b7156c9".into(),
            title: "Concert".into(),
            price: "20.5".parse().unwrap(),
            user_id: "5f8d0d55b54764421b7156ca".into(),
            version: 3,
            order_id: None,
            face_value: None,
            status: None,
        };
        let json = serde_json::to_value(&ticket).unwrap();
        assert_eq!(
            json,
            json!({"id": "5f8d0d55b54764421b7156c9", "title": "Concert", "price": 20.5,
                   "userId": "5f8d0d55b54764421b7156ca", "version": 3})
        );
        assert_eq!(serde_json::from_value::<Ticket>(json).unwrap(), ticket);
        assert_eq!(ticket.listing_status(), ListingStatus::Available);
        assert!(ticket.can_withdraw());
        let reserved = Ticket {
            order_id: Some("5f8d0d55b54764421b7156cb".into()),
            status: Some(ListingStatus::Reserved),
            ..ticket
        };
        assert_eq!(
            serde_json::to_value(&reserved).unwrap()["status"],
            "reserved"
        );
        assert!(!reserved.can_withdraw());
    }

    #[test]
    fn query_components_keep_only_unreserved_characters() {
        assert_eq!(percent_encode("AZaz09-._~"), "AZaz09-._~");
        assert_eq!(percent_encode("radio madi"), "radio%20madi");
        assert_eq!(percent_encode("a&b=c/é"), "a%26b%3Dc%2F%C3%A9");
    }

    #[test]
    fn statuses_are_the_contract_strings() {
        for status in [
            PaymentStatus::Pending,
            PaymentStatus::Succeeded,
            PaymentStatus::Refunded,
            PaymentStatus::Cancelled,
        ] {
            assert_eq!(serde_json::to_value(status).unwrap(), status.as_str());
        }
        for status in [
            ListingStatus::Available,
            ListingStatus::Reserved,
            ListingStatus::Sold,
        ] {
            assert_eq!(serde_json::to_value(status).unwrap(), status.as_str());
        }
    }

    #[test]
    fn an_order_shows_its_expiry_with_milliseconds_and_a_lost_ticket_as_null() {
        let order = Order {
            id: "5f8d0d55b54764421b7156c9".into(),
            user_id: "5f8d0d55b54764421b7156ca".into(),
            status: OrderStatus::AwaitingPayment,
            expires_at: "2026-01-02T03:04:05.678Z".parse().unwrap(),
            version: 1,
            cancel_reason: None,
            ticket: None,
        };
        let json = serde_json::to_value(&order).unwrap();
        assert_eq!(json["expiresAt"], "2026-01-02T03:04:05.678Z");
        assert_eq!(json["status"], "awaiting:payment");
        assert_eq!(json["ticket"], serde_json::Value::Null);
        assert!(json.get("cancelReason").is_none());
        assert_eq!(serde_json::from_value::<Order>(json).unwrap(), order);
    }
}
