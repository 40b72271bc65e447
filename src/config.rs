//! Configuration from the environment (the contract's table). Every value is checked at start;
//! a bad one is refused with one line naming the variable.

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine;

#[derive(Debug, Clone)]
pub struct Config {
    pub addr: SocketAddr,
    pub database_url: String,
    /// `None`: generated on first start and kept in the database.
    pub jwt_secret: Option<String>,
    pub redis_url: Option<String>,
    pub webhook_url: Option<String>,
    /// Decoded `whsec_` secrets (several during rotation, space-separated).
    pub webhook_secrets: Vec<Vec<u8>>,
    pub webhook_retry_schedule: Vec<Duration>,
    pub retention_days: Option<u32>,
    pub graph_api_url: String,
    pub db_timeout: Duration,
    pub rate_limit_per_user: Option<RateLimit>,
    pub rate_limit_per_ip: Option<RateLimit>,
    /// Largest number of writes committed in one transaction by the write path.
    pub max_batch: usize,
    /// Records of an import written per batch (`CONFAB_IMPORT_BATCH`, an extension): memory
    /// against per-batch overhead. Default 200,000 on SQLite (where a user or conversation
    /// record counts as two), 100,000 on PostgreSQL (`crate::import::default_batch`).
    pub import_batch: usize,
    /// Imports and Messenger syncs running at once (`CONFAB_IMPORT_JOBS`, an extension): a
    /// `POST /v1/import` over it is refused (429 with `Retry-After`), a Messenger job waits.
    pub import_jobs: usize,
    /// Tasks committing write batches (`CONFAB_WRITE_WORKERS`, an extension); `None`: 1 on
    /// SQLite (one writer), 2 on PostgreSQL (one batch runs while the previous commits).
    pub write_workers: Option<usize>,
    /// PostgreSQL connections per process (`CONFAB_DB_POOL_SIZE`, an extension).
    pub db_pool_size: u32,
    /// Origins allowed to open a socket (`CONFAB_ALLOWED_ORIGINS`); `None`: any.
    pub allowed_origins: Option<Vec<String>>,
    /// Client events per socket (`CONFAB_SOCKET_RATE_LIMIT`).
    pub socket_rate_limit: Option<RateLimit>,
    /// How long after its last socket closes a user is announced offline.
    pub presence_grace: Duration,
    /// How often retention runs (`CONFAB_RETENTION_INTERVAL`, an extension).
    pub retention_interval: Duration,
    /// How long a node holds a source job between checkpoints before another node may resume
    /// it (`CONFAB_JOB_LEASE`, an extension).
    pub job_lease: Duration,
    /// How long `POST /v1/import` waits for the next bytes of its body before it ends the
    /// import (`CONFAB_IMPORT_IDLE_TIMEOUT`, an extension): a stalled upload would hold one of
    /// the `CONFAB_IMPORT_JOBS` slots for ever.
    pub import_idle_timeout: Duration,
    /// SQLite's `synchronous` pragma (`CONFAB_SQLITE_SYNCHRONOUS`, an extension): `full`
    /// (default) or `extra`; anything lower can lose acknowledged writes and needs
    /// `allow_unsafe_durability`.
    pub sqlite_synchronous: SqliteSync,
    /// Start even on settings that can lose acknowledged writes
    /// (`CONFAB_ALLOW_UNSAFE_DURABILITY` or `--allow-unsafe-durability`).
    pub allow_unsafe_durability: bool,
}

/// SQLite's `synchronous` levels, weakest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqliteSync {
    Off,
    Normal,
    Full,
    Extra,
}

/// A token bucket: `per_second` refill, `burst` capacity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: f64,
}

#[derive(Debug, thiserror::Error)]
#[error("{var}: {message}")]
pub struct ConfigError {
    pub var: &'static str,
    pub message: String,
}

fn bad(var: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        var,
        message: message.into(),
    }
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
    }

    /// Reads configuration through `get` (a variable's value, if set).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let addr = match get("CONFAB_ADDR") {
            None => SocketAddr::from(([127, 0, 0, 1], 8080)),
            Some(v) => v
                .parse()
                .map_err(|_| bad("CONFAB_ADDR", format!("{v:?} is not a HOST:PORT address")))?,
        };
        let database_url =
            get("CONFAB_DATABASE_URL").unwrap_or_else(|| "sqlite://confab.db".into());
        if !(database_url.starts_with("sqlite:")
            || database_url.starts_with("postgres://")
            || database_url.starts_with("postgresql://"))
        {
            return Err(bad(
                "CONFAB_DATABASE_URL",
                "must start with sqlite:// or postgres://",
            ));
        }
        let jwt_secret = get("CONFAB_JWT_SECRET");
        if jwt_secret.as_ref().is_some_and(|s| s.len() < 16) {
            return Err(bad("CONFAB_JWT_SECRET", "must be at least 16 characters"));
        }
        let redis_url = get("CONFAB_REDIS_URL");
        if let Some(r) = &redis_url
            && !(r.starts_with("redis://") || r.starts_with("rediss://"))
        {
            return Err(bad(
                "CONFAB_REDIS_URL",
                "must start with redis:// or rediss://",
            ));
        }
        let webhook_url = get("CONFAB_WEBHOOK_URL");
        if let Some(u) = &webhook_url
            && !(u.starts_with("http://") || u.starts_with("https://"))
        {
            return Err(bad(
                "CONFAB_WEBHOOK_URL",
                "must be an http:// or https:// URL",
            ));
        }
        let webhook_secrets = match get("CONFAB_WEBHOOK_SECRET") {
            None => Vec::new(),
            Some(v) => v
                .split_whitespace()
                .map(|s| {
                    let b64 = s.strip_prefix("whsec_").ok_or_else(|| {
                        bad(
                            "CONFAB_WEBHOOK_SECRET",
                            "each secret must start with whsec_",
                        )
                    })?;
                    base64::engine::general_purpose::STANDARD
                        .decode(b64)
                        .map_err(|_| {
                            bad("CONFAB_WEBHOOK_SECRET", "whsec_ must be followed by base64")
                        })
                })
                .collect::<Result<_, _>>()?,
        };
        if webhook_url.is_some() && webhook_secrets.is_empty() {
            return Err(bad(
                "CONFAB_WEBHOOK_SECRET",
                "is required when CONFAB_WEBHOOK_URL is set",
            ));
        }
        let webhook_retry_schedule = match get("CONFAB_WEBHOOK_RETRY_SCHEDULE") {
            None => "5s,5m,30m,2h,5h,10h,10h"
                .split(',')
                .map(|d| parse_duration(d).expect("default schedule parses"))
                .collect(),
            Some(v) => v
                .split(',')
                .map(|d| {
                    parse_duration(d.trim()).ok_or_else(|| {
                        bad(
                            "CONFAB_WEBHOOK_RETRY_SCHEDULE",
                            format!("{d:?} is not a duration like 5s, 5m or 2h"),
                        )
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        let retention_days = match get("CONFAB_RETENTION_DAYS") {
            None => None,
            Some(v) => Some(v.parse::<u32>().ok().filter(|d| *d > 0).ok_or_else(|| {
                bad(
                    "CONFAB_RETENTION_DAYS",
                    "must be a whole number of days ≥ 1",
                )
            })?),
        };
        let graph_api_url = get("CONFAB_GRAPH_API_URL")
            .unwrap_or_else(|| "https://graph.facebook.com/v19.0".into())
            .trim_end_matches('/')
            .to_owned();
        if !graph_api_url.starts_with("http") {
            return Err(bad("CONFAB_GRAPH_API_URL", "must be an http(s) URL"));
        }
        let db_timeout = match get("CONFAB_DB_TIMEOUT") {
            None => Duration::from_secs(5),
            Some(v) => parse_duration(&v).filter(|d| !d.is_zero()).ok_or_else(|| {
                bad(
                    "CONFAB_DB_TIMEOUT",
                    format!("{v:?} is not a duration like 5s or 500ms"),
                )
            })?,
        };
        let rate_limit_per_user = parse_rate(
            "CONFAB_RATE_LIMIT_PER_USER",
            get("CONFAB_RATE_LIMIT_PER_USER")
                .as_deref()
                .unwrap_or("50/s burst 100"),
        )?;
        let rate_limit_per_ip = parse_rate(
            "CONFAB_RATE_LIMIT_PER_IP",
            get("CONFAB_RATE_LIMIT_PER_IP")
                .as_deref()
                .unwrap_or("200/s burst 400"),
        )?;
        let max_batch = match get("CONFAB_MAX_BATCH") {
            None => 256,
            Some(v) => v
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=10_000).contains(n))
                .ok_or_else(|| bad("CONFAB_MAX_BATCH", "must be a number from 1 to 10000"))?,
        };
        let import_batch = match get("CONFAB_IMPORT_BATCH") {
            None => crate::import::default_batch(&database_url),
            Some(v) => v
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=1_000_000).contains(n))
                .ok_or_else(|| bad("CONFAB_IMPORT_BATCH", "must be a number from 1 to 1000000"))?,
        };
        let import_jobs = match get("CONFAB_IMPORT_JOBS") {
            None => DEFAULT_IMPORT_JOBS,
            Some(v) => v
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=64).contains(n))
                .ok_or_else(|| bad("CONFAB_IMPORT_JOBS", "must be a number from 1 to 64"))?,
        };
        let write_workers = match get("CONFAB_WRITE_WORKERS") {
            None => None,
            Some(v) => Some(
                v.parse::<usize>()
                    .ok()
                    .filter(|n| (1..=64).contains(n))
                    .ok_or_else(|| bad("CONFAB_WRITE_WORKERS", "must be a number from 1 to 64"))?,
            ),
        };
        let db_pool_size = match get("CONFAB_DB_POOL_SIZE") {
            None => 32,
            Some(v) => v
                .parse::<u32>()
                .ok()
                .filter(|n| (2..=1000).contains(n))
                .ok_or_else(|| bad("CONFAB_DB_POOL_SIZE", "must be a number from 2 to 1000"))?,
        };
        let allowed_origins = match get("CONFAB_ALLOWED_ORIGINS").as_deref().map(str::trim) {
            None | Some("*") => None,
            Some(v) => {
                let list: Vec<String> = v
                    .split(',')
                    .map(|o| o.trim().trim_end_matches('/').to_owned())
                    .filter(|o| !o.is_empty())
                    .collect();
                if list
                    .iter()
                    .any(|o| !(o.starts_with("http://") || o.starts_with("https://")))
                {
                    return Err(bad(
                        "CONFAB_ALLOWED_ORIGINS",
                        "must be * or a comma-separated list of origins like https://app.example.com",
                    ));
                }
                Some(list)
            }
        };
        let socket_rate_limit = parse_rate(
            "CONFAB_SOCKET_RATE_LIMIT",
            get("CONFAB_SOCKET_RATE_LIMIT")
                .as_deref()
                .unwrap_or("20/s burst 40"),
        )?;
        let presence_grace = match get("CONFAB_PRESENCE_GRACE") {
            None => Duration::from_secs(3),
            Some(v) => parse_duration(&v)
                .filter(|d| *d <= Duration::from_secs(5))
                .ok_or_else(|| bad("CONFAB_PRESENCE_GRACE", "must be a duration of at most 5s"))?,
        };
        let retention_interval = match get("CONFAB_RETENTION_INTERVAL") {
            None => Duration::from_secs(3600),
            Some(v) => parse_duration(&v).filter(|d| !d.is_zero()).ok_or_else(|| {
                bad(
                    "CONFAB_RETENTION_INTERVAL",
                    "must be a duration like 10m or 1h",
                )
            })?,
        };
        let job_lease = match get("CONFAB_JOB_LEASE") {
            None => Duration::from_secs(30),
            Some(v) => parse_duration(&v)
                .filter(|d| *d >= Duration::from_secs(1))
                .ok_or_else(|| bad("CONFAB_JOB_LEASE", "must be a duration of at least 1s"))?,
        };
        let import_idle_timeout = match get("CONFAB_IMPORT_IDLE_TIMEOUT") {
            None => Duration::from_secs(60),
            Some(v) => parse_duration(&v).filter(|d| !d.is_zero()).ok_or_else(|| {
                bad(
                    "CONFAB_IMPORT_IDLE_TIMEOUT",
                    "must be a duration such as 60s",
                )
            })?,
        };
        let sqlite_synchronous = match get("CONFAB_SQLITE_SYNCHRONOUS").as_deref() {
            None | Some("full") => SqliteSync::Full,
            Some("extra") => SqliteSync::Extra,
            Some("normal") => SqliteSync::Normal,
            Some("off") => SqliteSync::Off,
            Some(_) => {
                return Err(bad(
                    "CONFAB_SQLITE_SYNCHRONOUS",
                    "must be one of full, extra, normal, off",
                ));
            }
        };
        let allow_unsafe_durability = match get("CONFAB_ALLOW_UNSAFE_DURABILITY").as_deref() {
            None | Some("false") | Some("0") => false,
            Some("true") | Some("1") => true,
            Some(_) => {
                return Err(bad(
                    "CONFAB_ALLOW_UNSAFE_DURABILITY",
                    "must be true or false",
                ));
            }
        };
        Ok(Config {
            sqlite_synchronous,
            allow_unsafe_durability,
            addr,
            retention_interval,
            job_lease,
            import_idle_timeout,
            db_pool_size,
            allowed_origins,
            socket_rate_limit,
            presence_grace,
            database_url,
            jwt_secret,
            redis_url,
            webhook_url,
            webhook_secrets,
            webhook_retry_schedule,
            retention_days,
            graph_api_url,
            db_timeout,
            rate_limit_per_user,
            rate_limit_per_ip,
            max_batch,
            import_batch,
            import_jobs,
            write_workers,
        })
    }
}

/// Imports and Messenger syncs at once by default: on 2 cores two of them already keep the
/// database busy, and live traffic goes between their batches.
pub const DEFAULT_IMPORT_JOBS: usize = 2;

/// `500ms`, `5s`, `5m`, `2h`, `1d`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" | "min" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        "d" => Duration::from_secs(n * 86400),
        _ => return None,
    })
}

/// `0` (off), `N/s` or `N/min`, optionally followed by `burst M` (default: twice the
/// per-second rate, at least 1).
fn parse_rate(var: &'static str, v: &str) -> Result<Option<RateLimit>, ConfigError> {
    let v = v.trim();
    if v == "0" {
        return Ok(None);
    }
    let err = || {
        bad(
            var,
            format!("{v:?} is not a rate like 50/s, 600/min or 50/s burst 100"),
        )
    };
    let mut parts = v.split_whitespace();
    let rate = parts.next().ok_or_else(err)?;
    let (n, unit) = rate.split_once('/').ok_or_else(err)?;
    let n: f64 = n.parse().map_err(|_| err())?;
    let per_second = match unit {
        "s" => n,
        "min" | "m" => n / 60.0,
        _ => return Err(err()),
    };
    if per_second <= 0.0 {
        return Ok(None);
    }
    let burst = match (parts.next(), parts.next()) {
        (None, _) => (per_second * 2.0).max(1.0),
        (Some("burst"), Some(b)) => b
            .parse::<f64>()
            .ok()
            .filter(|b| *b >= 1.0)
            .ok_or_else(err)?,
        _ => return Err(err()),
    };
    Ok(Some(RateLimit { per_second, burst }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn with(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_are_the_contracts() {
        let c = with(&[]).unwrap();
        assert_eq!(c.addr.to_string(), "127.0.0.1:8080");
        assert_eq!(c.database_url, "sqlite://confab.db");
        assert_eq!(c.db_timeout, Duration::from_secs(5));
        assert_eq!(c.webhook_retry_schedule.len(), 7);
        assert_eq!(c.webhook_retry_schedule[1], Duration::from_secs(300));
        assert_eq!(c.import_batch, 200_000, "SQLite's");
        let pg = with(&[("CONFAB_DATABASE_URL", "postgres://127.0.0.1/x")]).unwrap();
        assert_eq!(pg.import_batch, 100_000);
        assert_eq!(c.import_jobs, 2);
        assert_eq!(c.import_idle_timeout, Duration::from_secs(60));
        assert_eq!(
            c.rate_limit_per_user,
            Some(RateLimit {
                per_second: 50.0,
                burst: 100.0
            })
        );
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (var, val) in [
            ("CONFAB_ADDR", "nope"),
            ("CONFAB_DATABASE_URL", "mysql://x"),
            ("CONFAB_DB_TIMEOUT", "soon"),
            ("CONFAB_RATE_LIMIT_PER_IP", "fast"),
            ("CONFAB_WEBHOOK_RETRY_SCHEDULE", "5s,later"),
            ("CONFAB_RETENTION_DAYS", "-1"),
            ("CONFAB_WEBHOOK_SECRET", "nope"),
            ("CONFAB_IMPORT_BATCH", "0"),
            ("CONFAB_IMPORT_JOBS", "0"),
            ("CONFAB_IMPORT_IDLE_TIMEOUT", "0s"),
        ] {
            let e = with(&[(var, val)]).unwrap_err();
            assert_eq!(e.var, var);
            assert!(e.to_string().starts_with(var), "{e}");
        }
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("X", "0").unwrap(), None);
        assert_eq!(
            parse_rate("X", "600/min").unwrap(),
            Some(RateLimit {
                per_second: 10.0,
                burst: 20.0
            })
        );
        assert_eq!(
            parse_rate("X", "5/s burst 7").unwrap(),
            Some(RateLimit {
                per_second: 5.0,
                burst: 7.0
            })
        );
    }
}
