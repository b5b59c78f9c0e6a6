//! What `/metrics` shows: requests by route template, deliveries by consumer
//! and outcome, the outbox backlog — recorded by the common code alone.
//!
//! The registry is the process's (see `common::metrics`), shared by the tests
//! of this file, so each test reads series only it can have caused: its own
//! route, consumer or collection.

use std::time::Duration;

use axum::{
    Router,
    body::Body,
    http::{Request, StatusCode, header},
    routing::get,
};
use common::{
    bus::{Bus, Delivery, Handled, Listener},
    events::ExpirationComplete,
    metrics,
    outbox::{OutboxEvent, Relay},
    server,
};
use http_body_util::BodyExt;
use mongodb::bson::{Document, doc, oid::ObjectId};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Sends one request through the complete router; returns status and body.
async fn call(app: &Router, method: &str, uri: &str, body: Body) -> (StatusCode, String) {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .body(body)
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

async fn scrape(app: &Router) -> String {
    let request = Request::builder()
        .uri("/metrics")
        .body(Body::empty())
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        metrics::CONTENT_TYPE
    );
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

fn requests(text: &str, method: &str, route: &str, status: &str) -> f64 {
    metrics::sample(
        text,
        "http_requests_total",
        &[("method", method), ("route", route), ("status", status)],
    )
    .unwrap_or(0.0)
}

#[tokio::test]
async fn requests_are_counted_and_timed_by_route_template_and_status_class() {
    let app = server::finish(
        Router::new()
            .route("/metrics-test/things/{id}", get(|| async { "a thing" }))
            .route(
                "/metrics-test/panics",
                get(|| async {
                    if true {
                        panic!("boom");
                    }
                    ""
                }),
            ),
    );
    for id in ["a", "b", "c"] {
        assert_eq!(
            call(
                &app,
                "GET",
                &format!("/metrics-test/things/{id}"),
                Body::empty()
            )
            .await
            .0,
            StatusCode::OK
        );
    }
    let (status, _) = call(&app, "GET", "/metrics-test/panics", Body::empty()).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    // A method the path does not take, and a path nobody serves.
    let unmatched_before = requests(&scrape(&app).await, "DELETE", metrics::UNMATCHED, "4xx");
    assert_eq!(
        call(&app, "DELETE", "/metrics-test/things/a", Body::empty())
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        call(&app, "DELETE", "/metrics-test/no/such/route", Body::empty())
            .await
            .0,
        StatusCode::NOT_FOUND
    );

    let text = scrape(&app).await;
    assert_eq!(
        requests(&text, "GET", "/metrics-test/things/{id}", "2xx"),
        3.0,
        "{text}"
    );
    assert_eq!(
        requests(&text, "GET", "/metrics-test/panics", "5xx"),
        1.0,
        "{text}"
    );
    assert!(
        requests(&text, "DELETE", metrics::UNMATCHED, "4xx") >= unmatched_before + 2.0,
        "{text}"
    );
    assert_eq!(
        requests(&text, "DELETE", "/metrics-test/things/{id}", "4xx"),
        0.0,
        "a method the route does not take is unmatched"
    );
    let timed = [
        ("method", "GET"),
        ("route", "/metrics-test/things/{id}"),
        ("status", "2xx"),
    ];
    assert_eq!(
        metrics::sample(&text, "http_request_duration_seconds_count", &timed),
        Some(3.0),
        "{text}"
    );
    let le_30s: Vec<(&str, &str)> = timed.iter().copied().chain([("le", "30.0")]).collect();
    assert_eq!(
        metrics::sample(&text, "http_request_duration_seconds_bucket", &le_30s),
        Some(3.0),
        "{text}"
    );
    assert!(
        !text.contains("/metrics-test/things/a"),
        "raw paths never become labels: {text}"
    );
    assert!(
        !text.contains("no/such/route"),
        "raw paths never become labels: {text}"
    );
}

#[tokio::test]
async fn a_declared_body_over_the_limit_is_refused_with_413_on_any_route() {
    // The handler never reads its body: the limit holds anyway.
    let app = server::finish(Router::new().route(
        "/metrics-test/ignores-body",
        axum::routing::post(|| async { "ok" }),
    ));
    let request = Request::builder()
        .method("POST")
        .uri("/metrics-test/ignores-body")
        .header(header::CONTENT_LENGTH, server::BODY_LIMIT + 1)
        .body(Body::from(vec![b'x'; server::BODY_LIMIT + 1]))
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body: Value = serde_json::from_slice(&bytes).unwrap();
    testkit::assert_error_shape(&body);
    assert_eq!(body["errors"][0]["message"], "Request body is too large");

    let (status, _) = call(
        &app,
        "POST",
        "/metrics-test/ignores-body",
        Body::from("small"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let text = scrape(&app).await;
    assert_eq!(
        requests(&text, "POST", "/metrics-test/ignores-body", "4xx"),
        1.0,
        "{text}"
    );
}

/// Order ids the [`Flaky`] listener treats differently.
const OK: &str = "65a1b2c3d4e5f60718293a01";
const FAIL: &str = "65a1b2c3d4e5f60718293a02";
const LATER: &str = "65a1b2c3d4e5f60718293a03";

/// Acks `OK`; fails the first delivery of `FAIL`; asks for a later
/// redelivery of the first delivery of `LATER`.
struct Flaky;

impl Listener for Flaky {
    type Event = ExpirationComplete;

    async fn handle(
        &self,
        event: ExpirationComplete,
        delivery: &Delivery,
    ) -> anyhow::Result<Handled> {
        match (event.order_id.as_str(), delivery.delivered) {
            (FAIL, 1) => anyhow::bail!("the database is down"),
            (LATER, 1) => Ok(Handled::RetryLater(Duration::from_millis(50))),
            _ => Ok(Handled::Ack),
        }
    }
}

#[tokio::test]
async fn deliveries_are_counted_per_consumer_and_outcome() {
    let mut config = testkit::bus_config();
    config.retry_base_delay = Duration::from_millis(50);
    let bus = Bus::connect(config).await.unwrap();
    let service = testkit::unique_name("metrics-service");
    let consumer = format!("{service}-expiration-complete");
    let shutdown = CancellationToken::new();
    let runner = bus.listen(&service, Flaky, shutdown.clone()).await.unwrap();

    for order_id in [OK, FAIL, LATER] {
        bus.publish(&ExpirationComplete {
            order_id: order_id.into(),
        })
        .await
        .unwrap();
    }
    bus.publish_raw("expiration.complete", 1, "poison", "{not json".into())
        .await
        .unwrap();
    // Well-formed JSON whose id is no ObjectId: it can never be handled
    // either, so it is terminated too — not acked as handled.
    bus.publish(&ExpirationComplete {
        order_id: "not-an-object-id".into(),
    })
    .await
    .unwrap();

    let count = |text: &str, outcome: &str| {
        metrics::sample(
            text,
            "bus_events_total",
            &[("consumer", consumer.as_str()), ("outcome", outcome)],
        )
        .unwrap_or(0.0)
    };
    let settled = testkit::eventually(Duration::from_secs(10), || async {
        let text = metrics::render();
        (count(&text, "handled") == 3.0).then_some(text)
    })
    .await;
    let text =
        settled.unwrap_or_else(|| panic!("three events were never handled: {}", metrics::render()));
    assert_eq!(count(&text, "failed"), 1.0, "{text}");
    assert_eq!(count(&text, "retried"), 1.0, "{text}");
    let text = testkit::eventually(Duration::from_secs(10), || async {
        let text = metrics::render();
        (count(&text, "terminated") >= 2.0).then_some(text)
    })
    .await
    .unwrap_or_else(|| panic!("the malformed id was not terminated: {}", metrics::render()));
    assert_eq!(count(&text, "terminated"), 2.0, "{text}");
    assert_eq!(count(&text, "handled"), 3.0, "{text}");
    assert_eq!(
        metrics::sample(
            &text,
            "bus_event_handling_duration_seconds_count",
            &[("consumer", consumer.as_str())]
        ),
        Some(5.0),
        "the listener ran five times (the poison message and the malformed id never reached it): {text}"
    );
    assert!(
        metrics::sample(
            &text,
            "bus_published_total",
            &[("subject", "expiration.complete"), ("outcome", "ok")]
        )
        .is_some_and(|n| n >= 5.0),
        "{text}"
    );

    shutdown.cancel();
    runner.await.unwrap().unwrap();
    let _ = bus.jetstream().delete_stream(&bus.config().stream).await;
}

#[tokio::test]
async fn the_backlog_gauge_shows_what_the_last_scan_could_not_publish() {
    let bus = Bus::connect(testkit::bus_config()).await.unwrap();
    let name = testkit::unique_name("backlog");
    let collection = testkit::database("outbox_metrics")
        .await
        .collection::<Document>(&name);
    // Two documents whose events JetStream refuses (no stream takes their
    // subject): a NATS outage, for these two; and one that goes out.
    let stuck = |n: u32| OutboxEvent {
        id: format!("stuck-{n}"),
        subject: "nowhere.stuck".into(),
        schema_version: 1,
        payload: "{}".into(),
    };
    let fine = OutboxEvent::of(&ExpirationComplete {
        order_id: "fine".into(),
    })
    .unwrap();
    let stuck_ids = [ObjectId::new(), ObjectId::new()];
    for (n, id) in stuck_ids.iter().enumerate() {
        let entry = stuck(n as u32).to_bson().unwrap();
        collection
            .insert_one(doc! { "_id": id, "outbox": [entry] })
            .await
            .unwrap();
    }
    collection
        .insert_one(doc! { "_id": ObjectId::new(), "outbox": [fine.to_bson().unwrap()] })
        .await
        .unwrap();

    let gauge =
        |text: &str| metrics::sample(text, "outbox_backlog", &[("collection", name.as_str())]);
    let published = |text: &str| {
        metrics::sample(
            text,
            "outbox_published_total",
            &[("collection", name.as_str())],
        )
    };
    let (relay, _outbox) = Relay::new(bus.clone(), collection.clone());
    assert!(
        relay.scan().await.is_err(),
        "two documents could not be published"
    );
    let text = metrics::render();
    assert_eq!(gauge(&text), Some(2.0), "{text}");
    assert_eq!(published(&text), Some(1.0), "{text}");

    // JetStream "comes back" for them: the next scan clears the backlog.
    collection
        .update_many(
            doc! { "_id": { "$in": stuck_ids.to_vec() } },
            doc! { "$set": { "outbox": [] } },
        )
        .await
        .unwrap();
    assert_eq!(relay.scan().await.unwrap(), 0);
    assert_eq!(gauge(&metrics::render()), Some(0.0));
    let _ = bus.jetstream().delete_stream(&bus.config().stream).await;
}
