//! `/v1/users`: upsert (server), get one, get many, deactivate (server).

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, put};
use serde_json::{Map, Value, json};

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::extract::{Caller, Json, Params, Path};
use super::openapi::Error;
use crate::domain::User;
use crate::domain::{MAX_NAME_CHARS, UserInput, check_custom, check_string, check_user_id};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/users", put(upsert).get(get_many))
        .route("/v1/users/{id}", get(get_one).delete(deactivate))
}

/// Reads one user of an upsert, naming fields as `users[i].x`.
fn user_input(i: usize, v: &Value) -> ApiResult<UserInput> {
    let at = |f: &str| format!("users[{i}].{f}");
    let obj: &Map<String, Value> = v
        .as_object()
        .ok_or_else(|| ApiError::invalid(format!("users[{i}]"), "must be an object"))?;
    let id = obj
        .get("id")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::invalid(at("id"), "is required and must be a string"))?;
    check_user_id(&at("id"), id)?;
    let text = |f: &str, max: usize| -> ApiResult<Option<Option<String>>> {
        match obj.get(f) {
            None => Ok(None),
            Some(Value::Null) => Ok(Some(None)),
            Some(Value::String(s)) => {
                check_string(&at(f), s, max)?;
                Ok(Some(Some(s.clone())))
            }
            Some(_) => Err(ApiError::invalid(at(f), "must be a string")),
        }
    };
    let name = match text("name", MAX_NAME_CHARS)? {
        Some(None) => return Err(ApiError::invalid(at("name"), "must not be null")),
        Some(Some(n)) if n.is_empty() => {
            return Err(ApiError::invalid(at("name"), "must not be empty"));
        }
        n => n.flatten(),
    };
    let kind = match text("kind", 64)? {
        Some(None) => None,
        Some(Some(k)) if k.is_empty() => {
            return Err(ApiError::invalid(at("kind"), "must not be empty"));
        }
        k => k.flatten(),
    };
    let custom = match obj.get("custom") {
        None | Some(Value::Null) => None,
        Some(c) => {
            check_custom(&at("custom"), c)?;
            Some(c.clone())
        }
    };
    Ok(UserInput {
        id: id.to_owned(),
        name,
        image_url: text("image_url", 2048)?,
        kind,
        custom,
    })
}

/// `PUT /v1/users`: upsert 1-1000 users.
#[utoipa::path(
    put,
    path = "/v1/users",
    tag = "users",
    operation_id = "upsert_users",
    summary = "Upsert users (server token)",
    description = "Creates or updates 1-1000 users. Absent fields keep their stored value; \
        `image_url: null` clears the image. Answers every user as stored.",
    request_body = super::openapi::UserUpsert,
    responses(
        (status = 200, description = "The users as stored, in the order sent", body = super::openapi::UserList),
        (status = 400, description = "`validation_failed`: `field` names the offender (`users`, `users[3].id`, ...)", body = Error),
        (status = 401, description = "`unauthorized`", body = Error),
        (status = 403, description = "`forbidden`: not a server token", body = Error),
        (status = 413, description = "`payload_too_large`", body = Error),
        (status = 429, description = "`rate_limited`", body = Error, headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "`unavailable`", body = Error),
    ),
    security(("bearer_jwt" = []))
)]
async fn upsert(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<Value>,
) -> ApiResult<Json<Value>> {
    caller.require_server()?;
    let list = body
        .get("users")
        .and_then(Value::as_array)
        .ok_or_else(|| ApiError::invalid("users", "is required and must be an array"))?;
    if list.is_empty() || list.len() > 1000 {
        return Err(ApiError::invalid("users", "must hold 1 to 1000 users"));
    }
    let mut inputs = Vec::with_capacity(list.len());
    let mut seen = std::collections::HashSet::new();
    for (i, v) in list.iter().enumerate() {
        let u = user_input(i, v)?;
        if !seen.insert(u.id.clone()) {
            return Err(ApiError::invalid(format!("users[{i}].id"), "appears twice"));
        }
        inputs.push(u);
    }
    let mut users = state.store.upsert_users(&inputs).await?;
    state.with_presence(&mut users);
    Ok(Json(json!({ "users": users })))
}

/// `GET /v1/users/{id}`.
#[utoipa::path(
    get,
    path = "/v1/users/{id}",
    tag = "users",
    operation_id = "get_user",
    summary = "Get one user, with presence",
    params(
        ("id" = String, Path, description = "User id"),
        ("as" = Option<String>, Query, pattern = "^[A-Za-z0-9_.@:-]{1,128}$", description = "With a server token: act as this user"),
    ),
    responses(
        (status = 200, description = "The user", body = User),
        (status = 400, description = "`validation_failed`: bad `as`", body = Error),
        (status = 401, description = "`unauthorized`", body = Error),
        (status = 403, description = "`forbidden`: the `as` user is deactivated", body = Error),
        (status = 404, description = "`not_found`", body = Error),
        (status = 429, description = "`rate_limited`", body = Error, headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "`unavailable`", body = Error),
    ),
    security(("bearer_jwt" = []))
)]
async fn get_one(
    State(state): State<AppState>,
    _caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    if check_user_id("id", &id).is_err() {
        return Err(ApiError::NotFound);
    }
    let mut users = state.store.get_users(&[id]).await?;
    state.with_presence(&mut users);
    let user = users.pop().ok_or(ApiError::NotFound)?;
    Ok(Json(json!(user)))
}

/// `GET /v1/users?ids=a,b`: in the order asked, unknown ids left out.
#[utoipa::path(
    get,
    path = "/v1/users",
    tag = "users",
    operation_id = "get_users",
    summary = "Get several users",
    description = "The users in the order asked; unknown ids are left out. `ids` is required \
        (an extension: the contract does not list all users).",
    params(
        ("ids" = String, Query, description = "Comma-separated user ids, at most 1000", example = "u_1,u_2"),
        ("as" = Option<String>, Query, pattern = "^[A-Za-z0-9_.@:-]{1,128}$", description = "With a server token: act as this user"),
    ),
    responses(
        (status = 200, description = "The users found", body = super::openapi::UserList),
        (status = 400, description = "`validation_failed`: `ids` missing, over 1000 or not a user id; bad `as`", body = Error),
        (status = 401, description = "`unauthorized`", body = Error),
        (status = 403, description = "`forbidden`: the `as` user is deactivated", body = Error),
        (status = 429, description = "`rate_limited`", body = Error, headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "`unavailable`", body = Error),
    ),
    security(("bearer_jwt" = []))
)]
async fn get_many(
    State(state): State<AppState>,
    _caller: Caller,
    params: Params,
) -> ApiResult<Json<Value>> {
    let ids = params.list("ids");
    if params.str("ids").is_none() {
        return Err(ApiError::invalid("ids", "is required"));
    }
    if ids.len() > 1000 {
        return Err(ApiError::invalid("ids", "at most 1000 ids"));
    }
    for id in &ids {
        check_user_id("ids", id)?;
    }
    let mut users = state.store.get_users(&ids).await?;
    state.with_presence(&mut users);
    Ok(Json(json!({ "users": users })))
}

/// `DELETE /v1/users/{id}`: deactivate.
#[utoipa::path(
    delete,
    path = "/v1/users/{id}",
    tag = "users",
    operation_id = "deactivate_user",
    summary = "Deactivate a user (server token)",
    description = "The user's tokens stop working; their messages stay.",
    params(("id" = String, Path, description = "User id")),
    responses(
        (status = 204, description = "Deactivated"),
        (status = 400, description = "`validation_failed`: malformed query string or `as`", body = Error),
        (status = 401, description = "`unauthorized`", body = Error),
        (status = 403, description = "`forbidden`: not a server token", body = Error),
        (status = 404, description = "`not_found`", body = Error),
        (status = 429, description = "`rate_limited`", body = Error, headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "`unavailable`", body = Error),
    ),
    security(("bearer_jwt" = []))
)]
async fn deactivate(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    caller.require_server()?;
    if check_user_id("id", &id).is_err() {
        return Err(ApiError::NotFound);
    }
    state.store.deactivate_user(&id).await?;
    state.forget_user(&id);
    // Tokens stop working, and so do open sockets.
    if let Some(hub) = state.realtime.get().and_then(|w| w.upgrade()) {
        hub.user_deactivated(&id);
    }
    Ok(StatusCode::NO_CONTENT)
}
