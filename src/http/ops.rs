//! Ops endpoints, outside `/v1` and without auth: liveness, readiness, metrics, and the OpenAPI
//! document (`/openapi.json`) with its rendering (`/docs`).

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::json;
use utoipa_scalar::{Scalar, Servable};

use super::AppState;
use super::extract::Json;
use super::openapi::{DOCS_HTML, DOCUMENT, Error};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi_json))
        .merge(Scalar::with_url("/docs", DOCUMENT.clone()).custom_html(DOCS_HTML))
}

/// `GET /healthz`: the process answers.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "ops",
    operation_id = "healthz",
    summary = "Liveness: the process answers",
    responses(
        (status = 200, description = "Alive", body = super::openapi::Health),
        (status = 429, description = "`rate_limited` (per client IP)", body = Error, headers(("Retry-After" = u64, description = "Seconds to wait"))),
    )
)]
async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

/// `GET /readyz`: the database answers within `CONFAB_DB_TIMEOUT`.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "ops",
    operation_id = "readyz",
    summary = "Readiness: the database answers within `CONFAB_DB_TIMEOUT`",
    responses(
        (status = 200, description = "Ready", body = super::openapi::Ready,
            example = json!({"status": "ready", "database": "ok", "redis": "ok"})),
        (status = 503, description = "The database does not answer", body = super::openapi::Ready,
            example = json!({"status": "unavailable", "database": "down",
                "error": {"code": "unavailable", "message": "the database does not answer"}})),
        (status = 429, description = "`rate_limited` (per client IP)", body = Error, headers(("Retry-After" = u64, description = "Seconds to wait"))),
    )
)]
async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let ping = tokio::time::timeout(state.config.db_timeout, state.store.ping()).await;
    // Redis is a fast path: without it the node still serves (degraded), so it stays ready.
    let redis = match state.redis_up() {
        None => "not_configured",
        Some(true) => "ok",
        Some(false) => "down",
    };
    match ping {
        Ok(Ok(())) => {
            let status = if redis == "down" { "degraded" } else { "ready" };
            (
                StatusCode::OK,
                Json(json!({"status": status, "database": "ok", "redis": redis})),
            )
        }
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "status": "unavailable", "database": "down", "redis": redis,
                "error": {"code": "unavailable", "message": "the database does not answer"}
            })),
        ),
    }
}

/// `GET /metrics`: Prometheus text format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "ops",
    operation_id = "metrics",
    summary = "Prometheus metrics",
    description = "Request counts and durations by route, method and status; database pool gauges.",
    responses(
        (status = 200, description = "Prometheus text exposition format", body = String,
            content_type = "text/plain; version=0.0.4"),
        (status = 429, description = "`rate_limited` (per client IP)", body = Error, headers(("Retry-After" = u64, description = "Seconds to wait"))),
    )
)]
async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let (size, idle) = state.store.pool_stats();
    metrics::gauge!("confab_db_pool_connections").set(size as f64);
    metrics::gauge!("confab_db_pool_idle_connections").set(idle as f64);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

/// `GET /openapi.json`: the OpenAPI 3.1 document of this API.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "ops",
    operation_id = "openapi",
    summary = "This OpenAPI 3.1 document",
    responses(
        (status = 200, description = "The document", body = Object, content_type = "application/json"),
        (status = 429, description = "`rate_limited` (per client IP)", body = Error, headers(("Retry-After" = u64, description = "Seconds to wait"))),
    )
)]
async fn openapi_json() -> impl IntoResponse {
    axum::Json(&*DOCUMENT)
}

/// `GET /docs`: served by utoipa-scalar's router (see `router`); this item only documents it.
#[utoipa::path(
    get,
    path = "/docs",
    tag = "ops",
    operation_id = "docs",
    summary = "This document rendered as a page",
    description = "A self-contained HTML page: the document is embedded and nothing is loaded from \
        elsewhere.",
    responses(
        (status = 200, description = "The page", body = String, content_type = "text/html"),
        (status = 429, description = "`rate_limited` (per client IP)", body = Error, headers(("Retry-After" = u64, description = "Seconds to wait"))),
    )
)]
#[allow(dead_code)]
fn docs() {}
