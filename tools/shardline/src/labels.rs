//! `shardline label` and `shardline labels`: what events really were (fraud or legit),
//! kept in the labels table with who labelled them and when, for backtests. One item per
//! event (key `event_id`, PAN-safe: an id holding a card number is stored as
//! [`shardline_core::event::pan_safe_id`] gives it, as alerts show it); labelling an
//! event again replaces its label.
//!
//! Who labelled and when (`labelled_by`, `labelled_at`) are what a file or `--by` says;
//! who wrote the item and when (`recorded_by`, `recorded_at`) are always the writer's
//! IAM identity (STS GetCallerIdentity) and the time of the write, whatever the input
//! says.
//!
//! Items are [`LabelRecord`]s as `serde_dynamo` maps them, so the table and the NDJSON
//! of [`crate::labelfile`] hold the same fields.

use std::collections::HashMap;
use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use aws_sdk_dynamodb::types::AttributeValue;
use clap::Subcommand;
use shardline_core::event::{format_rfc3339_ms, pan_safe_id};
use shardline_core::ports::MAX_BATCH_WRITE;

use crate::common::{TemplateArgs, check_endpoint, now_ms, scan_all, table_name};
use crate::labelfile::{
    self, LabelRecord, Verdict, check_at, check_by, stored_event_id, stored_note,
};

/// Key attribute of the labels table (template.yaml's LabelsTable).
pub const LABEL_KEY: &str = "event_id";

/// Where the labels are.
#[derive(clap::Args, Clone, Debug)]
pub struct LabelsTableArgs {
    /// The labels table (a deployed stack's is its `LabelsTableName` output). Default: the
    /// template's LabelsTable in the local emulators.
    #[arg(long, env = "LABELS_TABLE")]
    pub table: Option<String>,
    /// The template, for the local default table name.
    #[command(flatten)]
    pub template: TemplateArgs,
}

impl LabelsTableArgs {
    /// The table's name: `--table` / `LABELS_TABLE`, else the template's LabelsTable
    /// (local: the emulators must be configured).
    pub fn resolve(&self) -> anyhow::Result<String> {
        match &self.table {
            Some(t) if !t.is_empty() => Ok(t.clone()),
            _ => {
                check_endpoint().context(
                    "no --table or LABELS_TABLE given, so the local emulators' table is used",
                )?;
                table_name(&self.template.load()?, "LabelsTable")
            }
        }
    }
}

/// `shardline label`: one event's label.
#[derive(clap::Args, Clone, Debug)]
pub struct LabelArgs {
    /// The event's id (its `event_id` in the `txn.v1` event; one that reads as a card
    /// number is stored in the PAN-safe form alerts show).
    pub event_id: String,
    /// What it was: fraud or legit.
    pub verdict: Verdict,
    /// Why (a case number, a chargeback reason; at most 1,000 characters, card numbers
    /// redacted).
    #[arg(long)]
    pub note: Option<String>,
    /// Who labelled it (default: the caller's IAM identity ARN, from STS
    /// GetCallerIdentity). Who recorded it is always the caller.
    #[arg(long)]
    pub by: Option<String>,
    /// The labels table.
    #[command(flatten)]
    pub table: LabelsTableArgs,
}

/// `shardline labels` subcommands.
#[derive(Subcommand)]
pub enum Labels {
    /// Load labels from an NDJSON file (`labels export`'s format, or the generator's
    /// ground truth, whose event lines read as fraud). Every line is checked before
    /// anything is written; a later line for an event wins. Lines without `labelled_by`
    /// or `labelled_at` get the caller's identity and the time of the import; every label
    /// is recorded as written by the caller at the time of the import.
    Import {
        /// The file.
        file: PathBuf,
        /// Who, for lines that do not say (default: the caller's IAM identity ARN).
        #[arg(long)]
        by: Option<String>,
        /// The labels table.
        #[command(flatten)]
        table: LabelsTableArgs,
    },
    /// Write every label as NDJSON, one per line, sorted by event id (what `shardline
    /// backtest --labels` reads).
    Export {
        /// The file (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
        /// The labels table.
        #[command(flatten)]
        table: LabelsTableArgs,
    },
}

/// `shardline label`.
pub async fn label(args: LabelArgs) -> anyhow::Result<()> {
    let event_id = stored_event_id(&args.event_id)?;
    let note = args
        .note
        .as_deref()
        .filter(|n| !n.is_empty())
        .map(stored_note)
        .transpose()?;
    let by = args.by.filter(|b| !b.is_empty());
    if let Some(b) = &by {
        check_by("labelled_by (--by)", b)?;
    }
    let table = args.table.resolve()?;
    let sdk = shardline_aws::sdk::load_sdk_config().await;
    let me = caller(&sdk).await?;
    let at = format_rfc3339_ms(now_ms());
    let record = LabelRecord {
        event_id,
        label: args.verdict,
        note,
        labelled_by: Some(by.unwrap_or_else(|| me.clone())),
        labelled_at: Some(at.clone()),
        recorded_by: Some(me),
        recorded_at: Some(at),
    };
    if record.event_id != args.event_id {
        eprintln!(
            "the event id reads as a card number: stored as {}, as alerts and backtest reports show it",
            record.event_id
        );
    }
    let ddb = aws_sdk_dynamodb::Client::new(&sdk);
    ddb.put_item()
        .table_name(&table)
        .set_item(Some(to_item(&record)?))
        .send()
        .await
        .map_err(aws_sdk_dynamodb::Error::from)
        .with_context(|| in_table(&table))?;
    println!(
        "event {} labelled {} by {} at {}",
        record.event_id,
        record.label.as_str(),
        record.labelled_by.as_deref().unwrap_or_default(),
        record.labelled_at.as_deref().unwrap_or_default()
    );
    Ok(())
}

/// `shardline labels`.
pub async fn run(cmd: Labels) -> anyhow::Result<()> {
    match cmd {
        Labels::Import { file, by, table } => import(&file, by, &table).await,
        Labels::Export { out, table } => export(out.as_deref(), &table).await,
    }
}

/// Every label of `table` (all pages of a Scan), sorted by event id. An item that is not
/// a label (written by something else) is an error naming its key.
pub async fn load_table(
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
) -> anyhow::Result<Vec<LabelRecord>> {
    let items = scan_all(ddb, table)
        .await
        .with_context(|| in_table(table))?;
    let mut labels = items
        .into_iter()
        .map(|item| {
            let key = match item.get(LABEL_KEY) {
                Some(AttributeValue::S(s)) => s.clone(),
                _ => "(no event_id)".to_owned(),
            };
            serde_dynamo::from_item::<_, LabelRecord>(item)
                .with_context(|| format!("labels table {table}: item {key} is not a label"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    labels.sort_by(|a, b| a.event_id.cmp(&b.event_id));
    Ok(labels)
}

/// The labels to write for a file's records: one per event (the last line for an event
/// wins), sorted by event id, who and when filled where the line did not say. Every
/// record is checked as a file's line is (PAN-safe event id, redacted and bounded note,
/// bounded who, RFC 3339 when), so that nothing DynamoDB would refuse is left for the
/// write. Also returns how many lines a later line for the same event superseded.
pub fn prepare(
    records: Vec<LabelRecord>,
    by: &str,
    at: &str,
) -> anyhow::Result<(Vec<LabelRecord>, usize)> {
    check_by("labelled_by", by)?;
    let lines = records.len();
    let mut latest: HashMap<String, LabelRecord> = HashMap::with_capacity(lines);
    for mut r in records {
        let what = || format!("label of {}", pan_safe_id(&r.event_id));
        let checked = (|| {
            let id = stored_event_id(&r.event_id)?;
            let note = r.note.as_deref().map(stored_note).transpose()?;
            for (field, v) in [
                ("labelled_by", &r.labelled_by),
                ("recorded_by", &r.recorded_by),
            ] {
                check_by(field, v.as_deref().unwrap_or_default())?;
            }
            for (field, v) in [
                ("labelled_at", &r.labelled_at),
                ("recorded_at", &r.recorded_at),
            ] {
                check_at(field, v.as_deref().unwrap_or_default())?;
            }
            anyhow::Ok((id, note))
        })()
        .with_context(what)?;
        (r.event_id, r.note) = checked;
        latest.insert(r.event_id.clone(), r);
    }
    let superseded = lines - latest.len();
    let mut out: Vec<LabelRecord> = latest
        .into_values()
        .map(|mut r| {
            if r.labelled_by.as_deref().is_none_or(str::is_empty) {
                r.labelled_by = Some(by.to_owned());
            }
            if r.labelled_at.as_deref().is_none_or(str::is_empty) {
                r.labelled_at = Some(at.to_owned());
            }
            r
        })
        .collect();
    out.sort_by(|a, b| a.event_id.cmp(&b.event_id));
    Ok((out, superseded))
}

/// Writes labels with BatchWriteItem, [`MAX_BATCH_WRITE`] at a time (unprocessed items
/// re-sent with backoff by [`shardline_aws::dynamo::batch_write`]). The event ids must be
/// unique ([`prepare`]): BatchWriteItem refuses a request naming a key twice. Check
/// the labels first ([`prepare`]): a request failing after others succeeded leaves
/// those written, and the error says how many.
pub async fn put_labels(
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
    labels: &[LabelRecord],
) -> anyhow::Result<()> {
    let mut written = 0;
    for chunk in labels.chunks(MAX_BATCH_WRITE) {
        let writes = chunk
            .iter()
            .map(|l| Ok(shardline_aws::dynamo::put_request(to_item(l)?)?))
            .collect::<anyhow::Result<Vec<_>>>()?;
        if let Err(e) = shardline_aws::dynamo::batch_write(ddb, table, writes).await {
            let e = anyhow::Error::from(e);
            return Err(if written == 0 {
                e.context(in_table(table))
            } else {
                e.context(format!(
                    "labels table {table}: {written} of {} label(s) were written before this failure (and perhaps some of the {} in the failing request); writing them all again is safe, as each event keeps one label",
                    labels.len(),
                    chunk.len()
                ))
            });
        }
        written += chunk.len();
    }
    Ok(())
}

async fn import(file: &Path, by: Option<String>, table: &LabelsTableArgs) -> anyhow::Result<()> {
    let what = file.display().to_string();
    let f = std::fs::File::open(file).with_context(|| format!("opening {what}"))?;
    // Every line is checked before anything is written.
    let records = labelfile::read(BufReader::new(f), &what)?;
    let by = by.filter(|b| !b.is_empty());
    if let Some(b) = &by {
        check_by("labelled_by (--by)", b)?;
    }
    let table = table.resolve()?;
    let sdk = shardline_aws::sdk::load_sdk_config().await;
    let me = caller(&sdk).await?;
    let at = format_rfc3339_ms(now_ms());
    let (mut labels, superseded) = prepare(records, by.as_deref().unwrap_or(&me), &at)?;
    // Who wrote them and when: this import, whatever the file says.
    for l in &mut labels {
        l.recorded_by = Some(me.clone());
        l.recorded_at = Some(at.clone());
    }
    let ddb = aws_sdk_dynamodb::Client::new(&sdk);
    put_labels(&ddb, &table, &labels).await?;
    let fraud = labels.iter().filter(|l| l.label == Verdict::Fraud).count();
    println!(
        "{} label(s) written to {table} ({fraud} fraud, {} legit){}",
        labels.len(),
        labels.len() - fraud,
        if superseded > 0 {
            format!(", {superseded} line(s) superseded by a later line for the same event")
        } else {
            String::new()
        }
    );
    Ok(())
}

async fn export(out: Option<&Path>, table: &LabelsTableArgs) -> anyhow::Result<()> {
    let table = table.resolve()?;
    let sdk = shardline_aws::sdk::load_sdk_config().await;
    let ddb = aws_sdk_dynamodb::Client::new(&sdk);
    let labels = load_table(&ddb, &table).await?;
    let mut body = Vec::new();
    for l in &labels {
        serde_json::to_writer(&mut body, l)?;
        body.push(b'\n');
    }
    match out {
        Some(path) => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            std::fs::write(path, &body).with_context(|| format!("writing {}", path.display()))?;
            eprintln!(
                "{} label(s) from {table} written to {}",
                labels.len(),
                path.display()
            );
        }
        None => {
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(&body)?;
            stdout.flush()?;
        }
    }
    Ok(())
}

/// The caller's identity ARN (STS GetCallerIdentity): every label's `recorded_by`, and
/// its `labelled_by` unless `--by` or the file says.
/// <https://docs.aws.amazon.com/STS/latest/APIReference/API_GetCallerIdentity.html>
async fn caller(sdk: &aws_config::SdkConfig) -> anyhow::Result<String> {
    let id = aws_sdk_sts::Client::new(sdk)
        .get_caller_identity()
        .send()
        .await
        .map_err(aws_sdk_sts::Error::from)
        .context("asking STS who is writing (GetCallerIdentity), recorded with every label: check the credentials")?;
    match id.arn() {
        Some(arn) if !arn.is_empty() => Ok(arn.to_owned()),
        _ => bail!("STS GetCallerIdentity returned no ARN, and every label records who wrote it"),
    }
}

fn to_item(l: &LabelRecord) -> anyhow::Result<HashMap<String, AttributeValue>> {
    serde_dynamo::to_item(l).with_context(|| format!("label of {}", l.event_id))
}

fn in_table(table: &str) -> String {
    format!(
        "labels table {table}: does it exist, and are the credentials and region (or AWS_ENDPOINT_URL) right? Locally, `shardline bootstrap` creates it"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, label: Verdict, by: Option<&str>) -> LabelRecord {
        LabelRecord {
            event_id: id.to_owned(),
            label,
            note: None,
            labelled_by: by.map(str::to_owned),
            labelled_at: None,
            recorded_by: None,
            recorded_at: None,
        }
    }

    #[test]
    fn prepare_keeps_the_last_line_per_event_and_fills_who_and_when() {
        let (out, superseded) = prepare(
            vec![
                rec("b", Verdict::Fraud, Some("arn:x")),
                rec("a", Verdict::Fraud, None),
                rec("b", Verdict::Legit, None),
                rec("c", Verdict::Fraud, Some("")),
            ],
            "arn:me",
            "2026-01-01T00:00:00.000Z",
        )
        .unwrap();
        assert_eq!(superseded, 1);
        let got: Vec<(&str, Verdict, &str)> = out
            .iter()
            .map(|l| {
                (
                    l.event_id.as_str(),
                    l.label,
                    l.labelled_by.as_deref().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("a", Verdict::Fraud, "arn:me"),
                ("b", Verdict::Legit, "arn:me"),
                ("c", Verdict::Fraud, "arn:me"),
            ]
        );
        assert!(
            out.iter()
                .all(|l| l.labelled_at.as_deref() == Some("2026-01-01T00:00:00.000Z"))
        );
    }

    #[test]
    fn prepare_keeps_who_and_when_a_line_gives() {
        let mut r = rec("a", Verdict::Legit, Some("arn:ana"));
        r.labelled_at = Some("2025-05-05T05:05:05.005Z".into());
        let (out, _) = prepare(vec![r.clone()], "arn:me", "now").unwrap();
        assert_eq!(out, [r]);
    }

    #[test]
    fn a_label_item_has_the_file_fields() {
        let l = LabelRecord {
            event_id: "e-1".into(),
            label: Verdict::Fraud,
            note: Some("cb 4837".into()),
            labelled_by: Some("arn:ana".into()),
            labelled_at: Some("2026-11-26T10:00:00.000Z".into()),
            recorded_by: None,
            recorded_at: None,
        };
        let item = to_item(&l).unwrap();
        assert_eq!(item[LABEL_KEY], AttributeValue::S("e-1".into()));
        assert_eq!(item["label"], AttributeValue::S("fraud".into()));
        let back: LabelRecord = serde_dynamo::from_item(item).unwrap();
        assert_eq!(back, l);
        let bare = to_item(&rec("e-2", Verdict::Legit, None)).unwrap();
        assert_eq!(bare.len(), 2, "absent fields are not written: {bare:?}");
    }

    #[test]
    fn event_ids_are_bounded() {
        use crate::labelfile::MAX_EVENT_ID;
        assert!(stored_event_id("").is_err());
        assert!(stored_event_id(&"x".repeat(MAX_EVENT_ID + 1)).is_err());
        assert!(stored_event_id(&"x".repeat(MAX_EVENT_ID)).is_ok());
    }

    #[test]
    fn prepare_checks_what_it_writes() {
        let mut r = rec("4111111111111111", Verdict::Fraud, None);
        r.note = Some("card 4111111111111111".into());
        let (out, _) = prepare(vec![r], "arn:me", "2026-01-01T00:00:00.000Z").unwrap();
        assert_eq!(out[0].event_id, pan_safe_id("4111111111111111"));
        assert_eq!(out[0].note.as_deref(), Some("card [PAN redacted]"));
        let mut long = rec("e", Verdict::Fraud, None);
        long.note = Some("x".repeat(500 * 1024));
        let e = format!("{:#}", prepare(vec![long], "arn:me", "now").unwrap_err());
        assert!(e.contains("label of e") && e.contains("note"), "{e}");
        let mut at = rec("e", Verdict::Fraud, None);
        at.labelled_at = Some("yesterday".into());
        assert!(prepare(vec![at], "arn:me", "now").is_err());
        assert!(prepare(vec![], &"a".repeat(2049), "now").is_err());
    }
}
