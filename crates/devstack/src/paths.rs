//! Where things are on disk.
//!
//! The workspace root is known at compile time (this crate lives at
//! `<root>/crates/devstack`), so the launcher and the tests find the repository
//! wherever they are run from. `TICKETING_ROOT` overrides it, for a binary that
//! was built in one checkout and runs against another.
//!
//! Everything `scripts/bootstrap.sh` installs lives under `<root>/.dev`
//! (git-ignored): the python venv with nats-server and SecantusDB, the npm tools,
//! and `make dev`'s persistent data.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// The repository root: `$TICKETING_ROOT` if set, else the checkout this crate
/// was compiled from.
pub fn workspace_root() -> PathBuf {
    match std::env::var_os("TICKETING_ROOT") {
        Some(root) if !root.is_empty() => PathBuf::from(root),
        _ => {
            let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
            root.canonicalize().unwrap_or(root)
        }
    }
}

/// `<root>/.dev`, where bootstrap installs local tools and `make dev` keeps data.
pub fn dev_dir() -> PathBuf {
    workspace_root().join(".dev")
}

/// A program installed into the bootstrap venv (`.dev/venv/bin/<name>`).
pub fn venv_bin(name: &str) -> PathBuf {
    dev_dir().join("venv/bin").join(name)
}

/// `.dev/node/node_modules`, the npm tools from `infra/local/package.json`.
pub fn node_modules() -> PathBuf {
    dev_dir().join("node/node_modules")
}

/// The data directory `make dev` uses, so local data survives restarts.
pub fn dev_data_dir() -> PathBuf {
    dev_dir().join("data")
}

/// Fails with a hint to run bootstrap when a tool it installs is missing.
pub(crate) fn require_installed(path: &Path, what: &str) -> anyhow::Result<PathBuf> {
    if path.exists() {
        Ok(path.to_path_buf())
    } else {
        bail!(
            "{what} not found at {}: run `scripts/bootstrap.sh` (or `make dev` / `make test`) first",
            path.display()
        )
    }
}

/// Finds `program` on `PATH`, like `command -v`.
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// A directory that is removed again when dropped (ephemeral infrastructure
/// data). Lives under the system temp dir.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates a fresh, uniquely named directory `<tmp>/<prefix>-<pid>-<random>`.
    ///
    /// Also removes directories of the same prefix left by processes that no
    /// longer exist: an owner that never drops its `TempDir` (a `static` in a
    /// test binary, a `kill -9`) cannot clean up after itself.
    pub fn new(prefix: &str) -> anyhow::Result<Self> {
        sweep_stale(prefix);
        let suffix: u64 = rand::random();
        let path =
            std::env::temp_dir().join(format!("{prefix}-{}-{suffix:016x}", std::process::id()));
        std::fs::create_dir_all(&path)
            .with_context(|| format!("failed to create temp dir {}", path.display()))?;
        Ok(Self { path })
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Removes `<tmp>/<prefix>-<pid>-*` directories whose `pid` is gone.
fn sweep_stale(prefix: &str) {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    let lead = format!("{prefix}-");
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|name| name.strip_prefix(&lead)) else {
            continue;
        };
        let Some(pid) = rest
            .split('-')
            .next()
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // Best effort: a leftover temp dir is harmless.
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_dirs_are_removed_on_drop_and_stale_ones_swept() {
        let stale = std::env::temp_dir().join("devstack-sweep-test-999999999-0");
        std::fs::create_dir_all(&stale).unwrap();

        let dir = TempDir::new("devstack-sweep-test").unwrap();
        assert!(!stale.exists(), "left by a pid that no longer exists");
        assert!(dir.path().is_dir());
        let path = dir.path().to_path_buf();
        drop(dir);
        assert!(!path.exists());
    }

    #[test]
    fn the_workspace_root_holds_the_routing_table() {
        assert!(workspace_root().join("infra/routes.json").is_file());
    }
}
