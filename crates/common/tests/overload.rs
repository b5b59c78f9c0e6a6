//! Overload sheds, it does not queue: past the in-flight bound a request is
//! answered 503 at once, a request past its deadline is answered 503, both
//! with `Retry-After` in the errors shape and counted in `/metrics`; the
//! probes stay outside the bound.

use std::time::{Duration, Instant};

use axum::{Router, routing::get};
use common::{metrics, overload::Limits, server};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

async fn serve(router: Router, limits: Limits) -> (String, CancellationToken) {
    let app = limits.apply(server::finish(router));
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    tokio::spawn(server::serve(
        listener,
        app,
        stop.clone(),
        Duration::from_secs(1),
    ));
    (base, stop)
}

fn rejected(reason: &str) -> f64 {
    metrics::sample(
        &metrics::render(),
        "http_requests_rejected_total",
        &[("reason", reason)],
    )
    .unwrap_or(0.0)
}

async fn assert_shed(response: reqwest::Response, message: &str) {
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body, serde_json::json!({"errors": [{"message": message}]}));
}

#[tokio::test]
async fn past_the_bound_requests_are_refused_at_once_not_queued() {
    let router = Router::new()
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(800)).await;
                "done"
            }),
        )
        .route("/healthz", get(|| async { "alive" }));
    let (base, stop) = serve(
        router,
        Limits {
            max_in_flight: 2,
            deadline: Duration::from_secs(5),
        },
    )
    .await;
    let before = rejected("overload");
    let http = reqwest::Client::new();
    let slow: Vec<_> = (0..2)
        .map(|_| tokio::spawn(http.get(format!("{base}/slow")).send()))
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Two in flight: the third is refused at once, the probe still answers.
    let started = Instant::now();
    let third = http.get(format!("{base}/slow")).send().await.unwrap();
    assert!(started.elapsed() < Duration::from_millis(300));
    assert_shed(third, "Service is overloaded, try again later").await;
    let probe = http.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(probe.status(), 200);
    assert!(rejected("overload") > before);

    for request in slow {
        assert_eq!(request.await.unwrap().unwrap().status(), 200);
    }
    // Once they are answered, there is room again.
    let again = http.get(format!("{base}/slow")).send().await.unwrap();
    assert_eq!(again.status(), 200);
    stop.cancel();
}

#[tokio::test]
async fn a_request_past_its_deadline_is_answered_503() {
    let router = Router::new().route(
        "/stuck",
        get(|| async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            "never"
        }),
    );
    let (base, stop) = serve(
        router,
        Limits {
            max_in_flight: 16,
            deadline: Duration::from_millis(300),
        },
    )
    .await;
    let before = rejected("deadline");
    let started = Instant::now();
    let response = reqwest::get(format!("{base}/stuck")).await.unwrap();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(2),
        "{took:?}"
    );
    assert_shed(response, "Request took too long, try again later").await;
    assert!(rejected("deadline") > before);
    let text = metrics::render();
    assert!(
        metrics::sample(&text, "http_request_deadline_milliseconds", &[]).is_some(),
        "the bound is on /metrics"
    );
    stop.cancel();
}
