//! `shardline backtest` as a user runs it, on the hand-labelled fixture in
//! `tests/fixtures/backtest` (no emulator needed).
//!
//! The figures, by hand. Candidate: `big` blocks amount >= 50,000, `velocity` reviews a
//! card's third event in an hour. Baseline: `big` reviews amount >= 80,000.
//!
//! | event | card | amount | count_1h | candidate | baseline | label |
//! |-------|------|--------|----------|-----------|----------|-------|
//! | a1    | a    | 1,000  | 1        | allow     | allow    | legit |
//! | a2    | a    | 2,000  | 2        | allow     | allow    | -     |
//! | a3    | a    | 3,000  | 3        | review    | allow    | fraud |
//! | b1    | b    | 60,000 | 1        | block     | allow    | fraud |
//! | b2    | b    | 90,000 | 2        | block     | review   | legit |
//! | c1    | c    | 500    | 1        | allow     | allow    | legit |
//! | c2    | c    | 85,000 | 2        | block     | review   | fraud |
//!
//! (plus a re-send of a3, skipped, and a broken line.) Unlabelled counts as legit:
//! candidate TP 3 (a3 b1 c2), FP 1 (b2), FN 0, TN 3: precision 0.75, recall 1, F1 6/7;
//! 4 flagged of 7 = 571.43 per 1,000, 3 blocked = 428.57. Baseline TP 1 (c2), FP 1
//! (b2), FN 2: precision 0.5, recall 1/3, F1 0.4. Rule `big` (candidate) fired on b1 b2
//! c2: precision 2/3, recall 2/3, share 3/7. Changes: allow->review 1 (a3), allow->block
//! 1 (b1), review->block 2 (b2 legit, c2 fraud).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::path::{Path, PathBuf};
use std::process::Command;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/backtest")
        .join(name)
}

fn backtest(extra: &[&str], events: &[&Path]) -> (String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_shardline"));
    cmd.arg("backtest")
        .arg("--rules")
        .arg(fixture("candidate.json"))
        .arg("--baseline")
        .arg(fixture("baseline.json"))
        .arg("--labels")
        .arg(fixture("labels.ndjson"))
        .arg("--events")
        .args(events)
        .args(extra);
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "{stderr}");
    (String::from_utf8(out.stdout).unwrap(), stderr)
}

fn json(extra: &[&str], events: &[&Path]) -> serde_json::Value {
    let mut args = vec!["--json"];
    args.extend_from_slice(extra);
    serde_json::from_str(&backtest(&args, events).0).unwrap()
}

fn close(v: &serde_json::Value, want: f64) {
    let got = v.as_f64().unwrap_or_else(|| panic!("{v} is not a number"));
    assert!((got - want).abs() < 1e-9, "{got} != {want}");
}

#[test]
fn figures_match_the_hand_count() {
    let events = fixture("events.ndjson");
    let r = json(&[], &[&events]);
    assert_eq!(r["events"], 7);
    assert_eq!(r["input"]["records"], 9);
    assert_eq!(r["input"]["duplicates"], 1);
    assert_eq!(r["input"]["poison"]["bad_json"], 1);
    assert_eq!(r["input"]["cards"], 3);
    assert_eq!(r["input"]["out_of_order"], 0, "b2 is put back in order");
    assert_eq!(r["labels"]["fraud"], 3);
    assert_eq!(r["labels"]["legit"], 3);
    assert_eq!(r["labels"]["unlabelled"], 1);
    assert_eq!(
        (r["labels_loaded"].clone(), r["labels_unmatched"].clone()),
        (7.into(), 1.into())
    );

    let c = &r["sets"][0];
    assert_eq!(c["version"], "candidate-1");
    assert_eq!(
        c["outcomes"],
        serde_json::json!({"allow": 3, "review": 1, "block": 3})
    );
    assert_eq!(
        c["confusion"],
        serde_json::json!({"true_positives": 3, "false_positives": 1, "false_negatives": 0, "true_negatives": 3})
    );
    close(&c["precision"], 0.75);
    close(&c["recall"], 1.0);
    close(&c["f1"], 6.0 / 7.0);
    close(&c["alerts_per_1000"], 4000.0 / 7.0);
    close(&c["blocks_per_1000"], 3000.0 / 7.0);
    let big = &c["rules"][0];
    assert_eq!(
        (big["id"].clone(), big["fired"].clone()),
        ("big".into(), 3.into())
    );
    close(&big["precision"], 2.0 / 3.0);
    close(&big["recall"], 2.0 / 3.0);
    close(&big["share"], 3.0 / 7.0);
    let velocity = &c["rules"][1];
    assert_eq!(velocity["fired"], 1);
    close(&velocity["f1"], 0.5);

    let b = &r["sets"][1];
    assert_eq!(
        b["outcomes"],
        serde_json::json!({"allow": 5, "review": 2, "block": 0})
    );
    close(&b["precision"], 0.5);
    close(&b["recall"], 1.0 / 3.0);
    close(&b["f1"], 0.4);

    let d = &r["diff"];
    assert_eq!(d["changed"], 4);
    let dirs: Vec<(String, String, u64, u64, u64)> = d["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["from"].as_str().unwrap().to_owned(),
                c["to"].as_str().unwrap().to_owned(),
                c["events"].as_u64().unwrap(),
                c["fraud"].as_u64().unwrap(),
                c["legit"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        dirs,
        [
            ("allow".into(), "review".into(), 1, 1, 0),
            ("allow".into(), "block".into(), 1, 1, 0),
            ("review".into(), "block".into(), 2, 1, 1),
        ]
    );
    let sample: Vec<&str> = d["sample"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(sample, ["a3", "b1", "b2", "c2"], "in event order");

    // Unlabelled left out: a2 (allowed by both) leaves the matrix, nothing else moves.
    let r = json(&["--unlabelled", "ignore"], &[&events]);
    assert_eq!(r["sets"][0]["confusion"]["true_negatives"], 2);
    close(&r["sets"][0]["precision"], 0.75);
}

#[test]
fn input_order_and_gzip_read_the_same_events() {
    let events = fixture("events.ndjson");
    // --reorder 0: b2 (10:04) after c1 (10:05) and the re-send of a3 are out of order;
    // the same decisions (each card's events are in order either way).
    let r = json(&["--reorder", "0"], &[&events]);
    assert_eq!(r["input"]["out_of_order"], 2);
    assert_eq!(r["sets"], json(&[], &[&events])["sets"]);

    let dir = std::env::temp_dir().join(format!("backtest-gz-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("2026/11/20/10")).unwrap();
    let text = std::fs::read(&events).unwrap();
    let cut = text.iter().position(|&b| b == b'\n').unwrap() + 1;
    // A Firehose-like folder: the first line plain, the rest gzip, keys in time order.
    std::fs::write(
        dir.join("2026/11/20/10/stream-1-2026-11-20-10-00-00-a"),
        &text[..cut],
    )
    .unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &text[cut..]).unwrap();
    std::fs::write(
        dir.join("2026/11/20/10/stream-1-2026-11-20-10-05-00-b.gz"),
        gz.finish().unwrap(),
    )
    .unwrap();
    let r2 = json(&[], &[&dir]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(r2["input"]["objects"], 2);
    assert_eq!(r2["input"]["records"], 9);
    assert_eq!(r2["sets"], json(&[], &[&events])["sets"]);
    assert_eq!(r2["diff"], json(&[], &[&events])["diff"]);
}

#[test]
fn the_report_is_the_same_bytes_every_run() {
    let events = fixture("events.ndjson");
    let (a, _) = backtest(&[], &[&events]);
    let (b, _) = backtest(&[], &[&events]);
    assert_eq!(a, b);
    assert!(
        a.contains("candidate against baseline: 4 event(s) change outcome"),
        "{a}"
    );
    let (a, _) = backtest(&["--json"], &[&events]);
    let (b, _) = backtest(&["--json"], &[&events]);
    assert_eq!(a, b);
}

/// Every scorer fixture, read as a Lambda event: the default rules flag exactly the
/// events the function's golden file has alerts for, with the same reasons, and the
/// records it quarantines are the invalid ones. (Against a baseline that flags
/// nothing, every flagged event is in the diff's sample.)
#[test]
fn lambda_fixtures_give_the_functions_decisions() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = root.join("events/fraud-scorer");
    let mut fixtures: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "json")
                && !p.to_string_lossy().ends_with(".expected.json")
        })
        .collect();
    fixtures.sort();
    assert!(fixtures.len() >= 5);
    for f in fixtures {
        let out = Command::new(env!("CARGO_BIN_EXE_shardline"))
            .arg("backtest")
            .arg("--rules")
            .arg(root.join("rules/fraud-default.json"))
            .arg("--baseline")
            .arg(fixture("nothing.json"))
            .args(["--reorder", "0", "--sample", "100000", "--json", "--events"])
            .arg(&f)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let golden: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(f.with_extension("expected.json")).unwrap(),
        )
        .unwrap();
        let mut want: Vec<(String, Vec<String>)> = golden["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                let id = a["alert_id"].as_str().unwrap();
                let event = id.split_once('/').unwrap().1.to_owned();
                let reasons = a["reasons"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r.as_str().unwrap().to_owned())
                    .collect();
                (event, reasons)
            })
            .collect();
        want.sort();
        let mut got: Vec<(String, Vec<String>)> = r["diff"]["sample"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let reasons = e["candidate_reasons"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r.as_str().unwrap().to_owned())
                    .collect();
                (e["event_id"].as_str().unwrap().to_owned(), reasons)
            })
            .collect();
        got.sort();
        assert_eq!(got, want, "{}", f.display());
        let poison: u64 = r["input"]["poison"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum();
        assert_eq!(
            poison as usize,
            golden["quarantined"].as_array().unwrap().len(),
            "{}",
            f.display()
        );
    }
}

#[test]
fn bad_inputs_are_clear_errors() {
    let out = Command::new(env!("CARGO_BIN_EXE_shardline"))
        .args(["backtest", "--rules"])
        .arg(fixture("candidate.json"))
        .args(["--events", "/nonexistent/traffic.ndjson"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("/nonexistent/traffic.ndjson: no such file or folder"),
        "{e}"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_shardline"))
        .args(["backtest", "--rules"])
        .arg(fixture("labels.ndjson"))
        .arg("--events")
        .arg(fixture("events.ndjson"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("labels.ndjson"));
}
