//! Where things are on disk.
//!
//! The repository root is the checkout the launcher or test is *run* in:
//! `$TICKETING_ROOT` if set (the Makefile sets it), else the nearest
//! directory at or above the current one that holds `infra/routes.json` and
//! `scripts/bootstrap.sh` (`cargo test` runs every test binary inside its
//! package, so in the clone it was run from). Only outside any checkout does
//! it fall back to the one this crate was compiled in. Never the compiled-in
//! one first: every clone shares one cargo target directory, and cargo
//! reuses a build of another clone whose files are newer than this clone's,
//! so a compiled-in path can name the wrong clone (its `.dev/data` with
//! it).
//!
//! Everything `scripts/bootstrap.sh` installs lives under `<root>/.dev`
//! (git-ignored): the python venv with nats-server and SecantusDB, the npm tools,
//! and `make dev`'s persistent data.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// The repository root: `$TICKETING_ROOT` if set, else the checkout around
/// the current directory, else the one this crate was compiled from.
pub fn workspace_root() -> PathBuf {
    if let Some(root) = std::env::var_os("TICKETING_ROOT").filter(|root| !root.is_empty()) {
        return PathBuf::from(root);
    }
    if let Some(root) = std::env::current_dir()
        .ok()
        .and_then(|dir| checkout_around(&dir))
    {
        return root;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize().unwrap_or(root)
}

/// The nearest directory at or above `dir` that is a Ticketing checkout.
pub fn checkout_around(dir: &Path) -> Option<PathBuf> {
    dir.ancestors()
        .find(|candidate| {
            candidate.join("infra/routes.json").is_file()
                && candidate.join("scripts/bootstrap.sh").is_file()
        })
        .map(Path::to_path_buf)
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

/// Whether `path` is a file this user may run.
pub fn is_executable(path: &Path) -> bool {
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
    fn a_checkout_is_found_from_any_directory_inside_it() {
        let clone = TempDir::new("devstack-checkout-test").unwrap();
        let root = clone.path();
        std::fs::create_dir_all(root.join("infra")).unwrap();
        std::fs::create_dir_all(root.join("scripts")).unwrap();
        std::fs::create_dir_all(root.join("crates/devstack/src")).unwrap();
        std::fs::write(root.join("infra/routes.json"), "{}").unwrap();
        std::fs::write(root.join("scripts/bootstrap.sh"), "").unwrap();
        assert_eq!(checkout_around(root).as_deref(), Some(root));
        assert_eq!(
            checkout_around(&root.join("crates/devstack/src")).as_deref(),
            Some(root)
        );
        assert_eq!(checkout_around(Path::new("/")), None);
    }

    #[test]
    fn the_workspace_root_holds_the_routing_table() {
        assert!(workspace_root().join("infra/routes.json").is_file());
    }
}
