//! The targets the report is checked against (issue "fast by default"): one
//! line each, with the goal, the figure measured in this run, and met or
//! not met.

use serde::Serialize;

use crate::report::Report;

/// Sign-in throughput before the hashing memory was bounded (same bench,
/// same machine, SecantusDB Python): the bound must not cost throughput.
pub const SIGNIN_BEFORE_PER_SECOND: f64 = 89.6;
/// Peak resident memory of auth after the sign-in burst, MiB.
pub const AUTH_PEAK_MIB: f64 = 48.0;

#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub what: String,
    pub goal: String,
    pub measured: String,
    pub met: bool,
}

fn floor_ratio(report: &Report, route: &str) -> Option<f64> {
    report
        .routes
        .iter()
        .find(|r| r.route == route)?
        .raw_mongo
        .as_ref()
        .map(|floor| floor.ratio)
}

fn pct(value: f64) -> String {
    format!("{:.1}%", value * 100.0)
}

/// Every target, in the order of the issue.
pub fn check(report: &Report) -> Vec<Target> {
    let mut targets = Vec::new();
    for route in [
        "POST /api/tickets",
        "POST /api/orders",
        "POST /api/users/signup",
    ] {
        let ratio = floor_ratio(report, route);
        targets.push(Target {
            what: format!("{route} ÷ its raw-driver floor"),
            goal: "≥ 80%".into(),
            measured: ratio.map_or("not measured".into(), pct),
            met: ratio.is_some_and(|r| r >= 0.8),
        });
    }
    let current = report
        .routes
        .iter()
        .find(|r| r.route == "GET /api/users/currentuser")
        .map(|r| r.ratio_bare_axum);
    targets.push(Target {
        what: "GET /api/users/currentuser ÷ bare axum".into(),
        goal: "≥ 70%".into(),
        measured: current.map_or("not measured".into(), pct),
        met: current.is_some_and(|r| r >= 0.7),
    });
    let p = &report.propagation;
    for (what, latency) in [
        ("ticket created → orderable, p99", &p.created),
        ("PUT → new price in the orders replica, p99", &p.updated),
    ] {
        targets.push(Target {
            what: what.into(),
            goal: "≤ 50 ms".into(),
            measured: format!("{:.1} ms (n = {})", latency.p99_ms, latency.n),
            met: latency.n > 0 && latency.p99_ms <= 50.0,
        });
    }
    let e = &report.expiration;
    targets.push(Target {
        what: format!(
            "{} orders expiring: cancelled after `expiresAt`, p99",
            e.orders
        ),
        goal: "≤ 2 s, none missed".into(),
        measured: format!(
            "{:.0} ms, {} missed, {} not cancelled",
            e.cancelled.p99_ms, e.missed, e.not_cancelled_in_api
        ),
        met: e.cancelled.n > 0
            && e.cancelled.p99_ms <= 2000.0
            && e.missed == 0
            && e.not_cancelled_in_api == 0,
    });
    let c = &report.concurrency;
    targets.push(Target {
        what: format!("{}-client create/update/update", c.clients),
        goal: "0 inconsistent".into(),
        measured: format!("{} inconsistent", c.inconsistent),
        met: c.inconsistent == 0 && c.failed_requests == 0,
    });
    let race = &report.race;
    targets.push(Target {
        what: "purchase race".into(),
        goal: format!("{} tickets with exactly one order", race.tickets),
        measured: format!(
            "{} created, {} with exactly one, {} other answers",
            race.orders_created, race.tickets_with_one_order, race.other
        ),
        met: race.orders_created == race.tickets
            && race.tickets_with_one_order == race.tickets
            && race.other == 0,
    });
    let signin = report
        .routes
        .iter()
        .find(|r| r.route == "POST /api/users/signin")
        .map(|r| r.service.per_second);
    targets.push(Target {
        what: "auth peak RSS after 32 concurrent sign-ins".into(),
        goal: format!("≤ {AUTH_PEAK_MIB:.0} MiB"),
        measured: report
            .auth_signin_peak_mib
            .map_or("not measured".into(), |mib| format!("{mib:.1} MiB")),
        met: report
            .auth_signin_peak_mib
            .is_some_and(|mib| mib <= AUTH_PEAK_MIB),
    });
    targets.push(Target {
        what: "sign-in throughput, not lower than before".into(),
        goal: format!("≥ {SIGNIN_BEFORE_PER_SECOND} req/s"),
        measured: signin.map_or("not measured".into(), |r| match report.argon2_per_second {
            Some(hashes) if hashes > 0.0 => format!(
                "{r:.1} req/s ({} of the {hashes:.1} argon2id hashes/s the cores do alone)",
                pct(r / hashes)
            ),
            _ => format!("{r:.1} req/s"),
        }),
        met: signin.is_some_and(|r| r >= SIGNIN_BEFORE_PER_SECOND),
    });
    if let Some(listing) = &report.listing {
        for (query, ratio) in listing.ratios() {
            targets.push(Target {
                what: format!("GET /api/tickets {query}: p50 at 100,000 ÷ at 1,000 tickets"),
                goal: "≤ 2×".into(),
                measured: format!("{ratio:.2}×"),
                met: ratio <= 2.0,
            });
        }
    }
    targets
}
