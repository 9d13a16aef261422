//! The local emulators through the real AWS SDK: a stream and a table created and used,
//! and the SQS quarantine adapter writing real messages.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType,
};
use shardline_aws::SqsQuarantine;
use shardline_core::PoisonReason;
use shardline_core::ports::{Quarantine, QuarantineEntry};
use shardline_tests::{emulator_config, unique};

#[tokio::test]
async fn creates_a_stream_and_a_table_through_the_sdk() {
    let cfg = emulator_config().await;
    let kinesis = aws_sdk_kinesis::Client::new(&cfg);
    let stream = unique("emu-stream");
    kinesis
        .create_stream()
        .stream_name(&stream)
        .shard_count(2)
        .send()
        .await
        .expect("create stream");
    let mut active = false;
    for _ in 0..50 {
        let d = kinesis
            .describe_stream_summary()
            .stream_name(&stream)
            .send()
            .await
            .expect("describe stream");
        if d.stream_description_summary()
            .map(|s| s.stream_status().as_str())
            == Some("ACTIVE")
        {
            active = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(active, "stream never became ACTIVE");
    let put = kinesis
        .put_record()
        .stream_name(&stream)
        .partition_key("tok_card_a")
        .data(aws_sdk_kinesis::primitives::Blob::new(b"{}".to_vec()))
        .send()
        .await
        .expect("put record");
    assert!(
        put.sequence_number().len() > 20,
        "Kinesis sequence numbers are long"
    );

    let ddb = aws_sdk_dynamodb::Client::new(&cfg);
    let table = unique("emu-table");
    ddb.create_table()
        .table_name(&table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("pk")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .expect("attr"),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("pk")
                .key_type(KeyType::Hash)
                .build()
                .expect("key"),
        )
        .send()
        .await
        .expect("create table");
    ddb.put_item()
        .table_name(&table)
        .item("pk", AttributeValue::S("a".into()))
        .item("n", AttributeValue::N("1".into()))
        .send()
        .await
        .expect("put item");
    // A guarded write: the condition fails, the item is unchanged.
    let guarded = ddb
        .put_item()
        .table_name(&table)
        .item("pk", AttributeValue::S("a".into()))
        .item("n", AttributeValue::N("2".into()))
        .condition_expression("attribute_not_exists(pk)")
        .send()
        .await;
    assert!(
        guarded.is_err(),
        "condition should fail on an existing item"
    );
    let got = ddb
        .get_item()
        .table_name(&table)
        .key("pk", AttributeValue::S("a".into()))
        .send()
        .await
        .expect("get item");
    assert_eq!(
        got.item().and_then(|i| i.get("n")),
        Some(&AttributeValue::N("1".into()))
    );
}

#[tokio::test]
async fn sqs_quarantine_writes_every_entry_with_its_reason() {
    let cfg = emulator_config().await;
    let sqs = aws_sdk_sqs::Client::new(&cfg);
    let url = sqs
        .create_queue()
        .queue_name(unique("emu-quarantine"))
        .send()
        .await
        .expect("create queue")
        .queue_url()
        .expect("url")
        .to_owned();
    let entries: Vec<QuarantineEntry> = (0..23)
        .map(|i| QuarantineEntry {
            id: QuarantineEntry::id_for(
                "fraud-scorer",
                "shardId-000000000000",
                &format!("4959{i:030}"),
                0,
            ),
            function: "fraud-scorer".into(),
            shard_id: "shardId-000000000000".into(),
            sequence_number: format!("4959{i:030}"),
            sub_sequence_number: 0,
            partition_key: "tok".into(),
            arrival_ms: 0,
            reason: PoisonReason::InvalidCoordinates,
            reason_text: PoisonReason::InvalidCoordinates.to_string(),
            data_base64: String::new(),
            data_size: 0,
            data_sha256_base64: String::new(),
            data_truncated: false,
            data_redacted: false,
        })
        .collect();
    SqsQuarantine::new(sqs.clone(), &url)
        .quarantine(&entries)
        .await
        .expect("quarantine");
    let mut got = Vec::new();
    for _ in 0..20 {
        let out = sqs
            .receive_message()
            .queue_url(&url)
            .max_number_of_messages(10)
            .send()
            .await
            .expect("receive");
        if out.messages().is_empty() {
            break;
        }
        for m in out.messages() {
            let e: QuarantineEntry =
                serde_json::from_str(m.body().expect("body")).expect("entry json");
            got.push(e);
            sqs.delete_message()
                .queue_url(&url)
                .receipt_handle(m.receipt_handle().expect("handle"))
                .send()
                .await
                .expect("delete");
        }
    }
    got.sort_by(|a, b| a.sequence_number.cmp(&b.sequence_number));
    assert_eq!(got, entries);
}
