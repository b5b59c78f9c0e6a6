//! Orders: "My orders", and an order's page with the countdown to
//! `expiresAt`, the Pay form and Cancel.
//!
//! The countdown is rendered on the server (seconds left, so the browser's
//! clock does not matter) and ticks in the browser (`app.js`); when it runs
//! out the page says "Order expired".
//!
//! With `STRIPE_PUBLISHABLE_KEY` the page asks payments for the order's
//! PaymentIntent (`POST /api/payments {orderId}`) and mounts Stripe.js's Card
//! Element; `confirmCardPayment` with the intent's client secret runs 3-D
//! Secure when the bank asks, then comes back to `?payment=processing`, where
//! the page says `Processing…` and refreshes itself (a meta refresh: no
//! JavaScript needed) until Stripe's webhook has completed the order: `Paid`.
//! A payment that arrived after the order was cancelled shows `Refunded`.
//! (The Card Element, which Stripe still supports, rather than the Payment
//! Element: the Payment Element is served by Stripe only, so it cannot be
//! exercised offline, while the devstack fake's Stripe.js fakes the Card
//! Element and `confirmCardPayment`.)
//!
//! Without a publishable key (local development) the page offers "Pay with
//! test card", which posts `tok_visa` to `/orders/{id}/pay`: payments confirms
//! the intent server-side, as the original client's body asks.

use std::sync::Arc;

use askama::Template;
use axum::{
    Router,
    extract::{Query, State},
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
    api::{
        ObjectId, Order, OrderStatus, OrderTicket, Payment, PaymentStatus, StatusBadge as _, User,
        Visitor,
    },
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
    ticket: OrderTicket,
    seconds_left: i64,
    phase: Phase,
    stripe_key: Option<Arc<str>>,
    stripe_js_url: Arc<str>,
    payment: Option<Payment>,
    /// Back from Stripe.js with the payment confirmed.
    returned: bool,
    errors: FormErrors,
}

impl OrderPage {
    fn new(
        user: User,
        (order, ticket): (Order, OrderTicket),
        state: &AppState,
        payment: Option<Payment>,
        errors: Vec<ErrorItem>,
    ) -> Self {
        let stripe_key = state.stripe_publishable_key.clone();
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
            ticket,
            seconds_left,
            phase,
            stripe_key,
            stripe_js_url: state.stripe_js_url.clone(),
            payment,
            returned: false,
            errors: FormErrors::new(&[], errors),
        }
    }

    fn payment_status(&self) -> Option<PaymentStatus> {
        self.payment.as_ref().map(|p| p.status)
    }

    /// Paid at Stripe (or just confirmed there), not yet complete here: the
    /// webhook has not landed.
    fn is_processing(&self) -> bool {
        self.phase == Phase::Open
            && (self.payment_status() == Some(PaymentStatus::Succeeded)
                || (self.returned && self.payment_status() == Some(PaymentStatus::Pending)))
    }

    /// Back from Stripe.js, but the order was cancelled meanwhile (in another
    /// tab, or the window ran out during 3-D Secure) and payments has not yet
    /// learnt what became of the money: it ends `refunded` if it went
    /// through, `cancelled` if it did not.
    fn is_checking(&self) -> bool {
        matches!(self.phase, Phase::Expired | Phase::Cancelled)
            && self.returned
            && self.payment_status() == Some(PaymentStatus::Pending)
    }

    /// Money that arrived for the cancelled order, given back (or on its way
    /// back: `succeeded` on a cancelled order is refunded at once).
    fn is_refunded(&self) -> bool {
        matches!(self.phase, Phase::Expired | Phase::Cancelled)
            && matches!(
                self.payment_status(),
                Some(PaymentStatus::Refunded | PaymentStatus::Succeeded)
            )
    }

    fn refund_done(&self) -> bool {
        self.payment_status() == Some(PaymentStatus::Refunded)
    }

    /// The intent's client secret, for Stripe.js.
    fn client_secret(&self) -> Option<&str> {
        self.payment.as_ref()?.client_secret.as_deref()
    }

    fn uses_stripe_js(&self) -> bool {
        self.is_open() && !self.is_processing() && self.client_secret().is_some()
    }

    /// Refresh by itself: while processing, while the money of a cancelled
    /// order is being checked, while a refund is on its way, and
    /// while payments has not got the order yet.
    fn refreshes(&self) -> bool {
        self.is_processing()
            || self.is_checking()
            || (self.is_refunded() && !self.refund_done())
            || (self.is_open() && self.stripe_key.is_some() && self.client_secret().is_none())
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

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ShowQuery {
    /// `processing`: back from Stripe.js.
    payment: Option<String>,
}

/// The order's payment as the page needs it: with the intent (created on
/// first view) while the order can be paid by Stripe.js, else what there is.
/// A payment that cannot be read is shown as none (the page still works).
async fn payment_for(
    state: &AppState,
    visitor: &Visitor,
    order: &Order,
    id: &ObjectId,
) -> Option<Payment> {
    let open = order.status.is_open() && order.expires_at > Utc::now();
    let found = if open && state.stripe_publishable_key.is_some() {
        match state.api.open_payment(visitor, id).await {
            Ok(payment) => Ok(Some(payment)),
            // Already paid (or payments has not got the order yet: 404).
            Err(_) => state.api.payment(visitor, id).await,
        }
    } else {
        state.api.payment(visitor, id).await
    };
    found.unwrap_or_else(|error| {
        tracing::warn!(error = %error, "the order's payment could not be read");
        None
    })
}

async fn show(
    State(state): State<AppState>,
    visitor: Visitor,
    PageId(id): PageId,
    notice: Notice,
    Query(query): Query<ShowQuery>,
) -> Result<Response, PageError> {
    let user = require(current_user(&state, &visitor).await?)?;
    let order = state
        .api
        .order(&visitor, &id)
        .await
        .map_err(|e| not_yours(e, NOT_YOUR_ORDER))?;
    let payment = payment_for(&state, &visitor, &order.0, &id).await;
    let mut page = OrderPage::new(user, order, &state, payment, Vec::new());
    page.returned = query.payment.as_deref() == Some("processing");
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
    let payment = payment_for(state, visitor, &order.0, id).await;
    let page = OrderPage::new(user, order, state, payment, errors);
    Ok(render(StatusCode::UNPROCESSABLE_ENTITY, &page))
}
