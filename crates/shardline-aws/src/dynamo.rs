//! DynamoDB adapters of the core ports: card profiles, alerts, the rule set.
//! Items are mapped with `serde_dynamo`; key attribute names match `template.yaml`.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{AttributeValue, KeysAndAttributes, PutRequest, WriteRequest};
use shardline_core::StoreError;
use shardline_core::alert::Alert;
use shardline_core::fraud::profile::CardProfile;
use shardline_core::fraud::rules::RuleSet;
use shardline_core::ports::{
    AlertSink, BatchRead, BatchReadKeys, MAX_BATCH_GET, MAX_BATCH_WRITE, PartialKey, ProfileStore,
    Put, RuleSource, WindowStore,
};
use shardline_core::window::claims::{ClaimItem, ClaimKey, Lineage};
use shardline_core::window::{ShardProgress, WindowId, WindowPartial};

use crate::sdk::classify;

/// Key attribute of the profiles table.
pub const PROFILE_KEY: &str = "card_token";
/// Key attribute of the alerts table.
pub const ALERT_KEY: &str = "alert_id";
/// Key attribute of the config table.
pub const CONFIG_KEY: &str = "config_id";
/// Config item holding the scorer's rule set (attribute `body`: the JSON).
pub const RULES_CONFIG_ID: &str = "rules#fraud-scorer";
/// Attempts at a BatchWriteItem's unprocessed items before giving up.
const UNPROCESSED_ATTEMPTS: u32 = 5;

fn fatal(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Fatal(Box::new(e))
}

/// Writes `item` only if the stored item's `version` is `expected` (`None`: only if no
/// item is stored under its key `key_attr`). A failed condition is a [`Put::Conflict`],
/// not an error: the caller re-reads and re-applies.
async fn versioned_put<T: serde::Serialize>(
    client: &Client,
    table: &str,
    item: &T,
    key_attr: &str,
    expected: Option<u64>,
) -> Result<Put, StoreError> {
    let item: HashMap<String, AttributeValue> = serde_dynamo::to_item(item).map_err(fatal)?;
    let req = client.put_item().table_name(table).set_item(Some(item));
    let req = match expected {
        None => req
            .condition_expression("attribute_not_exists(#k)")
            .expression_attribute_names("#k", key_attr),
        Some(v) => req
            .condition_expression("#v = :v")
            .expression_attribute_names("#v", "version")
            .expression_attribute_values(":v", AttributeValue::N(v.to_string())),
    };
    match req.send().await {
        Ok(_) => Ok(Put::Written),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
        {
            Ok(Put::Conflict)
        }
        Err(e) => Err(classify(e)),
    }
}

/// One strongly consistent BatchGetItem (at most 100 keys): the items found, and the
/// keys DynamoDB did not get to (`UnprocessedKeys`), to be asked again.
/// <https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_BatchGetItem.html>
async fn batch_get<T: serde::de::DeserializeOwned>(
    client: &Client,
    table: &str,
    keys: Vec<HashMap<String, AttributeValue>>,
) -> Result<(Vec<T>, Vec<HashMap<String, AttributeValue>>), StoreError> {
    let ka = KeysAndAttributes::builder()
        .set_keys(Some(keys))
        .consistent_read(true)
        .build()
        .map_err(fatal)?;
    let out = client
        .batch_get_item()
        .request_items(table, ka)
        .send()
        .await
        .map_err(classify)?;
    let found = out
        .responses()
        .and_then(|r| r.get(table))
        .map(|items| serde_dynamo::from_items(items.clone()))
        .transpose()
        .map_err(fatal)?
        .unwrap_or_default();
    let unprocessed = out
        .unprocessed_keys()
        .and_then(|u| u.get(table))
        .map(|ka| ka.keys().to_vec())
        .unwrap_or_default();
    Ok((found, unprocessed))
}

fn key_str(key: &HashMap<String, AttributeValue>, attr: &str) -> Option<String> {
    key.get(attr).and_then(|v| v.as_s().ok()).cloned()
}

/// Card profiles in DynamoDB, one item per card, versioned.
#[derive(Clone, Debug)]
pub struct DynamoProfileStore {
    client: Client,
    table: String,
}

impl DynamoProfileStore {
    /// Profiles in `table`.
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }
}

impl ProfileStore for DynamoProfileStore {
    async fn get_profiles(&self, cards: &[String]) -> Result<BatchRead<CardProfile>, StoreError> {
        let keys = cards
            .iter()
            .map(|c| HashMap::from([(PROFILE_KEY.to_owned(), AttributeValue::S(c.clone()))]))
            .collect();
        let (found, unprocessed) = batch_get(&self.client, &self.table, keys).await?;
        let unprocessed = unprocessed
            .iter()
            .filter_map(|k| key_str(k, PROFILE_KEY))
            .collect();
        Ok(BatchRead { found, unprocessed })
    }

    async fn get_profile(&self, card: &str) -> Result<Option<CardProfile>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(PROFILE_KEY, AttributeValue::S(card.to_owned()))
            .consistent_read(true)
            .send()
            .await
            .map_err(classify)?;
        out.item()
            .map(|i| serde_dynamo::from_item(i.clone()))
            .transpose()
            .map_err(fatal)
    }

    async fn put_profile(
        &self,
        profile: &CardProfile,
        expected: Option<u64>,
    ) -> Result<Put, StoreError> {
        versioned_put(&self.client, &self.table, profile, PROFILE_KEY, expected).await
    }
}

/// Alerts in DynamoDB, keyed by `alert_id` (writing one twice leaves one item).
#[derive(Clone, Debug)]
pub struct DynamoAlertSink {
    client: Client,
    table: String,
}

impl DynamoAlertSink {
    /// Alerts in `table`.
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }
}

impl AlertSink for DynamoAlertSink {
    async fn put_alerts(&self, alerts: &[Alert]) -> Result<(), StoreError> {
        if alerts.is_empty() {
            return Ok(());
        }
        let mut writes = Vec::with_capacity(alerts.len());
        for a in alerts {
            writes.push(put_request(serde_dynamo::to_item(a).map_err(fatal)?)?);
        }
        batch_write(&self.client, &self.table, writes).await
    }
}

/// A BatchWriteItem request putting `item`.
pub fn put_request(
    item: std::collections::HashMap<String, AttributeValue>,
) -> Result<WriteRequest, StoreError> {
    Ok(WriteRequest::builder()
        .put_request(
            PutRequest::builder()
                .set_item(Some(item))
                .build()
                .map_err(fatal)?,
        )
        .build())
}

/// One BatchWriteItem of up to 25 requests, re-sending unprocessed items with backoff.
/// <https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_BatchWriteItem.html>
pub async fn batch_write(
    client: &Client,
    table: &str,
    mut writes: Vec<WriteRequest>,
) -> Result<(), StoreError> {
    for attempt in 1..=UNPROCESSED_ATTEMPTS {
        let out = client
            .batch_write_item()
            .request_items(table, writes)
            .send()
            .await
            .map_err(classify)?;
        writes = out
            .unprocessed_items()
            .and_then(|u| u.get(table))
            .cloned()
            .unwrap_or_default();
        if writes.is_empty() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(25 << attempt)).await;
    }
    Err(StoreError::transient(format!(
        "{} items still unprocessed after {UNPROCESSED_ATTEMPTS} BatchWriteItem attempts",
        writes.len()
    )))
}

/// The rule set stored in the config table (item `rules#fraud-scorer`, attribute `body`).
#[derive(Clone, Debug)]
pub struct DynamoRuleSource {
    client: Client,
    table: String,
}

impl DynamoRuleSource {
    /// Rules in `table`.
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    /// Stores a rule set (the way to change rules without a redeploy): the live one, or
    /// with `shadow` the one run beside it and never acted on.
    pub async fn store(&self, rules: &RuleSet, shadow: bool) -> Result<(), StoreError> {
        self.client
            .put_item()
            .table_name(&self.table)
            .item(CONFIG_KEY, AttributeValue::S(config_id(shadow).to_owned()))
            .item("body", AttributeValue::S(rules.to_json().to_owned()))
            .item("version", AttributeValue::S(rules.version.clone()))
            .item("hash", AttributeValue::S(rules.hash.clone()))
            .item(
                "published_at_ms",
                AttributeValue::N(
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis())
                        .to_string(),
                ),
            )
            .send()
            .await
            .map_err(classify)?;
        Ok(())
    }

    /// Removes the shadow rule set; true when there was one.
    pub async fn clear_shadow(&self) -> Result<bool, StoreError> {
        let out = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key(
                CONFIG_KEY,
                AttributeValue::S(SHADOW_RULES_CONFIG_ID.to_owned()),
            )
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllOld)
            .send()
            .await
            .map_err(classify)?;
        Ok(out.attributes().is_some_and(|a| !a.is_empty()))
    }

    /// The stored JSON of the live or shadow rule set, as stored (not checked).
    pub async fn stored_json(&self, shadow: bool) -> Result<Option<String>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(CONFIG_KEY, AttributeValue::S(config_id(shadow).to_owned()))
            .consistent_read(true)
            .send()
            .await
            .map_err(classify)?;
        Ok(out
            .item()
            .and_then(|i| i.get("body"))
            .and_then(|b| b.as_s().ok())
            .cloned())
    }

    async fn load(&self, shadow: bool) -> Result<Option<RuleSet>, StoreError> {
        let Some(body) = self.stored_json(shadow).await? else {
            return Ok(None);
        };
        RuleSet::from_json(&body).map(Some).map_err(fatal)
    }
}

/// Config item of the shadow rule set.
pub const SHADOW_RULES_CONFIG_ID: &str = "rules#fraud-scorer#shadow";

fn config_id(shadow: bool) -> &'static str {
    if shadow {
        SHADOW_RULES_CONFIG_ID
    } else {
        RULES_CONFIG_ID
    }
}

impl RuleSource for DynamoRuleSource {
    async fn load_rules(&self) -> Result<Option<RuleSet>, StoreError> {
        self.load(false).await
    }

    async fn load_shadow_rules(&self) -> Result<Option<RuleSet>, StoreError> {
        self.load(true).await
    }
}

/// Partition key of shard progress items in the windows table.
pub const PROGRESS_PK: &str = "progress";

/// Window partials and shard progress in DynamoDB (table keys `pk`, `sk`).
#[derive(Clone, Debug)]
pub struct DynamoWindowStore {
    client: Client,
    table: String,
}

impl DynamoWindowStore {
    /// Windows in `table`.
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    /// Every shard's partial of windows of `pk` whose start lies in `[from_ms, to_ms)`.
    pub async fn query_range(
        &self,
        pk: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<WindowPartial>, StoreError> {
        let mut out = Vec::new();
        let mut start_key = None;
        loop {
            let resp = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk AND sk BETWEEN :a AND :b")
                .expression_attribute_values(":pk", AttributeValue::S(pk.to_owned()))
                .expression_attribute_values(":a", AttributeValue::S(format!("{from_ms:013}#")))
                .expression_attribute_values(
                    ":b",
                    AttributeValue::S(format!("{:013}#", to_ms - 1) + "~"),
                )
                .set_exclusive_start_key(start_key)
                .send()
                .await
                .map_err(classify)?;
            out.extend(
                serde_dynamo::from_items::<_, WindowPartial>(resp.items().to_vec())
                    .map_err(fatal)?,
            );
            start_key = resp.last_evaluated_key().cloned();
            if start_key.is_none() {
                return Ok(out);
            }
        }
    }
}

impl WindowStore for DynamoWindowStore {
    async fn get_partials(
        &self,
        keys: &[PartialKey],
    ) -> Result<BatchReadKeys<WindowPartial>, StoreError> {
        let ks = keys
            .iter()
            .map(|(pk, sk)| {
                HashMap::from([
                    ("pk".to_owned(), AttributeValue::S(pk.clone())),
                    ("sk".to_owned(), AttributeValue::S(sk.clone())),
                ])
            })
            .collect();
        let (found, unprocessed) = batch_get(&self.client, &self.table, ks).await?;
        let unprocessed = unprocessed
            .iter()
            .filter_map(|k| Some((key_str(k, "pk")?, key_str(k, "sk")?)))
            .collect();
        Ok(BatchReadKeys { found, unprocessed })
    }

    async fn put_partial(
        &self,
        partial: &WindowPartial,
        expected: Option<u64>,
    ) -> Result<Put, StoreError> {
        versioned_put(&self.client, &self.table, partial, "pk", expected).await
    }

    async fn get_progress(&self, shard: &str) -> Result<Option<ShardProgress>, StoreError> {
        self.get_at(PROGRESS_PK, shard).await
    }

    async fn put_progress(&self, shard: &str, progress: &ShardProgress) -> Result<(), StoreError> {
        self.put_at(PROGRESS_PK, shard, progress).await
    }

    async fn window_partials(&self, window: &WindowId) -> Result<Vec<WindowPartial>, StoreError> {
        self.query_range(&window.pk(), window.start_ms, window.start_ms + 1)
            .await
    }

    async fn get_claims(
        &self,
        keys: &[ClaimKey],
    ) -> Result<Vec<(ClaimKey, ClaimItem)>, StoreError> {
        let by_key: HashMap<(String, String), &ClaimKey> =
            keys.iter().map(|k| ((k.pk(), k.sk()), k)).collect();
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(MAX_BATCH_GET) {
            let mut pending: Vec<HashMap<String, AttributeValue>> = chunk
                .iter()
                .map(|k| {
                    HashMap::from([
                        ("pk".to_owned(), AttributeValue::S(k.pk())),
                        ("sk".to_owned(), AttributeValue::S(k.sk())),
                    ])
                })
                .collect();
            let mut attempt = 0;
            while !pending.is_empty() {
                attempt += 1;
                if attempt > UNPROCESSED_ATTEMPTS {
                    return Err(StoreError::transient(format!(
                        "{} claim items still unprocessed after {UNPROCESSED_ATTEMPTS} BatchGetItem attempts",
                        pending.len()
                    )));
                }
                if attempt > 1 {
                    tokio::time::sleep(Duration::from_millis(25 << attempt)).await;
                }
                let (found, unprocessed) =
                    batch_get::<ClaimItem>(&self.client, &self.table, pending).await?;
                for item in found {
                    if let Some(k) = by_key.get(&(item.pk.clone(), item.sk.clone())) {
                        out.push(((*k).clone(), item));
                    }
                }
                pending = unprocessed;
            }
        }
        Ok(out)
    }

    async fn put_claims(&self, items: &[ClaimItem]) -> Result<(), StoreError> {
        for chunk in items.chunks(MAX_BATCH_WRITE) {
            let mut writes = Vec::with_capacity(chunk.len());
            for item in chunk {
                writes.push(
                    WriteRequest::builder()
                        .put_request(
                            PutRequest::builder()
                                .set_item(Some(serde_dynamo::to_item(item).map_err(fatal)?))
                                .build()
                                .map_err(fatal)?,
                        )
                        .build(),
                );
            }
            batch_write(&self.client, &self.table, writes).await?;
        }
        Ok(())
    }

    async fn get_lineage(&self, shard: &str) -> Result<Option<Lineage>, StoreError> {
        self.get_at(LINEAGE_PK, shard).await
    }

    async fn put_lineage(&self, shard: &str, lineage: &Lineage) -> Result<(), StoreError> {
        self.put_at(LINEAGE_PK, shard, lineage).await
    }
}

impl DynamoWindowStore {
    /// A per-shard bookkeeping item (`pk` = its kind, `sk` = the shard), strongly
    /// consistent.
    async fn get_at<T: serde::de::DeserializeOwned>(
        &self,
        pk: &str,
        sk: &str,
    ) -> Result<Option<T>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", AttributeValue::S(pk.to_owned()))
            .key("sk", AttributeValue::S(sk.to_owned()))
            .consistent_read(true)
            .send()
            .await
            .map_err(classify)?;
        out.item()
            .map(|i| serde_dynamo::from_item(i.clone()))
            .transpose()
            .map_err(fatal)
    }

    /// Writes a per-shard bookkeeping item under (`pk`, `sk`).
    async fn put_at<T: serde::Serialize>(
        &self,
        pk: &str,
        sk: &str,
        value: &T,
    ) -> Result<(), StoreError> {
        let mut item: HashMap<String, AttributeValue> =
            serde_dynamo::to_item(value).map_err(fatal)?;
        item.insert("pk".into(), AttributeValue::S(pk.to_owned()));
        item.insert("sk".into(), AttributeValue::S(sk.to_owned()));
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map_err(classify)?;
        Ok(())
    }
}

/// Partition key of shard lineage items in the windows table.
pub const LINEAGE_PK: &str = "lineage";

/// True for an item of the windows table that is a window partial: not a shard's
/// progress, lineage or event-id claims, which share the table.
pub fn is_window_partial(item: &HashMap<String, AttributeValue>) -> bool {
    item.get("pk")
        .and_then(|p| p.as_s().ok())
        .is_some_and(|pk| pk != PROGRESS_PK && pk != LINEAGE_PK && !pk.starts_with("claims#"))
}
