//! Current ClickHouse (chdb-core 26.x, PyPI) next to 18.16: the project's
//! own `Store` runs its migrations (single-server layout, through
//! `Store::migrate`, so `{db}` and `{tz}` are bound as `run_templated` binds
//! them), writes the analysts' data set with fenced RowBinary inserts (a
//! stale epoch's batch dropped by the fence), rolls up half of it with the
//! rollup statements, and then every cookbook query, every dashboard query
//! and the store's own queries (totals, the rollup statements with their
//! values bound, the audit's rollup differences) run on both servers. Each
//! result must equal the numbers computed from the rows, and the two servers
//! must answer the same. The queries of `cctvctl` and its report run on
//! this harness in `chdb_cli.rs`.
//!
//! chdb has no server: `tests/chdb/server.py` serves a chdb session over
//! ClickHouse's HTTP interface (what the `clickhouse` crate uses of it), in
//! the venv `scripts/install-chdb.sh` makes. Without that venv the test
//! fails, naming the script; it never skips.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};

use cctv_event::OffenceEvent;
use cctv_store::{
    rollup_sql, ClickHouseConfig, EncodedRows, IdRound, RollupPolicy, SlotDifference, Store,
    TotalsFilter, TotalsRow,
};
use chrono::{DateTime, NaiveDate};
use clickhouse::sql::Identifier;

use crate::analyst_data::{
    analyst_data, count_by, date_of, load_into_clickhouse, migrate_load_and_roll, rolled_through,
    AnalystData, StoredRow, SOURCE_STREAM, WEEK_FIRST_DAY, WEEK_LAST_DAY,
};
use crate::cookbook::run_cookbook;
use crate::grafana::run_dashboard;

/// The workspace root.
fn workspace() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The pinned chdb-core version (`scripts/versions.env`).
pub(crate) fn pinned_version() -> String {
    let versions = std::fs::read_to_string(workspace().join("scripts/versions.env"))
        .expect("read scripts/versions.env");
    versions
        .lines()
        .find_map(|line| line.strip_prefix("CHDB_CORE_VERSION="))
        .expect("CHDB_CORE_VERSION in scripts/versions.env")
        .trim()
        .to_string()
}

/// The venv's python: `CCTV_CHDB_PYTHON`, else where `scripts/install-chdb.sh`
/// puts it.
fn chdb_python() -> PathBuf {
    if let Some(python) = std::env::var_os("CCTV_CHDB_PYTHON").filter(|value| !value.is_empty()) {
        return PathBuf::from(python);
    }
    workspace().join(format!(
        ".local/tools/chdb-core-{}/bin/python",
        pinned_version()
    ))
}

/// `tests/chdb/server.py` running on a chdb session in a temp dir; killed
/// on drop.
pub(crate) struct ChdbServer {
    child: Child,
    /// Held open: the server exits when it closes.
    _stdin: ChildStdin,
    port: u16,
    /// The ClickHouse version chdb reports.
    pub(crate) version: String,
    _session: tempfile::TempDir,
}

impl ChdbServer {
    /// Starts the server; fails naming `scripts/install-chdb.sh` when chdb
    /// is not installed.
    pub(crate) fn start() -> Self {
        let python = chdb_python();
        assert!(
            python.is_file(),
            "chdb-core {} is not installed ({} is missing): run scripts/install-chdb.sh \
             (or name a python with chdb in CCTV_CHDB_PYTHON)",
            pinned_version(),
            python.display()
        );
        let session = tempfile::tempdir().expect("a temp dir");
        let mut child = Command::new(&python)
            .arg(workspace().join("tests/chdb/server.py"))
            .arg(session.path())
            .env("TZ", "UTC")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|error| panic!("start {}: {error}", python.display()));
        let stdin = child.stdin.take().expect("stdin");
        let mut ready = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut ready)
            .expect("read the server's first line");
        let ready: serde_json::Value = serde_json::from_str(&ready).unwrap_or_else(|error| {
            panic!("tests/chdb/server.py did not start (run scripts/install-chdb.sh?): {error}: {ready:?}")
        });
        assert_eq!(ready["timezone"], "UTC", "chdb's time zone, as 18.16's");
        Self {
            child,
            _stdin: stdin,
            port: u16::try_from(ready["port"].as_u64().expect("a port")).expect("a port"),
            version: ready["version"].as_str().expect("a version").to_string(),
            _session: session,
        }
    }

    /// A store on a fresh database of this session, without compression
    /// (the server does not speak it).
    pub(crate) fn store(&self) -> Store {
        Store::new(&ClickHouseConfig {
            url: format!("http://127.0.0.1:{}", self.port),
            database: cctv_testkit::unique_name("chdb"),
            compression: false,
            ..ClickHouseConfig::default()
        })
        .expect("settings")
    }
}

impl Drop for ChdbServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every cookbook and dashboard query on `store`, checked against the rows;
/// returns the results, parsed.
async fn analysts_queries(
    store: &Store,
    data: &AnalystData,
    server: &str,
) -> Vec<Vec<Vec<String>>> {
    let mut results = run_cookbook(store, &data.stored, server).await;
    results.extend(run_dashboard(store, &data.stored, server).await);
    results
}

/// `Store::totals` as the rows give it.
fn expected_totals<'a>(rows: impl Iterator<Item = &'a StoredRow>) -> Vec<TotalsRow> {
    count_by(rows, |r| (r.region, r.offence_type))
        .into_iter()
        .map(|((region, offence_type), events)| TotalsRow {
            region: region.into(),
            offence_type: offence_type.into(),
            events,
        })
        .collect()
}

/// Totals of every row.
async fn all_totals(store: &Store) -> Vec<TotalsRow> {
    store
        .totals(&TotalsFilter::default())
        .await
        .expect("totals")
}

/// Fails unless the totals of every row are those of `rows`; returns them
/// as text.
async fn totals_of_rows(store: &Store, rows: &[StoredRow], what: &str) -> String {
    let totals = all_totals(store).await;
    assert_eq!(totals, expected_totals(rows.iter()), "totals {what}");
    format!("{totals:?}")
}

/// UTC seconds of `text` (`%Y-%m-%d %H:%M:%S`, UTC).
fn utc(text: &str) -> i64 {
    chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S")
        .expect("a time")
        .and_utc()
        .timestamp()
}

/// The store's own queries on `store`, checked against the rows; returns
/// what they answered, for the comparison of the two servers.
async fn store_queries(store: &Store, data: &AnalystData, server: &str) -> Vec<String> {
    let mut answers = Vec::new();
    // The contract's totals, then with every filter: a week, two regions,
    // two types; and by gateway (read from the rows).
    let totals = all_totals(store).await;
    assert_eq!(
        totals,
        expected_totals(data.stored.iter()),
        "totals on {server}"
    );
    answers.push(format!("{totals:?}"));
    let (first, last) = (date_of(WEEK_FIRST_DAY), date_of(WEEK_LAST_DAY));
    let regions = ["KZ-75", "KZ-71"];
    let types = ["traffic.speeding", "public_order.littering"];
    let filter = TotalsFilter {
        from_day: Some(first),
        to_day: Some(last),
        regions: regions.map(String::from).to_vec(),
        offence_types: types.map(String::from).to_vec(),
        gateway_prefix: None,
    };
    let filtered = store.totals(&filter).await.expect("filtered totals");
    let chosen = |r: &&StoredRow| {
        r.day >= first
            && r.day <= last
            && regions.contains(&r.region)
            && types.contains(&r.offence_type)
    };
    assert_eq!(
        filtered,
        expected_totals(data.stored.iter().filter(chosen)),
        "filtered totals on {server}"
    );
    answers.push(format!("{filtered:?}"));
    let by_gateway = TotalsFilter {
        gateway_prefix: Some("gw1".into()),
        ..filter
    };
    let gateway_totals = store.totals(&by_gateway).await.expect("totals by gateway");
    assert_eq!(
        gateway_totals,
        expected_totals(
            data.stored
                .iter()
                .filter(chosen)
                .filter(|r| r.gateway_id.starts_with("gw1"))
        ),
        "totals of gateway gw1 on {server}"
    );
    answers.push(format!("{gateway_totals:?}"));

    // The audit's scan of the stored ids, whole and in rounds: the rounds
    // share the ids out (the round's arithmetic runs in SQL).
    let whole = stored_ids(store, IdRound::ALL).await;
    assert!(whole.len() > 100, "{} ids on {server}", whole.len());
    // 2^64 mod 7 and mod 176 are not 0: the ids' high halves count.
    for of in [3u16, 7, 16, 176] {
        let mut united = Vec::new();
        for index in 0..of {
            let round = IdRound { of, index };
            let ids = stored_ids(store, round).await;
            assert!(
                ids.iter().all(|(id, _, _)| round.contains(id)),
                "round {index} of {of} on {server} holds another round's ids"
            );
            united.extend(ids);
        }
        united.sort_unstable();
        assert_eq!(united, whole, "{of} rounds on {server}");
    }
    answers.push(format!(
        "{} ids, {} rows",
        whole.len(),
        whole.iter().map(|(_, _, copies)| copies).sum::<u64>()
    ));

    // The first slot holding rows, as the first roller run reads it.
    let first_slot = store
        .client()
        .query(rollup_sql::FIRST_SLOT)
        .bind(store.config().timezone.as_str())
        .bind(Identifier(&store.config().database))
        .fetch_one::<String>()
        .await
        .expect("the first slot");
    let first_inserted = data
        .stored
        .iter()
        .map(|r| r.inserted_at)
        .min()
        .expect("rows");
    assert_eq!(
        first_slot,
        slot_of(first_inserted).format("%Y-%m-%d").to_string(),
        "FIRST_SLOT on {server}"
    );
    answers.push(first_slot);

    // A batch landing late in a rolled slot: the rollup misses it (the
    // views too) until the slot is taken again, and the audit's comparison
    // names the slot with both counts.
    let late_at = utc("2026-11-03 12:00:00");
    let late_slot = slot_of(late_at);
    assert!(late_slot <= rolled_through());
    let mut late_event = OffenceEvent::example();
    late_event.event_id = uuid::Uuid::from_u128(0x1a7e_0000_0000_0000_0000_0000_0000_0001);
    late_event.detected_at = DateTime::from_timestamp(late_at - 7_200, 0).expect("a time");
    let mut late = EncodedRows::new();
    late.push(&late_event.view(), SOURCE_STREAM, "p1", 50_000);
    late.seal(u32::try_from(late_at).expect("2026"), 6);
    store
        .insert_fenced(&[("p1", &late)])
        .await
        .expect("the late insert");
    let slot_rows = data
        .stored
        .iter()
        .filter(|r| slot_of(r.inserted_at) == late_slot)
        .count() as u64;
    let difference = |rollup| SlotDifference {
        rollup,
        slot: late_slot,
        rows: slot_rows + 1,
        rolled: slot_rows,
        keys_differing: 1,
    };
    let differences = store.rollup_differences().await.expect("differences");
    assert_eq!(
        differences,
        vec![
            difference("camera_day_rollup"),
            difference("offence_day_rollup")
        ],
        "the late row's slot differs in both rollups on {server}"
    );
    answers.push(format!("{differences:?}"));
    assert_eq!(
        all_totals(store).await,
        totals,
        "a rolled slot counts from its rollup on {server}"
    );
    store
        .roll_slots(late_slot, late_slot)
        .await
        .expect("take the slot again");
    assert_eq!(
        store.rollup_differences().await.expect("differences"),
        Vec::new(),
        "the slot taken again matches its rows on {server}"
    );
    let mut with_late = data.stored.clone();
    with_late.push(StoredRow {
        detected_at: late_event.detected_at.timestamp(),
        inserted_at: late_at,
        day: crate::analyst_data::almaty_date(late_event.detected_at.timestamp()),
        region: "KZ-71",
        offence_type: "traffic.speeding",
        offence_family: "traffic",
        camera_id: late_event.camera_id.clone(),
        gateway_id: late_event.gateway_id.clone(),
        district: late_event.district.clone(),
        lat: None,
        lon: None,
        plate: "",
        stream_seq: 50_000,
    });
    answers
        .push(totals_of_rows(store, &with_late, &format!("with the late row on {server}")).await);

    // A roller run: every closed slot after the newest mark (all of them:
    // the data is weeks old), on the server's clock.
    let report = store
        .roll_up(&RollupPolicy::default(), |_, _| {})
        .await
        .expect("roll up");
    let newest = slot_of(with_late.iter().map(|r| r.inserted_at).max().expect("rows"));
    assert!(
        report
            .rolled_through
            .is_some_and(|through| through >= newest),
        "the run rolls every slot with rows on {server}: {report:?}"
    );
    assert_eq!(
        store.rollup_differences().await.expect("differences"),
        Vec::new()
    );
    answers.push(
        totals_of_rows(
            store,
            &with_late,
            &format!("from the rollups alone on {server}"),
        )
        .await,
    );
    answers
}

/// The ids of `SOURCE_STREAM` in `round`, with lowest sequence and copies, sorted.
async fn stored_ids(store: &Store, round: IdRound) -> Vec<([u8; 16], u64, u64)> {
    let mut ids = Vec::new();
    store
        .for_each_stored_id(SOURCE_STREAM, round, |id, sequence, copies| {
            ids.push((id, sequence, copies));
        })
        .await
        .expect("the stored ids");
    ids.sort_unstable();
    ids
}

/// The slot (insert day in Asia/Almaty, the store's zone) of UTC seconds.
fn slot_of(utc: i64) -> NaiveDate {
    crate::analyst_data::almaty_date(utc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schema_rows_and_every_query_give_the_same_numbers_on_current_clickhouse_and_18_16() {
    let data = analyst_data();
    let chdb = ChdbServer::start();
    assert!(
        chdb.version.starts_with(&format!(
            "{}.",
            pinned_version().split('.').next().unwrap_or_default()
        )),
        "chdb runs ClickHouse {}, pinned {}",
        chdb.version,
        pinned_version()
    );
    let current = chdb.store();
    migrate_load_and_roll(&current, &data).await;
    current.check_schema().await.expect("the schema is current");
    let old = load_into_clickhouse("chdb-18-16", &data).await;

    let current_label = format!("ClickHouse {} (chdb)", chdb.version);
    let on_current = analysts_queries(&current, &data, &current_label).await;
    let on_old = analysts_queries(&old, &data, "ClickHouse 18.16").await;
    assert_eq!(
        on_current, on_old,
        "the analysts' queries answer alike on both"
    );
    let on_current = store_queries(&current, &data, &current_label).await;
    let on_old = store_queries(&old, &data, "ClickHouse 18.16").await;
    assert_eq!(
        on_current, on_old,
        "the store's queries answer alike on both"
    );
}
