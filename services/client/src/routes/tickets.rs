//! Tickets: the list for sale (the landing page, with search, filters and
//! pages), selling, a ticket's page with Purchase, editing one's own ticket
//! while it is not reserved, and "My listings" with Withdraw.
//!
//! Pages without JavaScript: the search is a GET form, and the API's
//! keyset cursor goes into the page's URL. The API only pages forward, so
//! the URL also carries the cursors of the pages before (`trail`, one per
//! page, `-` for the first): "Previous" pops the last one.
//!
//! Purchase posts to `/tickets/{id}/purchase`, which creates the order
//! (`POST /api/orders`) and goes to the order's page; a refusal such as
//! `Ticket is already reserved` is shown on the ticket's page.

use askama::Template;
use axum::{
    Router,
    extract::{Query, State},
    http::StatusCode,
    response::Response,
    routing::{get, post},
};
use common::error::ErrorItem;
use serde::Deserialize;

use super::{PageId, current_user, form_errors, not_yours, require};
use crate::{
    AppState,
    api::{self, ApiError, Ticket, TicketQuery, User, Visitor},
    pages::{FormErrors, Layout, Notice, PageError, PageForm, render, see_other},
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/tickets/new", get(new_page).post(create))
        .route("/tickets/mine", get(mine))
        .route("/tickets/{id}/withdraw", post(withdraw))
        .route("/tickets/{id}", get(show))
        .route("/tickets/{id}/purchase", post(purchase))
        .route("/tickets/{id}/edit", get(edit_page).post(update))
}

const FIELDS: &[&str] = &["title", "price", "faceValue"];
/// The filters the landing page shows each error beside.
const FILTER_FIELDS: &[&str] = &["q", "minPrice", "maxPrice", "sort"];
/// Tickets per page on the landing page and in "My listings".
const PAGE_SIZE: u32 = 24;
/// At most this many earlier pages are remembered for "Previous".
const MAX_TRAIL: usize = 50;
const NOT_YOUR_TICKET: &str = "Only the seller of a ticket can edit it.";
const NOT_YOUR_TICKET_TO_WITHDRAW: &str = "Only the seller of a ticket can withdraw it.";

#[derive(Template)]
#[template(path = "tickets/index.html")]
struct IndexPage {
    layout: Layout,
    tickets: Vec<Ticket>,
    /// The tickets could not be loaded.
    unavailable: bool,
    /// The search and filters, as typed.
    query: TicketQuery,
    /// The API refused them.
    errors: FormErrors,
    /// Links to the next and the previous page.
    next: Option<String>,
    previous: Option<String>,
}

impl IndexPage {
    fn sort_is(&self, value: &str) -> bool {
        self.query.sort == value || (value == "newest" && self.query.sort.is_empty())
    }
}

/// `/tickets/mine`: the signed-in seller's tickets with their status.
#[derive(Template)]
#[template(path = "tickets/mine.html")]
struct MinePage {
    layout: Layout,
    tickets: Vec<Ticket>,
    errors: FormErrors,
    next: Option<String>,
    previous: Option<String>,
}

/// Where a paged list is: the cursor of this page and those before it.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Paging {
    cursor: String,
    trail: String,
}

impl Paging {
    /// The cursors of the pages before this one (`""` for the first page).
    fn before(&self) -> Vec<&str> {
        self.trail
            .split(',')
            .filter(|c| !c.is_empty())
            .map(|c| if c == "-" { "" } else { c })
            .collect()
    }

    /// `cursor=…&trail=…` of the page after this one, starting at `next`.
    fn next(&self, next: &str) -> String {
        let mut trail: Vec<&str> = self.before();
        trail.push(&self.cursor);
        let skip = trail.len().saturating_sub(MAX_TRAIL);
        format!("cursor={next}&trail={}", trail_text(&trail[skip..]))
    }

    /// `cursor=…&trail=…` of the page before this one, if there is one.
    fn previous(&self) -> Option<String> {
        let mut trail = self.before();
        let back = trail.pop()?;
        Some(format!("cursor={back}&trail={}", trail_text(&trail)))
    }
}

fn trail_text(cursors: &[&str]) -> String {
    cursors
        .iter()
        .map(|c| if c.is_empty() { "-" } else { c })
        .collect::<Vec<_>>()
        .join(",")
}

/// A cursor as it may go into a link: the API's are base64url.
fn is_cursor(text: &str) -> bool {
    text.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b',')
}

/// `?a=b&…&` of the landing page's filters, ready for a paging link.
fn filter_query(query: &TicketQuery) -> String {
    query
        .filters()
        .into_iter()
        .map(|(name, value)| format!("{name}={}&", crate::pages::percent_encode(value)))
        .collect()
}

#[derive(Template)]
#[template(path = "tickets/show.html")]
struct TicketPage {
    layout: Layout,
    ticket: Ticket,
    errors: FormErrors,
}

impl TicketPage {
    fn is_owner(&self) -> bool {
        self.layout
            .user
            .as_ref()
            .is_some_and(|user| user.id == self.ticket.user_id)
    }
}

/// Selling and editing share one form.
#[derive(Template)]
#[template(path = "tickets/form.html")]
struct TicketForm {
    layout: Layout,
    /// The ticket being edited; `None` when selling a new one.
    editing: Option<String>,
    title: String,
    price: String,
    face_value: String,
    /// Reserved: the form is shown but cannot be sent.
    locked: bool,
    errors: FormErrors,
}

impl TicketForm {
    fn action(&self) -> String {
        match &self.editing {
            Some(id) => format!("/tickets/{id}/edit"),
            None => "/tickets/new".to_owned(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct TicketInput {
    title: String,
    price: String,
    #[serde(rename = "faceValue")]
    face_value: String,
}

/// `/`: the tickets for sale, searched and filtered as the query string
/// says, one page at a time. If the tickets cannot be loaded the page still
/// shows who is signed in and their links, with an apology (503/502); a
/// search the API refuses shows its messages beside the filters (400).
async fn index(
    State(state): State<AppState>,
    visitor: Visitor,
    notice: Notice,
    Query(query): Query<TicketQuery>,
    Query(paging): Query<Paging>,
) -> Result<Response, PageError> {
    let query = TicketQuery {
        cursor: paging.cursor.clone(),
        ..query
    };
    if !is_cursor(&paging.cursor) || !is_cursor(&paging.trail) {
        return Err(PageError::NotFound);
    }
    let (user, page) = tokio::join!(
        current_user(&state, &visitor),
        state.api.ticket_page(&visitor, &query, PAGE_SIZE)
    );
    let layout = Layout::new(user?).with_notice(notice);
    let mut errors = FormErrors::none();
    let (status, page, unavailable) = match page {
        Ok(page) => (StatusCode::OK, page, false),
        Err(ApiError::Rejected {
            status: StatusCode::BAD_REQUEST,
            errors: items,
        }) => {
            errors = FormErrors::new(FILTER_FIELDS, items);
            (StatusCode::BAD_REQUEST, Default::default(), false)
        }
        Err(error) => match PageError::from(error) {
            PageError::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, Default::default(), true),
            PageError::BadGateway => (StatusCode::BAD_GATEWAY, Default::default(), true),
            other => return Err(other),
        },
    };
    let filters = filter_query(&query);
    let page = IndexPage {
        layout,
        next: page
            .next
            .as_deref()
            .map(|next| format!("/?{filters}{}", paging.next(next))),
        previous: paging
            .previous()
            .map(|previous| format!("/?{filters}{previous}")),
        tickets: page.tickets,
        unavailable,
        query,
        errors,
    };
    Ok(render(status, &page))
}

/// `/tickets/mine`: the signed-in seller's tickets in every state.
async fn mine(
    State(state): State<AppState>,
    visitor: Visitor,
    notice: Notice,
    Query(paging): Query<Paging>,
) -> Result<Response, PageError> {
    let user = require(current_user(&state, &visitor).await?)?;
    if !is_cursor(&paging.cursor) || !is_cursor(&paging.trail) {
        return Err(PageError::NotFound);
    }
    let page = state
        .api
        .my_tickets(&visitor, &paging.cursor, PAGE_SIZE)
        .await?;
    let layout = Layout::new(Some(user)).with_notice(notice);
    let page = MinePage::new(layout, page, &paging, FormErrors::none());
    Ok(render(StatusCode::OK, &page))
}

impl MinePage {
    fn new(layout: Layout, page: api::TicketPage, paging: &Paging, errors: FormErrors) -> Self {
        Self {
            layout,
            next: page
                .next
                .as_deref()
                .map(|next| format!("/tickets/mine?{}", paging.next(next))),
            previous: paging
                .previous()
                .map(|previous| format!("/tickets/mine?{previous}")),
            tickets: page.tickets,
            errors,
        }
    }
}

/// Withdraw: take one's ticket off sale, back to "My listings". A refusal
/// (`Cannot withdraw a reserved ticket`) is shown there.
#[tracing::instrument(skip_all, fields(ticket_id = %id.0))]
async fn withdraw(
    State(state): State<AppState>,
    visitor: Visitor,
    id: PageId,
) -> Result<Response, PageError> {
    let PageId(id) = id;
    let user = require(current_user(&state, &visitor).await?)?;
    let errors = match state.api.withdraw_ticket(&visitor, &id).await {
        Ok(()) => return Ok(see_other("/tickets/mine?notice=withdrawn")),
        Err(error) if error.rejected_status() == Some(StatusCode::UNAUTHORIZED) => {
            return Err(not_yours(error, NOT_YOUR_TICKET_TO_WITHDRAW));
        }
        Err(error) => form_errors(error)?,
    };
    let page = state.api.my_tickets(&visitor, "", PAGE_SIZE).await?;
    let page = MinePage::new(
        Layout::new(Some(user)),
        page,
        &Paging::default(),
        FormErrors::new(&[], errors),
    );
    Ok(render(StatusCode::UNPROCESSABLE_ENTITY, &page))
}

async fn new_page(State(state): State<AppState>, visitor: Visitor) -> Result<Response, PageError> {
    let user = require(current_user(&state, &visitor).await?)?;
    let page = TicketForm {
        layout: Layout::new(Some(user)),
        editing: None,
        title: String::new(),
        price: String::new(),
        face_value: String::new(),
        locked: false,
        errors: FormErrors::none(),
    };
    Ok(render(StatusCode::OK, &page))
}

#[tracing::instrument(skip_all)]
async fn create(
    State(state): State<AppState>,
    visitor: Visitor,
    PageForm(input): PageForm<TicketInput>,
) -> Result<Response, PageError> {
    let user = require(current_user(&state, &visitor).await?)?;
    match state
        .api
        .create_ticket(
            &visitor,
            input.title.trim(),
            &input.price,
            &input.face_value,
        )
        .await
    {
        Ok(ticket) => Ok(see_other(&format!(
            "/tickets/{}?notice=listed",
            checked_id(&ticket.id)?
        ))),
        Err(error) => Ok(refused_form(user, None, input, form_errors(error)?)),
    }
}

async fn show(
    State(state): State<AppState>,
    visitor: Visitor,
    PageId(id): PageId,
    notice: Notice,
) -> Result<Response, PageError> {
    let (user, ticket) = tokio::join!(
        current_user(&state, &visitor),
        state.api.ticket(&visitor, &id)
    );
    let page = TicketPage {
        layout: Layout::new(user?).with_notice(notice),
        ticket: ticket?,
        errors: FormErrors::none(),
    };
    Ok(render(StatusCode::OK, &page))
}

/// Purchase: create the order and go pay for it.
#[tracing::instrument(skip_all, fields(ticket_id = %id.0))]
async fn purchase(
    State(state): State<AppState>,
    visitor: Visitor,
    id: PageId,
) -> Result<Response, PageError> {
    let PageId(id) = id;
    let user = require(current_user(&state, &visitor).await?)?;
    let errors = match state.api.create_order(&visitor, &id).await {
        Ok(order) => return Ok(see_other(&format!("/orders/{order}"))),
        // Orders learns of new tickets from an event: a ticket listed a
        // moment ago may not be there yet. (A ticket that is really gone is
        // the 404 page below.)
        Err(error) if error.rejected_status() == Some(StatusCode::NOT_FOUND) => vec![ErrorItem {
            message: "This ticket can't be bought just yet. Please try again in a moment.".into(),
            field: None,
        }],
        // The ticket's page again, as it is now, with the reason.
        Err(error) => form_errors(error)?,
    };
    let ticket = state.api.ticket(&visitor, &id).await?;
    let page = TicketPage {
        layout: Layout::new(Some(user)),
        ticket,
        errors: FormErrors::new(&[], errors),
    };
    Ok(render(StatusCode::UNPROCESSABLE_ENTITY, &page))
}

async fn edit_page(
    State(state): State<AppState>,
    visitor: Visitor,
    PageId(id): PageId,
) -> Result<Response, PageError> {
    let (user, ticket) = tokio::join!(
        current_user(&state, &visitor),
        state.api.ticket(&visitor, &id)
    );
    let user = require(user?)?;
    let ticket = ticket?;
    if ticket.user_id != user.id {
        return Err(PageError::Forbidden(NOT_YOUR_TICKET));
    }
    let locked = ticket.is_reserved();
    let errors = if locked {
        vec![ErrorItem {
            message: "Cannot edit a reserved ticket".into(),
            field: None,
        }]
    } else {
        Vec::new()
    };
    let page = TicketForm {
        layout: Layout::new(Some(user)),
        editing: Some(ticket.id),
        title: ticket.title,
        price: ticket.price.to_string(),
        face_value: ticket.face_value.map(|f| f.to_string()).unwrap_or_default(),
        locked,
        errors: FormErrors::new(FIELDS, errors),
    };
    Ok(render(StatusCode::OK, &page))
}

#[tracing::instrument(skip_all, fields(ticket_id = %id.0))]
async fn update(
    State(state): State<AppState>,
    visitor: Visitor,
    id: PageId,
    PageForm(input): PageForm<TicketInput>,
) -> Result<Response, PageError> {
    let PageId(id) = id;
    let user = require(current_user(&state, &visitor).await?)?;
    match state
        .api
        .update_ticket(
            &visitor,
            &id,
            input.title.trim(),
            &input.price,
            &input.face_value,
        )
        .await
    {
        Ok(_) => Ok(see_other(&format!("/tickets/{id}?notice=updated"))),
        Err(error) if error.rejected_status() == Some(StatusCode::UNAUTHORIZED) => {
            Err(not_yours(error, NOT_YOUR_TICKET))
        }
        Err(error) => Ok(refused_form(
            user,
            Some(id.to_string()),
            input,
            form_errors(error)?,
        )),
    }
}

/// The form again with what the user typed and the API's messages.
fn refused_form(
    user: User,
    editing: Option<String>,
    input: TicketInput,
    errors: Vec<ErrorItem>,
) -> Response {
    let page = TicketForm {
        layout: Layout::new(Some(user)),
        editing,
        title: input.title,
        price: input.price,
        face_value: input.face_value,
        locked: false,
        errors: FormErrors::new(FIELDS, errors),
    };
    render(StatusCode::UNPROCESSABLE_ENTITY, &page)
}

/// An id from an API answer, checked before it goes into a URL.
fn checked_id(id: &str) -> Result<crate::api::ObjectId, PageError> {
    crate::api::ObjectId::parse(id).ok_or_else(|| {
        tracing::error!(id, "the API returned a malformed id");
        PageError::BadGateway
    })
}
