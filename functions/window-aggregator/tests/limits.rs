//! The aggregator at its limits: too little time left before the Lambda deadline to
//! write, and a panic in one shard's step. Both become a partial batch failure that
//! Lambda retries from, never a killed or crashed invocation, and the retry completes
//! the windows exactly once.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::sync::atomic::{AtomicBool, Ordering};

use base64::Engine as _;
use serde_json::{Value, json};
use shardline_core::StoreError;
use shardline_core::alert::Alert;
use shardline_core::batch::{BatchConfig, RetryPolicy};
use shardline_core::ports::AlertSink;
use shardline_testkit::{MemAlerts, MemQuarantine, MemWindows};
use window_aggregator::{Aggregator, AggregatorSettings, Stores};

const SHARD: &str = "shardId-000000000000";
/// 2026-11-26T12:00:00Z, ms.
const T0: i64 = 1_795_694_400_000;

fn settings() -> AggregatorSettings {
    let mut s = AggregatorSettings::default();
    s.batch = BatchConfig {
        retry: RetryPolicy {
            max_attempts: 2,
            initial_backoff: std::time::Duration::from_millis(1),
            max_backoff: std::time::Duration::from_millis(1),
        },
        ..s.batch
    };
    s
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

/// A Kinesis event of `n` declined payments at one merchant, one second apart.
fn event(n: usize) -> Vec<u8> {
    let records: Vec<Value> = (0..n)
        .map(|i| {
            let t = T0 + i as i64 * 1000;
            let data = json!({
                "schema": "txn.v1",
                "event_id": format!("ev-{i}"),
                "card_token": format!("tok_{i}"),
                "merchant_id": "m-1",
                "mcc": "5411",
                "amount_minor": 1000 + i,
                "currency": "USD",
                "event_time": shardline_core::event::format_rfc3339_ms(t),
                "location": {"lat": 40.7, "lon": -74.0, "country": "US"},
                "channel": "pos",
                "auth_result": "declined",
            })
            .to_string();
            json!({
                "kinesis": {
                    "kinesisSchemaVersion": "1.0",
                    "partitionKey": format!("tok_{i}"),
                    "sequenceNumber": seq(i),
                    "data": base64::engine::general_purpose::STANDARD.encode(data),
                    "approximateArrivalTimestamp": (t + 500) as f64 / 1000.0,
                },
                "eventSource": "aws:kinesis",
                "eventVersion": "1.0",
                "eventID": format!("{SHARD}:{}", seq(i)),
                "eventName": "aws:kinesis:record",
                "eventSourceARN": "arn:aws:kinesis:us-east-1:123456789012:stream/shardline-input",
            })
        })
        .collect();
    serde_json::to_vec(&json!({ "Records": records })).unwrap()
}

/// (count, sum) of the global 1-minute windows.
fn global(windows: &MemWindows) -> (u64, i64) {
    windows
        .partials()
        .iter()
        .filter(|p| p.window.key == "global" && p.window.width_ms == 60_000)
        .fold((0, 0), |(c, s), p| {
            (c + p.metrics.count, s + p.metrics.total_sum())
        })
}

fn failure(resp: &aws_lambda_events::event::streams::KinesisEventResponse) -> Option<String> {
    resp.batch_item_failures
        .first()
        .and_then(|f| f.item_identifier.clone())
}

#[test]
fn too_little_time_before_the_deadline_reports_the_batch_instead_of_writing() {
    let (windows, alerts, quarantine) = (
        MemWindows::default(),
        MemAlerts::default(),
        MemQuarantine::default(),
    );
    let agg = Aggregator::new(
        Stores {
            windows: &windows,
            alerts: &alerts,
            quarantine: &quarantine,
        },
        settings(),
    );
    let payload = event(10);
    // The deadline is inside the margin (500 ms): Lambda would kill the invocation in the
    // middle of its writes.
    let deadline = Some(tokio::time::Instant::now() + std::time::Duration::from_millis(250));
    let report = rt().block_on(agg.handle(&payload, deadline)).unwrap();
    assert_eq!(
        failure(&report.response),
        Some(seq(0)),
        "the whole batch is reported"
    );
    let (_, _, puts, progress_writes) = windows.calls.snapshot();
    assert_eq!((puts, progress_writes), (0, 0), "no write was started");
    // Lambda retries from the reported record, with time this time.
    let report = rt().block_on(agg.handle(&payload, None)).unwrap();
    assert_eq!(failure(&report.response), None);
    assert_eq!(global(&windows), (10, (0..10).map(|i| 1000 + i).sum()));
}

/// An alert sink whose first call panics (a bug outside the per-key step).
#[derive(Default)]
struct PanicsOnce {
    panicked: AtomicBool,
    inner: MemAlerts,
}

impl AlertSink for PanicsOnce {
    async fn put_alerts(&self, alerts: &[Alert]) -> Result<(), StoreError> {
        if !self.panicked.swap(true, Ordering::SeqCst) {
            panic!("injected panic in the alert write");
        }
        self.inner.put_alerts(alerts).await
    }
}

#[test]
fn a_panic_in_a_shards_step_is_a_failure_at_its_first_record() {
    let (windows, alerts, quarantine) = (
        MemWindows::default(),
        PanicsOnce::default(),
        MemQuarantine::default(),
    );
    let agg = Aggregator::new(
        Stores {
            windows: &windows,
            alerts: &alerts,
            quarantine: &quarantine,
        },
        settings(),
    );
    // 40 declines at one merchant within a minute: decline-burst, decline-spike and
    // decline-rate alerts are written, after the partials, and that write panics.
    let payload = event(40);
    let report = rt().block_on(agg.handle(&payload, None)).unwrap();
    assert!(alerts.panicked.load(Ordering::SeqCst));
    assert_eq!(failure(&report.response), Some(seq(0)));
    let report = rt().block_on(agg.handle(&payload, None)).unwrap();
    assert_eq!(failure(&report.response), None);
    assert_eq!(
        global(&windows),
        (40, (0..40).map(|i| 1000 + i).sum()),
        "the retry counts each record once"
    );
    let ids: Vec<String> = alerts.inner.snapshot().into_keys().collect();
    assert_eq!(
        ids.iter()
            .map(|id| id.split(':').nth(1).unwrap_or(""))
            .collect::<Vec<_>>(),
        [
            "merchant_decline_burst",
            "merchant_decline_rate",
            "merchant_decline_spike"
        ],
        "{ids:?}"
    );
}
