//! The cost of `GET /api/tickets` as the collection grows: the first page, a
//! deep page, a search and a price filter, at 1,000 and at 100,000 tickets
//! (issue 15: the p50 at 100,000 within 2× of the p50 at 1,000).
//!
//! The tickets are written straight into the tickets service's collection
//! in the shape the service stores (title, price in cents, seller, version,
//! search keys), without events: only the listing reads them. The deep page
//! is reached by following `Link: rel="next"` from the first page, as a
//! client would; the same page number at both sizes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use mongodb::bson::{Document, doc, oid::ObjectId};
use serde::Serialize;

use crate::api::Api;
use crate::load::{self, Req, Shape};
use crate::stats::Throughput;

/// The collection sizes measured.
pub const SIZES: [u64; 2] = [1_000, 100_000];
/// Which page the deep page is (the 10th at 100 a page).
const DEEP_PAGE: usize = 10;
/// Tickets written per insert.
const BATCH: u64 = 1_000;

const ARTISTS: [&str; 8] = [
    "Radiohead",
    "Beyonce",
    "Coldplay",
    "Adele",
    "Metallica",
    "Rosalia",
    "Stromae",
    "Muse",
];
const VENUES: [&str; 6] = [
    "Madison Square Garden",
    "Wembley",
    "Zenith",
    "Olympia",
    "Red Rocks",
    "Arena",
];

/// One query at one size.
#[derive(Debug, Clone, Serialize)]
pub struct ListingRun {
    pub query: String,
    pub tickets: u64,
    pub result: Throughput,
}

/// The four queries at each size.
#[derive(Debug, Clone, Serialize, Default)]
pub struct ListingCost {
    pub runs: Vec<ListingRun>,
}

impl ListingCost {
    /// p50 at the largest size ÷ p50 at the smallest, per query.
    pub fn ratios(&self) -> Vec<(String, f64)> {
        let (small, large) = (SIZES[0], SIZES[SIZES.len() - 1]);
        let p50 = |query: &str, size: u64| {
            self.runs
                .iter()
                .find(|r| r.query == query && r.tickets == size)
                .map(|r| r.result.latency.p50_ms)
        };
        // Each query once, in the order first measured (the runs go size by
        // size, so the same query is not next to itself).
        let mut queries: Vec<&str> = Vec::new();
        for run in &self.runs {
            if !queries.contains(&run.query.as_str()) {
                queries.push(&run.query);
            }
        }
        queries
            .into_iter()
            .filter_map(|q| Some((q.to_owned(), p50(q, large)? / p50(q, small)?.max(1e-6))))
            .collect()
    }
}

/// Writes tickets into the service's collection until it holds `size`.
async fn grow_to(tickets: &mongodb::Collection<Document>, size: u64) -> anyhow::Result<()> {
    let mut have = tickets.count_documents(doc! {}).await?;
    let seller = ObjectId::new().to_hex();
    while have < size {
        let batch: Vec<Document> = (have..size.min(have + BATCH))
            .map(|n| {
                let title = format!(
                    "{} at {} {n}",
                    ARTISTS[n as usize % ARTISTS.len()],
                    VENUES[(n as usize / ARTISTS.len()) % VENUES.len()]
                );
                doc! {
                    "_id": ObjectId::new(),
                    "prefixes": tickets::search::prefixes(&title),
                    "title": title,
                    "price": 500 + (n as i64 * 37) % 20_000,
                    "userId": &seller,
                    "version": 0_i64,
                }
            })
            .collect();
        let written = batch.len() as u64;
        tickets
            .insert_many(batch)
            .await
            .context("failed to seed tickets")?;
        have += written;
    }
    Ok(())
}

/// The path of page `page` of `first`, following `Link: rel="next"`.
async fn page_path(api: &Api, first: &str, page: usize) -> anyhow::Result<String> {
    let mut path = first.to_owned();
    for _ in 1..page {
        let reply = api.get(&path, None).await?;
        let link = reply
            .link()
            .context("the listing ended before the deep page")?;
        path = link
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .trim_start_matches('<')
            .trim_end_matches('>')
            .to_owned();
    }
    Ok(path)
}

/// Measures the four queries at each size of [`SIZES`].
pub async fn measure(
    api: &Api,
    ingress: SocketAddr,
    mongo_uri: &str,
    shape: Shape,
    progress: impl Fn(&str),
) -> anyhow::Result<ListingCost> {
    let client = mongodb::Client::with_uri_str(mongo_uri).await?;
    let tickets = client.database("tickets").collection::<Document>("tickets");
    let mut cost = ListingCost::default();
    // The earlier phases listed some ten thousand tickets of their own: the
    // smallest size would not be that size. This phase comes last, so the
    // collection is emptied first and holds exactly each size in turn.
    tickets
        .delete_many(doc! {})
        .await
        .context("failed to empty the tickets collection")?;
    for size in SIZES {
        let started = Instant::now();
        grow_to(&tickets, size).await?;
        progress(&format!(
            "GET /api/tickets at {size} tickets (seeded in {:.1} s)",
            started.elapsed().as_secs_f64()
        ));
        let deep = page_path(api, "/api/tickets?limit=100", DEEP_PAGE).await?;
        for (query, path) in [
            ("first page", "/api/tickets".to_owned()),
            ("deep page (10th)", deep),
            (
                "search `radio madi`",
                "/api/tickets?q=radio%20madi".to_owned(),
            ),
            (
                "price 20–30, cheapest first",
                "/api/tickets?minPrice=20&maxPrice=30&sort=price".to_owned(),
            ),
        ] {
            let make: load::MakeRequest = Arc::new(move |_| Some(Req::get(path.clone())));
            let result = load::run(ingress, shape, make, load::status_is(200)).await?;
            eprintln!(
                "bench           {query} at {size}: {:.0} req/s p50 {:.2} ms p99 {:.2} ms ({} errors)",
                result.per_second, result.latency.p50_ms, result.latency.p99_ms, result.errors
            );
            cost.runs.push(ListingRun {
                query: query.to_owned(),
                tickets: size,
                result,
            });
        }
    }
    Ok(cost)
}

/// The report's section: each query's p50/p99 at each size and the ratio.
pub fn render(cost: &ListingCost, connections: usize) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n**Listing as the collection grows** — GET /api/tickets at {} and {} tickets, {connections} connections; latency in ms.\n",
        SIZES[0],
        SIZES[SIZES.len() - 1]
    );
    let _ = writeln!(out, "| query | tickets | req/s | p50 | p99 | errors |");
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|");
    for run in &cost.runs {
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} | {:.2} | {:.2} | {} |",
            run.query,
            run.tickets,
            run.result.per_second,
            run.result.latency.p50_ms,
            run.result.latency.p99_ms,
            run.result.errors
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gives_one_ratio_per_query_in_the_order_measured() {
        let run = |query: &str, tickets: u64, p50_ms: f64| ListingRun {
            query: query.to_owned(),
            tickets,
            result: crate::stats::throughput(
                vec![(p50_ms * 1000.0) as u64],
                0,
                std::time::Duration::from_secs(1),
                None,
            ),
        };
        let cost = ListingCost {
            runs: vec![
                run("first", SIZES[0], 10.0),
                run("search", SIZES[0], 20.0),
                run("first", SIZES[1], 15.0),
                run("search", SIZES[1], 80.0),
            ],
        };
        assert_eq!(
            cost.ratios(),
            [("first".to_owned(), 1.5), ("search".to_owned(), 4.0)]
        );
    }
}
