//! A real Socket.IO client for the tests: the official JS `socket.io-client`, run by Node
//! (`tests/realtime/client.mjs`), driven by JSON lines. Installs its npm packages on first use.

use std::process::Stdio;
use std::sync::Once;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(15);

fn client_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/realtime")
}

/// `npm ci` once per test run when the client's packages are missing.
fn ensure_packages() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let dir = client_dir();
        if dir.join("node_modules/socket.io-client").exists() {
            return;
        }
        let status = std::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--silent"])
            .current_dir(&dir)
            .status()
            .expect("npm must be installed for the realtime tests");
        assert!(status.success(), "npm ci in tests/realtime failed");
    });
}

pub struct SioClient {
    _child: Child,
    stdin: ChildStdin,
    lines: mpsc::UnboundedReceiver<Value>,
    /// Lines received but not yet asked for.
    backlog: Vec<Value>,
    next_id: u64,
}

impl SioClient {
    /// Connects with `auth: {token}` (no auth at all when `None`) over `transport`
    /// (`websocket`, `polling`, or `default`: no option but `auth`, as an app would).
    /// `Err` carries the `connect_error` message.
    pub async fn connect(
        base: &str,
        token: Option<&str>,
        transport: &str,
    ) -> Result<SioClient, String> {
        Self::connect_from(base, token, transport, None).await
    }

    /// `connect`, sending an `Origin` header as a browser page would.
    pub async fn connect_from(
        base: &str,
        token: Option<&str>,
        transport: &str,
        origin: Option<&str>,
    ) -> Result<SioClient, String> {
        ensure_packages();
        let mut child = Command::new("node")
            .arg(client_dir().join("client.mjs"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("node must be installed for the realtime tests");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    let _ = tx.send(v);
                }
            }
        });
        let mut c = SioClient {
            _child: child,
            stdin,
            lines,
            backlog: Vec::new(),
            next_id: 0,
        };
        let mut cmd = if transport == "default" {
            json!({"cmd": "connect", "url": base, "plain": true})
        } else {
            json!({"cmd": "connect", "url": base, "transports": [transport]})
        };
        if let Some(t) = token {
            cmd["token"] = json!(t);
        }
        if let Some(o) = origin {
            cmd["origin"] = json!(o);
        }
        if let Some(o) = origin {
            cmd["origin"] = json!(o);
        }
        c.send(cmd).await;
        let first = c
            .take(|v| v["type"] == "connected" || v["type"] == "connect_error")
            .await;
        if first["type"] == "connected" {
            Ok(c)
        } else {
            Err(first["message"].as_str().unwrap_or_default().to_owned())
        }
    }

    async fn send(&mut self, cmd: Value) {
        let mut line = cmd.to_string();
        line.push('\n');
        self.stdin
            .write_all(line.as_bytes())
            .await
            .expect("client stdin");
        self.stdin.flush().await.unwrap();
    }

    /// The first line matching `pred`, waiting up to `WAIT`.
    async fn take(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        self.try_take(&pred, WAIT)
            .await
            .expect("timed out waiting for the socket")
    }

    async fn try_take(
        &mut self,
        pred: &impl Fn(&Value) -> bool,
        within: Duration,
    ) -> Option<Value> {
        if let Some(i) = self.backlog.iter().position(pred) {
            return Some(self.backlog.remove(i));
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(v)) if pred(&v) => return Some(v),
                Ok(Some(v)) => self.backlog.push(v),
                Ok(None) | Err(_) => return None,
            }
        }
    }

    /// Emits a client event and returns its acknowledgement.
    pub async fn emit(&mut self, event: &str, data: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        self.send(json!({"cmd": "emit", "id": id, "event": event, "data": data}))
            .await;
        self.take(|v| v["type"] == "ack" && v["id"] == id).await["data"].clone()
    }

    /// Waits for the Engine.IO upgrade (long-polling to WebSocket); returns the transport.
    pub async fn upgraded(&mut self) -> String {
        let v = self.take(|v| v["type"] == "upgraded").await;
        v["transport"].as_str().unwrap_or_default().to_owned()
    }

    /// The next server event named `event` (others are kept for later).
    pub async fn event(&mut self, event: &str) -> Value {
        let v = self
            .take(|v| v["type"] == "event" && v["event"] == event)
            .await;
        v["data"].clone()
    }

    /// The next `event` whose data satisfies `pred`.
    pub async fn event_where(&mut self, event: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let v = self
            .take(|v| v["type"] == "event" && v["event"] == event && pred(&v["data"]))
            .await;
        v["data"].clone()
    }

    /// Asserts that no `event` arrives within `within`.
    pub async fn no_event(&mut self, event: &str, within: Duration) {
        let got = self
            .try_take(
                &|v: &Value| v["type"] == "event" && v["event"] == event,
                within,
            )
            .await;
        assert!(got.is_none(), "unexpected {event}: {got:?}");
    }

    /// Stops reading from the socket: the server's writes to it back up.
    pub async fn stall(&mut self) {
        self.send(json!({"cmd": "stall"})).await;
        self.take(|v| v["type"] == "stalled").await;
    }

    /// Waits for the server to close this socket; returns the client's reason.
    pub async fn closed_by_server(&mut self) -> String {
        let v = self.take(|v| v["type"] == "disconnect").await;
        v["reason"].as_str().unwrap_or_default().to_owned()
    }

    pub async fn disconnect(&mut self) {
        self.send(json!({"cmd": "disconnect"})).await;
        self.take(|v| v["type"] == "disconnect").await;
    }
}
