//! Races the write path must win: idempotent retries, gap-free seqs, one direct per pair.

use std::collections::HashSet;

use futures_util::future::join_all;
use serde_json::json;

use crate::both;
use crate::helpers::{Db, spawn_app};

both!(
    same_client_id_races,
    concurrent_senders_gap_free,
    direct_pair_races
);

async fn same_client_id_races(db: Db) {
    let app = spawn_app(db).await;
    let g = app.conversation("ann", "group", &["bob"]).await;
    let path = format!("/v1/conversations/{g}/messages");
    let token = app.user("ann");
    let results = join_all((0..20).map(|_| {
        app.post(
            &path,
            &token,
            json!({"client_id": "retry-me", "text": "once"}),
        )
    }))
    .await;
    let statuses: Vec<u16> = results.iter().map(|r| r.status.as_u16()).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        19,
        "{statuses:?}"
    );
    let ids: HashSet<&str> = results
        .iter()
        .map(|r| r.body["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 1, "every answer is the one message");
    let page = app.get(&path, &token).await.expect(200);
    assert_eq!(page["messages"].as_array().unwrap().len(), 1);
}

async fn concurrent_senders_gap_free(db: Db) {
    let app = spawn_app(db).await;
    let senders: Vec<String> = (0..16).map(|i| format!("s{i}")).collect();
    let refs: Vec<&str> = senders.iter().map(String::as_str).collect();
    let g = app.conversation("ann", "group", &refs).await;
    let per_sender = 10;
    let tasks = senders.iter().map(|s| {
        let app = &app;
        let g = &g;
        async move {
            let mut seqs = Vec::new();
            for i in 0..per_sender {
                let m = app.send(s, g, &format!("{s}-{i}"), "x").await;
                seqs.push(m["seq"].as_i64().unwrap());
            }
            seqs
        }
    });
    let mut all: Vec<i64> = join_all(tasks).await.into_iter().flatten().collect();
    all.sort_unstable();
    let n = (senders.len() * per_sender) as i64;
    assert_eq!(
        all,
        (1..=n).collect::<Vec<_>>(),
        "seqs 1..N, no gap, no repeat"
    );
    let c = app
        .get(&format!("/v1/conversations/{g}"), &app.user("ann"))
        .await
        .expect(200);
    assert_eq!(c["last_seq"], n);
    assert_eq!(c["unread_count"], n);
}

async fn direct_pair_races(db: Db) {
    let app = spawn_app(db).await;
    let (a, b) = (app.user("ann"), app.user("bob"));
    let results = join_all((0..16).map(|i| {
        let (token, other) = if i % 2 == 0 { (&a, "bob") } else { (&b, "ann") };
        app.post(
            "/v1/conversations",
            token,
            json!({"type": "direct", "member_ids": [other]}),
        )
    }))
    .await;
    let ids: HashSet<&str> = results
        .iter()
        .map(|r| {
            assert!(r.status.is_success(), "{}", r.body);
            r.body["id"].as_str().unwrap()
        })
        .collect();
    assert_eq!(ids.len(), 1, "one direct conversation per pair");
    assert_eq!(
        results.iter().filter(|r| r.status.as_u16() == 201).count(),
        1
    );
    let list = app.get("/v1/conversations", &a).await.expect(200);
    assert_eq!(list["conversations"].as_array().unwrap().len(), 1);
}
