//! The Messenger source against a fake Graph API: paging, rate limits, an invalid token,
//! idempotent re-runs, SSE progress, and a restart in the middle of a job.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{Value, json};

use crate::both;
use crate::graph::{Fake, PAGE, TOKEN};
use crate::helpers::{Db, Process, TestApp, fresh_database, spawn_app_with, test_config};

both!(
    sync_pages_conversations_and_messages,
    invalid_token_fails_the_job,
    restart_resumes_the_job
);

async fn app(db: Db, graph: &str) -> TestApp {
    let url = fresh_database(db).await;
    let mut config = test_config(&url);
    config.graph_api_url = graph.to_owned();
    spawn_app_with(db, config).await
}

async fn start(app: &TestApp, token: &str) -> String {
    let res = app
        .post(
            "/v1/sources/messenger/sync",
            &app.server(),
            json!({"page_id": PAGE, "access_token": token}),
        )
        .await
        .expect(202);
    res["job_id"].as_str().unwrap().to_owned()
}

/// Reads the job's SSE stream to its end; returns every event's data.
async fn events(app: &TestApp, job: &str) -> Vec<Value> {
    let mut res = app
        .client
        .get(format!("{}/v1/jobs/{job}/events", app.base))
        .bearer_auth(app.server())
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while let Ok(Some(chunk)) = tokio::time::timeout_at(deadline, res.chunk())
        .await
        .expect("SSE ended in time")
    {
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    text.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

async fn sync_pages_conversations_and_messages(db: Db) {
    let (fake, graph) = Fake::start(260, 3).await;
    // Each of Graph's rate-limit codes once, then its temporary errors: all retried.
    fake.rate_limits.store(4, Ordering::SeqCst);
    fake.temporary.store(2, Ordering::SeqCst);
    let app = app(db, &graph).await;
    // Users already there (made through the API, or renamed on Facebook since the last sync)
    // take the names and kinds Messenger gives.
    app.put(
        "/v1/users",
        &app.server(),
        json!({"users": [{"id": PAGE, "name": "Old page name"},
            {"id": "9000000", "name": "Old customer name", "custom": {"crm": 7}}]}),
    )
    .await
    .expect(200);
    let started = std::time::Instant::now();
    let job = start(&app, TOKEN).await;
    let ev = events(&app, &job).await;
    let last = ev.last().unwrap();
    assert_eq!(last["status"], "completed", "{ev:?}");
    assert_eq!(
        (
            last["fetched"].as_i64(),
            last["upserted"].as_i64(),
            last["messages"].as_i64()
        ),
        (Some(260), Some(260), Some(780))
    );
    assert!(
        ev.len() >= 2,
        "the current state first, then progress: {ev:?}"
    );
    assert_eq!(
        (
            fake.rate_limits.load(Ordering::SeqCst),
            fake.temporary.load(Ordering::SeqCst)
        ),
        (0, 0),
        "every error was answered, and the job still read everything"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    let j = app
        .get(&format!("/v1/jobs/{job}"), &app.server())
        .await
        .expect(200);
    assert_eq!(j["status"], "completed");
    assert_eq!(j["kind"], "messenger");
    assert!(j.get("error").is_none());

    // One direct conversation per customer, the page a user of kind page.
    let page = app.user(PAGE);
    let list = app
        .get("/v1/conversations?limit=100&include_total=true", &page)
        .await
        .expect(200);
    assert_eq!(list["total"], 260);
    let c = &list["conversations"][0];
    assert_eq!(c["type"], "direct");
    assert!(
        c["external_id"]
            .as_str()
            .unwrap()
            .starts_with(&format!("messenger:{PAGE}:"))
    );
    assert_eq!(c["unread_count"], 0, "imported history counts as read");
    let customer = c["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["user_id"] != PAGE)
        .unwrap();
    assert_eq!(customer["user"]["kind"], "customer");
    assert!(
        customer["user"]["name"]
            .as_str()
            .unwrap()
            .starts_with("Customer ")
    );
    let me = c["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["user_id"] == PAGE)
        .unwrap();
    assert_eq!(me["user"]["kind"], "page");
    assert_eq!(me["user"]["name"], "Salt Academy");
    let renamed = app.get("/v1/users/9000000", &page).await.expect(200);
    assert_eq!(
        (&renamed["name"], &renamed["kind"], &renamed["custom"]),
        (&json!("Customer 0"), &json!("customer"), &json!({"crm": 7})),
        "name and kind from Messenger, the rest as it was"
    );
    let id = c["id"].as_str().unwrap();
    let msgs = app
        .get(&format!("/v1/conversations/{id}/messages"), &page)
        .await
        .expect(200);
    let seqs: Vec<i64> = msgs["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, [1, 2, 3]);
    let thread = c["custom"]["messenger_thread_id"].as_str().unwrap();
    let customer_id = customer["user_id"].as_str().unwrap();
    let shown: Vec<Value> = msgs["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| json!([m["type"], m["sender_id"], m["text"]]))
        .collect();
    assert_eq!(
        shown,
        [
            json!(["regular", customer_id, format!("message 0 of {thread}")]),
            json!(["regular", PAGE, format!("message 1 of {thread}")]),
            // A photo without text: a regular message with the photo as its attachment.
            json!(["regular", customer_id, null]),
        ],
        "oldest first by created_time"
    );
    assert_eq!(
        msgs["messages"][0]["created_at"],
        "2023-11-14T22:13:20.000Z"
    );
    assert_eq!(
        msgs["messages"][2]["attachments"],
        json!([{
            "key": format!("messenger:att_{thread}_2"), "file_name": "photo_2.jpg",
            "size": 20480, "mime_type": "image/jpeg", "thumbnail_key": null,
            "url": format!("https://scontent.example/{thread}/2.jpg"),
            "thumbnail_url": format!("https://scontent.example/{thread}/2_s.jpg"),
        }])
    );

    // A re-run reads everything again and writes nothing.
    let again = start(&app, TOKEN).await;
    let ev = events(&app, &again).await;
    let last = ev.last().unwrap();
    assert_eq!(last["status"], "completed");
    assert_eq!(
        (last["fetched"].as_i64(), last["upserted"].as_i64()),
        (Some(260), Some(0))
    );
    let list = app
        .get("/v1/conversations?limit=1&include_total=true", &page)
        .await
        .expect(200);
    assert_eq!(list["total"], 260);
    let msgs = app
        .get(&format!("/v1/conversations/{id}/messages"), &page)
        .await
        .expect(200);
    assert_eq!(msgs["messages"].as_array().unwrap().len(), 3);

    // Message pages are followed.
    let (fake2, graph2) = Fake::start(2, 150).await;
    let app2 = self::app(db, &graph2).await;
    let job = start(&app2, TOKEN).await;
    assert_eq!(events(&app2, &job).await.last().unwrap()["messages"], 300);
    assert_eq!(fake2.served.lock().unwrap().get("t_0"), Some(&2));
    // A sticker is an attachment; a message with no content a system message, which has no
    // sender (Graph's is kept in `custom`).
    let list = app2
        .get("/v1/conversations", &app2.user(PAGE))
        .await
        .expect(200);
    let t0 = list["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["custom"]["messenger_thread_id"] == "t_0")
        .unwrap();
    let first = app2
        .get(
            &format!(
                "/v1/conversations/{}/messages?after_seq=0&limit=10",
                t0["id"].as_str().unwrap()
            ),
            &app2.user(PAGE),
        )
        .await
        .expect(200);
    let sticker = &first["messages"][3];
    assert_eq!(
        (&sticker["type"], &sticker["sender_id"], &sticker["text"]),
        (&json!("regular"), &json!(PAGE), &json!(null)),
        "{first}"
    );
    assert_eq!(
        sticker["attachments"],
        json!([{"key": "messenger:sticker:m_t_0_3", "file_name": null, "size": null,
            "mime_type": null, "thumbnail_key": null,
            "url": "https://scontent.example/sticker/3.png", "sticker": true}])
    );
    let empty = &first["messages"][9];
    assert_eq!(
        json!([
            empty["type"],
            empty["sender_id"],
            empty["text"],
            empty["custom"]
        ]),
        json!(["system", null, null, {"messenger_sender_id": PAGE}]),
        "{first}"
    );
    // Validation and auth.
    app.post(
        "/v1/sources/messenger/sync",
        &app.server(),
        json!({"page_id": "", "access_token": "x"}),
    )
    .await
    .error(400, "validation_failed");
    app.post(
        "/v1/sources/messenger/sync",
        &page,
        json!({"page_id": PAGE, "access_token": "x"}),
    )
    .await
    .error(403, "forbidden");
    app.get("/v1/jobs/nope", &app.server())
        .await
        .error(404, "not_found");
    drop(fake);
}

async fn invalid_token_fails_the_job(db: Db) {
    let (_fake, graph) = Fake::start(10, 1).await;
    let app = app(db, &graph).await;
    let job = start(&app, "expired-token").await;
    let ev = events(&app, &job).await;
    let last = ev.last().unwrap();
    assert_eq!(last["status"], "failed");
    assert_eq!(last["error"]["code"], 190);
    assert_eq!(
        last["error"]["message"],
        "Error validating access token: Session has expired."
    );
    let j = app
        .get(&format!("/v1/jobs/{job}"), &app.server())
        .await
        .expect(200);
    assert_eq!(j["error"]["code"], 190);
}

async fn restart_resumes_the_job(db: Db) {
    let (fake, graph) = Fake::start(250, 2).await;
    fake.delay_ms.store(15, Ordering::SeqCst);
    let url = fresh_database(db).await;
    let env = [
        ("CONFAB_GRAPH_API_URL", graph.as_str()),
        ("CONFAB_JOB_LEASE", "1s"),
    ];
    let mut first = Process::start(&url, &env).await;
    let app = first.app(db, &url).await;
    let job = start(&app, TOKEN).await;
    // Wait for the first checkpoint, then kill -9.
    for _ in 0..400 {
        let j = app
            .get(&format!("/v1/jobs/{job}"), &app.server())
            .await
            .expect(200);
        if j["fetched"].as_i64().unwrap_or(0) >= 100 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    let before = fake.requests.load(Ordering::SeqCst);
    fake.delay_ms.store(0, Ordering::SeqCst);
    let second = Process::start(&url, &env).await;
    let app2 = second.app(db, &url).await;
    let ev = events(&app2, &job).await;
    let last = ev.last().unwrap();
    assert_eq!(last["status"], "completed", "{ev:?}");
    assert!(last["fetched"].as_i64().unwrap() >= 250);
    let list = app2
        .get(
            "/v1/conversations?limit=1&include_total=true",
            &app2.user(PAGE),
        )
        .await
        .expect(200);
    assert_eq!(list["total"], 250, "every conversation once");
    // Resumed from the checkpoint, not from the start: fewer than all 250 threads re-read.
    let after = fake.requests.load(Ordering::SeqCst) - before;
    assert!(after < 250 + 3, "{after} requests after the restart");
}

/// A Graph (or a proxy before it) whose `next` points at the same page again fails the job
/// with a message saying so, instead of fetching that page for ever: for a conversation's
/// messages and for the page's conversations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graph_that_repeats_its_cursor_fails_the_job() {
    for (threads, per, said) in [
        (2, 150, "same next page twice"),
        (150, 1, "same conversations cursor twice"),
    ] {
        let (fake, graph) = Fake::start(threads, per).await;
        fake.stuck.store(true, Ordering::SeqCst);
        let app = app(Db::Sqlite, &graph).await;
        let job = start(&app, TOKEN).await;
        let ev = events(&app, &job).await;
        let last = ev.last().unwrap();
        assert_eq!(last["status"], "failed", "{ev:?}");
        assert_eq!(last["error"]["code"], -1);
        assert!(
            last["error"]["message"].as_str().unwrap().contains(said),
            "{last}"
        );
        assert!(
            fake.requests.load(Ordering::SeqCst) < 250,
            "stopped at the repeat"
        );
    }
}
