//! Hardening: acknowledged sends survive `kill -9` and a PostgreSQL crash, rate limits hold
//! across nodes without slowing other users, settings that can lose writes are refused, and
//! SIGTERM shuts down gracefully. Every test runs real `confab serve` processes.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::both;
use crate::helpers::{
    Db, PrivatePg, Process, Redis, SECRET, confab_command, exec_sql, free_port, fresh_database,
    pg_admin_url, test_config,
};
use crate::sio::SioClient;

fn keys() -> confab::auth::Keys {
    confab::auth::Keys::new(SECRET)
}

fn token(user: &str) -> String {
    keys().user_token(user, Duration::from_secs(3600))
}

/// Acknowledged sends, by client id: (message id, seq).
type Acked = Arc<Mutex<HashMap<String, (String, i64)>>>;

/// One client's sends: each message is retried with its `client_id` until acknowledged,
/// whatever the failure (connection refused or reset while the server is down, 503).
/// Returns how many retries answered with the original message (`created: false`, 200).
async fn send_until_acked(
    base: String,
    user: String,
    conversation: String,
    client_ids: Vec<String>,
    acked: Acked,
) -> usize {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .pool_max_idle_per_host(1)
        .build()
        .unwrap();
    let auth = format!("Bearer {}", token(&user));
    let mut replays = 0;
    for cid in client_ids {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let url = format!("{base}/v1/conversations/{conversation}/messages");
            let res = client
                .post(url)
                .header("authorization", &auth)
                .json(&json!({"client_id": cid, "text": format!("text of {cid}")}))
                .send()
                .await;
            match res {
                Ok(r) if r.status().is_success() => {
                    let created = r.status() == 201;
                    let m: Value = r.json().await.unwrap();
                    assert_eq!(m["client_id"], cid.as_str());
                    if !created {
                        assert!(attempts > 1, "a first attempt is never a replay: {m}");
                        replays += 1;
                    }
                    acked.lock().await.insert(
                        cid.clone(),
                        (
                            m["id"].as_str().unwrap().to_owned(),
                            m["seq"].as_i64().unwrap(),
                        ),
                    );
                    break;
                }
                Ok(r) => {
                    let status = r.status().as_u16();
                    assert!(
                        status == 503,
                        "only 503 may refuse a send here, got {status}: {:?}",
                        r.text().await
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
    replays
}

/// `clients` users `{prefix}0..` in one group conversation, each sending `per_client`
/// messages through `send_until_acked`. Returns the conversation, what is acknowledged so far,
/// and the clients (each answering its count of replays).
async fn start_senders(
    app: &crate::helpers::TestApp,
    prefix: &str,
    clients: usize,
    per_client: usize,
) -> (String, Acked, Vec<tokio::task::JoinHandle<usize>>) {
    let users: Vec<String> = (0..clients).map(|i| format!("{prefix}{i}")).collect();
    let pairs: Vec<(&str, &str)> = users.iter().map(|u| (u.as_str(), u.as_str())).collect();
    app.users(&pairs).await;
    let others: Vec<&str> = users[1..].iter().map(String::as_str).collect();
    let conversation = app.conversation(&users[0], "group", &others).await;
    let acked: Acked = Arc::default();
    let tasks = users
        .iter()
        .map(|u| {
            let ids = (0..per_client).map(|k| format!("{u}-{k}")).collect();
            tokio::spawn(send_until_acked(
                app.base.clone(),
                u.clone(),
                conversation.clone(),
                ids,
                acked.clone(),
            ))
        })
        .collect();
    (conversation, acked, tasks)
}

/// Every message of a conversation, oldest first, read through the API.
async fn all_messages(base: &str, user: &str, conversation: &str) -> Vec<Value> {
    let client = reqwest::Client::new();
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let page: Value = client
            .get(format!(
                "{base}/v1/conversations/{conversation}/messages?after_seq={after}&limit=200"
            ))
            .bearer_auth(token(user))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let items = page["messages"].as_array().unwrap().clone();
        if items.is_empty() {
            return out;
        }
        after = items
            .iter()
            .map(|m| m["seq"].as_i64().unwrap())
            .max()
            .unwrap();
        out.extend(items);
    }
}

/// The conversation holds exactly the acknowledged messages (each once, with the id and seq
/// its acknowledgement gave) and its seqs run 1..=N without a gap.
fn assert_exactly_acked(messages: &[Value], acked: &HashMap<String, (String, i64)>) {
    let mut seqs: Vec<i64> = messages
        .iter()
        .map(|m| m["seq"].as_i64().unwrap())
        .collect();
    seqs.sort();
    let expected: Vec<i64> = (1..=messages.len() as i64).collect();
    assert_eq!(seqs, expected, "seqs have no gaps");
    let mut by_client: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for m in messages {
        by_client
            .entry(m["client_id"].as_str().unwrap_or_default().to_owned())
            .or_default()
            .push(m);
    }
    for (cid, (id, seq)) in acked {
        let stored = by_client.get(cid).map(Vec::as_slice).unwrap_or_default();
        assert_eq!(stored.len(), 1, "{cid} is stored exactly once");
        assert_eq!(
            stored[0]["id"],
            id.as_str(),
            "{cid} has its acknowledged id"
        );
        assert_eq!(stored[0]["seq"], *seq, "{cid} has its acknowledged seq");
    }
}

both!(acknowledged_sends_survive_kill_9);

/// 8 clients send 5,000 messages into one conversation while the server is killed with
/// `kill -9` three times and restarted on the same port; clients retry unacknowledged sends
/// with the same `client_id`.
async fn acknowledged_sends_survive_kill_9(db: Db) {
    let url = fresh_database(db).await;
    let port = free_port();
    let mut node = Process::start_on(port, &url, &[]).await;
    let app = node.app(db, &url).await;
    let (conversation, acked, clients) = start_senders(&app, "c", 8, 625).await;

    let deadline = Instant::now() + Duration::from_secs(240);
    for threshold in [1000, 2200, 3400] {
        while acked.lock().await.len() < threshold {
            assert!(Instant::now() < deadline, "sends stalled");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        node.kill9();
        node = Process::start_on(port, &url, &[]).await;
    }
    let mut replays = 0;
    for c in clients {
        replays += tokio::time::timeout_at(deadline.into(), c)
            .await
            .expect("clients finish")
            .unwrap();
    }
    let acked = acked.lock().await.clone();
    assert_eq!(acked.len(), 5000);
    let messages = all_messages(&node.base, "c0", &conversation).await;
    assert_eq!(messages.len(), 5000);
    assert_exactly_acked(&messages, &acked);

    // A retry of an acknowledged send answers the original message. Replays seen during the
    // crashes (a send committed, its answer lost) are counted; and every client repeats a few
    // acknowledged sends now.
    let client = reqwest::Client::new();
    for u in (0..8).map(|i| format!("c{i}")) {
        for k in [0, 311, 624] {
            let cid = format!("{u}-{k}");
            let r = client
                .post(format!(
                    "{}/v1/conversations/{conversation}/messages",
                    node.base
                ))
                .bearer_auth(token(&u))
                .json(&json!({"client_id": cid, "text": "a different text"}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "a replay is 200, not 201");
            let m: Value = r.json().await.unwrap();
            assert_eq!(m["id"], acked[&cid].0.as_str());
            assert_eq!(m["seq"], acked[&cid].1);
            assert_eq!(m["text"], format!("text of {cid}"), "the original message");
        }
    }
    eprintln!("kill -9 x3 on {db:?}: 5000 acknowledged, {replays} replays after lost answers");
}

/// The durability guard: settings that can lose acknowledged writes are refused at start
/// with a message naming them, unless the operator's flag accepts them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsafe_durability_is_refused_without_the_flag() {
    // PostgreSQL: synchronous_commit=off for this database only.
    let url = fresh_database(Db::Postgres).await;
    let name = url.rsplit('/').next().unwrap().to_owned();
    exec_sql(
        Db::Postgres,
        &pg_admin_url(),
        &format!("alter database {name} set synchronous_commit = off"),
    )
    .await;
    let config = test_config(&url);
    let refused = confab::storage::open(&config).await.err().expect("refused");
    let text = format!("{refused:#}");
    assert!(text.contains("synchronous_commit=off"), "{text}");
    assert!(text.contains("--allow-unsafe-durability"), "{text}");
    let mut allowed = test_config(&url);
    allowed.allow_unsafe_durability = true;
    confab::storage::open(&allowed)
        .await
        .expect("allowed by the flag");

    // SQLite below synchronous=FULL, through the command line.
    let sqlite = fresh_database(Db::Sqlite).await;
    let run = |flag: bool| {
        let mut cmd = confab_command(&sqlite);
        cmd.arg("migrate")
            .env("CONFAB_SQLITE_SYNCHRONOUS", "normal");
        if flag {
            cmd.arg("--allow-unsafe-durability");
        }
        cmd.output().unwrap()
    };
    let out = run(false);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("SQLite synchronous=normal"), "{stderr}");
    assert!(run(true).status.success());
    // The default (FULL) needs no flag.
    let out = confab_command(&sqlite).arg("migrate").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One budget across nodes: with Redis, a user's requests on two nodes draw from one bucket,
/// REST and socket events alike; the socket's ack carries the error and `retry_after`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_hold_across_nodes() {
    let redis = Redis::start_on(free_port());
    let url = fresh_database(Db::Postgres).await;
    let env = [
        ("CONFAB_REDIS_URL", redis.url()),
        ("CONFAB_RATE_LIMIT_PER_USER", "1/min burst 10".to_owned()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let a = Process::start(&url, &env).await;
    let b = Process::start(&url, &env).await;
    // Both limiters connect to Redis in the background at start.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let client = reqwest::Client::new();
    let get = |base: &str, user: &str| {
        client
            .get(format!("{base}/v1/conversations"))
            .bearer_auth(token(user))
            .send()
    };
    // 6 on A and 4 on B: the shared burst of 10 is spent, though B alone took only 4.
    for _ in 0..6 {
        assert_eq!(get(&a.base, "ann").await.unwrap().status(), 200);
    }
    for _ in 0..4 {
        assert_eq!(get(&b.base, "ann").await.unwrap().status(), 200);
    }
    let r = get(&b.base, "ann").await.unwrap();
    assert_eq!(r.status(), 429);
    let wait: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&wait), "Retry-After {wait}");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    // Another user has a budget of their own.
    assert_eq!(get(&b.base, "bob").await.unwrap().status(), 200);
    // A socket event takes from the same budget: refused in the ack.
    let mut sock = SioClient::connect(&b.base, Some(&token("ann")), "websocket")
        .await
        .expect("connect");
    let ack = sock
        .emit("read", json!({"conversation_id": "nope", "seq": 1}))
        .await;
    assert_eq!(ack["ok"], false, "{ack}");
    assert_eq!(ack["error"]["code"], "rate_limited", "{ack}");
    assert!(ack["error"]["retry_after"].as_u64().unwrap() >= 1, "{ack}");
}

/// A user over the limit gets 429 with `Retry-After`, and another user's latency stays
/// within twice its baseline while the flood goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_user_does_not_slow_another() {
    let url = fresh_database(Db::Sqlite).await;
    let node = Process::start(&url, &[("CONFAB_RATE_LIMIT_PER_USER", "20/s burst 20")]).await;
    let app = node.app(Db::Sqlite, &url).await;
    app.users(&[("ann", "Ann"), ("bob", "Bob")]).await;
    let c = app.conversation("bob", "direct", &["ann"]).await;
    app.send("bob", &c, "b1", "hello").await;
    let client = reqwest::Client::new();
    let bob = token("bob");
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let bob_base = node.base.clone();
    let measure = |n: usize| {
        let (client, bob, base) = (client.clone(), bob.clone(), bob_base.clone());
        async move {
            let mut times = Vec::new();
            for _ in 0..n {
                let started = Instant::now();
                let r = client
                    .get(format!("{base}/v1/conversations"))
                    .bearer_auth(&bob)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                r.bytes().await.unwrap();
                times.push(started.elapsed());
                // Under bob's own budget of 20/s.
                tokio::time::sleep(Duration::from_millis(55)).await;
            }
            times
        }
    };
    measure(5).await; // warm up

    // Ann floods in rounds that alternate with quiet ones, so load from elsewhere on the
    // machine weighs on both sides alike.
    let flooding = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let refused = Arc::new(AtomicUsize::new(0));
    // Two connections, each a request every ~10 ms: about ten times her budget of 20/s, so
    // after her burst nearly everything is refused.
    let flood: Vec<_> = (0..2)
        .map(|_| {
            let (flooding, done, refused, base) = (
                flooding.clone(),
                done.clone(),
                refused.clone(),
                node.base.clone(),
            );
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let ann = token("ann");
                while !done.load(Ordering::Relaxed) {
                    if !flooding.load(Ordering::Relaxed) {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        continue;
                    }
                    let r = client
                        .get(format!("{base}/v1/conversations"))
                        .bearer_auth(&ann)
                        .send()
                        .await
                        .unwrap();
                    if r.status() == 429 {
                        assert!(r.headers().contains_key("retry-after"));
                        refused.fetch_add(1, Ordering::Relaxed);
                    } else {
                        assert_eq!(r.status(), 200);
                    }
                    tokio::time::sleep(Duration::from_millis(8)).await;
                }
            })
        })
        .collect();
    let (mut quiet, mut flooded) = (Vec::new(), Vec::new());
    for _ in 0..4 {
        flooding.store(false, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(50)).await;
        quiet.extend(measure(15).await);
        flooding.store(true, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(50)).await;
        flooded.extend(measure(15).await);
    }
    done.store(true, Ordering::Relaxed);
    for f in flood {
        f.await.unwrap();
    }
    let (baseline, flooded) = (median(quiet), median(flooded));
    let refused = refused.load(Ordering::Relaxed);
    eprintln!("flood: {refused} refused; bob's median {baseline:?} quiet, {flooded:?} flooded");
    assert!(refused > 100, "the flood was refused ({refused})");
    assert!(
        flooded <= baseline * 2,
        "bob's median latency {flooded:?} under the flood, {baseline:?} without"
    );
}

/// PostgreSQL crashes (`pg_ctl stop -m immediate`) under load: while it is down requests fail
/// fast with 503 and `/readyz` says so; when it is back service resumes by itself, and every
/// acknowledged message is there exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_fails_fast_and_loses_nothing() {
    let pg = PrivatePg::start_new();
    let url = pg.url();
    let node = Process::start(&url, &[("CONFAB_DB_TIMEOUT", "2s")]).await;
    let app = node.app(Db::Postgres, &url).await;
    let (conversation, acked, clients) = start_senders(&app, "w", 4, 400).await;
    while acked.lock().await.len() < 300 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    pg.stop_immediate();
    let down_at = Instant::now();

    // While it is down: every request is answered within the 2 s timeout (no hang); once a
    // probe found the database down (at the latest the first 503 after 2 s, the probe's ping
    // after 1 s more; a request on a pooled connection the crash closed fails at once) the
    // answers come at once.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut answers = Vec::new();
    while down_at.elapsed() < Duration::from_secs(6) {
        let started = Instant::now();
        let r = client
            .get(format!("{}/v1/conversations", node.base))
            .bearer_auth(token("w0"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 503);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unavailable");
        answers.push((started - down_at, started.elapsed()));
    }
    let slowest = answers.iter().map(|a| a.1).max().unwrap();
    assert!(slowest < Duration::from_secs(3), "slowest 503 {slowest:?}");
    let late: Vec<Duration> = answers
        .iter()
        .filter(|(at, _)| *at > Duration::from_millis(3500))
        .map(|a| a.1)
        .collect();
    assert!(late.len() >= 10, "answers after 3.5 s: {answers:?}");
    assert!(
        late.iter().all(|d| *d < Duration::from_millis(200)),
        "503s are immediate once the outage is known: {answers:?}"
    );
    let ready = client
        .get(format!("{}/readyz", node.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["database"], "down");

    // Back: service resumes by itself and the clients finish.
    pg.start();
    let deadline = Instant::now() + Duration::from_secs(60);
    for c in clients {
        tokio::time::timeout_at(deadline.into(), c)
            .await
            .expect("clients finish after the database returns")
            .unwrap();
    }
    let ready = client
        .get(format!("{}/readyz", node.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let acked = acked.lock().await.clone();
    assert_eq!(acked.len(), 1600);
    let messages = all_messages(&node.base, "w0", &conversation).await;
    assert_eq!(messages.len(), 1600);
    assert_exactly_acked(&messages, &acked);
}

/// SIGTERM: socket transports are closed (the client will reconnect), requests in flight are answered
/// (their messages stored), and the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_sockets_and_finishes_requests() {
    let url = fresh_database(Db::Sqlite).await;
    let mut node = Process::start(&url, &[]).await;
    let app = node.app(Db::Sqlite, &url).await;
    app.users(&[("ann", "Ann"), ("bob", "Bob")]).await;
    let c = app.conversation("ann", "direct", &["bob"]).await;
    let mut sock = SioClient::connect(&node.base, Some(&token("bob")), "websocket")
        .await
        .expect("connect");
    // A long-polling client too: its pending poll must not hold the shutdown.
    let mut polling = SioClient::connect(&node.base, Some(&token("bob")), "polling")
        .await
        .expect("connect");

    let client = reqwest::Client::new();
    let sends: Vec<_> = (0..40)
        .map(|i| {
            let client = client.clone();
            let url = format!("{}/v1/conversations/{c}/messages", node.base);
            tokio::spawn(async move {
                client
                    .post(url)
                    .bearer_auth(token("ann"))
                    .json(&json!({"client_id": format!("t{i}"), "text": "in flight"}))
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let stopping = Instant::now();
    node.terminate();
    let mut answered = 0;
    for s in sends {
        // An error: not accepted before the listener closed.
        if let Ok(status) = s.await.unwrap() {
            assert_eq!(status, 201, "an accepted request is answered in full");
            answered += 1;
        }
    }
    // The server closes the transports; a close racing the client's own heartbeat bytes
    // reaches the client as a reset ("transport error") rather than a close frame. Either
    // way the client's next step is to reconnect.
    for reason in [
        sock.closed_by_server().await,
        polling.closed_by_server().await,
    ] {
        assert!(
            reason == "transport close" || reason == "transport error",
            "closed by the server: {reason}"
        );
    }
    let status = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = node.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "exited within 10 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await
    .unwrap();
    assert!(status.success(), "exit status {status}");
    assert!(stopping.elapsed() < Duration::from_secs(10));
    // What was answered is stored.
    let restarted = Process::start(&url, &[]).await;
    let stored = all_messages(&restarted.base, "ann", &c).await;
    assert_eq!(stored.len(), answered);
    assert!(answered > 0, "some sends were in flight");
}
