//! The local ingress: a streaming HTTP/1.1 reverse proxy that routes exactly
//! like the Kubernetes ingress, by [`crate::routes`].
//!
//! For each request it picks the service from the path, then forwards method,
//! path and query, headers (cookies included) and the body — streamed both
//! ways, never buffered — to that service's local address. It behaves like
//! ingress-nginx where it matters to the services and the browser client:
//!
//! - `Host` is passed through unchanged; `X-Forwarded-For` / `X-Real-IP` are
//!   set to the client address (not appended: like ingress-nginx without
//!   `use-forwarded-headers`, a client cannot forge them; the address is the
//!   connection's peer, or what `X-Forwarded-For` says only when the peer is
//!   one of [`IngressOptions::trusted_proxies`]), `X-Forwarded-Proto`
//!   is `http`, `X-Forwarded-Host` the original host, `X-Forwarded-Port` the
//!   ingress port, and `X-Request-ID` is kept or generated.
//! - Hop-by-hop headers are dropped; everything else, including several
//!   `Set-Cookie` headers, is passed through as is.
//! - A service with no upstream address answers 503, one that can't be reached
//!   502, both with the fleet's error body
//!   `{"errors":[{"message":"Service unavailable"}]}`.
//! - A service with several replicas is balanced round-robin
//!   ([`crate::balance`]); a replica that refuses the connection is skipped for
//!   a moment, and a request without a body goes to the next replica at once
//!   (one with a body was consumed by the attempt: it gets the 502).
//!
//!
//! Slow or half-open clients cannot exhaust it ([`IngressOptions`]): a client
//! must send a request's headers within `header_timeout` — which also closes
//! a kept-alive connection idle that long — and past `max_connections` open
//! connections a new one is answered 503 at once and closed. With a
//! `rate_limit` (`EDGE_RATE_LIMIT`, off unless set) each client address gets
//! a token bucket ([`crate::ratelimit`]); a request over it is answered 429
//! `Too many requests, try again later` with `Retry-After`.
//!
//! Upstream connections are kept alive and pooled (the ingress sits on the hot
//! path of the benchmarks). [`serve`] takes a shutdown future: on shutdown it
//! stops accepting, lets in-flight requests finish (bounded), and returns.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Body as _;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use common::client::TrustedProxies;
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;

use crate::balance::{self, Pool, Upstreams};
use crate::ratelimit::{Limiter, RateLimit};
use crate::routes::{self, RouteTable};

/// The body type of the ingress's responses: a streamed upstream body or a
/// small error body.
pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// How long in-flight requests may take to finish after shutdown is requested.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The error body for an unreachable service.
const UNAVAILABLE_BODY: &str = r#"{"errors":[{"message":"Service unavailable"}]}"#;

/// The error body of a request over the edge rate limit.
const RATE_LIMITED_BODY: &str = r#"{"errors":[{"message":"Too many requests, try again later"}]}"#;

/// What a connection over `max_connections` is told before it is closed.
const TOO_MANY_CONNECTIONS: &str = concat!(
    "HTTP/1.1 503 Service Unavailable\r\n",
    "content-type: application/json; charset=utf-8\r\n",
    "retry-after: 1\r\n",
    "connection: close\r\n",
    "content-length: 64\r\n",
    "\r\n",
    r#"{"errors":[{"message":"Too many connections, try again later"}]}"#,
);

/// The ingress's own bounds and limits; every one a setting of `dev`
/// ([`IngressOptions::from_env`], listed by [`IngressOptions::SETTINGS`]).
#[derive(Debug, Clone)]
pub struct IngressOptions {
    /// Requests per client address (`EDGE_RATE_LIMIT`); `None`: unlimited.
    pub rate_limit: Option<RateLimit>,
    /// Peers whose `X-Forwarded-For` names the client
    /// (`EDGE_TRUSTED_PROXIES`, default none: the ingress is the edge, and
    /// no client can forge its address). `127.0.0.1` makes the web client's
    /// API calls count as the visitors whose addresses it hands on — at the
    /// price of letting any loopback client claim an address.
    pub trusted_proxies: TrustedProxies,
    /// How long a client may take to send a request's headers, and how long
    /// a kept-alive connection may sit idle (`INGRESS_HEADER_TIMEOUT_SECONDS`).
    pub header_timeout: Duration,
    /// Open client connections at most (`INGRESS_MAX_CONNECTIONS`).
    pub max_connections: usize,
}

impl Default for IngressOptions {
    fn default() -> Self {
        Self {
            rate_limit: None,
            trusted_proxies: TrustedProxies::none(),
            header_timeout: Duration::from_secs(10),
            max_connections: 8192,
        }
    }
}

impl IngressOptions {
    /// The settings and what they mean, for `dev help`.
    pub const SETTINGS: [(&'static str, &'static str); 4] = [
        (
            "EDGE_RATE_LIMIT",
            "requests per client address, e.g. 50/s,burst=100 (token bucket, 429 past it); off unless set",
        ),
        (
            "EDGE_TRUSTED_PROXIES",
            "addresses/CIDRs whose X-Forwarded-For names the client (default: none)",
        ),
        (
            "INGRESS_HEADER_TIMEOUT_SECONDS",
            "time to send a request's headers, and to sit idle between requests (default 10)",
        ),
        (
            "INGRESS_MAX_CONNECTIONS",
            "open client connections before new ones get a 503 (default 8192)",
        ),
    ];

    /// The defaults, overridden by the variables of [`Self::SETTINGS`] that
    /// are set and not empty.
    pub fn from_env() -> anyhow::Result<Self> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let mut options = Self::default();
        if let Some(limit) = var("EDGE_RATE_LIMIT") {
            options.rate_limit = Some(
                limit
                    .parse()
                    .map_err(|e| anyhow::anyhow!("EDGE_RATE_LIMIT: {e}"))?,
            );
        }
        if let Some(trusted) = var("EDGE_TRUSTED_PROXIES") {
            options.trusted_proxies = trusted
                .parse()
                .map_err(|e| anyhow::anyhow!("EDGE_TRUSTED_PROXIES: {e}"))?;
        }
        if let Some(seconds) = var("INGRESS_HEADER_TIMEOUT_SECONDS") {
            let seconds: u64 = seconds
                .trim()
                .parse()
                .ok()
                .filter(|s| *s > 0)
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "INGRESS_HEADER_TIMEOUT_SECONDS: a whole number of seconds, at least 1"
                    )
                })?;
            options.header_timeout = Duration::from_secs(seconds);
        }
        if let Some(max) = var("INGRESS_MAX_CONNECTIONS") {
            options.max_connections =
                max.trim().parse().ok().filter(|m| *m > 0).ok_or_else(|| {
                    anyhow::anyhow!("INGRESS_MAX_CONNECTIONS: a number, at least 1")
                })?;
        }
        Ok(options)
    }
}

/// Serves the ingress on `listener` until `shutdown` resolves, routing to
/// `upstreams` (service name → local address, or the addresses of its
/// replicas) by the fleet's routing table, with the default
/// [`IngressOptions`] (no rate limit).
pub async fn serve<F>(
    listener: TcpListener,
    upstreams: impl Into<Upstreams>,
    shutdown: F,
) -> anyhow::Result<()>
where
    F: Future<Output = ()> + Send,
{
    serve_with(listener, upstreams, IngressOptions::default(), shutdown).await
}

/// [`serve`] with these bounds and limits.
pub async fn serve_with<F>(
    listener: TcpListener,
    upstreams: impl Into<Upstreams>,
    options: IngressOptions,
    shutdown: F,
) -> anyhow::Result<()>
where
    F: Future<Output = ()> + Send,
{
    let connections = Arc::new(Semaphore::new(options.max_connections));
    let proxy = Arc::new(Proxy::new(routes::table(), upstreams.into(), &options));
    let local_port = listener.local_addr()?.port();
    let graceful = GracefulShutdown::new();
    let mut server = http1::Builder::new();
    server
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(options.header_timeout);

    tokio::pin!(shutdown);
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // e.g. out of file descriptors: back off instead of spinning.
                    tracing::warn!(%error, "ingress: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
            tracing::warn!(%remote, "ingress: too many connections; refused");
            tokio::spawn(async move {
                let mut stream = stream;
                let refuse = async {
                    stream.write_all(TOO_MANY_CONNECTIONS.as_bytes()).await?;
                    stream.shutdown().await
                };
                let _ = tokio::time::timeout(Duration::from_secs(1), refuse).await;
            });
            continue;
        };
        let proxy = Arc::clone(&proxy);
        let service = service_fn(move |request| {
            let proxy = Arc::clone(&proxy);
            async move { Ok::<_, Infallible>(proxy.forward(request, remote, local_port).await) }
        });
        let connection = graceful.watch(server.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, %remote, "ingress: connection ended with an error");
            }
            drop(permit);
        });
    }

    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("ingress: in-flight requests did not finish within {DRAIN_TIMEOUT:?}");
    }
    Ok(())
}

/// Routing plus a pooled upstream client, and the edge's rate limit.
struct Proxy {
    table: &'static RouteTable,
    upstreams: HashMap<String, Pool>,
    client: Client<HttpConnector, ProxyBody>,
    limiter: Option<Limiter>,
    trusted_proxies: TrustedProxies,
}

impl Proxy {
    fn new(table: &'static RouteTable, upstreams: Upstreams, options: &IngressOptions) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        Self {
            table,
            upstreams: balance::pools(upstreams),
            client,
            limiter: options.rate_limit.map(Limiter::new),
            trusted_proxies: options.trusted_proxies.clone(),
        }
    }

    async fn forward(
        &self,
        request: Request<Incoming>,
        remote: SocketAddr,
        local_port: u16,
    ) -> Response<ProxyBody> {
        let client = self
            .trusted_proxies
            .client_ip(remote.ip(), request.headers());
        if let Some(limiter) = &self.limiter
            && let Err(wait) = limiter.check(client)
        {
            tracing::debug!(%client, "ingress: over the edge rate limit");
            return rate_limited(wait);
        }
        let service = self.table.service_for(request.uri().path());
        let Some(pool) = self.upstreams.get(service).filter(|pool| pool.len() > 0) else {
            return unavailable(StatusCode::SERVICE_UNAVAILABLE);
        };
        let path_and_query = request
            .uri()
            .path_and_query()
            .map_or("/", |path_and_query| path_and_query.as_str())
            .to_owned();

        // The host the client asked for: the Host header, or the authority of an
        // absolute-form request target.
        let host = request.headers().get(header::HOST).cloned().or_else(|| {
            let authority = request.uri().authority()?;
            HeaderValue::from_str(authority.as_str()).ok()
        });
        // Without a body, a request refused by one replica can go to the next.
        let replayable = request.body().is_end_stream();
        let (parts, body) = request.into_parts();
        let mut headers = parts.headers;
        remove_hop_by_hop(&mut headers);
        set_forwarded(&mut headers, client, host, local_port);
        let mut body = Some(body.boxed());

        let mut tried = Vec::new();
        while let Some((index, upstream)) = pool.pick(&tried) {
            tried.push(index);
            let Ok(uri) = format!("http://{upstream}{path_and_query}").parse::<Uri>() else {
                return plain(StatusCode::BAD_REQUEST, "Bad request target");
            };
            let Some(attempt_body) = body.take().or_else(|| replayable.then(empty)) else {
                break;
            };
            let mut attempt = Request::new(attempt_body);
            *attempt.method_mut() = parts.method.clone();
            *attempt.uri_mut() = uri;
            *attempt.version_mut() = Version::HTTP_11;
            *attempt.headers_mut() = headers.clone();

            match self.client.request(attempt).await {
                Ok(response) => {
                    let (mut parts, body) = response.into_parts();
                    remove_hop_by_hop(&mut parts.headers);
                    return Response::from_parts(parts, body.boxed());
                }
                Err(error) if error.is_connect() => {
                    // Not sent: the replica is down (killed, restarting).
                    pool.mark_down(index);
                    tracing::warn!(service, %upstream, error = %error_chain(&error), "ingress: upstream refused the connection");
                }
                Err(error) => {
                    tracing::warn!(service, %upstream, error = %error_chain(&error), "ingress: upstream unreachable");
                    return unavailable(StatusCode::BAD_GATEWAY);
                }
            }
        }
        unavailable(StatusCode::BAD_GATEWAY)
    }
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Headers named in `Connection` are hop-by-hop too.
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

fn set_forwarded(headers: &mut HeaderMap, client: IpAddr, host: Option<HeaderValue>, port: u16) {
    let client_ip = HeaderValue::from_str(&client.to_string()).ok();
    if let Some(ip) = client_ip {
        headers.insert("x-forwarded-for", ip.clone());
        headers.insert("x-real-ip", ip);
    }
    headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    headers.insert("x-forwarded-port", HeaderValue::from(port));
    match host {
        Some(host) => {
            headers.insert("x-forwarded-host", host);
        }
        None => {
            headers.remove("x-forwarded-host");
        }
    }
    if !headers.contains_key("x-request-id") {
        let id: u128 = rand::random();
        if let Ok(id) = HeaderValue::from_str(&format!("{id:032x}")) {
            headers.insert("x-request-id", id);
        }
    }
}

fn unavailable(status: StatusCode) -> Response<ProxyBody> {
    let mut response = Response::new(full(UNAVAILABLE_BODY));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response
}

fn rate_limited(wait: Duration) -> Response<ProxyBody> {
    let mut response = Response::new(full(RATE_LIMITED_BODY));
    *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    headers.insert(header::RETRY_AFTER, common::error::retry_after_value(wait));
    response
}

fn plain(status: StatusCode, message: &'static str) -> Response<ProxyBody> {
    let mut response = Response::new(full(message));
    *response.status_mut() = status;
    response
}

fn empty() -> ProxyBody {
    http_body_util::Empty::new()
        .map_err(|never: Infallible| match never {})
        .boxed()
}

fn full(text: &'static str) -> ProxyBody {
    Full::new(Bytes::from_static(text.as_bytes()))
        .map_err(|never: Infallible| match never {})
        .boxed()
}

/// `error: cause: cause` — hyper's top-level client errors say little alone.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
