//! The `users` collection.
//!
//! Email is unique by index, not only by the check in the handler: two
//! sign-ups racing for one address both pass the check, and the index lets
//! exactly one of them in. The loser's duplicate-key error is the value
//! `false` of [`Users::insert`].

use common::mongo::DuplicateKey as _;
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

    /// Inserts `user`; `false` if the email is taken (the unique index
    /// refused it).
    pub async fn insert(&self, user: &User) -> mongodb::error::Result<bool> {
        Ok(self
            .users
            .insert_one(user)
            .await
            .unless_duplicate()?
            .is_some())
    }
}
