//! In-process invocation: the deployed handlers, built from a template function's
//! environment, behind the runner's [`Invoker`] interface.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use futures::FutureExt;
use shardline_aws::template::FunctionSpec;
use window_aggregator::tumbling::is_time_window_event;

use crate::runner::{InvokeFuture, Invoker};

/// Lambda's default timeout in the template; the handlers' retry budget.
const DEADLINE: Duration = Duration::from_secs(60);

/// The handler of a template function, in this process, on the stores its environment
/// names (reached through the SDK's standard endpoint variables).
pub fn in_process(f: &FunctionSpec, sdk: &aws_config::SdkConfig) -> anyhow::Result<Invoker> {
    let env = |k: &str| f.environment.get(k).cloned();
    match f.binary.as_str() {
        "fraud-scorer" => {
            let cfg = fraud_scorer::Config::from_lookup(env)?;
            let scorer = Arc::new(fraud_scorer::deployed(&cfg, sdk));
            Ok(Arc::new(move |payload: Vec<u8>| -> InvokeFuture {
                let scorer = scorer.clone();
                Box::pin(async move {
                    let deadline = Some(tokio::time::Instant::now() + DEADLINE);
                    let run = AssertUnwindSafe(scorer.handle(&payload, deadline))
                        .catch_unwind()
                        .await;
                    match run {
                        Ok(Ok(report)) => {
                            serde_json::to_value(report.response).map_err(|e| e.to_string())
                        }
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(_) => Err("handler panicked".to_owned()),
                    }
                })
            }))
        }
        "window-aggregator" => {
            let cfg = window_aggregator::Config::from_lookup(env)?;
            let agg = Arc::new(window_aggregator::deployed(&cfg, sdk));
            Ok(Arc::new(move |payload: Vec<u8>| -> InvokeFuture {
                let agg = agg.clone();
                Box::pin(async move {
                    let deadline = Some(tokio::time::Instant::now() + DEADLINE);
                    let run = AssertUnwindSafe(async {
                        if is_time_window_event(&payload) {
                            agg.handle_time_window(&payload, deadline)
                                .await
                                .map(|r| serde_json::to_value(r).unwrap_or_default())
                        } else {
                            agg.handle(&payload, deadline)
                                .await
                                .map(|r| serde_json::to_value(r.response).unwrap_or_default())
                        }
                    })
                    .catch_unwind()
                    .await;
                    match run {
                        Ok(Ok(v)) => Ok(v),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(_) => Err("handler panicked".to_owned()),
                    }
                })
            }))
        }
        other => bail!("no in-process handler for binary {other}"),
    }
}
