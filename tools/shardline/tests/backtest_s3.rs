//! `shardline backtest --events s3://bucket/prefix` against the emulator's S3: the
//! archive a Firehose delivery stream writes (plain and gzip NDJSON objects under
//! `YYYY/MM/DD/HH/`), read in key order whatever order the objects were written in, and
//! scored exactly as the same lines from a local file. Needs the emulators (`make test`
//! starts them); fails with instructions when they are not up.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;
use common::emulators;

use std::io::Write as _;
use std::path::PathBuf;
use std::process::Command;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/backtest")
        .join(name)
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(b).unwrap();
    gz.finish().unwrap()
}

fn run(events: &str) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_shardline"))
        .arg("backtest")
        .arg("--rules")
        .arg(fixture("candidate.json"))
        .arg("--baseline")
        .arg(fixture("baseline.json"))
        .arg("--labels")
        .arg(fixture("labels.ndjson"))
        .args(["--reorder", "0", "--json", "--events", events])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test]
async fn the_firehose_archive_on_s3_reads_in_key_order() {
    let sdk = emulators().await;
    let s3 = shardline::backtest::s3_client(&sdk);
    let bucket = format!("backtest-{}", common::unique_tag());
    s3.create_bucket().bucket(&bucket).send().await.unwrap();

    let text = std::fs::read(fixture("events.ndjson")).unwrap();
    let lines: Vec<&[u8]> = text.split_inclusive(|&b| b == b'\n').collect();
    assert_eq!(lines.len(), 9);
    // Three deliveries, written newest first: a reader in write order would score b2
    // (in the second) after c2 (in the third).
    let objects = [
        (
            "archive/2026/11/20/10/shardline-input-1-2026-11-20-10-06-00-c.gz",
            gzip(&lines[6..].concat()),
        ),
        (
            "archive/2026/11/20/10/shardline-input-1-2026-11-20-10-03-00-b.gz",
            gzip(&lines[3..6].concat()),
        ),
        (
            "archive/2026/11/20/10/shardline-input-1-2026-11-20-10-00-00-a",
            lines[..3].concat(),
        ),
        // Not under the prefix: never read.
        (
            "other/2026/11/20/10/x",
            b"{\"not\":\"an event\"}\n".to_vec(),
        ),
    ];
    for (key, body) in objects {
        s3.put_object()
            .bucket(&bucket)
            .key(key)
            .body(body.into())
            .send()
            .await
            .unwrap();
    }

    let from_s3 = run(&format!("s3://{bucket}/archive/"));
    let from_file = run(fixture("events.ndjson").to_str().unwrap());
    assert_eq!(from_s3["input"]["objects"], 3);
    assert_eq!(from_s3["input"]["records"], 9);
    assert_eq!(
        from_s3["input"]["out_of_order"], 2,
        "read in key order, as the file: only b2 and the re-send of a3 are late"
    );
    assert_eq!(from_s3["input"]["poison"]["bad_json"], 1);
    assert_eq!(from_s3["sets"], from_file["sets"]);
    assert_eq!(from_s3["diff"], from_file["diff"]);
    assert_eq!(from_s3["events"], 7);

    let missing = Command::new(env!("CARGO_BIN_EXE_shardline"))
        .arg("backtest")
        .arg("--rules")
        .arg(fixture("candidate.json"))
        .args(["--events", &format!("s3://{bucket}/nothing-here/")])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("no objects under this prefix"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
}

fn shardline(args: &[&str]) -> std::process::Output {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = Command::new(env!("CARGO_BIN_EXE_shardline"))
        .current_dir(&root)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "shardline {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `--baseline live --labels-table` against a bootstrapped stage: the baseline is the
/// rule set published in the config table, with the list it names read from the lists
/// table, and the labels come from the labels table.
#[tokio::test]
async fn the_live_rules_their_lists_and_the_labels_table() {
    let sdk = emulators().await;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let stage = format!(
        "bt{}{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
            % 1_000_000
    );
    let mut t = shardline_aws::template::Template::load(root.join("template.yaml")).unwrap();
    t.set_param("Stage", &stage).unwrap();
    shardline_aws::bootstrap::bootstrap(&sdk, &mut t)
        .await
        .unwrap();
    let param = format!("Stage={stage}");

    let dir = std::env::temp_dir().join(format!("backtest-live-{stage}"));
    std::fs::create_dir_all(&dir).unwrap();
    let live = dir.join("live.json");
    std::fs::write(
        &live,
        r#"{"version":"live-7","lists":{"watched_cards":"card"},"rules":[
            {"id":"watched","when":"card in @watched_cards","action":"block","reason":"WATCHED"}]}"#,
    )
    .unwrap();
    shardline(&[
        "rules",
        "publish",
        live.to_str().unwrap(),
        "--param",
        &param,
    ]);
    shardline(&[
        "lists",
        "add",
        "watched_cards",
        "tok-b",
        "--kind",
        "card",
        "--param",
        &param,
    ]);
    shardline(&[
        "labels",
        "import",
        fixture("labels.ndjson").to_str().unwrap(),
        "--param",
        &param,
    ]);

    let out = shardline(&[
        "backtest",
        "--rules",
        fixture("candidate.json").to_str().unwrap(),
        "--baseline",
        "live",
        "--labels-table",
        "--json",
        "--events",
        fixture("events.ndjson").to_str().unwrap(),
        "--param",
        &param,
    ]);
    std::fs::remove_dir_all(&dir).unwrap();
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let b = &r["sets"][1];
    assert_eq!(b["version"], "live-7");
    // tok-b's two events (b1 fraud, b2 legit) blocked through the stored list.
    assert_eq!(
        b["outcomes"],
        serde_json::json!({"allow": 5, "review": 0, "block": 2})
    );
    assert_eq!(b["confusion"]["true_positives"], 1);
    assert_eq!(b["confusion"]["false_positives"], 1);
    assert_eq!(r["labels"]["fraud"], 3);
    assert_eq!(r["labels"]["legit"], 3);
    assert_eq!(r["labels_loaded"], 7);
}
