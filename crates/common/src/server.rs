//! Serving a service: the middleware every service shares, and graceful
//! shutdown.
//!
//! [`finish`] wraps a service's router with the fleet's common layers: a
//! request id (`x-request-id`, generated when absent and echoed back) on a
//! span around every request, the JSON 404 for unknown routes and methods, a
//! body-size limit, a panic guard that answers the opaque 500, and the
//! request metrics — and adds `GET /metrics` (see [`crate::metrics`]).
//! [`serve`] runs it until the shutdown token fires, then stops accepting and
//! lets in-flight requests finish.
//!
//! The body limit is enforced twice: a request that *declares* a larger body
//! (`Content-Length`) is refused with the 413 before any handler runs, on
//! every route, whether or not it reads its body; a chunked body is cut off
//! at the limit by the extractors ([`crate::error::Json`] answers the same
//! 413).
//!
//! A body refused (or ignored) before its end is then read to its end in the
//! background and thrown away — at most [`DRAIN_LIMIT`] bytes for at most
//! [`DRAIN_TIME`] — rather than left unread. Closing a connection with unread
//! request data makes the kernel reset it, and a reset can destroy the 413
//! before the client (or a proxy still streaming the body, like the local
//! ingress) reads it: the client would see a dropped connection or a 502
//! instead of the answer. This is the "lingering close" of nginx and Apache.

use std::{
    any::Any,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use anyhow::Context as _;
use axum::{
    Router,
    body::{Body, Bytes},
    extract::{DefaultBodyLimit, Request},
    http::{HeaderName, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::{
    catch_panic::CatchPanicLayer,
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, RequestId, SetRequestIdLayer},
    trace::{DefaultOnResponse, TraceLayer},
};
use tracing::Level;

use crate::{
    bus::{Bus, Listener},
    config::{ConfigError, Env},
    error::{Error, not_found},
    metrics,
    outbox::Relay,
    overload::Limits,
};

/// Largest request body any route accepts.
pub const BODY_LIMIT: usize = 64 * 1024;

/// The most of an unwanted request body read (and discarded) after the
/// answer, so that the client hears the answer (see the module docs).
pub const DRAIN_LIMIT: usize = 8 * 1024 * 1024;

/// The longest time spent reading an unwanted request body after the answer.
pub const DRAIN_TIME: Duration = Duration::from_secs(5);

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A JSON API service's complete router: its documented routes with
/// `/openapi.json` (the description `doc` starts, see
/// [`crate::openapi::document`], and the routes complete from the same
/// code), the probes (`/healthz`, `/readyz` from [`Ready`]), then
/// [`finish`]'s `/metrics` and layers.
///
/// [`Ready`]: crate::health::Ready
pub fn api_app<S>(
    doc: utoipa::openapi::OpenApi,
    routes: utoipa_axum::router::OpenApiRouter<S>,
    state: S,
) -> Router
where
    S: crate::health::Ready + Clone + Send + Sync + 'static,
{
    let api = utoipa_axum::router::OpenApiRouter::with_openapi(doc).merge(routes);
    finish(
        Router::new()
            .merge(crate::openapi::serve(api))
            .merge(crate::health::routes())
            .with_state(state),
    )
}

/// Adds `GET /metrics` and the fleet's common layers to a service's complete
/// router.
pub fn finish(router: Router) -> Router {
    layers(
        router
            .route("/metrics", get(metrics::serve))
            .fallback(not_found)
            .method_not_allowed_fallback(not_found),
    )
}

/// The common layers of [`finish`] without its JSON 404 fallback and without
/// `/metrics`, for a service whose unknown routes answer in another form (the
/// web client's HTML page); it sets its own fallbacks first.
pub fn layers(router: Router) -> Router {
    router
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn(guard_body))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(middleware::from_fn(metrics::track))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request| {
                    let id = req
                        .extensions()
                        .get::<RequestId>()
                        .and_then(|id| id.header_value().to_str().ok())
                        .unwrap_or("-");
                    tracing::info_span!("request", method = %req.method(), uri = %req.uri(), request_id = %id)
                })
                .on_request(())
                .on_response(DefaultOnResponse::new().level(Level::INFO)),
        )
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
}

/// 413 for a request whose `Content-Length` is over [`BODY_LIMIT`], before
/// anything reads it; and every request body drained rather than left unread
/// (see the module docs).
async fn guard_body(request: Request, next: Next) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok());
    let request = if http_body::Body::is_end_stream(request.body()) {
        request
    } else {
        request.map(|body| Body::new(DrainOnDrop::new(body)))
    };
    match declared {
        // The request, dropped here, drains its body.
        Some(length) if length > BODY_LIMIT as u64 => Error::PayloadTooLarge.into_response(),
        _ => next.run(request).await,
    }
}

/// A request body that, dropped before its end, is read to the end (within
/// [`DRAIN_LIMIT`] and [`DRAIN_TIME`]) by a background task.
struct DrainOnDrop {
    inner: Option<Body>,
}

impl DrainOnDrop {
    fn new(body: Body) -> Self {
        Self { inner: Some(body) }
    }
}

impl http_body::Body for DrainOnDrop {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<Frame<Bytes>, axum::Error>>> {
        match self.get_mut().inner.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner
            .as_ref()
            .is_none_or(http_body::Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), http_body::Body::size_hint)
    }
}

impl Drop for DrainOnDrop {
    fn drop(&mut self) {
        let Some(mut body) = self.inner.take() else {
            return;
        };
        if http_body::Body::is_end_stream(&body) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            let drained = async {
                let mut read = 0;
                while let Some(Ok(frame)) = body.frame().await {
                    read += frame.data_ref().map_or(0, Bytes::len);
                    if read > DRAIN_LIMIT {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(DRAIN_TIME, drained).await;
        });
    }
}

fn panic_response(panic: Box<dyn Any + Send + 'static>) -> Response {
    let detail = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic");
    Error::from(anyhow::anyhow!("handler panicked: {detail}")).into_response()
}

/// A token cancelled on SIGTERM or Ctrl-C.
pub fn shutdown_token() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received");
        trigger.cancel();
    });
    token
}

async fn wait_for_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

/// Serves `app` on `listener` until `shutdown` is cancelled, then drains
/// in-flight requests (at most `drain` long).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: CancellationToken,
    drain: Duration,
) -> anyhow::Result<()> {
    let signal = shutdown.clone();
    // Peers are recorded for `client::ClientIp` (limits per client address).
    let server = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(async move { signal.cancelled().await });
    tokio::select! {
        result = server => result.map_err(Into::into),
        () = async { shutdown.cancelled().await; tokio::time::sleep(drain).await } => {
            tracing::warn!("in-flight requests did not finish in {drain:?}; stopping anyway");
            Ok(())
        }
    }
}

/// The future of a task that runs beside the server.
pub type Task = futures::future::BoxFuture<'static, anyhow::Result<()>>;

/// How a background task starts: given the service's stop token, it does
/// what must succeed before the service answers (creating a consumer) and
/// returns the task to run.
type Start = Box<
    dyn FnOnce(CancellationToken) -> futures::future::BoxFuture<'static, anyhow::Result<Task>>
        + Send,
>;

/// A service bound to its port: its router and the background tasks it
/// runs (event listeners, outbox relays, schedulers), all under one stop
/// token. What every service's `Application::build` returns; the service's
/// own code says only which router and which tasks.
///
/// [`Service::run_until`] starts the tasks in the order they were added; if
/// one fails to start, the ones already running are stopped and joined
/// before the error is returned, so nothing outlives a failed start. Then
/// it serves (see [`run`]) until the caller's token is cancelled or a task
/// fails, which stops every other task — never the caller's token.
pub struct Service {
    name: &'static str,
    listener: TcpListener,
    port: u16,
    router: Router,
    starts: Vec<Start>,
}

/// What every service reads alike: the port (`PORT`, default 3000), whether
/// it runs for local development (`APP_ENV=development`: readable logs,
/// cookies without `Secure`) and the bound on requests in flight and their
/// deadline (`MAX_IN_FLIGHT_REQUESTS`, `REQUEST_TIMEOUT_SECONDS`).
///
/// The default is what tests start a service with: any free port (`0`),
/// production mode, the default limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Serving {
    pub port: u16,
    pub development: bool,
    pub limits: Limits,
}

impl Serving {
    /// Reads `RUST_LOG` (the log filter's), `PORT`, `APP_ENV` and the limits.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        env.log_filter();
        Ok(Self {
            port: env.port()?,
            development: env.development(),
            limits: Limits::from_env(env)?,
        })
    }
}

impl Service {
    /// Binds the port on every interface (`0` picks a free one) for
    /// `router`, behind the in-flight bound and the deadline of `serving`.
    pub async fn bind(
        name: &'static str,
        serving: Serving,
        router: Router,
    ) -> anyhow::Result<Self> {
        let port = serving.port;
        let router = serving.limits.apply(router);
        let listener = TcpListener::bind(("0.0.0.0", port))
            .await
            .with_context(|| format!("failed to bind port {port}"))?;
        let port = listener.local_addr()?.port();
        Ok(Self {
            name,
            listener,
            port,
            router,
            starts: Vec::new(),
        })
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Runs `task(stop)` beside the server; it must return once `stop` is
    /// cancelled.
    pub fn task<F, Fut>(mut self, task: F) -> Self
    where
        F: FnOnce(CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        self.starts.push(Box::new(move |stop| {
            Box::pin(async move { Ok(Box::pin(task(stop)) as Task) })
        }));
        self
    }

    /// Consumes `listener`'s events as `service`'s durable consumer; the
    /// consumer exists before the server answers.
    pub fn listen<L: Listener>(mut self, bus: &Bus, service: &'static str, listener: L) -> Self {
        let bus = bus.clone();
        self.starts.push(Box::new(move |stop| {
            Box::pin(async move {
                let running = bus.listen(service, listener, stop).await?;
                Ok(Box::pin(async move { running.await? }) as Task)
            })
        }));
        self
    }

    /// Publishes `relay`'s outbox, or — `None`, a test playing a crash
    /// between each write and its publish — says that nothing will.
    pub fn relay(self, relay: Option<Relay>) -> Self {
        match relay {
            Some(relay) => self.task(move |stop| relay.run(stop)),
            None => {
                tracing::warn!("outbox relay disabled: events stay in the outbox");
                self
            }
        }
    }

    /// Starts the tasks, then serves until `shutdown` is cancelled or a task
    /// fails; drains in-flight requests and joins every task before it
    /// returns.
    pub async fn run_until(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let stop = shutdown.child_token();
        let mut background = tokio::task::JoinSet::new();
        for start in self.starts {
            match start(stop.clone()).await {
                Ok(task) => {
                    background.spawn(task);
                }
                Err(err) => {
                    stop.cancel();
                    while background.join_next().await.is_some() {}
                    return Err(err.context(format!("{} failed to start", self.name)));
                }
            }
        }
        tracing::info!(port = self.port, "{} listening", self.name);
        run(self.listener, self.router, background, stop).await
    }
}

/// Runs a service: the HTTP server plus its background tasks (event
/// listeners, outbox relays), all tied to one shutdown token.
///
/// On shutdown the server stops accepting and drains, listeners finish the
/// message in hand, and relays publish what they were told about. If a
/// background task fails on its own, the whole service stops with its error
/// (the orchestrator restarts it) rather than limp on half-deaf.
pub async fn run(
    listener: TcpListener,
    app: Router,
    mut background: tokio::task::JoinSet<anyhow::Result<()>>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let http = tokio::spawn(serve(
        listener,
        app,
        shutdown.clone(),
        Duration::from_secs(20),
    ));
    let mut failure = None;
    while let Some(joined) = background.join_next().await {
        let result = joined.map_err(anyhow::Error::from).and_then(|r| r);
        if let Err(err) = result {
            if !shutdown.is_cancelled() {
                tracing::error!(
                    error = format!("{err:#}"),
                    "background task failed; stopping the service"
                );
                shutdown.cancel();
            }
            failure.get_or_insert(err);
        }
    }
    // No background tasks (auth) — or all done: wait for the server.
    let served = http.await.map_err(anyhow::Error::from).and_then(|r| r);
    match failure {
        Some(err) => Err(err),
        None => served,
    }
}
