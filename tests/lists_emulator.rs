//! The lists table adapter (`DynamoListSource`) against the local DynamoDB, in a table
//! created from template.yaml's ListsTable: adding, re-adding, removing, the kind guard,
//! every list's size, and the scorer's load: kinds filtered, more than one page of
//! Query results, and the bound on a list's size.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType,
};
use shardline_aws::lists::{DynamoListSource, KIND_ATTR, LIST_KEY, ListError, VALUE_KEY};
use shardline_aws::template::{Template, scalar};
use shardline_core::StoreError;
use shardline_core::lists::{ListEntry, ListKind};
use shardline_core::ports::ListSource;
use shardline_testkit::repo_root;
use shardline_tests::{emulator_config, unique};

/// A fresh table with template.yaml's ListsTable keys.
async fn lists_table(ddb: &aws_sdk_dynamodb::Client) -> String {
    let t = Template::load(repo_root().join("template.yaml")).unwrap();
    let (_, props) = t
        .resources_of_type("AWS::DynamoDB::Table")
        .into_iter()
        .find(|(l, _)| l == "ListsTable")
        .expect("template.yaml declares ListsTable");
    let name = unique("lists");
    let mut req = ddb
        .create_table()
        .table_name(&name)
        .billing_mode(BillingMode::PayPerRequest);
    for a in props["AttributeDefinitions"].as_array().unwrap() {
        assert_eq!(scalar(&a["AttributeType"]), "S");
        req = req.attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name(scalar(&a["AttributeName"]))
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap(),
        );
    }
    for k in props["KeySchema"].as_array().unwrap() {
        let kt = if scalar(&k["KeyType"]) == "RANGE" {
            KeyType::Range
        } else {
            KeyType::Hash
        };
        req = req.key_schema(
            KeySchemaElement::builder()
                .attribute_name(scalar(&k["AttributeName"]))
                .key_type(kt)
                .build()
                .unwrap(),
        );
    }
    req.send().await.expect("create the lists table");
    name
}

fn entry(list: &str, kind: ListKind, value: &str, by: &str, note: Option<&str>) -> ListEntry {
    ListEntry {
        list: list.into(),
        kind,
        value: value.into(),
        added_by: by.into(),
        added_at_ms: 1_700_000_000_000,
        note: note.map(str::to_owned),
    }
}

/// An item written around the CLI (by hand, or by an older tool).
async fn raw_item(
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
    list: &str,
    value: &str,
    kind: &str,
) {
    ddb.put_item()
        .table_name(table)
        .item(LIST_KEY, AttributeValue::S(list.into()))
        .item(VALUE_KEY, AttributeValue::S(value.into()))
        .item(KIND_ATTR, AttributeValue::S(kind.into()))
        .item("added_by", AttributeValue::S("hand".into()))
        .item("added_at_ms", AttributeValue::N("0".into()))
        .send()
        .await
        .unwrap();
}

#[tokio::test]
async fn add_readd_remove_and_the_kind_guard() {
    let cfg = emulator_config().await;
    let ddb = aws_sdk_dynamodb::Client::new(&cfg);
    let table = lists_table(&ddb).await;
    let lists = DynamoListSource::new(ddb.clone(), &table);

    lists
        .add(&entry("home", ListKind::Country, "GB", "ann", None))
        .await
        .unwrap();
    lists
        .add(&entry("home", ListKind::Country, "FR", "ann", None))
        .await
        .unwrap();
    // Re-adding overwrites who, when and the note.
    let mut again = entry("home", ListKind::Country, "GB", "bob", Some("ticket 7"));
    again.added_at_ms += 5;
    lists.add(&again).await.unwrap();
    let got = lists.entries("home").await.unwrap();
    assert_eq!(
        got.iter().map(|e| e.value.as_str()).collect::<Vec<_>>(),
        ["FR", "GB"],
        "sorted by value"
    );
    assert_eq!(got[1], again);

    // Another kind on the same list is refused, and nothing is written.
    let err = lists
        .add(&entry("home", ListKind::Merchant, "m_1", "ann", None))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ListError::KindMismatch {
                held: ListKind::Country,
                asked: ListKind::Merchant,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("list home holds country values"));
    // So is a value that is not normalised, or not of the kind.
    for bad in ["gb", "GBR"] {
        assert!(matches!(
            lists
                .add(&entry("home", ListKind::Country, bad, "ann", None))
                .await,
            Err(ListError::InvalidValue { .. })
        ));
    }
    assert_eq!(lists.entries("home").await.unwrap().len(), 2);
    assert_eq!(
        lists.kind_of("home").await.unwrap(),
        Some(ListKind::Country)
    );
    assert_eq!(lists.kind_of("nowhere").await.unwrap(), None);

    lists
        .add(&entry("risky_mcc", ListKind::Mcc, "7995", "ann", None))
        .await
        .unwrap();
    assert_eq!(
        lists.list_names().await.unwrap(),
        [
            ("home".to_owned(), ListKind::Country, 2),
            ("risky_mcc".to_owned(), ListKind::Mcc, 1)
        ]
    );

    assert!(lists.remove("home", "GB").await.unwrap(), "it was there");
    assert!(!lists.remove("home", "GB").await.unwrap(), "not any more");
    assert!(!lists.remove("nowhere", "GB").await.unwrap());
    assert_eq!(
        lists
            .entries("home")
            .await
            .unwrap()
            .iter()
            .map(|e| e.value.as_str())
            .collect::<Vec<_>>(),
        ["FR"]
    );
}

#[tokio::test]
async fn load_lists_keeps_the_kind_asked_for_across_pages_and_bounds_a_list() {
    let cfg = emulator_config().await;
    let ddb = aws_sdk_dynamodb::Client::new(&cfg);
    let table = lists_table(&ddb).await;
    let lists = DynamoListSource::new(ddb.clone(), &table);

    // 1,500 merchants of about 700 bytes each with their notes: more than the 1 MB a
    // Query returns per page.
    let pad = "x".repeat(200);
    let note = "n".repeat(450);
    let merchants: Vec<ListEntry> = (0..1_500)
        .map(|i| {
            entry(
                "blocked_merchants",
                ListKind::Merchant,
                &format!("m_{i:05}_{pad}"),
                "import",
                Some(&note),
            )
        })
        .collect();
    lists.put_entries(&merchants).await.unwrap();
    let first_page = ddb
        .query()
        .table_name(&table)
        .key_condition_expression("#l = :l")
        .expression_attribute_names("#l", LIST_KEY)
        .expression_attribute_values(":l", AttributeValue::S("blocked_merchants".into()))
        .send()
        .await
        .unwrap();
    assert!(
        first_page.last_evaluated_key().is_some() && first_page.items().len() < 1_500,
        "the list should take more than one page ({} items on the first)",
        first_page.items().len()
    );
    // Entries of another kind, or of no known kind, written around the CLI.
    raw_item(&ddb, &table, "blocked_merchants", "GB", "country").await;
    raw_item(&ddb, &table, "blocked_merchants", "zz", "colour").await;
    lists
        .add(&entry("home", ListKind::Country, "GB", "ann", None))
        .await
        .unwrap();

    let ask = [
        ("blocked_merchants".to_owned(), ListKind::Merchant),
        ("home".to_owned(), ListKind::Country),
        ("nothing_here".to_owned(), ListKind::Bin),
    ];
    let loaded = lists.load_lists(&ask).await.unwrap();
    let merchants_loaded = loaded.get("blocked_merchants", ListKind::Merchant).unwrap();
    assert_eq!(
        merchants_loaded.len(),
        1_500,
        "every page, other kinds skipped"
    );
    assert!(merchants_loaded.contains(&format!("m_01499_{pad}")));
    assert!(!merchants_loaded.contains("GB"));
    assert!(
        loaded
            .get("home", ListKind::Country)
            .unwrap()
            .contains("GB")
    );
    assert!(
        loaded
            .get("nothing_here", ListKind::Bin)
            .unwrap()
            .is_empty(),
        "absent: empty"
    );
    assert_eq!(loaded.names().count(), 3);

    // Asked with the kind of the stray item: that item alone.
    let as_country = lists
        .load_lists(&[("blocked_merchants".to_owned(), ListKind::Country)])
        .await
        .unwrap();
    assert_eq!(
        as_country
            .get("blocked_merchants", ListKind::Country)
            .unwrap()
            .sorted(),
        ["GB"]
    );

    // A list past the bound is an error naming it, not a partial list.
    let bounded = DynamoListSource::new(ddb.clone(), &table).with_max_values(1_000);
    let err = bounded.load_lists(&ask).await.unwrap_err();
    assert!(matches!(err, StoreError::Fatal(_)), "{err}");
    assert!(err.to_string().contains("blocked_merchants"), "{err}");

    // An import's --replace: the values not in the new file go.
    let stale: Vec<String> = merchants[..1_490].iter().map(|e| e.value.clone()).collect();
    lists
        .remove_values("blocked_merchants", &stale)
        .await
        .unwrap();
    let left = lists.entries("blocked_merchants").await;
    // The stray "colour" item is not a list entry: entries() says so, naming it.
    let err = left.unwrap_err();
    assert!(
        matches!(&err, ListError::BadItem { value, .. } if value == "zz"),
        "{err}"
    );
    lists.remove("blocked_merchants", "zz").await.unwrap();
    let left = lists.entries("blocked_merchants").await.unwrap();
    assert_eq!(left.len(), 11, "10 merchants and the stray country");
}
