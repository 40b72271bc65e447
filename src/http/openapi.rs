//! The OpenAPI 3.1 document, generated from the handlers' `#[utoipa::path]` annotations and the
//! schemas of the domain objects; served at `/openapi.json` and rendered at `/docs` by the ops
//! router, without auth.
//!
//! The types below that no handler uses are documentation only: they describe bodies the
//! handlers build or read as `serde_json::Value`, and must follow those handlers.

use std::sync::LazyLock;

use serde_json::json;
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, Schema, SchemaFormat, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Ref, RefOr};
use utoipa::{Modify, OpenApi, PartialSchema, ToSchema};

use super::{conversations, import, jobs, messages, ops, sync, users, webhooks};
use crate::domain::{ChangeKind, Conversation, Member, Message, SendInput, Timestamp, User};

const DESCRIPTION: &str = r#"Confab, a chat backend. This document is generated from the code and is the complete reference
of the REST interface this server offers; the wire contract (`API.md`) fixes names, shapes,
status codes and guarantees. Realtime (Socket.IO at `/socket.io/`) and webhooks are not REST
operations and are not described here.

## Authentication

Every `/v1` call carries `Authorization: Bearer <token>`: a JWT signed HS256 with the server's
secret (`CONFAB_JWT_SECRET`).

- A **user token** (claims `sub`, `exp`) acts as that user.
- A **server token** (claim `server: true`, `exp`) is the app's backend. It alone may call the
  server-only operations (upsert and deactivate users), and it may call the member operations on
  behalf of a user with the query parameter **`as`**: `?as=<user_id>`.

## Errors

Every non-2xx response has the body `{"error": {"code", "message", "field"?}}` (schema `Error`);
`field` names the offending input as a path (`users[3].id`, `limit`). A path parameter that
holds U+0000 or is not UTF-8 once percent-decoded is `400` naming it (`id`). Besides the statuses each
operation lists, any request may get `404 not_found` (unknown path), `405 method_not_allowed`
(known path, other method), `413 payload_too_large` (a body over 1 MiB, refused before parsing),
`429 rate_limited` (with `Retry-After`) and `500 internal` (a bug).

## Extensions beyond the contract

- `POST /v1/conversations/{id}/messages` accepts `user_id` in the body with a server token: the
  sender, like `?as`.
- `GET /v1/users` requires `ids` (at most 1000): there is no listing of every user.
- The request header `x-no-compression` (any value) turns response compression off; otherwise
  responses over 1 KiB are compressed as `Accept-Encoding` allows (gzip, br, zstd).
- The `as` query parameter is read on every `/v1` operation with a server token (it must be a
  valid, active user id); user tokens ignore it. `PUT /v1/conversations/{id}/tags` with a server
  token and no `as` acts as the server.
- `410 resync_required` also answers a sync token from another database.
- Every response carries `Cache-Control: no-store`.
- `GET /openapi.json` serves this document, `GET /docs` renders it (self-contained page, nothing
  loaded from elsewhere).
- `POST /v1/import`: a message record may carry `type` (`system`), `encrypted`, `attachments`,
  `custom` and `unread: true` (it then counts as unread); a conversation record `name`,
  `image_url`, `custom`, `tags` and `created_at`. The summary also counts `lines` and `bytes`,
  each batch streams a `{"progress": {...}}` line, and a database failure midway ends the
  response with `{"done": false, "error": {...}}` instead of the summary. At most
  `CONFAB_IMPORT_JOBS` imports and Messenger syncs run at once; an import over that is answered
  `429` with `Retry-After`. A body that sends nothing for `CONFAB_IMPORT_IDLE_TIMEOUT` ends the
  import (the stall is reported as a bad line).
- Messenger sync: Graph's temporary errors (codes 1 and 2, `is_transient`), HTTP 429 and 5xx and
  Graph out of reach are retried like its rate limits; a job failed by something other than Graph has
  `error.code` `-1`. Attachments and stickers become message attachments; a message without
  content is a `system` message with Graph's sender in `custom.messenger_sender_id`.
"#;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Confab",
        version = env!("CARGO_PKG_VERSION"),
        description = DESCRIPTION,
        license(name = "MIT", identifier = "MIT"),
    ),
    paths(
        users::upsert,
        users::get_many,
        users::get_one,
        users::deactivate,
        conversations::create,
        conversations::list,
        conversations::get_one,
        conversations::patch,
        conversations::set_tags,
        conversations::add_members,
        conversations::remove_member,
        messages::send,
        messages::page,
        messages::read,
        messages::edit,
        messages::remove,
        messages::unread,
        sync::sync,
        webhooks::list,
        webhooks::retry,
        import::import,
        jobs::messenger_sync,
        jobs::job,
        jobs::events,
        ops::healthz,
        ops::readyz,
        ops::metrics,
        ops::openapi_json,
        ops::docs,
    ),
    components(schemas(
        Error,
        ErrorDetail,
        ErrorCode,
        Timestamp,
        User,
        Member,
        Conversation,
        Message,
        Encrypted,
        Attachment,
        ConversationType,
        MessageType,
        MemberRole,
        ChangeKind,
        SendInput,
        UserUpsert,
        UserUpsertItem,
        UserList,
        ConversationPatch,
        ConversationList,
        MessagePage,
        ReadState,
        Unread,
        UnreadCount,
        SyncPage,
        Event,
        Health,
        Ready,
        JobStarted,
        JobStatus,
        JobError,
        Job,
        JobProgress,
    )),
    modifiers(&BearerAuth, &OptionalBodies),
    tags(
        (name = "users", description = "Users: upserted by the app's backend, read by anyone"),
        (name = "conversations", description = "Conversations, their members and tags"),
        (name = "messages", description = "Sending, paging, editing and deleting messages; read state"),
        (name = "sync", description = "Gap-free catch-up from the change log"),
        (name = "import", description = "Bulk NDJSON import, the Messenger source and its jobs"),
        (name = "webhooks", description = "The webhook outbox (Standard Webhooks): deliveries, retries"),
        (name = "ops", description = "Health, readiness, metrics and this document; no auth"),
    )
)]
pub struct ApiDoc;

/// The document, built once.
pub static DOCUMENT: LazyLock<utoipa::openapi::OpenApi> = LazyLock::new(ApiDoc::openapi);

/// The `/docs` page: utoipa-scalar's page template replaced with a self-contained one (the
/// default template loads its script from a CDN). `$spec` is where the document goes.
pub const DOCS_HTML: &str = include_str!("docs.html");

/// Registers the `bearer_jwt` security scheme the `/v1` operations name.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer_jwt",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "A JWT signed HS256 with the server's secret. User token: claims `sub` \
                         (the user id) and `exp`. Server token: claim `server: true` and `exp`; \
                         it acts on behalf of a user with `?as=<user_id>` on member endpoints.",
                    ))
                    .build(),
            ),
        );
    }
}

/// utoipa renders an optional body (`Option<T>`) as `T | null`, but these bodies may be absent,
/// not JSON `null`: keep `T` and leave the body not required.
struct OptionalBodies;

impl Modify for OptionalBodies {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let optional = [("/v1/conversations/{id}/read", "MarkRead")];
        for (path, schema) in optional {
            let body = openapi
                .paths
                .paths
                .get_mut(path)
                .and_then(|item| item.post.as_mut())
                .and_then(|op| op.request_body.as_mut());
            if let Some(content) = body.and_then(|b| b.content.get_mut("application/json")) {
                content.schema = Some(RefOr::Ref(Ref::from_schema_name(schema)));
            }
        }
    }
}

impl PartialSchema for Timestamp {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
            .description(Some("RFC 3339, UTC, millisecond precision"))
            .examples([json!("2026-11-22T15:04:05.123Z")])
            .into()
    }
}

impl ToSchema for Timestamp {}

// ---------------------------------------------------------------- errors

/// The body of every non-2xx response.
#[derive(ToSchema)]
pub struct Error {
    pub error: ErrorDetail,
}

#[derive(ToSchema)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    /// For people, not for programs.
    #[schema(example = "type must be direct or group")]
    pub message: String,
    /// Only on `validation_failed`: the offending input as a path (`member_ids`, `users[3].id`,
    /// `limit`); absent for malformed JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = String, example = "type")]
    pub field: Option<String>,
}

/// The error codes, one per status (see `ApiError`).
#[derive(ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 400: body or query fails validation, or malformed JSON.
    ValidationFailed,
    /// 401: no or invalid token.
    Unauthorized,
    /// 403: authenticated but not allowed.
    Forbidden,
    /// 404: unknown route or resource, or one the caller may not see.
    NotFound,
    /// 405: known path, wrong method.
    MethodNotAllowed,
    /// 409: a uniqueness rule broken in a way that is not an idempotent replay.
    Conflict,
    /// 410: a sync token the server can no longer serve.
    ResyncRequired,
    /// 413: body over the limit (1 MiB).
    PayloadTooLarge,
    /// 429: over a rate limit; `Retry-After` is set.
    RateLimited,
    /// 503: the database is down or slow; the request had no effect.
    Unavailable,
    /// 500: a bug.
    Internal,
}

// ---------------------------------------------------------------- objects

/// `direct`: exactly two members, at most one per pair. `group`: any number.
#[derive(ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConversationType {
    Direct,
    Group,
}

/// `regular`, or `system` (membership changes and renames, written by the server).
#[derive(ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MessageType {
    Regular,
    System,
}

/// The creator is `owner`, everyone else `member`.
#[derive(ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MemberRole {
    Owner,
    Member,
}

/// End-to-end encrypted content, opaque to the server, stored and returned byte-for-byte.
#[derive(ToSchema)]
pub struct Encrypted {
    /// Base64.
    pub ciphertext: String,
    /// Base64.
    pub nonce: String,
    /// Base64.
    #[schema(required = false)]
    pub ephemeral_public_key: Option<String>,
    #[schema(required = false)]
    pub algorithm: Option<String>,
}

/// An attachment, stored and returned as sent (`key` required; other fields are kept too).
#[derive(ToSchema)]
pub struct Attachment {
    #[schema(example = "uploads/0193/photo.png")]
    pub key: String,
    #[schema(required = false)]
    pub file_name: Option<String>,
    #[schema(required = false)]
    pub size: Option<i64>,
    #[schema(required = false, example = "image/png")]
    pub mime_type: Option<String>,
    #[schema(required = false)]
    pub thumbnail_key: Option<String>,
    #[schema(required = false)]
    pub url: Option<String>,
}

// ---------------------------------------------------------------- request bodies

/// The body of `PUT /v1/users`.
#[derive(ToSchema)]
pub struct UserUpsert {
    /// 1-1000 users, each id once.
    #[schema(min_items = 1, max_items = 1000)]
    pub users: Vec<UserUpsertItem>,
}

/// A user as the app sends it: absent fields keep their stored value.
#[derive(ToSchema)]
pub struct UserUpsertItem {
    /// 1-128 characters of `[A-Za-z0-9_.@:-]`.
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = "^[A-Za-z0-9_.@:-]{1,128}$",
        example = "u_42"
    )]
    pub id: String,
    /// Not empty, at most 256 characters; a new user without one is named by its id.
    #[schema(required = false, min_length = 1, max_length = 256)]
    pub name: String,
    /// At most 2048 characters; `null` clears it.
    #[schema(required = false, max_length = 2048)]
    pub image_url: Option<String>,
    /// A free label, at most 64 characters (`user` when new and absent or null).
    #[schema(required = false, min_length = 1, max_length = 64, example = "company")]
    pub kind: Option<String>,
    /// A JSON object, at most 8 KiB serialized.
    #[schema(required = false, value_type = Option<Object>)]
    pub custom: Option<serde_json::Value>,
}

/// The body of `PATCH /v1/conversations/{id}`; other fields are refused.
#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConversationPatch {
    /// At most 256 characters; `null` clears it.
    #[schema(required = false, max_length = 256)]
    pub name: Option<String>,
    /// At most 2048 characters; `null` clears it.
    #[schema(required = false, max_length = 2048)]
    pub image_url: Option<String>,
    /// Replaces `custom`: a JSON object, at most 8 KiB serialized.
    #[schema(required = false, value_type = Object)]
    pub custom: serde_json::Value,
}

// ---------------------------------------------------------------- response bodies

#[derive(ToSchema)]
pub struct UserList {
    pub users: Vec<User>,
}

#[derive(ToSchema)]
pub struct ConversationList {
    pub conversations: Vec<Conversation>,
    /// Pass as `cursor` for the next page; null at the end.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
    /// Only with `include_total=true`: the exact number matching the filters.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = i64)]
    pub total: Option<i64>,
}

#[derive(ToSchema)]
pub struct MessagePage {
    /// Oldest first.
    pub messages: Vec<Message>,
    /// Whether more exist beyond the page in the direction asked.
    pub has_more: bool,
}

#[derive(ToSchema)]
pub struct ReadState {
    pub conversation_id: String,
    pub last_read_seq: i64,
}

#[derive(ToSchema)]
pub struct Unread {
    /// The sum of the counts.
    pub total: i64,
    /// Only conversations with unread messages.
    pub conversations: Vec<UnreadCount>,
}

#[derive(ToSchema)]
pub struct UnreadCount {
    pub conversation_id: String,
    pub unread_count: i64,
}

/// Without `since` only `next_token`; with it all three fields.
#[derive(ToSchema)]
pub struct SyncPage {
    /// The changes, in order; at most `limit`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Vec<Event>)]
    pub events: Option<Vec<Event>>,
    /// Where to continue from.
    pub next_token: String,
    /// More events wait: sync again from `next_token`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = bool)]
    pub has_more: Option<bool>,
}

/// One change, with the same `type` and `data` as the realtime event, as it was when it happened.
#[derive(ToSchema)]
pub struct Event {
    #[serde(rename = "type")]
    pub kind: ChangeKind,
    pub conversation_id: String,
    /// The realtime payload: Message for `message.*`, Conversation for `conversation.*`,
    /// `{conversation_id, user_id}` for `member.*`, `{conversation_id, user_id, seq}` for `read`.
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
    /// Syncing from it resumes right after this event.
    pub token: String,
}

/// The answer to `POST /v1/sources/messenger/sync`.
#[derive(ToSchema)]
pub struct JobStarted {
    /// Follow it at `GET /v1/jobs/{id}` and `GET /v1/jobs/{id}/events`.
    #[schema(example = "0193e7a2-5c1d-7b3e-9f00-6a1b2c3d4e5f")]
    pub job_id: String,
}

#[derive(ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Working, or waiting for a slot (`CONFAB_IMPORT_JOBS`).
    Running,
    Completed,
    Failed,
}

/// Why a job failed.
#[derive(ToSchema)]
pub struct JobError {
    /// Graph's numeric error code (190: an invalid token); `-1` when the failure was not
    /// Graph's (Graph unreachable after the retries, an answer not in Graph's format, the
    /// database).
    #[schema(example = 190)]
    pub code: i64,
    /// Graph's message, or what failed.
    pub message: String,
}

/// `GET /v1/jobs/{id}`: its progress and what it is.
#[derive(ToSchema)]
pub struct Job {
    pub id: String,
    #[schema(example = "messenger")]
    pub kind: String,
    #[serde(flatten)]
    pub progress: JobProgress,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// The `data` of each `GET /v1/jobs/{id}/events` event, and part of the job. Counts are of
/// this run.
#[derive(ToSchema)]
pub struct JobProgress {
    pub status: JobStatus,
    /// Conversations read from Graph.
    pub fetched: i64,
    /// Conversations written (new or changed).
    pub upserted: i64,
    /// Messages read.
    pub messages: i64,
    /// Only when failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = JobError)]
    pub error: Option<JobError>,
}

#[derive(ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    pub status: String,
}

/// `status` `ready` / `database` `ok`, or `unavailable` / `down` with an error.
#[derive(ToSchema)]
pub struct Ready {
    /// `ready`, `degraded` (Redis down: this node serves, cross-node delivery pauses) or
    /// `unavailable` (the database does not answer).
    #[schema(example = "ready")]
    pub status: String,
    #[schema(example = "ok")]
    pub database: String,
    /// `ok`, `down` or `not_configured`.
    #[schema(example = "ok")]
    pub redis: String,
    /// Only when unavailable.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = ErrorDetail)]
    pub error: Option<ErrorDetail>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::error::ApiError;
    use serde_json::Value;

    /// Every route the router registers (`http::router` and the ones it merges).
    const ROUTES: &[(&str, &str)] = &[
        ("put", "/v1/users"),
        ("get", "/v1/users"),
        ("get", "/v1/users/{id}"),
        ("delete", "/v1/users/{id}"),
        ("post", "/v1/conversations"),
        ("get", "/v1/conversations"),
        ("get", "/v1/conversations/{id}"),
        ("patch", "/v1/conversations/{id}"),
        ("put", "/v1/conversations/{id}/tags"),
        ("post", "/v1/conversations/{id}/members"),
        ("delete", "/v1/conversations/{id}/members/{user_id}"),
        ("post", "/v1/conversations/{id}/messages"),
        ("get", "/v1/conversations/{id}/messages"),
        ("post", "/v1/conversations/{id}/read"),
        ("patch", "/v1/messages/{id}"),
        ("delete", "/v1/messages/{id}"),
        ("get", "/v1/unread"),
        ("get", "/v1/sync"),
        ("get", "/v1/webhooks/deliveries"),
        ("post", "/v1/import"),
        ("post", "/v1/sources/messenger/sync"),
        ("get", "/v1/jobs/{id}"),
        ("get", "/v1/jobs/{id}/events"),
        ("post", "/v1/webhooks/deliveries/{id}/retry"),
        ("get", "/healthz"),
        ("get", "/readyz"),
        ("get", "/metrics"),
        ("get", "/openapi.json"),
        ("get", "/docs"),
    ];

    const METHODS: &[&str] = &[
        "get", "put", "post", "delete", "patch", "head", "options", "trace",
    ];

    fn document() -> Value {
        serde_json::to_value(ApiDoc::openapi()).unwrap()
    }

    #[test]
    fn is_openapi_3_1_with_info() {
        let doc = document();
        assert!(
            doc["openapi"].as_str().unwrap().starts_with("3.1."),
            "{}",
            doc["openapi"]
        );
        assert_eq!(doc["info"]["title"], "Confab");
        assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer_jwt"]["scheme"],
            "bearer"
        );
    }

    #[test]
    fn every_route_is_documented_and_nothing_else() {
        let doc = document();
        let paths = doc["paths"].as_object().unwrap();
        for (method, path) in ROUTES {
            assert!(
                paths.get(*path).and_then(|p| p.get(*method)).is_some(),
                "{method} {path} is not documented"
            );
        }
        for (path, item) in paths {
            for method in METHODS {
                if item.get(*method).is_some() {
                    assert!(
                        ROUTES.contains(&(*method, path.as_str())),
                        "{method} {path} is documented but not in the route list"
                    );
                }
            }
        }
    }

    #[test]
    fn v1_operations_document_errors_and_auth() {
        let doc = document();
        let mut operation_ids = std::collections::HashSet::new();
        for (method, path) in ROUTES {
            let op = &doc["paths"][*path][*method];
            let id = op["operationId"].as_str().unwrap();
            assert!(
                operation_ids.insert(id.to_owned()),
                "operationId {id} twice"
            );
            assert!(
                op["tags"].as_array().is_some_and(|t| !t.is_empty()),
                "{method} {path}: no tag"
            );
            if !path.starts_with("/v1/") {
                assert!(
                    op.get("security").is_none(),
                    "{method} {path} needs no auth"
                );
                continue;
            }
            let responses = op["responses"].as_object().unwrap();
            let errors: Vec<&String> = responses
                .iter()
                .filter(|(status, _)| status.starts_with('4') || status.starts_with('5'))
                .filter(|(_, r)| {
                    r["content"]["application/json"]["schema"]["$ref"]
                        == "#/components/schemas/Error"
                })
                .map(|(status, _)| status)
                .collect();
            assert!(
                errors.iter().any(|s| s.starts_with('4')),
                "{method} {path}: no 4xx response with the Error schema"
            );
            for needed in ["401", "429", "503"] {
                assert!(
                    errors.iter().any(|s| *s == needed),
                    "{method} {path}: no {needed}"
                );
            }
            // Every documented error answer uses the shared schema.
            for (status, r) in responses {
                if status.starts_with('4') || status.starts_with('5') {
                    assert_eq!(
                        r["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/Error",
                        "{method} {path} {status}"
                    );
                }
            }
            assert_eq!(
                op["security"],
                json!([{"bearer_jwt": []}]),
                "{method} {path}"
            );
        }
    }

    #[test]
    fn optional_read_body_is_not_null() {
        let doc = document();
        let body = &doc["paths"]["/v1/conversations/{id}/read"]["post"]["requestBody"];
        assert_eq!(
            body["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/MarkRead"
        );
        assert_ne!(body["required"], json!(true));
    }

    #[test]
    fn error_codes_match_api_error() {
        let doc = document();
        let listed: Vec<&str> = doc["components"]["schemas"]["ErrorCode"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let all = [
            ApiError::invalid("f", "m"),
            ApiError::Unauthorized,
            ApiError::Forbidden(String::new()),
            ApiError::NotFound,
            ApiError::MethodNotAllowed,
            ApiError::Conflict(String::new()),
            ApiError::ResyncRequired,
            ApiError::PayloadTooLarge,
            ApiError::RateLimited { retry_after: 1 },
            ApiError::Unavailable,
            ApiError::Internal,
        ];
        assert_eq!(listed.len(), all.len());
        for e in &all {
            assert!(
                listed.contains(&e.code()),
                "{} is not in ErrorCode",
                e.code()
            );
        }
    }

    #[test]
    fn every_reference_resolves() {
        fn walk<'a>(v: &'a Value, refs: &mut Vec<&'a str>) {
            match v {
                Value::Object(m) => {
                    if let Some(Value::String(r)) = m.get("$ref") {
                        refs.push(r);
                    }
                    m.values().for_each(|x| walk(x, refs));
                }
                Value::Array(a) => a.iter().for_each(|x| walk(x, refs)),
                _ => {}
            }
        }
        let doc = document();
        let mut refs = Vec::new();
        walk(&doc, &mut refs);
        assert!(!refs.is_empty());
        for r in refs {
            let name = r.strip_prefix("#/components/schemas/").expect(r);
            assert!(
                doc["components"]["schemas"].get(name).is_some(),
                "{r} does not resolve"
            );
        }
    }

    #[test]
    fn docs_page_embeds_the_document_and_loads_nothing() {
        assert_eq!(DOCS_HTML.matches("$spec").count(), 1);
        let html = utoipa_scalar::Scalar::new(ApiDoc::openapi())
            .custom_html(DOCS_HTML)
            .to_html();
        assert!(html.contains("\"openapi\":\"3.1.0\""));
        assert!(
            !html.contains("http://") && !html.contains("https://"),
            "the page must load nothing"
        );
        assert_eq!(
            html.matches("</script").count(),
            DOCS_HTML.matches("</script").count()
        );
    }
}
