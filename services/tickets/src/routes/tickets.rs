//! `/api/tickets`: list what is for sale, show one, list one for sale, edit one.
//!
//! Wire-compatible with the original app (DESIGN §3). A ticket goes out as
//! `{id,title,price,userId,version,orderId?}` with the price as a JSON number.
//! Creating and editing write the ticket and its event in one operation (the
//! outbox) and then wake the relay, so the event goes out at once.
//!
//! `PUT` checks in the original's order: signed in → valid body → the ticket
//! exists → it is not reserved → the caller owns it. The last two checks are
//! made again on every compare-and-set round (see [`crate::store`]), so an
//! edit can never land on a ticket an order reserved a moment earlier.

use axum::{
    extract::{Query, State, rejection::QueryRejection},
    http::StatusCode,
};
use common::{
    Error, Result,
    error::{ErrorBody, ErrorItem, Id, Json},
    money::Money,
    openapi,
    session::AuthUser,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    AppState,
    store::{Change, Contended, Outcome, Ticket},
};

/// `?limit=` when absent.
pub const DEFAULT_LIMIT: i64 = 100;
/// The largest page `GET /api/tickets` returns; larger limits are clamped.
pub const MAX_LIMIT: i64 = 500;

/// The routes and their OpenAPI description (see `common::openapi`).
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(show, update))
}

/// A ticket as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Ticket)]
pub struct TicketView {
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
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<openapi::ObjectId>, nullable = false)]
    pub order_id: Option<String>,
}

impl From<&Ticket> for TicketView {
    fn from(ticket: &Ticket) -> Self {
        Self {
            id: ticket.id.to_hex(),
            title: ticket.title.clone(),
            price: ticket.price,
            user_id: ticket.user_id.clone(),
            version: ticket.version,
            order_id: ticket.order_id.clone(),
        }
    }
}

/// `{title, price}`, read loosely so that a missing or mistyped field is a
/// validation error on that field, not a 400 about JSON.
#[derive(Debug, Default, Deserialize, ToSchema)]
struct TicketInput {
    /// Not empty once trimmed.
    #[serde(default)]
    #[schema(value_type = String, required = true, example = "Concert")]
    title: Value,
    #[serde(default)]
    #[schema(value_type = openapi::PriceInput, required = true)]
    price: Value,
}

impl TicketInput {
    /// The trimmed title and the price, or one error per bad field.
    fn validate(self) -> Result<(String, Money)> {
        let title = self.title.as_str().map(str::trim).filter(|t| !t.is_empty());
        let price = Money::parse_user_input(&self.price);
        match (title, price) {
            (Some(title), Some(price)) => Ok((title.to_owned(), price)),
            (title, price) => {
                let mut errors = Vec::new();
                if title.is_none() {
                    errors.push(ErrorItem::field("title", "Title is required"));
                }
                if price.is_none() {
                    errors.push(ErrorItem::field("price", "Price must be greater than 0"));
                }
                Err(Error::Validation(errors))
            }
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct ListParams {
    limit: Option<String>,
}

impl ListParams {
    /// The page size: default 100, clamped to 1..=500; not a whole number is
    /// a validation error.
    fn limit(&self) -> Result<i64> {
        match self.limit.as_deref().map(str::trim) {
            None | Some("") => Ok(DEFAULT_LIMIT),
            Some(raw) => raw
                .parse::<i64>()
                .map(|n| n.clamp(1, MAX_LIMIT))
                .map_err(|_| Error::invalid("limit", "Limit must be a whole number")),
        }
    }
}

/// A lost race that outlasted every retry: tell the client to try again.
impl From<Contended> for Error {
    fn from(err: Contended) -> Self {
        tracing::warn!(error = %err, "giving up on a contended ticket");
        Error::Conflict("The ticket was changed at the same time; please try again".into())
    }
}

/// `GET /api/tickets` — tickets no order reserves, newest first.
#[utoipa::path(
    get,
    path = "/api/tickets",
    tag = "tickets",
    params(("limit" = Option<i64>, Query, description = "Page size: default 100, clamped to 1..=500")),
    responses(
        (status = 200, description = "The tickets for sale, newest first", body = Vec<TicketView>),
        (status = 400, description = "`limit` is not a whole number, or the query string is malformed", body = ErrorBody),
    ),
)]
#[tracing::instrument(skip_all)]
async fn list(
    State(state): State<AppState>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<Vec<TicketView>>> {
    let Query(params) = params
        .map_err(|e| Error::bad_request(format!("Invalid query string: {}", e.body_text())))?;
    let tickets = state.tickets.list_available(params.limit()?).await?;
    Ok(Json(tickets.iter().map(TicketView::from).collect()))
}

/// `GET /api/tickets/{id}` — one ticket, reserved or not.
#[utoipa::path(
    get,
    path = "/api/tickets/{id}",
    tag = "tickets",
    params(("id" = openapi::ObjectId, Path, description = "The ticket's id")),
    responses(
        (status = 200, description = "The ticket", body = TicketView),
        (status = 404, description = "No such ticket (or not an id)", body = ErrorBody),
    ),
)]
#[tracing::instrument(skip_all, fields(ticket_id = %id))]
async fn show(State(state): State<AppState>, Id(id): Id) -> Result<Json<TicketView>> {
    let ticket = state.tickets.find(id).await?.ok_or(Error::NotFound)?;
    Ok(Json(TicketView::from(&ticket)))
}

/// `POST /api/tickets` — 201 with the new ticket; `ticket.created` goes out
/// from the outbox of the same insert.
#[utoipa::path(
    post,
    path = "/api/tickets",
    tag = "tickets",
    security(("session" = []), ("bearer" = [])),
    request_body = TicketInput,
    responses(
        (status = 201, description = "Listed for sale", body = TicketView),
        (status = 400, description = "`Title is required`, `Price must be greater than 0` (per field), or a body that is not the JSON expected", body = ErrorBody),
        (status = 401, description = "Not signed in", body = ErrorBody),
        (status = 413, description = "Body over the size limit", body = ErrorBody),
    ),
)]
#[tracing::instrument(skip_all, fields(user_id = %user.id))]
async fn create(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Json(input): Json<TicketInput>,
) -> Result<(StatusCode, Json<TicketView>)> {
    let (title, price) = input.validate()?;
    let ticket = Ticket::new(title, price, user.id);
    state.tickets.insert(&ticket).await?;
    state.outbox.wake(ticket.id);
    tracing::info!(ticket_id = %ticket.id, "ticket created");
    Ok((StatusCode::CREATED, Json(TicketView::from(&ticket))))
}

/// `PUT /api/tickets/{id}` — new title and price, version + 1;
/// `ticket.updated` goes out from the outbox of the same update.
#[utoipa::path(
    put,
    path = "/api/tickets/{id}",
    tag = "tickets",
    security(("session" = []), ("bearer" = [])),
    params(("id" = openapi::ObjectId, Path, description = "The ticket's id")),
    request_body = TicketInput,
    responses(
        (status = 200, description = "Edited", body = TicketView),
        (status = 400, description = "Validation as on create, `Cannot edit a reserved ticket`, or a body that is not the JSON expected", body = ErrorBody),
        (status = 401, description = "Not signed in, or not the seller", body = ErrorBody),
        (status = 404, description = "No such ticket (or not an id)", body = ErrorBody),
        (status = 409, description = "The ticket kept changing meanwhile; try again", body = ErrorBody),
        (status = 413, description = "Body over the size limit", body = ErrorBody),
    ),
)]
#[tracing::instrument(skip_all, fields(ticket_id = %id, user_id = %user.id))]
async fn update(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Id(id): Id,
    Json(input): Json<TicketInput>,
) -> Result<Json<TicketView>> {
    let (title, price) = input.validate()?;
    let outcome = state
        .tickets
        .modify(id, |ticket| {
            if ticket.is_reserved() {
                return Err(Error::bad_request("Cannot edit a reserved ticket"));
            }
            if ticket.user_id != user.id {
                return Err(Error::NotAuthorized);
            }
            Ok(Some(Change::Edit {
                title: title.clone(),
                price,
            }))
        })
        .await?;
    match outcome {
        Outcome::Changed(ticket) => {
            state.outbox.wake(ticket.id);
            tracing::info!(version = ticket.version, "ticket updated");
            Ok(Json(TicketView::from(&ticket)))
        }
        // An edit is always a change; kept total rather than panicking.
        Outcome::Unchanged(ticket) => Ok(Json(TicketView::from(&ticket))),
        Outcome::Missing => Err(Error::NotFound),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn validate(body: Value) -> Result<(String, Money)> {
        serde_json::from_value::<TicketInput>(body)
            .unwrap()
            .validate()
    }

    fn fields(result: Result<(String, Money)>) -> Vec<String> {
        match result {
            Err(Error::Validation(items)) => items.into_iter().filter_map(|i| i.field).collect(),
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn trims_the_title_and_reads_the_price_in_cents() {
        let (title, price) = validate(json!({"title": "  concert ", "price": "12.50"})).unwrap();
        assert_eq!((title.as_str(), price.cents()), ("concert", 1250));
    }

    #[test]
    fn reports_both_fields_at_once() {
        assert_eq!(fields(validate(json!({}))), ["title", "price"]);
        assert_eq!(
            fields(validate(json!({"title": "   ", "price": 10}))),
            ["title"]
        );
        assert_eq!(
            fields(validate(json!({"title": 5, "price": 10}))),
            ["title"]
        );
        assert_eq!(
            fields(validate(json!({"title": "t", "price": 1.005}))),
            ["price"]
        );
    }

    #[test]
    fn limit_defaults_and_clamps() {
        let limit = |raw: Option<&str>| {
            ListParams {
                limit: raw.map(str::to_owned),
            }
            .limit()
        };
        assert_eq!(limit(None).unwrap(), DEFAULT_LIMIT);
        assert_eq!(limit(Some("")).unwrap(), DEFAULT_LIMIT);
        assert_eq!(limit(Some("2")).unwrap(), 2);
        assert_eq!(limit(Some("0")).unwrap(), 1);
        assert_eq!(limit(Some("-3")).unwrap(), 1);
        assert_eq!(limit(Some("100000")).unwrap(), MAX_LIMIT);
        assert!(limit(Some("ten")).is_err());
    }
}
