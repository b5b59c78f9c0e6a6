//! `GET /openapi.json` describes exactly the routes auth serves.

use auth::{Application, Settings};
use common::config::Secret;

#[tokio::test]
async fn the_openapi_document_lists_exactly_the_routes_it_serves() {
    let settings = Settings {
        serving: Default::default(),
        mongo_uri: testkit::mongo_uri("auth"),
        jwt_key: Secret::new(testkit::JWT_KEY),
        session_cookie_name: Default::default(),
        password_queue_limit: auth::password::default_queue_limit(),
        signin_policy: Default::default(),
        trusted_proxies: common::client::TrustedProxies::private_networks(),
    };
    let app = Application::build(settings)
        .await
        .expect("auth failed to start");
    let app = testkit::start(app);
    testkit::assert_openapi_lists_exactly(
        &app,
        &[
            ("POST", "/api/users/signup"),
            ("POST", "/api/users/signin"),
            ("POST", "/api/users/signout"),
            ("GET", "/api/users/currentuser"),
        ],
    )
    .await;
}
