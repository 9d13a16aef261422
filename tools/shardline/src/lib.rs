//! The shardline CLI as a library, so integration tests drive exactly what the command
//! line does: the generator, the producer, the local event source mapping, in-process
//! invocation, the demo.

pub mod alerts_query;
pub mod backtest;
pub mod baseline;
pub mod bench;
pub mod common;
pub mod demo;
pub mod eval;
pub mod invoke;
pub mod labelfile;
pub mod labels;
pub mod lists;
pub mod producer;
pub mod query;
pub mod replay;
pub mod rules;
pub mod runner;
pub mod soak;
pub mod traffic;

/// A function of the stack.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Function {
    /// Fraud scoring.
    FraudScorer,
    /// Windowed aggregation.
    WindowAggregator,
}

impl Function {
    /// The function's binary (its `BuildProperties.Binary` in the template).
    pub fn binary(self) -> &'static str {
        match self {
            Self::FraudScorer => "fraud-scorer",
            Self::WindowAggregator => "window-aggregator",
        }
    }
}
