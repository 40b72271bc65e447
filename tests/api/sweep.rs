//! A non-member probing every conversation- and message-id endpoint learns nothing: the answer
//! is the same 404 as for an id that does not exist.

use reqwest::Method;
use serde_json::{Value, json};

use crate::both;
use crate::helpers::{Db, spawn_app};

both!(non_member_sweep);

async fn non_member_sweep(db: Db) {
    let app = spawn_app(db).await;
    let g = app.conversation("ann", "group", &["bob"]).await;
    let m = app.send("ann", &g, "c1", "secret text").await;
    let mid = m["id"].as_str().unwrap().to_owned();
    let eve = app.user("eve");
    let calls = |c: &str, m: &str| -> Vec<(Method, String, Option<Value>)> {
        vec![
            (Method::GET, format!("/v1/conversations/{c}"), None),
            (
                Method::GET,
                format!("/v1/conversations/{c}?messages=10"),
                None,
            ),
            (
                Method::PATCH,
                format!("/v1/conversations/{c}"),
                Some(json!({"name": "pwned"})),
            ),
            (
                Method::PUT,
                format!("/v1/conversations/{c}/tags"),
                Some(json!({"tags": ["x"]})),
            ),
            (
                Method::POST,
                format!("/v1/conversations/{c}/members"),
                Some(json!({"user_ids": ["eve"]})),
            ),
            (
                Method::DELETE,
                format!("/v1/conversations/{c}/members/bob"),
                None,
            ),
            (
                Method::DELETE,
                format!("/v1/conversations/{c}/members/eve"),
                None,
            ),
            (
                Method::POST,
                format!("/v1/conversations/{c}/messages"),
                Some(json!({"client_id": "e", "text": "hi"})),
            ),
            (Method::GET, format!("/v1/conversations/{c}/messages"), None),
            (
                Method::GET,
                format!("/v1/conversations/{c}/messages?before_seq=5"),
                None,
            ),
            (
                Method::POST,
                format!("/v1/conversations/{c}/read"),
                Some(json!({"seq": 1})),
            ),
            (
                Method::PATCH,
                format!("/v1/messages/{m}"),
                Some(json!({"text": "pwned"})),
            ),
            (Method::DELETE, format!("/v1/messages/{m}"), None),
        ]
    };
    let real = calls(&g, &mid);
    let fake = calls(
        "01a20000-0000-7000-8000-000000000000",
        "01a20000-0000-7000-8000-000000000001",
    );
    for ((method, path, body), (_, fake_path, _)) in real.into_iter().zip(fake) {
        let got = app
            .raw(method.clone(), &path, Some(&eve), body.clone())
            .await;
        let none = app.raw(method.clone(), &fake_path, Some(&eve), body).await;
        assert_eq!(got.status.as_u16(), 404, "{method} {path}: {}", got.body);
        assert_eq!(
            got.body, none.body,
            "{method} {path}: same body as a missing id"
        );
        assert!(!got.body.to_string().contains("secret"), "nothing leaked");
    }
    // Nothing changed.
    let c = app
        .get(
            &format!("/v1/conversations/{g}?messages=10"),
            &app.user("ann"),
        )
        .await
        .expect(200);
    assert_eq!(c["member_count"], 2);
    assert_eq!(c["name"], Value::Null);
    assert_eq!(c["tags"], json!([]));
    assert_eq!(c["messages"].as_array().unwrap().len(), 1);
    assert_eq!(c["messages"][0]["text"], "secret text");
    assert!(
        app.get("/v1/conversations", &eve).await.expect(200)["conversations"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(app.get("/v1/unread", &eve).await.expect(200)["total"], 0);
}
