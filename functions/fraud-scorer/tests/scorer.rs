//! fraud-scorer with in-memory stores: golden fixtures, exactly-once under replays,
//! DynamoDB request counts, failure handling, and no card number in the logs.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use fraud_scorer::{Report, Scorer, ScorerSettings, Stores};
use proptest::prelude::*;
use serde_json::{Value, json};
use shardline_core::StoreError;
use shardline_core::alert::Alert;
use shardline_core::batch::{BatchConfig, RetryPolicy};
use shardline_core::event::{AuthResult, Channel, Location};
use shardline_core::fraud::profile::CardProfile;
use shardline_core::fraud::rules::{Outcome, RuleSet};
use shardline_core::ports::{AlertStream, RuleSource};
use shardline_core::{InRecord, RecordMeta, RecordPos, SeqNo, Txn};
use shardline_testkit::{MemAlerts, MemProfiles, MemQuarantine, fixture_bytes, repo_root};

type MemScorer<'a> =
    Scorer<&'a MemProfiles, &'a MemAlerts, &'a MemQuarantine, TestRules, &'a Published>;

/// Rule sets as a config table would return them: each load takes the next answer of
/// `live` (the last one repeats); `None` is "nothing stored", a string is the stored JSON
/// (which may not load).
#[derive(Clone, Default)]
struct TestRules {
    live: Arc<Mutex<Vec<Option<&'static str>>>>,
    shadow: Option<&'static str>,
}

impl TestRules {
    fn of(live: &'static str, shadow: Option<&'static str>) -> Self {
        Self {
            live: Arc::new(Mutex::new(vec![Some(live)])),
            shadow,
        }
    }
}

fn load(json: Option<&str>) -> Result<Option<RuleSet>, StoreError> {
    json.map(|j| RuleSet::from_json(j).map_err(|e| StoreError::fatal(e.to_string())))
        .transpose()
}

impl RuleSource for TestRules {
    async fn load_rules(&self) -> Result<Option<RuleSet>, StoreError> {
        let next = {
            let mut v = self.live.lock().unwrap();
            if v.len() > 1 {
                v.remove(0)
            } else {
                v.first().copied().flatten()
            }
        };
        load(next)
    }

    async fn load_shadow_rules(&self) -> Result<Option<RuleSet>, StoreError> {
        load(self.shadow)
    }
}

/// The output stream: what was published.
#[derive(Default)]
struct Published(Mutex<Vec<Alert>>);

impl AlertStream for &Published {
    async fn publish(&self, alerts: &[Alert]) -> Result<(), StoreError> {
        self.0.lock().unwrap().extend_from_slice(alerts);
        Ok(())
    }
}

#[derive(Default)]
struct World {
    profiles: MemProfiles,
    alerts: MemAlerts,
    quarantine: MemQuarantine,
    rules: TestRules,
    published: Published,
}

impl World {
    fn with_rules(rules: TestRules) -> Self {
        Self {
            rules,
            ..Self::default()
        }
    }
}

/// A rule set that decides something on most events: every outcome, from an allow
/// rule, a block list, review actions and both thresholds.
const DECISION_RULES: &str = r#"{
  "version": "decisions", "thresholds": {"review": 300, "block": 700},
  "lists": {"blocked": {"kind": "card", "values": ["tok_3"]}},
  "rules": [
    {"id": "vip", "when": "card == 'tok_5' and amount_minor < 1000", "action": "allow", "reason": "VIP"},
    {"id": "blocked", "when": "card in @blocked", "action": "block", "reason": "BLOCKED"},
    {"id": "big", "when": "amount_minor >= 100_000", "score": 300, "reason": "BIG"},
    {"id": "fast", "when": "count_1m >= 2 or count_1h >= 4", "score": 400, "reason": "FAST"},
    {"id": "tiny", "when": "amount_minor <= 200", "action": "review", "reason": "TINY"},
    {"id": "declined", "when": "auth_result == 'declined'", "score": 100, "reason": "DECLINED", "shadow": true}
  ]
}"#;

/// A shadow rule set that disagrees with [`DECISION_RULES`] on some events.
const SHADOW_RULES: &str = r#"{
  "version": "shadow-1", "thresholds": {"review": 100},
  "rules": [{"id": "repeat", "when": "count_1h >= 3", "score": 100, "reason": "REPEAT"}]
}"#;

impl World {
    fn scorer(&self) -> MemScorer<'_> {
        self.scorer_with(test_settings())
    }

    fn scorer_with(&self, settings: ScorerSettings) -> MemScorer<'_> {
        Scorer::new(
            Stores {
                profiles: &self.profiles,
                alerts: &self.alerts,
                quarantine: &self.quarantine,
                rules: self.rules.clone(),
                stream: &self.published,
            },
            settings,
        )
    }
}

fn test_settings() -> ScorerSettings {
    {
        let mut settings = ScorerSettings::default();
        settings.batch = BatchConfig {
            retry: RetryPolicy {
                max_attempts: 3,
                initial_backoff: std::time::Duration::from_millis(1),
                max_backoff: std::time::Duration::from_millis(2),
            },
            ..settings.batch
        };
        // Every invocation asks the rule source (tests change what it holds).
        settings.rules_ttl = std::time::Duration::ZERO;
        settings
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The golden comparison: alert ids, reasons, scores within the tolerance; quarantined
/// sequence numbers and reasons; the batch response.
fn check_golden(name: &str) {
    let world = World::default();
    let scorer = world.scorer();
    let payload = fixture_bytes(&format!("fraud-scorer/{name}.json"));
    let report = rt().block_on(scorer.handle(&payload, None)).unwrap();
    let actual = summary(&report, &world.alerts.snapshot(), &world.quarantine);
    let golden_path = repo_root().join(format!("events/fraud-scorer/{name}.expected.json"));
    if std::env::var_os("SHARDLINE_BLESS").is_some() {
        std::fs::write(
            &golden_path,
            serde_json::to_string_pretty(&actual).unwrap() + "\n",
        )
        .unwrap();
    }
    let golden: Value = serde_json::from_slice(&std::fs::read(&golden_path).unwrap()).unwrap();
    compare_golden(name, &golden, &actual);
}

fn summary(report: &Report, alerts: &BTreeMap<String, Alert>, q: &MemQuarantine) -> Value {
    let mut quarantined: Vec<Value> = q
        .entries()
        .iter()
        .map(|e| json!({"sequence_number": e.sequence_number, "reason": e.reason_text}))
        .collect();
    quarantined.sort_by_key(|v| v["sequence_number"].as_str().unwrap_or_default().to_owned());
    json!({
        "score_tolerance": 25,
        "response": serde_json::to_value(&report.response).unwrap(),
        "alerts": alerts.values().map(|a| json!({"alert_id": a.alert_id, "score": a.score, "reasons": a.reasons})).collect::<Vec<_>>(),
        "quarantined": quarantined,
    })
}

fn compare_golden(name: &str, golden: &Value, actual: &Value) {
    assert_eq!(golden["response"], actual["response"], "{name}: response");
    assert_eq!(
        golden["quarantined"], actual["quarantined"],
        "{name}: quarantine"
    );
    let tol = golden["score_tolerance"].as_i64().unwrap();
    let (g, a) = (
        golden["alerts"].as_array().unwrap(),
        actual["alerts"].as_array().unwrap(),
    );
    let ids = |v: &Vec<Value>| v.iter().map(|x| x["alert_id"].clone()).collect::<Vec<_>>();
    assert_eq!(ids(g), ids(a), "{name}: alert ids");
    for (ga, aa) in g.iter().zip(a) {
        assert_eq!(
            ga["reasons"], aa["reasons"],
            "{name}: reasons of {}",
            ga["alert_id"]
        );
        let d = ga["score"].as_i64().unwrap() - aa["score"].as_i64().unwrap();
        assert!(
            d.abs() <= tol,
            "{name}: score of {} off by {d}",
            ga["alert_id"]
        );
    }
}

#[test]
fn golden_clean_traffic_raises_nothing() {
    check_golden("clean");
}
#[test]
fn golden_velocity_burst() {
    check_golden("velocity-burst");
}
#[test]
fn golden_impossible_travel() {
    check_golden("impossible-travel");
}
#[test]
fn golden_card_testing() {
    check_golden("card-testing");
}
#[test]
fn golden_new_country() {
    check_golden("new-country");
}
#[test]
fn golden_poison_batch() {
    check_golden("poison");
}
#[test]
fn golden_kpl_aggregated() {
    check_golden("kpl-aggregated");
}

#[test]
fn replaying_a_fixture_changes_nothing() {
    let world = World::default();
    let scorer = world.scorer();
    let payload = fixture_bytes("fraud-scorer/velocity-burst.json");
    let rt = rt();
    rt.block_on(scorer.handle(&payload, None)).unwrap();
    let (p1, a1) = (world.profiles.snapshot(), world.alerts.snapshot());
    world.profiles.calls.reset();
    let again = rt.block_on(scorer.handle(&payload, None)).unwrap();
    assert_eq!(again.replayed, 12);
    assert_eq!(world.profiles.snapshot(), p1);
    assert_eq!(world.alerts.snapshot(), a1);
    assert_eq!(
        world.profiles.calls.snapshot().2,
        0,
        "a pure replay writes nothing"
    );
}

// ---------- request counts ----------

const T0: i64 = 1_795_000_000_000;

fn txn(i: usize, card: usize, merchant: usize, amount: i64, t: i64) -> Txn {
    Txn {
        card_bin: None,
        event_id: format!("e{i}"),
        card_token: format!("tok_{card}"),
        merchant_id: format!("m{merchant}"),
        mcc: 5411,
        amount_minor: amount,
        currency: "USD".into(),
        event_time_ms: t,
        location: Location {
            lat: 40.0 + (card % 5) as f64 * 0.01,
            lon: -74.0,
            country: "US".into(),
        },
        channel: Channel::Pos,
        auth_result: if i % 17 == 0 {
            AuthResult::Declined
        } else {
            AuthResult::Approved
        },
    }
}

fn rec(shard: &str, seq: usize, t: Txn) -> InRecord<Txn> {
    InRecord {
        meta: RecordMeta {
            shard_id: Arc::from(shard),
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

#[test]
fn one_read_per_hundred_cards_and_one_write_per_card() {
    // 1,000 records over 250 cards; card testing on a few so alerts exist.
    let recs: Vec<InRecord<Txn>> = (0..1000)
        .map(|i| {
            let card = (i * 7919) % 250;
            let amount = if card < 5 {
                100
            } else {
                2_000 + (i as i64 % 50) * 10
            };
            rec(
                "shardId-000000000000",
                i,
                txn(i, card, i % 40, amount, T0 + i as i64 * 100),
            )
        })
        .collect();
    let world = World::default();
    let report = rt().block_on(world.scorer().handle_records(&recs, None));
    assert!(report.alerts > 0);
    let (bg, g, p, _) = world.profiles.calls.snapshot();
    let alert_writes = world.alerts.calls.snapshot().3;
    assert_eq!(bg, 3, "ceil(250 / 100) batch reads");
    assert_eq!(
        g, 0,
        "no single reads without unprocessed keys or conflicts"
    );
    assert_eq!(p, 250, "one conditional write per card");
    assert_eq!(
        alert_writes as usize,
        report.alerts.div_ceil(25),
        "alerts in batches of 25"
    );
    assert!(report.response.batch_item_failures.is_empty());
}

#[test]
fn unprocessed_keys_are_asked_again() {
    let recs: Vec<InRecord<Txn>> = (0..10)
        .map(|i| rec("shardId-000000000000", i, txn(i, i, 1, 1_000, T0)))
        .collect();
    let world = World::default();
    world.profiles.force(CardProfile {
        version: 3,
        txn_count: 9,
        ..CardProfile::new("tok_4")
    });
    *world.profiles.unprocessed_once.lock().unwrap() = vec!["tok_4".into(), "tok_7".into()];
    rt().block_on(world.scorer().handle_records(&recs, None));
    let (bg, g, p, _) = world.profiles.calls.snapshot();
    assert_eq!((bg, g, p), (2, 0, 10));
    let stored = world.profiles.snapshot();
    assert_eq!(
        stored["tok_4"].txn_count, 10,
        "the retried read saw the stored profile"
    );
    assert_eq!(stored["tok_4"].version, 4);
}

// ---------- failures ----------

#[test]
fn transient_store_failure_is_retried_then_reported_and_the_retry_completes() {
    let recs: Vec<InRecord<Txn>> = (0..6)
        .map(|i| {
            rec(
                "shardId-000000000000",
                i,
                txn(i, i % 2, 1, 1_000, T0 + i as i64),
            )
        })
        .collect();
    let world = World::default();
    let scorer = world.scorer();
    world.profiles.faults.fail_next(1000);
    let rt = rt();
    let failed = rt.block_on(scorer.handle_records(&recs, None));
    let lowest = recs[0].meta.pos.seq.to_string();
    assert_eq!(failed.response.batch_item_failures.len(), 1);
    assert_eq!(
        failed.response.batch_item_failures[0]
            .item_identifier
            .as_deref(),
        Some(lowest.as_str())
    );
    // Lambda retries from that record; the store is back.
    world.profiles.faults.fail_next(0);
    let ok = rt.block_on(scorer.handle_records(&recs, None));
    assert!(ok.response.batch_item_failures.is_empty());
    assert_eq!(world.profiles.snapshot()["tok_0"].txn_count, 3);
}

#[test]
fn a_concurrent_writer_is_not_lost() {
    let recs: Vec<InRecord<Txn>> = (0..3)
        .map(|i| {
            rec(
                "shardId-000000000001",
                i,
                txn(i, 0, 1, 1_000, T0 + i as i64),
            )
        })
        .collect();
    let world = World::default();
    let scorer = world.scorer();
    let rt = rt();
    // Another shard (after a reshard) wrote the card between our read and our write:
    // simulate by writing version 1 with an event from shard 0 after prefetch.
    world.profiles.force(CardProfile {
        version: 1,
        txn_count: 1,
        ..CardProfile::new("tok_0")
    });
    let done = rt.block_on(scorer.handle_records(&recs, None));
    assert!(done.response.batch_item_failures.is_empty());
    let p = &world.profiles.snapshot()["tok_0"];
    assert_eq!(p.txn_count, 4, "the other writer's event and ours");
    assert_eq!(p.version, 2);
    // A real race: another writer lands between our read and our conditional write.
    let recs2: Vec<InRecord<Txn>> = (3..5)
        .map(|i| {
            rec(
                "shardId-000000000001",
                i,
                txn(i, 0, 1, 1_000, T0 + i as i64),
            )
        })
        .collect();
    let mut other = p.clone();
    other.update(&txn(99, 0, 2, 5_000, T0));
    other.version = 3;
    *world.profiles.race_once.lock().unwrap() = Some(other);
    world.profiles.calls.reset();
    let done = rt.block_on(scorer.handle_records(&recs2, None));
    assert!(done.response.batch_item_failures.is_empty());
    let p = &world.profiles.snapshot()["tok_0"];
    assert_eq!(p.txn_count, 7, "4 before, the other writer's 1, our 2");
    assert_eq!(p.version, 4);
    assert_eq!(
        world.profiles.calls.snapshot(),
        (1, 1, 2, 0),
        "conflict: one re-read, one more write"
    );
}

// ---------- logs ----------

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn logs_and_quarantine_never_carry_a_card_number() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let world = World::default();
    world.quarantine.faults.fail_next(1); // exercise the warn path too
    tracing::subscriber::with_default(subscriber, || {
        let payload = fixture_bytes("fraud-scorer/poison.json");
        rt().block_on(world.scorer().handle(&payload, None))
            .unwrap();
    });
    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    let entries = serde_json::to_string(&world.quarantine.entries()).unwrap();
    for text in [&logs, &entries] {
        assert!(
            !text.contains("4111111111111111"),
            "card number leaked: {text}"
        );
    }
    let pan_entry = world
        .quarantine
        .entries()
        .into_iter()
        .find(|e| e.reason_text.contains("clear card number"))
        .unwrap();
    assert_eq!(pan_entry.partition_key, "[redacted]");
    assert!(pan_entry.data_base64.is_empty());
}

// ---------- exactly once ----------

/// One clean in-order pass over every record, in one batch per shard position.
fn clean_pass(
    recs: &[InRecord<Txn>],
    rules: &TestRules,
) -> (BTreeMap<String, CardProfile>, BTreeMap<String, Alert>) {
    let world = World::with_rules(rules.clone());
    rt().block_on(world.scorer().handle_records(recs, None));
    (world.profiles.snapshot(), world.alerts.snapshot())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Random batches with duplicate deliveries, failures at random positions and
    /// replays from the reported record: the final state (profiles, and decision
    /// records of every outcome, live and shadow) equals one clean pass.
    #[test]
    fn any_split_replay_or_duplicate_gives_the_clean_result(
        events in prop::collection::vec((0usize..6, 0usize..8, prop_oneof![Just(120i64), 500i64..5_000, 100_000i64..400_000], 0i64..90_000), 1..60),
        cuts in prop::collection::vec(1usize..20, 1..8),
        faults in prop::collection::vec(0u32..3, 1..8),
        dup_every in 2usize..7,
        decisions: bool,
    ) {
        let rules = if decisions {
            TestRules::of(DECISION_RULES, Some(SHADOW_RULES))
        } else {
            TestRules::default()
        };
        let mut t = T0;
        let recs: Vec<InRecord<Txn>> = events.iter().enumerate().map(|(i, (card, m, amt, dt))| {
            t += dt;
            rec("shardId-000000000000", i, txn(i, *card, *m, *amt, t))
        }).collect();
        let expected = clean_pass(&recs, &rules);

        let world = World::with_rules(rules.clone());
        let scorer = world.scorer();
        let rt = rt();
        let mut start = 0;
        let mut step = 0;
        let mut retrying = false;
        while start < recs.len() {
            let end = (start + cuts[step % cuts.len()]).min(recs.len());
            // Lambda sends [start, end); sometimes a fault makes part of it fail (not
            // on a retry, so the stream always moves on, as it does once a store recovers).
            world.profiles.faults.fail_next(if retrying { 0 } else { faults[step % faults.len()] * 3 });
            // And the alerts table: a failed bulk write leaves records to each card's commit.
            world.alerts.faults.fail_next(if retrying { 0 } else { faults[step % faults.len()] });
            let report = rt.block_on(scorer.handle_records(&recs[start..end], None));
            // A duplicate delivery of the same batch (at-least-once).
            if step % dup_every == 0 {
                world.profiles.faults.fail_next(0);
                world.alerts.faults.fail_next(0);
                rt.block_on(scorer.handle_records(&recs[start..end], None));
            }
            match report.response.batch_item_failures.first().and_then(|f| f.item_identifier.clone()) {
                // Retry from the lowest failed record, as Lambda does.
                Some(seq) => {
                    start = recs.iter().position(|r| r.meta.pos.seq.to_string() == seq).unwrap();
                    retrying = true;
                }
                None => {
                    start = end;
                    retrying = false;
                }
            }
            step += 1;
            prop_assert!(step < 1_000, "no progress");
        }
        prop_assert_eq!(world.profiles.snapshot().into_iter().map(|(k, mut p)| { p.version = 0; (k, p) }).collect::<BTreeMap<_, _>>(),
                        expected.0.into_iter().map(|(k, mut p)| { p.version = 0; (k, p) }).collect::<BTreeMap<_, _>>());
        prop_assert_eq!(world.alerts.snapshot(), expected.1);
    }
}

// ---------- decisions (issue 11) ----------

fn decision_traffic() -> Vec<InRecord<Txn>> {
    // tok_3 is block-listed; tok_1 makes three quick events (FAST at the second);
    // tok_2 one big one (BIG alone: 300, a review); tok_4 a tiny one (TINY: review);
    // tok_5 a tiny one too, but the allow rule (VIP) ends evaluation.
    let events = [
        (3, 5_000),
        (1, 5_000),
        (1, 5_000),
        (1, 150_000),
        (2, 150_000),
        (4, 150),
        (5, 150),
    ];
    events
        .iter()
        .enumerate()
        .map(|(i, (card, amt))| {
            rec(
                "shardId-000000000000",
                i,
                txn(i + 1, *card, i, *amt, T0 + i as i64 * 1_000),
            )
        })
        .collect()
}

#[test]
fn decision_records_carry_the_outcome_explanation_and_rule_set() {
    let world = World::with_rules(TestRules::of(DECISION_RULES, Some(SHADOW_RULES)));
    let recs = decision_traffic();
    let report = rt().block_on(world.scorer().handle_records(&recs, None));
    let all = world.alerts.snapshot();
    let live: BTreeMap<&str, &Alert> = all
        .iter()
        .filter(|(k, _)| !k.starts_with("shadow:"))
        .map(|(k, a)| (k.as_str(), a))
        .collect();
    let outcome = |id: &str| live.get(id).map(|a| a.outcome);
    assert_eq!(outcome("tok_3/e1"), Some(Outcome::Block));
    assert_eq!(
        outcome("tok_1/e2"),
        None,
        "the first event of tok_1 is allowed"
    );
    assert_eq!(outcome("tok_1/e3"), Some(Outcome::Review), "FAST: 400");
    assert_eq!(outcome("tok_1/e4"), Some(Outcome::Block), "FAST + BIG: 700");
    assert_eq!(outcome("tok_2/e5"), Some(Outcome::Review), "BIG: 300");
    assert_eq!(outcome("tok_4/e6"), Some(Outcome::Review), "TINY");
    assert_eq!(outcome("tok_5/e7"), None, "VIP ends evaluation");
    assert_eq!(live.len(), 5);
    assert_eq!((report.alerts, report.blocked), (5, 2));
    let d = live["tok_1/e4"];
    assert_eq!(
        (d.score, d.reasons.clone()),
        (700, vec!["BIG".to_owned(), "FAST".to_owned()])
    );
    let big = d.rules.iter().find(|r| r.id == "big").unwrap();
    assert_eq!(
        big.values["amount_minor"],
        shardline_core::expr::Value::Number(150_000.0)
    );
    assert_eq!(d.ruleset_version, "decisions");
    assert!(d.ruleset_hash.starts_with("sha256:"));
    assert_eq!(d.card_token.as_deref(), Some("tok_1"));
    // The shadow set's decisions: stored apart, out of the by-card index, not published.
    let shadow: Vec<&Alert> = all
        .iter()
        .filter(|(k, _)| k.starts_with("shadow:"))
        .map(|(_, a)| a)
        .collect();
    assert_eq!(
        shadow
            .iter()
            .map(|a| a.alert_id.as_str())
            .collect::<Vec<_>>(),
        vec!["shadow:tok_1/e4"],
        "REPEAT: the third event of tok_1 in an hour"
    );
    assert!(shadow[0].card_token.is_none());
    assert!(shadow[0].alert_day.starts_with("shadow:"));
    assert_eq!(shadow[0].ruleset_version, "shadow-1");
    let published = world.published.0.lock().unwrap();
    assert_eq!(published.len(), 5);
    assert!(published.iter().all(|a| !a.alert_id.starts_with("shadow:")));
    // The shadow set allows all but tok_1/e4 (a review where the live set blocks): it
    // agrees only on the two events both allow.
    assert_eq!(report.shadow_disagreements, 5);
}

/// A failed bulk write of a chunk holding only shadow records (which carry no card
/// token) leaves their card to write them at its commit: none is lost.
#[test]
fn a_shadow_record_whose_bulk_write_failed_is_written_at_the_commit() {
    let world = World::with_rules(TestRules::of(DECISION_RULES, Some(SHADOW_RULES)));
    // Three events of one card 20 minutes apart: the live set allows them all, the
    // shadow set reviews the third (REPEAT).
    let recs: Vec<InRecord<Txn>> = (0..3)
        .map(|i| {
            rec(
                "shardId-000000000000",
                i,
                txn(i + 1, 9, i, 5_000, T0 + i as i64 * 1_200_000),
            )
        })
        .collect();
    world.alerts.faults.fail_next(1);
    let report = rt().block_on(world.scorer().handle_records(&recs, None));
    assert!(report.response.batch_item_failures.is_empty());
    assert_eq!(report.alerts, 0);
    let all = world.alerts.snapshot();
    assert_eq!(all.keys().collect::<Vec<_>>(), vec!["shadow:tok_9/e3"]);
}

/// A newly published set's lists are loaded at once (not a lists TTL later, when a
/// block list would block nothing), then only every lists TTL.
#[test]
fn a_new_rule_sets_lists_are_loaded_at_once_then_every_ttl() {
    const NO_LISTS: &str = r#"{"version":"plain","thresholds":{"review":900},"rules":[{"id":"x","when":"amount_minor > 1e9","score":1,"reason":"X"}]}"#;
    const LISTED: &str = r#"{"version":"listed","lists":{"blocked":"card"},"rules":[{"id":"b","when":"card in @blocked","action":"block","reason":"BLOCKED"}]}"#;
    let lists = shardline_testkit::MemLists::default();
    lists.set("blocked", shardline_core::lists::ListKind::Card, ["tok_2"]);
    let world = World::with_rules(TestRules {
        live: Arc::new(Mutex::new(vec![Some(NO_LISTS), Some(LISTED)])),
        shadow: None,
    });
    let mut settings = test_settings();
    settings.lists_ttl = std::time::Duration::from_secs(3600);
    let scorer = world.scorer_with(settings).with_lists(&lists);
    let rt = rt();
    let e = |i: usize| {
        vec![rec(
            "shardId-000000000000",
            i,
            txn(i + 1, 2, i, 5_000, T0 + i as i64 * 60_000),
        )]
    };
    assert_eq!(rt.block_on(scorer.handle_records(&e(0), None)).alerts, 0);
    assert_eq!(lists.calls(), 0, "a set without lists asks for none");
    let r = rt.block_on(scorer.handle_records(&e(1), None));
    assert_eq!(
        (r.alerts, r.blocked),
        (1, 1),
        "the new set's list is in force at once"
    );
    assert_eq!(lists.calls(), 1);
    let r = rt.block_on(scorer.handle_records(&e(2), None));
    assert_eq!(r.blocked, 1);
    assert_eq!(lists.calls(), 1, "then cached for the lists TTL");
}

#[test]
fn a_stored_rule_set_that_does_not_load_leaves_the_one_in_force() {
    let rules = TestRules {
        live: Arc::new(Mutex::new(vec![
            Some(DECISION_RULES),
            Some(
                r#"{"version":"broken","rules":[{"id":"r","when":"amount_minor >","score":1,"reason":"R"}]}"#,
            ),
        ])),
        shadow: None,
    };
    let world = World::with_rules(rules);
    let scorer = world.scorer();
    let recs = decision_traffic();
    rt().block_on(scorer.handle_records(&recs[..1], None));
    rt().block_on(scorer.handle_records(&recs[1..], None));
    let all = world.alerts.snapshot();
    assert_eq!(all.len(), 5);
    assert!(all.values().all(|a| a.ruleset_version == "decisions"));
}

// ---------- lanes, races, producer duplicates, alert ids (issue 10) ----------

/// The Kinesis record (plain or a KPL aggregate of `users`) at `seq` under `outer`
/// key, decoded as Lambda's event would be.
fn kinesis_record(shard: &str, seq: usize, outer: &str, users: &[Txn]) -> Vec<InRecord<Txn>> {
    use shardline_core::kpl::{UserRecord, aggregate};
    use shardline_core::record::{RawRecordMeta, decode_record_data};
    let data = if users.len() == 1 && users[0].card_token == outer {
        users[0].to_json().into_bytes()
    } else {
        aggregate(
            &users
                .iter()
                .map(|t| UserRecord {
                    partition_key: t.card_token.clone(),
                    data: t.to_json().into_bytes(),
                })
                .collect::<Vec<_>>(),
        )
    };
    let mut out = Vec::new();
    decode_record_data(
        RawRecordMeta {
            shard_id: Arc::from(shard),
            seq: SeqNo::parse(&format!("49590338271490256608559692{seq:030}")).unwrap(),
            partition_key: outer,
            arrival_ms: users[0].event_time_ms,
        },
        &data,
        &shardline_core::DecodeLimits::default(),
        &mut out,
    );
    out
}

/// Profiles with the bookkeeping (version, guards, id memory) left out: what the
/// records did to each card.
fn card_state(world: &World) -> BTreeMap<String, (u64, i64, usize)> {
    world
        .profiles
        .snapshot()
        .into_iter()
        .map(|(k, p)| {
            let sum: i64 = p.recent.iter().map(|r| r.amt).sum();
            (k, (p.txn_count, sum, p.recent.len()))
        })
        .collect()
}

/// ParallelizationFactor 2 with KPL input: Lambda lanes records by the Kinesis record's
/// partition key, so a card's user record inside an aggregate keyed by another card sits
/// in another lane than the card's own records, and the lanes commit in any order.
#[test]
fn kpl_records_of_one_card_in_two_lanes_are_all_applied() {
    const SHARD: &str = "shardId-000000000000";
    // seq 1: an aggregate keyed by tok_9 holding tok_9's and tok_0's events;
    // seq 2: tok_0's own plain record.
    let lane_b = kinesis_record(
        SHARD,
        1,
        "tok_9",
        &[txn(1, 9, 1, 1_000, T0), txn(2, 0, 2, 2_000, T0 + 10)],
    );
    let lane_a = kinesis_record(SHARD, 2, "tok_0", &[txn(3, 0, 3, 3_000, T0 + 20)]);
    let world = World::default();
    let scorer = world.scorer();
    let rt = rt();
    // Lane A (the later position) commits first, then lane B, then both replay.
    for lane in [&lane_a, &lane_b, &lane_a, &lane_b] {
        let r = rt.block_on(scorer.handle_records(lane, None));
        assert!(r.response.batch_item_failures.is_empty());
    }
    let state = card_state(&world);
    assert_eq!(
        state["tok_0"],
        (2, 5_000, 2),
        "both of tok_0's events, once"
    );
    assert_eq!(state["tok_9"], (1, 1_000, 1));
}

/// A producer that keys records by something other than the card: one card's records
/// under two partition keys of one batch, and another writer wins the first race.
#[test]
fn one_card_under_two_partition_keys_survives_a_lost_race() {
    let mut recs: Vec<InRecord<Txn>> = (0..3)
        .map(|i| {
            rec(
                "shardId-000000000001",
                i,
                txn(i, 0, i, 1_000 + i as i64, T0 + i as i64),
            )
        })
        .collect();
    recs[1].meta.partition_key = "terminal-7".into();
    let world = World::default();
    let mut other = CardProfile::new("tok_0");
    other.update(&txn(99, 0, 9, 5_000, T0 - 1_000));
    other.version = 1;
    *world.profiles.race_once.lock().unwrap() = Some(other);
    let r = rt().block_on(world.scorer().handle_records(&recs, None));
    assert!(r.response.batch_item_failures.is_empty());
    let p = &world.profiles.snapshot()["tok_0"];
    assert_eq!(
        p.txn_count, 4,
        "the other writer's event and all three of ours"
    );
}

/// A producer's re-send (same event, new sequence number) well after the original,
/// with many of the card's events between, on another shard after a reshard.
#[test]
fn producer_duplicate_minutes_later_on_another_shard_is_not_counted_twice() {
    let mut recs: Vec<InRecord<Txn>> = (0..60)
        .map(|i| {
            rec(
                "shardId-000000000000",
                i,
                txn(i, 0, i % 5, 1_000, T0 + i as i64 * 5_000),
            )
        })
        .collect();
    // Five minutes of the card's events later, the re-send of event 0 on a child shard.
    recs.push(rec("shardId-000000000002", 100, txn(0, 0, 0, 1_000, T0)));
    let world = World::default();
    let scorer = world.scorer();
    let rt = rt();
    for chunk in recs.chunks(7) {
        rt.block_on(scorer.handle_records(chunk, None));
    }
    assert_eq!(world.profiles.snapshot()["tok_0"].txn_count, 60);
}

/// The profile's memory of event ids stays bounded however busy a card is.
#[test]
fn event_id_memory_is_bounded() {
    let recs: Vec<InRecord<Txn>> = (0..2_000)
        .map(|i| {
            rec(
                "shardId-000000000000",
                i,
                txn(i, 0, i % 3, 500, T0 + i as i64),
            )
        })
        .collect();
    let world = World::default();
    rt().block_on(world.scorer().handle_records(&recs, None));
    let p = &world.profiles.snapshot()["tok_0"];
    use shardline_core::fraud::profile::{MAX_GUARDS, MAX_SEEN_IDS};
    assert_eq!(p.txn_count, 2_000);
    assert_eq!(
        p.seen_ids.len(),
        16 * MAX_SEEN_IDS,
        "the latest {MAX_SEEN_IDS} ids, 16 bytes each"
    );
    assert!(p.applied.len() <= MAX_GUARDS);
}

/// Two cards whose events share an event id (ids are the producer's, unique per card
/// at best): both alerts are kept, and one BatchWriteItem never holds a key twice.
#[test]
fn alerts_of_two_cards_with_the_same_event_id_are_both_kept() {
    let mk = |i: usize, card: usize, id: &str, lat: f64, t: i64| {
        let mut x = txn(i, card, i, 1_000, t);
        x.event_id = id.into();
        x.location.lat = lat;
        x
    };
    let recs = vec![
        rec("shardId-000000000000", 0, mk(0, 1, "a1", 0.0, T0)),
        rec("shardId-000000000000", 1, mk(1, 2, "a2", 0.0, T0)),
        rec(
            "shardId-000000000000",
            2,
            mk(2, 1, "same", 60.0, T0 + 600_000),
        ),
        rec(
            "shardId-000000000000",
            3,
            mk(3, 2, "same", 60.0, T0 + 600_000),
        ),
    ];
    let world = World::default();
    let r = rt().block_on(world.scorer().handle_records(&recs, None));
    assert!(r.response.batch_item_failures.is_empty());
    let cards: Vec<Option<String>> = world
        .alerts
        .snapshot()
        .values()
        .map(|a| a.card_token.clone())
        .collect();
    assert_eq!(
        cards,
        vec![Some("tok_1".to_owned()), Some("tok_2".to_owned())],
        "one impossible-travel alert per card"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// Any ParallelizationFactor (1 to 10, the range Lambda allows), KPL aggregates
    /// keyed by their first user record's card mixed with plain records: records go to
    /// lanes by the Kinesis record's key as Lambda's do, lanes interleave in any order,
    /// batches fail part way and are delivered twice. Every card ends with each of its
    /// events applied exactly once.
    #[test]
    fn any_parallelization_factor_with_kpl_applies_every_event_once(
        events in prop::collection::vec((0usize..20, 100i64..5_000), 1..200),
        groups in prop::collection::vec(1usize..4, 1..30),
        pf in 1usize..=10,
        schedule in prop::collection::vec(0usize..10, 1..200),
        cut in 1usize..6,
        faults in prop::collection::vec(0u32..3, 1..8),
    ) {
        const SHARD: &str = "shardId-000000000000";
        // 30 s apart (arrival with them): replays of a card's early records reach past
        // the 15 minutes its event-id memory covers, so only the replay guards can catch
        // them, yet stay within the 2 hours after arrival in which Lambda can still send a
        // record (MaximumRecordAgeInSeconds is one hour); with 20 cards a card's records
        // come under more than 8 outer keys.
        let txns: Vec<Txn> = events.iter().enumerate()
            .map(|(i, (card, amt))| txn(i, *card, i % 4, *amt, T0 + i as i64 * 30_000))
            .collect();
        // Kinesis records: runs of 1-3 events, aggregated when longer than one.
        let mut kinesis: Vec<(String, Vec<InRecord<Txn>>)> = Vec::new();
        let (mut i, mut g) = (0, 0);
        while i < txns.len() {
            let n = groups[g % groups.len()].min(txns.len() - i);
            let users = &txns[i..i + n];
            let outer = users[0].card_token.clone();
            let data_users: Vec<Txn> = users.to_vec();
            let recs = if n == 1 {
                kinesis_record(SHARD, kinesis.len(), &outer, &data_users)
            } else {
                // Force aggregation even when the single card equals the key.
                let mut v = kinesis_record(SHARD, kinesis.len(), "agg", &data_users);
                for r in &mut v { r.meta.lane_key = Some(Arc::from(outer.as_str())); }
                v
            };
            kinesis.push((outer, recs));
            i += n;
            g += 1;
        }
        // Lanes by outer key, in order within a lane.
        let mut lanes: Vec<Vec<InRecord<Txn>>> = vec![Vec::new(); pf];
        for (outer, recs) in &kinesis {
            let lane = (shardline_core::window::hll::stable_hash(outer) % pf as u64) as usize;
            lanes[lane].extend(recs.iter().cloned());
        }
        let world = World::default();
        let scorer = world.scorer();
        let rt = rt();
        let mut next: Vec<usize> = vec![0; pf];
        let mut step = 0;
        // Interleave lanes as the schedule says, then drain what is left.
        let order = schedule.iter().copied().chain((0..pf).cycle().take(pf * 200));
        for lane in order {
            let lane = lane % pf;
            let recs = &lanes[lane];
            if next[lane] >= recs.len() { continue; }
            // Whole Kinesis records only: a batch never splits an aggregate.
            let mut end = (next[lane] + cut).min(recs.len());
            while end < recs.len() && recs[end].meta.pos.seq == recs[end - 1].meta.pos.seq { end += 1; }
            world.profiles.faults.fail_next(faults[step % faults.len()]);
            let batch = &recs[next[lane]..end];
            let report = rt.block_on(scorer.handle_records(batch, None));
            world.profiles.faults.fail_next(0);
            if step % 3 == 0 {
                rt.block_on(scorer.handle_records(batch, None));
            }
            next[lane] = match report.response.batch_item_failures.first().and_then(|f| f.item_identifier.clone()) {
                Some(seq) => recs.iter().position(|r| r.meta.pos.seq.to_string() == seq).unwrap(),
                None => end,
            };
            step += 1;
        }
        prop_assert!(next.iter().zip(&lanes).all(|(n, l)| *n >= l.len()), "every lane drained");
        // Late replays of whole lanes (a timeout after the last batch was applied).
        for recs in &lanes {
            for chunk in recs.chunks(cut.max(2)) {
                rt.block_on(scorer.handle_records(chunk, None));
            }
        }
        // Count, and the mean of ln(1 + amount) over every event applied (the profile's
        // running mean): a lost event and a doubled one cannot cancel out.
        let mut expected: BTreeMap<String, (u64, f64)> = BTreeMap::new();
        for t in &txns {
            let e = expected.entry(t.card_token.clone()).or_default();
            e.0 += 1;
            e.1 += (t.amount_minor as f64).ln_1p();
        }
        let got = world.profiles.snapshot();
        prop_assert_eq!(got.len(), expected.len());
        for (card, (n, sum)) in &expected {
            let p = &got[card];
            prop_assert_eq!(p.txn_count, *n, "events of {}", card);
            prop_assert!((p.amt_mean - sum / *n as f64).abs() < 1e-9, "amounts of {}", card);
        }
    }
}

/// `cargo lambda watch` builds the function inside the first invocation's time, so the
/// invocation can start past the deadline it was given: it still does its work (Lambda
/// itself never starts one past its deadline).
#[test]
fn an_invocation_started_past_its_deadline_still_applies_its_records() {
    let recs: Vec<InRecord<Txn>> = (0..5)
        .map(|i| {
            rec(
                "shardId-000000000000",
                i,
                txn(i, 0, 1, 1_000, T0 + i as i64),
            )
        })
        .collect();
    let world = World::default();
    let rt = rt();
    let past =
        rt.block_on(async { tokio::time::Instant::now() - std::time::Duration::from_secs(5) });
    let r = rt.block_on(world.scorer().handle_records(&recs, Some(past)));
    assert!(r.response.batch_item_failures.is_empty());
    assert_eq!(world.profiles.snapshot()["tok_0"].txn_count, 5);
}
