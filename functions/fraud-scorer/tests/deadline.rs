//! fraud-scorer against the Lambda deadline: slow, failing stores under the batch-level
//! reads and writes (the prefetch's BatchGetItems, the alerts' BatchWriteItems) must not
//! keep the invocation past its deadline. A timed-out invocation is retried whole (and
//! counts against MaximumRetryAttempts), so the handler answers in time with the records
//! reported for retry instead, and the retry completes them exactly once
//! (<https://docs.aws.amazon.com/lambda/latest/dg/services-kinesis-errors.html>).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fraud_scorer::{Report, Scorer, ScorerSettings, Stores};
use shardline_core::StoreError;
use shardline_core::alert::Alert;
use shardline_core::batch::{BatchConfig, RetryPolicy};
use shardline_core::event::{AuthResult, Channel, Location};
use shardline_core::fraud::profile::CardProfile;
use shardline_core::ports::{AlertSink, BatchRead, NoAlertStream, NoRuleSource, ProfileStore, Put};
use shardline_core::{InRecord, RecordMeta, RecordPos, SeqNo, Txn};
use shardline_testkit::{MemAlerts, MemProfiles, MemQuarantine};
use tokio::time::Instant;

/// What each slow call costs before it fails.
const SLOW: Duration = Duration::from_millis(150);
/// Time kept in hand before the deadline (the batch config's margin).
const MARGIN: Duration = Duration::from_millis(300);
/// Time the invocation has: a few round trips of the slow store.
const BUDGET: Duration = Duration::from_millis(1000);

/// Profiles whose reads, while `sick`, fail: a batch read after hanging for [`SLOW`] (a
/// throttled or stuck BatchGetItem), a single read at once.
#[derive(Default)]
struct SickProfiles {
    inner: MemProfiles,
    sick: AtomicBool,
}

impl ProfileStore for SickProfiles {
    async fn get_profiles(&self, cards: &[String]) -> Result<BatchRead<CardProfile>, StoreError> {
        if self.sick.load(Ordering::SeqCst) {
            tokio::time::sleep(SLOW).await;
            return Err(StoreError::transient("injected: batch read timed out"));
        }
        self.inner.get_profiles(cards).await
    }

    async fn get_profile(&self, card: &str) -> Result<Option<CardProfile>, StoreError> {
        if self.sick.load(Ordering::SeqCst) {
            return Err(StoreError::transient("injected: read throttled"));
        }
        self.inner.get_profile(card).await
    }

    async fn put_profile(
        &self,
        profile: &CardProfile,
        expected: Option<u64>,
    ) -> Result<Put, StoreError> {
        self.inner.put_profile(profile, expected).await
    }
}

/// Alerts whose writes, while `sick`, hang for [`SLOW`] and then fail.
#[derive(Default)]
struct SickAlerts {
    inner: MemAlerts,
    sick: AtomicBool,
}

impl AlertSink for SickAlerts {
    async fn put_alerts(&self, alerts: &[Alert]) -> Result<(), StoreError> {
        if self.sick.load(Ordering::SeqCst) {
            tokio::time::sleep(SLOW).await;
            return Err(StoreError::transient("injected: batch write timed out"));
        }
        self.inner.put_alerts(alerts).await
    }
}

#[derive(Default)]
struct World {
    profiles: SickProfiles,
    alerts: SickAlerts,
    quarantine: MemQuarantine,
}

type SickScorer<'a> =
    Scorer<&'a SickProfiles, &'a SickAlerts, &'a MemQuarantine, NoRuleSource, NoAlertStream>;

impl World {
    /// The deployed retry policy, with [`MARGIN`]; `threshold` overrides the rules'.
    fn scorer(&self, threshold: Option<u32>) -> SickScorer<'_> {
        let mut settings = ScorerSettings::default();
        settings.threshold_override = threshold;
        settings.batch = BatchConfig {
            retry: RetryPolicy::default(),
            deadline_margin: MARGIN,
            ..settings.batch
        };
        Scorer::new(
            Stores {
                profiles: &self.profiles,
                alerts: &self.alerts,
                quarantine: &self.quarantine,
                rules: NoRuleSource,
                stream: NoAlertStream,
            },
            settings,
        )
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

const T0: i64 = 1_795_000_000_000;

fn txn(i: usize, card: usize, amount: i64) -> Txn {
    Txn {
        card_bin: None,
        event_id: format!("e{i}"),
        card_token: format!("tok_{card}"),
        merchant_id: format!("m{}", i % 7),
        mcc: 5411,
        amount_minor: amount,
        currency: "USD".into(),
        event_time_ms: T0 + i as i64 * 1_000,
        location: Location {
            lat: 40.0,
            lon: -74.0,
            country: "US".into(),
        },
        channel: Channel::Pos,
        auth_result: AuthResult::Approved,
    }
}

/// `n` records over `cards` cards, in sequence order on one shard, keyed by card.
fn batch(n: usize, cards: usize) -> Vec<InRecord<Txn>> {
    (0..n)
        .map(|i| {
            let t = txn(i, i % cards, 1_000 + (i as i64 % 13) * 100);
            InRecord {
                meta: RecordMeta {
                    shard_id: Arc::from("shardId-000000000000"),
                    pos: RecordPos::plain(
                        SeqNo::parse(&format!("49590338271490256608559692{i:030}")).unwrap(),
                    ),
                    partition_key: t.card_token.clone(),
                    lane_key: None,
                    arrival_ms: t.event_time_ms,
                },
                body: Ok(t),
            }
        })
        .collect()
}

fn failure(report: &Report) -> Option<String> {
    report
        .response
        .batch_item_failures
        .first()
        .and_then(|f| f.item_identifier.clone())
}

/// Profiles and alerts of one delivery with healthy stores and no deadline.
fn one_clean_delivery(
    recs: &[InRecord<Txn>],
    threshold: Option<u32>,
) -> (BTreeMap<String, CardProfile>, BTreeMap<String, Alert>) {
    let world = World::default();
    let report = rt().block_on(world.scorer(threshold).handle_records(recs, None));
    assert_eq!(failure(&report), None);
    (
        world.profiles.inner.snapshot(),
        world.alerts.inner.snapshot(),
    )
}

/// Runs `recs` against a sick store with [`BUDGET`] left, checks the invocation answered
/// in time with the whole batch reported, then retries it (as Lambda does, from the
/// reported record) with healthy stores and checks the result is one clean delivery's.
fn answers_in_time_then_retry_completes(
    world: &World,
    recs: &[InRecord<Txn>],
    threshold: Option<u32>,
) {
    let scorer = world.scorer(threshold);
    let rt = rt();
    let deadline = Instant::now() + BUDGET;
    let report = rt.block_on(scorer.handle_records(recs, Some(deadline)));
    let answered = Instant::now();
    assert!(
        answered < deadline,
        "answered {:?} after the deadline",
        answered - deadline
    );
    assert_eq!(
        failure(&report),
        Some(recs[0].meta.pos.seq.to_string()),
        "the retry point is the lowest sequence number"
    );
    assert!(
        world.profiles.inner.snapshot().is_empty(),
        "no profile was committed"
    );

    world.profiles.sick.store(false, Ordering::SeqCst);
    world.alerts.sick.store(false, Ordering::SeqCst);
    let report = rt.block_on(scorer.handle_records(recs, Some(Instant::now() + 5 * BUDGET)));
    assert_eq!(failure(&report), None, "the retry completes");
    let (profiles, alerts) = one_clean_delivery(recs, threshold);
    assert_eq!(world.profiles.inner.snapshot(), profiles);
    assert_eq!(world.alerts.inner.snapshot(), alerts);
}

#[test]
fn slow_failing_profile_batch_reads_answer_before_the_deadline() {
    // 60 records over 20 cards: one BatchGetItem per attempt, each hanging 150 ms then
    // failing; five attempts with backoff would take 2.5 s of a 1 s budget.
    let recs = batch(60, 20);
    let world = World::default();
    world.profiles.sick.store(true, Ordering::SeqCst);
    answers_in_time_then_retry_completes(&world, &recs, None);
}

#[test]
fn slow_failing_bulk_alert_writes_answer_before_the_deadline() {
    // Every event alerts (threshold 0): 300 alerts in 12 BatchWriteItems, each hanging
    // 150 ms then failing, 1.8 s in a row, then each card's own write again.
    let recs = batch(300, 300);
    let world = World::default();
    world.alerts.sick.store(true, Ordering::SeqCst);
    answers_in_time_then_retry_completes(&world, &recs, Some(0));
}
