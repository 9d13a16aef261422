//! SDK set-up and error classification.
//!
//! Clients are configured only through the SDK's standard environment: region,
//! credentials, and `AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_<SERVICE>` for a local
//! emulator (<https://docs.aws.amazon.com/sdkref/latest/guide/feature-ss-endpoints.html>).
//! There is no emulator-specific code path. The one addition is fault injection for soak
//! tests ([`crate::faults`]), off unless `SHARDLINE_FAULTS` is set. The functions add
//! operation timeouts ([`load_function_sdk_config`]); the CLI's own calls keep the SDK's
//! defaults.

use std::error::Error;
use std::fmt::Debug;
use std::time::Duration;

use aws_config::timeout::TimeoutConfig;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use shardline_core::StoreError;

use crate::faults::{FAULTS_ENV, FaultConfigError, FaultInjector};

/// Loads the shared SDK configuration from the standard environment, once per process.
///
/// When `SHARDLINE_FAULTS` is set (soak tests only: `template.yaml` never sets it), every
/// client built from the result injects the faults it describes; see [`crate::faults`].
///
/// # Panics
///
/// When `SHARDLINE_FAULTS` is set but invalid: a soak run must not quietly run without
/// its faults. [`try_load_sdk_config`] returns the error instead.
pub async fn load_sdk_config() -> aws_config::SdkConfig {
    try_load_sdk_config()
        .await
        .unwrap_or_else(|e| panic!("{e}; fix or unset it"))
}

/// [`load_sdk_config`], with an invalid `SHARDLINE_FAULTS` as an error.
pub async fn try_load_sdk_config() -> Result<aws_config::SdkConfig, FaultConfigError> {
    let faults = FaultInjector::from_env()?;
    let sdk = aws_config::load_from_env().await;
    Ok(match faults {
        None => sdk,
        Some(injector) => {
            tracing::warn!(
                env = FAULTS_ENV,
                seed = injector.plan().seed(),
                "Fault injection is on: SDK requests will fail on purpose."
            );
            injector.apply(&sdk)
        }
    })
}

/// How long one attempt of an SDK call may take in a function: DynamoDB, SQS and Kinesis
/// answer these small requests in milliseconds (a BatchGetItem of 100 profiles, a
/// BatchWriteItem of 25 alerts, a PutItem of a few KB), so 5 s is far past a slow answer:
/// only a hung connection or a stalled response reaches it, and the SDK retries it.
/// <https://docs.aws.amazon.com/sdk-for-rust/latest/dg/timeouts.html>
pub const FUNCTION_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one SDK call may take in a function, its retries included: three attempts
/// of [`FUNCTION_ATTEMPT_TIMEOUT`] (the standard retry mode's maximum). It is a quarter of
/// the functions' 60 s Lambda `Timeout` (`template.yaml`), so a stuck call leaves the
/// handler time to retry within the invocation or to report the records; the handlers
/// also start no call inside their deadline margin and cut off their batch-level calls
/// there, which this longer bound cannot do alone.
pub const FUNCTION_OPERATION_TIMEOUT: Duration = Duration::from_secs(15);

/// `sdk` with the functions' operation timeouts ([`FUNCTION_ATTEMPT_TIMEOUT`],
/// [`FUNCTION_OPERATION_TIMEOUT`]); its other timeouts (the connect timeout) and its HTTP
/// client (with fault injection, if on) are kept. Without an operation timeout the SDK
/// waits on a hung connection until Lambda kills the invocation, which then replays the
/// whole batch and counts against the mapping's retries.
pub fn with_function_timeouts(sdk: &aws_config::SdkConfig) -> aws_config::SdkConfig {
    let mut timeouts = TimeoutConfig::builder()
        .operation_attempt_timeout(FUNCTION_ATTEMPT_TIMEOUT)
        .operation_timeout(FUNCTION_OPERATION_TIMEOUT)
        .build();
    if let Some(given) = sdk.timeout_config() {
        timeouts.take_defaults_from(given);
    }
    sdk.to_builder().timeout_config(timeouts).build()
}

/// [`load_sdk_config`] for a Lambda function: with [`with_function_timeouts`].
///
/// # Panics
///
/// As [`load_sdk_config`].
pub async fn load_function_sdk_config() -> aws_config::SdkConfig {
    with_function_timeouts(&load_sdk_config().await)
}

/// The standard environment's SDK configuration, ignoring `SHARDLINE_FAULTS`: for the
/// set-up and the checks of a soak run, which must not see its faults.
pub async fn load_sdk_config_without_faults() -> aws_config::SdkConfig {
    aws_config::load_from_env().await
}

/// Error codes that mean "try again later" across DynamoDB, Kinesis and SQS.
/// <https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/Programming.Errors.html>
const TRANSIENT_CODES: &[&str] = &[
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "Throttling",
    "RequestLimitExceeded",
    "InternalServerError",
    "InternalFailure",
    "ServiceUnavailable",
    "TransactionConflictException",
    "LimitExceededException",
    "KMSThrottlingException",
    "RequestThrottled",
];

/// Classifies an SDK error: timeouts, connection failures, throttling and 5xx are
/// transient; everything else (access denied, missing resource, validation) is fatal.
pub fn classify<E, R>(err: SdkError<E, R>) -> StoreError
where
    E: ProvideErrorMetadata + Error + Send + Sync + 'static,
    R: Debug + Send + Sync + 'static,
{
    let transient = match &err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ServiceError(se) => se
            .err()
            .code()
            .is_some_and(|c| TRANSIENT_CODES.contains(&c)),
        _ => false,
    };
    if transient {
        StoreError::Transient(Box::new(err))
    } else {
        StoreError::Fatal(Box::new(err))
    }
}

/// Converts Lambda's invocation deadline (epoch milliseconds, `Context::deadline`) into
/// an `Instant` for the batch processor's retry budget.
pub fn deadline_instant(deadline_epoch_ms: u64) -> tokio::time::Instant {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default();
    tokio::time::Instant::now()
        + std::time::Duration::from_millis(deadline_epoch_ms.saturating_sub(now_ms))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

    use super::*;
    use crate::template::Template;

    #[test]
    fn function_clients_time_out_every_call_and_keep_the_connect_timeout() {
        let base = aws_config::SdkConfig::builder()
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_millis(3100))
                    .build(),
            )
            .build();
        let sdk = with_function_timeouts(&base);
        // What a client built from it (as `deployed` does) runs with.
        let ddb = aws_sdk_dynamodb::config::Config::from(&sdk);
        let t = ddb.timeout_config().unwrap();
        assert_eq!(
            t.operation_attempt_timeout(),
            Some(FUNCTION_ATTEMPT_TIMEOUT)
        );
        assert_eq!(t.operation_timeout(), Some(FUNCTION_OPERATION_TIMEOUT));
        assert_eq!(t.connect_timeout(), Some(Duration::from_millis(3100)));
    }

    #[test]
    fn a_stuck_call_costs_a_small_part_of_the_functions_timeout() {
        let template =
            Template::load(concat!(env!("CARGO_MANIFEST_DIR"), "/../../template.yaml")).unwrap();
        let functions = template.resources_of_type("AWS::Serverless::Function");
        assert!(!functions.is_empty());
        for (logical, props) in functions {
            let secs = props
                .get("Timeout")
                .or_else(|| template.raw().pointer("/Globals/Function/Timeout"))
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(3);
            let lambda = Duration::from_secs(secs);
            assert!(
                FUNCTION_OPERATION_TIMEOUT * 4 <= lambda,
                "{logical}: a {secs} s function cannot afford {FUNCTION_OPERATION_TIMEOUT:?} per call"
            );
        }
        // The SDK's standard retry mode makes up to three attempts.
        assert!(FUNCTION_ATTEMPT_TIMEOUT * 3 <= FUNCTION_OPERATION_TIMEOUT);
    }
}
