//! Lambda entry point of fraud-scorer: tracing, typed config and SDK clients once at
//! cold start, then the runtime loop. All logic is in the library (`handler.rs`).
// The handler's future (stores, SDK clients, the runtime loop) is deeper than the
// compiler's default layout query limit.
#![recursion_limit = "256"]

use std::time::Instant;

use fraud_scorer::{Config, FUNCTION};
use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::value::RawValue;
use shardline_aws::sdk::{deadline_instant, load_function_sdk_config};
use shardline_aws::telemetry::{BatchProcessed, init_tracing};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    init_tracing();
    let cfg = Config::from_env()?;
    // With operation timeouts: a hung connection fails its call, not the invocation.
    let sdk = load_function_sdk_config().await;
    let scorer = fraud_scorer::deployed(&cfg, &sdk);
    let scorer = &scorer;
    lambda_runtime::run(service_fn(
        move |event: LambdaEvent<Box<RawValue>>| async move {
            let started = Instant::now();
            let deadline = deadline_instant(event.context.deadline);
            let report = scorer
                .handle(event.payload.get().as_bytes(), Some(deadline))
                .await?;
            let mut metrics = BatchProcessed::from_outcome(
                FUNCTION,
                &report.outcome,
                started.elapsed().as_secs_f64() * 1e3,
            );
            metrics.extra = vec![
                ("Alerts", report.alerts as f64),
                ("Blocked", report.blocked as f64),
                ("ShadowDisagreements", report.shadow_disagreements as f64),
                ("Scored", report.scored as f64),
                ("BelowThreshold", report.below_threshold as f64),
                ("Replayed", report.replayed as f64),
                ("Duplicates", report.duplicates as f64),
            ];
            metrics.emit();
            tracing::info!(
                records = report.outcome.records,
                alerts = report.alerts,
                quarantined = report.outcome.quarantined,
                failed = report.outcome.failed.len(),
                "Batch processed."
            );
            Ok::<_, Error>(report.response)
        },
    ))
    .await
}
