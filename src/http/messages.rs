//! Messages and read state: send (through the batched write path), page, edit, delete, read,
//! unread.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, patch, post};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::extract::{Caller, Json, Params, Path, parse_json};
use super::openapi::Error;
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
    if state.db_down() {
        return Err(ApiError::Unavailable);
    }
    let op = WriteOp::Send {
        conversation_id,
        sender_id,
        input: Box::new(input),
    };
    match state.writes.submit(op).await? {
        WriteOutcome::Sent { message, created } => Ok((*message, created)),
        _ => Err(ApiError::Internal),
    }
}

/// A page of messages, serialized straight from the rows (no JSON tree in between).
#[derive(serde::Serialize)]
pub struct MessagePage {
    messages: Vec<Message>,
    has_more: bool,
}

/// `POST /v1/conversations/{id}/messages`.
#[utoipa::path(
    post,
    path = "/v1/conversations/{id}/messages",
    tag = "messages",
    operation_id = "send_message",
    summary = "Send a message (member)",
    description = "The message is committed before the response; delivery to others happens after. \
        Idempotent on `client_id` per sender and conversation: a retry answers 200 with the \
        original message and creates nothing. Moves the sender's `last_read_seq` to the new `seq`. \
        A server token names the sender with `?as` or, as an extension, `user_id` in the body.",
    params(
        ("id" = String, Path, description = "Conversation id"),
        ("as" = Option<String>, Query, pattern = "^[A-Za-z0-9_.@:-]{1,128}$", description = "With a server token: act as this user"),
    ),
    request_body = SendInput,
    responses(
        (status = 201, description = "Sent", body = Message),
        (status = 200, description = "A replay of a `client_id` already sent: the original message", body = Message),
        (status = 400, description = "`validation_failed`: `field` names the offender (`client_id`, `text`, `attachments[0].key`, ...); `user_id` missing with a server token", body = Error),
        (status = 401, description = "`unauthorized`", body = Error),
        (status = 403, description = "`forbidden`", body = Error),
        (status = 404, description = "`not_found`: unknown conversation, or the sender is not a member", body = Error),
        (status = 413, description = "`payload_too_large`", body = Error),
        (status = 429, description = "`rate_limited`", body = Error, headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "`unavailable`: nothing was sent", body = Error),
    ),
    security(("bearer_jwt" = []))
)]
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
        _ => {
            return Err(ApiError::invalid(
                "user_id",
                "a server token must name the sender",
            ));
        }
    };
    let (message, created) = send_message(&state, id, sender, input).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(message)))
}

/// `GET /v1/conversations/{id}/messages?limit&before_seq|after_seq`.
#[utoipa::path(
    get,
    path = "/v1/conversations/{id}/messages",
    tag = "messages",
    operation_id = "list_messages",
    summary = "Page through messages (member)",
    description = "Without a bound: the newest `limit`. `before_seq`: the `limit` just before it; \
        `after_seq`: the `limit` just after it (not both). Always oldest first; `has_more` says \
        whether more exist beyond the page in the direction asked. A server token needs `?as`.",
    params(
        ("id" = String, Path, description = "Conversation id"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 200, description = "Page size, default 50"),
        ("before_seq" = Option<i64>, Query, minimum = 0, description = "Messages just before this seq"),
        ("after_seq" = Option<i64>, Query, minimum = 0, description = "Messages just after this seq"),
        ("as" = Option<String>, Query, pattern = "^[A-Za-z0-9_.@:-]{1,128}$", description = "With a server token: act as this user"),
    ),
    responses(
        (status = 200, description = "One page, oldest first", body = super::openapi::MessagePage),
        (status = 400, description = "`validation_failed`: `limit`, `before_seq` or `after_seq` invalid, or both bounds given; `as` missing with a server token", body = Error),
        (status = 401, description = "`unauthorized`", body = Error),
        (status = 403, description = "`forbidden`: the `as` user is deactivated", body = Error),
        (status = 404, description = "`not_found`: unknown, or the caller is not a member", body = Error),
        (status = 429, description = "`rate_limited`", body = Error, headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "`unavailable`", body = Error),
    ),
    security(("bearer_jwt" = []))
)]
async fn page(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    params: Params,
) -> ApiResult<Json<MessagePage>> {
    let user = caller.user()?;
    let (limit, bound) = page_params(&params)?;
    let (messages, has_more) = state.store.page_messages(user, &id, bound, limit).await?;
    Ok(Json(MessagePage { messages, has_more }))
}

/// The page size and bound of `GET /v1/conversations/{id}/messages`.
pub(crate) fn page_params(params: &Params) -> ApiResult<(u32, PageBound)> {
    let limit = params.int("limit", 1..=200, 50)? as u32;
    let before = params.opt_int("before_seq", 0..=i64::MAX)?;
    let after = params.opt_int("after_seq", 0..=i64::MAX)?;
    let bound = match (before, after) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "after_seq",
                "give before_seq or after_seq, not both",
            ));
        }
        (Some(b), None) => PageBound::Before(b),
        (None, Some(a)) => PageBound::After(a),
        (None, None) => PageBound::Newest,
    };
    Ok((limit, bound))
}

/// The body of `POST /v1/conversations/{id}/read`; the body may also be empty.
#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = MarkRead)]
struct ReadBody {
    /// Read up to this seq; omitted or beyond the end: the latest. A lower one changes nothing.
    #[schema(required = false, minimum = 0, example = 14)]
    seq: Option<i64>,
}

/// Marks read through the write path; shared by REST and the socket edge.
pub async fn mark_read(
    state: &AppState,
    conversation_id: String,
    user_id: String,
    seq: Option<i64>,
) -> ApiResult<i64> {
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
        _ => Err(ApiError::Internal),
    }
}

/// `POST /v1/conversations/{id}/read` `{"seq"?}`: the body may be empty.
#[utoipa::path(
    post,
    path = "/v1/conversations/{id}/read",
    tag = "messages",
    operation_id = "mark_read",
    summary = "Mark read (member)",
    description = "Moves the caller's `last_read_seq` forward; a lower `seq` is accepted and changes \
        nothing. The body may be empty. A server token needs `?as`.",
    params(
        ("id" = String, Path, description = "Conversation id"),
        ("as" = Option<String>, Query, pattern = "^[A-Za-z0-9_.@:-]{1,128}$", description = "With a server token: act as this user"),
    ),
    request_body(content = Option<ReadBody>, description = "Optional: `{}` or no body means the latest"),
    responses(
        (status = 200, description = "The caller's read position", body = super::openapi::ReadState),
        (status = 400, description = "`validation_failed`: `seq` invalid; `as` missing with a server token", body = Error),
        (status = 401, description = "`unauthorized`", body = Error),
        (status = 403, description = "`forbidden`: the `as` user is deactivated", body = Error),
        (status = 404, description = "`not_found`: unknown, or the caller is not a member", body = Error),
        (status = 413, description = "`payload_too_large`", body = Error),
        (status = 429, description = "`rate_limited`", body = Error, headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "`unavailable`", body = Error),
    ),
    security(("bearer_jwt" = []))
)]
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
    Ok(Json(
        json!({ "conversation_id": id, "last_read_seq": last_read_seq }),
    ))
}

/// The body of `PATCH /v1/messages/{id}`: at least one of `text` and `custom`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = EditMessage)]
struct EditBody {
    /// The new text, at most 8,000 characters.
    #[schema(required = false, max_length = 8000)]
    text: Option<String>,
    /// The new `custom`, a JSON object of at most 8 KiB serialized.
    #[schema(required = false, value_type = Option<Object>)]
    custom: Option<Value>,
}

/// `PATCH /v1/messages/{id}`: the sender edits `text` / `custom`.
#[utoipa::path(
    patch,
    path = "/v1/messages/{id}",
    tag = "messages",
    operation_id = "edit_message",
    summary = "Edit a message (sender)",
    description = "Sets `edited_at`. Only the sender may edit (a server token with `?as` acts as \
        that user).",
    params(
        ("id" = String, Path, description = "Message id"),
        ("as" = Option<String>, Query, pattern = "^[A-Za-z0-9_.@:-]{1,128}$", description = "With a server token: act as this user"),
    ),
    request_body = EditBody,
    responses(
        (status = 200, description = "The edited message", body = Message),
        (status = 400, description = "`validation_failed`: neither `text` nor `custom`, or one is invalid", body = Error),
        (status = 401, description = "`unauthorized`", body = Error),
        (status = 403, description = "`forbidden`: not the sender", body = Error),
        (status = 404, description = "`not_found`: unknown, or not visible to the caller", body = Error),
        (status = 413, description = "`payload_too_large`", body = Error),
        (status = 429, description = "`rate_limited`", body = Error, headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "`unavailable`", body = Error),
    ),
    security(("bearer_jwt" = []))
)]
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
        .edit_message(
            &caller.actor(),
            &id,
            body.text.as_deref(),
            body.custom.as_ref(),
        )
        .await?;
    state.committed(committed.changes);
    Ok(Json(committed.value))
}

/// `DELETE /v1/messages/{id}`: the sender or the server; answers the tombstone.
#[utoipa::path(
    delete,
    path = "/v1/messages/{id}",
    tag = "messages",
    operation_id = "delete_message",
    summary = "Delete a message (sender or server)",
    description = "Soft delete: the message stays as a tombstone with the same `id` and `seq`, \
        `deleted_at` set, `text` and `encrypted` null, `attachments` empty.",
    params(
        ("id" = String, Path, description = "Message id"),
        ("as" = Option<String>, Query, pattern = "^[A-Za-z0-9_.@:-]{1,128}$", description = "With a server token: act as this user"),
    ),
    responses(
        (status = 200, description = "The tombstone", body = Message),
        (status = 400, description = "`validation_failed`: malformed query string or `as`", body = Error),
        (status = 401, description = "`unauthorized`", body = Error),
        (status = 403, description = "`forbidden`: not the sender", body = Error),
        (status = 404, description = "`not_found`: unknown, or not visible to the caller", body = Error),
        (status = 429, description = "`rate_limited`", body = Error, headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "`unavailable`", body = Error),
    ),
    security(("bearer_jwt" = []))
)]
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
#[utoipa::path(
    get,
    path = "/v1/unread",
    tag = "messages",
    operation_id = "get_unread",
    summary = "Unread counts",
    description = "Exact, uncapped counts per conversation (only non-zero ones) and their total. \
        A server token needs `?as`.",
    params(("as" = Option<String>, Query, pattern = "^[A-Za-z0-9_.@:-]{1,128}$", description = "With a server token: act as this user"),),
    responses(
        (status = 200, description = "The counts", body = super::openapi::Unread),
        (status = 400, description = "`validation_failed`: `as` missing with a server token", body = Error),
        (status = 401, description = "`unauthorized`", body = Error),
        (status = 403, description = "`forbidden`: the `as` user is deactivated", body = Error),
        (status = 429, description = "`rate_limited`", body = Error, headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "`unavailable`", body = Error),
    ),
    security(("bearer_jwt" = []))
)]
async fn unread(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Value>> {
    let user = caller.user()?;
    let counts = state.store.unread(user).await?;
    let total: i64 = counts.iter().map(|(_, n)| n).sum();
    let conversations: Vec<Value> = counts
        .into_iter()
        .map(|(id, n)| json!({"conversation_id": id, "unread_count": n}))
        .collect();
    Ok(Json(
        json!({ "total": total, "conversations": conversations }),
    ))
}
