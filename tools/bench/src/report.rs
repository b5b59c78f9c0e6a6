//! The report: one JSON document, and the Markdown shown to people.

use std::fmt::Write as _;

use serde::Serialize;

use crate::scenarios::{Concurrency, Expiration, Propagation, Race};
use crate::stats::{self, Throughput};
use crate::system::{CpuUse, Memory, Startup};

#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub connections: usize,
    pub duration_seconds: f64,
    pub floor_seconds: f64,
    pub warmup_seconds: f64,
    /// The sign-in run's length (the auth memory burst).
    pub signin_seconds: f64,
    pub expiration_window_seconds: u64,
    pub propagation_tickets: usize,
    pub propagation_pipelines: usize,
    /// The services' `RUST_LOG`.
    pub service_log: String,
    /// The cargo profile of the binaries measured.
    pub profile: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub memory_gib: f64,
    pub mongo_server: String,
    pub commit: String,
}

impl Machine {
    pub fn detect(mongo_flavor: &str) -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_kib: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        let commit = std::process::Command::new("git")
            .args(["rev-parse", "--short", "HEAD"])
            .current_dir(devstack::paths::workspace_root())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        Self {
            cpus: std::thread::available_parallelism().map_or(0, usize::from),
            cpu_model: cpuinfo
                .lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
                .unwrap_or_default(),
            memory_gib: (memory_kib / 1024.0 / 1024.0 * 10.0).round() / 10.0,
            mongo_server: mongo_flavor.to_owned(),
            commit,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct MongoFloor {
    pub operation: String,
    pub result: Throughput,
    /// service req/s ÷ floor ops/s.
    pub ratio: f64,
    pub cpu: CpuUse,
}

#[derive(Debug, Clone, Serialize)]
pub struct RouteResult {
    pub route: String,
    pub service: Throughput,
    pub bare_axum: Throughput,
    /// service req/s ÷ bare-axum req/s.
    pub ratio_bare_axum: f64,
    pub raw_mongo: Option<MongoFloor>,
    /// Where the service's run spent CPU time, and the bare floor's.
    pub service_cpu: CpuUse,
    pub bare_axum_cpu: CpuUse,
}

fn ratio(service: &Throughput, floor: &Throughput) -> f64 {
    if floor.per_second > 0.0 {
        stats::round(service.per_second / floor.per_second)
    } else {
        0.0
    }
}

impl RouteResult {
    pub fn new(
        route: &str,
        (service, service_cpu): (Throughput, CpuUse),
        (bare, bare_axum_cpu): (Throughput, CpuUse),
        mongo: Option<(String, (Throughput, CpuUse))>,
    ) -> Self {
        Self {
            route: route.to_owned(),
            ratio_bare_axum: ratio(&service, &bare),
            raw_mongo: mongo.map(|(operation, (result, cpu))| MongoFloor {
                operation,
                ratio: ratio(&service, &result),
                result,
                cpu,
            }),
            service,
            bare_axum: bare,
            service_cpu,
            bare_axum_cpu,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub generated_at: String,
    pub machine: Machine,
    pub settings: Settings,
    pub fleet_start_seconds: f64,
    pub total_seconds: f64,
    pub routes: Vec<RouteResult>,
    pub propagation: Propagation,
    pub expiration: Expiration,
    pub concurrency: Concurrency,
    pub race: Race,
    pub memory: Vec<Memory>,
    pub startup: Vec<Startup>,
    /// Tickets available to the POST /api/orders run.
    pub orders_pool: usize,
    /// auth's peak resident set (VmHWM) right after the sign-in burst, MiB.
    pub auth_signin_peak_mib: Option<f64>,
    /// argon2id hashes/s of the machine's cores alone (auth's parameters):
    /// the most sign-ins or sign-ups it can serve.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub argon2_per_second: Option<f64>,
    /// Each target of the report, met or not (see [`crate::targets`]).
    pub targets: Vec<crate::targets::Target>,
    /// GET /api/tickets/:id with the limits off and on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limits: Option<crate::limits::LimitsCost>,
    /// GET /api/tickets at 1,000 and 100,000 tickets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listing: Option<crate::listing::ListingCost>,
}

fn rate(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

fn ms(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0}")
    } else if value >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

fn pct(value: f64) -> String {
    format!("{:.1}%", value * 100.0)
}

pub fn markdown(r: &Report) -> String {
    let mut out = String::new();
    let sections = [
        header,
        targets,
        http,
        cpu,
        propagation,
        expiration,
        contention,
        extras,
        memory,
    ];
    for section in sections {
        section(&mut out, r);
    }
    out
}

/// The title, the machine and the run.
fn header(out: &mut String, r: &Report) {
    let s = &r.settings;
    let m = &r.machine;
    let _ = writeln!(
        out,
        "### Ticketing benchmark — {} (commit {})\n",
        r.generated_at,
        if m.commit.is_empty() { "?" } else { &m.commit }
    );
    let _ = writeln!(
        out,
        "{} CPUs ({}), {} GiB; MongoDB-wire server: {}; {} binaries, services at `RUST_LOG={}`. \
         The load generator, the ingress and the floors run in the bench process on the same CPUs as the fleet. \
         Fleet start {:.1} s; whole run {:.0} s.\n",
        m.cpus,
        m.cpu_model,
        m.memory_gib,
        m.mongo_server,
        s.profile,
        s.service_log,
        r.fleet_start_seconds,
        r.total_seconds
    );
}

/// The targets, met or not.
fn targets(out: &mut String, r: &Report) {
    if !r.targets.is_empty() {
        let met = r.targets.iter().filter(|t| t.met).count();
        let _ = writeln!(out, "**Targets** — {met} of {} met.\n", r.targets.len());
        let _ = writeln!(out, "| target | goal | measured | |");
        let _ = writeln!(out, "|---|---|---|---|");
        for t in &r.targets {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} |",
                t.what,
                t.goal,
                t.measured,
                if t.met { "met" } else { "**not met**" }
            );
        }
        let _ = writeln!(out);
    }
}

/// The routes through the ingress against their floors.
fn http(out: &mut String, r: &Report) {
    let s = &r.settings;
    let _ = writeln!(
        out,
        "**HTTP through the ingress** — {} connections, {:.0} s per run after {:.0} s of warm-up; latency in ms; \
         floors {:.0} s each; ratios are service req/s ÷ floor req/s.\n",
        s.connections, s.duration_seconds, s.warmup_seconds, s.floor_seconds
    );
    let _ = writeln!(
        out,
        "| route | req/s | p50 | p99 | errors | bare axum req/s (p50) | ÷ axum | raw mongodb ops/s (p50) | ÷ mongo |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for route in &r.routes {
        let svc = &route.service;
        let bare = &route.bare_axum;
        let (mongo, mongo_ratio) = match &route.raw_mongo {
            Some(f) => (
                format!(
                    "{} ({})",
                    rate(f.result.per_second),
                    ms(f.result.latency.p50_ms)
                ),
                pct(f.ratio),
            ),
            None => ("— (no database)".to_owned(), "—".to_owned()),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} ({}) | {} | {} | {} |",
            route.route,
            rate(svc.per_second),
            ms(svc.latency.p50_ms),
            ms(svc.latency.p99_ms),
            svc.errors,
            rate(bare.per_second),
            ms(bare.latency.p50_ms),
            pct(route.ratio_bare_axum),
            mongo,
            mongo_ratio
        );
    }
    let _ = writeln!(out);
    for route in &r.routes {
        if let Some(error) = &route.service.first_error {
            let _ = writeln!(
                out,
                "- {} first error: `{}`",
                route.route,
                error.replace('`', "'")
            );
        }
    }
    if let Some(orders) = r.routes.iter().find(|x| x.route == "POST /api/orders")
        && orders.service.requests >= r.orders_pool.saturating_sub(1)
    {
        let _ = writeln!(
            out,
            "- POST /api/orders used up its {} fresh tickets after {:.1} s; its rate is over that time.",
            r.orders_pool, orders.service.seconds
        );
    }
    for route in &r.routes {
        if let Some(f) = &route.raw_mongo {
            let _ = writeln!(out, "- {} floor: `{}`", route.route, f.operation);
        }
    }
}

/// The processes the CPU table shows one by one; the rest are summed.
const CPU_COLUMNS: [&str; 6] = ["bench", "auth", "tickets", "orders", "mongo", "nats"];

/// Where each run's CPU time went, per request, and what that makes of the
/// writing routes' floors: a route that added nothing to its database
/// floor but HTTP would still pay the bare floor's CPU and the raw floor's.
fn cpu(out: &mut String, r: &Report) {
    let _ = writeln!(
        out,
        "\n**Where the CPU goes** — CPU time (user + system, from `/proc`) per request in µs, over each run's measured part; \
         *bench* is the load generator, the ingress and the bare-axum floor (one process); *machine* is every CPU's busy time \
         (all processes), *cores* how many of the {} were busy on average.\n",
        r.machine.cpus
    );
    let _ = writeln!(
        out,
        "| route | run | req/s | {} | other | machine | cores |",
        CPU_COLUMNS.join(" | ")
    );
    let _ = writeln!(
        out,
        "|---|---|---:|{}---:|---:|---:|",
        "---:|".repeat(CPU_COLUMNS.len())
    );
    for route in &r.routes {
        let mut runs = vec![
            ("service", &route.service, &route.service_cpu),
            ("bare axum", &route.bare_axum, &route.bare_axum_cpu),
        ];
        if let Some(f) = &route.raw_mongo {
            runs.push(("raw mongodb", &f.result, &f.cpu));
        }
        for (run, throughput, cpu) in runs {
            let shown: Vec<String> = CPU_COLUMNS.iter().map(|p| us(cpu.of(p))).collect();
            let other: f64 = cpu
                .processes
                .iter()
                .filter(|p| !CPU_COLUMNS.contains(&p.process.as_str()))
                .map(|p| p.us_per_request)
                .sum();
            let _ = writeln!(
                out,
                "| {} | {run} | {} | {} | {} | {} | {:.2} |",
                route.route,
                rate(throughput.per_second),
                shown.join(" | "),
                us(other),
                us(cpu.machine_us_per_request),
                cpu.busy_cores
            );
        }
    }
    let _ = writeln!(out);
    for route in r.routes.iter().filter(|x| x.route.starts_with("POST")) {
        let Some(f) = &route.raw_mongo else { continue };
        let floor_us = route.bare_axum_cpu.machine_us_per_request + f.cpu.machine_us_per_request;
        if floor_us <= 0.0 || f.result.per_second <= 0.0 {
            continue;
        }
        let ceiling = r.machine.cpus as f64 * 1e6 / floor_us;
        let _ = writeln!(
            out,
            "- {}: the bare floor's {} µs + the raw floor's {} µs of machine CPU per request: the cores would allow {} req/s, \
             {} of the raw floor{}; the service's run used {} µs per request ({:.1}× the two floors').",
            route.route,
            us(route.bare_axum_cpu.machine_us_per_request),
            us(f.cpu.machine_us_per_request),
            rate(ceiling),
            pct(ceiling / f.result.per_second),
            if f.cpu.busy_cores < 0.9 * r.machine.cpus as f64 {
                format!(
                    " (the raw floor kept only {:.2} of the {} cores busy: it is bound by the server, not by CPU)",
                    f.cpu.busy_cores, r.machine.cpus
                )
            } else {
                String::new()
            },
            us(route.service_cpu.machine_us_per_request),
            route.service_cpu.machine_us_per_request / floor_us,
        );
    }
}

fn us(value: f64) -> String {
    format!("{value:.0}")
}

/// Event propagation.
fn propagation(out: &mut String, r: &Report) {
    let p = &r.propagation;
    let _ = writeln!(
        out,
        "\n**Event propagation** — {} tickets, {} concurrent sell-then-order loops, reads repeated with pauses doubling from 2 ms up to {:.0} ms (each figure is late by at most that).\n",
        p.tickets, p.pipelines, p.poll_ms
    );
    let _ = writeln!(out, "| from → to | n | p50 ms | p99 ms | max ms |");
    let _ = writeln!(out, "|---|---:|---:|---:|---:|");
    let _ = writeln!(
        out,
        "| POST /api/tickets answered → orderable (POST /api/orders 201) | {} | {} | {} | {} |",
        p.created.n,
        ms(p.created.p50_ms),
        ms(p.created.p99_ms),
        ms(p.created.max_ms)
    );
    let _ = writeln!(
        out,
        "| PUT /api/tickets/:id answered → new price in the orders replica | {} | {} | {} | {} |",
        p.updated.n,
        ms(p.updated.p50_ms),
        ms(p.updated.p99_ms),
        ms(p.updated.max_ms)
    );
}

/// Expiration accuracy.
fn expiration(out: &mut String, r: &Report) {
    let e = &r.expiration;
    let _ = writeln!(
        out,
        "\n**Expiration accuracy** — {} orders with a {} s window, up to {} pending at once; delay after `expiresAt`, ms.\n",
        e.orders, e.window_seconds, e.peak_pending
    );
    let _ = writeln!(out, "| event | n | p50 | p99 | max |");
    let _ = writeln!(out, "|---|---:|---:|---:|---:|");
    for (name, l) in [
        ("`expiration.complete` published", &e.expiration_complete),
        (
            "order cancelled (`order.cancelled` published)",
            &e.cancelled,
        ),
    ] {
        let _ = writeln!(
            out,
            "| {name} | {} | {} | {} | {} |",
            l.n,
            ms(l.p50_ms),
            ms(l.p99_ms),
            ms(l.max_ms)
        );
    }
    let _ = writeln!(
        out,
        "\nNever seen cancelled on the bus: {}; not `cancelled` in GET /api/orders afterwards: {}.",
        e.missed, e.not_cancelled_in_api
    );
}

/// The concurrency scenario and the purchase race.
fn contention(out: &mut String, r: &Report) {
    let c = &r.concurrency;
    let _ = writeln!(
        out,
        "\n**Concurrency** — {} clients at once, each creating a ticket at 5 then updating it to 10 and to 15: \
         {:.2} s, {} failed requests; tickets at 15 in tickets: {}/{}, in the orders replica (at version 2): {}/{} \
         (settled {:.2} s after the last update); **{} inconsistent**.",
        c.clients,
        c.seconds,
        c.failed_requests,
        c.tickets_at_15,
        c.clients,
        c.replica_at_15,
        c.clients,
        c.settle_seconds,
        c.inconsistent
    );
    let race = &r.race;
    let _ = writeln!(
        out,
        "\n**Purchase race** — {} buyers for each of {} tickets ({} orders at once, {:.2} s): {} orders created, {} refused \
         (`Ticket is already reserved`), {} other answers; the buyers' order lists hold {} orders for these tickets, \
         {} tickets with exactly one.",
        race.buyers,
        race.tickets,
        race.requests,
        race.seconds,
        race.orders_created,
        race.refused,
        race.other,
        race.orders_listed,
        race.tickets_with_one_order
    );
}

/// The cost of the limits and the listing as the collection grows.
fn extras(out: &mut String, r: &Report) {
    let s = &r.settings;
    if let Some(limits) = &r.limits {
        let _ = writeln!(out, "{}", crate::limits::render(limits));
    }
    if let Some(listing) = &r.listing {
        let _ = writeln!(out, "{}", crate::listing::render(listing, s.connections));
    }
}

/// Memory and start-up.
fn memory(out: &mut String, r: &Report) {
    let s = &r.settings;
    let _ = writeln!(
        out,
        "\n**Memory and start-up** — resident set (MiB) idle after start-up and at its peak (VmHWM) by the end; start-up = process start → first 200 on `/readyz`, infrastructure already up.{}\n",
        r.auth_signin_peak_mib.map_or(String::new(), |mib| format!(
            " auth's peak right after the sign-in burst ({} connections for {:.0} s): {mib:.1} MiB.",
            s.connections, s.signin_seconds
        ))
    );
    let _ = writeln!(
        out,
        "| process | idle MiB | peak MiB | start-up ms (median of runs) |"
    );
    let _ = writeln!(out, "|---|---:|---:|---|");
    for mem in &r.memory {
        let startup = r.startup.iter().find(|s| s.service == mem.process).map_or(
            "(infrastructure)".to_owned(),
            |s| {
                let runs: Vec<String> = s.runs_ms.iter().map(|v| format!("{v:.0}")).collect();
                format!("{:.0} ({})", s.median_ms, runs.join(", "))
            },
        );
        let _ = writeln!(
            out,
            "| {} | {:.1} | {:.1} | {} |",
            mem.process, mem.idle_mib, mem.peak_mib, startup
        );
    }
}
