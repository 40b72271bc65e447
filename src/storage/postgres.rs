//! The PostgreSQL backend, for several nodes sharing one database. One pool serves reads and
//! writes; conversation rows are locked with `for update` while a message takes its seq.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use sqlx::ConnectOptions;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

/// A pooled connection idle at least this long is pinged before it is handed out.
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);

pub struct PgStore {
    /// The pool writes go through (the same pool as `reader`: PostgreSQL needs no split).
    writer: PgPool,
    reader: PgPool,
    /// Statements sent, for the query-count tests.
    queries: Arc<AtomicU64>,
    /// Set when webhooks are configured: deliveries are written with the changes.
    outbox: std::sync::OnceLock<Arc<dyn crate::storage::Outbox>>,
    /// Whether this role may set `session_replication_role` (a superuser, or granted `SET` on
    /// it): then an import's COPY and its new members skip the per-row foreign-key checks (see
    /// `bulk_insert_messages` and `import_members`).
    import_skips_fk_check: bool,
}

impl PgStore {
    /// After a commit (`SqliteStore::committed` has work to do; PostgreSQL none).
    fn committed(&self) {}

    /// A connection for reading (the one pool; `SqliteStore::read` has the same shape).
    async fn read(
        &self,
    ) -> crate::storage::StoreResult<sqlx::pool::PoolConnection<sqlx::Postgres>> {
        self.reader
            .acquire()
            .await
            .map_err(crate::storage::db_error)
    }

    /// At most this many connections are open.
    fn read_connections(&self) -> u32 {
        self.reader.options().get_max_connections()
    }

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
            // sqlx pings every connection it hands out by default: a round trip to the backend
            // before each request's statement. A connection in use moments ago is alive; one
            // that sat idle for a while is pinged (and replaced if the server went away).
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for >= PING_IF_IDLE_FOR {
                        sqlx::Connection::ping(conn).await?;
                    }
                    Ok(true)
                })
            })
            .connect_with(options)
            .await?;
        // Tried in a transaction that is rolled back: a refusal is the answer, not an error.
        let mut probe = pool.begin().await?;
        let import_skips_fk_check = sqlx::query("set local session_replication_role = replica")
            .execute(&mut *probe)
            .await
            .is_ok();
        probe.rollback().await?;
        let store = PgStore {
            writer: pool.clone(),
            reader: pool,
            queries: Arc::default(),
            outbox: Default::default(),
            import_skips_fk_check,
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

    /// What, in the server's settings, leaves the rows Confab updates in place to grow without
    /// bound: every message updates its conversation's row and its members' rows (the
    /// listing's order), so those tables turn over fast and need (auto)vacuum. Warned about at
    /// start, not refused: an operator may vacuum on a schedule of their own.
    pub async fn maintenance_warnings(&self) -> anyhow::Result<Vec<String>> {
        // A table's setting counts even while autovacuum is off as a whole: it outlasts
        // turning it on. `option_value::bool` reads every spelling (off, 0, no, false).
        let off: Vec<(String, String)> = sqlx::query_as(
            "select 'setting', s.name from (values ('autovacuum'), ('track_counts')) s (name) \
               where current_setting(s.name) = 'off' \
             union all \
             select 'table', c.relname::text from pg_class c \
               cross join pg_options_to_table(c.reloptions) o \
               where c.oid in (to_regclass('members'), to_regclass('conversations')) \
               and o.option_name = 'autovacuum_enabled' and not o.option_value::bool",
        )
        .fetch_all(&self.writer)
        .await?;
        const EFFECT: &str = "the dead row versions every message leaves in `members` and \
            `conversations` stay in their indexes until a vacuum; turn it on or vacuum those \
            tables regularly";
        Ok(off
            .into_iter()
            .map(|(kind, name)| match kind.as_str() {
                "setting" => format!("PostgreSQL {name} is off: {EFFECT}"),
                _ => format!("PostgreSQL autovacuum is off for table {name}: {EFFECT}"),
            })
            .collect())
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
    analyze = [
        "analyze messages",
        "analyze users, conversations, members, conversation_tags, changes"
    ],
    json_agg = "json_agg",
    json_array = "json_build_array",
    import_shards = 2,
    import_tx_messages = usize::MAX,
    placeholder = '$'
);

/// Appends `s` to a `COPY … (format text)` row: backslash, tab, newline and carriage return
/// escaped (U+0000 cannot occur: every text field refuses it).
fn copy_text(buf: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    if !bytes
        .iter()
        .any(|b| matches!(b, b'\\' | b'\t' | b'\n' | b'\r'))
    {
        buf.extend_from_slice(bytes);
        return;
    }
    for &b in bytes {
        match b {
            b'\\' => buf.extend_from_slice(b"\\\\"),
            b'\t' => buf.extend_from_slice(b"\\t"),
            b'\n' => buf.extend_from_slice(b"\\n"),
            b'\r' => buf.extend_from_slice(b"\\r"),
            _ => buf.push(b),
        }
    }
}

fn copy_opt(buf: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => copy_text(buf, s),
        None => buf.extend_from_slice(b"\\N"),
    }
}

/// `sql` with `{rows}` as `select * from unnest($1::text[], $2::int8[], …)` over `cols`, bound
/// one array per column (see `Col`).
pub(crate) fn rows_query<'q>(
    sql: &str,
    cols: Vec<super::sql::Col<'q>>,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    use super::sql::Col;
    let arrays: Vec<String> = cols
        .iter()
        .enumerate()
        .map(|(i, c)| match c {
            Col::Int(_) => format!("${}::int8[]", i + 1),
            Col::Text(_) | Col::OptText(_) => format!("${}::text[]", i + 1),
        })
        .collect();
    let sql = sql.replace(
        "{rows}",
        &format!("select * from unnest({})", arrays.join(", ")),
    );
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    for c in cols {
        q = match c {
            Col::Text(v) => q.bind(v),
            Col::OptText(v) => q.bind(v),
            Col::Int(v) => q.bind(v),
        };
    }
    q
}

impl PgStore {
    /// Runs `sql`, whose `{in}` stands for a membership test of the statement's only
    /// parameter, for all of `values` at once: `= any($1)` with one text array (one plan, one
    /// round trip, however many values).
    async fn fetch_in(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
        sql: &str,
        values: &[&str],
    ) -> super::StoreResult<Vec<sqlx::postgres::PgRow>> {
        if values.is_empty() {
            return Ok(Vec::new());
        }
        self.queries
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        sqlx::query(sqlx::AssertSqlSafe(sql.replace("{in}", "= any($1)")))
            .bind(values)
            .fetch_all(&mut **tx)
            .await
            .map_err(super::db_error)
    }

    /// After an import batch's messages: the touched conversations' denormalized fields, and
    /// their members' activity times and (for members who had read everything) read
    /// positions, one statement each over arrays
    /// (a join on the primary key, however many conversations).
    async fn update_touched(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
        touched: &[super::sql::Touched],
    ) -> super::StoreResult<()> {
        if touched.is_empty() {
            return Ok(());
        }
        self.queries
            .fetch_add(2, std::sync::atomic::Ordering::Relaxed);
        let ids: Vec<&str> = touched.iter().map(|t| t.conversation_id.as_str()).collect();
        sqlx::query(
            "update conversations c set last_seq = v.new_last, \
             last_message_id = case when c.last_message_at is null or c.last_message_at <= v.last_at \
               then v.last_id else c.last_message_id end, \
             last_message_at = case when c.last_message_at is null or c.last_message_at <= v.last_at \
               then v.last_at else c.last_message_at end, \
             activity_at = greatest(c.activity_at, v.last_at), \
             first_message_at = least(coalesce(c.first_message_at, v.first_at), v.first_at) \
             from unnest($1::text[], $2::int8[], $3::text[], $4::int8[], $5::int8[]) \
               as v(id, new_last, last_id, last_at, first_at) \
             where c.conversation_id = v.id",
        )
        .bind(&ids)
        .bind(touched.iter().map(|t| t.new_last).collect::<Vec<i64>>())
        .bind(touched.iter().map(|t| t.last_id.as_str()).collect::<Vec<&str>>())
        .bind(touched.iter().map(|t| t.last_at).collect::<Vec<i64>>())
        .bind(touched.iter().map(|t| t.first_at).collect::<Vec<i64>>())
        .execute(&mut **tx)
        .await
        .map_err(super::db_error)?;
        // Every member: the copy of the activity time; those who had read everything: the
        // read position.
        sqlx::query(
            "update members m set last_read_seq = case when m.last_read_seq >= v.old_last \
               and m.last_read_seq < v.read_to then v.read_to else m.last_read_seq end, \
             activity_at = greatest(m.activity_at, v.last_at) \
             from unnest($1::text[], $2::int8[], $3::int8[], $4::int8[]) \
               as v(id, old_last, read_to, last_at) \
             where m.conversation_id = v.id",
        )
        .bind(&ids)
        .bind(touched.iter().map(|t| t.old_last).collect::<Vec<i64>>())
        .bind(touched.iter().map(|t| t.read_to).collect::<Vec<i64>>())
        .bind(touched.iter().map(|t| t.last_at).collect::<Vec<i64>>())
        .execute(&mut **tx)
        .await
        .map_err(super::db_error)?;
        Ok(())
    }

    /// Bulk message insert for imports: one `COPY messages FROM STDIN` per batch, in the
    /// caller's transaction, sent in 1 MiB chunks while the rows are formatted.
    ///
    /// Where the role may, the COPY runs with `session_replication_role = replica`, which skips
    /// the foreign-key trigger of each row (a query per message, a sixth of the import's
    /// database time: BENCHMARKS.md, Import). The reference holds without it: every row's
    /// conversation was read and locked `for update` earlier in this transaction, and
    /// conversations are never deleted. Unique indexes are not triggers and still refuse
    /// repeats. The setting is local to the transaction and set back right after the COPY.
    async fn bulk_insert_messages(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
        rows: &[super::sql::ImportRow<'_>],
    ) -> super::StoreResult<()> {
        if rows.is_empty() {
            return Ok(());
        }
        self.fk_checks(tx, false).await?;
        self.copy_messages(tx, rows).await?;
        self.fk_checks(tx, true).await?;
        Ok(())
    }

    /// The members of the conversations an import batch creates, in the same transaction
    /// that created them and made their users. Where the role may, without the per-row
    /// foreign-key checks (a query and a row lock for each of the two references of every
    /// member: half of the insert's time, measured in BENCHMARKS.md, Import), which hold
    /// without them: both rows were written or found earlier in this transaction, and users
    /// and conversations are never deleted.
    async fn import_members(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
        rows: &[(&str, &str, &str, i64)],
    ) -> super::StoreResult<()> {
        self.fk_checks(tx, false).await?;
        self.insert_members(tx, rows).await?;
        self.fk_checks(tx, true).await?;
        Ok(())
    }

    /// Turns the per-row foreign-key checks of `tx` off or back on, where the role may
    /// (`import_skips_fk_check`; otherwise they stay on): `session_replication_role`
    /// `replica` skips ordinary triggers (the foreign-key checks), `origin` is the default.
    async fn fk_checks(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
        on: bool,
    ) -> super::StoreResult<()> {
        if !self.import_skips_fk_check {
            return Ok(());
        }
        let sql = if on {
            "set local session_replication_role = origin"
        } else {
            "set local session_replication_role = replica"
        };
        self.queries
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        sqlx::query(sql)
            .execute(&mut **tx)
            .await
            .map_err(super::db_error)?;
        Ok(())
    }

    async fn copy_messages(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
        rows: &[super::sql::ImportRow<'_>],
    ) -> super::StoreResult<()> {
        self.queries
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut copy = tx
            .copy_in_raw(
                "copy messages (message_id, conversation_id, seq, sender_id, kind, text, \
                 encrypted, attachments, custom, external_id, created_at) from stdin",
            )
            .await
            .map_err(super::db_error)?;
        let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
        let mut failed = None;
        for r in rows {
            let (seq, at) = (r.seq.to_string(), r.created_at.to_string());
            let fields: [Option<&str>; 11] = [
                Some(&r.id),
                Some(r.conversation_id),
                Some(&seq),
                r.sender_id,
                Some(r.kind),
                r.text,
                r.encrypted.as_deref(),
                Some(r.attachments.as_ref()),
                Some(r.custom.as_ref()),
                Some(r.external_id),
                Some(&at),
            ];
            for (k, field) in fields.into_iter().enumerate() {
                if k > 0 {
                    buf.push(b'\t');
                }
                copy_opt(&mut buf, field);
            }
            buf.push(b'\n');
            if buf.len() >= 1 << 20 {
                if let Err(e) = copy.send(std::mem::take(&mut buf)).await {
                    failed = Some(e);
                    break;
                }
                buf.reserve(1 << 20);
            }
        }
        if failed.is_none() && !buf.is_empty() {
            failed = copy.send(buf).await.err();
        }
        match failed {
            None => {
                copy.finish().await.map_err(super::db_error)?;
                Ok(())
            }
            Some(e) => {
                let _ = copy.abort(e.to_string()).await;
                Err(super::db_error(e))
            }
        }
    }
}
