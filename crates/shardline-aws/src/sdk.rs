//! SDK set-up and error classification.
//!
//! Clients are configured only through the SDK's standard environment: region,
//! credentials, and `AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_<SERVICE>` for a local
//! emulator (<https://docs.aws.amazon.com/sdkref/latest/guide/feature-ss-endpoints.html>).
//! There is no emulator-specific code path. The one addition is fault injection for soak
//! tests ([`crate::faults`]), off unless `SHARDLINE_FAULTS` is set.

use std::error::Error;
use std::fmt::Debug;

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
