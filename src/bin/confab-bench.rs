//! `confab-bench`: load generator for a running `confab serve`, over real HTTP, from a separate
//! process.
//!
//! - `confab-bench seed` generates a skewed dataset and streams it to `POST /v1/import`.
//! - `confab-bench import` imports a generated file of 1,000,000 messages through
//!   `POST /v1/import` (or `confab import`) and reports messages/s, CPU time and peak RSS.
//! - `confab-bench messenger` serves a fixture Graph API and times a Messenger sync.
//! - `confab-bench run` runs closed-loop workers per scenario and concurrency for a fixed
//!   duration and reports throughput and latency percentiles; with `--database-url` it also
//!   measures the naive ceiling for `send` (one insert per transaction, straight to the database).
//!
//! Every request uses the server token, acting as a user with `?as=` where the endpoint needs one.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use futures_util::StreamExt;
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use serde::de::IgnoredAny as Ignored;
use serde_json::{Value, json};
use tokio::sync::Barrier;

#[path = "confab-bench/fanout.rs"]
mod fanout;

#[derive(Parser)]
#[command(
    name = "confab-bench",
    about = "Benchmark a running confab server over HTTP"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Generate a skewed dataset and stream it to POST /v1/import.
    Seed(SeedArgs),
    /// Run scenarios at several concurrencies and report throughput and latency.
    Run(RunArgs),
    /// Socket.IO fan-out: C connections in groups of G, R messages/s, send-to-receipt latency.
    Fanout(FanoutArgs),
    /// Import a generated NDJSON file (1,000,000 messages over 10,000 conversations by
    /// default) through POST /v1/import or `confab import`; report messages/s, CPU and RSS.
    Import(ImportArgs),
    /// Serve a fixture Graph API and time a Messenger sync of its page end to end.
    Messenger(MessengerArgs),
}

#[derive(Args)]
struct FanoutArgs {
    #[command(flatten)]
    target: Target,
    /// The server's JWT secret (each connection needs its own user token).
    #[arg(long, env = "CONFAB_JWT_SECRET")]
    jwt_secret: String,
    /// Socket.IO connections, one user each.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Members (and connections) per group conversation.
    #[arg(long, default_value_t = 100)]
    group: usize,
    /// Messages published per second, into random groups.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// How long to publish.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// The server's process id: its memory per idle connection, CPU time and peak RSS.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Also write the result as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Also draw the latency percentiles as an SVG chart to this file (as `run --svg` does).
    #[arg(long)]
    svg: Option<PathBuf>,
}

#[derive(Args)]
struct Target {
    /// Base URL of the running server.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// A server token (`confab token --server`).
    #[arg(long, env = "CONFAB_BENCH_TOKEN")]
    token: String,
}

#[derive(Args)]
struct SeedArgs {
    #[command(flatten)]
    target: Target,
    /// Users `bu0`..`bu{N-1}` (plus the heavy user `heavy`).
    #[arg(long, default_value_t = 2000)]
    users: usize,
    /// Conversations `bc0`..: mostly direct, some groups.
    #[arg(long, default_value_t = 5000)]
    conversations: usize,
    /// Messages, skewed: 80% go to 10% of the conversations.
    #[arg(long, default_value_t = 100_000)]
    messages: usize,
    /// How many conversations the user `heavy` is a member of.
    #[arg(long, default_value_t = 1000)]
    heavy_user_conversations: usize,
    /// Random seed (the dataset is deterministic for a seed).
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    target: Target,
    /// Also measure the naive ceiling for `send` (one INSERT per transaction) on this database
    /// (postgres://… or sqlite://…; a scratch database, not the server's).
    #[arg(long)]
    database_url: Option<String>,
    /// Comma-separated: send, inbox (also reports inbox_heavy), page (also page_before),
    /// sync_idle, create_direct, healthz (`/readyz`: one statement), ping (`/healthz`: no
    /// database, no auth: the floor of any request on this machine).
    #[arg(
        long,
        default_value = "send,inbox,page,sync_idle,create_direct,healthz,ping"
    )]
    scenarios: String,
    /// Measured time per scenario and concurrency (`500ms`, `10s`, `1m`).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Unmeasured time before each measurement, same loop.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    /// Comma-separated numbers of closed-loop workers.
    #[arg(long, default_value = "1,16,64")]
    concurrency: String,
    /// Seeded users `bu0`..`bu{N-1}` whose conversations are discovered for the scenarios.
    #[arg(long, default_value_t = 200)]
    sample_users: usize,
    /// The user in many conversations, for `inbox_heavy`.
    #[arg(long, default_value = "heavy")]
    heavy_user: String,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// The server's own database: `send`, `inbox` and `page` are also run as the same store
    /// calls the server makes (its statements and transactions, `send` through its write
    /// path), from this process without HTTP, at the same concurrency: Confab ÷ SQL.
    #[arg(long)]
    sql_database_url: Option<String>,
    /// The server's process id: its CPU (in cores) and peak RSS during each scenario.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Also draw the latency percentiles per scenario as an SVG chart to this file.
    #[arg(long)]
    svg: Option<PathBuf>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" | "min" => n * 60.0,
        _ => return Err(format!("bad duration unit in {s:?} (ms, s, m)")),
    };
    if secs.is_nan() || secs <= 0.0 {
        return Err("duration must be positive".into());
    }
    Ok(Duration::from_secs_f64(secs))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // reqwest is built with rustls and no default provider: install one for https URLs.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match Cli::parse().cmd {
        Cmd::Seed(a) => seed(a).await,
        Cmd::Run(a) => run(a).await,
        Cmd::Fanout(a) => fanout_cmd(a).await,
        Cmd::Import(a) => import(a).await,
        Cmd::Messenger(a) => messenger(a).await,
    }
}

async fn fanout_cmd(a: FanoutArgs) -> anyhow::Result<()> {
    let report = fanout::Fanout {
        url: base(&a.target.url),
        token: a.target.token,
        jwt_secret: a.jwt_secret,
        connections: a.connections,
        group: a.group,
        rate: a.rate,
        duration: a.duration,
        server_pid: a.server_pid,
    }
    .run()
    .await?;
    let opt = |v: Option<f64>| v.map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".into());
    println!(
        "fanout  conns {}  group {}  rate {}/s: {} sent ({} errors), {}/{} delivered in {:.1} s \
         = {:.0} deliveries/s; p50 {:.1} ms p95 {:.1} ms p99 {:.1} ms max {:.1} ms; \
         server {} KiB per idle connection, {} CPU s, peak RSS {} MiB; connect {:.1} s",
        a.connections,
        a.group,
        a.rate,
        report.sent,
        report.send_errors,
        report.received,
        report.expected,
        report.seconds,
        report.deliveries_per_second(),
        report.percentile_ms(0.50),
        report.percentile_ms(0.95),
        report.percentile_ms(0.99),
        report.percentile_ms(1.0),
        opt(report.kib_per_connection),
        opt(report.server_cpu_s),
        opt(report.server_peak_rss_mib),
        report.connect_seconds,
    );
    if let Some(path) = a.json {
        std::fs::write(&path, serde_json::to_string_pretty(&report.json())?)?;
    }
    if let Some(path) = a.svg {
        // Nothing delivered: no bars (NaN is skipped), not bars at the axis' floor.
        let p = |q: f64| {
            if report.latencies_us.is_empty() {
                f64::NAN
            } else {
                report.percentile_ms(q)
            }
        };
        let label = format!("fanout conns={}", a.connections);
        std::fs::write(&path, latency_svg(&[(label, [p(0.50), p(0.95), p(0.99)])]))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn base(url: &str) -> String {
    url.trim_end_matches('/').to_owned()
}

// ---------------------------------------------------------------------------------------------
// seed

/// A user index skewed toward low indices: `bu0` is in many conversations, most users in few.
fn skewed(rng: &mut StdRng, n: usize) -> usize {
    let r: f64 = rng.random();
    ((r * r * r) * n as f64) as usize % n
}

fn uid(i: usize, users: usize) -> String {
    if i == users {
        "heavy".to_owned()
    } else {
        format!("bu{i}")
    }
}

/// Writes the NDJSON lines in chunks of about 256 KiB into `tx`.
fn generate(a: &SeedArgs, tx: tokio::sync::mpsc::Sender<Vec<u8>>) -> anyhow::Result<()> {
    let mut rng = StdRng::seed_from_u64(a.seed);
    let users = a.users;
    let mut buf: Vec<u8> = Vec::with_capacity(300 << 10);
    let emit = |buf: &mut Vec<u8>, v: Value, force: bool| -> anyhow::Result<()> {
        if !v.is_null() {
            serde_json::to_writer(&mut *buf, &v)?;
            buf.push(b'\n');
        }
        if buf.len() >= 256 << 10 || (force && !buf.is_empty()) {
            tx.blocking_send(std::mem::take(buf))
                .map_err(|_| anyhow::anyhow!("the upload stopped"))?;
        }
        Ok(())
    };
    for u in 0..users {
        emit(
            &mut buf,
            json!({"record": "user", "id": uid(u, users), "name": format!("Bench User {u}")}),
            false,
        )?;
    }
    emit(
        &mut buf,
        json!({"record": "user", "id": "heavy", "name": "Heavy User"}),
        false,
    )?;

    // Index `users` stands for the heavy user.
    let mut pairs: HashSet<(usize, usize)> = HashSet::new();
    let mut members: Vec<Vec<usize>> = Vec::with_capacity(a.conversations);
    let group = |rng: &mut StdRng, first: Option<usize>| -> Vec<usize> {
        let size = rng
            .random_range(3..=8)
            .min(users + usize::from(first.is_some()));
        let mut ms: Vec<usize> = first.into_iter().collect();
        while ms.len() < size {
            let u = skewed(rng, users);
            if !ms.contains(&u) {
                ms.push(u);
            }
        }
        ms
    };
    for c in 0..a.conversations {
        let ms = if c < a.heavy_user_conversations {
            // The heavy user: a direct conversation with each user, then groups.
            if c < users {
                pairs.insert((c, users));
                vec![users, c]
            } else {
                group(&mut rng, Some(users))
            }
        } else if users >= 2 && rng.random_bool(0.8) {
            let mut found = None;
            for _ in 0..50 {
                let x = skewed(&mut rng, users);
                let y = rng.random_range(0..users);
                let p = (x.min(y), x.max(y));
                if x != y && pairs.insert(p) {
                    found = Some(vec![x, y]);
                    break;
                }
            }
            found.unwrap_or_else(|| group(&mut rng, None))
        } else {
            group(&mut rng, None)
        };
        let kind = if ms.len() == 2 && (ms[0] == users || c >= a.heavy_user_conversations) {
            "direct"
        } else {
            "group"
        };
        let ids: Vec<String> = ms.iter().map(|&m| uid(m, users)).collect();
        let mut rec = json!({"record": "conversation", "external_id": format!("bc{c}"),
            "type": kind, "member_ids": ids});
        if kind == "group" {
            rec["name"] = json!(format!("Bench Group {c}"));
        }
        emit(&mut buf, rec, false)?;
        members.push(ms);
    }

    // 80% of the messages go to 10% of the conversations, the rest anywhere.
    if a.conversations > 0 {
        let mut order: Vec<usize> = (0..a.conversations).collect();
        order.shuffle(&mut rng);
        let active = &order[..(a.conversations / 10).max(1)];
        let start = chrono::Utc::now() - chrono::Duration::seconds(a.messages as i64 + 60);
        const WORDS: [&str; 12] = [
            "hello", "order", "delivery", "thanks", "tomorrow", "price", "ok", "the", "invoice",
            "meeting", "photo", "great",
        ];
        for i in 0..a.messages {
            let c = if rng.random_bool(0.8) {
                *active.choose(&mut rng).unwrap()
            } else {
                rng.random_range(0..a.conversations)
            };
            let sender = *members[c].choose(&mut rng).unwrap();
            let n = rng.random_range(3..20);
            let text: Vec<&str> = (0..n).map(|_| *WORDS.choose(&mut rng).unwrap()).collect();
            let at = start + chrono::Duration::seconds(i as i64);
            emit(
                &mut buf,
                json!({"record": "message", "conversation_external_id": format!("bc{c}"),
                    "external_id": format!("bm{i}"), "sender_id": uid(sender, users),
                    "text": text.join(" "),
                    "created_at": at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)}),
                false,
            )?;
        }
    }
    emit(&mut buf, Value::Null, true)
}

async fn seed(a: SeedArgs) -> anyhow::Result<()> {
    if a.users == 0 {
        bail!("--users must be at least 1");
    }
    if a.heavy_user_conversations > a.conversations {
        bail!("--heavy-user-conversations cannot exceed --conversations");
    }
    let url = format!("{}/v1/import", base(&a.target.url));
    let token = a.target.token.clone();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    let bytes_sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = bytes_sent.clone();
    let body = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)).map(move |chunk| {
        counter.fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
        Ok::<_, std::io::Error>(bytes::Bytes::from(chunk))
    });
    let started = Instant::now();
    let generator = tokio::task::spawn_blocking(move || generate(&a, tx));
    let res = reqwest::Client::new()
        .post(&url)
        .bearer_auth(&token)
        .header("content-type", "application/x-ndjson")
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    let status = res.status();
    if !status.is_success() {
        bail!("{status}: {}", res.text().await.unwrap_or_default());
    }
    let summary = read_import_progress(res, true).await;
    generator.await??;
    let elapsed = started.elapsed().as_secs_f64();
    let summary = summary?;
    let records = ["users", "conversations", "messages"]
        .iter()
        .map(|k| summary[k].as_u64().unwrap_or(0))
        .sum::<u64>();
    println!("{summary}");
    println!(
        "elapsed {elapsed:.2} s, {:.1} MB sent, {:.0} records/s, {:.0} messages/s",
        bytes_sent.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1e6,
        records as f64 / elapsed,
        summary["messages"].as_u64().unwrap_or(0) as f64 / elapsed
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// run

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Scenario {
    Send,
    Inbox,
    InboxHeavy,
    Page,
    PageBefore,
    SyncIdle,
    CreateDirect,
    Healthz,
    Ping,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Send => "send",
            Scenario::Inbox => "inbox",
            Scenario::InboxHeavy => "inbox_heavy",
            Scenario::Page => "page",
            Scenario::PageBefore => "page_before",
            Scenario::SyncIdle => "sync_idle",
            Scenario::CreateDirect => "create_direct",
            Scenario::Healthz => "healthz",
            Scenario::Ping => "ping",
        }
    }

    /// A scenario name from the command line, with the variants it brings along.
    fn parse(s: &str) -> anyhow::Result<Vec<Scenario>> {
        Ok(match s.trim() {
            "send" => vec![Scenario::Send],
            "inbox" => vec![Scenario::Inbox, Scenario::InboxHeavy],
            "inbox_heavy" => vec![Scenario::InboxHeavy],
            "page" => vec![Scenario::Page, Scenario::PageBefore],
            "page_before" => vec![Scenario::PageBefore],
            "sync_idle" => vec![Scenario::SyncIdle],
            "create_direct" => vec![Scenario::CreateDirect],
            "healthz" => vec![Scenario::Healthz],
            "ping" => vec![Scenario::Ping],
            other => bail!(
                "unknown scenario {other:?} \
                 (send, inbox, page, sync_idle, create_direct, healthz, ping)"
            ),
        })
    }

    /// Scenarios run again as the server's own store calls (`--sql-database-url`).
    fn has_sql(self) -> bool {
        matches!(
            self,
            Scenario::Send
                | Scenario::Inbox
                | Scenario::InboxHeavy
                | Scenario::Page
                | Scenario::PageBefore
        )
    }

    fn needs_conversations(self) -> bool {
        matches!(
            self,
            Scenario::Send
                | Scenario::Inbox
                | Scenario::Page
                | Scenario::PageBefore
                | Scenario::SyncIdle
        )
    }
}

struct Conv {
    id: String,
    members: Vec<String>,
    last_seq: i64,
}

struct Ctx {
    client: reqwest::Client,
    base: String,
    token: String,
    convs: Vec<Conv>,
    /// Users with at least one conversation.
    users: Vec<String>,
    heavy: String,
    /// Makes client ids and new user ids unique across runs.
    run_id: String,
}

struct Worker {
    rng: StdRng,
    id: usize,
    n: u64,
    /// `sync_idle`: the user and the last token.
    sync: Option<(String, String)>,
}

#[derive(Default, Clone, serde::Serialize)]
struct Row {
    scenario: String,
    concurrency: usize,
    ops_per_s: f64,
    p50_ms: f64,
    p95_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    ok: u64,
    errors: u64,
    seconds: f64,
    /// Confab's ops/s over the same SQL's run directly (`*_sql` rows).
    #[serde(skip_serializing_if = "Option::is_none")]
    confab_over_sql: Option<f64>,
    /// For `send`: Confab's ops/s over the naive one-INSERT-per-transaction ceiling's.
    #[serde(skip_serializing_if = "Option::is_none")]
    confab_over_naive: Option<f64>,
    /// The server's CPU use during the scenario (warmup included), in cores.
    #[serde(skip_serializing_if = "Option::is_none")]
    server_cores: Option<f64>,
    /// The server's peak RSS during the scenario, MB.
    #[serde(skip_serializing_if = "Option::is_none")]
    server_peak_rss_mb: Option<f64>,
}

impl Ctx {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The body of a successful answer, as `T`: the scenarios read their answers into types
    /// that keep only what they check (`IgnoredAny` still reads all of it), so the load
    /// generator, sharing the machine's cores with the server, builds no JSON trees.
    async fn check<T: serde::de::DeserializeOwned>(res: reqwest::Response) -> Result<T, String> {
        let status = res.status();
        let body = res.bytes().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body);
            return Err(format!(
                "{status}: {}",
                text.chars().take(200).collect::<String>()
            ));
        }
        serde_json::from_slice(&body).map_err(|e| format!("bad json: {e}"))
    }

    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<T, String> {
        let res = self
            .client
            .get(self.url(path))
            .bearer_auth(&self.token)
            .query(query)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        Self::check(res).await
    }

    async fn post<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        user: &str,
        body: &Value,
    ) -> Result<T, String> {
        let res = self
            .client
            .post(self.url(path))
            .bearer_auth(&self.token)
            .query(&[("as", user)])
            .json(body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        Self::check(res).await
    }

    fn conv(&self, w: &mut Worker) -> &Conv {
        self.convs.choose(&mut w.rng).expect("conversations")
    }

    /// Before the measured loop: `sync_idle` takes its first token here.
    async fn init(&self, sc: Scenario, w: &mut Worker) -> Result<(), String> {
        if sc == Scenario::SyncIdle {
            let user = self.users.choose(&mut w.rng).expect("users").clone();
            let v: Value = self.get("/v1/sync", &[("as", user.clone())]).await?;
            let token = v["next_token"]
                .as_str()
                .ok_or("sync without next_token")?
                .to_owned();
            w.sync = Some((user, token));
        }
        Ok(())
    }

    async fn op(&self, sc: Scenario, w: &mut Worker) -> Result<(), String> {
        w.n += 1;
        match sc {
            Scenario::Send => {
                let c = self.conv(w);
                let user = c.members.choose(&mut w.rng).expect("members").clone();
                let body = json!({
                    "client_id": format!("b{}-{}-{}", self.run_id, w.id, w.n),
                    "text": format!("bench message {} from worker {}", w.n, w.id),
                });
                let path = format!("/v1/conversations/{}/messages", c.id);
                self.post::<Ignored>(&path, &user, &body).await.map(drop)
            }
            Scenario::Inbox | Scenario::InboxHeavy => {
                let user = if sc == Scenario::Inbox {
                    self.users.choose(&mut w.rng).expect("users").clone()
                } else {
                    self.heavy.clone()
                };
                #[derive(serde::Deserialize)]
                struct Inbox {
                    conversations: Vec<Ignored>,
                }
                let inbox: Inbox = self
                    .get("/v1/conversations", &[("as", user), ("limit", "30".into())])
                    .await?;
                if inbox.conversations.is_empty() {
                    return Err("an empty inbox".into());
                }
                Ok(())
            }
            Scenario::Page | Scenario::PageBefore => {
                let c = self.conv(w);
                let user = c.members.choose(&mut w.rng).expect("members").clone();
                let mut q = vec![("as", user), ("limit", "50".to_owned())];
                if sc == Scenario::PageBefore {
                    let seq = w.rng.random_range(1..=c.last_seq.max(1) + 1);
                    q.push(("before_seq", seq.to_string()));
                }
                let path = format!("/v1/conversations/{}/messages", c.id);
                self.get::<Ignored>(&path, &q).await.map(drop)
            }
            Scenario::SyncIdle => {
                let (user, token) = w.sync.as_ref().ok_or("sync not initialized")?;
                #[derive(serde::Deserialize)]
                struct Sync {
                    next_token: String,
                    events: Vec<Ignored>,
                }
                let v: Sync = self
                    .get(
                        "/v1/sync",
                        &[("as", user.clone()), ("since", token.clone())],
                    )
                    .await?;
                if !v.events.is_empty() {
                    return Err("an idle sync found events".into());
                }
                let next = v.next_token;
                if let Some(s) = w.sync.as_mut() {
                    s.1 = next;
                }
                Ok(())
            }
            Scenario::CreateDirect => {
                let me = format!("bn{}w{}n{}a", self.run_id, w.id, w.n);
                let other = format!("bn{}w{}n{}b", self.run_id, w.id, w.n);
                let body = json!({"type": "direct", "member_ids": [other]});
                self.post::<Ignored>("/v1/conversations", &me, &body)
                    .await
                    .map(drop)
            }
            Scenario::Healthz | Scenario::Ping => {
                let path = if sc == Scenario::Healthz {
                    "/readyz"
                } else {
                    "/healthz"
                };
                let res = self
                    .client
                    .get(self.url(path))
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                Self::check::<Ignored>(res).await.map(drop)
            }
        }
    }
}

/// Finds conversations through the listing of the sampled seeded users.
async fn discover(ctx: &mut Ctx, sample: usize) -> anyhow::Result<()> {
    let ctx_ref = &*ctx;
    let results: Vec<(String, Result<Value, String>)> =
        futures_util::stream::iter((0..sample).map(|i| format!("bu{i}")))
            .map(|u| async move {
                let r = ctx_ref
                    .get(
                        "/v1/conversations",
                        &[("as", u.clone()), ("limit", "100".into())],
                    )
                    .await;
                (u, r)
            })
            .buffer_unordered(16)
            .collect()
            .await;
    let mut convs: HashMap<String, Conv> = HashMap::new();
    let mut users = Vec::new();
    for (u, r) in results {
        let v = r.map_err(|e| anyhow::anyhow!("listing as {u}: {e}"))?;
        let list = v["conversations"].as_array().cloned().unwrap_or_default();
        if !list.is_empty() {
            users.push(u);
        }
        for c in list {
            let Some(id) = c["id"].as_str() else { continue };
            let members: Vec<String> = c["members"]
                .as_array()
                .map(|ms| {
                    ms.iter()
                        .filter_map(|m| m["user_id"].as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            if members.is_empty() {
                continue;
            }
            convs.insert(
                id.to_owned(),
                Conv {
                    id: id.to_owned(),
                    members,
                    last_seq: c["last_seq"].as_i64().unwrap_or(0),
                },
            );
        }
    }
    let mut convs: Vec<Conv> = convs.into_values().collect();
    convs.sort_by(|a, b| a.id.cmp(&b.id));
    ctx.convs = convs;
    users.sort();
    ctx.users = users;
    Ok(())
}

/// No seeded data found: create a few group conversations to work on.
async fn create_fallback(ctx: &mut Ctx) -> anyhow::Result<()> {
    eprintln!("no seeded conversations found (run `confab-bench seed`); creating 20 groups");
    for g in 0..20 {
        let members: Vec<String> = (0..5)
            .map(|m| format!("bf{}g{g}m{m}", ctx.run_id))
            .collect();
        let res = ctx
            .client
            .post(ctx.url("/v1/conversations"))
            .bearer_auth(&ctx.token)
            .json(&json!({"type": "group", "member_ids": members, "name": format!("bench {g}")}))
            .send()
            .await?;
        let v: Value = Ctx::check(res).await.map_err(anyhow::Error::msg)?;
        let id = v["id"]
            .as_str()
            .context("created conversation without id")?;
        ctx.convs.push(Conv {
            id: id.to_owned(),
            members: members.clone(),
            last_seq: 0,
        });
        ctx.users.extend(members);
    }
    Ok(())
}

/// Latencies in microseconds, sorted; a percentile in milliseconds.
fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[i.clamp(1, sorted.len()) - 1] as f64 / 1000.0
}

struct Sample {
    lat_us: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
    start: Instant,
    end: Instant,
}

/// Runs `concurrency` closed-loop workers: warmup, then `duration` measured. Each worker stops
/// starting operations at its deadline; an operation in flight then is waited for (bounded by
/// the client timeout) and counted.
async fn measure<F, Fut>(
    name: &str,
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
    make_op: F,
) -> anyhow::Result<Row>
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = anyhow::Result<Box<dyn WorkerOp>>> + Send,
{
    let barrier = Arc::new(Barrier::new(concurrency));
    let mut tasks = Vec::with_capacity(concurrency);
    for w in 0..concurrency {
        let barrier = barrier.clone();
        let make_op = make_op.clone();
        tasks.push(tokio::spawn(async move {
            let op = make_op(w).await;
            barrier.wait().await;
            let mut op = op?;
            let warm_end = Instant::now() + warmup;
            while Instant::now() < warm_end {
                let _ = op.once().await;
            }
            let start = Instant::now();
            let deadline = start + duration;
            let mut s = Sample {
                lat_us: Vec::with_capacity(4096),
                errors: 0,
                first_error: None,
                start,
                end: start,
            };
            while Instant::now() < deadline {
                let t = Instant::now();
                match op.once().await {
                    Ok(()) => s.lat_us.push(t.elapsed().as_micros() as u64),
                    Err(e) => {
                        s.errors += 1;
                        s.first_error.get_or_insert(e);
                    }
                }
            }
            s.end = Instant::now();
            anyhow::Ok(s)
        }));
    }
    let mut lat = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    let (mut start, mut end): (Option<Instant>, Option<Instant>) = (None, None);
    for t in tasks {
        let s = t.await??;
        lat.extend_from_slice(&s.lat_us);
        errors += s.errors;
        if first_error.is_none() {
            first_error = s.first_error;
        }
        start = Some(start.map_or(s.start, |x| x.min(s.start)));
        end = Some(end.map_or(s.end, |x| x.max(s.end)));
    }
    if let Some(e) = first_error {
        eprintln!("  {name} c={concurrency}: {errors} errors, first: {e}");
    }
    lat.sort_unstable();
    let secs = match (start, end) {
        (Some(s), Some(e)) => (e - s).as_secs_f64(),
        _ => duration.as_secs_f64(),
    };
    Ok(Row {
        scenario: name.to_owned(),
        concurrency,
        ops_per_s: lat.len() as f64 / secs,
        p50_ms: pct(&lat, 50.0),
        p95_ms: pct(&lat, 95.0),
        p99_ms: pct(&lat, 99.0),
        max_ms: lat.last().map_or(f64::NAN, |m| *m as f64 / 1000.0),
        ok: lat.len() as u64,
        errors,
        seconds: secs,
        ..Default::default()
    })
}

/// One operation of a worker, repeated.
trait WorkerOp: Send {
    fn once(&mut self) -> std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>>;
}

struct HttpOp {
    ctx: Arc<Ctx>,
    sc: Scenario,
    w: Worker,
}

impl WorkerOp for HttpOp {
    fn once(&mut self) -> std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async move { self.ctx.op(self.sc, &mut self.w).await })
    }
}

#[derive(Clone)]
enum RawDb {
    Pg(sqlx::PgPool),
    Lite(sqlx::SqlitePool),
}

struct RawOp {
    db: RawDb,
    conv: String,
    n: u64,
}

impl WorkerOp for RawOp {
    fn once(&mut self) -> std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async move {
            self.n += 1;
            let body = format!("naive message {}", self.n);
            let now = chrono::Utc::now().timestamp_millis();
            let r = match &self.db {
                RawDb::Pg(pool) => async {
                    let mut tx = pool.begin().await?;
                    sqlx::query(
                        "insert into bench_naive (conversation_id, body, created_at) values ($1, $2, $3)",
                    )
                    .bind(&self.conv)
                    .bind(&body)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await
                }
                .await,
                RawDb::Lite(pool) => async {
                    let mut tx = pool.begin().await?;
                    sqlx::query(
                        "insert into bench_naive (conversation_id, body, created_at) values (?, ?, ?)",
                    )
                    .bind(&self.conv)
                    .bind(&body)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await
                }
                .await,
            };
            r.map_err(|e| e.to_string())
        })
    }
}

/// A scenario as the store calls the server makes for it (the same statements and
/// transactions; `send` through a write path like the server's), without HTTP.
struct SqlOp {
    ctx: Arc<Ctx>,
    store: confab::storage::DynStore,
    writes: confab::write_path::WritePath,
    sc: Scenario,
    w: Worker,
}

impl WorkerOp for SqlOp {
    fn once(&mut self) -> std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async move {
            use confab::storage::{ListFilter, PageBound, WriteOp};
            let w = &mut self.w;
            w.n += 1;
            let done = match self.sc {
                Scenario::Send => {
                    let c = self.ctx.conv(w);
                    let user = c.members.choose(&mut w.rng).expect("members").clone();
                    let input = confab::domain::SendInput {
                        client_id: Some(format!("s{}-{}-{}", self.ctx.run_id, w.id, w.n)),
                        text: Some(format!("bench message {} from worker {}", w.n, w.id)),
                        ..Default::default()
                    };
                    let op = WriteOp::Send {
                        conversation_id: c.id.clone(),
                        sender_id: user,
                        input: Box::new(input),
                    };
                    self.writes.submit(op).await.map(drop)
                }
                Scenario::Inbox | Scenario::InboxHeavy => {
                    let user = if self.sc == Scenario::Inbox {
                        self.ctx.users.choose(&mut w.rng).expect("users").clone()
                    } else {
                        self.ctx.heavy.clone()
                    };
                    let filter = ListFilter {
                        limit: 30,
                        ..Default::default()
                    };
                    self.store
                        .list_conversations(&user, &filter)
                        .await
                        .map(drop)
                }
                Scenario::Page | Scenario::PageBefore => {
                    let c = self.ctx.conv(w);
                    let user = c.members.choose(&mut w.rng).expect("members").clone();
                    let bound = if self.sc == Scenario::PageBefore {
                        PageBound::Before(w.rng.random_range(1..=c.last_seq.max(1) + 1))
                    } else {
                        PageBound::Newest
                    };
                    let id = c.id.clone();
                    self.store
                        .page_messages(&user, &id, bound, 50)
                        .await
                        .map(drop)
                }
                _ => Ok(()),
            };
            done.map_err(|e| e.to_string())
        })
    }
}

async fn raw_pool(url: &str, size: u32) -> anyhow::Result<RawDb> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        // No ping before each transaction (sqlx's default), as in the server's pools: the
        // ceiling is the database's, not a client's extra round trip.
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(size)
            .min_connections(size)
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(30))
            .connect(url)
            .await
            .context("connecting to PostgreSQL")?;
        sqlx::query(
            "create table if not exists bench_naive (id bigserial primary key, \
             conversation_id text, body text, created_at bigint)",
        )
        .execute(&pool)
        .await?;
        Ok(RawDb::Pg(pool))
    } else if url.starts_with("sqlite:") {
        // The same durability as the server: WAL, synchronous=FULL.
        let opts = sqlx::sqlite::SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
            .synchronous(sqlx::sqlite::SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(30));
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(size)
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(opts)
            .await
            .context("opening SQLite")?;
        sqlx::query(
            "create table if not exists bench_naive (id integer primary key, \
             conversation_id text, body text, created_at bigint)",
        )
        .execute(&pool)
        .await?;
        Ok(RawDb::Lite(pool))
    } else {
        bail!("--database-url must be postgres://… or sqlite://…")
    }
}

fn fmt_ms(x: f64) -> String {
    if x.is_nan() {
        "-".into()
    } else if x < 10.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.1}")
    }
}

fn print_table(rows: &[Row]) {
    let header = [
        "scenario",
        "conc",
        "ops/s",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "max ms",
        "errors",
        "vs sql",
        "vs naive",
        "srv cores",
        "srv MB",
    ];
    let ratio = |x: Option<f64>| x.map_or(String::new(), |x| format!("{x:.2}x"));
    let cells: Vec<[String; 12]> = rows
        .iter()
        .map(|r| {
            [
                r.scenario.clone(),
                r.concurrency.to_string(),
                format!("{:.0}", r.ops_per_s),
                fmt_ms(r.p50_ms),
                fmt_ms(r.p95_ms),
                fmt_ms(r.p99_ms),
                fmt_ms(r.max_ms),
                r.errors.to_string(),
                ratio(r.confab_over_sql),
                ratio(r.confab_over_naive),
                r.server_cores.map_or(String::new(), |x| format!("{x:.2}")),
                r.server_peak_rss_mb
                    .map_or(String::new(), |x| format!("{x:.0}")),
            ]
        })
        .collect();
    let mut width = header.map(str::len);
    for row in &cells {
        for (w, c) in width.iter_mut().zip(row) {
            *w = (*w).max(c.len());
        }
    }
    let line = |row: &[String]| {
        let mut s = String::new();
        for (i, c) in row.iter().enumerate() {
            if i == 0 {
                s += &format!("{c:<w$}", w = width[i]);
            } else {
                s += &format!("  {c:>w$}", w = width[i]);
            }
        }
        println!("{}", s.trim_end());
    };
    line(&header.map(String::from));
    for row in &cells {
        line(row);
    }
}

async fn run(a: RunArgs) -> anyhow::Result<()> {
    let mut scenarios: Vec<Scenario> = Vec::new();
    for s in a.scenarios.split(',').filter(|s| !s.trim().is_empty()) {
        for sc in Scenario::parse(s)? {
            if !scenarios.contains(&sc) {
                scenarios.push(sc);
            }
        }
    }
    let concurrency: Vec<usize> = a
        .concurrency
        .split(',')
        .map(|c| c.trim().parse::<usize>())
        .collect::<Result<_, _>>()
        .context("--concurrency: comma-separated numbers")?;
    if concurrency.contains(&0) {
        bail!("--concurrency must be at least 1");
    }
    let max_conc = concurrency.iter().copied().max().unwrap_or(1);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(max_conc * 2)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(30))
        .build()?;
    let run_id = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis()
    );
    let mut ctx = Ctx {
        client,
        base: base(&a.target.url),
        token: a.target.token.clone(),
        convs: Vec::new(),
        users: Vec::new(),
        heavy: a.heavy_user.clone(),
        run_id,
    };
    // Fail early on a wrong URL or token.
    ctx.get::<Ignored>("/v1/conversations", &[("as", ctx.heavy.clone())])
        .await
        .map_err(|e| anyhow::anyhow!("checking the server and token: {e}"))?;
    if scenarios.iter().any(|s| s.needs_conversations()) {
        discover(&mut ctx, a.sample_users).await?;
        if ctx.convs.is_empty() {
            create_fallback(&mut ctx).await?;
        }
        eprintln!(
            "discovered {} conversations of {} users (sampled bu0..bu{})",
            ctx.convs.len(),
            ctx.users.len(),
            a.sample_users.saturating_sub(1)
        );
    }
    let ctx = Arc::new(ctx);
    let report = |row: &Row| {
        eprintln!(
            "{} c={} {:.0} ops/s p50 {} ms p99 {} ms errors {}",
            row.scenario,
            row.concurrency,
            row.ops_per_s,
            fmt_ms(row.p50_ms),
            fmt_ms(row.p99_ms),
            row.errors
        )
    };
    // The naive ceiling first, on its own database, before the same-SQL store opens its pool
    // (PostgreSQL's 100 connections hold the server's, and then either of these).
    let mut naive_rows: Vec<Row> = Vec::new();
    if let Some(db_url) = &a.database_url
        && scenarios.contains(&Scenario::Send)
    {
        for &c in &concurrency {
            let db = raw_pool(db_url, c as u32).await?;
            let make = {
                let db = db.clone();
                move |w: usize| {
                    let db = db.clone();
                    async move {
                        Ok(Box::new(RawOp {
                            db,
                            conv: format!("naive-{w}"),
                            n: 0,
                        }) as Box<dyn WorkerOp>)
                    }
                }
            };
            let row = measure("send_naive", c, a.warmup, a.duration, make).await?;
            report(&row);
            match db {
                RawDb::Pg(p) => p.close().await,
                RawDb::Lite(p) => p.close().await,
            }
            naive_rows.push(row);
        }
    }

    let sql_store = match &a.sql_database_url {
        Some(url) => Some(
            // The server's default pool (CONFAB_DB_POOL_SIZE), so both queue alike.
            confab::storage::open_url(url, Duration::from_secs(30), 32)
                .await
                .context("--sql-database-url")?,
        ),
        None => None,
    };
    let mut rows: Vec<Row> = Vec::new();
    for &sc in &scenarios {
        for &c in &concurrency {
            let http_ctx = ctx.clone();
            let make = move |w: usize| {
                let ctx = http_ctx.clone();
                async move {
                    let mut worker = Worker {
                        rng: StdRng::seed_from_u64(w as u64 * 7919 + 1),
                        id: w,
                        n: 0,
                        sync: None,
                    };
                    ctx.init(sc, &mut worker)
                        .await
                        .map_err(|e| anyhow::anyhow!("{} setup: {e}", sc.name()))?;
                    Ok(Box::new(HttpOp { ctx, sc, w: worker }) as Box<dyn WorkerOp>)
                }
            };
            let watch = a.server_pid.map(ProcWatch::start).transpose()?;
            let wall = Instant::now();
            let mut row = measure(sc.name(), c, a.warmup, a.duration, make).await?;
            if let Some(watch) = watch {
                let stats = watch.finish().await;
                row.server_cores = Some(stats.cpu / wall.elapsed().as_secs_f64());
                row.server_peak_rss_mb = Some(stats.peak_mb);
            }
            report(&row);
            rows.push(row);
            if let Some(store) = &sql_store
                && sc.has_sql()
            {
                let ctx = ctx.clone();
                let store = store.clone();
                let writes = confab::write_path::WritePath::start(
                    store.clone(),
                    confab::write_path::ChangeBus::new(),
                    confab::write_path::default_workers(store.backend()),
                    256,
                    Duration::from_secs(30),
                );
                let make = move |w: usize| {
                    let (ctx, store, writes) = (ctx.clone(), store.clone(), writes.clone());
                    async move {
                        let worker = Worker {
                            rng: StdRng::seed_from_u64(w as u64 * 7919 + 1),
                            id: w,
                            n: 0,
                            sync: None,
                        };
                        Ok(Box::new(SqlOp {
                            ctx,
                            store,
                            writes,
                            sc,
                            w: worker,
                        }) as Box<dyn WorkerOp>)
                    }
                };
                let name = format!("{}_sql", sc.name());
                let sql = measure(&name, c, a.warmup, a.duration, make).await?;
                report(&sql);
                if let Some(http) = rows.last_mut()
                    && sql.ops_per_s > 0.0
                {
                    http.confab_over_sql = Some(http.ops_per_s / sql.ops_per_s);
                }
                rows.push(sql);
            }
        }
    }

    // The naive rows were measured first; each `send` row gets its ratio.
    for naive in naive_rows {
        if let Some(send) = rows
            .iter_mut()
            .find(|r| r.scenario == "send" && r.concurrency == naive.concurrency)
            && naive.ops_per_s > 0.0
        {
            send.confab_over_naive = Some(send.ops_per_s / naive.ops_per_s);
        }
        rows.push(naive);
    }

    print_table(&rows);
    if let Some(path) = &a.json {
        let out = json!({
            "url": a.target.url,
            "duration_s": a.duration.as_secs_f64(),
            "warmup_s": a.warmup.as_secs_f64(),
            "concurrency": concurrency,
            "raw_database": a.database_url.as_ref().map(|u| u.split('@').next_back().unwrap_or(u).to_owned()),
            "finished_at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "rows": rows,
        });
        std::fs::write(path, serde_json::to_vec_pretty(&out)?)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(path) = &a.svg {
        let bars: Vec<(String, [f64; 3])> = rows
            .iter()
            .map(|r| {
                let label = format!("{} c={}", r.scenario, r.concurrency);
                (label, [r.p50_ms, r.p95_ms, r.p99_ms])
            })
            .collect();
        std::fs::write(path, latency_svg(&bars))
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// p50, p95 and p99 of every labelled row as bars on a logarithmic millisecond axis (a NaN
/// is not drawn).
fn latency_svg(rows: &[(String, [f64; 3])]) -> String {
    let (left, top, height, slot) = (60.0, 30.0, 300.0, 42.0);
    let (lo, hi) = (0.1f64.log10(), 1000f64.log10());
    let y = |ms: f64| top + height * (1.0 - (ms.max(0.1).log10() - lo) / (hi - lo));
    // Wide enough for the title and the legend however few rows there are.
    let width = (left + slot * rows.len() as f64 + 20.0).max(520.0);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{:.0}\" \
         font-family=\"sans-serif\" font-size=\"10\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{left}\" y=\"16\" font-size=\"12\">Latency per scenario (ms, log scale): \
         p50, p95, p99</text>\n",
        top + height + 110.0
    );
    for ms in [0.1, 1.0, 10.0, 100.0, 1000.0] {
        svg += &format!(
            "<line x1=\"{left}\" x2=\"{:.0}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{:.0}\" y=\"{:.1}\" text-anchor=\"end\">{ms}</text>\n",
            width - 20.0,
            left - 4.0,
            y(ms) + 3.0,
            y = y(ms)
        );
    }
    let colors = ["#4c78a8", "#f58518", "#e45756"];
    for (i, (label, percentiles)) in rows.iter().enumerate() {
        let x0 = left + slot * i as f64 + 6.0;
        for (k, &ms) in percentiles.iter().enumerate() {
            if ms.is_nan() {
                continue;
            }
            let x = x0 + k as f64 * 10.0;
            svg += &format!(
                "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"9\" height=\"{:.1}\" fill=\"{}\">\
                 <title>{label} p{}: {ms:.2} ms</title></rect>\n",
                y(ms),
                top + height - y(ms),
                colors[k],
                [50, 95, 99][k]
            );
        }
        svg += &format!(
            "<text transform=\"translate({:.1},{:.1}) rotate(60)\">{label}</text>\n",
            x0 + 4.0,
            top + height + 8.0,
        );
    }
    for (k, label) in ["p50", "p95", "p99"].iter().enumerate() {
        let x = width - 170.0 + k as f64 * 50.0;
        svg += &format!(
            "<rect x=\"{x:.0}\" y=\"6\" width=\"10\" height=\"10\" fill=\"{}\"/>\
             <text x=\"{:.0}\" y=\"15\">{label}</text>\n",
            colors[k],
            x + 13.0
        );
    }
    svg + "</svg>\n"
}

// ---------------------------------------------------------------------------------------------
// import

#[derive(Args)]
struct ImportArgs {
    /// The NDJSON file to import; written first (same shape as scripts/gen-import.py) when it
    /// does not exist.
    #[arg(long, default_value = "/tmp/confab-bench-import.ndjson")]
    file: PathBuf,
    /// Messages in a generated file.
    #[arg(long, default_value_t = 1_000_000)]
    messages: usize,
    /// Conversations in a generated file (a quarter groups of 5, the rest direct pairs).
    #[arg(long, default_value_t = 10_000)]
    conversations: usize,
    /// Users in a generated file.
    #[arg(long, default_value_t = 5_000)]
    users: usize,
    /// Random seed of a generated file.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// `http` streams the file to POST /v1/import of a running server (`--url`, `--token`);
    /// `cli` runs `confab import FILE` (`--confab`, `--database-url`).
    #[arg(long, default_value = "http")]
    via: String,
    /// Base URL of the running server (`--via http`).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// A server token (`--via http`).
    #[arg(long, env = "CONFAB_BENCH_TOKEN")]
    token: Option<String>,
    /// The server's process id: its CPU time and peak RSS during the import are reported.
    #[arg(long)]
    server_pid: Option<u32>,
    /// The `confab` binary (`--via cli`).
    #[arg(long, default_value = "./target/release/confab")]
    confab: PathBuf,
    /// The database the CLI imports into (`--via cli`), as CONFAB_DATABASE_URL.
    #[arg(long)]
    database_url: Option<String>,
    /// Also write the result as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Writes the import dataset: `users` users, `conversations` conversations (every fourth a
/// group of 5, the rest direct pairs, one per pair), `messages` messages spread uniformly over
/// the conversations with increasing timestamps. The same shape as scripts/gen-import.py.
fn write_import_file(a: &ImportArgs) -> anyhow::Result<()> {
    use std::io::Write;
    if a.users < 5 || a.conversations == 0 {
        bail!("--users must be at least 5 and --conversations at least 1");
    }
    let tmp = a.file.with_extension("partial");
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp)?);
    let mut rng = StdRng::seed_from_u64(a.seed);
    for u in 0..a.users {
        writeln!(
            f,
            r#"{{"record": "user", "id": "iu{u}", "name": "Imported User {u}"}}"#
        )?;
    }
    let mut members: Vec<Vec<usize>> = Vec::with_capacity(a.conversations);
    let mut pairs: HashSet<(usize, usize)> = HashSet::new();
    for c in 0..a.conversations {
        let group = c % 4 == 0;
        let ms: Vec<usize> = if group {
            rand::seq::index::sample(&mut rng, a.users, 5).into_vec()
        } else {
            loop {
                let p = rand::seq::index::sample(&mut rng, a.users, 2).into_vec();
                if pairs.insert((p[0].min(p[1]), p[0].max(p[1]))) {
                    break p;
                }
            }
        };
        let ids: Vec<String> = ms.iter().map(|m| format!("iu{m}")).collect();
        let line = if group {
            json!({"record": "conversation", "external_id": format!("ic{c}"), "type": "group",
                   "member_ids": ids, "name": format!("Conv {c}")})
        } else {
            json!({"record": "conversation", "external_id": format!("ic{c}"), "type": "direct",
                   "member_ids": ids, "name": null})
        };
        writeln!(f, "{line}")?;
        members.push(ms);
    }
    let base = 1_600_000_000i64;
    for i in 0..a.messages {
        let c = rng.random_range(0..a.conversations);
        let sender = members[c][rng.random_range(0..members[c].len())];
        let at = chrono::DateTime::from_timestamp(base + i as i64, 0)
            .unwrap_or_default()
            .format("%Y-%m-%dT%H:%M:%S.000Z");
        writeln!(
            f,
            r#"{{"record": "message", "conversation_external_id": "ic{c}", "external_id": "im{i}", "sender_id": "iu{sender}", "text": "imported message number {i}", "created_at": "{at}"}}"#
        )?;
    }
    f.flush()?;
    drop(f);
    std::fs::rename(&tmp, &a.file)?;
    Ok(())
}

/// The process state letter (`R`, `S`, `Z`, …) from /proc/<pid>/stat.
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 2..].chars().next()
}

/// Busy and total jiffies of the whole machine from /proc/stat.
fn machine_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = cpu.iter().take(8).sum();
    let idle = cpu.get(3)? + cpu.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// Samples a process's RSS every 50 ms (its peak while this runs) and its CPU time.
struct ProcWatch {
    pid: u32,
    cpu_start: f64,
    peak_kib: Arc<std::sync::atomic::AtomicU64>,
    /// The peak of its anonymous memory (`RssAnon`): the resident set without file pages, so
    /// without the pages of a SQLite database the process maps (`mmap_size`), which the
    /// kernel may drop at any time and which grow with the database, not with its work.
    peak_anon_kib: Arc<std::sync::atomic::AtomicU64>,
    last_cpu: Arc<std::sync::Mutex<f64>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl ProcWatch {
    fn start(pid: u32) -> anyhow::Result<ProcWatch> {
        let cpu_start = fanout::proc_cpu_seconds(pid)
            .with_context(|| format!("reading /proc/{pid}/stat (is it running?)"))?;
        let peak_kib = Arc::new(std::sync::atomic::AtomicU64::new(
            fanout::proc_status_kib(pid, "VmRSS").unwrap_or(0),
        ));
        let peak_anon_kib = Arc::new(std::sync::atomic::AtomicU64::new(
            fanout::proc_status_kib(pid, "RssAnon").unwrap_or(0),
        ));
        let last_cpu = Arc::new(std::sync::Mutex::new(cpu_start));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let task = tokio::spawn({
            let (peak, peak_anon) = (peak_kib.clone(), peak_anon_kib.clone());
            let (last, stop) = (last_cpu.clone(), stop.clone());
            async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    // A zombie (exited, not yet reaped) still has its final CPU times.
                    if let Some(c) = fanout::proc_cpu_seconds(pid) {
                        *last.lock().unwrap() = c;
                    }
                    if proc_state(pid) == Some('Z') {
                        break;
                    }
                    if let Some(r) = fanout::proc_status_kib(pid, "VmRSS") {
                        peak.fetch_max(r, std::sync::atomic::Ordering::Relaxed);
                    }
                    if let Some(r) = fanout::proc_status_kib(pid, "RssAnon") {
                        peak_anon.fetch_max(r, std::sync::atomic::Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        });
        Ok(ProcWatch {
            pid,
            cpu_start,
            peak_kib,
            peak_anon_kib,
            last_cpu,
            stop,
            task,
        })
    }

    async fn finish(self) -> ProcStats {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = self.task.await;
        let cpu = fanout::proc_cpu_seconds(self.pid).unwrap_or(*self.last_cpu.lock().unwrap());
        let mb = |kib: &std::sync::atomic::AtomicU64| {
            kib.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1024.0
        };
        ProcStats {
            cpu: cpu - self.cpu_start,
            peak_mb: mb(&self.peak_kib),
            peak_anon_mb: mb(&self.peak_anon_kib),
        }
    }
}

/// What [`ProcWatch`] saw.
#[derive(Clone, Copy)]
struct ProcStats {
    /// CPU seconds used since the watch started.
    cpu: f64,
    /// Peak resident set, MB.
    peak_mb: f64,
    /// Peak anonymous resident memory, MB.
    peak_anon_mb: f64,
}

impl ProcStats {
    fn line(&self, who: &str, elapsed: f64) -> String {
        format!(
            "{who} CPU {:.2} s ({:.0}% of one core), peak RSS {:.0} MB (anonymous {:.0} MB)",
            self.cpu,
            self.cpu * 100.0 / elapsed,
            self.peak_mb,
            self.peak_anon_mb
        )
    }
}

async fn import(a: ImportArgs) -> anyhow::Result<()> {
    if !a.file.exists() {
        eprintln!(
            "writing {} ({} messages, {} conversations, {} users)",
            a.file.display(),
            a.messages,
            a.conversations,
            a.users
        );
        let t = Instant::now();
        write_import_file(&a)?;
        eprintln!("written in {:.1} s", t.elapsed().as_secs_f64());
    }
    let size = std::fs::metadata(&a.file)?.len();
    let machine0 = machine_jiffies();
    let (summary, elapsed, proc_stats) = match a.via.as_str() {
        "http" => {
            let token = a
                .token
                .clone()
                .context("--token (or CONFAB_BENCH_TOKEN) is required with --via http")?;
            let watch = a.server_pid.map(ProcWatch::start).transpose()?;
            let started = Instant::now();
            let summary = import_http(&a.file, &a.url, &token).await?;
            let elapsed = started.elapsed().as_secs_f64();
            let stats = match watch {
                Some(w) => Some(w.finish().await),
                None => None,
            };
            (summary, elapsed, stats)
        }
        "cli" => {
            let db = a
                .database_url
                .clone()
                .context("--database-url is required with --via cli")?;
            let started = Instant::now();
            let child = std::process::Command::new(&a.confab)
                .arg("import")
                .arg(&a.file)
                .env("CONFAB_DATABASE_URL", db)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()
                .with_context(|| format!("running {}", a.confab.display()))?;
            let watch = ProcWatch::start(child.id())?;
            let out = tokio::task::spawn_blocking(move || child.wait_with_output()).await??;
            let elapsed = started.elapsed().as_secs_f64();
            let stats = watch.finish().await;
            if !out.status.success() {
                bail!("confab import failed: {}", out.status);
            }
            let text = String::from_utf8_lossy(&out.stdout);
            let summary: Value = text
                .lines()
                .rev()
                .find_map(|l| serde_json::from_str(l).ok())
                .context("confab import printed no summary")?;
            (summary, elapsed, Some(stats))
        }
        other => bail!("--via must be http or cli, not {other:?}"),
    };
    let machine = match (machine0, machine_jiffies()) {
        (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => Some((b1 - b0) as f64 / (t1 - t0) as f64),
        _ => None,
    };
    let messages = summary["messages"].as_u64().unwrap_or(0);
    let records = ["users", "conversations", "messages"]
        .iter()
        .map(|k| summary[k].as_u64().unwrap_or(0))
        .sum::<u64>();
    let who = if a.via == "cli" { "importer" } else { "server" };
    println!("{summary}");
    println!(
        "import via {}: {} records ({} messages, {} errors) in {elapsed:.2} s: {:.0} messages/s, {:.0} records/s, {:.1} MB/s",
        a.via,
        records,
        messages,
        summary["errors"].as_u64().unwrap_or(0),
        messages as f64 / elapsed,
        records as f64 / elapsed,
        size as f64 / 1e6 / elapsed
    );
    if let Some(stats) = proc_stats {
        println!("{}", stats.line(who, elapsed));
    }
    if let Some(m) = machine {
        println!(
            "machine CPU busy {:.0}% of {} cores (everything running, the database included)",
            m * 100.0,
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
    }
    if let Some(path) = &a.json {
        let out = json!({
            "via": a.via, "file": a.file, "bytes": size, "summary": summary,
            "elapsed_s": elapsed, "messages_per_s": messages as f64 / elapsed,
            "process_cpu_s": proc_stats.map(|s| s.cpu), "process_peak_rss_mb": proc_stats.map(|s| s.peak_mb),
            "process_peak_anon_mb": proc_stats.map(|s| s.peak_anon_mb),
            "machine_busy": machine,
            "finished_at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        });
        std::fs::write(path, serde_json::to_vec_pretty(&out)?)?;
    }
    if summary["errors"].as_u64().unwrap_or(0) > 0 {
        bail!("the import reported bad lines");
    }
    Ok(())
}

/// Streams `file` to POST /v1/import and returns the summary line.
async fn import_http(file: &std::path::Path, url: &str, token: &str) -> anyhow::Result<Value> {
    use tokio::io::AsyncReadExt;
    let f = tokio::fs::File::open(file).await?;
    let body = futures_util::stream::unfold(f, |mut f| async move {
        let mut buf = vec![0u8; 256 * 1024];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(bytes::Bytes::from(buf)), f))
            }
            Err(e) => Some((Err(e), f)),
        }
    });
    let endpoint = format!("{}/v1/import", base(url));
    let res = reqwest::Client::new()
        .post(&endpoint)
        .bearer_auth(token)
        .header("content-type", "application/x-ndjson")
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .with_context(|| format!("POST {endpoint}"))?;
    let status = res.status();
    if !status.is_success() {
        bail!("{status}: {}", res.text().await.unwrap_or_default());
    }
    read_import_progress(res, false).await
}

/// Reads the NDJSON progress stream of POST /v1/import: prints the first bad lines (and the
/// progress when `show_progress`), and returns the summary line.
async fn read_import_progress(
    res: reqwest::Response,
    show_progress: bool,
) -> anyhow::Result<Value> {
    let mut stream = res.bytes_stream();
    let mut buf: Vec<u8> = Vec::new();
    let mut summary = None;
    let mut bad_lines = 0u64;
    while let Some(chunk) = stream.next().await {
        buf.extend_from_slice(&chunk?);
        while let Some(i) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=i).collect();
            let Ok(v) = serde_json::from_slice::<Value>(&line) else {
                continue;
            };
            if v.get("done").and_then(Value::as_bool) == Some(true) {
                summary = Some(v);
            } else if v.get("line").is_some() {
                bad_lines += 1;
                if bad_lines <= 10 {
                    eprintln!("line {}: {}", v["line"], v["error"]);
                }
            } else if let (true, Some(p)) = (show_progress, v.get("progress")) {
                eprint!(
                    "\rimported users {} conversations {} messages {} errors {}   ",
                    p["users"], p["conversations"], p["messages"], p["errors"]
                );
            }
        }
    }
    if show_progress {
        eprintln!();
    }
    summary.context("the import response ended without a summary line")
}

// ---------------------------------------------------------------------------------------------
// messenger

#[derive(Args)]
struct MessengerArgs {
    #[command(flatten)]
    target: Target,
    /// Where the fixture Graph API listens; start the server with
    /// CONFAB_GRAPH_API_URL=http://{this}/v19.0.
    #[arg(long, default_value = "127.0.0.1:18601")]
    fixture_addr: String,
    /// Conversations of the page.
    #[arg(long, default_value_t = 1000)]
    conversations: usize,
    /// Messages per conversation.
    #[arg(long, default_value_t = 20)]
    messages: usize,
    /// The page id (a fresh one per run unless given, so each run imports everything).
    #[arg(long)]
    page_id: Option<String>,
    /// The server's process id: its CPU time and peak RSS during the sync are reported.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Also write the result as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

const FIXTURE_TOKEN: &str = "EAAG-bench-page-token";

/// A Graph API fixture: one page with `threads` conversations of `per` messages, Graph's wire
/// format (`data`, `paging.cursors.{before,after}`, `paging.next`, `+0000` times, error
/// objects), at most 100 items per request. The same shape as the fake in tests/api/graph.rs.
struct Fixture {
    page: String,
    threads: Vec<(String, String, String)>,
    by_id: HashMap<String, usize>,
    per: usize,
    base: String,
    requests: std::sync::atomic::AtomicU64,
}

fn graph_time(i: usize) -> String {
    chrono::DateTime::from_timestamp(1_700_000_000 + i as i64 * 60, 0)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%S+0000")
        .to_string()
}

fn cursor(n: usize) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(format!("offset:{n}"))
}

fn uncursor(s: &str) -> usize {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.strip_prefix("offset:").and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

fn graph_error(code: i64, message: &str) -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        axum::http::StatusCode::BAD_REQUEST,
        axum::Json(json!({"error": {"message": message, "type": "OAuthException", "code": code, "fbtrace_id": "BenchFixture"}})),
    )
        .into_response()
}

impl Fixture {
    fn page_of(
        &self,
        path: &str,
        items: Vec<Value>,
        offset: usize,
        limit: usize,
        total: usize,
        q: &HashMap<String, String>,
    ) -> Value {
        let end = offset + items.len();
        let mut paging = json!({"cursors": {"before": cursor(offset), "after": cursor(end.saturating_sub(1).max(offset))}});
        if end < total {
            paging["cursors"]["after"] = json!(cursor(end));
            let mut next = format!("{}/{path}?limit={limit}&after={}", self.base, cursor(end));
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

impl Fixture {
    /// Counts the request and checks its token: Graph's error 190 for a wrong one.
    fn admit(&self, q: &HashMap<String, String>) -> Option<axum::response::Response> {
        self.requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        (q.get("access_token").map(String::as_str) != Some(FIXTURE_TOKEN))
            .then(|| graph_error(190, "Error validating access token: Session has expired."))
    }
}

fn limit_of(q: &HashMap<String, String>) -> usize {
    q.get("limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(25usize)
        .min(100)
}

async fn fixture_conversations(
    axum::extract::State(f): axum::extract::State<Arc<Fixture>>,
    axum::extract::Path(node): axum::extract::Path<String>,
    axum::extract::Query(q): axum::extract::Query<HashMap<String, String>>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if let Some(refused) = f.admit(&q) {
        return refused;
    }
    if node != f.page || q.get("platform").map(String::as_str) != Some("messenger") {
        return graph_error(100, "Unsupported get request.");
    }
    let limit = limit_of(&q);
    let offset = q.get("after").map(|a| uncursor(a)).unwrap_or(0);
    let items: Vec<Value> = f
        .threads
        .iter()
        .skip(offset)
        .take(limit)
        .map(|(id, customer, name)| {
            json!({
                "id": id,
                "updated_time": graph_time(f.per),
                "participants": {"data": [
                    {"name": name, "email": format!("{customer}@facebook.com"), "id": customer},
                    {"name": "Bench Page", "email": format!("{}@facebook.com", f.page), "id": f.page},
                ]},
            })
        })
        .collect();
    let path = format!("{}/conversations", f.page);
    axum::Json(f.page_of(&path, items, offset, limit, f.threads.len(), &q)).into_response()
}

async fn fixture_messages(
    axum::extract::State(f): axum::extract::State<Arc<Fixture>>,
    axum::extract::Path(node): axum::extract::Path<String>,
    axum::extract::Query(q): axum::extract::Query<HashMap<String, String>>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if let Some(refused) = f.admit(&q) {
        return refused;
    }
    let Some(&i) = f.by_id.get(&node) else {
        return graph_error(100, "Unsupported get request.");
    };
    let (_, customer, name) = &f.threads[i];
    let limit = limit_of(&q);
    let offset = q.get("after").map(|a| uncursor(a)).unwrap_or(0);
    // Graph lists newest first.
    let items: Vec<Value> = (0..f.per)
        .rev()
        .skip(offset)
        .take(limit)
        .map(|k| {
            let (from, from_name) = if k % 2 == 0 {
                (customer.as_str(), name.as_str())
            } else {
                (f.page.as_str(), "Bench Page")
            };
            json!({
                "id": format!("m_{node}_{k}"),
                "message": format!("message {k} of {node}"),
                "from": {"name": from_name, "email": format!("{from}@facebook.com"), "id": from},
                "to": {"data": [{"name": "x", "id": "y"}]},
                "created_time": graph_time(k),
            })
        })
        .collect();
    let path = format!("{node}/messages");
    axum::Json(f.page_of(&path, items, offset, limit, f.per, &q)).into_response()
}

async fn messenger(a: MessengerArgs) -> anyhow::Result<()> {
    let run = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis()
    );
    let page = a.page_id.clone().unwrap_or_else(|| format!("bp{run}"));
    let threads: Vec<(String, String, String)> = (0..a.conversations)
        .map(|i| {
            (
                format!("t_{page}_{i}"),
                format!("{page}c{i}"),
                format!("Customer {i}"),
            )
        })
        .collect();
    let listener = tokio::net::TcpListener::bind(&a.fixture_addr)
        .await
        .with_context(|| format!("binding the fixture to {}", a.fixture_addr))?;
    let fixture = Arc::new(Fixture {
        page: page.clone(),
        by_id: threads
            .iter()
            .enumerate()
            .map(|(i, t)| (t.0.clone(), i))
            .collect(),
        threads,
        per: a.messages,
        base: format!("http://{}/v19.0", listener.local_addr()?),
        requests: Default::default(),
    });
    let app = axum::Router::new()
        .route(
            "/v19.0/{node}/conversations",
            axum::routing::get(fixture_conversations),
        )
        .route(
            "/v19.0/{node}/messages",
            axum::routing::get(fixture_messages),
        )
        .with_state(fixture.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    eprintln!(
        "fixture Graph API at {} (start the server with CONFAB_GRAPH_API_URL={}): page {page}, {} conversations x {} messages",
        fixture.base, fixture.base, a.conversations, a.messages
    );
    let client = reqwest::Client::new();
    let base = base(&a.target.url);
    let watch = a.server_pid.map(ProcWatch::start).transpose()?;
    let started = Instant::now();
    let res = client
        .post(format!("{base}/v1/sources/messenger/sync"))
        .bearer_auth(&a.target.token)
        .json(&json!({"page_id": page, "access_token": FIXTURE_TOKEN}))
        .send()
        .await?;
    if res.status().as_u16() != 202 {
        let status = res.status();
        bail!("{status}: {}", res.text().await.unwrap_or_default());
    }
    let job: Value = res.json().await?;
    let id = job["job_id"].as_str().context("no job_id")?.to_owned();
    let last = loop {
        let j: Value = client
            .get(format!("{base}/v1/jobs/{id}"))
            .bearer_auth(&a.target.token)
            .send()
            .await?
            .json()
            .await?;
        match j["status"].as_str() {
            Some("running") => tokio::time::sleep(Duration::from_millis(10)).await,
            _ => break j,
        }
    };
    let elapsed = started.elapsed().as_secs_f64();
    let stats = match watch {
        Some(w) => Some(w.finish().await),
        None => None,
    };
    println!("{last}");
    if last["status"] != "completed" {
        bail!("the job did not complete: {last}");
    }
    println!(
        "messenger sync: {} conversations, {} messages, {} Graph requests in {elapsed:.2} s end to end ({:.0} messages/s)",
        last["fetched"],
        last["messages"],
        fixture.requests.load(std::sync::atomic::Ordering::Relaxed),
        last["messages"].as_f64().unwrap_or(0.0) / elapsed
    );
    if let Some(stats) = stats {
        println!("{}", stats.line("server", elapsed));
    }
    if let Some(path) = &a.json {
        let out = json!({
            "page_id": page, "conversations": a.conversations, "messages_per_conversation": a.messages,
            "job": last, "elapsed_s": elapsed,
            "graph_requests": fixture.requests.load(std::sync::atomic::Ordering::Relaxed),
            "server_cpu_s": stats.map(|s| s.cpu), "server_peak_rss_mb": stats.map(|s| s.peak_mb),
            "server_peak_anon_mb": stats.map(|s| s.peak_anon_mb),
            "finished_at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        });
        std::fs::write(path, serde_json::to_vec_pretty(&out)?)?;
    }
    Ok(())
}
