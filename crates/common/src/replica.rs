//! Replicas of another service's records: the version rule of DESIGN §4 in
//! one place.
//!
//! A service that keeps a copy of records it does not own (orders keeps
//! tickets, payments keeps orders) applies the owner's update to version `v`
//! with one conditional write on `version: v − 1` ([`apply`]). When nothing
//! matched,
//! [`VersionedUpdate::not_applied`] tells from the replica's version what
//! that means: already at `v` or later, a duplicate (acked); behind or
//! missing, an early event, which [`VersionedUpdate::handled`] hands back to
//! the runner as [`Handled::Early`] so it is redelivered after its
//! predecessor, with the one delay of [`crate::bus::BusConfig::early_delay`].

use mongodb::{
    Collection,
    bson::{Bson, Document, doc, oid::ObjectId},
};

use crate::bus::Handled;

/// Applies the owner's update to version `version` of the replica `id`:
/// `set` (the fields it changes) and the version, in one write conditional
/// on the replica being at `version − 1`; when that matched nothing, the
/// replica's version is read to tell a duplicate from an early event.
pub async fn apply<T: Send + Sync>(
    replicas: &Collection<T>,
    id: ObjectId,
    version: i64,
    mut set: Document,
) -> mongodb::error::Result<VersionedUpdate> {
    set.insert("version", version);
    let applied = replicas
        .update_one(
            doc! { "_id": id, "version": version - 1 },
            doc! { "$set": set },
        )
        .await?;
    if applied.matched_count == 1 {
        return Ok(VersionedUpdate::Applied);
    }
    let current = replicas
        .clone_with_type::<Document>()
        .find_one(doc! { "_id": id })
        .projection(doc! { "version": 1 })
        .await?
        .and_then(|replica| match replica.get("version") {
            Some(Bson::Int64(version)) => Some(*version),
            Some(Bson::Int32(version)) => Some(i64::from(*version)),
            _ => None,
        });
    Ok(VersionedUpdate::not_applied(current, version))
}

/// What became of an update to a replica (DESIGN §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionedUpdate {
    /// The replica was at `version − 1` and is now at `version`.
    Applied,
    /// The replica is already at `version` or later: a redelivery.
    Duplicate,
    /// The replica is missing or behind `version − 1`: an earlier event has
    /// not been applied yet.
    Early,
}

impl VersionedUpdate {
    /// An update to `version` whose conditional write matched nothing, with
    /// the replica now at `current` (`None`: no replica yet). Versions only
    /// grow, so a replica behind is waited for.
    pub fn not_applied(current: Option<i64>, version: i64) -> Self {
        match current {
            Some(current) if current >= version => Self::Duplicate,
            _ => Self::Early,
        }
    }

    /// The listener's answer: ack what is applied or a duplicate, retry an
    /// early one later.
    pub fn handled(self) -> Handled {
        match self {
            Self::Applied | Self::Duplicate => Handled::Ack,
            Self::Early => Handled::Early,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ahead_or_level_is_a_duplicate_and_behind_or_missing_is_early() {
        assert_eq!(
            VersionedUpdate::not_applied(Some(3), 3),
            VersionedUpdate::Duplicate
        );
        assert_eq!(
            VersionedUpdate::not_applied(Some(5), 3),
            VersionedUpdate::Duplicate
        );
        assert_eq!(
            VersionedUpdate::not_applied(Some(1), 3),
            VersionedUpdate::Early
        );
        assert_eq!(
            VersionedUpdate::not_applied(None, 3),
            VersionedUpdate::Early
        );
        assert_eq!(VersionedUpdate::Applied.handled(), Handled::Ack);
        assert_eq!(VersionedUpdate::Duplicate.handled(), Handled::Ack);
        assert_eq!(VersionedUpdate::Early.handled(), Handled::Early);
    }
}
