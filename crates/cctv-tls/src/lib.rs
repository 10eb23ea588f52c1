//! TLS for the pipeline's clients (NATS and ClickHouse): one place that reads
//! the configured files and one that says what a failed handshake rejected.
//!
//! - `files`: [`client_config`] builds a rustls client configuration from a CA
//!   file (else the system's roots) and an optional client certificate and
//!   key; every unreadable, empty or malformed file is a [`TlsError`] naming
//!   the file and the setting.
//! - `failure`: [`describe_failure`] finds the rustls error in an error's
//!   source chain and says in words what was wrong (the server's certificate
//!   is expired, not from the configured CA, not for this host name; the
//!   server wants a client certificate, or refused ours).
//!
//! Invariants: the crypto provider is always ring (the one async-nats uses),
//! never the process default, so two providers in one build cannot make a
//! configuration fail; no setting turns verification off. This crate knows
//! no other `cctv-*` crate, no NATS and no ClickHouse.

mod error;
mod failure;
mod files;

pub use error::TlsError;
pub use failure::describe_failure;
pub use files::{client_config, ClientIdentity};
pub use rustls::ClientConfig;
