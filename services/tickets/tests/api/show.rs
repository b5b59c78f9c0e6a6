//! `GET /api/tickets/{id}` — the original's `show.test.ts`, and the probes.

use serde_json::json;

use crate::helpers::{id_of, spawn, user};

#[tokio::test]
async fn returns_404_for_an_unknown_ticket() {
    let t = spawn().await;
    t.show(&mongodb::bson::oid::ObjectId::new().to_hex())
        .await
        .assert_error(404, "Not Found");
}

#[tokio::test]
async fn returns_404_for_a_malformed_id() {
    let t = spawn().await;
    t.show("not-an-id").await.assert_error(404, "Not Found");
    t.show("123").await.assert_error(404, "Not Found");
}

#[tokio::test]
async fn returns_the_ticket() {
    let t = spawn().await;
    let (user_id, cookie) = user();
    let created = t.create_ticket(&cookie, "concert", json!(20)).await;
    let shown = t.ticket(&id_of(&created)).await;
    assert_eq!(shown, created);
    assert_eq!(shown["userId"], json!(user_id));
}

#[tokio::test]
async fn is_ready_when_mongo_and_nats_answer() {
    let t = spawn().await;
    t.app.get("/healthz", None).await.assert_status(200);
    t.app.get("/readyz", None).await.assert_status(200);
    t.app
        .get("/api/nothing-here", None)
        .await
        .assert_error(404, "Not Found");
}

#[tokio::test]
async fn metrics_count_shows_under_the_route_template_not_the_id() {
    let t = spawn().await;
    let (_, cookie) = user();
    let id = id_of(&t.create_ticket(&cookie, "concert", json!(20)).await);
    t.ticket(&id).await;
    t.show("not-an-id").await.assert_status(404);

    let labels = |status| {
        [
            ("method", "GET"),
            ("route", "/api/tickets/{id}"),
            ("status", status),
        ]
    };
    // The registry is the process's, shared with the other tests: lower bounds.
    assert!(testkit::metric(&t.app, "http_requests_total", &labels("2xx")).await >= Some(1.0));
    assert!(testkit::metric(&t.app, "http_requests_total", &labels("4xx")).await >= Some(1.0));
    let created = [
        ("method", "POST"),
        ("route", "/api/tickets"),
        ("status", "2xx"),
    ];
    assert!(testkit::metric(&t.app, "http_requests_total", &created).await >= Some(1.0));
    let text = t.app.get("/metrics", None).await.text;
    assert!(
        !text.contains(&id) && !text.contains("not-an-id"),
        "ids never become labels: {text}"
    );
}
