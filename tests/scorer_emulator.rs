//! Resources bootstrapped from template.yaml in the local emulators, then fraud-scorer
//! run on fixtures against the real DynamoDB and SQS APIs: stored profiles and alerts are
//! checked, the same batches are replayed, and nothing changes.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::collections::BTreeMap;

use aws_sdk_dynamodb::types::AttributeValue;
use fraud_scorer::Config;
use shardline_aws::bootstrap::bootstrap;
use shardline_aws::template::Template;
use shardline_core::alert::Alert;
use shardline_core::fraud::profile::CardProfile;
use shardline_testkit::{fixture_bytes, repo_root};
use shardline_tests::{emulator_config, fresh_stack, stage};

async fn scan<T: serde::de::DeserializeOwned>(
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
) -> Vec<T> {
    let out = ddb
        .scan()
        .table_name(table)
        .consistent_read(true)
        .send()
        .await
        .expect("scan");
    serde_dynamo::from_items(out.items().to_vec()).expect("items")
}

#[tokio::test]
async fn bootstrap_creates_every_template_resource_and_then_changes_nothing() {
    let cfg = emulator_config().await;
    let mut t = Template::load(repo_root().join("template.yaml")).unwrap();
    t.set_param("Stage", &stage('t')).unwrap();
    let first = bootstrap(&cfg, &mut t).await.expect("first bootstrap");
    let second = bootstrap(&cfg, &mut t).await.expect("second bootstrap");
    assert_eq!(
        second.created(),
        0,
        "second run creates nothing: {second:?}"
    );
    assert_eq!(
        first.created(),
        first.streams.len() + first.tables.len() + first.queues.len()
    );
    // Everything the template declares exists, by the names the template gives.
    let declared = |ty: &str, prop: &str| -> Vec<String> {
        let mut v: Vec<String> = t
            .resources_of_type(ty)
            .iter()
            .map(|(_, p)| p[prop].as_str().unwrap().to_owned())
            .collect();
        v.sort();
        v
    };
    let names = |l: &[(String, bool)]| -> Vec<String> {
        let mut v: Vec<String> = l.iter().map(|(n, _)| n.clone()).collect();
        v.sort();
        v
    };
    assert_eq!(
        names(&first.streams),
        declared("AWS::Kinesis::Stream", "Name")
    );
    assert_eq!(
        names(&first.tables),
        declared("AWS::DynamoDB::Table", "TableName")
    );
    assert_eq!(
        names(&first.queues),
        declared("AWS::SQS::Queue", "QueueName")
    );
    let ddb = aws_sdk_dynamodb::Client::new(&cfg);
    // Every page: the emulator holds the whole suite's tables, more than one page's 100.
    let mut tables = Vec::new();
    let mut pages = ddb.list_tables().into_paginator().send();
    while let Some(page) = pages.next().await {
        tables.extend_from_slice(page.unwrap().table_names());
    }
    for n in declared("AWS::DynamoDB::Table", "TableName") {
        assert!(tables.contains(&n), "{n} missing");
    }
    let alerts = declared("AWS::DynamoDB::Table", "TableName")
        .into_iter()
        .find(|n| n.ends_with("-alerts"))
        .unwrap();
    let d = ddb
        .describe_table()
        .table_name(&alerts)
        .send()
        .await
        .unwrap();
    let gsis: Vec<&str> = d
        .table()
        .unwrap()
        .global_secondary_indexes()
        .iter()
        .filter_map(|g| g.index_name())
        .collect();
    let mut gsis = gsis;
    gsis.sort_unstable();
    assert_eq!(gsis, ["by-card", "by-day", "by-merchant"]);
}

#[tokio::test]
async fn scorer_on_fixtures_against_dynamodb_then_replay_changes_nothing() {
    let cfg = emulator_config().await;
    let t = fresh_stack(&cfg, 't', &[]).await;
    let f = t
        .functions()
        .into_iter()
        .find(|f| f.binary == "fraud-scorer")
        .unwrap();
    // The function's config comes from the template's environment, as on Lambda.
    let config = Config::from_lookup(|k| f.environment.get(k).cloned())
        .expect("template sets the scorer's environment");
    let ddb = aws_sdk_dynamodb::Client::new(&cfg);
    let sqs = aws_sdk_sqs::Client::new(&cfg);
    // The scorer exactly as deployed (DynamoDB stores, SQS quarantine, rules from the
    // config table), on the template's resources.
    let scorer = fraud_scorer::deployed(&config, &cfg);
    let fixtures = [
        "velocity-burst",
        "card-testing",
        "impossible-travel",
        "new-country",
        "poison",
        "kpl-aggregated",
    ];
    let mut expected_alerts = 0;
    for name in fixtures {
        let report = scorer
            .handle(&fixture_bytes(&format!("fraud-scorer/{name}.json")), None)
            .await
            .expect("handle");
        assert!(
            report.response.batch_item_failures.is_empty(),
            "{name}: {:?}",
            report.outcome.failed
        );
        let golden: serde_json::Value = serde_json::from_slice(&fixture_bytes(&format!(
            "fraud-scorer/{name}.expected.json"
        )))
        .unwrap();
        assert_eq!(
            report.alerts,
            golden["alerts"].as_array().unwrap().len(),
            "{name}"
        );
        expected_alerts += report.alerts;
    }
    let profiles: Vec<CardProfile> = scan(&ddb, &config.profiles_table).await;
    let alerts: Vec<Alert> = scan(&ddb, &config.alerts_table).await;
    assert_eq!(alerts.len(), expected_alerts);
    let velocity = profiles
        .iter()
        .find(|p| p.card_token == "tok_velocity")
        .expect("velocity profile");
    assert_eq!(velocity.txn_count, 12);
    assert_eq!(velocity.version, 1, "one write for the whole batch");
    let by_card = ddb
        .query()
        .table_name(&config.alerts_table)
        .index_name("by-card")
        .key_condition_expression("card_token = :c")
        .expression_attribute_values(":c", AttributeValue::S("tok_testing".into()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        by_card.count(),
        4,
        "card-testing alerts through the by-card index (as its golden file)"
    );
    let q = sqs
        .get_queue_attributes()
        .queue_url(&config.quarantine_queue_url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
        .send()
        .await
        .unwrap();
    let depth: usize = q.attributes().unwrap()
        [&aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages]
        .parse()
        .unwrap();
    assert_eq!(depth, 6, "the poison fixture's six bad records");

    // Replay every batch: profiles and alerts stay exactly as they were.
    let snapshot = |ps: Vec<CardProfile>| {
        ps.into_iter()
            .map(|p| (p.card_token.clone(), p))
            .collect::<BTreeMap<_, _>>()
    };
    let before = (snapshot(profiles), alerts.len());
    for name in fixtures {
        let report = scorer
            .handle(&fixture_bytes(&format!("fraud-scorer/{name}.json")), None)
            .await
            .expect("replay");
        assert!(report.response.batch_item_failures.is_empty());
        assert_eq!(report.scored, 0, "{name}: a replay scores nothing");
    }
    let after = (
        snapshot(scan(&ddb, &config.profiles_table).await),
        scan::<Alert>(&ddb, &config.alerts_table).await.len(),
    );
    assert_eq!(before, after);
}

/// DynamoDB rejects a BatchWriteItem that names one key twice, so two alerts with one
/// id in a chunk would fail the chunk, and with it the card, forever: the scorer's alert
/// ids are per (card, event), and both cards' alerts land.
#[tokio::test]
async fn dynamodb_rejects_one_key_twice_in_a_batch_and_alert_ids_never_collide() {
    use aws_sdk_dynamodb::types::{PutRequest, WriteRequest};
    let sdk = emulator_config().await;
    let ddb = aws_sdk_dynamodb::Client::new(&sdk);
    let t = fresh_stack(&sdk, 'a', &[]).await;
    let table = t.physical()["AlertsTable"].reference.clone();
    let put = |id: &str| {
        WriteRequest::builder()
            .put_request(
                PutRequest::builder()
                    .item("alert_id", AttributeValue::S(id.to_owned()))
                    .build()
                    .unwrap(),
            )
            .build()
    };
    let rejected = ddb
        .batch_write_item()
        .request_items(&table, vec![put("same"), put("same")])
        .send()
        .await;
    assert!(
        rejected.is_err(),
        "the emulator accepted a BatchWriteItem with one key twice"
    );

    let f = t
        .functions()
        .into_iter()
        .find(|f| f.binary == "fraud-scorer")
        .unwrap();
    let config = Config::from_lookup(|k| f.environment.get(k).cloned()).unwrap();
    let scorer = fraud_scorer::deployed(&config, &sdk);
    let payload = two_cards_one_event_id();
    let report = scorer.handle(&payload, None).await.unwrap();
    assert!(report.response.batch_item_failures.is_empty());
    let alerts: Vec<Alert> = scan(&ddb, &table).await;
    let mut cards: Vec<String> = alerts.iter().filter_map(|a| a.card_token.clone()).collect();
    cards.sort();
    assert_eq!(cards, vec!["tok_dup_a".to_owned(), "tok_dup_b".to_owned()]);
}

/// A Kinesis event: two cards, each with an event then one 60 degrees of latitude away
/// ten minutes later (impossible travel), the second events sharing the id "shared".
fn two_cards_one_event_id() -> Vec<u8> {
    use base64::Engine as _;
    let mut records = Vec::new();
    let mut seq = 0;
    for card in ["tok_dup_a", "tok_dup_b"] {
        for (id, lat, t) in [
            (format!("first-{card}"), 0.0, "2026-11-26T12:00:00.000Z"),
            ("shared".to_owned(), 60.0, "2026-11-26T12:10:00.000Z"),
        ] {
            seq += 1;
            let data = serde_json::json!({
                "schema": "txn.v1", "event_id": id, "card_token": card, "merchant_id": "m1",
                "mcc": "5411", "amount_minor": 1000, "currency": "USD", "event_time": t,
                "location": {"lat": lat, "lon": 0.0, "country": "US"},
                "channel": "pos", "auth_result": "approved",
            })
            .to_string();
            let sn = format!("4959033827149025660855969253836157109592157598913{seq:07}");
            records.push(serde_json::json!({
                "kinesis": {"kinesisSchemaVersion": "1.0", "partitionKey": card, "sequenceNumber": sn,
                    "data": base64::engine::general_purpose::STANDARD.encode(data),
                    "approximateArrivalTimestamp": 1_795_695_000.0},
                "eventSource": "aws:kinesis", "eventVersion": "1.0",
                "eventID": format!("shardId-000000000000:{sn}"), "eventName": "aws:kinesis:record",
                "eventSourceARN": "arn:aws:kinesis:us-east-1:123456789012:stream/shardline-input",
            }));
        }
    }
    serde_json::to_vec(&serde_json::json!({ "Records": records })).unwrap()
}

/// A list change and a published rule set reach the deployed scorer within their TTLs,
/// with no redeploy: the list through the lists table (as `shardline lists add` writes
/// it), the rule set through the config table (as `shardline rules publish` writes it).
#[tokio::test]
async fn a_list_change_and_a_published_rule_set_take_effect_within_their_ttls() {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use shardline_aws::dynamo::DynamoRuleSource;
    use shardline_aws::lists::DynamoListSource;
    use shardline_core::event::{AuthResult, Channel, Location};
    use shardline_core::fraud::rules::{Outcome, RuleSet};
    use shardline_core::lists::{ListEntry, ListKind};
    use shardline_core::{InRecord, RecordMeta, RecordPos, SeqNo, Txn};

    const TTL: Duration = Duration::from_secs(3);
    let cfg = emulator_config().await;
    let t = fresh_stack(&cfg, 't', &[]).await;
    let f = t
        .functions()
        .into_iter()
        .find(|f| f.binary == "fraud-scorer")
        .unwrap();
    let mut config = Config::from_lookup(|k| f.environment.get(k).cloned()).unwrap();
    assert!(config.lists_table.ends_with("-lists"));
    config.lists_ttl = TTL;
    config.rules_ttl = TTL;
    let scorer = fraud_scorer::deployed(&config, &cfg);
    let ddb = aws_sdk_dynamodb::Client::new(&cfg);
    let event = |i: u64| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        let txn = Txn {
            card_bin: None,
            event_id: format!("list-e{i}"),
            card_token: "tok_listed".into(),
            merchant_id: format!("m{i}"),
            mcc: 5411,
            amount_minor: 1_200,
            currency: "USD".into(),
            event_time_ms: now,
            location: Location {
                lat: 51.5,
                lon: -0.1,
                country: "GB".into(),
            },
            channel: Channel::Pos,
            auth_result: AuthResult::Approved,
        };
        vec![InRecord {
            meta: RecordMeta {
                shard_id: Arc::from("shardId-000000000000"),
                pos: RecordPos::plain(
                    SeqNo::parse(&format!("4959033827149025660855969{i:031}")).unwrap(),
                ),
                partition_key: txn.card_token.clone(),
                lane_key: None,
                arrival_ms: now,
            },
            body: Ok(txn),
        }]
    };
    let decision = |id: &str| {
        let ddb = ddb.clone();
        let table = config.alerts_table.clone();
        let id = id.to_owned();
        async move {
            let out = ddb
                .get_item()
                .table_name(table)
                .key("alert_id", AttributeValue::S(id))
                .consistent_read(true)
                .send()
                .await
                .unwrap();
            out.item()
                .map(|i| serde_dynamo::from_item::<_, Alert>(i.clone()).unwrap())
        }
    };

    // Not listed: allowed, no decision record.
    let loaded = Instant::now();
    let r = scorer.handle_records(&event(1), None).await;
    assert_eq!((r.scored, r.alerts), (1, 0));
    DynamoListSource::new(ddb.clone(), &config.lists_table)
        .add(&ListEntry {
            list: "blocked_cards".into(),
            kind: ListKind::Card,
            value: "tok_listed".into(),
            added_by: "test".into(),
            added_at_ms: 0,
            note: None,
        })
        .await
        .unwrap();
    // Within the TTL the cached lists are used (checked only if the emulator answered
    // fast enough for the call to fall inside it).
    let r = scorer.handle_records(&event(2), None).await;
    if loaded.elapsed() < TTL {
        assert_eq!(r.alerts, 0, "the lists are cached for their TTL");
    }
    tokio::time::sleep(TTL.saturating_sub(loaded.elapsed()) + Duration::from_millis(100)).await;
    let r = scorer.handle_records(&event(3), None).await;
    assert_eq!((r.alerts, r.blocked), (1, 1), "listed after the TTL");
    let d = decision("tok_listed/list-e3")
        .await
        .expect("a block decision");
    assert_eq!(d.outcome, Outcome::Block);
    assert_eq!(d.reasons, vec!["BLOCKLIST_CARD"]);
    assert_eq!(d.ruleset_version, RuleSet::default_rules().version);

    // A published rule set (no lists) replaces the default within its TTL.
    let published = RuleSet::from_json(
        r#"{"version":"published-1","thresholds":{"review":1},"rules":[{"id":"gb","when":"country == 'GB' and amount_minor >= 1_000","score":10,"reason":"GB"}]}"#,
    )
    .unwrap();
    DynamoRuleSource::new(ddb.clone(), &config.config_table)
        .store(&published, false)
        .await
        .unwrap();
    tokio::time::sleep(TTL + Duration::from_millis(100)).await;
    let r = scorer.handle_records(&event(4), None).await;
    assert_eq!(r.alerts, 1);
    let d = decision("tok_listed/list-e4")
        .await
        .expect("a review decision");
    assert_eq!(
        (d.outcome, d.ruleset_version.as_str()),
        (Outcome::Review, "published-1")
    );
    assert_eq!(d.ruleset_hash, published.hash);
}
