use serde_json::{Value, json};

use crate::both;
use crate::helpers::{Db, spawn_app};

both!(
    send_and_replay,
    send_validation,
    paging,
    edit_and_delete,
    read_and_unread
);

async fn send_and_replay(db: Db) {
    let app = spawn_app(db).await;
    let g = app.conversation("ann", "group", &["bob"]).await;
    let path = format!("/v1/conversations/{g}/messages");
    let a = app.user("ann");
    let enc = json!({"ciphertext": "q83v", "nonce": "AAEC", "ephemeral_public_key": "BBB=", "algorithm": "x25519-aes-gcm"});
    let first = app
        .post(&path, &a, json!({"client_id": "tmp-1", "encrypted": enc, "attachments": [{"key": "k1", "file_name": "a.png", "size": 12, "mime_type": "image/png", "thumbnail_key": null, "url": "https://x"}], "custom": {"n": 1}}))
        .await
        .expect(201);
    assert_eq!(first["seq"], 1);
    assert_eq!(first["type"], "regular");
    assert_eq!(first["sender_id"], "ann");
    assert_eq!(first["client_id"], "tmp-1");
    assert_eq!(first["encrypted"], enc, "stored and returned as sent");
    assert_eq!(first["attachments"][0]["file_name"], "a.png");
    assert_eq!(first["text"], Value::Null);
    let replay = app
        .post(
            &path,
            &a,
            json!({"client_id": "tmp-1", "text": "different"}),
        )
        .await
        .expect(200);
    assert_eq!(replay, first, "a replay answers the original");
    // The same client_id from another sender is another message.
    let other = app
        .post(
            &path,
            &app.user("bob"),
            json!({"client_id": "tmp-1", "text": "hi"}),
        )
        .await
        .expect(201);
    assert_eq!(other["seq"], 2);
    // Sending moves the sender's read position past everything before it.
    let c = app
        .get(&format!("/v1/conversations/{g}"), &app.user("bob"))
        .await
        .expect(200);
    assert_eq!(c["unread_count"], 0);
    let c = app
        .get(&format!("/v1/conversations/{g}"), &a)
        .await
        .expect(200);
    assert_eq!(c["unread_count"], 1);
    // Server token: sender from ?as or from the body's user_id.
    let s = app.server();
    let m = app
        .post(
            &format!("{path}?as=bob"),
            &s,
            json!({"client_id": "s1", "text": "x"}),
        )
        .await
        .expect(201);
    assert_eq!(m["sender_id"], "bob");
    let m = app
        .post(
            &path,
            &s,
            json!({"client_id": "s2", "text": "x", "user_id": "ann"}),
        )
        .await
        .expect(201);
    assert_eq!(m["sender_id"], "ann");
    app.post(&path, &s, json!({"client_id": "s3", "text": "x"}))
        .await
        .error(400, "validation_failed");
    // Replies point inside the conversation.
    let r = app
        .post(
            &path,
            &a,
            json!({"client_id": "r1", "text": "re", "parent_id": first["id"]}),
        )
        .await
        .expect(201);
    assert_eq!(r["parent_id"], first["id"]);
    app.post(
        &path,
        &a,
        json!({"client_id": "r2", "text": "re", "parent_id": "nope"}),
    )
    .await
    .error(400, "validation_failed");
}

async fn send_validation(db: Db) {
    let app = spawn_app(db).await;
    let g = app.conversation("ann", "group", &[]).await;
    let path = format!("/v1/conversations/{g}/messages");
    let a = app.user("ann");
    let long = "x".repeat(8001);
    let many: Vec<Value> = (0..11).map(|i| json!({"key": format!("k{i}")})).collect();
    let cases = [
        (json!({"text": "no client id"}), "client_id"),
        (json!({"client_id": "", "text": "x"}), "client_id"),
        (
            json!({"client_id": "c".repeat(65), "text": "x"}),
            "client_id",
        ),
        (json!({"client_id": "c"}), "text"),
        (json!({"client_id": "c", "text": ""}), "text"),
        (json!({"client_id": "c", "text": long}), "text"),
        (json!({"client_id": "c", "text": "a\u{0}"}), "text"),
        (
            json!({"client_id": "c", "attachments": many}),
            "attachments",
        ),
        (
            json!({"client_id": "c", "attachments": [{"file_name": "x"}]}),
            "attachments[0].key",
        ),
        (
            json!({"client_id": "c", "encrypted": {"nonce": "x"}}),
            "encrypted.ciphertext",
        ),
        (
            json!({"client_id": "c", "text": "x", "custom": {"big": "y".repeat(9000)}}),
            "custom",
        ),
        (json!({"client_id": "c", "text": 5}), "text"),
        (
            json!({"client_id": "c", "text": "x", "surprise": 1}),
            "surprise",
        ),
    ];
    for (body, field) in cases {
        let got = app
            .post(&path, &a, body.clone())
            .await
            .error(400, "validation_failed");
        assert_eq!(got.as_deref(), Some(field), "for {body}");
    }
    // Exactly at the limits is fine.
    let ok = app
        .post(
            &path,
            &a,
            json!({"client_id": "c".repeat(64), "text": "é".repeat(8000)}),
        )
        .await
        .expect(201);
    assert_eq!(ok["seq"], 1);
    // Nothing refused was stored.
    let page = app.get(&path, &a).await.expect(200);
    assert_eq!(page["messages"].as_array().unwrap().len(), 1);
}

async fn paging(db: Db) {
    let app = spawn_app(db).await;
    let g = app.conversation("ann", "group", &[]).await;
    for i in 1..=7 {
        app.send("ann", &g, &format!("c{i}"), &format!("m{i}"))
            .await;
    }
    let a = app.user("ann");
    let seqs = |v: &Value| -> Vec<i64> {
        v["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["seq"].as_i64().unwrap())
            .collect()
    };
    let p = |q: &str| format!("/v1/conversations/{g}/messages?{q}");
    let newest = app.get(&p("limit=3"), &a).await.expect(200);
    assert_eq!(seqs(&newest), [5, 6, 7]);
    assert_eq!(newest["has_more"], true);
    let before = app.get(&p("limit=3&before_seq=5"), &a).await.expect(200);
    assert_eq!(seqs(&before), [2, 3, 4]);
    assert_eq!(before["has_more"], true);
    let first = app.get(&p("limit=3&before_seq=2"), &a).await.expect(200);
    assert_eq!(seqs(&first), [1]);
    assert_eq!(first["has_more"], false);
    let after = app.get(&p("limit=4&after_seq=2"), &a).await.expect(200);
    assert_eq!(seqs(&after), [3, 4, 5, 6]);
    assert_eq!(after["has_more"], true);
    let end = app.get(&p("after_seq=7"), &a).await.expect(200);
    assert_eq!(seqs(&end), Vec::<i64>::new());
    assert_eq!(end["has_more"], false);
    let all = app.get(&p(""), &a).await.expect(200);
    assert_eq!(seqs(&all), [1, 2, 3, 4, 5, 6, 7]);
    assert_eq!(all["has_more"], false);
    let empty_conv = app.conversation("ann", "group", &["zed"]).await;
    let empty = app
        .get(&format!("/v1/conversations/{empty_conv}/messages"), &a)
        .await
        .expect(200);
    assert_eq!(empty, json!({"messages": [], "has_more": false}));
    for (q, field) in [
        ("limit=0", "limit"),
        ("limit=201", "limit"),
        ("before_seq=abc", "before_seq"),
        ("after_seq=-1", "after_seq"),
        ("before_seq=3&after_seq=1", "after_seq"),
    ] {
        let got = app.get(&p(q), &a).await.error(400, "validation_failed");
        assert_eq!(got.as_deref(), Some(field), "for {q}");
    }
}

async fn edit_and_delete(db: Db) {
    let app = spawn_app(db).await;
    let g = app.conversation("ann", "group", &["bob"]).await;
    let (a, b) = (app.user("ann"), app.user("bob"));
    let m = app.send("ann", &g, "c1", "helo").await;
    let id = m["id"].as_str().unwrap();
    let e = app
        .patch(
            &format!("/v1/messages/{id}"),
            &a,
            json!({"text": "hello", "custom": {"fixed": true}}),
        )
        .await
        .expect(200);
    assert_eq!(e["text"], "hello");
    assert_eq!(e["custom"]["fixed"], true);
    assert!(e["edited_at"].is_string());
    assert_eq!(e["seq"], m["seq"]);
    app.patch(
        &format!("/v1/messages/{id}"),
        &b,
        json!({"text": "mine now"}),
    )
    .await
    .error(403, "forbidden");
    app.patch(&format!("/v1/messages/{id}"), &a, json!({}))
        .await
        .error(400, "validation_failed");
    app.patch(
        &format!("/v1/messages/{id}"),
        &app.user("stranger"),
        json!({"text": "x"}),
    )
    .await
    .error(404, "not_found");

    assert_eq!(
        app.get(&format!("/v1/conversations/{g}"), &b)
            .await
            .expect(200)["unread_count"],
        1
    );
    app.delete(&format!("/v1/messages/{id}"), &b)
        .await
        .error(403, "forbidden");
    let t = app
        .delete(&format!("/v1/messages/{id}"), &a)
        .await
        .expect(200);
    assert_eq!(t["id"], id);
    assert_eq!(t["seq"], 1);
    assert!(t["deleted_at"].is_string());
    assert_eq!(t["text"], Value::Null);
    assert_eq!(t["encrypted"], Value::Null);
    assert_eq!(t["attachments"], json!([]));
    // A tombstone is not unread and stays in the page.
    assert_eq!(
        app.get(&format!("/v1/conversations/{g}"), &b)
            .await
            .expect(200)["unread_count"],
        0
    );
    let page = app
        .get(&format!("/v1/conversations/{g}/messages"), &b)
        .await
        .expect(200);
    assert_eq!(page["messages"][0]["deleted_at"], t["deleted_at"]);
    // Deleting again answers the tombstone; editing it is a conflict.
    assert_eq!(
        app.delete(&format!("/v1/messages/{id}"), &a)
            .await
            .expect(200),
        t
    );
    app.patch(&format!("/v1/messages/{id}"), &a, json!({"text": "x"}))
        .await
        .error(409, "conflict");
    // The server may delete anyone's message.
    let m2 = app.send("bob", &g, "c2", "spam").await;
    app.delete(
        &format!("/v1/messages/{}", m2["id"].as_str().unwrap()),
        &app.server(),
    )
    .await
    .expect(200);
    app.delete("/v1/messages/nope", &a)
        .await
        .error(404, "not_found");
}

async fn read_and_unread(db: Db) {
    let app = spawn_app(db).await;
    let (a, b) = (app.user("ann"), app.user("bob"));
    let g = app.conversation("ann", "group", &["bob"]).await;
    let d = app.conversation("ann", "direct", &["bob"]).await;
    for i in 0..150 {
        app.send("ann", &g, &format!("g{i}"), "x").await;
    }
    app.send("ann", &d, "d1", "x").await;
    app.send("ann", &d, "d2", "x").await;
    app.send("bob", &d, "d3", "mine").await;
    let u = app.get("/v1/unread", &b).await.expect(200);
    assert_eq!(
        u["total"], 150,
        "exact and uncapped; own messages and read ones excluded: {u}"
    );
    let u_ann = app.get("/v1/unread", &a).await.expect(200);
    assert_eq!(u_ann["total"], 1);
    assert_eq!(
        u_ann["conversations"],
        json!([{"conversation_id": d, "unread_count": 1}])
    );

    let r = |c: &str| format!("/v1/conversations/{c}/read");
    let res = app.post(&r(&g), &b, json!({"seq": 100})).await.expect(200);
    assert_eq!(res, json!({"conversation_id": g, "last_read_seq": 100}));
    // A lower seq is accepted and changes nothing; beyond the end means the latest.
    assert_eq!(
        app.post(&r(&g), &b, json!({"seq": 5})).await.expect(200)["last_read_seq"],
        100
    );
    assert_eq!(app.get("/v1/unread", &b).await.expect(200)["total"], 50);
    assert_eq!(
        app.post(&r(&g), &b, json!({"seq": 10_000}))
            .await
            .expect(200)["last_read_seq"],
        150
    );
    assert_eq!(app.get("/v1/unread", &b).await.expect(200)["total"], 0);
    // Omitted, or an empty body: the latest.
    let res = app
        .raw(reqwest::Method::POST, &r(&d), Some(&a), None)
        .await
        .expect(200);
    assert_eq!(res["last_read_seq"], 3);
    assert_eq!(
        app.get("/v1/unread", &a).await.expect(200),
        json!({"total": 0, "conversations": []})
    );
    app.post(&r(&g), &b, json!({"seq": -1}))
        .await
        .error(400, "validation_failed");
    app.post(&r(&g), &b, json!({"seq": "x"}))
        .await
        .error(400, "validation_failed");
    app.post(&r(&g), &app.user("stranger"), json!({}))
        .await
        .error(404, "not_found");
}
