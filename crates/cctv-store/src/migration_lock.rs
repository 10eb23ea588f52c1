//! One migrator at a time per node: a lock made of a table.
//!
//! Several aggregators started together with `migrate_on_start = true` (or an
//! aggregator and `cctvctl setup`) would otherwise run the migrations side by
//! side. Their statements are idempotent one by one, but not interleaved: one
//! instance applying migration 4 drops the tables migration 3 created while
//! another is still running migration 3's later statements, which then fail
//! ("table doesn't exist", seen in CI) or, worse, re-create what migration 4
//! replaced.
//!
//! ClickHouse has no advisory lock, so the lock is built from tables, in the
//! manner of "announce, then look": a migrator that sees no live lock creates
//! its own table `schema_migration_lock_<token>` (a unique name), writes a
//! heartbeat row into it, and lists the lock tables again. If another live
//! one is there, it drops its own and tries again after a random pause;
//! otherwise it holds the lock. Of two migrators that overlap, the one that
//! created its table second lists the first one's table, so at most one
//! holds. The holder writes a heartbeat every [`HEARTBEAT`] and drops its
//! table when done. A lock whose newest heartbeat (or, before the first, its
//! creation) is older than [`STALE`] by the server's clock belongs to a
//! migrator that died mid-way: it is ignored and dropped by the next holder.

use std::time::Duration;

use clickhouse::sql::Identifier;
use clickhouse::Client;

use crate::{Store, StoreError};

/// Name of every lock table, followed by its generation.
pub(crate) const LOCK_PREFIX: &str = "schema_migration_lock_";
/// How often the holder shows it is alive.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// A lock without a heartbeat for this long is taken over.
const STALE: Duration = Duration::from_secs(30);
/// Pause between looks at a held lock.
const WAIT: Duration = Duration::from_millis(500);
/// How often a waiting migrator says so in the log.
const WAIT_LOG_EVERY: u32 = 20;
/// Tries a read of `system.tables` may take while tables of the database
/// are being dropped (`read_system_tables`), and the pause between them.
const LIST_TRIES: u32 = 50;
const LIST_PAUSE: Duration = Duration::from_millis(20);

/// A held migration lock; [`MigrationLock::release`] drops it. Dropped
/// without release (a failed migration), the heartbeat stops and the lock
/// goes stale, so the next migrator takes over after [`STALE`].
pub(crate) struct MigrationLock {
    client: Client,
    database: String,
    table: String,
    heartbeat: tokio::task::JoinHandle<()>,
}

impl Drop for MigrationLock {
    fn drop(&mut self) {
        self.heartbeat.abort();
    }
}

impl MigrationLock {
    /// Waits until this migrator holds the node's migration lock.
    pub(crate) async fn acquire(store: &Store) -> Result<MigrationLock, StoreError> {
        let client = store.client().clone();
        let database = store.config().database.clone();
        let holder = holder_name();
        let mut waits = 0u32;
        loop {
            let (live, _) = lock_tables(&client, &database, None).await?;
            if live > 0 {
                if waits.is_multiple_of(WAIT_LOG_EVERY) {
                    tracing::info!(
                        database = %database,
                        "another instance is migrating the schema; waiting for its lock"
                    );
                }
                waits = waits.wrapping_add(1);
                tokio::time::sleep(WAIT).await;
                continue;
            }
            let table = format!("{LOCK_PREFIX}{}", uuid::Uuid::new_v4().simple());
            create_lock(&client, &database, &table, &holder).await?;
            let (live, stale) = lock_tables(&client, &database, Some(&table)).await?;
            if live > 0 {
                // Another migrator announced itself at the same time.
                drop_table(&client, &database, &table).await?;
                let jitter = uuid::Uuid::new_v4().as_u128() % 1_000;
                tokio::time::sleep(
                    WAIT + Duration::from_millis(u64::try_from(jitter).unwrap_or(0)),
                )
                .await;
                continue;
            }
            for table in stale {
                tracing::warn!(%table, "dropping the migration lock of a migrator that stopped");
                drop_table(&client, &database, &table).await?;
            }
            let heartbeat = tokio::spawn(beat(
                client.clone(),
                database.clone(),
                table.clone(),
                holder,
            ));
            return Ok(MigrationLock {
                client,
                database,
                table,
                heartbeat,
            });
        }
    }

    /// Stops the heartbeat and drops the lock table.
    pub(crate) async fn release(self) -> Result<(), StoreError> {
        self.heartbeat.abort();
        drop_table(&self.client, &self.database, &self.table).await
    }
}

/// Who holds a lock, for whoever reads the table: host and process.
fn holder_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|name| name.trim().to_string())
        .unwrap_or_default();
    format!("{host}:{}", std::process::id())
}

/// How many lock tables other than `mine` are live, and the names of the
/// stale ones.
async fn lock_tables(
    client: &Client,
    database: &str,
    mine: Option<&str>,
) -> Result<(usize, Vec<String>), StoreError> {
    let names = list_lock_tables(client, database).await?;
    let mut live = 0;
    let mut stale = Vec::new();
    for name in names {
        if Some(name.as_str()) == mine {
            continue;
        }
        match lock_age(client, database, &name).await {
            Ok(Some(age)) if age >= STALE => stale.push(name),
            Ok(Some(_)) => live += 1,
            // Dropped between the listing and the look.
            Ok(None) => {}
            // Dropped (released) between the listing and the look: unknown
            // table (60), or dropped while the query opened it (218, seen in
            // CI with four migrators on 18.16).
            Err(StoreError::Server {
                code: Some(60 | 218),
                ..
            }) => {}
            Err(error) => return Err(error),
        }
    }
    Ok((live, stale))
}

/// The names of the database's lock tables.
async fn list_lock_tables(client: &Client, database: &str) -> Result<Vec<String>, StoreError> {
    read_system_tables(|| async {
        client
            .query("SELECT name FROM system.tables WHERE database = ? AND startsWith(name, ?)")
            .bind(database)
            .bind(LOCK_PREFIX)
            .fetch_all()
            .await
            .map_err(|e| StoreError::from_clickhouse("list migration locks", e))
    })
    .await
}

/// Runs `read`, a query of `system.tables`, until it does not meet a table
/// dropped mid-read.
///
/// A table of the database dropped while ClickHouse reads `system.tables`
/// (another migrator's lock, released or backed off; a table a migration
/// replaces) fails the read on 18.16 with unknown table (60) or 218, even
/// when the read asks about other tables only. Seen in the bench: one of
/// two aggregators started together exited with it. Taken as an answer,
/// it would also make a live lock look dropped. The drops that cause it
/// are few and quick, so the read is tried again.
async fn read_system_tables<T, F, Fut>(mut read: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut tries = 1;
    loop {
        match read().await {
            Err(StoreError::Server {
                code: Some(60 | 218),
                ..
            }) if tries < LIST_TRIES => {
                tries += 1;
                tokio::time::sleep(LIST_PAUSE).await;
            }
            answer => return answer,
        }
    }
}

/// Time since the lock's newest heartbeat, or since its creation before the
/// first, by the server's clock; `None` when the table is gone.
async fn lock_age(
    client: &Client,
    database: &str,
    table: &str,
) -> Result<Option<Duration>, StoreError> {
    let beats: u64 = client
        .query("SELECT count() FROM ?.?")
        .bind(Identifier(database))
        .bind(Identifier(table))
        .fetch_one()
        .await
        .map_err(|e| StoreError::from_clickhouse("read migration lock", e))?;
    // (seconds, tables): the table's own row when it has heartbeats, else
    // its entry in `system.tables`, which a table dropped since the count
    // no longer has: over no row, `max` is 0, the epoch, and such a lock
    // looked decades stale (seen in the bench as a "stopped" migrator).
    let (seconds, tables): (i64, u64) = if beats > 0 {
        client
            .query("SELECT toInt64(now()) - toInt64(max(at)), toUInt64(1) FROM ?.?")
            .bind(Identifier(database))
            .bind(Identifier(table))
            .fetch_one()
            .await
            .map_err(|e| StoreError::from_clickhouse("read migration lock", e))?
    } else {
        read_system_tables(|| async {
            client
                .query(
                    "SELECT toInt64(now()) - toInt64(max(metadata_modification_time)), count() \
                     FROM system.tables WHERE database = ? AND name = ?",
                )
                .bind(database)
                .bind(table)
                .fetch_one()
                .await
                .map_err(|e| StoreError::from_clickhouse("read migration lock", e))
        })
        .await?
    };
    Ok((tables > 0).then(|| Duration::from_secs(u64::try_from(seconds).unwrap_or(0))))
}

/// Creates the lock table under its unique name, with a first heartbeat.
async fn create_lock(
    client: &Client,
    database: &str,
    table: &str,
    holder: &str,
) -> Result<(), StoreError> {
    client
        .query("CREATE TABLE ?.? (holder String, at DateTime) ENGINE = MergeTree() ORDER BY at")
        .bind(Identifier(database))
        .bind(Identifier(table))
        .execute()
        .await
        .map_err(|e| StoreError::from_clickhouse("create migration lock", e))?;
    heartbeat(client, database, table, holder).await
}

async fn heartbeat(
    client: &Client,
    database: &str,
    table: &str,
    holder: &str,
) -> Result<(), StoreError> {
    client
        .query("INSERT INTO ?.? (holder, at) VALUES (?, now())")
        .bind(Identifier(database))
        .bind(Identifier(table))
        .bind(holder)
        .execute()
        .await
        .map_err(|e| StoreError::from_clickhouse("heartbeat of the migration lock", e))
}

/// The holder's heartbeats until the lock is released or dropped.
async fn beat(client: Client, database: String, table: String, holder: String) {
    loop {
        tokio::time::sleep(HEARTBEAT).await;
        if let Err(error) = heartbeat(&client, &database, &table, &holder).await {
            tracing::warn!(%error, "migration lock heartbeat failed; retrying");
        }
    }
}

async fn drop_table(client: &Client, database: &str, table: &str) -> Result<(), StoreError> {
    client
        .query("DROP TABLE IF EXISTS ?.?")
        .bind(Identifier(database))
        .bind(Identifier(table))
        .execute()
        .await
        .map_err(|e| StoreError::from_clickhouse("drop migration lock", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_holder_beats_several_times_per_stale_window() {
        assert!(STALE >= HEARTBEAT * 4);
        assert!(WAIT < HEARTBEAT);
    }
}
