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
use shardline_core::event::{
    DEFAULT_MAX_EVENT_AGE_MS, DecodeLimits, PoisonReason, Txn, decode_txn, format_rfc3339_ms,
    pan_safe_id,
};
use shardline_core::fraud::backtest::{Figures, Replay, Tally, Truth, Unlabelled};
use shardline_core::fraud::rules::{Outcome, Policy, RuleSet};
use shardline_core::lists::Lists;

use crate::common::TemplateArgs;
use crate::labelfile::Verdict;

/// Most events the reorder buffer holds, whatever `--reorder` says (memory bound: a
/// few hundred bytes an event).
pub const MAX_BUFFERED: usize = 250_000;
/// Largest Lambda event fixture read (Lambda's own payload cap is 6 MB).
pub const MAX_LAMBDA_EVENT_BYTES: u64 = 64 << 20;
/// Event times the reorder clock is the median of: one far-off event time (a producer's
/// broken clock) does not move it.
const CLOCK_SAMPLES: usize = 1_024;
/// How many events between two computations of the clock (and how many it needs
/// first: until then everything waits).
const CLOCK_EVERY: u64 = 64;
/// How long after the oldest record of an archive object Firehose writes the object:
/// its largest buffering interval.
const FIREHOSE_BUFFER_MS: i64 = 15 * 60_000;
/// How long a record can wait on the stream before Firehose reads it: the template's
/// RetentionPeriodHours.
const STREAM_RETENTION_MS: i64 = 24 * 3_600_000;

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
    /// values the rule files declare; always with `--baseline live`).
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
    /// The last [`CLOCK_SAMPLES`] event times pushed, a ring.
    recent_times: Vec<i64>,
    /// The median of `recent_times`: the reorder buffer's clock.
    clock: i64,
    last_scored: Option<i64>,
    first_scored: Option<i64>,
    order: u64,
    input: InputStats,
    progress: Option<indicatif::ProgressBar>,
    bytes_by_line: bool,
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
            recent_times: Vec::with_capacity(CLOCK_SAMPLES),
            clock: i64::MIN,
            last_scored: None,
            first_scored: None,
            order: 0,
            input: InputStats::default(),
            progress: None,
            bytes_by_line: true,
        }
    }

    /// Shows a progress bar over the input's `total_bytes` on stderr, with the events
    /// scored and the rate (hidden when stderr is not a terminal).
    pub fn with_progress(mut self, total_bytes: u64) -> Self {
        let pb = indicatif::ProgressBar::new(total_bytes);
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "{elapsed_precise} [{wide_bar}] {bytes}/{total_bytes} {msg} (eta {eta})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        self.progress = Some(pb);
        self
    }

    fn advance(&self, bytes: u64) {
        if let Some(pb) = &self.progress {
            pb.inc(bytes);
        }
    }

    /// One file or object (gzip or plain; NDJSON, or a Lambda Kinesis event when
    /// `lambda_event`), read as a stream: memory does not grow with its size.
    pub fn read_object(
        &mut self,
        r: impl BufRead,
        lambda_event: bool,
        name: &str,
        size: u64,
    ) -> anyhow::Result<()> {
        self.input.objects += 1;
        let mut r = r;
        let gz = r
            .fill_buf()
            .map(|b| b.starts_with(&[0x1f, 0x8b]))
            .with_context(|| format!("reading {name}"))?;
        // Plain NDJSON moves the progress bar line by line; anything else when done.
        self.bytes_by_line = !gz && !lambda_event;
        let res = self.read_object_inner(r, gz, lambda_event, name);
        if !self.bytes_by_line {
            self.advance(size);
        }
        self.bytes_by_line = true;
        res
    }

    fn read_object_inner(
        &mut self,
        r: impl BufRead,
        gz: bool,
        lambda_event: bool,
        name: &str,
    ) -> anyhow::Result<()> {
        let arrival = archive_arrival(name);
        if gz {
            let r = BufReader::with_capacity(1 << 16, flate2::bufread::MultiGzDecoder::new(r));
            if lambda_event {
                return self.read_lambda_event_from(r, name);
            }
            return self.read_ndjson_at(r, name, arrival);
        }
        if lambda_event {
            self.read_lambda_event_from(r, name)
        } else {
            self.read_ndjson_at(r, name, arrival)
        }
    }

    fn read_lambda_event_from(&mut self, r: impl Read, name: &str) -> anyhow::Result<()> {
        let mut all = Vec::new();
        r.take(MAX_LAMBDA_EVENT_BYTES + 1)
            .read_to_end(&mut all)
            .with_context(|| format!("reading {name}"))?;
        if all.len() as u64 > MAX_LAMBDA_EVENT_BYTES {
            bail!(
                "{name}: over {} MB, not a Lambda Kinesis event (Lambda's cap is 6 MB)",
                MAX_LAMBDA_EVENT_BYTES >> 20
            );
        }
        self.read_lambda_event(&all, name)
    }

    /// NDJSON `txn.v1` events, one per line, with no arrival time: the function's
    /// checks of event time against arrival time are off; every other check is the
    /// function's.
    pub fn read_ndjson(&mut self, r: impl BufRead, name: &str) -> anyhow::Result<()> {
        self.read_ndjson_at(r, name, None)
    }

    /// NDJSON events that arrived within `arrival` (an archive object's hour): an event
    /// time the function surely refused (more than its skew after the latest arrival,
    /// more than its age limit before the earliest) is refused as it was.
    fn read_ndjson_at(
        &mut self,
        r: impl BufRead,
        name: &str,
        arrival: Option<(i64, i64)>,
    ) -> anyhow::Result<()> {
        let defaults = DecodeLimits::default();
        let limits = DecodeLimits {
            max_future_skew_ms: if arrival.is_some() {
                defaults.max_future_skew_ms
            } else {
                i64::MAX
            },
            max_event_age_ms: i64::MAX,
            ..defaults
        };
        let (earliest, latest) = arrival.unwrap_or((i64::MIN, 0));
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
            if self.bytes_by_line {
                self.advance(n as u64);
            }
            let text = line.trim_ascii();
            if text.is_empty() {
                continue;
            }
            self.input.records += 1;
            match decode_txn(text, latest, &limits) {
                Ok(t) if earliest.saturating_sub(t.event_time_ms) > DEFAULT_MAX_EVENT_AGE_MS => {
                    let behind_ms = earliest.saturating_sub(t.event_time_ms);
                    self.poison(&PoisonReason::StaleEventTime { behind_ms }.kind());
                }
                Ok(t) => self.push(t),
                Err(reason) => self.poison(&reason.kind()),
            }
        }
        Ok(())
    }

    /// A Lambda Kinesis event, decoded by the function's own decoder (KPL aggregates
    /// split, event times checked against each record's arrival time, a bad record one
    /// poison record); an envelope the function would fail whole is an error.
    pub fn read_lambda_event(&mut self, bytes: &[u8], name: &str) -> anyhow::Result<()> {
        let records = shardline_aws::decode_event_json(bytes, &DecodeLimits::default())
            .map_err(|e| anyhow::anyhow!("{name}: not a Lambda Kinesis event: {e}"))?;
        for r in records {
            self.input.records += 1;
            match r.body {
                Ok(t) => self.push(t),
                Err(p) => self.poison(&p.reason.kind()),
            }
        }
        Ok(())
    }

    fn poison(&mut self, kind: &str) {
        *self.input.poison.entry(kind.to_owned()).or_default() += 1;
    }

    /// One decoded event: into the reorder buffer, and out of it what is ready.
    pub fn push(&mut self, t: Txn) {
        if self.reorder_ms == 0 {
            // Input order, as a function on one shard sees it.
            self.score(t);
            return;
        }
        self.order += 1;
        let time = t.event_time_ms;
        if self.recent_times.len() < CLOCK_SAMPLES {
            self.recent_times.push(time);
        } else {
            let slot = (self.order % CLOCK_SAMPLES as u64) as usize;
            self.recent_times[slot] = time;
        }
        // The clock is the median of recent event times, not the newest: one event
        // far in the future would otherwise release everything at once, in input
        // order, for the rest of the run.
        let n = self.recent_times.len();
        if n >= CLOCK_EVERY as usize && (n < CLOCK_SAMPLES || self.order % CLOCK_EVERY == 0) {
            let mut sorted = self.recent_times.clone();
            let mid = sorted.len() / 2;
            let (_, median, _) = sorted.select_nth_unstable(mid);
            self.clock = self.clock.max(*median);
        }
        self.heap.push(Reverse(Pending {
            time,
            order: self.order,
            txn: TxnOrd(t),
        }));
        let horizon = self.clock.saturating_sub(self.reorder_ms);
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
                // Labels name events as alerts show them: an id that reads as a card
                // number only in its PAN-safe form.
                let id = pan_safe_id(&t.event_id);
                let truth = match self.labels.get(&*id) {
                    Some(v) => {
                        if !self.matched.contains(&*id) {
                            self.matched.insert(id.into_owned());
                        }
                        match v {
                            Verdict::Fraud => Truth::Fraud,
                            Verdict::Legit => Truth::Legit,
                        }
                    }
                    None => Truth::Unlabelled,
                };
                self.tally.add(&t, &decisions, truth);
                self.first_scored = Some(
                    self.first_scored
                        .map_or(t.event_time_ms, |f| f.min(t.event_time_ms)),
                );
                self.last_scored = Some(
                    self.last_scored
                        .map_or(t.event_time_ms, |l| l.max(t.event_time_ms)),
                );
                if let Some(pb) = &self.progress
                    && self.tally_events() % 4_096 == 0
                {
                    pb.set_message(format!("{} events scored", self.tally_events()));
                }
            }
        }
    }

    fn tally_events(&self) -> u64 {
        self.tally.events()
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

/// Extensions of files in a folder that are not traffic (notes, scripts, configuration).
const NOT_TRAFFIC: &[&str] = &[
    "md", "txt", "py", "sh", "rs", "toml", "yaml", "yml", "csv", "html",
];

/// Whether a file in a folder (or an object under a prefix) is an input: not hidden,
/// not a golden file, not a note or a script.
fn is_input_file(p: &Path) -> bool {
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ext = p
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    !name.starts_with('.')
        && !name.ends_with(".expected.json")
        && !NOT_TRAFFIC.contains(&ext.as_str())
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

/// The window in which an archive object's records arrived on the stream, from the
/// `YYYY/MM/DD/HH/` folders Firehose writes it under (the hour of its oldest record's
/// delivery): no later than the end of that hour plus Firehose's largest buffering
/// interval, no earlier than the stream's retention before the hour.
pub fn archive_arrival(name: &str) -> Option<(i64, i64)> {
    let parts: Vec<&str> = name.split('/').collect();
    let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
    parts.windows(5).rev().find_map(|w| {
        if !(digits(w[0], 4) && digits(w[1], 2) && digits(w[2], 2) && digits(w[3], 2)) {
            return None;
        }
        let month = time::Month::try_from(w[1].parse::<u8>().ok()?).ok()?;
        let date =
            time::Date::from_calendar_date(w[0].parse().ok()?, month, w[2].parse().ok()?).ok()?;
        let hour = date
            .with_hms(w[3].parse().ok()?, 0, 0)
            .ok()?
            .assume_utc()
            .unix_timestamp()
            * 1000;
        Some((
            hour - STREAM_RETENTION_MS,
            hour + 3_600_000 + FIREHOSE_BUFFER_MS,
        ))
    })
}

/// The objects of the inputs, in order, with their sizes: each argument in turn; a
/// folder's files and an S3 prefix's objects in key order (a Firehose archive's keys
/// sort by delivery time).
pub async fn list_objects(
    inputs: &[String],
    s3: impl Fn() -> aws_sdk_s3::Client,
) -> anyhow::Result<Vec<(Object, u64)>> {
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
                        let size = o.size().and_then(|s| u64::try_from(s).ok()).unwrap_or(0);
                        keys.push((k.to_owned(), size));
                    }
                }
            }
            if keys.is_empty() {
                bail!("{input}: no objects under this prefix");
            }
            keys.sort();
            out.extend(keys.into_iter().map(|(key, size)| {
                (
                    Object::S3 {
                        bucket: bucket.to_owned(),
                        key,
                    },
                    size,
                )
            }));
        } else {
            let p = PathBuf::from(input);
            let files = if p.is_dir() {
                let mut files = Vec::new();
                walk(&p, &mut files)?;
                if files.is_empty() {
                    bail!("{input}: no files in this folder");
                }
                files
            } else if p.is_file() {
                vec![p]
            } else {
                bail!("{input}: no such file or folder");
            };
            for f in files {
                let size = std::fs::metadata(&f).map(|m| m.len()).unwrap_or(0);
                out.push((Object::File(f), size));
            }
        }
    }
    Ok(out)
}

/// A temporary file, removed when dropped.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Reads every object into the backtest, in order. An S3 object is streamed to a
/// temporary file first, so memory does not grow with its size.
pub async fn read_objects(
    bt: &mut Backtest,
    objects: &[(Object, u64)],
    s3: impl Fn() -> aws_sdk_s3::Client,
) -> anyhow::Result<()> {
    for (i, (o, size)) in objects.iter().enumerate() {
        let name = o.name();
        let lambda = o.is_lambda_event();
        let (path, _guard) = match o {
            Object::File(p) => (p.clone(), None),
            Object::S3 { bucket, key } => {
                let mut got = s3()
                    .get_object()
                    .bucket(bucket)
                    .key(key)
                    .send()
                    .await
                    .with_context(|| format!("reading {name}"))?;
                let tmp = std::env::temp_dir()
                    .join(format!("shardline-backtest-{}-{i}", std::process::id()));
                let guard = TempFile(tmp.clone());
                let mut f = std::io::BufWriter::new(
                    std::fs::File::create(&tmp)
                        .with_context(|| format!("creating {}", tmp.display()))?,
                );
                while let Some(chunk) = got
                    .body
                    .try_next()
                    .await
                    .with_context(|| format!("reading {name}"))?
                {
                    f.write_all(&chunk)
                        .with_context(|| format!("writing {}", tmp.display()))?;
                }
                f.flush()?;
                (tmp, Some(guard))
            }
        };
        let f = std::fs::File::open(&path).with_context(|| format!("opening {name}"))?;
        bt.read_object(BufReader::with_capacity(1 << 16, f), lambda, &name, *size)?;
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

/// A table's name: from `env` when set (a deployed stack's output, as the `rules`,
/// `lists` and `labels` commands take it), else the template's.
fn table_of(args: &BacktestArgs, env: &str, logical: &str) -> anyhow::Result<String> {
    match std::env::var(env) {
        Ok(name) if !name.is_empty() => Ok(name),
        _ => crate::common::table_name(&args.template.load()?, logical),
    }
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
            let table = table_of(args, "CONFIG_TABLE", "ConfigTable")?;
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
    // The live set is compared as it runs: with the lists stored beside it.
    let stored = if args.stored_lists || args.baseline == "live" {
        let table = table_of(args, "LISTS_TABLE", "ListsTable")?;
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
        let table = table_of(args, "LABELS_TABLE", "LabelsTable")?;
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
        bt = bt.with_progress(objects.iter().map(|(_, size)| size).sum());
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
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let (_, a, q) = crate::bench::mem_scorer_over(
            &rt,
            fixtures.iter().map(Vec::as_slice),
            DecodeLimits::default(),
        );
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

    fn line(id: &str, card: &str, time: &str, amount: i64) -> String {
        format!(
            r#"{{"schema":"txn.v1","event_id":"{id}","card_token":"{card}","merchant_id":"m-1","mcc":"5411","amount_minor":{amount},"currency":"EUR","event_time":"{time}","location":{{"lat":48.85,"lon":2.35,"country":"FR"}},"channel":"pos","auth_result":"approved"}}"#
        )
    }

    fn big_second() -> Policy {
        Policy::of(
            RuleSet::from_json(
                r#"{"version":"t","rules":[{"id":"big_second","when":"count_1h >= 2 and amount_minor >= 50000","action":"block","reason":"BIG_SECOND"}]}"#,
            )
            .unwrap(),
        )
    }

    fn run(text: &str, name: &str, reorder_ms: i64, labels: HashMap<String, Verdict>) -> Report {
        let mut bt = Backtest::new(
            vec![big_second()],
            labels,
            Unlabelled::Legit,
            reorder_ms,
            10,
        );
        bt.read_object(text.as_bytes(), false, name, text.len() as u64)
            .unwrap();
        bt.finish()
    }

    /// Event order decides: the big purchase is the card's second by event time but
    /// first in the file. Put in order it is blocked; in input order it is not.
    #[test]
    fn events_are_scored_in_event_order() {
        let text = [
            line("big", "c", "2026-11-20T10:01:00Z", 60_000),
            line("small", "c", "2026-11-20T10:00:00Z", 100),
        ]
        .join("\n");
        let ordered = run(&text, "t.ndjson", 5 * 60_000, HashMap::new());
        assert_eq!(ordered.figures.sets[0].outcomes[&Outcome::Block], 1);
        assert_eq!(ordered.input.out_of_order, 0);
        assert_eq!(
            ordered.input.from.as_deref(),
            Some("2026-11-20T10:00:00.000Z")
        );
        let as_read = run(&text, "t.ndjson", 0, HashMap::new());
        assert_eq!(as_read.figures.sets[0].outcomes[&Outcome::Block], 0);
        assert_eq!(as_read.input.out_of_order, 1);
        assert_eq!(
            as_read.input.from.as_deref(),
            Some("2026-11-20T10:00:00.000Z"),
            "the earliest event, not the first scored"
        );
    }

    /// One event far in the future (a producer's broken clock) early in the input
    /// does not release the rest unordered.
    #[test]
    fn a_far_future_event_does_not_stop_the_reordering() {
        let mut lines = vec![line("future", "z", "9999-12-31T00:00:00Z", 1)];
        for i in 0..50 {
            // Pairs swapped: each card's big purchase first in the file.
            lines.push(line(
                &format!("big{i}"),
                &format!("c{i}"),
                "2026-11-20T10:01:00Z",
                60_000,
            ));
            lines.push(line(
                &format!("small{i}"),
                &format!("c{i}"),
                "2026-11-20T10:00:00Z",
                100,
            ));
        }
        let r = run(&lines.join("\n"), "t.ndjson", 5 * 60_000, HashMap::new());
        assert_eq!(r.figures.sets[0].outcomes[&Outcome::Block], 50);
        assert_eq!(r.input.out_of_order, 0);
    }

    /// An archive object's hour folder bounds its records' arrival: an event time the
    /// function surely refused (more than 5 minutes after the hour, plus Firehose's
    /// buffering, or 30 days before it) is refused; others are scored.
    #[test]
    fn an_archive_hour_bounds_event_times_as_the_function_did() {
        assert_eq!(
            archive_arrival(
                "s3://b/archive/2026/11/20/10/shardline-dev-archive-1-2026-11-20-10-04-59-x.gz"
            ),
            Some((
                1_795_168_800_000 - STREAM_RETENTION_MS,
                1_795_168_800_000 + 3_600_000 + FIREHOSE_BUFFER_MS
            ))
        );
        assert_eq!(archive_arrival("traffic/today.ndjson"), None);
        assert_eq!(archive_arrival("a/2026/13/20/10/x"), None, "no month 13");
        let text = [
            line("ok", "c", "2026-11-20T10:30:00Z", 100),
            line("edge", "c", "2026-11-20T11:19:00Z", 100),
            line("future", "c", "2026-11-20T11:30:00Z", 100),
            line("stale", "c", "2026-10-01T00:00:00Z", 100),
        ]
        .join("\n");
        let r = run(&text, "archive/2026/11/20/10/obj-1", 0, HashMap::new());
        assert_eq!(r.figures.events, 2);
        assert_eq!(r.input.poison.get("future_event_time"), Some(&1));
        assert_eq!(r.input.poison.get("stale_event_time"), Some(&1));
        // Outside an hour folder nothing says when they arrived: all scored.
        assert_eq!(
            run(&text, "traffic.ndjson", 0, HashMap::new())
                .figures
                .events,
            4
        );
    }

    /// Labels name an event whose id reads as a card number by its PAN-safe form, as
    /// its alert shows it.
    #[test]
    fn a_card_number_event_id_is_labelled_by_its_pan_safe_form() {
        let id = "4111111111111111";
        let safe = pan_safe_id(id).into_owned();
        assert_ne!(safe, id);
        let text = line(id, "c", "2026-11-20T10:00:00Z", 100);
        let r = run(
            &text,
            "t.ndjson",
            0,
            HashMap::from([(safe, Verdict::Fraud)]),
        );
        assert_eq!(r.figures.labels.get(&Truth::Fraud), Some(&1));
        assert_eq!(r.labels_unmatched, 0);
    }

    /// A fixture's fractional arrival time reads as the function reads it (Lambda
    /// sends seconds with a fraction): an event 299.9 s after an arrival of x.5 s is
    /// within the 5-minute skew, as the function decides.
    #[test]
    fn a_fixture_is_decoded_by_the_functions_decoder() {
        use base64::Engine as _;
        let arrival = 1_764_140_400.5_f64;
        let event = format_rfc3339_ms(1_764_140_400_500 + 299_900);
        let data = base64::engine::general_purpose::STANDARD.encode(line("e", "c", &event, 100));
        let rec = |data: &str| {
            serde_json::json!({"kinesis": {"kinesisSchemaVersion": "1.0", "partitionKey": "c",
                "sequenceNumber": "49590338271490256608559692538361571095921575989136588898",
                "data": data, "approximateArrivalTimestamp": arrival},
                "eventSource": "aws:kinesis", "eventID": "shardId-000000000000:4959",
                "eventSourceARN": "arn:aws:kinesis:us-east-1:1:stream/s"})
        };
        let json =
            serde_json::to_vec(&serde_json::json!({"Records": [rec(&data), rec("!!")]})).unwrap();
        let mut bt = Backtest::new(vec![big_second()], HashMap::new(), Unlabelled::Legit, 0, 0);
        bt.read_object(&json[..], true, "f.json", json.len() as u64)
            .unwrap();
        let r = bt.finish();
        assert_eq!(r.figures.events, 1, "{:?}", r.input.poison);
        assert_eq!(
            r.input.poison.values().sum::<u64>(),
            1,
            "bad base64 is one poison record"
        );
    }

    /// A gzip fixture that expands past any Lambda event is refused, not read into
    /// memory whole.
    #[test]
    fn a_gzip_bomb_fixture_is_refused() {
        use std::io::Write as _;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let zeros = vec![b' '; 1 << 20];
        for _ in 0..=(MAX_LAMBDA_EVENT_BYTES >> 20) {
            gz.write_all(&zeros).unwrap();
        }
        let bomb = gz.finish().unwrap();
        assert!(bomb.len() < 1 << 20);
        let mut bt = Backtest::new(vec![big_second()], HashMap::new(), Unlabelled::Legit, 0, 0);
        let e = bt
            .read_object(&bomb[..], true, "bomb.json.gz", bomb.len() as u64)
            .unwrap_err();
        assert!(
            format!("{e:#}").contains("not a Lambda Kinesis event"),
            "{e:#}"
        );
    }
}
