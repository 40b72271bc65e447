//! The benchmark tool (`confab-bench`) against a `confab serve` process: it seeds through the
//! import path, runs every `run` scenario with its same-SQL and naive ceilings, fan-out over
//! Socket.IO, the import (both paths) and the Messenger sync, and reports what it measured as
//! JSON and SVG. Small sizes and half-second
//! runs: this checks that the tool works and that its reports hold what it measured, not
//! the server's speed (BENCHMARKS.md does that).

use serde_json::Value;

use crate::both;
use crate::helpers::{Db, Process, SECRET, free_port, fresh_database};

fn bench() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_confab-bench"))
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

both!(bench_tool_seeds_runs_every_scenario_and_reports_it);

async fn bench_tool_seeds_runs_every_scenario_and_reports_it(db: Db) {
    let url = fresh_database(db).await;
    let naive = fresh_database(db).await;
    let graph = format!("127.0.0.1:{}", free_port());
    let graph_url = format!("http://{graph}/v19.0");
    let server = Process::start(&url, &[("CONFAB_GRAPH_API_URL", &graph_url)]).await;
    let token = server.app(db, &url).await.server();
    let pid = server.child.id().to_string();
    let dir = std::env::temp_dir().join(format!("confab-bench-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();

    let seeded = run(bench().args([
        "seed",
        "--url",
        &server.base,
        "--token",
        &token,
        "--users",
        "30",
        "--conversations",
        "80",
        "--messages",
        "600",
        "--heavy-user-conversations",
        "20",
    ]));
    // The import's summary: the heavy user and 30 others, nothing refused.
    let summary: Value = serde_json::from_str(seeded.lines().next().unwrap()).unwrap();
    assert_eq!(
        (
            &summary["users"],
            &summary["conversations"],
            &summary["messages"],
            &summary["errors"]
        ),
        (
            &Value::from(31),
            &Value::from(80),
            &Value::from(600),
            &Value::from(0)
        ),
        "{seeded}"
    );

    let (json, svg) = (dir.join("run.json"), dir.join("run.svg"));
    let table = run(bench().args([
        "run",
        "--url",
        &server.base,
        "--token",
        &token,
        "--sample-users",
        "30",
        "--concurrency",
        "2",
        "--duration",
        "500ms",
        "--warmup",
        "100ms",
        "--database-url",
        &naive,
        "--sql-database-url",
        &url,
        "--server-pid",
        &pid,
        "--json",
        json.to_str().unwrap(),
        "--svg",
        svg.to_str().unwrap(),
    ]));
    let report: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
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
        let (p50, p99, max) = (
            r["p50_ms"].as_f64().unwrap(),
            r["p99_ms"].as_f64().unwrap(),
            r["max_ms"].as_f64().unwrap(),
        );
        assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{r}");
        assert!(
            table.contains(name),
            "{name} missing from the table:\n{table}"
        );
    }
    // The ratios are the rows' own throughputs divided.
    let ratio = |a: &str, b: &str| {
        row(a)["ops_per_s"].as_f64().unwrap() / row(b)["ops_per_s"].as_f64().unwrap()
    };
    for (confab, sql) in [
        ("send", "send_sql"),
        ("inbox", "inbox_sql"),
        ("page", "page_sql"),
    ] {
        let r = row(confab)["confab_over_sql"].as_f64().unwrap();
        assert!((r - ratio(confab, sql)).abs() < 1e-9, "{confab}: {r}");
    }
    let r = row("send")["confab_over_naive"].as_f64().unwrap();
    assert!((r - ratio("send", "send_naive")).abs() < 1e-9, "{r}");
    // The server's CPU and memory, read from its process.
    assert!(row("send")["server_cores"].as_f64().unwrap() > 0.0);
    assert!(row("send")["server_peak_rss_mb"].as_f64().unwrap() > 1.0);
    // Every HTTP row has its three percentiles in the chart.
    let chart = std::fs::read_to_string(&svg).unwrap();
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
    let (json, svg) = (dir.join("fanout.json"), dir.join("fanout.svg"));
    run(bench().args([
        "fanout",
        "--url",
        &server.base,
        "--token",
        &token,
        "--jwt-secret",
        SECRET,
        "--connections",
        "20",
        "--group",
        "10",
        "--rate",
        "20",
        "--duration",
        "1s",
        "--server-pid",
        &pid,
        "--json",
        json.to_str().unwrap(),
        "--svg",
        svg.to_str().unwrap(),
    ]));
    let report: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let sent = report["sent"].as_u64().unwrap();
    assert!(sent > 0, "{report}");
    assert_eq!(report["send_errors"], 0, "{report}");
    assert_eq!(report["expected_deliveries"], sent * 10, "{report}");
    assert_eq!(report["deliveries"], sent * 10, "{report}");
    let chart = std::fs::read_to_string(&svg).unwrap();
    assert!(chart.contains("<title>fanout c=20 p99: "), "{chart}");

    // Import: a generated file streamed to the server, then the same file through `confab
    // import` into a database of its own.
    let file = dir.join("import.ndjson");
    let import = |via: &str, json: &std::path::Path| {
        let mut cmd = bench();
        cmd.args(["import", "--file", file.to_str().unwrap(), "--via", via])
            .args([
                "--messages",
                "2000",
                "--conversations",
                "40",
                "--users",
                "20",
            ])
            .args(["--json", json.to_str().unwrap()]);
        cmd
    };
    let json = dir.join("import-http.json");
    run(import("http", &json).args([
        "--url",
        &server.base,
        "--token",
        &token,
        "--server-pid",
        &pid,
    ]));
    let cli_db = fresh_database(db).await;
    let cli_json = dir.join("import-cli.json");
    run(import("cli", &cli_json).args([
        "--confab",
        env!("CARGO_BIN_EXE_confab"),
        "--database-url",
        &cli_db,
    ]));
    for json in [json, cli_json] {
        let report: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
        assert_eq!(report["summary"]["messages"], 2000, "{report}");
        assert_eq!(report["summary"]["conversations"], 40, "{report}");
        assert_eq!(report["summary"]["errors"], 0, "{report}");
        assert!(report["messages_per_s"].as_f64().unwrap() > 0.0, "{report}");
        assert!(report["process_cpu_s"].as_f64().unwrap() > 0.0, "{report}");
    }

    // Messenger: a page of the fixture Graph API synced by the server's job.
    let json = dir.join("messenger.json");
    run(bench().args([
        "messenger",
        "--url",
        &server.base,
        "--token",
        &token,
        "--fixture-addr",
        &graph,
        "--conversations",
        "30",
        "--messages",
        "5",
        "--json",
        json.to_str().unwrap(),
    ]));
    let report: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(report["job"]["status"], "completed", "{report}");
    assert_eq!(report["job"]["fetched"], 30, "{report}");
    assert_eq!(report["job"]["messages"], 150, "{report}");
    assert!(report["graph_requests"].as_u64().unwrap() >= 31, "{report}");
    let _ = std::fs::remove_dir_all(&dir);
}
