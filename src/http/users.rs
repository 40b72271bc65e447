//! `/v1/users`: upsert (server), get one, get many, deactivate (server).

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, put};
use serde_json::{Map, Value, json};

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::extract::{Caller, Json, Params};
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
        Some(Some(n)) if n.is_empty() => return Err(ApiError::invalid(at("name"), "must not be empty")),
        n => n.flatten(),
    };
    let kind = match text("kind", 64)? {
        Some(None) => None,
        Some(Some(k)) if k.is_empty() => return Err(ApiError::invalid(at("kind"), "must not be empty")),
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
    let users = state.store.upsert_users(&inputs).await?;
    Ok(Json(json!({ "users": users })))
}

/// `GET /v1/users/{id}`.
async fn get_one(
    State(state): State<AppState>,
    _caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    if check_user_id("id", &id).is_err() {
        return Err(ApiError::NotFound);
    }
    let mut users = state.store.get_users(&[id]).await?;
    let user = users.pop().ok_or(ApiError::NotFound)?;
    Ok(Json(json!(user)))
}

/// `GET /v1/users?ids=a,b`: in the order asked, unknown ids left out.
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
    let users = state.store.get_users(&ids).await?;
    Ok(Json(json!({ "users": users })))
}

/// `DELETE /v1/users/{id}`: deactivate.
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
    Ok(StatusCode::NO_CONTENT)
}
