//! The `confab` binary: token and migrate commands, and refusal of bad configuration.

use crate::helpers::{Db, confab_command as confab, fresh_database, spawn_app_with, test_config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_command_uses_the_secret_kept_in_the_database() {
    let url = fresh_database(Db::Sqlite).await;
    // On a fresh database the first command migrates: its logs go to stderr, stdout is the token.
    let out = confab(&url).args(["token", "ann"]).output().unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert_eq!(stdout.trim().split('.').count(), 3, "{stdout}");
    let out = confab(&url).arg("migrate").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = confab(&url)
        .args(["token", "ann", "--ttl", "1h"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let server = String::from_utf8(
        confab(&url)
            .args(["token", "--server"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();

    // A server on the same database, with no secret configured, accepts both.
    let mut config = test_config(&url);
    config.jwt_secret = None;
    let app = spawn_app_with(Db::Sqlite, config).await;
    app.get("/v1/conversations", &token).await.expect(200);
    app.get("/v1/conversations?as=ann", server.trim())
        .await
        .expect(200);
    app.get("/v1/conversations", &app.user("ann"))
        .await
        .error(401, "unauthorized");
}

/// Every message updates rows of `members` and `conversations` in place: a server whose
/// autovacuum is off (as a whole, or for those tables) is named at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_without_autovacuum_is_warned_about_at_start() {
    use sqlx::Connection;
    let url = fresh_database(Db::Postgres).await;
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    let autovacuum: String = sqlx::query_scalar("select current_setting('autovacuum')")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let start = || {
        let out = confab(&url).arg("migrate").output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stderr).unwrap()
    };
    let log = start();
    assert_eq!(
        log.contains("PostgreSQL autovacuum is off: "),
        autovacuum == "off",
        "autovacuum={autovacuum}: {log}"
    );
    assert!(!log.contains("for table"), "{log}");
    // Sets a table's autovacuum_enabled, then starts again: the log, and whether it names
    // the tables.
    let mut switch = async |table: &str, value: &str| {
        let sql = format!("alter table {table} set (autovacuum_enabled = {value})");
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await
            .unwrap();
        let log = start();
        let named = |t: &str| log.contains(&format!("autovacuum is off for table {t}: "));
        (named("members"), named("conversations"), log)
    };
    let (members, conversations, log) = switch("members", "false").await;
    assert!(members && !conversations, "{log}");
    // Any spelling of false; `members` keeps its own.
    let (members, conversations, log) = switch("conversations", "off").await;
    assert!(members && conversations, "{log}");
    // Switched back on: no longer named.
    let (members, _, log) = switch("members", "on").await;
    assert!(!members, "{log}");
}

#[test]
fn bad_configuration_is_refused_naming_the_variable() {
    let out = confab("sqlite:///tmp/never.db")
        .env("CONFAB_DB_TIMEOUT", "soon")
        .arg("migrate")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("CONFAB_DB_TIMEOUT"), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    let out = confab("sqlite:///tmp/never.db")
        .args(["token", "bad id"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let out = confab("sqlite:///tmp/never.db")
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for cmd in ["serve", "migrate", "token"] {
        assert!(help.contains(cmd), "{help}");
    }
}

crate::both!(import_command_direct_and_to_a_server);

/// `confab import FILE` into the configured database, then the same file to a running server
/// with --url and --token: the second run finds everything present. Both show the progress
/// line at its end (the whole file read).
async fn import_command_direct_and_to_a_server(db: Db) {
    let url = fresh_database(db).await;
    let file = std::env::temp_dir().join(format!("confab-import-{}.ndjson", uuid::Uuid::now_v7()));
    let lines = [
        serde_json::json!({"record": "conversation", "external_id": "x1", "type": "group", "member_ids": ["ann", "bob"]}),
        serde_json::json!({"record": "message", "conversation_external_id": "x1", "external_id": "y1", "sender_id": "ann", "text": "hi", "created_at": "2022-02-02T02:02:02Z"}),
        serde_json::json!({"record": "message", "conversation_external_id": "x1", "external_id": "y2", "sender_id": "bob"}),
    ];
    std::fs::write(
        &file,
        lines
            .iter()
            .map(|l| l.to_string())
            .collect::<Vec<_>>()
            .join("\n"),
    )
    .unwrap();
    let out = confab(&url).arg("import").arg(&file).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (
            summary["conversations"].as_i64(),
            summary["messages"].as_i64(),
            summary["errors"].as_i64()
        ),
        (Some(1), Some(1), Some(1))
    );
    let progress = |out: &std::process::Output| {
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let last = stderr
            .split(['\r', '\n'])
            .rfind(|l| l.contains("records ("))
            .map(str::trim)
            .unwrap_or_default()
            .to_owned();
        (stderr, last)
    };
    let (stderr, last) = progress(&out);
    assert!(
        stderr.contains("line 3"),
        "bad lines are reported: {stderr}"
    );
    assert!(
        last.starts_with("2 records (") && last.contains("(100%), 1 errors, ETA 0s"),
        "{stderr}"
    );

    let app = spawn_app_with(db, test_config(&url)).await;
    let out = confab(&url)
        .arg("import")
        .arg(&file)
        .args(["--url", &app.base, "--token", &app.server()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["messages"], 1);
    let (stderr, last) = progress(&out);
    assert!(
        last.starts_with("2 records (") && last.contains("(100%), 1 errors, ETA 0s"),
        "the final counts through a server too: {stderr}"
    );
    let list = app
        .get("/v1/conversations", &app.user("bob"))
        .await
        .expect(200);
    assert_eq!(
        list["conversations"][0]["last_seq"], 1,
        "the second import created nothing"
    );
    let _ = std::fs::remove_file(&file);
}
