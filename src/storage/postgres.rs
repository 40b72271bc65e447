//! The PostgreSQL backend, for several nodes sharing one database. One pool serves reads and
//! writes; conversation rows are locked with `for update` while a message takes its seq.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use sqlx::ConnectOptions;
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
            .application_name("confab")
            .log_statements(tracing::log::LevelFilter::Off)
            .log_slow_statements(tracing::log::LevelFilter::Off, Duration::from_secs(3600));
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

impl PgStore {
    /// What, in the server's settings for this database, can lose an acknowledged write:
    /// `fsync` off, `synchronous_commit` off, `full_page_writes` off.
    pub async fn durability_risks(&self) -> anyhow::Result<Vec<String>> {
        let (fsync, commit, pages): (String, String, String) = sqlx::query_as(
            "select current_setting('fsync'), current_setting('synchronous_commit'), \
             current_setting('full_page_writes')",
        )
        .fetch_one(&self.writer)
        .await?;
        let mut risks = Vec::new();
        if fsync == "off" {
            risks.push("PostgreSQL fsync=off".to_owned());
        }
        if commit == "off" {
            risks.push("PostgreSQL synchronous_commit=off".to_owned());
        }
        if pages == "off" {
            risks.push("PostgreSQL full_page_writes=off".to_owned());
        }
        Ok(risks)
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
    migrate_lock = "select pg_advisory_xact_lock(7419)",
    placeholder = '$'
);

impl PgStore {
    /// Bulk message insert for imports: one `unnest` of column arrays per 10,000 rows, in the
    /// caller's transaction (no parameter limit, one round trip).
    async fn bulk_insert_messages(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
        rows: &[super::sql::ImportRow],
    ) -> super::StoreResult<()> {
        for chunk in rows.chunks(10_000) {
            self.queries
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let col = |f: fn(&super::sql::ImportRow) -> Option<String>| -> Vec<Option<String>> {
                chunk.iter().map(f).collect()
            };
            sqlx::query(
                "insert into messages (message_id, conversation_id, seq, sender_id, kind, text, \
                 encrypted, attachments, custom, external_id, created_at) \
                 select * from unnest($1::text[], $2::text[], $3::int8[], $4::text[], $5::text[], \
                 $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::int8[])",
            )
            .bind(col(|r| Some(r.id.clone())))
            .bind(col(|r| Some(r.conversation_id.clone())))
            .bind(chunk.iter().map(|r| r.seq).collect::<Vec<i64>>())
            .bind(col(|r| r.sender_id.clone()))
            .bind(col(|r| Some(r.kind.clone())))
            .bind(col(|r| r.text.clone()))
            .bind(col(|r| r.encrypted.clone()))
            .bind(col(|r| Some(r.attachments.clone())))
            .bind(col(|r| Some(r.custom.clone())))
            .bind(col(|r| Some(r.external_id.clone())))
            .bind(chunk.iter().map(|r| r.created_at).collect::<Vec<i64>>())
            .execute(&mut **tx)
            .await
            .map_err(super::db_error)?;
        }
        Ok(())
    }
}
