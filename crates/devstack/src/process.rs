//! Supervised child processes: own process group, prefixed logs, a watchdog.
//!
//! Every piece of the local stack (nats-server, the Mongo-wire server, redis,
//! the Stripe fake, each service) is a [`Process`]:
//!
//! - **Own process group.** The child is the leader of a new group, so a
//!   terminal's Ctrl-C reaches only the launcher (which then shuts everything
//!   down in order), and stopping signals the whole group, including anything
//!   the child forked (node, python).
//! - **Runtime-independent.** Output is read and the exit is awaited on plain
//!   threads, not tokio tasks: a process started from one `#[tokio::test]`
//!   runtime (e.g. infrastructure shared by a test binary through a static)
//!   keeps working after that runtime is gone.
//! - **Logs.** Each stdout/stderr line goes to [`Output`] with the process's
//!   prefix, and the last [`TAIL_LINES`] lines are kept for error messages.
//! - **Loud crashes.** An exit nobody asked for (no [`Process::stop`] /
//!   [`Process::kill`]) is reported through [`Output::alert`].
//! - **Watchdog.** Statics in `cargo test` are never dropped, and a launcher
//!   can be `kill -9`ed, so `Drop` alone cannot guarantee cleanup. Next to each
//!   child runs a tiny `sh` watchdog (in its own group, so Ctrl-C doesn't kill
//!   it) blocked reading a pipe whose only writer is the owning process. When the
//!   owner exits for any reason the kernel closes the pipe, the read returns EOF
//!   and the watchdog terminates the child's group (SIGTERM, then SIGKILL). A
//!   clean stop writes `done` to the pipe instead, and the watchdog just exits.
//!   No polling, no pid reuse issues on the owner side.
//! - **Stopping.** [`Process::stop`] sends SIGTERM to the group, waits for the
//!   grace period, then SIGKILLs it. `Drop` SIGKILLs at once.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::sync::watch;

use crate::output::Output;

/// How many lines of each process's output are kept for error messages.
pub const TAIL_LINES: usize = 200;

/// How long the watchdog gives a process group between SIGTERM and SIGKILL
/// once the owner has died.
const WATCHDOG_GRACE_TENTHS: u32 = 50;

/// `$1` = the process group to guard, `$2` = grace period in tenths of a second.
const WATCHDOG_SCRIPT: &str = r#"
if read -r msg && [ "$msg" = done ]; then exit 0; fi
kill -TERM "-$1" 2>/dev/null || exit 0
i=0
while [ "$i" -lt "$2" ]; do
    kill -0 "-$1" 2>/dev/null || exit 0
    sleep 0.1
    i=$((i + 1))
done
kill -KILL "-$1" 2>/dev/null
exit 0
"#;

/// What to run: a program, its arguments, extra environment and working dir.
/// The child inherits the launcher's environment plus `env`.
#[derive(Debug, Clone)]
pub struct ProcessSpec {
    /// The name in log prefixes and messages (`nats`, `auth`, …).
    pub name: String,
    /// The executable.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// Variables set on top of the inherited environment.
    pub env: Vec<(OsString, OsString)>,
    /// Working directory (default: the launcher's).
    pub cwd: Option<PathBuf>,
}

impl ProcessSpec {
    /// A spec for `program` with no arguments or extra environment.
    pub fn new(name: impl Into<String>, program: impl Into<PathBuf>) -> Self {
        Self {
            name: name.into(),
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            cwd: None,
        }
    }

    /// Appends an argument.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Appends arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable for the child.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }
}

/// A running (or exited) supervised child process. See the module docs.
#[derive(Debug)]
pub struct Process {
    name: String,
    pid: u32,
    status: watch::Receiver<Option<ExitStatus>>,
    expected_exit: Arc<AtomicBool>,
    tail: Arc<Mutex<VecDeque<String>>>,
    watchdog: Option<Watchdog>,
    output: Output,
}

#[derive(Debug)]
struct Watchdog {
    child: Child,
    pipe: Option<ChildStdin>,
}

impl Process {
    /// Starts `spec` in its own process group, with its output going to `output`.
    pub fn spawn(spec: &ProcessSpec, output: &Output) -> anyhow::Result<Self> {
        let mut command = Command::new(&spec.program);
        command
            .args(&spec.args)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        if let Some(cwd) = &spec.cwd {
            command.current_dir(cwd);
        }
        let mut child = command.spawn().with_context(|| {
            format!("failed to start {} ({})", spec.name, spec.program.display())
        })?;
        let pid = child.id();

        let tail = Arc::new(Mutex::new(VecDeque::with_capacity(TAIL_LINES)));
        let (done_tx, done_rx) = mpsc::channel();
        if let Some(stdout) = child.stdout.take() {
            pump_lines(&spec.name, stdout, output, &tail, done_tx.clone());
        }
        if let Some(stderr) = child.stderr.take() {
            pump_lines(&spec.name, stderr, output, &tail, done_tx);
        }

        let expected_exit = Arc::new(AtomicBool::new(false));
        let (status_tx, status_rx) = watch::channel(None);
        {
            let name = spec.name.clone();
            let output = output.clone();
            let expected_exit = Arc::clone(&expected_exit);
            std::thread::Builder::new()
                .name(format!("wait-{name}"))
                .spawn(move || {
                    let status = child.wait();
                    // Let the readers flush the last lines before reporting, but
                    // don't hang on a grandchild that still holds the pipes.
                    for _ in 0..2 {
                        let _ = done_rx.recv_timeout(Duration::from_millis(500));
                    }
                    match status {
                        Ok(status) => {
                            if !expected_exit.load(Ordering::SeqCst) {
                                output.alert(&name, &format!("exited unexpectedly ({status})"));
                            }
                            status_tx.send_replace(Some(status));
                        }
                        Err(error) => {
                            output.alert(&name, &format!("could not wait for process: {error}"));
                        }
                    }
                })
                .context("failed to start a process waiter thread")?;
        }

        let watchdog = match spawn_watchdog(pid) {
            Ok(watchdog) => Some(watchdog),
            Err(error) => {
                // Without a watchdog, the process is still stopped by stop()/Drop.
                output.alert(&spec.name, &format!("no watchdog: {error:#}"));
                None
            }
        };

        Ok(Self {
            name: spec.name.clone(),
            pid,
            status: status_rx,
            expected_exit,
            tail,
            watchdog,
            output: output.clone(),
        })
    }

    /// The name used in log prefixes.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The child's pid, which is also its process group id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The exit status, once the process has exited.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        *self.status.borrow()
    }

    /// Whether the process is still running.
    pub fn is_running(&self) -> bool {
        self.exit_status().is_none()
    }

    /// Waits until the process exits.
    pub async fn wait(&self) -> ExitStatus {
        let mut status = self.status.clone();
        loop {
            if let Some(exit) = *status.borrow_and_update() {
                return exit;
            }
            if status.changed().await.is_err() {
                // The waiter thread is gone without a status (wait() failed):
                // fall back to polling the group.
                while self.group_alive() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                return ExitStatus::default();
            }
        }
    }

    /// The last `n` lines of the process's output (stdout and stderr).
    pub fn log_tail(&self, n: usize) -> Vec<String> {
        let tail = self
            .tail
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        tail.iter()
            .skip(tail.len().saturating_sub(n))
            .cloned()
            .collect()
    }

    /// The last `n` lines as one indented block, for error messages.
    pub fn log_tail_block(&self, n: usize) -> String {
        let lines = self.log_tail(n);
        if lines.is_empty() {
            return "    (no output)".to_owned();
        }
        lines
            .iter()
            .map(|line| format!("    {line}"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Sends SIGTERM to the process group without waiting; marks the coming
    /// exit as expected. Use [`Process::finish`] to wait for it.
    pub fn terminate(&self) {
        self.expected_exit.store(true, Ordering::SeqCst);
        if self.is_running() {
            self.signal(Signal::SIGTERM);
        }
    }

    /// After [`Process::terminate`]: waits up to `grace` for the exit, then
    /// SIGKILLs the group; also cleans up anything left in the group and the
    /// watchdog.
    pub async fn finish(&mut self, grace: Duration) -> anyhow::Result<ExitStatus> {
        let status = match tokio::time::timeout(grace, self.wait()).await {
            Ok(status) => status,
            Err(_) => {
                self.output.alert(
                    &self.name,
                    &format!("did not stop within {grace:?} after SIGTERM: killing it"),
                );
                self.signal(Signal::SIGKILL);
                tokio::time::timeout(Duration::from_secs(5), self.wait())
                    .await
                    .with_context(|| format!("{} (pid {}) survived SIGKILL", self.name, self.pid))?
            }
        };
        // Stragglers the leader forked and left behind in its group.
        self.signal(Signal::SIGKILL);
        self.dismiss_watchdog();
        Ok(status)
    }

    /// Graceful stop: SIGTERM, wait up to `grace`, then SIGKILL.
    pub async fn stop(&mut self, grace: Duration) -> anyhow::Result<ExitStatus> {
        self.terminate();
        self.finish(grace).await
    }

    /// `kill -9` on the group (fault tests), and waits for the exit.
    pub async fn kill(&mut self) -> anyhow::Result<ExitStatus> {
        self.expected_exit.store(true, Ordering::SeqCst);
        self.signal(Signal::SIGKILL);
        let status = tokio::time::timeout(Duration::from_secs(5), self.wait())
            .await
            .with_context(|| format!("{} (pid {}) survived SIGKILL", self.name, self.pid))?;
        self.dismiss_watchdog();
        Ok(status)
    }

    fn signal(&self, signal: Signal) {
        if let Ok(pid) = i32::try_from(self.pid) {
            // ESRCH (group already gone) is fine.
            let _ = killpg(Pid::from_raw(pid), signal);
        }
    }

    fn group_alive(&self) -> bool {
        i32::try_from(self.pid).is_ok_and(|pid| killpg(Pid::from_raw(pid), None).is_ok())
    }

    fn dismiss_watchdog(&mut self) {
        if let Some(mut watchdog) = self.watchdog.take() {
            if let Some(mut pipe) = watchdog.pipe.take() {
                let _ = pipe.write_all(b"done\n");
            }
            // It exits right after reading; reap it so it doesn't linger as a zombie.
            let _ = watchdog.child.wait();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.is_running() {
            self.expected_exit.store(true, Ordering::SeqCst);
            self.signal(Signal::SIGKILL);
        }
        self.dismiss_watchdog();
    }
}

fn spawn_watchdog(pid: u32) -> anyhow::Result<Watchdog> {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(WATCHDOG_SCRIPT)
        .arg("devstack-watchdog")
        .arg(pid.to_string())
        .arg(WATCHDOG_GRACE_TENTHS.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .context("failed to start the watchdog (sh)")?;
    let pipe = child.stdin.take();
    Ok(Watchdog { child, pipe })
}

/// Forwards each line of `reader` to the output and the tail buffer, on its
/// own thread; signals `done` at EOF.
fn pump_lines(
    name: &str,
    reader: impl Read + Send + 'static,
    output: &Output,
    tail: &Arc<Mutex<VecDeque<String>>>,
    done: mpsc::Sender<()>,
) {
    let (alert_name, alert_output) = (name.to_owned(), output.clone());
    let name = name.to_owned();
    let output = output.clone();
    let tail = Arc::clone(tail);
    let spawned = std::thread::Builder::new()
        .name(format!("log-{name}"))
        .spawn(move || {
            let mut reader = BufReader::new(reader);
            let mut buf = Vec::with_capacity(256);
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf);
                        let line = line.trim_end_matches(['\n', '\r']);
                        output.line(&name, line);
                        let mut tail = tail.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                        if tail.len() == TAIL_LINES {
                            tail.pop_front();
                        }
                        tail.push_back(line.to_owned());
                    }
                }
            }
            let _ = done.send(());
        });
    if let Err(error) = spawned {
        // Without a reader the child gets EPIPE on its output; better to know.
        alert_output.alert(
            &alert_name,
            &format!("failed to start a log reader thread: {error}"),
        );
    }
}

/// Fails unless `port` on 127.0.0.1 is free: a fixed port that is taken would
/// otherwise let a readiness probe talk to someone else's server.
pub fn ensure_port_free(port: u16, what: &str) -> anyhow::Result<()> {
    match std::net::TcpListener::bind(("127.0.0.1", port)) {
        Ok(_) => Ok(()),
        Err(error) => bail!(
            "port {port} for {what} is not available ({error}); is another `dev up` running? \
             Stop it or choose another port"
        ),
    }
}
