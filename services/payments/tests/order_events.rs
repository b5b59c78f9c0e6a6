//! The order replica: `order.created` and `order.cancelled`, handled directly
//! (to see each outcome) and through the bus (to see the runner redeliver an
//! event that arrived early).

mod support;

use std::time::Duration;

use common::{
    bus::{Handled, Listener},
    events::OrderStatus,
    money::Money,
};
use mongodb::bson::oid::ObjectId;
use payments::{
    events::{OrderCancelledListener, OrderCreatedListener},
    store::{Order, Orders},
};
use support::{Harness, order_cancelled_event, order_created_event};

async fn orders() -> Orders {
    Orders::new(&testkit::database("payments").await)
}

async fn created(orders: &Orders, id: ObjectId, version: i64, user: &str, price: Money) -> Handled {
    OrderCreatedListener {
        orders: orders.clone(),
    }
    .handle(
        order_created_event(id, version, user, price),
        &testkit::delivery("order.created"),
    )
    .await
    .expect("order.created failed")
}

async fn cancelled(orders: &Orders, id: ObjectId, version: i64) -> Handled {
    OrderCancelledListener {
        orders: orders.clone(),
        settle: None,
    }
    .handle(
        order_cancelled_event(id, version),
        &testkit::delivery("order.cancelled"),
    )
    .await
    .expect("order.cancelled failed")
}

#[tokio::test]
async fn order_created_stores_the_replica_with_the_price_in_cents() {
    let orders = orders().await;
    let id = ObjectId::new();
    assert_eq!(
        created(&orders, id, 0, "user-1", Money::from_cents(1250)).await,
        Handled::Ack
    );
    assert_eq!(
        orders.find(id).await.unwrap(),
        Some(Order {
            id,
            version: 0,
            user_id: "user-1".into(),
            price: Money::from_cents(1250),
            status: OrderStatus::Created,
            declined_attempts: 0,
        })
    );
}

#[tokio::test]
async fn a_redelivered_order_created_is_acked_and_changes_nothing() {
    let orders = orders().await;
    let id = ObjectId::new();
    created(&orders, id, 0, "user-1", Money::from_cents(1250)).await;
    cancelled(&orders, id, 1).await;
    assert_eq!(
        created(&orders, id, 0, "user-1", Money::from_cents(1250)).await,
        Handled::Ack
    );
    let order = orders.find(id).await.unwrap().unwrap();
    assert_eq!((order.version, order.status), (1, OrderStatus::Cancelled));
}

#[tokio::test]
async fn order_cancelled_at_the_next_version_cancels_the_replica() {
    let orders = orders().await;
    let id = ObjectId::new();
    created(&orders, id, 0, "user-1", Money::from_cents(500)).await;
    assert_eq!(cancelled(&orders, id, 1).await, Handled::Ack);
    let order = orders.find(id).await.unwrap().unwrap();
    assert_eq!((order.version, order.status), (1, OrderStatus::Cancelled));
    assert_eq!(order.price, Money::from_cents(500));
}

#[tokio::test]
async fn a_repeated_or_stale_order_cancelled_is_acked_as_a_duplicate() {
    let orders = orders().await;
    let id = ObjectId::new();
    created(&orders, id, 3, "user-1", Money::from_cents(500)).await;
    assert_eq!(cancelled(&orders, id, 4).await, Handled::Ack);
    assert_eq!(cancelled(&orders, id, 4).await, Handled::Ack);
    assert_eq!(cancelled(&orders, id, 2).await, Handled::Ack);
    let order = orders.find(id).await.unwrap().unwrap();
    assert_eq!((order.version, order.status), (4, OrderStatus::Cancelled));
}

#[tokio::test]
async fn an_order_cancelled_ahead_of_the_replica_is_retried_later() {
    let orders = orders().await;
    let id = ObjectId::new();
    // No replica at all yet.
    assert_eq!(cancelled(&orders, id, 1).await, Handled::Early);
    // A replica two versions behind.
    created(&orders, id, 0, "user-1", Money::from_cents(500)).await;
    assert_eq!(cancelled(&orders, id, 2).await, Handled::Early);
    let order = orders.find(id).await.unwrap().unwrap();
    assert_eq!((order.version, order.status), (0, OrderStatus::Created));
}

#[tokio::test]
async fn an_event_with_a_malformed_order_id_is_never_acked_as_handled() {
    let orders = orders().await;
    let mut event = order_created_event(ObjectId::new(), 0, "user-1", Money::from_cents(500));
    event.id = "not-an-object-id".into();
    // Through the bus it does not decode (the runner terminates it); built
    // by hand it is an error, which the runner retries, then terminates.
    let payload = serde_json::to_value(&event).unwrap();
    assert!(serde_json::from_value::<common::events::OrderCreated>(payload).is_err());
    let handled = OrderCreatedListener {
        orders: orders.clone(),
    }
    .handle(event, &testkit::delivery("order.created"))
    .await;
    assert!(handled.is_err(), "{handled:?}");
}

#[tokio::test]
async fn through_the_bus_a_cancel_published_before_its_order_is_applied_once_the_order_arrives() {
    let h = Harness::spawn().await;
    let id = ObjectId::new();
    h.bus.publish(&order_cancelled_event(id, 1)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    h.bus
        .publish(&order_created_event(
            id,
            0,
            "user-1",
            Money::from_cents(700),
        ))
        .await
        .unwrap();
    let order = h
        .wait_for_order(id, |o| {
            o.is_some_and(|o| o.status == OrderStatus::Cancelled)
        })
        .await
        .unwrap();
    assert_eq!((order.version, order.price), (1, Money::from_cents(700)));
}
