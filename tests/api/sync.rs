//! Gap-free sync: every change once, in order, across pages, restarts, concurrent writers and
//! server processes.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::future::join_all;
use serde_json::{Value, json};

use crate::both;
use crate::helpers::{
    Db, Process, TestApp, fresh_database, spawn_app, spawn_app_with, test_config,
};

both!(
    every_event_type_once,
    paging_small_limit,
    tokens_survive_restart,
    bad_tokens,
    concurrent_writers_exactly_once
);

/// Follows `next_token` until `has_more` is false; returns the events.
pub async fn drain(app: &TestApp, token: &str, since: &str, limit: u32) -> (Vec<Value>, String) {
    let mut events = Vec::new();
    let mut since = since.to_owned();
    loop {
        let page = app
            .get(&format!("/v1/sync?since={since}&limit={limit}"), token)
            .await
            .expect(200);
        events.extend(page["events"].as_array().unwrap().iter().cloned());
        since = page["next_token"].as_str().unwrap().to_owned();
        if page["has_more"] == false {
            return (events, since);
        }
    }
}

async fn now_token(app: &TestApp, token: &str) -> String {
    let res = app.get("/v1/sync", token).await.expect(200);
    assert!(res.get("events").is_none());
    res["next_token"].as_str().unwrap().to_owned()
}

async fn every_event_type_once(db: Db) {
    let app = spawn_app(db).await;
    let (a, b) = (app.user("ann"), app.user("bob"));
    let start = now_token(&app, &b).await;
    let g = app.conversation("ann", "group", &["bob"]).await;
    let m = app.send("ann", &g, "c1", "hello").await;
    let id = m["id"].as_str().unwrap();
    app.patch(&format!("/v1/messages/{id}"), &a, json!({"text": "hello!"}))
        .await
        .expect(200);
    app.delete(&format!("/v1/messages/{id}"), &a)
        .await
        .expect(200);
    // The caller's own read position is synced too (their other devices stay in step).
    app.post(&format!("/v1/conversations/{g}/read"), &b, json!({}))
        .await
        .expect(200);
    app.put(
        &format!("/v1/conversations/{g}/tags"),
        &a,
        json!({"tags": ["t"]}),
    )
    .await
    .expect(200);
    app.post(
        &format!("/v1/conversations/{g}/members"),
        &a,
        json!({"user_ids": ["cat"]}),
    )
    .await
    .expect(200);
    app.delete(&format!("/v1/conversations/{g}/members/cat"), &a)
        .await;
    // Not visible to bob: another conversation.
    let other = app.conversation("ann", "group", &["cat"]).await;
    app.send("ann", &other, "x", "private").await;

    let (events, next) = drain(&app, &b, &start, 500).await;
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "conversation.created",
            "message.new",
            "message.updated",
            "message.deleted",
            "read",
            "conversation.updated",
            "member.joined",
            "message.new", // system: members_added
            "member.left",
            "message.new", // system: member_removed
        ]
    );
    assert!(events.iter().all(|e| e["conversation_id"] == g.as_str()));
    assert_eq!(
        events[1]["data"]["text"], "hello",
        "data as it was when the change happened"
    );
    assert_eq!(events[2]["data"]["text"], "hello!");
    assert_eq!(
        events[4]["data"],
        json!({"conversation_id": g, "user_id": "bob", "seq": 1})
    );
    assert_eq!(events[5]["data"]["tags"], json!(["t"]));
    assert_eq!(events[6]["data"]["user_id"], "cat");
    assert_eq!(
        events[6]["data"]["conversation"]["id"],
        g.as_str(),
        "joining carries the conversation"
    );
    assert_eq!(events[6]["data"]["conversation"]["member_count"], 3);
    // Each event's token resumes right after it.
    let from_third = events[2]["token"].as_str().unwrap();
    let (rest, _) = drain(&app, &b, from_third, 500).await;
    assert_eq!(rest, events[3..].to_vec());
    // A second sync from next_token returns nothing.
    let (none, again) = drain(&app, &b, &next, 500).await;
    assert!(none.is_empty());
    assert_eq!(again, next);
    // The user who left sees their own leaving, then nothing more of that conversation.
    let (cat_events, _) = drain(&app, &app.user("cat"), &start, 500).await;
    let cat_types: Vec<&str> = cat_events
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert!(cat_types.contains(&"member.left"), "{cat_types:?}");
    let private = cat_events
        .iter()
        .filter(|e| e["conversation_id"] == other.as_str())
        .count();
    assert_eq!(private, 2, "cat sees the conversation they are in");
}

async fn paging_small_limit(db: Db) {
    let app = spawn_app(db).await;
    let b = app.user("bob");
    let start = now_token(&app, &b).await;
    let g = app.conversation("ann", "group", &["bob"]).await;
    for i in 0..23 {
        app.send("ann", &g, &format!("c{i}"), &format!("m{i}"))
            .await;
    }
    let (small, next_small) = drain(&app, &b, &start, 4).await;
    let (big, next_big) = drain(&app, &b, &start, 1000).await;
    assert_eq!(small.len(), 24);
    assert_eq!(small, big);
    assert_eq!(next_small, next_big);
    let page = app
        .get(&format!("/v1/sync?since={start}&limit=4"), &b)
        .await
        .expect(200);
    assert_eq!(page["has_more"], true);
    assert_eq!(page["events"].as_array().unwrap().len(), 4);
    for q in ["limit=0", "limit=1001", "limit=x"] {
        let f = app
            .get(&format!("/v1/sync?since={start}&{q}"), &b)
            .await
            .error(400, "validation_failed");
        assert_eq!(f.as_deref(), Some("limit"));
    }
}

async fn tokens_survive_restart(db: Db) {
    let url = fresh_database(db).await;
    let first = spawn_app_with(db, test_config(&url)).await;
    let b = first.user("bob");
    let g = first.conversation("ann", "group", &["bob"]).await;
    let start = now_token(&first, &b).await;
    first.send("ann", &g, "c1", "before restart").await;
    let (seen, token) = drain(&first, &b, &start, 500).await;
    assert_eq!(seen.len(), 1);
    let mut first = first;
    first.stop().await;
    // A new server (new process state, same database): the old token goes on.
    let second = spawn_app_with(db, test_config(&url)).await;
    second.send("ann", &g, "c2", "after restart").await;
    let (after, _) = drain(&second, &b, &token, 500).await;
    assert_eq!(after.len(), 1);
    assert_eq!(after[0]["data"]["text"], "after restart");
    let (all, _) = drain(&second, &b, &start, 500).await;
    assert_eq!(all.len(), 2);
}

async fn bad_tokens(db: Db) {
    let app = spawn_app(db).await;
    let b = app.user("bob");
    for bad in ["garbage!", "Zm9v", ""] {
        let f = app
            .get(&format!("/v1/sync?since={bad}"), &b)
            .await
            .error(400, "validation_failed");
        assert_eq!(f.as_deref(), Some("since"), "{bad:?}");
    }
    // A token of another database (or one this server never handed out) cannot be served.
    let other = spawn_app(app.db).await;
    let foreign = now_token(&other, &other.user("bob")).await;
    app.get(&format!("/v1/sync?since={foreign}"), &b)
        .await
        .error(410, "resync_required");
}

/// Several writers send into a user's conversations while the user syncs in a loop: the reader
/// sees exactly the messages sent, none missing, none twice. Repeated, property style.
async fn concurrent_writers_exactly_once(db: Db) {
    let app = spawn_app(db).await;
    for round in 0..5 {
        writers_vs_reader(&[&app], &format!("r{round}"), 8, 15).await;
    }
}

/// `writers` tasks (spread over the given servers) each send `per_writer` messages into their
/// own conversation with the reader; the reader syncs through the first server throughout.
pub async fn writers_vs_reader(apps: &[&TestApp], tag: &str, writers: usize, per_writer: usize) {
    let reader = format!("reader_{tag}");
    let rt = apps[0].user(&reader);
    let start = now_token(apps[0], &rt).await;
    let mut convs = Vec::new();
    for w in 0..writers {
        let kind = if w % 2 == 0 { "direct" } else { "group" };
        convs.push(
            apps[0]
                .conversation(&format!("w{w}_{tag}"), kind, &[&reader])
                .await,
        );
    }
    let done = Arc::new(AtomicBool::new(false));
    let sends = join_all(convs.iter().enumerate().map(|(w, conv)| {
        let app = apps[w % apps.len()];
        async move {
            let mut ids = Vec::new();
            for i in 0..per_writer {
                let m = app
                    .send(&format!("w{w}_{tag}"), conv, &format!("{i}"), "x")
                    .await;
                ids.push(m["id"].as_str().unwrap().to_owned());
            }
            ids
        }
    }));
    let read = {
        let done = done.clone();
        let rt = rt.clone();
        let start = start.clone();
        async move {
            let mut seen: Vec<String> = Vec::new();
            let mut token = start;
            loop {
                let finished = done.load(Ordering::SeqCst);
                let page = apps[0]
                    .get(&format!("/v1/sync?since={token}&limit=7"), &rt)
                    .await
                    .expect(200);
                for e in page["events"].as_array().unwrap() {
                    if e["type"] == "message.new" {
                        seen.push(e["data"]["id"].as_str().unwrap().to_owned());
                    }
                }
                token = page["next_token"].as_str().unwrap().to_owned();
                if finished && page["has_more"] == false {
                    return seen;
                }
            }
        }
    };
    let writer = async {
        let ids = sends.await;
        done.store(true, Ordering::SeqCst);
        ids
    };
    let (sent, seen) = tokio::join!(writer, read);
    let sent: Vec<String> = sent.into_iter().flatten().collect();
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no message twice");
    let sent_set: HashSet<&String> = sent.iter().collect();
    assert_eq!(unique, sent_set, "exactly the messages sent");
}

/// Two `confab serve` processes on one PostgreSQL database write at once; a reader following
/// `next_token` through one of them sees every message exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_writing_postgres() {
    let url = fresh_database(Db::Postgres).await;
    let one = Process::start(&url, &[]).await;
    let two = Process::start(&url, &[]).await;
    let (a, b) = (
        one.app(Db::Postgres, &url).await,
        two.app(Db::Postgres, &url).await,
    );
    for round in 0..3 {
        writers_vs_reader(&[&a, &b], &format!("p{round}"), 8, 12).await;
    }
}
