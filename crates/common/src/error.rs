//! The one error type of the fleet and its JSON form.
//!
//! Every failure a client can see leaves a service as
//! `{"errors":[{"message":"…","field":"…"}]}` with the status of DESIGN §3.
//! Handlers return [`Result<T>`] and use `?`; the conversion to a response
//! happens here and only here, and so does the logging of unexpected errors:
//! the cause goes to the log, the client gets an opaque `Something went wrong`.
//!
//! axum's own rejections are folded in by the extractors of this module:
//! [`Json`] (malformed JSON, wrong content type, oversized body) and [`Id`]
//! (a malformed ObjectId in the path is a 404, as an unknown resource is).
//! [`not_found`] is the fallback for unknown routes.

use axum::{
    extract::{FromRequest, FromRequestParts, Path, Request, rejection::JsonRejection},
    http::{HeaderValue, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
};
use std::time::Duration;

use mongodb::bson::oid::ObjectId;
use serde::{Serialize, de::DeserializeOwned};

/// A `Result` whose error becomes the fleet's JSON error response.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One entry of the `errors` array.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorItem {
    /// What went wrong, for people.
    #[schema(example = "Title is required")]
    pub message: String,
    /// The request field that failed validation; only on validation errors.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, example = "title")]
    pub field: Option<String>,
}

impl ErrorItem {
    /// A validation failure of one request field.
    pub fn field(field: &str, message: &str) -> Self {
        Self {
            message: message.to_owned(),
            field: Some(field.to_owned()),
        }
    }
}

/// The body of every error response: `{"errors":[{"message","field"?}]}`.
#[derive(Debug, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    #[schema(min_items = 1)]
    pub errors: Vec<ErrorItem>,
}

/// Everything that can go wrong in a request, each with its status.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// 400 with one entry per failed field.
    #[error("validation failed: {0:?}")]
    Validation(Vec<ErrorItem>),
    /// 400 for a broken business rule (`Email in use`, `Ticket is already reserved`).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// 400 for a body that is not the JSON we expect; the message says why.
    #[error("malformed request: {0}")]
    MalformedBody(String),
    /// 401 `Not authorized`: not signed in, or not the owner.
    #[error("not authorized")]
    NotAuthorized,
    /// 404 `Not Found`: unknown resource, unknown route, malformed id.
    #[error("not found")]
    NotFound,
    /// 409 with a message for the client: the resource kept changing under a
    /// compare-and-set write and the bounded retries ran out; trying again
    /// later is safe.
    #[error("conflict: {0}")]
    Conflict(String),
    /// 413: the body is over the size limit.
    #[error("payload too large")]
    PayloadTooLarge,
    /// 429 with `Retry-After`: the client tried too often (sign-in guesses).
    #[error("too many requests: {message}")]
    TooManyRequests {
        message: String,
        retry_after: Duration,
    },
    /// 503 with `Retry-After`: the service sheds load (too many requests in
    /// flight, or the request's deadline passed); trying again later is safe.
    #[error("unavailable: {message}")]
    Unavailable {
        message: String,
        retry_after: Duration,
    },
    /// 502 with a message for the client: a provider we depend on (Stripe)
    /// failed in a way the client should know about but cannot fix.
    #[error("upstream failure: {message}")]
    Upstream {
        message: String,
        #[source]
        source: anyhow::Error,
    },
    /// 500 `Something went wrong`; the cause is logged, never sent.
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl Error {
    /// A business-rule failure with the message the client sees.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::BadRequest(message.into())
    }

    /// A single-field validation failure.
    pub fn invalid(field: &str, message: &str) -> Self {
        Self::Validation(vec![ErrorItem::field(field, message)])
    }

    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Validation(_) | Self::BadRequest(_) | Self::MalformedBody(_) => {
                StatusCode::BAD_REQUEST
            }
            Self::NotAuthorized => StatusCode::UNAUTHORIZED,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Upstream { .. } => StatusCode::BAD_GATEWAY,
            Self::Unexpected(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn items(&self) -> Vec<ErrorItem> {
        let message = |m: &str| {
            vec![ErrorItem {
                message: m.to_owned(),
                field: None,
            }]
        };
        match self {
            Self::Validation(items) => items.clone(),
            Self::BadRequest(m) | Self::MalformedBody(m) | Self::Conflict(m) => message(m),
            Self::NotAuthorized => message("Not authorized"),
            Self::NotFound => message("Not Found"),
            Self::PayloadTooLarge => message("Request body is too large"),
            Self::TooManyRequests { message: m, .. } | Self::Unavailable { message: m, .. } => {
                message(m)
            }
            Self::Upstream { message: m, .. } => message(m),
            Self::Unexpected(_) => message("Something went wrong"),
        }
    }
}

impl From<mongodb::error::Error> for Error {
    fn from(err: mongodb::error::Error) -> Self {
        Self::Unexpected(anyhow::Error::new(err).context("database operation failed"))
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        match &self {
            Self::Unexpected(cause) => tracing::error!(error = ?cause, "request failed"),
            Self::Upstream { message, source } => {
                tracing::error!(error = ?source, message, "upstream failed")
            }
            _ => {}
        }
        let body = ErrorBody {
            errors: self.items(),
        };
        let mut response = (self.status(), axum::Json(body)).into_response();
        if let Self::TooManyRequests { retry_after, .. } | Self::Unavailable { retry_after, .. } =
            &self
        {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, retry_after_value(*retry_after));
        }
        response
    }
}

impl From<JsonRejection> for Error {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::MissingJsonContentType(_) => Self::MalformedBody(
                "Expected a JSON body with `Content-Type: application/json`".into(),
            ),
            JsonRejection::JsonSyntaxError(e) => {
                Self::MalformedBody(format!("Malformed JSON: {}", e.body_text()))
            }
            JsonRejection::JsonDataError(e) => {
                Self::MalformedBody(format!("Invalid JSON body: {}", e.body_text()))
            }
            JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Self::PayloadTooLarge
            }
            other => Self::MalformedBody(format!(
                "Could not read the request body: {}",
                other.body_text()
            )),
        }
    }
}

/// `axum::Json` whose rejections come out in the fleet's error shape.
///
/// As a response it is plain JSON.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self> {
        let axum::Json(value) = axum::Json::<T>::from_request(req, state).await?;
        Ok(Self(value))
    }
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// The `:id` path segment as an ObjectId; anything else is a 404, exactly like
/// an id that names nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Id(pub ObjectId);

impl<S: Send + Sync> FromRequestParts<S> for Id {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| Error::NotFound)?;
        ObjectId::parse_str(&raw)
            .map(Id)
            .map_err(|_| Error::NotFound)
    }
}

/// A `Retry-After` value: whole seconds, rounded up, at least 1.
pub fn retry_after_value(wait: Duration) -> HeaderValue {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    HeaderValue::from(seconds.max(1))
}

/// Fallback for routes that do not exist (and methods a route does not take):
/// the 404 `Not Found`, marked for the metrics as served by no route.
pub async fn not_found() -> Response {
    let mut response = Error::NotFound.into_response();
    response.extensions_mut().insert(crate::metrics::Unmatched);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_lists_every_field() {
        let err = Error::Validation(vec![
            ErrorItem::field("email", "Email must be valid"),
            ErrorItem::field("password", "You must supply a password"),
        ]);
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        let json = serde_json::to_value(ErrorBody {
            errors: err.items(),
        })
        .unwrap();
        assert_eq!(
            json,
            serde_json::json!({"errors":[
                {"message":"Email must be valid","field":"email"},
                {"message":"You must supply a password","field":"password"}
            ]})
        );
    }

    #[test]
    fn refusals_to_come_back_later_say_when() {
        let err = Error::TooManyRequests {
            message: "Too many attempts, try again later".into(),
            retry_after: Duration::from_millis(1500),
        };
        let response = err.into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
        assert_eq!(retry_after_value(Duration::ZERO), "1");
        assert_eq!(retry_after_value(Duration::from_secs(900)), "900");
        let shed = Error::Unavailable {
            message: "Service is overloaded, try again later".into(),
            retry_after: Duration::from_secs(1),
        };
        assert_eq!(shed.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            shed.items()[0].message,
            "Service is overloaded, try again later"
        );
    }

    #[test]
    fn unexpected_errors_hide_their_cause() {
        let err = Error::from(anyhow::anyhow!("connection refused to 10.0.0.7"));
        assert_eq!(err.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(err.items()[0].message, "Something went wrong");
        assert_eq!(err.items()[0].field, None);
    }
}
