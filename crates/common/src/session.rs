//! Sessions: the `session` cookie, the JWT inside it, and who is signed in.
//!
//! The cookie is the original app's cookie-session format so that its browser
//! client keeps working: `session=<base64 of {"jwt":"<token>"}>`, `Path=/`,
//! `HttpOnly`, `SameSite=Lax`, and `Secure` except in local development. The
//! token is HS256 with the fleet's shared `JWT_KEY` and claims
//! `{id,email,iat,exp}`; API clients may send it as `Authorization: Bearer`.
//!
//! Authentication is stateless: every service verifies the token itself, so
//! nobody calls the auth service at request time. A missing, malformed,
//! tampered or expired token means "not signed in" — [`CurrentUser`] is then
//! `None` and [`AuthUser`] answers 401 — never a 500.

use std::{sync::Arc, time::Duration};

use axum::{
    extract::{FromRef, FromRequestParts},
    http::{HeaderMap, HeaderValue, header, request::Parts},
};
use base64::{
    Engine,
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::error::Error;

/// Name of the session cookie.
pub const COOKIE_NAME: &str = "session";

/// How long a session token is valid.
pub const SESSION_TTL: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// The claims of a session token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user's id (24-hex ObjectId).
    pub id: String,
    pub email: String,
    /// Issued at, seconds since the epoch.
    pub iat: i64,
    /// Expires at, seconds since the epoch.
    pub exp: i64,
}

/// The signed-in user as `GET /api/users/currentuser` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UserView {
    #[schema(value_type = crate::openapi::ObjectId)]
    pub id: String,
    pub email: String,
    /// When the session was issued, seconds since the epoch.
    pub iat: i64,
}

impl From<&Claims> for UserView {
    fn from(c: &Claims) -> Self {
        Self {
            id: c.id.clone(),
            email: c.email.clone(),
            iat: c.iat,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct CookiePayload {
    jwt: String,
}

/// Signs and verifies session tokens and writes the cookie.
///
/// Cheap to clone; put one in every service's state.
#[derive(Clone)]
pub struct Sessions {
    inner: Arc<Keys>,
}

struct Keys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    secure_cookie: bool,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("secure_cookie", &self.inner.secure_cookie)
            .finish_non_exhaustive()
    }
}

impl Sessions {
    /// `jwt_key` is the shared `JWT_KEY`; `secure_cookie` is false only in
    /// local development (plain http).
    pub fn new(jwt_key: &str, secure_cookie: bool) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp"]);
        Self {
            inner: Arc::new(Keys {
                encoding: EncodingKey::from_secret(jwt_key.as_bytes()),
                decoding: DecodingKey::from_secret(jwt_key.as_bytes()),
                validation,
                secure_cookie,
            }),
        }
    }

    /// A token for this user, valid for [`SESSION_TTL`].
    pub fn issue(&self, id: &str, email: &str) -> anyhow::Result<String> {
        let now = chrono::Utc::now().timestamp();
        self.sign(&Claims {
            id: id.to_owned(),
            email: email.to_owned(),
            iat: now,
            exp: now + SESSION_TTL.as_secs() as i64,
        })
    }

    /// Signs arbitrary claims (tests use it for expired tokens).
    pub fn sign(&self, claims: &Claims) -> anyhow::Result<String> {
        Ok(jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &self.inner.encoding,
        )?)
    }

    /// The claims of a valid token; `None` for anything else.
    pub fn verify(&self, token: &str) -> Option<Claims> {
        jsonwebtoken::decode::<Claims>(token, &self.inner.decoding, &self.inner.validation)
            .ok()
            .map(|data| data.claims)
    }

    /// The `Set-Cookie` value that signs the browser in with `token`.
    pub fn cookie(&self, token: &str) -> HeaderValue {
        let payload = serde_json::to_vec(&CookiePayload {
            jwt: token.to_owned(),
        })
        .unwrap_or_default();
        let value = format!(
            "{COOKIE_NAME}={}; {}",
            STANDARD.encode(payload),
            self.attributes()
        );
        // Base64 and ASCII attributes only: always a valid header value.
        HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    /// The `Set-Cookie` value that signs the browser out: empty and expired.
    pub fn clear_cookie(&self) -> HeaderValue {
        let value = format!(
            "{COOKIE_NAME}=; {}; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT",
            self.attributes()
        );
        HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    fn attributes(&self) -> &'static str {
        if self.inner.secure_cookie {
            "Path=/; HttpOnly; SameSite=Lax; Secure"
        } else {
            "Path=/; HttpOnly; SameSite=Lax"
        }
    }

    /// The verified claims of a request: from `Authorization: Bearer`, else
    /// from the `session` cookie.
    pub fn from_headers(&self, headers: &HeaderMap) -> Option<Claims> {
        if let Some(token) = bearer_token(headers) {
            return self.verify(token);
        }
        session_token(headers).and_then(|token| self.verify(&token))
    }
}

fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// The JWT inside the `session` cookie of a request, if it has a readable one.
pub fn session_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE_NAME)
        .and_then(|(_, value)| decode_cookie_value(value))
}

/// Reads a cookie-session value: base64 (standard or URL-safe, padded or not)
/// of `{"jwt":"…"}`.
pub fn decode_cookie_value(value: &str) -> Option<String> {
    let value = value.trim_matches('"');
    let bytes = STANDARD
        .decode(value)
        .or_else(|_| URL_SAFE_NO_PAD.decode(value.trim_end_matches('=')))
        .ok()?;
    serde_json::from_slice::<CookiePayload>(&bytes)
        .ok()
        .map(|p| p.jwt)
}

/// Who is signed in, if anyone. Never rejects.
#[derive(Debug, Clone)]
pub struct CurrentUser(pub Option<Claims>);

impl<S> FromRequestParts<S> for CurrentUser
where
    Sessions: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(Sessions::from_ref(state).from_headers(&parts.headers)))
    }
}

/// The signed-in user; a request without a valid session is a 401.
#[derive(Debug, Clone)]
pub struct AuthUser(pub Claims);

impl<S> FromRequestParts<S> for AuthUser
where
    Sessions: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Sessions::from_ref(state)
            .from_headers(&parts.headers)
            .map(Self)
            .ok_or(Error::NotAuthorized)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers_with_cookie(cookie: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_str(cookie).unwrap());
        headers
    }

    fn set_cookie_pair(value: &HeaderValue) -> String {
        value
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_owned()
    }

    #[test]
    fn cookie_round_trips_to_the_same_user() {
        let sessions = Sessions::new("secret", true);
        let token = sessions
            .issue("64b7f0c2a1b2c3d4e5f60718", "a@b.co")
            .unwrap();
        let headers = headers_with_cookie(&format!(
            "other=1; {}",
            set_cookie_pair(&sessions.cookie(&token))
        ));
        let claims = sessions.from_headers(&headers).unwrap();
        assert_eq!(claims.id, "64b7f0c2a1b2c3d4e5f60718");
        assert_eq!(claims.email, "a@b.co");
    }

    #[test]
    fn cookie_is_the_originals_cookie_session_format() {
        let sessions = Sessions::new("secret", false);
        let pair = set_cookie_pair(&sessions.cookie("abc.def.ghi"));
        let encoded = pair.strip_prefix("session=").unwrap();
        let json: serde_json::Value =
            serde_json::from_slice(&STANDARD.decode(encoded).unwrap()).unwrap();
        assert_eq!(json, serde_json::json!({"jwt":"abc.def.ghi"}));
    }

    #[test]
    fn secure_flag_only_outside_development() {
        let prod = Sessions::new("k", true).cookie("t");
        let dev = Sessions::new("k", false).cookie("t");
        for value in [&prod, &dev] {
            let s = value.to_str().unwrap();
            assert!(s.contains("HttpOnly") && s.contains("SameSite=Lax") && s.contains("Path=/"));
        }
        assert!(prod.to_str().unwrap().contains("Secure"));
        assert!(!dev.to_str().unwrap().contains("Secure"));
    }

    #[test]
    fn tampered_expired_and_foreign_tokens_are_not_signed_in() {
        let sessions = Sessions::new("secret", true);
        let token = sessions
            .issue("64b7f0c2a1b2c3d4e5f60718", "a@b.co")
            .unwrap();
        let mut tampered = token.clone();
        tampered.pop();
        tampered.push(if token.ends_with('A') { 'B' } else { 'A' });
        assert!(sessions.verify(&tampered).is_none());

        let now = chrono::Utc::now().timestamp();
        let expired = sessions
            .sign(&Claims {
                id: "x".into(),
                email: "a@b.co".into(),
                iat: now - 100,
                exp: now - 60,
            })
            .unwrap();
        assert!(sessions.verify(&expired).is_none());

        let foreign = Sessions::new("other-key", true)
            .issue("x", "a@b.co")
            .unwrap();
        assert!(sessions.verify(&foreign).is_none());

        // alg: none, with the same claims
        let unsigned = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
            URL_SAFE_NO_PAD.encode(format!(
                r#"{{"id":"x","email":"a@b.co","iat":{now},"exp":{}}}"#,
                now + 100
            ))
        );
        assert!(sessions.verify(&unsigned).is_none());

        assert!(
            sessions
                .from_headers(&headers_with_cookie("session=!!!notbase64"))
                .is_none()
        );
        assert!(
            sessions
                .from_headers(&headers_with_cookie("session=e30="))
                .is_none()
        );
    }

    #[test]
    fn bearer_header_is_accepted() {
        let sessions = Sessions::new("secret", true);
        let token = sessions.issue("id1", "a@b.co").unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
        assert_eq!(sessions.from_headers(&headers).unwrap().id, "id1");
    }
}
