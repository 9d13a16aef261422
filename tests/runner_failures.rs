//! The local event source mapping's failure handling, with a function that fails on a
//! chosen record: retry from a reported sequence number, bisection of a failing batch,
//! and the OnFailure destination receiving the record after MaximumRetryAttempts.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use shardline::producer::{PutOptions, put_all};
use shardline::runner::{Clients, InvokeFuture, Invoker, Mapping, RunOptions, run};
use shardline::traffic::GenRecord;
use shardline_aws::template::Template;
use shardline_tests::{emulator_config, fresh_stack};

type Calls = Arc<Mutex<Vec<Vec<String>>>>;

/// A function that records each invocation's sequence numbers and answers with `answer`.
fn function(
    calls: Calls,
    answer: impl Fn(&[String]) -> Result<Value, String> + Send + Sync + 'static,
) -> Invoker {
    let answer = Arc::new(answer);
    Arc::new(move |payload: Vec<u8>| -> InvokeFuture {
        let (calls, answer) = (calls.clone(), answer.clone());
        Box::pin(async move {
            let ev: Value = serde_json::from_slice(&payload).unwrap();
            let seqs: Vec<String> = ev["Records"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["kinesis"]["sequenceNumber"].as_str().unwrap().to_owned())
                .collect();
            calls.lock().unwrap().push(seqs.clone());
            answer(&seqs)
        })
    })
}

async fn setup(n: usize) -> (Template, Clients, Mapping, Vec<String>, String) {
    let sdk = emulator_config().await;
    let t = fresh_stack(&sdk, 'r', &[("StreamMode", "PROVISIONED")]).await;
    let clients = Clients::new(&sdk);
    let stream = t.physical()["InputStream"].reference.clone();
    // One partition key: every record on one shard, in order.
    let recs: Vec<GenRecord> = (0..n)
        .map(|i| GenRecord {
            partition_key: "tok_one".into(),
            data: format!("{{\"n\":{i}}}").into_bytes(),
            txn: None,
            duplicate: false,
        })
        .collect();
    put_all(&clients.kinesis, &stream, &recs, &PutOptions::default())
        .await
        .unwrap();
    let f = t
        .functions()
        .into_iter()
        .find(|f| f.binary == "fraud-scorer")
        .unwrap();
    let mut m = Mapping::from_template(&f, &t).unwrap();
    m.batch_size = n;
    m.parallelization = 1;
    // The sequence numbers, in order, read back from the stream.
    let mut seqs = Vec::new();
    for s in clients
        .kinesis
        .list_shards()
        .stream_name(&stream)
        .send()
        .await
        .unwrap()
        .shards()
    {
        let it = clients
            .kinesis
            .get_shard_iterator()
            .stream_name(&stream)
            .shard_id(s.shard_id())
            .shard_iterator_type(aws_sdk_kinesis::types::ShardIteratorType::TrimHorizon)
            .send()
            .await
            .unwrap();
        let got = clients
            .kinesis
            .get_records()
            .shard_iterator(it.shard_iterator().unwrap())
            .send()
            .await
            .unwrap();
        seqs.extend(got.records().iter().map(|r| r.sequence_number().to_owned()));
    }
    assert_eq!(seqs.len(), n);
    let on_failure = t.physical()["OnFailureQueue"].reference.clone();
    (t, clients, m, seqs, on_failure)
}

fn opts() -> RunOptions {
    RunOptions {
        poll_interval: Duration::from_millis(50),
        idle_polls: 2,
        ..RunOptions::default()
    }
}

#[tokio::test]
async fn a_reported_failure_is_retried_from_its_sequence_number() {
    let (_t, clients, m, seqs, on_failure) = setup(12).await;
    let calls: Calls = Arc::default();
    let bad = seqs[7].clone();
    let failed_once = Arc::new(Mutex::new(false));
    let invoker = function(calls.clone(), move |batch| {
        let mut f = failed_once.lock().unwrap();
        if !*f && batch.contains(&bad) {
            *f = true;
            return Ok(json!({"batchItemFailures": [{"itemIdentifier": bad}]}));
        }
        Ok(json!({"batchItemFailures": []}))
    });
    run(m, clients, invoker, Some(on_failure), opts())
        .await
        .unwrap();
    let calls = calls.lock().unwrap();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0], seqs);
    assert_eq!(
        calls[1],
        seqs[7..].to_vec(),
        "the retry starts at the reported record"
    );
}

#[tokio::test]
async fn a_failing_record_is_isolated_by_bisection_then_sent_to_on_failure() {
    let (_t, clients, mut m, seqs, on_failure) = setup(16).await;
    m.max_retry_attempts = 2;
    assert!(m.bisect, "the template turns BisectBatchOnFunctionError on");
    let calls: Calls = Arc::default();
    let bad = seqs[5].clone();
    let bad2 = bad.clone();
    let invoker = function(calls.clone(), move |batch| {
        if batch.contains(&bad2) {
            Err("boom".into())
        } else {
            Ok(json!({"batchItemFailures": []}))
        }
    });
    let stats = run(
        m,
        clients.clone(),
        invoker,
        Some(on_failure.clone()),
        opts(),
    )
    .await
    .unwrap();
    let calls = calls.lock().unwrap().clone();
    // Halving: 16 -> 8 -> 4 -> 2 -> 1, then the lone record twice more (the retries).
    let sizes: Vec<usize> = calls
        .iter()
        .filter(|c| c.contains(&bad))
        .map(Vec::len)
        .collect();
    assert_eq!(sizes, vec![16, 8, 4, 2, 1, 1, 1]);
    // Every other record was delivered in a batch that succeeded.
    for s in seqs.iter().filter(|s| **s != bad) {
        assert!(
            calls.iter().any(|c| c.contains(s) && !c.contains(&bad)),
            "{s} never succeeded"
        );
    }
    assert_eq!(
        stats.on_failure.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    let out = clients
        .sqs
        .receive_message()
        .queue_url(&on_failure)
        .max_number_of_messages(10)
        .send()
        .await
        .unwrap();
    assert_eq!(out.messages().len(), 1);
    let rec: Value = serde_json::from_str(out.messages()[0].body().unwrap()).unwrap();
    assert_eq!(rec["requestContext"]["condition"], "RetryAttemptsExhausted");
    assert_eq!(rec["KinesisBatchInfo"]["startSequenceNumber"], json!(bad));
    assert_eq!(rec["KinesisBatchInfo"]["endSequenceNumber"], json!(bad));
    assert_eq!(rec["KinesisBatchInfo"]["batchSize"], 1);
}

/// One invocation as a tumbling-window function saw it: sequence numbers, the state it
/// was given, and whether it was the window's final invoke.
type WindowCall = (Vec<String>, Value, bool);

#[tokio::test]
async fn a_tumbling_window_retry_starts_at_the_reported_record_with_the_returned_state() {
    let (_t, clients, mut m, seqs, on_failure) = setup(10).await;
    // A window of a day: every record (put within seconds) arrives in the same one.
    m.tumbling_window = Some(86_400);
    let calls: Arc<Mutex<Vec<WindowCall>>> = Arc::default();
    let bad = seqs[4].clone();
    let (calls2, bad2) = (calls.clone(), bad.clone());
    let invoker: Invoker = Arc::new(move |payload: Vec<u8>| -> InvokeFuture {
        let (calls, bad) = (calls2.clone(), bad2.clone());
        Box::pin(async move {
            let ev: Value = serde_json::from_slice(&payload).unwrap();
            let got: Vec<String> = ev["Records"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["kinesis"]["sequenceNumber"].as_str().unwrap().to_owned())
                .collect();
            let mut calls = calls.lock().unwrap();
            let first = calls.is_empty();
            calls.push((
                got,
                ev["state"].clone(),
                ev["isFinalInvokeForWindow"] == json!(true),
            ));
            if first {
                // The records before `bad` are in this state; `bad` and later are not.
                return Ok(
                    json!({"state": {"upto": "3"}, "batchItemFailures": [{"itemIdentifier": bad}]}),
                );
            }
            Ok(json!({"state": {"upto": "9"}, "batchItemFailures": []}))
        })
    });
    run(m, clients, invoker, Some(on_failure), opts())
        .await
        .unwrap();
    let calls = calls.lock().unwrap().clone();
    assert_eq!(
        calls,
        vec![
            (seqs.clone(), json!({}), false),
            (seqs[4..].to_vec(), json!({"upto": "3"}), false),
            (Vec::new(), json!({"upto": "9"}), true),
        ],
        "the retry starts at the reported record, with the state the function returned"
    );
}

#[tokio::test]
async fn two_runners_on_one_mapping_deliver_each_record_once() {
    let (_t, clients, m, seqs, on_failure) = setup(12).await;
    let calls: Calls = Arc::default();
    let invoker = function(calls.clone(), |_| Ok(json!({"batchItemFailures": []})));
    // Two `shardline run` processes on the same mapping (they share its checkpoints).
    let a = tokio::spawn(run(
        m.clone(),
        clients.clone(),
        invoker.clone(),
        Some(on_failure.clone()),
        opts(),
    ));
    let b = tokio::spawn(run(m, clients, invoker, Some(on_failure), opts()));
    a.await.unwrap().unwrap();
    b.await.unwrap().unwrap();
    let mut delivered: Vec<String> = calls.lock().unwrap().concat();
    delivered.sort();
    let mut expected = seqs.clone();
    expected.sort();
    assert_eq!(
        delivered, expected,
        "each record delivered once, by one runner"
    );
}

/// A runner killed (SIGKILL) leaves its lease behind. A new `--until-idle` runner must
/// wait for that lease to expire and then deliver the shard: a shard another runner
/// holds is not drained, so it does not count as idle.
#[tokio::test]
async fn a_killed_runners_lease_is_waited_out_not_taken_for_idle() {
    use aws_sdk_dynamodb::types::AttributeValue;
    let (_t, clients, m, seqs, on_failure) = setup(8).await;
    shardline::runner::ensure_checkpoint_table(&clients.ddb)
        .await
        .unwrap();
    let shards = clients
        .kinesis
        .list_shards()
        .stream_name(&m.stream)
        .send()
        .await
        .unwrap();
    // The dead runner's lease on every shard, 6 s to go (leases last 10 s).
    let until = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        + 6_000;
    for s in shards.shards() {
        clients
            .ddb
            .put_item()
            .table_name(shardline::runner::CHECKPOINT_TABLE)
            .item(
                "pk",
                AttributeValue::S(format!("{}|{}|{}", m.function, m.stream, s.shard_id())),
            )
            .item("owner", AttributeValue::S("killed-runner".into()))
            .item("lease_until", AttributeValue::N(until.to_string()))
            .send()
            .await
            .unwrap();
    }
    let calls: Calls = Arc::default();
    let invoker = function(calls.clone(), |_| Ok(json!({"batchItemFailures": []})));
    run(m, clients, invoker, Some(on_failure), opts())
        .await
        .unwrap();
    let mut delivered: Vec<String> = calls.lock().unwrap().concat();
    delivered.sort();
    let mut expected = seqs;
    expected.sort();
    assert_eq!(delivered, expected, "every record, once the lease expired");
}
