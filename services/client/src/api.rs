//! The fleet's public API, as the client calls it: through the ingress, on the
//! visitor's behalf.
//!
//! Every call forwards the visitor's `Cookie` (so each service verifies the
//! session itself), `Host` (in a cluster the ingress routes by host, as it
//! did for the original Next.js client) and `X-Request-ID` (one id in every
//! service's log). Answers come back as:
//!
//! - the decoded body for a 2xx;
//! - [`ApiError::Rejected`] with the API's `errors[]` for a 4xx, which pages
//!   show next to their form fields;
//! - [`ApiError::Unreachable`] when the ingress cannot be reached or says the
//!   service is unavailable, and [`ApiError::Broken`] for a 500 or an answer
//!   we cannot read — both become a friendly error page, never a raw one.

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use axum::{
    extract::FromRequestParts,
    http::{HeaderMap, HeaderValue, Method, StatusCode, header, request::Parts},
};
use common::{error::ErrorItem, money::Money};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::{Value, json};

/// How long one API call may take before the page gives up on it.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The readiness probe's own, shorter limit.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// `Ok` for an absolute `http(s)://host[:port][/path]` URL.
pub fn check_base_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| format!("{e} (expected e.g. http://127.0.0.1:8080)"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err("expected an http:// or https:// URL with a host".into());
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err("expected a base URL without a query or fragment".into());
    }
    Ok(())
}

/// Why an API call gave no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A 4xx with the API's messages (validation, business rules, 401, 404).
    #[error("the API refused the request ({status}): {errors:?}")]
    Rejected {
        status: StatusCode,
        errors: Vec<ErrorItem>,
    },
    /// The ingress could not be reached, or answered that the service behind
    /// it is unavailable (502/503/504).
    #[error("the API is unavailable")]
    Unreachable(#[source] anyhow::Error),
    /// A 500, or an answer we cannot read.
    #[error("the API failed")]
    Broken(#[source] anyhow::Error),
}

impl ApiError {
    /// The status of a rejection, if this is one.
    pub fn rejected_status(&self) -> Option<StatusCode> {
        match self {
            Self::Rejected { status, .. } => Some(*status),
            _ => None,
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// What the visitor's request hands on to the API.
#[derive(Debug, Clone, Default)]
pub struct Visitor {
    forwarded: HeaderMap,
}

impl Visitor {
    /// Headers forwarded on every call: the visitor's cookie and host, and
    /// the visitor's address as the ingress gave it (`X-Forwarded-For`), so
    /// that the limits per client address (the edge's, sign-in's) count the
    /// visitor, not the web client every visitor's pages are rendered by.
    const FORWARDED: [header::HeaderName; 3] = [
        header::COOKIE,
        header::HOST,
        header::HeaderName::from_static("x-forwarded-for"),
    ];

    pub fn from_headers(headers: &HeaderMap) -> Self {
        let mut forwarded = HeaderMap::new();
        for name in Self::FORWARDED {
            for value in headers.get_all(&name) {
                forwarded.append(name.clone(), value.clone());
            }
        }
        if let Some(id) = headers.get("x-request-id") {
            forwarded.insert("x-request-id", id.clone());
        }
        Self { forwarded }
    }

    /// Whether the visitor sent a non-empty session cookie at all (a cheap
    /// hint, not a check: only the API can tell whether it is valid).
    pub fn has_session_cookie(&self) -> bool {
        self.forwarded
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .any(|(name, value)| {
                common::session::is_session_cookie(name) && !value.trim().is_empty()
            })
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Visitor {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self::from_headers(&parts.headers))
    }
}

/// The API's bodies (DESIGN §3): the types the services answer with.
pub use common::wire::{Order, OrderTicket, Payment, PaymentStatus, Ticket, User};

/// What `GET /api/tickets` is asked: the landing page's search and filters
/// as the visitor typed them (the API checks them), and the page's cursor.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct TicketQuery {
    pub q: String,
    pub min_price: String,
    pub max_price: String,
    pub sort: String,
    pub cursor: String,
}

impl TicketQuery {
    /// Whether a search or a filter is set (the empty state says so).
    pub fn is_filtered(&self) -> bool {
        [&self.q, &self.min_price, &self.max_price]
            .iter()
            .any(|v| !v.trim().is_empty())
    }

    /// `name=value&…` of the non-empty parameters (without the cursor).
    pub fn filters(&self) -> Vec<(&'static str, &str)> {
        [
            ("q", self.q.trim()),
            ("minPrice", self.min_price.trim()),
            ("maxPrice", self.max_price.trim()),
            ("sort", self.sort.trim()),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .collect()
    }
}

/// One page of tickets, and the cursor of the next one.
#[derive(Debug, Clone, Default)]
pub struct TicketPage {
    pub tickets: Vec<Ticket>,
    pub next: Option<String>,
}

/// The `cursor` of a `Link: <…?…&cursor=…>; rel="next"` header.
fn next_cursor(headers: &HeaderMap) -> Option<String> {
    let link = headers.get(header::LINK)?.to_str().ok()?;
    let (target, params) = link.split_once(';')?;
    if !params.contains("rel=\"next\"") {
        return None;
    }
    let target = target.trim().trim_start_matches('<').trim_end_matches('>');
    let (_, query) = target.split_once('?')?;
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix("cursor="))
        .filter(|c| {
            c.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .map(str::to_owned)
}

/// DESIGN §1: the four states of an order, as the fleet defines them.
pub use common::events::OrderStatus;

/// How a page shows an order's status.
pub trait StatusBadge {
    /// The CSS class of its badge (`awaiting:payment` → `awaiting-payment`).
    fn css_class(self) -> &'static str;
}

impl StatusBadge for OrderStatus {
    fn css_class(self) -> &'static str {
        match self {
            Self::AwaitingPayment => "awaiting-payment",
            other => other.as_str(),
        }
    }
}

#[derive(Debug, Deserialize)]
struct Created {
    id: String,
}

/// The `Set-Cookie` headers of an auth answer, for the browser.
#[derive(Debug, Clone, Default)]
pub struct SetCookies(pub Vec<HeaderValue>);

/// The fleet's API behind one base URL. Cheap to clone.
#[derive(Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    base: Arc<str>,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl ApiClient {
    pub fn new(base_url: &str) -> anyhow::Result<Self> {
        check_base_url(base_url).map_err(anyhow::Error::msg)?;
        let http = reqwest::Client::builder()
            // Redirects and cookies are the browser's business, not ours.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(CALL_TIMEOUT)
            .build()
            .context("failed to build the API client")?;
        Ok(Self {
            http,
            base: base_url.trim_end_matches('/').into(),
        })
    }

    /// Readiness: the ingress answers, and the API behind it is not down.
    ///
    /// Any answer below 500 counts: in a cluster this probe carries no
    /// visitor's `Host`, so ingress-nginx may answer 404 from its default
    /// backend — it is up, and pages (which forward `Host`) will be routed.
    /// A 502/503 (the ingress cannot reach auth) or no answer is not ready.
    pub async fn ping(&self) -> anyhow::Result<()> {
        let response = self
            .http
            .get(format!("{}/api/users/currentuser", self.base))
            .timeout(PING_TIMEOUT)
            .send()
            .await?;
        let status = response.status();
        anyhow::ensure!(!status.is_server_error(), "currentuser answered {status}");
        Ok(())
    }

    /// Sends one call and sorts its answer; `path` starts with `/api/`.
    async fn send(
        &self,
        visitor: &Visitor,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> ApiResult<reqwest::Response> {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .headers(visitor.forwarded.clone())
            .header(header::ACCEPT, "application/json");
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(|e| {
            ApiError::Unreachable(anyhow::Error::new(e).context(format!("{method} {path} failed")))
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let text = response.text().await.unwrap_or_default();
        if status.is_client_error() {
            let errors = serde_json::from_str::<common::error::ErrorBody>(&text)
                .map(|body| body.errors)
                .unwrap_or_else(|_| {
                    vec![ErrorItem {
                        message: status
                            .canonical_reason()
                            .unwrap_or("Request failed")
                            .to_owned(),
                        field: None,
                    }]
                });
            return Err(ApiError::Rejected { status, errors });
        }
        let cause = anyhow::anyhow!(
            "{method} {path} answered {status}: {}",
            truncate(&text, 300)
        );
        Err(match status {
            StatusCode::BAD_GATEWAY
            | StatusCode::SERVICE_UNAVAILABLE
            | StatusCode::GATEWAY_TIMEOUT => ApiError::Unreachable(cause),
            _ => ApiError::Broken(cause),
        })
    }

    async fn get<T: DeserializeOwned>(&self, visitor: &Visitor, path: &str) -> ApiResult<T> {
        read(self.send(visitor, Method::GET, path, None).await?, path).await
    }

    /// Who the visitor is, if they are signed in.
    pub async fn current_user(&self, visitor: &Visitor) -> ApiResult<Option<User>> {
        let body: common::wire::CurrentUserBody =
            self.get(visitor, "/api/users/currentuser").await?;
        Ok(body.current_user.map(|user| User {
            id: user.id,
            email: user.email,
        }))
    }

    /// Signs up (`signup`) or in with the visitor's credentials: auth's
    /// `Set-Cookie` headers.
    pub async fn credentials(
        &self,
        visitor: &Visitor,
        signup: bool,
        email: &str,
        password: &str,
    ) -> ApiResult<SetCookies> {
        let path = if signup {
            "/api/users/signup"
        } else {
            "/api/users/signin"
        };
        let body = json!({"email": email, "password": password});
        self.authenticate(visitor, path, body).await
    }

    pub async fn signout(&self, visitor: &Visitor) -> ApiResult<SetCookies> {
        self.authenticate(visitor, "/api/users/signout", json!({}))
            .await
    }

    async fn authenticate(
        &self,
        visitor: &Visitor,
        path: &str,
        body: Value,
    ) -> ApiResult<SetCookies> {
        let response = self.send(visitor, Method::POST, path, Some(body)).await?;
        Ok(SetCookies(
            response
                .headers()
                .get_all(header::SET_COOKIE)
                .iter()
                .cloned()
                .collect(),
        ))
    }

    /// The tickets for sale, newest first.
    pub async fn tickets(&self, visitor: &Visitor) -> ApiResult<Vec<Ticket>> {
        self.get(visitor, "/api/tickets").await
    }

    /// One page of the tickets for sale, searched and filtered as `query`
    /// says; `limit` per page.
    pub async fn ticket_page(
        &self,
        visitor: &Visitor,
        query: &TicketQuery,
        limit: u32,
    ) -> ApiResult<TicketPage> {
        let mut params: Vec<String> = query
            .filters()
            .into_iter()
            .map(|(name, value)| format!("{name}={}", crate::pages::percent_encode(value)))
            .collect();
        params.push(format!("limit={limit}"));
        if !query.cursor.is_empty() {
            params.push(format!(
                "cursor={}",
                crate::pages::percent_encode(&query.cursor)
            ));
        }
        self.page(visitor, &format!("/api/tickets?{}", params.join("&")))
            .await
    }

    /// One page of the visitor's own listings, with their status.
    pub async fn my_tickets(
        &self,
        visitor: &Visitor,
        cursor: &str,
        limit: u32,
    ) -> ApiResult<TicketPage> {
        let mut path = format!("/api/tickets?mine=true&limit={limit}");
        if !cursor.is_empty() {
            path.push_str(&format!("&cursor={}", crate::pages::percent_encode(cursor)));
        }
        self.page(visitor, &path).await
    }

    async fn page(&self, visitor: &Visitor, path: &str) -> ApiResult<TicketPage> {
        let response = self.send(visitor, Method::GET, path, None).await?;
        let next = next_cursor(response.headers());
        Ok(TicketPage {
            tickets: read(response, path).await?,
            next,
        })
    }

    /// Withdraws one of the visitor's tickets.
    pub async fn withdraw_ticket(&self, visitor: &Visitor, id: &ObjectId) -> ApiResult<()> {
        self.send(visitor, Method::DELETE, &format!("/api/tickets/{id}"), None)
            .await?;
        Ok(())
    }

    pub async fn ticket(&self, visitor: &Visitor, id: &ObjectId) -> ApiResult<Ticket> {
        self.get(visitor, &format!("/api/tickets/{id}")).await
    }

    /// Lists a ticket; the price goes as the user typed it (see [`price_json`]).
    pub async fn create_ticket(
        &self,
        visitor: &Visitor,
        title: &str,
        price: &str,
        face_value: &str,
    ) -> ApiResult<Ticket> {
        let body = ticket_body(title, price, face_value);
        read(
            self.send(visitor, Method::POST, "/api/tickets", Some(body))
                .await?,
            "/api/tickets",
        )
        .await
    }

    pub async fn update_ticket(
        &self,
        visitor: &Visitor,
        id: &ObjectId,
        title: &str,
        price: &str,
        face_value: &str,
    ) -> ApiResult<Ticket> {
        let path = format!("/api/tickets/{id}");
        let body = ticket_body(title, price, face_value);
        read(
            self.send(visitor, Method::PUT, &path, Some(body)).await?,
            &path,
        )
        .await
    }

    /// The visitor's orders.
    pub async fn orders(&self, visitor: &Visitor) -> ApiResult<Vec<Order>> {
        self.get(visitor, "/api/orders").await
    }

    /// One of the visitor's orders, and its ticket: an order whose ticket
    /// the orders service has lost (`ticket: null`) cannot be shown.
    pub async fn order(&self, visitor: &Visitor, id: &ObjectId) -> ApiResult<(Order, OrderTicket)> {
        let mut order: Order = self.get(visitor, &format!("/api/orders/{id}")).await?;
        let ticket = order.ticket.take().ok_or_else(|| {
            ApiError::Broken(anyhow::anyhow!("order {id} came without its ticket"))
        })?;
        Ok((order, ticket))
    }

    /// Buys a ticket: the new order's id.
    pub async fn create_order(&self, visitor: &Visitor, ticket: &ObjectId) -> ApiResult<ObjectId> {
        let response = self
            .send(
                visitor,
                Method::POST,
                "/api/orders",
                Some(json!({"ticketId": ticket.as_str()})),
            )
            .await?;
        created_id(response, "/api/orders").await
    }

    pub async fn cancel_order(&self, visitor: &Visitor, id: &ObjectId) -> ApiResult<()> {
        self.send(visitor, Method::DELETE, &format!("/api/orders/{id}"), None)
            .await?;
        Ok(())
    }

    /// Pays for an order with a card token (`tok_visa` in tests).
    /// The order's payment with its PaymentIntent (created on first call):
    /// what Stripe.js confirms.
    pub async fn open_payment(&self, visitor: &Visitor, order: &ObjectId) -> ApiResult<Payment> {
        let body = json!({"orderId": order.as_str()});
        let path = "/api/payments";
        read(
            self.send(visitor, Method::POST, path, Some(body)).await?,
            path,
        )
        .await
    }

    /// The visitor's payment of the order, if there is one.
    pub async fn payment(&self, visitor: &Visitor, order: &ObjectId) -> ApiResult<Option<Payment>> {
        let payments: Vec<Payment> = self
            .get(visitor, &format!("/api/payments?orderId={order}"))
            .await?;
        Ok(payments.into_iter().next())
    }

    pub async fn pay(&self, visitor: &Visitor, order: &ObjectId, token: &str) -> ApiResult<()> {
        let body = json!({"token": token, "orderId": order.as_str()});
        self.send(visitor, Method::POST, "/api/payments", Some(body))
            .await?;
        Ok(())
    }
}

async fn read<T: DeserializeOwned>(response: reqwest::Response, path: &str) -> ApiResult<T> {
    let bytes = response.bytes().await.map_err(|e| {
        ApiError::Unreachable(
            anyhow::Error::new(e).context(format!("reading the answer of {path} failed")),
        )
    })?;
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::Broken(anyhow::Error::new(e).context(format!(
            "unreadable answer from {path}: {}",
            truncate(&String::from_utf8_lossy(&bytes), 300)
        )))
    })
}

async fn created_id(response: reqwest::Response, path: &str) -> ApiResult<ObjectId> {
    let created: Created = read(response, path).await?;
    ObjectId::parse(&created.id).ok_or_else(|| {
        ApiError::Broken(anyhow::anyhow!(
            "{path} returned a malformed id {:?}",
            created.id
        ))
    })
}

/// A price as the user typed it: a JSON number when it is a plain amount with
/// at most two decimals (exact, through [`Money`]), else the trimmed text —
/// the API then answers with its own message for the field.
fn price_json(input: &str) -> Value {
    let input = input.trim();
    match input.parse::<Money>() {
        Ok(money) => {
            serde_json::to_value(money).unwrap_or_else(|_| Value::String(input.to_owned()))
        }
        Err(_) => Value::String(input.to_owned()),
    }
}

/// `{title, price, faceValue?}`: the face value only when one was typed.
fn ticket_body(title: &str, price: &str, face_value: &str) -> Value {
    let mut body = json!({"title": title, "price": price_json(price)});
    if !face_value.trim().is_empty() {
        body["faceValue"] = price_json(face_value);
    }
    body
}

fn truncate(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((at, _)) => &text[..at],
        None => text,
    }
}

/// A 24-hex id from a URL or an API answer. Ids are checked before they go
/// into an API path, so `/tickets/..%2Fusers%2Fsignout` can never become
/// another API route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectId(String);

impl ObjectId {
    pub fn parse(raw: &str) -> Option<Self> {
        (raw.len() == 24 && raw.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| Self(raw.to_ascii_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ObjectId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for ObjectId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_go_as_exact_numbers_or_as_typed() {
        assert_eq!(price_json("12.5"), json!(12.5));
        assert_eq!(price_json(" 10 "), json!(10));
        assert_eq!(price_json("0.99"), json!(0.99));
        assert_eq!(price_json("12.345"), json!("12.345"));
        assert_eq!(price_json("abc"), json!("abc"));
        assert_eq!(price_json(""), json!(""));
    }

    #[test]
    fn ids_are_24_hex_digits_only() {
        assert!(ObjectId::parse("5f8d0d55b54764421b7156c9").is_some());
        for bad in [
            "",
            "5f8d0d55b54764421b7156c",
            "../users/signout",
            "5f8d0d55b54764421b7156cz",
            "5f8d0d55b54764421b7156c9/",
        ] {
            assert!(ObjectId::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn base_urls_must_be_http_with_a_host() {
        assert!(check_base_url("http://127.0.0.1:8080").is_ok());
        assert!(
            check_base_url("http://ingress-nginx-controller.ingress-nginx.svc.cluster.local")
                .is_ok()
        );
        for bad in ["", "127.0.0.1:8080", "ftp://x", "http://", "http://x?y=1"] {
            assert!(check_base_url(bad).is_err(), "{bad}");
        }
    }
}
