//! Under a steady stream of sales, orders, payments and cancellations:
//! `kill -9` tickets, orders, payments and expiration in turn and start each
//! again, restart NATS, restart the MongoDB-wire server — then every replica
//! converges within a bounded time, and no ticket, event, order or payment is
//! lost or doubled (see `fault_tests` for what is checked, and how).
//!
//! Each outage lasts [`OUTAGE`]: services are SIGKILLed and started again on
//! their port; NATS and the MongoDB-wire server are stopped gracefully
//! (SIGTERM) and started again on the same port with the same data.

use std::time::{Duration, Instant};

use devstack::Stack;
use fault_tests::{Client, Load, verify};

/// The orders' expiration window: long against a payment (started within
/// 4 s), short enough to wait for.
const WINDOW_SECONDS: u64 = 15;
/// Concurrent clients in the steady stream.
const CLIENTS: usize = 4;
/// How long each injected outage lasts, and how long the stream runs after
/// each recovery before the next fault.
const OUTAGE: Duration = Duration::from_secs(1);
const BETWEEN: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_or_doubled_when_services_and_infrastructure_fail() {
    let begun = Instant::now();
    let window = WINDOW_SECONDS.to_string();
    let mut stack = Stack::start(
        &["auth", "tickets", "orders", "payments", "expiration"],
        &[
            ("EXPIRATION_WINDOW_SECONDS", window.as_str()),
            // A few buyers stand for many: orders left to expire pile up.
            ("MAX_ACTIVE_ORDERS_PER_USER", "100000"),
        ],
    )
    .await
    .unwrap_or_else(|error| panic!("the fleet did not start: {error:#}"));
    let client = Client::new(stack.base_url());
    let run = std::process::id();
    let seller = client.signup(&format!("seller-{run}@faults.test")).await;
    let mut buyers = Vec::new();
    for i in 0..CLIENTS {
        buyers.push(client.signup(&format!("buyer-{i}-{run}@faults.test")).await);
    }

    let load = Load::start(&client, &seller, &buyers, CLIENTS);
    tokio::time::sleep(BETWEEN).await;
    for service in ["tickets", "orders", "payments", "expiration"] {
        load.phase(&format!("kill -9 {service}"));
        stack
            .fleet_mut()
            .kill_service(service)
            .await
            .expect("kill -9");
        tokio::time::sleep(OUTAGE).await;
        stack
            .fleet_mut()
            .start_service(service)
            .await
            .unwrap_or_else(|error| panic!("{service} did not come back: {error:#}"));
        tokio::time::sleep(BETWEEN).await;
    }
    for server in ["nats", "mongo"] {
        load.phase(&format!("restart {server}"));
        let infra = stack.infra_mut();
        infra.stop_server(server).await.expect("a graceful stop");
        tokio::time::sleep(OUTAGE).await;
        infra
            .start_server(server)
            .await
            .unwrap_or_else(|error| panic!("{server} did not come back: {error:#}"));
        tokio::time::sleep(BETWEEN).await;
    }
    load.phase("after the faults");
    tokio::time::sleep(BETWEEN).await;
    let ledger = load.stop().await;
    let load_ended = begun.elapsed();

    // Bounded convergence: the last orders expire WINDOW after they were
    // made; everything else must have caught up by then too.
    let within = Duration::from_secs(WINDOW_SECONDS + 45);
    let (verdict, converged) = verify(&stack, &client, &seller, &buyers, &ledger, within).await;
    eprintln!(
        "faults: {} stories ({} tickets, {} lost creates found again), {} orders: {} complete, {} cancelled; \
         {} charges; converged {:.1} s after the load stopped; {:.0} s in all",
        verdict.stories,
        verdict.tickets,
        verdict.lost_creates_found,
        verdict.orders,
        verdict.complete,
        verdict.cancelled,
        verdict.charges,
        converged.as_secs_f64(),
        (begun.elapsed()).as_secs_f64(),
    );
    eprintln!(
        "faults: the load stopped after {:.0} s:\n{}",
        load_ended.as_secs_f64(),
        fault_tests::phase_summary(&ledger)
    );
    let services: Vec<String> = ["tickets", "orders", "payments", "expiration"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    fault_tests::stop_and_assert(stack, &verdict, within, &services, 40).await;
}
