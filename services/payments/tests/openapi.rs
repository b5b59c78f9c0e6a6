//! `GET /openapi.json` describes exactly the routes payments serves.

mod support;

#[tokio::test]
async fn the_openapi_document_lists_exactly_the_routes_it_serves() {
    let payments = support::Harness::spawn().await;
    testkit::assert_openapi_lists_exactly(
        &payments.app,
        &[
            ("GET", "/api/payments"),
            ("POST", "/api/payments"),
            ("POST", "/api/payments/webhook"),
        ],
    )
    .await;
}
