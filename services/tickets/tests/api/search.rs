//! `GET /api/tickets` search, filters, sort orders and keyset pages.

use std::collections::HashSet;

use serde_json::json;

use crate::helpers::{TestTickets, id_of, next_link, spawn, titles};

async fn sell(t: &TestTickets, listings: &[(&str, f64)]) {
    let cookie = testkit::signin();
    for (title, price) in listings {
        t.create_ticket(&cookie, title, json!(price)).await;
    }
}

fn sorted(mut titles: Vec<String>) -> Vec<String> {
    titles.sort();
    titles
}

#[tokio::test]
async fn every_word_prefix_matches_a_title_word_whatever_the_case_and_accents() {
    let t = spawn().await;
    sell(
        &t,
        &[
            ("Radiohead, Madison Square Garden", 80.0),
            ("Beyoncé — Zénith de Paris", 120.0),
            ("Radio City Christmas", 40.0),
            ("Madness at the Roundhouse", 30.0),
        ],
    )
    .await;

    let search = |q: &'static str| {
        let t = &t;
        async move {
            let reply = t.list(&format!("?q={q}")).await;
            reply.assert_status(200);
            sorted(titles(&reply))
        }
    };
    assert_eq!(
        search("radio%20madi").await,
        ["Radiohead, Madison Square Garden"]
    );
    assert_eq!(
        search("RADIO").await,
        ["Radio City Christmas", "Radiohead, Madison Square Garden"]
    );
    assert_eq!(search("zenith").await, ["Beyoncé — Zénith de Paris"]);
    assert_eq!(
        search("BEYONCÉ%20z%C3%A9").await,
        ["Beyoncé — Zénith de Paris"]
    );
    assert_eq!(
        search("mad").await,
        [
            "Madness at the Roundhouse",
            "Radiohead, Madison Square Garden"
        ]
    );
    // A prefix of a word, not a substring of one.
    assert!(search("adio").await.is_empty());
    // Every word must match.
    assert!(search("radio%20paris").await.is_empty());
    // No word at all: no search.
    assert_eq!(search("%20%2C").await.len(), 4);
}

#[tokio::test]
async fn a_search_finds_the_new_title_after_an_edit_and_not_the_old_one() {
    let t = spawn().await;
    let cookie = testkit::signin();
    let ticket = t.create_ticket(&cookie, "Old name", json!(10)).await;
    t.put(
        &id_of(&ticket),
        Some(&cookie),
        json!({"title": "Nouvelle Vague", "price": 10}),
    )
    .await
    .assert_status(200);
    assert!(titles(&t.list("?q=old").await).is_empty());
    assert_eq!(titles(&t.list("?q=nouv").await), ["Nouvelle Vague"]);
}

#[tokio::test]
async fn filters_by_price_and_sorts_by_price_either_way() {
    let t = spawn().await;
    sell(
        &t,
        &[
            ("a", 10.0),
            ("b", 25.5),
            ("c", 40.0),
            ("d", 25.5),
            ("e", 5.0),
        ],
    )
    .await;

    assert_eq!(
        sorted(titles(&t.list("?minPrice=25.5").await)),
        ["b", "c", "d"]
    );
    assert_eq!(sorted(titles(&t.list("?maxPrice=10").await)), ["a", "e"]);
    assert_eq!(
        sorted(titles(&t.list("?minPrice=10&maxPrice=25.50").await)),
        ["a", "b", "d"]
    );
    assert_eq!(titles(&t.list("?minPrice=0").await).len(), 5);

    // Equal prices come in id order (newest last when cheapest first).
    assert_eq!(
        titles(&t.list("?sort=price").await),
        ["e", "a", "b", "d", "c"]
    );
    assert_eq!(
        titles(&t.list("?sort=-price").await),
        ["c", "d", "b", "a", "e"]
    );
    assert_eq!(
        titles(&t.list("?sort=newest").await),
        ["e", "d", "c", "b", "a"]
    );
    assert_eq!(
        titles(&t.list("?sort=price&minPrice=6&maxPrice=30").await),
        ["a", "b", "d"]
    );
}

#[tokio::test]
async fn search_filters_and_sort_combine() {
    let t = spawn().await;
    sell(
        &t,
        &[
            ("Jazz à Vienne", 50.0),
            ("Jazz Café", 15.0),
            ("Jazzfest", 30.0),
            ("Rock en Seine", 30.0),
        ],
    )
    .await;
    assert_eq!(
        titles(&t.list("?q=jazz&sort=-price&maxPrice=40").await),
        ["Jazzfest", "Jazz Café"]
    );
}

#[tokio::test]
async fn pages_follow_the_link_header_until_the_last_page() {
    let t = spawn().await;
    let listings: Vec<(String, f64)> = (0..7)
        .map(|n| (format!("gig {n}"), 10.0 + (n % 3) as f64))
        .collect();
    let listings: Vec<(&str, f64)> = listings.iter().map(|(t, p)| (t.as_str(), *p)).collect();
    sell(&t, &listings).await;

    for (sort, expected) in [
        (
            "newest",
            vec![
                "gig 6", "gig 5", "gig 4", "gig 3", "gig 2", "gig 1", "gig 0",
            ],
        ),
        (
            "price",
            vec![
                "gig 0", "gig 3", "gig 6", "gig 1", "gig 4", "gig 2", "gig 5",
            ],
        ),
        (
            "-price",
            vec![
                "gig 5", "gig 2", "gig 4", "gig 1", "gig 6", "gig 3", "gig 0",
            ],
        ),
    ] {
        let mut seen = Vec::new();
        let mut next = Some(format!("/api/tickets?q=gig&sort={sort}&limit=3"));
        let mut pages = 0;
        while let Some(path) = next {
            let reply = t.app.get(&path, None).await;
            reply.assert_status(200);
            let page = titles(&reply);
            assert!(page.len() <= 3);
            seen.extend(page);
            next = next_link(&reply);
            pages += 1;
            if let Some(link) = &next {
                assert!(
                    link.contains("q=gig")
                        && link.contains(&format!("sort={sort}").replace("sort=newest", "")),
                    "{link}"
                );
            }
        }
        assert_eq!(seen, expected, "sort={sort}");
        assert_eq!(pages, 3, "sort={sort}");
    }
    // A page that exactly fills the limit and ends the listing has no link.
    assert!(next_link(&t.list("?limit=7").await).is_none());
    assert!(next_link(&t.list("?limit=6").await).is_some());
}

#[tokio::test]
async fn paging_through_250_tickets_while_more_are_listed_shows_each_once() {
    let t = spawn().await;
    let cookie = testkit::signin();
    let mut listed = HashSet::new();
    for n in 0..250 {
        let ticket = t
            .create_ticket(&cookie, &format!("ticket {n}"), json!(1 + n % 17))
            .await;
        listed.insert(id_of(&ticket));
    }

    for sort in ["newest", "price", "-price"] {
        // Sellers keep listing while the pages are read.
        let stop = tokio_util::sync::CancellationToken::new();
        let seller = {
            let (app, stop, cookie) = (t.app.http.clone(), stop.clone(), cookie.clone());
            let base = t.app.base_url.clone();
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.is_cancelled() {
                    let reply = app
                        .post(format!("{base}/api/tickets"))
                        .header("cookie", &cookie)
                        .json(&json!({"title": format!("late {n}"), "price": 1 + n % 17}))
                        .send()
                        .await
                        .expect("POST failed");
                    assert_eq!(reply.status(), 201);
                    n += 1;
                }
                n
            })
        };
        let mut seen: Vec<String> = Vec::new();
        let mut next = Some(format!("/api/tickets?sort={sort}&limit=100"));
        let mut pages = 0;
        while let Some(path) = next {
            let reply = t.app.get(&path, None).await;
            reply.assert_status(200);
            let page = reply.body.as_array().unwrap();
            assert!(page.len() <= 100);
            seen.extend(page.iter().map(id_of));
            next = next_link(&reply);
            pages += 1;
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        stop.cancel();
        let late = seller.await.unwrap();
        assert!(late > 0, "nothing was listed meanwhile");

        let unique: HashSet<&String> = seen.iter().collect();
        assert_eq!(unique.len(), seen.len(), "sort={sort}: a ticket came twice");
        for id in &listed {
            assert!(unique.contains(id), "sort={sort}: ticket {id} never came");
        }
        assert!(pages >= 3, "sort={sort}: {pages} pages");
        listed = unique.into_iter().cloned().collect();
    }
}

#[tokio::test]
async fn invalid_parameters_are_400_with_the_field() {
    let t = spawn().await;
    sell(&t, &[("a", 10.0), ("b", 20.0)]).await;
    let fields = |reply: &testkit::Reply| -> Vec<String> {
        reply.assert_status(400);
        testkit::assert_error_shape(&reply.body);
        reply.body["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["field"].as_str().unwrap_or("<none>").to_owned())
            .collect()
    };
    for (query, field) in [
        ("?minPrice=abc", "minPrice"),
        ("?minPrice=-1", "minPrice"),
        ("?maxPrice=1.234", "maxPrice"),
        ("?maxPrice=1e3", "maxPrice"),
        ("?minPrice=20&maxPrice=10", "maxPrice"),
        ("?sort=oldest", "sort"),
        ("?limit=ten", "limit"),
        ("?cursor=garbage", "cursor"),
        ("?mine=yes", "mine"),
    ] {
        assert_eq!(fields(&t.list(query).await), [field], "{query}");
    }
    let long = "a".repeat(201);
    assert_eq!(fields(&t.list(&format!("?q={long}")).await), ["q"]);
    assert_eq!(fields(&t.list("?q=a+b+c+d+e+f+g+h+i").await), ["q"]);
    assert_eq!(
        fields(&t.list("?sort=up&minPrice=x&limit=no").await),
        ["minPrice", "sort", "limit"]
    );

    // A cursor is only good for the sort order it came from.
    let first = t.list("?sort=price&limit=1").await;
    let link = next_link(&first).expect("a next page");
    let cursor = link.split("cursor=").nth(1).unwrap().to_owned();
    t.list(&format!("?sort=price&limit=1&cursor={cursor}"))
        .await
        .assert_status(200);
    assert_eq!(
        fields(&t.list(&format!("?sort=-price&cursor={cursor}")).await),
        ["cursor"]
    );

    t.list("?mine=true")
        .await
        .assert_error(401, "Not authorized");
}

#[tokio::test]
async fn tickets_stored_before_search_get_their_keys_at_the_next_start() {
    use mongodb::bson::{Document, doc, oid::ObjectId};

    let ns = crate::helpers::Namespace::fresh();
    let t = crate::helpers::spawn_in(ns.clone(), true).await;
    // A ticket as the service stored it before search existed, in a
    // database the backfill has not run on yet.
    t.store
        .documents()
        .insert_one(doc! {
            "_id": ObjectId::new(), "title": "Vieux Carré", "price": 1000_i64,
            "userId": ObjectId::new().to_hex(), "version": 0_i64,
        })
        .await
        .unwrap();
    // One stored with the first search keys, before pair keys.
    let first_keys: Vec<String> = tickets::search::prefixes("Radiohead, Madison")
        .into_iter()
        .filter(|key| !key.contains(' '))
        .collect();
    t.store
        .documents()
        .insert_one(doc! {
            "_id": ObjectId::new(), "title": "Radiohead, Madison", "price": 1000_i64,
            "userId": ObjectId::new().to_hex(), "version": 0_i64, "prefixes": first_keys,
        })
        .await
        .unwrap();
    t.store
        .database()
        .collection::<Document>("migrations")
        .drop()
        .await
        .unwrap();
    assert_eq!(
        titles(&t.list("").await),
        ["Radiohead, Madison", "Vieux Carré"],
        "listed already"
    );
    assert!(titles(&t.list("?q=carre").await).is_empty());
    assert_eq!(titles(&t.list("?q=radio").await), ["Radiohead, Madison"]);
    assert!(
        titles(&t.list("?q=radio%20madi").await).is_empty(),
        "no pair key yet"
    );
    t.stop().await;

    let t = crate::helpers::spawn_in(ns, true).await;
    assert_eq!(titles(&t.list("?q=carre").await), ["Vieux Carré"]);
    assert_eq!(titles(&t.list("?q=vieux%20ca").await), ["Vieux Carré"]);
    assert_eq!(
        titles(&t.list("?q=radio%20madi").await),
        ["Radiohead, Madison"]
    );
}
