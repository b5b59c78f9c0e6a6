//! Logging: readable lines in local development (coloured only on a
//! terminal: under `make dev` the launcher colours the prefixes), JSON in a
//! cluster.
//!
//! `RUST_LOG` filters (default `info`). Every request runs in a span carrying
//! its request id (see [`crate::server`]), so every line a request causes can
//! be found by that id.

use std::io::IsTerminal;

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// Installs the global subscriber once; later calls (tests) are no-ops.
pub fn init(service: &str, development: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let result = if development {
        registry
            .with(
                fmt::layer()
                    .with_target(false)
                    .with_ansi(std::io::stdout().is_terminal())
                    .compact(),
            )
            .try_init()
    } else {
        registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false),
            )
            .try_init()
    };
    if result.is_ok() {
        tracing::info!(service, "telemetry initialised");
    }
}
