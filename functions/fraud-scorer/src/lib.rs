//! The fraud-scorer Lambda function as a library: its handler (generic over the stores)
//! and its configuration, so the local runner, tests and benchmarks call exactly the
//! code that is deployed. `main.rs` only wires it to the Lambda runtime.

pub mod config;
pub mod handler;

pub use config::Config;
pub use handler::{FUNCTION, Report, Scorer, ScorerSettings, Stores};
