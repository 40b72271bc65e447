//! The Redis bridge between nodes: what one node commits or sees (changes, typing, presence)
//! is published on one channel, and every other node delivers it to its own sockets.
//!
//! Redis is a fast path, never the truth: publishing goes through a bounded queue to one task,
//! so a slow or absent Redis never delays a commit or a local delivery; when Redis goes away the
//! queue drops (counted), both tasks reconnect with backoff, and cross-node delivery resumes by
//! itself. Clients recover anything missed through `/v1/sync`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::domain::Change;

pub const CHANNEL: &str = "confab:events";

/// What travels between nodes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Envelope {
    Change {
        node: String,
        change: Change,
    },
    Typing {
        node: String,
        conversation_id: String,
        user_id: String,
        typing: bool,
    },
    Presence {
        node: String,
        user_id: String,
        online: bool,
    },
    Heartbeat {
        node: String,
        users: Vec<String>,
    },
    Deactivated {
        node: String,
        user_id: String,
    },
}

impl Envelope {
    pub fn node(&self) -> &str {
        match self {
            Envelope::Change { node, .. }
            | Envelope::Typing { node, .. }
            | Envelope::Presence { node, .. }
            | Envelope::Heartbeat { node, .. }
            | Envelope::Deactivated { node, .. } => node,
        }
    }
}

pub struct Bridge {
    client: redis::Client,
    queue: mpsc::Sender<String>,
    /// Whether the subscriber is connected (readiness and metrics).
    up: AtomicBool,
}

impl Bridge {
    /// Starts the publisher and the subscriber; `deliver` gets every envelope of other nodes.
    pub fn start(
        url: &str,
        node: String,
        deliver: impl Fn(Envelope) + Send + Sync + 'static,
    ) -> anyhow::Result<Arc<Bridge>> {
        let client =
            redis::Client::open(url).map_err(|e| anyhow::anyhow!("CONFAB_REDIS_URL: {e}"))?;
        let (queue, rx) = mpsc::channel(8192);
        let bridge = Arc::new(Bridge {
            client,
            queue,
            up: AtomicBool::new(false),
        });
        tokio::spawn(publisher(bridge.client.clone(), rx));
        tokio::spawn(subscriber(bridge.clone(), node, Arc::new(deliver)));
        Ok(bridge)
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Queues an envelope for the other nodes; drops it (counted) when the queue is full.
    pub fn publish(&self, envelope: &Envelope) {
        let Ok(text) = serde_json::to_string(envelope) else {
            return;
        };
        if self.queue.try_send(text).is_err() {
            metrics::counter!("confab_redis_publish_dropped_total").increment(1);
        }
    }
}

async fn publisher(client: redis::Client, mut rx: mpsc::Receiver<String>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let conn = tokio::time::timeout(
            Duration::from_secs(2),
            client.get_multiplexed_async_connection(),
        )
        .await;
        let mut conn = match conn {
            Ok(Ok(c)) => {
                backoff = Duration::from_millis(100);
                c
            }
            _ => {
                // While Redis is away, what is queued is dropped: the queue must not grow and
                // the events are in the change log for sync.
                while let Ok(_dropped) = rx.try_recv() {
                    metrics::counter!("confab_redis_publish_dropped_total").increment(1);
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        while let Some(text) = rx.recv().await {
            let sent = tokio::time::timeout(
                Duration::from_secs(1),
                redis::cmd("PUBLISH")
                    .arg(CHANNEL)
                    .arg(&text)
                    .query_async::<i64>(&mut conn),
            )
            .await;
            if !matches!(sent, Ok(Ok(_))) {
                metrics::counter!("confab_redis_publish_dropped_total").increment(1);
                break; // reconnect
            }
        }
        if rx.is_closed() {
            return;
        }
    }
}

async fn subscriber(
    bridge: Arc<Bridge>,
    node: String,
    deliver: Arc<dyn Fn(Envelope) + Send + Sync>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let pubsub =
            tokio::time::timeout(Duration::from_secs(2), bridge.client.get_async_pubsub()).await;
        let mut pubsub = match pubsub {
            Ok(Ok(p)) => p,
            _ => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        if pubsub.subscribe(CHANNEL).await.is_err() {
            tokio::time::sleep(backoff).await;
            continue;
        }
        backoff = Duration::from_millis(100);
        bridge.up.store(true, Ordering::Relaxed);
        metrics::gauge!("confab_redis_up").set(1.0);
        tracing::info!("redis bridge connected");
        let mut messages = pubsub.on_message();
        while let Some(msg) = messages.next().await {
            let Ok(text) = msg.get_payload::<String>() else {
                continue;
            };
            match serde_json::from_str::<Envelope>(&text) {
                Ok(env) if env.node() != node => deliver(env),
                Ok(_) => {} // our own
                Err(e) => tracing::warn!(error = %e, "unreadable envelope on the bridge"),
            }
        }
        bridge.up.store(false, Ordering::Relaxed);
        metrics::gauge!("confab_redis_up").set(0.0);
        tracing::warn!("redis bridge lost; reconnecting");
    }
}
