//! Extractors whose rejections speak the contract: a JSON body whose errors name the field, query
//! parameters read one by one with their names, and the authenticated caller.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::error::{ApiError, ApiResult};
use super::{AppState, UserCheck};
use crate::auth::Principal;
use crate::domain::{Timestamp, check_user_id};
use crate::storage::{Actor, UserState};

/// A JSON body. Malformed JSON is 400 without `field`; a wrong shape names the path.
pub struct Json<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge
            } else {
                ApiError::Validation {
                    field: None,
                    message: "could not read the body".into(),
                }
            }
        })?;
        parse_json(&bytes).map(Json)
    }
}

impl<T: serde::Serialize> axum::response::IntoResponse for Json<T> {
    fn into_response(self) -> axum::response::Response {
        axum::Json(self.0).into_response()
    }
}

/// The deepest nesting a request body may have (serde_json itself stops at 128).
pub const MAX_JSON_DEPTH: usize = 32;

/// How deep a value nests: 1 for a scalar, one more per array or object around it.
fn depth(v: &serde_json::Value) -> usize {
    match v {
        serde_json::Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        serde_json::Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
        _ => 1,
    }
}

/// Parses JSON, naming the offending path on a shape error; refuses nesting deeper than
/// `MAX_JSON_DEPTH`.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> ApiResult<T> {
    // Syntax first, so malformed JSON is told apart from a wrong shape.
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| ApiError::Validation {
            field: None,
            message: format!("malformed JSON: {e}"),
        })?;
    if depth(&value) > MAX_JSON_DEPTH {
        return Err(ApiError::Validation {
            field: None,
            message: format!("JSON nested deeper than {MAX_JSON_DEPTH} levels"),
        });
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        let field = if path == "." {
            // serde names an unknown or missing field in its message: `unknown field `x``.
            inner.split('`').nth(1).map(str::to_owned)
        } else {
            Some(path)
        };
        ApiError::Validation {
            field,
            message: inner,
        }
    })
}

/// Path parameters (ids). A parameter that is not UTF-8 or holds U+0000 (which no id has, and
/// PostgreSQL refuses) is 400 naming it, in the contract's error body.
pub struct Path<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let raw = axum::extract::Path::<Vec<(String, String)>>::from_request_parts(parts, state)
            .await
            .map_err(path_rejection)?;
        check_path_params(&raw.0)?;
        let axum::extract::Path(value) = axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map_err(path_rejection)?;
        Ok(Path(value))
    }
}

/// Refuses path parameters holding U+0000, naming the first.
pub fn check_path_params(params: &[(String, String)]) -> ApiResult<()> {
    match params.iter().find(|(_, v)| v.contains('\0')) {
        Some((k, _)) => Err(ApiError::invalid(k.as_str(), "must not contain U+0000")),
        None => Ok(()),
    }
}

fn path_rejection(e: axum::extract::rejection::PathRejection) -> ApiError {
    use axum::extract::path::ErrorKind;
    use axum::extract::rejection::PathRejection;
    match e {
        PathRejection::FailedToDeserializePathParams(d) => match d.into_kind() {
            ErrorKind::InvalidUtf8InPathParam { key } => {
                ApiError::invalid(key, "must be valid UTF-8 once percent-decoded")
            }
            kind => ApiError::Validation {
                field: None,
                message: kind.to_string(),
            },
        },
        other => {
            tracing::error!(error = %other, "path parameters on a route without them");
            ApiError::Internal
        }
    }
}

/// The query string as named parameters, each read and checked where it is used.
pub struct Params(pub HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Params::from_query(parts.uri.query().unwrap_or(""))
    }
}

impl Params {
    /// Reads a raw query string (without `?`); a later repeat of a name wins.
    pub fn from_query(q: &str) -> ApiResult<Params> {
        let pairs = serde_urlencoded::from_str::<Vec<(String, String)>>(q).map_err(|_| {
            ApiError::Validation {
                field: None,
                message: "malformed query string".into(),
            }
        })?;
        // In the query's order, so the refusal names the same parameter every time.
        if let Some((k, _)) = pairs.iter().find(|(_, v)| v.contains('\0')) {
            return Err(ApiError::invalid(k.as_str(), "must not contain U+0000"));
        }
        Ok(Params(pairs.into_iter().collect()))
    }

    pub fn str(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// An integer in `range`, `default` when absent; anything else is 400 naming it.
    pub fn int(
        &self,
        name: &str,
        range: std::ops::RangeInclusive<i64>,
        default: i64,
    ) -> ApiResult<i64> {
        match self.str(name) {
            None => Ok(default),
            Some(v) => v
                .parse::<i64>()
                .ok()
                .filter(|n| range.contains(n))
                .ok_or_else(|| {
                    ApiError::invalid(
                        name,
                        format!(
                            "must be an integer from {} to {}",
                            range.start(),
                            range.end()
                        ),
                    )
                }),
        }
    }

    pub fn opt_int(
        &self,
        name: &str,
        range: std::ops::RangeInclusive<i64>,
    ) -> ApiResult<Option<i64>> {
        match self.str(name) {
            None => Ok(None),
            Some(_) => self.int(name, range, 0).map(Some),
        }
    }

    pub fn bool(&self, name: &str) -> ApiResult<bool> {
        match self.str(name) {
            None | Some("false") | Some("0") => Ok(false),
            Some("true") | Some("1") | Some("") => Ok(true),
            Some(_) => Err(ApiError::invalid(name, "must be true or false")),
        }
    }

    pub fn time(&self, name: &str) -> ApiResult<Option<Timestamp>> {
        match self.str(name) {
            None => Ok(None),
            Some(v) => Timestamp::parse(v)
                .map(Some)
                .ok_or_else(|| ApiError::invalid(name, "must be an RFC 3339 timestamp")),
        }
    }

    /// A comma-separated list; empty items dropped.
    pub fn list(&self, name: &str) -> Vec<String> {
        self.str(name)
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The token of an `Authorization: Bearer <token>` header, trimmed; `None` for anything else.
pub fn bearer_token(header: Option<&axum::http::HeaderValue>) -> Option<&str> {
    header
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// The authenticated caller: a user, or the server (optionally acting as a user with `?as=`).
#[derive(Debug, Clone)]
pub struct Caller {
    pub principal: Principal,
    /// The user the request acts as: the token's user, or `?as=` of a server token.
    pub acting: Option<String>,
}

impl Caller {
    /// The acting user; a server token without `?as=` is refused naming `as`.
    pub fn user(&self) -> ApiResult<&str> {
        self.acting
            .as_deref()
            .ok_or_else(|| ApiError::invalid("as", "a server token must name the user with ?as="))
    }

    /// Who performs a change.
    pub fn actor(&self) -> Actor {
        match &self.acting {
            Some(u) => Actor::User(u.clone()),
            None => Actor::Server,
        }
    }

    pub fn is_server(&self) -> bool {
        self.principal == Principal::Server
    }

    pub fn require_server(&self) -> ApiResult<()> {
        if self.is_server() {
            Ok(())
        } else {
            Err(ApiError::Forbidden(
                "this endpoint needs a server token".into(),
            ))
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        DeferredCaller::from_request_parts(parts, state)
            .await?
            .settle(state)
            .await
    }
}

/// The caller, where an unknown acting user's creation is queued but not yet committed: the
/// handler's own write may make the user itself (a create makes its members, the caller among
/// them, in its own transaction), so it need not wait for that commit first; it waits with
/// `DeferredCaller::settle` before it answers, saving a commit on a new user's first request.
/// A handler that reads the user's row, or must refuse a deactivated user before it writes,
/// uses `Caller`.
pub struct DeferredCaller(pub Caller, pub Option<crate::write_path::QueuedWrite>);

impl DeferredCaller {
    /// Waits for the acting user's creation, if one was queued: refused as `Caller` refuses if
    /// the user turned out deactivated meanwhile.
    pub async fn settle(self, state: &AppState) -> ApiResult<Caller> {
        let DeferredCaller(caller, creating) = self;
        if let (Some(write), Some(user)) = (creating, caller.acting.as_deref())
            && state.user_created(user, write).await? == UserState::Deactivated
        {
            return Err(deactivated(caller.is_server()));
        }
        Ok(caller)
    }
}

/// The refusal of a deactivated acting user: its own token no longer counts (401); the server
/// may not act as it (403).
pub(crate) fn deactivated(server: bool) -> ApiError {
    if server {
        ApiError::Forbidden("that user is deactivated".into())
    } else {
        ApiError::Unauthorized
    }
}

impl FromRequestParts<AppState> for DeferredCaller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer_token(parts.headers.get(axum::http::header::AUTHORIZATION))
            .ok_or(ApiError::Unauthorized)?;
        let principal = state.keys.verify(token).ok_or(ApiError::Unauthorized)?;
        let (acting, creating) = match &principal {
            Principal::User(sub) => {
                if check_user_id("sub", sub).is_err() {
                    return Err(ApiError::Unauthorized);
                }
                match state.check_user(sub).await? {
                    UserCheck::Known(UserState::Deactivated) => return Err(deactivated(false)),
                    UserCheck::Known(_) => (Some(sub.clone()), None),
                    UserCheck::Creating(write) => (Some(sub.clone()), Some(write)),
                }
            }
            Principal::Server => {
                let params = Params::from_request_parts(parts, state).await?;
                match params.str("as") {
                    None => (None, None),
                    Some(u) => {
                        check_user_id("as", u)?;
                        match state.check_user(u).await? {
                            UserCheck::Known(UserState::Deactivated) => {
                                return Err(deactivated(true));
                            }
                            UserCheck::Known(_) => (Some(u.to_owned()), None),
                            UserCheck::Creating(write) => (Some(u.to_owned()), Some(write)),
                        }
                    }
                }
            }
        };
        // The app's backend (server token) is trusted with its own budget: only users are
        // limited per user.
        let deferred = DeferredCaller(Caller { principal, acting }, creating);
        if let (Some(limit), Principal::User(u)) = (&state.user_limiter, &deferred.0.principal)
            && let Err(e) = limit.check(u).await
        {
            // Refused, but a first request still leaves the user created; a deactivated user is
            // refused as such, before the rate.
            if let Err(denied @ (ApiError::Unauthorized | ApiError::Forbidden(_))) =
                deferred.settle(state).await
            {
                return Err(denied);
            }
            return Err(e);
        }
        Ok(deferred)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `message_paging` fuzz target: with U+0000 in several parameters, the
    /// refusal named whichever the hash map listed first, a different one from run to run.
    #[test]
    fn nul_refusal_names_the_first_parameter_in_the_query() {
        for _ in 0..20 {
            let Err(ApiError::Validation { field, .. }) =
                Params::from_query("limit=20%00&before_seq=1%00&after_seq=1%00")
            else {
                panic!("accepted");
            };
            assert_eq!(field.as_deref(), Some("limit"));
        }
        crate::fuzzing::message_paging(b"20\x84\x01\0\x01\0\0\xff1\0\xff1\xff2");
    }

    #[test]
    fn bearer_header() {
        let h = |s: &str| axum::http::HeaderValue::from_str(s).unwrap();
        assert_eq!(bearer_token(Some(&h("Bearer  abc "))), Some("abc"));
        assert_eq!(bearer_token(Some(&h("Basic abc"))), None);
        assert_eq!(bearer_token(None), None);
    }
}
