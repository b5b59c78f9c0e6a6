//! What the orders tests share: a running service with its own database and
//! bus namespace, a bus and a database handle on the same namespace for the
//! test itself, and helpers that read like the steps of a test.

#![allow(dead_code)] // each test binary uses a different subset

use std::time::Duration;

use common::{
    config::Secret,
    events::{ExpirationComplete, PaymentCreated, TicketCreated, TicketUpdated},
    money::Money,
    outbox::Relay,
};
use mongodb::bson::oid::ObjectId;
use orders::{
    Application, Settings,
    events::SERVICE,
    store::{Order, Orders, Ticket, Tickets},
};
use serde_json::json;
use testkit::{Harness, Reply};

/// Settings for a fresh service: its own database and bus namespace.
pub fn settings() -> Settings {
    Settings {
        serving: Default::default(),
        mongo_uri: testkit::mongo_uri("orders"),
        bus: testkit::bus_config(),
        jwt_key: Secret::new(testkit::JWT_KEY),
        expiration_window: Duration::from_secs(15 * 60),
        max_active_orders_per_user: 4,
        outbox_relay: true,
    }
}

/// A running orders service and the test's own handles on its world (the
/// kit's [`Harness`]: `app`, `bus`, `db`, `settings`), with the steps orders'
/// tests are written in.
pub struct TestOrders(Harness<Settings>);

impl std::ops::Deref for TestOrders {
    type Target = Harness<Settings>;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

/// Starts orders with fresh settings.
pub async fn spawn_orders() -> TestOrders {
    spawn_with(settings()).await
}

/// Starts orders with these settings (a restart passes the same ones again).
pub async fn spawn_with(settings: Settings) -> TestOrders {
    let (uri, bus) = (settings.mongo_uri.clone(), settings.bus.clone());
    TestOrders(Harness::start("orders", &uri, &bus, settings, Application::build).await)
}

/// A ticket as the tickets service would announce it.
pub fn ticket_created(title: &str, cents: i64) -> TicketCreated {
    TicketCreated {
        title: title.to_owned(),
        price: Money::from_cents(cents),
        ..testkit::ticket_created()
    }
}

/// The update of `ticket` to `version` with a new title and price.
pub fn ticket_updated(
    ticket: &TicketCreated,
    version: i64,
    title: &str,
    cents: i64,
) -> TicketUpdated {
    TicketUpdated {
        title: title.to_owned(),
        price: Money::from_cents(cents),
        ..testkit::ticket_updated(ticket, version)
    }
}

pub fn oid(hex: &str) -> ObjectId {
    ObjectId::parse_str(hex).expect("not an ObjectId")
}

impl TestOrders {
    pub fn tickets(&self) -> Tickets {
        Tickets::new(&self.db)
    }

    /// The orders store on the service's database, with an outbox handle
    /// whose relay does not run (the service's own relay publishes).
    pub fn orders(&self) -> Orders {
        let (_relay, outbox) = Relay::new(self.bus.clone(), Orders::raw_collection(&self.db));
        Orders::new(&self.db, outbox)
    }

    /// The replica's copy of a ticket.
    pub async fn replica(&self, id: &str) -> Option<Ticket> {
        self.tickets()
            .find(oid(id))
            .await
            .expect("replica read failed")
    }

    /// The stored order.
    pub async fn order(&self, id: &str) -> Order {
        self.orders()
            .find(oid(id))
            .await
            .expect("order read failed")
            .expect("no such order")
    }

    /// Publishes `ticket.created` and waits until the replica has it.
    pub async fn seed_ticket(&self, title: &str, cents: i64) -> TicketCreated {
        let ticket = ticket_created(title, cents);
        self.bus
            .publish(&ticket)
            .await
            .expect("publish ticket.created");
        self.wait_for_replica(&ticket.id, 0).await;
        ticket
    }

    /// Waits until the replica holds `id` at `version` (or later).
    pub async fn wait_for_replica(&self, id: &str, version: i64) -> Ticket {
        testkit::eventually(Duration::from_secs(10), || async {
            self.replica(id).await.filter(|t| t.version >= version)
        })
        .await
        .unwrap_or_else(|| panic!("the replica never reached ticket {id} v{version}"))
    }

    /// `POST /api/orders {ticketId}` as `cookie`.
    pub async fn order_ticket(&self, cookie: &str, ticket_id: &str) -> Reply {
        self.app
            .post(
                "/api/orders",
                Some(cookie),
                json!({ "ticketId": ticket_id }),
            )
            .await
    }

    /// Orders `ticket_id` as `cookie` and returns the new order's id.
    pub async fn create_order(&self, cookie: &str, ticket_id: &str) -> String {
        let reply = self.order_ticket(cookie, ticket_id).await;
        reply.assert_status(201);
        reply.body["id"]
            .as_str()
            .expect("order without id")
            .to_owned()
    }

    /// Publishes the `ticket.updated` with which tickets reserves the
    /// order's ticket for it, and waits until the replica has it.
    pub async fn reserve(&self, order_id: &str) -> Ticket {
        let order = self.order(order_id).await;
        let ticket_id = order.ticket_id.to_hex();
        let replica = self.replica(&ticket_id).await.expect("no such ticket");
        let reservation = TicketUpdated {
            id: ticket_id.clone(),
            version: replica.version + 1,
            title: replica.title,
            price: replica.price,
            user_id: ObjectId::new().to_hex(),
            order_id: Some(order_id.to_owned()),
            withdrawn: false,
        };
        self.bus
            .publish(&reservation)
            .await
            .expect("publish ticket.updated");
        self.wait_for_replica(&ticket_id, reservation.version).await
    }

    /// Reserves the order's ticket as tickets would, publishes
    /// `payment.created` for `order_id` and waits until the order is
    /// complete.
    pub async fn pay(&self, order_id: &str) {
        self.reserve(order_id).await;
        let payment = PaymentCreated {
            id: ObjectId::new().to_hex(),
            order_id: order_id.to_owned(),
            stripe_id: "ch_test".to_owned(),
        };
        self.bus
            .publish(&payment)
            .await
            .expect("publish payment.created");
        self.wait_for_status(order_id, "complete").await;
    }

    /// Publishes `expiration.complete` for `order_id`.
    pub async fn expire(&self, order_id: &str) {
        let event = ExpirationComplete {
            order_id: order_id.to_owned(),
        };
        self.bus
            .publish(&event)
            .await
            .expect("publish expiration.complete");
    }

    /// Waits until the stored order has `status`.
    pub async fn wait_for_status(&self, order_id: &str, status: &str) -> Order {
        testkit::eventually(Duration::from_secs(10), || async {
            Some(self.order(order_id).await).filter(|o| o.status.as_str() == status)
        })
        .await
        .unwrap_or_else(|| panic!("order {order_id} never became {status}"))
    }

    /// Waits until the service's durable consumer of `subject` has handled
    /// and acked everything in the stream.
    pub async fn wait_until_consumed(&self, subject: &str) {
        testkit::wait_until_consumed(&self.bus, SERVICE, subject).await;
    }
}
