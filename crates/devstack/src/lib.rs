//! The local stack: infrastructure processes, the local ingress and the fleet
//! launcher — everything needed to run Ticketing on one machine without Docker
//! or Kubernetes.
//!
//! Used by the `dev` binary (behind `make dev` and `make test`), by the test kit
//! (`crates/testkit`) and by fleet-level tests:
//!
//! - [`paths`]: the workspace root and `.dev/`, where `scripts/bootstrap.sh`
//!   installs the local tools.
//! - [`infra`]: [`Infra`] starts NATS JetStream, a MongoDB-wire server, Redis
//!   as child processes on free or fixed ports, and the Stripe fake
//!   ([`stripe_fake`]) in this process.
//!   With several NATS nodes, a JetStream cluster ([`nats_cluster`]).
//! - [`routes`]: the routing table from `infra/routes.json`, the single source
//!   of truth shared with the Kubernetes ingress.
//! - [`ingress`]: a streaming reverse proxy that routes by that table,
//!   balancing over the replicas of a service ([`balance`]), with bounds
//!   against slow and excess clients and, when asked, an edge rate limit per
//!   client address ([`ratelimit`]).
//! - [`fleet`]: [`Fleet`] starts the service binaries with their environment and
//!   waits for `/readyz`; single services can be stopped, killed and restarted.
//! - [`process`], [`output`], [`probe`]: the supervision underneath — own
//!   process groups, a watchdog against orphaned children, prefixed logs, and
//!   readiness probes that speak each server's protocol.

pub mod balance;
pub mod fleet;
pub mod infra;
pub mod ingress;
pub mod mongo;
pub mod nats_cluster;
pub mod output;
pub mod paths;
pub mod probe;
pub mod process;
pub mod ratelimit;
pub mod routes;
pub mod stack;
pub mod stripe_fake;

pub use fleet::{Fleet, FleetOptions, PortPlan, ServiceInfo};
pub use infra::{Endpoints, Infra, InfraOptions};
pub use output::Output;
pub use process::{Process, ProcessSpec};
pub use stack::{Stack, StackOptions};
pub use stripe_fake::{StripeFake, WebhookTarget};
