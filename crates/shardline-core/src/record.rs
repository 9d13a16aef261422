//! Stream records as the domain sees them: where they came from (shard, position,
//! partition key, arrival) and what they decoded to (an event or a poison reason).

use std::sync::Arc;

use crate::event::{DecodeLimits, PAN_MARKER, Piece, PoisonReason, Txn, decode_txn, redact_pans};
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

/// Most payload bytes a quarantine entry keeps (before base64): enough to see what a
/// producer sent (a transaction is well under 1 KiB), small enough that an SQS message
/// with several entries stays far below SQS's 256 KiB, whatever the record's size.
pub const EXCERPT_BYTES: usize = 4 * 1024;

/// What the quarantine keeps of a poison record's payload, bounded whatever its size:
/// its first bytes with card numbers redacted, its full size and a SHA-256 digest.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Excerpt {
    /// The first bytes of the redacted payload, at most [`EXCERPT_BYTES`]; a cut never
    /// falls inside a digit run or a UTF-8 character. Empty when withheld.
    pub prefix: Vec<u8>,
    /// Size of the whole payload as received, bytes.
    pub size: usize,
    /// SHA-256 of the whole payload after redaction (equal to the payload's own digest
    /// when nothing was redacted); `None` when the payload is withheld or not at hand.
    pub sha256: Option<[u8; 32]>,
    /// True when card numbers were redacted.
    pub redacted: bool,
    /// True when `prefix` is not the whole (redacted) payload.
    pub truncated: bool,
}

impl Excerpt {
    /// Redacts `data` and keeps its first [`EXCERPT_BYTES`], in one pass: memory is
    /// bounded by the excerpt, not by the payload.
    pub fn of(data: &[u8]) -> Self {
        use sha2::Digest as _;
        let mut hasher = sha2::Sha256::new();
        let mut prefix = Vec::with_capacity(data.len().min(EXCERPT_BYTES));
        let mut taking = true;
        let mut total = 0usize;
        let redacted = redact_pans(data, |piece| {
            let bytes = match piece {
                Piece::Text(b) | Piece::Digits(b) => b,
                Piece::Redacted => PAN_MARKER.as_bytes(),
            };
            hasher.update(bytes);
            total += bytes.len();
            if !taking {
                return;
            }
            let room = EXCERPT_BYTES - prefix.len();
            if bytes.len() <= room {
                prefix.extend_from_slice(bytes);
            } else {
                // Text may be cut (at a character boundary); a kept digit run or the
                // marker only whole.
                if let Piece::Text(b) = piece {
                    prefix.extend_from_slice(&b[..char_floor(b, room)]);
                }
                taking = false;
            }
        });
        let mut sha256 = [0u8; 32];
        sha256.copy_from_slice(&hasher.finalize());
        Self {
            truncated: prefix.len() < total,
            prefix,
            size: data.len(),
            sha256: Some(sha256),
            redacted,
        }
    }

    /// Nothing of `data` but its size.
    pub fn withheld(data: &[u8]) -> Self {
        Self {
            size: data.len(),
            truncated: !data.is_empty(),
            ..Self::default()
        }
    }
}

/// The largest cut at or below `at` that does not split a UTF-8 character of `b` (bytes
/// that are not UTF-8 are cut at most 3 bytes short).
fn char_floor(b: &[u8], at: usize) -> usize {
    let mut cut = at.min(b.len());
    let mut back = 0;
    while cut > 0 && cut < b.len() && back < 3 && (b[cut] & 0xC0) == 0x80 {
        cut -= 1;
        back += 1;
    }
    cut
}

/// A record that can never be processed: why, and what the quarantine keeps of its
/// bytes. Card numbers are redacted from both when the record is set aside, so nothing
/// downstream (quarantine, logs, metrics) ever holds one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Poison {
    /// Why (redacted: [`PoisonReason::redacted`]).
    pub reason: PoisonReason,
    /// The bounded, redacted excerpt of the payload.
    pub payload: Excerpt,
}

impl Poison {
    /// Builds a poison record: the reason redacted, the payload reduced to its excerpt
    /// (withheld entirely when the reason is that a field holds a card number).
    pub fn new(reason: PoisonReason, data: &[u8]) -> Self {
        let reason = reason.redacted();
        let payload = if reason.withholds_payload() {
            Excerpt::withheld(data)
        } else {
            Excerpt::of(data)
        };
        Self { reason, payload }
    }

    /// A poison record whose payload is not at hand (a handler's verdict on a decoded
    /// event, undecodable base64).
    pub fn without_payload(reason: PoisonReason) -> Self {
        Self {
            reason: reason.redacted(),
            payload: Excerpt::default(),
        }
    }
}

fn decode_one(data: &[u8], arrival_ms: i64, limits: &DecodeLimits) -> Result<Txn, Poison> {
    decode_txn(data, arrival_ms, limits).map_err(|reason| Poison::new(reason, data))
}

fn kpl_reason(e: kpl::KplError) -> PoisonReason {
    match e {
        kpl::KplError::OverLimit { what, found, limit } => PoisonReason::KplOverLimit {
            what: what.to_owned(),
            found,
            limit,
        },
        e => PoisonReason::Kpl(e.to_string()),
    }
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
            body: Err(Poison::new(kpl_reason(e), data)),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_one_record(data: &[u8], key: &str) -> Vec<InRecord<Txn>> {
        let mut out = Vec::new();
        decode_record_data(
            RawRecordMeta {
                shard_id: Arc::from("shardId-000000000001"),
                seq: SeqNo::parse("49590338271490256608559692538361571095921575989136588898")
                    .unwrap(),
                partition_key: key,
                arrival_ms: 0,
            },
            data,
            &DecodeLimits::default(),
            &mut out,
        );
        out
    }

    fn sha256(b: &[u8]) -> [u8; 32] {
        use sha2::Digest as _;
        let mut d = [0u8; 32];
        d.copy_from_slice(&sha2::Sha256::digest(b));
        d
    }

    #[test]
    fn an_excerpt_is_bounded_and_identifies_the_whole_payload() {
        let payload: Vec<u8> = (0..1024 * 1024).map(|i| b'a' + (i % 26) as u8).collect();
        let e = Excerpt::of(&payload);
        assert_eq!(e.prefix, payload[..EXCERPT_BYTES]);
        assert_eq!(e.size, payload.len());
        assert_eq!(e.sha256, Some(sha256(&payload)));
        assert!(e.truncated && !e.redacted);
        let small = Excerpt::of(b"{}");
        assert_eq!(
            (small.prefix.as_slice(), small.truncated),
            (&b"{}"[..], false)
        );
    }

    #[test]
    fn an_excerpt_never_cuts_a_number_a_marker_or_a_character() {
        // A kept 16-digit number across the cut: left out whole.
        let mut p = vec![b'x'; EXCERPT_BYTES - 5];
        p.extend_from_slice(b"6820341768487870 tail");
        let e = Excerpt::of(&p);
        assert_eq!(e.prefix, vec![b'x'; EXCERPT_BYTES - 5]);
        // A card number across the cut: redacted first, the marker left out whole.
        let mut p = vec![b'x'; EXCERPT_BYTES - 5];
        p.extend_from_slice(b"4111111111111111 tail");
        let e = Excerpt::of(&p);
        assert_eq!(e.prefix, vec![b'x'; EXCERPT_BYTES - 5]);
        assert!(e.redacted && e.truncated);
        let mut redacted = vec![b'x'; EXCERPT_BYTES - 5];
        redacted.extend_from_slice(b"[PAN redacted] tail");
        assert_eq!(
            e.sha256,
            Some(sha256(&redacted)),
            "digest of the redacted payload"
        );
        // A two-byte character across the cut.
        let mut p = vec![b'x'; EXCERPT_BYTES - 1];
        p.extend_from_slice("é and more".as_bytes());
        let e = Excerpt::of(&p);
        assert_eq!(e.prefix.len(), EXCERPT_BYTES - 1);
        assert!(std::str::from_utf8(&e.prefix).is_ok());
    }

    #[test]
    fn a_card_number_field_withholds_the_payload_and_its_digest() {
        let payload = b"{\"card_token\":\"4111111111111111\"}";
        let p = Poison::new(PoisonReason::ClearCardNumber, payload);
        assert!(p.payload.prefix.is_empty() && p.payload.sha256.is_none());
        assert_eq!(p.payload.size, payload.len());
    }

    #[test]
    fn aggregate_over_a_limit_is_one_poison_record() {
        let users: Vec<kpl::UserRecord> = (0..=kpl::MAX_USER_RECORDS)
            .map(|i| kpl::UserRecord {
                partition_key: format!("k{}", i % 7),
                data: b"{}".to_vec(),
            })
            .collect();
        let out = decode_one_record(&kpl::aggregate(&users), "outer-key");
        assert_eq!(out.len(), 1);
        let r = &out[0];
        assert_eq!(r.meta.pos.sub, 0);
        assert_eq!(r.meta.partition_key, "outer-key");
        let reason = &r.body.as_ref().unwrap_err().reason;
        assert!(reason.to_string().contains("over the limit"), "{reason}");
        assert_eq!(
            *reason,
            PoisonReason::KplOverLimit {
                what: "user records".into(),
                found: kpl::MAX_USER_RECORDS as u64 + 1,
                limit: kpl::MAX_USER_RECORDS as u64,
            }
        );
    }
}
