//! The SQS quarantine: poison records as JSON messages on the dead-letter queue.
//!
//! Each entry is one message: its JSON body (held to
//! [`QuarantineEntry::MAX_JSON_BYTES`] by [`QuarantineEntry::to_bounded_json`], whatever
//! the record's size) and its stable id as the `QuarantineId` message attribute, so a
//! consumer can drop the copies a retry or a replay sends. The template's queue is a
//! standard queue: no deduplication id is sent (that is for FIFO queues only).

use aws_sdk_sqs::types::{MessageAttributeValue, SendMessageBatchRequestEntry};
use futures::StreamExt;
use shardline_core::StoreError;
use shardline_core::ports::{Quarantine, QuarantineEntry};

use crate::sdk::classify;

/// SQS allows 10 messages and 256 KiB (262,144 bytes: bodies plus attribute names, types
/// and values) per SendMessageBatch, and as much per message (1 MiB since 2025, but not
/// everywhere): <https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_SendMessageBatch.html>,
/// <https://docs.aws.amazon.com/AWSSimpleQueueService/latest/SQSDeveloperGuide/quotas-messages.html>.
const MAX_BATCH_ENTRIES: usize = 10;
const MAX_BATCH_BYTES: usize = 256 * 1024;
/// The message attribute carrying the entry's stable id.
pub const QUARANTINE_ID_ATTRIBUTE: &str = "QuarantineId";
const STRING_TYPE: &str = "String";
/// SendMessageBatch requests in flight at once: a batch of 5,000 poison records is 500
/// requests, too many to send one after the other within an invocation.
const CONCURRENT_REQUESTS: usize = 8;

/// One quarantine message as sent.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Message {
    /// The entry's stable id (the `QuarantineId` attribute).
    id: String,
    /// The entry's JSON.
    body: String,
}

impl Message {
    /// What SQS counts against its size limits: the body and the attribute's name, type
    /// and value.
    fn size(&self) -> usize {
        self.body.len() + QUARANTINE_ID_ATTRIBUTE.len() + STRING_TYPE.len() + self.id.len()
    }
}

// Several of the largest entries always fit one request.
const _: () = assert!(4 * (QuarantineEntry::MAX_JSON_BYTES + 1024) <= MAX_BATCH_BYTES);

/// Writes quarantine entries to an SQS queue, batched.
#[derive(Clone, Debug)]
pub struct SqsQuarantine {
    client: aws_sdk_sqs::Client,
    queue_url: String,
}

impl SqsQuarantine {
    /// A quarantine on the queue at `queue_url`.
    pub fn new(client: aws_sdk_sqs::Client, queue_url: impl Into<String>) -> Self {
        Self {
            client,
            queue_url: queue_url.into(),
        }
    }

    async fn send(&self, batch: Vec<Message>) -> Result<(), StoreError> {
        let mut req = self.client.send_message_batch().queue_url(&self.queue_url);
        for (i, m) in batch.into_iter().enumerate() {
            let id = MessageAttributeValue::builder()
                .data_type(STRING_TYPE)
                .string_value(m.id)
                .build()
                .map_err(|err| StoreError::Fatal(Box::new(err)))?;
            let entry = SendMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .message_body(m.body)
                .message_attributes(QUARANTINE_ID_ATTRIBUTE, id)
                .build()
                .map_err(|err| StoreError::Fatal(Box::new(err)))?;
            req = req.entries(entry);
        }
        let out = req.send().await.map_err(classify)?;
        if let Some(f) = out.failed().first() {
            let msg = format!(
                "SQS rejected quarantine entry: {} {}",
                f.code(),
                f.message().unwrap_or("")
            );
            return Err(if f.sender_fault() {
                StoreError::fatal(msg)
            } else {
                StoreError::transient(msg)
            });
        }
        Ok(())
    }
}

/// Groups the entries' messages into SendMessageBatch requests within SQS's limits.
/// Every body is bounded ([`QuarantineEntry::to_bounded_json`]), so every message fits,
/// whatever the poison record's size.
fn batches(entries: &[QuarantineEntry]) -> Result<Vec<Vec<Message>>, StoreError> {
    let mut out: Vec<Vec<Message>> = Vec::new();
    let mut bytes = 0;
    for e in entries {
        let e = e.clone().bounded();
        let body = serde_json::to_string(&e).map_err(|err| StoreError::Fatal(Box::new(err)))?;
        let m = Message {
            id: e.id.chars().map(sqs_char).collect(),
            body: escape_for_sqs(body),
        };
        let size = m.size();
        match out.last_mut() {
            Some(batch) if batch.len() < MAX_BATCH_ENTRIES && bytes + size < MAX_BATCH_BYTES => {
                bytes += size;
                batch.push(m);
            }
            _ => {
                bytes = size;
                out.push(vec![m]);
            }
        }
    }
    Ok(out)
}

/// SQS refuses a message holding a character outside #x9, #xA, #xD, #x20-#xD7FF,
/// #xE000-#xFFFD and #x10000-#x10FFFF (InvalidMessageContents, a fatal error that would
/// block the shard again). JSON escapes the control characters, not U+FFFE and U+FFFF,
/// which input texts (a partition key, a quoted value) can hold: escape them too, so the
/// body still reads back exactly. They can only occur inside JSON strings.
fn escape_for_sqs(body: String) -> String {
    if !body.contains(['\u{FFFE}', '\u{FFFF}']) {
        return body;
    }
    body.replace('\u{FFFE}', "\\ufffe")
        .replace('\u{FFFF}', "\\uffff")
}

/// A character SQS accepts in an attribute value, or U+FFFD.
fn sqs_char(c: char) -> char {
    match c {
        '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'.. => c,
        _ => '\u{FFFD}',
    }
}

impl Quarantine for SqsQuarantine {
    async fn quarantine(&self, entries: &[QuarantineEntry]) -> Result<(), StoreError> {
        // Every request is sent even when one fails (writing an entry twice is allowed);
        // the call fails if any did, fatally if any failure was fatal.
        let results: Vec<Result<(), StoreError>> = futures::stream::iter(batches(entries)?)
            .map(|b| self.send(b))
            .buffer_unordered(CONCURRENT_REQUESTS)
            .collect()
            .await;
        let mut first: Option<StoreError> = None;
        for r in results {
            if let Err(e) = r {
                let worse = first.as_ref().is_none_or(|f| {
                    matches!((f, &e), (StoreError::Transient(_), StoreError::Fatal(_)))
                });
                if worse {
                    first = Some(e);
                }
            }
        }
        first.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use base64::Engine as _;
    use shardline_core::record::{Poison, RecordMeta};
    use shardline_core::{PoisonReason, RecordPos, SeqNo};

    use super::*;

    /// SQS's limit on one message and on one SendMessageBatch request.
    const SQS_LIMIT: usize = 256 * 1024;

    /// An entry built by hand with the whole payload, as entries were before they were
    /// bounded: the adapter must hold it to the limits too.
    fn entry(i: usize, payload: &[u8]) -> QuarantineEntry {
        let reason = PoisonReason::TooLarge {
            size: payload.len(),
            cap: 16 * 1024,
        };
        QuarantineEntry {
            id: String::new(),
            function: "fraud-scorer".into(),
            shard_id: "shardId-000000000000".into(),
            sequence_number: format!("4959{i:030}"),
            sub_sequence_number: 0,
            partition_key: "tok".into(),
            arrival_ms: 0,
            reason_text: reason.to_string(),
            reason,
            data_base64: base64::engine::general_purpose::STANDARD.encode(payload),
            data_size: payload.len() as u64,
            data_sha256_base64: String::new(),
            data_truncated: false,
            data_redacted: false,
        }
    }

    /// An entry as the batch processor builds it, for a poison record of `payload`.
    fn built(i: usize, payload: &[u8]) -> QuarantineEntry {
        let meta = RecordMeta {
            shard_id: Arc::from("shardId-000000000000"),
            pos: RecordPos {
                seq: SeqNo::parse(&format!("4959{i:052}")).unwrap(),
                sub: i as u32,
            },
            partition_key: format!("tok_{i}"),
            lane_key: None,
            arrival_ms: 0,
        };
        let reason = PoisonReason::TooLarge {
            size: payload.len(),
            cap: 16 * 1024,
        };
        QuarantineEntry::from_poison("fraud-scorer", &meta, Poison::new(reason, payload))
    }

    fn assert_fits(entries: &[QuarantineEntry]) {
        let planned = batches(entries).unwrap();
        let mut seen = 0;
        for batch in &planned {
            assert!(!batch.is_empty() && batch.len() <= MAX_BATCH_ENTRIES);
            // Bodies plus the attribute's name, type and value, counted here by hand.
            let total: usize = batch
                .iter()
                .map(|m| m.body.len() + "QuarantineId".len() + "String".len() + m.id.len())
                .sum();
            assert!(total < SQS_LIMIT, "a request of {total} bytes");
            for m in batch {
                assert!(
                    m.body.len() < SQS_LIMIT,
                    "a message of {} bytes",
                    m.body.len()
                );
                let e: QuarantineEntry = serde_json::from_str(&m.body).unwrap();
                // Fields held to their bounds (the same for all but the largest).
                let want = &entries[seen].clone().bounded();
                assert_eq!(e.sequence_number, want.sequence_number);
                assert_eq!(e.data_size, want.data_size);
                let id = format!(
                    "{}/{}/{}/{}",
                    want.function, want.shard_id, want.sequence_number, want.sub_sequence_number
                );
                assert_eq!((m.id.as_str(), e.id.as_str()), (id.as_str(), id.as_str()));
                seen += 1;
            }
        }
        assert_eq!(seen, entries.len(), "every entry is sent");
    }

    #[test]
    fn a_one_mib_poison_record_fits_one_sqs_message() {
        let payload = vec![b'a'; 1024 * 1024];
        assert_fits(&[entry(0, &payload)]);
        let e = built(0, &payload);
        assert!(e.to_bounded_json().unwrap().len() < 8 * 1024);
        assert_fits(&[e]);
    }

    #[test]
    fn many_large_poison_records_fit_sqs_requests() {
        let entries: Vec<QuarantineEntry> = (0..40)
            .map(|i| entry(i, &vec![b'{'; 100_000 + i * 20_000]))
            .collect();
        assert_fits(&entries);
        // As built by the processor: 10 to a request.
        let entries: Vec<QuarantineEntry> = (0..45)
            .map(|i| built(i, &vec![b'x'; 200_000 + i * 20_000]))
            .collect();
        assert_fits(&entries);
        assert_eq!(batches(&entries).unwrap().len(), 5);
    }

    /// SQS accepts only #x9, #xA, #xD, #x20-#xD7FF, #xE000-#xFFFD and #x10000-#x10FFFF in
    /// a body or attribute; JSON escapes the control characters but not U+FFFE/U+FFFF.
    fn sqs_allowed(c: char) -> bool {
        matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
    }

    #[test]
    fn texts_sqs_would_refuse_are_escaped() {
        let mut e = built(1, b"{}");
        e.partition_key = "tok\u{FFFF}\u{FFFE}\u{1}".into();
        e.reason = PoisonReason::UnknownSchema {
            found: "v\u{FFFF}".into(),
        };
        let planned = batches(&[e.clone()]).unwrap();
        let m = &planned[0][0];
        assert!(m.body.chars().all(sqs_allowed), "{:?}", m.body);
        assert!(m.id.chars().all(sqs_allowed), "{:?}", m.id);
        // Escaped, not replaced: the entry reads back as it was.
        let back: QuarantineEntry = serde_json::from_str(&m.body).unwrap();
        assert_eq!(back.partition_key, "tok\u{FFFF}\u{FFFE}\u{1}");
        assert_eq!(back, e.bounded());
    }

    #[test]
    fn the_largest_entries_fit_sqs_requests() {
        // Every text at its longest, of control characters (6 bytes each in JSON).
        let long = "\u{1}".repeat(10_000);
        let entries: Vec<QuarantineEntry> = (0..25)
            .map(|i| {
                let mut e = built(i, &vec![0x01; 1024 * 1024]);
                e.function = long.clone();
                e.shard_id = long.clone();
                e.partition_key = long.clone();
                e.reason = PoisonReason::InvalidField {
                    field: long.clone(),
                    why: long.clone(),
                };
                e
            })
            .collect();
        for e in &entries {
            let n = e.to_bounded_json().unwrap().len();
            assert!(n <= QuarantineEntry::MAX_JSON_BYTES, "{n} bytes");
        }
        assert_fits(&entries);
    }
}
