//! `DELETE /api/tickets/{id}`: the seller takes a ticket off sale.

use common::events::{OrderCreated, TicketUpdated};
use mongodb::bson::oid::ObjectId;
use serde_json::json;

use crate::helpers::{id_of, order_cancelled, order_created, spawn, titles, user};

#[tokio::test]
async fn the_seller_withdraws_a_ticket_and_it_is_gone_from_everywhere() {
    let t = spawn().await;
    let (seller, cookie) = user();
    let kept = t.create_ticket(&cookie, "kept", json!(10)).await;
    let ticket = t.create_ticket(&cookie, "withdrawn", json!(10)).await;
    let id = id_of(&ticket);

    let reply = t.withdraw(&id, Some(&cookie)).await;
    reply.assert_status(204);
    assert!(reply.text.is_empty());

    assert_eq!(titles(&t.list("").await), ["kept"]);
    assert_eq!(titles(&t.list("?q=withdrawn").await), Vec::<String>::new());
    assert_eq!(titles(&t.list_as(&cookie, "?mine=true").await), ["kept"]);
    t.show(&id).await.assert_error(404, "Not Found");
    t.put(&id, Some(&cookie), json!({"title": "back", "price": 5}))
        .await
        .assert_error(404, "Not Found");
    t.withdraw(&id, Some(&cookie))
        .await
        .assert_error(404, "Not Found");
    assert_eq!(t.ticket(&id_of(&kept)).await, kept);

    // The fleet hears of it in version order, as an additive field.
    let events = testkit::wait_for_published::<TicketUpdated>(&t.bus, 1).await;
    assert_eq!(events.len(), 1);
    assert_eq!(
        (
            events[0].id.as_str(),
            events[0].version,
            events[0].withdrawn
        ),
        (id.as_str(), 1, true)
    );
    assert_eq!(events[0].user_id, seller);
    assert_eq!(events[0].order_id, None);
}

#[tokio::test]
async fn withdrawing_needs_a_signed_in_owner_of_an_existing_unreserved_ticket() {
    let t = spawn().await;
    let (_, cookie) = user();
    let (_, other) = user();
    let ticket = t.create_ticket(&cookie, "concert", json!(20)).await;
    let id = id_of(&ticket);

    t.withdraw(&id, None)
        .await
        .assert_error(401, "Not authorized");
    t.withdraw(&ObjectId::new().to_hex(), Some(&cookie))
        .await
        .assert_error(404, "Not Found");
    t.withdraw("not-an-id", Some(&cookie))
        .await
        .assert_error(404, "Not Found");
    t.withdraw(&id, Some(&other))
        .await
        .assert_error(401, "Not authorized");

    let order = order_created(&ticket);
    t.publish(&order).await;
    t.ticket_when(&id, "its orderId", |ticket| {
        ticket["orderId"] == json!(order.id)
    })
    .await;
    t.withdraw(&id, Some(&cookie))
        .await
        .assert_error(400, "Cannot withdraw a reserved ticket");
    assert_eq!(t.ticket(&id).await["version"], json!(1), "unchanged");

    // Released, it can be withdrawn.
    t.publish(&order_cancelled(&order)).await;
    t.ticket_when(&id, "no orderId", |ticket| ticket.get("orderId").is_none())
        .await;
    t.withdraw(&id, Some(&cookie)).await.assert_status(204);
}

#[tokio::test]
async fn an_order_created_after_the_withdrawal_does_not_reserve_the_ticket() {
    let t = spawn().await;
    let (_, cookie) = user();
    let ticket = t.create_ticket(&cookie, "concert", json!(20)).await;
    let id = id_of(&ticket);
    t.withdraw(&id, Some(&cookie)).await.assert_status(204);

    t.publish(&order_created(&ticket)).await;
    t.wait_until_consumed::<OrderCreated>().await;

    let stored = t.store.find(id.parse().unwrap()).await.unwrap().unwrap();
    assert!(stored.withdrawn);
    assert_eq!((stored.order_id, stored.version), (None, 1));
    assert_eq!(t.updates_of(&id).await.len(), 1, "only the withdrawal");
}
