//! Logs and metrics. Logs are `tracing` events, JSON on Lambda. Metrics are typed
//! events written as CloudWatch Embedded Metric Format lines
//! (<https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/CloudWatch_Embedded_Metric_Format_Specification.html>),
//! which CloudWatch turns into metrics without a PutMetricData call.

use std::io::Write;

use serde_json::json;
use shardline_core::batch::BatchOutcome;

/// The CloudWatch namespace of every shardline metric.
pub const NAMESPACE: &str = "Shardline";

/// Starts `tracing`: JSON lines on Lambda (where `AWS_LAMBDA_FUNCTION_NAME` is set),
/// compact text elsewhere. The level comes from `RUST_LOG`, else `AWS_LAMBDA_LOG_LEVEL`,
/// else INFO. Safe to call twice.
pub fn init_tracing() {
    let filter = std::env::var("RUST_LOG")
        .or_else(|_| std::env::var("AWS_LAMBDA_LOG_LEVEL").map(|l| l.to_lowercase()))
        .unwrap_or_else(|_| "info".to_owned());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if std::env::var_os("AWS_LAMBDA_FUNCTION_NAME").is_some() {
        // Lambda adds its own timestamp and request id.
        builder
            .json()
            .with_current_span(false)
            .without_time()
            .with_ansi(false)
            .try_init()
    } else {
        builder.compact().try_init()
    };
}

/// One metric event: a batch was processed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BatchProcessed<'a> {
    /// Function name (dimension).
    pub function: &'a str,
    /// User records in the batch.
    pub records: usize,
    /// Durable effects.
    pub succeeded: usize,
    /// Poison records quarantined.
    pub quarantined: usize,
    /// Keys that failed (reported to Lambda).
    pub failed: usize,
    /// Transient-error retries.
    pub retries: u32,
    /// Handler wall time, milliseconds.
    pub duration_ms: f64,
    /// Extra counters of the function (name, value): alerts, late events, writes...
    pub extra: Vec<(&'static str, f64)>,
}

impl<'a> BatchProcessed<'a> {
    /// The event for an outcome.
    pub fn from_outcome(function: &'a str, o: &BatchOutcome, duration_ms: f64) -> Self {
        Self {
            function,
            records: o.records,
            succeeded: o.succeeded,
            quarantined: o.quarantined,
            failed: o.failed.len(),
            retries: o.retries,
            duration_ms,
            extra: Vec::new(),
        }
    }

    /// The EMF document for this event.
    pub fn to_emf(&self, timestamp_ms: i64) -> serde_json::Value {
        let mut doc = json!({
            "Function": self.function,
            "Records": self.records,
            "Succeeded": self.succeeded,
            "Quarantined": self.quarantined,
            "FailedKeys": self.failed,
            "Retries": self.retries,
            "DurationMs": self.duration_ms,
        });
        let mut metrics = vec![
            json!({"Name": "Records", "Unit": "Count"}),
            json!({"Name": "Succeeded", "Unit": "Count"}),
            json!({"Name": "Quarantined", "Unit": "Count"}),
            json!({"Name": "FailedKeys", "Unit": "Count"}),
            json!({"Name": "Retries", "Unit": "Count"}),
            json!({"Name": "DurationMs", "Unit": "Milliseconds"}),
        ];
        for (name, value) in &self.extra {
            doc[*name] = json!(value);
            metrics.push(json!({"Name": name, "Unit": "Count"}));
        }
        doc["_aws"] = json!({
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [{"Namespace": NAMESPACE, "Dimensions": [["Function"]], "Metrics": metrics}],
        });
        doc
    }

    /// Writes the EMF line to stdout (where Lambda's log agent picks it up).
    pub fn emit(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or_default();
        let line = self.to_emf(now).to_string();
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emf_document_declares_every_metric_it_carries() {
        let mut ev = BatchProcessed {
            function: "fraud-scorer",
            records: 10,
            succeeded: 9,
            quarantined: 1,
            ..Default::default()
        };
        ev.extra.push(("Alerts", 2.0));
        let doc = ev.to_emf(1_000);
        let declared: Vec<&str> = doc["_aws"]["CloudWatchMetrics"][0]["Metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["Name"].as_str().unwrap())
            .collect();
        for name in &declared {
            assert!(doc.get(*name).is_some(), "{name} declared but missing");
        }
        assert_eq!(doc["Alerts"], 2.0);
        assert_eq!(doc["Function"], "fraud-scorer");
    }
}
