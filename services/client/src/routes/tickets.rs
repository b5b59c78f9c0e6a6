//! Tickets: the list for sale (the landing page), selling, a ticket's page
//! with Purchase, and editing one's own ticket while it is not reserved.
//!
//! Purchase posts to `/tickets/{id}/purchase`, which creates the order
//! (`POST /api/orders`) and goes to the order's page; a refusal such as
//! `Ticket is already reserved` is shown on the ticket's page.

use askama::Template;
use axum::{
    Router,
    extract::State,
    http::StatusCode,
    response::Response,
    routing::{get, post},
};
use common::error::ErrorItem;
use serde::Deserialize;

use super::{PageId, current_user, form_errors, not_yours, require};
use crate::{
    AppState,
    api::{Ticket, User, Visitor},
    pages::{FormErrors, Layout, Notice, PageError, PageForm, render, see_other},
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/tickets/new", get(new_page).post(create))
        .route("/tickets/{id}", get(show))
        .route("/tickets/{id}/purchase", post(purchase))
        .route("/tickets/{id}/edit", get(edit_page).post(update))
}

const FIELDS: &[&str] = &["title", "price"];
const NOT_YOUR_TICKET: &str = "Only the seller of a ticket can edit it.";

#[derive(Template)]
#[template(path = "tickets/index.html")]
struct IndexPage {
    layout: Layout,
    tickets: Vec<Ticket>,
    /// The tickets could not be loaded.
    unavailable: bool,
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
}

/// `/`: every ticket for sale. If the tickets cannot be loaded the page
/// still shows who is signed in and their links, with an apology (503/502).
async fn index(
    State(state): State<AppState>,
    visitor: Visitor,
    notice: Notice,
) -> Result<Response, PageError> {
    let (user, tickets) = tokio::join!(current_user(&state, &visitor), state.api.tickets(&visitor));
    let layout = Layout::new(user?).with_notice(notice);
    let (status, tickets, unavailable) = match tickets {
        Ok(tickets) => (StatusCode::OK, tickets, false),
        Err(error) => match PageError::from(error) {
            PageError::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, Vec::new(), true),
            PageError::BadGateway => (StatusCode::BAD_GATEWAY, Vec::new(), true),
            other => return Err(other),
        },
    };
    let page = IndexPage {
        layout,
        tickets,
        unavailable,
    };
    Ok(render(status, &page))
}

async fn new_page(State(state): State<AppState>, visitor: Visitor) -> Result<Response, PageError> {
    let user = require(current_user(&state, &visitor).await?)?;
    let page = TicketForm {
        layout: Layout::new(Some(user)),
        editing: None,
        title: String::new(),
        price: String::new(),
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
        .create_ticket(&visitor, input.title.trim(), &input.price)
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
        .update_ticket(&visitor, &id, input.title.trim(), &input.price)
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
