//! Black-box tests of `/api/users` against the real service and a real
//! MongoDB-wire server, one fresh database per test.

use std::time::{Duration, Instant};

use auth::{Application, Settings};
use common::config::Secret;
use serde_json::json;
use testkit::{Reply, TestApp};

async fn spawn_auth() -> TestApp {
    spawn_auth_with_queue(auth::password::default_queue_limit()).await
}

async fn spawn_auth_with_queue(password_queue_limit: usize) -> TestApp {
    spawn_auth_with(Default::default(), password_queue_limit).await
}

async fn spawn_auth_with(
    session_cookie_name: common::session::CookieName,
    password_queue_limit: usize,
) -> TestApp {
    let settings = Settings {
        serving: Default::default(),
        mongo_uri: testkit::mongo_uri("auth"),
        jwt_key: Secret::new(testkit::JWT_KEY),
        session_cookie_name,
        password_queue_limit,
        signin_policy: Default::default(),
        trusted_proxies: common::client::TrustedProxies::private_networks(),
    };
    let app = Application::build(settings)
        .await
        .expect("auth failed to start");
    testkit::start(app)
}

async fn signup(app: &TestApp, email: &str, password: &str) -> Reply {
    app.post(
        "/api/users/signup",
        None,
        json!({"email": email, "password": password}),
    )
    .await
}

#[tokio::test]
async fn signup_returns_201_with_the_user_and_a_session_cookie() {
    let app = spawn_auth().await;
    let reply = signup(&app, "test@test.com", "password").await;
    reply.assert_status(201);
    assert_eq!(reply.body["email"], "test@test.com");
    assert_eq!(reply.body["id"].as_str().map(str::len), Some(24));
    assert_eq!(
        reply.body.as_object().map(|o| o.len()),
        Some(2),
        "no password hash in the body: {}",
        reply.text
    );
    let cookie = &reply.set_cookies()[0];
    assert!(cookie.starts_with("session=") && cookie.len() > "session=".len());
    for flag in ["HttpOnly", "SameSite=Lax", "Path=/", "Secure"] {
        assert!(cookie.contains(flag), "missing {flag} in {cookie}");
    }
}

#[tokio::test]
async fn signup_rejects_an_invalid_email() {
    let app = spawn_auth().await;
    let reply = signup(&app, "not-an-email", "password").await;
    reply.assert_error(400, "Email must be valid");
    assert_eq!(reply.body["errors"][0]["field"], "email");
    assert!(reply.set_cookies().is_empty());
}

#[tokio::test]
async fn signup_rejects_a_one_character_and_an_overlong_password() {
    let app = spawn_auth().await;
    signup(&app, "test@test.com", "p")
        .await
        .assert_error(400, "Password must be between 8 and 128 characters");
    signup(&app, "test@test.com", &"p".repeat(129))
        .await
        .assert_error(400, "Password must be between 8 and 128 characters");
    // Trimmed before measuring: eight spaces around three letters are three characters.
    signup(&app, "test@test.com", "    abc     ")
        .await
        .assert_error(400, "Password must be between 8 and 128 characters");
}

#[tokio::test]
async fn signup_reports_every_missing_field() {
    let app = spawn_auth().await;
    let reply = app.post("/api/users/signup", None, json!({})).await;
    reply.assert_status(400);
    testkit::assert_error_shape(&reply.body);
    assert_eq!(
        reply.body,
        json!({"errors":[
            {"message":"Email must be valid","field":"email"},
            {"message":"Password must be between 8 and 128 characters","field":"password"}
        ]})
    );
    app.post("/api/users/signup", None, json!({"email":"test@test.com"}))
        .await
        .assert_status(400);
    app.post("/api/users/signup", None, json!({"password":"password"}))
        .await
        .assert_status(400);
}

#[tokio::test]
async fn signup_refuses_a_duplicate_email_even_in_another_case() {
    let app = spawn_auth().await;
    signup(&app, "test@test.com", "password")
        .await
        .assert_status(201);
    signup(&app, "test@test.com", "password")
        .await
        .assert_error(400, "Email in use");
    signup(&app, " TEST@test.com ", "password")
        .await
        .assert_error(400, "Email in use");
}

#[tokio::test]
async fn concurrent_signups_for_one_email_let_exactly_one_in() {
    let app = spawn_auth().await;
    let replies =
        futures::future::join_all((0..8).map(|_| signup(&app, "race@test.com", "password"))).await;
    let created = replies.iter().filter(|r| r.status == 201).count();
    assert_eq!(
        created,
        1,
        "{:?}",
        replies
            .iter()
            .map(|r| (r.status, r.text.clone()))
            .collect::<Vec<_>>()
    );
    for reply in replies.iter().filter(|r| r.status != 201) {
        reply.assert_error(400, "Email in use");
    }
}

#[tokio::test]
async fn signin_fails_the_same_way_for_an_unknown_email_and_a_wrong_password() {
    let app = spawn_auth().await;
    signup(&app, "test@test.com", "password")
        .await
        .assert_status(201);
    let unknown = app
        .post(
            "/api/users/signin",
            None,
            json!({"email":"nobody@test.com","password":"password"}),
        )
        .await;
    let wrong = app
        .post(
            "/api/users/signin",
            None,
            json!({"email":"test@test.com","password":"wrong-password"}),
        )
        .await;
    unknown.assert_error(400, "Invalid credentials");
    wrong.assert_error(400, "Invalid credentials");
    assert_eq!(unknown.body, wrong.body);
    assert!(unknown.set_cookies().is_empty() && wrong.set_cookies().is_empty());
}

#[tokio::test]
async fn signin_takes_similar_time_for_an_unknown_email_and_a_wrong_password() {
    let app = spawn_auth().await;
    signup(&app, "test@test.com", "password")
        .await
        .assert_status(201);
    let mut unknown = Vec::new();
    let mut wrong = Vec::new();
    for _ in 0..5 {
        for (email, times) in [
            ("nobody@test.com", &mut unknown),
            ("test@test.com", &mut wrong),
        ] {
            let started = Instant::now();
            app.post(
                "/api/users/signin",
                None,
                json!({"email": email, "password":"not-the-password"}),
            )
            .await
            .assert_status(400);
            times.push(started.elapsed());
        }
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (unknown, wrong) = (median(&mut unknown), median(&mut wrong));
    // Without the decoy hash an unknown email answers in a fraction of the time.
    assert!(
        unknown * 2 >= wrong && wrong * 2 >= unknown,
        "unknown email {unknown:?} vs wrong password {wrong:?}"
    );
}

#[tokio::test]
async fn a_burst_past_the_password_queue_is_refused_with_503_and_retry_after() {
    // Room for two hashes at once: of 16 sign-ups arriving together (each
    // its own email, so sign-in guessing limits play no part), the ones that
    // find the queue full are answered at once, not queued.
    let app = spawn_auth_with_queue(2).await;
    let started = Instant::now();
    let emails: Vec<String> = (0..16).map(|n| format!("burst{n}@test.com")).collect();
    let replies =
        futures::future::join_all(emails.iter().map(|email| signup(&app, email, "password"))).await;
    let refused: Vec<&Reply> = replies.iter().filter(|r| r.status == 503).collect();
    let served = replies.iter().filter(|r| r.status == 201).count();
    assert_eq!(
        served + refused.len(),
        16,
        "only 201 or 503: {:?}",
        replies.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert!(served >= 2, "the first two are always served: {served}");
    assert!(
        !refused.is_empty(),
        "16 at once over a queue of 2 refuse some"
    );
    for reply in refused {
        reply.assert_error(503, "Service is busy, try again later");
        assert_eq!(reply.headers["retry-after"], "1");
        assert!(reply.set_cookies().is_empty());
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the refused ones did not wait for the others"
    );
    // Once the burst is over, hashing works again: a refused sign-up can
    // be repeated, and the served ones sign in.
    let again = (0..16)
        .find(|n| replies[*n].status == 503)
        .expect("one was refused");
    signup(&app, &format!("burst{again}@test.com"), "password")
        .await
        .assert_status(201);
    app.post(
        "/api/users/signin",
        None,
        json!({"email": format!("burst{again}@test.com"), "password": "password"}),
    )
    .await
    .assert_status(200);
}

#[tokio::test]
async fn signin_requires_a_password_and_a_valid_email() {
    let app = spawn_auth().await;
    let reply = app
        .post(
            "/api/users/signin",
            None,
            json!({"email":"test@test.com","password":"   "}),
        )
        .await;
    reply.assert_error(400, "You must supply a password");
    assert_eq!(reply.body["errors"][0]["field"], "password");
    app.post(
        "/api/users/signin",
        None,
        json!({"email":"nope","password":"password"}),
    )
    .await
    .assert_error(400, "Email must be valid");
}

#[tokio::test]
async fn signin_with_valid_credentials_sets_a_cookie() {
    let app = spawn_auth().await;
    let id = signup(&app, "test@test.com", "password").await.body["id"].clone();
    let reply = app
        .post(
            "/api/users/signin",
            None,
            json!({"email":"Test@Test.com","password":"password"}),
        )
        .await;
    reply.assert_status(200);
    assert_eq!(reply.body, json!({"id": id, "email": "test@test.com"}));
    assert!(reply.session_cookie().is_some());
}

#[tokio::test]
async fn signout_clears_the_cookie() {
    let app = spawn_auth().await;
    let cookie = signup(&app, "test@test.com", "password")
        .await
        .session_cookie()
        .unwrap();
    let reply = app
        .post("/api/users/signout", Some(&cookie), json!({}))
        .await;
    reply.assert_status(200);
    assert_eq!(reply.body, json!({}));
    let set = reply.set_cookies();
    assert_eq!(set.len(), 2, "{set:?}");
    for (name, set) in ["session", "express:sess"].into_iter().zip(&set) {
        assert!(set.starts_with(&format!("{name}=;")), "{set}");
        assert!(
            set.contains("Max-Age=0") && set.contains("Expires=Thu, 01 Jan 1970"),
            "{set}"
        );
    }
}

#[tokio::test]
async fn currentuser_accepts_a_cookie_forged_like_the_originals_tests() {
    let app = spawn_auth().await;
    let reply = app
        .get(
            "/api/users/currentuser",
            Some(&testkit::signin_like_the_original()),
        )
        .await;
    reply.assert_status(200);
    assert_eq!(reply.body["currentUser"]["email"], "test@test.com");
}

#[tokio::test]
async fn session_cookie_name_setting_names_the_cookie_set() {
    let app = spawn_auth_with(
        common::session::CookieName::Original,
        auth::password::default_queue_limit(),
    )
    .await;
    let reply = signup(&app, "test@test.com", "password").await;
    reply.assert_status(201);
    let cookie = reply.session_cookie().unwrap();
    assert!(cookie.starts_with("express:sess="), "{cookie}");
    let me = app.get("/api/users/currentuser", Some(&cookie)).await;
    assert_eq!(me.body["currentUser"]["email"], "test@test.com");
}

#[tokio::test]
async fn currentuser_shows_the_signed_in_user() {
    let app = spawn_auth().await;
    let signed_up = signup(&app, "test@test.com", "password").await;
    let cookie = signed_up.session_cookie().unwrap();
    let reply = app.get("/api/users/currentuser", Some(&cookie)).await;
    reply.assert_status(200);
    let user = &reply.body["currentUser"];
    assert_eq!(user["email"], "test@test.com");
    assert_eq!(user["id"], signed_up.body["id"]);
    assert!(user["iat"].is_i64());
}

#[tokio::test]
async fn currentuser_accepts_a_bearer_token() {
    let app = spawn_auth().await;
    let token = testkit::sessions()
        .issue("64b7f0c2a1b2c3d4e5f60718", "api@test.com")
        .unwrap();
    let reply = app
        .http
        .get(format!("{}/api/users/currentuser", app.base_url))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        Reply::read(reply).await.body["currentUser"]["email"],
        "api@test.com"
    );
}

#[tokio::test]
async fn currentuser_is_null_without_or_with_a_bad_cookie() {
    let app = spawn_auth().await;
    let cookie = signup(&app, "test@test.com", "password")
        .await
        .session_cookie()
        .unwrap();
    let mut tampered = cookie.clone();
    tampered.insert(20, 'x');
    let forged = {
        let other = common::session::Sessions::new("some-other-key", false);
        let token = other
            .issue("64b7f0c2a1b2c3d4e5f60718", "evil@test.com")
            .unwrap();
        other
            .cookie(&token)
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_owned()
    };
    for cookie in [
        None,
        Some(tampered),
        Some(forged),
        Some(testkit::expired_signin()),
        Some("session=garbage".into()),
    ] {
        let reply = app.get("/api/users/currentuser", cookie.as_deref()).await;
        reply.assert_status(200);
        assert_eq!(
            reply.body,
            json!({"currentUser": null}),
            "cookie {cookie:?}"
        );
    }
}

#[tokio::test]
async fn malformed_json_and_wrong_content_type_are_400_in_the_error_shape() {
    let app = spawn_auth().await;
    let reply = app
        .post_raw("/api/users/signup", "application/json", "{\"email\": ")
        .await;
    reply.assert_status(400);
    testkit::assert_error_shape(&reply.body);
    let reply = app
        .post_raw("/api/users/signup", "text/plain", "email=a@b.co")
        .await;
    reply.assert_status(400);
    testkit::assert_error_shape(&reply.body);
}

#[tokio::test]
async fn oversized_bodies_are_413_and_unknown_routes_404() {
    let app = spawn_auth().await;
    let huge = format!(
        "{{\"email\":\"a@b.co\",\"password\":\"{}\"}}",
        "x".repeat(200_000)
    );
    let reply = app
        .post_raw("/api/users/signup", "application/json", huge)
        .await;
    reply.assert_status(413);
    testkit::assert_error_shape(&reply.body);
    app.get("/api/users/nothing-here", None)
        .await
        .assert_error(404, "Not Found");
    app.delete("/api/users/signup", None)
        .await
        .assert_error(404, "Not Found");
}

#[tokio::test]
async fn no_input_makes_it_answer_500() {
    let app = spawn_auth().await;
    let bodies = [
        json!(null),
        json!([]),
        json!("string"),
        json!(42),
        json!({"email": 1, "password": 2}),
        json!({"email": ["a@b.co"], "password": {"$gt": ""}}),
        json!({"email": {"$ne": null}, "password": "password"}),
        json!({"email": "a@b.co", "password": null}),
        json!({"email": "ünïcödé@exämple.com", "password": "pässwörd✓✓"}),
        json!({"email": "a@b.co".repeat(100), "password": "p".repeat(128)}),
    ];
    for path in ["/api/users/signup", "/api/users/signin"] {
        for body in &bodies {
            let reply = app.post(path, None, body.clone()).await;
            assert!(
                reply.status < 500,
                "{path} {body} -> {} {}",
                reply.status,
                reply.text
            );
            if reply.status >= 400 {
                testkit::assert_error_shape(&reply.body);
            }
        }
        for raw in ["", "{", "[1,2", "\u{0}", "{\"email\":\"a\\ud800\"}"] {
            let reply = app.post_raw(path, "application/json", raw).await;
            reply.assert_status(400);
            testkit::assert_error_shape(&reply.body);
        }
        let reply = app
            .post_raw(path, "application/json", vec![0xff, 0xfe, 0x7b])
            .await;
        reply.assert_status(400);
    }
}

#[tokio::test]
async fn probes_answer() {
    let app = spawn_auth().await;
    app.get("/healthz", None).await.assert_status(200);
    app.get("/readyz", None).await.assert_status(200);
}

#[tokio::test]
async fn metrics_count_requests_by_route_template_and_status_class() {
    let app = spawn_auth().await;
    signup(&app, "metrics@test.com", "password")
        .await
        .assert_status(201);
    signup(&app, "metrics@test.com", "password")
        .await
        .assert_status(400);
    app.get("/api/users/currentuser", None)
        .await
        .assert_status(200);
    app.get("/api/users/no-such-route/64b7f0c2a1b2c3d4e5f60718", None)
        .await
        .assert_error(404, "Not Found");

    let reply = app.get("/metrics", None).await;
    reply.assert_status(200);
    let count = |method: &str, route: &str, status: &str| {
        common::metrics::sample(
            &reply.text,
            "http_requests_total",
            &[("method", method), ("route", route), ("status", status)],
        )
        .unwrap_or(0.0)
    };
    // Other tests of this binary share the process's registry: lower bounds.
    assert!(
        count("POST", "/api/users/signup", "2xx") >= 1.0,
        "{}",
        reply.text
    );
    assert!(
        count("POST", "/api/users/signup", "4xx") >= 1.0,
        "{}",
        reply.text
    );
    assert!(
        count("GET", "/api/users/currentuser", "2xx") >= 1.0,
        "{}",
        reply.text
    );
    assert!(count("GET", "unmatched", "4xx") >= 1.0, "{}", reply.text);
    assert!(
        !reply.text.contains("no-such-route"),
        "raw paths never become labels: {}",
        reply.text
    );
}
