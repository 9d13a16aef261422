//! Bootstrapping a stage a second time, in an account with more tables than one
//! ListTables page (100) names, finds the stage's tables wherever they sort and leaves
//! them be. Needs the emulators (`make test` starts them).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;
use common::emulators;

use std::path::PathBuf;

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
};
use shardline_aws::template::Template;

#[tokio::test]
async fn a_second_bootstrap_finds_tables_past_the_first_list_page() {
    let sdk = emulators().await;
    let ddb = aws_sdk_dynamodb::Client::new(&sdk);
    let tag = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
    );
    // 101 tables that sort before the stage's (`shardline-...`): the stage's tables
    // are past the first page of ListTables.
    let fillers: Vec<String> = (0..101).map(|i| format!("aaa-{tag}-{i:03}")).collect();
    for name in &fillers {
        ddb.create_table()
            .table_name(name)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name("k")
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .unwrap(),
            )
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name("k")
                    .key_type(KeyType::Hash)
                    .build()
                    .unwrap(),
            )
            .send()
            .await
            .unwrap();
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let stage = format!("many{}", tag.replace('-', ""));
    let load = || {
        let mut t = Template::load(root.join("template.yaml")).unwrap();
        t.set_param("Stage", &stage).unwrap();
        t
    };
    let first = shardline_aws::bootstrap::bootstrap(&sdk, &mut load()).await;
    let second = shardline_aws::bootstrap::bootstrap(&sdk, &mut load()).await;
    for name in &fillers {
        let _ = ddb.delete_table().table_name(name).send().await;
    }
    let first = first.unwrap();
    assert!(
        first.tables.iter().all(|(_, created)| *created),
        "{first:?}"
    );
    let second = second.expect("the second bootstrap of a stage succeeds");
    assert!(
        second.tables.iter().all(|(_, created)| !*created),
        "every table exists already: {second:?}"
    );
}
