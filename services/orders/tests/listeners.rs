//! The listeners, called directly (what they return decides the ack) and
//! end to end through JetStream: the ticket replica and its version rule,
//! expiration, payment. Ports the original's listener tests.

mod support;

use std::time::Duration;

use common::{
    bus::{Handled, Listener},
    events::{ExpirationComplete, OrderCancelled, OrderStatus, PaymentCreated, TicketRef},
    money::Money,
};
use mongodb::bson::oid::ObjectId;
use orders::events::{
    ExpirationCompleteListener, PaymentCreatedListener, TicketCreatedListener,
    TicketUpdatedListener,
};
use orders::store::Ticket;
use support::{oid, spawn_orders, ticket_created, ticket_updated};
use testkit::delivery;

// --- ticket.created -----------------------------------------------------------------

#[tokio::test]
async fn ticket_created_inserts_the_ticket_into_the_replica_and_acks() {
    let orders = spawn_orders().await;
    let listener = TicketCreatedListener::new(orders.tickets());
    let event = ticket_created("concert", 1050);

    let handled = listener
        .handle(event.clone(), &delivery("ticket.created"))
        .await
        .unwrap();

    assert_eq!(handled, Handled::Ack);
    assert_eq!(
        orders.replica(&event.id).await,
        Some(Ticket {
            id: oid(&event.id),
            title: "concert".into(),
            price: Money::from_cents(1050),
            version: 0,
            withdrawn: false,
            reserved_for: Some(None),
        })
    );
}

#[tokio::test]
async fn ticket_created_twice_is_acked_and_does_not_undo_an_update() {
    let orders = spawn_orders().await;
    let created = TicketCreatedListener::new(orders.tickets());
    let updated = TicketUpdatedListener::new(orders.tickets(), orders.orders());
    let event = ticket_created("concert", 1000);
    created
        .handle(event.clone(), &delivery("ticket.created"))
        .await
        .unwrap();
    updated
        .handle(
            ticket_updated(&event, 1, "new", 2000),
            &delivery("ticket.updated"),
        )
        .await
        .unwrap();

    let again = created
        .handle(event.clone(), &delivery("ticket.created"))
        .await
        .unwrap();

    assert_eq!(again, Handled::Ack);
    let replica = orders.replica(&event.id).await.unwrap();
    assert_eq!((replica.version, replica.title.as_str()), (1, "new"));
}

#[tokio::test]
async fn ticket_created_through_the_bus_reaches_the_replica() {
    let orders = spawn_orders().await;
    let event = ticket_created("concert", 1000);
    orders.bus.publish(&event).await.unwrap();
    let replica = orders.wait_for_replica(&event.id, 0).await;
    assert_eq!(replica.price, Money::from_cents(1000));
}

// --- ticket.updated -----------------------------------------------------------------

#[tokio::test]
async fn ticket_updated_applies_the_next_version_and_acks() {
    let orders = spawn_orders().await;
    let ticket = orders.seed_ticket("concert", 1000).await;
    let listener = TicketUpdatedListener::new(orders.tickets(), orders.orders());

    let handled = listener
        .handle(
            ticket_updated(&ticket, 1, "concert (moved)", 1234),
            &delivery("ticket.updated"),
        )
        .await
        .unwrap();

    assert_eq!(handled, Handled::Ack);
    let replica = orders.replica(&ticket.id).await.unwrap();
    assert_eq!(replica.title, "concert (moved)");
    assert_eq!(replica.price, Money::from_cents(1234));
    assert_eq!(replica.version, 1);
}

#[tokio::test]
async fn ticket_updated_with_an_old_version_is_acked_without_change() {
    let orders = spawn_orders().await;
    let ticket = orders.seed_ticket("concert", 1000).await;
    let listener = TicketUpdatedListener::new(orders.tickets(), orders.orders());
    listener
        .handle(
            ticket_updated(&ticket, 1, "v1", 1100),
            &delivery("ticket.updated"),
        )
        .await
        .unwrap();
    listener
        .handle(
            ticket_updated(&ticket, 2, "v2", 1200),
            &delivery("ticket.updated"),
        )
        .await
        .unwrap();

    for stale in [1, 2] {
        let handled = listener
            .handle(
                ticket_updated(&ticket, stale, "stale", 1),
                &delivery("ticket.updated"),
            )
            .await
            .unwrap();
        assert_eq!(handled, Handled::Ack, "v{stale}");
    }
    let replica = orders.replica(&ticket.id).await.unwrap();
    assert_eq!(
        (
            replica.version,
            replica.title.as_str(),
            replica.price.cents()
        ),
        (2, "v2", 1200)
    );
}

#[tokio::test]
async fn ticket_updated_that_skips_a_version_is_retried_later_and_applied_after_its_predecessor() {
    let orders = spawn_orders().await;
    let ticket = orders.seed_ticket("concert", 1000).await;
    let listener = TicketUpdatedListener::new(orders.tickets(), orders.orders());
    let v1 = ticket_updated(&ticket, 1, "v1", 1100);
    let v2 = ticket_updated(&ticket, 2, "v2", 1200);

    let early = listener
        .handle(v2.clone(), &delivery("ticket.updated"))
        .await
        .unwrap();

    assert_eq!(early, Handled::Early);
    let replica = orders.replica(&ticket.id).await.unwrap();
    assert_eq!(
        (replica.version, replica.title.as_str()),
        (0, "concert"),
        "not applied"
    );

    assert_eq!(
        listener
            .handle(v1, &delivery("ticket.updated"))
            .await
            .unwrap(),
        Handled::Ack
    );
    assert_eq!(
        listener
            .handle(v2, &delivery("ticket.updated"))
            .await
            .unwrap(),
        Handled::Ack
    );
    let replica = orders.replica(&ticket.id).await.unwrap();
    assert_eq!(
        (
            replica.version,
            replica.title.as_str(),
            replica.price.cents()
        ),
        (2, "v2", 1200)
    );
}

#[tokio::test]
async fn ticket_updated_for_a_ticket_not_yet_replicated_is_retried_later() {
    let orders = spawn_orders().await;
    let listener = TicketUpdatedListener::new(orders.tickets(), orders.orders());
    let ticket = ticket_created("concert", 1000);

    let handled = listener
        .handle(
            ticket_updated(&ticket, 1, "v1", 1100),
            &delivery("ticket.updated"),
        )
        .await
        .unwrap();

    assert_eq!(handled, Handled::Early);
    assert_eq!(orders.replica(&ticket.id).await, None);
}

#[tokio::test]
async fn ticket_updates_published_out_of_order_end_at_the_latest_version() {
    let orders = spawn_orders().await;
    let ticket = orders.seed_ticket("concert", 1000).await;

    orders
        .bus
        .publish(&ticket_updated(&ticket, 2, "v2", 1200))
        .await
        .unwrap();
    // v2 meets a replica at v0: it is held back, not applied.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(orders.replica(&ticket.id).await.unwrap().version, 0);
    orders
        .bus
        .publish(&ticket_updated(&ticket, 1, "v1", 1100))
        .await
        .unwrap();

    let replica = orders.wait_for_replica(&ticket.id, 2).await;
    assert_eq!(
        (
            replica.version,
            replica.title.as_str(),
            replica.price.cents()
        ),
        (2, "v2", 1200)
    );
    orders.wait_until_consumed("ticket.updated").await;
}

#[tokio::test]
async fn ticket_updated_before_ticket_created_is_applied_once_the_ticket_arrives() {
    let orders = spawn_orders().await;
    let ticket = ticket_created("concert", 1000);

    orders
        .bus
        .publish(&ticket_updated(&ticket, 1, "v1", 1100))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    orders.bus.publish(&ticket).await.unwrap();

    let replica = orders.wait_for_replica(&ticket.id, 1).await;
    assert_eq!(
        (replica.title.as_str(), replica.price.cents()),
        ("v1", 1100)
    );
}

// --- expiration.complete ------------------------------------------------------------

#[tokio::test]
async fn expiration_cancels_an_open_order_and_publishes_order_cancelled() {
    let orders = spawn_orders().await;
    let ticket = orders.seed_ticket("concert", 2000).await;
    let user = testkit::signin();
    let id = orders.create_order(&user, &ticket.id).await;

    orders.expire(&id).await;

    let order = orders.wait_for_status(&id, "cancelled").await;
    assert_eq!(order.version, 1);
    let cancelled = testkit::wait_for_published::<OrderCancelled>(&orders.bus, 1).await;
    assert_eq!(
        cancelled,
        [OrderCancelled {
            id: id.clone(),
            version: 1,
            ticket: TicketRef {
                id: ticket.id.clone()
            }
        }]
    );
    // The ticket is free again.
    orders.create_order(&testkit::signin(), &ticket.id).await;
}

#[tokio::test]
async fn expiration_leaves_a_complete_order_alone() {
    let orders = spawn_orders().await;
    let ticket = orders.seed_ticket("concert", 2000).await;
    let id = orders.create_order(&testkit::signin(), &ticket.id).await;
    orders.pay(&id).await;

    orders.expire(&id).await;
    orders.wait_until_consumed("expiration.complete").await;

    let order = orders.order(&id).await;
    assert_eq!((order.status, order.version), (OrderStatus::Complete, 1));
    assert!(
        testkit::published::<OrderCancelled>(&orders.bus)
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn expiration_of_a_cancelled_or_unknown_order_is_acked_without_an_event() {
    let orders = spawn_orders().await;
    let ticket = orders.seed_ticket("concert", 2000).await;
    let user = testkit::signin();
    let id = orders.create_order(&user, &ticket.id).await;
    orders
        .app
        .delete(&format!("/api/orders/{id}"), Some(&user))
        .await
        .assert_status(204);
    let listener = ExpirationCompleteListener::new(orders.orders());

    for order_id in [id.clone(), ObjectId::new().to_hex()] {
        let handled = listener
            .handle(
                ExpirationComplete {
                    order_id: order_id.clone(),
                },
                &delivery("expiration.complete"),
            )
            .await
            .unwrap();
        assert_eq!(handled, Handled::Ack, "{order_id}");
    }
    // A malformed id is never acked as if handled.
    let malformed = ExpirationComplete {
        order_id: "not-an-id".to_owned(),
    };
    let handled = listener
        .handle(malformed.clone(), &delivery("expiration.complete"))
        .await;
    assert!(handled.is_err(), "{handled:?}");
    // Through the bus it does not decode: the runner terminates it.
    orders.bus.publish(&malformed).await.unwrap();
    let terminated = testkit::eventually(Duration::from_secs(10), || async {
        testkit::metric(
            &orders.app,
            "bus_events_total",
            &[
                ("consumer", "orders-service-expiration-complete"),
                ("outcome", "terminated"),
            ],
        )
        .await
        .filter(|n| *n >= 1.0)
    })
    .await;
    assert!(terminated.is_some(), "the malformed id was not terminated");
    assert_eq!(orders.order(&id).await.version, 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        testkit::published::<OrderCancelled>(&orders.bus)
            .await
            .len(),
        1
    );
}

// --- payment.created ----------------------------------------------------------------

#[tokio::test]
async fn payment_completes_the_order() {
    let orders = spawn_orders().await;
    let ticket = orders.seed_ticket("concert", 2000).await;
    let user = testkit::signin();
    let id = orders.create_order(&user, &ticket.id).await;

    orders.pay(&id).await;

    let shown = orders
        .app
        .get(&format!("/api/orders/{id}"), Some(&user))
        .await;
    assert_eq!(shown.body["status"], "complete");
    assert_eq!(shown.body["version"], 1);
}

#[tokio::test]
async fn a_redelivered_payment_is_acked_without_change() {
    let orders = spawn_orders().await;
    let ticket = orders.seed_ticket("concert", 2000).await;
    let id = orders.create_order(&testkit::signin(), &ticket.id).await;
    orders.reserve(&id).await;
    let listener = PaymentCreatedListener::new(orders.orders(), orders.tickets());
    let payment = PaymentCreated {
        id: ObjectId::new().to_hex(),
        order_id: id.clone(),
        stripe_id: "ch_1".into(),
    };

    for _ in 0..2 {
        let handled = listener
            .handle(payment.clone(), &delivery("payment.created"))
            .await
            .unwrap();
        assert_eq!(handled, Handled::Ack);
    }
    let order = orders.order(&id).await;
    assert_eq!((order.status, order.version), (OrderStatus::Complete, 1));
}

#[tokio::test]
async fn a_payment_for_a_cancelled_order_leaves_it_cancelled() {
    let orders = spawn_orders().await;
    let ticket = orders.seed_ticket("concert", 2000).await;
    let user = testkit::signin();
    let id = orders.create_order(&user, &ticket.id).await;
    orders
        .app
        .delete(&format!("/api/orders/{id}"), Some(&user))
        .await
        .assert_status(204);
    let listener = PaymentCreatedListener::new(orders.orders(), orders.tickets());

    let handled = listener
        .handle(
            PaymentCreated {
                id: ObjectId::new().to_hex(),
                order_id: id.clone(),
                stripe_id: "ch_1".into(),
            },
            &delivery("payment.created"),
        )
        .await
        .unwrap();

    assert_eq!(handled, Handled::Ack);
    let order = orders.order(&id).await;
    assert_eq!((order.status, order.version), (OrderStatus::Cancelled, 1));
}
