//! KPL record aggregation: de-aggregation of incoming records, and aggregation for the
//! generator and tests.
//!
//! Wire format (<https://github.com/awslabs/amazon-kinesis-producer/blob/master/aggregation-format.md>):
//! the magic bytes `F3 89 9A C2`, a protobuf `AggregatedRecord`, then the 16-byte MD5
//! digest of the protobuf bytes. A record without the magic is a plain record.

use md5::{Digest, Md5};
use prost::Message;

/// The four bytes that open every KPL aggregated record.
pub const KPL_MAGIC: [u8; 4] = [0xF3, 0x89, 0x9A, 0xC2];
const DIGEST_LEN: usize = 16;

/// `AggregatedRecord` of the KPL's `messages.proto`.
#[derive(Clone, PartialEq, Message)]
pub struct AggregatedRecord {
    /// Partition keys, referenced by index from each record.
    #[prost(string, repeated, tag = "1")]
    pub partition_key_table: Vec<String>,
    /// Explicit hash keys, referenced by index.
    #[prost(string, repeated, tag = "2")]
    pub explicit_hash_key_table: Vec<String>,
    /// The user records.
    #[prost(message, repeated, tag = "3")]
    pub records: Vec<KplRecord>,
}

/// `Record` of the KPL's `messages.proto`.
#[derive(Clone, PartialEq, Message)]
pub struct KplRecord {
    /// Index into `partition_key_table`.
    #[prost(uint64, required, tag = "1")]
    pub partition_key_index: u64,
    /// Index into `explicit_hash_key_table`.
    #[prost(uint64, optional, tag = "2")]
    pub explicit_hash_key_index: Option<u64>,
    /// The user record's payload.
    #[prost(bytes = "vec", required, tag = "3")]
    pub data: Vec<u8>,
    /// Tags (unused by shardline, kept for format fidelity).
    #[prost(message, repeated, tag = "4")]
    pub tags: Vec<KplTag>,
}

/// `Tag` of the KPL's `messages.proto`.
#[derive(Clone, PartialEq, Message)]
pub struct KplTag {
    /// Tag key.
    #[prost(string, required, tag = "1")]
    pub key: String,
    /// Tag value.
    #[prost(string, optional, tag = "2")]
    pub value: Option<String>,
}

/// Why an aggregated record could not be de-aggregated.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KplError {
    /// Shorter than magic plus digest.
    #[error("truncated: {0} bytes is shorter than magic and digest")]
    Truncated(usize),
    /// The MD5 trailer does not match the body.
    #[error("MD5 digest mismatch")]
    BadDigest,
    /// The body is not a valid `AggregatedRecord`.
    #[error("protobuf body does not decode: {0}")]
    Protobuf(String),
    /// A record points outside the partition key table.
    #[error("record {record} names partition key {index}, table has {len}")]
    BadKeyIndex {
        /// Index of the user record.
        record: usize,
        /// The index it names.
        index: u64,
        /// Size of the table.
        len: usize,
    },
}

/// One user record out of an aggregate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserRecord {
    /// Its partition key.
    pub partition_key: String,
    /// Its payload.
    pub data: Vec<u8>,
}

/// True when `data` opens with the KPL magic.
pub fn is_aggregated(data: &[u8]) -> bool {
    data.starts_with(&KPL_MAGIC)
}

/// De-aggregates a record that [`is_aggregated`]; user records come back in order, their
/// index being their sub-sequence number.
pub fn deaggregate(data: &[u8]) -> Result<Vec<UserRecord>, KplError> {
    if data.len() < KPL_MAGIC.len() + DIGEST_LEN {
        return Err(KplError::Truncated(data.len()));
    }
    let body = &data[KPL_MAGIC.len()..data.len() - DIGEST_LEN];
    let digest = &data[data.len() - DIGEST_LEN..];
    if Md5::digest(body).as_slice() != digest {
        return Err(KplError::BadDigest);
    }
    let agg = AggregatedRecord::decode(body).map_err(|e| KplError::Protobuf(e.to_string()))?;
    let AggregatedRecord {
        partition_key_table,
        records,
        ..
    } = agg;
    records
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let key = usize::try_from(r.partition_key_index)
                .ok()
                .and_then(|ix| partition_key_table.get(ix))
                .ok_or(KplError::BadKeyIndex {
                    record: i,
                    index: r.partition_key_index,
                    len: partition_key_table.len(),
                })?;
            Ok(UserRecord {
                partition_key: key.clone(),
                data: r.data,
            })
        })
        .collect()
}

/// Aggregates user records into one KPL record (magic, body, MD5). Partition keys are
/// interned in the key table as the KPL does.
pub fn aggregate(records: &[UserRecord]) -> Vec<u8> {
    let mut table: Vec<String> = Vec::new();
    let mut out = AggregatedRecord::default();
    for r in records {
        let ix = match table.iter().position(|k| *k == r.partition_key) {
            Some(ix) => ix,
            None => {
                table.push(r.partition_key.clone());
                table.len() - 1
            }
        };
        out.records.push(KplRecord {
            partition_key_index: ix as u64,
            explicit_hash_key_index: None,
            data: r.data.clone(),
            tags: Vec::new(),
        });
    }
    out.partition_key_table = table;
    let body = out.encode_to_vec();
    let mut bytes = Vec::with_capacity(KPL_MAGIC.len() + body.len() + DIGEST_LEN);
    bytes.extend_from_slice(&KPL_MAGIC);
    bytes.extend_from_slice(&body);
    bytes.extend_from_slice(&Md5::digest(&body));
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn recs() -> Vec<UserRecord> {
        vec![
            UserRecord {
                partition_key: "card-a".into(),
                data: b"one".to_vec(),
            },
            UserRecord {
                partition_key: "card-b".into(),
                data: b"two".to_vec(),
            },
            UserRecord {
                partition_key: "card-a".into(),
                data: b"three".to_vec(),
            },
        ]
    }

    #[test]
    fn round_trips_and_interns_keys() {
        let agg = aggregate(&recs());
        assert!(is_aggregated(&agg));
        assert_eq!(deaggregate(&agg).unwrap(), recs());
    }

    #[test]
    fn flipped_bit_is_a_bad_digest() {
        let mut agg = aggregate(&recs());
        agg[6] ^= 0x01;
        assert_eq!(deaggregate(&agg), Err(KplError::BadDigest));
    }

    #[test]
    fn truncated_record_is_reported() {
        let agg = aggregate(&recs());
        assert_eq!(deaggregate(&agg[..10]), Err(KplError::Truncated(10)));
        // Cut in the middle: the digest no longer matches what is left.
        assert_eq!(deaggregate(&agg[..agg.len() - 3]), Err(KplError::BadDigest));
    }

    #[test]
    fn key_index_out_of_table_is_reported() {
        let body = AggregatedRecord {
            partition_key_table: vec!["k".into()],
            explicit_hash_key_table: vec![],
            records: vec![KplRecord {
                partition_key_index: 5,
                explicit_hash_key_index: None,
                data: vec![1],
                tags: vec![],
            }],
        }
        .encode_to_vec();
        let mut bytes = KPL_MAGIC.to_vec();
        bytes.extend_from_slice(&body);
        bytes.extend_from_slice(&Md5::digest(&body));
        assert_eq!(
            deaggregate(&bytes),
            Err(KplError::BadKeyIndex {
                record: 0,
                index: 5,
                len: 1
            })
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_after_magic_never_panic(tail in prop::collection::vec(any::<u8>(), 0..256)) {
            let mut bytes = KPL_MAGIC.to_vec();
            bytes.extend_from_slice(&tail);
            let _ = deaggregate(&bytes);
        }

        #[test]
        fn arbitrary_body_with_valid_digest_never_panics(body in prop::collection::vec(any::<u8>(), 0..256)) {
            let mut bytes = KPL_MAGIC.to_vec();
            bytes.extend_from_slice(&body);
            bytes.extend_from_slice(&Md5::digest(&body));
            let _ = deaggregate(&bytes);
        }
    }
}
