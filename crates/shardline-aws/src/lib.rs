//! shardline's AWS adapters: Kinesis event decoding and Lambda responses, the SQS
//! quarantine, DynamoDB stores, SDK configuration and error classification. Everything
//! here implements a port of `shardline-core` or translates at the Lambda boundary.

pub mod bootstrap;
pub mod dynamo;
pub mod faults;
pub mod kinesis;
pub mod lineage;
pub mod lists;
pub mod quarantine;
pub mod sdk;
pub mod stream;
pub mod telemetry;
pub mod template;

pub use kinesis::{batch_response, decode_event_json, decode_kinesis_event};
pub use quarantine::SqsQuarantine;
