//! `/api/users`: sign up, sign in, sign out, and who is signed in.
//!
//! Wire-compatible with the original app (DESIGN §3), with its deliberate
//! improvements: argon2id, 8–128 character passwords, and one identical
//! `Invalid credentials` answer — in message and in time — for an unknown
//! email and a wrong password.

use axum::{
    extract::State,
    http::{StatusCode, header},
    response::{AppendHeaders, IntoResponse, Response},
};
use common::{
    Error, Result,
    client::ClientIp,
    error::{ErrorBody, Json},
    session::{CurrentUser, Sessions, UserView},
    validate::{Checked, Fields, Valid},
    wire::{self, CurrentUserBody},
};
use mongodb::bson::oid::ObjectId;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{AppState, store::User};

/// The routes and their OpenAPI description (see `common::openapi`).
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(signup))
        .routes(routes!(signin))
        .routes(routes!(signout))
        .routes(routes!(current_user))
}

/// `{email, password}`; fields are read loosely so that a missing or
/// non-string field is a validation error on that field, not a 400 about JSON.
#[derive(Debug, Default, Deserialize, ToSchema)]
struct Credentials {
    /// Trimmed and lower-cased before use.
    #[serde(default)]
    #[schema(value_type = String, format = "email", required = true, example = "buyer@example.com")]
    email: Value,
    /// Sign-up: 8 to 128 characters once trimmed. Sign-in: not empty.
    #[serde(default)]
    #[schema(value_type = String, required = true, min_length = 1, example = "correct horse")]
    password: Value,
}

/// A sign-up's credentials: a valid email, normalised, and a password of
/// [`PASSWORD_LENGTH`] once trimmed.
struct SignUp {
    email: String,
    password: String,
}

/// A sign-in's credentials: a valid email, normalised, and a password.
struct SignIn {
    email: String,
    password: String,
}

impl Checked for SignUp {
    type Body = Credentials;

    fn check(body: Credentials) -> Result<Self> {
        let (email, password) = body.check(
            |p| PASSWORD_LENGTH.contains(&p.chars().count()),
            "Password must be between 8 and 128 characters",
        )?;
        Ok(Self { email, password })
    }
}

impl Checked for SignIn {
    type Body = Credentials;

    fn check(body: Credentials) -> Result<Self> {
        let (email, password) = body.check(|p| !p.is_empty(), "You must supply a password")?;
        Ok(Self { email, password })
    }
}

impl Credentials {
    /// The normalised email and trimmed password, or one error per bad field.
    fn check(
        self,
        password_ok: impl Fn(&str) -> bool,
        password_message: &str,
    ) -> Result<(String, String)> {
        let mut fields = Fields::default();
        let email = fields.check("email", valid_email(&self.email), "Email must be valid");
        let password = self
            .password
            .as_str()
            .map(str::trim)
            .filter(|p| password_ok(p))
            .map(str::to_owned);
        let password = fields.check("password", password, password_message);
        fields.finish(email.zip(password))
    }
}

/// `POST /api/users/signout`'s body: `{}`.
#[derive(Debug, Serialize, ToSchema)]
struct Empty {}

const PASSWORD_LENGTH: std::ops::RangeInclusive<usize> = 8..=128;

/// `POST /api/users/signup` — 201 `{id,email}` and a session cookie.
#[utoipa::path(
    post,
    path = "/api/users/signup",
    tag = "users",
    request_body = Credentials,
    responses(
        (status = 201, description = "Signed up and signed in", body = wire::User,
            headers(("set-cookie" = String, description = "The `session` cookie"))),
        (status = 400, description = "`Email must be valid`, `Password must be between 8 and 128 characters` (per field), `Email in use`, or a body that is not the JSON expected", body = ErrorBody),
        (status = 413, description = "Body over the size limit", body = ErrorBody),
        (status = 503, description = "`Service is busy, try again later`: too many passwords waiting to be hashed; `Retry-After` says when to try again", body = ErrorBody,
            headers(("retry-after" = String, description = "Seconds to wait"))),
    ),
)]
#[tracing::instrument(skip_all)]
async fn signup(
    State(state): State<AppState>,
    Valid(SignUp { email, password }): Valid<SignUp>,
) -> Result<Response> {
    if state.users.find_by_email(&email).await?.is_some() {
        return Err(Error::bad_request("Email in use"));
    }
    let user = User {
        id: ObjectId::new(),
        email,
        password: state.hasher.hash(password).await?,
    };
    if !state.users.insert(&user).await? {
        // Lost a race with a concurrent sign-up for the same address.
        return Err(Error::bad_request("Email in use"));
    }
    tracing::info!(user_id = %user.id, "user signed up");
    signed_in(&state.sessions, StatusCode::CREATED, &user)
}

/// `POST /api/users/signin` — 200 `{id,email}` and a session cookie.
#[utoipa::path(
    post,
    path = "/api/users/signin",
    tag = "users",
    request_body = Credentials,
    responses(
        (status = 200, description = "Signed in", body = wire::User,
            headers(("set-cookie" = String, description = "The `session` cookie"))),
        (status = 400, description = "`Email must be valid`, `You must supply a password` (per field), `Invalid credentials`, or a body that is not the JSON expected", body = ErrorBody),
        (status = 413, description = "Body over the size limit", body = ErrorBody),
        (status = 503, description = "`Service is busy, try again later`: too many passwords waiting to be hashed; `Retry-After` says when to try again", body = ErrorBody,
            headers(("retry-after" = String, description = "Seconds to wait"))),
        (status = 429, description = "`Too many attempts, try again later`: too many failed sign-ins for this email or from this address; the same whether or not the email has an account",
            body = ErrorBody,
            headers(("retry-after" = u64, description = "Seconds until a sign-in is accepted again"))),
    ),
)]
#[tracing::instrument(skip_all)]
async fn signin(
    State(state): State<AppState>,
    ClientIp(client): ClientIp,
    Valid(SignIn { email, password }): Valid<SignIn>,
) -> Result<Response> {
    // Counted before anything about the account is looked at: the refusal
    // is the same, and as quick, for an email nobody has.
    let counted = match state.throttle.attempt(&email, &client.to_string()).await? {
        Ok(counted) => counted,
        Err(retry_after) => {
            common::metrics::record_rejected("signin_throttled");
            tracing::warn!(%client, "sign-in refused: too many failed attempts");
            return Err(Error::TooManyRequests {
                message: "Too many attempts, try again later".into(),
                retry_after,
            });
        }
    };
    let user = state.users.find_by_email(&email).await?;
    let matches = match state
        .hasher
        .verify(password, user.as_ref().map(|u| u.password.clone()))
        .await
    {
        Ok(matches) => matches,
        Err(refused) => {
            state.throttle.abandoned(counted).await?;
            return Err(refused);
        }
    };
    match user {
        Some(user) if matches => {
            state.throttle.succeeded(counted).await?;
            signed_in(&state.sessions, StatusCode::OK, &user)
        }
        _ => {
            state.throttle.failed(counted).await?;
            Err(Error::bad_request("Invalid credentials"))
        }
    }
}

/// `POST /api/users/signout` — 200 `{}` and an empty, expired cookie.
#[utoipa::path(
    post,
    path = "/api/users/signout",
    tag = "users",
    responses(
        (status = 200, description = "Signed out", body = Empty,
            headers(("set-cookie" = String, description = "The session cookie, empty and expired under both names (`session`, `express:sess`)"))),
    ),
)]
async fn signout(State(state): State<AppState>) -> Response {
    let [ours, original] = state.sessions.clear_cookies();
    (
        AppendHeaders([(header::SET_COOKIE, ours), (header::SET_COOKIE, original)]),
        Json(Empty {}),
    )
        .into_response()
}

/// `GET /api/users/currentuser` — never 401: `{"currentUser": null}` instead.
#[utoipa::path(
    get,
    path = "/api/users/currentuser",
    tag = "users",
    security((), ("session" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "The signed-in user, or `null`", body = CurrentUserBody),
    ),
)]
async fn current_user(CurrentUser(claims): CurrentUser) -> Json<CurrentUserBody> {
    Json(CurrentUserBody {
        current_user: claims.as_ref().map(UserView::from),
    })
}

fn signed_in(sessions: &Sessions, status: StatusCode, user: &User) -> Result<Response> {
    let id = user.id.to_hex();
    let token = sessions.issue(&id, &user.email)?;
    Ok((
        status,
        [(header::SET_COOKIE, sessions.cookie(&token))],
        Json(wire::User {
            id,
            email: user.email.clone(),
        }),
    )
        .into_response())
}

/// The trimmed, lower-cased address if it is a plausible email.
fn valid_email(value: &Value) -> Option<String> {
    let email = value.as_str()?.trim().to_lowercase();
    is_email(&email).then_some(email)
}

/// A deliberately plain check: one `@`, a non-empty local part, a dotted
/// domain of letters, digits and hyphens, no spaces, at most 254 characters.
fn is_email(email: &str) -> bool {
    let Some((local, domain)) = email.split_once('@') else {
        return false;
    };
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.chars().all(|c| c.is_alphanumeric() || c == '-')
    };
    let local_ok = |c: char| c.is_alphanumeric() || "!#$%&'*+/=?^_`{|}~.-".contains(c);
    email.len() <= 254
        && !local.is_empty()
        && local.len() <= 64
        && local.chars().all(local_ok)
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && domain.contains('.')
        && domain.split('.').all(label_ok)
        && domain.rsplit('.').next().is_some_and(|tld| tld.len() >= 2)
}

#[cfg(test)]
mod tests {
    use super::is_email;

    #[test]
    fn accepts_ordinary_addresses() {
        for email in ["a@b.co", "first.last+tag@example.com", "x_y@sub.domain.org"] {
            assert!(is_email(email), "{email}");
        }
    }

    #[test]
    fn rejects_what_is_not_an_address() {
        for email in [
            "", "plain", "@b.co", "a@", "a@b", "a b@c.co", "a@@b.co", "a@b..co", ".a@b.co",
            "a@-b.co", "a@b.c",
        ] {
            assert!(!is_email(email), "{email}");
        }
    }
}
