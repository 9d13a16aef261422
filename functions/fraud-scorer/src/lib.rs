//! The fraud-scorer Lambda function as a library: its handler (generic over the stores)
//! and its configuration, so the local runner, tests and benchmarks call exactly the
//! code that is deployed. `main.rs` only wires it to the Lambda runtime.

pub mod config;
pub mod handler;

pub use config::Config;
pub use handler::{FUNCTION, Report, Scorer, ScorerSettings, Stores};

use shardline_aws::SqsQuarantine;
use shardline_aws::dynamo::{DynamoAlertSink, DynamoProfileStore, DynamoRuleSource};
use shardline_aws::lists::DynamoListSource;
use shardline_aws::stream::{KinesisAlertStream, MaybeAlertStream};

/// The scorer as deployed: DynamoDB stores, the SQS quarantine, the rule set from the
/// config table, the lists table and the optional alerts stream.
pub type DeployedScorer = Scorer<
    DynamoProfileStore,
    DynamoAlertSink,
    SqsQuarantine,
    DynamoRuleSource,
    MaybeAlertStream,
    DynamoListSource,
>;

/// Builds the deployed scorer from its configuration and the SDK configuration: the one
/// wiring shared by `main.rs` and the local runner, so both run the same thing.
pub fn deployed(cfg: &Config, sdk: &aws_config::SdkConfig) -> DeployedScorer {
    let ddb = aws_sdk_dynamodb::Client::new(sdk);
    let stream = match &cfg.alerts_stream {
        Some(name) => MaybeAlertStream::Kinesis(KinesisAlertStream::new(
            aws_sdk_kinesis::Client::new(sdk),
            name,
        )),
        None => MaybeAlertStream::None,
    };
    Scorer::new(
        Stores {
            profiles: DynamoProfileStore::new(ddb.clone(), &cfg.profiles_table),
            alerts: DynamoAlertSink::new(ddb.clone(), &cfg.alerts_table),
            quarantine: SqsQuarantine::new(
                aws_sdk_sqs::Client::new(sdk),
                &cfg.quarantine_queue_url,
            ),
            rules: DynamoRuleSource::new(ddb.clone(), &cfg.config_table),
            stream,
        },
        ScorerSettings {
            rules_ttl: cfg.rules_ttl,
            lists_ttl: cfg.lists_ttl,
            threshold_override: cfg.alert_threshold,
            ..ScorerSettings::default()
        },
    )
    .with_lists(DynamoListSource::new(ddb, &cfg.lists_table))
}
