//! The Stripe fake behaves as Stripe's API reference says, where payments
//! depends on it: idempotency keys, the test cards, refunds, signed webhooks.

use std::time::Duration;

use devstack::{StripeFake, WebhookTarget, stripe_fake::signature_header};
use serde_json::Value;
use tokio::sync::mpsc;

const KEY: &str = "sk_test_fake_tests";

async fn post(base: &str, path: &str, key: Option<&str>, form: &str) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .post(format!("{base}/v1/{path}"))
        .bearer_auth(KEY)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form.to_owned());
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test]
async fn an_idempotency_key_replays_the_first_answer_and_refuses_other_parameters() {
    let fake = StripeFake::start(0).await.unwrap();
    let base = fake.base_url();
    let form = "amount=2000&currency=usd&metadata[orderId]=o1";
    let (status, first) = post(&base, "payment_intents", Some("k1"), form).await;
    assert_eq!(status, 200);
    let (_, again) = post(&base, "payment_intents", Some("k1"), form).await;
    assert_eq!(again, first);
    let (status, other) = post(
        &base,
        "payment_intents",
        Some("k1"),
        "amount=1&currency=usd",
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(other["error"]["type"], "idempotency_error");
    let (_, without) = post(&base, "payment_intents", None, form).await;
    assert_ne!(without["id"], first["id"]);
    // A request that failed validation is not remembered.
    let (status, _) = post(
        &base,
        "payment_intents",
        Some("k2"),
        "amount=10&currency=usd",
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = post(&base, "payment_intents", Some("k2"), form).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn test_cards_succeed_decline_or_need_3_d_secure_and_refunds_happen_once() {
    let fake = StripeFake::start(0).await.unwrap();
    let base = fake.base_url();
    let create = || post(&base, "payment_intents", None, "amount=2000&currency=usd");
    let (_, intent) = create().await;
    let id = intent["id"].as_str().unwrap();
    let (status, declined) = post(
        &base,
        &format!("payment_intents/{id}/confirm"),
        None,
        "payment_method_data[type]=card&payment_method_data[card][token]=tok_chargeDeclined",
    )
    .await;
    assert_eq!(status, 402);
    assert_eq!(declined["error"]["message"], "Your card was declined.");
    let (_, pm) = post(
        &base,
        "payment_methods",
        None,
        "type=card&card[number]=4000002500003155",
    )
    .await;
    let (_, pending) = post(
        &base,
        &format!("payment_intents/{id}/confirm"),
        None,
        &format!("payment_method={}", pm["id"].as_str().unwrap()),
    )
    .await;
    assert_eq!(pending["status"], "requires_action");
    let authenticated = reqwest::Client::new()
        .post(format!("{base}/_fake/payment_intents/{id}/authenticate"))
        .bearer_auth(KEY)
        .form(&[("result", "succeed")])
        .send()
        .await
        .unwrap();
    let authenticated: Value = authenticated.json().await.unwrap();
    assert_eq!(authenticated["status"], "succeeded");
    let (status, refund) = post(
        &base,
        "refunds",
        Some("r1"),
        &format!("payment_intent={id}"),
    )
    .await;
    assert_eq!((status, refund["amount"].as_i64()), (200, Some(2000)));
    let (status, twice) = post(
        &base,
        "refunds",
        Some("r2"),
        &format!("payment_intent={id}"),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(twice["error"]["code"], "charge_already_refunded");
    let (status, cancel) = post(&base, &format!("payment_intents/{id}/cancel"), None, "").await;
    assert_eq!(status, 400);
    assert_eq!(cancel["error"]["code"], "payment_intent_unexpected_state");
}

#[tokio::test]
async fn events_are_posted_with_a_valid_signature_and_retried_until_accepted() {
    let (tx, mut rx) = mpsc::unbounded_channel::<(String, String)>();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let attempts = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post({
            let attempts = attempts.clone();
            move |headers: axum::http::HeaderMap, body: String| {
                let tx = tx.clone();
                let attempts = attempts.clone();
                async move {
                    // The first delivery fails: Stripe must try again.
                    if attempts.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                        return axum::http::StatusCode::INTERNAL_SERVER_ERROR;
                    }
                    let signature = headers["stripe-signature"].to_str().unwrap().to_owned();
                    let _ = tx.send((signature, body));
                    axum::http::StatusCode::OK
                }
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });

    let fake = StripeFake::start(0).await.unwrap();
    fake.set_default_webhook(Some(WebhookTarget {
        url,
        secret: "whsec_fake_tests".into(),
    }));
    post(
        &fake.base_url(),
        "payment_intents",
        None,
        "amount=900&currency=usd",
    )
    .await;
    let (signature, body) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    let event: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(event["type"], "payment_intent.created");
    let timestamp: i64 = signature
        .split(',')
        .find_map(|p| p.strip_prefix("t="))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        signature,
        signature_header("whsec_fake_tests", timestamp, body.as_bytes())
    );
}

async fn hold(base: &str, form: &[(&str, &str)]) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{base}/_fake/hold"))
        .bearer_auth(KEY)
        .form(form)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

async fn status_of(base: &str, id: &str) -> Value {
    let response = reqwest::Client::new()
        .get(format!("{base}/v1/payment_intents/{id}"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    response.json::<Value>().await.unwrap()["status"].clone()
}

#[tokio::test]
async fn a_held_request_is_carried_out_at_once_or_only_after_its_delay() {
    let fake = StripeFake::start(0).await.unwrap();
    let base = fake.base_url();
    let (_, intent) = post(&base, "payment_intents", None, "amount=500&currency=usd").await;
    let id = intent["id"].as_str().unwrap().to_owned();
    let cancel = format!("/v1/payment_intents/{id}/cancel");

    // when=after (the default): done at once, answered after the delay.
    let (status, _) = hold(&base, &[("path", &cancel), ("seconds", "2")]).await;
    assert_eq!(status, 200);
    let cancelling = {
        let (base, path) = (base.clone(), format!("payment_intents/{id}/cancel"));
        tokio::spawn(async move { post(&base, &path, None, "").await })
    };
    let mut seen = Value::Null;
    for _ in 0..50 {
        seen = status_of(&base, &id).await;
        if seen == "canceled" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(seen, "canceled", "carried out before the answer");
    assert!(!cancelling.is_finished(), "the answer is held back");
    let (status, cancelled) = cancelling.await.unwrap();
    assert_eq!(
        (status, &cancelled["status"]),
        (200, &Value::from("canceled"))
    );

    // when=before: a later request overtakes the held one.
    let (_, intent) = post(&base, "payment_intents", None, "amount=500&currency=usd").await;
    let id = intent["id"].as_str().unwrap().to_owned();
    let (status, _) = hold(
        &base,
        &[
            ("path", &format!("/v1/payment_intents/{id}/cancel")),
            ("seconds", "1"),
            ("when", "before"),
        ],
    )
    .await;
    assert_eq!(status, 200);
    let cancelling = {
        let (base, path) = (base.clone(), format!("payment_intents/{id}/cancel"));
        tokio::spawn(async move { post(&base, &path, None, "").await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, paid) = post(
        &base,
        &format!("payment_intents/{id}/confirm"),
        None,
        "payment_method=pm_card_visa",
    )
    .await;
    assert_eq!((status, &paid["status"]), (200, &Value::from("succeeded")));
    let (status, late) = cancelling.await.unwrap();
    assert_eq!(status, 400, "the cancel found the intent paid: {late}");
    assert_eq!(late["error"]["code"], "payment_intent_unexpected_state");

    let (status, refused) = hold(&base, &[("path", "/v1/refunds"), ("when", "soon")]).await;
    assert_eq!(status, 400);
    assert_eq!(refused["error"]["param"], "when");
}
