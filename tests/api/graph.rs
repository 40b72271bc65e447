//! A fake of the Facebook Graph API (we cannot reach the real one): a real HTTP server speaking
//! Graph's wire format: `data` lists with `paging.cursors.{before,after}` and `paging.next`,
//! error objects `{"error": {"message", "type", "code", "fbtrace_id"}}`, `+0000` timestamps.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

pub const PAGE: &str = "1122334455";
pub const TOKEN: &str = "EAAG-valid-page-token";

pub struct Fake {
    /// Conversations: (thread id, customer id, customer name, message count).
    threads: Vec<(String, String, String, usize)>,
    /// Rate-limit errors to answer to message requests before serving them normally, Graph's
    /// four codes in turn (4, 17, 32, 613).
    pub rate_limits: AtomicU32,
    /// Temporary failures to answer to message requests next, in turn: Graph's code 2 (HTTP
    /// 500, `is_transient`) and a bare HTTP 503 that is not Graph's error object.
    pub temporary: AtomicU32,
    /// Every page's `next` points at the page itself (a misbehaving Graph or proxy).
    pub stuck: std::sync::atomic::AtomicBool,
    /// Delay per request (to kill a server mid-job).
    pub delay_ms: AtomicU64,
    pub requests: AtomicU64,
    /// Message pages served per thread (to check paging was followed).
    pub served: Mutex<HashMap<String, usize>>,
    base: Mutex<String>,
}

fn graph_error(status: StatusCode, code: i64, message: &str, kind: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": {"message": message, "type": kind, "code": code, "fbtrace_id": "AbCdEf123"}})),
    )
        .into_response()
}

fn time(i: usize) -> String {
    chrono::DateTime::from_timestamp(1_700_000_000 + i as i64 * 60, 0)
        .unwrap()
        .format("%Y-%m-%dT%H:%M:%S+0000")
        .to_string()
}

impl Fake {
    /// Starts the fake with `n` conversations of `per` messages each (some with more than a
    /// page of messages when `per` > 100); returns it and its base URL.
    pub async fn start(n: usize, per: usize) -> (Arc<Fake>, String) {
        let threads = (0..n)
            .map(|i| {
                (
                    format!("t_{i}"),
                    format!("{}", 9_000_000 + i),
                    format!("Customer {i}"),
                    per,
                )
            })
            .collect();
        let fake = Arc::new(Fake {
            threads,
            rate_limits: AtomicU32::new(0),
            temporary: AtomicU32::new(0),
            stuck: Default::default(),
            delay_ms: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            served: Mutex::new(HashMap::new()),
            base: Mutex::new(String::new()),
        });
        let app = axum::Router::new()
            .route(
                "/v19.0/{node}/conversations",
                axum::routing::get(conversations),
            )
            .route("/v19.0/{node}/messages", axum::routing::get(messages))
            .with_state(fake.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}/v19.0", listener.local_addr().unwrap());
        *fake.base.lock().unwrap() = base.clone();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (fake, base)
    }

    /// Checks the token (after the delay); `Some` is the error to answer.
    async fn gate(&self, q: &HashMap<String, String>) -> Option<Response> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        let delay = self.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if q.get("access_token").map(String::as_str) != Some(TOKEN) {
            return Some(graph_error(
                StatusCode::BAD_REQUEST,
                190,
                "Error validating access token: Session has expired.",
                "OAuthException",
            ));
        }
        None
    }

    /// The next rate-limit or temporary error to answer, if any are left. Only message
    /// requests get them: those run many at once, so each failed one is retried once after
    /// the job's first backoff, not one request through a growing backoff.
    fn failure(&self) -> Option<Response> {
        if let Ok(left) = self
            .rate_limits
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        {
            let (code, message) = [
                (4, "(#4) Application request limit reached"),
                (17, "(#17) User request limit reached"),
                (32, "(#32) Page request limit reached"),
                (
                    613,
                    "(#613) Calls to this api have exceeded the rate limit.",
                ),
            ][left as usize % 4];
            return Some(graph_error(
                StatusCode::FORBIDDEN,
                code,
                message,
                "OAuthException",
            ));
        }
        if let Ok(left) = self
            .temporary
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        {
            if left % 2 == 0 {
                return Some(
                    (StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable").into_response(),
                );
            }
            return Some(
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    axum::Json(json!({"error": {
                        "message": "An unexpected error has occurred. Please retry your request later.",
                        "type": "OAuthException", "is_transient": true, "code": 2,
                        "fbtrace_id": "AbCdEf123"}})),
                )
                    .into_response(),
            );
        }
        None
    }

    fn page<T: serde::Serialize>(
        &self,
        path: &str,
        items: Vec<T>,
        offset: usize,
        limit: usize,
        total: usize,
        q: &HashMap<String, String>,
    ) -> Value {
        let end = offset + items.len();
        let mut paging = json!({"cursors": {"before": b64(offset), "after": b64(end.saturating_sub(1).max(offset))}});
        if end < total {
            let after = if self.stuck.load(Ordering::SeqCst) {
                offset
            } else {
                end
            };
            paging["cursors"]["after"] = json!(b64(after));
            let mut next = format!(
                "{}/{path}?limit={limit}&after={}",
                self.base.lock().unwrap(),
                b64(after)
            );
            for (k, v) in q {
                if k != "after" && k != "limit" {
                    next.push_str(&format!("&{k}={v}"));
                }
            }
            paging["next"] = json!(next);
        }
        json!({"data": items, "paging": paging})
    }
}

fn b64(n: usize) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(format!("offset:{n}"))
}

fn unb64(s: &str) -> usize {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.strip_prefix("offset:").and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

async fn conversations(
    State(f): State<Arc<Fake>>,
    Path(node): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(e) = f.gate(&q).await {
        return e;
    }
    if node != PAGE {
        return graph_error(
            StatusCode::BAD_REQUEST,
            100,
            "Unsupported get request.",
            "GraphMethodException",
        );
    }
    if q.get("platform").map(String::as_str) != Some("messenger") {
        return graph_error(
            StatusCode::BAD_REQUEST,
            100,
            "platform is required",
            "GraphMethodException",
        );
    }
    let limit = q
        .get("limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(25usize)
        .min(100);
    let offset = q.get("after").map(|a| unb64(a)).unwrap_or(0);
    let items: Vec<Value> = f
        .threads
        .iter()
        .skip(offset)
        .take(limit)
        .map(|(id, customer, name, _)| {
            json!({
                "id": id,
                "updated_time": time(0),
                "participants": {"data": [
                    {"name": name, "email": format!("{customer}@facebook.com"), "id": customer},
                    {"name": "Salt Academy", "email": format!("{PAGE}@facebook.com"), "id": PAGE},
                ]},
            })
        })
        .collect();
    axum::Json(f.page(
        &format!("{PAGE}/conversations"),
        items,
        offset,
        limit,
        f.threads.len(),
        &q,
    ))
    .into_response()
}

async fn messages(
    State(f): State<Arc<Fake>>,
    Path(node): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(e) = f.gate(&q).await.or_else(|| f.failure()) {
        return e;
    }
    let Some((_, customer, name, count)) = f.threads.iter().find(|t| t.0 == node).cloned() else {
        return graph_error(
            StatusCode::BAD_REQUEST,
            100,
            "Unsupported get request.",
            "GraphMethodException",
        );
    };
    *f.served.lock().unwrap().entry(node.clone()).or_default() += 1;
    let limit = q
        .get("limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(25usize)
        .min(100);
    let offset = q.get("after").map(|a| unb64(a)).unwrap_or(0);
    // Graph lists newest first.
    let items: Vec<Value> = (0..count)
        .rev()
        .skip(offset)
        .take(limit)
        .map(|i| {
            let (from, from_name) = if i % 2 == 0 {
                (customer.clone(), name.clone())
            } else {
                (PAGE.to_owned(), "Salt Academy".to_owned())
            };
            let mut m = json!({
                "id": format!("m_{node}_{i}"),
                "message": format!("message {i} of {node}"),
                "from": {"name": from_name, "email": format!("{from}@facebook.com"), "id": from},
                "to": {"data": [{"name": "x", "id": "y"}]},
                "created_time": time(i),
            });
            // As Graph sends a photo, a sticker, and a message with neither text nor a file:
            // `message` empty.
            match i % 5 {
                2 => {
                    m["message"] = json!("");
                    m["attachments"] = json!({"data": [{
                        "id": format!("att_{node}_{i}"), "mime_type": "image/jpeg",
                        "name": format!("photo_{i}.jpg"), "size": 20480,
                        "image_data": {"width": 640, "height": 480,
                            "url": format!("https://scontent.example/{node}/{i}.jpg"),
                            "preview_url": format!("https://scontent.example/{node}/{i}_s.jpg")},
                    }], "paging": {"cursors": {"before": "QQ==", "after": "QQ=="}}});
                }
                3 => {
                    m["message"] = json!("");
                    m["sticker"] = json!(format!("https://scontent.example/sticker/{i}.png"));
                }
                4 if i % 10 == 9 => {
                    m["message"] = json!("");
                }
                _ => {}
            }
            m
        })
        .collect();
    axum::Json(f.page(&format!("{node}/messages"), items, offset, limit, count, &q)).into_response()
}
