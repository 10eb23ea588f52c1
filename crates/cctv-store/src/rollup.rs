//! The rollups behind `offence_totals` and `camera_totals`: counts per
//! insert day ("slot", the day of `inserted_at` in the time zone of the
//! views' detection days), taken from the rows. Real offences are inserted
//! seconds after their detection, so nearly every key of a detection day
//! sits in one slot (with UTC slots a day of Almaty, UTC+5, was split over
//! two). The server computes every slot (`toDate(inserted_at, zone)`, and
//! the last closed one from its own clock), so the services never need a
//! time zone database of their own that could disagree with the server's.
//!
//! A slot is rolled up once it is closed (`margin` past its end, so the
//! inserts sealed in it have landed): one `INSERT ... SELECT` per rollup
//! counts its rows per key, then the slot is marked in `rolled_days`. The
//! views read the rollups for every slot up to the newest mark and the rows
//! themselves after it, so their answer is the rows' count as long as each
//! rolled slot's counts are its rows' counts.
//!
//! Taking a slot again is always safe: the rollups keep the largest count of
//! each key (rows are never taken away), and the views read that largest
//! count, so any number of rollers may run at once, again, from a replica
//! that lags, and a crash between a rollup and its mark only leaves a slot
//! that the next run takes again. A slot's count can grow after its mark
//! only by a batch that landed more than `margin` after it was sealed (a
//! writer stopped mid-insert for that long): the writer that lands such a
//! batch takes the slot again before it acks ([`Store::roll_slots`]), each
//! run takes the newest `retake_days` again, and `cctvctl audit` compares
//! every rolled slot with its rows (`--repair` takes the differing ones
//! again).
//!
//! On a cluster the rollups are one table replicated on every node, filled
//! from the `Distributed` `offence_events`, so every node answers the views
//! alone.

use std::time::Duration;

use chrono::{Datelike, Days, NaiveDate};
use clickhouse::sql::Identifier;
use serde::Deserialize;

use crate::{Store, StoreError};

/// Counts one rollup's keys of the slots `[from, to)` (bound: database,
/// zone, zone, database, from, zone, to, zone).
pub const ROLL_OFFENCES: &str =
    "INSERT INTO ?.offence_day_rollup (slot, day, region, offence_type, events) \
     SELECT toDate(inserted_at, ?) AS slot, toDate(detected_at, ?) AS day, region, offence_type, \
     count() AS events FROM ?.offence_events \
     WHERE inserted_at >= toDateTime(?, ?) AND inserted_at < toDateTime(?, ?) \
     GROUP BY slot, day, region, offence_type";

/// The same for `camera_day_rollup`.
pub const ROLL_CAMERAS: &str =
    "INSERT INTO ?.camera_day_rollup (slot, day, camera_id, region, events) \
     SELECT toDate(inserted_at, ?) AS slot, toDate(detected_at, ?) AS day, camera_id, region, \
     count() AS events FROM ?.offence_events \
     WHERE inserted_at >= toDateTime(?, ?) AND inserted_at < toDateTime(?, ?) \
     GROUP BY slot, day, camera_id, region";

/// Marks the slots `[from, from + n)` rolled up, with the number of rows
/// each held (bound: database, from, n, database, from, last).
pub const MARK_SLOTS: &str = "INSERT INTO ?.rolled_days (slot, events, rolled_at) \
     SELECT slot, toUInt64(sum(events)), now() FROM ( \
         SELECT toDate(?) + number AS slot, toUInt64(0) AS events FROM system.numbers LIMIT ? \
         UNION ALL \
         SELECT slot, max(events) AS events FROM ?.offence_day_rollup \
         WHERE slot >= toDate(?) AND slot <= toDate(?) \
         GROUP BY slot, day, region, offence_type \
     ) GROUP BY slot";

/// Merges one month (`PARTITION` = YYYYMM) of a rollup down to one row per
/// key (bound: database, month). `FINAL` reads merge the parts of the key
/// range as they read: a year of camera days read from one part per month
/// took 0.48 s against 0.77 s from the 63 parts weekly rolls leave
/// (3.65 M rows on 18.16), and background merges leave most of them.
pub const COMPACT_OFFENCES: &str = "OPTIMIZE TABLE ?.offence_day_rollup PARTITION ? FINAL";

/// The same for `camera_day_rollup`.
pub const COMPACT_CAMERAS: &str = "OPTIMIZE TABLE ?.camera_day_rollup PARTITION ? FINAL";

/// The newest rolled slot (`0000-00-00` when none).
pub const ROLLED_THROUGH: &str = "SELECT toString(max(slot)) FROM ?.rolled_days";

/// The first slot holding rows (`0000-00-00` when none; bound: zone,
/// database).
pub const FIRST_SLOT: &str = "SELECT toString(toDate(min(inserted_at), ?)) FROM ?.offence_events";

/// The newest slot that ended at least `margin` seconds ago by the server's
/// clock (bound: margin seconds, zone).
pub const LAST_CLOSED_SLOT: &str = "SELECT toString(toDate(now() - ?, ?) - 1)";

/// The slot of a time in UTC seconds (bound: seconds, zone).
pub const SLOT_AT: &str = "SELECT toString(toDate(toDateTime(?), ?))";

/// Slots compared with their rows per query of the audit.
const AUDIT_CHUNK_DAYS: u64 = 7;

/// Per rolled slot of `[first, last]`: the rows' count, the rollup's and
/// how many keys differ, for the rollup `$table` keyed by `$keys` after slot
/// and day (bound: zone, zone, database, first, zone, last + 1 day, zone,
/// database, first, last).
macro_rules! rollup_differences {
    ($table:literal, $keys:literal) => {
        concat!(
            "SELECT toString(slot) AS slot, \
             toUInt64(sum(key_rows)) AS slot_rows, toUInt64(sum(key_rolled)) AS slot_rolled, \
             toUInt64(sum(key_rows != key_rolled)) AS keys_differing FROM ( \
                 SELECT slot, day, ",
            $keys,
            ", sum(from_rows) AS key_rows, sum(rolled) AS key_rolled FROM ( \
                     SELECT toDate(inserted_at, ?) AS slot, toDate(detected_at, ?) AS day, ",
            $keys,
            ", \
                         count() AS from_rows, toUInt64(0) AS rolled \
                     FROM ?.offence_events \
                     WHERE inserted_at >= toDateTime(?, ?) AND inserted_at < toDateTime(?, ?) \
                     GROUP BY slot, day, ",
            $keys,
            " \
                     UNION ALL \
                     SELECT slot, day, ",
            $keys,
            ", toUInt64(0) AS from_rows, max(events) AS rolled \
                     FROM ?.",
            $table,
            " WHERE slot >= toDate(?) AND slot <= toDate(?) \
                     GROUP BY slot, day, ",
            $keys,
            " \
                 ) GROUP BY slot, day, ",
            $keys,
            " \
             ) GROUP BY slot HAVING keys_differing > 0 ORDER BY slot"
        )
    };
}

/// [`rollup_differences!`] for `offence_day_rollup`.
pub const OFFENCE_ROLLUP_DIFFERENCES: &str =
    rollup_differences!("offence_day_rollup", "region, offence_type");

/// [`rollup_differences!`] for `camera_day_rollup`.
pub const CAMERA_ROLLUP_DIFFERENCES: &str =
    rollup_differences!("camera_day_rollup", "camera_id, region");

/// When and how the rollups are kept (`[rollup]` of the aggregator's
/// configuration).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RollupPolicy {
    /// Whether the aggregator keeps the rollups (the instance owning
    /// partition 0 does). Without a roller the views read every row: exact,
    /// only slower over long ranges.
    pub enabled: bool,
    /// How often the roller runs.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// A slot is rolled up this long after its end.
    #[serde(with = "humantime_serde")]
    pub margin: Duration,
    /// Rolled slots taken again on every run (the newest ones).
    pub retake_days: u32,
    /// Slots rolled up by one insert while catching up.
    pub chunk_days: u32,
}

impl Default for RollupPolicy {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: Duration::from_secs(600),
            margin: Duration::from_secs(3600),
            retake_days: 2,
            chunk_days: 7,
        }
    }
}

impl RollupPolicy {
    /// Cross-field checks.
    pub fn validate(&self) -> Result<(), String> {
        if self.interval < Duration::from_secs(1) {
            return Err("rollup.interval must be at least 1s".into());
        }
        if self.margin < Duration::from_secs(10) {
            return Err("rollup.margin must be at least 10s (inserts must have landed)".into());
        }
        if self.chunk_days == 0 || self.chunk_days > 366 {
            return Err("rollup.chunk_days must be 1..=366".into());
        }
        Ok(())
    }

    /// A batch sealed at `sealed_at` (UTC seconds) and written at `now`
    /// landed late enough that its slot may already be rolled up: the writer
    /// takes that slot ([`Store::slot_at`]) again. Half the margin, so that
    /// the writer's clock may be off the server's by as much.
    pub fn landed_late(&self, sealed_at: u32, now: u32) -> bool {
        u64::from(now.saturating_sub(sealed_at)) >= self.margin.as_secs() / 2
    }
}

/// The slots a run rolls up and takes again: pure, from what the server holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollPlan {
    /// Rolled slots taken again: `[first, last]`.
    pub retake: Option<(NaiveDate, NaiveDate)>,
    /// New slots to roll up and mark, in order, as `[first, last]` chunks.
    pub chunks: Vec<(NaiveDate, NaiveDate)>,
}

impl RollPlan {
    /// `rolled_through`: the newest mark; `first_slot`: the first slot with
    /// rows (`None`: no rows, or not looked up); `last_closed`: the newest
    /// slot whose end is at least the margin ago by the server's clock
    /// ([`LAST_CLOSED_SLOT`]).
    pub fn new(
        policy: &RollupPolicy,
        rolled_through: Option<NaiveDate>,
        first_slot: Option<NaiveDate>,
        last_closed: Option<NaiveDate>,
    ) -> Self {
        let retake = rolled_through.and_then(|through| {
            let first = through
                .checked_sub_days(Days::new(u64::from(policy.retake_days.max(1)) - 1))
                .unwrap_or(through);
            let first = first_slot.map_or(first, |slot| first.max(slot));
            (policy.retake_days > 0 && first <= through).then_some((first, through))
        });
        let start = match (rolled_through, first_slot) {
            (Some(through), _) => through.succ_opt(),
            (None, first) => first,
        };
        let mut chunks = Vec::new();
        if let (Some(mut from), Some(last)) = (start, last_closed) {
            while from <= last {
                let to = from
                    .checked_add_days(Days::new(u64::from(policy.chunk_days) - 1))
                    .map_or(last, |to| to.min(last));
                chunks.push((from, to));
                match to.succ_opt() {
                    Some(next) => from = next,
                    None => break,
                }
            }
        }
        Self { retake, chunks }
    }
}

impl RollPlan {
    /// The months (YYYYMM) whose last day is one of the new slots: rolled
    /// up completely by this run (slots are rolled in order), so their
    /// rollups can be merged to one part each.
    pub fn completed_months(&self) -> Vec<u32> {
        let mut months = Vec::new();
        for (first, last) in &self.chunks {
            let mut day = *first;
            while day <= *last {
                let Some(next) = day.succ_opt() else { break };
                if next.month() != day.month() {
                    months.push(month_of(day));
                }
                day = next;
            }
        }
        months
    }
}

/// YYYYMM of a day (the rollups' partition).
fn month_of(day: NaiveDate) -> u32 {
    u32::try_from(day.year()).unwrap_or(0) * 100 + day.month()
}

/// What one run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RollReport {
    /// Slots rolled up and marked by this run.
    pub rolled: u64,
    /// Months (YYYYMM) whose last slot this run rolled, merged to one part.
    pub compacted: Vec<u32>,
    /// Rolled slots taken again.
    pub retaken: u64,
    /// The newest rolled slot after the run.
    pub rolled_through: Option<NaiveDate>,
}

/// A rolled slot whose rollup differs from its rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotDifference {
    /// `offence_day_rollup` or `camera_day_rollup`.
    pub rollup: &'static str,
    /// The slot (insert day in the views' time zone).
    pub slot: NaiveDate,
    /// Rows of the slot.
    pub rows: u64,
    /// What the rollup counts for it.
    pub rolled: u64,
    /// Keys whose counts differ.
    pub keys_differing: u64,
}

#[derive(Debug, clickhouse::Row, Deserialize)]
struct DifferenceRow {
    slot: String,
    rows: u64,
    rolled: u64,
    keys_differing: u64,
}

fn day_text(day: NaiveDate) -> String {
    day.format("%Y-%m-%d").to_string()
}

fn midnight_text(day: NaiveDate) -> String {
    day.format("%Y-%m-%d 00:00:00").to_string()
}

/// `0000-00-00` (an empty `max`) and unreadable text are no day.
fn parse_day(text: &str) -> Option<NaiveDate> {
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .filter(|day| *day > NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or(NaiveDate::MIN))
}

impl Store {
    /// Waits until this server holds every part of the rollups any node has
    /// written (`SYSTEM SYNC REPLICA`; no-op on a single server). The rollups
    /// and their marks replicate as separate tables, so a node that has just
    /// returned may hold a slot's mark before its counts: sync before a
    /// reading that must be final (the audit does).
    pub async fn sync_rollups(&self) -> Result<(), StoreError> {
        for table in ["offence_day_rollup", "camera_day_rollup", "rolled_days"] {
            self.sync_table(table).await?;
        }
        Ok(())
    }

    /// The newest slot marked rolled up (`None`: none yet).
    pub async fn rolled_through(&self) -> Result<Option<NaiveDate>, StoreError> {
        let text = self
            .client()
            .query(ROLLED_THROUGH)
            .bind(Identifier(&self.config().database))
            .fetch_one::<String>()
            .await
            .map_err(|e| StoreError::from_clickhouse("read the newest rolled slot", e))?;
        Ok(parse_day(&text))
    }

    /// The first slot holding rows (`None`: no rows).
    pub async fn first_slot(&self) -> Result<Option<NaiveDate>, StoreError> {
        let text = self
            .client()
            .query(FIRST_SLOT)
            .bind(self.config().timezone.as_str())
            .bind(Identifier(&self.config().database))
            .fetch_one::<String>()
            .await
            .map_err(|e| StoreError::from_clickhouse("read the first slot", e))?;
        Ok(parse_day(&text))
    }

    /// The slot of a time (UTC seconds: a batch's `inserted_at`), as the
    /// server computes it for the rows.
    pub async fn slot_at(&self, seconds: u32) -> Result<NaiveDate, StoreError> {
        let text = self
            .client()
            .query(SLOT_AT)
            .bind(seconds)
            .bind(self.config().timezone.as_str())
            .fetch_one::<String>()
            .await
            .map_err(|e| StoreError::from_clickhouse("read the slot of a time", e))?;
        parse_day(&text).ok_or_else(|| StoreError::Server {
            operation: "read the slot of a time",
            message: format!("unreadable slot {text:?}"),
            code: None,
        })
    }

    /// Counts the slots `first..=last` into both rollups again (not marking
    /// them). Safe at any time: each key keeps its largest count.
    pub async fn roll_slots(&self, first: NaiveDate, last: NaiveDate) -> Result<(), StoreError> {
        let Some(end) = last.succ_opt() else {
            return Ok(());
        };
        let database = Identifier(&self.config().database);
        let zone = self.config().timezone.as_str();
        for (sql, operation) in [
            (ROLL_OFFENCES, "roll up offence counts"),
            (ROLL_CAMERAS, "roll up camera counts"),
        ] {
            self.client()
                .query(sql)
                .bind(database)
                .bind(zone)
                .bind(zone)
                .bind(database)
                .bind(midnight_text(first))
                .bind(zone)
                .bind(midnight_text(end))
                .bind(zone)
                .execute()
                .await
                .map_err(|e| StoreError::from_clickhouse(operation, e))?;
        }
        Ok(())
    }

    /// Merges `month` (YYYYMM) of both rollups to one part each
    /// ([`COMPACT_OFFENCES`]). Only the reads get faster: a month merged
    /// while a retake inserts into it just keeps that part besides.
    pub async fn compact_month(&self, month: u32) -> Result<(), StoreError> {
        let database = Identifier(&self.config().database);
        for (sql, operation) in [
            (COMPACT_OFFENCES, "merge a month of offence counts"),
            (COMPACT_CAMERAS, "merge a month of camera counts"),
        ] {
            self.client()
                .query(sql)
                .bind(database)
                .bind(month)
                .execute()
                .await
                .map_err(|e| StoreError::from_clickhouse(operation, e))?;
        }
        Ok(())
    }

    /// [`Store::compact_month`] on this server, or on a cluster on the first
    /// node that takes it (18.16 merges a replicated table only on the
    /// replica that leads it; the merge then replicates). Only reads get
    /// faster, so a month no node merges is logged, not an error: background
    /// merges still reduce its parts.
    async fn compact_month_anywhere(&self, month: u32) -> bool {
        let nodes = match self.shard_nodes() {
            Ok(nodes) => nodes,
            Err(error) => {
                tracing::warn!(%error, month, "cannot list the nodes to merge a rolled-up month");
                return false;
            }
        };
        let mut last_error = None;
        for node in nodes.iter().flatten() {
            match node.compact_month(month).await {
                Ok(()) => return true,
                Err(error) => last_error = Some(error),
            }
        }
        if let Some(error) = last_error {
            tracing::warn!(%error, month, "no node merged the rolled-up month; reads of it stay slower until background merges do");
        }
        false
    }

    /// Marks the slots `first..=last` rolled up.
    async fn mark_slots(&self, first: NaiveDate, last: NaiveDate) -> Result<(), StoreError> {
        let database = Identifier(&self.config().database);
        let count = u64::try_from((last - first).num_days() + 1).unwrap_or(0);
        self.client()
            .query(MARK_SLOTS)
            .bind(database)
            .bind(day_text(first))
            .bind(count)
            .bind(database)
            .bind(day_text(first))
            .bind(day_text(last))
            .execute()
            .await
            .map_err(|e| StoreError::from_clickhouse("mark rolled slots", e))
    }

    /// One roller run: takes the newest rolled slots again, then rolls up
    /// and marks every closed slot not yet rolled, oldest first, a chunk at
    /// a time; `progress(done, total)` after each chunk.
    pub async fn roll_up(
        &self,
        policy: &RollupPolicy,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<RollReport, StoreError> {
        let rolled_through = self.rolled_through().await?;
        let last_closed = self
            .client()
            .query(LAST_CLOSED_SLOT)
            .bind(policy.margin.as_secs())
            .bind(self.config().timezone.as_str())
            .fetch_one::<String>()
            .await
            .map_err(|e| StoreError::from_clickhouse("read the last closed slot", e))?;
        // Only the first run looks for the first row (a scan of every row).
        let first_slot = if rolled_through.is_none() {
            self.first_slot().await?
        } else {
            None
        };
        let plan = RollPlan::new(policy, rolled_through, first_slot, parse_day(&last_closed));
        let mut report = RollReport {
            rolled_through,
            ..RollReport::default()
        };
        if let Some((first, last)) = plan.retake {
            self.roll_slots(first, last).await?;
            report.retaken = days_between(first, last);
        }
        let total: u64 = plan
            .chunks
            .iter()
            .map(|(first, last)| days_between(*first, *last))
            .sum();
        for (first, last) in &plan.chunks {
            self.roll_slots(*first, *last).await?;
            self.mark_slots(*first, *last).await?;
            report.rolled += days_between(*first, *last);
            report.rolled_through = Some(*last);
            progress(report.rolled, total);
        }
        for month in plan.completed_months() {
            if self.compact_month_anywhere(month).await {
                report.compacted.push(month);
            }
        }
        Ok(report)
    }

    /// Every rolled slot whose rollups differ from its rows, with both
    /// counts. Reads every row up to the newest mark, [`AUDIT_CHUNK_DAYS`]
    /// slots per query (the keys of a query are held in memory: a year of
    /// camera days at once ran out of it).
    pub async fn rollup_differences(&self) -> Result<Vec<SlotDifference>, StoreError> {
        let Some(through) = self.rolled_through().await? else {
            return Ok(Vec::new());
        };
        let Some(mut from) = self.first_slot().await? else {
            return Ok(Vec::new());
        };
        let mut differences = Vec::new();
        while from <= through {
            let last = (from + Days::new(AUDIT_CHUNK_DAYS - 1)).min(through);
            self.slot_differences(from, last, &mut differences).await?;
            let Some(next) = last.succ_opt() else { break };
            from = next;
        }
        differences.sort_by_key(|difference| (difference.slot, difference.rollup));
        Ok(differences)
    }

    /// [`Store::rollup_differences`] of the slots `[first, last]`, appended
    /// to `differences`.
    async fn slot_differences(
        &self,
        first: NaiveDate,
        last: NaiveDate,
        differences: &mut Vec<SlotDifference>,
    ) -> Result<(), StoreError> {
        let Some(end) = last.succ_opt() else {
            return Ok(());
        };
        let database = Identifier(&self.config().database);
        let zone = self.config().timezone.as_str();
        for (rollup, sql) in [
            ("offence_day_rollup", OFFENCE_ROLLUP_DIFFERENCES),
            ("camera_day_rollup", CAMERA_ROLLUP_DIFFERENCES),
        ] {
            let rows = self
                .client()
                .query(sql)
                .bind(zone)
                .bind(zone)
                .bind(database)
                .bind(midnight_text(first))
                .bind(zone)
                .bind(midnight_text(end))
                .bind(zone)
                .bind(database)
                .bind(day_text(first))
                .bind(day_text(last))
                .fetch_all::<DifferenceRow>()
                .await
                .map_err(|e| StoreError::from_clickhouse("compare rollups with rows", e))?;
            for row in rows {
                let slot = parse_day(&row.slot).ok_or_else(|| StoreError::Server {
                    operation: "compare rollups with rows",
                    message: format!("unreadable slot {:?}", row.slot),
                    code: None,
                })?;
                differences.push(SlotDifference {
                    rollup,
                    slot,
                    rows: row.rows,
                    rolled: row.rolled,
                    keys_differing: row.keys_differing,
                });
            }
        }
        Ok(())
    }
}

/// Days in `first..=last`.
fn days_between(first: NaiveDate, last: NaiveDate) -> u64 {
    u64::try_from((last - first).num_days() + 1).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(text: &str) -> NaiveDate {
        NaiveDate::parse_from_str(text, "%Y-%m-%d").unwrap()
    }

    fn at(text: &str) -> u32 {
        let time = chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S").unwrap();
        u32::try_from(time.and_utc().timestamp()).unwrap()
    }

    /// The last closed slot as the server answers it at `now` (a day's time,
    /// UTC, standing for the zone's): the day before that of `now - margin`.
    fn closed_at(policy: &RollupPolicy, now: &str) -> Option<NaiveDate> {
        let seconds = i64::from(at(now)) - i64::try_from(policy.margin.as_secs()).unwrap();
        chrono::DateTime::from_timestamp(seconds, 0)
            .unwrap()
            .date_naive()
            .pred_opt()
    }

    #[test]
    fn a_slot_is_rolled_only_once_the_margin_past_its_end_is_over() {
        let policy = RollupPolicy::default();
        // 00:59 on the 10th: the 9th closes at 01:00.
        let plan = RollPlan::new(
            &policy,
            None,
            Some(day("2026-12-01")),
            closed_at(&policy, "2026-12-10 00:59:00"),
        );
        assert_eq!(plan.retake, None);
        assert_eq!(
            plan.chunks,
            vec![
                (day("2026-12-01"), day("2026-12-07")),
                (day("2026-12-08"), day("2026-12-08"))
            ]
        );
        let plan = RollPlan::new(
            &policy,
            None,
            Some(day("2026-12-01")),
            closed_at(&policy, "2026-12-10 01:00:00"),
        );
        assert_eq!(
            plan.chunks.last(),
            Some(&(day("2026-12-08"), day("2026-12-09")))
        );
    }

    #[test]
    fn a_run_takes_the_newest_rolled_slots_again_and_goes_on_after_them() {
        let policy = RollupPolicy::default();
        let plan = RollPlan::new(
            &policy,
            Some(day("2026-12-05")),
            Some(day("2026-11-01")),
            closed_at(&policy, "2026-12-08 12:00:00"),
        );
        assert_eq!(plan.retake, Some((day("2026-12-04"), day("2026-12-05"))));
        assert_eq!(plan.chunks, vec![(day("2026-12-06"), day("2026-12-07"))]);
        // Nothing closed since the last run: only the retake.
        let plan = RollPlan::new(
            &policy,
            Some(day("2026-12-07")),
            Some(day("2026-11-01")),
            closed_at(&policy, "2026-12-08 12:00:00"),
        );
        assert!(plan.chunks.is_empty());
        // The retake never starts before the first slot with rows.
        let plan = RollPlan::new(
            &policy,
            Some(day("2026-12-07")),
            Some(day("2026-12-07")),
            closed_at(&policy, "2026-12-08 12:00:00"),
        );
        assert_eq!(plan.retake, Some((day("2026-12-07"), day("2026-12-07"))));
    }

    #[test]
    fn a_month_is_complete_when_a_run_rolls_its_last_day() {
        let policy = RollupPolicy::default();
        // From Oct 25 to Dec 8: October and November end in the new slots.
        let plan = RollPlan::new(
            &policy,
            None,
            Some(day("2026-10-25")),
            closed_at(&policy, "2026-12-09 12:00:00"),
        );
        assert_eq!(plan.completed_months(), vec![202_610, 202_611]);
        // A run rolling Dec 1 to 7 completes no month; one ending on the
        // 31st completes December.
        let plan = RollPlan::new(
            &policy,
            Some(day("2026-11-30")),
            None,
            closed_at(&policy, "2026-12-08 12:00:00"),
        );
        assert!(plan.completed_months().is_empty(), "{plan:?}");
        let plan = RollPlan::new(
            &policy,
            Some(day("2026-12-30")),
            None,
            closed_at(&policy, "2027-01-01 12:00:00"),
        );
        assert_eq!(plan.completed_months(), vec![202_612]);
    }

    #[test]
    fn no_rows_roll_nothing() {
        let policy = RollupPolicy::default();
        let plan = RollPlan::new(
            &policy,
            None,
            None,
            closed_at(&policy, "2026-12-08 12:00:00"),
        );
        assert_eq!(
            plan,
            RollPlan {
                retake: None,
                chunks: Vec::new()
            }
        );
    }

    #[test]
    fn a_batch_is_late_from_half_the_margin_on() {
        let policy = RollupPolicy::default();
        let sealed = at("2026-12-04 23:59:00");
        assert!(!policy.landed_late(sealed, sealed + 1799));
        assert!(policy.landed_late(sealed, sealed + 1800));
        // A writer clock ahead of the server's is never late.
        assert!(!policy.landed_late(sealed, sealed - 10));
    }

    #[test]
    fn an_empty_max_is_no_day() {
        assert_eq!(parse_day("0000-00-00"), None);
        assert_eq!(parse_day("1970-01-01"), None);
        assert_eq!(parse_day("2026-12-05"), Some(day("2026-12-05")));
    }

    #[test]
    fn bad_policies_are_refused() {
        assert!(RollupPolicy::default().validate().is_ok());
        let policy = RollupPolicy {
            chunk_days: 0,
            ..RollupPolicy::default()
        };
        assert!(policy.validate().is_err());
        let policy = RollupPolicy {
            margin: Duration::from_secs(5),
            ..RollupPolicy::default()
        };
        assert!(policy.validate().is_err());
    }
}
