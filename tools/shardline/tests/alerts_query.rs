//! `shardline query alerts` against the local DynamoDB, on an alerts table bootstrapped
//! from template.yaml (so with its indexes): every filter returns exactly the expected
//! records, newest first; paging through the cursor gives what one big page gives; and
//! an SDK interceptor sees only Query requests, on the index each lookup should use
//! (never a Scan). Needs the emulators (`make test` starts them); fails with
//! instructions when they are not up.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;
use common::emulators;

use std::collections::{BTreeMap, HashSet};
use std::process::Command;
use std::sync::{Arc, Mutex};

use aws_sdk_dynamodb::types::AttributeValue;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use shardline::alerts_query::{AlertFilter, AlertPage, StoredOutcome, parse_time_ms, query_alerts};
use shardline_aws::dynamo::DynamoAlertSink;
use shardline_core::alert::{Alert, utc_day};
use shardline_core::event::pan_safe_id;
use shardline_core::fraud::SHADOW_PREFIX;
use shardline_core::fraud::rules::Outcome;
use shardline_core::ports::AlertSink;

/// template.yaml with a fresh Stage, bootstrapped (the alerts table with the template's
/// indexes); returns the Stage and the alerts table's name.
async fn fresh_alerts_table(sdk: &aws_config::SdkConfig) -> (String, String) {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
        .to_string();
    let stage = format!("q{}", &nanos[nanos.len() - 12..]);
    let path = shardline_testkit::repo_root().join("template.yaml");
    let mut t = shardline_aws::template::Template::load(&path).unwrap();
    t.set_param("Stage", &stage).unwrap();
    shardline_aws::bootstrap::bootstrap(sdk, &mut t)
        .await
        .expect("bootstrap the template's resources");
    let table = shardline::common::table_name(&t, "AlertsTable").unwrap();
    (stage, table)
}

/// One request a client sent: its operation (from `X-Amz-Target`) and the index named
/// in its body.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Sent {
    op: String,
    index: Option<String>,
}

/// Records every request of the client it is added to.
#[derive(Clone, Debug, Default)]
struct Recorder(Arc<Mutex<Vec<Sent>>>);

impl Recorder {
    fn take(&self) -> Vec<Sent> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

impl Intercept for Recorder {
    fn name(&self) -> &'static str {
        "Recorder"
    }

    fn read_before_transmit(
        &self,
        ctx: &BeforeTransmitInterceptorContextRef<'_>,
        _rc: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let req = ctx.request();
        let op = req
            .headers()
            .get("x-amz-target")
            .unwrap_or("(no X-Amz-Target)")
            .to_owned();
        let body: serde_json::Value = req
            .body()
            .bytes()
            .and_then(|b| serde_json::from_slice(b).ok())
            .unwrap_or_default();
        let index = body["IndexName"].as_str().map(str::to_owned);
        self.0.lock().unwrap().push(Sent { op, index });
        Ok(())
    }
}

const DAY: i64 = 86_400_000;
/// 2025-11-24T00:00:00Z: the first of the three days.
const DAY0: i64 = 1_763_942_400_000;
const CARDS: [&str; 3] = ["tok_a", "tok_b", "tok_c"];
/// The second reads as a card number: stored (and looked up) in its PAN-safe form.
const MERCHANTS: [&str; 2] = ["m-1", "4111111111111111"];
const HASH_V3: &str = "sha256:0a3e5c1d2b4f6a7e8c9d";
const HASH_V4: &str = "sha256:4b4b4b4b4b4b4b4b4b4b";

fn scorer_alert(i: i64, shadow: bool) -> Alert {
    let card = CARDS[i as usize % 3];
    let merchant = MERCHANTS[i as usize % 2];
    // 2h13m apart from 01:00 on DAY0: 27 of them cover the three days.
    let t = DAY0 + 3_600_000 + i * 133 * 60_000;
    let v4 = i >= 14;
    let mut reasons = Vec::new();
    if i % 2 == 0 {
        reasons.push("VELOCITY_1M".to_owned());
    }
    if i % 3 == 0 {
        reasons.push("NEW_COUNTRY".to_owned());
    }
    if reasons.is_empty() {
        reasons.push("IMPOSSIBLE_TRAVEL".to_owned());
    }
    let id = format!("{card}/e{i}");
    Alert {
        alert_id: if shadow {
            format!("{SHADOW_PREFIX}{id}")
        } else {
            id
        },
        source: if shadow {
            "fraud-scorer/shadow"
        } else {
            "fraud-scorer"
        }
        .into(),
        subject: format!("card:{card}"),
        card_token: (!shadow).then(|| card.to_owned()),
        merchant_id: (!shadow).then(|| pan_safe_id(merchant).into_owned()),
        event_id: Some(format!("e{i}")),
        score: if i % 4 == 0 { 900 } else { 500 + i as u32 },
        reasons,
        shadow_reasons: Vec::new(),
        ruleset_version: if v4 { "v4" } else { "v3" }.into(),
        ruleset_hash: if v4 { HASH_V4 } else { HASH_V3 }.into(),
        outcome: if i % 4 == 0 {
            Outcome::Block
        } else {
            Outcome::Review
        },
        rules: Vec::new(),
        features: BTreeMap::from([("amount".to_owned(), 12.5)]),
        event_time_ms: t,
        alert_day: if shadow {
            format!("{SHADOW_PREFIX}{}", utc_day(t))
        } else {
            utc_day(t)
        },
    }
}

fn window_alert(merchant: Option<&str>, t: i64) -> Alert {
    let subject = merchant.map_or("global".to_owned(), |m| format!("merchant:{m}"));
    Alert {
        alert_id: format!("win:rule:{subject}:15m:{}", t - 900_000),
        source: "window-aggregator".into(),
        subject,
        card_token: None,
        merchant_id: merchant.map(|m| pan_safe_id(m).into_owned()),
        event_id: None,
        score: 700,
        reasons: vec!["MERCHANT_DECLINE_SPIKE".into()],
        shadow_reasons: Vec::new(),
        ruleset_version: "w2".into(),
        ruleset_hash: "sha256:77777777777777777777".into(),
        outcome: Outcome::Review,
        rules: Vec::new(),
        features: BTreeMap::new(),
        event_time_ms: t,
        alert_day: utc_day(t),
    }
}

/// 27 live scorer records, 6 shadow ones, two window alerts (a merchant's, the global
/// one) and a record from before `outcome` and `merchant_id` were stored.
fn dataset() -> (Vec<Alert>, Alert) {
    let mut all: Vec<Alert> = (0..27).map(|i| scorer_alert(i, false)).collect();
    all.extend([1, 4, 9, 14, 20, 25].map(|i| scorer_alert(i, true)));
    all.push(window_alert(Some(MERCHANTS[1]), DAY0 + DAY + 7 * 60_000));
    all.push(window_alert(None, DAY0 + 2 * DAY + 11 * 60_000));
    let mut legacy = scorer_alert(30, false);
    legacy.alert_id = "tok_c/legacy".into();
    legacy.card_token = Some("tok_c".into());
    legacy.subject = "card:tok_c".into();
    legacy.merchant_id = None;
    legacy.outcome = Outcome::Review;
    legacy.event_time_ms = DAY0 + 2 * DAY + 5 * 60_000;
    legacy.alert_day = utc_day(legacy.event_time_ms);
    (all, legacy)
}

/// What a filter must return: the records it matches, newest first, by id.
fn expected(all: &[Alert], f: &AlertFilter) -> Vec<String> {
    let mut hits: Vec<&Alert> = all
        .iter()
        .filter(|a| a.alert_id.starts_with(SHADOW_PREFIX) == f.shadow)
        .filter(|a| {
            f.card
                .as_ref()
                .is_none_or(|c| a.subject == format!("card:{c}"))
        })
        .filter(|a| {
            f.merchant
                .as_ref()
                .is_none_or(|m| a.merchant_id.as_deref() == Some(&*pan_safe_id(m)))
        })
        .filter(|a| {
            f.outcome.is_none_or(|o| {
                a.outcome
                    == match o {
                        StoredOutcome::Review => Outcome::Review,
                        StoredOutcome::Block => Outcome::Block,
                    }
            })
        })
        .filter(|a| f.reason.as_ref().is_none_or(|r| a.reasons.contains(r)))
        .filter(|a| {
            f.ruleset
                .as_ref()
                .is_none_or(|r| a.ruleset_version == *r || a.ruleset_hash == *r)
        })
        .filter(|a| {
            let lo = f.since_ms.or(f.last_ms.map(|l| f.until_ms.unwrap() - l));
            lo.is_none_or(|lo| a.event_time_ms >= lo)
                && f.until_ms.is_none_or(|hi| a.event_time_ms < hi)
        })
        .collect();
    hits.sort_by_key(|a| std::cmp::Reverse(a.event_time_ms));
    hits.into_iter().map(|a| a.alert_id.clone()).collect()
}

fn ids(p: &AlertPage) -> Vec<String> {
    p.alerts.iter().map(|a| a.alert_id.clone()).collect()
}

/// "Now" for the queries: an hour into the day after the data.
const NOW: i64 = DAY0 + 3 * DAY + 3_600_000;

struct Fixture {
    ddb: aws_sdk_dynamodb::Client,
    sent: Recorder,
    table: String,
    stage: String,
    all: Vec<Alert>,
}

impl Fixture {
    async fn new() -> Self {
        let sdk = emulators().await;
        let (stage, table) = fresh_alerts_table(&sdk).await;
        let (mut all, legacy) = dataset();
        let plain = aws_sdk_dynamodb::Client::new(&sdk);
        DynamoAlertSink::new(plain.clone(), &table)
            .put_alerts(&all)
            .await
            .expect("write the alerts");
        let mut item: std::collections::HashMap<String, AttributeValue> =
            serde_dynamo::to_item(&legacy).unwrap();
        assert!(item.remove("outcome").is_some());
        assert!(item.remove("merchant_id").is_none());
        plain
            .put_item()
            .table_name(&table)
            .set_item(Some(item))
            .send()
            .await
            .unwrap();
        all.push(legacy);
        let sent = Recorder::default();
        let ddb = aws_sdk_dynamodb::Client::from_conf(
            aws_sdk_dynamodb::config::Builder::from(&sdk)
                .interceptor(sent.clone())
                .build(),
        );
        Self {
            ddb,
            sent,
            table,
            stage,
            all,
        }
    }

    /// One page, and the requests it took (each a Query on `index`, never a Scan).
    async fn page(
        &self,
        f: &AlertFilter,
        limit: usize,
        after: Option<&str>,
        index: &str,
    ) -> AlertPage {
        self.sent.take();
        let p = query_alerts(&self.ddb, &self.table, f, limit, after, NOW)
            .await
            .unwrap_or_else(|e| panic!("{f:?}: {e:#}"));
        let sent = self.sent.take();
        assert!(!sent.is_empty());
        assert_eq!(sent.len(), p.requests, "{f:?}");
        for s in &sent {
            assert!(!s.op.ends_with(".Scan"), "{f:?} scanned: {sent:?}");
            assert_eq!(
                s,
                &Sent {
                    op: "DynamoDB_20120810.Query".into(),
                    index: Some(index.into())
                },
                "{f:?}"
            );
        }
        assert_eq!(p.index, index);
        p
    }

    /// Checks `f` returns exactly the expected ids newest first, in one page and in
    /// pages of 4 through the cursor; returns them.
    async fn check(&self, f: &AlertFilter, index: &str) -> Vec<String> {
        let want = expected(&self.all, f);
        let one = self.page(f, 1000, None, index).await;
        assert_eq!(ids(&one), want, "{f:?}");
        assert_eq!(one.next, None, "{f:?}: all in one page");
        let mut paged = Vec::new();
        let mut after: Option<String> = None;
        let mut pages = 0;
        loop {
            let p = self.page(f, 4, after.as_deref(), index).await;
            pages += 1;
            paged.extend(ids(&p));
            match p.next {
                Some(n) => {
                    assert_eq!(
                        p.alerts.len(),
                        4,
                        "{f:?}: a page with more after it is full"
                    );
                    after = Some(n);
                }
                None => {
                    assert!(p.alerts.len() <= 4);
                    break;
                }
            }
            assert!(paged.len() <= want.len(), "{f:?}: pages repeat");
        }
        assert_eq!(paged, want, "{f:?}: pages of 4");
        let distinct: HashSet<&String> = paged.iter().collect();
        assert_eq!(distinct.len(), paged.len(), "{f:?}: no repeats");
        // A cursor is printed only when more remain: never one leading to an empty page.
        assert_eq!(pages, want.len().div_ceil(4).max(1), "{f:?}");
        want
    }
}

fn f() -> AlertFilter {
    AlertFilter::default()
}

fn t(s: &str) -> i64 {
    parse_time_ms(s).unwrap()
}

#[tokio::test]
async fn alert_queries_use_the_indexes_and_page_exactly() {
    let fx = Fixture::new().await;
    let all_days = AlertFilter {
        since_ms: Some(DAY0),
        until_ms: Some(DAY0 + 3 * DAY),
        ..f()
    };
    // Each filter, its index, and (a check on the expectation itself) how many match.
    let cases: Vec<(AlertFilter, &str, usize)> = vec![
        (
            AlertFilter {
                card: Some("tok_a".into()),
                ..f()
            },
            "by-card",
            9,
        ),
        (
            AlertFilter {
                card: Some("tok_c".into()),
                ..f()
            },
            "by-card",
            10, // with the legacy record
        ),
        (
            AlertFilter {
                merchant: Some("m-1".into()),
                ..f()
            },
            "by-merchant",
            14,
        ),
        (
            AlertFilter {
                merchant: Some(MERCHANTS[1].into()),
                ..f()
            },
            "by-merchant",
            14, // 13 scorer records and the merchant's window alert
        ),
        (
            AlertFilter {
                card: Some("tok_b".into()),
                merchant: Some("m-1".into()),
                ..f()
            },
            "by-card",
            4,
        ),
        (all_days.clone(), "by-day", 30),
        // The default range: 7 days before now.
        (f(), "by-day", 30),
        (
            AlertFilter {
                outcome: Some(StoredOutcome::Block),
                ..all_days.clone()
            },
            "by-day",
            7,
        ),
        (
            AlertFilter {
                outcome: Some(StoredOutcome::Review),
                ..all_days.clone()
            },
            "by-day",
            23, // the legacy record (no outcome stored) is a review
        ),
        (
            AlertFilter {
                reason: Some("NEW_COUNTRY".into()),
                ..all_days.clone()
            },
            "by-day",
            10,
        ),
        (
            AlertFilter {
                ruleset: Some("v4".into()),
                ..all_days.clone()
            },
            "by-day",
            14,
        ),
        (
            AlertFilter {
                ruleset: Some(HASH_V3.into()),
                card: Some("tok_a".into()),
                ..f()
            },
            "by-card",
            5,
        ),
        (
            AlertFilter {
                merchant: Some("m-1".into()),
                outcome: Some(StoredOutcome::Review),
                reason: Some("VELOCITY_1M".into()),
                ruleset: Some("v3".into()),
                ..f()
            },
            "by-merchant",
            3,
        ),
        (
            AlertFilter {
                since_ms: Some(t("2025-11-25T06:00:00Z")),
                until_ms: Some(t("2025-11-26T12:00:00+00:00")),
                ..f()
            },
            "by-day",
            15, // 13 scorer records, the global window alert, the legacy record
        ),
        (
            AlertFilter {
                card: Some("tok_b".into()),
                since_ms: Some(t("2025-11-25T06:00:00Z")),
                until_ms: Some(t("2025-11-26T12:00:00Z")),
                ..f()
            },
            "by-card",
            4,
        ),
        (
            AlertFilter {
                last_ms: Some(DAY),
                until_ms: Some(t("2025-11-26T12:00:00Z")),
                ..f()
            },
            "by-day",
            13,
        ),
        (
            AlertFilter {
                shadow: true,
                ..all_days.clone()
            },
            "by-day",
            6,
        ),
        (
            AlertFilter {
                shadow: true,
                card: Some("tok_b".into()),
                ..all_days.clone()
            },
            "by-day",
            3,
        ),
        (
            AlertFilter {
                card: Some("tok_nobody".into()),
                ..f()
            },
            "by-card",
            0,
        ),
    ];
    for (filter, index, n) in &cases {
        let got = fx.check(filter, index).await;
        assert_eq!(got.len(), *n, "{filter:?}: {got:?}");
    }

    // The record's fields come back as written.
    let one = fx
        .page(
            &AlertFilter {
                merchant: Some(MERCHANTS[1].into()),
                ..f()
            },
            1,
            None,
            "by-merchant",
        )
        .await;
    let want = fx
        .all
        .iter()
        .find(|a| a.alert_id == one.alerts[0].alert_id)
        .unwrap();
    assert_eq!(&one.alerts[0], want);
    assert!(
        !serde_json::to_string(&one.alerts)
            .unwrap()
            .contains(MERCHANTS[1]),
        "a merchant id that reads as a card number is stored and printed PAN-safe"
    );

    // A cursor continues only its own query.
    let card_page = fx
        .page(
            &AlertFilter {
                card: Some("tok_a".into()),
                ..f()
            },
            2,
            None,
            "by-card",
        )
        .await;
    let cursor = card_page.next.unwrap();
    for other in [
        AlertFilter {
            card: Some("tok_b".into()),
            ..f()
        },
        AlertFilter {
            merchant: Some("m-1".into()),
            ..f()
        },
        all_days.clone(),
    ] {
        let e = query_alerts(&fx.ddb, &fx.table, &other, 2, Some(&cursor), NOW)
            .await
            .unwrap_err();
        assert!(
            format!("{e:#}").contains("cursor continues a query"),
            "{e:#}"
        );
    }
    let e = query_alerts(&fx.ddb, &fx.table, &f(), 2, Some("garbage!"), NOW)
        .await
        .unwrap_err();
    assert!(format!("{e:#}").contains("not a cursor"), "{e:#}");
    // And none of that scanned either.
    assert!(fx.sent.take().iter().all(|s| !s.op.ends_with(".Scan")));
}

/// The command as a user runs it: a table page with a cursor, the next page as NDJSON.
#[tokio::test]
async fn the_command_prints_a_table_then_ndjson_through_the_cursor() {
    let fx = Fixture::new().await;
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_shardline"))
            .current_dir(shardline_testkit::repo_root())
            .args(["query", "alerts", "--param"])
            .arg(format!("Stage={}", fx.stage))
            .args(args)
            .env_remove("ALERTS_TABLE")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let want = expected(
        &fx.all,
        &AlertFilter {
            card: Some("tok_a".into()),
            ..f()
        },
    );
    let (ok, out, err) = run(&["--card", "tok_a", "--limit", "4"]);
    assert!(ok, "{out}\n{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 6, "{out}");
    assert!(lines[0].starts_with("time (UTC)"), "{out}");
    assert!(lines[1].starts_with("2025-11-26T"), "{out}");
    assert!(
        lines[1].contains("tok_a") && lines[1].contains("block"),
        "{out}"
    );
    let cursor = lines[5]
        .split("--after ")
        .nth(1)
        .unwrap_or_else(|| panic!("a cursor in {out}"));
    let (ok, out, err) = run(&[
        "--card", "tok_a", "--limit", "4", "--json", "--after", cursor,
    ]);
    assert!(ok, "{out}\n{err}");
    let page2: Vec<String> = out
        .lines()
        .map(|l| serde_json::from_str::<Alert>(l).unwrap().alert_id)
        .collect();
    assert_eq!(page2, want[4..8]);
    assert!(err.contains("more: add --after "), "{err}");

    for (args, says) in [
        (
            &["--merchant", "m-1", "--shadow"][..],
            "shadow records carry no merchant",
        ),
        (
            &["--since", "yesterday"][..],
            "expected epoch ms or RFC 3339",
        ),
        (
            &["--since", "2025-11-25", "--last", "1h"][..],
            "cannot be used with",
        ),
        (&["--limit", "0"][..], "1 to 1000"),
        (&["--outcome", "allow"][..], "invalid value 'allow'"),
        (&["--after", "nope"][..], "not a cursor"),
    ] {
        let (ok, out, err) = run(args);
        assert!(!ok, "{args:?}: {out}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}
