//! API and storage contract tests: one test binary, each scenario against a real server on
//! port 0, on SQLite and on PostgreSQL (`both!`).

mod helpers;

mod bench;
mod cli;
mod concurrency;
mod conversations;
mod edge;
mod graph;
mod hardening;
mod import;
mod messages;
mod messenger;
mod realtime;
mod receiver;
mod sio;
mod storage;
mod sweep;
mod sync;
mod users;
mod webhooks;
