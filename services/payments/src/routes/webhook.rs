//! `POST /api/payments/webhook`: what Stripe tells us about the intents.
//!
//! Public (Stripe calls it through the ingress), so nothing in the body is
//! believed before its `Stripe-Signature` checks out: `t=<unix time>` and one
//! or more `v1=<hex HMAC-SHA256 of "<t>.<raw body>">` under
//! `STRIPE_WEBHOOK_SECRET`, compared in constant time, and `t` no more than
//! [`TOLERANCE`] away from now (a replayed old delivery is refused). A
//! missing, forged or stale signature, or a body that is not an event, is a
//! 400 in the errors shape and changes nothing.
//!
//! Stripe delivers at least once, possibly late, duplicated or out of order,
//! so every event is handled idempotently and its id is stored once handled:
//! a replay answers 200 and changes nothing. The id is stored *after* the
//! handling, so a crash in between makes Stripe deliver it again (it got no
//! 2xx) and the handling — compare-and-set moves, idempotency keys at Stripe
//! — runs again without doing anything twice.
//!
//! - `payment_intent.succeeded` → [`Settle::succeeded`]: the payment
//!   succeeds with its `payment.created` (the order completes), or the money
//!   of a cancelled order is refunded.
//! - `payment_intent.payment_failed` → the reason is recorded; the order
//!   stays payable.
//! - anything else → 200, ignored.
//!
//! [`Settle::succeeded`]: crate::settle::Settle::succeeded

use std::time::Duration;

use axum::{body::Bytes, extract::State, http::HeaderMap};
use common::{Error, Result, error::ErrorBody, error::Json};
use hmac::{Hmac, Mac};
use mongodb::bson::oid::ObjectId;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Sha256;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::AppState;

/// How far a signature's timestamp may be from now (Stripe's default).
pub const TOLERANCE: Duration = Duration::from_secs(300);

/// The route and its OpenAPI description.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(webhook))
}

/// Why a delivery is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("Missing Stripe-Signature header")]
    Missing,
    #[error("Malformed Stripe-Signature header")]
    Malformed,
    #[error("Stripe-Signature timestamp outside the tolerance")]
    Stale,
    #[error("Stripe-Signature does not match the payload")]
    Mismatch,
}

/// Checks `header` (the `Stripe-Signature` value) for `payload` under
/// `secret` at `now` (unix seconds).
pub fn verify_signature(
    secret: &str,
    header: Option<&str>,
    payload: &[u8],
    now: i64,
) -> std::result::Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) => timestamp = value.parse::<i64>().ok(),
            Some(("v1", value)) => {
                if let Ok(bytes) = hex::decode(value) {
                    signatures.push(bytes);
                }
            }
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
    if signatures.is_empty() {
        return Err(SignatureError::Malformed);
    }
    let tolerance = i64::try_from(TOLERANCE.as_secs()).unwrap_or(i64::MAX);
    if (now - timestamp).abs() > tolerance {
        return Err(SignatureError::Stale);
    }
    // The payload is hashed once however many `v1` entries the header has;
    // each is then compared in constant time.
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).map_err(|_| SignatureError::Mismatch)?;
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(payload);
    if signatures
        .iter()
        .any(|signature| mac.clone().verify_slice(signature).is_ok())
    {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// The part of a Stripe event we read.
#[derive(Debug, Deserialize, ToSchema)]
struct Event {
    /// `evt_…`.
    id: String,
    /// `payment_intent.succeeded`, …
    #[serde(rename = "type")]
    kind: String,
    #[schema(value_type = Object)]
    data: EventData,
}

#[derive(Debug, Deserialize)]
struct EventData {
    object: Value,
}

/// The answer to Stripe.
#[derive(Debug, Serialize, ToSchema)]
struct Received {
    received: bool,
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// `POST /api/payments/webhook` — 200 once the event is handled (or was).
#[utoipa::path(
    post,
    path = "/api/payments/webhook",
    tag = "payments",
    request_body(content = Object, description = "A Stripe event, signed in the `Stripe-Signature` header"),
    responses(
        (status = 200, description = "Handled now or before, or ignored", body = Received),
        (status = 400, description = "Missing, forged or stale signature, or a body that is not a Stripe event; nothing changed", body = ErrorBody),
        (status = 500, description = "Not handled this time; Stripe delivers it again", body = ErrorBody),
    ),
)]
#[tracing::instrument(skip_all, fields(event_id, event_type))]
async fn webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Received>> {
    let signature = headers
        .get("stripe-signature")
        .and_then(|value| value.to_str().ok());
    if let Err(err) = verify_signature(state.webhook_secret.expose(), signature, &body, now()) {
        tracing::warn!(reason = %err, "webhook refused");
        return Err(Error::bad_request(format!("Invalid webhook: {err}")));
    }
    let event: Event = serde_json::from_slice(&body)
        .ok()
        .filter(|event: &Event| !event.id.is_empty())
        .ok_or_else(|| Error::bad_request("Invalid webhook: the body is not a Stripe event"))?;
    tracing::Span::current()
        .record("event_id", event.id.as_str())
        .record("event_type", event.kind.as_str());

    if state.payments.event_seen(&event.id).await? {
        tracing::debug!("event handled before; ignored");
        return Ok(Json(Received { received: true }));
    }
    match event.kind.as_str() {
        "payment_intent.succeeded" => succeeded(&state, &event.data.object).await?,
        "payment_intent.payment_failed" => failed(&state, &event.data.object).await?,
        _ => tracing::debug!("event type not used; ignored"),
    }
    state
        .payments
        .remember_event(&event.id, &event.kind)
        .await?;
    Ok(Json(Received { received: true }))
}

/// The payment an intent belongs to: by `metadata.orderId`, checked against
/// the intent we stored (if any).
async fn payment_of(
    state: &AppState,
    intent: &Value,
) -> Result<Option<(crate::store::Payment, String)>> {
    let Some(intent_id) = intent["id"].as_str() else {
        return Err(Error::bad_request(
            "Invalid webhook: the event has no payment intent",
        ));
    };
    let Some(order_id) = intent["metadata"]["orderId"]
        .as_str()
        .and_then(|id| ObjectId::parse_str(id).ok())
    else {
        tracing::info!(
            payment_intent = intent_id,
            "intent of no order of ours; ignored"
        );
        return Ok(None);
    };
    let Some(payment) = state.payments.find_by_order(order_id).await? else {
        tracing::warn!(payment_intent = intent_id, %order_id, "intent of an unknown order; ignored");
        return Ok(None);
    };
    if let Some(stored) = &payment.payment_intent_id
        && stored != intent_id
    {
        tracing::error!(payment_intent = intent_id, stored = %stored, %order_id, "a second intent for an order; ignored");
        return Ok(None);
    }
    Ok(Some((payment, intent_id.to_owned())))
}

async fn succeeded(state: &AppState, intent: &Value) -> Result<()> {
    if let Some((payment, intent_id)) = payment_of(state, intent).await? {
        state.settle.succeeded(&payment, &intent_id).await?;
    }
    Ok(())
}

async fn failed(state: &AppState, intent: &Value) -> Result<()> {
    if let Some((payment, _)) = payment_of(state, intent).await? {
        let message = intent["last_payment_error"]["message"]
            .as_str()
            .unwrap_or("Your payment could not be processed");
        state.payments.record_failure(payment.id, message).await?;
        tracing::info!(order_id = %payment.order_id, reason = message, "payment attempt failed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(secret: &str, timestamp: i64, payload: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(format!("{timestamp}.").as_bytes());
        mac.update(payload);
        format!(
            "t={timestamp},v1={}",
            hex::encode(mac.finalize().into_bytes())
        )
    }

    #[test]
    fn accepts_a_signature_of_the_payload_within_the_tolerance() {
        let header = sign("whsec_test", 1_000, b"{}");
        assert_eq!(
            verify_signature("whsec_test", Some(&header), b"{}", 1_000),
            Ok(())
        );
        assert_eq!(
            verify_signature("whsec_test", Some(&header), b"{}", 1_299),
            Ok(())
        );
        // Among several v1 entries (a secret being rolled), one matching is enough.
        let rolled = format!("{header},v1={}", "00".repeat(32));
        assert_eq!(
            verify_signature("whsec_test", Some(&rolled), b"{}", 1_000),
            Ok(())
        );
    }

    #[test]
    fn refuses_missing_malformed_stale_and_forged_signatures() {
        let header = sign("whsec_test", 1_000, b"{}");
        assert_eq!(
            verify_signature("whsec_test", None, b"{}", 1_000),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            verify_signature("whsec_test", Some("v1=abc"), b"{}", 1_000),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify_signature("whsec_test", Some(&header), b"{}", 1_301),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            verify_signature("whsec_test", Some(&header), b"{ }", 1_000),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_signature("whsec_other", Some(&header), b"{}", 1_000),
            Err(SignatureError::Mismatch)
        );
    }
}
