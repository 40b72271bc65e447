//! Request budgets: a token bucket per key (user id or client IP). Buckets idle long enough
//! to be full again are forgotten, so memory follows the active keys only.
//!
//! With Redis configured the budget is shared by every node: after the local bucket (which
//! alone already refuses a flood without a round trip), one GCRA step runs in Redis, keyed by
//! limiter and key, on Redis's clock. If Redis is away or slower than 100 ms the local bucket
//! decides alone (each node then grants the whole budget), and the connection is re-made in
//! the background.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::error::{ApiError, ApiResult};
use crate::config::RateLimit;

pub struct RateLimiter {
    limit: RateLimit,
    /// key -> (tokens left, when they were counted)
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
    shared: Option<Shared>,
}

/// The budget kept in Redis.
struct Shared {
    /// Prefix of this limiter's keys, like `confab:rl:user:`.
    prefix: String,
    client: redis::Client,
    conn: std::sync::Arc<Mutex<Option<redis::aio::MultiplexedConnection>>>,
    connecting: std::sync::Arc<AtomicBool>,
    script: redis::Script,
}

/// GCRA: `KEYS[1]` holds the theoretical arrival time in microseconds of Redis's clock;
/// `ARGV[1]` is the interval between tokens and `ARGV[2]` the burst tolerance, both in
/// microseconds. Returns 0 when admitted, else the microseconds until a token is there.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local wait = new_tat - tolerance - now
if wait > 0 then return math.ceil(wait) end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1000)
return 0
";

impl RateLimiter {
    pub fn new(limit: RateLimit) -> Self {
        RateLimiter {
            limit,
            buckets: Mutex::new(HashMap::new()),
            shared: None,
        }
    }

    /// A limiter whose budget is shared through Redis under `confab:rl:{name}:`.
    pub fn shared(limit: RateLimit, name: &str, redis_url: &str) -> anyhow::Result<Self> {
        let client =
            redis::Client::open(redis_url).map_err(|e| anyhow::anyhow!("CONFAB_REDIS_URL: {e}"))?;
        let mut l = Self::new(limit);
        l.shared = Some(Shared {
            prefix: format!("confab:rl:{name}:"),
            client,
            conn: Default::default(),
            connecting: Default::default(),
            script: redis::Script::new(GCRA),
        });
        Ok(l)
    }

    /// Starts connecting to Redis (a shared limiter), so the first requests are shared too.
    pub fn connect(&self) {
        if let Some(s) = &self.shared {
            let _ = s.connection();
        }
    }

    /// Takes one token for `key` from this node's bucket and, with Redis, from the shared one;
    /// or answers 429 with the seconds until one is there.
    pub async fn check(&self, key: &str) -> ApiResult<()> {
        self.check_local(key)?;
        match &self.shared {
            None => Ok(()),
            Some(shared) => shared.check(key, self.limit).await,
        }
    }

    /// This node's bucket only.
    pub fn check_local(&self, key: &str) -> ApiResult<()> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().expect("rate limiter lock");
        if buckets.len() > 100_000 {
            let full_after = self.limit.burst / self.limit.per_second;
            buckets.retain(|_, (_, at)| now.duration_since(*at).as_secs_f64() < full_after);
        }
        let (tokens, at) = buckets
            .entry(key.to_owned())
            .or_insert((self.limit.burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.limit.per_second)
            .min(self.limit.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - *tokens) / self.limit.per_second;
            Err(ApiError::RateLimited {
                retry_after: wait.ceil() as u64,
            })
        }
    }
}

impl Shared {
    async fn check(&self, key: &str, limit: RateLimit) -> ApiResult<()> {
        let Some(mut conn) = self.connection() else {
            return Ok(()); // Redis away: the local bucket decided
        };
        let interval = 1_000_000.0 / limit.per_second;
        let tolerance = interval * limit.burst;
        let mut call = self.script.key(format!("{}{key}", self.prefix));
        call.arg(interval).arg(tolerance);
        let answer = tokio::time::timeout(
            Duration::from_millis(100),
            call.invoke_async::<i64>(&mut conn),
        )
        .await;
        match answer {
            Ok(Ok(0)) => Ok(()),
            Ok(Ok(wait_us)) => Err(ApiError::RateLimited {
                retry_after: (wait_us as u64).div_ceil(1_000_000).max(1),
            }),
            _ => {
                metrics::counter!("confab_rate_limit_redis_errors_total").increment(1);
                *self.conn.lock().expect("limiter conn lock") = None;
                Ok(())
            }
        }
    }

    /// The connection, or `None` while one is being made (in the background).
    fn connection(&self) -> Option<redis::aio::MultiplexedConnection> {
        if let Some(c) = self.conn.lock().expect("limiter conn lock").as_ref() {
            return Some(c.clone());
        }
        if !self.connecting.swap(true, Ordering::AcqRel) {
            let (client, slot, flag) = (
                self.client.clone(),
                self.conn.clone(),
                self.connecting.clone(),
            );
            tokio::spawn(async move {
                let made = tokio::time::timeout(
                    Duration::from_secs(2),
                    client.get_multiplexed_async_connection(),
                )
                .await;
                if let Ok(Ok(c)) = made {
                    *slot.lock().expect("limiter conn lock") = Some(c);
                } else {
                    // Try again no sooner than in a second.
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                flag.store(false, Ordering::Release);
            });
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refusal() {
        let l = RateLimiter::new(RateLimit {
            per_second: 1.0,
            burst: 3.0,
        });
        for _ in 0..3 {
            l.check_local("a").unwrap();
        }
        assert!(matches!(
            l.check_local("a"),
            Err(ApiError::RateLimited { retry_after: 1 })
        ));
        l.check_local("b").unwrap();
    }
}
