//! The benchmark tool (`confab-bench`) against a `confab serve` process: it seeds through the
//! import path, runs every `run` scenario with its same-SQL and naive ceilings, fan-out over
//! Socket.IO, the import (both paths) and the Messenger sync, and reports what it measured as
//! JSON and SVG. Small sizes and half-second runs: this checks that the tool works and that its
//! reports hold what it measured, not the server's speed (BENCHMARKS.md does that).

use std::path::Path;

use serde_json::Value;

use crate::both;
use crate::helpers::{Db, Process, SECRET, free_port, fresh_database};

/// `confab-bench SUBCOMMAND` against `server` with `token`.
fn bench(subcommand: &str, server: &str, token: &str) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_confab-bench"));
    cmd.args([subcommand, "--url", server, "--token", token]);
    cmd
}

/// Runs `confab-bench` to success and returns its stdout.
fn run(cmd: &mut std::process::Command) -> String {
    let out = cmd.output().expect("start confab-bench");
    assert!(
        out.status.success(),
        "confab-bench failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A report the tool wrote.
fn read(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

both!(bench_tool_seeds_runs_every_scenario_and_reports_it);

async fn bench_tool_seeds_runs_every_scenario_and_reports_it(db: Db) {
    let url = fresh_database(db).await;
    let naive = fresh_database(db).await;
    let graph = format!("127.0.0.1:{}", free_port());
    let graph_url = format!("http://{graph}/v19.0");
    let server = Process::start(&url, &[("CONFAB_GRAPH_API_URL", &graph_url)]).await;
    let (base, token) = (&server.base, server.app(db, &url).await.server());
    let pid = server.child.id().to_string();
    let dir = std::env::temp_dir().join(format!("confab-bench-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = |name: &str| dir.join(name).to_str().unwrap().to_owned();

    // Messenger first, while the fixture's port, chosen before the server started, is likely
    // still free: a page of the fixture Graph API synced by the server's job.
    run(bench("messenger", base, &token)
        .args([
            "--fixture-addr",
            &graph,
            "--conversations",
            "30",
            "--messages",
            "5",
        ])
        .args(["--json", &out("messenger.json")]));
    let report = read(&dir.join("messenger.json"));
    assert_eq!(report["job"]["fetched"], 30, "{report}");
    assert_eq!(report["job"]["messages"], 150, "{report}");
    assert!(report["graph_requests"].as_u64().unwrap() >= 31, "{report}");

    let seeded = run(bench("seed", base, &token)
        .args([
            "--users",
            "30",
            "--conversations",
            "80",
            "--messages",
            "600",
        ])
        .args(["--heavy-user-conversations", "20"]));
    // The import's summary: the heavy user and 30 others, nothing refused.
    let summary: Value = serde_json::from_str(seeded.lines().next().unwrap()).unwrap();
    let counts = ["users", "conversations", "messages", "errors"].map(|k| summary[k].clone());
    assert_eq!(counts, [31, 80, 600, 0].map(Value::from), "{seeded}");

    let table = run(bench("run", base, &token)
        .args(["--sample-users", "30", "--concurrency", "2"])
        .args(["--duration", "500ms", "--warmup", "100ms"])
        .args(["--database-url", &naive, "--sql-database-url", &url])
        .args([
            "--server-pid",
            &pid,
            "--json",
            &out("run.json"),
            "--svg",
            &out("run.svg"),
        ]));
    let report = read(&dir.join("run.json"));
    let rows = report["rows"].as_array().unwrap();
    let row = |name: &str| {
        rows.iter()
            .find(|r| r["scenario"] == name)
            .unwrap_or_else(|| panic!("no {name} row in {report}"))
    };
    for name in [
        "send",
        "send_sql",
        "send_naive",
        "inbox",
        "inbox_sql",
        "inbox_heavy",
        "inbox_heavy_sql",
        "page",
        "page_sql",
        "page_before",
        "page_before_sql",
        "sync_idle",
        "create_direct",
        "healthz",
        "ping",
    ] {
        let r = row(name);
        assert_eq!(r["concurrency"], 2, "{r}");
        assert_eq!(r["errors"], 0, "{r}");
        assert!(r["ok"].as_u64().unwrap() > 0, "{r}");
        let [p50, p99, max] = ["p50_ms", "p99_ms", "max_ms"].map(|k| r[k].as_f64().unwrap());
        assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{r}");
        let line = format!("{name} ");
        assert!(
            table.lines().any(|l| l.starts_with(&line)),
            "no {name} line:\n{table}"
        );
    }
    // The ratios are the rows' own throughputs divided.
    let ops = |name: &str| row(name)["ops_per_s"].as_f64().unwrap();
    for (confab, sql) in [
        ("send", "send_sql"),
        ("inbox", "inbox_sql"),
        ("page", "page_sql"),
    ] {
        let r = row(confab)["confab_over_sql"].as_f64().unwrap();
        assert!((r - ops(confab) / ops(sql)).abs() < 1e-9, "{confab}: {r}");
    }
    let r = row("send")["confab_over_naive"].as_f64().unwrap();
    assert!((r - ops("send") / ops("send_naive")).abs() < 1e-9, "{r}");
    // The server's CPU and memory, read from its process.
    assert!(row("send")["server_cores"].as_f64().unwrap() > 0.0);
    assert!(row("send")["server_peak_rss_mb"].as_f64().unwrap() > 1.0);
    // Every HTTP row has its three percentiles in the chart.
    let chart = std::fs::read_to_string(dir.join("run.svg")).unwrap();
    assert!(chart.starts_with("<svg"), "{chart}");
    for name in ["send", "inbox_heavy", "sync_idle", "create_direct"] {
        for p in [50, 95, 99] {
            assert!(
                chart.contains(&format!("<title>{name} c=2 p{p}: ")),
                "{name} p{p}"
            );
        }
    }

    // Fan-out: every message reaches every member's connection, each latency measured.
    run(bench("fanout", base, &token)
        .args([
            "--jwt-secret",
            SECRET,
            "--connections",
            "20",
            "--group",
            "10",
        ])
        .args(["--rate", "20", "--duration", "1s", "--server-pid", &pid])
        .args(["--json", &out("fanout.json"), "--svg", &out("fanout.svg")]));
    let report = read(&dir.join("fanout.json"));
    let sent = report["sent"].as_u64().unwrap();
    assert!(sent > 0, "{report}");
    assert_eq!(report["send_errors"], 0, "{report}");
    assert_eq!(report["deliveries"], sent * 10, "{report}");
    let chart = std::fs::read_to_string(dir.join("fanout.svg")).unwrap();
    assert!(chart.contains("<title>fanout conns=20 p99: "), "{chart}");

    // Import: a generated file streamed to the server, then the same file through `confab
    // import` into a database of its own.
    let import = |via: &str, json: &str| {
        let mut cmd = bench("import", base, &token);
        cmd.args([
            "--file",
            &out("import.ndjson"),
            "--via",
            via,
            "--json",
            json,
        ])
        .args([
            "--messages",
            "2000",
            "--conversations",
            "40",
            "--users",
            "20",
        ]);
        cmd
    };
    run(import("http", &out("import-http.json")).args(["--server-pid", &pid]));
    let cli_db = fresh_database(db).await;
    run(import("cli", &out("import-cli.json")).args([
        "--confab",
        env!("CARGO_BIN_EXE_confab"),
        "--database-url",
        &cli_db,
    ]));
    for json in ["import-http.json", "import-cli.json"] {
        let report = read(&dir.join(json));
        assert_eq!(report["summary"]["messages"], 2000, "{report}");
        assert_eq!(report["summary"]["conversations"], 40, "{report}");
        assert_eq!(report["summary"]["errors"], 0, "{report}");
        assert!(report["messages_per_s"].as_f64().unwrap() > 0.0, "{report}");
        // Read from the importing process (a short one may have used no tick of CPU yet).
        assert!(report["process_cpu_s"].as_f64().is_some(), "{report}");
    }

    let _ = std::fs::remove_dir_all(&dir);
}
