//! The auth service: `/api/users` — sign up, sign in, sign out, who am I.
//!
//! It owns the `users` collection and is the only service that knows
//! passwords. It issues the session cookie that every other service verifies
//! on its own (see `common::session`); nobody calls auth at request time.
//!
//! - [`routes::users`]: the four routes and their rules.
//! - [`store`]: the user documents and the unique index on email.
//! - [`password`]: argon2id hashing off the async runtime, in bounded memory
//!   and with a bounded queue.
//! - [`throttle`]: sign-in guessing limits per account and per client
//!   address, counted in the database every replica shares.

pub mod password;
pub mod routes;
pub mod store;
pub mod throttle;

use axum::{Router, extract::FromRef};
use common::{
    client::TrustedProxies,
    config::{ConfigError, Env, Secret},
    health::{self, Ready},
    mongo, openapi,
    server::{self, Service, Serving},
    session::{CookieName, Sessions},
};

/// Everything auth reads from the environment.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Port, development mode, overload limits.
    pub serving: Serving,
    pub mongo_uri: String,
    pub jwt_key: Secret,
    /// The name of the session cookie auth sets (`SESSION_COOKIE_NAME`:
    /// `session`, the default, or the original's `express:sess`); every
    /// service accepts both.
    pub session_cookie_name: CookieName,
    /// At most this many passwords queued or being hashed at once; one more
    /// sign-up or sign-in is refused with 503 and `Retry-After`
    /// (`PASSWORD_QUEUE_LIMIT`, default 32 per core).
    pub password_queue_limit: usize,
    /// Sign-in guessing limits (`SIGNIN_*`).
    pub signin_policy: throttle::Policy,
    /// Whose `X-Forwarded-For` names the client (`TRUSTED_PROXIES`, default
    /// loopback and the private ranges: the ingress).
    pub trusted_proxies: TrustedProxies,
}

impl Settings {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            serving: Serving::from_env(env)?,
            mongo_uri: env.required("MONGO_URI")?,
            jwt_key: Secret::new(env.required("JWT_KEY")?),
            session_cookie_name: env.parse_or("SESSION_COOKIE_NAME", CookieName::default())?,
            password_queue_limit: env
                .parse_or("PASSWORD_QUEUE_LIMIT", password::default_queue_limit())?,
            signin_policy: throttle::Policy::from_env(env)?,
            trusted_proxies: env.parse_or("TRUSTED_PROXIES", TrustedProxies::private_networks())?,
        })
    }
}

/// The state every handler gets; a handler may also extract any one field
/// by its type (`State<Sessions>`, …).
#[derive(Clone, FromRef)]
pub struct AppState {
    pub users: store::Users,
    pub sessions: Sessions,
    pub hasher: password::Hasher,
    pub throttle: throttle::Throttle,
    pub trusted_proxies: TrustedProxies,
}

impl Ready for AppState {
    async fn check(&self) -> Result<(), Vec<&'static str>> {
        health::collect(&[("mongo", mongo::ping(self.users.database()).await.is_ok())])
    }
}

/// The complete router: the documented routes with `/openapi.json`, the
/// probes and the fleet's common layers (with `/metrics`).
pub fn app(state: AppState) -> Router {
    let doc = openapi::document(
        "auth",
        env!("CARGO_PKG_VERSION"),
        "Ticketing's users: sign up, sign in, sign out, and who is signed in. Sign-up and sign-in \
         set the session cookie (`session`, or `express:sess` as the original app named it: \
         every service of the fleet accepts both).",
    );
    server::api_app(doc, routes::users::router(), state)
}

/// Builds the service: [`Application::build`].
pub struct Application;

impl Application {
    /// Connects to the database, makes sure the indexes exist and binds the
    /// port (`0` picks a free one).
    pub async fn build(settings: Settings) -> anyhow::Result<Service> {
        let db = mongo::connect(&settings.mongo_uri, "auth").await?;
        let throttle = throttle::Throttle::new(&db, settings.signin_policy);
        throttle.ensure_indexes().await?;
        let users = store::Users::new(db);
        users.ensure_indexes().await?;
        let state = AppState {
            users,
            sessions: Sessions::new(settings.jwt_key.expose(), !settings.serving.development)
                .with_cookie_name(settings.session_cookie_name),
            hasher: password::Hasher::new(settings.password_queue_limit),
            throttle,
            trusted_proxies: settings.trusted_proxies,
        };
        Service::bind("auth", settings.serving, app(state)).await
    }
}
