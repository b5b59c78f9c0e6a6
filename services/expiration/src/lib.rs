//! The expiration service: ends reservations that were not paid in time.
//!
//! When orders publishes `order.created`, this service schedules a job due at
//! the order's `expiresAt`; when the job is due it publishes
//! `expiration.complete {orderId}`, and orders cancels the order if it is still
//! open. It has no public HTTP API: only `/healthz` and `/readyz` on `PORT`.
//!
//! - [`events::order_created`]: the listener (durable consumer
//!   `expiration-service`) that schedules a job per order, idempotently.
//! - [`jobs`]: the jobs in a Redis sorted set scored by due time, and the Lua
//!   scripts that let several replicas *claim* due jobs with a lease so that
//!   no two fire the same job. Start there for the design.
//! - [`scheduler`]: the loop that claims due jobs, publishes their events and
//!   sleeps until the next one is due.
//!
//! The jobs live in Redis, not in the process: a restarted (or another)
//! replica fires them. A job fired twice after a crash is stored once by
//! JetStream (its message id is the order's) and is harmless to orders anyway.

pub mod events;
pub mod jobs;
pub mod scheduler;

use std::time::Duration;

use axum::Router;
use common::{
    bus::{Bus, BusConfig},
    config::{ConfigError, Env},
    health::{self, Ready},
    server::{self, Service, Serving},
};

use crate::{
    events::order_created::ScheduleExpiration,
    jobs::Jobs,
    scheduler::{Scheduler, SchedulerConfig},
};

/// The name of the service's durable consumers.
pub const SERVICE: &str = "expiration-service";

/// How long a readiness check waits for Redis.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// Everything expiration reads from the environment.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Port, development mode, overload limits.
    pub serving: Serving,
    pub redis_url: String,
    pub bus: BusConfig,
    /// Prefix of the Redis keys (`<prefix>:jobs`): `expiration` in production,
    /// a unique one per test.
    pub key_prefix: String,
}

impl Settings {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            serving: Serving::from_env(env)?,
            redis_url: env.required("REDIS_URL")?,
            bus: BusConfig::from_env(env)?.with_connection_name("expiration"),
            key_prefix: "expiration".to_owned(),
        })
    }
}

/// What the probes look at.
#[derive(Clone)]
pub struct AppState {
    pub jobs: Jobs,
    pub bus: Bus,
}

impl Ready for AppState {
    async fn check(&self) -> Result<(), Vec<&'static str>> {
        let redis = matches!(
            tokio::time::timeout(PING_TIMEOUT, self.jobs.ping()).await,
            Ok(Ok(()))
        );
        health::collect(&[("redis", redis), ("nats", self.bus.is_ready())])
    }
}

/// The complete router: the probes and the fleet's common layers.
pub fn app(state: AppState) -> Router {
    server::finish(Router::new().merge(health::routes()).with_state(state))
}

/// Builds the service: [`Application::build`].
pub struct Application;

impl Application {
    /// Connects to Redis and NATS (creating the stream if needed) and binds
    /// the port (`0` picks a free one): the probes, the `order.created`
    /// listener and the scheduler, which publishes `expiration.complete`
    /// when a job is due.
    pub async fn build(settings: Settings) -> anyhow::Result<Service> {
        let jobs = Jobs::connect(&settings.redis_url, &settings.key_prefix).await?;
        let bus = Bus::connect(settings.bus).await?;
        let scheduler = Scheduler::new(jobs.clone(), bus.clone(), SchedulerConfig::default());
        let listener = ScheduleExpiration::new(jobs.clone(), scheduler.waker());
        let router = app(AppState {
            jobs,
            bus: bus.clone(),
        });
        Ok(Service::bind("expiration", settings.serving, router)
            .await?
            .listen(&bus, SERVICE, listener)
            .task(move |stop| scheduler.run(stop)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_port_redis_nats_app_env_and_rust_log() {
        let env = Env::recording();
        let settings = Settings::from_env(&env).unwrap();
        let mut names: Vec<_> = env.recorded().into_iter().collect();
        names.sort_unstable();
        assert_eq!(
            names,
            vec![
                ("APP_ENV", false),
                ("MAX_IN_FLIGHT_REQUESTS", false),
                ("NATS_STREAM_REPLICAS", false),
                ("NATS_URL", true),
                ("PORT", false),
                ("REDIS_URL", true),
                ("REQUEST_TIMEOUT_SECONDS", false),
                ("RUST_LOG", false),
            ]
        );
        assert_eq!(settings.key_prefix, "expiration");
        assert_eq!(settings.serving.port, 3000);
    }
}
