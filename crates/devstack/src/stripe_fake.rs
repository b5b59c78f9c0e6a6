//! A small, faithful fake of the part of Stripe's API that payments uses.
//!
//! Why a fake of our own rather than PyPI `localstripe` or npm
//! `stripe-stateful-mock`: the money path must be tested against a Stripe
//! that honours `Idempotency-Key` (one intent per order is *our* guarantee,
//! and a fake that ignores the header cannot show it holds), confirms an
//! intent with a payment method made from a legacy card token, runs 3-D
//! Secure, refunds, and sends *signed* webhooks. localstripe does the last
//! three but answers "Not implemented" to a confirm with a payment method and
//! has no idempotency; stripe-stateful-mock has no PaymentIntents flow with
//! webhooks. The endpoints below are a few hundred lines built from Stripe's
//! API reference, so this fake runs inside the process that owns the
//! infrastructure (`dev`, the test kit), with no extra install.
//!
//! What it speaks (form-encoded bodies, JSON answers, Stripe's error shape):
//! - `POST /v1/payment_methods` (`type=card`, `card[token]` or `card[number]`)
//! - `POST /v1/payment_intents` (optionally `confirm=true`), `GET` one or the
//!   list, `POST …/{id}/confirm` (`payment_method`, or
//!   `payment_method_data[card][token]`), `POST …/{id}/cancel`
//! - `POST /v1/refunds` (`payment_intent` or `charge`), `GET /v1/refunds`,
//!   `GET /v1/charges` (the charge of each successful intent)
//! - `GET /v1/events`, `POST /v1/webhook_endpoints` (answers the `whsec_`
//!   secret, as Stripe does), `POST`/`DELETE /v1/webhook_endpoints/{id}`
//! - `Idempotency-Key` on every `POST`: the same key with the same parameters
//!   replays the first answer, with other parameters it is a 400
//!   `idempotency_error`; as at Stripe, a request that failed validation is
//!   not remembered.
//! - Test cards: `4242424242424242` / `tok_visa` / `pm_card_visa` succeed,
//!   `4000000000000002` / `tok_chargeDeclined` are declined,
//!   `4000002500003155` / `tok_threeDSecure2Required` need 3-D Secure: the
//!   intent goes to `requires_action` until
//!   `POST /_fake/payment_intents/{id}/authenticate` (`result=succeed|fail`),
//!   which the fake Stripe.js calls from its authentication dialog.
//! - `POST /_fake/hold` (`method`, `path`, `seconds`, `when`): the account's
//!   next such request is carried out but answered only after the delay
//!   (`when=after`, the default), so a fault test can kill the caller between
//!   Stripe's work and its answer; or carried out only after the delay
//!   (`when=before`), so a test can make another request overtake it (a
//!   buyer's 3-D Secure success landing before the cancel sent when the
//!   order was cancelled).
//! - Every change makes a Stripe event (`payment_intent.succeeded`, …),
//!   POSTed to the account's webhook endpoints and to the default endpoint
//!   ([`StripeFake::set_default_webhook`]) with a real
//!   `Stripe-Signature: t=…,v1=<HMAC-SHA256>`, retried with backoff until it
//!   gets a 2xx (at least once, possibly late).
//! - `/js.stripe.com/v3/`: a tiny Stripe.js (`Stripe(pk)`, `elements()`,
//!   a Card Element, `confirmCardPayment`) for the browser tests.
//!
//! Each secret key is its own account (`sk_test_<name>`, and its publishable
//! twin `pk_test_<name>`), so tests sharing one fake never see each other's
//! objects. The state lives in memory for the life of the process; stopping
//! the server ([`StripeFake::stop`], "Stripe is unreachable") keeps it.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header},
    response::{IntoResponse, Response},
};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;

/// Where the fake POSTs its events, and the secret it signs them with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookTarget {
    pub url: String,
    /// The signing secret (`whsec_…`).
    pub secret: String,
}

/// The `Stripe-Signature` header value for `payload` at `timestamp`, as
/// Stripe computes it: `t=<ts>,v1=<hex HMAC-SHA256(secret, "<ts>.<payload>")>`.
#[expect(clippy::expect_used, reason = "HMAC takes keys of any length")]
pub fn signature_header(secret: &str, timestamp: i64, payload: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any size");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(payload);
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

/// A running (or stopped) fake. Dropping it stops the server.
#[derive(Debug)]
pub struct StripeFake {
    port: u16,
    shared: Arc<Shared>,
    server: Option<(CancellationToken, JoinHandle<()>)>,
}

impl StripeFake {
    /// Starts the fake on `port` (`0`: a free one) of 127.0.0.1.
    pub async fn start(port: u16) -> anyhow::Result<Self> {
        let shared = Arc::new(Shared {
            accounts: Mutex::new(HashMap::new()),
            default_webhook: Mutex::new(None),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .context("failed to build the webhook client")?,
            ids: AtomicU64::new(0),
            base_url: Mutex::new(String::new()),
            webhook_retries: 12,
            holds: Mutex::new(Vec::new()),
        });
        let mut fake = Self {
            port,
            shared,
            server: None,
        };
        fake.start_again().await?;
        Ok(fake)
    }

    /// `http://127.0.0.1:P`.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether the server is listening.
    pub fn is_running(&self) -> bool {
        self.server.is_some()
    }

    /// Sends every account's events to `target` too (`make dev`: the local
    /// ingress's `/api/payments/webhook`).
    pub fn set_default_webhook(&self, target: Option<WebhookTarget>) {
        *lock(&self.shared.default_webhook) = target;
    }

    /// Stops listening (Stripe unreachable); the state stays.
    pub async fn stop(&mut self) {
        if let Some((token, task)) = self.server.take() {
            token.cancel();
            let _ = task.await;
        }
    }

    /// Listens again on the same port, with the same state.
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        if self.server.is_some() {
            return Ok(());
        }
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], self.port)))
            .await
            .with_context(|| format!("the Stripe fake cannot bind port {}", self.port))?;
        self.port = listener.local_addr()?.port();
        *lock(&self.shared.base_url) = self.base_url();
        let token = CancellationToken::new();
        let app = Router::new()
            .fallback(handle)
            .with_state(self.shared.clone());
        let stop = token.clone();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
            if let Err(err) = served {
                tracing::warn!(error = %err, "the Stripe fake stopped");
            }
        });
        self.server = Some((token, task));
        Ok(())
    }
}

impl Drop for StripeFake {
    fn drop(&mut self) {
        if let Some((token, task)) = self.server.take() {
            token.cancel();
            task.abort();
        }
    }
}

#[derive(Debug)]
struct Shared {
    accounts: Mutex<HashMap<String, Account>>,
    default_webhook: Mutex<Option<WebhookTarget>>,
    http: reqwest::Client,
    ids: AtomicU64,
    base_url: Mutex<String>,
    /// Delivery attempts of one event to one endpoint.
    webhook_retries: u32,
    /// Requests to hold back (fault tests): carried out, their answer sent
    /// only after the delay — a caller that dies meanwhile never learns what
    /// Stripe did — or carried out only after it.
    holds: Mutex<Vec<Hold>>,
}

#[derive(Debug, Clone)]
struct Hold {
    account: String,
    method: String,
    path: String,
    delay: Duration,
    /// Wait before carrying the request out rather than before answering.
    before: bool,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    fn id(&self, prefix: &str) -> String {
        let n = self.ids.fetch_add(1, Ordering::Relaxed);
        let random: u64 = rand::random();
        format!("{prefix}_{n:06}{random:016x}")
    }
}

#[derive(Debug, Default)]
struct Account {
    intents: BTreeMap<String, Value>,
    /// Intent ids, oldest first.
    intent_order: Vec<String>,
    payment_methods: HashMap<String, (Card, Value)>,
    charges: Vec<Value>,
    refunds: Vec<Value>,
    events: Vec<Value>,
    idempotency: HashMap<String, Remembered>,
    webhooks: Vec<Endpoint>,
}

#[derive(Debug, Clone)]
struct Remembered {
    fingerprint: String,
    status: StatusCode,
    body: Value,
}

#[derive(Debug, Clone)]
struct Endpoint {
    id: String,
    url: String,
    secret: String,
    enabled_events: Vec<String>,
}

impl Endpoint {
    fn json(&self, with_secret: bool) -> Value {
        let mut value = json!({
            "id": self.id, "object": "webhook_endpoint", "url": self.url,
            "enabled_events": self.enabled_events, "status": "enabled", "livemode": false,
        });
        if with_secret {
            value["secret"] = json!(self.secret);
        }
        value
    }

    fn wants(&self, event_type: &str) -> bool {
        self.enabled_events
            .iter()
            .any(|e| e == "*" || e == event_type)
    }
}

/// How a test card behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Card {
    Succeeds,
    Declined,
    InsufficientFunds,
    RequiresAuthentication,
}

impl Card {
    fn from_number(number: &str) -> Option<(Card, &'static str)> {
        let digits: String = number.chars().filter(char::is_ascii_digit).collect();
        Some(match digits.as_str() {
            "4242424242424242" | "4000056655665556" => (Card::Succeeds, "visa"),
            "5555555555554444" => (Card::Succeeds, "mastercard"),
            "4000000000000002" => (Card::Declined, "visa"),
            "4000000000009995" => (Card::InsufficientFunds, "visa"),
            "4000002500003155" | "4000002760003184" | "4000000000003220" => {
                (Card::RequiresAuthentication, "visa")
            }
            _ => return None,
        })
    }

    /// A test token (`tok_…`) or test payment method (`pm_card_…`).
    fn from_test_id(id: &str) -> Option<(Card, &'static str, &'static str)> {
        let name = id
            .strip_prefix("tok_")
            .or_else(|| id.strip_prefix("pm_card_"))?;
        Some(match name {
            "visa" | "visa_debit" => (Card::Succeeds, "visa", "4242"),
            "mastercard" => (Card::Succeeds, "mastercard", "4444"),
            "chargeDeclined" => (Card::Declined, "visa", "0002"),
            "chargeDeclinedInsufficientFunds" => (Card::InsufficientFunds, "visa", "9995"),
            "threeDSecure2Required" | "authenticationRequired" => {
                (Card::RequiresAuthentication, "visa", "3155")
            }
            _ => return None,
        })
    }
}

/// The form parameters of a request, in Stripe's bracket notation.
#[derive(Debug, Default)]
struct Params(Vec<(String, String)>);

impl Params {
    fn parse(text: &str) -> Self {
        Self(serde_urlencoded::from_str(text).unwrap_or_default())
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    fn all(&self, key: &str) -> Vec<String> {
        let bracketed = format!("{key}[]");
        self.0
            .iter()
            .filter(|(k, _)| {
                k == &bracketed
                    || k == key
                    || (k.starts_with(&format!("{key}["))
                        && k[key.len() + 1..]
                            .trim_end_matches(']')
                            .parse::<u32>()
                            .is_ok())
            })
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// `metadata[k]=v` as `{k: v}`.
    fn map(&self, key: &str) -> serde_json::Map<String, Value> {
        let prefix = format!("{key}[");
        self.0
            .iter()
            .filter_map(|(k, v)| {
                let inner = k.strip_prefix(&prefix)?.strip_suffix(']')?;
                Some((inner.to_owned(), Value::String(v.clone())))
            })
            .collect()
    }
}

/// One answer plus the events it caused.
struct Outcome {
    status: StatusCode,
    body: Value,
    /// Whether an `Idempotency-Key` remembers this answer (not for requests
    /// that failed validation, as at Stripe).
    remember: bool,
    events: Vec<Value>,
}

impl Outcome {
    fn ok(body: Value) -> Self {
        Self {
            status: StatusCode::OK,
            body,
            remember: true,
            events: Vec::new(),
        }
    }

    fn with_events(mut self, events: Vec<Value>) -> Self {
        self.events = events;
        self
    }

    /// A 400 `invalid_request_error` (not remembered).
    fn invalid(message: &str, param: Option<&str>, code: Option<&str>) -> Self {
        Self::error(
            StatusCode::BAD_REQUEST,
            json!({"type": "invalid_request_error", "message": message, "param": param, "code": code}),
            false,
        )
    }

    fn missing(kind: &str, id: &str) -> Self {
        Self::error(
            StatusCode::NOT_FOUND,
            json!({"type": "invalid_request_error", "code": "resource_missing", "message": format!("No such {kind}: '{id}'")}),
            false,
        )
    }

    fn error(status: StatusCode, error: Value, remember: bool) -> Self {
        Self {
            status,
            body: json!({ "error": error }),
            remember,
            events: Vec::new(),
        }
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

/// Who calls: the account and whether with its secret key.
struct Caller {
    account: String,
    secret: bool,
}

fn caller(headers: &HeaderMap, params: &Params) -> Option<Caller> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned)
        .or_else(|| params.get("key").map(str::to_owned))?;
    let (secret, account) = if let Some(name) = bearer.strip_prefix("sk_test_") {
        (true, name)
    } else if let Some(name) = bearer.strip_prefix("pk_test_") {
        (false, name)
    } else {
        return None;
    };
    (!account.is_empty()).then(|| Caller {
        account: account.to_owned(),
        secret,
    })
}

fn cors(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("authorization, content-type, idempotency-key"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, DELETE, OPTIONS"),
    );
    response
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().trim_end_matches('/').to_owned();
    if method == Method::OPTIONS {
        return cors(StatusCode::NO_CONTENT.into_response());
    }
    if path == "/js.stripe.com/v3" || path == "/v3" {
        let base = lock(&shared.base_url).clone();
        return cors(
            (
                [(
                    header::CONTENT_TYPE,
                    "application/javascript; charset=utf-8",
                )],
                STRIPE_JS.replace("__FAKE_BASE__", &base),
            )
                .into_response(),
        );
    }
    let mut params = Params::parse(uri.query().unwrap_or_default());
    if method != Method::GET {
        params
            .0
            .extend(Params::parse(&String::from_utf8_lossy(&body)).0);
    }
    let Some(caller) = caller(&headers, &params) else {
        return answer(Outcome::error(
            StatusCode::UNAUTHORIZED,
            json!({"type": "invalid_request_error", "message": "Invalid API Key provided"}),
            false,
        ));
    };
    // `POST /_fake/hold` (`method`, `path`, `seconds`, `when`): hold back the
    // account's next such request, its answer or the whole of it.
    if path == "/_fake/hold" && caller.secret {
        let hold = Hold {
            account: caller.account.clone(),
            method: params.get("method").unwrap_or("POST").to_owned(),
            path: params.get("path").unwrap_or_default().to_owned(),
            delay: Duration::from_secs(
                params
                    .get("seconds")
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(30),
            ),
            before: match params.get("when") {
                None | Some("after") => false,
                Some("before") => true,
                Some(_) => {
                    return answer(Outcome::invalid(
                        "when must be before or after",
                        Some("when"),
                        None,
                    ));
                }
            },
        };
        lock(&shared.holds).push(hold);
        return answer(Outcome::ok(json!({"held": true})));
    }
    let held = {
        let mut holds = lock(&shared.holds);
        holds
            .iter()
            .position(|h| {
                h.account == caller.account && h.method == method.as_str() && h.path == path
            })
            .map(|i| holds.remove(i))
    };
    let held = match held {
        Some(hold) if hold.before => {
            tokio::time::sleep(hold.delay).await;
            None
        }
        hold => hold.map(|hold| hold.delay),
    };
    let idempotency_key = (method == Method::POST)
        .then(|| headers.get("idempotency-key").and_then(|v| v.to_str().ok()))
        .flatten()
        .map(str::to_owned);
    let fingerprint = format!("{method} {path} {}", String::from_utf8_lossy(&body));

    let (outcome, targets) = {
        let mut accounts = lock(&shared.accounts);
        let account = accounts.entry(caller.account.clone()).or_default();
        if let Some(key) = &idempotency_key
            && let Some(seen) = account.idempotency.get(key)
        {
            let outcome = if seen.fingerprint == fingerprint {
                Outcome {
                    status: seen.status,
                    body: seen.body.clone(),
                    remember: false,
                    events: Vec::new(),
                }
            } else {
                Outcome::invalid(
                    &format!(
                        "Keys for idempotent requests can only be used with the same parameters they were first used with. Try using a key other than '{key}' if you meant to execute a different request."
                    ),
                    None,
                    None,
                )
                .retype("idempotency_error")
            };
            return answer(outcome);
        }
        let outcome = route(&shared, account, &caller, &method, &path, &params);
        if let Some(key) = idempotency_key
            && outcome.remember
        {
            account.idempotency.insert(
                key,
                Remembered {
                    fingerprint,
                    status: outcome.status,
                    body: outcome.body.clone(),
                },
            );
        }
        account.events.extend(outcome.events.iter().cloned());
        let default = lock(&shared.default_webhook).clone();
        let mut targets: Vec<(Value, WebhookTarget)> = Vec::new();
        for event in &outcome.events {
            let kind = event["type"].as_str().unwrap_or_default();
            for endpoint in account.webhooks.iter().filter(|e| e.wants(kind)) {
                targets.push((
                    event.clone(),
                    WebhookTarget {
                        url: endpoint.url.clone(),
                        secret: endpoint.secret.clone(),
                    },
                ));
            }
            if let Some(default) = &default {
                targets.push((event.clone(), default.clone()));
            }
        }
        (outcome, targets)
    };
    for (event, target) in targets {
        tokio::spawn(deliver(shared.clone(), event, target));
    }
    if let Some(delay) = held {
        tokio::time::sleep(delay).await;
    }
    answer(outcome)
}

impl Outcome {
    fn retype(mut self, kind: &str) -> Self {
        self.body["error"]["type"] = json!(kind);
        self
    }
}

fn answer(outcome: Outcome) -> Response {
    cors((outcome.status, axum::Json(outcome.body)).into_response())
}

/// POSTs one event until the endpoint answers 2xx (or the attempts run out),
/// signing every attempt afresh, as Stripe does.
async fn deliver(shared: Arc<Shared>, event: Value, target: WebhookTarget) {
    let payload = event.to_string();
    let mut delay = Duration::from_millis(500);
    for attempt in 1..=shared.webhook_retries {
        let signature = signature_header(&target.secret, now(), payload.as_bytes());
        let sent = shared
            .http
            .post(&target.url)
            .header(header::CONTENT_TYPE, "application/json; charset=utf-8")
            .header("Stripe-Signature", signature)
            .body(payload.clone())
            .send()
            .await;
        match sent {
            Ok(response) if response.status().is_success() => return,
            Ok(response) => tracing::debug!(
                attempt, status = %response.status(), url = %target.url, event = %event["id"],
                "webhook refused; will retry"
            ),
            Err(err) => tracing::debug!(
                attempt, error = %err, url = %target.url, event = %event["id"],
                "webhook not delivered; will retry"
            ),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(10));
    }
    tracing::warn!(url = %target.url, event = %event["id"], "webhook given up");
}

fn event(shared: &Shared, kind: &str, object: &Value) -> Value {
    json!({
        "id": shared.id("evt"),
        "object": "event",
        "api_version": "2025-01-27.acacia",
        "created": now(),
        "data": { "object": object },
        "livemode": false,
        "pending_webhooks": 1,
        "request": { "id": null, "idempotency_key": null },
        "type": kind,
    })
}

fn list(data: Vec<Value>, url: &str) -> Value {
    json!({ "object": "list", "data": data, "has_more": false, "url": url })
}

fn route(
    shared: &Shared,
    account: &mut Account,
    caller: &Caller,
    method: &Method,
    path: &str,
    params: &Params,
) -> Outcome {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let secret_only = || {
        Outcome::error(
            StatusCode::UNAUTHORIZED,
            json!({"type": "invalid_request_error", "message": "This API call cannot be made with a publishable API key."}),
            false,
        )
    };
    match (method.as_str(), segments.as_slice()) {
        ("POST", ["v1", "payment_methods"]) => create_payment_method(shared, account, params),
        ("POST", ["v1", "payment_intents"]) if caller.secret => {
            create_intent(shared, account, params)
        }
        ("GET", ["v1", "payment_intents"]) if caller.secret => {
            let data = account
                .intent_order
                .iter()
                .rev()
                .filter_map(|id| account.intents.get(id).cloned())
                .collect();
            Outcome::ok(list(data, "/v1/payment_intents"))
        }
        ("GET", ["v1", "payment_intents", id]) => match account.intents.get(*id) {
            Some(intent) if caller.secret || client_secret_matches(intent, params) => {
                Outcome::ok(intent.clone())
            }
            _ => Outcome::missing("payment_intent", id),
        },
        ("POST", ["v1", "payment_intents", id, "confirm"]) => {
            match account.intents.get(*id) {
                Some(intent) if caller.secret || client_secret_matches(intent, params) => {}
                _ => return Outcome::missing("payment_intent", id),
            }
            let card = match payment_method_of(shared, account, params) {
                Ok(card) => card,
                Err(outcome) => return outcome,
            };
            let Some(card) = card else {
                return Outcome::invalid(
                    "You cannot confirm this PaymentIntent because it's missing a payment method. To confirm the PaymentIntent, pass a payment method.",
                    Some("payment_method"),
                    Some("payment_intent_unexpected_state"),
                );
            };
            confirm(shared, account, id, card)
        }
        ("POST", ["v1", "payment_intents", id, "cancel"]) if caller.secret => {
            cancel(shared, account, id, params)
        }
        ("POST", ["_fake", "payment_intents", id, "authenticate"]) => {
            match account.intents.get(*id) {
                Some(intent) if caller.secret || client_secret_matches(intent, params) => {}
                _ => return Outcome::missing("payment_intent", id),
            }
            authenticate(shared, account, id, params.get("result") != Some("fail"))
        }
        ("POST", ["v1", "refunds"]) if caller.secret => refund(shared, account, params),
        ("GET", ["v1", "refunds"]) if caller.secret => Outcome::ok(list(
            account.refunds.iter().rev().cloned().collect(),
            "/v1/refunds",
        )),
        ("GET", ["v1", "charges"]) if caller.secret => Outcome::ok(list(
            account.charges.iter().rev().cloned().collect(),
            "/v1/charges",
        )),
        ("GET", ["v1", "charges", id]) if caller.secret => {
            match account.charges.iter().find(|c| c["id"] == *id) {
                Some(charge) => Outcome::ok(charge.clone()),
                None => Outcome::missing("charge", id),
            }
        }
        ("GET", ["v1", "events"]) if caller.secret => {
            let kind = params.get("type");
            let data = account
                .events
                .iter()
                .rev()
                .filter(|e| kind.is_none_or(|k| e["type"] == k))
                .cloned()
                .collect();
            Outcome::ok(list(data, "/v1/events"))
        }
        ("POST", ["v1", "webhook_endpoints"]) if caller.secret => {
            let Some(url) = params.get("url") else {
                return Outcome::invalid("Missing required param: url.", Some("url"), None);
            };
            let mut enabled_events = params.all("enabled_events");
            if enabled_events.is_empty() {
                enabled_events.push("*".to_owned());
            }
            let endpoint = Endpoint {
                id: shared.id("we"),
                url: url.to_owned(),
                secret: format!("whsec_{:032x}", rand::random::<u128>()),
                enabled_events,
            };
            let body = endpoint.json(true);
            account.webhooks.push(endpoint);
            Outcome::ok(body)
        }
        ("POST", ["v1", "webhook_endpoints", id]) if caller.secret => {
            match account.webhooks.iter_mut().find(|e| e.id == *id) {
                Some(endpoint) => {
                    if let Some(url) = params.get("url") {
                        url.clone_into(&mut endpoint.url);
                    }
                    Outcome::ok(endpoint.json(false))
                }
                None => Outcome::missing("webhook_endpoint", id),
            }
        }
        ("DELETE", ["v1", "webhook_endpoints", id]) if caller.secret => {
            account.webhooks.retain(|e| e.id != *id);
            Outcome::ok(json!({"id": id, "object": "webhook_endpoint", "deleted": true}))
        }
        (_, ["v1", ..]) if !caller.secret => secret_only(),
        _ => Outcome::error(
            StatusCode::NOT_FOUND,
            json!({"type": "invalid_request_error", "message": format!("Unrecognized request URL ({method}: {path}).")}),
            false,
        ),
    }
}

fn client_secret_matches(intent: &Value, params: &Params) -> bool {
    params
        .get("client_secret")
        .is_some_and(|s| intent["client_secret"] == s)
}

fn card_json(brand: &str, last4: &str) -> Value {
    json!({"brand": brand, "last4": last4, "exp_month": 12, "exp_year": 2034, "country": "US", "funding": "credit"})
}

fn create_payment_method(shared: &Shared, account: &mut Account, params: &Params) -> Outcome {
    if params.get("type").is_some_and(|t| t != "card") {
        return Outcome::invalid(
            "This fake only makes card payment methods.",
            Some("type"),
            None,
        );
    }
    let (card, brand, last4) = if let Some(token) = params.get("card[token]") {
        match Card::from_test_id(token) {
            Some(found) => found,
            None => return Outcome::missing("token", token),
        }
    } else if let Some(number) = params.get("card[number]") {
        match Card::from_number(number) {
            Some((card, brand)) => {
                let digits: String = number.chars().filter(char::is_ascii_digit).collect();
                let last4 = if digits.ends_with("3155") {
                    "3155"
                } else if digits.ends_with("0002") {
                    "0002"
                } else if digits.ends_with("9995") {
                    "9995"
                } else if digits.ends_with("4444") {
                    "4444"
                } else {
                    "4242"
                };
                (card, brand, last4)
            }
            None => {
                return Outcome::error(
                    StatusCode::PAYMENT_REQUIRED,
                    json!({"type": "card_error", "code": "incorrect_number", "param": "number", "message": "Your card number is incorrect."}),
                    true,
                );
            }
        }
    } else {
        return Outcome::invalid(
            "Missing required param: card.",
            Some("card"),
            Some("parameter_missing"),
        );
    };
    let id = shared.id("pm");
    let method = json!({
        "id": id, "object": "payment_method", "type": "card",
        "billing_details": {"address": null, "email": null, "name": null, "phone": null},
        "card": card_json(brand, last4), "created": now(), "livemode": false, "metadata": {},
    });
    account.payment_methods.insert(id, (card, method.clone()));
    Outcome::ok(method)
}

/// The card of the confirm's `payment_method` (an id or a `pm_card_…` test
/// method) or `payment_method_data` (`card[token]`).
fn payment_method_of(
    shared: &Shared,
    account: &mut Account,
    params: &Params,
) -> Result<Option<(Card, String)>, Outcome> {
    if let Some(pm) = params.get("payment_method") {
        if let Some((card, _)) = account.payment_methods.get(pm) {
            return Ok(Some((*card, pm.to_owned())));
        }
        if let Some((card, _, _)) = Card::from_test_id(pm) {
            return Ok(Some((card, pm.to_owned())));
        }
        return Err(Outcome::missing("PaymentMethod", pm));
    }
    if params.get("payment_method_data[type]").is_some() {
        let inner = Params(
            params
                .0
                .iter()
                .filter_map(|(k, v)| {
                    Some((
                        k.strip_prefix("payment_method_data[")?.replacen(']', "", 1),
                        v.clone(),
                    ))
                })
                .collect(),
        );
        let created = create_payment_method(shared, account, &inner);
        if created.status != StatusCode::OK {
            return Err(created);
        }
        let id = created.body["id"].as_str().unwrap_or_default().to_owned();
        let card = account
            .payment_methods
            .get(&id)
            .map(|(card, _)| *card)
            .unwrap_or(Card::Succeeds);
        return Ok(Some((card, id)));
    }
    Ok(None)
}

fn create_intent(shared: &Shared, account: &mut Account, params: &Params) -> Outcome {
    let Some(amount) = params.get("amount").and_then(|a| a.parse::<i64>().ok()) else {
        return Outcome::invalid(
            "Missing required param: amount.",
            Some("amount"),
            Some("parameter_missing"),
        );
    };
    let Some(currency) = params.get("currency") else {
        return Outcome::invalid(
            "Missing required param: currency.",
            Some("currency"),
            Some("parameter_missing"),
        );
    };
    if amount < 50 {
        return Outcome::invalid(
            "Amount must be at least $0.50 usd",
            Some("amount"),
            Some("amount_too_small"),
        );
    }
    let card = match payment_method_of(shared, account, params) {
        Ok(card) => card,
        Err(outcome) => return outcome,
    };
    let id = shared.id("pi");
    let mut types = params.all("payment_method_types");
    if types.is_empty() {
        types.push("card".to_owned());
    }
    let intent = json!({
        "id": id, "object": "payment_intent", "amount": amount, "amount_capturable": 0,
        "amount_received": 0, "capture_method": "automatic",
        "client_secret": format!("{id}_secret_{:024x}", rand::random::<u128>() >> 32),
        "confirmation_method": "automatic", "created": now(), "currency": currency.to_lowercase(),
        "description": params.get("description"), "livemode": false,
        "metadata": params.map("metadata"), "payment_method_types": types,
        "status": "requires_payment_method", "payment_method": null, "last_payment_error": null,
        "next_action": null, "latest_charge": null, "canceled_at": null, "cancellation_reason": null,
    });
    account.intents.insert(id.clone(), intent.clone());
    account.intent_order.push(id.clone());
    let created = event(shared, "payment_intent.created", &intent);
    match (card, params.get("confirm") == Some("true")) {
        (Some(card), true) => {
            let mut outcome = confirm(shared, account, &id, card);
            outcome.events.insert(0, created);
            outcome
        }
        (Some((_, pm)), false) => {
            if let Some(intent) = account.intents.get_mut(&id) {
                intent["payment_method"] = json!(pm);
                intent["status"] = json!("requires_confirmation");
            }
            Outcome::ok(account.intents[&id].clone()).with_events(vec![created])
        }
        (None, _) => Outcome::ok(intent).with_events(vec![created]),
    }
}

fn unexpected_state(id: &str, status: &str, verb: &str, allowed: &str) -> Outcome {
    Outcome::error(
        StatusCode::BAD_REQUEST,
        json!({
            "type": "invalid_request_error", "code": "payment_intent_unexpected_state",
            "message": format!("You cannot {verb} this PaymentIntent ({id}) because it has a status of {status}. Only a PaymentIntent with one of the following statuses may be {verb}ed: {allowed}."),
        }),
        true,
    )
}

fn confirm(
    shared: &Shared,
    account: &mut Account,
    id: &str,
    (card, pm): (Card, String),
) -> Outcome {
    let Some(intent) = account.intents.get(id) else {
        return Outcome::missing("payment_intent", id);
    };
    let status = intent["status"].as_str().unwrap_or_default().to_owned();
    if !matches!(
        status.as_str(),
        "requires_payment_method" | "requires_confirmation" | "requires_action"
    ) {
        return unexpected_state(
            id,
            &status,
            "confirm",
            "requires_payment_method, requires_confirmation, requires_action",
        );
    }
    match card {
        Card::Succeeds => succeed(shared, account, id, &pm),
        Card::Declined | Card::InsufficientFunds => {
            let (decline_code, message) = if card == Card::Declined {
                ("generic_decline", "Your card was declined.")
            } else {
                ("insufficient_funds", "Your card has insufficient funds.")
            };
            fail(
                shared,
                account,
                id,
                json!({"type": "card_error", "code": "card_declined", "decline_code": decline_code, "message": message}),
            )
        }
        Card::RequiresAuthentication => {
            let base = lock(&shared.base_url).clone();
            let Some(intent) = account.intents.get_mut(id) else {
                return Outcome::missing("payment_intent", id);
            };
            intent["status"] = json!("requires_action");
            intent["payment_method"] = json!(pm);
            intent["last_payment_error"] = Value::Null;
            intent["next_action"] = json!({
                "type": "use_stripe_sdk",
                "use_stripe_sdk": {"type": "three_d_secure_redirect", "stripe_js": format!("{base}/_fake/payment_intents/{id}/authenticate")},
            });
            let snapshot = intent.clone();
            Outcome::ok(snapshot.clone()).with_events(vec![event(
                shared,
                "payment_intent.requires_action",
                &snapshot,
            )])
        }
    }
}

fn succeed(shared: &Shared, account: &mut Account, id: &str, pm: &str) -> Outcome {
    let charge_id = shared.id("ch");
    let Some(intent) = account.intents.get_mut(id) else {
        return Outcome::missing("payment_intent", id);
    };
    intent["status"] = json!("succeeded");
    intent["payment_method"] = json!(pm);
    intent["amount_received"] = intent["amount"].clone();
    intent["latest_charge"] = json!(charge_id);
    intent["next_action"] = Value::Null;
    intent["last_payment_error"] = Value::Null;
    let snapshot = intent.clone();
    let charge = json!({
        "id": charge_id, "object": "charge", "amount": snapshot["amount"], "amount_refunded": 0,
        "currency": snapshot["currency"], "metadata": snapshot["metadata"], "paid": true,
        "refunded": false, "status": "succeeded", "payment_intent": id, "payment_method": pm,
        "created": now(), "livemode": false,
    });
    account.charges.push(charge.clone());
    Outcome::ok(snapshot.clone()).with_events(vec![
        event(shared, "charge.succeeded", &charge),
        event(shared, "payment_intent.succeeded", &snapshot),
    ])
}

/// The intent is back to `requires_payment_method` with `error`; the answer
/// is Stripe's 402 with the intent attached.
fn fail(shared: &Shared, account: &mut Account, id: &str, error: Value) -> Outcome {
    let Some(intent) = account.intents.get_mut(id) else {
        return Outcome::missing("payment_intent", id);
    };
    intent["status"] = json!("requires_payment_method");
    intent["payment_method"] = Value::Null;
    intent["next_action"] = Value::Null;
    intent["last_payment_error"] = error.clone();
    let snapshot = intent.clone();
    let mut error = error;
    error["payment_intent"] = snapshot.clone();
    let mut outcome = Outcome::error(StatusCode::PAYMENT_REQUIRED, error, true);
    outcome.events = vec![event(shared, "payment_intent.payment_failed", &snapshot)];
    outcome
}

fn authenticate(shared: &Shared, account: &mut Account, id: &str, passed: bool) -> Outcome {
    let Some(intent) = account.intents.get(id) else {
        return Outcome::missing("payment_intent", id);
    };
    let status = intent["status"].as_str().unwrap_or_default().to_owned();
    if status != "requires_action" {
        return unexpected_state(id, &status, "authenticate", "requires_action");
    }
    let pm = intent["payment_method"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    if passed {
        return succeed(shared, account, id, &pm);
    }
    let mut outcome = fail(
        shared,
        account,
        id,
        json!({"type": "invalid_request_error", "code": "payment_intent_authentication_failure",
               "message": "We are unable to authenticate your payment method. Please choose a different payment method and try again."}),
    );
    // The dialog answers with the intent, as Stripe.js resolves it.
    outcome.status = StatusCode::OK;
    outcome.body = account.intents[id].clone();
    outcome
}

fn cancel(shared: &Shared, account: &mut Account, id: &str, params: &Params) -> Outcome {
    let Some(intent) = account.intents.get_mut(id) else {
        return Outcome::missing("payment_intent", id);
    };
    let status = intent["status"].as_str().unwrap_or_default().to_owned();
    if !matches!(
        status.as_str(),
        "requires_payment_method"
            | "requires_capture"
            | "requires_confirmation"
            | "requires_action"
            | "processing"
    ) {
        return unexpected_state(
            id,
            &status,
            "cancel",
            "requires_payment_method, requires_capture, requires_confirmation, requires_action, processing",
        );
    }
    intent["status"] = json!("canceled");
    intent["canceled_at"] = json!(now());
    intent["next_action"] = Value::Null;
    intent["cancellation_reason"] = json!(params.get("cancellation_reason"));
    let snapshot = intent.clone();
    Outcome::ok(snapshot.clone()).with_events(vec![event(
        shared,
        "payment_intent.canceled",
        &snapshot,
    )])
}

fn refund(shared: &Shared, account: &mut Account, params: &Params) -> Outcome {
    let charge_id = if let Some(pi) = params.get("payment_intent") {
        let Some(intent) = account.intents.get(pi) else {
            return Outcome::missing("payment_intent", pi);
        };
        match intent["latest_charge"].as_str() {
            Some(charge) if intent["status"] == "succeeded" => charge.to_owned(),
            _ => {
                return Outcome::invalid(
                    &format!(
                        "This PaymentIntent ({pi}) does not have a successful charge to refund."
                    ),
                    Some("payment_intent"),
                    None,
                );
            }
        }
    } else if let Some(charge) = params.get("charge") {
        charge.to_owned()
    } else {
        return Outcome::invalid(
            "One of the following params should be provided for this request: payment_intent or charge.",
            None,
            Some("parameter_missing"),
        );
    };
    let refund_id = shared.id("re");
    let Some(charge) = account.charges.iter_mut().find(|c| c["id"] == charge_id) else {
        return Outcome::missing("charge", &charge_id);
    };
    if charge["refunded"] == true {
        return Outcome::invalid(
            &format!("Charge {charge_id} has already been refunded."),
            None,
            Some("charge_already_refunded"),
        );
    }
    let amount = params
        .get("amount")
        .and_then(|a| a.parse::<i64>().ok())
        .unwrap_or_else(|| charge["amount"].as_i64().unwrap_or_default());
    charge["amount_refunded"] = json!(amount);
    charge["refunded"] = json!(amount >= charge["amount"].as_i64().unwrap_or_default());
    let charge_snapshot = charge.clone();
    let refund = json!({
        "id": refund_id, "object": "refund", "amount": amount, "charge": charge_id,
        "created": now(), "currency": charge_snapshot["currency"], "metadata": params.map("metadata"),
        "payment_intent": charge_snapshot["payment_intent"], "reason": params.get("reason"),
        "status": "succeeded",
    });
    account.refunds.push(refund.clone());
    Outcome::ok(refund.clone()).with_events(vec![
        event(shared, "refund.created", &refund),
        event(shared, "charge.refunded", &charge_snapshot),
    ])
}

/// The fake Stripe.js: `Stripe(pk)`, `elements().create('card')` (a card
/// number field), `confirmCardPayment(clientSecret, {payment_method: {card}})`
/// with a 3-D Secure dialog, `retrievePaymentIntent`.
const STRIPE_JS: &str = include_str!("stripe_fake.js");
