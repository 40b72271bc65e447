//! `GET /v1/sync`: the changes a user has not seen, from the change log, by position.
//!
//! A token is `base64url("{database_id}:{position}")`. Positions are handed out under one row
//! lock taken last in every writing transaction, so they become visible in order: a reader that
//! sees position P sees every position below P (docs/architecture.md).

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use base64::Engine;
use serde_json::{Value, json};

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::extract::{Caller, Json, Params};
use super::openapi::Error;
use crate::domain::Change;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/sync", get(sync))
}

pub fn encode_token(database_id: &str, pos: i64) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{database_id}:{pos}"))
}

/// `(database_id, position)` of a well-formed token.
pub fn decode_token(token: &str) -> Option<(String, i64)> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()?;
    let raw = String::from_utf8(raw).ok()?;
    let (db, pos) = raw.rsplit_once(':')?;
    let pos: i64 = pos.parse().ok()?;
    (pos >= 0).then(|| (db.to_owned(), pos))
}

/// The event form of a change, shared by sync and (later) realtime.
pub fn event(database_id: &str, c: &Change) -> Value {
    json!({
        "type": c.kind.as_str(),
        "conversation_id": c.conversation_id,
        "data": c.data,
        "token": encode_token(database_id, c.pos),
    })
}

/// `GET /v1/sync?since=<token>&limit=500`.
#[utoipa::path(
    get,
    path = "/v1/sync",
    tag = "sync",
    operation_id = "sync",
    summary = "Gap-free catch-up",
    description = "Without `since`: only `next_token`, the position now. With `since`: every change \
        visible to the caller after that token, in order (`events`), the token to continue from \
        and `has_more`. Following `next_token` never misses a change nor returns one twice. \
        An event's `token` resumes right after that event. A server token needs `?as`.",
    params(
        ("since" = Option<String>, Query, description = "A `next_token` or an event's `token`"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 1000, description = "At most this many events, default 500"),
        ("as" = Option<String>, Query, pattern = "^[A-Za-z0-9_.@:-]{1,128}$", description = "With a server token: act as this user"),
    ),
    responses(
        (status = 200, description = "The changes since the token", body = super::openapi::SyncPage),
        (status = 400, description = "`validation_failed`: malformed `since`, `limit` out of range; `as` missing with a server token", body = Error),
        (status = 401, description = "`unauthorized`", body = Error),
        (status = 403, description = "`forbidden`: the `as` user is deactivated", body = Error),
        (status = 410, description = "`resync_required`: the token can no longer be served (another database, or past retention); reload from the listing endpoints", body = Error),
        (status = 429, description = "`rate_limited`", body = Error, headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "`unavailable`", body = Error),
    ),
    security(("bearer_jwt" = []))
)]
async fn sync(
    State(state): State<AppState>,
    caller: Caller,
    params: Params,
) -> ApiResult<Json<Value>> {
    let user = caller.user()?;
    let limit = params.int("limit", 1..=1000, 500)? as u32;
    let Some(since) = params.str("since") else {
        let now = state.store.last_position().await?;
        return Ok(Json(
            json!({ "next_token": encode_token(&state.database_id, now) }),
        ));
    };
    let (db, after) =
        decode_token(since).ok_or_else(|| ApiError::invalid("since", "is not a sync token"))?;
    if db != *state.database_id {
        return Err(ApiError::ResyncRequired);
    }
    // The position "now" is read first: every change at or below it has committed (positions
    // are visible in order), so resuming from it after an empty page skips nothing.
    // Below the floor, retention has deleted changes the client has not seen.
    let (floor, upto) = state.store.positions().await?;
    if after > upto || after < floor {
        return Err(ApiError::ResyncRequired);
    }
    let changes = state
        .store
        .changes_for(user, after, upto, limit + 1)
        .await?;
    let has_more = changes.len() > limit as usize;
    let page = &changes[..changes.len().min(limit as usize)];
    let next = match (page.last(), has_more) {
        (Some(c), true) => c.pos,
        _ => upto,
    };
    let events: Vec<Value> = page.iter().map(|c| event(&state.database_id, c)).collect();
    Ok(Json(json!({
        "events": events,
        "next_token": encode_token(&state.database_id, next),
        "has_more": has_more,
    })))
}
