//! Fault injection under load: a steady stream of buyers and sellers (sell,
//! reprice, order, then pay, cancel or let expire) runs while services are
//! `kill -9`ed and NATS and MongoDB are restarted; afterwards every replica
//! must converge within a bounded time and nothing may be lost or doubled.
//!
//! Everything is observed through the HTTP API behind the ingress (plus the
//! Stripe fake's own charge list), exactly as a client would: the load never
//! looks into a database or the stream.
//!
//! # The client's side of the contract
//!
//! Requests fail while a service or its infrastructure is down (502 from the
//! ingress, 500 from a service without its database). The load behaves like a
//! careful client: it retries what is safe to retry, and resolves what is
//! ambiguous through the API instead of guessing:
//!
//! - a create whose answer was lost is never retried (it is not idempotent);
//!   the ticket is found again later by its unique title;
//! - an order whose answer was lost is retried: `Ticket is already reserved`
//!   then means the lost attempt won, and the order is read back from the
//!   buyer's list;
//! - a payment is retried with the same order until it is definitive (the
//!   order id is the Stripe idempotency key, so a retry never charges twice).
//!
//! The [`Ledger`] records what each client was told; [`verify`] checks the
//! fleet against it.

// A test kit: a set-up that cannot be done is the test failing, so it
// unwraps and expects (the workspace denies both everywhere else).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use devstack::Stack;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::task::JoinSet;
use tokio::time::sleep;

/// The fake Stripe key the fleet is given by devstack.
const STRIPE_KEY: &str = devstack::fleet::FAKE_STRIPE_KEY;
/// How long one request may take (a MongoDB outage makes services wait for
/// server selection, 5 s).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a client keeps retrying one step before the story fails.
const GIVE_UP: Duration = Duration::from_secs(90);
/// A payment is started only this soon after the order, so that it is never
/// in flight when the order expires (the window is much longer).
const PAY_WITHIN: Duration = Duration::from_secs(4);

/// An answer (the kit's [`testkit::Reply`]: `message()`, `unavailable()`),
/// and a signed-up user (the kit's).
pub use testkit::{Reply, User};

/// An HTTP client for the ingress that never panics.
#[derive(Clone)]
pub struct Client {
    api: testkit::Api,
    counts: Arc<Counts>,
}

/// Requests sent through a [`Client`] (and its clones), and how many of them
/// failed: "unavailable" (5xx) or no answer at all.
#[derive(Debug, Default)]
struct Counts {
    sent: AtomicUsize,
    failed: AtomicUsize,
}

impl Client {
    pub fn new(base: &str) -> Self {
        Self {
            api: testkit::Api::new(base).with_timeout(REQUEST_TIMEOUT),
            counts: Arc::default(),
        }
    }

    /// (requests sent, of them failed: 5xx or no answer) so far, by this
    /// client and its clones.
    pub fn counts(&self) -> (usize, usize) {
        (
            self.counts.sent.load(Ordering::Relaxed),
            self.counts.failed.load(Ordering::Relaxed),
        )
    }

    /// `Err` when no answer came back at all (timeout, reset).
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        user: Option<&User>,
        body: Option<Value>,
    ) -> Result<Reply, String> {
        self.counts.sent.fetch_add(1, Ordering::Relaxed);
        let answer = self
            .api
            .send(method, path, user.map(|u| u.cookie.as_str()), body.as_ref())
            .await
            .map_err(|failure| failure.to_string());
        if !answer.as_ref().is_ok_and(|reply| !reply.unavailable()) {
            self.counts.failed.fetch_add(1, Ordering::Relaxed);
        }
        answer
    }

    /// Like [`Client::send`], retrying while the answer is "unavailable" (or
    /// missing) — only for requests that are safe to repeat.
    /// `unavailable` counts the answers that said so.
    pub async fn send_until_available(
        &self,
        method: Method,
        path: &str,
        user: Option<&User>,
        body: Option<Value>,
        unavailable: &mut u32,
    ) -> Result<Reply, String> {
        let deadline = Instant::now() + GIVE_UP;
        loop {
            let last = match self.send(method.clone(), path, user, body.clone()).await {
                Ok(reply) if !reply.unavailable() => return Ok(reply),
                Ok(reply) => format!("{method} {path}: {} {}", reply.status, reply.body),
                Err(error) => error,
            };
            *unavailable += 1;
            if Instant::now() > deadline {
                return Err(format!("still unavailable after {GIVE_UP:?}: {last}"));
            }
            sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn signup(&self, email: &str) -> User {
        self.api.signup(email).await.expect("signup")
    }
}

/// What became of a story's order, as its client was told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// A payment was confirmed (`201`, or `Order is already paid` after a
    /// lost answer): the order must end `complete`.
    Paid,
    /// The buyer cancelled it (`204`).
    Cancelled,
    /// Left alone (or its payment never started in time): it must expire.
    Expire,
    /// A payment attempt lost its answer and the order expired meanwhile:
    /// it may end either way.
    Undecided,
}

/// One client's story: a ticket, its new price, its order and the order's fate.
#[derive(Debug, Clone)]
pub struct Story {
    pub n: usize,
    /// The fault that was being injected when the story began.
    pub phase: String,
    pub title: String,
    pub ticket_id: Option<String>,
    /// The create's answer was lost: the ticket may or may not exist.
    pub create_lost: bool,
    /// The price the ticket must end at.
    pub price: f64,
    pub buyer: usize,
    pub order_id: Option<String>,
    pub expires_at: Option<String>,
    pub fate: Option<Fate>,
    /// Why the story could not be completed (a failure of the fleet).
    pub failure: Option<String>,
    /// Answers that said "unavailable" (or none at all) on the way.
    pub unavailable: u32,
}

/// Every story, shared by the load's tasks.
#[derive(Clone, Default)]
pub struct Ledger {
    stories: Arc<Mutex<Vec<Story>>>,
}

impl Ledger {
    pub fn stories(&self) -> Vec<Story> {
        self.stories
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn record(&self, story: Story) {
        self.stories
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(story);
    }
}

/// The steady stream of work: `workers` concurrent clients, each telling
/// one story after another until stopped.
pub struct Load {
    phase: Arc<Mutex<String>>,
    stop: tokio_util_like::Stop,
    tasks: JoinSet<()>,
    pub ledger: Ledger,
}

/// A tiny stop flag (no extra dependency for a cancellation token).
mod tokio_util_like {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[derive(Clone, Default)]
    pub struct Stop(Arc<AtomicBool>);

    impl Stop {
        pub fn request(&self) {
            self.0.store(true, Ordering::SeqCst);
        }
        pub fn requested(&self) -> bool {
            self.0.load(Ordering::SeqCst)
        }
    }
}

impl Load {
    pub fn start(client: &Client, seller: &User, buyers: &[User], workers: usize) -> Self {
        let phase = Arc::new(Mutex::new("steady".to_owned()));
        let stop = tokio_util_like::Stop::default();
        let ledger = Ledger::default();
        let counter = Arc::new(AtomicUsize::new(0));
        let buyers = Arc::new(buyers.to_vec());
        let mut tasks = JoinSet::new();
        for worker in 0..workers {
            let (client, seller, buyers, phase, stop, ledger, counter) = (
                client.clone(),
                seller.clone(),
                Arc::clone(&buyers),
                Arc::clone(&phase),
                stop.clone(),
                ledger.clone(),
                Arc::clone(&counter),
            );
            tasks.spawn(async move {
                while !stop.requested() {
                    let n = counter.fetch_add(1, Ordering::Relaxed);
                    let phase = phase.lock().unwrap_or_else(|p| p.into_inner()).clone();
                    let buyer = worker % buyers.len();
                    let story = tell(&client, &seller, &buyers[buyer], buyer, n, phase).await;
                    ledger.record(story);
                }
            });
        }
        Self {
            phase,
            stop,
            tasks,
            ledger,
        }
    }

    /// Names what happens from now on (stories are labelled with it).
    pub fn phase(&self, name: &str) {
        eprintln!("faults: {name}");
        *self.phase.lock().unwrap_or_else(|p| p.into_inner()) = name.to_owned();
    }

    /// Stops starting stories and waits for the ones under way to finish.
    pub async fn stop(mut self) -> Ledger {
        self.stop.request();
        while self.tasks.join_next().await.is_some() {}
        self.ledger
    }
}

/// One story, start to end, as a careful client tells it.
async fn tell(
    client: &Client,
    seller: &User,
    buyer: &User,
    buyer_index: usize,
    n: usize,
    phase: String,
) -> Story {
    let title = format!("fault story {n} {}", std::process::id());
    let mut story = Story {
        n,
        phase,
        title: title.clone(),
        ticket_id: None,
        create_lost: false,
        price: 10.0,
        buyer: buyer_index,
        order_id: None,
        expires_at: None,
        fate: None,
        failure: None,
        unavailable: 0,
    };
    if let Err(failure) = tell_steps(client, seller, buyer, &mut story).await {
        story.failure = Some(failure);
    }
    story
}

async fn tell_steps(
    client: &Client,
    seller: &User,
    buyer: &User,
    story: &mut Story,
) -> Result<(), String> {
    // Sell: never retried, a lost answer is resolved at verification.
    match client
        .send(
            Method::POST,
            "/api/tickets",
            Some(seller),
            Some(json!({"title": story.title, "price": 10})),
        )
        .await
    {
        Ok(reply) if reply.status == 201 => {
            story.ticket_id = reply.body["id"].as_str().map(str::to_owned);
        }
        Ok(reply) if reply.unavailable() => {
            story.create_lost = true;
        }
        Ok(reply) => return Err(format!("create: {} {}", reply.status, reply.body)),
        Err(_) => story.create_lost = true,
    }
    if story.create_lost {
        // The next story would most likely meet the same outage.
        story.unavailable += 1;
        sleep(Duration::from_millis(200)).await;
        return Ok(());
    }
    let ticket_id = story.ticket_id.clone().ok_or("create: no id")?;

    // Reprice: idempotent in its effect (the same title and price).
    let price = 20.0 + (story.n % 50) as f64;
    let reply = client
        .send_until_available(
            Method::PUT,
            &format!("/api/tickets/{ticket_id}"),
            Some(seller),
            Some(json!({"title": story.title, "price": price})),
            &mut story.unavailable,
        )
        .await?;
    if reply.status != 200 {
        return Err(format!("update: {} {}", reply.status, reply.body));
    }
    story.price = price;

    // Order, as soon as orders knows the ticket.
    let deadline = Instant::now() + GIVE_UP;
    let mut lost_attempt = false;
    let order = loop {
        let reply = client
            .send(
                Method::POST,
                "/api/orders",
                Some(buyer),
                Some(json!({"ticketId": ticket_id})),
            )
            .await;
        match reply {
            Ok(reply) if reply.status == 201 => break reply.body,
            Ok(reply)
                if reply.status == 400
                    && reply.message() == "Ticket is already reserved"
                    && lost_attempt =>
            {
                break find_order(client, buyer, &ticket_id, &mut story.unavailable).await?;
            }
            Ok(reply) if reply.status == 404 || reply.unavailable() => {
                lost_attempt |= reply.unavailable();
                story.unavailable += u32::from(reply.unavailable());
            }
            Ok(reply) => return Err(format!("order: {} {}", reply.status, reply.body)),
            Err(_) => {
                lost_attempt = true;
                story.unavailable += 1;
            }
        }
        if Instant::now() > deadline {
            return Err(format!("order: {ticket_id} never became orderable"));
        }
        sleep(Duration::from_millis(100)).await;
    };
    let ordered = Instant::now();
    let order_id = order["id"].as_str().ok_or("order: no id")?.to_owned();
    story.order_id = Some(order_id.clone());
    story.expires_at = order["expiresAt"].as_str().map(str::to_owned);

    story.fate = Some(match story.n % 4 {
        0 | 1 => pay(client, buyer, &order_id, ordered, &mut story.unavailable).await?,
        2 => {
            let reply = client
                .send_until_available(
                    Method::DELETE,
                    &format!("/api/orders/{order_id}"),
                    Some(buyer),
                    None,
                    &mut story.unavailable,
                )
                .await?;
            if reply.status != 204 {
                return Err(format!("cancel: {} {}", reply.status, reply.body));
            }
            Fate::Cancelled
        }
        _ => Fate::Expire,
    });
    Ok(())
}

/// The buyer's order for `ticket_id` that holds it (after a lost answer).
async fn find_order(
    client: &Client,
    buyer: &User,
    ticket_id: &str,
    unavailable: &mut u32,
) -> Result<Value, String> {
    let reply = client
        .send_until_available(Method::GET, "/api/orders", Some(buyer), None, unavailable)
        .await?;
    reply
        .body
        .as_array()
        .into_iter()
        .flatten()
        .find(|o| o["ticket"]["id"] == ticket_id && o["status"] != "cancelled")
        .cloned()
        .ok_or_else(|| {
            format!("order: reserved, but not by this buyer's lost attempt ({ticket_id})")
        })
}

async fn pay(
    client: &Client,
    buyer: &User,
    order_id: &str,
    ordered: Instant,
    unavailable: &mut u32,
) -> Result<Fate, String> {
    let body = json!({"token": "tok_visa", "orderId": order_id});
    let deadline = Instant::now() + GIVE_UP;
    let mut lost_attempt = false;
    loop {
        match client
            .send(
                Method::POST,
                "/api/payments",
                Some(buyer),
                Some(body.clone()),
            )
            .await
        {
            Ok(reply) if reply.status == 201 => return Ok(Fate::Paid),
            Ok(reply)
                if reply.status == 400
                    && reply.message() == "Order is already paid"
                    && lost_attempt =>
            {
                return Ok(Fate::Paid);
            }
            Ok(reply)
                if reply.status == 400
                    && reply.message() == "Cannot pay for a cancelled order"
                    && lost_attempt =>
            {
                return Ok(Fate::Undecided);
            }
            // Payments has not heard of the order yet: nothing was charged.
            Ok(reply) if reply.status == 404 && !lost_attempt => {
                if ordered.elapsed() > PAY_WITHIN {
                    return Ok(Fate::Expire);
                }
            }
            Ok(reply) if reply.unavailable() || reply.status == 404 => {
                lost_attempt |= reply.unavailable();
                *unavailable += u32::from(reply.unavailable());
            }
            Ok(reply) => return Err(format!("pay: {} {}", reply.status, reply.body)),
            Err(_) => {
                lost_attempt = true;
                *unavailable += 1;
            }
        }
        if !lost_attempt && ordered.elapsed() > PAY_WITHIN {
            return Ok(Fate::Expire);
        }
        if Instant::now() > deadline {
            return Err(format!("pay: {order_id} never got a definitive answer"));
        }
        sleep(Duration::from_millis(150)).await;
    }
}

/// Per phase: stories begun, finished with an order, creates whose answer
/// was lost, and "unavailable" answers met — to see that each fault hit
/// work in flight.
pub fn phase_summary(ledger: &Ledger) -> String {
    let mut phases: Vec<(String, [u32; 4])> = Vec::new();
    for story in ledger.stories() {
        let index = match phases.iter().position(|(name, _)| *name == story.phase) {
            Some(index) => index,
            None => {
                phases.push((story.phase.clone(), [0; 4]));
                phases.len() - 1
            }
        };
        let counts = &mut phases[index].1;
        counts[0] += 1;
        counts[1] += u32::from(story.order_id.is_some());
        counts[2] += u32::from(story.create_lost);
        counts[3] += story.unavailable;
    }
    phases
        .iter()
        .map(|(name, [begun, ordered, lost, unavailable])| {
            format!("  {name:<20} {begun:>4} stories, {ordered:>4} ordered, {lost:>3} creates lost, {unavailable:>4} unavailable answers")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// What verification found.
#[derive(Debug, Default)]
pub struct Verdict {
    pub stories: usize,
    pub tickets: usize,
    pub lost_creates_found: usize,
    pub orders: usize,
    pub complete: usize,
    pub cancelled: usize,
    pub charges: usize,
    pub problems: Vec<String>,
}

/// The end of a fault run: on problems, the last `tail` log lines of each
/// of `services`; then the stack stopped; then the verdict asserted — no
/// problem after `within`, and the stream both paid and cancelled orders.
pub async fn stop_and_assert(
    stack: Stack,
    verdict: &Verdict,
    within: Duration,
    services: &[String],
    tail: usize,
) {
    let problems = &verdict.problems;
    if !problems.is_empty() {
        for service in services {
            eprintln!("---- {service} (last lines)");
            for line in stack.fleet().log_tail(service, tail) {
                eprintln!("{line}");
            }
        }
    }
    stack.stop().await.expect("the fleet stops cleanly");
    assert!(
        problems.is_empty(),
        "{} problems after {within:?}:\n{}",
        problems.len(),
        problems
            .iter()
            .take(40)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        verdict.complete > 0 && verdict.cancelled > 0,
        "the stream paid and cancelled orders"
    );
}

/// Polls until the fleet agrees with the ledger everywhere or `within`
/// passes; returns the verdict of the last round (empty `problems` = all
/// good) and how long convergence took.
pub async fn verify(
    stack: &Stack,
    client: &Client,
    seller: &User,
    buyers: &[User],
    ledger: &Ledger,
    within: Duration,
) -> (Verdict, Duration) {
    let begun = Instant::now();
    let stories = ledger.stories();
    loop {
        let verdict = check(stack, client, seller, buyers, &stories, false).await;
        if verdict.problems.is_empty() || begun.elapsed() > within {
            let converged = begun.elapsed();
            // Last, and only once everything else agrees: order the tickets
            // no story ordered, to read their replica in orders.
            let verdict = if verdict.problems.is_empty() {
                check(stack, client, seller, buyers, &stories, true).await
            } else {
                verdict
            };
            return (verdict, converged);
        }
        sleep(Duration::from_secs(1)).await;
    }
}

/// One round of checks of the fleet against the stories, in named steps;
/// `order_unordered` adds the last one (ordering the tickets no story
/// ordered), which changes the fleet and so runs only once all else agrees.
async fn check(
    stack: &Stack,
    client: &Client,
    seller: &User,
    buyers: &[User],
    stories: &[Story],
    order_unordered: bool,
) -> Verdict {
    let mut verdict = Verdict {
        stories: stories.len(),
        ..Verdict::default()
    };
    unfinished_stories(stories, &mut verdict);
    let Some(mut unordered) = lost_creates_found(client, stories, &mut verdict).await else {
        return verdict;
    };
    let orders_by_ticket = orders_by_ticket(client, buyers, &mut verdict).await;
    let mut settled = Settled::default();
    for story in stories {
        check_story(
            client,
            story,
            &orders_by_ticket,
            &mut settled,
            &mut unordered,
            &mut verdict,
        )
        .await;
    }
    if !verdict.problems.is_empty() {
        return verdict;
    }
    payments_agree(client, buyers, &settled, &mut verdict).await;
    let undecided: HashSet<&str> = stories
        .iter()
        .filter(|s| s.fate == Some(Fate::Undecided))
        .filter_map(|s| s.order_id.as_deref())
        .collect();
    stripe_charged_once(stack, &settled.paid, &undecided, &mut verdict).await;
    stripe_refunded_once(stack, &mut verdict).await;
    if order_unordered && verdict.problems.is_empty() {
        unordered_tickets_are_orderable(client, seller, &unordered, &mut verdict.problems).await;
    }
    verdict
}

/// The orders the stories settled: paid ones, and each one's buyer, id,
/// status and label for the payments check.
#[derive(Default)]
struct Settled {
    paid: HashSet<String>,
    orders: Vec<(usize, String, String, String)>,
}

/// A story whose client gave up is a problem of its own.
fn unfinished_stories(stories: &[Story], verdict: &mut Verdict) {
    for story in stories {
        if let Some(failure) = &story.failure {
            verdict.problems.push(format!(
                "story {} ({}): the client could not finish: {failure}",
                story.n, story.phase
            ));
        }
    }
}

/// Lost creates: the ticket exists (unreserved, with its title) or not.
/// The tickets found are returned as unordered (id, phase); `None` when the
/// list could not be read.
async fn lost_creates_found(
    client: &Client,
    stories: &[Story],
    verdict: &mut Verdict,
) -> Option<Vec<(String, String)>> {
    let listed = match client
        .send(Method::GET, "/api/tickets?limit=500", None, None)
        .await
    {
        Ok(reply) if reply.status == 200 => reply.body.as_array().cloned().unwrap_or_default(),
        other => {
            verdict
                .problems
                .push(format!("GET /api/tickets: {other:?}"));
            return None;
        }
    };
    let by_title: HashMap<&str, &Value> = listed
        .iter()
        .filter_map(|t| Some((t["title"].as_str()?, t)))
        .collect();
    let mut unordered = Vec::new();
    for story in stories.iter().filter(|s| s.create_lost) {
        if let Some(ticket) = by_title.get(story.title.as_str()) {
            verdict.lost_creates_found += 1;
            if let Some(id) = ticket["id"].as_str() {
                unordered.push((id.to_owned(), story.phase.clone()));
            }
        }
    }
    Some(unordered)
}

/// Every buyer's orders, by ticket.
async fn orders_by_ticket(
    client: &Client,
    buyers: &[User],
    verdict: &mut Verdict,
) -> HashMap<String, Vec<Value>> {
    let mut orders_by_ticket: HashMap<String, Vec<Value>> = HashMap::new();
    for buyer in buyers {
        match client
            .send(Method::GET, "/api/orders", Some(buyer), None)
            .await
        {
            Ok(reply) if reply.status == 200 => {
                for order in reply.body.as_array().into_iter().flatten() {
                    verdict.orders += 1;
                    let ticket = order["ticket"]["id"]
                        .as_str()
                        .unwrap_or("<no ticket in the replica>")
                        .to_owned();
                    orders_by_ticket
                        .entry(ticket)
                        .or_default()
                        .push(order.clone());
                }
            }
            other => verdict.problems.push(format!("GET /api/orders: {other:?}")),
        }
    }
    orders_by_ticket
}

/// One story against the fleet: its ticket's price, exactly its one order,
/// in the state its client was told, with the ticket's version in the
/// orders replica and the ticket held by a paid order only.
async fn check_story(
    client: &Client,
    story: &Story,
    orders_by_ticket: &HashMap<String, Vec<Value>>,
    settled: &mut Settled,
    unordered: &mut Vec<(String, String)>,
    verdict: &mut Verdict,
) {
    let Some(ticket_id) = &story.ticket_id else {
        return;
    };
    verdict.tickets += 1;
    let problems = &mut verdict.problems;
    let label = format!("story {} ({}), ticket {ticket_id}", story.n, story.phase);
    let path = format!("/api/tickets/{ticket_id}");
    let ticket = match client.send(Method::GET, &path, None, None).await {
        Ok(reply) if reply.status == 200 => reply.body,
        other => {
            problems.push(format!("{label}: GET /api/tickets/:id → {other:?}"));
            return;
        }
    };
    if ticket["price"].as_f64() != Some(story.price) {
        problems.push(format!(
            "{label}: tickets has price {} instead of {}",
            ticket["price"], story.price
        ));
    }
    let orders = orders_by_ticket.get(ticket_id).cloned().unwrap_or_default();
    let Some(order_id) = &story.order_id else {
        if orders.is_empty() && story.failure.is_none() {
            unordered.push((ticket_id.clone(), story.phase.clone()));
        }
        return;
    };
    if orders.len() != 1 {
        problems.push(format!(
            "{label}: {} orders instead of exactly 1: {orders:?}",
            orders.len()
        ));
        return;
    }
    let order = &orders[0];
    if order["id"] != order_id.as_str() {
        problems.push(format!(
            "{label}: the order is {} instead of {order_id}",
            order["id"]
        ));
        return;
    }
    let status = order["status"].as_str().unwrap_or("");
    let expected = match story.fate {
        Some(Fate::Paid) => Some("complete"),
        Some(Fate::Cancelled | Fate::Expire) => Some("cancelled"),
        Some(Fate::Undecided) | None => None,
    };
    if let Some(expected) = expected
        && status != expected
    {
        problems.push(format!(
            "{label}: order {order_id} is {status}, expected {expected} ({:?}, expires {:?})",
            story.fate, story.expires_at
        ));
        return;
    }
    if order["ticket"]["price"] != ticket["price"]
        || order["ticket"]["version"] != ticket["version"]
    {
        problems.push(format!(
            "{label}: the orders replica has price {} v{}, tickets has {} v{}",
            order["ticket"]["price"],
            order["ticket"]["version"],
            ticket["price"],
            ticket["version"]
        ));
    }
    let holder = ticket["orderId"].as_str();
    match status {
        "complete" => {
            verdict.complete += 1;
            settled.paid.insert(order_id.clone());
            if holder != Some(order_id.as_str()) {
                problems.push(format!(
                    "{label}: paid order {order_id}, but the ticket is held by {holder:?}"
                ));
            }
        }
        "cancelled" => {
            verdict.cancelled += 1;
            if holder.is_some() {
                problems.push(format!(
                    "{label}: cancelled order, but the ticket is still held by {holder:?}"
                ));
            }
        }
        other => problems.push(format!("{label}: order {order_id} still {other}")),
    }
    settled
        .orders
        .push((story.buyer, order_id.clone(), status.to_owned(), label));
}

/// Payments' replica of each settled order: a probe with a card that is
/// always declined tells what payments believes without ever charging.
async fn payments_agree(
    client: &Client,
    buyers: &[User],
    settled: &Settled,
    verdict: &mut Verdict,
) {
    for (buyer, order_id, status, label) in &settled.orders {
        let expected = if status == "complete" {
            "Order is already paid"
        } else {
            "Cannot pay for a cancelled order"
        };
        let probe = json!({"token": "tok_chargeDeclined", "orderId": order_id});
        match client
            .send(Method::POST, "/api/payments", Some(&buyers[*buyer]), Some(probe))
            .await
        {
            Ok(reply) if reply.status == 400 && reply.message() == expected => {}
            other => verdict.problems.push(format!(
                "{label}: payments should answer {expected:?} for {status} order {order_id}, got {other:?}"
            )),
        }
    }
}

/// Stripe: one successful charge per paid order, none for any other (an
/// undecided story's order may have either); a paid order never refunded.
async fn stripe_charged_once(
    stack: &Stack,
    paid: &HashSet<String>,
    undecided: &HashSet<&str>,
    verdict: &mut Verdict,
) {
    let problems = &mut verdict.problems;
    let charges = match charges(stack).await {
        Ok(charges) => charges,
        Err(error) => return problems.push(format!("listing Stripe charges: {error}")),
    };
    let mut per_order: HashMap<String, usize> = HashMap::new();
    for (order, refunded) in charges {
        if refunded {
            if paid.contains(&order) {
                problems.push(format!("paid order {order} was refunded"));
            }
            continue;
        }
        *per_order.entry(order).or_default() += 1;
    }
    verdict.charges = per_order.values().sum();
    for (order, n) in &per_order {
        if *n > 1 {
            problems.push(format!("order {order} was charged {n} times"));
        }
        if !paid.contains(order) && !undecided.contains(order.as_str()) {
            problems.push(format!("order {order} was charged but is not complete"));
        }
    }
    for order in paid {
        if !per_order.contains_key(order) {
            problems.push(format!("paid order {order} has no charge at Stripe"));
        }
    }
}

/// Money that arrived for a cancelled order is refunded exactly once.
async fn stripe_refunded_once(stack: &Stack, verdict: &mut Verdict) {
    let refunds = match stripe_list(stack, "refunds").await {
        Ok(refunds) => refunds,
        Err(error) => {
            return verdict
                .problems
                .push(format!("listing Stripe refunds: {error}"));
        }
    };
    let mut per_intent: HashMap<String, usize> = HashMap::new();
    for refund in refunds {
        let intent = refund["payment_intent"]
            .as_str()
            .unwrap_or("<none>")
            .to_owned();
        *per_intent.entry(intent).or_default() += 1;
    }
    for (intent, n) in per_intent {
        if n > 1 {
            verdict
                .problems
                .push(format!("intent {intent} was refunded {n} times"));
        }
    }
}

/// Orders each ticket no story ordered, to read its replica in orders: it
/// must be orderable at the price and version tickets has.
async fn unordered_tickets_are_orderable(
    client: &Client,
    seller: &User,
    unordered: &[(String, String)],
    problems: &mut Vec<String>,
) {
    for (ticket_id, phase) in unordered {
        let label = format!("unordered ticket {ticket_id} ({phase})");
        let path = format!("/api/tickets/{ticket_id}");
        let ticket = client.send(Method::GET, &path, None, None).await;
        let body = json!({"ticketId": ticket_id});
        let order = client
            .send(Method::POST, "/api/orders", Some(seller), Some(body))
            .await;
        match (ticket, order) {
            (Ok(t), Ok(o)) if o.status == 201 => {
                if o.body["ticket"]["price"] != t.body["price"]
                    || o.body["ticket"]["version"] != t.body["version"]
                {
                    problems.push(format!(
                        "{label}: replica {} vs tickets {}",
                        o.body["ticket"], t.body
                    ));
                }
            }
            other => problems.push(format!("{label}: not orderable: {other:?}")),
        }
    }
}

/// The order id (`metadata[orderId]`) of every successful charge at the
/// Stripe fake, and whether it was refunded.
async fn charges(stack: &Stack) -> Result<Vec<(String, bool)>, String> {
    Ok(stripe_list(stack, "charges")
        .await?
        .into_iter()
        .filter(|charge| charge["status"] == "succeeded")
        .map(|charge| {
            (
                charge["metadata"]["orderId"]
                    .as_str()
                    .unwrap_or("<no orderId>")
                    .to_owned(),
                charge["refunded"] == true,
            )
        })
        .collect())
}

/// Every object of a Stripe list (`charges`, `refunds`) of the fleet's account.
async fn stripe_list(stack: &Stack, what: &str) -> Result<Vec<Value>, String> {
    let base = stack.infra().stripe_api_base().ok_or("no Stripe fake")?;
    let http = reqwest::Client::new();
    let mut objects = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut url = format!("{base}/v1/{what}?limit=100");
        if let Some(after) = &after {
            url.push_str(&format!("&starting_after={after}"));
        }
        let page: Value = http
            .get(url)
            .bearer_auth(STRIPE_KEY)
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        let data = page["data"]
            .as_array()
            .ok_or_else(|| format!("not a list: {page}"))?;
        objects.extend(data.iter().cloned());
        after = data
            .last()
            .and_then(|c| c["id"].as_str())
            .map(str::to_owned);
        if page["has_more"] != true || after.is_none() {
            return Ok(objects);
        }
    }
}
