//! The cargo-lambda path, as README.md shows it: `cargo lambda watch` serving the
//! functions on loopback with the environment `shardline bootstrap --env-dir` wrote,
//! `cargo lambda invoke --data-file events/...`, and `shardline run --invoke` driving
//! the watched function from the stream through the Lambda Invoke API.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use shardline::producer::{PutOptions, put_all};
use shardline::runner::{Clients, Mapping, RunOptions, http_invoker, run};
use shardline::traffic::{GenConfig, generate};
use shardline_testkit::repo_root;
use shardline_tests::{emulator_config, fresh_stack};

fn cargo_lambda() -> PathBuf {
    let bin = repo_root().join(".tools/venv-tools/bin/cargo-lambda");
    assert!(
        bin.exists(),
        "cargo-lambda is not installed: run `make tools` (installs it from PyPI into .tools/)"
    );
    bin
}

/// `cargo lambda watch`, stopped (its whole process group, by pid) when dropped.
struct Watch(Child);

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("--")
            .arg(format!("-{}", self.0.id()))
            .status();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cargo_lambda_watch_serves_fixtures_and_the_stream() {
    let sdk = emulator_config().await;
    let t = fresh_stack(&sdk, 'c', &[("StreamMode", "PROVISIONED")]).await;
    let f = t
        .functions()
        .into_iter()
        .find(|f| f.binary == "fraud-scorer")
        .unwrap();
    let env_file = std::env::temp_dir().join(format!("shardline-{}.env", std::process::id()));
    std::fs::write(
        &env_file,
        f.environment
            .iter()
            .map(|(k, v)| format!("{k}={v}\n"))
            .collect::<String>(),
    )
    .unwrap();

    let port = 9100 + (std::process::id() % 800) as u16;
    let tools = repo_root().join(".tools/venv-tools/bin");
    let path = format!(
        "{}:{}",
        tools.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let _watch = Watch(
        Command::new(cargo_lambda())
            .args(["lambda", "watch", "--env-file"])
            .arg(&env_file)
            .args(["-A", "127.0.0.1", "-P", &port.to_string()])
            .current_dir(repo_root())
            .env("PATH", &path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start cargo lambda watch"),
    );
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "cargo lambda watch did not listen on 127.0.0.1:{port}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // cargo lambda invoke with a fixture (the first call builds the function).
    let out = Command::new(cargo_lambda())
        .args([
            "lambda",
            "invoke",
            "fraud-scorer",
            "--data-file",
            "events/fraud-scorer/card-testing.json",
            "-A",
            "127.0.0.1",
            "-P",
            &port.to_string(),
        ])
        .current_dir(repo_root())
        .env("PATH", &path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "invoke failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let resp: Value = serde_json::from_slice(&out.stdout).expect("the response is JSON");
    assert_eq!(resp, serde_json::json!({"batchItemFailures": []}));
    let ddb = aws_sdk_dynamodb::Client::new(&sdk);
    let alerts = ddb
        .scan()
        .table_name(&f.environment["ALERTS_TABLE"])
        .send()
        .await
        .unwrap();
    let golden: Value = serde_json::from_str(
        &std::fs::read_to_string(
            repo_root().join("events/fraud-scorer/card-testing.expected.json"),
        )
        .expect("the golden file"),
    )
    .expect("JSON");
    let want = golden["alerts"].as_array().map_or(0, Vec::len);
    assert!(want > 0);
    assert_eq!(
        alerts.count() as usize,
        want,
        "the card-testing fixture's alerts, as its golden file"
    );

    // The local event source mapping driving the watched function over the Invoke API.
    let clients = Clients::new(&sdk);
    let g = generate(&GenConfig {
        events: 200,
        cards: 40,
        scenarios_each: 1,
        end_ms: shardline::common::now_ms(),
        span_ms: 10 * 60_000,
        ..GenConfig::default()
    });
    put_all(
        &clients.kinesis,
        &t.physical()["InputStream"].reference,
        &g.records,
        &PutOptions::default(),
    )
    .await
    .unwrap();
    let m = Mapping::from_template(&f, &t).unwrap();
    let stats = run(
        m,
        clients,
        http_invoker(&format!("http://127.0.0.1:{port}"), "fraud-scorer"),
        None,
        RunOptions {
            poll_interval: Duration::from_millis(100),
            ..RunOptions::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        stats.records.load(std::sync::atomic::Ordering::Relaxed) as usize,
        g.records.len()
    );
    assert_eq!(
        stats.on_failure.load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    let profiles = ddb
        .scan()
        .table_name(&f.environment["PROFILES_TABLE"])
        .send()
        .await
        .unwrap();
    let cards: std::collections::BTreeSet<&str> = g
        .distinct_events()
        .iter()
        .map(|e| e.card_token.as_str())
        .collect();
    assert_eq!(
        profiles.count() as usize,
        cards.len() + 1,
        "every card of the traffic, plus the fixture's"
    );
    let _ = std::fs::remove_file(env_file);
}
