//! The `users` collection.
//!
//! Email is unique by index, not only by the check in the handler: two
//! sign-ups racing for one address both pass the check, and the index lets
//! exactly one of them in. The loser's duplicate-key error is reported as
//! [`InsertError::EmailTaken`].

use mongodb::{
    Collection, Database, IndexModel,
    bson::{doc, oid::ObjectId},
    options::IndexOptions,
};
use serde::{Deserialize, Serialize};

/// A stored user.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct User {
    #[serde(rename = "_id")]
    pub id: ObjectId,
    /// Trimmed and lower-cased.
    pub email: String,
    /// argon2id PHC string.
    pub password: String,
}

/// Why a user could not be inserted.
#[derive(Debug, thiserror::Error)]
pub enum InsertError {
    #[error("email already in use")]
    EmailTaken,
    #[error(transparent)]
    Database(#[from] mongodb::error::Error),
}

/// The users collection and its queries.
#[derive(Clone)]
pub struct Users {
    db: Database,
    users: Collection<User>,
}

impl Users {
    pub fn new(db: Database) -> Self {
        Self {
            users: db.collection("users"),
            db,
        }
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Creates the unique index on email (idempotent).
    pub async fn ensure_indexes(&self) -> mongodb::error::Result<()> {
        let index = IndexModel::builder()
            .keys(doc! { "email": 1 })
            .options(
                IndexOptions::builder()
                    .unique(true)
                    .name("email_unique".to_owned())
                    .build(),
            )
            .build();
        self.users.create_index(index).await?;
        Ok(())
    }

    pub async fn find_by_email(&self, email: &str) -> mongodb::error::Result<Option<User>> {
        self.users.find_one(doc! { "email": email }).await
    }

    pub async fn insert(&self, user: &User) -> Result<(), InsertError> {
        match self.users.insert_one(user).await {
            Ok(_) => Ok(()),
            Err(e) if common::mongo::is_duplicate_key(&e) => Err(InsertError::EmailTaken),
            Err(e) => Err(e.into()),
        }
    }
}
