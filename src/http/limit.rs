//! Request budgets: a token bucket per key (user id or client IP). Buckets idle long enough
//! to be full again are forgotten, so memory follows the active keys only.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use super::error::{ApiError, ApiResult};
use crate::config::RateLimit;

pub struct RateLimiter {
    limit: RateLimit,
    /// key -> (tokens left, when they were counted)
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    pub fn new(limit: RateLimit) -> Self {
        RateLimiter {
            limit,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `key`, or answers 429 with the seconds until one is there.
    pub fn check(&self, key: &str) -> ApiResult<()> {
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
            l.check("a").unwrap();
        }
        assert!(matches!(
            l.check("a"),
            Err(ApiError::RateLimited { retry_after: 1 })
        ));
        l.check("b").unwrap();
    }
}
