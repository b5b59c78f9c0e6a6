//! Overload sheds, it does not queue: a bound on the requests a service
//! handles at once, and a deadline on every request.
//!
//! Past [`Limits::max_in_flight`] requests in progress, a new one is answered
//! at once with 503 `Service is overloaded, try again later` and
//! `Retry-After: 1` instead of waiting its turn: a client told to come back
//! later can, one left waiting until it gives up cannot, and the service's
//! memory stays bounded. A request still unanswered after
//! [`Limits::deadline`] is answered 503 `Request took too long, try again
//! later` (with `Retry-After`) and its handler is dropped — the database
//! write it was waiting on may still land, as it may when a client times
//! out, so careful clients read back what they were not told.
//!
//! The probes and `/metrics` (`/healthz`, `/readyz`, `/metrics`) are not
//! counted against the bound, so an overloaded service still says it is
//! alive and can be watched; they have the deadline like everything else.
//!
//! Every refusal is counted in `http_requests_rejected_total{reason}`
//! (`overload`, `deadline`); `http_requests_in_flight` is the requests in
//! progress and `http_max_in_flight_requests` /
//! `http_request_deadline_milliseconds` the bounds (see [`crate::metrics`]).

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    extract::Request,
    middleware::{self, Next},
    response::{IntoResponse, Response},
};
use tokio::sync::Semaphore;

use crate::{
    config::{ConfigError, Env},
    error::Error,
    metrics,
};

/// What a refused client is told to wait before trying again.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Paths the in-flight bound leaves alone.
const UNBOUNDED: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// The bounds of one service (`MAX_IN_FLIGHT_REQUESTS`,
/// `REQUEST_TIMEOUT_SECONDS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Requests handled at once before new ones are refused with 503.
    pub max_in_flight: usize,
    /// How long a request may take before it is answered 503.
    pub deadline: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_in_flight: Self::DEFAULT_MAX_IN_FLIGHT,
            deadline: Duration::from_secs(Self::DEFAULT_DEADLINE_SECONDS),
        }
    }
}

impl Limits {
    /// Default `MAX_IN_FLIGHT_REQUESTS`: far above what 2 cores serve at once
    /// (a request in flight is a few KiB), far below what exhausts memory.
    pub const DEFAULT_MAX_IN_FLIGHT: usize = 512;
    /// Default `REQUEST_TIMEOUT_SECONDS`.
    pub const DEFAULT_DEADLINE_SECONDS: u64 = 10;

    /// `MAX_IN_FLIGHT_REQUESTS` (default 512) and `REQUEST_TIMEOUT_SECONDS`
    /// (default 10); both must be at least 1.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let max_in_flight = env.parse_or("MAX_IN_FLIGHT_REQUESTS", Self::DEFAULT_MAX_IN_FLIGHT)?;
        let deadline = env.parse_or("REQUEST_TIMEOUT_SECONDS", Self::DEFAULT_DEADLINE_SECONDS)?;
        if max_in_flight == 0 {
            return Err(ConfigError::Invalid {
                name: "MAX_IN_FLIGHT_REQUESTS",
                reason: "must be at least 1".into(),
            });
        }
        if deadline == 0 {
            return Err(ConfigError::Invalid {
                name: "REQUEST_TIMEOUT_SECONDS",
                reason: "must be at least 1".into(),
            });
        }
        Ok(Self {
            max_in_flight,
            deadline: Duration::from_secs(deadline),
        })
    }

    /// `router` with the bound and the deadline around everything it serves
    /// (outermost, so a refused request costs next to nothing).
    pub fn apply(self, router: Router) -> Router {
        metrics::gauge(
            "http_max_in_flight_requests",
            "Requests a service handles at once before it answers 503 (MAX_IN_FLIGHT_REQUESTS)",
        )
        .set(i64::try_from(self.max_in_flight).unwrap_or(i64::MAX));
        metrics::gauge(
            "http_request_deadline_milliseconds",
            "How long a request may take before it is answered 503 (REQUEST_TIMEOUT_SECONDS)",
        )
        .set(i64::try_from(self.deadline.as_millis()).unwrap_or(i64::MAX));
        let permits = Arc::new(Semaphore::new(self.max_in_flight));
        let deadline = self.deadline;
        router.layer(middleware::from_fn(move |request: Request, next: Next| {
            shed(Arc::clone(&permits), deadline, request, next)
        }))
    }
}

async fn shed(
    permits: Arc<Semaphore>,
    deadline: Duration,
    request: Request,
    next: Next,
) -> Response {
    let permit = if UNBOUNDED.contains(&request.uri().path()) {
        None
    } else {
        match permits.try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => {
                metrics::record_rejected("overload");
                tracing::warn!(uri = %request.uri(), "too many requests in flight: refused");
                return Error::Unavailable {
                    message: "Service is overloaded, try again later".into(),
                    retry_after: RETRY_AFTER,
                }
                .into_response();
            }
        }
    };
    let in_flight = InFlight::enter(permit);
    let uri = request.uri().clone();
    let answered = tokio::time::timeout(deadline, next.run(request)).await;
    drop(in_flight);
    answered.unwrap_or_else(|_| {
        metrics::record_rejected("deadline");
        tracing::warn!(%uri, ?deadline, "request deadline passed: answered 503");
        Error::Unavailable {
            message: "Request took too long, try again later".into(),
            retry_after: RETRY_AFTER,
        }
        .into_response()
    })
}

/// One request in progress: counted in `http_requests_in_flight` and
/// holding its permit until it is answered — or dropped, when the client
/// went away first.
struct InFlight {
    gauge: metrics::Gauge,
    _permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl InFlight {
    fn enter(permit: Option<tokio::sync::OwnedSemaphorePermit>) -> Self {
        let gauge = metrics::gauge(
            "http_requests_in_flight",
            "Requests being handled now (the probes and /metrics included)",
        );
        gauge.inc();
        Self {
            gauge,
            _permit: permit,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_names() {
        let env = Env::recording();
        assert_eq!(Limits::from_env(&env).unwrap(), Limits::default());
        assert_eq!(
            env.recorded(),
            [
                ("MAX_IN_FLIGHT_REQUESTS", false),
                ("REQUEST_TIMEOUT_SECONDS", false)
            ]
        );
    }
}
