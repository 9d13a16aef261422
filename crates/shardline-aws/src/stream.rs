//! The optional alert output stream on Kinesis.

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use shardline_core::StoreError;
use shardline_core::alert::Alert;
use shardline_core::ports::AlertStream;

use crate::sdk::classify;

/// Publishes alerts to a Kinesis stream (partition key: the alert's subject), at least
/// once: consumers dedupe by `alert_id`.
#[derive(Clone, Debug)]
pub struct KinesisAlertStream {
    client: Client,
    stream: String,
}

impl KinesisAlertStream {
    /// Alerts to `stream`.
    pub fn new(client: Client, stream: impl Into<String>) -> Self {
        Self {
            client,
            stream: stream.into(),
        }
    }
}

impl AlertStream for KinesisAlertStream {
    async fn publish(&self, alerts: &[Alert]) -> Result<(), StoreError> {
        if alerts.is_empty() {
            return Ok(());
        }
        let mut entries = Vec::with_capacity(alerts.len());
        for a in alerts {
            let data = serde_json::to_vec(a).map_err(|e| StoreError::Fatal(Box::new(e)))?;
            entries.push(
                PutRecordsRequestEntry::builder()
                    .partition_key(&a.subject)
                    .data(Blob::new(data))
                    .build()
                    .map_err(|e| StoreError::Fatal(Box::new(e)))?,
            );
        }
        let out = self
            .client
            .put_records()
            .stream_name(&self.stream)
            .set_records(Some(entries))
            .send()
            .await
            .map_err(classify)?;
        if out.failed_record_count().unwrap_or(0) > 0 {
            return Err(StoreError::transient(format!(
                "{} alerts not accepted by the output stream",
                out.failed_record_count().unwrap_or(0)
            )));
        }
        Ok(())
    }
}

/// Either a Kinesis alert stream or none, chosen by configuration.
#[derive(Clone, Debug)]
pub enum MaybeAlertStream {
    /// Publish to Kinesis.
    Kinesis(KinesisAlertStream),
    /// Not configured.
    None,
}

impl AlertStream for MaybeAlertStream {
    async fn publish(&self, alerts: &[Alert]) -> Result<(), StoreError> {
        match self {
            Self::Kinesis(k) => k.publish(alerts).await,
            Self::None => Ok(()),
        }
    }
}
