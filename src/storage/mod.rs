//! Storage: one trait in domain terms, implemented for SQLite (embedded, the default) and for
//! PostgreSQL. All SQL of the project lives below this module; callers never see `sqlx`.
//!
//! Both implementations share their statements through the `sql_store!` macro in `sql.rs`
//! (the SQL is portable: `$N` placeholders, `on conflict`, `returning`, window functions);
//! what differs (connection setup, migrations, locking) lives in `sqlite.rs` and `postgres.rs`.
//!
//! Every mutation records its changes in the `changes` table inside the same transaction; see
//! `docs/architecture.md` for why positions are taken under one lock at the end of a
//! transaction.

mod migrate;
pub mod postgres;
mod sql;
pub mod sqlite;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;

use crate::domain::{Change, Conversation, Message, SendInput, Timestamp, User, UserInput};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The thing does not exist, or the caller may not see it: the two are never told apart.
    #[error("not found")]
    NotFound,
    /// The caller sees the thing but may not do this to it.
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    /// The request is well-formed but breaks a rule only the data can tell (e.g. adding members
    /// to a direct conversation).
    #[error("invalid {field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    /// A uniqueness rule broken in a way that is not an idempotent replay.
    #[error("conflict on {0}")]
    Conflict(String),
    /// The database is down or did not answer in time; nothing was changed.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Who performs a change: a user, or the app's backend with a server token and no `?as`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    User(String),
    Server,
}

impl Actor {
    pub fn user_id(&self) -> Option<&str> {
        match self {
            Actor::User(u) => Some(u),
            Actor::Server => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// What an authenticated token's user is, as auth needs to know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserState {
    Active,
    Deactivated,
}

#[derive(Debug, Clone)]
pub struct NewConversation {
    pub kind: String,
    /// Everyone who will be a member (the creator included, when there is one).
    pub member_ids: Vec<String>,
    pub created_by: Option<String>,
    pub name: Option<String>,
    pub image_url: Option<String>,
    pub custom: Value,
    pub tags: Vec<String>,
    pub external_id: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct ConversationPatch {
    pub name: Option<Option<String>>,
    pub image_url: Option<Option<String>>,
    pub custom: Option<Value>,
}

/// Filters of `GET /v1/conversations`; `cursor` is the decoded keyset position.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub limit: u32,
    pub cursor: Option<(i64, String)>,
    pub kind: Option<String>,
    pub tags: Vec<String>,
    pub exclude_tags: Vec<String>,
    pub q: Option<String>,
    pub updated_after: Option<Timestamp>,
    pub updated_before: Option<Timestamp>,
    pub unread_only: bool,
    pub include_total: bool,
}

#[derive(Debug, Clone)]
pub struct ConversationPage {
    pub conversations: Vec<Conversation>,
    /// The keyset position after the last row, when there may be more.
    pub next: Option<(i64, String)>,
    pub total: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageBound {
    Newest,
    Before(i64),
    After(i64),
}

/// One operation for the batched write path. Each carries its own reply slot in the batcher;
/// here only the data.
#[derive(Debug, Clone)]
pub enum WriteOp {
    /// A token's user, created bare when unknown (the first request of a new user): committed
    /// with the batch, so a burst of new users shares a commit.
    EnsureUser { user_id: String },
    /// A new conversation: committed with the batch, so concurrent creates share a commit.
    Create(Box<NewConversation>),
    Send {
        conversation_id: String,
        sender_id: String,
        input: Box<SendInput>,
    },
    Read {
        conversation_id: String,
        user_id: String,
        /// `None`: the latest message.
        seq: Option<i64>,
    },
}

#[derive(Debug, Clone)]
pub enum WriteOutcome {
    /// The user's state after `EnsureUser` (an existing user may be deactivated).
    User(UserState),
    /// The conversation's id; `created` is false when a direct pair or an `external_id` that
    /// existed (or came earlier in the batch) gave the existing conversation.
    Created {
        id: String,
        created: bool,
    },
    /// `created` is false for an idempotent replay (same `client_id`).
    Sent {
        message: Box<Message>,
        created: bool,
    },
    Read {
        last_read_seq: i64,
    },
}

/// The result of one committed transaction: per-op outcomes and the changes it recorded, in
/// position order, for realtime and webhooks to consume after the commit.
pub struct BatchResult {
    pub outcomes: Vec<StoreResult<WriteOutcome>>,
    pub changes: Vec<Change>,
}

/// The result of a single mutation outside the batcher.
pub struct Committed<T> {
    pub value: T,
    pub changes: Vec<Change>,
}

/// A webhook delivery: one event for the app's backend, with its attempts.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Delivery {
    /// The `webhook-id`, the same on every attempt.
    pub id: String,
    #[serde(skip)]
    pub pos: i64,
    #[serde(skip)]
    pub conversation_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub status: String,
    pub attempts: i64,
    pub last_error: Option<String>,
    /// The whole body that is sent.
    pub payload: Value,
    pub created_at: Timestamp,
    pub next_attempt_at: Option<Timestamp>,
    pub delivered_at: Option<Timestamp>,
}

/// The end of one delivery attempt.
#[derive(Debug, Clone)]
pub enum AttemptResult {
    Delivered,
    /// Failed; `retry_at` is when to try again, `None` when it is now dead.
    Failed {
        error: String,
        retry_at: Option<i64>,
    },
}

/// What the store needs to write webhook deliveries in the same transaction as the change.
pub trait Outbox: Send + Sync {
    /// Whether the user has a live connection on any node (for `offline_member_ids`).
    fn is_online(&self, user: &str) -> bool;
}

/// The most conversations one retention pass looks for old messages in (one short
/// transaction: each is locked until it ends).
pub const PURGE_CONVERSATIONS: u32 = 100;

/// What one retention pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    pub messages: u64,
    /// Conversations whose old messages the pass looked for (at most `PURGE_CONVERSATIONS`
    /// or the batch size: if that is reached, more may have old messages).
    pub conversations: u64,
    pub changes: u64,
    pub deliveries: u64,
}

/// A conversation record of an import.
#[derive(Debug, Clone)]
pub struct ImportConversation {
    pub line: usize,
    pub external_id: String,
    pub kind: String,
    pub member_ids: Vec<String>,
    pub name: Option<String>,
    pub image_url: Option<String>,
    pub custom: Value,
    pub tags: Vec<String>,
    pub created_at: Option<i64>,
}

/// A message record of an import.
#[derive(Debug, Clone)]
pub struct ImportMessage {
    pub line: usize,
    pub conversation_external_id: String,
    pub external_id: String,
    pub sender_id: Option<String>,
    pub kind: String,
    pub text: Option<String>,
    pub encrypted: Option<Value>,
    pub attachments: Value,
    pub custom: Value,
    pub created_at: i64,
    /// Counts as unread for the other members (imported messages are read by default).
    pub unread: bool,
}

/// Validated records of one import batch, in file order per kind.
#[derive(Debug, Clone, Default)]
pub struct ImportBatch {
    pub users: Vec<(usize, UserInput)>,
    /// Whether users already there take the `name` and `kind` of their record (a source that
    /// owns them, like Messenger, whose names change); otherwise they are left as they are
    /// (an NDJSON import: idempotent on ids).
    pub refresh_users: bool,
    pub conversations: Vec<ImportConversation>,
    pub messages: Vec<ImportMessage>,
    /// The messages by conversation, from [`ImportBatch::group_messages`]: each group the
    /// indexes of one conversation external id's messages in (created_at, line) order. None
    /// until grouped, or when two messages share an external id (the writer then groups them
    /// itself, keeping the first whose conversation exists).
    pub grouped: Option<Vec<Vec<usize>>>,
}

impl ImportBatch {
    /// The grouping, if it is one of the messages as they are now (every message once):
    /// messages added or removed after [`ImportBatch::group_messages`] make it None.
    pub fn grouping(&self) -> Option<&[Vec<usize>]> {
        let grouped = self.grouped.as_deref()?;
        let mut counted = vec![false; self.messages.len()];
        for &i in grouped.iter().flatten() {
            match counted.get_mut(i) {
                Some(c) if !*c => *c = true,
                _ => return None,
            }
        }
        counted.iter().all(|c| *c).then_some(grouped)
    }

    /// Groups and orders the messages by conversation ahead of the write, which needs no
    /// database: an import does it while the batch before is being written, so the writer
    /// (SQLite's one connection above all) does not wait for it.
    pub fn group_messages(&mut self) {
        let grouped = {
            let mut seen: HashSet<&str> = HashSet::with_capacity(self.messages.len());
            let mut by_conversation: HashMap<&str, usize> = HashMap::new();
            let mut groups: Vec<Vec<usize>> = Vec::new();
            let mut unique = true;
            for (i, m) in self.messages.iter().enumerate() {
                if !seen.insert(&m.external_id) {
                    unique = false;
                    break;
                }
                let g = *by_conversation
                    .entry(&m.conversation_external_id)
                    .or_insert_with(|| {
                        groups.push(Vec::new());
                        groups.len() - 1
                    });
                groups[g].push(i);
            }
            if unique {
                for g in &mut groups {
                    g.sort_by_key(|&i| (self.messages[i].created_at, self.messages[i].line));
                }
            }
            unique.then_some(groups)
        };
        self.grouped = grouped;
    }
}

/// What a batch did: records accepted (created or already present) and bad lines.
#[derive(Debug, Clone, Default)]
pub struct ImportOutcome {
    pub users: u64,
    pub conversations: u64,
    pub messages: u64,
    /// Conversations written (new, or with new messages).
    pub upserted: u64,
    pub errors: Vec<(usize, String, &'static str)>,
}

/// `StoreError::Forbidden` of a create whose creator was deactivated after its request was let in.
pub const CREATOR_DEACTIVATED: &str = "the creator is deactivated";

/// The first part of an import batch, committed: its users and conversations. The messages
/// are written from it by [`Store::import_write`].
#[derive(Debug, Default)]
pub struct ImportPrepared {
    /// So far: users, conversations, new conversations, bad conversation records.
    pub outcome: ImportOutcome,
    /// Conversation id by external id, for every external id the batch names that exists.
    pub conversations: HashMap<String, String>,
    /// The conversations this batch created.
    pub created: HashSet<String>,
    /// Their `conversation.created` changes.
    pub changes: Vec<Change>,
}

/// A background job (the Messenger source) as stored.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Job {
    pub id: String,
    pub kind: String,
    pub status: String,
    #[serde(skip)]
    pub params: Value,
    #[serde(skip)]
    pub checkpoint: Option<String>,
    pub fetched: i64,
    pub upserted: i64,
    pub messages: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<Value>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// The storage contract. Every method is one transaction at most (but the imports, whose
/// transactions are described at each); every mutation records its changes in the same
/// transaction and returns them.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Which backend this is.
    fn backend(&self) -> Backend;

    /// How many statements this store has sent since it was opened (for tests that bound the
    /// number of queries a request makes).
    fn query_count(&self) -> u64;

    /// Connections open in the pools, and how many of them are idle.
    fn pool_stats(&self) -> (u32, u32);

    /// One round trip to the database.
    async fn ping(&self) -> StoreResult<()>;

    /// Reads a server setting (`jwt_secret`, `database_id`).
    async fn setting(&self, key: &str) -> StoreResult<Option<String>>;

    /// Stores `value` under `key` unless one is there; returns the value that is kept.
    async fn setting_or_insert(&self, key: &str, value: &str) -> StoreResult<String>;

    /// Creates or updates users; absent fields keep their value. Returns them in input order.
    async fn upsert_users(&self, users: &[UserInput]) -> StoreResult<Vec<User>>;

    /// The users that exist among `ids`, in the order asked.
    async fn get_users(&self, ids: &[String]) -> StoreResult<Vec<User>>;

    /// The state of the user a token names; `None` when unknown (the write path's
    /// `WriteOp::EnsureUser` creates the user bare, name = id).
    async fn user_state(&self, id: &str) -> StoreResult<Option<UserState>>;

    /// Deactivates a user: their tokens stop working, their messages stay. NotFound if unknown.
    async fn deactivate_user(&self, id: &str) -> StoreResult<()>;

    /// Creates a conversation (and bare users for unknown member ids) in one transaction.
    /// A direct pair or an `external_id` that exists returns the existing id with `false`.
    async fn create_conversation(
        &self,
        new: &NewConversation,
    ) -> StoreResult<Committed<(String, bool)>>;

    /// The conversations among `ids` that `caller` is a member of, as `caller` sees them, in
    /// the order asked. With `messages > 0`, the newest messages are attached. `None` is the
    /// server's view: any conversation, no per-member fields.
    async fn conversations_for(
        &self,
        caller: Option<&str>,
        ids: &[String],
        messages: u32,
    ) -> StoreResult<Vec<Conversation>>;

    /// A page of `caller`'s conversations, newest activity first, in a bounded number of
    /// queries whatever the page size.
    async fn list_conversations(
        &self,
        caller: &str,
        filter: &ListFilter,
    ) -> StoreResult<ConversationPage>;

    /// Renames / restyles a conversation; a rename writes a system message.
    async fn update_conversation(
        &self,
        actor: &Actor,
        id: &str,
        patch: &ConversationPatch,
    ) -> StoreResult<Committed<()>>;

    /// Replaces the tags of a conversation.
    async fn set_tags(
        &self,
        actor: &Actor,
        id: &str,
        tags: &[String],
    ) -> StoreResult<Committed<()>>;

    /// Adds members to a group (bare users for unknown ids); one system message if any joined.
    async fn add_members(
        &self,
        actor: &Actor,
        id: &str,
        user_ids: &[String],
    ) -> StoreResult<Committed<()>>;

    /// Removes a member (self: leave; owner or server: remove); one system message.
    async fn remove_member(
        &self,
        actor: &Actor,
        id: &str,
        user_id: &str,
    ) -> StoreResult<Committed<()>>;

    /// Applies a batch of sends and read marks in ONE transaction, in order. Per-op failures
    /// (not a member, …) fail only that op; a database failure fails them all.
    /// Refreshes the planner's statistics after a bulk load: `analyze` on PostgreSQL, whose
    /// autovacuum may get to it much later (after a 10,000,000-message import, a listing
    /// planned on empty-table statistics sorted every conversation: 463 ms instead of a few).
    /// Nothing on SQLite, whose plans for these queries need no statistics.
    async fn refresh_statistics(&self) -> StoreResult<()>;

    async fn write_batch(&self, ops: &[WriteOp]) -> StoreResult<BatchResult> {
        let (staged, _) = tokio::sync::oneshot::channel();
        self.write_batch_staged(ops, staged).await
    }

    /// `write_batch`, signalling `staged` once the batch's own statements are done and only
    /// its change-log entries and the commit remain (the part commits take in turn): the
    /// write path lets the next batch start then.
    async fn write_batch_staged(
        &self,
        ops: &[WriteOp],
        staged: tokio::sync::oneshot::Sender<()>,
    ) -> StoreResult<BatchResult>;

    /// A page of messages, oldest first, and whether more exist in the direction asked.
    /// Membership of `caller` is checked in the same query (NotFound otherwise).
    async fn page_messages(
        &self,
        caller: &str,
        conversation_id: &str,
        bound: PageBound,
        limit: u32,
    ) -> StoreResult<(Vec<Message>, bool)>;

    /// Edits a message's text / custom (sender only); sets `edited_at`.
    async fn edit_message(
        &self,
        actor: &Actor,
        message_id: &str,
        text: Option<&str>,
        custom: Option<&Value>,
    ) -> StoreResult<Committed<Message>>;

    /// Turns a message into a tombstone (sender or server).
    async fn delete_message(
        &self,
        actor: &Actor,
        message_id: &str,
    ) -> StoreResult<Committed<Message>>;

    /// Exact unread counts of `user`'s conversations, non-zero only.
    async fn unread(&self, user: &str) -> StoreResult<Vec<(String, i64)>>;

    /// Changes visible to `user` with position in `(after, upto]`, at most `limit`, in order.
    async fn changes_for(
        &self,
        user: &str,
        after: i64,
        upto: i64,
        limit: u32,
    ) -> StoreResult<Vec<Change>>;

    /// The ids of every conversation `user` is a member of (realtime rooms).
    async fn conversation_ids_of(&self, user: &str) -> StoreResult<Vec<String>>;

    /// The users who share a direct conversation with `user` (presence audience).
    async fn direct_partners(&self, user: &str) -> StoreResult<Vec<String>>;

    /// Records when `user` was last seen online.
    async fn set_last_seen(&self, user: &str, at: Timestamp) -> StoreResult<()>;

    /// Writes one import batch with bulk statements, idempotent on user ids and external ids:
    /// its users and conversations in one transaction, then its messages in transactions of
    /// whole conversations. Messages get seqs in `created_at` order (see docs/import.md).
    /// `publish` gets each transaction's changes as soon as it commits, so a failure later in
    /// the batch loses none of them. (`POST /v1/import` calls the two parts itself, to overlap
    /// batches.)
    async fn import_batch(
        &self,
        batch: &ImportBatch,
        publish: &(dyn Fn(Vec<Change>) + Send + Sync),
    ) -> StoreResult<ImportOutcome> {
        let mut prepared = self.import_prepare(batch).await?;
        publish(std::mem::take(&mut prepared.changes));
        let committed = self.import_write(batch, prepared, publish).await?;
        publish(committed.changes);
        Ok(committed.value)
    }

    /// The first part of [`Store::import_batch`]: the batch's users and conversations, in a
    /// transaction of their own. A batch that names conversations another batch creates must
    /// be prepared after that one.
    async fn import_prepare(&self, batch: &ImportBatch) -> StoreResult<ImportPrepared>;

    /// The second part: the batch's messages, in transactions of whole conversations (several
    /// at once on PostgreSQL, one after the other on SQLite, whose live writes wait for one of
    /// them). `publish` gets each transaction's changes as soon as it commits (so realtime does
    /// not wait for the rest of the batch, and a later failure loses nothing committed); the
    /// result holds the prepared part's changes, if the caller left them there. Batches are
    /// written in their order (so that seq follows created_at without renumbering); the next
    /// batch may be prepared meanwhile.
    async fn import_write(
        &self,
        batch: &ImportBatch,
        prepared: ImportPrepared,
        publish: &(dyn Fn(Vec<Change>) + Send + Sync),
    ) -> StoreResult<Committed<ImportOutcome>>;

    /// Creates a running job leased to the caller for `lease_ms`.
    async fn create_job(&self, kind: &str, params: &Value, lease_ms: i64) -> StoreResult<Job>;

    /// One job. NotFound if unknown.
    async fn job(&self, id: &str) -> StoreResult<Job>;

    /// Records progress (counts, checkpoint, status, error) and renews the lease.
    async fn update_job(&self, job: &Job, lease_ms: i64) -> StoreResult<()>;

    /// Renews the lease of a running job (its node is alive).
    async fn touch_job(&self, id: &str, lease_ms: i64) -> StoreResult<()>;

    /// Claims running jobs whose lease expired (their node stopped), for `lease_ms`.
    async fn claim_stale_jobs(&self, now: i64, lease_ms: i64) -> StoreResult<Vec<Job>>;

    /// Every change with position in `(after, upto]`, in order (realtime fills gaps with it).
    async fn changes_between(&self, after: i64, upto: i64) -> StoreResult<Vec<Change>>;

    /// The highest committed change position.
    async fn last_position(&self) -> StoreResult<i64>;

    /// The lowest position a sync token may have (retention deleted the changes below), and
    /// the highest committed position, in one read.
    async fn positions(&self) -> StoreResult<(i64, i64)>;

    /// From now on, every webhook event is also written to the outbox, in its transaction.
    fn enable_outbox(&self, outbox: Arc<dyn Outbox>);

    /// Claims up to `limit` deliveries that are due, at most one per conversation (the oldest
    /// pending one, so a conversation's events keep their order), leasing them for `lease_ms`.
    /// Several nodes claim without taking the same delivery (`skip locked`).
    async fn claim_deliveries(
        &self,
        now: i64,
        lease_ms: i64,
        limit: u32,
    ) -> StoreResult<Vec<Delivery>>;

    /// Records the end of an attempt and releases the lease.
    async fn finish_delivery(&self, id: &str, result: &AttemptResult) -> StoreResult<()>;

    /// Deliveries with `status` (all when `None`), oldest first, after position `after`.
    async fn list_deliveries(
        &self,
        status: Option<&str>,
        after: i64,
        limit: u32,
    ) -> StoreResult<Vec<Delivery>>;

    /// Makes a delivery due now (its attempts keep counting). NotFound if unknown; Conflict
    /// while an attempt is in flight (leased).
    async fn retry_delivery(&self, id: &str, now: i64) -> StoreResult<Delivery>;

    /// Deliveries per status (for metrics).
    async fn delivery_counts(&self) -> StoreResult<Vec<(String, i64)>>;

    /// Deletes up to `batch` messages, changes and finished deliveries older than `cutoff`,
    /// in short transactions, keeping last-message fields right and raising the sync floor.
    async fn purge_before(&self, cutoff: i64, batch: u32) -> StoreResult<Purged>;
}

pub type DynStore = Arc<dyn Store>;

/// Opens the store the configured URL names (`sqlite://PATH` or `postgres://…`), applies
/// migrations, and refuses settings that can lose acknowledged writes (PostgreSQL `fsync`,
/// `synchronous_commit` or `full_page_writes` off; SQLite below `synchronous=FULL`) unless
/// `allow_unsafe_durability` says the operator accepts that.
pub async fn open(config: &crate::config::Config) -> anyhow::Result<DynStore> {
    let (store, risks, warnings) = open_checked(
        &config.database_url,
        config.db_timeout,
        config.db_pool_size,
        config.sqlite_synchronous,
    )
    .await?;
    for warning in warnings {
        tracing::warn!("{warning}");
    }
    if !risks.is_empty() {
        let risks = risks.join(", ");
        if config.allow_unsafe_durability {
            tracing::warn!(%risks, "running on settings that can lose acknowledged writes (allowed by CONFAB_ALLOW_UNSAFE_DURABILITY)");
        } else {
            anyhow::bail!(
                "refusing to start: the database can lose acknowledged writes ({risks}); \
                 fix the setting, or pass --allow-unsafe-durability \
                 (CONFAB_ALLOW_UNSAFE_DURABILITY=true) to accept that"
            );
        }
    }
    Ok(store)
}

/// Opens the store at `url` with durable defaults; `pool_size` bounds PostgreSQL connections.
pub async fn open_url(
    url: &str,
    db_timeout: std::time::Duration,
    pool_size: u32,
) -> anyhow::Result<DynStore> {
    let sync = crate::config::SqliteSync::Full;
    Ok(open_checked(url, db_timeout, pool_size, sync).await?.0)
}

/// Opens the store and lists the settings under it that can lose acknowledged writes, then
/// those that let its tables grow (`maintenance_warnings`).
async fn open_checked(
    url: &str,
    db_timeout: std::time::Duration,
    pool_size: u32,
    sqlite_sync: crate::config::SqliteSync,
) -> anyhow::Result<(DynStore, Vec<String>, Vec<String>)> {
    if let Some(path) = url
        .strip_prefix("sqlite://")
        .or(url.strip_prefix("sqlite:"))
    {
        let store = sqlite::SqliteStore::open(path, db_timeout, sqlite_sync).await?;
        let risks = store.durability_risks().await?;
        Ok((Arc::new(store), risks, Vec::new()))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let store = postgres::PgStore::open(url, db_timeout, pool_size).await?;
        let risks = store.durability_risks().await?;
        let warnings = store.maintenance_warnings().await.unwrap_or_else(|e| {
            vec![format!(
                "could not read PostgreSQL's autovacuum settings: {e}"
            )]
        });
        Ok((Arc::new(store), risks, warnings))
    } else {
        anyhow::bail!("CONFAB_DATABASE_URL must start with sqlite:// or postgres://")
    }
}

/// Whether `e` says the connection it ran on is gone (closed by the server, reset), rather than
/// that the database refused or did not answer the statement: PostgreSQL's admin shutdown and
/// crash codes (57P01-57P03), a connection exception (08), or an I/O error on the socket.
pub(crate) fn connection_died(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) => true,
        sqlx::Error::Database(d) => d
            .code()
            .is_some_and(|c| c.starts_with("08") || matches!(&*c, "57P01" | "57P02" | "57P03")),
        _ => false,
    }
}

/// Maps a sqlx error to a store error: connection trouble is `Unavailable`, a named unique
/// constraint is `Conflict`, anything else `Other`. A crashed SQLite connection thread is
/// counted (`sqlite::WORKER_CRASHES`), so the read pool replaces its idle connections.
pub(crate) fn db_error(e: sqlx::Error) -> StoreError {
    if matches!(e, sqlx::Error::WorkerCrashed) {
        sqlite::WORKER_CRASHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    match &e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::WorkerCrashed => StoreError::Unavailable(e.to_string()),
        sqlx::Error::Database(d) if d.is_unique_violation() => {
            StoreError::Conflict(d.constraint().unwrap_or("unique").to_owned())
        }
        // PostgreSQL: connection exceptions (08), insufficient resources (53), operator
        // intervention (57: statement timeout, admin shutdown).
        sqlx::Error::Database(d)
            if d.code().is_some_and(|c| {
                c.len() == 5 && (c.starts_with("08") || c.starts_with("53") || c.starts_with("57"))
            }) =>
        {
            StoreError::Unavailable(e.to_string())
        }
        sqlx::Error::Database(d) if d.code().as_deref() == Some("5") => {
            // SQLITE_BUSY: another process holds the write lock past busy_timeout.
            StoreError::Unavailable(e.to_string())
        }
        _ => StoreError::Other(anyhow::Error::new(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::{ImportBatch, ImportMessage};

    fn message(line: usize, conversation: &str, external_id: &str, at: i64) -> ImportMessage {
        ImportMessage {
            line,
            conversation_external_id: conversation.into(),
            external_id: external_id.into(),
            sender_id: Some("a".into()),
            kind: "regular".into(),
            text: Some(external_id.into()),
            encrypted: None,
            attachments: serde_json::json!([]),
            custom: serde_json::json!({}),
            created_at: at,
            unread: false,
        }
    }

    #[test]
    fn messages_are_grouped_by_conversation_in_created_at_order() {
        let mut batch = ImportBatch {
            messages: vec![
                message(4, "c", "c3", 30),
                message(2, "d", "d1", 10),
                message(3, "c", "c1", 10),
                message(1, "c", "c2", 30),
                message(5, "c", "c0", 5),
            ],
            ..Default::default()
        };
        batch.group_messages();
        let ids: Vec<Vec<&str>> = batch
            .grouped
            .as_ref()
            .unwrap()
            .iter()
            .map(|g| {
                g.iter()
                    .map(|&i| batch.messages[i].external_id.as_str())
                    .collect()
            })
            .collect();
        // Equal times in the file's (line) order.
        assert_eq!(ids, [vec!["c0", "c1", "c2", "c3"], vec!["d1"]]);
        assert!(batch.grouping().is_some());
        // Grouped, then changed: not a grouping of these messages.
        let extra = message(6, "d", "d2", 40);
        batch.messages.push(extra.clone());
        assert!(batch.grouping().is_none());
        batch.messages.truncate(3);
        assert!(batch.grouping().is_none());
        batch.messages = vec![extra];
        batch.group_messages();
        assert_eq!(batch.grouping(), Some(&[vec![0]][..]));
        // An external id twice: left to the writer, which keeps the first it can import.
        batch.messages.push(message(7, "d", "d2", 40));
        batch.group_messages();
        assert!(batch.grouped.is_none());
    }
}
