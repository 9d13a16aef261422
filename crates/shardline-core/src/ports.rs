//! Ports: the capabilities the domain needs from the outside world, one small trait each.
//! Adapters implement them for DynamoDB / SQS (`shardline-aws`) and for memory
//! (`shardline-testkit`).

use std::future::Future;

use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::event::PoisonReason;

/// A poison record on its way to the quarantine: enough to find it in the stream, to know
/// why it was set aside, and to re-drive it once fixed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantineEntry {
    /// Which function set it aside.
    pub function: String,
    /// The shard it came from.
    pub shard_id: String,
    /// Its Kinesis sequence number (the parent's, for a KPL user record).
    pub sequence_number: String,
    /// Its sub-sequence number inside a KPL aggregate (0 for a plain record).
    pub sub_sequence_number: u32,
    /// Its partition key.
    pub partition_key: String,
    /// Approximate arrival time, epoch milliseconds.
    pub arrival_ms: i64,
    /// Why it can never be processed (machine-readable).
    pub reason: PoisonReason,
    /// The same reason, for people.
    pub reason_text: String,
    /// The payload, base64 (empty when withheld because it carried a card number).
    pub data_base64: String,
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
}

/// A rule source with nothing stored: the default rule set stays in force.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoRuleSource;

impl RuleSource for NoRuleSource {
    async fn load_rules(&self) -> Result<Option<crate::fraud::rules::RuleSet>, StoreError> {
        Ok(None)
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
