//! template.yaml against the code: every function the code has is in the template with
//! the environment its config reads, the tables it uses, the IAM actions it makes,
//! ReportBatchItemFailures on its Kinesis mappings (the handlers return partial batch
//! responses, which Lambda ignores without it), and ParallelizationFactor 1 where the code
//! assumes one writer per shard. Then the test of the test: deliberate
//! mismatches in modified copies of the template are each caught.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use serde_json::Value;
use shardline_aws::template::{Template, scalar};
use shardline_testkit::repo_root;

/// What the code of one function needs from the template.
struct CodeNeeds {
    binary: &'static str,
    required_env: &'static [&'static str],
    iam: &'static [(&'static str, &'static str)],
    /// The code assumes one invocation per shard at a time (its state has a single
    /// writer per shard), so the mapping's ParallelizationFactor must be 1 (or absent).
    single_writer_per_shard: bool,
}

fn code() -> Vec<CodeNeeds> {
    vec![
        CodeNeeds {
            binary: "fraud-scorer",
            required_env: fraud_scorer::config::REQUIRED_ENV,
            iam: fraud_scorer::config::IAM_ACTIONS,
            single_writer_per_shard: false,
        },
        CodeNeeds {
            binary: "window-aggregator",
            required_env: window_aggregator::config::REQUIRED_ENV,
            iam: window_aggregator::config::IAM_ACTIONS,
            // Window partials and shard progress are per shard, guarded by one position.
            single_writer_per_shard: true,
        },
    ]
}

fn as_list(v: &Value) -> Vec<String> {
    match v {
        Value::Array(a) => a.iter().map(scalar).collect(),
        Value::Null => Vec::new(),
        other => vec![scalar(other)],
    }
}

/// Every disagreement between the code and a template, as readable lines.
fn problems(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let t = Template::parse(text).expect("template parses");
    let tables: Vec<String> = t
        .resources_of_type("AWS::DynamoDB::Table")
        .iter()
        .map(|(_, p)| scalar(&p["TableName"]))
        .collect();
    let physical = t.physical().clone();
    let functions = t.functions();
    for need in code() {
        let Some(f) = functions.iter().find(|f| f.binary == need.binary) else {
            out.push(format!(
                "{}: no function in the template builds this binary",
                need.binary
            ));
            continue;
        };
        for var in need.required_env {
            if f.environment.get(*var).is_none_or(String::is_empty) {
                out.push(format!(
                    "{}: environment variable {var} is read by the code but not set",
                    need.binary
                ));
            }
        }
        for (var, value) in &f.environment {
            if var.ends_with("_TABLE") && !tables.contains(value) {
                out.push(format!(
                    "{}: {var} = {value} is not a table of the template",
                    need.binary
                ));
            }
        }
        if f.kinesis_events.is_empty() {
            out.push(format!("{}: no Kinesis event source mapping", need.binary));
        }
        for esm in &f.kinesis_events {
            if !as_list(&esm["FunctionResponseTypes"])
                .contains(&"ReportBatchItemFailures".to_owned())
            {
                out.push(format!("{}: handler returns batch item failures but the mapping lacks ReportBatchItemFailures", need.binary));
            }
            let pf = esm
                .get("ParallelizationFactor")
                .map_or("1".to_owned(), scalar);
            if need.single_writer_per_shard && pf != "1" {
                out.push(format!(
                    "{}: ParallelizationFactor {pf} breaks the code's single writer per shard (must be 1 or absent)",
                    need.binary
                ));
            }
            // The scorer keeps a lane's replay guard for REPLAY_HORIZON_MS after its last
            // record arrived: Lambda must give a record up before then (-1 is forever).
            let horizon_s = shardline_core::fraud::profile::REPLAY_HORIZON_MS / 1000;
            let age = esm
                .get("MaximumRecordAgeInSeconds")
                .map(scalar)
                .and_then(|a| a.parse::<i64>().ok());
            if age.is_some_and(|a| !(1..=horizon_s).contains(&a)) {
                out.push(format!(
                    "{}: MaximumRecordAgeInSeconds must be 1..={horizon_s} (replay guards are kept that long)",
                    need.binary
                ));
            }
            if esm.get("MaximumRecordAgeInSeconds").is_none()
                || esm.get("DestinationConfig").is_none()
            {
                out.push(format!(
                    "{}: mapping must bound record age and name an OnFailure destination",
                    need.binary
                ));
            }
        }
        for (action, var) in need.iam {
            let Some(value) = f.environment.get(*var) else {
                continue;
            };
            // The ARN of the resource the variable names.
            let kind = if var.ends_with("_TABLE") {
                ":table/"
            } else if var.ends_with("_STREAM") {
                ":stream/"
            } else {
                ":sqs:"
            };
            let arn = physical
                .values()
                .find(|p| p.reference == *value && p.arn.contains(kind))
                .map(|p| p.arn.clone())
                .unwrap_or_default();
            let granted = f.statements.iter().any(|s| {
                scalar(&s["Effect"]) == "Allow"
                    && as_list(&s["Action"]).iter().any(|a| a == action)
                    && as_list(&s["Resource"]).contains(&arn)
            });
            if !granted {
                out.push(format!(
                    "{}: the role does not grant {action} on {var} ({arn})",
                    need.binary
                ));
            }
        }
        for s in &f.statements {
            for a in as_list(&s["Action"]) {
                if a.contains('*') {
                    out.push(format!("{}: wildcard action {a}", need.binary));
                }
            }
            for r in as_list(&s["Resource"]) {
                if r == "*" {
                    out.push(format!("{}: wildcard resource", need.binary));
                }
            }
        }
    }
    out
}

fn template_text() -> String {
    std::fs::read_to_string(repo_root().join("template.yaml")).unwrap()
}

#[test]
fn template_agrees_with_the_code() {
    let p = problems(&template_text());
    assert!(
        p.is_empty(),
        "template.yaml and the code disagree:\n{}",
        p.join("\n")
    );
}

/// Replaces exactly one occurrence (so each mutation is the one intended).
fn mutate(text: &str, from: &str, to: &str) -> String {
    assert!(
        text.contains(from),
        "mutation target {from:?} not in template"
    );
    text.replacen(from, to, 1)
}

#[test]
fn a_mapping_without_report_batch_item_failures_is_caught() {
    let bad = mutate(
        &template_text(),
        "FunctionResponseTypes: [ReportBatchItemFailures]",
        "FunctionResponseTypes: []",
    );
    assert!(
        problems(&bad)
            .iter()
            .any(|p| p.contains("lacks ReportBatchItemFailures")),
        "{:?}",
        problems(&bad)
    );
}

#[test]
fn an_unset_environment_variable_is_caught() {
    let bad = mutate(
        &template_text(),
        "          PROFILES_TABLE: { Ref: ProfilesTable }\n",
        "",
    );
    assert!(
        problems(&bad)
            .iter()
            .any(|p| p.contains("PROFILES_TABLE is read by the code but not set")),
        "{:?}",
        problems(&bad)
    );
}

#[test]
fn a_table_the_template_does_not_declare_is_caught() {
    let bad = mutate(
        &template_text(),
        "WINDOWS_TABLE: { Ref: WindowsTable }",
        "WINDOWS_TABLE: shardline-elsewhere",
    );
    assert!(
        problems(&bad)
            .iter()
            .any(|p| p.contains("WINDOWS_TABLE = shardline-elsewhere is not a table")),
        "{:?}",
        problems(&bad)
    );
}

#[test]
fn a_missing_iam_permission_is_caught() {
    let bad = mutate(
        &template_text(),
        "Action: [dynamodb:BatchGetItem, dynamodb:BatchWriteItem, dynamodb:GetItem, dynamodb:PutItem, dynamodb:Query]",
        "Action: [dynamodb:BatchGetItem, dynamodb:BatchWriteItem, dynamodb:GetItem, dynamodb:PutItem]",
    );
    assert!(
        problems(&bad)
            .iter()
            .any(|p| p.contains("does not grant dynamodb:Query on WINDOWS_TABLE")),
        "{:?}",
        problems(&bad)
    );
}

#[test]
fn a_parallelized_aggregator_mapping_is_caught() {
    let bad = mutate(
        &template_text(),
        "            ParallelizationFactor: 1\n",
        "            ParallelizationFactor: 4\n",
    );
    assert!(
        problems(&bad)
            .iter()
            .any(|p| p.contains("window-aggregator: ParallelizationFactor 4")),
        "{:?}",
        problems(&bad)
    );
    // Absent is Lambda's default, 1: fine.
    let absent = mutate(
        &template_text(),
        "            ParallelizationFactor: 1\n",
        "",
    );
    assert!(
        !problems(&absent)
            .iter()
            .any(|p| p.contains("ParallelizationFactor")),
        "{:?}",
        problems(&absent)
    );
}

#[test]
fn a_wildcard_is_caught() {
    let bad = mutate(
        &template_text(),
        "Action: [dynamodb:BatchWriteItem]",
        "Action: [dynamodb:*]",
    );
    assert!(
        problems(&bad).iter().any(|p| p.contains("wildcard action")),
        "{:?}",
        problems(&bad)
    );
}

#[test]
fn an_unbounded_record_age_is_caught() {
    let bad = mutate(
        &template_text(),
        "MaximumRecordAgeInSeconds: 3600",
        "MaximumRecordAgeInSeconds: -1",
    );
    assert!(
        problems(&bad)
            .iter()
            .any(|p| p.contains("MaximumRecordAgeInSeconds must be")),
        "{:?}",
        problems(&bad)
    );
}
