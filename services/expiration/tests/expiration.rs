//! Black-box tests of the expiration service against a real Redis and a real
//! NATS JetStream: each test has its own Redis key prefix and its own stream
//! and subject prefix, so tests run in parallel without seeing each other.
//!
//! Besides reading the stream, every test watches its `expiration.complete`
//! subject with a plain NATS subscriber ([`Fired`]). That subscriber sees each
//! publish *attempt*, including one the stream would drop as a duplicate of its
//! message id, so "exactly once" is checked on what the service did, not on
//! what JetStream's deduplication let through.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use common::events::{Event, ExpirationComplete, OrderCreated};
use common::{bus::Bus, server::Serving};
use expiration::jobs::Jobs;
use expiration::{Application, SERVICE, Settings};
use futures::StreamExt as _;
use testkit::Running;

/// How late a job may fire after its due time.
const ON_TIME: TimeDelta = TimeDelta::milliseconds(1500);

/// One test's world: its settings (unique Redis prefix and bus namespace), a
/// bus to publish `order.created` with, the jobs in Redis, and what was fired.
struct World {
    settings: Settings,
    bus: Bus,
    jobs: Jobs,
    fired: Fired,
}

impl World {
    async fn new() -> World {
        let settings = Settings {
            serving: Serving {
                development: true,
                ..Default::default()
            },
            redis_url: testkit::infra().redis_url.clone(),
            bus: testkit::bus_config(),
            key_prefix: testkit::unique_name("expiration"),
        };
        let bus = Bus::connect(settings.bus.clone())
            .await
            .expect("NATS is not reachable");
        let jobs = Jobs::connect(&settings.redis_url, &settings.key_prefix)
            .await
            .expect("Redis is not reachable");
        let fired = Fired::watch(&bus).await;
        World {
            settings,
            bus,
            jobs,
            fired,
        }
    }

    /// Starts one more instance of the service on this world's Redis prefix and bus.
    async fn start(&self) -> Running {
        let built = Application::build(self.settings.clone())
            .await
            .expect("expiration failed to start");
        Running::start(built)
    }

    /// Publishes `order.created` for a new order expiring at `expires_at`.
    async fn order_created(&self, expires_at: DateTime<Utc>) -> OrderCreated {
        let event = order_created_event(expires_at);
        self.bus
            .publish(&event)
            .await
            .expect("failed to publish order.created");
        event
    }

    /// Publishes `event` again under another message id, as a redelivery or a
    /// re-publish after the duplicate window would arrive.
    async fn republish(&self, event: &OrderCreated, message_id: &str) {
        let payload = serde_json::to_vec(event).expect("order.created serialises");
        self.bus
            .publish_raw(
                OrderCreated::SUBJECT,
                OrderCreated::SCHEMA_VERSION,
                message_id,
                payload.into(),
            )
            .await
            .expect("failed to publish order.created");
    }

    /// Waits until the service's durable consumer has handled (acked) every
    /// `order.created` published so far.
    async fn wait_until_orders_handled(&self) {
        testkit::wait_until_consumed(&self.bus, SERVICE, OrderCreated::SUBJECT).await;
    }

    /// The `expiration.complete` events stored in the stream.
    async fn stored(&self) -> Vec<ExpirationComplete> {
        testkit::published::<ExpirationComplete>(&self.bus).await
    }
}

/// Every `expiration.complete` published on the test's subject, and when it was
/// seen, recorded by a plain (non-JetStream) subscriber.
#[derive(Clone)]
struct Fired(Arc<Mutex<Vec<Sighting>>>);

/// An order id fired, and when the subscriber saw it.
type Sighting = (String, DateTime<Utc>);

impl Fired {
    async fn watch(bus: &Bus) -> Fired {
        let client = async_nats::connect(&testkit::infra().nats_url)
            .await
            .expect("NATS is not reachable");
        let mut subscriber = client
            .subscribe(bus.subject(ExpirationComplete::SUBJECT))
            .await
            .expect("failed to subscribe");
        client
            .flush()
            .await
            .expect("failed to flush the subscription");
        let fired = Fired(Arc::default());
        let log = fired.clone();
        tokio::spawn(async move {
            let _client = client;
            while let Some(message) = subscriber.next().await {
                let seen = Utc::now();
                let event: ExpirationComplete = serde_json::from_slice(&message.payload)
                    .expect("expiration.complete does not decode");
                log.0.lock().unwrap().push((event.order_id, seen));
            }
        });
        fired
    }

    fn all(&self) -> Vec<Sighting> {
        self.0.lock().unwrap().clone()
    }

    /// Waits until at least `count` were fired and returns them all.
    async fn wait_for(&self, count: usize, timeout: Duration) -> Vec<Sighting> {
        let seen = testkit::eventually(timeout, || async {
            let all = self.all();
            (all.len() >= count).then_some(all)
        })
        .await;
        seen.unwrap_or_else(|| {
            panic!(
                "expected {count} expiration.complete within {timeout:?}, saw {}",
                self.all().len()
            )
        })
    }

    /// How many times each order id was fired.
    fn counts(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for (order_id, _) in self.all() {
            *counts.entry(order_id).or_default() += 1;
        }
        counts
    }
}

/// A new 24-hex order id.
fn new_order_id() -> String {
    let hex = |name: String| name.rsplit('_').next().unwrap_or_default().to_owned();
    format!(
        "{}{}",
        hex(testkit::unique_name("o")),
        hex(testkit::unique_name("o"))
    )
}

/// `now + offset`, to the millisecond (what travels on the wire).
fn in_ms(offset: TimeDelta) -> DateTime<Utc> {
    let at = Utc::now() + offset;
    DateTime::from_timestamp_millis(at.timestamp_millis()).expect("a valid time")
}

fn order_created_event(expires_at: DateTime<Utc>) -> OrderCreated {
    OrderCreated {
        expires_at,
        ..testkit::order_created()
    }
}

#[track_caller]
fn assert_fired_on_time(fired_at: DateTime<Utc>, due: DateTime<Utc>) {
    assert!(fired_at >= due, "fired {} early", due - fired_at);
    assert!(
        fired_at <= due + ON_TIME,
        "fired {} late (more than {ON_TIME})",
        fired_at - due
    );
}

#[tokio::test]
async fn fires_one_expiration_complete_when_the_order_expires() {
    let world = World::new().await;
    let _service = world.start().await;

    let order = world.order_created(in_ms(TimeDelta::seconds(1))).await;

    let fired = world.fired.wait_for(1, Duration::from_secs(5)).await;
    assert_eq!(fired[0].0, order.id);
    assert_fired_on_time(fired[0].1, order.expires_at);
    // Nothing more comes, the stream holds it once and the job is gone.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(world.fired.all().len(), 1, "fired more than once");
    assert_eq!(
        world.stored().await,
        vec![ExpirationComplete { order_id: order.id }]
    );
    assert_eq!(
        world.jobs.len().await.unwrap(),
        0,
        "the fired job is still in Redis"
    );
}

#[tokio::test]
async fn an_order_that_already_expired_fires_at_once() {
    let world = World::new().await;
    let _service = world.start().await;

    let published_at = Utc::now();
    let order = world.order_created(in_ms(TimeDelta::minutes(-10))).await;

    let fired = world.fired.wait_for(1, Duration::from_secs(5)).await;
    assert_eq!(fired[0].0, order.id);
    assert!(
        fired[0].1 - published_at <= TimeDelta::milliseconds(1000),
        "an overdue job took {} to fire",
        fired[0].1 - published_at
    );
}

#[tokio::test]
async fn a_redelivered_order_created_neither_duplicates_nor_moves_the_job() {
    let world = World::new().await;
    let _service = world.start().await;

    let order = world
        .order_created(in_ms(TimeDelta::milliseconds(1500)))
        .await;
    // The same order again (as a redelivery would bring it), then once more
    // with a later expiry: neither may add a job or move the first one.
    world.republish(&order, "redelivery-1").await;
    let mut later = order.clone();
    later.expires_at = in_ms(TimeDelta::seconds(60));
    world.republish(&later, "redelivery-2").await;
    world.wait_until_orders_handled().await;

    assert_eq!(world.jobs.len().await.unwrap(), 1);
    assert_eq!(
        world.jobs.due_at(&order.id).await.unwrap(),
        Some(order.expires_at.timestamp_millis())
    );

    let fired = world.fired.wait_for(1, Duration::from_secs(5)).await;
    assert_fired_on_time(fired[0].1, order.expires_at);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(world.fired.all().len(), 1, "fired more than once");
    assert_eq!(world.stored().await.len(), 1);
    assert_eq!(world.jobs.len().await.unwrap(), 0);
}

#[tokio::test]
async fn jobs_survive_a_restart_of_the_service() {
    let world = World::new().await;
    let first = world.start().await;
    let order = world.order_created(in_ms(TimeDelta::seconds(3))).await;
    world.wait_until_orders_handled().await;
    assert!(
        world.jobs.due_at(&order.id).await.unwrap().is_some(),
        "the job was not scheduled"
    );

    // Stop it (cleanly, well before the order expires); a new instance fires it.
    first.stop().await;
    assert!(
        Utc::now() < order.expires_at,
        "the test was too slow to stop the service before the due time"
    );
    assert!(world.fired.all().is_empty(), "fired early");
    let _second = world.start().await;

    let fired = world.fired.wait_for(1, Duration::from_secs(6)).await;
    assert_eq!(fired[0].0, order.id);
    assert_fired_on_time(fired[0].1, order.expires_at);
    assert_eq!(world.stored().await.len(), 1);
}

#[tokio::test]
async fn two_replicas_fire_each_of_200_simultaneous_jobs_exactly_once() {
    let world = World::new().await;
    let replicas = [world.start().await, world.start().await];

    let expires_at = in_ms(TimeDelta::seconds(3));
    let mut order_ids = Vec::new();
    for _ in 0..200 {
        order_ids.push(world.order_created(expires_at).await.id);
    }

    let fired = world.fired.wait_for(200, Duration::from_secs(15)).await;
    // Give a second firing (the other replica, a lost claim) time to show.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let counts = world.fired.counts();
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "published more than once: {twice:?}");
    assert_eq!(world.fired.all().len(), 200, "publish attempts");
    order_ids.sort_unstable();
    let mut fired_ids: Vec<_> = counts.into_keys().collect();
    fired_ids.sort_unstable();
    assert_eq!(fired_ids, order_ids);
    assert!(
        fired.iter().all(|(_, at)| *at >= expires_at),
        "a job fired before it was due"
    );
    assert_eq!(world.stored().await.len(), 200, "messages in the stream");
    assert_eq!(world.jobs.len().await.unwrap(), 0);
    for replica in replicas {
        replica.stop().await;
    }
}

#[tokio::test]
async fn a_job_claimed_by_a_replica_that_died_fires_once_its_lease_runs_out() {
    let world = World::new().await;
    let order_id = new_order_id();
    let due = Utc::now().timestamp_millis() - 1000;
    world.jobs.schedule(&order_id, due).await.unwrap();
    // A replica claims it with a short lease and dies before publishing.
    let claim = world
        .jobs
        .claim(Duration::from_millis(1500), 10)
        .await
        .unwrap();
    assert_eq!(claim.order_ids, vec![order_id.clone()]);
    let lease_ends = DateTime::from_timestamp_millis(claim.lease_until).unwrap();

    let _service = world.start().await;

    let fired = world.fired.wait_for(1, Duration::from_secs(6)).await;
    assert_eq!(fired[0].0, order_id);
    assert_fired_on_time(fired[0].1, lease_ends);
    assert_eq!(world.jobs.len().await.unwrap(), 0);
}

#[tokio::test]
async fn answers_the_probes() {
    let world = World::new().await;
    let service = world.start().await;

    let health = service.app.get("/healthz", None).await;
    health.assert_status(200);
    let ready = service.app.get("/readyz", None).await;
    ready.assert_status(200);
    assert_eq!(ready.body["status"], "ready");
    service
        .app
        .get("/api/orders", None)
        .await
        .assert_error(404, "Not Found");
    service.stop().await;
}

#[tokio::test]
async fn shows_its_pending_jobs_and_its_consumer_on_metrics() {
    let world = World::new().await;
    let service = world.start().await;
    world.order_created(in_ms(TimeDelta::minutes(10))).await;
    world.wait_until_orders_handled().await;

    // The gauge is the process's, and other tests' schedulers set it too:
    // here it only has to exist; its value is checked on the claim below.
    let metrics = service.app.get("/metrics", None).await;
    metrics.assert_status(200);
    assert!(
        metrics
            .text
            .contains("# TYPE expiration_jobs_pending gauge"),
        "{}",
        metrics.text
    );
    let consumer = format!("{SERVICE}-order-created");
    let handled = [("consumer", consumer.as_str()), ("outcome", "handled")];
    assert!(
        testkit::metric(&service.app, "bus_events_total", &handled).await >= Some(1.0),
        "{}",
        metrics.text
    );
    service.stop().await;
}

#[tokio::test]
async fn a_claim_reports_how_many_jobs_wait_in_the_set() {
    let world = World::new().await;
    let now = Utc::now().timestamp_millis();
    for (n, due) in [now - 1, now - 1, now + 60_000].into_iter().enumerate() {
        world
            .jobs
            .schedule(&format!("order-{n}"), due)
            .await
            .unwrap();
    }
    let claim = world
        .jobs
        .claim(Duration::from_secs(30), 100)
        .await
        .unwrap();
    assert_eq!(claim.order_ids.len(), 2);
    assert_eq!(claim.pending, 3, "claimed jobs stay in the set until fired");
    for order_id in &claim.order_ids {
        world
            .jobs
            .complete(order_id, claim.lease_until)
            .await
            .unwrap();
    }
    let claim = world
        .jobs
        .claim(Duration::from_secs(30), 100)
        .await
        .unwrap();
    assert_eq!((claim.order_ids.len(), claim.pending), (0, 1));
}

// The job queue on its own: the guarantees the scheduler relies on.

#[tokio::test]
async fn concurrent_claims_never_hand_out_a_job_twice() {
    let world = World::new().await;
    let due = Utc::now().timestamp_millis() - 1;
    for n in 0..500 {
        world
            .jobs
            .schedule(&format!("order-{n}"), due)
            .await
            .unwrap();
    }

    let claimers = (0..8).map(|_| {
        let jobs = world.jobs.clone();
        tokio::spawn(async move {
            let mut mine = Vec::new();
            // Bounded: 500 jobs take at most 72 claims of 7, unless jobs come back.
            for _ in 0..100 {
                let claim = jobs.claim(Duration::from_secs(30), 7).await.unwrap();
                if claim.order_ids.is_empty() {
                    break;
                }
                mine.extend(claim.order_ids);
            }
            mine
        })
    });
    let mut claimed: Vec<String> = Vec::new();
    for claimer in claimers.collect::<Vec<_>>() {
        claimed.extend(claimer.await.unwrap());
    }

    assert_eq!(claimed.len(), 500, "claimed in total");
    claimed.sort_unstable();
    claimed.dedup();
    assert_eq!(claimed.len(), 500, "some jobs were claimed twice");
}

#[tokio::test]
async fn a_replica_whose_lease_ran_out_cannot_remove_or_move_the_job() {
    let world = World::new().await;
    world
        .jobs
        .schedule("order-1", Utc::now().timestamp_millis() - 1)
        .await
        .unwrap();

    let stale = world
        .jobs
        .claim(Duration::from_millis(50), 10)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let fresh = world.jobs.claim(Duration::from_secs(30), 10).await.unwrap();
    assert_eq!(
        (stale.order_ids.len(), fresh.order_ids.len()),
        (1, 1),
        "the lease ran out, so the job was claimed again"
    );

    assert!(
        !world
            .jobs
            .complete("order-1", stale.lease_until)
            .await
            .unwrap()
    );
    assert!(
        !world
            .jobs
            .retry_later("order-1", stale.lease_until, Duration::ZERO)
            .await
            .unwrap()
    );
    assert_eq!(
        world.jobs.due_at("order-1").await.unwrap(),
        Some(fresh.lease_until)
    );
    assert!(
        world
            .jobs
            .complete("order-1", fresh.lease_until)
            .await
            .unwrap()
    );
    assert_eq!(world.jobs.due_at("order-1").await.unwrap(), None);
}

#[tokio::test]
async fn scheduling_an_existing_job_again_keeps_its_due_time_and_its_lease() {
    let world = World::new().await;
    let due = Utc::now().timestamp_millis() - 1;
    assert!(world.jobs.schedule("order-1", due).await.unwrap());
    assert!(!world.jobs.schedule("order-1", due + 60_000).await.unwrap());
    assert_eq!(world.jobs.due_at("order-1").await.unwrap(), Some(due));

    let claim = world.jobs.claim(Duration::from_secs(30), 10).await.unwrap();
    assert!(!world.jobs.schedule("order-1", due).await.unwrap());
    assert_eq!(
        world.jobs.due_at("order-1").await.unwrap(),
        Some(claim.lease_until)
    );
    assert_eq!(claim.next_due, Some(claim.lease_until));
}
