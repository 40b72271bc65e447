//! `POST /v1/import` and `confab import`: streamed NDJSON, bad lines by number, idempotent,
//! seqs in created_at order, imported data visible in listings, unread and sync.

use serde_json::json;

use crate::both;
use crate::helpers::{Db, TestApp, fresh_database, spawn_app, spawn_app_with, test_config};

both!(
    import_streams_reports_and_is_idempotent,
    import_in_small_batches_in_flight_together,
    import_into_newer_history_renumbers,
    import_behind_live_messages_keeps_text_and_is_idempotent,
    import_keeps_every_field_of_a_message,
    import_many_plain_and_other_messages,
    import_two_external_ids_of_one_pair,
    import_keeps_the_first_importable_of_a_repeated_external_id,
    import_batch_larger_than_one_transaction,
    import_batch_counts_conversations_double_on_sqlite,
    import_before_1970_keeps_each_conversation_its_last_message
);

/// After a large import PostgreSQL's statistics are fresh (its autovacuum may analyze much
/// later, and listings would be planned for empty tables meanwhile); a small one leaves them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_import_refreshes_planner_statistics() {
    use sqlx::Connection;
    let url = fresh_database(Db::Postgres).await;
    let app = spawn_app_with(Db::Postgres, test_config(&url)).await;
    let analyzed = || async {
        let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
        sqlx::query_scalar::<_, i64>(
            "select count(*) from pg_stat_user_tables where relname in \
             ('users', 'conversations', 'members', 'conversation_tags', 'messages', 'changes') \
             and last_analyze is not null",
        )
        .fetch_one(&mut c)
        .await
        .unwrap()
    };
    let small = [
        json!({"record": "conversation", "external_id": "s", "type": "direct", "member_ids": ["ann", "bob"]}).to_string(),
        json!({"record": "message", "conversation_external_id": "s", "external_id": "s1", "sender_id": "ann", "text": "hi", "created_at": "2020-01-01T10:00:00.000Z"}).to_string(),
    ]
    .join("\n");
    app.import_ndjson(small).await;
    assert_eq!(analyzed().await, 0, "a small import leaves the statistics");
    let n = confab::import::REFRESH_STATISTICS_AFTER as usize;
    let mut lines = vec![json!({"record": "conversation", "external_id": "big", "type": "direct", "member_ids": ["ann", "bob"]}).to_string()];
    lines.extend((0..n).map(|i| {
        json!({"record": "message", "conversation_external_id": "big", "external_id": format!("b{i}"),
               "sender_id": "ann", "text": "old", "created_at": format!("2020-01-02T10:{:02}:{:02}.{:03}Z", i / 60000, (i / 1000) % 60, i % 1000)})
        .to_string()
    }));
    let out = app.import_ndjson(lines.join("\n")).await;
    assert_eq!(
        out.last().unwrap()["messages"],
        json!(n),
        "{:?}",
        out.last()
    );
    assert_eq!(
        analyzed().await,
        6,
        "a large import analyzes every table it writes before its summary"
    );
}

/// The newest page of a conversation's messages, as `token` sees it.
async fn messages(app: &TestApp, conversation: &str, token: &str) -> serde_json::Value {
    app.get(&format!("/v1/conversations/{conversation}/messages"), token)
        .await
        .expect(200)
}

/// The id of the one conversation `token`'s user is in.
async fn only_conversation(app: &TestApp, token: &str) -> String {
    let list = app.get("/v1/conversations", token).await.expect(200);
    let all = list["conversations"].as_array().unwrap();
    assert_eq!(all.len(), 1, "{list}");
    all[0]["id"].as_str().unwrap().to_owned()
}

/// An import summary's (conversations, messages, errors).
fn counts(done: &serde_json::Value) -> (Option<i64>, Option<i64>, Option<i64>) {
    (
        done["conversations"].as_i64(),
        done["messages"].as_i64(),
        done["errors"].as_i64(),
    )
}

/// A page of messages as (seq, text) pairs.
fn seq_texts(page: &serde_json::Value) -> Vec<(i64, &str)> {
    page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["seq"].as_i64().unwrap(), m["text"].as_str().unwrap()))
        .collect()
}

fn file() -> String {
    let lines = [
        json!({"record": "user", "id": "ann", "name": "Ann", "kind": "company"}).to_string(),
        json!({"record": "user", "id": "bob", "name": "Bob"}).to_string(),
        "{this is not json".into(),
        json!({"record": "conversation", "external_id": "legacy-1", "type": "direct", "member_ids": ["ann", "bob"]}).to_string(),
        json!({"record": "conversation", "external_id": "legacy-2", "type": "group", "member_ids": ["ann", "bob", "cat"], "name": "Old group", "tags": ["imported"]}).to_string(),
        // Out of created_at order in the file: seqs follow created_at.
        json!({"record": "message", "conversation_external_id": "legacy-1", "external_id": "m2", "sender_id": "bob", "text": "second", "created_at": "2020-01-01T10:00:02.000Z"}).to_string(),
        json!({"record": "message", "conversation_external_id": "legacy-1", "external_id": "m1", "sender_id": "ann", "text": "first", "created_at": "2020-01-01T10:00:01.000Z"}).to_string(),
        json!({"record": "message", "conversation_external_id": "legacy-1", "external_id": "m3", "sender_id": "ann", "text": "third, unread", "created_at": "2020-01-01T10:00:03.000Z", "unread": true}).to_string(),
        json!({"record": "message", "conversation_external_id": "nowhere", "external_id": "m4", "sender_id": "ann", "text": "x", "created_at": "2020-01-01T10:00:04.000Z"}).to_string(),
        json!({"record": "message", "conversation_external_id": "legacy-2", "external_id": "m5", "sender_id": "cat", "text": "group hello", "created_at": "2020-01-02T00:00:00.000Z"}).to_string(),
        json!({"record": "message", "conversation_external_id": "legacy-2", "external_id": "m6", "sender_id": "cat"}).to_string(),
        "".into(),
    ];
    lines.join("\n")
}

async fn import_streams_reports_and_is_idempotent(db: Db) {
    let app = spawn_app(db).await;
    let b = app.user("bob");
    let since = app.get("/v1/sync", &b).await.expect(200)["next_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = app.import_ndjson(file()).await;
    // Parse errors come as they are read, unknown conversations when their batch is written.
    let mut errors: Vec<(i64, Option<&str>)> = out
        .iter()
        .filter(|l| l.get("line").is_some())
        .map(|l| (l["line"].as_i64().unwrap(), l["error"]["field"].as_str()))
        .collect();
    errors.sort();
    assert_eq!(
        errors,
        [
            (3, None),
            (9, Some("conversation_external_id")),
            (11, Some("text"))
        ]
    );
    let done = out.last().unwrap();
    assert_eq!(done["done"], true);
    assert_eq!(
        (
            done["users"].as_i64(),
            done["conversations"].as_i64(),
            done["messages"].as_i64(),
            done["errors"].as_i64()
        ),
        (Some(2), Some(2), Some(4), Some(3))
    );
    assert!(out.iter().any(|l| l.get("progress").is_some()));

    // Visible in listings, with original timestamps and seqs by created_at.
    let list = app
        .get("/v1/conversations?include_total=true", &b)
        .await
        .expect(200);
    assert_eq!(list["total"], 2);
    let d = list["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["external_id"] == "legacy-1")
        .unwrap()
        .clone();
    assert_eq!(d["name"], "Ann");
    assert_eq!(d["last_message"]["text"], "third, unread");
    assert_eq!(d["last_message_at"], "2020-01-01T10:00:03.000Z");
    let id = d["id"].as_str().unwrap();
    let page = messages(&app, id, &b).await;
    let got = seq_texts(&page);
    assert_eq!(got, [(1, "first"), (2, "second"), (3, "third, unread")]);
    // Unread: imported messages are read unless marked; bob has one unread from ann.
    let unread = app.get("/v1/unread", &b).await.expect(200);
    assert_eq!(unread["total"], 1, "{unread}");
    let g = list["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["external_id"] == "legacy-2")
        .unwrap()
        .clone();
    assert_eq!(g["tags"], json!(["imported"]));
    assert_eq!(g["member_count"], 3);
    // In sync.
    let ev = app
        .get(&format!("/v1/sync?since={since}"), &b)
        .await
        .expect(200);
    let types: Vec<&str> = ev["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert!(
        types.contains(&"conversation.created") && types.contains(&"conversation.updated"),
        "{types:?}"
    );

    let user_fields = |u: serde_json::Value| {
        json!([
            u["id"],
            u["name"],
            u["kind"],
            u["custom"],
            u["created_at"],
            u["updated_at"]
        ])
    };
    let ann = user_fields(app.get("/v1/users/ann", &b).await.expect(200));
    assert_eq!((&ann[1], &ann[2]), (&json!("Ann"), &json!("company")));

    // The same file again: the same summary, and nothing changes.
    let again = app.import_ndjson(file()).await;
    let done2 = again.last().unwrap();
    assert_eq!(counts(done2), (Some(2), Some(4), Some(3)));
    assert_eq!(
        done2["users"], 2,
        "users already there are counted as accepted"
    );
    assert_eq!(
        user_fields(app.get("/v1/users/ann", &b).await.expect(200)),
        ann,
        "and left as they are"
    );
    let page2 = messages(&app, id, &b).await;
    assert_eq!(page2, page);
    let after = app
        .get(
            &format!("/v1/sync?since={}", ev["next_token"].as_str().unwrap()),
            &b,
        )
        .await
        .expect(200);
    assert!(
        after["events"].as_array().unwrap().is_empty(),
        "a re-import records no change"
    );
    // A later file that repeats some messages and brings new ones (a resumed export): the
    // repeats are skipped, the new ones appended, in both conversations of the batch.
    let later = [
        json!({"record": "message", "conversation_external_id": "legacy-1", "external_id": "m3", "sender_id": "ann", "text": "third, unread", "created_at": "2020-01-01T10:00:03.000Z"}),
        json!({"record": "message", "conversation_external_id": "legacy-1", "external_id": "m7", "sender_id": "bob", "text": "fourth", "created_at": "2020-01-01T10:00:07.000Z"}),
        json!({"record": "message", "conversation_external_id": "legacy-2", "external_id": "m8", "sender_id": "ann", "text": "group again", "created_at": "2020-01-03T00:00:00.000Z"}),
    ]
    .map(|l| l.to_string())
    .join("\n");
    let done3 = app.import_ndjson(later).await;
    assert_eq!(done3.last().unwrap()["errors"], 0, "{done3:?}");
    let page3 = messages(&app, id, &b).await;
    let got = seq_texts(&page3);
    assert_eq!(
        got,
        [
            (1, "first"),
            (2, "second"),
            (3, "third, unread"),
            (4, "fourth")
        ]
    );
    let gid = g["id"].as_str().unwrap();
    let gpage = messages(&app, gid, &b).await;
    assert_eq!(gpage["messages"].as_array().unwrap().len(), 2);
    assert_eq!(gpage["messages"][1]["text"], "group again");
    // Server token only.
    app.raw(reqwest::Method::POST, "/v1/import", Some(&b), None)
        .await
        .error(403, "forbidden");
}

/// Batches of two records, several in flight at once (one's messages written while the next
/// one's conversations are): conversations created in one batch and named by the messages of
/// the next are found, every conversation's seqs follow created_at across batches without
/// renumbering, a bad line is reported by its number, and the progress lines count up to the
/// summary.
async fn import_in_small_batches_in_flight_together(db: Db) {
    let mut config = test_config(&fresh_database(db).await);
    config.import_batch = 2;
    let app = spawn_app_with(db, config).await;
    let mut lines: Vec<String> = Vec::new();
    let mut at = 0;
    let mut message = |lines: &mut Vec<String>, conv: usize, text: String| {
        at += 1;
        lines.push(
            json!({"record": "message", "conversation_external_id": format!("c{conv}"),
            "external_id": format!("e{at}"), "sender_id": "ann", "text": text,
            "created_at": format!("2022-03-01T10:{:02}:{:02}Z", at / 60, at % 60)})
            .to_string(),
        );
    };
    for c in 0..10 {
        lines.push(json!({"record": "conversation", "external_id": format!("c{c}"), "type": "group", "member_ids": ["ann", "bob"]}).to_string());
        for k in 0..3 {
            message(&mut lines, c, format!("c{c} own {k}"));
        }
        if c > 0 {
            message(&mut lines, c - 1, format!("c{} late", c - 1));
        }
        if c == 5 {
            lines.push("not json".into());
        }
    }
    let bad_line = lines.iter().position(|l| l == "not json").unwrap() as i64 + 1;
    let out = app.import_ndjson(lines.join("\n")).await;
    let done = out.last().unwrap();
    assert_eq!(counts(done), (Some(10), Some(39), Some(1)), "{out:?}");
    let errors: Vec<i64> = out.iter().filter_map(|l| l.get("line")?.as_i64()).collect();
    assert_eq!(errors, [bad_line]);
    let progress: Vec<i64> = out
        .iter()
        .filter_map(|l| l.get("progress")?["messages"].as_i64())
        .collect();
    assert!(progress.len() >= 10, "{progress:?}");
    assert_eq!(progress.last(), Some(&39));
    let b = app.user("bob");
    let list = app.get("/v1/conversations?limit=50", &b).await.expect(200);
    let convs = list["conversations"].as_array().unwrap();
    assert_eq!(convs.len(), 10);
    for conv in convs {
        let ext = conv["external_id"].as_str().unwrap();
        let page = messages(&app, conv["id"].as_str().unwrap(), &b).await;
        let want: Vec<(i64, String)> = (0..3)
            .map(|k| format!("{ext} own {k}"))
            .chain((ext != "c9").then(|| format!("{ext} late")))
            .enumerate()
            .map(|(i, t)| (i as i64 + 1, t))
            .collect();
        let got: Vec<(i64, String)> = seq_texts(&page)
            .into_iter()
            .map(|(s, t)| (s, t.to_owned()))
            .collect();
        assert_eq!(got, want, "{ext}");
        // Ids (UUIDv7, ordered by creation within the process) follow the seqs: every batch's
        // messages were written after the previous batch's, none renumbered into place.
        let ids: Vec<&str> = page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap())
            .collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ext}: {ids:?}");
    }
}

async fn import_into_newer_history_renumbers(db: Db) {
    renumbers(spawn_app(db).await).await
}

/// On PostgreSQL a role that may not set `session_replication_role` (not a superuser, as on
/// most managed databases) imports with the COPY's per-row foreign-key check, and gets the same
/// result as the superuser the other tests connect as, which skips it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_as_a_role_without_replication_rights() {
    use sqlx::Connection;
    let url = fresh_database(Db::Postgres).await;
    let name = url.rsplit('/').next().unwrap().to_owned();
    crate::helpers::exec_sql(
        Db::Postgres,
        &url,
        &format!(
            "do $$ begin create role confab_t_plain login; \
             exception when duplicate_object then null; end $$; \
             alter database {name} owner to confab_t_plain"
        ),
    )
    .await;
    let (scheme, rest) = url.split_once("://").unwrap();
    let host = rest.split_once('@').map_or(rest, |(_, h)| h);
    let plain = format!("{scheme}://confab_t_plain@{host}");
    let mut c = sqlx::PgConnection::connect(&plain).await.unwrap();
    assert!(
        sqlx::query("set session_replication_role = replica")
            .execute(&mut c)
            .await
            .is_err(),
        "the role must not be allowed the fast path"
    );
    renumbers(spawn_app_with(Db::Postgres, test_config(&plain)).await).await
}

/// Two imports into one conversation, the second older than the first: seqs follow created_at.
async fn renumbers(app: TestApp) {
    let line = |ext: &str, text: &str, at: &str| {
        json!({"record": "message", "conversation_external_id": "c1", "external_id": ext, "sender_id": "ann", "text": text, "created_at": at}).to_string()
    };
    let first = [
        json!({"record": "conversation", "external_id": "c1", "type": "group", "member_ids": ["ann", "bob"]}).to_string(),
        line("e2", "noon", "2021-05-01T12:00:00Z"),
        line("e4", "evening", "2021-05-01T20:00:00Z"),
    ];
    app.import_ndjson(first.join("\n")).await;
    // Older history arrives later: it slots in by created_at, and the seqs stay 1..N.
    let second = [
        line("e1", "morning", "2021-05-01T08:00:00Z"),
        line("e3", "afternoon", "2021-05-01T15:00:00Z"),
    ];
    let out = app.import_ndjson(second.join("\n")).await;
    assert_eq!(out.last().unwrap()["messages"], 2);
    let b = app.user("bob");
    let list = app.get("/v1/conversations", &b).await.expect(200);
    let id = list["conversations"][0]["id"].as_str().unwrap().to_owned();
    let page = messages(&app, &id, &b).await;
    let got = seq_texts(&page);
    assert_eq!(
        got,
        [
            (1, "morning"),
            (2, "noon"),
            (3, "afternoon"),
            (4, "evening")
        ]
    );
    let c = app
        .get(&format!("/v1/conversations/{id}"), &b)
        .await
        .expect(200);
    assert_eq!(c["last_seq"], 4);
    assert_eq!(c["last_message"]["text"], "evening");
    assert_eq!(c["unread_count"], 0);
}

/// History imported into a conversation that already has newer live messages: it goes before
/// them, every character of the texts survives the bulk path (COPY escapes on PostgreSQL), read
/// positions follow their messages, and a second import of the same file changes nothing.
async fn import_behind_live_messages_keeps_text_and_is_idempotent(db: Db) {
    let app = spawn_app(db).await;
    app.users(&[("ann", "Ann"), ("bob", "Bob")]).await;
    let id = app.conversation("ann", "direct", &["bob"]).await;
    app.send("ann", &id, "live-1", "live now").await;
    let texts = [
        "tab\there",
        "line\nbreak\r\nand crlf",
        "back\\slash \\N and \\t literally",
        "unicode é 漢字 🎉",
        "plain",
    ];
    let file: Vec<String> = std::iter::once(
        json!({"record": "conversation", "external_id": "legacy-ab", "type": "direct", "member_ids": ["bob", "ann"]}).to_string(),
    )
    .chain(texts.iter().enumerate().map(|(i, t)| {
        json!({"record": "message", "conversation_external_id": "legacy-ab", "external_id": format!("x{i}"),
               "sender_id": if i % 2 == 0 { "ann" } else { "bob" }, "text": t,
               "created_at": format!("2020-03-0{}T00:00:00Z", i + 1)})
        .to_string()
    }))
    .collect();
    let out = app.import_ndjson(file.join("\n")).await;
    let done = out.last().unwrap();
    assert_eq!(counts(done), (Some(1), Some(5), Some(0)), "{out:?}");
    let a = app.user("ann");
    let page = messages(&app, &id, &a).await;
    let got: Vec<(i64, String)> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["seq"].as_i64().unwrap(),
                m["text"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let mut want: Vec<(i64, String)> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| (i as i64 + 1, (*t).to_owned()))
        .collect();
    want.push((6, "live now".into()));
    assert_eq!(got, want);
    assert_eq!(
        page["messages"][0]["created_at"], "2020-03-01T00:00:00.000Z",
        "original timestamps"
    );
    let c = app
        .get(&format!("/v1/conversations/{id}"), &a)
        .await
        .expect(200);
    assert_eq!(
        c["external_id"], "legacy-ab",
        "the pair's conversation took the external id"
    );
    assert_eq!(c["last_seq"], 6);
    assert_eq!(c["last_message"]["text"], "live now");
    assert_eq!(
        c["unread_count"], 0,
        "ann's read position followed her message"
    );
    let bob_unread = app.get("/v1/unread", &app.user("bob")).await.expect(200)["total"]
        .as_i64()
        .unwrap();
    assert!(bob_unread >= 1, "bob's unread live message stays unread");

    // The same file again: same counts, the same messages, no change recorded.
    let since = app.get("/v1/sync", &a).await.expect(200)["next_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let again = app.import_ndjson(file.join("\n")).await;
    assert_eq!(again.last().unwrap()["messages"], 5);
    let page2 = messages(&app, &id, &a).await;
    assert_eq!(page2, page);
    let ev = app
        .get(&format!("/v1/sync?since={since}"), &a)
        .await
        .expect(200);
    assert!(ev["events"].as_array().unwrap().is_empty(), "{ev}");
}

/// Plain text messages and messages with other fields (system, encrypted, attachments,
/// custom) are written by different statements on SQLite; in one batch, each reads back with
/// all its fields, at the seq its created_at gives it.
async fn import_keeps_every_field_of_a_message(db: Db) {
    let app = spawn_app(db).await;
    let encrypted = json!({"ciphertext": "Y2lwaGVy", "nonce": "bm9uY2U=", "ephemeral_public_key": "a2V5", "algorithm": "x25519-aes-gcm"});
    let attachments = json!([{"key": "k/1", "file_name": "a.png", "size": 123, "mime_type": "image/png", "thumbnail_key": null, "url": "https://files.example/k/1"}]);
    let at = |s: u32| format!("2020-01-01T10:00:{s:02}.000Z");
    let lines = [
        json!({"record": "conversation", "external_id": "f", "type": "group", "member_ids": ["ann", "bob"]}),
        json!({"record": "message", "conversation_external_id": "f", "external_id": "f1", "sender_id": "ann", "text": "plain", "created_at": at(1)}),
        json!({"record": "message", "conversation_external_id": "f", "external_id": "f2", "type": "system", "text": "ann renamed the group", "created_at": at(2)}),
        json!({"record": "message", "conversation_external_id": "f", "external_id": "f3", "sender_id": "bob", "encrypted": encrypted, "created_at": at(3)}),
        json!({"record": "message", "conversation_external_id": "f", "external_id": "f4", "sender_id": "ann", "text": "see", "attachments": attachments, "custom": {"order": 7}, "created_at": at(4)}),
        json!({"record": "message", "conversation_external_id": "f", "external_id": "f5", "sender_id": "bob", "text": "plain again", "created_at": at(5)}),
    ]
    .map(|l| l.to_string())
    .join("\n");
    let done = app.import_ndjson(lines.clone()).await;
    assert_eq!(counts(done.last().unwrap()), (Some(1), Some(5), Some(0)));
    let b = app.user("bob");
    let id = only_conversation(&app, &b).await;
    let page = messages(&app, &id, &b).await;
    let fields: Vec<serde_json::Value> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            json!([
                m["seq"],
                m["type"],
                m["sender_id"],
                m["text"],
                m["encrypted"],
                m["attachments"],
                m["custom"],
                m["created_at"]
            ])
        })
        .collect();
    assert_eq!(
        fields,
        [
            json!([1, "regular", "ann", "plain", null, [], {}, at(1)]),
            json!([
                2,
                "system",
                null,
                "ann renamed the group",
                null,
                [],
                {},
                at(2)
            ]),
            json!([3, "regular", "bob", null, encrypted, [], {}, at(3)]),
            json!([4, "regular", "ann", "see", null, attachments, {"order": 7}, at(4)]),
            json!([5, "regular", "bob", "plain again", null, [], {}, at(5)]),
        ]
    );
    // Both statements stored the external ids: the same file again writes nothing.
    let again = app.import_ndjson(lines).await;
    assert_eq!(counts(again.last().unwrap()), (Some(1), Some(5), Some(0)));
    assert_eq!(messages(&app, &id, &b).await, page);
}

/// More than one full statement of each kind (500 rows) in one batch, alternating in time:
/// every message lands at the seq its created_at gives it, with its fields.
async fn import_many_plain_and_other_messages(db: Db) {
    let app = spawn_app(db).await;
    let n = 1_200;
    let lines: Vec<String> = std::iter::once(
        json!({"record": "conversation", "external_id": "many", "type": "group", "member_ids": ["ann", "bob"]}),
    )
    .chain((0..n).map(|i| {
        let mut m = json!({
            "record": "message", "conversation_external_id": "many", "external_id": format!("m{i}"),
            "sender_id": "ann", "text": format!("t{i}"),
            "created_at": format!("2020-01-01T00:{:02}:{:02}.000Z", i / 60, i % 60),
        });
        if i % 2 == 1 {
            m["custom"] = json!({"i": i});
        }
        m
    }))
    .map(|l| l.to_string())
    .collect();
    let lines = lines.join("\n");
    let done = app.import_ndjson(lines.clone()).await;
    assert_eq!(counts(done.last().unwrap()), (Some(1), Some(n), Some(0)));
    let b = app.user("bob");
    let list = app.get("/v1/conversations", &b).await.expect(200);
    let c = &list["conversations"][0];
    assert_eq!(c["last_seq"], n);
    let id = c["id"].as_str().unwrap().to_owned();
    let page = app
        .get(
            &format!("/v1/conversations/{id}/messages?limit=100&before_seq=700"),
            &b,
        )
        .await
        .expect(200);
    let got: Vec<(i64, String, serde_json::Value)> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["seq"].as_i64().unwrap(),
                m["text"].as_str().unwrap().to_owned(),
                m["custom"].clone(),
            )
        })
        .collect();
    let want: Vec<(i64, String, serde_json::Value)> = (600..700)
        .map(|seq| {
            let i = seq - 1;
            let custom = if i % 2 == 1 {
                json!({"i": i})
            } else {
                json!({})
            };
            (seq, format!("t{i}"), custom)
        })
        .collect();
    assert_eq!(got, want);
    let again = app.import_ndjson(lines).await;
    assert_eq!(counts(again.last().unwrap()), (Some(1), Some(n), Some(0)));
    let list = app.get("/v1/conversations", &b).await.expect(200);
    assert_eq!(
        list["conversations"][0]["last_seq"], n,
        "a re-import writes nothing"
    );
}

/// A batch with more messages than one transaction takes on SQLite
/// (`IMPORT_TX_MESSAGES`), interleaved over many conversations: every conversation gets all
/// its messages in created_at order in one transaction (one `conversation.updated` each),
/// counted read, and a re-import writes nothing.
async fn import_batch_larger_than_one_transaction(db: Db) {
    let convs = 40usize;
    let n = confab::storage::sqlite::IMPORT_TX_MESSAGES + 1_000;
    let url = fresh_database(db).await;
    let mut config = test_config(&url);
    // The whole file in one batch (on SQLite a conversation record counts as two).
    config.import_batch = n + 2 * convs;
    let app = spawn_app_with(db, config).await;
    let per = n / convs;
    let lines: Vec<String> = (0..convs)
        .map(|c| json!({"record": "conversation", "external_id": format!("c{c}"), "type": "group", "member_ids": ["ann", "bob"]}))
        .chain((0..n).map(|i| {
            json!({
                "record": "message", "conversation_external_id": format!("c{}", i % convs),
                "external_id": format!("m{i}"), "sender_id": "ann", "text": format!("t{i}"),
                "created_at": format!("2020-01-01T{:02}:{:02}:{:02}.000Z", i / 3600, (i / 60) % 60, i % 60),
            })
        }))
        .map(|l| l.to_string())
        .collect();
    let lines = lines.join("\n");
    let b = app.user("bob");
    let since = app.get("/v1/sync", &b).await.expect(200)["next_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let want = (Some(convs as i64), Some(n as i64), Some(0));
    assert_eq!(
        counts(app.import_ndjson(lines.clone()).await.last().unwrap()),
        want
    );
    let check = |list: serde_json::Value| {
        let all = list["conversations"].as_array().unwrap().clone();
        assert_eq!(all.len(), convs, "{list}");
        for c in &all {
            assert_eq!(c["last_seq"], per, "{c}");
            assert_eq!(c["unread_count"], 0, "{c}");
        }
        all
    };
    let all = check(app.get("/v1/conversations?limit=100", &b).await.expect(200));
    for c in &all {
        let k: usize = c["external_id"].as_str().unwrap()[1..].parse().unwrap();
        let id = c["id"].as_str().unwrap();
        let page = app
            .get(
                &format!("/v1/conversations/{id}/messages?limit=5&before_seq=3"),
                &b,
            )
            .await
            .expect(200);
        let got: Vec<(i64, String)> = seq_texts(&page)
            .into_iter()
            .map(|(s, t)| (s, t.to_owned()))
            .collect();
        assert_eq!(
            got,
            vec![(1, format!("t{k}")), (2, format!("t{}", k + convs))]
        );
        let newest = messages(&app, id, &b).await;
        let last = newest["messages"]
            .as_array()
            .unwrap()
            .last()
            .unwrap()
            .clone();
        assert_eq!(last["seq"], per);
        assert_eq!(last["text"], format!("t{}", (per - 1) * convs + k));
    }
    // One transaction per conversation: its one `conversation.updated` brings all of them.
    let ev = app
        .get(&format!("/v1/sync?since={since}&limit=1000"), &b)
        .await
        .expect(200);
    let updated: Vec<&serde_json::Value> = ev["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "conversation.updated")
        .collect();
    assert_eq!(updated.len(), convs, "{updated:?}");
    for e in &updated {
        assert_eq!(e["data"]["imported_messages"], per, "{e}");
    }
    assert_eq!(ev["has_more"], false);
    assert_eq!(counts(app.import_ndjson(lines).await.last().unwrap()), want);
    check(app.get("/v1/conversations?limit=100", &b).await.expect(200));
    let after = app
        .get(
            &format!("/v1/sync?since={}", ev["next_token"].as_str().unwrap()),
            &b,
        )
        .await
        .expect(200);
    assert_eq!(after["events"], json!([]), "a re-import records no change");
}

/// On SQLite a batch's users and conversations are one transaction of the one writer, so a
/// user or conversation record counts as two toward the batch size: four conversations and
/// four messages in batches of four are three batches there (two of conversations, one of
/// messages), two on PostgreSQL.
async fn import_batch_counts_conversations_double_on_sqlite(db: Db) {
    let mut config = test_config(&fresh_database(db).await);
    config.import_batch = 4;
    let app = spawn_app_with(db, config).await;
    let lines: Vec<String> = (0..4)
        .map(|c| json!({"record": "conversation", "external_id": format!("c{c}"), "type": "group", "member_ids": ["ann", "bob"]}))
        .chain((0..4).map(|c| json!({"record": "message", "conversation_external_id": format!("c{c}"), "external_id": format!("m{c}"), "sender_id": "ann", "text": "hi", "created_at": "2020-01-01T10:00:00.000Z"})))
        .map(|l| l.to_string())
        .collect();
    let out = app.import_ndjson(lines.join("\n")).await;
    assert_eq!(counts(out.last().unwrap()), (Some(4), Some(4), Some(0)));
    let batches = out.iter().filter(|l| l.get("progress").is_some()).count();
    let want = if db == Db::Sqlite { 3 } else { 2 };
    assert_eq!(batches, want, "{out:?}");
}

/// Two external ids of one direct pair in one batch are one conversation; their messages
/// together follow created_at, equal times the file's order.
async fn import_two_external_ids_of_one_pair(db: Db) {
    let app = spawn_app(db).await;
    let at = |s: u32| format!("2020-01-01T10:00:{s:02}.000Z");
    let msg = |conv: &str, ext: &str, s: u32| json!({"record": "message", "conversation_external_id": conv, "external_id": ext, "sender_id": "ann", "text": ext, "created_at": at(s)});
    let lines = [
        json!({"record": "conversation", "external_id": "p1", "type": "direct", "member_ids": ["ann", "bob"]}),
        json!({"record": "conversation", "external_id": "p2", "type": "direct", "member_ids": ["bob", "ann"]}),
        msg("p2", "b3", 3),
        msg("p1", "a3", 3),
        msg("p1", "a1", 1),
        msg("p2", "b2", 2),
        msg("p1", "a4", 4),
    ]
    .map(|l| l.to_string())
    .join("\n");
    let done = app.import_ndjson(lines).await;
    assert_eq!(counts(done.last().unwrap()), (Some(2), Some(5), Some(0)));
    let b = app.user("bob");
    let id = only_conversation(&app, &b).await;
    let page = messages(&app, &id, &b).await;
    assert_eq!(
        seq_texts(&page),
        [(1, "a1"), (2, "b2"), (3, "b3"), (4, "a3"), (5, "a4")]
    );
}

/// One external id twice in a batch: the first record whose conversation exists is imported,
/// the other is counted and skipped; a record naming an unknown conversation is a bad line
/// and does not take the external id.
async fn import_keeps_the_first_importable_of_a_repeated_external_id(db: Db) {
    let app = spawn_app(db).await;
    let at = |s: u32| format!("2020-01-01T10:00:{s:02}.000Z");
    let lines = [
        json!({"record": "conversation", "external_id": "d", "type": "direct", "member_ids": ["ann", "bob"]}),
        json!({"record": "message", "conversation_external_id": "nowhere", "external_id": "x", "sender_id": "ann", "text": "lost x", "created_at": at(1)}),
        json!({"record": "message", "conversation_external_id": "d", "external_id": "x", "sender_id": "ann", "text": "x", "created_at": at(1)}),
        json!({"record": "message", "conversation_external_id": "d", "external_id": "y", "sender_id": "bob", "text": "first y", "created_at": at(2)}),
        json!({"record": "message", "conversation_external_id": "d", "external_id": "y", "sender_id": "bob", "text": "second y", "created_at": at(3)}),
    ]
    .map(|l| l.to_string())
    .join("\n");
    let out = app.import_ndjson(lines).await;
    let bad: Vec<i64> = out
        .iter()
        .filter_map(|l| l.get("line").and_then(|n| n.as_i64()))
        .collect();
    assert_eq!(bad, [2]);
    assert_eq!(counts(out.last().unwrap()), (Some(1), Some(3), Some(1)));
    let b = app.user("bob");
    let id = only_conversation(&app, &b).await;
    let page = messages(&app, &id, &b).await;
    assert_eq!(seq_texts(&page), [(1, "x"), (2, "first y")]);
}

/// Times before 1970 are negative: a conversation whose imported messages are all that old
/// still gets its own newest message as its last one, not another conversation's written in
/// the same transaction.
async fn import_before_1970_keeps_each_conversation_its_last_message(db: Db) {
    let app = spawn_app(db).await;
    let lines = [
        json!({"record": "conversation", "external_id": "a-recent", "type": "group", "member_ids": ["ann", "bob"], "name": "recent"}),
        json!({"record": "conversation", "external_id": "b-old", "type": "group", "member_ids": ["ann", "cat"], "name": "old"}),
        json!({"record": "message", "conversation_external_id": "a-recent", "external_id": "r1", "sender_id": "ann", "text": "recent one", "created_at": "2020-01-01T00:00:00.000Z"}),
        json!({"record": "message", "conversation_external_id": "a-recent", "external_id": "r2", "sender_id": "bob", "text": "recent two", "created_at": "2020-01-01T00:00:01.000Z"}),
        json!({"record": "message", "conversation_external_id": "b-old", "external_id": "o1", "sender_id": "cat", "text": "old one", "created_at": "1965-05-01T00:00:00.000Z"}),
        json!({"record": "message", "conversation_external_id": "b-old", "external_id": "o2", "sender_id": "ann", "text": "old two", "created_at": "1965-05-02T00:00:00.000Z"}),
    ]
    .map(|l| l.to_string())
    .join("\n");
    let done = app.import_ndjson(lines).await;
    assert_eq!(counts(done.last().unwrap()), (Some(2), Some(4), Some(0)));
    let list = app
        .get("/v1/conversations", &app.user("ann"))
        .await
        .expect(200);
    let mut last: Vec<(String, String, String, i64)> = list["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_owned(),
                c["last_message"]["text"]
                    .as_str()
                    .unwrap_or("none")
                    .to_owned(),
                c["last_message_at"].as_str().unwrap_or("none").to_owned(),
                c["last_seq"].as_i64().unwrap(),
            )
        })
        .collect();
    last.sort();
    assert_eq!(
        last,
        [
            (
                "old".into(),
                "old two".into(),
                "1965-05-02T00:00:00.000Z".into(),
                2
            ),
            (
                "recent".into(),
                "recent two".into(),
                "2020-01-01T00:00:01.000Z".into(),
                2
            ),
        ],
        "{list}"
    );
}

/// Starts `POST /v1/import` with `first` as the beginning of a body that stays open: more of it
/// goes through the sender, and dropping the sender ends it. On a client of its own: a server
/// that ends the import before the body closes the connection after its response, and a
/// pooled client could hand that closed connection to the test's next request.
async fn open_import(
    app: &TestApp,
    first: String,
) -> (
    tokio::sync::mpsc::UnboundedSender<Result<String, std::io::Error>>,
    reqwest::Response,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Result<String, std::io::Error>>();
    tx.send(Ok(first)).unwrap();
    let body = futures_util::stream::poll_fn({
        let mut rx = rx;
        move |cx| rx.poll_recv(cx)
    });
    let res = reqwest::Client::new()
        .post(format!("{}/v1/import", app.base))
        .bearer_auth(app.server())
        .header("content-type", "application/x-ndjson")
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .unwrap();
    (tx, res)
}

/// `CONFAB_IMPORT_JOBS` imports at once: one more is refused at once with 429 and
/// `Retry-After` (not held without an answer while another import runs), and is accepted once
/// the running one has ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imports_over_the_limit_are_refused_until_one_ends() {
    let mut config = test_config(&fresh_database(Db::Sqlite).await);
    config.import_jobs = 1;
    let app = spawn_app_with(Db::Sqlite, config).await;
    let user = |id: &str| format!("{}\n", json!({"record": "user", "id": id}));
    // The first import's body stays open until the second has been answered.
    let (tx, first) = open_import(&app, user("first")).await;
    assert_eq!(first.status().as_u16(), 200, "its response starts at once");
    // On a client of its own too: refused before its body is read, its connection is closed.
    let refused = reqwest::Client::new()
        .post(format!("{}/v1/import", app.base))
        .bearer_auth(app.server())
        .header("content-type", "application/x-ndjson")
        .body(user("second"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 429);
    assert_eq!(refused.headers()["retry-after"], "10");
    let err: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(err["error"]["code"], "rate_limited", "{err}");
    tx.send(Ok(user("first-b"))).unwrap();
    drop(tx);
    let out = first.text().await.unwrap();
    let done: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(
        (&done["done"], &done["users"]),
        (&json!(true), &json!(2)),
        "{out}"
    );
    // The slot is free again: the first import's task releases it before it drops the
    // sender that ends the response.
    let res = app
        .client
        .post(format!("{}/v1/import", app.base))
        .bearer_auth(app.server())
        .header("content-type", "application/x-ndjson")
        .body(user("second"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status().as_u16(),
        200,
        "accepted once the first import ended"
    );
    let accepted = res.text().await.unwrap();
    assert!(accepted.contains(r#""done":true"#), "{accepted}");
    app.get("/v1/users/second", &app.server()).await.expect(200);
}

/// A body that stops sending (the client stalled, its connection still open) ends the import
/// after `CONFAB_IMPORT_IDLE_TIMEOUT`: what arrived is stored, the stall is reported as a bad
/// line, and the slot is free for the next import.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_import_body_ends_the_import() {
    let mut config = test_config(&fresh_database(Db::Sqlite).await);
    config.import_jobs = 1;
    config.import_idle_timeout = std::time::Duration::from_millis(300);
    let app = spawn_app_with(Db::Sqlite, config).await;
    let (tx, res) = open_import(
        &app,
        format!("{}\n", json!({"record": "user", "id": "early"})),
    )
    .await;
    assert_eq!(res.status().as_u16(), 200);
    // `tx` is held (the body stays open) until the response has ended.
    let out: Vec<serde_json::Value> = res
        .text()
        .await
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    drop(tx);
    let stalled = out.iter().find(|l| l.get("line").is_some()).unwrap();
    assert_eq!(stalled["line"], 2, "{out:?}");
    assert!(
        stalled["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no bytes for 0.3 s"),
        "{stalled}"
    );
    let done = out.last().unwrap();
    assert_eq!(
        (&done["done"], &done["users"], &done["errors"]),
        (&json!(true), &json!(1), &json!(1))
    );
    app.get("/v1/users/early", &app.server()).await.expect(200);
    let next = app
        .import_ndjson(json!({"record": "user", "id": "later"}).to_string())
        .await;
    assert_eq!(next.last().unwrap()["users"], 1);
}
