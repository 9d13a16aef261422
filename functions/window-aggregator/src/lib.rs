//! The window-aggregator Lambda function as a library: its handler (generic over the
//! stores) and its configuration. `main.rs` only wires it to the Lambda runtime.

pub mod config;
pub mod handler;
pub mod tumbling;

pub use config::Config;
pub use handler::{Aggregator, AggregatorSettings, FUNCTION, Report, Stores};

use shardline_aws::SqsQuarantine;
use shardline_aws::dynamo::{DynamoAlertSink, DynamoWindowStore};
use shardline_aws::lineage::KinesisShardParents;

/// The aggregator as deployed: DynamoDB windows and alerts, the SQS quarantine.
pub type DeployedAggregator = Aggregator<DynamoWindowStore, DynamoAlertSink, SqsQuarantine>;

/// Builds the deployed aggregator from its configuration and the SDK configuration: the
/// one wiring shared by `main.rs` and the local runner.
pub fn deployed(cfg: &Config, sdk: &aws_config::SdkConfig) -> DeployedAggregator {
    let ddb = aws_sdk_dynamodb::Client::new(sdk);
    let mut settings = AggregatorSettings::default();
    cfg.apply(&mut settings);
    let aggregator = Aggregator::new(
        Stores {
            windows: DynamoWindowStore::new(ddb.clone(), &cfg.windows_table),
            alerts: DynamoAlertSink::new(ddb, &cfg.alerts_table),
            quarantine: SqsQuarantine::new(
                aws_sdk_sqs::Client::new(sdk),
                &cfg.quarantine_queue_url,
            ),
        },
        settings,
    );
    match &cfg.input_stream {
        Some(stream) => aggregator.with_parents(std::sync::Arc::new(KinesisShardParents::new(
            aws_sdk_kinesis::Client::new(sdk),
            stream,
        ))),
        None => aggregator,
    }
}
