//! The JetStream bus against a real nats-server (2.10 or newer): publishing with
//! deduplication, the listener runner's ack/nak/term policy, replicas sharing a
//! durable consumer, history for late consumers, and shutdown.
//!
//! Every test has its own namespace (subject prefix and stream), so tests run in
//! parallel on one server without seeing each other's events.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::bus::{Bus, BusConfig, Delivery, Handled, Listener, SCHEMA_VERSION_HEADER};
use common::events::{Event, TicketCreated};
use common::money::Money;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep, timeout};
use tokio_util::sync::CancellationToken;

// ---------------------------------------------------------------------------
// Infrastructure: the one place that knows where NATS comes from.
// ---------------------------------------------------------------------------

/// The NATS server under test (JetStream, 2.10 or newer).
fn nats_url() -> String {
    testkit::infra().nats_url.clone()
}

/// A name no other test uses.
fn unique_name(prefix: &str) -> String {
    testkit::unique_name(prefix)
}

// ---------------------------------------------------------------------------

/// A bus in a namespace of its own, with short retry delays.
async fn test_bus(tweak: impl FnOnce(&mut BusConfig)) -> Bus {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut config = BusConfig::new(nats_url())
        .with_namespace(&unique_name("t"))
        .with_connection_name("common-bus-test");
    config.max_age = Duration::from_secs(600);
    config.ack_wait = Duration::from_secs(5);
    config.max_deliver = 5;
    config.retry_base_delay = Duration::from_millis(100);
    config.retry_max_delay = Duration::from_millis(400);
    tweak(&mut config);
    Bus::connect(config)
        .await
        .expect("connect to the test NATS server")
}

/// Deletes the test's stream (best effort; the namespace is unique anyway).
async fn cleanup(bus: &Bus) {
    let _ = bus.jetstream().delete_stream(&bus.config().stream).await;
}

fn ticket(n: usize) -> TicketCreated {
    TicketCreated {
        id: format!("{n:024x}"),
        version: 0,
        title: format!("ticket {n}"),
        price: Money::from_cents(1000 + n as i64),
        user_id: "65a1b2c3d4e5f60718293a4d".into(),
    }
}

/// What a [`Recorder`] does with the `n`-th delivery (1-based) of an event.
type Behaviour = dyn Fn(&TicketCreated, &Delivery) -> anyhow::Result<Handled> + Send + Sync;

/// A listener that reports every delivery on a channel and answers as told.
struct Recorder {
    seen: mpsc::UnboundedSender<(TicketCreated, Delivery)>,
    behaviour: Box<Behaviour>,
    work: Duration,
}

impl Listener for Recorder {
    type Event = TicketCreated;

    async fn handle(&self, event: TicketCreated, delivery: &Delivery) -> anyhow::Result<Handled> {
        let _ = self.seen.send((event.clone(), delivery.clone()));
        if !self.work.is_zero() {
            sleep(self.work).await;
        }
        (self.behaviour)(&event, delivery)
    }
}

type Seen = mpsc::UnboundedReceiver<(TicketCreated, Delivery)>;

fn recorder(
    behaviour: impl Fn(&TicketCreated, &Delivery) -> anyhow::Result<Handled> + Send + Sync + 'static,
) -> (Recorder, Seen) {
    let (seen, rx) = mpsc::unbounded_channel();
    (
        Recorder {
            seen,
            behaviour: Box::new(behaviour),
            work: Duration::ZERO,
        },
        rx,
    )
}

fn acking() -> (Recorder, Seen) {
    recorder(|_, _| Ok(Handled::Ack))
}

/// The next delivery, or a failure after `secs` seconds.
async fn next(seen: &mut Seen, secs: u64) -> (TicketCreated, Delivery) {
    timeout(Duration::from_secs(secs), seen.recv())
        .await
        .expect("timed out waiting for a delivery")
        .expect("listener gone")
}

/// When each of the next `count` deliveries, all of `event`, arrived
/// (delivery counts 1, 2, …).
async fn deliveries_of(seen: &mut Seen, event: &TicketCreated, count: u64) -> Vec<Instant> {
    let mut times = Vec::new();
    for attempt in 1..=count {
        let (delivered, delivery) = next(seen, 5).await;
        assert_eq!((&delivered, delivery.delivered), (event, attempt));
        times.push(Instant::now());
    }
    times
}

/// Asserts that nothing more is delivered within `window`.
async fn assert_quiet(seen: &mut Seen, window: Duration) {
    if let Ok(Some((event, delivery))) = timeout(window, seen.recv()).await {
        panic!("unexpected delivery of {} ({delivery:?})", event.id);
    }
}

/// Waits until the durable consumer has nothing pending and nothing unacknowledged.
async fn assert_consumer_drained(bus: &Bus, consumer: &str) {
    let stream = bus
        .jetstream()
        .get_stream(&bus.config().stream)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let info = stream.consumer_info(consumer).await.unwrap();
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "consumer {consumer} not drained: {} pending, {} unacknowledged",
            info.num_pending,
            info.num_ack_pending
        );
        sleep(Duration::from_millis(50)).await;
    }
}

async fn stream_messages(bus: &Bus) -> u64 {
    let mut stream = bus
        .jetstream()
        .get_stream(&bus.config().stream)
        .await
        .unwrap();
    stream.info().await.unwrap().state.messages
}

async fn stop(shutdown: &CancellationToken, runner: tokio::task::JoinHandle<anyhow::Result<()>>) {
    shutdown.cancel();
    timeout(Duration::from_secs(5), runner)
        .await
        .expect("runner did not stop within 5 s")
        .expect("runner panicked")
        .expect("runner failed");
}

#[tokio::test]
async fn publishes_and_delivers_to_a_listener_with_headers() {
    let bus = test_bus(|_| {}).await;
    assert!(bus.is_ready());
    let shutdown = CancellationToken::new();
    let (listener, mut seen) = acking();
    let runner = bus
        .listen("orders-service", listener, shutdown.clone())
        .await
        .unwrap();

    for n in 0..3 {
        bus.publish(&ticket(n)).await.unwrap();
    }
    for n in 0..3 {
        let (event, delivery) = next(&mut seen, 5).await;
        assert_eq!(event, ticket(n));
        assert_eq!(delivery.subject, bus.subject("ticket.created"));
        assert_eq!(delivery.delivered, 1);
        assert_eq!(delivery.stream_sequence, n as u64 + 1);
        assert_eq!(
            delivery.message_id.as_deref(),
            Some(ticket(n).message_id().as_str())
        );
    }
    assert_quiet(&mut seen, Duration::from_millis(300)).await;
    assert_consumer_drained(&bus, "orders-service-ticket-created").await;

    // The stored message carries the original JSON and both headers.
    let stream = bus
        .jetstream()
        .get_stream(&bus.config().stream)
        .await
        .unwrap();
    let raw = stream.get_raw_message(1).await.unwrap();
    let payload: serde_json::Value = serde_json::from_slice(&raw.payload).unwrap();
    assert_eq!(payload, serde_json::to_value(ticket(0)).unwrap());
    let headers = raw.headers;
    assert_eq!(
        headers.get("Nats-Msg-Id").unwrap().as_str(),
        ticket(0).message_id()
    );
    assert_eq!(headers.get(SCHEMA_VERSION_HEADER).unwrap().as_str(), "1");

    stop(&shutdown, runner).await;
    cleanup(&bus).await;
}

#[tokio::test]
async fn the_same_message_id_is_stored_once() {
    let bus = test_bus(|_| {}).await;
    let event = ticket(1);
    bus.publish(&event).await.unwrap();
    bus.publish(&event).await.unwrap();
    let payload = serde_json::to_vec(&event).unwrap();
    bus.publish_raw("ticket.created", 1, &event.message_id(), payload.into())
        .await
        .unwrap();
    assert_eq!(stream_messages(&bus).await, 1);

    // A new version is a new message.
    let next_version = TicketCreated {
        version: 1,
        ..event
    };
    bus.publish(&next_version).await.unwrap();
    assert_eq!(stream_messages(&bus).await, 2);
    cleanup(&bus).await;
}

#[tokio::test]
async fn a_message_retried_later_is_redelivered_after_its_delay() {
    let bus = test_bus(|_| {}).await;
    let shutdown = CancellationToken::new();
    // Only the first event is "not applicable yet", and only on its first delivery.
    let (listener, mut seen) = recorder(|event, delivery| {
        Ok(if event.id == ticket(1).id && delivery.delivered == 1 {
            Handled::RetryLater(Duration::from_millis(700))
        } else {
            Handled::Ack
        })
    });
    let runner = bus
        .listen("orders-service", listener, shutdown.clone())
        .await
        .unwrap();

    bus.publish(&ticket(1)).await.unwrap();
    let (_, first) = next(&mut seen, 5).await;
    let first_at = Instant::now();
    // A later event is not held back by the one waiting for its retry.
    bus.publish(&ticket(2)).await.unwrap();
    let (overtaking, _) = next(&mut seen, 5).await;
    assert_eq!(overtaking, ticket(2));
    let (retried, retry) = next(&mut seen, 5).await;
    assert_eq!(retried, ticket(1));
    assert!(
        first_at.elapsed() >= Duration::from_millis(600),
        "redelivered before its delay"
    );
    assert_eq!((first.delivered, retry.delivered), (1, 2));
    assert_quiet(&mut seen, Duration::from_secs(1)).await;
    assert_consumer_drained(&bus, "orders-service-ticket-created").await;

    stop(&shutdown, runner).await;
    cleanup(&bus).await;
}

#[tokio::test]
async fn an_early_event_is_redelivered_after_the_configs_growing_early_delay() {
    let bus = test_bus(|config| {
        config.early_base_delay = Duration::from_millis(300);
        config.early_max_delay = Duration::from_secs(5);
    })
    .await;
    let shutdown = CancellationToken::new();
    // Early on its first two deliveries: waits 300 ms, then 600 ms.
    let (listener, mut seen) = recorder(|_, delivery| {
        Ok(if delivery.delivered < 3 {
            Handled::Early
        } else {
            Handled::Ack
        })
    });
    let runner = bus
        .listen("orders-service", listener, shutdown.clone())
        .await
        .unwrap();

    bus.publish(&ticket(1)).await.unwrap();
    let times = deliveries_of(&mut seen, &ticket(1), 3).await;
    assert!(
        times[1] - times[0] >= Duration::from_millis(250),
        "{times:?}"
    );
    assert!(
        times[2] - times[1] >= Duration::from_millis(550),
        "{times:?}"
    );
    assert_quiet(&mut seen, Duration::from_millis(500)).await;
    assert_consumer_drained(&bus, "orders-service-ticket-created").await;

    stop(&shutdown, runner).await;
    cleanup(&bus).await;
}

#[tokio::test]
async fn a_failed_handler_is_retried_with_backoff_until_it_succeeds() {
    let bus = test_bus(|_| {}).await;
    let shutdown = CancellationToken::new();
    let (listener, mut seen) = recorder(|_, delivery| {
        if delivery.delivered < 3 {
            Err(anyhow::anyhow!("database unavailable"))
        } else {
            Ok(Handled::Ack)
        }
    });
    let runner = bus
        .listen("orders-service", listener, shutdown.clone())
        .await
        .unwrap();

    bus.publish(&ticket(1)).await.unwrap();
    let times = deliveries_of(&mut seen, &ticket(1), 3).await;
    // Backoff: 100 ms after the first failure, 200 ms after the second.
    assert!(
        times[1] - times[0] >= Duration::from_millis(80),
        "{:?}",
        times[1] - times[0]
    );
    assert!(
        times[2] - times[1] >= Duration::from_millis(180),
        "{:?}",
        times[2] - times[1]
    );
    assert_quiet(&mut seen, Duration::from_secs(1)).await;
    assert_consumer_drained(&bus, "orders-service-ticket-created").await;

    stop(&shutdown, runner).await;
    cleanup(&bus).await;
}

#[tokio::test]
async fn a_handler_that_always_fails_is_terminated_after_max_deliver() {
    let bus = test_bus(|config| config.max_deliver = 3).await;
    let shutdown = CancellationToken::new();
    let (listener, mut seen) = recorder(|event, _| {
        if event.id == ticket(1).id {
            Err(anyhow::anyhow!("bug"))
        } else {
            Ok(Handled::Ack)
        }
    });
    let runner = bus
        .listen("orders-service", listener, shutdown.clone())
        .await
        .unwrap();

    bus.publish(&ticket(1)).await.unwrap();
    bus.publish(&ticket(2)).await.unwrap();
    let mut deliveries: HashMap<String, Vec<u64>> = HashMap::new();
    for _ in 0..4 {
        let (event, delivery) = next(&mut seen, 5).await;
        deliveries
            .entry(event.id)
            .or_default()
            .push(delivery.delivered);
    }
    assert_quiet(&mut seen, Duration::from_secs(1)).await;
    assert_eq!(deliveries[&ticket(1).id], [1, 2, 3]);
    assert_eq!(deliveries[&ticket(2).id], [1]);
    assert_consumer_drained(&bus, "orders-service-ticket-created").await;

    stop(&shutdown, runner).await;
    cleanup(&bus).await;
}

#[tokio::test]
async fn a_poison_message_is_terminated_and_does_not_block_the_next() {
    let bus = test_bus(|config| config.ack_wait = Duration::from_secs(1)).await;
    let shutdown = CancellationToken::new();
    let (listener, mut seen) = acking();
    let runner = bus
        .listen("orders-service", listener, shutdown.clone())
        .await
        .unwrap();

    // Not JSON; JSON of the wrong shape; an unknown schema version; no headers at all.
    bus.publish_raw("ticket.created", 1, "poison-1", "{not json".into())
        .await
        .unwrap();
    bus.publish_raw("ticket.created", 1, "poison-2", r#"{"id":"x"}"#.into())
        .await
        .unwrap();
    let good_payload = serde_json::to_vec(&ticket(9)).unwrap();
    bus.publish_raw("ticket.created", 99, "poison-3", good_payload.into())
        .await
        .unwrap();
    bus.jetstream()
        .publish(
            bus.subject("ticket.created"),
            serde_json::to_vec(&ticket(8)).unwrap().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    bus.publish(&ticket(1)).await.unwrap();

    let (event, delivery) = next(&mut seen, 5).await;
    assert_eq!(event, ticket(1));
    assert_eq!(delivery.stream_sequence, 5);
    // Terminated, not left to time out: nothing comes back after the ack wait.
    assert_quiet(&mut seen, Duration::from_millis(2500)).await;
    assert_consumer_drained(&bus, "orders-service-ticket-created").await;
    let stream = bus
        .jetstream()
        .get_stream(&bus.config().stream)
        .await
        .unwrap();
    let info = stream
        .consumer_info("orders-service-ticket-created")
        .await
        .unwrap();
    assert_eq!(info.num_redelivered, 0);
    assert_eq!(info.ack_floor.stream_sequence, 5);

    stop(&shutdown, runner).await;
    cleanup(&bus).await;
}

#[tokio::test]
async fn replicas_sharing_a_durable_split_the_work_without_duplicates_or_losses() {
    const EVENTS: usize = 200;
    let bus = test_bus(|_| {}).await;
    let shutdown = CancellationToken::new();
    let (tx, mut seen) = mpsc::unbounded_channel();
    let mut runners = Vec::new();
    let per_replica: Arc<Mutex<[usize; 2]>> = Arc::default();
    for replica in 0..2 {
        let per_replica = per_replica.clone();
        let listener = Recorder {
            seen: tx.clone(),
            behaviour: Box::new(move |_, _| {
                per_replica.lock().unwrap()[replica] += 1;
                Ok(Handled::Ack)
            }),
            work: Duration::from_millis(2),
        };
        // Each replica has its own connection, as separate pods would.
        let replica_bus = Bus::connect(bus.config().clone()).await.unwrap();
        runners.push(
            replica_bus
                .listen("orders-service", listener, shutdown.clone())
                .await
                .unwrap(),
        );
    }
    drop(tx);

    for n in 0..EVENTS {
        bus.publish(&ticket(n)).await.unwrap();
    }
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..EVENTS {
        let (event, _) = next(&mut seen, 10).await;
        *counts.entry(event.id).or_default() += 1;
    }
    assert_quiet(&mut seen, Duration::from_secs(1)).await;
    assert_eq!(counts.len(), EVENTS, "every event handled");
    assert!(counts.values().all(|&c| c == 1), "no event handled twice");
    let split = *per_replica.lock().unwrap();
    assert_eq!(split[0] + split[1], EVENTS);
    assert!(
        split[0] > 0 && split[1] > 0,
        "both replicas worked: {split:?}"
    );
    assert_consumer_drained(&bus, "orders-service-ticket-created").await;

    for runner in runners {
        stop(&shutdown, runner).await;
    }
    cleanup(&bus).await;
}

#[tokio::test]
async fn each_service_gets_every_event() {
    let bus = test_bus(|_| {}).await;
    let shutdown = CancellationToken::new();
    let (orders, mut orders_seen) = acking();
    let (payments, mut payments_seen) = acking();
    let runners = [
        bus.listen("orders-service", orders, shutdown.clone())
            .await
            .unwrap(),
        bus.listen("payments-service", payments, shutdown.clone())
            .await
            .unwrap(),
    ];
    for n in 0..5 {
        bus.publish(&ticket(n)).await.unwrap();
    }
    for seen in [&mut orders_seen, &mut payments_seen] {
        for n in 0..5 {
            assert_eq!(next(seen, 5).await.0, ticket(n));
        }
        assert_quiet(seen, Duration::from_millis(300)).await;
    }
    for runner in runners {
        stop(&shutdown, runner).await;
    }
    cleanup(&bus).await;
}

#[tokio::test]
async fn a_consumer_created_late_receives_the_history() {
    let bus = test_bus(|_| {}).await;
    for n in 0..5 {
        bus.publish(&ticket(n)).await.unwrap();
    }
    let shutdown = CancellationToken::new();
    let (listener, mut seen) = acking();
    let runner = bus
        .listen("late-service", listener, shutdown.clone())
        .await
        .unwrap();
    for n in 0..5 {
        assert_eq!(next(&mut seen, 5).await.0, ticket(n));
    }
    assert_quiet(&mut seen, Duration::from_millis(300)).await;
    stop(&shutdown, runner).await;
    cleanup(&bus).await;
}

#[tokio::test]
async fn shutdown_finishes_the_message_in_hand_and_a_restart_resumes_after_it() {
    let bus = test_bus(|_| {}).await;
    let shutdown = CancellationToken::new();
    let (mut listener, mut seen) = acking();
    listener.work = Duration::from_millis(500);
    let runner = bus
        .listen("orders-service", listener, shutdown.clone())
        .await
        .unwrap();

    bus.publish(&ticket(1)).await.unwrap();
    assert_eq!(next(&mut seen, 5).await.0, ticket(1));
    // Stop while the handler is still working on it.
    let stopping = Instant::now();
    stop(&shutdown, runner).await;
    assert!(
        stopping.elapsed() >= Duration::from_millis(300),
        "did not wait for the message in hand"
    );
    assert_consumer_drained(&bus, "orders-service-ticket-created").await;

    // Stopped: nothing is pulled any more.
    bus.publish(&ticket(2)).await.unwrap();
    assert_quiet(&mut seen, Duration::from_millis(500)).await;

    // A restarted service resumes with what it has not acked.
    let shutdown = CancellationToken::new();
    let (listener, mut seen) = acking();
    let runner = bus
        .listen("orders-service", listener, shutdown.clone())
        .await
        .unwrap();
    let (event, delivery) = next(&mut seen, 5).await;
    assert_eq!((event, delivery.delivered), (ticket(2), 1));
    assert_quiet(&mut seen, Duration::from_millis(300)).await;
    stop(&shutdown, runner).await;
    cleanup(&bus).await;
}

/// A listener that takes `work` per message and tracks how many it has in
/// hand at once (clones share the counts).
#[derive(Clone)]
struct Gauge(Arc<GaugeState>);

struct GaugeState {
    work: Duration,
    now: std::sync::atomic::AtomicUsize,
    most: std::sync::atomic::AtomicUsize,
    handled: Mutex<Vec<String>>,
}

impl std::ops::Deref for Gauge {
    type Target = GaugeState;
    fn deref(&self) -> &GaugeState {
        &self.0
    }
}

impl Gauge {
    fn new(work: Duration) -> Self {
        Self(Arc::new(GaugeState {
            work,
            now: Default::default(),
            most: Default::default(),
            handled: Mutex::default(),
        }))
    }

    fn handled(&self) -> Vec<String> {
        self.handled.lock().unwrap().clone()
    }
}

impl Listener for Gauge {
    type Event = TicketCreated;

    async fn handle(&self, event: TicketCreated, _: &Delivery) -> anyhow::Result<Handled> {
        use std::sync::atomic::Ordering::SeqCst;
        let now = self.now.fetch_add(1, SeqCst) + 1;
        self.most.fetch_max(now, SeqCst);
        sleep(self.work).await;
        self.handled.lock().unwrap().push(event.id);
        self.now.fetch_sub(1, SeqCst);
        Ok(Handled::Ack)
    }
}

async fn wait_for_handled(gauge: &Gauge, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while gauge.handled().len() < count {
        assert!(
            Instant::now() < deadline,
            "handled {} of {count}",
            gauge.handled().len()
        );
        sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_burst_is_handled_up_to_the_concurrency_at_once_and_never_more() {
    let bus = test_bus(|config| config.concurrency = 4).await;
    for n in 0..20 {
        bus.publish(&ticket(n)).await.unwrap();
    }
    let shutdown = CancellationToken::new();
    let gauge = Gauge::new(Duration::from_millis(200));
    let runner = bus
        .listen("orders-service", gauge.clone(), shutdown.clone())
        .await
        .unwrap();
    wait_for_handled(&gauge, 20).await;
    assert_eq!(
        gauge.most.load(std::sync::atomic::Ordering::SeqCst),
        4,
        "four at once, not one after another and not more"
    );
    let mut handled = gauge.handled();
    handled.sort();
    let mut published: Vec<String> = (0..20).map(|n| ticket(n).id).collect();
    published.sort();
    assert_eq!(handled, published, "each exactly once");
    assert_consumer_drained(&bus, "orders-service-ticket-created").await;
    stop(&shutdown, runner).await;
    cleanup(&bus).await;
}

#[tokio::test]
async fn a_stopping_replica_finishes_what_it_started_and_gives_back_the_rest_at_once() {
    // The ack wait is long: a message kept by the stopped replica would come
    // back only after it; given back, it comes back at once.
    let bus = test_bus(|config| {
        config.concurrency = 4;
        config.ack_wait = Duration::from_secs(30);
    })
    .await;
    for n in 0..12 {
        bus.publish(&ticket(n)).await.unwrap();
    }
    let first = Gauge::new(Duration::from_millis(400));
    let shutdown = CancellationToken::new();
    let runner = bus
        .listen("orders-service", first.clone(), shutdown.clone())
        .await
        .unwrap();
    sleep(Duration::from_millis(150)).await;
    stop(&shutdown, runner).await;
    let done_first = first.handled();
    assert!(
        !done_first.is_empty() && done_first.len() <= 4,
        "finished what it had started: {done_first:?}"
    );

    let second = Gauge::new(Duration::ZERO);
    let shutdown = CancellationToken::new();
    let resumed = Instant::now();
    let runner = bus
        .listen("orders-service", second.clone(), shutdown.clone())
        .await
        .unwrap();
    wait_for_handled(&second, 12 - done_first.len()).await;
    assert!(
        resumed.elapsed() < Duration::from_secs(10),
        "the rest came back without waiting out the ack wait"
    );
    let mut all = [done_first, second.handled()].concat();
    all.sort();
    let mut published: Vec<String> = (0..12).map(|n| ticket(n).id).collect();
    published.sort();
    assert_eq!(all, published, "each handled exactly once");
    assert_consumer_drained(&bus, "orders-service-ticket-created").await;
    stop(&shutdown, runner).await;
    cleanup(&bus).await;
}

#[tokio::test]
async fn listening_with_an_invalid_service_name_fails_early() {
    let bus = test_bus(|_| {}).await;
    let (listener, _seen) = acking();
    let result = bus
        .listen("orders.service", listener, CancellationToken::new())
        .await;
    assert!(result.is_err());
    cleanup(&bus).await;
}
