//! `faceValue` and `RESALE_CAP_PERCENT`: the price may be at most the cap's
//! percentage of the face value, when a listing gives one.

use serde_json::json;

use crate::helpers::{id_of, spawn, spawn_capped, user};

#[tokio::test]
async fn a_listing_may_carry_a_face_value_and_shows_it() {
    let t = spawn().await;
    let (_, cookie) = user();
    let ticket = t
        .create_ticket_with(
            &cookie,
            json!({"title": "gig", "price": 500, "faceValue": "80.50"}),
        )
        .await;
    assert_eq!(ticket["faceValue"], json!(80.5));
    assert_eq!(t.ticket(&id_of(&ticket)).await["faceValue"], json!(80.5));

    // Without a face value, none is shown (the original's shape).
    let plain = t.create_ticket(&cookie, "plain", json!(10)).await;
    assert!(plain.get("faceValue").is_none());

    t.post(
        &cookie,
        json!({"title": "gig", "price": 5, "faceValue": -1}),
    )
    .await
    .assert_error(400, "Face value must be greater than 0");
    let reply = t
        .post(
            &cookie,
            json!({"title": "gig", "price": 5, "faceValue": 1.001}),
        )
        .await;
    assert_eq!(
        reply.body["errors"],
        json!([{"message": "Face value must be greater than 0", "field": "faceValue"}])
    );
}

#[tokio::test]
async fn without_a_cap_any_price_goes_whatever_the_face_value() {
    let t = spawn().await;
    let (_, cookie) = user();
    t.create_ticket_with(
        &cookie,
        json!({"title": "gig", "price": 1000, "faceValue": 10}),
    )
    .await;
}

#[tokio::test]
async fn with_a_cap_the_price_must_not_exceed_it_when_there_is_a_face_value() {
    let t = spawn_capped(110).await;
    let (_, cookie) = user();

    // At the cap: fine; one cent above: refused, on the price.
    let ticket = t
        .create_ticket_with(
            &cookie,
            json!({"title": "gig", "price": 110, "faceValue": 100}),
        )
        .await;
    let reply = t
        .post(
            &cookie,
            json!({"title": "gig", "price": 110.01, "faceValue": 100}),
        )
        .await;
    reply.assert_error(400, "Price must not exceed 110% of the face value");
    assert_eq!(reply.body["errors"][0]["field"], json!("price"));

    // Without a face value the cap cannot apply.
    t.create_ticket_with(&cookie, json!({"title": "no face value", "price": 10000}))
        .await;

    // An edit is held to the face value the ticket has, or the new one.
    let id = id_of(&ticket);
    t.put(&id, Some(&cookie), json!({"title": "gig", "price": 200}))
        .await
        .assert_error(400, "Price must not exceed 110% of the face value");
    let edited = t
        .put(
            &id,
            Some(&cookie),
            json!({"title": "gig", "price": 200, "faceValue": 200}),
        )
        .await;
    edited.assert_status(200);
    assert_eq!(
        (
            edited.body["price"].clone(),
            edited.body["faceValue"].clone()
        ),
        (json!(200), json!(200))
    );
    let kept = t
        .put(&id, Some(&cookie), json!({"title": "gig 2", "price": 150}))
        .await;
    kept.assert_status(200);
    assert_eq!(
        kept.body["faceValue"],
        json!(200),
        "absent keeps the face value"
    );
}
