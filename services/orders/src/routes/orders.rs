//! `/api/orders`: buy a ticket, list and show my orders, cancel one.
//!
//! Wire-compatible with the original app (DESIGN §3), with its deliberate
//! improvements: exactly one order wins when buyers race for a ticket (the
//! unique index in [`crate::store::orders`], not a check-then-insert), a
//! completed order cannot be cancelled, and every change's event is written
//! with the change (the outbox) so it is never lost.
//!
//! The order's ticket is embedded from the local replica at read time, so an
//! order always shows its ticket's latest title and price.

use std::collections::HashMap;

use axum::{extract::State, http::StatusCode};
use chrono::Utc;
use common::{
    Error, Result,
    error::{ErrorBody, Id, Json},
    openapi,
    session::AuthUser,
    wire,
};
use mongodb::bson::oid::ObjectId;
use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    AppState,
    store::{Cancellation, CreateError, Order, Ticket},
};

/// The routes and their OpenAPI description (see `common::openapi`).
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(index, create))
        .routes(routes!(show, cancel))
}

/// An order as the API shows it, its ticket embedded from the replica.
fn view(order: &Order, ticket: Option<&Ticket>) -> wire::Order {
    if ticket.is_none() {
        tracing::warn!(order_id = %order.id, ticket_id = %order.ticket_id, "the ticket of an order is missing from the replica");
    }
    wire::Order {
        id: order.id.to_hex(),
        user_id: order.user_id.clone(),
        status: order.status,
        expires_at: order.expires_at(),
        version: order.version,
        cancel_reason: order.cancel_reason.clone(),
        ticket: ticket.map(|t| wire::OrderTicket {
            id: t.id.to_hex(),
            title: t.title.clone(),
            price: t.price,
            version: t.version,
        }),
    }
}

/// `GET /api/orders` — the caller's orders, newest first, tickets embedded.
#[utoipa::path(
    get,
    path = "/api/orders",
    tag = "orders",
    security(("session" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "The caller's orders, newest first", body = Vec<wire::Order>),
        (status = 401, description = "Not signed in", body = ErrorBody),
    ),
)]
#[tracing::instrument(skip_all, fields(user_id = %user.id))]
async fn index(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
) -> Result<Json<Vec<wire::Order>>> {
    let orders = state.orders.for_user(&user.id).await?;
    let ticket_ids: Vec<ObjectId> = orders.iter().map(|o| o.ticket_id).collect();
    let tickets: HashMap<ObjectId, Ticket> = state
        .tickets
        .find_many(&ticket_ids)
        .await?
        .into_iter()
        .map(|t| (t.id, t))
        .collect();
    Ok(Json(
        orders
            .iter()
            .map(|order| view(order, tickets.get(&order.ticket_id)))
            .collect(),
    ))
}

/// `GET /api/orders/:id` — 404 unknown, 401 someone else's.
#[utoipa::path(
    get,
    path = "/api/orders/{id}",
    tag = "orders",
    security(("session" = []), ("bearer" = [])),
    params(("id" = openapi::ObjectId, Path, description = "The order's id")),
    responses(
        (status = 200, description = "The order", body = wire::Order),
        (status = 401, description = "Not signed in, or someone else's order", body = ErrorBody),
        (status = 404, description = "No such order (or not an id)", body = ErrorBody),
    ),
)]
#[tracing::instrument(skip_all, fields(user_id = %user.id, order_id = %id))]
async fn show(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Id(id): Id,
) -> Result<Json<wire::Order>> {
    let order = owned_order(&state, &user.id, id).await?;
    let ticket = state.tickets.find(order.ticket_id).await?;
    Ok(Json(view(&order, ticket.as_ref())))
}

/// `{ticketId}`, read loosely: a missing or non-string id is the field's
/// validation error, not a complaint about the JSON.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct NewOrder {
    /// The ticket to buy.
    #[serde(default)]
    #[schema(value_type = openapi::ObjectId, required = true)]
    ticket_id: Value,
}

/// `POST /api/orders` — reserves the ticket for the expiration window.
///
/// 400 `TicketId must be provided`, 404 for a ticket the replica does not
/// know or knows withdrawn (also when the withdrawal lands while the order is
/// written: the order is then cancelled, with its reason), 400 `Ticket is already reserved` when the one-order-per-ticket index
/// refuses the insert, 400 `Too many active reservations` when the buyer
/// already holds `MAX_ACTIVE_ORDERS_PER_USER` orders in `created` or
/// `awaiting:payment`; 201 with the order, and `order.created` on its way.
#[utoipa::path(
    post,
    path = "/api/orders",
    tag = "orders",
    security(("session" = []), ("bearer" = [])),
    request_body = NewOrder,
    responses(
        (status = 201, description = "Ordered: the ticket is reserved until `expiresAt`", body = wire::Order),
        (status = 400, description = "`TicketId must be provided`, `Ticket is already reserved`, `Too many active reservations` (the buyer holds `MAX_ACTIVE_ORDERS_PER_USER` unpaid orders), or a body that is not the JSON expected", body = ErrorBody),
        (status = 401, description = "Not signed in", body = ErrorBody),
        (status = 404, description = "No such ticket, or its seller withdrew it", body = ErrorBody),
        (status = 413, description = "Body over the size limit", body = ErrorBody),
    ),
)]
#[tracing::instrument(skip_all, fields(user_id = %user.id))]
async fn create(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Json(body): Json<NewOrder>,
) -> Result<(StatusCode, Json<wire::Order>)> {
    let ticket_id = body
        .ticket_id
        .as_str()
        .and_then(|id| ObjectId::parse_str(id).ok())
        .ok_or_else(|| Error::invalid("ticketId", "TicketId must be provided"))?;
    let ticket = state
        .tickets
        .find(ticket_id)
        .await?
        .filter(|ticket| !ticket.withdrawn)
        .ok_or(Error::NotFound)?;

    let order = Order::new(&user.id, ticket.id, Utc::now() + state.expiration_window);
    match state
        .orders
        .create(&order, ticket.price, state.max_active_orders_per_user)
        .await
    {
        Ok(()) => {}
        Err(CreateError::TicketReserved) => {
            return Err(Error::bad_request("Ticket is already reserved"));
        }
        Err(CreateError::TooManyActive) => {
            common::metrics::record_rejected("active_orders_limit");
            return Err(Error::bad_request("Too many active reservations"));
        }
        Err(CreateError::Other(e)) => return Err(e.into()),
    }
    // The seller may have withdrawn the ticket while the order was being
    // written; the replica's listener may have looked for its orders before
    // this one was in. Read again now that it is: whichever of the two reads
    // last sees both writes (see `Orders::cancel_for_withdrawn_ticket`).
    if state
        .tickets
        .find(ticket_id)
        .await?
        .is_some_and(|ticket| ticket.withdrawn)
    {
        state.orders.cancel_for_withdrawn_ticket(ticket_id).await?;
        tracing::info!(order_id = %order.id, "ticket withdrawn while ordering; order cancelled");
        return Err(Error::NotFound);
    }
    tracing::info!(order_id = %order.id, ticket_id = %ticket.id, "order created");
    Ok((StatusCode::CREATED, Json(view(&order, Some(&ticket)))))
}

/// `DELETE /api/orders/:id` — 404, 401, 400 `Cannot cancel a completed
/// order`; 204 once cancelled (also when it already was, without a second
/// `order.cancelled`).
#[utoipa::path(
    delete,
    path = "/api/orders/{id}",
    tag = "orders",
    security(("session" = []), ("bearer" = [])),
    params(("id" = openapi::ObjectId, Path, description = "The order's id")),
    responses(
        (status = 204, description = "Cancelled (or already was); the ticket is released"),
        (status = 400, description = "`Cannot cancel a completed order`", body = ErrorBody),
        (status = 401, description = "Not signed in, or someone else's order", body = ErrorBody),
        (status = 404, description = "No such order (or not an id)", body = ErrorBody),
    ),
)]
#[tracing::instrument(skip_all, fields(user_id = %user.id, order_id = %id))]
async fn cancel(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Id(id): Id,
) -> Result<StatusCode> {
    let order = owned_order(&state, &user.id, id).await?;
    match state.orders.cancel(order).await? {
        Cancellation::Cancelled(_) | Cancellation::AlreadyCancelled(_) => {
            Ok(StatusCode::NO_CONTENT)
        }
        Cancellation::Complete(_) => Err(Error::bad_request("Cannot cancel a completed order")),
        Cancellation::NotFound => Err(Error::NotFound),
    }
}

/// The order `id` if it exists (404) and belongs to `user_id` (401).
async fn owned_order(state: &AppState, user_id: &str, id: ObjectId) -> Result<Order> {
    let order = state.orders.find(id).await?.ok_or(Error::NotFound)?;
    if order.user_id != user_id {
        return Err(Error::NotAuthorized);
    }
    Ok(order)
}
