//! The pages, one module per area, each with its own `router()`.
//!
//! | page | module |
//! |---|---|
//! | `/` (tickets for sale), `/tickets/new`, `/tickets/{id}`, `/tickets/{id}/edit`, Purchase | [`tickets`] |
//! | `/orders`, `/orders/{id}` (countdown, Pay, Cancel) | [`orders`] |
//! | `/auth/signup`, `/auth/signin`, `/auth/signout` | [`auth`] |
//!
//! Every form is a plain POST. Success answers `303 See Other` (PRG); the
//! API's refusals (`errors[]`) re-render the form with the user's input and
//! each message by its field, with status 422.

pub mod auth;
pub mod orders;
pub mod tickets;

use axum::{
    Router,
    extract::{FromRequestParts, Path},
    http::{StatusCode, request::Parts},
};
use common::error::ErrorItem;

use crate::{
    AppState,
    api::{ApiError, ObjectId, User, Visitor},
    pages::PageError,
};

pub fn router() -> Router<AppState> {
    Router::new()
        .merge(tickets::router())
        .merge(orders::router())
        .merge(auth::router())
}

/// The `{id}` of a page's path; anything but 24 hex digits is the 404 page.
#[derive(Debug, Clone)]
pub struct PageId(pub ObjectId);

impl<S: Send + Sync> FromRequestParts<S> for PageId {
    type Rejection = PageError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, PageError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| PageError::NotFound)?;
        ObjectId::parse(&raw).map(Self).ok_or(PageError::NotFound)
    }
}

/// Who is signed in. A visitor without a session cookie is anonymous for
/// sure, so the API is asked only when there is one.
pub async fn current_user(state: &AppState, visitor: &Visitor) -> Result<Option<User>, PageError> {
    if !visitor.has_session_cookie() {
        return Ok(None);
    }
    Ok(state.api.current_user(visitor).await?)
}

/// The signed-in user, or "sign in first".
pub fn require(user: Option<User>) -> Result<User, PageError> {
    user.ok_or(PageError::SignInRequired)
}

/// The messages of a refusal a form shows (400, 409, 422); anything else
/// ends the page.
pub fn form_errors(error: ApiError) -> Result<Vec<ErrorItem>, PageError> {
    match error {
        ApiError::Rejected {
            status:
                StatusCode::BAD_REQUEST | StatusCode::CONFLICT | StatusCode::UNPROCESSABLE_ENTITY,
            errors,
        } => Ok(errors),
        other => Err(other.into()),
    }
}

/// For a signed-in user the API's 401 means "not yours", not "sign in".
pub fn not_yours(error: ApiError, message: &'static str) -> PageError {
    match error.rejected_status() {
        Some(StatusCode::UNAUTHORIZED) => PageError::Forbidden(message),
        _ => error.into(),
    }
}
