//! OpenAPI: every HTTP API service serves `GET /openapi.json`, an OpenAPI 3.1
//! description of its routes generated from the code.
//!
//! A service registers its routes through `utoipa_axum`'s `OpenApiRouter`
//! with `routes!(handler, …)`, each handler annotated with
//! `#[utoipa::path(…)]`: the axum route and its description come from the same
//! annotation, so the document cannot list a route the router does not serve,
//! or miss one it does. Bodies derive `utoipa::ToSchema` next to their serde
//! derives.
//!
//! [`document`] starts a service's description with what the fleet shares: the
//! two ways to be signed in (the `session` cookie and `Authorization: Bearer`,
//! both carrying the same JWT; see [`crate::session`]) and the error body
//! `{"errors":[{"message","field"?}]}` of [`crate::error::ErrorBody`].
//! [`serve`] turns the documented router into the axum router plus `GET
//! /openapi.json`.
//!
//! Handlers declare who may call them with `security(("session" = []),
//! ("bearer" = []))` (either scheme), or `security((), ("session" = []),
//! ("bearer" = []))` where signing in is optional.

use std::sync::Arc;

use axum::{
    Router,
    http::{HeaderValue, header},
    response::IntoResponse,
    routing::get,
};
use serde_json::json;
use utoipa::{
    PartialSchema, ToSchema,
    openapi::{
        InfoBuilder, OpenApi, OpenApiBuilder, RefOr, Schema,
        schema::{ObjectBuilder, OneOfBuilder, Type},
        security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme},
    },
};
use utoipa_axum::router::OpenApiRouter;

use crate::{error::ErrorBody, session::COOKIE_NAME};

/// The security scheme of the `session` cookie.
pub const SESSION_SCHEME: &str = "session";
/// The security scheme of `Authorization: Bearer <jwt>`.
pub const BEARER_SCHEME: &str = "bearer";

/// Where a service's document is served.
pub const PATH: &str = "/openapi.json";

/// The start of a service's document: its title, version and description,
/// the fleet's security schemes and the error body.
pub fn document(title: &str, version: &str, description: &str) -> OpenApi {
    let mut doc = OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title(title)
                .version(version)
                .description(Some(description))
                .build(),
        )
        .build();
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        SESSION_SCHEME,
        SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
            COOKIE_NAME,
            "The session cookie auth sets on sign-up and sign-in: base64 of {\"jwt\":\"<token>\"}. \
             Also accepted under the original app's name, `express:sess`",
        ))),
    );
    components.add_security_scheme(
        BEARER_SCHEME,
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format("JWT")
                .description(Some("The JWT of the session cookie, for API clients"))
                .build(),
        ),
    );
    components
        .schemas
        .insert(ErrorBody::name().into_owned(), ErrorBody::schema());
    let mut items = Vec::new();
    ErrorBody::schemas(&mut items);
    components.schemas.extend(items);
    doc
}

/// The axum router of a documented router, plus `GET /openapi.json` serving
/// its document.
pub fn serve<S>(api: OpenApiRouter<S>) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    let (router, doc) = api.split_for_parts();
    // A document that does not serialise is a bug in the annotations; it
    // shows in every service's test, so an empty object here never ships.
    let json: Arc<str> = doc
        .to_pretty_json()
        .unwrap_or_else(|_| "{}".to_owned())
        .into();
    router.route(
        PATH,
        get(move || {
            let json = Arc::clone(&json);
            async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    )],
                    json.to_string(),
                )
                    .into_response()
            }
        }),
    )
}

/// The schema of an id: a 24-hex ObjectId string. For `value_type = ObjectId`
/// in bodies and parameters.
pub struct ObjectId;

impl PartialSchema for ObjectId {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some("^[0-9a-fA-F]{24}$"))
            .description(Some("A MongoDB ObjectId: 24 hexadecimal digits"))
            .examples([json!("64b7f0c2a1b2c3d4e5f60718")])
            .into()
    }
}

impl ToSchema for ObjectId {}

/// The schema of a price as a client sends it (DESIGN §3): a number, or a
/// numeric string, greater than 0 with at most two decimals. For `value_type
/// = PriceInput`.
pub struct PriceInput;

impl PartialSchema for PriceInput {
    fn schema() -> RefOr<Schema> {
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Number)
                    .exclusive_minimum(Some(0))
                    .maximum(Some(10_000_000_000_i64))
                    .multiple_of(Some(0.01))
                    .examples([json!(12.5)]),
            )
            .item(
                // Positive, at most two decimals (trailing zeros allowed).
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some(
                        r"^\s*(0*[1-9][0-9]{0,10}(\.[0-9]{1,2}0*)?|0*\.(0[1-9]|[1-9][0-9]?)0*)\s*$",
                    ))
                    .examples([json!("12.50")]),
            )
            .description(Some(
                "A price in dollars, greater than 0, with at most two decimals, up to 10,000,000,000; \
                 a JSON number or a numeric string",
            ))
            .into()
    }
}

impl ToSchema for PriceInput {}
