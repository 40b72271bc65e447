//! Bulk import: NDJSON records (`user`, `conversation`, `message`), streamed, validated line by
//! line, written in large batches (bulk statements; a batch's users and conversations in one
//! transaction, its messages in transactions of whole conversations), idempotent on ids and
//! external ids. A bad line is reported with its number and reason and every good line is
//! stored. Used by `POST /v1/import`, `confab import FILE` and the Messenger source.

pub mod cli;
pub mod messenger;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::domain::{
    Invalid, MAX_ATTACHMENTS, MAX_NAME_CHARS, MAX_TEXT_CHARS, Timestamp, UserInput, check_custom,
    check_no_nul, check_string, check_tags, check_user_id,
};
use crate::storage::{DynStore, ImportBatch, ImportConversation, ImportMessage};
use crate::write_path::ChangeBus;

/// Records per batch by default (`CONFAB_IMPORT_BATCH`) on PostgreSQL, where a larger batch
/// measured no faster (its two COPY streams are the limit).
pub const BATCH_RECORDS: usize = 100_000;
/// Records per batch by default on SQLite: each conversation a batch touches costs its update,
/// its members' and its change once per batch, and a file in time order touches nearly all of
/// them in every batch; with 200,000 the import measured 5-8% faster than with 100,000 in one
/// transaction (BENCHMARKS.md, Import), and peak memory ~130 MB higher. A batch's messages are
/// written in transactions of at most [`crate::storage::sqlite::IMPORT_TX_MESSAGES`], so live
/// writes wait for less than before.
pub const BATCH_RECORDS_SQLITE: usize = 200_000;

/// How many records a user or conversation record counts as toward a batch's size on SQLite.
/// A batch's users and conversations are one transaction of its one writer (about 40 µs a
/// direct conversation: 4 s for 100,000, BENCHMARKS.md, Import), so they stay at most half of
/// a batch, 100,000 records with the default: as long as before the default was 200,000. That
/// bounds records, not cost: conversations with many members, and the users and conversations
/// that messages name, make it longer. Messages are cut into transactions of their own
/// (`IMPORT_TX_MESSAGES`).
const SQLITE_PREPARED_RECORD_WEIGHT: usize = 2;

/// The default batch size for a database URL.
pub fn default_batch(database_url: &str) -> usize {
    if database_url.starts_with("sqlite:") {
        BATCH_RECORDS_SQLITE
    } else {
        BATCH_RECORDS
    }
}
/// The longest line accepted.
pub const MAX_LINE: usize = 1024 * 1024;
/// Bad lines reported one by one; after that only counted (a file with one systematic error
/// must not fill the response).
pub const MAX_REPORTED_ERRORS: u64 = 1000;

/// What an import reports as it goes (and the HTTP response streams as NDJSON).
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Report {
    /// A bad line: `{"line": 17, "error": {"code", "message", "field"?}}`.
    Error { line: usize, error: Value },
    /// After each batch: `{"progress": {...}}`.
    Progress { progress: Counts },
    /// Last: `{"done": true, ...counts}`.
    Done {
        done: bool,
        #[serde(flatten)]
        counts: Counts,
    },
}

#[derive(Debug, Clone, Copy, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
// A summary without some of the counts (the extensions, from another server) still reads.
#[serde(default)]
pub struct Counts {
    pub users: u64,
    pub conversations: u64,
    pub messages: u64,
    pub errors: u64,
    /// Lines read (an extension).
    pub lines: u64,
    /// Bytes read (an extension).
    pub bytes: u64,
}

fn error_value(code: &str, message: &str, field: Option<&str>) -> Value {
    let mut e = json!({"code": code, "message": message});
    if let Some(f) = field {
        e["field"] = json!(f);
    }
    e
}

/// Records written by one import from which the planner's statistics are refreshed at its end.
pub const REFRESH_STATISTICS_AFTER: u64 = 10_000;

/// Reads NDJSON from `body` and imports it; `report` gets every bad line, progress after each
/// batch and the summary. A database failure stops the import (what was committed stays).
pub async fn run<S, E>(
    store: &DynStore,
    bus: &ChangeBus,
    batch_records: usize,
    body: S,
    report: impl FnMut(Report),
) -> Result<Counts, crate::storage::StoreError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let mut report = capped(report);
    let mut counts = Counts::default();
    let mut batch = ImportBatch::default();
    // How much of `batch_records` the batch has used.
    let mut pending = 0usize;
    let prepared_weight = match store.backend() {
        crate::storage::Backend::Sqlite => SQLITE_PREPARED_RECORD_WEIGHT,
        crate::storage::Backend::Postgres => 1,
    };
    let mut lines = LineSplitter::default();
    let mut body = body;
    // Batches in flight, oldest first, at most two, while the next one is parsed: parsing (this
    // task) and the database overlap, and so do one batch's messages and the next one's users
    // and conversations (see `start`).
    let mut writing: std::collections::VecDeque<Writing> = std::collections::VecDeque::new();
    loop {
        let chunk = body.next().await;
        let end = match &chunk {
            None => true,
            Some(Err(e)) => {
                report(Report::Error {
                    line: counts.lines as usize + 1,
                    error: error_value(
                        "validation_failed",
                        &format!("the body could not be read: {e}"),
                        None,
                    ),
                });
                counts.errors += 1;
                true
            }
            Some(Ok(_)) => false,
        };
        if let Some(Ok(bytes)) = &chunk {
            counts.bytes += bytes.len() as u64;
            lines.push(bytes);
        }
        while let Some(line) = lines.next_line(end) {
            counts.lines += 1;
            let n = counts.lines as usize;
            match line {
                Err(msg) => {
                    counts.errors += 1;
                    report(Report::Error {
                        line: n,
                        error: error_value("validation_failed", &msg, None),
                    });
                }
                Ok(text) if text.iter().all(u8::is_ascii_whitespace) => {}
                Ok(text) => match parse_record(n, &text) {
                    Ok(rec) => {
                        pending += match rec {
                            Record::Message(_) => 1,
                            _ => prepared_weight,
                        };
                        rec.add_to(&mut batch);
                    }
                    Err(inv) => {
                        counts.errors += 1;
                        report(Report::Error {
                            line: n,
                            error: error_value(
                                "validation_failed",
                                &inv.message,
                                inv.field.as_deref(),
                            ),
                        });
                    }
                },
            }
            if pending >= batch_records {
                if writing.len() >= 2
                    && let Some(w) = writing.pop_front()
                {
                    finish(w, &mut counts, &mut report).await?;
                }
                let next = start(store, bus, std::mem::take(&mut batch), writing.back());
                writing.push_back(next);
                pending = 0;
            }
        }
        if end {
            break;
        }
    }
    if pending > 0 {
        let last = start(store, bus, batch, writing.back());
        writing.push_back(last);
    }
    while let Some(w) = writing.pop_front() {
        finish(w, &mut counts, &mut report).await?;
    }
    // Before the summary, so that listings are planned for the new data once it is reported.
    if counts.users + counts.conversations + counts.messages >= REFRESH_STATISTICS_AFTER
        && let Err(e) = store.refresh_statistics().await
    {
        tracing::warn!(error = %e, "could not refresh the planner's statistics after an import");
    }
    report(Report::Done { done: true, counts });
    Ok(counts)
}

/// Passes the first `MAX_REPORTED_ERRORS` bad lines as they are; the one after them is
/// reported as the first of those only counted, and the rest are not passed (the summary
/// counts them all).
fn capped(mut report: impl FnMut(Report)) -> impl FnMut(Report) {
    let mut errors = 0u64;
    move |r: Report| {
        if let Report::Error { line, .. } = &r {
            errors += 1;
            if errors > MAX_REPORTED_ERRORS + 1 {
                return;
            }
            if errors == MAX_REPORTED_ERRORS + 1 {
                report(Report::Error {
                    line: *line,
                    error: error_value(
                        "validation_failed",
                        "this line and the bad lines after it are only counted",
                        None,
                    ),
                });
                return;
            }
        }
        report(r)
    }
}

type Written =
    Result<crate::storage::Committed<crate::storage::ImportOutcome>, crate::storage::StoreError>;

/// Where a batch in flight is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    Started,
    /// Its users and conversations are committed.
    Prepared,
    /// Its messages are committed.
    Written,
    Failed,
}

/// A batch in flight: its task, and its stage for the batch after it.
struct Writing {
    task: tokio::task::JoinHandle<Written>,
    stage: tokio::sync::watch::Receiver<Stage>,
}

/// Starts writing `batch` after `previous`: its users and conversations once the previous
/// batch's are committed (it may name conversations that one creates), its messages once the
/// previous batch's are (seqs follow created_at across batches without renumbering). So on
/// PostgreSQL one batch's messages are written while the next one's conversations are, on
/// another connection; SQLite has one writer connection, for which the next batch would only
/// queue (and could time out), so there a batch starts once the previous one is written. If
/// the previous batch fails, this one writes nothing more. What each part commits is published
/// at once, so realtime gets the changes near their order.
fn start(
    store: &DynStore,
    bus: &ChangeBus,
    batch: ImportBatch,
    previous: Option<&Writing>,
) -> Writing {
    let store = store.clone();
    let bus = bus.clone();
    let mut previous = previous.map(|w| w.stage.clone());
    let prepare_after = match store.backend() {
        crate::storage::Backend::Postgres => Stage::Prepared,
        crate::storage::Backend::Sqlite => Stage::Written,
    };
    let (stage, rx) = tokio::sync::watch::channel(Stage::Started);
    let task = tokio::spawn(async move {
        // Off the runtime's threads, and before this batch's turn: the writer of the batch
        // before is meanwhile busy with its own.
        let batch = tokio::task::spawn_blocking(move || {
            let mut batch = batch;
            batch.group_messages();
            batch
        })
        .await
        .map_err(|e| crate::storage::StoreError::Other(anyhow::anyhow!("import batch: {e}")));
        // Failed is the last stage; a previous batch gone without one failed (it panicked).
        let mut reached = async |want: Stage| match &mut previous {
            None => true,
            Some(p) => {
                matches!(p.wait_for(|s| *s >= want).await.map(|s| *s), Ok(s) if s != Stage::Failed)
            }
        };
        let earlier_failed = || {
            crate::storage::StoreError::Other(anyhow::anyhow!("import: an earlier batch failed"))
        };
        let batch = match batch {
            Ok(b) => b,
            Err(e) => {
                stage.send_replace(Stage::Failed);
                return Err(e);
            }
        };
        if !reached(prepare_after).await {
            stage.send_replace(Stage::Failed);
            return Err(earlier_failed());
        }
        let mut prepared = match store.import_prepare(&batch).await {
            Ok(p) => p,
            Err(e) => {
                stage.send_replace(Stage::Failed);
                return Err(e);
            }
        };
        stage.send_replace(Stage::Prepared);
        bus.publish(std::mem::take(&mut prepared.changes));
        if !reached(Stage::Written).await {
            stage.send_replace(Stage::Failed);
            return Err(earlier_failed());
        }
        let publish = |changes: Vec<crate::domain::Change>| bus.publish(changes);
        let mut written = store.import_write(&batch, prepared, &publish).await;
        match &mut written {
            Ok(committed) => {
                // Empty (the prepared part's were published above); whatever is there, once.
                bus.publish(std::mem::take(&mut committed.changes));
                stage.send_replace(Stage::Written);
            }
            Err(_) => {
                stage.send_replace(Stage::Failed);
            }
        }
        written
    });
    Writing { task, stage: rx }
}

/// Waits for a batch's commit, then reports its bad lines and the progress.
async fn finish(
    writing: Writing,
    counts: &mut Counts,
    report: &mut impl FnMut(Report),
) -> Result<(), crate::storage::StoreError> {
    let committed = writing.task.await.map_err(|e| {
        crate::storage::StoreError::Other(anyhow::anyhow!("import batch task: {e}"))
    })??;
    let o = committed.value;
    counts.users += o.users;
    counts.conversations += o.conversations;
    counts.messages += o.messages;
    counts.errors += o.errors.len() as u64;
    let mut errors = o.errors;
    errors.sort_by_key(|e| e.0);
    for (line, message, field) in errors {
        report(Report::Error {
            line,
            error: error_value("validation_failed", &message, Some(field)),
        });
    }
    report(Report::Progress { progress: *counts });
    metrics::counter!("confab_import_messages_total").increment(o.messages);
    // Live traffic goes first between batches.
    tokio::task::yield_now().await;
    Ok(())
}

/// Splits a byte stream into lines without holding more than one partial line.
#[derive(Default)]
pub(crate) struct LineSplitter {
    buf: Vec<u8>,
    /// Skipping the rest of a line that was too long.
    skipping: bool,
    start: usize,
}

impl LineSplitter {
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete line (at the end, the last one even without a newline).
    pub(crate) fn next_line(&mut self, end: bool) -> Option<Result<Vec<u8>, String>> {
        let rest = &self.buf[self.start..];
        match rest.iter().position(|b| *b == b'\n') {
            Some(i) => {
                let line = rest[..i].to_vec();
                self.start += i + 1;
                if std::mem::take(&mut self.skipping) || line.len() > MAX_LINE {
                    return Some(Err(format!("line longer than {MAX_LINE} bytes")));
                }
                Some(Ok(line))
            }
            None if end && !rest.is_empty() => {
                let line = rest.to_vec();
                self.start = self.buf.len();
                if std::mem::take(&mut self.skipping) || line.len() > MAX_LINE {
                    return Some(Err(format!("line longer than {MAX_LINE} bytes")));
                }
                Some(Ok(line))
            }
            None => {
                if rest.len() > MAX_LINE {
                    // Drop what we have of it; report when its end arrives.
                    self.skipping = true;
                    self.buf.clear();
                    self.start = 0;
                }
                None
            }
        }
    }
}

pub(crate) enum Record {
    User(usize, UserInput),
    Conversation(ImportConversation),
    Message(ImportMessage),
}

impl Record {
    fn add_to(self, batch: &mut ImportBatch) {
        match self {
            Record::User(n, u) => batch.users.push((n, u)),
            Record::Conversation(c) => batch.conversations.push(c),
            Record::Message(m) => batch.messages.push(m),
        }
    }
}

fn text(obj: &Map<String, Value>, field: &str, max: usize) -> Result<Option<String>, Invalid> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => {
            check_string(field, s, max)?;
            Ok(Some(s.clone()))
        }
        Some(_) => Err(Invalid::new(field, "must be a string")),
    }
}

fn required(obj: &Map<String, Value>, field: &str, max: usize) -> Result<String, Invalid> {
    match text(obj, field, max)? {
        Some(s) if !s.is_empty() => Ok(s),
        _ => Err(Invalid::new(field, "is required")),
    }
}

fn time(obj: &Map<String, Value>, field: &str) -> Result<Option<i64>, Invalid> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Timestamp::parse(s)
            .map(|t| Some(t.0))
            .ok_or_else(|| Invalid::new(field, "must be an RFC 3339 timestamp")),
        Some(_) => Err(Invalid::new(field, "must be an RFC 3339 timestamp")),
    }
}

fn custom(obj: &Map<String, Value>) -> Result<Value, Invalid> {
    match obj.get("custom") {
        None | Some(Value::Null) => Ok(json!({})),
        Some(c) => {
            check_custom("custom", c)?;
            Ok(c.clone())
        }
    }
}

/// A message record as most files carry it, borrowed from the line: no `Value` tree, no copy
/// of a field that has no escape. Anything unusual (another record kind, a JSON document in
/// `encrypted`, `attachments` or `custom`, a field of the wrong type, a rule broken) is left to
/// [`parse_value_record`], which names the field; both accept exactly the same lines.
#[derive(serde::Deserialize)]
struct FastMessage<'a> {
    #[serde(borrow)]
    record: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    conversation_external_id: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    external_id: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    sender_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default, rename = "type")]
    kind: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    text: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    created_at: std::borrow::Cow<'a, str>,
    #[serde(default)]
    unread: Option<bool>,
    #[serde(borrow, default)]
    encrypted: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow, default)]
    attachments: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow, default)]
    custom: Option<&'a serde_json::value::RawValue>,
}

/// The fast path of [`parse_record`] for plain message records; `None` means "take the slow
/// path" (which also produces the error of a bad line).
fn fast_message(line: usize, bytes: &[u8]) -> Option<ImportMessage> {
    let m: FastMessage = serde_json::from_slice(bytes).ok()?;
    if m.record != "message" || m.encrypted.is_some() {
        return None;
    }
    let empty = |r: Option<&serde_json::value::RawValue>, e: &str| {
        r.is_none_or(|r| r.get().split_ascii_whitespace().collect::<String>() == e)
    };
    if !empty(m.attachments, "[]") || !empty(m.custom, "{}") {
        return None;
    }
    let ok = |s: &str, max: usize| !s.is_empty() && check_string("", s, max).is_ok();
    if !ok(&m.conversation_external_id, 256) || !ok(&m.external_id, 256) {
        return None;
    }
    if let Some(s) = &m.sender_id
        && check_user_id("", s).is_err()
    {
        return None;
    }
    let kind = m.kind.as_deref().unwrap_or("regular");
    if kind != "regular" && kind != "system" {
        return None;
    }
    if kind == "regular" && m.sender_id.is_none() {
        return None;
    }
    if let Some(t) = &m.text
        && check_string("", t, MAX_TEXT_CHARS).is_err()
    {
        return None;
    }
    if kind == "regular" && m.text.as_deref().is_none_or(str::is_empty) {
        return None;
    }
    let created_at = Timestamp::parse(&m.created_at)?.0;
    Some(ImportMessage {
        line,
        conversation_external_id: m.conversation_external_id.into_owned(),
        external_id: m.external_id.into_owned(),
        sender_id: m.sender_id.map(|s| s.into_owned()),
        kind: kind.to_owned(),
        text: m.text.map(|s| s.into_owned()),
        encrypted: None,
        attachments: Value::Array(Vec::new()),
        custom: Value::Object(Map::new()),
        created_at,
        unread: m.unread.unwrap_or(false),
    })
}

pub(crate) fn parse_record(line: usize, bytes: &[u8]) -> Result<Record, Invalid> {
    if let Some(m) = fast_message(line, bytes) {
        return Ok(Record::Message(m));
    }
    parse_value_record(line, bytes)
}

/// Any record, through a `serde_json::Value`: the reference for [`fast_message`].
fn parse_value_record(line: usize, bytes: &[u8]) -> Result<Record, Invalid> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| Invalid {
        field: None,
        message: format!("malformed JSON: {e}"),
    })?;
    let Value::Object(obj) = value else {
        return Err(Invalid {
            field: None,
            message: "a record must be a JSON object".into(),
        });
    };
    match obj.get("record").and_then(Value::as_str) {
        Some("user") => {
            let id = required(&obj, "id", 128)?;
            check_user_id("id", &id)?;
            Ok(Record::User(
                line,
                UserInput {
                    name: text(&obj, "name", MAX_NAME_CHARS)?.filter(|n| !n.is_empty()),
                    image_url: text(&obj, "image_url", 2048)?.map(Some),
                    kind: text(&obj, "kind", 64)?.filter(|k| !k.is_empty()),
                    custom: obj.get("custom").map(|_| custom(&obj)).transpose()?,
                    id,
                },
            ))
        }
        Some("conversation") => {
            let external_id = required(&obj, "external_id", 256)?;
            let kind = required(&obj, "type", 16)?;
            if kind != "direct" && kind != "group" {
                return Err(Invalid::new("type", "type must be direct or group"));
            }
            let member_ids: Vec<String> = match obj.get("member_ids") {
                Some(Value::Array(a)) => a
                    .iter()
                    .enumerate()
                    .map(|(i, v)| {
                        let f = format!("member_ids[{i}]");
                        let s = v
                            .as_str()
                            .ok_or_else(|| Invalid::new(&f, "must be a string"))?;
                        check_user_id(&f, s)?;
                        Ok(s.to_owned())
                    })
                    .collect::<Result<_, Invalid>>()?,
                _ => {
                    return Err(Invalid::new(
                        "member_ids",
                        "is required and must be an array",
                    ));
                }
            };
            let mut unique = member_ids.clone();
            unique.sort();
            unique.dedup();
            if kind == "direct" && unique.len() != 2 {
                return Err(Invalid::new(
                    "member_ids",
                    "a direct conversation has exactly two members",
                ));
            }
            if unique.is_empty() || unique.len() > 1000 {
                return Err(Invalid::new("member_ids", "must hold 1 to 1000 members"));
            }
            let tags: Vec<String> = match obj.get("tags") {
                None | Some(Value::Null) => Vec::new(),
                Some(v) => serde_json::from_value(v.clone())
                    .map_err(|_| Invalid::new("tags", "must be an array of strings"))?,
            };
            check_tags("tags", &tags)?;
            Ok(Record::Conversation(ImportConversation {
                line,
                external_id,
                kind,
                member_ids: unique,
                name: text(&obj, "name", MAX_NAME_CHARS)?,
                image_url: text(&obj, "image_url", 2048)?,
                custom: custom(&obj)?,
                tags,
                created_at: time(&obj, "created_at")?,
            }))
        }
        Some("message") => {
            let conversation_external_id = required(&obj, "conversation_external_id", 256)?;
            let external_id = required(&obj, "external_id", 256)?;
            let sender_id = text(&obj, "sender_id", 128)?;
            if let Some(s) = &sender_id {
                check_user_id("sender_id", s)?;
            }
            let kind = text(&obj, "type", 16)?.unwrap_or_else(|| "regular".into());
            if kind != "regular" && kind != "system" {
                return Err(Invalid::new("type", "type must be regular or system"));
            }
            if kind == "regular" && sender_id.is_none() {
                return Err(Invalid::new(
                    "sender_id",
                    "is required for a regular message",
                ));
            }
            let text_v = text(&obj, "text", MAX_TEXT_CHARS)?;
            let encrypted = match obj.get("encrypted") {
                None | Some(Value::Null) => None,
                Some(e) if e.is_object() => {
                    check_no_nul("encrypted", e)?;
                    Some(e.clone())
                }
                Some(_) => return Err(Invalid::new("encrypted", "must be an object")),
            };
            let attachments = match obj.get("attachments") {
                None | Some(Value::Null) => json!([]),
                Some(Value::Array(a)) if a.len() <= MAX_ATTACHMENTS => {
                    check_no_nul("attachments", &Value::Array(a.clone()))?;
                    Value::Array(a.clone())
                }
                Some(_) => {
                    return Err(Invalid::new(
                        "attachments",
                        "must be an array of at most 10",
                    ));
                }
            };
            let has_content = text_v.as_deref().is_some_and(|t| !t.is_empty())
                || encrypted.is_some()
                || attachments.as_array().is_some_and(|a| !a.is_empty());
            if kind == "regular" && !has_content {
                return Err(Invalid::new(
                    "text",
                    "a message needs text, encrypted or at least one attachment",
                ));
            }
            let created_at = time(&obj, "created_at")?
                .ok_or_else(|| Invalid::new("created_at", "is required (the original time)"))?;
            let unread = match obj.get("unread") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => return Err(Invalid::new("unread", "must be true or false")),
            };
            Ok(Record::Message(ImportMessage {
                line,
                conversation_external_id,
                external_id,
                sender_id,
                kind,
                text: text_v,
                encrypted,
                attachments,
                custom: custom(&obj)?,
                created_at,
                unread,
            }))
        }
        Some(_) | None => Err(Invalid::new(
            "record",
            "record must be user, conversation or message",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_lines_past_the_cap_are_only_counted() {
        let reports = |bad: usize| {
            let mut out = Vec::new();
            let mut report = capped(|r| out.push(r));
            for line in 1..=bad {
                report(Report::Error {
                    line,
                    error: error_value("validation_failed", &format!("bad {line}"), None),
                });
            }
            report(Report::Progress {
                progress: Counts::default(),
            });
            drop(report);
            out
        };
        let message = |r: &Report| match r {
            Report::Error { line, error } => format!("{line}: {}", error["message"]),
            other => format!("{other:?}"),
        };
        let cap = MAX_REPORTED_ERRORS as usize;
        let exactly = reports(cap);
        assert_eq!(exactly.len(), cap + 1, "each bad line and the progress");
        assert_eq!(message(&exactly[cap - 1]), format!("{cap}: \"bad {cap}\""));
        let more = reports(cap + 5);
        assert_eq!(more.len(), cap + 2);
        assert_eq!(message(&more[cap - 1]), format!("{cap}: \"bad {cap}\""));
        assert_eq!(
            message(&more[cap]),
            format!(
                "{}: \"this line and the bad lines after it are only counted\"",
                cap + 1
            )
        );
        assert!(matches!(more[cap + 1], Report::Progress { .. }));
    }

    #[test]
    fn lines_split_across_chunks_and_long_lines_are_refused() {
        let mut s = LineSplitter::default();
        s.push(b"{\"a\":1}\n{\"b\"");
        assert_eq!(s.next_line(false), Some(Ok(b"{\"a\":1}".to_vec())));
        assert_eq!(s.next_line(false), None);
        s.push(b":2}");
        assert_eq!(s.next_line(true), Some(Ok(b"{\"b\":2}".to_vec())));
        let mut s = LineSplitter::default();
        s.push(&vec![b'x'; MAX_LINE + 10]);
        assert_eq!(s.next_line(false), None);
        s.push(b"tail\nok\n");
        assert!(matches!(s.next_line(false), Some(Err(_))));
        assert_eq!(s.next_line(false), Some(Ok(b"ok".to_vec())));
    }

    #[test]
    fn records_are_validated_naming_the_field() {
        let bad = [
            (r#"{"record":"nope"}"#, Some("record")),
            (r#"{"record":"user","id":"has space"}"#, Some("id")),
            (
                r#"{"record":"conversation","external_id":"x","type":"direct","member_ids":["a"]}"#,
                Some("member_ids"),
            ),
            (
                r#"{"record":"message","conversation_external_id":"c","external_id":"m","sender_id":"a","text":"x"}"#,
                Some("created_at"),
            ),
            (
                r#"{"record":"message","conversation_external_id":"c","external_id":"m","sender_id":"a","created_at":"2020-01-01T00:00:00Z"}"#,
                Some("text"),
            ),
            ("not json", None),
        ];
        for (line, field) in bad {
            let e = parse_record(1, line.as_bytes())
                .err()
                .unwrap_or_else(|| panic!("{line}"));
            assert_eq!(e.field.as_deref(), field, "{line}");
        }
        assert!(parse_record(1, br#"{"record":"message","conversation_external_id":"c","external_id":"m","sender_id":"a","text":"x","created_at":"2020-01-01T00:00:00.123Z"}"#).is_ok());
    }

    /// The typed fast path accepts a line only as the `Value` path does, with the same result.
    #[test]
    fn fast_path_agrees_with_the_value_path() {
        let lines = [
            r#"{"record":"message","conversation_external_id":"c","external_id":"m","sender_id":"a","text":"x","created_at":"2020-01-01T00:00:00.123Z"}"#,
            r#"{"record":"message","conversation_external_id":"c","external_id":"m","sender_id":"a","text":"x\u00e9\n","created_at":"2020-01-01T00:00:00Z","unread":true}"#,
            r#"{"record":"message","conversation_external_id":"c","external_id":"m","type":"system","created_at":"2020-01-01T00:00:00Z","custom":{ },"attachments":[ ]}"#,
            r#"{"record":"message","conversation_external_id":"c","external_id":"m","sender_id":"a","type":null,"text":"x","created_at":"2020-01-01T00:00:00Z","encrypted":null,"custom":null,"attachments":null,"unread":null}"#,
            r#"{"record":"message","conversation_external_id":"c","external_id":"m","sender_id":null,"text":"x","created_at":"2020-01-01T00:00:00Z"}"#,
            r#"{"record":"message","conversation_external_id":"c","external_id":"m","sender_id":"a","text":"x","created_at":"2020-01-01T00:00:00Z","custom":{"k":1}}"#,
            r#"{"record":"message","conversation_external_id":"c","external_id":"m","sender_id":"a","attachments":[{"url":"u"}],"created_at":"2020-01-01T00:00:00Z"}"#,
            r#"{"record":"message","conversation_external_id":"c","external_id":"m","sender_id":"a","text":"","created_at":"2020-01-01T00:00:00Z"}"#,
            r#"{"record":"message","conversation_external_id":"","external_id":"m","sender_id":"a","text":"x","created_at":"2020-01-01T00:00:00Z"}"#,
            r#"{"record":"message","conversation_external_id":"c","external_id":"m","sender_id":"a b","text":"x","created_at":"2020-01-01T00:00:00Z"}"#,
            r#"{"record":"message","conversation_external_id":"c","external_id":"m","sender_id":"a","text":"x","created_at":"2020-01-01T00:00:00Z","unread":1}"#,
            r#"{"record":"message","conversation_external_id":"c","external_id":"m","sender_id":"a","text":"x","created_at":"yesterday"}"#,
            r#"{"record":"message","conversation_external_id":"c","external_id":"m","sender_id":"a","text":"x","created_at":"2020-01-01T00:00:00Z","text":"y"}"#,
            r#"{"record":"message","conversation_external_id":"c","external_id":"m","sender_id":"a","text":"a\u0000b","created_at":"2020-01-01T00:00:00Z"}"#,
            r#"{"record":"message","conversation_external_id":"c","external_id":"m","type":"odd","sender_id":"a","text":"x","created_at":"2020-01-01T00:00:00Z"}"#,
            r#"{"record":"user","id":"u"}"#,
        ];
        let mut fast = 0;
        for line in lines {
            let slow = parse_value_record(7, line.as_bytes());
            // A line the fast path leaves alone goes to the Value path, which decides (and
            // names the field of an error).
            if let Some(m) = fast_message(7, line.as_bytes()) {
                fast += 1;
                let Ok(Record::Message(s)) = slow else {
                    panic!("fast path accepted what the Value path refuses: {line}");
                };
                assert_eq!(format!("{m:?}"), format!("{s:?}"), "{line}");
            }
        }
        assert_eq!(fast, 4);
    }
}
