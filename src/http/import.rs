//! `POST /v1/import`: NDJSON in, streamed; progress, bad lines and the summary streamed back.

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures_util::StreamExt;

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::extract::Caller;
use crate::import::{self, Report};

pub fn router() -> Router<AppState> {
    Router::new().route(
        "/v1/import",
        post(import).layer(DefaultBodyLimit::disable()),
    )
}

/// `Retry-After` of an import refused because `CONFAB_IMPORT_JOBS` imports and Messenger syncs
/// are running.
const IMPORT_RETRY_AFTER_SECS: u64 = 10;

/// `POST /v1/import` (server token), `Content-Type: application/x-ndjson`.
#[utoipa::path(
    post,
    path = "/v1/import",
    tag = "import",
    operation_id = "import",
    summary = "Bulk import (server token): NDJSON records, streamed both ways",
    description = "One record a line: `{\"record\": \"user\", ...User}`, `{\"record\": \"conversation\", \
        \"external_id\", \"type\", \"member_ids\", \"name\"?, \"image_url\"?, \"custom\"?, \"tags\"?, \"created_at\"?}`, \
        `{\"record\": \"message\", \"conversation_external_id\", \"external_id\", \"sender_id\", \"text\"?, \
        \"encrypted\"?, \"attachments\"?, \"custom\"?, \"type\"?, \"created_at\", \"unread\"?}`. \
        Idempotent on ids and external ids; existing users are left as they are. Imported messages count \
        as read unless `unread: true` (extension). The body is not size-limited. The response streams \
        NDJSON: `{\"line\": n, \"error\": {...}}` for each bad line, `{\"progress\": {...}}` after each \
        batch, and last `{\"done\": true, \"users\", \"conversations\", \"messages\", \"errors\", \"lines\", \"bytes\"}`; \
        if the database fails midway the last line is `{\"done\": false, \"error\": {\"code\", \"message\"}}` \
        instead (extension: what was committed before stays, and importing the file again skips it). \
        At most `CONFAB_IMPORT_JOBS` (default 2) imports and Messenger syncs run at once: an import over \
        that is refused with 429 and `Retry-After` (extension).",
    request_body(content = String, content_type = "application/x-ndjson"),
    responses(
        (status = 200, description = "NDJSON progress, bad lines and the summary", content_type = "application/x-ndjson", body = String),
        (status = 401, description = "`unauthorized`", body = super::openapi::Error),
        (status = 403, description = "`forbidden`: not a server token", body = super::openapi::Error),
        (status = 429, description = "`rate_limited`: over the caller's rate limit, or `CONFAB_IMPORT_JOBS` imports and syncs are running; `Retry-After` is set", body = super::openapi::Error),
        (status = 503, description = "`unavailable`", body = super::openapi::Error),
    ),
    security(("bearer_jwt" = []))
)]
async fn import(
    State(state): State<AppState>,
    caller: Caller,
    req: Request,
) -> ApiResult<Response> {
    caller.require_server()?;
    // A bounded number of imports at once (they yield between batches). One over the limit is
    // refused at once rather than held: its client would wait with no answer for as long as
    // another import runs (minutes for a large file), and can send its body again later.
    let permit = match state.import_slots.clone().try_acquire_owned() {
        Ok(p) => p,
        Err(tokio::sync::TryAcquireError::NoPermits) => {
            return Err(ApiError::RateLimited {
                retry_after: IMPORT_RETRY_AFTER_SECS,
            });
        }
        Err(tokio::sync::TryAcquireError::Closed) => return Err(ApiError::Unavailable),
    };
    let body = idle_limited(
        req.into_body().into_data_stream(),
        state.config.import_idle_timeout,
    );
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        let send = |r: Report| {
            let mut line = serde_json::to_string(&r).unwrap_or_default();
            line.push('\n');
            let _ = tx.send(line);
        };
        if let Err(e) = import::run(
            &state.store,
            &state.bus,
            state.config.import_batch,
            body,
            send,
        )
        .await
        {
            tracing::error!(error = %e, "import stopped");
            let err = ApiError::from(e).body();
            let _ = tx.send(format!(
                "{}\n",
                serde_json::json!({"done": false, "error": err["error"]})
            ));
        }
        // The slot is free before the response ends (dropping `tx` ends it), so a client may
        // start its next import as soon as it has this one's summary.
        drop(permit);
        drop(tx);
    });
    let stream = tokio_stream_from(rx).map(Ok::<_, std::convert::Infallible>);
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response())
}

/// `body`, ending with an error when no bytes arrive for `idle` (the import then reports it
/// as a bad line and ends with what it has).
fn idle_limited(
    body: axum::body::BodyDataStream,
    idle: std::time::Duration,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, String>> + Unpin {
    Box::pin(futures_util::stream::unfold(
        Some(body),
        move |body| async move {
            let mut body = body?;
            match tokio::time::timeout(idle, body.next()).await {
                Ok(Some(chunk)) => Some((chunk.map_err(|e| e.to_string()), Some(body))),
                Ok(None) => None,
                Err(_) => Some((Err(format!("no bytes for {} s", idle.as_secs_f64())), None)),
            }
        },
    ))
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<String>,
) -> impl futures_util::Stream<Item = String> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
