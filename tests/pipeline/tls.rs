//! Encrypted, authenticated transport on every hop, against real servers
//! with TLS: nats-server with a certificate (client certificates required,
//! or required and mapped to users) and clickhouse-server's `https_port`.
//! Every certificate is made at test time by `cctv_testkit::TestCa`
//! (openssl), including an expired one and ones for another host name.
//!
//! What is shown: the pipeline (the real `cctv-ingest` and `cctv-aggregator`
//! binaries, `cctvctl`) counts exactly over TLS on both NATS hops and to
//! ClickHouse, and no configured password reaches a log or `--help`; a
//! gateway's certificate lets it publish to its own subjects only; each bad
//! certificate (wrong CA, expired, wrong host name, missing client
//! certificate, a plain-text server) fails at connect with its own error and
//! stops a service at start; nkey seeds and `.creds` files authenticate
//! over TLS; cluster routes run in mutual TLS.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::jetstream;
use base64::Engine as _;
use cctv_bus::{BusError, NatsConfig, StreamSettings, StreamsConfig};
use cctv_store::{ClickHouseConfig, Store, StoreError, TotalsFilter};
use cctv_testkit::{
    CertificateFiles, CertificateRequest, CertificateUse, ClickHouseServer, ClientCertificates,
    NatsCluster, NatsServer, NatsTls, TestCa, Validity,
};

use crate::harness::{canonical, recent_time, registry_csv, wait_for_store_rows};
use crate::processes::{Kind, ServiceProcess};
use crate::security::{NATS_AUTH_CONFIG, NATS_USERS};

/// The ClickHouse user the aggregator writes as, with a password.
const CLICKHOUSE_WRITER: &str = "cctv_tls_writer";

/// How long a connect may take before the test calls it hanging.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// The shipped NATS TLS block of the local stack (`TLS=1 make up`).
const NATS_TLS_TEMPLATE: &str = include_str!("../../deploy/nats/tls.conf.in");

/// A password nats-server can read from its environment (letters and digits,
/// starting with a letter).
fn new_password() -> String {
    format!("p{}", uuid::Uuid::new_v4().simple())
}

/// `auth.conf` for certificate users: nats-server's `verify_and_map` maps a
/// client certificate to the user its SAN names, and such users have no
/// password, so the password lines go; every permission stays as shipped.
fn auth_conf_for_certificates() -> String {
    NATS_AUTH_CONFIG
        .lines()
        .filter(|line| !line.trim_start().starts_with("password:"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// NATS settings over TLS: trust `ca_file`, present `client` when given.
fn tls_nats_config(url: &str, ca_file: &Path, client: Option<&CertificateFiles>) -> NatsConfig {
    NatsConfig {
        url: url.to_string(),
        tls_ca_file: Some(ca_file.to_path_buf()),
        tls_cert_file: client.map(|files| files.cert.clone()),
        tls_key_file: client.map(|files| files.key.clone()),
        connect_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(3),
        ..NatsConfig::default()
    }
}

/// Connects, failing the test on a hang.
async fn connect(config: &NatsConfig) -> Result<async_nats::Client, BusError> {
    tokio::time::timeout(CONNECT_TIMEOUT, cctv_bus::connect(config, "tls-test"))
        .await
        .expect("connect neither succeeded nor failed")
}

/// The TLS error of a connect that must fail, or a test failure saying what
/// happened instead.
async fn tls_refusal(config: &NatsConfig) -> String {
    match connect(config).await {
        Err(BusError::Tls { message, .. }) => message,
        Err(other) => panic!("expected a TLS error, got: {other}"),
        Ok(_) => panic!("connected although the certificate is bad"),
    }
}

/// The server certificate for `127.0.0.1` only: `localhost` is then a host
/// name the certificate does not name.
fn ip_only_server_certificate(ca: &TestCa, name: &str, validity: Validity) -> CertificateFiles {
    ca.issue(&CertificateRequest {
        name,
        common_name: "127.0.0.1",
        alt_names: &["IP:127.0.0.1"],
        usage: CertificateUse::Server,
        validity,
    })
    .expect("issue a server certificate")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_counts_exactly_over_tls_and_no_log_holds_a_password() {
    let ca = TestCa::new("pipeline CA").expect("test CA");
    let ca_file = ca.ca_file();
    let server_certificate = ca.server_certificate("server").expect("server certificate");
    let clients: Vec<(&str, CertificateFiles)> =
        ["cctv_ingest", "cctv_aggregator", "cctv_operator"]
            .into_iter()
            .map(|user| {
                (
                    user,
                    ca.client_certificate(user).expect("client certificate"),
                )
            })
            .collect();
    let client_files = |user: &str| {
        clients
            .iter()
            .find(|(name, _)| *name == user)
            .map(|(_, files)| files.clone())
            .expect("a client certificate")
    };

    // NATS: TLS with client certificates required and checked, users and
    // permissions of the shipped auth.conf with their passwords (what
    // `TLS=1 make up` runs).
    let nats_passwords: Vec<(&str, &str, String)> = NATS_USERS
        .iter()
        .map(|(user, variable)| (*user, *variable, new_password()))
        .collect();
    let server_env: Vec<(&str, &str)> = nats_passwords
        .iter()
        .map(|(_, variable, password)| (*variable, password.as_str()))
        .collect();
    let nats = NatsServer::start_with_tls(
        &NatsTls {
            certificate: &server_certificate,
            ca_file: Some(&ca_file),
            client_certificates: ClientCertificates::Required,
        },
        NATS_AUTH_CONFIG,
        &server_env,
    )
    .expect("nats-server with TLS and auth.conf");
    let nats_password = |user: &str| {
        nats_passwords
            .iter()
            .find(|(name, _, _)| *name == user)
            .map(|(_, _, password)| password.clone())
            .expect("a user of auth.conf")
    };

    // ClickHouse: HTTPS, the aggregator writes as a user with a password.
    let clickhouse_password = new_password();
    let users = format!(
        "<default><password></password><networks><ip>127.0.0.1</ip></networks>\
         <profile>default</profile><quota>default</quota></default>\
         <{CLICKHOUSE_WRITER}><password>{clickhouse_password}</password><networks><ip>127.0.0.1</ip></networks>\
         <profile>default</profile><quota>default</quota></{CLICKHOUSE_WRITER}>"
    );
    let clickhouse = ClickHouseServer::start_with_tls(Some(&users), &server_certificate)
        .expect("clickhouse-server with https_port");
    let https_url = clickhouse.https_url().expect("an https URL");
    let database = cctv_testkit::unique_name("tls");

    let dir = tempfile::tempdir().expect("temp dir");
    let regions = cctv_event::Regions::builtin().expect("regions");
    let registry_path = dir.path().join("cameras.csv");
    std::fs::write(&registry_path, registry_csv(&regions)).expect("write registry");

    // The operator publishes over TLS (its certificate and password).
    let operator_files = client_files("cctv_operator");
    let mut operator_config = tls_nats_config(&nats.url(), &ca_file, Some(&operator_files));
    let operator_password = nats_password("cctv_operator");
    operator_config.apply_env(|name| match name {
        "CCTV_NATS_USER" => Some("cctv_operator".into()),
        "CCTV_NATS_PASSWORD" => Some(operator_password.clone()),
        _ => None,
    });
    let operator = connect(&operator_config).await.expect("operator over TLS");
    let js = jetstream::new(operator);

    // `cctvctl setup` over TLS on both: streams, lease bucket, schema.
    let cli_toml = format!(
        "[nats]\nurl = \"{}\"\ntls_ca_file = \"{ca}\"\n\n[clickhouse]\nurl = \"{https_url}\"\n\
         database = \"{database}\"\nuser = \"{CLICKHOUSE_WRITER}\"\ntls_ca_file = \"{ca}\"\n",
        nats.url(),
        ca = ca_file.display(),
    );
    let cli_config = dir.path().join("cctvctl.toml");
    std::fs::write(&cli_config, cli_toml).expect("write cctvctl config");
    let cli_env = [
        ("CCTV_NATS_USER", "cctv_operator"),
        ("CCTV_NATS_PASSWORD", operator_password.as_str()),
        ("CCTV_NATS_TLS_CERT", path_str(&operator_files.cert)),
        ("CCTV_NATS_TLS_KEY", path_str(&operator_files.key)),
        ("CCTV_CLICKHOUSE_PASSWORD", clickhouse_password.as_str()),
    ];
    let setup = run_cctvctl(&cli_config, &cli_env, &["setup"]);
    assert!(
        setup.status.success(),
        "cctvctl setup over TLS: {}",
        setup.text
    );

    // The ingest reads every TLS setting from the environment, the
    // aggregator from its config file: both ways are the documented ones.
    let ingest_files = client_files("cctv_ingest");
    let ingest_password = nats_password("cctv_ingest");
    let ingest_env = [
        ("CCTV_NATS_USER", "cctv_ingest"),
        ("CCTV_NATS_PASSWORD", ingest_password.as_str()),
        ("CCTV_NATS_TLS_CA", path_str(&ca_file)),
        ("CCTV_NATS_TLS_CERT", path_str(&ingest_files.cert)),
        ("CCTV_NATS_TLS_KEY", path_str(&ingest_files.key)),
    ];
    let ingest_toml = format!(
        "[nats]\nurl = \"{}\"\n\n[data]\nregistry_path = \"{}\"\n\n[telemetry]\nlisten = \"127.0.0.1:0\"\n",
        nats.url(),
        registry_path.display()
    );
    let mut ingest = ServiceProcess::start(Kind::Ingest, dir.path(), &ingest_toml, &ingest_env);

    let aggregator_files = client_files("cctv_aggregator");
    let aggregator_password = nats_password("cctv_aggregator");
    let aggregator_env = [
        ("CCTV_NATS_USER", "cctv_aggregator"),
        ("CCTV_NATS_PASSWORD", aggregator_password.as_str()),
        ("CCTV_CLICKHOUSE_USER", CLICKHOUSE_WRITER),
        ("CCTV_CLICKHOUSE_PASSWORD", clickhouse_password.as_str()),
    ];
    let aggregator_toml = format!(
        "[nats]\nurl = \"{}\"\ntls_ca_file = \"{ca}\"\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n\n\
         [clickhouse]\nurl = \"{https_url}\"\ndatabase = \"{database}\"\ntls_ca_file = \"{ca}\"\n\n\
         [aggregator]\nbatch_max_age = \"200ms\"\n\n[telemetry]\nlisten = \"127.0.0.1:0\"\n",
        nats.url(),
        aggregator_files.cert.display(),
        aggregator_files.key.display(),
        ca = ca_file.display(),
    );
    let mut aggregator = ServiceProcess::start(
        Kind::Aggregator,
        dir.path(),
        &aggregator_toml,
        &aggregator_env,
    );

    // 2,000 offences over every region, published by the operator over TLS.
    let codes: Vec<String> = regions
        .all()
        .iter()
        .map(|region| region.code.clone())
        .collect();
    let types = [
        "traffic.speeding",
        "traffic.red_light",
        "traffic.illegal_parking",
    ];
    let total = 2_000u64;
    let mut acks = Vec::new();
    for n in 0..total {
        let region = &codes[n as usize % codes.len()];
        let digits = region.trim_start_matches("KZ-");
        let payload = canonical(
            &format!("CAM-{digits}-{}", 1 + n % 2),
            types[n as usize % types.len()],
            &recent_time(i64::try_from(n).expect("small")),
            &format!(r#","source_event_id":"tls-{n}""#),
        );
        acks.push(
            js.publish("cctv.raw.canonical.gw1", payload.into())
                .await
                .expect("publish over TLS"),
        );
    }
    for ack in acks {
        ack.await.expect("raw publish acknowledged");
    }

    // Read back over HTTPS, as the writer with its password.
    let store = Store::new(&ClickHouseConfig {
        url: https_url.clone(),
        database: database.clone(),
        user: CLICKHOUSE_WRITER.into(),
        password: Some(clickhouse_password.clone()),
        tls_ca_file: Some(ca_file.clone()),
        ..ClickHouseConfig::default()
    })
    .expect("https store");
    wait_for_store_rows(&store, total, || {
        format!("{}\n{}", ingest.log_tail(), aggregator.log_tail())
    })
    .await;
    let totals = store
        .totals(&TotalsFilter::default())
        .await
        .expect("totals");
    let counted: u64 = totals.iter().map(|row| row.events).sum();
    assert_eq!(
        counted, total,
        "every offence counted exactly once over TLS"
    );
    for (index, offence_type) in types.iter().enumerate() {
        let expected = (0..total)
            .filter(|n| *n as usize % types.len() == index)
            .count() as u64;
        let found: u64 = totals
            .iter()
            .filter(|row| row.offence_type == *offence_type)
            .map(|row| row.events)
            .sum();
        assert_eq!(found, expected, "{offence_type}");
    }
    assert_eq!(
        store.count_events().await.expect("count"),
        total,
        "no row twice"
    );

    // cctvctl over TLS on both: the audit finds every event stored once.
    let audit = run_cctvctl(&cli_config, &cli_env, &["audit"]);
    assert!(
        audit.status.success(),
        "cctvctl audit over TLS: {}",
        audit.text
    );
    let help: Vec<String> = [
        cctvctl_binary(),
        crate::processes::service_binary(Kind::Ingest),
        crate::processes::service_binary(Kind::Aggregator),
    ]
    .iter()
    .map(|binary| run_with_env(binary, &cli_env, &["--help"]).text)
    .collect();

    // Stop both services cleanly, then search everything they printed.
    for service in [&mut ingest, &mut aggregator] {
        service.terminate();
        let status = service.wait_exit(Duration::from_secs(60)).await;
        assert!(
            status.success(),
            "clean exit: {status}\n{}",
            service.log_tail()
        );
    }
    let logs = [
        ("cctv-ingest", read(&dir.path().join("cctv-ingest.log"))),
        (
            "cctv-aggregator",
            read(&dir.path().join("cctv-aggregator.log")),
        ),
        ("cctvctl setup", setup.text),
        ("cctvctl audit", audit.text),
        ("--help", help.join("\n")),
    ];
    assert!(
        logs[0].1.contains("\"ingest started\""),
        "the ingest log is empty:\n{}",
        logs[0].1
    );
    assert!(
        logs[1].1.contains("\"aggregator started\""),
        "the aggregator log is empty:\n{}",
        logs[1].1
    );
    let mut secrets: Vec<(String, String)> = nats_passwords
        .iter()
        .map(|(user, _, password)| (format!("NATS password of {user}"), password.clone()))
        .collect();
    secrets.push(("ClickHouse password".into(), clickhouse_password.clone()));
    for (name, text) in &logs {
        for (secret, value) in &secrets {
            assert!(!text.contains(value.as_str()), "{name} shows the {secret}");
        }
    }
}

/// What a command printed and how it ended.
struct Ran {
    status: std::process::ExitStatus,
    text: String,
}

fn run_with_env(binary: &Path, env: &[(&str, &str)], args: &[&str]) -> Ran {
    let mut command = std::process::Command::new(binary);
    command.args(args).env("CCTV_LOG", "info");
    for (name, value) in env {
        command.env(name, value);
    }
    let output = command.output().expect("run binary");
    Ran {
        status: output.status,
        text: format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    }
}

fn run_cctvctl(config: &Path, env: &[(&str, &str)], args: &[&str]) -> Ran {
    let mut all = vec!["--config", path_str(config)];
    all.extend_from_slice(args);
    run_with_env(&cctvctl_binary(), env, &all)
}

/// `target/<profile>/cctvctl`, next to the service binaries.
fn cctvctl_binary() -> PathBuf {
    let ingest = crate::processes::service_binary(Kind::Ingest);
    let binary = ingest.with_file_name("cctvctl");
    assert!(
        binary.is_file(),
        "{} is missing: build it with `cargo build -p cctv-cli` (or run `cargo test --workspace`)",
        binary.display()
    );
    binary
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 temp path")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// Whether a JetStream publish of `payload` to `subject` gets no ack (the
/// server refused the publish, or the ack's inbox).
async fn publish_refused(js: &jetstream::Context, subject: &str, payload: &[u8]) -> bool {
    match js
        .publish(subject.to_string(), payload.to_vec().into())
        .await
    {
        Ok(ack) => ack.await.is_err(),
        Err(_) => true,
    }
}

/// Messages in `stream` (read with `js`).
async fn stream_messages(js: &jetstream::Context, stream: &str) -> u64 {
    let mut stream = js.get_stream(stream).await.expect("stream");
    stream.info().await.expect("stream info").state.messages
}

/// What `TLS=1 make up` runs: certificates from `scripts/gen-certs.sh`, the
/// shipped `tls.conf.in` and `auth.conf`: a client needs its certificate
/// and its password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stack_tls_config_needs_a_certificate_and_a_password() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tls_dir = dir.path().join("tls");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/gen-certs.sh");
    let made = std::process::Command::new("bash")
        .arg(script)
        .arg(&tls_dir)
        .output()
        .expect("run scripts/gen-certs.sh");
    assert!(
        made.status.success(),
        "gen-certs.sh: {}",
        String::from_utf8_lossy(&made.stderr)
    );
    let tls_block = NATS_TLS_TEMPLATE.replace("@TLS_DIR@", path_str(&tls_dir));
    let passwords: Vec<(&str, String)> = NATS_USERS
        .iter()
        .map(|(_, variable)| (*variable, new_password()))
        .collect();
    let env: Vec<(&str, &str)> = passwords
        .iter()
        .map(|(variable, password)| (*variable, password.as_str()))
        .collect();
    let nats =
        NatsServer::start_with_config_and_env(&format!("{tls_block}\n{NATS_AUTH_CONFIG}"), &env)
            .expect("nats-server with the stack's TLS block and auth.conf");
    let ingest_password = passwords
        .iter()
        .find(|(variable, _)| *variable == "CCTV_NATS_INGEST_PASSWORD")
        .map(|(_, password)| password.clone())
        .expect("the ingest's password");
    let ca_file = tls_dir.join("ca.pem");
    let certificate = CertificateFiles {
        cert: tls_dir.join("cctv_ingest.pem"),
        key: tls_dir.join("cctv_ingest.key"),
    };
    let as_ingest = |certificate: Option<&CertificateFiles>, password: &str| {
        let mut config = tls_nats_config(&nats.url(), &ca_file, certificate);
        config.user = Some("cctv_ingest".into());
        config.password = Some(password.to_string());
        config
    };
    connect(&as_ingest(Some(&certificate), &ingest_password))
        .await
        .expect("certificate and password");
    let message = tls_refusal(&as_ingest(None, &ingest_password)).await;
    assert!(
        message.contains("requires a client certificate"),
        "{message}"
    );
    assert!(
        matches!(
            connect(&as_ingest(Some(&certificate), "pWrong")).await,
            Err(BusError::Unauthorized { .. })
        ),
        "a certificate without the password was accepted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_certificate_publishes_only_to_its_own_subjects() {
    let ca = TestCa::new("gateway CA").expect("test CA");
    let ca_file = ca.ca_file();
    let server_certificate = ca.server_certificate("server").expect("server certificate");
    // The certificate is the credential: its SAN names the user of auth.conf.
    let nats = NatsServer::start_with_tls(
        &NatsTls {
            certificate: &server_certificate,
            ca_file: Some(&ca_file),
            client_certificates: ClientCertificates::RequiredAndMapped,
        },
        &auth_conf_for_certificates(),
        &[],
    )
    .expect("nats-server with verify_and_map and auth.conf's users");
    let operator_files = ca
        .client_certificate("cctv_operator")
        .expect("operator certificate");
    // No user name in the settings, so the inbox is named: auth.conf gives
    // each user its own, and the default `_INBOX` is nobody's.
    let mut operator_config = tls_nats_config(&nats.url(), &ca_file, Some(&operator_files));
    operator_config.inbox_prefix = Some("_INBOX_cctv_operator".into());
    let operator_js = jetstream::new(connect(&operator_config).await.expect("operator"));
    cctv_bus::ensure_streams(&operator_js, &StreamsConfig::default())
        .await
        .expect("the operator creates the streams");

    // gw1 with its own certificate: its JetStream publish is acknowledged.
    let gw1_files = ca.client_certificate("gw1").expect("gw1 certificate");
    let mut gw1_config = tls_nats_config(&nats.url(), &ca_file, Some(&gw1_files));
    gw1_config.inbox_prefix = Some("_INBOX_gw1".into());
    let gw1 = connect(&gw1_config).await.expect("gw1 by certificate");
    let gw1_js = jetstream::new(gw1.clone());
    let payload = canonical("CAM-75-1", "traffic.speeding", &recent_time(0), "");
    gw1_js
        .publish("cctv.raw.canonical.gw1", payload.clone().into())
        .await
        .expect("publish")
        .await
        .expect("gw1 gets an ack for its own subject");
    // ... and nothing to another gateway's subject or the events.
    for subject in ["cctv.raw.canonical.gw2", "cctv.events.p0.x"] {
        let refused = publish_refused(&gw1_js, subject, &payload).await;
        assert!(refused, "gw1 got an ack for {subject}");
    }
    assert_eq!(stream_messages(&operator_js, "CCTV_RAW").await, 1);
    assert_eq!(stream_messages(&operator_js, "CCTV_EVENTS").await, 0);

    // With gw2's certificate the client is gw2, whatever it claims: gw1's
    // subjects are refused, and so is gw1's inbox.
    let gw2_files = ca.client_certificate("gw2").expect("gw2 certificate");
    let mut as_gw2 = tls_nats_config(&nats.url(), &ca_file, Some(&gw2_files));
    as_gw2.inbox_prefix = Some("_INBOX_gw2".into());
    let gw2_js = jetstream::new(connect(&as_gw2).await.expect("gw2 by certificate"));
    let refused = publish_refused(&gw2_js, "cctv.raw.canonical.gw1", &payload).await;
    assert!(refused, "gw2's certificate published as gw1");
    assert_eq!(stream_messages(&operator_js, "CCTV_RAW").await, 1);
    // Its own subject is stored, but the ack is not delivered to gw1's inbox.
    as_gw2.inbox_prefix = Some("_INBOX_gw1".into());
    let posing = jetstream::new(connect(&as_gw2).await.expect("connects as gw2"));
    let refused = publish_refused(&posing, "cctv.raw.canonical.gw2", &payload).await;
    assert!(refused, "gw2 received an ack on gw1's inbox");
    assert_eq!(stream_messages(&operator_js, "CCTV_RAW").await, 2);
    // A user name and password next to a certificate change nothing either.
    let mut claims_gw1 = tls_nats_config(&nats.url(), &ca_file, Some(&gw2_files));
    claims_gw1.user = Some("gw1".into());
    claims_gw1.password = Some(new_password());
    assert!(
        matches!(
            connect(&claims_gw1).await,
            Err(BusError::Unauthorized { .. })
        ),
        "gw2's certificate with gw1's user name was accepted"
    );

    // Without a certificate: refused during the handshake.
    let message = tls_refusal(&tls_nats_config(&nats.url(), &ca_file, None)).await;
    assert!(
        message.contains("requires a client certificate"),
        "{message}"
    );
    // A certificate for a user auth.conf does not know: refused.
    let stranger = ca.client_certificate("gw3").expect("gw3 certificate");
    assert!(
        matches!(
            connect(&tls_nats_config(&nats.url(), &ca_file, Some(&stranger))).await,
            Err(BusError::Unauthorized { .. })
        ),
        "a certificate of no user was accepted"
    );
    // A gateway certificate from another CA: refused by the server.
    let other_ca = TestCa::new("someone else's CA").expect("other CA");
    let forged = other_ca.client_certificate("gw1").expect("forged gw1");
    let message = tls_refusal(&tls_nats_config(&nats.url(), &ca_file, Some(&forged))).await;
    assert!(
        message.contains("refused this client's TLS certificate"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_bad_nats_certificate_fails_at_connect_with_its_error() {
    let ca = TestCa::new("nats CA").expect("test CA");
    let ca_file = ca.ca_file();
    let good = ip_only_server_certificate(&ca, "server", Validity::Days(30));
    let nats = NatsServer::start_with_tls(
        &NatsTls {
            certificate: &good,
            ca_file: Some(&ca_file),
            client_certificates: ClientCertificates::Required,
        },
        "",
        &[],
    )
    .expect("nats-server with TLS");
    let client = ca.client_certificate("client").expect("client certificate");
    let url = nats.url();

    // The good case, so that each failure below is the certificate's doing.
    connect(&tls_nats_config(&url, &ca_file, Some(&client)))
        .await
        .expect("connects with the right CA, host and certificate");

    let other_ca = TestCa::new("wrong CA").expect("other CA");
    let message = tls_refusal(&tls_nats_config(&url, &other_ca.ca_file(), Some(&client))).await;
    assert!(
        message.contains("not issued by the configured CA"),
        "wrong CA: {message}"
    );

    let localhost_url = url.replace("127.0.0.1", "localhost");
    let message = tls_refusal(&tls_nats_config(&localhost_url, &ca_file, Some(&client))).await;
    assert!(
        message.contains("not valid for the host name"),
        "wrong host: {message}"
    );

    let message = tls_refusal(&tls_nats_config(&url, &ca_file, None)).await;
    assert!(
        message.contains("requires a client certificate"),
        "no client certificate: {message}"
    );

    let expired_client = ca
        .issue(&CertificateRequest {
            name: "expired-client",
            common_name: "client",
            alt_names: &["DNS:client"],
            usage: CertificateUse::Client,
            validity: Validity::Expired,
        })
        .expect("expired client certificate");
    let message = tls_refusal(&tls_nats_config(&url, &ca_file, Some(&expired_client))).await;
    assert!(
        message.contains("refused this client's TLS certificate"),
        "expired client: {message}"
    );

    let missing = ca.dir().join("no-such-ca.pem");
    match connect(&tls_nats_config(&url, &missing, Some(&client))).await {
        Err(error @ BusError::Settings(_)) => {
            assert!(!error.is_transient());
            assert!(error.to_string().contains("nats.tls_ca_file"), "{error}");
        }
        other => panic!("a missing CA file: {other:?}"),
    }

    // An expired server certificate.
    let expired = ip_only_server_certificate(&ca, "expired-server", Validity::Expired);
    let expired_nats = NatsServer::start_with_tls(
        &NatsTls {
            certificate: &expired,
            ca_file: None,
            client_certificates: ClientCertificates::NotRequested,
        },
        "",
        &[],
    )
    .expect("nats-server with an expired certificate");
    let message = tls_refusal(&tls_nats_config(&expired_nats.url(), &ca_file, None)).await;
    assert!(message.contains("has expired"), "expired server: {message}");

    // TLS configured, server without TLS: a failed handshake, never plain text.
    let plain = NatsServer::start().expect("nats-server without TLS");
    let error = connect(&tls_nats_config(&plain.url(), &ca_file, None))
        .await
        .expect_err("a TLS client must not talk to a plain-text server");
    assert!(!error.is_transient(), "{error}");

    // A service stops at start with the error, instead of retrying for ever.
    let dir = tempfile::tempdir().expect("temp dir");
    let ingest_toml = format!(
        "[nats]\nurl = \"{url}\"\ntls_ca_file = \"{}\"\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n\n\
         [telemetry]\nlisten = \"127.0.0.1:0\"\n",
        other_ca.ca_file().display(),
        client.cert.display(),
        client.key.display(),
    );
    let mut ingest = ServiceProcess::start(Kind::Ingest, dir.path(), &ingest_toml, &[]);
    let status = ingest.wait_exit(Duration::from_secs(30)).await;
    assert!(
        !status.success(),
        "the ingest ran with a CA that did not issue the server's certificate"
    );
    assert!(
        ingest.log_contains("not issued by the configured CA"),
        "{}",
        ingest.log_tail()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_bad_clickhouse_certificate_fails_at_start_with_its_error() {
    let ca = TestCa::new("clickhouse CA").expect("test CA");
    let ca_file = ca.ca_file();
    let good = ip_only_server_certificate(&ca, "server", Validity::Days(30));
    let clickhouse = ClickHouseServer::start_with_tls(None, &good).expect("clickhouse with TLS");
    let https_url = clickhouse.https_url().expect("https URL");
    let config = |url: &str, ca_file: &Path| ClickHouseConfig {
        url: url.to_string(),
        tls_ca_file: Some(ca_file.to_path_buf()),
        ..ClickHouseConfig::default()
    };
    let tls_error = |result: Result<(), StoreError>| match result {
        Err(StoreError::Tls { message, .. }) => message,
        other => panic!("expected a TLS error, got {other:?}"),
    };

    Store::new(&config(&https_url, &ca_file))
        .expect("settings")
        .ping()
        .await
        .expect("HTTPS with the right CA and host");

    let other_ca = TestCa::new("wrong CA").expect("other CA");
    let store = Store::new(&config(&https_url, &other_ca.ca_file())).expect("settings");
    let message = tls_error(store.ping().await);
    assert!(
        message.contains("not issued by the configured CA"),
        "wrong CA: {message}"
    );

    let localhost = https_url.replace("127.0.0.1", "localhost");
    let store = Store::new(&config(&localhost, &ca_file)).expect("settings");
    let message = tls_error(store.ping().await);
    assert!(
        message.contains("not valid for the host name"),
        "wrong host: {message}"
    );

    // The plain HTTP port with a CA configured: refused before any request,
    // and an https URL on the plain port fails the handshake.
    let refused = Store::new(&config(&clickhouse.http_url(), &ca_file)).err();
    assert!(
        matches!(&refused, Some(StoreError::Settings(text)) if text.contains("not an https:// URL")),
        "{refused:?}"
    );
    let plain_port = clickhouse.http_url().replace("http://", "https://");
    let store = Store::new(&config(&plain_port, &ca_file)).expect("settings");
    let error = store.ping().await.expect_err("TLS to a plain-text port");
    assert!(!error.is_transient(), "{error}");

    let missing = ca.dir().join("missing.pem");
    let error = Store::new(&config(&https_url, &missing)).err();
    assert!(
        matches!(&error, Some(StoreError::Settings(text)) if text.contains("clickhouse.tls_ca_file")),
        "{error:?}"
    );

    // An expired certificate, and the aggregator stops at start on it.
    let expired = ip_only_server_certificate(&ca, "expired", Validity::Expired);
    let expired_clickhouse =
        ClickHouseServer::start_with_tls(None, &expired).expect("clickhouse, expired certificate");
    let expired_url = expired_clickhouse.https_url().expect("https URL");
    let store = Store::new(&config(&expired_url, &ca_file)).expect("settings");
    let message = tls_error(store.ping().await);
    assert!(message.contains("has expired"), "expired: {message}");

    let nats = NatsServer::start().expect("nats-server");
    let dir = tempfile::tempdir().expect("temp dir");
    let aggregator_toml = format!(
        "[nats]\nurl = \"{}\"\n\n[clickhouse]\nurl = \"{expired_url}\"\ndatabase = \"{}\"\n\
         tls_ca_file = \"{}\"\n\n[telemetry]\nlisten = \"127.0.0.1:0\"\n",
        nats.url(),
        cctv_testkit::unique_name("tls"),
        ca_file.display(),
    );
    let mut aggregator = ServiceProcess::start(Kind::Aggregator, dir.path(), &aggregator_toml, &[]);
    let status = aggregator.wait_exit(Duration::from_secs(30)).await;
    assert!(
        !status.success(),
        "the aggregator ran against an expired certificate"
    );
    assert!(
        aggregator.log_contains("has expired"),
        "{}",
        aggregator.log_tail()
    );
}

/// A JWT of the NATS decentralised auth, signed with `issuer`'s nkey.
fn nats_jwt(issuer: &nkeys::KeyPair, subject: &str, name: &str, nats: serde_json::Value) -> String {
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = engine.encode(r#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let claims = serde_json::json!({
        "jti": uuid::Uuid::new_v4().simple().to_string().to_uppercase(),
        "iat": chrono::Utc::now().timestamp(),
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
        "nats": nats,
    });
    let claims = engine.encode(claims.to_string());
    let signed = format!("{header}.{claims}");
    let signature = issuer.sign(signed.as_bytes()).expect("sign the JWT");
    format!("{signed}.{}", engine.encode(signature))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nkey_seeds_and_creds_files_authenticate_over_tls() {
    let ca = TestCa::new("auth CA").expect("test CA");
    let ca_file = ca.ca_file();
    let certificate = ca.server_certificate("server").expect("server certificate");
    let tls = NatsTls {
        certificate: &certificate,
        ca_file: None,
        client_certificates: ClientCertificates::NotRequested,
    };

    // An nkey user: the seed comes from CCTV_NATS_NKEY_SEED only.
    let user = nkeys::KeyPair::new_user();
    let nats = NatsServer::start_with_tls(
        &tls,
        &format!(
            "authorization {{ users = [ {{ nkey: \"{}\" }} ] }}",
            user.public_key()
        ),
        &[],
    )
    .expect("nats-server with an nkey user");
    let seed = user.seed().expect("seed");
    let mut config = tls_nats_config(&nats.url(), &ca_file, None);
    config.apply_env(|name| (name == "CCTV_NATS_NKEY_SEED").then(|| seed.clone()));
    let client = connect(&config).await.expect("nkey over TLS");
    round_trip(&client).await;
    let mut wrong = tls_nats_config(&nats.url(), &ca_file, None);
    wrong.nkey_seed = Some(nkeys::KeyPair::new_user().seed().expect("seed"));
    assert!(
        matches!(connect(&wrong).await, Err(BusError::Unauthorized { .. })),
        "another seed was accepted"
    );

    // A `.creds` file (user JWT + seed) under an operator and account that
    // the server trusts (memory resolver).
    let operator = nkeys::KeyPair::new_operator();
    let account = nkeys::KeyPair::new_account();
    // JetStream (on in every testkit server) needs a system account.
    let system = nkeys::KeyPair::new_account();
    let creds_user = nkeys::KeyPair::new_user();
    let operator_jwt = nats_jwt(
        &operator,
        &operator.public_key(),
        "test-operator",
        serde_json::json!({"type": "operator", "version": 2}),
    );
    let account_jwt = nats_jwt(
        &operator,
        &account.public_key(),
        "test-account",
        serde_json::json!({
            "limits": {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
                       "wildcards": true, "conn": -1, "leaf": -1},
            "default_permissions": {"pub": {}, "sub": {}},
            "type": "account", "version": 2
        }),
    );
    let system_jwt = nats_jwt(
        &operator,
        &system.public_key(),
        "SYS",
        serde_json::json!({"type": "account", "version": 2}),
    );
    let user_jwt = nats_jwt(
        &account,
        &creds_user.public_key(),
        "test-user",
        serde_json::json!({"pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1,
                           "type": "user", "version": 2}),
    );
    let trusted = NatsServer::start_with_tls(
        &tls,
        &format!(
            "operator: \"{operator_jwt}\"\nsystem_account: {system_key}\nresolver: MEMORY\n\
             resolver_preload: {{\n  {account_key}: \"{account_jwt}\"\n  {system_key}: \"{system_jwt}\"\n}}\n",
            account_key = account.public_key(),
            system_key = system.public_key(),
        ),
        &[],
    )
    .expect("nats-server trusting the operator");
    let dir = tempfile::tempdir().expect("temp dir");
    let creds_path = dir.path().join("user.creds");
    std::fs::write(
        &creds_path,
        format!(
            "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
             -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
            creds_user.seed().expect("seed")
        ),
    )
    .expect("write creds");
    let mut config = tls_nats_config(&trusted.url(), &ca_file, None);
    config.apply_env(|name| (name == "CCTV_NATS_CREDS").then(|| creds_path.display().to_string()));
    let client = connect(&config).await.expect(".creds over TLS");
    round_trip(&client).await;
    let mut no_creds = tls_nats_config(&trusted.url(), &ca_file, None);
    no_creds.nkey_seed = Some(creds_user.seed().expect("seed"));
    assert!(
        connect(&no_creds).await.is_err(),
        "a seed without its JWT was accepted"
    );
}

/// A message published by `client` comes back on its own subscription.
async fn round_trip(client: &async_nats::Client) {
    use futures::StreamExt as _;
    let mut subscription = client.subscribe("tls.check").await.expect("subscribe");
    client
        .publish("tls.check", "ping".into())
        .await
        .expect("publish");
    client.flush().await.expect("flush");
    let message = tokio::time::timeout(Duration::from_secs(10), subscription.next())
        .await
        .expect("message within 10 s")
        .expect("subscription open");
    assert_eq!(&message.payload[..], b"ping");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_routes_run_in_mutual_tls() {
    let ca = TestCa::new("route CA").expect("test CA");
    let route = ca
        .issue(&CertificateRequest {
            name: "route",
            common_name: "127.0.0.1",
            alt_names: &["IP:127.0.0.1"],
            usage: CertificateUse::ServerAndClient,
            validity: Validity::Days(30),
        })
        .expect("route certificate");
    let cluster = NatsCluster::start_with_route_tls(3, "", Some((&route, &ca.ca_file())))
        .expect("3 nodes with TLS routes");
    let nodes = cluster.nodes();
    for node in nodes {
        let config = std::fs::read_to_string(node.temp_dir().join("nats.conf")).expect("config");
        assert!(
            config.contains("verify: true"),
            "route TLS not configured:\n{config}"
        );
    }
    // A replicated stream needs the routes: created through node 1, written
    // through node 2, its count read through node 3.
    let streams = StreamsConfig {
        raw: StreamSettings {
            replicas: 3,
            ..StreamsConfig::default().raw
        },
        ..StreamsConfig::default()
    };
    let first = async_nats::connect(nodes[0].url()).await.expect("node 1");
    let first_js = jetstream::new(first);
    // The meta leader is elected a moment after the nodes answer.
    cctv_testkit::poll(
        "an R3 stream over TLS routes",
        Duration::from_secs(60),
        Duration::from_millis(500),
        || async {
            cctv_bus::ensure_stream(&first_js, cctv_bus::StreamKind::Raw, &streams.raw)
                .await
                .map_err(|error| error.to_string())
        },
    )
    .await;
    let second = jetstream::new(async_nats::connect(nodes[1].url()).await.expect("node 2"));
    for n in 0..10 {
        second
            .publish("cctv.raw.canonical.gw1", format!("{n}").into())
            .await
            .expect("publish")
            .await
            .expect("acked by the R3 stream");
    }
    let third = jetstream::new(async_nats::connect(nodes[2].url()).await.expect("node 3"));
    let mut stream = third
        .get_stream("CCTV_RAW")
        .await
        .expect("stream through node 3");
    let info = stream.info().await.expect("info");
    assert_eq!(info.state.messages, 10);
    assert_eq!(
        info.cluster.as_ref().map(|cluster| cluster.replicas.len()),
        Some(2),
        "two followers"
    );
}
