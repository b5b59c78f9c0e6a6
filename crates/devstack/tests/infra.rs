//! Ephemeral infrastructure really starts, answers, and leaves nothing behind.
//!
//! Needs `scripts/bootstrap.sh` to have run (nats-server and SecantusDB in
//! `.dev/venv`, the Stripe fake in `.dev/node`, redis-server on PATH).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use devstack::{Infra, InfraOptions, probe};

fn addr_of(url: &str) -> SocketAddr {
    let host_port = url.split("://").nth(1).unwrap().trim_end_matches('/');
    host_port.parse().unwrap()
}

/// Pids of processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if String::from_utf8_lossy(&cmdline).contains(needle) {
            found.push(pid);
        }
    }
    found
}

#[tokio::test]
async fn ephemeral_infra_answers_and_stop_leaves_nothing_behind() {
    let infra = Infra::start(InfraOptions::ephemeral().with_stripe())
        .await
        .expect("infrastructure starts (did scripts/bootstrap.sh run?)");

    assert!(infra.mongo_uri().starts_with("mongodb://127.0.0.1:"));
    assert!(
        !infra.mongo_uri().ends_with('/'),
        "no database in the base URI"
    );
    assert!(infra.nats_url().starts_with("nats://127.0.0.1:"));
    assert!(infra.redis_url().starts_with("redis://127.0.0.1:"));
    let stripe = infra
        .stripe_api_base()
        .expect("the Stripe fake was asked for");

    // Each one accepts connections and answers its own protocol.
    for url in [
        infra.mongo_uri(),
        infra.nats_url(),
        infra.redis_url(),
        stripe,
    ] {
        probe::tcp(addr_of(url))
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
    }
    probe::nats(addr_of(infra.nats_url())).await.unwrap();
    probe::redis(addr_of(infra.redis_url())).await.unwrap();
    probe::mongo(addr_of(infra.mongo_uri())).await.unwrap();
    probe::http_ok(addr_of(&infra.nats_monitor_url()), "/healthz")
        .await
        .unwrap();
    let status = probe::http_status(addr_of(stripe), "/v1/charges")
        .await
        .unwrap();
    assert!(
        (200..500).contains(&status),
        "the Stripe fake answers HTTP ({status})"
    );

    let names: Vec<&str> = infra.processes().iter().map(|p| p.name()).collect();
    // The Stripe fake is served from this process, not a child.
    assert_eq!(names, ["nats", "mongo", "redis"]);
    let pids: Vec<u32> = infra.processes().iter().map(|p| p.pid()).collect();
    let data_dir = infra.data_dir().to_path_buf();
    assert!(!processes_mentioning(&data_dir.to_string_lossy()).is_empty());

    infra.stop().await.unwrap();

    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "pid {pid} still exists"
        );
        let watchdog = format!("devstack-watchdog\0{pid}\0");
        assert!(
            processes_mentioning(&watchdog).is_empty(),
            "watchdog of {pid} still runs"
        );
    }
    assert!(processes_mentioning(&data_dir.to_string_lossy()).is_empty());
    assert!(!data_dir.exists(), "ephemeral data is removed");
}

#[tokio::test]
async fn persistent_infra_keeps_its_data_dir() {
    let dir = devstack::paths::TempDir::new("devstack-test-data").unwrap();
    let data_dir = dir.path().join("data");
    let options = InfraOptions {
        data_dir: Some(data_dir.clone()),
        ..InfraOptions::ephemeral()
    };
    let infra = Infra::start(options).await.unwrap();
    assert_eq!(infra.stripe_api_base(), None);
    infra.stop().await.unwrap();
    for sub in ["nats", "mongo", "redis"] {
        assert!(data_dir.join(sub).is_dir(), "{sub} data survives stop");
    }
}

#[tokio::test]
async fn a_fixed_port_that_is_taken_fails_clearly() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let options = InfraOptions {
        redis_port: Some(port),
        ready_timeout: Duration::from_secs(10),
        ..InfraOptions::ephemeral()
    };
    let error = Infra::start(options).await.unwrap_err();
    assert!(
        format!("{error:#}").contains(&format!("port {port} for redis")),
        "{error:#}"
    );
}

/// What bootstrap installed: SecantusDB's Python server, and its native one
/// once bootstrap has built it.
fn secantus_servers() -> Vec<devstack::mongo::MongoServer> {
    use devstack::mongo::{Candidates, MongoServer};
    let installed = Candidates::detect();
    let mut servers = vec![MongoServer::Python(
        installed
            .python
            .clone()
            .expect("bootstrap installs SecantusDB's Python server"),
    )];
    if let Some(native) = installed.native {
        servers.push(MongoServer::Native(native));
    }
    servers
}

/// Both SecantusDB servers start standalone, answer the official driver's
/// writes and reads, and keep what was written across a restart.
#[tokio::test]
async fn each_secantus_server_runs_standalone_and_survives_a_restart() {
    use mongodb::bson::{Document, doc};
    for server in secantus_servers() {
        let flavor = server.flavor();
        let mut infra = Infra::start(InfraOptions {
            mongo: Some(server),
            ..InfraOptions::ephemeral()
        })
        .await
        .unwrap_or_else(|e| panic!("{flavor}: {e:#}"));
        assert_eq!(infra.mongo_flavor(), flavor);
        let client = mongodb::Client::with_uri_str(infra.mongo_uri())
            .await
            .unwrap();
        let hello = client
            .database("admin")
            .run_command(doc! { "hello": 1 })
            .await
            .unwrap();
        assert!(
            !hello.contains_key("setName"),
            "{flavor} presents no replica set (--standalone): {hello}"
        );
        let records = client
            .database("devstack_test")
            .collection::<Document>("records");
        records
            .insert_one(doc! { "_id": 1, "flavor": flavor })
            .await
            .unwrap();

        infra.restart_server("mongo").await.unwrap();
        let found = records.find_one(doc! { "_id": 1 }).await.unwrap();
        assert_eq!(
            found
                .and_then(|d| d.get_str("flavor").ok().map(str::to_owned))
                .as_deref(),
            Some(flavor),
            "{flavor} keeps its data across a restart"
        );
        infra.stop().await.unwrap();
    }
}
