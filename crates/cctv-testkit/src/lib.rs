//! Test-only kit that starts real `nats-server` and `clickhouse-server` processes.
//!
//! Every server gets free ports on 127.0.0.1 and its own temporary directory under
//! [`std::env::temp_dir`] (prefix `cctv-testkit-`). Dropping a server kills the process
//! and removes the directory. A small shell watchdog per process kills the server (and
//! removes its directory) if the test process dies without running destructors, so
//! aborted test runs do not leak servers.
//!
//! Code map:
//! - `error`: the [`TestkitError`] enum.
//! - `environment`: binary lookup and [`require_servers`].
//! - `ports`: [`free_port`] and waiting for a fixed port to become free.
//! - `wait`: [`wait_until`], polling with a deadline.
//! - `names`: [`unique_name`] for databases and streams.
//! - `process`: spawning, log capture, stopping and the watchdog.
//! - `http`: a minimal HTTP/1.0 client over `std::net::TcpStream`.
//! - `nats_binary`: which nats-server runs ([`nats_server_binary`]: the
//!   `CCTV_NATS_SERVER_BIN` override, the release pinned in `scripts/versions.env`
//!   and installed by `scripts/install-nats.sh`, else `PATH`), refusing releases
//!   older than 2.10.
//! - `nats`: [`NatsServer`] and [`NatsCluster`].
//! - `clickhouse`: [`ClickHouseServer`], [`shared_clickhouse`] and
//!   [`ClickHouseCluster`] (shards of replicas on one [`ZooKeeperServer`]).
//! - `zookeeper`: [`ZooKeeperServer`], Debian's `zookeeper` package.
//! - `mosquitto`: [`MosquittoServer`], Debian's `mosquitto` MQTT broker.
//! - `tls`: [`TestCa`], certificates made with `openssl` at test time (valid,
//!   expired, for another host name); the servers take them with
//!   [`NatsServer::start_with_tls`] and [`ClickHouseServer::start_with_tls`],
//!   which copy them into their temp dirs.
//!
//! Invariants: no port is handed out twice per process; a server value never outlives
//! its process (Drop kills it); readiness is always polled with a deadline.

mod clickhouse;
mod environment;
mod error;
mod http;
mod metrics;
mod mosquitto;
mod names;
mod nats;
mod nats_binary;
mod ports;
mod process;
mod tls;
mod wait;
mod zookeeper;

pub use crate::{
    clickhouse::{shared_clickhouse, ClickHouseCluster, ClickHouseServer, CLUSTER_NAME},
    environment::require_servers,
    error::TestkitError,
    metrics::{metric_samples, metrics_page},
    mosquitto::MosquittoServer,
    names::unique_name,
    nats::{ClientCertificates, NatsCluster, NatsServer, NatsTls, NATS_JETSTREAM_ENV},
    nats_binary::{nats_server_binary, nats_server_version, pinned_nats_version},
    ports::free_port,
    process::KEEP_DIRS_ENV,
    tls::{CertificateFiles, CertificateRequest, CertificateUse, TestCa, Validity},
    wait::{poll, poll_until, wait_until},
    zookeeper::ZooKeeperServer,
};
