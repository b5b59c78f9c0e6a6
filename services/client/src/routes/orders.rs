//! Orders: "My orders", and an order's page with the countdown to
//! `expiresAt`, the Pay form and Cancel.
//!
//! The countdown is rendered on the server (seconds left, so the browser's
//! clock does not matter) and ticks in the browser (`app.js`); when it runs
//! out the page says "Order expired". Paying posts a card token to
//! `/orders/{id}/pay`, which calls `POST /api/payments` and goes to
//! "My orders". With `STRIPE_PUBLISHABLE_KEY` the token comes from Stripe.js;
//! without it the page offers "Pay with test card", which sends `tok_visa`.

use std::sync::Arc;

use askama::Template;
use axum::{
    Router,
    extract::State,
    http::StatusCode,
    response::Response,
    routing::{get, post},
};
use chrono::Utc;
use common::error::ErrorItem;
use serde::Deserialize;

use super::{PageId, current_user, form_errors, not_yours, require};
use crate::{
    AppState,
    api::{ObjectId, Order, OrderStatus, User, Visitor},
    pages::{FormErrors, Layout, Notice, PageError, PageForm, render, see_other},
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/orders", get(index))
        .route("/orders/{id}", get(show))
        .route("/orders/{id}/pay", post(pay))
        .route("/orders/{id}/cancel", post(cancel))
}

const NOT_YOUR_ORDER: &str = "This order belongs to someone else.";

#[derive(Template)]
#[template(path = "orders/index.html")]
struct OrdersPage {
    layout: Layout,
    orders: Vec<Order>,
}

/// Where an order stands, as its page shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for payment, with time left.
    Open,
    /// The window passed (or the order was cancelled after it passed).
    Expired,
    /// Cancelled while there was time left.
    Cancelled,
    Complete,
}

#[derive(Template)]
#[template(path = "orders/show.html")]
struct OrderPage {
    layout: Layout,
    order: Order,
    seconds_left: i64,
    phase: Phase,
    stripe_key: Option<Arc<str>>,
    errors: FormErrors,
}

impl OrderPage {
    fn new(user: User, order: Order, stripe_key: Option<Arc<str>>, errors: Vec<ErrorItem>) -> Self {
        let seconds_left = (order.expires_at - Utc::now()).num_seconds().max(0);
        let phase = match order.status {
            OrderStatus::Complete => Phase::Complete,
            _ if seconds_left == 0 => Phase::Expired,
            OrderStatus::Cancelled => Phase::Cancelled,
            OrderStatus::Created | OrderStatus::AwaitingPayment => Phase::Open,
        };
        Self {
            layout: Layout::new(Some(user)),
            order,
            seconds_left,
            phase,
            stripe_key,
            errors: FormErrors::new(&[], errors),
        }
    }

    fn is_open(&self) -> bool {
        self.phase == Phase::Open
    }

    fn is_expired(&self) -> bool {
        self.phase == Phase::Expired
    }

    fn is_cancelled(&self) -> bool {
        self.phase == Phase::Cancelled
    }

    fn is_complete(&self) -> bool {
        self.phase == Phase::Complete
    }

    fn seconds_unit(&self) -> &'static str {
        if self.seconds_left == 1 {
            "second"
        } else {
            "seconds"
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PayForm {
    token: String,
}

async fn index(
    State(state): State<AppState>,
    visitor: Visitor,
    notice: Notice,
) -> Result<Response, PageError> {
    let user = require(current_user(&state, &visitor).await?)?;
    let orders = state.api.orders(&visitor).await?;
    let page = OrdersPage {
        layout: Layout::new(Some(user)).with_notice(notice),
        orders,
    };
    Ok(render(StatusCode::OK, &page))
}

async fn show(
    State(state): State<AppState>,
    visitor: Visitor,
    PageId(id): PageId,
    notice: Notice,
) -> Result<Response, PageError> {
    let user = require(current_user(&state, &visitor).await?)?;
    let order = state
        .api
        .order(&visitor, &id)
        .await
        .map_err(|e| not_yours(e, NOT_YOUR_ORDER))?;
    let mut page = OrderPage::new(
        user,
        order,
        state.stripe_publishable_key.clone(),
        Vec::new(),
    );
    page.layout = page.layout.with_notice(notice);
    Ok(render(StatusCode::OK, &page))
}

#[tracing::instrument(skip_all, fields(order_id = %id.0))]
async fn pay(
    State(state): State<AppState>,
    visitor: Visitor,
    id: PageId,
    PageForm(form): PageForm<PayForm>,
) -> Result<Response, PageError> {
    let PageId(id) = id;
    let user = require(current_user(&state, &visitor).await?)?;
    let token = form.token.trim();
    let errors = if token.is_empty() {
        vec![ErrorItem {
            message: "The card could not be read. Please try again.".into(),
            field: None,
        }]
    } else {
        match state.api.pay(&visitor, &id, token).await {
            Ok(()) => return Ok(see_other("/orders?notice=paid")),
            Err(error) if error.rejected_status() == Some(StatusCode::UNAUTHORIZED) => {
                return Err(not_yours(error, NOT_YOUR_ORDER));
            }
            // Payments learns of new orders from an event: an order made a
            // moment ago may not be there yet. (An order that is really
            // gone is the 404 page below.)
            Err(error) if error.rejected_status() == Some(StatusCode::NOT_FOUND) => {
                vec![ErrorItem {
                    message: "We couldn't take the payment just yet. Please try again in a moment."
                        .into(),
                    field: None,
                }]
            }
            Err(error) => form_errors(error)?,
        }
    };
    refused(&state, &visitor, user, &id, errors).await
}

#[tracing::instrument(skip_all, fields(order_id = %id.0))]
async fn cancel(
    State(state): State<AppState>,
    visitor: Visitor,
    id: PageId,
) -> Result<Response, PageError> {
    let PageId(id) = id;
    let user = require(current_user(&state, &visitor).await?)?;
    match state.api.cancel_order(&visitor, &id).await {
        Ok(()) => Ok(see_other(&format!("/orders/{id}?notice=cancelled"))),
        Err(error) if error.rejected_status() == Some(StatusCode::UNAUTHORIZED) => {
            Err(not_yours(error, NOT_YOUR_ORDER))
        }
        Err(error) => {
            let errors = form_errors(error)?;
            refused(&state, &visitor, user, &id, errors).await
        }
    }
}

/// The order's page again, as it is now, with the API's reason.
async fn refused(
    state: &AppState,
    visitor: &Visitor,
    user: User,
    id: &ObjectId,
    errors: Vec<ErrorItem>,
) -> Result<Response, PageError> {
    let order = state
        .api
        .order(visitor, id)
        .await
        .map_err(|e| not_yours(e, NOT_YOUR_ORDER))?;
    let page = OrderPage::new(user, order, state.stripe_publishable_key.clone(), errors);
    Ok(render(StatusCode::UNPROCESSABLE_ENTITY, &page))
}
