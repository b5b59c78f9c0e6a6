//! The listing read in windows (see `tickets::listing`): whatever the
//! widths the store starts from and learns, every page is the page one
//! unbounded read gives — same tickets, same order, each once.

use futures::TryStreamExt;
use mongodb::bson::{Document, doc, oid::ObjectId};
use tickets::{
    listing::{ListQuery, Sort},
    search,
    store::{Ticket, Tickets},
};

use crate::helpers::spawn;

/// An id made at `seconds` after the epoch, `n`-th of that second.
fn id_at(seconds: u32, n: u32) -> ObjectId {
    let mut bytes = [0u8; 12];
    bytes[..4].copy_from_slice(&seconds.to_be_bytes());
    bytes[8..].copy_from_slice(&n.to_be_bytes());
    ObjectId::from_bytes(bytes)
}

/// 400 tickets: bursts in one second and single tickets days apart, prices
/// with many ties, some reserved or withdrawn (never listed).
async fn seed(store: &Tickets) {
    let now = u32::try_from(chrono::Utc::now().timestamp()).unwrap();
    let words = ["radio", "madison", "arena", "zenith", "wembley"];
    let tickets: Vec<Document> = (0..400u32)
        .map(|n| {
            let id = if n % 3 == 0 {
                id_at(now - 86_400 * (n % 40), n)
            } else {
                id_at(now - 5, n)
            };
            let title = format!(
                "{} {} {n}",
                words[n as usize % words.len()],
                words[(n as usize / 5) % words.len()]
            );
            let mut ticket = doc! {
                "_id": id,
                "prefixes": search::prefixes(&title),
                "title": title,
                "price": i64::from(100 + (n * 37) % 23 * 50),
                "userId": "seller",
                "version": 0_i64,
            };
            if n % 11 == 0 {
                ticket.insert("orderId", ObjectId::new().to_hex());
            }
            if n % 13 == 0 {
                ticket.insert("withdrawn", true);
            }
            ticket
        })
        .collect();
    store.documents().insert_many(tickets).await.unwrap();
}

/// The whole listing in one read.
async fn all_at_once(store: &Tickets, query: &ListQuery) -> Vec<ObjectId> {
    let tickets: Vec<Ticket> = store
        .documents()
        .clone_with_type()
        .find(query.filter())
        .sort(query.sort.order())
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    tickets.into_iter().map(|t| t.id).collect()
}

/// The whole listing page by page, `limit` a page.
async fn paged(store: &Tickets, query: &ListQuery, limit: i64) -> Vec<ObjectId> {
    let mut query = ListQuery {
        limit,
        ..query.clone()
    };
    let mut ids = Vec::new();
    for _ in 0..1_000 {
        let page = store.list(&query).await.unwrap();
        assert!(page.tickets.len() as i64 <= limit);
        ids.extend(page.tickets.iter().map(|t| t.id));
        match page.next {
            Some(next) => query.after = Some(next),
            None => return ids,
        }
    }
    panic!("the pages never ended");
}

#[tokio::test]
async fn every_page_read_in_windows_is_the_page_of_one_read() {
    let t = spawn().await;
    seed(&t.store).await;
    let base = ListQuery::for_sale(100);
    let queries = [
        base.clone(),
        ListQuery {
            sort: Sort::PriceAscending,
            ..base.clone()
        },
        ListQuery {
            sort: Sort::PriceDescending,
            ..base.clone()
        },
        ListQuery {
            min_price: Some(300),
            max_price: Some(800),
            ..base.clone()
        },
        ListQuery {
            min_price: Some(300),
            max_price: Some(800),
            sort: Sort::PriceAscending,
            ..base.clone()
        },
        ListQuery {
            max_price: Some(900),
            sort: Sort::PriceDescending,
            ..base.clone()
        },
        ListQuery {
            words: vec!["radio".into()],
            ..base.clone()
        },
        ListQuery {
            words: vec!["madi".into(), "radio".into()],
            ..base.clone()
        },
        ListQuery {
            words: vec!["arena".into()],
            min_price: Some(200),
            sort: Sort::PriceAscending,
            ..base.clone()
        },
    ];
    for query in &queries {
        let expected = all_at_once(&t.store, query).await;
        assert!(!expected.is_empty(), "{query:?} lists nothing");
        // One ticket a page teaches the store narrow windows; the larger
        // pages after it then grow them, window after window.
        for limit in [1, 7, 100, 1, 50] {
            let listed = paged(&t.store, query, limit).await;
            assert_eq!(listed, expected, "{query:?} at {limit} a page");
        }
    }
}

/// Tickets sharing a few prices, paged one at a time cheapest first and
/// dearest first, with and without a price bound that some of them sit on:
/// every ticket at a bound or at a window's end is listed, once. (Small, so
/// that `make test` runs it on each MongoDB-wire server; SecantusDB's
/// Python server once dropped the keys at a `$lte` bound of a compound
/// index.)
#[tokio::test]
async fn tickets_on_a_price_bound_or_a_window_end_are_listed() {
    let t = spawn().await;
    let tickets: Vec<Document> = (0..24u32)
        .map(|n| {
            let title = format!("concert {n}");
            doc! {
                "_id": ObjectId::new(),
                "prefixes": search::prefixes(&title),
                "title": title,
                "price": i64::from(100 * (1 + n % 4)),
                "userId": "seller",
                "version": 0_i64,
            }
        })
        .collect();
    t.store.documents().insert_many(tickets).await.unwrap();
    let base = ListQuery::for_sale(100);
    for sort in [Sort::PriceAscending, Sort::PriceDescending] {
        for (min_price, max_price) in [(None, None), (Some(200), Some(300)), (None, Some(100))] {
            let query = ListQuery {
                sort,
                min_price,
                max_price,
                ..base.clone()
            };
            let expected = all_at_once(&t.store, &query).await;
            let in_bounds = (0..24)
                .map(|n| 100 * (1 + n % 4))
                .filter(|p| min_price.is_none_or(|m| *p >= m) && max_price.is_none_or(|m| *p <= m))
                .count();
            assert_eq!(expected.len(), in_bounds, "{query:?} read at once");
            assert_eq!(paged(&t.store, &query, 1).await, expected, "{query:?}");
        }
    }
}
