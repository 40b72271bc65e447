//! The one error type of the HTTP edge. Each variant is a row of the contract's error table and
//! renders `{"error": {"code", "message", "field"?}}` with its status.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::domain::Invalid;
use crate::storage::StoreError;

#[derive(Debug)]
pub enum ApiError {
    /// 400 `validation_failed`; `field` is a path (`users[3].id`), absent for malformed JSON.
    Validation {
        field: Option<String>,
        message: String,
    },
    /// 401 `unauthorized`.
    Unauthorized,
    /// 403 `forbidden`.
    Forbidden(String),
    /// 404 `not_found`: unknown, or not visible to the caller (the same answer).
    NotFound,
    /// 405 `method_not_allowed`.
    MethodNotAllowed,
    /// 409 `conflict`.
    Conflict(String),
    /// 410 `resync_required`: a sync token this server can no longer serve.
    ResyncRequired,
    /// 413 `payload_too_large`.
    PayloadTooLarge,
    /// 429 `rate_limited`, with `Retry-After` seconds.
    RateLimited { retry_after: u64 },
    /// 503 `unavailable`: the database is down or slow; the request had no effect.
    Unavailable,
    /// 500 `internal`: a bug; logged where it happened.
    Internal,
}

impl ApiError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::Validation {
            field: Some(field.into()),
            message: message.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Validation { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::ResyncRequired => StatusCode::GONE,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Validation { .. } => "validation_failed",
            ApiError::Unauthorized => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::Conflict(_) => "conflict",
            ApiError::ResyncRequired => "resync_required",
            ApiError::PayloadTooLarge => "payload_too_large",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::Unavailable => "unavailable",
            ApiError::Internal => "internal",
        }
    }

    pub fn message(&self) -> String {
        match self {
            ApiError::Validation { message, .. } => message.clone(),
            ApiError::Unauthorized => "missing or invalid token".into(),
            ApiError::Forbidden(m) | ApiError::Conflict(m) => m.clone(),
            ApiError::NotFound => "not found".into(),
            ApiError::MethodNotAllowed => "method not allowed".into(),
            ApiError::ResyncRequired => {
                "this token can no longer be served; reload from the listing endpoints".into()
            }
            ApiError::PayloadTooLarge => "body is larger than the limit (1 MiB)".into(),
            ApiError::RateLimited { .. } => "too many requests".into(),
            ApiError::Unavailable => "the database is unavailable; nothing was changed".into(),
            ApiError::Internal => "internal error".into(),
        }
    }

    /// The contract's error object, also used in socket acknowledgements.
    pub fn body(&self) -> serde_json::Value {
        let mut error = json!({"code": self.code(), "message": self.message()});
        if let ApiError::Validation {
            field: Some(field), ..
        } = self
        {
            error["field"] = json!(field);
        }
        json!({ "error": error })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = (self.status(), axum::Json(self.body())).into_response();
        if let ApiError::RateLimited { retry_after } = self {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after.max(1)));
        }
        res
    }
}

impl From<Invalid> for ApiError {
    fn from(i: Invalid) -> Self {
        ApiError::Validation {
            field: i.field,
            message: i.message,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => ApiError::NotFound,
            StoreError::Forbidden(m) => ApiError::Forbidden(m.into()),
            StoreError::Invalid { field, message } => ApiError::invalid(field, message),
            StoreError::Conflict(c) => ApiError::Conflict(format!("conflict on {c}")),
            StoreError::Unavailable(m) => {
                tracing::warn!(error = %m, "database unavailable");
                ApiError::Unavailable
            }
            StoreError::Other(e) => {
                tracing::error!(error = ?e, "store error");
                ApiError::Internal
            }
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
