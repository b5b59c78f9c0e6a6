//! Which MongoDB-wire server the local infrastructure runs, and how.
//!
//! In order of preference ([`choose`]):
//!
//! 1. **mongod**: the program `$MONGOD` names, else a `mongod` on `PATH` — the
//!    real server, when a developer has one.
//! 2. **SecantusDB native**: `secantusd-rs` (crate `secantus-mdb`), which
//!    `scripts/bootstrap.sh` builds once into `~/.cache/ticketing` (shared by
//!    every clone and CI run, keyed by version) and links as
//!    `.dev/bin/secantusd-rs`. About six times the Python server's write
//!    rate here. The first build takes minutes and runs in the background.
//! 3. **SecantusDB Python**: `secantusd-py` (PyPI `secantusdb`) in the
//!    bootstrap venv, until the native server is built (or if it cannot be).
//!
//! `TICKETING_MONGO_SERVER=mongod|native|python` insists on one (and fails
//! when it is not installed).
//!
//! (The native server, 0.5.3-beta.196, keeps a unique index's old key when
//! an update changes or removes the indexed field; only a delete removes it.
//! The fleet keeps no unique key on a field that changes: orders' holds are
//! documents keyed by `_id`, inserted and deleted, never updated.)
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
                // 256M thrashed past ~90,000 tickets with their search
                // indexes (inserts of 1,000 went from 1 s to minutes); 1G
                // seeded 100,000 in 84 s. The cache is a ceiling, not an
                // allocation: small databases stay small.
                .args(["--standalone", "--cache-size", "1G"])
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
    /// The log of the native server's build, while one is under way.
    pub native_building: Option<PathBuf>,
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
            native_building: native_build_log(&paths::dev_dir().join("bin/secantusd-rs")),
            python: installed(paths::venv_bin("secantusd-py")),
            forced: var(FORCE_VAR).map(|value| value.to_string_lossy().into_owned()),
        }
    }
}

/// While bootstrap builds the native server that `link` (`.dev/bin/
/// secantusd-rs`, linked before the build ends) points at: the build's log.
/// Bootstrap writes the builder's pid to `<root>/building` and the log to
/// `<root>/build.log`, beside `<root>/bin/secantusd-rs`.
fn native_build_log(link: &Path) -> Option<PathBuf> {
    let root = std::fs::read_link(link)
        .ok()?
        .parent()?
        .parent()?
        .to_owned();
    let pid = std::fs::read_to_string(root.join("building")).ok()?;
    Path::new("/proc")
        .join(pid.trim())
        .exists()
        .then(|| root.join("build.log"))
}

/// What the launcher says beside the server it chose, if anything: that the
/// native server is still being built.
pub fn note(candidates: &Candidates, chosen: &MongoServer) -> Option<String> {
    match (chosen, &candidates.native_building) {
        (MongoServer::Python(_), Some(log)) => Some(format!(
            "SecantusDB native is being built in the background (log: {}); \
             SecantusDB Python runs until it is ready",
            log.display()
        )),
        _ => None,
    }
}

/// The server to run: `$TICKETING_MONGO_SERVER`'s if set, else the first of
/// mongod (given, then on `PATH`), SecantusDB native and SecantusDB Python.
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
        None => mongod().or_else(native).or_else(python),
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
            "no MongoDB-wire server found (mongod, .dev/bin/secantusd-rs or \
             .dev/venv/bin/secantusd-py): \
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
                native_building: None,
                forced: None,
            }
        }
    }

    #[test]
    fn a_real_mongod_wins_then_the_native_server_then_the_python_one() {
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
        let native = choose(&no_mongod).unwrap();
        assert_eq!(native, MongoServer::Native(programs.make("secantusd-rs")));
        assert_eq!(native.flavor(), "SecantusDB native");
        assert_eq!(note(&no_mongod, &native), None);

        // Not built yet (or it could not be): the Python server, and the
        // launcher says why when a build is under way.
        let building = Candidates {
            native: None,
            native_building: Some("/cache/build.log".into()),
            ..no_mongod.clone()
        };
        let python = choose(&building).unwrap();
        assert_eq!(python, MongoServer::Python(programs.make("secantusd-py")));
        assert_eq!(python.flavor(), "SecantusDB Python");
        let said = note(&building, &python).expect("a note while it builds");
        assert!(said.contains("/cache/build.log"), "{said}");

        let nothing = Candidates::default();
        let err = choose(&nothing).unwrap_err().to_string();
        assert!(err.contains("bootstrap"), "{err}");
    }

    #[test]
    fn a_native_build_under_way_is_seen_through_the_link_bootstrap_made() {
        use std::os::unix::fs::symlink;
        let dir = paths::TempDir::new("devstack-native-build").unwrap();
        let root = dir.path().join("secantus-mdb/1.0");
        std::fs::create_dir_all(root.join("bin")).unwrap();
        let link = dir.path().join("secantusd-rs");
        symlink(root.join("bin/secantusd-rs"), &link).unwrap();
        assert_eq!(native_build_log(&link), None, "no build under way");
        // A builder that is alive (this process), then one that is gone.
        std::fs::write(root.join("building"), std::process::id().to_string()).unwrap();
        assert_eq!(native_build_log(&link), Some(root.join("build.log")));
        std::fs::write(root.join("building"), "999999999").unwrap();
        assert_eq!(
            native_build_log(&link),
            None,
            "a dead builder builds nothing"
        );
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
