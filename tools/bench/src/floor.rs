//! The floors a route is compared with, measured in the same run on the same
//! machine:
//!
//! - **bare axum**: a handler that does nothing but answer the route's real
//!   response (captured from the fleet just before), behind an ingress
//!   instance of its own that routes with the fleet's table — so the path is
//!   the same (client → ingress → axum over loopback), minus the service's
//!   work: no session check, no validation, no database, no events.
//! - **raw mongodb**: the official driver, with the services' default pool,
//!   doing the route's database operations against the same server (reads
//!   against the services' own collections, writes into a scratch database
//!   whose collections carry the same indexes as the service's, copied from
//!   them, so that each write maintains the same index entries).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::{
    Json, Router,
    extract::State,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use bytes::Bytes;
use futures::{TryStreamExt as _, future::BoxFuture};
use mongodb::IndexModel;
use mongodb::bson::{Document, doc, oid::ObjectId};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::load::Shape;
use crate::stats::{self, Throughput};

/// The real answers of the fleet, replayed by the bare handlers.
#[derive(Debug, Clone, Default)]
pub struct Canned {
    pub current_user: Bytes,
    pub signin: Bytes,
    pub signin_cookie: Option<HeaderValue>,
    pub ticket_created: Bytes,
    pub tickets: Bytes,
    pub ticket: Bytes,
    pub order_created: Bytes,
}

fn json(status: StatusCode, body: Bytes) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// The canned sign-in answer with its cookie.
fn signed_in(status: StatusCode, canned: &Canned) -> Response {
    let mut response = json(status, canned.signin.clone());
    if let Some(cookie) = &canned.signin_cookie {
        response
            .headers_mut()
            .insert(header::SET_COOKIE, cookie.clone());
    }
    response
}

fn bare_router(canned: Arc<Canned>) -> Router {
    Router::new()
        .route(
            "/api/users/currentuser",
            get(|State(c): State<Arc<Canned>>| async move { json(StatusCode::OK, c.current_user.clone()) }),
        )
        .route(
            "/api/users/signin",
            post(|State(c): State<Arc<Canned>>, Json(_): Json<Value>| async move {
                signed_in(StatusCode::OK, &c)
            }),
        )
        .route(
            "/api/users/signup",
            post(|State(c): State<Arc<Canned>>, Json(_): Json<Value>| async move {
                signed_in(StatusCode::CREATED, &c)
            }),
        )
        .route(
            "/api/tickets",
            get(|State(c): State<Arc<Canned>>| async move { json(StatusCode::OK, c.tickets.clone()) }).post(
                |State(c): State<Arc<Canned>>, Json(_): Json<Value>| async move {
                    json(StatusCode::CREATED, c.ticket_created.clone())
                },
            ),
        )
        .route(
            "/api/tickets/{id}",
            get(|State(c): State<Arc<Canned>>| async move { json(StatusCode::OK, c.ticket.clone()) }),
        )
        .route(
            "/api/orders",
            post(|State(c): State<Arc<Canned>>, Json(_): Json<Value>| async move {
                json(StatusCode::CREATED, c.order_created.clone())
            }),
        )
        .with_state(canned)
}

/// The bare handlers behind an ingress of their own; stops on drop.
pub struct BareFleet {
    /// The ingress in front of them.
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
}

impl BareFleet {
    pub async fn start(canned: Canned) -> anyhow::Result<Self> {
        let (stop, stopped) = watch::channel(false);
        let app_listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let app_addr = app_listener.local_addr()?;
        let app = bare_router(Arc::new(canned));
        let mut app_stopped = stopped.clone();
        tokio::spawn(async move {
            let _ = axum::serve(app_listener, app)
                .with_graceful_shutdown(async move {
                    let _ = app_stopped.wait_for(|stop| *stop).await;
                })
                .await;
        });
        // Every routed service is the bare app: same table, same proxy code.
        let upstreams: HashMap<String, SocketAddr> = devstack::routes::table()
            .services
            .keys()
            .map(|name| (name.clone(), app_addr))
            .collect();
        let ingress_listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = ingress_listener.local_addr()?;
        let mut ingress_stopped = stopped;
        tokio::spawn(devstack::ingress::serve(
            ingress_listener,
            upstreams,
            async move {
                let _ = ingress_stopped.wait_for(|stop| *stop).await;
            },
        ));
        Ok(Self { addr, stop })
    }
}

impl Drop for BareFleet {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// One database operation of a floor; gets a running counter.
pub type Op = Arc<dyn Fn(u64) -> BoxFuture<'static, anyhow::Result<()>> + Send + Sync>;

/// Runs `op` in `shape.connections` closed loops, like [`crate::load::run`].
pub async fn run_ops(shape: Shape, op: Op) -> anyhow::Result<Throughput> {
    let counter = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let measure_from = started + shape.warmup;
    let deadline = measure_from + shape.duration;
    let workers: Vec<_> = (0..shape.connections)
        .map(|_| {
            let op = Arc::clone(&op);
            let counter = Arc::clone(&counter);
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(16 * 1024);
                let mut errors = 0;
                let mut first_error = None;
                let mut ended = measure_from;
                while Instant::now() < deadline {
                    let n = counter.fetch_add(1, Ordering::Relaxed);
                    let begun = Instant::now();
                    let result = op(n).await;
                    let done = Instant::now();
                    if begun < measure_from {
                        continue;
                    }
                    ended = done;
                    latencies.push(
                        u64::try_from(done.duration_since(begun).as_micros()).unwrap_or(u64::MAX),
                    );
                    if let Err(error) = result {
                        errors += 1;
                        first_error.get_or_insert(format!("{error:#}"));
                    }
                }
                (latencies, errors, first_error, ended)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    let mut ended = deadline;
    for worker in workers {
        let (latencies, e, first, end) = worker.await.context("a floor worker panicked")?;
        all.extend(latencies);
        errors += e;
        first_error = first_error.or(first);
        ended = ended.max(end);
    }
    Ok(stats::throughput(
        all,
        errors,
        ended.duration_since(measure_from),
        first_error,
    ))
}

/// argon2id hashes per second with the machine's cores to themselves: one
/// thread per core hashing a password with the crate's default parameters
/// (auth's) in memory of its own, reused, for `seconds` — what sign-in and
/// sign-up can reach at most, each costing one hash.
pub async fn argon2_per_second(seconds: f64) -> anyhow::Result<f64> {
    use argon2::{Argon2, Block};
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let hashers: Vec<_> = (0..threads)
        .map(|_| {
            tokio::task::spawn_blocking(move || {
                let argon = Argon2::default();
                let mut memory = vec![Block::default(); argon.params().block_count()];
                let mut out = [0u8; 32];
                let mut hashes = 0_u64;
                while Instant::now() < until {
                    argon
                        .hash_password_into_with_memory(
                            b"bench password",
                            b"bench salt 16 by",
                            &mut out,
                            &mut memory,
                        )
                        .map_err(|e| anyhow::anyhow!("argon2 failed: {e}"))?;
                    hashes += 1;
                }
                anyhow::Ok(hashes)
            })
        })
        .collect();
    let begun = Instant::now();
    let mut hashes = 0;
    for hasher in hashers {
        hashes += hasher.await.context("an argon2 thread panicked")??;
    }
    Ok(stats::round(hashes as f64 / begun.elapsed().as_secs_f64()))
}

/// The database the writing floors write into.
const SCRATCH: &str = "bench_floor";

type Collection = mongodb::Collection<Document>;

/// The raw-driver versions of the routes' database work.
pub struct MongoFloors {
    client: mongodb::Client,
    /// Tickets that exist in the tickets service's collection and in the
    /// orders service's replica.
    ticket_ids: Arc<Vec<ObjectId>>,
    /// An existing user's email.
    email: String,
}

impl MongoFloors {
    /// A client with the driver's defaults, as the services use it (a pool of
    /// at most 10 connections).
    pub async fn connect(
        uri: &str,
        ticket_ids: Vec<ObjectId>,
        email: String,
    ) -> anyhow::Result<Self> {
        let mut options = mongodb::options::ClientOptions::parse(uri).await?;
        options.app_name = Some("bench-floor".into());
        options.server_selection_timeout = Some(Duration::from_secs(5));
        Ok(Self {
            client: mongodb::Client::with_options(options)?,
            ticket_ids: Arc::new(ticket_ids),
            email,
        })
    }

    /// `POST /api/users/signin` reads the user by email (then verifies the
    /// argon2 hash, which no floor does).
    pub fn find_user_by_email(&self) -> Op {
        let users = self.client.database("auth").collection::<Document>("users");
        let email = self.email.clone();
        Arc::new(move |_| {
            let users = users.clone();
            let email = email.clone();
            Box::pin(async move {
                users
                    .find_one(doc! {"email": email})
                    .await?
                    .context("no such user")?;
                Ok(())
            })
        })
    }

    /// `POST /api/users/signup` looks the email up, then inserts the user
    /// under a unique index on email (and hashes the password in between,
    /// which no floor does).
    pub async fn signup_user(&self) -> anyhow::Result<Op> {
        let users = self.scratch("auth", "users").await?;
        let run = std::process::id();
        Ok(Arc::new(move |n| {
            let users = users.clone();
            Box::pin(async move {
                let email = format!("floor-{run}-{n}@bench.test");
                anyhow::ensure!(
                    users.find_one(doc! {"email": &email}).await?.is_none(),
                    "email in use"
                );
                users
                    .insert_one(doc! {
                        "_id": ObjectId::new(), "email": email,
                        "password": "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g",
                    })
                    .await?;
                Ok(())
            })
        }))
    }

    /// `POST /api/tickets` inserts the ticket (titled `title`, as the
    /// route's, with its search keys) with its event in its outbox.
    pub async fn insert_ticket(&self, title: &str) -> anyhow::Result<Op> {
        let tickets = self.scratch("tickets", "tickets").await?;
        let title = title.to_owned();
        let prefixes = tickets::search::prefixes(&title);
        Ok(Arc::new(move |_| {
            let tickets = tickets.clone();
            let (title, prefixes) = (title.clone(), prefixes.clone());
            Box::pin(async move {
                let id = ObjectId::new();
                let payload = format!(
                    r#"{{"id":"{id}","version":0,"title":"{title}","price":25,"userId":"0123456789abcdef01234567"}}"#
                );
                tickets
                    .insert_one(doc! {
                        "_id": id, "title": title, "prefixes": prefixes, "price": 2500_i64,
                        "userId": "0123456789abcdef01234567", "version": 0_i64,
                        "outbox": [{"id": format!("ticket.created:{id}:0"), "subject": "ticket.created", "schemaVersion": 1, "payload": payload}],
                    })
                    .await?;
                Ok(())
            })
        }))
    }

    /// `GET /api/tickets`: the newest 100 unreserved tickets.
    pub fn list_tickets(&self) -> Op {
        let tickets = self
            .client
            .database("tickets")
            .collection::<Document>("tickets");
        Arc::new(move |_| {
            let tickets = tickets.clone();
            Box::pin(async move {
                let found: Vec<Document> = tickets
                    .find(doc! {"orderId": null, "withdrawn": null})
                    .sort(doc! {"_id": -1})
                    .limit(101)
                    .await?
                    .try_collect()
                    .await?;
                anyhow::ensure!(!found.is_empty(), "no tickets listed");
                Ok(())
            })
        })
    }

    /// `GET /api/tickets/:id`: one ticket by id.
    pub fn find_ticket(&self) -> Op {
        let tickets = self
            .client
            .database("tickets")
            .collection::<Document>("tickets");
        let ids = Arc::clone(&self.ticket_ids);
        Arc::new(move |n| {
            let tickets = tickets.clone();
            let id = ids[n as usize % ids.len()];
            Box::pin(async move {
                tickets
                    .find_one(doc! {"_id": id})
                    .await?
                    .context("no such ticket")?;
                Ok(())
            })
        })
    }

    /// The orders service's replica of the tickets.
    pub fn orders_replica(&self) -> mongodb::Collection<Document> {
        self.client.database("orders").collection("tickets")
    }

    /// `POST /api/orders`: reads the ticket from the replica and the buyer's
    /// slots, claims a slot and the ticket (one hold document each), then
    /// inserts the order with its event in its outbox (see orders'
    /// `store::holds`).
    pub async fn create_order(&self) -> anyhow::Result<Op> {
        let replica = self.orders_replica();
        let orders = self.scratch("orders", "orders").await?;
        let holds = self.scratch("orders", "holds").await?;
        let ids = Arc::clone(&self.ticket_ids);
        Ok(Arc::new(move |n| {
            let replica = replica.clone();
            let orders = orders.clone();
            let holds = holds.clone();
            let ticket_id = ids[n as usize % ids.len()];
            Box::pin(async move {
                replica
                    .find_one(doc! {"_id": ticket_id})
                    .await?
                    .context("no such ticket in the replica")?;
                let id = ObjectId::new();
                let user = ObjectId::new().to_hex();
                let taken: Vec<Document> = holds
                    .find(doc! {"_id": {"$gte": format!("slot:{user}:"), "$lt": format!("slot:{user};")}})
                    .await?
                    .try_collect()
                    .await?;
                anyhow::ensure!(taken.is_empty(), "a fresh buyer holds no slot");
                let now = mongodb::bson::DateTime::now();
                holds
                    .insert_one(doc! {"_id": format!("slot:{user}:0"), "orderId": id, "at": now})
                    .await?;
                // A ticket of the floor's own: the floor measures the work
                // of an order that succeeds, every time.
                holds
                    .insert_one(doc! {"_id": format!("ticket:{id}"), "orderId": id, "at": now})
                    .await?;
                orders
                    .insert_one(doc! {
                        "_id": id, "userId": &user, "status": "created",
                        "expiresAt": now, "version": 0_i64,
                        "ticketId": ticket_id, "slot": format!("slot:{user}:0"),
                        "outbox": [{"id": format!("order.created:{id}:0"), "subject": "order.created", "schemaVersion": 1, "payload": "{}"}],
                    })
                    .await?;
                Ok(())
            })
        }))
    }

    /// A collection of the scratch database named as the service's
    /// `database.collection`, emptied, with the service collection's indexes.
    async fn scratch(&self, database: &str, collection: &str) -> anyhow::Result<Collection> {
        let service = self
            .client
            .database(database)
            .collection::<Document>(collection);
        let scratch = self
            .client
            .database(SCRATCH)
            .collection::<Document>(&format!("{database}_{collection}"));
        scratch.drop().await?;
        let indexes: Vec<IndexModel> = service
            .list_indexes()
            .await
            .with_context(|| format!("cannot list the indexes of {database}.{collection}"))?
            .try_collect()
            .await?;
        let indexes: Vec<IndexModel> = indexes
            .into_iter()
            .filter(|index| index.keys != doc! {"_id": 1})
            .map(|mut index| {
                // The listing's version field is the server's to choose.
                if let Some(options) = index.options.as_mut() {
                    options.version = None;
                }
                index
            })
            .collect();
        anyhow::ensure!(
            !indexes.is_empty() || collection == "holds",
            "{database}.{collection} has no index but _id's: has the service started?"
        );
        if !indexes.is_empty() {
            scratch.create_indexes(indexes).await?;
        }
        Ok(scratch)
    }

    /// Drops the scratch database.
    pub async fn clean_up(&self) {
        let _ = self.client.database(SCRATCH).drop().await;
    }
}
