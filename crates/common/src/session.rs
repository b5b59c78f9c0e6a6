//! Sessions: the session cookie, the JWT inside it, and who is signed in.
//!
//! The cookie is the original app's cookie-session format so that its browser
//! client keeps working: `<name>=<base64 of {"jwt":"<token>"}>`, `Path=/`,
//! `HttpOnly`, `SameSite=Lax`, and `Secure` except in local development.
//!
//! Two names are accepted from a request, by every service: `session` (ours)
//! and `express:sess` (the original's: cookie-session 1.x's default name, the
//! one its tests forge). Auth sets one of them, [`CookieName`] from
//! `SESSION_COOKIE_NAME` (default `session`; `express:sess` lets the fleet run
//! beside the original during a migration), and signing out clears both.
//! The setting is one of the two accepted names and nothing else, so that
//! whatever auth sets, every service reads without a setting of its own. The
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

/// Name of the session cookie auth sets by default.
pub const COOKIE_NAME: &str = "session";

/// Name of the original app's session cookie (cookie-session 1.x's default).
pub const ORIGINAL_COOKIE_NAME: &str = "express:sess";

/// Every name a session cookie is accepted under, and cleared under on
/// sign-out.
pub const COOKIE_NAMES: [&str; 2] = [COOKIE_NAME, ORIGINAL_COOKIE_NAME];

/// The name auth gives the session cookie it sets (`SESSION_COOKIE_NAME`):
/// one of [`COOKIE_NAMES`], which every service accepts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CookieName {
    /// `session` (the default).
    #[default]
    Session,
    /// `express:sess`, the original app's.
    Original,
}

impl CookieName {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Session => COOKIE_NAME,
            Self::Original => ORIGINAL_COOKIE_NAME,
        }
    }
}

impl std::str::FromStr for CookieName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            COOKIE_NAME => Ok(Self::Session),
            ORIGINAL_COOKIE_NAME => Ok(Self::Original),
            other => Err(format!(
                "{other:?} is not a session cookie name every service accepts ({COOKIE_NAME} or {ORIGINAL_COOKIE_NAME})"
            )),
        }
    }
}

impl std::fmt::Display for CookieName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

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
    cookie_name: CookieName,
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
            .field("cookie_name", &self.cookie_name)
            .finish_non_exhaustive()
    }
}

/// jsonwebtoken's cryptography for the one algorithm the fleet uses. Its
/// `rust_crypto` provider would build RSA, ECDSA and EdDSA as well (rsa,
/// p256, p384, ed25519-dalek and what they pull in) for tokens we refuse.
pub mod hs256 {
    use hmac::{Hmac, Mac};
    use jsonwebtoken::{
        Algorithm,
        crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils},
        errors::{ErrorKind, Result, new_error},
        signature::{self, Signer, Verifier},
    };
    use sha2::Sha256;

    /// HMAC-SHA256 with one key.
    struct Hs256(Hmac<Sha256>);

    impl Hs256 {
        fn new(algorithm: &Algorithm, secret: &[u8]) -> Result<Box<Self>> {
            if *algorithm != Algorithm::HS256 {
                return Err(new_error(ErrorKind::InvalidAlgorithm));
            }
            Hmac::new_from_slice(secret)
                .map(|mac| Box::new(Hs256(mac)))
                .map_err(|_| new_error(ErrorKind::InvalidKeyFormat))
        }
    }

    impl Signer<Vec<u8>> for Hs256 {
        fn try_sign(&self, message: &[u8]) -> std::result::Result<Vec<u8>, signature::Error> {
            let mut mac = self.0.clone();
            mac.update(message);
            Ok(mac.finalize().into_bytes().to_vec())
        }
    }

    impl Verifier<Vec<u8>> for Hs256 {
        fn verify(
            &self,
            message: &[u8],
            signature: &Vec<u8>,
        ) -> std::result::Result<(), signature::Error> {
            let mut mac = self.0.clone();
            mac.update(message);
            // Constant-time comparison.
            mac.verify_slice(signature)
                .map_err(signature::Error::from_source)
        }
    }

    impl JwtSigner for Hs256 {
        fn algorithm(&self) -> Algorithm {
            Algorithm::HS256
        }
    }

    impl JwtVerifier for Hs256 {
        fn algorithm(&self) -> Algorithm {
            Algorithm::HS256
        }
    }

    /// Signs and verifies HS256 only; any other algorithm is an error
    /// (never a panic), and JWKs are not supported.
    pub static PROVIDER: CryptoProvider = CryptoProvider {
        signer_factory: |algorithm, key| Ok(Hs256::new(algorithm, key.as_bytes())?),
        verifier_factory: |algorithm, key| Ok(Hs256::new(algorithm, key.try_get_as_bytes()?)?),
        key_utils: KeyUtils::new_unimplemented(),
    };

    /// Makes [`PROVIDER`] the process's (idempotent; [`super::Sessions::new`]
    /// calls it).
    pub fn install() {
        let _ = PROVIDER.install_default();
    }
}

impl Sessions {
    /// `jwt_key` is the shared `JWT_KEY`; `secure_cookie` is false only in
    /// local development (plain http).
    pub fn new(jwt_key: &str, secure_cookie: bool) -> Self {
        hs256::install();
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
            cookie_name: CookieName::default(),
        }
    }

    /// The same, setting its cookie under `name` (what auth's
    /// `SESSION_COOKIE_NAME` says). Every name of [`COOKIE_NAMES`] is
    /// accepted whatever this is.
    pub fn with_cookie_name(mut self, name: CookieName) -> Self {
        self.cookie_name = name;
        self
    }

    /// The name of the cookie [`Sessions::cookie`] sets.
    pub fn cookie_name(&self) -> CookieName {
        self.cookie_name
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
            "{}={}; {}",
            self.cookie_name,
            STANDARD.encode(payload),
            self.attributes()
        );
        // Base64 and ASCII attributes only: always a valid header value.
        HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    /// The `Set-Cookie` values that sign the browser out: every accepted
    /// name, empty and expired (a browser may hold both, one from the
    /// original app).
    pub fn clear_cookies(&self) -> [HeaderValue; 2] {
        COOKIE_NAMES.map(|name| {
            let value = format!(
                "{name}=; {}; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT",
                self.attributes()
            );
            HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static(""))
        })
    }

    fn attributes(&self) -> &'static str {
        if self.inner.secure_cookie {
            "Path=/; HttpOnly; SameSite=Lax; Secure"
        } else {
            "Path=/; HttpOnly; SameSite=Lax"
        }
    }

    /// The verified claims of a request: from `Authorization: Bearer`, else
    /// from the first session cookie (under any of [`COOKIE_NAMES`]) whose
    /// token is valid — a stale cookie of one name does not hide a good one
    /// of the other.
    pub fn from_headers(&self, headers: &HeaderMap) -> Option<Claims> {
        if let Some(token) = bearer_token(headers) {
            return self.verify(token);
        }
        session_tokens(headers).find_map(|token| self.verify(&token))
    }
}

fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// Whether `name` is one a session cookie is accepted under.
pub fn is_session_cookie(name: &str) -> bool {
    COOKIE_NAMES.contains(&name)
}

/// The JWTs inside the session cookies of a request (any of
/// [`COOKIE_NAMES`]), in the order sent, skipping unreadable ones.
pub fn session_tokens(headers: &HeaderMap) -> impl Iterator<Item = String> + '_ {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(name, _)| is_session_cookie(name))
        .filter_map(|(_, value)| decode_cookie_value(value))
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
    fn a_token_of_another_algorithm_is_refused_and_nothing_panics() {
        let sessions = Sessions::new("secret", true);
        let claims = URL_SAFE_NO_PAD.encode(
            serde_json::json!({"id": "a", "email": "a@b.c", "iat": 1, "exp": i64::MAX / 2})
                .to_string(),
        );
        for alg in ["HS384", "HS512", "RS256", "ES256", "EdDSA", "none"] {
            let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#));
            let token = format!("{header}.{claims}.{}", URL_SAFE_NO_PAD.encode(b"sig"));
            assert_eq!(sessions.verify(&token), None, "{alg}");
        }
        // The provider itself refuses to sign with anything but HS256.
        let key = jsonwebtoken::EncodingKey::from_secret(b"secret");
        let header = Header::new(Algorithm::HS512);
        assert!(jsonwebtoken::encode(&header, &serde_json::json!({}), &key).is_err());
        let token = sessions.issue("a", "a@b.c").unwrap();
        assert_eq!(sessions.verify(&token).map(|c| c.id), Some("a".to_owned()));
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

    /// `express:sess=<base64 of {"jwt":…}>`, as the original's tests forge it.
    fn forged_like_the_original(token: &str) -> String {
        format!(
            "express:sess={}",
            STANDARD.encode(format!(r#"{{"jwt":"{token}"}}"#))
        )
    }

    #[test]
    fn the_originals_cookie_name_is_accepted() {
        let sessions = Sessions::new("secret", true);
        let token = sessions.issue("id1", "a@b.co").unwrap();
        let headers = headers_with_cookie(&forged_like_the_original(&token));
        assert_eq!(sessions.from_headers(&headers).unwrap().id, "id1");
    }

    #[test]
    fn a_stale_cookie_of_one_name_does_not_hide_a_valid_one_of_the_other() {
        let sessions = Sessions::new("secret", true);
        let token = sessions.issue("id1", "a@b.co").unwrap();
        let stale = Sessions::new("old-key", true)
            .issue("id0", "a@b.co")
            .unwrap();
        let headers = headers_with_cookie(&format!(
            "{}; {}",
            set_cookie_pair(&sessions.cookie(&stale)),
            forged_like_the_original(&token)
        ));
        assert_eq!(sessions.from_headers(&headers).unwrap().id, "id1");
    }

    #[test]
    fn the_cookie_set_is_named_by_the_setting() {
        let sessions = Sessions::new("secret", false).with_cookie_name(CookieName::Original);
        let token = sessions.issue("id1", "a@b.co").unwrap();
        let pair = set_cookie_pair(&sessions.cookie(&token));
        assert!(pair.starts_with("express:sess="), "{pair}");
        let headers = headers_with_cookie(&pair);
        assert_eq!(sessions.from_headers(&headers).unwrap().id, "id1");
        assert_eq!(
            "express:sess".parse::<CookieName>(),
            Ok(CookieName::Original)
        );
        assert_eq!("session".parse::<CookieName>(), Ok(CookieName::Session));
        assert!("sess".parse::<CookieName>().is_err());
    }

    #[test]
    fn signing_out_clears_both_names() {
        let cleared = Sessions::new("secret", true).clear_cookies();
        let pairs: Vec<String> = cleared.iter().map(set_cookie_pair).collect();
        assert_eq!(pairs, ["session=", "express:sess="]);
        for value in &cleared {
            let s = value.to_str().unwrap();
            assert!(s.contains("Max-Age=0") && s.contains("Path=/"), "{s}");
        }
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
