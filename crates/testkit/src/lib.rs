//! The test kit: real infrastructure, isolated per test.
//!
//! - [`infra`] gives the URLs of a NATS JetStream server (≥ 2.10), a
//!   MongoDB-wire server and a Redis. When `TEST_NATS_URL`, `TEST_MONGO_URI`,
//!   `TEST_REDIS_URL` (and optionally `TEST_STRIPE_API_BASE`) are set — `make
//!   test` starts them once for the whole run — it attaches to those; otherwise
//!   it starts its own once per test process, through `devstack`. Without
//!   `TEST_STRIPE_API_BASE` it serves the devstack Stripe fake itself.
//! - Isolation: [`database`] is a fresh database name per call,
//!   [`bus_config`] a stream and subject prefix of its own, so tests run in
//!   parallel without seeing each other.
//! - [`Harness`] is a service under test: running on port 0, with a bus and
//!   a database handle on its namespace for the test itself; [`TestApp`] is
//!   its HTTP side, whose [`Reply`] makes assertions short; [`signin`]
//!   returns a valid session cookie for a fresh user, like the original's
//!   `global.signin()`.
//! - [`Api`] is the one client of the fleet's API (tests through the
//!   ingress, the fault load and the bench use it too): `signup`, `signin`,
//!   `create_ticket`, `order`, `pay`, with typed replies.
//! - Test events: [`order_created`], [`order_cancelled`], [`delivery`].
//! - [`assert_openapi_lists_exactly`] checks a service's `/openapi.json`
//!   against the routes it really serves; [`metric`] reads one series of its
//!   `/metrics`.
//!
//! Clients (MongoDB, NATS) are created per test on purpose: each
//! `#[tokio::test]` has its own runtime, and a client's background tasks die
//! with the runtime that spawned them.

// A test kit: a set-up that cannot be done is the test failing, so it
// unwraps and expects (the workspace denies both everywhere else).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    net::SocketAddr,
    sync::OnceLock,
    time::{Duration, Instant},
};

use common::{
    bus::BusConfig,
    session::{Claims, Sessions},
};
use mongodb::bson::oid::ObjectId;
use reqwest::Method;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// The JWT key every test service is configured with.
pub const JWT_KEY: &str = "test-jwt-key-not-a-secret";

/// Where the test infrastructure listens (`mongo_uri` has no database path).
pub use devstack::Endpoints as Infra;

pub mod api;
mod harness;

pub use api::{Api, Failure, Order, PASSWORD, Reply, Ticket, User};
pub use harness::{Harness, Running};

static INFRA: OnceLock<Infra> = OnceLock::new();

/// The shared infrastructure of this test run (attached or started once).
pub fn infra() -> &'static Infra {
    INFRA.get_or_init(|| match Infra::from_test_env() {
        // Attached to servers (CI's containers) without a Stripe fake: the
        // fake is in-process, so this test process serves its own.
        Some(mut attached) if attached.stripe_api_base.is_none() => {
            attached.stripe_api_base = Some(start_own_stripe());
            attached
        }
        Some(attached) => attached,
        None => start_own(),
    })
}

/// Starts the devstack Stripe fake on a thread of its own (see [`start_own`]).
fn start_own_stripe() -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("testkit-stripe".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("testkit: failed to build the Stripe fake's runtime");
            runtime.block_on(async move {
                match devstack::StripeFake::start(0).await {
                    Ok(fake) => {
                        let _ = tx.send(Ok(fake.base_url()));
                        std::future::pending::<()>().await;
                        drop(fake);
                    }
                    Err(err) => {
                        let _ = tx.send(Err(format!("{err:#}")));
                    }
                }
            });
        })
        .expect("testkit: failed to spawn the Stripe fake's thread");
    match rx.recv() {
        Ok(Ok(base)) => base,
        Ok(Err(err)) => panic!("testkit: could not start the Stripe fake: {err}"),
        Err(_) => panic!("testkit: the Stripe fake's thread died"),
    }
}

/// Starts servers on a thread of their own whose runtime outlives every test
/// runtime; devstack ties the processes to this process's lifetime.
fn start_own() -> Infra {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("testkit-infra".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("testkit: failed to build the infrastructure runtime");
            runtime.block_on(async move {
                let options = devstack::InfraOptions::ephemeral().with_stripe();
                match devstack::Infra::start(options).await {
                    Ok(started) => {
                        let _ = tx.send(Ok(started.endpoints().clone()));
                        // Keep the servers (and this runtime) alive until the process exits.
                        std::future::pending::<()>().await;
                        drop(started);
                    }
                    Err(err) => {
                        let _ = tx.send(Err(format!("{err:#}")));
                    }
                }
            });
        })
        .expect("testkit: failed to spawn the infrastructure thread");
    match rx.recv() {
        Ok(Ok(infra)) => infra,
        Ok(Err(err)) => panic!(
            "testkit: could not start test infrastructure: {err} (run `make test`, or `scripts/bootstrap.sh` first)"
        ),
        Err(_) => panic!("testkit: the infrastructure thread died"),
    }
}

/// A name no other test uses: `prefix_` + 12 hex digits.
pub fn unique_name(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}_{}", &id[..12])
}

/// A MongoDB URI naming a fresh database of its own.
pub fn mongo_uri(prefix: &str) -> String {
    format!(
        "{}/{}",
        infra().mongo_uri.trim_end_matches('/'),
        unique_name(prefix)
    )
}

/// A fresh, empty database on the test server.
pub async fn database(prefix: &str) -> mongodb::Database {
    common::mongo::connect(&mongo_uri(prefix), prefix)
        .await
        .expect("testkit: bad MongoDB URI")
}

/// A bus configuration with a stream and subject prefix of its own.
pub fn bus_config() -> BusConfig {
    BusConfig::new(&infra().nats_url).with_namespace(&unique_name("t"))
}

/// The session codec test services use (no `Secure` flag: plain http).
pub fn sessions() -> Sessions {
    Sessions::new(JWT_KEY, false)
}

/// A `Cookie` header value signing in a fresh user, without the auth service.
pub fn signin() -> String {
    signin_as(&ObjectId::new().to_hex(), "test@test.com")
}

/// A `Cookie` header value signing in the given user.
pub fn signin_as(id: &str, email: &str) -> String {
    let token = sessions()
        .issue(id, email)
        .expect("testkit: failed to sign a token");
    cookie_pair(&sessions().cookie(&token))
}

/// A `Cookie` header value signing in a fresh user the way the original
/// app's tests forge it: `express:sess=<base64 of {"jwt":"<token>"}>`, the
/// name cookie-session 1.x gives it, built by hand as `global.signin()` does
/// (`Buffer.from(JSON.stringify({jwt})).toString('base64')`).
pub fn signin_like_the_original() -> String {
    use base64::Engine as _;
    let token = sessions()
        .issue(&ObjectId::new().to_hex(), "test@test.com")
        .expect("testkit: failed to sign a token");
    let json = serde_json::json!({ "jwt": token }).to_string();
    format!(
        "express:sess={}",
        base64::engine::general_purpose::STANDARD.encode(json)
    )
}

/// A `Cookie` header value whose token expired a minute ago.
pub fn expired_signin() -> String {
    let now = chrono_now();
    let token = sessions()
        .sign(&Claims {
            id: ObjectId::new().to_hex(),
            email: "test@test.com".into(),
            iat: now - 3600,
            exp: now - 60,
        })
        .expect("testkit: failed to sign a token");
    cookie_pair(&sessions().cookie(&token))
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// `name=value` of a `Set-Cookie` header value.
pub(crate) fn cookie_pair(set_cookie: &reqwest::header::HeaderValue) -> String {
    set_cookie
        .to_str()
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// A service running inside the test, on a port of its own; stopped on drop.
pub struct TestApp {
    pub address: SocketAddr,
    pub base_url: String,
    /// The kit's client of the service ([`Api`]).
    pub api: Api,
    /// Its HTTP client, for requests [`Api`] does not shape.
    pub http: reqwest::Client,
    shutdown: CancellationToken,
}

impl TestApp {
    /// Wraps a running service: where it listens and the token that stops it.
    pub fn new(address: SocketAddr, shutdown: CancellationToken) -> Self {
        let api = Api::new(&format!("http://{address}"));
        Self {
            address,
            base_url: api.base().to_owned(),
            http: api.http().clone(),
            api,
            shutdown,
        }
    }

    /// The same client, connecting from `source` — a loopback address such
    /// as `127.0.0.2` is a different client address to the server on Linux.
    pub fn sending_from(mut self, source: std::net::IpAddr) -> Self {
        // In place: dropping `self` would stop the service.
        self.api = self.api.clone().sending_from(source);
        self.http = self.api.http().clone();
        self
    }

    /// The token that stops the service.
    pub fn shutdown(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Sends a request; `cookie` is a `Cookie` header value, `body` JSON.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        cookie: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        self.api
            .send(method, path, cookie, body.as_ref())
            .await
            .unwrap_or_else(|failure| panic!("testkit: {failure}"))
    }

    pub async fn get(&self, path: &str, cookie: Option<&str>) -> Reply {
        self.send(Method::GET, path, cookie, None).await
    }

    pub async fn post(&self, path: &str, cookie: Option<&str>, body: Value) -> Reply {
        self.send(Method::POST, path, cookie, Some(body)).await
    }

    pub async fn put(&self, path: &str, cookie: Option<&str>, body: Value) -> Reply {
        self.send(Method::PUT, path, cookie, Some(body)).await
    }

    pub async fn delete(&self, path: &str, cookie: Option<&str>) -> Reply {
        self.send(Method::DELETE, path, cookie, None).await
    }

    /// Sends raw bytes with the given content type (for malformed bodies).
    pub async fn post_raw(
        &self,
        path: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> Reply {
        let request = self
            .http
            .post(format!("{}{path}", self.base_url))
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body);
        Reply::read(request.send().await.expect("testkit: request failed")).await
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Asserts `{"errors":[{"message": string, "field"?: string}, …]}` and nothing else.
#[track_caller]
pub fn assert_error_shape(body: &Value) {
    let object = body
        .as_object()
        .unwrap_or_else(|| panic!("error body is not an object: {body}"));
    assert_eq!(object.len(), 1, "error body has extra keys: {body}");
    let errors = body["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("no errors array: {body}"));
    assert!(!errors.is_empty(), "errors array is empty: {body}");
    for error in errors {
        assert!(
            error["message"].is_string(),
            "error without a message: {body}"
        );
        for key in error.as_object().into_iter().flat_map(|o| o.keys()) {
            assert!(
                key == "message" || key == "field",
                "unexpected key {key}: {body}"
            );
        }
    }
}

/// Polls `check` until it returns `Some` or `timeout` passes.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs a built service in the background and returns its test handle,
/// which stops it when dropped: `testkit::start(Application::build(s).await?)`.
pub fn start(service: common::server::Service) -> TestApp {
    Running::start(service).detach()
}

/// Every `E` stored in the test stream so far, in order — what a service
/// published. Reads with a throwaway ordered consumer, so it never disturbs
/// the services' durable consumers.
pub async fn published<E: common::events::Event>(bus: &common::bus::Bus) -> Vec<E> {
    use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
    use futures::StreamExt;

    let stream = bus
        .jetstream()
        .get_stream(&bus.config().stream)
        .await
        .expect("testkit: the test stream does not exist");
    let consumer = stream
        .create_consumer(pull::Config {
            filter_subject: bus.subject(E::SUBJECT),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::None,
            inactive_threshold: Duration::from_secs(5),
            ..Default::default()
        })
        .await
        .expect("testkit: failed to create an ordered consumer");
    let mut batch = consumer
        .fetch()
        .max_messages(10_000)
        .expires(Duration::from_millis(300))
        .messages()
        .await
        .expect("testkit: failed to fetch events");
    let mut events = Vec::new();
    while let Some(Ok(message)) = batch.next().await {
        events.push(
            serde_json::from_slice(&message.payload).expect("testkit: an event did not decode"),
        );
    }
    events
}

/// Waits until at least `count` events of type `E` were published, and
/// returns them all.
pub async fn wait_for_published<E: common::events::Event>(
    bus: &common::bus::Bus,
    count: usize,
) -> Vec<E> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = published::<E>(bus).await;
        if seen.len() >= count {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "expected {count} {} events within 10s, saw {}",
            E::SUBJECT,
            seen.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (10 s at most, else panics) until `service`'s durable consumer of
/// `subject` has been delivered everything in the stream, at least one
/// message, and has acked it all; returns the consumer's info (to check,
/// say, that nothing needed a redelivery).
pub async fn wait_until_consumed(
    bus: &common::bus::Bus,
    service: &str,
    subject: &str,
) -> async_nats::jetstream::consumer::Info {
    let name = common::bus::consumer_name(service, subject)
        .expect("testkit: not a service name for a durable consumer");
    eventually(Duration::from_secs(10), || async {
        let stream = bus
            .jetstream()
            .get_stream(&bus.config().stream)
            .await
            .ok()?;
        let info = stream.consumer_info(&name).await.ok()?;
        (info.num_pending == 0
            && info.num_ack_pending == 0
            && info.delivered.stream_sequence > 0
            && info.ack_floor.stream_sequence == info.delivered.stream_sequence)
            .then_some(info)
    })
    .await
    .unwrap_or_else(|| panic!("consumer {name} did not ack everything within 10s"))
}

/// A new `order.created` as the orders service publishes it: fresh ids,
/// version 0, expiring in 15 minutes (to the millisecond, as on the wire),
/// a ticket at 20.00. A test sets what it is about with struct update
/// syntax: `OrderCreated { expires_at, ..testkit::order_created() }`.
pub fn order_created() -> common::events::OrderCreated {
    let expires = chrono::Utc::now() + chrono::Duration::minutes(15);
    common::events::OrderCreated {
        id: ObjectId::new().to_hex(),
        version: 0,
        status: common::events::OrderStatus::Created,
        user_id: ObjectId::new().to_hex(),
        expires_at: chrono::DateTime::from_timestamp_millis(expires.timestamp_millis())
            .unwrap_or(expires),
        ticket: common::events::OrderTicket {
            id: ObjectId::new().to_hex(),
            price: common::money::Money::from_cents(2000),
        },
    }
}

/// The `order.cancelled` of `order`, at its next version.
pub fn order_cancelled(order: &common::events::OrderCreated) -> common::events::OrderCancelled {
    common::events::OrderCancelled {
        id: order.id.clone(),
        version: order.version + 1,
        ticket: common::events::TicketRef {
            id: order.ticket.id.clone(),
        },
    }
}

/// A new `ticket.created` as the tickets service publishes it: fresh ids,
/// version 0, "concert" at 20.00. A test sets what it is about with struct
/// update syntax: `TicketCreated { title, ..testkit::ticket_created() }`.
pub fn ticket_created() -> common::events::TicketCreated {
    common::events::TicketCreated {
        id: ObjectId::new().to_hex(),
        version: 0,
        title: "concert".to_owned(),
        price: common::money::Money::from_cents(2000),
        user_id: ObjectId::new().to_hex(),
    }
}

/// The `ticket.updated` of `ticket` at `version`, with its title and price
/// unchanged, not reserved and not withdrawn.
pub fn ticket_updated(
    ticket: &common::events::TicketCreated,
    version: i64,
) -> common::events::TicketUpdated {
    common::events::TicketUpdated {
        id: ticket.id.clone(),
        version,
        title: ticket.title.clone(),
        price: ticket.price,
        user_id: ticket.user_id.clone(),
        order_id: None,
        withdrawn: false,
    }
}

/// A `payment.created` for the order `order_id`, as payments publishes it.
pub fn payment_created(order_id: &str) -> common::events::PaymentCreated {
    common::events::PaymentCreated {
        id: ObjectId::new().to_hex(),
        order_id: order_id.to_owned(),
        stripe_id: "pi_test".to_owned(),
    }
}

/// A `Delivery` as the bus runner would pass it, for calling a listener's
/// `handle` directly.
pub fn delivery(subject: &str) -> common::bus::Delivery {
    common::bus::Delivery {
        subject: subject.to_owned(),
        stream_sequence: 1,
        delivered: 1,
        pending: 0,
        message_id: None,
    }
}

/// The value of one series of the service's `/metrics` (see
/// `common::metrics::sample`), or `None` if it has no such series.
pub async fn metric(app: &TestApp, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let reply = app.get("/metrics", None).await;
    reply.assert_status(200);
    common::metrics::sample(&reply.text, name, labels)
}

/// The methods a route may take that [`assert_openapi_lists_exactly`] tries on
/// every documented path (not HEAD: axum answers it wherever GET is served).
const PROBED_METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

/// Asserts that the service's `GET /openapi.json` is an OpenAPI 3.1 document
/// with the fleet's security schemes and error body, whose operations are
/// exactly `expected` (`("POST", "/api/tickets")`, templates as axum writes
/// them: `/api/tickets/{id}`), and that the service serves exactly those:
/// every method is tried on every documented path (`{id}` a fresh ObjectId,
/// no body, signed out), and the route templates the service's `/metrics`
/// then counts as served (anything but `route="unmatched"`) on those paths are
/// the documented operations, no more, no less.
pub async fn assert_openapi_lists_exactly(app: &TestApp, expected: &[(&str, &str)]) {
    use std::collections::BTreeSet;

    let reply = app.get("/openapi.json", None).await;
    reply.assert_status(200);
    let content_type = reply
        .headers
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    assert_eq!(content_type, Some("application/json"));
    let doc: utoipa::openapi::OpenApi = serde_json::from_str(&reply.text).unwrap_or_else(|err| {
        panic!(
            "/openapi.json is not an OpenAPI document ({err}): {}",
            reply.text
        )
    });
    assert_eq!(reply.body["openapi"], "3.1.0");
    let components = doc
        .components
        .as_ref()
        .expect("the document has components");
    for scheme in [
        common::openapi::SESSION_SCHEME,
        common::openapi::BEARER_SCHEME,
    ] {
        assert!(
            components.security_schemes.contains_key(scheme),
            "no {scheme} security scheme"
        );
    }
    assert!(
        components.schemas.contains_key("ErrorBody"),
        "no ErrorBody schema"
    );

    let mut documented = BTreeSet::new();
    for (path, item) in &reply.body["paths"].as_object().expect("paths").clone() {
        for (method, operation) in item.as_object().expect("a path item") {
            assert!(
                operation["responses"]
                    .as_object()
                    .is_some_and(|r| !r.is_empty()),
                "{method} {path} has no responses"
            );
            documented.insert((method.to_uppercase(), path.clone()));
        }
    }
    let expected: BTreeSet<(String, String)> = expected
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    assert_eq!(documented, expected, "the documented operations");

    let paths: BTreeSet<&String> = documented.iter().map(|(_, path)| path).collect();
    for path in &paths {
        let concrete = path.replace("{id}", &ObjectId::new().to_hex());
        for method in PROBED_METHODS {
            let method = Method::from_bytes(method.as_bytes()).expect("a method");
            app.send(method, &concrete, None, None).await;
        }
    }
    let text = app.get("/metrics", None).await.text;
    let mut served = BTreeSet::new();
    for path in &paths {
        for method in PROBED_METHODS {
            let labels = |status| {
                [
                    ("method", method),
                    ("route", path.as_str()),
                    ("status", status),
                ]
            };
            if ["1xx", "2xx", "3xx", "4xx", "5xx"]
                .into_iter()
                .any(|status| {
                    common::metrics::sample(&text, "http_requests_total", &labels(status)).is_some()
                })
            {
                served.insert((method.to_owned(), (*path).clone()));
            }
        }
    }
    assert_eq!(
        served, expected,
        "the operations the service serves on the documented paths"
    );
}
