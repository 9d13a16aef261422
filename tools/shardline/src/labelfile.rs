//! The labels NDJSON: one line per labelled event, what `shardline labels export`
//! writes, `shardline labels import` and `shardline backtest --labels` read.
//!
//! ```text
//! {"event_id":"e-1","label":"fraud","note":"chargeback 4837","labelled_by":"arn:aws:iam::1:user/ana","labelled_at":"2026-11-26T10:00:00.000Z"}
//! {"event_id":"e-2","label":"legit"}
//! ```
//!
//! The generator's ground truth (`shardline traffic --labels`, lines with `scenario`,
//! `attack` and `event_id`) reads as `fraud` labels; its merchant-level lines (no event
//! id) are not event labels and are skipped.

use std::collections::HashMap;
use std::io::BufRead;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// What an event really was.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Confirmed fraud (a chargeback, a customer's report, an analyst's call).
    Fraud,
    /// Confirmed genuine.
    Legit,
}

impl Verdict {
    /// `fraud` or `legit`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fraud => "fraud",
            Self::Legit => "legit",
        }
    }
}

impl std::str::FromStr for Verdict {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fraud" => Ok(Self::Fraud),
            "legit" => Ok(Self::Legit),
            _ => Err(format!("{s:?}: a label is fraud or legit")),
        }
    }
}

/// One label.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelRecord {
    /// The labelled event's id (as in the `txn.v1` event).
    pub event_id: String,
    /// What it was.
    pub label: Verdict,
    /// Free text (a case number, a reason).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Who labelled it (an IAM principal's ARN when written through the CLI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labelled_by: Option<String>,
    /// When (RFC 3339, UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labelled_at: Option<String>,
}

/// A line as read: a label, or a generator ground-truth line.
#[derive(Deserialize)]
struct Line {
    event_id: Option<String>,
    label: Option<String>,
    note: Option<String>,
    labelled_by: Option<String>,
    labelled_at: Option<String>,
    scenario: Option<String>,
}

/// Longest event id accepted (the `txn.v1` limit).
pub const MAX_EVENT_ID: usize = 128;

/// Parses one line: `Ok(None)` for a blank line or a merchant-level ground-truth line.
pub fn parse_line(line: &str) -> anyhow::Result<Option<LabelRecord>> {
    let line = line.trim();
    if line.is_empty() {
        return Ok(None);
    }
    let l: Line = serde_json::from_str(line).context("not a JSON object")?;
    let label = match (&l.label, &l.scenario) {
        (Some(v), _) => v.parse::<Verdict>().map_err(anyhow::Error::msg)?,
        (None, Some(_)) if l.event_id.is_none() => return Ok(None),
        (None, Some(_)) => Verdict::Fraud,
        (None, None) => bail!("no \"label\" (fraud or legit)"),
    };
    let event_id = l.event_id.context("no \"event_id\"")?;
    if event_id.is_empty() || event_id.len() > MAX_EVENT_ID {
        bail!("event_id must be 1 to {MAX_EVENT_ID} bytes");
    }
    Ok(Some(LabelRecord {
        event_id,
        label,
        note: l.note,
        labelled_by: l.labelled_by,
        labelled_at: l.labelled_at,
    }))
}

/// Reads a labels NDJSON; every bad line is reported (line number and why) and none is
/// taken. A later line for the same event wins (a relabel).
pub fn read(r: impl BufRead, what: &str) -> anyhow::Result<Vec<LabelRecord>> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (i, line) in r.lines().enumerate() {
        let line = line.with_context(|| format!("reading {what}"))?;
        match parse_line(&line) {
            Ok(Some(l)) => out.push(l),
            Ok(None) => {}
            Err(e) => errors.push(format!("{what}:{}: {e:#}", i + 1)),
        }
    }
    if !errors.is_empty() {
        let shown = errors
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n");
        bail!(
            "{} bad label line(s), nothing taken:\n{shown}",
            errors.len()
        );
    }
    Ok(out)
}

/// The verdict per event id, the last line for an id winning.
pub fn by_event(labels: impl IntoIterator<Item = LabelRecord>) -> HashMap<String, Verdict> {
    labels.into_iter().map(|l| (l.event_id, l.label)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_labels_and_ground_truth_and_reports_bad_lines() {
        let text = concat!(
            r#"{"event_id":"a","label":"fraud","note":"cb"}"#,
            "\n\n",
            r#"{"event_id":"b","label":"legit"}"#,
            "\n",
            r#"{"scenario":"card_testing","attack":"ct-1","event_id":"c"}"#,
            "\n",
            r#"{"scenario":"merchant_decline_spike","attack":"ds-1","merchant_id":"m"}"#,
            "\n",
            r#"{"event_id":"a","label":"legit"}"#,
            "\n",
        );
        let l = read(text.as_bytes(), "t").unwrap();
        assert_eq!(l.len(), 4);
        assert_eq!(l[0].note.as_deref(), Some("cb"));
        let m = by_event(l);
        assert_eq!(m["a"], Verdict::Legit, "the later line wins");
        assert_eq!(m["b"], Verdict::Legit);
        assert_eq!(m["c"], Verdict::Fraud);
        let bad = "{\"event_id\":\"a\",\"label\":\"maybe\"}\nnot json\n{\"label\":\"fraud\"}\n";
        let e = format!("{:#}", read(bad.as_bytes(), "f").unwrap_err());
        assert!(e.contains("3 bad label line(s)"), "{e}");
        assert!(e.contains("f:1:") && e.contains("fraud or legit"), "{e}");
        assert!(e.contains("f:2:") && e.contains("f:3:"), "{e}");
    }
}
