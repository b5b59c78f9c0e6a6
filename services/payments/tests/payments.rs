//! Black-box tests of `POST /api/payments` against the real service, a real
//! NATS JetStream and MongoDB-wire server, and the Stripe fake
//! (`stripe-stateful-mock`). Orders arrive the way they do in the fleet: as
//! `order.created` / `order.cancelled` events on the service's own stream.

mod support;

use std::time::Duration;

use common::{events::PaymentCreated, money::Money};
use mongodb::bson::{Document, doc, oid::ObjectId};
use serde_json::json;
use support::{Harness, charges_for, stripe_get, user};

#[tokio::test]
async fn requires_a_signed_in_user() {
    let h = Harness::spawn().await;
    let reply = h
        .app
        .post(
            "/api/payments",
            None,
            json!({"token": "tok_visa", "orderId": ObjectId::new().to_hex()}),
        )
        .await;
    reply.assert_error(401, "Not authorized");
    let reply = h
        .app
        .post(
            "/api/payments",
            Some(&testkit::expired_signin()),
            json!({"token": "tok_visa", "orderId": ObjectId::new().to_hex()}),
        )
        .await;
    reply.assert_error(401, "Not authorized");
}

#[tokio::test]
async fn requires_a_token_and_a_valid_order_id() {
    let h = Harness::spawn().await;
    let (_, cookie) = user();
    let reply = h.app.post("/api/payments", Some(&cookie), json!({})).await;
    reply.assert_status(400);
    assert_eq!(
        reply.body,
        json!({"errors":[
            {"message":"Token must be provided","field":"token"},
            {"message":"OrderId must be provided","field":"orderId"}
        ]})
    );
    let reply = h
        .app
        .post(
            "/api/payments",
            Some(&cookie),
            json!({"token": "tok_visa", "orderId": "not-an-id"}),
        )
        .await;
    reply.assert_error(400, "OrderId must be provided");
    assert_eq!(reply.body["errors"][0]["field"], "orderId");
    let reply = h
        .app
        .post(
            "/api/payments",
            Some(&cookie),
            json!({"token": "", "orderId": ObjectId::new().to_hex()}),
        )
        .await;
    reply.assert_error(400, "Token must be provided");
    let reply = h
        .app
        .post_raw("/api/payments", "application/json", "{\"token\":")
        .await;
    reply.assert_status(401); // not signed in comes first
    let reply = h
        .app
        .http
        .post(format!("{}/api/payments", h.app.base_url))
        .header("cookie", &cookie)
        .header("content-type", "application/json")
        .body("{\"token\":")
        .send()
        .await
        .unwrap();
    let reply = testkit::Reply::read(reply).await;
    reply.assert_status(400);
    testkit::assert_error_shape(&reply.body);
}

#[tokio::test]
async fn returns_404_when_paying_for_an_order_that_does_not_exist() {
    let h = Harness::spawn().await;
    let (_, cookie) = user();
    h.pay(&cookie, "tok_visa", ObjectId::new())
        .await
        .assert_error(404, "Not Found");
}

#[tokio::test]
async fn returns_401_when_paying_for_someone_elses_order() {
    let h = Harness::spawn().await;
    let (owner, _) = user();
    let (_, stranger) = user();
    let order = h.order_created(&owner, Money::from_cents(2000)).await;
    h.pay(&stranger, "tok_visa", order)
        .await
        .assert_error(401, "Not authorized");
    assert!(charges_for(order).await.is_empty());
}

#[tokio::test]
async fn returns_400_when_paying_for_a_cancelled_order() {
    let h = Harness::spawn().await;
    let (buyer, cookie) = user();
    let order = h.order_created(&buyer, Money::from_cents(2000)).await;
    h.order_cancelled(order, 1).await;
    h.pay(&cookie, "tok_visa", order)
        .await
        .assert_error(400, "Cannot pay for a cancelled order");
    assert!(charges_for(order).await.is_empty());
    assert!(h.payments_of(order).await.is_empty());
}

#[tokio::test]
async fn returns_201_charges_the_exact_amount_stores_the_payment_and_publishes_payment_created() {
    let h = Harness::spawn().await;
    let (buyer, cookie) = user();
    // A price whose float form is inexact (0.1 + 0.2 style): 1234.57 is 123457 cents.
    let order = h.order_created(&buyer, Money::from_cents(123_457)).await;

    let reply = h.pay(&cookie, "tok_visa", order).await;
    reply.assert_status(201);
    let payment_id = reply.body["id"].as_str().expect("an id").to_owned();
    assert_eq!(
        reply.body.as_object().map(|o| o.len()),
        Some(1),
        "{}",
        reply.text
    );
    assert_eq!(payment_id.len(), 24);

    // The payment is stored.
    let stored = h.payments_of(order).await;
    assert_eq!(stored.len(), 1);
    let stripe_id = stored[0]
        .get_str("stripeId")
        .expect("a stripeId")
        .to_owned();
    assert_eq!(stored[0].get_object_id("_id").unwrap().to_hex(), payment_id);
    assert!(stripe_id.starts_with("ch_"), "{stripe_id}");

    // Stripe has the charge: the exact amount in cents, in USD, from the token.
    let charge = stripe_get(&format!("charges/{stripe_id}")).await;
    assert_eq!(charge["amount"], 123_457);
    assert_eq!(charge["currency"], "usd");
    assert_eq!(charge["paid"], true);
    assert_eq!(charge["metadata"]["orderId"], order.to_hex());
    assert_eq!(charges_for(order).await.len(), 1);

    // And the fleet is told.
    let published = testkit::wait_for_published::<PaymentCreated>(&h.bus, 1).await;
    assert_eq!(
        published,
        [PaymentCreated {
            id: payment_id,
            order_id: order.to_hex(),
            stripe_id,
        }]
    );
    // The relay empties the outbox once the stream has the event.
    let cleared = testkit::eventually(Duration::from_secs(10), || async {
        let stored = h.payments_of(order).await;
        stored[0]
            .get_array("outbox")
            .map_or(true, |o| o.is_empty())
            .then_some(())
    })
    .await;
    assert!(cleared.is_some(), "the outbox was not emptied");
}

#[tokio::test]
async fn a_declined_card_is_400_with_stripes_message_and_nothing_is_stored() {
    let h = Harness::spawn().await;
    let (buyer, cookie) = user();
    let order = h.order_created(&buyer, Money::from_cents(2000)).await;
    h.pay(&cookie, "tok_chargeDeclined", order)
        .await
        .assert_error(400, "Your card was declined.");
    assert!(h.payments_of(order).await.is_empty());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        testkit::published::<PaymentCreated>(&h.bus)
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn an_amount_stripe_refuses_is_400_with_stripes_message() {
    let h = Harness::spawn().await;
    let (buyer, cookie) = user();
    // Stripe's minimum charge is 50 cents.
    let order = h.order_created(&buyer, Money::from_cents(30)).await;
    h.pay(&cookie, "tok_visa", order)
        .await
        .assert_error(400, "Amount must be at least 50 cents");
    assert!(h.payments_of(order).await.is_empty());
}

#[tokio::test]
async fn a_declined_card_leaves_the_order_payable_with_another_card() {
    let h = Harness::spawn().await;
    let (buyer, cookie) = user();
    let order = h.order_created(&buyer, Money::from_cents(2000)).await;
    h.pay(&cookie, "tok_chargeDeclined", order)
        .await
        .assert_error(400, "Your card was declined.");
    h.pay(&cookie, "tok_chargeDeclined", order)
        .await
        .assert_error(400, "Your card was declined.");
    assert!(h.payments_of(order).await.is_empty());
    h.pay(&cookie, "tok_visa", order).await.assert_status(201);
    assert_eq!(h.payments_of(order).await.len(), 1);
    let charges = charges_for(order).await;
    let paid: Vec<_> = charges.iter().filter(|c| c["paid"] == true).collect();
    assert_eq!(paid.len(), 1, "exactly one successful charge: {charges:?}");
    assert_eq!(paid[0]["amount"], 2000);
}

#[tokio::test]
async fn an_already_paid_order_is_400_and_charged_once() {
    let h = Harness::spawn().await;
    let (buyer, cookie) = user();
    let order = h.order_created(&buyer, Money::from_cents(2000)).await;
    h.pay(&cookie, "tok_visa", order).await.assert_status(201);
    h.pay(&cookie, "tok_visa", order)
        .await
        .assert_error(400, "Order is already paid");
    h.pay(&cookie, "tok_mastercard", order)
        .await
        .assert_error(400, "Order is already paid");
    assert_eq!(charges_for(order).await.len(), 1);
    assert_eq!(h.payments_of(order).await.len(), 1);
}

#[tokio::test]
async fn concurrent_submits_for_one_order_charge_once_and_record_one_payment() {
    let h = Harness::spawn().await;
    let (buyer, cookie) = user();
    let order = h.order_created(&buyer, Money::from_cents(4999)).await;

    let replies =
        futures::future::join_all((0..6).map(|_| h.pay(&cookie, "tok_visa", order))).await;

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
        reply.assert_error(400, "Order is already paid");
    }
    let charges = charges_for(order).await;
    assert_eq!(charges.len(), 1, "{charges:?}");
    let stored = h.payments_of(order).await;
    assert_eq!(stored.len(), 1);
    assert_eq!(
        stored[0].get_str("stripeId").unwrap(),
        charges[0]["id"].as_str().unwrap()
    );
    let published = testkit::wait_for_published::<PaymentCreated>(&h.bus, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        testkit::published::<PaymentCreated>(&h.bus).await,
        published
    );
    assert_eq!(published.len(), 1);
}

#[tokio::test]
async fn stripe_unreachable_is_502_in_the_error_shape_and_nothing_is_stored() {
    // A port that was free a moment ago: nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut settings = support::settings();
    settings.stripe_api_base = Some(format!("http://{closed}"));
    let h = Harness::spawn_with(settings).await;
    let (buyer, cookie) = user();
    let order = h.order_created(&buyer, Money::from_cents(2000)).await;

    let reply = h.pay(&cookie, "tok_visa", order).await;
    reply.assert_error(
        502,
        "The payment provider is unavailable; please try again later",
    );
    assert!(h.payments_of(order).await.is_empty());
}

#[tokio::test]
async fn a_stripe_server_error_is_502_and_nothing_is_stored() {
    let h = Harness::spawn().await;
    let (buyer, cookie) = user();
    let order = h.order_created(&buyer, Money::from_cents(2000)).await;
    // The fake answers 500 `api_error` for this token.
    let reply = h.pay(&cookie, "tok_500", order).await;
    reply.assert_error(
        502,
        "The payment provider is unavailable; please try again later",
    );
    assert!(h.payments_of(order).await.is_empty());
}

#[tokio::test]
async fn a_payment_stored_before_a_crash_is_published_exactly_once_after_the_restart() {
    let mut settings = support::settings();
    settings.outbox_relay = false;
    let first = Harness::spawn_with(settings.clone()).await;
    let (buyer, cookie) = user();
    let order = first.order_created(&buyer, Money::from_cents(1500)).await;
    let reply = first.pay(&cookie, "tok_visa", order).await;
    reply.assert_status(201);
    let payment_id = reply.body["id"].as_str().unwrap().to_owned();

    // Stored with its event waiting in the outbox, but never published.
    let stored = first.payments_of(order).await;
    let outbox = stored[0].get_array("outbox").expect("an outbox");
    assert_eq!(outbox.len(), 1);
    assert_eq!(
        outbox[0]
            .as_document()
            .and_then(|e| e.get_str("subject").ok()),
        Some("payment.created")
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        testkit::published::<PaymentCreated>(&first.bus)
            .await
            .is_empty()
    );
    let stripe_id = stored[0].get_str("stripeId").unwrap().to_owned();
    drop(first); // "crash": the process is gone, the document stays

    settings.outbox_relay = true;
    let second = Harness::spawn_with(settings).await;
    let published = testkit::wait_for_published::<PaymentCreated>(&second.bus, 1).await;
    assert_eq!(
        published,
        [PaymentCreated {
            id: payment_id,
            order_id: order.to_hex(),
            stripe_id,
        }]
    );
    // The outbox is emptied, and nothing is published a second time.
    let cleared = testkit::eventually(Duration::from_secs(10), || async {
        let stored = second.payments_of(order).await;
        stored[0]
            .get_array("outbox")
            .map_or(true, |o| o.is_empty())
            .then_some(())
    })
    .await;
    assert!(cleared.is_some(), "the outbox was not emptied");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        testkit::published::<PaymentCreated>(&second.bus)
            .await
            .len(),
        1
    );
}

#[tokio::test]
async fn the_order_id_index_refuses_a_second_payment_for_an_order() {
    let h = Harness::spawn().await;
    let payments = h.db.collection::<Document>("payments");
    let order = ObjectId::new();
    payments
        .insert_one(doc! { "_id": ObjectId::new(), "orderId": order, "stripeId": "ch_1" })
        .await
        .unwrap();
    let second = payments
        .insert_one(doc! { "_id": ObjectId::new(), "orderId": order, "stripeId": "ch_2" })
        .await;
    assert!(second.is_err_and(|e| common::mongo::is_duplicate_key(&e)));
}

#[tokio::test]
async fn probes_answer() {
    let h = Harness::spawn().await;
    h.app.get("/healthz", None).await.assert_status(200);
    h.app.get("/readyz", None).await.assert_status(200);
    h.app
        .get("/api/payments", None)
        .await
        .assert_error(404, "Not Found");
}
