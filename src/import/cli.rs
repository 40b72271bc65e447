//! `confab import FILE`: straight into the configured database, or to a running server, with a
//! progress line (records/s, bytes, ETA) on stderr. Memory stays flat: the file is streamed.

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::io::AsyncReadExt;

use super::{Counts, Report};
use crate::storage::DynStore;
use crate::write_path::ChangeBus;

/// The file as a stream of 256 KiB chunks.
async fn chunks(
    file: &Path,
) -> anyhow::Result<(
    u64,
    impl Stream<Item = Result<Bytes, std::io::Error>> + use<>,
)> {
    let f = tokio::fs::File::open(file)
        .await
        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let size = f.metadata().await?.len();
    let stream = futures_util::stream::unfold(f, |mut f| async move {
        let mut buf = vec![0u8; 256 * 1024];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Bytes::from(buf)), f))
            }
            Err(e) => Some((Err(e), f)),
        }
    });
    Ok((size, Box::pin(stream)))
}

/// Prints a progress line at most every 250 ms.
struct Progress {
    started: Instant,
    last: Instant,
    total: u64,
}

impl Progress {
    fn new(total: u64) -> Self {
        let now = Instant::now();
        Progress {
            started: now,
            last: now - Duration::from_secs(1),
            total,
        }
    }

    fn show(&mut self, c: &Counts, force: bool) {
        if !force && self.last.elapsed() < Duration::from_millis(250) {
            return;
        }
        self.last = Instant::now();
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let records = c.users + c.conversations + c.messages;
        let rate = records as f64 / secs;
        let pct = if self.total > 0 {
            c.bytes as f64 * 100.0 / self.total as f64
        } else {
            100.0
        };
        let eta = if c.bytes > 0 {
            (self.total.saturating_sub(c.bytes)) as f64 * secs / c.bytes as f64
        } else {
            0.0
        };
        eprint!(
            "\r{records} records ({:.0}/s), {:.1}/{:.1} MB ({pct:.0}%), {} errors, ETA {eta:.0}s   ",
            rate,
            c.bytes as f64 / 1e6,
            self.total as f64 / 1e6,
            c.errors,
        );
    }
}

fn summary(c: &Counts, started: Instant) -> String {
    serde_json::json!({
        "done": true, "users": c.users, "conversations": c.conversations, "messages": c.messages,
        "errors": c.errors, "lines": c.lines, "bytes": c.bytes,
        "seconds": (started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
    })
    .to_string()
}

pub async fn to_database(
    file: &Path,
    store: &DynStore,
    batch_records: usize,
) -> anyhow::Result<String> {
    let (size, stream) = chunks(file).await?;
    let mut progress = Progress::new(size);
    let started = Instant::now();
    let bus = ChangeBus::new();
    let counts = super::run(store, &bus, batch_records, stream, |r| match r {
        Report::Error { line, error } => eprintln!("\rline {line}: {}", error),
        Report::Progress { progress: c } => progress.show(&c, false),
        Report::Done { counts, .. } => progress.show(&counts, true),
    })
    .await?;
    eprintln!();
    Ok(summary(&counts, started))
}

pub async fn to_server(file: &Path, url: &str, token: &str) -> anyhow::Result<String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (size, stream) = chunks(file).await?;
    let mut progress = Progress::new(size);
    let started = Instant::now();
    let res = reqwest::Client::new()
        .post(format!("{}/v1/import", url.trim_end_matches('/')))
        .bearer_auth(token)
        .header("content-type", "application/x-ndjson")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await?;
    if !res.status().is_success() {
        let status = res.status();
        anyhow::bail!("{status}: {}", res.text().await.unwrap_or_default());
    }
    let mut body = res.bytes_stream();
    let mut buf: Vec<u8> = Vec::new();
    let mut last = serde_json::Value::Null;
    while let Some(chunk) = body.next().await {
        buf.extend_from_slice(&chunk?);
        while let Some(i) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=i).collect();
            let v: serde_json::Value = serde_json::from_slice(&line).unwrap_or_default();
            if let Some(p) = v.get("progress") {
                let c: Counts = serde_json::from_value(p.clone()).unwrap_or_default();
                progress.show(&c, false);
            } else if v.get("line").is_some() {
                eprintln!("\rline {}: {}", v["line"], v["error"]);
            } else {
                if v.get("done") == Some(&serde_json::Value::Bool(true)) {
                    let c: Counts = serde_json::from_value(v.clone()).unwrap_or_default();
                    progress.show(&c, true);
                }
                last = v;
            }
        }
    }
    eprintln!();
    server_summary(last, started)
}

/// The last line of a server's import response as this command's summary, or the error it
/// reports: `{"done": false, "error": {...}}` when the server stopped the import (what it
/// committed before stays), nothing when the response broke off.
fn server_summary(last: serde_json::Value, started: Instant) -> anyhow::Result<String> {
    match last.get("done").and_then(serde_json::Value::as_bool) {
        Some(true) => {
            let counts: Counts = serde_json::from_value(last.clone()).unwrap_or_default();
            Ok(summary(&counts, started))
        }
        Some(false) => anyhow::bail!(
            "the server stopped the import: {} (what it committed before stays; importing the \
             file again skips it)",
            last["error"]
        ),
        None => anyhow::bail!("the server's response ended without a summary: {last}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_servers_last_line_is_the_summary_or_the_error() {
        let done = serde_json::json!({"done": true, "users": 2, "conversations": 1,
            "messages": 7, "errors": 1, "lines": 11, "bytes": 900});
        let s: serde_json::Value =
            serde_json::from_str(&server_summary(done, Instant::now()).unwrap()).unwrap();
        assert_eq!(
            (
                &s["done"],
                &s["users"],
                &s["messages"],
                &s["errors"],
                &s["bytes"]
            ),
            (
                &serde_json::json!(true),
                &serde_json::json!(2),
                &serde_json::json!(7),
                &serde_json::json!(1),
                &serde_json::json!(900)
            )
        );
        assert!(s["seconds"].is_number(), "{s}");
        // A server that does not send the extensions' counts: the contract's are kept.
        let contract_only = serde_json::json!({"done": true, "users": 1, "conversations": 2,
            "messages": 3, "errors": 0});
        let s: serde_json::Value =
            serde_json::from_str(&server_summary(contract_only, Instant::now()).unwrap()).unwrap();
        assert_eq!(
            (&s["conversations"], &s["messages"], &s["bytes"]),
            (
                &serde_json::json!(2),
                &serde_json::json!(3),
                &serde_json::json!(0)
            )
        );
        let stopped = serde_json::json!({"done": false,
            "error": {"code": "unavailable", "message": "the database is unavailable"}});
        let e = server_summary(stopped, Instant::now())
            .unwrap_err()
            .to_string();
        assert!(e.contains("the database is unavailable"), "{e}");
        let e = server_summary(serde_json::Value::Null, Instant::now())
            .unwrap_err()
            .to_string();
        assert!(e.contains("without a summary"), "{e}");
    }
}
