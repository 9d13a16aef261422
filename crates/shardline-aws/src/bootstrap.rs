//! Creates a template's streams, tables and queues in the endpoint the SDK is pointed
//! at (the local emulators), idempotently: what exists is left alone. Every other type
//! the template declares (the record archive's S3 bucket and Firehose delivery stream,
//! IAM roles, log groups, alarms) is skipped: it exists only in a deployed stack.

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection,
    ProjectionType, ScalarAttributeType, TimeToLiveSpecification,
};
use serde_json::Value;

use crate::template::{Template, scalar};

/// A bootstrap problem.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// An SDK call failed.
    #[error("{what}: {source}")]
    Sdk {
        /// What was being done.
        what: String,
        /// The SDK error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The template asks for something unsupported.
    #[error("template: {0}")]
    Template(String),
}

fn sdk<E: std::error::Error + Send + Sync + 'static>(
    what: impl Into<String>,
) -> impl FnOnce(E) -> BootstrapError {
    let what = what.into();
    move |e| BootstrapError::Sdk {
        what,
        source: Box::new(e),
    }
}

/// What a bootstrap did: each resource with `true` when it was created now.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BootstrapReport {
    /// Streams (name, created).
    pub streams: Vec<(String, bool)>,
    /// Tables (name, created).
    pub tables: Vec<(String, bool)>,
    /// Queues (name, created).
    pub queues: Vec<(String, bool)>,
}

impl BootstrapReport {
    /// Resources created by this run.
    pub fn created(&self) -> usize {
        [&self.streams, &self.tables, &self.queues]
            .iter()
            .map(|l| l.iter().filter(|(_, c)| *c).count())
            .sum()
    }
}

/// Creates everything; fills in the queue URLs in `template` (what `Ref` of a queue
/// returns) so function environments resolve to real URLs.
pub async fn bootstrap(
    sdk_config: &aws_config::SdkConfig,
    template: &mut Template,
) -> Result<BootstrapReport, BootstrapError> {
    let mut report = BootstrapReport::default();
    let kinesis = aws_sdk_kinesis::Client::new(sdk_config);
    let ddb = aws_sdk_dynamodb::Client::new(sdk_config);
    let sqs = aws_sdk_sqs::Client::new(sdk_config);
    // Locally a stream always has ShardCount shards (deterministic shard layout for tests).
    let local_shards: i32 = template
        .param("ShardCount")
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);

    for (_, props) in template.resources_of_type("AWS::Kinesis::Stream") {
        let name = scalar(&props["Name"]);
        let exists = kinesis
            .describe_stream_summary()
            .stream_name(&name)
            .send()
            .await
            .is_ok();
        if !exists {
            kinesis
                .create_stream()
                .stream_name(&name)
                .shard_count(local_shards)
                .send()
                .await
                .map_err(sdk(format!("create stream {name}")))?;
        }
        report.streams.push((name, !exists));
    }

    // Every page: an account (or a busy emulator) can hold more than one page's 100.
    let mut existing: Vec<String> = Vec::new();
    let mut pages = ddb.list_tables().into_paginator().send();
    while let Some(page) = pages.next().await {
        existing.extend_from_slice(page.map_err(sdk("list tables"))?.table_names());
    }
    for (logical, props) in template.resources_of_type("AWS::DynamoDB::Table") {
        let name = scalar(&props["TableName"]);
        if existing.contains(&name) {
            report.tables.push((name, false));
            continue;
        }
        let mut req = ddb
            .create_table()
            .table_name(&name)
            .billing_mode(BillingMode::PayPerRequest);
        for a in props["AttributeDefinitions"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            let ty = match scalar(&a["AttributeType"]).as_str() {
                "S" => ScalarAttributeType::S,
                "N" => ScalarAttributeType::N,
                "B" => ScalarAttributeType::B,
                other => {
                    return Err(BootstrapError::Template(format!(
                        "{logical}: attribute type {other}"
                    )));
                }
            };
            req = req.attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name(scalar(&a["AttributeName"]))
                    .attribute_type(ty)
                    .build()
                    .map_err(sdk("attribute"))?,
            );
        }
        for k in key_schema(&props["KeySchema"])? {
            req = req.key_schema(k);
        }
        for g in props["GlobalSecondaryIndexes"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            let mut gb = GlobalSecondaryIndex::builder()
                .index_name(scalar(&g["IndexName"]))
                .projection(
                    Projection::builder()
                        .projection_type(ProjectionType::All)
                        .build(),
                );
            for k in key_schema(&g["KeySchema"])? {
                gb = gb.key_schema(k);
            }
            req = req.global_secondary_indexes(gb.build().map_err(sdk("index"))?);
        }
        req.send()
            .await
            .map_err(sdk(format!("create table {name}")))?;
        if let Some(ttl) = props.get("TimeToLiveSpecification")
            && ttl["Enabled"] == Value::Bool(true)
        {
            let spec = TimeToLiveSpecification::builder()
                .attribute_name(scalar(&ttl["AttributeName"]))
                .enabled(true)
                .build()
                .map_err(sdk("ttl"))?;
            ddb.update_time_to_live()
                .table_name(&name)
                .time_to_live_specification(spec)
                .send()
                .await
                .map_err(sdk(format!("ttl on {name}")))?;
        }
        report.tables.push((name, true));
    }

    // Dead-letter targets first, so a redrive policy can name them.
    let mut queues: Vec<String> = template
        .resources_of_type("AWS::SQS::Queue")
        .into_iter()
        .map(|(l, _)| l)
        .collect();
    queues.sort_by_key(|l| {
        template
            .resource(l)
            .and_then(|r| r.pointer("/Properties/RedrivePolicy"))
            .is_some()
    });
    for logical in queues {
        // Resolved now, after the queues it may name exist with their real ARNs.
        let props = template.resolve(
            template
                .resource(&logical)
                .and_then(|r| r.get("Properties"))
                .unwrap_or(&Value::Null),
        );
        let name = scalar(&props["QueueName"]);
        let existed = sqs
            .get_queue_url()
            .queue_name(&name)
            .send()
            .await
            .ok()
            .and_then(|o| o.queue_url().map(str::to_owned));
        let url = match existed.clone() {
            Some(u) => u,
            None => {
                let mut req = sqs.create_queue().queue_name(&name);
                if let Some(rp) = props.get("RedrivePolicy") {
                    req = req.attributes(
                        aws_sdk_sqs::types::QueueAttributeName::RedrivePolicy,
                        rp.to_string(),
                    );
                }
                req.send()
                    .await
                    .map_err(sdk(format!("create queue {name}")))?
                    .queue_url()
                    .unwrap_or_default()
                    .to_owned()
            }
        };
        let attrs = sqs
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(sdk(format!("queue attributes of {name}")))?;
        if let Some(arn) = attrs
            .attributes()
            .and_then(|a| a.get(&aws_sdk_sqs::types::QueueAttributeName::QueueArn))
        {
            template.set_arn(&logical, arn.clone());
        }
        template.set_reference(&logical, url);
        report.queues.push((name, existed.is_none()));
    }
    Ok(report)
}

fn key_schema(v: &Value) -> Result<Vec<KeySchemaElement>, BootstrapError> {
    v.as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|k| {
            let kt = if scalar(&k["KeyType"]) == "RANGE" {
                KeyType::Range
            } else {
                KeyType::Hash
            };
            KeySchemaElement::builder()
                .attribute_name(scalar(&k["AttributeName"]))
                .key_type(kt)
                .build()
                .map_err(sdk("key schema"))
        })
        .collect()
}
