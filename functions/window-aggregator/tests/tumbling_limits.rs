//! Lambda tumbling-window mode at its limits: a panic while folding or spilling, and a
//! spill that would start too close to the Lambda deadline. Each becomes a reported
//! failure at the first record the given state lacks, with the given state returned (or a
//! function error for a final invoke, which has no record), never a crashed or timed-out
//! invocation; and the retry counts every record once.
//! <https://docs.aws.amazon.com/lambda/latest/dg/services-kinesis-windows.html>

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use shardline_core::StoreError;
use shardline_core::batch::{BatchConfig, RetryPolicy};
use shardline_core::ports::{BatchReadKeys, PartialKey, Put, WindowStore};
use shardline_core::window::claims::{ClaimItem, ClaimKey, Lineage};
use shardline_core::window::{ShardProgress, WindowId, WindowPartial};
use shardline_testkit::{MemAlerts, MemQuarantine, MemWindows};
use window_aggregator::handler::HandlerError;
use window_aggregator::tumbling::TumblingResponse;
use window_aggregator::{Aggregator, AggregatorSettings, Stores};

const SHARD: &str = "shardId-000000000000";
/// 2026-11-26T12:00:00Z.
const WINDOW_START_S: i64 = 1_795_694_400;
/// A state limit every invocation's state exceeds: each one spills.
const ALWAYS_SPILL: usize = 1;
/// Far above any state here: nothing spills before the final invoke.
const NEVER_SPILL: usize = usize::MAX;

/// The in-memory windows table, with a panic armed on the next partial write (a spill)
/// or the next claim write.
#[derive(Default)]
struct Windows {
    inner: MemWindows,
    panic_on_partial_write: AtomicBool,
    panic_on_claim_write: AtomicBool,
}

impl WindowStore for Windows {
    async fn get_partials(
        &self,
        keys: &[PartialKey],
    ) -> Result<BatchReadKeys<WindowPartial>, StoreError> {
        self.inner.get_partials(keys).await
    }

    async fn put_partial(
        &self,
        partial: &WindowPartial,
        expected: Option<u64>,
    ) -> Result<Put, StoreError> {
        if self.panic_on_partial_write.swap(false, Ordering::SeqCst) {
            panic!("injected panic in a spill write");
        }
        self.inner.put_partial(partial, expected).await
    }

    async fn get_progress(&self, shard: &str) -> Result<Option<ShardProgress>, StoreError> {
        self.inner.get_progress(shard).await
    }

    async fn put_progress(&self, shard: &str, progress: &ShardProgress) -> Result<(), StoreError> {
        self.inner.put_progress(shard, progress).await
    }

    async fn window_partials(&self, window: &WindowId) -> Result<Vec<WindowPartial>, StoreError> {
        self.inner.window_partials(window).await
    }

    async fn get_claims(
        &self,
        keys: &[ClaimKey],
    ) -> Result<Vec<(ClaimKey, ClaimItem)>, StoreError> {
        self.inner.get_claims(keys).await
    }

    async fn put_claims(&self, items: &[ClaimItem]) -> Result<(), StoreError> {
        if self.panic_on_claim_write.swap(false, Ordering::SeqCst) {
            panic!("injected panic in a claim write");
        }
        self.inner.put_claims(items).await
    }

    async fn get_lineage(&self, shard: &str) -> Result<Option<Lineage>, StoreError> {
        self.inner.get_lineage(shard).await
    }

    async fn put_lineage(&self, shard: &str, lineage: &Lineage) -> Result<(), StoreError> {
        self.inner.put_lineage(shard, lineage).await
    }
}

#[derive(Default)]
struct World {
    windows: Windows,
    alerts: MemAlerts,
    quarantine: MemQuarantine,
}

impl World {
    fn agg(&self) -> Aggregator<&Windows, &MemAlerts, &MemQuarantine> {
        let mut s = AggregatorSettings::default();
        s.batch = BatchConfig {
            retry: RetryPolicy {
                max_attempts: 2,
                initial_backoff: Duration::from_millis(1),
                max_backoff: Duration::from_millis(1),
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
            .inner
            .partials()
            .iter()
            .filter(|p| p.window.key == "global")
            .fold((0, 0), |(c, s), p| {
                (c + p.metrics.count, s + p.metrics.total_sum())
            })
    }

    /// One invocation of the window; a panic escaping the handler fails the test.
    fn invoke(
        &self,
        records: &[Value],
        state: &HashMap<String, String>,
        is_final: bool,
        deadline: Option<tokio::time::Instant>,
        max_state: usize,
    ) -> Result<TumblingResponse, HandlerError> {
        let payload = event(records, state, is_final);
        let agg = self.agg();
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            rt().block_on(agg.handle_time_window_limited(&payload, deadline, max_state))
        }))
        .unwrap_or_else(|_| panic!("the panic escaped the handler: the invocation crashed"))
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

/// Good record `i` of the window (amount 1000 + i).
fn record(i: usize) -> Value {
    let data = json!({
        "schema": "txn.v1",
        "event_id": format!("tl-{i}"),
        "card_token": format!("tok_tl_{i}"),
        "merchant_id": format!("m-tl-{}", i % 3),
        "mcc": "5411",
        "amount_minor": 1000 + i,
        "currency": "USD",
        "event_time": "2026-11-26T12:00:00.000Z",
        "location": {"lat": 40.7, "lon": -74.0, "country": "US"},
        "channel": "pos",
        "auth_result": "approved",
    })
    .to_string();
    json!({
        "kinesis": {
            "kinesisSchemaVersion": "1.0",
            "partitionKey": format!("tok_tl_{i}"),
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

fn records(range: std::ops::Range<usize>) -> Vec<Value> {
    range.map(record).collect()
}

fn event(records: &[Value], state: &HashMap<String, String>, is_final: bool) -> Vec<u8> {
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

fn failure(resp: &TumblingResponse) -> Option<String> {
    resp.batch_item_failures
        .first()
        .and_then(|f| f.item_identifier.clone())
}

/// (count, sum) of records `range`.
fn expected(range: std::ops::Range<usize>) -> (u64, i64) {
    (range.len() as u64, range.map(|i| 1000 + i as i64).sum())
}

/// Records 0..4 folded into a state (no spill): what the window holds before the
/// invocation under test.
fn first_invocation(world: &World) -> HashMap<String, String> {
    let resp = world
        .invoke(&records(0..4), &HashMap::new(), false, None, NEVER_SPILL)
        .unwrap();
    assert_eq!(failure(&resp), None);
    resp.state
}

/// Lambda's retry of a failed invocation from the reported record with the returned
/// state, then the window's final invoke; checks every record is counted once.
fn retry_then_close(world: &World, from: usize, state: &HashMap<String, String>) {
    let resp = world
        .invoke(&records(from..8), state, false, None, ALWAYS_SPILL)
        .unwrap();
    assert_eq!(failure(&resp), None, "the retry completes");
    let last = world
        .invoke(&[], &resp.state, true, None, NEVER_SPILL)
        .unwrap();
    assert_eq!(failure(&last), None);
    assert_eq!(world.global(), expected(0..8), "every record once");
}

#[test]
fn a_panic_while_spilling_is_a_failure_at_the_first_record_the_state_lacks() {
    let world = World::default();
    let given = first_invocation(&world);
    world
        .windows
        .panic_on_partial_write
        .store(true, Ordering::SeqCst);
    let resp = world
        .invoke(&records(4..8), &given, false, None, ALWAYS_SPILL)
        .unwrap();
    assert!(!world.windows.panic_on_partial_write.load(Ordering::SeqCst));
    assert_eq!(
        failure(&resp),
        Some(seq(4)),
        "the first record the state lacks"
    );
    assert_eq!(resp.state, given, "the given state is returned");
    retry_then_close(&world, 4, &resp.state);
}

#[test]
fn a_panic_in_the_claim_write_is_a_failure_at_the_first_record_the_state_lacks() {
    let world = World::default();
    let given = first_invocation(&world);
    world
        .windows
        .panic_on_claim_write
        .store(true, Ordering::SeqCst);
    let resp = world
        .invoke(&records(4..8), &given, false, None, NEVER_SPILL)
        .unwrap();
    assert!(!world.windows.panic_on_claim_write.load(Ordering::SeqCst));
    assert_eq!(failure(&resp), Some(seq(4)));
    assert_eq!(resp.state, given);
    retry_then_close(&world, 4, &resp.state);
}

#[test]
fn a_panic_in_a_redelivered_batch_reports_the_first_record_the_state_lacks() {
    // Lambda may deliver the whole batch again with the state it gave before: records
    // 0..4 are already in it, so the failure is at record 4, not at the batch's first.
    let world = World::default();
    let given = first_invocation(&world);
    world
        .windows
        .panic_on_partial_write
        .store(true, Ordering::SeqCst);
    let resp = world
        .invoke(&records(0..8), &given, false, None, ALWAYS_SPILL)
        .unwrap();
    assert_eq!(failure(&resp), Some(seq(4)));
    assert_eq!(resp.state, given);
    retry_then_close(&world, 4, &resp.state);
}

#[test]
fn a_spill_inside_the_deadline_margin_is_skipped_and_reported() {
    let world = World::default();
    let given = first_invocation(&world);
    // Less than the margin (500 ms) left: a spill started now could be killed midway.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(100);
    let resp = world
        .invoke(&records(4..8), &given, false, Some(deadline), ALWAYS_SPILL)
        .unwrap();
    assert_eq!(failure(&resp), Some(seq(4)));
    assert_eq!(resp.state, given);
    assert!(
        world.windows.inner.partials().is_empty(),
        "no spill was started"
    );
    retry_then_close(&world, 4, &resp.state);
}

#[test]
fn a_state_that_fits_needs_no_time_for_a_spill() {
    // No spill is due: the deadline margin does not fail the invocation.
    let world = World::default();
    let given = first_invocation(&world);
    let deadline = tokio::time::Instant::now() + Duration::from_millis(100);
    let resp = world
        .invoke(&records(4..8), &given, false, Some(deadline), NEVER_SPILL)
        .unwrap();
    assert_eq!(failure(&resp), None);
    let last = world
        .invoke(&[], &resp.state, true, None, NEVER_SPILL)
        .unwrap();
    assert_eq!(failure(&last), None);
    assert_eq!(world.global(), expected(0..8));
}

#[test]
fn a_final_invoke_inside_the_deadline_margin_is_a_function_error() {
    let world = World::default();
    let given = first_invocation(&world);
    let deadline = tokio::time::Instant::now() + Duration::from_millis(100);
    let failed = world.invoke(&[], &given, true, Some(deadline), NEVER_SPILL);
    assert!(
        matches!(failed, Err(HandlerError::Incomplete(_))),
        "{failed:?}"
    );
    assert!(world.windows.inner.partials().is_empty());
    // Lambda retries the final invoke with the same state.
    let last = world.invoke(&[], &given, true, None, NEVER_SPILL).unwrap();
    assert_eq!(failure(&last), None);
    assert_eq!(world.global(), expected(0..4));
}

#[test]
fn a_panic_in_the_final_spill_is_a_function_error() {
    let world = World::default();
    let given = first_invocation(&world);
    world
        .windows
        .panic_on_partial_write
        .store(true, Ordering::SeqCst);
    let failed = world.invoke(&[], &given, true, None, NEVER_SPILL);
    assert!(
        matches!(failed, Err(HandlerError::Incomplete(_))),
        "{failed:?}"
    );
    let last = world.invoke(&[], &given, true, None, NEVER_SPILL).unwrap();
    assert_eq!(failure(&last), None);
    assert_eq!(world.global(), expected(0..4));
}
