//! `shardline`: the command line for working with shardline locally.
//!
//! - `shardline bootstrap` creates the streams, tables and queues of `template.yaml` in
//!   the endpoint the AWS SDK is pointed at (the local emulators), idempotently.
//! - `shardline replay` runs a function in process on Lambda event fixtures, exactly the
//!   handler that is deployed, against in-memory stores, and prints the response.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use fraud_scorer::{Scorer, ScorerSettings, Stores};
use serde_json::json;
use shardline_aws::template::Template;
use shardline_core::ports::{NoAlertStream, NoRuleSource};
use shardline_testkit::{MemAlerts, MemProfiles, MemQuarantine};

#[derive(Parser)]
#[command(
    name = "shardline",
    version,
    about = "Real-time fraud scoring on Kinesis + Lambda: local tooling"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create template.yaml's streams, tables and queues in the local emulators.
    Bootstrap {
        /// The SAM template.
        #[arg(long, default_value = "template.yaml")]
        template: PathBuf,
        /// Template parameters, NAME=VALUE (e.g. Stage=dev).
        #[arg(long = "param", value_name = "NAME=VALUE")]
        params: Vec<String>,
    },
    /// Run a function in process on fixture files (KinesisEvent JSON), in order, with
    /// state carried from one file to the next.
    Replay {
        /// The function.
        #[arg(value_enum)]
        function: Function,
        /// Fixture files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Compare with a golden file (`<fixture>.expected.json`) and fail on a difference.
        #[arg(long)]
        expect: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Function {
    FraudScorer,
}

fn check_endpoint() -> anyhow::Result<()> {
    if std::env::var_os("AWS_ENDPOINT_URL").is_none() {
        bail!(
            "AWS_ENDPOINT_URL is not set: run `make up` and export the variables it prints (or use infra/local/with-emulators.sh)"
        );
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shardline_aws::telemetry::init_tracing();
    match Cli::parse().command {
        Command::Bootstrap { template, params } => {
            check_endpoint()?;
            let mut t = Template::load(&template)
                .with_context(|| format!("reading {}", template.display()))?;
            for p in params {
                let (k, v) = p
                    .split_once('=')
                    .with_context(|| format!("--param {p}: expected NAME=VALUE"))?;
                t.set_param(k, v)?;
            }
            let sdk = shardline_aws::sdk::load_sdk_config().await;
            let report = shardline_aws::bootstrap::bootstrap(&sdk, &mut t)
                .await
                .context("bootstrap failed (are the emulators up? `make up`)")?;
            for (kind, list) in [
                ("stream", &report.streams),
                ("table", &report.tables),
                ("queue", &report.queues),
            ] {
                for (name, created) in list {
                    println!(
                        "{:<7} {:<40} {}",
                        kind,
                        name,
                        if *created { "created" } else { "exists" }
                    );
                }
            }
            for f in t.functions() {
                println!(
                    "function {} ({}): {} env vars, {} Kinesis mapping(s)",
                    f.name,
                    f.binary,
                    f.environment.len(),
                    f.kinesis_events.len()
                );
            }
        }
        Command::Replay {
            function: Function::FraudScorer,
            files,
            expect,
        } => {
            let (profiles, alerts, quarantine) = (
                MemProfiles::default(),
                MemAlerts::default(),
                MemQuarantine::default(),
            );
            let scorer = Scorer::new(
                Stores {
                    profiles: &profiles,
                    alerts: &alerts,
                    quarantine: &quarantine,
                    rules: NoRuleSource,
                    stream: NoAlertStream,
                },
                ScorerSettings::default(),
            );
            let mut failed = false;
            for file in &files {
                let before = alerts.snapshot();
                let q_before = quarantine.entries().len();
                let payload =
                    std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
                let report = scorer
                    .handle(&payload, None)
                    .await
                    .with_context(|| format!("{} is not a Kinesis event", file.display()))?;
                let new_alerts: Vec<_> = alerts
                    .snapshot()
                    .into_iter()
                    .filter(|(id, a)| before.get(id) != Some(a))
                    .map(|(_, a)| a)
                    .collect();
                println!("{}", file.display());
                println!("  response: {}", serde_json::to_string(&report.response)?);
                println!(
                    "  records {}  scored {}  alerts {}  quarantined {}  replayed {}  duplicates {}",
                    report.outcome.records,
                    report.scored,
                    report.alerts,
                    report.outcome.quarantined,
                    report.replayed,
                    report.duplicates
                );
                for a in &new_alerts {
                    println!(
                        "  alert {:<16} score {:>4}  {}",
                        a.alert_id,
                        a.score,
                        a.reasons.join(",")
                    );
                }
                for q in quarantine.entries().iter().skip(q_before) {
                    println!("  quarantined seq {}: {}", q.sequence_number, q.reason_text);
                }
                if expect {
                    let golden_path = file.with_extension("expected.json");
                    let golden: serde_json::Value = serde_json::from_slice(
                        &std::fs::read(&golden_path)
                            .with_context(|| format!("reading {}", golden_path.display()))?,
                    )?;
                    let got_alerts: Vec<_> = new_alerts.iter().map(|a| json!({"alert_id": a.alert_id, "score": a.score, "reasons": a.reasons})).collect();
                    let tol = golden["score_tolerance"].as_i64().unwrap_or(0);
                    let want = golden["alerts"].as_array().cloned().unwrap_or_default();
                    let same = want.len() == got_alerts.len()
                        && want.iter().zip(&got_alerts).all(|(w, g)| {
                            w["alert_id"] == g["alert_id"]
                                && w["reasons"] == g["reasons"]
                                && (w["score"].as_i64().unwrap_or(0)
                                    - g["score"].as_i64().unwrap_or(0))
                                .abs()
                                    <= tol
                        })
                        && golden["response"] == serde_json::to_value(&report.response)?;
                    println!(
                        "  golden {}: {}",
                        golden_path.display(),
                        if same { "match" } else { "DIFFERS" }
                    );
                    failed |= !same;
                }
            }
            if failed {
                bail!("replay differs from a golden file");
            }
        }
    }
    Ok(())
}
