//! The purchase lifecycle through the ingress: buy and pay, let expire, a
//! declined card. Each test has a fleet of its own.

use std::time::{Duration, Instant};

use common::{events::OrderStatus, money::Money};
use fleet_tests::Shop;

/// Long enough to pay within, short enough to watch expire.
const WINDOW_SECONDS: u64 = 5;

#[tokio::test]
async fn buy_and_pay_completes_the_order_once_and_for_all() {
    let shop = Shop::open(60).await;
    let seller = shop.signup().await;
    let buyer = shop.signup().await;
    let ticket = shop.sell(&seller, "concert", 20.5).await;
    let order = shop.buy(&buyer, &ticket).await;
    let order_id = order.id.as_str();
    assert_eq!(order.status, OrderStatus::Created);
    assert_eq!(
        order.ticket.as_ref().map(|t| t.price),
        Some(Money::from_cents(2050))
    );

    shop.pay_when_known(&buyer, order_id, "tok_visa")
        .await
        .assert_status(201);
    shop.wait_for_status(&buyer, order_id, "complete", Duration::from_secs(10))
        .await;
    shop.pay(&buyer, order_id, "tok_visa")
        .await
        .assert_error(400, "Order is already paid");

    // The ticket never comes back: not when the order would have expired, not ever.
    assert!(!shop.listed(&ticket).await);
    let other = shop.signup().await;
    let again = shop
        .post(
            "/api/orders",
            Some(&other),
            serde_json::json!({"ticketId": ticket}),
        )
        .await;
    again.assert_error(400, "Ticket is already reserved");
    shop.close().await;
}

#[tokio::test]
async fn an_unpaid_order_expires_on_time_and_the_ticket_is_sold_again() {
    let shop = Shop::open(WINDOW_SECONDS).await;
    let seller = shop.signup().await;
    let buyer = shop.signup().await;
    let ticket = shop.sell(&seller, "match", 15.0).await;
    let order = shop.buy(&buyer, &ticket).await;
    let ordered_at = Instant::now();
    let order_id = order.id.clone();
    assert!(
        shop.until(Duration::from_secs(10), || async {
            (!shop.listed(&ticket).await).then_some(())
        })
        .await
        .is_some()
    );

    shop.wait_for_status(
        &buyer,
        &order_id,
        "cancelled",
        Duration::from_secs(WINDOW_SECONDS + 10),
    )
    .await;
    let after = ordered_at.elapsed();
    assert!(
        after >= Duration::from_secs(WINDOW_SECONDS - 1)
            && after <= Duration::from_secs(WINDOW_SECONDS + 3),
        "cancelled {after:?} after ordering with a {WINDOW_SECONDS}s window"
    );
    shop.pay_when_known(&buyer, &order_id, "tok_visa")
        .await
        .assert_error(400, "Cannot pay for a cancelled order");

    assert!(
        shop.until(Duration::from_secs(10), || async {
            shop.listed(&ticket).await.then_some(())
        })
        .await
        .is_some(),
        "the ticket is listed again"
    );
    let next = shop.signup().await;
    let second = shop.buy(&next, &ticket).await;
    assert_eq!(second.status, OrderStatus::Created);
    shop.close().await;
}

#[tokio::test]
async fn a_declined_card_is_refused_and_the_order_stays_payable() {
    let shop = Shop::open(60).await;
    let seller = shop.signup().await;
    let buyer = shop.signup().await;
    let ticket = shop.sell(&seller, "opera", 99.99).await;
    let order = shop.buy(&buyer, &ticket).await;
    let order_id = order.id.as_str();

    shop.pay_when_known(&buyer, order_id, "tok_chargeDeclined")
        .await
        .assert_error(400, "Your card was declined.");
    assert_eq!(shop.order_status(&buyer, order_id).await, "created");
    shop.pay(&buyer, order_id, "tok_visa")
        .await
        .assert_status(201);
    shop.wait_for_status(&buyer, order_id, "complete", Duration::from_secs(10))
        .await;
    shop.close().await;
}
