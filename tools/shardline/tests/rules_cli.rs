//! `shardline rules` as a user runs it, against the local DynamoDB: a file that does not
//! load is refused with the rule, line and column and nothing is published; a good file
//! is published live or in shadow, shown back, and the shadow set dropped. Needs the
//! emulators (`make test` starts them).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;
use common::emulators;

use std::path::PathBuf;
use std::process::{Command, Output};

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
};
use shardline_aws::dynamo::{CONFIG_KEY, DynamoRuleSource};
use shardline_core::ports::RuleSource;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn rules(table: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shardline"))
        .current_dir(root())
        .arg("rules")
        .args(args)
        .args(["--table", table])
        .output()
        .expect("run shardline")
}

fn out(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test]
async fn validate_publish_show_and_drop_shadow() {
    let cfg = emulators().await;
    let ddb = aws_sdk_dynamodb::Client::new(&cfg);
    let table = format!("rules-cli-{}", std::process::id());
    ddb.create_table()
        .table_name(&table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name(CONFIG_KEY)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name(CONFIG_KEY)
                .key_type(KeyType::Hash)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let dir = std::env::temp_dir().join(format!("rules-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.json");
    std::fs::write(
        &bad,
        r#"{"version":"bad","lists":{"home":"country"},"rules":[{"id":"abroad","when":"country not in @homes","score":100,"reason":"ABROAD"}]}"#,
    )
    .unwrap();
    let good = dir.join("good.json");
    std::fs::write(
        &good,
        r#"{"version":"cand-7","thresholds":{"review":100},"lists":{"home":"country"},"rules":[{"id":"abroad","when":"country not in @home","score":100,"reason":"ABROAD"}]}"#,
    )
    .unwrap();
    let src = DynamoRuleSource::new(ddb.clone(), &table);

    // Validate: the function's own loader, errors with rule, line, column and a caret.
    let v = Command::new(env!("CARGO_BIN_EXE_shardline"))
        .args(["rules", "validate"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!v.status.success());
    let e = out(&v);
    assert!(
        e.contains("rule \"abroad\", condition 1:16: unknown list @homes; declared: @home"),
        "{e}"
    );
    assert!(
        e.contains("country not in @homes\n                   ^"),
        "{e}"
    );

    // A bad file is never published.
    let p = rules(&table, &["publish", bad.to_str().unwrap()]);
    assert!(!p.status.success(), "{}", out(&p));
    assert!(src.load_rules().await.unwrap().is_none());

    // Shadow, then live.
    let p = rules(&table, &["publish", good.to_str().unwrap(), "--shadow"]);
    assert!(p.status.success(), "{}", out(&p));
    assert!(
        src.load_rules().await.unwrap().is_none(),
        "shadow is not live"
    );
    assert_eq!(
        src.load_shadow_rules().await.unwrap().unwrap().version,
        "cand-7"
    );
    let s = rules(&table, &["show", "--shadow"]);
    assert!(out(&s).contains("rule set cand-7 (sha256:"), "{}", out(&s));
    let s = rules(&table, &["show"]);
    assert!(
        out(&s).contains("nothing published: the shipped default is in force"),
        "{}",
        out(&s)
    );
    let p = rules(&table, &["publish", good.to_str().unwrap()]);
    assert!(p.status.success(), "{}", out(&p));
    assert_eq!(src.load_rules().await.unwrap().unwrap().version, "cand-7");
    let d = rules(&table, &["drop-shadow"]);
    assert!(out(&d).contains("shadow rule set removed"), "{}", out(&d));
    assert!(src.load_shadow_rules().await.unwrap().is_none());
    let d = rules(&table, &["drop-shadow"]);
    assert!(
        out(&d).contains("no shadow rule set was published"),
        "{}",
        out(&d)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
