//! Every route of the fleet, through the ingress, against what no honest
//! client sends. Each refusal is a 4xx in the `{"errors":[…]}` shape with a
//! JSON content type; nothing is a 5xx, nothing is half-answered.

use base64::{
    Engine,
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
};
use common::server::BODY_LIMIT;
use hmac::{Hmac, Mac};
use hostile_tests::{Auth, Body, ROUTES, Request, Route, call, fleet};
use serde_json::{Value, json};

fn routes_reading_json() -> impl Iterator<Item = Route> {
    ROUTES.into_iter().filter(|route| route.body == Body::Json)
}

/// A route with a valid body (when it reads one), signed in: only what a test
/// changes is wrong with it.
fn honest(route: &Route, target: &str) -> Request {
    let request = Request::new(route.method, target).signed_in();
    match route.body {
        Body::Json => request.raw_json(route.valid_body().to_string()),
        Body::None => request,
    }
}

// --- size -------------------------------------------------------------------

#[tokio::test]
async fn a_body_declared_over_the_limit_is_refused_with_413_on_every_route() {
    // Huge JSON: a megabyte of it, and one byte over the limit.
    let megabyte = format!(r#"{{"title":"{}","price":10}}"#, "x".repeat(1 << 20));
    let just_over = format!(
        r#"{{"title":"{}","price":10}}"#,
        "x".repeat(BODY_LIMIT + 1 - 23)
    );
    assert_eq!(just_over.len(), BODY_LIMIT + 1);
    for route in ROUTES {
        for body in [&megabyte, &just_over] {
            let request = Request::new(route.method, route.target())
                .signed_in()
                .raw_json(body.clone());
            let what = format!("{route} with {} bytes", body.len());
            let reply = call(request).await;
            reply.assert_refused(413, &what);
            assert_eq!(reply.messages(), ["Request body is too large"], "{what}");
        }
    }
}

#[tokio::test]
async fn a_chunked_body_over_the_limit_is_cut_off_with_413() {
    let body = format!(r#"{{"title":"{}","price":10}}"#, "x".repeat(BODY_LIMIT * 2));
    for route in routes_reading_json() {
        let request = Request::new(route.method, route.target())
            .signed_in()
            .raw_json(body.clone())
            .chunked();
        call(request)
            .await
            .assert_refused(413, &format!("{route}, chunked"));
    }
}

#[tokio::test]
async fn a_body_just_under_the_limit_is_read_and_judged_on_its_merits() {
    let email = format!("{}@test.com", "a".repeat(BODY_LIMIT - 100));
    let body = json!({"email": email, "password": "password1"}).to_string();
    assert!(body.len() < BODY_LIMIT);
    let reply = call(Request::new("POST", "/api/users/signup").raw_json(body)).await;
    reply.assert_refused(400, "a 64 KiB email");
    assert_eq!(reply.messages(), ["Email must be valid"]);
}

// --- malformed JSON -----------------------------------------------------------

#[tokio::test]
async fn json_nested_ten_thousand_deep_is_refused_with_400() {
    let arrays = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let objects = format!("{}1{}", r#"{"a":"#.repeat(10_000), "}".repeat(10_000));
    let in_a_field = |field: &str| format!(r#"{{"{field}":{arrays},"price":10}}"#);
    for route in routes_reading_json() {
        for (name, body) in [
            ("arrays", arrays.clone()),
            ("objects", objects.clone()),
            ("arrays in a known field", in_a_field(known_field(&route))),
            ("arrays in an unknown field", in_a_field("junk")),
        ] {
            assert!(body.len() < BODY_LIMIT);
            let request = Request::new(route.method, route.target())
                .signed_in()
                .raw_json(body);
            call(request)
                .await
                .assert_refused(400, &format!("{route} with nested {name}"));
        }
    }
}

/// The first field the route reads.
fn known_field(route: &Route) -> &'static str {
    match route.path {
        "/api/users/signup" | "/api/users/signin" => "email",
        "/api/orders" => "ticketId",
        "/api/payments" => "orderId",
        _ => "title",
    }
}

#[tokio::test]
async fn malformed_and_mistyped_json_is_refused_with_400() {
    let bodies: [(&str, &[u8]); 10] = [
        ("empty", b""),
        ("not JSON", b"hello"),
        ("truncated", br#"{"title":"#),
        ("trailing garbage", br#"{"title":"a","price":10} x"#),
        ("a string", br#""just a string""#),
        ("an array", br#"[1,2,3]"#),
        ("null", b"null"),
        ("a huge array", &[]),
        (
            "a number too large for JSON numbers",
            br#"{"title":"a","price":1e400}"#,
        ),
        ("thousands of keys", &[]),
    ];
    let huge_array = format!("[{}1]", "1,".repeat(20_000));
    let many_keys = format!(
        "{{{}\"z\":1}}",
        (0..3000)
            .map(|n| format!("\"k{n}\":{n},"))
            .collect::<String>()
    );
    for route in routes_reading_json() {
        for (name, body) in bodies {
            let body = match name {
                "a huge array" => huge_array.as_bytes(),
                "thousands of keys" => many_keys.as_bytes(),
                _ => body,
            };
            let request = Request::new(route.method, route.target())
                .signed_in()
                .raw_json(body.to_vec());
            let reply = call(request).await;
            // Thousands of unknown keys are ignored: the fields are missing.
            reply.assert_refused(400, &format!("{route} with {name}"));
        }
        let plain = Request::new(route.method, route.target())
            .signed_in()
            .header("content-type", "text/plain")
            .raw_body(route.valid_body().to_string());
        call(plain)
            .await
            .assert_refused(400, &format!("{route} as text/plain"));
    }
}

// --- invalid UTF-8 ------------------------------------------------------------

#[tokio::test]
async fn bodies_that_are_not_utf8_are_refused_with_400() {
    let bodies: [&[u8]; 5] = [
        b"{\"title\":\"\xff\xfe\",\"price\":10,\"email\":\"\xc3\x28@x.co\"}",
        b"{\"\xff\":1}",
        b"\xef\xbb\xbf{\"title\":\"bom\",\"price\":10}",
        br#"{"title":"\ud800","price":10,"email":"\udfff","ticketId":"\ud800","token":"\ud800"}"#,
        b"\x00\x01\x02\x03",
    ];
    for route in routes_reading_json() {
        for body in bodies {
            let request = Request::new(route.method, route.target())
                .signed_in()
                .raw_json(body.to_vec());
            call(request).await.assert_refused(
                400,
                &format!("{route} with {:?}", String::from_utf8_lossy(body)),
            );
        }
    }
}

#[tokio::test]
async fn percent_encoded_garbage_in_paths_and_queries_is_a_clean_4xx() {
    for route in ROUTES
        .into_iter()
        .filter(|route| route.path.contains("{id}"))
    {
        for id in ["%FF%FE", "%C3%28", "%00", "%2e%2e%2f%2e%2e", "%ED%A0%80"] {
            let target = route.with_id(id);
            call(honest(&route, &target))
                .await
                .assert_refused(404, &format!("{route} as {target}"));
        }
    }
    for query in [
        "?limit=%FF",
        "?limit=%00",
        "?limit=1e3",
        "?limit=99999999999999999999999",
        "?limit=-1&limit=2",
    ] {
        let reply = call(Request::new("GET", format!("/api/tickets{query}"))).await;
        if reply.status != 200 {
            reply.assert_refused(400, &format!("GET /api/tickets{query}"));
        }
    }
}

// --- ids ----------------------------------------------------------------------

#[tokio::test]
async fn ids_that_are_not_object_ids_are_not_found_in_every_path() {
    let long = "a".repeat(10_000);
    let ids = [
        "not-an-id",
        "123",
        "0000000000000000000000000",
        "zzzzzzzzzzzzzzzzzzzzzzzz",
        "64b7f0c2a1b2c3d4e5f6071g",
        "-1",
        &long,
    ];
    for route in ROUTES
        .into_iter()
        .filter(|route| route.path.contains("{id}"))
    {
        for id in ids {
            let target = route.with_id(id);
            let reply = call(honest(&route, &target)).await;
            reply.assert_refused(404, &format!("{route} with id {:.40}", id));
            assert_eq!(reply.messages(), ["Not Found"]);
        }
    }
}

#[tokio::test]
async fn ids_in_bodies_that_are_not_object_ids_fail_validation() {
    let ids = [
        json!("not-an-id"),
        json!(""),
        json!(123),
        json!(null),
        json!(true),
        json!({"$ne": null}),
        json!({"$oid": "64b7f0c2a1b2c3d4e5f60718"}),
        json!(["64b7f0c2a1b2c3d4e5f60718"]),
        json!("64b7f0c2a1b2c3d4e5f6071"),
    ];
    for id in ids {
        let order =
            call(Request::json("POST", "/api/orders", &json!({"ticketId": id})).signed_in()).await;
        order.assert_refused(400, &format!("POST /api/orders with ticketId {id}"));
        assert_eq!(order.messages(), ["TicketId must be provided"]);
        let payment = call(
            Request::json(
                "POST",
                "/api/payments",
                &json!({"token": "tok_visa", "orderId": id}),
            )
            .signed_in(),
        )
        .await;
        payment.assert_refused(400, &format!("POST /api/payments with orderId {id}"));
        assert_eq!(payment.messages(), ["OrderId must be provided"]);
    }
}

// --- prices -------------------------------------------------------------------

#[tokio::test]
async fn prices_that_are_not_prices_are_refused_with_400_and_change_nothing() {
    let fleet = fleet();
    let own = format!("/api/tickets/{}", fleet.ticket_id);
    let invalid = [
        json!(-10),
        json!(0),
        json!(-0.0),
        json!(-0.01),
        json!(12.345),
        json!(0.001),
        json!(1e20),
        json!(10_000_000_000.01),
        json!(u64::MAX),
        json!(i64::MIN),
        json!("NaN"),
        json!("Infinity"),
        json!("-Infinity"),
        json!("1e3"),
        json!("abc"),
        json!(""),
        json!("-5"),
        json!(null),
        json!(true),
        json!([10]),
        json!({"amount": 10}),
    ];
    for (method, target) in [("POST", "/api/tickets"), ("PUT", own.as_str())] {
        for price in &invalid {
            let request =
                Request::json(method, target, &json!({"title": "concert", "price": price}))
                    .signed_in();
            let reply = call(request).await;
            reply.assert_refused(400, &format!("{method} {target} with price {price}"));
            assert_eq!(
                reply.json(),
                json!({"errors":[{"message":"Price must be greater than 0","field":"price"}]})
            );
        }
        // What JSON itself cannot say: refused as malformed (or, for an
        // underflow to zero, as no price).
        for raw in [
            "NaN",
            "Infinity",
            "-Infinity",
            "1e400",
            "-1e400",
            "1e-400",
            "0x10",
            "+5",
            "01",
        ] {
            let body = format!(r#"{{"title":"concert","price":{raw}}}"#);
            let reply = call(Request::new(method, target).signed_in().raw_json(body)).await;
            reply.assert_refused(400, &format!("{method} {target} with price {raw}"));
        }
    }
    let ticket = call(Request::new("GET", own.as_str())).await;
    assert_eq!(
        (
            ticket.status,
            ticket.json()["price"].clone(),
            ticket.json()["version"].clone()
        ),
        (200, json!(10), json!(0))
    );
}

// --- tokens -------------------------------------------------------------------

/// The algorithms a forged token is signed with.
#[derive(Clone, Copy)]
enum Algorithm {
    HS256,
    HS512,
}

impl Algorithm {
    fn name(self) -> &'static str {
        match self {
            Algorithm::HS256 => "HS256",
            Algorithm::HS512 => "HS512",
        }
    }
}

/// Tokens that must never sign anyone in.
fn forged_tokens() -> Vec<(&'static str, String)> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let id = mongodb::bson::oid::ObjectId::new().to_hex();
    let claims = json!({"id": id, "email": "forger@test.com", "iat": now, "exp": now + 3600});
    // Built by hand, so that the fleet's HS256-only signer cannot refuse to
    // make what an attacker would send.
    let sign = |alg: Algorithm, key: &[u8], claims: &Value| {
        let header = json!({"alg": alg.name(), "typ": "JWT"});
        let message = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = match alg {
            Algorithm::HS256 => {
                let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
                mac.update(message.as_bytes());
                mac.finalize().into_bytes().to_vec()
            }
            Algorithm::HS512 => {
                let mut mac = Hmac::<sha2::Sha512>::new_from_slice(key).unwrap();
                mac.update(message.as_bytes());
                mac.finalize().into_bytes().to_vec()
            }
        };
        format!("{message}.{}", URL_SAFE_NO_PAD.encode(signature))
    };
    let right_key = testkit::JWT_KEY.as_bytes();
    let genuine = sign(Algorithm::HS256, right_key, &claims);
    let parts: Vec<&str> = genuine.split('.').collect();
    let tampered_payload = URL_SAFE_NO_PAD.encode(json!({"id": mongodb::bson::oid::ObjectId::new().to_hex(), "email": "forger@test.com", "iat": now, "exp": now + 3600}).to_string());
    let unsigned = |header: Value| {
        format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            parts[1]
        )
    };
    vec![
        (
            "signed with another key",
            sign(Algorithm::HS256, b"not-the-fleet-key", &claims),
        ),
        (
            "expired",
            sign(
                Algorithm::HS256,
                right_key,
                &json!({"id": id, "email": "forger@test.com", "iat": now - 7200, "exp": now - 3600}),
            ),
        ),
        (
            "without exp",
            sign(
                Algorithm::HS256,
                right_key,
                &json!({"id": id, "email": "forger@test.com", "iat": now}),
            ),
        ),
        (
            "with claims of the wrong types",
            sign(
                Algorithm::HS256,
                right_key,
                &json!({"id": 5, "email": ["x"], "iat": "now", "exp": now + 3600}),
            ),
        ),
        (
            "HS512 with the right key",
            sign(Algorithm::HS512, right_key, &claims),
        ),
        ("alg none", unsigned(json!({"alg": "none", "typ": "JWT"}))),
        ("alg None", unsigned(json!({"alg": "None"}))),
        (
            "alg none with the genuine signature",
            format!(
                "{}.{}.{}",
                URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
                parts[1],
                parts[2]
            ),
        ),
        (
            "a tampered payload",
            format!("{}.{}.{}", parts[0], tampered_payload, parts[2]),
        ),
        (
            "a truncated signature",
            genuine[..genuine.len() - 5].to_owned(),
        ),
        ("garbage", "garbage".to_owned()),
        ("three dots", "...".to_owned()),
        ("empty", String::new()),
        ("eight kilobytes of A", "A".repeat(8 * 1024)),
    ]
}

/// The ways a token reaches a service.
fn carriers(token: &str) -> Vec<(&'static str, &'static str, String)> {
    vec![
        (
            "cookie",
            "cookie",
            format!(
                "session={}",
                STANDARD.encode(json!({"jwt": token}).to_string())
            ),
        ),
        ("bearer", "authorization", format!("Bearer {token}")),
    ]
}

#[tokio::test]
async fn forged_expired_and_unsigned_tokens_sign_nobody_in_on_any_route() {
    for (name, token) in forged_tokens() {
        for (carrier, header, value) in carriers(&token) {
            for route in ROUTES {
                let mut request = Request::new(route.method, route.target()).header(header, &value);
                if route.body == Body::Json {
                    request = request.raw_json(route.valid_body().to_string());
                }
                let what = format!("{route} with a token {name} in the {carrier}");
                let reply = call(request).await;
                match route.auth {
                    Auth::Required => {
                        reply.assert_refused(401, &what);
                        assert_eq!(reply.messages(), ["Not authorized"], "{what}");
                    }
                    Auth::Optional => {
                        assert_eq!(
                            (reply.status, reply.json()),
                            (200, json!({"currentUser": null})),
                            "{what}"
                        );
                    }
                    Auth::None => assert!(
                        reply.status < 500,
                        "{what}: {} {}",
                        reply.status,
                        reply.text()
                    ),
                }
            }
        }
    }
}

#[tokio::test]
async fn garbage_session_cookies_sign_nobody_in() {
    let cookies = [
        "session=".to_owned(),
        "session=!!!not-base64".to_owned(),
        format!("session={}", STANDARD.encode("not json")),
        format!("session={}", STANDARD.encode(r#"{"jwt":5}"#)),
        format!("session={}", STANDARD.encode(r#"{"jwt":null}"#)),
        format!(
            "session={}",
            STANDARD.encode(format!(r#"{{"jwt":"{}"}}"#, "\u{0}"))
        ),
        format!("session={}; session={}", "x", "y"),
        format!("session={}", "A".repeat(8 * 1024)),
    ];
    for cookie in cookies {
        let reply = call(
            Request::json("POST", "/api/tickets", &json!({"title": "t", "price": 10}))
                .header("cookie", &cookie),
        )
        .await;
        reply.assert_refused(401, &format!("POST /api/tickets with cookie {cookie:.60}"));
        let me =
            call(Request::new("GET", "/api/users/currentuser").header("cookie", &cookie)).await;
        assert_eq!(
            (me.status, me.json()),
            (200, json!({"currentUser": null})),
            "cookie {cookie:.60}"
        );
    }
    // Header values that are not text at all.
    let bytes: &[u8] = b"session=\xff\xfe\x80";
    let reply = call(Request::json("GET", "/api/orders", &json!({})).header("cookie", bytes)).await;
    reply.assert_refused(401, "a cookie of raw bytes");
    let reply =
        call(Request::new("GET", "/api/orders").header("authorization", b"Bearer \xff\xfe")).await;
    reply.assert_refused(401, "a bearer token of raw bytes");
}

#[tokio::test]
async fn the_genuine_token_signs_in_through_cookie_and_bearer() {
    // The control: the same requests with the real thing are not refused.
    let fleet = fleet();
    for (carrier, header, value) in carriers(&fleet.token) {
        let reply = call(Request::new("GET", "/api/orders").header(header, &value)).await;
        assert_eq!(reply.status, 200, "{carrier}: {}", reply.text());
    }
}

// --- unknown routes ------------------------------------------------------------

#[tokio::test]
async fn unknown_paths_and_methods_under_the_api_are_a_json_404() {
    for (method, target) in [
        ("PATCH", "/api/tickets"),
        ("DELETE", "/api/tickets/64b7f0c2a1b2c3d4e5f60718"),
        ("GET", "/api/users/signup"),
        ("PUT", "/api/orders"),
        ("PUT", "/api/payments"),
        ("GET", "/api/tickets/64b7f0c2a1b2c3d4e5f60718/extra"),
        ("BREW", "/api/tickets"),
        ("GET", "/api/orders/../users/currentuser"),
    ] {
        let reply = call(Request::new(method, target).signed_in()).await;
        reply.assert_refused(404, &format!("{method} {target}"));
    }
}
