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
//!   releases it, `payment.created` marks it sold.
//! - [`store`]: the ticket document, the versioned writes and their events.
//! - [`listing`]: the filters, sort orders and keyset pages of the listing;
//!   [`search`]: the title's search keys.
//!
//! Background tasks, all stopped by the same shutdown token: the outbox relay
//! of the `tickets` collection and the three listeners.

pub mod events;
pub mod listing;
pub mod routes;
pub mod search;
pub mod store;

use axum::{Router, extract::FromRef};
use common::{
    bus::{Bus, BusConfig},
    config::{ConfigError, Env, Secret},
    health::{self, Ready},
    mongo, openapi,
    outbox::Relay,
    server::{self, Service, Serving},
    session::Sessions,
};

use crate::events::{OrderCancelledListener, OrderCreatedListener, PaymentCreatedListener};

/// Everything tickets reads from the environment.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Port, development mode, overload limits.
    pub serving: Serving,
    pub mongo_uri: String,
    pub bus: BusConfig,
    pub jwt_key: Secret,
    /// Whether the outbox relay runs. Always true from the environment; tests
    /// turn it off to play a crash after the write and before the publish.
    pub outbox_relay: bool,
    /// `RESALE_CAP_PERCENT`: a listing's price may be at most this percentage
    /// of its face value (when it gives one). Unset: no cap.
    pub resale_cap_percent: Option<u32>,
}

impl Settings {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            serving: Serving::from_env(env)?,
            mongo_uri: env.required("MONGO_URI")?,
            bus: BusConfig::from_env(env)?.with_connection_name("tickets"),
            jwt_key: Secret::new(env.required("JWT_KEY")?),
            outbox_relay: true,
            resale_cap_percent: match env.optional("RESALE_CAP_PERCENT") {
                None => None,
                Some(raw) => Some(raw.trim().parse::<u32>().ok().filter(|n| *n >= 1).ok_or(
                    ConfigError::Invalid {
                        name: "RESALE_CAP_PERCENT",
                        reason: "must be a whole percentage of at least 1".into(),
                    },
                )?),
            },
        })
    }
}

/// The state every handler gets; a handler may also extract any one field
/// by its type (`State<Sessions>`, …).
#[derive(Clone, FromRef)]
pub struct AppState {
    pub tickets: store::Tickets,
    pub sessions: Sessions,
    pub bus: Bus,
    /// See [`Settings::resale_cap_percent`].
    pub resale_cap_percent: Option<u32>,
}

impl Ready for AppState {
    async fn check(&self) -> Result<(), Vec<&'static str>> {
        health::mongo_and_nats(self.tickets.database(), &self.bus).await
    }
}

/// The complete router: the documented routes with `/openapi.json`, the
/// probes and the fleet's common layers (with `/metrics`).
pub fn app(state: AppState) -> Router {
    let doc = openapi::document(
        "tickets",
        env!("CARGO_PKG_VERSION"),
        "Ticketing's tickets: list what is for sale, show one, sell one, edit one. \
         Prices are dollars with at most two decimals.",
    );
    server::api_app(doc, routes::tickets::router(), state)
}

/// Builds the service: [`Application::build`].
pub struct Application;

impl Application {
    /// Connects to the database (making sure the indexes exist) and to NATS
    /// (making sure the stream exists), and binds the port (`0` picks a free
    /// one): the HTTP server, the listeners of `order.created`,
    /// `order.cancelled` and `payment.created`, and the outbox relay.
    pub async fn build(settings: Settings) -> anyhow::Result<Service> {
        let db = mongo::connect(&settings.mongo_uri, "tickets").await?;
        let bus = Bus::connect(settings.bus.clone()).await?;
        let (relay, outbox) = Relay::new(bus.clone(), store::Tickets::raw_collection(&db));
        let tickets = store::Tickets::new(db, outbox);
        tickets.ensure_indexes().await?;
        tickets.backfill_prefixes().await?;
        let state = AppState {
            tickets: tickets.clone(),
            sessions: Sessions::new(settings.jwt_key.expose(), !settings.serving.development),
            bus: bus.clone(),
            resale_cap_percent: settings.resale_cap_percent,
        };
        let service = Service::bind("tickets", settings.serving, app(state)).await?;
        Ok(service
            .listen(
                &bus,
                events::SERVICE,
                OrderCreatedListener::new(tickets.clone()),
            )
            .listen(
                &bus,
                events::SERVICE,
                OrderCancelledListener::new(tickets.clone()),
            )
            .listen(&bus, events::SERVICE, PaymentCreatedListener::new(tickets))
            .relay(settings.outbox_relay.then_some(relay)))
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
                "APP_ENV",
                "MAX_IN_FLIGHT_REQUESTS",
                "REQUEST_TIMEOUT_SECONDS",
                "MONGO_URI",
                "NATS_URL",
                "NATS_STREAM_REPLICAS",
                "JWT_KEY",
                "RESALE_CAP_PERCENT"
            ]
        );
        assert_eq!(settings.resale_cap_percent, None, "no cap unless set");
        assert!(settings.outbox_relay);
        assert_eq!(settings.bus.stream, "TICKETING");
    }
}
