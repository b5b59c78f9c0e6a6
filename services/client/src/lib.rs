//! The web client: server-rendered HTML pages for buyers and sellers.
//!
//! It owns no data. Every page is rendered from the fleet's public API,
//! called through the same ingress the browser uses (`API_BASE_URL`) with the
//! visitor's own `Cookie` header, so each API service checks the session just
//! as it would for a browser; the `Set-Cookie` answers of sign-up, sign-in and
//! sign-out are relayed back. The client never sees `JWT_KEY` and never calls
//! a service's private address.
//!
//! - [`api`]: the API client, its models and what the visitor's request
//!   forwards ([`api::Visitor`]).
//! - [`pages`]: the page layout, form errors, the friendly error pages and
//!   the sign-in redirect.
//! - [`routes`]: one module per area (`auth`, `tickets`, `orders`); forms are
//!   plain POSTs answered with a redirect (PRG), or the form again with the
//!   API's messages next to their fields.
//! - [`assets`]: the CSS and the small script (countdown, card form), built
//!   into the binary and served under `/assets/`: pages render offline.

pub mod api;
pub mod assets;
pub mod pages;
pub mod routes;

use std::sync::Arc;

use axum::{Router, middleware};
use common::{
    config::{ConfigError, Env},
    health::{self, Ready},
    server::{self, Service, Serving},
};

/// Stripe's own Stripe.js.
pub const DEFAULT_STRIPE_JS_URL: &str = "https://js.stripe.com/v3/";

/// Everything the client reads from the environment.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Port, development mode, overload limits.
    pub serving: Serving,
    /// The ingress the APIs are reached through (`http://127.0.0.1:8080`
    /// locally, the ingress controller's service in a cluster).
    pub api_base_url: String,
    /// Stripe's publishable key; without it the order page offers
    /// "Pay with test card" (`tok_visa`) instead of Stripe's card form.
    pub stripe_publishable_key: Option<String>,
    /// Where Stripe.js is loaded from (`STRIPE_JS_URL`, default
    /// `https://js.stripe.com/v3/`; the local fleet: the Stripe fake's).
    pub stripe_js_url: String,
}

impl Settings {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let api_base_url = env.required("API_BASE_URL")?;
        let stripe_publishable_key = env.optional("STRIPE_PUBLISHABLE_KEY");
        let stripe_js_url = env
            .optional("STRIPE_JS_URL")
            .unwrap_or_else(|| DEFAULT_STRIPE_JS_URL.to_owned());
        if pages::origin_of(&stripe_js_url).is_none() {
            return Err(ConfigError::Invalid {
                name: "STRIPE_JS_URL",
                reason: format!("{stripe_js_url:?} is not an http(s) URL"),
            });
        }
        let settings = Self {
            serving: Serving::from_env(env)?,
            api_base_url: api_base_url.trim().trim_end_matches('/').to_owned(),
            stripe_publishable_key,
            stripe_js_url,
        };
        api::check_base_url(&settings.api_base_url).map_err(|reason| ConfigError::Invalid {
            name: "API_BASE_URL",
            reason,
        })?;
        Ok(settings)
    }
}

/// The state every handler gets.
#[derive(Clone)]
pub struct AppState {
    pub api: api::ApiClient,
    pub stripe_publishable_key: Option<Arc<str>>,
    pub stripe_js_url: Arc<str>,
    /// The page's Content-Security-Policy: with Stripe.js, exactly the
    /// origins it needs.
    pub csp: Arc<str>,
}

impl AppState {
    pub fn new(settings: &Settings) -> anyhow::Result<Self> {
        Ok(Self {
            api: api::ApiClient::new(&settings.api_base_url)?,
            stripe_publishable_key: settings.stripe_publishable_key.as_deref().map(Arc::from),
            stripe_js_url: Arc::from(settings.stripe_js_url.as_str()),
            csp: Arc::from(pages::content_security_policy(
                settings
                    .stripe_publishable_key
                    .as_ref()
                    .map(|_| settings.stripe_js_url.as_str()),
            )),
        })
    }
}

impl Ready for AppState {
    async fn check(&self) -> Result<(), Vec<&'static str>> {
        health::collect(&[("api", self.api.ping().await.is_ok())])
    }
}

/// The complete router: pages, assets, probes and the fleet's common layers,
/// with HTML answers for unknown pages and panics.
pub fn app(state: AppState) -> Router {
    server::layers(
        Router::new()
            .merge(routes::router())
            .merge(assets::router())
            .merge(health::routes())
            .fallback(pages::not_found)
            .method_not_allowed_fallback(pages::not_found)
            .layer(middleware::from_fn(pages::sign_in_redirect))
            .layer(tower_http::catch_panic::CatchPanicLayer::custom(
                pages::panic_page,
            ))
            .layer(middleware::from_fn_with_state(
                state.clone(),
                pages::security_headers,
            ))
            .with_state(state),
    )
}

/// Builds the client: [`Application::build`].
pub struct Application;

impl Application {
    /// Binds the port (`0` picks a free one); the API is not called yet.
    pub async fn build(settings: Settings) -> anyhow::Result<Service> {
        let state = AppState::new(&settings)?;
        Service::bind("client", settings.serving, app(state)).await
    }
}
