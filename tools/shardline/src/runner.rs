//! `shardline run`: a local Kinesis event source mapping that behaves like Lambda's.
//!
//! For a function of the template it reads every shard of the stream (a child only after
//! its parents are finished, so per-key order survives a reshard), builds batches as
//! Lambda does (BatchSize, MaximumBatchingWindowInSeconds, the 6 MB payload cap,
//! ParallelizationFactor lanes by partition key), invokes the function and honours the
//! answer: checkpoint after success, retry from the lowest reported sequence number,
//! bisect on a function error, give up after MaximumRetryAttempts or past
//! MaximumRecordAgeInSeconds with the invocation record sent to the OnFailure queue, and
//! TumblingWindowInSeconds with state carried between invocations. Checkpoints live in
//! the local DynamoDB so a restarted runner resumes where it stopped.
//!
//! Like Lambda's event source mapping (one poller per shard), one runner at a time
//! processes a shard: a runner holds a lease on (mapping, shard) in the checkpoint item (an
//! owner id and an expiry, taken and renewed with conditional writes), and its checkpoints
//! are written only while it still owns the lease. A runner that cannot take a shard's
//! lease leaves the shard alone and tries again later, so two `shardline run` processes on
//! one mapping deliver each record once (and take over from each other if one stops).
//! Semantics: <https://docs.aws.amazon.com/lambda/latest/dg/with-kinesis.html>.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType,
};
use aws_sdk_kinesis::types::{Record, Shard, ShardIteratorType};
use base64::Engine as _;
use serde_json::{Value, json};
use shardline_aws::template::{FunctionSpec, Template, scalar};
use shardline_core::SeqNo;
use tokio::sync::Mutex;

/// Lambda's invocation payload limit for a synchronous invoke.
pub const MAX_PAYLOAD_BYTES: usize = 6 * 1024 * 1024;
/// The table the runner keeps its checkpoints in (local only; not part of the stack).
pub const CHECKPOINT_TABLE: &str = "shardline-local-checkpoints";

/// A function invocation: the payload in, the response body out, `Err` for a function
/// error (Lambda's `FunctionError`).
pub type InvokeFuture = Pin<Box<dyn Future<Output = Result<Value, String>> + Send>>;
/// Something that invokes a function.
pub type Invoker = Arc<dyn Fn(Vec<u8>) -> InvokeFuture + Send + Sync>;

/// The event source mapping settings the runner honours, read from the template.
#[derive(Clone, Debug, PartialEq)]
pub struct Mapping {
    /// Function name (for checkpoints and the invocation record).
    pub function: String,
    /// Stream name.
    pub stream: String,
    /// Stream ARN (written into events).
    pub stream_arn: String,
    /// Records per batch.
    pub batch_size: usize,
    /// How long to gather records before invoking with a partial batch.
    pub batching_window: Duration,
    /// TRIM_HORIZON or LATEST.
    pub starting_position: String,
    /// Concurrent batches per shard (keys hashed into lanes).
    pub parallelization: usize,
    /// Split a failing batch in two.
    pub bisect: bool,
    /// Retries of a failing batch; -1: until the record expires.
    pub max_retry_attempts: i64,
    /// Records older than this go to OnFailure; -1: never.
    pub max_record_age: Option<Duration>,
    /// The function reports partial batch failures.
    pub report_batch_item_failures: bool,
    /// Lambda tumbling windows, seconds.
    pub tumbling_window: Option<i64>,
    /// OnFailure destination (queue ARN in the template).
    pub on_failure_arn: Option<String>,
}

impl Mapping {
    /// The Kinesis mapping of a template function.
    pub fn from_template(f: &FunctionSpec, t: &Template) -> anyhow::Result<Self> {
        let esm = f
            .kinesis_events
            .first()
            .with_context(|| format!("{} has no Kinesis event source", f.name))?;
        let stream_arn = scalar(&esm["Stream"]);
        let stream = t
            .physical()
            .values()
            .find(|p| p.arn == stream_arn)
            .map(|p| p.reference.clone())
            .with_context(|| format!("stream {stream_arn} is not in the template"))?;
        let num = |k: &str, d: i64| {
            esm.get(k)
                .map(scalar)
                .and_then(|s| s.parse::<i64>().ok())
                .unwrap_or(d)
        };
        let types: Vec<String> = esm
            .get("FunctionResponseTypes")
            .and_then(Value::as_array)
            .map(|a| a.iter().map(scalar).collect())
            .unwrap_or_default();
        let age = num("MaximumRecordAgeInSeconds", -1);
        Ok(Self {
            function: f.name.clone(),
            stream,
            stream_arn,
            batch_size: num("BatchSize", 100).clamp(1, 10_000) as usize,
            batching_window: Duration::from_secs(
                num("MaximumBatchingWindowInSeconds", 0).max(0) as u64
            ),
            starting_position: esm
                .get("StartingPosition")
                .map(scalar)
                .unwrap_or_else(|| "TRIM_HORIZON".into()),
            parallelization: num("ParallelizationFactor", 1).clamp(1, 10) as usize,
            bisect: esm.get("BisectBatchOnFunctionError").map(scalar).as_deref() == Some("true"),
            max_retry_attempts: num("MaximumRetryAttempts", -1),
            max_record_age: (age > 0).then(|| Duration::from_secs(age as u64)),
            report_batch_item_failures: types.iter().any(|t| t == "ReportBatchItemFailures"),
            tumbling_window: esm
                .get("TumblingWindowInSeconds")
                .map(scalar)
                .and_then(|s| s.parse().ok())
                .filter(|w: &i64| *w > 0),
            on_failure_arn: esm
                .pointer("/DestinationConfig/OnFailure/Destination")
                .map(scalar),
        })
    }
}

/// Counters shown in the status line and returned at the end.
#[derive(Debug, Default)]
pub struct Stats {
    /// Records delivered to the function (first deliveries).
    pub records: AtomicU64,
    /// Invocations.
    pub batches: AtomicU64,
    /// Retried invocations (partial failures, function errors, bisections).
    pub retries: AtomicU64,
    /// Batches sent to the OnFailure destination.
    pub on_failure: AtomicU64,
    /// Records in those batches.
    pub on_failure_records: AtomicU64,
    /// Iterator age per shard, ms.
    pub iterator_age: Mutex<BTreeMap<String, i64>>,
}

/// Runner options.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Stop when every shard is drained.
    pub until_idle: bool,
    /// Consecutive empty polls of every open shard that count as idle.
    pub idle_polls: u32,
    /// Pause between polls of an empty shard.
    pub poll_interval: Duration,
    /// Stop after this long in any case.
    pub max_duration: Duration,
    /// Print a status line every second.
    pub status: bool,
    /// The quarantine queue, whose depth the status line shows.
    pub quarantine_url: Option<String>,
    /// How long a shard's lease lasts unless renewed (it is renewed every third of it).
    pub lease: Duration,
    /// Counters to update (a new set when `None`), so a caller can read them while the
    /// run goes on.
    pub stats: Option<Arc<Stats>>,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            until_idle: true,
            idle_polls: 3,
            poll_interval: Duration::from_millis(200),
            max_duration: Duration::from_secs(3600),
            status: false,
            quarantine_url: None,
            lease: Duration::from_secs(10),
            stats: None,
        }
    }
}

/// The AWS clients the runner needs.
#[derive(Clone, Debug)]
pub struct Clients {
    /// Kinesis.
    pub kinesis: aws_sdk_kinesis::Client,
    /// DynamoDB (checkpoints).
    pub ddb: aws_sdk_dynamodb::Client,
    /// SQS (OnFailure).
    pub sqs: aws_sdk_sqs::Client,
}

impl Clients {
    /// Clients from an SDK configuration, retrying more than the SDK's default three
    /// attempts: the runner stands in for Lambda's event source mapping, which does not
    /// give up on its own reads and checkpoints because an endpoint dropped a few
    /// connections (an overloaded emulator does).
    pub fn new(sdk: &aws_config::SdkConfig) -> Self {
        let sdk = sdk
            .to_builder()
            .retry_config(
                aws_config::retry::RetryConfig::standard()
                    .with_max_attempts(10)
                    .with_initial_backoff(std::time::Duration::from_millis(100))
                    .with_max_backoff(std::time::Duration::from_secs(5)),
            )
            .build();
        Self {
            kinesis: aws_sdk_kinesis::Client::new(&sdk),
            ddb: aws_sdk_dynamodb::Client::new(&sdk),
            sqs: aws_sdk_sqs::Client::new(&sdk),
        }
    }
}

/// Creates the checkpoint table if it is missing.
pub async fn ensure_checkpoint_table(ddb: &aws_sdk_dynamodb::Client) -> anyhow::Result<()> {
    // Asked by name: a listing's first page holds only 100 of an account's tables.
    if ddb
        .describe_table()
        .table_name(CHECKPOINT_TABLE)
        .send()
        .await
        .is_ok()
    {
        return Ok(());
    }
    let created = ddb
        .create_table()
        .table_name(CHECKPOINT_TABLE)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("pk")
                .attribute_type(ScalarAttributeType::S)
                .build()?,
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("pk")
                .key_type(KeyType::Hash)
                .build()?,
        )
        .send()
        .await;
    match created {
        Ok(_) => Ok(()),
        // Another runner created it first.
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_in_use_exception()) =>
        {
            Ok(())
        }
        Err(e) => Err(e).context("creating the checkpoint table"),
    }
}

#[derive(Clone, Debug, Default)]
struct Checkpoint {
    seq: Option<String>,
    done: bool,
    state: Option<Value>,
}

struct Ctx {
    m: Mapping,
    c: Clients,
    invoke: Invoker,
    stats: Arc<Stats>,
    on_failure_url: Option<String>,
    opts: RunOptions,
    /// This runner's lease owner id.
    owner: String,
}

/// Another runner owns the shard's lease now: this one must stop processing it.
#[derive(Debug)]
struct LeaseLost(String);

impl std::fmt::Display for LeaseLost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the lease on shard {} was lost to another runner",
            self.0
        )
    }
}

impl std::error::Error for LeaseLost {}

fn epoch_ms() -> i64 {
    (now_secs() * 1000.0) as i64
}

impl Ctx {
    fn cp_key(&self, shard: &str) -> String {
        format!("{}|{}|{shard}", self.m.function, self.m.stream)
    }

    async fn load_cp(&self, shard: &str) -> anyhow::Result<Checkpoint> {
        let out = self
            .c
            .ddb
            .get_item()
            .table_name(CHECKPOINT_TABLE)
            .key("pk", AttributeValue::S(self.cp_key(shard)))
            .consistent_read(true)
            .send()
            .await?;
        let Some(item) = out.item() else {
            return Ok(Checkpoint::default());
        };
        Ok(Checkpoint {
            seq: item.get("seq").and_then(|v| v.as_s().ok()).cloned(),
            done: item
                .get("done")
                .and_then(|v| v.as_bool().ok())
                .copied()
                .unwrap_or(false),
            state: item
                .get("state")
                .and_then(|v| v.as_s().ok())
                .and_then(|s| serde_json::from_str(s).ok()),
        })
    }

    /// Saves a checkpoint, only while this runner owns the shard's lease (which the
    /// write renews); [`LeaseLost`] otherwise.
    async fn save_cp(&self, shard: &str, cp: &Checkpoint) -> anyhow::Result<()> {
        let mut set = vec!["#done = :done", "#until = :until"];
        let mut req = self
            .c
            .ddb
            .update_item()
            .table_name(CHECKPOINT_TABLE)
            .key("pk", AttributeValue::S(self.cp_key(shard)))
            .condition_expression("#owner = :me")
            .expression_attribute_names("#owner", "owner")
            .expression_attribute_names("#until", "lease_until")
            .expression_attribute_names("#done", "done")
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":me", AttributeValue::S(self.owner.clone()))
            .expression_attribute_values(":done", AttributeValue::Bool(cp.done))
            .expression_attribute_values(":until", self.lease_until());
        if let Some(s) = &cp.seq {
            set.push("#seq = :seq");
            req = req
                .expression_attribute_names("#seq", "seq")
                .expression_attribute_values(":seq", AttributeValue::S(s.clone()));
        }
        let update = match &cp.state {
            Some(st) => {
                set.push("#state = :state");
                req = req.expression_attribute_values(":state", AttributeValue::S(st.to_string()));
                format!("SET {}", set.join(", "))
            }
            None => format!("SET {} REMOVE #state", set.join(", ")),
        };
        match req.update_expression(update).send().await {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
            {
                Err(LeaseLost(shard.to_owned()).into())
            }
            Err(e) => Err(e).context("saving a checkpoint"),
        }
    }

    fn lease_until(&self) -> AttributeValue {
        AttributeValue::N((epoch_ms() + self.opts.lease.as_millis() as i64).to_string())
    }

    /// Takes (or renews) this runner's lease on a shard: true when it holds it now, false
    /// when another runner's lease has not expired.
    async fn take_lease(&self, shard: &str) -> anyhow::Result<bool> {
        let r = self
            .c
            .ddb
            .update_item()
            .table_name(CHECKPOINT_TABLE)
            .key("pk", AttributeValue::S(self.cp_key(shard)))
            .update_expression("SET #owner = :me, #until = :until")
            .condition_expression("attribute_not_exists(#owner) OR #owner = :me OR #until < :now")
            .expression_attribute_names("#owner", "owner")
            .expression_attribute_names("#until", "lease_until")
            .expression_attribute_values(":me", AttributeValue::S(self.owner.clone()))
            .expression_attribute_values(":until", self.lease_until())
            .expression_attribute_values(":now", AttributeValue::N(epoch_ms().to_string()))
            .send()
            .await;
        match r {
            Ok(_) => Ok(true),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
            {
                Ok(false)
            }
            Err(e) => Err(e).context("taking a shard lease"),
        }
    }

    /// Gives a lease up (when this runner stops), so another runner need not wait for
    /// it to expire.
    async fn release_lease(&self, shard: &str) {
        let r = self
            .c
            .ddb
            .update_item()
            .table_name(CHECKPOINT_TABLE)
            .key("pk", AttributeValue::S(self.cp_key(shard)))
            .update_expression("REMOVE #owner, #until")
            .condition_expression("#owner = :me")
            .expression_attribute_names("#owner", "owner")
            .expression_attribute_names("#until", "lease_until")
            .expression_attribute_values(":me", AttributeValue::S(self.owner.clone()))
            .send()
            .await;
        if let Err(e) = r {
            tracing::debug!(error = %e, shard, "Lease not released (expires by itself).");
        }
    }
}

/// Runs the mapping until idle (or `max_duration`), returning the counters.
pub async fn run(
    m: Mapping,
    clients: Clients,
    invoke: Invoker,
    on_failure_url: Option<String>,
    opts: RunOptions,
) -> anyhow::Result<Arc<Stats>> {
    ensure_checkpoint_table(&clients.ddb).await?;
    let stats = opts.stats.clone().unwrap_or_default();
    let ctx = Arc::new(Ctx {
        m,
        c: clients,
        invoke,
        stats: stats.clone(),
        on_failure_url,
        opts,
        owner: format!(
            "runner-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default()
        ),
    });
    let started = Instant::now();
    let mut tasks: HashMap<String, tokio::task::JoinHandle<anyhow::Result<()>>> = HashMap::new();
    let done: Arc<Mutex<HashSet<String>>> = Arc::new(Mutex::new(HashSet::new()));
    let idle: Arc<Mutex<HashMap<String, bool>>> = Arc::new(Mutex::new(HashMap::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let status = ctx
        .opts
        .status
        .then(|| spawn_status(ctx.clone(), stop.clone()));
    loop {
        let shards = list_shards(&ctx.c.kinesis, &ctx.m.stream).await?;
        for s in &shards {
            let id = s.shard_id().to_owned();
            if tasks.contains_key(&id) {
                continue;
            }
            // A child starts only when its parents are finished (Lambda does the same).
            let parents: Vec<String> = [s.parent_shard_id(), s.adjacent_parent_shard_id()]
                .into_iter()
                .flatten()
                .map(str::to_owned)
                .collect();
            let known: HashSet<&str> = shards.iter().map(Shard::shard_id).collect();
            let mut ready = true;
            for p in &parents {
                if known.contains(p.as_str())
                    && !done.lock().await.contains(p)
                    && !ctx.load_cp(p).await?.done
                {
                    ready = false;
                }
            }
            if !ready {
                continue;
            }
            let (ctx2, done2, idle2, stop2) =
                (ctx.clone(), done.clone(), idle.clone(), stop.clone());
            tasks.insert(
                id.clone(),
                tokio::spawn(async move { shard_loop(ctx2, id, done2, idle2, stop2).await }),
            );
        }
        // Surface a failed shard task at once.
        for (id, t) in &mut tasks {
            if t.is_finished() && !done.lock().await.contains(id) {
                let r = t.await;
                stop.store(true, Ordering::SeqCst);
                r.context("shard task panicked")?
                    .with_context(|| format!("shard {id}"))?;
            }
        }
        let all_started = shards.iter().all(|s| tasks.contains_key(s.shard_id()));
        let all_idle = {
            let d = done.lock().await;
            let i = idle.lock().await;
            shards
                .iter()
                .all(|s| d.contains(s.shard_id()) || i.get(s.shard_id()).copied().unwrap_or(false))
        };
        if (ctx.opts.until_idle && all_started && all_idle)
            || started.elapsed() > ctx.opts.max_duration
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    stop.store(true, Ordering::SeqCst);
    for (id, t) in tasks {
        t.await
            .context("shard task panicked")?
            .with_context(|| format!("shard {id}"))?;
    }
    if let Some(h) = status {
        let _ = h.await;
    }
    Ok(stats)
}

/// Every shard of a stream (open and closed, within retention).
pub async fn list_shards(k: &aws_sdk_kinesis::Client, stream: &str) -> anyhow::Result<Vec<Shard>> {
    let mut out = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let req = match &next {
            Some(t) => k.list_shards().next_token(t),
            None => k.list_shards().stream_name(stream),
        };
        let resp = req
            .send()
            .await
            .with_context(|| format!("listing the shards of {stream}"))?;
        out.extend(resp.shards().iter().cloned());
        next = resp.next_token().map(str::to_owned);
        if next.is_none() {
            return Ok(out);
        }
    }
}

fn spawn_status(ctx: Arc<Ctx>, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last = 0;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        while !stop.load(Ordering::SeqCst) {
            tick.tick().await;
            let s = &ctx.stats;
            let now = s.records.load(Ordering::Relaxed);
            let ages = s
                .iterator_age
                .lock()
                .await
                .iter()
                .map(|(k, v)| {
                    format!(
                        "{}:{v}ms",
                        k.trim_start_matches("shardId-").trim_start_matches('0')
                    )
                })
                .collect::<Vec<_>>()
                .join(" ");
            let quarantined = match &ctx.opts.quarantine_url {
                Some(url) => ctx
                    .c
                    .sqs
                    .get_queue_attributes()
                    .queue_url(url)
                    .attribute_names(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
                    .send()
                    .await
                    .ok()
                    .and_then(|o| o.attributes().and_then(|a| a.get(&aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)).cloned())
                    .unwrap_or_else(|| "?".into()),
                None => "-".into(),
            };
            eprint!(
                "\r\x1b[2K[{}] {:>7} rec/s  records {}  batches {}  retries {}  quarantined {}  on-failure {}  iterator age {}",
                ctx.m.function,
                now - last,
                now,
                s.batches.load(Ordering::Relaxed),
                s.retries.load(Ordering::Relaxed),
                quarantined,
                s.on_failure.load(Ordering::Relaxed),
                ages
            );
            last = now;
        }
        eprintln!();
    })
}

/// One shard: wait for its lease (another runner may hold it: the shard does not count as
/// idle meanwhile), process it while the lease holds (renewed in the background), and
/// start over from the stored checkpoint if the lease is lost.
async fn shard_loop(
    ctx: Arc<Ctx>,
    shard: String,
    done: Arc<Mutex<HashSet<String>>>,
    idle: Arc<Mutex<HashMap<String, bool>>>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    // Since when another runner has held the shard without a break.
    let mut held_since: Option<Instant> = None;
    loop {
        if ctx.load_cp(&shard).await?.done {
            done.lock().await.insert(shard);
            return Ok(());
        }
        if !ctx.take_lease(&shard).await? {
            // Another runner holds the shard. A killed one's lease expires within one
            // lease period, and the shard is this runner's to finish then: until that
            // period has passed it is not idle (`--until-idle` waits for it). Held for
            // longer, its holder is alive and renewing it, and finishes it: for this
            // runner it is idle (two live runners would otherwise each wait for the
            // other's shards, and neither would exit to release its own).
            let since = *held_since.get_or_insert_with(Instant::now);
            idle.lock()
                .await
                .insert(shard.clone(), since.elapsed() > ctx.opts.lease);
            if stop.load(Ordering::SeqCst) {
                return Ok(());
            }
            tokio::time::sleep(ctx.opts.poll_interval.max(ctx.opts.lease / 4)).await;
            continue;
        }
        held_since = None;
        let lost = Arc::new(AtomicBool::new(false));
        let renew = {
            let (ctx, shard, lost) = (ctx.clone(), shard.clone(), lost.clone());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(ctx.opts.lease / 3).await;
                    if !ctx.take_lease(&shard).await.unwrap_or(false) {
                        lost.store(true, Ordering::SeqCst);
                        return;
                    }
                }
            })
        };
        let r = process_shard(&ctx, &shard, &done, &idle, &stop, &lost).await;
        renew.abort();
        match r {
            Err(e) if e.is::<LeaseLost>() => {
                tracing::warn!(shard = %shard, "Shard lease lost; waiting to take it again.");
            }
            Ok(()) if lost.load(Ordering::SeqCst) => {
                tracing::warn!(shard = %shard, "Shard lease lost; waiting to take it again.");
            }
            other => {
                ctx.release_lease(&shard).await;
                return other;
            }
        }
    }
}

/// Processes a shard while this runner holds its lease (until it is finished, the run
/// stops, or `lost` says the lease went to another runner).
async fn process_shard(
    ctx: &Arc<Ctx>,
    shard: &str,
    done: &Mutex<HashSet<String>>,
    idle: &Mutex<HashMap<String, bool>>,
    stop: &AtomicBool,
    lost: &AtomicBool,
) -> anyhow::Result<()> {
    let shard = shard.to_owned();
    // Read after the lease is taken: the previous owner may have moved it.
    let mut cp = ctx.load_cp(&shard).await?;
    if cp.done {
        done.lock().await.insert(shard);
        return Ok(());
    }
    let mut iterator = shard_iterator(ctx, &shard, cp.seq.as_deref()).await?;
    // The last sequence number read into the buffer: where a fresh iterator starts when
    // the current one expires (Kinesis iterators live 300 s, and a batch under retries,
    // faults and a slow store can take longer than that).
    let mut last_read: Option<String> = cp.seq.clone();
    let mut buffer: Vec<Record> = Vec::new();

    let mut empty_polls = 0u32;
    let mut get_errors = 0u32;
    let mut window_state: Option<(i64, Value)> = cp
        .state
        .as_ref()
        .and_then(|s| Some((s.get("window_start")?.as_i64()?, s.get("state")?.clone())));
    loop {
        if lost.load(Ordering::SeqCst) {
            return Ok(());
        }
        // Fill the buffer (one GetRecords per pass; a shard gives 5 reads/s in AWS).
        let mut drained = false;
        if let Some(it) = iterator.clone() {
            let resp = match ctx
                .c
                .kinesis
                .get_records()
                .shard_iterator(&it)
                .limit(10_000)
                .send()
                .await
            {
                Ok(r) => r,
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|s| s.is_expired_iterator_exception()) =>
                {
                    iterator = shard_iterator(ctx, &shard, last_read.as_deref()).await?;
                    continue;
                }
                Err(e) => {
                    // Throttled or failing after the SDK's own retries: Lambda's poller
                    // waits and polls again; so does this one (bounded).
                    get_errors += 1;
                    if get_errors > 20 {
                        return Err(e).context("GetRecords, 20 times in a row");
                    }
                    tracing::warn!(error = %e, shard = %shard, "GetRecords failed; polling again.");
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(get_errors))).await;
                    continue;
                }
            };
            get_errors = 0;
            ctx.stats
                .iterator_age
                .lock()
                .await
                .insert(shard.clone(), resp.millis_behind_latest().unwrap_or(0));
            let got = resp.records().len();
            if let Some(r) = resp.records().last() {
                last_read = Some(r.sequence_number().to_owned());
            }
            buffer.extend(resp.records().iter().cloned());
            iterator = resp.next_shard_iterator().map(str::to_owned);
            drained = got == 0;
        }
        let closed = iterator.is_none();
        if buffer.is_empty() {
            if closed {
                if let Some((start, state)) = window_state.take() {
                    finish_window(ctx, &shard, start, state).await?;
                }
                cp.done = true;
                cp.state = None;
                ctx.save_cp(&shard, &cp).await?;
                done.lock().await.insert(shard.clone());
                return Ok(());
            }
            empty_polls += 1;
            if empty_polls >= ctx.opts.idle_polls {
                // Idle: a tumbling window still open is closed now (its final invoke).
                if let Some((start, state)) = window_state.take() {
                    finish_window(ctx, &shard, start, state).await?;
                    cp.state = None;
                    ctx.save_cp(&shard, &cp).await?;
                }
                idle.lock().await.insert(shard.clone(), true);
            }
            if stop.load(Ordering::SeqCst) {
                return Ok(());
            }
            tokio::time::sleep(ctx.opts.poll_interval).await;
            continue;
        }
        empty_polls = 0;
        idle.lock().await.insert(shard.clone(), false);
        // Gather up to the batching window for a full batch.
        let want = ctx.m.batch_size * ctx.m.parallelization;
        if buffer.len() < want && !drained && !closed && !ctx.m.batching_window.is_zero() {
            continue;
        }
        let take = cut_batch(&buffer, want);
        let round: Vec<Record> = buffer.drain(..take).collect();
        if let Some(w) = ctx.m.tumbling_window {
            window_state = tumbling_round(ctx, &shard, round.clone(), w, window_state).await?;
        } else {
            process_round(ctx, &shard, round.clone()).await?;
        }
        cp.seq = round.last().map(|r| r.sequence_number().to_owned());
        cp.state = window_state
            .as_ref()
            .map(|(s, st)| json!({"window_start": s, "state": st}));
        ctx.save_cp(&shard, &cp).await?;
    }
}

/// An iterator for `shard`: after `after` (a sequence number), or at the mapping's
/// starting position.
async fn shard_iterator(
    ctx: &Ctx,
    shard: &str,
    after: Option<&str>,
) -> anyhow::Result<Option<String>> {
    let req = ctx
        .c
        .kinesis
        .get_shard_iterator()
        .stream_name(&ctx.m.stream)
        .shard_id(shard);
    let req = match after {
        Some(seq) => req
            .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
            .starting_sequence_number(seq),
        None if ctx.m.starting_position == "LATEST" => {
            req.shard_iterator_type(ShardIteratorType::Latest)
        }
        None => req.shard_iterator_type(ShardIteratorType::TrimHorizon),
    };
    Ok(req
        .send()
        .await
        .context("GetShardIterator")?
        .shard_iterator()
        .map(str::to_owned))
}

/// How many records of `buffer` fit one round (count and the 6 MB payload cap).
fn cut_batch(buffer: &[Record], want: usize) -> usize {
    let mut bytes = 64;
    for (i, r) in buffer.iter().enumerate().take(want) {
        bytes += record_json_len(r);
        if bytes > MAX_PAYLOAD_BYTES {
            return i.max(1);
        }
    }
    buffer.len().min(want)
}

fn record_json_len(r: &Record) -> usize {
    // base64 data plus the envelope Lambda adds (~600 bytes).
    r.data().as_ref().len().div_ceil(3) * 4
        + r.partition_key().unwrap_or_default().len()
        + 2 * r.sequence_number().len()
        + 600
}

fn arrival_secs(r: &Record) -> f64 {
    r.approximate_arrival_timestamp()
        .map(|t| t.as_secs_f64())
        .unwrap_or(0.0)
}

/// The Lambda Kinesis event for records of one shard.
pub fn event_json(m: &Mapping, shard: &str, records: &[Record]) -> Value {
    let recs: Vec<Value> = records
        .iter()
        .map(|r| {
            json!({
                "kinesis": {
                    "kinesisSchemaVersion": "1.0",
                    "partitionKey": r.partition_key(),
                    "sequenceNumber": r.sequence_number(),
                    "data": base64::engine::general_purpose::STANDARD.encode(r.data().as_ref()),
                    "approximateArrivalTimestamp": arrival_secs(r),
                },
                "eventSource": "aws:kinesis",
                "eventVersion": "1.0",
                "eventID": format!("{shard}:{}", r.sequence_number()),
                "eventName": "aws:kinesis:record",
                "invokeIdentityArn": "arn:aws:iam::000000000000:role/shardline-local",
                "awsRegion": "us-east-1",
                "eventSourceARN": m.stream_arn,
            })
        })
        .collect();
    json!({ "Records": recs })
}

/// Splits a round into ParallelizationFactor lanes by partition key (order kept within
/// a lane) and processes the lanes concurrently.
async fn process_round(ctx: &Arc<Ctx>, shard: &str, round: Vec<Record>) -> anyhow::Result<()> {
    let pf = ctx.m.parallelization;
    let mut lanes: Vec<Vec<Record>> = vec![Vec::new(); pf];
    for r in round {
        let lane = (shardline_core::window::hll::stable_hash(r.partition_key().unwrap_or_default())
            % pf as u64) as usize;
        lanes[lane].push(r);
    }
    let mut handles = Vec::new();
    for lane in lanes.into_iter().filter(|l| !l.is_empty()) {
        // Batches of one lane run in order; lanes run concurrently.
        let (ctx, shard) = (ctx.clone(), shard.to_owned());
        handles.push(tokio::spawn(async move {
            for chunk in lane.chunks(ctx.m.batch_size) {
                deliver(&ctx, &shard, chunk.to_vec()).await?;
            }
            anyhow::Ok(())
        }));
    }
    for h in handles {
        h.await.context("lane panicked")??;
    }
    Ok(())
}

/// Delivers one batch until every record is done: succeeded, or sent to OnFailure.
async fn deliver(ctx: &Ctx, shard: &str, batch: Vec<Record>) -> anyhow::Result<()> {
    ctx.stats
        .records
        .fetch_add(batch.len() as u64, Ordering::Relaxed);
    // Pending sub-batches (bisection splits), with the attempts each has used.
    let mut pending: std::collections::VecDeque<(Vec<Record>, i64)> = [(batch, 0)].into();
    while let Some((mut b, mut attempts)) = pending.pop_front() {
        // Records past MaximumRecordAgeInSeconds are not delivered again.
        if let Some(max_age) = ctx.m.max_record_age {
            let now = now_secs();
            let expired = b
                .iter()
                .take_while(|r| now - arrival_secs(r) > max_age.as_secs_f64())
                .count();
            if expired > 0 {
                let old: Vec<Record> = b.drain(..expired).collect();
                send_on_failure(ctx, shard, &old, "RecordAgeExceeded", attempts).await?;
            }
            if b.is_empty() {
                continue;
            }
        }
        ctx.stats.batches.fetch_add(1, Ordering::Relaxed);
        let payload = serde_json::to_vec(&event_json(&ctx.m, shard, &b))?;
        match (ctx.invoke)(payload).await {
            Ok(resp) => {
                let failed = if ctx.m.report_batch_item_failures {
                    first_failure(&resp, &b)
                } else {
                    None
                };
                let Some(idx) = failed else { continue };
                // Records before the failure are done; retry from it.
                b.drain(..idx);
                attempts += 1;
                if exhausted(ctx, attempts) {
                    send_on_failure(ctx, shard, &b, "RetryAttemptsExhausted", attempts).await?;
                    continue;
                }
                ctx.stats.retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(backoff(attempts)).await;
                pending.push_front((b, attempts));
            }
            Err(function_error) => {
                tracing::debug!(error = %function_error, records = b.len(), "Function error.");
                ctx.stats.retries.fetch_add(1, Ordering::Relaxed);
                if ctx.m.bisect && b.len() > 1 {
                    // Splitting a batch does not count against the retry quota:
                    // <https://docs.aws.amazon.com/lambda/latest/dg/services-kinesis-errors.html>.
                    let second = b.split_off(b.len() / 2);
                    pending.push_front((second, attempts));
                    pending.push_front((b, attempts));
                    continue;
                }
                attempts += 1;
                if exhausted(ctx, attempts) {
                    send_on_failure(ctx, shard, &b, "RetryAttemptsExhausted", attempts).await?;
                    continue;
                }
                tokio::time::sleep(backoff(attempts)).await;
                pending.push_front((b, attempts));
            }
        }
    }
    Ok(())
}

fn exhausted(ctx: &Ctx, attempts: i64) -> bool {
    ctx.m.max_retry_attempts >= 0 && attempts > ctx.m.max_retry_attempts
}

fn backoff(attempts: i64) -> Duration {
    Duration::from_millis((20u64 << attempts.clamp(0, 6)).min(1_000))
}

fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Index in `b` of the lowest reported failure; an identifier not in the batch (or
/// unparseable) fails the whole batch, as Lambda treats it.
fn first_failure(resp: &Value, b: &[Record]) -> Option<usize> {
    let ids: Vec<&str> = resp
        .get("batchItemFailures")?
        .as_array()?
        .iter()
        .filter_map(|f| f.get("itemIdentifier")?.as_str())
        .collect();
    if ids.is_empty() {
        return None;
    }
    let lowest = ids.iter().filter_map(|s| SeqNo::parse(s).ok()).min();
    Some(
        lowest
            .and_then(|low| b.iter().position(|r| r.sequence_number() == low.as_str()))
            .unwrap_or(0),
    )
}

/// Sends Lambda's invocation record for a batch that gave up to the OnFailure queue.
async fn send_on_failure(
    ctx: &Ctx,
    shard: &str,
    b: &[Record],
    condition: &str,
    attempts: i64,
) -> anyhow::Result<()> {
    ctx.stats.on_failure.fetch_add(1, Ordering::Relaxed);
    ctx.stats
        .on_failure_records
        .fetch_add(b.len() as u64, Ordering::Relaxed);
    let Some(url) = &ctx.on_failure_url else {
        tracing::warn!(
            records = b.len(),
            "Batch discarded: no OnFailure destination."
        );
        return Ok(());
    };
    let ts = |r: Option<&Record>| {
        r.map(|r| shardline_core::event::format_rfc3339_ms((arrival_secs(r) * 1000.0) as i64))
    };
    let body = json!({
        "requestContext": {
            "requestId": format!("local-{}", now_secs()),
            "functionArn": format!("arn:aws:lambda:us-east-1:000000000000:function:{}", ctx.m.function),
            "condition": condition,
            "approximateInvokeCount": attempts + 1,
        },
        "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"},
        "version": "1.0",
        "timestamp": shardline_core::event::format_rfc3339_ms((now_secs() * 1000.0) as i64),
        "KinesisBatchInfo": {
            "shardId": shard,
            "startSequenceNumber": b.first().map(Record::sequence_number),
            "endSequenceNumber": b.last().map(Record::sequence_number),
            "approximateArrivalOfFirstRecord": ts(b.first()),
            "approximateArrivalOfLastRecord": ts(b.last()),
            "batchSize": b.len(),
            "streamArn": ctx.m.stream_arn,
        },
    });
    ctx.c
        .sqs
        .send_message()
        .queue_url(url)
        .message_body(body.to_string())
        .send()
        .await
        .context("sending to the OnFailure queue")?;
    Ok(())
}

/// Lambda tumbling windows: records grouped by arrival-time window, state carried from
/// each response into the next invocation, a final invoke when the window closes.
async fn tumbling_round(
    ctx: &Ctx,
    shard: &str,
    round: Vec<Record>,
    width_s: i64,
    mut current: Option<(i64, Value)>,
) -> anyhow::Result<Option<(i64, Value)>> {
    let width_ms = width_s * 1000;
    let mut groups: BTreeMap<i64, Vec<Record>> = BTreeMap::new();
    for r in round {
        let start =
            shardline_core::window::window_start((arrival_secs(&r) * 1000.0) as i64, width_ms);
        groups.entry(start).or_default().push(r);
    }
    for (start, recs) in groups {
        if let Some((cur, state)) = current.take() {
            if cur != start {
                finish_window(ctx, shard, cur, state).await?;
            } else {
                current = Some((cur, state));
            }
        }
        let state = current.take().map(|(_, s)| s).unwrap_or_else(|| json!({}));
        let next = invoke_window(ctx, shard, start, width_ms, &recs, state, false).await?;
        current = Some((start, next));
    }
    Ok(current)
}

async fn finish_window(ctx: &Ctx, shard: &str, start: i64, state: Value) -> anyhow::Result<()> {
    let width_ms = ctx.m.tumbling_window.unwrap_or(60) * 1000;
    invoke_window(ctx, shard, start, width_ms, &[], state, true)
        .await
        .map(|_| ())
}

/// One tumbling-window invocation, retried as Lambda does: with
/// ReportBatchItemFailures, the records before the reported one are done and the retry
/// starts at it with the state the function returned; a function error (or a response
/// without `state`, which Lambda counts as one) retries the whole batch with the state
/// it was given (<https://docs.aws.amazon.com/lambda/latest/dg/services-kinesis-windows.html>).
async fn invoke_window(
    ctx: &Ctx,
    shard: &str,
    start: i64,
    width_ms: i64,
    recs: &[Record],
    mut state: Value,
    is_final: bool,
) -> anyhow::Result<Value> {
    ctx.stats
        .records
        .fetch_add(recs.len() as u64, Ordering::Relaxed);
    let mut pending: Vec<Record> = recs.to_vec();
    let mut attempts = 0;
    loop {
        let mut ev = event_json(&ctx.m, shard, &pending);
        ev["window"] = json!({"start": shardline_core::event::format_rfc3339_ms(start), "end": shardline_core::event::format_rfc3339_ms(start + width_ms)});
        ev["state"] = state.clone();
        ev["shardId"] = json!(shard);
        ev["eventSourceARN"] = json!(ctx.m.stream_arn);
        ev["isFinalInvokeForWindow"] = json!(is_final);
        ev["isWindowTerminatedEarly"] = json!(false);
        ctx.stats.batches.fetch_add(1, Ordering::Relaxed);
        if let Ok(resp) = (ctx.invoke)(serde_json::to_vec(&ev)?).await {
            let failed = if ctx.m.report_batch_item_failures {
                first_failure(&resp, &pending)
            } else {
                None
            };
            match (failed, resp.get("state")) {
                (None, Some(next)) => return Ok(next.clone()),
                (None, None) => {}
                (Some(idx), next) => {
                    pending.drain(..idx);
                    if let Some(next) = next {
                        state = next.clone();
                    }
                }
            }
        }
        attempts += 1;
        if exhausted(ctx, attempts) {
            send_on_failure(ctx, shard, &pending, "RetryAttemptsExhausted", attempts).await?;
            return Ok(state);
        }
        ctx.stats.retries.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(backoff(attempts)).await;
    }
}

/// An invoker that POSTs to the Lambda Invoke API (`cargo lambda watch` at
/// http://127.0.0.1:9000, LocalStack, or AWS behind a signing proxy).
pub fn http_invoker(base_url: &str, function: &str) -> Invoker {
    let url = format!(
        "{}/2015-03-31/functions/{function}/invocations",
        base_url.trim_end_matches('/')
    );
    let client = HttpClient::new();
    Arc::new(move |payload: Vec<u8>| -> InvokeFuture {
        let (url, client) = (url.clone(), client.clone());
        Box::pin(async move { client.post_json(&url, payload).await })
    })
}

/// A minimal HTTP/1.1 client over a TCP stream: enough for the Invoke API on loopback,
/// without pulling a second HTTP stack into the CLI.
#[derive(Clone, Debug, Default)]
struct HttpClient;

impl HttpClient {
    fn new() -> Self {
        Self
    }

    async fn post_json(&self, url: &str, body: Vec<u8>) -> Result<Value, String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let rest = url
            .strip_prefix("http://")
            .ok_or("only http:// URLs are supported")?;
        let (host, path) = rest
            .split_once('/')
            .map_or((rest, "/".to_owned()), |(h, p)| (h, format!("/{p}")));
        let mut stream = tokio::net::TcpStream::connect(host)
            .await
            .map_err(|e| format!("connect {host}: {e}"))?;
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        stream
            .write_all(head.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        stream.write_all(&body).await.map_err(|e| e.to_string())?;
        let mut resp = Vec::new();
        stream
            .read_to_end(&mut resp)
            .await
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&resp);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or("malformed HTTP response")?;
        let status = head.split_whitespace().nth(1).unwrap_or("0");
        let body = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(body)
        } else {
            body.to_owned()
        };
        if head.to_ascii_lowercase().contains("x-amz-function-error") || !status.starts_with('2') {
            return Err(format!("function error (HTTP {status}): {body}"));
        }
        serde_json::from_str(&body).map_err(|e| format!("response is not JSON: {e}: {body}"))
    }
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}

/// Fails when the stream is not in the emulator (bootstrap first).
pub async fn check_stream(k: &aws_sdk_kinesis::Client, stream: &str) -> anyhow::Result<()> {
    if k.describe_stream_summary()
        .stream_name(stream)
        .send()
        .await
        .is_err()
    {
        bail!("stream {stream} not found: run `shardline bootstrap` first");
    }
    Ok(())
}
