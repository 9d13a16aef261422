//! The checks behind the fuzz targets in `fuzz_targets/`: each takes arbitrary bytes,
//! runs one of shardline's decoders on them, and panics (afl records the input as a
//! crash) when the decoder panics or its output breaks a property the rest of shardline
//! relies on. Kept in a library so that a crash input can be replayed under a debugger or
//! turned into a unit test beside the decoder.

use std::borrow::Cow;
use std::sync::{Arc, Mutex};

use aws_lambda_events::event::kinesis::KinesisEvent;
use base64::Engine as _;
use md5::{Digest as _, Md5};
use serde::Deserialize;
use shardline_core::batch::{BatchConfig, BatchProcessor};
use shardline_core::event::{
    DecodeLimits, MAX_AMOUNT_MINOR, PoisonReason, decode_txn, looks_like_pan,
};
use shardline_core::kpl::{self, MAX_PARTITION_KEY_CHARS, MAX_USER_RECORDS};
use shardline_core::ports::{Quarantine, QuarantineEntry};
use shardline_core::record::{RawRecordMeta, decode_record_data};
use shardline_core::{InRecord, SeqNo, StoreError, Txn};

/// The Lambda envelope decoder, compiled from its source file rather than through the
/// `shardline-aws` crate: the module needs only serde, base64, `aws_lambda_events` and
/// the core crate, while `shardline-aws` would bring the whole AWS SDK, which cargo-afl
/// builds instrumented at `opt-level=3` with one codegen unit (tens of minutes on one
/// core, for code the targets never run). If the module ever names `crate::`, this build
/// fails, and the target should depend on `shardline-aws` instead.
#[path = "../../crates/shardline-aws/src/kinesis.rs"]
#[allow(dead_code, missing_docs, clippy::all)]
pub mod kinesis;

/// Arrival time given to records outside an envelope: 2026-11-26T12:31:00Z, just after
/// the fixtures' event times, so that the seeds' valid events decode (an event time more
/// than 5 minutes ahead of arrival, or 30 days behind, is poison).
pub const ARRIVAL_MS: i64 = 1_795_696_260_000;
/// A real Kinesis sequence number (56 digits, more than fit a u128).
pub const SEQ: &str = "49590338271490256608559692538361571095921575989136588898";
/// The shard and outer partition key of records decoded outside an envelope.
const SHARD: &str = "shardId-000000000001";
const OUTER_KEY: &str = "outer-key";

/// Target `envelope`: [`kinesis::decode_event_json`] over arbitrary bytes. When it
/// accepts the event: every Kinesis record gives its user records in order (one for a
/// plain or corrupt record, one per user record for a valid KPL aggregate), each with the
/// record's shard, sequence number and lane key and sub-sequence numbers 0, 1, 2...; the typed
/// decoder [`kinesis::decode_kinesis_event`] agrees wherever it also accepts the event;
/// and no quarantine entry carries a card number.
pub fn envelope(data: &[u8]) {
    let limits = DecodeLimits::default();
    let Ok(records) = kinesis::decode_event_json(data, &limits) else {
        return;
    };
    // The fields the functions read, parsed again on their own. (Not as a
    // `serde_json::Value`: serde_json skips ignored fields without checking their escapes,
    // so an accepted event need not be strict JSON.)
    let event: OracleEvent = serde_json::from_slice(data).expect("an accepted event parses");
    let mut out = records.iter();
    for (i, input) in event.records.iter().enumerate() {
        let k = &input.kinesis;
        let seq = SeqNo::parse(&k.sequence_number).expect("an accepted sequence number");
        let shard = kinesis::shard_id_from_event_id(input.event_id.as_deref().unwrap_or(""));
        let expected = match base64::engine::general_purpose::STANDARD.decode(&k.data) {
            Ok(bytes) if kpl::is_aggregated(&bytes) => {
                kpl::deaggregate(&bytes).map_or(Some(1), |u| Some(u.len()))
            }
            _ => None, // a plain record: exactly one, sub-sequence number 0
        };
        for sub in 0..expected.unwrap_or(1) {
            let r = out
                .next()
                .unwrap_or_else(|| panic!("record {i}: user record {sub} is missing"));
            assert_eq!(r.meta.pos.seq, seq, "record {i}: sequence number");
            assert_eq!(r.meta.pos.sub as usize, sub, "record {i}: sub-sequence");
            assert_eq!(&*r.meta.shard_id, shard, "record {i}: shard");
            // Lambda's lanes go by the Kinesis record's key, whatever the user record's.
            assert_eq!(r.meta.lane_key(), k.partition_key, "record {i}: lane key");
        }
    }
    assert!(
        out.next().is_none(),
        "more user records than the event holds"
    );

    // The typed decoder is documented to give the same records. Arrival times may differ
    // in the last millisecond (chrono truncates what the lean decoder rounds), and the
    // future-skew verdict depends on them, so bodies are compared where arrivals agree.
    if let Ok(ev) = serde_json::from_slice::<KinesisEvent>(data)
        && let Ok(typed) = kinesis::decode_kinesis_event(&ev, &limits)
    {
        assert_eq!(typed.len(), records.len(), "typed decoder: record count");
        for (a, b) in records.iter().zip(&typed) {
            assert_eq!(a.meta.pos, b.meta.pos, "typed decoder: position");
            assert_eq!(a.meta.shard_id, b.meta.shard_id, "typed decoder: shard");
            assert_eq!(
                a.meta.partition_key, b.meta.partition_key,
                "typed decoder: key"
            );
            assert_eq!(a.meta.lane_key, b.meta.lane_key, "typed decoder: lane key");
            if a.meta.arrival_ms == b.meta.arrival_ms {
                assert_eq!(a.body, b.body, "typed decoder: body at {}", a.meta.pos);
            }
        }
    }
    check_quarantine(&records);
}

#[derive(Deserialize)]
struct OracleEvent {
    #[serde(rename = "Records")]
    records: Vec<OracleRecord>,
}

#[derive(Deserialize)]
struct OracleRecord {
    #[serde(rename = "eventID", default)]
    event_id: Option<String>,
    kinesis: OracleKinesis,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OracleKinesis {
    data: String,
    partition_key: String,
    sequence_number: String,
}

/// Target `kpl`: [`kpl::deaggregate`] and [`decode_record_data`] over arbitrary bytes.
/// An input that opens with the KPL magic goes in as it is (truncation, digest, framing);
/// any other is taken as the protobuf body and framed with the right MD5, so that the
/// fuzzer spends its time in the protobuf decoder and the checks after it rather than
/// at the digest. De-aggregated records stay under the caps `kpl.rs` defines, keep the
/// parent's sequence number with sub-sequence numbers 0, 1, 2..., re-aggregate to the same
/// records, and a corrupt aggregate is exactly one poison record; no quarantine entry
/// carries a card number.
pub fn kpl(data: &[u8]) {
    let framed: Cow<'_, [u8]> = if kpl::is_aggregated(data) {
        Cow::Borrowed(data)
    } else {
        Cow::Owned(frame(data))
    };
    let users = kpl::deaggregate(&framed);
    let limits = DecodeLimits::default();
    let seq = SeqNo::parse(SEQ).expect("SEQ is a sequence number");
    let mut out = Vec::new();
    decode_record_data(raw_meta(&seq), &framed, &limits, &mut out);
    match &users {
        Ok(users) => {
            assert!(
                users.len() <= MAX_USER_RECORDS,
                "{} user records, over MAX_USER_RECORDS",
                users.len()
            );
            assert_eq!(out.len(), users.len(), "one record per user record");
            for (i, (u, r)) in users.iter().zip(&out).enumerate() {
                let chars = u.partition_key.chars().count();
                assert!(
                    chars <= MAX_PARTITION_KEY_CHARS,
                    "user record {i}: partition key of {chars} characters"
                );
                assert_eq!(
                    r.meta.pos.seq, seq,
                    "user record {i}: parent sequence number"
                );
                assert_eq!(r.meta.pos.sub as usize, i, "user record {i}: sub-sequence");
                assert_eq!(
                    r.meta.partition_key, u.partition_key,
                    "user record {i}: key"
                );
                let lane = (u.partition_key != OUTER_KEY).then_some(OUTER_KEY);
                assert_eq!(
                    r.meta.lane_key.as_deref(),
                    lane,
                    "user record {i}: lane key"
                );
                let direct = decode_txn(&u.data, ARRIVAL_MS, &limits);
                assert_eq!(r.body.is_ok(), direct.is_ok(), "user record {i}: verdict");
                if let (Ok(a), Ok(b)) = (&r.body, &direct) {
                    assert_eq!(a, b, "user record {i}: body");
                }
            }
            let again = kpl::deaggregate(&kpl::aggregate(users));
            assert_eq!(again.as_ref(), Ok(users), "re-aggregated records differ");
        }
        Err(e) => {
            assert_eq!(
                out.len(),
                1,
                "a corrupt aggregate ({e}) is one poison record"
            );
            let r = &out[0];
            assert_eq!((&r.meta.pos.seq, r.meta.pos.sub), (&seq, 0));
            assert_eq!(r.meta.partition_key, OUTER_KEY);
            assert!(r.body.is_err(), "a corrupt aggregate ({e}) decoded");
        }
    }
    check_quarantine(&out);
}

/// Target `txn`: [`decode_txn`] over arbitrary bytes. An accepted event satisfies every
/// rule `event.rs` states (amount, MCC, codes, coordinates, ids, no clear card number,
/// event time within the skew and the age bound) and survives [`Txn::to_json`] and
/// decoding again; a payload over the cap is refused before parsing; the plain-record
/// path gives the same verdict; and no quarantine entry carries a card number.
pub fn txn(data: &[u8]) {
    let limits = DecodeLimits::default();
    let decoded = decode_txn(data, ARRIVAL_MS, &limits);
    if let Ok(t) = &decoded {
        check_txn(t, &limits);
        let json = t.to_json();
        let again = decode_txn(json.as_bytes(), ARRIVAL_MS, &limits);
        assert_eq!(
            again.as_ref(),
            Ok(t),
            "to_json does not decode back: {json}"
        );
    }
    if let Some(cap) = data.len().checked_sub(1) {
        let tight = DecodeLimits {
            max_payload_bytes: cap,
            ..limits
        };
        assert!(
            matches!(
                decode_txn(data, ARRIVAL_MS, &tight),
                Err(PoisonReason::TooLarge { .. })
            ),
            "a payload over the cap is not refused as too large"
        );
    }
    if kpl::is_aggregated(data) {
        return; // the kpl target's ground
    }
    let seq = SeqNo::parse(SEQ).expect("SEQ is a sequence number");
    let mut out = Vec::new();
    decode_record_data(raw_meta(&seq), data, &limits, &mut out);
    assert_eq!(out.len(), 1, "a plain record is one record");
    assert_eq!((&out[0].meta.pos.seq, out[0].meta.pos.sub), (&seq, 0));
    assert_eq!(
        out[0].body.as_ref().ok(),
        decoded.as_ref().ok(),
        "plain-record verdict"
    );
    check_quarantine(&out);
}

fn check_txn(t: &Txn, limits: &DecodeLimits) {
    for (field, v) in [
        ("event_id", &t.event_id),
        ("card_token", &t.card_token),
        ("merchant_id", &t.merchant_id),
    ] {
        assert!((1..=128).contains(&v.len()), "{field} of {} bytes", v.len());
        assert!(
            !v.chars().any(char::is_control),
            "{field} has a control character"
        );
        assert!(!looks_like_pan(v), "{field} is a clear card number");
    }
    assert!(t.mcc <= 9999, "mcc {}", t.mcc);
    assert!(
        (0..=MAX_AMOUNT_MINOR).contains(&t.amount_minor),
        "amount {}",
        t.amount_minor
    );
    let code = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_uppercase());
    assert!(code(&t.currency, 3), "currency {:?}", t.currency);
    assert!(
        code(&t.location.country, 2),
        "country {:?}",
        t.location.country
    );
    let (lat, lon) = (t.location.lat, t.location.lon);
    assert!(lat.is_finite() && lat.abs() <= 90.0, "lat {lat}");
    assert!(lon.is_finite() && lon.abs() <= 180.0, "lon {lon}");
    assert!(
        t.event_time_ms.saturating_sub(ARRIVAL_MS) <= limits.max_future_skew_ms,
        "event time {} too far ahead",
        t.event_time_ms
    );
    assert!(
        ARRIVAL_MS.saturating_sub(t.event_time_ms) <= limits.max_event_age_ms,
        "event time {} too far behind",
        t.event_time_ms
    );
}

fn raw_meta(seq: &SeqNo) -> RawRecordMeta<'static> {
    RawRecordMeta {
        shard_id: Arc::from(SHARD),
        seq: seq.clone(),
        partition_key: OUTER_KEY,
        arrival_ms: ARRIVAL_MS,
    }
}

/// A KPL aggregated record around `body`: magic, body, MD5 of the body.
pub fn frame(body: &[u8]) -> Vec<u8> {
    let mut bytes = kpl::KPL_MAGIC.to_vec();
    bytes.extend_from_slice(body);
    bytes.extend_from_slice(&Md5::digest(body));
    bytes
}

#[derive(Default)]
struct Collect(Mutex<Vec<QuarantineEntry>>);

impl Quarantine for Collect {
    async fn quarantine(&self, entries: &[QuarantineEntry]) -> Result<(), StoreError> {
        self.0
            .lock()
            .expect("not poisoned")
            .extend_from_slice(entries);
        Ok(())
    }
}

/// Sends the poison records through the batch processor's quarantine path, as the
/// functions do, and checks what would reach the queue: every poison record is there,
/// its JSON within [`QuarantineEntry::MAX_JSON_BYTES`], and no text that came from the
/// record (payload excerpt, partition key, reason, reason text) holds a card number.
/// (Function and shard names come from the deployment, and are not redacted.)
pub fn check_quarantine<T: Sync>(records: &[InRecord<T>]) {
    let poisoned = records.iter().filter(|r| r.body.is_err()).count();
    if poisoned == 0 {
        return;
    }
    let sink = Collect::default();
    let processor = BatchProcessor::new(BatchConfig::new("fuzz"), &sink);
    let outcome =
        futures::executor::block_on(processor.quarantine_only(records, Vec::new(), None, None));
    assert_eq!(
        outcome.quarantined, poisoned,
        "every poison record quarantined"
    );
    let entries = sink.0.into_inner().expect("not poisoned");
    assert_eq!(entries.len(), poisoned);
    for e in &entries {
        let json = e.to_bounded_json().expect("an entry serialises");
        assert!(
            json.len() <= QuarantineEntry::MAX_JSON_BYTES,
            "entry JSON of {} bytes",
            json.len()
        );
        let data = base64::engine::general_purpose::STANDARD
            .decode(&e.data_base64)
            .expect("data_base64 is base64");
        let reason = serde_json::to_string(&e.reason).expect("a reason serialises");
        for (what, text) in [
            ("payload excerpt", data.as_slice()),
            ("partition key", e.partition_key.as_bytes()),
            ("reason text", e.reason_text.as_bytes()),
            ("reason", reason.as_bytes()),
        ] {
            assert!(
                !has_pan_candidate(text),
                "quarantine {what} holds a card number: {}",
                String::from_utf8_lossy(text)
            );
        }
    }
}

/// The oracle for "holds a card number", independent of the redaction code: a run of
/// digits (spaces and dashes between digits do not break it) with any stretch of 13 to
/// 19 consecutive digits that passes the Luhn check.
pub fn has_pan_candidate(text: &[u8]) -> bool {
    let mut run: Vec<u8> = Vec::new();
    for &c in text.iter().chain(std::iter::once(&b'\n')) {
        match c {
            b'0'..=b'9' => run.push(c - b'0'),
            b' ' | b'-' if !run.is_empty() => {}
            _ => {
                if (0..run.len()).any(|start| {
                    (13..=19)
                        .take_while(|len| start + len <= run.len())
                        .any(|len| luhn(&run[start..start + len]))
                }) {
                    return true;
                }
                run.clear();
            }
        }
    }
    false
}

fn luhn(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            let d = u32::from(d);
            match (i % 2, d * 2) {
                (1, x) if x > 9 => x - 9,
                (1, x) => x,
                _ => d,
            }
        })
        .sum();
    sum.is_multiple_of(10)
}
