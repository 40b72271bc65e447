//! The `fanout` scenario: C Socket.IO connections in groups of G, messages published at R per
//! second into random groups over REST, and the latency from the send to each receipt.
//!
//! The client speaks Engine.IO 4 / Socket.IO 5 over a WebSocket itself (open packet, `40` with
//! the auth token, `2`/`3` heartbeats, `42` events): a 4 KiB read buffer per connection keeps
//! ten thousand of them in one process cheap, and a receipt is timed by finding the send's
//! timestamp in the frame without parsing the whole event.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// What the scenario needs to know.
pub struct Fanout {
    pub url: String,
    /// A server token (users and groups are created with it).
    pub token: String,
    /// The server's JWT secret, to make each connection's user token.
    pub jwt_secret: String,
    pub connections: usize,
    pub group: usize,
    /// Messages per second, all groups together.
    pub rate: f64,
    pub duration: Duration,
    /// The server's process id, for its memory and CPU time.
    pub server_pid: Option<u32>,
}

/// What it measured.
pub struct FanoutReport {
    pub sent: u64,
    pub send_errors: u64,
    pub expected: u64,
    pub received: u64,
    pub seconds: f64,
    /// Latencies send -> receipt, microseconds, sorted.
    pub latencies_us: Vec<u32>,
    /// Server RSS growth per idle connection, KiB.
    pub kib_per_connection: Option<f64>,
    /// Server CPU seconds during the publish phase.
    pub server_cpu_s: Option<f64>,
    /// Server peak RSS (VmHWM), MiB.
    pub server_peak_rss_mib: Option<f64>,
    pub connect_seconds: f64,
}

impl FanoutReport {
    pub fn deliveries_per_second(&self) -> f64 {
        self.received as f64 / self.seconds
    }

    pub fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        let i = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        self.latencies_us[i] as f64 / 1000.0
    }

    pub fn json(&self) -> Value {
        json!({
            "scenario": "fanout",
            "sent": self.sent,
            "send_errors": self.send_errors,
            "expected_deliveries": self.expected,
            "deliveries": self.received,
            "seconds": self.seconds,
            "deliveries_per_second": self.deliveries_per_second(),
            "p50_ms": self.percentile_ms(0.50),
            "p95_ms": self.percentile_ms(0.95),
            "p99_ms": self.percentile_ms(0.99),
            "max_ms": self.percentile_ms(1.0),
            "server_kib_per_idle_connection": self.kib_per_connection,
            "server_cpu_s": self.server_cpu_s,
            "server_peak_rss_mib": self.server_peak_rss_mib,
            "connect_seconds": self.connect_seconds,
        })
    }
}

/// Microseconds since the Unix epoch (sender and receivers share this process's clock).
fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// A process's resident set (`VmRSS`) or peak (`VmHWM`), KiB.
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// A process's user + system CPU time, seconds.
pub fn proc_cpu_seconds(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

impl Fanout {
    pub async fn run(&self) -> anyhow::Result<FanoutReport> {
        if self.group < 2 || self.connections < self.group {
            bail!("need at least one group of two: --connections >= --group >= 2");
        }
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .build()?;
        let run = rand::rng().random_range(0..1_000_000u32);
        let user = |i: usize| format!("fo{run}_{i}");
        let groups = self.connections / self.group;
        let connections = groups * self.group;
        // Users, in batches.
        for chunk in (0..connections).collect::<Vec<_>>().chunks(500) {
            let users: Vec<Value> = chunk
                .iter()
                .map(|i| json!({"id": user(*i), "name": user(*i)}))
                .collect();
            let r = http
                .put(format!("{}/v1/users", self.url))
                .bearer_auth(&self.token)
                .json(&json!({ "users": users }))
                .send()
                .await?;
            if !r.status().is_success() {
                bail!("creating users: {} {}", r.status(), r.text().await?);
            }
        }
        // Groups: connection i is in group i / G.
        let mut conversations = Vec::with_capacity(groups);
        for g in 0..groups {
            let first = g * self.group;
            let members: Vec<String> = (first + 1..first + self.group).map(user).collect();
            let r = http
                .post(format!("{}/v1/conversations?as={}", self.url, user(first)))
                .bearer_auth(&self.token)
                .json(&json!({"type": "group", "member_ids": members}))
                .send()
                .await?;
            if !r.status().is_success() {
                bail!("creating a group: {} {}", r.status(), r.text().await?);
            }
            let c: Value = r.json().await?;
            conversations.push(c["id"].as_str().context("conversation id")?.to_owned());
        }

        let rss_before = self.server_pid.and_then(|p| proc_status_kib(p, "VmRSS"));
        let keys = confab::auth::Keys::new(&self.jwt_secret);
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicU64::new(0));
        let connected = Arc::new(AtomicU64::new(0));
        let connect_started = Instant::now();
        let ws_url = format!(
            "{}/socket.io/?EIO=4&transport=websocket",
            self.url.replacen("http", "ws", 1)
        );
        let addr = self
            .url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        // Connect in waves so the server's accept queue is never overrun.
        let gate = Arc::new(tokio::sync::Semaphore::new(200));
        let failure: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
        let mut tasks = Vec::with_capacity(connections);
        for i in 0..connections {
            let token = keys.user_token(&user(i), Duration::from_secs(3600));
            let (ws_url, addr, gate) = (ws_url.clone(), addr.clone(), gate.clone());
            let (stop, received, connected, failure) = (
                stop.clone(),
                received.clone(),
                connected.clone(),
                failure.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let permit = gate.acquire_owned().await.ok();
                let socket = connect(&ws_url, &addr, &token).await;
                drop(permit);
                match socket {
                    Ok(socket) => {
                        connected.fetch_add(1, Ordering::Relaxed);
                        listen(socket, stop, received).await
                    }
                    Err(e) => {
                        failure
                            .lock()
                            .expect("failure lock")
                            .get_or_insert(format!("{e:#}"));
                        Vec::new()
                    }
                }
            }));
        }
        while (connected.load(Ordering::Relaxed) as usize) < connections {
            if let Some(e) = failure.lock().expect("failure lock").clone() {
                stop.store(true, Ordering::Relaxed);
                bail!("a connection failed: {e}");
            }
            if connect_started.elapsed() > Duration::from_secs(120) {
                bail!(
                    "only {} of {connections} connections after 120 s",
                    connected.load(Ordering::Relaxed)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let connect_seconds = connect_started.elapsed().as_secs_f64();
        // Idle for a moment, then the server's memory per connection.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss_idle = self.server_pid.and_then(|p| proc_status_kib(p, "VmRSS"));
        let kib_per_connection = match (rss_before, rss_idle) {
            (Some(a), Some(b)) => Some((b as f64 - a as f64) / connections as f64),
            _ => None,
        };

        // Publish at the rate: each message goes to a random group, from a random member.
        let cpu_before = self.server_pid.and_then(proc_cpu_seconds);
        let sent = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let inflight = Arc::new(tokio::sync::Semaphore::new(64));
        let started = Instant::now();
        let total = (self.rate * self.duration.as_secs_f64()).round() as u64;
        let mut sends = Vec::new();
        for k in 0..total {
            let due = started + Duration::from_secs_f64(k as f64 / self.rate);
            tokio::time::sleep_until(due.into()).await;
            let g = rand::rng().random_range(0..groups);
            let from = user(g * self.group + rand::rng().random_range(0..self.group));
            let url = format!(
                "{}/v1/conversations/{}/messages?as={from}",
                self.url, conversations[g]
            );
            let permit = inflight.clone().acquire_owned().await?;
            let (http, token, sent, errors) = (
                http.clone(),
                self.token.clone(),
                sent.clone(),
                errors.clone(),
            );
            sends.push(tokio::spawn(async move {
                let body =
                    json!({"client_id": format!("f{k}"), "text": format!("fb:{}:", now_us())});
                let ok = http
                    .post(url)
                    .bearer_auth(token)
                    .json(&body)
                    .send()
                    .await
                    .map(|r| r.status().is_success())
                    .unwrap_or(false);
                drop(permit);
                if ok {
                    sent.fetch_add(1, Ordering::Relaxed);
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        for s in sends {
            let _ = s.await;
        }
        let expected = sent.load(Ordering::Relaxed) * self.group as u64;
        // Drain: wait until every delivery arrived, or two quiet seconds.
        let mut last = (received.load(Ordering::Relaxed), Instant::now());
        while received.load(Ordering::Relaxed) < expected {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let now = received.load(Ordering::Relaxed);
            if now != last.0 {
                last = (now, Instant::now());
            } else if last.1.elapsed() > Duration::from_secs(2) {
                break;
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        let cpu_after = self.server_pid.and_then(proc_cpu_seconds);
        stop.store(true, Ordering::Relaxed);
        let mut latencies_us = Vec::new();
        for t in tasks {
            if let Ok(mut l) = t.await {
                latencies_us.append(&mut l);
            }
        }
        latencies_us.sort_unstable();
        Ok(FanoutReport {
            sent: sent.load(Ordering::Relaxed),
            send_errors: errors.load(Ordering::Relaxed),
            expected,
            received: received.load(Ordering::Relaxed),
            seconds,
            latencies_us,
            kib_per_connection,
            server_cpu_s: cpu_before.zip(cpu_after).map(|(a, b)| b - a),
            server_peak_rss_mib: self
                .server_pid
                .and_then(|p| proc_status_kib(p, "VmHWM"))
                .map(|k| k as f64 / 1024.0),
            connect_seconds,
        })
    }
}

type Socket = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// Opens a WebSocket and joins the default namespace with `token`.
async fn connect(ws_url: &str, addr: &str, token: &str) -> anyhow::Result<Socket> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(ws_url, tcp, Some(config))
        .await
        .context("WebSocket handshake")?;
    // Engine.IO open packet, then the Socket.IO connect with auth.
    match ws.next().await {
        Some(Ok(Frame::Text(t))) if t.starts_with('0') => {}
        other => bail!("expected the Engine.IO open packet, got {other:?}"),
    }
    ws.send(Frame::text(format!("40{}", json!({ "token": token }))))
        .await?;
    loop {
        match ws.next().await {
            Some(Ok(Frame::Text(t))) if t.starts_with("40") => return Ok(ws),
            Some(Ok(Frame::Text(t))) if t.starts_with("44") => bail!("connect_error: {t}"),
            Some(Ok(Frame::Text(t))) if t.as_str() == "2" => ws.send(Frame::text("3")).await?,
            Some(Ok(_)) => {}
            other => bail!("closed while connecting: {other:?}"),
        }
    }
}

/// Answers heartbeats and times every `message.new` until `stop`; returns the latencies.
async fn listen(mut ws: Socket, stop: Arc<AtomicBool>, received: Arc<AtomicU64>) -> Vec<u32> {
    let mut latencies = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            frame = ws.next() => match frame {
                Some(Ok(Frame::Text(t))) => {
                    if t.as_str() == "2" {
                        if ws.send(Frame::text("3")).await.is_err() {
                            break;
                        }
                    } else if t.starts_with("42[\"message.new\"")
                        && let Some(sent) = sent_at(t.as_str())
                    {
                        let now = now_us();
                        latencies.push(now.saturating_sub(sent).min(u32::MAX as u64) as u32);
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Some(Ok(_)) => {}
                _ => break,
            },
            _ = tick.tick() => {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
            }
        }
    }
    let _ = ws.close(None).await;
    latencies
}

/// The send timestamp the publisher put in the text: `fb:{micros}:`.
fn sent_at(frame: &str) -> Option<u64> {
    let i = frame.find("fb:")? + 3;
    let rest = &frame[i..];
    rest[..rest.find(':')?].parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_the_timestamp() {
        let f = r#"42["message.new",{"id":"x","text":"fb:1234567:","seq":3}]"#;
        assert_eq!(super::sent_at(f), Some(1234567));
        assert_eq!(super::sent_at("42[\"message.new\",{}]"), None);
    }
}
