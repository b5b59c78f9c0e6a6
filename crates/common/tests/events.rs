//! The event catalogue speaks exactly the original app's JSON, on the right
//! subjects, with deterministic message ids.

use chrono::{TimeZone, Utc};
use common::events::{
    Event, ExpirationComplete, OrderCancelled, OrderCreated, OrderStatus, OrderTicket,
    PaymentCreated, TicketCreated, TicketRef, TicketUpdated,
};
use common::money::Money;
use serde_json::{Value, json};

const TICKET: &str = "65a1b2c3d4e5f60718293a4b";
const ORDER: &str = "65a1b2c3d4e5f60718293a4c";
const USER: &str = "65a1b2c3d4e5f60718293a4d";
const PAYMENT: &str = "65a1b2c3d4e5f60718293a4e";

/// Serialises `event` to exactly `expected`, reads `expected` back to an equal
/// event, and survives a round trip through the JSON text.
fn assert_wire<E: Event + PartialEq + std::fmt::Debug>(event: &E, expected: Value) {
    assert_eq!(
        serde_json::to_value(event).unwrap(),
        expected,
        "serialised form"
    );
    assert_eq!(
        &serde_json::from_value::<E>(expected.clone()).unwrap(),
        event,
        "read from the expected JSON"
    );
    let text = serde_json::to_vec(event).unwrap();
    assert_eq!(
        &serde_json::from_slice::<E>(&text).unwrap(),
        event,
        "round trip through text"
    );
}

fn order_created() -> OrderCreated {
    OrderCreated {
        id: ORDER.into(),
        version: 0,
        status: OrderStatus::Created,
        user_id: USER.into(),
        expires_at: Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap()
            + chrono::Duration::milliseconds(678),
        ticket: OrderTicket {
            id: TICKET.into(),
            price: Money::from_cents(1250),
        },
    }
}

#[test]
fn ticket_created_is_the_original_json() {
    let event = TicketCreated {
        id: TICKET.into(),
        version: 0,
        title: "Concert".into(),
        price: Money::from_cents(2000),
        user_id: USER.into(),
    };
    assert_wire(
        &event,
        json!({"id": TICKET, "version": 0, "title": "Concert", "price": 20, "userId": USER}),
    );
    assert_eq!(TicketCreated::SUBJECT, "ticket.created");
    assert_eq!(event.message_id(), format!("ticket.created:{TICKET}:0"));
}

#[test]
fn ticket_updated_omits_a_missing_order_id() {
    let mut event = TicketUpdated {
        id: TICKET.into(),
        version: 3,
        title: "Concert".into(),
        price: Money::from_cents(99),
        user_id: USER.into(),
        order_id: None,
        withdrawn: false,
    };
    assert_wire(
        &event,
        json!({"id": TICKET, "version": 3, "title": "Concert", "price": 0.99, "userId": USER}),
    );
    event.order_id = Some(ORDER.into());
    assert_wire(
        &event,
        json!({"id": TICKET, "version": 3, "title": "Concert", "price": 0.99, "userId": USER, "orderId": ORDER}),
    );
    assert_eq!(TicketUpdated::SUBJECT, "ticket.updated");
    assert_eq!(event.message_id(), format!("ticket.updated:{TICKET}:3"));
}

#[test]
fn ticket_updated_adds_withdrawn_only_when_true_and_reads_it_absent_as_false() {
    let mut event: TicketUpdated = serde_json::from_value(
        json!({"id": TICKET, "version": 2, "title": "T", "price": 5, "userId": USER}),
    )
    .unwrap();
    assert!(!event.withdrawn);
    event.withdrawn = true;
    assert_wire(
        &event,
        json!({"id": TICKET, "version": 2, "title": "T", "price": 5, "userId": USER, "withdrawn": true}),
    );
}

#[test]
fn ticket_updated_reads_a_null_order_id_as_none() {
    let event: TicketUpdated = serde_json::from_value(
        json!({"id": TICKET, "version": 1, "title": "T", "price": 5, "userId": USER, "orderId": null}),
    )
    .unwrap();
    assert_eq!(event.order_id, None);
}

#[test]
fn order_created_is_the_original_json_with_a_js_timestamp() {
    let event = order_created();
    assert_wire(
        &event,
        json!({
            "id": ORDER,
            "version": 0,
            "status": "created",
            "userId": USER,
            "expiresAt": "2026-01-02T03:04:05.678Z",
            "ticket": {"id": TICKET, "price": 12.5},
        }),
    );
    assert_eq!(OrderCreated::SUBJECT, "order.created");
    assert_eq!(event.message_id(), format!("order.created:{ORDER}:0"));
}

#[test]
fn order_created_accepts_any_rfc3339_expiry() {
    let mut payload = serde_json::to_value(order_created()).unwrap();
    for (text, expected) in [
        ("2026-01-02T04:04:05.678+01:00", "2026-01-02T03:04:05.678Z"),
        ("2026-01-02T03:04:05Z", "2026-01-02T03:04:05.000Z"),
        ("2026-01-02T03:04:05.678901Z", "2026-01-02T03:04:05.678Z"),
    ] {
        payload["expiresAt"] = json!(text);
        let event: OrderCreated = serde_json::from_value(payload.clone()).unwrap();
        assert_eq!(
            serde_json::to_value(&event).unwrap()["expiresAt"],
            json!(expected),
            "{text}"
        );
    }
    payload["expiresAt"] = json!("tomorrow");
    assert!(serde_json::from_value::<OrderCreated>(payload).is_err());
}

#[test]
fn order_cancelled_is_the_original_json() {
    let event = OrderCancelled {
        id: ORDER.into(),
        version: 1,
        ticket: TicketRef { id: TICKET.into() },
    };
    assert_wire(
        &event,
        json!({"id": ORDER, "version": 1, "ticket": {"id": TICKET}}),
    );
    assert_eq!(OrderCancelled::SUBJECT, "order.cancelled");
    assert_eq!(event.message_id(), format!("order.cancelled:{ORDER}:1"));
}

#[test]
fn expiration_complete_is_the_original_json() {
    let event = ExpirationComplete {
        order_id: ORDER.into(),
    };
    assert_wire(&event, json!({"orderId": ORDER}));
    assert_eq!(ExpirationComplete::SUBJECT, "expiration.complete");
    assert_eq!(event.message_id(), format!("expiration.complete:{ORDER}"));
}

#[test]
fn payment_created_is_the_original_json() {
    let event = PaymentCreated {
        id: PAYMENT.into(),
        order_id: ORDER.into(),
        stripe_id: "ch_123".into(),
    };
    assert_wire(
        &event,
        json!({"id": PAYMENT, "orderId": ORDER, "stripeId": "ch_123"}),
    );
    assert_eq!(PaymentCreated::SUBJECT, "payment.created");
    assert_eq!(event.message_id(), format!("payment.created:{PAYMENT}"));
}

#[test]
fn order_status_uses_the_original_strings() {
    for (status, text) in [
        (OrderStatus::Created, "created"),
        (OrderStatus::AwaitingPayment, "awaiting:payment"),
        (OrderStatus::Cancelled, "cancelled"),
        (OrderStatus::Complete, "complete"),
    ] {
        assert_eq!(serde_json::to_value(status).unwrap(), json!(text));
        assert_eq!(
            serde_json::from_value::<OrderStatus>(json!(text)).unwrap(),
            status
        );
        assert_eq!(status.to_string(), text);
    }
    assert!(serde_json::from_value::<OrderStatus>(json!("paid")).is_err());
}

#[test]
fn every_event_has_schema_version_one() {
    assert_eq!(TicketCreated::SCHEMA_VERSION, 1);
    assert_eq!(TicketUpdated::SCHEMA_VERSION, 1);
    assert_eq!(OrderCreated::SCHEMA_VERSION, 1);
    assert_eq!(OrderCancelled::SCHEMA_VERSION, 1);
    assert_eq!(ExpirationComplete::SCHEMA_VERSION, 1);
    assert_eq!(PaymentCreated::SCHEMA_VERSION, 1);
    assert!(TicketCreated::accepts_schema_version(1));
    assert!(!TicketCreated::accepts_schema_version(2));
}

#[test]
fn unknown_fields_are_ignored_and_bad_prices_rejected() {
    let event: TicketCreated = serde_json::from_value(
        json!({"id": TICKET, "version": 0, "title": "T", "price": 5, "userId": USER, "venue": "new field"}),
    )
    .unwrap();
    assert_eq!(event.price, Money::from_cents(500));
    let three_decimals =
        json!({"id": TICKET, "version": 0, "title": "T", "price": 5.001, "userId": USER});
    assert!(serde_json::from_value::<TicketCreated>(three_decimals).is_err());
    let missing_user = json!({"id": TICKET, "version": 0, "title": "T", "price": 5});
    assert!(serde_json::from_value::<TicketCreated>(missing_user).is_err());
}

#[test]
fn an_id_that_is_not_an_object_id_does_not_decode() {
    fn rejects<E: Event>(payload: Value) {
        let err = serde_json::from_value::<E>(payload.clone()).err();
        assert!(
            err.as_ref()
                .is_some_and(|e| e.to_string().contains("not a 24-hex ObjectId")),
            "{} decoded {payload} ({err:?})",
            E::SUBJECT
        );
    }
    let ticket =
        |id: &str| json!({"id": id, "version": 0, "title": "T", "price": 5, "userId": USER});
    rejects::<TicketCreated>(ticket("not-a-ticket"));
    rejects::<TicketUpdated>(ticket(&TICKET[..23]));
    let order = |id: &str, ticket: &str| {
        json!({"id": id, "version": 0, "status": "created", "userId": USER,
            "expiresAt": "2026-01-02T03:04:05.678Z", "ticket": {"id": ticket, "price": 5}})
    };
    rejects::<OrderCreated>(order("o1", TICKET));
    rejects::<OrderCreated>(order(ORDER, "t1"));
    rejects::<OrderCancelled>(json!({"id": "o1", "version": 1, "ticket": {"id": TICKET}}));
    rejects::<OrderCancelled>(json!({"id": ORDER, "version": 1, "ticket": {"id": ""}}));
    rejects::<ExpirationComplete>(json!({"orderId": "zz1b2c3d4e5f60718293a4bc"}));
    rejects::<PaymentCreated>(json!({"id": PAYMENT, "orderId": "o1", "stripeId": "pi_1"}));
    // The wire stays the 24-hex string, read back as it was written.
    assert_wire(
        &ExpirationComplete {
            order_id: ORDER.into(),
        },
        json!({"orderId": ORDER}),
    );
}
