//! `shardline label` and `shardline labels` as a user runs them, against the local
//! DynamoDB and STS: labels written one at a time and imported from a file (the
//! generator's ground truth included, a relabel winning) come back out of `labels
//! export` with their verdicts, notes, who and when, and who recorded them and when (the
//! caller, whatever the file or `--by` says); a file with bad lines, however late, is
//! refused with each line named and nothing written; a card number is never stored,
//! as an event id or in a note. Needs the emulators (`make test` starts them); fails
//! with instructions when they are not up.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;
use common::emulators;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
};
use shardline::common::now_ms;
use shardline::labelfile::{LabelRecord, Verdict};
use shardline::labels::{LABEL_KEY, load_table, put_labels};
use shardline_aws::template::{Template, scalar};
use shardline_core::event::{format_rfc3339_ms, pan_safe_id};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A fresh labels table with template.yaml's LabelsTable key (checked here, so the test
/// table and the template cannot drift apart).
async fn labels_table(ddb: &aws_sdk_dynamodb::Client, tag: &str) -> String {
    let t = Template::load(root().join("template.yaml")).unwrap();
    let (_, props) = t
        .resources_of_type("AWS::DynamoDB::Table")
        .into_iter()
        .find(|(l, _)| l == "LabelsTable")
        .expect("template.yaml declares LabelsTable");
    let keys: Vec<(String, String)> = props["KeySchema"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| (scalar(&k["AttributeName"]), scalar(&k["KeyType"])))
        .collect();
    assert_eq!(keys, [(LABEL_KEY.to_owned(), "HASH".to_owned())]);

    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let name = format!("labels-cli-{tag}-{}-{nanos}", std::process::id());
    ddb.create_table()
        .table_name(&name)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name(LABEL_KEY)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name(LABEL_KEY)
                .key_type(KeyType::Hash)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .expect("create a labels table");
    name
}

/// Runs `shardline ARGS --table TABLE`.
fn shardline(table: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shardline"))
        .current_dir(root())
        .args(args)
        .args(["--table", table])
        .output()
        .expect("run shardline")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn work_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("shardline-labels-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write(dir: &Path, name: &str, body: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p.display().to_string()
}

/// The caller's identity as the emulator's STS reports it.
async fn caller_arn(sdk: &aws_config::SdkConfig) -> String {
    let id = aws_sdk_sts::Client::new(sdk)
        .get_caller_identity()
        .send()
        .await
        .expect("STS GetCallerIdentity on the emulator");
    let arn = id.arn().unwrap().to_owned();
    assert!(arn.starts_with("arn:"), "{arn}");
    arn
}

/// Parses an export: one label per line, sorted by event id.
fn parse_export(body: &str) -> Vec<LabelRecord> {
    body.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// `at` is a `labelled_at` or `recorded_at` taken between `before` and `after` (epoch ms).
fn assert_between(at: Option<&str>, before: i64, after: i64) {
    let at = at.expect("labelled_at or recorded_at");
    assert_eq!(at.len(), "2026-11-26T10:00:00.000Z".len(), "{at}");
    assert!(at.ends_with('Z'), "{at}");
    let (lo, hi) = (format_rfc3339_ms(before), format_rfc3339_ms(after));
    assert!(
        lo.as_str() <= at && at <= hi.as_str(),
        "{lo} <= {at} <= {hi}"
    );
}

#[tokio::test]
async fn labels_written_and_imported_come_back_out_of_the_export() {
    let sdk = emulators().await;
    let ddb = aws_sdk_dynamodb::Client::new(&sdk);
    let table = labels_table(&ddb, "flow").await;
    let me = caller_arn(&sdk).await;
    let dir = work_dir("flow");

    // One event, who from STS.
    let before = now_ms();
    let out = shardline(
        &table,
        &["label", "e-1", "fraud", "--note", "chargeback 4837"],
    );
    let after = now_ms();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.starts_with(&format!("event e-1 labelled fraud by {me} at ")),
        "{stdout}"
    );
    // Another, who given.
    let out = shardline(&table, &["label", "e-2", "legit", "--by", "analyst-7"]);
    assert!(out.status.success(), "{:?}", text(&out));
    let stored = load_table(&ddb, &table).await.unwrap();
    assert_eq!(stored.len(), 2);
    assert_eq!(
        (
            stored[0].event_id.as_str(),
            stored[0].label,
            stored[0].note.as_deref(),
            stored[0].labelled_by.as_deref()
        ),
        (
            "e-1",
            Verdict::Fraud,
            Some("chargeback 4837"),
            Some(me.as_str())
        )
    );
    assert_between(stored[0].labelled_at.as_deref(), before, after);
    assert_eq!(stored[0].recorded_by.as_deref(), Some(me.as_str()));
    assert_eq!(stored[0].recorded_at, stored[0].labelled_at);
    assert_eq!(
        (
            stored[1].event_id.as_str(),
            stored[1].label,
            stored[1].note.as_deref(),
            stored[1].labelled_by.as_deref()
        ),
        ("e-2", Verdict::Legit, None, Some("analyst-7"))
    );
    // --by says who labelled it; who recorded it is the caller, always.
    assert_eq!(stored[1].recorded_by.as_deref(), Some(me.as_str()));
    assert!(stored[1].recorded_at.is_some());

    // An import: a relabel of e-2 with its own who and when, a label changed by a later
    // line, the generator's ground truth (an event line and a merchant-level line, which
    // is no event label), and enough events for two BatchWriteItem requests, one of them
    // relabelled across the request boundary.
    let mut body = String::new();
    // Its recorded_by and recorded_at are not taken: the import records its own.
    body.push_str(r#"{"event_id":"e-2","label":"fraud","note":"relabelled","labelled_by":"arn:aws:iam::1:user/ana","labelled_at":"2026-11-26T10:00:00.000Z","recorded_by":"arn:aws:iam::1:user/forged","recorded_at":"2020-01-01T00:00:00.000Z"}"#);
    body.push('\n');
    body.push_str(r#"{"event_id":"e-3","label":"fraud","note":"first call"}"#);
    body.push_str("\n\n");
    body.push_str(r#"{"scenario":"card_testing","attack":"ct-1","event_id":"gt-1"}"#);
    body.push('\n');
    body.push_str(r#"{"scenario":"merchant_decline_spike","attack":"ds-1","merchant_id":"m_1"}"#);
    body.push('\n');
    for i in 0..30 {
        let label = if i % 3 == 0 { "fraud" } else { "legit" };
        body.push_str(&format!(
            "{{\"event_id\":\"bulk-{i:02}\",\"label\":\"{label}\"}}\n"
        ));
    }
    body.push_str(r#"{"event_id":"bulk-01","label":"fraud","note":"late chargeback"}"#);
    body.push('\n');
    body.push_str(r#"{"event_id":"e-3","label":"legit","note":"customer confirmed"}"#);
    body.push('\n');
    let file = write(&dir, "labels.ndjson", &body);
    let before = now_ms();
    let out = shardline(&table, &["labels", "import", &file]);
    let after = now_ms();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    // e-2, e-3, gt-1 and 30 bulk events; fraud: e-2, gt-1, bulk 0,3,...,27 (10) and
    // bulk-01.
    assert_eq!(
        stdout.trim_end(),
        format!(
            "33 label(s) written to {table} (13 fraud, 20 legit), 2 line(s) superseded by a later line for the same event"
        )
    );

    // The export, to standard output and to a file, is the table, sorted.
    let out = shardline(&table, &["labels", "export"]);
    let (exported, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let out_file = dir.join("out/labels.ndjson");
    let out = shardline(
        &table,
        &["labels", "export", "--out", out_file.to_str().unwrap()],
    );
    assert!(out.status.success(), "{:?}", text(&out));
    assert!(
        text(&out).1.contains("34 label(s) from"),
        "{:?}",
        text(&out)
    );
    assert_eq!(std::fs::read_to_string(&out_file).unwrap(), exported);
    let labels = parse_export(&exported);
    assert_eq!(labels, load_table(&ddb, &table).await.unwrap());
    // What the backtest reads: the export through the label file reader.
    assert_eq!(
        shardline::labelfile::read(exported.as_bytes(), "export").unwrap(),
        labels
    );

    let ids: Vec<&str> = labels.iter().map(|l| l.event_id.as_str()).collect();
    let mut expected_ids: Vec<String> = ["e-1", "e-2", "e-3", "gt-1"]
        .iter()
        .map(|s| (*s).to_owned())
        .chain((0..30).map(|i| format!("bulk-{i:02}")))
        .collect();
    expected_ids.sort();
    assert_eq!(ids, expected_ids);

    let by_id: BTreeMap<&str, &LabelRecord> =
        labels.iter().map(|l| (l.event_id.as_str(), l)).collect();
    // e-1 untouched by the import.
    assert_eq!(*by_id["e-1"], stored[0]);
    // Recorded by the caller at the import's time (one for the whole file), every label.
    let import_at = by_id["e-3"].recorded_at.clone();
    assert_between(import_at.as_deref(), before, after);
    // e-2 as the file said, who and when included; recorded by the caller, not as the
    // file claimed.
    assert_eq!(
        *by_id["e-2"],
        LabelRecord {
            event_id: "e-2".into(),
            label: Verdict::Fraud,
            note: Some("relabelled".into()),
            labelled_by: Some("arn:aws:iam::1:user/ana".into()),
            labelled_at: Some("2026-11-26T10:00:00.000Z".into()),
            recorded_by: Some(me.clone()),
            recorded_at: import_at.clone(),
        }
    );
    // The rest: who is the caller, when is the import's time.
    let expect = |id: &str, label: Verdict, note: Option<&str>| LabelRecord {
        event_id: id.to_owned(),
        label,
        note: note.map(str::to_owned),
        labelled_by: Some(me.clone()),
        labelled_at: import_at.clone(),
        recorded_by: Some(me.clone()),
        recorded_at: import_at.clone(),
    };
    assert_eq!(
        *by_id["e-3"],
        expect("e-3", Verdict::Legit, Some("customer confirmed"))
    );
    assert_eq!(*by_id["gt-1"], expect("gt-1", Verdict::Fraud, None));
    assert_eq!(
        *by_id["bulk-01"],
        expect("bulk-01", Verdict::Fraud, Some("late chargeback"))
    );
    for i in (0..30).filter(|i| *i != 1) {
        let id = format!("bulk-{i:02}");
        let label = if i % 3 == 0 {
            Verdict::Fraud
        } else {
            Verdict::Legit
        };
        assert_eq!(*by_id[id.as_str()], expect(&id, label, None));
    }

    // The export imports back as it is: who and when kept, nothing changed but who
    // recorded it and when (this import, by the caller).
    let again = write(&dir, "again.ndjson", &exported);
    let before = now_ms();
    let out = shardline(&table, &["labels", "import", &again]);
    let after = now_ms();
    assert!(out.status.success(), "{:?}", text(&out));
    assert!(
        text(&out).0.starts_with("34 label(s) written"),
        "{:?}",
        text(&out)
    );
    let reimported = load_table(&ddb, &table).await.unwrap();
    let again_at = reimported[0].recorded_at.clone();
    assert_between(again_at.as_deref(), before, after);
    let expected: Vec<LabelRecord> = labels
        .iter()
        .cloned()
        .map(|mut l| {
            l.recorded_by = Some(me.clone());
            l.recorded_at = again_at.clone();
            l
        })
        .collect();
    assert_eq!(reimported, expected);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn bad_input_names_each_line_and_writes_nothing() {
    let sdk = emulators().await;
    let ddb = aws_sdk_dynamodb::Client::new(&sdk);
    let table = labels_table(&ddb, "bad").await;
    let dir = work_dir("bad");
    let file = write(
        &dir,
        "bad.ndjson",
        concat!(
            r#"{"event_id":"ok-1","label":"fraud"}"#,
            "\n",
            r#"{"event_id":"x","label":"maybe"}"#,
            "\n",
            r#"{"event_id":"ok-2","label":"legit"}"#,
            "\n",
            r#"{"label":"fraud"}"#,
            "\n",
            "not json\n",
            r#"{"scenario":"card_testing","attack":"ct-1","event_id":"gt-1"}"#,
            "\n",
        ),
    );
    let out = shardline(&table, &["labels", "import", &file]);
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("3 bad label line(s), nothing taken"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{file}:2: ")) && stderr.contains("fraud or legit"),
        "{stderr}"
    );
    assert!(stderr.contains(&format!("{file}:4: ")), "{stderr}");
    assert!(stderr.contains(&format!("{file}:5: ")), "{stderr}");
    for good in [1, 3, 6] {
        assert!(!stderr.contains(&format!("{file}:{good}:")), "{stderr}");
    }
    assert_eq!(
        ddb.scan().table_name(&table).send().await.unwrap().count(),
        0,
        "nothing written"
    );

    // A bad verdict or event id on the command line is refused too.
    let out = shardline(&table, &["label", "e-1", "maybe", "--by", "t"]);
    assert!(!out.status.success());
    assert!(text(&out).1.contains("fraud or legit"), "{:?}", text(&out));
    let long = "x".repeat(129);
    let out = shardline(&table, &["label", &long, "fraud", "--by", "t"]);
    assert!(!out.status.success());
    assert!(
        text(&out).1.contains("event_id must be 1 to 128 bytes"),
        "{:?}",
        text(&out)
    );
    assert_eq!(
        ddb.scan().table_name(&table).send().await.unwrap().count(),
        0,
        "nothing written"
    );
    // An empty table exports nothing.
    let out = shardline(&table, &["labels", "export"]);
    assert!(out.status.success(), "{:?}", text(&out));
    assert_eq!(text(&out).0, "");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The raw items of `table`, as text, to look for what must not be there.
async fn raw_items(ddb: &aws_sdk_dynamodb::Client, table: &str) -> String {
    let out = ddb.scan().table_name(table).send().await.unwrap();
    format!("{:?}", out.items())
}

#[tokio::test]
async fn a_card_number_is_never_stored_as_an_event_id_or_in_a_note() {
    let sdk = emulators().await;
    let ddb = aws_sdk_dynamodb::Client::new(&sdk);
    let table = labels_table(&ddb, "pan").await;
    let dir = work_dir("pan");
    let pan = "4111111111111111";
    let out = shardline(
        &table,
        &[
            "label",
            pan,
            "fraud",
            "--note",
            "customer says 4111 1111 1111 1111 was stolen",
            "--by",
            "analyst-7",
        ],
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.starts_with(&format!(
            "event {} labelled fraud by analyst-7 at ",
            pan_safe_id(pan)
        )),
        "{stdout}"
    );
    assert!(
        !stdout.contains(pan) && !stderr.contains(pan),
        "{stdout}\n{stderr}"
    );
    let file = write(
        &dir,
        "pan.ndjson",
        concat!(
            r#"{"event_id":"5500 0000 0000 0004","label":"legit","note":"refund to 5500000000000004"}"#,
            "\n",
            r#"{"scenario":"card_testing","attack":"ct-1","event_id":"tx-4000056655665556"}"#,
            "\n",
        ),
    );
    let out = shardline(&table, &["labels", "import", &file]);
    assert!(out.status.success(), "{:?}", text(&out));

    let out = shardline(&table, &["labels", "export"]);
    let (exported, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let raw = raw_items(&ddb, &table).await;
    for digits in ["4111", "1111 1111", "5500", "0000 0000", "4000056655665556"] {
        assert!(
            !exported.contains(digits),
            "{digits} in the export: {exported}"
        );
        assert!(!raw.contains(digits), "{digits} in the table: {raw}");
    }
    let labels = parse_export(&exported);
    let by_id: BTreeMap<&str, &LabelRecord> =
        labels.iter().map(|l| (l.event_id.as_str(), l)).collect();
    // Each under the id alerts and backtests show for it.
    let card = by_id[&*pan_safe_id(pan)];
    assert_eq!(card.label, Verdict::Fraud);
    assert_eq!(
        card.note.as_deref(),
        Some("customer says [PAN redacted] was stolen")
    );
    let mc = by_id[&*pan_safe_id("5500 0000 0000 0004")];
    assert_eq!(mc.label, Verdict::Legit);
    assert_eq!(mc.note.as_deref(), Some("refund to [PAN redacted]"));
    assert_eq!(
        by_id[&*pan_safe_id("tx-4000056655665556")].label,
        Verdict::Fraud
    );
    assert_eq!(labels.len(), 3);

    // The export imports back under the same ids (no second label per event).
    let again = write(&dir, "again.ndjson", &exported);
    let out = shardline(&table, &["labels", "import", &again]);
    assert!(out.status.success(), "{:?}", text(&out));
    assert_eq!(
        ddb.scan().table_name(&table).send().await.unwrap().count(),
        3
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_file_refused_on_its_last_lines_writes_nothing() {
    let sdk = emulators().await;
    let ddb = aws_sdk_dynamodb::Client::new(&sdk);
    let table = labels_table(&ddb, "late").await;
    let dir = work_dir("late");
    // 29 good lines (more than one BatchWriteItem request), then one DynamoDB would
    // refuse or that is out of bounds.
    let good: String = (0..29)
        .map(|i| format!("{{\"event_id\":\"ok-{i:02}\",\"label\":\"fraud\"}}\n"))
        .collect();
    for (name, last, says) in [
        (
            "huge-note",
            format!(
                "{{\"event_id\":\"late\",\"label\":\"fraud\",\"note\":\"{}\"}}\n",
                "x".repeat(500 * 1024)
            ),
            "longer than",
        ),
        (
            "long-note",
            format!(
                "{{\"event_id\":\"late\",\"label\":\"fraud\",\"note\":\"{}\"}}\n",
                "x".repeat(1001)
            ),
            "note",
        ),
        (
            "long-by",
            format!(
                "{{\"event_id\":\"late\",\"label\":\"fraud\",\"labelled_by\":\"{}\"}}\n",
                "a".repeat(2049)
            ),
            "labelled_by",
        ),
        (
            "bad-at",
            "{\"event_id\":\"late\",\"label\":\"fraud\",\"labelled_at\":\"yesterday\"}\n"
                .to_owned(),
            "labelled_at",
        ),
    ] {
        let file = write(&dir, &format!("{name}.ndjson"), &format!("{good}{last}"));
        let out = shardline(&table, &["labels", "import", &file]);
        let (stdout, stderr) = text(&out);
        assert!(!out.status.success(), "{name}: {stdout}\n{stderr}");
        assert!(
            stderr.contains("1 bad label line(s), nothing taken")
                && stderr.contains(&format!("{file}:30: "))
                && stderr.contains(says),
            "{name}: {stderr}"
        );
        assert!(
            !stderr.contains(&"x".repeat(200)) && !stderr.contains(&"a".repeat(200)),
            "{name}: the line is not quoted whole"
        );
        assert_eq!(
            ddb.scan().table_name(&table).send().await.unwrap().count(),
            0,
            "{name}: nothing written"
        );
    }
    // The same bounds on the command line.
    for (args, says) in [
        (vec!["--note", &*"x".repeat(1001)], "note"),
        (vec!["--by", &*"a".repeat(2049)], "labelled_by"),
    ] {
        let mut all = vec!["label", "e-1", "fraud"];
        all.extend(args);
        let out = shardline(&table, &all);
        assert!(!out.status.success());
        assert!(text(&out).1.contains(says), "{:?}", text(&out));
    }
    assert_eq!(
        ddb.scan().table_name(&table).send().await.unwrap().count(),
        0,
        "nothing written"
    );

    // Should a write still fail midway (here an item past DynamoDB's 400 KB, which the
    // checks would have refused), the error says how many labels were written.
    let mut labels: Vec<LabelRecord> = (0..30)
        .map(|i| LabelRecord {
            event_id: format!("mid-{i:02}"),
            label: Verdict::Fraud,
            note: None,
            labelled_by: Some("t".into()),
            labelled_at: None,
            recorded_by: None,
            recorded_at: None,
        })
        .collect();
    labels[29].note = Some("x".repeat(500 * 1024));
    let e = format!("{:#}", put_labels(&ddb, &table, &labels).await.unwrap_err());
    assert!(e.contains("25 of 30 label(s) were written"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}
