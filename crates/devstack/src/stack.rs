//! The whole fleet on one machine: ephemeral infrastructure, every service,
//! and the local ingress in front of them — what fleet-level and browser
//! tests drive, only over HTTP, as a browser would.
//!
//! Each [`Stack`] has its own NATS, MongoDB-wire server, Redis and Stripe
//! fake, so stacks never share a JetStream stream or a durable consumer and
//! can run side by side.

use std::time::Duration;

use anyhow::Context;
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};

use crate::{
    Fleet, FleetOptions, Infra, InfraOptions, WebhookTarget, ingress, ingress::IngressOptions,
};

/// What [`Stack::start_with`] starts.
#[derive(Debug, Clone)]
pub struct StackOptions {
    /// The services to start (all when empty).
    pub only: Vec<String>,
    /// Extra environment of every service (e.g. `EXPIRATION_WINDOW_SECONDS`).
    pub env: Vec<(String, String)>,
    /// Replicas of every service, balanced by the ingress (default 1).
    pub replicas: usize,
    /// NATS nodes: more than 1 is a JetStream cluster, and the services keep
    /// the stream on every node (`NATS_STREAM_REPLICAS`) (default 1).
    pub nats_nodes: usize,
    /// The ingress's bounds and limits (e.g. an edge rate limit).
    pub ingress: IngressOptions,
    /// The order page pays with the Stripe fake's Stripe.js (a publishable
    /// key and `STRIPE_JS_URL` for the client) instead of the test-mode
    /// "Pay with test card" (default false).
    pub stripe_js: bool,
}

impl Default for StackOptions {
    fn default() -> Self {
        Self {
            only: Vec::new(),
            env: Vec::new(),
            replicas: 1,
            nats_nodes: 1,
            ingress: IngressOptions::default(),
            stripe_js: false,
        }
    }
}

impl StackOptions {
    /// The services in `only` (all when empty) with the extra environment
    /// `env`, one replica each, one NATS server, the default ingress.
    pub fn new(only: &[&str], env: &[(&str, &str)]) -> Self {
        Self {
            only: only.iter().map(|name| (*name).to_owned()).collect(),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..Self::default()
        }
    }

    /// With these ingress bounds and limits.
    pub fn with_ingress(mut self, ingress: IngressOptions) -> Self {
        self.ingress = ingress;
        self
    }
}

/// A running stack. Stop it with [`Stack::stop`]; dropping it kills
/// everything.
#[derive(Debug)]
pub struct Stack {
    infra: Infra,
    fleet: Option<Fleet>,
    base_url: String,
    stop_ingress: watch::Sender<bool>,
    ingress: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Stack {
    /// Starts infrastructure, the services named in `only` (all when empty)
    /// with the extra environment `env` (e.g. `EXPIRATION_WINDOW_SECONDS`),
    /// and the ingress on a free port; returns when every service is ready.
    pub async fn start(only: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Self> {
        Self::start_with(StackOptions::new(only, env)).await
    }

    /// Starts a stack as `options` say; returns when every replica is ready.
    pub async fn start_with(options: StackOptions) -> anyhow::Result<Self> {
        let infra = Infra::start(
            InfraOptions::ephemeral()
                .with_stripe()
                .with_nats_nodes(options.nats_nodes),
        )
        .await
        .context("failed to start the infrastructure")?;
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .context("failed to bind the ingress")?;
        let base_url = format!("http://127.0.0.1:{}", listener.local_addr()?.port());

        let mut fleet_options = FleetOptions::new(infra.endpoints().clone())?;
        if !options.only.is_empty() {
            let only: Vec<&str> = options.only.iter().map(String::as_str).collect();
            fleet_options = fleet_options.only(&only);
        }
        fleet_options.api_base_url = Some(base_url.clone());
        // The fake's events go to the fleet's webhook route, through the ingress.
        if let Some(stripe) = infra.stripe_fake() {
            stripe.set_default_webhook(Some(WebhookTarget {
                url: format!("{base_url}/api/payments/webhook"),
                secret: fleet_options.stripe_webhook_secret.clone(),
            }));
            if options.stripe_js {
                fleet_options.stripe_publishable_key =
                    crate::fleet::fake_publishable_key(&fleet_options.stripe_key);
                fleet_options.env.push((
                    "STRIPE_JS_URL".to_owned(),
                    format!("{}/js.stripe.com/v3/", stripe.base_url()),
                ));
            }
        }
        fleet_options.replicas = options.replicas;
        if options.nats_nodes > 1 {
            fleet_options.env.push((
                "NATS_STREAM_REPLICAS".to_owned(),
                options.nats_nodes.to_string(),
            ));
        }
        fleet_options.env.extend(options.env);
        fleet_options.ready_timeout = Duration::from_secs(60);
        // The web client is ready only once the API answers through the
        // ingress, so the ingress goes up before the fleet is waited for.
        let fleet = Fleet::spawn(fleet_options)?;
        let (stop_ingress, mut stopped) = watch::channel(false);
        let ingress = tokio::spawn(ingress::serve_with(
            listener,
            fleet.replica_upstreams(),
            options.ingress,
            async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            },
        ));
        let stack = Self {
            infra,
            fleet: Some(fleet),
            base_url,
            stop_ingress,
            ingress: Some(ingress),
        };
        if let Err(error) = stack.fleet().wait_ready().await {
            let _ = stack.stop().await;
            return Err(error.context("the fleet did not become ready"));
        }
        Ok(stack)
    }

    /// The ingress: `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    pub fn infra(&self) -> &Infra {
        &self.infra
    }

    /// For fault injection: restart NATS or the MongoDB-wire server (same
    /// port, same data) with [`Infra::restart_server`].
    pub fn infra_mut(&mut self) -> &mut Infra {
        &mut self.infra
    }

    #[expect(
        clippy::expect_used,
        reason = "only `stop`, which consumes the stack, takes the fleet"
    )]
    pub fn fleet(&self) -> &Fleet {
        self.fleet
            .as_ref()
            .expect("the fleet runs until the stack stops")
    }

    /// For fault injection: kill, stop, start or restart one service.
    #[expect(
        clippy::expect_used,
        reason = "only `stop`, which consumes the stack, takes the fleet"
    )]
    pub fn fleet_mut(&mut self) -> &mut Fleet {
        self.fleet
            .as_mut()
            .expect("the fleet runs until the stack stops")
    }

    /// Stops the ingress, the services (with time to drain), then the
    /// infrastructure.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let _ = self.stop_ingress.send(true);
        if let Some(ingress) = self.ingress.take() {
            let _ = ingress.await;
        }
        let fleet = self.fleet.take().map(Fleet::stop);
        if let Some(stopping) = fleet {
            stopping.await?;
        }
        self.infra.stop().await
    }
}
