//! The client's own stylesheet and script, compiled into the binary and
//! served under `/assets/` — no CDN, so pages render offline.
//!
//! Their URLs carry a hash of the content (`/assets/app.css?v=…`), so they
//! can be cached for a long time and still change with every release.

use std::sync::LazyLock;

use axum::{
    Router,
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
    routing::get,
};

use crate::AppState;

const CSS: &str = include_str!("../static/app.css");
const JS: &str = include_str!("../static/app.js");

static CSS_HREF: LazyLock<String> =
    LazyLock::new(|| format!("/assets/app.css?v={}", fingerprint(CSS)));
static JS_HREF: LazyLock<String> =
    LazyLock::new(|| format!("/assets/app.js?v={}", fingerprint(JS)));

/// The stylesheet's URL, versioned by its content.
pub fn css_href() -> &'static str {
    &CSS_HREF
}

/// The script's URL, versioned by its content.
pub fn js_href() -> &'static str {
    &JS_HREF
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/assets/app.css",
            get(|| async { asset("text/css; charset=utf-8", CSS) }),
        )
        .route(
            "/assets/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", JS) }),
        )
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=31536000, immutable"),
            ),
        ],
        body,
    )
        .into_response()
}

/// FNV-1a, 32 bits, hex: enough to tell two versions of a file apart.
fn fingerprint(content: &str) -> String {
    let hash = content.bytes().fold(0x811c_9dc5_u32, |hash, byte| {
        (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
    });
    format!("{hash:08x}")
}
