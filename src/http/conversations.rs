//! `/v1/conversations`: create, list, get, patch, tags, members.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post, put};
use base64::Engine;
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::extract::{Caller, Json, Params};
use crate::domain::{
    Conversation, MAX_MEMBERS_PER_CALL, MAX_NAME_CHARS, check_custom, check_string, check_tags,
    check_user_id,
};
use crate::storage::{ConversationPatch, ListFilter, NewConversation};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/conversations", post(create).get(list))
        .route("/v1/conversations/{id}", get(get_one).patch(patch))
        .route("/v1/conversations/{id}/tags", put(set_tags))
        .route("/v1/conversations/{id}/members", post(add_members))
        .route("/v1/conversations/{id}/members/{user_id}", delete(remove_member))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    member_ids: Vec<String>,
    name: Option<String>,
    image_url: Option<String>,
    custom: Option<Value>,
    #[serde(default)]
    tags: Vec<String>,
    external_id: Option<String>,
}

/// Loads one conversation as `viewer` sees it (the server's view when `None`).
async fn view(state: &AppState, viewer: Option<&str>, id: &str, messages: u32) -> ApiResult<Conversation> {
    state
        .store
        .conversations_for(viewer, &[id.to_owned()], messages)
        .await?
        .pop()
        .ok_or(ApiError::NotFound)
}

fn check_opt_text(field: &str, v: &Option<String>, max: usize) -> ApiResult<()> {
    if let Some(s) = v {
        check_string(field, s, max)?;
    }
    Ok(())
}

/// `POST /v1/conversations`.
async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<CreateBody>,
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
        return Err(ApiError::invalid("member_ids", "a conversation needs a member"));
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
    let committed = state.store.create_conversation(&new).await?;
    state.committed(committed.changes);
    let (id, created) = committed.value;
    let conversation = match view(&state, creator.as_deref(), &id, 0).await {
        Ok(c) => c,
        // An existing conversation (same external_id) the caller is not in: not a replay.
        Err(ApiError::NotFound) if !created => {
            return Err(ApiError::Conflict(
                "external_id belongs to another conversation".into(),
            ));
        }
        Err(e) => return Err(e),
    };
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(conversation)))
}

/// The opaque listing cursor: base64url of `activity_ms:id`.
fn encode_cursor((at, id): &(i64, String)) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{at}:{id}"))
}

fn decode_cursor(s: &str) -> Option<(i64, String)> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s).ok()?;
    let raw = String::from_utf8(raw).ok()?;
    let (at, id) = raw.split_once(':')?;
    Some((at.parse().ok()?, id.to_owned()))
}

/// `GET /v1/conversations`.
async fn list(State(state): State<AppState>, caller: Caller, params: Params) -> ApiResult<Json<Value>> {
    let user = caller.user()?;
    let cursor = match params.str("cursor") {
        None | Some("") => None,
        Some(c) => Some(decode_cursor(c).ok_or_else(|| ApiError::invalid("cursor", "is not a cursor from this API"))?),
    };
    let kind = params.str("type").map(str::to_owned);
    if kind.as_deref().is_some_and(|k| k != "direct" && k != "group") {
        return Err(ApiError::invalid("type", "type must be direct or group"));
    }
    let tags = params.list("tags");
    check_tags("tags", &tags)?;
    let exclude_tags = params.list("exclude_tags");
    check_tags("exclude_tags", &exclude_tags)?;
    let q = params.str("q").map(str::trim).filter(|q| !q.is_empty()).map(str::to_owned);
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
    let page = state.store.list_conversations(user, &filter).await?;
    let mut body = json!({
        "conversations": page.conversations,
        "next_cursor": page.next.as_ref().map(encode_cursor),
    });
    if let Some(total) = page.total {
        body["total"] = json!(total);
    }
    Ok(Json(body))
}

/// `GET /v1/conversations/{id}?messages=N`.
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
    if let Some(k) = obj.keys().find(|k| !["name", "image_url", "custom"].contains(&k.as_str())) {
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
    let committed = state.store.update_conversation(&caller.actor(), &id, &patch).await?;
    state.committed(committed.changes);
    Ok(Json(view(&state, Some(&user), &id, 0).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TagsBody {
    tags: Vec<String>,
}

/// `PUT /v1/conversations/{id}/tags`: member or server.
async fn set_tags(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<TagsBody>,
) -> ApiResult<Json<Conversation>> {
    check_tags("tags", &body.tags)?;
    let committed = state.store.set_tags(&caller.actor(), &id, &body.tags).await?;
    state.committed(committed.changes);
    Ok(Json(view(&state, caller.acting.as_deref(), &id, 0).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MembersBody {
    user_ids: Vec<String>,
}

/// `POST /v1/conversations/{id}/members`: a member adds users to a group.
async fn add_members(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<MembersBody>,
) -> ApiResult<Json<Conversation>> {
    if body.user_ids.is_empty() || body.user_ids.len() > MAX_MEMBERS_PER_CALL {
        return Err(ApiError::invalid("user_ids", "must hold 1 to 1000 user ids"));
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
async fn remove_member(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, user_id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let committed = state.store.remove_member(&caller.actor(), &id, &user_id).await?;
    state.committed(committed.changes);
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trip_and_garbage() {
        let c = (1_795_000_000_123, "0193-abc".to_owned());
        assert_eq!(decode_cursor(&encode_cursor(&c)), Some(c));
        assert_eq!(decode_cursor("!!!"), None);
        assert_eq!(decode_cursor("Zm9v"), None); // "foo": no colon
    }
}
