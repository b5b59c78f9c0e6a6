//! Typed settings from the environment, read once at start.
//!
//! Each service has a `Settings::from_env()` built from these helpers. A
//! missing or unreadable variable is a [`ConfigError`]; [`load_or_exit`] turns
//! it into the one clear line DESIGN §6 asks for and stops the process.
//!
//! Loaders read through an [`Env`], which can also *record* what they read:
//! every binary answers `--print-env` with the variables it uses, and the
//! deployment checks compare that list with the Kubernetes manifests.

use std::{fmt, str::FromStr};

/// Why the settings could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("missing required environment variable {0}")]
    Missing(&'static str),
    #[error("environment variable {name} is invalid: {reason}")]
    Invalid { name: &'static str, reason: String },
}

/// Where settings come from: the process environment, or — for
/// `--print-env` — a recorder that notes every variable a service reads, so
/// deployment checks can compare manifests with what binaries really read.
#[derive(Debug, Default)]
pub struct Env {
    recorded: Option<std::cell::RefCell<Vec<(&'static str, bool)>>>,
}

impl Env {
    /// Reads the process environment.
    pub fn process() -> Self {
        Self::default()
    }

    /// Records names instead of reading: required variables get a placeholder
    /// value, optional ones are unset (so defaults apply).
    pub fn recording() -> Self {
        Self {
            recorded: Some(Default::default()),
        }
    }

    /// The variables read so far, with whether each is required.
    pub fn recorded(&self) -> Vec<(&'static str, bool)> {
        self.recorded
            .as_ref()
            .map(|r| r.borrow().clone())
            .unwrap_or_default()
    }

    fn read(&self, name: &'static str, required: bool) -> Option<String> {
        match &self.recorded {
            Some(recorded) => {
                recorded.borrow_mut().push((name, required));
                required.then(|| "placeholder".to_owned())
            }
            None => std::env::var(name).ok().filter(|v| !v.trim().is_empty()),
        }
    }

    /// A required variable; empty counts as missing.
    pub fn required(&self, name: &'static str) -> Result<String, ConfigError> {
        self.read(name, true).ok_or(ConfigError::Missing(name))
    }

    /// An optional variable; empty counts as unset.
    pub fn optional(&self, name: &'static str) -> Option<String> {
        self.read(name, false)
    }

    /// An optional variable parsed as `T`, or `default` when unset.
    pub fn parse_or<T>(&self, name: &'static str, default: T) -> Result<T, ConfigError>
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        match self.optional(name) {
            None => Ok(default),
            Some(raw) => raw
                .trim()
                .parse()
                .map_err(|e: T::Err| ConfigError::Invalid {
                    name,
                    reason: e.to_string(),
                }),
        }
    }

    /// `PORT`, default 3000.
    pub fn port(&self) -> Result<u16, ConfigError> {
        self.parse_or("PORT", 3000)
    }

    /// `RUST_LOG` is read by the log filter; listed so that it is declared.
    pub fn log_filter(&self) -> Option<String> {
        self.optional("RUST_LOG")
    }

    /// Whether the service runs in local development (`APP_ENV=development`):
    /// readable logs and cookies without `Secure`. Anything else is production.
    pub fn development(&self) -> bool {
        self.optional("APP_ENV")
            .is_some_and(|v| v.eq_ignore_ascii_case("development"))
    }
}

/// Reads settings or stops the process with one line naming the problem.
///
/// With `--print-env` as the first argument it prints the variables the
/// service reads instead (`NAME required|optional`, one a line) and exits 0.
pub fn load_or_exit<T>(service: &str, load: impl Fn(&Env) -> Result<T, ConfigError>) -> T {
    if std::env::args().nth(1).as_deref() == Some("--print-env") {
        let env = Env::recording();
        let _ = load(&env);
        for (name, required) in env.recorded() {
            println!("{name} {}", if required { "required" } else { "optional" });
        }
        std::process::exit(0);
    }
    load(&Env::process()).unwrap_or_else(|err| {
        eprintln!("{service}: {err}");
        std::process::exit(2)
    })
}

/// A secret setting: usable, but never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recording_lists_what_a_loader_reads() {
        let env = Env::recording();
        let port = env.port().unwrap();
        let key = env.required("JWT_KEY").unwrap();
        assert_eq!((port, key.is_empty()), (3000, false));
        assert_eq!(env.recorded(), vec![("PORT", false), ("JWT_KEY", true)]);
    }

    #[test]
    fn secrets_are_not_printed() {
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "Secret(***)");
    }

    #[test]
    fn missing_variable_names_itself() {
        let err = Env::process()
            .required("TICKETING_SURELY_UNSET_VARIABLE")
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "missing required environment variable TICKETING_SURELY_UNSET_VARIABLE"
        );
    }
}
