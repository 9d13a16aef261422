//! Ports: the capabilities the domain needs from the outside world, one small trait each.
//! Adapters implement them for DynamoDB / SQS (`shardline-aws`) and for memory
//! (`shardline-testkit`).

use std::future::Future;

use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::event::PoisonReason;

/// A poison record on its way to the quarantine: enough to find it in the stream, to know
/// why it was set aside, and to re-drive it once fixed. Bounded whatever the record: the
/// payload is an excerpt (at most 4 KiB, base64) with the whole payload's size and
/// digest, and no field carries a card number (see [`QuarantineEntry::from_poison`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantineEntry {
    /// Stable id, `<function>/<shard>/<sequence number>/<sub-sequence number>`: every
    /// delivery of the same record (a retry, a replay) gets the same id, so a consumer
    /// drops the copies by it.
    #[serde(default)]
    pub id: String,
    /// Which function set it aside.
    pub function: String,
    /// The shard it came from.
    pub shard_id: String,
    /// Its Kinesis sequence number (the parent's, for a KPL user record).
    pub sequence_number: String,
    /// Its sub-sequence number inside a KPL aggregate (0 for a plain record).
    pub sub_sequence_number: u32,
    /// Its partition key, card numbers redacted.
    pub partition_key: String,
    /// Approximate arrival time, epoch milliseconds.
    pub arrival_ms: i64,
    /// Why it can never be processed (machine-readable, redacted).
    pub reason: PoisonReason,
    /// The same reason, for people.
    pub reason_text: String,
    /// The payload's first bytes (at most 4 KiB) with card numbers redacted, base64;
    /// empty when withheld (a field held a card number) or not at hand.
    pub data_base64: String,
    /// Size of the whole payload as received, bytes.
    #[serde(default)]
    pub data_size: u64,
    /// SHA-256 of the whole payload after redaction (the payload's own digest when
    /// `data_redacted` is false), base64: hex digits would now and then form a run that
    /// card-number scanners flag. Empty when withheld or not at hand.
    #[serde(default)]
    pub data_sha256_base64: String,
    /// True when `data_base64` holds less than the whole (redacted) payload.
    #[serde(default)]
    pub data_truncated: bool,
    /// True when card numbers were redacted from the payload.
    #[serde(default)]
    pub data_redacted: bool,
}

/// Longest `function`, `shard_id` and `partition_key` an entry keeps, in characters
/// (Kinesis's own limits are 256 for partition keys and 128 for shard ids).
const ENTRY_TEXT_CHARS: usize = 256;
/// Longest `data_base64` an entry keeps: the base64 of a 4 KiB excerpt.
const ENTRY_DATA_B64: usize = crate::record::EXCERPT_BYTES.div_ceil(3) * 4;

/// Length of a SHA-256 digest in base64.
const SHA256_B64: usize = 44;

fn cut(s: &str, max_chars: usize) -> String {
    s.chars().take(max_chars).collect()
}

/// Control characters and the noncharacters U+FFFE/U+FFFF replaced by U+FFFD.
fn printable(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() || matches!(c, '\u{FFFE}' | '\u{FFFF}') {
                '\u{FFFD}'
            } else {
                c
            }
        })
        .collect()
}

impl QuarantineEntry {
    /// Upper bound on an entry's JSON: every text field cut to its bound, and JSON's
    /// worst escaping (6 bytes for one control character). SQS adapters size their
    /// batches by it.
    pub const MAX_JSON_BYTES: usize = 32 * 1024;

    /// The stable id of a record's entry.
    pub fn id_for(function: &str, shard_id: &str, sequence_number: &str, sub: u32) -> String {
        format!("{function}/{shard_id}/{sequence_number}/{sub}")
    }

    /// The entry for a poison record set aside by `function`: the reason and the payload
    /// excerpt are already redacted ([`Poison::new`](crate::record::Poison::new)); the
    /// partition key is redacted here.
    pub fn from_poison(
        function: &str,
        meta: &crate::record::RecordMeta,
        poison: crate::record::Poison,
    ) -> Self {
        use base64::Engine as _;
        let crate::record::Poison { reason, payload } = poison;
        // A producer that keys by card number must not have it copied into the queue: a
        // key that is one reads "[redacted]" (as entries always had it), a card number
        // inside a key is redacted like any text.
        let partition_key = if crate::event::looks_like_pan(&meta.partition_key) {
            "[redacted]".to_owned()
        } else {
            crate::event::redact_pans_str(&meta.partition_key).into_owned()
        };
        Self {
            id: String::new(),
            function: function.to_owned(),
            shard_id: meta.shard_id.to_string(),
            sequence_number: meta.pos.seq.to_string(),
            sub_sequence_number: meta.pos.sub,
            partition_key,
            arrival_ms: meta.arrival_ms,
            reason_text: String::new(),
            reason,
            data_base64: base64::engine::general_purpose::STANDARD.encode(&payload.prefix),
            data_size: payload.size as u64,
            data_sha256_base64: payload
                .sha256
                .map(|d| base64::engine::general_purpose::STANDARD.encode(d))
                .unwrap_or_default(),
            data_truncated: payload.truncated,
            data_redacted: payload.redacted,
        }
        .bounded()
    }

    /// The entry held to its bounds, whoever built it: texts redacted and cut, the id and
    /// reason text derived from the fields, and a payload excerpt over 4 KiB dropped
    /// (never cut: a cut could leave part of a number), so that its JSON is at most
    /// [`Self::MAX_JSON_BYTES`].
    #[must_use]
    pub fn bounded(mut self) -> Self {
        // The function and shard are named by the deployment, not the input: not redacted
        // ("shardId-000000000000" would read as a card number: twelve zeros pass Luhn),
        // only made printable, since the id goes into a queue's message attribute as is.
        self.function = printable(&cut(&self.function, ENTRY_TEXT_CHARS));
        self.shard_id = printable(&cut(&self.shard_id, ENTRY_TEXT_CHARS));
        self.partition_key = cut(
            &crate::event::redact_pans_str(&self.partition_key),
            ENTRY_TEXT_CHARS,
        );
        self.sequence_number = cut(&self.sequence_number, crate::seq::SEQ_MAX_DIGITS);
        self.reason = self.reason.redacted();
        self.reason_text = self.reason.to_string();
        self.id = Self::id_for(
            &self.function,
            &self.shard_id,
            &self.sequence_number,
            self.sub_sequence_number,
        );
        if self.data_base64.len() > ENTRY_DATA_B64 {
            self.data_base64.clear();
            self.data_truncated = true;
        } else if !self.data_base64.is_empty() {
            // Redaction is idempotent: an excerpt made by `from_poison` comes out the same.
            use base64::Engine as _;
            let b64 = base64::engine::general_purpose::STANDARD;
            match b64.decode(&self.data_base64) {
                Ok(bytes) => {
                    if let std::borrow::Cow::Owned(r) = crate::event::redact_pans_bytes(&bytes) {
                        self.data_base64 = b64.encode(r);
                        self.data_redacted = true;
                    }
                }
                Err(_) => self.data_base64.clear(),
            }
        }
        if self.data_sha256_base64.len() != SHA256_B64 {
            self.data_sha256_base64.clear();
        }
        self
    }

    /// The entry's JSON, held to [`Self::MAX_JSON_BYTES`] ([`Self::bounded`]).
    pub fn to_bounded_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string(&self.clone().bounded())
    }
}

/// Where poison records go: an SQS dead-letter queue in AWS, a vector in tests.
///
/// Entries of one call may be written in several requests; the call succeeds only when
/// every entry is durable. Writing an entry twice is allowed (at-least-once).
pub trait Quarantine: Send + Sync {
    /// Stores the entries durably.
    fn quarantine(
        &self,
        entries: &[QuarantineEntry],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

impl<Q: Quarantine> Quarantine for &Q {
    fn quarantine(
        &self,
        entries: &[QuarantineEntry],
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        (**self).quarantine(entries)
    }
}

/// Most keys one [`ProfileStore::get_profiles`] call takes (DynamoDB BatchGetItem's limit).
pub const MAX_BATCH_GET: usize = 100;
/// Most alerts one [`AlertSink::put_alerts`] call takes (DynamoDB BatchWriteItem's limit).
pub const MAX_BATCH_WRITE: usize = 25;

/// Profiles found by a batch read, and the keys the store did not get to.
#[derive(Debug, Default)]
pub struct BatchRead<T> {
    /// Items found (absent keys simply have no entry).
    pub found: Vec<T>,
    /// Keys not processed this time (DynamoDB's `UnprocessedKeys`): ask again.
    pub unprocessed: Vec<String>,
}

/// Result of a conditional write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Put {
    /// Written.
    Written,
    /// The stored version was not the expected one: someone else wrote; re-read.
    Conflict,
}

/// Per-card fraud profiles.
pub trait ProfileStore: Send + Sync {
    /// Reads up to [`MAX_BATCH_GET`] profiles in one request, strongly consistent.
    fn get_profiles(
        &self,
        cards: &[String],
    ) -> impl Future<Output = Result<BatchRead<crate::fraud::profile::CardProfile>, StoreError>> + Send;
    /// Reads one profile, strongly consistent.
    fn get_profile(
        &self,
        card: &str,
    ) -> impl Future<Output = Result<Option<crate::fraud::profile::CardProfile>, StoreError>> + Send;
    /// Writes `profile` (whose `version` is already the new one) only if the stored
    /// version is `expected` (`None`: only if no profile is stored).
    fn put_profile(
        &self,
        profile: &crate::fraud::profile::CardProfile,
        expected: Option<u64>,
    ) -> impl Future<Output = Result<Put, StoreError>> + Send;
}

/// Where alerts are stored: idempotent by `alert_id`.
pub trait AlertSink: Send + Sync {
    /// Writes up to [`MAX_BATCH_WRITE`] alerts in one request; all or an error.
    fn put_alerts(
        &self,
        alerts: &[crate::alert::Alert],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// Where the current rule set is stored, if anywhere.
pub trait RuleSource: Send + Sync {
    /// The stored rule set, `None` when none is stored.
    fn load_rules(
        &self,
    ) -> impl Future<Output = Result<Option<crate::fraud::rules::RuleSet>, StoreError>> + Send;

    /// The rule set published in shadow (run beside the live one, never acted on), if
    /// any.
    fn load_shadow_rules(
        &self,
    ) -> impl Future<Output = Result<Option<crate::fraud::rules::RuleSet>, StoreError>> + Send {
        async { Ok(None) }
    }
}

/// A rule source with nothing stored: the default rule set stays in force.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoRuleSource;

impl RuleSource for NoRuleSource {
    async fn load_rules(&self) -> Result<Option<crate::fraud::rules::RuleSet>, StoreError> {
        Ok(None)
    }
}

/// Where named lists are stored (the lists table).
pub trait ListSource: Send + Sync {
    /// The values of each named list, keeping only entries of the kind asked for; a list
    /// with no entries comes back empty.
    fn load_lists(
        &self,
        lists: &[(String, crate::lists::ListKind)],
    ) -> impl Future<Output = Result<crate::lists::Lists, StoreError>> + Send;
}

impl<L: ListSource> ListSource for &L {
    fn load_lists(
        &self,
        lists: &[(String, crate::lists::ListKind)],
    ) -> impl Future<Output = Result<crate::lists::Lists, StoreError>> + Send {
        (**self).load_lists(lists)
    }
}

/// No lists table: every declared list is empty (rule-file values still apply).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoListSource;

impl ListSource for NoListSource {
    async fn load_lists(
        &self,
        _lists: &[(String, crate::lists::ListKind)],
    ) -> Result<crate::lists::Lists, StoreError> {
        Ok(crate::lists::Lists::empty())
    }
}

/// An optional output stream for alerts (at least once; consumers dedupe by `alert_id`).
pub trait AlertStream: Send + Sync {
    /// Publishes the alerts.
    fn publish(
        &self,
        alerts: &[crate::alert::Alert],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// No output stream configured.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoAlertStream;

impl AlertStream for NoAlertStream {
    async fn publish(&self, _alerts: &[crate::alert::Alert]) -> Result<(), StoreError> {
        Ok(())
    }
}

impl<P: ProfileStore> ProfileStore for &P {
    fn get_profiles(
        &self,
        cards: &[String],
    ) -> impl Future<Output = Result<BatchRead<crate::fraud::profile::CardProfile>, StoreError>> + Send
    {
        (**self).get_profiles(cards)
    }
    fn get_profile(
        &self,
        card: &str,
    ) -> impl Future<Output = Result<Option<crate::fraud::profile::CardProfile>, StoreError>> + Send
    {
        (**self).get_profile(card)
    }
    fn put_profile(
        &self,
        profile: &crate::fraud::profile::CardProfile,
        expected: Option<u64>,
    ) -> impl Future<Output = Result<Put, StoreError>> + Send {
        (**self).put_profile(profile, expected)
    }
}

impl<A: AlertSink> AlertSink for &A {
    fn put_alerts(
        &self,
        alerts: &[crate::alert::Alert],
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        (**self).put_alerts(alerts)
    }
}

/// The key of one stored window partial: (`pk`, `sk`).
pub type PartialKey = (String, String);

/// Window partials and shard progress (one table).
pub trait WindowStore: Send + Sync {
    /// Reads up to [`MAX_BATCH_GET`] partials, strongly consistent.
    fn get_partials(
        &self,
        keys: &[PartialKey],
    ) -> impl Future<Output = Result<BatchReadKeys<crate::window::WindowPartial>, StoreError>> + Send;
    /// Writes a partial (its `version` already the new one) if the stored version is
    /// `expected` (`None`: only if absent).
    fn put_partial(
        &self,
        partial: &crate::window::WindowPartial,
        expected: Option<u64>,
    ) -> impl Future<Output = Result<Put, StoreError>> + Send;
    /// A shard's progress.
    fn get_progress(
        &self,
        shard: &str,
    ) -> impl Future<Output = Result<Option<crate::window::ShardProgress>, StoreError>> + Send;
    /// Stores a shard's progress.
    fn put_progress(
        &self,
        shard: &str,
        progress: &crate::window::ShardProgress,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Every shard's partial of one window.
    fn window_partials(
        &self,
        window: &crate::window::WindowId,
    ) -> impl Future<Output = Result<Vec<crate::window::WindowPartial>, StoreError>> + Send;
    /// Reads event-id claim items, strongly consistent, any number of keys (the adapter
    /// batches them); absent items are left out.
    fn get_claims(
        &self,
        keys: &[crate::window::claims::ClaimKey],
    ) -> impl Future<
        Output = Result<
            Vec<(
                crate::window::claims::ClaimKey,
                crate::window::claims::ClaimItem,
            )>,
            StoreError,
        >,
    > + Send;
    /// Writes claim items (whole, unconditionally: each shard writes only its own).
    fn put_claims(
        &self,
        items: &[crate::window::claims::ClaimItem],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// A shard's stored lineage.
    fn get_lineage(
        &self,
        shard: &str,
    ) -> impl Future<Output = Result<Option<crate::window::claims::Lineage>, StoreError>> + Send;
    /// Stores a shard's lineage (once, at its first batch).
    fn put_lineage(
        &self,
        shard: &str,
        lineage: &crate::window::claims::Lineage,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// Where a shard came from: the shards it was split or merged from (Kinesis
/// `ListShards`' `ParentShardId` and `AdjacentParentShardId`), or none.
pub trait ShardParents: Send + Sync {
    /// The parents of `shard` (empty for an original shard or an unknown one).
    fn parents<'a>(
        &'a self,
        shard: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<Vec<String>, StoreError>>;
}

/// Items found by a keyed batch read, and the keys to ask again.
#[derive(Debug, Default)]
pub struct BatchReadKeys<T> {
    /// Items found.
    pub found: Vec<T>,
    /// Keys not processed this time.
    pub unprocessed: Vec<PartialKey>,
}

impl<W: WindowStore> WindowStore for &W {
    fn get_partials(
        &self,
        keys: &[PartialKey],
    ) -> impl Future<Output = Result<BatchReadKeys<crate::window::WindowPartial>, StoreError>> + Send
    {
        (**self).get_partials(keys)
    }
    fn put_partial(
        &self,
        partial: &crate::window::WindowPartial,
        expected: Option<u64>,
    ) -> impl Future<Output = Result<Put, StoreError>> + Send {
        (**self).put_partial(partial, expected)
    }
    fn get_progress(
        &self,
        shard: &str,
    ) -> impl Future<Output = Result<Option<crate::window::ShardProgress>, StoreError>> + Send {
        (**self).get_progress(shard)
    }
    fn put_progress(
        &self,
        shard: &str,
        progress: &crate::window::ShardProgress,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        (**self).put_progress(shard, progress)
    }
    fn window_partials(
        &self,
        window: &crate::window::WindowId,
    ) -> impl Future<Output = Result<Vec<crate::window::WindowPartial>, StoreError>> + Send {
        (**self).window_partials(window)
    }
    fn get_claims(
        &self,
        keys: &[crate::window::claims::ClaimKey],
    ) -> impl Future<
        Output = Result<
            Vec<(
                crate::window::claims::ClaimKey,
                crate::window::claims::ClaimItem,
            )>,
            StoreError,
        >,
    > + Send {
        (**self).get_claims(keys)
    }
    fn put_claims(
        &self,
        items: &[crate::window::claims::ClaimItem],
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        (**self).put_claims(items)
    }
    fn get_lineage(
        &self,
        shard: &str,
    ) -> impl Future<Output = Result<Option<crate::window::claims::Lineage>, StoreError>> + Send
    {
        (**self).get_lineage(shard)
    }
    fn put_lineage(
        &self,
        shard: &str,
        lineage: &crate::window::claims::Lineage,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        (**self).put_lineage(shard, lineage)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::record::{Poison, RecordMeta};
    use crate::seq::{RecordPos, SeqNo};

    fn meta(key: &str) -> RecordMeta {
        RecordMeta {
            shard_id: Arc::from("shardId-000000000007"),
            pos: RecordPos {
                seq: SeqNo::parse("49590338271490256608559692538361571095921575989136588898")
                    .unwrap(),
                sub: 3,
            },
            partition_key: key.to_owned(),
            lane_key: None,
            arrival_ms: 1,
        }
    }

    /// Every text at its longest and made of control characters (6 bytes each in JSON).
    fn worst_text(n: usize) -> String {
        "\u{1}".repeat(n)
    }

    #[test]
    fn the_largest_entry_fits_its_json_bound() {
        let long = worst_text(100_000);
        let reasons = [
            PoisonReason::BadJson {
                message: long.clone(),
            },
            PoisonReason::InvalidField {
                field: long.clone(),
                why: long.clone(),
            },
            PoisonReason::LateEvent {
                windows: long.clone(),
                watermark_ms: i64::MIN,
            },
            PoisonReason::KplOverLimit {
                what: long.clone(),
                found: u64::MAX,
                limit: u64::MAX,
            },
            PoisonReason::UnknownCurrency {
                currency: long.clone(),
            },
        ];
        for reason in reasons {
            let payload = vec![0x01u8; 1024 * 1024];
            let mut e = QuarantineEntry::from_poison(
                &long,
                &meta(&long),
                Poison::new(reason.clone(), &payload),
            );
            e.shard_id = long.clone();
            let json = e.to_bounded_json().unwrap();
            assert!(
                json.len() <= QuarantineEntry::MAX_JSON_BYTES,
                "{} bytes for {:?}",
                json.len(),
                std::mem::discriminant(&reason)
            );
        }
    }

    #[test]
    fn an_entry_built_by_hand_is_held_to_the_bounds_too() {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let e = QuarantineEntry {
            id: String::new(),
            function: "f".into(),
            shard_id: "shardId-000000000000".into(),
            sequence_number: "1".into(),
            sub_sequence_number: 0,
            partition_key: "4111 1111 1111 1111".into(),
            arrival_ms: 0,
            reason: PoisonReason::BadJson {
                message: "invalid type: string \"4111111111111111\"".into(),
            },
            reason_text: "anything".into(),
            data_base64: b64.encode(b"{\"pan\":\"4111111111111111\"}"),
            data_size: 0,
            data_sha256_base64: "not a digest".into(),
            data_truncated: false,
            data_redacted: false,
        };
        let b = e.clone().bounded();
        assert_eq!(b.id, "f/shardId-000000000000/1/0");
        assert_eq!(b.partition_key, "[PAN redacted]");
        assert_eq!(
            b.reason_text,
            "invalid JSON: invalid type: string \"[PAN redacted]\""
        );
        assert_eq!(
            b64.decode(&b.data_base64).unwrap(),
            b"{\"pan\":\"[PAN redacted]\"}"
        );
        assert!(b.data_redacted && b.data_sha256_base64.is_empty());
        // A payload over the excerpt's size is dropped, never cut.
        let big = QuarantineEntry {
            data_base64: b64.encode(vec![b'a'; 1024 * 1024]),
            ..e
        }
        .bounded();
        assert!(big.data_base64.is_empty() && big.data_truncated);
        // Bounding is idempotent.
        assert_eq!(b.clone().bounded(), b);
    }

    #[test]
    fn entries_written_before_the_new_fields_still_read() {
        let old = r#"{"function":"fraud-scorer","shard_id":"shardId-000000000000","sequence_number":"1","sub_sequence_number":0,"partition_key":"tok","arrival_ms":0,"reason":{"kind":"invalid_coordinates"},"reason_text":"invalid coordinates","data_base64":""}"#;
        let e: QuarantineEntry = serde_json::from_str(old).unwrap();
        assert_eq!((e.id.as_str(), e.data_size), ("", 0));
    }

    #[test]
    fn from_poison_keeps_the_size_digest_and_stable_id() {
        use base64::Engine as _;
        use sha2::Digest as _;
        let payload = b"{\"schema\":\"txn.v9\"}";
        let e = QuarantineEntry::from_poison(
            "fraud-scorer",
            &meta("tok_1"),
            Poison::new(
                PoisonReason::UnknownSchema {
                    found: "txn.v9".into(),
                },
                payload,
            ),
        );
        assert_eq!(
            e.id,
            "fraud-scorer/shardId-000000000007/49590338271490256608559692538361571095921575989136588898/3"
        );
        assert_eq!(e.data_size, payload.len() as u64);
        assert_eq!(
            e.data_sha256_base64,
            base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(payload))
        );
        assert!(!e.data_truncated && !e.data_redacted);
        assert_eq!(
            e.reason_text,
            "unknown schema version \"txn.v9\", expected \"txn.v1\""
        );
    }
}
