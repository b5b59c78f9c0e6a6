//! Payments killed at the two moments that matter for money, on the real
//! fleet behind the ingress, with the Stripe fake sending its signed webhooks
//! to the ingress:
//!
//! - between Stripe's answer and our write: the fake creates the intent but
//!   holds its answer back (`/_fake/hold`) while payments is `kill -9`ed;
//!   after the restart the buyer's retry finds the same intent (same
//!   idempotency key) — one intent, then paid once;
//! - between a webhook's receipt and its ack: payments is `kill -9`ed while
//!   the fake delivers `payment_intent.succeeded` (the delivery gets no 2xx);
//!   Stripe's retry after the restart completes the order — once;
//! - in the middle of a webhook's handling: the money of an order the buyer
//!   cancelled lands late, payments receives `payment_intent.succeeded`,
//!   asks Stripe for the refund, and is `kill -9`ed while Stripe's answer is
//!   held back (refunded at Stripe, not yet recorded, the delivery not
//!   acked); after the restart the refund is recorded — and made once.
//!
//! No payment lost, none doubled, no refund for a paid order, every refund
//! exactly once.

use std::time::Duration;

use devstack::Stack;
use fault_tests::{Client, User};
use reqwest::Method;
use serde_json::{Value, json};

const STRIPE_KEY: &str = devstack::fleet::FAKE_STRIPE_KEY;

async fn stripe(stack: &Stack, method: Method, path: &str, form: &[(&str, &str)]) -> Value {
    let base = stack.infra().stripe_api_base().expect("the Stripe fake");
    let request = reqwest::Client::new()
        .request(method, format!("{base}/{path}"))
        .bearer_auth(STRIPE_KEY);
    let request = if form.is_empty() {
        request
    } else {
        request.form(form)
    };
    request
        .send()
        .await
        .expect("the Stripe fake answers")
        .json()
        .await
        .expect("JSON from the Stripe fake")
}

async fn intents_for(stack: &Stack, order_id: &str) -> Vec<Value> {
    stripe(stack, Method::GET, "v1/payment_intents", &[]).await["data"]
        .as_array()
        .expect("a list")
        .iter()
        .filter(|i| i["metadata"]["orderId"] == order_id)
        .cloned()
        .collect()
}

/// A listed ticket and a buyer's order of it, known to payments.
async fn an_order(client: &Client, seller: &User, buyer: &User) -> String {
    let ticket = client
        .send_until_available(
            Method::POST,
            "/api/tickets",
            Some(seller),
            Some(json!({"title": "Fault concert", "price": 25})),
            &mut 0,
        )
        .await
        .expect("tickets answers");
    let ticket_id = ticket.body["id"].as_str().expect("a ticket").to_owned();
    let order_id = loop {
        let order = client
            .send(
                Method::POST,
                "/api/orders",
                Some(buyer),
                Some(json!({"ticketId": ticket_id})),
            )
            .await
            .expect("orders answers");
        if order.status == 201 {
            break order.body["id"].as_str().expect("an order").to_owned();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Payments learns of the order from order.created, within milliseconds;
    // a request before that would be a 404 that never reaches Stripe.
    tokio::time::sleep(Duration::from_secs(2)).await;
    order_id
}

async fn order_status(client: &Client, buyer: &User, order_id: &str) -> String {
    let order = client
        .send_until_available(
            Method::GET,
            &format!("/api/orders/{order_id}"),
            Some(buyer),
            None,
            &mut 0,
        )
        .await
        .expect("orders answers");
    order.body["status"].as_str().unwrap_or_default().to_owned()
}

async fn wait_complete(client: &Client, buyer: &User, order_id: &str) {
    for _ in 0..300 {
        if order_status(client, buyer, order_id).await == "complete" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("order {order_id} never completed");
}

/// `kill -9` payments, then start it again.
async fn kill_and_restart_payments(stack: &mut Stack) {
    stack
        .fleet_mut()
        .kill_service("payments")
        .await
        .expect("kill -9");
    stack
        .fleet_mut()
        .start_service("payments")
        .await
        .expect("payments restarts");
}

/// `POST /api/payments {orderId}` until payments knows the order: the intent.
async fn open(client: &Client, buyer: &User, order_id: &str) -> Value {
    for _ in 0..200 {
        let reply = client
            .send(
                Method::POST,
                "/api/payments",
                Some(buyer),
                Some(json!({"orderId": order_id})),
            )
            .await;
        match reply {
            Ok(reply) if reply.status == 200 || reply.status == 201 => return reply.body,
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    panic!("payments never opened a payment for {order_id}");
}

/// The buyer's bank says yes: `intent` confirmed at Stripe with a card
/// that succeeds.
async fn confirm_at_stripe(stack: &Stack, intent: &str) {
    let path = format!("v1/payment_intents/{intent}/confirm");
    let confirmed = stripe(
        stack,
        Method::POST,
        &path,
        &[("payment_method", "pm_card_visa")],
    )
    .await;
    assert_eq!(confirmed["status"], "succeeded");
}

/// Makes the Stripe fake hold back `method path` for `seconds` (its answer,
/// or with `before` the request itself).
async fn hold(stack: &Stack, method: &str, path: &str, seconds: &str, before: bool) {
    let mut form = vec![("method", method), ("path", path), ("seconds", seconds)];
    if before {
        form.push(("when", "before"));
    }
    stripe(stack, Method::POST, "_fake/hold", &form).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_killed_around_stripe_and_webhooks_loses_and_doubles_nothing() {
    let mut stack = Stack::start(&["auth", "tickets", "orders", "payments"], &[])
        .await
        .unwrap_or_else(|error| panic!("the fleet did not start: {error:#}"));
    let client = Client::new(stack.base_url());
    let run = std::process::id();
    let seller = client.signup(&format!("seller-{run}@payfaults.test")).await;
    let buyer = client.signup(&format!("buyer-{run}@payfaults.test")).await;

    let legacy_order = an_order(&client, &seller, &buyer).await;
    // Let payments replicate the order before holding Stripe's answers.
    let first = open(&client, &buyer, &legacy_order).await;
    assert_eq!(
        first["paymentIntentId"]
            .as_str()
            .map(|i| i.starts_with("pi_")),
        Some(true)
    );
    let order = an_order(&client, &seller, &buyer).await;
    let intent =
        killed_between_stripes_answer_and_our_write(&mut stack, &client, &buyer, &order).await;
    killed_while_the_success_webhook_is_sent(&mut stack, &client, &buyer, &order, &intent).await;
    killed_right_after_a_legacy_payment(&mut stack, &client, &buyer, &legacy_order).await;
    nothing_doubled_nothing_refunded(&stack, &client, &buyer, &[&legacy_order, &order]).await;
    killed_while_refunding_late_money(&mut stack, &client, &seller, &buyer).await;
    stack.stop().await.expect("the fleet stops");
}

/// 1. Killed between Stripe's answer and our write: the retry after the
///    restart finds the one intent Stripe made. Returns its id.
async fn killed_between_stripes_answer_and_our_write(
    stack: &mut Stack,
    client: &Client,
    buyer: &User,
    order: &str,
) -> String {
    hold(stack, "POST", "/v1/payment_intents", "30", false).await;
    let in_flight = {
        let client = Client::new(stack.base_url());
        let (buyer, order) = (buyer.clone(), order.to_owned());
        tokio::spawn(async move {
            let body = json!({"orderId": order});
            client
                .send(Method::POST, "/api/payments", Some(&buyer), Some(body))
                .await
        })
    };
    let created = testkit::eventually(Duration::from_secs(10), || async {
        (intents_for(stack, order).await.len() == 1).then_some(())
    })
    .await;
    assert!(created.is_some(), "Stripe never got the intent request");
    stack
        .fleet_mut()
        .kill_service("payments")
        .await
        .expect("kill -9");
    let lost = in_flight.await.expect("the request task");
    assert!(
        lost.as_ref().map_or(true, |reply| reply.status >= 500),
        "the killed request got an answer: {lost:?}"
    );
    stack
        .fleet_mut()
        .start_service("payments")
        .await
        .expect("payments restarts");
    let retried = open(client, buyer, order).await;
    let intents = intents_for(stack, order).await;
    assert_eq!(intents.len(), 1, "one intent: {intents:?}");
    assert_eq!(retried["paymentIntentId"], intents[0]["id"]);
    retried["paymentIntentId"].as_str().unwrap().to_owned()
}

/// 2. Killed between a webhook's receipt and its ack: the success is sent
///    while payments dies; Stripe's retries land after the restart.
async fn killed_while_the_success_webhook_is_sent(
    stack: &mut Stack,
    client: &Client,
    buyer: &User,
    order: &str,
    intent: &str,
) {
    stack
        .fleet_mut()
        .kill_service("payments")
        .await
        .expect("kill -9");
    confirm_at_stripe(stack, intent).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stack
        .fleet_mut()
        .start_service("payments")
        .await
        .expect("payments restarts");
    wait_complete(client, buyer, order).await;
}

/// An order paid by a legacy card while payments is killed right after:
/// the success and its webhook are handled once.
async fn killed_right_after_a_legacy_payment(
    stack: &mut Stack,
    client: &Client,
    buyer: &User,
    order: &str,
) {
    let body = json!({"token": "tok_visa", "orderId": order});
    let paid = client
        .send(Method::POST, "/api/payments", Some(buyer), Some(body))
        .await
        .expect("payments answers");
    assert_eq!(paid.status, 201, "{:?}", paid.body);
    kill_and_restart_payments(stack).await;
    wait_complete(client, buyer, order).await;
}

/// Each paid order has exactly one succeeded intent, nothing was refunded,
/// and payments says `succeeded`.
async fn nothing_doubled_nothing_refunded(
    stack: &Stack,
    client: &Client,
    buyer: &User,
    orders: &[&str],
) {
    for order in orders {
        let intents = intents_for(stack, order).await;
        assert_eq!(intents.len(), 1, "{order}: {intents:?}");
        assert_eq!(intents[0]["status"], "succeeded");
        let path = format!("/api/payments?orderId={order}");
        let payments = client
            .send(Method::GET, &path, Some(buyer), None)
            .await
            .expect("payments answers");
        assert_eq!(
            payments.body[0]["status"], "succeeded",
            "{:?}",
            payments.body
        );
    }
    let refunds = stripe(stack, Method::GET, "v1/refunds", &[]).await;
    assert_eq!(
        refunds["data"].as_array().map(Vec::len),
        Some(0),
        "{refunds}"
    );
}

/// 3. Killed between a webhook's receipt and its ack, in the middle of
///    refunding money that arrived after the buyer cancelled: refunded at
///    Stripe, not yet recorded, the delivery not acked; after the restart
///    the refund is recorded — and made once.
async fn killed_while_refunding_late_money(
    stack: &mut Stack,
    client: &Client,
    seller: &User,
    buyer: &User,
) {
    let order = an_order(client, seller, buyer).await;
    let late = open(client, buyer, &order).await;
    let intent = late["paymentIntentId"].as_str().unwrap().to_owned();
    // The cancel payments sends when the order is cancelled reaches Stripe
    // only after the buyer's bank has said yes (the success overtakes it).
    let cancel = format!("/v1/payment_intents/{intent}/cancel");
    hold(stack, "POST", &cancel, "20", true).await;
    let cancelled = client
        .send(
            Method::DELETE,
            &format!("/api/orders/{order}"),
            Some(buyer),
            None,
        )
        .await
        .expect("orders answers");
    assert_eq!(cancelled.status, 204, "{:?}", cancelled.body);
    hold(stack, "POST", "/v1/refunds", "30", false).await;
    // Give payments the order.cancelled (its cancel is now held at Stripe).
    tokio::time::sleep(Duration::from_secs(1)).await;
    confirm_at_stripe(stack, &intent).await;
    let refunds_of = |all: &Value| -> Vec<Value> {
        all["data"]
            .as_array()
            .expect("a list")
            .iter()
            .filter(|refund| refund["payment_intent"] == intent.as_str())
            .cloned()
            .collect()
    };
    let refunded_at_stripe = testkit::eventually(Duration::from_secs(15), || async {
        (!refunds_of(&stripe(stack, Method::GET, "v1/refunds", &[]).await).is_empty()).then_some(())
    })
    .await;
    assert!(
        refunded_at_stripe.is_some(),
        "the webhook never asked for the refund"
    );
    kill_and_restart_payments(stack).await;
    let path = format!("/api/payments?orderId={order}");
    let refunded = testkit::eventually(Duration::from_secs(30), || async {
        let listed = client
            .send(Method::GET, &path, Some(buyer), None)
            .await
            .ok()?;
        (listed.body[0]["status"] == "refunded").then_some(())
    })
    .await;
    assert!(refunded.is_some(), "the late payment was never refunded");
    assert_eq!(order_status(client, buyer, &order).await, "cancelled");
    let all = stripe(stack, Method::GET, "v1/refunds", &[]).await;
    let refunds = refunds_of(&all);
    assert_eq!(refunds.len(), 1, "one refund: {refunds:?}");
    assert_eq!(refunds[0]["amount"], 2500);
    assert_eq!(all["data"].as_array().map(Vec::len), Some(1), "{all}");
}
