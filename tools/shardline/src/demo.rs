//! `shardline demo`: the whole pipeline on the local emulators, end to end: resources
//! from the template, labelled synthetic traffic on the input stream, both functions
//! driven by the local event source mapping until idle, and a summary: throughput,
//! decisions by outcome and top reasons, precision and recall per scenario, the busiest merchants' windows,
//! late and quarantined records, and the commands to look further.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Instant;

use anyhow::Context;
use shardline_aws::template::Template;
use shardline_core::alert::Alert;
use shardline_core::window::view::tumbling_rows;
use shardline_core::window::{MINUTE_MS, WindowPartial};

use crate::producer::{PutOptions, put_all};
use crate::runner::{Clients, Mapping, RunOptions, run};
use crate::traffic::{GenConfig, Generated, SCENARIOS, generate};

/// Demo settings.
#[derive(Clone, Debug)]
pub struct DemoConfig {
    /// Background transactions.
    pub events: usize,
    /// Seed.
    pub seed: u64,
    /// Stage of the demo's resources (unique per run by default).
    pub stage: String,
    /// Template path.
    pub template: std::path::PathBuf,
    /// Event-time span of the traffic, ms.
    pub span_ms: i64,
}

/// Scenario -> reason codes that detect it.
fn reasons_for(scenario: &str) -> &'static [&'static str] {
    match scenario {
        "card_testing" => &["CARD_TESTING", "CARD_TESTING_1H"],
        "impossible_travel" => &["IMPOSSIBLE_TRAVEL"],
        "velocity_burst" => &[
            "VELOCITY_1M",
            "VELOCITY_BURST_1M",
            "VELOCITY_15M",
            "NEW_CARD_BURST",
        ],
        "account_takeover" => &["NEW_COUNTRY", "AMOUNT_SPIKE", "DORMANT_TAKEOVER"],
        _ => &[
            "MERCHANT_DECLINE_SPIKE",
            "MERCHANT_DECLINE_RATE",
            "MERCHANT_DECLINE_BURST",
        ],
    }
}

/// Runs the demo and prints the summary.
pub async fn demo(cfg: DemoConfig) -> anyhow::Result<()> {
    crate::common::check_endpoint()?;
    let total = Instant::now();
    let sdk = shardline_aws::sdk::load_sdk_config().await;
    let clients = Clients::new(&sdk);
    let mut t = Template::load(&cfg.template)?;
    t.set_param("Stage", &cfg.stage)?;
    t.set_param("StreamMode", "PROVISIONED")?;
    println!("== shardline demo (stage {}) ==", cfg.stage);
    let report = shardline_aws::bootstrap::bootstrap(&sdk, &mut t)
        .await
        .context("bootstrap (are the emulators up?)")?;
    println!(
        "resources from template.yaml: {} streams, {} tables, {} queues",
        report.streams.len(),
        report.tables.len(),
        report.queues.len()
    );

    // Traffic whose event times end now, so arrival-time checks hold.
    let now_ms = crate::common::now_ms();
    let gen_cfg = GenConfig {
        seed: cfg.seed,
        events: cfg.events,
        end_ms: now_ms,
        span_ms: cfg.span_ms,
        ..GenConfig::default()
    };
    let g = generate(&gen_cfg);
    let stream = t.physical()["InputStream"].reference.clone();
    let put_started = Instant::now();
    put_all(
        &clients.kinesis,
        &stream,
        &g.records,
        &PutOptions {
            progress: true,
            ..PutOptions::default()
        },
    )
    .await?;
    println!(
        "generated {} records ({} valid events, {} duplicates, {} malformed) onto {stream} in {:.1}s",
        g.records.len(),
        g.distinct_events().len(),
        g.records.iter().filter(|r| r.duplicate).count(),
        g.poison_count(),
        put_started.elapsed().as_secs_f64()
    );

    // Both functions through the local event source mapping, concurrently.
    let mut runs = Vec::new();
    for f in t.functions() {
        let m = Mapping::from_template(&f, &t)?;
        let invoker = crate::invoke::in_process(&f, &sdk)?;
        let on_failure = on_failure_url(&t, &m);
        let clients = clients.clone();
        let name = f.binary.clone();
        runs.push(tokio::spawn(async move {
            let started = Instant::now();
            let stats = run(
                m,
                clients,
                invoker,
                on_failure,
                RunOptions {
                    status: false,
                    ..RunOptions::default()
                },
            )
            .await?;
            anyhow::Ok((name, stats, started.elapsed()))
        }));
    }
    println!("\nthroughput (in process, against the emulators):");
    for r in runs {
        let (name, stats, took) = r.await.context("runner panicked")??;
        let n = stats.records.load(std::sync::atomic::Ordering::Relaxed);
        println!(
            "  {name:<18} {n:>7} records in {:>5.1}s = {:>7.0} records/s  ({} batches, {} retries, {} to OnFailure)",
            took.as_secs_f64(),
            n as f64 / took.as_secs_f64(),
            stats.batches.load(std::sync::atomic::Ordering::Relaxed),
            stats.retries.load(std::sync::atomic::Ordering::Relaxed),
            stats.on_failure.load(std::sync::atomic::Ordering::Relaxed),
        );
    }

    let (shadow, alerts): (Vec<Alert>, Vec<Alert>) = scan_alerts(&clients.ddb, &t)
        .await?
        .into_iter()
        .partition(|a| a.source == shardline_core::fraud::SHADOW_SOURCE);
    print_alerts(&alerts, shadow.len());
    print_scores(&g, &alerts);
    print_top_merchants(&clients.ddb, &t).await?;
    print_quarantine(&clients.sqs, &t).await?;
    print_backtest(&clients.ddb, &t, &g, &cfg).await?;
    print_eval();
    println!("\nwhere to look next (emulators kept with `make demo KEEP=1`):");
    println!(
        "  cargo run -q -p shardline -- query windows --param Stage={} --key global --width 5m --last 1h",
        cfg.stage
    );
    println!(
        "  cargo run -q -p shardline -- query windows --param Stage={} --key merchant:<id> --width 15m --sliding",
        cfg.stage
    );
    println!(
        "  cargo run -q -p shardline -- query alerts --param Stage={} --outcome block --limit 10",
        cfg.stage
    );
    println!("\ndemo finished in {:.1}s", total.elapsed().as_secs_f64());
    Ok(())
}

fn on_failure_url(t: &Template, m: &Mapping) -> Option<String> {
    let arn = m.on_failure_arn.as_ref()?;
    t.physical()
        .values()
        .find(|p| &p.arn == arn)
        .map(|p| p.reference.clone())
}

async fn scan_alerts(ddb: &aws_sdk_dynamodb::Client, t: &Template) -> anyhow::Result<Vec<Alert>> {
    let table = crate::common::table_name(t, "AlertsTable")?;
    Ok(serde_dynamo::from_items(
        crate::common::scan_all(ddb, &table).await?,
    )?)
}

/// Decisions by outcome and the reasons behind them, most frequent first.
fn print_alerts(alerts: &[Alert], shadow: usize) {
    use shardline_core::fraud::rules::Outcome;
    let scorer = |o: Outcome| {
        alerts
            .iter()
            .filter(|a| a.source == "fraud-scorer" && a.outcome == o)
            .count()
    };
    println!(
        "\ndecisions: {} on events ({} review, {} block; every other event allowed), {} from window rules, {} by the shadow rule set (stored apart)",
        scorer(Outcome::Review) + scorer(Outcome::Block),
        scorer(Outcome::Review),
        scorer(Outcome::Block),
        alerts.iter().filter(|a| a.source != "fraud-scorer").count(),
        shadow
    );
    let mut by_reason: BTreeMap<&str, [usize; 2]> = BTreeMap::new();
    for a in alerts {
        let col = usize::from(a.outcome == Outcome::Block);
        for r in &a.reasons {
            by_reason.entry(r).or_default()[col] += 1;
        }
    }
    let mut top: Vec<(&str, [usize; 2])> = by_reason.into_iter().collect();
    top.sort_by(|a, b| (b.1[0] + b.1[1]).cmp(&(a.1[0] + a.1[1])).then(a.0.cmp(b.0)));
    println!("  {:<24} {:>7} {:>7}", "top reasons", "review", "block");
    for (r, [review, block]) in top.into_iter().take(12) {
        println!("  {r:<24} {review:>7} {block:>7}");
    }
}

/// Precision and recall per scenario against the generator's labels. Recall counts
/// attacks caught (any alert on one of its events, or on its merchant's window);
/// precision counts alerts with the scenario's reason codes that fall on its labels.
fn print_scores(g: &Generated, alerts: &[Alert]) {
    println!("\ndetection against the labels:");
    let all_labelled: BTreeSet<&str> = g
        .labels
        .iter()
        .filter_map(|l| l.event_id.as_deref())
        .collect();
    println!(
        "  {:<24} {:>7} {:>8} {:>7} {:>10}",
        "scenario", "attacks", "caught", "recall", "precision"
    );
    for s in SCENARIOS {
        let labels: Vec<_> = g.labels.iter().filter(|l| l.scenario == *s).collect();
        let attacks: BTreeSet<&str> = labels.iter().map(|l| l.attack.as_str()).collect();
        let event_attack: HashMap<&str, &str> = labels
            .iter()
            .filter_map(|l| Some((l.event_id.as_deref()?, l.attack.as_str())))
            .collect();
        let merchant_attack: HashMap<String, &str> = labels
            .iter()
            .filter_map(|l| {
                Some((
                    format!("merchant:{}", l.merchant_id.as_deref()?),
                    l.attack.as_str(),
                ))
            })
            .collect();
        let attack_of = |a: &Alert| {
            a.event_id
                .as_deref()
                .and_then(|e| event_attack.get(e))
                .or_else(|| merchant_attack.get(&a.subject))
                .copied()
        };
        let caught: BTreeSet<&str> = alerts.iter().filter_map(attack_of).collect();
        let with_reason: Vec<&Alert> = alerts
            .iter()
            .filter(|a| {
                a.reasons
                    .iter()
                    .any(|r| reasons_for(s).contains(&r.as_str()))
            })
            .collect();
        // An alert on any labelled fraud (whatever its scenario) is not a false positive.
        let hits = with_reason
            .iter()
            .filter(|a| {
                a.event_id
                    .as_deref()
                    .is_some_and(|e| all_labelled.contains(e))
                    || attack_of(a).is_some()
            })
            .count();
        let precision = if with_reason.is_empty() {
            "-".to_owned()
        } else {
            format!("{:.2}", hits as f64 / with_reason.len() as f64)
        };
        let recall = if attacks.is_empty() {
            0.0
        } else {
            caught.len() as f64 / attacks.len() as f64
        };
        println!(
            "  {:<24} {:>7} {:>8} {:>7.2} {:>10}",
            s,
            attacks.len(),
            caught.len(),
            recall,
            precision
        );
    }
    let labelled: BTreeSet<&str> = g
        .labels
        .iter()
        .filter_map(|l| l.event_id.as_deref())
        .collect();
    let scorer: Vec<&Alert> = alerts
        .iter()
        .filter(|a| a.source == "fraud-scorer")
        .collect();
    let tp = scorer
        .iter()
        .filter(|a| a.event_id.as_deref().is_some_and(|e| labelled.contains(e)))
        .count();
    if !scorer.is_empty() {
        println!(
            "  scorer alerts on labelled fraud events: {tp} of {} ({:.2})",
            scorer.len(),
            tp as f64 / scorer.len() as f64
        );
    }
}

async fn print_top_merchants(ddb: &aws_sdk_dynamodb::Client, t: &Template) -> anyhow::Result<()> {
    let table = crate::common::table_name(t, "WindowsTable")?;
    let items = crate::common::scan_all(ddb, &table).await?;
    let partials: Vec<WindowPartial> = items
        .into_iter()
        .filter(|i| {
            i.get("pk")
                .and_then(|p| p.as_s().ok())
                .is_some_and(|p| p.starts_with("merchant:") && p.ends_with("#15m"))
        })
        .filter_map(|i| serde_dynamo::from_item(i).ok())
        .collect();
    let mut by_key: BTreeMap<String, Vec<WindowPartial>> = BTreeMap::new();
    for p in partials {
        by_key.entry(p.window.key.clone()).or_default().push(p);
    }
    let mut rows: Vec<(String, shardline_core::window::view::WindowRow)> = by_key
        .into_iter()
        .flat_map(|(k, ps)| {
            tumbling_rows(&ps, 15 * MINUTE_MS)
                .into_iter()
                .map(move |r| (k.clone(), r))
        })
        .collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.1.count));
    println!("\ntop merchants by 15-minute volume (amounts in cents):");
    println!(
        "  {:<18} {:<24} {:>6} {:>8} {:>8} {:>8} {:>8}",
        "merchant", "window start (UTC)", "count", "declined", "p50", "p95", "p99"
    );
    for (k, r) in rows.iter().take(5) {
        let q = |v: Option<f64>| v.map_or("-".into(), |x| format!("{x:.0}"));
        println!(
            "  {:<18} {:<24} {:>6} {:>8} {:>8} {:>8} {:>8}",
            k,
            shardline_core::event::format_rfc3339_ms(r.start_ms),
            r.count,
            r.declined,
            q(r.p50),
            q(r.p95),
            q(r.p99)
        );
    }
    Ok(())
}

async fn print_quarantine(sqs: &aws_sdk_sqs::Client, t: &Template) -> anyhow::Result<()> {
    let url = t
        .physical()
        .get("QuarantineQueue")
        .map(|p| p.reference.clone())
        .context("no QuarantineQueue")?;
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..1_000 {
        let out = sqs
            .receive_message()
            .queue_url(&url)
            .max_number_of_messages(10)
            .visibility_timeout(300)
            .send()
            .await?;
        if out.messages().is_empty() {
            break;
        }
        for m in out.messages() {
            let v: serde_json::Value =
                serde_json::from_str(m.body().unwrap_or("{}")).unwrap_or_default();
            let kind = v["reason"]["kind"].as_str().unwrap_or("unknown").to_owned();
            *kinds.entry(kind).or_default() += 1;
        }
    }
    let late = kinds.get("late_event").copied().unwrap_or(0);
    println!(
        "\nquarantine: {} poison records, {late} late events (side output); by reason:",
        kinds.values().sum::<usize>() - late
    );
    for (k, n) in kinds {
        println!("  {k:<24} {n:>6}");
    }
    Ok(())
}

/// The demo's last step, a rule change tried before it goes live: the generator's
/// ground truth goes into the labels table as an analyst's labels would, the traffic into
/// an NDJSON file as an archive would hold it, and `rules/fraud-candidate.json` is
/// backtested against the live rule set over both.
async fn print_backtest(
    ddb: &aws_sdk_dynamodb::Client,
    t: &Template,
    g: &Generated,
    cfg: &DemoConfig,
) -> anyhow::Result<()> {
    use crate::labelfile::{LabelRecord, Verdict};
    let dir = std::path::Path::new(".local-run");
    std::fs::create_dir_all(dir)?;
    let traffic = dir.join("demo-traffic.ndjson");
    let mut text = Vec::new();
    for r in &g.records {
        text.extend_from_slice(&r.data);
        text.push(b'\n');
    }
    std::fs::write(&traffic, text).with_context(|| format!("writing {}", traffic.display()))?;
    let now = shardline_core::event::format_rfc3339_ms(crate::common::now_ms());
    let truth: Vec<LabelRecord> = g
        .labels
        .iter()
        .filter_map(|l| {
            Some(LabelRecord {
                event_id: l.event_id.clone()?,
                label: Verdict::Fraud,
                note: Some(format!("generator ground truth: {}", l.scenario)),
                labelled_by: None,
                labelled_at: None,
                recorded_by: None,
                recorded_at: None,
            })
        })
        .collect();
    let (labels, _) = crate::labels::prepare(truth, "shardline demo", &now)?;
    let table = crate::common::table_name(t, "LabelsTable")?;
    crate::labels::put_labels(ddb, &table, &labels).await?;
    let root = cfg
        .template
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    let candidate = root.join("rules/fraud-candidate.json");
    let args = crate::backtest::BacktestArgs {
        rules: candidate.clone(),
        baseline: "live".to_owned(),
        events: vec![traffic.display().to_string()],
        labels: None,
        labels_table: true,
        unlabelled: crate::backtest::UnlabelledArg::Legit,
        reorder: 5 * 60_000,
        sample: 5,
        stored_lists: true,
        json: false,
        template: crate::common::TemplateArgs {
            template: cfg.template.clone(),
            params: vec![format!("Stage={}", cfg.stage)],
        },
    };
    let report = crate::backtest::report(&args, false).await?;
    println!(
        "\nbacktest: {} against the live rules over this demo's traffic, with the generator's ground truth as {} labels in {table}:",
        candidate.display(),
        labels.len()
    );
    for line in crate::backtest::render(&report).lines() {
        println!("  {line}");
    }
    println!(
        "  again: cargo run -q -p shardline -- backtest --rules {} --baseline live --events {} --labels-table --param Stage={}",
        candidate.display(),
        traffic.display(),
        cfg.stage
    );
    Ok(())
}

/// Detection across attack families, beyond this demo's own traffic: `shardline eval` on
/// three seeds with the shipped rules.
fn print_eval() {
    let cfg = crate::eval::EvalConfig {
        seeds: vec![1, 2, 3],
        ..crate::eval::EvalConfig::default()
    };
    let report = crate::eval::run(
        &cfg,
        &shardline_core::fraud::rules::Policy::of(
            shardline_core::fraud::rules::RuleSet::default_rules(),
        ),
        &shardline_core::window::rules::WindowRuleSet::default_rules(),
    );
    println!("\ndetection across attack families and look-alikes (`shardline eval`, 3 seeds):");
    for line in crate::eval::render(&report).lines().skip(1) {
        println!("  {line}");
    }
}
