//! Password hashing: argon2id with the crate's default (OWASP) parameters,
//! off the async runtime, in bounded memory, refusing work it cannot do in
//! time.
//!
//! Each hash takes 19 MiB and a core for tens of milliseconds, so hashes run
//! on a fixed pool of threads, one per core; requests queue for them without
//! holding a thread. Each hashing thread allocates its 19 MiB of argon2
//! blocks once and reuses them for every hash and verification it runs
//! (`hash_password_into_with_memory`), so the process holds the blocks of
//! one hash per core and no more, whatever the load. (Two earlier designs
//! and what they cost, for a burst of 32 sign-ins on 2 cores: on tokio's
//! blocking pool, 32 hashes ran at once and the process peaked at 4.5 GiB;
//! on this pool with a fresh allocation per hash, freed blocks lingered in
//! allocator arenas and it peaked at 224–376 MiB.)
//!
//! The queue is bounded ([`Hasher::new`]): a request that finds more than
//! `limit` hashes waiting is refused at once with 503 and `Retry-After`
//! instead of waiting behind work that would outlast its client.

use std::cell::RefCell;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use anyhow::Context;
use argon2::{
    Algorithm, Argon2, Block, Params, Version,
    password_hash::phc::{Output, ParamsString, PasswordHash, Salt},
};
use common::error::Error;
use tokio::sync::oneshot;

/// A real hash of a password nobody has, verified against when the email is
/// unknown so that "no such user" takes as long as "wrong password".
static DECOY: LazyLock<String> =
    LazyLock::new(|| hash_now("decoy password for timing equality").unwrap_or_default());

thread_local! {
    /// This thread's argon2 memory, grown to the largest hash it has run and
    /// kept for the next one (only hashing threads ever fill it).
    static MEMORY: RefCell<Vec<Block>> = const { RefCell::new(Vec::new()) };
}

/// Runs `argon` over `password` and `salt` into `out`, in this thread's
/// reusable memory.
fn compute(argon: &Argon2<'_>, password: &[u8], salt: &[u8], out: &mut [u8]) -> anyhow::Result<()> {
    MEMORY.with_borrow_mut(|memory| {
        let needed = argon.params().block_count();
        if memory.len() < needed {
            memory.resize(needed, Block::default());
        }
        argon
            .hash_password_into_with_memory(password, salt, out, &mut memory[..needed])
            .map_err(|e| anyhow::anyhow!("argon2 failed: {e}"))
    })
}

fn hash_now(password: &str) -> anyhow::Result<String> {
    let argon = Argon2::default();
    let salt = Salt::generate();
    let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
    compute(&argon, password.as_bytes(), &salt, &mut out)?;
    let phc = PasswordHash {
        algorithm: Algorithm::default().ident(),
        version: Some(Version::default().into()),
        params: ParamsString::try_from(argon.params())
            .map_err(|e| anyhow::anyhow!("argon2 parameters: {e}"))?,
        salt: Some(salt),
        hash: Some(Output::new(&out).map_err(|e| anyhow::anyhow!("argon2 output: {e}"))?),
    };
    Ok(phc.to_string())
}

fn verify_now(password: &str, hash: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (&parsed.salt, &parsed.hash) else {
        return false;
    };
    let Ok(algorithm) = Algorithm::try_from(parsed.algorithm.as_str()) else {
        return false;
    };
    let version = match parsed.version.map(Version::try_from).transpose() {
        Ok(version) => version.unwrap_or_default(),
        Err(_) => return false,
    };
    let Ok(params) = Params::try_from(&parsed) else {
        return false;
    };
    let mut buffer = [0u8; Output::MAX_LENGTH];
    let Some(out) = buffer.get_mut(..expected.len()) else {
        return false;
    };
    compute(&Argon2::new(algorithm, version, params), password.as_bytes(), salt, out).is_ok()
        // `Output`'s equality is constant-time.
        && Output::new(out).is_ok_and(|computed| &computed == expected)
}

type Job = Box<dyn FnOnce() + Send>;

/// The hashing threads, started on first use; they live as long as the
/// process and take jobs in arrival order.
static HASHERS: LazyLock<mpsc::Sender<Job>> = LazyLock::new(|| {
    let (jobs, queue) = mpsc::channel::<Job>();
    let queue = Arc::new(Mutex::new(queue));
    for n in 0..threads() {
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

/// How many hashing threads run: one per core.
pub fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// The default bound of the queue: 32 hashes per hashing thread, under a
/// second of work at ~45 hashes per core and second.
pub fn default_queue_limit() -> usize {
    threads() * 32
}

/// A service's way into the hashing threads, with its own queue bound.
#[derive(Debug, Clone)]
pub struct Hasher {
    /// Hashes accepted and not finished yet (queued or running).
    queued: Arc<AtomicUsize>,
    limit: usize,
}

/// Decrements the queue count when a job is over, however it ends.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Hasher {
    /// At most `limit` hashes queued or running at once (at least one).
    pub fn new(limit: usize) -> Self {
        Self {
            queued: Arc::new(AtomicUsize::new(0)),
            limit: limit.max(1),
        }
    }

    /// Hashes accepted and not finished yet.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// Runs `work` on a hashing thread and waits for its answer; refuses at
    /// once (503 with `Retry-After`) when the queue is full.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Error> {
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.limit {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            common::metrics::record_rejected(REJECTED);
            return Err(Error::Unavailable {
                message: BUSY.to_owned(),
                retry_after: Duration::from_secs(1),
            });
        }
        let slot = Slot(Arc::clone(&self.queued));
        let (answer, answered) = oneshot::channel();
        let job: Job = Box::new(move || {
            let result = work();
            // The slot is free before the answer: whoever reads the answer
            // sees the queue without this job.
            drop(slot);
            // The request may have been abandoned meanwhile: nobody to answer.
            let _ = answer.send(result);
        });
        HASHERS
            .send(job)
            .map_err(|_| anyhow::anyhow!("no password hashing thread is running"))?;
        Ok(answered.await.context("password hashing failed")?)
    }

    /// Hashes a password (PHC string with algorithm, parameters and salt).
    pub async fn hash(&self, password: String) -> Result<String, Error> {
        Ok(self.run(move || hash_now(&password)).await??)
    }

    /// Whether `password` matches `hash`; with `None` (unknown user) it
    /// spends the same work on a decoy and answers false.
    pub async fn verify(&self, password: String, hash: Option<String>) -> Result<bool, Error> {
        self.run(move || match hash {
            Some(hash) => verify_now(&password, &hash),
            None => {
                verify_now(&password, &DECOY);
                false
            }
        })
        .await
    }
}

/// The answer to a sign-up or sign-in that finds the queue full.
pub const BUSY: &str = "Service is busy, try again later";

/// Its `reason` in `http_requests_rejected_total`.
const REJECTED: &str = "password_hash_queue";

#[cfg(test)]
mod tests {
    use argon2::{PasswordHasher, PasswordVerifier};

    use super::*;

    #[tokio::test]
    async fn hashes_verify_and_are_salted() {
        let hasher = Hasher::new(8);
        let a = hasher.hash("correct horse".into()).await.unwrap();
        let b = hasher.hash("correct horse".into()).await.unwrap();
        assert!(a.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{a}");
        assert_ne!(a, b);
        assert!(
            hasher
                .verify("correct horse".into(), Some(a.clone()))
                .await
                .unwrap()
        );
        assert!(!hasher.verify("wrong horse".into(), Some(a)).await.unwrap());
        assert!(!hasher.verify("correct horse".into(), None).await.unwrap());
        assert!(
            !hasher
                .verify("x".into(), Some("garbage".into()))
                .await
                .unwrap()
        );
    }

    #[test]
    fn reused_memory_gives_the_reference_hashes() {
        // The same thread hashes many times over its dirty memory; every
        // result must verify with the crate's own allocating verifier, and
        // the crate's own hashes must verify with ours.
        for n in 0..4 {
            let password = format!("password number {n}");
            let ours = hash_now(&password).unwrap();
            Argon2::default()
                .verify_password(password.as_bytes(), ours.as_str())
                .expect("our hash verifies with the reference");
            let theirs = Argon2::default()
                .hash_password(password.as_bytes())
                .unwrap()
                .to_string();
            assert!(verify_now(&password, &theirs));
            assert!(!verify_now("another one", &theirs));
        }
    }

    #[tokio::test]
    async fn a_full_queue_refuses_at_once_with_retry_after() {
        let hasher = Hasher::new(2);
        let attempts: Vec<_> = (0..12)
            .map(|n| {
                let hasher = hasher.clone();
                tokio::spawn(async move { hasher.hash(format!("password {n}")).await })
            })
            .collect();
        let mut hashed = 0;
        let mut refused = 0;
        for attempt in attempts {
            match attempt.await.unwrap() {
                Ok(_) => hashed += 1,
                Err(Error::Unavailable {
                    message,
                    retry_after,
                }) => {
                    assert_eq!(message, BUSY);
                    assert_eq!(retry_after, Duration::from_secs(1));
                    refused += 1;
                }
                Err(other) => panic!("unexpected {other:?}"),
            }
        }
        assert!(hashed >= 2, "the first two always get in: {hashed}");
        assert!(
            refused >= 1,
            "12 at once over a bound of 2: {refused} refused"
        );
        assert_eq!(hasher.queued(), 0, "every slot is given back");
        // Once the queue drains, hashing works again.
        hasher.hash("after the burst".into()).await.unwrap();
    }
}
