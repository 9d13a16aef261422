//! The batch processor: Kinesis-to-Lambda delivery semantics in one place.
//!
//! Kinesis delivers at least once and in order per shard; with
//! `ReportBatchItemFailures` a handler reports the lowest sequence number whose effect is
//! not durable and Lambda retries from there
//! (<https://docs.aws.amazon.com/lambda/latest/dg/kinesis-batchfailurereporting.html>).
//! This module turns that contract into code every function shares:
//!
//! - records of one partition key run in order; different keys run concurrently (bounded);
//! - poison records go to the [`Quarantine`] and never fail the batch;
//! - transient errors are retried with backoff inside the invocation, within the time
//!   left before the Lambda deadline; then the record is reported;
//! - a key whose record failed does not run its later records (order across retries);
//! - a panic becomes a failure of the record it happened on;
//! - the outcome names the *lowest* failed sequence number, or none.

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use tokio::time::Instant;

use crate::error::{ErrorClass, RecordError};
use crate::ports::{Quarantine, QuarantineEntry};
use crate::record::{InRecord, Poison, RecordMeta};
use crate::seq::SeqNo;

/// Backoff for transient errors inside one invocation.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Attempts per record, the first included.
    pub max_attempts: u32,
    /// Delay before the second attempt; doubles after each failure.
    pub initial_backoff: Duration,
    /// Upper bound on one delay.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    /// The delay after `failures` failed attempts (1-based), capped.
    pub fn backoff(&self, failures: u32) -> Duration {
        let factor = 1u32
            .checked_shl(failures.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

/// How a batch is processed.
#[derive(Clone, Debug)]
pub struct BatchConfig {
    /// Name written into quarantine entries.
    pub function: String,
    /// Partition keys processed at once.
    pub max_concurrency: usize,
    /// Retry of transient errors.
    pub retry: RetryPolicy,
    /// Time kept in hand before the deadline: no retry starts inside it, so the response
    /// is sent before Lambda times the invocation out (which would replay the whole batch).
    pub deadline_margin: Duration,
}

impl BatchConfig {
    /// Defaults for a function of this name.
    pub fn new(function: impl Into<String>) -> Self {
        Self {
            function: function.into(),
            max_concurrency: 32,
            retry: RetryPolicy::default(),
            deadline_margin: Duration::from_millis(500),
        }
    }
}

/// One decodable record handed to an operation.
#[derive(Debug)]
pub struct Item<'a, T> {
    /// Where it came from.
    pub meta: &'a RecordMeta,
    /// The decoded event.
    pub body: &'a T,
}

impl<T> Clone for Item<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Item<'_, T> {}

/// A key run that stopped: every record before `index` is durable, the one at `index`
/// failed with `error`.
#[derive(Debug)]
pub struct KeyFailure {
    /// Index in the slice the operation was given.
    pub index: usize,
    /// What went wrong.
    pub error: RecordError,
}

impl KeyFailure {
    /// The failure of the record at `index`.
    pub fn at(index: usize, error: impl Into<RecordError>) -> Self {
        Self {
            index,
            error: error.into(),
        }
    }
}

/// A record whose effect is not durable after this invocation.
#[derive(Debug)]
pub struct FailedRecord {
    /// Where it came from.
    pub meta: RecordMeta,
    /// The last error.
    pub error: RecordError,
    /// Attempts made.
    pub attempts: u32,
}

/// What happened to a batch.
#[derive(Debug, Default)]
pub struct BatchOutcome {
    /// User records in the batch.
    pub records: usize,
    /// Records whose effect is durable.
    pub succeeded: usize,
    /// Poison records written to the quarantine.
    pub quarantined: usize,
    /// The first failed record of each failed key (and quarantine failures).
    pub failed: Vec<FailedRecord>,
    /// Later records of failed keys, not attempted so that order is kept.
    pub not_attempted: usize,
    /// Retries of transient errors.
    pub retries: u32,
    /// The lowest sequence number whose effect is not durable: Lambda's retry point.
    pub lowest_failure: Option<SeqNo>,
}

impl BatchOutcome {
    /// The `itemIdentifier`s for the partial batch response: the lowest failed sequence
    /// number, or nothing when the whole batch is durable.
    pub fn failure_identifiers(&self) -> Vec<String> {
        self.lowest_failure.iter().map(|s| s.to_string()).collect()
    }

    fn note_failure(&mut self, seq: &SeqNo) {
        if self.lowest_failure.as_ref().is_none_or(|low| seq < low) {
            self.lowest_failure = Some(seq.clone());
        }
    }
}

struct KeyReport {
    succeeded: usize,
    poisoned: Vec<(RecordMeta, Poison)>,
    failed: Option<FailedRecord>,
    not_attempted: usize,
    retries: u32,
}

/// Runs batches against a quarantine with one configuration.
pub struct BatchProcessor<Q> {
    cfg: BatchConfig,
    quarantine: Q,
}

impl<Q: Quarantine> BatchProcessor<Q> {
    /// A processor writing poison records to `quarantine`.
    pub fn new(cfg: BatchConfig, quarantine: Q) -> Self {
        Self { cfg, quarantine }
    }

    /// The configuration.
    pub fn config(&self) -> &BatchConfig {
        &self.cfg
    }

    /// Processes a batch one partition key at a time. `op` gets the pending decodable
    /// records of one key in order and makes their effects durable, returning a
    /// [`KeyFailure`] at the first record it could not (it may be called again with the
    /// remaining records, after a backoff, when that error is transient).
    pub async fn process_keyed<'a, T, F, Fut>(
        &self,
        records: &'a [InRecord<T>],
        deadline: Option<Instant>,
        op: F,
    ) -> BatchOutcome
    where
        T: Sync,
        F: Fn(Vec<Item<'a, T>>) -> Fut,
        Fut: Future<Output = Result<(), KeyFailure>>,
    {
        let mut outcome = BatchOutcome {
            records: records.len(),
            ..BatchOutcome::default()
        };
        let mut poisoned: Vec<(RecordMeta, Poison)> = Vec::new();
        let mut order: Vec<&'a str> = Vec::new();
        let mut groups: HashMap<&'a str, Vec<Item<'a, T>>> = HashMap::new();
        for r in records {
            match &r.body {
                Ok(body) => {
                    let key = r.meta.partition_key.as_str();
                    groups
                        .entry(key)
                        .or_insert_with(|| {
                            order.push(key);
                            Vec::new()
                        })
                        .push(Item {
                            meta: &r.meta,
                            body,
                        });
                }
                Err(p) => poisoned.push((r.meta.clone(), p.clone())),
            }
        }
        // Lambda hands a shard's records in sequence order, but a KPL aggregate or a
        // runner may not: sort each key's run by position so order never depends on it.
        for g in groups.values_mut() {
            g.sort_by(|a, b| a.meta.pos.cmp(&b.meta.pos));
        }

        let op = &op;
        let mut keys: Vec<Vec<Item<'a, T>>> = Vec::with_capacity(order.len());
        for k in order {
            if let Some(items) = groups.remove(k) {
                keys.push(items);
            }
        }
        // At most `max_concurrency` keys in flight, each key's future built only when it
        // starts: a key's future holds its whole store round trip (several KB), so
        // building them all up front cost ~40 MB for a 6 MB batch of distinct cards.
        // (No closure over `Item<'a>` is held across an await, which keeps the whole
        // future `Send` for any `'a`.)
        let limit = self.cfg.max_concurrency.max(1);
        let mut queue = keys.into_iter();
        let mut running = futures::stream::FuturesUnordered::new();
        let mut reports: Vec<KeyReport> = Vec::new();
        loop {
            while running.len() < limit {
                let Some(items) = queue.next() else { break };
                running.push(self.run_key(items, deadline, op));
            }
            match running.next().await {
                Some(r) => reports.push(r),
                None => break,
            }
        }

        for r in reports {
            outcome.succeeded += r.succeeded;
            outcome.not_attempted += r.not_attempted;
            outcome.retries += r.retries;
            poisoned.extend(r.poisoned);
            if let Some(f) = r.failed {
                outcome.note_failure(&f.meta.pos.seq);
                outcome.failed.push(f);
            }
        }
        self.quarantine_poison(poisoned, deadline, &mut outcome)
            .await;
        outcome
    }

    /// Quarantines the poison records of a batch, and `extra` records set aside by the
    /// caller (late events), leaving out those at or after `lowest_failure` (they come
    /// back in the retry). For handlers that do their own batch-level work.
    pub async fn quarantine_only<T>(
        &self,
        records: &[InRecord<T>],
        extra: Vec<(RecordMeta, Poison)>,
        deadline: Option<Instant>,
        lowest_failure: Option<SeqNo>,
    ) -> BatchOutcome {
        let mut outcome = BatchOutcome {
            records: records.len(),
            lowest_failure,
            ..BatchOutcome::default()
        };
        let mut poisoned: Vec<(RecordMeta, Poison)> = records
            .iter()
            .filter_map(|r| r.body.as_ref().err().map(|p| (r.meta.clone(), p.clone())))
            .collect();
        poisoned.extend(extra);
        self.quarantine_poison(poisoned, deadline, &mut outcome)
            .await;
        outcome
    }

    /// Processes a batch one record at a time (per key in order), for operations that
    /// have no batch-level work. A panic is attributed to the exact record.
    pub async fn process_each<'a, T, F, Fut>(
        &self,
        records: &'a [InRecord<T>],
        deadline: Option<Instant>,
        op: F,
    ) -> BatchOutcome
    where
        T: Sync,
        F: Fn(Item<'a, T>) -> Fut,
        Fut: Future<Output = Result<(), RecordError>>,
    {
        let op = &op;
        self.process_keyed(records, deadline, move |items| async move {
            for (i, item) in items.into_iter().enumerate() {
                match AssertUnwindSafe(op(item)).catch_unwind().await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Err(KeyFailure::at(i, e)),
                    Err(panic) => {
                        return Err(KeyFailure::at(
                            i,
                            RecordError::Panicked(panic_message(&panic)),
                        ));
                    }
                }
            }
            Ok(())
        })
        .await
    }

    async fn run_key<'a, T, F, Fut>(
        &self,
        mut items: Vec<Item<'a, T>>,
        deadline: Option<Instant>,
        op: &F,
    ) -> KeyReport
    where
        F: Fn(Vec<Item<'a, T>>) -> Fut,
        Fut: Future<Output = Result<(), KeyFailure>>,
    {
        let mut report = KeyReport {
            succeeded: 0,
            poisoned: Vec::new(),
            failed: None,
            not_attempted: 0,
            retries: 0,
        };
        let mut attempts = 0u32;
        while !items.is_empty() {
            attempts += 1;
            let result = AssertUnwindSafe(op(items.clone())).catch_unwind().await;
            let KeyFailure { index, error } = match result {
                Ok(Ok(())) => {
                    report.succeeded += items.len();
                    break;
                }
                Ok(Err(f)) => f,
                Err(panic) => KeyFailure::at(0, RecordError::Panicked(panic_message(&panic))),
            };
            let index = index.min(items.len() - 1);
            report.succeeded += index;
            items.drain(..index);
            match error.class() {
                ErrorClass::Poison => {
                    let RecordError::Poison(reason) = error else {
                        unreachable!("only RecordError::Poison has the poison class")
                    };
                    report
                        .poisoned
                        .push((items[0].meta.clone(), Poison::without_payload(reason)));
                    items.remove(0);
                    attempts = 0;
                }
                ErrorClass::Transient
                    if attempts < self.cfg.retry.max_attempts
                        && self.time_for(attempts, deadline) =>
                {
                    report.retries += 1;
                    tokio::time::sleep(self.cfg.retry.backoff(attempts)).await;
                }
                ErrorClass::Transient | ErrorClass::Fatal => {
                    report.not_attempted = items.len() - 1;
                    report.failed = Some(FailedRecord {
                        meta: items[0].meta.clone(),
                        error,
                        attempts,
                    });
                    break;
                }
            }
        }
        report
    }

    /// True when a retry after `failures` failures still ends before the deadline margin.
    fn time_for(&self, failures: u32, deadline: Option<Instant>) -> bool {
        deadline.is_none_or(|d| {
            Instant::now() + self.cfg.retry.backoff(failures) + self.cfg.deadline_margin < d
        })
    }

    async fn quarantine_poison(
        &self,
        poisoned: Vec<(RecordMeta, Poison)>,
        deadline: Option<Instant>,
        outcome: &mut BatchOutcome,
    ) {
        // Records at or after the retry point come back in the retry; quarantining them
        // now would only write them twice.
        let entries: Vec<QuarantineEntry> = poisoned
            .into_iter()
            .filter(|(m, _)| {
                outcome
                    .lowest_failure
                    .as_ref()
                    .is_none_or(|low| m.pos.seq < *low)
            })
            .map(|(m, p)| self.entry(&m, p))
            .collect();
        if entries.is_empty() {
            return;
        }
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            match self.quarantine.quarantine(&entries).await {
                Ok(()) => {
                    outcome.quarantined += entries.len();
                    return;
                }
                Err(e)
                    if e.class() == ErrorClass::Transient
                        && attempts < self.cfg.retry.max_attempts
                        && self.time_for(attempts, deadline) =>
                {
                    outcome.retries += 1;
                    tokio::time::sleep(self.cfg.retry.backoff(attempts)).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, entries = entries.len(), "Quarantine write failed; reporting the records for retry.");
                    let lowest = entries
                        .iter()
                        .filter_map(|en| SeqNo::parse(&en.sequence_number).ok())
                        .min();
                    if let Some(seq) = lowest {
                        outcome.note_failure(&seq);
                    }
                    return;
                }
            }
        }
    }

    fn entry(&self, m: &RecordMeta, p: Poison) -> QuarantineEntry {
        QuarantineEntry::from_poison(&self.cfg.function, m, p)
    }
}

/// The deadline to work to: `None` when the invocation starts past it. Lambda never
/// does (an invocation has its whole timeout); a local emulator may (`cargo lambda watch`
/// counts its build of the function into the first invocation's time), and a handler
/// honouring a deadline already past would report every record without trying one.
pub fn live_deadline(deadline: Option<Instant>) -> Option<Instant> {
    match deadline {
        Some(d) if d <= Instant::now() => {
            tracing::warn!(
                "The invocation started past its deadline (a local emulator?); working without one."
            );
            None
        }
        other => other,
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::error::StoreError;
    use crate::event::PoisonReason;
    use crate::seq::RecordPos;

    #[derive(Default)]
    struct VecQuarantine {
        entries: Mutex<Vec<QuarantineEntry>>,
        fail_times: AtomicU32,
    }

    impl Quarantine for VecQuarantine {
        async fn quarantine(&self, entries: &[QuarantineEntry]) -> Result<(), StoreError> {
            if self.fail_times.load(Ordering::SeqCst) > 0 {
                self.fail_times.fetch_sub(1, Ordering::SeqCst);
                return Err(StoreError::transient("sqs throttled"));
            }
            self.entries.lock().unwrap().extend_from_slice(entries);
            Ok(())
        }
    }

    /// Body: (key, value). Sequence numbers are 25 digits so they exceed u64.
    fn rec(seq: u64, key: &str, body: Result<u32, PoisonReason>) -> InRecord<u32> {
        InRecord {
            meta: RecordMeta {
                shard_id: Arc::from("shardId-000000000000"),
                pos: RecordPos::plain(SeqNo::parse(&format!("4959{seq:021}")).unwrap()),
                partition_key: key.to_owned(),
                lane_key: None,
                arrival_ms: 0,
            },
            body: body.map_err(|r| Poison::new(r, b"raw")),
        }
    }

    fn seq(n: u64) -> String {
        format!("4959{n:021}")
    }

    fn fast() -> BatchConfig {
        BatchConfig {
            retry: RetryPolicy {
                max_attempts: 3,
                initial_backoff: Duration::from_millis(1),
                max_backoff: Duration::from_millis(4),
            },
            ..BatchConfig::new("test-fn")
        }
    }

    const ARRIVAL: i64 = 1_764_140_400_000; // 2025-11-26T07:00:00Z

    /// A `txn.v1` JSON object with `card` as the token and `extra` spliced in before the
    /// closing brace.
    fn txn_json(schema: &str, card: &str, extra: &str) -> String {
        format!(
            r#"{{"schema":"{schema}","event_id":"evt-1","card_token":"{card}","merchant_id":"m-1","mcc":"5411","amount_minor":1299,"currency":"EUR","event_time":"2025-11-26T06:59:58.250Z","location":{{"lat":48.85,"lon":2.35,"country":"FR"}},"channel":"pos","auth_result":"approved"{extra}}}"#
        )
    }

    fn decoded(payload: &[u8], key: &str, n: u64) -> InRecord<crate::event::Txn> {
        let mut out = Vec::new();
        crate::record::decode_record_data(
            crate::record::RawRecordMeta {
                shard_id: Arc::from("shardId-000000000000"),
                seq: SeqNo::parse(&seq(n)).unwrap(),
                partition_key: key,
                arrival_ms: ARRIVAL,
            },
            payload,
            &crate::event::DecodeLimits::default(),
            &mut out,
        );
        assert_eq!(out.len(), 1);
        out.pop().unwrap()
    }

    async fn quarantined<T: Sync>(records: &[InRecord<T>]) -> Vec<QuarantineEntry> {
        let p = BatchProcessor::new(fast(), VecQuarantine::default());
        let out = p.quarantine_only(records, Vec::new(), None, None).await;
        assert_eq!(out.quarantined, records.len());
        assert!(out.lowest_failure.is_none());
        p.quarantine.entries.into_inner().unwrap()
    }

    fn prefix_of(e: &QuarantineEntry) -> Vec<u8> {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .decode(&e.data_base64)
            .unwrap()
    }

    /// Longest run of digits, spaces and dashes between digits ignored.
    fn longest_digit_run(s: &str) -> usize {
        let (mut best, mut cur) = (0, 0);
        let b = s.as_bytes();
        for (i, &c) in b.iter().enumerate() {
            if c.is_ascii_digit() {
                cur += 1;
                best = best.max(cur);
            } else if !(matches!(c, b' ' | b'-')
                && cur > 0
                && b.get(i + 1).is_some_and(u8::is_ascii_digit))
            {
                cur = 0;
            }
        }
        best
    }

    #[tokio::test]
    async fn a_one_mib_poison_record_is_quarantined_with_a_bounded_excerpt() {
        let mut payload = txn_json("txn.v1", "tok_a", r#","pad":""#).into_bytes();
        payload.resize(1024 * 1024 - 2, b'a');
        payload.extend_from_slice(b"\"}");
        let records = vec![decoded(&payload, "tok_a", 1)];
        assert!(matches!(
            records[0].body.as_ref().unwrap_err().reason,
            PoisonReason::TooLarge { .. }
        ));
        let q = quarantined(&records).await;
        let json = serde_json::to_string(&q[0]).unwrap();
        assert!(json.len() <= 16 * 1024, "entry is {} bytes", json.len());
        let prefix = prefix_of(&q[0]);
        assert!(
            !prefix.is_empty() && prefix.len() <= 4096,
            "{}",
            prefix.len()
        );
        assert!(payload.starts_with(&prefix));
        // What identifies the whole record is kept: its size and digest.
        use base64::Engine as _;
        use sha2::Digest as _;
        assert_eq!(q[0].data_size, 1024 * 1024);
        assert_eq!(
            q[0].data_sha256_base64,
            base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(&payload))
        );
        assert!(q[0].data_truncated && !q[0].data_redacted);
        assert!(
            q[0].reason_text.contains("1048576 bytes"),
            "{}",
            q[0].reason_text
        );
    }

    #[tokio::test]
    async fn no_card_number_reaches_the_quarantine_whatever_the_reason() {
        let pan = "4111111111111111";
        let mut oversize = txn_json(
            "txn.v1",
            "tok_a",
            r#","note":"4111-1111-1111-1111","pad":""#,
        )
        .into_bytes();
        oversize.resize(20_000, b'a');
        oversize.extend_from_slice(format!(" {pan}\"}}").as_bytes());
        // A card number across the 4 KiB cut.
        let mut split = vec![b'x'; 4090];
        split.extend_from_slice(pan.as_bytes());
        split.resize(20_000, b' ');
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            (
                "bad JSON",
                br#"{"schema":"txn.v1","note":"4111 1111 1111 1111","#.to_vec(),
                "tok_a",
            ),
            (
                "unknown schema",
                txn_json("txn.v9", pan, "").into_bytes(),
                "tok_a",
            ),
            ("over the cap", oversize, "tok_a"),
            (
                "missing event id",
                txn_json("txn.v1", pan, "")
                    .replace(r#""event_id":"evt-1","#, "")
                    .into_bytes(),
                "tok_a",
            ),
            ("split at the cut", split, "tok_a"),
            (
                "card number in the partition key",
                txn_json("txn.v1", "tok_a", "")
                    .replace("48.85", "148.85")
                    .into_bytes(),
                "card 4111 1111 1111 1111",
            ),
        ];
        for (i, (what, payload, key)) in cases.into_iter().enumerate() {
            let records = vec![decoded(&payload, key, i as u64)];
            let q = quarantined(&records).await;
            let e = &q[0];
            let prefix = String::from_utf8_lossy(&prefix_of(e)).into_owned();
            let reason_json = serde_json::to_string(&e.reason).unwrap();
            for (field, text) in [
                ("payload", &prefix),
                ("partition key", &e.partition_key),
                ("reason text", &e.reason_text),
                ("reason", &reason_json),
            ] {
                assert!(
                    !crate::event::tests::has_pan_candidate(text),
                    "{what}: {field} leaks a card number: {text}"
                );
                assert!(
                    longest_digit_run(text) < 13,
                    "{what}: {field} keeps part of a card number: {text}"
                );
            }
            // Redacted, not withheld: the rest of the record is still there to read.
            if what == "card number in the partition key" {
                assert!(
                    e.partition_key.contains("[PAN redacted]"),
                    "{}",
                    e.partition_key
                );
                assert!(
                    prefix.contains("\"merchant_id\":\"m-1\""),
                    "{what}: {prefix}"
                );
            } else if what == "split at the cut" {
                assert!(prefix.starts_with("xxxx"), "{what}: {prefix}");
            } else {
                assert!(prefix.contains("[PAN redacted]"), "{what}: {prefix}");
                assert!(e.data_redacted, "{what}");
            }
        }
    }

    #[tokio::test]
    async fn entries_carry_a_stable_id() {
        let mut records = vec![
            rec(2, "a", Err(PoisonReason::InvalidCoordinates)),
            rec(3, "b", Err(PoisonReason::InvalidCoordinates)),
        ];
        records[1].meta.pos.sub = 7;
        let first = quarantined(&records).await;
        let again = quarantined(&records).await;
        let ids: Vec<serde_json::Value> = first
            .iter()
            .map(|e| serde_json::to_value(e).unwrap()["id"].clone())
            .collect();
        assert_eq!(
            ids,
            vec![
                serde_json::Value::from(format!("test-fn/shardId-000000000000/{}/0", seq(2))),
                serde_json::Value::from(format!("test-fn/shardId-000000000000/{}/7", seq(3))),
            ]
        );
        assert_eq!(
            first, again,
            "a replay quarantines the same entries, ids included"
        );
    }

    #[tokio::test]
    async fn per_key_order_is_kept_under_concurrency() {
        let mut records = Vec::new();
        for i in 0..200u64 {
            records.push(rec(i, &format!("card-{}", i % 7), Ok(i as u32)));
        }
        let seen: Mutex<HashMap<String, Vec<u32>>> = Mutex::default();
        let in_flight = AtomicU32::new(0);
        let max_in_flight = AtomicU32::new(0);
        let p = BatchProcessor::new(fast(), VecQuarantine::default());
        let out = p
            .process_each(&records, None, |item| {
                let (seen, in_flight, max_in_flight) = (&seen, &in_flight, &max_in_flight);
                async move {
                    let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    max_in_flight.fetch_max(now, Ordering::SeqCst);
                    // Yield with a varying delay so keys interleave.
                    tokio::time::sleep(Duration::from_micros(u64::from(*item.body % 5) * 100))
                        .await;
                    seen.lock()
                        .unwrap()
                        .entry(item.meta.partition_key.clone())
                        .or_default()
                        .push(*item.body);
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                    Ok(())
                }
            })
            .await;
        assert_eq!(out.succeeded, 200);
        assert!(out.lowest_failure.is_none());
        assert!(
            max_in_flight.load(Ordering::SeqCst) > 1,
            "keys should run concurrently"
        );
        for (_, vals) in seen.into_inner().unwrap() {
            assert!(
                vals.windows(2).all(|w| w[0] < w[1]),
                "per-key order broken: {vals:?}"
            );
        }
    }

    #[tokio::test]
    async fn reports_the_lowest_failed_sequence_number() {
        let records = vec![
            rec(1, "a", Ok(1)),
            rec(2, "b", Ok(2)),
            rec(3, "c", Ok(3)),
            rec(4, "b", Ok(4)),
            rec(5, "a", Ok(5)),
        ];
        let p = BatchProcessor::new(fast(), VecQuarantine::default());
        let out = p
            .process_each(&records, None, |item| async move {
                match *item.body {
                    3 | 4 => Err(RecordError::Store(StoreError::fatal("denied"))),
                    _ => Ok(()),
                }
            })
            .await;
        assert_eq!(out.failure_identifiers(), vec![seq(3)]);
        assert_eq!(out.succeeded, 3);
    }

    #[tokio::test]
    async fn later_records_of_a_failed_key_are_not_attempted() {
        let records = vec![
            rec(1, "a", Ok(1)),
            rec(2, "a", Ok(2)),
            rec(3, "a", Ok(3)),
            rec(4, "b", Ok(4)),
        ];
        let calls: Mutex<Vec<u32>> = Mutex::default();
        let p = BatchProcessor::new(fast(), VecQuarantine::default());
        let out = p
            .process_each(&records, None, |item| {
                let calls = &calls;
                async move {
                    calls.lock().unwrap().push(*item.body);
                    if *item.body == 2 {
                        Err(StoreError::fatal("nope").into())
                    } else {
                        Ok(())
                    }
                }
            })
            .await;
        let mut calls = calls.into_inner().unwrap();
        calls.sort_unstable();
        assert_eq!(calls, vec![1, 2, 4]);
        assert_eq!(out.not_attempted, 1);
        assert_eq!(out.failure_identifiers(), vec![seq(2)]);
    }

    #[tokio::test]
    async fn a_panic_becomes_that_records_failure() {
        let records = vec![rec(1, "a", Ok(1)), rec(2, "b", Ok(2)), rec(3, "c", Ok(3))];
        let p = BatchProcessor::new(fast(), VecQuarantine::default());
        let out = p
            .process_each(&records, None, |item| async move {
                assert!(*item.body != 2, "boom on record two");
                Ok(())
            })
            .await;
        assert_eq!(out.succeeded, 2);
        assert_eq!(out.failed.len(), 1);
        assert!(matches!(&out.failed[0].error, RecordError::Panicked(m) if m.contains("boom")));
        assert_eq!(out.failure_identifiers(), vec![seq(2)]);
    }

    #[tokio::test]
    async fn poison_goes_to_quarantine_and_does_not_fail_the_batch() {
        let records = vec![
            rec(1, "a", Ok(1)),
            rec(
                2,
                "a",
                Err(PoisonReason::NegativeAmount { amount_minor: -1 }),
            ),
            rec(3, "a", Ok(3)),
            rec(4, "b", Ok(4)),
        ];
        let p = BatchProcessor::new(fast(), VecQuarantine::default());
        let out = p
            .process_each(&records, None, |item| async move {
                if *item.body == 4 {
                    Err(RecordError::Poison(PoisonReason::InvalidCoordinates))
                } else {
                    Ok(())
                }
            })
            .await;
        assert!(out.failure_identifiers().is_empty());
        assert_eq!(out.succeeded, 2);
        assert_eq!(out.quarantined, 2);
        let q = p.quarantine.entries.lock().unwrap();
        let mut got: Vec<(String, String)> = q
            .iter()
            .map(|e| (e.sequence_number.clone(), e.reason_text.clone()))
            .collect();
        got.sort();
        assert_eq!(
            got,
            vec![
                (seq(2), "negative amount -1".into()),
                (seq(4), "invalid coordinates".into())
            ]
        );
        assert_eq!(q[0].shard_id, "shardId-000000000000");
        assert_eq!(q[0].function, "test-fn");
    }

    #[tokio::test]
    async fn transient_error_is_retried_then_succeeds() {
        let records = vec![rec(1, "a", Ok(1))];
        let calls = AtomicU32::new(0);
        let p = BatchProcessor::new(fast(), VecQuarantine::default());
        let out = p
            .process_each(&records, None, |_| {
                let calls = &calls;
                async move {
                    if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                        Err(StoreError::transient("throttled").into())
                    } else {
                        Ok(())
                    }
                }
            })
            .await;
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(out.retries, 2);
        assert!(out.failure_identifiers().is_empty());
    }

    #[tokio::test]
    async fn transient_error_is_reported_after_the_attempts() {
        let records = vec![rec(1, "a", Ok(1)), rec(2, "b", Ok(2))];
        let calls = AtomicU32::new(0);
        let p = BatchProcessor::new(fast(), VecQuarantine::default());
        let out = p
            .process_each(&records, None, |item| {
                let calls = &calls;
                async move {
                    if *item.body == 2 {
                        calls.fetch_add(1, Ordering::SeqCst);
                        return Err(StoreError::transient("throttled").into());
                    }
                    Ok(())
                }
            })
            .await;
        assert_eq!(calls.load(Ordering::SeqCst), 3, "max_attempts is 3");
        assert_eq!(out.failed[0].attempts, 3);
        assert_eq!(out.failure_identifiers(), vec![seq(2)]);
    }

    #[tokio::test]
    async fn no_retry_starts_past_the_deadline() {
        let records = vec![rec(1, "a", Ok(1))];
        let calls = AtomicU32::new(0);
        let p = BatchProcessor::new(fast(), VecQuarantine::default());
        // Deadline inside the margin: the first failure is final.
        let deadline = Instant::now() + Duration::from_millis(100);
        let out = p
            .process_each(&records, Some(deadline), |_| {
                let calls = &calls;
                async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Err(StoreError::transient("timeout").into())
                }
            })
            .await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(out.failure_identifiers(), vec![seq(1)]);
    }

    #[tokio::test]
    async fn failed_quarantine_write_reports_the_poison_record() {
        let records = vec![
            rec(1, "a", Ok(1)),
            rec(2, "b", Err(PoisonReason::InvalidCoordinates)),
            rec(3, "c", Ok(3)),
        ];
        let q = VecQuarantine {
            fail_times: AtomicU32::new(100),
            ..Default::default()
        };
        let p = BatchProcessor::new(fast(), q);
        let out = p.process_each(&records, None, |_| async { Ok(()) }).await;
        assert_eq!(out.failure_identifiers(), vec![seq(2)]);
        assert_eq!(out.quarantined, 0);
    }

    #[tokio::test]
    async fn poison_after_the_retry_point_is_left_for_the_retry() {
        let records = vec![
            rec(1, "a", Ok(1)),
            rec(2, "b", Err(PoisonReason::InvalidCoordinates)),
        ];
        let p = BatchProcessor::new(fast(), VecQuarantine::default());
        let out = p
            .process_each(&records, None, |_| async {
                Err(StoreError::fatal("x").into())
            })
            .await;
        assert_eq!(out.failure_identifiers(), vec![seq(1)]);
        assert_eq!(
            out.quarantined, 0,
            "record 2 is replayed from seq 1, quarantined then"
        );
    }
}
