//! The guarantees the original did not have (DESIGN §4, §7): exactly one
//! order per ticket enforced by the database, and no event lost when the
//! service dies between its write and its publish.

mod support;

use std::{collections::HashSet, time::Duration};

use chrono::Utc;
use common::events::{OrderCancelled, OrderCreated, OrderStatus};
use common::money::Money;
use mongodb::bson::{doc, oid::ObjectId};
use orders::store::{Cancellation, CreateError, Order, holds};
use support::{oid, settings, spawn_orders, spawn_with};

#[tokio::test]
async fn fifty_buyers_racing_for_one_ticket_get_exactly_one_order() {
    let orders = spawn_orders().await;
    let ticket = orders.seed_ticket("final", 50_000).await;

    let attempts = (0..50).map(|_| {
        let cookie = testkit::signin_as(&ObjectId::new().to_hex(), "buyer@test.com");
        let orders = &orders;
        let ticket_id = ticket.id.clone();
        async move { orders.order_ticket(&cookie, &ticket_id).await }
    });
    let replies = futures::future::join_all(attempts).await;

    let winners: Vec<_> = replies.iter().filter(|r| r.status == 201).collect();
    assert_eq!(
        winners.len(),
        1,
        "statuses: {:?}",
        replies.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    for loser in replies.iter().filter(|r| r.status != 201) {
        loser.assert_error(400, "Ticket is already reserved");
    }
    let stored = orders
        .db
        .collection::<Order>("orders")
        .count_documents(doc! { "ticketId": oid(&ticket.id) })
        .await
        .unwrap();
    assert_eq!(stored, 1);

    let created = testkit::wait_for_published::<OrderCreated>(&orders.bus, 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let created_later = testkit::published::<OrderCreated>(&orders.bus).await;
    assert_eq!(created.len(), 1);
    assert_eq!(created_later.len(), 1);
    assert_eq!(created[0].id, winners[0].body["id"].as_str().unwrap());
}

#[tokio::test]
async fn after_a_cancel_the_ticket_can_be_ordered_again() {
    let orders = spawn_orders().await;
    let ticket = orders.seed_ticket("concert", 2000).await;
    let first_buyer = testkit::signin();
    let first = orders.create_order(&first_buyer, &ticket.id).await;
    orders
        .app
        .delete(&format!("/api/orders/{first}"), Some(&first_buyer))
        .await
        .assert_status(204);

    let second = orders.create_order(&testkit::signin(), &ticket.id).await;
    orders
        .order_ticket(&testkit::signin(), &ticket.id)
        .await
        .assert_error(400, "Ticket is already reserved");

    let created = testkit::wait_for_published::<OrderCreated>(&orders.bus, 2).await;
    let ids: HashSet<_> = created.iter().map(|e| e.id.clone()).collect();
    assert_eq!(ids, HashSet::from([first.clone(), second.clone()]));
    let cancelled = testkit::wait_for_published::<OrderCancelled>(&orders.bus, 1).await;
    assert_eq!(cancelled.len(), 1);
    assert_eq!(cancelled[0].id, first);
}

#[tokio::test]
async fn fifty_orders_at_once_by_one_buyer_hold_exactly_the_allowed_four() {
    let orders = spawn_orders().await;
    let mut tickets = Vec::new();
    for n in 0..50 {
        tickets.push(orders.seed_ticket(&format!("seat {n}"), 1_000).await.id);
    }
    let buyer = ObjectId::new().to_hex();
    let cookie = testkit::signin_as(&buyer, "hoarder@test.com");
    let replies = futures::future::join_all(
        tickets
            .iter()
            .map(|ticket| orders.order_ticket(&cookie, ticket)),
    )
    .await;
    let created: Vec<_> = replies.iter().filter(|r| r.status == 201).collect();
    assert_eq!(
        created.len(),
        4,
        "statuses: {:?}",
        replies.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    for refused in replies.iter().filter(|r| r.status != 201) {
        refused.assert_error(400, "Too many active reservations");
    }

    // Cancelling one frees its slot for exactly one more order.
    let first = created[0].body["id"].as_str().unwrap().to_owned();
    orders
        .app
        .delete(&format!("/api/orders/{first}"), Some(&cookie))
        .await
        .assert_status(204);
    let free: Vec<&String> = tickets
        .iter()
        .filter(|t| !created.iter().any(|r| r.body["ticket"]["id"] == t.as_str()))
        .collect();
    orders
        .order_ticket(&cookie, free[0])
        .await
        .assert_status(201);
    orders
        .order_ticket(&cookie, free[1])
        .await
        .assert_error(400, "Too many active reservations");
    // Someone else is not affected.
    let other = testkit::signin_as(&ObjectId::new().to_hex(), "other@test.com");
    orders
        .order_ticket(&other, free[2])
        .await
        .assert_status(201);
}

#[tokio::test]
async fn a_paid_order_frees_its_buyers_slot_and_keeps_its_ticket() {
    let orders = spawn_orders().await;
    let store = orders.orders();
    let expires = Utc::now() + Duration::from_secs(60);
    let price = Money::from_cents(100);
    let first = Order::new("buyer", ObjectId::new(), expires);
    store.create(&first, price, 1).await.unwrap();
    assert!(matches!(
        store
            .create(&Order::new("buyer", ObjectId::new(), expires), price, 1)
            .await,
        Err(CreateError::TooManyActive)
    ));
    let ticket = first.ticket_id;
    store.complete(first).await.unwrap();
    store
        .create(&Order::new("buyer", ObjectId::new(), expires), price, 1)
        .await
        .unwrap();
    assert!(matches!(
        store
            .create(&Order::new("someone", ticket, expires), price, 1)
            .await,
        Err(CreateError::TicketReserved)
    ));
}

#[tokio::test]
async fn the_database_itself_refuses_a_second_active_order_for_a_ticket() {
    // The store against the server directly: the `_id` index of the holds,
    // not any check in the code, is what says no.
    let orders = spawn_orders().await;
    let store = orders.orders();
    let ticket = ObjectId::new();
    let expires = Utc::now() + Duration::from_secs(60);
    let price = Money::from_cents(100);

    let first = Order::new("u1", ticket, expires);
    store.create(&first, price, 4).await.unwrap();
    let second = Order::new("u2", ticket, expires);
    assert!(matches!(
        store.create(&second, price, 4).await,
        Err(CreateError::TicketReserved)
    ));

    // Cancelled orders give their hold back: any number of them can sit
    // next to the one active order.
    let mut current = first;
    for n in 0..3 {
        assert!(
            matches!(
                store.cancel(current).await.unwrap(),
                Cancellation::Cancelled(_)
            ),
            "cancel {n}"
        );
        let next = Order::new("u3", ticket, expires);
        store
            .create(&next, price, 4)
            .await
            .unwrap_or_else(|e| panic!("reorder {n}: {e}"));
        current = next;
    }
    let active = orders
        .db
        .collection::<Order>("orders")
        .count_documents(
            doc! { "ticketId": ticket, "status": { "$ne": OrderStatus::Cancelled.as_str() } },
        )
        .await
        .unwrap();
    assert_eq!(active, 1);
    // A different ticket is not affected.
    store
        .create(&Order::new("u2", ObjectId::new(), expires), price, 4)
        .await
        .unwrap();
}

/// `order` as a writer that read it before someone else changed it: the
/// stored order is one version ahead of the copy returned.
async fn changed_behind_its_back(orders: &support::TestOrders, order: &Order) -> Order {
    orders
        .db
        .collection::<mongodb::bson::Document>("orders")
        .update_one(doc! { "_id": order.id }, doc! { "$inc": { "version": 1 } })
        .await
        .unwrap();
    order.clone()
}

#[tokio::test]
async fn a_compare_and_set_that_keeps_losing_is_a_409_not_a_500() {
    let orders = spawn_orders().await;
    let expires = Utc::now() + Duration::from_secs(60);
    let price = Money::from_cents(100);
    // One round only: the stale copy loses it, and that was the last.
    let store = orders.orders().with_cas_rounds(1);
    let order = Order::new("u1", ObjectId::new(), expires);
    store.create(&order, price, 4).await.unwrap();

    let stale = changed_behind_its_back(&orders, &order).await;
    for err in [
        store.cancel(stale.clone()).await.unwrap_err(),
        store.complete(stale.clone()).await.unwrap_err(),
    ] {
        assert_eq!(err.status(), 409, "{err:?}");
        assert!(
            matches!(&err, common::Error::Conflict(m) if m == "The order was changed at the same time; please try again"),
            "{err:?}"
        );
    }
    let stored = store.find(order.id).await.unwrap().unwrap();
    assert_eq!(
        (stored.status, stored.version),
        (OrderStatus::Created, 1),
        "nothing written"
    );

    // With the fleet's rounds the same stale copy decides again and wins.
    let store = orders.orders();
    let stale = changed_behind_its_back(&orders, &order).await;
    let Cancellation::Cancelled(cancelled) = store.cancel(stale).await.unwrap() else {
        panic!("not cancelled");
    };
    assert_eq!(cancelled.version, 3);
}

/// A hold as a crash leaves it: claimed at `age` ago by `order_id`.
async fn leave_hold(orders: &support::TestOrders, key: &str, order_id: ObjectId, age: Duration) {
    leave_hold_of(orders, key, order_id, "someone", age).await
}

/// The same, claimed for `user_id`'s order.
async fn leave_hold_of(
    orders: &support::TestOrders,
    key: &str,
    order_id: ObjectId,
    user_id: &str,
    age: Duration,
) {
    let at = mongodb::bson::DateTime::from_millis(
        mongodb::bson::DateTime::now().timestamp_millis() - age.as_millis() as i64,
    );
    orders
        .db
        .collection::<mongodb::bson::Document>(holds::COLLECTION)
        .insert_one(doc! { "_id": key, "orderId": order_id, "userId": user_id, "at": at })
        .await
        .unwrap();
}

#[tokio::test]
async fn a_hold_whose_order_was_cancelled_or_never_written_is_given_back_and_no_sooner() {
    // What a crash between two writes leaves: the order cancelled but its
    // hold still there, or the hold claimed but the order never inserted.
    let orders = spawn_orders().await;
    let store = orders.orders();
    let expires = Utc::now() + Duration::from_secs(60);
    let price = Money::from_cents(100);

    // A cancelled order whose hold survived: the next buyer gets the ticket.
    let cancelled = Order::new("u1", ObjectId::new(), expires);
    store.create(&cancelled, price, 4).await.unwrap();
    let ticket = cancelled.ticket_id;
    store.cancel(cancelled.clone()).await.unwrap();
    leave_hold(
        &orders,
        &holds::ticket_key(ticket),
        cancelled.id,
        Duration::ZERO,
    )
    .await;
    store
        .create(&Order::new("u2", ticket, expires), price, 4)
        .await
        .expect("a cancelled order's hold is given back");

    // A hold whose order is still being written (younger than the grace)
    // stands: that order may land any moment.
    let ticket = ObjectId::new();
    let in_flight = ObjectId::new();
    leave_hold_of(
        &orders,
        &holds::ticket_key(ticket),
        in_flight,
        "u9",
        Duration::from_secs(1),
    )
    .await;
    assert!(matches!(
        store
            .create(&Order::new("u3", ticket, expires), price, 4)
            .await,
        Err(CreateError::TicketReserved)
    ));
    // ...except to its own buyer asking again (the first answer was lost):
    // the first attempt is given up at once and can never land.
    store
        .create(&Order::new("u9", ticket, expires), price, 4)
        .await
        .expect("the same buyer's retry supersedes its lost attempt");
    let late = orders
        .db
        .collection::<mongodb::bson::Document>("orders")
        .insert_one(doc! { "_id": in_flight, "ticketId": ticket, "status": "created" })
        .await;
    assert!(late.is_err_and(|e| common::mongo::is_duplicate_key(&e)));

    // Older than the grace: its order is given up for good (a tombstone
    // takes its id, so a late insert of it fails) and the ticket is free.
    let ticket = ObjectId::new();
    let lost = ObjectId::new();
    leave_hold(
        &orders,
        &holds::ticket_key(ticket),
        lost,
        holds::CREATION_GRACE + Duration::from_secs(1),
    )
    .await;
    store
        .create(&Order::new("u4", ticket, expires), price, 4)
        .await
        .expect("an abandoned hold is given back");
    let late = orders
        .db
        .collection::<mongodb::bson::Document>("orders")
        .insert_one(doc! { "_id": lost, "ticketId": ticket, "status": "created" })
        .await;
    assert!(
        late.is_err_and(|e| common::mongo::is_duplicate_key(&e)),
        "the given-up order can never be written"
    );
    assert!(
        store.find(lost).await.unwrap().is_none(),
        "a tombstone is no order"
    );

    // The same for a buyer's slot: a stale one does not count against them.
    let buyer = "u5";
    for n in 0..2 {
        leave_hold(
            &orders,
            &holds::slot_key(buyer, n),
            ObjectId::new(),
            holds::CREATION_GRACE * 2,
        )
        .await;
    }
    for _ in 0..2 {
        store
            .create(&Order::new(buyer, ObjectId::new(), expires), price, 2)
            .await
            .expect("stale slots are given back");
    }
    assert!(matches!(
        store
            .create(&Order::new(buyer, ObjectId::new(), expires), price, 2)
            .await,
        Err(CreateError::TooManyActive)
    ));
}

#[tokio::test]
async fn an_order_created_before_a_crash_is_published_after_the_restart_exactly_once() {
    let mut crashing = settings();
    crashing.outbox_relay = false;
    let orders = spawn_with(crashing.clone()).await;
    let ticket = orders.seed_ticket("concert", 2000).await;
    let id = orders.create_order(&testkit::signin(), &ticket.id).await;

    // "Crash": the order is written, its event never left.
    orders.app.shutdown().cancel();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        testkit::published::<OrderCreated>(&orders.bus)
            .await
            .is_empty()
    );

    let mut restarted = crashing;
    restarted.outbox_relay = true;
    let again = spawn_with(restarted).await;

    let created = testkit::wait_for_published::<OrderCreated>(&again.bus, 1).await;
    assert_eq!(created.len(), 1);
    assert_eq!(created[0].id, id);
    assert_eq!(created[0].ticket.id, ticket.id);
    // The outbox is emptied, and another scan does not publish it again.
    let drained = testkit::eventually(Duration::from_secs(10), || async {
        let raw = again
            .db
            .collection::<mongodb::bson::Document>("orders")
            .find_one(doc! { "_id": oid(&id) })
            .await
            .ok()??;
        raw.get_array("outbox")
            .map_or(true, |o| o.is_empty())
            .then_some(())
    })
    .await;
    assert!(drained.is_some(), "the outbox was never emptied");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        testkit::published::<OrderCreated>(&again.bus).await.len(),
        1
    );
}
