//! Realtime with the official Socket.IO client: delivery to members only, every socket of a
//! user, client events with acks, membership taking effect at once, presence, slow consumers.

use std::time::Duration;

use futures_util::future::join_all;
use serde_json::json;

use crate::both;
use crate::helpers::Redis;
use crate::helpers::{Db, TestApp, fresh_database, spawn_app_with, test_config};
use crate::sio::SioClient;

both!(
    handshake_auth_and_transports,
    delivery_to_members_only,
    client_events,
    membership_takes_effect,
    presence_with_grace
);

async fn app(db: Db) -> TestApp {
    let url = fresh_database(db).await;
    let mut config = test_config(&url);
    // Long enough for a new Node client process to start and reconnect on a loaded machine.
    config.presence_grace = Duration::from_millis(2000);
    spawn_app_with(db, config).await
}

async fn socket(app: &TestApp, user: &str) -> SioClient {
    SioClient::connect(&app.base, Some(&app.user(user)), "websocket")
        .await
        .expect("connects")
}

async fn handshake_auth_and_transports(db: Db) {
    let app = app(db).await;
    for token in [None, Some("garbage"), Some(app.server().as_str())] {
        let err = SioClient::connect(&app.base, token, "websocket")
            .await
            .err();
        assert_eq!(err.as_deref(), Some("unauthorized"), "token {token:?}");
    }
    let expired = app.keys.user_token("ann", Duration::ZERO);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        SioClient::connect(&app.base, Some(&expired), "websocket")
            .await
            .err()
            .as_deref(),
        Some("unauthorized")
    );
    // A deactivated user's token no longer connects.
    app.users(&[("gone", "Gone")]).await;
    app.delete("/v1/users/gone", &app.server()).await;
    assert_eq!(
        SioClient::connect(&app.base, Some(&app.user("gone")), "websocket")
            .await
            .err()
            .as_deref(),
        Some("unauthorized")
    );
    // Deactivating a user closes their open sockets too.
    let mut doomed = socket(&app, "doomed").await;
    assert_eq!(
        app.delete("/v1/users/doomed", &app.server())
            .await
            .status
            .as_u16(),
        204
    );
    assert_eq!(doomed.closed_by_server().await, "io server disconnect");
    // Allowed origins are enforced on the handshake.
    let url = fresh_database(app.db).await;
    let mut config = test_config(&url);
    config.allowed_origins = Some(vec!["https://app.example.com".into()]);
    let strict = spawn_app_with(app.db, config).await;
    let t = strict.user("ann");
    let bad = SioClient::connect_from(
        &strict.base,
        Some(&t),
        "websocket",
        Some("https://evil.example.com"),
    )
    .await;
    assert_eq!(bad.err().as_deref(), Some("forbidden"));
    SioClient::connect_from(
        &strict.base,
        Some(&t),
        "websocket",
        Some("https://app.example.com"),
    )
    .await
    .expect("allowed origin");
    // An app's client with no option but `auth`: long-polling, upgraded to WebSocket.
    let mut plain = SioClient::connect(&app.base, Some(&app.user("ann")), "default")
        .await
        .expect("default options connect");
    assert_eq!(plain.upgraded().await, "websocket");
    // Long-polling works as well as WebSocket.
    let g = app.conversation("ann", "group", &["bob"]).await;
    let mut polling = SioClient::connect(&app.base, Some(&app.user("bob")), "polling")
        .await
        .expect("polling connects");
    app.send("ann", &g, "c1", "over polling").await;
    assert_eq!(polling.event("message.new").await["text"], "over polling");
}

async fn delivery_to_members_only(db: Db) {
    let app = app(db).await;
    let (a, b) = (app.user("ann"), app.user("bob"));
    let mut bob1 = socket(&app, "bob").await;
    let mut bob2 = socket(&app, "bob").await;
    let mut eve = socket(&app, "eve").await;
    let mut ann = socket(&app, "ann").await;

    // conversation.created, as each receiver sees it.
    let d = app.conversation("ann", "direct", &["bob"]).await;
    let created = bob1.event("conversation.created").await;
    assert_eq!(created["id"], d.as_str());
    assert_eq!(
        created["name"], "ann",
        "named after the other member, for bob"
    );
    assert_eq!(bob2.event("conversation.created").await["id"], d.as_str());
    assert_eq!(ann.event("conversation.created").await["name"], "bob");

    let g = app.conversation("ann", "group", &["bob"]).await;
    let m = app.send("ann", &g, "c1", "hello").await;
    let id = m["id"].as_str().unwrap().to_owned();
    for s in [&mut bob1, &mut bob2, &mut ann] {
        let e = s
            .event_where("message.new", |e| e["id"] == id.as_str())
            .await;
        assert_eq!(e["seq"], 1);
        assert!(
            e["sync_token"].is_string(),
            "events carry their sync position"
        );
    }
    app.patch(&format!("/v1/messages/{id}"), &a, json!({"text": "hello!"}))
        .await
        .expect(200);
    assert_eq!(bob1.event("message.updated").await["text"], "hello!");
    app.delete(&format!("/v1/messages/{id}"), &a)
        .await
        .expect(200);
    assert!(bob2.event("message.deleted").await["deleted_at"].is_string());
    app.patch(
        &format!("/v1/conversations/{g}"),
        &a,
        json!({"name": "Team"}),
    )
    .await
    .expect(200);
    assert_eq!(bob1.event("conversation.updated").await["name"], "Team");
    app.put(
        &format!("/v1/conversations/{g}/tags"),
        &a,
        json!({"tags": ["vip"]}),
    )
    .await
    .expect(200);
    assert_eq!(
        bob1.event_where("conversation.updated", |c| c["tags"] == json!(["vip"]))
            .await["id"],
        g.as_str()
    );
    app.post(&format!("/v1/conversations/{g}/read"), &b, json!({}))
        .await
        .expect(200);
    let r = ann.event("read").await;
    assert_eq!(
        (r["user_id"].as_str(), r["conversation_id"].as_str()),
        (Some("bob"), Some(g.as_str()))
    );
    app.post(
        &format!("/v1/conversations/{g}/members"),
        &a,
        json!({"user_ids": ["cat"]}),
    )
    .await
    .expect(200);
    assert_eq!(bob1.event("member.joined").await["user_id"], "cat");
    app.delete(&format!("/v1/conversations/{g}/members/cat"), &a)
        .await;
    assert_eq!(bob2.event("member.left").await["user_id"], "cat");

    // The non-member saw none of it.
    for ev in [
        "message.new",
        "message.updated",
        "message.deleted",
        "conversation.created",
        "conversation.updated",
        "read",
        "member.joined",
        "member.left",
    ] {
        eve.no_event(ev, Duration::from_millis(50)).await;
    }
}

async fn client_events(db: Db) {
    let app = app(db).await;
    let g = app.conversation("ann", "group", &["bob"]).await;
    let mut ann1 = socket(&app, "ann").await;
    let mut ann2 = socket(&app, "ann").await;
    let mut bob = socket(&app, "bob").await;

    let ack = ann1
        .emit(
            "message.send",
            json!({"conversation_id": g, "client_id": "s1", "text": "via socket"}),
        )
        .await;
    assert_eq!(ack["ok"], true, "{ack}");
    assert_eq!(ack["message"]["seq"], 1);
    let replay = ann1
        .emit(
            "message.send",
            json!({"conversation_id": g, "client_id": "s1", "text": "again"}),
        )
        .await;
    assert_eq!(replay["message"], ack["message"], "idempotent like REST");
    assert_eq!(bob.event("message.new").await["text"], "via socket");
    // The sender's own sockets get it too (clients deduplicate by id).
    assert_eq!(ann2.event("message.new").await["id"], ack["message"]["id"]);
    // The same write path as REST: the message is there.
    let page = app
        .get(&format!("/v1/conversations/{g}/messages"), &app.user("bob"))
        .await
        .expect(200);
    assert_eq!(page["messages"].as_array().unwrap().len(), 1);

    // A frame many times the WebSocket read buffer (1 KiB) arrives whole: the longest text,
    // two bytes a character (16 KB).
    let long = "é".repeat(confab::domain::MAX_TEXT_CHARS);
    let ack = ann1
        .emit(
            "message.send",
            json!({"conversation_id": g, "client_id": "long", "text": long}),
        )
        .await;
    assert_eq!(ack["ok"], true, "{ack}");
    assert_eq!(ack["message"]["seq"], 2);
    assert_eq!(bob.event("message.new").await["text"], long.as_str());
    assert_eq!(ann2.event("message.new").await["seq"], 2);

    let bad = ann1
        .emit(
            "message.send",
            json!({"conversation_id": g, "text": "no client id"}),
        )
        .await;
    assert_eq!(bad["ok"], false);
    assert_eq!(bad["error"]["code"], "validation_failed");
    assert_eq!(bad["error"]["field"], "client_id");
    let hidden = app.conversation("eve", "group", &[]).await;
    let nf = ann1
        .emit(
            "message.send",
            json!({"conversation_id": hidden, "client_id": "x", "text": "x"}),
        )
        .await;
    assert_eq!(nf["error"]["code"], "not_found");

    // typing: to the other members, never to any of the typist's sockets; never stored.
    let t = ann1
        .emit("typing", json!({"conversation_id": g, "typing": true}))
        .await;
    assert_eq!(t, json!({"ok": true}));
    let typing = bob.event("typing").await;
    assert_eq!(
        typing,
        json!({"conversation_id": g, "user_id": "ann", "typing": true})
    );
    ann2.no_event("typing", Duration::from_millis(300)).await;
    ann1.no_event("typing", Duration::from_millis(50)).await;
    let t = ann1
        .emit("typing", json!({"conversation_id": hidden, "typing": true}))
        .await;
    assert_eq!(t["error"]["code"], "not_found");

    // read: acknowledged and delivered to the members.
    let r = bob.emit("read", json!({"conversation_id": g})).await;
    assert_eq!(r["ok"], true);
    assert_eq!(r["last_read_seq"], 2);
    assert_eq!(ann1.event("read").await["seq"], 2);
    let r = bob
        .emit("read", json!({"conversation_id": g, "seq": "x"}))
        .await;
    assert_eq!(r["error"]["code"], "validation_failed");

    // The per-socket rate limit answers rate_limited in the ack.
    let url = fresh_database(app.db).await;
    let mut config = test_config(&url);
    config.socket_rate_limit = Some(confab::config::RateLimit {
        per_second: 1.0,
        burst: 2.0,
    });
    let limited = spawn_app_with(app.db, config).await;
    let g2 = limited.conversation("ann", "group", &[]).await;
    let mut s = SioClient::connect(&limited.base, Some(&limited.user("ann")), "websocket")
        .await
        .unwrap();
    let mut codes = Vec::new();
    for _ in 0..4 {
        let a = s
            .emit("typing", json!({"conversation_id": g2, "typing": true}))
            .await;
        codes.push(a["error"]["code"].as_str().unwrap_or("ok").to_owned());
    }
    assert_eq!(codes, ["ok", "ok", "rate_limited", "rate_limited"]);
}

async fn membership_takes_effect(db: Db) {
    let app = app(db).await;
    let g = app.conversation("ann", "group", &["bob"]).await;
    let mut cat = socket(&app, "cat").await;
    let mut bob = socket(&app, "bob").await;
    // Added while connected: the next message arrives without reconnecting.
    app.post(
        &format!("/v1/conversations/{g}/members"),
        &app.user("ann"),
        json!({"user_ids": ["cat"]}),
    )
    .await
    .expect(200);
    let joined = cat.event("member.joined").await;
    assert_eq!(
        joined["conversation"]["id"],
        g.as_str(),
        "the joiner learns the conversation"
    );
    app.send("ann", &g, "m1", "welcome cat").await;
    assert_eq!(
        cat.event_where("message.new", |m| m["type"] == "regular")
            .await["text"],
        "welcome cat"
    );
    bob.event_where("message.new", |m| m["text"] == "welcome cat")
        .await;
    bob.event_where("message.new", |m| m["type"] == "system")
        .await;
    // Removed: hears that, then nothing more.
    app.delete(
        &format!("/v1/conversations/{g}/members/bob"),
        &app.user("ann"),
    )
    .await;
    assert_eq!(bob.event("member.left").await["user_id"], "bob");
    app.send("ann", &g, "m2", "bob is gone").await;
    assert_eq!(
        cat.event_where("message.new", |m| m["text"] == "bob is gone")
            .await["seq"],
        4
    );
    bob.no_event("message.new", Duration::from_millis(400))
        .await;
    let t = bob
        .emit("typing", json!({"conversation_id": g, "typing": true}))
        .await;
    assert_eq!(t["error"]["code"], "not_found");
}

async fn presence_with_grace(db: Db) {
    let app = app(db).await;
    app.conversation("ann", "direct", &["bob"]).await;
    app.conversation("ann", "group", &["eve"]).await;
    let mut bob = socket(&app, "bob").await;
    let mut eve = socket(&app, "eve").await;
    let mut ann = socket(&app, "ann").await;
    let on = bob.event_where("presence", |p| p["user_id"] == "ann").await;
    assert_eq!(on["online"], true);
    let user = app.get("/v1/users/ann", &app.user("bob")).await.expect(200);
    assert_eq!(user["online"], true);
    // Reconnecting within the grace period: no offline/online flap.
    ann.disconnect().await;
    let mut ann = socket(&app, "ann").await;
    bob.no_event("presence", Duration::from_millis(1500)).await;
    // Gone for good: offline after the grace period, with last_seen_at stored.
    ann.disconnect().await;
    let off = bob.event_where("presence", |p| p["user_id"] == "ann").await;
    assert_eq!(off["online"], false);
    assert!(off["last_seen_at"].is_string());
    let user = app.get("/v1/users/ann", &app.user("bob")).await.expect(200);
    assert_eq!(user["online"], false);
    assert!(user["last_seen_at"].is_string());
    // Only users sharing a direct conversation hear it.
    eve.no_event("presence", Duration::from_millis(100)).await;
}

/// A client that never reads does not delay the others, and is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_client_is_dropped() {
    let app = app(Db::Sqlite).await;
    let g = app.conversation("ann", "group", &["bob", "sam"]).await;
    let mut sam = socket(&app, "sam").await;
    let mut bob = socket(&app, "bob").await;
    sam.stall().await;
    let text: String = (0..7900)
        .map(|i| char::from(b'a' + (i * 7 % 26) as u8))
        .collect();
    let total = 1600;
    let started = std::time::Instant::now();
    let token = app.user("ann");
    let path = format!("/v1/conversations/{g}/messages");
    for chunk in (0..total).collect::<Vec<_>>().chunks(32) {
        join_all(chunk.iter().map(|i| {
            app.post(
                &path,
                &token,
                json!({"client_id": format!("c{i}"), "text": text}),
            )
        }))
        .await
        .into_iter()
        .for_each(|r| assert_eq!(r.status.as_u16(), 201));
    }
    // Bob gets every message.
    let mut seqs = std::collections::HashSet::new();
    while seqs.len() < total {
        let m = bob.event("message.new").await;
        seqs.insert(m["seq"].as_i64().unwrap());
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(60),
        "delivery to others took {elapsed:?}"
    );
    let metrics = app
        .client
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let dropped = metrics
        .lines()
        .find(|l| l.starts_with("confab_realtime_dropped_slow_consumers_total"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(dropped >= 1.0, "the stalled socket was dropped:\n{metrics}");
    // Dropped from delivery: a new message reaches bob, sam is out of every room.
    app.send("ann", &g, "after", "after the drop").await;
    assert_eq!(
        bob.event_where("message.new", |m| m["text"] == "after the drop")
            .await["seq"],
        total as i64 + 1
    );
}

async fn redis_state(base: &str) -> String {
    let r: serde_json::Value = reqwest::get(format!("{base}/readyz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    r["redis"].as_str().unwrap_or_default().to_owned()
}

async fn wait_redis(base: &str, want: &str) {
    for _ in 0..200 {
        if redis_state(base).await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{base}: redis never became {want}");
}

/// Two `confab serve` processes on one PostgreSQL database and one Redis deliver each other's
/// events; with Redis gone, sends succeed and same-node delivery goes on; cross-node delivery
/// comes back by itself when Redis returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_redis_and_survive_its_restart() {
    use crate::helpers::Process;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut redis = Redis::start_on(port);
    let url = fresh_database(Db::Postgres).await;
    let env = [
        ("CONFAB_REDIS_URL", redis.url()),
        ("CONFAB_PRESENCE_GRACE", "500ms".into()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let node_a = Process::start(&url, &env).await;
    let node_b = Process::start(&url, &env).await;
    let a = node_a.app(Db::Postgres, &url).await;
    let b = node_b.app(Db::Postgres, &url).await;
    wait_redis(&a.base, "ok").await;
    wait_redis(&b.base, "ok").await;

    let g = a.conversation("ann", "group", &["bob"]).await;
    a.conversation("ann", "direct", &["bob"]).await;
    let mut bob_on_b = SioClient::connect(&b.base, Some(&b.user("bob")), "websocket")
        .await
        .unwrap();
    let mut ann_on_a = SioClient::connect(&a.base, Some(&a.user("ann")), "websocket")
        .await
        .unwrap();

    // A send through node A reaches the socket on node B, and typing crosses too.
    a.send("ann", &g, "c1", "across nodes").await;
    assert_eq!(
        bob_on_b
            .event_where("message.new", |m| m["text"] == "across nodes")
            .await["seq"],
        1
    );
    ann_on_a
        .emit("typing", json!({"conversation_id": g, "typing": true}))
        .await;
    assert_eq!(bob_on_b.event("typing").await["user_id"], "ann");
    // Presence is shared: ann (on A) is online as seen through B, and bob hears it on B.
    bob_on_b
        .event_where("presence", |p| p["user_id"] == "ann" && p["online"] == true)
        .await;
    assert_eq!(
        b.get("/v1/users/ann", &b.user("bob")).await.expect(200)["online"],
        true
    );

    // Redis goes away: sends still succeed, same-node delivery continues, readiness says so.
    redis.stop();
    wait_redis(&a.base, "down").await;
    let ready: serde_json::Value = reqwest::get(format!("{}/readyz", a.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["status"], "degraded");
    let mut bob_on_a = SioClient::connect(&a.base, Some(&a.user("bob")), "websocket")
        .await
        .unwrap();
    a.send("ann", &g, "c2", "while redis is down").await;
    assert_eq!(
        bob_on_a
            .event_where("message.new", |m| m["text"] == "while redis is down")
            .await["seq"],
        2
    );
    let b_send = b
        .post(
            &format!("/v1/conversations/{g}/messages"),
            &b.user("bob"),
            json!({"client_id": "b1", "text": "from b"}),
        )
        .await;
    assert_eq!(b_send.status.as_u16(), 201, "the database is the truth");

    // Redis returns on the same address: cross-node delivery resumes by itself.
    redis = Redis::start_on(port);
    wait_redis(&a.base, "ok").await;
    wait_redis(&b.base, "ok").await;
    a.send("ann", &g, "c3", "redis is back").await;
    assert_eq!(
        bob_on_b
            .event_where("message.new", |m| m["text"] == "redis is back")
            .await["seq"],
        4
    );
    // What was missed cross-node is in sync.
    drop(redis);
}

fn token_pos(token: &str) -> i64 {
    use base64::Engine;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .unwrap();
    // `database_id:position`, then the 12-byte tag.
    String::from_utf8(raw[..raw.len() - 12].to_vec())
        .unwrap()
        .rsplit_once(':')
        .unwrap()
        .1
        .parse()
        .unwrap()
}

/// With several write workers committing concurrently, events still reach a socket in position
/// order, so the `sync_token` of any event is a point to resume sync from: no gap, no overlap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_arrive_in_position_order_and_resume_sync() {
    let app = app(Db::Postgres).await;
    let senders: Vec<String> = (0..8).map(|i| format!("s{i}")).collect();
    let refs: Vec<&str> = senders.iter().map(String::as_str).collect();
    let mut convs = Vec::new();
    for _ in 0..4 {
        convs.push(app.conversation("reader", "group", &refs).await);
    }
    let mut reader = socket(&app, "reader").await;
    let total = 8 * 12;
    join_all(senders.iter().enumerate().map(|(i, s)| {
        let (app, convs) = (&app, &convs);
        async move {
            for j in 0..12 {
                app.send(s, &convs[(i + j) % 4], &format!("{s}-{j}"), "x")
                    .await;
            }
        }
    }))
    .await;
    let mut positions = Vec::new();
    let mut tokens = Vec::new();
    while positions.len() < total {
        let m = reader.event("message.new").await;
        let t = m["sync_token"].as_str().unwrap().to_owned();
        positions.push(token_pos(&t));
        tokens.push(t);
    }
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "in position order: {positions:?}"
    );
    // Resuming from an event's token gives exactly the events after it.
    let from = &tokens[total / 2];
    let page = app
        .get(
            &format!("/v1/sync?since={from}&limit=1000"),
            &app.user("reader"),
        )
        .await
        .expect(200);
    let rest: Vec<i64> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "message.new")
        .map(|e| token_pos(e["token"].as_str().unwrap()))
        .collect();
    assert_eq!(rest, positions[total / 2 + 1..].to_vec());
}
