//! The shared kernel of the Ticketing fleet.
//!
//! Every service is a thin axum binary over a library; what they all need lives
//! here so that it is written once:
//!
//! - [`error`]: the one error type and its `{"errors":[…]}` JSON form, including
//!   axum's own rejections, plus the extractors that map them ([`error::Json`],
//!   [`error::Id`]); [`validate`]: a request's fields checked into a domain
//!   value, every bad field reported at once.
//! - [`session`]: the session cookie (base64 of `{"jwt":…}`, compatible with the
//!   original Node app, accepted as `session` or the original's `express:sess`),
//!   the JWT codec and the current-user extractors.
//! - [`events`]: the typed event catalogue, one Rust type per subject;
//!   [`money`]: integer cents that travel as a JSON number.
//! - [`bus`]: NATS JetStream: the stream, a publisher with deterministic message
//!   ids, and the listener runner that owns the consume loop.
//! - [`config`], [`telemetry`], [`health`], [`server`]: typed settings from the
//!   environment, logs with a request id, `/healthz` + `/readyz`, and serving
//!   with graceful shutdown.
//! - [`backoff`]: the doubling delay every retry uses; [`cas`]: the bounded,
//!   jittered rounds of a compare-and-set write, ending in the one 409.
//! - [`mongo`]: connecting, readiness, and the duplicate-key helper.
//! - [`outbox`]: no lost events — the event is written in the same document
//!   as the change, and a relay publishes it; [`replica`]: the version rule
//!   (applied / duplicate / early) of copies of another service's records;
//!   [`owned`]: a service's own records, each change written with its
//!   event and its new version in one compare-and-set.
//! - [`metrics`]: Prometheus metrics on `GET /metrics`, recorded once here for
//!   every service (requests per route, events per consumer, outbox backlog);
//!   [`openapi`]: what each API service's `GET /openapi.json` is built from;
//!   [`wire`]: the bodies the API answers, one type for the service that
//!   writes each and the clients that read it.
//! - [`overload`]: the bound on requests in flight and the deadline of every
//!   request (503 with `Retry-After`); [`client`]: the client's address,
//!   through trusted proxies only.

pub mod backoff;
pub mod bus;
pub mod cas;
pub mod client;
pub mod config;
pub mod error;
pub mod events;
pub mod health;
pub mod metrics;
pub mod money;
pub mod mongo;
pub mod openapi;
pub mod outbox;
pub mod overload;
pub mod owned;
pub mod replica;
pub mod server;
pub mod session;
pub mod telemetry;
pub mod validate;
pub mod wire;

pub use error::{Error, Result};
