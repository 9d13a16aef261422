//! `shardline`: the command line for working with shardline locally.
//!
//! - `bootstrap` creates the streams, tables and queues of `template.yaml` in the
//!   endpoint the AWS SDK is pointed at (the local emulators), idempotently.
//! - `replay` runs a function in process on Lambda event fixtures: the handler that is
//!   deployed, against in-memory stores.
//! - `query windows` reads windowed aggregates back, merged across shards.

mod common;
mod query;
mod replay;

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "shardline",
    version,
    about = "Real-time fraud scoring and windowed aggregation on Kinesis + Lambda: local tooling"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create template.yaml's streams, tables and queues in the local emulators.
    Bootstrap {
        #[command(flatten)]
        template: common::TemplateArgs,
    },
    /// Run a function in process on fixture files (Lambda Kinesis events), in order, with
    /// state carried from one file to the next.
    Replay {
        /// The function.
        #[arg(value_enum)]
        function: Function,
        /// Fixture files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Compare with each fixture's golden file (`<fixture>.expected.json`).
        #[arg(long)]
        expect: bool,
    },
    /// Read stored results.
    #[command(subcommand)]
    Query(query::Query),
}

/// A function of the stack.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Function {
    /// Fraud scoring.
    FraudScorer,
    /// Windowed aggregation.
    WindowAggregator,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shardline_aws::telemetry::init_tracing();
    match Cli::parse().command {
        Command::Bootstrap { template } => common::bootstrap_cmd(&template).await,
        Command::Replay {
            function,
            files,
            expect,
        } => replay::run(function, &files, expect).await,
        Command::Query(q) => query::run(q).await,
    }
}
