//! Prometheus metrics: what every service shows on `GET /metrics`.
//!
//! The common code records everything that is the same in every service, so a
//! service gets its metrics without writing any:
//!
//! | metric | type | labels | recorded by |
//! |---|---|---|---|
//! | `http_requests_total` | counter | `method`, `route`, `status` | the layer [`crate::server::layers`] puts on every route |
//! | `http_request_duration_seconds` | histogram | `method`, `route`, `status` | the same layer: time to the response head |
//! | `bus_events_total` | counter | `consumer`, `outcome` | the listener runner of [`crate::bus`], once per delivery |
//! | `bus_event_handling_duration_seconds` | histogram | `consumer` | the same runner: time in the listener's `handle` |
//! | `bus_published_total` | counter | `subject`, `outcome` (`ok`, `error`) | [`crate::bus::Bus::publish_raw`] |
//! | `outbox_backlog` | gauge | `collection` | the outbox [`crate::outbox::Relay`]: events its last scan found and could not publish |
//! | `outbox_published_total` | counter | `collection` | the relay, per event published |
//! | `http_requests_rejected_total` | counter | `reason` | requests refused to protect the service: `overload` and `deadline` ([`crate::overload`]), and what services add with [`record_rejected`] (`signin_throttled`, `active_orders_limit`) |
//! | `http_requests_in_flight` | gauge | — | requests being handled now ([`crate::overload`]) |
//! | `http_max_in_flight_requests`, `http_request_deadline_seconds` | gauges | — | the bounds the service runs with ([`crate::overload`]) |
//!
//! plus what a service adds with [`gauge`] (expiration: `expiration_jobs_pending`).
//!
//! # Bounded labels
//!
//! `route` is the route *template* axum matched (`/api/tickets/{id}`), never
//! the raw path; requests no route serves — unknown paths, and methods a path
//! does not take — are all `route="unmatched"`. `method` is one of the
//! standard methods or `OTHER`, `status` the class (`2xx` … `5xx`). So a
//! scanner or a fuzzer cannot grow the series without bound. `consumer` is the
//! durable consumer (`orders-service-ticket-created`), `outcome` one of
//! `handled` (acked), `retried` (the listener asked for a later redelivery, e.g.
//! a version gap), `failed` (the listener failed or panicked; redelivered with
//! backoff) and `terminated` (undecodable, unknown schema version, or out of
//! deliveries).
//!
//! # One registry per process
//!
//! Prometheus scrapes a process, and everything in a process reports to one
//! registry, like the one `tracing` subscriber of [`crate::telemetry`]. That is
//! what lets the HTTP layer, the bus runner and the outbox relay record
//! without a handle threaded through every constructor and every service's
//! state. The cost is in tests, where several services share a test process:
//! a test reads the series it caused (its own route, consumer or collection),
//! or asserts a lower bound.
//!
//! The exposition is the OpenMetrics text format (what Prometheus negotiates
//! first), written by the Prometheus project's own `prometheus-client` crate.

use std::{
    collections::HashMap,
    sync::{LazyLock, Mutex, PoisonError},
    time::{Duration, Instant},
};

use axum::{
    extract::{MatchedPath, Request},
    http::{HeaderValue, Method, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use prometheus_client::{
    encoding::{EncodeLabelSet, text},
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::{Registry, Unit},
};

/// A gauge a service sets (see [`gauge`]); cheap to clone, all clones are
/// the same gauge.
pub use prometheus_client::metrics::gauge::Gauge;

/// The `Content-Type` of [`render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The `route` label of a request that no route served.
pub const UNMATCHED: &str = "unmatched";

/// Latency buckets (seconds) for requests and event handling: 1 ms to 10 s.
const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

fn histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct HttpLabels {
    method: &'static str,
    route: String,
    status: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct EventLabels {
    consumer: String,
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ConsumerLabels {
    consumer: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PublishLabels {
    subject: String,
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CollectionLabels {
    collection: String,
}

/// What the listener runner did with one delivery (the `outcome` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventOutcome {
    /// Acknowledged.
    Handled,
    /// The listener asked for a later redelivery (e.g. a version gap).
    Retried,
    /// The listener failed or panicked; redelivered with backoff.
    Failed,
    /// Terminated: undecodable, unknown schema version, or out of deliveries.
    Terminated,
}

impl EventOutcome {
    fn label(self) -> &'static str {
        match self {
            Self::Handled => "handled",
            Self::Retried => "retried",
            Self::Failed => "failed",
            Self::Terminated => "terminated",
        }
    }
}

/// The process's metrics: the registry and the families the common code
/// records into.
struct Metrics {
    registry: Mutex<Registry>,
    /// Gauges registered by services, by name, so registering twice (several
    /// instances of a service in one test process) returns the same gauge.
    custom: Mutex<HashMap<String, Gauge>>,
    http_requests: Family<HttpLabels, Counter>,
    http_duration: Histograms<HttpLabels>,
    events: Family<EventLabels, Counter>,
    event_duration: Histograms<ConsumerLabels>,
    published: Family<PublishLabels, Counter>,
    outbox_backlog: Family<CollectionLabels, Gauge>,
    outbox_published: Family<CollectionLabels, Counter>,
    rejected: Family<ReasonLabels, Counter>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::default();
        let http_requests = Family::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by route template and status class",
            http_requests.clone(),
        );
        let http_duration: Histograms<HttpLabels> = Family::new_with_constructor(histogram);
        registry.register_with_unit(
            "http_request_duration",
            "Time from a request's arrival to its response head",
            Unit::Seconds,
            http_duration.clone(),
        );
        let events = Family::default();
        registry.register(
            "bus_events",
            "Event deliveries per durable consumer, by outcome (handled, retried, failed, terminated)",
            events.clone(),
        );
        let event_duration: Histograms<ConsumerLabels> = Family::new_with_constructor(histogram);
        registry.register_with_unit(
            "bus_event_handling_duration",
            "Time a listener spent on one delivery",
            Unit::Seconds,
            event_duration.clone(),
        );
        let published = Family::default();
        registry.register(
            "bus_published",
            "Events published to JetStream, by subject and outcome (ok, error)",
            published.clone(),
        );
        let outbox_backlog = Family::default();
        registry.register(
            "outbox_backlog",
            "Events waiting in a collection's outboxes that the relay's last scan could not publish",
            outbox_backlog.clone(),
        );
        let outbox_published = Family::default();
        registry.register(
            "outbox_published",
            "Outbox events the relay published",
            outbox_published.clone(),
        );
        let rejected = Family::default();
        registry.register(
            "http_requests_rejected",
            "Requests refused to protect the service, by reason (overload, deadline, signin_throttled, active_orders_limit)",
            rejected.clone(),
        );
        Self {
            registry: Mutex::new(registry),
            custom: Mutex::new(HashMap::new()),
            http_requests,
            http_duration,
            events,
            event_duration,
            published,
            outbox_backlog,
            outbox_published,
            rejected,
        }
    }
}

/// The metrics in the OpenMetrics text format.
pub fn render() -> String {
    let registry = METRICS
        .registry
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = text::encode(&mut text, &registry);
    text
}

/// `GET /metrics`: [`render`] with its content type.
pub async fn serve() -> Response {
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))],
        render(),
    )
        .into_response()
}

/// A gauge of the service's own, registered once per process under `name`
/// (later calls with the same name return the same gauge).
pub fn gauge(name: &str, help: &str) -> Gauge {
    let mut custom = METRICS
        .custom
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    custom
        .entry(name.to_owned())
        .or_insert_with(|| {
            let gauge = Gauge::default();
            METRICS
                .registry
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .register(name, help, gauge.clone());
            gauge
        })
        .clone()
}

/// One request refused to protect the service, for `reason` (a fixed
/// label: `overload`, `deadline`, `signin_throttled`, `active_orders_limit`).
pub fn record_rejected(reason: &'static str) {
    METRICS
        .rejected
        .get_or_create(&ReasonLabels { reason })
        .inc();
}

/// Marks a response as not served by any route (the fleet's 404 fallback), so
/// that it is counted as `route="unmatched"` even when the path matched and
/// only the method did not.
#[derive(Debug, Clone, Copy)]
pub struct Unmatched;

/// The middleware of [`crate::server::layers`]: counts and times every
/// request by the route template it matched.
pub async fn track(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(request.method());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned());
    let response = next.run(request).await;
    let route = match route {
        Some(route) if response.extensions().get::<Unmatched>().is_none() => route,
        _ => UNMATCHED.to_owned(),
    };
    record_request(method, route, response.status(), started.elapsed());
    response
}

fn record_request(method: &'static str, route: String, status: StatusCode, took: Duration) {
    let labels = HttpLabels {
        method,
        route,
        status: status_class(status),
    };
    METRICS.http_requests.get_or_create(&labels).inc();
    METRICS
        .http_duration
        .get_or_create(&labels)
        .observe(took.as_secs_f64());
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

fn status_class(status: StatusCode) -> &'static str {
    match status.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// One delivery handled by the listener runner of `consumer`.
pub(crate) fn record_event(consumer: &str, outcome: EventOutcome, handling: Option<Duration>) {
    METRICS
        .events
        .get_or_create(&EventLabels {
            consumer: consumer.to_owned(),
            outcome: outcome.label(),
        })
        .inc();
    if let Some(took) = handling {
        METRICS
            .event_duration
            .get_or_create(&ConsumerLabels {
                consumer: consumer.to_owned(),
            })
            .observe(took.as_secs_f64());
    }
}

/// One publish (after its retries) of an event on `subject` (without prefix).
pub(crate) fn record_publish(subject: &str, ok: bool) {
    METRICS
        .published
        .get_or_create(&PublishLabels {
            subject: subject.to_owned(),
            outcome: if ok { "ok" } else { "error" },
        })
        .inc();
}

/// The outbox relay of `collection` published `count` events.
pub(crate) fn record_outbox_published(collection: &str, count: usize) {
    if count > 0 {
        METRICS
            .outbox_published
            .get_or_create(&CollectionLabels {
                collection: collection.to_owned(),
            })
            .inc_by(count as u64);
    }
}

/// What the relay of `collection` left unpublished at its last scan.
pub(crate) fn set_outbox_backlog(collection: &str, events: usize) {
    METRICS
        .outbox_backlog
        .get_or_create(&CollectionLabels {
            collection: collection.to_owned(),
        })
        .set(i64::try_from(events).unwrap_or(i64::MAX));
}

/// The value of one series in a [`render`] text: `name` with exactly the
/// given labels (in any order). For tests and tools.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, series_labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            if series_name != name {
                return None;
            }
            let mut found: Vec<(&str, &str)> = parse_labels(series_labels)?;
            let mut wanted = labels.to_vec();
            found.sort_unstable();
            wanted.sort_unstable();
            (found == wanted).then(|| value.parse().ok()).flatten()
        })
}

/// `a="x",b="y"` → pairs (values as written; ours have no escapes).
fn parse_labels(text: &str) -> Option<Vec<(&str, &str)>> {
    if text.is_empty() {
        return Some(Vec::new());
    }
    text.split("\",")
        .map(|pair| {
            let (key, value) = pair.split_once("=\"")?;
            Some((key, value.trim_end_matches('"')))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_classes_and_unknown_methods_are_bounded() {
        assert_eq!(status_class(StatusCode::OK), "2xx");
        assert_eq!(status_class(StatusCode::PAYLOAD_TOO_LARGE), "4xx");
        assert_eq!(status_class(StatusCode::BAD_GATEWAY), "5xx");
        assert_eq!(method_label(&Method::from_bytes(b"BREW").unwrap()), "OTHER");
        assert_eq!(method_label(&Method::DELETE), "DELETE");
    }

    #[test]
    fn renders_what_was_recorded_and_sample_reads_it_back() {
        record_request(
            "GET",
            "/unit/{id}".into(),
            StatusCode::NOT_FOUND,
            Duration::from_millis(3),
        );
        record_request(
            "GET",
            "/unit/{id}".into(),
            StatusCode::NOT_FOUND,
            Duration::from_millis(4),
        );
        record_event("unit-consumer", EventOutcome::Terminated, None);
        let things = gauge("unit_things_pending", "Things pending, for a unit test");
        things.set(7);
        assert_eq!(
            gauge("unit_things_pending", "again").get(),
            7,
            "the same gauge"
        );

        let text = render();
        let request = [
            ("method", "GET"),
            ("route", "/unit/{id}"),
            ("status", "4xx"),
        ];
        assert_eq!(
            sample(&text, "http_requests_total", &request),
            Some(2.0),
            "{text}"
        );
        assert_eq!(
            sample(&text, "http_request_duration_seconds_count", &request),
            Some(2.0)
        );
        assert_eq!(
            sample(
                &text,
                "bus_events_total",
                &[("consumer", "unit-consumer"), ("outcome", "terminated")]
            ),
            Some(1.0)
        );
        assert_eq!(sample(&text, "unit_things_pending", &[]), Some(7.0));
        assert!(text.contains("# TYPE unit_things_pending gauge"), "{text}");
        assert!(text.trim_end().ends_with("# EOF"));
    }
}
