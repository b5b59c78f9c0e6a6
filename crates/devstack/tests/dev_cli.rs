//! The `dev` binary: `dev infra -- <command>` exports the test endpoints, passes
//! the exit code through, and its children die with it even on `kill -9`.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const DEV: &str = env!("CARGO_BIN_EXE_dev");

#[test]
fn infra_runs_the_command_with_test_endpoints_and_its_exit_code() {
    let output = Command::new(DEV)
        .args(["infra", "--", "sh", "-c"])
        .arg(r#"echo "$TEST_MONGO_URI|$TEST_NATS_URL|$TEST_REDIS_URL|$TEST_STRIPE_API_BASE"; exit 3"#)
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    let urls: Vec<&str> = stdout.trim().split('|').collect();
    assert!(urls[0].starts_with("mongodb://127.0.0.1:"), "{stdout}");
    assert!(urls[1].starts_with("nats://127.0.0.1:"), "{stdout}");
    assert!(urls[2].starts_with("redis://127.0.0.1:"), "{stdout}");
    assert!(urls[3].starts_with("http://127.0.0.1:"), "{stdout}");
}

/// Every clone shares one target directory, so this binary may have been
/// built in another clone: run from a second checkout, it must use that
/// checkout (its `.dev/`), not the one it was compiled in.
#[test]
fn the_launcher_uses_the_checkout_it_is_run_in_not_the_one_it_was_built_in() {
    let other = std::env::temp_dir().join(format!("devstack-second-clone-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&other);
    std::fs::create_dir_all(other.join("infra")).unwrap();
    std::fs::create_dir_all(other.join("scripts")).unwrap();
    std::fs::create_dir_all(other.join("services/auth")).unwrap();
    std::fs::write(other.join("infra/routes.json"), "{}").unwrap();
    std::fs::write(other.join("scripts/bootstrap.sh"), "").unwrap();
    let root_of = |cwd: &std::path::Path, root_var: Option<&std::path::Path>| {
        let mut command = Command::new(DEV);
        command
            .arg("where")
            .current_dir(cwd)
            .env_remove("TICKETING_ROOT");
        if let Some(root) = root_var {
            command.env("TICKETING_ROOT", root);
        }
        let output = command.output().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let stdout = String::from_utf8(output.stdout).unwrap();
        let line = |key: &str| {
            stdout
                .lines()
                .find_map(|line| line.strip_prefix(key).map(|rest| rest.trim().to_owned()))
                .unwrap_or_else(|| panic!("no {key} line in {stdout}"))
        };
        (line("root"), line("dev"))
    };
    let expected = other.canonicalize().unwrap();
    let (root, dev) = root_of(&other.join("services/auth"), None);
    assert_eq!(
        std::path::Path::new(&root).canonicalize().unwrap(),
        expected
    );
    assert_eq!(
        std::path::PathBuf::from(dev),
        std::path::PathBuf::from(&root).join(".dev")
    );
    let built_in = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap();
    assert_ne!(expected, built_in);
    // TICKETING_ROOT (what the Makefile passes) wins over the directory.
    let (root, _) = root_of(&other, Some(&built_in));
    assert_eq!(std::path::PathBuf::from(root), built_in);
    std::fs::remove_dir_all(&other).unwrap();
}

#[test]
fn infra_without_a_command_is_a_usage_error() {
    let output = Command::new(DEV).args(["infra", "--"]).output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("needs a command"));
}

#[test]
fn children_die_when_the_launcher_is_killed() {
    let mut dev = Command::new(DEV)
        .args([
            "infra",
            "--",
            "sh",
            "-c",
            r#"echo "$TEST_NATS_URL $TEST_REDIS_URL $$"; exec sleep 600"#,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(dev.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    let addr = |url: &str| -> SocketAddr { url.split("://").nth(1).unwrap().parse().unwrap() };
    let (nats, redis, command_pid) = (addr(fields[0]), addr(fields[1]), fields[2].to_owned());
    assert!(TcpStream::connect(nats).is_ok());

    dev.kill().unwrap(); // SIGKILL: no cleanup code runs in the launcher
    dev.wait().unwrap();
    // The test command is ours to clean up: it is not supervised.
    let _ = Command::new("kill").arg(&command_pid).status();

    let deadline = Instant::now() + Duration::from_secs(15);
    while TcpStream::connect(nats).is_ok() || TcpStream::connect(redis).is_ok() {
        assert!(
            Instant::now() < deadline,
            "infrastructure outlived its launcher"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn fleet_without_a_command_is_a_usage_error() {
    let output = Command::new(DEV)
        .args(["fleet", "--expiration-window", "5"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("needs a command"));
}

#[test]
fn fleet_runs_the_command_against_the_fleet_behind_an_ingress() {
    let auth = std::path::Path::new(DEV).with_file_name("auth");
    if !auth.is_file() {
        eprintln!("skipped: no auth binary next to {DEV} (`cargo build --workspace --bins` first)");
        return;
    }
    let output = Command::new(DEV)
        .args([
            "fleet",
            "--only",
            "auth",
            "--expiration-window",
            "7",
            "--",
            "sh",
            "-c",
        ])
        .arg(r#"echo "$BASE_URL|$EXPIRATION_WINDOW_SECONDS|$TEST_NATS_URL|$AUTH_URL"; exit 4"#)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains("---- last lines of auth ----"),
        "a failed command shows the logs: {stderr}"
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    let fields: Vec<&str> = stdout.trim().split('|').collect();
    assert!(fields[0].starts_with("http://127.0.0.1:"), "{stdout}");
    assert_eq!(fields[1], "7", "{stdout}");
    assert!(fields[2].starts_with("nats://127.0.0.1:"), "{stdout}");
    assert!(
        fields[3].starts_with("http://127.0.0.1:"),
        "the service's own port: {stdout}"
    );
    assert_ne!(fields[3], fields[0], "{stdout}");
}
