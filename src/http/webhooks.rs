//! `/v1/webhooks/deliveries`: the outbox, for the app's backend (server token).

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::extract::{Caller, Json, Params, Path};
use crate::domain::Timestamp;
use crate::storage::Delivery;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/webhooks/deliveries", get(list))
        .route("/v1/webhooks/deliveries/{id}/retry", post(retry))
}

/// `GET /v1/webhooks/deliveries?status=pending|delivered|dead&limit&cursor`: oldest first.
#[utoipa::path(
    get,
    path = "/v1/webhooks/deliveries",
    tag = "webhooks",
    operation_id = "list_webhook_deliveries",
    summary = "List webhook deliveries (server token)",
    description = "Deliveries with their attempts and last error, oldest first. Extension: \
        `limit` (1-500, default 100) and a keyset `cursor` (`next_cursor` of the previous page).",
    params(
        ("status" = Option<String>, Query, description = "pending, delivered or dead"),
        ("limit" = Option<i64>, Query, description = "1-500, default 100"),
        ("cursor" = Option<String>, Query, description = "next_cursor of the previous page"),
    ),
    responses(
        (status = 200, description = "`{\"deliveries\": [...], \"next_cursor\"}`", body = Value),
        (status = 400, description = "`validation_failed`", body = super::openapi::Error),
        (status = 401, description = "`unauthorized`", body = super::openapi::Error),
        (status = 403, description = "`forbidden`: not a server token", body = super::openapi::Error),
        (status = 429, description = "`rate_limited`", body = super::openapi::Error),
        (status = 503, description = "`unavailable`", body = super::openapi::Error),
    ),
    security(("bearer_jwt" = []))
)]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    params: Params,
) -> ApiResult<Json<Value>> {
    caller.require_server()?;
    let status = params.str("status");
    if status.is_some_and(|s| !["pending", "delivered", "dead"].contains(&s)) {
        return Err(ApiError::invalid(
            "status",
            "must be pending, delivered or dead",
        ));
    }
    let limit = params.int("limit", 1..=500, 100)? as u32;
    let after = match params.str("cursor") {
        None | Some("") => 0,
        Some(c) => state
            .keys
            .open("deliveries", c)
            .and_then(|s| s.parse::<i64>().ok())
            .ok_or_else(|| ApiError::invalid("cursor", "is not a cursor from this API"))?,
    };
    let list = state
        .store
        .list_deliveries(status, after, limit + 1)
        .await?;
    let more = list.len() > limit as usize;
    let page: &[Delivery] = &list[..list.len().min(limit as usize)];
    let next = more
        .then(|| page.last())
        .flatten()
        .map(|d| state.keys.seal("deliveries", &d.pos.to_string()));
    Ok(Json(json!({ "deliveries": page, "next_cursor": next })))
}

/// `POST /v1/webhooks/deliveries/{id}/retry`: resend now, with the same `webhook-id`.
#[utoipa::path(
    post,
    path = "/v1/webhooks/deliveries/{id}/retry",
    tag = "webhooks",
    operation_id = "retry_webhook_delivery",
    summary = "Resend a delivery now (server token)",
    params(("id" = String, Path, description = "The delivery's webhook-id")),
    responses(
        (status = 202, description = "The delivery, pending again", body = Value),
        (status = 400, description = "`validation_failed`: `id` holds U+0000 or is not UTF-8; bad `as`", body = super::openapi::Error),
        (status = 401, description = "`unauthorized`", body = super::openapi::Error),
        (status = 403, description = "`forbidden`: not a server token", body = super::openapi::Error),
        (status = 404, description = "`not_found`", body = super::openapi::Error),
        (status = 429, description = "`rate_limited`", body = super::openapi::Error),
        (status = 503, description = "`unavailable`", body = super::openapi::Error),
    ),
    security(("bearer_jwt" = []))
)]
async fn retry(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<Delivery>)> {
    caller.require_server()?;
    let d = state.store.retry_delivery(&id, Timestamp::now().0).await?;
    Ok((StatusCode::ACCEPTED, Json(d)))
}
