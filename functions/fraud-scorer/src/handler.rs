//! The fraud-scorer handler, generic over its stores so that Lambda, the local runner,
//! tests and benchmarks run the same code.
//!
//! Per invocation: one strongly consistent BatchGetItem per 100 distinct cards, each
//! card's records applied in order in memory, alerts written in BatchWriteItems of 25,
//! then one conditional PutItem per changed card. The profile write is the commit
//! point: alerts are written before it (idempotent by event id), and the profile's
//! per-shard guard makes a replay skip what is already applied. A lost race on a card
//! (another shard wrote it, e.g. after a reshard) re-reads and re-applies.
//!
//! Nothing starts a store call with less than the batch config's deadline margin left
//! before the Lambda deadline, and the batch-level calls are cut off there: a card that
//! is not committed by then is reported for retry. An invocation that timed out would be
//! retried whole and count against the mapping's retries
//! (<https://docs.aws.amazon.com/lambda/latest/dg/services-kinesis-errors.html>).

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use aws_lambda_events::event::streams::KinesisEventResponse;
use shardline_aws::kinesis::{EnvelopeError, batch_response, decode_event_json};
use shardline_core::alert::Alert;
use shardline_core::batch::{BatchConfig, BatchOutcome, BatchProcessor, Item, KeyFailure};
use shardline_core::fraud::profile::CardProfile;
use shardline_core::fraud::rules::{Cached, Policies, Policy, RuleSet};
use shardline_core::fraud::{CardOutcome, SHADOW_SOURCE, apply_card};
use shardline_core::lists::Lists;
use shardline_core::ports::{
    AlertSink, AlertStream, ListSource, MAX_BATCH_GET, MAX_BATCH_WRITE, NoListSource, ProfileStore,
    Put, Quarantine, RuleSource,
};
use shardline_core::{DecodeLimits, ErrorClass, InRecord, StoreError, Txn};
use std::sync::Arc;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// The function's name: quarantine entries and metrics carry it.
pub const FUNCTION: &str = "fraud-scorer";
/// Conflicting writes on one card tolerated before the card is reported for retry.
const MAX_CONFLICTS: u32 = 5;

/// The invocation cannot be processed at all.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// The event is not a Kinesis event.
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
}

/// Settings of the scorer that are not stores.
#[derive(Clone, Debug)]
pub struct ScorerSettings {
    /// Batch processing (concurrency, retries).
    pub batch: BatchConfig,
    /// Decode limits.
    pub limits: DecodeLimits,
    /// How long a loaded rule set is used before it is reloaded.
    pub rules_ttl: Duration,
    /// How long loaded lists are used before they are reloaded (a list change takes
    /// effect within this).
    pub lists_ttl: Duration,
    /// The shipped default rule set's review threshold (the template's AlertThreshold);
    /// a published rule set carries its own.
    pub threshold_override: Option<u32>,
}

impl Default for ScorerSettings {
    fn default() -> Self {
        Self {
            batch: BatchConfig::new(FUNCTION),
            limits: DecodeLimits::default(),
            rules_ttl: Duration::from_secs(60),
            lists_ttl: Duration::from_secs(60),
            threshold_override: None,
        }
    }
}

/// What one invocation did.
#[derive(Debug)]
pub struct Report {
    /// The Lambda response (partial batch failures).
    pub response: KinesisEventResponse,
    /// The batch processor's outcome.
    pub outcome: BatchOutcome,
    /// Decisions stored (events reviewed or blocked).
    pub alerts: usize,
    /// Events blocked.
    pub blocked: usize,
    /// Events scored.
    pub scored: usize,
    /// Events allowed.
    pub below_threshold: usize,
    /// Events where the shadow rule set decided otherwise.
    pub shadow_disagreements: usize,
    /// Records skipped as Kinesis replays.
    pub replayed: usize,
    /// Records skipped as producer duplicates.
    pub duplicates: usize,
}

/// The stores a scorer uses.
pub struct Stores<P, A, Q, R, S> {
    /// Card profiles.
    pub profiles: P,
    /// Alerts table.
    pub alerts: A,
    /// Quarantine for poison records.
    pub quarantine: Q,
    /// Where the rule set is stored.
    pub rules: R,
    /// Optional alert output stream.
    pub stream: S,
}

/// The rule sets and lists in force, each reloaded after its TTL.
struct PolicyCache {
    live: Cached<Arc<RuleSet>>,
    shadow: Cached<Option<Arc<RuleSet>>>,
    lists: Cached<Lists>,
    /// The (name, kind) pairs `lists` was loaded for.
    lists_for: Vec<(String, shardline_core::lists::ListKind)>,
    built: Arc<Policies>,
}

/// The fraud scorer: holds its stores and the cached rule sets and lists between
/// invocations.
pub struct Scorer<P, A, Q, R, S, L = NoListSource> {
    profiles: P,
    alerts: A,
    rule_source: R,
    stream: S,
    list_source: L,
    processor: BatchProcessor<Q>,
    policies: Mutex<PolicyCache>,
    /// The shipped rule set (with the template's threshold): in force while nothing is
    /// published.
    default_rules: Arc<RuleSet>,
    settings: ScorerSettings,
}

#[derive(Default)]
struct CardWork {
    /// The stored profile and the version it had (`None`: not stored).
    loaded: Option<(Option<u64>, CardProfile)>,
    computed: Option<CardOutcome>,
    alerts_durable: bool,
    written: bool,
}

impl<P, A, Q, R, S> Scorer<P, A, Q, R, S, NoListSource>
where
    P: ProfileStore,
    A: AlertSink,
    Q: Quarantine,
    R: RuleSource,
    S: AlertStream,
{
    /// A scorer over these stores, without a lists table (declared lists hold only the
    /// rule file's values).
    pub fn new(stores: Stores<P, A, Q, R, S>, settings: ScorerSettings) -> Self {
        let initial = Arc::new(with_override(
            RuleSet::default_rules(),
            settings.threshold_override,
        ));
        let built = Arc::new(Policies {
            live: Policy::new(Arc::clone(&initial), &Lists::empty()),
            shadow: None,
        });
        Self {
            profiles: stores.profiles,
            alerts: stores.alerts,
            rule_source: stores.rules,
            stream: stores.stream,
            list_source: NoListSource,
            processor: BatchProcessor::new(settings.batch.clone(), stores.quarantine),
            default_rules: Arc::clone(&initial),
            policies: Mutex::new(PolicyCache {
                live: Cached::new(initial, settings.rules_ttl),
                shadow: Cached::new(None, settings.rules_ttl),
                lists: Cached::new(Lists::empty(), settings.lists_ttl),
                lists_for: Vec::new(),
                built,
            }),
            settings,
        }
    }

    /// The same scorer reading lists from `lists`.
    pub fn with_lists<L: ListSource>(self, lists: L) -> Scorer<P, A, Q, R, S, L> {
        Scorer {
            profiles: self.profiles,
            alerts: self.alerts,
            rule_source: self.rule_source,
            stream: self.stream,
            list_source: lists,
            processor: self.processor,
            policies: self.policies,
            default_rules: self.default_rules,
            settings: self.settings,
        }
    }
}

/// The template's AlertThreshold, when set, is the shipped default set's review
/// threshold (a published rule set carries its own).
fn with_override(mut rs: RuleSet, threshold: Option<u32>) -> RuleSet {
    if let Some(t) = threshold
        && rs.thresholds.review != Some(t)
    {
        rs.thresholds.review = Some(t);
        if rs.thresholds.block.is_some_and(|b| b < t) {
            rs.thresholds.block = Some(t);
        }
        // Other thresholds, other decisions: the hash says so.
        rs.hash = format!("{}+review={t}", rs.hash);
    }
    rs
}

impl<P, A, Q, R, S, L> Scorer<P, A, Q, R, S, L>
where
    P: ProfileStore,
    A: AlertSink,
    Q: Quarantine,
    R: RuleSource,
    S: AlertStream,
    L: ListSource,
{
    /// The profile store (tests read it back).
    pub fn profiles(&self) -> &P {
        &self.profiles
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
        let rules = self.current_policies().await;
        let mut by_card: HashMap<&str, Vec<Item<'_, Txn>>> = HashMap::new();
        for r in records {
            if let Ok(body) = &r.body {
                by_card
                    .entry(body.card_token.as_str())
                    .or_default()
                    .push(Item {
                        meta: &r.meta,
                        body,
                    });
            }
        }
        for items in by_card.values_mut() {
            items.sort_by(|a, b| a.meta.pos.cmp(&b.meta.pos));
        }
        let work: HashMap<&str, Mutex<CardWork>> = by_card
            .keys()
            .map(|c| (*c, Mutex::new(CardWork::default())))
            .collect();

        self.prefetch(&work, deadline).await;
        // Score every card whose profile is in hand, in memory.
        for (card, items) in &by_card {
            let mut st = work[card].lock().await;
            let st = &mut *st;
            if let Some((_, p)) = &mut st.loaded {
                // Consumed: a conflict re-reads the profile anyway.
                st.computed = Some(apply_card(std::mem::take(p), items, &rules));
            }
        }
        self.write_alerts_in_bulk(&work, deadline).await;

        let outcome = self
            .processor
            .process_keyed(records, deadline, |items| {
                self.commit_key(items, &by_card, &work, &rules, deadline)
            })
            .await;

        let mut report = Report {
            response: batch_response(&outcome),
            outcome,
            alerts: 0,
            blocked: 0,
            scored: 0,
            below_threshold: 0,
            shadow_disagreements: 0,
            replayed: 0,
            duplicates: 0,
        };
        for st in work.values() {
            let st = st.lock().await;
            if let (true, Some(c)) = (st.written, &st.computed) {
                report.alerts += c.alerts.len();
                report.blocked += c.blocked;
                report.scored += c.scored;
                report.below_threshold += c.below_threshold;
                report.shadow_disagreements += c.shadow_disagreements;
                report.replayed += c.replayed;
                report.duplicates += c.duplicates;
            }
        }
        report
    }

    /// The policies in force: rule sets reloaded every rules TTL, lists every lists TTL.
    /// A store that fails, or a stored rule set that does not load, leaves what is in
    /// force in place (and says so in the log).
    async fn current_policies(&self) -> Arc<Policies> {
        let mut cache = self.policies.lock().await;
        let cache = &mut *cache;
        let now = std::time::Instant::now();
        let mut changed = false;
        if cache.live.stale(now) {
            let live = match self.rule_source.load_rules().await {
                // A published set carries its own thresholds.
                Ok(Some(loaded)) => Some(Arc::new(loaded)),
                // Nothing published (or the item deleted): the shipped default.
                Ok(None) if cache.live.current().hash != self.default_rules.hash => {
                    Some(Arc::clone(&self.default_rules))
                }
                Ok(None) => None,
                Err(e) => {
                    tracing::warn!(error = %e, "Rule set reload failed; keeping the rules in force.");
                    None
                }
            };
            changed |= live.is_some();
            cache.live.refreshed(now, live);
            match self.rule_source.load_shadow_rules().await {
                Ok(shadow) => {
                    changed |= shadow.as_ref().map(|s| &s.hash)
                        != cache.shadow.current().as_ref().map(|s| &s.hash);
                    cache.shadow.refreshed(now, Some(shadow.map(Arc::new)));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "Shadow rule set reload failed; keeping the one in force.");
                    cache.shadow.refreshed(now, None);
                }
            }
        }
        let mut wanted = cache.live.current().list_kinds();
        if let Some(s) = cache.shadow.current() {
            wanted.extend(s.list_kinds());
        }
        wanted.sort();
        wanted.dedup();
        // A rule set that names a list not loaded yet gets it now, not a TTL later (until
        // then it would read as empty: a block list blocking nothing).
        let new_lists = wanted.iter().any(|w| !cache.lists_for.contains(w));
        if cache.lists.stale(now) || new_lists {
            let loaded = if wanted.is_empty() {
                Some(Lists::empty())
            } else {
                match self.list_source.load_lists(&wanted).await {
                    Ok(l) => Some(l),
                    Err(e) => {
                        tracing::warn!(error = %e, "List reload failed; keeping the lists in force.");
                        None
                    }
                }
            };
            if loaded.is_some() {
                changed = true;
                cache.lists_for = wanted;
            }
            cache.lists.refreshed(now, loaded);
        }
        if changed {
            let lists = cache.lists.current();
            cache.built = Arc::new(Policies {
                live: Policy::new(Arc::clone(cache.live.current()), lists),
                shadow: cache
                    .shadow
                    .current()
                    .as_ref()
                    .map(|s| Policy::new(Arc::clone(s), lists)),
            });
        }
        Arc::clone(&cache.built)
    }

    /// True while `pause` and then new store work fit before the deadline with the
    /// margin kept in hand.
    fn time_for(&self, pause: Duration, deadline: Option<Instant>) -> bool {
        deadline.is_none_or(|d| Instant::now() + pause + self.settings.batch.deadline_margin < d)
    }

    /// Fails with a transient error once the deadline margin is reached: the card is
    /// then reported for retry rather than started with no time to finish.
    fn check_time(&self, deadline: Option<Instant>) -> Result<(), StoreError> {
        if self.time_for(Duration::ZERO, deadline) {
            Ok(())
        } else {
            Err(StoreError::transient(
                "too close to the Lambda deadline to start a store call",
            ))
        }
    }

    /// Runs a batch-level store call, cut off where the deadline margin starts: what it
    /// did not finish is left to the per-card commit (reads are redone, alert writes are
    /// idempotent by alert id). Without it one stuck request could outlive the
    /// invocation, the SDK's own operation timeout being longer than the margin.
    async fn bounded<T>(
        &self,
        deadline: Option<Instant>,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let Some(d) = deadline else {
            return call.await;
        };
        let cutoff = d
            .checked_sub(self.settings.batch.deadline_margin)
            .unwrap_or(d);
        tokio::time::timeout_at(cutoff, call)
            .await
            .unwrap_or_else(|_| {
                Err(StoreError::transient(
                    "batch call cut off at the Lambda deadline margin",
                ))
            })
    }

    /// One BatchGetItem per 100 cards; unprocessed keys asked again with backoff while
    /// time is left. Cards it cannot read are read one by one when they are committed.
    async fn prefetch(&self, work: &HashMap<&str, Mutex<CardWork>>, deadline: Option<Instant>) {
        let cards: Vec<String> = work.keys().map(|c| (*c).to_owned()).collect();
        let retry = &self.settings.batch.retry;
        'chunks: for chunk in cards.chunks(MAX_BATCH_GET) {
            let mut pending: Vec<String> = chunk.to_vec();
            let mut attempt = 0;
            while !pending.is_empty() && attempt < retry.max_attempts {
                if !self.time_for(Duration::ZERO, deadline) {
                    tracing::warn!(
                        cards = pending.len(),
                        "Too close to the deadline to read profiles in bulk; leaving them to the commit."
                    );
                    break 'chunks;
                }
                attempt += 1;
                match self
                    .bounded(deadline, self.profiles.get_profiles(&pending))
                    .await
                {
                    Ok(read) => {
                        let mut found: HashMap<String, CardProfile> = read
                            .found
                            .into_iter()
                            .map(|p| (p.card_token.clone(), p))
                            .collect();
                        for card in &pending {
                            if read.unprocessed.contains(card) {
                                continue;
                            }
                            let loaded = match found.remove(card) {
                                Some(p) => (Some(p.version), p),
                                None => (None, CardProfile::new(card.clone())),
                            };
                            work[card.as_str()].lock().await.loaded = Some(loaded);
                        }
                        pending = read.unprocessed;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, cards = pending.len(), "Profile batch read failed.");
                        if e.class() != ErrorClass::Transient {
                            break;
                        }
                    }
                }
                if !pending.is_empty() && attempt < retry.max_attempts {
                    let pause = retry.backoff(attempt);
                    if !self.time_for(pause, deadline) {
                        tracing::warn!(
                            cards = pending.len(),
                            "No time for another bulk profile read; leaving them to the commit."
                        );
                        break 'chunks;
                    }
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }

    /// Writes decision records to the alerts table, and the live ones (not the shadow
    /// rule set's) to the output stream.
    async fn write_alerts(&self, chunk: &[Alert]) -> Result<(), StoreError> {
        self.alerts.put_alerts(chunk).await?;
        if chunk.iter().any(|a| a.source == SHADOW_SOURCE) {
            let live: Vec<Alert> = chunk
                .iter()
                .filter(|a| a.source != SHADOW_SOURCE)
                .cloned()
                .collect();
            if live.is_empty() {
                return Ok(());
            }
            return self.stream.publish(&live).await;
        }
        self.stream.publish(chunk).await
    }

    /// Alerts of every scored card, 25 per BatchWriteItem, while time is left. A card
    /// whose chunk failed or was not started writes its own alerts when it is committed.
    async fn write_alerts_in_bulk(
        &self,
        work: &HashMap<&str, Mutex<CardWork>>,
        deadline: Option<Instant>,
    ) {
        // Each record with the card it belongs to: shadow records carry no card token,
        // and a failed chunk must leave every card with a record in it to its commit.
        let mut all: Vec<Alert> = Vec::new();
        let mut owners: Vec<String> = Vec::new();
        for st in work.values() {
            let mut st = st.lock().await;
            match &st.computed {
                Some(c) if c.alerts.is_empty() && c.shadow_alerts.is_empty() => {
                    st.alerts_durable = true
                }
                Some(c) => {
                    for a in c.alerts.iter().chain(&c.shadow_alerts) {
                        all.push(a.clone());
                        owners.push(c.profile.card_token.clone());
                    }
                }
                None => {}
            }
        }
        let mut failed_cards: std::collections::HashSet<&str> = std::collections::HashSet::new();
        let mut out_of_time = false;
        for (chunk, owners) in all
            .chunks(MAX_BATCH_WRITE)
            .zip(owners.chunks(MAX_BATCH_WRITE))
        {
            out_of_time = out_of_time || !self.time_for(Duration::ZERO, deadline);
            let ok = !out_of_time
                && self
                    .bounded(deadline, self.write_alerts(chunk))
                    .await
                    .is_ok();
            if !ok {
                failed_cards.extend(owners.iter().map(String::as_str));
            }
        }
        for st in work.values() {
            let mut st = st.lock().await;
            let written = st
                .computed
                .as_ref()
                .is_some_and(|c| !failed_cards.contains(c.profile.card_token.as_str()));
            if written {
                st.alerts_durable = true;
            }
        }
    }

    /// Makes one partition key's cards durable: alerts (if still pending), then the
    /// profile with a version condition. A card is committed whole, with every record
    /// of it in the batch, whichever key's run gets to it first: one card may come under
    /// several partition keys (a producer keying by terminal), and a card recomputed
    /// after a lost race from one key's records alone would acknowledge the others'
    /// without applying them.
    async fn commit_key(
        &self,
        items: Vec<Item<'_, Txn>>,
        by_card: &HashMap<&str, Vec<Item<'_, Txn>>>,
        work: &HashMap<&str, Mutex<CardWork>>,
        rules: &Policies,
        deadline: Option<Instant>,
    ) -> Result<(), KeyFailure> {
        let mut cards: Vec<&str> = Vec::new();
        for it in &items {
            if !cards.contains(&it.body.card_token.as_str()) {
                cards.push(&it.body.card_token);
            }
        }
        for card in cards {
            let first = items
                .iter()
                .position(|i| i.body.card_token == card)
                .unwrap_or(0);
            let card_items = by_card.get(card).map_or(&[][..], Vec::as_slice);
            self.commit_card(card, card_items, &work[card], rules, deadline)
                .await
                .map_err(|e| KeyFailure::at(first, e))?;
        }
        Ok(())
    }

    async fn commit_card(
        &self,
        card: &str,
        items: &[Item<'_, Txn>],
        work: &Mutex<CardWork>,
        rules: &Policies,
        deadline: Option<Instant>,
    ) -> Result<(), StoreError> {
        let mut st = work.lock().await;
        for _ in 0..MAX_CONFLICTS {
            if st.written {
                return Ok(());
            }
            // The batch processor keeps the margin only before its retries; a key's
            // first run can start late (behind the bulk calls or other keys), so every
            // store call here checks it too.
            if st.loaded.is_none() {
                self.check_time(deadline)?;
                let p = self.profiles.get_profile(card).await?;
                st.loaded = Some(match p {
                    Some(p) => (Some(p.version), p),
                    None => (None, CardProfile::new(card)),
                });
                st.computed = None;
            }
            let expected = st.loaded.as_ref().and_then(|(v, _)| *v);
            let st = &mut *st;
            if st.computed.is_none() {
                // The read profile is consumed: after this only its version matters.
                let profile = st
                    .loaded
                    .as_mut()
                    .map(|(_, p)| std::mem::take(p))
                    .unwrap_or_default();
                let c = apply_card(profile, items, rules);
                st.alerts_durable = c.alerts.is_empty() && c.shadow_alerts.is_empty();
                st.computed = Some(c);
            }
            let Some(c) = st.computed.as_mut() else {
                continue;
            };
            if !c.changed {
                st.written = true;
                return Ok(());
            }
            if !st.alerts_durable {
                let all: Vec<Alert> = c.alerts.iter().chain(&c.shadow_alerts).cloned().collect();
                for chunk in all.chunks(MAX_BATCH_WRITE) {
                    self.check_time(deadline)?;
                    self.write_alerts(chunk).await?;
                }
                st.alerts_durable = true;
            }
            self.check_time(deadline)?;
            c.profile.version = expected.map_or(1, |v| v + 1);
            match self.profiles.put_profile(&c.profile, expected).await? {
                Put::Written => {
                    st.written = true;
                    return Ok(());
                }
                Put::Conflict => {
                    tracing::debug!(
                        shard_records = items.len(),
                        "Profile changed under us; re-reading."
                    );
                    st.loaded = None;
                    st.computed = None;
                }
            }
        }
        Err(StoreError::transient(format!(
            "profile write lost {MAX_CONFLICTS} races in a row"
        )))
    }
}
