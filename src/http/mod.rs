//! The HTTP edge: one router per resource merged into one, the shared state, and the layers
//! every request passes (tracing, metrics, body limit, rate limit, compression).

pub(crate) mod conversations;
pub mod error;
pub(crate) mod extract;
mod import;
mod jobs;
pub mod limit;
pub mod messages;
pub mod openapi;
mod ops;
pub mod sync;
mod users;
mod webhooks;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Instant;

use axum::Router;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::PrometheusHandle;
use tower_http::compression::CompressionLayer;
use tower_http::compression::predicate::{NotForContentType, Predicate, SizeAbove};
use tower_http::trace::TraceLayer;

use crate::auth::Keys;
use crate::config::Config;
use crate::domain::Change;
use crate::realtime::Hub;
use crate::realtime::presence::Presence;
use crate::storage::DynStore;
use crate::write_path::{ChangeBus, WritePath};
use error::ApiError;
pub use extract::parse_json;
use limit::RateLimiter;

/// Bodies larger than this are refused with 413 before they are parsed.
pub const BODY_LIMIT: usize = 1024 * 1024;

/// Everything a handler may use: one reference count to clone per request (axum clones the
/// state for every request; cloning each shared field was 3.6% of the server's CPU under load).
#[derive(Clone)]
pub struct AppState(Arc<AppShared>);

impl std::ops::Deref for AppState {
    type Target = AppShared;
    fn deref(&self) -> &AppShared {
        &self.0
    }
}

/// What `AppState` shares.
pub struct AppShared {
    pub store: DynStore,
    /// Sends and read marks go through here to be committed in batches.
    pub writes: WritePath,
    /// Committed changes, for realtime and webhooks.
    pub bus: ChangeBus,
    pub keys: Arc<Keys>,
    pub config: Arc<Config>,
    pub metrics: PrometheusHandle,
    /// Identifies the database in sync tokens, so a token from another database is refused.
    pub database_id: Arc<str>,
    pub user_limiter: Option<Arc<RateLimiter>>,
    pub ip_limiter: Option<Arc<RateLimiter>>,
    /// Who is online, on this node and (with Redis) on the others.
    pub presence: Arc<Presence>,
    /// The realtime hub, once started (weak: the hub holds this state).
    pub realtime: Arc<OnceLock<Weak<Hub>>>,
    /// Imports and source jobs running at once (`CONFAB_IMPORT_JOBS`).
    pub import_slots: Arc<tokio::sync::Semaphore>,
    /// Users recently seen active, so a request's auth needs no query (see `user_state`).
    active_users: std::sync::Mutex<std::collections::HashMap<String, Instant>>,
    /// Set while the database does not answer a ping: requests are answered 503 at once
    /// instead of each waiting `CONFAB_DB_TIMEOUT` (see `database_trouble`).
    db_down: std::sync::atomic::AtomicBool,
    /// Whether a task is probing the database.
    db_probing: std::sync::atomic::AtomicBool,
}

/// What `AppState::check_user` found.
pub enum UserCheck {
    Known(crate::storage::UserState),
    /// Unknown: its creation is queued.
    Creating(crate::write_path::QueuedWrite),
}

/// How long an active user is trusted without asking the database. Deactivation clears the
/// entry at once on its node and, through Redis, on the others; without Redis another node
/// may accept the user's token for up to this long.
const ACTIVE_USER_TTL: std::time::Duration = std::time::Duration::from_secs(5);

impl AppState {
    pub fn new(
        store: DynStore,
        writes: WritePath,
        bus: ChangeBus,
        keys: Keys,
        config: Config,
        database_id: String,
        presence: Arc<Presence>,
    ) -> Self {
        let import_slots = Arc::new(tokio::sync::Semaphore::new(config.import_jobs));
        AppState(Arc::new(AppShared {
            store,
            writes,
            bus,
            keys: Arc::new(keys),
            user_limiter: limiter(&config, config.rate_limit_per_user, "user"),
            ip_limiter: limiter(&config, config.rate_limit_per_ip, "ip"),
            config: Arc::new(config),
            metrics: crate::telemetry::metrics_handle(),
            database_id: database_id.into(),
            presence,
            realtime: Arc::default(),
            import_slots,
            active_users: Default::default(),
            db_down: Default::default(),
            db_probing: Default::default(),
        }))
    }

    /// Whether the database was found not answering (and not yet found back).
    pub fn db_down(&self) -> bool {
        self.db_down.load(std::sync::atomic::Ordering::Acquire)
    }

    /// A request got `unavailable`: pings the database at once, and if it does not answer,
    /// marks it down and keeps pinging every 250 ms until it does. A slow statement alone
    /// (the ping answers) marks nothing.
    pub fn database_trouble(&self) {
        use std::sync::atomic::Ordering;
        if self.db_probing.swap(true, Ordering::AcqRel) {
            return;
        }
        let state = self.clone();
        tokio::spawn(async move {
            let wait = state
                .config
                .db_timeout
                .min(std::time::Duration::from_secs(1));
            loop {
                let ping = tokio::time::timeout(wait, state.store.ping()).await;
                if matches!(ping, Ok(Ok(()))) {
                    if state.db_down.swap(false, Ordering::AcqRel) {
                        tracing::warn!("the database answers again");
                    }
                    break;
                }
                if !state.db_down.swap(true, Ordering::AcqRel) {
                    tracing::error!("the database does not answer: requests get 503 until it does");
                    metrics::counter!("confab_database_down_total").increment(1);
                }
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            }
            state.db_probing.store(false, Ordering::Release);
        });
    }

    /// Whether the Redis bridge is up (`None`: no Redis configured, or realtime not started).
    pub fn redis_up(&self) -> Option<bool> {
        self.realtime.get()?.upgrade()?.redis_up()
    }

    /// The state of a token's user (creating the user bare when unknown), from a short-lived
    /// cache of active users first.
    pub async fn user_state(
        &self,
        user: &str,
    ) -> crate::storage::StoreResult<crate::storage::UserState> {
        match self.check_user(user).await? {
            UserCheck::Known(state) => Ok(state),
            UserCheck::Creating(write) => self.user_created(user, write).await,
        }
    }

    /// Like `user_state`, but an unknown user's creation is only queued (through the write
    /// path, so a burst of new users shares commits): the caller waits for it with
    /// `user_created`. A write the caller queues meanwhile is not ordered after it (on
    /// PostgreSQL a later batch may commit first), so that write must not need the user's row
    /// unless it makes the row itself, as a create makes its members.
    pub async fn check_user(&self, user: &str) -> crate::storage::StoreResult<UserCheck> {
        {
            let mut cache = self.active_users.lock().expect("active users lock");
            match cache.get(user) {
                Some(at) if at.elapsed() < ACTIVE_USER_TTL => {
                    return Ok(UserCheck::Known(crate::storage::UserState::Active));
                }
                Some(_) => {
                    cache.remove(user);
                }
                None => {}
            }
        }
        match self.store.user_state(user).await? {
            Some(state) => {
                self.seen_active(user, state);
                Ok(UserCheck::Known(state))
            }
            None => {
                let op = crate::storage::WriteOp::EnsureUser {
                    user_id: user.to_owned(),
                };
                Ok(UserCheck::Creating(self.writes.enqueue(op).await?))
            }
        }
    }

    /// Waits for the creation `check_user` queued; the user's state once it is committed.
    pub async fn user_created(
        &self,
        user: &str,
        write: crate::write_path::QueuedWrite,
    ) -> crate::storage::StoreResult<crate::storage::UserState> {
        match write.committed().await? {
            crate::storage::WriteOutcome::User(state) => {
                self.seen_active(user, state);
                Ok(state)
            }
            _ => Err(crate::storage::StoreError::Other(anyhow::anyhow!(
                "the write path answered another op"
            ))),
        }
    }

    /// Remembers an active user for `ACTIVE_USER_TTL`.
    fn seen_active(&self, user: &str, state: crate::storage::UserState) {
        if state != crate::storage::UserState::Active {
            return;
        }
        let now = Instant::now();
        let mut cache = self.active_users.lock().expect("active users lock");
        if cache.len() > 100_000 {
            cache.retain(|_, at| now.duration_since(*at) < ACTIVE_USER_TTL);
        }
        cache.insert(user.to_owned(), now);
    }

    /// Forgets a user's cached active state (deactivated).
    pub fn forget_user(&self, user: &str) {
        self.active_users
            .lock()
            .expect("active users lock")
            .remove(user);
    }

    /// Fills `online` of users from presence.
    pub fn with_presence(&self, users: &mut [crate::domain::User]) {
        for u in users {
            u.online = self.presence.is_online(&u.id);
        }
    }

    /// Publishes what a committed mutation recorded.
    pub fn committed(&self, changes: Vec<Change>) {
        self.bus.publish(changes);
    }
}

/// A configured budget, shared through Redis when Redis is configured.
fn limiter(
    config: &Config,
    limit: Option<crate::config::RateLimit>,
    name: &str,
) -> Option<Arc<RateLimiter>> {
    let limit = limit?;
    let shared = config
        .redis_url
        .as_deref()
        .and_then(|url| RateLimiter::shared(limit, name, url).ok());
    let limiter = Arc::new(shared.unwrap_or_else(|| RateLimiter::new(limit)));
    limiter.connect();
    Some(limiter)
}

/// The whole application router.
pub fn router(state: AppState) -> Router {
    let compression = CompressionLayer::new().compress_when(
        SizeAbove::new(1024)
            .and(NotForContentType::GRPC)
            .and(NotForContentType::IMAGES)
            .and(NotForContentType::SSE),
    );
    Router::new()
        .merge(users::router())
        .merge(conversations::router())
        .merge(messages::router())
        .merge(sync::router())
        .merge(webhooks::router())
        .merge(import::router())
        .merge(jobs::router())
        .merge(ops::router())
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .layer(compression)
        .layer(middleware::from_fn(no_compression))
        .layer(middleware::from_fn(record_metrics))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// `x-no-compression` on the request turns compression off for its response.
async fn no_compression(mut req: Request, next: Next) -> Response {
    if req.headers().contains_key("x-no-compression") {
        req.headers_mut().remove(header::ACCEPT_ENCODING);
    }
    next.run(req).await
}

/// Refuses, before any parsing: bodies over the limit (by `Content-Length`) and clients over
/// their per-IP budget.
async fn guard(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let streamed = req.uri().path() == "/v1/import";
    if !streamed && declared.is_some_and(|n| n > BODY_LIMIT) {
        return ApiError::PayloadTooLarge.into_response();
    }
    if let Some(limit) = &state.ip_limiter
        && let Some(ConnectInfo(addr)) = req.extensions().get::<ConnectInfo<SocketAddr>>()
        && let Err(e) = limit.check(&addr.ip().to_string()).await
    {
        return e.into_response();
    }
    // Only the ops endpoints answer without the database.
    let path = req.uri().path();
    let needs_db = !matches!(path, "/healthz" | "/readyz" | "/metrics" | "/openapi.json")
        && !path.starts_with("/docs");
    if needs_db && state.db_down() {
        return ApiError::Unavailable.into_response();
    }
    let res = next.run(req).await;
    if needs_db && res.status() == axum::http::StatusCode::SERVICE_UNAVAILABLE {
        state.database_trouble();
    }
    res
}

/// Request count and duration by route template and status.
async fn record_metrics(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().as_str().to_owned();
    let started = Instant::now();
    let mut res = next.run(req).await;
    let status = res.status().as_u16().to_string();
    metrics::histogram!("confab_http_request_duration_seconds", "route" => route.clone(), "method" => method.clone())
        .record(started.elapsed().as_secs_f64());
    metrics::counter!("confab_http_requests_total", "route" => route, "method" => method, "status" => status)
        .increment(1);
    res.headers_mut()
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    res
}
