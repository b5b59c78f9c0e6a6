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

    /// Documents with outbox entries still to publish. A collection scan on
    /// the server (nothing can index "the array is not empty"), so it is only
    /// asked once the stream looks quiet.
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
                .count_documents(doc! {"outbox.0": {"$exists": true}})
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
