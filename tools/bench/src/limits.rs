//! What the limits cost: one route through the fleet's own ingress (edge
//! rate limit off, as under `make dev`) and through a second ingress in
//! front of the same services with an edge rate limit far above the load
//! (every request takes its token and is served), alternating off, on, off,
//! on so that drift over the run falls on both sides alike.
//!
//! The services' own bounds (in-flight requests, deadline) are always on, in
//! both runs; their cost shows against reports from before they existed.

use std::collections::HashMap;
use std::net::SocketAddr;

use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::load::{self, Check, MakeRequest, Shape};
use crate::stats::Throughput;
use crate::system::Quiet;

/// Runs of each side.
const ROUNDS: usize = 2;

/// The limit of the "on" ingress: on, never reached by the load.
const GENEROUS: &str = "1000000/s,burst=1000000";

/// The route with the limits off and on.
#[derive(Debug, Clone, Serialize)]
pub struct LimitsCost {
    pub route: String,
    pub rate_limit: String,
    /// Each run of the route with the edge limit off, then on.
    pub off: Vec<Throughput>,
    pub on: Vec<Throughput>,
    /// Mean requests/s of each side.
    pub off_per_second: f64,
    pub on_per_second: f64,
    /// How much slower "on" is, in percent of "off" (negative: faster).
    pub cost_percent: f64,
}

/// Measures `route` (made by `make`, judged by `check`) [`ROUNDS`] times
/// each way; `ingress` is the fleet's, `upstreams` the services it routes to.
pub async fn measure(
    route: &str,
    ingress: SocketAddr,
    upstreams: HashMap<String, SocketAddr>,
    shape: Shape,
    quiet: &Quiet,
    make: MakeRequest,
    check: Check,
) -> anyhow::Result<LimitsCost> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let limited = listener.local_addr()?;
    let options = devstack::ingress::IngressOptions {
        rate_limit: Some(GENEROUS.parse().map_err(anyhow::Error::msg)?),
        ..devstack::ingress::IngressOptions::default()
    };
    let (stop, mut stopped) = watch::channel(false);
    let serving = tokio::spawn(devstack::ingress::serve_with(
        listener,
        upstreams,
        options,
        async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        },
    ));
    let mut off = Vec::new();
    let mut on = Vec::new();
    for _ in 0..ROUNDS {
        for (address, runs) in [(ingress, &mut off), (limited, &mut on)] {
            quiet.settle(std::time::Duration::from_secs(60)).await?;
            runs.push(load::run(address, shape, make.clone(), check.clone()).await?);
        }
    }
    let _ = stop.send(true);
    let _ = serving.await;
    let mean = |runs: &[Throughput]| {
        runs.iter().map(|r| r.per_second).sum::<f64>() / runs.len().max(1) as f64
    };
    let (off_per_second, on_per_second) = (mean(&off), mean(&on));
    let cost_percent = if off_per_second > 0.0 {
        (off_per_second - on_per_second) / off_per_second * 100.0
    } else {
        0.0
    };
    Ok(LimitsCost {
        route: route.to_owned(),
        rate_limit: GENEROUS.to_owned(),
        off,
        on,
        off_per_second,
        on_per_second,
        cost_percent,
    })
}

/// The report's paragraph.
pub fn render(cost: &LimitsCost) -> String {
    let runs = |runs: &[Throughput]| {
        runs.iter()
            .map(|r| format!("{:.0}", r.per_second))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "\n**Cost of the limits** — {} through the fleet's ingress (edge rate limit off) and through a second \
         ingress with `EDGE_RATE_LIMIT={}` (on, never reached), alternated: off {:.0} req/s ({}), on {:.0} req/s ({}); \
         the limits cost {:.1} %. The services' in-flight bound and deadline are on in both.",
        cost.route,
        cost.rate_limit,
        cost.off_per_second,
        runs(&cost.off),
        cost.on_per_second,
        runs(&cost.on),
        cost.cost_percent,
    )
}
