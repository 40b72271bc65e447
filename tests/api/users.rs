use serde_json::json;

use crate::both;
use crate::helpers::{Db, spawn_app};

both!(
    upsert_get_and_deactivate,
    user_validation,
    first_request_creates_a_conversation
);

async fn upsert_get_and_deactivate(db: Db) {
    let app = spawn_app(db).await;
    let s = app.server();
    let body = app
        .put(
            "/v1/users",
            &s,
            json!({"users": [
                {"id": "u_1", "name": "Salt Academy", "kind": "company", "custom": {"tier": 2}},
                {"id": "u_2"}
            ]}),
        )
        .await
        .expect(200);
    assert_eq!(body["users"][0]["name"], "Salt Academy");
    assert_eq!(body["users"][0]["kind"], "company");
    assert_eq!(body["users"][0]["custom"]["tier"], 2);
    assert_eq!(
        body["users"][1]["name"], "u_2",
        "a user without a name is named by id"
    );
    assert_eq!(body["users"][1]["kind"], "user");
    assert!(
        body["users"][0]["created_at"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );

    // A second upsert changes only what it names.
    let again = app
        .put(
            "/v1/users",
            &s,
            json!({"users": [{"id": "u_1", "image_url": "https://x/y.png"}]}),
        )
        .await
        .expect(200);
    assert_eq!(again["users"][0]["name"], "Salt Academy");
    assert_eq!(again["users"][0]["image_url"], "https://x/y.png");
    assert_eq!(again["users"][0]["custom"]["tier"], 2);

    let u = app.user("u_2");
    let one = app.get("/v1/users/u_1", &u).await.expect(200);
    assert_eq!(one["id"], "u_1");
    assert_eq!(one["online"], false);
    app.get("/v1/users/nobody", &u)
        .await
        .error(404, "not_found");

    let many = app
        .get("/v1/users?ids=u_2,nobody,u_1", &u)
        .await
        .expect(200);
    let ids: Vec<&str> = many["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["u_2", "u_1"], "in the order asked, unknown left out");

    // Only the server upserts and deactivates.
    app.put("/v1/users", &u, json!({"users": [{"id": "u_9"}]}))
        .await
        .error(403, "forbidden");
    app.delete("/v1/users/u_1", &u)
        .await
        .error(403, "forbidden");

    // Deactivation stops the user's tokens; their data stays.
    let u1 = app.user("u_1");
    app.get("/v1/users/u_2", &u1).await.expect(200);
    let res = app.delete("/v1/users/u_1", &s).await;
    assert_eq!(res.status.as_u16(), 204);
    app.get("/v1/users/u_2", &u1)
        .await
        .error(401, "unauthorized");
    app.get("/v1/users/u_1", &u).await.expect(200);
    app.delete("/v1/users/nobody", &s)
        .await
        .error(404, "not_found");

    // A valid token for an unknown user creates that user bare on first use.
    app.get("/v1/users/u_1", &app.user("fresh_user"))
        .await
        .expect(200);
    let fresh = app.get("/v1/users/fresh_user", &u).await.expect(200);
    assert_eq!(fresh["name"], "fresh_user");
}

async fn user_validation(db: Db) {
    let app = spawn_app(db).await;
    let s = app.server();
    let cases = [
        (json!({}), "users"),
        (json!({"users": []}), "users"),
        (
            json!({"users": [{"id": "ok"}, {"id": "no spaces"}]}),
            "users[1].id",
        ),
        (json!({"users": [{"name": "x"}]}), "users[0].id"),
        (
            json!({"users": [{"id": "a", "name": "nul\u{0}"}]}),
            "users[0].name",
        ),
        (json!({"users": [{"id": "a", "name": 5}]}), "users[0].name"),
        (
            json!({"users": [{"id": "a", "custom": []}]}),
            "users[0].custom",
        ),
        (json!({"users": [{"id": "a"}, {"id": "a"}]}), "users[1].id"),
        (
            json!({"users": [{"id": "a", "custom": {"k": "x".repeat(9000)}}]}),
            "users[0].custom",
        ),
    ];
    for (body, field) in cases {
        let got = app
            .put("/v1/users", &s, body.clone())
            .await
            .error(400, "validation_failed");
        assert_eq!(got.as_deref(), Some(field), "for {body}");
    }
    let many: Vec<_> = (0..1001).map(|i| json!({"id": format!("u{i}")})).collect();
    let got = app
        .put("/v1/users", &s, json!({"users": many}))
        .await
        .error(400, "validation_failed");
    assert_eq!(got.as_deref(), Some("users"));
    let got = app
        .get("/v1/users", &s)
        .await
        .error(400, "validation_failed");
    assert_eq!(got.as_deref(), Some("ids"));
}

/// A new user's first request creating a conversation: the create does not wait for the user's
/// own commit first, but both are there when the answer comes (also for a refused create, and
/// for a body that is not even read); a deactivated user still cannot create, by token or acted
/// as.
async fn first_request_creates_a_conversation(db: Db) {
    let app = spawn_app(db).await;
    let s = app.server();
    let c = app
        .post(
            "/v1/conversations",
            &app.user("first_timer"),
            json!({"type": "direct", "member_ids": ["other_new"]}),
        )
        .await
        .expect(201);
    let mut members: Vec<&str> = c["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["user"]["id"].as_str().unwrap())
        .collect();
    members.sort();
    assert_eq!(members, ["first_timer", "other_new"]);
    let me = app.get("/v1/users/first_timer", &s).await.expect(200);
    assert_eq!(me["name"], "first_timer");

    // Refused (400), but the user is made all the same.
    app.post(
        "/v1/conversations",
        &app.user("second_timer"),
        json!({"type": "direct", "member_ids": []}),
    )
    .await
    .error(400, "validation_failed");
    app.get("/v1/users/second_timer", &s).await.expect(200);
    // A body that does not parse (`type` missing): refused before the handler, user made too.
    app.post(
        "/v1/conversations",
        &app.user("fourth_timer"),
        json!({"member_ids": ["x"]}),
    )
    .await
    .error(400, "validation_failed");
    app.get("/v1/users/fourth_timer", &s).await.expect(200);

    // Acted as by the server: the same.
    app.post(
        "/v1/conversations?as=third_timer",
        &s,
        json!({"type": "group", "member_ids": ["first_timer"]}),
    )
    .await
    .expect(201);
    app.get("/v1/users/third_timer", &s).await.expect(200);

    assert_eq!(
        app.delete("/v1/users/first_timer", &s)
            .await
            .status
            .as_u16(),
        204
    );
    app.post(
        "/v1/conversations",
        &app.user("first_timer"),
        json!({"type": "group", "member_ids": ["other_new"]}),
    )
    .await
    .error(401, "unauthorized");
    app.post(
        "/v1/conversations?as=first_timer",
        &s,
        json!({"type": "group", "member_ids": ["other_new"]}),
    )
    .await
    .error(403, "forbidden");
}
