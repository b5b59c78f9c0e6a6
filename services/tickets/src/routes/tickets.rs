//! `/api/tickets`: list what is for sale, show one, list one for sale, edit one.
//!
//! Wire-compatible with the original app (DESIGN §3). A ticket goes out as
//! `{id,title,price,userId,version,orderId?}` with the price as a JSON number.
//! Creating and editing write the ticket and its event in one operation (the
//! outbox), and the store wakes the relay, so the event goes out at once.
//!
//! `PUT` checks in the original's order: signed in → valid body → the ticket
//! exists → it is not reserved → the caller owns it. The last two checks are
//! made again on every compare-and-set round (see [`crate::store`]), so an
//! edit can never land on a ticket an order reserved a moment earlier.

use axum::{
    extract::{Query, State, rejection::QueryRejection},
    http::{HeaderMap, HeaderValue, StatusCode, header},
};
use common::{
    Error, Result,
    error::{ErrorBody, ErrorItem, Id, Json},
    money::Money,
    openapi,
    session::{AuthUser, CurrentUser},
    validate::{Checked, Fields, Valid},
    wire::{self, ListingStatus},
};
use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    AppState,
    listing::{Cursor, ListQuery, Sort},
    search,
    store::{Change, Outcome, Ticket},
};

/// `?limit=` when absent.
pub const DEFAULT_LIMIT: i64 = 100;
/// The largest page `GET /api/tickets` returns; larger limits are clamped.
pub const MAX_LIMIT: i64 = 500;

/// The routes and their OpenAPI description (see `common::openapi`).
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(show, update, withdraw))
}

/// A ticket as the API shows it; `mine`: with its [`ListingStatus`], for the
/// seller's own list.
fn view(ticket: &Ticket, mine: bool) -> wire::Ticket {
    wire::Ticket {
        id: ticket.id.to_hex(),
        title: ticket.title.clone(),
        price: ticket.price,
        user_id: ticket.user_id.clone(),
        version: ticket.version,
        order_id: ticket.order_id.clone(),
        face_value: ticket.face_value,
        status: mine.then_some(if ticket.sold {
            ListingStatus::Sold
        } else if ticket.is_reserved() {
            ListingStatus::Reserved
        } else {
            ListingStatus::Available
        }),
    }
}

/// `{title, price, faceValue?}`, read loosely so that a missing or
/// mistyped field is a validation error on that field, not a 400 about JSON.
#[derive(Debug, Default, Deserialize, ToSchema)]
struct TicketInput {
    /// Not empty once trimmed.
    #[serde(default)]
    #[schema(value_type = String, required = true, example = "Concert")]
    title: Value,
    #[serde(default)]
    #[schema(value_type = openapi::PriceInput, required = true)]
    price: Value,
    /// The price printed on the ticket (same rules as `price`). With
    /// `RESALE_CAP_PERCENT` set, `price` may be at most that percentage of
    /// it; without a face value no cap can apply. On an edit, absent (or
    /// `null`) keeps the face value the ticket has.
    #[serde(default, rename = "faceValue")]
    #[schema(value_type = Option<openapi::PriceInput>)]
    face_value: Value,
}

/// A listing's fields, checked from a [`TicketInput`].
#[derive(Debug, Clone, PartialEq, Eq)]
struct NewTicket {
    title: String,
    price: Money,
    /// `None`: not given.
    face_value: Option<Money>,
}

impl Checked for NewTicket {
    type Body = TicketInput;

    /// The trimmed title, the price and the face value, or one error per
    /// bad field.
    fn check(input: TicketInput) -> Result<Self> {
        let mut fields = Fields::default();
        let title = input
            .title
            .as_str()
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned);
        let title = fields.check("title", title, "Title is required");
        let price = fields.check(
            "price",
            Money::parse_user_input(&input.price),
            "Price must be greater than 0",
        );
        let face_value = match &input.face_value {
            Value::Null => Some(None),
            given => Money::parse_user_input(given).map(Some),
        };
        let face_value = fields.check("faceValue", face_value, "Face value must be greater than 0");
        fields.finish(
            title
                .zip(price)
                .zip(face_value)
                .map(|((title, price), face_value)| NewTicket {
                    title,
                    price,
                    face_value,
                }),
        )
    }
}

/// A price bound of the listing (`minPrice`, `maxPrice`) in cents, if given.
fn price_bound(field: &str, raw: &Option<String>) -> std::result::Result<Option<i64>, ErrorItem> {
    match raw.as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some(raw) => raw
            .parse::<Money>()
            .ok()
            .filter(|m| m.cents() >= 0 && *m <= Money::MAX_USER_INPUT)
            .map(|m| Some(m.cents()))
            .ok_or_else(|| {
                ErrorItem::field(
                    field,
                    &format!("{field} must be a price of 0 or more with at most 2 decimals"),
                )
            }),
    }
}

/// The resale cap: with `cap_percent` set and a face value, `price` must not
/// exceed `face_value × cap / 100`.
fn check_resale_cap(
    price: Money,
    face_value: Option<Money>,
    cap_percent: Option<u32>,
) -> Result<()> {
    let (Some(face_value), Some(cap)) = (face_value, cap_percent) else {
        return Ok(());
    };
    if i128::from(price.cents()) * 100 > i128::from(face_value.cents()) * i128::from(cap) {
        return Err(Error::invalid(
            "price",
            &format!("Price must not exceed {cap}% of the face value"),
        ));
    }
    Ok(())
}

/// The query string of `GET /api/tickets`, every value read as text so
/// that a bad one is a validation error on its field.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListParams {
    q: Option<String>,
    min_price: Option<String>,
    max_price: Option<String>,
    sort: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
    mine: Option<String>,
}

impl ListParams {
    /// The page size: default 100, clamped to 1..=500; not a whole number is
    /// a validation error.
    fn limit(&self) -> std::result::Result<i64, ErrorItem> {
        match self.limit.as_deref().map(str::trim) {
            None | Some("") => Ok(DEFAULT_LIMIT),
            Some(raw) => raw
                .parse::<i64>()
                .map(|n| n.clamp(1, MAX_LIMIT))
                .map_err(|_| ErrorItem::field("limit", "Limit must be a whole number")),
        }
    }

    /// Whether the caller asks for their own listings.
    fn mine(&self) -> std::result::Result<bool, ErrorItem> {
        match self.mine.as_deref().map(str::trim) {
            None | Some("") | Some("false") => Ok(false),
            Some("true") => Ok(true),
            Some(_) => Err(ErrorItem::field("mine", "Mine must be true or false")),
        }
    }

    /// The query to run, or one error per bad parameter. `seller` is the
    /// caller when they asked for their own listings.
    fn query(&self, seller: Option<String>) -> Result<ListQuery> {
        let mut fields = Fields::default();
        let words = fields.take(
            search::query_words(self.q.as_deref().unwrap_or_default())
                .map_err(|e| ErrorItem::field("q", &e.to_string())),
        );
        let min_price = fields.take(price_bound("minPrice", &self.min_price));
        let max_price = fields.take(price_bound("maxPrice", &self.max_price));
        if let (Some(Some(min)), Some(Some(max))) = (min_price, max_price)
            && max < min
        {
            fields.reject("maxPrice", "maxPrice must not be below minPrice");
        }
        let sort = fields.take(match self.sort.as_deref().map(str::trim) {
            None | Some("") => Ok(Sort::Newest),
            Some(raw) => Sort::parse(raw)
                .ok_or_else(|| ErrorItem::field("sort", "Sort must be newest, price or -price")),
        });
        let limit = fields.take(self.limit());
        let after = fields.take(self.after(sort.unwrap_or_default()));
        let query = match (words, min_price, max_price, sort, limit, after) {
            (
                Some(words),
                Some(min_price),
                Some(max_price),
                Some(sort),
                Some(limit),
                Some(after),
            ) => Some(ListQuery {
                words,
                min_price,
                max_price,
                sort,
                limit,
                after,
                seller,
            }),
            _ => None,
        };
        fields.finish(query)
    }

    /// Where the page starts: after the `cursor`, which must come from a
    /// page of the same `sort`.
    fn after(&self, sort: Sort) -> std::result::Result<Option<Cursor>, ErrorItem> {
        match self.cursor.as_deref().map(str::trim) {
            None | Some("") => Ok(None),
            Some(raw) => match Cursor::decode(raw) {
                Some(cursor) if cursor.sort == sort => Ok(Some(cursor)),
                _ => Err(ErrorItem::field(
                    "cursor",
                    "Cursor is not valid for this listing; start again from the first page",
                )),
            },
        }
    }

    /// The URL of the page that starts at `next`, with the same parameters.
    fn next_page(&self, query: &ListQuery, next: &Cursor) -> String {
        let mut pairs: Vec<(&str, String)> = Vec::new();
        for (name, value) in [
            ("q", &self.q),
            ("minPrice", &self.min_price),
            ("maxPrice", &self.max_price),
        ] {
            if let Some(value) = value.as_deref().map(str::trim).filter(|v| !v.is_empty()) {
                pairs.push((name, value.to_owned()));
            }
        }
        if query.sort != Sort::Newest {
            pairs.push(("sort", query.sort.as_str().to_owned()));
        }
        if query.seller.is_some() {
            pairs.push(("mine", "true".to_owned()));
        }
        pairs.push(("limit", query.limit.to_string()));
        pairs.push(("cursor", next.encode()));
        let query_string: Vec<String> = pairs
            .iter()
            .map(|(name, value)| format!("{name}={}", wire::percent_encode(value)))
            .collect();
        format!("/api/tickets?{}", query_string.join("&"))
    }
}

/// `GET /api/tickets` — the tickets for sale (no order reserves them, not
/// withdrawn), searched, filtered and sorted, one keyset page at a time; or
/// with `mine=true` the caller's own tickets in every state, with `status`.
#[utoipa::path(
    get,
    path = "/api/tickets",
    tag = "tickets",
    params(
        ("q" = Option<String>, Query, description = "Search: every word must be the start of a word of the title, ignoring case and accents (`radio madi` finds \"Radiohead, Madison Square Garden\"); at most 8 words, 200 characters"),
        ("minPrice" = Option<String>, Query, description = "Lowest price, inclusive: dollars, 0 or more, at most 2 decimals"),
        ("maxPrice" = Option<String>, Query, description = "Highest price, inclusive: dollars, not below `minPrice`"),
        ("sort" = Option<String>, Query, description = "`newest` (default), `price` (cheapest first) or `-price` (dearest first)"),
        ("limit" = Option<i64>, Query, description = "Page size: default 100, clamped to 1..=500"),
        ("cursor" = Option<String>, Query, description = "Where the page starts: only as given in the `Link` header of the page before, with the same `sort`"),
        ("mine" = Option<bool>, Query, description = "`true`: the caller's own tickets (signed in), available, reserved or sold, each with `status`"),
    ),
    responses(
        (status = 200, description = "One page of tickets; when there are more, a `Link: </api/tickets?…&cursor=…>; rel=\"next\"` header gives the next page", body = Vec<wire::Ticket>,
            headers(("Link" = String, description = "RFC 8288 link to the next page (`rel=\"next\"`), absent on the last page"))),
        (status = 400, description = "A parameter is not valid (per field: `q`, `minPrice`, `maxPrice`, `sort`, `limit`, `cursor`, `mine`), or the query string is malformed", body = ErrorBody),
        (status = 401, description = "`mine=true` without being signed in", body = ErrorBody),
    ),
)]
#[tracing::instrument(skip_all)]
async fn list(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<(HeaderMap, Json<Vec<wire::Ticket>>)> {
    let Query(params) = params
        .map_err(|e| Error::bad_request(format!("Invalid query string: {}", e.body_text())))?;
    let mine = params.mine().map_err(|e| Error::Validation(vec![e]))?;
    let seller = match (mine, user) {
        (false, _) => None,
        (true, Some(user)) => Some(user.id),
        (true, None) => return Err(Error::NotAuthorized),
    };
    let query = params.query(seller)?;
    let page = state.tickets.list(&query).await?;
    let mut headers = HeaderMap::new();
    if let Some(next) = &page.next {
        let link = format!("<{}>; rel=\"next\"", params.next_page(&query, next));
        if let Ok(value) = HeaderValue::from_str(&link) {
            headers.insert(header::LINK, value);
        }
    }
    let mine = query.seller.is_some();
    let views = page
        .tickets
        .iter()
        .map(|ticket| view(ticket, mine))
        .collect();
    Ok((headers, Json(views)))
}

/// `GET /api/tickets/{id}` — one ticket, reserved or not.
#[utoipa::path(
    get,
    path = "/api/tickets/{id}",
    tag = "tickets",
    params(("id" = openapi::ObjectId, Path, description = "The ticket's id")),
    responses(
        (status = 200, description = "The ticket", body = wire::Ticket),
        (status = 404, description = "No such ticket, withdrawn by its seller, or not an id", body = ErrorBody),
    ),
)]
#[tracing::instrument(skip_all, fields(ticket_id = %id))]
async fn show(State(state): State<AppState>, Id(id): Id) -> Result<Json<wire::Ticket>> {
    let ticket = state
        .tickets
        .find(id)
        .await?
        .filter(|ticket| !ticket.withdrawn)
        .ok_or(Error::NotFound)?;
    Ok(Json(view(&ticket, false)))
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
        (status = 201, description = "Listed for sale", body = wire::Ticket),
        (status = 400, description = "`Title is required`, `Price must be greater than 0`, `Face value must be greater than 0` (per field), `Price must not exceed <cap>% of the face value` (field `price`, with `RESALE_CAP_PERCENT` set and a `faceValue`), or a body that is not the JSON expected", body = ErrorBody),
        (status = 401, description = "Not signed in", body = ErrorBody),
        (status = 413, description = "Body over the size limit", body = ErrorBody),
    ),
)]
#[tracing::instrument(skip_all, fields(user_id = %user.id))]
async fn create(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Valid(input): Valid<NewTicket>,
) -> Result<(StatusCode, Json<wire::Ticket>)> {
    check_resale_cap(input.price, input.face_value, state.resale_cap_percent)?;
    let mut ticket = Ticket::new(input.title, input.price, user.id);
    ticket.face_value = input.face_value;
    state.tickets.insert(&ticket).await?;
    tracing::info!(ticket_id = %ticket.id, "ticket created");
    Ok((StatusCode::CREATED, Json(view(&ticket, false))))
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
        (status = 200, description = "Edited", body = wire::Ticket),
        (status = 400, description = "Validation as on create (the cap against the face value given, else the one the ticket has), `Cannot edit a reserved ticket`, or a body that is not the JSON expected", body = ErrorBody),
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
    Valid(input): Valid<NewTicket>,
) -> Result<Json<wire::Ticket>> {
    let outcome = state
        .tickets
        .modify(id, |ticket| {
            if ticket.withdrawn {
                return Err(Error::NotFound);
            }
            if ticket.is_reserved() {
                return Err(Error::bad_request("Cannot edit a reserved ticket"));
            }
            if ticket.user_id != user.id {
                return Err(Error::NotAuthorized);
            }
            check_resale_cap(
                input.price,
                input.face_value.or(ticket.face_value),
                state.resale_cap_percent,
            )?;
            Ok(Some(Change::Edit {
                title: input.title.clone(),
                price: input.price,
                face_value: input.face_value,
            }))
        })
        .await?;
    match outcome {
        Outcome::Changed(ticket) => {
            tracing::info!(version = ticket.version, "ticket updated");
            Ok(Json(view(&ticket, false)))
        }
        // An edit is always a change; kept total rather than panicking.
        Outcome::Unchanged(ticket) => Ok(Json(view(&ticket, false))),
        Outcome::Missing => Err(Error::NotFound),
    }
}

/// `DELETE /api/tickets/{id}` — the seller takes the ticket off sale, for
/// good: 204, version + 1, `ticket.updated` with `withdrawn: true` from the
/// outbox of the same update. Checks: the ticket exists (and is not already
/// withdrawn) → the caller owns it → no order reserves it; the last two are
/// made again on every compare-and-set round, and the write itself is
/// conditional on no order holding it, so a withdrawal and a reservation
/// never both land. An order that was created but had not reserved the
/// ticket yet is cancelled by orders when it sees the withdrawal (see the
/// architecture doc).
#[utoipa::path(
    delete,
    path = "/api/tickets/{id}",
    tag = "tickets",
    security(("session" = []), ("bearer" = [])),
    params(("id" = openapi::ObjectId, Path, description = "The ticket's id")),
    responses(
        (status = 204, description = "Withdrawn: no longer listed, shown or orderable"),
        (status = 400, description = "`Cannot withdraw a reserved ticket`", body = ErrorBody),
        (status = 401, description = "Not signed in, or not the seller", body = ErrorBody),
        (status = 404, description = "No such ticket, already withdrawn, or not an id", body = ErrorBody),
        (status = 409, description = "The ticket kept changing meanwhile; try again", body = ErrorBody),
    ),
)]
#[tracing::instrument(skip_all, fields(ticket_id = %id, user_id = %user.id))]
async fn withdraw(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Id(id): Id,
) -> Result<StatusCode> {
    let outcome = state
        .tickets
        .modify(id, |ticket| {
            if ticket.withdrawn {
                return Err(Error::NotFound);
            }
            if ticket.user_id != user.id {
                return Err(Error::NotAuthorized);
            }
            if ticket.is_reserved() {
                return Err(Error::bad_request("Cannot withdraw a reserved ticket"));
            }
            Ok(Some(Change::Withdraw))
        })
        .await?;
    match outcome {
        Outcome::Changed(ticket) => {
            tracing::info!(version = ticket.version, "ticket withdrawn");
            Ok(StatusCode::NO_CONTENT)
        }
        Outcome::Unchanged(_) => Ok(StatusCode::NO_CONTENT),
        Outcome::Missing => Err(Error::NotFound),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn validate(body: Value) -> Result<NewTicket> {
        NewTicket::check(serde_json::from_value::<TicketInput>(body).unwrap())
    }

    fn fields<T: std::fmt::Debug>(result: Result<T>) -> Vec<String> {
        match result {
            Err(Error::Validation(items)) => items.into_iter().filter_map(|i| i.field).collect(),
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn trims_the_title_and_reads_the_price_in_cents() {
        let input = validate(json!({"title": "  concert ", "price": "12.50"})).unwrap();
        assert_eq!(
            (input.title.as_str(), input.price.cents(), input.face_value),
            ("concert", 1250, None)
        );
        let input = validate(json!({"title": "c", "price": 1, "faceValue": "80.5"})).unwrap();
        assert_eq!(input.face_value, Some(Money::from_cents(8050)));
        assert_eq!(
            fields(validate(json!({"title": "c", "price": 1, "faceValue": 0}))),
            ["faceValue"]
        );
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
    fn the_cap_applies_only_with_a_cap_and_a_face_value() {
        let m = Money::from_cents;
        assert!(check_resale_cap(m(11_000), Some(m(10_000)), Some(110)).is_ok());
        assert_eq!(
            fields(check_resale_cap(m(11_001), Some(m(10_000)), Some(110))),
            ["price"]
        );
        assert!(check_resale_cap(m(1_000_000), None, Some(100)).is_ok());
        assert!(check_resale_cap(m(1_000_000), Some(m(1)), None).is_ok());
    }

    #[test]
    fn limit_defaults_and_clamps() {
        let limit = |raw: Option<&str>| {
            ListParams {
                limit: raw.map(str::to_owned),
                ..ListParams::default()
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

    #[test]
    fn the_next_page_keeps_the_parameters_and_encodes_them() {
        let params = ListParams {
            q: Some("café & co".into()),
            min_price: Some("5".into()),
            sort: Some("-price".into()),
            ..ListParams::default()
        };
        let query = params.query(None).unwrap();
        let cursor = Cursor {
            sort: Sort::PriceDescending,
            price: 500,
            id: mongodb::bson::oid::ObjectId::new(),
        };
        assert_eq!(
            params.next_page(&query, &cursor),
            format!(
                "/api/tickets?q=caf%C3%A9%20%26%20co&minPrice=5&sort=-price&limit=100&cursor={}",
                cursor.encode()
            )
        );
    }

    #[test]
    fn reports_every_bad_parameter_by_field() {
        let params = ListParams {
            min_price: Some("-1".into()),
            max_price: Some("1.234".into()),
            sort: Some("oldest".into()),
            limit: Some("x".into()),
            cursor: Some("nope".into()),
            ..ListParams::default()
        };
        let Err(Error::Validation(items)) = params.query(None) else {
            panic!("expected a validation error");
        };
        let fields: Vec<_> = items.into_iter().filter_map(|i| i.field).collect();
        assert_eq!(fields, ["minPrice", "maxPrice", "sort", "limit", "cursor"]);
    }
}
