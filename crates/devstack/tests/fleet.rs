//! The fleet launcher, against stand-in services: small shell scripts that
//! record their environment and serve `/readyz` with python's http.server.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use devstack::paths::TempDir;
use devstack::{Endpoints, Fleet, FleetOptions, Output, ServiceInfo, probe};

const FAKE_SERVICE: &str = r#"#!/bin/sh
here="$(cd "$(dirname "$0")" && pwd)"
env > "$here/env-$(basename "$0")"
echo "$(basename "$0") starting on $PORT"
cd "$here/www" && exec python3 -m http.server "$PORT" --bind 127.0.0.1
"#;

const BROKEN_SERVICE: &str = "#!/bin/sh\necho 'JWT_KEY must be set (pretend)' >&2\nexit 1\n";

fn install(dir: &Path, name: &str, script: &str) {
    let path = dir.join(name);
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn bin_dir_with(services: &[(&str, &str)]) -> TempDir {
    let dir = TempDir::new("devstack-fleet-test").unwrap();
    std::fs::create_dir_all(dir.path().join("www")).unwrap();
    std::fs::write(dir.path().join("www/readyz"), "ok").unwrap();
    for (name, script) in services {
        install(dir.path(), name, script);
    }
    dir
}

fn endpoints() -> Endpoints {
    Endpoints {
        mongo_uri: "mongodb://127.0.0.1:1".into(),
        nats_url: "nats://127.0.0.1:2".into(),
        redis_url: "redis://127.0.0.1:3".into(),
        stripe_api_base: Some("http://127.0.0.1:4".into()),
    }
}

fn options(bin_dir: &Path, names: &[&str]) -> FleetOptions {
    FleetOptions {
        services: names
            .iter()
            .map(|name| ServiceInfo {
                name: (*name).into(),
                binary: (*name).into(),
            })
            .collect(),
        bin_dir: bin_dir.to_path_buf(),
        jwt_key: "test-jwt-key".into(),
        api_base_url: Some("http://127.0.0.1:8080".into()),
        database_prefix: "t1_".into(),
        output: Output::from_env(),
        ready_timeout: Duration::from_secs(20),
        stop_grace: Duration::from_secs(5),
        ..FleetOptions::new(endpoints()).unwrap()
    }
}

fn recorded_env(bin_dir: &Path, name: &str) -> Vec<(String, String)> {
    std::fs::read_to_string(bin_dir.join(format!("env-{name}")))
        .unwrap()
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn var(env: &[(String, String)], key: &str) -> Option<String> {
    env.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
}

#[tokio::test]
async fn starts_services_with_their_environment_and_restarts_them() {
    let bin = bin_dir_with(&[("auth", FAKE_SERVICE), ("tickets", FAKE_SERVICE)]);
    let mut fleet = Fleet::start(options(bin.path(), &["auth", "tickets"]))
        .await
        .unwrap();

    let names: Vec<&str> = fleet.names().collect();
    assert_eq!(names, ["auth", "tickets"]);
    let auth = fleet.addr("auth").unwrap();
    probe::http_ok(auth, "/readyz").await.unwrap();
    assert_eq!(fleet.upstreams().len(), 2);
    assert!(
        fleet
            .log_tail("auth", 10)
            .iter()
            .any(|line| line.contains("auth starting"))
    );

    let env = recorded_env(bin.path(), "auth");
    assert_eq!(var(&env, "PORT"), Some(auth.port().to_string()));
    assert_eq!(
        var(&env, "MONGO_URI").as_deref(),
        Some("mongodb://127.0.0.1:1/t1_auth")
    );
    assert_eq!(var(&env, "NATS_URL").as_deref(), Some("nats://127.0.0.1:2"));
    assert_eq!(
        var(&env, "REDIS_URL").as_deref(),
        Some("redis://127.0.0.1:3")
    );
    assert_eq!(var(&env, "JWT_KEY").as_deref(), Some("test-jwt-key"));
    assert!(var(&env, "STRIPE_KEY").is_some_and(|key| key.starts_with("sk_test_")));
    assert_eq!(
        var(&env, "STRIPE_API_BASE").as_deref(),
        Some("http://127.0.0.1:4")
    );
    assert_eq!(var(&env, "APP_ENV").as_deref(), Some("development"));
    assert_eq!(
        var(&env, "API_BASE_URL").as_deref(),
        Some("http://127.0.0.1:8080")
    );
    let tickets_env = recorded_env(bin.path(), "tickets");
    assert_eq!(
        var(&tickets_env, "MONGO_URI").as_deref(),
        Some("mongodb://127.0.0.1:1/t1_tickets")
    );

    // kill -9, then start again on the same port.
    let old_pid = fleet.pid("auth").unwrap();
    fleet.kill_service("auth").await.unwrap();
    assert!(!fleet.is_running("auth"));
    assert!(
        probe::tcp(auth).await.is_err(),
        "killed service no longer accepts"
    );
    fleet.start_service("auth").await.unwrap();
    assert_ne!(fleet.pid("auth"), Some(old_pid));
    assert_eq!(fleet.addr("auth"), Some(auth));
    probe::http_ok(auth, "/readyz").await.unwrap();

    fleet.restart_service("tickets").await.unwrap();
    assert!(fleet.is_running("tickets"));
    assert!(
        fleet.start_service("tickets").await.is_err(),
        "already running"
    );
    assert!(fleet.stop_service("nope").await.is_err(), "unknown service");

    let pids: Vec<u32> = ["auth", "tickets"]
        .iter()
        .filter_map(|n| fleet.pid(n))
        .collect();
    fleet.stop().await.unwrap();
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "pid {pid} left behind"
        );
    }
    assert!(probe::tcp(auth).await.is_err());
}

#[tokio::test]
async fn a_service_that_exits_at_start_fails_with_its_log() {
    let bin = bin_dir_with(&[("auth", BROKEN_SERVICE), ("tickets", FAKE_SERVICE)]);
    let error = Fleet::start(options(bin.path(), &["auth", "tickets"]))
        .await
        .unwrap_err();
    let message = format!("{error:#}");
    assert!(message.contains("auth exited during startup"), "{message}");
    assert!(
        message.contains("JWT_KEY must be set (pretend)"),
        "{message}"
    );
}

#[tokio::test]
async fn a_missing_binary_fails_clearly() {
    let bin = bin_dir_with(&[]);
    let error = Fleet::start(options(bin.path(), &["orders"]))
        .await
        .unwrap_err();
    let message = format!("{error:#}");
    assert!(message.contains("service binaries not found"), "{message}");
    assert!(message.contains("orders"), "{message}");
}
