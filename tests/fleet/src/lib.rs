//! Fleet-level test harness: a [`Shop`] is the whole fleet (every service,
//! its own infrastructure, the local ingress) and a way to use it the way a
//! browser does — only HTTP through the ingress, with a session cookie.

// A test kit: a set-up that cannot be done is the test failing, so it
// unwraps and expects (the workspace denies both everywhere else).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use devstack::{Stack, ingress::IngressOptions};
use serde_json::Value;
use testkit::{Reply, TestApp};
use tokio_util::sync::CancellationToken;

/// The fleet, and an HTTP client pointed at its ingress.
pub struct Shop {
    pub stack: Stack,
    http: TestApp,
    address: std::net::SocketAddr,
}

/// A signed-up user: the kit's.
pub use testkit::User;

impl Shop {
    /// Starts the fleet with an expiration window of `window_seconds`.
    pub async fn open(window_seconds: u64) -> Self {
        let window = window_seconds.to_string();
        Self::open_with(
            &[("EXPIRATION_WINDOW_SECONDS", &window)],
            IngressOptions::default(),
        )
        .await
    }

    /// Starts the fleet with the extra service environment `env` and these
    /// ingress bounds and limits.
    pub async fn open_with(env: &[(&str, &str)], ingress: IngressOptions) -> Self {
        let stack = Stack::start_with(devstack::StackOptions::new(&[], env).with_ingress(ingress))
            .await
            .unwrap_or_else(|err| panic!("the fleet did not start: {err:#}"));
        let address = stack
            .base_url()
            .trim_start_matches("http://")
            .parse()
            .expect("ingress address");
        Self {
            http: TestApp::new(address, CancellationToken::new()),
            stack,
            address,
        }
    }

    /// The ingress's address.
    pub fn address(&self) -> std::net::SocketAddr {
        self.address
    }

    /// A client of the ingress connecting from `source` (`127.0.0.2`, …): a
    /// client address of its own.
    pub fn client_from(&self, source: std::net::IpAddr) -> TestApp {
        TestApp::new(self.address, CancellationToken::new()).sending_from(source)
    }

    pub async fn close(self) {
        self.stack
            .stop()
            .await
            .expect("the fleet did not stop cleanly");
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        user: Option<&User>,
        body: Option<Value>,
    ) -> Reply {
        self.http
            .send(method, path, user.map(|u| u.cookie.as_str()), body)
            .await
    }

    pub async fn get(&self, path: &str, user: Option<&User>) -> Reply {
        self.send(reqwest::Method::GET, path, user, None).await
    }

    pub async fn post(&self, path: &str, user: Option<&User>, body: Value) -> Reply {
        self.send(reqwest::Method::POST, path, user, Some(body))
            .await
    }

    /// Signs up a fresh user.
    pub async fn signup(&self) -> User {
        let email = format!("{}@test.com", testkit::unique_name("user"));
        self.http.api.signup(&email).await.unwrap()
    }

    /// Lists a ticket; returns its id.
    pub async fn sell(&self, seller: &User, title: &str, price: f64) -> String {
        let ticket = self.http.api.create_ticket(seller, title, price).await;
        ticket.unwrap().id
    }

    /// Orders a ticket once the orders service knows it (replication is
    /// asynchronous: a fresh ticket is a 404 to orders for a moment). After a
    /// replica was killed, the event it had in hand comes back only after the
    /// bus's ack wait (10 s), and the updates that arrived before it meanwhile
    /// back off (0.5 s doubling): half a minute is the worst case, not a hang.
    pub async fn buy(&self, buyer: &User, ticket_id: &str) -> testkit::Order {
        self.until(Duration::from_secs(60), || async {
            match self.http.api.order(buyer, ticket_id).await {
                Err(failure) if failure.status() == Some(404) => None,
                ordered => Some(ordered.unwrap()),
            }
        })
        .await
        .expect("the ticket never reached the orders service")
    }

    pub async fn pay(&self, buyer: &User, order_id: &str, token: &str) -> Reply {
        self.http.api.pay(buyer, order_id, token).await.unwrap()
    }

    /// Pays once payments knows the order (it learns of it by event).
    pub async fn pay_when_known(&self, buyer: &User, order_id: &str, token: &str) -> Reply {
        self.until(Duration::from_secs(15), || async {
            let reply = self.pay(buyer, order_id, token).await;
            (reply.status != 404).then_some(reply)
        })
        .await
        .expect("the order never reached the payments service")
    }

    pub async fn order_status(&self, buyer: &User, order_id: &str) -> String {
        let reply = self
            .get(&format!("/api/orders/{order_id}"), Some(buyer))
            .await;
        reply.assert_status(200);
        reply.body["status"].as_str().expect("status").to_owned()
    }

    /// Waits until the order has `status`; returns how long that took.
    pub async fn wait_for_status(
        &self,
        buyer: &User,
        order_id: &str,
        status: &str,
        within: Duration,
    ) -> Duration {
        let started = std::time::Instant::now();
        self.until(within, || async {
            (self.order_status(buyer, order_id).await == status).then_some(())
        })
        .await
        .unwrap_or_else(|| panic!("order {order_id} did not become {status} within {within:?}"));
        started.elapsed()
    }

    /// Whether the ticket is on the public list (unreserved).
    pub async fn listed(&self, ticket_id: &str) -> bool {
        let reply = self.get("/api/tickets?limit=500", None).await;
        reply.assert_status(200);
        reply
            .body
            .as_array()
            .expect("a list")
            .iter()
            .any(|t| t["id"] == ticket_id)
    }

    /// Polls `check` every 100 ms until it gives `Some` or `within` passes.
    pub async fn until<T, F, Fut>(&self, within: Duration, mut check: F) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(value) = check().await {
                return Some(value);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
