//! Restarting a service while events flow loses nothing: every replica
//! converges once it is back.

use std::time::Duration;

use fleet_tests::Shop;
use serde_json::json;

#[tokio::test]
async fn orders_killed_mid_stream_catches_up_on_everything_it_missed() {
    // One buyer orders every ticket: the hoarding limit is raised for it.
    let mut shop = Shop::open_with(
        &[
            ("EXPIRATION_WINDOW_SECONDS", "600"),
            ("MAX_ACTIVE_ORDERS_PER_USER", "100"),
        ],
        devstack::ingress::IngressOptions::default(),
    )
    .await;
    let seller = shop.signup().await;

    // Events flowing before, during and after the outage.
    let mut tickets = Vec::new();
    for i in 0..10 {
        tickets.push(shop.sell(&seller, &format!("before {i}"), 10.0).await);
    }
    shop.stack
        .fleet_mut()
        .kill_service("orders")
        .await
        .expect("kill orders");
    for i in 0..10 {
        tickets.push(shop.sell(&seller, &format!("during {i}"), 10.0).await);
    }
    // Price changes while orders is down: the replica must end at the last one.
    for (n, ticket) in tickets.iter().enumerate() {
        let reply = shop
            .send(
                reqwest::Method::PUT,
                &format!("/api/tickets/{ticket}"),
                Some(&seller),
                Some(json!({"title": "final", "price": 10 + n})),
            )
            .await;
        reply.assert_status(200);
    }
    shop.stack
        .fleet_mut()
        .start_service("orders")
        .await
        .expect("restart orders");
    for i in 0..5 {
        tickets.push(shop.sell(&seller, &format!("after {i}"), 42.0).await);
    }

    // Every ticket reached the replica at its latest version and price. A
    // ticket is orderable as soon as its creation arrives; an update that
    // arrived before it (the creation was in hand when orders died, and came
    // back after the ack wait) follows after its backoff. The order shows
    // the replica as it is when read, so read it until it converges.
    let buyer = shop.signup().await;
    for (n, ticket) in tickets.iter().enumerate() {
        let expected = if n < 20 { (10 + n) as f64 } else { 42.0 };
        let version: i64 = if n < 20 { 1 } else { 0 };
        let order = shop.buy(&buyer, ticket).await;
        let id = order.id;
        let converged = shop
            .until(Duration::from_secs(60), || async {
                let reply = shop.get(&format!("/api/orders/{id}"), Some(&buyer)).await;
                let seen = &reply.body["ticket"];
                // At least that version: the order itself reserves the
                // ticket, whose next `ticket.updated` may arrive first.
                let at_least = seen["version"].as_i64().is_some_and(|v| v >= version);
                (seen["price"].as_f64() == Some(expected) && at_least).then_some(())
            })
            .await;
        assert!(
            converged.is_some(),
            "ticket {n}: the replica never reached version {version} at {expected}: {}",
            shop.get(&format!("/api/orders/{id}"), Some(&buyer))
                .await
                .body
        );
    }
    // ...and every order.created reached tickets, which reserved each one.
    let all_reserved = shop
        .until(Duration::from_secs(20), || async {
            let mut reserved = 0;
            for ticket in &tickets {
                let reply = shop.get(&format!("/api/tickets/{ticket}"), None).await;
                if reply.body["orderId"].is_string() {
                    reserved += 1;
                }
            }
            (reserved == tickets.len()).then_some(())
        })
        .await;
    assert!(
        all_reserved.is_some(),
        "every ticket is reserved by its order"
    );
    let orders = shop.get("/api/orders", Some(&buyer)).await;
    assert_eq!(
        orders.body.as_array().map(Vec::len),
        Some(tickets.len()),
        "one order per ticket, none lost or doubled"
    );
    shop.close().await;
}
