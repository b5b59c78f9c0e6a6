//! Test helpers of the payments service: a running service on its own
//! database and bus namespace, order events as the orders service would send
//! them, and look-ups in the Stripe fake.

#![allow(dead_code)] // each test binary uses its own subset

use std::time::{Duration, Instant};

use chrono::Utc;
use common::{
    bus::{Bus, BusConfig},
    config::Secret,
    events::{OrderCancelled, OrderCreated, OrderStatus, OrderTicket, TicketRef},
    money::Money,
};
use mongodb::{
    Database,
    bson::{Document, doc, oid::ObjectId},
};
use payments::{Application, Settings, store::Order};
use serde_json::Value;
use testkit::TestApp;

/// The secret key the service uses against the Stripe fake (it only checks the
/// `sk_test_` prefix).
pub const STRIPE_KEY: &str = "sk_test_payments_service_tests";

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
        port: 0,
        mongo_uri: testkit::mongo_uri("payments"),
        jwt_key: Secret::new(testkit::JWT_KEY),
        stripe_key: Secret::new(STRIPE_KEY),
        stripe_api_base: Some(stripe_api_base()),
        bus: testkit::bus_config(),
        development: false,
        limits: Default::default(),
        outbox_relay: true,
    }
}

/// A running payments service plus what a test needs around it.
pub struct Harness {
    pub app: TestApp,
    /// The test's own connection to the service's stream, to publish order
    /// events and read what the service published.
    pub bus: Bus,
    /// The service's database.
    pub db: Database,
    pub settings: Settings,
}

impl Harness {
    /// A fresh service with the default settings.
    pub async fn spawn() -> Harness {
        Self::spawn_with(settings()).await
    }

    /// A service with these settings (a restart: the same database and bus).
    pub async fn spawn_with(settings: Settings) -> Harness {
        let app = Application::build(settings.clone())
            .await
            .expect("payments failed to start");
        let app = testkit::start(app.port(), |stop| app.run_until(stop));
        Harness {
            app,
            bus: connect_bus(settings.bus.clone()).await,
            db: common::mongo::connect(&settings.mongo_uri, "payments")
                .await
                .expect("bad MongoDB URI"),
            settings,
        }
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

    /// `POST /api/payments` as `cookie`.
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

/// A bus connection to `config`'s namespace (creates the stream if needed).
pub async fn connect_bus(config: BusConfig) -> Bus {
    Bus::connect(config).await.expect("connect to NATS")
}

/// `order.created` as the orders service publishes it.
pub fn order_created_event(
    id: ObjectId,
    version: i64,
    user_id: &str,
    price: Money,
) -> OrderCreated {
    OrderCreated {
        id: id.to_hex(),
        version,
        status: OrderStatus::Created,
        user_id: user_id.to_owned(),
        expires_at: Utc::now() + chrono::Duration::minutes(15),
        ticket: OrderTicket {
            id: ObjectId::new().to_hex(),
            price,
        },
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

/// `GET /v1/<path>` on the Stripe fake.
pub async fn stripe_get(path: &str) -> Value {
    let response = reqwest::Client::new()
        .get(format!(
            "{}/v1/{path}",
            stripe_api_base().trim_end_matches('/')
        ))
        .bearer_auth(STRIPE_KEY)
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

/// Every charge the Stripe fake holds for `order_id` (by the `orderId`
/// metadata the service attaches).
pub async fn charges_for(order_id: ObjectId) -> Vec<Value> {
    // Without `limit` the fake lists every charge of the account.
    let list = stripe_get("charges").await;
    list["data"]
        .as_array()
        .expect("a charge list")
        .iter()
        .filter(|charge| charge["metadata"]["orderId"] == order_id.to_hex())
        .cloned()
        .collect()
}
