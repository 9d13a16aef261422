//! `shardline query windows`: windowed aggregates read back from the windows table,
//! merged across shards, tumbling or sliding (merged from 1-minute panes).
//! `shardline query alerts`: decision records through the alerts table's indexes
//! (crate::alerts_query).

use anyhow::Context;
use clap::Subcommand;
use shardline_aws::dynamo::DynamoWindowStore;
use shardline_aws::template::Template;
use shardline_core::event::format_rfc3339_ms;
use shardline_core::ports::WindowStore;
use shardline_core::window::view::{
    ShardClocks, ShardInfo, WindowRow, sliding_rows_with, tumbling_rows_with,
};
use shardline_core::window::{MINUTE_MS, pk_for};

use crate::common::{TemplateArgs, check_endpoint, table_name};

/// Query subcommands.
#[derive(Subcommand)]
pub enum Query {
    /// Windows of one key, merged across shards; `--sliding` merges 1-minute panes into
    /// a window of `--width` advancing every minute.
    Windows {
        /// `merchant:<id>`, `card:<token>` or `global`.
        #[arg(long)]
        key: String,
        /// Window width: 1m, 5m, 15m (tumbling), or any multiple of 1m with --sliding.
        #[arg(long, default_value = "15m", value_parser = parse_duration_ms)]
        width: i64,
        /// Sliding window advancing every minute, built from 1-minute panes.
        #[arg(long)]
        sliding: bool,
        /// How far back from --until.
        #[arg(long, default_value = "1h", value_parser = parse_duration_ms)]
        last: i64,
        /// End of the range (epoch ms); default: the end of the latest window stored.
        #[arg(long)]
        until: Option<i64>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// The template (for the windows table's name).
        #[command(flatten)]
        template: TemplateArgs,
    },
    /// Decision records (alerts), newest first, a page at a time, through the alerts
    /// table's indexes: by card, by merchant, else by day; filtered by outcome, reason,
    /// rule set and time.
    Alerts(crate::alerts_query::AlertsArgs),
}

pub use crate::common::parse_duration_ms;

/// The clocks of the input stream's shards, for finality: Kinesis says which shards are
/// closed and their lineage, the windows table holds each shard's progress (its
/// watermark), the aggregator's configuration its lateness.
pub async fn shard_clocks(
    kinesis: &aws_sdk_kinesis::Client,
    store: &DynamoWindowStore,
    t: &Template,
) -> anyhow::Result<ShardClocks> {
    let stream = t
        .physical()
        .get("InputStream")
        .map(|p| p.reference.clone())
        .context("template declares no InputStream")?;
    let lateness_ms = t
        .functions()
        .iter()
        .find(|f| f.binary == window_aggregator::FUNCTION)
        .map(|f| window_aggregator::Config::from_lookup(|k| f.environment.get(k).cloned()))
        .transpose()?
        .map_or(
            shardline_core::window::WindowConfig::default().lateness_ms,
            |c| c.lateness_ms,
        );
    let mut shards = Vec::new();
    for s in crate::runner::list_shards(kinesis, &stream).await? {
        shards.push(ShardInfo {
            id: s.shard_id().to_owned(),
            parents: [s.parent_shard_id(), s.adjacent_parent_shard_id()]
                .into_iter()
                .flatten()
                .map(str::to_owned)
                .collect(),
            closed: s
                .sequence_number_range()
                .and_then(|r| r.ending_sequence_number())
                .is_some(),
            progress: store.get_progress(s.shard_id()).await?,
        });
    }
    Ok(ShardClocks::from_shards(&shards, lateness_ms))
}

/// Reads rows of one key; `clocks` decide which windows are final.
pub async fn window_rows(
    store: &DynamoWindowStore,
    clocks: &ShardClocks,
    key: &str,
    width: i64,
    sliding: bool,
    last: i64,
    until: Option<i64>,
) -> anyhow::Result<Vec<WindowRow>> {
    let stored_width = if sliding { MINUTE_MS } else { width };
    let pk = pk_for(key, stored_width);
    let until = match until {
        Some(u) => u,
        None => {
            let all = store.query_range(&pk, 0, i64::MAX / 2).await?;
            all.iter()
                .map(|p| p.window.end_ms())
                .max()
                .with_context(|| {
                    format!(
                        "no windows stored for {key} at width {}m",
                        stored_width / MINUTE_MS
                    )
                })?
        }
    };
    let from = until - last;
    Ok(if sliding {
        sliding_rows_with(
            &store.query_range(&pk, from - width, until).await?,
            width,
            from,
            until,
            clocks,
        )
    } else {
        tumbling_rows_with(&store.query_range(&pk, from, until).await?, width, clocks)
    })
}

/// Prints rows as a table.
pub fn print_rows(rows: &[WindowRow]) {
    println!(
        "{:<24} {:>7} {:>8} {:>12} {:>8} {:>8} {:>8} {:>6} {:>5}",
        "start (UTC)", "count", "declined", "sum", "p50", "p95", "p99", "late", "final"
    );
    let q = |v: Option<f64>| v.map_or("-".to_owned(), |x| format!("{x:.0}"));
    for r in rows {
        println!(
            "{:<24} {:>7} {:>8} {:>12} {:>8} {:>8} {:>8} {:>6} {:>5}",
            format_rfc3339_ms(r.start_ms),
            r.count,
            r.declined,
            r.sum.values().sum::<i64>(),
            q(r.p50),
            q(r.p95),
            q(r.p99),
            r.late,
            if r.is_final { "yes" } else { "no" }
        );
    }
}

/// `shardline query ...`.
pub async fn run(q: Query) -> anyhow::Result<()> {
    match q {
        Query::Alerts(args) => crate::alerts_query::run(&args).await?,
        Query::Windows {
            key,
            width,
            sliding,
            last,
            until,
            json,
            template,
        } => {
            check_endpoint()?;
            let t = template.load()?;
            let sdk = shardline_aws::sdk::load_sdk_config().await;
            let store = DynamoWindowStore::new(
                aws_sdk_dynamodb::Client::new(&sdk),
                table_name(&t, "WindowsTable")?,
            );
            let clocks = match shard_clocks(&aws_sdk_kinesis::Client::new(&sdk), &store, &t).await {
                Ok(c) => c,
                Err(e) => {
                    eprintln!(
                        "shard clocks unavailable ({e:#}): finality from the stored flags only"
                    );
                    ShardClocks::default()
                }
            };
            let rows = window_rows(&store, &clocks, &key, width, sliding, last, until).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!(
                    "{key}: {} windows of {}m, {} rows",
                    if sliding { "sliding" } else { "tumbling" },
                    width / MINUTE_MS,
                    rows.len()
                );
                print_rows(&rows);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration_ms("15m"), Ok(900_000));
        assert_eq!(parse_duration_ms("1h"), Ok(3_600_000));
        assert_eq!(parse_duration_ms("90s"), Ok(90_000));
        assert!(parse_duration_ms("fast").is_err());
        assert!(parse_duration_ms("3w").is_err());
    }
}
