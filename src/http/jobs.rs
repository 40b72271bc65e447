//! Sources and jobs: `POST /v1/sources/messenger/sync`, `GET /v1/jobs/{id}`, and its SSE
//! progress stream `GET /v1/jobs/{id}/events`.

use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::{get, post};
use futures_util::Stream;
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::extract::{Caller, Json, Path};
use crate::domain::check_string;
use crate::import::messenger;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/sources/messenger/sync", post(messenger_sync))
        .route("/v1/jobs/{id}", get(job))
        .route("/v1/jobs/{id}/events", get(events))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MessengerSync {
    /// The Facebook page whose conversations are pulled.
    page_id: String,
    /// A page access token.
    access_token: String,
}

/// `POST /v1/sources/messenger/sync` (server token): starts a background job.
#[utoipa::path(
    post,
    path = "/v1/sources/messenger/sync",
    tag = "import",
    operation_id = "messenger_sync",
    summary = "Start a Facebook Messenger page sync (server token)",
    description = "Pulls the page's conversations and messages from the Graph API \
        (`CONFAB_GRAPH_API_URL`), 100 per request, and upserts them in bulk: one direct conversation \
        per (page, customer), external id `messenger:{page_id}:{customer_id}`. Rate limits (Graph codes \
        4, 17, 32, 613), Graph's temporary errors (1, 2, `is_transient`), HTTP 5xx and Graph out of reach \
        are retried with backoff; the job checkpoints Graph's cursor after every page, so \
        a restarted server resumes it. Re-running is idempotent. At most `CONFAB_IMPORT_JOBS` imports \
        and syncs run at once; a job over that waits (status `running`) for a slot.",
    request_body = MessengerSync,
    responses(
        (status = 202, description = "The job, started", body = super::openapi::JobStarted),
        (status = 400, description = "`validation_failed`", body = super::openapi::Error),
        (status = 401, description = "`unauthorized`", body = super::openapi::Error),
        (status = 403, description = "`forbidden`: not a server token", body = super::openapi::Error),
        (status = 429, description = "`rate_limited`", body = super::openapi::Error),
        (status = 503, description = "`unavailable`", body = super::openapi::Error),
    ),
    security(("bearer_jwt" = []))
)]
async fn messenger_sync(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<MessengerSync>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    caller.require_server()?;
    if body.page_id.is_empty()
        || !body
            .page_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return Err(ApiError::invalid("page_id", "must be a Graph page id"));
    }
    if body.access_token.is_empty() {
        return Err(ApiError::invalid("access_token", "is required"));
    }
    check_string("access_token", &body.access_token, 4096)?;
    let params = json!({"page_id": body.page_id, "access_token": body.access_token});
    let lease = state.config.job_lease.as_millis() as i64;
    let job = state
        .store
        .create_job(messenger::KIND, &params, lease)
        .await?;
    let id = job.id.clone();
    tokio::spawn(messenger::run(state.clone(), job));
    Ok((StatusCode::ACCEPTED, Json(json!({ "job_id": id }))))
}

/// `GET /v1/jobs/{id}` (server token).
#[utoipa::path(
    get,
    path = "/v1/jobs/{id}",
    tag = "import",
    operation_id = "get_job",
    summary = "A job's status and counts (server token)",
    description = "`{\"id\", \"kind\", \"status\": \"running\"|\"completed\"|\"failed\", \"fetched\", \"upserted\", \
        \"messages\", \"error\"?: {\"code\", \"message\"}, \"created_at\", \"updated_at\"}`",
    params(("id" = String, Path, description = "The job id")),
    responses(
        (status = 200, description = "The job", body = super::openapi::Job),
        (status = 400, description = "`validation_failed`: `id` holds U+0000 or is not UTF-8; bad `as`", body = super::openapi::Error),
        (status = 401, description = "`unauthorized`", body = super::openapi::Error),
        (status = 403, description = "`forbidden`: not a server token", body = super::openapi::Error),
        (status = 404, description = "`not_found`", body = super::openapi::Error),
        (status = 429, description = "`rate_limited`", body = super::openapi::Error),
        (status = 503, description = "`unavailable`", body = super::openapi::Error),
    ),
    security(("bearer_jwt" = []))
)]
async fn job(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.require_server()?;
    let job = state.store.job(&id).await?;
    Ok(Json(json!(job)))
}

/// `GET /v1/jobs/{id}/events` (server token): SSE, the current state first, then every change,
/// closing after `completed` or `failed`.
#[utoipa::path(
    get,
    path = "/v1/jobs/{id}/events",
    tag = "import",
    operation_id = "job_events",
    summary = "A job's progress as Server-Sent Events (server token)",
    description = "Each event: `data: {\"status\", \"fetched\", \"upserted\", \"messages\", \"error\"?}` \
        (schema `JobProgress`). The \
        current state comes first; the stream closes after `completed` or `failed`. Progress is read \
        from the database, so any node serves any job's stream.",
    params(("id" = String, Path, description = "The job id")),
    responses(
        (status = 200, description = "text/event-stream", content_type = "text/event-stream", body = String),
        (status = 400, description = "`validation_failed`: `id` holds U+0000 or is not UTF-8; bad `as`", body = super::openapi::Error),
        (status = 401, description = "`unauthorized`", body = super::openapi::Error),
        (status = 403, description = "`forbidden`: not a server token", body = super::openapi::Error),
        (status = 404, description = "`not_found`", body = super::openapi::Error),
        (status = 429, description = "`rate_limited`", body = super::openapi::Error),
        (status = 503, description = "`unavailable`", body = super::openapi::Error),
    ),
    security(("bearer_jwt" = []))
)]
async fn events(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    caller.require_server()?;
    let first = state.store.job(&id).await?;
    let stream = futures_util::stream::unfold(
        (state, id, Some(first), None::<Value>, false),
        |(state, id, mut next, last, done)| async move {
            if done {
                return None;
            }
            loop {
                let job = match next.take() {
                    Some(j) => j,
                    None => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        match state.store.job(&id).await {
                            Ok(j) => j,
                            Err(_) => continue,
                        }
                    }
                };
                let p = messenger::progress(&job);
                if last.as_ref() == Some(&p) {
                    continue;
                }
                let finished = job.status != "running";
                let event = Event::default().data(p.to_string());
                return Some((Ok(event), (state, id, None, Some(p), finished)));
            }
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
