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
use crate::domain::Change;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/sync", get(sync))
}

pub fn encode_token(database_id: &str, pos: i64) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{database_id}:{pos}"))
}

/// `(database_id, position)` of a well-formed token.
pub fn decode_token(token: &str) -> Option<(String, i64)> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token).ok()?;
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
async fn sync(State(state): State<AppState>, caller: Caller, params: Params) -> ApiResult<Json<Value>> {
    let user = caller.user()?;
    let limit = params.int("limit", 1..=1000, 500)? as u32;
    let Some(since) = params.str("since") else {
        let now = state.store.last_position().await?;
        return Ok(Json(json!({ "next_token": encode_token(&state.database_id, now) })));
    };
    let (db, after) = decode_token(since).ok_or_else(|| ApiError::invalid("since", "is not a sync token"))?;
    if db != *state.database_id {
        return Err(ApiError::ResyncRequired);
    }
    // The position "now" is read first: every change at or below it has committed (positions
    // are visible in order), so resuming from it after an empty page skips nothing.
    let upto = state.store.last_position().await?;
    if after > upto {
        return Err(ApiError::ResyncRequired);
    }
    let changes = state.store.changes_for(user, after, upto, limit + 1).await?;
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
