use serde_json::{Value, json};

use crate::both;
use crate::helpers::{Db, fresh_database, spawn_app, spawn_app_with, test_config};

both!(
    create_direct_and_group,
    create_validation,
    listing_filters_and_paging,
    get_with_messages_patch_and_tags,
    members_add_remove,
    listing_order_follows_every_kind_of_activity,
    listed_members_capped_caller_first,
);

fn ids(list: &Value) -> Vec<String> {
    list["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect()
}

async fn create_direct_and_group(db: Db) {
    let app = spawn_app(db).await;
    app.users(&[("ann", "Ann"), ("bob", "Bob")]).await;
    let a = app.user("ann");
    let res = app
        .post(
            "/v1/conversations",
            &a,
            json!({"type": "direct", "member_ids": ["bob"]}),
        )
        .await
        .expect(201);
    let id = res["id"].as_str().unwrap().to_owned();
    assert_eq!(res["type"], "direct");
    assert_eq!(
        res["name"], "Bob",
        "a direct conversation is named after the other member"
    );
    assert_eq!(res["member_count"], 2);
    assert_eq!(
        res["members"][0]["user_id"], "ann",
        "the caller comes first"
    );
    assert_eq!(res["members"][0]["role"], "owner");
    assert_eq!(res["members"][1]["role"], "member");
    assert_eq!(res["members"][1]["user"]["name"], "Bob");
    assert_eq!(res["last_seq"], 0);
    assert_eq!(res["last_message"], Value::Null);
    assert_eq!(res["unread_count"], 0);

    // The same pair, from either side: the existing conversation, 200.
    let again = app
        .post(
            "/v1/conversations",
            &app.user("bob"),
            json!({"type": "direct", "member_ids": ["ann"]}),
        )
        .await
        .expect(200);
    assert_eq!(again["id"], id.as_str());
    assert_eq!(again["name"], "Ann", "named per caller");

    // Creating writes no message.
    let page = app
        .get(&format!("/v1/conversations/{id}/messages"), &a)
        .await
        .expect(200);
    assert_eq!(page["messages"], json!([]));

    // A group with an unknown member creates that user bare.
    let g = app
        .post(
            "/v1/conversations",
            &a,
            json!({"type": "group", "member_ids": ["bob", "carl"], "name": "Team", "tags": ["vip"],
                   "custom": {"k": 1}, "external_id": "ext-1"}),
        )
        .await
        .expect(201);
    assert_eq!(g["member_count"], 3);
    assert_eq!(g["tags"], json!(["vip"]));
    assert_eq!(g["name"], "Team");
    assert_eq!(g["custom"]["k"], 1);
    app.get("/v1/users/carl", &a).await.expect(200);
    let replay = app
        .post(
            "/v1/conversations",
            &a,
            json!({"type": "group", "member_ids": [], "external_id": "ext-1"}),
        )
        .await
        .expect(200);
    assert_eq!(replay["id"], g["id"]);
    // Another user's replay of that external_id is not theirs to see.
    app.post(
        "/v1/conversations",
        &app.user("dave"),
        json!({"type": "group", "external_id": "ext-1"}),
    )
    .await
    .error(409, "conflict");

    // A server token without ?as: member_ids is the whole list, nobody is owner.
    let s = app
        .post(
            "/v1/conversations",
            &app.server(),
            json!({"type": "group", "member_ids": ["ann", "bob"]}),
        )
        .await
        .expect(201);
    assert_eq!(s["created_by"], Value::Null);
    assert_eq!(s["member_count"], 2);
    assert!(
        s["members"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["role"] == "member")
    );
    // With ?as the server acts as that user.
    let as_bob = app
        .post(
            "/v1/conversations?as=bob",
            &app.server(),
            json!({"type": "group", "member_ids": ["ann"]}),
        )
        .await
        .expect(201);
    assert_eq!(as_bob["created_by"], "bob");
}

async fn create_validation(db: Db) {
    let app = spawn_app(db).await;
    let a = app.user("ann");
    let cases = [
        (
            json!({"type": "channel", "member_ids": ["b"]}),
            Some("type"),
        ),
        (json!({"member_ids": ["b"]}), Some("type")),
        (
            json!({"type": "direct", "member_ids": []}),
            Some("member_ids"),
        ),
        (
            json!({"type": "direct", "member_ids": ["b", "c"]}),
            Some("member_ids"),
        ),
        (
            json!({"type": "direct", "member_ids": ["ann"]}),
            Some("member_ids"),
        ),
        (
            json!({"type": "group", "member_ids": ["ok", "bad id"]}),
            Some("member_ids[1]"),
        ),
        (json!({"type": "group", "name": "a\u{0}b"}), Some("name")),
        (
            json!({"type": "group", "tags": ["ok", ""]}),
            Some("tags[1]"),
        ),
        (json!({"type": "group", "custom": "no"}), Some("custom")),
        (
            json!({"type": "group", "member_ids": "b"}),
            Some("member_ids"),
        ),
        (json!({"type": "group", "colour": "red"}), Some("colour")),
    ];
    for (body, field) in cases {
        let got = app
            .post("/v1/conversations", &a, body.clone())
            .await
            .error(400, "validation_failed");
        assert_eq!(got.as_deref(), field, "for {body}");
    }
}

async fn listing_filters_and_paging(db: Db) {
    let app = spawn_app(db).await;
    app.users(&[("me", "Me"), ("john", "John Smith"), ("mary", "Mary")])
        .await;
    let me = app.user("me");
    let d_john = app.conversation("me", "direct", &["john"]).await;
    let d_mary = app.conversation("me", "direct", &["mary"]).await;
    let g1 = app.conversation("me", "group", &["john", "mary"]).await;
    let g2 = app.conversation("mary", "group", &["me"]).await;
    app.put(
        &format!("/v1/conversations/{g1}/tags"),
        &me,
        json!({"tags": ["vip", "support"]}),
    )
    .await
    .expect(200);
    app.put(
        &format!("/v1/conversations/{d_john}/tags"),
        &me,
        json!({"tags": ["vip"]}),
    )
    .await
    .expect(200);
    app.patch(
        &format!("/v1/conversations/{g2}"),
        &app.user("mary"),
        json!({"name": "Book club"}),
    )
    .await
    .expect(200);
    // Activity order: d_mary gets the newest message.
    app.send("john", &d_john, "c1", "hello").await;
    app.send("mary", &d_mary, "c2", "hi").await;

    let all = app.get("/v1/conversations", &me).await.expect(200);
    assert_eq!(
        ids(&all)[..2],
        [d_mary.clone(), d_john.clone()],
        "newest activity first"
    );
    assert_eq!(ids(&all).len(), 4);
    assert_eq!(all["next_cursor"], Value::Null);
    assert!(all.get("total").is_none());

    let f = |q: &str| format!("/v1/conversations?{q}");
    let groups = app
        .get(&f("type=group&include_total=true"), &me)
        .await
        .expect(200);
    assert_eq!(groups["total"], 2);
    assert!(ids(&groups).contains(&g1) && ids(&groups).contains(&g2));
    assert_eq!(
        ids(&app.get(&f("tags=vip,support"), &me).await.expect(200)),
        vec![g1.clone()]
    );
    let vip = ids(&app.get(&f("tags=vip"), &me).await.expect(200));
    assert_eq!(vip.len(), 2);
    let not_vip = ids(&app.get(&f("exclude_tags=vip"), &me).await.expect(200));
    assert!(!not_vip.contains(&g1) && !not_vip.contains(&d_john) && not_vip.len() == 2);
    // q: another member's name, or the conversation's name, case-insensitively.
    let john = ids(&app.get(&f("q=JOHN"), &me).await.expect(200));
    assert!(
        john.contains(&d_john) && john.contains(&g1) && john.len() == 2,
        "{john:?}"
    );
    assert_eq!(
        ids(&app.get(&f("q=book"), &me).await.expect(200)),
        vec![g2.clone()]
    );
    assert_eq!(
        ids(&app.get(&f("q=%25"), &me).await.expect(200)).len(),
        0,
        "% is literal"
    );
    // unread_only: d_john and d_mary have a message from the other; g2 has the rename.
    let unread = ids(&app
        .get(&f("unread_only=true&include_total=true"), &me)
        .await
        .expect(200));
    assert_eq!(unread.len(), 3, "{unread:?}");
    assert!(!unread.contains(&g1));
    // updated_after / updated_before bound the last activity.
    let newest = app.get(&f("limit=1"), &me).await.expect(200);
    let at = newest["conversations"][0]["last_message_at"]
        .as_str()
        .unwrap()
        .to_owned();
    let after = ids(&app
        .get(&f(&format!("updated_after={at}")), &me)
        .await
        .expect(200));
    assert_eq!(after, vec![d_mary.clone()]);
    let before = ids(&app
        .get(&f("updated_before=2000-01-01T00:00:00.000Z"), &me)
        .await
        .expect(200));
    assert!(before.is_empty());

    // Paging with limit=1 walks everything once, in order.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = match &cursor {
            Some(c) => format!("limit=1&cursor={c}"),
            None => "limit=1".into(),
        };
        let page = app.get(&f(&q), &me).await.expect(200);
        seen.extend(ids(&page));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, ids(&all));

    for (q, field) in [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=x", "limit"),
        ("cursor=garbage!", "cursor"),
        ("type=x", "type"),
        ("updated_after=yesterday", "updated_after"),
        ("unread_only=maybe", "unread_only"),
    ] {
        let got = app.get(&f(q), &me).await.error(400, "validation_failed");
        assert_eq!(got.as_deref(), Some(field), "for {q}");
    }
    // Someone else's listing does not show mine.
    assert!(
        ids(&app
            .get("/v1/conversations", &app.user("stranger"))
            .await
            .expect(200))
        .is_empty()
    );
}

async fn get_with_messages_patch_and_tags(db: Db) {
    let app = spawn_app(db).await;
    let (a, b) = (app.user("ann"), app.user("bob"));
    let g = app.conversation("ann", "group", &["bob"]).await;
    for i in 1..=5 {
        app.send("ann", &g, &format!("c{i}"), &format!("m{i}"))
            .await;
    }
    let c = app
        .get(&format!("/v1/conversations/{g}?messages=3"), &b)
        .await
        .expect(200);
    let texts: Vec<&str> = c["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["m3", "m4", "m5"], "the newest N, oldest first");
    assert_eq!(c["unread_count"], 5);
    assert_eq!(c["last_message"]["text"], "m5");
    assert_eq!(c["last_seq"], 5);
    assert!(
        app.get(&format!("/v1/conversations/{g}"), &b)
            .await
            .expect(200)
            .get("messages")
            .is_none()
    );
    app.get(&format!("/v1/conversations/{g}?messages=201"), &b)
        .await
        .error(400, "validation_failed");

    // A rename writes one system message, unread for everyone but the renamer.
    let p = app
        .patch(
            &format!("/v1/conversations/{g}"),
            &b,
            json!({"name": "New", "custom": {"x": 1}}),
        )
        .await
        .expect(200);
    assert_eq!(p["name"], "New");
    assert_eq!(p["custom"]["x"], 1);
    assert_eq!(p["last_seq"], 6);
    assert_eq!(p["last_message"]["type"], "system");
    assert_eq!(p["last_message"]["sender_id"], Value::Null);
    assert_eq!(p["unread_count"], 0, "the renamer read up to the change");
    let for_ann = app
        .get(&format!("/v1/conversations/{g}"), &a)
        .await
        .expect(200);
    assert_eq!(for_ann["unread_count"], 1);
    // A patch that changes nothing writes nothing.
    let same = app
        .patch(
            &format!("/v1/conversations/{g}"),
            &b,
            json!({"name": "New"}),
        )
        .await
        .expect(200);
    assert_eq!(same["last_seq"], 6);
    app.patch(
        &format!("/v1/conversations/{g}"),
        &b,
        json!({"type": "direct"}),
    )
    .await
    .error(400, "validation_failed");
    app.patch(&format!("/v1/conversations/{g}"), &b, json!({"name": 3}))
        .await
        .error(400, "validation_failed");

    // Tags: replaced, the same for every member, no message; the server may set them.
    let t = app
        .put(
            &format!("/v1/conversations/{g}/tags"),
            &a,
            json!({"tags": ["b", "a", "a"]}),
        )
        .await
        .expect(200);
    assert_eq!(t["tags"], json!(["a", "b"]));
    assert_eq!(t["last_seq"], 6);
    let t = app
        .put(
            &format!("/v1/conversations/{g}/tags"),
            &app.server(),
            json!({"tags": ["z"]}),
        )
        .await
        .expect(200);
    assert_eq!(t["tags"], json!(["z"]));
    assert_eq!(
        app.get(&format!("/v1/conversations/{g}"), &b)
            .await
            .expect(200)["tags"],
        json!(["z"])
    );
    app.put(
        &format!("/v1/conversations/{g}/tags"),
        &a,
        json!({"tags": "z"}),
    )
    .await
    .error(400, "validation_failed");
}

async fn members_add_remove(db: Db) {
    let app = spawn_app(db).await;
    let (a, b, c) = (app.user("ann"), app.user("bob"), app.user("cat"));
    let g = app.conversation("ann", "group", &["bob"]).await;
    app.send("ann", &g, "c1", "before cat").await;
    let res = app
        .post(
            &format!("/v1/conversations/{g}/members"),
            &b,
            json!({"user_ids": ["cat", "bob"]}),
        )
        .await
        .expect(200);
    assert_eq!(res["member_count"], 3);
    assert_eq!(res["last_seq"], 2, "one system message for the call");
    assert_eq!(res["last_message"]["custom"]["user_ids"], json!(["cat"]));
    // The new member starts at the conversation's last seq when they joined: only the system
    // message about their joining is unread.
    let for_cat = app
        .get(&format!("/v1/conversations/{g}"), &c)
        .await
        .expect(200);
    assert_eq!(for_cat["unread_count"], 1);
    let me = for_cat["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["user_id"] == "cat")
        .unwrap()
        .clone();
    assert_eq!(me["last_read_seq"], 1);
    // Adding only existing members changes nothing.
    let same = app
        .post(
            &format!("/v1/conversations/{g}/members"),
            &a,
            json!({"user_ids": ["cat"]}),
        )
        .await
        .expect(200);
    assert_eq!(same["last_seq"], 2);

    // Direct conversations take no members.
    let d = app.conversation("ann", "direct", &["bob"]).await;
    app.post(
        &format!("/v1/conversations/{d}/members"),
        &a,
        json!({"user_ids": ["cat"]}),
    )
    .await
    .error(400, "validation_failed");
    app.post(
        &format!("/v1/conversations/{g}/members"),
        &a,
        json!({"user_ids": []}),
    )
    .await
    .error(400, "validation_failed");

    // Only the owner removes others; anyone leaves.
    app.delete(&format!("/v1/conversations/{g}/members/cat"), &b)
        .await
        .error(403, "forbidden");
    assert_eq!(
        app.delete(&format!("/v1/conversations/{g}/members/cat"), &a)
            .await
            .status
            .as_u16(),
        204
    );
    app.get(&format!("/v1/conversations/{g}"), &c)
        .await
        .error(404, "not_found");
    app.send("ann", &g, "c2", "after cat").await;
    app.get(&format!("/v1/conversations/{g}/messages"), &c)
        .await
        .error(404, "not_found");
    assert_eq!(
        app.delete(&format!("/v1/conversations/{g}/members/bob"), &b)
            .await
            .status
            .as_u16(),
        204
    );
    let left = app
        .get(&format!("/v1/conversations/{g}?messages=10"), &a)
        .await
        .expect(200);
    assert_eq!(left["member_count"], 1);
    let events: Vec<&str> = left["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["type"] == "system")
        .map(|m| m["custom"]["event"].as_str().unwrap())
        .collect();
    assert_eq!(events, ["members_added", "member_removed", "member_left"]);
    app.delete(&format!("/v1/conversations/{g}/members/nobody"), &a)
        .await
        .error(404, "not_found");
}

/// Memberships whose copy of the activity time (the listing's order) differs from their
/// conversation's.
async fn stale_activity_copies(db: Db, url: &str) -> i64 {
    use sqlx::Connection;
    let sql = "select count(*) from members m join conversations c \
               on c.conversation_id = m.conversation_id where m.activity_at <> c.activity_at";
    match db {
        Db::Sqlite => {
            let mut c = sqlx::SqliteConnection::connect(url).await.unwrap();
            sqlx::query_scalar(sql).fetch_one(&mut c).await.unwrap()
        }
        Db::Postgres => {
            let mut c = sqlx::PgConnection::connect(url).await.unwrap();
            sqlx::query_scalar(sql).fetch_one(&mut c).await.unwrap()
        }
    }
}

/// The listing is ordered by the memberships' copies of the activity time: every writer that
/// moves a conversation (create, send, member added, rename, import of newer and of older
/// messages, a new imported conversation) moves the copies too, and keyset pages agree.
async fn listing_order_follows_every_kind_of_activity(db: Db) {
    let url = fresh_database(db).await;
    let app = spawn_app_with(db, test_config(&url)).await;
    app.users(&[("ann", "Ann"), ("bob", "Bob"), ("carl", "Carl")])
        .await;
    let a = app.user("ann");
    let tick = || tokio::time::sleep(std::time::Duration::from_millis(5));
    let mut made = Vec::new();
    for x in ["x1", "x2", "x3"] {
        let c = app
            .post(
                "/v1/conversations",
                &a,
                json!({"type": "group", "member_ids": ["bob"], "external_id": x}),
            )
            .await
            .expect(201);
        made.push(c["id"].as_str().unwrap().to_owned());
        tick().await;
    }
    let (g1, g2, g3) = (made[0].clone(), made[1].clone(), made[2].clone());
    let order = |who: &'static str| {
        let app = &app;
        async move {
            let t = app.user(who);
            let whole = ids(&app.get("/v1/conversations", &t).await.expect(200));
            // The same order one page of one at a time.
            let mut walked = Vec::new();
            let mut cursor: Option<String> = None;
            loop {
                let path = match &cursor {
                    Some(c) => format!("/v1/conversations?limit=1&cursor={c}"),
                    None => "/v1/conversations?limit=1".to_owned(),
                };
                let page = app.get(&path, &t).await.expect(200);
                walked.extend(ids(&page));
                match page["next_cursor"].as_str() {
                    Some(c) => cursor = Some(c.to_owned()),
                    None => break,
                }
            }
            assert_eq!(walked, whole, "keyset pages agree with the whole list");
            whole
        }
    };
    assert_eq!(order("ann").await, [g3.as_str(), g2.as_str(), g1.as_str()]);
    app.send("bob", &g1, "s1", "hi").await;
    tick().await;
    assert_eq!(
        order("ann").await,
        [g1.as_str(), g3.as_str(), g2.as_str()],
        "a send"
    );
    app.post(
        &format!("/v1/conversations/{g2}/members"),
        &a,
        json!({"user_ids": ["carl"]}),
    )
    .await
    .expect(200);
    tick().await;
    assert_eq!(
        order("ann").await,
        [g2.as_str(), g1.as_str(), g3.as_str()],
        "a member added"
    );
    assert_eq!(order("carl").await, [g2.as_str()], "the new member's copy");
    app.patch(
        &format!("/v1/conversations/{g3}"),
        &a,
        json!({"name": "Renamed"}),
    )
    .await
    .expect(200);
    tick().await;
    assert_eq!(
        order("ann").await,
        [g3.as_str(), g2.as_str(), g1.as_str()],
        "a rename"
    );
    // An import: an old message into g3 moves nothing, a new one into g1 moves g1, and a new
    // conversation with an old message lands last.
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let lines = [
        json!({"record": "message", "conversation_external_id": "x3", "external_id": "old",
               "sender_id": "bob", "text": "old", "created_at": "2020-01-01T10:00:00.000Z"}),
        json!({"record": "message", "conversation_external_id": "x1", "external_id": "new",
               "sender_id": "bob", "text": "new", "created_at": now}),
        json!({"record": "conversation", "external_id": "x4", "type": "group",
               "member_ids": ["ann", "bob"], "created_at": "2020-01-01T09:00:00.000Z"}),
        json!({"record": "message", "conversation_external_id": "x4", "external_id": "x4m",
               "sender_id": "bob", "text": "older", "created_at": "2020-01-01T09:30:00.000Z"}),
    ]
    .map(|l| l.to_string())
    .join("\n");
    let out = app.import_ndjson(lines).await;
    assert_eq!(out.last().unwrap()["messages"], 3, "{out:?}");
    let listed = order("ann").await;
    assert_eq!(
        listed[..3],
        [g1.as_str(), g3.as_str(), g2.as_str()],
        "an import"
    );
    assert_eq!(listed.len(), 4, "the imported conversation is listed, last");
    assert_eq!(stale_activity_copies(db, &url).await, 0);
}

/// `members` holds at most 20 entries, the caller first and then by joining (ties by id), with
/// their users; `member_count` is exact. The same in a listing and in a single get.
async fn listed_members_capped_caller_first(db: Db) {
    let app = spawn_app(db).await;
    app.users(&[("ann", "Ann")]).await;
    let others: Vec<String> = (0..24).map(|i| format!("u{i:02}")).collect();
    let refs: Vec<&str> = others.iter().map(String::as_str).collect();
    let g = app.conversation("ann", "group", &refs).await;
    app.put(
        "/v1/users",
        &app.server(),
        json!({"users": [{"id": "ann", "name": "Ann", "custom": {"tier": "gold"}}]}),
    )
    .await
    .expect(200);
    let t = app.user("u23");
    let listed = app.get("/v1/conversations", &t).await.expect(200);
    let one = app
        .get(&format!("/v1/conversations/{g}"), &t)
        .await
        .expect(200);
    for c in [&listed["conversations"][0], &one] {
        assert_eq!(c["member_count"], 25);
        let ms: Vec<&str> = c["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["user_id"].as_str().unwrap())
            .collect();
        let mut want = vec!["u23", "ann"];
        want.extend(refs[..18].iter().copied());
        assert_eq!(ms, want, "caller first, then by joining and id, 20 at most");
        assert_eq!(c["members"][1]["role"], "owner");
        assert_eq!(c["members"][1]["user"]["name"], "Ann");
        assert_eq!(c["members"][1]["user"]["custom"], json!({"tier": "gold"}));
        assert_eq!(c["members"][0]["role"], "member");
    }
}
