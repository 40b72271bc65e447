//! The Facebook Messenger source: a background job that pulls a page's conversations and their
//! messages from the Graph API, 100 per request, and writes them through the bulk import path.
//!
//! One `direct` conversation per (page, customer), external id
//! `messenger:{page_id}:{customer_id}`; the page is a user of kind `page`, each customer one of
//! kind `customer`; messages keep their Graph ids as external ids and `created_time` as
//! `created_at`. After each page of conversations is committed, the job stores Graph's `after`
//! cursor: a restarted server resumes there, and a re-run writes nothing new (idempotent).

use std::time::Duration;

use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::domain::UserInput;
use crate::http::AppState;
use crate::storage::{ImportBatch, ImportConversation, ImportMessage, Job};

pub const KIND: &str = "messenger";
/// Graph requests in flight at once (message pages of different conversations).
const CONCURRENCY: usize = 32;
/// Graph's rate-limit error codes, retried with backoff.
const RATE_LIMITED: [i64; 4] = [4, 17, 32, 613];
/// Graph's temporary errors (1 "An unknown error occurred", 2 "Service temporarily
/// unavailable"), retried as rate limits are.
const TEMPORARY: [i64; 2] = [1, 2];
/// Attempts of one Graph request before its error fails the job.
const ATTEMPTS: u32 = 6;
/// `code` of an error that is not Graph's: Graph unreachable, an answer that is not Graph's
/// wire format, or the database.
const NOT_GRAPH: i64 = -1;

/// Graph's error object: `{"error": {"message", "type", "code", "fbtrace_id", "is_transient"?}}`.
#[derive(Debug, Clone, Deserialize)]
pub struct GraphError {
    pub message: String,
    pub code: i64,
    /// Graph's own hint that the same request may succeed later.
    #[serde(default)]
    pub is_transient: bool,
}

impl GraphError {
    fn not_graph(message: String) -> Self {
        GraphError {
            message,
            code: NOT_GRAPH,
            is_transient: false,
        }
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    error: GraphError,
}

#[derive(Deserialize, Default)]
struct Cursors {
    after: Option<String>,
}

#[derive(Deserialize, Default)]
struct Paging {
    #[serde(default)]
    cursors: Cursors,
    next: Option<String>,
}

#[derive(Deserialize)]
struct Page<T> {
    data: Vec<T>,
    #[serde(default)]
    paging: Paging,
}

#[derive(Deserialize)]
struct Participant {
    id: String,
    name: Option<String>,
}

#[derive(Deserialize)]
struct Participants {
    data: Vec<Participant>,
}

#[derive(Deserialize)]
struct GraphConversation {
    id: String,
    participants: Participants,
}

#[derive(Deserialize)]
struct GraphMessage {
    id: String,
    message: Option<String>,
    from: Option<Participant>,
    created_time: String,
    /// Files, images, videos and audio: `{"data": [...], "paging": ...}`.
    attachments: Option<GraphAttachments>,
    /// A sticker's image URL.
    sticker: Option<String>,
}

#[derive(Deserialize)]
struct GraphAttachments {
    data: Vec<GraphAttachment>,
}

/// One of a message's `attachments`: Graph gives a file's URL as `file_url`, an image's and a
/// video's in `image_data` / `video_data` (with a `preview_url`).
#[derive(Deserialize)]
struct GraphAttachment {
    id: Option<String>,
    mime_type: Option<String>,
    name: Option<String>,
    size: Option<i64>,
    file_url: Option<String>,
    image_data: Option<GraphMedia>,
    video_data: Option<GraphMedia>,
}

#[derive(Deserialize)]
struct GraphMedia {
    url: Option<String>,
    preview_url: Option<String>,
}

impl GraphMessage {
    /// Its attachments and sticker as Confab attachments (`key` `messenger:{attachment id}`,
    /// or `messenger:sticker:{message id}`), at most the contract's ten. An attachment without
    /// a URL (a shared post, a fallback) names no file and is left out.
    fn confab_attachments(&self) -> Vec<Value> {
        let mut out: Vec<Value> = Vec::new();
        for (i, a) in self.attachments.iter().flat_map(|a| &a.data).enumerate() {
            let media = a.image_data.as_ref().or(a.video_data.as_ref());
            let Some(url) = media
                .and_then(|m| m.url.clone())
                .or_else(|| a.file_url.clone())
            else {
                continue;
            };
            let key = match &a.id {
                Some(id) => format!("messenger:{id}"),
                None => format!("messenger:{}:{i}", self.id),
            };
            out.push(json!({
                "key": key,
                "file_name": a.name,
                "size": a.size,
                "mime_type": a.mime_type,
                "thumbnail_key": null,
                "url": url,
                "thumbnail_url": media.and_then(|m| m.preview_url.clone()),
            }));
        }
        if let Some(url) = &self.sticker {
            out.push(json!({
                "key": format!("messenger:sticker:{}", self.id),
                "file_name": null, "size": null, "mime_type": null, "thumbnail_key": null,
                "url": url, "sticker": true,
            }));
        }
        out.truncate(crate::domain::MAX_ATTACHMENTS);
        out
    }
}

struct Graph {
    client: reqwest::Client,
    base: String,
    token: String,
}

impl Graph {
    /// GET `url` (relative to the base, or Graph's absolute `paging.next`), retrying with
    /// backoff what may pass (rate limits, Graph's temporary errors, an HTTP 5xx, Graph out of
    /// reach), [`ATTEMPTS`] times in all; Graph's error object otherwise.
    async fn get<T: for<'de> Deserialize<'de>>(
        &self,
        url: &str,
        query: &[(&str, &str)],
    ) -> Result<T, GraphError> {
        let mut backoff = Duration::from_millis(200);
        for attempt in 0.. {
            let mut req = if url.starts_with("http") {
                self.client.get(url)
            } else {
                self.client
                    .get(format!("{}/{}", self.base, url))
                    .query(query)
            };
            if !url.contains("access_token=") {
                req = req.query(&[("access_token", self.token.as_str())]);
            }
            let (err, may_pass) = match req.send().await {
                // Out of reach or too slow may pass; a request that cannot be made never will.
                Err(e) => (
                    GraphError::not_graph(format!("Graph API unreachable: {e}")),
                    e.is_connect() || e.is_timeout(),
                ),
                Ok(res) => {
                    let status = res.status();
                    match res.bytes().await {
                        Err(e) => (
                            GraphError::not_graph(format!("Graph API read failed: {e}")),
                            true,
                        ),
                        Ok(bytes) if status.is_success() => {
                            return serde_json::from_slice(&bytes).map_err(|e| {
                                GraphError::not_graph(format!("unexpected Graph API response: {e}"))
                            });
                        }
                        Ok(bytes) => {
                            let throttled = status == reqwest::StatusCode::TOO_MANY_REQUESTS;
                            match serde_json::from_slice::<ErrorBody>(&bytes) {
                                Ok(b) => {
                                    let e = b.error;
                                    let may_pass = RATE_LIMITED.contains(&e.code)
                                        || TEMPORARY.contains(&e.code)
                                        || e.is_transient
                                        || throttled;
                                    (e, may_pass)
                                }
                                Err(_) => (
                                    GraphError::not_graph(format!(
                                        "Graph API answered HTTP {status}"
                                    )),
                                    status.is_server_error() || throttled,
                                ),
                            }
                        }
                    }
                }
            };
            if may_pass && attempt + 1 < ATTEMPTS {
                tracing::info!(code = err.code, error = %err.message, ?backoff, "Graph request failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
            return Err(err);
        }
        unreachable!("the loop returns")
    }

    /// Every message of a conversation, following `paging.next`.
    async fn messages(&self, conversation: &str) -> Result<Vec<GraphMessage>, GraphError> {
        let mut out = Vec::new();
        let mut page: Page<GraphMessage> = self
            .get(
                &format!("{conversation}/messages"),
                &[
                    (
                        "fields",
                        "id,message,from,to,created_time,attachments,sticker",
                    ),
                    ("limit", "100"),
                ],
            )
            .await?;
        let mut previous: Option<String> = None;
        loop {
            out.append(&mut page.data);
            match page.paging.next.take() {
                // The same page again would be fetched for ever.
                Some(next) if previous.as_deref() == Some(next.as_str()) => {
                    return Err(GraphError::not_graph(format!(
                        "Graph API gave the same next page twice for {conversation}'s messages"
                    )));
                }
                Some(next) => {
                    page = self.get(&next, &[]).await?;
                    previous = Some(next);
                }
                None => return Ok(out),
            }
        }
    }
}

/// Graph's `2024-01-02T03:04:05+0000` (or RFC 3339) as milliseconds.
fn graph_time(s: &str) -> Option<i64> {
    chrono::DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%z")
        .or_else(|_| chrono::DateTime::parse_from_rfc3339(s))
        .ok()
        .map(|d| d.timestamp_millis())
}

/// Runs (or resumes) a Messenger job to its end, recording progress after every page.
pub async fn run(state: AppState, mut job: Job) {
    // The lease is renewed while this node works on the job (waiting for a slot included), so
    // no other node resumes it while it runs.
    let lease = state.config.job_lease;
    let heartbeat = {
        let (store, id) = (state.store.clone(), job.id.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(lease / 3);
            loop {
                tick.tick().await;
                if let Err(e) = store.touch_job(&id, lease.as_millis() as i64).await {
                    tracing::warn!(error = %e, job = %id, "could not renew a job lease");
                }
            }
        })
    };
    let _slot = state.import_slots.clone().acquire_owned().await;
    let page_id = job.params["page_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let graph = Graph {
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("HTTP client"),
        base: state.config.graph_api_url.clone(),
        token: job.params["access_token"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    };
    let result = pages(&state, &graph, &page_id, &mut job, lease.as_millis() as i64).await;
    match result {
        Ok(()) => job.status = "completed".into(),
        Err(e) => {
            tracing::warn!(job = %job.id, code = e.code, error = %e.message, "messenger job failed");
            job.status = "failed".into();
            job.error = Some(json!({"code": e.code, "message": e.message}));
        }
    }
    heartbeat.abort();
    if let Err(e) = state.store.update_job(&job, 0).await {
        tracing::error!(error = %e, job = %job.id, "could not record the end of a job");
    }
}

async fn pages(
    state: &AppState,
    graph: &Graph,
    page_id: &str,
    job: &mut Job,
    lease: i64,
) -> Result<(), GraphError> {
    let mut writing: Option<Written> = None;
    loop {
        let mut query = vec![
            ("platform", "messenger"),
            ("fields", "participants,updated_time"),
            ("limit", "100"),
        ];
        let after = job.checkpoint.clone();
        if let Some(a) = &after {
            query.push(("after", a));
        }
        let page: Page<GraphConversation> = graph
            .get(&format!("{page_id}/conversations"), &query)
            .await?;
        let fetched = page.data.len();
        let threads: Vec<(GraphConversation, Result<Vec<GraphMessage>, GraphError>)> =
            futures_util::stream::iter(page.data)
                .map(|c| async move {
                    let m = graph.messages(&c.id).await;
                    (c, m)
                })
                .buffered(CONCURRENCY)
                .collect()
                .await;
        // The page's users are Messenger's: a customer renamed there is renamed here.
        let mut batch = ImportBatch {
            refresh_users: true,
            ..ImportBatch::default()
        };
        let mut read = 0i64;
        batch.users.push((
            0,
            UserInput {
                id: page_id.to_owned(),
                name: None,
                image_url: None,
                kind: Some("page".into()),
                custom: None,
            },
        ));
        for (c, messages) in threads {
            let messages = messages?;
            let Some(customer) = c.participants.data.iter().find(|p| p.id != page_id) else {
                continue;
            };
            if let Some(p) = c.participants.data.iter().find(|p| p.id == page_id) {
                batch.users[0].1.name = p.name.clone();
            }
            batch.users.push((
                0,
                UserInput {
                    id: customer.id.clone(),
                    name: customer.name.clone(),
                    image_url: None,
                    kind: Some("customer".into()),
                    custom: None,
                },
            ));
            let external_id = format!("messenger:{page_id}:{}", customer.id);
            batch.conversations.push(ImportConversation {
                line: 0,
                external_id: external_id.clone(),
                kind: "direct".into(),
                member_ids: vec![page_id.to_owned(), customer.id.clone()],
                name: None,
                image_url: None,
                custom: json!({"messenger_thread_id": c.id}),
                tags: Vec::new(),
                created_at: messages
                    .iter()
                    .filter_map(|m| graph_time(&m.created_time))
                    .min(),
            });
            read += messages.len() as i64;
            for m in messages {
                let Some(created_at) = graph_time(&m.created_time) else {
                    continue;
                };
                let attachments = m.confab_attachments();
                let sender = m.from.map(|f| f.id);
                let text = m.message.filter(|t| !t.is_empty());
                // A regular message has a sender and content. Anything else Graph lists (a
                // message with neither text nor a file we can name) is kept as a system
                // message, which has no sender: Graph's is kept in `custom`.
                let regular = sender.is_some() && (text.is_some() || !attachments.is_empty());
                let (kind, sender_id, custom) = if regular {
                    ("regular", sender, json!({}))
                } else {
                    let custom = match sender {
                        Some(s) => json!({ "messenger_sender_id": s }),
                        None => json!({}),
                    };
                    ("system", None, custom)
                };
                batch.messages.push(ImportMessage {
                    line: 0,
                    conversation_external_id: external_id.clone(),
                    external_id: m.id,
                    kind: kind.into(),
                    sender_id,
                    text,
                    encrypted: None,
                    attachments: Value::Array(attachments),
                    custom,
                    created_at,
                    unread: false,
                });
            }
        }
        // The previous page's batch was written while this page was fetched; record it (its
        // counts and cursor: a resumed job starts after it), then write this one in the
        // background while the next page is fetched.
        if let Some(w) = writing.take() {
            record_page(state, job, lease, w).await?;
        }
        let next = page
            .paging
            .next
            .is_some()
            .then_some(page.paging.cursors.after)
            .flatten();
        if next.is_some() && next == after {
            // This page again would be fetched for ever.
            return Err(GraphError::not_graph(
                "Graph API gave the same conversations cursor twice".into(),
            ));
        }
        let store = state.store.clone();
        let bus = state.bus.clone();
        writing = Some(Written {
            fetched: fetched as i64,
            read,
            next: next.clone(),
            task: tokio::spawn(async move {
                let publish = |changes: Vec<crate::domain::Change>| bus.publish(changes);
                Ok(store.import_batch(&batch, &publish).await?.upserted)
            }),
        });
        if next.is_none() {
            if let Some(w) = writing.take() {
                record_page(state, job, lease, w).await?;
            }
            return Ok(());
        }
        job.checkpoint = next;
    }
}

/// A page's batch being written.
struct Written {
    fetched: i64,
    read: i64,
    next: Option<String>,
    task: tokio::task::JoinHandle<Result<u64, crate::storage::StoreError>>,
}

/// Waits for a page's batch to commit, then records the job's progress and checkpoint.
async fn record_page(
    state: &AppState,
    job: &mut Job,
    lease: i64,
    w: Written,
) -> Result<(), GraphError> {
    let database = |e: String| GraphError::not_graph(format!("database: {e}"));
    let upserted = w
        .task
        .await
        .map_err(|e| database(e.to_string()))?
        .map_err(|e| database(e.to_string()))?;
    job.fetched += w.fetched;
    job.upserted += upserted as i64;
    job.messages += w.read;
    // The cursor after that page, which is the page the loop fetched last: a resumed job
    // fetches it again (a re-run writes nothing twice).
    job.checkpoint = w.next;
    state
        .store
        .update_job(job, lease)
        .await
        .map_err(|e| database(e.to_string()))?;
    Ok(())
}

/// Resumes running jobs whose node stopped (at start, then every few seconds).
pub async fn resume_stale(state: AppState) {
    let lease = state.config.job_lease;
    let mut tick = tokio::time::interval((lease / 3).max(Duration::from_millis(200)));
    loop {
        tick.tick().await;
        let now = crate::domain::Timestamp::now().0;
        match state
            .store
            .claim_stale_jobs(now, lease.as_millis() as i64)
            .await
        {
            Ok(jobs) => {
                for job in jobs.into_iter().filter(|j| j.kind == KIND) {
                    tracing::info!(job = %job.id, checkpoint = ?job.checkpoint, "resuming messenger job");
                    tokio::spawn(run(state.clone(), job));
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not look for stale jobs"),
        }
    }
}

/// The job's state as an SSE event / `GET /v1/jobs/{id}`.
pub fn progress(job: &Job) -> Value {
    let mut v = json!({
        "status": job.status, "fetched": job.fetched, "upserted": job.upserted,
        "messages": job.messages,
    });
    if let Some(e) = &job.error {
        v["error"] = e.clone();
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attachments_with_a_url_and_stickers_become_confab_attachments() {
        let m: GraphMessage = serde_json::from_value(json!({
            "id": "m_1", "message": "", "created_time": "2024-01-02T03:04:05+0000",
            "attachments": {"data": [
                {"id": "a1", "mime_type": "application/pdf", "name": "menu.pdf", "size": 99,
                 "file_url": "https://cdn.example/menu.pdf"},
                {"id": "a2", "name": "shared post"},
                {"mime_type": "video/mp4", "video_data": {"url": "https://cdn.example/v.mp4",
                 "preview_url": "https://cdn.example/v.jpg"}},
            ]},
            "sticker": "https://cdn.example/sticker.png",
        }))
        .unwrap();
        let keys_and_urls: Vec<(Value, Value, Value)> = m
            .confab_attachments()
            .iter()
            .map(|a| {
                (
                    a["key"].clone(),
                    a["url"].clone(),
                    a["thumbnail_url"].clone(),
                )
            })
            .collect();
        assert_eq!(
            keys_and_urls,
            [
                (
                    json!("messenger:a1"),
                    json!("https://cdn.example/menu.pdf"),
                    json!(null)
                ),
                (
                    json!("messenger:m_1:2"),
                    json!("https://cdn.example/v.mp4"),
                    json!("https://cdn.example/v.jpg")
                ),
                (
                    json!("messenger:sticker:m_1"),
                    json!("https://cdn.example/sticker.png"),
                    json!(null)
                ),
            ],
            "the attachment without a URL is left out"
        );
        let many: GraphMessage = serde_json::from_value(json!({
            "id": "m_2", "created_time": "2024-01-02T03:04:05+0000",
            "attachments": {"data": (0..12).map(|i| json!({"id": format!("b{i}"),
                "file_url": format!("https://cdn.example/{i}")})).collect::<Vec<_>>()},
        }))
        .unwrap();
        assert_eq!(
            many.confab_attachments().len(),
            crate::domain::MAX_ATTACHMENTS
        );
    }

    #[test]
    fn graph_times() {
        assert_eq!(graph_time("1970-01-01T00:00:01+0000"), Some(1000));
        assert_eq!(graph_time("1970-01-01T00:00:01.500Z"), Some(1500));
        assert_eq!(graph_time("yesterday"), None);
    }
}
