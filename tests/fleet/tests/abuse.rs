//! Abuse through the ingress: password guessing (per account, the same for
//! unknown emails, counted in the database both auth replicas share) and
//! reservation hoarding (one buyer, 50 orders at once, exactly 4 held).

use std::net::IpAddr;
use std::time::Duration;

use fleet_tests::Shop;
use serde_json::json;
use testkit::{Reply, TestApp};
use tokio_util::sync::CancellationToken;

async fn signin(client: &TestApp, email: &str, password: &str) -> Reply {
    client
        .post(
            "/api/users/signin",
            None,
            json!({"email": email, "password": password}),
        )
        .await
}

fn assert_locked(reply: &Reply) {
    reply.assert_error(429, "Too many attempts, try again later");
    let wait: u64 = reply.headers["retry-after"]
        .to_str()
        .expect("Retry-After")
        .parse()
        .expect("Retry-After in seconds");
    assert!((1..=900).contains(&wait), "Retry-After {wait}");
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// A second auth replica, in this process, on the fleet's auth database.
async fn second_auth_replica(shop: &Shop) -> TestApp {
    let mongo = &shop.stack.infra().endpoints().mongo_uri;
    let settings = auth::Settings {
        serving: common::server::Serving {
            development: true,
            ..Default::default()
        },
        mongo_uri: format!("{}/auth", mongo.trim_end_matches('/')),
        jwt_key: common::config::Secret::new(testkit::JWT_KEY),
        session_cookie_name: Default::default(),
        password_queue_limit: auth::password::default_queue_limit(),
        signin_policy: Default::default(),
        trusted_proxies: common::client::TrustedProxies::private_networks(),
    };
    let app = auth::Application::build(settings)
        .await
        .expect("the second auth replica did not start");
    let address = ([127, 0, 0, 1], app.port()).into();
    let stop = CancellationToken::new();
    tokio::spawn(app.run_until(stop.clone()));
    TestApp::new(address, stop)
}

#[tokio::test]
async fn six_wrong_passwords_lock_the_account_the_same_way_for_an_unknown_email_across_replicas() {
    let shop = Shop::open(60).await;
    let user = shop.signup().await;

    // A known account: five wrong passwords are wrong passwords, the sixth
    // and then the right one are refused.
    let guesser = shop.client_from(ip("127.0.0.2"));
    for _ in 0..5 {
        signin(&guesser, &user.email, "not-my-password")
            .await
            .assert_error(400, "Invalid credentials");
    }
    let sixth = signin(&guesser, &user.email, "not-my-password").await;
    assert_locked(&sixth);
    let right = signin(&guesser, &user.email, "password1").await;
    assert_locked(&right);
    assert!(right.session_cookie().is_none());

    // An unknown email: the very same answers.
    let unknown = format!("{}@test.com", testkit::unique_name("nobody"));
    let prober = shop.client_from(ip("127.0.0.3"));
    for _ in 0..5 {
        signin(&prober, &unknown, "not-my-password")
            .await
            .assert_error(400, "Invalid credentials");
    }
    let unknown_sixth = signin(&prober, &unknown, "not-my-password").await;
    assert_locked(&unknown_sixth);
    assert_locked(&signin(&prober, &unknown, "password1").await);
    assert_eq!(unknown_sixth.body, sixth.body);

    // Two replicas count in the same database: failures through the ingress
    // (replica one) and directly at replica two add up.
    let other = shop.signup().await;
    let replica_two = second_auth_replica(&shop).await;
    let guesser = shop.client_from(ip("127.0.0.4"));
    for n in 0..5 {
        let via = if n % 2 == 0 { &guesser } else { &replica_two };
        signin(via, &other.email, "not-my-password")
            .await
            .assert_error(400, "Invalid credentials");
    }
    assert_locked(&signin(&replica_two, &other.email, "password1").await);
    assert_locked(&signin(&guesser, &other.email, "password1").await);
    replica_two.shutdown().cancel();

    // Someone else, from another address, signs in as usual.
    let bystander = shop.signup().await;
    signin(
        &shop.client_from(ip("127.0.0.5")),
        &bystander.email,
        "password1",
    )
    .await
    .assert_status(200);
    shop.close().await;
}

#[tokio::test]
async fn fifty_orders_at_once_by_one_buyer_create_exactly_four() {
    let shop = Shop::open(60).await;
    let seller = shop.signup().await;
    let buyer = shop.signup().await;
    let prober = shop.signup().await;
    let mut tickets = Vec::new();
    for n in 0..50 {
        tickets.push(shop.sell(&seller, &format!("seat {n}"), 10.0).await);
    }
    // Every ticket has reached the orders service: ordered (retrying while
    // it is unknown there) and released again by someone else.
    for ticket in &tickets {
        let order = shop.buy(&prober, ticket).await;
        let id = order.id.as_str();
        shop.send(
            reqwest::Method::DELETE,
            &format!("/api/orders/{id}"),
            Some(&prober),
            None,
        )
        .await
        .assert_status(204);
    }

    let replies = futures::future::join_all(
        tickets
            .iter()
            .map(|ticket| shop.post("/api/orders", Some(&buyer), json!({ "ticketId": ticket }))),
    )
    .await;
    let statuses: Vec<u16> = replies.iter().map(|r| r.status).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        4,
        "statuses: {statuses:?}"
    );
    for refused in replies.iter().filter(|r| r.status != 201) {
        refused.assert_error(400, "Too many active reservations");
    }
    let held = shop.get("/api/orders", Some(&buyer)).await;
    held.assert_status(200);
    assert_eq!(held.body.as_array().expect("a list").len(), 4);

    // Paying for one frees a slot: exactly one more order is accepted.
    let paid = replies.iter().find(|r| r.status == 201).expect("an order");
    let paid_id = paid.body["id"].as_str().expect("order id");
    shop.pay_when_known(&buyer, paid_id, "tok_visa")
        .await
        .assert_status(201);
    shop.wait_for_status(&buyer, paid_id, "complete", Duration::from_secs(15))
        .await;
    let free: Vec<&String> = tickets
        .iter()
        .filter(|t| {
            !replies
                .iter()
                .any(|r| r.status == 201 && r.body["ticket"]["id"] == t.as_str())
        })
        .collect();
    shop.post("/api/orders", Some(&buyer), json!({ "ticketId": free[0] }))
        .await
        .assert_status(201);
    shop.post("/api/orders", Some(&buyer), json!({ "ticketId": free[1] }))
        .await
        .assert_error(400, "Too many active reservations");
    shop.close().await;
}
