//! `shardline lists` as a user runs it, against the local DynamoDB: an import with bad
//! lines reports each line and writes nothing; add, show, remove and import --replace
//! change the table as they say. Needs the emulators (`make test` starts them); fails
//! with instructions when they are not up.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;
use common::emulators;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
};
use shardline_aws::lists::{DynamoListSource, LIST_KEY, VALUE_KEY};
use shardline_core::lists::ListKind;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A fresh lists table (keys as template.yaml's ListsTable; the adapter's own test
/// checks the template declares these).
async fn lists_table(ddb: &aws_sdk_dynamodb::Client, tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let name = format!("lists-cli-{tag}-{}-{nanos}", std::process::id());
    let mut req = ddb
        .create_table()
        .table_name(&name)
        .billing_mode(BillingMode::PayPerRequest);
    for (attr, kt) in [(LIST_KEY, KeyType::Hash), (VALUE_KEY, KeyType::Range)] {
        req = req
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name(attr)
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .unwrap(),
            )
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name(attr)
                    .key_type(kt)
                    .build()
                    .unwrap(),
            );
    }
    req.send().await.expect("create a lists table");
    name
}

/// Runs `shardline lists ARGS --table TABLE`.
fn lists(table: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shardline"))
        .current_dir(root())
        .arg("lists")
        .args(args)
        .args(["--table", table])
        .env("USER", "tester")
        .output()
        .expect("run shardline")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn write(dir: &Path, name: &str, body: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p.display().to_string()
}

fn work_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("shardline-lists-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[tokio::test]
async fn an_import_with_bad_lines_names_each_and_writes_nothing() {
    let sdk = emulators().await;
    let ddb = aws_sdk_dynamodb::Client::new(&sdk);
    let table = lists_table(&ddb, "bad").await;
    let dir = work_dir("bad");
    let file = write(
        &dir,
        "countries.txt",
        "# home countries\nGB\nGBR\n\nfr\n4111 1111 1111 1111\nD\n",
    );
    let out = lists(
        &table,
        &["import", &file, "--name", "home", "--kind", "country"],
    );
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains("3 invalid line(s)"), "{stderr}");
    assert!(stderr.contains("nothing written"), "{stderr}");
    for line in ["line 3: ", "line 6: ", "line 7: "] {
        assert!(stderr.contains(line), "{line} in {stderr}");
    }
    assert!(!stderr.contains("line 2:") && !stderr.contains("line 5:"));
    assert!(!stderr.contains("4111"), "a card number is never echoed");
    let scan = ddb.scan().table_name(&table).send().await.unwrap();
    assert_eq!(scan.count(), 0, "nothing written");

    // A CSV without a `value` column is refused the same way.
    let csv = write(&dir, "merchants.csv", "merchant,note\nm_1,x\n");
    let out = lists(
        &table,
        &["import", &csv, "--name", "m", "--kind", "merchant"],
    );
    assert!(!out.status.success());
    assert!(text(&out).1.contains("line 1: a CSV file needs a header"));
    let scan = ddb.scan().table_name(&table).send().await.unwrap();
    assert_eq!(scan.count(), 0, "nothing written");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn add_show_remove_and_import_replace() {
    let sdk = emulators().await;
    let ddb = aws_sdk_dynamodb::Client::new(&sdk);
    let table = lists_table(&ddb, "flow").await;
    let source = DynamoListSource::new(ddb.clone(), &table);
    let dir = work_dir("flow");

    let out = lists(
        &table,
        &[
            "add", "home", "gb", "fr", "--kind", "country", "--note", "launch",
        ],
    );
    assert!(out.status.success(), "{:?}", text(&out));
    // A bad value names itself and nothing is written.
    let out = lists(&table, &["add", "home", "DE", "GBR", "--kind", "country"]);
    assert!(!out.status.success());
    assert!(text(&out).1.contains("\"GBR\""), "{:?}", text(&out));
    // Another kind on the list is refused.
    let out = lists(&table, &["add", "home", "m_1", "--kind", "merchant"]);
    assert!(!out.status.success());
    assert!(
        text(&out).1.contains("list home holds country values"),
        "{:?}",
        text(&out)
    );

    let out = lists(&table, &["show", "home"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("list home (country): 2 value(s)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("VALUE") && stdout.contains("NOTE"),
        "{stdout}"
    );
    let rows: Vec<&str> = stdout.lines().skip(2).collect();
    assert_eq!(rows.len(), 2, "{stdout}");
    assert!(rows[0].starts_with("FR ") && rows[0].contains("tester"));
    assert!(rows[1].starts_with("GB ") && rows[1].ends_with("launch"));

    let out = lists(&table, &["remove", "home", "gb", "IT"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("1 value(s) removed"), "{stdout}");
    assert!(stdout.contains("not in list home: \"IT\""), "{stdout}");

    let csv = write(
        &dir,
        "home.csv",
        "value,note\nIT,\"added, later\"\nFR,\nit,dup\n",
    );
    let out = lists(
        &table,
        &[
            "import",
            &csv,
            "--name",
            "home",
            "--kind",
            "country",
            "--replace",
        ],
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("2 value(s) written (1 new, 1 updated), 0 removed, 1 duplicate"),
        "{stdout}"
    );
    let file = write(&dir, "home.txt", "IT\n");
    let out = lists(
        &table,
        &[
            "import",
            &file,
            "--name",
            "home",
            "--kind",
            "country",
            "--replace",
        ],
    );
    assert!(text(&out).0.contains("1 removed"), "{:?}", text(&out));
    let entries = source.entries("home").await.unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].value, "IT");
    assert_eq!(entries[0].note, None, "the plain file had no note");

    lists(&table, &["add", "risky", "7995", "--kind", "mcc"]);
    let out = lists(&table, &["show"]);
    let (stdout, _) = text(&out);
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows,
        [vec!["home", "country", "1"], vec!["risky", "mcc", "1"]],
        "{stdout}"
    );
    assert_eq!(source.kind_of("risky").await.unwrap(), Some(ListKind::Mcc));
    let _ = std::fs::remove_dir_all(&dir);
}
