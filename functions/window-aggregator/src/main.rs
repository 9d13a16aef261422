//! Lambda entry point of window-aggregator: tracing, typed config and SDK clients once at
//! cold start, then the runtime loop. All logic is in the library (`handler.rs`,
//! `tumbling.rs`); a payload with a `window` is Lambda's tumbling-window mode.
// The handler's future nests deeply (tumbling mode: panic catch, claims, lineage, spill);
// its layout needs more than the default 128 query levels.
#![recursion_limit = "256"]

use std::time::Instant;

use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::value::RawValue;
use shardline_aws::sdk::{deadline_instant, load_function_sdk_config};
use shardline_aws::telemetry::{BatchProcessed, init_tracing};
use window_aggregator::tumbling::is_time_window_event;
use window_aggregator::{Config, FUNCTION};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    init_tracing();
    let cfg = Config::from_env()?;
    // With operation timeouts: a hung connection fails its call, not the invocation.
    let sdk = load_function_sdk_config().await;
    let agg = window_aggregator::deployed(&cfg, &sdk);
    let agg = &agg;
    lambda_runtime::run(service_fn(
        move |event: LambdaEvent<Box<RawValue>>| async move {
            let started = Instant::now();
            let payload = event.payload.get().as_bytes();
            let deadline = Some(deadline_instant(event.context.deadline));
            if is_time_window_event(payload) {
                // TumblingWindowInSeconds mode: the state travels in the response.
                let resp = agg.handle_time_window(payload, deadline).await?;
                return Ok::<_, Error>(serde_json::to_value(resp)?);
            }
            let report = agg.handle(payload, deadline).await?;
            let mut metrics = BatchProcessed::from_outcome(
                FUNCTION,
                &report.outcome,
                started.elapsed().as_secs_f64() * 1e3,
            );
            metrics.extra = vec![
                ("WindowWrites", report.partial_writes as f64),
                ("Late", report.late as f64),
                ("Alerts", report.alerts as f64),
            ];
            metrics.emit();
            tracing::info!(
                records = report.outcome.records,
                windows = report.windows_touched,
                late = report.late,
                "Batch processed."
            );
            Ok::<_, Error>(serde_json::to_value(report.response)?)
        },
    ))
    .await
}
