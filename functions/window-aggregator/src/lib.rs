//! The window-aggregator Lambda function as a library: its handler (generic over the
//! stores) and its configuration. `main.rs` only wires it to the Lambda runtime.

pub mod config;
pub mod handler;
pub mod tumbling;

pub use config::Config;
pub use handler::{Aggregator, AggregatorSettings, FUNCTION, Report, Stores};
