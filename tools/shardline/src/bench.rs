//! `shardline bench`: the figures of BENCHMARKS.md in one table, measured in one run on
//! this machine: handler throughput per core against the stock decode floor and the
//! naive handler, DynamoDB requests per 1,000 records (counted by an SDK interceptor
//! against the local emulator), batch latency against a fixed per-request delay, peak
//! memory and cold start of the release function binary, and the arm64 binary sizes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use aws_lambda_events::event::kinesis::KinesisEvent;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use fraud_scorer::{Scorer, ScorerSettings};
use shardline_aws::SqsQuarantine;
use shardline_aws::dynamo::{DynamoAlertSink, DynamoProfileStore, DynamoWindowStore};
use shardline_aws::template::Template;
use shardline_core::batch::Item;
use shardline_core::event::{DecodeLimits, decode_txn};
use shardline_core::ports::{NoAlertStream, NoRuleSource};
use shardline_core::window::{KeyKind, WindowConfig, WindowPartial, apply_to_partial, plan};
use shardline_core::{InRecord, Txn};
use shardline_testkit::{MemAlerts, MemProfiles, MemQuarantine, MemWindows};
use window_aggregator::{Aggregator, AggregatorSettings};

use crate::baseline::NaiveScorer;
use crate::traffic::{GenConfig, fixture_event, generate};

/// Lambda's synchronous payload limit.
const SIX_MB: usize = 6 * 1024 * 1024;

/// A benchmark input: one Lambda Kinesis event and what it holds.
pub struct Batch {
    /// The event, as Lambda sends it.
    pub json: Vec<u8>,
    /// User records in it.
    pub records: usize,
}

/// A batch of `n` records of realistic traffic (fixed seed, heavy-tailed cards and
/// merchants), or as many as fit in 6 MB when `n` is `None`.
pub fn batch(n: Option<usize>, kpl: bool) -> Batch {
    let g = generate(&GenConfig {
        seed: 42,
        events: 12_000,
        cards: 20_000,
        merchants: 2_000,
        end_ms: 1_795_000_000_000,
        span_ms: 15 * 60_000,
        malformed: 0.0,
        unknown_schema: 0.0,
        duplicates: 0.0,
        ..GenConfig::default()
    });
    let recs: Vec<_> = g.records.into_iter().filter(|r| r.txn.is_some()).collect();
    let mut take = n.unwrap_or(recs.len()).min(recs.len());
    loop {
        let json = if kpl {
            kpl_event(&recs[..take])
        } else {
            serde_json::to_vec(&fixture_event(&recs[..take], 0)).unwrap_or_default()
        };
        if n.is_some() || json.len() <= SIX_MB {
            return Batch {
                json,
                records: take,
            };
        }
        take = take * SIX_MB / json.len() - 1;
    }
}

/// Records aggregated 25 to a KPL record, in one event.
fn kpl_event(recs: &[crate::traffic::GenRecord]) -> Vec<u8> {
    use shardline_core::kpl::{UserRecord, aggregate};
    let aggregated: Vec<crate::traffic::GenRecord> = recs
        .chunks(25)
        .map(|c| {
            let users: Vec<UserRecord> = c
                .iter()
                .map(|r| UserRecord {
                    partition_key: r.partition_key.clone(),
                    data: r.data.clone(),
                })
                .collect();
            crate::traffic::GenRecord {
                partition_key: users[0].partition_key.clone(),
                data: aggregate(&users),
                txn: c[0].txn.clone(),
                duplicate: false,
            }
        })
        .collect();
    serde_json::to_vec(&fixture_event(&aggregated, 0)).unwrap_or_default()
}

/// Decode limits for benchmark batches (their event times are fixed, their arrival
/// times are not).
pub fn bench_limits() -> DecodeLimits {
    DecodeLimits {
        max_future_skew_ms: i64::MAX,
        max_event_age_ms: i64::MAX,
        ..DecodeLimits::default()
    }
}

/// The fraud-scorer handler on fresh in-memory stores, once; returns its alerts.
pub fn mem_scorer(rt: &tokio::runtime::Runtime, json: &[u8]) -> usize {
    mem_scorer_over(rt, [json], bench_limits()).0
}

/// The fraud-scorer handler on fresh in-memory stores over Lambda events in order:
/// the alerts it reported, and the alerts and quarantine stores after.
pub fn mem_scorer_over<'a>(
    rt: &tokio::runtime::Runtime,
    events: impl IntoIterator<Item = &'a [u8]>,
    limits: DecodeLimits,
) -> (usize, MemAlerts, MemQuarantine) {
    let (p, a, q) = (
        MemProfiles::default(),
        MemAlerts::default(),
        MemQuarantine::default(),
    );
    let mut alerts = 0;
    {
        let s = Scorer::new(
            fraud_scorer::Stores {
                profiles: &p,
                alerts: &a,
                quarantine: &q,
                rules: NoRuleSource,
                stream: NoAlertStream,
            },
            ScorerSettings {
                limits,
                ..ScorerSettings::default()
            },
        );
        for json in events {
            alerts += rt.block_on(s.handle(json, None)).expect("handle").alerts;
        }
    }
    (alerts, a, q)
}

/// The window-aggregator handler on fresh in-memory stores, once; returns its writes.
pub fn mem_aggregator(rt: &tokio::runtime::Runtime, json: &[u8]) -> usize {
    let (w, a, q) = (
        MemWindows::default(),
        MemAlerts::default(),
        MemQuarantine::default(),
    );
    let agg = Aggregator::new(
        window_aggregator::Stores {
            windows: &w,
            alerts: &a,
            quarantine: &q,
        },
        AggregatorSettings {
            limits: bench_limits(),
            ..AggregatorSettings::default()
        },
    );
    rt.block_on(agg.handle(json, None))
        .expect("handle")
        .partial_writes
}

/// The fraud-scorer on DynamoDB through `ddb`, configured from a template environment.
fn dynamo_scorer(
    ddb: &aws_sdk_dynamodb::Client,
    sqs: &aws_sdk_sqs::Client,
    env: &std::collections::BTreeMap<String, String>,
) -> Scorer<DynamoProfileStore, DynamoAlertSink, SqsQuarantine, NoRuleSource, NoAlertStream> {
    Scorer::new(
        fraud_scorer::Stores {
            profiles: DynamoProfileStore::new(ddb.clone(), &env["PROFILES_TABLE"]),
            alerts: DynamoAlertSink::new(ddb.clone(), &env["ALERTS_TABLE"]),
            quarantine: SqsQuarantine::new(sqs.clone(), &env["QUARANTINE_QUEUE_URL"]),
            rules: NoRuleSource,
            stream: NoAlertStream,
        },
        ScorerSettings {
            limits: bench_limits(),
            ..ScorerSettings::default()
        },
    )
}

/// Runs `f` repeatedly for about `budget`, returning records per second.
fn rate(records: usize, budget: Duration, mut f: impl FnMut()) -> f64 {
    f(); // warm up
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < budget {
        f();
        n += 1;
    }
    (n as f64 * records as f64) / started.elapsed().as_secs_f64()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Decode floor: the stock `aws_lambda_events` envelope plus a payload parse per record.
pub fn stock_decode(json: &[u8]) -> usize {
    let ev: KinesisEvent = serde_json::from_slice(json).expect("event");
    ev.records
        .iter()
        .filter(|r| decode_txn(&r.kinesis.data.0, 0, &bench_limits()).is_ok())
        .count()
}

/// The pre-aggregation alone: plan and fold decoded events into fresh partials.
pub fn preaggregate(records: &[InRecord<Txn>]) -> usize {
    let items: Vec<Item<'_, Txn>> = records
        .iter()
        .filter_map(|r| {
            r.body.as_ref().ok().map(|body| Item {
                meta: &r.meta,
                body,
            })
        })
        .collect();
    let cfg = WindowConfig::default();
    let p = plan(
        &items,
        &Default::default(),
        &mut shardline_core::window::claims::ClaimBook::new("bench", [], 0),
        &cfg,
    );
    let mut n = 0;
    for (w, (kind, ix)) in &p.on_time {
        let mut part = WindowPartial::new(w.clone(), "s", &cfg);
        let on: Vec<&Item<'_, Txn>> = ix.iter().map(|&i| &items[i]).collect();
        apply_to_partial(&mut part, *kind, &on, &[], None);
        n += usize::from(*kind != KeyKind::Card);
    }
    n
}

/// The backtest row's input: generated traffic as NDJSON (a day's cards coming back,
/// re-sends and poison included), its ground truth, and the two rule sets.
pub struct BacktestInput {
    /// The NDJSON, and its line count.
    pub batch: Batch,
    labels: HashMap<String, crate::labelfile::Verdict>,
    policies: Vec<shardline_core::fraud::rules::Policy>,
}

/// Builds [`BacktestInput`].
pub fn backtest_input() -> BacktestInput {
    use shardline_core::fraud::rules::{Policy, RuleSet};
    let g = generate(&GenConfig {
        seed: 42,
        events: 40_000,
        cards: 4_000,
        merchants: 2_000,
        end_ms: 1_795_000_000_000,
        span_ms: 6 * 3_600_000,
        ..GenConfig::default()
    });
    let mut json = Vec::new();
    for r in &g.records {
        json.extend_from_slice(&r.data);
        json.push(b'\n');
    }
    let labels = g
        .labels
        .iter()
        .filter_map(|l| l.event_id.clone())
        .map(|e| (e, crate::labelfile::Verdict::Fraud))
        .collect();
    let candidate = RuleSet::from_json(include_str!("../../../rules/fraud-candidate.json"))
        .expect("rules/fraud-candidate.json loads");
    BacktestInput {
        batch: Batch {
            json,
            records: g.records.len(),
        },
        labels,
        policies: vec![Policy::of(candidate), Policy::of(RuleSet::default_rules())],
    }
}

/// One whole backtest over [`BacktestInput`]: read, reorder, score, tally; returns the
/// events scored.
pub fn backtest_once(input: &BacktestInput) -> u64 {
    let mut bt = crate::backtest::Backtest::new(
        input.policies.clone(),
        input.labels.clone(),
        shardline_core::fraud::backtest::Unlabelled::Legit,
        5 * 60_000,
        10,
    );
    bt.read_ndjson(&input.batch.json[..], "bench")
        .expect("in memory");
    bt.finish().figures.events
}

/// Throughput rows: (what, records/s per core, MB/s).
/// `only`: measure just the rows whose name contains it.
pub fn throughput(budget: Duration, only: Option<&str>) -> Vec<(String, f64, f64)> {
    let full = batch(None, false);
    let kpl = batch(Some(full.records), true);
    let mb = |b: &Batch| b.json.len() as f64 / b.records as f64 / 1e6;
    let rt = rt();
    let limits = bench_limits();
    let decoded = shardline_aws::decode_event_json(&full.json, &limits).expect("decode");
    let mut rows = Vec::new();
    let mut row = |name: &str, b: &Batch, f: &mut dyn FnMut()| {
        if only.is_none_or(|o| name.contains(o)) {
            let r = rate(b.records, budget, f);
            rows.push((name.to_owned(), r, r * mb(b)));
        }
    };
    row(
        "decode, stock KinesisEvent + serde_json (floor)",
        &full,
        &mut || {
            std::hint::black_box(stock_decode(&full.json));
        },
    );
    row("decode, lean envelope (shardline)", &full, &mut || {
        let _ = std::hint::black_box(shardline_aws::decode_event_json(&full.json, &limits));
    });
    row("decode, lean envelope, KPL-aggregated", &kpl, &mut || {
        let _ = std::hint::black_box(shardline_aws::decode_event_json(&kpl.json, &limits));
    });
    row(
        "window pre-aggregation of decoded events",
        &full,
        &mut || {
            std::hint::black_box(preaggregate(&decoded));
        },
    );
    row("fraud-scorer handler, decode included", &full, &mut || {
        std::hint::black_box(mem_scorer(&rt, &full.json));
    });
    row(
        "window-aggregator handler, decode included",
        &full,
        &mut || {
            std::hint::black_box(mem_aggregator(&rt, &full.json));
        },
    );
    let bt = backtest_input();
    row(
        "backtest: NDJSON read + default and candidate sets",
        &bt.batch,
        &mut || {
            std::hint::black_box(backtest_once(&bt));
        },
    );
    row(
        "naive scorer (GetItem + PutItem per record, serial)",
        &full,
        &mut || {
            let (p, a) = (MemProfiles::default(), MemAlerts::default());
            rt.block_on(
                NaiveScorer {
                    profiles: &p,
                    alerts: &a,
                    limits,
                }
                .handle(&full.json),
            );
        },
    );
    rows
}

/// Counts requests (by operation, from the `x-amz-target` header) sent by SDK clients.
#[derive(Debug, Default, Clone)]
pub struct RequestCounter {
    counts: Arc<std::sync::Mutex<HashMap<String, u64>>>,
    total: Arc<AtomicU64>,
}

impl RequestCounter {
    /// Requests so far.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::SeqCst)
    }

    /// Zeroes the counters.
    pub fn reset(&self) {
        self.total.store(0, Ordering::SeqCst);
        self.counts.lock().expect("lock").clear();
    }

    /// Requests by operation.
    pub fn by_operation(&self) -> HashMap<String, u64> {
        self.counts.lock().expect("lock").clone()
    }
}

impl Intercept for RequestCounter {
    fn name(&self) -> &'static str {
        "RequestCounter"
    }

    fn read_before_transmit(
        &self,
        ctx: &BeforeTransmitInterceptorContextRef<'_>,
        _rc: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let op = ctx
            .request()
            .headers()
            .get("x-amz-target")
            .and_then(|t| t.split('.').nth(1))
            .unwrap_or("?")
            .to_owned();
        *self.counts.lock().expect("lock").entry(op).or_default() += 1;
        self.total.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// A DynamoDB client that counts its requests, optionally through another endpoint.
pub fn counted_ddb(
    sdk: &aws_config::SdkConfig,
    counter: &RequestCounter,
    endpoint: Option<&str>,
) -> aws_sdk_dynamodb::Client {
    let mut b = aws_sdk_dynamodb::config::Builder::from(sdk).interceptor(counter.clone());
    if let Some(e) = endpoint {
        b = b.endpoint_url(e);
    }
    aws_sdk_dynamodb::Client::from_conf(b.build())
}

/// A TCP proxy on loopback that delays every client-to-server chunk by `delay`: each
/// request pays one fixed round trip, so a batch's latency shows its sequential
/// round trips. Returns its address; it runs until the process ends.
pub async fn delaying_proxy(upstream: String, delay: Duration) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                    return;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let up = async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n) = cr.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        tokio::time::sleep(delay).await;
                        if sw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                };
                let down = async move {
                    let _ = tokio::io::copy(&mut sr, &mut cw).await;
                };
                tokio::join!(up, down);
            });
        }
    });
    Ok(format!("http://{addr}"))
}

/// Fresh tables for one measurement.
async fn stage_tables(
    sdk: &aws_config::SdkConfig,
    template: &Path,
    tag: &str,
) -> anyhow::Result<Template> {
    let mut t = Template::load(template)?;
    t.set_param(
        "Stage",
        &format!("b{}{tag}", crate::common::now_ms() % 100_000_000),
    )?;
    shardline_aws::bootstrap::bootstrap(sdk, &mut t).await?;
    Ok(t)
}

/// DynamoDB requests per 1,000 records: (function, batch size, requests per 1,000).
pub async fn requests(
    sdk: &aws_config::SdkConfig,
    template: &Path,
) -> anyhow::Result<Vec<(String, usize, f64)>> {
    let mut rows = Vec::new();
    for (size, label) in [(Some(100), "100"), (Some(1_000), "1000"), (None, "full")] {
        let b = batch(size, false);
        let t = stage_tables(sdk, template, label).await?;
        let env = |bin: &str| {
            t.functions()
                .into_iter()
                .find(|f| f.binary == bin)
                .map(|f| f.environment)
                .unwrap_or_default()
        };
        let counter = RequestCounter::default();
        let ddb = counted_ddb(sdk, &counter, None);
        let sqs = aws_sdk_sqs::Client::new(sdk);
        let fs = env("fraud-scorer");
        let scorer = dynamo_scorer(&ddb, &sqs, &fs);
        scorer.handle(&b.json, None).await?;
        rows.push((
            "fraud-scorer".to_owned(),
            b.records,
            counter.total() as f64 * 1_000.0 / b.records as f64,
        ));
        counter.reset();
        let wa = env("window-aggregator");
        let agg = Aggregator::new(
            window_aggregator::Stores {
                windows: DynamoWindowStore::new(ddb.clone(), &wa["WINDOWS_TABLE"]),
                alerts: DynamoAlertSink::new(ddb.clone(), &wa["ALERTS_TABLE"]),
                quarantine: SqsQuarantine::new(sqs, &wa["QUARANTINE_QUEUE_URL"]),
            },
            AggregatorSettings {
                limits: bench_limits(),
                ..AggregatorSettings::default()
            },
        );
        agg.handle(&b.json, None).await?;
        rows.push((
            "window-aggregator".to_owned(),
            b.records,
            counter.total() as f64 * 1_000.0 / b.records as f64,
        ));
        if label == "1000" {
            counter.reset();
            let naive = NaiveScorer {
                profiles: &DynamoProfileStore::new(ddb.clone(), &fs["PROFILES_TABLE"]),
                alerts: &DynamoAlertSink::new(ddb.clone(), &fs["ALERTS_TABLE"]),
                limits: bench_limits(),
            };
            naive.handle(&b.json).await;
            rows.push((
                "naive scorer (baseline)".to_owned(),
                b.records,
                counter.total() as f64 * 1_000.0 / b.records as f64,
            ));
        }
    }
    Ok(rows)
}

/// Batch latency through a delaying proxy: (what, records, requests, latency ms).
pub async fn latency(
    sdk: &aws_config::SdkConfig,
    template: &Path,
    delay: Duration,
) -> anyhow::Result<Vec<(String, usize, u64, f64)>> {
    let upstream = std::env::var("AWS_ENDPOINT_URL")
        .context("AWS_ENDPOINT_URL")?
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let proxy = delaying_proxy(upstream, delay).await?;
    let mut rows = Vec::new();
    for size in [100usize, 1_000, 5_000] {
        let b = batch(Some(size), false);
        let t = stage_tables(sdk, template, &format!("l{size}")).await?;
        let fs = t
            .functions()
            .into_iter()
            .find(|f| f.binary == "fraud-scorer")
            .map(|f| f.environment)
            .unwrap_or_default();
        let counter = RequestCounter::default();
        let ddb = counted_ddb(sdk, &counter, Some(&proxy));
        let scorer = dynamo_scorer(&ddb, &aws_sdk_sqs::Client::new(sdk), &fs);
        let started = Instant::now();
        scorer.handle(&b.json, None).await?;
        rows.push((
            "fraud-scorer".to_owned(),
            b.records,
            counter.total(),
            started.elapsed().as_secs_f64() * 1e3,
        ));
        if size == 100 {
            counter.reset();
            let naive = NaiveScorer {
                profiles: &DynamoProfileStore::new(ddb.clone(), &fs["PROFILES_TABLE"]),
                alerts: &DynamoAlertSink::new(ddb.clone(), &fs["ALERTS_TABLE"]),
                limits: bench_limits(),
            };
            let b2 = batch(Some(size), false);
            let started = Instant::now();
            naive.handle(&b2.json).await;
            rows.push((
                "naive scorer (baseline)".to_owned(),
                b2.records,
                counter.total(),
                started.elapsed().as_secs_f64() * 1e3,
            ));
        }
    }
    Ok(rows)
}

/// Size of the stripped arm64 bootstrap binaries `make build` produced.
pub fn binary_sizes(root: &Path) -> Vec<(String, Option<u64>)> {
    ["FraudScorerFunction", "WindowAggregatorFunction"]
        .iter()
        .map(|f| {
            (
                f.to_string(),
                std::fs::metadata(root.join(".aws-sam/build").join(f).join("bootstrap"))
                    .ok()
                    .map(|m| m.len()),
            )
        })
        .collect()
}

/// Cold start and peak memory of a function binary under a local Runtime API stub.
pub mod runtime_stub {
    use super::*;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

    /// Starts `binary` with `env`, serves it `event` as its first invocation (one request
    /// per connection, each answered with `Connection: close`), and returns
    /// (ms from spawn to its first `next` request, peak RSS in KiB after the response).
    pub async fn run_once(
        binary: &Path,
        env: &HashMap<String, String>,
        event: &[u8],
    ) -> anyhow::Result<(f64, u64)> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let spawned = Instant::now();
        let mut child = tokio::process::Command::new(binary)
            .envs(env)
            .env("AWS_LAMBDA_RUNTIME_API", addr.to_string())
            .env("AWS_LAMBDA_FUNCTION_NAME", "bench")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_LAMBDA_LOG_LEVEL", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(log_file(binary)?)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let pid = child.id().unwrap_or(0);
        let mut first_next: Option<f64> = None;
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut served = false;
        let mut hwm = 0;
        while Instant::now() < deadline {
            let (mut sock, _) = tokio::time::timeout(Duration::from_secs(120), listener.accept())
                .await
                .with_context(|| {
                    format!(
                        "{} did not call the Runtime API within 120 s (its log: {})",
                        binary.display(),
                        log_path(binary).display()
                    )
                })??;
            let (r, mut w) = sock.split();
            let mut reader = BufReader::new(r);
            let mut line = String::new();
            reader.read_line(&mut line).await?;
            let mut len = 0usize;
            loop {
                let mut h = String::new();
                reader.read_line(&mut h).await?;
                if h == "\r\n" || h.is_empty() {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0u8; len];
            reader.read_exact(&mut body).await?;
            if line.starts_with("GET") && line.contains("/invocation/next") {
                if first_next.is_none() {
                    first_next = Some(spawned.elapsed().as_secs_f64() * 1e3);
                }
                if served {
                    // The response came back and the function waits for its next event:
                    // read its peak memory while it is still alive, then stop.
                    hwm = peak_rss_kib(pid);
                    break;
                }
                let deadline_ms = crate::common::now_ms() + 60_000;
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nLambda-Runtime-Aws-Request-Id: bench-1\r\nLambda-Runtime-Deadline-Ms: {deadline_ms}\r\nLambda-Runtime-Invoked-Function-Arn: arn:aws:lambda:us-east-1:000000000000:function:bench\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
                    event.len()
                );
                w.write_all(head.as_bytes()).await?;
                w.write_all(event).await?;
                served = true;
            } else {
                w.write_all(
                    b"HTTP/1.1 202 Accepted\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}",
                )
                .await?;
            }
        }
        let _ = child.kill().await;
        Ok((first_next.unwrap_or(f64::NAN), hwm))
    }
}

/// Peak resident set of a live process, KiB (0 when it cannot be read).
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Where a function run by the bench writes its log.
fn log_path(binary: &Path) -> PathBuf {
    let name = binary
        .file_name()
        .map_or_else(|| "function".into(), |n| n.to_string_lossy().into_owned());
    std::env::temp_dir().join(format!("shardline-bench-{name}.log"))
}

fn log_file(binary: &Path) -> anyhow::Result<std::fs::File> {
    let path = log_path(binary);
    std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))
}

/// The host release binary of a function (built by `make bench`).
pub fn release_binary(root: &Path, name: &str) -> PathBuf {
    root.join("target/release").join(name)
}
