//! What the operating system and the infrastructure say: resident memory,
//! start-up times, and whether the fleet has finished its event work.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use devstack::Stack;
use futures::StreamExt as _;
use mongodb::bson::doc;
use serde::Serialize;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::stats;

/// `VmRSS` and `VmHWM` (peak) of a process, in KiB.
pub fn memory_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Resident memory of one process.
#[derive(Debug, Clone, Serialize)]
pub struct Memory {
    pub process: String,
    pub idle_mib: f64,
    pub peak_mib: f64,
}

pub fn mib(kib: u64) -> f64 {
    (kib as f64 / 1024.0 * 10.0).round() / 10.0
}

/// Start-up time of one binary: process start to the first `200` on
/// `/readyz` (with the infrastructure already up).
#[derive(Debug, Clone, Serialize)]
pub struct Startup {
    pub service: String,
    pub runs_ms: Vec<f64>,
    pub median_ms: f64,
}

/// Stops each service and starts it again `runs` times, timing spawn → ready
/// by probing `/readyz` every 5 ms (the fleet's own wait backs off to
/// 250 ms, too coarse to time with).
pub async fn startup_times(stack: &mut Stack, runs: usize) -> anyhow::Result<Vec<Startup>> {
    let names: Vec<String> = stack.fleet().names().map(str::to_owned).collect();
    let mut results = Vec::new();
    for name in names {
        let addr = stack
            .fleet()
            .addr(&name)
            .context("service without an address")?;
        let mut times = Vec::new();
        for _ in 0..runs {
            stack.fleet_mut().stop_service(&name).await?;
            let begun = Instant::now();
            let (started, ready_at) = tokio::join!(
                stack.fleet_mut().start_service(&name),
                first_ready(addr, begun)
            );
            started.with_context(|| format!("{name} did not start again"))?;
            times.push(crate::stats::round(ready_at?.as_secs_f64() * 1000.0));
        }
        let mut sorted = times.clone();
        sorted.sort_by(f64::total_cmp);
        results.push(Startup {
            service: name,
            median_ms: sorted[sorted.len() / 2],
            runs_ms: times,
        });
    }
    Ok(results)
}

async fn first_ready(addr: SocketAddr, begun: Instant) -> anyhow::Result<Duration> {
    let deadline = begun + Duration::from_secs(60);
    while Instant::now() < deadline {
        if readyz(addr).await {
            return Ok(begun.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    anyhow::bail!("{addr} not ready within 60 s")
}

async fn readyz(addr: SocketAddr) -> bool {
    let attempt = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream
            .write_all(
                format!("GET /readyz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await?;
        let mut head = [0_u8; 12];
        stream.read_exact(&mut head).await?;
        Ok::<_, std::io::Error>(head.ends_with(b"200"))
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .is_ok_and(|answer| answer.unwrap_or(false))
}

/// Watches JetStream and the outboxes, to wait until the fleet has no event
/// work left.
pub struct Quiet {
    jetstream: async_nats::jetstream::Context,
    mongo: mongodb::Client,
}

impl Quiet {
    pub async fn connect(nats_url: &str, mongo_uri: &str) -> anyhow::Result<Self> {
        let client = async_nats::connect(nats_url).await?;
        Ok(Self {
            jetstream: async_nats::jetstream::new(client),
            mongo: mongodb::Client::with_uri_str(mongo_uri).await?,
        })
    }

    /// Events still to deliver or to acknowledge, and the stream's last
    /// sequence number (which moves while anything is being published).
    async fn stream_state(&self) -> anyhow::Result<(u64, u64)> {
        let mut backlog = 0;
        let mut stream = self.jetstream.get_stream("TICKETING").await?;
        let last = stream.info().await?.state.last_sequence;
        let mut consumers = stream.consumers();
        while let Some(info) = consumers.next().await {
            let info = info?;
            backlog += info.num_pending + info.num_ack_pending as u64;
        }
        Ok((backlog, last))
    }

    /// Documents with outbox entries still to publish (through the relays'
    /// index); only asked once the stream looks quiet.
    async fn outbox_backlog(&self) -> anyhow::Result<u64> {
        let mut backlog = 0;
        for (db, collection) in [
            ("tickets", "tickets"),
            ("orders", "orders"),
            ("payments", "payments"),
        ] {
            backlog += self
                .mongo
                .database(db)
                .collection::<mongodb::bson::Document>(collection)
                .count_documents(common::outbox::pending(doc! {}))
                .await?;
        }
        Ok(backlog)
    }

    /// Waits until every consumer has caught up and nothing new was
    /// published for a while (NAKed events wait for redelivery, relays scan
    /// every 2 s), and no outbox holds an entry; returns how long until the
    /// fleet was last seen busy.
    pub async fn settle(&self, within: Duration) -> anyhow::Result<Duration> {
        const QUIET: Duration = Duration::from_millis(700);
        let begun = Instant::now();
        let mut quiet_since: Option<(Instant, u64)> = None;
        loop {
            let (backlog, last) = self.stream_state().await?;
            match quiet_since {
                Some((since, seq)) if backlog == 0 && seq == last => {
                    if since.elapsed() >= QUIET {
                        if self.outbox_backlog().await? == 0 {
                            return Ok(since.duration_since(begun));
                        }
                        quiet_since = None;
                    }
                }
                _ if backlog == 0 => quiet_since = Some((Instant::now(), last)),
                _ => quiet_since = None,
            }
            anyhow::ensure!(
                begun.elapsed() < within,
                "the fleet still had {backlog} events to process after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// `/proc`'s CPU times are in clock ticks of `USER_HZ`, which is 100 on
/// every Linux architecture the fleet runs on.
const TICKS_PER_SECOND: f64 = 100.0;

/// User + system CPU time of a process so far, in ticks (`/proc/<pid>/stat`
/// fields 14 and 15, counted after the command name's closing parenthesis,
/// which may itself hold spaces).
fn process_ticks(pid: u32) -> Option<u64> {
    stat_ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

fn stat_ticks(stat: &str) -> Option<u64> {
    let mut fields = stat.get(stat.rfind(')')? + 2..)?.split_whitespace();
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Ticks every CPU of the machine spent busy so far (`/proc/stat`'s first
/// line: everything but idle and iowait).
fn machine_busy_ticks() -> Option<u64> {
    busy_ticks(&std::fs::read_to_string("/proc/stat").ok()?)
}

fn busy_ticks(stat: &str) -> Option<u64> {
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    // user nice system idle iowait irq softirq steal (guest time is already
    // counted in user).
    let total: u64 = ticks.iter().take(8).sum();
    Some(total - ticks.get(3)? - ticks.get(4)?)
}

/// The processes whose CPU time a run is charged with: the fleet's services
/// and servers, and the bench process itself (the load generator, the
/// ingress and the bare-axum floor).
#[derive(Debug, Clone)]
pub struct CpuProbe {
    processes: Vec<(String, u32)>,
}

/// CPU times read at one instant.
#[derive(Debug, Clone)]
pub struct CpuSnapshot {
    at: Instant,
    processes: Vec<Option<u64>>,
    machine: Option<u64>,
}

/// One process's CPU time per request of a run.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessCpu {
    pub process: String,
    pub us_per_request: f64,
}

/// Where a run's CPU time went: per request, for each process and for the
/// whole machine, and how many of the machine's cores were busy.
#[derive(Debug, Clone, Serialize)]
pub struct CpuUse {
    pub seconds: f64,
    pub busy_cores: f64,
    pub machine_us_per_request: f64,
    pub processes: Vec<ProcessCpu>,
}

impl CpuUse {
    /// This process's share, µs per request (0 when it was not measured).
    pub fn of(&self, process: &str) -> f64 {
        self.processes
            .iter()
            .find(|p| p.process == process)
            .map_or(0.0, |p| p.us_per_request)
    }
}

impl CpuProbe {
    pub fn new(processes: impl IntoIterator<Item = (String, u32)>) -> Self {
        let mut processes: Vec<_> = processes.into_iter().collect();
        processes.push(("bench".to_owned(), std::process::id()));
        Self { processes }
    }

    pub fn snapshot(&self) -> CpuSnapshot {
        CpuSnapshot {
            at: Instant::now(),
            processes: self
                .processes
                .iter()
                .map(|(_, pid)| process_ticks(*pid))
                .collect(),
            machine: machine_busy_ticks(),
        }
    }

    /// Snapshots at `from` and at `to` (a run's measured part).
    pub async fn window(&self, from: Instant, to: Instant) -> (CpuSnapshot, CpuSnapshot) {
        tokio::time::sleep_until(from.into()).await;
        let first = self.snapshot();
        tokio::time::sleep_until(to.into()).await;
        (first, self.snapshot())
    }

    /// The CPU time between two snapshots, shared among `requests`.
    pub fn between(&self, (a, b): &(CpuSnapshot, CpuSnapshot), requests: usize) -> CpuUse {
        let seconds = b.at.saturating_duration_since(a.at).as_secs_f64();
        let per_request_us = |ticks: u64| {
            let us = ticks as f64 / TICKS_PER_SECOND * 1e6;
            stats::round(us / requests.max(1) as f64)
        };
        let delta = |x: Option<u64>, y: Option<u64>| y?.checked_sub(x?);
        let machine = delta(a.machine, b.machine).unwrap_or(0);
        CpuUse {
            seconds: stats::round(seconds),
            busy_cores: stats::round(machine as f64 / TICKS_PER_SECOND / seconds.max(1e-9)),
            machine_us_per_request: per_request_us(machine),
            processes: self
                .processes
                .iter()
                .zip(a.processes.iter().zip(&b.processes))
                .filter_map(|((name, _), (x, y))| {
                    Some(ProcessCpu {
                        process: name.clone(),
                        us_per_request: per_request_us(delta(*x, *y)?),
                    })
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_s_ticks_are_read_after_its_name() {
        // A name holding ") " must not shift the fields.
        let stat = "42 (tokio) rt S) S 1 42 42 0 -1 4194560 100 0 0 0 250 37 0 0 20 0 9 0";
        assert_eq!(stat_ticks(stat), Some(287));
        assert_eq!(stat_ticks("42 (short) S 1"), None);
    }

    #[test]
    fn the_machine_s_busy_ticks_leave_out_idle_and_iowait() {
        let stat = "cpu  100 5 50 9000 40 3 2 1 0 0\ncpu0 50 2 25 4500 20 1 1 0 0 0\n";
        assert_eq!(busy_ticks(stat), Some(161));
    }

    #[test]
    fn a_run_s_cpu_is_shared_among_its_requests() {
        let probe = CpuProbe::new([("auth".to_owned(), 1)]);
        let at = Instant::now();
        let a = CpuSnapshot {
            at,
            processes: vec![Some(10), Some(0)],
            machine: Some(100),
        };
        let b = CpuSnapshot {
            at: at + Duration::from_secs(2),
            processes: vec![Some(30), None],
            machine: Some(400),
        };
        let cpu = probe.between(&(a, b), 1000);
        // 20 ticks = 0.2 s over 1,000 requests; the machine's 300 ticks
        // over 2 s is 1.5 cores.
        assert_eq!(cpu.of("auth"), 200.0);
        assert_eq!(cpu.machine_us_per_request, 3000.0);
        assert_eq!(cpu.busy_cores, 1.5);
        // A process gone between the snapshots is left out, not counted 0.
        assert_eq!(cpu.processes.len(), 1);
    }
}
