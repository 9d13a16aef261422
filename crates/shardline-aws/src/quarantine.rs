//! The SQS quarantine: poison records as JSON messages on the dead-letter queue.

use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use shardline_core::StoreError;
use shardline_core::ports::{Quarantine, QuarantineEntry};

use crate::sdk::classify;

/// SQS allows 10 messages and 256 KiB (1 MiB since 2025, but not everywhere) per
/// SendMessageBatch: <https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_SendMessageBatch.html>.
const MAX_BATCH_ENTRIES: usize = 10;
const MAX_BATCH_BYTES: usize = 256 * 1024;

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
}

impl Quarantine for SqsQuarantine {
    async fn quarantine(&self, entries: &[QuarantineEntry]) -> Result<(), StoreError> {
        let mut bodies: Vec<String> = Vec::with_capacity(entries.len());
        for e in entries {
            bodies.push(serde_json::to_string(e).map_err(|err| StoreError::Fatal(Box::new(err)))?);
        }
        let mut start = 0;
        while start < bodies.len() {
            let mut end = start;
            let mut bytes = 0;
            while end < bodies.len()
                && end - start < MAX_BATCH_ENTRIES
                && (end == start || bytes + bodies[end].len() <= MAX_BATCH_BYTES)
            {
                bytes += bodies[end].len();
                end += 1;
            }
            let mut req = self.client.send_message_batch().queue_url(&self.queue_url);
            for (i, body) in bodies[start..end].iter().enumerate() {
                let entry = SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(body)
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
            start = end;
        }
        Ok(())
    }
}
