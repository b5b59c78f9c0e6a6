//! The order listeners — the original's `order-created-listener.test.ts` and
//! `order-cancelled-listener.test.ts` — through the real bus: an event
//! published as orders would, handled by the running service's durable
//! consumer, its effect seen over HTTP and on the stream.

use common::{
    bus::{Handled, Listener},
    events::{OrderCancelled, OrderCreated, TicketRef, TicketUpdated},
};
use mongodb::bson::oid::ObjectId;
use serde_json::{Value, json};
use tickets::events::{OrderCancelledListener, OrderCreatedListener};

use crate::helpers::{TestTickets, id_of, order_cancelled, order_created, spawn, user};

/// A ticket reserved by a fresh order, once tickets has said so.
async fn reserved_ticket(t: &TestTickets) -> (Value, OrderCreated) {
    let (_, cookie) = user();
    let ticket = t.create_ticket(&cookie, "concert", json!(20)).await;
    let order = order_created(&ticket);
    t.publish(&order).await;
    let ticket = t
        .ticket_when(&id_of(&ticket), "its orderId", |ticket| {
            ticket["orderId"] == json!(order.id)
        })
        .await;
    (ticket, order)
}

/// A listener of the service's collection, called directly (its outbox is
/// relayed by the running service's periodic scan).
fn direct(t: &TestTickets) -> (OrderCreatedListener, OrderCancelledListener) {
    (
        OrderCreatedListener::new(t.store.clone()),
        OrderCancelledListener::new(t.store.clone()),
    )
}

#[tokio::test]
async fn order_created_reserves_the_ticket_publishes_and_acks() {
    let t = spawn().await;
    let (ticket, order) = reserved_ticket(&t).await;

    assert_eq!(ticket["orderId"], json!(order.id));
    assert_eq!(ticket["version"], json!(1));
    t.wait_until_consumed::<OrderCreated>().await;

    let events = testkit::wait_for_published::<TicketUpdated>(&t.bus, 1).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].id, id_of(&ticket));
    assert_eq!(events[0].version, 1);
    assert_eq!(events[0].order_id.as_deref(), Some(order.id.as_str()));
    assert_eq!(
        (events[0].title.as_str(), events[0].price),
        ("concert", order.ticket.price)
    );
}

#[tokio::test]
async fn a_duplicate_order_created_is_a_no_op() {
    let t = spawn().await;
    let (ticket, order) = reserved_ticket(&t).await;
    let id = id_of(&ticket);

    // Redelivered through the bus under a new message id …
    t.publish_again(&order).await;
    t.wait_until_consumed::<OrderCreated>().await;
    // … and handed to the listener directly: acknowledged either way.
    let (created, _) = direct(&t);
    let handled = created
        .handle(order.clone(), &testkit::delivery("order.created"))
        .await
        .unwrap();
    assert_eq!(handled, Handled::Ack);

    assert_eq!(t.ticket(&id).await, ticket, "unchanged");
    testkit::wait_for_published::<TicketUpdated>(&t.bus, 1).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(t.updates_of(&id).await.len(), 1, "one ticket.updated only");
}

#[tokio::test]
async fn order_cancelled_releases_the_ticket_and_publishes() {
    let t = spawn().await;
    let (ticket, order) = reserved_ticket(&t).await;
    let id = id_of(&ticket);

    t.publish(&order_cancelled(&order)).await;
    let released = t
        .ticket_when(&id, "released", |ticket| ticket.get("orderId").is_none())
        .await;
    assert_eq!(released["version"], json!(2));
    t.wait_until_consumed::<OrderCancelled>().await;

    let events = testkit::wait_for_published::<TicketUpdated>(&t.bus, 2).await;
    assert_eq!(events.iter().map(|e| e.version).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(events[1].order_id, None);
    assert!(
        serde_json::to_value(&events[1])
            .unwrap()
            .get("orderId")
            .is_none()
    );
    // For sale again.
    assert_eq!(t.list("").await.body, json!([released]));
}

#[tokio::test]
async fn a_stale_order_cancelled_changes_nothing() {
    let t = spawn().await;
    let (ticket, order) = reserved_ticket(&t).await;
    let id = id_of(&ticket);
    // The cancel of an earlier order of the same ticket arrives late.
    let mut stale = order_cancelled(&order);
    stale.id = ObjectId::new().to_hex();

    t.publish(&stale).await;
    t.wait_until_consumed::<OrderCancelled>().await;

    assert_eq!(
        t.ticket(&id).await,
        ticket,
        "still reserved by the newer order, same version"
    );
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        t.updates_of(&id).await.len(),
        1,
        "no ticket.updated for a stale cancel"
    );
}

#[tokio::test]
async fn a_cancel_handled_before_its_order_created_never_reserves_the_ticket() {
    // The two subjects have separate consumers: after a backlog, a quick
    // cancel can be handled before the creation of its order.
    let t = spawn().await;
    let ticket = t
        .create_ticket(&testkit::signin(), "concert", json!(20))
        .await;
    let id = id_of(&ticket);
    let order = order_created(&ticket);

    t.publish(&order_cancelled(&order)).await;
    t.wait_until_consumed::<OrderCancelled>().await;
    t.publish(&order).await;
    t.wait_until_consumed::<OrderCreated>().await;

    assert_eq!(t.ticket(&id).await, ticket, "still for sale, version 0");
    assert!(t.updates_of(&id).await.is_empty());
}

#[tokio::test]
async fn a_new_order_waits_for_the_release_by_the_previous_one() {
    let t = spawn().await;
    let (ticket, first) = reserved_ticket(&t).await;
    let id = id_of(&ticket);
    let second = order_created(&ticket);

    // The second order's creation overtakes the first one's cancel.
    t.publish(&second).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        t.ticket(&id).await["orderId"],
        json!(first.id),
        "not taken from the first order"
    );
    t.publish(&order_cancelled(&first)).await;

    let ticket = t
        .ticket_when(&id, "the second order", |ticket| {
            ticket["orderId"] == json!(second.id)
        })
        .await;
    assert_eq!(ticket["version"], json!(3), "reserved, released, reserved");
    let events = testkit::wait_for_published::<TicketUpdated>(&t.bus, 3).await;
    let holders: Vec<_> = events
        .iter()
        .map(|e| (e.version, e.order_id.clone()))
        .collect();
    assert_eq!(
        holders,
        [
            (1, Some(first.id.clone())),
            (2, None),
            (3, Some(second.id.clone()))
        ]
    );
}

#[tokio::test]
async fn events_for_unknown_tickets_or_with_malformed_ids_are_terminated_never_acked() {
    let t = spawn().await;
    let ticket = t
        .create_ticket(&testkit::signin(), "concert", json!(20))
        .await;
    let mut unknown = order_created(&ticket);
    unknown.ticket.id = ObjectId::new().to_hex();
    let mut malformed = order_created(&ticket);
    malformed.ticket.id = "not-a-ticket".into();

    let (created, cancelled) = direct(&t);
    let cancel_of = |event: &OrderCreated| OrderCancelled {
        id: event.id.clone(),
        version: 1,
        ticket: TicketRef {
            id: event.ticket.id.clone(),
        },
    };
    let created_delivery = testkit::delivery("order.created");
    let cancelled_delivery = testkit::delivery("order.cancelled");
    // A ticket tickets never had: it will never appear, so the event can
    // never be handled.
    let handled = created.handle(unknown.clone(), &created_delivery).await;
    assert!(matches!(handled, Ok(Handled::Invalid(_))), "{handled:?}");
    let handled = cancelled
        .handle(cancel_of(&unknown), &cancelled_delivery)
        .await;
    assert!(matches!(handled, Ok(Handled::Invalid(_))), "{handled:?}");
    // Never acked as if handled: an error, which the runner retries and
    // then terminates.
    let handled = created.handle(malformed.clone(), &created_delivery).await;
    assert!(handled.is_err(), "{handled:?}");
    let handled = cancelled
        .handle(cancel_of(&malformed), &cancelled_delivery)
        .await;
    assert!(handled.is_err(), "{handled:?}");

    t.publish(&unknown).await;
    t.publish(&malformed).await;
    t.wait_until_consumed::<OrderCreated>().await;
    assert_eq!(t.ticket(&id_of(&ticket)).await, ticket);
    assert!(testkit::published::<TicketUpdated>(&t.bus).await.is_empty());
    // Through the bus both are terminated: the unknown ticket by the
    // listener, the malformed id because it does not even decode.
    let terminated = testkit::metric(
        &t.app,
        "bus_events_total",
        &[
            ("consumer", "tickets-service-order-created"),
            ("outcome", "terminated"),
        ],
    )
    .await;
    assert!(terminated.is_some_and(|n| n >= 2.0), "{terminated:?}");
}
