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
//!
//! No card number is kept: an event id holding one is taken in its PAN-safe form
//! ([`pan_safe_id`], as alerts and backtest reports show the event), and card numbers
//! in notes are redacted. Every field is bounded, so a label always fits a DynamoDB item.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::BufRead;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use shardline_core::event::{PAN_MARKER, pan_safe_id, redact_pans_str};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

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
    /// Who wrote it to the labels table: the writer's IAM identity ARN (STS
    /// GetCallerIdentity), whatever the file or `--by` says of who labelled it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recorded_by: Option<String>,
    /// When it was written to the labels table (RFC 3339, UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recorded_at: Option<String>,
}

/// A line as read: a label, or a generator ground-truth line.
#[derive(Deserialize)]
struct Line {
    event_id: Option<String>,
    label: Option<String>,
    note: Option<String>,
    labelled_by: Option<String>,
    labelled_at: Option<String>,
    recorded_by: Option<String>,
    recorded_at: Option<String>,
    scenario: Option<String>,
}

/// Longest event id accepted (the `txn.v1` limit).
pub const MAX_EVENT_ID: usize = 128;
/// Longest stored event id: the PAN-safe form of an id holding card numbers is longer
/// than the id (each becomes [`PAN_MARKER`], and a hash is appended).
pub const MAX_STORED_EVENT_ID: usize = 2 * MAX_EVENT_ID;
/// Longest note, in characters.
pub const MAX_NOTE_CHARS: usize = 1000;
/// Longest `labelled_by`, in bytes (an IAM ARN is at most 2048 characters).
pub const MAX_BY_BYTES: usize = 2048;
/// Longest `labelled_at`, in bytes.
pub const MAX_AT_BYTES: usize = 64;
/// Longest line read; a longer one is a bad line.
pub const MAX_LINE_BYTES: usize = 64 * 1024;
/// Bad lines whose reasons an error shows (all are counted).
pub const MAX_SHOWN_ERRORS: usize = 20;

/// The event id as stored and looked up: 1 to [`MAX_EVENT_ID`] bytes, in its PAN-safe
/// form ([`pan_safe_id`]: unchanged unless it holds a card number). A PAN-safe form
/// given again (an export re-imported) is taken as it is, up to
/// [`MAX_STORED_EVENT_ID`] bytes.
pub fn stored_event_id(id: &str) -> anyhow::Result<String> {
    let safe = pan_safe_id(id);
    let already_safe = matches!(safe, Cow::Borrowed(_)) && id.contains(PAN_MARKER);
    let max = if already_safe {
        MAX_STORED_EVENT_ID
    } else {
        MAX_EVENT_ID
    };
    if id.is_empty() || id.len() > max {
        bail!("event_id must be 1 to {MAX_EVENT_ID} bytes");
    }
    Ok(safe.into_owned())
}

/// A note as stored: card numbers redacted, then at most [`MAX_NOTE_CHARS`] characters
/// (counted after redaction, so a stored note is always taken again as it is).
pub fn stored_note(note: &str) -> anyhow::Result<String> {
    let redacted = redact_pans_str(note);
    let n = redacted.chars().count();
    if n > MAX_NOTE_CHARS {
        bail!("note is {n} characters, over the {MAX_NOTE_CHARS}-character limit");
    }
    Ok(redacted.into_owned())
}

/// `labelled_by` (or `recorded_by`): at most [`MAX_BY_BYTES`] bytes.
pub fn check_by(field: &str, by: &str) -> anyhow::Result<()> {
    if by.len() > MAX_BY_BYTES {
        bail!(
            "{field} is {} bytes, over the {MAX_BY_BYTES}-byte limit",
            by.len()
        );
    }
    Ok(())
}

/// `labelled_at` (or `recorded_at`): empty (filled when written) or an RFC 3339 time
/// (`2026-11-26T10:00:00.000Z`), at most [`MAX_AT_BYTES`] bytes.
pub fn check_at(field: &str, at: &str) -> anyhow::Result<()> {
    if at.is_empty() {
        return Ok(());
    }
    if at.len() > MAX_AT_BYTES || OffsetDateTime::parse(at, &Rfc3339).is_err() {
        bail!(
            "{field} {:?} is not an RFC 3339 time like 2026-11-26T10:00:00.000Z",
            Cow::from(at.chars().take(MAX_AT_BYTES).collect::<String>())
        );
    }
    Ok(())
}

/// Parses one line: `Ok(None)` for a blank line or a merchant-level ground-truth line.
/// The event id is taken in its PAN-safe form and card numbers in the note are
/// redacted; the note, who and when are checked ([`stored_note`], [`check_by`],
/// [`check_at`]).
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
    let event_id = stored_event_id(&l.event_id.context("no \"event_id\"")?)?;
    let note = l.note.as_deref().map(stored_note).transpose()?;
    for (field, v) in [
        ("labelled_by", &l.labelled_by),
        ("recorded_by", &l.recorded_by),
    ] {
        check_by(field, v.as_deref().unwrap_or_default())?;
    }
    for (field, v) in [
        ("labelled_at", &l.labelled_at),
        ("recorded_at", &l.recorded_at),
    ] {
        check_at(field, v.as_deref().unwrap_or_default())?;
    }
    Ok(Some(LabelRecord {
        event_id,
        label,
        note,
        labelled_by: l.labelled_by,
        labelled_at: l.labelled_at,
        recorded_by: l.recorded_by,
        recorded_at: l.recorded_at,
    }))
}

/// Reads one line into `buf` (cleared first, without its `\n`), holding at most `max`
/// bytes of it: `Ok(None)` at the end of the input, else `Ok(Some(too_long))`; a longer
/// line is read to its end but not kept (`buf` is left empty).
fn read_bounded_line(
    r: &mut impl BufRead,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Option<bool>> {
    buf.clear();
    let (mut any, mut too_long) = (false, false);
    loop {
        let avail = match r.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if avail.is_empty() {
            return Ok(any.then_some(too_long));
        }
        any = true;
        let newline = avail.iter().position(|&b| b == b'\n');
        let part = &avail[..newline.unwrap_or(avail.len())];
        if !too_long {
            if buf.len() + part.len() > max {
                too_long = true;
                buf.clear();
            } else {
                buf.extend_from_slice(part);
            }
        }
        let used = newline.map_or(avail.len(), |i| i + 1);
        r.consume(used);
        if newline.is_some() {
            return Ok(Some(too_long));
        }
    }
}

/// Reads a labels NDJSON; if any line is bad, none is taken, and the error counts them
/// and shows the first [`MAX_SHOWN_ERRORS`] (line number and why). A line longer than
/// [`MAX_LINE_BYTES`] is a bad line, never held whole. A later line for the same event
/// wins (a relabel).
pub fn read(mut r: impl BufRead, what: &str) -> anyhow::Result<Vec<LabelRecord>> {
    let mut out = Vec::new();
    let mut shown: Vec<String> = Vec::new();
    let mut bad = 0usize;
    let mut buf = Vec::new();
    let mut n = 0usize;
    while let Some(too_long) = read_bounded_line(&mut r, &mut buf, MAX_LINE_BYTES)
        .with_context(|| format!("reading {what}"))?
    {
        n += 1;
        let parsed = if too_long {
            Err(anyhow::anyhow!(
                "line longer than {MAX_LINE_BYTES} bytes (a label is far shorter)"
            ))
        } else {
            std::str::from_utf8(&buf)
                .context("not UTF-8")
                .and_then(parse_line)
        };
        match parsed {
            Ok(Some(l)) => out.push(l),
            Ok(None) => {}
            Err(e) => {
                bad += 1;
                if shown.len() < MAX_SHOWN_ERRORS {
                    shown.push(format!("{what}:{n}: {e:#}"));
                }
            }
        }
    }
    if bad > 0 {
        let more = if bad > shown.len() {
            format!("\n... and {} more", bad - shown.len())
        } else {
            String::new()
        };
        bail!(
            "{bad} bad label line(s), nothing taken:\n{}{more}",
            shown.join("\n")
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

    #[test]
    fn a_card_number_as_event_id_or_in_a_note_is_never_kept() {
        let pan = "4111111111111111";
        let safe = shardline_core::event::pan_safe_id(pan).into_owned();
        assert_ne!(safe, pan);
        let text = concat!(
            r#"{"event_id":"4111111111111111","label":"fraud","note":"card 4111 1111 1111 1111 used abroad"}"#,
            "\n",
            r#"{"scenario":"card_testing","attack":"ct-1","event_id":"4111-1111-1111-1111"}"#,
            "\n",
            r#"{"event_id":"e-1","label":"legit","note":"case 4837"}"#,
            "\n",
        );
        let l = read(text.as_bytes(), "t").unwrap();
        assert_eq!(l[0].event_id, safe);
        assert_eq!(
            l[0].note.as_deref(),
            Some("card [PAN redacted] used abroad")
        );
        assert_eq!(
            l[1].event_id,
            shardline_core::event::pan_safe_id("4111-1111-1111-1111")
        );
        assert_eq!(l[2].event_id, "e-1");
        assert_eq!(l[2].note.as_deref(), Some("case 4837"));
        for r in &l {
            let line = serde_json::to_string(r).unwrap();
            assert!(!line.contains("4111") && !line.contains("1111"), "{line}");
        }
        // The PAN-safe form reads back as itself (an export imports back as it is), even
        // when it is longer than an event id may be.
        let again = serde_json::to_string(&l[0]).unwrap();
        assert_eq!(read(again.as_bytes(), "t").unwrap()[0], l[0]);
        let long = format!("{}-{pan}", "x".repeat(MAX_EVENT_ID - pan.len() - 1));
        assert_eq!(long.len(), MAX_EVENT_ID);
        let stored = parse_line(&format!(r#"{{"event_id":"{long}","label":"fraud"}}"#))
            .unwrap()
            .unwrap();
        assert!(stored.event_id.len() > MAX_EVENT_ID, "{}", stored.event_id);
        let line = serde_json::to_string(&stored).unwrap();
        assert_eq!(parse_line(&line).unwrap().unwrap(), stored);
        // by_event keys are what the backtest looks up: pan_safe_id(event_id).
        assert_eq!(by_event(l)[&safe], Verdict::Fraud);
    }

    #[test]
    fn notes_who_and_when_are_bounded_and_checked() {
        let ok = |extra: &str| parse_line(&format!(r#"{{"event_id":"e","label":"fraud"{extra}}}"#));
        let note = |n: usize| format!(r#","note":"{}""#, "\u{e9}".repeat(n));
        assert!(ok(&note(MAX_NOTE_CHARS)).is_ok());
        let e = format!("{:#}", ok(&note(MAX_NOTE_CHARS + 1)).unwrap_err());
        assert!(e.contains("note") && e.contains("1000-character"), "{e}");
        // Counted once redacted: a stored note at the limit is taken again as it is.
        let pans = "4111111111111111 x ".repeat(40);
        let stored = stored_note(&pans[..pans.len() - 3]).unwrap();
        assert!(stored.chars().count() <= MAX_NOTE_CHARS && !stored.contains("4111"));
        assert_eq!(stored_note(&stored).unwrap(), stored);
        let by = |n: usize| format!(r#","labelled_by":"{}""#, "a".repeat(n));
        assert!(ok(&by(MAX_BY_BYTES)).is_ok());
        let e = format!("{:#}", ok(&by(MAX_BY_BYTES + 1)).unwrap_err());
        assert!(e.contains("labelled_by") && e.contains("2048-byte"), "{e}");
        for good in [
            "2026-11-26T10:00:00.000Z",
            "2026-11-26T10:00:00Z",
            "2026-11-26T11:00:00.5+01:00",
        ] {
            let r = ok(&format!(r#","labelled_at":"{good}""#)).unwrap().unwrap();
            assert_eq!(r.labelled_at.as_deref(), Some(good), "kept as given");
        }
        for bad in [
            "yesterday",
            "2026-11-26",
            "1764151200123",
            "2026-11-26T10:00:00",
            "2026-02-30T10:00:00Z",
            "2026-11-26T10:00:00.0000000000000000000000000000000000000000000000000000000000001Z",
        ] {
            let e = format!(
                "{:#}",
                ok(&format!(r#","labelled_at":"{bad}""#)).unwrap_err()
            );
            assert!(
                e.contains("labelled_at") && e.contains("RFC 3339"),
                "{bad}: {e}"
            );
        }
        // Checked where a file gives them: the line is named.
        let mut text = String::new();
        for i in 0..29 {
            text.push_str(&format!("{{\"event_id\":\"e-{i}\",\"label\":\"fraud\"}}\n"));
        }
        text.push_str(&format!(
            "{{\"event_id\":\"e-29\",\"label\":\"fraud\"{}}}\n",
            note(MAX_NOTE_CHARS + 1)
        ));
        let e = format!("{:#}", read(text.as_bytes(), "f").unwrap_err());
        assert!(
            e.contains("1 bad label line(s)") && e.contains("f:30: "),
            "{e}"
        );
    }

    #[test]
    fn a_long_line_is_a_bad_line_and_errors_are_counted_past_those_shown() {
        // A 1 MiB line between two good ones: refused, not parsed, the next line read.
        let mut text = String::from("{\"event_id\":\"a\",\"label\":\"fraud\"}\n");
        text.push_str(r#"{"event_id":"b","label":"fraud","note":""#);
        text.push_str(&"x".repeat(1 << 20));
        text.push_str("\"}\n{\"event_id\":\"c\",\"label\":\"maybe\"}\n");
        let e = format!("{:#}", read(text.as_bytes(), "f").unwrap_err());
        assert!(e.contains("2 bad label line(s)"), "{e}");
        assert!(
            e.contains("f:2: ") && e.contains(&format!("longer than {MAX_LINE_BYTES} bytes")),
            "{e}"
        );
        assert!(e.contains("f:3: ") && e.contains("fraud or legit"), "{e}");
        assert!(
            e.len() < 4096,
            "the long line is not quoted: {} bytes",
            e.len()
        );
        // The same without a final newline, and one byte under the bound is a line.
        let unterminated = format!(
            "{{\"event_id\":\"a\",\"label\":\"fraud\"}}\n{}",
            "x".repeat(1 << 20)
        );
        let e = format!("{:#}", read(unterminated.as_bytes(), "f").unwrap_err());
        assert!(
            e.contains("1 bad label line(s)") && e.contains("f:2: "),
            "{e}"
        );
        let fits = format!(
            r#"{{"event_id":"a","label":"fraud","pad":"{}"}}"#,
            "x".repeat(MAX_LINE_BYTES - 42)
        );
        assert_eq!(fits.len() + "\r".len(), MAX_LINE_BYTES);
        assert_eq!(
            read(format!("{fits}\r\n").as_bytes(), "f").unwrap().len(),
            1
        );

        // 25 bad lines: all counted, the first 20 shown.
        let bad = "not json\n".repeat(25);
        let e = format!("{:#}", read(bad.as_bytes(), "f").unwrap_err());
        assert!(e.contains("25 bad label line(s)"), "{e}");
        assert!(e.contains("f:20: ") && !e.contains("f:21: "), "{e}");
        assert!(e.contains("and 5 more"), "{e}");
        // A line that is not UTF-8 is a bad line too.
        let e = format!("{:#}", read(&b"\xff\xfe\n"[..], "f").unwrap_err());
        assert!(
            e.contains("1 bad label line(s)") && e.contains("f:1: "),
            "{e}"
        );
    }
}
