//! `GET /api/tickets` — the original's `index.test.ts`, plus what it left
//! out: reserved tickets are hidden, newest first, bounded pages.

use serde_json::{Value, json};

use crate::helpers::{TestTickets, id_of, order_created, spawn};

async fn three_tickets(t: &TestTickets) -> Vec<Value> {
    let cookie = testkit::signin();
    let mut tickets = Vec::new();
    for title in ["first", "second", "third"] {
        tickets.push(t.create_ticket(&cookie, title, json!(10)).await);
    }
    tickets
}

fn titles(reply: &testkit::Reply) -> Vec<&str> {
    reply
        .body
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {}", reply.text))
        .iter()
        .map(|t| t["title"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn lists_tickets_newest_first() {
    let t = spawn().await;
    let tickets = three_tickets(&t).await;
    let reply = t.list("").await;
    reply.assert_status(200);
    assert_eq!(titles(&reply), ["third", "second", "first"]);
    assert_eq!(reply.body[0], tickets[2]);
}

#[tokio::test]
async fn an_empty_store_lists_nothing() {
    let t = spawn().await;
    assert_eq!(t.list("").await.body, json!([]));
}

#[tokio::test]
async fn hides_reserved_tickets() {
    let t = spawn().await;
    let tickets = three_tickets(&t).await;
    let order = order_created(&tickets[1]);
    t.publish(&order).await;
    t.ticket_when(&id_of(&tickets[1]), "its orderId", |ticket| {
        ticket["orderId"] == json!(order.id)
    })
    .await;

    assert_eq!(titles(&t.list("").await), ["third", "first"]);
}

#[tokio::test]
async fn honours_and_clamps_the_limit() {
    let t = spawn().await;
    three_tickets(&t).await;
    assert_eq!(titles(&t.list("?limit=2").await), ["third", "second"]);
    assert_eq!(titles(&t.list("?limit=0").await), ["third"]);
    assert_eq!(
        titles(&t.list("?limit=100000").await),
        ["third", "second", "first"]
    );
    let reply = t.list("?limit=ten").await;
    reply.assert_error(400, "Limit must be a whole number");
}
