//! The load generator: a fixed number of HTTP/1.1 keep-alive connections,
//! each a closed loop (send, read the whole response, send the next), for a
//! warm-up and then a fixed measured duration.
//!
//! Built directly on hyper's connection API (no pool, no retries), so that
//! "32 connections" means exactly 32 TCP connections and the client's own
//! cost stays small. Every measured request's latency is kept (microseconds),
//! so percentiles are exact, not bucketed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, header};
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::stats::{self, Throughput};

/// One request to send.
#[derive(Debug, Clone)]
pub struct Req {
    pub method: Method,
    pub path: String,
    /// A `Cookie` header value.
    pub cookie: Option<HeaderValue>,
    /// A JSON body.
    pub body: Option<Bytes>,
}

impl Req {
    pub fn get(path: impl Into<String>) -> Self {
        Self {
            method: Method::GET,
            path: path.into(),
            cookie: None,
            body: None,
        }
    }

    pub fn post(path: impl Into<String>, body: impl Into<Bytes>) -> Self {
        Self {
            method: Method::POST,
            path: path.into(),
            cookie: None,
            body: Some(body.into()),
        }
    }

    pub fn cookie(mut self, cookie: &HeaderValue) -> Self {
        self.cookie = Some(cookie.clone());
        self
    }
}

/// Makes the next request of a connection (its index is given); `None`
/// when there is nothing left to send (a pool of ids is used up).
pub type MakeRequest = Arc<dyn Fn(usize) -> Option<Req> + Send + Sync>;
/// Judges a response (status, body): `true` when it is the expected answer.
pub type Check = Arc<dyn Fn(u16, &Bytes) -> bool + Send + Sync>;

/// How long and how wide a run is.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub connections: usize,
    pub warmup: Duration,
    pub duration: Duration,
}

/// Expects exactly `status`.
pub fn status_is(status: u16) -> Check {
    Arc::new(move |got, _| got == status)
}

/// Runs `make` against `addr` with `shape`, judging answers with `check`.
pub async fn run(
    addr: SocketAddr,
    shape: Shape,
    make: MakeRequest,
    check: Check,
) -> anyhow::Result<Throughput> {
    let started = Instant::now();
    let measure_from = started + shape.warmup;
    let deadline = measure_from + shape.duration;
    let workers: Vec<_> = (0..shape.connections)
        .map(|index| {
            let make = Arc::clone(&make);
            let check = Arc::clone(&check);
            tokio::spawn(worker(addr, index, measure_from, deadline, make, check))
        })
        .collect();
    let mut latencies = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    let mut ended = measure_from;
    let mut exhausted = false;
    for worker in workers {
        let outcome = worker.await.context("a load worker panicked")??;
        latencies.extend(outcome.latencies_us);
        errors += outcome.errors;
        first_error = first_error.or(outcome.first_error);
        ended = ended.max(outcome.ended);
        exhausted |= outcome.exhausted;
    }
    // Throughput over the time the connections were actually busy: the
    // measured duration, or less if a pool of ids ran out first.
    let elapsed = if exhausted {
        ended.saturating_duration_since(measure_from)
    } else {
        ended.max(deadline).saturating_duration_since(measure_from)
    };
    Ok(stats::throughput(latencies, errors, elapsed, first_error))
}

struct WorkerOutcome {
    latencies_us: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
    ended: Instant,
    exhausted: bool,
}

async fn worker(
    addr: SocketAddr,
    index: usize,
    measure_from: Instant,
    deadline: Instant,
    make: MakeRequest,
    check: Check,
) -> anyhow::Result<WorkerOutcome> {
    let host = HeaderValue::from_str(&addr.to_string())?;
    let mut outcome = WorkerOutcome {
        latencies_us: Vec::with_capacity(16 * 1024),
        errors: 0,
        first_error: None,
        ended: measure_from,
        exhausted: false,
    };
    let mut sender: Option<SendRequest<Full<Bytes>>> = None;
    loop {
        if Instant::now() >= deadline {
            break;
        }
        let Some(req) = make(index) else {
            outcome.exhausted = true;
            break;
        };
        let request = build(&req, &host)?;
        let begun = Instant::now();
        let answer = send(&mut sender, addr, request).await;
        let done = Instant::now();
        if begun < measure_from {
            continue;
        }
        outcome.ended = done;
        outcome
            .latencies_us
            .push(u64::try_from(done.duration_since(begun).as_micros()).unwrap_or(u64::MAX));
        let failure = match answer {
            Ok((status, body)) if check(status, &body) => None,
            Ok((status, body)) => Some(format!(
                "{} {} answered {status}: {}",
                req.method,
                req.path,
                String::from_utf8_lossy(&body[..body.len().min(200)])
            )),
            Err(error) => {
                sender = None;
                Some(format!("{} {}: {error:#}", req.method, req.path))
            }
        };
        if let Some(failure) = failure {
            outcome.errors += 1;
            outcome.first_error.get_or_insert(failure);
        }
    }
    Ok(outcome)
}

fn build(req: &Req, host: &HeaderValue) -> anyhow::Result<Request<Full<Bytes>>> {
    let mut builder = Request::builder()
        .method(req.method.clone())
        .uri(&req.path)
        .header(header::HOST, host)
        .header(header::ACCEPT, "application/json");
    if let Some(cookie) = &req.cookie {
        builder = builder.header(header::COOKIE, cookie);
    }
    let body = match &req.body {
        Some(body) => {
            builder = builder.header(header::CONTENT_TYPE, "application/json");
            body.clone()
        }
        None => Bytes::new(),
    };
    Ok(builder.body(Full::new(body))?)
}

async fn send(
    sender: &mut Option<SendRequest<Full<Bytes>>>,
    addr: SocketAddr,
    request: Request<Full<Bytes>>,
) -> anyhow::Result<(u16, Bytes)> {
    if sender.as_ref().is_none_or(SendRequest::is_closed) {
        *sender = Some(connect(addr).await?);
    }
    let Some(connection) = sender.as_mut() else {
        unreachable!("connected above");
    };
    connection.ready().await.context("connection not ready")?;
    let response = connection
        .send_request(request)
        .await
        .context("request failed")?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .context("reading the body failed")?
        .to_bytes();
    Ok((status, body))
}

async fn connect(addr: SocketAddr) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_nodelay(true)?;
    let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}
