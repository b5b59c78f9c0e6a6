//! The outbox relay against a real MongoDB-wire server and NATS JetStream.

use std::time::Duration;

use common::{
    bus::Bus,
    events::{Event, TicketCreated, TicketUpdated},
    money::Money,
    outbox::{self, Relay},
};
use mongodb::bson::{Bson, Document, doc, oid::ObjectId};
use tokio_util::sync::CancellationToken;

fn ticket_created(id: ObjectId) -> TicketCreated {
    TicketCreated {
        id: id.to_hex(),
        ..testkit::ticket_created()
    }
}

fn ticket_updated(id: ObjectId, version: i64) -> TicketUpdated {
    TicketUpdated {
        price: Money::from_cents(1000 + version),
        ..testkit::ticket_updated(&ticket_created(id), version)
    }
}

/// `event` as an outbox entry, as a writer stores it.
fn entry(event: &impl Event) -> Bson {
    outbox::OutboxEvent::of(event).unwrap().to_bson().unwrap()
}

async fn setup() -> (Bus, mongodb::Collection<Document>) {
    let bus = Bus::connect(testkit::bus_config()).await.expect("bus");
    let collection = testkit::database("outbox")
        .await
        .collection::<Document>("records");
    (bus, collection)
}

#[tokio::test]
async fn entries_written_while_no_relay_ran_are_published_by_the_next_one_in_order() {
    let (bus, collection) = setup().await;
    let id = ObjectId::new();
    // The write a crashed service left behind: state and events, never published.
    let created = entry(&ticket_created(id));
    let updated = entry(&ticket_updated(id, 1));
    collection
        .insert_one(doc! { "_id": id, "version": 1, "outbox": [created, updated] })
        .await
        .unwrap();
    assert!(testkit::published::<TicketCreated>(&bus).await.is_empty());

    let (relay, _outbox) = Relay::new(bus.clone(), collection.clone());
    let stop = CancellationToken::new();
    let running = tokio::spawn(relay.run(stop.clone()));

    let created = testkit::wait_for_published::<TicketCreated>(&bus, 1).await;
    let updated = testkit::wait_for_published::<TicketUpdated>(&bus, 1).await;
    assert_eq!(
        (created[0].id.as_str(), updated[0].version),
        (id.to_hex().as_str(), 1)
    );

    let cleared = testkit::eventually(Duration::from_secs(5), || async {
        let document = collection.find_one(doc! { "_id": id }).await.ok()??;
        document.get_array("outbox").ok()?.is_empty().then_some(())
    })
    .await;
    assert!(cleared.is_some(), "published entries must leave the outbox");
    stop.cancel();
    running.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_hint_publishes_at_once_and_a_republish_is_stored_once() {
    let (bus, collection) = setup().await;
    let (relay, outbox) = Relay::new(bus.clone(), collection.clone());
    // A long scan interval: only the hint can explain a quick publish.
    let relay = relay.scan_every(Duration::from_secs(3600));
    let stop = CancellationToken::new();
    let running = tokio::spawn(relay.run(stop.clone()));
    tokio::time::sleep(Duration::from_millis(200)).await;

    let id = ObjectId::new();
    let created = entry(&ticket_created(id));
    collection
        .insert_one(doc! { "_id": id, "outbox": [created.clone()] })
        .await
        .unwrap();
    outbox.wake(id);
    testkit::wait_for_published::<TicketCreated>(&bus, 1).await;

    // A relay that died after publishing but before clearing: the entry comes back.
    collection
        .update_one(doc! { "_id": id }, doc! { "$push": { "outbox": created } })
        .await
        .unwrap();
    outbox.wake(id);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        testkit::published::<TicketCreated>(&bus).await.len(),
        1,
        "the duplicate must be dropped by its message id"
    );
    stop.cancel();
    running.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_large_backlog_goes_out_in_batches_each_document_in_order_and_leaves_no_entry() {
    let (bus, collection) = setup().await;
    // More entries than one batch holds (256): 300 documents, a creation and
    // two updates each.
    let ids: Vec<ObjectId> = (0..300).map(|_| ObjectId::new()).collect();
    let documents: Vec<Document> = ids
        .iter()
        .map(|&id| {
            let entries = [
                entry(&ticket_created(id)),
                entry(&ticket_updated(id, 1)),
                entry(&ticket_updated(id, 2)),
            ];
            doc! { "_id": id, "version": 2, "outbox": entries.to_vec() }
        })
        .collect();
    collection.insert_many(documents).await.unwrap();

    let (relay, _outbox) = Relay::new(bus.clone(), collection.clone());
    assert_eq!(relay.backlog().await.unwrap(), 300);
    assert_eq!(relay.publish_pending().await.unwrap(), 900);
    assert_eq!(
        relay.backlog().await.unwrap(),
        0,
        "every entry was pulled out"
    );

    let created = testkit::wait_for_published::<TicketCreated>(&bus, 300).await;
    let updated = testkit::wait_for_published::<TicketUpdated>(&bus, 600).await;
    assert_eq!(created.len(), 300);
    assert_eq!(updated.len(), 600);
    // Within each document, version 1 was stored before version 2.
    for id in &ids {
        let versions: Vec<i64> = updated
            .iter()
            .filter(|event| event.id == id.to_hex())
            .map(|event| event.version)
            .collect();
        assert_eq!(versions, [1, 2], "ticket {id}");
    }
    // Nothing left to publish: a second pass publishes nothing.
    assert_eq!(relay.publish_pending().await.unwrap(), 0);
}

#[tokio::test]
async fn a_scan_reads_through_the_relay_s_index_only_the_documents_with_entries() {
    let bus = Bus::connect(testkit::bus_config()).await.expect("bus");
    let database = testkit::database("outbox").await;
    let collection = database.collection::<Document>("records");
    // Drained documents (an empty outbox, or none at all) and one with an
    // entry, which is all a scan may read.
    let waiting = ObjectId::new();
    let created = entry(&ticket_created(waiting));
    let mut documents: Vec<Document> = (0..50)
        .map(|n| match n % 2 {
            0 => doc! { "_id": ObjectId::new(), "version": 0, "outbox": [] },
            _ => doc! { "_id": ObjectId::new(), "version": 0 },
        })
        .collect();
    documents.push(doc! { "_id": waiting, "version": 0, "outbox": [created] });
    collection.insert_many(documents).await.unwrap();

    let (relay, _outbox) = Relay::new(bus.clone(), collection.clone());
    relay.ensure_index().await.unwrap();
    let names = collection.list_index_names().await.unwrap();
    assert!(names.iter().any(|n| n == outbox::INDEX), "{names:?}");
    // The scan's query is answered from the index.
    let plan = database
        .run_command(doc! {
            "explain": { "find": "records", "filter": outbox::pending(doc! {}) },
        })
        .await
        .unwrap()
        .to_string();
    assert!(
        plan.contains(outbox::INDEX) && plan.contains("IXSCAN"),
        "{plan}"
    );

    assert_eq!(relay.backlog().await.unwrap(), 1);
    assert_eq!(relay.scan().await.unwrap(), 1);
    assert_eq!(
        relay.backlog().await.unwrap(),
        0,
        "the entry was pulled out"
    );
    let created = testkit::wait_for_published::<TicketCreated>(&bus, 1).await;
    assert_eq!(created[0].id, waiting.to_hex());
    // A document that gets an entry again is found again.
    let again = entry(&ticket_updated(waiting, 1));
    collection
        .update_one(
            doc! { "_id": waiting },
            doc! { "$push": { "outbox": again } },
        )
        .await
        .unwrap();
    assert_eq!(relay.backlog().await.unwrap(), 1);
}
