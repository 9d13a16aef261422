//! `shardline soak`: the whole pipeline under faults, checked against an oracle.
//!
//! Labelled traffic (plain and KPL-aggregated records, producer re-sends seconds to
//! minutes after the original, out-of-order and late events, poison records of every
//! kind, oversized ones included) goes onto a stream of the template's resources in the
//! emulators. Both functions consume it through `shardline run` child processes with
//! faults injected into every SDK call (`SHARDLINE_FAULTS`: throttles, 5xx, timeouts and
//! lost responses) and invocations crashing part way (`SHARDLINE_CRASH`); the stream is
//! resharded while the first runner works, and that runner is killed with SIGKILL, then
//! a new one finishes the stream.
//!
//! The oracle is computed from the generated records and what Kinesis says of them
//! (shard, sequence number, arrival time), not from the handlers' code: each card's
//! distinct events, each (key, window)'s count, sum, min, max, approvals and declines
//! over the events that are on time by the shard's watermark, the late events, and the
//! poison records with their reasons. It is compared with DynamoDB and the quarantine
//! queue; the report prints one table and the command exits non-zero on any loss,
//! double count, wrong lateness or missing quarantine entry.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, Shard, ShardIteratorType};
use md5::{Digest, Md5};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use shardline_aws::template::Template;
use shardline_core::kpl::{KPL_MAGIC, UserRecord, aggregate};
use shardline_core::ports::QuarantineEntry;
use shardline_core::window::{KeyKind, MINUTE_MS, WindowId, WindowPartial, key_of, window_start};
use shardline_core::{PoisonReason, Txn};

use crate::runner::{Clients, Stats, list_shards};
use crate::traffic::{GenConfig, generate};

/// Environment variable naming the file `shardline run` writes its counters to.
pub const STATS_ENV: &str = "SHARDLINE_STATS_FILE";

/// A runner's counters, for one function.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RunnerCounts {
    /// Records delivered (first deliveries).
    pub records: u64,
    /// Invocations.
    pub batches: u64,
    /// Retried invocations.
    pub retries: u64,
    /// Batches given up to the OnFailure destination.
    pub on_failure: u64,
    /// Records in those batches.
    pub on_failure_records: u64,
}

/// What a `shardline run` process counted: faults injected into its SDK calls by
/// service and kind (and its requests), crashes of its invocations, and its runners.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ChildStats {
    /// Service to (`requests` or fault kind) to count.
    pub faults: BTreeMap<String, BTreeMap<String, u64>>,
    /// Invocations crashed part way.
    pub crashes: u64,
    /// Function to its runner's counters.
    pub functions: BTreeMap<String, RunnerCounts>,
}

impl ChildStats {
    fn add(&mut self, o: &ChildStats) {
        for (svc, kinds) in &o.faults {
            for (k, n) in kinds {
                *self
                    .faults
                    .entry(svc.clone())
                    .or_default()
                    .entry(k.clone())
                    .or_default() += n;
            }
        }
        self.crashes += o.crashes;
        for (f, c) in &o.functions {
            let e = self.functions.entry(f.clone()).or_default();
            e.records += c.records;
            e.batches += c.batches;
            e.retries += c.retries;
            e.on_failure += c.on_failure;
            e.on_failure_records += c.on_failure_records;
        }
    }

    fn injected(&self, kind: &str) -> u64 {
        self.faults.values().filter_map(|k| k.get(kind)).sum()
    }
}

/// Writes this process's counters to `path` (whole, through a rename).
pub fn write_stats(path: &str, runners: &[(String, Arc<Stats>)]) {
    let counts = shardline_aws::faults::counts();
    let mut faults: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for (svc, kind, n) in counts.iter() {
        faults
            .entry(svc.as_str().to_owned())
            .or_default()
            .insert(kind.as_str().to_owned(), n);
    }
    for svc in shardline_aws::faults::Service::ALL {
        faults
            .entry(svc.as_str().to_owned())
            .or_default()
            .insert("requests".to_owned(), counts.requests(svc));
    }
    let stats = ChildStats {
        faults,
        crashes: crate::invoke::CRASHES.load(Ordering::Relaxed),
        functions: runners
            .iter()
            .map(|(f, s)| {
                (
                    f.clone(),
                    RunnerCounts {
                        records: s.records.load(Ordering::Relaxed),
                        batches: s.batches.load(Ordering::Relaxed),
                        retries: s.retries.load(Ordering::Relaxed),
                        on_failure: s.on_failure.load(Ordering::Relaxed),
                        on_failure_records: s.on_failure_records.load(Ordering::Relaxed),
                    },
                )
            })
            .collect(),
    };
    let tmp = format!("{path}.tmp");
    if let Ok(json) = serde_json::to_vec(&stats)
        && std::fs::write(&tmp, json).is_ok()
    {
        let _ = std::fs::rename(&tmp, path);
    }
}

/// Soak settings.
#[derive(Clone, Debug)]
pub struct SoakConfig {
    /// Background transactions (scenarios, duplicates and poison come on top).
    pub events: usize,
    /// Seed of the traffic and of the faults.
    pub seed: u64,
    /// Stage of the soak's resources.
    pub stage: String,
    /// Template path.
    pub template: PathBuf,
    /// The `shardline` executable to run the runners with.
    pub exe: PathBuf,
    /// Fault plan (`SHARDLINE_FAULTS` syntax).
    pub faults: String,
    /// Crash plan (`SHARDLINE_CRASH` syntax).
    pub crash: String,
    /// Share of records sent KPL-aggregated.
    pub kpl_share: f64,
    /// Shards at the start (one is split part way).
    pub shards: u32,
    /// The first runner is killed this long after it starts.
    pub kill_after: Duration,
    /// Where the runners' logs and counters go.
    pub work_dir: PathBuf,
}

impl SoakConfig {
    /// Defaults for `events` events, with every fault kind on.
    pub fn new(events: usize, exe: PathBuf, work_dir: PathBuf) -> Self {
        let seed = 7;
        Self {
            events,
            seed,
            stage: format!("soak{}", crate::common::now_ms() % 1_000_000_000),
            template: PathBuf::from("template.yaml"),
            exe,
            faults: format!(
                "seed={seed},timeout_ms=200,all.throttle=0.02,all.5xx=0.01,all.timeout=0.005,all.lost_response=0.01"
            ),
            crash: format!("rate=0.03,every=4,seed={seed},max_ms=400"),
            kpl_share: 0.2,
            shards: 2,
            kill_after: Duration::from_secs(8),
            work_dir,
        }
    }
}

/// The outcome: counts by row of the table.
#[derive(Clone, Debug, Default)]
pub struct SoakReport {
    /// (row, value) in print order.
    pub rows: Vec<(String, String)>,
    /// Problems found (each a line).
    pub problems: Vec<String>,
}

impl SoakReport {
    fn row(&mut self, k: &str, v: impl std::fmt::Display) {
        self.rows.push((k.to_owned(), v.to_string()));
    }

    /// True when nothing was lost, doubled, wrongly late or missing from the quarantine.
    pub fn clean(&self) -> bool {
        self.problems.is_empty()
    }

    /// The table, then the problems.
    pub fn print(&self) {
        let w = self.rows.iter().map(|(k, _)| k.len()).max().unwrap_or(10);
        println!("\n{:<w$}  value", "soak");
        for (k, v) in &self.rows {
            println!("{k:<w$}  {v}");
        }
        if self.problems.is_empty() {
            println!(
                "\nOK: 0 lost, 0 double-counted, 0 wrongly late, every poison record quarantined with its reason."
            );
        } else {
            println!("\nPROBLEMS ({}):", self.problems.len());
            for p in self.problems.iter().take(40) {
                println!("  {p}");
            }
        }
    }
}

/// What a generated record should become.
#[derive(Clone, Debug)]
enum Expect {
    /// A valid event.
    Valid(Box<Txn>),
    /// A poison record; the reason's kind when the soak made it for that reason.
    Poison(Option<&'static str>),
}

/// One record as the soak sends it.
#[derive(Clone, Debug)]
struct SoakRecord {
    key: String,
    data: Vec<u8>,
    expect: Expect,
    /// Sent as a Kinesis record of its own, never inside a KPL aggregate (it is one).
    raw: bool,
}

/// Where a record landed: shard, sequence number, sub-sequence number.
type Pos = (String, String, u32);

/// A Kinesis record to put: its partition key, its data, and the soak records it
/// carries with their sub-sequence numbers (one, or a KPL aggregate's).
type Entry = (String, Vec<u8>, Vec<(usize, u32)>);

/// Runs the soak and returns its report.
pub async fn soak(cfg: &SoakConfig) -> anyhow::Result<SoakReport> {
    crate::common::check_endpoint()?;
    std::fs::create_dir_all(&cfg.work_dir)?;
    let started = Instant::now();
    let sdk = shardline_aws::sdk::load_sdk_config_without_faults().await;
    let clients = Clients::new(&sdk);
    let mut t = Template::load(&cfg.template)?;
    let params = [
        ("Stage", cfg.stage.clone()),
        ("StreamMode", "PROVISIONED".to_owned()),
        ("ShardCount", cfg.shards.to_string()),
    ];
    for (k, v) in &params {
        t.set_param(k, v)?;
    }
    shardline_aws::bootstrap::bootstrap(&sdk, &mut t)
        .await
        .context("bootstrap (are the emulators up?)")?;
    let stream = t.physical()["InputStream"].reference.clone();
    println!(
        "soak: stage {}, {} events, faults {:?}, crashes {:?}",
        cfg.stage, cfg.events, cfg.faults, cfg.crash
    );

    let records = traffic(cfg);
    let half = records.len() / 2;
    let mut placed: HashMap<usize, Pos> = HashMap::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed ^ 0x5eed);

    // First half, then the first runner; while it works, a reshard and the second half;
    // then the runner is killed and a second one finishes the stream.
    put(
        &clients,
        &stream,
        &records,
        0..half,
        cfg.kpl_share,
        &mut rng,
        &mut placed,
    )
    .await?;
    let stats_a = cfg.work_dir.join("runner-a.json");
    let stats_b = cfg.work_dir.join("runner-b.json");
    let _ = std::fs::remove_file(&stats_a);
    let _ = std::fs::remove_file(&stats_b);
    let mut a = spawn_runner(cfg, &params, &stats_a, false, "runner-a.log")?;
    let runner_started = Instant::now();
    tokio::time::sleep(cfg.kill_after / 3).await;
    reshard(&clients, &stream).await?;
    put(
        &clients,
        &stream,
        &records,
        half..records.len(),
        cfg.kpl_share,
        &mut rng,
        &mut placed,
    )
    .await?;
    if let Some(left) = cfg.kill_after.checked_sub(runner_started.elapsed()) {
        tokio::time::sleep(left).await;
    }
    let killed_at = runner_started.elapsed();
    a.kill().context("killing the first runner")?;
    let _ = a.wait();
    let mut b = spawn_runner(cfg, &params, &stats_b, true, "runner-b.log")?;
    let status = tokio::task::spawn_blocking(move || b.wait()).await??;
    if !status.success() {
        bail!(
            "the second runner failed ({status}); see {}",
            cfg.work_dir.join("runner-b.log").display()
        );
    }

    let mut counts = ChildStats::default();
    for f in [&stats_a, &stats_b] {
        if let Ok(bytes) = std::fs::read(f) {
            counts.add(&serde_json::from_slice(&bytes).unwrap_or_default());
        }
    }
    let mut report = SoakReport::default();
    check(&clients, &t, &stream, &records, &placed, &mut report).await?;
    let mut rows = vec![
        ("records sent".to_owned(), records.len().to_string()),
        (
            "  valid events (distinct)".to_owned(),
            records
                .iter()
                .filter(|r| matches!(r.expect, Expect::Valid(_)))
                .map(|r| match &r.expect {
                    Expect::Valid(t) => t.event_id.clone(),
                    Expect::Poison(_) => String::new(),
                })
                .collect::<HashSet<_>>()
                .len()
                .to_string(),
        ),
        (
            "  KPL user records".to_owned(),
            placed.values().filter(|p| p.2 > 0).count().to_string(),
        ),
    ];
    for kind in ["throttle", "5xx", "timeout", "lost_response"] {
        rows.push((
            format!("faults injected: {kind}"),
            counts.injected(kind).to_string(),
        ));
    }
    let requests: u64 = counts
        .faults
        .values()
        .filter_map(|k| k.get("requests"))
        .sum();
    rows.push((
        "SDK requests (runners and functions)".to_owned(),
        requests.to_string(),
    ));
    rows.push((
        "invocations crashed part way".to_owned(),
        counts.crashes.to_string(),
    ));
    let fns = &counts.functions;
    rows.push((
        "invocations / retried".to_owned(),
        format!(
            "{} / {}",
            fns.values().map(|c| c.batches).sum::<u64>(),
            fns.values().map(|c| c.retries).sum::<u64>()
        ),
    ));
    let gave_up: u64 = fns.values().map(|c| c.on_failure).sum();
    rows.push((
        "batches given up (OnFailure)".to_owned(),
        gave_up.to_string(),
    ));
    rows.push(("reshards (shard splits)".to_owned(), "1".to_owned()));
    rows.push((
        "runner kills (SIGKILL)".to_owned(),
        format!("1, after {:.1} s", killed_at.as_secs_f64()),
    ));
    rows.append(&mut report.rows);
    rows.push((
        "elapsed".to_owned(),
        format!("{:.0} s", started.elapsed().as_secs_f64()),
    ));
    report.rows = rows;
    if gave_up > 0 {
        report
            .problems
            .push(format!("{gave_up} batches went to the OnFailure queue"));
    }
    if counts.crashes == 0 || counts.injected("lost_response") == 0 {
        report.problems.push(
            "the run injected no crash or no lost response: too small to show anything".into(),
        );
    }
    Ok(report)
}

/// Labelled traffic, re-sends moved seconds to minutes later, and poison of every kind.
fn traffic(cfg: &SoakConfig) -> Vec<SoakRecord> {
    let now = crate::common::now_ms();
    let g = generate(&GenConfig {
        seed: cfg.seed,
        events: cfg.events,
        cards: (cfg.events / 4).max(50),
        merchants: (cfg.events / 50).max(20),
        end_ms: now - 30_000,
        span_ms: 20 * MINUTE_MS,
        scenarios_each: 1 + cfg.events / 5_000,
        malformed: 0.01,
        unknown_schema: 0.005,
        duplicates: 0.03,
        out_of_order: 0.03,
        very_late: 0.004,
        ..GenConfig::default()
    });
    let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed);
    // (sort key, record): a re-send goes 50 to 1,500 records after its original, which
    // at this traffic's rate is seconds to minutes of event time.
    let mut keyed: Vec<(f64, SoakRecord)> = g
        .records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let at = if r.duplicate {
                i as f64 + rng.random_range(50.0..1_500.0)
            } else {
                i as f64
            };
            let expect = match &r.txn {
                Some(t) => Expect::Valid(Box::new(t.clone())),
                None => Expect::Poison(None),
            };
            (
                at,
                SoakRecord {
                    key: r.partition_key.clone(),
                    data: r.data.clone(),
                    expect,
                    raw: false,
                },
            )
        })
        .collect();
    let valid: Vec<Txn> = g.distinct_events().into_iter().cloned().collect();
    let n = keyed.len() as f64;
    let each = (cfg.events / 1_000).max(2);
    for k in 0..each {
        let base = valid[rng.random_range(0..valid.len())].clone();
        let mut json: serde_json::Value = serde_json::from_str(&base.to_json()).unwrap_or_default();
        let mut poison = |v: serde_json::Value, key: &str, why: &'static str| {
            (
                rng.random_range(0.0..n),
                SoakRecord {
                    key: key.to_owned(),
                    data: serde_json::to_vec(&v).unwrap_or_default(),
                    expect: Expect::Poison(Some(why)),
                    raw: false,
                },
            )
        };
        let mut v = json.clone();
        v["event_id"] = format!("soak-big-{k}").into();
        v["padding"] = "x".repeat(20_000).into();
        keyed.push(poison(v, &base.card_token, "too_large"));
        let mut v = json.clone();
        v["event_id"] = format!("soak-pan-{k}").into();
        v["card_token"] = "4111111111111111".into();
        keyed.push(poison(v, "4111111111111111", "clear_card_number"));
        let mut v = json.clone();
        v["event_id"] = format!("soak-future-{k}").into();
        v["event_time"] = shardline_core::event::format_rfc3339_ms(now + 2 * 3_600_000).into();
        keyed.push(poison(v, &base.card_token, "future_event_time"));
        json["event_id"] = format!("soak-ccy-{k}").into();
        json["currency"] = "ZZZ".into();
        keyed.push(poison(json, &base.card_token, "unknown_currency"));
        // A corrupt aggregate (magic, garbage, wrong digest) and one over the limits.
        let mut corrupt = KPL_MAGIC.to_vec();
        corrupt.extend((0..48).map(|_| rng.random::<u8>()));
        let over = aggregate(
            &(0..5_001)
                .map(|i| UserRecord {
                    partition_key: base.card_token.clone(),
                    data: vec![b'{', (i % 10) as u8 + b'0', b'}'],
                })
                .collect::<Vec<_>>(),
        );
        for (data, why) in [(corrupt, "kpl"), (over, "kpl_over_limit")] {
            keyed.push((
                rng.random_range(0.0..n),
                SoakRecord {
                    key: base.card_token.clone(),
                    data,
                    expect: Expect::Poison(Some(why)),
                    raw: true,
                },
            ));
        }
    }
    keyed.sort_by(|a, b| a.0.total_cmp(&b.0));
    keyed.into_iter().map(|(_, r)| r).collect()
}

/// The open shard a partition key goes to: the MD5 of the key as a 128-bit number, in
/// the shard's hash key range.
fn shard_for(shards: &[(u128, u128, String)], key: &str) -> String {
    let h = u128::from_be_bytes(Md5::digest(key.as_bytes()).into());
    shards
        .iter()
        .find(|(lo, hi, _)| (*lo..=*hi).contains(&h))
        .map(|(_, _, id)| id.clone())
        .unwrap_or_default()
}

/// Puts `range` of the records: in segments of 50, a `kpl_share` of the segments as KPL
/// aggregates of up to 6 user records bound for one shard (keyed by the first user
/// record's key, as the KPL does). Notes where each record landed.
async fn put(
    clients: &Clients,
    stream: &str,
    records: &[SoakRecord],
    range: std::ops::Range<usize>,
    kpl_share: f64,
    rng: &mut rand::rngs::StdRng,
    placed: &mut HashMap<usize, Pos>,
) -> anyhow::Result<()> {
    let open: Vec<(u128, u128, String)> = list_shards(&clients.kinesis, stream)
        .await?
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
                s.shard_id().to_owned(),
            ))
        })
        .collect();
    let mut entries: Vec<Entry> = Vec::new();
    let idx: Vec<usize> = range.collect();
    for seg in idx.chunks(50) {
        if rng.random::<f64>() >= kpl_share {
            entries.extend(seg.iter().map(|&i| {
                (
                    records[i].key.clone(),
                    records[i].data.clone(),
                    vec![(i, 0)],
                )
            }));
            continue;
        }
        let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        let flush = |g: Vec<usize>, entries: &mut Vec<Entry>| {
            if g.is_empty() {
                return;
            }
            let users: Vec<UserRecord> = g
                .iter()
                .map(|&i| UserRecord {
                    partition_key: records[i].key.clone(),
                    data: records[i].data.clone(),
                })
                .collect();
            let members = g
                .iter()
                .enumerate()
                .map(|(sub, &i)| (i, sub as u32))
                .collect();
            entries.push((records[g[0]].key.clone(), aggregate(&users), members));
        };
        for &i in seg {
            if records[i].raw {
                entries.push((
                    records[i].key.clone(),
                    records[i].data.clone(),
                    vec![(i, 0)],
                ));
                continue;
            }
            let shard = shard_for(&open, &records[i].key);
            let g = groups.entry(shard).or_default();
            g.push(i);
            if g.len() >= 6 {
                let full = std::mem::take(g);
                flush(full, &mut entries);
            }
        }
        for (_, g) in std::mem::take(&mut groups) {
            flush(g, &mut entries);
        }
    }
    // PutRecords, 500 entries or 4 MB a call, failed entries re-sent (bounded).
    let mut pending: Vec<usize> = (0..entries.len()).collect();
    let started = Instant::now();
    let mut done = 0usize;
    let mut shown = 0usize;
    for attempt in 0..20 {
        if pending.is_empty() {
            break;
        }
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
        }
        let mut failed = Vec::new();
        let mut start = 0;
        while start < pending.len() {
            let mut end = start;
            let mut bytes = 0;
            while end < pending.len() && end - start < 500 && bytes < 4_000_000 {
                bytes += entries[pending[end]].1.len() + 256;
                end += 1;
            }
            let batch = &pending[start..end];
            let reqs: Vec<PutRecordsRequestEntry> = batch
                .iter()
                .map(|&e| {
                    PutRecordsRequestEntry::builder()
                        .partition_key(&entries[e].0)
                        .data(Blob::new(entries[e].1.clone()))
                        .build()
                })
                .collect::<Result<_, _>>()?;
            let out = clients
                .kinesis
                .put_records()
                .stream_name(stream)
                .set_records(Some(reqs))
                .send()
                .await
                .context("PutRecords")?;
            for (&e, r) in batch.iter().zip(out.records()) {
                match (r.shard_id(), r.sequence_number()) {
                    (Some(shard), Some(seq)) if r.error_code().is_none() => {
                        for &(i, sub) in &entries[e].2 {
                            placed.insert(i, (shard.to_owned(), seq.to_owned(), sub));
                        }
                        done += 1;
                    }
                    _ => failed.push(e),
                }
            }
            start = end;
            if done >= shown + 10_000 {
                shown = done;
                eprintln!(
                    "soak: put {done} of {} Kinesis records ({:.0} s)",
                    entries.len(),
                    started.elapsed().as_secs_f64()
                );
            }
        }
        pending = failed;
    }
    if !pending.is_empty() {
        bail!("{} records could not be put", pending.len());
    }
    Ok(())
}

/// Splits the first open shard at the middle of its hash range and waits until the
/// stream is active again.
async fn reshard(clients: &Clients, stream: &str) -> anyhow::Result<()> {
    let shards = list_shards(&clients.kinesis, stream).await?;
    let s = shards
        .iter()
        .find(|s| {
            s.sequence_number_range()
                .is_some_and(|r| r.ending_sequence_number().is_none())
        })
        .context("no open shard")?;
    let r = s.hash_key_range().context("shard without a hash range")?;
    let (lo, hi): (u128, u128) = (r.starting_hash_key().parse()?, r.ending_hash_key().parse()?);
    clients
        .kinesis
        .split_shard()
        .stream_name(stream)
        .shard_to_split(s.shard_id())
        .new_starting_hash_key((lo + (hi - lo) / 2).to_string())
        .send()
        .await
        .context("SplitShard")?;
    for _ in 0..100 {
        let d = clients
            .kinesis
            .describe_stream_summary()
            .stream_name(stream)
            .send()
            .await?;
        if d.stream_description_summary()
            .map(|s| s.stream_status().as_str())
            == Some("ACTIVE")
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the stream did not become active after the split")
}

fn spawn_runner(
    cfg: &SoakConfig,
    params: &[(&str, String)],
    stats: &std::path::Path,
    until_idle: bool,
    log: &str,
) -> anyhow::Result<std::process::Child> {
    let mut cmd = std::process::Command::new(&cfg.exe);
    cmd.arg("run")
        .arg("--template")
        .arg(&cfg.template)
        .arg("--max-duration")
        .arg("90m");
    for (k, v) in params {
        cmd.arg("--param").arg(format!("{k}={v}"));
    }
    if until_idle {
        cmd.arg("--until-idle");
    }
    let log = std::fs::File::create(cfg.work_dir.join(log))?;
    cmd.env(shardline_aws::faults::FAULTS_ENV, &cfg.faults)
        .env(crate::invoke::CRASH_ENV, &cfg.crash)
        .env(STATS_ENV, stats)
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    cmd.spawn()
        .with_context(|| format!("starting {} run", cfg.exe.display()))
}

/// Every record of every shard of the stream: (shard, sequence number) to arrival ms.
async fn arrivals(
    clients: &Clients,
    stream: &str,
    shards: &[Shard],
) -> anyhow::Result<HashMap<(String, String), i64>> {
    let mut out = HashMap::new();
    for s in shards {
        let mut it = clients
            .kinesis
            .get_shard_iterator()
            .stream_name(stream)
            .shard_id(s.shard_id())
            .shard_iterator_type(ShardIteratorType::TrimHorizon)
            .send()
            .await?
            .shard_iterator()
            .map(str::to_owned);
        let mut empty = 0;
        for _ in 0..100_000 {
            let Some(i) = it.take() else { break };
            let r = clients
                .kinesis
                .get_records()
                .shard_iterator(i)
                .limit(10_000)
                .send()
                .await?;
            for rec in r.records() {
                let ms = rec
                    .approximate_arrival_timestamp()
                    .and_then(|t| t.to_millis().ok())
                    .unwrap_or_default();
                out.insert(
                    (s.shard_id().to_owned(), rec.sequence_number().to_owned()),
                    ms,
                );
            }
            empty = if r.records().is_empty() { empty + 1 } else { 0 };
            if empty >= 2 && r.millis_behind_latest().unwrap_or(0) == 0 {
                break;
            }
            it = r.next_shard_iterator().map(str::to_owned);
        }
    }
    Ok(out)
}

/// Compares DynamoDB and the quarantine with the oracle.
async fn check(
    clients: &Clients,
    t: &Template,
    stream: &str,
    records: &[SoakRecord],
    placed: &HashMap<usize, Pos>,
    report: &mut SoakReport,
) -> anyhow::Result<()> {
    let shards = list_shards(&clients.kinesis, stream).await?;
    let arrival = arrivals(clients, stream, &shards).await?;
    let agg_env = t
        .functions()
        .into_iter()
        .find(|f| f.binary == "window-aggregator")
        .map(|f| f.environment)
        .unwrap_or_default();
    let lateness_ms = agg_env
        .get("ALLOWED_LATENESS_SECONDS")
        .and_then(|v| v.parse::<i64>().ok())
        .unwrap_or(120)
        * 1000;
    let widths = shardline_core::window::WindowConfig::default().widths;

    // Shards in processing order: parents before children.
    let mut order: Vec<String> = Vec::new();
    let mut left: Vec<&Shard> = shards.iter().collect();
    while !left.is_empty() {
        let before = left.len();
        left.retain(|s| {
            let ready = [s.parent_shard_id(), s.adjacent_parent_shard_id()]
                .into_iter()
                .flatten()
                .all(|p| order.iter().any(|o| o == p) || !shards.iter().any(|x| x.shard_id() == p));
            if ready {
                order.push(s.shard_id().to_owned());
            }
            !ready
        });
        if left.len() == before {
            bail!("shard lineage has a cycle");
        }
    }
    let mut by_shard: BTreeMap<String, Vec<(shardline_core::SeqNo, u32, usize)>> = BTreeMap::new();
    for (&i, (shard, seq, sub)) in placed {
        by_shard.entry(shard.clone()).or_default().push((
            shardline_core::SeqNo::parse(seq)?,
            *sub,
            i,
        ));
    }

    // The oracle.
    let mut first: HashSet<(String, i64)> = HashSet::new(); // (event id, minute) claimed
    let mut card_events: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut windows: BTreeMap<WindowId, Agg> = BTreeMap::new();
    let mut late: BTreeSet<Pos> = BTreeSet::new();
    let mut poison: Vec<(Pos, Option<&'static str>)> = Vec::new();
    for shard in &order {
        let mut recs = by_shard.remove(shard).unwrap_or_default();
        recs.sort();
        let mut max_wt: Option<i64> = None;
        for (seq, sub, i) in recs {
            let pos: Pos = (shard.clone(), seq.to_string(), sub);
            match &records[i].expect {
                Expect::Poison(why) => poison.push((pos, *why)),
                Expect::Valid(txn) => {
                    card_events
                        .entry(txn.card_token.clone())
                        .or_default()
                        .insert(txn.event_id.clone());
                    if !first.insert((
                        txn.event_id.clone(),
                        txn.event_time_ms.div_euclid(MINUTE_MS),
                    )) {
                        continue; // a re-send: the first copy counted
                    }
                    let wm = max_wt.map(|m| m - lateness_ms);
                    let mut missed = false;
                    for kind in [KeyKind::Merchant, KeyKind::Global] {
                        for &w in widths.get(&kind).map(Vec::as_slice).unwrap_or(&[]) {
                            let start = window_start(txn.event_time_ms, w);
                            if wm.is_some_and(|wm| start + w <= wm) {
                                missed = true;
                                continue;
                            }
                            windows
                                .entry(WindowId {
                                    key: key_of(kind, txn),
                                    width_ms: w,
                                    start_ms: start,
                                })
                                .or_default()
                                .add(txn);
                        }
                    }
                    if missed {
                        late.insert(pos.clone());
                    }
                    let arr = arrival
                        .get(&(shard.clone(), seq.to_string()))
                        .copied()
                        .unwrap_or_default();
                    let wt = if arr > 0 {
                        txn.event_time_ms.min(arr)
                    } else {
                        txn.event_time_ms
                    };
                    max_wt = Some(max_wt.map_or(wt, |m| m.max(wt)));
                }
            }
        }
    }

    // 1. Card profiles: every distinct event applied once.
    let profiles_table = crate::common::table_name(t, "ProfilesTable")?;
    let mut applied: HashMap<String, u64> = HashMap::new();
    let mut profiles: HashMap<String, shardline_core::fraud::profile::CardProfile> = HashMap::new();
    for item in crate::common::scan_all(&clients.ddb, &profiles_table).await? {
        let p: shardline_core::fraud::profile::CardProfile = serde_dynamo::from_item(item)?;
        applied.insert(p.card_token.clone(), p.txn_count);
        profiles.insert(p.card_token.clone(), p);
    }
    let (mut lost, mut doubled) = (0u64, 0u64);
    for (card, evs) in &card_events {
        let want = evs.len() as u64;
        let got = applied.get(card).copied().unwrap_or(0);
        if got < want {
            lost += want - got;
            report.problems.push(format!(
                "scorer: card {card} has {got} of its {want} events"
            ));
        } else if got > want {
            doubled += got - want;
            report
                .problems
                .push(format!("scorer: card {card} has {got} events, {want} sent"));
        }
        if got != want
            && let Some(p) = profiles.get(card)
        {
            // What the profile holds (its last hour) beside what was sent, to find the
            // event counted twice or missing.
            let held: Vec<(i64, i64)> = p.recent.iter().map(|r| (r.t, r.amt)).collect();
            let sent: Vec<(String, i64, i64, Vec<Pos>)> = records
                .iter()
                .enumerate()
                .filter_map(|(i, r)| match &r.expect {
                    Expect::Valid(t) if t.card_token == *card => Some((
                        t.event_id.clone(),
                        t.event_time_ms,
                        t.amount_minor,
                        placed.get(&i).cloned().into_iter().collect(),
                    )),
                    _ => None,
                })
                .collect();
            report.problems.push(format!(
                "  held (t, amount): {held:?}\n  sent: {sent:?}\n  guards: {:?}",
                p.applied
            ));
        }
    }
    let extra_cards = applied
        .keys()
        .filter(|c| !card_events.contains_key(*c))
        .count();
    if extra_cards > 0 {
        report.problems.push(format!(
            "scorer: {extra_cards} profiles of cards never sent validly"
        ));
    }
    report.row("cards checked", card_events.len());
    report.row("scorer: events lost", lost);
    report.row("scorer: events double-counted", doubled);

    // 2. Windows: every on-time event once in each of its windows.
    let windows_table = crate::common::table_name(t, "WindowsTable")?;
    let mut stored: BTreeMap<WindowId, Agg> = BTreeMap::new();
    for item in crate::common::scan_all(&clients.ddb, &windows_table).await? {
        if !shardline_aws::dynamo::is_window_partial(&item) {
            continue;
        }
        let p: WindowPartial = serde_dynamo::from_item(item)?;
        if p.window.key.starts_with("card:") {
            continue;
        }
        stored
            .entry(p.window.clone())
            .or_default()
            .merge_metrics(&p.metrics);
    }
    let (mut wlost, mut wdoubled, mut wrong) = (0u64, 0u64, 0usize);
    let keys: BTreeSet<&WindowId> = windows.keys().chain(stored.keys()).collect();
    let empty = Agg::default();
    for w in &keys {
        let (e, s) = (
            windows.get(*w).unwrap_or(&empty),
            stored.get(*w).unwrap_or(&empty),
        );
        if s.count < e.count {
            wlost += e.count - s.count;
        } else if s.count > e.count {
            wdoubled += s.count - e.count;
        }
        if e != s {
            wrong += 1;
            report.problems.push(format!(
                "aggregator: {} {}m @{}: expected {e:?}, stored {s:?}",
                w.key,
                w.width_ms / MINUTE_MS,
                w.start_ms
            ));
        }
    }
    report.row("windows checked", keys.len());
    report.row("aggregator: window counts lost", wlost);
    report.row("aggregator: window counts double-counted", wdoubled);
    report.row("aggregator: windows with any metric wrong", wrong);

    // 3. The quarantine: poison (both functions) and late events (the aggregator).
    let queue = t.physical()["QuarantineQueue"].reference.clone();
    let entries = drain(clients, &queue).await?;
    let copies = entries.len();
    let mut by_pos: HashMap<(String, Pos), QuarantineEntry> = HashMap::new();
    for e in entries {
        let pos: Pos = (
            e.shard_id.clone(),
            e.sequence_number.clone(),
            e.sub_sequence_number,
        );
        by_pos.insert((e.function.clone(), pos), e);
    }
    let mut by_reason: BTreeMap<String, usize> = BTreeMap::new();
    for ((f, _), e) in &by_pos {
        *by_reason
            .entry(format!("{f}: {}", reason_kind(&e.reason)))
            .or_default() += 1;
    }
    let (mut missing, mut wrong_reason) = (0usize, 0usize);
    for (pos, why) in &poison {
        for f in ["fraud-scorer", "window-aggregator"] {
            match by_pos.get(&(f.to_owned(), pos.clone())) {
                None => {
                    missing += 1;
                    report.problems.push(format!(
                        "{f}: poison record {pos:?} ({why:?}) not quarantined"
                    ));
                }
                Some(e) => {
                    let kind = reason_kind(&e.reason);
                    if kind == "late_event" || why.is_some_and(|w| w != kind) {
                        wrong_reason += 1;
                        report.problems.push(format!(
                            "{f}: poison record {pos:?} quarantined as {kind}, expected {why:?}"
                        ));
                    }
                }
            }
        }
    }
    let poison_pos: HashSet<&Pos> = poison.iter().map(|(p, _)| p).collect();
    let quarantined_late: BTreeSet<Pos> = by_pos
        .iter()
        .filter(|((f, _), e)| f == "window-aggregator" && reason_kind(&e.reason) == "late_event")
        .map(|((_, p), _)| p.clone())
        .collect();
    let wrongly_late = quarantined_late.difference(&late).count();
    let late_missing = late.difference(&quarantined_late).count();
    for p in quarantined_late.difference(&late).take(10) {
        report.problems.push(format!(
            "aggregator: {p:?} sent to the late output but on time"
        ));
    }
    for p in late.difference(&quarantined_late).take(10) {
        report.problems.push(format!(
            "aggregator: late event {p:?} missing from the late output"
        ));
    }
    let valid_quarantined = by_pos
        .iter()
        .filter(|((_, p), e)| !poison_pos.contains(p) && reason_kind(&e.reason) != "late_event")
        .count();
    if valid_quarantined > 0 {
        report.problems.push(format!(
            "{valid_quarantined} valid records were quarantined as poison"
        ));
    }
    if wrongly_late > 0 || late_missing > 0 {
        report.problems.push(format!(
            "late output: {wrongly_late} wrongly late, {late_missing} late events missing"
        ));
    }
    report.row("late events (oracle)", late.len());
    report.row(
        "late: wrongly late / missing",
        format!("{wrongly_late} / {late_missing}"),
    );
    report.row("poison records sent", poison.len());
    report.row(
        "poison: not quarantined / wrong reason",
        format!("{missing} / {wrong_reason}"),
    );
    report.row("valid records quarantined as poison", valid_quarantined);
    report.row(
        "quarantine messages (copies of one entry)",
        format!("{copies} ({} extra)", copies - by_pos.len()),
    );
    for (r, n) in by_reason {
        report.row(&format!("  quarantined: {r}"), n);
    }
    Ok(())
}

/// The serde tag of a reason (`bad_json`, `late_event`, ...).
fn reason_kind(r: &PoisonReason) -> String {
    serde_json::to_value(r)
        .ok()
        .and_then(|v| v.get("kind").and_then(|k| k.as_str()).map(str::to_owned))
        .unwrap_or_default()
}

/// Every message of the quarantine queue (bounded: stops after three empty receives).
async fn drain(clients: &Clients, queue: &str) -> anyhow::Result<Vec<QuarantineEntry>> {
    let mut out = Vec::new();
    let mut empty = 0;
    for _ in 0..100_000 {
        let r = clients
            .sqs
            .receive_message()
            .queue_url(queue)
            .max_number_of_messages(10)
            .visibility_timeout(3_600)
            .send()
            .await
            .context("reading the quarantine queue")?;
        if r.messages().is_empty() {
            empty += 1;
            if empty >= 3 {
                break;
            }
            continue;
        }
        empty = 0;
        for m in r.messages() {
            out.push(
                serde_json::from_str(m.body().unwrap_or_default())
                    .context("a quarantine message that is not an entry")?,
            );
        }
    }
    Ok(out)
}

/// The exact metrics the oracle checks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Agg {
    count: u64,
    sum: i64,
    min: Option<i64>,
    max: Option<i64>,
    approved: u64,
    declined: u64,
}

impl Agg {
    fn add(&mut self, t: &Txn) {
        self.count += 1;
        self.sum += t.amount_minor;
        self.min = Some(self.min.map_or(t.amount_minor, |m| m.min(t.amount_minor)));
        self.max = Some(self.max.map_or(t.amount_minor, |m| m.max(t.amount_minor)));
        match t.auth_result {
            shardline_core::AuthResult::Approved => self.approved += 1,
            shardline_core::AuthResult::Declined => self.declined += 1,
        }
    }

    fn merge_metrics(&mut self, m: &shardline_core::window::Metrics) {
        self.count += m.count;
        self.approved += m.approved;
        self.declined += m.declined;
        for c in m.currencies.values().filter(|c| c.count > 0) {
            self.sum += c.sum;
            self.min = Some(self.min.map_or(c.min, |x| x.min(c.min)));
            self.max = Some(self.max.map_or(c.max, |x| x.max(c.max)));
        }
    }
}
