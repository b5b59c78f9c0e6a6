//! `dev` — the local launcher behind `make dev` and `make test`.
//!
//! - `dev up`: infrastructure with persistent data in `.dev/data` on fixed
//!   local ports, every service, and the ingress on `http://localhost:8080`;
//!   then streams everyone's logs until Ctrl-C / SIGTERM, and stops it all in
//!   order (ingress, services with time to drain, infrastructure).
//! - `dev infra -- <command> [args…]`: ephemeral infrastructure on free ports
//!   (with the Stripe fake), the command run with `TEST_*` variables pointing at
//!   it, then everything stopped; exits with the command's exit code.
//! - `dev fleet [--expiration-window S] -- <command> [args…]`: the same, plus
//!   every service on a free port behind an ingress on a free port; the
//!   command also gets `BASE_URL` (the ingress) and `<SERVICE>_URL` for each
//!   service's own port (`AUTH_URL`, …: its `/metrics` and `/openapi.json`,
//!   which the ingress does not route). Browser tests and `make fuzz` run
//!   this way.
//!
//! It must be run from the target dir it was built into (`cargo run -p devstack
//! --bin dev -- up`): the service binaries are found next to it. A second
//! Ctrl-C exits at once; the children's watchdogs then stop what is left.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitCode, ExitStatus};
use std::time::Duration;

use anyhow::{Context, bail};
use devstack::fleet::{self, FAKE_STRIPE_KEY};
use devstack::{
    Endpoints, Fleet, FleetOptions, Infra, InfraOptions, Output, PortPlan, paths, routes,
};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

const USAGE: &str = "\
usage: dev <command>

commands:
  up [--only a,b] [--skip a,b] [--replicas N] [--nats-cluster N]
                                 run infrastructure, services and the ingress (make dev);
                                 N replicas of every service behind the ingress (balanced),
                                 NATS as a JetStream cluster of N nodes (the stream on all);
                                 a skipped service's routes still go to its port, so you can
                                 run your own there (e.g. another client on / )
  infra -- <command> [args...]   run a command against ephemeral infrastructure (make test)
  fleet [--expiration-window S] [--only a,b] [--skip a,b] [--stripe-js] -- <command> [args...]
                                 run a command against the whole fleet on free ports behind
                                 an ingress, with ephemeral infrastructure (browser tests);
                                 the command gets BASE_URL (the ingress), <SERVICE>_URL (each
                                 service's own port, e.g. AUTH_URL), the TEST_* variables
                                 and EXPIRATION_WINDOW_SECONDS; --stripe-js: the order page
                                 pays with the Stripe fake's Stripe.js, not the test card
  where                          the checkout, its .dev/ and the MongoDB-wire server it runs
  help                           this text

environment (dev up):
  INGRESS_PORT (8080)  DEV_NATS_PORT (4232)  DEV_NATS_MONITOR_PORT (8232)
  DEV_MONGO_PORT (27027)  DEV_REDIS_PORT (6389)  DEV_STRIPE_PORT (12111)
  DEV_SERVICE_PORT_BASE (3001)  JWT_KEY (else .dev/jwt_key)
  STRIPE_KEY, STRIPE_API_BASE (unset: a fake key and the local Stripe fake,
  whose Stripe.js the order page uses; its webhooks go to the ingress)
  STRIPE_WEBHOOK_SECRET (else .dev/stripe_webhook_secret)
  EXPIRATION_WINDOW_SECONDS, RUST_LOG are passed to the services
  (and every other variable a service reads: `<service> --print-env`)
environment of the ingress (dev up, dev fleet):
  EDGE_RATE_LIMIT                  requests per client address, e.g. 50/s,burst=100
                                   (token bucket; 429 + Retry-After past it). OFF unless
                                   set, so load tests and benchmarks from loopback are
                                   not throttled
  EDGE_TRUSTED_PROXIES (none)      addresses/CIDRs whose X-Forwarded-For names the client
                                   (127.0.0.1: the web client's calls count as its visitors)
  INGRESS_HEADER_TIMEOUT_SECONDS (10)  time to send a request's headers, and the most a
                                   kept-alive connection may sit idle
  INGRESS_MAX_CONNECTIONS (8192)   open client connections; past it new ones get a 503
environment (dev infra, dev fleet):
  DEVSTACK_LOG=1 streams the infrastructure's (and services') logs";

#[tokio::main]
async fn main() -> ExitCode {
    init_tracing();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("up") => up(&args[1..]).await.map(|()| ExitCode::SUCCESS),
        Some("infra") => infra(&args[1..]).await,
        Some("fleet") => fleet_command(&args[1..]).await,
        Some("where") => where_command().map(|()| ExitCode::SUCCESS),
        Some("help" | "-h" | "--help") => {
            println!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        _ => {
            eprintln!("{USAGE}");
            Ok(ExitCode::from(2))
        }
    };
    result.unwrap_or_else(|error| {
        eprintln!("dev: error: {error:#}");
        ExitCode::FAILURE
    })
}

/// `dev where`: which checkout this run uses (the one it is run in, never
/// the one it was compiled in) and which MongoDB-wire server it would start.
fn where_command() -> anyhow::Result<()> {
    let candidates = devstack::mongo::Candidates::detect();
    let mongo = devstack::mongo::choose(&candidates);
    println!("root  {}", paths::workspace_root().display());
    println!("dev   {}", paths::dev_dir().display());
    match mongo {
        Ok(server) => {
            println!("mongo {} ({})", server.flavor(), server.program().display());
            if let Some(note) = devstack::mongo::note(&candidates, &server) {
                println!("      {note}");
            }
        }
        Err(err) => println!("mongo none: {err:#}"),
    }
    Ok(())
}

/// The launcher's own diagnostics (ingress warnings) on stderr; `DEV_LOG`
/// filters them (default `info`).
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DEV_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .init();
}

// ---------------------------------------------------------------------------
// dev up

struct UpArgs {
    only: Option<Vec<String>>,
    skip: Vec<String>,
    replicas: usize,
    nats_nodes: usize,
}

fn parse_up_args(args: &[String]) -> anyhow::Result<UpArgs> {
    let mut parsed = UpArgs {
        only: None,
        skip: Vec::new(),
        replicas: 1,
        nats_nodes: 1,
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let list = |value: Option<&String>| -> anyhow::Result<Vec<String>> {
            let value = value.with_context(|| format!("{arg} needs a comma-separated list"))?;
            Ok(value
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect())
        };
        match arg.as_str() {
            "--only" => parsed.only = Some(list(args.next())?),
            "--skip" => parsed.skip.extend(list(args.next())?),
            "--replicas" => parsed.replicas = count(arg, args.next(), 9)?,
            "--nats-cluster" => parsed.nats_nodes = count(arg, args.next(), 5)?,
            other => bail!("unknown option {other:?} for `dev up`\n\n{USAGE}"),
        }
    }
    Ok(parsed)
}

/// `--replicas N` / `--nats-cluster N`: a number from 1 to `max`.
fn count(option: &str, value: Option<&String>, max: usize) -> anyhow::Result<usize> {
    let value = value.with_context(|| format!("{option} needs a number"))?;
    match value.parse::<usize>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => bail!("{option} {value:?}: expected a number from 1 to {max}"),
    }
}

/// Everything `dev up` started, so that whatever got started is stopped, even
/// when startup fails or is interrupted halfway.
#[derive(Default)]
struct Stack {
    infra: Option<Infra>,
    fleet: Option<Fleet>,
    ingress: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Stack {
    async fn stop(&mut self, out: &Output, stop_ingress: &watch::Sender<bool>) {
        let _ = stop_ingress.send(true);
        for ingress in self.ingress.drain(..) {
            match ingress.await {
                Ok(Err(error)) => out.alert("ingress", &format!("{error:#}")),
                Err(error) => out.alert("ingress", &format!("{error}")),
                Ok(Ok(())) => {}
            }
        }
        if let Some(fleet) = self.fleet.take() {
            say(out, "stopping services…");
            if let Err(error) = fleet.stop().await {
                out.alert("dev", &format!("{error:#}"));
            }
        }
        if let Some(infra) = self.infra.take() {
            say(out, "stopping infrastructure…");
            if let Err(error) = infra.stop().await {
                out.alert("dev", &format!("{error:#}"));
            }
        }
    }
}

fn say(out: &Output, message: &str) {
    out.line("dev", message);
}

async fn up(args: &[String]) -> anyhow::Result<()> {
    let args = parse_up_args(args)?;
    let root = paths::workspace_root();
    let mut services = fleet::discover_services(&root)?;
    if let Some(only) = &args.only {
        check_known(only, &services)?;
        services.retain(|service| only.contains(&service.name));
    }
    check_known(&args.skip, &services)?;
    let all_names: Vec<String> = services.iter().map(|s| s.name.clone()).collect();
    services.retain(|service| !args.skip.contains(&service.name));

    let width = services
        .iter()
        .map(|service| fleet::replica_name(&service.name, args.replicas).len())
        .chain(["ingress".len(), "stripe".len()])
        .max()
        .unwrap_or(10);
    let out = Output::stream().with_width(width);

    let stripe_key = env_nonempty("STRIPE_KEY");
    let stripe_api_base = env_nonempty("STRIPE_API_BASE");
    let start_stripe_fake = stripe_key.is_none() && stripe_api_base.is_none();

    let ingress_port = env_port("INGRESS_PORT", 8080)?;
    let ingress_options = devstack::ingress::IngressOptions::from_env()?;
    match &ingress_options.rate_limit {
        Some(limit) => say(
            &out,
            &format!("edge rate limit: {limit} per client address (EDGE_RATE_LIMIT)"),
        ),
        None => say(
            &out,
            "edge rate limit: off (set EDGE_RATE_LIMIT, e.g. 50/s,burst=100)",
        ),
    }
    let service_port_base = env_port("DEV_SERVICE_PORT_BASE", 3001)?;
    let webhook_secret =
        fleet::load_or_create_webhook_secret(&paths::dev_dir().join("stripe_webhook_secret"))?;
    let infra_options = InfraOptions {
        data_dir: Some(paths::dev_data_dir()),
        nats_port: Some(env_port("DEV_NATS_PORT", 4232)?),
        nats_monitor_port: Some(env_port("DEV_NATS_MONITOR_PORT", 8232)?),
        mongo_port: Some(env_port("DEV_MONGO_PORT", 27027)?),
        redis_port: Some(env_port("DEV_REDIS_PORT", 6389)?),
        stripe: start_stripe_fake,
        stripe_port: Some(env_port("DEV_STRIPE_PORT", 12111)?),
        // The fake's events go to payments through the ingress, as Stripe's
        // would reach the public webhook route.
        stripe_webhook: start_stripe_fake.then(|| devstack::WebhookTarget {
            url: format!("http://127.0.0.1:{ingress_port}/api/payments/webhook"),
            secret: webhook_secret.clone(),
        }),
        output: out.clone(),
        ready_timeout: Duration::from_secs(60),
        stop_grace: Duration::from_secs(10),
        mongo: None,
        nats_nodes: args.nats_nodes,
    };
    let port_plan = PortPlan::FromBase(service_port_base);
    // A skipped service that has routes keeps them: the ingress sends them to
    // its port, where something else (another client, a debugger) may listen.
    let stand_ins = fleet::stand_ins(&args.skip, &all_names, port_plan)?;

    // Bound first, so a taken port fails before anything is started. IPv6
    // loopback too where there is one, since `localhost` may resolve to ::1.
    let listener = TcpListener::bind(("127.0.0.1", ingress_port))
        .await
        .with_context(|| {
            format!("the ingress port {ingress_port} is taken (set INGRESS_PORT to use another)")
        })?;
    let listener_v6 = TcpListener::bind(("::1", ingress_port)).await.ok();
    let api_base_url = format!("http://127.0.0.1:{ingress_port}");

    let mut shutdown = shutdown_signal()?;
    let (stop_ingress, stop_ingress_rx) = watch::channel(false);
    let mut stack = Stack::default();

    let startup = async {
        say(&out, "starting infrastructure (data in .dev/data)…");
        let infra = stack.infra.insert(Infra::start(infra_options).await?);

        let mut endpoints = infra.endpoints().clone();
        if stripe_api_base.is_some() {
            endpoints.stripe_api_base.clone_from(&stripe_api_base);
        }
        if start_stripe_fake {
            say(
                &out,
                "STRIPE_KEY is not set: services use a fake key against the local Stripe fake",
            );
        }
        let names: Vec<&str> = services.iter().map(|s| s.name.as_str()).collect();
        if names.is_empty() {
            say(&out, "no services to start");
        } else {
            say(&out, &format!("starting services: {}…", names.join(", ")));
        }
        let options = FleetOptions {
            services: services.clone(),
            ports: port_plan,
            replicas: args.replicas,
            // The stream on every node of a cluster, as in production.
            env: {
                let mut env = Vec::new();
                if args.nats_nodes > 1 {
                    env.push((
                        "NATS_STREAM_REPLICAS".to_owned(),
                        args.nats_nodes.to_string(),
                    ));
                }
                if let Some(stripe) = infra.stripe_fake()
                    && env_nonempty("STRIPE_JS_URL").is_none()
                {
                    env.push((
                        "STRIPE_JS_URL".to_owned(),
                        format!("{}/js.stripe.com/v3/", stripe.base_url()),
                    ));
                }
                env
            },
            jwt_key: fleet::load_or_create_jwt_key(&paths::dev_dir().join("jwt_key"))?,
            stripe_key: stripe_key
                .clone()
                .unwrap_or_else(|| FAKE_STRIPE_KEY.to_owned()),
            stripe_webhook_secret: webhook_secret.clone(),
            // With the local fake, the order page pays with its Stripe.js.
            stripe_publishable_key: env_nonempty("STRIPE_PUBLISHABLE_KEY").or_else(|| {
                start_stripe_fake
                    .then(|| fleet::fake_publishable_key(FAKE_STRIPE_KEY))
                    .flatten()
            }),
            api_base_url: Some(api_base_url.clone()),
            output: out.clone(),
            ready_timeout: Duration::from_secs(60),
            ..FleetOptions::new(endpoints)?
        };
        let fleet = stack.fleet.insert(Fleet::spawn(options)?);

        let upstreams = fleet.upstreams();
        let mut balanced = fleet.replica_upstreams();
        for (name, port) in &stand_ins {
            balanced.0.insert(
                name.clone(),
                vec![SocketAddr::from(([127, 0, 0, 1], *port))],
            );
        }
        for listener in std::iter::once(listener).chain(listener_v6) {
            let mut stop_rx = stop_ingress_rx.clone();
            stack
                .ingress
                .push(tokio::spawn(devstack::ingress::serve_with(
                    listener,
                    balanced.clone(),
                    ingress_options.clone(),
                    async move {
                        let _ = stop_rx.wait_for(|stop| *stop).await;
                    },
                )));
        }
        // The ingress serves while the services start: the web client is
        // ready only once the API answers through it.
        fleet.wait_ready().await?;
        anyhow::Ok(upstreams)
    };

    let outcome = tokio::select! {
        result = startup => Some(result),
        () = shutdown.recv() => None,
    };
    let upstreams = match outcome {
        Some(Ok(upstreams)) => upstreams,
        Some(Err(error)) => {
            out.alert("dev", "startup failed; stopping what was started");
            shutdown.guard(stack.stop(&out, &stop_ingress)).await;
            return Err(anyhow::anyhow!(
                "{error:#}\nhint: to leave a service out: `dev up --skip NAME` (make dev ARGS=\"--skip NAME\")"
            ));
        }
        None => {
            say(&out, "interrupted during startup; stopping");
            shutdown.guard(stack.stop(&out, &stop_ingress)).await;
            return Ok(());
        }
    };

    if let Some(infra) = &stack.infra {
        print_table(
            &out,
            infra,
            &upstreams,
            &stand_ins,
            ingress_port,
            stripe_api_base.as_deref(),
            start_stripe_fake,
        );
    }

    shutdown.recv().await;
    say(&out, "shutting down…");
    shutdown.guard(stack.stop(&out, &stop_ingress)).await;
    say(&out, "stopped");
    Ok(())
}

fn check_known(names: &[String], services: &[devstack::ServiceInfo]) -> anyhow::Result<()> {
    for name in names {
        if !services.iter().any(|service| &service.name == name) {
            bail!(
                "unknown service {name:?} (services: {})",
                service_list(services)
            );
        }
    }
    Ok(())
}

fn service_list(services: &[devstack::ServiceInfo]) -> String {
    services
        .iter()
        .map(|s| s.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn print_table(
    out: &Output,
    infra: &Infra,
    upstreams: &HashMap<String, SocketAddr>,
    stand_ins: &[(String, u16)],
    ingress_port: u16,
    stripe_api_base: Option<&str>,
    stripe_fake: bool,
) {
    let table = routes::table();
    let mut rows: Vec<(String, String, String)> = Vec::new();
    let routes_note = table
        .routes
        .iter()
        .map(|route| format!("{} → {}", route.prefix, route.service))
        .collect::<Vec<_>>()
        .join(", ");
    rows.push((
        "ingress".into(),
        format!("http://localhost:{ingress_port}"),
        routes_note,
    ));
    let mut names: Vec<&String> = upstreams.keys().collect();
    names.sort();
    for name in names {
        // `orders-2` is a replica of orders.
        let service = name
            .rsplit_once('-')
            .filter(|(_, number)| number.parse::<usize>().is_ok())
            .map_or(name.as_str(), |(service, _)| service);
        let note = if table.routed_services().any(|routed| routed == service) {
            "routed"
        } else {
            "no public routes"
        };
        rows.push((
            name.clone(),
            format!("http://{}", upstreams[name]),
            note.into(),
        ));
    }
    for (name, port) in stand_ins {
        rows.push((
            name.clone(),
            format!("http://127.0.0.1:{port}"),
            "skipped: its routes go here, run your own".into(),
        ));
    }
    let nodes = infra.nats_nodes();
    if nodes.is_empty() {
        rows.push((
            "nats".into(),
            infra.nats_url().into(),
            format!("JetStream; monitoring {}", infra.nats_monitor_url()),
        ));
    } else {
        let urls: Vec<&str> = infra.nats_url().split(',').collect();
        for ((server, name, monitor), url) in nodes.iter().zip(urls) {
            rows.push((
                name.clone(),
                url.into(),
                format!("JetStream cluster node {server}; monitoring {monitor}"),
            ));
        }
    }
    rows.push((
        "mongo".into(),
        infra.mongo_uri().into(),
        infra.mongo_flavor().into(),
    ));
    rows.push(("redis".into(), infra.redis_url().into(), String::new()));
    match (stripe_fake, infra.stripe_api_base(), stripe_api_base) {
        (true, Some(base), _) => rows.push(("stripe".into(), base.into(), "local fake".into())),
        (_, _, Some(base)) => rows.push(("stripe".into(), base.into(), "STRIPE_API_BASE".into())),
        _ => rows.push((
            "stripe".into(),
            "https://api.stripe.com".into(),
            "STRIPE_KEY".into(),
        )),
    }

    let name_width = rows.iter().map(|row| row.0.len()).max().unwrap_or(0);
    let url_width = rows.iter().map(|row| row.1.len()).max().unwrap_or(0);
    say(out, "Ticketing is up (data in .dev/data):");
    for (name, url, note) in rows {
        say(
            out,
            &format!("  {name:<name_width$}  {url:<url_width$}  {note}"),
        );
    }
    say(out, "Ctrl-C to stop.");
}

// ---------------------------------------------------------------------------
// dev infra -- command

async fn infra(args: &[String]) -> anyhow::Result<ExitCode> {
    let command = match args.split_first() {
        Some((dashdash, rest)) if dashdash == "--" => rest,
        _ => args,
    };
    let Some((program, program_args)) = command.split_first() else {
        bail!("`dev infra` needs a command: dev infra -- <command> [args...]");
    };

    let mut shutdown = shutdown_signal()?;
    let options = InfraOptions::ephemeral().with_stripe();
    let infra = tokio::select! {
        infra = Infra::start(options) => infra.context("failed to start the test infrastructure")?,
        () = shutdown.recv() => return Ok(ExitCode::from(130)),
    };
    let endpoints: &Endpoints = infra.endpoints();
    eprintln!(
        "dev infra: mongo {} ({}), nats {}, redis {}, stripe {}",
        endpoints.mongo_uri,
        infra.mongo_flavor(),
        endpoints.nats_url,
        endpoints.redis_url,
        endpoints.stripe_api_base.as_deref().unwrap_or("-"),
    );

    let status = run_command(program, program_args, &endpoints.test_env(), &mut shutdown).await;
    let stopped = shutdown.guard(infra.stop()).await;
    let status = status?;
    stopped.context("failed to stop the test infrastructure")?;
    Ok(exit_code(status))
}

async fn run_command(
    program: &str,
    args: &[String],
    env: &[(&str, String)],
    shutdown: &mut Shutdown,
) -> anyhow::Result<ExitStatus> {
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .envs(env.iter().map(|(key, value)| (*key, value)))
        .spawn()
        .with_context(|| format!("failed to run {program}"))?;
    let pid = child
        .id()
        .and_then(|pid| i32::try_from(pid).ok())
        .map(Pid::from_raw);
    loop {
        tokio::select! {
            status = child.wait() => return Ok(status?),
            () = shutdown.recv() => {
                // A terminal's Ctrl-C reached the command already (same process
                // group); a SIGTERM sent to us alone must be passed on.
                if let Some(pid) = pid {
                    let _ = kill(pid, Signal::SIGTERM);
                }
            }
        }
    }
}

fn exit_code(status: ExitStatus) -> ExitCode {
    match (status.code(), status.signal()) {
        (Some(code), _) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        (None, Some(signal)) => ExitCode::from(u8::try_from(128 + signal).unwrap_or(1)),
        (None, None) => ExitCode::FAILURE,
    }
}

// ---------------------------------------------------------------------------
// dev fleet -- command

struct FleetArgs {
    expiration_window: Option<u64>,
    stripe_js: bool,
    only: Option<Vec<String>>,
    skip: Vec<String>,
    command: Vec<String>,
}

fn parse_fleet_args(args: &[String]) -> anyhow::Result<FleetArgs> {
    let mut parsed = FleetArgs {
        expiration_window: None,
        stripe_js: false,
        only: None,
        skip: Vec::new(),
        command: Vec::new(),
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let value = |value: Option<&String>| -> anyhow::Result<String> {
            value
                .cloned()
                .with_context(|| format!("{arg} needs a value"))
        };
        let list = |value: String| -> Vec<String> {
            value
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()
        };
        match arg.as_str() {
            "--expiration-window" => {
                let seconds = value(args.next())?;
                parsed.expiration_window = Some(seconds.parse().with_context(|| {
                    format!("--expiration-window {seconds:?} is not a number of seconds")
                })?);
            }
            "--only" => parsed.only = Some(list(value(args.next())?)),
            "--stripe-js" => parsed.stripe_js = true,
            "--skip" => parsed.skip.extend(list(value(args.next())?)),
            "--" => {
                parsed.command = args.cloned().collect();
                break;
            }
            other => bail!("unknown option {other:?} for `dev fleet`\n\n{USAGE}"),
        }
    }
    if parsed.command.is_empty() {
        bail!("`dev fleet` needs a command: dev fleet [options] -- <command> [args...]");
    }
    Ok(parsed)
}

/// A [`devstack::Stack`] (ephemeral infrastructure, every service on a free port, the
/// ingress on a free port in front of them); then the command, with
/// `BASE_URL` (the ingress) and the `TEST_*` variables; then everything
/// stopped. Exits with the command's exit code. If the command fails, the
/// tail of every service's log goes to stderr.
async fn fleet_command(args: &[String]) -> anyhow::Result<ExitCode> {
    let args = parse_fleet_args(args)?;
    let mut services = fleet::discover_services(&paths::workspace_root())?;
    if let Some(only) = &args.only {
        check_known(only, &services)?;
        services.retain(|service| only.contains(&service.name));
    }
    check_known(&args.skip, &services)?;
    services.retain(|service| !args.skip.contains(&service.name));
    if services.is_empty() {
        bail!("`dev fleet`: no services left to start");
    }
    let names: Vec<&str> = services.iter().map(|s| s.name.as_str()).collect();
    let window = args.expiration_window.map(|seconds| seconds.to_string());
    let env: Vec<(&str, &str)> = window
        .iter()
        .map(|seconds| ("EXPIRATION_WINDOW_SECONDS", seconds.as_str()))
        .collect();

    let mut shutdown = shutdown_signal()?;
    let stack = tokio::select! {
        stack = devstack::Stack::start_with(devstack::StackOptions {
            stripe_js: args.stripe_js,
            ..devstack::StackOptions::new(&names, &env)
                .with_ingress(devstack::ingress::IngressOptions::from_env()?)
        })
            => stack.context("the fleet did not start")?,
        () = shutdown.recv() => return Ok(ExitCode::from(130)),
    };
    eprintln!(
        "dev fleet: {} behind {}",
        names.join(", "),
        stack.base_url()
    );

    // Each service's own address: what the ingress does not route (/metrics,
    // /openapi.json) is reached there.
    let service_urls: Vec<(String, String)> = stack
        .fleet()
        .upstreams()
        .into_iter()
        .map(|(name, address)| {
            let variable = format!("{}_URL", name.to_uppercase().replace('-', "_"));
            (variable, format!("http://{address}"))
        })
        .collect();
    let mut command_env = stack.infra().endpoints().test_env();
    command_env.push(("BASE_URL", stack.base_url().to_owned()));
    command_env.extend(
        service_urls
            .iter()
            .map(|(key, value)| (key.as_str(), value.clone())),
    );
    command_env.extend(env.iter().map(|(key, value)| (*key, (*value).to_owned())));
    let (program, program_args) = args
        .command
        .split_first()
        .context("`dev fleet` needs a command")?;
    let status = run_command(program, program_args, &command_env, &mut shutdown).await;
    if !status.as_ref().is_ok_and(ExitStatus::success) {
        for name in &names {
            eprintln!("---- last lines of {name} ----");
            for line in stack.fleet().log_tail(name, 40) {
                eprintln!("{name} | {line}");
            }
        }
    }
    let stopped = shutdown.guard(stack.stop()).await;
    let status = status?;
    stopped.context("failed to stop the fleet")?;
    Ok(exit_code(status))
}

// ---------------------------------------------------------------------------
// shared

/// SIGINT / SIGTERM, as a stream of notifications.
struct Shutdown {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    count: u32,
}

impl Shutdown {
    /// Resolves on the first SIGINT or SIGTERM. A second one exits at once:
    /// the children's watchdogs then take them down.
    async fn recv(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {},
            _ = self.terminate.recv() => {},
        }
        self.count += 1;
        if self.count >= 2 {
            eprintln!("dev: interrupted again: exiting now (the watchdogs stop what is left)");
            std::process::exit(130);
        }
    }

    /// Runs `work` (a clean shutdown) while still honouring a second signal.
    async fn guard<F: std::future::Future>(&mut self, work: F) -> F::Output {
        tokio::pin!(work);
        loop {
            tokio::select! {
                output = &mut work => return output,
                () = self.recv() => {}
            }
        }
    }
}

fn shutdown_signal() -> anyhow::Result<Shutdown> {
    Ok(Shutdown {
        interrupt: signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?,
        terminate: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
        count: 0,
    })
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|value| !value.is_empty())
}

fn env_port(name: &str, default: u16) -> anyhow::Result<u16> {
    match env_nonempty(name) {
        Some(value) => value
            .parse()
            .with_context(|| format!("{name}={value:?} is not a port number")),
        None => Ok(default),
    }
}
