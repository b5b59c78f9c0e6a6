//! `PUT /api/tickets/{id}` — the original's `update.test.ts`, and the order
//! of its checks: signed in → valid → exists → not reserved → owner.

use common::{events::TicketUpdated, money::Money};
use mongodb::bson::oid::ObjectId;
use serde_json::json;

use crate::helpers::{id_of, order_created, spawn, user};

#[tokio::test]
async fn returns_404_for_an_unknown_ticket() {
    let t = spawn().await;
    let unknown = ObjectId::new().to_hex();
    t.put(
        &unknown,
        Some(&testkit::signin()),
        json!({"title": "concert", "price": 20}),
    )
    .await
    .assert_error(404, "Not Found");
    t.put(
        "not-an-id",
        Some(&testkit::signin()),
        json!({"title": "concert", "price": 20}),
    )
    .await
    .assert_error(404, "Not Found");
}

#[tokio::test]
async fn returns_401_when_not_signed_in() {
    let t = spawn().await;
    let ticket = t
        .create_ticket(&testkit::signin(), "concert", json!(20))
        .await;
    t.put(
        &id_of(&ticket),
        None,
        json!({"title": "concert", "price": 20}),
    )
    .await
    .assert_error(401, "Not authorized");
    // Authentication comes first, even for an unknown ticket and a bad body.
    t.put(&ObjectId::new().to_hex(), None, json!({}))
        .await
        .assert_error(401, "Not authorized");
}

#[tokio::test]
async fn returns_401_when_another_user_edits_the_ticket() {
    let t = spawn().await;
    let ticket = t
        .create_ticket(&testkit::signin(), "concert", json!(20))
        .await;
    t.put(
        &id_of(&ticket),
        Some(&testkit::signin()),
        json!({"title": "mine now", "price": 1000}),
    )
    .await
    .assert_error(401, "Not authorized");
    assert_eq!(t.ticket(&id_of(&ticket)).await, ticket, "unchanged");
}

#[tokio::test]
async fn returns_400_for_an_invalid_title_or_price() {
    let t = spawn().await;
    let (_, cookie) = user();
    let ticket = t.create_ticket(&cookie, "concert", json!(20)).await;
    let id = id_of(&ticket);
    t.put(&id, Some(&cookie), json!({"title": "", "price": 20}))
        .await
        .assert_error(400, "Title is required");
    t.put(&id, Some(&cookie), json!({"price": 20}))
        .await
        .assert_error(400, "Title is required");
    for price in [
        json!(-10),
        json!(0),
        json!("abc"),
        json!(1.234),
        json!(null),
    ] {
        t.put(
            &id,
            Some(&cookie),
            json!({"title": "concert", "price": price}),
        )
        .await
        .assert_error(400, "Price must be greater than 0");
    }
    let both = t.put(&id, Some(&cookie), json!({})).await;
    assert_eq!(
        both.body,
        json!({"errors": [
            {"message": "Title is required", "field": "title"},
            {"message": "Price must be greater than 0", "field": "price"}
        ]})
    );
    // Validation comes before the lookup.
    t.put(
        &ObjectId::new().to_hex(),
        Some(&cookie),
        json!({"title": ""}),
    )
    .await
    .assert_error(400, "Title is required");
    assert_eq!(t.ticket(&id).await, ticket, "unchanged");
}

#[tokio::test]
async fn updates_the_ticket_and_publishes_ticket_updated() {
    let t = spawn().await;
    let (user_id, cookie) = user();
    let ticket = t.create_ticket(&cookie, "concert", json!(20)).await;
    let id = id_of(&ticket);

    let reply = t
        .put(
            &id,
            Some(&cookie),
            json!({"title": " new title ", "price": "100.25"}),
        )
        .await;
    reply.assert_status(200);
    let expected =
        json!({"id": id, "title": "new title", "price": 100.25, "userId": user_id, "version": 1});
    assert_eq!(reply.body, expected);
    assert_eq!(t.ticket(&id).await, expected);

    let events = testkit::wait_for_published::<TicketUpdated>(&t.bus, 1).await;
    assert_eq!(
        events,
        [TicketUpdated {
            id: id.clone(),
            version: 1,
            title: "new title".into(),
            price: Money::from_cents(10025),
            user_id,
            order_id: None,
            withdrawn: false,
        }]
    );
    let raw = serde_json::to_value(&events[0]).unwrap();
    assert!(
        raw.get("orderId").is_none(),
        "orderId omitted when unreserved: {raw}"
    );
}

#[tokio::test]
async fn rejects_edits_of_a_reserved_ticket() {
    let t = spawn().await;
    let (_, cookie) = user();
    let ticket = t.create_ticket(&cookie, "concert", json!(20)).await;
    let id = id_of(&ticket);
    let order = order_created(&ticket);
    t.publish(&order).await;
    let reserved = t
        .ticket_when(&id, "its orderId", |ticket| {
            ticket["orderId"] == json!(order.id)
        })
        .await;

    t.put(
        &id,
        Some(&cookie),
        json!({"title": "new title", "price": 100}),
    )
    .await
    .assert_error(400, "Cannot edit a reserved ticket");
    // Reserved is checked before the owner.
    t.put(
        &id,
        Some(&testkit::signin()),
        json!({"title": "new title", "price": 100}),
    )
    .await
    .assert_error(400, "Cannot edit a reserved ticket");
    assert_eq!(t.ticket(&id).await, reserved, "unchanged");
}
