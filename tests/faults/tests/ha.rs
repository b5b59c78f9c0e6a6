//! The production topology on one machine: two replicas of every service
//! behind the ingress (balanced) and NATS as a 3-node JetStream cluster with
//! the stream on all three nodes. Under a steady stream of sales, orders,
//! payments and expiries, `kill -9` the NATS node that leads the stream and
//! one replica of every service at once, keep the load going, then bring them
//! back:
//!
//! - the remaining replicas keep serving: the share of failed requests while
//!   they are down is printed (and bounded), and the careful client's retries
//!   succeed (every story ends, see `fault_tests`);
//! - nothing is lost or doubled and every replica converges (`verify`);
//! - the two expiration replicas never both fire a job: `expiration.complete`
//!   went out at most once per order (counted on both replicas' `/metrics`),
//!   but for the jobs the killed replica had in hand.
//!
//! And, on its own cluster: a stream created at 1 replica is updated to 3 by
//! the bus (`NATS_STREAM_REPLICAS`), its messages kept, not recreated.

use std::time::{Duration, Instant};

use common::bus::{Bus, BusConfig};
use devstack::{Infra, InfraOptions, Stack, StackOptions};
use fault_tests::{Client, Load, verify};
use serde_json::Value;

const WINDOW_SECONDS: u64 = 15;
const CLIENTS: usize = 4;
const REPLICAS: usize = 2;
const NATS_NODES: usize = 3;
/// How long the killed pieces stay down (load running), and the load before
/// and after.
const DOWN: Duration = Duration::from_secs(6);
const BETWEEN: Duration = Duration::from_secs(4);
/// The services killed (one replica each), and those the load goes through.
const SERVICES: [&str; 5] = ["auth", "tickets", "orders", "payments", "expiration"];
/// At most this share of requests may fail while the replicas are down: the
/// ingress sends requests without a body to the surviving replica at once;
/// what fails is a request with a body that met a dead replica first, and
/// requests in flight on a dying replica or waiting for the new stream leader.
const MAX_FAILED_SHARE: f64 = 0.25;
/// Jobs the killed expiration replica may have claimed and published but not
/// yet completed when it died: they fire again after their lease (deduplicated
/// by the stream); anything beyond means two replicas fired the same job.
const IN_HAND_AT_KILL: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_keeps_serving_when_the_stream_leader_and_a_replica_of_every_service_die() {
    let begun = Instant::now();
    let mut stack = Stack::start_with(StackOptions {
        only: SERVICES.iter().map(|s| (*s).to_owned()).collect(),
        env: vec![
            (
                "EXPIRATION_WINDOW_SECONDS".to_owned(),
                WINDOW_SECONDS.to_string(),
            ),
            // A few buyers stand for many: the hoarding limit is not under test.
            ("MAX_ACTIVE_ORDERS_PER_USER".to_owned(), "100000".to_owned()),
        ],
        replicas: REPLICAS,
        nats_nodes: NATS_NODES,
        ..StackOptions::default()
    })
    .await
    .unwrap_or_else(|error| panic!("the HA fleet did not start: {error:#}"));
    for service in SERVICES {
        assert_eq!(stack.fleet().replicas(service).len(), REPLICAS, "{service}");
    }
    let nodes = stack.infra().nats_nodes();
    assert_eq!(nodes.len(), NATS_NODES);
    let http = reqwest::Client::new();
    let info = stream_info(&http, &nodes).await;
    assert_eq!(
        info["config"]["num_replicas"].as_u64(),
        Some(NATS_NODES as u64),
        "the TICKETING stream is on every node: {info}"
    );

    let client = Client::new(stack.base_url());
    let run = std::process::id();
    let seller = client.signup(&format!("ha-seller-{run}@faults.test")).await;
    let mut buyers = Vec::new();
    for i in 0..CLIENTS {
        buyers.push(
            client
                .signup(&format!("ha-buyer-{i}-{run}@faults.test"))
                .await,
        );
    }
    let load = Load::start(&client, &seller, &buyers, CLIENTS);
    tokio::time::sleep(BETWEEN).await;

    // Who leads the stream now, and what the expiration replica about to die
    // has fired so far (its counter dies with it).
    let leader_server = stream_info(&http, &nodes).await["cluster"]["leader"]
        .as_str()
        .expect("the stream has a leader")
        .to_owned();
    let (_, leader, _) = nodes
        .iter()
        .find(|(server, _, _)| *server == leader_server)
        .unwrap_or_else(|| panic!("leader {leader_server} is not a node: {nodes:?}"))
        .clone();
    let victims: Vec<String> = SERVICES
        .iter()
        .map(|service| stack.fleet().replicas(service)[0].clone())
        .collect();
    let expiration_victim = stack.fleet().replicas("expiration")[0].clone();
    let fired_before_kill = fired(&http, &stack, &expiration_victim).await;

    load.phase(&format!(
        "kill -9 {leader} (stream leader) and {}",
        victims.join(", ")
    ));
    let (sent_before, failed_before) = client.counts();
    stack
        .infra_mut()
        .kill_server(&leader)
        .await
        .expect("kill -9 the leader");
    for victim in &victims {
        stack
            .fleet_mut()
            .kill_service(victim)
            .await
            .expect("kill -9 a replica");
    }
    tokio::time::sleep(DOWN).await;
    let (sent_down, failed_down) = client.counts();

    load.phase("bringing them back");
    stack
        .infra_mut()
        .start_server(&leader)
        .await
        .unwrap_or_else(|error| panic!("{leader} did not come back: {error:#}"));
    for victim in &victims {
        stack
            .fleet_mut()
            .start_service(victim)
            .await
            .unwrap_or_else(|error| panic!("{victim} did not come back: {error:#}"));
    }
    tokio::time::sleep(BETWEEN).await;
    load.phase("after the faults");
    tokio::time::sleep(BETWEEN).await;
    let ledger = load.stop().await;

    let within = Duration::from_secs(WINDOW_SECONDS + 45);
    let (verdict, converged) = verify(&stack, &client, &seller, &buyers, &ledger, within).await;
    let new_leader = stream_info(&http, &nodes).await["cluster"]["leader"]
        .as_str()
        .unwrap_or("none")
        .to_owned();
    let mut fires = fired_before_kill;
    for replica in stack.fleet().replicas("expiration") {
        fires += fired(&http, &stack, &replica).await;
    }

    let sent = sent_down - sent_before;
    let failed = failed_down - failed_before;
    #[allow(clippy::cast_precision_loss)]
    let share = failed as f64 / sent.max(1) as f64;
    eprintln!(
        "ha: while {leader} and one replica of every service were down ({DOWN:?}): {failed} of {sent} requests \
         failed ({:.1} %); the stream's leader went from {leader_server} to {new_leader}",
        share * 100.0
    );
    eprintln!(
        "ha: {} stories ({} tickets), {} orders: {} complete, {} cancelled; {} charges; \
         expiration.complete fired {fires} times for {} orders; converged {:.1} s after the load; {:.0} s in all",
        verdict.stories,
        verdict.tickets,
        verdict.orders,
        verdict.complete,
        verdict.cancelled,
        verdict.charges,
        verdict.orders,
        converged.as_secs_f64(),
        begun.elapsed().as_secs_f64(),
    );
    eprintln!("ha: by phase:\n{}", fault_tests::phase_summary(&ledger));
    let services: Vec<String> = stack.fleet().names().map(str::to_owned).collect();
    fault_tests::stop_and_assert(stack, &verdict, within, &services, 30).await;
    assert!(sent > 0, "the load ran while the replicas were down");
    assert!(
        share <= MAX_FAILED_SHARE,
        "{failed} of {sent} requests failed while one replica of each service was down"
    );
    assert_ne!(new_leader, "none", "the stream has a leader again");
    assert!(
        fires <= verdict.orders + IN_HAND_AT_KILL,
        "expiration.complete fired {fires} times for {} orders: jobs fired by both replicas",
        verdict.orders
    );
}

#[tokio::test]
async fn a_stream_at_one_replica_is_updated_to_three_not_recreated() {
    let infra = Infra::start(InfraOptions::ephemeral().with_nats_nodes(NATS_NODES))
        .await
        .unwrap_or_else(|error| panic!("the NATS cluster did not start: {error:#}"));
    let namespace = format!("ha-update-{}", std::process::id());
    let single = Bus::connect(BusConfig::new(infra.nats_url()).with_namespace(&namespace))
        .await
        .expect("connect at 1 replica");
    single
        .publish_raw("ticket.created", 1, "ha-update-1", "{}".into())
        .await
        .expect("publish");
    let stream = single.config().stream.clone();
    let before = single
        .jetstream()
        .get_stream(&stream)
        .await
        .expect("the stream")
        .info()
        .await
        .expect("its info")
        .clone();
    assert_eq!(before.config.num_replicas, 1);

    let config = BusConfig {
        stream_replicas: NATS_NODES,
        ..BusConfig::new(infra.nats_url()).with_namespace(&namespace)
    };
    let replicated = Bus::connect(config).await.expect("connect at 3 replicas");
    let after = replicated
        .jetstream()
        .get_stream(&stream)
        .await
        .expect("the stream")
        .info()
        .await
        .expect("its info")
        .clone();
    assert_eq!(
        after.config.num_replicas, NATS_NODES,
        "updated to every node"
    );
    assert_eq!(
        after.created, before.created,
        "the same stream, not a new one"
    );
    assert_eq!(after.state.messages, 1, "its message kept");
    infra.stop().await.expect("the cluster stops");
}

/// The TICKETING stream's info from the first node that answers
/// (`/jsz?accounts=true&streams=true&config=true`).
async fn stream_info(http: &reqwest::Client, nodes: &[(String, String, String)]) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for (_, _, monitor) in nodes {
            let url = format!("{monitor}/jsz?accounts=true&streams=true&config=true");
            let Ok(response) = http.get(&url).send().await else {
                continue;
            };
            let Ok(jsz) = response.json::<Value>().await else {
                continue;
            };
            let found = jsz["account_details"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|account| account["stream_detail"].as_array().into_iter().flatten())
                .find(|stream| stream["name"] == "TICKETING")
                .filter(|stream| stream["cluster"]["leader"].is_string());
            if let Some(stream) = found {
                return stream.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "no node reports the TICKETING stream with a leader"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// How many `expiration.complete` a replica has published (its `/metrics`).
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
async fn fired(http: &reqwest::Client, stack: &Stack, replica: &str) -> usize {
    let addr = stack.fleet().addr(replica).expect("a replica's address");
    let text = http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .expect("metrics answer")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .filter(|line| {
            line.starts_with("bus_published_total{")
                && line.contains(r#"subject="expiration.complete""#)
                && line.contains(r#"outcome="ok""#)
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|value| value as usize)
        .sum()
}
