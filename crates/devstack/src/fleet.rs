//! The fleet: every service binary as a supervised child process.
//!
//! Services are discovered, not listed: every `services/<name>/Cargo.toml` in
//! the workspace is one (its package name is its binary name). All binaries are
//! built into one target dir, so they sit next to the launcher's own
//! executable ([`bin_dir`]; for a test binary in `target/<profile>/deps`, one
//! level up).
//!
//! Each service gets its configuration the way it gets it in Kubernetes, from
//! environment variables (DESIGN §6): `PORT`, `MONGO_URI` (its own database:
//! `<mongo>/<service>`), `NATS_URL`, `REDIS_URL`, `JWT_KEY`, `STRIPE_KEY`,
//! `STRIPE_API_BASE`, `STRIPE_WEBHOOK_SECRET`, `STRIPE_PUBLISHABLE_KEY`, plus `APP_ENV=development` (readable logs, cookies without
//! `Secure`) and `API_BASE_URL` (the ingress, for the web client).
//! `EXPIRATION_WINDOW_SECONDS` and `RUST_LOG` are inherited from the launcher.
//!
//! [`Fleet::start`] starts all services at once and returns when every one
//! answers `GET /readyz` with 200; a service that doesn't (or exits) fails the
//! start with the tail of its log. Single services can be stopped, killed
//! (`kill -9`, for fault tests) and started again on the same port, so the
//! ingress's upstream table stays valid.
//!
//! With [`FleetOptions::replicas`] above 1 every service runs that many times,
//! as it would in a Deployment: the first replica is named after the service
//! (`orders`), the others `orders-2`, `orders-3`, …, each on its own port, all
//! against the same database and stream; [`Fleet::replica_upstreams`] is what
//! the ingress balances over.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};

use crate::balance::Upstreams;
use crate::infra::Endpoints;
use crate::output::Output;
use crate::paths;
use crate::probe::{self, local};
use crate::process::{Process, ProcessSpec, ensure_port_free};
use crate::routes;

/// The `STRIPE_KEY` given to services when no real key is configured; only
/// meaningful together with `STRIPE_API_BASE` pointing at the Stripe fake.
pub const FAKE_STRIPE_KEY: &str = "sk_test_devstack_local_fake";

/// The publishable twin of a fake secret key (`sk_test_x` → `pk_test_x`):
/// the Stripe fake treats both as the same account.
pub fn fake_publishable_key(secret_key: &str) -> Option<String> {
    secret_key
        .strip_prefix("sk_test_")
        .map(|account| format!("pk_test_{account}"))
}

/// A service found in the workspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceInfo {
    /// The directory name under `services/` (`auth`, `tickets`, …).
    pub name: String,
    /// The binary's name (the package name).
    pub binary: String,
}

/// Finds every `services/*/Cargo.toml` under `root`, sorted by name.
pub fn discover_services(root: &Path) -> anyhow::Result<Vec<ServiceInfo>> {
    let dir = root.join("services");
    let entries =
        std::fs::read_dir(&dir).with_context(|| format!("failed to list {}", dir.display()))?;
    let mut services = Vec::new();
    for entry in entries {
        let entry = entry?;
        let manifest = entry.path().join("Cargo.toml");
        if !manifest.is_file() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&manifest)
            .with_context(|| format!("failed to read {}", manifest.display()))?;
        let binary = package_name(&text).unwrap_or_else(|| name.clone());
        services.push(ServiceInfo { name, binary });
    }
    services.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(services)
}

/// The `name` of the `[package]` section (enough TOML for a Cargo manifest).
fn package_name(manifest: &str) -> Option<String> {
    let mut in_package = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_package = line == "[package]";
        } else if in_package {
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            if key.trim() == "name" {
                return Some(value.trim().trim_matches('"').to_owned());
            }
        }
    }
    None
}

/// Where the service binaries are: the directory of the running executable, or
/// its parent for a test binary in `target/<profile>/deps`.
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the running executable")?;
    let dir = exe
        .parent()
        .context("the running executable has no parent directory")?;
    Ok(if dir.file_name().is_some_and(|name| name == "deps") {
        dir.parent().unwrap_or(dir).to_path_buf()
    } else {
        dir.to_path_buf()
    })
}

/// `JWT_KEY` from the environment, else the key in `path`, else a new random
/// key written there (so sessions survive `make dev` restarts).
pub fn load_or_create_jwt_key(path: &Path) -> anyhow::Result<String> {
    load_or_create_secret("JWT_KEY", path, random_key)
}

/// `STRIPE_WEBHOOK_SECRET` if set, else the local fake's signing secret kept
/// in `path` (created on first use), so that `make dev` restarts keep it.
pub fn load_or_create_webhook_secret(path: &Path) -> anyhow::Result<String> {
    load_or_create_secret("STRIPE_WEBHOOK_SECRET", path, || {
        format!("whsec_{}", random_key())
    })
}

/// `variable` from the environment if set, else the secret kept in `path`,
/// else `make()`'s, written there readable by its owner only.
fn load_or_create_secret(
    variable: &str,
    path: &Path,
    make: impl FnOnce() -> String,
) -> anyhow::Result<String> {
    if let Ok(secret) = std::env::var(variable)
        && !secret.is_empty()
    {
        return Ok(secret);
    }
    if let Ok(secret) = std::fs::read_to_string(path) {
        let secret = secret.trim();
        if !secret.is_empty() {
            return Ok(secret.to_owned());
        }
    }
    let secret = make();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("failed to create {}", dir.display()))?;
    }
    std::fs::write(path, format!("{secret}\n"))
        .with_context(|| format!("failed to write {}", path.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    }
    Ok(secret)
}

/// 256 random bits, hex-encoded.
pub fn random_key() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// How services get their ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortPlan {
    /// A free port each (tests). A restarted service keeps its port.
    Free,
    /// Fixed ports from `base` (`make dev`): the services of `infra/routes.json`
    /// in name order (auth = base, client = base + 1, …), other services after
    /// them, so a port never moves when a service is added. Replica `r` (from
    /// 2) of a service is [`REPLICA_PORT_STRIDE`] × (r − 1) above its first.
    FromBase(u16),
}

/// How far apart the fixed ports of a service's replicas are.
pub const REPLICA_PORT_STRIDE: u16 = 100;

impl PortPlan {
    /// The fixed port of service `name` (its first replica) among `all`, or a
    /// free one.
    pub fn port_for(self, name: &str, all: &[String]) -> anyhow::Result<u16> {
        match self {
            Self::Free => probe::free_port(),
            Self::FromBase(base) => {
                let known: Vec<&str> = routes::table()
                    .services
                    .keys()
                    .map(String::as_str)
                    .collect();
                let mut extra: Vec<&str> = all
                    .iter()
                    .map(String::as_str)
                    .filter(|other| !known.contains(other))
                    .collect();
                extra.sort_unstable();
                let index = known
                    .iter()
                    .chain(extra.iter())
                    .position(|candidate| *candidate == name)
                    .context("service is in neither list")?;
                u16::try_from(index)
                    .ok()
                    .and_then(|index| base.checked_add(index))
                    .with_context(|| format!("no port left above {base} for {name}"))
            }
        }
    }
}

/// The services left out of a fleet that still have routes, with the port
/// `plan` gives them: the ingress keeps sending their routes there, so that
/// something else can serve them (e.g. another web client on `/`).
pub fn stand_ins(
    skipped: &[String],
    all: &[String],
    plan: PortPlan,
) -> anyhow::Result<Vec<(String, u16)>> {
    let table = routes::table();
    skipped
        .iter()
        .filter(|name| {
            table
                .routed_services()
                .any(|routed| routed == name.as_str())
        })
        .map(|name| Ok((name.clone(), plan.port_for(name, all)?)))
        .collect()
}

/// How to start the fleet. [`FleetOptions::new`] fills in defaults for tests.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// The infrastructure the services connect to.
    pub endpoints: Endpoints,
    /// The services to start (default: all discovered).
    pub services: Vec<ServiceInfo>,
    /// Where their binaries are (default: [`bin_dir`]).
    pub bin_dir: PathBuf,
    /// Port assignment (default: free ports).
    pub ports: PortPlan,
    /// Each service's database is `<database_prefix><service>` (default: none,
    /// so `auth` uses database `auth`). Lets several fleets share one server.
    pub database_prefix: String,
    /// `JWT_KEY` (default: random per fleet).
    pub jwt_key: String,
    /// `STRIPE_KEY` (default: [`FAKE_STRIPE_KEY`]).
    pub stripe_key: String,
    /// `STRIPE_WEBHOOK_SECRET` (default: random per fleet; point the Stripe
    /// fake's webhooks at the fleet with the same secret).
    pub stripe_webhook_secret: String,
    /// `STRIPE_PUBLISHABLE_KEY` for the web client (default: none, the
    /// test-mode path; with the fake, [`fake_publishable_key`]).
    pub stripe_publishable_key: Option<String>,
    /// `API_BASE_URL`, the ingress's URL, if an ingress runs.
    pub api_base_url: Option<String>,
    /// Extra variables for every service.
    pub env: Vec<(String, String)>,
    /// Where the services' logs go (default: [`Output::from_env`]).
    pub output: Output,
    /// How long a service may take to answer `/readyz` (default 30 s).
    pub ready_timeout: Duration,
    /// SIGTERM → SIGKILL grace period on stop (default 10 s).
    pub stop_grace: Duration,
    /// How many replicas of every service run (default 1).
    pub replicas: usize,
}

impl FleetOptions {
    /// All discovered services on free ports against `endpoints`, with a random
    /// JWT key and the fake Stripe key.
    pub fn new(endpoints: Endpoints) -> anyhow::Result<Self> {
        Ok(Self {
            endpoints,
            services: discover_services(&paths::workspace_root())?,
            bin_dir: bin_dir()?,
            ports: PortPlan::Free,
            database_prefix: String::new(),
            jwt_key: random_key(),
            stripe_key: FAKE_STRIPE_KEY.to_owned(),
            stripe_webhook_secret: format!("whsec_{}", random_key()),
            stripe_publishable_key: None,
            api_base_url: None,
            env: Vec::new(),
            output: Output::from_env(),
            ready_timeout: Duration::from_secs(30),
            stop_grace: Duration::from_secs(10),
            replicas: 1,
        })
    }

    /// Keeps only the services named in `names`.
    pub fn only(mut self, names: &[&str]) -> Self {
        self.services
            .retain(|service| names.contains(&service.name.as_str()));
        self
    }
}

/// The name of replica `replica` (from 1) of `service`: `orders`, `orders-2`, …
pub fn replica_name(service: &str, replica: usize) -> String {
    if replica <= 1 {
        service.to_owned()
    } else {
        format!("{service}-{replica}")
    }
}

#[derive(Debug)]
struct Member {
    /// The service this is a replica of.
    service: String,
    spec: ProcessSpec,
    port: u16,
    process: Option<Process>,
}

/// The running services. Stop with [`Fleet::stop`]; dropping it kills them.
#[derive(Debug)]
pub struct Fleet {
    ready_timeout: Duration,
    stop_grace: Duration,
    output: Output,
    members: BTreeMap<String, Member>,
}

impl Fleet {
    /// Starts every service in `options` and waits until all are ready.
    pub async fn start(options: FleetOptions) -> anyhow::Result<Self> {
        let fleet = Self::spawn(options)?;
        if let Err(error) = fleet.wait_ready().await {
            // Stops the others cleanly instead of leaving it to Drop's SIGKILL.
            let _ = fleet.stop().await;
            return Err(error);
        }
        Ok(fleet)
    }

    /// Starts every service in `options` without waiting for them: their
    /// ports are known, so an ingress can be put in front of them before
    /// [`Fleet::wait_ready`] (the web client is ready only once the API
    /// answers through the ingress).
    pub fn spawn(options: FleetOptions) -> anyhow::Result<Self> {
        let names: Vec<String> = options.services.iter().map(|s| s.name.clone()).collect();
        let missing: Vec<String> = options
            .services
            .iter()
            .filter(|service| !options.bin_dir.join(&service.binary).is_file())
            .map(|service| service.binary.clone())
            .collect();
        if !missing.is_empty() {
            bail!(
                "service binaries not found in {}: {} (build them with `cargo build --workspace --bins`)",
                options.bin_dir.display(),
                missing.join(", ")
            );
        }

        anyhow::ensure!(
            options.replicas >= 1,
            "a fleet needs at least one replica of each service"
        );
        let mut members = BTreeMap::new();
        for service in &options.services {
            let first = options.ports.port_for(&service.name, &names)?;
            for replica in 1..=options.replicas {
                let name = replica_name(&service.name, replica);
                let port = match options.ports {
                    PortPlan::Free if replica > 1 => probe::free_port()?,
                    PortPlan::Free => first,
                    PortPlan::FromBase(_) => {
                        let port = u16::try_from(replica - 1)
                            .ok()
                            .and_then(|r| r.checked_mul(REPLICA_PORT_STRIDE))
                            .and_then(|offset| first.checked_add(offset))
                            .with_context(|| format!("no port left for {name}"))?;
                        ensure_port_free(port, &name)?;
                        port
                    }
                };
                let spec = service_spec(&options, service, &name, port);
                members.insert(
                    name,
                    Member {
                        service: service.name.clone(),
                        spec,
                        port,
                        process: None,
                    },
                );
            }
        }

        let mut fleet = Self {
            ready_timeout: options.ready_timeout,
            stop_grace: options.stop_grace,
            output: options.output.clone(),
            members,
        };
        for member in fleet.members.values_mut() {
            member.process = Some(Process::spawn(&member.spec, &fleet.output)?);
        }
        Ok(fleet)
    }

    /// Waits until every service answers `GET /readyz` with 200; fails with
    /// the log tails of those that don't (or exit) within the ready timeout.
    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        let timeout = self.ready_timeout;
        let checks = self.members.values().filter_map(|member| {
            let process = member.process.as_ref()?;
            Some(wait_service_ready(process, member.port, timeout))
        });
        let errors: Vec<anyhow::Error> = futures::future::join_all(checks)
            .await
            .into_iter()
            .filter_map(Result::err)
            .collect();
        if !errors.is_empty() {
            let message = errors
                .iter()
                .map(|error| format!("{error:#}"))
                .collect::<Vec<_>>()
                .join("\n");
            bail!("{message}");
        }
        Ok(())
    }

    /// The names of the fleet's replicas (with one replica each, its services).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.members.keys().map(String::as_str)
    }

    /// The replicas of `service`, first to last (`orders`, `orders-2`, …).
    pub fn replicas(&self, service: &str) -> Vec<String> {
        let mut names: Vec<(usize, String)> = self
            .members
            .iter()
            .filter(|(_, member)| member.service == service)
            .map(|(name, _)| {
                let number = name
                    .strip_prefix(service)
                    .and_then(|rest| rest.strip_prefix('-'))
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(1);
                (number, name.clone())
            })
            .collect();
        names.sort();
        names.into_iter().map(|(_, name)| name).collect()
    }

    /// Service → the addresses of all its replicas, for [`crate::ingress::serve`].
    pub fn replica_upstreams(&self) -> Upstreams {
        let mut upstreams: HashMap<String, Vec<SocketAddr>> = HashMap::new();
        for member in self.members.values() {
            upstreams
                .entry(member.service.clone())
                .or_default()
                .push(local(member.port));
        }
        Upstreams(upstreams)
    }

    /// A service's port (kept across restarts).
    pub fn port(&self, name: &str) -> Option<u16> {
        self.members.get(name).map(|member| member.port)
    }

    /// A service's address, `127.0.0.1:port`.
    pub fn addr(&self, name: &str) -> Option<SocketAddr> {
        self.port(name).map(local)
    }

    /// Replica name → address (with one replica each: service → address).
    pub fn upstreams(&self) -> HashMap<String, SocketAddr> {
        self.members
            .iter()
            .map(|(name, member)| (name.clone(), local(member.port)))
            .collect()
    }

    /// The pid of a running service.
    pub fn pid(&self, name: &str) -> Option<u32> {
        let process = self.members.get(name)?.process.as_ref()?;
        process.is_running().then(|| process.pid())
    }

    /// Whether a service is running.
    pub fn is_running(&self, name: &str) -> bool {
        self.pid(name).is_some()
    }

    /// The last `n` lines of a service's output (of its latest run).
    pub fn log_tail(&self, name: &str, n: usize) -> Vec<String> {
        self.members
            .get(name)
            .and_then(|member| member.process.as_ref())
            .map(|process| process.log_tail(n))
            .unwrap_or_default()
    }

    /// Stops one service gracefully (SIGTERM, then SIGKILL after the grace).
    pub async fn stop_service(&mut self, name: &str) -> anyhow::Result<()> {
        let grace = self.stop_grace;
        if let Some(mut process) = self.member_mut(name)?.process.take() {
            process.stop(grace).await?;
        }
        Ok(())
    }

    /// `kill -9`s one service (fault tests); start it again with
    /// [`Fleet::start_service`].
    pub async fn kill_service(&mut self, name: &str) -> anyhow::Result<()> {
        if let Some(mut process) = self.member_mut(name)?.process.take() {
            process.kill().await?;
        }
        Ok(())
    }

    /// Starts a stopped, killed or crashed service again, on its port, and waits
    /// until it is ready.
    pub async fn start_service(&mut self, name: &str) -> anyhow::Result<()> {
        let timeout = self.ready_timeout;
        let output = self.output.clone();
        let member = self.member_mut(name)?;
        if member.process.as_ref().is_some_and(Process::is_running) {
            bail!("{name} is already running");
        }
        let process = Process::spawn(&member.spec, &output)?;
        let port = member.port;
        let process = member.process.insert(process);
        wait_service_ready(process, port, timeout).await
    }

    /// Stops a service gracefully and starts it again.
    pub async fn restart_service(&mut self, name: &str) -> anyhow::Result<()> {
        self.stop_service(name).await?;
        self.start_service(name).await
    }

    /// Stops every service: SIGTERM to all at once, then waits for each to
    /// drain (SIGKILL after the grace period).
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let running: Vec<&mut Process> = self
            .members
            .values_mut()
            .filter_map(|member| member.process.as_mut())
            .collect();
        for process in &running {
            process.terminate();
        }
        let grace = self.stop_grace;
        let results = futures::future::join_all(running.into_iter().map(|p| p.finish(grace))).await;
        for member in self.members.values_mut() {
            member.process = None;
        }
        results
            .into_iter()
            .find_map(Result::err)
            .map_or(Ok(()), Err)
    }

    fn member_mut(&mut self, name: &str) -> anyhow::Result<&mut Member> {
        self.members
            .get_mut(name)
            .ok_or_else(|| anyhow!("no service named {name:?} in this fleet"))
    }
}

async fn wait_service_ready(process: &Process, port: u16, timeout: Duration) -> anyhow::Result<()> {
    probe::wait_ready(process, "GET /readyz", timeout, || {
        probe::http_ok(local(port), "/readyz")
    })
    .await
}

fn service_spec(
    options: &FleetOptions,
    service: &ServiceInfo,
    name: &str,
    port: u16,
) -> ProcessSpec {
    let endpoints = &options.endpoints;
    let mongo_uri = format!(
        "{}/{}{}",
        endpoints.mongo_uri.trim_end_matches('/'),
        options.database_prefix,
        service.name
    );
    let mut spec = ProcessSpec::new(name, options.bin_dir.join(&service.binary))
        .env("PORT", port.to_string())
        .env("MONGO_URI", mongo_uri)
        .env("NATS_URL", &endpoints.nats_url)
        .env("REDIS_URL", &endpoints.redis_url)
        .env("JWT_KEY", &options.jwt_key)
        .env("STRIPE_KEY", &options.stripe_key)
        .env("STRIPE_WEBHOOK_SECRET", &options.stripe_webhook_secret)
        .env("APP_ENV", "development");
    if let Some(stripe) = &endpoints.stripe_api_base {
        spec = spec.env("STRIPE_API_BASE", stripe);
    }
    if let Some(api_base_url) = &options.api_base_url {
        spec = spec.env("API_BASE_URL", api_base_url);
    }
    if let Some(key) = &options.stripe_publishable_key {
        spec = spec.env("STRIPE_PUBLISHABLE_KEY", key);
    }
    for (key, value) in &options.env {
        spec = spec.env(key, value);
    }
    spec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_package_name() {
        let manifest =
            "[package]\nname = \"auth\"\nversion = \"0.1.0\"\n\n[dependencies]\nname = \"x\"\n";
        assert_eq!(package_name(manifest).as_deref(), Some("auth"));
    }

    #[test]
    fn discovers_the_services_of_this_workspace() {
        let services = discover_services(&paths::workspace_root()).unwrap();
        assert!(
            services
                .iter()
                .any(|s| s.name == "auth" && s.binary == "auth")
        );
    }

    #[test]
    fn fixed_ports_do_not_move_when_services_are_added() {
        let few = vec!["auth".to_owned()];
        let all: Vec<String> = ["auth", "client", "orders", "zeta"]
            .map(String::from)
            .into();
        let plan = PortPlan::FromBase(3001);
        assert_eq!(plan.port_for("auth", &few).unwrap(), 3001);
        assert_eq!(plan.port_for("auth", &all).unwrap(), 3001);
        assert_eq!(plan.port_for("client", &all).unwrap(), 3002);
        // After the six services of routes.json.
        assert_eq!(plan.port_for("zeta", &all).unwrap(), 3007);
    }

    #[test]
    fn a_skipped_service_with_routes_keeps_its_port() {
        let all: Vec<String> = ["auth", "client", "expiration", "orders"]
            .map(String::from)
            .into();
        let skipped = vec!["client".to_owned(), "expiration".to_owned()];
        // expiration has no routes: nothing to stand in for.
        assert_eq!(
            stand_ins(&skipped, &all, PortPlan::FromBase(3001)).unwrap(),
            [("client".to_owned(), 3002)]
        );
    }

    #[test]
    fn replicas_are_named_after_their_service() {
        assert_eq!(replica_name("orders", 1), "orders");
        assert_eq!(replica_name("orders", 2), "orders-2");
    }
}
