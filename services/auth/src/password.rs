//! Password hashing: argon2id with the crate's default (OWASP) parameters,
//! always on the blocking pool so a burst of sign-ins never stalls the async
//! runtime.

use std::sync::LazyLock;

use anyhow::Context;
use argon2::{
    Argon2,
    password_hash::{PasswordHasher, PasswordVerifier, phc::PasswordHash},
};

/// A real hash of a password nobody has, verified against when the email is
/// unknown so that "no such user" takes as long as "wrong password".
static DECOY: LazyLock<String> =
    LazyLock::new(|| hash_now("decoy password for timing equality").unwrap_or_default());

fn hash_now(password: &str) -> anyhow::Result<String> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("argon2 failed: {e}"))
}

fn verify_now(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

/// Hashes a password (PHC string with algorithm, parameters and salt).
pub async fn hash(password: String) -> anyhow::Result<String> {
    tokio::task::spawn_blocking(move || hash_now(&password))
        .await
        .context("password hashing task failed")?
}

/// Whether `password` matches `hash`; with `None` (unknown user) it spends
/// the same work on a decoy and answers false.
pub async fn verify(password: String, hash: Option<String>) -> anyhow::Result<bool> {
    tokio::task::spawn_blocking(move || match hash {
        Some(hash) => verify_now(&password, &hash),
        None => {
            verify_now(&password, &DECOY);
            false
        }
    })
    .await
    .context("password verification task failed")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_verify_and_are_salted() {
        let a = hash("correct horse".into()).await.unwrap();
        let b = hash("correct horse".into()).await.unwrap();
        assert!(a.starts_with("$argon2id$"));
        assert_ne!(a, b);
        assert!(
            verify("correct horse".into(), Some(a.clone()))
                .await
                .unwrap()
        );
        assert!(!verify("wrong horse".into(), Some(a)).await.unwrap());
        assert!(!verify("correct horse".into(), None).await.unwrap());
    }
}
