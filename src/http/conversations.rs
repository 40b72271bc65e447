//! `/v1/conversations`: create, list, get, patch, tags, members.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{delete, get, post, put};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::extract::{Caller, DeferredCaller, Json, Params, Path};
use super::openapi::Error;
use crate::auth::Keys;
use crate::domain::{
    Conversation, MAX_MEMBERS_PER_CALL, MAX_NAME_CHARS, check_custom, check_string, check_tags,
    check_user_id,
};
use crate::storage::{
    CREATOR_DEACTIVATED, ConversationPatch, ListFilter, NewConversation, StoreError, WriteOp,
    WriteOutcome,
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/conversations", post(create).get(list))
        .route("/v1/conversations/{id}", get(get_one).patch(patch))
        .route("/v1/conversations/{id}/tags", put(set_tags))
        .route("/v1/conversations/{id}/members", post(add_members))
        .route(
            "/v1/conversations/{id}/members/{user_id}",
            delete(remove_member),
        )
}

/// The body of `POST /v1/conversations`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = CreateConversation)]
struct CreateBody {
    /// `direct` (exactly two members) or `group`.
    #[serde(rename = "type")]
    #[schema(value_type = super::openapi::ConversationType)]
    kind: String,
    /// The other members (the caller is added), at most 1000; unknown ids are created as bare
    /// users. With a server token and no `?as`: the whole member list.
    #[serde(default)]
    #[schema(max_items = 1000)]
    member_ids: Vec<String>,
    #[schema(required = false, max_length = 256)]
    name: Option<String>,
    #[schema(required = false, max_length = 2048)]
    image_url: Option<String>,
    /// A JSON object, at most 8 KiB serialized.
    #[schema(required = false, value_type = Option<Object>)]
    custom: Option<Value>,
    /// At most 50 tags of 1-64 characters, no commas.
    #[serde(default)]
    #[schema(max_items = 50)]
    tags: Vec<String>,
    /// The app's own id: creating again with the same one answers the existing conversation.
    #[schema(required = false, min_length = 1, max_length = 256)]
    external_id: Option<String>,
}

/// Loads one conversation as `viewer` sees it (the server's view when `None`).
async fn view(
    state: &AppState,
    viewer: Option<&str>,
    id: &str,
    messages: u32,
) -> ApiResult<Conversation> {
    let mut c = state
        .store
        .conversations_for(viewer, &[id.to_owned()], messages)
        .await?
        .pop()
        .ok_or(ApiError::NotFound)?;
    members_presence(state, std::slice::from_mut(&mut c));
    Ok(c)
}

/// Fills `online` of the member users from presence.
fn members_presence(state: &AppState, conversations: &mut [Conversation]) {
    for c in conversations {
        for m in &mut c.members {
            state.with_presence(std::slice::from_mut(&mut m.user));
        }
    }
}

fn check_opt_text(field: &str, v: &Option<String>, max: usize) -> ApiResult<()> {
    if let Some(s) = v {
        check_string(field, s, max)?;
    }
    Ok(())
}

/// `POST /v1/conversations`.
#[utoipa::path(
    post,
    path = "/v1/conversations",
    tag = "conversations",
    operation_id = "create_conversation",
    summary = "Create a conversation",
    description = "Writes no message. A `direct` conversation for an existing pair, or a repeated \
        `external_id`, answers the existing one with 200 instead of 201.",
    params(("as" = Option<String>, Query, pattern = "^[A-Za-z0-9_.@:-]{1,128}$", description = "With a server token: act as this user"),),
    request_body = CreateBody,
    responses(
        (status = 201, description = "Created", body = Conversation),
        (status = 200, description = "Already existed (same `direct` pair or `external_id`)", body = Conversation),
        (status = 400, description = "`validation_failed`: `field` names the offender (`type`, `member_ids[2]`, ...)", body = Error),
        (status = 401, description = "`unauthorized`", body = Error),
        (status = 403, description = "`forbidden`: the `as` user is deactivated", body = Error),
        (status = 409, description = "`conflict`: the `external_id` belongs to a conversation the caller is not in", body = Error),
        (status = 413, description = "`payload_too_large`", body = Error),
        (status = 429, description = "`rate_limited`", body = Error, headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "`unavailable`", body = Error),
    ),
    security(("bearer_jwt" = []))
)]
async fn create(
    State(state): State<AppState>,
    deferred: DeferredCaller,
    body: Result<Json<CreateBody>, ApiError>,
) -> ApiResult<(StatusCode, Json<Conversation>)> {
    // A new user's first request need not wait for the user's own commit before the create:
    // the create makes its members, the caller among them, in its transaction. The user's
    // creation is waited for before any answer, a refused body's included.
    let DeferredCaller(caller, creating) = deferred;
    let result = match body {
        Ok(Json(body)) => create_as(&state, &caller, body).await,
        Err(e) => Err(e),
    };
    let settled = DeferredCaller(caller, creating).settle(&state).await;
    match result {
        // Written: the answer says so, whatever the user's own op met meanwhile (its refusal
        // would say "not written").
        Ok(done) => Ok(done),
        Err(e) => {
            settled?;
            Err(e)
        }
    }
}

async fn create_as(
    state: &AppState,
    caller: &Caller,
    body: CreateBody,
) -> ApiResult<(StatusCode, Json<Conversation>)> {
    if body.kind != "direct" && body.kind != "group" {
        return Err(ApiError::invalid("type", "type must be direct or group"));
    }
    if body.member_ids.len() > MAX_MEMBERS_PER_CALL {
        return Err(ApiError::invalid("member_ids", "at most 1000 members"));
    }
    for (i, m) in body.member_ids.iter().enumerate() {
        check_user_id(&format!("member_ids[{i}]"), m)?;
    }
    check_opt_text("name", &body.name, MAX_NAME_CHARS)?;
    check_opt_text("image_url", &body.image_url, 2048)?;
    check_opt_text("external_id", &body.external_id, 256)?;
    if body.external_id.as_deref() == Some("") {
        return Err(ApiError::invalid("external_id", "must not be empty"));
    }
    let custom = body.custom.unwrap_or_else(|| json!({}));
    check_custom("custom", &custom)?;
    check_tags("tags", &body.tags)?;

    let creator = caller.acting.clone();
    let mut members: Vec<String> = Vec::with_capacity(body.member_ids.len() + 1);
    members.extend(creator.iter().cloned());
    for m in body.member_ids {
        if !members.contains(&m) {
            members.push(m);
        }
    }
    if body.kind == "direct" && members.len() != 2 {
        return Err(ApiError::invalid(
            "member_ids",
            "a direct conversation has exactly two members",
        ));
    }
    if members.is_empty() {
        return Err(ApiError::invalid(
            "member_ids",
            "a conversation needs a member",
        ));
    }
    let new = NewConversation {
        kind: body.kind,
        member_ids: members,
        created_by: creator.clone(),
        name: body.name,
        image_url: body.image_url,
        custom,
        tags: body.tags,
        external_id: body.external_id,
    };
    // Through the write path: concurrent creates share one commit (docs/architecture.md).
    let (id, created) = match state.writes.submit(WriteOp::Create(Box::new(new))).await {
        Ok(WriteOutcome::Created { id, created }) => (id, created),
        Err(StoreError::Forbidden(why)) if why == CREATOR_DEACTIVATED => {
            return Err(super::extract::deactivated(caller.is_server()));
        }
        Err(e) => return Err(e.into()),
        Ok(_) => return Err(ApiError::Internal),
    };
    let conversation = match view(state, creator.as_deref(), &id, 0).await {
        Ok(c) => c,
        // An existing conversation (same external_id) the caller is not in: not a replay.
        Err(ApiError::NotFound) if !created => {
            return Err(ApiError::Conflict(
                "external_id belongs to another conversation".into(),
            ));
        }
        Err(e) => return Err(e),
    };
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(conversation)))
}

/// The opaque listing cursor: `activity_ms:id`, sealed (see `Keys::seal`).
pub(crate) fn encode_cursor(keys: &Keys, (at, id): &(i64, String)) -> String {
    keys.seal("conversations", &format!("{at}:{id}"))
}

pub(crate) fn decode_cursor(keys: &Keys, s: &str) -> Option<(i64, String)> {
    let raw = keys.open("conversations", s)?;
    let (at, id) = raw.split_once(':')?;
    // No id holds U+0000 (PostgreSQL refuses it in a parameter: a 500).
    if id.contains('\0') {
        return None;
    }
    Some((at.parse().ok()?, id.to_owned()))
}

/// `GET /v1/conversations`.
#[utoipa::path(
    get,
    path = "/v1/conversations",
    tag = "conversations",
    operation_id = "list_conversations",
    summary = "List the caller's conversations",
    description = "Ordered by last activity (`last_message_at`, else `created_at`), newest first, \
        ties by id. Keyset paging: follow `next_cursor` (null at the end). A server token needs `?as`.",
    params(
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 100, description = "Page size, default 30"),
        ("cursor" = Option<String>, Query, description = "Opaque: `next_cursor` of the previous page"),
        ("type" = Option<super::openapi::ConversationType>, Query, description = "Only this type"),
        ("tags" = Option<String>, Query, description = "Comma-separated: has all of them", example = "vip,eu"),
        ("exclude_tags" = Option<String>, Query, description = "Comma-separated: has none of them"),
        ("q" = Option<String>, Query, max_length = 256, description = "Case-insensitive substring of the conversation's name or of another member's name"),
        ("updated_after" = Option<String>, Query, format = DateTime, description = "Last activity at or after (RFC 3339)"),
        ("updated_before" = Option<String>, Query, format = DateTime, description = "Last activity at or before (RFC 3339)"),
        ("unread_only" = Option<bool>, Query, description = "Only conversations with unread messages"),
        ("include_total" = Option<bool>, Query, description = "Add `total`: the exact number matching the filters"),
        ("as" = Option<String>, Query, pattern = "^[A-Za-z0-9_.@:-]{1,128}$", description = "With a server token: act as this user"),
    ),
    responses(
        (status = 200, description = "One page", body = super::openapi::ConversationList),
        (status = 400, description = "`validation_failed`: `field` names the parameter (`limit`, `cursor`, `type`, `tags[0]`, ...); `as` missing with a server token", body = Error),
        (status = 401, description = "`unauthorized`", body = Error),
        (status = 403, description = "`forbidden`: the `as` user is deactivated", body = Error),
        (status = 429, description = "`rate_limited`", body = Error, headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "`unavailable`", body = Error),
    ),
    security(("bearer_jwt" = []))
)]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    params: Params,
) -> ApiResult<Json<ConversationList>> {
    let user = caller.user()?;
    let filter = list_filter(&state.keys, &params)?;
    let mut page = state.store.list_conversations(user, &filter).await?;
    members_presence(&state, &mut page.conversations);
    Ok(Json(ConversationList {
        next_cursor: page.next.as_ref().map(|c| encode_cursor(&state.keys, c)),
        conversations: page.conversations,
        total: page.total,
    }))
}

/// A page of the caller's conversations, serialized straight from the rows.
#[derive(serde::Serialize)]
pub struct ConversationList {
    conversations: Vec<crate::domain::Conversation>,
    next_cursor: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    total: Option<i64>,
}

/// The filter of `GET /v1/conversations` from its query parameters.
pub(crate) fn list_filter(keys: &Keys, params: &Params) -> ApiResult<ListFilter> {
    let cursor = match params.str("cursor") {
        None | Some("") => None,
        Some(c) => Some(
            decode_cursor(keys, c)
                .ok_or_else(|| ApiError::invalid("cursor", "is not a cursor from this API"))?,
        ),
    };
    let kind = params.str("type").map(str::to_owned);
    if kind
        .as_deref()
        .is_some_and(|k| k != "direct" && k != "group")
    {
        return Err(ApiError::invalid("type", "type must be direct or group"));
    }
    let mut tags = params.list("tags");
    check_tags("tags", &tags)?;
    tags.sort();
    tags.dedup();
    let exclude_tags = params.list("exclude_tags");
    check_tags("exclude_tags", &exclude_tags)?;
    let q = params
        .str("q")
        .map(str::trim)
        .filter(|q| !q.is_empty())
        .map(str::to_owned);
    if let Some(q) = &q {
        check_string("q", q, 256)?;
    }
    let filter = ListFilter {
        limit: params.int("limit", 1..=100, 30)? as u32,
        cursor,
        kind,
        tags,
        exclude_tags,
        q,
        updated_after: params.time("updated_after")?,
        updated_before: params.time("updated_before")?,
        unread_only: params.bool("unread_only")?,
        include_total: params.bool("include_total")?,
    };
    Ok(filter)
}

/// `GET /v1/conversations/{id}?messages=N`.
#[utoipa::path(
    get,
    path = "/v1/conversations/{id}",
    tag = "conversations",
    operation_id = "get_conversation",
    summary = "Get one conversation (member)",
    description = "With `?messages=N` the answer also holds `messages`, the newest N, oldest first: \
        a chat screen opens with one request. A server token needs `?as`.",
    params(
        ("id" = String, Path, description = "Conversation id"),
        ("messages" = Option<i64>, Query, minimum = 0, maximum = 200, description = "Also return the newest N messages, default 0"),
        ("as" = Option<String>, Query, pattern = "^[A-Za-z0-9_.@:-]{1,128}$", description = "With a server token: act as this user"),
    ),
    responses(
        (status = 200, description = "The conversation as the caller sees it", body = Conversation),
        (status = 400, description = "`validation_failed`: `messages` out of range; `as` missing with a server token", body = Error),
        (status = 401, description = "`unauthorized`", body = Error),
        (status = 403, description = "`forbidden`: the `as` user is deactivated", body = Error),
        (status = 404, description = "`not_found`: unknown, or the caller is not a member", body = Error),
        (status = 429, description = "`rate_limited`", body = Error, headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "`unavailable`", body = Error),
    ),
    security(("bearer_jwt" = []))
)]
async fn get_one(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    params: Params,
) -> ApiResult<Json<Conversation>> {
    let user = caller.user()?;
    let messages = params.int("messages", 0..=200, 0)? as u32;
    Ok(Json(view(&state, Some(user), &id, messages).await?))
}

/// Reads a nullable text field of a patch: absent, null (clear) or a string.
fn nullable_text(body: &Value, field: &str, max: usize) -> ApiResult<Option<Option<String>>> {
    match body.get(field) {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(Value::String(s)) => {
            check_string(field, s, max)?;
            Ok(Some(Some(s.clone())))
        }
        Some(_) => Err(ApiError::invalid(field, "must be a string or null")),
    }
}

/// `PATCH /v1/conversations/{id}`: `name`, `image_url`, `custom`.
#[utoipa::path(
    patch,
    path = "/v1/conversations/{id}",
    tag = "conversations",
    operation_id = "update_conversation",
    summary = "Rename or update a conversation (member)",
    description = "Absent fields are left; `null` clears `name` / `image_url`. A rename writes one \
        `system` message. A server token needs `?as`.",
    params(
        ("id" = String, Path, description = "Conversation id"),
        ("as" = Option<String>, Query, pattern = "^[A-Za-z0-9_.@:-]{1,128}$", description = "With a server token: act as this user"),
    ),
    request_body = super::openapi::ConversationPatch,
    responses(
        (status = 200, description = "The conversation after the change", body = Conversation),
        (status = 400, description = "`validation_failed`: `field` names the offender; unknown fields are refused", body = Error),
        (status = 401, description = "`unauthorized`", body = Error),
        (status = 403, description = "`forbidden`", body = Error),
        (status = 404, description = "`not_found`: unknown, or the caller is not a member", body = Error),
        (status = 413, description = "`payload_too_large`", body = Error),
        (status = 429, description = "`rate_limited`", body = Error, headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "`unavailable`", body = Error),
    ),
    security(("bearer_jwt" = []))
)]
async fn patch(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> ApiResult<Json<Conversation>> {
    let user = caller.user()?.to_owned();
    let obj = body.as_object().ok_or_else(|| ApiError::Validation {
        field: None,
        message: "body must be an object".into(),
    })?;
    if let Some(k) = obj
        .keys()
        .find(|k| !["name", "image_url", "custom"].contains(&k.as_str()))
    {
        return Err(ApiError::invalid(k.as_str(), "unknown field"));
    }
    let custom = match obj.get("custom") {
        None => None,
        Some(c) => {
            check_custom("custom", c)?;
            Some(c.clone())
        }
    };
    let patch = ConversationPatch {
        name: nullable_text(&body, "name", MAX_NAME_CHARS)?,
        image_url: nullable_text(&body, "image_url", 2048)?,
        custom,
    };
    let committed = state
        .store
        .update_conversation(&caller.actor(), &id, &patch)
        .await?;
    state.committed(committed.changes);
    Ok(Json(view(&state, Some(&user), &id, 0).await?))
}

/// The body of `PUT /v1/conversations/{id}/tags`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = SetTags)]
struct TagsBody {
    /// The new tags, replacing all: at most 50 of 1-64 characters, no commas.
    #[schema(max_items = 50, example = json!(["vip"]))]
    tags: Vec<String>,
}

/// `PUT /v1/conversations/{id}/tags`: member or server.
#[utoipa::path(
    put,
    path = "/v1/conversations/{id}/tags",
    tag = "conversations",
    operation_id = "set_conversation_tags",
    summary = "Replace a conversation's tags (member or server)",
    description = "Writes no message. A server token without `?as` acts as the server and gets the \
        server's view.",
    params(
        ("id" = String, Path, description = "Conversation id"),
        ("as" = Option<String>, Query, pattern = "^[A-Za-z0-9_.@:-]{1,128}$", description = "With a server token: act as this user"),
    ),
    request_body = TagsBody,
    responses(
        (status = 200, description = "The conversation after the change", body = Conversation),
        (status = 400, description = "`validation_failed`: `field` names the offending tag (`tags[1]`)", body = Error),
        (status = 401, description = "`unauthorized`", body = Error),
        (status = 403, description = "`forbidden`", body = Error),
        (status = 404, description = "`not_found`: unknown, or the caller is not a member", body = Error),
        (status = 413, description = "`payload_too_large`", body = Error),
        (status = 429, description = "`rate_limited`", body = Error, headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "`unavailable`", body = Error),
    ),
    security(("bearer_jwt" = []))
)]
async fn set_tags(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<TagsBody>,
) -> ApiResult<Json<Conversation>> {
    check_tags("tags", &body.tags)?;
    let committed = state
        .store
        .set_tags(&caller.actor(), &id, &body.tags)
        .await?;
    state.committed(committed.changes);
    Ok(Json(view(&state, caller.acting.as_deref(), &id, 0).await?))
}

/// The body of `POST /v1/conversations/{id}/members`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = AddMembers)]
struct MembersBody {
    /// 1-1000 user ids; unknown ones are created as bare users.
    #[schema(min_items = 1, max_items = 1000, example = json!(["u_7"]))]
    user_ids: Vec<String>,
}

/// `POST /v1/conversations/{id}/members`: a member adds users to a group.
#[utoipa::path(
    post,
    path = "/v1/conversations/{id}/members",
    tag = "conversations",
    operation_id = "add_members",
    summary = "Add members to a group (member)",
    description = "Writes one `system` message when someone is added. New members start with \
        `last_read_seq` at the conversation's `last_seq`.",
    params(
        ("id" = String, Path, description = "Conversation id"),
        ("as" = Option<String>, Query, pattern = "^[A-Za-z0-9_.@:-]{1,128}$", description = "With a server token: act as this user"),
    ),
    request_body = MembersBody,
    responses(
        (status = 200, description = "The conversation after the change", body = Conversation),
        (status = 400, description = "`validation_failed`: bad `user_ids`, or the conversation is `direct`", body = Error),
        (status = 401, description = "`unauthorized`", body = Error),
        (status = 403, description = "`forbidden`", body = Error),
        (status = 404, description = "`not_found`: unknown, or the caller is not a member", body = Error),
        (status = 413, description = "`payload_too_large`", body = Error),
        (status = 429, description = "`rate_limited`", body = Error, headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "`unavailable`", body = Error),
    ),
    security(("bearer_jwt" = []))
)]
async fn add_members(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<MembersBody>,
) -> ApiResult<Json<Conversation>> {
    if body.user_ids.is_empty() || body.user_ids.len() > MAX_MEMBERS_PER_CALL {
        return Err(ApiError::invalid(
            "user_ids",
            "must hold 1 to 1000 user ids",
        ));
    }
    for (i, u) in body.user_ids.iter().enumerate() {
        check_user_id(&format!("user_ids[{i}]"), u)?;
    }
    let mut ids = body.user_ids;
    let mut seen = std::collections::HashSet::new();
    ids.retain(|u| seen.insert(u.clone()));
    let committed = state.store.add_members(&caller.actor(), &id, &ids).await?;
    state.committed(committed.changes);
    Ok(Json(view(&state, caller.acting.as_deref(), &id, 0).await?))
}

/// `DELETE /v1/conversations/{id}/members/{user_id}`: leave, or remove (owner or server).
#[utoipa::path(
    delete,
    path = "/v1/conversations/{id}/members/{user_id}",
    tag = "conversations",
    operation_id = "remove_member",
    summary = "Leave, or remove a member (self, owner or server)",
    description = "Writes one `system` message when someone is removed.",
    params(
        ("id" = String, Path, description = "Conversation id"),
        ("user_id" = String, Path, description = "The member to remove (the caller to leave)"),
        ("as" = Option<String>, Query, pattern = "^[A-Za-z0-9_.@:-]{1,128}$", description = "With a server token: act as this user"),
    ),
    responses(
        (status = 204, description = "Removed"),
        (status = 400, description = "`validation_failed`: malformed query string or `as`", body = Error),
        (status = 401, description = "`unauthorized`", body = Error),
        (status = 403, description = "`forbidden`: neither the member themself nor the owner", body = Error),
        (status = 404, description = "`not_found`: unknown conversation or member, or the caller is not a member", body = Error),
        (status = 429, description = "`rate_limited`", body = Error, headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "`unavailable`", body = Error),
    ),
    security(("bearer_jwt" = []))
)]
async fn remove_member(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, user_id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let committed = state
        .store
        .remove_member(&caller.actor(), &id, &user_id)
        .await?;
    state.committed(committed.changes);
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trip_and_garbage() {
        let c = (1_795_000_000_123, "0193-abc".to_owned());
        let keys = Keys::new("a-secret-of-some-length");
        assert_eq!(decode_cursor(&keys, &encode_cursor(&keys, &c)), Some(c));
        assert_eq!(decode_cursor(&keys, "!!!"), None);
        assert_eq!(decode_cursor(&keys, "Zm9v"), None);
        // A cursor of the old, unsealed form: refused.
        assert_eq!(decode_cursor(&keys, "MTIzOmFiYw"), None);
    }

    /// Found by the `conversation_list` fuzz target: a cursor whose id held U+0000 was
    /// accepted, and PostgreSQL answered the listing with an error (500).
    #[test]
    fn cursor_with_nul_is_refused() {
        // Sealed by this server, so only the id's U+0000 stands in the way.
        let keys = Keys::new("a-secret-of-some-length");
        let bad = keys.seal("conversations", "53:\u{3}\0");
        assert_eq!(decode_cursor(&keys, &bad), None);
        let params = Params::from_query(&format!("cursor={bad}")).unwrap();
        let Err(ApiError::Validation { field, .. }) = list_filter(&keys, &params) else {
            panic!("accepted");
        };
        assert_eq!(field.as_deref(), Some("cursor"));
        crate::fuzzing::conversation_list(
            b"limit=30&c\0\0\0\0\0\0\0\0L&cursor=MTc6NTMDAwAwMDAwMDE",
        );
    }
}
