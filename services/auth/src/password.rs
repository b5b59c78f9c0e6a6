//! Password hashing: argon2id with the crate's default (OWASP) parameters,
//! off the async runtime so a burst of sign-ins never stalls it.
//!
//! Each hash takes 19 MiB and a core for tens of milliseconds, so hashes run
//! on a fixed pool of threads, one per core ([`HASHERS`]); requests queue for
//! them without holding a thread. On tokio's blocking pool, a burst of 32
//! sign-ins ran 32 hashes at once on 2 cores — no faster — and every short-
//! lived thread left its freed 19 MiB in an allocator arena of its own: the
//! auth process peaked at 4.5 GiB resident. On a few long-lived threads the
//! same memory is reused hash after hash.

use std::panic::AssertUnwindSafe;
use std::sync::mpsc;
use std::sync::{Arc, LazyLock, Mutex};

use anyhow::Context;
use argon2::{
    Argon2,
    password_hash::{PasswordHasher, PasswordVerifier, phc::PasswordHash},
};
use tokio::sync::oneshot;

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

type Job = Box<dyn FnOnce() + Send>;

/// The hashing threads, started on first use; they live as long as the
/// process and take jobs in arrival order.
static HASHERS: LazyLock<mpsc::Sender<Job>> = LazyLock::new(|| {
    let (jobs, queue) = mpsc::channel::<Job>();
    let queue = Arc::new(Mutex::new(queue));
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    for n in 0..threads {
        let queue = Arc::clone(&queue);
        let spawned = std::thread::Builder::new()
            .name(format!("argon2-{n}"))
            .spawn(move || {
                loop {
                    // The lock is held only while waiting for the next job.
                    let job = match queue.lock() {
                        Ok(queue) => queue.recv(),
                        Err(poisoned) => poisoned.into_inner().recv(),
                    };
                    match job {
                        // A panic fails that one request (its answer is
                        // dropped), not the thread.
                        Ok(job) => {
                            let _ = std::panic::catch_unwind(AssertUnwindSafe(job));
                        }
                        Err(_) => return,
                    }
                }
            });
        if let Err(err) = spawned {
            tracing::error!(error = %err, "could not start a password hashing thread");
        }
    }
    jobs
});

/// Runs `work` on a hashing thread and waits for its answer.
async fn on_hasher<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> anyhow::Result<T> {
    let (answer, answered) = oneshot::channel();
    let job: Job = Box::new(move || {
        // The request may have been abandoned meanwhile: nobody to answer.
        let _ = answer.send(work());
    });
    HASHERS
        .send(job)
        .map_err(|_| anyhow::anyhow!("no password hashing thread is running"))?;
    answered.await.context("password hashing failed")
}

/// Hashes a password (PHC string with algorithm, parameters and salt).
pub async fn hash(password: String) -> anyhow::Result<String> {
    on_hasher(move || hash_now(&password)).await?
}

/// Whether `password` matches `hash`; with `None` (unknown user) it spends
/// the same work on a decoy and answers false.
pub async fn verify(password: String, hash: Option<String>) -> anyhow::Result<bool> {
    on_hasher(move || match hash {
        Some(hash) => verify_now(&password, &hash),
        None => {
            verify_now(&password, &DECOY);
            false
        }
    })
    .await
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
