//! Black-box tests of `POST` / `GET /api/payments` against the real service,
//! a real NATS JetStream and MongoDB-wire server, and the devstack Stripe
//! fake (which honours `Idempotency-Key`). Orders arrive the way they do in
//! the fleet: as `order.created` / `order.cancelled` events on the service's
//! own stream; what the browser does (confirm with Stripe.js) is done at the
//! fake, and Stripe's webhooks are delivered signed, as Stripe sends them.

mod support;

use std::time::Duration;

use common::{events::PaymentCreated, money::Money};
use mongodb::bson::{Document, doc, oid::ObjectId};
use serde_json::json;
use support::{Harness, user};

const UNAVAILABLE: &str = "The payment provider is unavailable; please try again later";

/// The payment intent id of an answer of `POST /api/payments`.
fn intent_of(reply: &testkit::Reply) -> String {
    reply.body["paymentIntentId"]
        .as_str()
        .unwrap_or_else(|| panic!("no paymentIntentId in {}", reply.text))
        .to_owned()
}

#[tokio::test]
async fn requires_a_signed_in_user() {
    let h = Harness::spawn().await;
    for cookie in [None, Some(testkit::expired_signin())] {
        h.app
            .post(
                "/api/payments",
                cookie.as_deref(),
                json!({"orderId": ObjectId::new().to_hex()}),
            )
            .await
            .assert_error(401, "Not authorized");
    }
    h.app
        .get(
            &format!("/api/payments?orderId={}", ObjectId::new().to_hex()),
            None,
        )
        .await
        .assert_error(401, "Not authorized");
}

#[tokio::test]
async fn accepts_a_session_cookie_forged_like_the_originals_tests() {
    let h = Harness::spawn().await;
    let cookie = testkit::signin_like_the_original();
    // Past the session check: an unknown order is a 404, not a 401.
    h.open(&cookie, ObjectId::new())
        .await
        .assert_error(404, "Not Found");
    let reply = h
        .app
        .get(
            &format!("/api/payments?orderId={}", ObjectId::new().to_hex()),
            Some(&cookie),
        )
        .await;
    reply.assert_status(200);
    assert_eq!(reply.body, json!([]));
}

#[tokio::test]
async fn requires_a_valid_order_id_and_a_token_only_if_one_is_given() {
    let h = Harness::spawn().await;
    let (_, cookie) = user();
    let reply = h.app.post("/api/payments", Some(&cookie), json!({})).await;
    reply.assert_status(400);
    assert_eq!(
        reply.body,
        json!({"errors":[{"message":"OrderId must be provided","field":"orderId"}]})
    );
    let reply = h
        .app
        .post(
            "/api/payments",
            Some(&cookie),
            json!({"token": "", "orderId": "not-an-id"}),
        )
        .await;
    assert_eq!(
        reply.body,
        json!({"errors":[
            {"message":"Token must be provided","field":"token"},
            {"message":"OrderId must be provided","field":"orderId"}
        ]})
    );
    let reply = h
        .app
        .http
        .post(format!("{}/api/payments", h.app.base_url))
        .header("cookie", &cookie)
        .header("content-type", "application/json")
        .body("{\"orderId\":")
        .send()
        .await
        .unwrap();
    let reply = testkit::Reply::read(reply).await;
    reply.assert_status(400);
    testkit::assert_error_shape(&reply.body);
}

#[tokio::test]
async fn returns_404_401_and_400_before_asking_stripe() {
    let h = Harness::spawn().await;
    let (owner, cookie) = user();
    let (_, stranger) = user();
    h.open(&cookie, ObjectId::new())
        .await
        .assert_error(404, "Not Found");
    let order = h.order_created(&owner, Money::from_cents(2000)).await;
    h.open(&stranger, order)
        .await
        .assert_error(401, "Not authorized");
    let cancelled = h.order_created(&owner, Money::from_cents(2000)).await;
    h.order_cancelled(cancelled, 1).await;
    h.open(&cookie, cancelled)
        .await
        .assert_error(400, "Cannot pay for a cancelled order");
    h.pay(&cookie, "tok_visa", cancelled)
        .await
        .assert_error(400, "Cannot pay for a cancelled order");
    let stripe = h.stripe();
    assert!(stripe.intents_for(order).await.is_empty());
    assert!(stripe.intents_for(cancelled).await.is_empty());
}

#[tokio::test]
async fn creates_the_orders_one_intent_for_the_exact_amount_and_returns_it_again() {
    let h = Harness::spawn().await;
    let (buyer, cookie) = user();
    // A price whose float form is inexact: 1234.57 is 123457 cents.
    let order = h.order_created(&buyer, Money::from_cents(123_457)).await;

    let first = h.open(&cookie, order).await;
    first.assert_status(201);
    let intent_id = intent_of(&first);
    assert_eq!(first.body["orderId"], order.to_hex());
    assert_eq!(first.body["status"], "pending");
    assert_eq!(first.body["amount"], 123_457);
    assert!(intent_id.starts_with("pi_"), "{intent_id}");
    let secret = first.body["clientSecret"]
        .as_str()
        .expect("a client secret");
    assert!(secret.starts_with(&format!("{intent_id}_secret_")));

    let intent = h
        .stripe()
        .get(&format!("payment_intents/{intent_id}"))
        .await;
    assert_eq!(intent["amount"], 123_457);
    assert_eq!(intent["currency"], "usd");
    assert_eq!(intent["metadata"]["orderId"], order.to_hex());
    assert_eq!(intent["client_secret"], secret);

    let again = h.open(&cookie, order).await;
    again.assert_status(200);
    assert_eq!(again.body, first.body);
    assert_eq!(h.stripe().intents_for(order).await.len(), 1);

    let listed = h
        .app
        .get(&format!("/api/payments?orderId={order}"), Some(&cookie))
        .await;
    listed.assert_status(200);
    assert_eq!(listed.body, json!([first.body]));
    // Someone else sees nothing of it.
    let (_, stranger) = user();
    let theirs = h
        .app
        .get(&format!("/api/payments?orderId={order}"), Some(&stranger))
        .await;
    assert_eq!(theirs.body, json!([]));
}

#[tokio::test]
async fn twenty_concurrent_requests_across_two_replicas_make_one_intent() {
    let settings = support::settings();
    let a = Harness::spawn_with(settings.clone()).await;
    let b = Harness::spawn_with(settings).await;
    let (buyer, cookie) = user();
    let order = a.order_created(&buyer, Money::from_cents(4999)).await;

    let replies = futures::future::join_all((0..20).map(|i| {
        let replica = if i % 2 == 0 { &a } else { &b };
        replica.open(&cookie, order)
    }))
    .await;

    let statuses: Vec<u16> = replies.iter().map(|r| r.status).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 201),
        "{statuses:?}"
    );
    let intents: std::collections::HashSet<String> = replies.iter().map(intent_of).collect();
    assert_eq!(intents.len(), 1, "{intents:?}");
    let at_stripe = a.stripe().intents_for(order).await;
    assert_eq!(at_stripe.len(), 1, "{at_stripe:?}");
    assert_eq!(
        Some(at_stripe[0]["id"].as_str().unwrap()),
        intents.iter().next().map(String::as_str)
    );
    assert_eq!(a.payments_of(order).await.len(), 1);
}

#[tokio::test]
async fn a_payment_confirmed_in_the_browser_succeeds_by_webhook_and_publishes_payment_created() {
    let h = Harness::spawn().await;
    let (buyer, cookie) = user();
    let order = h.order_created(&buyer, Money::from_cents(2500)).await;
    let intent_id = intent_of(&h.open(&cookie, order).await);

    let stripe = h.stripe();
    let (status, confirmed) = stripe.confirm(&intent_id, "pm_card_visa").await;
    assert_eq!(
        (status, confirmed["status"].as_str()),
        (200, Some("succeeded"))
    );
    let events = stripe.events("payment_intent.succeeded", &intent_id).await;
    assert_eq!(events.len(), 1);
    h.deliver(&events[0].to_string()).await.assert_status(200);

    let stored = h.wait_for_payment(order, "succeeded").await;
    let payment_id = stored.get_object_id("_id").unwrap().to_hex();
    let published = testkit::wait_for_published::<PaymentCreated>(&h.bus, 1).await;
    assert_eq!(
        published,
        [PaymentCreated {
            id: payment_id.clone(),
            order_id: order.to_hex(),
            stripe_id: intent_id.clone(),
        }]
    );
    let listed = h
        .app
        .get(&format!("/api/payments?orderId={order}"), Some(&cookie))
        .await;
    assert_eq!(
        listed.body,
        json!([{"id": payment_id, "orderId": order.to_hex(), "status": "succeeded", "amount": 2500, "paymentIntentId": intent_id}])
    );
    h.open(&cookie, order)
        .await
        .assert_error(400, "Order is already paid");
    h.pay(&cookie, "tok_visa", order)
        .await
        .assert_error(400, "Order is already paid");
}

#[tokio::test]
async fn the_same_webhook_five_times_and_out_of_order_publishes_payment_created_once() {
    let h = Harness::spawn().await;
    let (buyer, cookie) = user();
    let order = h.order_created(&buyer, Money::from_cents(1800)).await;
    let intent_id = intent_of(&h.open(&cookie, order).await);
    let stripe = h.stripe();
    // A declined attempt, then a good card.
    let (status, _) = stripe.confirm(&intent_id, "pm_card_chargeDeclined").await;
    assert_eq!(status, 402);
    let (status, _) = stripe.confirm(&intent_id, "pm_card_visa").await;
    assert_eq!(status, 200);
    let created = stripe.events("payment_intent.created", &intent_id).await;
    let failed = stripe
        .events("payment_intent.payment_failed", &intent_id)
        .await;
    let succeeded = stripe.events("payment_intent.succeeded", &intent_id).await;
    let (created, failed, succeeded) = (
        created[0].to_string(),
        failed[0].to_string(),
        succeeded[0].to_string(),
    );

    // Newest first, then the old ones, then the success again, at once.
    h.deliver(&succeeded).await.assert_status(200);
    h.deliver(&failed).await.assert_status(200);
    h.deliver(&created).await.assert_status(200);
    let replies = futures::future::join_all((0..4).map(|_| h.deliver(&succeeded))).await;
    for reply in replies {
        reply.assert_status(200);
    }

    let stored = h.wait_for_payment(order, "succeeded").await;
    assert!(stored.get_str("lastError").is_err(), "{stored:?}");
    testkit::wait_for_published::<PaymentCreated>(&h.bus, 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(testkit::published::<PaymentCreated>(&h.bus).await.len(), 1);
}

#[tokio::test]
async fn a_forged_stale_or_unsigned_webhook_is_400_and_changes_nothing() {
    let h = Harness::spawn().await;
    let (buyer, cookie) = user();
    let order = h.order_created(&buyer, Money::from_cents(1800)).await;
    let intent_id = intent_of(&h.open(&cookie, order).await);
    let stripe = h.stripe();
    stripe.confirm(&intent_id, "pm_card_visa").await;
    let event = stripe.events("payment_intent.succeeded", &intent_id).await[0].to_string();
    let now = chrono::Utc::now().timestamp();
    let sign = |secret: &str, at: i64, body: &str| {
        devstack::stripe_fake::signature_header(secret, at, body.as_bytes())
    };

    let tampered = event.replace("\"amount\":1800", "\"amount\":1");
    assert_ne!(tampered, event);
    let refused = [
        h.webhook(&event, None).await,
        h.webhook(&event, Some("garbage")).await,
        h.webhook(&event, Some(&sign("whsec_someone_else", now, &event)))
            .await,
        h.webhook(
            &event,
            Some(&sign(support::WEBHOOK_SECRET, now - 301, &event)),
        )
        .await,
        h.webhook(&tampered, Some(&sign(support::WEBHOOK_SECRET, now, &event)))
            .await,
        h.deliver("{\"not\":\"an event\"}").await,
        h.deliver("[]").await,
    ];
    for reply in &refused {
        reply.assert_status(400);
        testkit::assert_error_shape(&reply.body);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        h.payment_of(order).await.unwrap().get_str("status"),
        Ok("pending")
    );
    assert!(
        testkit::published::<PaymentCreated>(&h.bus)
            .await
            .is_empty()
    );
    let seen =
        h.db.collection::<Document>("stripe_events")
            .count_documents(doc! {})
            .await
            .unwrap();
    assert_eq!(seen, 0);
    // The genuine delivery still works afterwards.
    h.deliver(&event).await.assert_status(200);
    h.wait_for_payment(order, "succeeded").await;
}

#[tokio::test]
async fn money_that_succeeds_after_the_order_expired_is_refunded_and_the_order_stays_cancelled() {
    let h = Harness::spawn().await;
    let (buyer, cookie) = user();
    let order = h.order_created(&buyer, Money::from_cents(3000)).await;
    let intent_id = intent_of(&h.open(&cookie, order).await);
    let stripe = h.stripe();
    // The buyer's bank answered at the last second; the webhook is late.
    stripe.confirm(&intent_id, "pm_card_visa").await;
    h.order_cancelled(order, 1).await;

    let refunded = h.wait_for_payment(order, "refunded").await;
    let refunds = stripe.refunds_of(&intent_id).await;
    assert_eq!(refunds.len(), 1, "{refunds:?}");
    assert_eq!(refunds[0]["amount"], 3000);
    assert_eq!(refunded.get_str("refundId").ok(), refunds[0]["id"].as_str());

    // The late webhook changes nothing.
    let event = stripe.events("payment_intent.succeeded", &intent_id).await[0].to_string();
    h.deliver(&event).await.assert_status(200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        h.payment_of(order).await.unwrap().get_str("status"),
        Ok("refunded")
    );
    assert_eq!(stripe.refunds_of(&intent_id).await.len(), 1);
    assert!(
        testkit::published::<PaymentCreated>(&h.bus)
            .await
            .is_empty()
    );
    let listed = h
        .app
        .get(&format!("/api/payments?orderId={order}"), Some(&cookie))
        .await;
    assert_eq!(listed.body[0]["status"], "refunded");
    assert!(listed.body[0].get("clientSecret").is_none());
}

#[tokio::test]
async fn a_webhook_of_success_arriving_after_the_cancel_refunds_the_money() {
    let h = Harness::spawn().await;
    let (buyer, cookie) = user();
    let order = h.order_created(&buyer, Money::from_cents(3000)).await;
    let intent_id = intent_of(&h.open(&cookie, order).await);
    let stripe = h.stripe();
    stripe.confirm(&intent_id, "pm_card_visa").await;
    // The replica learns of the cancel first (the listener is not told here,
    // as if its close had not run yet)…
    payments::store::Orders::new(&h.db)
        .cancel(order, 1)
        .await
        .unwrap();
    // …then the success arrives.
    let event = stripe.events("payment_intent.succeeded", &intent_id).await[0].to_string();
    h.deliver(&event).await.assert_status(200);
    h.wait_for_payment(order, "refunded").await;
    assert_eq!(stripe.refunds_of(&intent_id).await.len(), 1);
    assert!(
        testkit::published::<PaymentCreated>(&h.bus)
            .await
            .is_empty()
    );
}

/// A buyer's order of `cents` whose intent waits for 3-D Secure: the
/// buyer's cookie, the order and the intent.
async fn in_3d_secure(h: &Harness, cents: i64) -> (String, ObjectId, String) {
    let (buyer, cookie) = user();
    let order = h.order_created(&buyer, Money::from_cents(cents)).await;
    let intent_id = intent_of(&h.open(&cookie, order).await);
    let (_, confirming) = h
        .stripe()
        .confirm(&intent_id, "pm_card_threeDSecure2Required")
        .await;
    assert_eq!(confirming["status"], "requires_action");
    (cookie, order, intent_id)
}

#[tokio::test]
async fn cancelling_the_order_cancels_its_intent_so_it_cannot_be_paid_afterwards() {
    let h = Harness::spawn().await;
    // The buyer is in 3-D Secure when the window runs out.
    let (cookie, order, intent_id) = in_3d_secure(&h, 3000).await;
    let stripe = h.stripe();
    h.order_cancelled(order, 1).await;

    h.wait_for_payment(order, "cancelled").await;
    let intent = stripe.get(&format!("payment_intents/{intent_id}")).await;
    assert_eq!(intent["status"], "canceled");
    // Finishing 3-D Secure now takes no money.
    let (status, _) = stripe
        .post(
            &format!("../_fake/payment_intents/{intent_id}/authenticate"),
            &[("result", "succeed")],
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(
        stripe.get(&format!("payment_intents/{intent_id}")).await["status"],
        "canceled"
    );
    h.open(&cookie, order)
        .await
        .assert_error(400, "Cannot pay for a cancelled order");
    assert_eq!(stripe.intents_for(order).await.len(), 1);
}

#[tokio::test]
async fn the_sweep_leaves_alone_a_cancel_still_on_its_way_so_money_that_lands_first_is_refunded() {
    let h = Harness::spawn().await;
    let (_, order, intent_id) = in_3d_secure(&h, 1250).await;
    let stripe = h.stripe();
    // The cancel sent when the order is cancelled reaches Stripe only after
    // the buyer's bank said yes; the sweep (every 5 s) runs meanwhile and
    // must not send a cancel of its own past it.
    stripe
        .hold_before(&format!("/v1/payment_intents/{intent_id}/cancel"), 9)
        .await;
    h.order_cancelled(order, 1).await;
    h.wait_for_payment(order, "cancelling").await;
    tokio::time::sleep(payments::settle::SWEEP_EVERY + std::time::Duration::from_secs(1)).await;
    let (status, _) = stripe
        .post(
            &format!("../_fake/payment_intents/{intent_id}/authenticate"),
            &[("result", "succeed")],
        )
        .await;
    assert_eq!(status, 200, "the intent was cancelled under the buyer");

    h.wait_for_payment(order, "refunded").await;
    let refunds = stripe.refunds_of(&intent_id).await;
    assert_eq!(refunds.len(), 1);
    assert_eq!(refunds[0]["amount"], 1250);
}

#[tokio::test]
async fn the_legacy_token_body_confirms_the_intent_and_is_201() {
    let h = Harness::spawn().await;
    let (buyer, cookie) = user();
    let order = h.order_created(&buyer, Money::from_cents(2000)).await;
    let reply = h.pay(&cookie, "tok_visa", order).await;
    reply.assert_status(201);
    let payment_id = reply.body["id"].as_str().expect("an id").to_owned();
    assert_eq!(payment_id.len(), 24);
    assert_eq!(reply.body["status"], "succeeded");
    let intent_id = intent_of(&reply);
    let intent = h
        .stripe()
        .get(&format!("payment_intents/{intent_id}"))
        .await;
    assert_eq!(
        (intent["status"].as_str(), intent["amount"].as_i64()),
        (Some("succeeded"), Some(2000))
    );

    let published = testkit::wait_for_published::<PaymentCreated>(&h.bus, 1).await;
    assert_eq!(
        published,
        [PaymentCreated {
            id: payment_id,
            order_id: order.to_hex(),
            stripe_id: intent_id.clone(),
        }]
    );
    // Stripe's webhook of the same success is a duplicate.
    let event = h
        .stripe()
        .events("payment_intent.succeeded", &intent_id)
        .await[0]
        .to_string();
    h.deliver(&event).await.assert_status(200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(testkit::published::<PaymentCreated>(&h.bus).await.len(), 1);
    h.pay(&cookie, "tok_visa", order)
        .await
        .assert_error(400, "Order is already paid");
}

#[tokio::test]
async fn a_declined_legacy_card_is_400_with_stripes_message_and_the_order_stays_payable() {
    let h = Harness::spawn().await;
    let (buyer, cookie) = user();
    let order = h.order_created(&buyer, Money::from_cents(2000)).await;
    for _ in 0..2 {
        h.pay(&cookie, "tok_chargeDeclined", order)
            .await
            .assert_error(400, "Your card was declined.");
    }
    h.pay(&cookie, "tok_threeDSecure2Required", order)
        .await
        .assert_error(
            400,
            "This card needs 3-D Secure authentication; please pay on the order page",
        );
    assert!(
        testkit::published::<PaymentCreated>(&h.bus)
            .await
            .is_empty()
    );
    h.pay(&cookie, "tok_visa", order).await.assert_status(201);
    let intents = h.stripe().intents_for(order).await;
    assert_eq!(intents.len(), 1);
    assert_eq!(intents[0]["status"], "succeeded");
    assert_eq!(h.payments_of(order).await.len(), 1);
}

#[tokio::test]
async fn concurrent_legacy_submits_for_one_order_pay_once() {
    let h = Harness::spawn().await;
    let (buyer, cookie) = user();
    let order = h.order_created(&buyer, Money::from_cents(4999)).await;

    let replies =
        futures::future::join_all((0..6).map(|_| h.pay(&cookie, "tok_visa", order))).await;

    let paid: std::collections::HashSet<String> = replies
        .iter()
        .filter(|r| r.status == 201)
        .map(|r| r.body["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        paid.len(),
        1,
        "one payment: {:?}",
        replies.iter().map(|r| &r.text).collect::<Vec<_>>()
    );
    for reply in replies.iter().filter(|r| r.status != 201) {
        reply.assert_error(400, "Order is already paid");
    }
    // A submit that lost the race never refunds the winner's money.
    h.stripe().assert_paid_once_without_refund(order).await;
    testkit::wait_for_published::<PaymentCreated>(&h.bus, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(testkit::published::<PaymentCreated>(&h.bus).await.len(), 1);
}

#[tokio::test]
async fn a_submit_whose_intent_comes_back_after_another_paid_is_told_so_and_refunds_nothing() {
    let h = Harness::spawn().await;
    let (buyer, cookie) = user();
    let order = h.order_created(&buyer, Money::from_cents(4200)).await;
    // The first submit's request for the intent reaches Stripe only after the
    // second submit has created, confirmed and recorded it.
    h.stripe().hold_before("/v1/payment_intents", 2).await;
    let late = h.pay(&cookie, "tok_visa", order);
    let early = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        h.pay(&cookie, "tok_visa", order).await
    };
    let (late, early) = futures::join!(late, early);

    early.assert_status(201);
    late.assert_error(400, "Order is already paid");
    h.stripe().assert_paid_once_without_refund(order).await;
    assert_eq!(
        h.payment_of(order).await.unwrap().get_str("status"),
        Ok("succeeded")
    );
}

#[tokio::test]
async fn an_amount_stripe_refuses_is_400_with_stripes_message() {
    let h = Harness::spawn().await;
    let (buyer, cookie) = user();
    // Stripe's minimum charge is 50 cents.
    let order = h.order_created(&buyer, Money::from_cents(30)).await;
    h.open(&cookie, order)
        .await
        .assert_error(400, "Amount must be at least $0.50 usd");
}

#[tokio::test]
async fn stripe_unreachable_is_502_and_a_retry_later_pays_without_a_second_intent() {
    // A Stripe of this test's own, to take down and bring back.
    let mut stripe = devstack::StripeFake::start(0).await.unwrap();
    let mut settings = support::settings();
    settings.stripe_api_base = Some(stripe.base_url());
    let h = Harness::spawn_with(settings).await;
    let (buyer, cookie) = user();
    let order = h.order_created(&buyer, Money::from_cents(2000)).await;

    stripe.stop().await;
    h.open(&cookie, order).await.assert_error(502, UNAVAILABLE);
    h.pay(&cookie, "tok_visa", order)
        .await
        .assert_error(502, UNAVAILABLE);
    let stored = h.payment_of(order).await.expect("the payment is opened");
    assert_eq!(stored.get_str("status"), Ok("pending"));

    stripe.start_again().await.unwrap();
    let opened = h.open(&cookie, order).await;
    opened.assert_status(201);
    let paid = h.pay(&cookie, "tok_visa", order).await;
    paid.assert_status(201);
    assert_eq!(intent_of(&paid), intent_of(&opened));
    let account = support::StripeAccount {
        key: h.settings.stripe_key.expose().to_owned(),
    };
    let intents: Vec<_> = reqwest::Client::new()
        .get(format!("{}/v1/payment_intents", stripe.base_url()))
        .bearer_auth(&account.key)
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap()["data"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(intents.len(), 1, "{intents:?}");
    assert_eq!(intents[0]["status"], "succeeded");
}

#[tokio::test]
async fn a_payment_that_succeeded_before_a_crash_is_published_exactly_once_after_the_restart() {
    let mut settings = support::settings();
    settings.outbox_relay = false;
    let first = Harness::spawn_with(settings.clone()).await;
    let (buyer, cookie) = user();
    let order = first.order_created(&buyer, Money::from_cents(1500)).await;
    let reply = first.pay(&cookie, "tok_visa", order).await;
    reply.assert_status(201);
    let payment_id = reply.body["id"].as_str().unwrap().to_owned();
    let intent_id = intent_of(&reply);

    // Stored with its event waiting in the outbox, but never published.
    let stored = first.payment_of(order).await.unwrap();
    let outbox = stored.get_array("outbox").expect("an outbox");
    assert_eq!(outbox.len(), 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        testkit::published::<PaymentCreated>(&first.bus)
            .await
            .is_empty()
    );
    drop(first); // "crash": the process is gone, the document stays

    settings.outbox_relay = true;
    let second = Harness::spawn_with(settings).await;
    let published = testkit::wait_for_published::<PaymentCreated>(&second.bus, 1).await;
    assert_eq!(
        published,
        [PaymentCreated {
            id: payment_id,
            order_id: order.to_hex(),
            stripe_id: intent_id,
        }]
    );
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
        .insert_one(doc! { "_id": ObjectId::new(), "orderId": order, "status": "pending" })
        .await
        .unwrap();
    let second = payments
        .insert_one(doc! { "_id": ObjectId::new(), "orderId": order, "status": "pending" })
        .await;
    assert!(second.is_err_and(|e| common::mongo::is_duplicate_key(&e)));
}

#[tokio::test]
async fn probes_answer() {
    let h = Harness::spawn().await;
    h.app.get("/healthz", None).await.assert_status(200);
    h.app.get("/readyz", None).await.assert_status(200);
    h.app
        .get("/api/payments/nothing-here", None)
        .await
        .assert_error(404, "Not Found");
}
