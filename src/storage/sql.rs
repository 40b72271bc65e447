//! The statements both backends share, as one macro that implements `Store` for a concrete
//! sqlx database type. The SQL is portable between SQLite (3.35+) and PostgreSQL: `$N`
//! placeholders, `on conflict`, `returning`, window functions, ids as text, times as integer
//! milliseconds, JSON as text. What differs comes in as macro arguments:
//! - `begin`: how a writing transaction starts (`begin immediate` on SQLite takes the write lock
//!   up front, so a transaction never fails to upgrade);
//! - `lock`: the row-lock suffix of a `select` (`for update of c` on PostgreSQL, nothing on
//!   SQLite, where the write lock is already held).

use crate::domain::{ChangeKind, Timestamp};
use serde_json::Value;

/// `$a,$a+1,…` for `n` parameters starting at `$a` (`prefix` `$`), or `?a,…` (`?`).
///
/// SQLite looks named parameters (`$N`) up by a linear search while preparing, which makes a
/// statement with thousands of them quadratic; numbered ones (`?N`) are direct. PostgreSQL
/// takes `$N` only.
pub(crate) fn params_with(prefix: char, start: usize, n: usize) -> String {
    if prefix == '?' && start == 1 {
        // The statement's only parameters: anonymous ones are bound in order, and sqlx's name
        // lookup for them is free (see `tuples_with`).
        return vec!["?"; n].join(",");
    }
    let mut s = String::with_capacity(n * 4);
    for i in 0..n {
        if i > 0 {
            s.push(',');
        }
        s.push(prefix);
        s.push_str(&(start + i).to_string());
    }
    s
}

/// `($1,$2),($3,$4)` for `rows` tuples of `cols` parameters starting at `$start`.
///
/// On SQLite, a statement made only of these (`start` 1) gets anonymous `?` placeholders:
/// sqlx asks SQLite the name of every parameter it binds, a linear search for named and
/// numbered ones, which makes a statement of thousands of them quadratic.
pub(crate) fn tuples_with(prefix: char, start: usize, rows: usize, cols: usize) -> String {
    if prefix == '?' && start == 1 {
        let one = format!("({})", vec!["?"; cols].join(","));
        return vec![one.as_str(); rows].join(",");
    }
    (0..rows)
        .map(|r| format!("({})", params_with(prefix, start + r * cols, cols)))
        .collect::<Vec<_>>()
        .join(",")
}

pub(crate) fn json_text(v: &Value) -> String {
    v.to_string()
}

pub(crate) fn parse_json(s: Option<String>, default: Value) -> Value {
    s.and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or(default)
}

/// A change about to be recorded; gets its position at the end of the transaction.
pub(crate) struct PendingChange {
    pub conversation_id: String,
    pub kind: ChangeKind,
    pub user_id: Option<String>,
    pub data: Value,
}

/// One column of rows bound to a single statement by a backend's `rows_query`, where the
/// statement's `{rows}` stands for them as a relation: `values (?,?),…` on SQLite, and on
/// PostgreSQL `select * from unnest($1::text[], …)`, one array per column, so the statement's
/// text (and its prepared plan) is the same however many rows.
pub(crate) enum Col<'a> {
    Text(Vec<&'a str>),
    OptText(Vec<Option<&'a str>>),
    Int(Vec<i64>),
}

impl Col<'_> {
    pub fn len(&self) -> usize {
        match self {
            Col::Text(v) => v.len(),
            Col::OptText(v) => v.len(),
            Col::Int(v) => v.len(),
        }
    }
}

/// A message row written by the bulk import path, borrowing from the batch's record.
pub(crate) struct ImportRow<'a> {
    pub id: String,
    pub conversation_id: &'a str,
    pub seq: i64,
    pub sender_id: Option<&'a str>,
    pub kind: &'a str,
    pub text: Option<&'a str>,
    pub encrypted: Option<String>,
    pub attachments: std::borrow::Cow<'a, str>,
    pub custom: std::borrow::Cow<'a, str>,
    pub external_id: &'a str,
    pub created_at: i64,
}

/// A conversation that received imported messages in a batch.
pub(crate) struct Touched {
    pub conversation_id: String,
    /// Members at or past this seq had read everything (`i64::MAX` after a renumber).
    pub old_last: i64,
    pub new_last: i64,
    /// Where those members' read position moves.
    pub read_to: i64,
    pub last_id: String,
    pub last_at: i64,
    /// The oldest imported message's time (the conversation's first message's, if older).
    pub first_at: i64,
    pub n: usize,
}

/// JSON text of a value, without an allocation for the empty array and object.
pub(crate) fn json_cow(v: &Value) -> std::borrow::Cow<'static, str> {
    match v {
        Value::Array(a) if a.is_empty() => "[]".into(),
        Value::Object(o) if o.is_empty() => "{}".into(),
        v => v.to_string().into(),
    }
}

/// Escapes `%`, `_` and `\` for a `like … escape '\'` pattern and wraps it in `%…%`.
pub(crate) fn like_pattern(q: &str) -> String {
    let mut s = String::from("%");
    for ch in q.to_lowercase().chars() {
        if matches!(ch, '%' | '_' | '\\') {
            s.push('\\');
        }
        s.push(ch);
    }
    s.push('%');
    s
}

pub(crate) fn now() -> i64 {
    Timestamp::now().0
}

pub(crate) const USER_COLS: &str =
    "u.user_id, u.name, u.image_url, u.kind, u.custom, u.last_seen_at, u.created_at, u.updated_at";

pub(crate) const MSG_COLS: &str = "m.message_id, m.conversation_id, m.seq, m.sender_id, \
    m.client_id, m.kind, m.text, m.encrypted, m.attachments, m.parent_id, m.custom, \
    m.created_at, m.edited_at, m.deleted_at";

pub(crate) const CONV_COLS: &str = "c.conversation_id, c.kind, c.name, c.image_url, \
    c.created_by, c.external_id, c.custom, c.member_count, c.last_seq, c.last_message_id, \
    c.last_message_at, c.activity_at, c.created_at, c.updated_at";

/// A conversation row, before hydration into a caller's view.
#[derive(Debug, Clone)]
pub(crate) struct ConvRow {
    pub id: String,
    pub kind: String,
    pub name: Option<String>,
    pub image_url: Option<String>,
    pub created_by: Option<String>,
    pub external_id: Option<String>,
    pub custom: Value,
    pub member_count: i64,
    pub last_seq: i64,
    pub last_message_id: Option<String>,
    pub last_message_at: Option<i64>,
    pub activity_at: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A conversation row with what a listing shows of it beyond the row: its last message, its
/// tags, its first members and the caller's unread count (`LISTED_COLS`).
#[derive(Debug, Clone)]
pub(crate) struct Listed {
    pub row: ConvRow,
    pub last: Option<crate::domain::Message>,
    pub tags: Vec<String>,
    pub members: Vec<crate::domain::Member>,
    pub unread: i64,
}

/// One element of a listed row's `members_json` (`LISTED_COLS`): a JSON array of these
/// fields in this order (an array, not an object: on PostgreSQL the preview of a conversation
/// took 17 µs with objects and 13 µs with arrays, 9 µs of it reading the rows; BENCHMARKS.md).
#[derive(serde::Deserialize)]
pub(crate) struct ListedMember {
    user_id: String,
    role: String,
    last_read_seq: i64,
    joined_at: i64,
    name: String,
    image_url: Option<String>,
    kind: String,
    custom: Option<String>,
    last_seen_at: Option<i64>,
    created_at: i64,
    updated_at: i64,
}

impl ListedMember {
    pub fn into_member(self) -> crate::domain::Member {
        use crate::domain::{Member, Timestamp, User};
        Member {
            role: self.role,
            last_read_seq: self.last_read_seq,
            joined_at: Timestamp(self.joined_at),
            user: User {
                id: self.user_id.clone(),
                name: self.name,
                image_url: self.image_url,
                kind: self.kind,
                custom: parse_json(self.custom, serde_json::json!({})),
                online: false,
                last_seen_at: self.last_seen_at.map(Timestamp),
                created_at: Timestamp(self.created_at),
                updated_at: Timestamp(self.updated_at),
            },
            user_id: self.user_id,
        }
    }
}

impl ConvRow {
    /// The receiver-neutral snapshot recorded in the change log.
    pub fn snapshot(&self, tags: &[String]) -> Value {
        serde_json::json!({
            "id": self.id, "type": self.kind, "name": self.name, "image_url": self.image_url,
            "created_by": self.created_by, "external_id": self.external_id,
            "custom": self.custom, "tags": tags, "member_count": self.member_count,
            "last_seq": self.last_seq,
            "created_at": Timestamp(self.created_at), "updated_at": Timestamp(self.updated_at),
            "last_message_at": self.last_message_at.map(Timestamp),
        })
    }
}

/// Implements `Store` for `$store`, whose fields are `writer` and `reader` pools of `$db` and
/// `queries` (an `AtomicU64`).
macro_rules! sql_store {
    (
        $store:ident, $db:ty, $row:ty,
        backend = $backend:expr,
        begin = $begin:literal,
        lock = $lock:literal,
        skip_locked = $skip_locked:literal,
        migrate_lock = $migrate_lock:literal,
        analyze = [$($analyze:literal),*],
        json_agg = $json_agg:literal,
        json_array = $json_array:literal,
        import_shards = $shards:literal,
        import_tx_messages = $tx_messages:expr,
        placeholder = $ph:literal
    ) => {
        use std::collections::HashMap;
        use std::sync::atomic::Ordering;

        use async_trait::async_trait;
        use serde_json::{Value, json};
        use sqlx::{AssertSqlSafe, Row};

        use $crate::domain::{
            Change, ChangeKind, Conversation, Message, SendInput, Timestamp, User,
            UserInput,
        };
        use $crate::storage::sql::{
            CONV_COLS, Col, ConvRow, ImportRow, Listed, ListedMember, MSG_COLS, PendingChange, Touched, USER_COLS, json_cow,
            json_text, like_pattern, now, parse_json,
        };

        fn params(start: usize, n: usize) -> String {
            $crate::storage::sql::params_with($ph, start, n)
        }

        fn tuples(start: usize, rows: usize, cols: usize) -> String {
            $crate::storage::sql::tuples_with($ph, start, rows, cols)
        }
        use $crate::storage::{
            Actor, AttemptResult, Backend, BatchResult, Delivery, ImportBatch, ImportOutcome, Job, Outbox,
            Purged, Committed, ConversationPage, ConversationPatch,
            ListFilter, NewConversation, PageBound, Store, StoreError, StoreResult, UserState,
            WriteOp, WriteOutcome, db_error,
        };

        type Tx = sqlx::Transaction<'static, $db>;

        fn user_from(r: &$row, p: &str) -> Result<User, sqlx::Error> {
            let col = |c: &str| format!("{p}{c}");
            Ok(User {
                id: r.try_get(col("user_id").as_str())?,
                name: r.try_get(col("name").as_str())?,
                image_url: r.try_get(col("image_url").as_str())?,
                kind: r.try_get(col("kind").as_str())?,
                custom: parse_json(r.try_get(col("custom").as_str())?, json!({})),
                online: false,
                last_seen_at: r
                    .try_get::<Option<i64>, _>(col("last_seen_at").as_str())?
                    .map(Timestamp),
                created_at: Timestamp(r.try_get(col("created_at").as_str())?),
                updated_at: Timestamp(r.try_get(col("updated_at").as_str())?),
            })
        }

        fn message_from(r: &$row) -> Result<Message, sqlx::Error> {
            message_from_prefixed(r, "")
        }

        /// A message from columns named with `p` before each name (`lm_` in a listing).
        fn message_from_prefixed(r: &$row, p: &str) -> Result<Message, sqlx::Error> {
            let col = |c: &'static str| -> std::borrow::Cow<'static, str> {
                if p.is_empty() { c.into() } else { format!("{p}{c}").into() }
            };
            Ok(Message {
                id: r.try_get(&*col("message_id"))?,
                conversation_id: r.try_get(&*col("conversation_id"))?,
                seq: r.try_get(&*col("seq"))?,
                sender_id: r.try_get(&*col("sender_id"))?,
                client_id: r.try_get(&*col("client_id"))?,
                kind: r.try_get(&*col("kind"))?,
                text: r.try_get(&*col("text"))?,
                encrypted: r
                    .try_get::<Option<String>, _>(&*col("encrypted"))?
                    .and_then(|s| serde_json::from_str(&s).ok()),
                attachments: parse_json(r.try_get(&*col("attachments"))?, json!([])),
                parent_id: r.try_get(&*col("parent_id"))?,
                custom: parse_json(r.try_get(&*col("custom"))?, json!({})),
                created_at: Timestamp(r.try_get(&*col("created_at"))?),
                edited_at: r.try_get::<Option<i64>, _>(&*col("edited_at"))?.map(Timestamp),
                deleted_at: r.try_get::<Option<i64>, _>(&*col("deleted_at"))?.map(Timestamp),
            })
        }

        /// The columns a listed conversation adds to `CONV_COLS` (for the caller `$1`, whose
        /// membership is `mb`): its last message (`lm_`), its tags and first 20 members as
        /// JSON arrays and the caller's exact unread count, so that a page is one statement
        /// (and few rows: the SQLite driver hands each row across threads).
        const LISTED_COLS: &str = concat!(
            "lm.message_id as lm_message_id, lm.conversation_id as lm_conversation_id, \
             lm.seq as lm_seq, lm.sender_id as lm_sender_id, \
             lm.client_id as lm_client_id, lm.kind as lm_kind, lm.text as lm_text, \
             lm.encrypted as lm_encrypted, lm.attachments as lm_attachments, \
             lm.parent_id as lm_parent_id, lm.custom as lm_custom, lm.created_at as lm_created_at, \
             lm.edited_at as lm_edited_at, lm.deleted_at as lm_deleted_at, \
             (select coalesce(cast(",
            $json_agg,
            "(t.tag) as text), '[]') from conversation_tags t \
               where t.conversation_id = c.conversation_id) as tags_json, \
             (select coalesce(cast(",
            $json_agg,
            "(",
            $json_array,
            "(x.user_id, x.role, x.last_read_seq, x.joined_at, x.name, x.image_url, x.kind, \
               x.custom, x.last_seen_at, x.created_at, x.updated_at)) as text), '[]') \
               from (select o.user_id, o.role, o.last_read_seq, o.joined_at, u.name, \
               u.image_url, u.kind, u.custom, u.last_seen_at, u.created_at, u.updated_at \
               from members o join users u on u.user_id = o.user_id \
               where o.conversation_id = c.conversation_id \
               order by case when o.user_id = $1 then 0 else 1 end, o.joined_at, o.user_id \
               limit 20) x) as members_json, \
             case when c.last_seq > mb.last_read_seq then (select count(*) from messages m \
               where m.conversation_id = c.conversation_id and m.seq > mb.last_read_seq \
               and m.deleted_at is null and (m.sender_id is null or m.sender_id <> mb.user_id)) \
             else 0 end as unread"
        );

        /// A row selected with `CONV_COLS` and `LISTED_COLS`.
        fn listed_from(r: &$row) -> Result<Listed, sqlx::Error> {
            let last = match r.try_get::<Option<String>, _>("lm_message_id")? {
                None => None,
                Some(_) => Some(message_from_prefixed(r, "lm_")?),
            };
            let decode = |e: serde_json::Error| sqlx::Error::Decode(e.into());
            let mut tags: Vec<String> =
                serde_json::from_str(r.try_get::<String, _>("tags_json")?.as_str())
                    .map_err(decode)?;
            tags.sort_unstable();
            let members: Vec<ListedMember> =
                serde_json::from_str(r.try_get::<String, _>("members_json")?.as_str())
                    .map_err(decode)?;
            Ok(Listed {
                row: conv_from(r)?,
                last,
                tags,
                members: members.into_iter().map(ListedMember::into_member).collect(),
                unread: r.try_get("unread")?,
            })
        }

        fn conv_from(r: &$row) -> Result<ConvRow, sqlx::Error> {
            Ok(ConvRow {
                id: r.try_get("conversation_id")?,
                kind: r.try_get("kind")?,
                name: r.try_get("name")?,
                image_url: r.try_get("image_url")?,
                created_by: r.try_get("created_by")?,
                external_id: r.try_get("external_id")?,
                custom: parse_json(r.try_get("custom")?, json!({})),
                member_count: r.try_get("member_count")?,
                last_seq: r.try_get("last_seq")?,
                last_message_id: r.try_get("last_message_id")?,
                last_message_at: r.try_get("last_message_at")?,
                activity_at: r.try_get("activity_at")?,
                created_at: r.try_get("created_at")?,
                updated_at: r.try_get("updated_at")?,
            })
        }

        fn change_from(r: &$row) -> Result<Change, sqlx::Error> {
            let kind: String = r.try_get("kind")?;
            Ok(Change {
                pos: r.try_get("pos")?,
                conversation_id: r.try_get("conversation_id")?,
                kind: ChangeKind::parse(&kind).ok_or_else(|| {
                    sqlx::Error::Decode(format!("unknown change kind {kind}").into())
                })?,
                user_id: r.try_get("user_id")?,
                data: parse_json(r.try_get("data")?, Value::Null),
                created_at: Timestamp(r.try_get("created_at")?),
            })
        }

        const DELIVERY_COLS: &str = "delivery_id, pos, conversation_id, kind, payload, status, \
            attempts, last_error, created_at, next_attempt_at, delivered_at";

        fn delivery_from(r: &$row) -> Result<Delivery, sqlx::Error> {
            let status: String = r.try_get("status")?;
            let next: i64 = r.try_get("next_attempt_at")?;
            Ok(Delivery {
                id: r.try_get("delivery_id")?,
                pos: r.try_get("pos")?,
                conversation_id: r.try_get("conversation_id")?,
                kind: r.try_get("kind")?,
                next_attempt_at: (status == "pending").then_some(Timestamp(next)),
                status,
                attempts: r.try_get("attempts")?,
                last_error: r.try_get("last_error")?,
                payload: parse_json(r.try_get("payload")?, Value::Null),
                created_at: Timestamp(r.try_get("created_at")?),
                delivered_at: r.try_get::<Option<i64>, _>("delivered_at")?.map(Timestamp),
            })
        }

        const JOB_COLS: &str = "job_id, kind, status, params, checkpoint, fetched, upserted, \
            messages, error, created_at, updated_at";

        fn job_from(r: &$row) -> Result<Job, sqlx::Error> {
            Ok(Job {
                id: r.try_get("job_id")?,
                kind: r.try_get("kind")?,
                status: r.try_get("status")?,
                params: parse_json(r.try_get("params")?, Value::Null),
                checkpoint: r.try_get("checkpoint")?,
                fetched: r.try_get("fetched")?,
                upserted: r.try_get("upserted")?,
                messages: r.try_get("messages")?,
                error: r
                    .try_get::<Option<String>, _>("error")?
                    .and_then(|e| serde_json::from_str(&e).ok()),
                created_at: Timestamp(r.try_get("created_at")?),
                updated_at: Timestamp(r.try_get("updated_at")?),
            })
        }

        fn new_id() -> String {
            uuid::Uuid::now_v7().to_string()
        }

        /// The content fields of a message about to be appended.
        struct NewMessage<'a> {
            sender_id: Option<&'a str>,
            client_id: Option<&'a str>,
            kind: &'a str,
            text: Option<&'a str>,
            encrypted: Option<String>,
            attachments: String,
            parent_id: Option<&'a str>,
            custom: String,
        }

        impl<'a> NewMessage<'a> {
            fn regular(sender: &'a str, input: &'a SendInput) -> Self {
                NewMessage {
                    sender_id: Some(sender),
                    client_id: input.client_id.as_deref(),
                    kind: "regular",
                    text: input.text.as_deref(),
                    encrypted: input.encrypted.as_ref().map(json_text),
                    attachments: input
                        .attachments
                        .as_ref()
                        .map(|a| Value::Array(a.clone()).to_string())
                        .unwrap_or_else(|| "[]".into()),
                    parent_id: input.parent_id.as_deref(),
                    custom: input
                        .custom
                        .as_ref()
                        .map(json_text)
                        .unwrap_or_else(|| "{}".into()),
                }
            }

            fn system(custom: Value) -> Self {
                NewMessage {
                    sender_id: None,
                    client_id: None,
                    kind: "system",
                    text: None,
                    encrypted: None,
                    attachments: "[]".into(),
                    parent_id: None,
                    custom: custom.to_string(),
                }
            }
        }

        impl $store {
            /// Applies the migrations not yet recorded, all in one transaction (which, on
            /// PostgreSQL, first takes an advisory lock so two starting nodes do not race).
            async fn migrate(&self, list: &[$crate::storage::migrate::Migration]) -> anyhow::Result<()> {
                let mut tx = self.writer.begin_with($begin).await?;
                sqlx::query($migrate_lock).execute(&mut *tx).await?;
                sqlx::raw_sql($crate::storage::migrate::CREATE_TABLE).execute(&mut *tx).await?;
                let done: Option<i64> = sqlx::query_scalar("select max(version) from confab_migrations")
                    .fetch_one(&mut *tx)
                    .await?;
                for (version, name, sql) in list {
                    if *version <= done.unwrap_or(0) {
                        continue;
                    }
                    tracing::info!(version, name, "applying migration");
                    sqlx::raw_sql(*sql).execute(&mut *tx).await?;
                    sqlx::query("insert into confab_migrations (version, name, applied_at) values ($1, $2, $3)")
                        .bind(version)
                        .bind(name)
                        .bind(now())
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                self.committed();
                Ok(())
            }

            fn tick(&self, n: u64) {
                self.queries.fetch_add(n, Ordering::Relaxed);
            }

            async fn begin(&self) -> StoreResult<Tx> {
                self.tick(1);
                self.writer.begin_with($begin).await.map_err(db_error)
            }

            async fn commit(&self, tx: Tx) -> StoreResult<()> {
                self.tick(1);
                tx.commit().await.map_err(db_error)?;
                self.committed();
                Ok(())
            }

            /// Gives the pending changes their positions and writes them. Called last in every
            /// writing transaction: the counter's row lock is held from here to the commit, so
            /// positions become visible in order (see docs/architecture.md).
            async fn record(
                &self,
                tx: &mut Tx,
                pending: Vec<PendingChange>,
            ) -> StoreResult<Vec<Change>> {
                if pending.is_empty() {
                    return Ok(Vec::new());
                }
                // Who is in the conversations of new messages, read before the counter's lock.
                let members = match self.outbox.get() {
                    Some(_) => self.members_of_new_messages(tx, &pending).await?,
                    None => HashMap::new(),
                };
                self.tick(1);
                let n = pending.len() as i64;
                let top: i64 = sqlx::query_scalar(
                    "update counters set value = value + $1 where name = 'changes' returning value",
                )
                .bind(n)
                .fetch_one(&mut **tx)
                .await
                .map_err(db_error)?;
                let created_at = now();
                let changes: Vec<Change> = pending
                    .into_iter()
                    .enumerate()
                    .map(|(i, p)| Change {
                        pos: top - n + 1 + i as i64,
                        conversation_id: p.conversation_id,
                        kind: p.kind,
                        user_id: p.user_id,
                        data: p.data,
                        created_at: Timestamp(created_at),
                    })
                    .collect();
                for chunk in changes.chunks(1000) {
                    self.tick(1);
                    let data: Vec<String> = chunk.iter().map(|c| c.data.to_string()).collect();
                    rows_query(
                        "insert into changes (pos, conversation_id, kind, user_id, data, created_at) {rows}",
                        vec![
                            Col::Int(chunk.iter().map(|c| c.pos).collect()),
                            Col::Text(chunk.iter().map(|c| c.conversation_id.as_str()).collect()),
                            Col::Text(chunk.iter().map(|c| c.kind.as_str()).collect()),
                            Col::OptText(chunk.iter().map(|c| c.user_id.as_deref()).collect()),
                            Col::Text(data.iter().map(String::as_str).collect()),
                            Col::Int(vec![created_at; chunk.len()]),
                        ],
                    )
                    .execute(&mut **tx)
                    .await
                    .map_err(db_error)?;
                }
                if let Some(outbox) = self.outbox.get() {
                    self.write_outbox(tx, &changes, &members, outbox.as_ref()).await?;
                }
                Ok(changes)
            }

            async fn members_of_new_messages(
                &self,
                tx: &mut Tx,
                pending: &[PendingChange],
            ) -> StoreResult<HashMap<String, Vec<String>>> {
                let mut convs: Vec<&str> = pending
                    .iter()
                    .filter(|p| p.kind == ChangeKind::MessageNew)
                    .map(|p| p.conversation_id.as_str())
                    .collect();
                convs.sort_unstable();
                convs.dedup();
                let mut out: HashMap<String, Vec<String>> = HashMap::new();
                let rows = self
                    .fetch_in(
                        tx,
                        "select conversation_id, user_id from members where conversation_id {in}",
                        &convs,
                    )
                    .await?;
                for r in rows {
                    out.entry(r.try_get(0).map_err(db_error)?)
                        .or_default()
                        .push(r.try_get(1).map_err(db_error)?);
                }
                Ok(out)
            }

            /// Writes one webhook delivery per announced change (all but read marks), with the
            /// body fixed now: `message.new` carries the members with no live connection.
            async fn write_outbox(
                &self,
                tx: &mut Tx,
                changes: &[Change],
                members: &HashMap<String, Vec<String>>,
                outbox: &dyn Outbox,
            ) -> StoreResult<()> {
                let t = now();
                let rows: Vec<(String, &Change, String)> = changes
                    .iter()
                    .filter(|c| c.kind != ChangeKind::Read)
                    .map(|c| {
                        let mut data = c.data.clone();
                        if c.kind == ChangeKind::MessageNew {
                            let sender = data["sender_id"].as_str().map(str::to_owned);
                            let offline: Vec<&String> = members
                                .get(&c.conversation_id)
                                .map(|m| {
                                    m.iter()
                                        .filter(|u| Some(u.as_str()) != sender.as_deref())
                                        .filter(|u| !outbox.is_online(u))
                                        .collect()
                                })
                                .unwrap_or_default();
                            data["offline_member_ids"] = json!(offline);
                        }
                        let body = json!({
                            "type": c.kind.as_str(),
                            "timestamp": c.created_at,
                            "data": data,
                        });
                        (format!("msg_{}", uuid::Uuid::now_v7().simple()), c, body.to_string())
                    })
                    .collect();
                for chunk in rows.chunks(1000) {
                    self.tick(1);
                    rows_query(
                        "insert into webhook_deliveries (delivery_id, pos, conversation_id, kind, \
                         payload, status, next_attempt_at, created_at) {rows}",
                        vec![
                            Col::Text(chunk.iter().map(|r| r.0.as_str()).collect()),
                            Col::Int(chunk.iter().map(|r| r.1.pos).collect()),
                            Col::Text(chunk.iter().map(|r| r.1.conversation_id.as_str()).collect()),
                            Col::Text(chunk.iter().map(|r| r.1.kind.as_str()).collect()),
                            Col::Text(chunk.iter().map(|r| r.2.as_str()).collect()),
                            Col::Text(vec!["pending"; chunk.len()]),
                            Col::Int(vec![t; chunk.len()]),
                            Col::Int(vec![t; chunk.len()]),
                        ],
                    )
                    .execute(&mut **tx)
                    .await
                    .map_err(db_error)?;
                }
                Ok(())
            }

            /// Creates bare users (name = id) for ids that do not exist.
            async fn ensure_users(&self, tx: &mut Tx, ids: &[String]) -> StoreResult<()> {
                let t = now();
                // Sorted and unique: two transactions inserting the same new users in another
                // order would otherwise deadlock on PostgreSQL's unique index.
                let mut ids = ids.to_vec();
                ids.sort_unstable();
                ids.dedup();
                for chunk in ids.chunks(500) {
                    self.tick(1);
                    let sql = format!(
                        "insert into users (user_id, name, created_at, updated_at) values {} \
                         on conflict (user_id) do nothing",
                        tuples(1, chunk.len(), 4)
                    );
                    let mut q = sqlx::query(AssertSqlSafe(sql));
                    for id in chunk {
                        q = q.bind(id).bind(id).bind(t).bind(t);
                    }
                    q.execute(&mut **tx).await.map_err(db_error)?;
                }
                Ok(())
            }

            /// Locks the conversation row and returns it, with `caller`'s read position when
            /// `caller` is a member. NotFound when it does not exist or `caller` is not a member.
            async fn lock_conversation(
                &self,
                tx: &mut Tx,
                id: &str,
                actor: &Actor,
            ) -> StoreResult<ConvRow> {
                self.tick(1);
                let sql = concat!(
                    "select c.conversation_id, c.kind, c.name, c.image_url, c.created_by, \
                     c.external_id, c.custom, c.member_count, c.last_seq, c.last_message_id, \
                     c.last_message_at, c.activity_at, c.created_at, c.updated_at, \
                     mb.last_read_seq as my_last_read_seq, mb.user_id as my_user_id \
                     from conversations c left join members mb \
                     on mb.conversation_id = c.conversation_id and mb.user_id = $2 \
                     where c.conversation_id = $1 ",
                    $lock
                );
                let row = sqlx::query(sql)
                    .bind(id)
                    .bind(actor.user_id().unwrap_or(""))
                    .fetch_optional(&mut **tx)
                    .await
                    .map_err(db_error)?
                    .ok_or(StoreError::NotFound)?;
                let is_member = row
                    .try_get::<Option<String>, _>("my_user_id")
                    .map_err(db_error)?
                    .is_some();
                if actor.user_id().is_some() && !is_member {
                    return Err(StoreError::NotFound);
                }
                conv_from(&row).map_err(db_error)
            }

            /// Appends a message to a locked conversation: next seq, last-message fields, the
            /// sender's read position. Returns the message and its pending change.
            async fn append(
                &self,
                tx: &mut Tx,
                conv: &mut ConvRow,
                m: NewMessage<'_>,
                reader: Option<&str>,
            ) -> StoreResult<(Message, PendingChange)> {
                let t = now().max(conv.last_message_at.unwrap_or(0));
                let seq = conv.last_seq + 1;
                let message = Message {
                    id: new_id(),
                    conversation_id: conv.id.clone(),
                    seq,
                    sender_id: m.sender_id.map(str::to_owned),
                    client_id: m.client_id.map(str::to_owned),
                    kind: m.kind.to_owned(),
                    text: m.text.map(str::to_owned),
                    encrypted: m
                        .encrypted
                        .as_deref()
                        .and_then(|s| serde_json::from_str(s).ok()),
                    attachments: serde_json::from_str(&m.attachments).unwrap_or(json!([])),
                    parent_id: m.parent_id.map(str::to_owned),
                    custom: serde_json::from_str(&m.custom).unwrap_or(json!({})),
                    created_at: Timestamp(t),
                    edited_at: None,
                    deleted_at: None,
                };
                self.tick(4);
                sqlx::query(
                    "insert into messages (message_id, conversation_id, seq, sender_id, client_id, \
                     kind, text, encrypted, attachments, parent_id, custom, created_at) \
                     values ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12)",
                )
                .bind(&message.id)
                .bind(&conv.id)
                .bind(seq)
                .bind(m.sender_id)
                .bind(m.client_id)
                .bind(m.kind)
                .bind(m.text)
                .bind(m.encrypted.as_deref())
                .bind(&m.attachments)
                .bind(m.parent_id)
                .bind(&m.custom)
                .bind(t)
                .execute(&mut **tx)
                .await
                .map_err(db_error)?;
                sqlx::query(
                    "update conversations set last_seq = $2, last_message_id = $3, \
                     last_message_at = $4, activity_at = $4, \
                     first_message_at = coalesce(first_message_at, $4) where conversation_id = $1",
                )
                .bind(&conv.id)
                .bind(seq)
                .bind(&message.id)
                .bind(t)
                .execute(&mut **tx)
                .await
                .map_err(db_error)?;
                // The members' copies of the activity time (the conversation list's order).
                sqlx::query("update members set activity_at = $2 where conversation_id = $1")
                    .bind(&conv.id)
                    .bind(t)
                    .execute(&mut **tx)
                    .await
                    .map_err(db_error)?;
                if let Some(reader) = reader {
                    sqlx::query(
                        "update members set last_read_seq = $3 \
                         where conversation_id = $1 and user_id = $2 and last_read_seq < $3",
                    )
                    .bind(&conv.id)
                    .bind(reader)
                    .bind(seq)
                    .execute(&mut **tx)
                    .await
                    .map_err(db_error)?;
                }
                conv.last_seq = seq;
                conv.last_message_id = Some(message.id.clone());
                conv.last_message_at = Some(t);
                conv.activity_at = t;
                let change = PendingChange {
                    conversation_id: conv.id.clone(),
                    kind: ChangeKind::MessageNew,
                    user_id: None,
                    data: serde_json::to_value(&message).unwrap_or(Value::Null),
                };
                Ok((message, change))
            }

            async fn read_in_tx(
                &self,
                tx: &mut Tx,
                conversation_id: &str,
                user: &str,
                seq: Option<i64>,
                pending: &mut Vec<PendingChange>,
            ) -> StoreResult<WriteOutcome> {
                // The conversation's row lock first, as a send takes it: a batch with a read and
                // a send of one conversation cannot deadlock with another batch on another node.
                self.lock_conversation(tx, conversation_id, &Actor::User(user.to_owned()))
                    .await?;
                self.tick(1);
                let row = sqlx::query(
                    "select mb.last_read_seq, c.last_seq from members mb \
                     join conversations c on c.conversation_id = mb.conversation_id \
                     where mb.conversation_id = $1 and mb.user_id = $2",
                )
                .bind(conversation_id)
                .bind(user)
                .fetch_optional(&mut **tx)
                .await
                .map_err(db_error)?
                .ok_or(StoreError::NotFound)?;
                let current: i64 = row.try_get(0).map_err(db_error)?;
                let last: i64 = row.try_get(1).map_err(db_error)?;
                let target = seq.unwrap_or(last).min(last);
                if target <= current {
                    return Ok(WriteOutcome::Read {
                        last_read_seq: current,
                    });
                }
                self.tick(1);
                sqlx::query(
                    "update members set last_read_seq = $3 \
                     where conversation_id = $1 and user_id = $2 and last_read_seq < $3",
                )
                .bind(conversation_id)
                .bind(user)
                .bind(target)
                .execute(&mut **tx)
                .await
                .map_err(db_error)?;
                pending.push(PendingChange {
                    conversation_id: conversation_id.to_owned(),
                    kind: ChangeKind::Read,
                    user_id: Some(user.to_owned()),
                    data: json!({"conversation_id": conversation_id, "user_id": user, "seq": target}),
                });
                Ok(WriteOutcome::Read {
                    last_read_seq: target,
                })
            }

            /// Retention in one conversation, in `tx`: locks it if its first message is still
            /// older than `cutoff` (with `skip_locked`, not if another transaction holds it:
            /// then `None`), deletes the old ones among its first `room` messages by seq, and
            /// moves its first message's time and, if that one went, its last message. The
            /// number of messages deleted.
            async fn purge_conversation(
                &self,
                tx: &mut Tx,
                c: &str,
                cutoff: i64,
                room: usize,
                skip_locked: bool,
            ) -> StoreResult<Option<u64>> {
                self.tick(1);
                let lock = if skip_locked {
                    concat!(
                        "select c.conversation_id from conversations c where c.conversation_id = $1 \
                         and c.first_message_at < $2 ",
                        $skip_locked
                    )
                } else {
                    concat!(
                        "select c.conversation_id from conversations c where c.conversation_id = $1 \
                         and c.first_message_at < $2 ",
                        $lock
                    )
                };
                let locked: Option<String> = sqlx::query_scalar(lock)
                    .bind(c)
                    .bind(cutoff)
                    .fetch_optional(&mut **tx)
                    .await
                    .map_err(db_error)?;
                if locked.is_none() {
                    // Held by a writer, or no longer old (another pass, or nothing to do).
                    return Ok(if skip_locked { None } else { Some(0) });
                }
                self.tick(2);
                // The first `room` by seq, of which those older than the window: the scan
                // stops there even when few are old.
                let deleted = sqlx::query(
                    "delete from messages where message_id in (select f.message_id from \
                     (select message_id, created_at from messages where conversation_id = $1 \
                     order by seq limit $3) f where f.created_at < $2)",
                )
                .bind(c)
                .bind(cutoff)
                .bind(room as i64)
                .execute(&mut **tx)
                .await
                .map_err(db_error)?
                .rows_affected();
                // Its new first message (none if none is left: then the next passes leave it
                // alone, as when the first is no older than the window); its last one only if
                // that one is gone.
                sqlx::query(
                    "update conversations set first_message_at = (select m.created_at from \
                     messages m where m.conversation_id = $1 order by m.seq limit 1), \
                     last_message_id = coalesce((select m.message_id from messages m \
                       where m.message_id = conversations.last_message_id), \
                       (select m.message_id from messages m where m.conversation_id = $1 \
                       order by m.seq desc limit 1)) \
                     where conversation_id = $1",
                )
                .bind(c)
                .execute(&mut **tx)
                .await
                .map_err(db_error)?;
                Ok(Some(deleted))
            }

            /// One `analyze` statement, not bound by CONFAB_DB_TIMEOUT: it reads samples of
            /// whole tables, and blocks neither reads nor writes meanwhile.
            async fn analyze(&self, analyze: &'static str) -> StoreResult<()> {
                self.tick(3);
                let mut tx = self.writer.begin().await.map_err(db_error)?;
                sqlx::query("set local statement_timeout = 0")
                    .execute(&mut *tx)
                    .await
                    .map_err(db_error)?;
                sqlx::query(analyze).execute(&mut *tx).await.map_err(db_error)?;
                tx.commit().await.map_err(db_error)
            }

            /// Member rows of new conversations: (conversation, user, role, joined at). The
            /// activity copy starts at the join time, the read position at 0 (a new
            /// conversation has no messages); a row already there is left as it is.
            async fn insert_members(&self, tx: &mut Tx, rows: &[(&str, &str, &str, i64)]) -> StoreResult<()> {
                for chunk in rows.chunks(1000) {
                    self.tick(1);
                    let sql = format!(
                        "insert into members (conversation_id, user_id, role, joined_at, activity_at) \
                         values {} on conflict do nothing",
                        tuples(1, chunk.len(), 5)
                    );
                    let mut q = sqlx::query(AssertSqlSafe(sql));
                    for (c, u, role, at) in chunk {
                        q = q.bind(*c).bind(*u).bind(*role).bind(*at).bind(*at);
                    }
                    q.execute(&mut **tx).await.map_err(db_error)?;
                }
                Ok(())
            }

            /// Tags of conversations: (conversation, tag); a tag already there is left as it is.
            async fn insert_tags(&self, tx: &mut Tx, tags: &[(&str, &str)]) -> StoreResult<()> {
                for chunk in tags.chunks(1000) {
                    self.tick(1);
                    let sql = format!(
                        "insert into conversation_tags (conversation_id, tag) values {} on conflict do nothing",
                        tuples(1, chunk.len(), 2)
                    );
                    let mut q = sqlx::query(AssertSqlSafe(sql));
                    for (c, tag) in chunk {
                        q = q.bind(*c).bind(*tag);
                    }
                    q.execute(&mut **tx).await.map_err(db_error)?;
                }
                Ok(())
            }

            /// Creates conversations in `tx` (their members are users already: the caller
            /// ensures them first, in the same statement as any other new users of the
            /// transaction, so the users are locked in one order): one multi-row statement per
            /// table however many there are. Inserted in (direct pair,
            /// external id) order, so two transactions creating the same pairs wait for each
            /// other instead of deadlocking. A direct pair or external id that exists (or comes
            /// earlier in `news`) gives the existing id with `false`. One outcome per input, in
            /// input order, and the `conversation.created` changes to record.
            async fn insert_conversations(
                &self,
                tx: &mut Tx,
                news: &[&NewConversation],
            ) -> StoreResult<(Vec<StoreResult<(String, bool)>>, Vec<PendingChange>)> {
                let t = now();
                // (input index, the conversation, its new id, its direct pair)
                let mut rows: Vec<(usize, &NewConversation, String, Option<String>)> = news
                    .iter()
                    .enumerate()
                    .map(|(i, n)| {
                        let direct_key = (n.kind == "direct").then(|| {
                            let mut pair: Vec<&str> = n.member_ids.iter().map(String::as_str).collect();
                            pair.sort_unstable();
                            pair.join(" ")
                        });
                        (i, *n, new_id(), direct_key)
                    })
                    .collect();
                rows.sort_by(|a, b| (&a.3, &a.1.external_id).cmp(&(&b.3, &b.1.external_id)));
                let mut inserted: std::collections::HashSet<String> = Default::default();
                for chunk in rows.chunks(200) {
                    self.tick(1);
                    let sql = format!(
                        "insert into conversations (conversation_id, kind, name, image_url, created_by, \
                         external_id, direct_key, custom, member_count, activity_at, created_at, \
                         updated_at) values {} on conflict do nothing returning conversation_id",
                        tuples(1, chunk.len(), 12)
                    );
                    let mut q = sqlx::query(AssertSqlSafe(sql));
                    for (_, n, id, direct_key) in chunk {
                        q = q
                            .bind(id)
                            .bind(&n.kind)
                            .bind(n.name.as_deref())
                            .bind(n.image_url.as_deref())
                            .bind(n.created_by.as_deref())
                            .bind(n.external_id.as_deref())
                            .bind(direct_key.as_deref())
                            .bind(json_text(&n.custom))
                            .bind(n.member_ids.len() as i64)
                            .bind(t)
                            .bind(t)
                            .bind(t);
                    }
                    for r in q.fetch_all(&mut **tx).await.map_err(db_error)? {
                        inserted.insert(r.try_get(0).map_err(db_error)?);
                    }
                }
                let (made, existing): (Vec<_>, Vec<_>) =
                    rows.iter().partition(|r| inserted.contains(&r.2));

                // The existing conversations the others name.
                let keys: Vec<&str> = existing.iter().filter_map(|r| r.3.as_deref()).collect();
                let exts: Vec<&str> =
                    existing.iter().filter_map(|r| r.1.external_id.as_deref()).collect();
                let mut by_key: HashMap<String, String> = HashMap::new();
                for r in self
                    .fetch_in(tx, "select direct_key, conversation_id from conversations where direct_key {in}", &keys)
                    .await?
                {
                    by_key.insert(r.try_get(0).map_err(db_error)?, r.try_get(1).map_err(db_error)?);
                }
                let mut by_ext: HashMap<String, String> = HashMap::new();
                for r in self
                    .fetch_in(tx, "select external_id, conversation_id from conversations where external_id {in}", &exts)
                    .await?
                {
                    by_ext.insert(r.try_get(0).map_err(db_error)?, r.try_get(1).map_err(db_error)?);
                }

                let members: Vec<(&str, &str, &str, i64)> = made
                    .iter()
                    .flat_map(|(_, n, id, _)| {
                        n.member_ids.iter().map(move |m| {
                            let role = if n.created_by.as_deref() == Some(m.as_str()) {
                                "owner"
                            } else {
                                "member"
                            };
                            (id.as_str(), m.as_str(), role, t)
                        })
                    })
                    .collect();
                self.insert_members(tx, &members).await?;
                let tags: Vec<(&str, &str)> = made
                    .iter()
                    .flat_map(|(_, n, id, _)| n.tags.iter().map(move |tag| (id.as_str(), tag.as_str())))
                    .collect();
                self.insert_tags(tx, &tags).await?;

                let mut outcomes: Vec<Option<StoreResult<(String, bool)>>> =
                    (0..news.len()).map(|_| None).collect();
                let mut pending = Vec::with_capacity(made.len());
                for (i, n, id, _) in made {
                    let mut tags = n.tags.clone();
                    tags.sort();
                    tags.dedup();
                    let row = ConvRow {
                        id: id.clone(),
                        kind: n.kind.clone(),
                        name: n.name.clone(),
                        image_url: n.image_url.clone(),
                        created_by: n.created_by.clone(),
                        external_id: n.external_id.clone(),
                        custom: n.custom.clone(),
                        member_count: n.member_ids.len() as i64,
                        last_seq: 0,
                        last_message_id: None,
                        last_message_at: None,
                        activity_at: t,
                        created_at: t,
                        updated_at: t,
                    };
                    let mut data = row.snapshot(&tags);
                    data["member_ids"] = json!(n.member_ids);
                    pending.push((*i, PendingChange {
                        conversation_id: id.clone(),
                        kind: ChangeKind::ConversationCreated,
                        user_id: None,
                        data,
                    }));
                    outcomes[*i] = Some(Ok((id.clone(), true)));
                }
                for (i, n, _, direct_key) in existing {
                    let found = direct_key
                        .as_ref()
                        .and_then(|k| by_key.get(k))
                        .or_else(|| n.external_id.as_ref().and_then(|e| by_ext.get(e)));
                    outcomes[*i] = Some(match found {
                        Some(id) => Ok((id.clone(), false)),
                        None => Err(StoreError::Conflict("conversations".into())),
                    });
                }
                // The changes in input order (the order the batch received them).
                pending.sort_by_key(|p| p.0);
                Ok((
                    outcomes.into_iter().map(|o| o.expect("every conversation has an outcome")).collect(),
                    pending.into_iter().map(|p| p.1).collect(),
                ))
            }

            /// One transaction of an import batch's messages, for conversations no other running
            /// shard has: lock the conversations (in id order, as sends lock them) and read
            /// their seq state under the lock, skip the messages already imported (`probe`, or
            /// when some are older than their conversation's newest message; otherwise a message
            /// imported before fails the transaction with a unique violation of its external
            /// id, and the caller runs it again with the probe), give the new
            /// messages seqs in created_at order, write them in bulk, then the conversations'
            /// denormalized fields and read positions and one `conversation.updated` each.
            /// Returns the touched conversations and the committed changes.
            async fn import_messages(
                &self,
                mut groups: Vec<(&str, Vec<&$crate::storage::ImportMessage>)>,
                probe: bool,
            ) -> StoreResult<(Vec<String>, Vec<Change>)> {
                let mut tx = self.begin().await?;
                groups.sort_by(|a, b| a.0.cmp(b.0));
                let lock_ids: Vec<&str> = groups.iter().map(|(c, _)| *c).collect();
                let mut by_id: HashMap<String, (i64, Option<i64>)> = HashMap::new();
                let locked = self
                    .fetch_in(
                        &mut tx,
                        concat!(
                            "select c.conversation_id, c.last_seq, c.last_message_at from conversations c \
                             where c.conversation_id {in} order by c.conversation_id ",
                            $lock
                        ),
                        &lock_ids,
                    )
                    .await?;
                for r in locked {
                    by_id.insert(
                        r.try_get(0).map_err(db_error)?,
                        (r.try_get(1).map_err(db_error)?, r.try_get(2).map_err(db_error)?),
                    );
                }
                // Every row written below references a conversation locked here (PostgreSQL's
                // COPY may skip the per-row foreign-key check on that ground). Conversations
                // are never deleted, so this holds; if it ever did not, nothing is written.
                if let Some((missing, _)) = groups.iter().find(|(c, _)| !by_id.contains_key(*c)) {
                    return Err(StoreError::Other(anyhow::anyhow!(
                        "import: conversation {missing} is gone"
                    )));
                }
                // Messages older than their conversation's newest are where repeats are (a
                // re-import): probed before anything is written, as asked.
                let probe = probe
                    || groups.iter().any(|(conv, msgs)| {
                        let oldest = msgs.iter().map(|m| m.created_at).min();
                        matches!((by_id.get(*conv), oldest), (Some((_, Some(at))), Some(o)) if o < *at)
                    });
                if probe {
                    // Sorted, so the index is walked in order.
                    let mut ext_ids: Vec<&str> = groups
                        .iter()
                        .flat_map(|(_, msgs)| msgs.iter().map(|m| m.external_id.as_str()))
                        .collect();
                    ext_ids.sort_unstable();
                    let mut known: std::collections::HashSet<String> = std::collections::HashSet::new();
                    for r in self
                        .fetch_in(&mut tx, "select external_id from messages where external_id is not null and external_id {in}", &ext_ids)
                        .await?
                    {
                        known.insert(r.try_get(0).map_err(db_error)?);
                    }
                    if !known.is_empty() {
                        for (_, msgs) in &mut groups {
                            msgs.retain(|m| !known.contains(&m.external_id));
                        }
                        groups.retain(|(_, msgs)| !msgs.is_empty());
                    }
                }
                let mut rows: Vec<ImportRow> = Vec::with_capacity(groups.iter().map(|g| g.1.len()).sum());
                let mut touched: Vec<Touched> = Vec::new();
                for (conv, mut msgs) in groups {
                    msgs.sort_by_key(|m| (m.created_at, m.line));
                    let (last_seq, last_at) = by_id.get(conv).copied().unwrap_or((0, None));
                    let mut renumbered = false;
                    // Newer than everything there: appended. Otherwise the conversation is
                    // renumbered so seq follows created_at (docs/import.md).
                    let (seqs, new_last): (Vec<i64>, i64) =
                        if last_at.is_none_or(|at| msgs[0].created_at >= at) {
                            let seqs = (1..=msgs.len() as i64).map(|i| last_seq + i).collect();
                            (seqs, last_seq + msgs.len() as i64)
                        } else {
                            renumbered = true;
                            self.renumber(&mut tx, conv, &msgs).await?
                        };
                    let mut first_unread: Option<i64> = None;
                    for (m, seq) in msgs.iter().zip(seqs) {
                        if m.unread {
                            first_unread = Some(first_unread.map_or(seq, |f: i64| f.min(seq)));
                        }
                        rows.push(ImportRow {
                            id: new_id(),
                            conversation_id: conv,
                            seq,
                            sender_id: m.sender_id.as_deref(),
                            kind: &m.kind,
                            text: m.text.as_deref(),
                            encrypted: m.encrypted.as_ref().map(json_text),
                            attachments: json_cow(&m.attachments),
                            custom: json_cow(&m.custom),
                            external_id: &m.external_id,
                            created_at: m.created_at,
                        });
                    }
                    // `msgs` is in (created_at, line) order: its last is the newest (of equal
                    // times, the last in the file), and the last row pushed. A time before 1970
                    // is negative, so nothing is compared with a zero here.
                    let (Some(newest), Some(last_row)) = (msgs.last(), rows.last()) else {
                        continue;
                    };
                    let last_created = newest.created_at;
                    let last_id = last_row.id.clone();
                    let read_to = first_unread.map_or(new_last, |s| s - 1);
                    // After a renumber, read positions were remapped to their messages; moving
                    // them by the old end could mark unread messages read, so they stay.
                    let old_last = if renumbered { i64::MAX } else { last_seq };
                    touched.push(Touched {
                        conversation_id: conv.to_owned(),
                        old_last,
                        new_last,
                        read_to,
                        last_id,
                        last_at: last_created,
                        first_at: msgs[0].created_at,
                        n: msgs.len(),
                    });
                }
                self.bulk_insert_messages(&mut tx, &rows).await?;
                // Denormalized fields (the newest message by created_at, the last seq), and
                // read positions: imported messages count as read for members who had read
                // everything; their position moves to just before the first message marked
                // unread.
                self.update_touched(&mut tx, &touched).await?;
                let ids: Vec<String> = touched.iter().map(|t| t.conversation_id.clone()).collect();
                let pending = touched
                    .into_iter()
                    .map(|t| PendingChange {
                        data: json!({
                            "id": t.conversation_id, "last_seq": t.new_last,
                            "last_message_at": Timestamp(t.last_at), "imported_messages": t.n,
                        }),
                        conversation_id: t.conversation_id,
                        kind: ChangeKind::ConversationUpdated,
                        user_id: None,
                    })
                    .collect();
                let changes = self.record(&mut tx, pending).await?;
                self.commit(tx).await?;
                Ok((ids, changes))
            }

            /// Makes room for imported messages older than some already in the conversation:
            /// every message is renumbered in (created_at, then existing order) order, read
            /// positions follow their message, and the seqs of `msgs` (in their order) are
            /// returned. The rare path of an import; one statement per moved row.
            async fn renumber(
                &self,
                tx: &mut Tx,
                conv: &str,
                msgs: &[&$crate::storage::ImportMessage],
            ) -> StoreResult<(Vec<i64>, i64)> {
                self.tick(1);
                let existing: Vec<(String, i64, i64)> = sqlx::query(
                    "select message_id, created_at, seq from messages where conversation_id = $1 order by seq",
                )
                .bind(conv)
                .fetch_all(&mut **tx)
                .await
                .map_err(db_error)?
                .iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
                .collect::<Result<_, sqlx::Error>>()
                .map_err(db_error)?;
                // (created_at, 0 = existing / 1 = new, order within its kind, index)
                let mut all: Vec<(i64, u8, usize)> = existing
                    .iter()
                    .enumerate()
                    .map(|(i, e)| (e.1, 0, i))
                    .chain(msgs.iter().enumerate().map(|(i, m)| (m.created_at, 1, i)))
                    .collect();
                all.sort();
                let mut new_seqs = vec![0i64; msgs.len()];
                let mut moved: Vec<(usize, i64)> = Vec::new();
                for (pos, (_, kind, i)) in all.iter().enumerate() {
                    let seq = pos as i64 + 1;
                    if *kind == 1 {
                        new_seqs[*i] = seq;
                    } else if existing[*i].2 != seq {
                        moved.push((*i, seq));
                    }
                }
                self.tick(1);
                // Out of the way first (negative), so no two rows share a seq on the way.
                sqlx::query("update messages set seq = -seq where conversation_id = $1 and seq > 0")
                    .bind(conv)
                    .execute(&mut **tx)
                    .await
                    .map_err(db_error)?;
                let mut map: HashMap<i64, i64> = existing.iter().map(|e| (e.2, e.2)).collect();
                for (i, seq) in &moved {
                    map.insert(existing[*i].2, *seq);
                }
                for (old, new) in &map {
                    self.tick(1);
                    sqlx::query("update messages set seq = $3 where conversation_id = $1 and seq = $2")
                        .bind(conv)
                        .bind(-old)
                        .bind(new)
                        .execute(&mut **tx)
                        .await
                        .map_err(db_error)?;
                }
                self.tick(1);
                let readers: Vec<(String, i64)> =
                    sqlx::query("select user_id, last_read_seq from members where conversation_id = $1")
                        .bind(conv)
                        .fetch_all(&mut **tx)
                        .await
                        .map_err(db_error)?
                        .iter()
                        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                        .collect::<Result<_, sqlx::Error>>()
                        .map_err(db_error)?;
                let mut kept: Vec<(i64, i64)> = map.iter().map(|(o, n)| (*o, *n)).collect();
                kept.sort_unstable();
                for (user, read) in readers {
                    // The new seq of the last kept message at or below the old position.
                    let target = kept
                        .iter()
                        .take_while(|(old, _)| *old <= read)
                        .last()
                        .map_or(0, |(_, new)| *new);
                    if let Some(new) = Some(target).filter(|n| *n != read) {
                        self.tick(1);
                        sqlx::query("update members set last_read_seq = $3 where conversation_id = $1 and user_id = $2")
                            .bind(conv)
                            .bind(&user)
                            .bind(new)
                            .execute(&mut **tx)
                            .await
                            .map_err(db_error)?;
                    }
                }
                // Dense again: seqs are 1..=all (retention may have removed the first ones).
                Ok((new_seqs, all.len() as i64))
            }

            async fn tags_of(&self, tx: &mut Tx, id: &str) -> StoreResult<Vec<String>> {
                self.tick(1);
                sqlx::query_scalar(
                    "select tag from conversation_tags where conversation_id = $1 order by tag",
                )
                .bind(id)
                .fetch_all(&mut **tx)
                .await
                .map_err(db_error)
            }

            /// Turns conversation rows into the caller's view: members (at most 20, the
            /// caller first), last messages, tags and unread counts. Four queries whatever
            /// the number of rows.
            /// The caller's view of listed rows: a direct conversation is named after the
            /// other member, and the caller is the first member.
            fn present(caller: &str, rows: Vec<Listed>) -> Vec<Conversation> {
                rows
                    .into_iter()
                    .map(|Listed { row: r, last, tags, mut members, unread }| {
                        // Caller first, then by joining (the statement's order, kept here
                        // whatever order a JSON aggregate keeps).
                        members.sort_by(|a, b| {
                            (a.user_id != caller, a.joined_at.0, &a.user_id)
                                .cmp(&(b.user_id != caller, b.joined_at.0, &b.user_id))
                        });
                        let (mut name, mut image_url) = (r.name.clone(), r.image_url.clone());
                        if r.kind == "direct" && !caller.is_empty() {
                            if let Some(other) = members.iter().find(|m| m.user_id != caller) {
                                name = name.or_else(|| Some(other.user.name.clone()));
                                image_url = image_url.or_else(|| other.user.image_url.clone());
                            }
                        }
                        Conversation {
                            unread_count: unread,
                            last_message: last,
                            tags,
                            id: r.id,
                            kind: r.kind,
                            name,
                            image_url,
                            created_by: r.created_by,
                            external_id: r.external_id,
                            custom: r.custom,
                            member_count: r.member_count,
                            members,
                            last_seq: r.last_seq,
                            created_at: Timestamp(r.created_at),
                            updated_at: Timestamp(r.updated_at),
                            last_message_at: r.last_message_at.map(Timestamp),
                            messages: None,
                        }
                    })
                    .collect()
            }

            async fn unread_counts(
                &self,
                user: &str,
                only: Option<&[&str]>,
            ) -> StoreResult<HashMap<String, i64>> {
                let filter = match only {
                    Some(ids) if ids.is_empty() => return Ok(HashMap::new()),
                    Some(ids) => format!("and mb.conversation_id in ({})", params(2, ids.len())),
                    None => String::new(),
                };
                let sql = format!(
                    "select x.conversation_id, x.n from (select mb.conversation_id, \
                     (select count(*) from messages m where m.conversation_id = mb.conversation_id \
                      and m.seq > mb.last_read_seq and m.deleted_at is null \
                      and (m.sender_id is null or m.sender_id <> mb.user_id)) as n \
                     from members mb join conversations c on c.conversation_id = mb.conversation_id \
                     where mb.user_id = $1 and c.last_seq > mb.last_read_seq {filter}) x \
                     where x.n > 0 order by x.conversation_id"
                );
                let mut q = sqlx::query(AssertSqlSafe(sql)).bind(user);
                for id in only.unwrap_or(&[]) {
                    q = q.bind(*id);
                }
                let mut out = HashMap::new();
                let read_rows = q.fetch_all(&mut *self.read().await?).await.map_err(db_error)?;
                for r in read_rows {
                    out.insert(
                        r.try_get::<String, _>(0).map_err(db_error)?,
                        r.try_get::<i64, _>(1).map_err(db_error)?,
                    );
                }
                Ok(out)
            }

            async fn message_for_change(
                &self,
                tx: &mut Tx,
                actor: &Actor,
                message_id: &str,
            ) -> StoreResult<Message> {
                self.tick(1);
                let sql = format!(
                    "select {MSG_COLS}, (select mb.user_id from members mb where \
                     mb.conversation_id = m.conversation_id and mb.user_id = $2) as member \
                     from messages m where m.message_id = $1"
                );
                let row = sqlx::query(AssertSqlSafe(sql))
                    .bind(message_id)
                    .bind(actor.user_id().unwrap_or(""))
                    .fetch_optional(&mut **tx)
                    .await
                    .map_err(db_error)?
                    .ok_or(StoreError::NotFound)?;
                let member: Option<String> = row.try_get("member").map_err(db_error)?;
                if actor.user_id().is_some() && member.is_none() {
                    return Err(StoreError::NotFound);
                }
                message_from(&row).map_err(db_error)
            }

            async fn reload_message(&self, tx: &mut Tx, id: &str) -> StoreResult<Message> {
                self.tick(1);
                let sql = format!("select {MSG_COLS} from messages m where m.message_id = $1");
                let row = sqlx::query(AssertSqlSafe(sql))
                    .bind(id)
                    .fetch_one(&mut **tx)
                    .await
                    .map_err(db_error)?;
                message_from(&row).map_err(db_error)
            }

            /// Who may change a conversation: a member (NotFound otherwise) or the server.
            fn system_by(actor: &Actor) -> Value {
                match actor {
                    Actor::User(u) => json!(u),
                    Actor::Server => Value::Null,
                }
            }

            async fn conversation_updated(
                &self,
                tx: &mut Tx,
                conv: &ConvRow,
                pending: &mut Vec<PendingChange>,
            ) -> StoreResult<()> {
                let tags = self.tags_of(tx, &conv.id).await?;
                pending.push(PendingChange {
                    conversation_id: conv.id.clone(),
                    kind: ChangeKind::ConversationUpdated,
                    user_id: None,
                    data: conv.snapshot(&tags),
                });
                Ok(())
            }
        }

        #[async_trait]
        impl Store for $store {
            fn backend(&self) -> Backend {
                $backend
            }

            fn query_count(&self) -> u64 {
                self.queries.load(Ordering::Relaxed)
            }

            fn pool_stats(&self) -> (u32, u32) {
                (
                    self.reader.size() + self.writer.size(),
                    (self.reader.num_idle() + self.writer.num_idle()) as u32,
                )
            }

            async fn ping(&self) -> StoreResult<()> {
                // Pooled connections are not tested before use unless idle for a second, so
                // after a PostgreSQL restart each busy one fails once (and is closed): trying
                // again, past every connection the pool may hold, tells that from a database
                // that did not answer.
                let mut tries = 0;
                loop {
                    self.tick(1);
                    let done = sqlx::query("select 1").execute(&mut *self.read().await?).await;
                    match done.map(drop) {
                        Ok(()) => return Ok(()),
                        Err(e) if tries < self.read_connections() && $crate::storage::connection_died(&e) => {
                            tries += 1
                        }
                        Err(e) => return Err(db_error(e)),
                    }
                }
            }

            async fn setting(&self, key: &str) -> StoreResult<Option<String>> {
                self.tick(1);
                sqlx::query_scalar("select value from settings where key = $1")
                    .bind(key)
                    .fetch_optional(&self.writer)
                    .await
                    .map_err(db_error)
            }

            async fn setting_or_insert(&self, key: &str, value: &str) -> StoreResult<String> {
                self.tick(2);
                sqlx::query("insert into settings (key, value) values ($1, $2) on conflict (key) do nothing")
                    .bind(key)
                    .bind(value)
                    .execute(&self.writer)
                    .await
                    .map_err(db_error)?;
                self.committed();
                sqlx::query_scalar("select value from settings where key = $1")
                    .bind(key)
                    .fetch_one(&self.writer)
                    .await
                    .map_err(db_error)
            }

            async fn upsert_users(&self, users: &[UserInput]) -> StoreResult<Vec<User>> {
                let mut tx = self.begin().await?;
                let t = now();
                // In id order, so concurrent upserts of the same users cannot deadlock.
                let mut sorted: Vec<&UserInput> = users.iter().collect();
                sorted.sort_by(|a, b| a.id.cmp(&b.id));
                for u in sorted {
                    self.tick(1);
                    sqlx::query(
                        "insert into users (user_id, name, image_url, kind, custom, created_at, updated_at) \
                         values ($1, coalesce($2, $1), $3, coalesce($5, 'user'), coalesce($6, '{}'), $7, $7) \
                         on conflict (user_id) do update set \
                           name = coalesce($2, users.name), \
                           image_url = case when $4 = 1 then $3 else users.image_url end, \
                           kind = coalesce($5, users.kind), \
                           custom = coalesce($6, users.custom), \
                           updated_at = $7",
                    )
                    .bind(&u.id)
                    .bind(u.name.as_deref())
                    .bind(u.image_url.clone().flatten())
                    .bind(u.image_url.is_some() as i64)
                    .bind(u.kind.as_deref())
                    .bind(u.custom.as_ref().map(json_text))
                    .bind(t)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_error)?;
                }
                self.commit(tx).await?;
                let ids: Vec<String> = users.iter().map(|u| u.id.clone()).collect();
                self.get_users(&ids).await
            }

            async fn get_users(&self, ids: &[String]) -> StoreResult<Vec<User>> {
                if ids.is_empty() {
                    return Ok(Vec::new());
                }
                let mut found: HashMap<String, User> = HashMap::new();
                for chunk in ids.chunks(500) {
                    self.tick(1);
                    let sql = format!(
                        "select {USER_COLS} from users u where u.user_id in ({})",
                        params(1, chunk.len())
                    );
                    let mut q = sqlx::query(AssertSqlSafe(sql));
                    for id in chunk {
                        q = q.bind(id);
                    }
                    let read_rows = q.fetch_all(&mut *self.read().await?).await.map_err(db_error)?;
                    for r in read_rows {
                        let u = user_from(&r, "").map_err(db_error)?;
                        found.insert(u.id.clone(), u);
                    }
                }
                let mut seen = std::collections::HashSet::new();
                Ok(ids
                    .iter()
                    .filter(|id| seen.insert(id.as_str()))
                    .filter_map(|id| found.get(id).cloned())
                    .collect())
            }

            async fn user_state(&self, id: &str) -> StoreResult<Option<UserState>> {
                self.tick(1);
                let row: Option<Option<i64>> =
                    sqlx::query_scalar("select deactivated_at from users where user_id = $1")
                        .bind(id)
                        .fetch_optional(&mut *self.read().await?)
                        .await
                        .map_err(db_error)?;
                Ok(row.map(|d| match d {
                    Some(_) => UserState::Deactivated,
                    None => UserState::Active,
                }))
            }

            async fn deactivate_user(&self, id: &str) -> StoreResult<()> {
                self.tick(1);
                let t = now();
                let done = sqlx::query(
                    "update users set deactivated_at = coalesce(deactivated_at, $2), updated_at = $2 \
                     where user_id = $1",
                )
                .bind(id)
                .bind(t)
                .execute(&self.writer)
                .await
                .map_err(db_error)?;
                self.committed();
                if done.rows_affected() == 0 {
                    return Err(StoreError::NotFound);
                }
                Ok(())
            }

            async fn create_conversation(
                &self,
                new: &NewConversation,
            ) -> StoreResult<Committed<(String, bool)>> {
                let mut tx = self.begin().await?;
                self.ensure_users(&mut tx, &new.member_ids).await?;
                let (mut outcomes, pending) = self.insert_conversations(&mut tx, &[new]).await?;
                let changes = self.record(&mut tx, pending).await?;
                self.commit(tx).await?;
                let value = outcomes.pop().expect("one outcome per conversation")?;
                Ok(Committed { value, changes })
            }

            async fn conversations_for(
                &self,
                caller: Option<&str>,
                ids: &[String],
                messages: u32,
            ) -> StoreResult<Vec<Conversation>> {
                if ids.is_empty() {
                    return Ok(Vec::new());
                }
                self.tick(1);
                let sql = format!(
                    "select {CONV_COLS}, {LISTED_COLS} from conversations c left join members mb \
                     on mb.conversation_id = c.conversation_id and mb.user_id = $1 \
                     left join messages lm on lm.message_id = c.last_message_id \
                     where c.conversation_id in ({}) {}",
                    params(2, ids.len()),
                    if caller.is_some() { "and mb.user_id is not null" } else { "" }
                );
                let mut q = sqlx::query(AssertSqlSafe(sql)).bind(caller.unwrap_or(""));
                for id in ids {
                    q = q.bind(id);
                }
                let mut rows: HashMap<String, Listed> = HashMap::new();
                let read_rows = q.fetch_all(&mut *self.read().await?).await.map_err(db_error)?;
                for r in read_rows {
                    let c = listed_from(&r).map_err(db_error)?;
                    rows.insert(c.row.id.clone(), c);
                }
                let ordered: Vec<Listed> = ids.iter().filter_map(|id| rows.remove(id)).collect();
                let mut out = Self::present(caller.unwrap_or(""), ordered);
                if let (Some(caller), true) = (caller, messages > 0) {
                    for c in &mut out {
                        let (page, _) = self
                            .page_messages(caller, &c.id, PageBound::Newest, messages)
                            .await?;
                        c.messages = Some(page);
                    }
                }
                Ok(out)
            }

            async fn list_conversations(
                &self,
                caller: &str,
                f: &ListFilter,
            ) -> StoreResult<ConversationPage> {
                // Filters shared by the page and the total; `$1` is the caller. The order and the
                // bounds use the membership's copy of the activity time: a page is a walk of
                // `members_by_activity`, however many conversations the caller is in.
                let mut wh = String::from("mb.user_id = $1");
                let mut args: Vec<Value> = vec![json!(caller)];
                fn arg(args: &mut Vec<Value>, v: Value) -> String {
                    args.push(v);
                    format!("${}", args.len())
                }
                if let Some(k) = &f.kind {
                    wh += &format!(" and c.kind = {}", arg(&mut args, json!(k)));
                }
                if let Some(t) = f.updated_after {
                    wh += &format!(" and mb.activity_at >= {}", arg(&mut args, json!(t.0)));
                }
                if let Some(t) = f.updated_before {
                    wh += &format!(" and mb.activity_at <= {}", arg(&mut args, json!(t.0)));
                }
                if !f.tags.is_empty() {
                    let ps: Vec<String> =
                        f.tags.iter().map(|t| arg(&mut args, json!(t))).collect();
                    let n = arg(&mut args, json!(f.tags.len() as i64));
                    wh += &format!(
                        " and (select count(*) from conversation_tags t where \
                         t.conversation_id = c.conversation_id and t.tag in ({})) = {n}",
                        ps.join(",")
                    );
                }
                if !f.exclude_tags.is_empty() {
                    let ps: Vec<String> =
                        f.exclude_tags.iter().map(|t| arg(&mut args, json!(t))).collect();
                    wh += &format!(
                        " and not exists (select 1 from conversation_tags t where \
                         t.conversation_id = c.conversation_id and t.tag in ({}))",
                        ps.join(",")
                    );
                }
                if let Some(q) = &f.q {
                    let p = arg(&mut args, json!(like_pattern(q)));
                    wh += &format!(
                        " and (lower(c.name) like {p} escape '\\' or exists (select 1 from \
                         members o join users u on u.user_id = o.user_id where \
                         o.conversation_id = c.conversation_id and o.user_id <> $1 and \
                         lower(u.name) like {p} escape '\\'))"
                    );
                }
                if f.unread_only {
                    wh += " and c.last_seq > mb.last_read_seq and exists (select 1 from messages m \
                           where m.conversation_id = c.conversation_id and m.seq > mb.last_read_seq \
                           and m.deleted_at is null and (m.sender_id is null or m.sender_id <> $1))";
                }
                let total_where = wh.clone();
                let total_args = args.clone();
                if let Some((at, id)) = &f.cursor {
                    let a = arg(&mut args, json!(at));
                    let i = arg(&mut args, json!(id));
                    wh += &format!(
                        " and (mb.activity_at < {a} or (mb.activity_at = {a} and mb.conversation_id < {i}))"
                    );
                }
                let lim = arg(&mut args, json!(f.limit as i64 + 1));
                let sql = format!(
                    "select {CONV_COLS}, {LISTED_COLS} \
                     from members mb join conversations c on c.conversation_id = mb.conversation_id \
                     left join messages lm on lm.message_id = c.last_message_id \
                     where {wh} order by mb.activity_at desc, mb.conversation_id desc limit {lim}"
                );
                fn bind_all<'q>(
                    mut q: sqlx::query::Query<'q, $db, <$db as sqlx::Database>::Arguments>,
                    args: &'q [Value],
                ) -> sqlx::query::Query<'q, $db, <$db as sqlx::Database>::Arguments> {
                    for a in args {
                        q = match a {
                            Value::Number(n) => q.bind(n.as_i64().unwrap_or(0)),
                            Value::String(s) => q.bind(s.as_str()),
                            _ => q.bind(Option::<String>::None),
                        };
                    }
                    q
                }
                self.tick(1);
                let fetched = bind_all(sqlx::query(AssertSqlSafe(sql)), &args)
                    .fetch_all(&mut *self.read().await?)
                    .await
                    .map_err(db_error)?;
                let mut rows = fetched
                    .iter()
                    .map(listed_from)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(db_error)?;
                let more = rows.len() > f.limit as usize;
                rows.truncate(f.limit as usize);
                let next = if more {
                    rows.last().map(|r| (r.row.activity_at, r.row.id.clone()))
                } else {
                    None
                };
                let total = if f.include_total {
                    self.tick(1);
                    let sql = format!(
                        "select count(*) from members mb join conversations c \
                         on c.conversation_id = mb.conversation_id where {total_where}"
                    );
                    let n: i64 = bind_all(sqlx::query(AssertSqlSafe(sql)), &total_args)
                        .fetch_one(&mut *self.read().await?)
                        .await
                        .map_err(db_error)?
                        .try_get(0)
                        .map_err(db_error)?;
                    Some(n)
                } else {
                    None
                };
                let conversations = Self::present(caller, rows);
                Ok(ConversationPage {
                    conversations,
                    next,
                    total,
                })
            }

            async fn update_conversation(
                &self,
                actor: &Actor,
                id: &str,
                patch: &ConversationPatch,
            ) -> StoreResult<Committed<()>> {
                let mut tx = self.begin().await?;
                let mut conv = self.lock_conversation(&mut tx, id, actor).await?;
                let mut pending = Vec::new();
                let renamed = patch.name.as_ref().is_some_and(|n| *n != conv.name);
                let restyled = patch.image_url.as_ref().is_some_and(|i| *i != conv.image_url);
                let recustomed = patch.custom.as_ref().is_some_and(|c| *c != conv.custom);
                if !(renamed || restyled || recustomed) {
                    self.commit(tx).await?;
                    return Ok(Committed { value: (), changes: Vec::new() });
                }
                if let Some(n) = &patch.name {
                    conv.name = n.clone();
                }
                if let Some(i) = &patch.image_url {
                    conv.image_url = i.clone();
                }
                if let Some(c) = &patch.custom {
                    conv.custom = c.clone();
                }
                conv.updated_at = now();
                self.tick(1);
                sqlx::query(
                    "update conversations set name = $2, image_url = $3, custom = $4, updated_at = $5 \
                     where conversation_id = $1",
                )
                .bind(id)
                .bind(conv.name.as_deref())
                .bind(conv.image_url.as_deref())
                .bind(json_text(&conv.custom))
                .bind(conv.updated_at)
                .execute(&mut *tx)
                .await
                .map_err(db_error)?;
                if renamed {
                    let system = NewMessage::system(json!({
                        "event": "renamed", "name": conv.name, "by": Self::system_by(actor),
                    }));
                    let (_, change) = self.append(&mut tx, &mut conv, system, actor.user_id()).await?;
                    pending.push(change);
                }
                self.conversation_updated(&mut tx, &conv, &mut pending).await?;
                let changes = self.record(&mut tx, pending).await?;
                self.commit(tx).await?;
                Ok(Committed { value: (), changes })
            }

            async fn set_tags(
                &self,
                actor: &Actor,
                id: &str,
                tags: &[String],
            ) -> StoreResult<Committed<()>> {
                let mut tx = self.begin().await?;
                let mut conv = self.lock_conversation(&mut tx, id, actor).await?;
                let current = self.tags_of(&mut tx, id).await?;
                let mut wanted: Vec<String> = tags.to_vec();
                wanted.sort();
                wanted.dedup();
                if wanted == current {
                    self.commit(tx).await?;
                    return Ok(Committed { value: (), changes: Vec::new() });
                }
                self.tick(2);
                sqlx::query("delete from conversation_tags where conversation_id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_error)?;
                if !wanted.is_empty() {
                    let sql = format!(
                        "insert into conversation_tags (conversation_id, tag) values {}",
                        tuples(1, wanted.len(), 2)
                    );
                    let mut q = sqlx::query(AssertSqlSafe(sql));
                    for tag in &wanted {
                        q = q.bind(id).bind(tag);
                    }
                    q.execute(&mut *tx).await.map_err(db_error)?;
                }
                conv.updated_at = now();
                self.tick(1);
                sqlx::query("update conversations set updated_at = $2 where conversation_id = $1")
                    .bind(id)
                    .bind(conv.updated_at)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_error)?;
                let changes = self
                    .record(
                        &mut tx,
                        vec![PendingChange {
                            conversation_id: id.to_owned(),
                            kind: ChangeKind::ConversationUpdated,
                            user_id: None,
                            data: conv.snapshot(&wanted),
                        }],
                    )
                    .await?;
                self.commit(tx).await?;
                Ok(Committed { value: (), changes })
            }

            async fn add_members(
                &self,
                actor: &Actor,
                id: &str,
                user_ids: &[String],
            ) -> StoreResult<Committed<()>> {
                let mut tx = self.begin().await?;
                let mut conv = self.lock_conversation(&mut tx, id, actor).await?;
                if conv.kind == "direct" {
                    return Err(StoreError::Invalid {
                        field: "user_ids",
                        message: "members cannot be added to a direct conversation".into(),
                    });
                }
                self.ensure_users(&mut tx, user_ids).await?;
                let t = now();
                let mut added: Vec<String> = Vec::new();
                for chunk in user_ids.chunks(500) {
                    self.tick(1);
                    let sql = format!(
                        "insert into members (conversation_id, user_id, role, last_read_seq, joined_at, \
                         activity_at) values {} on conflict do nothing returning user_id",
                        tuples(1, chunk.len(), 6)
                    );
                    let mut q = sqlx::query_scalar::<_, String>(AssertSqlSafe(sql));
                    for u in chunk {
                        q = q
                            .bind(id)
                            .bind(u)
                            .bind("member")
                            .bind(conv.last_seq)
                            .bind(t)
                            .bind(conv.activity_at);
                    }
                    added.extend(q.fetch_all(&mut *tx).await.map_err(db_error)?);
                }
                if added.is_empty() {
                    self.commit(tx).await?;
                    return Ok(Committed { value: (), changes: Vec::new() });
                }
                // Keep the request's order for the system message and the events.
                added.sort_by_key(|u| user_ids.iter().position(|x| x == u));
                conv.member_count += added.len() as i64;
                conv.updated_at = t;
                self.tick(1);
                sqlx::query(
                    "update conversations set member_count = $2, updated_at = $3 where conversation_id = $1",
                )
                .bind(id)
                .bind(conv.member_count)
                .bind(t)
                .execute(&mut *tx)
                .await
                .map_err(db_error)?;
                // The joined user learns of the conversation from this event (sync, realtime):
                // it carries the conversation as it is now.
                let tags = self.tags_of(&mut tx, id).await?;
                let snapshot = conv.snapshot(&tags);
                let mut pending: Vec<PendingChange> = added
                    .iter()
                    .map(|u| PendingChange {
                        conversation_id: id.to_owned(),
                        kind: ChangeKind::MemberJoined,
                        user_id: Some(u.clone()),
                        data: json!({"conversation_id": id, "user_id": u, "conversation": snapshot}),
                    })
                    .collect();
                let system = NewMessage::system(json!({
                    "event": "members_added", "user_ids": added, "by": Self::system_by(actor),
                }));
                let (_, change) = self.append(&mut tx, &mut conv, system, actor.user_id()).await?;
                pending.push(change);
                let changes = self.record(&mut tx, pending).await?;
                self.commit(tx).await?;
                Ok(Committed { value: (), changes })
            }

            async fn remove_member(
                &self,
                actor: &Actor,
                id: &str,
                user_id: &str,
            ) -> StoreResult<Committed<()>> {
                let mut tx = self.begin().await?;
                let mut conv = self.lock_conversation(&mut tx, id, actor).await?;
                self.tick(1);
                let roles: Vec<(String, String)> = {
                    let rows = sqlx::query(
                        "select user_id, role from members where conversation_id = $1 and user_id in ($2, $3)",
                    )
                    .bind(id)
                    .bind(user_id)
                    .bind(actor.user_id().unwrap_or(""))
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(db_error)?;
                    rows.iter()
                        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                        .collect::<Result<_, sqlx::Error>>()
                        .map_err(db_error)?
                };
                if !roles.iter().any(|(u, _)| u == user_id) {
                    return Err(StoreError::NotFound);
                }
                let allowed = match actor {
                    Actor::Server => true,
                    Actor::User(me) => {
                        me == user_id || roles.iter().any(|(u, r)| u == me && r == "owner")
                    }
                };
                if !allowed {
                    return Err(StoreError::Forbidden("only the owner may remove other members"));
                }
                if conv.kind == "direct" {
                    return Err(StoreError::Invalid {
                        field: "user_id",
                        message: "members cannot leave a direct conversation".into(),
                    });
                }
                self.tick(2);
                sqlx::query("delete from members where conversation_id = $1 and user_id = $2")
                    .bind(id)
                    .bind(user_id)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_error)?;
                conv.member_count -= 1;
                conv.updated_at = now();
                sqlx::query(
                    "update conversations set member_count = $2, updated_at = $3 where conversation_id = $1",
                )
                .bind(id)
                .bind(conv.member_count)
                .bind(conv.updated_at)
                .execute(&mut *tx)
                .await
                .map_err(db_error)?;
                let left = actor.user_id() == Some(user_id);
                let mut pending = vec![PendingChange {
                    conversation_id: id.to_owned(),
                    kind: ChangeKind::MemberLeft,
                    user_id: Some(user_id.to_owned()),
                    data: json!({"conversation_id": id, "user_id": user_id}),
                }];
                let system = NewMessage::system(json!({
                    "event": if left { "member_left" } else { "member_removed" },
                    "user_id": user_id, "by": Self::system_by(actor),
                }));
                let reader = if left { None } else { actor.user_id() };
                let (_, change) = self.append(&mut tx, &mut conv, system, reader).await?;
                pending.push(change);
                let changes = self.record(&mut tx, pending).await?;
                self.commit(tx).await?;
                Ok(Committed { value: (), changes })
            }

            /// Each statement of `$analyze` on a connection of its own, at once (the messages'
            /// sample, the largest, beside all the others'), unless that would leave a small
            /// pool (fewer than 4 connections) without one for requests meanwhile.
            async fn refresh_statistics(&self) -> StoreResult<()> {
                let statements: &[&'static str] = &[$($analyze),*];
                if self.writer.options().get_max_connections() >= 4 {
                    futures_util::future::try_join_all(
                        statements.iter().map(|&analyze| self.analyze(analyze)),
                    )
                    .await?;
                } else {
                    for &analyze in statements {
                        self.analyze(analyze).await?;
                    }
                }
                Ok(())
            }

            /// One transaction for the whole batch, with a fixed number of statements for its
            /// sends whatever their number: lock the conversations and read the memberships,
            /// look up `client_id` replays and parents, insert the messages, move the
            /// conversations' last-message fields and the senders' read positions. Sends take
            /// their seqs in arrival order; read marks run after the sends, one at a time.
            async fn write_batch_staged(
                &self,
                ops: &[WriteOp],
                staged: tokio::sync::oneshot::Sender<()>,
            ) -> StoreResult<BatchResult> {
                type Key = (String, String, String);
                let mut tx = self.begin().await?;

                // New users first (tokens' users and new conversations' members, in one
                // sorted statement), then new conversations: they lock nothing that exists but
                // those users and the pairs' keys, in order, so the locks below are still taken
                // in one order.
                let ensured: Vec<(usize, &str)> = ops
                    .iter()
                    .enumerate()
                    .filter_map(|(i, op)| match op {
                        WriteOp::EnsureUser { user_id } => Some((i, user_id.as_str())),
                        _ => None,
                    })
                    .collect();
                let creates: Vec<(usize, &NewConversation)> = ops
                    .iter()
                    .enumerate()
                    .filter_map(|(i, op)| match op {
                        WriteOp::Create(new) => Some((i, &**new)),
                        _ => None,
                    })
                    .collect();
                // The deactivated among the tokens' users and the creators: a creator
                // deactivated since its request was let in creates nothing.
                let mut named: Vec<&str> = ensured
                    .iter()
                    .map(|e| e.1)
                    .chain(creates.iter().filter_map(|c| c.1.created_by.as_deref()))
                    .collect();
                named.sort_unstable();
                named.dedup();
                let deactivated: std::collections::HashSet<String> = self
                    .fetch_in(
                        &mut tx,
                        "select user_id from users where deactivated_at is not null and user_id {in}",
                        &named,
                    )
                    .await?
                    .iter()
                    .map(|r| r.try_get(0))
                    .collect::<Result<_, sqlx::Error>>()
                    .map_err(db_error)?;
                let (refused, creates): (Vec<_>, Vec<_>) = creates
                    .into_iter()
                    .partition(|c| c.1.created_by.as_ref().is_some_and(|u| deactivated.contains(u)));
                let new_users: Vec<String> = ensured
                    .iter()
                    .map(|e| e.1.to_owned())
                    .chain(creates.iter().flat_map(|c| c.1.member_ids.iter().cloned()))
                    .collect();
                if !new_users.is_empty() {
                    self.ensure_users(&mut tx, &new_users).await?;
                }
                let (made, mut pending) = if creates.is_empty() {
                    (Vec::new(), Vec::new())
                } else {
                    let news: Vec<&NewConversation> = creates.iter().map(|c| c.1).collect();
                    self.insert_conversations(&mut tx, &news).await?
                };

                // Every (conversation, user) named, in conversation id order: the
                // conversations are locked in that order, so two nodes' batches cannot deadlock.
                let mut pairs: Vec<(&str, &str)> = ops
                    .iter()
                    .filter_map(|op| match op {
                        WriteOp::Create(_) | WriteOp::EnsureUser { .. } => None,
                        WriteOp::Send { conversation_id, sender_id, .. } => {
                            Some((conversation_id.as_str(), sender_id.as_str()))
                        }
                        WriteOp::Read { conversation_id, user_id, .. } => {
                            Some((conversation_id.as_str(), user_id.as_str()))
                        }
                    })
                    .collect();
                pairs.sort_unstable();
                pairs.dedup();
                // conversation -> (last_seq, last_message_at, last_message_id if moved)
                let mut convs: HashMap<String, (i64, Option<i64>, Option<String>)> = HashMap::new();
                let mut members: std::collections::HashSet<(String, String)> = Default::default();
                // One statement whatever the batch size (at most 10,000 ops, 20,000 SQLite
                // parameters): chunks would each lock in the database's collation order, not
                // in one order across them.
                if !pairs.is_empty() {
                    let chunk = &pairs[..];
                    self.tick(1);
                    let q = rows_query(
                        concat!(
                            "with v(cid, uid) as ({rows}) \
                             select c.conversation_id, c.last_seq, c.last_message_at, mb.user_id \
                             from v join members mb on mb.conversation_id = v.cid and mb.user_id = v.uid \
                             join conversations c on c.conversation_id = mb.conversation_id \
                             order by c.conversation_id ",
                            $lock
                        ),
                        vec![
                            Col::Text(chunk.iter().map(|p| p.0).collect()),
                            Col::Text(chunk.iter().map(|p| p.1).collect()),
                        ],
                    );
                    for r in q.fetch_all(&mut *tx).await.map_err(db_error)? {
                        let id: String = r.try_get(0).map_err(db_error)?;
                        let last_seq: i64 = r.try_get(1).map_err(db_error)?;
                        let last_at: Option<i64> = r.try_get(2).map_err(db_error)?;
                        members.insert((id.clone(), r.try_get(3).map_err(db_error)?));
                        convs.insert(id, (last_seq, last_at, None));
                    }
                }

                // Replays of sends already stored, and the conversations of named parents;
                // checked under the conversations' locks, so a racing retry that committed
                // first is seen.
                let sends: Vec<(usize, &str, &str, &SendInput)> = ops
                    .iter()
                    .enumerate()
                    .filter_map(|(i, op)| match op {
                        WriteOp::Send { conversation_id, sender_id, input }
                            if members.contains(&(conversation_id.clone(), sender_id.clone())) =>
                        {
                            Some((i, conversation_id.as_str(), sender_id.as_str(), &**input))
                        }
                        _ => None,
                    })
                    .collect();
                let keyed: Vec<(&str, &str, &str)> = sends
                    .iter()
                    .filter_map(|(_, c, u, input)| input.client_id.as_deref().map(|k| (*c, *u, k)))
                    .collect();
                let mut stored: HashMap<Key, Message> = HashMap::new();
                for chunk in keyed.chunks(1000) {
                    self.tick(1);
                    let sql = format!(
                        "with v(cid, uid, k) as ({{rows}}) select {MSG_COLS} from v \
                         join messages m on m.conversation_id = v.cid and m.sender_id = v.uid \
                         and m.client_id = v.k"
                    );
                    let q = rows_query(
                        &sql,
                        vec![
                            Col::Text(chunk.iter().map(|k| k.0).collect()),
                            Col::Text(chunk.iter().map(|k| k.1).collect()),
                            Col::Text(chunk.iter().map(|k| k.2).collect()),
                        ],
                    );
                    for r in q.fetch_all(&mut *tx).await.map_err(db_error)? {
                        let m = message_from(&r).map_err(db_error)?;
                        let key = (
                            m.conversation_id.clone(),
                            m.sender_id.clone().unwrap_or_default(),
                            m.client_id.clone().unwrap_or_default(),
                        );
                        stored.insert(key, m);
                    }
                }
                let parent_ids: Vec<&str> =
                    sends.iter().filter_map(|s| s.3.parent_id.as_deref()).collect();
                let mut parents: HashMap<String, String> = HashMap::new();
                let found = self
                    .fetch_in(
                        &mut tx,
                        "select message_id, conversation_id from messages where message_id {in}",
                        &parent_ids,
                    )
                    .await?;
                for r in found {
                    parents.insert(r.try_get(0).map_err(db_error)?, r.try_get(1).map_err(db_error)?);
                }

                // The sends, in arrival order.
                let mut outcomes: Vec<Option<StoreResult<WriteOutcome>>> =
                    (0..ops.len()).map(|_| None).collect();
                for &(i, user) in &ensured {
                    outcomes[i] = Some(Ok(WriteOutcome::User(if deactivated.contains(user) {
                        UserState::Deactivated
                    } else {
                        UserState::Active
                    })));
                }
                for ((i, _), outcome) in creates.iter().zip(made) {
                    outcomes[*i] = Some(outcome.map(|(id, created)| WriteOutcome::Created { id, created }));
                }
                for (i, _) in &refused {
                    outcomes[*i] = Some(Err(StoreError::Forbidden($crate::storage::CREATOR_DEACTIVATED)));
                }
                let mut rows: Vec<(Message, NewMessage<'_>)> = Vec::new();
                let mut created: HashMap<Key, usize> = HashMap::new();
                let mut read_to: HashMap<(&str, &str), i64> = HashMap::new();
                let batch_now = now();
                // Each conversation's first message of this batch: its time is the
                // conversation's first message's if it had none (retention's starting point).
                let mut first_at: HashMap<&str, i64> = HashMap::new();
                for (i, op) in ops.iter().enumerate() {
                    if let WriteOp::Send { .. } = op {
                        outcomes[i] = Some(Err(StoreError::NotFound));
                    }
                }
                for &(i, cid, sender, input) in &sends {
                    let key = input
                        .client_id
                        .as_deref()
                        .map(|k| (cid.to_owned(), sender.to_owned(), k.to_owned()));
                    if let Some(key) = &key {
                        let replay = stored
                            .get(key)
                            .cloned()
                            .or_else(|| created.get(key).map(|&j| rows[j].0.clone()));
                        if let Some(message) = replay {
                            outcomes[i] = Some(Ok(WriteOutcome::Sent {
                                message: Box::new(message),
                                created: false,
                            }));
                            continue;
                        }
                    }
                    if let Some(parent) = &input.parent_id
                        && parents.get(parent).map(String::as_str) != Some(cid)
                    {
                        outcomes[i] = Some(Err(StoreError::Invalid {
                            field: "parent_id",
                            message: "is not a message of this conversation".into(),
                        }));
                        continue;
                    }
                    let conv = convs.get_mut(cid).expect("a member's conversation is locked");
                    let t = batch_now.max(conv.1.unwrap_or(0));
                    first_at.entry(cid).or_insert(t);
                    let seq = conv.0 + 1;
                    let m = NewMessage::regular(sender, input);
                    let message = Message {
                        id: new_id(),
                        conversation_id: cid.to_owned(),
                        seq,
                        sender_id: Some(sender.to_owned()),
                        client_id: input.client_id.clone(),
                        kind: m.kind.to_owned(),
                        text: input.text.clone(),
                        encrypted: input.encrypted.clone(),
                        attachments: input
                            .attachments
                            .as_ref()
                            .map(|a| Value::Array(a.clone()))
                            .unwrap_or_else(|| json!([])),
                        parent_id: input.parent_id.clone(),
                        custom: input.custom.clone().unwrap_or_else(|| json!({})),
                        created_at: Timestamp(t),
                        edited_at: None,
                        deleted_at: None,
                    };
                    *conv = (seq, Some(t), Some(message.id.clone()));
                    read_to.insert((cid, sender), seq);
                    parents.insert(message.id.clone(), cid.to_owned());
                    pending.push(PendingChange {
                        conversation_id: cid.to_owned(),
                        kind: ChangeKind::MessageNew,
                        user_id: None,
                        data: serde_json::to_value(&message).unwrap_or(Value::Null),
                    });
                    outcomes[i] = Some(Ok(WriteOutcome::Sent {
                        message: Box::new(message.clone()),
                        created: true,
                    }));
                    if let Some(key) = key {
                        created.insert(key, rows.len());
                    }
                    rows.push((message, m));
                }

                for chunk in rows.chunks(1000) {
                    self.tick(1);
                    rows_query(
                        "insert into messages (message_id, conversation_id, seq, sender_id, client_id, \
                         kind, text, encrypted, attachments, parent_id, custom, created_at) {rows}",
                        vec![
                            Col::Text(chunk.iter().map(|r| r.0.id.as_str()).collect()),
                            Col::Text(chunk.iter().map(|r| r.0.conversation_id.as_str()).collect()),
                            Col::Int(chunk.iter().map(|r| r.0.seq).collect()),
                            Col::OptText(chunk.iter().map(|r| r.1.sender_id).collect()),
                            Col::OptText(chunk.iter().map(|r| r.1.client_id).collect()),
                            Col::Text(chunk.iter().map(|r| r.1.kind).collect()),
                            Col::OptText(chunk.iter().map(|r| r.1.text).collect()),
                            Col::OptText(chunk.iter().map(|r| r.1.encrypted.as_deref()).collect()),
                            Col::Text(chunk.iter().map(|r| r.1.attachments.as_str()).collect()),
                            Col::OptText(chunk.iter().map(|r| r.1.parent_id).collect()),
                            Col::Text(chunk.iter().map(|r| r.1.custom.as_str()).collect()),
                            Col::Int(chunk.iter().map(|r| r.0.created_at.0).collect()),
                        ],
                    )
                    .execute(&mut *tx)
                    .await
                    .map_err(db_error)?;
                }
                let moved: Vec<(&String, i64, i64, &String)> = convs
                    .iter()
                    .filter_map(|(id, (seq, at, last))| {
                        last.as_ref().map(|l| (id, *seq, at.unwrap_or(0), l))
                    })
                    .collect();
                for chunk in moved.chunks(1000) {
                    self.tick(1);
                    rows_query(
                        "with v(cid, seq, mid, t, ft) as ({rows}) update conversations \
                         set last_seq = v.seq, last_message_id = v.mid, last_message_at = v.t, \
                         activity_at = v.t, first_message_at = coalesce(first_message_at, v.ft) \
                         from v where conversations.conversation_id = v.cid",
                        vec![
                            Col::Text(chunk.iter().map(|m| m.0.as_str()).collect()),
                            Col::Int(chunk.iter().map(|m| m.1).collect()),
                            Col::Text(chunk.iter().map(|m| m.3.as_str()).collect()),
                            Col::Int(chunk.iter().map(|m| m.2).collect()),
                            Col::Int(
                                chunk
                                    .iter()
                                    .map(|m| first_at.get(m.0.as_str()).copied().unwrap_or(m.2))
                                    .collect(),
                            ),
                        ],
                    )
                    .execute(&mut *tx)
                    .await
                    .map_err(db_error)?;
                }
                // Every member of a moved conversation: the copy of its activity time (the
                // conversation list's order); each sender: its read position up to its send.
                // One statement writes each member row once (on PostgreSQL a second update
                // of the row is a second row version).
                let t_of: HashMap<&str, i64> = moved.iter().map(|m| (m.0.as_str(), m.2)).collect();
                let mut members_rows: Vec<(&str, i64, &str, i64)> = read_to
                    .iter()
                    .map(|(&(cid, uid), &s)| (cid, t_of.get(cid).copied().unwrap_or(0), uid, s))
                    .collect();
                let read_in: std::collections::HashSet<&str> =
                    read_to.keys().map(|k| k.0).collect();
                members_rows.extend(
                    moved
                        .iter()
                        .filter(|m| !read_in.contains(m.0.as_str()))
                        .map(|m| (m.0.as_str(), m.2, "", 0)),
                );
                for chunk in members_rows.chunks(1000) {
                    self.tick(1);
                    rows_query(
                        "with v(cid, t, uid, s) as ({rows}), \
                         x as (select m.conversation_id as cid, m.user_id as uid, max(v.t) as t, \
                           max(case when v.uid = m.user_id then v.s else 0 end) as s \
                           from v join members m on m.conversation_id = v.cid \
                           group by m.conversation_id, m.user_id) \
                         update members set \
                           activity_at = case when x.t > members.activity_at then x.t \
                             else members.activity_at end, \
                           last_read_seq = case when x.s > members.last_read_seq then x.s \
                             else members.last_read_seq end \
                         from x where members.conversation_id = x.cid and members.user_id = x.uid",
                        vec![
                            Col::Text(chunk.iter().map(|r| r.0).collect()),
                            Col::Int(chunk.iter().map(|r| r.1).collect()),
                            Col::Text(chunk.iter().map(|r| r.2).collect()),
                            Col::Int(chunk.iter().map(|r| r.3).collect()),
                        ],
                    )
                    .execute(&mut *tx)
                    .await
                    .map_err(db_error)?;
                }

                // Read marks, after the sends they may cover.
                for (i, op) in ops.iter().enumerate() {
                    let WriteOp::Read { conversation_id, user_id, seq } = op else {
                        continue;
                    };
                    let outcome = self
                        .read_in_tx(&mut tx, conversation_id, user_id, *seq, &mut pending)
                        .await;
                    // A database failure aborts the transaction: every op fails with it.
                    if let Err(e @ (StoreError::Other(_) | StoreError::Unavailable(_) | StoreError::Conflict(_))) = &outcome {
                        let msg = e.to_string();
                        drop(tx);
                        return Err(StoreError::Unavailable(msg));
                    }
                    outcomes[i] = Some(outcome);
                }
                let _ = staged.send(());
                let changes = self.record(&mut tx, pending).await?;
                self.commit(tx).await?;
                Ok(BatchResult {
                    outcomes: outcomes.into_iter().map(|o| o.expect("every op ran")).collect(),
                    changes,
                })
            }

            async fn page_messages(
                &self,
                caller: &str,
                conversation_id: &str,
                bound: PageBound,
                limit: u32,
            ) -> StoreResult<(Vec<Message>, bool)> {
                let (cond, order, seq) = match bound {
                    PageBound::Newest => ("", "desc", 0),
                    PageBound::Before(s) => (" and m.seq < $4", "desc", s),
                    PageBound::After(s) => (" and m.seq > $4", "asc", s),
                };
                let sql = format!(
                    "select {MSG_COLS} from members mb left join messages m \
                     on m.conversation_id = mb.conversation_id{cond} \
                     where mb.conversation_id = $1 and mb.user_id = $2 \
                     order by m.seq {order} limit $3"
                );
                self.tick(1);
                let mut q = sqlx::query(AssertSqlSafe(sql))
                    .bind(conversation_id)
                    .bind(caller)
                    .bind(limit as i64 + 1);
                if !cond.is_empty() {
                    q = q.bind(seq);
                }
                let rows = q.fetch_all(&mut *self.read().await?).await.map_err(db_error)?;
                if rows.is_empty() {
                    return Err(StoreError::NotFound);
                }
                let mut messages = Vec::with_capacity(rows.len());
                for r in &rows {
                    if r.try_get::<Option<String>, _>("message_id").map_err(db_error)?.is_some() {
                        messages.push(message_from(r).map_err(db_error)?);
                    }
                }
                let more = messages.len() > limit as usize;
                messages.truncate(limit as usize);
                if order == "desc" {
                    messages.reverse();
                }
                Ok((messages, more))
            }

            async fn edit_message(
                &self,
                actor: &Actor,
                message_id: &str,
                text: Option<&str>,
                custom: Option<&Value>,
            ) -> StoreResult<Committed<Message>> {
                let mut tx = self.begin().await?;
                let m = self.message_for_change(&mut tx, actor, message_id).await?;
                if actor.user_id().is_none() || m.sender_id.as_deref() != actor.user_id() {
                    return Err(StoreError::Forbidden("only the sender may edit a message"));
                }
                if m.deleted_at.is_some() {
                    return Err(StoreError::Conflict("message is deleted".into()));
                }
                let t = now();
                self.tick(1);
                let done = sqlx::query(
                    "update messages set text = coalesce($2, text), custom = coalesce($3, custom), \
                     edited_at = $4 where message_id = $1 and deleted_at is null",
                )
                .bind(message_id)
                .bind(text)
                .bind(custom.map(json_text))
                .bind(t)
                .execute(&mut *tx)
                .await
                .map_err(db_error)?;
                // Deleted since it was read above (a concurrent delete): a tombstone stays one.
                if done.rows_affected() == 0 {
                    return Err(StoreError::Conflict("message is deleted".into()));
                }
                let message = self.reload_message(&mut tx, message_id).await?;
                let changes = self
                    .record(
                        &mut tx,
                        vec![PendingChange {
                            conversation_id: message.conversation_id.clone(),
                            kind: ChangeKind::MessageUpdated,
                            user_id: None,
                            data: serde_json::to_value(&message).unwrap_or(Value::Null),
                        }],
                    )
                    .await?;
                self.commit(tx).await?;
                Ok(Committed { value: message, changes })
            }

            async fn delete_message(
                &self,
                actor: &Actor,
                message_id: &str,
            ) -> StoreResult<Committed<Message>> {
                let mut tx = self.begin().await?;
                let m = self.message_for_change(&mut tx, actor, message_id).await?;
                if let Actor::User(u) = actor {
                    if m.sender_id.as_deref() != Some(u.as_str()) {
                        return Err(StoreError::Forbidden("only the sender may delete a message"));
                    }
                }
                if m.deleted_at.is_some() {
                    self.commit(tx).await?;
                    return Ok(Committed { value: m, changes: Vec::new() });
                }
                self.tick(1);
                sqlx::query(
                    "update messages set text = null, encrypted = null, attachments = '[]', \
                     deleted_at = $2 where message_id = $1",
                )
                .bind(message_id)
                .bind(now())
                .execute(&mut *tx)
                .await
                .map_err(db_error)?;
                let message = self.reload_message(&mut tx, message_id).await?;
                let changes = self
                    .record(
                        &mut tx,
                        vec![PendingChange {
                            conversation_id: message.conversation_id.clone(),
                            kind: ChangeKind::MessageDeleted,
                            user_id: None,
                            data: serde_json::to_value(&message).unwrap_or(Value::Null),
                        }],
                    )
                    .await?;
                self.commit(tx).await?;
                Ok(Committed { value: message, changes })
            }

            async fn unread(&self, user: &str) -> StoreResult<Vec<(String, i64)>> {
                self.tick(1);
                let mut v: Vec<(String, i64)> =
                    self.unread_counts(user, None).await?.into_iter().collect();
                v.sort();
                Ok(v)
            }

            async fn changes_for(
                &self,
                user: &str,
                after: i64,
                upto: i64,
                limit: u32,
            ) -> StoreResult<Vec<Change>> {
                self.tick(1);
                let rows = sqlx::query(
                    "select ch.pos, ch.conversation_id, ch.kind, ch.user_id, ch.data, ch.created_at \
                     from changes ch where ch.pos > $2 and ch.pos <= $4 and (ch.user_id = $1 or exists (select 1 \
                     from members mb where mb.conversation_id = ch.conversation_id and mb.user_id = $1)) \
                     order by ch.pos limit $3",
                )
                .bind(user)
                .bind(after)
                .bind(limit as i64)
                .bind(upto)
                .fetch_all(&mut *self.read().await?)
                .await
                .map_err(db_error)?;
                rows.iter().map(change_from).collect::<Result<_, _>>().map_err(db_error)
            }

            async fn conversation_ids_of(&self, user: &str) -> StoreResult<Vec<String>> {
                self.tick(1);
                sqlx::query_scalar("select conversation_id from members where user_id = $1")
                    .bind(user)
                    .fetch_all(&mut *self.read().await?)
                    .await
                    .map_err(db_error)
            }

            async fn direct_partners(&self, user: &str) -> StoreResult<Vec<String>> {
                self.tick(1);
                sqlx::query_scalar(
                    "select o.user_id from members mb \
                     join conversations c on c.conversation_id = mb.conversation_id and c.kind = 'direct' \
                     join members o on o.conversation_id = mb.conversation_id and o.user_id <> mb.user_id \
                     where mb.user_id = $1",
                )
                .bind(user)
                .fetch_all(&mut *self.read().await?)
                .await
                .map_err(db_error)
            }

            async fn set_last_seen(&self, user: &str, at: Timestamp) -> StoreResult<()> {
                self.tick(1);
                sqlx::query("update users set last_seen_at = $2 where user_id = $1")
                    .bind(user)
                    .bind(at.0)
                    .execute(&self.writer)
                    .await
                    .map_err(db_error)?;
                self.committed();
                Ok(())
            }

            async fn positions(&self) -> StoreResult<(i64, i64)> {
                self.tick(1);
                // Two lookups by key in one row: an `in` list of the two names costs SQLite an
                // ephemeral index per execution (6.0 against 4.2 µs), and this is the whole of
                // an idle sync's database work.
                let r = sqlx::query(
                    "select (select value from counters where name = 'changes_floor'), \
                     (select value from counters where name = 'changes')",
                )
                .fetch_one(&mut *self.read().await?)
                .await
                .map_err(db_error)?;
                let floor: Option<i64> = r.try_get(0).map_err(db_error)?;
                let head: Option<i64> = r.try_get(1).map_err(db_error)?;
                Ok((floor.unwrap_or(0), head.unwrap_or(0)))
            }

            fn enable_outbox(&self, outbox: std::sync::Arc<dyn Outbox>) {
                let _ = self.outbox.set(outbox);
            }

            async fn claim_deliveries(
                &self,
                now: i64,
                lease_ms: i64,
                limit: u32,
            ) -> StoreResult<Vec<Delivery>> {
                self.tick(1);
                let sql = format!(
                    "update webhook_deliveries set lease_until = $2 where delivery_id in ( \
                       select d.delivery_id from webhook_deliveries d \
                       where d.status = 'pending' and d.next_attempt_at <= $1 and d.lease_until < $1 \
                       and not exists (select 1 from webhook_deliveries o where \
                         o.conversation_id = d.conversation_id and o.status = 'pending' and o.pos < d.pos) \
                       order by d.pos limit $3 {}) \
                     returning {DELIVERY_COLS}",
                    $skip_locked
                );
                let rows = sqlx::query(AssertSqlSafe(sql))
                    .bind(now)
                    .bind(now + lease_ms)
                    .bind(limit as i64)
                    .fetch_all(&self.writer)
                    .await
                    .map_err(db_error)?;
                self.committed();
                let mut out = rows.iter().map(delivery_from).collect::<Result<Vec<_>, _>>().map_err(db_error)?;
                out.sort_by_key(|d| d.pos);
                Ok(out)
            }

            async fn finish_delivery(&self, id: &str, result: &AttemptResult) -> StoreResult<()> {
                self.tick(1);
                let t = now();
                let (status, error, next, delivered) = match result {
                    AttemptResult::Delivered => ("delivered", None, t, Some(t)),
                    AttemptResult::Failed { error, retry_at: Some(at) } => ("pending", Some(error.as_str()), *at, None),
                    AttemptResult::Failed { error, retry_at: None } => ("dead", Some(error.as_str()), t, None),
                };
                sqlx::query(
                    "update webhook_deliveries set status = $2, attempts = attempts + 1, \
                     last_error = $3, next_attempt_at = $4, delivered_at = $5, lease_until = 0 \
                     where delivery_id = $1",
                )
                .bind(id)
                .bind(status)
                .bind(error)
                .bind(next)
                .bind(delivered)
                .execute(&self.writer)
                .await
                .map_err(db_error)?;
                self.committed();
                Ok(())
            }

            async fn list_deliveries(
                &self,
                status: Option<&str>,
                after: i64,
                limit: u32,
            ) -> StoreResult<Vec<Delivery>> {
                self.tick(1);
                let sql = format!(
                    "select {DELIVERY_COLS} from webhook_deliveries \
                     where ($1 = '' or status = $1) and pos > $2 order by pos, delivery_id limit $3"
                );
                let rows = sqlx::query(AssertSqlSafe(sql))
                    .bind(status.unwrap_or(""))
                    .bind(after)
                    .bind(limit as i64)
                    .fetch_all(&mut *self.read().await?)
                    .await
                    .map_err(db_error)?;
                rows.iter().map(delivery_from).collect::<Result<_, _>>().map_err(db_error)
            }

            async fn retry_delivery(&self, id: &str, now: i64) -> StoreResult<Delivery> {
                self.tick(1);
                // Not while an attempt is in flight: it would be sent twice at once.
                let sql = format!(
                    "update webhook_deliveries set status = 'pending', next_attempt_at = $2, \
                     lease_until = 0 where delivery_id = $1 and lease_until < $2 returning {DELIVERY_COLS}"
                );
                let row = sqlx::query(AssertSqlSafe(sql))
                    .bind(id)
                    .bind(now)
                    .fetch_optional(&self.writer)
                    .await
                    .map_err(db_error)?;
                self.committed();
                match row {
                    Some(row) => delivery_from(&row).map_err(db_error),
                    None => {
                        self.tick(1);
                        let exists: Option<i64> = sqlx::query_scalar(
                            "select attempts from webhook_deliveries where delivery_id = $1",
                        )
                        .bind(id)
                        .fetch_optional(&mut *self.read().await?)
                        .await
                        .map_err(db_error)?;
                        Err(match exists {
                            Some(_) => StoreError::Conflict("an attempt is in flight".into()),
                            None => StoreError::NotFound,
                        })
                    }
                }
            }

            async fn delivery_counts(&self) -> StoreResult<Vec<(String, i64)>> {
                self.tick(1);
                let rows = sqlx::query("select status, count(*) from webhook_deliveries group by status")
                    .fetch_all(&mut *self.read().await?)
                    .await
                    .map_err(db_error)?;
                rows.iter()
                    .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                    .collect::<Result<_, sqlx::Error>>()
                    .map_err(db_error)
            }

            async fn purge_before(&self, cutoff: i64, batch: u32) -> StoreResult<Purged> {
                let mut purged = Purged::default();
                // Messages. Within a conversation created_at never decreases with seq (sends
                // are stamped no earlier than its last message, imports renumber), so the
                // messages older than the window are a prefix of each conversation, found from
                // the conversations whose first message is older (`first_message_at`), oldest
                // first, at most `PURGE_CONVERSATIONS` a pass.
                self.tick(1);
                let convs: Vec<String> = sqlx::query_scalar(
                    "select conversation_id from conversations where first_message_at < $1 \
                     order by first_message_at limit $2",
                )
                .bind(cutoff)
                .bind(i64::from(batch.min($crate::storage::PURGE_CONVERSATIONS)))
                .fetch_all(&self.writer)
                .await
                .map_err(db_error)?;
                purged.conversations = convs.len() as u64;
                // One short transaction for all of them. Each conversation is locked as sends
                // lock it, just before its messages go; on PostgreSQL one a writer holds is
                // skipped rather than waited for (waiting while holding the others could
                // deadlock with a batch that locks several).
                let mut skipped: Vec<&str> = Vec::new();
                // (None: no transaction, which on SQLite would take the writer.)
                if !convs.is_empty() {
                    let mut tx = self.begin().await?;
                    for c in &convs {
                        let room = batch as usize - purged.messages as usize;
                        if room == 0 {
                            break;
                        }
                        match self.purge_conversation(&mut tx, c, cutoff, room, true).await? {
                            Some(n) => purged.messages += n,
                            None => skipped.push(c),
                        }
                    }
                    self.commit(tx).await?;
                }
                // Those a writer held, each in a transaction of its own that waits for it
                // (holding no other lock, it cannot deadlock), so that a busy conversation is
                // not left for the next interval. One held past the statement timeout (a long
                // import batch) is left for the next pass; the rest of this one goes on.
                for c in skipped {
                    let room = batch as usize - purged.messages as usize;
                    if room == 0 {
                        break;
                    }
                    let mut tx = self.begin().await?;
                    match self.purge_conversation(&mut tx, c, cutoff, room, false).await {
                        Ok(n) => {
                            self.commit(tx).await?;
                            purged.messages += n.unwrap_or(0);
                        }
                        Err(e) => {
                            // Rolled back when dropped.
                            tracing::warn!(conversation_id = c, error = %e, "retention skipped a conversation it waited for");
                        }
                    }
                }

                // Changes: tokens below the highest deleted position can no longer be served.
                let mut tx = self.begin().await?;
                self.tick(2);
                let deleted: Vec<i64> = sqlx::query_scalar(
                    "delete from changes where pos in (select pos from changes \
                     where created_at < $1 order by pos limit $2) returning pos",
                )
                .bind(cutoff)
                .bind(batch as i64)
                .fetch_all(&mut *tx)
                .await
                .map_err(db_error)?;
                purged.changes = deleted.len() as u64;
                if let Some(top) = deleted.iter().max() {
                    sqlx::query(
                        "update counters set value = $1 where name = 'changes_floor' and value < $1",
                    )
                    .bind(*top)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_error)?;
                }
                self.commit(tx).await?;

                self.tick(1);
                purged.deliveries = sqlx::query(
                    "delete from webhook_deliveries where delivery_id in (select delivery_id from \
                     webhook_deliveries where status <> 'pending' and created_at < $1 limit $2)",
                )
                .bind(cutoff)
                .bind(batch as i64)
                .execute(&self.writer)
                .await
                .map_err(db_error)?
                .rows_affected();
                self.committed();
                Ok(purged)
            }

            async fn import_prepare(&self, batch: &ImportBatch) -> StoreResult<$crate::storage::ImportPrepared> {
                let mut out = ImportOutcome::default();
                let t = now();
                let mut tx = self.begin().await?;
                let mut pending: Vec<PendingChange> = Vec::new();

                // Users: new ones with their fields; existing ones are left as they are. In id
                // order, and conversations in external-id order, so two imports cannot deadlock.
                let mut users: Vec<&(usize, UserInput)> = batch.users.iter().collect();
                users.sort_by(|a, b| a.1.id.cmp(&b.1.id));
                users.dedup_by(|a, b| a.1.id == b.1.id);
                for chunk in users.chunks(500) {
                    self.tick(1);
                    let sql = format!(
                        "insert into users (user_id, name, image_url, kind, custom, created_at, updated_at) \
                         values {} on conflict (user_id) do nothing",
                        tuples(1, chunk.len(), 7)
                    );
                    let mut q = sqlx::query(AssertSqlSafe(sql));
                    for (_, u) in chunk {
                        q = q
                            .bind(&u.id)
                            .bind(u.name.clone().unwrap_or_else(|| u.id.clone()))
                            .bind(u.image_url.clone().flatten())
                            .bind(u.kind.clone().unwrap_or_else(|| "user".into()))
                            .bind(u.custom.as_ref().map(json_text).unwrap_or_else(|| "{}".into()))
                            .bind(t)
                            .bind(t);
                    }
                    q.execute(&mut *tx).await.map_err(db_error)?;
                }
                if batch.refresh_users {
                    // Users that were there with another name or kind take the record's (those
                    // just inserted already have it); a field the record lacks stays.
                    let named: Vec<&UserInput> = users
                        .iter()
                        .map(|(_, u)| u)
                        .filter(|u| u.name.is_some() || u.kind.is_some())
                        .collect();
                    for chunk in named.chunks(500) {
                        self.tick(1);
                        let sql = format!(
                            "update users set name = coalesce(v.column2, users.name), \
                             kind = coalesce(v.column3, users.kind), updated_at = v.column4 \
                             from (values {}) as v where users.user_id = v.column1 \
                             and (users.name <> coalesce(v.column2, users.name) \
                               or users.kind <> coalesce(v.column3, users.kind))",
                            tuples(1, chunk.len(), 4)
                        );
                        let mut q = sqlx::query(AssertSqlSafe(sql));
                        for u in chunk {
                            q = q.bind(&u.id).bind(u.name.as_deref()).bind(u.kind.as_deref()).bind(t);
                        }
                        q.execute(&mut *tx).await.map_err(db_error)?;
                    }
                }
                out.users = batch.users.len() as u64;
                // A batch's 100,000-200,000 messages name a few thousand senders: those are copied and
                // sorted (by ensure_users), not every mention.
                let referenced: Vec<String> = batch
                    .conversations
                    .iter()
                    .flat_map(|c| c.member_ids.iter())
                    .chain(batch.messages.iter().filter_map(|m| m.sender_id.as_ref()))
                    .map(String::as_str)
                    .collect::<std::collections::HashSet<&str>>()
                    .into_iter()
                    .map(str::to_owned)
                    .collect();
                self.ensure_users(&mut tx, &referenced).await?;

                // Conversations: insert the new ones in bulk, then resolve every external id.
                // external id -> (id, last_seq, last_message_at)
                let mut convs: HashMap<String, (String, i64, Option<i64>)> = HashMap::new();
                let mut created: Vec<(String, &$crate::storage::ImportConversation)> = Vec::new();
                let mut conv_records: Vec<&$crate::storage::ImportConversation> =
                    batch.conversations.iter().collect();
                conv_records.sort_by(|a, b| a.external_id.cmp(&b.external_id));
                // One record per external id (the first): the row and its members agree.
                conv_records.dedup_by(|a, b| a.external_id == b.external_id);
                for chunk in conv_records.chunks(200) {
                    self.tick(1);
                    let sql = format!(
                        "insert into conversations (conversation_id, kind, name, image_url, external_id, \
                         direct_key, custom, member_count, activity_at, created_at, updated_at) values {} \
                         on conflict do nothing returning conversation_id, external_id",
                        tuples(1, chunk.len(), 11)
                    );
                    let mut q = sqlx::query(AssertSqlSafe(sql));
                    let mut ids = HashMap::new();
                    for c in chunk {
                        let id = new_id();
                        let at = c.created_at.unwrap_or(t);
                        let direct_key = (c.kind == "direct").then(|| {
                            let mut pair: Vec<&str> = c.member_ids.iter().map(String::as_str).collect();
                            pair.sort_unstable();
                            pair.join(" ")
                        });
                        q = q
                            .bind(id.clone())
                            .bind(&c.kind)
                            .bind(c.name.as_deref())
                            .bind(c.image_url.as_deref())
                            .bind(&c.external_id)
                            .bind(direct_key)
                            .bind(json_text(&c.custom))
                            .bind(c.member_ids.len() as i64)
                            .bind(at)
                            .bind(at)
                            .bind(at);
                        ids.insert(c.external_id.clone(), c);
                    }
                    for r in q.fetch_all(&mut *tx).await.map_err(db_error)? {
                        let id: String = r.try_get(0).map_err(db_error)?;
                        let ext: String = r.try_get(1).map_err(db_error)?;
                        if let Some(c) = ids.get(&ext) {
                            convs.insert(ext.clone(), (id.clone(), 0, None));
                            created.push((id, c));
                        }
                    }
                }
                if !created.is_empty() {
                    let rows: Vec<(&str, &str, &str, i64)> = created
                        .iter()
                        .flat_map(|(id, c)| {
                            let at = c.created_at.unwrap_or(t);
                            c.member_ids.iter().map(move |m| (id.as_str(), m.as_str(), "member", at))
                        })
                        .collect();
                    self.import_members(&mut tx, &rows).await?;
                    let tags: Vec<(&str, &str)> = created
                        .iter()
                        .flat_map(|(id, c)| c.tags.iter().map(move |tag| (id.as_str(), tag.as_str())))
                        .collect();
                    self.insert_tags(&mut tx, &tags).await?;
                    for (id, c) in &created {
                        let at = c.created_at.unwrap_or(t);
                        let mut tags = c.tags.clone();
                        tags.sort();
                        tags.dedup();
                        pending.push(PendingChange {
                            conversation_id: id.clone(),
                            kind: ChangeKind::ConversationCreated,
                            user_id: None,
                            data: json!({
                                "id": id, "type": c.kind, "name": c.name, "image_url": c.image_url,
                                "created_by": Value::Null, "external_id": c.external_id,
                                "custom": c.custom, "tags": tags,
                                "member_count": c.member_ids.len(), "last_seq": 0,
                                "created_at": Timestamp(at), "updated_at": Timestamp(at),
                                "last_message_at": Value::Null, "member_ids": c.member_ids,
                            }),
                        });
                    }
                    out.upserted += created.len() as u64;
                }
                // Every external id this batch names, existing or just made.
                let mut wanted: Vec<&str> = batch
                    .conversations
                    .iter()
                    .map(|c| c.external_id.as_str())
                    .chain(batch.messages.iter().map(|m| m.conversation_external_id.as_str()))
                    .filter(|e| !convs.contains_key(*e))
                    .collect::<std::collections::HashSet<&str>>()
                    .into_iter()
                    .collect();
                wanted.sort_unstable();
                let found = self
                    .fetch_in(
                        &mut tx,
                        "select conversation_id, external_id, last_seq, last_message_at from conversations \
                         where external_id {in}",
                        &wanted,
                    )
                    .await?;
                for r in found {
                    convs.insert(
                        r.try_get(1).map_err(db_error)?,
                        (r.try_get(0).map_err(db_error)?, r.try_get(2).map_err(db_error)?, r.try_get(3).map_err(db_error)?),
                    );
                }
                // A direct record whose pair already has a conversation under another external
                // id (or none) is that conversation.
                for c in &batch.conversations {
                    if convs.contains_key(&c.external_id) {
                        out.conversations += 1;
                        continue;
                    }
                    if c.kind == "direct" {
                        let mut pair: Vec<&str> = c.member_ids.iter().map(String::as_str).collect();
                        pair.sort_unstable();
                        self.tick(1);
                        let found = sqlx::query(
                            "select conversation_id, last_seq, last_message_at from conversations where direct_key = $1",
                        )
                        .bind(pair.join(" "))
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(db_error)?;
                        if let Some(r) = found {
                            let existing: String = r.try_get(0).map_err(db_error)?;
                            // The pair's conversation takes this external id if it has none,
                            // so later records (and re-imports) find it by it.
                            self.tick(1);
                            sqlx::query(
                                "update conversations set external_id = $2 where conversation_id = $1 and external_id is null",
                            )
                            .bind(&existing)
                            .bind(&c.external_id)
                            .execute(&mut *tx)
                            .await
                            .map_err(db_error)?;
                            convs.insert(
                                c.external_id.clone(),
                                (r.try_get(0).map_err(db_error)?, r.try_get(1).map_err(db_error)?, r.try_get(2).map_err(db_error)?),
                            );
                            out.conversations += 1;
                            continue;
                        }
                    }
                    out.errors.push((c.line, "external_id is taken by a conversation of another kind".into(), "external_id"));
                }

                // The users and conversations are committed first; the messages follow in
                // `$shards` shards of disjoint conversations, run at once (on PostgreSQL each is
                // a backend of its own: one backend's COPY is the import's bottleneck), each in
                // transactions of at most `$tx_messages` messages, one after the other.
                let changes = self.record(&mut tx, pending).await?;
                self.commit(tx).await?;
                Ok($crate::storage::ImportPrepared {
                    outcome: out,
                    conversations: convs.into_iter().map(|(ext, (id, _, _))| (ext, id)).collect(),
                    created: created.into_iter().map(|(id, _)| id).collect(),
                    changes,
                })
            }

            async fn import_write(
                &self,
                batch: &ImportBatch,
                prepared: $crate::storage::ImportPrepared,
                publish: &(dyn Fn(Vec<Change>) + Send + Sync),
            ) -> StoreResult<Committed<ImportOutcome>> {
                let $crate::storage::ImportPrepared { outcome: mut out, conversations: convs, created, changes: created_changes } =
                    prepared;
                // The first record of a message external id in the batch is the one imported.
                let mut groups: HashMap<&str, Vec<&$crate::storage::ImportMessage>> = HashMap::new();
                let unknown = |m: &$crate::storage::ImportMessage| {
                    (m.line, "no conversation has this external id".into(), "conversation_external_id")
                };
                if let Some(grouped) = batch.grouping() {
                    // Grouped and ordered ahead (by external id: two of them may be one
                    // direct conversation, whose messages import_messages orders again).
                    for g in grouped {
                        let msgs = g.iter().map(|&i| &batch.messages[i]);
                        match g.first().and_then(|&i| convs.get(&batch.messages[i].conversation_external_id)) {
                            Some(conv) => {
                                out.messages += g.len() as u64;
                                groups.entry(conv.as_str()).or_default().extend(msgs);
                            }
                            None => out.errors.extend(msgs.map(unknown)),
                        }
                    }
                } else {
                    let mut seen: std::collections::HashSet<&str> = std::collections::HashSet::new();
                    for m in &batch.messages {
                        let Some(conv) = convs.get(&m.conversation_external_id) else {
                            out.errors.push(unknown(m));
                            continue;
                        };
                        out.messages += 1;
                        if seen.insert(m.external_id.as_str()) {
                            groups.entry(conv.as_str()).or_default().push(m);
                        }
                    }
                }
                // Largest conversations first, each to the lightest shard.
                let mut group_list: Vec<(&str, Vec<&$crate::storage::ImportMessage>)> = groups.into_iter().collect();
                group_list.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(b.0)));
                let n_shards = ($shards as usize).clamp(1, group_list.len().max(1));
                let mut shards: Vec<Vec<(&str, Vec<&$crate::storage::ImportMessage>)>> =
                    (0..n_shards).map(|_| Vec::new()).collect();
                let mut load = vec![0usize; n_shards];
                for g in group_list {
                    let i = (0..n_shards).min_by_key(|&i| load[i]).unwrap_or(0);
                    load[i] += g.1.len();
                    shards[i].push(g);
                }
                // Each shard's conversations in id order, in transactions of at most
                // `$tx_messages` messages (whole conversations): on SQLite the one writer is
                // free between them, so a live send waits for one of them, not for the batch.
                let lanes: Vec<Vec<Vec<(&str, Vec<&$crate::storage::ImportMessage>)>>> = shards
                    .into_iter()
                    .filter(|s| !s.is_empty())
                    .map(|mut s| {
                        s.sort_by(|a, b| a.0.cmp(b.0));
                        let mut txs = vec![Vec::new()];
                        let mut n = 0usize;
                        for g in s {
                            if n > 0 && n + g.1.len() > $tx_messages {
                                txs.push(Vec::new());
                                n = 0;
                            }
                            n += g.1.len();
                            txs.last_mut().expect("one transaction at least").push(g);
                        }
                        txs
                    })
                    .collect();
                // Optimistic first: messages none of which was imported before (a first import)
                // skip the probe of their external ids, one index lookup a message; the unique
                // index still refuses a repeat, and then the transaction runs again with the
                // probe (a re-import pays one failed statement a transaction). Every lane runs
                // to its end or its own failure, so a transaction that commits beside a failing
                // one is published (dropping its future could lose a commit already made).
                let done = futures_util::future::join_all(lanes.into_iter().map(|txs| async move {
                    let mut touched = Vec::with_capacity(txs.len());
                    for s in txs {
                        let (ids, changes) = match self.import_messages(s.clone(), false).await {
                            Err(StoreError::Conflict(_)) => self.import_messages(s, true).await,
                            other => other,
                        }?;
                        publish(changes);
                        touched.push(ids);
                    }
                    Ok::<_, StoreError>(touched)
                }))
                .await
                .into_iter()
                .collect::<Result<Vec<_>, _>>()?;
                for touched_ids in done.into_iter().flatten() {
                    out.upserted += touched_ids.iter().filter(|id| !created.contains(id.as_str())).count() as u64;
                }
                Ok(Committed { value: out, changes: created_changes })
            }

            async fn create_job(&self, kind: &str, params: &Value, lease_ms: i64) -> StoreResult<Job> {
                self.tick(1);
                let t = now();
                let sql = format!(
                    "insert into jobs (job_id, kind, status, params, lease_until, created_at, updated_at) \
                     values ($1, $2, 'running', $3, $4, $5, $5) returning {JOB_COLS}"
                );
                let row = sqlx::query(AssertSqlSafe(sql))
                    .bind(new_id())
                    .bind(kind)
                    .bind(params.to_string())
                    .bind(t + lease_ms)
                    .bind(t)
                    .fetch_one(&self.writer)
                    .await
                    .map_err(db_error)?;
                self.committed();
                job_from(&row).map_err(db_error)
            }

            async fn job(&self, id: &str) -> StoreResult<Job> {
                self.tick(1);
                let sql = format!("select {JOB_COLS} from jobs where job_id = $1");
                let row = sqlx::query(AssertSqlSafe(sql))
                    .bind(id)
                    .fetch_optional(&mut *self.read().await?)
                    .await
                    .map_err(db_error)?
                    .ok_or(StoreError::NotFound)?;
                job_from(&row).map_err(db_error)
            }

            async fn update_job(&self, job: &Job, lease_ms: i64) -> StoreResult<()> {
                self.tick(1);
                let t = now();
                sqlx::query(
                    "update jobs set status = $2, checkpoint = $3, fetched = $4, upserted = $5, \
                     messages = $6, error = $7, lease_until = $8, updated_at = $9 where job_id = $1",
                )
                .bind(&job.id)
                .bind(&job.status)
                .bind(job.checkpoint.as_deref())
                .bind(job.fetched)
                .bind(job.upserted)
                .bind(job.messages)
                .bind(job.error.as_ref().map(json_text))
                .bind(t + lease_ms)
                .bind(t)
                .execute(&self.writer)
                .await
                .map_err(db_error)?;
                self.committed();
                Ok(())
            }

            async fn touch_job(&self, id: &str, lease_ms: i64) -> StoreResult<()> {
                self.tick(1);
                sqlx::query("update jobs set lease_until = $2 where job_id = $1 and status = 'running'")
                    .bind(id)
                    .bind(now() + lease_ms)
                    .execute(&self.writer)
                    .await
                    .map_err(db_error)?;
                self.committed();
                Ok(())
            }

            async fn claim_stale_jobs(&self, now_ms: i64, lease_ms: i64) -> StoreResult<Vec<Job>> {
                self.tick(1);
                let sql = format!(
                    "update jobs set lease_until = $2 where job_id in (select job_id from jobs \
                     where status = 'running' and lease_until < $1 {}) returning {JOB_COLS}",
                    $skip_locked
                );
                let rows = sqlx::query(AssertSqlSafe(sql))
                    .bind(now_ms)
                    .bind(now_ms + lease_ms)
                    .fetch_all(&self.writer)
                    .await
                    .map_err(db_error)?;
                self.committed();
                rows.iter().map(job_from).collect::<Result<_, _>>().map_err(db_error)
            }

            async fn changes_between(&self, after: i64, upto: i64) -> StoreResult<Vec<Change>> {
                self.tick(1);
                let rows = sqlx::query(
                    "select pos, conversation_id, kind, user_id, data, created_at from changes \
                     where pos > $1 and pos <= $2 order by pos limit 10000",
                )
                .bind(after)
                .bind(upto)
                .fetch_all(&mut *self.read().await?)
                .await
                .map_err(db_error)?;
                rows.iter().map(change_from).collect::<Result<_, _>>().map_err(db_error)
            }

            async fn last_position(&self) -> StoreResult<i64> {
                self.tick(1);
                sqlx::query_scalar("select value from counters where name = 'changes'")
                    .fetch_one(&mut *self.read().await?)
                    .await
                    .map_err(db_error)
            }
        }

    };
}

pub(crate) use sql_store;
