//! `GET /openapi.json` describes exactly the routes tickets serves.

use crate::helpers;

#[tokio::test]
async fn the_openapi_document_lists_exactly_the_routes_it_serves() {
    let tickets = helpers::spawn().await;
    testkit::assert_openapi_lists_exactly(
        &tickets.app,
        &[
            ("GET", "/api/tickets"),
            ("POST", "/api/tickets"),
            ("GET", "/api/tickets/{id}"),
            ("PUT", "/api/tickets/{id}"),
            ("DELETE", "/api/tickets/{id}"),
        ],
    )
    .await;
    tickets.stop().await;
}
