//! The event bus: NATS JetStream with typed publishing and a listener runner.
//!
//! A service connects once ([`Bus::connect`]), publishes [`Event`]s with
//! [`Bus::publish`] and consumes them by implementing [`Listener`] and handing it
//! to [`Bus::listen`]. The runner owns everything that is not business logic: the
//! durable consumer, the pull loop, decoding, acks, retries, logging and shutdown.
//!
//! # The stream
//!
//! One stream (`TICKETING`) captures `ticket.>`, `order.>`, `expiration.>` and
//! `payment.>`, with limits retention (messages stay for [`BusConfig::max_age`]
//! whether or not anyone consumed them, so a new service can replay history), file
//! storage, and a duplicate window. Every service creates or updates it at start
//! with the same configuration, so there is no start-up order.
//!
//! Tests run against a shared server: [`BusConfig::with_namespace`] gives each test
//! its own subject prefix and its own stream, so they never see each other's events.
//!
//! # Publishing
//!
//! [`Bus::publish`] waits for the stream's ack, so `Ok` means "stored". The
//! `Nats-Msg-Id` header is the event's deterministic [`Event::message_id`]: a
//! publish retried after a lost ack (here, by the outbox relay, or by a replica
//! racing another) is dropped by JetStream as a duplicate within the window.
//!
//! The schema version travels in the `Ticketing-Schema-Version` header rather than
//! in the payload, for two reasons: the payload stays byte-for-byte the original
//! app's JSON, and a consumer can decide whether it can read a message before
//! parsing it (a version it does not know is terminated, not mis-parsed).
//!
//! # Consuming
//!
//! Each `(service, subject)` pair gets its own durable pull consumer, named
//! `<service>-<subject with dashes>` (`orders-service-ticket-created`), filtered
//! on that one subject and delivering all history. One consumer per subject, not
//! one per service, because acks, redeliveries and lag are then per event type:
//! a stuck `ticket.updated` (waiting for an earlier version) never holds back
//! `payment.created`, and each listener is its own task. Replicas of a service
//! pull from the same durable consumer, so each message goes to one of them.
//!
//! The runner handles up to [`BusConfig::concurrency`] messages of a consumer
//! at once (default 16), each acked on its own, and asks the server for no
//! more than that: a burst of events is worked off in parallel instead of one
//! round trip after another, and at most that many wait in hand while their
//! ack timers run. Nothing depends on the order of handling: every handler
//! applies the version rule (DESIGN §4), so an update handled before its
//! predecessor is retried later, as it would be if it had arrived first. A
//! stopping replica finishes the messages in hand and gives back (`-NAK`, no
//! delay) those it had received but not started, so another replica gets
//! them at once. The outcome decides the ack:
//!
//! | outcome | ack | log |
//! |---|---|---|
//! | [`Handled::Ack`] | `+ACK`, confirmed by the server before the slot is free | debug |
//! | [`Handled::Early`] (a version gap: its predecessor is not in yet) | `-NAK` with [`BusConfig::early_delay`] | debug |
//! | [`Handled::RetryLater`]`(d)` | `-NAK` with delay `d` | debug |
//! | [`Handled::Invalid`] (it names what does not exist where it must) | `+TERM` | error, with the reason |
//! | handler `Err` or panic | `-NAK` with exponential backoff on the delivery count | warn, with the error chain |
//! | payload that does not decode, missing or unknown schema version | `+TERM` | error |
//! | a retry on the last allowed delivery ([`BusConfig::max_deliver`]) | `+TERM` | error |
//!
//! "Ack only after the write" holds because the handler returns only when its
//! writes (and its outgoing events, via the outbox) are durable, and the runner
//! awaits the server's confirmation of the ack before it moves on. Delivery is
//! therefore at least once (a crash between the write and the ack redelivers),
//! and handlers are idempotent (the version rules of DESIGN §4).
//!
//! Terminated messages stay in the stream until `max_age`, so they can be
//! inspected and replayed by hand. While a handler runs longer than half of
//! [`BusConfig::ack_wait`], the runner sends "in progress" acks so the server
//! does not redeliver it to another replica meanwhile.
//!
//! Retries are driven by the runner's NAK delays, not by the consumer's `backoff`
//! list: the server's `backoff` only applies to ack *timeouts* (a crashed
//! replica), and mixing it with NAK delays makes the effective delay hard to
//! predict. A crash is retried after `ack_wait`.
//!
//! # Failures of NATS itself
//!
//! The client reconnects forever. If the pull loop fails (missed heartbeats after
//! a server restart, a deleted consumer), the runner logs it, waits, re-creates
//! the consumer and the stream if needed, and goes on; it only returns when told
//! to shut down: it stops pulling, finishes the message in hand, and returns `Ok`.

use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{self, DiscardPolicy, RetentionPolicy, StorageType};
use async_nats::jetstream::{self, AckKind};
use async_nats::{Client, ConnectOptions};
use bytes::Bytes;
use futures::{FutureExt as _, StreamExt as _, stream::FuturesUnordered};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, debug, error, info, info_span, warn};

use crate::backoff;
use crate::config::{ConfigError, Env};
use crate::events::Event;
use crate::metrics::{self, EventOutcome};

/// The header carrying the payload's [`Event::SCHEMA_VERSION`].
pub const SCHEMA_VERSION_HEADER: &str = "Ticketing-Schema-Version";

/// The stream's name in production.
pub const DEFAULT_STREAM: &str = "TICKETING";

/// The subjects the stream captures (before the prefix).
pub const STREAM_SUBJECTS: [&str; 4] = ["ticket.>", "order.>", "expiration.>", "payment.>"];

/// How long one pull request waits on the server before it is renewed.
const PULL_EXPIRES: Duration = Duration::from_secs(30);
/// Idle heartbeat of a pull request: two missed ones mean the server is gone.
const PULL_HEARTBEAT: Duration = Duration::from_secs(5);
/// How often a failed publish is tried again (it is idempotent, see the module docs).
const PUBLISH_ATTEMPTS: u32 = 4;

/// Everything the bus needs to know. [`BusConfig::new`] has production defaults.
#[derive(Debug, Clone)]
pub struct BusConfig {
    /// The NATS server, e.g. `nats://127.0.0.1:4222`, or several servers of a
    /// cluster, comma-separated (the client fails over between them).
    pub url: String,
    /// The stream's name (default `TICKETING`).
    pub stream: String,
    /// Put in front of every subject (default empty). Tests use a unique one, see
    /// [`BusConfig::with_namespace`].
    pub subject_prefix: String,
    /// The connection's name, shown by the server's monitoring (use the service's).
    pub connection_name: String,
    /// How long the stream keeps a message (default 7 days).
    pub max_age: Duration,
    /// On how many servers of a NATS cluster the stream keeps every message
    /// (default 1; `NATS_STREAM_REPLICAS`, see [`BusConfig::from_env`]). A
    /// stream that exists with another count is updated to this one, its
    /// messages kept (NATS moves them), never recreated.
    pub stream_replicas: usize,
    /// How long the stream remembers message ids for deduplication (default 2 min).
    pub duplicate_window: Duration,
    /// How long [`Bus::connect`] keeps trying a server that is not up yet (default 30 s).
    pub connect_timeout: Duration,
    /// How long a delivered message may stay unacknowledged before the server
    /// gives it to another replica (default 10 s). This is how long a message
    /// in hand when a replica crashed waits before it is redelivered; a slow
    /// handler is not cut short by it (the runner sends "in progress" acks).
    pub ack_wait: Duration,
    /// How many times a message is delivered at most (default 20); the last failed
    /// attempt terminates it.
    pub max_deliver: i64,
    /// The NAK delay after a handler's first failure; doubled on each further one
    /// (default 1 s).
    pub retry_base_delay: Duration,
    /// The cap of that delay (default 60 s).
    pub retry_max_delay: Duration,
    /// The NAK delay of an event that arrived before its predecessor
    /// ([`Handled::Early`]) on its first delivery; doubled on each further
    /// one (default 0.5 s): quick when the predecessor is just behind.
    pub early_base_delay: Duration,
    /// The cap of that delay (default 30 s): patient when the predecessor's
    /// publisher is down — about 7 minutes over the default 20 deliveries.
    pub early_max_delay: Duration,
    /// How many messages of one consumer a replica handles at once (default
    /// 16; see the module docs). 1 handles them one after another.
    pub concurrency: usize,
}

impl BusConfig {
    /// Production defaults for the server at `url`.
    pub fn new(url: impl Into<String>) -> BusConfig {
        BusConfig {
            url: url.into(),
            stream: DEFAULT_STREAM.to_owned(),
            subject_prefix: String::new(),
            connection_name: "ticketing".to_owned(),
            max_age: Duration::from_secs(7 * 24 * 60 * 60),
            stream_replicas: 1,
            duplicate_window: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(30),
            ack_wait: Duration::from_secs(10),
            max_deliver: 20,
            retry_base_delay: Duration::from_secs(1),
            retry_max_delay: Duration::from_secs(60),
            early_base_delay: Duration::from_millis(500),
            early_max_delay: Duration::from_secs(30),
            concurrency: 16,
        }
    }

    /// Production defaults for the server at `NATS_URL` (required), with the
    /// stream kept on `NATS_STREAM_REPLICAS` servers (optional, 1 to 5,
    /// default 1; at most the servers of the cluster).
    pub fn from_env(env: &Env) -> Result<BusConfig, ConfigError> {
        let url = env.required("NATS_URL")?;
        let replicas: usize = env.parse_or("NATS_STREAM_REPLICAS", 1)?;
        if !(1..=5).contains(&replicas) {
            return Err(ConfigError::Invalid {
                name: "NATS_STREAM_REPLICAS",
                reason: format!("{replicas} is not between 1 and 5 (JetStream's limit)"),
            });
        }
        Ok(BusConfig {
            stream_replicas: replicas,
            ..BusConfig::new(url)
        })
    }

    /// Isolates everything under `namespace` (e.g. a unique name per test): subjects
    /// get the prefix `<namespace>.` and the stream is `TICKETING_<namespace>`, so
    /// several namespaces share one server without seeing each other.
    pub fn with_namespace(mut self, namespace: &str) -> BusConfig {
        let token: String = namespace
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.subject_prefix = format!("{token}.");
        self.stream = format!("{DEFAULT_STREAM}_{token}");
        self
    }

    /// Names the connection (shown in the server's monitoring).
    pub fn with_connection_name(mut self, name: impl Into<String>) -> BusConfig {
        self.connection_name = name.into();
        self
    }

    /// The NAK delay after the `delivered`-th delivery failed: base × 2^(n−1), capped.
    pub fn retry_delay(&self, delivered: u64) -> Duration {
        backoff::doubling(
            self.retry_base_delay,
            delivered.saturating_sub(1),
            self.retry_max_delay,
        )
    }

    /// The NAK delay of an early event ([`Handled::Early`]) on its
    /// `delivered`-th delivery: early base × 2^(n−1), capped. The one
    /// formula for every service's early events.
    pub fn early_delay(&self, delivered: u64) -> Duration {
        backoff::doubling(
            self.early_base_delay,
            delivered.saturating_sub(1),
            self.early_max_delay,
        )
    }
}

/// An already serialised event, for [`Bus::publish_batch`].
#[derive(Debug, Clone)]
pub struct RawEvent<'a> {
    /// The subject without the prefix.
    pub subject: &'a str,
    pub schema_version: u32,
    /// The deterministic message id (`Nats-Msg-Id`).
    pub message_id: &'a str,
    pub payload: Bytes,
}

/// A connection to JetStream: publishes events and runs listeners. Cheap to clone.
#[derive(Clone)]
pub struct Bus {
    client: Client,
    jetstream: jetstream::Context,
    config: Arc<BusConfig>,
}

impl fmt::Debug for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bus")
            .field("stream", &self.config.stream)
            .field("subject_prefix", &self.config.subject_prefix)
            .field("state", &self.client.connection_state())
            .finish()
    }
}

impl Bus {
    /// Connects (retrying for [`BusConfig::connect_timeout`] while the server is not
    /// up yet), checks that the server runs JetStream 2.10 or newer, and creates or
    /// updates the stream.
    pub async fn connect(config: BusConfig) -> anyhow::Result<Bus> {
        let client = connect_with_retry(&config).await?;
        let info = client.server_info();
        if !client.is_server_compatible(2, 10, 0) {
            bail!(
                "NATS server {} at {} is too old: JetStream 2.10 or newer is required",
                info.version,
                config.url
            );
        }
        let bus = Bus {
            jetstream: jetstream::new(client.clone()),
            client,
            config: Arc::new(config),
        };
        bus.ensure_stream().await?;
        info!(url = %bus.config.url, stream = %bus.config.stream, server = %info.version, "connected to NATS JetStream");
        Ok(bus)
    }

    /// Whether the connection to NATS is up, for the readiness probe.
    pub fn is_ready(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// The configuration the bus was built with.
    pub fn config(&self) -> &BusConfig {
        &self.config
    }

    /// The JetStream context, for tests and tools (stream info, raw consumers).
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.jetstream
    }

    /// The full subject of `subject` (with the configured prefix).
    pub fn subject(&self, subject: &str) -> String {
        format!("{}{subject}", self.config.subject_prefix)
    }

    /// Creates the stream, or updates it to this configuration.
    pub async fn ensure_stream(&self) -> anyhow::Result<()> {
        let config = stream::Config {
            name: self.config.stream.clone(),
            description: Some("Ticketing domain events".to_owned()),
            subjects: STREAM_SUBJECTS.iter().map(|s| self.subject(s)).collect(),
            retention: RetentionPolicy::Limits,
            discard: DiscardPolicy::Old,
            storage: StorageType::File,
            max_age: self.config.max_age,
            duplicate_window: self.config.duplicate_window,
            num_replicas: self.config.stream_replicas,
            ..Default::default()
        };
        // Services start together: two may both find no stream and both create it.
        // The loser's error is transient; the next try updates the winner's stream.
        let mut attempt = 1;
        loop {
            match self.jetstream.create_or_update_stream(config.clone()).await {
                Ok(_) => return Ok(()),
                Err(err) if attempt < 3 => {
                    debug!(error = %err, attempt, "creating the stream failed; retrying");
                    sleep(Duration::from_millis(200) * attempt).await;
                    attempt += 1;
                }
                Err(err) => {
                    return Err(anyhow!(err)).with_context(|| {
                        format!("failed to create or update stream {}", self.config.stream)
                    });
                }
            }
        }
    }

    /// Publishes `event` on its subject and waits until the stream has stored it
    /// (or recognised it as a duplicate of its message id).
    pub async fn publish<E: Event>(&self, event: &E) -> anyhow::Result<()> {
        let payload = serde_json::to_vec(event)
            .with_context(|| format!("failed to serialise {} event", E::SUBJECT))?;
        self.publish_raw(
            E::SUBJECT,
            E::SCHEMA_VERSION,
            &event.message_id(),
            payload.into(),
        )
        .await
    }

    /// Publishes an already serialised event, for the outbox relay: `subject`
    /// without the prefix, the payload's schema version and its message id.
    pub async fn publish_raw(
        &self,
        subject: &str,
        schema_version: u32,
        message_id: &str,
        payload: Bytes,
    ) -> anyhow::Result<()> {
        let full_subject = self.subject(subject);
        let mut attempt = 1;
        loop {
            let message = PublishMessage::build()
                .payload(payload.clone())
                .message_id(message_id)
                .header(SCHEMA_VERSION_HEADER, schema_version.to_string());
            let result = match self
                .jetstream
                .send_publish(full_subject.clone(), message)
                .await
            {
                Ok(ack) => ack.await,
                Err(err) => Err(err),
            };
            match result {
                Ok(ack) => {
                    debug!(subject = %full_subject, message_id, sequence = ack.sequence, duplicate = ack.duplicate, "published");
                    metrics::record_publish(subject, true);
                    return Ok(());
                }
                // The same message id makes a retry safe; only size errors are final.
                Err(err)
                    if attempt < PUBLISH_ATTEMPTS
                        && err.kind() != PublishErrorKind::MaxPayloadExceeded =>
                {
                    warn!(subject = %full_subject, message_id, attempt, error = %err, "publish failed; retrying");
                    sleep(Duration::from_millis(250) * attempt).await;
                    // A server that lost its storage lost the stream too: bring it back.
                    if err.kind() == PublishErrorKind::StreamNotFound
                        && let Err(err) = self.ensure_stream().await
                    {
                        debug!(
                            error = format!("{err:#}"),
                            "could not re-create the stream yet"
                        );
                    }
                    attempt += 1;
                }
                Err(err) => {
                    metrics::record_publish(subject, false);
                    return Err(anyhow!(err)).with_context(|| {
                        format!("failed to publish {full_subject} ({message_id})")
                    });
                }
            }
        }
    }

    /// Publishes several already serialised events at once, for the outbox
    /// relay: every publish is sent before any ack is awaited, so a batch
    /// costs about one round trip instead of one per event, and events sent
    /// in order are stored in order. A publish whose first try fails is tried
    /// again on its own, with [`Bus::publish_raw`]'s retries (the message id
    /// makes that safe). One result per event, in order.
    pub async fn publish_batch(&self, events: &[RawEvent<'_>]) -> Vec<anyhow::Result<()>> {
        let mut sent = Vec::with_capacity(events.len());
        for event in events {
            let message = PublishMessage::build()
                .payload(event.payload.clone())
                .message_id(event.message_id)
                .header(SCHEMA_VERSION_HEADER, event.schema_version.to_string());
            sent.push(
                self.jetstream
                    .send_publish(self.subject(event.subject), message)
                    .await,
            );
        }
        let mut results = Vec::with_capacity(events.len());
        for (event, sent) in events.iter().zip(sent) {
            let first = match sent {
                Ok(ack) => ack.await,
                Err(err) => Err(err),
            };
            results.push(match first {
                Ok(_) => {
                    metrics::record_publish(event.subject, true);
                    Ok(())
                }
                Err(err) => {
                    debug!(subject = event.subject, message_id = event.message_id, error = %err, "batched publish failed; retrying it alone");
                    self.publish_raw(
                        event.subject,
                        event.schema_version,
                        event.message_id,
                        event.payload.clone(),
                    )
                    .await
                }
            });
        }
        results
    }

    /// Runs `listener` for `service` (e.g. `orders-service`) until `shutdown`.
    ///
    /// Creates (or updates) the durable consumer `<service>-<subject>` first, so a
    /// wrong name or a missing stream fails here, then spawns the runner (see the
    /// module docs). The task returns `Ok(())` once `shutdown` is cancelled and the
    /// message in hand, if any, is handled.
    pub async fn listen<L: Listener>(
        &self,
        service: &str,
        listener: L,
        shutdown: CancellationToken,
    ) -> anyhow::Result<JoinHandle<anyhow::Result<()>>> {
        let name = consumer_name(service, <L::Event as Event>::SUBJECT)?;
        let consumer = self.create_consumer::<L::Event>(&name, service).await?;
        let runner = Runner {
            bus: self.clone(),
            name,
            service: service.to_owned(),
            listener,
        };
        Ok(tokio::spawn(runner.run(consumer, shutdown)))
    }

    async fn create_consumer<E: Event>(
        &self,
        name: &str,
        service: &str,
    ) -> anyhow::Result<PullConsumer> {
        let config = pull::Config {
            durable_name: Some(name.to_owned()),
            description: Some(format!("{service} consuming {}", E::SUBJECT)),
            filter_subject: self.subject(E::SUBJECT),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::Explicit,
            ack_wait: self.config.ack_wait,
            max_deliver: self.config.max_deliver,
            ..Default::default()
        };
        self.jetstream
            .create_consumer_on_stream(config, &self.config.stream)
            .await
            .with_context(|| {
                format!(
                    "failed to create consumer {name} on stream {}",
                    self.config.stream
                )
            })
    }
}

async fn connect_with_retry(config: &BusConfig) -> anyhow::Result<Client> {
    let deadline = Instant::now() + config.connect_timeout;
    let mut delay = Duration::from_millis(100);
    loop {
        let options = ConnectOptions::new()
            .name(&config.connection_name)
            .connection_timeout(Duration::from_secs(5))
            .ping_interval(Duration::from_secs(20))
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::Connected => info!("NATS connection (re)established"),
                    async_nats::Event::Disconnected => warn!("NATS connection lost; reconnecting"),
                    async_nats::Event::ClientError(err) => {
                        debug!(error = %err, "NATS client error")
                    }
                    other => warn!(event = %other, "NATS connection event"),
                }
            });
        let servers: Vec<&str> = config.url.split(',').map(str::trim).collect();
        match options.connect(servers).await {
            Ok(client) => return Ok(client),
            Err(err) if Instant::now() + delay < deadline => {
                warn!(url = %config.url, error = %err, "NATS not reachable yet; retrying");
                sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(err) => {
                return Err(anyhow!(err))
                    .with_context(|| format!("failed to connect to NATS at {}", config.url));
            }
        }
    }
}

/// The durable consumer of `service` for `subject`: `orders-service` +
/// `ticket.created` → `orders-service-ticket-created`.
pub fn consumer_name(service: &str, subject: &str) -> anyhow::Result<String> {
    let valid = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    if service.is_empty() || !service.chars().all(valid) {
        bail!(
            "invalid service name {service:?} for a durable consumer: use letters, digits, '-' and '_'"
        );
    }
    Ok(format!("{service}-{}", subject.replace('.', "-")))
}

/// Where a message came from, for logs and for handlers that care.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The full subject it was published on (with any prefix).
    pub subject: String,
    /// Its sequence number in the stream.
    pub stream_sequence: u64,
    /// How many times it has been delivered, this time included (1 = first).
    pub delivered: u64,
    /// How many more messages wait for this consumer.
    pub pending: u64,
    /// Its `Nats-Msg-Id`, if it had one.
    pub message_id: Option<String>,
}

/// What a listener did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// Done (or a duplicate of something already done): acknowledge it.
    Ack,
    /// Arrived before an event it depends on (its predecessor version, the
    /// cancel of the order holding the ticket): deliver it again after
    /// [`BusConfig::early_delay`], which grows with each delivery. Counts
    /// towards [`BusConfig::max_deliver`].
    Early,
    /// Cannot be applied yet (e.g. its predecessor version has not arrived): deliver
    /// it again after this delay. Counts towards [`BusConfig::max_deliver`].
    RetryLater(Duration),
    /// Can never be handled (it names what does not exist where it must:
    /// an order for a ticket that tickets never had): `+TERM`, logged as an
    /// error with this reason and counted `terminated`; it stays in the
    /// stream for a human. Never an ack, which would count it handled.
    Invalid(&'static str),
}

/// The business logic for one event type. The runner ([`Bus::listen`]) does the
/// rest: decoding, acks, retries, logging, shutdown.
///
/// Return `Ok(Handled::Ack)` only once the effects are durable (the database write
/// and any outgoing events in the outbox). Return `Err` for failures that may pass
/// (the database is down): the event is retried with backoff. Handlers must be
/// idempotent: delivery is at least once.
///
/// Implement it with `async fn handle`: the trait asks for a future that is
/// `Send`, so the runner can run it on any worker thread.
pub trait Listener: Send + Sync + 'static {
    /// The event type consumed, which also fixes the subject.
    type Event: Event;

    /// Applies one event.
    fn handle(
        &self,
        event: Self::Event,
        delivery: &Delivery,
    ) -> impl Future<Output = anyhow::Result<Handled>> + Send;
}

/// One durable consumer's loop.
struct Runner<L> {
    bus: Bus,
    name: String,
    service: String,
    listener: L,
}

/// How long the runner waits before re-creating a consumer: 1 s after a
/// first failure, doubling while failures follow each other, at most 30 s.
/// A pull that had been running for a while before it failed starts the
/// count afresh, so a long-lived service that met a few blips over the days
/// (a NATS restart, missed heartbeats under load) still recovers in a second.
#[derive(Debug, Default)]
struct Restarts {
    failures: u32,
}

impl Restarts {
    /// A pull that counts as healthy: it outlived one pull request.
    const HEALTHY: Duration = PULL_EXPIRES;

    /// The pull failed after running for `ran_for`.
    fn pull_failed(&mut self, ran_for: Duration) -> Duration {
        if ran_for >= Self::HEALTHY {
            self.failures = 0;
        }
        self.recreate_failed()
    }

    /// Another failure in a row.
    fn recreate_failed(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        backoff::doubling(
            Duration::from_millis(500),
            u64::from(self.failures),
            Duration::from_secs(30),
        )
    }
}

/// What to do with a message once its handling is over.
enum Verdict {
    Ack,
    /// The listener asked for a later redelivery.
    Retry(Duration),
    /// The listener failed; redelivered with backoff.
    Fail(Duration),
    Term,
}

impl<L: Listener> Runner<L> {
    async fn run(
        self,
        mut consumer: PullConsumer,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let mut restarts = Restarts::default();
        info!(consumer = %self.name, subject = %self.bus.subject(<L::Event as Event>::SUBJECT), "listening");
        loop {
            let pulling = Instant::now();
            let mut delay = match self.pull(&consumer, &shutdown).await {
                Ok(()) => {
                    info!(consumer = %self.name, "listener stopped");
                    return Ok(());
                }
                Err(err) => {
                    warn!(consumer = %self.name, error = format!("{err:#}"), "pulling failed; restarting the consumer");
                    restarts.pull_failed(pulling.elapsed())
                }
            };
            // Wait, then re-create the consumer (and the stream, if the server lost it).
            loop {
                tokio::select! {
                    biased;
                    () = shutdown.cancelled() => return Ok(()),
                    () = sleep(delay) => {}
                }
                let recreated = match self
                    .bus
                    .create_consumer::<L::Event>(&self.name, &self.service)
                    .await
                {
                    Ok(consumer) => Ok(consumer),
                    Err(_) => match self.bus.ensure_stream().await {
                        Ok(()) => {
                            self.bus
                                .create_consumer::<L::Event>(&self.name, &self.service)
                                .await
                        }
                        Err(err) => Err(err),
                    },
                };
                match recreated {
                    Ok(fresh) => {
                        consumer = fresh;
                        break;
                    }
                    Err(err) => {
                        warn!(consumer = %self.name, error = format!("{err:#}"), "cannot re-create the consumer yet");
                        delay = restarts.recreate_failed();
                    }
                }
            }
        }
    }

    /// Pulls and handles messages until shutdown (`Ok`) or a pull error
    /// (`Err`), up to [`BusConfig::concurrency`] at once. Either way the
    /// messages in hand are finished first.
    async fn pull(
        &self,
        consumer: &PullConsumer,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        let limit = self.bus.config.concurrency.max(1);
        // The server delivers at most `limit` per pull request, and the
        // client asks for more as they are taken (see the module docs).
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(limit)
            .expires(PULL_EXPIRES)
            .heartbeat(PULL_HEARTBEAT)
            .messages()
            .await
            .context("failed to start pulling")?;
        let mut in_hand = FuturesUnordered::new();
        let ended = loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break Ok(()),
                Some(()) = in_hand.next(), if !in_hand.is_empty() => {}
                next = messages.next(), if in_hand.len() < limit => match next {
                    Some(Ok(message)) => in_hand.push(self.process(message)),
                    Some(Err(err)) => break Err(anyhow!(err)).context("pull failed"),
                    None => break Err(anyhow!("the message stream ended")),
                },
            }
        };
        while in_hand.next().await.is_some() {}
        if ended.is_ok() {
            // Received but not started: give them back for another replica.
            while let Some(Some(Ok(message))) = messages.next().now_or_never() {
                if let Err(err) = message.ack_with(AckKind::Nak(None)).await {
                    debug!(consumer = %self.name, error = %err, "could not give a message back; it is redelivered after the ack wait");
                }
            }
        }
        ended
    }

    /// Decodes, handles and acks one message. Never fails: every outcome is an ack
    /// kind and a log line.
    async fn process(&self, message: jetstream::Message) {
        let delivery = match message.info() {
            Ok(info) => Delivery {
                subject: message.subject.to_string(),
                stream_sequence: info.stream_sequence,
                delivered: u64::try_from(info.delivered).unwrap_or(0),
                pending: info.pending,
                message_id: header(&message, "Nats-Msg-Id"),
            },
            Err(err) => {
                error!(consumer = %self.name, subject = %message.subject, error = %err, "not a JetStream message; ignored");
                return;
            }
        };
        let span = info_span!(
            "event",
            consumer = %self.name,
            subject = %delivery.subject,
            stream_seq = delivery.stream_sequence,
            delivered = delivery.delivered,
        );
        async {
            let (verdict, handling) = self.decide(&message, &delivery).await;
            let (kind, label, outcome) = match verdict {
                Verdict::Ack => (AckKind::Ack, "ack", EventOutcome::Handled),
                Verdict::Retry(delay) => (AckKind::Nak(Some(delay)), "nak", EventOutcome::Retried),
                Verdict::Fail(delay) => (AckKind::Nak(Some(delay)), "nak", EventOutcome::Failed),
                Verdict::Term => (AckKind::Term, "term", EventOutcome::Terminated),
            };
            metrics::record_event(&self.name, outcome, handling);
            // Confirmed acks: the next message is pulled only once the server has
            // recorded this one's outcome.
            if let Err(err) = message.double_ack_with(kind).await {
                warn!(error = %err, ack = label, "could not confirm the ack; the message may be redelivered");
            }
        }
        .instrument(span)
        .await;
    }

    /// The verdict on one message, and how long the listener took with it
    /// (`None` when the message never reached the listener).
    async fn decide(
        &self,
        message: &jetstream::Message,
        delivery: &Delivery,
    ) -> (Verdict, Option<Duration>) {
        let version = header(message, SCHEMA_VERSION_HEADER);
        match version.as_deref().map(str::parse::<u32>) {
            Some(Ok(version)) if <L::Event as Event>::accepts_schema_version(version) => {}
            _ => {
                error!(
                    schema_version = version.as_deref().unwrap_or("<missing>"),
                    expected = <L::Event as Event>::SCHEMA_VERSION,
                    message_id = delivery.message_id.as_deref().unwrap_or(""),
                    "event with a missing or unknown schema version; terminated (it stays in the stream)"
                );
                return (Verdict::Term, None);
            }
        }
        let event: L::Event = match serde_json::from_slice(&message.payload) {
            Ok(event) => event,
            Err(err) => {
                error!(
                    error = %err,
                    payload = %String::from_utf8_lossy(&message.payload[..message.payload.len().min(512)]),
                    message_id = delivery.message_id.as_deref().unwrap_or(""),
                    "event payload does not decode; terminated (it stays in the stream)"
                );
                return (Verdict::Term, None);
            }
        };

        let started = Instant::now();
        let outcome = self.handle_with_progress(message, event, delivery).await;
        let handling = Some(started.elapsed());
        let last_attempt = self.bus.config.max_deliver > 0
            && i64::try_from(delivery.delivered).unwrap_or(i64::MAX) >= self.bus.config.max_deliver;
        let verdict = match outcome {
            Ok(Handled::Ack) => {
                debug!("event handled");
                Verdict::Ack
            }
            Ok(Handled::Invalid(reason)) => {
                error!(
                    reason,
                    message_id = delivery.message_id.as_deref().unwrap_or(""),
                    "event can never be handled; terminated (it stays in the stream)"
                );
                Verdict::Term
            }
            Ok(Handled::RetryLater(_) | Handled::Early) if last_attempt => {
                error!("event still not applicable on its last allowed delivery; terminated");
                Verdict::Term
            }
            Ok(Handled::RetryLater(delay)) => {
                debug!(?delay, "event not applicable yet; retrying later");
                Verdict::Retry(delay)
            }
            Ok(Handled::Early) => {
                let delay = self.bus.config.early_delay(delivery.delivered);
                debug!(
                    ?delay,
                    "event arrived before its predecessor; retrying later"
                );
                Verdict::Retry(delay)
            }
            Err(err) if last_attempt => {
                error!(
                    error = format!("{err:#}"),
                    "event handler failed on the last allowed delivery; terminated"
                );
                Verdict::Term
            }
            Err(err) => {
                let delay = self.bus.config.retry_delay(delivery.delivered);
                warn!(
                    error = format!("{err:#}"),
                    ?delay,
                    "event handler failed; retrying"
                );
                Verdict::Fail(delay)
            }
        };
        (verdict, handling)
    }

    /// Runs the handler; a panic becomes an error. While it runs longer than half
    /// the ack wait, tells the server the message is still being worked on.
    async fn handle_with_progress(
        &self,
        message: &jetstream::Message,
        event: L::Event,
        delivery: &Delivery,
    ) -> anyhow::Result<Handled> {
        let handling = AssertUnwindSafe(self.listener.handle(event, delivery)).catch_unwind();
        tokio::pin!(handling);
        let period = (self.bus.config.ack_wait / 2).max(Duration::from_millis(100));
        let mut progress = tokio::time::interval_at(Instant::now() + period, period);
        loop {
            tokio::select! {
                outcome = &mut handling => {
                    return outcome.unwrap_or_else(|panic| Err(anyhow!("handler panicked: {}", panic_message(&panic))));
                }
                _ = progress.tick() => {
                    if let Err(err) = message.ack_with(AckKind::Progress).await {
                        debug!(error = %err, "could not send an in-progress ack");
                    }
                }
            }
        }
    }
}

fn header(message: &jetstream::Message, name: &str) -> Option<String> {
    message
        .headers
        .as_ref()
        .and_then(|headers| headers.get_last(name))
        .map(|value| value.as_str().to_owned())
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("<non-string panic>")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumer_names_have_no_dots() {
        assert_eq!(
            consumer_name("orders-service", "ticket.created").unwrap(),
            "orders-service-ticket-created"
        );
        assert!(consumer_name("orders.service", "ticket.created").is_err());
        assert!(consumer_name("", "ticket.created").is_err());
    }

    #[test]
    fn retry_delay_doubles_up_to_the_cap() {
        let config = BusConfig::new("nats://x");
        let delays: Vec<u64> = (1..=9).map(|n| config.retry_delay(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(config.retry_delay(0), Duration::from_secs(1));
        assert_eq!(config.retry_delay(u64::MAX), Duration::from_secs(60));
    }

    #[test]
    fn early_events_back_off_from_half_a_second_up_to_half_a_minute() {
        let config = BusConfig::new("nats://x");
        let delays: Vec<u128> = (1..=8).map(|n| config.early_delay(n).as_millis()).collect();
        assert_eq!(delays, [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000]);
        assert_eq!(config.early_delay(0), Duration::from_millis(500));
        assert_eq!(config.early_delay(u64::MAX), Duration::from_secs(30));
    }

    #[test]
    fn consumer_restarts_back_off_but_a_healthy_pull_starts_afresh() {
        let mut restarts = Restarts::default();
        let quick = Duration::from_millis(10);
        let delays: Vec<u64> = (0..8)
            .map(|_| restarts.pull_failed(quick).as_millis() as u64)
            .collect();
        assert_eq!(delays, [1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]);
        assert_eq!(restarts.recreate_failed(), Duration::from_secs(30));
        // Hours later, after a pull that ran fine: back to the first step.
        assert_eq!(
            restarts.pull_failed(Restarts::HEALTHY),
            Duration::from_secs(1)
        );
        assert_eq!(restarts.recreate_failed(), Duration::from_secs(2));
    }

    #[test]
    fn namespaces_isolate_subjects_and_stream() {
        let config = BusConfig::new("nats://x").with_namespace("t1a2.b3");
        assert_eq!(config.subject_prefix, "t1a2_b3.");
        assert_eq!(config.stream, "TICKETING_t1a2_b3");
    }
}
