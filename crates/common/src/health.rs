//! Probes: `GET /healthz` (the process is alive) and `GET /readyz` (what it
//! depends on — its database, NATS, Redis — answers).
//!
//! A service says what "ready" means by implementing [`Ready`] for its state;
//! [`routes`] serves both probes. Kubernetes uses them for liveness and
//! readiness; the local launcher waits on `/readyz` before it prints "ready".

use std::future::Future;

use axum::{Json, Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use serde_json::json;

/// What a service depends on, checked on every `/readyz`.
pub trait Ready: Clone + Send + Sync + 'static {
    /// `Ok` when every dependency answers, else the names of those that don't.
    fn check(&self) -> impl Future<Output = Result<(), Vec<&'static str>>> + Send;
}

/// `/healthz` and `/readyz` for a state that knows its dependencies.
pub fn routes<S: Ready>() -> Router<S> {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status":"ok"})) }))
        .route("/readyz", get(readyz::<S>))
}

async fn readyz<S: Ready>(State(state): State<S>) -> impl IntoResponse {
    match state.check().await {
        Ok(()) => (StatusCode::OK, Json(json!({"status":"ready"}))),
        Err(down) => {
            tracing::warn!(?down, "not ready");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"errors":[{"message": format!("Not ready: {}", down.join(", "))}]})),
            )
        }
    }
}

/// Collects the names of failed checks: `checks(&[("mongo", ok), ("nats", ok)])`.
pub fn collect(checks: &[(&'static str, bool)]) -> Result<(), Vec<&'static str>> {
    let down: Vec<_> = checks
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(name, _)| *name)
        .collect();
    if down.is_empty() { Ok(()) } else { Err(down) }
}

/// The check of a service on MongoDB and NATS (orders, payments, tickets):
/// `mongo` when its database does not answer a ping, `nats` while the bus is
/// not connected.
pub async fn mongo_and_nats(
    db: &mongodb::Database,
    bus: &crate::bus::Bus,
) -> Result<(), Vec<&'static str>> {
    collect(&[
        ("mongo", crate::mongo::ping(db).await.is_ok()),
        ("nats", bus.is_ready()),
    ])
}
