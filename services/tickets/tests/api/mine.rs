//! `GET /api/tickets?mine=true`: the seller's own tickets in every state,
//! each with its `status`, through a whole purchase.

use common::events::{OrderCreated, PaymentCreated};
use mongodb::bson::oid::ObjectId;
use serde_json::{Value, json};

use crate::helpers::{TestTickets, id_of, order_cancelled, order_created, spawn, user};

async fn statuses(t: &TestTickets, cookie: &str) -> Vec<(String, String)> {
    let reply = t.list_as(cookie, "?mine=true").await;
    reply.assert_status(200);
    reply
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["title"].as_str().unwrap().to_owned(),
                t["status"].as_str().unwrap_or("<none>").to_owned(),
            )
        })
        .collect()
}

fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

async fn reserve(t: &TestTickets, ticket: &Value) -> OrderCreated {
    let order = order_created(ticket);
    t.publish(&order).await;
    t.ticket_when(&id_of(ticket), "its orderId", |ticket| {
        ticket["orderId"] == json!(order.id)
    })
    .await;
    order
}

#[tokio::test]
async fn my_listings_show_each_ticket_available_reserved_then_sold() {
    let t = spawn().await;
    let (_, cookie) = user();
    let (_, someone_else) = user();
    t.create_ticket(&someone_else, "not mine", json!(5)).await;
    let ticket = t.create_ticket(&cookie, "mine", json!(20)).await;
    let other = t.create_ticket(&cookie, "also mine", json!(30)).await;

    assert_eq!(
        statuses(&t, &cookie).await,
        pairs(&[("also mine", "available"), ("mine", "available")])
    );
    // The public list shows no status.
    assert!(t.list("").await.body[0].get("status").is_none());

    // Reserved: still in my listings, gone from the public list.
    let order = reserve(&t, &ticket).await;
    assert_eq!(
        statuses(&t, &cookie).await,
        pairs(&[("also mine", "available"), ("mine", "reserved")])
    );

    // Paid: sold, for good.
    t.publish(&PaymentCreated {
        id: ObjectId::new().to_hex(),
        order_id: order.id.clone(),
        stripe_id: "pi_test".into(),
    })
    .await;
    let sold = testkit::eventually(std::time::Duration::from_secs(10), || async {
        let now = statuses(&t, &cookie).await;
        (now == pairs(&[("also mine", "available"), ("mine", "sold")])).then_some(())
    })
    .await;
    assert!(
        sold.is_some(),
        "never sold: {:?}",
        statuses(&t, &cookie).await
    );
    assert_eq!(
        t.ticket(&id_of(&ticket)).await["version"],
        json!(1),
        "no new version"
    );

    // A reservation that is cancelled makes the ticket available again.
    let second = reserve(&t, &other).await;
    assert_eq!(statuses(&t, &cookie).await[0].1, "reserved");
    t.publish(&order_cancelled(&second)).await;
    t.ticket_when(&id_of(&other), "no orderId", |ticket| {
        ticket.get("orderId").is_none()
    })
    .await;
    assert_eq!(statuses(&t, &cookie).await[0].1, "available");

    // Other sellers see theirs only; signed out is 401.
    assert_eq!(
        statuses(&t, &someone_else).await,
        pairs(&[("not mine", "available")])
    );
    t.list("?mine=true")
        .await
        .assert_error(401, "Not authorized");
}

#[tokio::test]
async fn my_listings_page_and_search_like_the_public_list() {
    let t = spawn().await;
    let (_, cookie) = user();
    for n in 0..5 {
        t.create_ticket(&cookie, &format!("Gig {n}"), json!(10 + n))
            .await;
    }
    let reply = t
        .list_as(&cookie, "?mine=true&limit=2&sort=-price&q=gig")
        .await;
    reply.assert_status(200);
    assert_eq!(reply.body.as_array().unwrap().len(), 2);
    assert_eq!(reply.body[0]["title"], json!("Gig 4"));
    let next = crate::helpers::next_link(&reply).expect("a next page");
    assert!(next.contains("mine=true"), "{next}");
    let page = t.app.get(&next, Some(&cookie)).await;
    assert_eq!(page.body[0]["title"], json!("Gig 2"));
}
