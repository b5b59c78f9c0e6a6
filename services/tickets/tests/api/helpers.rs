//! The tickets service under test, and what tests do with it.

use std::time::{Duration, Instant};

use common::{
    bus::BusConfig,
    config::Secret,
    events::{Event, OrderCancelled, OrderCreated, OrderTicket},
    money::Money,
    outbox::Relay,
};
use mongodb::bson::oid::ObjectId;
use serde_json::{Value, json};
use testkit::{Harness, Reply};
use tickets::{Application, Settings, store::Tickets};

/// Where one test's service keeps its state: a database and a bus namespace.
#[derive(Debug, Clone)]
pub struct Namespace {
    pub mongo_uri: String,
    pub bus: BusConfig,
}

impl Namespace {
    pub fn fresh() -> Self {
        Self {
            mongo_uri: testkit::mongo_uri("tickets"),
            bus: testkit::bus_config().with_connection_name("tickets-under-test"),
        }
    }

    pub fn settings(&self, outbox_relay: bool) -> Settings {
        Settings {
            serving: Default::default(),
            mongo_uri: self.mongo_uri.clone(),
            bus: self.bus.clone(),
            jwt_key: Secret::new(testkit::JWT_KEY),
            outbox_relay,
            resale_cap_percent: None,
        }
    }
}

/// A running tickets service plus the test's own clients of its database and
/// bus namespace (the kit's [`Harness`]: `app`, `bus`, `db`, `settings`).
pub struct TestTickets {
    harness: Harness<Settings>,
    /// The tickets store on the service's database, for what HTTP does not
    /// show. Its relay does not run: the service's own relay publishes what
    /// it writes.
    pub store: Tickets,
}

impl std::ops::Deref for TestTickets {
    type Target = Harness<Settings>;

    fn deref(&self) -> &Self::Target {
        &self.harness
    }
}

/// A tickets service in a fresh namespace.
pub async fn spawn() -> TestTickets {
    spawn_in(Namespace::fresh(), true).await
}

/// A tickets service in a fresh namespace with `RESALE_CAP_PERCENT=cap`.
pub async fn spawn_capped(cap: u32) -> TestTickets {
    let ns = Namespace::fresh();
    let settings = Settings {
        resale_cap_percent: Some(cap),
        ..ns.settings(true)
    };
    spawn_settings(ns, settings).await
}

/// A tickets service in `ns`; `outbox_relay: false` plays a crash after every
/// write and before its publish.
pub async fn spawn_in(ns: Namespace, outbox_relay: bool) -> TestTickets {
    let settings = ns.settings(outbox_relay);
    spawn_settings(ns, settings).await
}

async fn spawn_settings(ns: Namespace, settings: Settings) -> TestTickets {
    let harness = Harness::start(
        "tickets",
        &ns.mongo_uri,
        &ns.bus,
        settings,
        Application::build,
    )
    .await;
    let (_relay, outbox) = Relay::new(harness.bus.clone(), Tickets::raw_collection(&harness.db));
    let store = Tickets::new(harness.db.clone(), outbox);
    TestTickets { harness, store }
}

impl TestTickets {
    /// Stops the service and waits until it has.
    pub async fn stop(self) {
        self.harness.stop().await
    }

    /// `POST /api/tickets`, asserting 201; the ticket as returned.
    pub async fn create_ticket(&self, cookie: &str, title: &str, price: Value) -> Value {
        let reply = self
            .post(cookie, json!({"title": title, "price": price}))
            .await;
        reply.assert_status(201);
        reply.body
    }

    /// `POST /api/tickets` with `body`, asserting 201; the ticket as returned.
    pub async fn create_ticket_with(&self, cookie: &str, body: Value) -> Value {
        let reply = self.post(cookie, body).await;
        reply.assert_status(201);
        reply.body
    }

    pub async fn post(&self, cookie: &str, body: Value) -> Reply {
        self.app.post("/api/tickets", Some(cookie), body).await
    }

    pub async fn put(&self, id: &str, cookie: Option<&str>, body: Value) -> Reply {
        self.app
            .put(&format!("/api/tickets/{id}"), cookie, body)
            .await
    }

    pub async fn show(&self, id: &str) -> Reply {
        self.app.get(&format!("/api/tickets/{id}"), None).await
    }

    pub async fn list(&self, query: &str) -> Reply {
        self.app.get(&format!("/api/tickets{query}"), None).await
    }

    /// `GET /api/tickets{query}` as `cookie`'s user.
    pub async fn list_as(&self, cookie: &str, query: &str) -> Reply {
        self.app
            .get(&format!("/api/tickets{query}"), Some(cookie))
            .await
    }

    /// `DELETE /api/tickets/{id}`.
    pub async fn withdraw(&self, id: &str, cookie: Option<&str>) -> Reply {
        self.app.delete(&format!("/api/tickets/{id}"), cookie).await
    }

    /// `GET /api/tickets/{id}` as JSON, asserting 200.
    pub async fn ticket(&self, id: &str) -> Value {
        let reply = self.show(id).await;
        reply.assert_status(200);
        reply.body
    }

    /// Waits until the ticket satisfies `check` (10 s), and returns it.
    pub async fn ticket_when(&self, id: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ticket = self.ticket(id).await;
            if check(&ticket) {
                return ticket;
            }
            assert!(
                Instant::now() < deadline,
                "ticket {id} never got {what}; last seen: {ticket}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Publishes an event as its owner service would.
    pub async fn publish<E: Event>(&self, event: &E) {
        self.bus.publish(event).await.expect("publish failed");
    }

    /// Publishes `event` again under a new message id: what a redelivery (or
    /// a publish outside the duplicate window) looks like to tickets.
    pub async fn publish_again<E: Event>(&self, event: &E) {
        let payload = serde_json::to_vec(event).expect("event serialises");
        self.bus
            .publish_raw(
                E::SUBJECT,
                E::SCHEMA_VERSION,
                &format!("{}:again:{}", event.message_id(), ObjectId::new()),
                payload.into(),
            )
            .await
            .expect("publish failed");
    }

    /// Waits until tickets' durable consumer of `E` has delivered and acked
    /// everything in the stream, without a redelivery.
    pub async fn wait_until_consumed<E: Event>(&self) {
        let settled =
            testkit::wait_until_consumed(&self.bus, tickets::events::SERVICE, E::SUBJECT).await;
        assert_eq!(
            settled.num_redelivered, 0,
            "{} needed redeliveries",
            settled.name
        );
    }

    /// Every `ticket.updated` published for `id`.
    pub async fn updates_of(&self, id: &str) -> Vec<common::events::TicketUpdated> {
        testkit::published::<common::events::TicketUpdated>(&self.bus)
            .await
            .into_iter()
            .filter(|e| e.id == id)
            .collect()
    }
}

/// The path and query of the `rel="next"` link of a listing reply, if any.
pub fn next_link(reply: &Reply) -> Option<String> {
    let link = reply.headers.get("link")?.to_str().ok()?;
    let (target, rel) = link.split_once(';')?;
    assert_eq!(rel.trim(), "rel=\"next\"", "link: {link}");
    Some(
        target
            .trim()
            .trim_start_matches('<')
            .trim_end_matches('>')
            .to_owned(),
    )
}

/// The titles of a listing reply, in order.
pub fn titles(reply: &Reply) -> Vec<String> {
    reply
        .body
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {}", reply.text))
        .iter()
        .map(|t| t["title"].as_str().unwrap().to_owned())
        .collect()
}

/// A signed-in user: their id and the cookie.
pub fn user() -> (String, String) {
    let id = ObjectId::new().to_hex();
    let cookie = testkit::signin_as(&id, "seller@test.com");
    (id, cookie)
}

/// The ticket id of a ticket as the API returned it.
pub fn id_of(ticket: &Value) -> String {
    ticket["id"]
        .as_str()
        .expect("ticket without an id")
        .to_owned()
}

/// A new order for `ticket`, as orders would announce it.
pub fn order_created(ticket: &Value) -> OrderCreated {
    OrderCreated {
        ticket: OrderTicket {
            id: id_of(ticket),
            price: serde_json::from_value::<Money>(ticket["price"].clone())
                .expect("price is money"),
        },
        ..testkit::order_created()
    }
}

/// The cancellation of `order`, as orders would announce it.
pub fn order_cancelled(order: &OrderCreated) -> OrderCancelled {
    testkit::order_cancelled(order)
}
