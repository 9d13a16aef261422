//! A producer's re-send (the same event under a new sequence number) is counted once:
//! long after the original on one shard, on a child shard after a reshard, and in Lambda
//! tumbling-window mode across windows.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine as _;
use serde_json::{Value, json};
use shardline_core::batch::{BatchConfig, RetryPolicy};
use shardline_core::event::{AuthResult, Channel, Location};
use shardline_core::{InRecord, RecordMeta, RecordPos, SeqNo, Txn};
use shardline_testkit::{MemAlerts, MemParents, MemQuarantine, MemWindows};
use window_aggregator::{Aggregator, AggregatorSettings, Stores};

const T0: i64 = 1_795_000_020_000;

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

    /// (count, sum) of every global window, over every stored partial.
    fn global(&self) -> (u64, i64) {
        self.windows
            .partials()
            .iter()
            .filter(|p| p.window.key == "global" && p.window.width_ms == 60_000)
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

fn txn(i: usize, amount: i64, t: i64) -> Txn {
    Txn {
        card_bin: None,
        event_id: format!("e{i}"),
        card_token: format!("tok_{}", i % 50),
        merchant_id: format!("m{}", i % 7),
        mcc: 5411,
        amount_minor: amount,
        currency: "USD".into(),
        event_time_ms: t,
        location: Location {
            lat: 0.0,
            lon: 0.0,
            country: "US".into(),
        },
        channel: Channel::Ecom,
        auth_result: AuthResult::Approved,
    }
}

fn rec(shard: usize, seq: usize, t: Txn) -> InRecord<Txn> {
    InRecord {
        meta: RecordMeta {
            shard_id: Arc::from(format!("shardId-{shard:012}").as_str()),
            pos: RecordPos::plain(
                SeqNo::parse(&format!("49590338271490256608559692{seq:030}")).unwrap(),
            ),
            partition_key: t.card_token.clone(),
            lane_key: None,
            arrival_ms: t.event_time_ms,
        },
        body: Ok(t),
    }
}

/// Events 0..n, one every `step_ms` from T0, amount 100 + i.
fn events(n: usize, step_ms: i64) -> Vec<Txn> {
    (0..n)
        .map(|i| txn(i, 100 + i as i64, T0 + i as i64 * step_ms))
        .collect()
}

fn expected(ev: &[Txn]) -> (u64, i64) {
    (ev.len() as u64, ev.iter().map(|t| t.amount_minor).sum())
}

#[test]
fn a_resend_thousands_of_records_later_on_the_same_shard_counts_once() {
    // 3,000 events within one minute: the re-send's window is still open (not late).
    let ev = events(3_000, 19);
    let mut recs: Vec<InRecord<Txn>> = ev
        .iter()
        .enumerate()
        .map(|(i, t)| rec(0, i, t.clone()))
        .collect();
    // The producer re-sends event 5 after 3,000 others.
    recs.push(rec(0, 5_000, ev[5].clone()));
    let world = World::default();
    let agg = world.agg();
    for chunk in recs.chunks(500) {
        let r = rt().block_on(agg.handle_records(chunk, None));
        assert!(r.response.batch_item_failures.is_empty());
    }
    assert_eq!(world.global(), expected(&ev));
}

#[test]
fn a_resend_on_a_child_shard_after_a_reshard_counts_once() {
    let ev = events(400, 100);
    // The parent applies events 0..300; the stream splits; the child gets 300..400
    // and, a minute later, the producer's re-sends of events 250 and 290.
    let parent: Vec<InRecord<Txn>> = ev[..300]
        .iter()
        .enumerate()
        .map(|(i, t)| rec(0, i, t.clone()))
        .collect();
    let mut child: Vec<InRecord<Txn>> = ev[300..]
        .iter()
        .enumerate()
        .map(|(i, t)| rec(1, 1_000 + i, t.clone()))
        .collect();
    child.push(rec(1, 2_000, ev[250].clone()));
    child.push(rec(1, 2_001, ev[290].clone()));
    let world = World::default();
    let parents = MemParents(HashMap::from([(
        "shardId-000000000001".to_owned(),
        vec!["shardId-000000000000".to_owned()],
    )]));
    let agg = world.agg().with_parents(Arc::new(parents));
    for batch in [&parent[..150], &parent[150..], &child[..]] {
        let r = rt().block_on(agg.handle_records(batch, None));
        assert!(r.response.batch_item_failures.is_empty());
    }
    assert_eq!(world.global(), expected(&ev));
    // A cold start of the child (lineage read back from the table) sees the same.
    let again = world.agg().with_parents(Arc::new(MemParents::default()));
    let resend = [rec(1, 3_000, ev[10].clone())];
    rt().block_on(again.handle_records(&resend, None));
    assert_eq!(world.global(), expected(&ev));
}

/// The child's first batch holds an event two hours old (a delayed upload): its parents'
/// claims must still be read for current events, whose re-sends it may carry.
#[test]
fn a_child_whose_first_batch_holds_an_old_event_still_sees_its_parents_claims() {
    let ev = events(200, 100);
    let parent: Vec<InRecord<Txn>> = ev
        .iter()
        .enumerate()
        .map(|(i, t)| rec(0, i, t.clone()))
        .collect();
    let mut old = txn(9_999, 777, T0 - 2 * 3_600_000);
    old.event_id = "delayed-upload".into();
    let mut first = rec(1, 1_000, old.clone());
    first.meta.arrival_ms = T0 + 30_000;
    let mut resend = rec(1, 1_001, ev[150].clone());
    resend.meta.arrival_ms = T0 + 30_000;
    let world = World::default();
    let parents = MemParents(HashMap::from([(
        "shardId-000000000001".to_owned(),
        vec!["shardId-000000000000".to_owned()],
    )]));
    let agg = world.agg().with_parents(Arc::new(parents));
    rt().block_on(agg.handle_records(&parent, None));
    rt().block_on(agg.handle_records(&[first, resend], None));
    // A child's watermark starts afresh, so the old event counts; the re-send does not.
    let mut all = ev.clone();
    all.push(old);
    assert_eq!(world.global(), expected(&all));
}

/// Claims of an event weeks old (accepted up to 30 days behind its arrival) must not
/// carry a TTL already past when written.
#[test]
fn claims_of_an_old_event_expire_after_its_arrival_not_its_event_time() {
    let old_t = T0 - 20 * 24 * 3_600_000;
    let mut r = rec(0, 1, txn(1, 100, old_t));
    r.meta.arrival_ms = T0;
    let world = World::default();
    rt().block_on(world.agg().handle_records(&[r], None));
    let items = world.windows.claim_items();
    assert!(!items.is_empty());
    for i in items {
        assert!(
            i.expires_at * 1000 > T0,
            "claim item expires at {} before the record arrived ({T0})",
            i.expires_at * 1000
        );
    }
}

/// Claims come after the effects they guard: a batch whose writes fail leaves no claim
/// behind, its retry counts each record once, and should Lambda give the batch up, a
/// producer's re-send of one of its events still counts.
#[test]
fn a_failed_batch_leaves_no_claim_and_a_given_up_events_resend_counts() {
    let ev = events(40, 100);
    let recs: Vec<InRecord<Txn>> = ev
        .iter()
        .enumerate()
        .map(|(i, t)| rec(0, i, t.clone()))
        .collect();
    let world = World::default();
    let agg = world.agg();
    world.windows.faults.fail_next(100);
    let failed = rt().block_on(agg.handle_records(&recs, None));
    assert!(!failed.response.batch_item_failures.is_empty());
    assert!(
        world.windows.claim_items().is_empty(),
        "no claim without its effects"
    );
    world.windows.faults.fail_next(0);
    let ok = rt().block_on(agg.handle_records(&recs, None));
    assert!(ok.response.batch_item_failures.is_empty());
    assert_eq!(world.global(), expected(&ev));

    // Lambda gives a failing batch up (OnFailure); the producer re-sends event 3 later.
    let world = World::default();
    let agg = world.agg();
    world.windows.faults.fail_next(1_000);
    rt().block_on(agg.handle_records(&recs[..5], None));
    world.windows.faults.fail_next(0);
    let resend = [rec(0, 100, ev[3].clone())];
    rt().block_on(agg.handle_records(&resend, None));
    assert_eq!(world.global(), expected(&ev[3..4]), "the re-send counts");
}

// ---------- Lambda tumbling-window mode ----------

const SHARD: &str = "shardId-000000000000";

fn tw_record(seq: usize, id: usize, minute: i64) -> Value {
    let data = json!({
        "schema": "txn.v1",
        "event_id": format!("tw-{id}"),
        "card_token": format!("tok_tw_{id}"),
        "merchant_id": "m-tw",
        "mcc": "5411",
        "amount_minor": 1000 + id,
        "currency": "USD",
        "event_time": "2026-11-26T12:00:00.000Z",
        "location": {"lat": 40.7, "lon": -74.0, "country": "US"},
        "channel": "pos",
        "auth_result": "approved",
    })
    .to_string();
    let seq = format!("4959033827149025660855969253836157109592157598913{seq:07}");
    json!({
        "kinesis": {
            "kinesisSchemaVersion": "1.0",
            "partitionKey": format!("tok_tw_{id}"),
            "sequenceNumber": seq,
            "data": base64::engine::general_purpose::STANDARD.encode(data),
            "approximateArrivalTimestamp": (1_795_694_400 + minute * 60 + 1) as f64,
        },
        "eventSource": "aws:kinesis",
        "eventVersion": "1.0",
        "eventID": format!("{SHARD}:{seq}"),
        "eventName": "aws:kinesis:record",
        "eventSourceARN": "arn:aws:kinesis:us-east-1:123456789012:stream/shardline-input",
    })
}

fn tw_event(records: &[Value], minute: i64, state: &Value, is_final: bool) -> Vec<u8> {
    let at = |m: i64| format!("2026-11-26T12:{m:02}:00Z");
    serde_json::to_vec(&json!({
        "Records": records,
        "window": {"start": at(minute), "end": at(minute + 1)},
        "state": state,
        "shardId": SHARD,
        "eventSourceARN": "arn:aws:kinesis:us-east-1:123456789012:stream/shardline-input",
        "isFinalInvokeForWindow": is_final,
        "isWindowTerminatedEarly": false,
    }))
    .unwrap()
}

/// One Lambda window: an invocation with `records`, then the final invoke.
fn tw_window(world: &World, records: &[Value], minute: i64) {
    let agg = world.agg();
    let resp = rt()
        .block_on(agg.handle_time_window(&tw_event(records, minute, &json!({}), false), None))
        .unwrap();
    assert!(resp.batch_item_failures.is_empty());
    let state = serde_json::to_value(&resp.state).unwrap();
    let last = rt()
        .block_on(agg.handle_time_window(&tw_event(&[], minute, &state, true), None))
        .unwrap();
    assert!(last.batch_item_failures.is_empty());
}

#[test]
fn tumbling_mode_counts_a_resend_in_a_later_window_once() {
    let world = World::default();
    tw_window(&world, &[tw_record(1, 1, 0), tw_record(2, 2, 0)], 0);
    // A minute later the producer re-sends event 1 (new sequence number), beside event 3.
    tw_window(&world, &[tw_record(3, 1, 1), tw_record(4, 3, 1)], 1);
    let (count, sum): (u64, i64) = world
        .windows
        .partials()
        .iter()
        .filter(|p| p.window.key == "global")
        .fold((0, 0), |(c, s), p| {
            (c + p.metrics.count, s + p.metrics.total_sum())
        });
    assert_eq!((count, sum), (3, 1001 + 1002 + 1003));
}
