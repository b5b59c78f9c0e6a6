//! Black-box tests of the tickets service: the real service on port 0 over
//! HTTP, a real NATS JetStream and a real MongoDB-wire server, each test with
//! a database and a bus namespace of its own.
//!
//! One test binary (modules per behaviour) so the infrastructure starts once
//! and the suite links once.

mod helpers;

mod concurrency;
mod create;
mod face_value;
mod list;
mod listeners;
mod mine;
mod openapi;
mod outbox;
mod search;
mod show;
mod update;
mod windows;
mod withdraw;
