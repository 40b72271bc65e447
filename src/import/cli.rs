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
    let mut last = String::new();
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
                last = v.to_string();
            }
        }
    }
    eprintln!();
    let _ = started;
    Ok(last)
}
