//! Integration tests of the whole pipeline against real `nats-server` and
//! `clickhouse-server` processes started by `cctv-testkit`. Each test gets its
//! own NATS server and its own ClickHouse database, so tests run in parallel.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod analyst_data;
mod audit;
mod chdb;
mod chdb_cli;
mod cluster;
mod cookbook;
mod deploy_files;
mod faults;
mod foundation;
mod gateway;
mod grafana;
mod harness;
mod hostile;
mod layering;
mod mixed;
mod privacy;
mod processes;
mod replay;
mod report;
mod rollup;
mod scaling;
mod security;
mod store;
mod tls;
mod views;
