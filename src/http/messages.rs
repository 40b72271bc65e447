//! Messages and read state: send (through the batched write path), page, edit, delete, read,
//! unread.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, patch, post};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::extract::{Caller, Json, Params, parse_json};
use crate::domain::{MAX_TEXT_CHARS, Message, SendInput, check_custom, check_string};
use crate::storage::{PageBound, WriteOp, WriteOutcome};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/conversations/{id}/messages", post(send).get(page))
        .route("/v1/conversations/{id}/read", post(read))
        .route("/v1/messages/{id}", patch(edit).delete(remove))
        .route("/v1/unread", get(unread))
}

/// Sends a message through the write path; shared by REST and the socket edge. Returns the
/// message and whether it was created (false: an idempotent replay).
pub async fn send_message(
    state: &AppState,
    conversation_id: String,
    sender_id: String,
    input: SendInput,
) -> ApiResult<(Message, bool)> {
    input.validate()?;
    let op = WriteOp::Send {
        conversation_id,
        sender_id,
        input,
    };
    match state.writes.submit(op).await? {
        WriteOutcome::Sent { message, created } => Ok((message, created)),
        WriteOutcome::Read { .. } => Err(ApiError::Internal),
    }
}

/// `POST /v1/conversations/{id}/messages`.
async fn send(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Json(input): Json<SendInput>,
) -> ApiResult<(StatusCode, Json<Message>)> {
    let sender = match (&caller.acting, &input.user_id, caller.is_server()) {
        (Some(u), _, _) => u.clone(),
        (None, Some(u), true) => {
            crate::domain::check_user_id("user_id", u)?;
            u.clone()
        }
        _ => return Err(ApiError::invalid("user_id", "a server token must name the sender")),
    };
    let (message, created) = send_message(&state, id, sender, input).await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(message)))
}

/// `GET /v1/conversations/{id}/messages?limit&before_seq|after_seq`.
async fn page(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    params: Params,
) -> ApiResult<Json<Value>> {
    let user = caller.user()?;
    let limit = params.int("limit", 1..=200, 50)? as u32;
    let before = params.opt_int("before_seq", 0..=i64::MAX)?;
    let after = params.opt_int("after_seq", 0..=i64::MAX)?;
    let bound = match (before, after) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid("after_seq", "give before_seq or after_seq, not both"));
        }
        (Some(b), None) => PageBound::Before(b),
        (None, Some(a)) => PageBound::After(a),
        (None, None) => PageBound::Newest,
    };
    let (messages, has_more) = state.store.page_messages(user, &id, bound, limit).await?;
    Ok(Json(json!({ "messages": messages, "has_more": has_more })))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ReadBody {
    seq: Option<i64>,
}

/// Marks read through the write path; shared by REST and the socket edge.
pub async fn mark_read(state: &AppState, conversation_id: String, user_id: String, seq: Option<i64>) -> ApiResult<i64> {
    if seq.is_some_and(|s| s < 0) {
        return Err(ApiError::invalid("seq", "must be an integer ≥ 0"));
    }
    let op = WriteOp::Read {
        conversation_id,
        user_id,
        seq,
    };
    match state.writes.submit(op).await? {
        WriteOutcome::Read { last_read_seq } => Ok(last_read_seq),
        WriteOutcome::Sent { .. } => Err(ApiError::Internal),
    }
}

/// `POST /v1/conversations/{id}/read` `{"seq"?}`: the body may be empty.
async fn read(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let user = caller.user()?.to_owned();
    let body: ReadBody = if body.iter().all(u8::is_ascii_whitespace) {
        ReadBody::default()
    } else {
        parse_json(&body)?
    };
    let last_read_seq = mark_read(&state, id.clone(), user, body.seq).await?;
    Ok(Json(json!({ "conversation_id": id, "last_read_seq": last_read_seq })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EditBody {
    text: Option<String>,
    custom: Option<Value>,
}

/// `PATCH /v1/messages/{id}`: the sender edits `text` / `custom`.
async fn edit(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<EditBody>,
) -> ApiResult<Json<Message>> {
    if body.text.is_none() && body.custom.is_none() {
        return Err(ApiError::invalid("text", "give text or custom"));
    }
    if let Some(t) = &body.text {
        check_string("text", t, MAX_TEXT_CHARS)?;
    }
    if let Some(c) = &body.custom {
        check_custom("custom", c)?;
    }
    let committed = state
        .store
        .edit_message(&caller.actor(), &id, body.text.as_deref(), body.custom.as_ref())
        .await?;
    state.committed(committed.changes);
    Ok(Json(committed.value))
}

/// `DELETE /v1/messages/{id}`: the sender or the server; answers the tombstone.
async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Message>> {
    let committed = state.store.delete_message(&caller.actor(), &id).await?;
    state.committed(committed.changes);
    Ok(Json(committed.value))
}

/// `GET /v1/unread`: exact counts, non-zero only.
async fn unread(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Value>> {
    let user = caller.user()?;
    let counts = state.store.unread(user).await?;
    let total: i64 = counts.iter().map(|(_, n)| n).sum();
    let conversations: Vec<Value> = counts
        .into_iter()
        .map(|(id, n)| json!({"conversation_id": id, "unread_count": n}))
        .collect();
    Ok(Json(json!({ "total": total, "conversations": conversations })))
}
