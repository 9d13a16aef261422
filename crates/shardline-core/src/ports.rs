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
