//! Error classes the batch processor acts on: poison (never retry), transient (retry),
//! fatal (configuration or a bug: report, do not retry in this invocation).

use crate::event::PoisonReason;

/// A boxed source error, kept whole (never flattened into a string).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// How an error must be handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// The input can never succeed: quarantine it and move on.
    Poison,
    /// Throttling, timeouts, 5xx, lost races: retry with backoff.
    Transient,
    /// Misconfiguration or a bug: fail the record without retrying here.
    Fatal,
}

/// An error from a port (store, queue, stream).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Worth retrying: throttling, timeouts, 5xx, connection errors, condition races.
    #[error("transient store error: {0}")]
    Transient(#[source] BoxError),
    /// Not worth retrying: access denied, missing table, validation errors.
    #[error("store error: {0}")]
    Fatal(#[source] BoxError),
}

impl StoreError {
    /// Which class this error belongs to.
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Transient(_) => ErrorClass::Transient,
            Self::Fatal(_) => ErrorClass::Fatal,
        }
    }

    /// A transient error from anything displayable (for adapters and tests).
    pub fn transient(msg: impl Into<String>) -> Self {
        Self::Transient(msg.into().into())
    }

    /// A fatal error from anything displayable (for adapters and tests).
    pub fn fatal(msg: impl Into<String>) -> Self {
        Self::Fatal(msg.into().into())
    }
}

/// Why processing one record did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The record can never succeed.
    #[error("poison record: {0}")]
    Poison(PoisonReason),
    /// A store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The handler panicked on this record.
    #[error("handler panicked: {0}")]
    Panicked(String),
}

impl RecordError {
    /// Which class this error belongs to.
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Poison(_) => ErrorClass::Poison,
            Self::Store(e) => e.class(),
            // A panic is a bug; retrying in the same invocation would panic again. It is
            // reported, so Lambda retries, bisects, and finally sends it to OnFailure.
            Self::Panicked(_) => ErrorClass::Fatal,
        }
    }
}
