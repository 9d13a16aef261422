//! Lambda's Kinesis event to core records, and core outcomes to Lambda's response.
//!
//! Two decoders give the same records: [`decode_kinesis_event`] from the stock
//! `aws_lambda_events` type, and [`decode_event_json`], which parses the raw event with a
//! borrowed envelope (only the fields the handlers need, payloads decoded from borrowed
//! slices): the hot path of every invocation.
//! Event shape: <https://docs.aws.amazon.com/lambda/latest/dg/with-kinesis.html>.

use std::borrow::Cow;
use std::sync::Arc;

use aws_lambda_events::event::kinesis::KinesisEvent;
use aws_lambda_events::event::streams::{KinesisBatchItemFailure, KinesisEventResponse};
use base64::Engine as _;
use serde::Deserialize;
use shardline_core::batch::BatchOutcome;
use shardline_core::event::{DecodeLimits, PoisonReason};
use shardline_core::record::{Poison, RawRecordMeta, decode_record_data};
use shardline_core::seq::SeqNoError;
use shardline_core::{InRecord, RecordMeta, RecordPos, SeqNo, Txn};

/// The envelope itself is broken: not a record problem but an invocation problem (the
/// event did not come from a Kinesis event source mapping).
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    /// Not a Kinesis event.
    #[error("not a Kinesis event: {0}")]
    Json(#[from] serde_json::Error),
    /// A record's sequence number is not a decimal sequence number.
    #[error("record {index}: bad sequence number: {source}")]
    BadSequenceNumber {
        /// Record index in the event.
        index: usize,
        /// Why.
        source: SeqNoError,
    },
}

/// The shard id from a record's `eventID` (`shardId-000000000000:4954...`).
pub fn shard_id_from_event_id(event_id: &str) -> &str {
    event_id
        .split_once(':')
        .map_or(event_id, |(shard, _)| shard)
}

#[derive(Deserialize)]
struct LeanEvent<'a> {
    #[serde(rename = "Records", borrow)]
    records: Vec<LeanRecord<'a>>,
}

#[derive(Deserialize)]
struct LeanRecord<'a> {
    #[serde(rename = "eventID", borrow, default)]
    event_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    kinesis: LeanKinesis<'a>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LeanKinesis<'a> {
    #[serde(borrow)]
    data: Cow<'a, str>,
    #[serde(borrow)]
    partition_key: Cow<'a, str>,
    #[serde(borrow)]
    sequence_number: Cow<'a, str>,
    approximate_arrival_timestamp: f64,
}

/// Interns shard ids: a batch comes from one shard, so one `Arc` serves every record.
#[derive(Default)]
struct Shards(Vec<Arc<str>>);

impl Shards {
    fn get(&mut self, id: &str) -> Arc<str> {
        if let Some(s) = self.0.iter().find(|s| &***s == id) {
            return s.clone();
        }
        let s: Arc<str> = Arc::from(id);
        self.0.push(s.clone());
        s
    }
}

struct Decoder<'l> {
    limits: &'l DecodeLimits,
    shards: Shards,
    scratch: Vec<u8>,
    out: Vec<InRecord<Txn>>,
}

impl Decoder<'_> {
    fn push(
        &mut self,
        index: usize,
        event_id: &str,
        seq: &str,
        key: &str,
        arrival_ms: i64,
        data: Result<&[u8], ()>,
    ) -> Result<(), EnvelopeError> {
        let seq = SeqNo::parse(seq)
            .map_err(|source| EnvelopeError::BadSequenceNumber { index, source })?;
        let shard_id = self.shards.get(shard_id_from_event_id(event_id));
        match data {
            Ok(bytes) => decode_record_data(
                RawRecordMeta {
                    shard_id,
                    seq,
                    partition_key: key,
                    arrival_ms,
                },
                bytes,
                self.limits,
                &mut self.out,
            ),
            Err(()) => self.out.push(InRecord {
                meta: RecordMeta {
                    shard_id,
                    pos: RecordPos::plain(seq),
                    partition_key: key.to_owned(),
                    lane_key: None,
                    arrival_ms,
                },
                body: Err(Poison::without_payload(PoisonReason::BadBase64)),
            }),
        }
        Ok(())
    }
}

/// Decodes a raw Lambda Kinesis event (the invocation payload) into user records: the
/// hot path. Records keep their shard, position, key and arrival time; bad payloads
/// become poison records.
pub fn decode_event_json(
    payload: &[u8],
    limits: &DecodeLimits,
) -> Result<Vec<InRecord<Txn>>, EnvelopeError> {
    let ev: LeanEvent<'_> = serde_json::from_slice(payload)?;
    let mut d = Decoder {
        limits,
        shards: Shards::default(),
        scratch: Vec::with_capacity(1024),
        out: Vec::with_capacity(ev.records.len()),
    };
    for (i, r) in ev.records.iter().enumerate() {
        let mut scratch = std::mem::take(&mut d.scratch);
        scratch.clear();
        let data = base64::engine::general_purpose::STANDARD
            .decode_vec(r.kinesis.data.as_bytes(), &mut scratch)
            .map(|_| scratch.as_slice())
            .map_err(|_| ());
        let arrival_ms = (r.kinesis.approximate_arrival_timestamp * 1000.0).round() as i64;
        let event_id = r.event_id.as_deref().unwrap_or("");
        let res = d.push(
            i,
            event_id,
            &r.kinesis.sequence_number,
            &r.kinesis.partition_key,
            arrival_ms,
            data,
        );
        d.scratch = scratch;
        res?;
    }
    Ok(d.out)
}

/// Decodes the stock `aws_lambda_events` Kinesis event into user records (same result
/// as [`decode_event_json`]; used where the event is already typed).
pub fn decode_kinesis_event(
    event: &KinesisEvent,
    limits: &DecodeLimits,
) -> Result<Vec<InRecord<Txn>>, EnvelopeError> {
    let mut d = Decoder {
        limits,
        shards: Shards::default(),
        scratch: Vec::new(),
        out: Vec::with_capacity(event.records.len()),
    };
    for (i, r) in event.records.iter().enumerate() {
        let k = &r.kinesis;
        let arrival_ms = k.approximate_arrival_timestamp.0.timestamp_millis();
        let event_id = r.event_id.as_deref().unwrap_or("");
        d.push(
            i,
            event_id,
            &k.sequence_number,
            &k.partition_key,
            arrival_ms,
            Ok(&k.data.0),
        )?;
    }
    Ok(d.out)
}

/// The partial batch response for an outcome: the lowest failed sequence number, or an
/// empty list when every effect is durable.
/// <https://docs.aws.amazon.com/lambda/latest/dg/services-kinesis-batchfailurereporting.html>
pub fn batch_response(outcome: &BatchOutcome) -> KinesisEventResponse {
    response_for(outcome.failure_identifiers())
}

/// A partial batch response naming these sequence numbers.
pub fn response_for(ids: impl IntoIterator<Item = String>) -> KinesisEventResponse {
    let mut resp = KinesisEventResponse::default();
    for id in ids {
        let mut f = KinesisBatchItemFailure::default();
        f.item_identifier = Some(id);
        resp.batch_item_failures.push(f);
    }
    resp
}

/// The response that makes Lambda retry a whole event from its first record: used when
/// no record of the event can be made durable (a store down for the whole invocation).
pub fn fail_whole_batch(records: &[InRecord<Txn>]) -> KinesisEventResponse {
    response_for(
        records
            .iter()
            .map(|r| &r.meta.pos.seq)
            .min()
            .map(ToString::to_string),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn fixture(path: &str) -> Vec<u8> {
        std::fs::read(format!("{}/../../{path}", env!("CARGO_MANIFEST_DIR"))).expect("fixture")
    }

    #[test]
    fn deaggregates_a_record_made_by_the_aws_aggregator() {
        let bytes = fixture("events/kpl/aggregated.json");
        let recs = decode_event_json(&bytes, &DecodeLimits::default()).unwrap();
        assert_eq!(recs.len(), 3);
        let parent = "49590338271490256608559692538361571095921575989136588898";
        for (i, r) in recs.iter().enumerate() {
            assert_eq!(r.meta.pos.seq.as_str(), parent);
            assert_eq!(r.meta.pos.sub, i as u32);
            assert_eq!(&*r.meta.shard_id, "shardId-000000000001");
            let t = r.body.as_ref().unwrap();
            assert_eq!(t.event_id, format!("kpl-evt-{i}"));
            assert_eq!(r.meta.partition_key, t.card_token);
        }
        assert_eq!(recs[1].meta.partition_key, "tok_card_b");
        // The stock envelope decodes to the same records.
        let ev: KinesisEvent = serde_json::from_slice(&bytes).unwrap();
        let stock = decode_kinesis_event(&ev, &DecodeLimits::default()).unwrap();
        assert_eq!(stock.len(), 3);
        for (a, b) in stock.iter().zip(&recs) {
            assert_eq!(a.meta, b.meta);
            assert_eq!(a.body.as_ref().unwrap(), b.body.as_ref().unwrap());
        }
    }

    #[test]
    fn corrupted_aggregate_is_one_poison_record() {
        let bytes = fixture("events/kpl/aggregated.json");
        let mut ev: KinesisEvent = serde_json::from_slice(&bytes).unwrap();
        let data = &mut ev.records[0].kinesis.data.0;
        let mid = data.len() / 2;
        data[mid] ^= 0xFF;
        let recs = decode_kinesis_event(&ev, &DecodeLimits::default()).unwrap();
        assert_eq!(recs.len(), 1);
        let p = recs[0].body.as_ref().unwrap_err();
        assert_eq!(p.reason, PoisonReason::Kpl("MD5 digest mismatch".into()));
        assert_eq!(recs[0].meta.pos.sub, 0);
        // Truncated: shorter than magic plus digest.
        ev.records[0].kinesis.data.0.truncate(12);
        let recs = decode_kinesis_event(&ev, &DecodeLimits::default()).unwrap();
        assert!(
            matches!(&recs[0].body, Err(p) if matches!(&p.reason, PoisonReason::Kpl(m) if m.starts_with("truncated")))
        );
    }

    #[test]
    fn an_aggregate_over_the_limits_is_one_bounded_poison_record() {
        use shardline_core::kpl::{MAX_USER_RECORDS, UserRecord, aggregate};
        let users: Vec<UserRecord> = (0..=MAX_USER_RECORDS)
            .map(|i| UserRecord {
                partition_key: format!("k{}", i % 3),
                data: vec![b'x'; 1 + i % 2],
            })
            .collect();
        let data = aggregate(&users);
        let ev = serde_json::json!({"Records":[{"eventID":"shardId-000000000001:9","kinesis":{
            "data": base64::engine::general_purpose::STANDARD.encode(&data),
            "partitionKey":"outer","sequenceNumber":"9","approximateArrivalTimestamp":1.0}}]});
        let recs = decode_event_json(ev.to_string().as_bytes(), &DecodeLimits::default()).unwrap();
        assert_eq!(recs.len(), 1);
        let p = recs[0].body.as_ref().unwrap_err();
        assert!(
            matches!(&p.reason, PoisonReason::KplOverLimit { what, limit: 5000, .. } if what == "user records"),
            "{:?}",
            p.reason
        );
        assert_eq!(p.payload.size, data.len());
        assert!(p.payload.prefix.len() <= shardline_core::record::EXCERPT_BYTES);
    }

    #[test]
    fn bad_base64_is_poison_and_bad_envelope_is_an_error() {
        let ev = r#"{"Records":[{"eventID":"shardId-000000000002:7","kinesis":{"data":"!!!","partitionKey":"k","sequenceNumber":"7","approximateArrivalTimestamp":1.5}}]}"#;
        let recs = decode_event_json(ev.as_bytes(), &DecodeLimits::default()).unwrap();
        assert_eq!(
            recs[0].body.as_ref().unwrap_err().reason,
            PoisonReason::BadBase64
        );
        assert_eq!(&*recs[0].meta.shard_id, "shardId-000000000002");
        assert_eq!(recs[0].meta.arrival_ms, 1500);
        let bad_seq = ev.replace("\"7\"", "\"x7\"");
        assert!(matches!(
            decode_event_json(bad_seq.as_bytes(), &DecodeLimits::default()),
            Err(EnvelopeError::BadSequenceNumber { index: 0, .. })
        ));
        assert!(matches!(
            decode_event_json(b"{}", &DecodeLimits::default()),
            Err(EnvelopeError::Json(_))
        ));
    }

    #[test]
    fn response_names_only_the_lowest_failure() {
        let outcome = BatchOutcome {
            lowest_failure: Some(SeqNo::parse("123456789012345678901234").unwrap()),
            ..Default::default()
        };
        let json = serde_json::to_value(batch_response(&outcome)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"batchItemFailures": [{"itemIdentifier": "123456789012345678901234"}]})
        );
        let ok = serde_json::to_value(batch_response(&BatchOutcome::default())).unwrap();
        assert_eq!(ok, serde_json::json!({"batchItemFailures": []}));
    }

    proptest! {
        #[test]
        fn arbitrary_payload_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..600), kpl in any::<bool>()) {
            use base64::Engine as _;
            let mut bytes = if kpl { shardline_core::kpl::KPL_MAGIC.to_vec() } else { Vec::new() };
            bytes.extend_from_slice(&data);
            let ev = serde_json::json!({"Records":[{"eventID":"shardId-0:1","kinesis":{
                "data": base64::engine::general_purpose::STANDARD.encode(&bytes),
                "partitionKey":"k","sequenceNumber":"1","approximateArrivalTimestamp":1.0}}]});
            let recs = decode_event_json(ev.to_string().as_bytes(), &DecodeLimits::default()).unwrap();
            prop_assert!(!recs.is_empty());
            for r in recs {
                if let Err(p) = r.body { prop_assert!(!p.reason.to_string().is_empty()); }
            }
        }

        #[test]
        fn arbitrary_envelope_never_panics(s in ".{0,300}") {
            let _ = decode_event_json(s.as_bytes(), &DecodeLimits::default());
        }
    }
}
