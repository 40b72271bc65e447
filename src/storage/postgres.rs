//! The PostgreSQL backend, for several nodes sharing one database. One pool serves reads and
//! writes; conversation rows are locked with `for update` while a message takes its seq.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

pub struct PgStore {
    /// The pool writes go through (the same pool as `reader`: PostgreSQL needs no split).
    writer: PgPool,
    reader: PgPool,
    /// Statements sent, for the query-count tests.
    queries: Arc<AtomicU64>,
    /// Set when webhooks are configured: deliveries are written with the changes.
    outbox: std::sync::OnceLock<Arc<dyn crate::storage::Outbox>>,
}

impl PgStore {
    pub async fn open(url: &str, db_timeout: Duration, pool_size: u32) -> anyhow::Result<Self> {
        // A statement slower than CONFAB_DB_TIMEOUT is cancelled and answered 503.
        let timeout_ms = db_timeout.as_millis().to_string();
        let options = PgConnectOptions::from_str(url)?
            .options([("statement_timeout", timeout_ms.as_str())])
            .application_name("confab");
        let pool = PgPoolOptions::new()
            .max_connections(pool_size)
            .idle_timeout(Duration::from_secs(60))
            .acquire_timeout(db_timeout)
            .connect_with(options)
            .await?;
        let store = PgStore {
            writer: pool.clone(),
            reader: pool,
            queries: Arc::default(),
            outbox: Default::default(),
        };
        store.migrate(super::migrate::POSTGRES).await?;
        Ok(store)
    }
}

super::sql::sql_store!(
    PgStore,
    sqlx::Postgres,
    sqlx::postgres::PgRow,
    backend = Backend::Postgres,
    begin = "begin",
    lock = "for update of c",
    skip_locked = "for update skip locked",
    migrate_lock = "select pg_advisory_xact_lock(7419)"
);
