//! MongoDB: connecting, readiness and duplicate keys as values.
//!
//! Every service owns one database, named by the path of its `MONGO_URI`
//! (`mongodb://host:27017/orders`), falling back to the service name.

use std::time::Duration;

use anyhow::Context;
use mongodb::{
    Client, Database,
    bson::doc,
    error::{ErrorKind, WriteFailure},
    options::ClientOptions,
};

/// MongoDB's duplicate-key error code.
const DUPLICATE_KEY: i32 = 11000;

/// Connects to `uri` and returns its default database (or `fallback_db`).
///
/// The driver connects lazily; this does not wait for the server, so a service
/// can start while its database is still coming up (readiness says so).
pub async fn connect(uri: &str, fallback_db: &str) -> anyhow::Result<Database> {
    let mut options = ClientOptions::parse(uri)
        .await
        .with_context(|| "MONGO_URI is not a valid MongoDB connection string")?;
    options
        .server_selection_timeout
        .get_or_insert(Duration::from_secs(5));
    options
        .connect_timeout
        .get_or_insert(Duration::from_secs(5));
    options
        .app_name
        .get_or_insert_with(|| fallback_db.to_owned());
    let name = options
        .default_database
        .clone()
        .unwrap_or_else(|| fallback_db.to_owned());
    let client = Client::with_options(options).context("failed to create the MongoDB client")?;
    Ok(client.database(&name))
}

/// Whether the database answers a ping.
pub async fn ping(db: &Database) -> anyhow::Result<()> {
    db.run_command(doc! { "ping": 1 })
        .await
        .context("MongoDB did not answer ping")?;
    Ok(())
}

/// Drops the index `name` of `collection` if it is there (a retired index:
/// idempotent, and a missing collection or index is not an error).
pub async fn drop_index_if_present<T: Send + Sync>(
    collection: &mongodb::Collection<T>,
    name: &str,
) -> mongodb::error::Result<()> {
    match collection.drop_index(name).await {
        Ok(()) => {
            tracing::info!(index = name, "dropped a retired index");
            Ok(())
        }
        // 26 NamespaceNotFound (no collection yet), 27 IndexNotFound.
        Err(e) if matches!(e.kind.as_ref(), ErrorKind::Command(c) if c.code == 26 || c.code == 27) => {
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// A write's unique-index violation as a value: for the writes where a key
/// already taken is an outcome of the domain (a redelivered event, an email
/// already registered, a race another writer won), not a failure.
///
/// ```ignore
/// let inserted = tickets.insert_one(ticket).await.unless_duplicate()?.is_some();
/// ```
pub trait DuplicateKey<T> {
    /// `Ok(None)` for a unique-index violation, `Ok(Some(_))` for the
    /// write's result, any other error as it is.
    fn unless_duplicate(self) -> mongodb::error::Result<Option<T>>;
}

impl<T> DuplicateKey<T> for mongodb::error::Result<T> {
    fn unless_duplicate(self) -> mongodb::error::Result<Option<T>> {
        match self {
            Ok(value) => Ok(Some(value)),
            Err(e) if is_duplicate_key(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Whether an error is a unique-index violation — the one place that knows
/// how the driver reports it (single writes, bulk writes, commands).
pub fn is_duplicate_key(err: &mongodb::error::Error) -> bool {
    match err.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(e)) => e.code == DUPLICATE_KEY,
        ErrorKind::InsertMany(e) => e
            .write_errors
            .as_ref()
            .is_some_and(|errors| errors.iter().any(|e| e.code == DUPLICATE_KEY)),
        ErrorKind::Command(e) => e.code == DUPLICATE_KEY,
        _ => false,
    }
}
