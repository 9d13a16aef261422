//! Fault injection (`shardline_aws::faults`) against the emulators: a lost response's
//! write lands while the caller sees an error, and throttles, 5xx and timeouts are
//! retried by the SDK's standard retry until the call succeeds, for DynamoDB, SQS and
//! Kinesis, with every injected fault counted.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType,
};
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::ShardIteratorType;
use aws_sdk_sqs::types::QueueAttributeName;
use shardline_aws::faults::{self, FaultInjector, FaultKind, FaultPlan, Service};
use shardline_aws::sdk::classify;
use shardline_core::StoreError;
use shardline_tests::{emulator_config, unique};

async fn table(ddb: &aws_sdk_dynamodb::Client) -> String {
    let name = unique("faults");
    ddb.create_table()
        .table_name(&name)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("pk")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("pk")
                .key_type(KeyType::Hash)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .expect("create table");
    name
}

async fn queue(sqs: &aws_sdk_sqs::Client) -> String {
    sqs.create_queue()
        .queue_name(unique("faults"))
        .send()
        .await
        .expect("create queue")
        .queue_url()
        .expect("queue url")
        .to_string()
}

async fn stream(kinesis: &aws_sdk_kinesis::Client) -> String {
    let name = unique("faults");
    kinesis
        .create_stream()
        .stream_name(&name)
        .shard_count(1)
        .send()
        .await
        .expect("create stream");
    for _ in 0..100 {
        let d = kinesis
            .describe_stream_summary()
            .stream_name(&name)
            .send()
            .await
            .expect("describe stream");
        if d.stream_description_summary()
            .map(|s| s.stream_status().as_str())
            == Some("ACTIVE")
        {
            return name;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("stream {name} never became ACTIVE");
}

async fn queue_depth(sqs: &aws_sdk_sqs::Client, url: &str) -> u64 {
    sqs.get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .send()
        .await
        .expect("queue attributes")
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::ApproximateNumberOfMessages))
        .expect("ApproximateNumberOfMessages")
        .parse()
        .unwrap()
}

async fn stream_records(kinesis: &aws_sdk_kinesis::Client, name: &str) -> Vec<Vec<u8>> {
    let shards = kinesis
        .list_shards()
        .stream_name(name)
        .send()
        .await
        .expect("list shards");
    let shard = shards.shards()[0].shard_id().to_string();
    let mut iterator = kinesis
        .get_shard_iterator()
        .stream_name(name)
        .shard_id(shard)
        .shard_iterator_type(ShardIteratorType::TrimHorizon)
        .send()
        .await
        .expect("shard iterator")
        .shard_iterator()
        .map(str::to_string);
    let mut out = Vec::new();
    // kinesis-local may answer an empty page before the records; a few pages suffice.
    for _ in 0..5 {
        let Some(it) = iterator else { break };
        let page = kinesis
            .get_records()
            .shard_iterator(it)
            .send()
            .await
            .expect("get records");
        out.extend(page.records().iter().map(|r| r.data().as_ref().to_vec()));
        iterator = page.next_shard_iterator().map(str::to_string);
        if page.millis_behind_latest() == Some(0) && !out.is_empty() {
            break;
        }
    }
    out
}

/// With the SDK's retries off, a lost response is the raw fault: the caller gets a
/// transient dispatch failure, yet the write is there when read back without faults.
#[tokio::test]
async fn a_lost_response_write_lands_while_the_caller_gets_an_error() {
    let clean = emulator_config().await;
    let injector = FaultInjector::new(
        "seed=3,all.lost_response=1"
            .parse::<FaultPlan>()
            .expect("plan"),
    );
    let faulty = injector
        .apply(&clean)
        .to_builder()
        .retry_config(RetryConfig::disabled())
        .build();

    // DynamoDB
    let ddb = aws_sdk_dynamodb::Client::new(&clean);
    let name = table(&ddb).await;
    let err = aws_sdk_dynamodb::Client::new(&faulty)
        .put_item()
        .table_name(&name)
        .item("pk", AttributeValue::S("lost".into()))
        .item("v", AttributeValue::N("1".into()))
        .send()
        .await
        .expect_err("the response was lost");
    assert!(
        matches!(&err, SdkError::DispatchFailure(f) if f.is_io()),
        "{err:?}"
    );
    assert!(matches!(classify(err), StoreError::Transient(_)));
    let item = ddb
        .get_item()
        .table_name(&name)
        .key("pk", AttributeValue::S("lost".into()))
        .consistent_read(true)
        .send()
        .await
        .expect("get item");
    assert_eq!(
        item.item().and_then(|i| i.get("v")),
        Some(&AttributeValue::N("1".into())),
        "the PutItem landed"
    );

    // SQS
    let sqs = aws_sdk_sqs::Client::new(&clean);
    let url = queue(&sqs).await;
    let err = aws_sdk_sqs::Client::new(&faulty)
        .send_message()
        .queue_url(&url)
        .message_body("lost")
        .send()
        .await
        .expect_err("the response was lost");
    assert!(matches!(classify(err), StoreError::Transient(_)));
    assert_eq!(queue_depth(&sqs, &url).await, 1, "the SendMessage landed");

    // Kinesis
    let kinesis = aws_sdk_kinesis::Client::new(&clean);
    let name = stream(&kinesis).await;
    let err = aws_sdk_kinesis::Client::new(&faulty)
        .put_record()
        .stream_name(&name)
        .partition_key("k")
        .data(Blob::new(b"lost".to_vec()))
        .send()
        .await
        .expect_err("the response was lost");
    assert!(matches!(classify(err), StoreError::Transient(_)));
    assert_eq!(
        stream_records(&kinesis, &name).await,
        vec![b"lost".to_vec()],
        "the PutRecord landed"
    );

    let counts = injector.counts();
    for service in Service::ALL {
        assert_eq!(counts.requests(service), 1, "{service}");
        assert_eq!(
            counts.injected(service, FaultKind::LostResponse),
            1,
            "{service}"
        );
    }
    assert_eq!(counts.total(), 3);
}

/// At moderate rates the SDK's standard retry absorbs throttles, 5xx and timeouts: every
/// call succeeds, each write lands once, and each fault cost exactly one extra attempt.
#[tokio::test]
async fn throttles_server_errors_and_timeouts_are_retried_to_success() {
    let clean = emulator_config().await;
    let process_before = faults::counts();
    let injector = FaultInjector::new(
        "seed=7,timeout_ms=20,all.throttle=0.15,all.5xx=0.1,all.timeout=0.1"
            .parse::<FaultPlan>()
            .expect("plan"),
    );
    let faulty = injector
        .apply(&clean)
        .to_builder()
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(10)
                .with_initial_backoff(Duration::from_millis(5))
                .with_max_backoff(Duration::from_millis(50)),
        )
        .build();
    const N: usize = 25;

    let ddb = aws_sdk_dynamodb::Client::new(&clean);
    let name = table(&ddb).await;
    let faulty_ddb = aws_sdk_dynamodb::Client::new(&faulty);
    for i in 0..N {
        faulty_ddb
            .put_item()
            .table_name(&name)
            .item("pk", AttributeValue::S(format!("k{i}")))
            .send()
            .await
            .expect("put item retried to success");
    }
    let scanned = ddb
        .scan()
        .table_name(&name)
        .consistent_read(true)
        .send()
        .await
        .expect("scan");
    assert_eq!(scanned.count() as usize, N);

    let sqs = aws_sdk_sqs::Client::new(&clean);
    let url = queue(&sqs).await;
    let faulty_sqs = aws_sdk_sqs::Client::new(&faulty);
    for i in 0..N {
        faulty_sqs
            .send_message()
            .queue_url(&url)
            .message_body(format!("m{i}"))
            .send()
            .await
            .expect("send message retried to success");
    }
    assert_eq!(queue_depth(&sqs, &url).await, N as u64);

    let kinesis = aws_sdk_kinesis::Client::new(&clean);
    let name = stream(&kinesis).await;
    let faulty_kinesis = aws_sdk_kinesis::Client::new(&faulty);
    for i in 0..N {
        faulty_kinesis
            .put_record()
            .stream_name(&name)
            .partition_key(format!("k{i}"))
            .data(Blob::new(format!("r{i}").into_bytes()))
            .send()
            .await
            .expect("put record retried to success");
    }
    assert_eq!(stream_records(&kinesis, &name).await.len(), N);

    let counts = injector.counts();
    for service in Service::ALL {
        let faults: u64 = [
            FaultKind::Throttle,
            FaultKind::ServerError,
            FaultKind::Timeout,
        ]
        .into_iter()
        .map(|k| counts.injected(service, k))
        .sum();
        assert!(
            faults > 0,
            "{service}: some faults at these rates:\n{counts}"
        );
        assert_eq!(
            counts.injected(service, FaultKind::LostResponse),
            0,
            "{service}"
        );
        // Every fault is one retried attempt, every success one more.
        assert_eq!(
            counts.requests(service),
            N as u64 + faults,
            "{service}:\n{counts}"
        );
    }
    for kind in [
        FaultKind::Throttle,
        FaultKind::ServerError,
        FaultKind::Timeout,
    ] {
        let total: u64 = Service::ALL
            .into_iter()
            .map(|s| counts.injected(s, kind))
            .sum();
        assert!(total > 0, "{kind} injected somewhere:\n{counts}");
    }
    let process = faults::counts().since(&process_before);
    assert!(
        process.total() >= counts.total(),
        "the process-wide counters include this injector's"
    );
}
