//! The payments service: `/api/payments` — pay for an order with a card, on
//! Stripe PaymentIntents.
//!
//! It keeps a replica of the orders it may take money for (fed by
//! `order.created` and `order.cancelled`), makes one PaymentIntent per order,
//! ever, which the browser confirms with Stripe.js (3-D Secure included),
//! learns the outcome from Stripe's signed webhooks, and announces a paid
//! order with `payment.created`, which the orders service turns into a
//! completed order. Money that arrives for a cancelled order is refunded;
//! cancelling an order cancels its intent.
//!
//! - [`routes::payments`]: `POST` / `GET /api/payments`, in one place.
//! - [`routes::webhook`]: `POST /api/payments/webhook` (signature, dedup).
//! - [`settle`]: where the money ends — paid, refunded, or never taken.
//! - [`stripe`]: the Stripe gateway, an idempotency key on every write.
//! - [`store`]: the order replica, the payments (unique per order, success
//!   written with its event), the handled Stripe events.
//! - [`events`]: the two listeners that keep the replica current.

pub mod events;
pub mod routes;
pub mod settle;
pub mod store;
pub mod stripe;

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
use mongodb::Database;

use crate::{
    events::{OrderCancelledListener, OrderCreatedListener, SERVICE},
    settle::Settle,
    store::{Orders, Payments},
    stripe::Stripe,
};

/// Everything payments reads from the environment.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Port, development mode, overload limits.
    pub serving: Serving,
    pub mongo_uri: String,
    pub jwt_key: Secret,
    /// Stripe's secret key (`sk_…`).
    pub stripe_key: Secret,
    /// The signing secret of the webhook endpoint (`whsec_…`,
    /// `STRIPE_WEBHOOK_SECRET`).
    pub webhook_secret: Secret,
    /// Where the Stripe API is; `None` is Stripe's real API. Tests and the local
    /// fleet point it at the devstack Stripe fake (plain http is fine).
    pub stripe_api_base: Option<String>,
    /// NATS JetStream (from `NATS_URL`).
    pub bus: BusConfig,
    /// Whether to run the outbox relay (always, in a real process). Tests turn
    /// it off to play a crash between the write and the publish.
    pub outbox_relay: bool,
}

impl Settings {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let stripe_api_base = env.optional("STRIPE_API_BASE");
        if let Some(base) = &stripe_api_base
            && !(base.starts_with("http://") || base.starts_with("https://"))
        {
            return Err(ConfigError::Invalid {
                name: "STRIPE_API_BASE",
                reason: format!("{base:?} is not an http(s) URL"),
            });
        }
        Ok(Self {
            serving: Serving::from_env(env)?,
            mongo_uri: env.required("MONGO_URI")?,
            jwt_key: Secret::new(env.required("JWT_KEY")?),
            stripe_key: Secret::new(env.required("STRIPE_KEY")?),
            webhook_secret: Secret::new(env.required("STRIPE_WEBHOOK_SECRET")?),
            stripe_api_base,
            bus: BusConfig::from_env(env)?.with_connection_name("payments"),
            outbox_relay: true,
        })
    }
}

/// The state every handler gets; a handler may also extract any one field
/// by its type (`State<Sessions>`, …).
#[derive(Clone, FromRef)]
pub struct AppState {
    pub db: Database,
    pub orders: Orders,
    pub payments: Payments,
    /// Stripe, the outbox and the moves that settle a payment.
    pub settle: Settle,
    pub webhook_secret: Secret,
    pub bus: Bus,
    pub sessions: Sessions,
}

impl Ready for AppState {
    async fn check(&self) -> Result<(), Vec<&'static str>> {
        health::mongo_and_nats(&self.db, &self.bus).await
    }
}

/// The complete router: the documented routes with `/openapi.json`, the
/// probes and the fleet's common layers (with `/metrics`).
pub fn app(state: AppState) -> Router {
    let doc = openapi::document(
        "payments",
        env!("CARGO_PKG_VERSION"),
        "Ticketing's payments: one Stripe PaymentIntent per order, signed webhooks, refunds of late money.",
    );
    server::api_app(
        doc,
        routes::payments::router().merge(routes::webhook::router()),
        state,
    )
}

/// Builds the service: [`Application::build`].
pub struct Application;

impl Application {
    /// Connects to the database and NATS, makes sure the indexes and the
    /// stream exist, and binds the port (`0` picks a free one): the HTTP
    /// server, the order listeners, the outbox relay and the sweep of
    /// half-done refunds and cancels.
    pub async fn build(settings: Settings) -> anyhow::Result<Service> {
        let db = mongo::connect(&settings.mongo_uri, "payments").await?;
        let orders = Orders::new(&db);
        let bus = Bus::connect(settings.bus.clone()).await?;
        let (relay, outbox) = Relay::new(bus.clone(), Payments::raw_collection(&db));
        let payments = Payments::new(&db, outbox);
        payments.ensure_indexes().await?;
        let settle = Settle {
            payments: payments.clone(),
            orders: orders.clone(),
            stripe: Stripe::new(
                settings.stripe_key.expose(),
                settings.stripe_api_base.as_deref(),
            )?,
            in_flight: Default::default(),
        };
        let state = AppState {
            db,
            orders: orders.clone(),
            payments,
            settle: settle.clone(),
            webhook_secret: settings.webhook_secret.clone(),
            bus: bus.clone(),
            sessions: Sessions::new(settings.jwt_key.expose(), !settings.serving.development),
        };
        let service = Service::bind("payments", settings.serving, app(state)).await?;
        let created = OrderCreatedListener {
            orders: orders.clone(),
        };
        let cancelled = OrderCancelledListener {
            orders,
            settle: Some(settle.clone()),
        };
        Ok(service
            .relay(settings.outbox_relay.then_some(relay))
            .task(move |stop| settle.sweep(stop))
            .listen(&bus, SERVICE, created)
            .listen(&bus, SERVICE, cancelled))
    }
}
