//! Sign-in guessing limits against the real service and database: per
//! account, per client address, no account enumeration, a success clears
//! the account's count, and the count is the database's (shared by
//! replicas).

use std::time::Duration;

use auth::{Application, Settings, throttle::Policy};
use common::{client::TrustedProxies, config::Secret};
use serde_json::json;
use testkit::{Reply, TestApp};

async fn spawn_auth(mongo_uri: &str, policy: Policy) -> TestApp {
    let settings = Settings {
        serving: Default::default(),
        mongo_uri: mongo_uri.to_owned(),
        jwt_key: Secret::new(testkit::JWT_KEY),
        session_cookie_name: Default::default(),
        password_queue_limit: auth::password::default_queue_limit(),
        signin_policy: policy,
        trusted_proxies: TrustedProxies::private_networks(),
    };
    let app = Application::build(settings)
        .await
        .expect("auth failed to start");
    testkit::start(app)
}

/// A sign-in as if forwarded by the ingress for client `from`.
async fn signin(app: &TestApp, from: &str, email: &str, password: &str) -> Reply {
    let response = app
        .http
        .post(format!("{}/api/users/signin", app.base_url))
        .header("x-forwarded-for", from)
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .expect("request failed");
    Reply::read(response).await
}

fn retry_after(reply: &Reply) -> u64 {
    reply.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

fn assert_locked(reply: &Reply, window: Duration) {
    reply.assert_error(429, "Too many attempts, try again later");
    let wait = retry_after(reply);
    assert!(
        (1..=window.as_secs()).contains(&wait),
        "Retry-After {wait} for a {window:?} window"
    );
}

#[tokio::test]
async fn the_sixth_guess_and_the_right_password_after_it_are_refused_alike_for_every_email() {
    let policy = Policy::default();
    let app = spawn_auth(&testkit::mongo_uri("auth"), policy).await;
    app.post(
        "/api/users/signup",
        None,
        json!({"email": "victim@test.com", "password": "password1"}),
    )
    .await
    .assert_status(201);

    for email in ["victim@test.com", "nobody@test.com"] {
        for _ in 0..5 {
            signin(&app, "198.51.100.1", email, "guess-guess")
                .await
                .assert_error(400, "Invalid credentials");
        }
        let sixth = signin(&app, "198.51.100.1", email, "guess-guess").await;
        assert_locked(&sixth, policy.window);
        // The right password is refused too, and from another address: the
        // account is locked, not the address.
        let right = signin(&app, "203.0.113.7", email, "password1").await;
        assert_locked(&right, policy.window);
        assert!(right.set_cookies().is_empty());
        // The answer does not tell an existing account from an unknown one.
        assert_eq!(sixth.body, right.body);
    }
}

#[tokio::test]
async fn a_success_clears_the_accounts_count() {
    let app = spawn_auth(&testkit::mongo_uri("auth"), Policy::default()).await;
    app.post(
        "/api/users/signup",
        None,
        json!({"email": "forgetful@test.com", "password": "password1"}),
    )
    .await
    .assert_status(201);
    for _ in 0..4 {
        signin(&app, "198.51.100.2", "forgetful@test.com", "wrong-one")
            .await
            .assert_status(400);
    }
    signin(&app, "198.51.100.2", "forgetful@test.com", "password1")
        .await
        .assert_status(200);
    // Five more failures are allowed again before the lock.
    for _ in 0..5 {
        signin(&app, "198.51.100.2", "forgetful@test.com", "wrong-one")
            .await
            .assert_error(400, "Invalid credentials");
    }
    assert_locked(
        &signin(&app, "198.51.100.2", "forgetful@test.com", "password1").await,
        Policy::default().window,
    );
}

#[tokio::test]
async fn one_address_guessing_many_accounts_is_refused_past_its_own_limit() {
    let policy = Policy {
        per_account: 5,
        per_address: 3,
        window: Duration::from_secs(60),
    };
    let app = spawn_auth(&testkit::mongo_uri("auth"), policy).await;
    for n in 0..3 {
        signin(
            &app,
            "198.51.100.3",
            &format!("spray{n}@test.com"),
            "password1",
        )
        .await
        .assert_error(400, "Invalid credentials");
    }
    assert_locked(
        &signin(&app, "198.51.100.3", "spray9@test.com", "password1").await,
        policy.window,
    );
    // Another address is not affected, and neither is the same email from it.
    signin(&app, "198.51.100.4", "spray9@test.com", "password1")
        .await
        .assert_error(400, "Invalid credentials");
}

#[tokio::test]
async fn a_forged_forwarded_for_from_an_untrusted_peer_is_ignored() {
    // Nobody is trusted: the peer (loopback) is the client, whatever it says.
    let settings = Settings {
        serving: Default::default(),
        mongo_uri: testkit::mongo_uri("auth"),
        jwt_key: Secret::new(testkit::JWT_KEY),
        session_cookie_name: Default::default(),
        password_queue_limit: auth::password::default_queue_limit(),
        signin_policy: Policy {
            per_account: 5,
            per_address: 2,
            window: Duration::from_secs(60),
        },
        trusted_proxies: TrustedProxies::none(),
    };
    let app = Application::build(settings).await.unwrap();
    let app = testkit::start(app);
    for n in 0..2 {
        signin(
            &app,
            &format!("192.0.2.{n}"),
            &format!("a{n}@test.com"),
            "pw",
        )
        .await
        .assert_status(400);
    }
    signin(&app, "192.0.2.200", "a9@test.com", "pw")
        .await
        .assert_error(429, "Too many attempts, try again later");
}

#[tokio::test]
async fn two_replicas_share_the_count() {
    let uri = testkit::mongo_uri("auth");
    let policy = Policy::default();
    let one = spawn_auth(&uri, policy).await;
    let two = spawn_auth(&uri, policy).await;
    for n in 0..5 {
        let replica = if n % 2 == 0 { &one } else { &two };
        signin(replica, "198.51.100.5", "shared@test.com", "nope-nope")
            .await
            .assert_status(400);
    }
    assert_locked(
        &signin(&two, "198.51.100.5", "shared@test.com", "nope-nope").await,
        policy.window,
    );
    assert_locked(
        &signin(&one, "198.51.100.6", "shared@test.com", "nope-nope").await,
        policy.window,
    );
}

#[tokio::test]
async fn concurrent_guesses_cannot_slip_past_the_limit() {
    let policy = Policy::default();
    let app = spawn_auth(&testkit::mongo_uri("auth"), policy).await;
    let replies = futures::future::join_all(
        (0..20).map(|_| signin(&app, "198.51.100.7", "burst@test.com", "guessing")),
    )
    .await;
    let checked = replies.iter().filter(|r| r.status == 400).count();
    let refused = replies.iter().filter(|r| r.status == 429).count();
    assert_eq!(checked + refused, 20, "only 400s and 429s");
    assert!(
        checked <= policy.per_account as usize,
        "{checked} guesses were checked at once, over the limit of {}",
        policy.per_account
    );
}

#[tokio::test]
async fn many_people_behind_one_address_signing_in_at_once_are_not_refused() {
    let policy = Policy {
        per_account: 5,
        per_address: 3,
        window: Duration::from_secs(60),
    };
    let app = spawn_auth(&testkit::mongo_uri("auth"), policy).await;
    for n in 0..10 {
        app.post(
            "/api/users/signup",
            None,
            json!({"email": format!("office{n}@test.com"), "password": "password1"}),
        )
        .await
        .assert_status(201);
    }
    // Ten sign-ins at once from one address (an office behind NAT): only
    // failures count for an address, and none of these fails.
    let replies = futures::future::join_all((0..10).map(|n| {
        let app = &app;
        async move {
            signin(
                app,
                "198.51.100.8",
                &format!("office{n}@test.com"),
                "password1",
            )
            .await
        }
    }))
    .await;
    for reply in &replies {
        reply.assert_status(200);
    }
}
