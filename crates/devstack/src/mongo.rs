//! Which MongoDB-wire server the local infrastructure runs, and how.
//!
//! In order of preference ([`choose`]):
//!
//! 1. **mongod**: the program `$MONGOD` names, else a `mongod` on `PATH` — the
//!    real server, when a developer has one.
//! 2. **SecantusDB Python**: `secantusd-py` (PyPI `secantusdb`) in the
//!    bootstrap venv.
//!
//! and, only when asked for with `TICKETING_MONGO_SERVER=native`,
//! **SecantusDB native**: `secantusd-rs` (crate `secantus-mdb`), which
//! `SECANTUS_NATIVE=1 scripts/bootstrap.sh` builds once into
//! `~/.cache/ticketing` (shared by every clone and CI run, keyed by version)
//! and links as `.dev/bin/secantusd-rs`. It is about six times faster than
//! the Python server here, but version 0.5.3-beta.196 keeps a unique index's
//! old key when an update changes or removes the indexed field (only a delete
//! removes it): after an order is cancelled (`$unset: activeTicketId`) its
//! ticket can never be ordered again, and the orders service's own tests
//! fail. The fleet's one-order-per-ticket rule lives in exactly such an
//! index, so the native server is not the default until that is fixed
//! upstream ([`NATIVE_KNOWN_ISSUE`]).
//!
//! `TICKETING_MONGO_SERVER=mongod|native|python` insists on one (and fails
//! when it is not installed).
//!
//! Both SecantusDB servers run with `--standalone`: by default they present a
//! one-node replica set, which makes the driver send retryable writes and the
//! server keep an oplog entry per write — several times slower, for
//! transactions and change streams the fleet does not use (CI's `mongo:7`
//! runs standalone too). Both are GPL: they run as separate processes only.

use std::path::{Path, PathBuf};

use anyhow::bail;

use crate::paths;
use crate::process::ProcessSpec;

/// The variable that names a `mongod` to use.
pub const MONGOD_VAR: &str = "MONGOD";
/// The variable that insists on one server.
pub const FORCE_VAR: &str = "TICKETING_MONGO_SERVER";

/// Why the native server is only used when asked for (see the module docs).
pub const NATIVE_KNOWN_ISSUE: &str = "secantusd-rs 0.5.3-beta.196 keeps a unique index's old key \
     after an update changes or unsets the field, so a cancelled order's ticket stays reserved";

/// The chosen server and its program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MongoServer {
    Mongod(PathBuf),
    Native(PathBuf),
    Python(PathBuf),
}

impl MongoServer {
    /// What the launcher prints: `mongod`, `SecantusDB native`, `SecantusDB Python`.
    pub fn flavor(&self) -> &'static str {
        match self {
            Self::Mongod(_) => "mongod",
            Self::Native(_) => "SecantusDB native",
            Self::Python(_) => "SecantusDB Python",
        }
    }

    /// The program that runs.
    pub fn program(&self) -> &Path {
        match self {
            Self::Mongod(path) | Self::Native(path) | Self::Python(path) => path,
        }
    }

    /// How to start it on `127.0.0.1:port` with its data in `store`.
    pub fn spec(&self, store: &Path, port: u16) -> ProcessSpec {
        let spec = ProcessSpec::new("mongo", self.program());
        match self {
            Self::Mongod(_) => spec
                .args(["--bind_ip", "127.0.0.1", "--port"])
                .arg(port.to_string())
                .arg("--dbpath")
                .arg(store)
                .arg("--quiet"),
            Self::Native(_) => spec
                .args(["--host", "127.0.0.1", "--port"])
                .arg(port.to_string())
                .arg("--storage-path")
                .arg(store)
                .args(["--standalone", "--cache-size", "256M"])
                .args(["--log-file-max", "16MB"]),
            Self::Python(_) => spec
                .args(["--host", "127.0.0.1", "--port"])
                .arg(port.to_string())
                .arg("--storage-path")
                .arg(store)
                .arg("--standalone")
                // Readable output through our pipe (python buffers it otherwise).
                .env("PYTHONUNBUFFERED", "1"),
        }
    }
}

/// Where each server would be; what [`choose`] picks from.
#[derive(Debug, Clone, Default)]
pub struct Candidates {
    /// `$MONGOD`, if set.
    pub given: Option<PathBuf>,
    /// A `mongod` on `PATH`.
    pub on_path: Option<PathBuf>,
    /// `.dev/bin/secantusd-rs`, if bootstrap built it.
    pub native: Option<PathBuf>,
    /// `.dev/venv/bin/secantusd-py`, if bootstrap installed it.
    pub python: Option<PathBuf>,
    /// `$TICKETING_MONGO_SERVER`, if set.
    pub forced: Option<String>,
}

impl Candidates {
    /// What is installed on this machine, for this checkout.
    pub fn detect() -> Self {
        let var = |name: &str| std::env::var_os(name).filter(|value| !value.is_empty());
        let installed = |path: PathBuf| paths::is_executable(&path).then_some(path);
        Self {
            given: var(MONGOD_VAR).map(PathBuf::from),
            on_path: paths::which("mongod"),
            native: installed(paths::dev_dir().join("bin/secantusd-rs")),
            python: installed(paths::venv_bin("secantusd-py")),
            forced: var(FORCE_VAR).map(|value| value.to_string_lossy().into_owned()),
        }
    }
}

/// The server to run: `$TICKETING_MONGO_SERVER`'s if set, else the first of
/// mongod (given, then on `PATH`) and SecantusDB Python. The native server
/// only when asked for (see the module docs).
pub fn choose(candidates: &Candidates) -> anyhow::Result<MongoServer> {
    let mongod = || {
        candidates
            .given
            .clone()
            .or_else(|| candidates.on_path.clone())
            .map(MongoServer::Mongod)
    };
    let native = || candidates.native.clone().map(MongoServer::Native);
    let python = || candidates.python.clone().map(MongoServer::Python);
    if let Some(given) = &candidates.given
        && !paths::is_executable(given)
    {
        bail!("{MONGOD_VAR}={} is not an executable file", given.display());
    }
    let chosen = match candidates.forced.as_deref() {
        None => mongod().or_else(python),
        Some("mongod") => mongod(),
        Some("native") => native(),
        Some("python") => python(),
        Some(other) => {
            bail!("{FORCE_VAR}={other:?}: expected one of mongod, native, python")
        }
    };
    match (chosen, candidates.forced.as_deref()) {
        (Some(server), _) => Ok(server),
        (None, Some(forced)) => bail!(
            "{FORCE_VAR}={forced}, but that server is not installed: run `scripts/bootstrap.sh` \
             (or `make dev` / `make test`) first"
        ),
        (None, None) => bail!(
            "no MongoDB-wire server found (mongod or .dev/venv/bin/secantusd-py): \
             run `scripts/bootstrap.sh` (or `make dev` / `make test`) first"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory with executable stand-ins named like the real programs.
    struct Programs(paths::TempDir);

    impl Programs {
        fn new() -> Self {
            Self(paths::TempDir::new("devstack-mongo-choice").unwrap())
        }

        fn make(&self, name: &str) -> PathBuf {
            use std::os::unix::fs::PermissionsExt;
            let path = self.0.path().join(name);
            std::fs::write(&path, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            path
        }

        /// Every server installed, nothing forced.
        fn all(&self) -> Candidates {
            Candidates {
                given: None,
                on_path: Some(self.make("mongod")),
                native: Some(self.make("secantusd-rs")),
                python: Some(self.make("secantusd-py")),
                forced: None,
            }
        }
    }

    #[test]
    fn a_real_mongod_wins_then_the_python_server_and_the_native_one_only_when_asked() {
        let programs = Programs::new();
        let all = programs.all();
        assert_eq!(
            choose(&all).unwrap(),
            MongoServer::Mongod(programs.make("mongod"))
        );

        let given = Candidates {
            given: Some(programs.make("my-mongod")),
            ..all.clone()
        };
        assert_eq!(
            choose(&given).unwrap(),
            MongoServer::Mongod(programs.make("my-mongod")),
            "$MONGOD beats the one on PATH"
        );

        let no_mongod = Candidates {
            on_path: None,
            ..all.clone()
        };
        let python = choose(&no_mongod).unwrap();
        assert_eq!(python, MongoServer::Python(programs.make("secantusd-py")));
        assert_eq!(python.flavor(), "SecantusDB Python");
        assert!(
            NATIVE_KNOWN_ISSUE.contains("unique index"),
            "the native server, although installed, waits for its index fix"
        );

        let asked = Candidates {
            forced: Some("native".into()),
            ..no_mongod.clone()
        };
        let native = choose(&asked).unwrap();
        assert_eq!(native, MongoServer::Native(programs.make("secantusd-rs")));
        assert_eq!(native.flavor(), "SecantusDB native");

        let only_native = Candidates {
            python: None,
            ..no_mongod
        };
        assert!(
            choose(&only_native).is_err(),
            "never the native server unasked, even alone"
        );
        let nothing = Candidates::default();
        let err = choose(&nothing).unwrap_err().to_string();
        assert!(err.contains("bootstrap"), "{err}");
    }

    #[test]
    fn a_forced_server_is_used_or_refused() {
        let programs = Programs::new();
        let all = Candidates {
            forced: Some("python".into()),
            ..programs.all()
        };
        assert!(matches!(choose(&all).unwrap(), MongoServer::Python(_)));
        let native = Candidates {
            forced: Some("native".into()),
            ..all.clone()
        };
        assert!(matches!(choose(&native).unwrap(), MongoServer::Native(_)));
        let missing = Candidates {
            native: None,
            forced: Some("native".into()),
            ..all.clone()
        };
        assert!(choose(&missing).is_err(), "no silent fallback when forced");
        let unknown = Candidates {
            forced: Some("postgres".into()),
            ..all
        };
        assert!(choose(&unknown).is_err());
    }

    #[test]
    fn a_given_mongod_that_is_not_a_program_is_an_error() {
        let candidates = Candidates {
            given: Some("/nonexistent/mongod".into()),
            ..Candidates::default()
        };
        assert!(choose(&candidates).is_err());
    }

    #[test]
    fn both_secantus_servers_run_standalone() {
        let store = Path::new("/tmp/store");
        for server in [
            MongoServer::Native("secantusd-rs".into()),
            MongoServer::Python("secantusd-py".into()),
        ] {
            let spec = server.spec(store, 27999);
            assert!(
                spec.args.iter().any(|arg| arg == "--standalone"),
                "{}: {:?}",
                server.flavor(),
                spec.args
            );
            assert!(spec.args.iter().any(|arg| arg == "27999"));
        }
        let mongod = MongoServer::Mongod("mongod".into()).spec(store, 27999);
        assert!(mongod.args.iter().any(|arg| arg == "--dbpath"));
    }
}
