//! Confab: a chat backend. REST for data, a batched durable write path, a change log that sync,
//! realtime and webhooks read, on embedded SQLite or on PostgreSQL.
//!
//! Where things live:
//! - `config`: configuration from the environment, refused early with the variable's name;
//! - `domain`: the objects of the contract and their validation;
//! - `storage`: the `Store` trait and its SQLite and PostgreSQL implementations (all SQL is here);
//! - `write_path`: the batcher that commits concurrent writes together;
//! - `http`: the axum edge (auth, errors, handlers, ops endpoints);
//! - `import`: bulk NDJSON import and the Facebook Messenger source;
//! - `jobs`: background work: webhook delivery from the outbox, retention;
//! - `realtime`: Socket.IO delivery, client events, presence, the Redis bridge between nodes;
//! - `app`: wiring: build, bind, run until stopped;
//! - `auth`: JWT tokens; `telemetry`: tracing and metrics;
//! - `fuzzing`: the parsers of untrusted input with their contracts, for the `fuzz/` targets.

pub mod app;
pub mod auth;
pub mod config;
pub mod domain;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod import;
pub mod jobs;
pub mod realtime;
pub mod storage;
pub mod telemetry;
pub mod write_path;
