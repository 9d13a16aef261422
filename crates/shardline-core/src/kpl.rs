//! KPL record aggregation: de-aggregation of incoming records, and aggregation for the
//! generator and tests.
//!
//! Wire format (<https://github.com/awslabs/amazon-kinesis-producer/blob/master/aggregation-format.md>):
//! the magic bytes `F3 89 9A C2`, a protobuf `AggregatedRecord`, then the 16-byte MD5
//! digest of the protobuf bytes. A record without the magic is a plain record.
//!
//! De-aggregation reads the protobuf itself rather than decoding it into
//! [`AggregatedRecord`]: it counts the records and keys and checks the keys' length
//! first, against the bounds below, so that nothing is allocated from a count or a
//! length the producer chose (a crafted 1 MiB aggregate of one huge key and hundreds of
//! thousands of empty records would otherwise fan out to tens of GB).

use md5::{Digest, Md5};
use prost::Message;

/// The four bytes that open every KPL aggregated record.
pub const KPL_MAGIC: [u8; 4] = [0xF3, 0x89, 0x9A, 0xC2];
const DIGEST_LEN: usize = 16;

/// Longest partition key, in characters: Kinesis's own limit
/// (<https://docs.aws.amazon.com/kinesis/latest/APIReference/API_PutRecord.html>).
pub const MAX_PARTITION_KEY_CHARS: usize = 256;

/// Most user records one aggregate may carry. A `txn.v1` event is at least ~230 bytes,
/// so Kinesis's 1 MiB record holds at most ~4,400 real transactions (the KPL's default
/// `AggregationMaxSize` of 50 KiB, about 200): 5,000 never turns an honest aggregate of
/// transactions into poison. Above it an aggregate is made of records too small to be
/// transactions, and fanning it out would only fill the quarantine: 5,000 entries are
/// already 500 SQS requests, as many as a full batch (BatchSize 5,000) of plain poison
/// records, which the functions are sized for.
pub const MAX_USER_RECORDS: usize = 5_000;

/// Most entries of each key table (partition keys, explicit hash keys): the KPL interns
/// keys, so a table never needs more entries than there are records.
pub const MAX_TABLE_KEYS: usize = MAX_USER_RECORDS;

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
    /// Over one of the bounds de-aggregation holds an aggregate to.
    #[error("{found} {what}, over the limit of {limit}")]
    OverLimit {
        /// What is counted.
        what: &'static str,
        /// How many the aggregate has.
        found: u64,
        /// The bound.
        limit: u64,
    },
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
/// index being their sub-sequence number. An aggregate over [`MAX_USER_RECORDS`],
/// [`MAX_TABLE_KEYS`] or [`MAX_PARTITION_KEY_CHARS`] is a [`KplError::OverLimit`], found
/// before anything is allocated for its records.
pub fn deaggregate(data: &[u8]) -> Result<Vec<UserRecord>, KplError> {
    if data.len() < KPL_MAGIC.len() + DIGEST_LEN {
        return Err(KplError::Truncated(data.len()));
    }
    let body = &data[KPL_MAGIC.len()..data.len() - DIGEST_LEN];
    let digest = &data[data.len() - DIGEST_LEN..];
    if Md5::digest(body).as_slice() != digest {
        return Err(KplError::BadDigest);
    }

    // Pass 1: count and check, allocating nothing.
    let (mut keys, mut hash_keys, mut records) = (0usize, 0usize, 0usize);
    let mut fields = Fields::new(body);
    while let Some((tag, value)) = fields.next()? {
        match (tag, value) {
            (1, Value::Bytes(k)) => {
                let k = std::str::from_utf8(k)
                    .map_err(|_| KplError::Protobuf("partition key is not UTF-8".into()))?;
                let chars = k.chars().count();
                if chars > MAX_PARTITION_KEY_CHARS {
                    return Err(over(
                        "characters in a partition key",
                        chars,
                        MAX_PARTITION_KEY_CHARS,
                    ));
                }
                keys += 1;
            }
            (2, Value::Bytes(_)) => hash_keys += 1,
            (3, Value::Bytes(_)) => records += 1,
            (1..=3, _) => return Err(wire_type(tag)),
            _ => {}
        }
    }
    if records > MAX_USER_RECORDS {
        return Err(over("user records", records, MAX_USER_RECORDS));
    }
    if keys > MAX_TABLE_KEYS {
        return Err(over("partition keys", keys, MAX_TABLE_KEYS));
    }
    if hash_keys > MAX_TABLE_KEYS {
        return Err(over("explicit hash keys", hash_keys, MAX_TABLE_KEYS));
    }

    // Pass 2: every count is bounded now.
    let mut table: Vec<&str> = Vec::with_capacity(keys);
    let mut bodies: Vec<&[u8]> = Vec::with_capacity(records);
    let mut fields = Fields::new(body);
    while let Some((tag, value)) = fields.next()? {
        match (tag, value) {
            // Checked to be UTF-8 in pass 1.
            (1, Value::Bytes(k)) => table.push(std::str::from_utf8(k).unwrap_or_default()),
            (3, Value::Bytes(r)) => bodies.push(r),
            _ => {}
        }
    }
    bodies
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let (index, data) = user_record(r)?;
            let key = usize::try_from(index)
                .ok()
                .and_then(|ix| table.get(ix))
                .ok_or(KplError::BadKeyIndex {
                    record: i,
                    index,
                    len: table.len(),
                })?;
            Ok(UserRecord {
                partition_key: (*key).to_owned(),
                data: data.to_vec(),
            })
        })
        .collect()
}

fn over(what: &'static str, found: usize, limit: usize) -> KplError {
    KplError::OverLimit {
        what,
        found: found as u64,
        limit: limit as u64,
    }
}

fn wire_type(tag: u32) -> KplError {
    KplError::Protobuf(format!("field {tag} has the wrong wire type"))
}

/// A `Record`'s partition key index and data (proto2 `required`: absent reads as 0 and
/// empty, as prost decodes them; a repeated field's last value wins). Tags are skipped.
fn user_record(r: &[u8]) -> Result<(u64, &[u8]), KplError> {
    let (mut index, mut data): (u64, &[u8]) = (0, &[]);
    let mut fields = Fields::new(r);
    while let Some((tag, value)) = fields.next()? {
        match (tag, value) {
            (1, Value::Varint(v)) => index = v,
            (3, Value::Bytes(b)) => data = b,
            (2, Value::Varint(_)) | (4, Value::Bytes(_)) => {}
            (1..=4, _) => return Err(wire_type(tag)),
            _ => {}
        }
    }
    Ok((index, data))
}

/// One protobuf field value (wire types 0, 1, 2 and 5; groups are not part of the KPL
/// format and are rejected).
enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

/// The fields of one protobuf message, borrowed from its bytes.
struct Fields<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Fields<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn varint(&mut self) -> Result<u64, KplError> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = *self
                .buf
                .get(self.pos)
                .ok_or_else(|| KplError::Protobuf("truncated varint".into()))?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(KplError::Protobuf("varint longer than 10 bytes".into()))
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], KplError> {
        let end = usize::try_from(n)
            .ok()
            .and_then(|n| self.pos.checked_add(n))
            .filter(|&end| end <= self.buf.len())
            .ok_or_else(|| KplError::Protobuf("field runs past the end".into()))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn next(&mut self) -> Result<Option<(u32, Value<'a>)>, KplError> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let tag = u32::try_from(key >> 3)
            .ok()
            .filter(|&t| t > 0)
            .ok_or_else(|| KplError::Protobuf(format!("invalid field key {key}")))?;
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Value::Fixed
            }
            2 => {
                let len = self.varint()?;
                Value::Bytes(self.take(len)?)
            }
            5 => {
                self.take(4)?;
                Value::Fixed
            }
            w => return Err(KplError::Protobuf(format!("unsupported wire type {w}"))),
        };
        Ok(Some((tag, value)))
    }
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

    fn framed(agg: &AggregatedRecord) -> Vec<u8> {
        let body = agg.encode_to_vec();
        let mut bytes = KPL_MAGIC.to_vec();
        bytes.extend_from_slice(&body);
        bytes.extend_from_slice(&Md5::digest(&body));
        bytes
    }

    fn over_a_limit(r: &Result<Vec<UserRecord>, KplError>) -> bool {
        matches!(r, Err(e) if e.to_string().contains("over the limit"))
    }

    #[test]
    fn partition_key_over_256_characters_is_over_the_limit() {
        // 256 characters is Kinesis's own limit, counted in characters, not bytes.
        let ok = vec![UserRecord {
            partition_key: "é".repeat(256),
            data: b"x".to_vec(),
        }];
        assert_eq!(deaggregate(&aggregate(&ok)).unwrap(), ok);
        let long = vec![UserRecord {
            partition_key: "k".repeat(257),
            data: b"x".to_vec(),
        }];
        let r = deaggregate(&aggregate(&long));
        assert!(over_a_limit(&r), "{r:?}");
    }

    #[test]
    fn too_many_user_records_is_over_the_limit() {
        let recs: Vec<UserRecord> = (0..=MAX_USER_RECORDS)
            .map(|i| UserRecord {
                partition_key: "k".into(),
                data: vec![(i % 256) as u8],
            })
            .collect();
        let r = deaggregate(&aggregate(&recs));
        assert!(over_a_limit(&r), "{:?}", r.map(|v| v.len()));
    }

    #[test]
    fn too_many_partition_keys_is_over_the_limit() {
        let agg = AggregatedRecord {
            partition_key_table: (0..=MAX_TABLE_KEYS).map(|i| format!("k{i}")).collect(),
            explicit_hash_key_table: vec![],
            records: vec![KplRecord {
                partition_key_index: 0,
                explicit_hash_key_index: None,
                data: vec![1],
                tags: vec![],
            }],
        };
        let r = deaggregate(&framed(&agg));
        assert!(over_a_limit(&r), "{:?}", r.map(|v| v.len()));
    }

    #[test]
    fn the_limits_themselves_are_accepted() {
        let recs: Vec<UserRecord> = (0..MAX_USER_RECORDS)
            .map(|i| UserRecord {
                partition_key: format!("k{i}"),
                data: vec![1],
            })
            .collect();
        assert_eq!(deaggregate(&aggregate(&recs)).unwrap(), recs);
    }

    #[test]
    fn too_many_explicit_hash_keys_is_over_the_limit() {
        let agg = AggregatedRecord {
            partition_key_table: vec!["k".into()],
            explicit_hash_key_table: (0..=MAX_TABLE_KEYS).map(|i| i.to_string()).collect(),
            records: vec![],
        };
        assert!(over_a_limit(&deaggregate(&framed(&agg))));
    }

    /// The crafted aggregate of the issue: 1 MiB of one huge partition key and a few
    /// hundred thousand empty records naming it. Fanned out, every record would copy the
    /// key (~300 GB); it must be refused before anything is allocated for the records.
    #[test]
    fn a_crafted_one_mib_aggregate_is_refused_before_fanning_out() {
        let mut body = Vec::new();
        let key = vec![b'k'; 400 * 1024];
        // Field 1 (partition key), length-delimited.
        body.push(0x0A);
        let mut n = key.len();
        while n >= 0x80 {
            body.push((n as u8 & 0x7f) | 0x80);
            n >>= 7;
        }
        body.push(n as u8);
        body.extend_from_slice(&key);
        // Field 3 (record), empty: partition key index 0, empty data.
        while body.len() < 1024 * 1024 - 20 {
            body.extend_from_slice(&[0x1A, 0x00]);
        }
        let mut bytes = KPL_MAGIC.to_vec();
        bytes.extend_from_slice(&body);
        bytes.extend_from_slice(&Md5::digest(&body));
        let r = deaggregate(&bytes);
        assert_eq!(
            r,
            Err(KplError::OverLimit {
                what: "characters in a partition key",
                found: 400 * 1024,
                limit: MAX_PARTITION_KEY_CHARS as u64
            })
        );
        // The same with a legal key: over on the record count.
        let mut body = vec![0x0A, 0x01, b'k'];
        while body.len() < 1024 * 1024 - 20 {
            body.extend_from_slice(&[0x1A, 0x00]);
        }
        let mut bytes = KPL_MAGIC.to_vec();
        bytes.extend_from_slice(&body);
        bytes.extend_from_slice(&Md5::digest(&body));
        assert!(
            matches!(deaggregate(&bytes), Err(KplError::OverLimit { what: "user records", found, .. }) if found > 500_000)
        );
    }

    fn arb_aggregate() -> impl Strategy<Value = AggregatedRecord> {
        let record = (
            0u64..6,
            prop::option::of(0u64..3),
            prop::collection::vec(any::<u8>(), 0..40),
            prop::collection::vec(("[a-z]{0,4}", prop::option::of("[a-z]{0,4}")), 0..3),
        )
            .prop_map(|(pk, ehk, data, tags)| KplRecord {
                partition_key_index: pk,
                explicit_hash_key_index: ehk,
                data,
                tags: tags
                    .into_iter()
                    .map(|(key, value)| KplTag { key, value })
                    .collect(),
            });
        (
            prop::collection::vec("\\PC{0,12}", 0..6),
            prop::collection::vec("[0-9]{1,38}", 0..3),
            prop::collection::vec(record, 0..20),
        )
            .prop_map(|(keys, hash_keys, records)| AggregatedRecord {
                partition_key_table: keys,
                explicit_hash_key_table: hash_keys,
                records,
            })
    }

    proptest! {
        /// The hand-written reader gives what prost's decoder gives, on any aggregate
        /// within the limits (tags, explicit hash keys and all).
        #[test]
        fn reads_what_prost_decodes(agg in arb_aggregate()) {
            let decoded = AggregatedRecord::decode(agg.encode_to_vec().as_slice()).unwrap();
            let want: Result<Vec<UserRecord>, KplError> = decoded
                .records
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let key = decoded
                        .partition_key_table
                        .get(r.partition_key_index as usize)
                        .ok_or(KplError::BadKeyIndex {
                            record: i,
                            index: r.partition_key_index,
                            len: decoded.partition_key_table.len(),
                        })?;
                    Ok(UserRecord { partition_key: key.clone(), data: r.data.clone() })
                })
                .collect();
            prop_assert_eq!(deaggregate(&framed(&agg)), want);
        }

        #[test]
        fn round_trips_any_user_records(
            recs in prop::collection::vec(
                ("\\PC{1,20}", prop::collection::vec(any::<u8>(), 0..64))
                    .prop_map(|(partition_key, data)| UserRecord { partition_key, data }),
                0..30,
            )
        ) {
            prop_assert_eq!(deaggregate(&aggregate(&recs)).unwrap(), recs);
        }
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
