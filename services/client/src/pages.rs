//! What every page shares: the layout (who is signed in, the notice of the
//! last action), form errors, rendering, and the pages shown when something
//! goes wrong.
//!
//! Handlers return `Result<Response, PageError>`. A [`PageError`] is never a
//! raw error: it is a friendly HTML page with a fitting status (404, 403, 502,
//! 503, 500), or — for [`PageError::SignInRequired`] — a redirect to the
//! sign-in page that comes back to the page asked for
//! ([`sign_in_redirect`]). Causes are logged once, where an API error becomes
//! a page error, and never shown.

use std::any::Any;

use askama::Template;
use axum::{
    extract::{FromRequest, FromRequestParts, Request, State},
    http::{HeaderValue, Method, StatusCode, header, request::Parts},
    middleware::Next,
    response::{Html, IntoResponse, Redirect, Response},
};
use common::error::ErrorItem;
use serde::de::DeserializeOwned;

use crate::{
    AppState,
    api::{ApiError, User},
    assets,
};

/// The frame of every page: the header's links depend on who is signed in.
#[derive(Debug, Clone, Default)]
pub struct Layout {
    pub user: Option<User>,
    /// False on error pages, which do not know who is asking: their header
    /// offers only the way home.
    pub known: bool,
    /// A one-line confirmation of the last action ("Your ticket is listed.").
    pub notice: Option<&'static str>,
}

impl Layout {
    pub fn new(user: Option<User>) -> Self {
        Self {
            user,
            known: true,
            notice: None,
        }
    }

    pub fn with_notice(mut self, notice: Notice) -> Self {
        self.notice = notice.0;
        self
    }

    /// The signed-in user's email, for the header.
    pub fn email(&self) -> Option<&str> {
        self.user.as_ref().map(|u| u.email.as_str())
    }

    pub fn signed_out(&self) -> bool {
        self.known && self.user.is_none()
    }

    pub fn css_href(&self) -> &'static str {
        assets::css_href()
    }

    pub fn js_href(&self) -> &'static str {
        assets::js_href()
    }
}

/// The API's messages for a form: those naming one of its fields are shown by
/// that field, all others at the top.
#[derive(Debug, Clone, Default)]
pub struct FormErrors {
    fields: &'static [&'static str],
    items: Vec<ErrorItem>,
}

impl FormErrors {
    pub fn new(fields: &'static [&'static str], items: Vec<ErrorItem>) -> Self {
        Self { fields, items }
    }

    pub fn none() -> Self {
        Self::default()
    }

    /// The messages for `name`, joined, if there are any.
    pub fn field(&self, name: &str) -> Option<String> {
        let messages: Vec<&str> = self
            .items
            .iter()
            .filter(|item| item.field.as_deref() == Some(name))
            .map(|item| item.message.as_str())
            .collect();
        (!messages.is_empty()).then(|| messages.join(" "))
    }

    /// Messages that belong to no field of this form.
    pub fn general(&self) -> Vec<&str> {
        self.items
            .iter()
            .filter(|item| {
                item.field
                    .as_deref()
                    .is_none_or(|field| !self.fields.contains(&field))
            })
            .map(|item| item.message.as_str())
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// Renders a page; `Cache-Control: no-store` because pages are per visitor.
pub fn render(status: StatusCode, page: &impl Template) -> Response {
    match page.render() {
        Ok(html) => (status, [(header::CACHE_CONTROL, "no-store")], Html(html)).into_response(),
        Err(error) => {
            tracing::error!(%error, "failed to render a page");
            fallback_page()
        }
    }
}

/// A `303 See Other` to `to` (the answer to every successful form).
pub fn see_other(to: &str) -> Response {
    Redirect::to(to).into_response()
}

/// Everything that ends a page early.
#[derive(Debug)]
pub enum PageError {
    /// The page needs a signed-in visitor: off to the sign-in page.
    SignInRequired,
    /// 404: no such page, ticket or order.
    NotFound,
    /// 403 with a sentence saying why.
    Forbidden(&'static str),
    /// 400: a request no page of ours sends (an unreadable form).
    BadRequest,
    /// 503: the API cannot be reached.
    Unavailable,
    /// 502: the API failed or answered something we cannot use.
    BadGateway,
}

impl From<ApiError> for PageError {
    fn from(error: ApiError) -> Self {
        match error {
            ApiError::Rejected {
                status: StatusCode::UNAUTHORIZED,
                ..
            } => Self::SignInRequired,
            ApiError::Rejected {
                status: StatusCode::NOT_FOUND,
                ..
            } => Self::NotFound,
            ApiError::Rejected { status, errors } => {
                tracing::warn!(%status, ?errors, "unexpected refusal from the API");
                Self::BadGateway
            }
            ApiError::Unreachable(cause) => {
                tracing::error!(error = format!("{cause:#}"), "the API is unreachable");
                Self::Unavailable
            }
            ApiError::Broken(cause) => {
                tracing::error!(error = format!("{cause:#}"), "the API failed");
                Self::BadGateway
            }
        }
    }
}

/// Marks a response as "sign in first", for [`sign_in_redirect`].
#[derive(Debug, Clone, Copy)]
struct SignInFirst;

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage {
    layout: Layout,
    heading: &'static str,
    message: &'static str,
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let (status, heading, message) = match self {
            Self::SignInRequired => {
                let mut response = see_other("/auth/signin");
                response.extensions_mut().insert(SignInFirst);
                return response;
            }
            Self::NotFound => (
                StatusCode::NOT_FOUND,
                "Page not found",
                "We couldn't find what you were looking for. It may have been sold or removed.",
            ),
            Self::Forbidden(message) => (StatusCode::FORBIDDEN, "Not allowed", message),
            Self::BadRequest => (
                StatusCode::BAD_REQUEST,
                "Something was off with that request",
                "Please go back, reload the page and try again.",
            ),
            Self::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "Ticketing is temporarily unavailable",
                "We can't reach our servers right now. Please try again in a moment.",
            ),
            Self::BadGateway => (
                StatusCode::BAD_GATEWAY,
                "Something went wrong",
                "Our servers had a problem with that request. Please try again in a moment.",
            ),
        };
        let page = ErrorPage {
            layout: Layout::default(),
            heading,
            message,
        };
        render(status, &page)
    }
}

/// The fallback for unknown pages and methods.
pub async fn not_found() -> PageError {
    PageError::NotFound
}

/// The last resort when even the error template fails: plain, static HTML.
fn fallback_page() -> Response {
    const PAGE: &str = "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
        <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
        <title>Something went wrong · Ticketing</title></head><body>\
        <h1>Something went wrong</h1><p>Please try again in a moment.</p>\
        <p><a href=\"/\">Back to the tickets</a></p></body></html>";
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        [(header::CACHE_CONTROL, "no-store")],
        Html(PAGE),
    )
        .into_response()
}

/// The answer to a panicking handler (the common layers would answer JSON).
pub fn panic_page(panic: Box<dyn Any + Send + 'static>) -> Response {
    let detail = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic");
    tracing::error!(detail, "handler panicked");
    fallback_page()
}

/// Turns "sign in first" into a redirect that comes back: a `GET /orders`
/// by an anonymous visitor goes to `/auth/signin?next=%2Forders`. (After a
/// POST there is no page to come back to, so it goes to plain sign-in.)
pub async fn sign_in_redirect(request: Request, next: Next) -> Response {
    let back = matches!(*request.method(), Method::GET | Method::HEAD)
        .then(|| {
            request
                .uri()
                .path_and_query()
                .map(|p| p.as_str().to_owned())
        })
        .flatten();
    let mut response = next.run(request).await;
    if response.extensions().get::<SignInFirst>().is_some()
        && let Some(back) = back
        && let Ok(location) = HeaderValue::from_str(&signin_url(&back))
    {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

/// `/auth/signin?next=<back>`.
pub fn signin_url(back: &str) -> String {
    format!("/auth/signin?next={}", percent_encode(back))
}

/// `scheme://host[:port]` of an http(s) URL.
pub fn origin_of(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let host = rest
        .split(['/', '?', '#'])
        .next()
        .filter(|h| !h.is_empty())?;
    Some(format!("{scheme}://{host}"))
}

/// The Content-Security-Policy of every page. Scripts and styles come only
/// from the client itself; with Stripe.js (`stripe_js`, its URL) also what
/// Stripe documents it needs: its script, its API for `fetch`, its frames
/// (3-D Secure, the Elements) — Stripe's own hosts, or the fake's origin.
pub fn content_security_policy(stripe_js: Option<&str>) -> String {
    let Some(url) = stripe_js else {
        return "default-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'".to_owned();
    };
    let origin = origin_of(url).unwrap_or_else(|| "https://js.stripe.com".to_owned());
    let (script, connect, frame) = if origin == "https://js.stripe.com" {
        (
            "https://js.stripe.com".to_owned(),
            "https://api.stripe.com".to_owned(),
            "https://js.stripe.com https://hooks.stripe.com".to_owned(),
        )
    } else {
        (origin.clone(), origin.clone(), origin)
    };
    format!(
        "default-src 'self'; script-src 'self' {script}; frame-src {frame}; connect-src 'self' {connect}; \
         img-src 'self' data: https://*.stripe.com; style-src 'self' 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    )
}

/// Security headers for every answer. Scripts and styles come only from the
/// client itself — plus Stripe.js when a publishable key is configured.
pub async fn security_headers(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let mut response = next.run(request).await;
    let csp = HeaderValue::from_str(&state.csp)
        .unwrap_or_else(|_| HeaderValue::from_static("default-src 'self'"));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, csp);
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

/// Where to go after signing in: `next` if it is a path on this site, else home.
pub fn safe_next(next: &str) -> &str {
    let local = next.starts_with('/')
        && !next.starts_with("//")
        && !next.starts_with("/\\")
        && !next.starts_with("/auth/")
        && !next.chars().any(|c| c.is_control() || c == '\\');
    if local { next } else { "/" }
}

pub use common::wire::percent_encode;

/// A form body; an unreadable one is the friendly 400 page, not axum's text.
#[derive(Debug)]
pub struct PageForm<T>(pub T);

impl<T, S> FromRequest<S> for PageForm<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = PageError;

    async fn from_request(request: Request, state: &S) -> Result<Self, PageError> {
        match axum::Form::<T>::from_request(request, state).await {
            Ok(axum::Form(value)) => Ok(Self(value)),
            Err(rejection) => {
                tracing::warn!(%rejection, "unreadable form");
                Err(PageError::BadRequest)
            }
        }
    }
}

/// The confirmation a redirect asks for with `?notice=<key>`. Only known keys
/// have a text, so a link cannot put words on our pages.
#[derive(Debug, Clone, Copy, Default)]
pub struct Notice(Option<&'static str>);

impl Notice {
    fn text(key: &str) -> Option<&'static str> {
        Some(match key {
            "listed" => "Your ticket is listed for sale.",
            "updated" => "Your ticket was updated.",
            "withdrawn" => "Your ticket was withdrawn from sale.",
            "paid" => "Payment received. Enjoy the event!",
            "cancelled" => "Your order was cancelled.",
            "signed-out" => "You are signed out.",
            _ => return None,
        })
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Notice {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let key = parts
            .uri
            .query()
            .unwrap_or_default()
            .split('&')
            .find_map(|pair| pair.strip_prefix("notice="));
        Ok(Self(key.and_then(Self::text)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_paths_are_followed_after_sign_in() {
        assert_eq!(safe_next("/orders/abc"), "/orders/abc");
        assert_eq!(safe_next("/tickets/new?x=1"), "/tickets/new?x=1");
        for unsafe_next in [
            "",
            "https://evil.example",
            "//evil.example",
            "/\\evil.example",
            "javascript:alert(1)",
            "/auth/signout",
        ] {
            assert_eq!(safe_next(unsafe_next), "/", "{unsafe_next}");
        }
    }

    #[test]
    fn sign_in_links_come_back_to_the_page() {
        assert_eq!(
            signin_url("/orders/5f8d?x=1&y=2"),
            "/auth/signin?next=%2Forders%2F5f8d%3Fx%3D1%26y%3D2"
        );
    }

    #[test]
    fn form_errors_sort_messages_by_field() {
        let errors = FormErrors::new(
            &["title", "price"],
            vec![
                ErrorItem::field("title", "Title is required"),
                ErrorItem::field("price", "Price must be greater than 0"),
                ErrorItem::field("userId", "Odd"),
                ErrorItem {
                    message: "Cannot edit a reserved ticket".into(),
                    field: None,
                },
            ],
        );
        assert_eq!(errors.field("title").as_deref(), Some("Title is required"));
        assert_eq!(
            errors.field("price").as_deref(),
            Some("Price must be greater than 0")
        );
        assert_eq!(errors.field("email"), None);
        assert_eq!(errors.general(), ["Odd", "Cannot edit a reserved ticket"]);
    }
}
