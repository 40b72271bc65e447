//! Webhooks from the durable outbox: signed per Standard Webhooks, retried with the same id,
//! dead after the schedule and resent on demand, surviving kill -9, shared by two nodes without
//! double delivery. Retention too.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{Value, json};

use crate::both;
use crate::helpers::{Db, Process, TestApp, fresh_database, spawn_app_with, test_config};
use crate::receiver::Receiver;
use crate::sio::SioClient;

both!(
    every_event_signed_and_delivered,
    retries_then_dead_then_resent,
    survives_kill_9,
    retention_deletes_old_and_refuses_old_tokens
);

async fn app_with_hooks(db: Db, receiver: &Receiver, schedule: &str) -> TestApp {
    let url = fresh_database(db).await;
    let mut config = test_config(&url);
    config.webhook_url = Some(receiver.url.clone());
    config.webhook_secrets = confab::config::Config::from_lookup(|k| match k {
        "CONFAB_WEBHOOK_URL" => Some(receiver.url.clone()),
        "CONFAB_WEBHOOK_SECRET" => Some(Receiver::server_secrets()),
        "CONFAB_WEBHOOK_RETRY_SCHEDULE" => Some(schedule.into()),
        _ => None,
    })
    .unwrap()
    .webhook_secrets;
    config.webhook_retry_schedule = schedule
        .split(',')
        .map(|d| confab::config::parse_duration(d).unwrap())
        .collect();
    spawn_app_with(db, config).await
}

/// The outbox rows with `status`, once `pred` holds of them.
async fn outbox_until(app: &TestApp, status: &str, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    for _ in 0..200 {
        let list = app
            .get(
                &format!("/v1/webhooks/deliveries?status={status}"),
                &app.server(),
            )
            .await
            .expect(200);
        let rows = list["deliveries"].as_array().unwrap().clone();
        if pred(&rows) {
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the outbox never showed the {status} deliveries expected");
}

fn of_type<'a>(got: &'a [crate::receiver::Received], t: &str) -> Vec<&'a Value> {
    got.iter()
        .filter(|r| r.body["type"] == t)
        .map(|r| &r.body)
        .collect()
}

async fn every_event_signed_and_delivered(db: Db) {
    let receiver = Receiver::start().await;
    let app = app_with_hooks(db, &receiver, "1s").await;
    let a = app.user("ann");
    let _bob_online = SioClient::connect(&app.base, Some(&app.user("bob")), "websocket")
        .await
        .unwrap();
    let g = app.conversation("ann", "group", &["bob", "cat"]).await;
    let m = app.send("ann", &g, "c1", "hello").await;
    let id = m["id"].as_str().unwrap();
    app.patch(&format!("/v1/messages/{id}"), &a, json!({"text": "hello!"}))
        .await
        .expect(200);
    app.delete(&format!("/v1/messages/{id}"), &a)
        .await
        .expect(200);
    app.patch(
        &format!("/v1/conversations/{g}"),
        &a,
        json!({"custom": {"x": 1}}),
    )
    .await
    .expect(200);
    app.post(
        &format!("/v1/conversations/{g}/members"),
        &a,
        json!({"user_ids": ["dan"]}),
    )
    .await
    .expect(200);
    app.delete(&format!("/v1/conversations/{g}/members/dan"), &a)
        .await;
    app.post(
        &format!("/v1/conversations/{g}/read"),
        &app.user("bob"),
        json!({}),
    )
    .await
    .expect(200);

    let want = [
        "conversation.created",
        "message.new",
        "message.updated",
        "message.deleted",
        "conversation.updated",
        "member.joined",
        "member.left",
    ];
    let got = receiver
        .wait_for("every event type", |got| {
            want.iter().all(|t| !of_type(got, t).is_empty())
                && of_type(got, "message.new").len() >= 3
        })
        .await;
    let new = of_type(&got, "message.new");
    let first = new.iter().find(|b| b["data"]["id"] == id).unwrap();
    assert_eq!(first["data"]["text"], "hello");
    assert!(first["timestamp"].is_string());
    // bob has a live socket; cat has none.
    assert_eq!(first["data"]["offline_member_ids"], json!(["cat"]));
    assert!(
        of_type(&got, "read").is_empty(),
        "read marks are not webhook events"
    );
    let ids: HashSet<&str> = got.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids.len(), got.len(), "one delivery per event");

    // The outbox lists them, with the body that was sent.
    let s = app.server();
    let rows = outbox_until(&app, "delivered", |rows| rows.len() >= 9).await;
    assert!(
        rows.iter()
            .all(|d| d["status"] == "delivered" && d["attempts"] == 1)
    );
    assert!(rows.iter().any(|d| d["payload"] == **first));
    app.get("/v1/webhooks/deliveries", &a)
        .await
        .error(403, "forbidden");
    app.get("/v1/webhooks/deliveries?status=lost", &s)
        .await
        .error(400, "validation_failed");
    app.post("/v1/webhooks/deliveries/nope/retry", &s, json!({}))
        .await
        .error(404, "not_found");
    let page = app
        .get("/v1/webhooks/deliveries?limit=2", &s)
        .await
        .expect(200);
    let next = page["next_cursor"].as_str().unwrap();
    let page2 = app
        .get(
            &format!("/v1/webhooks/deliveries?limit=2&cursor={next}"),
            &s,
        )
        .await
        .expect(200);
    assert_ne!(page["deliveries"][0]["id"], page2["deliveries"][0]["id"]);
}

async fn retries_then_dead_then_resent(db: Db) {
    let receiver = Receiver::start().await;
    receiver.fail_first(2);
    let app = app_with_hooks(db, &receiver, "200ms,200ms").await;
    let g = app.conversation("ann", "group", &["bob"]).await;
    let got = receiver
        .wait_for("the created event", |g| !g.is_empty())
        .await;
    // Failed twice, accepted the third time, with the same webhook-id.
    assert_eq!(receiver.attempts(&got[0].id), 3);
    let s = app.server();
    // The receiver answered before the worker recorded it: poll the outbox.
    let d = outbox_until(&app, "delivered", |rows| !rows.is_empty()).await;
    assert_eq!(d[0]["attempts"], 3);

    // A receiver that always fails: dead after the schedule, then resent on demand.
    receiver.fail_first(u32::MAX);
    app.send("ann", &g, "c1", "doomed").await;
    let row = outbox_until(&app, "dead", |rows| !rows.is_empty()).await[0].clone();
    assert_eq!(
        row["attempts"], 3,
        "first attempt plus the two retries of the schedule"
    );
    assert_eq!(row["last_error"], "HTTP 500");
    assert_eq!(row["payload"]["data"]["text"], "doomed");
    let hook_id = row["id"].as_str().unwrap().to_owned();
    receiver.fail_first(0);
    let retried = app
        .post(
            &format!("/v1/webhooks/deliveries/{hook_id}/retry"),
            &s,
            json!({}),
        )
        .await
        .expect(202);
    assert_eq!(retried["status"], "pending");
    let got = receiver
        .wait_for("the resent delivery", |g| g.iter().any(|r| r.id == hook_id))
        .await;
    assert_eq!(got.iter().filter(|r| r.id == hook_id).count(), 1);
    let d = outbox_until(&app, "delivered", |rows| {
        rows.iter().any(|r| r["id"] == hook_id.as_str())
    })
    .await;
    let row = d
        .iter()
        .find(|r| r["id"] == hook_id.as_str())
        .unwrap()
        .clone();
    assert_eq!(row["attempts"], 4, "manual attempts count too");
}

async fn survives_kill_9(db: Db) {
    let receiver = Receiver::start().await;
    receiver.fail_first(u32::MAX);
    let url = fresh_database(db).await;
    let secrets = Receiver::server_secrets();
    let env = [
        ("CONFAB_WEBHOOK_URL", receiver.url.as_str()),
        ("CONFAB_WEBHOOK_SECRET", secrets.as_str()),
        (
            "CONFAB_WEBHOOK_RETRY_SCHEDULE",
            "300ms,300ms,300ms,300ms,300ms,300ms,300ms,300ms",
        ),
    ];
    let mut node = Process::start(&url, &env).await;
    let app = node.app(db, &url).await;
    let g = app.conversation("ann", "group", &["bob"]).await;
    let m = app
        .send("ann", &g, "k1", "acknowledged, then kill -9")
        .await;
    // kill -9 right after the acknowledged send.
    node.child.kill().unwrap();
    node.child.wait().unwrap();
    receiver.fail_first(0);
    let _restarted = Process::start(&url, &env).await;
    // If the killed node had claimed the delivery (an attempt in flight), its 30 s lease must
    // run out before the new node claims it again.
    let got = receiver
        .wait_for_within(
            "the message after the restart",
            Duration::from_secs(45),
            |g| {
                g.iter()
                    .any(|r| r.body["type"] == "message.new" && r.body["data"]["id"] == m["id"])
            },
        )
        .await;
    assert_eq!(of_type(&got, "message.new").len(), 1);
}

/// Two processes on one PostgreSQL database share the outbox: every event is delivered, none
/// twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_deliver_each_event_once() {
    let receiver = Receiver::start().await;
    let url = fresh_database(Db::Postgres).await;
    let secrets = Receiver::server_secrets();
    let env = [
        ("CONFAB_WEBHOOK_URL", receiver.url.as_str()),
        ("CONFAB_WEBHOOK_SECRET", secrets.as_str()),
    ];
    let one = Process::start(&url, &env).await;
    let two = Process::start(&url, &env).await;
    let (a, b) = (
        one.app(Db::Postgres, &url).await,
        two.app(Db::Postgres, &url).await,
    );
    let mut convs = Vec::new();
    for i in 0..6 {
        convs.push(a.conversation(&format!("u{i}"), "direct", &["hub"]).await);
    }
    let sends = convs.iter().enumerate().flat_map(|(i, c)| {
        let app = if i % 2 == 0 { &a } else { &b };
        (0..8).map(move |j| (app, c.clone(), i, j))
    });
    futures_util::future::join_all(sends.map(|(app, c, i, j)| async move {
        app.send(&format!("u{i}"), &c, &format!("m{j}"), "x").await
    }))
    .await;
    let expected = 6 + 6 * 8;
    let got = receiver
        .wait_for("every event", |g| g.len() >= expected)
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let got_after = receiver.accepted();
    assert_eq!(got_after.len(), expected, "none twice");
    let ids: HashSet<&str> = got.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids.len(), got.len());
    // Per conversation, messages arrive in seq order.
    for c in &convs {
        let seqs: Vec<i64> = got_after
            .iter()
            .filter(|r| {
                r.body["type"] == "message.new" && r.body["data"]["conversation_id"] == c.as_str()
            })
            .map(|r| r.body["data"]["seq"].as_i64().unwrap())
            .collect();
        assert_eq!(seqs, (1..=8).collect::<Vec<_>>());
    }
}

async fn retention_deletes_old_and_refuses_old_tokens(db: Db) {
    let url = fresh_database(db).await;
    let mut config = test_config(&url);
    config.retention_days = Some(1);
    config.retention_interval = Duration::from_millis(200);
    let app = spawn_app_with(db, config).await;
    let b = app.user("bob");
    let old_token = app.get("/v1/sync", &b).await.expect(200)["next_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let g = app.conversation("ann", "group", &["bob"]).await;
    for i in 0..3 {
        app.send("ann", &g, &format!("old{i}"), "old").await;
    }
    let mid_token = app.get("/v1/sync", &b).await.expect(200)["next_token"]
        .as_str()
        .unwrap()
        .to_owned();
    // Backdate what exists so far by two days.
    let two_days = 2 * 86_400_000i64;
    crate::helpers::exec_sql(
        db,
        &url,
        &format!(
            "update messages set created_at = created_at - {two_days}; \
         update conversations set first_message_at = first_message_at - {two_days}; \
         update changes set created_at = created_at - {two_days}"
        ),
    )
    .await;
    app.send("ann", &g, "new1", "new").await;
    // The old messages go; the new one and the conversation stay right.
    let mut page = Value::Null;
    for _ in 0..100 {
        page = app
            .get(&format!("/v1/conversations/{g}/messages"), &b)
            .await
            .expect(200);
        if page["messages"].as_array().unwrap().len() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let texts: Vec<&str> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["new"]);
    let c = app
        .get(&format!("/v1/conversations/{g}"), &b)
        .await
        .expect(200);
    assert_eq!(c["last_message"]["text"], "new");
    assert_eq!(c["last_seq"], 4, "seqs are never reused");
    assert_eq!(c["unread_count"], 1, "unread counts only what remains");
    // Tokens older than the window can no longer be served; newer ones can.
    for _ in 0..100 {
        if app
            .get(&format!("/v1/sync?since={old_token}"), &b)
            .await
            .status
            .as_u16()
            == 410
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.get(&format!("/v1/sync?since={old_token}"), &b)
        .await
        .error(410, "resync_required");
    app.get(&format!("/v1/sync?since={mid_token}"), &b)
        .await
        .expect(200);
    // A conversation whose messages are all gone has no last message.
    let h = app.conversation("ann", "group", &["bob"]).await;
    app.send("ann", &h, "h1", "soon old").await;
    crate::helpers::exec_sql(
        db,
        &url,
        &format!(
            "update messages set created_at = created_at - {two_days} where conversation_id = '{h}'; \
             update conversations set first_message_at = first_message_at - {two_days} \
             where conversation_id = '{h}'"
        ),
    )
    .await;
    for _ in 0..100 {
        let c = app
            .get(&format!("/v1/conversations/{h}"), &b)
            .await
            .expect(200);
        if c["last_message"].is_null() {
            assert_eq!(c["unread_count"], 0);
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the old conversation's last message stayed");
}
