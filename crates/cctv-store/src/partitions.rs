//! What a partition owner needs from ClickHouse: its fence, its fenced
//! inserts and the event ids it wrote within the dedup horizon.
//!
//! The fence: `offence_events_incoming` keeps nothing; a materialized view
//! moves each inserted block into `offence_events` only if its rows carry
//! the newest `lease_epoch` fenced for their writer (partition). A new owner
//! first writes its epoch to `partition_fences`, then waits until no insert
//! of that writer is still running ([`Store::fenced_inserts_in_flight`]); from then
//! on a stale owner's insert writes nothing, and everything it wrote before
//! is visible to the new owner's rebuild.

use clickhouse::insert_formatted::CompressedData;
use clickhouse::sql::Identifier;
use clickhouse::Compression;
use serde::{Deserialize, Serialize};

use crate::encoded::ENCODED_COLUMNS;
use crate::{EncodedRows, IdRound, Store, StoreError};

/// How long one wait for a replica to catch up may take; the caller asks again.
const SYNC_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// The table the fenced inserts go to.
const INCOMING: &str = "offence_events_incoming";

#[derive(Debug, clickhouse::Row, Serialize)]
struct FenceRow<'a> {
    writer: &'a str,
    lease_epoch: u64,
    owner: &'a str,
    fenced_at: u32,
}

impl Store {
    /// Records `epoch` as the newest lease of `writer`: from now on only rows
    /// of this epoch (or a newer one) are written for it.
    ///
    /// On a cluster the fence table is replicated, and a partition owner
    /// writes its fence into every replica of the shard itself (this method
    /// on each), each insert a copy of its own (`insert_deduplicate = 0`, or
    /// the second would be taken for a repeat of the first and skipped): once
    /// all have answered, a stale owner's insert into any replica meets the
    /// fence. While a replica is down no fence can be written, so a partition
    /// of that shard is not taken over until it returns.
    pub async fn fence(&self, writer: &str, epoch: u64, owner: &str) -> Result<(), StoreError> {
        let mut insert = self
            .client()
            .insert::<FenceRow<'_>>("partition_fences")
            .await
            .map_err(|e| StoreError::from_clickhouse("fence", e))?;
        if self.is_cluster() {
            insert = insert.with_setting("insert_deduplicate", "0");
        }
        let fenced_at = u32::try_from(chrono::Utc::now().timestamp().max(0)).unwrap_or(u32::MAX);
        insert
            .write(&FenceRow {
                writer,
                lease_epoch: epoch,
                owner,
                fenced_at,
            })
            .await
            .map_err(|e| StoreError::from_clickhouse("fence", e))?;
        insert
            .end()
            .await
            .map_err(|e| StoreError::from_clickhouse("fence", e))
    }

    /// The newest epoch fenced for `writer` (0 when none).
    pub async fn newest_fence(&self, writer: &str) -> Result<u64, StoreError> {
        self.client()
            .query("SELECT max(lease_epoch) FROM ?.partition_fences WHERE writer = ?")
            .bind(Identifier(&self.config().database))
            .bind(writer)
            .fetch_one::<u64>()
            .await
            .map_err(|e| StoreError::from_clickhouse("read fence", e))
    }

    /// Inserts the batches of one or more writers (partitions) through the
    /// fence as one INSERT (one part, all or nothing), its `query_id` naming
    /// every writer it carries (see [`Store::fenced_inserts_in_flight`]).
    /// Each batch must be sealed ([`EncodedRows::seal`]). Rows whose
    /// `lease_epoch` is not their writer's newest are dropped by the server:
    /// success does not mean the rows were written.
    pub async fn insert_fenced(&self, batches: &[(&str, &EncodedRows)]) -> Result<(), StoreError> {
        if batches.iter().all(|(_, rows)| rows.is_empty()) {
            return Ok(());
        }
        let mut query_id = format!("{}{}:.", self.fenced_insert_prefix(), uuid::Uuid::new_v4());
        for (writer, _) in batches {
            query_id.push_str(writer);
            query_id.push('.');
        }
        // The database name is a validated identifier (`ClickHouseConfig::validate`);
        // no data is spliced into the statement.
        let sql = format!(
            "INSERT INTO `{}`.{INCOMING} ({ENCODED_COLUMNS}) FORMAT RowBinary",
            self.config().database
        );
        let timeout = Some(self.config().insert_timeout);
        let mut insert = self
            .client()
            .insert_formatted_with(sql)
            .with_setting("query_id", query_id)
            .with_timeouts(timeout, timeout);
        for chunk in batches.iter().flat_map(|(_, rows)| rows.chunks()) {
            if chunk.is_empty() {
                continue;
            }
            // Compressed straight from the chunk (no copy of it first).
            let sent = if self.config().compression {
                match CompressedData::new(chunk, Compression::Lz4) {
                    Ok(compressed) => insert.send_compressed(compressed).await,
                    Err(error) => Err(error),
                }
            } else {
                insert.send(bytes::Bytes::copy_from_slice(chunk)).await
            };
            sent.map_err(|e| StoreError::from_clickhouse("insert", e))?;
        }
        insert
            .end()
            .await
            .map_err(|e| StoreError::from_clickhouse("insert", e))
    }

    /// `query_id` prefix of every fenced insert into this database: followed
    /// by a random id and `:.<writer>.<writer>.`.
    pub fn fenced_insert_prefix(&self) -> String {
        format!("cctv-fenced:{}:", self.config().database)
    }

    /// Waits until this replica holds every part its shard has committed
    /// (`SYSTEM SYNC REPLICA`), so that a resume point read here is final: an
    /// insert acknowledged by another replica is then visible here. No-op on
    /// a single server. Fails (transiently) while a part exists only on a
    /// replica that is down.
    pub async fn sync_replica(&self) -> Result<(), StoreError> {
        self.sync_table("offence_events_local").await
    }

    /// `SYSTEM SYNC REPLICA` of `table` (a validated name) on this server,
    /// bounded by [`SYNC_TIMEOUT`]; no-op on a single server.
    pub(crate) async fn sync_table(&self, table: &str) -> Result<(), StoreError> {
        if !self.is_cluster() {
            return Ok(());
        }
        self.replica_has_read_the_log(table).await?;
        let sync = self
            .server_client
            .query("SYSTEM SYNC REPLICA ?.?")
            .bind(Identifier(&self.config().database))
            .bind(Identifier(table))
            .execute();
        match tokio::time::timeout(SYNC_TIMEOUT, sync).await {
            Ok(result) => result.map_err(|e| StoreError::from_clickhouse("sync replica", e)),
            Err(_) => Err(StoreError::Unavailable {
                operation: "sync replica",
                message: format!(
                    "the replica did not catch up within {}s (a part may be held only by a replica that is down)",
                    SYNC_TIMEOUT.as_secs()
                ),
            }),
        }
    }

    /// Fails (transiently) unless this replica of `table` has read the
    /// whole replication log of its shard into its queue: only then does
    /// `SYNC REPLICA` (which waits for the queue) wait for every part. A
    /// restarted 18.16 replica was seen for ~10 s neither read-only nor
    /// behind in its queue, but with its log pointer far behind the log
    /// (`last_queue_update` never set): `SYNC REPLICA` returned at once and
    /// the counts read there missed hundreds of acknowledged rows.
    async fn replica_has_read_the_log(&self, table: &str) -> Result<(), StoreError> {
        #[derive(Debug, clickhouse::Row, serde::Deserialize)]
        struct ReplicaState {
            not_ready: u8,
            log_pointer: u64,
            log_max_index: u64,
            zookeeper_path: String,
        }
        let behind = |detail: String| StoreError::Unavailable {
            operation: "sync replica",
            message: format!("the replica of {table} {detail}"),
        };
        let states = self
            .server_client
            .query(
                "SELECT toUInt8(is_readonly OR is_session_expired) AS not_ready, \
                 log_pointer, log_max_index, zookeeper_path \
                 FROM system.replicas WHERE database = ? AND table = ?",
            )
            .bind(self.config().database.as_str())
            .bind(table)
            .fetch_all::<ReplicaState>()
            .await
            .map_err(|e| StoreError::from_clickhouse("read the replica's state", e))?;
        let Some(state) = states.first() else {
            return Err(behind("is not a replica on this server".into()));
        };
        if state.not_ready != 0 {
            return Err(behind(
                "is read-only (not in a ZooKeeper session yet)".into(),
            ));
        }
        if state.log_pointer > state.log_max_index {
            return Ok(());
        }
        if state.log_pointer == 0 && state.log_max_index == 0 {
            // No entry read: either the log is empty (nothing ever inserted)
            // or its first entry is still unread.
            let entries: u64 = self
                .server_client
                .query("SELECT count() FROM system.zookeeper WHERE path = ?")
                .bind(format!("{}/log", state.zookeeper_path))
                .fetch_one()
                .await
                .map_err(|e| StoreError::from_clickhouse("read the replication log", e))?;
            if entries == 0 {
                return Ok(());
            }
        }
        Err(behind(format!(
            "has read its shard's log up to entry {} of {}",
            state.log_pointer, state.log_max_index
        )))
    }

    /// Fenced inserts the server is still running that carry rows of
    /// `writer` (whoever sent them, even a client that gave up or died).
    pub async fn fenced_inserts_in_flight(&self, writer: &str) -> Result<u64, StoreError> {
        self.client()
            .query(
                "SELECT count() FROM system.processes \
                 WHERE startsWith(query_id, ?) AND position(query_id, ?) > 0",
            )
            .bind(self.fenced_insert_prefix())
            .bind(format!(".{writer}."))
            .fetch_one::<u64>()
            .await
            .map_err(|e| StoreError::from_clickhouse("list inserts in flight", e))
    }

    /// Event ids `writer` wrote with an insert time at or after `since`
    /// (UTC seconds), streamed to `visit`.
    pub async fn for_each_written_id(
        &self,
        writer: &str,
        since: u32,
        mut visit: impl FnMut([u8; 16], u32),
    ) -> Result<u64, StoreError> {
        #[derive(Debug, clickhouse::Row, Deserialize)]
        struct Written {
            #[serde(with = "clickhouse::serde::uuid")]
            event_id: uuid::Uuid,
            inserted_at: u32,
        }
        let mut cursor = crate::store::whole(self.client().query(
            "SELECT event_id, toUInt32(inserted_at) AS inserted_at FROM ?.? \
                 WHERE writer = ? AND inserted_at >= toDateTime(?)",
        ))
        .bind(Identifier(&self.config().database))
        .bind(Identifier(self.events_table()))
        .bind(writer)
        .bind(since)
        .fetch::<Written>()
        .map_err(|e| StoreError::from_clickhouse("read written ids", e))?;
        let mut count = 0;
        while let Some(row) = cursor
            .next()
            .await
            .map_err(|e| StoreError::from_clickhouse("read written ids", e))?
        {
            visit(*row.event_id.as_bytes(), row.inserted_at);
            count += 1;
        }
        Ok(count)
    }

    /// Every event id `source_stream` stored in `round` (the ids whose value
    /// as a 128-bit big-endian number, the partitions' number, leaves
    /// `round.index` divided by `round.of`), with the lowest stream sequence
    /// it was stored from and its copy count, streamed (for the audit: every
    /// copy of an id falls in one round, so ClickHouse groups a `1/of` share
    /// of the ids at a time, and so does the caller).
    pub async fn for_each_stored_id(
        &self,
        source_stream: &str,
        round: IdRound,
        mut visit: impl FnMut([u8; 16], u64, u64),
    ) -> Result<(), StoreError> {
        #[derive(Debug, clickhouse::Row, Deserialize)]
        struct Stored {
            #[serde(with = "clickhouse::serde::uuid")]
            event_id: uuid::Uuid,
            stream_seq: u64,
            copies: u64,
        }
        let query = if round.of <= 1 {
            self.client().query(
                "SELECT event_id, min(stream_seq) AS stream_seq, toUInt64(count()) AS copies \
                 FROM ?.offence_events WHERE source_stream = ? GROUP BY event_id",
            )
        } else {
            // id mod n from the id's two 64-bit halves (18.16 has no 128-bit
            // arithmetic): (high mod n x 2^64 mod n + low mod n) mod n, every
            // product below 2^32 for n <= u16::MAX.
            self.client().query(
                "SELECT event_id, min(stream_seq) AS stream_seq, toUInt64(count()) AS copies \
                 FROM ?.offence_events WHERE source_stream = ? AND \
                 ((reinterpretAsUInt64(reverse(substring(UUIDStringToNum(toString(event_id)), 1, 8))) % ?) * ? \
                 + reinterpretAsUInt64(reverse(substring(UUIDStringToNum(toString(event_id)), 9, 8))) % ?) % ? = ? \
                 GROUP BY event_id",
            )
        };
        let mut query = query
            .bind(Identifier(&self.config().database))
            .bind(source_stream);
        if round.of > 1 {
            let of = u64::from(round.of);
            // 2^64 mod n, as u128 arithmetic here.
            #[allow(clippy::cast_possible_truncation)]
            let wrap = ((1u128 << 64) % u128::from(of)) as u64;
            query = query
                .bind(of)
                .bind(wrap)
                .bind(of)
                .bind(of)
                .bind(u64::from(round.index));
        }
        let mut cursor = crate::store::whole(query)
            .fetch::<Stored>()
            .map_err(|e| StoreError::from_clickhouse("read stored ids", e))?;
        while let Some(row) = cursor
            .next()
            .await
            .map_err(|e| StoreError::from_clickhouse("read stored ids", e))?
        {
            visit(*row.event_id.as_bytes(), row.stream_seq, row.copies);
        }
        Ok(())
    }
}
