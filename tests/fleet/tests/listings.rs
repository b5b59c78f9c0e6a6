//! A seller's own listings through a whole purchase, through the ingress:
//! `GET /api/tickets?mine=true` shows the ticket `available`, then
//! `reserved` while its buyer pays, then `sold` once the order is complete
//! (tickets learns it from `payment.created`).

use std::time::Duration;

use fleet_tests::{Shop, User};

async fn status(shop: &Shop, seller: &User, ticket: &str) -> Option<String> {
    let reply = shop.get("/api/tickets?mine=true", Some(seller)).await;
    reply.assert_status(200);
    reply
        .body
        .as_array()?
        .iter()
        .find(|t| t["id"] == ticket)
        .and_then(|t| t["status"].as_str().map(str::to_owned))
}

async fn wait_for(shop: &Shop, seller: &User, ticket: &str, expected: &str) {
    let reached = shop
        .until(Duration::from_secs(15), || async {
            (status(shop, seller, ticket).await.as_deref() == Some(expected)).then_some(())
        })
        .await;
    assert!(
        reached.is_some(),
        "ticket {ticket} never {expected}; last: {:?}",
        status(shop, seller, ticket).await
    );
}

#[tokio::test]
async fn my_listings_show_a_ticket_available_then_reserved_then_sold() {
    let shop = Shop::open(60).await;
    let seller = shop.signup().await;
    let buyer = shop.signup().await;
    let ticket = shop.sell(&seller, "concert", 20.0).await;
    let unsold = shop.sell(&seller, "other", 10.0).await;
    assert_eq!(
        status(&shop, &seller, &ticket).await.as_deref(),
        Some("available")
    );
    assert_eq!(
        status(&shop, &buyer, &ticket).await,
        None,
        "only the seller's own"
    );

    let order = shop.buy(&buyer, &ticket).await;
    let order_id = order.id.as_str();
    wait_for(&shop, &seller, &ticket, "reserved").await;

    shop.pay_when_known(&buyer, order_id, "tok_visa")
        .await
        .assert_status(201);
    shop.wait_for_status(&buyer, order_id, "complete", Duration::from_secs(10))
        .await;
    wait_for(&shop, &seller, &ticket, "sold").await;
    assert_eq!(
        status(&shop, &seller, &unsold).await.as_deref(),
        Some("available")
    );
    shop.close().await;
}
