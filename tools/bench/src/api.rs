//! The bench's client for the scenarios (signing up, listing, ordering…),
//! where correctness matters more than the client's own overhead: the test
//! kit's one client of the fleet ([`testkit::Api`]), whose failures are
//! errors the bench reports.

pub use testkit::{Api, PASSWORD, Reply, User};

/// `n` users signed up at once, `bench-<tag>-<i>-<run>@bench.test`.
pub async fn signup_many(api: &Api, tag: &str, n: usize) -> anyhow::Result<Vec<User>> {
    let run = std::process::id();
    let signups = (0..n).map(|i| {
        let api = api.clone();
        let email = format!("bench-{tag}-{i}-{run}@bench.test");
        async move { api.signup(&email).await }
    });
    Ok(futures::future::try_join_all(signups).await?)
}
