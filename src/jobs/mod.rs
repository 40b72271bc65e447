//! Background work: webhook delivery from the durable outbox, and retention.

pub mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use crate::domain::Timestamp;
use crate::http::AppState;
use crate::storage::{DynStore, Outbox};

/// Presence, as the outbox sees it (for `offline_member_ids`).
struct PresenceOutbox(Arc<crate::realtime::presence::Presence>);

impl Outbox for PresenceOutbox {
    fn is_online(&self, user: &str) -> bool {
        self.0.is_online(user)
    }
}

/// Starts what the configuration asks for: webhooks, retention.
pub fn start(state: &AppState) -> anyhow::Result<()> {
    let config = &state.config;
    if let Some(url) = &config.webhook_url {
        state
            .store
            .enable_outbox(Arc::new(PresenceOutbox(state.presence.clone())));
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let hooks = Arc::new(webhooks::Webhooks {
            url: url.clone(),
            secrets: config.webhook_secrets.clone(),
            schedule: config.webhook_retry_schedule.clone(),
            client,
        });
        tokio::spawn(webhooks::run(state.store.clone(), hooks, state.bus.clone()));
        tokio::spawn(webhooks::gauges(state.store.clone()));
    }
    // Source jobs whose node stopped are resumed from their checkpoint.
    tokio::spawn(crate::import::messenger::resume_stale(state.clone()));
    if let Some(days) = config.retention_days {
        tokio::spawn(retention(
            state.store.clone(),
            Duration::from_secs(u64::from(days) * 86_400),
            config.retention_interval,
        ));
    }
    Ok(())
}

/// Deletes what is older than the retention window, in small batches that let writers in
/// between, every `interval`.
async fn retention(store: DynStore, window: Duration, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    loop {
        tick.tick().await;
        let cutoff = Timestamp::now().0 - window.as_millis() as i64;
        loop {
            match store.purge_before(cutoff, 500).await {
                Ok(p) => {
                    metrics::counter!("confab_retention_deleted_total", "what" => "messages")
                        .increment(p.messages);
                    metrics::counter!("confab_retention_deleted_total", "what" => "changes")
                        .increment(p.changes);
                    if p.messages < 500
                        && p.conversations < u64::from(crate::storage::PURGE_CONVERSATIONS)
                        && p.changes < 500
                        && p.deliveries < 500
                    {
                        break;
                    }
                    // Let the write path in between batches.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "retention pass failed");
                    break;
                }
            }
        }
    }
}
