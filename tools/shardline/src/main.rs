//! `shardline`: the command line for working with shardline locally.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use shardline::common::{TemplateArgs, check_endpoint, now_ms};
use shardline::producer::{PutOptions, put_all};
use shardline::runner::{Clients, Mapping, RunOptions, http_invoker, run};
use shardline::traffic::{GenConfig, generate, summary};
use shardline::{Function, common, demo, query, replay};
use std::io::IsTerminal;

#[derive(Parser)]
#[command(
    name = "shardline",
    version,
    about = "Real-time fraud scoring and windowed aggregation on Kinesis + Lambda: local tooling"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Out {
    /// PutRecords onto the template's input stream.
    Stream,
    /// One JSON event per line.
    Ndjson,
    /// Lambda KinesisEvent fixture files.
    Fixtures,
}

#[derive(Subcommand)]
enum Command {
    /// Create template.yaml's streams, tables and queues in the local emulators.
    Bootstrap {
        #[command(flatten)]
        template: TemplateArgs,
        /// Also write each function's environment to <DIR>/<function>.env (for
        /// `cargo lambda watch --env-file`).
        #[arg(long, value_name = "DIR")]
        env_dir: Option<PathBuf>,
    },
    /// Generate labelled synthetic transaction traffic.
    Gen {
        /// Background transactions (fraud scenarios add a few hundred).
        #[arg(long, default_value_t = 20_000)]
        events: usize,
        /// Seed: the same seed gives the same traffic.
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Cards in the population.
        #[arg(long, default_value_t = 10_000)]
        cards: usize,
        /// Merchants in the population.
        #[arg(long, default_value_t = 400)]
        merchants: usize,
        /// Event-time span, ending now.
        #[arg(long, default_value = "60m", value_parser = query::parse_duration_ms)]
        span: i64,
        /// Rate multiplier of the burst.
        #[arg(long, default_value_t = 3.0)]
        peak_factor: f64,
        /// Where the records go.
        #[arg(long, value_enum, default_value = "stream")]
        out: Out,
        /// Output file (ndjson) or folder (fixtures).
        #[arg(long, default_value = ".local-run/traffic")]
        path: PathBuf,
        /// Records per fixture file.
        #[arg(long, default_value_t = 500)]
        batch_size: usize,
        /// The ground-truth labels (NDJSON), never in the events.
        #[arg(long, default_value = ".local-run/labels.ndjson")]
        labels: PathBuf,
        /// Records per second onto the stream (0: as fast as it takes them).
        #[arg(long, default_value_t = 0)]
        rate: u64,
        /// KPL-aggregate the records.
        #[arg(long)]
        kpl: bool,
        #[command(flatten)]
        template: TemplateArgs,
    },
    /// The local event source mapping: read the stream's shards and invoke the functions
    /// as Lambda does.
    Run {
        /// Only this function (default: every function of the template).
        #[arg(value_enum)]
        function: Option<Function>,
        /// Invoke through the Lambda Invoke API at this URL (e.g. http://127.0.0.1:9000
        /// for `cargo lambda watch`) instead of in process.
        #[arg(long)]
        invoke: Option<String>,
        /// Stop when every shard is drained.
        #[arg(long)]
        until_idle: bool,
        /// Stop after this long in any case.
        #[arg(long, default_value = "60m", value_parser = query::parse_duration_ms)]
        max_duration: i64,
        #[command(flatten)]
        template: TemplateArgs,
    },
    /// Run a function in process on fixture files, state carried from file to file.
    Replay {
        /// The function.
        #[arg(value_enum)]
        function: Function,
        /// Fixture files (Lambda Kinesis events).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Compare with each fixture's golden file (`<fixture>.expected.json`).
        #[arg(long)]
        expect: bool,
    },
    /// Read stored results.
    #[command(subcommand)]
    Query(query::Query),
    /// Named allow and block lists (cards, merchants, countries, MCCs, BIN prefixes)
    /// that rules test with `in @name`: add, remove, show, import.
    #[command(subcommand)]
    Lists(shardline::lists::Lists),
    /// Rule sets: validate a file with the function's loader, publish it (live or in
    /// shadow), show what is published, the language reference.
    #[command(subcommand)]
    Rules(shardline::rules::Rules),
    /// Detection across attack families: recall per family and parameter range, the
    /// false-positive rate of benign look-alikes, precision and background alert rate,
    /// over several seeds, against the targets.
    Eval {
        /// Seeds (1..=N), one traffic set each.
        #[arg(long, default_value_t = 5)]
        seeds: u64,
        /// Background events per seed.
        #[arg(long, default_value_t = 20_000)]
        background: usize,
        /// Instances of each family and look-alike per seed.
        #[arg(long, default_value_t = 30)]
        instances: usize,
        /// Card rules (default: the shipped rules/fraud-default.json).
        #[arg(long)]
        rules: Option<PathBuf>,
        /// Window rules (default: the shipped rules/window-default.json).
        #[arg(long)]
        window_rules: Option<PathBuf>,
        /// Print JSON instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// What a candidate rule set would have decided over recorded traffic (NDJSON,
    /// Lambda fixtures, the Firehose archive in a folder or on S3), beside a baseline,
    /// against labels: per rule and per set precision, recall, F1, alert rate, and the
    /// events whose outcome changes.
    Backtest(shardline::backtest::BacktestArgs),
    /// Label one event fraud or legit, for backtests (who and when are recorded;
    /// labelling an event again replaces its label).
    Label(shardline::labels::LabelArgs),
    /// Event labels for backtests: import an NDJSON file (the generator's ground truth
    /// too), export the table as NDJSON.
    #[command(subcommand)]
    Labels(shardline::labels::Labels),
    /// Measure throughput, DynamoDB requests, latency, memory, cold start and binary
    /// sizes; print one table (see BENCHMARKS.md).
    Bench {
        /// Seconds per throughput measurement.
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
        /// Injected delay per DynamoDB request for the latency rows, ms.
        #[arg(long, default_value_t = 10)]
        delay_ms: u64,
        /// Only the in-process throughput rows (no emulator needed).
        #[arg(long)]
        throughput_only: bool,
        /// Skip the throughput rows (`make bench` measures them first, with the
        /// emulators down, so they have the cores to themselves).
        #[arg(long)]
        skip_throughput: bool,
        /// Only the throughput rows whose name contains this text (to profile one of
        /// them, e.g. `--throughput-only --only scorer` under perf).
        #[arg(long)]
        only: Option<String>,
        /// The SAM template.
        #[arg(long, default_value = "template.yaml")]
        template: PathBuf,
    },
    /// The whole pipeline end to end on the local emulators, with a summary.
    Demo {
        /// Background transactions.
        #[arg(long, default_value_t = 20_000)]
        events: usize,
        /// Seed.
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Stage of the demo's resources (default: a fresh one per run).
        #[arg(long)]
        stage: Option<String>,
        /// Event-time span of the traffic, ending now.
        #[arg(long, default_value = "20m", value_parser = query::parse_duration_ms)]
        span: i64,
        /// The SAM template.
        #[arg(long, default_value = "template.yaml")]
        template: PathBuf,
    },
    /// The pipeline under faults (throttles, 5xx, timeouts, lost responses), crashes, a
    /// runner killed with SIGKILL and a reshard, checked against an oracle computed from
    /// the generated traffic; exits non-zero on any loss or double count (see
    /// RELIABILITY.md).
    Soak {
        /// Background transactions (scenarios, re-sends and poison come on top).
        #[arg(long, default_value_t = 3_000)]
        events: usize,
        /// Seed of the traffic, faults and crashes.
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Fault plan, `SHARDLINE_FAULTS` syntax (default: every kind on every service).
        #[arg(long)]
        faults: Option<String>,
        /// Crash plan, `SHARDLINE_CRASH` syntax (default: 3 % of invocations and every
        /// 4th).
        #[arg(long)]
        crash: Option<String>,
        /// Share of records sent KPL-aggregated.
        #[arg(long, default_value_t = 0.2)]
        kpl_share: f64,
        /// Seconds after its start the first runner is killed.
        #[arg(long, default_value_t = 8)]
        kill_after: u64,
        /// Shards at the start (one is split while the first runner works).
        #[arg(long, default_value_t = 2)]
        shards: u32,
        /// The SAM template.
        #[arg(long, default_value = "template.yaml")]
        template: PathBuf,
    },
}

fn read_text(p: &std::path::Path) -> anyhow::Result<String> {
    std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shardline_aws::telemetry::init_tracing();
    match Cli::parse().command {
        Command::Bootstrap { template, env_dir } => {
            common::bootstrap_cmd(&template, env_dir.as_deref()).await
        }
        Command::Replay {
            function,
            files,
            expect,
        } => replay::run(function, &files, expect).await,
        Command::Query(q) => query::run(q).await,
        Command::Lists(l) => shardline::lists::run(l).await,
        Command::Rules(r) => shardline::rules::run(r).await,
        Command::Eval {
            seeds,
            background,
            instances,
            rules,
            window_rules,
            json,
        } => {
            use shardline_core::fraud::rules::{Policy, RuleSet};
            use shardline_core::window::rules::WindowRuleSet;
            let card = match rules {
                Some(p) => RuleSet::from_json(&read_text(&p)?)
                    .map_err(|e| anyhow::anyhow!("{}: {}", p.display(), e.explain()))?,
                None => RuleSet::default_rules(),
            };
            let window = match window_rules {
                Some(p) => WindowRuleSet::from_json(&read_text(&p)?)
                    .map_err(|e| anyhow::anyhow!("{}: {}", p.display(), e.explain()))?,
                None => WindowRuleSet::default_rules(),
            };
            let cfg = shardline::eval::EvalConfig {
                seeds: (1..=seeds.max(1)).collect(),
                background,
                instances,
            };
            let report = shardline::eval::run(&cfg, &Policy::of(card), &window);
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", shardline::eval::render(&report));
            }
            Ok(())
        }
        Command::Backtest(args) => {
            shardline::backtest::run(args, &mut std::io::stdout().lock()).await
        }
        Command::Label(a) => shardline::labels::label(a).await,
        Command::Labels(l) => shardline::labels::run(l).await,
        Command::Bench {
            seconds,
            delay_ms,
            throughput_only,
            skip_throughput,
            only,
            template,
        } => {
            bench_cmd(
                seconds,
                delay_ms,
                (throughput_only, skip_throughput),
                only,
                &template,
            )
            .await
        }
        Command::Demo {
            events,
            seed,
            stage,
            span,
            template,
        } => {
            let stage = stage.unwrap_or_else(|| format!("demo{}", (now_ms() / 1000) % 1_000_000));
            demo::demo(demo::DemoConfig {
                events,
                seed,
                stage,
                template,
                span_ms: span,
            })
            .await
        }
        Command::Soak {
            events,
            seed,
            faults,
            crash,
            kpl_share,
            kill_after,
            shards,
            template,
        } => {
            let mut cfg = shardline::soak::SoakConfig::new(
                events,
                std::env::current_exe()?,
                PathBuf::from(".local-run/soak"),
            );
            cfg.seed = seed;
            cfg.template = template;
            cfg.kpl_share = kpl_share;
            cfg.kill_after = Duration::from_secs(kill_after);
            cfg.shards = shards;
            if let Some(f) = faults {
                cfg.faults = f;
            } else {
                cfg.faults = cfg.faults.replacen("seed=7", &format!("seed={seed}"), 1);
            }
            if let Some(c) = crash {
                cfg.crash = c;
            }
            let report = shardline::soak::soak(&cfg).await?;
            report.print();
            if !report.clean() {
                anyhow::bail!("the soak found {} problems", report.problems.len());
            }
            Ok(())
        }
        Command::Gen {
            events,
            seed,
            cards,
            merchants,
            span,
            peak_factor,
            out,
            path,
            batch_size,
            labels,
            rate,
            kpl,
            template,
        } => {
            let cfg = GenConfig {
                seed,
                events,
                cards,
                merchants,
                span_ms: span,
                end_ms: now_ms(),
                peak_factor,
                ..GenConfig::default()
            };
            let g = generate(&cfg);
            if let Some(dir) = labels.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let lines: Vec<String> = g
                .labels
                .iter()
                .map(serde_json::to_string)
                .collect::<Result<_, _>>()?;
            std::fs::write(&labels, lines.join("\n") + "\n")
                .with_context(|| format!("writing {}", labels.display()))?;
            match out {
                Out::Stream => {
                    check_endpoint()?;
                    let t = template.load()?;
                    let stream = t
                        .physical()
                        .get("InputStream")
                        .context("template has no InputStream")?
                        .reference
                        .clone();
                    let sdk = shardline_aws::sdk::load_sdk_config().await;
                    let k = aws_sdk_kinesis::Client::new(&sdk);
                    shardline::runner::check_stream(&k, &stream).await?;
                    let n = put_all(
                        &k,
                        &stream,
                        &g.records,
                        &PutOptions {
                            rate,
                            kpl,
                            progress: std::io::stderr().is_terminal(),
                        },
                    )
                    .await?;
                    eprintln!(
                        "put {} user records as {n} Kinesis records onto {stream}",
                        g.records.len()
                    );
                }
                Out::Ndjson => {
                    if let Some(dir) = path.parent() {
                        std::fs::create_dir_all(dir)?;
                    }
                    let body: Vec<u8> = g
                        .records
                        .iter()
                        .flat_map(|r| r.data.iter().copied().chain([b'\n']))
                        .collect();
                    std::fs::write(&path, body)?;
                }
                Out::Fixtures => {
                    std::fs::create_dir_all(&path)?;
                    for (i, chunk) in g.records.chunks(batch_size.max(1)).enumerate() {
                        let ev = shardline::traffic::fixture_event(chunk, i * batch_size);
                        std::fs::write(
                            path.join(format!("batch-{i:04}.json")),
                            serde_json::to_vec_pretty(&ev)?,
                        )?;
                    }
                }
            }
            for (k, v) in summary(&g) {
                eprintln!("  {k:<28} {v}");
            }
            eprintln!("labels in {}", labels.display());
            Ok(())
        }
        Command::Run {
            function,
            invoke,
            until_idle,
            max_duration,
            template,
        } => {
            check_endpoint()?;
            let mut t = template.load()?;
            // Faults (SHARDLINE_FAULTS) are for the runner's and the functions' calls, not
            // for setting up.
            let clean = shardline_aws::sdk::load_sdk_config_without_faults().await;
            let sdk = shardline_aws::sdk::load_sdk_config().await;
            // Queue URLs (the functions' environment) come from the emulator.
            shardline_aws::bootstrap::bootstrap(&clean, &mut t)
                .await
                .context("resources (run `shardline bootstrap` first)")?;
            let mut counters: Vec<(String, Arc<shardline::runner::Stats>)> = Vec::new();
            let clients = Clients::new(&sdk);
            let mut runs = Vec::new();
            for f in t
                .functions()
                .into_iter()
                .filter(|f| function.is_none_or(|want| want.binary() == f.binary))
            {
                let m = Mapping::from_template(&f, &t)?;
                let invoker = match &invoke {
                    Some(url) => http_invoker(url, &f.binary),
                    None => shardline::invoke::in_process(&f, &sdk)?,
                };
                let on_failure = m.on_failure_arn.as_ref().and_then(|arn| {
                    t.physical()
                        .values()
                        .find(|p| &p.arn == arn)
                        .map(|p| p.reference.clone())
                });
                let opts = RunOptions {
                    until_idle,
                    max_duration: Duration::from_millis(max_duration as u64),
                    status: std::io::stderr().is_terminal(),
                    quarantine_url: t
                        .physical()
                        .get("QuarantineQueue")
                        .map(|p| p.reference.clone()),
                    stats: Some(Arc::default()),
                    ..RunOptions::default()
                };
                if let Some(st) = &opts.stats {
                    counters.push((f.binary.clone(), st.clone()));
                }
                let clients = clients.clone();
                runs.push(tokio::spawn(async move {
                    run(m, clients, invoker, on_failure, opts)
                        .await
                        .map(|s| (f.binary, s))
                }));
            }
            // For the soak: the counters, rewritten every half second (a runner killed
            // with SIGKILL leaves its last ones).
            let writer = std::env::var(shardline::soak::STATS_ENV).ok().map(|path| {
                let counters = counters.clone();
                tokio::spawn(async move {
                    loop {
                        shardline::soak::write_stats(&path, &counters);
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                })
            });
            let mut result = Ok(());
            for r in runs {
                let (name, s) = match r.await {
                    Ok(Ok(v)) => v,
                    Ok(Err(e)) => {
                        result = Err(e);
                        continue;
                    }
                    Err(e) => {
                        result = Err(e.into());
                        continue;
                    }
                };
                eprintln!(
                    "{name}: {} records, {} batches, {} retries, {} batches to OnFailure",
                    s.records.load(std::sync::atomic::Ordering::Relaxed),
                    s.batches.load(std::sync::atomic::Ordering::Relaxed),
                    s.retries.load(std::sync::atomic::Ordering::Relaxed),
                    s.on_failure.load(std::sync::atomic::Ordering::Relaxed)
                );
            }
            if let Some(w) = writer {
                w.abort();
                if let Ok(path) = std::env::var(shardline::soak::STATS_ENV) {
                    shardline::soak::write_stats(&path, &counters);
                }
            }
            result
        }
    }
}

async fn bench_cmd(
    seconds: f64,
    delay_ms: u64,
    (throughput_only, skip_throughput): (bool, bool),
    only: Option<String>,
    template: &std::path::Path,
) -> anyhow::Result<()> {
    use shardline::bench;
    let root = std::env::current_dir()?;
    let full = bench::batch(None, false);
    if !skip_throughput {
        throughput_rows(&full, seconds, only)?;
    }
    if throughput_only {
        return Ok(());
    }
    bench_emulator_rows(&root, &full, delay_ms, template).await
}

fn throughput_rows(
    full: &shardline::bench::Batch,
    seconds: f64,
    only: Option<String>,
) -> anyhow::Result<()> {
    use shardline::bench;
    println!(
        "shardline bench: {} cores, full batch {} records / {:.2} MB ({} bytes per record with the envelope)",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        full.records,
        full.json.len() as f64 / 1e6,
        full.json.len() / full.records
    );
    println!(
        "\n{:<56} {:>14} {:>9}",
        "in process, one core (in-memory stores)", "records/s", "MB/s"
    );
    // On a thread of its own: the handlers run on their own single-thread runtime, one core.
    let rows = std::thread::spawn(move || {
        bench::throughput(Duration::from_secs_f64(seconds), only.as_deref())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("throughput thread panicked"))?;
    for (name, r, mb) in &rows {
        println!("{name:<56} {r:>14.0} {mb:>9.1}");
    }
    if let Some((_, r, _)) = rows.iter().find(|(n, _, _)| n.starts_with("backtest")) {
        println!(
            "  backtest: {:.0} events a minute on one core (target: at least 500,000)",
            r * 60.0
        );
    }
    Ok(())
}

async fn bench_emulator_rows(
    root: &std::path::Path,
    full: &shardline::bench::Batch,
    delay_ms: u64,
    template: &std::path::Path,
) -> anyhow::Result<()> {
    use shardline::bench;
    check_endpoint()?;
    let sdk = shardline_aws::sdk::load_sdk_config().await;
    println!(
        "\n{:<28} {:>10} {:>22} {:>16}",
        "DynamoDB requests", "batch", "requests / 1000 rec", "naive / 1000 rec"
    );
    for (f, n, per) in bench::requests(&sdk, template).await? {
        println!("{f:<28} {n:>10} {per:>22.1} {:>16}", 2000);
    }
    println!(
        "\n{:<28} {:>10} {:>10} {:>12} {:>14}",
        format!("latency, {delay_ms} ms per request"),
        "records",
        "requests",
        "batch ms",
        "round trips*"
    );
    for (f, n, reqs, ms) in bench::latency(&sdk, template, Duration::from_millis(delay_ms)).await? {
        println!(
            "{f:<28} {n:>10} {reqs:>10} {ms:>12.0} {:>14.1}",
            ms / delay_ms as f64
        );
    }
    println!("  * batch time / per-request delay: the sequential round trips the batch waited for");
    println!(
        "\n{:<28} {:>14} {:>16}",
        "function binary (host)", "cold start ms", "peak RSS (6 MB)"
    );
    let mut t = shardline_aws::template::Template::load(template)?;
    t.set_param("Stage", &format!("bm{}", now_ms() % 100_000_000))?;
    shardline_aws::bootstrap::bootstrap(&sdk, &mut t).await?;
    for f in t.functions() {
        let bin = bench::release_binary(root, &f.binary);
        if !bin.exists() {
            println!(
                "{:<28} {:>14} (build it: cargo build --release -p {})",
                f.binary, "-", f.binary
            );
            continue;
        }
        let mut env: std::collections::HashMap<String, String> =
            f.environment.clone().into_iter().collect();
        for k in [
            "AWS_ENDPOINT_URL",
            "AWS_ENDPOINT_URL_KINESIS",
            "AWS_REGION",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_CONFIG_FILE",
            "AWS_SHARED_CREDENTIALS_FILE",
        ] {
            if let Ok(v) = std::env::var(k) {
                env.insert(k.into(), v);
            }
        }
        let mut starts = Vec::new();
        let mut rss = 0;
        for i in 0..5 {
            let event: &[u8] = if i == 0 {
                &full.json
            } else {
                b"{\"Records\":[]}"
            };
            let (ms, hwm) = bench::runtime_stub::run_once(&bin, &env, event).await?;
            starts.push(ms);
            if i == 0 {
                rss = hwm;
            }
        }
        starts.sort_by(f64::total_cmp);
        println!(
            "{:<28} {:>14.1} {:>13.1} MB",
            f.binary,
            starts[starts.len() / 2],
            rss as f64 / 1024.0
        );
    }
    println!("\n{:<28} {:>14}", "arm64 bootstrap (stripped)", "size");
    for (f, size) in bench::binary_sizes(root) {
        match size {
            Some(b) => println!("{f:<28} {:>11.1} MB", b as f64 / 1024.0 / 1024.0),
            None => println!("{f:<28} {:>14} (run `make build`)", "-"),
        }
    }
    Ok(())
}
