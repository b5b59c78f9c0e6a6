//! The orders service: `/api/orders` — buy a ticket, see and cancel orders —
//! and what happens to orders when tickets change, reservations expire and
//! payments arrive.
//!
//! It owns the `orders` collection and keeps a replica of the tickets it may
//! sell (`tickets`), fed by the tickets service's events; it never reads
//! another service's database.
//!
//! - [`routes::orders`]: the four routes and their rules.
//! - [`store`]: the order and ticket documents; the unique index that lets
//!   exactly one order hold a ticket; the compare-and-set transitions that
//!   write their events into the order's outbox.
//! - [`events`]: the listeners for `ticket.created`, `ticket.updated`,
//!   `expiration.complete` and `payment.created`.
//!
//! [`Application`] wires it up: the HTTP server, the four listeners and the
//! outbox relay that publishes `order.created` / `order.cancelled`, all
//! stopped by one shutdown token.

pub mod events;
pub mod routes;
pub mod store;

use std::time::Duration;

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

use store::{Orders, Tickets};

/// Everything orders reads from the environment.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Port, development mode, overload limits.
    pub serving: Serving,
    pub mongo_uri: String,
    pub bus: BusConfig,
    pub jwt_key: Secret,
    /// How long an order holds its ticket (`EXPIRATION_WINDOW_SECONDS`,
    /// default 15 minutes).
    pub expiration_window: Duration,
    /// How many orders one user may hold in `created` or `awaiting:payment`
    /// at once (`MAX_ACTIVE_ORDERS_PER_USER`, default 4).
    pub max_active_orders_per_user: u32,
    /// Whether this process publishes the outbox. Always `true` from the
    /// environment; tests turn it off to play a crash between the write and
    /// the publish.
    pub outbox_relay: bool,
}

impl Settings {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            serving: Serving::from_env(env)?,
            mongo_uri: env.required("MONGO_URI")?,
            bus: BusConfig::from_env(env)?.with_connection_name("orders"),
            jwt_key: Secret::new(env.required("JWT_KEY")?),
            expiration_window: Duration::from_secs(env.parse_or("EXPIRATION_WINDOW_SECONDS", 900)?),
            max_active_orders_per_user: match env.parse_or("MAX_ACTIVE_ORDERS_PER_USER", 4)? {
                0 => {
                    return Err(ConfigError::Invalid {
                        name: "MAX_ACTIVE_ORDERS_PER_USER",
                        reason: "must be at least 1".into(),
                    });
                }
                max => max,
            },
            outbox_relay: true,
        })
    }
}

/// The state every handler gets; a handler may also extract any one field
/// by its type (`State<Sessions>`, …).
#[derive(Clone, FromRef)]
pub struct AppState {
    pub orders: Orders,
    pub tickets: Tickets,
    pub sessions: Sessions,
    pub bus: Bus,
    pub database: mongodb::Database,
    pub expiration_window: Duration,
    pub max_active_orders_per_user: u32,
}

impl Ready for AppState {
    async fn check(&self) -> Result<(), Vec<&'static str>> {
        health::mongo_and_nats(&self.database, &self.bus).await
    }
}

/// The complete router: the documented routes with `/openapi.json`, the
/// probes and the fleet's common layers (with `/metrics`).
pub fn app(state: AppState) -> Router {
    let doc = openapi::document(
        "orders",
        env!("CARGO_PKG_VERSION"),
        "Ticketing's orders: buy a ticket (it is reserved for the expiration window), \
         see and cancel your orders.",
    );
    server::api_app(doc, routes::orders::router(), state)
}

/// Builds the service: [`Application::build`].
pub struct Application;

impl Application {
    /// Connects to the database and NATS, makes sure the indexes and the
    /// stream exist, and binds the port (`0` picks a free one): the HTTP
    /// server, the four listeners and the outbox relay that publishes
    /// `order.created` / `order.cancelled`.
    pub async fn build(settings: Settings) -> anyhow::Result<Service> {
        let database = mongo::connect(&settings.mongo_uri, "orders").await?;
        let bus = Bus::connect(settings.bus.clone()).await?;
        let (relay, outbox) = Relay::new(bus.clone(), Orders::raw_collection(&database));
        let orders = Orders::new(&database, outbox);
        orders.ensure_indexes().await?;
        let tickets = Tickets::new(&database);
        let state = AppState {
            orders: orders.clone(),
            tickets: tickets.clone(),
            sessions: Sessions::new(settings.jwt_key.expose(), !settings.serving.development),
            bus: bus.clone(),
            database,
            expiration_window: settings.expiration_window,
            max_active_orders_per_user: settings.max_active_orders_per_user,
        };
        let service = Service::bind("orders", settings.serving, app(state)).await?;
        Ok(events::listen(service, &bus, &orders, &tickets)
            .relay(settings.outbox_relay.then_some(relay)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_read_the_documented_variables_with_their_defaults() {
        let env = Env::recording();
        let settings = Settings::from_env(&env).unwrap();
        assert_eq!(settings.serving.port, 3000);
        assert_eq!(settings.expiration_window, Duration::from_secs(900));
        assert_eq!(settings.max_active_orders_per_user, 4);
        assert!(settings.outbox_relay, "the relay always runs outside tests");
        assert!(!settings.serving.development);
        let mut read = env.recorded();
        read.sort();
        assert_eq!(
            read,
            [
                ("APP_ENV", false),
                ("EXPIRATION_WINDOW_SECONDS", false),
                ("JWT_KEY", true),
                ("MAX_ACTIVE_ORDERS_PER_USER", false),
                ("MAX_IN_FLIGHT_REQUESTS", false),
                ("MONGO_URI", true),
                ("NATS_STREAM_REPLICAS", false),
                ("NATS_URL", true),
                ("PORT", false),
                ("REQUEST_TIMEOUT_SECONDS", false),
                ("RUST_LOG", false),
            ]
        );
    }
}
