//! Black-box tests of `/api/orders` against the real service, a real
//! MongoDB-wire server and a real NATS JetStream, each test with a database
//! and a bus namespace of its own. Ports the original app's route tests
//! (new, show, index, delete) and adds the improvements of DESIGN §7.

mod support;

use std::time::Duration;

use chrono::{DateTime, Utc};
use common::events::{Event, OrderCancelled, OrderCreated, OrderStatus};
use serde_json::{Value, json};
use support::spawn_orders;

// --- POST /api/orders (new) ---------------------------------------------------

#[tokio::test]
async fn returns_404_when_the_ticket_does_not_exist() {
    let orders = spawn_orders().await;
    let unknown = mongodb::bson::oid::ObjectId::new().to_hex();
    orders
        .order_ticket(&testkit::signin(), &unknown)
        .await
        .assert_error(404, "Not Found");
}

#[tokio::test]
async fn accepts_a_session_cookie_forged_like_the_originals_tests() {
    let orders = spawn_orders().await;
    let ticket = orders.seed_ticket("concert", 2000).await;
    let cookie = testkit::signin_like_the_original();
    let order_id = orders.create_order(&cookie, &ticket.id).await;
    let reply = orders.app.get("/api/orders", Some(&cookie)).await;
    reply.assert_status(200);
    assert_eq!(reply.body[0]["id"], order_id.as_str());
}

#[tokio::test]
async fn returns_400_when_the_ticket_is_already_reserved() {
    let orders = spawn_orders().await;
    let ticket = orders.seed_ticket("concert", 2000).await;
    orders.create_order(&testkit::signin(), &ticket.id).await;

    orders
        .order_ticket(&testkit::signin(), &ticket.id)
        .await
        .assert_error(400, "Ticket is already reserved");
    // The same buyer cannot order it twice either.
    let buyer = testkit::signin();
    let other = orders.seed_ticket("match", 1000).await;
    orders.create_order(&buyer, &other.id).await;
    orders
        .order_ticket(&buyer, &other.id)
        .await
        .assert_error(400, "Ticket is already reserved");
}

#[tokio::test]
async fn returns_400_when_the_ticket_is_sold() {
    let orders = spawn_orders().await;
    let ticket = orders.seed_ticket("concert", 2000).await;
    let order_id = orders.create_order(&testkit::signin(), &ticket.id).await;
    orders.pay(&order_id).await;

    orders
        .order_ticket(&testkit::signin(), &ticket.id)
        .await
        .assert_error(400, "Ticket is already reserved");
}

#[tokio::test]
async fn reserves_a_ticket() {
    let orders = spawn_orders().await;
    let ticket = orders.seed_ticket("concert", 1250).await;
    let user_id = mongodb::bson::oid::ObjectId::new().to_hex();
    let before = Utc::now();

    let reply = orders
        .order_ticket(&testkit::signin_as(&user_id, "buyer@test.com"), &ticket.id)
        .await;

    reply.assert_status(201);
    let order = &reply.body;
    assert_eq!(order["id"].as_str().map(str::len), Some(24), "{order}");
    assert_eq!(order["userId"], user_id.as_str());
    assert_eq!(order["status"], "created");
    assert_eq!(order["version"], 0);
    assert_eq!(
        order["ticket"],
        json!({"id": ticket.id, "title": "concert", "price": 12.5, "version": 0})
    );
    let fields: Vec<&str> = order
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(fields.len(), 6, "unexpected fields: {fields:?}");

    let expires_at = expires_at(order);
    let window = chrono::Duration::seconds(15 * 60);
    assert!(
        expires_at >= before + window - chrono::Duration::milliseconds(1),
        "{expires_at}"
    );
    assert!(expires_at <= Utc::now() + window, "{expires_at}");

    let stored = orders.order(order["id"].as_str().unwrap()).await;
    assert_eq!(stored.status, OrderStatus::Created);
    assert_eq!(stored.expires_at(), expires_at);
}

#[tokio::test]
async fn publishes_order_created_with_the_order_and_the_ticket_price() {
    let orders = spawn_orders().await;
    let ticket = orders.seed_ticket("concert", 1999).await;
    let user_id = mongodb::bson::oid::ObjectId::new().to_hex();

    let reply = orders
        .order_ticket(&testkit::signin_as(&user_id, "buyer@test.com"), &ticket.id)
        .await;
    reply.assert_status(201);

    let published = only::<OrderCreated>(&orders.bus).await;
    assert_eq!(published.id, reply.body["id"].as_str().unwrap());
    assert_eq!(published.version, 0);
    assert_eq!(published.status, OrderStatus::Created);
    assert_eq!(published.user_id, user_id);
    assert_eq!(published.expires_at, expires_at(&reply.body));
    assert_eq!(published.ticket.id, ticket.id);
    assert_eq!(published.ticket.price.cents(), 1999);
}

#[tokio::test]
async fn requires_a_ticket_id() {
    let orders = spawn_orders().await;
    let cookie = testkit::signin();
    for body in [
        json!({}),
        json!({"ticketId": ""}),
        json!({"ticketId": "abc"}),
        json!({"ticketId": 12}),
        json!({"ticketId": null}),
        json!({"ticketId": "zzzzzzzzzzzzzzzzzzzzzzzz"}),
    ] {
        let reply = orders
            .app
            .post("/api/orders", Some(&cookie), body.clone())
            .await;
        assert_eq!(
            reply.body,
            json!({"errors":[{"message":"TicketId must be provided","field":"ticketId"}]}),
            "{body}"
        );
        reply.assert_status(400);
    }
    let malformed = orders
        .app
        .http
        .post(format!("{}/api/orders", orders.app.base_url))
        .header("cookie", &cookie)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    testkit::Reply::read(malformed).await.assert_status(400);
}

// --- GET /api/orders/:id (show) -------------------------------------------------

#[tokio::test]
async fn fetches_the_order() {
    let orders = spawn_orders().await;
    let ticket = orders.seed_ticket("concert", 2000).await;
    let user = testkit::signin();
    let created = orders.order_ticket(&user, &ticket.id).await;
    created.assert_status(201);
    let id = created.body["id"].as_str().unwrap();

    let reply = orders
        .app
        .get(&format!("/api/orders/{id}"), Some(&user))
        .await;

    reply.assert_status(200);
    assert_eq!(reply.body, created.body);
}

#[tokio::test]
async fn returns_401_when_fetching_another_users_order() {
    let orders = spawn_orders().await;
    let ticket = orders.seed_ticket("concert", 2000).await;
    let id = orders.create_order(&testkit::signin(), &ticket.id).await;

    orders
        .app
        .get(&format!("/api/orders/{id}"), Some(&testkit::signin()))
        .await
        .assert_error(401, "Not authorized");
}

#[tokio::test]
async fn returns_404_for_an_unknown_or_malformed_order_id() {
    let orders = spawn_orders().await;
    let user = testkit::signin();
    let unknown = mongodb::bson::oid::ObjectId::new().to_hex();
    for path in [
        format!("/api/orders/{unknown}"),
        "/api/orders/not-an-id".to_owned(),
    ] {
        orders
            .app
            .get(&path, Some(&user))
            .await
            .assert_error(404, "Not Found");
        orders
            .app
            .delete(&path, Some(&user))
            .await
            .assert_error(404, "Not Found");
    }
}

// --- GET /api/orders (index) ----------------------------------------------------

#[tokio::test]
async fn lists_only_the_callers_orders_newest_first_with_their_tickets() {
    let orders = spawn_orders().await;
    let one = orders.seed_ticket("one", 100).await;
    let two = orders.seed_ticket("two", 200).await;
    let three = orders.seed_ticket("three", 300).await;
    let user_one = testkit::signin();
    let user_two = testkit::signin();

    orders.create_order(&user_one, &one.id).await;
    let first = orders.create_order(&user_two, &two.id).await;
    let second = orders.create_order(&user_two, &three.id).await;

    let reply = orders.app.get("/api/orders", Some(&user_two)).await;

    reply.assert_status(200);
    let list = reply.body.as_array().expect("a list");
    assert_eq!(list.len(), 2, "{}", reply.text);
    assert_eq!(list[0]["id"], second.as_str());
    assert_eq!(list[1]["id"], first.as_str());
    assert_eq!(
        list[0]["ticket"],
        json!({"id": three.id, "title": "three", "price": 3, "version": 0})
    );
    assert_eq!(
        list[1]["ticket"],
        json!({"id": two.id, "title": "two", "price": 2, "version": 0})
    );

    let empty = orders
        .app
        .get("/api/orders", Some(&testkit::signin()))
        .await;
    empty.assert_status(200);
    assert_eq!(empty.body, json!([]));
}

#[tokio::test]
async fn lists_orders_with_the_tickets_latest_title_and_price() {
    let orders = spawn_orders().await;
    let ticket = orders.seed_ticket("concert", 1000).await;
    let user = testkit::signin();
    orders.create_order(&user, &ticket.id).await;

    orders
        .bus
        .publish(&support::ticket_updated(
            &ticket,
            1,
            "concert (moved)",
            1575,
        ))
        .await
        .unwrap();
    orders.wait_for_replica(&ticket.id, 1).await;

    let reply = orders.app.get("/api/orders", Some(&user)).await;
    assert_eq!(
        reply.body[0]["ticket"],
        json!({"id": ticket.id, "title": "concert (moved)", "price": 15.75, "version": 1})
    );
}

// --- DELETE /api/orders/:id (delete) --------------------------------------------

#[tokio::test]
async fn marks_an_order_as_cancelled() {
    let orders = spawn_orders().await;
    let ticket = orders.seed_ticket("concert", 2000).await;
    let user = testkit::signin();
    let id = orders.create_order(&user, &ticket.id).await;

    let reply = orders
        .app
        .delete(&format!("/api/orders/{id}"), Some(&user))
        .await;

    reply.assert_status(204);
    assert!(reply.text.is_empty());
    let shown = orders
        .app
        .get(&format!("/api/orders/{id}"), Some(&user))
        .await;
    assert_eq!(shown.body["status"], "cancelled");
    assert_eq!(shown.body["version"], 1);
}

#[tokio::test]
async fn publishes_order_cancelled() {
    let orders = spawn_orders().await;
    let ticket = orders.seed_ticket("concert", 2000).await;
    let user = testkit::signin();
    let id = orders.create_order(&user, &ticket.id).await;

    orders
        .app
        .delete(&format!("/api/orders/{id}"), Some(&user))
        .await
        .assert_status(204);

    let cancelled = only::<OrderCancelled>(&orders.bus).await;
    assert_eq!(
        cancelled,
        OrderCancelled {
            id: id.clone(),
            version: 1,
            ticket: common::events::TicketRef {
                id: ticket.id.clone()
            },
        }
    );
}

#[tokio::test]
async fn cancelling_a_cancelled_order_again_is_204_without_a_second_event() {
    let orders = spawn_orders().await;
    let ticket = orders.seed_ticket("concert", 2000).await;
    let user = testkit::signin();
    let id = orders.create_order(&user, &ticket.id).await;
    orders
        .app
        .delete(&format!("/api/orders/{id}"), Some(&user))
        .await
        .assert_status(204);
    testkit::wait_for_published::<OrderCancelled>(&orders.bus, 1).await;

    orders
        .app
        .delete(&format!("/api/orders/{id}"), Some(&user))
        .await
        .assert_status(204);

    assert_eq!(orders.order(&id).await.version, 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        testkit::published::<OrderCancelled>(&orders.bus)
            .await
            .len(),
        1
    );
}

#[tokio::test]
async fn returns_401_when_cancelling_another_users_order() {
    let orders = spawn_orders().await;
    let ticket = orders.seed_ticket("concert", 2000).await;
    let id = orders.create_order(&testkit::signin(), &ticket.id).await;

    orders
        .app
        .delete(&format!("/api/orders/{id}"), Some(&testkit::signin()))
        .await
        .assert_error(401, "Not authorized");
    assert_eq!(orders.order(&id).await.status, OrderStatus::Created);
}

#[tokio::test]
async fn refuses_to_cancel_a_completed_order() {
    let orders = spawn_orders().await;
    let ticket = orders.seed_ticket("concert", 2000).await;
    let user = testkit::signin();
    let id = orders.create_order(&user, &ticket.id).await;
    orders.pay(&id).await;

    orders
        .app
        .delete(&format!("/api/orders/{id}"), Some(&user))
        .await
        .assert_error(400, "Cannot cancel a completed order");
    assert_eq!(orders.order(&id).await.status, OrderStatus::Complete);
    assert!(
        testkit::published::<OrderCancelled>(&orders.bus)
            .await
            .is_empty()
    );
}

// --- authentication and probes ----------------------------------------------------

#[tokio::test]
async fn every_route_returns_401_when_not_signed_in() {
    let orders = spawn_orders().await;
    let ticket = orders.seed_ticket("concert", 2000).await;
    let id = orders.create_order(&testkit::signin(), &ticket.id).await;
    let path = format!("/api/orders/{id}");

    for cookie in [None, Some(testkit::expired_signin())] {
        let cookie = cookie.as_deref();
        orders
            .app
            .get("/api/orders", cookie)
            .await
            .assert_error(401, "Not authorized");
        orders
            .app
            .get(&path, cookie)
            .await
            .assert_error(401, "Not authorized");
        orders
            .app
            .delete(&path, cookie)
            .await
            .assert_error(401, "Not authorized");
        // Authentication comes before validation, as in the original.
        orders
            .app
            .post("/api/orders", cookie, json!({}))
            .await
            .assert_error(401, "Not authorized");
        orders
            .app
            .post("/api/orders", cookie, json!({"ticketId": ticket.id}))
            .await
            .assert_error(401, "Not authorized");
    }
    assert_eq!(orders.order(&id).await.status, OrderStatus::Created);
}

#[tokio::test]
async fn is_ready_when_mongo_and_nats_answer() {
    let orders = spawn_orders().await;
    orders.app.get("/healthz", None).await.assert_status(200);
    orders.app.get("/readyz", None).await.assert_status(200);
    orders
        .app
        .get("/api/orders/x/y", Some(&testkit::signin()))
        .await
        .assert_error(404, "Not Found");
}

// ---------------------------------------------------------------------------------

/// `expiresAt` of an order body, checked to be `toISOString()`-shaped.
fn expires_at(order: &Value) -> DateTime<Utc> {
    let text = order["expiresAt"].as_str().expect("expiresAt is a string");
    assert_eq!(text.len(), "2026-01-02T03:04:05.678Z".len(), "{text}");
    assert!(text.ends_with('Z') && text.as_bytes()[19] == b'.', "{text}");
    DateTime::parse_from_rfc3339(text)
        .expect("RFC 3339")
        .with_timezone(&Utc)
}

/// The one event of type `E` published so far (waiting for it).
async fn only<E: Event + std::fmt::Debug>(bus: &common::bus::Bus) -> E {
    let mut events = testkit::wait_for_published::<E>(bus, 1).await;
    assert_eq!(
        events.len(),
        1,
        "expected exactly one {}: {events:?}",
        E::SUBJECT
    );
    events.remove(0)
}
