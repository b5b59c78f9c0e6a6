//! Interleaving the output of many processes into one terminal.
//!
//! Every child's stdout/stderr line is written as one line of the launcher's
//! stdout behind an aligned, colored `name |` prefix (the foreman/docker-compose
//! look). Lines are written whole under the stdout lock, so output of
//! concurrent children never interleaves mid-line.
//!
//! In tests the same processes run with [`Output::quiet`]: nothing is printed,
//! but each process still keeps the tail of its log (see
//! [`crate::process::Process::log_tail`]) for error messages.

use std::io::{IsTerminal, Write};

/// Where process output goes. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Output {
    stream: bool,
    color: bool,
    width: usize,
}

/// Colors for prefixes; red is kept for errors.
const PALETTE: [&str; 6] = ["36", "33", "32", "35", "34", "96"];
const RED_BOLD: &str = "1;31";

impl Output {
    /// Print to stdout, colored when stdout is a terminal and `NO_COLOR` is unset.
    pub fn stream() -> Self {
        let color = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        Self {
            stream: true,
            color,
            width: 10,
        }
    }

    /// Print nothing (processes still keep their log tails). Loud reports such as
    /// an unexpected exit still go to stderr.
    pub fn quiet() -> Self {
        Self {
            stream: false,
            color: false,
            width: 10,
        }
    }

    /// [`Output::stream`] when `DEVSTACK_LOG` is set to anything but `0`, else
    /// [`Output::quiet`]: the default for tests, which can be made chatty with
    /// `DEVSTACK_LOG=1 cargo test -- --nocapture`.
    pub fn from_env() -> Self {
        match std::env::var("DEVSTACK_LOG") {
            Ok(value) if !value.is_empty() && value != "0" => Self::stream(),
            _ => Self::quiet(),
        }
    }

    /// Aligns prefixes to `width` characters (the longest name shown).
    pub fn with_width(mut self, width: usize) -> Self {
        self.width = width;
        self
    }

    /// Whether lines are printed at all.
    pub fn is_streaming(&self) -> bool {
        self.stream
    }

    /// Writes one line of `name`'s output.
    pub fn line(&self, name: &str, line: &str) {
        if !self.stream {
            return;
        }
        let prefix = self.prefix(name, color_for(name));
        let mut out = std::io::stdout().lock();
        // A closed stdout (e.g. `| head`) must not take the launcher down.
        let _ = writeln!(out, "{prefix} {line}");
    }

    /// Reports something that must not be missed (a crashed process), on stdout
    /// when streaming (so it sits among the logs) and on stderr when quiet.
    pub fn alert(&self, name: &str, message: &str) {
        let prefix = self.prefix(name, RED_BOLD);
        let message = if self.color {
            format!("\x1b[{RED_BOLD}m{message}\x1b[0m")
        } else {
            message.to_owned()
        };
        if self.stream {
            let _ = writeln!(std::io::stdout().lock(), "{prefix} {message}");
        } else {
            // The macro, not a raw stderr handle: the test harness captures it,
            // so it shows up with the output of the test that caused it.
            eprintln!("{prefix} {message}");
        }
    }

    fn prefix(&self, name: &str, color: &str) -> String {
        let width = self.width;
        if self.color {
            format!("\x1b[{color}m{name:>width$} |\x1b[0m")
        } else {
            format!("{name:>width$} |")
        }
    }
}

/// A stable color per name: distinct ones for the fleet's known pieces, a
/// hashed one for anything else.
fn color_for(name: &str) -> &'static str {
    match name {
        "dev" => "1",
        "auth" => "32",
        "tickets" => "36",
        "orders" => "35",
        "payments" => "33",
        "expiration" => "34",
        "client" => "96",
        "nats" => "92",
        "mongo" => "93",
        "redis" => "95",
        "stripe" => "94",
        _ => {
            let hash = name.bytes().fold(0usize, |hash, byte| {
                hash.wrapping_mul(31).wrapping_add(usize::from(byte))
            });
            PALETTE[hash % PALETTE.len()]
        }
    }
}
