//! shardline's domain: the transaction event, Kinesis batch semantics, fraud features and
//! rules, and event-time windows. Nothing here depends on the AWS SDK or the Lambda
//! runtime: state is reached through the traits in [`ports`], so the same logic runs on
//! Lambda, under the local runner, in tests and in benchmarks.

pub mod alert;
pub mod batch;
pub mod error;
pub mod event;
pub mod expr;
pub mod fraud;
pub mod kpl;
pub mod lists;
pub mod ports;
pub mod record;
pub mod seq;
pub mod window;

pub use error::{BoxError, ErrorClass, RecordError, StoreError};
pub use event::{AuthResult, Channel, DecodeLimits, Location, PoisonReason, Txn};
pub use record::{InRecord, Poison, RecordMeta};
pub use seq::{RecordPos, SeqNo};
