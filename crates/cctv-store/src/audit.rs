//! What `offence_events` holds per source stream, for `cctvctl audit`: the
//! stored stream sequences with their copy counts (read in sequence chunks,
//! streamed row by row, so millions of rows need little memory) and the event
//! ids stored more than once. Every value is bound, never spliced into SQL.

use clickhouse::sql::Identifier;
use serde::Deserialize;

use crate::{Store, StoreError};

/// Sequences per audit query: bounds the server's GROUP BY and each response.
pub const AUDIT_CHUNK_SEQUENCES: u64 = 1_000_000;

/// Overview of one source stream's rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clickhouse::Row, Deserialize)]
pub struct StoredSpan {
    /// Rows stored for the stream.
    pub rows: u64,
    /// Lowest stored sequence (0 when no rows).
    pub min_seq: u64,
    /// Highest stored sequence (0 when no rows).
    pub max_seq: u64,
}

/// One stream sequence as stored: how many rows carry it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clickhouse::Row, Deserialize)]
pub struct StoredSequence {
    /// Stream sequence.
    pub stream_seq: u64,
    /// Rows carrying it (more than 1 is a doubled row).
    pub copies: u64,
}

/// An event id stored more than once.
#[derive(Debug, Clone, PartialEq, Eq, clickhouse::Row, Deserialize, serde::Serialize)]
pub struct DoubledEventId {
    /// The event id, as text.
    pub event_id: String,
    /// Rows carrying it.
    pub copies: u64,
}

/// One round of an audit that takes the event ids a share at a time: the ids
/// whose value, as a 128-bit big-endian number (the partitions' number,
/// `cctv_bus::subjects::partition_of`), leaves `index` divided by `of`.
/// Every copy of an id falls in the same round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRound {
    /// Rounds in all (1: every id at once).
    pub of: u16,
    /// This round, below `of`.
    pub index: u16,
}

impl IdRound {
    /// The one round of an audit that takes every id at once.
    pub const ALL: IdRound = IdRound { of: 1, index: 0 };

    /// Whether `event_id` belongs to this round.
    pub fn contains(&self, event_id: &[u8; 16]) -> bool {
        self.of <= 1
            || u128::from_be_bytes(*event_id) % u128::from(self.of) == u128::from(self.index)
    }
}

impl Store {
    /// Every `source_stream` value present in `offence_events`.
    pub async fn source_streams(&self) -> Result<Vec<String>, StoreError> {
        self.client()
            .query("SELECT DISTINCT source_stream FROM ?.offence_events ORDER BY source_stream")
            .bind(Identifier(&self.config().database))
            .fetch_all::<String>()
            .await
            .map_err(|e| StoreError::from_clickhouse("list source streams", e))
    }

    /// Row count and sequence span of one source stream.
    pub async fn stored_span(&self, source_stream: &str) -> Result<StoredSpan, StoreError> {
        self.client()
            .query(
                "SELECT count() AS rows, min(stream_seq) AS min_seq, max(stream_seq) AS max_seq \
                 FROM ?.offence_events WHERE source_stream = ?",
            )
            .bind(Identifier(&self.config().database))
            .bind(source_stream)
            .fetch_one::<StoredSpan>()
            .await
            .map_err(|e| StoreError::from_clickhouse("read stored span", e))
            // min/max of no rows are 0 on every version; keep that explicit.
            .map(|span| {
                if span.rows == 0 {
                    StoredSpan::default()
                } else {
                    span
                }
            })
    }

    /// Calls `visit` for every stored sequence of `source_stream` in
    /// `first..=last`, in ascending order, with its copy count. The rows are
    /// streamed, not collected.
    pub async fn for_each_stored_sequence(
        &self,
        source_stream: &str,
        first: u64,
        last: u64,
        mut visit: impl FnMut(StoredSequence),
    ) -> Result<(), StoreError> {
        let mut cursor = crate::store::whole(self.client().query(
            "SELECT stream_seq, toUInt64(count()) AS copies FROM ?.offence_events \
                 WHERE source_stream = ? AND stream_seq >= ? AND stream_seq <= ? \
                 GROUP BY stream_seq ORDER BY stream_seq",
        ))
        .bind(Identifier(&self.config().database))
        .bind(source_stream)
        .bind(first)
        .bind(last)
        .fetch::<StoredSequence>()
        .map_err(|e| StoreError::from_clickhouse("read stored sequences", e))?;
        while let Some(stored) = cursor
            .next()
            .await
            .map_err(|e| StoreError::from_clickhouse("read stored sequences", e))?
        {
            visit(stored);
        }
        Ok(())
    }

    /// Event ids of `source_stream` stored more than once: how many there are,
    /// and up to `limit` of them (most copies first).
    pub async fn doubled_event_ids(
        &self,
        source_stream: &str,
        limit: u64,
    ) -> Result<(u64, Vec<DoubledEventId>), StoreError> {
        let database = Identifier(&self.config().database);
        let count = self
            .client()
            .query(
                "SELECT count() FROM (SELECT event_id FROM ?.offence_events \
                 WHERE source_stream = ? GROUP BY event_id HAVING count() > 1)",
            )
            .bind(database)
            .bind(source_stream)
            .fetch_one::<u64>()
            .await
            .map_err(|e| StoreError::from_clickhouse("count doubled event ids", e))?;
        if count == 0 {
            return Ok((0, Vec::new()));
        }
        let examples = self
            .client()
            .query(
                "SELECT toString(event_id) AS event_id, toUInt64(count()) AS copies \
                 FROM ?.offence_events WHERE source_stream = ? \
                 GROUP BY event_id HAVING copies > 1 ORDER BY copies DESC, event_id LIMIT ?",
            )
            .bind(database)
            .bind(source_stream)
            .bind(limit)
            .fetch_all::<DoubledEventId>()
            .await
            .map_err(|e| StoreError::from_clickhouse("list doubled event ids", e))?;
        Ok((count, examples))
    }
}
