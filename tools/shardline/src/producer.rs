//! Putting generated records on a Kinesis stream: PutRecords in batches of up to 500
//! records / 5 MB, failed records retried with backoff, an optional rate limit, and
//! optional KPL aggregation (user records grouped by the shard their key hashes to, as
//! the KPL does, so per-key order and placement are kept).
//! Limits: <https://docs.aws.amazon.com/kinesis/latest/APIReference/API_PutRecords.html>.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use indicatif::{ProgressBar, ProgressStyle};
use md5::{Digest, Md5};
use shardline_core::kpl::{UserRecord, aggregate};

use crate::traffic::GenRecord;

const MAX_RECORDS: usize = 500;
const MAX_BYTES: usize = 5 * 1024 * 1024;
/// KPL aggregates stay well under the 1 MB record limit.
const MAX_AGGREGATE_BYTES: usize = 50 * 1024;
const MAX_ATTEMPTS: u32 = 10;

/// How to put.
#[derive(Clone, Debug, Default)]
pub struct PutOptions {
    /// Records per second, 0 for unlimited.
    pub rate: u64,
    /// KPL-aggregate user records.
    pub kpl: bool,
    /// Show a progress bar (only drawn on a terminal).
    pub progress: bool,
}

/// Puts every record, in order, returning how many Kinesis records were written.
pub async fn put_all(
    k: &aws_sdk_kinesis::Client,
    stream: &str,
    records: &[GenRecord],
    opts: &PutOptions,
) -> anyhow::Result<usize> {
    let entries = if opts.kpl {
        aggregated(k, stream, records).await?
    } else {
        records
            .iter()
            .map(|r| (r.partition_key.clone(), r.data.clone()))
            .collect()
    };
    let bar = if opts.progress {
        ProgressBar::new(records.len() as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} put {pos}/{len} records  {per_sec}  {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let started = Instant::now();
    let per_entry = records.len() as f64 / entries.len().max(1) as f64;
    let mut sent = 0usize;
    let mut i = 0;
    while i < entries.len() {
        let mut end = i;
        let mut bytes = 0;
        while end < entries.len()
            && end - i < MAX_RECORDS
            && bytes + entries[end].1.len() + entries[end].0.len() <= MAX_BYTES
        {
            bytes += entries[end].1.len() + entries[end].0.len();
            end += 1;
        }
        put_batch(k, stream, &entries[i..end]).await?;
        sent += end - i;
        bar.set_position(((sent as f64) * per_entry) as u64);
        if opts.rate > 0 {
            // Pace to the rate in user records per second.
            let due = Duration::from_secs_f64(sent as f64 * per_entry / opts.rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
        i = end;
    }
    bar.finish_and_clear();
    Ok(entries.len())
}

/// One PutRecords, re-sending the records it rejects (throttling) with backoff. Order per
/// key is kept because a rejected record and everything after it is re-sent together.
async fn put_batch(
    k: &aws_sdk_kinesis::Client,
    stream: &str,
    batch: &[(String, Vec<u8>)],
) -> anyhow::Result<()> {
    let mut pending: Vec<&(String, Vec<u8>)> = batch.iter().collect();
    for attempt in 0..MAX_ATTEMPTS {
        let entries: Vec<PutRecordsRequestEntry> = pending
            .iter()
            .map(|(key, data)| {
                PutRecordsRequestEntry::builder()
                    .partition_key(key)
                    .data(Blob::new(data.clone()))
                    .build()
            })
            .collect::<Result<_, _>>()?;
        let out = k
            .put_records()
            .stream_name(stream)
            .set_records(Some(entries))
            .send()
            .await
            .with_context(|| format!("PutRecords to {stream}"))?;
        if out.failed_record_count().unwrap_or(0) == 0 {
            return Ok(());
        }
        let first_failed = out
            .records()
            .iter()
            .position(|r| r.error_code().is_some())
            .unwrap_or(0);
        pending = pending.split_off(first_failed);
        tokio::time::sleep(Duration::from_millis(50 << attempt.min(5))).await;
    }
    bail!(
        "{} records still rejected after {MAX_ATTEMPTS} attempts",
        pending.len()
    )
}

/// Groups consecutive user records by the shard their partition key hashes to and
/// aggregates each group (KPL format).
async fn aggregated(
    k: &aws_sdk_kinesis::Client,
    stream: &str,
    records: &[GenRecord],
) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let shards = k.list_shards().stream_name(stream).send().await?;
    let ranges: Vec<(u128, u128)> = shards
        .shards()
        .iter()
        .filter(|s| {
            s.sequence_number_range()
                .is_some_and(|r| r.ending_sequence_number().is_none())
        })
        .filter_map(|s| {
            let r = s.hash_key_range()?;
            Some((
                r.starting_hash_key().parse().ok()?,
                r.ending_hash_key().parse().ok()?,
            ))
        })
        .collect();
    let shard_of = |key: &str| {
        let h = u128::from_be_bytes(Md5::digest(key.as_bytes()).into());
        ranges
            .iter()
            .position(|(a, b)| (*a..=*b).contains(&h))
            .unwrap_or(0)
    };
    let mut groups: Vec<(usize, Vec<UserRecord>, usize)> = Vec::new();
    let mut out = Vec::new();
    for r in records {
        let s = shard_of(&r.partition_key);
        let fits = groups
            .iter()
            .position(|(gs, _, bytes)| *gs == s && bytes + r.data.len() < MAX_AGGREGATE_BYTES);
        match fits {
            Some(i) => {
                groups[i].2 += r.data.len();
                groups[i].1.push(UserRecord {
                    partition_key: r.partition_key.clone(),
                    data: r.data.clone(),
                });
            }
            None => {
                if let Some(i) = groups.iter().position(|(gs, _, _)| *gs == s) {
                    let (_, users, _) = groups.remove(i);
                    out.push((users[0].partition_key.clone(), aggregate(&users)));
                }
                groups.push((
                    s,
                    vec![UserRecord {
                        partition_key: r.partition_key.clone(),
                        data: r.data.clone(),
                    }],
                    r.data.len(),
                ));
            }
        }
    }
    for (_, users, _) in groups {
        out.push((users[0].partition_key.clone(), aggregate(&users)));
    }
    Ok(out)
}
