//! Test helpers of the payments service: a running service on its own
//! database, bus namespace and Stripe account (the devstack fake keeps one
//! account per secret key), order events as the orders service would send
//! them, what a browser does at Stripe (confirm, 3-D Secure), and Stripe's
//! webhooks, signed as Stripe signs them.

#![allow(dead_code)] // each test binary uses its own subset

use std::time::{Duration, Instant};

use chrono::Utc;
use common::{
    config::Secret,
    events::{OrderCancelled, OrderCreated, OrderStatus, OrderTicket, TicketRef},
    money::Money,
};
use mongodb::bson::{Document, doc, oid::ObjectId};
use payments::{Application, Settings, store::Order};
use serde_json::Value;

/// The webhook signing secret of the test services.
pub const WEBHOOK_SECRET: &str = "whsec_payments_service_tests";

/// The Stripe fake of this test run.
pub fn stripe_api_base() -> String {
    testkit::infra()
        .stripe_api_base
        .clone()
        .expect("the test infrastructure runs without the Stripe fake")
}

/// Settings for a fresh service: its own database and bus namespace.
pub fn settings() -> Settings {
    Settings {
        serving: Default::default(),
        mongo_uri: testkit::mongo_uri("payments"),
        jwt_key: Secret::new(testkit::JWT_KEY),
        // An account of its own at the fake.
        stripe_key: Secret::new(format!("sk_test_{}", testkit::unique_name("payments"))),
        webhook_secret: Secret::new(WEBHOOK_SECRET),
        stripe_api_base: Some(stripe_api_base()),
        bus: testkit::bus_config(),
        outbox_relay: true,
    }
}

/// A running payments service plus what a test needs around it (the kit's
/// [`testkit::Harness`]: `app`, `bus` — to publish order events and read
/// what the service published —, `db`, `settings`).
pub struct Harness(testkit::Harness<Settings>);

impl std::ops::Deref for Harness {
    type Target = testkit::Harness<Settings>;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Harness {
    /// A fresh service with the default settings.
    pub async fn spawn() -> Harness {
        Self::spawn_with(settings()).await
    }

    /// A service with these settings (a restart: the same database and bus).
    pub async fn spawn_with(settings: Settings) -> Harness {
        let (uri, bus) = (settings.mongo_uri.clone(), settings.bus.clone());
        Harness(testkit::Harness::start("payments", &uri, &bus, settings, Application::build).await)
    }

    /// Publishes `order.created` for a new order of `user_id` at `price`, and
    /// waits until the service has its replica.
    pub async fn order_created(&self, user_id: &str, price: Money) -> ObjectId {
        let id = ObjectId::new();
        self.bus
            .publish(&order_created_event(id, 0, user_id, price))
            .await
            .expect("publish order.created");
        self.wait_for_order(id, |order| order.is_some()).await;
        id
    }

    /// Publishes `order.cancelled` at `version` and waits until the replica
    /// is cancelled.
    pub async fn order_cancelled(&self, id: ObjectId, version: i64) {
        self.bus
            .publish(&order_cancelled_event(id, version))
            .await
            .expect("publish order.cancelled");
        self.wait_for_order(id, |order| {
            order.is_some_and(|o| o.status == OrderStatus::Cancelled)
        })
        .await;
    }

    /// Waits (10 s at most) until the replica of `id` satisfies `done`.
    pub async fn wait_for_order(
        &self,
        id: ObjectId,
        done: impl Fn(Option<&Order>) -> bool,
    ) -> Option<Order> {
        let orders = payments::store::Orders::new(&self.db);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let current = orders.find(id).await.expect("read the order replica");
            if done(current.as_ref()) {
                return current;
            }
            assert!(
                Instant::now() < deadline,
                "order {id} never reached the expected state: {current:?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// `POST /api/payments {orderId}` as `cookie`: the order's intent.
    pub async fn open(&self, cookie: &str, order_id: ObjectId) -> testkit::Reply {
        self.app
            .post(
                "/api/payments",
                Some(cookie),
                serde_json::json!({"orderId": order_id.to_hex()}),
            )
            .await
    }

    /// The Stripe fake, as this service's account.
    pub fn stripe(&self) -> StripeAccount {
        StripeAccount {
            key: self.settings.stripe_key.expose().to_owned(),
        }
    }

    /// `POST /api/payments/webhook` with `body` signed now with the service's secret.
    pub async fn deliver(&self, body: &str) -> testkit::Reply {
        let header = devstack::stripe_fake::signature_header(
            WEBHOOK_SECRET,
            Utc::now().timestamp(),
            body.as_bytes(),
        );
        self.webhook(body, Some(&header)).await
    }

    /// `POST /api/payments/webhook` with `body` and this `Stripe-Signature`.
    pub async fn webhook(&self, body: &str, signature: Option<&str>) -> testkit::Reply {
        let mut request = self
            .app
            .http
            .post(format!("{}/api/payments/webhook", self.app.base_url))
            .header("content-type", "application/json")
            .body(body.to_owned());
        if let Some(signature) = signature {
            request = request.header("stripe-signature", signature);
        }
        testkit::Reply::read(request.send().await.expect("payments did not answer")).await
    }

    /// The stored payment of an order.
    pub async fn payment_of(&self, order_id: ObjectId) -> Option<Document> {
        self.payments_of(order_id).await.into_iter().next()
    }

    /// Waits (10 s at most) until the stored payment of `order_id` has `status`.
    pub async fn wait_for_payment(&self, order_id: ObjectId, status: &str) -> Document {
        let found = testkit::eventually(Duration::from_secs(10), || async {
            self.payment_of(order_id)
                .await
                .filter(|p| p.get_str("status") == Ok(status))
        })
        .await;
        match found {
            Some(payment) => payment,
            None => panic!(
                "the payment of {order_id} never became {status}: {:?}",
                self.payment_of(order_id).await
            ),
        }
    }

    /// `POST /api/payments {token, orderId}` as `cookie`.
    pub async fn pay(&self, cookie: &str, token: &str, order_id: ObjectId) -> testkit::Reply {
        self.app
            .post(
                "/api/payments",
                Some(cookie),
                serde_json::json!({"token": token, "orderId": order_id.to_hex()}),
            )
            .await
    }

    /// The stored payment documents (outbox included) of an order.
    pub async fn payments_of(&self, order_id: ObjectId) -> Vec<Document> {
        use futures::TryStreamExt;
        self.db
            .collection::<Document>("payments")
            .find(doc! { "orderId": order_id })
            .await
            .expect("read payments")
            .try_collect()
            .await
            .expect("read payments")
    }
}

/// `order.created` as the orders service publishes it.
pub fn order_created_event(
    id: ObjectId,
    version: i64,
    user_id: &str,
    price: Money,
) -> OrderCreated {
    let fresh = testkit::order_created();
    OrderCreated {
        id: id.to_hex(),
        version,
        user_id: user_id.to_owned(),
        ticket: OrderTicket {
            price,
            ..fresh.ticket
        },
        ..fresh
    }
}

/// `order.cancelled` as the orders service publishes it.
pub fn order_cancelled_event(id: ObjectId, version: i64) -> OrderCancelled {
    OrderCancelled {
        id: id.to_hex(),
        version,
        ticket: TicketRef {
            id: ObjectId::new().to_hex(),
        },
    }
}

/// A fresh user id and the cookie that signs them in.
pub fn user() -> (String, String) {
    let id = ObjectId::new().to_hex();
    let cookie = testkit::signin_as(&id, "buyer@test.com");
    (id, cookie)
}

/// One account at the Stripe fake: what the browser and Stripe's dashboard
/// would do and see.
pub struct StripeAccount {
    pub key: String,
}

impl StripeAccount {
    fn url(path: &str) -> String {
        format!("{}/v1/{path}", stripe_api_base().trim_end_matches('/'))
    }

    /// `GET /v1/<path>`.
    pub async fn get(&self, path: &str) -> Value {
        let response = reqwest::Client::new()
            .get(Self::url(path))
            .bearer_auth(&self.key)
            .send()
            .await
            .expect("the Stripe fake did not answer");
        assert!(
            response.status().is_success(),
            "Stripe fake: GET {path} → {}",
            response.status()
        );
        response
            .json()
            .await
            .expect("the Stripe fake answered no JSON")
    }

    /// `POST /v1/<path>` with a form; (status, body).
    pub async fn post(&self, path: &str, form: &[(&str, &str)]) -> (u16, Value) {
        let response = reqwest::Client::new()
            .post(Self::url(path))
            .bearer_auth(&self.key)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(serde_urlencoded_pairs(form))
            .send()
            .await
            .expect("the Stripe fake did not answer");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Confirms the intent with a test payment method (`pm_card_visa`), as
    /// Stripe.js does in the browser.
    pub async fn confirm(&self, intent_id: &str, payment_method: &str) -> (u16, Value) {
        self.post(
            &format!("payment_intents/{intent_id}/confirm"),
            &[("payment_method", payment_method)],
        )
        .await
    }

    /// Holds back the account's next `POST <path>` for `seconds` before the
    /// fake carries it out (`/_fake/hold` with `when=before`).
    pub async fn hold_before(&self, path: &str, seconds: u32) {
        let response = reqwest::Client::new()
            .post(format!(
                "{}/_fake/hold",
                stripe_api_base().trim_end_matches('/')
            ))
            .bearer_auth(&self.key)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(serde_urlencoded_pairs(&[
                ("method", "POST"),
                ("path", path),
                ("seconds", &seconds.to_string()),
                ("when", "before"),
            ]))
            .send()
            .await
            .expect("the Stripe fake did not answer");
        assert!(
            response.status().is_success(),
            "hold: {}",
            response.status()
        );
    }

    /// Every intent of the account for `order_id` (by `metadata[orderId]`).
    pub async fn intents_for(&self, order_id: ObjectId) -> Vec<Value> {
        self.list("payment_intents", |o| {
            o["metadata"]["orderId"] == order_id.to_hex()
        })
        .await
    }

    /// Asserts that the account holds exactly one intent for `order_id`,
    /// succeeded and never refunded; returns its id.
    pub async fn assert_paid_once_without_refund(&self, order_id: ObjectId) -> String {
        let intents = self.intents_for(order_id).await;
        assert_eq!(intents.len(), 1, "{intents:?}");
        assert_eq!(intents[0]["status"], "succeeded");
        let intent_id = intents[0]["id"].as_str().unwrap().to_owned();
        assert_eq!(self.refunds_of(&intent_id).await, Vec::<Value>::new());
        intent_id
    }

    /// Every refund of the account of `intent_id`.
    pub async fn refunds_of(&self, intent_id: &str) -> Vec<Value> {
        self.list("refunds", |o| o["payment_intent"] == intent_id)
            .await
    }

    /// The account's events of `kind` about `intent_id`, oldest first.
    pub async fn events(&self, kind: &str, intent_id: &str) -> Vec<Value> {
        let mut events = self
            .list(&format!("events?type={kind}"), |e| {
                e["data"]["object"]["id"] == intent_id
            })
            .await;
        events.reverse();
        events
    }

    async fn list(&self, path: &str, keep: impl Fn(&Value) -> bool) -> Vec<Value> {
        let list = self.get(path).await;
        list["data"]
            .as_array()
            .expect("a list")
            .iter()
            .filter(|o| keep(o))
            .cloned()
            .collect()
    }
}

fn serde_urlencoded_pairs(form: &[(&str, &str)]) -> String {
    form.iter()
        .map(|(k, v)| format!("{}={}", urlencode(k), urlencode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
