//! Stream records as the domain sees them: where they came from (shard, position,
//! partition key, arrival) and what they decoded to (an event or a poison reason).

use std::sync::Arc;

use crate::event::{DecodeLimits, PoisonReason, Txn, decode_txn};
use crate::kpl;
use crate::seq::{RecordPos, SeqNo};

/// Where a record came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordMeta {
    /// The shard, e.g. `shardId-000000000003`.
    pub shard_id: Arc<str>,
    /// Sequence number (plus sub-sequence number for a KPL user record).
    pub pos: RecordPos,
    /// The partition key (the card token for the input stream).
    pub partition_key: String,
    /// The Kinesis record's own partition key when it differs from `partition_key`: a
    /// KPL user record keyed otherwise than its aggregate. Lambda's
    /// ParallelizationFactor lanes go by this outer key
    /// (<https://docs.aws.amazon.com/lambda/latest/dg/with-kinesis.html#kinesis-polling-and-batching>),
    /// so it, not `partition_key`, says which records arrive in order.
    pub lane_key: Option<Arc<str>>,
    /// Approximate arrival time in the stream, epoch milliseconds.
    pub arrival_ms: i64,
}

impl RecordMeta {
    /// The key Lambda's lanes (ParallelizationFactor) go by: the Kinesis record's
    /// partition key. Records of one shard with the same lane key arrive in order.
    pub fn lane_key(&self) -> &str {
        self.lane_key.as_deref().unwrap_or(&self.partition_key)
    }
}

/// One user record of a batch: its origin, and its decoded body or why it is poison.
#[derive(Clone, Debug)]
pub struct InRecord<T> {
    /// Where it came from.
    pub meta: RecordMeta,
    /// The decoded body, or the reason it can never be processed.
    pub body: Result<T, Poison>,
}

/// A record that can never be processed: why, and its bytes, kept for the quarantine so
/// nothing is lost. The bytes are withheld only when they would carry a card number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Poison {
    /// Why.
    pub reason: PoisonReason,
    /// The payload as received (empty when redacted).
    pub data: Vec<u8>,
}

impl Poison {
    /// Builds a poison record, redacting the payload if it carries a clear card number.
    pub fn new(reason: PoisonReason, data: &[u8]) -> Self {
        let data = if reason == PoisonReason::ClearCardNumber {
            Vec::new()
        } else {
            data.to_vec()
        };
        Self { reason, data }
    }
}

fn decode_one(data: &[u8], arrival_ms: i64, limits: &DecodeLimits) -> Result<Txn, Poison> {
    decode_txn(data, arrival_ms, limits).map_err(|reason| Poison::new(reason, data))
}

/// The Kinesis-level facts of one record, before its data is looked at.
#[derive(Clone, Debug)]
pub struct RawRecordMeta<'a> {
    /// The shard.
    pub shard_id: Arc<str>,
    /// The Kinesis sequence number.
    pub seq: SeqNo,
    /// The record's partition key (for an aggregate, the KPL's outer key).
    pub partition_key: &'a str,
    /// Approximate arrival time, epoch milliseconds.
    pub arrival_ms: i64,
}

/// Turns one Kinesis record's data into user records: one for a plain record, one per
/// user record for a KPL aggregate (each keeping the parent sequence number and its
/// sub-sequence number), or one poison record when the aggregate is corrupt.
pub fn decode_record_data(
    raw: RawRecordMeta<'_>,
    data: &[u8],
    limits: &DecodeLimits,
    out: &mut Vec<InRecord<Txn>>,
) {
    if !kpl::is_aggregated(data) {
        out.push(InRecord {
            body: decode_one(data, raw.arrival_ms, limits),
            meta: RecordMeta {
                shard_id: raw.shard_id,
                pos: RecordPos::plain(raw.seq),
                partition_key: raw.partition_key.to_owned(),
                lane_key: None,
                arrival_ms: raw.arrival_ms,
            },
        });
        return;
    }
    match kpl::deaggregate(data) {
        Ok(users) => {
            let outer: Arc<str> = Arc::from(raw.partition_key);
            for (sub, u) in users.into_iter().enumerate() {
                let lane_key = (u.partition_key != *outer).then(|| outer.clone());
                out.push(InRecord {
                    body: decode_one(&u.data, raw.arrival_ms, limits),
                    meta: RecordMeta {
                        shard_id: raw.shard_id.clone(),
                        pos: RecordPos {
                            seq: raw.seq.clone(),
                            sub: u32::try_from(sub).unwrap_or(u32::MAX),
                        },
                        partition_key: u.partition_key,
                        lane_key,
                        arrival_ms: raw.arrival_ms,
                    },
                });
            }
        }
        Err(e) => out.push(InRecord {
            body: Err(Poison::new(PoisonReason::Kpl(e.to_string()), data)),
            meta: RecordMeta {
                shard_id: raw.shard_id,
                pos: RecordPos::plain(raw.seq),
                partition_key: raw.partition_key.to_owned(),
                lane_key: None,
                arrival_ms: raw.arrival_ms,
            },
        }),
    }
}
