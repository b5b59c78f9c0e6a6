//! `GET /openapi.json` describes exactly the routes orders serves.

mod support;

#[tokio::test]
async fn the_openapi_document_lists_exactly_the_routes_it_serves() {
    let orders = support::spawn_orders().await;
    testkit::assert_openapi_lists_exactly(
        &orders.app,
        &[
            ("GET", "/api/orders"),
            ("POST", "/api/orders"),
            ("GET", "/api/orders/{id}"),
            ("DELETE", "/api/orders/{id}"),
        ],
    )
    .await;
}
