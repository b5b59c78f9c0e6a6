//! `POST /api/tickets` — the original's `new.test.ts`, plus the money rules.

use common::{events::TicketCreated, money::Money};
use serde_json::json;

use crate::helpers::{id_of, spawn, user};

#[tokio::test]
async fn has_a_route_handler_listening_for_post_requests() {
    let t = spawn().await;
    let reply = t.app.post("/api/tickets", None, json!({})).await;
    assert_ne!(reply.status, 404, "{}", reply.text);
}

#[tokio::test]
async fn returns_401_when_not_signed_in() {
    let t = spawn().await;
    t.app
        .post(
            "/api/tickets",
            None,
            json!({"title": "concert", "price": 10}),
        )
        .await
        .assert_error(401, "Not authorized");
    let expired = testkit::expired_signin();
    t.post(&expired, json!({"title": "concert", "price": 10}))
        .await
        .assert_error(401, "Not authorized");
}

#[tokio::test]
async fn is_not_401_when_signed_in() {
    let t = spawn().await;
    let reply = t.post(&testkit::signin(), json!({})).await;
    assert_ne!(reply.status, 401, "{}", reply.text);
}

#[tokio::test]
async fn accepts_a_session_cookie_forged_like_the_originals_tests() {
    let t = spawn().await;
    let ticket = t
        .create_ticket(&testkit::signin_like_the_original(), "concert", json!(10))
        .await;
    assert_eq!(ticket["title"], "concert");
}

#[tokio::test]
async fn rejects_an_empty_or_missing_title() {
    let t = spawn().await;
    let cookie = testkit::signin();
    for body in [
        json!({"title": "", "price": 10}),
        json!({"title": "   ", "price": 10}),
        json!({"price": 10}),
        json!({"title": 42, "price": 10}),
    ] {
        let reply = t.post(&cookie, body.clone()).await;
        reply.assert_error(400, "Title is required");
        assert_eq!(
            reply.body["errors"],
            json!([{"message": "Title is required", "field": "title"}]),
            "{body}"
        );
    }
}

#[tokio::test]
async fn rejects_a_negative_zero_missing_non_numeric_or_three_decimal_price() {
    let t = spawn().await;
    let cookie = testkit::signin();
    for price in [
        json!(-10),
        json!(0),
        json!(null),
        json!("abc"),
        json!(""),
        json!(10.123),
        json!("10.123"),
        json!(true),
    ] {
        let reply = t
            .post(&cookie, json!({"title": "concert", "price": price}))
            .await;
        reply.assert_error(400, "Price must be greater than 0");
        assert_eq!(
            reply.body["errors"],
            json!([{"message": "Price must be greater than 0", "field": "price"}]),
            "price {price}"
        );
    }
    let reply = t.post(&cookie, json!({"title": "concert"})).await;
    reply.assert_error(400, "Price must be greater than 0");
}

#[tokio::test]
async fn reports_both_invalid_fields_at_once() {
    let t = spawn().await;
    let reply = t
        .post(&testkit::signin(), json!({"title": "", "price": -1}))
        .await;
    reply.assert_status(400);
    assert_eq!(
        reply.body,
        json!({"errors": [
            {"message": "Title is required", "field": "title"},
            {"message": "Price must be greater than 0", "field": "price"}
        ]})
    );
}

#[tokio::test]
async fn rejects_a_malformed_body_in_the_error_shape() {
    let t = spawn().await;
    let reply = t
        .app
        .http
        .post(format!("{}/api/tickets", t.app.base_url))
        .header("cookie", testkit::signin())
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    let reply = testkit::Reply::read(reply).await;
    reply.assert_status(400);
    testkit::assert_error_shape(&reply.body);
}

#[tokio::test]
async fn accepts_a_numeric_string_price() {
    let t = spawn().await;
    let ticket = t
        .create_ticket(&testkit::signin(), "concert", json!("12.50"))
        .await;
    assert_eq!(ticket["price"], json!(12.5));
    let stored = t
        .store
        .find(id_of(&ticket).parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.price, Money::from_cents(1250));
}

#[tokio::test]
async fn creates_a_ticket_with_valid_inputs() {
    let t = spawn().await;
    let (user_id, cookie) = user();
    assert!(t.store.list_available(500).await.unwrap().is_empty());

    let ticket = t.create_ticket(&cookie, "  concert  ", json!(20)).await;

    assert_eq!(
        ticket,
        json!({"id": id_of(&ticket), "title": "concert", "price": 20, "userId": user_id, "version": 0}),
        "no orderId while unreserved"
    );
    let stored = t.store.list_available(500).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(
        (
            stored[0].title.as_str(),
            stored[0].price.cents(),
            stored[0].version
        ),
        ("concert", 2000, 0)
    );
    assert_eq!(t.list("").await.body, json!([ticket]));
}

#[tokio::test]
async fn publishes_ticket_created() {
    let t = spawn().await;
    let (user_id, cookie) = user();
    let ticket = t.create_ticket(&cookie, "concert", json!(12.5)).await;

    let events = testkit::wait_for_published::<TicketCreated>(&t.bus, 1).await;
    assert_eq!(
        events,
        [TicketCreated {
            id: id_of(&ticket),
            version: 0,
            title: "concert".into(),
            price: Money::from_cents(1250),
            user_id,
        }]
    );
    // Price is a JSON number on the wire, as in the original.
    let raw = serde_json::to_value(&events[0]).unwrap();
    assert_eq!(raw["price"], json!(12.5));
}
