//! The test harness: a real server on port 0 over a fresh database (a temporary SQLite file,
//! or a new PostgreSQL database), with one helper per kind of request.

use std::time::Duration;

use confab::app::Application;
use confab::config::Config;
use confab::storage::DynStore;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::Connection;

pub const SECRET: &str = "test-secret-0123456789";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// The PostgreSQL server tests create their databases on.
pub fn pg_admin_url() -> String {
    std::env::var("CONFAB_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A URL to a new, empty database of the given kind.
pub async fn fresh_database(db: Db) -> String {
    let name = format!("confab_t_{}", uuid::Uuid::now_v7().simple());
    match db {
        Db::Sqlite => {
            let path = std::env::temp_dir().join(format!("{name}.db"));
            format!("sqlite://{}", path.display())
        }
        Db::Postgres => fresh_postgres_database_with("").await,
    }
}

/// A URL to a new, empty PostgreSQL database created with `options` (what may follow
/// `create database NAME`, such as a template and a locale).
pub async fn fresh_postgres_database_with(options: &str) -> String {
    let name = format!("confab_t_{}", uuid::Uuid::now_v7().simple());
    let admin = pg_admin_url();
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .expect("PostgreSQL must be running for the tests (see README)");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "create database {name} {options}"
    )))
    .execute(&mut conn)
    .await
    .expect("create test database");
    let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
    format!("{base}/{name}")
}

pub fn test_config(database_url: &str) -> Config {
    let mut c = Config::from_lookup(|_| None).expect("defaults are valid");
    c.addr = "127.0.0.1:0".parse().unwrap();
    c.database_url = database_url.to_owned();
    c.import_batch = confab::import::default_batch(database_url);
    c.jwt_secret = Some(SECRET.into());
    c.rate_limit_per_user = None;
    c.rate_limit_per_ip = None;
    // Tests run side by side on one PostgreSQL (max_connections 100).
    c.db_pool_size = 6;
    c
}

pub struct TestApp {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    pub base: String,
    pub client: reqwest::Client,
    pub store: DynStore,
    pub keys: confab::auth::Keys,
    pub db: Db,
}

pub async fn spawn_app(db: Db) -> TestApp {
    let url = fresh_database(db).await;
    spawn_app_with(db, test_config(&url)).await
}

pub async fn spawn_app_with(db: Db, config: Config) -> TestApp {
    let store = confab::storage::open(&config).await.expect("open store");
    let app = Application::with_store(config, store.clone())
        .await
        .expect("build app");
    let base = format!("http://127.0.0.1:{}", app.port());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    TestApp {
        stop: Some(stop),
        server: Some(server),
        base,
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
        store,
        keys: confab::auth::Keys::new(SECRET),
        db,
    }
}

/// A response: status, headers and the body as JSON (`Null` when empty or not JSON).
pub struct Res {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Res {
    /// Asserts the status and returns the body.
    #[track_caller]
    pub fn expect(self, status: u16) -> Value {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.body);
        self.body
    }

    /// Asserts the contract's error body with this status and code; returns the `field`.
    #[track_caller]
    pub fn error(self, status: u16, code: &str) -> Option<String> {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.body);
        assert_eq!(
            self.body["error"]["code"],
            json!(code),
            "body: {}",
            self.body
        );
        assert!(
            self.body["error"]["message"].is_string(),
            "body: {}",
            self.body
        );
        self.body["error"]["field"].as_str().map(str::to_owned)
    }
}

impl TestApp {
    /// Stops the server gracefully and waits until it has stopped listening.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            server
                .await
                .expect("server task")
                .expect("server stopped cleanly");
        }
    }

    pub fn user(&self, id: &str) -> String {
        self.keys.user_token(id, Duration::from_secs(3600))
    }

    pub fn server(&self) -> String {
        self.keys.server_token(Duration::from_secs(3600))
    }

    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Res {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.expect("request");
        let status = res.status();
        let headers = res.headers().clone();
        let bytes = res.bytes().await.expect("body");
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Res {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, path: &str, token: &str) -> Res {
        self.raw(Method::GET, path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> Res {
        self.raw(Method::POST, path, Some(token), Some(body)).await
    }

    pub async fn put(&self, path: &str, token: &str, body: Value) -> Res {
        self.raw(Method::PUT, path, Some(token), Some(body)).await
    }

    pub async fn patch(&self, path: &str, token: &str, body: Value) -> Res {
        self.raw(Method::PATCH, path, Some(token), Some(body)).await
    }

    pub async fn delete(&self, path: &str, token: &str) -> Res {
        self.raw(Method::DELETE, path, Some(token), None).await
    }

    /// Upserts users `(id, name)` with the server token.
    pub async fn users(&self, users: &[(&str, &str)]) {
        let list: Vec<Value> = users
            .iter()
            .map(|(id, name)| json!({"id": id, "name": name}))
            .collect();
        self.put("/v1/users", &self.server(), json!({ "users": list }))
            .await
            .expect(200);
    }

    /// Creates a conversation as `as_user`; returns its id.
    pub async fn conversation(&self, as_user: &str, kind: &str, others: &[&str]) -> String {
        let body = self
            .post(
                "/v1/conversations",
                &self.user(as_user),
                json!({"type": kind, "member_ids": others}),
            )
            .await;
        assert!(body.status.is_success(), "create: {}", body.body);
        body.body["id"].as_str().unwrap().to_owned()
    }

    /// Sends `text` as `from`; returns the message.
    /// Streams NDJSON to `POST /v1/import` with the server token; its progress lines and the
    /// summary (the last line).
    pub async fn import_ndjson(&self, body: String) -> Vec<Value> {
        let res = self
            .client
            .post(format!("{}/v1/import", self.base))
            .bearer_auth(self.server())
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 200);
        assert_eq!(res.headers()["content-type"], "application/x-ndjson");
        res.text()
            .await
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    pub async fn send(&self, from: &str, conversation: &str, client_id: &str, text: &str) -> Value {
        self.post(
            &format!("/v1/conversations/{conversation}/messages"),
            &self.user(from),
            json!({"client_id": client_id, "text": text}),
        )
        .await
        .expect(201)
    }
}

/// Runs a scenario on both backends as two tests: `name::sqlite` and `name::postgres`.
#[macro_export]
macro_rules! both {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name($crate::helpers::Db::Sqlite).await
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$name($crate::helpers::Db::Postgres).await
                }
            }
        )*
    };
}

/// A private Redis server on a free port, so a test can stop and restart it.
pub struct Redis {
    pub port: u16,
    child: Option<std::process::Child>,
}

impl Redis {
    pub fn start_on(port: u16) -> Redis {
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server must be installed");
        Redis {
            port,
            child: Some(child),
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A free TCP port on 127.0.0.1.
/// The `confab` binary with a clean environment (only `PATH`) and `CONFAB_DATABASE_URL`.
pub fn confab_command(url: &str) -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_confab"));
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CONFAB_DATABASE_URL", url);
    c
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A private PostgreSQL server (its own data directory and port), so a test can stop it
/// abruptly without touching the shared one. Run as the `postgres` user when we are root.
pub struct PrivatePg {
    pub port: u16,
    dir: std::path::PathBuf,
}

impl PrivatePg {
    fn bin(tool: &str) -> std::path::PathBuf {
        let versions = std::fs::read_dir("/usr/lib/postgresql").expect("PostgreSQL installed");
        let mut dirs: Vec<_> = versions.flatten().map(|e| e.path()).collect();
        dirs.sort();
        dirs.last()
            .expect("a PostgreSQL version")
            .join("bin")
            .join(tool)
    }

    fn run(args: &[&str]) {
        let root = std::process::Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
        let mut cmd = if root {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]);
            c
        } else {
            std::process::Command::new(args[0])
        };
        if root {
            cmd.arg(args[0]);
        }
        let out = cmd
            .args(&args[1..])
            .current_dir("/tmp")
            .output()
            .expect("run a PostgreSQL tool");
        assert!(
            out.status.success(),
            "{args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn start_new() -> PrivatePg {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("confab-pg-{}", uuid::Uuid::now_v7().simple()));
        let initdb = Self::bin("initdb");
        Self::run(&[
            initdb.to_str().unwrap(),
            "-D",
            dir.to_str().unwrap(),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
        ]);
        let pg = PrivatePg { port, dir };
        pg.start();
        pg
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn start(&self) {
        let pg_ctl = Self::bin("pg_ctl");
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c max_connections=50",
            self.port,
            self.dir.display()
        );
        Self::run(&[
            pg_ctl.to_str().unwrap(),
            "-D",
            self.dir.to_str().unwrap(),
            "-o",
            &opts,
            "-l",
            self.dir.join("log").to_str().unwrap(),
            "-w",
            "start",
        ]);
    }

    /// `pg_ctl stop -m immediate`: no checkpoint, crash recovery at the next start.
    pub fn stop_immediate(&self) {
        let pg_ctl = Self::bin("pg_ctl");
        Self::run(&[
            pg_ctl.to_str().unwrap(),
            "-D",
            self.dir.to_str().unwrap(),
            "-m",
            "immediate",
            "-w",
            "stop",
        ]);
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let pg_ctl = Self::bin("pg_ctl");
        let _ = std::process::Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(pg_ctl)
            .args(["-D", self.dir.to_str().unwrap(), "-m", "immediate", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A `confab serve` process of the built binary, on a free port, over `database_url`.
pub struct Process {
    pub child: std::process::Child,
    pub base: String,
}

impl Process {
    pub async fn start(database_url: &str, extra: &[(&str, &str)]) -> Process {
        Self::start_on(free_port(), database_url, extra).await
    }

    /// `start` on a given port (a restarted node keeps its address).
    pub async fn start_on(port: u16, database_url: &str, extra: &[(&str, &str)]) -> Process {
        // The test's own HTTP clients need a TLS provider even for plain HTTP.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_confab"));
        cmd.arg("serve")
            .env("CONFAB_ADDR", format!("127.0.0.1:{port}"))
            .env("CONFAB_DATABASE_URL", database_url)
            .env("CONFAB_JWT_SECRET", SECRET)
            .env("CONFAB_DB_POOL_SIZE", "6")
            .env("CONFAB_RATE_LIMIT_PER_USER", "0")
            .env("CONFAB_RATE_LIMIT_PER_IP", "0")
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null());
        for (k, v) in extra {
            cmd.env(k, v);
        }
        #[allow(clippy::zombie_processes)] // `Process` kills and waits on drop.
        let child = cmd.spawn().expect("start confab");
        let base = format!("http://127.0.0.1:{port}");
        // The process needs a moment to migrate and bind: poll readiness, bounded.
        let client = reqwest::Client::new();
        for _ in 0..200 {
            if let Ok(r) = client.get(format!("{base}/readyz")).send().await
                && r.status().is_success()
            {
                return Process { child, base };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut child = child;
        let _ = child.kill();
        let _ = child.wait();
        panic!("confab serve did not become ready on {base}");
    }

    /// A `TestApp` talking to this process (with its own store handle for assertions).
    pub async fn app(&self, db: Db, database_url: &str) -> TestApp {
        let store = confab::storage::open_url(database_url, Duration::from_secs(5), 2)
            .await
            .expect("open store");
        TestApp {
            stop: None,
            server: None,
            base: self.base.clone(),
            client: reqwest::Client::new(),
            store,
            keys: confab::auth::Keys::new(SECRET),
            db,
        }
    }
}

impl Process {
    /// `kill -9`.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM (graceful shutdown) without waiting.
    pub fn terminate(&self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs raw SQL on a test database (to backdate rows, for instance).
pub async fn exec_sql(db: Db, url: &str, sql: &str) {
    match db {
        Db::Sqlite => {
            let mut c = sqlx::SqliteConnection::connect(url).await.unwrap();
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
                .execute(&mut c)
                .await
                .unwrap();
        }
        Db::Postgres => {
            let mut c = sqlx::PgConnection::connect(url).await.unwrap();
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
                .execute(&mut c)
                .await
                .unwrap();
        }
    }
}
