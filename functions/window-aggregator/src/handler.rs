//! The window-aggregator handler, generic over its stores.
//!
//! Per invocation and shard: read the shard's progress (one GetItem), plan which window
//! each record feeds and which it is late for, read the touched partials (BatchGetItem
//! per 100), fold the new records in memory, then one conditional PutItem per touched
//! (key, window) partial, window rules on the merged totals, the late side output to the
//! quarantine, and finally the shard's progress. Records a partial already holds are
//! skipped by its guard, so any replay or split leaves the windows as one delivery.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use aws_lambda_events::event::streams::KinesisEventResponse;
use futures::StreamExt;
use shardline_aws::kinesis::{EnvelopeError, decode_event_json, response_for};
use shardline_core::alert::Alert;
use shardline_core::batch::{BatchConfig, BatchOutcome, BatchProcessor, Item};
use shardline_core::ports::{
    AlertSink, MAX_BATCH_GET, MAX_BATCH_WRITE, PartialKey, Put, Quarantine, ShardParents,
    WindowStore,
};
use shardline_core::window::claims::{ClaimBook, Lineage, MAX_ANCESTORS, keys_to_read};
use shardline_core::window::hll::stable_hash;
use shardline_core::window::rules::WindowRuleSet;
use shardline_core::window::{
    KeyKind, Metrics, Plan, ShardProgress, WindowConfig, WindowId, WindowPartial, apply_to_partial,
    plan,
};
use shardline_core::{
    DecodeLimits, InRecord, Poison, PoisonReason, RecordMeta, SeqNo, StoreError, Txn,
};
use tokio::time::Instant;

/// The function's name.
pub const FUNCTION: &str = "window-aggregator";
/// Conditional writes in flight at once.
const WRITE_CONCURRENCY: usize = 16;

/// The invocation cannot be processed at all.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// The event is not a Kinesis event.
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    /// Effects are not durable and there is no record to report them at (a tumbling
    /// window's final invoke): a function error, so that Lambda retries the invocation.
    #[error("{0}")]
    Incomplete(&'static str),
}

/// Settings that are not stores.
#[derive(Clone, Debug)]
pub struct AggregatorSettings {
    /// Batch processing (retries, quarantine).
    pub batch: BatchConfig,
    /// Decode limits.
    pub limits: DecodeLimits,
    /// Windows kept and lateness.
    pub windows: WindowConfig,
    /// Threshold rules.
    pub rules: WindowRuleSet,
    /// A window's merged total is read for a rule only when the rule holds on this
    /// shard's part as it is or extrapolated as this share of the window
    /// ([`WindowRule::may_fire`](shardline_core::window::rules::WindowRule::may_fire)):
    /// for a threshold on a count or sum, 1 / (shards writing a window) never misses an
    /// alert; the default 0.25 is exact up to four shards per key.
    pub rule_local_share: f64,
}

impl Default for AggregatorSettings {
    fn default() -> Self {
        Self {
            batch: BatchConfig::new(FUNCTION),
            limits: DecodeLimits::default(),
            windows: WindowConfig::default(),
            rules: WindowRuleSet::default_rules(),
            rule_local_share: 0.25,
        }
    }
}

/// What one invocation did.
#[derive(Debug)]
pub struct Report {
    /// The Lambda response.
    pub response: KinesisEventResponse,
    /// Poison handling and the retry point.
    pub outcome: BatchOutcome,
    /// Partials written.
    pub partial_writes: usize,
    /// Distinct (key, window) pairs touched.
    pub windows_touched: usize,
    /// Records applied to windows (on time).
    pub applied: usize,
    /// Late records sent to the side output.
    pub late: usize,
    /// Producer duplicates skipped (an event id the shard applied recently).
    pub duplicates: usize,
    /// Window alerts raised.
    pub alerts: usize,
}

/// The stores an aggregator uses.
pub struct Stores<W, A, Q> {
    /// Windows table.
    pub windows: W,
    /// Alerts table.
    pub alerts: A,
    /// Quarantine (poison and late records).
    pub quarantine: Q,
}

/// The window aggregator.
pub struct Aggregator<W, A, Q> {
    windows: W,
    alerts: A,
    processor: BatchProcessor<Q>,
    settings: AggregatorSettings,
    /// Where shards come from (Kinesis `ListShards`); without it a shard has no
    /// ancestors, which is right for a stream never resharded.
    parents: Option<Arc<dyn ShardParents>>,
    /// Lineages known in this process (a shard's never changes).
    lineages: std::sync::Mutex<HashMap<String, Lineage>>,
}

struct ShardResult {
    lowest_failure: Option<SeqNo>,
    partial_writes: usize,
    windows_touched: usize,
    applied: usize,
    late: usize,
    duplicates: usize,
    alerts: usize,
}

impl ShardResult {
    /// Nothing durable: the retry starts at the shard's first record.
    fn failed_at(first: Option<&Item<'_, Txn>>) -> Self {
        Self {
            lowest_failure: first.map(|i| i.meta.pos.seq.clone()),
            partial_writes: 0,
            windows_touched: 0,
            applied: 0,
            late: 0,
            duplicates: 0,
            alerts: 0,
        }
    }
}

impl<W: WindowStore, A: AlertSink, Q: Quarantine> Aggregator<W, A, Q> {
    /// An aggregator over these stores.
    pub fn new(stores: Stores<W, A, Q>, settings: AggregatorSettings) -> Self {
        Self {
            windows: stores.windows,
            alerts: stores.alerts,
            processor: BatchProcessor::new(settings.batch.clone(), stores.quarantine),
            settings,
            parents: None,
            lineages: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Reads shard lineage from `parents`, so that a child shard sees the event-id
    /// claims of the shards it was split or merged from.
    #[must_use]
    pub fn with_parents(mut self, parents: Arc<dyn ShardParents>) -> Self {
        self.parents = Some(parents);
        self
    }

    /// A shard's lineage: from this process's memory, the windows table, or (at the
    /// shard's first batch) its parents and theirs, stored for the next cold start.
    pub(crate) async fn lineage(
        &self,
        shard: &str,
        first_event_ms: i64,
    ) -> Result<Lineage, StoreError> {
        if let Some(l) = self
            .lineages
            .lock()
            .ok()
            .and_then(|m| m.get(shard).cloned())
        {
            return Ok(l);
        }
        let lineage = match (&self.parents, self.windows.get_lineage(shard).await?) {
            (_, Some(l)) => l,
            (None, None) => Lineage::default(),
            (Some(parents), None) => {
                let mut ancestors: Vec<String> = Vec::new();
                let mut frontier = vec![shard.to_owned()];
                // Nearest first, bounded: parents, then grandparents, ...
                while let Some(s) = (!frontier.is_empty()).then(|| frontier.remove(0)) {
                    for p in parents.parents(&s).await? {
                        if ancestors.len() < MAX_ANCESTORS && p != shard && !ancestors.contains(&p)
                        {
                            ancestors.push(p.clone());
                            frontier.push(p);
                        }
                    }
                }
                let l = Lineage {
                    ancestors,
                    since_ms: first_event_ms,
                };
                self.windows.put_lineage(shard, &l).await?;
                l
            }
        };
        if let Ok(mut m) = self.lineages.lock() {
            m.insert(shard.to_owned(), lineage.clone());
        }
        Ok(lineage)
    }

    /// The claims a shard's records need, read from the shard and its ancestors. Each
    /// record comes as its event and its arrival time (0 when unknown).
    pub(crate) async fn claim_book<'t>(
        &self,
        shard: &str,
        records: impl IntoIterator<Item = (&'t Txn, i64)> + Clone,
    ) -> Result<ClaimBook, StoreError> {
        // Arrival times, or event times for records without one (fixtures).
        let clock = |(t, arrival): (&Txn, i64)| {
            if arrival > 0 {
                arrival
            } else {
                t.event_time_ms
            }
        };
        let first = records
            .clone()
            .into_iter()
            .map(clock)
            .min()
            .unwrap_or_default();
        let now = records
            .clone()
            .into_iter()
            .map(clock)
            .max()
            .unwrap_or_default();
        let lineage = self.lineage(shard, first).await?;
        let keys = keys_to_read(
            shard,
            &lineage,
            records
                .into_iter()
                .map(|(t, _)| (t.event_time_ms, stable_hash(&t.event_id))),
        );
        let read = self.windows.get_claims(&keys).await?;
        Ok(ClaimBook::new(shard, read, now))
    }

    /// Makes durable the claims of the batch's records before `upto`.
    pub(crate) async fn store_claims(
        &self,
        book: &ClaimBook,
        upto: usize,
    ) -> Result<(), StoreError> {
        if book.overflow > 0 {
            tracing::warn!(
                overflow = book.overflow,
                "Claim items full: these events' re-sends will not be recognised."
            );
        }
        let items = book.dirty_items(upto);
        if items.is_empty() {
            return Ok(());
        }
        let retry = &self.settings.batch.retry;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.windows.put_claims(&items).await {
                Ok(()) => return Ok(()),
                Err(e)
                    if attempt < retry.max_attempts
                        && e.class() == shardline_core::ErrorClass::Transient =>
                {
                    tokio::time::sleep(retry.backoff(attempt)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The window store.
    pub fn windows(&self) -> &W {
        &self.windows
    }

    /// The settings.
    pub fn settings(&self) -> &AggregatorSettings {
        &self.settings
    }

    /// The batch processor (quarantine).
    pub fn processor(&self) -> &BatchProcessor<Q> {
        &self.processor
    }

    /// Handles one invocation payload (a Lambda Kinesis event, raw JSON).
    pub async fn handle(
        &self,
        payload: &[u8],
        deadline: Option<Instant>,
    ) -> Result<Report, HandlerError> {
        let records = decode_event_json(payload, &self.settings.limits)?;
        Ok(self.handle_records(&records, deadline).await)
    }

    /// Handles decoded records.
    pub async fn handle_records(
        &self,
        records: &[InRecord<Txn>],
        deadline: Option<Instant>,
    ) -> Report {
        let deadline = shardline_core::batch::live_deadline(deadline);
        let mut by_shard: BTreeMap<&str, Vec<Item<'_, Txn>>> = BTreeMap::new();
        for r in records {
            if let Ok(body) = &r.body {
                by_shard.entry(&r.meta.shard_id).or_default().push(Item {
                    meta: &r.meta,
                    body,
                });
            }
        }
        let mut lowest: Option<SeqNo> = None;
        let mut late = 0;
        let mut duplicates = 0;
        let (mut partial_writes, mut windows_touched, mut applied, mut alerts) = (0, 0, 0, 0);
        for (shard, mut items) in by_shard {
            items.sort_by(|a, b| a.meta.pos.cmp(&b.meta.pos));
            // A panic in the shard's step (outside the batch processor's per-key catch)
            // fails that shard's records, not the whole invocation.
            let step = std::panic::AssertUnwindSafe(self.shard(shard, &items, deadline));
            let r = match futures::FutureExt::catch_unwind(step).await {
                Ok(r) => r,
                Err(panic) => {
                    tracing::error!(
                        shard,
                        panic = %panic_message(&panic),
                        "Shard step panicked; its records are reported for retry."
                    );
                    ShardResult::failed_at(items.first())
                }
            };
            if let Some(l) = r.lowest_failure
                && lowest.as_ref().is_none_or(|x| l < *x)
            {
                lowest = Some(l);
            }
            late += r.late;
            duplicates += r.duplicates;
            partial_writes += r.partial_writes;
            windows_touched += r.windows_touched;
            applied += r.applied;
            alerts += r.alerts;
        }
        let outcome = self
            .processor
            .quarantine_only(records, Vec::new(), deadline, lowest)
            .await;
        Report {
            response: response_for(outcome.failure_identifiers()),
            outcome,
            partial_writes,
            windows_touched,
            applied,
            late,
            duplicates,
            alerts,
        }
    }

    async fn shard(
        &self,
        shard: &str,
        items: &[Item<'_, Txn>],
        deadline: Option<Instant>,
    ) -> ShardResult {
        let first = items.first().map(|i| i.meta.pos.seq.clone());
        let fail_all = || ShardResult {
            lowest_failure: first.clone(),
            partial_writes: 0,
            windows_touched: 0,
            applied: 0,
            late: 0,
            duplicates: 0,
            alerts: 0,
        };
        let progress = match self.windows.get_progress(shard).await {
            Ok(p) => p.unwrap_or_default(),
            Err(e) => {
                tracing::warn!(error = %e, "Shard progress read failed.");
                return fail_all();
            }
        };
        let mut book = match self
            .claim_book(shard, items.iter().map(|i| (i.body, i.meta.arrival_ms)))
            .await
        {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "Event-id claims read failed.");
                return fail_all();
            }
        };
        let cfg = &self.settings.windows;
        let p: Plan = plan(items, &progress, &mut book, cfg);
        let watermark = p.max_event_ms().map(|m| m - cfg.lateness_ms);

        let mut touched: BTreeMap<WindowId, KeyKind> = BTreeMap::new();
        for (w, (k, _)) in p.on_time.iter().chain(&p.late_in) {
            touched.insert(w.clone(), *k);
        }
        // Only a window this shard already had events in can have a partial of this
        // shard: one that starts after the largest applied watermark time cannot, and is
        // not read. (Should one exist anyway, from a batch that failed after writing it or
        // from an event time ahead of its arrival, the conditional write fails and the
        // window is read and applied again below.)
        let keys: Vec<PartialKey> = touched
            .keys()
            .filter(|w| progress.max_event_ms.is_some_and(|m| w.start_ms <= m))
            .map(|w| (w.pk(), w.sk(shard)))
            .collect();
        let mut stored: HashMap<PartialKey, WindowPartial> = HashMap::new();
        for chunk in keys.chunks(MAX_BATCH_GET) {
            let mut pending = chunk.to_vec();
            for attempt in 1..=self.settings.batch.retry.max_attempts {
                match self.windows.get_partials(&pending).await {
                    Ok(read) => {
                        stored.extend(
                            read.found
                                .into_iter()
                                .map(|w| ((w.pk.clone(), w.sk.clone()), w)),
                        );
                        pending = read.unprocessed;
                    }
                    Err(e) => tracing::warn!(error = %e, "Window batch read failed."),
                }
                if pending.is_empty() {
                    break;
                }
                tokio::time::sleep(self.settings.batch.retry.backoff(attempt)).await;
            }
            if !pending.is_empty() {
                return fail_all();
            }
        }

        // Fold the new records into each touched partial, in memory. Window rules are
        // checked on merged totals only where this shard's part, extrapolated by the
        // share, could fire the rule: the other windows cost no read.
        let share = self.settings.rule_local_share;
        let mut candidates = Vec::new();
        let mut writes: Vec<(WindowPartial, Option<u64>, Vec<usize>)> = Vec::new();
        for (w, kind) in &touched {
            let key = (w.pk(), w.sk(shard));
            let mut partial = stored
                .remove(&key)
                .unwrap_or_else(|| WindowPartial::new(w.clone(), shard, cfg));
            let expected = (partial.version > 0).then_some(partial.version);
            let on: Vec<&Item<'_, Txn>> = p
                .on_time
                .get(w)
                .map(|(_, ix)| ix.iter().map(|&i| &items[i]).collect())
                .unwrap_or_default();
            let lt: Vec<&Item<'_, Txn>> = p
                .late_in
                .get(w)
                .map(|(_, ix)| ix.iter().map(|&i| &items[i]).collect())
                .unwrap_or_default();
            let mut ix: Vec<usize> = p.on_time.get(w).map(|(_, v)| v.clone()).unwrap_or_default();
            ix.extend(p.late_in.get(w).map(|(_, v)| v.clone()).unwrap_or_default());
            let changed = apply_to_partial(&mut partial, *kind, &on, &lt, watermark);
            let rules: Vec<_> = self
                .settings
                .rules
                .for_window(*kind, w.width_ms)
                .filter(|r| r.may_fire(&partial.metrics, share))
                .collect();
            if !rules.is_empty() {
                candidates.push((w, rules));
            }
            if changed {
                partial.version += 1;
                writes.push((partial, expected, ix));
            }
        }
        // Writes start only with time in hand before the Lambda deadline: killed in the
        // middle, the invocation would be a timeout, retried whole (and bisected); so the
        // shard's records are reported for retry instead. (Were it killed anyway, the
        // partials' guards make the retry exact.)
        // <https://docs.aws.amazon.com/lambda/latest/dg/services-kinesis-errors.html>
        if deadline.is_some_and(|d| Instant::now() + self.settings.batch.deadline_margin >= d) {
            tracing::warn!(
                shard,
                records = items.len(),
                "Too close to the deadline to write; reporting the records for retry."
            );
            return fail_all();
        }
        let partial_writes = writes.len();
        let plan_ref = &p;
        let results: Vec<(WindowPartial, Result<Put, StoreError>, Vec<usize>)> =
            futures::stream::iter(writes)
                .map(|(partial, expected, ix)| async move {
                    let r = self.windows.put_partial(&partial, expected).await;
                    if !matches!(r, Ok(Put::Conflict)) {
                        return (partial, r, ix);
                    }
                    // Stored after all: read it and apply the records it lacks.
                    let key = (partial.pk.clone(), partial.sk.clone());
                    let Ok(Some(mut stored)) = self
                        .windows
                        .get_partials(&[key])
                        .await
                        .map(|r| r.found.into_iter().next())
                    else {
                        return (partial, r, ix);
                    };
                    let window = stored.window.clone();
                    let kind = plan_ref
                        .on_time
                        .get(&window)
                        .or_else(|| plan_ref.late_in.get(&window))
                        .map_or(KeyKind::Global, |(k, _)| *k);
                    let pick =
                        |m: &BTreeMap<WindowId, (KeyKind, Vec<usize>)>| -> Vec<&Item<'_, Txn>> {
                            m.get(&window)
                                .map(|(_, v)| v.iter().map(|&i| &items[i]).collect())
                                .unwrap_or_default()
                        };
                    let (on, lt) = (pick(&plan_ref.on_time), pick(&plan_ref.late_in));
                    let expected = Some(stored.version);
                    if !apply_to_partial(&mut stored, kind, &on, &lt, watermark) {
                        return (stored, Ok(Put::Written), ix);
                    }
                    stored.version += 1;
                    let r = self.windows.put_partial(&stored, expected).await;
                    (stored, r, ix)
                })
                .buffer_unordered(WRITE_CONCURRENCY)
                .collect()
                .await;
        // The first record (by index) whose effect is not durable.
        let mut failed_ix: Option<usize> = None;
        for (partial, r, ix) in &results {
            match r {
                Ok(Put::Written) => {}
                // A single writer should never lose a race; if it does, the retry re-reads.
                Ok(Put::Conflict) => {
                    tracing::warn!(pk = %shardline_core::event::pan_safe_id(&partial.pk), "Window partial changed under its only writer.");
                    note_failure(&mut failed_ix, ix);
                }
                Err(e) => {
                    tracing::warn!(error = %e, pk = %shardline_core::event::pan_safe_id(&partial.pk), "Window partial write failed.");
                    note_failure(&mut failed_ix, ix);
                }
            }
        }

        // Window rules on merged totals of the windows this batch touched.
        let mut alerts: Vec<(Alert, usize)> = Vec::new();
        for (w, rules) in candidates {
            let first_ix = p
                .on_time
                .get(w)
                .and_then(|(_, v)| v.first().copied())
                .unwrap_or(0);
            match self.windows.window_partials(w).await {
                Ok(parts) => {
                    let mut total = Metrics::default();
                    for part in &parts {
                        total.merge(&part.metrics);
                    }
                    for rule in rules {
                        if let Some(a) = self.settings.rules.evaluate(rule, w, &total) {
                            alerts.push((a, first_ix));
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "Window total read failed.");
                    note_failure(&mut failed_ix, &[first_ix]);
                }
            }
        }
        // One BatchWriteItem must not name a key twice (DynamoDB rejects it, and the shard
        // would retry forever): ids that collide (a 16-bit hash in a card-number-like
        // merchant id) keep the first alert.
        let mut ids = std::collections::HashSet::new();
        alerts.retain(|(a, _)| ids.insert(a.alert_id.clone()));
        let alert_count = alerts.len();
        for chunk in alerts.chunks(MAX_BATCH_WRITE) {
            let batch: Vec<Alert> = chunk.iter().map(|(a, _)| a.clone()).collect();
            if let Err(e) = self.alerts.put_alerts(&batch).await {
                tracing::warn!(error = %e, "Window alert write failed.");
                note_failure(
                    &mut failed_ix,
                    &chunk.iter().map(|(_, i)| *i).collect::<Vec<_>>(),
                );
            }
        }

        // The late side output (before the progress moves past the late records).
        let late: Vec<(RecordMeta, Poison)> = p
            .late
            .iter()
            .filter(|l| failed_ix.is_none_or(|f| l.index < f))
            .map(|l| {
                let windows = l
                    .windows
                    .iter()
                    .map(|w| format!("{}@{}", w.pk(), w.start_ms))
                    .collect::<Vec<_>>()
                    .join(",");
                (
                    items[l.index].meta.clone(),
                    Poison::new(
                        PoisonReason::LateEvent {
                            windows,
                            watermark_ms: l.watermark_ms,
                        },
                        items[l.index].body.to_json().as_bytes(),
                    ),
                )
            })
            .collect();
        let late_count = late.len();
        let no_records: &[InRecord<Txn>] = &[];
        let q = self
            .processor
            .quarantine_only(no_records, late, None, None)
            .await;
        if let Some(seq) = &q.lowest_failure
            && let Some(i) = items.iter().position(|it| it.meta.pos.seq == *seq)
        {
            note_failure(&mut failed_ix, &[i]);
        }

        // Progress moves to the last record before the retry point, once the claims of
        // the records before it are durable (a record that fails leaves no claim behind, so
        // a re-send of it counts should its batch be given up; one that was applied keeps
        // its re-sends out from now on, on this shard and its children).
        let upto = failed_ix.unwrap_or(items.len());
        let mut lowest_failure = failed_ix.map(|i| items[i].meta.pos.seq.clone());
        if let Err(e) = self.store_claims(&book, upto).await {
            tracing::warn!(error = %e, "Event-id claims write failed.");
            lowest_failure = first.clone();
            let applied = 0;
            return ShardResult {
                lowest_failure,
                partial_writes,
                windows_touched: touched.len(),
                applied,
                late: 0,
                duplicates: p.duplicates.len(),
                alerts: alert_count,
            };
        }
        if let Some(next) = p.progress_at(items, upto)
            && next != progress
            && let Err(e) = self.put_progress(shard, &next).await
        {
            tracing::warn!(error = %e, "Shard progress write failed.");
            lowest_failure = first.clone();
        }
        let applied = p
            .on_time
            .values()
            .flat_map(|(_, v)| v.iter())
            .filter(|&&i| i < upto)
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        ShardResult {
            lowest_failure,
            partial_writes,
            windows_touched: touched.len(),
            applied,
            late: late_count,
            duplicates: p.duplicates.len(),
            alerts: alert_count,
        }
    }

    async fn put_progress(&self, shard: &str, next: &ShardProgress) -> Result<(), StoreError> {
        let retry = &self.settings.batch.retry;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.windows.put_progress(shard, next).await {
                Ok(()) => return Ok(()),
                Err(e)
                    if attempt < retry.max_attempts
                        && e.class() == shardline_core::ErrorClass::Transient =>
                {
                    tokio::time::sleep(retry.backoff(attempt)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned())
}

/// Lowers the first failed record index to the smallest of `ix`.
fn note_failure(failed: &mut Option<usize>, ix: &[usize]) {
    if let Some(&m) = ix.iter().min() {
        *failed = Some(failed.map_or(m, |f| f.min(m)));
    }
}
