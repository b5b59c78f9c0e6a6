//! No lost events: a crash after the write and before the publish. The
//! service runs with its relay off (the test hook for "died right after the
//! insert"), is stopped, and a restart on the same database and bus
//! namespace publishes what the first one never did — exactly once.

use std::time::Duration;

use common::events::TicketCreated;
use serde_json::json;

use crate::helpers::{Namespace, id_of, spawn_in, user};

#[tokio::test]
async fn an_event_written_before_a_crash_is_published_once_after_the_restart() {
    let ns = Namespace::fresh();
    let (user_id, cookie) = user();

    let crashed = spawn_in(ns.clone(), false).await;
    let ticket = crashed.create_ticket(&cookie, "concert", json!(20)).await;
    let id = id_of(&ticket);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        testkit::published::<TicketCreated>(&crashed.bus)
            .await
            .is_empty(),
        "nothing published without the relay"
    );
    let stored = crashed
        .store
        .documents()
        .find_one(mongodb::bson::doc! {})
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        stored.get_array("outbox").map(Vec::len),
        Ok(1),
        "the event waits in the ticket's outbox"
    );
    crashed.stop().await;

    let restarted = spawn_in(ns, true).await;
    let events = testkit::wait_for_published::<TicketCreated>(&restarted.bus, 1).await;
    assert_eq!(
        events,
        [TicketCreated {
            id: id.clone(),
            version: 0,
            title: "concert".into(),
            price: common::money::Money::from_cents(2000),
            user_id
        }]
    );
    // The relay pulls the entry out once it is stored …
    let drained = testkit::eventually(Duration::from_secs(10), || async {
        let doc = restarted
            .store
            .documents()
            .find_one(mongodb::bson::doc! {})
            .await
            .unwrap()?;
        doc.get_array("outbox")
            .map_or(true, |o| o.is_empty())
            .then_some(())
    })
    .await;
    assert!(drained.is_some(), "the outbox was drained");
    // … and publishes nothing more: across its periodic scans, the stream
    // still holds exactly one copy.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        testkit::published::<TicketCreated>(&restarted.bus)
            .await
            .len(),
        1
    );
    let mut stream = restarted
        .bus
        .jetstream()
        .get_stream(&restarted.bus.config().stream)
        .await
        .unwrap();
    assert_eq!(
        stream.info().await.unwrap().state.messages,
        1,
        "one message in the whole stream"
    );
    assert_eq!(restarted.ticket(&id).await, ticket);
}
