//! Test doubles for shardline's ports (hand-written, in memory), fault injection, and
//! fixture loading. A dev-dependency only: never linked into a deployed function.

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use shardline_core::StoreError;
use shardline_core::alert::Alert;
use shardline_core::fraud::profile::CardProfile;
use shardline_core::lists::{ListKind, ListValues, Lists};
use shardline_core::ports::ShardParents;
use shardline_core::ports::{
    AlertSink, BatchRead, BatchReadKeys, ListSource, MAX_BATCH_GET, MAX_BATCH_WRITE, PartialKey,
    ProfileStore, Put, Quarantine, QuarantineEntry, WindowStore,
};
use shardline_core::window::claims::{ClaimItem, ClaimKey, Lineage};
use shardline_core::window::{ShardProgress, WindowId, WindowPartial};

/// The repository root (where `events/` and `template.yaml` live).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Reads a file under `events/`, panicking with its path when it is missing.
pub fn fixture_bytes(rel: &str) -> Vec<u8> {
    let path = repo_root().join("events").join(rel);
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}

/// A fault to inject: fail the next `n` calls with a transient error.
#[derive(Debug, Default)]
pub struct Faults {
    transient: AtomicU32,
}

impl Faults {
    /// Makes the next `n` calls fail with a transient error.
    pub fn fail_next(&self, n: u32) {
        self.transient.store(n, Ordering::SeqCst);
    }

    /// Consumes one injected failure, if any.
    pub fn check(&self, what: &str) -> Result<(), StoreError> {
        let left = self.transient.load(Ordering::SeqCst);
        if left > 0 {
            self.transient.store(left - 1, Ordering::SeqCst);
            return Err(StoreError::transient(format!("injected fault in {what}")));
        }
        Ok(())
    }
}

/// An in-memory quarantine.
#[derive(Debug, Default)]
pub struct MemQuarantine {
    entries: Mutex<Vec<QuarantineEntry>>,
    /// Injected faults.
    pub faults: Faults,
}

impl MemQuarantine {
    /// Everything quarantined so far, copies included (the queue is at least once).
    pub fn entries(&self) -> Vec<QuarantineEntry> {
        self.entries.lock().expect("quarantine lock").clone()
    }

    /// What a consumer keeps after dropping copies by id (a retry's or a replay's): the
    /// first entry of each id, in order.
    pub fn distinct(&self) -> Vec<QuarantineEntry> {
        let mut seen = std::collections::HashSet::new();
        self.entries()
            .into_iter()
            .filter(|e| seen.insert(e.id.clone()))
            .collect()
    }
}

impl Quarantine for MemQuarantine {
    async fn quarantine(&self, entries: &[QuarantineEntry]) -> Result<(), StoreError> {
        self.faults.check("quarantine")?;
        // Held to the bounds as the SQS quarantine sends them.
        self.entries
            .lock()
            .expect("quarantine lock")
            .extend(entries.iter().map(|e| e.clone().bounded()));
        Ok(())
    }
}

/// Calls made to the in-memory stores, one per would-be DynamoDB request.
#[derive(Debug, Default)]
pub struct Calls {
    /// BatchGetItem-equivalent calls.
    pub batch_gets: AtomicU32,
    /// GetItem-equivalent calls.
    pub gets: AtomicU32,
    /// Conditional PutItem-equivalent calls.
    pub puts: AtomicU32,
    /// BatchWriteItem-equivalent calls.
    pub batch_writes: AtomicU32,
}

impl Calls {
    /// (batch gets, gets, puts, batch writes) so far.
    pub fn snapshot(&self) -> (u32, u32, u32, u32) {
        (
            self.batch_gets.load(Ordering::SeqCst),
            self.gets.load(Ordering::SeqCst),
            self.puts.load(Ordering::SeqCst),
            self.batch_writes.load(Ordering::SeqCst),
        )
    }

    /// Sets every counter back to zero.
    pub fn reset(&self) {
        for c in [&self.batch_gets, &self.gets, &self.puts, &self.batch_writes] {
            c.store(0, Ordering::SeqCst);
        }
    }
}

/// In-memory card profiles with DynamoDB's semantics: batch reads of at most 100 keys,
/// version-conditioned writes.
#[derive(Debug, Default)]
pub struct MemProfiles {
    items: Mutex<std::collections::BTreeMap<String, CardProfile>>,
    /// Requests made.
    pub calls: Calls,
    /// Injected faults (on every call).
    pub faults: Faults,
    /// Cards reported as unprocessed by the next batch read.
    pub unprocessed_once: Mutex<Vec<String>>,
    /// A profile another writer stores just before our next write lands (a lost race).
    pub race_once: Mutex<Option<CardProfile>>,
}

impl MemProfiles {
    /// Every stored profile, by card.
    pub fn snapshot(&self) -> std::collections::BTreeMap<String, CardProfile> {
        self.items.lock().expect("profiles lock").clone()
    }

    /// Overwrites a stored profile (simulates another writer).
    pub fn force(&self, p: CardProfile) {
        self.items
            .lock()
            .expect("profiles lock")
            .insert(p.card_token.clone(), p);
    }
}

impl ProfileStore for MemProfiles {
    async fn get_profiles(&self, cards: &[String]) -> Result<BatchRead<CardProfile>, StoreError> {
        self.calls.batch_gets.fetch_add(1, Ordering::SeqCst);
        assert!(
            cards.len() <= MAX_BATCH_GET,
            "BatchGetItem takes at most 100 keys"
        );
        self.faults.check("get_profiles")?;
        let unprocessed: Vec<String> =
            std::mem::take(&mut *self.unprocessed_once.lock().expect("lock"));
        let items = self.items.lock().expect("profiles lock");
        let found = cards
            .iter()
            .filter(|c| !unprocessed.contains(c))
            .filter_map(|c| items.get(c).cloned())
            .collect();
        let unprocessed = cards
            .iter()
            .filter(|c| unprocessed.contains(c))
            .cloned()
            .collect();
        Ok(BatchRead { found, unprocessed })
    }

    async fn get_profile(&self, card: &str) -> Result<Option<CardProfile>, StoreError> {
        self.calls.gets.fetch_add(1, Ordering::SeqCst);
        self.faults.check("get_profile")?;
        Ok(self.items.lock().expect("profiles lock").get(card).cloned())
    }

    async fn put_profile(
        &self,
        profile: &CardProfile,
        expected: Option<u64>,
    ) -> Result<Put, StoreError> {
        self.calls.puts.fetch_add(1, Ordering::SeqCst);
        self.faults.check("put_profile")?;
        let mut items = self.items.lock().expect("profiles lock");
        if let Some(other) = self.race_once.lock().expect("lock").take() {
            items.insert(other.card_token.clone(), other);
        }
        let stored = items.get(&profile.card_token).map(|p| p.version);
        if stored != expected {
            return Ok(Put::Conflict);
        }
        items.insert(profile.card_token.clone(), profile.clone());
        Ok(Put::Written)
    }
}

/// In-memory alerts table, keyed by alert id.
#[derive(Debug, Default)]
pub struct MemAlerts {
    items: Mutex<std::collections::BTreeMap<String, Alert>>,
    /// Requests made (`batch_writes`).
    pub calls: Calls,
    /// Injected faults.
    pub faults: Faults,
}

impl MemAlerts {
    /// Every stored alert, by id.
    pub fn snapshot(&self) -> std::collections::BTreeMap<String, Alert> {
        self.items.lock().expect("alerts lock").clone()
    }
}

impl AlertSink for MemAlerts {
    async fn put_alerts(&self, alerts: &[Alert]) -> Result<(), StoreError> {
        self.calls.batch_writes.fetch_add(1, Ordering::SeqCst);
        assert!(
            alerts.len() <= MAX_BATCH_WRITE,
            "BatchWriteItem takes at most 25 items"
        );
        self.faults.check("put_alerts")?;
        // DynamoDB rejects a BatchWriteItem that names one key twice (ValidationException).
        let mut ids: Vec<&str> = alerts.iter().map(|a| a.alert_id.as_str()).collect();
        ids.sort_unstable();
        if ids.windows(2).any(|w| w[0] == w[1]) {
            return Err(StoreError::fatal(
                "Provided list of item keys contains duplicates",
            ));
        }
        let mut items = self.items.lock().expect("alerts lock");
        for a in alerts {
            items.insert(a.alert_id.clone(), a.clone());
        }
        Ok(())
    }
}

/// In-memory windows table: partials by (pk, sk) and shard progress.
#[derive(Debug, Default)]
pub struct MemWindows {
    partials: Mutex<std::collections::BTreeMap<PartialKey, WindowPartial>>,
    progress: Mutex<std::collections::BTreeMap<String, ShardProgress>>,
    claims: Mutex<std::collections::BTreeMap<ClaimKey, ClaimItem>>,
    lineage: Mutex<std::collections::BTreeMap<String, Lineage>>,
    /// Injected faults on claim writes.
    pub claim_faults: Faults,
    /// Claim requests: `batch_gets` (BatchGetItem calls), `batch_writes` (BatchWriteItem
    /// calls), `gets` (lineage reads).
    pub claim_calls: Calls,
    /// Requests made: `batch_gets`, `gets` (progress reads and window queries), `puts`
    /// (partial writes), `batch_writes` (progress writes).
    pub calls: Calls,
    /// Injected faults on partial writes.
    pub faults: Faults,
}

impl MemWindows {
    /// Every stored partial.
    pub fn partials(&self) -> Vec<WindowPartial> {
        self.partials
            .lock()
            .expect("windows lock")
            .values()
            .cloned()
            .collect()
    }

    /// Every shard's progress.
    pub fn progress(&self) -> std::collections::BTreeMap<String, ShardProgress> {
        self.progress.lock().expect("windows lock").clone()
    }

    /// Every stored claim item.
    pub fn claim_items(&self) -> Vec<ClaimItem> {
        self.claims
            .lock()
            .expect("windows lock")
            .values()
            .cloned()
            .collect()
    }
}

impl WindowStore for MemWindows {
    async fn get_partials(
        &self,
        keys: &[PartialKey],
    ) -> Result<BatchReadKeys<WindowPartial>, StoreError> {
        self.calls.batch_gets.fetch_add(1, Ordering::SeqCst);
        assert!(
            keys.len() <= MAX_BATCH_GET,
            "BatchGetItem takes at most 100 keys"
        );
        let items = self.partials.lock().expect("windows lock");
        Ok(BatchReadKeys {
            found: keys.iter().filter_map(|k| items.get(k).cloned()).collect(),
            unprocessed: Vec::new(),
        })
    }

    async fn put_partial(
        &self,
        partial: &WindowPartial,
        expected: Option<u64>,
    ) -> Result<Put, StoreError> {
        self.calls.puts.fetch_add(1, Ordering::SeqCst);
        self.faults.check("put_partial")?;
        let mut items = self.partials.lock().expect("windows lock");
        let key = (partial.pk.clone(), partial.sk.clone());
        if items.get(&key).map(|p| p.version) != expected {
            return Ok(Put::Conflict);
        }
        items.insert(key, partial.clone());
        Ok(Put::Written)
    }

    async fn get_progress(&self, shard: &str) -> Result<Option<ShardProgress>, StoreError> {
        self.calls.gets.fetch_add(1, Ordering::SeqCst);
        Ok(self
            .progress
            .lock()
            .expect("windows lock")
            .get(shard)
            .cloned())
    }

    async fn put_progress(&self, shard: &str, progress: &ShardProgress) -> Result<(), StoreError> {
        self.calls.batch_writes.fetch_add(1, Ordering::SeqCst);
        self.progress
            .lock()
            .expect("windows lock")
            .insert(shard.to_owned(), progress.clone());
        Ok(())
    }

    async fn window_partials(&self, window: &WindowId) -> Result<Vec<WindowPartial>, StoreError> {
        self.calls.gets.fetch_add(1, Ordering::SeqCst);
        let items = self.partials.lock().expect("windows lock");
        Ok(items
            .values()
            .filter(|p| p.window == *window)
            .cloned()
            .collect())
    }

    async fn get_claims(
        &self,
        keys: &[ClaimKey],
    ) -> Result<Vec<(ClaimKey, ClaimItem)>, StoreError> {
        self.claim_calls
            .batch_gets
            .fetch_add(keys.len().div_ceil(MAX_BATCH_GET) as u32, Ordering::SeqCst);
        let items = self.claims.lock().expect("windows lock");
        Ok(keys
            .iter()
            .filter_map(|k| items.get(k).map(|i| (k.clone(), i.clone())))
            .collect())
    }

    async fn put_claims(&self, items: &[ClaimItem]) -> Result<(), StoreError> {
        self.claim_calls.batch_writes.fetch_add(
            items.len().div_ceil(MAX_BATCH_WRITE) as u32,
            Ordering::SeqCst,
        );
        self.claim_faults.check("put_claims")?;
        let mut stored = self.claims.lock().expect("windows lock");
        for item in items {
            let key = claim_key_of(item)
                .ok_or_else(|| StoreError::fatal(format!("bad claim key {}", item.sk)))?;
            stored.insert(key, item.clone());
        }
        Ok(())
    }

    async fn get_lineage(&self, shard: &str) -> Result<Option<Lineage>, StoreError> {
        self.claim_calls.gets.fetch_add(1, Ordering::SeqCst);
        Ok(self
            .lineage
            .lock()
            .expect("windows lock")
            .get(shard)
            .cloned())
    }

    async fn put_lineage(&self, shard: &str, lineage: &Lineage) -> Result<(), StoreError> {
        self.lineage
            .lock()
            .expect("windows lock")
            .insert(shard.to_owned(), lineage.clone());
        Ok(())
    }
}

/// The key a claim item is stored under, from its `pk` and `sk`.
fn claim_key_of(item: &ClaimItem) -> Option<ClaimKey> {
    let shard = item.pk.strip_prefix("claims#")?;
    let (slice, chunk) = item.sk.split_once('#')?;
    Some(ClaimKey {
        shard: shard.to_owned(),
        slice_ms: slice.parse().ok()?,
        chunk: chunk.parse().ok()?,
    })
}

/// In-memory lists table with the lists table's semantics: a list asked for with another
/// kind than its values', or not stored, loads empty. A test changes lists between loads
/// with [`MemLists::set`] and counts loads with [`MemLists::calls`] (to show a cache).
#[derive(Debug, Default)]
pub struct MemLists {
    lists: Mutex<std::collections::BTreeMap<String, (ListKind, Vec<String>)>>,
    loads: AtomicU32,
    /// Injected faults (on every load).
    pub faults: Faults,
}

impl MemLists {
    /// Stores (or replaces) a list of `kind` holding `values`, taken as they are
    /// (already normalised, as `shardline lists` stores them).
    pub fn set<I, S>(&self, name: &str, kind: ListKind, values: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.lists.lock().expect("lists lock").insert(
            name.to_owned(),
            (kind, values.into_iter().map(Into::into).collect()),
        );
    }

    /// Drops a list (it loads empty from now on).
    pub fn remove(&self, name: &str) {
        self.lists.lock().expect("lists lock").remove(name);
    }

    /// Loads so far ([`ListSource::load_lists`] calls, failed ones included).
    pub fn calls(&self) -> u32 {
        self.loads.load(Ordering::SeqCst)
    }
}

impl ListSource for MemLists {
    async fn load_lists(&self, lists: &[(String, ListKind)]) -> Result<Lists, StoreError> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        self.faults.check("load_lists")?;
        let stored = self.lists.lock().expect("lists lock");
        let mut out = Lists::empty();
        for (name, kind) in lists {
            let values = match stored.get(name) {
                Some((k, values)) if k == kind => {
                    ListValues::new(values.iter().map(String::as_str))
                }
                _ => ListValues::default(),
            };
            out.insert(name.clone(), *kind, values);
        }
        Ok(out)
    }
}

/// Shard parents from a fixed map (a reshard in a test).
#[derive(Debug, Default)]
pub struct MemParents(pub std::collections::HashMap<String, Vec<String>>);

impl ShardParents for MemParents {
    fn parents<'a>(
        &'a self,
        shard: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<Vec<String>, StoreError>> {
        let p = self.0.get(shard).cloned().unwrap_or_default();
        Box::pin(async move { Ok(p) })
    }
}

#[cfg(test)]
mod tests {
    use shardline_core::PoisonReason;

    use super::*;

    fn entry(seq: &str, data_base64: String) -> QuarantineEntry {
        QuarantineEntry {
            id: String::new(),
            function: "fraud-scorer".into(),
            shard_id: "shardId-000000000000".into(),
            sequence_number: seq.into(),
            sub_sequence_number: 0,
            partition_key: "4111 1111 1111 1111".into(),
            arrival_ms: 0,
            reason: PoisonReason::InvalidCoordinates,
            reason_text: String::new(),
            data_base64,
            data_size: 0,
            data_sha256_base64: String::new(),
            data_truncated: false,
            data_redacted: false,
        }
    }

    #[tokio::test]
    async fn entries_are_held_as_the_sqs_quarantine_sends_them() {
        let q = MemQuarantine::default();
        let huge = "QUFB".repeat(350_000); // 1 MiB of "AAA", base64
        q.quarantine(&[entry("1", huge), entry("2", String::new())])
            .await
            .unwrap();
        let got = q.entries();
        assert!(got[0].data_base64.is_empty() && got[0].data_truncated);
        assert_eq!(got[0].partition_key, "[PAN redacted]");
        assert_eq!(got[1].id, "fraud-scorer/shardId-000000000000/2/0");
        assert_eq!(got[1].reason_text, "invalid coordinates");
    }

    #[tokio::test]
    async fn mem_lists_load_what_was_set_of_the_kind_asked_and_count_loads() {
        let lists = MemLists::default();
        lists.set("home", ListKind::Country, ["GB", "FR"]);
        let ask = [
            ("home".to_owned(), ListKind::Country),
            ("risky".to_owned(), ListKind::Mcc),
        ];
        let got = lists.load_lists(&ask).await.unwrap();
        assert!(got.get("home", ListKind::Country).unwrap().contains("GB"));
        assert!(
            got.get("risky", ListKind::Mcc).unwrap().is_empty(),
            "not stored: empty"
        );
        // Another kind than the list's: empty, as the adapter skips those entries.
        let got = lists
            .load_lists(&[("home".to_owned(), ListKind::Merchant)])
            .await
            .unwrap();
        assert!(got.get("home", ListKind::Merchant).unwrap().is_empty());
        // Changed between loads.
        lists.set("home", ListKind::Country, ["DE"]);
        let got = lists.load_lists(&ask).await.unwrap();
        assert_eq!(got.get("home", ListKind::Country).unwrap().sorted(), ["DE"]);
        lists.faults.fail_next(1);
        assert!(lists.load_lists(&ask).await.is_err());
        assert_eq!(lists.calls(), 4);
    }

    #[tokio::test]
    async fn distinct_drops_the_copies_a_replay_sends() {
        let q = MemQuarantine::default();
        let batch = [entry("1", String::new()), entry("2", String::new())];
        q.quarantine(&batch).await.unwrap();
        q.quarantine(&batch).await.unwrap();
        assert_eq!(q.entries().len(), 4, "at least once: copies are kept");
        let ids: Vec<String> = q.distinct().into_iter().map(|e| e.id).collect();
        assert_eq!(
            ids,
            [
                "fraud-scorer/shardId-000000000000/1/0",
                "fraud-scorer/shardId-000000000000/2/0"
            ]
        );
    }
}
