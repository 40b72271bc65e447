//! A fake of the app's webhook receiver: a real HTTP server that verifies every delivery with
//! a Standard Webhooks verifier written here from the specification (not the server's code),
//! records what it got, and answers as the test tells it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

/// The receiver's secret, as the server is configured with it (`whsec_` + base64).
pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// An older secret still configured on the server during a rotation.
pub const OLD_SECRET: &str = "whsec_b2xkLXNlY3JldC1vbGQtc2VjcmV0LW9sZA==";

#[derive(Debug, Clone)]
pub struct Received {
    pub id: String,
    pub body: Value,
}

#[derive(Default)]
struct Inner {
    /// Accepted deliveries, in arrival order.
    accepted: Vec<Received>,
    /// Attempts per webhook-id (accepted or not).
    attempts: HashMap<String, u32>,
    /// Fail the first N attempts of each id; `u32::MAX`: always.
    fail_first: u32,
    /// Signatures that did not verify (must stay empty).
    bad: Vec<String>,
}

#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    inner: Arc<Mutex<Inner>>,
}

/// Verifies per the Standard Webhooks spec: any `v1,` signature in the space-separated list
/// must equal base64(HMAC-SHA256(secret, "{id}.{timestamp}.{body}")); the timestamp must be
/// within five minutes.
pub fn verify(secret: &str, headers: &HeaderMap, body: &[u8]) -> Result<String, String> {
    let get = |h: &str| {
        headers
            .get(h)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or(format!("missing {h}"))
    };
    let id = get("webhook-id")?;
    let ts = get("webhook-timestamp")?;
    let sigs = get("webhook-signature")?;
    let ts_num: i64 = ts.parse().map_err(|_| "bad timestamp")?;
    if (chrono::Utc::now().timestamp() - ts_num).abs() > 300 {
        return Err("timestamp out of tolerance".into());
    }
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(ts.as_bytes());
    mac.update(b".");
    mac.update(body);
    let expected = mac.finalize().into_bytes();
    for sig in sigs.split(' ') {
        let Some(b64) = sig.strip_prefix("v1,") else {
            continue;
        };
        if let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(b64) {
            let mut check = Hmac::<Sha256>::new_from_slice(&key).unwrap();
            check.update(format!("{id}.{ts}.").as_bytes());
            check.update(body);
            if raw.len() == expected.len() && check.verify_slice(&raw).is_ok() {
                return Ok(id);
            }
        }
    }
    Err(format!("no signature of {sigs} verifies"))
}

async fn handle(
    State(inner): State<Arc<Mutex<Inner>>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let mut inner = inner.lock().unwrap();
    let id = match verify(SECRET, &headers, &body) {
        Ok(id) => id,
        Err(e) => {
            inner.bad.push(e);
            return StatusCode::BAD_REQUEST;
        }
    };
    let n = inner.attempts.entry(id.clone()).or_default();
    *n += 1;
    if *n <= inner.fail_first {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    let body: Value = serde_json::from_slice(&body).unwrap();
    inner.accepted.push(Received { id, body });
    StatusCode::NO_CONTENT
}

impl Receiver {
    pub async fn start() -> Receiver {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let app = axum::Router::new()
            .route("/hooks", axum::routing::post(handle))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hooks", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver { url, inner }
    }

    /// The secrets the server is configured with: the old one first (rotation).
    pub fn server_secrets() -> String {
        format!("{OLD_SECRET} {SECRET}")
    }

    pub fn fail_first(&self, n: u32) {
        self.inner.lock().unwrap().fail_first = n;
    }

    pub fn attempts(&self, id: &str) -> u32 {
        self.inner
            .lock()
            .unwrap()
            .attempts
            .get(id)
            .copied()
            .unwrap_or(0)
    }

    pub fn accepted(&self) -> Vec<Received> {
        let inner = self.inner.lock().unwrap();
        assert!(
            inner.bad.is_empty(),
            "deliveries that did not verify: {:?}",
            inner.bad
        );
        inner.accepted.clone()
    }

    /// Waits until `pred` holds of the accepted deliveries.
    pub async fn wait_for(&self, what: &str, pred: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        self.wait_for_within(what, Duration::from_secs(15), pred)
            .await
    }

    /// `wait_for`, up to `limit`.
    pub async fn wait_for_within(
        &self,
        what: &str,
        limit: Duration,
        pred: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        for _ in 0..limit.as_millis() / 50 {
            let got = self.accepted();
            if pred(&got) {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("receiver never got {what}: {:?}", self.accepted());
    }
}
