//! One HTTP client of the fleet's API, for every test and the bench: a
//! service on its own port ([`crate::TestApp`] wraps one) or the whole fleet
//! behind the ingress.
//!
//! [`Api::send`] answers a [`Reply`] whatever the status (it fails only when
//! no answer came back); the steps of a purchase — [`Api::signup`],
//! [`Api::signin`], [`Api::create_ticket`], [`Api::order`], [`Api::pay`] —
//! check the status the contract promises and answer typed values
//! ([`User`], [`Ticket`], [`Order`]), or a [`Failure`] saying what came back
//! instead. A test that cannot go on unwraps the failure; the fault load
//! and the bench keep it as a value.

use std::{fmt, net::IpAddr, time::Duration};

use reqwest::{Method, header::HeaderMap};
use serde_json::{Value, json};

/// The password of every user the kit signs up.
pub const PASSWORD: &str = "password1";

/// How long a request may take unless the client was given another bound.
const TIMEOUT: Duration = Duration::from_secs(30);

/// A client of one base URL (`http://127.0.0.1:8080`); cheap to clone.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    timeout: Duration,
    source: Option<IpAddr>,
}

/// A signed-up (or signed-in) user and the session cookie to send back.
#[derive(Debug, Clone)]
pub struct User {
    pub id: String,
    pub email: String,
    /// The `Cookie` header value (`session=…`).
    pub cookie: String,
}

/// The bodies the services answer: the types they serialise.
pub use common::wire::{Order, OrderTicket, Ticket};

/// A step that did not get the answer the contract promises: no answer at
/// all, another status, or a body that is not what the route returns.
#[derive(Debug, Clone)]
pub struct Failure {
    /// What was asked (`POST /api/orders`).
    pub request: String,
    /// The reply, when one came back.
    pub reply: Option<Box<Reply>>,
    /// Why the step failed.
    pub reason: String,
}

impl Failure {
    /// The status that came back, if any.
    pub fn status(&self) -> Option<u16> {
        self.reply.as_ref().map(|r| r.status)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.request, self.reason)?;
        if let Some(reply) = &self.reply {
            write!(f, " ({} {})", reply.status, reply.text)?;
        }
        Ok(())
    }
}

impl std::error::Error for Failure {}

impl Api {
    /// A client of `base` that never follows redirects.
    pub fn new(base: &str) -> Self {
        Self::build(base.trim_end_matches('/').to_owned(), TIMEOUT, None)
    }

    /// The same client with requests bounded by `timeout`.
    pub fn with_timeout(self, timeout: Duration) -> Self {
        Self::build(self.base, timeout, self.source)
    }

    /// The same client connecting from `source` — a loopback address such
    /// as `127.0.0.2` is a different client address to the server on Linux.
    pub fn sending_from(self, source: IpAddr) -> Self {
        Self::build(self.base, self.timeout, Some(source))
    }

    fn build(base: String, timeout: Duration, source: Option<IpAddr>) -> Self {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .tcp_nodelay(true)
            .local_address(source)
            .build()
            .expect("testkit: failed to build the HTTP client");
        Self {
            http,
            base,
            timeout,
            source,
        }
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The underlying client, for requests the helpers do not cover.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Sends a request; `cookie` is a `Cookie` header value, `body` JSON.
    /// Any status is a reply; only a missing answer is a failure.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        cookie: Option<&str>,
        body: Option<&Value>,
    ) -> Result<Reply, Failure> {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base));
        if let Some(cookie) = cookie {
            request = request.header(reqwest::header::COOKIE, cookie);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let unanswered = |err: reqwest::Error| Failure {
            request: format!("{method} {path}"),
            reply: None,
            reason: format!("no answer: {err}"),
        };
        let response = request.send().await.map_err(unanswered)?;
        Reply::try_read(response).await.map_err(unanswered)
    }

    /// `GET path` as `user` (or nobody).
    pub async fn get(&self, path: &str, user: Option<&User>) -> Result<Reply, Failure> {
        self.send(Method::GET, path, user.map(|u| u.cookie.as_str()), None)
            .await
    }

    /// `POST path` with a JSON `body` as `user` (or nobody).
    pub async fn post(
        &self,
        path: &str,
        user: Option<&User>,
        body: Value,
    ) -> Result<Reply, Failure> {
        let cookie = user.map(|u| u.cookie.as_str());
        self.send(Method::POST, path, cookie, Some(&body)).await
    }

    /// `PUT path` with a JSON `body` as `user` (or nobody).
    pub async fn put(
        &self,
        path: &str,
        user: Option<&User>,
        body: Value,
    ) -> Result<Reply, Failure> {
        let cookie = user.map(|u| u.cookie.as_str());
        self.send(Method::PUT, path, cookie, Some(&body)).await
    }

    /// `DELETE path` as `user` (or nobody).
    pub async fn delete(&self, path: &str, user: Option<&User>) -> Result<Reply, Failure> {
        self.send(Method::DELETE, path, user.map(|u| u.cookie.as_str()), None)
            .await
    }

    /// [`Api::send`] as `user`, expecting `status`.
    async fn step(
        &self,
        method: Method,
        path: &str,
        user: Option<&User>,
        body: Value,
        status: u16,
    ) -> Result<Reply, Failure> {
        let reply = self
            .send(
                method.clone(),
                path,
                user.map(|u| u.cookie.as_str()),
                Some(&body),
            )
            .await?;
        reply.expect_status(status, &format!("{method} {path}"))
    }

    /// `POST /api/users/signup` with [`PASSWORD`].
    pub async fn signup(&self, email: &str) -> Result<User, Failure> {
        let body = json!({"email": email, "password": PASSWORD});
        let reply = self
            .step(Method::POST, "/api/users/signup", None, body, 201)
            .await?;
        reply.user("POST /api/users/signup", email)
    }

    /// `POST /api/users/signin`.
    pub async fn signin(&self, email: &str, password: &str) -> Result<User, Failure> {
        let body = json!({"email": email, "password": password});
        let reply = self
            .step(Method::POST, "/api/users/signin", None, body, 200)
            .await?;
        reply.user("POST /api/users/signin", email)
    }

    /// `POST /api/tickets` as `seller`: the ticket listed.
    pub async fn create_ticket(
        &self,
        seller: &User,
        title: &str,
        price: f64,
    ) -> Result<Ticket, Failure> {
        let body = json!({"title": title, "price": price});
        self.step(Method::POST, "/api/tickets", Some(seller), body, 201)
            .await?
            .parse("POST /api/tickets")
    }

    /// `POST /api/orders` as `buyer`: the ticket reserved for them (one
    /// attempt: a ticket the orders service has not heard of yet is a
    /// failure with status 404).
    pub async fn order(&self, buyer: &User, ticket_id: &str) -> Result<Order, Failure> {
        let body = json!({"ticketId": ticket_id});
        self.step(Method::POST, "/api/orders", Some(buyer), body, 201)
            .await?
            .parse("POST /api/orders")
    }

    /// `POST /api/payments {token, orderId}` as `buyer` (the original
    /// client's body). The reply whatever its status: a payment's answers
    /// (201, 400 declined, 404 not known yet, 5xx) all mean something.
    pub async fn pay(&self, buyer: &User, order_id: &str, token: &str) -> Result<Reply, Failure> {
        let body = json!({"token": token, "orderId": order_id});
        self.send(
            Method::POST,
            "/api/payments",
            Some(&buyer.cookie),
            Some(&body),
        )
        .await
    }
}

/// A response, read whole.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub text: String,
    /// The body as JSON, `Null` when empty or not JSON.
    pub body: Value,
}

impl Reply {
    /// Reads the whole response; panics when the body does not arrive.
    pub async fn read(response: reqwest::Response) -> Self {
        Self::try_read(response)
            .await
            .expect("testkit: the body of a response did not arrive")
    }

    async fn try_read(response: reqwest::Response) -> Result<Self, reqwest::Error> {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await?;
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Ok(Self {
            status,
            headers,
            text,
            body,
        })
    }

    /// `Ok(self)` when the status is `status`; otherwise a failure of `request`.
    pub fn expect_status(self, status: u16, request: &str) -> Result<Self, Failure> {
        if self.status == status {
            return Ok(self);
        }
        Err(Failure {
            request: request.to_owned(),
            reason: format!("expected {status}"),
            reply: Some(Box::new(self)),
        })
    }

    /// The body as a `T`, or a failure of `request` saying why not.
    pub fn parse<T: serde::de::DeserializeOwned>(self, request: &str) -> Result<T, Failure> {
        serde_json::from_value(self.body.clone()).map_err(|err| Failure {
            request: request.to_owned(),
            reason: format!("unexpected body: {err}"),
            reply: Some(Box::new(self)),
        })
    }

    /// The user a sign-up or sign-in answered, with the cookie it set.
    fn user(self, request: &str, email: &str) -> Result<User, Failure> {
        match (self.body["id"].as_str(), self.session_cookie()) {
            (Some(id), Some(cookie)) => Ok(User {
                id: id.to_owned(),
                email: email.to_owned(),
                cookie,
            }),
            _ => Err(Failure {
                request: request.to_owned(),
                reason: "no user id or no session cookie".into(),
                reply: Some(Box::new(self)),
            }),
        }
    }

    /// The `id` of the body (a created ticket, order, payment…).
    pub fn id(&self) -> Result<String, Failure> {
        match self.body["id"].as_str() {
            Some(id) => Ok(id.to_owned()),
            None => Err(Failure {
                request: "the reply's id".into(),
                reason: "no id in the body".into(),
                reply: Some(Box::new(self.clone())),
            }),
        }
    }

    /// The `Set-Cookie` values.
    pub fn set_cookies(&self) -> Vec<String> {
        self.headers
            .get_all(reqwest::header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_owned))
            .collect()
    }

    /// The session cookie's `name=value` pair (`session=…` or
    /// `express:sess=…`) to send back as a `Cookie` header, if one was set.
    pub fn session_cookie(&self) -> Option<String> {
        self.headers
            .get_all(reqwest::header::SET_COOKIE)
            .iter()
            .map(crate::cookie_pair)
            .find(|pair| {
                pair.split_once('=')
                    .is_some_and(|(name, _)| common::session::is_session_cookie(name))
            })
    }

    /// The `Link` header (a listing's next page), if any.
    pub fn link(&self) -> Option<&str> {
        self.headers
            .get(reqwest::header::LINK)
            .and_then(|v| v.to_str().ok())
    }

    /// The messages of an `{"errors":[…]}` body.
    pub fn error_messages(&self) -> Vec<String> {
        error_messages(&self.body)
    }

    /// The first error message, or `""` when the body has none.
    pub fn message(&self) -> &str {
        self.body["errors"][0]["message"].as_str().unwrap_or("")
    }

    /// A status to retry later: the ingress's 502/503, a service's 500 or
    /// 503 while its database or its hashing pool is away or full.
    pub fn unavailable(&self) -> bool {
        self.status >= 500
    }

    /// Asserts the status, printing the body when it differs.
    #[track_caller]
    pub fn assert_status(&self, expected: u16) -> &Self {
        assert_eq!(
            self.status, expected,
            "unexpected status; body: {}",
            self.text
        );
        self
    }

    /// Asserts a well-formed error body whose first message is `message`.
    #[track_caller]
    pub fn assert_error(&self, status: u16, message: &str) -> &Self {
        self.assert_status(status);
        crate::assert_error_shape(&self.body);
        assert_eq!(
            self.error_messages().first().map(String::as_str),
            Some(message),
            "body: {}",
            self.text
        );
        self
    }
}

/// The messages of an `{"errors":[…]}` body, in order (none if it is not one).
pub fn error_messages(body: &Value) -> Vec<String> {
    body["errors"]
        .as_array()
        .map(|errors| {
            errors
                .iter()
                .filter_map(|e| e["message"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}
