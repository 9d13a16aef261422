//! `shardline backtest`: what a candidate rule set would have decided over recorded
//! traffic, beside a baseline, against labels.
//!
//! Inputs, any mix, read in the order given (folders and S3 prefixes in key order):
//! - NDJSON `txn.v1` events, one per line, plain or gzip (`.ndjson`, `.jsonl`, anything
//!   not `.json`);
//! - Lambda Kinesis event fixtures (`.json`), KPL aggregates included, decoded exactly as
//!   the function decodes them;
//! - the archive a deployed stream's Firehose delivery writes to S3 (gzip or plain NDJSON
//!   objects under `<prefix>/YYYY/MM/DD/HH/`), from a local copy or `s3://bucket/prefix`.
//!
//! Events are scored in event-time order: a bounded buffer (`--reorder`, default 5
//! minutes of event time) puts each input's small disorder (shards interleaved in an
//! archive object, late deliveries) right, with memory bounded by what it holds. The
//! rest of the state is one scorer profile per distinct card.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use serde::Serialize;
use shardline_core::event::{DecodeLimits, Txn, decode_txn, format_rfc3339_ms};
use shardline_core::fraud::backtest::{Figures, Replay, Tally, Truth, Unlabelled};
use shardline_core::fraud::rules::{Outcome, Policy, RuleSet};
use shardline_core::lists::Lists;
use shardline_core::record::{RawRecordMeta, decode_record_data};
use shardline_core::seq::SeqNo;

use crate::common::TemplateArgs;
use crate::labelfile::Verdict;

/// Most events the reorder buffer holds, whatever `--reorder` says (memory bound).
pub const MAX_BUFFERED: usize = 1_000_000;

/// `shardline backtest` arguments.
#[derive(clap::Args, Clone, Debug)]
pub struct BacktestArgs {
    /// The candidate rule set (a rule file, v1 or v2).
    #[arg(long)]
    pub rules: PathBuf,
    /// What to compare with: `default` (the shipped rules), `live` (the rule set
    /// published in the config table, the default when none is) or a rule file; `none`
    /// for no comparison.
    #[arg(long, default_value = "default")]
    pub baseline: String,
    /// Recorded traffic: NDJSON files (plain or .gz), Lambda Kinesis event fixtures
    /// (.json), folders of either (a local copy of the Firehose archive), or
    /// s3://bucket/prefix.
    #[arg(long = "events", required = true, num_args = 1..)]
    pub events: Vec<String>,
    /// Labels NDJSON (`shardline labels export`, or the generator's ground truth).
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// Read the labels from the template's labels table instead.
    #[arg(long, conflicts_with = "labels")]
    pub labels_table: bool,
    /// How unlabelled events count: as legit (no chargeback came) or not at all.
    #[arg(long, value_enum, default_value = "legit")]
    pub unlabelled: UnlabelledArg,
    /// How far behind the newest event time an event may arrive and still be put in
    /// order (0: input order, as a function on one shard would see it).
    #[arg(long, default_value = "5m", value_parser = crate::common::parse_duration_ms)]
    pub reorder: i64,
    /// Changed events listed in the report.
    #[arg(long, default_value_t = 10)]
    pub sample: usize,
    /// Load the lists the rule sets name from the lists table (default: only the
    /// values the rule files declare).
    #[arg(long)]
    pub stored_lists: bool,
    /// Print JSON instead of the table.
    #[arg(long)]
    pub json: bool,
    /// The template (table names for `live`, `--labels-table`, `--stored-lists`).
    #[command(flatten)]
    pub template: TemplateArgs,
}

/// `--unlabelled`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum UnlabelledArg {
    /// Count as legit.
    Legit,
    /// Leave out of precision, recall and F1.
    Ignore,
}

/// What was read.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct InputStats {
    /// Files or objects read.
    pub objects: u64,
    /// Records read (lines, fixture records, KPL user records).
    pub records: u64,
    /// Records that are not valid `txn.v1` events, by reason.
    pub poison: BTreeMap<String, u64>,
    /// Events whose id the card's profile already held (producer re-sends).
    pub duplicates: u64,
    /// Events that came later than the reorder buffer could wait for, scored in input
    /// order.
    pub out_of_order: u64,
    /// Distinct cards.
    pub cards: u64,
    /// First and last event time scored (RFC 3339).
    pub from: Option<String>,
    /// Last event time scored.
    pub until: Option<String>,
}

/// The report of a backtest.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    /// The input.
    pub input: InputStats,
    /// Labels loaded.
    pub labels_loaded: u64,
    /// Labels whose event was not among the events.
    pub labels_unmatched: u64,
    /// The figures.
    #[serde(flatten)]
    pub figures: Figures,
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Pending {
    time: i64,
    order: u64,
    #[allow(clippy::struct_field_names)]
    txn: TxnOrd,
}

/// A transaction in the heap, ordered by nothing (time and input order decide).
struct TxnOrd(Txn);
impl PartialEq for TxnOrd {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for TxnOrd {}
impl PartialOrd for TxnOrd {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for TxnOrd {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}

/// The backtest as it runs: records in, a report out.
pub struct Backtest {
    policies: Vec<Policy>,
    labels: HashMap<String, Verdict>,
    matched: std::collections::HashSet<String>,
    replay: Replay,
    tally: Tally,
    reorder_ms: i64,
    heap: BinaryHeap<Reverse<Pending>>,
    newest: i64,
    last_scored: Option<i64>,
    first_scored: Option<i64>,
    order: u64,
    input: InputStats,
    progress: Option<indicatif::ProgressBar>,
}

impl Backtest {
    /// A backtest of `policies` (candidate first, then an optional baseline).
    pub fn new(
        policies: Vec<Policy>,
        labels: HashMap<String, Verdict>,
        unlabelled: Unlabelled,
        reorder_ms: i64,
        sample: usize,
    ) -> Self {
        let tally = Tally::new(&policies.iter().collect::<Vec<_>>(), unlabelled, sample);
        Self {
            policies,
            labels,
            matched: std::collections::HashSet::new(),
            replay: Replay::new(),
            tally,
            reorder_ms: reorder_ms.max(0),
            heap: BinaryHeap::new(),
            newest: i64::MIN,
            last_scored: None,
            first_scored: None,
            order: 0,
            input: InputStats::default(),
            progress: None,
        }
    }

    /// Shows a spinner with the count and rate on stderr (hidden when it is not a
    /// terminal).
    pub fn with_progress(mut self) -> Self {
        let pb = indicatif::ProgressBar::new_spinner();
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {elapsed_precise} {human_pos} events scored ({per_sec})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        self.progress = Some(pb);
        self
    }

    /// One file or object's bytes (gzip or plain; NDJSON, or a Lambda Kinesis event
    /// when `lambda_event`).
    pub fn read_object(
        &mut self,
        bytes: &[u8],
        lambda_event: bool,
        name: &str,
    ) -> anyhow::Result<()> {
        self.input.objects += 1;
        if bytes.starts_with(&[0x1f, 0x8b]) {
            let gz = flate2::read::MultiGzDecoder::new(bytes);
            if lambda_event {
                let mut all = Vec::new();
                BufReader::new(gz)
                    .read_to_end(&mut all)
                    .with_context(|| format!("{name}: not gzip"))?;
                return self.read_lambda_event(&all, name);
            }
            return self.read_ndjson(BufReader::new(gz), name);
        }
        if lambda_event {
            self.read_lambda_event(bytes, name)
        } else {
            self.read_ndjson(bytes, name)
        }
    }

    /// NDJSON `txn.v1` events, one per line. No arrival time is recorded with them, so
    /// the event-time checks against arrival are off; every other check is the
    /// function's.
    pub fn read_ndjson(&mut self, r: impl BufRead, name: &str) -> anyhow::Result<()> {
        let limits = DecodeLimits {
            max_future_skew_ms: i64::MAX,
            max_event_age_ms: i64::MAX,
            ..DecodeLimits::default()
        };
        let mut r = r;
        let mut line = Vec::new();
        loop {
            line.clear();
            // A line is read whole but bounded: a hostile object with no newline stops
            // at the payload limit and the rest of the line is skipped.
            let n = read_line_bounded(&mut r, &mut line, limits.max_payload_bytes + 1)
                .with_context(|| format!("reading {name}"))?;
            if n == 0 {
                break;
            }
            let text = line.trim_ascii();
            if text.is_empty() {
                continue;
            }
            self.input.records += 1;
            match decode_txn(text, 0, &limits) {
                Ok(t) => self.push(t),
                Err(reason) => self.poison(&reason.kind()),
            }
        }
        Ok(())
    }

    /// A Lambda Kinesis event: each record decoded as the function does (KPL aggregates
    /// split, event times checked against the record's arrival time).
    pub fn read_lambda_event(&mut self, bytes: &[u8], name: &str) -> anyhow::Result<()> {
        let ev: aws_lambda_events::event::kinesis::KinesisEvent = serde_json::from_slice(bytes)
            .with_context(|| format!("{name}: not a Lambda Kinesis event"))?;
        let limits = DecodeLimits::default();
        let shard: Arc<str> = Arc::from(name);
        let mut out = Vec::new();
        for rec in ev.records {
            let k = rec.kinesis;
            let Some(seq) = SeqNo::parse(&k.sequence_number).ok() else {
                self.input.records += 1;
                self.poison("bad_sequence_number");
                continue;
            };
            let arrival_ms = (k.approximate_arrival_timestamp.0.timestamp_millis()).max(0);
            let key = k.partition_key;
            out.clear();
            decode_record_data(
                RawRecordMeta {
                    shard_id: shard.clone(),
                    seq,
                    partition_key: &key,
                    arrival_ms,
                },
                &k.data.0,
                &limits,
                &mut out,
            );
            for r in out.drain(..) {
                self.input.records += 1;
                match r.body {
                    Ok(t) => self.push(t),
                    Err(p) => self.poison(&p.reason.kind()),
                }
            }
        }
        Ok(())
    }

    fn poison(&mut self, kind: &str) {
        *self.input.poison.entry(kind.to_owned()).or_default() += 1;
    }

    /// One decoded event: into the reorder buffer, and out of it what is ready.
    pub fn push(&mut self, t: Txn) {
        self.order += 1;
        self.newest = self.newest.max(t.event_time_ms);
        self.heap.push(Reverse(Pending {
            time: t.event_time_ms,
            order: self.order,
            txn: TxnOrd(t),
        }));
        let horizon = self.newest.saturating_sub(self.reorder_ms);
        while let Some(Reverse(top)) = self.heap.peek() {
            if top.time > horizon && self.heap.len() <= MAX_BUFFERED {
                break;
            }
            if let Some(Reverse(p)) = self.heap.pop() {
                self.score(p.txn.0);
            }
        }
    }

    fn score(&mut self, t: Txn) {
        if self.last_scored.is_some_and(|l| t.event_time_ms < l) {
            self.input.out_of_order += 1;
        }
        let policies: Vec<&Policy> = self.policies.iter().collect();
        match self.replay.step(&t, &policies) {
            None => self.input.duplicates += 1,
            Some(decisions) => {
                let truth = match self.labels.get(&t.event_id) {
                    Some(v) => {
                        if !self.matched.contains(&t.event_id) {
                            self.matched.insert(t.event_id.clone());
                        }
                        match v {
                            Verdict::Fraud => Truth::Fraud,
                            Verdict::Legit => Truth::Legit,
                        }
                    }
                    None => Truth::Unlabelled,
                };
                self.tally.add(&t, &decisions, truth);
                self.first_scored.get_or_insert(t.event_time_ms);
                self.last_scored = Some(
                    self.last_scored
                        .map_or(t.event_time_ms, |l| l.max(t.event_time_ms)),
                );
                if let Some(pb) = &self.progress {
                    pb.inc(1);
                }
            }
        }
    }

    /// Scores what the buffer holds and returns the report.
    pub fn finish(mut self) -> Report {
        while let Some(Reverse(p)) = self.heap.pop() {
            self.score(p.txn.0);
        }
        if let Some(pb) = &self.progress {
            pb.finish_and_clear();
        }
        self.input.cards = self.replay.cards() as u64;
        self.input.from = self.first_scored.map(format_rfc3339_ms);
        self.input.until = self.last_scored.map(format_rfc3339_ms);
        Report {
            input: self.input,
            labels_loaded: self.labels.len() as u64,
            labels_unmatched: (self.labels.len() - self.matched.len()) as u64,
            figures: self.tally.figures(),
        }
    }
}

/// Reads up to and including `\n`, keeping at most `cap` bytes of the line (the rest
/// is read and dropped); returns the bytes consumed.
fn read_line_bounded(
    r: &mut impl BufRead,
    out: &mut Vec<u8>,
    cap: usize,
) -> std::io::Result<usize> {
    let mut total = 0;
    loop {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            return Ok(total);
        }
        let (take, done) = match memchr_newline(buf) {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        let room = cap.saturating_sub(out.len());
        out.extend_from_slice(&buf[..take.min(room)]);
        r.consume(take);
        total += take;
        if done {
            return Ok(total);
        }
    }
}

fn memchr_newline(b: &[u8]) -> Option<usize> {
    b.iter().position(|&c| c == b'\n')
}

/// One input: a local file or an S3 object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Object {
    /// A local file.
    File(PathBuf),
    /// An S3 object.
    S3 {
        /// Bucket.
        bucket: String,
        /// Key.
        key: String,
    },
}

impl Object {
    fn name(&self) -> String {
        match self {
            Self::File(p) => p.display().to_string(),
            Self::S3 { bucket, key } => format!("s3://{bucket}/{key}"),
        }
    }

    /// A Lambda Kinesis event fixture (`.json`, `.json.gz`); anything else is NDJSON.
    fn is_lambda_event(&self) -> bool {
        let n = match self {
            Self::File(p) => p.to_string_lossy().into_owned(),
            Self::S3 { key, .. } => key.clone(),
        };
        let n = n.strip_suffix(".gz").unwrap_or(&n);
        n.ends_with(".json")
    }
}

/// Whether a file in a folder is an input (not a golden file, not hidden).
fn is_input_file(p: &Path) -> bool {
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    !name.starts_with('.') && !name.ends_with(".expected.json")
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, out)?;
        } else if is_input_file(&p) {
            out.push(p);
        }
    }
    Ok(())
}

/// The objects of the inputs, in order: each argument in turn; a folder's files and an
/// S3 prefix's objects in key order (a Firehose archive's keys sort by delivery time).
pub async fn list_objects(
    inputs: &[String],
    s3: impl Fn() -> aws_sdk_s3::Client,
) -> anyhow::Result<Vec<Object>> {
    let mut out = Vec::new();
    for input in inputs {
        if let Some(rest) = input.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                bail!("{input}: expected s3://bucket/prefix");
            }
            let client = s3();
            let mut keys = Vec::new();
            let mut pages = client
                .list_objects_v2()
                .bucket(bucket)
                .prefix(prefix)
                .into_paginator()
                .send();
            while let Some(page) = pages.next().await {
                let page = page.with_context(|| format!("listing {input}"))?;
                for o in page.contents() {
                    if let Some(k) = o.key()
                        && !k.ends_with('/')
                        && is_input_file(Path::new(k))
                    {
                        keys.push(k.to_owned());
                    }
                }
            }
            if keys.is_empty() {
                bail!("{input}: no objects under this prefix");
            }
            keys.sort();
            out.extend(keys.into_iter().map(|key| Object::S3 {
                bucket: bucket.to_owned(),
                key,
            }));
        } else {
            let p = PathBuf::from(input);
            if p.is_dir() {
                let mut files = Vec::new();
                walk(&p, &mut files)?;
                if files.is_empty() {
                    bail!("{input}: no files in this folder");
                }
                out.extend(files.into_iter().map(Object::File));
            } else if p.is_file() {
                out.push(Object::File(p));
            } else {
                bail!("{input}: no such file or folder");
            }
        }
    }
    Ok(out)
}

/// Reads every object into the backtest, in order.
pub async fn read_objects(
    bt: &mut Backtest,
    objects: &[Object],
    s3: impl Fn() -> aws_sdk_s3::Client,
) -> anyhow::Result<()> {
    for o in objects {
        let name = o.name();
        match o {
            Object::File(p) => {
                let lambda = o.is_lambda_event();
                let f = std::fs::File::open(p).with_context(|| format!("opening {name}"))?;
                let mut r = BufReader::with_capacity(1 << 16, f);
                let gz = r.fill_buf().map(|b| b.starts_with(&[0x1f, 0x8b]))?;
                if lambda || gz {
                    let mut bytes = Vec::new();
                    r.read_to_end(&mut bytes)?;
                    bt.read_object(&bytes, lambda, &name)?;
                } else {
                    bt.input.objects += 1;
                    bt.read_ndjson(r, &name)?;
                }
            }
            Object::S3 { bucket, key } => {
                let got = s3()
                    .get_object()
                    .bucket(bucket)
                    .key(key)
                    .send()
                    .await
                    .with_context(|| format!("reading {name}"))?;
                let bytes = got
                    .body
                    .collect()
                    .await
                    .with_context(|| format!("reading {name}"))?
                    .into_bytes();
                bt.read_object(&bytes, o.is_lambda_event(), &name)?;
            }
        }
    }
    Ok(())
}

/// The S3 client: path-style addressing against an emulator endpoint.
pub fn s3_client(sdk: &aws_config::SdkConfig) -> aws_sdk_s3::Client {
    let mut b = aws_sdk_s3::config::Builder::from(sdk);
    if std::env::var_os("AWS_ENDPOINT_URL").is_some()
        || std::env::var_os("AWS_ENDPOINT_URL_S3").is_some()
    {
        b = b.force_path_style(true);
    }
    aws_sdk_s3::Client::from_conf(b.build())
}

fn load_rules_file(path: &Path) -> anyhow::Result<RuleSet> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    RuleSet::from_json(&text).map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.explain()))
}

/// `shardline backtest`: the report, as a table or JSON, on `out`; the time it took on
/// stderr.
pub async fn run(args: BacktestArgs, out: &mut impl Write) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let report = report(&args, true).await?;
    let scored = report.figures.events;
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &report)?;
        writeln!(out)?;
    } else {
        out.write_all(render(&report).as_bytes())?;
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "backtest: {scored} events in {secs:.1} s ({:.0} events a minute)",
        scored as f64 / secs.max(1e-9) * 60.0
    );
    Ok(())
}

/// The backtest `args` describe (with a progress spinner on a terminal when
/// `progress`).
pub async fn report(args: &BacktestArgs, progress: bool) -> anyhow::Result<Report> {
    let candidate = load_rules_file(&args.rules)?;
    let needs_aws = args.baseline == "live"
        || args.labels_table
        || args.stored_lists
        || args.events.iter().any(|e| e.starts_with("s3://"));
    let sdk = if needs_aws {
        Some(shardline_aws::sdk::load_sdk_config().await)
    } else {
        None
    };
    let ddb = || sdk.as_ref().map(aws_sdk_dynamodb::Client::new);
    let baseline = match args.baseline.as_str() {
        "none" => None,
        "default" => Some(RuleSet::default_rules()),
        "live" => {
            let t = args.template.load()?;
            let table = crate::common::table_name(&t, "ConfigTable")?;
            let client = ddb().context("no AWS configuration")?;
            let src = shardline_aws::dynamo::DynamoRuleSource::new(client, &table);
            use shardline_core::ports::RuleSource as _;
            Some(
                src.load_rules()
                    .await
                    .map_err(|e| anyhow::anyhow!("reading the live rule set from {table}: {e}"))?
                    .unwrap_or_else(RuleSet::default_rules),
            )
        }
        file => Some(load_rules_file(Path::new(file))?),
    };
    let mut sets = vec![candidate];
    sets.extend(baseline);
    let stored = if args.stored_lists {
        let t = args.template.load()?;
        let table = crate::common::table_name(&t, "ListsTable")?;
        let client = ddb().context("no AWS configuration")?;
        let mut wanted: Vec<_> = sets.iter().flat_map(RuleSet::list_kinds).collect();
        wanted.sort();
        wanted.dedup();
        use shardline_core::ports::ListSource as _;
        shardline_aws::lists::DynamoListSource::new(client, &table)
            .load_lists(&wanted)
            .await
            .map_err(|e| anyhow::anyhow!("reading lists from {table}: {e}"))?
    } else {
        Lists::empty()
    };
    let policies: Vec<Policy> = sets
        .into_iter()
        .map(|rs| Policy::new(Arc::new(rs), &stored))
        .collect();

    let labels = if let Some(path) = &args.labels {
        let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        crate::labelfile::by_event(crate::labelfile::read(
            BufReader::new(f),
            &path.display().to_string(),
        )?)
    } else if args.labels_table {
        let t = args.template.load()?;
        let table = crate::common::table_name(&t, "LabelsTable")?;
        let client = ddb().context("no AWS configuration")?;
        crate::labelfile::by_event(crate::labels::load_table(&client, &table).await?)
    } else {
        HashMap::new()
    };
    let unlabelled = match args.unlabelled {
        UnlabelledArg::Legit => Unlabelled::Legit,
        UnlabelledArg::Ignore => Unlabelled::Ignore,
    };
    let s3 = || {
        sdk.as_ref().map(s3_client).unwrap_or_else(|| {
            aws_sdk_s3::Client::from_conf(
                aws_sdk_s3::Config::builder()
                    .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
                    .build(),
            )
        })
    };
    let objects = list_objects(&args.events, s3).await?;
    let mut bt = Backtest::new(policies, labels, unlabelled, args.reorder, args.sample);
    if progress {
        bt = bt.with_progress();
    }
    read_objects(&mut bt, &objects, s3).await?;
    Ok(bt.finish())
}

fn pct(x: Option<f64>) -> String {
    x.map_or_else(|| "-".to_owned(), |v| format!("{:.3}", v))
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The report as a table.
pub fn render(r: &Report) -> String {
    use std::fmt::Write as _;
    let f = &r.figures;
    let mut s = String::new();
    let i = &r.input;
    let _ = writeln!(
        s,
        "backtest over {} events of {} cards ({} .. {})",
        thousands(f.events),
        thousands(i.cards),
        i.from.as_deref().unwrap_or("-"),
        i.until.as_deref().unwrap_or("-"),
    );
    let poison: u64 = i.poison.values().sum();
    let _ = writeln!(
        s,
        "  read {} records from {} file(s); skipped {} duplicate(s) and {} invalid record(s){}{}",
        thousands(i.records),
        i.objects,
        i.duplicates,
        poison,
        if poison > 0 {
            format!(
                " ({})",
                i.poison
                    .iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        } else {
            String::new()
        },
        if i.out_of_order > 0 {
            format!(
                "; {} event(s) later than the reorder window",
                i.out_of_order
            )
        } else {
            String::new()
        }
    );
    let n = |t: Truth| *f.labels.get(&t).unwrap_or(&0);
    let _ = writeln!(
        s,
        "  labels: {} fraud, {} legit, {} unlabelled (counted as {}); {} label(s) matched no event",
        n(Truth::Fraud),
        n(Truth::Legit),
        n(Truth::Unlabelled),
        match f.unlabelled_count_as {
            Unlabelled::Legit => "legit",
            Unlabelled::Ignore => "nothing",
        },
        r.labels_unmatched,
    );
    let _ = writeln!(s);
    let names = ["candidate", "baseline"];
    let width = f
        .sets
        .iter()
        .map(|x| x.version.chars().count().min(40) + 2)
        .max()
        .unwrap_or(0)
        .max(14);
    let _ = write!(s, "{:<24}", "");
    for name in names.iter().take(f.sets.len()) {
        let _ = write!(s, "{name:>width$}");
    }
    let _ = writeln!(s);
    let _ = write!(s, "{:<24}", "");
    for set in &f.sets {
        let _ = write!(s, "{:>width$}", truncate(&set.version, width - 1));
    }
    let _ = writeln!(s);
    let row = |s: &mut String, label: &str, vals: Vec<String>| {
        let _ = write!(s, "{label:<24}");
        for v in vals {
            let _ = write!(s, "{v:>width$}");
        }
        let _ = writeln!(s);
    };
    for o in [Outcome::Allow, Outcome::Review, Outcome::Block] {
        row(
            &mut s,
            o.name(),
            f.sets
                .iter()
                .map(|x| thousands(*x.outcomes.get(&o).unwrap_or(&0)))
                .collect(),
        );
    }
    row(
        &mut s,
        "flagged fraud (TP)",
        f.sets
            .iter()
            .map(|x| thousands(x.confusion.true_positives))
            .collect(),
    );
    row(
        &mut s,
        "flagged legit (FP)",
        f.sets
            .iter()
            .map(|x| thousands(x.confusion.false_positives))
            .collect(),
    );
    row(
        &mut s,
        "missed fraud (FN)",
        f.sets
            .iter()
            .map(|x| thousands(x.confusion.false_negatives))
            .collect(),
    );
    row(
        &mut s,
        "precision",
        f.sets.iter().map(|x| pct(x.precision)).collect(),
    );
    row(
        &mut s,
        "recall",
        f.sets.iter().map(|x| pct(x.recall)).collect(),
    );
    row(&mut s, "F1", f.sets.iter().map(|x| pct(x.f1)).collect());
    row(
        &mut s,
        "alerts per 1,000 events",
        f.sets
            .iter()
            .map(|x| format!("{:.2}", x.alerts_per_1000))
            .collect(),
    );
    row(
        &mut s,
        "blocks per 1,000 events",
        f.sets
            .iter()
            .map(|x| format!("{:.2}", x.blocks_per_1000))
            .collect(),
    );
    for (k, set) in f.sets.iter().enumerate() {
        let _ = writeln!(
            s,
            "\nrules of the {} ({}, {}):",
            names[k], set.version, set.hash
        );
        let _ = writeln!(
            s,
            "  {:<32} {:<24} {:>8} {:>8} {:>9} {:>7} {:>6}",
            "rule", "reason", "fired", "share", "precision", "recall", "F1"
        );
        for rule in &set.rules {
            let _ = writeln!(
                s,
                "  {:<32} {:<24} {:>8} {:>7.2}% {:>9} {:>7} {:>6}",
                truncate(
                    &format!("{}{}", rule.id, if rule.shadow { " (shadow)" } else { "" }),
                    32
                ),
                truncate(&rule.reason, 24),
                thousands(rule.fired),
                rule.share * 100.0,
                pct(rule.precision),
                pct(rule.recall),
                pct(rule.f1),
            );
        }
    }
    if let Some(d) = &f.diff {
        let _ = writeln!(
            s,
            "\ncandidate against baseline: {} event(s) change outcome",
            thousands(d.changed)
        );
        for c in &d.changes {
            let _ = writeln!(
                s,
                "  {:>6} -> {:<6} {:>8}   fraud {}, legit {}, unlabelled {}",
                c.from.name(),
                c.to.name(),
                thousands(c.events),
                c.fraud,
                c.legit,
                c.unlabelled
            );
        }
        if !d.sample.is_empty() {
            let _ = writeln!(s, "  first {} changed:", d.sample.len());
            for e in &d.sample {
                let label = match e.label {
                    Truth::Fraud => "fraud",
                    Truth::Legit => "legit",
                    Truth::Unlabelled => "unlabelled",
                };
                let reasons = if e.to > e.from {
                    &e.candidate_reasons
                } else {
                    &e.baseline_reasons
                };
                let _ = writeln!(
                    s,
                    "    {} {} card {} {} -> {} ({label}) {}",
                    format_rfc3339_ms(e.event_time_ms),
                    truncate(&e.event_id, 40),
                    truncate(&e.card_token, 24),
                    e.from.name(),
                    e.to.name(),
                    reasons.join(" "),
                );
            }
        }
    }
    s
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(n.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::traffic::{GenConfig, fixture_event, generate};
    use fraud_scorer::{Scorer, ScorerSettings};
    use shardline_core::ports::{NoAlertStream, NoRuleSource};
    use shardline_testkit::{MemAlerts, MemProfiles, MemQuarantine};

    /// The backtest decides what the function decides: generated traffic (every attack
    /// scenario, re-sends, poison, late records) through the real handler on in-memory
    /// stores, and through the backtest in input order, give the same flagged events
    /// with the same outcomes and reasons.
    #[test]
    fn decides_as_the_scorer_handler_does() {
        let g = generate(&GenConfig {
            events: 4_000,
            cards: 600,
            end_ms: 1_795_000_000_000,
            ..GenConfig::default()
        });
        let fixtures: Vec<Vec<u8>> = g
            .records
            .chunks(500)
            .enumerate()
            .map(|(i, c)| serde_json::to_vec(&fixture_event(c, i * 500)).unwrap())
            .collect();
        let (p, a, q) = (
            MemProfiles::default(),
            MemAlerts::default(),
            MemQuarantine::default(),
        );
        let scorer = Scorer::new(
            fraud_scorer::Stores {
                profiles: &p,
                alerts: &a,
                quarantine: &q,
                rules: NoRuleSource,
                stream: NoAlertStream,
            },
            ScorerSettings::default(),
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        for f in &fixtures {
            rt.block_on(scorer.handle(f, None)).unwrap();
        }
        let mut want: Vec<(String, Outcome, Vec<String>)> = a
            .snapshot()
            .into_values()
            .map(|al| (al.event_id.unwrap(), al.outcome, al.reasons))
            .collect();
        want.sort();
        assert!(want.len() > 50, "the traffic's attacks are flagged");

        // Against a set that flags nothing, every flagged event is in the sample.
        let nothing = RuleSet::from_json(
            r#"{"version":"nothing","rules":[{"id":"never","when":"amount_minor < 0","action":"review","reason":"NEVER"}]}"#,
        )
        .unwrap();
        let mut bt = Backtest::new(
            vec![Policy::of(RuleSet::default_rules()), Policy::of(nothing)],
            HashMap::new(),
            Unlabelled::Legit,
            0,
            usize::MAX,
        );
        for f in &fixtures {
            bt.read_lambda_event(f, "shardId-000000000000").unwrap();
        }
        let r = bt.finish();
        let mut got: Vec<(String, Outcome, Vec<String>)> = r
            .figures
            .diff
            .unwrap()
            .sample
            .into_iter()
            .map(|e| (e.event_id, e.to, e.candidate_reasons))
            .collect();
        got.sort();
        assert_eq!(got, want);
        let poison: u64 = r.input.poison.values().sum();
        assert_eq!(poison as usize, q.entries().len());
        assert!(
            r.input.duplicates > 0,
            "re-sends are skipped as the function skips them"
        );
    }

    /// A line longer than the payload cap is one invalid record, not an error or a
    /// buffer the size of the line; the next line still reads.
    #[test]
    fn a_huge_line_is_one_invalid_record() {
        let mut bt = Backtest::new(
            vec![Policy::of(RuleSet::default_rules())],
            HashMap::new(),
            Unlabelled::Legit,
            0,
            0,
        );
        let mut text = vec![b'{'; 3 << 20];
        text.push(b'\n');
        text.extend_from_slice(b"\n[1,2]\n");
        bt.read_ndjson(&text[..], "t").unwrap();
        let r = bt.finish();
        assert_eq!(r.input.records, 2);
        assert_eq!(r.input.poison.values().sum::<u64>(), 2);
        assert_eq!(r.input.poison.get("too_large"), Some(&1));
    }
}
