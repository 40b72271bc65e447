//! The embedded backend: one SQLite file in WAL mode with `synchronous=FULL`, so an
//! acknowledged write survives power loss. One writer connection (SQLite has one writer at a
//! time anyway; holding it in-process means no `SQLITE_BUSY` between our own transactions) and
//! a pool of read-only connections that WAL lets run beside it.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use sqlx::ConnectOptions;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};

pub struct SqliteStore {
    /// The only connection that writes; `begin immediate` takes the file's write lock.
    writer: SqlitePool,
    /// Read-only connections for listing, paging and sync.
    reader: Readers,
    /// Statements sent, for the query-count tests.
    queries: Arc<AtomicU64>,
    /// Set when webhooks are configured: deliveries are written with the changes.
    outbox: std::sync::OnceLock<Arc<dyn crate::storage::Outbox>>,
    /// Copies the WAL into the database file beside the writer.
    checkpointer: Checkpointer,
}

/// Frames in the WAL at which the writer checkpoints by itself, if the `Checkpointer` has not
/// kept up. SQLite's default is 1,000: the commit that passes it copies the WAL's pages into
/// the database file and syncs it before the writer goes on (12% of the writer's time in an
/// import, BENCHMARKS.md, 2026-11-24 session 15). A transaction of an import batch writes
/// about 4,000 frames, so the limit is above two of them.
const WRITER_CHECKPOINT_FRAMES: u32 = 10_000;

/// The size, in bytes, the WAL file is cut back to when it restarts from its beginning: an
/// import's transactions grow it past `WRITER_CHECKPOINT_FRAMES` (72 MB measured), and without
/// a limit the file keeps its largest size.
const WAL_SIZE_LIMIT: u64 = 64 * 1024 * 1024;

/// The least time between two checkpoints of the `Checkpointer`: the commits in between wait
/// for the next one, so one copy of a page and one sync of the file serve several of them.
/// Measured on sends at 16 against the writer's own checkpoints (BENCHMARKS.md, session 15):
/// at 10 ms the throughput about the same and a lower p99; at 25 ms 8-32% more throughput in
/// two runs at the same p99; at 100 ms and 1 s twice the p99.
const CHECKPOINT_GAP: Duration = Duration::from_millis(25);

/// A connection of its own that copies committed pages from the WAL into the database file
/// (`wal_checkpoint(PASSIVE)`, which blocks neither the writer nor a reader), woken by the
/// writer's commits, so that the writer does not do it after every 1,000 frames. The WAL
/// restarts from its beginning at the first write after all of it is copied. Stopped when the
/// store drops.
struct Checkpointer {
    wake: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Checkpointer {
    async fn start(options: SqliteConnectOptions) -> anyhow::Result<Self> {
        let mut conn = Some(options.connect().await?);
        let wake = Arc::new(tokio::sync::Notify::new());
        let woken = wake.clone();
        let task = tokio::spawn(async move {
            let mut failing = false;
            loop {
                woken.notified().await;
                // A connection lost to a failure is opened again first.
                let done = async {
                    let c = match &mut conn {
                        Some(c) => c,
                        None => conn.insert(options.connect().await?),
                    };
                    sqlx::query("pragma wal_checkpoint(passive)")
                        .execute(c)
                        .await
                        .map(drop)
                }
                .await;
                // Meanwhile the writer checkpoints by itself (`WRITER_CHECKPOINT_FRAMES`).
                match done {
                    Ok(()) => {
                        if failing {
                            tracing::info!("SQLite WAL checkpoints beside the writer again");
                        }
                        failing = false;
                    }
                    Err(e) => {
                        if !failing {
                            tracing::warn!(error = %e, "SQLite WAL checkpoint failed; the writer checkpoints by itself");
                        }
                        failing = true;
                        conn = None;
                    }
                }
                tokio::time::sleep(CHECKPOINT_GAP).await;
            }
        });
        Ok(Checkpointer { wake, task })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SqliteStore {
    pub async fn open(
        path: &str,
        db_timeout: Duration,
        sync: crate::config::SqliteSync,
    ) -> anyhow::Result<Self> {
        use crate::config::SqliteSync;
        let synchronous = match sync {
            SqliteSync::Off => SqliteSynchronous::Off,
            SqliteSync::Normal => SqliteSynchronous::Normal,
            SqliteSync::Full => SqliteSynchronous::Full,
            SqliteSync::Extra => SqliteSynchronous::Extra,
        };
        let base = SqliteConnectOptions::from_str(&format!("sqlite://{path}"))?
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(synchronous)
            .busy_timeout(db_timeout)
            .foreign_keys(true)
            .pragma("temp_store", "memory")
            .pragma("cache_size", "-16000")
            // Reads map the database file instead of copying each page they touch out of the
            // OS cache with a system call (a listing on a 10,000,000-message database touches
            // hundreds of pages spread over gigabytes). Writes still go through the WAL.
            .pragma("mmap_size", "68719476736")
            // Statements are traced by our own spans; sqlx's per-statement logs would print
            // whole bulk statements.
            .log_statements(tracing::log::LevelFilter::Off)
            .log_slow_statements(tracing::log::LevelFilter::Off, Duration::from_secs(3600));
        // No ping before each acquire (sqlx's default): for SQLite it is a round trip to the
        // connection's thread that cannot find anything wrong with an open file.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .test_before_acquire(false)
            .acquire_timeout(db_timeout)
            // The writer's page cache holds the hot index pages of a bulk import (the
            // `(conversation_id, seq)` index takes inserts at every conversation's end).
            .connect_with(
                base.clone()
                    .create_if_missing(true)
                    .pragma("cache_size", "-131072")
                    .pragma("wal_autocheckpoint", WRITER_CHECKPOINT_FRAMES.to_string())
                    .pragma("journal_size_limit", WAL_SIZE_LIMIT.to_string()),
            )
            .await?;
        let checkpointer = Checkpointer::start(base.clone()).await?;
        let store = SqliteStore {
            writer,
            checkpointer,
            // A connection's thread hands each row to the request through a channel; at
            // sqlx's default of 50 rows, a page's 51st row (the page and one more) could wait
            // for the request to drain the channel, one more sleep and wake of that thread.
            reader: Readers::new(base.read_only(true).row_buffer_size(128), 4, db_timeout),
            queries: Arc::default(),
            outbox: Default::default(),
        };
        store.migrate(super::migrate::SQLITE).await?;
        Ok(store)
    }
}

/// Counts statements that found their SQLite connection's thread gone (`WorkerCrashed`, see
/// `db_error`): when it moved, `Readers` drops its idle connections and opens new ones as
/// needed, since it does not test a connection when it comes back.
pub(crate) static WORKER_CRASHES: AtomicU64 = AtomicU64::new(0);

/// The read-only connections, opened as needed up to `max`. sqlx's pool sends every connection
/// that comes back to it a ping, a round trip to the connection's thread (no option turns it
/// off); SQLite reads are small enough that this round trip is a large part of one. Here a
/// connection goes back to the idle list as its guard drops. A read cancelled midway leaves the
/// connection sound (its thread stops the statement at its next row and resets it, and a read
/// outside a transaction holds nothing open), but busy until then: idle connections are handed
/// out oldest first, so the next request takes another one when there is one.
pub struct Readers {
    options: SqliteConnectOptions,
    idle: std::sync::Mutex<std::collections::VecDeque<SqliteConnection>>,
    permits: tokio::sync::Semaphore,
    max: usize,
    timeout: Duration,
    /// `WORKER_CRASHES` when the idle list was last known good.
    crashes_seen: AtomicU64,
}

/// A read connection, back to the idle list when dropped.
pub struct Reader<'a> {
    conn: Option<SqliteConnection>,
    readers: &'a Readers,
    /// `WORKER_CRASHES` when handed out: if it moved meanwhile, this connection may be the one
    /// whose thread is gone, and is not kept.
    crashes_at: u64,
    _permit: tokio::sync::SemaphorePermit<'a>,
}

impl Readers {
    fn new(options: SqliteConnectOptions, max: usize, timeout: Duration) -> Readers {
        Readers {
            options,
            idle: std::sync::Mutex::new(std::collections::VecDeque::with_capacity(max)),
            permits: tokio::sync::Semaphore::new(max),
            max,
            timeout,
            crashes_seen: AtomicU64::new(WORKER_CRASHES.load(std::sync::atomic::Ordering::Relaxed)),
        }
    }

    /// A connection: an idle one, or a new one while fewer than `max` are open; waits at most
    /// the database timeout for one to come back (`PoolTimedOut`, answered 503).
    pub async fn get(&self) -> Result<Reader<'_>, sqlx::Error> {
        let permit = tokio::time::timeout(self.timeout, self.permits.acquire())
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)?
            .map_err(|_| sqlx::Error::PoolClosed)?;
        let crashes = WORKER_CRASHES.load(std::sync::atomic::Ordering::Relaxed);
        let idle = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            if self
                .crashes_seen
                .swap(crashes, std::sync::atomic::Ordering::Relaxed)
                != crashes
            {
                idle.clear();
            }
            idle.pop_front()
        };
        let conn = match idle {
            Some(conn) => conn,
            None => self.options.connect().await?,
        };
        Ok(Reader {
            conn: Some(conn),
            readers: self,
            crashes_at: crashes,
            _permit: permit,
        })
    }

    /// Connections open, in use or idle.
    pub fn size(&self) -> u32 {
        (self.max - self.permits.available_permits() + self.num_idle()) as u32
    }

    pub fn num_idle(&self) -> usize {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

impl std::ops::Deref for Reader<'_> {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        self.conn.as_ref().expect("held until dropped")
    }
}

impl std::ops::DerefMut for Reader<'_> {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        self.conn.as_mut().expect("held until dropped")
    }
}

impl Drop for Reader<'_> {
    fn drop(&mut self) {
        // Back before the permit is released (fields drop after this), so the next holder of
        // a permit finds it.
        if let Some(conn) = self.conn.take()
            && WORKER_CRASHES.load(std::sync::atomic::Ordering::Relaxed) == self.crashes_at
        {
            self.readers
                .idle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push_back(conn);
        }
    }
}

impl SqliteStore {
    /// After a commit of the writer, `commit`'s or a statement's own outside a transaction:
    /// the `Checkpointer` copies its pages. A write that does not call it is copied with the
    /// next one that does, or by the writer past `WRITER_CHECKPOINT_FRAMES`.
    fn committed(&self) {
        self.checkpointer.wake.notify_one();
    }

    /// A read-only connection (`Readers`).
    async fn read(&self) -> crate::storage::StoreResult<Reader<'_>> {
        self.reader.get().await.map_err(crate::storage::db_error)
    }

    /// At most this many read connections are open.
    fn read_connections(&self) -> u32 {
        self.reader.max as u32
    }

    /// What, in the writer's settings, can lose an acknowledged write: `synchronous` below
    /// FULL (in WAL mode, NORMAL loses the last commits on power loss).
    pub async fn durability_risks(&self) -> anyhow::Result<Vec<String>> {
        let level: i64 = sqlx::query_scalar("pragma synchronous")
            .fetch_one(&self.writer)
            .await?;
        let mut risks = Vec::new();
        if level < 2 {
            let name = if level == 0 { "off" } else { "normal" };
            risks.push(format!("SQLite synchronous={name}"));
        }
        Ok(risks)
    }
}

/// At most this many messages in one transaction of an import batch (whole conversations, so a
/// conversation with more messages than this in one batch is a transaction of its own; a
/// larger batch is several transactions in a row). SQLite has one writer, and a live send waits
/// for the transaction in progress: at most 259 ms measured during an import on the 2-core
/// machine of BENCHMARKS.md, against 914 ms when a batch of 100,000 records was one.
pub const IMPORT_TX_MESSAGES: usize = 25_000;

super::sql::sql_store!(
    SqliteStore,
    sqlx::Sqlite,
    sqlx::sqlite::SqliteRow,
    backend = Backend::Sqlite,
    begin = "begin immediate",
    lock = "",
    skip_locked = "",
    migrate_lock = "select 1",
    analyze = [],
    json_agg = "json_group_array",
    json_array = "json_array",
    import_shards = 1,
    import_tx_messages = IMPORT_TX_MESSAGES,
    placeholder = '?'
);

/// `sql` with `{rows}` as `values (?,?,…),…` over `cols`, bound row by row (see `Col`). At
/// least one row; at most SQLite's 32,766 parameters in all.
pub(crate) fn rows_query<'q>(
    sql: &str,
    cols: Vec<super::sql::Col<'q>>,
) -> sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments> {
    use super::sql::Col;
    let n = cols.first().map_or(0, Col::len);
    let one = format!("({})", vec!["?"; cols.len()].join(","));
    let sql = sql.replace(
        "{rows}",
        &format!("values {}", vec![one.as_str(); n].join(",")),
    );
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    for i in 0..n {
        for c in &cols {
            q = match c {
                Col::Text(v) => q.bind(v[i]),
                Col::OptText(v) => q.bind(v[i]),
                Col::Int(v) => q.bind(v[i]),
            };
        }
    }
    q
}

impl SqliteStore {
    /// Runs `sql`, whose `{in}` stands for a membership test of the statement's parameters,
    /// for `values` in lists of 500 anonymous placeholders.
    async fn fetch_in(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
        sql: &str,
        values: &[&str],
    ) -> super::StoreResult<Vec<sqlx::sqlite::SqliteRow>> {
        let mut out = Vec::new();
        for chunk in values.chunks(500) {
            self.queries
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let list = format!("in ({})", vec!["?"; chunk.len()].join(","));
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.replace("{in}", &list)));
            for v in chunk {
                q = q.bind(*v);
            }
            out.extend(q.fetch_all(&mut **tx).await.map_err(super::db_error)?);
        }
        Ok(out)
    }

    /// The members of the conversations an import batch creates (on PostgreSQL without the
    /// per-row foreign-key checks; here SQLite's own checks are index lookups).
    async fn import_members(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
        rows: &[(&str, &str, &str, i64)],
    ) -> super::StoreResult<()> {
        self.insert_members(tx, rows).await
    }

    /// After an import batch's messages: the touched conversations' denormalized fields, and
    /// their members' activity times and (for members who had read everything) read
    /// positions, in 500-row statements.
    async fn update_touched(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
        touched: &[super::sql::Touched],
    ) -> super::StoreResult<()> {
        for chunk in touched.chunks(500) {
            self.queries
                .fetch_add(2, std::sync::atomic::Ordering::Relaxed);
            let values = |cols: usize| {
                let one = format!("({})", vec!["?"; cols].join(","));
                vec![one.as_str(); chunk.len()].join(",")
            };
            let sql = format!(
                "update conversations set last_seq = v.column2, \
                 last_message_id = case when conversations.last_message_at is null \
                   or conversations.last_message_at <= v.column4 then v.column3 \
                   else conversations.last_message_id end, \
                 last_message_at = case when conversations.last_message_at is null \
                   or conversations.last_message_at <= v.column4 then v.column4 \
                   else conversations.last_message_at end, \
                 activity_at = case when conversations.activity_at < v.column4 then v.column4 \
                   else conversations.activity_at end, \
                 first_message_at = min(coalesce(conversations.first_message_at, v.column5), \
                   v.column5) \
                 from (values {}) as v where conversations.conversation_id = v.column1",
                values(5)
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for t in chunk {
                q = q
                    .bind(&t.conversation_id)
                    .bind(t.new_last)
                    .bind(&t.last_id)
                    .bind(t.last_at)
                    .bind(t.first_at);
            }
            q.execute(&mut **tx).await.map_err(super::db_error)?;
            // Every member: the copy of the activity time; those who had read everything: the
            // read position.
            let sql = format!(
                "update members set last_read_seq = case when members.last_read_seq >= v.column2 \
                   and members.last_read_seq < v.column3 then v.column3 \
                   else members.last_read_seq end, \
                 activity_at = max(members.activity_at, v.column4) \
                 from (values {}) as v where members.conversation_id = v.column1",
                values(4)
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for t in chunk {
                q = q
                    .bind(&t.conversation_id)
                    .bind(t.old_last)
                    .bind(t.read_to)
                    .bind(t.last_at);
            }
            q.execute(&mut **tx).await.map_err(super::db_error)?;
        }
        Ok(())
    }

    /// Bulk message insert for imports: multi-row statements of 500 rows, all in the caller's
    /// transaction. The placeholders are anonymous (`?`): sqlx asks SQLite the name of every
    /// parameter it binds, which is a linear search for named or numbered ones (quadratic in a
    /// statement of thousands) and free for anonymous ones. The arguments of the next statement
    /// are built on this thread while SQLite's worker runs the previous one (two cores, not one
    /// after the other).
    async fn bulk_insert_messages(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
        rows: &[super::sql::ImportRow<'_>],
    ) -> super::StoreResult<()> {
        // Most imported messages are plain text: those leave the columns whose defaults they
        // have out of the statement (7 values a row instead of 11). Every value bound is
        // copied by SQLite, and binding is a fifth of its writer thread's work here.
        let is_plain = |r: &&super::sql::ImportRow<'_>| {
            r.kind == "regular"
                && r.encrypted.is_none()
                && r.attachments == "[]"
                && r.custom == "{}"
        };
        let sql = |plain: bool, rows: usize| {
            let (columns, row) = if plain {
                ("external_id, created_at", "(?,?,?,?,'regular',?,?,?)")
            } else {
                (
                    "encrypted, attachments, custom, external_id, created_at",
                    "(?,?,?,?,?,?,?,?,?,?,?)",
                )
            };
            format!(
                "insert into messages (message_id, conversation_id, seq, sender_id, kind, text, \
                 {columns}) values {}",
                vec![row; rows].join(",")
            )
        };
        let full = [sql(false, 500), sql(true, 500)];
        // Values repeated from row to row are shared, not copied: every copy is an allocation
        // here and a free on SQLite's worker, which is the import's bottleneck.
        let shared = |v: &str, last: &mut Option<std::sync::Arc<str>>| match last {
            Some(a) if **a == *v => a.clone(),
            _ => last.insert(std::sync::Arc::from(v)).clone(),
        };
        let build = |(plain, chunk): (bool, &[&super::sql::ImportRow<'_>])| {
            let text = if chunk.len() == 500 {
                full[usize::from(plain)].clone()
            } else {
                sql(plain, chunk.len())
            };
            let mut q = sqlx::query(sqlx::AssertSqlSafe(text));
            let (mut conv, mut kind, mut attachments, mut custom) = (None, None, None, None);
            for r in chunk {
                q = q
                    .bind(r.id.clone())
                    .bind(shared(r.conversation_id, &mut conv))
                    .bind(r.seq)
                    .bind(r.sender_id);
                if !plain {
                    q = q.bind(shared(r.kind, &mut kind));
                }
                q = q.bind(r.text);
                if !plain {
                    q = q
                        .bind(r.encrypted.as_deref())
                        .bind(shared(&r.attachments, &mut attachments))
                        .bind(shared(&r.custom, &mut custom));
                }
                q = q.bind(r.external_id).bind(r.created_at);
            }
            q
        };
        let (plain, other): (Vec<&super::sql::ImportRow<'_>>, Vec<_>) =
            rows.iter().partition(is_plain);
        let mut chunks = plain
            .chunks(500)
            .map(|c| (true, c))
            .chain(other.chunks(500).map(|c| (false, c)));
        let Some(first) = chunks.next() else {
            return Ok(());
        };
        let mut q = build(first);
        loop {
            self.queries
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let next = chunks.next();
            // The statement is sent on the first poll; the next one is built while it runs.
            let (done, built) = tokio::join!(q.execute(&mut **tx), async { next.map(&build) });
            done.map_err(super::db_error)?;
            match built {
                Some(b) => q = b,
                None => return Ok(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// At most `max` connections, each back in the idle list when its guard drops (no round
    /// trip), a timeout when all are held, and the idle ones dropped after a crashed worker.
    #[tokio::test]
    async fn readers_reuse_connections_and_time_out() {
        let path = std::env::temp_dir().join(format!("confab-readers-{}.db", uuid::Uuid::now_v7()));
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .journal_mode(SqliteJournalMode::Wal);
        sqlx::Connection::close(
            options
                .clone()
                .create_if_missing(true)
                .connect()
                .await
                .unwrap(),
        )
        .await
        .unwrap();
        let readers = Readers::new(options.read_only(true), 2, Duration::from_millis(200));
        assert_eq!(
            (readers.size(), readers.num_idle()),
            (0, 0),
            "opened as needed"
        );
        let mut a = readers.get().await.unwrap();
        let b = readers.get().await.unwrap();
        let one: i64 = sqlx::query_scalar("select 1")
            .fetch_one(&mut *a)
            .await
            .unwrap();
        assert_eq!(one, 1);
        assert_eq!((readers.size(), readers.num_idle()), (2, 0));
        let waited = std::time::Instant::now();
        assert!(matches!(
            readers.get().await,
            Err(sqlx::Error::PoolTimedOut)
        ));
        assert!(waited.elapsed() >= Duration::from_millis(200));
        drop(b);
        assert_eq!(
            (readers.size(), readers.num_idle()),
            (2, 1),
            "back without a ping"
        );
        let c = readers.get().await.unwrap();
        assert_eq!(
            (readers.size(), readers.num_idle()),
            (2, 0),
            "the idle one reused"
        );
        drop((a, c));
        assert_eq!(readers.num_idle(), 2);
        WORKER_CRASHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let d = readers.get().await.unwrap();
        assert_eq!(
            (readers.size(), readers.num_idle()),
            (1, 0),
            "after a crashed worker the idle connections are dropped and a new one opened"
        );
        // Handed out before a crash was counted: not kept, since it may be the dead one.
        WORKER_CRASHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        drop(d);
        assert_eq!((readers.size(), readers.num_idle()), (0, 0));
        for end in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{end}", path.display()));
        }
    }
}
