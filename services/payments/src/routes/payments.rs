//! `POST /api/payments` and `GET /api/payments?orderId=`: the order's one
//! PaymentIntent.
//!
//! `POST {orderId}` — the checks, in the original app's order: signed in;
//! `orderId` present; the order exists (404), is the caller's (401), is not
//! cancelled and not already paid (400). Then the order's payment document is
//! opened (one per order, by a unique index) and, if it has no intent yet,
//! Stripe is asked for one with a key derived from the order: however many
//! requests race on however many replicas, Stripe makes one intent and every
//! request stores or finds that one. 201 when this request stored it, 200
//! when it was there; the answer carries the `clientSecret` the browser
//! confirms it with (Stripe.js, 3-D Secure included). The outcome arrives by
//! webhook ([`super::webhook`]).
//!
//! `POST {token, orderId}` — the original client's body: the same intent,
//! confirmed here with a payment method made from the card token. Success is
//! recorded at once (the webhook that follows is then a duplicate); a
//! declined card is a 400 with Stripe's message, a card that needs 3-D Secure
//! a 400 that sends the buyer to the order page; both leave the order payable.
//!
//! If Stripe is unreachable or fails, the answer is a 502 and the payment
//! stays as it was; trying again reuses the keys, so nothing is charged twice.

use axum::{
    extract::{Query, State},
    http::StatusCode,
};
use common::{
    Error, Result,
    error::{ErrorBody, ErrorItem, Json},
    events::OrderStatus,
    openapi,
    session::AuthUser,
    validate::{Checked, Fields, Valid},
    wire,
};
use mongodb::bson::oid::ObjectId;
use serde::Deserialize;
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    AppState,
    settle::Succeeded,
    store::{Order, Payment, PaymentStatus},
    stripe::{Intent, StripeError},
};

/// The routes and their OpenAPI description (see `common::openapi`).
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(create, list))
}

/// `{orderId}` or `{token, orderId}`, read loosely so that a missing or
/// mistyped field is a validation error on that field.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct NewPayment {
    /// Optional: a legacy Stripe card token (`tok_visa` in test mode) to
    /// confirm the order's intent with, server-side.
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "tok_visa")]
    token: Value,
    /// The order to pay for.
    #[serde(default)]
    #[schema(value_type = openapi::ObjectId, required = true)]
    order_id: Value,
}

/// What to pay, checked from a [`NewPayment`].
#[derive(Debug)]
struct PaymentRequest {
    order_id: ObjectId,
    /// A legacy card token to confirm with server-side, if one was given.
    token: Option<String>,
}

impl Checked for PaymentRequest {
    type Body = NewPayment;

    /// The order id and the card token if one was given, or one error per
    /// bad field.
    fn check(body: NewPayment) -> Result<Self> {
        let mut fields = Fields::default();
        let token = fields.take(match &body.token {
            Value::Null => Ok(None),
            Value::String(t) if !t.trim().is_empty() => Ok(Some(t.trim().to_owned())),
            _ => Err(ErrorItem::field("token", "Token must be provided")),
        });
        let order_id = body
            .order_id
            .as_str()
            .and_then(|id| ObjectId::parse_str(id.trim()).ok());
        let order_id = fields.check("orderId", order_id, "OrderId must be provided");
        let request = token.zip(order_id);
        fields.finish(request.map(|(token, order_id)| PaymentRequest { order_id, token }))
    }
}

/// A payment as the API shows it: its secret and its last error only while
/// it can be paid.
fn view(payment: &Payment) -> wire::Payment {
    let open = payment.status == PaymentStatus::Pending;
    wire::Payment {
        id: payment.id.to_hex(),
        order_id: payment.order_id.to_hex(),
        status: payment.status.public(),
        amount: payment.amount.cents(),
        payment_intent_id: payment.payment_intent_id.clone(),
        client_secret: open.then(|| payment.client_secret.clone()).flatten(),
        last_error: open.then(|| payment.last_error.clone()).flatten(),
    }
}

const ALREADY_PAID: &str = "Order is already paid";
const CANCELLED: &str = "Cannot pay for a cancelled order";
const UNAVAILABLE: &str = "The payment provider is unavailable; please try again later";
const NEEDS_AUTHENTICATION: &str =
    "This card needs 3-D Secure authentication; please pay on the order page";

fn unavailable(source: anyhow::Error) -> Error {
    Error::Upstream {
        message: UNAVAILABLE.to_owned(),
        source,
    }
}

/// `POST /api/payments` — 201/200 the order's payment with its intent.
#[utoipa::path(
    post,
    path = "/api/payments",
    tag = "payments",
    security(("session" = []), ("bearer" = [])),
    request_body = NewPayment,
    responses(
        (status = 200, description = "The order's existing PaymentIntent", body = wire::Payment),
        (status = 201, description = "The order's PaymentIntent was created (with `token`: confirmed and paid; the order completes shortly)", body = wire::Payment),
        (status = 400, description = "`OrderId must be provided`, `Token must be provided` (per field), `Cannot pay for a cancelled order`, `Order is already paid`, a declined card (Stripe's message), a card that needs 3-D Secure, or a body that is not the JSON expected", body = ErrorBody),
        (status = 401, description = "Not signed in, or someone else's order", body = ErrorBody),
        (status = 404, description = "No such order", body = ErrorBody),
        (status = 413, description = "Body over the size limit", body = ErrorBody),
        (status = 502, description = "The payment provider is unavailable; nothing was charged twice, try again", body = ErrorBody),
    ),
)]
#[tracing::instrument(skip_all, fields(user_id = %user.id))]
async fn create(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Valid(PaymentRequest { order_id, token }): Valid<PaymentRequest>,
) -> Result<(StatusCode, Json<wire::Payment>)> {
    let order = state.orders.find(order_id).await?.ok_or(Error::NotFound)?;
    if order.user_id != user.id {
        return Err(Error::NotAuthorized);
    }
    if order.status == OrderStatus::Cancelled {
        return Err(Error::bad_request(CANCELLED));
    }
    if let Some(payment) = state.payments.find_by_order(order_id).await? {
        check_payable(&payment)?;
    }

    let (payment, created) = ensure_intent(&state, &order).await?;
    let Some(token) = token else {
        let status = if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        return Ok((status, Json(view(&payment))));
    };
    confirm_with_token(&state, &order, payment, &token).await
}

/// 400 unless the payment can still be paid.
fn check_payable(payment: &Payment) -> Result<()> {
    match payment.status {
        PaymentStatus::Pending => Ok(()),
        PaymentStatus::Succeeded => Err(Error::bad_request(ALREADY_PAID)),
        _ => Err(Error::bad_request(CANCELLED)),
    }
}

/// The order's payment with its intent; `true` when this call stored the
/// intent.
async fn ensure_intent(state: &AppState, order: &Order) -> Result<(Payment, bool)> {
    let (payment, _) = state
        .payments
        .open(&Payment::new(order.id, &order.user_id, order.price))
        .await?;
    check_payable(&payment)?;
    if payment.payment_intent_id.is_some() {
        return Ok((payment, false));
    }
    let order_hex = order.id.to_hex();
    let intent = match state
        .settle
        .stripe
        .create_intent(&order_hex, order.price)
        .await
    {
        Ok(intent) => intent,
        Err(StripeError::Refused { message, .. }) => return Err(Error::BadRequest(message)),
        Err(StripeError::Unavailable(source)) => return Err(unavailable(source)),
        Err(err) => return Err(unavailable(err.into())),
    };
    let (payment, stored) = state
        .payments
        .attach_intent(payment.id, &intent.id, intent.client_secret.as_deref())
        .await?;
    if payment.status != PaymentStatus::Pending {
        if stored {
            // The order was cancelled while Stripe answered and this call
            // attached the intent to the closed payment: close the intent.
            state.settle.close(&payment).await?;
        }
        // Otherwise a concurrent request got there first: paid (never refund
        // it here) or closed by its own cancel.
        return Err(check_payable(&payment)
            .err()
            .unwrap_or_else(|| Error::bad_request(CANCELLED)));
    }
    Ok((payment, stored))
}

/// The legacy body: confirm the intent with the token's card, server-side.
async fn confirm_with_token(
    state: &AppState,
    order: &Order,
    payment: Payment,
    token: &str,
) -> Result<(StatusCode, Json<wire::Payment>)> {
    let order_hex = order.id.to_hex();
    let Some(intent_id) = payment.payment_intent_id.clone() else {
        return Err(anyhow::anyhow!("a payment without its intent").into());
    };
    let confirmed = state
        .settle
        .stripe
        .confirm_with_token(&order_hex, &intent_id, token, order.declined_attempts)
        .await;
    let intent: Intent = match confirmed {
        Ok(intent) => intent,
        Err(StripeError::Refused { message, .. }) => {
            tracing::info!(order_id = %order_hex, reason = %message, "card refused");
            // The order stays payable: the next attempt (another card) gets
            // new idempotency keys instead of Stripe's stored decline.
            state.orders.record_decline(order).await?;
            state.payments.record_failure(payment.id, &message).await?;
            return Err(Error::BadRequest(message));
        }
        Err(StripeError::UnexpectedState { .. }) => {
            // Paid or cancelled meanwhile (another tab, the webhook).
            return Err(match state.payments.find(payment.id).await? {
                Some(current) => check_payable(&current)
                    .err()
                    .unwrap_or_else(|| Error::bad_request(ALREADY_PAID)),
                None => Error::bad_request(ALREADY_PAID),
            });
        }
        Err(StripeError::KeyReused(message)) => {
            return Err(unavailable(anyhow::anyhow!(
                "idempotency key reused: {message}"
            )));
        }
        Err(StripeError::Unavailable(source)) => return Err(unavailable(source)),
    };
    if intent.status == "requires_action" {
        state.orders.record_decline(order).await?;
        return Err(Error::bad_request(NEEDS_AUTHENTICATION));
    }
    if !intent.succeeded() {
        state.orders.record_decline(order).await?;
        return Err(Error::BadRequest(intent.last_error.unwrap_or_else(|| {
            "Your payment could not be processed".to_owned()
        })));
    }
    match state.settle.succeeded(&payment, &intent.id).await? {
        // Concurrent submits of one attempt got the same confirmation from
        // Stripe: each of them is told about the one payment.
        Succeeded::Recorded(paid) | Succeeded::Already(paid) => {
            tracing::info!(payment_id = %paid.id, order_id = %order_hex, "order paid");
            Ok((StatusCode::CREATED, Json(view(&paid))))
        }
        Succeeded::Refunded(_) => Err(Error::bad_request(CANCELLED)),
    }
}

/// `?orderId=`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// The order whose payments to list.
    #[serde(default)]
    #[param(value_type = openapi::ObjectId, required = true)]
    order_id: Option<String>,
}

/// `GET /api/payments?orderId=` — 200 the caller's payments of that order.
#[utoipa::path(
    get,
    path = "/api/payments",
    tag = "payments",
    security(("session" = []), ("bearer" = [])),
    params(ListQuery),
    responses(
        (status = 200, description = "The caller's payments of the order (none or one)", body = [wire::Payment]),
        (status = 400, description = "`OrderId must be provided`", body = ErrorBody),
        (status = 401, description = "Not signed in", body = ErrorBody),
    ),
)]
#[tracing::instrument(skip_all, fields(user_id = %user.id))]
async fn list(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<wire::Payment>>> {
    let order_id = query
        .ok()
        .and_then(|Query(q)| q.order_id)
        .and_then(|id| ObjectId::parse_str(id.trim()).ok())
        .ok_or_else(|| Error::invalid("orderId", "OrderId must be provided"))?;
    let payments = state
        .payments
        .find_by_order(order_id)
        .await?
        .filter(|payment| payment.user_id == user.id);
    Ok(Json(payments.iter().map(view).collect()))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn validate(body: Value) -> Result<(Option<String>, ObjectId)> {
        let checked = PaymentRequest::check(serde_json::from_value::<NewPayment>(body).unwrap());
        checked.map(|request| (request.token, request.order_id))
    }

    fn fields(result: Result<(Option<String>, ObjectId)>) -> Vec<String> {
        match result {
            Err(Error::Validation(items)) => items.into_iter().filter_map(|i| i.field).collect(),
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn accepts_an_order_id_with_or_without_a_token() {
        let (token, id) =
            validate(json!({"token": "tok_visa", "orderId": "64b7f0c2a1b2c3d4e5f60718"})).unwrap();
        assert_eq!(
            (token.as_deref(), id.to_hex().as_str()),
            (Some("tok_visa"), "64b7f0c2a1b2c3d4e5f60718")
        );
        let (token, _) = validate(json!({"orderId": "64b7f0c2a1b2c3d4e5f60718"})).unwrap();
        assert_eq!(token, None);
    }

    #[test]
    fn reports_each_missing_or_malformed_field() {
        assert_eq!(fields(validate(json!({}))), ["orderId"]);
        assert_eq!(
            fields(validate(
                json!({"token": " ", "orderId": "64b7f0c2a1b2c3d4e5f60718"})
            )),
            ["token"]
        );
        assert_eq!(
            fields(validate(json!({"token": "tok_visa", "orderId": "123"}))),
            ["orderId"]
        );
        assert_eq!(
            fields(validate(json!({"token": 1, "orderId": {"$ne": null}}))),
            ["token", "orderId"]
        );
    }
}
