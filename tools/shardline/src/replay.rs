//! `shardline replay`: fixtures through a function in process, in-memory stores, state
//! carried from file to file; `--expect` compares with the golden files.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, bail};
use fraud_scorer::{Scorer, ScorerSettings};
use serde_json::{Value, json};
use shardline_core::ports::{NoAlertStream, NoRuleSource};
use shardline_testkit::{MemAlerts, MemProfiles, MemQuarantine, MemWindows};
use window_aggregator::tumbling::is_time_window_event;
use window_aggregator::{Aggregator, AggregatorSettings};

use crate::Function;

/// `shardline replay`.
pub async fn run(function: Function, files: &[PathBuf], expect: bool) -> anyhow::Result<()> {
    run_to(function, files, expect, &mut std::io::stdout()).await
}

/// `shardline replay`, writing its report to `out`.
pub async fn run_to(
    function: Function,
    files: &[PathBuf],
    expect: bool,
    out: &mut (impl Write + Send),
) -> anyhow::Result<()> {
    let mut differs = false;
    match function {
        Function::FraudScorer => {
            let (profiles, alerts, quarantine) = (
                MemProfiles::default(),
                MemAlerts::default(),
                MemQuarantine::default(),
            );
            let scorer = Scorer::new(
                fraud_scorer::Stores {
                    profiles: &profiles,
                    alerts: &alerts,
                    quarantine: &quarantine,
                    rules: NoRuleSource,
                    stream: NoAlertStream,
                },
                ScorerSettings::default(),
            );
            for file in files {
                let before = alerts.snapshot();
                let q_before = quarantine.entries().len();
                let report = scorer
                    .handle(&read(file)?, None)
                    .await
                    .with_context(|| format!("{} is not a Kinesis event", file.display()))?;
                let new: Vec<_> = alerts
                    .snapshot()
                    .into_iter()
                    .filter(|(id, a)| before.get(id) != Some(a))
                    .map(|(_, a)| a)
                    .collect();
                writeln!(out, "{}", file.display())?;
                writeln!(
                    out,
                    "  response: {}",
                    serde_json::to_string(&report.response)?
                )?;
                writeln!(
                    out,
                    "  records {}  scored {}  alerts {}  quarantined {}  replayed {}  duplicates {}",
                    report.outcome.records,
                    report.scored,
                    report.alerts,
                    report.outcome.quarantined,
                    report.replayed,
                    report.duplicates
                )?;
                for a in &new {
                    writeln!(
                        out,
                        "  alert {:<16} score {:>4}  {}",
                        a.alert_id,
                        a.score,
                        a.reasons.join(",")
                    )?;
                }
                print_quarantined(out, &quarantine, q_before)?;
                if expect {
                    let got = json!({
                        "response": serde_json::to_value(&report.response)?,
                        "alerts": new.iter().map(|a| json!({"alert_id": a.alert_id, "score": a.score, "reasons": a.reasons})).collect::<Vec<_>>(),
                    });
                    differs |= !compare(out, file, &got, |want, got| {
                        let tol = want["score_tolerance"].as_i64().unwrap_or(0);
                        let (w, g) = (
                            want["alerts"].as_array().cloned().unwrap_or_default(),
                            got["alerts"].as_array().cloned().unwrap_or_default(),
                        );
                        want["response"] == got["response"]
                            && w.len() == g.len()
                            && w.iter().zip(&g).all(|(w, g)| {
                                w["alert_id"] == g["alert_id"]
                                    && w["reasons"] == g["reasons"]
                                    && (w["score"].as_i64().unwrap_or(0)
                                        - g["score"].as_i64().unwrap_or(0))
                                    .abs()
                                        <= tol
                            })
                    })?;
                }
            }
        }
        Function::WindowAggregator => {
            let (windows, alerts, quarantine) = (
                MemWindows::default(),
                MemAlerts::default(),
                MemQuarantine::default(),
            );
            let agg = Aggregator::new(
                window_aggregator::Stores {
                    windows: &windows,
                    alerts: &alerts,
                    quarantine: &quarantine,
                },
                AggregatorSettings::default(),
            );
            let mut state = json!({});
            for file in files {
                let payload = read(file)?;
                let q_before = quarantine.entries().len();
                writeln!(out, "{}", file.display())?;
                if is_time_window_event(&payload) {
                    // Lambda's tumbling mode: carry the state from the previous response.
                    let mut ev: Value = serde_json::from_slice(&payload)?;
                    ev["state"] = state.clone();
                    let resp = agg
                        .handle_time_window(&serde_json::to_vec(&ev)?, None)
                        .await?;
                    writeln!(out, "  response: {}", serde_json::to_string(&resp)?)?;
                    state = serde_json::to_value(&resp.state)?;
                    print_quarantined(out, &quarantine, q_before)?;
                    continue;
                }
                let report = agg
                    .handle(&payload, None)
                    .await
                    .with_context(|| format!("{} is not a Kinesis event", file.display()))?;
                writeln!(
                    out,
                    "  response: {}",
                    serde_json::to_string(&report.response)?
                )?;
                writeln!(
                    out,
                    "  records {}  windows {}  writes {}  late {}  alerts {}  quarantined {}",
                    report.outcome.records,
                    report.windows_touched,
                    report.partial_writes,
                    report.late,
                    report.alerts,
                    report.outcome.quarantined
                )?;
                print_quarantined(out, &quarantine, q_before)?;
                if expect {
                    let mut totals: BTreeMap<String, Value> = BTreeMap::new();
                    let mut merged: BTreeMap<_, shardline_core::window::Metrics> = BTreeMap::new();
                    for p in windows.partials() {
                        merged
                            .entry(p.window.clone())
                            .or_default()
                            .merge(&p.metrics);
                    }
                    for (w, m) in merged.iter().filter(|(w, _)| !w.key.starts_with("card:")) {
                        totals.insert(
                            format!("{}@{}", w.pk(), w.start_ms),
                            json!({"count": m.count, "late": m.late, "declined": m.declined, "sum": m.total_sum(),
                                   "min": m.currencies.values().map(|c| c.min).min(), "max": m.currencies.values().map(|c| c.max).max()}),
                        );
                    }
                    let got = json!({"response": serde_json::to_value(&report.response)?, "late": report.late, "windows": totals});
                    differs |= !compare(out, file, &got, |want, got| want == got)?;
                }
            }
        }
    }
    if differs {
        bail!("replay differs from a golden file");
    }
    Ok(())
}

/// One line per entry quarantined since the first `from` (poison and late records):
/// where it is in the stream and why, for either function.
fn print_quarantined(
    out: &mut impl Write,
    quarantine: &MemQuarantine,
    from: usize,
) -> anyhow::Result<()> {
    for q in quarantine.entries().iter().skip(from) {
        let sub = if q.sub_sequence_number > 0 {
            format!("/{}", q.sub_sequence_number)
        } else {
            String::new()
        };
        writeln!(
            out,
            "  quarantined seq {}{sub}: {}",
            q.sequence_number, q.reason_text
        )?;
    }
    Ok(())
}

fn read(file: &PathBuf) -> anyhow::Result<Vec<u8>> {
    std::fs::read(file).with_context(|| format!("reading {}", file.display()))
}

fn compare(
    out: &mut impl Write,
    file: &std::path::Path,
    got: &Value,
    same: impl Fn(&Value, &Value) -> bool,
) -> anyhow::Result<bool> {
    let path = file.with_extension("expected.json");
    let want: Value = serde_json::from_slice(
        &std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
    )?;
    let ok = same(&want, got);
    writeln!(
        out,
        "  golden {}: {}",
        path.display(),
        if ok { "match" } else { "DIFFERS" }
    )?;
    if !ok {
        writeln!(out, "  got: {}", serde_json::to_string(got)?)?;
    }
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn replay(function: Function, fixture: &str) -> String {
        let file = shardline_testkit::repo_root().join("events").join(fixture);
        let mut out = Vec::new();
        run_to(function, &[file], false, &mut out)
            .await
            .expect("replay");
        String::from_utf8(out).expect("utf-8")
    }

    #[tokio::test]
    async fn window_aggregator_replay_prints_each_quarantine_reason() {
        let text = replay(
            Function::WindowAggregator,
            "window-aggregator/late-beyond-lateness.json",
        )
        .await;
        let late: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("quarantined seq") && l.contains("late event: windows"))
            .collect();
        assert_eq!(late.len(), 2, "{text}");
    }

    #[tokio::test]
    async fn fraud_scorer_replay_prints_each_quarantine_reason() {
        let text = replay(Function::FraudScorer, "fraud-scorer/poison.json").await;
        for reason in [
            "invalid JSON: EOF while parsing",
            "unknown schema version",
            "negative amount -500",
            "card_token looks like a clear card number",
            "invalid coordinates",
            "missing required field `merchant_id`",
        ] {
            assert!(
                text.lines()
                    .any(|l| l.contains("quarantined seq") && l.contains(reason)),
                "{reason}: {text}"
            );
        }
    }
}
