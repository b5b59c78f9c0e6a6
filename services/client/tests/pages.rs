//! The page handlers against a fake API: a small axum router on port 0
//! standing in for the ingress, recording what the client sends it.
//!
//! These check what the browser tests cannot easily force: API refusals,
//! an API that is down or broken, and exactly what crosses the client
//! (cookies in, `Set-Cookie` out, the JSON bodies).

use std::sync::{Arc, Mutex};

use axum::{
    Json, Router,
    body::{Body, to_bytes},
    extract::Request,
    http::{HeaderMap, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use client::{Application, Settings};
use serde_json::{Value, json};
use testkit::{Reply, TestApp};

const TICKET_ID: &str = "5f8d0d55b54764421b7156c9";
const ORDER_ID: &str = "6a1b2c3d4e5f60718293a4b5";
const USER_ID: &str = "64b7f1a2c3d4e5f601234567";
const OTHER_USER_ID: &str = "64b7f1a2c3d4e5f6ffffffff";
/// What the browser sends once signed in; the fake API trusts any cookie.
const COOKIE: &str = "session=eyJqd3QiOiJmYWtlIn0=";

/// One request the fake API received.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    cookie: Option<String>,
    forwarded_for: Option<String>,
    body: Value,
}

/// The fake ingress: the routes a test gives it, plus `currentuser`
/// answering "signed in" for any request with a cookie.
struct FakeApi {
    base_url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl FakeApi {
    /// The given routes, plus a `currentuser` that says "signed in" to any
    /// request with a cookie.
    async fn start(routes: Router) -> Self {
        Self::start_raw(
            Router::new()
                .route("/api/users/currentuser", get(current_user))
                .merge(routes),
        )
        .await
    }

    /// Exactly the given routes.
    async fn start_raw(routes: Router) -> Self {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let recorder = seen.clone();
        let app = routes.layer(middleware::from_fn(move |request: Request, next: Next| {
            let recorder = recorder.clone();
            async move { record(recorder, request, next).await }
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { base_url, seen }
    }

    fn requests_to(&self, path: &str) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.path == path)
            .cloned()
            .collect()
    }
}

async fn record(seen: Arc<Mutex<Vec<Seen>>>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let bytes = to_bytes(body, 1 << 20).await.unwrap();
    seen.lock().unwrap().push(Seen {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        cookie: parts
            .headers
            .get(header::COOKIE)
            .map(|v| v.to_str().unwrap().to_owned()),
        forwarded_for: parts
            .headers
            .get("x-forwarded-for")
            .map(|v| v.to_str().unwrap().to_owned()),
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    });
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

async fn current_user(headers: HeaderMap) -> Json<Value> {
    if headers.contains_key(header::COOKIE) {
        Json(json!({"currentUser": {"id": USER_ID, "email": "buyer@test.com", "iat": 1}}))
    } else {
        Json(json!({"currentUser": null}))
    }
}

fn errors(items: Value) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({"errors": items}))).into_response()
}

fn ticket(user_id: &str, order_id: Option<&str>) -> Value {
    json!({"id": TICKET_ID, "title": "Concert", "price": 12.5, "userId": user_id, "version": 0, "orderId": order_id})
}

fn order(status: &str, expires_in_seconds: i64) -> Value {
    let expires_at = chrono::Utc::now() + chrono::Duration::seconds(expires_in_seconds);
    json!({
        "id": ORDER_ID, "userId": USER_ID, "status": status, "version": 0,
        "expiresAt": expires_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "ticket": {"id": TICKET_ID, "title": "Concert", "price": 12.5, "version": 0}
    })
}

async fn spawn_client(api_base_url: &str) -> TestApp {
    let settings = Settings {
        serving: common::server::Serving {
            development: true,
            ..Default::default()
        },
        api_base_url: api_base_url.to_owned(),
        stripe_publishable_key: None,
        stripe_js_url: client::DEFAULT_STRIPE_JS_URL.to_owned(),
    };
    let app = Application::build(settings)
        .await
        .expect("client failed to start");
    testkit::start(app)
}

async fn post_form(
    app: &TestApp,
    path: &str,
    cookie: Option<&str>,
    fields: &[(&str, &str)],
) -> Reply {
    let mut request = app
        .http
        .post(format!("{}{path}", app.base_url))
        .form(fields);
    if let Some(cookie) = cookie {
        request = request.header(header::COOKIE, cookie);
    }
    Reply::read(request.send().await.unwrap()).await
}

fn location(reply: &Reply) -> &str {
    reply
        .headers
        .get(header::LOCATION)
        .map(|v| v.to_str().unwrap())
        .unwrap_or_default()
}

/// The text of the element with this id, roughly: what follows `id="…">`.
fn text_of<'a>(html: &'a str, id: &str) -> &'a str {
    let marker = format!("id=\"{id}\">");
    let start = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no element #{id} in:\n{html}"))
        + marker.len();
    let end = html[start..].find('<').map_or(html.len(), |i| start + i);
    &html[start..end]
}

fn assert_html(reply: &Reply) {
    let content_type = reply
        .headers
        .get(header::CONTENT_TYPE)
        .unwrap()
        .to_str()
        .unwrap();
    assert!(
        content_type.starts_with("text/html"),
        "{content_type}: {}",
        reply.text
    );
    assert!(reply.text.starts_with("<!doctype html>"), "{}", reply.text);
}

#[tokio::test]
async fn anonymous_visitors_are_sent_to_sign_in_and_back() {
    let api = FakeApi::start(Router::new()).await;
    let app = spawn_client(&api.base_url).await;
    for (path, next) in [
        ("/tickets/new", "%2Ftickets%2Fnew"),
        ("/orders", "%2Forders"),
        (
            &format!("/orders/{ORDER_ID}"),
            &format!("%2Forders%2F{ORDER_ID}"),
        ),
        (
            &format!("/tickets/{TICKET_ID}/edit"),
            &format!("%2Ftickets%2F{TICKET_ID}%2Fedit"),
        ),
    ] {
        let reply = app.get(path, None).await;
        reply.assert_status(303);
        assert_eq!(
            location(&reply),
            format!("/auth/signin?next={next}"),
            "{path}"
        );
    }
    // A POST has no page to come back to.
    let reply = post_form(&app, &format!("/tickets/{TICKET_ID}/purchase"), None, &[]).await;
    reply.assert_status(303);
    assert_eq!(location(&reply), "/auth/signin");
}

#[tokio::test]
async fn a_session_cookie_forged_like_the_originals_tests_is_asked_about() {
    let api = FakeApi::start(Router::new()).await;
    let app = spawn_client(&api.base_url).await;
    let cookie = testkit::signin_like_the_original();
    let reply = app.get("/orders", Some(&cookie)).await;
    assert_ne!(reply.status, 303, "treated as anonymous: {}", reply.text);
    assert_eq!(
        api.requests_to("/api/users/currentuser")[0]
            .cookie
            .as_deref(),
        Some(cookie.as_str())
    );
}

#[tokio::test]
async fn a_session_the_api_does_not_accept_is_sent_to_sign_in() {
    let routes = Router::new().route(
        "/api/users/currentuser",
        get(|| async { Json(json!({"currentUser": null})) }),
    );
    let api = FakeApi::start_raw(routes).await;
    let app = spawn_client(&api.base_url).await;
    let reply = app.get("/orders", Some(COOKIE)).await;
    reply.assert_status(303);
    assert_eq!(location(&reply), "/auth/signin?next=%2Forders");
    assert_eq!(
        api.requests_to("/api/users/currentuser")[0]
            .cookie
            .as_deref(),
        Some(COOKIE)
    );
}

#[tokio::test]
async fn the_landing_page_lists_tickets_with_two_decimal_prices() {
    let routes = Router::new().route(
        "/api/tickets",
        get(|| async {
            Json(json!([
                {"id": TICKET_ID, "title": "Concert <b>live</b>", "price": 12.5, "userId": OTHER_USER_ID, "version": 0},
                {"id": "5f8d0d55b54764421b7156ca", "title": "Match", "price": 10, "userId": OTHER_USER_ID, "version": 0},
                {"id": "5f8d0d55b54764421b7156cb", "title": "Opera", "price": 0.99, "userId": OTHER_USER_ID, "version": 0}
            ]))
        }),
    );
    let api = FakeApi::start(routes).await;
    let app = spawn_client(&api.base_url).await;

    let reply = app.get("/", None).await;
    reply.assert_status(200);
    assert_html(&reply);
    for expected in [
        "$12.50",
        "$10.00",
        "$0.99",
        "Match",
        "Opera",
        &format!("href=\"/tickets/{TICKET_ID}\""),
    ] {
        assert!(
            reply.text.contains(expected),
            "missing {expected}:\n{}",
            reply.text
        );
    }
    assert!(
        reply.text.contains("Concert &#60;b&#62;live&#60;/b&#62;")
            || reply.text.contains("Concert &lt;b&gt;live&lt;/b&gt;"),
        "titles are escaped:\n{}",
        reply.text
    );
    // Anonymous: the header offers sign up and sign in.
    assert!(
        reply.text.contains("href=\"/auth/signup\"")
            && reply.text.contains("href=\"/auth/signin\"")
    );
    assert!(!reply.text.contains("My orders"));

    let signed_in = app.get("/", Some(COOKIE)).await;
    for expected in ["buyer@test.com", "Sell tickets", "My orders", "Sign out"] {
        assert!(
            signed_in.text.contains(expected),
            "missing {expected}:\n{}",
            signed_in.text
        );
    }
    assert_eq!(
        api.requests_to("/api/tickets")
            .last()
            .unwrap()
            .cookie
            .as_deref(),
        Some(COOKIE)
    );
}

#[tokio::test]
async fn signin_shows_invalid_credentials_by_the_form_and_keeps_the_email() {
    let routes = Router::new().route(
        "/api/users/signin",
        post(|| async { errors(json!([{"message": "Invalid credentials"}])) }),
    );
    let api = FakeApi::start(routes).await;
    let app = spawn_client(&api.base_url).await;

    let reply = post_form(
        &app,
        "/auth/signin",
        None,
        &[
            ("email", "buyer@test.com"),
            ("password", "wrong-password"),
            ("next", "/"),
        ],
    )
    .await;
    reply.assert_status(422);
    assert_html(&reply);
    let alert = reply
        .text
        .split("role=\"alert\"")
        .nth(1)
        .expect("an alert in the form");
    assert!(
        alert[..200.min(alert.len())].contains("Invalid credentials"),
        "{}",
        reply.text
    );
    assert!(
        reply.text.contains("value=\"buyer@test.com\""),
        "the email is kept"
    );
    assert!(
        !reply.text.contains("wrong-password"),
        "the password is never echoed"
    );
    assert!(reply.set_cookies().is_empty());
    assert_eq!(
        api.requests_to("/api/users/signin")[0].body,
        json!({"email": "buyer@test.com", "password": "wrong-password"})
    );
}

#[tokio::test]
async fn signup_shows_each_message_by_its_field() {
    let routes = Router::new().route(
        "/api/users/signup",
        post(|| async {
            errors(json!([
                {"message": "Email must be valid", "field": "email"},
                {"message": "Password must be between 8 and 128 characters", "field": "password"}
            ]))
        }),
    );
    let api = FakeApi::start(routes).await;
    let app = spawn_client(&api.base_url).await;

    let reply = post_form(
        &app,
        "/auth/signup",
        None,
        &[("email", "nope"), ("password", "p")],
    )
    .await;
    reply.assert_status(422);
    assert_eq!(text_of(&reply.text, "email-error"), "Email must be valid");
    assert_eq!(
        text_of(&reply.text, "password-error"),
        "Password must be between 8 and 128 characters"
    );
    assert!(
        reply.text.contains("aria-describedby=\"email-error\""),
        "{}",
        reply.text
    );
}

#[tokio::test]
async fn signin_relays_the_session_cookie_and_goes_back_to_the_page_asked_for() {
    const SET_COOKIE: &str = "session=eyJqd3QiOiJhYmMifQ==; Path=/; HttpOnly; SameSite=Lax";
    let routes = Router::new().route(
        "/api/users/signin",
        post(|| async {
            (
                [(header::SET_COOKIE, SET_COOKIE)],
                Json(json!({"id": USER_ID, "email": "buyer@test.com"})),
            )
        }),
    );
    let api = FakeApi::start(routes).await;
    let app = spawn_client(&api.base_url).await;

    // As the ingress forwards it: the visitor's address.
    let reply = Reply::read(
        app.http
            .post(format!("{}/auth/signin", app.base_url))
            .header("x-forwarded-for", "203.0.113.8")
            .form(&[
                ("email", " buyer@test.com "),
                ("password", "password"),
                ("next", "/orders"),
            ])
            .send()
            .await
            .unwrap(),
    )
    .await;
    reply.assert_status(303);
    assert_eq!(location(&reply), "/orders");
    assert_eq!(reply.set_cookies(), [SET_COOKIE]);
    // The API hears of the visitor's address, for the limits per address.
    assert_eq!(
        api.requests_to("/api/users/signin")[0]
            .forwarded_for
            .as_deref(),
        Some("203.0.113.8")
    );
    assert_eq!(
        api.requests_to("/api/users/signin")[0].body["email"],
        "buyer@test.com"
    );

    // `next` never leaves the site.
    let reply = post_form(
        &app,
        "/auth/signin",
        None,
        &[
            ("email", "a@b.co"),
            ("password", "password"),
            ("next", "//evil.example"),
        ],
    )
    .await;
    assert_eq!(location(&reply), "/");
}

#[tokio::test]
async fn signout_relays_the_cleared_cookie() {
    const CLEARED: &str = "session=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0";
    let routes = Router::new().route(
        "/api/users/signout",
        post(|| async { ([(header::SET_COOKIE, CLEARED)], Json(json!({}))) }),
    );
    let api = FakeApi::start(routes).await;
    let app = spawn_client(&api.base_url).await;

    let reply = post_form(&app, "/auth/signout", Some(COOKIE), &[]).await;
    reply.assert_status(303);
    assert_eq!(location(&reply), "/?notice=signed-out");
    assert_eq!(reply.set_cookies(), [CLEARED]);
    assert_eq!(
        api.requests_to("/api/users/signout")[0].cookie.as_deref(),
        Some(COOKIE)
    );
}

#[tokio::test]
async fn selling_a_ticket_shows_field_errors_by_the_fields_and_keeps_the_input() {
    let routes = Router::new().route(
        "/api/tickets",
        post(|| async {
            errors(json!([
                {"message": "Title is required", "field": "title"},
                {"message": "Price must be greater than 0", "field": "price"}
            ]))
        }),
    );
    let api = FakeApi::start(routes).await;
    let app = spawn_client(&api.base_url).await;

    let reply = post_form(
        &app,
        "/tickets/new",
        Some(COOKIE),
        &[("title", "  "), ("price", "-3")],
    )
    .await;
    reply.assert_status(422);
    assert_html(&reply);
    assert_eq!(text_of(&reply.text, "title-error"), "Title is required");
    assert_eq!(
        text_of(&reply.text, "price-error"),
        "Price must be greater than 0"
    );
    assert!(
        reply.text.contains("value=\"-3\""),
        "the price typed is kept:\n{}",
        reply.text
    );
    let sent = &api.requests_to("/api/tickets")[0];
    assert_eq!(sent.cookie.as_deref(), Some(COOKIE));
    assert_eq!(sent.body, json!({"title": "", "price": -3}));
}

#[tokio::test]
async fn selling_a_ticket_goes_to_its_page() {
    let routes = Router::new().route(
        "/api/tickets",
        post(|| async { (StatusCode::CREATED, Json(ticket(USER_ID, None))) }),
    );
    let api = FakeApi::start(routes).await;
    let app = spawn_client(&api.base_url).await;

    let reply = post_form(
        &app,
        "/tickets/new",
        Some(COOKIE),
        &[("title", "Concert"), ("price", "12.50")],
    )
    .await;
    reply.assert_status(303);
    assert_eq!(
        location(&reply),
        format!("/tickets/{TICKET_ID}?notice=listed")
    );
    assert_eq!(
        api.requests_to("/api/tickets")[0].body,
        json!({"title": "Concert", "price": 12.5})
    );
}

#[tokio::test]
async fn purchase_creates_the_order_and_goes_to_it() {
    let routes = Router::new().route(
        "/api/orders",
        post(|| async { (StatusCode::CREATED, Json(order("created", 60))) }),
    );
    let api = FakeApi::start(routes).await;
    let app = spawn_client(&api.base_url).await;

    let reply = post_form(
        &app,
        &format!("/tickets/{TICKET_ID}/purchase"),
        Some(COOKIE),
        &[],
    )
    .await;
    reply.assert_status(303);
    assert_eq!(location(&reply), format!("/orders/{ORDER_ID}"));
    let sent = &api.requests_to("/api/orders")[0];
    assert_eq!(sent.body, json!({"ticketId": TICKET_ID}));
    assert_eq!(sent.cookie.as_deref(), Some(COOKIE));
}

#[tokio::test]
async fn purchase_of_a_reserved_ticket_shows_the_reason_on_the_ticket_page() {
    let routes = Router::new()
        .route(
            "/api/orders",
            post(|| async { errors(json!([{"message": "Ticket is already reserved"}])) }),
        )
        .route(
            &format!("/api/tickets/{TICKET_ID}"),
            get(|| async { Json(ticket(OTHER_USER_ID, Some(ORDER_ID))) }),
        );
    let api = FakeApi::start(routes).await;
    let app = spawn_client(&api.base_url).await;

    let reply = post_form(
        &app,
        &format!("/tickets/{TICKET_ID}/purchase"),
        Some(COOKIE),
        &[],
    )
    .await;
    reply.assert_status(422);
    assert!(
        reply.text.contains("Ticket is already reserved"),
        "{}",
        reply.text
    );
    assert!(reply.text.contains("<h1>Concert</h1>"), "{}", reply.text);
}

#[tokio::test]
async fn editing_a_reserved_ticket_says_it_cannot_be_edited() {
    let routes = Router::new().route(
        &format!("/api/tickets/{TICKET_ID}"),
        get(|| async { Json(ticket(USER_ID, Some(ORDER_ID))) })
            .put(|| async { errors(json!([{"message": "Cannot edit a reserved ticket"}])) }),
    );
    let api = FakeApi::start(routes).await;
    let app = spawn_client(&api.base_url).await;

    let page = app
        .get(&format!("/tickets/{TICKET_ID}/edit"), Some(COOKIE))
        .await;
    page.assert_status(200);
    assert!(
        page.text.contains("Cannot edit a reserved ticket"),
        "{}",
        page.text
    );
    assert!(page.text.contains("<fieldset disabled>"), "{}", page.text);

    let reply = post_form(
        &app,
        &format!("/tickets/{TICKET_ID}/edit"),
        Some(COOKIE),
        &[("title", "New"), ("price", "20")],
    )
    .await;
    reply.assert_status(422);
    assert!(
        reply.text.contains("Cannot edit a reserved ticket"),
        "{}",
        reply.text
    );
    assert!(reply.text.contains("value=\"New\""));
}

#[tokio::test]
async fn someone_elses_ticket_cannot_be_edited() {
    let routes = Router::new().route(
        &format!("/api/tickets/{TICKET_ID}"),
        get(|| async { Json(ticket(OTHER_USER_ID, None)) }),
    );
    let api = FakeApi::start(routes).await;
    let app = spawn_client(&api.base_url).await;

    let page = app
        .get(&format!("/tickets/{TICKET_ID}/edit"), Some(COOKIE))
        .await;
    page.assert_status(403);
    assert_html(&page);
}

#[tokio::test]
async fn an_open_order_shows_the_countdown_and_the_test_card_button() {
    let routes = Router::new().route(
        &format!("/api/orders/{ORDER_ID}"),
        get(|| async { Json(order("created", 60)) }),
    );
    let api = FakeApi::start(routes).await;
    let app = spawn_client(&api.base_url).await;

    let page = app.get(&format!("/orders/{ORDER_ID}"), Some(COOKIE)).await;
    page.assert_status(200);
    let seconds: i64 = page
        .text
        .split("data-seconds-left=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!((55..=60).contains(&seconds), "{seconds}");
    assert!(page.text.contains("Pay with test card"));
    assert!(page.text.contains("name=\"token\" value=\"tok_visa\""));
    assert!(
        !page.text.contains("js.stripe.com"),
        "no Stripe.js without a publishable key"
    );
}

#[tokio::test]
async fn an_order_past_its_time_shows_order_expired() {
    let routes = Router::new().route(
        &format!("/api/orders/{ORDER_ID}"),
        get(|| async { Json(order("cancelled", -5)) }),
    );
    let api = FakeApi::start(routes).await;
    let app = spawn_client(&api.base_url).await;

    let page = app.get(&format!("/orders/{ORDER_ID}"), Some(COOKIE)).await;
    page.assert_status(200);
    assert!(page.text.contains("Order expired"));
    assert!(!page.text.contains("Pay with test card"));
}

#[tokio::test]
async fn paying_sends_the_token_and_goes_to_my_orders() {
    let routes = Router::new().route(
        "/api/payments",
        post(|| async { (StatusCode::CREATED, Json(json!({"id": "pay_1"}))) }),
    );
    let api = FakeApi::start(routes).await;
    let app = spawn_client(&api.base_url).await;

    let reply = post_form(
        &app,
        &format!("/orders/{ORDER_ID}/pay"),
        Some(COOKIE),
        &[("token", "tok_visa")],
    )
    .await;
    reply.assert_status(303);
    assert_eq!(location(&reply), "/orders?notice=paid");
    assert_eq!(
        api.requests_to("/api/payments")[0].body,
        json!({"token": "tok_visa", "orderId": ORDER_ID})
    );
}

#[tokio::test]
async fn a_refused_payment_is_shown_on_the_order_page() {
    let routes = Router::new()
        .route(
            "/api/payments",
            post(|| async { errors(json!([{"message": "Cannot pay for a cancelled order"}])) }),
        )
        .route(
            &format!("/api/orders/{ORDER_ID}"),
            get(|| async { Json(order("cancelled", -1)) }),
        );
    let api = FakeApi::start(routes).await;
    let app = spawn_client(&api.base_url).await;

    let reply = post_form(
        &app,
        &format!("/orders/{ORDER_ID}/pay"),
        Some(COOKIE),
        &[("token", "tok_visa")],
    )
    .await;
    reply.assert_status(422);
    assert!(
        reply.text.contains("Cannot pay for a cancelled order"),
        "{}",
        reply.text
    );
}

#[tokio::test]
async fn cancelling_deletes_the_order_and_shows_it_again() {
    let routes = Router::new().route(
        &format!("/api/orders/{ORDER_ID}"),
        axum::routing::delete(|| async { StatusCode::NO_CONTENT }),
    );
    let api = FakeApi::start(routes).await;
    let app = spawn_client(&api.base_url).await;

    let reply = post_form(
        &app,
        &format!("/orders/{ORDER_ID}/cancel"),
        Some(COOKIE),
        &[],
    )
    .await;
    reply.assert_status(303);
    assert_eq!(
        location(&reply),
        format!("/orders/{ORDER_ID}?notice=cancelled")
    );
    let sent = api.requests_to(&format!("/api/orders/{ORDER_ID}"));
    assert_eq!(
        (sent[0].method.as_str(), sent[0].cookie.as_deref()),
        ("DELETE", Some(COOKIE))
    );
}

#[tokio::test]
async fn my_orders_lists_title_price_and_status() {
    let routes = Router::new().route(
        "/api/orders",
        get(|| async {
            Json(json!([
                order("complete", 60),
                order("awaiting:payment", 60)
            ]))
        }),
    );
    let api = FakeApi::start(routes).await;
    let app = spawn_client(&api.base_url).await;

    let page = app.get("/orders", Some(COOKIE)).await;
    page.assert_status(200);
    for expected in ["Concert", "$12.50", ">complete<", ">awaiting:payment<"] {
        assert!(
            page.text.contains(expected),
            "missing {expected}:\n{}",
            page.text
        );
    }
}

#[tokio::test]
async fn an_order_whose_ticket_orders_lost_is_listed_but_cannot_be_shown() {
    let lost = || {
        let mut order = order("awaiting:payment", 60);
        order["ticket"] = Value::Null;
        order
    };
    let routes = Router::new()
        .route(
            "/api/orders",
            get(move || async move { Json(json!([lost()])) }),
        )
        .route(
            &format!("/api/orders/{ORDER_ID}"),
            get(move || async move { Json(lost()) }),
        );
    let api = FakeApi::start(routes).await;
    let app = spawn_client(&api.base_url).await;

    let list = app.get("/orders", Some(COOKIE)).await;
    list.assert_status(200);
    assert!(
        list.text.contains("Ticket no longer listed"),
        "{}",
        list.text
    );
    assert!(list.text.contains(">awaiting:payment<"), "{}", list.text);
    app.get(&format!("/orders/{ORDER_ID}"), Some(COOKIE))
        .await
        .assert_status(502);
}

#[tokio::test]
async fn an_unreachable_api_is_a_friendly_503_page() {
    // A port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let app = spawn_client(&format!("http://{closed}")).await;

    for (path, cookie) in [
        ("/", None),
        ("/orders", Some(COOKIE)),
        (&format!("/tickets/{TICKET_ID}") as &str, None),
    ] {
        let reply = app.get(path, cookie).await;
        reply.assert_status(503);
        assert_html(&reply);
        assert!(
            reply.text.contains("temporarily unavailable"),
            "{}",
            reply.text
        );
        assert!(
            !reply.text.contains("127.0.0.1"),
            "no raw error: {}",
            reply.text
        );
    }
    let reply = post_form(
        &app,
        "/auth/signin",
        None,
        &[("email", "a@b.co"), ("password", "password")],
    )
    .await;
    reply.assert_status(503);
    app.get("/readyz", None).await.assert_status(503);
}

#[tokio::test]
async fn a_failing_or_garbled_api_is_a_friendly_502_page() {
    let routes = Router::new()
        .route(
            "/api/tickets",
            get(|| async {
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    Json(json!({"errors": [{"message": "Something went wrong"}]})),
                )
            }),
        )
        .route(
            &format!("/api/tickets/{TICKET_ID}"),
            get(|| async { "not json" }),
        );
    let api = FakeApi::start(routes).await;
    let app = spawn_client(&api.base_url).await;

    let reply = app.get(&format!("/tickets/{TICKET_ID}"), None).await;
    reply.assert_status(502);
    assert_html(&reply);
    assert!(
        reply.text.contains("Something went wrong"),
        "{}",
        reply.text
    );
    assert!(!reply.text.contains("not json"));

    // The landing page keeps its header and says the tickets are unavailable.
    let reply = app.get("/", Some(COOKIE)).await;
    reply.assert_status(502);
    assert!(
        reply.text.contains("Tickets are temporarily unavailable"),
        "{}",
        reply.text
    );
    assert!(
        reply
            .text
            .contains("Signed in as <strong>buyer@test.com</strong>"),
        "{}",
        reply.text
    );
}

#[tokio::test]
async fn a_ticket_orders_does_not_know_yet_can_be_tried_again() {
    let routes = Router::new()
        .route(
            "/api/orders",
            post(|| async {
                (
                    StatusCode::NOT_FOUND,
                    Json(json!({"errors": [{"message": "Not Found"}]})),
                )
            }),
        )
        .route(
            &format!("/api/tickets/{TICKET_ID}"),
            get(|| async { Json(ticket(OTHER_USER_ID, None)) }),
        );
    let api = FakeApi::start(routes).await;
    let app = spawn_client(&api.base_url).await;

    let reply = post_form(
        &app,
        &format!("/tickets/{TICKET_ID}/purchase"),
        Some(COOKIE),
        &[],
    )
    .await;
    reply.assert_status(422);
    assert!(
        reply.text.contains("can&#39;t be bought just yet")
            || reply.text.contains("can&#x27;t be bought just yet"),
        "{}",
        reply.text
    );
    assert!(reply.text.contains(">Purchase</button>"), "{}", reply.text);
}

#[tokio::test]
async fn an_order_payments_does_not_know_yet_can_be_paid_again() {
    let routes = Router::new()
        .route(
            "/api/payments",
            post(|| async {
                (
                    StatusCode::NOT_FOUND,
                    Json(json!({"errors": [{"message": "Not Found"}]})),
                )
            }),
        )
        .route(
            &format!("/api/orders/{ORDER_ID}"),
            get(|| async { Json(order("created", 60)) }),
        );
    let api = FakeApi::start(routes).await;
    let app = spawn_client(&api.base_url).await;

    let reply = post_form(
        &app,
        &format!("/orders/{ORDER_ID}/pay"),
        Some(COOKIE),
        &[("token", "tok_visa")],
    )
    .await;
    reply.assert_status(422);
    assert!(
        reply.text.contains("take the payment just yet"),
        "{}",
        reply.text
    );
    assert!(reply.text.contains("Pay with test card"), "{}", reply.text);
}

#[tokio::test]
async fn unknown_pages_and_malformed_ids_are_the_404_page_without_calling_the_api() {
    let api = FakeApi::start(Router::new()).await;
    let app = spawn_client(&api.base_url).await;

    for path in [
        "/nope",
        "/tickets/123",
        "/tickets/..%2Fusers%2Fsignout",
        "/orders/not-an-id",
    ] {
        let reply = app.get(path, Some(COOKIE)).await;
        reply.assert_status(404);
        assert_html(&reply);
        assert!(reply.text.contains("Page not found"));
    }
    assert!(
        api.seen
            .lock()
            .unwrap()
            .iter()
            .all(|s| s.path == "/api/users/currentuser"),
        "{:?}",
        api.seen.lock().unwrap()
    );
}

#[tokio::test]
async fn assets_are_served_by_the_client_and_pages_are_not_cached() {
    let routes = Router::new().route("/api/tickets", get(|| async { Json(json!([])) }));
    let api = FakeApi::start(routes).await;
    let app = spawn_client(&api.base_url).await;

    let page = app.get("/", None).await;
    assert_eq!(page.headers[header::CACHE_CONTROL], "no-store");
    let csp = page.headers[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap();
    assert!(csp.contains("default-src 'self'"), "{csp}");
    let css = page
        .text
        .split("href=\"/assets/app.css")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    let reply = app.get(&format!("/assets/app.css{css}"), None).await;
    reply.assert_status(200);
    assert!(
        reply.headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/css")
    );
    assert!(page.text.contains("src=\"/assets/app.js?v="));
    app.get("/assets/app.js", None).await.assert_status(200);
    assert!(
        !page.text.contains("http://") && !page.text.contains("https://"),
        "no third-party URLs: {}",
        page.text
    );
}

#[tokio::test]
async fn ready_when_the_api_answers() {
    let api = FakeApi::start(Router::new()).await;
    let app = spawn_client(&api.base_url).await;
    app.get("/healthz", None).await.assert_status(200);
    app.get("/readyz", None).await.assert_status(200);
}

#[tokio::test]
async fn not_ready_while_the_ingress_cannot_reach_the_api() {
    let routes = Router::new().route(
        "/api/users/currentuser",
        get(|| async {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"errors": [{"message": "Service unavailable"}]})),
            )
        }),
    );
    let api = FakeApi::start_raw(routes).await;
    let app = spawn_client(&api.base_url).await;
    app.get("/healthz", None).await.assert_status(200);
    app.get("/readyz", None).await.assert_status(503);
}

#[tokio::test]
async fn with_a_publishable_key_the_order_page_uses_stripe_js() {
    let routes = Router::new()
        .route(
            &format!("/api/orders/{ORDER_ID}"),
            get(|| async { Json(order("created", 60)) }),
        )
        .route(
            "/api/payments",
            axum::routing::post(|| async {
                Json(json!({"id": "64b7f0c2a1b2c3d4e5f60799", "orderId": ORDER_ID, "status": "pending",
                            "amount": 1250, "paymentIntentId": "pi_1", "clientSecret": "pi_1_secret_x"}))
            }),
        );
    let api = FakeApi::start(routes).await;
    let settings = Settings {
        serving: common::server::Serving {
            development: true,
            ..Default::default()
        },
        api_base_url: api.base_url.clone(),
        stripe_publishable_key: Some("pk_test_123".into()),
        stripe_js_url: client::DEFAULT_STRIPE_JS_URL.to_owned(),
    };
    let app = Application::build(settings).await.unwrap();
    let app = testkit::start(app);

    let page = app.get(&format!("/orders/{ORDER_ID}"), Some(COOKIE)).await;
    page.assert_status(200);
    assert!(
        page.text
            .contains("<script src=\"https://js.stripe.com/v3/\"></script>"),
        "{}",
        page.text
    );
    assert!(page.text.contains("data-stripe-key=\"pk_test_123\""));
    assert!(page.text.contains("data-client-secret=\"pi_1_secret_x\""));
    assert!(!page.text.contains("tok_visa"));
    let csp = page.headers[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap();
    assert!(
        csp.contains("script-src 'self' https://js.stripe.com"),
        "{csp}"
    );
    // Other pages do not load it.
    let routes_page = app.get("/auth/signin", None).await;
    assert!(!routes_page.text.contains("js.stripe.com"));
}

#[tokio::test]
async fn signed_in_visitors_skip_the_sign_in_form() {
    let api = FakeApi::start(Router::new()).await;
    let app = spawn_client(&api.base_url).await;
    let reply = app.get("/auth/signin?next=%2Forders", Some(COOKIE)).await;
    reply.assert_status(303);
    assert_eq!(location(&reply), "/orders");
    let form = app.get("/auth/signin?next=%2Forders", None).await;
    form.assert_status(200);
    assert!(
        form.text.contains("name=\"next\" value=\"/orders\""),
        "{}",
        form.text
    );
    assert!(form.text.contains("<label for=\"email\">Email</label>"));
}

async fn order_page_with_payment(
    order_status: &str,
    payment: Value,
    stripe_js: Option<&str>,
) -> Reply {
    let order_body = order(
        order_status,
        if order_status == "cancelled" { -5 } else { 60 },
    );
    let listed = payment.clone();
    let routes = Router::new()
        .route(
            &format!("/api/orders/{ORDER_ID}"),
            get(move || {
                let order_body = order_body.clone();
                async move { Json(order_body) }
            }),
        )
        .route(
            "/api/payments",
            get(move || {
                let listed = listed.clone();
                async move { Json(json!([listed])) }
            })
            .post(move || {
                let payment = payment.clone();
                async move { Json(payment) }
            }),
        );
    let api = FakeApi::start(routes).await;
    let settings = Settings {
        serving: common::server::Serving {
            development: true,
            ..Default::default()
        },
        api_base_url: api.base_url.clone(),
        stripe_publishable_key: stripe_js.map(|_| "pk_test_fake".to_owned()),
        stripe_js_url: stripe_js
            .unwrap_or(client::DEFAULT_STRIPE_JS_URL)
            .to_owned(),
    };
    let app = Application::build(settings).await.unwrap();
    let app = testkit::start(app);
    let page = app
        .get(
            &format!("/orders/{ORDER_ID}?payment=processing"),
            Some(COOKIE),
        )
        .await;
    drop(api);
    page
}

#[tokio::test]
async fn a_paid_order_awaiting_the_webhook_shows_processing_and_refreshes_itself() {
    let payment = json!({"id": "x", "orderId": ORDER_ID, "status": "succeeded", "amount": 1250, "paymentIntentId": "pi_1"});
    let page = order_page_with_payment(
        "created",
        payment,
        Some("http://127.0.0.1:12111/js.stripe.com/v3/"),
    )
    .await;
    page.assert_status(200);
    assert!(page.text.contains("Processing…"), "{}", page.text);
    assert!(
        page.text
            .contains("<meta http-equiv=\"refresh\" content=\"2\">")
    );
    assert!(!page.text.contains("data-client-secret"));
}

#[tokio::test]
async fn with_a_stripe_js_elsewhere_the_csp_allows_exactly_that_origin() {
    let payment = json!({"id": "x", "orderId": ORDER_ID, "status": "pending", "amount": 1250,
                         "paymentIntentId": "pi_1", "clientSecret": "pi_1_secret_y"});
    let page = order_page_with_payment(
        "created",
        payment.clone(),
        Some("http://127.0.0.1:12111/js.stripe.com/v3/"),
    )
    .await;
    // Back from Stripe.js, the webhook not landed yet: processing.
    assert!(page.text.contains("Processing…"), "{}", page.text);
    let csp = page.headers[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap();
    assert!(
        csp.contains("script-src 'self' http://127.0.0.1:12111;"),
        "{csp}"
    );
    assert!(
        csp.contains("connect-src 'self' http://127.0.0.1:12111;"),
        "{csp}"
    );
    assert!(!csp.contains("js.stripe.com"), "{csp}");
}

#[tokio::test]
async fn back_from_stripe_on_an_order_cancelled_meanwhile_the_page_waits_for_the_money() {
    // The intent's fate is not known yet: processing, refreshing itself.
    let pending = json!({"id": "x", "orderId": ORDER_ID, "status": "pending", "amount": 1250, "paymentIntentId": "pi_1"});
    let page = order_page_with_payment("cancelled", pending, None).await;
    page.assert_status(200);
    assert!(page.text.contains("Processing…"), "{}", page.text);
    assert!(page.text.contains("refunded in full"), "{}", page.text);
    assert!(
        page.text
            .contains("<meta http-equiv=\"refresh\" content=\"2\">")
    );
    // The intent was closed before it could be paid: the order is just over.
    let closed = json!({"id": "x", "orderId": ORDER_ID, "status": "cancelled", "amount": 1250, "paymentIntentId": "pi_1"});
    let page = order_page_with_payment("cancelled", closed, None).await;
    assert!(!page.text.contains("Processing…"), "{}", page.text);
    assert!(page.text.contains("Order expired"), "{}", page.text);
    assert!(!page.text.contains("http-equiv=\"refresh\""));
}

#[tokio::test]
async fn money_refunded_for_a_cancelled_order_shows_refunded() {
    let payment = json!({"id": "x", "orderId": ORDER_ID, "status": "refunded", "amount": 1250, "paymentIntentId": "pi_1"});
    let page = order_page_with_payment("cancelled", payment, None).await;
    page.assert_status(200);
    assert!(page.text.contains("<h2>Refunded</h2>"), "{}", page.text);
    assert!(page.text.contains("refunded in full"));
    assert!(!page.text.contains("http-equiv=\"refresh\""));
}

// --- search, pages, my listings (issue 15) ----------------------------------------

#[tokio::test]
async fn the_landing_page_passes_the_search_on_and_links_the_next_and_previous_pages() {
    let asked = Arc::new(Mutex::new(Vec::<String>::new()));
    let routes = {
        let asked = asked.clone();
        Router::new().route(
            "/api/tickets",
            get(
                move |axum::extract::RawQuery(query): axum::extract::RawQuery| {
                    let asked = asked.clone();
                    async move {
                        asked.lock().unwrap().push(query.unwrap_or_default());
                        (
                            [(
                                header::LINK,
                                "</api/tickets?limit=24&cursor=bi4xLmFi>; rel=\"next\"",
                            )],
                            Json(json!([ticket(OTHER_USER_ID, None)])),
                        )
                    }
                },
            ),
        )
    };
    let api = FakeApi::start(routes).await;
    let app = spawn_client(&api.base_url).await;

    let page = app
        .get(
            "/?q=caf%C3%A9+live&maxPrice=30&sort=price&cursor=abc&trail=-",
            None,
        )
        .await;
    page.assert_status(200);
    let sent = asked.lock().unwrap().last().cloned().unwrap();
    assert_eq!(
        sent,
        "q=caf%C3%A9%20live&maxPrice=30&sort=price&limit=24&cursor=abc"
    );
    for expected in [
        "value=\"café live\"",
        "cursor=bi4xLmFi&trail=-,abc",
        "q=caf%C3%A9%20live&maxPrice=30&sort=price&cursor=&trail=\"",
        "rel=\"next\"",
        "rel=\"prev\"",
    ] {
        assert!(
            page.text.replace("&#38;", "&").contains(expected),
            "missing {expected}:\n{}",
            page.text
        );
    }
    // A cursor that is not one is the 404 page, without asking the API.
    let before = asked.lock().unwrap().len();
    app.get("/?cursor=%3Cscript%3E", None)
        .await
        .assert_status(404);
    assert_eq!(asked.lock().unwrap().len(), before);
}

#[tokio::test]
async fn a_search_the_api_refuses_shows_the_message_by_its_field() {
    let routes = Router::new().route(
        "/api/tickets",
        get(|| async {
            errors(json!([{"message": "maxPrice must not be below minPrice", "field": "maxPrice"}]))
        }),
    );
    let api = FakeApi::start(routes).await;
    let app = spawn_client(&api.base_url).await;

    let page = app.get("/?minPrice=20&maxPrice=10", None).await;
    page.assert_status(400);
    assert_eq!(
        text_of(&page.text, "maxPrice-error"),
        "maxPrice must not be below minPrice"
    );
    assert!(page.text.contains("value=\"20\""), "the input is kept");
}

#[tokio::test]
async fn an_empty_search_says_nothing_matches() {
    let routes = Router::new().route("/api/tickets", get(|| async { Json(json!([])) }));
    let api = FakeApi::start(routes).await;
    let app = spawn_client(&api.base_url).await;
    let page = app.get("/?q=nothing", None).await;
    page.assert_status(200);
    assert!(
        page.text.contains("No tickets match your search"),
        "{}",
        page.text
    );
    let page = app.get("/", None).await;
    assert!(
        page.text.contains("No tickets for sale right now"),
        "{}",
        page.text
    );
}

#[tokio::test]
async fn my_listings_show_each_status_and_withdraw_only_what_is_available() {
    let routes = Router::new().route(
        "/api/tickets",
        get(
            |axum::extract::RawQuery(query): axum::extract::RawQuery| async move {
                assert!(query.unwrap_or_default().starts_with("mine=true"));
                let mut available = ticket(USER_ID, None);
                available["status"] = json!("available");
                let mut sold = ticket(USER_ID, Some(ORDER_ID));
                sold["id"] = json!("5f8d0d55b54764421b7156ca");
                sold["title"] = json!("Sold one");
                sold["status"] = json!("sold");
                Json(json!([available, sold]))
            },
        ),
    );
    let api = FakeApi::start(routes).await;
    let app = spawn_client(&api.base_url).await;

    let page = app.get("/tickets/mine", Some(COOKIE)).await;
    page.assert_status(200);
    assert!(
        page.text.contains(">available<") && page.text.contains(">sold<"),
        "{}",
        page.text
    );
    assert_eq!(page.text.matches("/withdraw\"").count(), 1, "{}", page.text);
    assert!(
        page.text
            .contains(&format!("action=\"/tickets/{TICKET_ID}/withdraw\""))
    );

    let anonymous = app.get("/tickets/mine", None).await;
    anonymous.assert_status(303);
}

#[tokio::test]
async fn withdrawing_deletes_the_ticket_and_goes_back_to_my_listings() {
    let routes = Router::new().route(
        &format!("/api/tickets/{TICKET_ID}"),
        axum::routing::delete(|| async { StatusCode::NO_CONTENT }),
    );
    let api = FakeApi::start(routes).await;
    let app = spawn_client(&api.base_url).await;

    let reply = post_form(
        &app,
        &format!("/tickets/{TICKET_ID}/withdraw"),
        Some(COOKIE),
        &[],
    )
    .await;
    reply.assert_status(303);
    assert_eq!(location(&reply), "/tickets/mine?notice=withdrawn");
    let sent = api.requests_to(&format!("/api/tickets/{TICKET_ID}"));
    assert_eq!(
        (sent[0].method.as_str(), sent[0].cookie.as_deref()),
        ("DELETE", Some(COOKIE))
    );
}

#[tokio::test]
async fn a_refused_withdrawal_is_shown_on_my_listings() {
    let routes = Router::new()
        .route(
            &format!("/api/tickets/{TICKET_ID}"),
            axum::routing::delete(|| async {
                errors(json!([{"message": "Cannot withdraw a reserved ticket"}]))
            }),
        )
        .route(
            "/api/tickets",
            get(|| async { Json(json!([ticket(USER_ID, Some(ORDER_ID))])) }),
        );
    let api = FakeApi::start(routes).await;
    let app = spawn_client(&api.base_url).await;

    let reply = post_form(
        &app,
        &format!("/tickets/{TICKET_ID}/withdraw"),
        Some(COOKIE),
        &[],
    )
    .await;
    reply.assert_status(422);
    assert!(
        reply.text.contains("Cannot withdraw a reserved ticket"),
        "{}",
        reply.text
    );
}

#[tokio::test]
async fn selling_sends_the_face_value_only_when_given_and_the_ticket_page_shows_it() {
    let routes = Router::new()
        .route(
            "/api/tickets",
            post(|| async { (StatusCode::CREATED, Json(ticket(USER_ID, None))) }),
        )
        .route(
            &format!("/api/tickets/{TICKET_ID}"),
            get(|| async {
                let mut t = ticket(OTHER_USER_ID, None);
                t["faceValue"] = json!(10);
                Json(t)
            }),
        );
    let api = FakeApi::start(routes).await;
    let app = spawn_client(&api.base_url).await;

    for (face, expected) in [
        ("", json!({"title": "Gig", "price": 12})),
        (
            "10.5",
            json!({"title": "Gig", "price": 12, "faceValue": 10.5}),
        ),
    ] {
        let reply = post_form(
            &app,
            "/tickets/new",
            Some(COOKIE),
            &[("title", "Gig"), ("price", "12"), ("faceValue", face)],
        )
        .await;
        reply.assert_status(303);
        assert_eq!(
            api.requests_to("/api/tickets").last().unwrap().body,
            expected
        );
    }
    let page = app.get(&format!("/tickets/{TICKET_ID}"), None).await;
    assert!(page.text.contains("Face value: $10.00"), "{}", page.text);
}

#[tokio::test]
async fn an_order_cancelled_because_its_ticket_was_withdrawn_says_so() {
    let routes = Router::new()
        .route(
            &format!("/api/orders/{ORDER_ID}"),
            get(|| async {
                let mut o = order("cancelled", 600);
                o["cancelReason"] = json!("The seller withdrew this ticket");
                Json(o)
            }),
        )
        .route("/api/payments", get(|| async { Json(json!([])) }));
    let api = FakeApi::start(routes).await;
    let app = spawn_client(&api.base_url).await;
    let page = app.get(&format!("/orders/{ORDER_ID}"), Some(COOKIE)).await;
    page.assert_status(200);
    assert!(
        page.text.contains("The seller withdrew this ticket"),
        "{}",
        page.text
    );
}
