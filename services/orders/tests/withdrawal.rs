//! A ticket its seller withdrew (`ticket.updated` with `withdrawn: true`):
//! it cannot be ordered, and an order for it that tickets never reserved is
//! cancelled with a reason the buyer sees.

mod support;

use common::events::{OrderCancelled, TicketUpdated};
use orders::store::{Cancellation, orders::WITHDRAWN};
use serde_json::json;
use support::spawn_orders;

fn withdrawal(ticket: &common::events::TicketCreated, version: i64) -> TicketUpdated {
    TicketUpdated {
        withdrawn: true,
        ..testkit::ticket_updated(ticket, version)
    }
}

#[tokio::test]
async fn a_withdrawn_ticket_cannot_be_ordered() {
    let orders = spawn_orders().await;
    let ticket = orders.seed_ticket("concert", 2000).await;
    orders.bus.publish(&withdrawal(&ticket, 1)).await.unwrap();
    let replica = orders.wait_for_replica(&ticket.id, 1).await;
    assert!(replica.withdrawn);

    orders
        .order_ticket(&testkit::signin(), &ticket.id)
        .await
        .assert_error(404, "Not Found");
}

#[tokio::test]
async fn an_open_order_for_a_withdrawn_ticket_is_cancelled_with_its_reason() {
    let orders = spawn_orders().await;
    let ticket = orders.seed_ticket("concert", 2000).await;
    let buyer = testkit::signin();
    let order_id = orders.create_order(&buyer, &ticket.id).await;
    let other = orders.seed_ticket("match", 1000).await;
    let untouched = orders.create_order(&buyer, &other.id).await;

    orders.bus.publish(&withdrawal(&ticket, 1)).await.unwrap();
    let order = orders.wait_for_status(&order_id, "cancelled").await;
    assert_eq!(order.cancel_reason.as_deref(), Some(WITHDRAWN));
    assert_eq!(order.version, 1);

    let shown = orders
        .app
        .get(&format!("/api/orders/{order_id}"), Some(&buyer))
        .await;
    shown.assert_status(200);
    assert_eq!(shown.body["status"], json!("cancelled"));
    assert_eq!(shown.body["cancelReason"], json!(WITHDRAWN));

    let cancelled = testkit::wait_for_published::<OrderCancelled>(&orders.bus, 1).await;
    assert_eq!(cancelled.len(), 1);
    assert_eq!(
        (cancelled[0].id.as_str(), cancelled[0].ticket.id.as_str()),
        (order_id.as_str(), ticket.id.as_str())
    );
    // The buyer's other order is not touched, and shows no reason.
    let other_order = orders.order(&untouched).await;
    assert_eq!(other_order.status.as_str(), "created");
    let listed = orders.app.get("/api/orders", Some(&buyer)).await;
    let listed_other = listed
        .body
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["id"] == json!(untouched))
        .unwrap();
    assert!(listed_other.get("cancelReason").is_none());

    // A redelivered withdrawal changes nothing more.
    orders
        .bus
        .publish_raw(
            "ticket.updated",
            1,
            &format!("again:{}", mongodb::bson::oid::ObjectId::new()),
            serde_json::to_vec(&withdrawal(&ticket, 1)).unwrap().into(),
        )
        .await
        .unwrap();
    orders.wait_until_consumed("ticket.updated").await;
    assert_eq!(orders.order(&order_id).await.version, 1);
}

#[tokio::test]
async fn a_paid_order_is_not_cancelled_by_a_late_withdrawal_event() {
    // Tickets refuses to withdraw a reserved ticket, so this cannot happen
    // in the fleet; if such an event ever came, a paid order still stands.
    let orders = spawn_orders().await;
    let ticket = orders.seed_ticket("concert", 2000).await;
    let order_id = orders.create_order(&testkit::signin(), &ticket.id).await;
    orders.pay(&order_id).await;
    orders.bus.publish(&withdrawal(&ticket, 2)).await.unwrap();
    orders.wait_for_replica(&ticket.id, 2).await;
    orders.wait_until_consumed("ticket.updated").await;
    assert_eq!(orders.order(&order_id).await.status.as_str(), "complete");
}

#[tokio::test]
async fn a_payment_for_an_order_whose_ticket_was_withdrawn_cancels_it_instead() {
    use common::bus::{Handled, Listener};
    use common::events::PaymentCreated;
    use orders::events::PaymentCreatedListener;

    let orders = spawn_orders().await;
    let ticket = orders.seed_ticket("concert", 2000).await;
    let order_id = orders.create_order(&testkit::signin(), &ticket.id).await;
    // The replica knows of the withdrawal, its listener has not yet
    // cancelled the order: a payment arrives just then.
    let mut replica = orders.replica(&ticket.id).await.unwrap();
    replica.version += 1;
    replica.withdrawn = true;
    orders.tickets().apply_update(&replica).await.unwrap();

    let listener = PaymentCreatedListener::new(orders.orders(), orders.tickets());
    let handled = listener
        .handle(
            PaymentCreated {
                id: mongodb::bson::oid::ObjectId::new().to_hex(),
                order_id: order_id.clone(),
                stripe_id: "pi_test".into(),
            },
            &testkit::delivery("payment.created"),
        )
        .await
        .unwrap();
    assert_eq!(handled, Handled::Ack);
    let order = orders.order(&order_id).await;
    assert_eq!(order.status.as_str(), "cancelled");
    assert_eq!(order.cancel_reason.as_deref(), Some(WITHDRAWN));
}

// --- a payment that overtakes tickets' decision -------------------------------------

#[tokio::test]
async fn a_payment_before_the_reservation_keeps_the_order_until_the_reservation_completes_it() {
    use common::bus::{Handled, Listener};
    use orders::events::PaymentCreatedListener;

    let orders = spawn_orders().await;
    let ticket = orders.seed_ticket("concert", 2000).await;
    let buyer = testkit::signin();
    let order_id = orders.create_order(&buyer, &ticket.id).await;
    let listener = PaymentCreatedListener::new(orders.orders(), orders.tickets());

    // Tickets has not reserved the ticket for the order yet: it may still
    // refuse (a withdrawal that won), so the order is not completed; but
    // the buyer paid in time, and the payment is recorded on the order.
    let paid = testkit::payment_created(&order_id);
    let handled = listener
        .handle(paid.clone(), &testkit::delivery("payment.created"))
        .await
        .unwrap();
    assert_eq!(handled, Handled::Ack);
    let order = orders.order(&order_id).await;
    assert_eq!(order.status.as_str(), "created");
    assert_eq!(order.payment_id.as_deref(), Some(paid.id.as_str()));
    assert_eq!(
        order.version, 0,
        "no new version: no other service follows it"
    );

    // Neither the clock nor the buyer can cancel it now.
    orders.expire(&order_id).await;
    orders.wait_until_consumed("expiration.complete").await;
    orders
        .app
        .delete(&format!("/api/orders/{order_id}"), Some(&buyer))
        .await
        .assert_error(400, "Cannot cancel a completed order");
    assert_eq!(orders.order(&order_id).await.status.as_str(), "created");

    // The reservation reaching the replica completes it; nothing cancelled.
    orders.reserve(&order_id).await;
    let order = orders.wait_for_status(&order_id, "complete").await;
    assert_eq!(order.version, 1);
    assert!(
        testkit::published::<OrderCancelled>(&orders.bus)
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn a_cancel_decided_on_an_order_read_before_its_payment_was_recorded_is_refused() {
    let orders = spawn_orders().await;
    let ticket = orders.seed_ticket("concert", 2000).await;
    let order_id = orders.create_order(&testkit::signin(), &ticket.id).await;
    let store = orders.orders();
    // The expiration listener read the order; then the payment is recorded
    // (no new version); then the listener's compare-and-set is tried.
    let read_before = orders.order(&order_id).await;
    let recorded = store
        .record_payment(read_before.clone(), "pay_1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(recorded.payment_id.as_deref(), Some("pay_1"));
    assert_eq!(recorded.version, read_before.version);

    match store.cancel(read_before.clone()).await.unwrap() {
        Cancellation::Complete(order) => assert_eq!(order.payment_id.as_deref(), Some("pay_1")),
        other => panic!("an order paid in time was not kept: {other:?}"),
    }
    assert_eq!(orders.order(&order_id).await.status.as_str(), "created");

    // A withdrawal that won still cancels it (and payments refunds).
    match store.cancel_withdrawn(read_before).await.unwrap() {
        Cancellation::Cancelled(order) => {
            assert_eq!(order.cancel_reason.as_deref(), Some(WITHDRAWN));
            assert_eq!(order.version, 1);
        }
        other => panic!("the withdrawal did not cancel the order: {other:?}"),
    }
}

#[tokio::test]
async fn a_payment_before_a_withdrawal_that_won_ends_with_the_order_cancelled() {
    let orders = spawn_orders().await;
    let ticket = orders.seed_ticket("concert", 2000).await;
    let order_id = orders.create_order(&testkit::signin(), &ticket.id).await;

    // The buyer's money reaches orders first; then the withdrawal, which
    // tickets applied instead of the reservation.
    orders
        .bus
        .publish(&testkit::payment_created(&order_id))
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    orders.bus.publish(&withdrawal(&ticket, 1)).await.unwrap();

    let order = orders.wait_for_status(&order_id, "cancelled").await;
    assert_eq!(order.cancel_reason.as_deref(), Some(WITHDRAWN));
    orders.wait_until_consumed("payment.created").await;
    assert_eq!(orders.order(&order_id).await.status.as_str(), "cancelled");
}

#[tokio::test]
async fn a_replica_from_before_reservations_were_kept_completes_as_it_used_to() {
    use common::bus::{Handled, Listener};
    use orders::events::PaymentCreatedListener;

    let orders = spawn_orders().await;
    let ticket = orders.seed_ticket("concert", 2000).await;
    let order_id = orders.create_order(&testkit::signin(), &ticket.id).await;
    orders
        .db
        .collection::<mongodb::bson::Document>("tickets")
        .update_one(
            mongodb::bson::doc! { "_id": support::oid(&ticket.id) },
            mongodb::bson::doc! { "$unset": { "orderId": "" } },
        )
        .await
        .unwrap();
    assert_eq!(orders.replica(&ticket.id).await.unwrap().reserved_for, None);

    let listener = PaymentCreatedListener::new(orders.orders(), orders.tickets());
    let handled = listener
        .handle(
            testkit::payment_created(&order_id),
            &testkit::delivery("payment.created"),
        )
        .await
        .unwrap();
    assert_eq!(handled, Handled::Ack);
    assert_eq!(orders.order(&order_id).await.status.as_str(), "complete");
}
