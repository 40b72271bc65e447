//! Realtime over Socket.IO (socketioxide) at `/socket.io/`, on the REST port.
//!
//! Rooms: every socket joins `u:{user}` and `c:{conversation}` for each conversation of its
//! user. After a commit, each change is delivered once per node to the room of its
//! conversation, serialized once (a raw JSON value) and handed to each socket without waiting:
//! a socket whose buffer is full is dropped from delivery and disconnected (the client recovers
//! through sync). Membership changes move the member's sockets in or out of the room on every
//! node as the change is delivered, so they take effect immediately.
//!
//! Changes reach the hub from the local change bus (this node's commits) and from the Redis
//! bridge (other nodes' commits). Typing and presence travel the same way but are never stored.

mod bridge;
pub mod presence;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use socketioxide::extract::{AckSender, SocketRef, State, TryData};
use socketioxide::handler::ConnectHandler;
use socketioxide::layer::SocketIoLayer;
use socketioxide::socket::DisconnectReason;
use socketioxide::{SendError, SocketError, SocketIo};

use crate::auth::Principal;
use crate::domain::{Change, ChangeKind, SendInput, Timestamp, check_user_id};
use crate::http::error::ApiError;
use crate::http::limit::RateLimiter;
use crate::http::{AppState, sync::encode_token};
use crate::storage::UserState;
use bridge::{Bridge, Envelope};
use presence::Transition;

/// The largest Socket.IO payload accepted from a client.
pub const MAX_PAYLOAD: u64 = 1024 * 1024;
/// Packets queued for one socket before it counts as a slow consumer.
pub const MAX_BUFFER: usize = 256;
/// Each WebSocket's read buffer, allocated (and touched) when the socket upgrades, so it is
/// part of every idle connection's memory. Client events are small; a larger frame grows the
/// buffer for itself (tungstenite reserves the frame's length). 1 KiB instead of engineioxide's
/// 4 KiB: BENCHMARKS.md, fan-out.
pub const WS_READ_BUFFER: usize = 1024;

/// The user a socket belongs to (a socket extension).
#[derive(Clone)]
struct SocketUser(String);

/// When the socket's token expires (seconds since the epoch; a socket extension).
#[derive(Clone, Copy)]
struct SocketExpiry(u64);

/// Shared by every socket handler and by the delivery tasks.
///
/// The hub does not hold the `SocketIo` handle (which holds the hub as its state): delivery
/// tasks and handlers get it passed, so nothing keeps a stopped server alive.
pub struct Hub {
    state: AppState,
    /// Identifies this process on the bridge.
    node: String,
    bridge: OnceLock<Arc<Bridge>>,
    /// Client events per socket.
    limiter: Option<RateLimiter>,
    /// Changes to deliver, local and remote, into the one task that delivers them in position
    /// order.
    inbound: tokio::sync::mpsc::Sender<Inbound>,
    /// Sockets connected to this node.
    live: std::sync::atomic::AtomicUsize,
    /// Woken when the last live socket disconnects.
    none_live: tokio::sync::Notify,
}

/// What the in-order delivery task handles.
enum Inbound {
    /// A committed change, local or remote.
    Change(Arc<Change>),
    /// A socket just connected: its rooms are set from the database in delivery order, so a
    /// membership change committed while it connected is neither missed nor undone.
    Rooms(SocketRef),
    /// A user was deactivated: their sockets on this node are closed.
    Disconnect(String),
}

/// Builds the Socket.IO layer and its hub, and starts delivery.
pub async fn start(state: AppState) -> anyhow::Result<(SocketIoLayer, SocketIo, Arc<Hub>)> {
    // Where in-order delivery starts: read before the server takes any request.
    let head = state.store.last_position().await?;
    let (inbound, inbound_rx) = tokio::sync::mpsc::channel(INBOUND_QUEUE);
    let hub = Arc::new(Hub {
        inbound,
        live: Default::default(),
        none_live: Default::default(),
        limiter: state.config.socket_rate_limit.map(RateLimiter::new),
        node: uuid::Uuid::now_v7().to_string(),
        bridge: OnceLock::new(),
        state: state.clone(),
    });
    let (layer, io) = SocketIo::builder()
        .ping_interval(Duration::from_secs(10))
        .ping_timeout(Duration::from_secs(10))
        .max_buffer_size(MAX_BUFFER)
        .max_payload(MAX_PAYLOAD)
        .ws_read_buffer_size(WS_READ_BUFFER)
        .with_state(hub.clone())
        .build_layer();
    io.ns("/", on_connect.with(authenticate));

    if let Some(url) = &state.config.redis_url {
        let (h, i) = (hub.clone(), io.clone());
        let bridge = Bridge::start(url, hub.node.clone(), move |env| h.remote(&i, env))?;
        let _ = hub.bridge.set(bridge);
        tokio::spawn(heartbeat(hub.clone()));
    }
    tokio::spawn(forward_commits(hub.clone()));
    tokio::spawn(in_order(io.clone(), hub.clone(), inbound_rx, head));
    Ok((layer, io, hub))
}

impl Hub {
    /// Closes a deactivated user's sockets, on this node and (through Redis) the others.
    pub fn user_deactivated(&self, user: &str) {
        self.queue_control(Inbound::Disconnect(user.to_owned()));
        self.publish(Envelope::Deactivated {
            node: self.node.clone(),
            user_id: user.to_owned(),
        });
    }

    /// Queues a change for in-order delivery. When the queue is full the change is dropped
    /// (counted): `in_order` reads it from the change log when the next one shows the gap.
    fn queue_change(&self, change: Arc<Change>) {
        if self.inbound.try_send(Inbound::Change(change)).is_err() {
            metrics::counter!("confab_realtime_inbound_dropped_total").increment(1);
        }
    }

    /// Queues what must not be dropped (a deactivated user's disconnect), waiting for room.
    fn queue_control(&self, item: Inbound) {
        if let Err(tokio::sync::mpsc::error::TrySendError::Full(item)) = self.inbound.try_send(item)
        {
            let inbound = self.inbound.clone();
            tokio::spawn(async move {
                let _ = inbound.send(item).await;
            });
        }
    }

    /// Sockets connected to this node now.
    pub fn live_sockets(&self) -> usize {
        self.live.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Resolves once no socket is connected to this node.
    pub async fn all_sockets_gone(&self) {
        loop {
            let woken = self.none_live.notified();
            tokio::pin!(woken);
            // Registered before the count is read, so a last disconnect in between still wakes.
            woken.as_mut().enable();
            if self.live_sockets() == 0 {
                return;
            }
            woken.await;
        }
    }

    /// Whether cross-node delivery works (`None`: single node, no Redis configured).
    pub fn redis_up(&self) -> Option<bool> {
        self.bridge.get().map(|b| b.is_up())
    }

    fn publish(&self, env: Envelope) {
        if let Some(b) = self.bridge.get() {
            b.publish(&env);
        }
    }

    /// An envelope from another node.
    fn remote(self: &Arc<Self>, io: &SocketIo, env: Envelope) {
        match env {
            Envelope::Change { change, .. } => {
                self.queue_change(Arc::new(change));
            }
            Envelope::Typing {
                conversation_id,
                user_id,
                typing,
                ..
            } => self.deliver_typing(io, &conversation_id, &user_id, typing),
            Envelope::Presence {
                node,
                user_id,
                online,
            } => self.state.presence.remote_delta(&node, &user_id, online),
            Envelope::Heartbeat { node, users } => {
                self.state.presence.remote_heartbeat(&node, users)
            }
            Envelope::Deactivated { user_id, .. } => {
                self.state.forget_user(&user_id);
                self.queue_control(Inbound::Disconnect(user_id));
            }
        }
    }

    /// Emits one pre-serialized payload to every local socket in `room` (less `except`'s
    /// sockets). A socket whose buffer is full is dropped.
    fn emit(
        &self,
        io: &SocketIo,
        room: String,
        except: Option<String>,
        event: &str,
        payload: &RawValue,
    ) {
        let Some(mut op) = to(io, room) else {
            return;
        };
        if let Some(e) = except {
            op = op.except(e);
        }
        let mut sent = 0u64;
        for socket in op.sockets() {
            match socket.emit(event, payload) {
                Ok(()) => sent += 1,
                Err(SendError::Socket(SocketError::InternalChannelFull)) => drop_slow(socket),
                Err(_) => {} // closing already
            }
        }
        metrics::counter!("confab_realtime_events_total", "type" => event.to_owned())
            .increment(sent);
    }

    /// Delivers one committed change to the local sockets of its conversation's members.
    async fn deliver(&self, io: &SocketIo, change: &Change) {
        let conv_room = format!("c:{}", change.conversation_id);
        let token = encode_token(&self.state.keys, &self.state.database_id, change.pos);
        let event = change.kind.as_str();
        let mut payload = change.data.clone();
        // The sync position, so a client can resume sync from the last event it saw.
        if let Some(obj) = payload.as_object_mut() {
            obj.insert("sync_token".into(), json!(token));
        }
        match change.kind {
            ChangeKind::ConversationCreated => {
                let members: Vec<String> = change.data["member_ids"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|v| v.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                for m in &members {
                    if let Some(op) = to(io, format!("u:{m}")) {
                        let _ = op.join(conv_room.clone()).await;
                    }
                }
                self.conversation_views(io, change, &members, &token).await;
            }
            ChangeKind::MemberJoined => {
                if let Some(u) = &change.user_id
                    && let Some(op) = to(io, format!("u:{u}"))
                {
                    let _ = op.join(conv_room.clone()).await;
                }
                self.emit_value(io, conv_room, None, event, &payload);
            }
            ChangeKind::MemberLeft => {
                // The member who left hears it, then nothing more.
                self.emit_value(io, conv_room.clone(), None, event, &payload);
                if let Some(u) = &change.user_id
                    && let Some(op) = to(io, format!("u:{u}"))
                {
                    let _ = op.leave(conv_room).await;
                }
            }
            _ => self.emit_value(io, conv_room, None, event, &payload),
        }
        let lag = (Timestamp::now().0 - change.created_at.0).max(0) as f64 / 1000.0;
        metrics::histogram!("confab_fanout_latency_seconds").record(lag);
    }

    fn emit_value(
        &self,
        io: &SocketIo,
        room: String,
        except: Option<String>,
        event: &str,
        payload: &Value,
    ) {
        match serde_json::value::to_raw_value(payload) {
            Ok(raw) => self.emit(io, room, except, event, &raw),
            Err(e) => tracing::error!(error = %e, "unserializable event"),
        }
    }

    /// `conversation.created` is the conversation as each receiver sees it: loaded per member
    /// that has a socket on this node.
    async fn conversation_views(
        &self,
        io: &SocketIo,
        change: &Change,
        members: &[String],
        token: &str,
    ) {
        for m in members {
            if to(io, format!("u:{m}")).is_none_or(|op| op.sockets().is_empty()) {
                continue;
            }
            let view = self
                .state
                .store
                .conversations_for(Some(m), std::slice::from_ref(&change.conversation_id), 0)
                .await;
            if let Ok(Some(c)) = view.map(|mut v| v.pop()) {
                let mut payload = json!(c);
                payload["sync_token"] = json!(token);
                self.emit_value(io, format!("u:{m}"), None, "conversation.created", &payload);
            }
        }
    }

    /// Puts a socket in exactly the rooms of its user's conversations, as the database has them.
    async fn set_rooms(&self, socket: &SocketRef) {
        let Some(SocketUser(user)) = socket.extensions.get::<SocketUser>() else {
            return;
        };
        let Ok(ids) = self.state.store.conversation_ids_of(&user).await else {
            return;
        };
        let wanted: std::collections::HashSet<String> =
            ids.into_iter().map(|c| format!("c:{c}")).collect();
        let stale: Vec<String> = socket
            .rooms()
            .into_iter()
            .map(|r| r.to_string())
            .filter(|r| r.starts_with("c:") && !wanted.contains(r))
            .collect();
        socket.leave(stale);
        socket.join(wanted.into_iter().collect::<Vec<_>>());
    }

    fn deliver_typing(&self, io: &SocketIo, conversation_id: &str, user_id: &str, typing: bool) {
        let payload =
            json!({"conversation_id": conversation_id, "user_id": user_id, "typing": typing});
        self.emit_value(
            io,
            format!("c:{conversation_id}"),
            Some(format!("u:{user_id}")),
            "typing",
            &payload,
        );
    }

    /// A user's global presence changed: record `last_seen_at` and tell the users who share a
    /// direct conversation with them (their local sockets).
    async fn announce(&self, io: &SocketIo, t: Transition) {
        let now = Timestamp::now();
        if !t.online
            && let Err(e) = self.state.store.set_last_seen(&t.user_id, now).await
        {
            tracing::warn!(error = %e, "could not store last_seen_at");
        }
        let partners = match self.state.store.direct_partners(&t.user_id).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "could not load presence audience");
                return;
            }
        };
        let payload = json!({"user_id": t.user_id, "online": t.online, "last_seen_at": now});
        for p in partners {
            self.emit_value(io, format!("u:{p}"), None, "presence", &payload);
        }
    }
}

/// A slow consumer: out of every room at once (it gets nothing more), disconnected as soon as
/// its buffer has room for the disconnect packet, or by the heartbeat timeout if it never reads.
fn drop_slow(socket: SocketRef) {
    metrics::counter!("confab_realtime_dropped_slow_consumers_total").increment(1);
    socket.leave_all();
    tokio::spawn(async move {
        for _ in 0..100 {
            match socket.clone().disconnect() {
                Err(SocketError::InternalChannelFull) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                _ => return,
            }
        }
    });
}

/// This node's commits: published for the other nodes, and queued for delivery here.
async fn forward_commits(hub: Arc<Hub>) {
    let mut changes = hub.state.bus.subscribe();
    loop {
        match changes.recv().await {
            Ok(change) => {
                hub.publish(Envelope::Change {
                    node: hub.node.clone(),
                    change: (*change).clone(),
                });
                hub.queue_change(change);
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                // The gap is filled from the change log by `in_order`.
                tracing::warn!(missed = n, "realtime fell behind the change bus");
                metrics::counter!("confab_realtime_lagged_total").increment(n);
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Changes and socket arrivals waiting for the in-order delivery task; past this, changes are
/// dropped and read back from the change log.
const INBOUND_QUEUE: usize = 64 * 1024;

/// How long a gap in positions may wait for its change to arrive (another worker's publish, or
/// another node's through Redis) before it is read from the change log.
const GAP_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

/// Delivers changes strictly in position order, so that an event's `sync_token` is a safe point
/// to resume sync from: every change before it has been delivered. Positions are dense (a
/// rolled-back transaction gives its positions back), so a missing one is a change still on its
/// way: it is awaited briefly, then read from the change log (by the ordering argument of
/// docs/sync.md, a later position being committed means the missing one is too). This also
/// carries other nodes' changes when Redis is down, a little later.
async fn in_order(
    io: SocketIo,
    hub: Arc<Hub>,
    mut inbound: tokio::sync::mpsc::Receiver<Inbound>,
    head: i64,
) {
    let mut next = head + 1;
    let mut pending: std::collections::BTreeMap<i64, Arc<Change>> = Default::default();
    let mut gap_since: Option<tokio::time::Instant> = None;
    loop {
        let received = match gap_since {
            None => inbound.recv().await,
            Some(since) => {
                tokio::select! {
                    c = inbound.recv() => c,
                    _ = tokio::time::sleep_until(since + GAP_WAIT) => {
                        let upto = pending.keys().next().copied().unwrap_or(next) - 1;
                        match hub.state.store.changes_between(next - 1, upto).await {
                            Ok(missing) => {
                                metrics::counter!("confab_realtime_gap_fills_total").increment(1);
                                for c in missing {
                                    hub.deliver(&io, &c).await;
                                }
                                // Whatever the log no longer has (retention) is skipped.
                                next = upto + 1;
                            }
                            Err(e) => tracing::warn!(error = %e, "could not fill a realtime gap"),
                        }
                        gap_since = None;
                        None
                    }
                }
            }
        };
        if let Some(item) = received {
            match item {
                Inbound::Change(c) if c.pos >= next => {
                    pending.insert(c.pos, c);
                }
                Inbound::Change(_) => {}
                Inbound::Rooms(socket) => hub.set_rooms(&socket).await,
                Inbound::Disconnect(user) => {
                    if let Some(op) = to(&io, format!("u:{user}")) {
                        let _ = op.disconnect().await;
                    }
                }
            }
        } else if gap_since.is_none() && pending.is_empty() && inbound.is_closed() {
            return;
        }
        while let Some(c) = pending.remove(&next) {
            hub.deliver(&io, &c).await;
            next += 1;
        }
        if pending.is_empty() {
            gap_since = None;
        } else if gap_since.is_none() {
            gap_since = Some(tokio::time::Instant::now());
        }
    }
}

/// Starts the presence tasks: announcing transitions, telling the other nodes, heartbeats.
pub fn start_presence(
    io: SocketIo,
    hub: Arc<Hub>,
    mut global: tokio::sync::mpsc::UnboundedReceiver<Transition>,
    mut local: tokio::sync::mpsc::UnboundedReceiver<Transition>,
) {
    let h = hub.clone();
    tokio::spawn(async move {
        while let Some(t) = global.recv().await {
            h.announce(&io, t).await;
        }
    });
    tokio::spawn(async move {
        while let Some(t) = local.recv().await {
            hub.publish(Envelope::Presence {
                node: hub.node.clone(),
                user_id: t.user_id,
                online: t.online,
            });
        }
    });
}

async fn heartbeat(hub: Arc<Hub>) {
    let mut tick = tokio::time::interval(presence::HEARTBEAT);
    loop {
        tick.tick().await;
        hub.publish(Envelope::Heartbeat {
            node: hub.node.clone(),
            users: hub.state.presence.local_users(),
        });
        hub.state.presence.expire_nodes();
    }
}

// ---------------------------------------------------------------- socket handlers

#[derive(Deserialize)]
struct Auth {
    token: Option<String>,
}

/// Handshake: a valid user token of an active user, from an allowed origin. Anything else is
/// refused with `connect_error` `unauthorized` (or `forbidden` for an origin).
async fn authenticate(
    socket: SocketRef,
    State(hub): State<Arc<Hub>>,
    TryData(auth): TryData<Auth>,
) -> Result<(), &'static str> {
    if let Some(allowed) = &hub.state.config.allowed_origins {
        let origin = socket
            .req_parts()
            .headers
            .get("origin")
            .and_then(|o| o.to_str().ok());
        if let Some(o) = origin
            && !allowed.iter().any(|a| a == o)
        {
            return Err("forbidden");
        }
    }
    let token = auth.ok().and_then(|a| a.token).ok_or("unauthorized")?;
    let Some((Principal::User(user), exp)) = hub.state.keys.verify_until(&token) else {
        return Err("unauthorized");
    };
    if check_user_id("sub", &user).is_err() {
        return Err("unauthorized");
    }
    match hub.state.user_state(&user).await {
        Ok(UserState::Active) => {}
        _ => return Err("unauthorized"),
    }
    // Loaded here, before the socket counts as connected.
    let rooms: Vec<String> = match hub.state.store.conversation_ids_of(&user).await {
        Ok(ids) => ids.into_iter().map(|c| format!("c:{c}")).collect(),
        Err(e) => {
            tracing::warn!(error = %e, "could not load the socket's conversations");
            return Err("unavailable");
        }
    };
    // The event handlers and rooms are set here, before the connect packet goes out:
    // socketioxide sends it before it spawns `on_connect`, and a client may emit (or an event
    // may be due to it) as soon as it sees `connect`.
    socket.on("message.send", on_send);
    socket.on("read", on_read);
    socket.on("typing", on_typing);
    socket.join(format!("u:{user}"));
    socket.join(rooms);
    socket.extensions.insert(SocketExpiry(exp));
    socket.extensions.insert(SocketUser(user));
    Ok(())
}

async fn on_connect(socket: SocketRef, State(hub): State<Arc<Hub>>) {
    let Some(SocketUser(user)) = socket.extensions.get::<SocketUser>() else {
        return;
    };
    socket.on_disconnect(on_disconnect);
    // The rooms loaded in the handshake may miss a membership change committed since; the
    // delivery task sets them again, in order with the changes it delivers.
    let _ = hub.inbound.send(Inbound::Rooms(socket.clone())).await;
    hub.state.presence.connected(&user);
    hub.live.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    metrics::gauge!("confab_realtime_sockets").increment(1.0);
}

async fn on_disconnect(socket: SocketRef, State(hub): State<Arc<Hub>>, _reason: DisconnectReason) {
    metrics::gauge!("confab_realtime_sockets").decrement(1.0);
    if hub.live.fetch_sub(1, std::sync::atomic::Ordering::AcqRel) == 1 {
        hub.none_live.notify_waiters();
    }
    if let Some(SocketUser(user)) = socket.extensions.get::<SocketUser>() {
        hub.state.presence.disconnected(&user);
    }
}

/// The sockets of `room` on this node; `None` once the server is closing (the namespace is
/// gone, and `SocketIo::to` would panic).
fn to(io: &SocketIo, room: String) -> Option<socketioxide::operators::BroadcastOperators> {
    io.of("/").map(|ns| ns.to(room))
}

/// Answers a client event: `{"ok": true, ...fields}` or `{"ok": false, "error": {...}}`.
fn answer(ack: AckSender, result: Result<Value, ApiError>) {
    let reply = match result {
        Ok(mut fields) => {
            fields["ok"] = json!(true);
            fields
        }
        Err(e) => {
            let mut error = e.body()["error"].take();
            if let ApiError::RateLimited { retry_after } = e {
                error["retry_after"] = json!(retry_after.max(1));
            }
            json!({"ok": false, "error": error})
        }
    };
    let _ = ack.send(&reply);
}

/// The socket's user, after the per-socket rate limit and the user's budget (the same
/// `CONFAB_RATE_LIMIT_PER_USER` budget REST requests take from, shared across nodes).
async fn admit(socket: &SocketRef, hub: &Hub) -> Result<String, ApiError> {
    // A socket outlives its token only until it next speaks.
    if let Some(SocketExpiry(exp)) = socket.extensions.get::<SocketExpiry>()
        && chrono::Utc::now().timestamp() > exp as i64
    {
        let s = socket.clone();
        tokio::spawn(async move {
            let _ = s.disconnect();
        });
        return Err(ApiError::Unauthorized);
    }
    if let Some(l) = &hub.limiter {
        l.check_local(&socket.id.to_string())?;
    }
    let user = socket
        .extensions
        .get::<SocketUser>()
        .map(|u| u.0)
        .ok_or(ApiError::Unauthorized)?;
    if let Some(l) = &hub.state.user_limiter {
        l.check(&user).await?;
    }
    Ok(user)
}

/// Decodes a client event's payload as the REST body of the same shape would be.
fn payload<T: serde::de::DeserializeOwned>(
    data: Result<Value, impl std::fmt::Display>,
) -> Result<T, ApiError> {
    let v = data.map_err(|e| ApiError::Validation {
        field: None,
        message: format!("malformed payload: {e}"),
    })?;
    crate::http::parse_json(v.to_string().as_bytes())
}

async fn on_send(
    socket: SocketRef,
    State(hub): State<Arc<Hub>>,
    TryData(data): TryData<Value>,
    ack: AckSender,
) {
    let result = async {
        let user = admit(&socket, &hub).await?;
        let (conversation, input) = send_payload(data)?;
        crate::http::messages::send_message(&hub.state, conversation, user, input).await
    }
    .await;
    answer(ack, result.map(|(message, _)| json!({"message": message})));
}

/// The conversation and body of a `message.send` payload (validated later, by the send).
pub(crate) fn send_payload(
    data: Result<Value, impl std::fmt::Display>,
) -> Result<(String, SendInput), ApiError> {
    let input: SendInput = payload(data)?;
    let conversation = input
        .conversation_id
        .clone()
        .ok_or_else(|| ApiError::invalid("conversation_id", "is required"))?;
    if input.user_id.is_some() {
        return Err(ApiError::invalid("user_id", "unknown field"));
    }
    no_nul_id(&conversation)?;
    Ok((conversation, input))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadPayload {
    conversation_id: String,
    seq: Option<i64>,
}

/// The conversation and seq of a `read` payload.
pub(crate) fn read_payload(
    data: Result<Value, impl std::fmt::Display>,
) -> Result<(String, Option<i64>), ApiError> {
    let p: ReadPayload = payload(data)?;
    no_nul_id(&p.conversation_id)?;
    if p.seq.is_some_and(|s| s < 0) {
        return Err(ApiError::invalid("seq", "must be an integer ≥ 0"));
    }
    Ok((p.conversation_id, p.seq))
}

async fn on_read(
    socket: SocketRef,
    State(hub): State<Arc<Hub>>,
    TryData(data): TryData<Value>,
    ack: AckSender,
) {
    let result = async {
        let user = admit(&socket, &hub).await?;
        let (conversation, seq) = read_payload(data)?;
        crate::http::messages::mark_read(&hub.state, conversation, user, seq).await
    }
    .await;
    answer(ack, result.map(|seq| json!({"last_read_seq": seq})));
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TypingPayload {
    conversation_id: String,
    typing: bool,
}

/// The conversation and state of a `typing` payload.
pub(crate) fn typing_payload(
    data: Result<Value, impl std::fmt::Display>,
) -> Result<(String, bool), ApiError> {
    let p: TypingPayload = payload(data)?;
    no_nul_id(&p.conversation_id)?;
    Ok((p.conversation_id, p.typing))
}

/// A `conversation_id` with U+0000 is refused like any such string (PostgreSQL refuses it:
/// the send or read failed as `unavailable`).
fn no_nul_id(conversation_id: &str) -> Result<(), ApiError> {
    crate::domain::check_string("conversation_id", conversation_id, usize::MAX)?;
    Ok(())
}

async fn on_typing(
    socket: SocketRef,
    io: SocketIo,
    State(hub): State<Arc<Hub>>,
    TryData(data): TryData<Value>,
    ack: AckSender,
) {
    let result = async {
        let user = admit(&socket, &hub).await?;
        let p = typing_payload(data)?;
        // Membership is the socket's room: no database round trip for an ephemeral event.
        if !socket.rooms().iter().any(|r| *r == format!("c:{}", p.0)) {
            return Err(ApiError::NotFound);
        }
        Ok((user, p))
    }
    .await;
    let result = result.map(|(user, p)| {
        let (conversation_id, typing) = p;
        hub.deliver_typing(&io, &conversation_id, &user, typing);
        hub.publish(Envelope::Typing {
            node: hub.node.clone(),
            conversation_id,
            user_id: user,
            typing,
        });
        json!({})
    });
    answer(ack, result);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `socket_event` fuzz target: a `conversation_id` holding U+0000 passed
    /// decoding and failed in the database (acknowledged `unavailable` on PostgreSQL).
    #[test]
    fn conversation_id_with_nul_is_refused() {
        let ok: Result<Value, &str> = Ok(json!({"conversation_id": "c\0", "seq": 1}));
        let field = |r: Result<(), ApiError>| match r {
            Err(ApiError::Validation { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            field(read_payload(ok).map(|_| ())).as_deref(),
            Some("conversation_id")
        );
        let send: Result<Value, &str> =
            Ok(json!({"conversation_id": "\0c", "client_id": "x", "text": "hi"}));
        assert_eq!(
            field(send_payload(send).map(|_| ())).as_deref(),
            Some("conversation_id")
        );
        let typing: Result<Value, &str> = Ok(json!({"conversation_id": "\0", "typing": true}));
        assert_eq!(
            field(typing_payload(typing).map(|_| ())).as_deref(),
            Some("conversation_id")
        );
        assert!(read_payload(Ok::<_, &str>(json!({"conversation_id": "c", "seq": 2}))).is_ok());
    }
}
