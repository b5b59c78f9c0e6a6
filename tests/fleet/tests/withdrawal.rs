//! A seller withdrawing a ticket while a buyer orders it, through the
//! ingress, 50 times on fresh tickets. Each run must end in one of two ways
//! only: the order stands (tickets reserved the ticket for it) and the
//! withdrawal is refused, or the withdrawal stands (the ticket is gone from
//! tickets and from the orders replica) and the order, if it was created,
//! is cancelled with a reason its buyer sees. Never an order holding a
//! withdrawn ticket. Both sides must win somewhere: a round where one never
//! did is run again with the withdrawals timed for this machine.

use std::time::{Duration, Instant};

use fleet_tests::{Shop, User};
use serde_json::{Value, json};
use testkit::TestApp;
use tokio_util::sync::CancellationToken;

const RUNS: usize = 50;
/// Rounds of [`RUNS`] at most, until both sides of the race have won.
const ROUNDS: usize = 4;
const WITHDRAWN_REASON: &str = "The seller withdrew this ticket";
/// How long each run's withdrawal waits after its order is sent, by run, in
/// the first round (later rounds stretch it, see [`next_stretch`]).
const STAGGER_MS: [u64; 10] = [0, 5, 10, 20, 40, 80, 160, 320, 640, LONGEST_STAGGER_MS];
const LONGEST_STAGGER_MS: u64 = 1000;

/// How one run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// The order stands; the withdrawal was refused.
    OrderStands,
    /// The withdrawal stands; the order was cancelled with its reason.
    WithdrawnOrderCancelled,
    /// The withdrawal stands; the order was refused (404).
    WithdrawnOrderRefused,
}

#[tokio::test]
async fn withdrawing_while_another_user_orders_ends_one_way_or_the_other_and_orders_agrees() {
    // Each round's buyer orders every ticket of its round: the hoarding
    // limit is raised for it.
    let shop = Shop::open_with(
        &[
            ("EXPIRATION_WINDOW_SECONDS", "600"),
            ("MAX_ACTIVE_ORDERS_PER_USER", "100"),
        ],
        devstack::ingress::IngressOptions::default(),
    )
    .await;
    let seller = shop.signup().await;
    let witness = shop.signup().await;

    // Every round must end each run one of the allowed ways. How long an
    // order takes depends on the machine (on a cold one the database shares
    // its cores with a build): a round in which one side never won is
    // followed by one whose withdrawals wait longer (or shorter), so that
    // both sides of the race get to win, and the close calls between.
    let mut outcomes = Vec::new();
    let (mut order_won, mut withdrawal_won) = (0, 0);
    let mut stretch = 1.0;
    for round in 0..ROUNDS {
        let buyer = shop.signup().await;
        let (ended, longest_order) =
            race_round(&shop, &seller, &buyer, &witness, round, stretch).await;
        outcomes.extend(ended);
        let count = |o: Outcome| outcomes.iter().filter(|x| **x == o).count();
        order_won = count(Outcome::OrderStands);
        withdrawal_won =
            count(Outcome::WithdrawnOrderCancelled) + count(Outcome::WithdrawnOrderRefused);
        println!(
            "round {round} (withdrawals up to {:.0} ms after the order; the slowest order took {} ms): \
             so far order stands {order_won}, withdrawn and order cancelled {}, withdrawn and order refused {}",
            stretch * LONGEST_STAGGER_MS as f64,
            longest_order.as_millis(),
            count(Outcome::WithdrawnOrderCancelled),
            count(Outcome::WithdrawnOrderRefused),
        );
        if order_won > 0 && withdrawal_won > 0 {
            break;
        }
        stretch = next_stretch(stretch, order_won > 0, longest_order);
    }
    assert!(
        order_won > 0,
        "no run where the order won in {ROUNDS} rounds: the race was not exercised"
    );
    assert!(
        withdrawal_won > 0,
        "no run where the withdrawal won in {ROUNDS} rounds: the race was not exercised"
    );
    shop.close().await;
}

/// The next round's stretch of [`STAGGER_MS`]: when no order has won yet, its
/// last withdrawals wait at least twice as long as the slowest order took;
/// when only orders have won, they all wait a quarter as long.
fn next_stretch(stretch: f64, an_order_won: bool, longest_order: Duration) -> f64 {
    if an_order_won {
        stretch / 4.0
    } else {
        (stretch * 2.0).max(2.0 * longest_order.as_secs_f64() * 1000.0 / LONGEST_STAGGER_MS as f64)
    }
}

/// One round: [`RUNS`] fresh tickets, each withdrawn by `seller` while
/// `buyer` orders it, all at once; each run's ending is checked with every
/// service. Returns the endings and how long the slowest order took.
async fn race_round(
    shop: &Shop,
    seller: &User,
    buyer: &User,
    witness: &User,
    round: usize,
    stretch: f64,
) -> (Vec<Outcome>, Duration) {
    let mut tickets = Vec::new();
    for i in 0..RUNS {
        tickets.push(shop.sell(seller, &format!("race {round}.{i}"), 10.0).await);
    }
    wait_until_orders_has_replicated(shop, RUNS * (round + 1)).await;

    let runs = futures::future::join_all(tickets.iter().enumerate().map(|(i, ticket)| {
        let stagger =
            Duration::from_secs_f64(STAGGER_MS[i % STAGGER_MS.len()] as f64 * stretch / 1000.0);
        async move {
            let withdraw = async {
                tokio::time::sleep(stagger).await;
                shop.send(
                    reqwest::Method::DELETE,
                    &format!("/api/tickets/{ticket}"),
                    Some(seller),
                    None,
                )
                .await
            };
            let order = async {
                let sent = Instant::now();
                let reply = shop
                    .post("/api/orders", Some(buyer), json!({"ticketId": ticket}))
                    .await;
                (reply, sent.elapsed())
            };
            tokio::join!(withdraw, order)
        }
    }))
    .await;

    let mut outcomes = Vec::new();
    let mut longest_order = Duration::ZERO;
    for (ticket, (withdrawal, (order, took))) in tickets.iter().zip(runs) {
        longest_order = longest_order.max(took);
        let outcome = match (withdrawal.status, order.status) {
            (400, 201) => {
                withdrawal.assert_error(400, "Cannot withdraw a reserved ticket");
                Outcome::OrderStands
            }
            (204, 201) => Outcome::WithdrawnOrderCancelled,
            (204, 404) => {
                order.assert_error(404, "Not Found");
                Outcome::WithdrawnOrderRefused
            }
            other => panic!(
                "ticket {ticket}: withdrawal {} ({}), order {} ({})",
                other.0, withdrawal.text, other.1, order.text
            ),
        };
        let order_id = order.body["id"].as_str().map(str::to_owned);
        settle(shop, buyer, witness, ticket, order_id.as_deref(), outcome).await;
        outcomes.push(outcome);
    }
    (outcomes, longest_order)
}

/// Waits until the orders service has handled `n` `ticket.created` (its
/// `/metrics`), so that each race starts with a ticket orders knows.
async fn wait_until_orders_has_replicated(shop: &Shop, n: usize) {
    let address = shop.stack.fleet().addr("orders").expect("orders runs");
    let orders = TestApp::new(address, CancellationToken::new());
    let replicated = shop
        .until(Duration::from_secs(30), || async {
            let handled = testkit::metric(
                &orders,
                "bus_events_total",
                &[
                    ("consumer", "orders-service-ticket-created"),
                    ("outcome", "handled"),
                ],
            )
            .await
            .unwrap_or(0.0);
            (handled >= n as f64).then_some(())
        })
        .await;
    assert!(replicated.is_some(), "orders never replicated the tickets");
}

/// Checks that every service agrees on how the run on `ticket` ended.
async fn settle(
    shop: &Shop,
    buyer: &User,
    witness: &User,
    ticket: &str,
    order_id: Option<&str>,
    outcome: Outcome,
) {
    let within = Duration::from_secs(15);
    match outcome {
        Outcome::OrderStands => {
            let order_id = order_id.expect("a created order has an id");
            let reserved = shop
                .until(within, || async {
                    let reply = shop.get(&format!("/api/tickets/{ticket}"), None).await;
                    (reply.status == 200 && reply.body["orderId"] == json!(order_id)).then_some(())
                })
                .await;
            assert!(
                reserved.is_some(),
                "ticket {ticket} never reserved by {order_id}"
            );
            assert_eq!(shop.order_status(buyer, order_id).await, "created");
            shop.post("/api/orders", Some(witness), json!({"ticketId": ticket}))
                .await
                .assert_error(400, "Ticket is already reserved");
        }
        Outcome::WithdrawnOrderCancelled | Outcome::WithdrawnOrderRefused => {
            shop.get(&format!("/api/tickets/{ticket}"), None)
                .await
                .assert_error(404, "Not Found");
            assert!(!shop.listed(ticket).await, "ticket {ticket} still listed");
            // Every order of this buyer for the ticket ends cancelled, with
            // the reason (the refused one may have been written and then
            // cancelled too).
            let cancelled = shop
                .until(within, || async {
                    let orders = buyer_orders_for(shop, buyer, ticket).await;
                    orders
                        .iter()
                        .all(|o| {
                            o["status"] == "cancelled" && o["cancelReason"] == WITHDRAWN_REASON
                        })
                        .then_some(orders)
                })
                .await
                .unwrap_or_else(|| {
                    panic!("ticket {ticket} withdrawn but an order for it is not cancelled")
                });
            if outcome == Outcome::WithdrawnOrderCancelled {
                let order_id = order_id.expect("a created order has an id");
                assert!(
                    cancelled.iter().any(|o| o["id"] == json!(order_id)),
                    "order {order_id} missing from the buyer's orders"
                );
            }
            // The orders replica knows it is withdrawn.
            let refused = shop
                .until(within, || async {
                    let reply = shop
                        .post("/api/orders", Some(witness), json!({"ticketId": ticket}))
                        .await;
                    assert_ne!(reply.status, 201, "withdrawn ticket {ticket} ordered");
                    (reply.status == 404).then_some(())
                })
                .await;
            assert!(refused.is_some(), "orders still takes orders for {ticket}");
        }
    }
}

/// The buyer's orders for `ticket`.
async fn buyer_orders_for(shop: &Shop, buyer: &User, ticket: &str) -> Vec<Value> {
    let reply = shop.get("/api/orders", Some(buyer)).await;
    reply.assert_status(200);
    reply
        .body
        .as_array()
        .expect("a list of orders")
        .iter()
        .filter(|o| o["ticket"]["id"] == json!(ticket))
        .cloned()
        .collect()
}
