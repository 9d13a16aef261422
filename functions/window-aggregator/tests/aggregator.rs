//! window-aggregator with in-memory stores: exactly-once under any split, replay and
//! shard interleaving; late accounting; one write per (key, window) per batch.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;
use shardline_core::batch::{BatchConfig, RetryPolicy};
use shardline_core::event::{AuthResult, Channel, Location};
use shardline_core::window::{KeyKind, MINUTE_MS, Metrics, WindowConfig, WindowId, windows_of};
use shardline_core::{InRecord, PoisonReason, RecordMeta, RecordPos, SeqNo, Txn};
use shardline_testkit::{MemAlerts, MemQuarantine, MemWindows, fixture_bytes, repo_root};
use window_aggregator::{Aggregator, AggregatorSettings, Stores};

const T0: i64 = 1_795_000_020_000;

#[derive(Default)]
struct World {
    windows: MemWindows,
    alerts: MemAlerts,
    quarantine: MemQuarantine,
}

impl World {
    fn agg(&self, lateness_ms: i64) -> Aggregator<&MemWindows, &MemAlerts, &MemQuarantine> {
        let mut s = AggregatorSettings {
            windows: test_windows(),
            ..Default::default()
        };
        s.windows.lateness_ms = lateness_ms;
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

    /// Merged metrics of every window, by window.
    fn totals(&self) -> BTreeMap<WindowId, Metrics> {
        let mut out: BTreeMap<WindowId, Metrics> = BTreeMap::new();
        for p in self.windows.partials() {
            out.entry(p.window.clone()).or_default().merge(&p.metrics);
        }
        out
    }
}

/// The default windows plus per-card hourly windows, so every key kind is exercised.
fn test_windows() -> WindowConfig {
    let mut w = WindowConfig::default();
    w.widths.insert(KeyKind::Card, vec![60 * MINUTE_MS]);
    w
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn txn(i: usize, card: usize, merchant: usize, amount: i64, t: i64) -> Txn {
    Txn {
        card_bin: None,
        event_id: format!("e{i}"),
        card_token: format!("tok_{card}"),
        merchant_id: format!("m{merchant}"),
        mcc: 5411,
        amount_minor: amount,
        currency: if i % 7 == 0 {
            "EUR".into()
        } else {
            "USD".into()
        },
        event_time_ms: t,
        location: Location {
            lat: 0.0,
            lon: 0.0,
            country: "US".into(),
        },
        channel: Channel::Ecom,
        auth_result: if i % 5 == 0 {
            AuthResult::Declined
        } else {
            AuthResult::Approved
        },
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

/// The straightforward recomputation: every event into every one of its windows.
fn recompute(events: &[&Txn], cfg: &WindowConfig) -> BTreeMap<WindowId, Metrics> {
    let mut out: BTreeMap<WindowId, Vec<&Txn>> = BTreeMap::new();
    for t in events {
        for (_, w) in windows_of(t, cfg) {
            out.entry(w).or_default().push(t);
        }
    }
    out.into_iter()
        .map(|(w, ts)| {
            let mut m = Metrics::default();
            m.add_all(ts.iter().copied(), !w.key.starts_with("card:"));
            (w, m)
        })
        .collect()
}

fn assert_same(stored: &BTreeMap<WindowId, Metrics>, expected: &BTreeMap<WindowId, Metrics>) {
    assert_eq!(
        stored.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    for (w, e) in expected {
        let s = &stored[w];
        assert_eq!(
            (s.count, s.approved, s.declined, &s.currencies),
            (e.count, e.approved, e.declined, &e.currencies),
            "{w:?}"
        );
        let (ds, de) = (s.distinct_cards(), e.distinct_cards());
        assert!(
            (ds - de).abs() <= de * 0.1 + 1.0,
            "{w:?} distinct {ds} vs {de}"
        );
        if let (Some(a), Some(b)) = (s.quantile(0.95), e.quantile(0.95)) {
            assert!((a - b).abs() <= b * 0.03 + 1.0, "{w:?} p95 {a} vs {b}");
        }
    }
}

#[test]
fn one_write_per_key_and_window_whatever_the_record_count() {
    let cfg = test_windows();
    for n in [50usize, 500] {
        let world = World::default();
        // Five cards, three merchants, all within one minute: few windows, many records.
        let recs: Vec<InRecord<Txn>> = (0..n)
            .map(|i| {
                rec(
                    0,
                    i,
                    txn(
                        i,
                        i % 5,
                        i % 3,
                        100 + i as i64,
                        T0 + (i as i64 * 50) % 50_000,
                    ),
                )
            })
            .collect();
        let report = rt().block_on(world.agg(120_000).handle_records(&recs, None));
        let distinct: std::collections::BTreeSet<WindowId> = recs
            .iter()
            .flat_map(|r| {
                windows_of(r.body.as_ref().unwrap(), &cfg)
                    .into_iter()
                    .map(|(_, w)| w)
            })
            .collect();
        let (_, _, puts, progress_writes) = world.windows.calls.snapshot();
        assert_eq!(puts as usize, distinct.len(), "n={n}");
        assert_eq!(report.partial_writes, distinct.len());
        assert_eq!(progress_writes, 1, "one progress write per shard per batch");
        let (claim_reads, _, _, claim_writes) = world.windows.claim_calls.snapshot();
        assert_eq!(
            (claim_reads, claim_writes),
            (1, 1),
            "event-id claims: one BatchGetItem and one BatchWriteItem per batch"
        );
        assert!(report.response.batch_item_failures.is_empty());
    }
}

#[test]
fn late_events_are_counted_and_quarantined_never_merged() {
    let world = World::default();
    let recs = vec![
        rec(0, 0, txn(1, 0, 0, 100, T0)),
        rec(0, 1, txn(2, 1, 0, 100, T0 + 10 * MINUTE_MS)),
        rec(0, 2, txn(3, 2, 0, 999, T0)), // 10 minutes late with 2 minutes lateness
    ];
    let report = rt().block_on(world.agg(120_000).handle_records(&recs, None));
    assert_eq!(report.late, 1);
    let q = world.quarantine.entries();
    assert_eq!(q.len(), 1);
    assert!(
        matches!(q[0].reason, PoisonReason::LateEvent { .. }),
        "{:?}",
        q[0].reason
    );
    let totals = world.totals();
    let m1 = &totals[&WindowId {
        key: "merchant:m0".into(),
        width_ms: MINUTE_MS,
        start_ms: shardline_core::window::window_start(T0, MINUTE_MS),
    }];
    assert_eq!((m1.count, m1.late), (1, 1));
    assert_eq!(
        m1.currencies["USD"].max, 100,
        "the late amount is not merged"
    );
    // stored + late = events, per width.
    for w in [MINUTE_MS, 5 * MINUTE_MS, 15 * MINUTE_MS] {
        let (stored, late): (u64, u64) = totals
            .iter()
            .filter(|(id, _)| id.key.starts_with("merchant:") && id.width_ms == w)
            .fold((0, 0), |(a, b), (_, m)| (a + m.count, b + m.late));
        assert_eq!(stored + late, 3, "width {w}");
    }
    // A replay changes nothing and quarantines nothing new.
    let before = world.windows.partials();
    rt().block_on(world.agg(120_000).handle_records(&recs, None));
    assert_eq!(world.windows.partials(), before);
    assert_eq!(world.quarantine.entries().len(), 1);
}

#[test]
fn decline_spike_raises_one_alert_per_window() {
    let world = World::default();
    let recs: Vec<InRecord<Txn>> = (0..40)
        .map(|i| {
            let mut t = txn(i, i, 7, 500, T0 + i as i64 * 1000);
            t.auth_result = AuthResult::Declined;
            rec(0, i, t)
        })
        .collect();
    let agg = world.agg(120_000);
    rt().block_on(agg.handle_records(&recs[..30], None));
    rt().block_on(agg.handle_records(&recs[30..], None));
    let alerts = world.alerts.snapshot();
    let spikes: Vec<_> = alerts
        .values()
        .filter(|a| a.reasons == ["MERCHANT_DECLINE_SPIKE"])
        .collect();
    assert_eq!(spikes.len(), 1, "{alerts:?}");
    assert_eq!(spikes[0].features["declined"], 40.0, "the latest total");
}

#[test]
fn failed_write_is_reported_and_the_retry_completes() {
    let world = World::default();
    let recs: Vec<InRecord<Txn>> = (0..20)
        .map(|i| rec(0, i, txn(i, i % 4, i % 2, 100, T0 + i as i64 * 100)))
        .collect();
    let agg = world.agg(120_000);
    world.windows.faults.fail_next(3);
    let failed = rt().block_on(agg.handle_records(&recs, None));
    let seq = failed.response.batch_item_failures[0]
        .item_identifier
        .clone()
        .unwrap();
    let from = recs
        .iter()
        .position(|r| r.meta.pos.seq.to_string() == seq)
        .unwrap();
    rt().block_on(agg.handle_records(&recs[from..], None));
    let events: Vec<&Txn> = recs.iter().map(|r| r.body.as_ref().unwrap()).collect();
    assert_same(&world.totals(), &recompute(&events, &test_windows()));
}

#[test]
fn fixtures_match_their_expected_aggregates() {
    let dir = repo_root().join("events/window-aggregator");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| {
            n.ends_with(".json") && !n.ends_with(".expected.json") && !n.starts_with("tumbling")
        })
        .collect();
    names.sort();
    assert!(names.len() >= 4, "{names:?}");
    for name in names {
        let world = World::default();
        let agg = world.agg(120_000);
        let payload = fixture_bytes(&format!("window-aggregator/{name}"));
        let report = rt().block_on(agg.handle(&payload, None)).unwrap();
        if name.starts_with("duplicates") {
            rt().block_on(agg.handle(&payload, None)).unwrap();
        }
        let totals = world.totals();
        let actual: BTreeMap<String, serde_json::Value> = totals
            .iter()
            .filter(|(w, _)| !w.key.starts_with("card:"))
            .map(|(w, m)| (format!("{}@{}", w.pk(), w.start_ms), serde_json::json!({"count": m.count, "late": m.late, "declined": m.declined, "sum": m.total_sum(), "min": m.currencies.values().map(|c| c.min).min(), "max": m.currencies.values().map(|c| c.max).max()})))
            .collect();
        let expected_path = dir.join(name.replace(".json", ".expected.json"));
        let actual = serde_json::json!({"response": serde_json::to_value(&report.response).unwrap(), "late": report.late, "windows": actual});
        if std::env::var_os("SHARDLINE_BLESS").is_some() {
            std::fs::write(
                &expected_path,
                serde_json::to_string_pretty(&actual).unwrap() + "\n",
            )
            .unwrap();
        }
        let expected: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&expected_path).unwrap()).unwrap();
        assert_eq!(actual, expected, "{name}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// Several shards, random batches, duplicate deliveries (Kinesis redeliveries and a
    /// producer's double sends), failures with replays from the reported record, shards
    /// interleaved arbitrarily: the stored aggregates equal a recomputation from the
    /// deduplicated events (no lateness here, so every event counts).
    #[test]
    fn any_split_replay_or_interleaving_gives_the_recomputed_aggregates(
        events in prop::collection::vec((0usize..3, 0usize..6, 0usize..4, 1i64..50_000, 0i64..400_000), 1..50),
        cuts in prop::collection::vec(1usize..12, 1..6),
        order in prop::collection::vec(0usize..3, 1..40),
        faults in prop::collection::vec(0u32..3, 1..5),
        dup_every in 2usize..5,
        producer_dups in prop::collection::vec(any::<bool>(), 50),
    ) {
        // Some events are sent twice by the producer: same event, next sequence number.
        let recs_by_shard: Vec<Vec<InRecord<Txn>>> = (0..3).map(|s| {
            events.iter().enumerate().filter(|(_, e)| e.0 == s).flat_map(|(i, (_, card, m, amt, dt))| {
                let t = txn(i, *card, *m, *amt, T0 + dt);
                let mut out = vec![rec(s, i * 10, t.clone())];
                if producer_dups[i] {
                    out.push(rec(s, i * 10 + 5, t));
                }
                out
            }).collect()
        }).collect();
        let distinct: Vec<Txn> = events.iter().enumerate().map(|(i, (_, card, m, amt, dt))| txn(i, *card, *m, *amt, T0 + dt)).collect();
        let all: Vec<&Txn> = distinct.iter().collect();
        let expected = recompute(&all, &test_windows());

        let world = World::default();
        let agg = world.agg(i64::MAX / 4);
        let rt = rt();
        let mut start = [0usize; 3];
        let mut retrying = [false; 3];
        let mut step = 0;
        while (0..3).any(|s| start[s] < recs_by_shard[s].len()) {
            let s = (order[step % order.len()] + step / order.len()) % 3;
            step += 1;
            prop_assert!(step < 2_000, "no progress");
            let recs = &recs_by_shard[s];
            if start[s] >= recs.len() { continue; }
            let end = (start[s] + cuts[step % cuts.len()]).min(recs.len());
            world.windows.faults.fail_next(if retrying[s] { 0 } else { faults[step % faults.len()] });
            let report = rt.block_on(agg.handle_records(&recs[start[s]..end], None));
            if step % dup_every == 0 {
                world.windows.faults.fail_next(0);
                rt.block_on(agg.handle_records(&recs[start[s]..end], None));
            }
            match report.response.batch_item_failures.first().and_then(|f| f.item_identifier.clone()) {
                Some(seq) => { start[s] = recs.iter().position(|r| r.meta.pos.seq.to_string() == seq).unwrap(); retrying[s] = true; }
                None => { start[s] = end; retrying[s] = false; }
            }
        }
        assert_same(&world.totals(), &expected);
    }

    /// With lateness on and events out of order, nothing is lost: per width, stored plus
    /// late equals the events, and any batching gives the one-batch result.
    #[test]
    fn late_accounting_holds_under_any_batching(
        dts in prop::collection::vec(0i64..1_800_000, 1..40),
        cuts in prop::collection::vec(1usize..10, 1..5),
    ) {
        let recs: Vec<InRecord<Txn>> = dts.iter().enumerate().map(|(i, dt)| rec(0, i, txn(i, i % 3, i % 2, 100, T0 + dt))).collect();
        let one = World::default();
        rt().block_on(one.agg(120_000).handle_records(&recs, None));
        let split = World::default();
        let agg = split.agg(120_000);
        let mut start = 0;
        let mut k = 0;
        while start < recs.len() {
            let end = (start + cuts[k % cuts.len()]).min(recs.len());
            rt().block_on(agg.handle_records(&recs[start..end], None));
            start = end;
            k += 1;
        }
        let (a, b) = (one.totals(), split.totals());
        prop_assert_eq!(a.iter().map(|(w, m)| (w.clone(), m.count, m.late)).collect::<Vec<_>>(), b.iter().map(|(w, m)| (w.clone(), m.count, m.late)).collect::<Vec<_>>());
        for width in [MINUTE_MS, 5 * MINUTE_MS, 15 * MINUTE_MS] {
            let n: u64 = b.iter().filter(|(w, _)| w.key == "global" && w.width_ms == width).map(|(_, m)| m.count + m.late).sum();
            prop_assert_eq!(n as usize, recs.len());
        }
        prop_assert_eq!(split.quarantine.entries().len(), one.quarantine.entries().len());
    }
}

// ---------- Lambda tumbling-window mode ----------

use window_aggregator::tumbling::{STATE_KEY, TumblingResponse, TumblingState};

/// Runs the three tumbling fixtures as Lambda would, carrying the state from each
/// response into the next event; `replay` re-sends each invocation once more with the
/// state it was first given (a retry after a lost response).
fn run_tumbling(world: &World, max_state: usize, replay: bool) -> Vec<TumblingResponse> {
    let agg = world.agg(120_000);
    let mut state = serde_json::json!({});
    let mut out = Vec::new();
    for name in ["tumbling-1", "tumbling-2", "tumbling-3-final"] {
        let mut ev: serde_json::Value =
            serde_json::from_slice(&fixture_bytes(&format!("window-aggregator/{name}.json")))
                .unwrap();
        ev["state"] = state.clone();
        let payload = serde_json::to_vec(&ev).unwrap();
        if replay {
            rt().block_on(agg.handle_time_window_limited(&payload, None, max_state))
                .unwrap();
        }
        let resp = rt()
            .block_on(agg.handle_time_window_limited(&payload, None, max_state))
            .unwrap();
        assert!(resp.batch_item_failures.is_empty());
        state = serde_json::to_value(&resp.state).unwrap();
        out.push(resp);
    }
    out
}

fn tumbling_totals(world: &World) -> BTreeMap<String, (u64, i64, bool)> {
    let mut out: BTreeMap<String, (u64, i64, bool)> = BTreeMap::new();
    for p in world.windows.partials() {
        let e = out.entry(p.pk.clone()).or_insert((0, 0, true));
        e.0 += p.metrics.count;
        e.1 += p.metrics.total_sum();
        e.2 &= p.is_final;
    }
    out
}

#[test]
fn tumbling_mode_carries_typed_state_and_flushes_on_the_final_invoke() {
    let world = World::default();
    let resps = run_tumbling(&world, 900_000, false);
    let s1: TumblingState = serde_json::from_str(&resps[0].state[STATE_KEY]).unwrap();
    assert_eq!(s1.keys["global"].count, 5, "state carries the first five");
    let parts = world.windows.partials();
    assert_eq!(
        parts.len(),
        3,
        "one item per key: nothing was spilled before the final invoke"
    );
    assert!(parts.iter().all(|p| p.is_final));
    let totals = tumbling_totals(&world);
    let expected: BTreeMap<String, (u64, i64, bool)> = BTreeMap::from([
        (
            "global#1m".to_owned(),
            (12, (0..12).map(|k| 1_000 + k).sum(), true),
        ),
        (
            "merchant:m-tw-0#1m".to_owned(),
            (
                6,
                (0..12).filter(|k| k % 2 == 0).map(|k| 1_000 + k).sum(),
                true,
            ),
        ),
        (
            "merchant:m-tw-1#1m".to_owned(),
            (
                6,
                (0..12).filter(|k| k % 2 == 1).map(|k| 1_000 + k).sum(),
                true,
            ),
        ),
    ]);
    assert_eq!(totals, expected);
    let last: TumblingState = serde_json::from_str(&resps[2].state[STATE_KEY]).unwrap();
    assert!(last.keys.is_empty());
}

#[test]
fn tumbling_state_over_the_limit_spills_and_retries_do_not_double_count() {
    let plain = World::default();
    run_tumbling(&plain, 900_000, false);
    // A tiny limit forces a spill at every invocation; every invocation is also retried.
    let spilled = World::default();
    let resps = run_tumbling(&spilled, 10, true);
    assert!(
        spilled.windows.partials().len() > plain.windows.partials().len(),
        "several spill items per key"
    );
    let s: TumblingState = serde_json::from_str(&resps[2].state[STATE_KEY]).unwrap();
    assert_eq!(s.spills, 3);
    let mut totals = tumbling_totals(&spilled);
    for v in totals.values_mut() {
        v.2 = true; // earlier spills are not final items; the totals are what matters
    }
    assert_eq!(totals, tumbling_totals(&plain));
}
