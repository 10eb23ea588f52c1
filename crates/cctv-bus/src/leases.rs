//! The lease bucket: a NATS KV bucket (`CCTV_LEASES`) holding the partition
//! count chosen at setup, one `member.<instance>` key per live aggregator
//! (rewritten as a heartbeat), one `lease.p<k>` key per owned partition,
//! and a `rewind.p<k>` key while an operator has asked the owner of
//! partition `k` to read it again from a stream sequence (`cctvctl audit
//! --repair`, after ClickHouse lost rows; see [`LeaseBucket::request_rewind`]).
//!
//! Every write is a compare-and-set on the key's revision, so of two
//! instances racing for one partition exactly one wins. Revisions only grow
//! (they are the bucket stream's sequences), which makes the revision a
//! lease was taken at a fencing token: the lease's epoch.
//!
//! Expiry is judged by the observer with its own monotonic clock: a key whose
//! revision has not changed for a whole TTL since the observer first saw that
//! revision is expired. No clocks of two machines are ever compared.

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use serde::Deserialize;

use crate::subjects::{DEFAULT_PARTITIONS, MAX_PARTITIONS};
use crate::BusError;

/// Key holding the partition count.
pub const PARTITIONS_KEY: &str = "config.partitions";
/// Prefix of lease keys.
pub const LEASE_PREFIX: &str = "lease.p";
/// Prefix of member keys.
pub const MEMBER_PREFIX: &str = "member.";
/// Prefix of rewind requests.
pub const REWIND_PREFIX: &str = "rewind.p";

/// Settings of the lease bucket.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct LeaseBucketSettings {
    /// Bucket name.
    pub name: String,
    /// Replicas (3 on a cluster).
    pub replicas: usize,
}

impl Default for LeaseBucketSettings {
    fn default() -> Self {
        Self {
            name: "CCTV_LEASES".into(),
            replicas: 1,
        }
    }
}

/// The key of partition `partition`'s lease.
pub fn lease_key(partition: u16) -> String {
    format!("{LEASE_PREFIX}{partition}")
}

/// The partition of a lease key.
pub fn parse_lease_key(key: &str) -> Option<u16> {
    key.strip_prefix(LEASE_PREFIX)?.parse().ok()
}

/// The key of partition `partition`'s rewind request.
pub fn rewind_key(partition: u16) -> String {
    format!("{REWIND_PREFIX}{partition}")
}

/// The partition of a rewind key.
pub fn parse_rewind_key(key: &str) -> Option<u16> {
    key.strip_prefix(REWIND_PREFIX)?.parse().ok()
}

/// The stream sequence a rewind request asks to read from (a decimal
/// number, at least 1).
pub fn parse_rewind_value(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value)
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|sequence| *sequence > 0)
}

/// The key of a member.
pub fn member_key(instance: &str) -> String {
    format!("{MEMBER_PREFIX}{instance}")
}

/// A fencing token from a lease's revision and the server's time of that
/// write: strictly larger for every later acquisition, also across a bucket
/// deleted and created again (its revisions restart, its clock does not).
pub fn lease_epoch(created: DateTime<Utc>, revision: u64) -> u64 {
    let seconds = u64::try_from(created.timestamp().max(0)).unwrap_or(0);
    (seconds << 20) | (revision & 0xF_FFFF)
}

/// One key of the bucket as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseEntry {
    /// The key.
    pub key: String,
    /// Its revision.
    pub revision: u64,
    /// The server's time of that revision.
    pub created: DateTime<Utc>,
    /// The value (a lease's or member's owner id).
    pub value: Bytes,
}

/// Why a compare-and-set write did not happen.
#[derive(Debug, thiserror::Error)]
pub enum LeaseWriteError {
    /// Someone else wrote the key first: the caller lost the race.
    #[error("the key changed since it was read")]
    Conflict,
    /// The write failed (server away, timeout): the outcome is unknown.
    #[error("lease write failed: {0}")]
    Failed(String),
}

/// Longest a read of the whole bucket may take.
pub(crate) const BUCKET_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The lease bucket of one deployment.
#[derive(Debug, Clone)]
pub struct LeaseBucket {
    kv: kv::Store,
}

impl LeaseBucket {
    /// Opens the bucket, creating it when missing.
    pub async fn open(
        js: &jetstream::Context,
        settings: &LeaseBucketSettings,
    ) -> Result<LeaseBucket, BusError> {
        match js.get_key_value(&settings.name).await {
            Ok(kv) => Ok(LeaseBucket { kv }),
            Err(_) => {
                let created = js
                    .create_key_value(kv::Config {
                        bucket: settings.name.clone(),
                        description: "cctv: partition count, members and partition leases".into(),
                        history: 1,
                        storage: jetstream::stream::StorageType::File,
                        num_replicas: settings.replicas,
                        ..Default::default()
                    })
                    .await;
                match created {
                    Ok(kv) => Ok(LeaseBucket { kv }),
                    // Another instance created it meanwhile.
                    Err(error) => js
                        .get_key_value(&settings.name)
                        .await
                        .map(|kv| LeaseBucket { kv })
                        .map_err(|_| BusError::jetstream("create lease bucket", error)),
                }
            }
        }
    }

    /// Opens the bucket if it exists, never creating it (readers such as
    /// the audit).
    pub async fn existing(
        js: &jetstream::Context,
        settings: &LeaseBucketSettings,
    ) -> Result<Option<LeaseBucket>, BusError> {
        use jetstream::context::GetStreamErrorKind;
        match js.get_stream(format!("KV_{}", settings.name)).await {
            Ok(_) => {}
            Err(error) => {
                if let GetStreamErrorKind::JetStream(cause) = error.kind() {
                    if cause.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND {
                        return Ok(None);
                    }
                }
                return Err(BusError::jetstream("open lease bucket", error));
            }
        }
        js.get_key_value(&settings.name)
            .await
            .map(|kv| Some(LeaseBucket { kv }))
            .map_err(|error| BusError::jetstream("open lease bucket", error))
    }

    /// The partition count, if set.
    pub async fn partitions(&self) -> Result<Option<u16>, BusError> {
        let Some(value) = self
            .kv
            .get(PARTITIONS_KEY)
            .await
            .map_err(|e| BusError::jetstream("read partition count", e))?
        else {
            return Ok(None);
        };
        let text = std::str::from_utf8(&value).unwrap_or("");
        match text.trim().parse::<u16>() {
            Ok(count) if (1..=MAX_PARTITIONS).contains(&count) => Ok(Some(count)),
            _ => Err(BusError::Invalid(format!(
                "{PARTITIONS_KEY} holds {text:?}, not a partition count 1..={MAX_PARTITIONS}"
            ))),
        }
    }

    /// Sets the partition count once. Setting it again to another value is
    /// refused: every event already published was routed by the old count.
    pub async fn set_partitions(&self, count: u16) -> Result<u16, BusError> {
        if !(1..=MAX_PARTITIONS).contains(&count) {
            return Err(BusError::Invalid(format!(
                "partitions must be 1..={MAX_PARTITIONS}, not {count}"
            )));
        }
        match self
            .kv
            .create(PARTITIONS_KEY, Bytes::from(count.to_string()))
            .await
        {
            Ok(_) => Ok(count),
            Err(error) => match self.partitions().await? {
                Some(existing) if existing == count => Ok(count),
                Some(existing) => Err(BusError::Invalid(format!(
                    "the deployment has {existing} partitions; they cannot change to {count} \
                     (events already published are routed by {existing})"
                ))),
                None => Err(BusError::jetstream("write partition count", error)),
            },
        }
    }

    /// The partition count, set to [`DEFAULT_PARTITIONS`] when nobody chose one.
    pub async fn partitions_or_init(&self) -> Result<u16, BusError> {
        match self.partitions().await? {
            Some(count) => Ok(count),
            None => self.set_partitions(DEFAULT_PARTITIONS).await,
        }
    }

    /// Every live key with `prefix`, with revision and value.
    ///
    /// Bounded by 5 s: listing keys runs an ordered
    /// consumer, which can stall when the connection is lost midway (a
    /// server restart); the caller then simply reads again.
    pub async fn entries(&self, prefix: &str) -> Result<Vec<LeaseEntry>, BusError> {
        tokio::time::timeout(BUCKET_READ_TIMEOUT, self.entries_unbounded(prefix))
            .await
            .map_err(|_| {
                BusError::Invalid(format!(
                    "reading the lease bucket took longer than {BUCKET_READ_TIMEOUT:?}"
                ))
            })?
    }

    async fn entries_unbounded(&self, prefix: &str) -> Result<Vec<LeaseEntry>, BusError> {
        let keys: Vec<String> = self
            .kv
            .keys()
            .await
            .map_err(|e| BusError::jetstream("list lease keys", e))?
            .try_collect()
            .await
            .map_err(|e| BusError::jetstream("list lease keys", e))?;
        let mut entries = Vec::new();
        for key in keys.into_iter().filter(|key| key.starts_with(prefix)) {
            let entry = self
                .kv
                .entry(key.as_str())
                .await
                .map_err(|e| BusError::jetstream("read lease key", e))?;
            if let Some(entry) = entry {
                if entry.operation == kv::Operation::Put {
                    entries.push(LeaseEntry {
                        key,
                        revision: entry.revision,
                        created: entry.created,
                        value: entry.value,
                    });
                }
            }
        }
        Ok(entries)
    }

    /// Writes `key` if it does not exist (or was deleted); returns the revision.
    pub async fn create(&self, key: &str, value: &str) -> Result<u64, LeaseWriteError> {
        match self.kv.create(key, Bytes::from(value.to_string())).await {
            Ok(revision) => Ok(revision),
            Err(error) if error.kind() == kv::CreateErrorKind::AlreadyExists => {
                Err(LeaseWriteError::Conflict)
            }
            Err(error) => Err(LeaseWriteError::Failed(error.to_string())),
        }
    }

    /// Writes `key` if its revision is still `revision`; returns the new one.
    pub async fn update(
        &self,
        key: &str,
        value: &str,
        revision: u64,
    ) -> Result<u64, LeaseWriteError> {
        match self
            .kv
            .update(key, Bytes::from(value.to_string()), revision)
            .await
        {
            Ok(revision) => Ok(revision),
            Err(error) if error.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                Err(LeaseWriteError::Conflict)
            }
            Err(error) => Err(LeaseWriteError::Failed(error.to_string())),
        }
    }

    /// Deletes `key` if its revision is still `revision`.
    pub async fn delete(&self, key: &str, revision: u64) -> Result<(), LeaseWriteError> {
        self.kv
            .delete_expect_revision(key, Some(revision))
            .await
            .map_err(|e| LeaseWriteError::Failed(e.to_string()))
    }

    /// Asks the owner of `partition` to read it again from stream sequence
    /// `from` (see `cctv-aggregator`'s replay): writes `rewind.p<k>`, or
    /// lowers a request already there. A request from the same or an
    /// earlier sequence stays as it is, so a replay under way is not started
    /// over (a loss it passed already is named by the next audit, and asked
    /// for once this replay is done). Returns the sequence requested.
    pub async fn request_rewind(&self, partition: u16, from: u64) -> Result<u64, BusError> {
        if from == 0 {
            return Err(BusError::Invalid(
                "a rewind starts at sequence 1 or later".into(),
            ));
        }
        let key = rewind_key(partition);
        let value = from.to_string();
        loop {
            let existing = self.entry(&key).await?;
            let written = match &existing {
                None => self.create(&key, &value).await,
                Some(entry) => match parse_rewind_value(&entry.value) {
                    Some(earlier) if earlier <= from => return Ok(earlier),
                    _ => self.update(&key, &value, entry.revision).await,
                },
            };
            match written {
                Ok(_) => return Ok(from),
                // Changed meanwhile (the owner finished, or another request): read again.
                Err(LeaseWriteError::Conflict) => {}
                Err(LeaseWriteError::Failed(error)) => {
                    return Err(BusError::Invalid(format!(
                        "cannot write {key} in the lease bucket: {error}"
                    )))
                }
            }
        }
    }

    /// The server time of a fresh write, read back (for the first epoch).
    pub async fn entry(&self, key: &str) -> Result<Option<LeaseEntry>, BusError> {
        let entry = self
            .kv
            .entry(key)
            .await
            .map_err(|e| BusError::jetstream("read lease key", e))?;
        Ok(entry
            .filter(|entry| entry.operation == kv::Operation::Put)
            .map(|entry| LeaseEntry {
                key: key.to_string(),
                revision: entry.revision,
                created: entry.created,
                value: entry.value,
            }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        assert_eq!(lease_key(7), "lease.p7");
        assert_eq!(parse_lease_key("lease.p7"), Some(7));
        assert_eq!(parse_lease_key("lease.px"), None);
        assert_eq!(member_key("a-1"), "member.a-1");
    }

    #[test]
    fn rewind_keys_and_values_round_trip() {
        assert_eq!(rewind_key(3), "rewind.p3");
        assert_eq!(parse_rewind_key("rewind.p3"), Some(3));
        assert_eq!(parse_rewind_key("lease.p3"), None);
        assert_eq!(parse_rewind_value(b"1234"), Some(1234));
        assert_eq!(parse_rewind_value(b" 7\n"), Some(7));
        assert_eq!(parse_rewind_value(b"0"), None, "sequences start at 1");
        assert_eq!(parse_rewind_value(b"-1"), None);
        assert_eq!(parse_rewind_value(b"x"), None);
    }

    #[test]
    fn epochs_grow_with_revision_and_with_time() {
        let t = DateTime::from_timestamp(1_800_000_000, 0).expect("time");
        let later = DateTime::from_timestamp(1_800_000_001, 0).expect("time");
        assert!(lease_epoch(t, 5) > lease_epoch(t, 4));
        // A recreated bucket (revision 1 again) a second later is still newer.
        assert!(lease_epoch(later, 1) > lease_epoch(t, 900_000));
    }
}
