//! Shard lineage from Kinesis `ListShards`: which shards a shard was split or merged
//! from (<https://docs.aws.amazon.com/kinesis/latest/APIReference/API_ListShards.html>).
//! The aggregator asks once per shard, at the shard's first batch, to read its
//! ancestors' event-id claims.

use std::collections::HashMap;

use aws_sdk_kinesis::Client;
use futures::future::BoxFuture;
use shardline_core::StoreError;
use shardline_core::ports::ShardParents;
use tokio::sync::Mutex;

use crate::sdk::classify;

/// Parents of the shards of one stream, listed with `ListShards` and cached; a shard
/// not in the cache (created since) lists the stream again.
#[derive(Debug)]
pub struct KinesisShardParents {
    client: Client,
    stream: String,
    cache: Mutex<HashMap<String, Vec<String>>>,
}

impl KinesisShardParents {
    /// Lineage of the shards of `stream` (a name or an ARN).
    pub fn new(client: Client, stream: impl Into<String>) -> Self {
        Self {
            client,
            stream: stream.into(),
            cache: Mutex::new(HashMap::new()),
        }
    }

    async fn list(&self) -> Result<HashMap<String, Vec<String>>, StoreError> {
        let mut out = HashMap::new();
        let mut token: Option<String> = None;
        // Bounded: a stream has at most a few thousand shards, 1,000 a page.
        for _ in 0..100 {
            let req = self.client.list_shards();
            let req = match &token {
                Some(t) => req.next_token(t),
                None if self.stream.starts_with("arn:") => req.stream_arn(&self.stream),
                None => req.stream_name(&self.stream),
            };
            let resp = req.send().await.map_err(classify)?;
            for s in resp.shards() {
                let parents = s
                    .parent_shard_id()
                    .into_iter()
                    .chain(s.adjacent_parent_shard_id())
                    .map(str::to_owned)
                    .collect();
                out.insert(s.shard_id().to_owned(), parents);
            }
            token = resp.next_token().map(str::to_owned);
            if token.is_none() {
                break;
            }
        }
        Ok(out)
    }
}

impl ShardParents for KinesisShardParents {
    fn parents<'a>(&'a self, shard: &'a str) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        Box::pin(async move {
            let mut cache = self.cache.lock().await;
            if !cache.contains_key(shard) {
                *cache = self.list().await?;
            }
            Ok(cache.get(shard).cloned().unwrap_or_default())
        })
    }
}
