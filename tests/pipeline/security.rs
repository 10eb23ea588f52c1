//! Least privilege, proved against the shipped configs: a nats-server running
//! `deploy/nats/auth.conf` (passwords from its environment, as deployed) and a
//! clickhouse-server running `deploy/clickhouse/users.xml.in`.
//!
//! A refused NATS publish or subscription is silent for the client except for
//! the server's `-ERR 'Permissions Violation ...'`, which async-nats reports as
//! a server-error event. Each refusal is asserted twice: the event names the
//! refused subject, and the stream the message would have reached did not
//! change (checked after the event, which the server sends while handling the
//! publish, so nothing is in flight any more).

use std::io::Write;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::HeaderMap;
use cctv_aggregator::{AggregatorConfig, AggregatorStats};
use cctv_bus::{headers, NatsConfig, StreamsConfig};
use cctv_ingest::{IngestConfig, IngestStats};
use cctv_store::{ClickHouseConfig, Store, TotalsFilter};
use cctv_testkit::{ClickHouseServer, NatsServer};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::harness::{canonical, recent_time, registry_csv, Service, DRAIN_TIMEOUT};

/// The shipped NATS users and permissions (also run by `tls.rs`).
pub(crate) const NATS_AUTH_CONFIG: &str = include_str!("../../deploy/nats/auth.conf");

/// The shipped ClickHouse users (no placeholders in this template).
const CLICKHOUSE_USERS: &str = include_str!("../../deploy/clickhouse/users.xml.in");

/// Users of `auth.conf` and the variable holding each one's password.
pub(crate) const NATS_USERS: [(&str, &str); 6] = [
    ("cctv_ingest", "CCTV_NATS_INGEST_PASSWORD"),
    ("cctv_aggregator", "CCTV_NATS_AGGREGATOR_PASSWORD"),
    ("cctv_operator", "CCTV_NATS_OPERATOR_PASSWORD"),
    ("cctv_analyst", "CCTV_NATS_ANALYST_PASSWORD"),
    ("gw1", "CCTV_NATS_GW1_PASSWORD"),
    ("gw2", "CCTV_NATS_GW2_PASSWORD"),
];

/// How long a test waits for the server's permissions-violation error.
const VIOLATION_TIMEOUT: Duration = Duration::from_secs(10);

/// JetStream request timeout for requests the server is expected to refuse.
const REFUSED_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// A nats-server with the shipped permissions and random passwords.
struct SecureNats {
    server: NatsServer,
    passwords: Vec<(&'static str, String)>,
}

impl SecureNats {
    fn start() -> SecureNats {
        let passwords: Vec<(&'static str, String)> = NATS_USERS
            .iter()
            // nats-server parses a variable's value as config syntax: a value
            // starting with a digit is read as a number and breaks the config.
            .map(|(user, _)| (*user, format!("p{}", uuid::Uuid::new_v4().simple())))
            .collect();
        let env: Vec<(&str, &str)> = NATS_USERS
            .iter()
            .zip(&passwords)
            .map(|((_, variable), (_, password))| (*variable, password.as_str()))
            .collect();
        let server = NatsServer::start_with_config_and_env(NATS_AUTH_CONFIG, &env)
            .expect("nats-server must start with deploy/nats/auth.conf");
        SecureNats { server, passwords }
    }

    fn password(&self, user: &str) -> String {
        self.passwords
            .iter()
            .find(|(name, _)| *name == user)
            .map(|(_, password)| password.clone())
            .expect("a user of auth.conf")
    }

    /// The settings a service or `cctvctl` running as `user` would load.
    fn config_for(&self, user: &str) -> NatsConfig {
        let mut config = NatsConfig {
            url: self.server.url(),
            ..NatsConfig::default()
        };
        let password = self.password(user);
        config.apply_env(|name| match name {
            "CCTV_NATS_USER" => Some(user.to_string()),
            "CCTV_NATS_PASSWORD" => Some(password.clone()),
            _ => None,
        });
        config
    }

    /// Connects as `user` the way a third-party client would (own inbox
    /// prefix), reporting every server error on the returned channel.
    async fn connect_as(
        &self,
        user: &str,
    ) -> (async_nats::Client, mpsc::UnboundedReceiver<String>) {
        let (errors_tx, errors_rx) = mpsc::unbounded_channel();
        let client = async_nats::ConnectOptions::with_user_and_password(
            user.to_string(),
            self.password(user),
        )
        .custom_inbox_prefix(format!("_INBOX_{user}"))
        .event_callback(move |event| {
            let errors_tx = errors_tx.clone();
            async move {
                if let async_nats::Event::ServerError(error) = event {
                    let _ = errors_tx.send(error.to_string());
                }
            }
        })
        .connect(self.server.url())
        .await
        .unwrap_or_else(|error| panic!("connect as {user}: {error}"));
        (client, errors_rx)
    }

    /// Everything the server logged (it logs every permissions violation).
    fn server_log(&self) -> String {
        ["stdout.log", "stderr.log"]
            .iter()
            .filter_map(|name| std::fs::read_to_string(self.server.temp_dir().join(name)).ok())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Messages in `stream`, read as the operator.
    async fn stream_messages(&self, stream: &str) -> u64 {
        let client = cctv_bus::connect(&self.config_for("cctv_operator"), "test-operator")
            .await
            .expect("operator connects");
        let js = jetstream::new(client);
        let mut stream = js
            .get_stream(stream)
            .await
            .expect("operator reads stream info");
        stream.info().await.expect("stream info").state.messages
    }

    /// Creates the three streams as the operator (what `cctvctl setup` does).
    async fn create_streams(&self) {
        let client = cctv_bus::connect(&self.config_for("cctv_operator"), "test-setup")
            .await
            .expect("operator connects");
        cctv_bus::ensure_streams(&jetstream::new(client), &StreamsConfig::default())
            .await
            .expect("the operator creates the streams");
    }
}

/// Waits for a permissions violation naming `subject`, skipping other errors.
async fn expect_violation(errors: &mut mpsc::UnboundedReceiver<String>, subject: &str) {
    let deadline = tokio::time::Instant::now() + VIOLATION_TIMEOUT;
    loop {
        let error = tokio::time::timeout_at(deadline, errors.recv())
            .await
            .unwrap_or_else(|_| {
                panic!("no permissions violation for {subject} within {VIOLATION_TIMEOUT:?}")
            })
            .expect("error channel open");
        if error.to_lowercase().contains("permissions violation") && error.contains(subject) {
            return;
        }
    }
}

/// A JetStream context whose requests give up quickly (for refused requests).
fn impatient_jetstream(client: async_nats::Client) -> jetstream::Context {
    jetstream::ContextBuilder::new()
        .timeout(REFUSED_REQUEST_TIMEOUT)
        .build(client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_publishes_only_to_its_own_raw_subjects() {
    let nats = SecureNats::start();
    nats.create_streams().await;
    let (client, mut errors) = nats.connect_as("gw1").await;
    let js = impatient_jetstream(client.clone());
    let payload = canonical("CAM-75-1", "traffic.speeding", &recent_time(0), "");

    // Its own subject, any format, with a JetStream ack on its own inbox.
    js.publish("cctv.raw.canonical.gw1", payload.clone().into())
        .await
        .expect("publish")
        .await
        .expect("gw1 gets an ack for its own subject");
    client
        .publish("cctv.raw.hikvision.gw1", payload.clone().into())
        .await
        .expect("core publish");
    client.flush().await.expect("flush");

    // Another gateway's subject, the events and the dead letters: refused.
    for subject in [
        "cctv.raw.canonical.gw2",
        "cctv.events.s0.KZ-75.traffic.speeding",
        "cctv.dlq.canonical.malformed",
    ] {
        client
            .publish(subject, payload.clone().into())
            .await
            .expect("core publish is sent");
        client.flush().await.expect("flush");
        expect_violation(&mut errors, subject).await;
    }
    let refused_ack = js
        .publish("cctv.raw.canonical.gw2", payload.clone().into())
        .await
        .expect("publish is sent")
        .await;
    assert!(refused_ack.is_err(), "a JetStream publish as gw2 was acked");
    expect_violation(&mut errors, "cctv.raw.canonical.gw2").await;

    // No JetStream API, no reading raw messages, no snooping on inboxes.
    assert!(
        js.get_stream("CCTV_RAW").await.is_err(),
        "gw1 read stream info"
    );
    expect_violation(&mut errors, "$JS.API.STREAM.INFO.CCTV_RAW").await;
    for subject in ["cctv.raw.>", "_INBOX.>", "_INBOX_cctv_ingest.>"] {
        let _subscriber = client.subscribe(subject).await.expect("subscribe is sent");
        client.flush().await.expect("flush");
        expect_violation(&mut errors, subject).await;
    }

    assert!(
        nats.server_log().contains("Publish Violation"),
        "the server did not log the refusals"
    );
    assert_eq!(nats.stream_messages("CCTV_RAW").await, 2);
    assert_eq!(nats.stream_messages("CCTV_EVENTS").await, 0);
    assert_eq!(nats.stream_messages("CCTV_DLQ").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_analyst_sees_stream_state_but_reads_no_message() {
    let nats = SecureNats::start();
    nats.create_streams().await;
    let (gateway, _gateway_errors) = nats.connect_as("gw2").await;
    jetstream::new(gateway)
        .publish(
            "cctv.raw.canonical.gw2",
            canonical(
                "CAM-75-1",
                "traffic.speeding",
                &recent_time(0),
                r#","plate":"404ZXC16""#,
            )
            .into(),
        )
        .await
        .expect("publish")
        .await
        .expect("ack");

    let (client, mut errors) = nats.connect_as("cctv_analyst").await;
    let js = impatient_jetstream(client.clone());

    // Stream state is visible: that is what the role is for.
    let mut raw = js
        .get_stream("CCTV_RAW")
        .await
        .expect("analyst reads stream info");
    assert_eq!(raw.info().await.expect("stream info").state.messages, 1);

    // Messages are not: by sequence, by direct get, through a consumer, by
    // subscribing to the subjects or to the ingest's delivery inbox.
    assert!(
        raw.get_raw_message(1).await.is_err(),
        "analyst read a raw message"
    );
    expect_violation(&mut errors, "$JS.API.STREAM.MSG.GET.CCTV_RAW").await;
    assert!(
        raw.direct_get(1).await.is_err(),
        "analyst direct-got a raw message"
    );
    expect_violation(&mut errors, "$JS.API.DIRECT.GET.CCTV_RAW").await;
    let consumer = raw
        .create_consumer(jetstream::consumer::pull::Config::default())
        .await;
    assert!(consumer.is_err(), "analyst created a consumer on CCTV_RAW");
    expect_violation(&mut errors, "$JS.API.CONSUMER.CREATE.CCTV_RAW").await;
    let dlq = js
        .get_stream("CCTV_DLQ")
        .await
        .expect("analyst reads DLQ info");
    assert!(dlq.get_raw_message(1).await.is_err());
    expect_violation(&mut errors, "$JS.API.STREAM.MSG.GET.CCTV_DLQ").await;
    for subject in ["cctv.raw.>", "cctv.>", ">", "_INBOX_cctv_ingest.>"] {
        let _subscriber = client.subscribe(subject).await.expect("subscribe is sent");
        client.flush().await.expect("flush");
        expect_violation(&mut errors, subject).await;
    }

    // Nor can it publish anywhere in the pipeline.
    client
        .publish("cctv.raw.canonical.gw2", "x".into())
        .await
        .expect("publish is sent");
    client.flush().await.expect("flush");
    expect_violation(&mut errors, "cctv.raw.canonical.gw2").await;
    assert_eq!(nats.stream_messages("CCTV_RAW").await, 1);
}

/// Writes the registry of the test fleet to a temp file.
fn registry_file() -> tempfile::NamedTempFile {
    let regions = cctv_event::Regions::builtin().expect("builtin regions");
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(registry_csv(&regions).as_bytes())
        .expect("write registry");
    file
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_runs_end_to_end_with_least_privilege_users() {
    const OFFENCES: u64 = 40;
    let nats = SecureNats::start();
    let clickhouse = ClickHouseServer::start_with_users_xml(CLICKHOUSE_USERS)
        .expect("clickhouse-server must start with deploy/clickhouse/users.xml.in");
    let clickhouse_as = |user: &str| ClickHouseConfig {
        url: clickhouse.http_url(),
        database: "cctv".into(),
        user: user.into(),
        ..ClickHouseConfig::default()
    };

    // `cctvctl setup` as the NATS operator and the ClickHouse migrator.
    let setup_config = cctv_cli::CliConfig {
        nats: nats.config_for("cctv_operator"),
        streams: StreamsConfig::default(),
        clickhouse: clickhouse_as("cctv_migrator"),
    };
    cctv_cli::run_setup(
        &setup_config,
        &cctv_cli::SetupArgs {
            skip_nats: false,
            skip_clickhouse: false,
            partitions: Some(8),
        },
    )
    .await
    .expect("cctvctl setup as cctv_operator + cctv_migrator");

    let registry = registry_file();
    let mut ingest_config = IngestConfig {
        nats: nats.config_for("cctv_ingest"),
        ..IngestConfig::default()
    };
    ingest_config.data.registry_path = Some(registry.path().to_path_buf());
    ingest_config.telemetry.listen = None;
    let ingest_shutdown = CancellationToken::new();
    let ingest_stats = IngestStats::default();
    let ingest = Service {
        shutdown: ingest_shutdown.clone(),
        task: tokio::spawn({
            let stats = ingest_stats.clone();
            async move {
                cctv_ingest::run(ingest_config, ingest_shutdown, stats)
                    .await
                    .map_err(anyhow::Error::from)
            }
        }),
        stats: ingest_stats.clone(),
    };

    let mut aggregator_config = AggregatorConfig {
        nats: nats.config_for("cctv_aggregator"),
        clickhouse: clickhouse_as("cctv_writer"),
        ..AggregatorConfig::default()
    };
    aggregator_config.aggregator.migrate_on_start = false;
    aggregator_config.aggregator.batch_max_age = Duration::from_millis(200);
    aggregator_config.telemetry.listen = None;
    let aggregator_shutdown = CancellationToken::new();
    let aggregator = Service {
        shutdown: aggregator_shutdown.clone(),
        task: tokio::spawn(async move {
            cctv_aggregator::run(
                aggregator_config,
                aggregator_shutdown,
                AggregatorStats::default(),
            )
            .await
            .map_err(anyhow::Error::from)
        }),
        stats: AggregatorStats::default(),
    };

    // A gateway publishes offences, one republished, and one broken message.
    let (gateway, _gateway_errors) = nats.connect_as("gw1").await;
    let js = jetstream::new(gateway);
    let subject = "cctv.raw.canonical.gw1";
    for n in 0..OFFENCES {
        let region = if n % 2 == 0 { "75" } else { "11" };
        let mut message_headers = HeaderMap::new();
        message_headers.insert(headers::NATS_MSG_ID, format!("gw1-{n}").as_str());
        let payload = canonical(
            &format!("CAM-{region}-1"),
            "traffic.speeding",
            &recent_time(i64::try_from(n).unwrap()),
            &format!(r#","source_event_id":"gw1-e{n}""#),
        );
        js.publish_with_headers(subject, message_headers, payload.into())
            .await
            .expect("publish")
            .await
            .expect("ack");
    }
    let republished = canonical(
        "CAM-75-1",
        "traffic.speeding",
        &recent_time(0),
        r#","source_event_id":"gw1-e0""#,
    );
    js.publish(subject, republished.into())
        .await
        .expect("publish")
        .await
        .expect("ack");
    js.publish(subject, b"{not json".to_vec().into())
        .await
        .expect("publish")
        .await
        .expect("ack");

    // An analyst sees every offence counted once in ClickHouse.
    let analyst = Store::new(&clickhouse_as("cctv_analyst")).expect("analyst store");
    crate::harness::wait_for_store_rows(&analyst, OFFENCES, || {
        format!(
            "ingest {:?}\n{}",
            ingest.stats.snapshot(),
            nats.server.log_tail()
        )
    })
    .await;
    let ingest_ref = &ingest;
    cctv_testkit::poll_until(
        "the ingest to handle every message",
        DRAIN_TIMEOUT,
        || async move { ingest_ref.stats.snapshot().handled() >= OFFENCES + 2 },
    )
    .await;
    let totals = analyst
        .totals(&TotalsFilter::default())
        .await
        .expect("analyst reads totals");
    let counted: u64 = totals.iter().map(|row| row.events).sum();
    assert_eq!(counted, OFFENCES, "{totals:?}");
    let snapshot = ingest.stats.snapshot();
    assert_eq!(
        (snapshot.published, snapshot.dead_lettered),
        (OFFENCES + 1, 1),
        "{snapshot:?}"
    );
    assert_eq!(nats.stream_messages("CCTV_DLQ").await, 1);

    // The operator reads the dead letter (`cctvctl dlq list`).
    cctv_cli::run_dlq(
        &setup_config,
        &cctv_cli::DlqCommand::List(cctv_cli::DlqListArgs {
            limit: 10,
            reason: None,
            format: cctv_cli::ListFormat::Json,
        }),
    )
    .await
    .expect("cctvctl dlq list as cctv_operator");

    // The operator audits (`cctvctl audit`): it reads every event batch.
    let report = cctv_cli::audit_pipeline(&setup_config)
        .await
        .expect("cctvctl audit as cctv_operator");
    assert!(report.is_clean(), "{}", cctv_cli::render_audit(&report));
    // In rounds it reads the partition count and consumes the partitions'
    // subjects with filtered consumers: each message once in 4 rounds.
    let in_rounds = cctv_cli::audit_pipeline_in_rounds(&setup_config, 4)
        .await
        .expect("cctvctl audit --rounds 4 as cctv_operator");
    assert_eq!(in_rounds.streams, report.streams);
    assert_eq!(in_rounds.whole_stream_reads, None);
    assert_eq!(in_rounds.messages_read, report.messages_read);

    // The operator asks for a partition to be read again (what `audit
    // --repair` does); the aggregator reads it, writes nothing more (every
    // id is in ClickHouse) and deletes the request.
    let (operator, mut operator_errors) = nats.connect_as("cctv_operator").await;
    let leases = cctv_bus::LeaseBucket::open(
        &impatient_jetstream(operator),
        &StreamsConfig::default().leases,
    )
    .await
    .expect("the operator opens the lease bucket");
    for partition in 0..8 {
        leases
            .request_rewind(partition, 1)
            .await
            .expect("the operator writes a rewind request");
    }
    let leases_ref = &leases;
    cctv_testkit::poll_until(
        "the aggregator to carry out every rewind request",
        DRAIN_TIMEOUT,
        || async move {
            leases_ref
                .entries(cctv_bus::REWIND_PREFIX)
                .await
                .is_ok_and(|left| left.is_empty())
        },
    )
    .await;
    let totals = analyst
        .totals(&TotalsFilter::default())
        .await
        .expect("analyst reads totals");
    assert_eq!(totals.iter().map(|row| row.events).sum::<u64>(), OFFENCES);

    // Both services stop cleanly, and the server refused nothing they asked:
    // the permissions are exactly enough.
    ingest.stop().await;
    aggregator.stop().await;
    let server_log = nats.server_log();
    assert!(
        !server_log.contains("Violation"),
        "the server refused a call of the pipeline:\n{server_log}"
    );

    // The operator writes rewind requests, not leases.
    assert!(leases.create("lease.p0", "cctv_operator").await.is_err());
    expect_violation(&mut operator_errors, "$KV.CCTV_LEASES.lease.p0").await;
}

/// A query as `user` on the shipped-users server, with per-query settings.
async fn query_as(
    clickhouse: &ClickHouseServer,
    user: &str,
    sql: &str,
    settings: &[(&str, &str)],
) -> Result<(), String> {
    let store = Store::new(&ClickHouseConfig {
        url: clickhouse.http_url(),
        database: "cctv".into(),
        user: user.into(),
        ..ClickHouseConfig::default()
    })
    .map_err(|error| error.to_string())?;
    let mut client = store.client().clone();
    for (name, value) in settings {
        client = client.with_setting(*name, *value);
    }
    client
        .query(sql)
        .execute()
        .await
        .map_err(|error| error.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_clickhouse_users_keep_to_their_roles() {
    let clickhouse = ClickHouseServer::start_with_users_xml(CLICKHOUSE_USERS)
        .expect("clickhouse-server must start with deploy/clickhouse/users.xml.in");
    let migrator = Store::new(&ClickHouseConfig {
        url: clickhouse.http_url(),
        database: "cctv".into(),
        user: "cctv_migrator".into(),
        ..ClickHouseConfig::default()
    })
    .expect("store");
    migrator
        .migrate()
        .await
        .expect("the migrator applies the schema");
    clickhouse
        .query("CREATE DATABASE other")
        .expect("admin creates another database");
    clickhouse
        .query("CREATE TABLE other.t (x UInt8) ENGINE = Memory")
        .expect("admin creates a table there");
    let table_exists = || {
        clickhouse
            .query("EXISTS TABLE cctv.schema_migrations")
            .expect("exists")
            == "1\n"
    };
    let insert = "INSERT INTO cctv.schema_migrations (version, name, applied_at) VALUES (999, 'probe', now())";

    // The writer: reads and inserts in cctv, no DDL, no other database.
    query_as(&clickhouse, "cctv_writer", insert, &[])
        .await
        .expect("the writer inserts");
    query_as(
        &clickhouse,
        "cctv_writer",
        "SELECT count() FROM cctv.offence_totals",
        &[],
    )
    .await
    .expect("the writer reads");
    for ddl in [
        "DROP TABLE cctv.schema_migrations",
        "TRUNCATE TABLE cctv.schema_migrations",
        "ALTER TABLE cctv.schema_migrations DELETE WHERE 1",
        "CREATE TABLE cctv.intruder (x UInt8) ENGINE = Memory",
        "DROP DATABASE cctv",
    ] {
        let result = query_as(&clickhouse, "cctv_writer", ddl, &[]).await;
        assert!(result.is_err(), "the writer ran {ddl}");
    }
    assert!(table_exists(), "the writer dropped a table");
    let result = query_as(&clickhouse, "cctv_writer", "SELECT * FROM other.t", &[]).await;
    assert!(result.is_err(), "the writer read another database");
    let result = query_as(
        &clickhouse,
        "cctv_writer",
        "INSERT INTO other.t VALUES (1)",
        &[],
    )
    .await;
    assert!(result.is_err(), "the writer wrote another database");

    // The analyst: reads cctv, writes nothing, cannot lift its read-only
    // setting per query (readonly = 1 forbids changing any setting).
    query_as(
        &clickhouse,
        "cctv_analyst",
        "SELECT count() FROM cctv.offence_events",
        &[],
    )
    .await
    .expect("the analyst reads");
    for (sql, settings) in [
        (insert, &[][..]),
        (insert, &[("readonly", "0")][..]),
        ("DROP TABLE cctv.schema_migrations", &[][..]),
        (
            "DROP TABLE cctv.schema_migrations",
            &[("allow_ddl", "1")][..],
        ),
        (
            "CREATE TABLE cctv.intruder (x UInt8) ENGINE = Memory",
            &[][..],
        ),
    ] {
        let result = query_as(&clickhouse, "cctv_analyst", sql, settings).await;
        assert!(result.is_err(), "the analyst ran {sql} with {settings:?}");
    }
    let result = query_as(&clickhouse, "cctv_analyst", "SELECT * FROM other.t", &[]).await;
    assert!(result.is_err(), "the analyst read another database");
    assert!(table_exists(), "the analyst dropped a table");
    assert_eq!(
        clickhouse
            .query("SELECT count() FROM cctv.schema_migrations WHERE version = 999")
            .expect("count"),
        "1\n",
        "only the writer's probe row was inserted"
    );

    // Passwords: the shipped users have none and are confined to loopback;
    // a wrong user is refused.
    let result = query_as(&clickhouse, "nobody", "SELECT 1", &[]).await;
    assert!(result.is_err(), "an unknown user was accepted");
}

/// The `$CCTV_NATS_..._PASSWORD` variables a text mentions, sorted.
fn password_variables(text: &str) -> Vec<String> {
    let mut variables: Vec<String> = text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("CCTV_NATS_") && word.ends_with("_PASSWORD"))
        .map(str::to_string)
        .collect();
    variables.sort();
    variables.dedup();
    variables
}

#[test]
fn the_stack_and_these_tests_provide_every_password_auth_conf_reads() {
    let config_lines: String = NATS_AUTH_CONFIG
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    let needed = password_variables(&config_lines);
    let mut tested: Vec<String> = NATS_USERS.iter().map(|(_, v)| v.to_string()).collect();
    tested.sort();
    assert_eq!(needed, tested, "NATS_USERS of this file");
    let stack_script = include_str!("../../scripts/stack.sh");
    let generated_line = stack_script
        .lines()
        .find(|line| line.starts_with("readonly NATS_PASSWORD_VARS="))
        .expect("NATS_PASSWORD_VARS in scripts/stack.sh");
    assert_eq!(
        password_variables(generated_line),
        needed,
        "passwords scripts/stack.sh generates"
    );
}
