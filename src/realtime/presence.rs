//! Presence: a user is online while at least one of their sockets is connected on any node.
//!
//! Each node keeps the whole picture in memory: its own sockets per user, and for every other
//! node the set of users it last announced, with the time of its last heartbeat. Nodes tell
//! each other through the Redis bridge: a delta when a user's state on a node changes, and a
//! full heartbeat every few seconds. A node whose heartbeat stops (a crash) is forgotten after
//! `NODE_TTL`, so its users go offline within a bounded time. Without Redis there are no other
//! nodes and this is plain local counting.
//!
//! Going offline waits `grace` after the last socket closes, so a reconnect within it causes no
//! offline/online flap. Every change of a user's global state is reported once on `events`.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

/// How long a node's announced users stay online without a heartbeat.
pub const NODE_TTL: Duration = Duration::from_secs(15);
/// How often a node announces its online users.
pub const HEARTBEAT: Duration = Duration::from_secs(5);

/// A change of a user's global state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub user_id: String,
    pub online: bool,
}

#[derive(Default)]
struct Inner {
    /// Connected sockets per user on this node.
    local: HashMap<String, usize>,
    /// Users whose last local socket closed, with the generation of the pending offline.
    pending: HashMap<String, u64>,
    /// Other nodes: last heartbeat and the users they have online.
    remote: HashMap<String, (Instant, HashSet<String>)>,
    generation: u64,
}

impl Inner {
    fn locally_online(&self, user: &str) -> bool {
        self.local.get(user).is_some_and(|n| *n > 0) || self.pending.contains_key(user)
    }

    fn online(&self, user: &str) -> bool {
        self.locally_online(user) || self.remote.values().any(|(_, users)| users.contains(user))
    }
}

pub struct Presence {
    inner: Mutex<Inner>,
    grace: Duration,
    /// Global transitions, for the hub to announce and to record `last_seen_at`.
    events: mpsc::UnboundedSender<Transition>,
    /// Local transitions, for the bridge to tell the other nodes.
    local_events: mpsc::UnboundedSender<Transition>,
}

impl Presence {
    pub fn new(
        grace: Duration,
    ) -> (
        Self,
        mpsc::UnboundedReceiver<Transition>,
        mpsc::UnboundedReceiver<Transition>,
    ) {
        let (events, rx) = mpsc::unbounded_channel();
        let (local_events, local_rx) = mpsc::unbounded_channel();
        (
            Presence {
                inner: Mutex::new(Inner::default()),
                grace,
                events,
                local_events,
            },
            rx,
            local_rx,
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("presence lock")
    }

    /// Runs `change` and reports the user's global and local transitions, if any.
    fn update(&self, user: &str, change: impl FnOnce(&mut Inner)) {
        let mut inner = self.lock();
        let (was, was_local) = (inner.online(user), inner.locally_online(user));
        change(&mut inner);
        let (is, is_local) = (inner.online(user), inner.locally_online(user));
        drop(inner);
        if was != is {
            let _ = self.events.send(Transition {
                user_id: user.to_owned(),
                online: is,
            });
        }
        if was_local != is_local {
            let _ = self.local_events.send(Transition {
                user_id: user.to_owned(),
                online: is_local,
            });
        }
    }

    pub fn is_online(&self, user: &str) -> bool {
        self.lock().online(user)
    }

    /// The users with a socket (or a pending grace) on this node.
    pub fn local_users(&self) -> Vec<String> {
        let inner = self.lock();
        inner
            .local
            .keys()
            .chain(inner.pending.keys())
            .cloned()
            .collect::<HashSet<_>>()
            .into_iter()
            .collect()
    }

    /// A socket of `user` connected on this node.
    pub fn connected(&self, user: &str) {
        self.update(user, |inner| {
            inner.pending.remove(user);
            *inner.local.entry(user.to_owned()).or_default() += 1;
        });
    }

    /// A socket of `user` closed on this node; offline follows after the grace period unless
    /// another socket connects first. Must be called within a tokio runtime.
    pub fn disconnected(self: &std::sync::Arc<Self>, user: &str) {
        let generation = {
            let mut inner = self.lock();
            let left = match inner.local.get_mut(user) {
                Some(n) => {
                    *n = n.saturating_sub(1);
                    *n
                }
                None => 0,
            };
            if left > 0 {
                return;
            }
            inner.local.remove(user);
            inner.generation += 1;
            let g = inner.generation;
            inner.pending.insert(user.to_owned(), g);
            g
        };
        let this = self.clone();
        let user = user.to_owned();
        tokio::spawn(async move {
            tokio::time::sleep(this.grace).await;
            this.update(&user, |inner| {
                if inner.pending.get(&user) == Some(&generation) {
                    inner.pending.remove(&user);
                }
            });
        });
    }

    /// Another node says `user` went online / offline there.
    pub fn remote_delta(&self, node: &str, user: &str, online: bool) {
        self.update(user, |inner| {
            let entry = inner
                .remote
                .entry(node.to_owned())
                .or_insert_with(|| (Instant::now(), HashSet::new()));
            entry.0 = Instant::now();
            if online {
                entry.1.insert(user.to_owned());
            } else {
                entry.1.remove(user);
            }
        });
    }

    /// Another node's full list of online users.
    pub fn remote_heartbeat(&self, node: &str, users: Vec<String>) {
        let fresh: HashSet<String> = users.into_iter().collect();
        let old = self
            .lock()
            .remote
            .get(node)
            .map(|(_, u)| u.clone())
            .unwrap_or_default();
        let touched: Vec<String> = old.symmetric_difference(&fresh).cloned().collect();
        if touched.is_empty() {
            self.lock()
                .remote
                .insert(node.to_owned(), (Instant::now(), fresh));
            return;
        }
        // Apply as one change, reporting each touched user's transition.
        let mut inner = self.lock();
        let before: Vec<bool> = touched.iter().map(|u| inner.online(u)).collect();
        inner
            .remote
            .insert(node.to_owned(), (Instant::now(), fresh));
        let after: Vec<bool> = touched.iter().map(|u| inner.online(u)).collect();
        drop(inner);
        for ((user, was), is) in touched.into_iter().zip(before).zip(after) {
            if was != is {
                let _ = self.events.send(Transition {
                    user_id: user,
                    online: is,
                });
            }
        }
    }

    /// Forgets nodes whose heartbeat is older than `NODE_TTL` (crashed, or cut off).
    pub fn expire_nodes(&self) {
        let now = Instant::now();
        let dead: Vec<String> = self
            .lock()
            .remote
            .iter()
            .filter(|(_, (at, _))| now.duration_since(*at) > NODE_TTL)
            .map(|(n, _)| n.clone())
            .collect();
        for node in dead {
            self.remote_heartbeat(&node, Vec::new());
            self.lock().remote.remove(&node);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test(start_paused = true)]
    async fn grace_period_hides_a_quick_reconnect() {
        let (p, mut events, _) = Presence::new(Duration::from_secs(5));
        let p = Arc::new(p);
        p.connected("u");
        assert_eq!(
            events.recv().await.unwrap(),
            Transition {
                user_id: "u".into(),
                online: true
            }
        );
        p.disconnected("u");
        tokio::time::sleep(Duration::from_secs(2)).await;
        p.connected("u");
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(events.try_recv().is_err(), "no flap");
        assert!(p.is_online("u"));
        p.disconnected("u");
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(
            events.recv().await.unwrap(),
            Transition {
                user_id: "u".into(),
                online: false
            }
        );
        assert!(!p.is_online("u"));
    }

    #[tokio::test]
    async fn remote_nodes_and_their_expiry() {
        let (p, mut events, _) = Presence::new(Duration::from_secs(5));
        p.remote_delta("n2", "u", true);
        assert!(events.recv().await.unwrap().online);
        p.connected("u");
        assert!(events.try_recv().is_err(), "already online elsewhere");
        p.remote_heartbeat("n2", vec!["v".into()]);
        assert_eq!(
            events.recv().await.unwrap(),
            Transition {
                user_id: "v".into(),
                online: true
            }
        );
        p.lock().remote.get_mut("n2").unwrap().0 = Instant::now() - NODE_TTL * 2;
        p.expire_nodes();
        assert_eq!(
            events.recv().await.unwrap(),
            Transition {
                user_id: "v".into(),
                online: false
            }
        );
        assert!(p.is_online("u"), "still connected here");
    }
}
