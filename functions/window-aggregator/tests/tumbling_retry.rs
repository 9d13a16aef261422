//! Lambda tumbling-window mode under failures: whatever Lambda does with a partial batch
//! failure (retry from the reported record with the state the function returned, or the
//! whole batch again with the state it was given), every good record is counted once.
//! Semantics: <https://docs.aws.amazon.com/lambda/latest/dg/services-kinesis-windows.html>
//! and <https://docs.aws.amazon.com/lambda/latest/dg/services-kinesis-batchfailurereporting.html>.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use base64::Engine as _;
use serde_json::{Value, json};
use shardline_core::batch::{BatchConfig, RetryPolicy};
use shardline_testkit::{MemAlerts, MemQuarantine, MemWindows};
use window_aggregator::tumbling::TumblingResponse;
use window_aggregator::{Aggregator, AggregatorSettings, Stores};

const SHARD: &str = "shardId-000000000000";
/// 2026-11-26T12:00:00Z.
const WINDOW_START_S: i64 = 1_795_694_400;

#[derive(Default)]
struct World {
    windows: MemWindows,
    alerts: MemAlerts,
    quarantine: MemQuarantine,
}

impl World {
    fn agg(&self) -> Aggregator<&MemWindows, &MemAlerts, &MemQuarantine> {
        let mut s = AggregatorSettings::default();
        s.batch = BatchConfig {
            retry: RetryPolicy {
                max_attempts: 2,
                initial_backoff: std::time::Duration::from_millis(1),
                max_backoff: std::time::Duration::from_millis(1),
            },
            ..s.batch
        };
        Aggregator::new(
            Stores {
                windows: &self.windows,
                alerts: &self.alerts,
                quarantine: &self.quarantine,
            },
            s,
        )
    }

    /// (count, sum) of the global window over every stored item.
    fn global(&self) -> (u64, i64) {
        self.windows
            .partials()
            .iter()
            .filter(|p| p.window.key == "global")
            .fold((0, 0), |(c, s), p| {
                (c + p.metrics.count, s + p.metrics.total_sum())
            })
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn seq(i: usize) -> String {
    format!("4959033827149025660855969253836157109592157598913{i:07}")
}

/// Record `i` of the window: good (amount 1000 + i), or poison (bad JSON) when `poison`.
fn record(i: usize, poison: bool) -> Value {
    let data = if poison {
        "{not json".to_owned()
    } else {
        json!({
            "schema": "txn.v1",
            "event_id": format!("tw-{i}"),
            "card_token": format!("tok_tw_{i}"),
            "merchant_id": format!("m-tw-{}", i % 2),
            "mcc": "5411",
            "amount_minor": 1000 + i,
            "currency": "USD",
            "event_time": "2026-11-26T12:00:00.000Z",
            "location": {"lat": 40.7, "lon": -74.0, "country": "US"},
            "channel": "pos",
            "auth_result": "approved",
        })
        .to_string()
    };
    json!({
        "kinesis": {
            "kinesisSchemaVersion": "1.0",
            "partitionKey": format!("tok_tw_{i}"),
            "sequenceNumber": seq(i),
            "data": base64::engine::general_purpose::STANDARD.encode(data),
            "approximateArrivalTimestamp": (WINDOW_START_S + 1) as f64,
        },
        "eventSource": "aws:kinesis",
        "eventVersion": "1.0",
        "eventID": format!("{SHARD}:{}", seq(i)),
        "eventName": "aws:kinesis:record",
        "eventSourceARN": "arn:aws:kinesis:us-east-1:123456789012:stream/shardline-input",
    })
}

fn event(records: &[Value], state: &Value, is_final: bool) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "Records": records,
        "window": {"start": "2026-11-26T12:00:00Z", "end": "2026-11-26T12:01:00Z"},
        "state": state,
        "shardId": SHARD,
        "eventSourceARN": "arn:aws:kinesis:us-east-1:123456789012:stream/shardline-input",
        "isFinalInvokeForWindow": is_final,
        "isWindowTerminatedEarly": false,
    }))
    .unwrap()
}

/// What Lambda does with a response that reports a failed record.
#[derive(Clone, Copy, Debug)]
enum Retry {
    /// Checkpoint the records before the reported one; retry from it with the state the
    /// function returned (what `shardline run` does).
    FromReportedWithReturnedState,
    /// Retry the whole batch with the state the failed invocation was given.
    WholeBatchWithGivenState,
}

/// Delivers `records` as one invocation of the window, then the final invoke, retrying
/// as `retry` says until both succeed. Returns the responses.
fn deliver(world: &World, records: &[Value], retry: Retry) -> Vec<TumblingResponse> {
    let agg = world.agg();
    let mut out = Vec::new();
    let mut state = json!({});
    let mut pending: Vec<Value> = records.to_vec();
    for _ in 0..10 {
        let resp = rt()
            .block_on(agg.handle_time_window(&event(&pending, &state, false), None))
            .unwrap();
        out.push(resp.clone());
        let Some(id) = resp
            .batch_item_failures
            .first()
            .and_then(|f| f.item_identifier.clone())
        else {
            state = serde_json::to_value(&resp.state).unwrap();
            break;
        };
        if let Retry::FromReportedWithReturnedState = retry {
            let from = pending
                .iter()
                .position(|r| r["kinesis"]["sequenceNumber"] == json!(id))
                .unwrap_or(0);
            pending.drain(..from);
            state = serde_json::to_value(&resp.state).unwrap();
        }
    }
    let last = rt()
        .block_on(agg.handle_time_window(&event(&[], &state, true), None))
        .unwrap();
    assert!(last.batch_item_failures.is_empty());
    out.push(last);
    out
}

#[test]
fn a_failed_quarantine_write_loses_no_good_record_whatever_lambda_retries() {
    // Good records 0, 1, 2, a poison record 3, good records 4, 5.
    let records: Vec<Value> = (0..6).map(|i| record(i, i == 3)).collect();
    let good: Vec<usize> = vec![0, 1, 2, 4, 5];
    let expected = (
        good.len() as u64,
        good.iter().map(|i| 1000 + *i as i64).sum::<i64>(),
    );
    for retry in [
        Retry::FromReportedWithReturnedState,
        Retry::WholeBatchWithGivenState,
    ] {
        let world = World::default();
        // Both attempts of the first invocation's quarantine write fail.
        world.quarantine.faults.fail_next(2);
        let resps = deliver(&world, &records, retry);
        assert!(
            !resps[0].batch_item_failures.is_empty(),
            "{retry:?}: the first invocation reports the failure"
        );
        assert_eq!(
            world.global(),
            expected,
            "{retry:?}: every good record once"
        );
        assert_eq!(
            world.quarantine.entries().len(),
            1,
            "{retry:?}: the poison record is quarantined once"
        );
    }
}

#[test]
fn a_failed_final_invoke_is_a_function_error_and_its_retry_writes_everything() {
    let world = World::default();
    let agg = world.agg();
    let records: Vec<Value> = (0..4).map(|i| record(i, false)).collect();
    let resp = rt()
        .block_on(agg.handle_time_window(&event(&records, &json!({}), false), None))
        .unwrap();
    assert!(resp.batch_item_failures.is_empty());
    let state = serde_json::to_value(&resp.state).unwrap();
    // The final invoke has no record to report: its write failing must fail the
    // invocation, or Lambda would close the window and drop the state.
    world.windows.faults.fail_next(1);
    let failed = rt().block_on(agg.handle_time_window(&event(&[], &state, true), None));
    assert!(failed.is_err(), "{failed:?}");
    let retried = rt()
        .block_on(agg.handle_time_window(&event(&[], &state, true), None))
        .unwrap();
    assert!(retried.batch_item_failures.is_empty());
    assert_eq!(world.global(), (4, 1000 + 1001 + 1002 + 1003));
}
