//! Webhook delivery per the Standard Webhooks specification, from the durable outbox.
//!
//! Deliveries are written with the change they announce (same transaction). Workers claim due
//! deliveries with a lease (`for update skip locked` on PostgreSQL, so several nodes share the
//! work; one writer on SQLite), at most one per conversation at a time so a conversation's
//! events keep their order, POST them, and record the outcome. A worker that dies leaves its
//! lease to expire; the delivery is then claimed again. A failure is retried on
//! `CONFAB_WEBHOOK_RETRY_SCHEDULE` with ±20% jitter, the schedule position being the stored
//! attempt count, so a restart does not reset it; after the last retry the delivery is `dead`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use futures_util::future::join_all;
use hmac::{Hmac, Mac};
use rand::Rng;
use sha2::Sha256;

use crate::domain::Timestamp;
use crate::storage::{AttemptResult, Delivery, DynStore};
use crate::write_path::ChangeBus;

/// How long a claimed delivery stays with its worker (longer than the 10 s timeout).
const LEASE_MS: i64 = 30_000;
/// Deliveries claimed (and sent concurrently) at once.
const BATCH: u32 = 32;
const TIMEOUT: Duration = Duration::from_secs(10);

pub struct Webhooks {
    pub url: String,
    pub secrets: Vec<Vec<u8>>,
    pub schedule: Vec<Duration>,
    pub client: reqwest::Client,
}

/// `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">` for each secret, space-separated.
pub fn signature(secrets: &[Vec<u8>], id: &str, timestamp: i64, body: &str) -> String {
    secrets
        .iter()
        .map(|key| {
            let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
            mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
            let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
            format!("v1,{sig}")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// When to try again after `attempts` failed attempts, or `None` when the schedule is spent.
pub fn next_attempt(schedule: &[Duration], attempts: i64, now: i64) -> Option<i64> {
    let delay = schedule.get(usize::try_from(attempts - 1).ok()?)?;
    let jitter = rand::rng().random_range(0.8..=1.2);
    Some(now + (delay.as_millis() as f64 * jitter) as i64)
}

impl Webhooks {
    /// One attempt: POST the stored body with fresh headers; 2xx is success, anything else
    /// (3xx included) or a timeout a failure.
    async fn attempt(&self, d: &Delivery) -> Result<(), String> {
        let body = d.payload.to_string();
        let timestamp = chrono::Utc::now().timestamp();
        let res = self
            .client
            .post(&self.url)
            .timeout(TIMEOUT)
            .header("content-type", "application/json")
            .header("webhook-id", &d.id)
            .header("webhook-timestamp", timestamp.to_string())
            .header(
                "webhook-signature",
                signature(&self.secrets, &d.id, timestamp, &body),
            )
            .body(body)
            .send()
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    "timeout after 10s".to_owned()
                } else {
                    format!("request failed: {e}")
                }
            })?;
        if res.status().is_success() {
            Ok(())
        } else {
            Err(format!("HTTP {}", res.status().as_u16()))
        }
    }
}

/// Runs the delivery loop until the process stops.
pub async fn run(store: DynStore, hooks: Arc<Webhooks>, bus: ChangeBus) {
    let mut changes = bus.subscribe();
    loop {
        let now = Timestamp::now().0;
        let claimed = match store.claim_deliveries(now, LEASE_MS, BATCH).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "could not claim webhook deliveries");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if claimed.is_empty() {
            // Wake on the next commit, or poll for retries that come due.
            let _ = tokio::time::timeout(Duration::from_millis(500), changes.recv()).await;
            continue;
        }
        join_all(claimed.iter().map(|d| deliver(&store, &hooks, d))).await;
    }
}

async fn deliver(store: &DynStore, hooks: &Webhooks, d: &Delivery) {
    let started = Instant::now();
    let outcome = hooks.attempt(d).await;
    metrics::counter!("confab_webhook_attempts_total").increment(1);
    let attempts = d.attempts + 1;
    let result = match outcome {
        Ok(()) => {
            let lag = (Timestamp::now().0 - d.created_at.0).max(0) as f64 / 1000.0;
            metrics::histogram!("confab_webhook_delivery_latency_seconds").record(lag);
            AttemptResult::Delivered
        }
        Err(error) => {
            metrics::counter!("confab_webhook_failures_total").increment(1);
            let retry_at = next_attempt(&hooks.schedule, attempts, Timestamp::now().0);
            if retry_at.is_none() {
                metrics::counter!("confab_webhook_dead_total").increment(1);
            }
            tracing::info!(id = %d.id, attempts, error = %error, dead = retry_at.is_none(), "webhook attempt failed");
            AttemptResult::Failed { error, retry_at }
        }
    };
    if let Err(e) = store.finish_delivery(&d.id, &result).await {
        // The lease expires and the delivery is tried again: at least once, never lost.
        tracing::warn!(error = %e, id = %d.id, "could not record a webhook attempt");
    }
    metrics::histogram!("confab_webhook_attempt_seconds").record(started.elapsed().as_secs_f64());
}

/// Publishes the outbox depth by state every few seconds.
pub async fn gauges(store: DynStore) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        if let Ok(counts) = store.delivery_counts().await {
            for status in ["pending", "delivered", "dead"] {
                let n = counts
                    .iter()
                    .find(|(s, _)| s == status)
                    .map_or(0, |(_, n)| *n);
                metrics::gauge!("confab_webhook_deliveries", "status" => status).set(n as f64);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_with_jitter_then_dead() {
        let s = vec![Duration::from_secs(5), Duration::from_secs(300)];
        let at = next_attempt(&s, 1, 0).unwrap();
        assert!((4000..=6000).contains(&at), "{at}");
        let at = next_attempt(&s, 2, 0).unwrap();
        assert!((240_000..=360_000).contains(&at), "{at}");
        assert_eq!(next_attempt(&s, 3, 0), None);
    }

    #[test]
    fn one_signature_per_secret() {
        let sig = signature(&[b"a".to_vec(), b"b".to_vec()], "msg_1", 1, "{}");
        let parts: Vec<&str> = sig.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert!(parts.iter().all(|p| p.starts_with("v1,")));
        assert_ne!(parts[0], parts[1]);
    }
}
