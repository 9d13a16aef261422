//! What the subcommands share: template loading, the emulator check, bootstrap.

use std::path::PathBuf;

use std::collections::HashMap;

use anyhow::{Context, bail};
use aws_sdk_dynamodb::types::AttributeValue;
use shardline_aws::template::{Template, scalar};

/// Which template, with which parameters.
#[derive(clap::Args, Clone, Debug)]
pub struct TemplateArgs {
    /// The SAM template.
    #[arg(long, default_value = "template.yaml")]
    pub template: PathBuf,
    /// Template parameters, NAME=VALUE (e.g. Stage=dev).
    #[arg(long = "param", value_name = "NAME=VALUE")]
    pub params: Vec<String>,
}

impl TemplateArgs {
    /// The template with the parameters applied.
    pub fn load(&self) -> anyhow::Result<Template> {
        let mut t = Template::load(&self.template)
            .with_context(|| format!("reading {}", self.template.display()))?;
        for p in &self.params {
            let (k, v) = p
                .split_once('=')
                .with_context(|| format!("--param {p}: expected NAME=VALUE"))?;
            t.set_param(k, v)?;
        }
        Ok(t)
    }
}

/// The physical name of a template table, by logical id.
pub fn table_name(t: &Template, logical: &str) -> anyhow::Result<String> {
    t.resources_of_type("AWS::DynamoDB::Table")
        .into_iter()
        .find(|(l, _)| l == logical)
        .map(|(_, p)| scalar(&p["TableName"]))
        .with_context(|| format!("template declares no {logical}"))
}

/// Fails with instructions when the SDK is not pointed at an endpoint.
pub fn check_endpoint() -> anyhow::Result<()> {
    if std::env::var_os("AWS_ENDPOINT_URL").is_none() {
        bail!(
            "AWS_ENDPOINT_URL is not set: run `make up` and export the variables it prints (or wrap the command in infra/local/with-emulators.sh)"
        );
    }
    Ok(())
}

/// `shardline bootstrap`; with `env_dir`, also writes each function's resolved
/// environment as `<dir>/<binary>.env` (for `cargo lambda watch --env-file`).
pub async fn bootstrap_cmd(
    args: &TemplateArgs,
    env_dir: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    check_endpoint()?;
    let mut t = args.load()?;
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
                "{:<7} {:<44} {}",
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
        if let Some(dir) = env_dir {
            std::fs::create_dir_all(dir)?;
            let path = dir.join(format!("{}.env", f.binary));
            let body: String = f
                .environment
                .iter()
                .map(|(k, v)| format!("{k}={v}\n"))
                .collect();
            std::fs::write(&path, body).with_context(|| format!("writing {}", path.display()))?;
            println!("  environment in {}", path.display());
        }
    }
    Ok(())
}

/// Wall-clock time, epoch ms.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// Every item of a table (all pages).
pub async fn scan_all(
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
) -> anyhow::Result<Vec<HashMap<String, AttributeValue>>> {
    let mut items = Vec::new();
    let mut start = None;
    loop {
        let out = ddb
            .scan()
            .table_name(table)
            .set_exclusive_start_key(start)
            .send()
            .await?;
        items.extend(out.items().iter().cloned());
        start = out.last_evaluated_key().cloned();
        if start.is_none() {
            return Ok(items);
        }
    }
}

/// Parses `90s`, `15m`, `1h`, `2d` into milliseconds (a bare number is minutes).
pub fn parse_duration_ms(s: &str) -> Result<i64, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: i64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a number and a unit, like 15m"))?;
    let unit_ms = match unit {
        "s" => 1_000,
        "m" | "" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("{s:?}: unit must be s, m, h or d")),
    };
    n.checked_mul(unit_ms)
        .ok_or_else(|| format!("{s:?}: too long"))
}
