//! `/auth/signup`, `/auth/signin`, `/auth/signout`.
//!
//! The forms post here; we call `/api/users/*` and relay its `Set-Cookie`
//! to the browser with the redirect, so the session cookie is exactly the
//! one auth issued. Sign-up and sign-in come back to `?next=` (a local path
//! only). Sign-out is a POST (a link or a prefetch must not sign anyone out);
//! `GET /auth/signout` asks for confirmation.

use askama::Template;
use axum::{
    Router,
    extract::{Query, State, rejection::QueryRejection},
    http::{StatusCode, header},
    response::Response,
    routing::get,
};
use common::error::ErrorItem;
use serde::Deserialize;

use super::{current_user, form_errors};
use crate::{
    AppState,
    api::{SetCookies, Visitor},
    pages::{FormErrors, Layout, PageError, PageForm, render, safe_next, see_other},
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/auth/signup",
            get(form_page::<SIGN_UP>).post(submit::<SIGN_UP>),
        )
        .route(
            "/auth/signin",
            get(form_page::<SIGN_IN>).post(submit::<SIGN_IN>),
        )
        .route("/auth/signout", get(signout_page).post(signout))
}

const FIELDS: &[&str] = &["email", "password"];

/// Which of the two forms (`SIGNUP` in the handlers and the page).
const SIGN_UP: bool = true;
const SIGN_IN: bool = false;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct NextQuery {
    next: String,
}

/// `?next=`; a malformed query string counts as none.
type NextParam = Result<Query<NextQuery>, QueryRejection>;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct CredentialsForm {
    email: String,
    password: String,
    next: String,
}

/// Sign-up and sign-in share one form.
#[derive(Template)]
#[template(path = "auth/form.html")]
struct AuthPage {
    layout: Layout,
    signup: bool,
    email: String,
    next: String,
    errors: FormErrors,
}

impl AuthPage {
    fn action(&self) -> &'static str {
        if self.signup {
            "/auth/signup"
        } else {
            "/auth/signin"
        }
    }

    /// `?next=…` to carry over to the other form, or nothing.
    fn next_query(&self) -> String {
        if self.next.is_empty() || self.next == "/" {
            String::new()
        } else {
            format!("?next={}", crate::pages::percent_encode(&self.next))
        }
    }
}

#[derive(Template)]
#[template(path = "auth/signout.html")]
struct SignoutPage {
    layout: Layout,
}

/// The empty form; a visitor who is signed in already goes on to `next`.
async fn form_page<const SIGNUP: bool>(
    State(state): State<AppState>,
    visitor: Visitor,
    query: NextParam,
) -> Result<Response, PageError> {
    let next = query.map(|Query(q)| q.next).unwrap_or_default();
    if current_user(&state, &visitor).await?.is_some() {
        return Ok(see_other(safe_next(&next)));
    }
    let page = AuthPage {
        layout: Layout::new(None),
        signup: SIGNUP,
        email: String::new(),
        next: safe_next(&next).to_owned(),
        errors: FormErrors::none(),
    };
    Ok(render(StatusCode::OK, &page))
}

/// The form posted: auth's cookie and on to `next`, or the form again.
#[tracing::instrument(skip_all, fields(signup = SIGNUP))]
async fn submit<const SIGNUP: bool>(
    State(state): State<AppState>,
    visitor: Visitor,
    PageForm(form): PageForm<CredentialsForm>,
) -> Result<Response, PageError> {
    match state
        .api
        .credentials(&visitor, SIGNUP, form.email.trim(), &form.password)
        .await
    {
        Ok(cookies) => Ok(signed_in(&form, cookies)),
        Err(error) => Ok(refused(form, form_errors(error)?, SIGNUP)),
    }
}

/// On to `next`, with auth's cookie.
fn signed_in(form: &CredentialsForm, cookies: SetCookies) -> Response {
    with_cookies(see_other(safe_next(&form.next)), cookies)
}

/// The form again with the email (never the password) and the messages.
fn refused(form: CredentialsForm, errors: Vec<ErrorItem>, signup: bool) -> Response {
    let page = AuthPage {
        layout: Layout::new(None),
        signup,
        email: form.email.trim().to_owned(),
        next: safe_next(&form.next).to_owned(),
        errors: FormErrors::new(FIELDS, errors),
    };
    render(StatusCode::UNPROCESSABLE_ENTITY, &page)
}

async fn signout_page(
    State(state): State<AppState>,
    visitor: Visitor,
) -> Result<Response, PageError> {
    match current_user(&state, &visitor).await? {
        None => Ok(see_other("/")),
        Some(user) => Ok(render(
            StatusCode::OK,
            &SignoutPage {
                layout: Layout::new(Some(user)),
            },
        )),
    }
}

#[tracing::instrument(skip_all)]
async fn signout(State(state): State<AppState>, visitor: Visitor) -> Result<Response, PageError> {
    let cookies = state.api.signout(&visitor).await?;
    Ok(with_cookies(see_other("/?notice=signed-out"), cookies))
}

fn with_cookies(mut response: Response, SetCookies(cookies): SetCookies) -> Response {
    for cookie in cookies {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
}
