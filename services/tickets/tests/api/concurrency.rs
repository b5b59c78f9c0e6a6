//! Two writers of one ticket at once: every change is a compare-and-set on
//! the version it read, so each applied change is one version, none is lost,
//! and nobody gets a 500.

use std::collections::BTreeSet;

use common::events::TicketUpdated;
use serde_json::json;

use crate::helpers::{id_of, order_created, spawn, user};

#[tokio::test]
async fn concurrent_edits_by_the_owner_are_all_applied_one_version_each() {
    let t = spawn().await;
    let (_, cookie) = user();
    let ticket = t.create_ticket(&cookie, "concert", json!(20)).await;
    let id = id_of(&ticket);

    let replies = futures::future::join_all((1..=10).map(|n| {
        t.put(
            &id,
            Some(&cookie),
            json!({"title": format!("edit {n}"), "price": n}),
        )
    }))
    .await;

    for reply in &replies {
        reply.assert_status(200);
    }
    let versions: BTreeSet<i64> = replies
        .iter()
        .map(|r| r.body["version"].as_i64().unwrap())
        .collect();
    assert_eq!(
        versions,
        (1..=10).collect(),
        "each edit got a version of its own"
    );
    let last = replies
        .iter()
        .find(|r| r.body["version"] == json!(10))
        .unwrap();
    let now = t.ticket(&id).await;
    assert_eq!(now, last.body, "the last applied edit is what is stored");

    let events = testkit::wait_for_published::<TicketUpdated>(&t.bus, 10).await;
    let mut published: Vec<i64> = events.iter().map(|e| e.version).collect();
    published.sort_unstable();
    assert_eq!(
        published,
        (1..=10).collect::<Vec<_>>(),
        "one ticket.updated per version"
    );
    for reply in &replies {
        let v = reply.body["version"].as_i64().unwrap();
        let event = events.iter().find(|e| e.version == v).unwrap();
        assert_eq!(
            json!(event.title),
            reply.body["title"],
            "event {v} carries that edit"
        );
    }
}

#[tokio::test]
async fn an_edit_racing_a_reservation_never_loses_either() {
    let t = spawn().await;
    let (_, cookie) = user();
    for round in 0..5 {
        let ticket = t.create_ticket(&cookie, "concert", json!(20)).await;
        let id = id_of(&ticket);
        let order = order_created(&ticket);

        let edits = futures::future::join_all((0..4).map(|n| {
            t.put(
                &id,
                Some(&cookie),
                json!({"title": format!("round {round} edit {n}"), "price": 30}),
            )
        }));
        let (replies, ()) = tokio::join!(edits, t.publish(&order));

        let mut applied = 0;
        for reply in &replies {
            match reply.status {
                200 => applied += 1,
                _ => {
                    reply.assert_error(400, "Cannot edit a reserved ticket");
                }
            }
        }
        let reserved = t
            .ticket_when(&id, "its orderId", |ticket| {
                ticket["orderId"] == json!(order.id)
            })
            .await;
        assert_eq!(
            reserved["version"],
            json!(applied + 1),
            "round {round}: {applied} edits and the reservation"
        );
        if applied > 0 {
            let last = replies
                .iter()
                .filter(|r| r.status == 200)
                .max_by_key(|r| r.body["version"].as_i64())
                .unwrap();
            assert_eq!(
                reserved["title"], last.body["title"],
                "round {round}: the last edit survived the reservation"
            );
        }

        let expected = applied + 1;
        let updates = testkit::eventually(std::time::Duration::from_secs(10), || async {
            let updates = t.updates_of(&id).await;
            (updates.len() >= expected as usize).then_some(updates)
        })
        .await
        .expect("every version was published");
        let versions: Vec<i64> = updates.iter().map(|e| e.version).collect();
        assert_eq!(
            versions,
            (1..=expected).collect::<Vec<i64>>(),
            "round {round}"
        );
        assert_eq!(
            updates.last().unwrap().order_id.as_deref(),
            Some(order.id.as_str())
        );
    }
}
