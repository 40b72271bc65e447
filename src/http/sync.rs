//! `GET /v1/sync`: the changes a user has not seen, from the change log, by position.
//!
//! A token is `base64url("{database_id}:{position}")`. Positions are handed out under one row
//! lock taken last in every writing transaction, so they become visible in order: a reader that
//! sees position P sees every position below P (docs/architecture.md).

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use serde_json::{Value, json};

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::extract::{Caller, Json, Params};
use super::openapi::Error;
use crate::auth::Keys;
use crate::domain::Change;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/sync", get(sync))
}

/// A sync token: `database_id:position`, sealed (see `Keys::seal`).
pub fn encode_token(keys: &Keys, database_id: &str, pos: i64) -> String {
    keys.seal("sync", &format!("{database_id}:{pos}"))
}

/// What a presented token is.
#[derive(Debug, PartialEq, Eq)]
pub enum TokenCheck {
    /// One of this database's tokens, at this position.
    Ours(i64),
    /// A well-formed token naming another database (a server re-pointed at a new one): the
    /// client must resync. Whether its tag is genuine does not matter: it grants nothing.
    Foreign,
    /// Not a token this API made.
    Malformed,
}

/// Reads a token presented by a client.
pub fn check_token(keys: &Keys, database_id: &str, token: &str) -> TokenCheck {
    let Some((payload, genuine)) = keys.unseal("sync", token) else {
        return TokenCheck::Malformed;
    };
    let Some((db, pos)) = payload.rsplit_once(':') else {
        return TokenCheck::Malformed;
    };
    let Some(pos) = pos.parse::<i64>().ok().filter(|p| *p >= 0) else {
        return TokenCheck::Malformed;
    };
    if db != database_id {
        TokenCheck::Foreign
    } else if genuine {
        TokenCheck::Ours(pos)
    } else {
        TokenCheck::Malformed
    }
}

/// The event form of a change, shared by sync and (later) realtime.
pub fn event(keys: &Keys, database_id: &str, c: &Change) -> Value {
    json!({
        "type": c.kind.as_str(),
        "conversation_id": c.conversation_id,
        "data": c.data,
        "token": encode_token(keys, database_id, c.pos),
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
            json!({ "next_token": encode_token(&state.keys, &state.database_id, now) }),
        ));
    };
    let after = match check_token(&state.keys, &state.database_id, since) {
        TokenCheck::Ours(pos) => pos,
        TokenCheck::Foreign => return Err(ApiError::ResyncRequired),
        TokenCheck::Malformed => return Err(ApiError::invalid("since", "is not a sync token")),
    };
    // The position "now" is read first: every change at or below it has committed (positions
    // are visible in order), so resuming from it after an empty page skips nothing.
    // Below the floor, retention has deleted changes the client has not seen.
    let (floor, upto) = state.store.positions().await?;
    if after > upto || after < floor {
        return Err(ApiError::ResyncRequired);
    }
    // Nothing committed since the token (the idle poll): no range to read.
    let changes = if after == upto {
        Vec::new()
    } else {
        state
            .store
            .changes_for(user, after, upto, limit + 1)
            .await?
    };
    let has_more = changes.len() > limit as usize;
    let page = &changes[..changes.len().min(limit as usize)];
    let next = match (page.last(), has_more) {
        (Some(c), true) => c.pos,
        _ => upto,
    };
    let events: Vec<Value> = page
        .iter()
        .map(|c| event(&state.keys, &state.database_id, c))
        .collect();
    Ok(Json(json!({
        "events": events,
        "next_token": encode_token(&state.keys, &state.database_id, next),
        "has_more": has_more,
    })))
}
