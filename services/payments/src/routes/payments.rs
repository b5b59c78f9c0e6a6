//! `POST /api/payments`: pay for an order with a card token.
//!
//! The checks, in the original app's order: signed in; `token` and `orderId`
//! present (one error per missing field); the order exists (404), is the
//! caller's (401), is not cancelled and not already paid (400). Then Stripe is
//! charged the order's exact price in cents, in USD, with the order id as the
//! idempotency key, and the payment is stored with its `payment.created` event
//! in one write.
//!
//! Paying twice — a double click, two tabs — charges once: both requests reach
//! Stripe with the same key and get the same charge back; the unique index on
//! `orderId` then lets one of them record it (201) and the other learns that
//! the order is already paid (400). If Stripe is unreachable or fails, the
//! answer is a 502 and nothing is recorded; the buyer can simply try again.

use axum::{extract::State, http::StatusCode};
use common::{
    Error, Result,
    error::{ErrorBody, ErrorItem, Json},
    events::OrderStatus,
    openapi,
    session::AuthUser,
};
use mongodb::bson::oid::ObjectId;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    AppState,
    store::{InsertError, Payment},
    stripe::{ChargeError, ChargeRequest},
};

/// The route and its OpenAPI description (see `common::openapi`).
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(create))
}

/// `{token, orderId}`, read loosely so that a missing or mistyped field is a
/// validation error on that field.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct NewPayment {
    /// A Stripe card token (`tok_visa` in test mode).
    #[serde(default)]
    #[schema(value_type = String, required = true, example = "tok_visa")]
    token: Value,
    /// The order to pay for.
    #[serde(default)]
    #[schema(value_type = openapi::ObjectId, required = true)]
    order_id: Value,
}

impl NewPayment {
    /// The card token and the order id, or one error per bad field.
    fn validate(self) -> Result<(String, ObjectId)> {
        let token = self.token.as_str().map(str::trim).filter(|t| !t.is_empty());
        let order_id = self
            .order_id
            .as_str()
            .and_then(|id| ObjectId::parse_str(id.trim()).ok());
        match (token, order_id) {
            (Some(token), Some(order_id)) => Ok((token.to_owned(), order_id)),
            (token, order_id) => {
                let mut errors = Vec::new();
                if token.is_none() {
                    errors.push(ErrorItem::field("token", "Token must be provided"));
                }
                if order_id.is_none() {
                    errors.push(ErrorItem::field("orderId", "OrderId must be provided"));
                }
                Err(Error::Validation(errors))
            }
        }
    }
}

/// The created payment, as the original app answered it.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Payment)]
struct Created {
    #[schema(value_type = openapi::ObjectId)]
    id: String,
}

const ALREADY_PAID: &str = "Order is already paid";

/// `POST /api/payments` — 201 `{id}`.
#[utoipa::path(
    post,
    path = "/api/payments",
    tag = "payments",
    security(("session" = []), ("bearer" = [])),
    request_body = NewPayment,
    responses(
        (status = 201, description = "Charged and recorded; the order completes shortly", body = Created),
        (status = 400, description = "`Token must be provided`, `OrderId must be provided` (per field), `Cannot pay for a cancelled order`, `Order is already paid`, a declined card (Stripe's message), or a body that is not the JSON expected", body = ErrorBody),
        (status = 401, description = "Not signed in, or someone else's order", body = ErrorBody),
        (status = 404, description = "No such order", body = ErrorBody),
        (status = 413, description = "Body over the size limit", body = ErrorBody),
        (status = 502, description = "The payment provider is unavailable; nothing was charged or recorded", body = ErrorBody),
    ),
)]
#[tracing::instrument(skip_all, fields(user_id = %user.id))]
async fn create(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Json(body): Json<NewPayment>,
) -> Result<(StatusCode, Json<Created>)> {
    let (token, order_id) = body.validate()?;

    let order = state.orders.find(order_id).await?.ok_or(Error::NotFound)?;
    if order.user_id != user.id {
        return Err(Error::NotAuthorized);
    }
    if order.status == OrderStatus::Cancelled {
        return Err(Error::bad_request("Cannot pay for a cancelled order"));
    }
    if state.payments.find_by_order(order_id).await?.is_some() {
        return Err(Error::bad_request(ALREADY_PAID));
    }

    let order_hex = order_id.to_hex();
    let charge = state
        .stripe
        .charge(ChargeRequest {
            amount: order.price,
            token: &token,
            idempotency_key: &order.idempotency_key(),
            order_id: &order_hex,
        })
        .await;
    let stripe_id = match charge {
        Ok(stripe_id) => stripe_id,
        Err(ChargeError::Refused(message)) => {
            tracing::info!(order_id = %order_hex, reason = %message, "charge refused");
            // The order stays payable: the next attempt (another card) gets a
            // new idempotency key instead of Stripe's stored decline.
            state.orders.record_decline(&order).await?;
            return Err(Error::BadRequest(message));
        }
        Err(ChargeError::InProgress) => {
            return Err(paid_or(
                &state,
                order_id,
                "A payment for this order is already in progress",
            )
            .await);
        }
        Err(ChargeError::KeyReused(_)) => {
            return Err(paid_or(
                &state,
                order_id,
                "A payment for this order was already attempted with another card",
            )
            .await);
        }
        Err(ChargeError::Unavailable(source)) => {
            return Err(Error::Upstream {
                message: "The payment provider is unavailable; please try again later".to_owned(),
                source,
            });
        }
    };

    let payment = Payment {
        id: ObjectId::new(),
        order_id,
        stripe_id,
    };
    match state.payments.insert(&payment).await {
        Ok(()) => {}
        // Lost the race with a concurrent submit that got the same charge.
        Err(InsertError::AlreadyPaid) => return Err(Error::bad_request(ALREADY_PAID)),
        Err(InsertError::Other(err)) => return Err(err.into()),
    }
    state.outbox.wake(payment.id);
    tracing::info!(payment_id = %payment.id, order_id = %order_hex, stripe_id = %payment.stripe_id, "order paid");
    Ok((
        StatusCode::CREATED,
        Json(Created {
            id: payment.id.to_hex(),
        }),
    ))
}

/// After Stripe refused to reuse the order's idempotency key: `Order is
/// already paid` if a concurrent submit has recorded it meanwhile, else
/// `message`.
async fn paid_or(state: &AppState, order_id: ObjectId, message: &str) -> Error {
    match state.payments.find_by_order(order_id).await {
        Ok(Some(_)) => Error::bad_request(ALREADY_PAID),
        Ok(None) => Error::bad_request(message),
        Err(err) => err.into(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn validate(body: Value) -> Result<(String, ObjectId)> {
        serde_json::from_value::<NewPayment>(body)
            .unwrap()
            .validate()
    }

    fn fields(result: Result<(String, ObjectId)>) -> Vec<String> {
        match result {
            Err(Error::Validation(items)) => items.into_iter().filter_map(|i| i.field).collect(),
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn accepts_a_token_and_a_24_hex_order_id() {
        let (token, id) =
            validate(json!({"token": "tok_visa", "orderId": "64b7f0c2a1b2c3d4e5f60718"})).unwrap();
        assert_eq!(
            (token.as_str(), id.to_hex().as_str()),
            ("tok_visa", "64b7f0c2a1b2c3d4e5f60718")
        );
    }

    #[test]
    fn reports_each_missing_or_malformed_field() {
        assert_eq!(fields(validate(json!({}))), ["token", "orderId"]);
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
