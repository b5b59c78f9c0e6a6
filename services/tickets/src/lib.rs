//! The tickets service: `/api/tickets` — list, show, sell and edit tickets —
//! and the reservation of tickets by orders.
//!
//! It owns the `tickets` collection. Every change to a ticket is a new
//! version, written with compare-and-set, and announced to the fleet with
//! `ticket.created` / `ticket.updated` through an outbox in the same write,
//! so a crash between the write and the publish loses nothing.
//!
//! - [`routes::tickets`]: the four routes and their rules.
//! - [`events`]: `order.created` reserves a ticket, `order.cancelled`
//!   releases it.
//! - [`store`]: the ticket document, the versioned writes and their events.
//!
//! Background tasks, all stopped by the same shutdown token: the outbox relay
//! of the `tickets` collection and the two listeners.

pub mod events;
pub mod routes;
pub mod store;

use axum::{Router, extract::FromRef};
use common::{
    bus::{Bus, BusConfig},
    config::{ConfigError, Env, Secret},
    health::{self, Ready},
    mongo, openapi,
    outbox::{Outbox, Relay},
    server,
    session::Sessions,
};
use tokio::{net::TcpListener, task::JoinSet};
use tokio_util::sync::CancellationToken;
use utoipa_axum::router::OpenApiRouter;

use crate::events::{OrderCancelledListener, OrderCreatedListener};

/// Everything tickets reads from the environment.
#[derive(Debug, Clone)]
pub struct Settings {
    pub port: u16,
    pub mongo_uri: String,
    pub bus: BusConfig,
    pub jwt_key: Secret,
    /// Local development: readable logs, cookies without `Secure`.
    pub development: bool,
    /// In-flight bound and request deadline (`MAX_IN_FLIGHT_REQUESTS`,
    /// `REQUEST_TIMEOUT_SECONDS`).
    pub limits: common::overload::Limits,
    /// Whether the outbox relay runs. Always true from the environment; tests
    /// turn it off to play a crash after the write and before the publish.
    pub outbox_relay: bool,
}

impl Settings {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        env.log_filter();
        Ok(Self {
            port: env.port()?,
            mongo_uri: env.required("MONGO_URI")?,
            bus: BusConfig::from_env(env)?.with_connection_name("tickets"),
            jwt_key: Secret::new(env.required("JWT_KEY")?),
            development: env.development(),
            limits: common::overload::Limits::from_env(env)?,
            outbox_relay: true,
        })
    }
}

/// The state every handler gets.
#[derive(Clone)]
pub struct AppState {
    pub tickets: store::Tickets,
    pub sessions: Sessions,
    /// Wakes the relay after a write so the event goes out at once.
    pub outbox: Outbox,
    pub bus: Bus,
}

impl FromRef<AppState> for Sessions {
    fn from_ref(state: &AppState) -> Self {
        state.sessions.clone()
    }
}

impl Ready for AppState {
    async fn check(&self) -> Result<(), Vec<&'static str>> {
        health::collect(&[
            ("mongo", mongo::ping(self.tickets.database()).await.is_ok()),
            ("nats", self.bus.is_ready()),
        ])
    }
}

/// The complete router: the documented routes with `/openapi.json`, the
/// probes and the fleet's common layers (with `/metrics`).
pub fn app(state: AppState) -> Router {
    server::finish(
        Router::new()
            .merge(openapi::serve(api()))
            .merge(health::routes())
            .with_state(state),
    )
}

/// The HTTP API: its routes and their OpenAPI description, from the same code.
pub fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::document(
        "tickets",
        env!("CARGO_PKG_VERSION"),
        "Ticketing's tickets: list what is for sale, show one, sell one, edit one. \
         Prices are dollars with at most two decimals.",
    ))
    .merge(routes::tickets::router())
}

/// A built service, bound to its port and ready to run.
pub struct Application {
    listener: TcpListener,
    router: Router,
    state: AppState,
    /// `None` when the settings turn the relay off.
    relay: Option<Relay>,
}

impl Application {
    /// Connects to the database (making sure the indexes exist) and to NATS
    /// (making sure the stream exists), and binds the port (`0` picks a free
    /// one).
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let db = mongo::connect(&settings.mongo_uri, "tickets").await?;
        let tickets = store::Tickets::new(db);
        tickets.ensure_indexes().await?;
        let bus = Bus::connect(settings.bus.clone()).await?;
        let (relay, outbox) = Relay::new(bus.clone(), tickets.documents());
        let state = AppState {
            tickets,
            sessions: Sessions::new(settings.jwt_key.expose(), !settings.development),
            outbox,
            bus,
        };
        let listener = TcpListener::bind(("0.0.0.0", settings.port)).await?;
        Ok(Self {
            listener,
            router: settings.limits.apply(app(state.clone())),
            state,
            relay: settings.outbox_relay.then_some(relay),
        })
    }

    pub fn port(&self) -> u16 {
        self.listener
            .local_addr()
            .map(|a| a.port())
            .unwrap_or_default()
    }

    /// Serves and consumes until `shutdown` is cancelled, then drains
    /// in-flight requests, finishes the messages in hand and stops the relay.
    pub async fn run_until(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self {
            listener,
            router,
            state,
            relay,
        } = self;
        // Tasks started before a failure below must not outlive it.
        let tasks = shutdown.child_token();
        let bus = &state.bus;
        let created = OrderCreatedListener::new(state.tickets.clone(), state.outbox.clone());
        let cancelled = OrderCancelledListener::new(state.tickets.clone(), state.outbox.clone());
        let listeners = match futures::future::try_join(
            bus.listen(events::SERVICE, created, tasks.clone()),
            bus.listen(events::SERVICE, cancelled, tasks.clone()),
        )
        .await
        {
            Ok((created, cancelled)) => [created, cancelled],
            Err(err) => {
                tasks.cancel();
                return Err(err.context("failed to start the order listeners"));
            }
        };

        let mut background = JoinSet::new();
        for listener in listeners {
            background.spawn(async move { listener.await? });
        }
        match relay {
            Some(relay) => {
                background.spawn(relay.run(tasks.clone()));
            }
            None => tracing::warn!("outbox relay disabled: events stay in the outbox"),
        }
        tracing::info!(
            port = listener.local_addr().map(|a| a.port()).unwrap_or_default(),
            "tickets listening"
        );
        server::run(listener, router, background, shutdown).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_its_variables_and_always_relays_the_outbox() {
        let env = Env::recording();
        let settings = Settings::from_env(&env).unwrap();
        let names: Vec<_> = env.recorded().into_iter().map(|(name, _)| name).collect();
        assert_eq!(
            names,
            [
                "RUST_LOG",
                "PORT",
                "MONGO_URI",
                "NATS_URL",
                "NATS_STREAM_REPLICAS",
                "JWT_KEY",
                "APP_ENV",
                "MAX_IN_FLIGHT_REQUESTS",
                "REQUEST_TIMEOUT_SECONDS"
            ]
        );
        assert!(settings.outbox_relay);
        assert_eq!(settings.bus.stream, "TICKETING");
    }
}
