//! The event-driven figures: propagation, expiration accuracy, the classic
//! concurrency scenario and the purchase race.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use futures::{StreamExt as _, TryStreamExt as _};
use mongodb::bson::{Bson, Document, doc, oid::ObjectId};
use serde::Serialize;
use serde_json::{Value, json};

use crate::api::{Api, User};
use crate::stats::{self, Latency};
use crate::system::Quiet;

/// The longest pause between two "has it arrived yet?" reads: they start
/// 2 ms apart and double up to this. Each read costs the database a query,
/// so polling flat out would slow down the very propagation it measures;
/// the figures are pessimistic by at most this much. (25 ms until a run
/// showed created → orderable p50 33 ms, p99 66 ms: reads at 30 and 55 ms
/// after the answer, so the tail was mostly the wait for the next read.)
pub const POLL: Duration = Duration::from_millis(10);

/// The pause before the `attempt`-th repeated read.
fn poll_pause(attempt: u32) -> Duration {
    Duration::from_millis(2u64 << attempt.min(4)).min(POLL)
}

/// Microseconds since the epoch (the services stamp `expiresAt` with the
/// same clock).
fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

fn price_of(body: &Value) -> Option<f64> {
    body["ticket"]["price"].as_f64()
}

/// When each order was seen cancelled, and seen expired, on the bus.
#[derive(Clone, Default)]
pub struct BusWatch {
    cancelled: Arc<Mutex<HashMap<String, i64>>>,
    expired: Arc<Mutex<HashMap<String, i64>>>,
}

impl BusWatch {
    /// Subscribes (core NATS, next to the services' durable consumers) to
    /// `order.cancelled` and `expiration.complete`, recording the first
    /// sighting of each order id.
    pub async fn start(nats_url: &str) -> anyhow::Result<Self> {
        let client = async_nats::connect(nats_url).await?;
        let watch = Self::default();
        for (subject, field, seen) in [
            ("order.cancelled", "id", Arc::clone(&watch.cancelled)),
            ("expiration.complete", "orderId", Arc::clone(&watch.expired)),
        ] {
            let mut subscription = client.subscribe(subject).await?;
            tokio::spawn(async move {
                while let Some(message) = subscription.next().await {
                    let at = now_us();
                    let Ok(payload) = serde_json::from_slice::<Value>(&message.payload) else {
                        continue;
                    };
                    if let Some(id) = payload[field].as_str() {
                        seen.lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .entry(id.to_owned())
                            .or_insert(at);
                    }
                }
            });
        }
        client.flush().await?;
        Ok(watch)
    }

    fn cancelled_at(&self, id: &str) -> Option<i64> {
        self.cancelled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .copied()
    }

    fn expired_at(&self, id: &str) -> Option<i64> {
        self.expired
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .copied()
    }
}

/// A ticket sold in the propagation phase, and its order.
#[derive(Debug, Clone)]
pub struct Sold {
    pub ticket_id: String,
    pub order_id: String,
    pub buyer: usize,
    /// `expiresAt`, µs since the epoch.
    pub expires_at_us: i64,
    /// When the order's `201` arrived, µs since the epoch.
    pub ordered_at_us: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Propagation {
    pub tickets: usize,
    pub pipelines: usize,
    pub seconds: f64,
    /// POST /api/tickets answered → POST /api/orders first answers 201.
    pub created: Latency,
    /// PUT /api/tickets/:id answered → the order shows the new price.
    pub updated: Latency,
    pub poll_ms: f64,
}

/// `pipelines` loops, each selling a ticket and ordering it as soon as the
/// orders service knows it; `n` tickets in all.
pub async fn propagate_created(
    api: &Api,
    seller: &User,
    buyers: &[User],
    n: usize,
) -> anyhow::Result<(Vec<Sold>, Latency, Duration)> {
    let next = Arc::new(AtomicUsize::new(0));
    let begun = Instant::now();
    let pipelines = buyers.iter().enumerate().map(|(b, buyer)| {
        let (api, seller, buyer, next) = (
            api.clone(),
            seller.clone(),
            buyer.clone(),
            Arc::clone(&next),
        );
        async move {
            let mut sold = Vec::new();
            let mut latencies = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < n {
                let ticket_id = api.create_ticket(&seller, "propagation", 20.0).await?.id;
                let listed = Instant::now();
                let deadline = listed + Duration::from_secs(60);
                let mut attempt = 0;
                let order = loop {
                    let reply = api
                        .post("/api/orders", Some(&buyer), json!({"ticketId": ticket_id}))
                        .await?;
                    match reply.status {
                        201 => break reply,
                        404 if Instant::now() < deadline => {
                            tokio::time::sleep(poll_pause(attempt)).await;
                            attempt += 1;
                        }
                        _ => bail!("ordering {ticket_id}: {} {}", reply.status, reply.body),
                    }
                };
                latencies.push(u64::try_from(listed.elapsed().as_micros()).unwrap_or(u64::MAX));
                let expires_at = order.body["expiresAt"].as_str().context("no expiresAt")?;
                let expires_at =
                    chrono::DateTime::parse_from_rfc3339(expires_at)?.timestamp_micros();
                sold.push(Sold {
                    ticket_id,
                    order_id: order.id()?,
                    buyer: b,
                    expires_at_us: expires_at,
                    ordered_at_us: now_us(),
                });
            }
            anyhow::Ok((sold, latencies))
        }
    });
    let mut sold = Vec::new();
    let mut latencies = Vec::new();
    for result in futures::future::join_all(pipelines).await {
        let (s, l) = result?;
        sold.extend(s);
        latencies.extend(l);
    }
    Ok((sold, stats::latency(latencies), begun.elapsed()))
}

#[derive(Debug, Clone, Serialize)]
pub struct Expiration {
    pub orders: usize,
    pub window_seconds: u64,
    /// The most orders pending (ordered, not yet cancelled) at one time.
    pub peak_pending: usize,
    /// expiresAt → `expiration.complete` published.
    pub expiration_complete: Latency,
    /// expiresAt → `order.cancelled` published (the order is cancelled).
    pub cancelled: Latency,
    /// Orders never seen cancelled on the bus.
    pub missed: usize,
    /// Orders the API does not show as cancelled at the end.
    pub not_cancelled_in_api: usize,
}

/// Waits for every order of `sold` to be cancelled by expiration, then
/// checks it through the API.
pub async fn expiration(
    api: &Api,
    buyers: &[User],
    sold: &[Sold],
    watch: &BusWatch,
    window_seconds: u64,
) -> anyhow::Result<Expiration> {
    let last_due = sold
        .iter()
        .map(|s| s.expires_at_us)
        .max()
        .unwrap_or_else(now_us);
    // Bounded, but long enough to see the last one: cancelling is the orders,
    // tickets and payments services' work on every expiry, and waits for the database.
    let give_up = last_due + 180_000_000;
    while now_us() < give_up
        && sold
            .iter()
            .any(|s| watch.cancelled_at(&s.order_id).is_none())
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut to_complete = Vec::new();
    let mut to_cancel = Vec::new();
    let mut events = Vec::new();
    for s in sold {
        if let Some(at) = watch.expired_at(&s.order_id) {
            to_complete.push(at - s.expires_at_us);
        }
        if let Some(at) = watch.cancelled_at(&s.order_id) {
            to_cancel.push(at - s.expires_at_us);
            events.push((s.ordered_at_us, 1_i32));
            events.push((at, -1));
        }
    }
    events.sort_unstable();
    let mut pending = 0_i32;
    let mut peak = 0_i32;
    for (_, delta) in events {
        pending += delta;
        peak = peak.max(pending);
    }

    let wanted: HashSet<&str> = sold.iter().map(|s| s.order_id.as_str()).collect();
    let mut cancelled_in_api = 0;
    for buyer in buyers {
        let orders = api
            .get("/api/orders", Some(buyer))
            .await?
            .expect_status(200, "list orders")?;
        cancelled_in_api += orders
            .body
            .as_array()
            .into_iter()
            .flatten()
            .filter(|o| {
                o["status"] == "cancelled" && o["id"].as_str().is_some_and(|id| wanted.contains(id))
            })
            .count();
    }
    Ok(Expiration {
        orders: sold.len(),
        window_seconds,
        peak_pending: usize::try_from(peak).unwrap_or(0),
        missed: sold.len() - to_cancel.len(),
        expiration_complete: stats::signed_latency(to_complete),
        cancelled: stats::signed_latency(to_cancel),
        not_cancelled_in_api: sold.len() - cancelled_in_api,
    })
}

/// On the (released) tickets of `sold`: a new price, timed until the
/// buyer's (cancelled) order shows it. That order embeds the orders
/// service's replica of the ticket at read time — the very document a new
/// order for the ticket would copy its price from — so this reads the
/// replica without reserving the ticket again.
pub async fn propagate_updated(
    api: &Api,
    seller: &User,
    buyers: &[User],
    sold: &[Sold],
) -> anyhow::Result<Latency> {
    let next = Arc::new(AtomicUsize::new(0));
    let sold = Arc::new(sold.to_vec());
    let pipelines = buyers.iter().map(|_| {
        let (api, seller, buyers, next, sold) = (
            api.clone(),
            seller.clone(),
            buyers.to_vec(),
            Arc::clone(&next),
            Arc::clone(&sold),
        );
        async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(s) = sold.get(i) else { break };
                let price = 30 + (i % 50) as u64;
                api.put(
                    &format!("/api/tickets/{}", s.ticket_id),
                    Some(&seller),
                    json!({"title": "propagation", "price": price}),
                )
                .await?
                .expect_status(200, "update ticket")?;
                let changed = Instant::now();
                let deadline = changed + Duration::from_secs(60);
                let mut attempt = 0;
                loop {
                    let order = api
                        .get(
                            &format!("/api/orders/{}", s.order_id),
                            Some(&buyers[s.buyer]),
                        )
                        .await?
                        .expect_status(200, "show order")?;
                    if price_of(&order.body) == Some(price as f64) {
                        break;
                    }
                    if Instant::now() > deadline {
                        bail!("the new price of {} never reached orders", s.ticket_id);
                    }
                    tokio::time::sleep(poll_pause(attempt)).await;
                    attempt += 1;
                }
                latencies.push(u64::try_from(changed.elapsed().as_micros()).unwrap_or(u64::MAX));
            }
            anyhow::Ok(latencies)
        }
    });
    let mut latencies = Vec::new();
    for result in futures::future::join_all(pipelines).await {
        latencies.extend(result?);
    }
    Ok(stats::latency(latencies))
}

#[derive(Debug, Clone, Serialize)]
pub struct Concurrency {
    pub clients: usize,
    /// All clients start together; until the last one's second update.
    pub seconds: f64,
    pub failed_requests: usize,
    /// Tickets the tickets service shows at 15.
    pub tickets_at_15: usize,
    /// From the last update until no event was left to process.
    pub settle_seconds: f64,
    /// Tickets whose replica in orders shows 15 at version 2.
    pub replica_at_15: usize,
    pub inconsistent: usize,
}

/// The classic: `clients` clients at once, each creating a ticket at 5 and
/// updating it to 10, then to 15.
pub async fn concurrency(
    api: &Api,
    seller: &User,
    replica: &mongodb::Collection<Document>,
    quiet: &Quiet,
    clients: usize,
) -> anyhow::Result<Concurrency> {
    let begun = Instant::now();
    let runs = (0..clients).map(|i| {
        let (api, seller) = (api.clone(), seller.clone());
        tokio::spawn(async move {
            let mut failures = 0;
            let reply = api
                .post(
                    "/api/tickets",
                    Some(&seller),
                    json!({"title": format!("concert {i}"), "price": 5}),
                )
                .await?;
            if reply.status != 201 {
                return anyhow::Ok((None, 1));
            }
            let id = reply.id()?;
            for price in [10, 15] {
                let reply = api
                    .put(
                        &format!("/api/tickets/{id}"),
                        Some(&seller),
                        json!({"title": format!("concert {i}"), "price": price}),
                    )
                    .await?;
                if reply.status != 200 {
                    failures += 1;
                }
            }
            Ok((Some(id), failures))
        })
    });
    let mut ids = Vec::new();
    let mut failed = 0;
    for result in futures::future::join_all(runs).await {
        let (id, failures) = result??;
        ids.extend(id);
        failed += failures;
    }
    let seconds = begun.elapsed().as_secs_f64();

    let shown = futures::stream::iter(ids.clone())
        .map(|id| {
            let api = api.clone();
            async move {
                let ticket = api.get(&format!("/api/tickets/{id}"), None).await?;
                let at_15 = ticket.status == 200 && ticket.body["price"].as_f64() == Some(15.0);
                anyhow::Ok(at_15.then_some(id))
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    let mut tickets_ok = HashSet::new();
    for id in shown {
        tickets_ok.extend(id?);
    }
    let settle = quiet.settle(Duration::from_secs(120)).await?;

    // The orders service's replica, read straight from its database (ordering
    // each ticket to see it would add 400 orders and their events to measure).
    let wanted: Vec<ObjectId> = ids
        .iter()
        .filter_map(|id| ObjectId::parse_str(id).ok())
        .collect();
    let mut cursor = replica.find(doc! {"_id": {"$in": wanted}}).await?;
    let mut replica_ok = HashSet::new();
    while let Some(ticket) = cursor.try_next().await? {
        if integer(&ticket, "price") == Some(1500) && integer(&ticket, "version") == Some(2) {
            replica_ok.insert(ticket.get_object_id("_id")?.to_hex());
        }
    }
    let replica_at_15 = replica_ok.len();
    let consistent = ids
        .iter()
        .filter(|id| replica_ok.contains(*id) && tickets_ok.contains(*id))
        .count();
    Ok(Concurrency {
        clients,
        seconds: stats::round(seconds),
        failed_requests: failed,
        tickets_at_15: tickets_ok.len(),
        settle_seconds: stats::round(settle.as_secs_f64()),
        replica_at_15,
        // Lost creations count too: every client's ticket must be right.
        inconsistent: clients - consistent,
    })
}

/// An integer field of a stored document, whichever width it was stored in.
fn integer(document: &Document, field: &str) -> Option<i64> {
    match document.get(field)? {
        Bson::Int64(n) => Some(*n),
        Bson::Int32(n) => Some(i64::from(*n)),
        _ => None,
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Race {
    pub tickets: usize,
    pub buyers: usize,
    pub requests: usize,
    pub seconds: f64,
    /// `201`s.
    pub orders_created: usize,
    /// `400 Ticket is already reserved`.
    pub refused: usize,
    /// Anything else (should be 0).
    pub other: usize,
    /// Tickets with exactly one order, in the buyers' order lists.
    pub tickets_with_one_order: usize,
    /// Orders for these tickets in the buyers' order lists.
    pub orders_listed: usize,
}

/// `buyers` buyers each try to order every one of `tickets` tickets, all at once.
pub async fn race(
    api: &Api,
    seller: &User,
    buyers: &[User],
    quiet: &Quiet,
    tickets: usize,
) -> anyhow::Result<(Race, Vec<(usize, String)>)> {
    let mut ids = Vec::new();
    for i in 0..tickets {
        ids.push(
            api.create_ticket(seller, &format!("final {i}"), 50.0)
                .await?
                .id,
        );
    }
    quiet.settle(Duration::from_secs(60)).await?;
    let begun = Instant::now();
    let attempts = buyers.iter().enumerate().flat_map(|(b, buyer)| {
        ids.iter().map(move |id| {
            let (api, buyer, id) = (api.clone(), buyer.clone(), id.clone());
            tokio::spawn(async move {
                let reply = api
                    .post("/api/orders", Some(&buyer), json!({"ticketId": id}))
                    .await?;
                anyhow::Ok((b, reply))
            })
        })
    });
    let replies = futures::future::join_all(attempts.collect::<Vec<_>>()).await;
    let seconds = begun.elapsed().as_secs_f64();
    let (mut created, mut refused, mut other) = (0, 0, 0);
    let mut orders = Vec::new();
    for reply in replies {
        let (b, reply) = reply??;
        match reply.status {
            201 => {
                created += 1;
                orders.push((b, reply.id()?));
            }
            400 if reply.body["errors"][0]["message"] == "Ticket is already reserved" => {
                refused += 1
            }
            _ => other += 1,
        }
    }
    let wanted: HashSet<&str> = ids.iter().map(String::as_str).collect();
    let mut per_ticket: HashMap<String, usize> = HashMap::new();
    for buyer in buyers {
        let listed = api
            .get("/api/orders", Some(buyer))
            .await?
            .expect_status(200, "list orders")?;
        for order in listed.body.as_array().into_iter().flatten() {
            if let Some(ticket) = order["ticket"]["id"]
                .as_str()
                .filter(|id| wanted.contains(id))
            {
                *per_ticket.entry(ticket.to_owned()).or_default() += 1;
            }
        }
    }
    Ok((
        Race {
            tickets,
            buyers: buyers.len(),
            requests: tickets * buyers.len(),
            seconds: stats::round(seconds),
            orders_created: created,
            refused,
            other,
            tickets_with_one_order: per_ticket.values().filter(|&&n| n == 1).count(),
            orders_listed: per_ticket.values().sum(),
        },
        orders,
    ))
}
