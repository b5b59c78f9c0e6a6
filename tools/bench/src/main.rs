//! `make bench`: starts the whole fleet locally (release binaries, ephemeral
//! infrastructure, the local ingress) and measures it — see the README's
//! "Benchmarks" section for what each figure means.
//!
//! Run it through `cargo run --release -p bench`: the fleet's binaries are
//! found next to this one, so the profile it is built with is the profile
//! that is measured. The report is printed (Markdown) and saved as
//! `bench-results/report.md` and `bench-results/report.json` (or under
//! `BENCH_OUT`).
//!
//! Knobs (environment): `BENCH_DURATION` (seconds per HTTP run of a
//! service, default 5), `BENCH_FLOOR_DURATION` (of a floor, 3),
//! `BENCH_WARMUP` (1), `BENCH_SIGNIN_DURATION` (the sign-in burst after
//! which auth's peak memory is read, 10), `BENCH_CONNECTIONS` (32), `BENCH_WINDOW`
//! (`EXPIRATION_WINDOW_SECONDS`, 30: longer than the propagation run, so
//! that no order expires during it), `BENCH_TICKETS` (propagation tickets,
//! 1000), `BENCH_LOG` (the services' `RUST_LOG`, default `warn`),
//! `BENCH_OUT` (the report's directory).

mod api;
mod floor;
mod limits;
mod listing;
mod load;
mod report;
mod scenarios;
mod stats;
mod system;
mod targets;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use devstack::Stack;
use futures::StreamExt as _;
use http::HeaderValue;
use mongodb::bson::oid::ObjectId;
use serde_json::json;

use crate::api::{Api, User};
use crate::floor::{BareFleet, Canned, MongoFloors};
use crate::load::{Req, Shape};
use crate::report::{Report, RouteResult, Settings};
use crate::stats::Throughput;
use crate::system::{CpuProbe, CpuUse, Memory, Quiet};

/// The services' start-up is timed this many times each.
const STARTUP_RUNS: usize = 3;
/// Tickets behind the read routes.
const SEED_TICKETS: usize = 200;
/// Concurrent sell-then-order loops of the propagation run.
const PIPELINES: usize = 8;
/// The classic concurrency scenario's clients.
const CLIENTS: usize = 400;
/// The purchase race: tickets, and buyers for each.
const RACE_TICKETS: usize = 20;
const RACE_BUYERS: usize = 50;
/// The title of the tickets POST /api/tickets lists.
const TICKET_TITLE: &str = "bench";
/// The buyers POST /api/orders is run by, each holding a session the bench
/// signed (no sign-up: orders trusts the session, not auth's database).
const ORDER_BUYERS: usize = 8192;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> anyhow::Result<T> {
    match std::env::var(name) {
        Ok(value) if !value.trim().is_empty() => value
            .trim()
            .parse()
            .map_err(|_| anyhow::anyhow!("{name}={value:?} is not valid")),
        _ => Ok(default),
    }
}

fn progress(begun: Instant, what: &str) {
    eprintln!("bench [{:>6.1}s] {what}", begun.elapsed().as_secs_f64());
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let begun = Instant::now();
    let settings = Settings {
        connections: env_or("BENCH_CONNECTIONS", 32)?,
        duration_seconds: env_or("BENCH_DURATION", 5.0)?,
        floor_seconds: env_or("BENCH_FLOOR_DURATION", 3.0)?,
        warmup_seconds: env_or("BENCH_WARMUP", 1.0)?,
        signin_seconds: env_or("BENCH_SIGNIN_DURATION", 10.0)?,
        expiration_window_seconds: env_or("BENCH_WINDOW", 30)?,
        propagation_tickets: env_or("BENCH_TICKETS", 1000)?,
        propagation_pipelines: PIPELINES,
        service_log: env_or("BENCH_LOG", "warn".to_owned())?,
        profile: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
        .to_owned(),
    };
    if cfg!(debug_assertions) {
        eprintln!(
            "bench: WARNING: a debug build measures debug services; run `cargo run --release -p bench`"
        );
    }
    let out_dir = std::env::var_os("BENCH_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| devstack::paths::workspace_root().join("bench-results"));

    progress(
        begun,
        "starting the fleet (ephemeral infrastructure, every service, the ingress)",
    );
    let window = settings.expiration_window_seconds.to_string();
    let started = Instant::now();
    let mut stack = Stack::start(
        &[],
        &[
            ("EXPIRATION_WINDOW_SECONDS", window.as_str()),
            ("RUST_LOG", settings.service_log.as_str()),
            // A few buyers stand for thousands (up to 950 pending orders).
            ("MAX_ACTIVE_ORDERS_PER_USER", "100000"),
            // POST /api/orders is run by buyers whose sessions the bench
            // signs itself, with the test kit's key.
            ("JWT_KEY", testkit::JWT_KEY),
            // The purchase race sends 1,000 orders at once: it measures who
            // wins, not the in-flight bound's shedding.
            ("MAX_IN_FLIGHT_REQUESTS", "4096"),
        ],
    )
    .await
    .context("the fleet did not start (did `cargo build --release --workspace --bins` run?)")?;
    let fleet_start_seconds = started.elapsed().as_secs_f64();

    let outcome = measure(&mut stack, &settings, begun).await;
    progress(begun, "stopping the fleet");
    let stopped = stack.stop().await;
    let mut report = outcome?;
    stopped?;
    report.fleet_start_seconds = stats::round(fleet_start_seconds);
    report.total_seconds = stats::round(begun.elapsed().as_secs_f64());

    let markdown = report::markdown(&report);
    std::fs::create_dir_all(&out_dir)
        .with_context(|| format!("cannot create {}", out_dir.display()))?;
    std::fs::write(
        out_dir.join("report.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    std::fs::write(out_dir.join("report.md"), &markdown)?;
    println!("{markdown}");
    eprintln!(
        "bench: report saved to {} and report.json ({:.0} s in all)",
        out_dir.join("report.md").display(),
        report.total_seconds
    );
    Ok(())
}

/// The whole run, in named steps: start-up, the people and tickets the
/// scenarios use, the routes (auth's, the reads, then the writes), the event
/// scenarios, the races, the listing as the collection grows, memory.
async fn measure(stack: &mut Stack, settings: &Settings, begun: Instant) -> anyhow::Result<Report> {
    let shape = Shape {
        connections: settings.connections,
        warmup: Duration::from_secs_f64(settings.warmup_seconds),
        duration: Duration::from_secs_f64(settings.duration_seconds),
    };
    let ingress: std::net::SocketAddr = stack.base_url().trim_start_matches("http://").parse()?;
    let api = Api::new(stack.base_url()).with_timeout(Duration::from_secs(60));
    let infra = stack.infra().endpoints().clone();
    let mongo_flavor = stack.infra().mongo_flavor();

    progress(begun, "timing each service's start-up");
    let startup = system::startup_times(stack, STARTUP_RUNS).await?;
    let quiet = Quiet::connect(&infra.nats_url, &infra.mongo_uri).await?;
    quiet.settle(Duration::from_secs(60)).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = idle_memory(stack);
    let cpu = CpuProbe::new(idle.iter().map(|(name, pid, _)| (name.clone(), *pid)));

    progress(begun, "signing up users, listing the seed tickets");
    let people = People::sign_up(&api).await?;
    let seed = list_seed(&api, &people.seller).await?;
    quiet.settle(Duration::from_secs(60)).await?;

    let canned = capture(&api, &people.seller, &people.buyers[0], &seed).await?;
    let bare = BareFleet::start(canned).await?;
    let seed_ids: Vec<ObjectId> = seed
        .iter()
        .map(ObjectId::parse_str)
        .collect::<Result<_, _>>()?;
    let floors =
        MongoFloors::connect(&infra.mongo_uri, seed_ids, people.seller.email.clone()).await?;
    let runs = Runs {
        ingress,
        bare: bare.addr,
        shape,
        floor: Shape {
            warmup: Duration::from_millis(500),
            duration: Duration::from_secs_f64(settings.floor_seconds),
            ..shape
        },
        quiet: &quiet,
        cpu: &cpu,
    };
    let seller_cookie = HeaderValue::from_str(&people.seller.cookie)?;

    let (mut routes, auth) =
        auth_routes(&runs, stack, &api, &seller_cookie, &floors, settings, begun).await?;
    let (reads, limits) = ticket_reads(&runs, stack, &seed, &floors, begun).await?;
    routes.extend(reads);
    let (propagation, expiration) =
        event_scenarios(&api, &people, &infra.nats_url, &quiet, settings, begun).await?;
    let (concurrency, race) = contention_scenarios(&api, &people, &floors, &quiet, begun).await?;
    let (created, pool) = post_tickets(&runs, &seller_cookie, &floors, begun).await?;
    routes.push(created);
    routes.push(post_orders(&runs, &pool, &seed, &floors, begun).await?);
    floors.clean_up().await;
    drop(bare);

    // Last: it leaves 100,000 tickets behind.
    progress(begun, "GET /api/tickets as the collection grows");
    runs.quiet.settle(Duration::from_secs(180)).await?;
    let listing = listing::measure(&api, ingress, &infra.mongo_uri, shape, |what| {
        progress(begun, what)
    })
    .await?;

    let mut report = Report {
        generated_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        machine: report::Machine::detect(mongo_flavor),
        settings: settings.clone(),
        fleet_start_seconds: 0.0,
        total_seconds: 0.0,
        routes,
        propagation,
        expiration,
        concurrency,
        race,
        memory: memory_now(&idle),
        startup,
        orders_pool: pool.len(),
        auth_signin_peak_mib: auth.peak_mib,
        argon2_per_second: Some(auth.argon2_per_second),
        targets: Vec::new(),
        limits: Some(limits),
        listing: Some(listing),
    };
    report.targets = targets::check(&report);
    Ok(report)
}

/// Each service's and server's pid and resident set now (idle).
fn idle_memory(stack: &Stack) -> Vec<(String, u32, u64)> {
    let services = stack
        .fleet()
        .names()
        .filter_map(|name| Some((name.to_owned(), stack.fleet().pid(name)?)));
    let servers = ["nats", "mongo", "redis", "stripe"]
        .iter()
        .filter_map(|name| Some(((*name).to_owned(), stack.infra().pid(name)?)));
    services
        .chain(servers)
        .filter_map(|(name, pid)| Some((name, pid, system::memory_kib(pid)?.0)))
        .collect()
}

/// Each process's idle resident set beside its peak over the run.
fn memory_now(idle: &[(String, u32, u64)]) -> Vec<Memory> {
    idle.iter()
        .map(|(name, pid, idle)| Memory {
            process: name.clone(),
            idle_mib: system::mib(*idle),
            peak_mib: system::mib(system::memory_kib(*pid).map_or(0, |(_, peak)| peak)),
        })
        .collect()
}

/// The users the scenarios act as.
struct People {
    seller: User,
    /// One per propagation pipeline.
    buyers: Vec<User>,
    /// The purchase race's.
    race_buyers: Vec<User>,
}

impl People {
    async fn sign_up(api: &Api) -> anyhow::Result<Self> {
        let seller = api
            .signup(&format!("bench-seller-{}@bench.test", std::process::id()))
            .await?;
        Ok(Self {
            seller,
            buyers: api::signup_many(api, "buyer", PIPELINES).await?,
            race_buyers: api::signup_many(api, "racer", RACE_BUYERS).await?,
        })
    }
}

/// The seed tickets the reading routes read; their ids.
async fn list_seed(api: &Api, seller: &User) -> anyhow::Result<Vec<String>> {
    futures::stream::iter(0..SEED_TICKETS)
        .map(|i| {
            let (api, seller) = (api.clone(), seller.clone());
            async move {
                let title = format!("seed {i}");
                let price = 10.0 + i as f64;
                anyhow::Ok(api.create_ticket(&seller, &title, price).await?.id)
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

/// auth's routes: who is signed in, sign-in (one account per connection:
/// auth counts an account's attempts being checked as possible guesses, and
/// a person does not sign in 32 times at once; auth's peak memory is read
/// right after it), sign-up.
async fn auth_routes(
    runs: &Runs<'_>,
    stack: &Stack,
    api: &Api,
    seller_cookie: &HeaderValue,
    floors: &MongoFloors,
    settings: &Settings,
    begun: Instant,
) -> anyhow::Result<(Vec<RouteResult>, AuthFigures)> {
    progress(begun, "GET /api/users/currentuser");
    let make: load::MakeRequest = {
        let cookie = seller_cookie.clone();
        Arc::new(move |_| Some(Req::get("/api/users/currentuser").cookie(&cookie)))
    };
    let status_200 = load::status_is(200);
    let current_user = route(
        "GET /api/users/currentuser",
        runs,
        make,
        None,
        status_200,
        None,
    );
    let mut routes = vec![current_user.await?];

    progress(
        begun,
        "POST /api/users/signin (auth's memory is read after it)",
    );
    let signers = api::signup_many(api, "signin", settings.connections).await?;
    let signins: Arc<Vec<Bytes>> = Arc::new(
        signers
            .iter()
            .map(|user| {
                Bytes::from(json!({"email": user.email, "password": api::PASSWORD}).to_string())
            })
            .collect(),
    );
    let make: load::MakeRequest = Arc::new(move |connection| {
        let body = signins[connection % signins.len()].clone();
        Some(Req::post("/api/users/signin", body))
    });
    let signin_runs = Runs {
        shape: Shape {
            duration: Duration::from_secs_f64(settings.signin_seconds),
            ..runs.shape
        },
        ..*runs
    };
    let floor = Some(("find_one({email})", floors.find_user_by_email()));
    let signin = route(
        "POST /api/users/signin",
        &signin_runs,
        make,
        None,
        load::status_is(200),
        floor,
    );
    routes.push(signin.await?);
    let peak_mib = stack
        .fleet()
        .pid("auth")
        .and_then(system::memory_kib)
        .map(|(_, peak)| system::mib(peak));
    let argon2 = floor::argon2_per_second(settings.floor_seconds).await?;
    eprintln!("bench           argon2id alone: {argon2:.1} hashes/s");

    progress(begun, "POST /api/users/signup");
    let make: load::MakeRequest = {
        let run = std::process::id();
        let next = Arc::new(AtomicUsize::new(0));
        Arc::new(move |_| {
            let n = next.fetch_add(1, Ordering::Relaxed);
            let email = format!("signup-{run}-{n}@bench.test");
            let body = json!({"email": email, "password": api::PASSWORD});
            Some(Req::post(
                "/api/users/signup",
                Bytes::from(body.to_string()),
            ))
        })
    };
    let floor = Some((
        "find_one({email}) + insert_one(user), unique email",
        floors.signup_user().await?,
    ));
    let signup = route(
        "POST /api/users/signup",
        runs,
        make,
        None,
        load::status_is(201),
        floor,
    );
    routes.push(signup.await?);
    Ok((
        routes,
        AuthFigures {
            peak_mib,
            argon2_per_second: argon2,
        },
    ))
}

/// What the sign-in burst showed of auth beside its routes.
struct AuthFigures {
    /// auth's peak resident set right after it, MiB.
    peak_mib: Option<f64>,
    /// argon2id hashes/s with the cores to themselves.
    argon2_per_second: f64,
}

/// The reading routes of tickets, and the cost of the edge's limits on one.
async fn ticket_reads(
    runs: &Runs<'_>,
    stack: &Stack,
    seed: &[String],
    floors: &MongoFloors,
    begun: Instant,
) -> anyhow::Result<(Vec<RouteResult>, limits::LimitsCost)> {
    progress(begun, "GET /api/tickets");
    let make: load::MakeRequest = Arc::new(|_| Some(Req::get("/api/tickets")));
    // The service reads limit + 1 to know whether there is a next page.
    let floor = Some((
        "find({orderId:null, withdrawn:null}).sort({_id:-1}).limit(101)",
        floors.list_tickets(),
    ));
    let list = route(
        "GET /api/tickets",
        runs,
        make,
        None,
        load::status_is(200),
        floor,
    );
    let mut routes = vec![list.await?];

    progress(begun, "GET /api/tickets/:id");
    let next = Arc::new(AtomicUsize::new(0));
    let paths: Arc<Vec<String>> =
        Arc::new(seed.iter().map(|id| format!("/api/tickets/{id}")).collect());
    let make: load::MakeRequest = Arc::new(move |_| {
        let i = next.fetch_add(1, Ordering::Relaxed);
        Some(Req::get(paths[i % paths.len()].clone()))
    });
    let floor = Some(("find_one({_id})", floors.find_ticket()));
    let show = route(
        "GET /api/tickets/:id",
        runs,
        Arc::clone(&make),
        None,
        load::status_is(200),
        floor,
    );
    routes.push(show.await?);

    progress(begun, "GET /api/tickets/:id with the limits off and on");
    let limits = limits::measure(
        "GET /api/tickets/:id",
        runs.ingress,
        stack.fleet().upstreams(),
        runs.shape,
        runs.quiet,
        make,
        load::status_is(200),
    )
    .await?;
    eprintln!(
        "bench           limits: off {:.0} req/s, on {:.0} req/s ({:.1} %)",
        limits.off_per_second, limits.on_per_second, limits.cost_percent
    );
    Ok((routes, limits))
}

/// Tickets sold and ordered (created → orderable), those orders left to
/// expire, then a new price for each ticket (PUT → price in orders).
async fn event_scenarios(
    api: &Api,
    people: &People,
    nats_url: &str,
    quiet: &Quiet,
    settings: &Settings,
    begun: Instant,
) -> anyhow::Result<(scenarios::Propagation, scenarios::Expiration)> {
    let n = settings.propagation_tickets;
    progress(
        begun,
        &format!("event propagation: {n} tickets sold and ordered"),
    );
    let watch = scenarios::BusWatch::start(nats_url).await?;
    let (sold, created, took) =
        scenarios::propagate_created(api, &people.seller, &people.buyers, n).await?;
    progress(
        begun,
        "expiration: waiting for every one of those orders to expire",
    );
    let window = settings.expiration_window_seconds;
    let expiration = scenarios::expiration(api, &people.buyers, &sold, &watch, window).await?;
    quiet.settle(Duration::from_secs(120)).await?;
    progress(
        begun,
        "event propagation: a new price for each of those tickets",
    );
    let updated = scenarios::propagate_updated(api, &people.seller, &people.buyers, &sold).await?;
    let propagation = scenarios::Propagation {
        tickets: sold.len(),
        pipelines: PIPELINES,
        seconds: stats::round(took.as_secs_f64()),
        created,
        updated,
        poll_ms: scenarios::POLL.as_secs_f64() * 1000.0,
    };
    quiet.settle(Duration::from_secs(120)).await?;
    Ok((propagation, expiration))
}

/// 400 clients creating and updating at once, then the purchase race (its
/// orders cancelled again so that their expiry stays out of what follows).
async fn contention_scenarios(
    api: &Api,
    people: &People,
    floors: &MongoFloors,
    quiet: &Quiet,
    begun: Instant,
) -> anyhow::Result<(scenarios::Concurrency, scenarios::Race)> {
    progress(
        begun,
        "the concurrency scenario: 400 clients create, update to 10, update to 15",
    );
    let replica = floors.orders_replica();
    let concurrency = scenarios::concurrency(api, &people.seller, &replica, quiet, CLIENTS).await?;
    progress(begun, "the purchase race: 50 buyers for each of 20 tickets");
    let racers = &people.race_buyers;
    let (race, orders) = scenarios::race(api, &people.seller, racers, quiet, RACE_TICKETS).await?;
    let orders = orders.into_iter().map(|(b, id)| (racers[b].clone(), id));
    cancel_all(api, orders.collect()).await?;
    quiet.settle(Duration::from_secs(120)).await?;
    Ok((concurrency, race))
}

/// POST /api/tickets; also the ids it created, for POST /api/orders.
async fn post_tickets(
    runs: &Runs<'_>,
    seller_cookie: &HeaderValue,
    floors: &MongoFloors,
    begun: Instant,
) -> anyhow::Result<(RouteResult, Vec<String>)> {
    progress(begun, "POST /api/tickets");
    let created_ids = Arc::new(Mutex::new(Vec::<String>::new()));
    let make: load::MakeRequest = {
        let cookie = seller_cookie.clone();
        let body = Bytes::from(json!({"title": TICKET_TITLE, "price": 25}).to_string());
        Arc::new(move |_| Some(Req::post("/api/tickets", body.clone()).cookie(&cookie)))
    };
    let check: load::Check = {
        let created_ids = Arc::clone(&created_ids);
        Arc::new(move |status, body| {
            if status != 201 {
                return false;
            }
            if let Some(id) = serde_json::from_slice::<serde_json::Value>(body)
                .ok()
                .and_then(|v| v["id"].as_str().map(str::to_owned))
            {
                created_ids
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(id);
            }
            true
        })
    };
    let floor = Some((
        "insert_one(ticket + outbox)",
        floors.insert_ticket(TICKET_TITLE).await?,
    ));
    let result = route("POST /api/tickets", runs, make, None, check, floor).await?;
    let replicated = runs.quiet.settle(Duration::from_secs(180)).await?;
    progress(
        begun,
        &format!(
            "  (the orders replica caught up {:.1} s after the run)",
            replicated.as_secs_f64()
        ),
    );
    let pool = std::mem::take(&mut *created_ids.lock().unwrap_or_else(|p| p.into_inner()));
    Ok((result, pool))
}

/// POST /api/orders of the tickets `pool` holds, each once, each by a buyer
/// of its own while there are buyers ([`ORDER_BUYERS`]): a real buyer holds
/// at most a few pending orders, and each order reads its buyer's.
async fn post_orders(
    runs: &Runs<'_>,
    pool: &[String],
    seed: &[String],
    floors: &MongoFloors,
    begun: Instant,
) -> anyhow::Result<RouteResult> {
    progress(begun, "POST /api/orders");
    let pool: Arc<Vec<String>> = Arc::new(pool.to_vec());
    let cookies: Arc<Vec<HeaderValue>> = Arc::new(
        (0..ORDER_BUYERS)
            .map(|_| HeaderValue::from_str(&testkit::signin()))
            .collect::<Result<_, _>>()?,
    );
    let next = Arc::new(AtomicUsize::new(0));
    let make: load::MakeRequest = {
        let cookies = Arc::clone(&cookies);
        Arc::new(move |_| {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let id = pool.get(i)?;
            let body = Bytes::from(format!(r#"{{"ticketId":"{id}"}}"#));
            Some(Req::post("/api/orders", body).cookie(&cookies[i % cookies.len()]))
        })
    };
    // The bare handler reserves nothing: any id will do, again and again.
    let bare_make: load::MakeRequest = {
        let next = AtomicUsize::new(0);
        let body = Bytes::from(format!(r#"{{"ticketId":"{}"}}"#, seed[0]));
        Arc::new(move |_| {
            let i = next.fetch_add(1, Ordering::Relaxed);
            Some(Req::post("/api/orders", body.clone()).cookie(&cookies[i % cookies.len()]))
        })
    };
    let floor = Some((
        "find_one(replica) + find(buyer's slots) + insert_one(slot hold) + insert_one(ticket hold) + insert_one(order + outbox)",
        floors.create_order().await?,
    ));
    route(
        "POST /api/orders",
        runs,
        make,
        Some(bare_make),
        load::status_is(201),
        floor,
    )
    .await
}

/// Where and how long the HTTP runs go.
#[derive(Clone, Copy)]
struct Runs<'a> {
    ingress: std::net::SocketAddr,
    bare: std::net::SocketAddr,
    /// The services' runs.
    shape: Shape,
    /// The floors' runs (shorter: they are steady).
    floor: Shape,
    quiet: &'a Quiet,
    /// The processes each run's CPU time is read from.
    cpu: &'a CpuProbe,
}

/// One route: the service through the ingress, then the bare-axum floor
/// through an ingress of its own, then (if the route touches the database)
/// the raw-driver floor — each once the fleet has no event work left, so
/// that no run pays for the previous one's events.
async fn route(
    name: &str,
    runs: &Runs<'_>,
    make: load::MakeRequest,
    bare_make: Option<load::MakeRequest>,
    check: load::Check,
    mongo: Option<(&str, floor::Op)>,
) -> anyhow::Result<RouteResult> {
    let settle = Duration::from_secs(180);
    runs.quiet.settle(settle).await?;
    let service = load::run(runs.ingress, runs.shape, Arc::clone(&make), check);
    let service = charged(runs.cpu, runs.shape, service).await?;
    runs.quiet.settle(settle).await?;
    let bare = load::run(
        runs.bare,
        runs.floor,
        bare_make.unwrap_or(make),
        Arc::new(|status, _| status < 400),
    );
    let bare = charged(runs.cpu, runs.floor, bare).await?;
    let mongo = match mongo {
        Some((operation, op)) => {
            let floor = charged(runs.cpu, runs.floor, floor::run_ops(runs.floor, op)).await?;
            Some((operation.to_owned(), floor))
        }
        None => None,
    };
    let result = RouteResult::new(name, service, bare, mongo);
    eprintln!(
        "bench           {name}: {:.0} req/s p50 {:.2} ms p99 {:.2} ms ({} errors); bare axum {:.0} req/s; raw mongo {}",
        result.service.per_second,
        result.service.latency.p50_ms,
        result.service.latency.p99_ms,
        result.service.errors,
        result.bare_axum.per_second,
        result
            .raw_mongo
            .as_ref()
            .map_or("—".to_owned(), |m| format!(
                "{:.0} ops/s p50 {:.2} ms",
                m.result.per_second, m.result.latency.p50_ms
            )),
    );
    Ok(result)
}

/// A run and the CPU time its measured part cost (from the end of its
/// warm-up for its duration), shared among the requests it measured.
async fn charged(
    probe: &CpuProbe,
    shape: Shape,
    run: impl Future<Output = anyhow::Result<Throughput>>,
) -> anyhow::Result<(Throughput, CpuUse)> {
    let from = Instant::now() + shape.warmup;
    let (result, window) = tokio::join!(run, probe.window(from, from + shape.duration));
    let result = result?;
    let cpu = probe.between(&window, result.requests);
    Ok((result, cpu))
}

/// Real answers for the bare handlers to replay.
async fn capture(
    api: &Api,
    seller: &User,
    buyer: &User,
    seed: &[String],
) -> anyhow::Result<Canned> {
    let body = |reply: &api::Reply| Bytes::from(reply.body.to_string());
    let current_user = api
        .get("/api/users/currentuser", Some(seller))
        .await?
        .expect_status(200, "currentuser")?;
    let signin = api
        .post(
            "/api/users/signin",
            None,
            json!({"email": seller.email, "password": api::PASSWORD}),
        )
        .await?
        .expect_status(200, "signin")?;
    let created = api
        .post(
            "/api/tickets",
            Some(seller),
            json!({"title": "bench", "price": 25}),
        )
        .await?
        .expect_status(201, "create ticket")?;
    let tickets = api
        .get("/api/tickets", None)
        .await?
        .expect_status(200, "list tickets")?;
    let ticket = api
        .get(&format!("/api/tickets/{}", seed[0]), None)
        .await?
        .expect_status(200, "show ticket")?;
    let ticket_id = created.id()?;
    let order = loop {
        let reply = api
            .post("/api/orders", Some(buyer), json!({"ticketId": ticket_id}))
            .await?;
        if reply.status != 404 {
            break reply.expect_status(201, "create order")?;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    Ok(Canned {
        current_user: body(&current_user),
        signin: body(&signin),
        signin_cookie: signin.session_cookie().and_then(|c| {
            HeaderValue::from_str(&format!("{c}; path=/; samesite=lax; httponly")).ok()
        }),
        ticket_created: body(&created),
        tickets: body(&tickets),
        ticket: body(&ticket),
        order_created: body(&order),
    })
}

/// Cancels orders (so that their expiry does not run into later measurements).
async fn cancel_all(api: &Api, orders: Vec<(User, String)>) -> anyhow::Result<()> {
    let results = futures::stream::iter(orders)
        .map(|(buyer, id)| {
            let api = api.clone();
            async move {
                api.delete(&format!("/api/orders/{id}"), Some(&buyer))
                    .await?
                    .expect_status(204, "cancel order")
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    for result in results {
        result?;
    }
    Ok(())
}
